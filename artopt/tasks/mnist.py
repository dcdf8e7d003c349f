"""MNIST: a small MLP classifier as the optimizee (Section 3.2).

The base task is the paper's: one hidden layer of 20 sigmoid units, cross-entropy, minibatches of
128 drawn uniformly (with replacement) from the training images, 100 steps, unroll 20.  The test-time
variants (40 units, two hidden layers, ReLU, 200 steps) are the same class with other arguments.
Weights and biases start i.i.d. N(0, 0.01²), as in the authors' released code.

Splits: "train" and "val" problems draw minibatches from the 60 000 training images; "test"
problems from the 10 000 test images.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from .base import Problem, check_horizon
from .data import load_mnist, minibatch_indices, split_seed

ACTIVATIONS = {"sigmoid": torch.sigmoid, "relu": F.relu, "tanh": torch.tanh}


@dataclass
class MNISTTask:
    hidden: Sequence[int] = (20,)
    activation: str = "sigmoid"
    batch_size: int = 128
    steps: int = 100
    unroll: int = 20
    init_std: float = 0.01
    root: str | os.PathLike | None = None  # dataset folder; None: <data>/mnist
    name: str = "mnist"
    # Meta-training mixture: each problem's hidden layers get a width drawn from these (None: the
    # ``hidden`` sizes).  Wider nets reach lower losses, a regime longer test runs get to.
    widths: Sequence[int] | None = None
    # Each problem draws its minibatches from its own random subset of this many images of its
    # split (None: the whole split).  The test split has 10 000 images; a 10 000-image pool gives
    # training problems the same rate of repeated images over a 200-step run.
    pool: int | None = None

    def __post_init__(self) -> None:
        check_horizon(self)
        self.hidden = tuple(int(h) for h in self.hidden)
        if any(h < 1 for h in self.hidden):
            raise ValueError(f"hidden layer sizes must be positive, got {self.hidden}")
        if self.widths is not None:
            self.widths = tuple(int(w) for w in self.widths)
            if not self.widths or any(w < 1 for w in self.widths):
                raise ValueError(f"widths must be a non-empty list of positive sizes, got {self.widths}")
        if self.pool is not None:
            self.pool = int(self.pool)
            if self.pool < 1:
                raise ValueError(f"pool must be a positive number of images, got {self.pool}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")

    def sample(self, generator: torch.Generator, split: str = "train") -> Problem:
        seed = split_seed(generator, split)
        x, y = load_mnist("test" if split == "test" else "train", self.root)
        g = torch.Generator().manual_seed(seed)
        hidden = self.hidden
        if self.widths is not None:
            width = self.widths[int(torch.randint(len(self.widths), (1,), generator=g))]
            hidden = (width,) * len(self.hidden)
        sizes = (28 * 28, *hidden, 10)
        params = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            params.append(self.init_std * torch.randn(fan_out, fan_in, generator=g))
            params.append(self.init_std * torch.randn(fan_out, generator=g))
        data_seed = int(torch.randint(0, 2**62, (1,), generator=g))
        if self.pool is not None and self.pool < x.shape[0]:
            keep = torch.randperm(x.shape[0], generator=g)[: self.pool]
            x, y = x[keep], y[keep]
        act = ACTIVATIONS[self.activation]
        batch_size = self.batch_size

        def forward(params, images):
            h = images.reshape(images.shape[0], -1).float() / 255.0
            for i in range(0, len(params), 2):
                h = F.linear(h, params[i], params[i + 1])
                if i + 2 < len(params):
                    h = act(h)
            return h

        def loss(params, t):
            idx = minibatch_indices(data_seed, t, x.shape[0], batch_size)
            return F.cross_entropy(forward(params, x[idx]), y[idx])

        def metric(params):
            # Full-split loss and accuracy; the 10 000 test images (or first 10 000 training ones)
            # take a few milliseconds through this MLP.
            with torch.no_grad():
                logits = forward(params, x[:10_000])
                labels = y[:10_000]
                return {"loss": float(F.cross_entropy(logits, labels)),
                        "accuracy": float((logits.argmax(1) == labels).float().mean())}

        return Problem(params, loss, metric=metric)
