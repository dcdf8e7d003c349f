"""Content, style and total-variation losses over a loss network's features.

Normalisation, so that the content and style weights mean the same whatever the resolution or network:

* Gram matrices are divided by the number of positions (H·W): a Gram is then the average outer
  product of feature vectors, unchanged when the image is upscaled.
* Each layer's style loss is ``‖G − A‖² / ‖A‖²`` (relative to the target Gram), and the content
  loss ``‖F − P‖² / ‖P‖²``; layers of very different magnitude then weigh as the network's
  ``style_layer_weights`` say, and a weight of 1 means "as large as the target itself".
* TV is the mean squared difference between neighbouring pixels.  It is not resolution-free: neighbours
  are closer at a larger size, and on photos it about halves per doubling (chelsea: 0.0042 / 0.0023 /
  0.0013 at 128 / 256 / 512 px), so a given tv_weight smooths a pyramid's coarse scales more.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .images import resize_long_side
from .loss_nets import LossNet

MAX_EDGE_PAD = 256


def check_edge_pad(edge_pad) -> None:
    """Refuse an edge pad that is not a whole number of pixels from 0 to MAX_EDGE_PAD."""
    if isinstance(edge_pad, bool) or not isinstance(edge_pad, int) or not 0 <= edge_pad <= MAX_EDGE_PAD:
        raise ValueError(f"edge pad must be an integer from 0 to {MAX_EDGE_PAD} px, got {edge_pad}")


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, C), averaged over positions so it does not depend on H·W."""
    n, c, h, w = features.shape
    flat = features.reshape(n, c, h * w)
    return flat @ flat.transpose(1, 2) / (h * w)


