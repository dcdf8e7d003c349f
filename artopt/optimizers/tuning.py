"""Learning-rate search for the baselines: the paper's protocol of tuning each hand-designed
optimizer's learning rate per task on validation problems.

    res = search_lr(get_task("mnist"), "adam")           # 10^k, k = -4, -3.5, ..., 1
    res.lr, res.scores                                   # chosen lr, criterion per lr

Criterion: mean *final* loss over ``problems`` "val" problems (what the comparison reports), or
``criterion="trajectory"`` for the mean loss over the whole run.  A diverged run scores +inf.
Validation problems come from the task's "val" split, so they are never the evaluation ("test")
problems.  ``TunedLRCache`` stores results in a JSON file (``train/results/tuned_lrs.json``) so
evaluation runs reuse them.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..evaluation import baseline_factory, run_optimizer
from ..file_writes import folder_lock
from ..learned_optimizers.weights import write_text_atomic
from ..tasks.base import Task

DEFAULT_GRID = tuple(10.0 ** (k / 2) for k in range(-8, 3))  # 1e-4 ... 10, half-decade steps
TUNE_SEED_OFFSET = 2_000_000  # keeps tuning's "val" problems apart from meta-training's


@dataclass
class LRSearchResult:
    optimizer: str
    lr: float
    criterion: str
    scores: dict[str, float]  # str(lr) -> criterion value (inf = diverged)
    problems: int
    steps: int
    seed: int
    at_edge: bool  # the best lr is the smallest or largest tried: widen the grid
    grid: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["scores"] = {k: (v if math.isfinite(v) else "inf") for k, v in self.scores.items()}
        return d


@dataclass
class TuneProgress:
    optimizer: str
    lr: float
    score: float
    done: int
    total: int


def score_curves(curves: torch.Tensor, criterion: str) -> float:
    """Criterion over a (problems, steps + 1) block of loss curves; inf if any run diverged."""
    curves = curves.to(torch.float64)
    if not torch.isfinite(curves[:, -1]).all():
        return math.inf
    if criterion == "final":
        return float(curves[:, -1].mean())
    if criterion == "trajectory":
        return float(curves.mean())
    raise ValueError(f"criterion must be 'final' or 'trajectory', got {criterion!r}")


def search_lr(
    task: Task,
    optimizer: str,
    grid: Sequence[float] = DEFAULT_GRID,
    problems: int = 5,
    steps: int | None = None,
    seed: int = 0,
    criterion: str = "final",
    progress: Callable[[TuneProgress], None] | None = None,
    widen: int = 0,
    basis: str = "pixels",
) -> LRSearchResult:
    """Try every lr in ``grid`` on the same ``problems`` val problems; pick the best by ``criterion``.

    Ties (e.g. several lrs reaching the same optimum) go to the smaller lr.  ``widen``: while the
    best lr is the grid's smallest or largest, try up to this many more beyond it (see ``grid_search``).
    ``basis``: as ``baseline_factory``'s.
    """
    grid = _checked_grid(grid)
    if problems < 1:
        raise ValueError(f"problems must be at least 1, got {problems}")
    score_curves(torch.zeros(1, 2), criterion)  # validate the criterion before any work
    steps = task.steps if steps is None else int(steps)
    if steps < 1:  # 0 steps: every lr would tie at the initial loss and the smallest "win"
        raise ValueError(f"steps must be at least 1, got {steps}")
    gen = torch.Generator().manual_seed(TUNE_SEED_OFFSET + seed)
    val_problems = [task.sample(gen, "val") for _ in range(problems)]
    done = 0

    def score(lr: float) -> float:
        nonlocal done
        factory = baseline_factory(optimizer, lr, basis=basis)
        curves = torch.stack([run_optimizer(p, factory, steps).curve for p in val_problems])
        value = score_curves(curves, criterion)
        done += 1
        if progress:
            progress(TuneProgress(optimizer, lr, value, done, max(done, len(grid))))
        return value

    found = grid_search(score, grid, widen)
    if not math.isfinite(found.scores[repr(found.lr)]):
        raise TuningDivergedError(f"{optimizer} diverged on {task.name} at every learning rate in {found.grid}; "
                                  "try lower rates")
    return LRSearchResult(optimizer, found.lr, criterion, found.scores, problems, steps, seed,
                          at_edge=found.at_edge, grid=found.grid)


class TuningDivergedError(RuntimeError):
    """Every rate of a search diverged: a user's grid set too high, which the scripts say in one line."""


@dataclass
class GridSearch:
    lr: float  # the best rate tried (ties: the smaller)
    scores: dict[str, float]  # repr(lr) -> score, for every rate tried
    grid: list[float]  # every rate tried, ascending
    at_edge: bool  # the best is still the smallest or largest rate tried


