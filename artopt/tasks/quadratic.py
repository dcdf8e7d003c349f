"""The paper's synthetic task: random quadratics f(θ) = ‖Wθ − y‖² (Section 3.1).

W (d×d) and y (d) have i.i.d. standard normal entries and define the function; θ₀ has i.i.d.
N(0, 0.01²) entries, as in the authors' released code.  The loss is deterministic (full batch), so
L-BFGS applies here.

``batch > 1`` optimizes that many independent functions side by side, as the authors' code does
for meta-training (a batch of 128): one episode then averages the meta-gradient over many
functions instead of following one.  The losses are summed, not averaged, so every coordinate sees
exactly its own function's gradient and a learned optimizer trained on batches runs unchanged on
single functions (the evaluation protocol: ``batch = 1``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Problem, check_horizon
from .data import split_seed


@dataclass
class QuadraticTask:
    dim: int = 10
    init_std: float = 0.01
    steps: int = 100
    unroll: int = 20
    batch: int = 1
    name: str = "quadratic"

    def __post_init__(self) -> None:
        check_horizon(self)
        if self.dim < 1:
            raise ValueError(f"dim must be at least 1, got {self.dim}")
        if self.batch < 1:
            raise ValueError(f"batch must be at least 1, got {self.batch}")

    def sample(self, generator: torch.Generator, split: str = "train") -> Problem:
        g = torch.Generator().manual_seed(split_seed(generator, split))
        lead = (self.batch,) if self.batch > 1 else ()  # batch 1: plain d×d / d shapes
        W = torch.randn(*lead, self.dim, self.dim, generator=g)
        y = torch.randn(*lead, self.dim, generator=g)
        theta0 = self.init_std * torch.randn(*lead, self.dim, generator=g)
        return quadratic_problem(W, y, theta0)


def quadratic_problem(W: torch.Tensor, y: torch.Tensor, theta0: torch.Tensor) -> Problem:
    """f(θ) = ‖Wθ − y‖² for a given W, y, starting at θ₀ (or, with a leading batch dimension on all
    three, the sum of independent such functions).  The metric reports the optimum gap."""

    def loss(params, t):
        r = (W @ params[0].unsqueeze(-1)).squeeze(-1) - y
        return (r * r).sum()

    def metric(params):
        # min f is ‖y‖² minus the part of y in W's column space; lstsq handles singular W.
        best = torch.linalg.lstsq(W, y.unsqueeze(-1)).solution
        f_star = float((((W @ best).squeeze(-1) - y) ** 2).sum())
        return {"optimum_gap": float(loss(params, 0)) - f_star}

    return Problem([theta0], loss, metric=metric)
