"""Hand-designed optimizers: the baselines the learned optimizer is measured against.

``make_optimizer`` is the single place that turns a name into a ``torch.optim.Optimizer``; the
style engine, evaluation scripts and learning-rate search all go through it.
"""

from __future__ import annotations

import math
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
    if not (lr > 0 and math.isfinite(lr)):  # an inf rate would only make every run diverge
        raise ValueError(f"learning rate must be positive and finite, got {lr}")
    params = list(params)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if name == "nag":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    # L-BFGS: one outer iteration per step(), so a "step" is one iteration, as for the first-order
    # methods; its strong-Wolfe line search (which keeps it stable) takes one or more loss
    # evaluations per step, which evaluation reports as ``evaluations_per_step``.  max_eval: torch's
    # default, max_iter * 5 // 4, is 1 for one iteration, which left the line search no evaluation
    # past its first trial (max_ls = max_eval - 1 = 0): a step that did not lower the loss at t = 1 was
    # no step at all.
    return RestartingLBFGS(params, lr=lr, max_iter=1, max_eval=LBFGS_MAX_EVAL, history_size=10,
                           line_search_fn="strong_wolfe")


# A step's evaluations: its first, then the line search's first trial and up to max_eval - 1 more
# (torch's own limit for the line search is 25).
LBFGS_MAX_EVAL = 26


class RestartingLBFGS(torch.optim.LBFGS):
    """torch's L-BFGS, started afresh from the gradient after a step that did not move, and done once a
    fresh start does not move either (``stalled``: its steps then only evaluate the closure).

    torch's keeps its direction and history when the line search finds no step (t = 0); run for all
    its iterations in one ``step()`` it would stop there, but called once per iteration each later
    call searched the same direction again and spent its evaluations on the same point (at 64 px a
    stylization stalled at step 90 of 1000, and went on after a fresh start)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.stalled = False
        self._fresh = False  # the last step found no move and cleared the history

    def step(self, closure):
        if self.stalled:
            return closure()
        before = [p.detach().clone() for p in self._params]
        loss = super().step(closure)
        if all(torch.equal(b, p) for b, p in zip(before, self._params)):
            self.stalled = self._fresh
            self._fresh = True
            self.state.clear()  # the next step: steepest descent, a new history
        else:
            self._fresh = False
        return loss
