"""CIFAR-10 and its label subsets: a small conv net as the optimizee (Section 3.3).

Network, as in the paper: three 5×5 conv layers (16 channels each), each followed by batch norm,
ReLU and 2×2 max pooling, then a fully-connected layer of 32 units with batch norm and ReLU, then
the linear output layer.  Batch norm normalises with the minibatch's own statistics (training mode,
no running averages): that is what it does while the optimizee is being optimized.  Conv layers have
no bias (batch norm's offset replaces it).  Weights start i.i.d. N(0, 0.01²) as in the authors'
code; batch-norm scales start at 1 and offsets at 0.

``groups``: conv weights and their batch norm → "conv"; the fully-connected layers and their batch
norm → "fc" (the paper uses separate LSTMs for the two).

``labels`` restricts the task to a label subset (CIFAR-2 = (0, 1), CIFAR-5 = (0..4)); the output
layer then has ``len(labels)`` units.  The paper's "LSTM-sub" is trained on the held-out labels
(5..9) and evaluated on CIFAR-5 / CIFAR-2.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import torch
import torch.nn.functional as F

from .base import Problem, check_horizon
from .data import load_cifar10, minibatch_indices, split_seed

BN_EPS = 1e-5


@lru_cache(maxsize=16)
def _subset(split: str, labels: tuple[int, ...], root: str | None):
    """Images with a label in ``labels`` (uint8 N×3×32×32) and labels remapped to 0..k-1."""
    x, y = load_cifar10(split, root)
    if labels != tuple(range(10)):
        keep = torch.isin(y, torch.tensor(labels))
        x, y = x[keep], y[keep]
        remap = torch.full((10,), -1, dtype=torch.int64)
        remap[torch.tensor(labels)] = torch.arange(len(labels))
        y = remap[y]
    if x.shape[0] == 0:
        raise ValueError(f"CIFAR-10 {split} holds no images with labels {labels}")
    return x.permute(0, 3, 1, 2).contiguous(), y


@lru_cache(maxsize=4)
def _channel_stats(root: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of the whole training set, used to standardise every input."""
    x, _ = load_cifar10("train", root)
    xf = x.reshape(-1, 3).float() / 255.0
    return xf.mean(0).view(1, 3, 1, 1), xf.std(0).view(1, 3, 1, 1)


@dataclass
class CIFARTask:
    labels: Sequence[int] = tuple(range(10))
    conv_channels: Sequence[int] = (16, 16, 16)
    kernel_size: int = 5
    fc_units: int = 32
    batch_size: int = 128
    steps: int = 100
    unroll: int = 20
    init_std: float = 0.01
    root: str | os.PathLike | None = None  # dataset folder; None: <data>/cifar10
    name: str = "cifar10"

    def __post_init__(self) -> None:
        check_horizon(self)
        self.labels = tuple(int(c) for c in self.labels)
        if len(self.labels) < 2 or len(set(self.labels)) != len(self.labels) or not all(0 <= c < 10 for c in self.labels):
            raise ValueError(f"labels must be at least two distinct classes in 0..9, got {self.labels}")
        self.conv_channels = tuple(int(c) for c in self.conv_channels)
        if not self.conv_channels or any(c < 1 for c in self.conv_channels) or len(self.conv_channels) > 5:
            raise ValueError(f"conv_channels must be 1 to 5 positive sizes, got {self.conv_channels}")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and positive, got {self.kernel_size}")
        if self.fc_units < 1 or self.batch_size < 2:
            raise ValueError("fc_units must be positive and batch_size at least 2 (batch norm)")

    def sample(self, generator: torch.Generator, split: str = "train") -> Problem:
        seed = split_seed(generator, split)
        x, y = _subset("test" if split == "test" else "train", self.labels, self.root)
        mean, std = _channel_stats(self.root)
        g = torch.Generator().manual_seed(seed)
        k, s = self.kernel_size, self.init_std

        params: list[torch.Tensor] = []
        groups: list[str] = []

        def add(tensor: torch.Tensor, group: str) -> None:
            params.append(tensor)
            groups.append(group)

        in_ch = 3
        for out_ch in self.conv_channels:
            add(s * torch.randn(out_ch, in_ch, k, k, generator=g), "conv")
            add(torch.ones(out_ch), "conv")  # batch-norm scale
            add(torch.zeros(out_ch), "conv")  # batch-norm offset
            in_ch = out_ch
        side = 32
        for _ in self.conv_channels:
            side = (side + 1) // 2  # ceil_mode pooling
        flat = in_ch * side * side
        add(s * torch.randn(self.fc_units, flat, generator=g), "fc")
        add(s * torch.randn(self.fc_units, generator=g), "fc")
        add(torch.ones(self.fc_units), "fc")  # batch-norm scale
        add(torch.zeros(self.fc_units), "fc")  # batch-norm offset
        add(s * torch.randn(len(self.labels), self.fc_units, generator=g), "fc")
        add(s * torch.randn(len(self.labels), generator=g), "fc")

        n_conv = len(self.conv_channels)
        data_seed = int(torch.randint(0, 2**62, (1,), generator=g))
        batch_size = self.batch_size

        def forward(params, images):
            h = (images.float() / 255.0 - mean) / std
            for i in range(n_conv):
                w, gamma, beta = params[3 * i : 3 * i + 3]
                h = F.conv2d(h, w, padding=k // 2)
                h = F.batch_norm(h, None, None, gamma, beta, training=True, eps=BN_EPS)
                h = F.max_pool2d(F.relu(h), 2, ceil_mode=True)
            w1, b1, gamma, beta, w2, b2 = params[3 * n_conv :]
            h = F.linear(h.flatten(1), w1, b1)
            h = F.relu(F.batch_norm(h, None, None, gamma, beta, training=True, eps=BN_EPS))
            return F.linear(h, w2, b2)

        def loss(params, t):
            idx = minibatch_indices(data_seed, t, x.shape[0], batch_size)
            return F.cross_entropy(forward(params, x[idx]), y[idx])

        def metric(params):
            # Batch norm uses batch statistics, so evaluate in shuffled minibatches of the training
            # size (the stored images are sorted by class); at most 2 048 images, for speed.
            order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))[:2048]
            size = min(batch_size, order.numel())  # a batch larger than the split: one batch of it all
            with torch.no_grad():
                total, correct, n = 0.0, 0, 0
                for start in range(0, order.numel() - size + 1, size):
                    idx = order[start : start + size]
                    logits = forward(params, x[idx])
                    labels = y[idx]
                    total += float(F.cross_entropy(logits, labels, reduction="sum"))
                    correct += int((logits.argmax(1) == labels).sum())
                    n += labels.shape[0]
                return {"loss": total / n, "accuracy": correct / n}

        return Problem(params, loss, groups=groups, metric=metric)
