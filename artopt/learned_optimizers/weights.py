"""Saving and loading trained optimizers: safetensors (no pickle) plus a JSON card.

Layout of a weights file: tensors named ``<net>.<parameter>`` (e.g. ``conv.lstm.weight_ih_l0``)
and, in the safetensors metadata, ``artopt`` = JSON ``{"format": 1, "nets": {name: config}}``.
The human-readable card (data, training config, metrics) sits next to it as ``<name>.json``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from ..file_writes import replace_file
from .network import LSTMOptimizerConfig, LSTMOptimizerNet

FORMAT = 1
# The config fields every format-1 file has carried (later fields default to off when missing).  A
# file without one of these is damaged: a missing output_scale must not silently become 0.1.
REQUIRED_CONFIG_KEYS = ("hidden_size", "num_layers", "preprocess", "p", "output_scale")


class WeightsError(ValueError):
    """A learned-optimizer weights file that is missing, corrupt or does not match its config."""


def save_learned(path: str | os.PathLike, nets: dict[str, LSTMOptimizerNet], card: dict | None = None) -> Path:
    """Write ``nets`` to ``path`` (.safetensors) atomically, and ``card`` to the sibling .json."""
    path = Path(path)
    for name in nets:
        # tensors are named "<net>.<parameter>": a dotted name would be read back as another network
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"network names must be non-empty strings without '.', got {name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {
        f"{name}.{key}": value.detach().to("cpu", torch.float32).contiguous()
        for name, net in nets.items()
        for key, value in net.state_dict().items()
    }
    meta = {"artopt": json.dumps({"format": FORMAT, "nets": {n: net.config.to_dict() for n, net in nets.items()}})}
    # written by Python, not safetensors' save_file, which makes the file readable by its owner only
    # (mode 0600, whatever the umask): shipped weights must be readable by everyone who runs artopt
    data = save(tensors, metadata=meta)
    replace_file(path, lambda tmp: tmp.write_bytes(data))
    if card is not None:
        write_json_atomic(path.with_suffix(".json"), card)
    return path


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    # (ensure_ascii=False: a card's Σ and θ stay as written, not \u escapes)
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False) + "\n")


def write_text_atomic(path: str | os.PathLike, text: str, exclusive: bool = False) -> None:
    """Write ``text`` whole or not at all (a temporary file, then a rename; nothing left behind on
    failure), as a shell's > does (``artopt.file_writes.replace_file``; ``exclusive``: never over an
    existing file)."""
    replace_file(path, lambda p: p.write_text(text, encoding="utf-8"), exclusive=exclusive)


def _read_metadata(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if "artopt" not in meta:
        raise WeightsError(f"{path}: not an artopt optimizer file (no 'artopt' metadata)")
    try:
        info = json.loads(meta["artopt"])
    except json.JSONDecodeError as e:
        raise WeightsError(f"{path}: corrupt artopt metadata ({e})") from None
    if not isinstance(info, dict):
        raise WeightsError(f"{path}: corrupt artopt metadata (a JSON object expected)")
    fmt = info.get("format")
    if isinstance(fmt, bool) or fmt != FORMAT:  # (True == 1 in Python)
        newer = " (written by a newer version of artopt?)" if isinstance(fmt, int) and fmt > FORMAT else ""
        raise WeightsError(f"{path}: unsupported weights format {fmt!r} (expected {FORMAT}){newer}")
    nets = info.get("nets")
    if not isinstance(nets, dict) or not nets or not all(isinstance(c, dict) for c in nets.values()):
        raise WeightsError(f"{path}: corrupt artopt metadata ('nets' must map network names to configs)")
    return info


def load_learned(path: str | os.PathLike, device=None) -> dict[str, LSTMOptimizerNet]:
    """Load the networks of a weights file, checking every tensor against its config."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"learned-optimizer weights not found: {path}")
    try:
        info = _read_metadata(path)
        tensors = load_file(str(path), device="cpu")
    except SafetensorError as e:
        raise WeightsError(f"{path}: corrupt or not a safetensors file ({e})") from None
    nets: dict[str, LSTMOptimizerNet] = {}
    for name, cfg in info["nets"].items():
        missing = [k for k in REQUIRED_CONFIG_KEYS if k not in cfg]
        if missing:
            raise WeightsError(f"{path}: the config of network {name!r} lacks {missing}")
        try:
            config = LSTMOptimizerConfig.from_dict(cfg)
            # shapes only, on the meta device: a corrupt config (hidden_size 10**5) must not allocate
            # gigabytes before the file's tensors are compared with it
            with torch.device("meta"):
                expected = LSTMOptimizerNet(config).state_dict()
        except (TypeError, ValueError) as e:
            raise WeightsError(f"{path}: bad config for network {name!r}: {e}") from None
        prefix = f"{name}."
        got = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        missing = sorted(set(expected) - set(got))
        extra = sorted(set(got) - set(expected))
        if missing or extra:
            raise WeightsError(f"{path}: network {name!r} tensors do not match its config "
                               f"(missing {missing}, unexpected {extra})")
        for key, value in expected.items():
            if got[key].shape != value.shape:
                raise WeightsError(f"{path}: {name}.{key} has shape {tuple(got[key].shape)}, "
                                   f"config {cfg} needs {tuple(value.shape)}")
            if not got[key].is_floating_point():  # load_state_dict would cast integers or booleans silently
                raise WeightsError(f"{path}: {name}.{key} holds {got[key].dtype} values, not floating point")
            if not torch.isfinite(got[key]).all():
                # e.g. saved from a diverged run: every update would be non-finite, and the guard would
                # quietly turn the optimizer into Adam's first step at every coordinate
                raise WeightsError(f"{path}: {name}.{key} holds NaN or infinite values (saved from a run "
                                   "that diverged?)")
        net = LSTMOptimizerNet(config)
        net.load_state_dict(got)
        nets[name] = net.to(device) if device is not None else net
    leftover = [k for k in tensors if k.split(".", 1)[0] not in info["nets"]]
    if leftover:
        raise WeightsError(f"{path}: tensors for undeclared networks: {leftover[:5]}")
    return nets