def _checked_grid(grid: Sequence[float]) -> list[float]:
    grid = sorted(float(x) for x in grid)
    if not grid or any(not (x > 0 and math.isfinite(x)) for x in grid):
        raise ValueError("the lr grid must be non-empty, positive and finite")
    return grid


def grid_search(score: Callable[[float], float], grid: Sequence[float], widen: int = 0) -> GridSearch:
    """Score every rate in ``grid`` (lower is better; inf for a diverged run) and keep the best.

    A best rate at the grid's edge means the optimum may lie beyond it, so with ``widen`` > 0 the
    search steps past that edge, by the ratio between the edge and its neighbour (×2 for a single
    rate), up to ``widen`` times, until the best rate has a worse one on each side.
    """
    grid = _checked_grid(grid)
    if widen < 0:
        raise ValueError(f"widen must be at least 0, got {widen}")
    scores = {repr(lr): score(lr) for lr in grid}

    def best_rate() -> float:
        return min(grid, key=lambda lr: (scores[repr(lr)], lr))

    for _ in range(widen):
        best = best_rate()
        if best == grid[-1] and math.isfinite(scores[repr(best)]):
            new = best * (best / grid[-2] if len(grid) > 1 else 2.0)
        elif best == grid[0]:
            new = best / (grid[1] / best if len(grid) > 1 else 2.0)
        else:
            break
        scores[repr(new)] = score(new)
        grid = sorted(grid + [new])
    best = best_rate()
    return GridSearch(best, scores, grid, at_edge=best in (grid[0], grid[-1]))


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")  # NaN / Infinity: Python writes them, strict JSON has none


def is_tuned_rate(lr) -> bool:
    """Whether a cache entry's ``lr`` is usable: a positive finite number."""
    return isinstance(lr, (int, float)) and not isinstance(lr, bool) and 0 < lr < math.inf


class TunedLRCache:
    """Tuned learning rates in a JSON file: {task: {"steps=N": {optimizer: LRSearchResult dict}}}.

    A file that is not strict JSON of that shape, or an entry without a positive finite "lr", is
    refused when it is read (ValueError naming the file and the entry), never half-used."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.data: dict = {}
        self._put: dict = {}  # what this run tuned: all that save() writes over the file's entries
        if self.path.is_file():
            try:
                self.data = json.loads(self.path.read_text(encoding="utf-8"), parse_constant=_no_constant)
            except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
                raise ValueError(f"{self.path}: not valid JSON ({e}); fix or delete it") from None
            if not isinstance(self.data, dict):
                raise ValueError(f"{self.path}: expected a JSON object")
            self._check()

    def _check(self) -> None:
        def bad(where: str, what: str):
            return ValueError(f"{self.path}: {where}: {what}; fix or delete it")

        for task, by_steps in self.data.items():
            if not isinstance(by_steps, dict):
                raise bad(task, 'expected an object of {"steps=N": ...}')
            for steps_key, by_opt in by_steps.items():
                if not isinstance(by_opt, dict):
                    raise bad(f"{task} / {steps_key}", "expected an object of {optimizer: entry}")
                for opt, entry in by_opt.items():
                    where = f"{task} / {steps_key} / {opt}"
                    if not isinstance(entry, dict):
                        raise bad(where, "expected an object with an 'lr'")
                    lr = entry.get("lr")
                    if not is_tuned_rate(lr):
                        raise bad(where, f"'lr' must be a positive finite number, got {lr!r}")

    def get(self, task: str, steps: int, optimizer: str) -> dict | None:
        return self.data.get(task, {}).get(f"steps={steps}", {}).get(optimizer)

    def put(self, task: str, result: LRSearchResult) -> None:
        for data in (self.data, self._put):
            data.setdefault(task, {}).setdefault(f"steps={result.steps}", {})[result.optimizer] = result.to_dict()

    def save(self) -> None:
        """Write atomically, re-reading the file under a lock and adding only what this run tuned, so
        what concurrent runs tuned meanwhile is kept: writing back every entry read at the start undid
        another run's re-tuned rate."""
        with folder_lock(self.path):
            merged = TunedLRCache(self.path).data if self.path.is_file() else {}
            for task, by_steps in self._put.items():
                for steps_key, by_opt in by_steps.items():
                    merged.setdefault(task, {}).setdefault(steps_key, {}).update(by_opt)
            self.data = merged
            write_text_atomic(self.path, json.dumps(merged, indent=2, sort_keys=True, allow_nan=False) + "\n")
