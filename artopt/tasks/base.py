"""The contract between optimizee problems, optimizers and meta-trainers.

A *task* is a distribution over problems; a *problem* is a starting point θ₀ and a loss closure.
Meta-training, baseline tuning and evaluation only ever see this interface, so a new task needs
nothing but a ``sample`` method.  A least-squares task of your own (``from artopt.tasks import
Problem, split_seed``)::

    class LeastSquares:
        name, steps, unroll = "lsq", 20, 5

        def sample(self, generator, split="train"):
            g = torch.Generator().manual_seed(split_seed(generator, split))  # all randomness from here
            A, b = torch.randn(8, 4, generator=g), torch.randn(8, generator=g)
            return Problem([torch.zeros(4)], lambda ps, t: ((A @ ps[0] - b) ** 2).mean())

The loss must be computed from the tensors it is given (``ps``), not from a model's own parameters.
``artopt.outer_trainers.meta_train`` then meta-trains a learned optimizer on it (see the README).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import torch

# f(params, t) -> scalar loss.  ``t`` is the optimization step; stochastic problems use it to pick
# their minibatch so that every optimizer compared on a problem sees the same data stream.
LossFn = Callable[[Sequence[torch.Tensor], int], torch.Tensor]


@dataclass
class Problem:
    """One optimizee instance."""

    params: list[torch.Tensor]  # θ₀ as plain tensors (no grad); optimizers copy them
    loss: LossFn
    # Which learned-optimizer network serves each parameter (the paper uses separate LSTMs for
    # the conv and fully-connected parameters on CIFAR).  Same length as ``params``.
    groups: list[str] = field(default_factory=list)
    # Optional extra metric for evaluation (e.g. test accuracy); never used for optimization.
    metric: Callable[[Sequence[torch.Tensor]], dict] | None = None
    # Optional projection applied after every optimizer step (e.g. clamping an image to [0, 1]).
    # Every optimizer, learned or not, goes through it, and meta-training differentiates through it.
    project: Callable[[list[torch.Tensor]], list[torch.Tensor]] | None = None
    # What the problem is made of (e.g. which photo and style), for logs and tests.
    info: dict = field(default_factory=dict)
    # How many independent problems this one stacks (a meta-batch, see ``stack_problems``): its loss
    # is their sum, so each keeps its own gradient; meta-training averages over them.
    count: int = 1
    # The multi-scale basis level of each parameter (``multiscale_problem``), for learned optimizers
    # with level inputs; None: not in a basis (all level 0).
    levels: list[int] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.params, list):  # e.g. model.parameters(), a generator: read it once
            self.params = list(self.params)
        if not self.params:
            raise ValueError("a Problem needs at least one parameter tensor")
        for i, p in enumerate(self.params):
            # Caught here, not as an autograd or "no attribute 'detach'" error deep in an optimizer.
            if not torch.is_tensor(p):
                raise TypeError(f"Problem.params[{i}] must be a torch.Tensor, got {type(p).__name__}")
            if not p.is_floating_point():
                raise TypeError(f"Problem.params[{i}] must be floating point (the optimizers step it "
                                f"continuously), got {p.dtype}; e.g. torch.zeros(n) or t.float()")
        if not callable(self.loss):
            raise TypeError(f"Problem.loss must be a function loss(params, t), got {type(self.loss).__name__}")
        if not self.groups:
            self.groups = ["default"] * len(self.params)
        if len(self.groups) != len(self.params):
            raise ValueError("Problem.groups must name one network group per parameter")
        if self.levels is not None and len(self.levels) != len(self.params):
            raise ValueError("Problem.levels must give one basis level per parameter")

    def fresh_params(self, requires_grad: bool = True) -> list[torch.Tensor]:
        return [p.detach().clone().requires_grad_(requires_grad) for p in self.params]


def check_horizon(task) -> None:
    """Refuse a task whose ``steps`` or ``unroll`` is not a positive whole number: otherwise the task
    builds, and evaluation or meta-training fails later, far from the cause (e.g. ``--task-arg steps=0``)."""
    for name in ("steps", "unroll"):
        value = getattr(task, name)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{name} must be a positive whole number of steps, got {value!r}")


class Task(Protocol):
    name: str
    # The horizon and truncation the task is defined with (e.g. 100 and 20): the training scripts'
    # defaults.  ``meta_train`` uses its config's ``steps`` and ``unroll`` instead.
    steps: int
    unroll: int

    def sample(self, generator: torch.Generator, split: str = "train") -> Problem:
        """Draw a fresh problem.  ``split`` is "train" (meta-training), "val" (checkpoint selection) or
        "test" (evaluation); ``split_seed(generator, split)`` gives each its own stream of problems.

        All of the problem's randomness must come from ``generator``: the same generator state must
        give the same problem (``meta_train`` checks this), or validation scores and resumed runs mean
        nothing."""
        ...


def stack_problems(problems: Sequence[Problem]) -> Problem:
    """One problem made of several independent ones: the parameters of all, the sum of their losses.

    Each parameter's gradient is then exactly its own problem's, so a learned optimizer sees what it
    would see on the problems one by one; ``count`` tells meta-training to average.  Tasks with a
    faster way (e.g. one batched network pass) provide ``sample_batch`` instead.
    """
    problems = list(problems)
    if not problems:
        raise ValueError("stack_problems needs at least one problem")
    sizes = [len(p.params) for p in problems]
    bounds = [sum(sizes[:i]) for i in range(len(sizes) + 1)]

    def loss(params, t):
        return sum(p.loss(params[a:b], t) for p, a, b in zip(problems, bounds, bounds[1:]))

    project = None
    if any(p.project is not None for p in problems):
        def project(params):
            out = []
            for p, a, b in zip(problems, bounds, bounds[1:]):
                out += p.project(params[a:b]) if p.project is not None else params[a:b]
            return out

    return Problem([x for p in problems for x in p.params], loss,
                   groups=[g for p in problems for g in p.groups], project=project,
                   info={"stacked": [p.info for p in problems]}, count=sum(p.count for p in problems),
                   levels=(None if all(p.levels is None for p in problems)
                           else [k for p in problems for k in (p.levels or [0] * len(p.params))]))
