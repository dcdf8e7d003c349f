"""Neural art: the paper's style-transfer optimizee (Section 3.4).

θ is an RGB image in [0, 1]; f(θ) is the style engine's content + style + TV loss for a content
photo and a style image.  Training problems are 64×64 crops of ImageNet photos; the photos are split
into train / val / test by file (a fixed, recorded split), so evaluation photos are never trained on.
"""

from __future__ import annotations

import hashlib
import numbers
import random
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import torch

from .base import Problem, check_horizon
from .data import check_split, data_root

TRAIN_STYLE = "starry_night.jpg"  # the paper's single training style
HELD_OUT_STYLES = ("woman_with_a_hat.jpg", "shipwreck_of_the_minotaur.jpg")  # never seen in training


def split_photos(folder: Path, val: int = 100, test: int = 100) -> dict[str, list[str]]:
    """Deterministic split by file name: the ``test`` names first in the order of a hash of the
    name, then ``val``, the rest train.  The same files always give the same split.  An added or
    removed file can shift a few others across a boundary, since the split goes by rank: a run's card
    records its split (val and test names, ``split_digest``), and a run is not resumed on another."""
    names = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    if len(names) < val + test + 1:
        raise ValueError(f"{folder} holds {len(names)} photos; need more than {val + test}")
    ordered = sorted(names, key=lambda n: hashlib.sha256(n.encode()).hexdigest())
    return {"test": sorted(ordered[:test]), "val": sorted(ordered[test : test + val]),
            "train": sorted(ordered[test + val :])}


def split_digest(split: dict[str, list[str]]) -> str:
    """A short fingerprint of a photo split (every file name and its part): a run's card records it, and
    a run is not resumed on another split, since its validation problems would change mid-run."""
    text = "\n".join(f"{part}:{name}" for part in ("train", "val", "test") for name in split[part])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def style_names(root: Path | None = None) -> list[str]:
    root = root or data_root()
    return sorted(p.name for p in (root / "styles").iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})


@lru_cache(maxsize=4096)
def _load_rgb(path: str, short_side: int) -> torch.Tensor:
    """Photo as (3, H, W) float in [0, 1], resized so its short side is ``short_side`` (cached)."""
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
        w, h = im.size
        s = short_side / min(w, h)
        im = im.resize((max(short_side, round(w * s)), max(short_side, round(h * s))), Image.BICUBIC)
        t = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(im.size[1], im.size[0], 3)
    return t.permute(2, 0, 1).float() / 255.0


