"""Locating and loading the validation-suite datasets (MNIST, CIFAR-10).

The data folder is ``$ARTOPT_DATA`` if set, else ``../shared/data`` next to the repository.  Each
loader also accepts a folder laid out the way torchvision downloads the dataset, so users can point
a task at their own copy.  Arrays are cached per process (``lru_cache``) and kept as uint8: tasks
convert one minibatch at a time to float, which costs microseconds and a quarter of the memory.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

ENV_VAR = "ARTOPT_DATA"


class DataNotFoundError(FileNotFoundError):
    """A dataset the task needs is not where we looked; the message says where and what to do."""


def data_root() -> Path:
    """``$ARTOPT_DATA`` or ``<repo>/../shared/data``; raises ``DataNotFoundError`` if missing."""
    env = os.environ.get(ENV_VAR)
    root = Path(env).expanduser() if env else Path(__file__).resolve().parents[3] / "shared" / "data"
    if not root.is_dir():
        how = f"${ENV_VAR}={env}" if env else f"the default location (set ${ENV_VAR} to override)"
        raise DataNotFoundError(f"data folder not found: {root} ({how})")
    return root


def load_npz(path: str | os.PathLike, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Arrays ``keys`` of an .npz file (no pickle), with clear errors for missing or corrupt files."""
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"dataset file not found: {path}")
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":  # an .npz is a zip; np.load would take anything else for a pickle
            raise ValueError(f"{path}: corrupt or not an .npz file (no zip header)")
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in keys if k not in f.files]
            if missing:
                raise KeyError(f"{path}: missing arrays {missing} (has {sorted(f.files)})")
            return {k: f[k] for k in keys}
    except KeyError as e:
        raise ValueError(e.args[0]) from None
    except Exception as e:  # zipfile.BadZipFile, pickle refusal, truncated data, ...
        raise ValueError(f"{path}: corrupt or not an .npz file ({type(e).__name__}: {e})") from None


def _check_labelled(name: str, x: np.ndarray, y: np.ndarray, image_shape: tuple[int, ...], classes: int) -> None:
    if x.dtype != np.uint8 or x.shape[1:] != image_shape:
        raise ValueError(f"{name}: expected uint8 images of shape (N, {', '.join(map(str, image_shape))}), "
                         f"got {x.dtype} {x.shape}")
    if x.shape[0] == 0:  # minibatches are drawn from it: say so now, not in torch.randint
        raise ValueError(f"{name}: holds no images")
    if y.shape != (x.shape[0],):
        raise ValueError(f"{name}: {x.shape[0]} images but labels of shape {y.shape}")
    if y.size and (int(y.min()) < 0 or int(y.max()) >= classes):
        raise ValueError(f"{name}: labels outside 0..{classes - 1}")


def _data_hint(root) -> str:
    """Where a bad file under the data folder came from, so the user knows what to change."""
    if root is not None:
        return ""
    env = os.environ.get(ENV_VAR)
    return f" (data folder from ${ENV_VAR}={env})" if env else f" (default data folder; set ${ENV_VAR} to use another)"


def _resolve(root: str | os.PathLike | None, default_sub: str) -> Path:
    if root is None:
        return data_root() / default_sub
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataNotFoundError(f"dataset folder not found: {root}")
    return root


