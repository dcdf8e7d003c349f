"""Hand-designed optimizers: the baselines the learned optimizer is measured against.

``make_optimizer`` is the single place that turns a name into a ``torch.optim.Optimizer``; the
style engine, evaluation scripts and learning-rate search all go through it.
"""

from __future__ import annotations

from typing import Iterable

import torch

BASELINES = ("sgd", "rmsprop", "adam", "nag", "lbfgs")

# Sensible defaults when no tuned learning rate is given.  Tuned values come from
# ``artopt.optimizers.tuning.search_lr`` and are recorded by the scripts that use them.
DEFAULT_LR = {"sgd": 0.1, "rmsprop": 0.01, "adam": 0.01, "nag": 0.1, "lbfgs": 1.0}


def make_optimizer(name: str, params: Iterable[torch.Tensor], lr: float | None = None) -> torch.optim.Optimizer:
    """Build a baseline optimizer by name.  Every optimizer is driven with ``step(closure)``."""
    name = name.lower()
    if name not in BASELINES:
        raise ValueError(f"unknown optimizer {name!r}; choose from {', '.join(BASELINES)}")
    lr = DEFAULT_LR[name] if lr is None else float(lr)
    if not lr > 0:
        raise ValueError(f"learning rate must be positive, got {lr}")
    params = list(params)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if name == "nag":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    # L-BFGS: one outer iteration per step() so that "steps" count loss-network evaluations
    # comparably with the first-order methods; strong-Wolfe line search keeps it stable.
    return torch.optim.LBFGS(params, lr=lr, max_iter=1, history_size=10, line_search_fn="strong_wolfe")