def total_variation(image: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between vertically and horizontally adjacent pixels."""
    dy = image[..., 1:, :] - image[..., :-1, :]
    dx = image[..., :, 1:] - image[..., :, :-1]
    # A side of one pixel has no neighbours along it: 0, not the NaN of an empty mean.
    return sum((d.pow(2).mean() for d in (dy, dx) if d.numel()), image.new_zeros(()))


def _relative_sq_error(value: torch.Tensor, target: torch.Tensor, target_norm_sq: torch.Tensor) -> torch.Tensor:
    return (value - target).pow(2).sum() / target_norm_sq


class StyleLoss(nn.Module):
    """Weighted content + style + TV loss of an image, with targets fixed at construction.

    Args:
        loss_net: a frozen :class:`LossNet`.
        content: content image (1, 3, H, W) in [0, 1]; the image optimized must have this size.
        styles: one or more style images (1, 3, h, w) in [0, 1], any size.
        content_weight, style_weight, tv_weight: weights of the three terms.
        style_weights: blend weights of the styles (normalised to sum 1; default equal).
        style_scale: each style image is resized so its long side is ``style_scale`` times the
            content's long side before its Grams are taken (None keeps the styles' own size).
        edge_pad: pixels of mirrored border around the image (and the content and style targets) that
            the loss network sees as context.  Its convolutions pad with zeros, which gives the outermost pixels
            little and odd gradient; optimizers then paint saturated stripes along the edges.  With a
            mirrored border the edge pixels are interior ones to the network.  0: off.

    Calling it with an image returns ``{"total", "content", "style", "tv"}`` (scalar tensors; the
    parts are unweighted, ``total`` is the weighted sum).  Blending several styles blends their
    Gram targets; for squared errors this has the same gradient as the weighted sum of the
    per-style losses, at the cost of one.
    """

    def __init__(self, loss_net: LossNet, content: torch.Tensor, styles: Sequence[torch.Tensor] | torch.Tensor, *,
                 content_weight: float = 1.0, style_weight: float = 1.0, tv_weight: float = 0.0,
                 style_weights: Sequence[float] | None = None, style_scale: float | None = 1.0,
                 edge_pad: int = 0):
        super().__init__()
        if isinstance(styles, torch.Tensor):
            styles = [styles]
        styles = list(styles)
        if not styles:
            raise ValueError("at least one style image is needed")
        if style_weights is None:
            style_weights = [1.0] * len(styles)
        style_weights = [float(w) for w in style_weights]
        if len(style_weights) != len(styles):
            raise ValueError(f"{len(style_weights)} style weights given for {len(styles)} style images")
        if any(not (w >= 0) or w == float("inf") for w in style_weights) or not 0 < sum(style_weights) < float("inf"):
            raise ValueError("style weights must be finite, non-negative and not all zero")
        for label, value in (("content", content_weight), ("style", style_weight), ("tv", tv_weight)):
            if not (value >= 0) or value == float("inf"):
                raise ValueError(f"{label} weight must be finite and non-negative, got {value}")
        if style_scale is not None and not (0 < style_scale <= 8):
            raise ValueError(f"style scale must be in (0, 8], got {style_scale}")
        check_edge_pad(edge_pad)
        _check_image(content, "content")
        for s in styles:
            _check_image(s, "style")

        self.loss_net = loss_net
        self.content_weight = float(content_weight)
        self.style_weight = float(style_weight)
        self.tv_weight = float(tv_weight)
        self.edge_pad = edge_pad
        self.size = tuple(content.shape[-2:])
        device, dtype = loss_net.mean.device, loss_net.mean.dtype
        total = sum(style_weights)
        blend = [w / total for w in style_weights]

        with torch.no_grad():
            content = content.to(device=device, dtype=dtype)  # e.g. float64 input: the network's own dtype
            _check_side(content, loss_net, "content image", hint="use a larger image")
            features = self.features(content)
            self.content_targets = {n: features[n].detach() for n in loss_net.content_layers}
            self.style_targets = {n: torch.zeros(()) for n in loss_net.style_layers}
            for i, (weight, style) in enumerate(zip(blend, styles)):
                style = style.to(device=device, dtype=dtype)
                if style_scale is not None:
                    long_side = style_long_side(max(self.size), loss_net.min_size, style_scale)
                    style = resize_long_side(style, long_side)
                _check_side(style, loss_net, f"style image {i + 1}" if len(styles) > 1 else "style image",
                            "at this size and style scale" if style_scale is not None else "")
                # Framed as the image is: with the image's Grams over its frame and the style's over none,
                # the style itself did not score 0 (0.018 at 128 px, 10-15% of a typical loss there).
                style_features = self.features(style)
                for n in loss_net.style_layers:
                    self.style_targets[n] = self.style_targets[n].to(device) + weight * gram_matrix(style_features[n])
        # Denominators of the relative errors (tiny floor: an all-black image has zero features).
        self._content_norms = {n: t.pow(2).sum().clamp_min(1e-8) for n, t in self.content_targets.items()}
        self._style_norms = {n: t.pow(2).sum().clamp_min(1e-8) for n, t in self.style_targets.items()}

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        # Checked here rather than met as a broadcast (a (3, H, W) or one-channel image was scored
        # silently) or as a dtype/device error deep inside the network.
        if not isinstance(image, torch.Tensor) or image.dim() != 4 or image.shape[:2] != (1, 3) \
                or not image.is_floating_point():
            shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise ValueError(f"image must be a float tensor of shape (1, 3, H, W), got {shape}"
                             + (f" {image.dtype}" if isinstance(image, torch.Tensor) else ""))
        if tuple(image.shape[-2:]) != self.size:
            raise ValueError(f"image is {tuple(image.shape[-2:])}, the loss was built for {self.size}")
        if image.device != self.loss_net.mean.device:
            raise ValueError(f"image is on {image.device}, the loss network on {self.loss_net.mean.device}")
        return self.from_features(self.features(image), image)

    def features(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """The loss network's features of ``image`` with its mirrored border (``edge_pad``)."""
        pad = min(self.edge_pad, image.shape[-2] - 1, image.shape[-1] - 1)  # reflection needs pad < side
        if pad > 0:
            # The border is context only (no gradient through it): otherwise the mirrored pixels
            # next to the edge would count twice and draw a seam of their own.
            framed = F.pad(image.detach(), (pad, pad, pad, pad), mode="reflect")
            framed[..., pad:-pad, pad:-pad] = image
            image = framed
        return self.loss_net(image.to(self.loss_net.mean.dtype))  # no-op for float32

    def from_features(self, features: dict[str, torch.Tensor], image: torch.Tensor) -> dict[str, torch.Tensor]:
        """The loss of ``image`` given its loss-network ``features`` (computed by the caller, e.g.
        for several images in one batch: pass each image's slice, as ``features`` makes them)."""
        net = self.loss_net
        content = sum(_relative_sq_error(features[n], self.content_targets[n], self._content_norms[n])
                      for n in net.content_layers) / len(net.content_layers)
        style = sum(net.style_layer_weights[n] *
                    _relative_sq_error(gram_matrix(features[n]), self.style_targets[n], self._style_norms[n])
                    for n in net.style_layers)
        tv = total_variation(image)
        total = self.content_weight * content + self.style_weight * style + self.tv_weight * tv
        return {"total": total, "content": content, "style": style, "tv": tv}


def _check_image(image: torch.Tensor, label: str) -> None:
    if not isinstance(image, torch.Tensor) or image.dim() != 4 or image.shape[:2] != (1, 3):
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"{label} image must be a tensor of shape (1, 3, H, W), got {shape}")
    if not image.is_floating_point():
        raise ValueError(f"{label} image must hold floats in [0, 1], got {image.dtype}")
    if image.shape[2] == 0 or image.shape[3] == 0:
        raise ValueError(f"{label} image is empty ({image.shape[2]}x{image.shape[3]} pixels)")
    if not torch.isfinite(image).all():
        raise ValueError(f"{label} image contains NaN or infinite values")


def style_long_side(scale_long_side: int, min_size: int, style_scale: float) -> int:
    """The long side a style image is resized to at a scale whose long side is ``scale_long_side``."""
    return max(min_size, round(scale_long_side * style_scale))


def _check_side(image: torch.Tensor, loss_net: LossNet, label: str, where: str = "",
                hint: str = "use a larger style scale or a less elongated image") -> None:
    """Refuse an image too small for the network to run on at all (VGG-19's pooling would empty it)."""
    need = getattr(loss_net, "min_input_side", 1)
    if min(image.shape[-2:]) < need:
        height, width = image.shape[-2:]
        raise ValueError(f"{label} is {width}x{height} px{' ' + where if where else ''}; {loss_net.name} needs at "
                         f"least {need} px on the shorter side ({hint})")