@dataclass
class NeuralArtTask:
    """Distribution over style-transfer problems.

    size: crop size (the paper trains on 64×64).  ``size_range`` samples sizes instead (multiples of
    8), one of the generalisation aids; a crop's loss is then multiplied by its pixels over the middle
    size's, so the optimizer sees the gradients of every size as the engine hands them to it (scaled to
    the trained pixels, ``lstm_input_scale``), not ones that shrink as the crop grows.  ``styles``: training styles; ``fixed style`` mode is simply
    ``styles=(TRAIN_STYLE,)``.  ``init``: "content" (the engine's default) or "noise".
    """

    size: int = 64
    styles: Sequence[str] = (TRAIN_STYLE,)
    steps: int = 128
    unroll: int = 32
    size_range: tuple[int, int] | None = None
    init: str = "content"
    loss_net: str = "efficientnet-lite0"
    # >0: the problems' parameters are the coefficients of a multi-scale basis with this many levels
    # (artopt.learned_optimizers.multiscale), for meta-training an optimizer that runs in it.
    basis_levels: int = 0
    content_weight: float | None = None  # None: the engine's defaults
    style_weight: float | None = None
    tv_weight: float | None = None
    name: str = "neural-art"
    root: Path | None = None
    _split: dict = field(default=None, init=False, repr=False)

    def __post_init__(self):
        check_horizon(self)
        if self.init not in ("content", "noise"):  # (any other word started from noise, without a word)
            raise ValueError(f"init must be 'content' or 'noise', got {self.init!r}")
        if isinstance(self.size, bool) or not isinstance(self.size, numbers.Integral) or self.size < 8:
            raise ValueError(f"size must be a whole number of pixels, at least 8, got {self.size!r}")
        if self.size_range is not None and not (
                len(self.size_range) == 2 and 8 <= self.size_range[0] <= self.size_range[1]
                and all(side % 8 == 0 for side in self.size_range)):
            # sizes are drawn in multiples of 8: other bounds drew sizes outside them (60-63 drew 56)
            raise ValueError(f"size_range needs multiples of 8 with 8 <= MIN <= MAX, got {self.size_range}")
        self.root = Path(self.root) if self.root else data_root()
        self._split = split_photos(self.root / "imagenet-sample")

    @property
    def split(self) -> dict[str, list[str]]:
        return self._split

    def _net(self):
        from ..style.loss_nets import build_loss_net

        return build_loss_net(self.loss_net, device="cpu")

    def _loss_kwargs(self) -> dict:
        from ..style.engine import StylizeConfig

        d = StylizeConfig()
        return {
            "content_weight": d.content_weight if self.content_weight is None else self.content_weight,
            "style_weight": d.style_weight if self.style_weight is None else self.style_weight,
            "tv_weight": d.tv_weight if self.tv_weight is None else self.tv_weight,
        }

    def sample(self, generator: torch.Generator, split: str = "train", style: str | None = None,
               size: int | None = None) -> Problem:
        rnd = random.Random(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        return self._in_basis(self.problem(*self._draw(rnd, split, style, size), rnd))

    def _in_basis(self, problem: Problem) -> Problem:
        if not self.basis_levels:
            return problem
        from ..learned_optimizers.multiscale import multiscale_problem

        return multiscale_problem(problem, self.basis_levels)

    def sample_batch(self, generator: torch.Generator, split: str = "train", k: int = 1) -> Problem:
        """``k`` independent problems (photo, crop, style) stacked into one batch of images, so the
        loss network serves them in one pass (several times cheaper per image than one by one on
        a CPU).  One crop size for the batch.  The loss is the sum of the k problems' losses: each
        image's gradient is exactly its own problem's (see ``stack_problems``)."""
        rnd = random.Random(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        photo, style, size = self._draw(rnd, split, None, None)
        parts = [self._parts(photo, style, size, rnd)]
        for _ in range(k - 1):
            photo, style, _ = self._draw(rnd, split, None, size)
            parts.append(self._parts(photo, style, size, rnd))
        net = parts[0][1].loss_net
        theta0 = torch.cat([theta for theta, _, _ in parts])
        scale = self.size_scale(size)

        def loss(params, t):
            images = params[0]
            features = net(images)
            return scale * sum(loss_fn.from_features({n: f[i : i + 1] for n, f in features.items()},
                                                     images[i : i + 1])["total"] for i, (_, loss_fn, _) in enumerate(parts))

        return self._in_basis(Problem([theta0], loss, project=clamp_image,
                                      info={"stacked": [info for _, _, info in parts]}, count=k))

    def size_scale(self, size: int) -> float:
        """What a crop of side ``size`` multiplies its loss by: 1 without ``size_range``."""
        if self.size_range is None:
            return 1.0
        middle = (self.size_range[0] + self.size_range[1]) // 2  # the card's trained_pixels: middle ** 2
        return size * size / (middle * middle)

    def _draw(self, rnd: random.Random, split: str, style: str | None, size: int | None) -> tuple[str, str, int]:
        check_split(split)  # (a bare KeyError before)
        files = self._split[split]
        photo = files[rnd.randrange(len(files))]
        if size is None:
            size = self.size if self.size_range is None else 8 * rnd.randint(self.size_range[0] // 8,
                                                                              self.size_range[1] // 8)
        style = style or self.styles[rnd.randrange(len(self.styles))]
        return photo, style, size

    def problem(self, photo: str, style: str, size: int, rnd: random.Random | None = None) -> Problem:
        """The problem for one photo (random square crop of side ``size``) and one style."""
        theta0, loss_fn, info = self._parts(photo, style, size, rnd or random.Random(0))
        scale = self.size_scale(size)

        def loss(params, t):
            return loss_fn(params[0])["total"] * scale

        return Problem([theta0], loss, project=clamp_image, info=info)

    def _parts(self, photo: str, style: str, size: int, rnd: random.Random):
        """(θ₀, StyleLoss, info) of one problem; draws the crop (and a noise start) from ``rnd``."""
        from ..style.losses import StyleLoss

        # Crop from the photo resized to a short side a little above the crop: a crop is a real
        # region of the photo, not a thumbnail of all of it.
        img = _load_rgb(str(self.root / "imagenet-sample" / photo), int(size * 1.25))
        _, h, w = img.shape
        y, x = rnd.randint(0, h - size), rnd.randint(0, w - size)
        content = img[:, y : y + size, x : x + size].unsqueeze(0).contiguous()
        style_img = _load_rgb(str(self.root / "styles" / style), size).unsqueeze(0)
        loss_fn = StyleLoss(self._net(), content, [style_img], **self._loss_kwargs())
        if self.init == "content":
            theta0 = content.clone()
        else:
            g = torch.Generator().manual_seed(rnd.randrange(2**31))
            theta0 = torch.rand(content.shape, generator=g)
        return theta0, loss_fn, {"photo": photo, "style": style, "size": size, "crop_xy": (x, y)}


def clamp_image(params: list[torch.Tensor]) -> list[torch.Tensor]:
    return [params[0].clamp(0.0, 1.0)]