@lru_cache(maxsize=8)
def load_mnist(split: str, root: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST ``split`` ("train": 60 000 images, "test": 10 000) as (uint8 N×28×28, int64 N).

    ``root``: a folder holding ``mnist_train.npz`` / ``mnist_t10k.npz`` (the shared data layout), or
    a torchvision root (``MNIST/raw/*-ubyte``).  Default: ``<data>/mnist``.
    """
    if split not in ("train", "test"):
        raise ValueError(f"MNIST split must be 'train' or 'test', got {split!r}")
    folder = _resolve(root, "mnist")
    npz = folder / ("mnist_train.npz" if split == "train" else "mnist_t10k.npz")
    if npz.is_file():
        try:
            arrays = load_npz(npz, ("x", "y"))
        except ValueError as e:
            raise ValueError(f"{e}{_data_hint(root)}") from None
        x, y = arrays["x"], arrays["y"].astype(np.int64)
        source = npz
    elif (folder / "MNIST" / "raw").is_dir():
        from torchvision.datasets import MNIST

        try:
            ds = MNIST(str(folder), train=split == "train", download=False)
        except RuntimeError as e:  # torchvision: "Dataset not found..."
            raise DataNotFoundError(f"{folder}: torchvision MNIST folder incomplete ({e})") from None
        x, y = ds.data.numpy(), ds.targets.numpy().astype(np.int64)
        source = folder
    else:
        raise DataNotFoundError(f"MNIST not found in {folder}: expected {npz.name} or a torchvision "
                                f"MNIST/raw folder (set ${ENV_VAR} or pass root=)")
    _check_labelled(f"MNIST {split} ({source}{_data_hint(root)})", x, y, (28, 28), 10)
    return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y)


@lru_cache(maxsize=8)
def load_cifar10(split: str, root: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10 ``split`` ("train" / "test") as (uint8 N×32×32×3, int64 N).

    ``root``: a folder holding ``cifar10_subset.npz`` (the shared data: 10 000 train / 2 000 test
    images) or a torchvision root (``cifar-10-batches-py``).  Default: ``<data>/cifar10``.
    """
    if split not in ("train", "test"):
        raise ValueError(f"CIFAR-10 split must be 'train' or 'test', got {split!r}")
    folder = _resolve(root, "cifar10")
    npz = folder / "cifar10_subset.npz"
    if npz.is_file():
        try:
            arrays = load_npz(npz, (f"x_{split}", f"y_{split}"))
        except ValueError as e:
            raise ValueError(f"{e}{_data_hint(root)}") from None
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"].astype(np.int64)
        source = npz
    elif (folder / "cifar-10-batches-py").is_dir():
        from torchvision.datasets import CIFAR10

        try:
            ds = CIFAR10(str(folder), train=split == "train", download=False)
        except RuntimeError as e:
            raise DataNotFoundError(f"{folder}: torchvision CIFAR-10 folder incomplete ({e})") from None
        x, y = ds.data, np.asarray(ds.targets, dtype=np.int64)
        source = folder
    else:
        raise DataNotFoundError(f"CIFAR-10 not found in {folder}: expected cifar10_subset.npz or a "
                                f"torchvision cifar-10-batches-py folder (set ${ENV_VAR} or pass root=)")
    _check_labelled(f"CIFAR-10 {split} ({source}{_data_hint(root)})", x, y, (32, 32, 3), 10)
    return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y)


# ---- deterministic randomness shared by the tasks ---------------------------------------------

_SPLIT_SALT = {"train": 0x5EED_0001, "val": 0x5EED_0002, "test": 0x5EED_0003}
_MASK63 = (1 << 63) - 1


def check_split(split: str) -> None:
    if split not in _SPLIT_SALT:
        raise ValueError(f"split must be one of {sorted(_SPLIT_SALT)}, got {split!r}")


def split_seed(generator: torch.Generator, split: str) -> int:
    """A seed for one problem: drawn from ``generator`` and salted by ``split``.

    The salt makes train, val and test problems come from different streams even when a caller
    seeds their generators alike, so evaluation never replays a meta-training instance.
    """
    check_split(split)
    drawn = int(torch.randint(0, 2**62, (1,), generator=generator))
    return _mix(drawn, _SPLIT_SALT[split])


def _mix(a: int, b: int) -> int:
    # splitmix64-style scramble so nearby (seed, step) pairs give unrelated streams.
    z = (a * 0x9E3779B97F4A7C15 + b * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) & ((1 << 64) - 1)
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & ((1 << 64) - 1)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & ((1 << 64) - 1)
    return (z ^ (z >> 31)) & _MASK63


def minibatch_indices(data_seed: int, t: int, n: int, batch_size: int) -> torch.Tensor:
    """Indices of the minibatch used at step ``t``: uniform with replacement, a pure function of
    (data_seed, t) so every optimizer run on a problem sees the same data stream."""
    g = torch.Generator().manual_seed(_mix(data_seed, int(t) + 1))
    return torch.randint(0, n, (batch_size,), generator=g)
