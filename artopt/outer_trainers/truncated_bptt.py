"""Meta-training by truncated backpropagation through unrolled optimization.

Each episode draws a fresh problem, runs the learned optimizer on it for ``steps`` steps and, every
``unroll`` steps, updates φ with Adam on the trajectory loss Σ_t w_t f(θ_t) of that unroll (w_t = 1 as
in the paper unless ``trajectory_weights`` says otherwise), then cuts the graph (truncation).
``unroll_schedule="grow"`` lengthens the truncation over the run, up to the whole horizon, and
``horizon_schedule="grow"`` the training episodes (a horizon curriculum);
``meta_loss="log"`` uses Σ_t w_t log f(θ_t) instead (for stacked problems, ``problems_per_episode > 1``
or a batched task, f is their mean loss: the log of the mean, not the mean of the logs).  ``workers=N`` adds N - 1 processes that
meta-train the same φ (in shared memory) on problems of their own, each with its own Adam, lock-free
("Hogwild"): N cores make about N times the meta-updates in the same wall time.

Second derivatives are dropped as in the paper: ∇f(θ_t) enters the LSTM as a constant.  Then
d f(θ_t)/dφ = ∇f(θ_t)ᵀ dθ_t/dφ exactly, so we backpropagate the surrogate Σ_t ⟨∇f(θ_t), θ_t⟩
instead of f itself: the same gradient for φ, without keeping the optimizee's graph alive.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import math
import os
import random
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ..learned_optimizers.network import LSTMOptimizerConfig, LSTMOptimizerNet, learned_update
from ..tasks.base import Problem, Task, stack_problems
from .checkpoints import (ResumeError, check_resume, check_run_name, log_line, run_lock, save_best, save_checkpoint,
                          tuple_state, unloadable, unresumable)


TRAJECTORY_WEIGHTS = ("uniform", "linear", "sqrt", "quadratic")
META_LOSSES = ("sum", "log")

# The string options of MetaTrainConfig: allowed values (the first is the default) and a one-line
# explanation.  The training scripts turn each into a command-line flag.
OBJECTIVE_OPTIONS = {
    "val_criterion": (("trajectory", "final"),
                      "keep the checkpoint with the best mean validation loss over the run, or at its end"),
    "meta_lr_schedule": (("constant", "cosine"),
                         "cosine: decay the meta learning rate to 0 over the wall-time (or episode) budget"),
    "trajectory_weights": (TRAJECTORY_WEIGHTS,
                           "w_t of the meta-loss: uniform (the paper); linear, 2t/(T+1) (favours the final loss); "
                           "sqrt, √t scaled to mean 1 (between the two); quadratic, 6t²/((T+1)(2T+1)) (the final "
                           "loss more still)"),
    "meta_loss": (META_LOSSES,
                  "sum: Σ w_t f(θ_t) (the paper); log: Σ w_t log f(θ_t), each step counted by its relative "
                  "progress, so late steps with small losses are not drowned out by the first ones"),
    "unroll_schedule": (("constant", "grow"),
                        "grow: the truncation grows geometrically from --unroll to the whole horizon over the "
                        "first half of the budget (short unrolls learn fast, long ones are less greedy)"),
    "horizon_schedule": (("constant", "grow"),
                         "grow: a horizon curriculum: training episodes grow geometrically from two truncations to "
                         "the whole horizon (--steps) over the first half of the budget, in whole truncations; "
                         "validation always runs the whole horizon"),
}


@dataclass
class MetaTrainConfig:
    steps: int = 100  # optimization horizon of one episode
    unroll: int = 20  # truncation length
    episodes: int = 200
    meta_lr: float = 1e-3
    grad_clip: float = 1.0  # on φ's gradient norm; unrolled graphs occasionally explode
    val_every: int = 20  # episodes between validations
    val_problems: int = 8
    seed: int = 0
    max_minutes: float | None = None  # wall-time budget; stops after the episode that crosses it
    # Multiply each problem's loss by exp(U(-s, s)) (s = loss_scale_jitter): teaches scale
    # robustness, since a real user's loss is rarely on the training scale.
    loss_scale_jitter: float = 0.0
    # Backpropagate through this fraction of the coordinates only (an unbiased estimate of the
    # meta-gradient; see learned_update).  Makes meta-training on MNIST/CIFAR-sized models cheap.
    meta_fraction: float = 1.0
    # How the best checkpoint is chosen: "trajectory" (mean loss over the run, the meta-objective)
    # or "final" (the loss after the last step, what a user of a fixed step budget sees).
    val_criterion: str = "trajectory"
    # "constant", or "cosine": the meta learning rate decays to 0 over the run's budget (wall time
    # when max_minutes is set, else episodes), so the last checkpoints are not just Adam's noise.
    meta_lr_schedule: str = "constant"
    # w_t of the trajectory loss Σ_t w_t f(θ_t): "uniform" (w_t = 1, the paper), "linear"
    # (w_t = 2t / (T + 1), mean 1: later steps count more, trading early speed for final loss) or
    # "sqrt" (w_t ∝ √t, mean 1: the first unroll keeps more of its say than under "linear").
    trajectory_weights: str = "uniform"
    # "constant" (the paper), or "grow": the truncation length grows geometrically from ``unroll`` to
    # ``steps`` over the first half of the budget.  Short unrolls give many meta-updates early; long
    # ones remove truncation's short-horizon bias (φ tuned to look good 20 steps ahead, not at the end).
    unroll_schedule: str = "constant"
    # "constant", or "grow": a horizon curriculum.  Training episodes start at two truncations and grow
    # geometrically to ``steps`` over the first half of the budget: early on, when φ knows nothing of late
    # steps, short episodes give as many meta-updates a minute, drawn from several times as many problems.
    horizon_schedule: str = "constant"
    # "sum" (the paper): Σ_t w_t f(θ_t).  "log": Σ_t w_t log f(θ_t) (f > 0), whose gradient is
    # Σ_t w_t ∇f(θ_t) / f(θ_t): scale-free, and a step that halves a small late loss counts as much as
    # one that halves the large first one (under "sum" the first unroll's gradients dominate Adam's
    # second moments, so the later unrolls can barely move φ).
    meta_loss: str = "sum"
    # Problems per episode (a meta-batch): each meta-update averages the meta-gradient of this many
    # independent problems, optimized side by side (see ``sample_problems``).  Less noisy meta-updates,
    # and on neural art a batched loss network serves several images for little more than one.
    problems_per_episode: int = 1
    # Polyak averaging of φ: an exponential moving average with this decay per episode (0: off; with
    # workers, per episode of the main process, when φ holds the helpers' updates too).
    # Meta-gradients are noisy (one random problem per episode), so the averaged networks usually
    # validate better than the last iterate; when on, they are what is validated and saved.
    ema: float = 0.0
    # Processes meta-training φ at once: this one and workers - 1 helpers, each on its own problems with
    # its own Adam, all writing the one φ in shared memory without locks (Hogwild; φ is tiny and an update
    # is a small step, so a read that misses another process's last step costs little).  Meta-training is
    # update-limited: on a 2-core machine, workers=2 makes twice the updates in the same wall time.  The
    # helpers' Adam moments are not checkpointed (a resumed helper starts a fresh Adam), and with
    # workers > 1 a run is not bit-for-bit repeatable: the interleaving of updates depends on timing.
    workers: int = 1
    # Per-coordinate gradient rescaling seen by the LSTM is left to the task.
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        for name in ("steps", "unroll", "episodes", "val_every", "val_problems"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)!r}")
        if self.unroll > self.steps:
            raise ValueError(f"unroll must be at most steps ({self.steps}), got {self.unroll}")
        for name in ("meta_lr", "grad_clip"):
            if not 0 < getattr(self, name) < math.inf:
                raise ValueError(f"{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.max_minutes is not None and not 0 < self.max_minutes < math.inf:
            raise ValueError(f"minutes must be positive, got {self.max_minutes}")
        if not 0 < self.meta_fraction <= 1:
            raise ValueError(f"meta-fraction must be in (0, 1], got {self.meta_fraction}")
        if not 0 <= self.loss_scale_jitter < math.inf:
            raise ValueError(f"loss-scale-jitter must be non-negative, got {self.loss_scale_jitter}")
        if not isinstance(self.workers, int) or self.workers < 1:
            raise ValueError(f"workers must be a positive integer, got {self.workers!r}")
        if self.problems_per_episode < 1:
            raise ValueError(f"problems_per_episode must be at least 1, got {self.problems_per_episode}")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"ema must be a decay in [0, 1), got {self.ema}")
        for name, (allowed, _) in OBJECTIVE_OPTIONS.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")


def trajectory_weight(kind: str, t: int, steps: int) -> float:
    """w_t of the meta-loss Σ_t w_t f(θ_t), t = 1..steps; every kind averages 1 over the horizon."""
    if kind == "uniform":
        return 1.0
    if kind == "linear":
        return 2.0 * t / (steps + 1)
    if kind == "sqrt":
        return math.sqrt(t) / _mean_sqrt(steps)
    if kind == "quadratic":
        return 6.0 * t * t / ((steps + 1) * (2 * steps + 1))
    raise ValueError(f"trajectory_weights must be one of {TRAJECTORY_WEIGHTS}, got {kind!r}")


@functools.lru_cache(maxsize=8)
def _mean_sqrt(steps: int) -> float:
    """mean of √t over t = 1..steps (once per horizon, not once per step)."""
    return sum(math.sqrt(s) for s in range(1, steps + 1)) / steps


def _grads(problem: Problem, params: list[torch.Tensor], t: int, scale: float = 1.0):
    """Loss and gradient at ``params`` with the optimizee graph discarded right away."""
    with torch.enable_grad():
        leaves = [p.detach().requires_grad_(True) for p in params]
        loss = problem.loss(leaves, t)
        _check_loss(loss)
        loss = loss * scale
        # allow_unused: a parameter the loss ignores is named below, not by autograd's generic error.
        grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    unused = [i for i, g in enumerate(grads) if g is None]
    if unused:
        raise ValueError(f"the problem's loss does not depend on params{unused} (of {len(leaves)}): every "
                         "parameter must enter the loss, computed from the tensors it is given")
    return loss.detach(), [g.detach() for g in grads]


def _check_loss(loss) -> None:
    """A user's loss closure gone wrong, said plainly rather than as an autograd error."""
    if not torch.is_tensor(loss):
        raise TypeError(f"the problem's loss returned {type(loss).__name__}, not a tensor: compute it with "
                        "torch from the params it is given (no float(), .item() or numpy)")
    if loss.numel() != 1:
        raise ValueError(f"the problem's loss must be a scalar, got a tensor of shape {tuple(loss.shape)}: "
                         "reduce it (e.g. .sum() or .mean())")
    if not loss.requires_grad:
        raise ValueError("the problem's loss does not depend on the params it is given: compute it from "
                         "them (not from detached copies, or a model's own parameters)")


def run_episode(
    nets: nn.ModuleDict,
    problem: Problem,
    steps: int,
    unroll: int | None = None,
    meta_opt: torch.optim.Optimizer | None = None,
    grad_clip: float = 1.0,
    loss_scale: float = 1.0,
    meta_fraction: float = 1.0,
    generator: torch.Generator | None = None,
    trajectory_weights: str = "uniform",
    meta_loss: str = "sum",
) -> list[float]:
    """Optimize ``problem`` with the learned optimizer; train φ on the way when ``meta_opt`` is given.

    Returns the loss f(θ_t) for t = 0..steps (the loss before each step, then the final one),
    unscaled.
    """
    if trajectory_weights not in TRAJECTORY_WEIGHTS:
        raise ValueError(f"trajectory_weights must be one of {TRAJECTORY_WEIGHTS}, got {trajectory_weights!r}")
    if meta_loss not in META_LOSSES:
        raise ValueError(f"meta_loss must be one of {META_LOSSES}, got {meta_loss!r}")
    missing = [g for g in dict.fromkeys(problem.groups) if g not in nets]
    if missing:  # else a bare KeyError from the ModuleDict, mid-episode
        raise ValueError(f"the problem's parameter groups {missing} have no network; the networks are "
                         f"{sorted(nets)} (Problem.groups names one per parameter, default 'default')")
    training = meta_opt is not None
    unroll = unroll or steps
    params = [p.detach().clone() for p in problem.params]
    states: dict = {}
    losses: list[float] = []
    per_problem = loss_scale * problem.count  # a stacked problem reports (and is trained on) its mean
    loss, grads = _grads(problem, params, 0, loss_scale)
    value = float(loss)  # f at the params the next update starts from (for loss inputs)
    losses.append(value / per_problem)
    t = 0
    while t < steps:
        n = min(unroll, steps - t)
        surrogate = 0.0
        with torch.set_grad_enabled(training):
            for _ in range(n):
                params, states = learned_update(nets, params, grads, problem.groups, states, meta_fraction,
                                                generator, problem.levels, value)
                if problem.project is not None:
                    params = problem.project(params)
                t += 1
                loss, grads = _grads(problem, params, t, loss_scale)
                value = float(loss)
                losses.append(value / per_problem)
                if training:
                    w = trajectory_weight(trajectory_weights, t, steps)
                    if meta_loss == "log":  # d log f = df / f; a non-positive loss has no log
                        w = w / value if value > 0 else 0.0
                    w = w / problem.count
                    surrogate = surrogate + w * sum((g * p).sum() for g, p in zip(grads, params))
        if training and torch.is_tensor(surrogate) and surrogate.requires_grad:
            meta_opt.zero_grad(set_to_none=True)
            surrogate.backward()
            grads_ok = all(p.grad is None or torch.isfinite(p.grad).all() for p in nets.parameters())
            if grads_ok:
                nn.utils.clip_grad_norm_(nets.parameters(), grad_clip)
                meta_opt.step()
        # Truncation: the next unroll starts from constants.
        params = [p.detach() for p in params]
        states = {k: (tuple(x.detach() for x in v) if isinstance(v, tuple) else v) for k, v in states.items()}
        if not all(math.isfinite(x) for x in losses[-n:]):
            break  # a diverged episode teaches nothing more
    return losses


def add_meta_train_flags(parser) -> None:
    """The command-line flags both training scripts share: the objective options and the
    meta-gradient's cost/robustness knobs.  ``meta_train_flag_values`` reads them back."""
    parser.add_argument("--loss-scale-jitter", type=float, default=0.0,
                        help="multiply each problem's loss by exp(U(-s, s)) (scale robustness)")
    parser.add_argument("--problems-per-episode", type=int, default=1,
                        help="optimize this many independent problems side by side in each episode; every "
                             "meta-update averages over them (a meta-batch)")
    parser.add_argument("--ema", type=float, default=0.0, metavar="DECAY",
                        help="validate and keep an exponential moving average of the optimizer's weights "
                             "(decay per episode, e.g. 0.98, of the main process with --workers; 0: off)")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes that meta-train the optimizer at once, each on its own problems, sharing "
                             "its weights (Hogwild): about this many times the meta-updates per minute; give each "
                             "a core (--threads is per process)")
    parser.add_argument("--meta-fraction", type=float, default=1.0,
                        help="backpropagate through this random fraction of the coordinates (an unbiased "
                             "estimate of the meta-gradient at a fraction of the cost: more episodes per minute)")
    for name, (choices, help_text) in OBJECTIVE_OPTIONS.items():
        parser.add_argument("--" + name.replace("_", "-"), choices=choices, default=choices[0], help=help_text)


def meta_train_flag_values(args) -> dict:
    """MetaTrainConfig keywords from the flags ``add_meta_train_flags`` added."""
    names = ("loss_scale_jitter", "meta_fraction", "problems_per_episode", "ema", "workers", *OBJECTIVE_OPTIONS)
    return {name: getattr(args, name) for name in names}


def validation_problems(task, seed: int, n: int) -> list:
    """The ``n`` validation problems a run with this ``seed`` validates on (drawn from the task's
    "val" split with generator seed 10000 + seed)."""
    gen = torch.Generator().manual_seed(10_000 + seed)
    return [task.sample(gen, "val") for _ in range(n)]


def sample_problems(task, generator: torch.Generator, split: str, k: int) -> Problem:
    """One problem, or ``k`` of them stacked into one (the task's ``sample_batch`` when it has one)."""
    if k == 1:
        return task.sample(generator, split)
    if hasattr(task, "sample_batch"):
        return task.sample_batch(generator, split, k)
    return stack_problems([task.sample(generator, split) for _ in range(k)])


def budget_progress(config: MetaTrainConfig, episode: int, elapsed_s: float) -> float:
    """How much of the run's budget is spent, in [0, 1]: wall time when max_minutes is set, else episodes."""
    if config.max_minutes is not None:
        progress = elapsed_s / (config.max_minutes * 60)
    else:
        progress = episode / max(1, config.episodes)
    return min(1.0, max(0.0, progress))


def meta_lr_at(config: MetaTrainConfig, episode: int, elapsed_s: float) -> float:
    """The meta learning rate for the next episode under ``config.meta_lr_schedule``."""
    if config.meta_lr_schedule == "constant":
        return config.meta_lr
    return config.meta_lr * 0.5 * (1 + math.cos(math.pi * budget_progress(config, episode, elapsed_s)))


def _grown(config: MetaTrainConfig, episode: int, elapsed_s: float, start: float, end: float) -> float:
    """A "grow" schedule's value: geometric from ``start`` to ``end`` over the first half of the budget."""
    return start * (end / start) ** min(1.0, 2 * budget_progress(config, episode, elapsed_s))


def unroll_at(config: MetaTrainConfig, episode: int, elapsed_s: float) -> int:
    """The truncation length for the next episode under ``config.unroll_schedule``."""
    if config.unroll_schedule == "constant" or config.unroll >= config.steps:
        return config.unroll
    return min(config.steps, round(_grown(config, episode, elapsed_s, config.unroll, config.steps)))


def horizon_at(config: MetaTrainConfig, episode: int, elapsed_s: float) -> int:
    """The next training episode's number of steps under ``config.horizon_schedule``: whole truncations
    (``config.unroll``), from two of them to ``config.steps``."""
    start = min(config.steps, 2 * config.unroll)
    if config.horizon_schedule == "constant" or start >= config.steps:
        return config.steps
    if 2 * budget_progress(config, episode, elapsed_s) >= 1:  # grown: all of it, whole truncations or not
        return config.steps
    horizon = _grown(config, episode, elapsed_s, start, config.steps)
    return min(config.steps, max(start, config.unroll * round(horizon / config.unroll)))


def trajectory_score(losses: list[float]) -> float:
    """Validation criterion: mean loss over the trajectory (what the meta-objective optimizes)."""
    finite = [x if math.isfinite(x) else float("inf") for x in losses]
    return sum(finite) / len(finite)


def final_score(losses: list[float]) -> float:
    """Validation criterion: the loss at the end of the run, averaged over the last 5% of the
    steps (at least one) because minibatch losses are noisy; inf if the run diverged."""
    tail = losses[-max(1, len(losses) // 20):]
    return sum(tail) / len(tail) if all(math.isfinite(x) for x in tail) else float("inf")


@dataclass
class MetaTrainResult:
    best_val: float
    best_episode: int
    episodes_done: int
    wall_time_s: float
    history: list[dict]


def meta_train(
    task: Task,
    nets: nn.ModuleDict,
    config: MetaTrainConfig,
    *,
    out_dir: str | os.PathLike,
    name: str = "optimizer",
    card: dict | None = None,
    progress: bool = True,
    log: Callable[[dict], None] | None = None,
    task_settings: dict | None = None,
    task_setting_defaults: dict | None = None,
) -> MetaTrainResult:
    """Meta-train ``nets`` on ``task``; resumable from ``out_dir/<name>.ckpt``.  ``task_settings`` (the
    script's task flags) are checked on resume like the trainer's: a run must not change its task
    (one given a setting at its default, in ``task_setting_defaults`` with the same nesting, and one
    not given it are the same run).

    ``nets`` maps each of the problems' parameter groups to its network (usually just
    ``{"default": LSTMOptimizerNet()}``; a single network serves as "default"); it is trained in place.
    Episodes are ``config.steps`` long (the task's own ``steps`` is not read).  Before training, the
    validation problems must have a finite loss and gradient at θ₀, and ``task.sample`` must draw the
    same problem from generators in the same state (ValueError otherwise).

    A checkpoint that cannot be resumed (not a readable one, or of other settings) raises ResumeError,
    a ValueError; ``name`` must be a plain file name.

    Writes ``<name>.ckpt`` (resumable state, atomically replaced), ``<name>.safetensors`` + ``.json``
    (best networks so far, by validation: ``LearnedOptimizer(params, weights=...)`` loads it) and
    ``<name>.log.jsonl`` (one JSON line per event).  A second run of the same name in the same folder
    is refused (RunBusyError, a ValueError) while this one trains.
    """
    check_run_name(name)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with run_lock(out_dir, name):
        return _meta_train(task, nets, config, out_dir=out_dir, name=name, card=card, progress=progress, log=log,
                           task_settings=task_settings, task_setting_defaults=task_setting_defaults)


def _meta_train(task, nets, config, *, out_dir: Path, name, card, progress, log, task_settings,
                task_setting_defaults=None) -> MetaTrainResult:
    """``meta_train`` with the run's lock held."""
    nets = _as_module_dict(nets)
    ckpt_path = out_dir / f"{name}.ckpt"
    log_path = out_dir / f"{name}.log.jsonl"
    meta_opt = torch.optim.Adam(nets.parameters(), lr=config.meta_lr)
    averaged = AveragedModel(nets, multi_avg_fn=get_ema_multi_avg_fn(config.ema)) if config.ema else None
    kept = averaged.module if averaged is not None else nets  # the networks validated and saved

    # Validation problems are fixed for the whole run so scores are comparable between episodes.
    val_problems = validation_problems(task, config.seed, config.val_problems)
    _check_validation_problems(task, config.seed, val_problems)

    episode, best_val, best_episode, history, elapsed_before = 0, float("inf"), -1, [], 0.0
    train_gen = torch.Generator().manual_seed(config.seed)
    rng = random.Random(config.seed)
    run_settings = _run_settings(config, nets, task_settings)
    last_validated = 0  # the episode of the last validation
    if ckpt_path.is_file():
        try:
            ck = torch.load(ckpt_path, weights_only=True)
            stored_settings = ck.get("settings")
        except Exception as exc:  # truncated, empty or foreign file
            raise unloadable(ckpt_path, exc) from None
        defaults = _default_settings(run_settings.get("nets", {}))
        if task_setting_defaults is not None:
            defaults["task"] = json.loads(json.dumps(task_setting_defaults))
        check_resume(ckpt_path, stored_settings, run_settings, defaults)
        try:
            nets.load_state_dict(ck["nets"])
            meta_opt.load_state_dict(ck["meta_opt"])
            train_gen.set_state(ck["train_gen"])
            rng.setstate(tuple_state(json.loads(ck["py_rng"])))
            episode, best_val, best_episode = ck["episode"], ck["best_val"], ck["best_episode"]
            history, elapsed_before = json.loads(ck["history"]), ck["elapsed"]
            last_validated = ck.get("last_validated", episode)  # older checkpoints: at their episode
        except Exception as exc:  # a checkpoint that loads but lacks or garbles a part
            raise unresumable(ckpt_path, exc) from None
        if averaged is not None:
            if "averaged" not in ck:
                raise ResumeError(f"{ckpt_path} was written without --ema; resume it without, or start a new run")
            averaged.load_state_dict(ck["averaged"])

    def emit(event: dict) -> None:
        with open(log_path, "a", encoding="utf-8") as f:
            f.write(log_line(event))
        if log:
            log(event)

    # A log cut mid-line (a full disk, a crash while writing) would have the next event appended to
    # its partial line, making that line unreadable too: start on a line of its own.
    if log_path.is_file() and log_path.stat().st_size:
        with open(log_path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            cut = f.read(1) != b"\n"
        if cut:
            with open(log_path, "a", encoding="utf-8") as f:
                f.write("\n")

    score_fn = trajectory_score if config.val_criterion == "trajectory" else final_score

    def validate(which: nn.ModuleDict = kept) -> float:
        with torch.no_grad():
            scores = [score_fn(run_episode(which, p, config.steps)) for p in val_problems]
        return sum(scores) / len(scores)

    def checkpoint(elapsed: float) -> None:
        save_checkpoint(ckpt_path, nets, meta_opt, train_gen, rng, episode, best_val, best_episode, history,
                         elapsed, averaged, run_settings, last_validated)

    # A log that continues after a kill shows where (episodes after a hard kill repeat from the checkpoint).
    emit({"event": "resumed" if ckpt_path.is_file() else "start", "episode": episode, "elapsed": elapsed_before})
    helpers = None

    validations = 0  # by this call

    def validate_and_keep() -> None:
        """Validate φ now, keep it if it is the best so far, checkpoint the run."""
        nonlocal best_val, best_episode, last_validated, validations
        validations += 1
        # Helpers keep updating φ while it is validated: validate (and keep) a copy.
        validated = copy.deepcopy(kept) if helpers else kept
        val = validate(validated)
        elapsed = elapsed_before + time.perf_counter() - start
        event = {"event": "val", "episode": episode, "val": val, "elapsed": elapsed}
        if averaged is not None:  # the last iterate too, to see what the averaging gains
            event["val_last_iterate"] = validate(copy.deepcopy(nets) if helpers else nets)
        emit(event)
        if val < best_val:
            save_best(out_dir, name, validated, card, config, val, episode, elapsed)
            # Only now: a checkpoint written by an interrupt inside save_best held the new score with
            # the old networks, and the resumed run's equal score never wrote the new ones.
            best_val, best_episode = val, episode
        # Only now: a run interrupted while validating must validate again when resumed.
        last_validated = episode
        checkpoint(elapsed)

    # From here: the first validation counts in the time budget and the wall time (the last one did
    # already; a run overshot --minutes by the first, and the card left it out).
    start = time.perf_counter()
    if best_episode < 0:
        try:
            best_val = validate()
        except KeyboardInterrupt:  # before any checkpoint: it ended with exit code 130 and no word
            if progress:
                print(f"interrupted during the first validation, before {ckpt_path.name} was written: the same "
                      "command starts the run over", file=sys.stderr)
            raise
        best_episode = episode
        elapsed = elapsed_before + time.perf_counter() - start
        save_best(out_dir, name, kept, card, config, best_val, best_episode, elapsed)
        emit({"event": "val", "episode": episode, "val": best_val, "elapsed": elapsed})

    next_val = (last_validated // config.val_every + 1) * config.val_every
    if last_validated < episode and (episode >= next_val or episode >= config.episodes):
        validate_and_keep()  # due when the run was stopped (e.g. interrupted while validating)
    # A finished run rerun (to ship it again), or resumed with the budget it already spent.
    spent = episode >= config.episodes or (config.max_minutes is not None and elapsed_before > config.max_minutes * 60)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        # Under a time budget the episode cap (100000 by default) is not what ends the run: no
        # percentage of it, and the minutes left beside the scores instead.
        bar = tqdm(total=None if config.max_minutes is not None else config.episodes, initial=episode,
                   desc=f"meta-train {name}", unit="ep")
        if spent:
            bar.write(f"{name}: its budget is spent ({episode} episodes, {elapsed_before / 60:.1f} min): nothing "
                      "more to train; raise --episodes or --minutes to go on", file=sys.stderr)
    # SIGTERM (e.g. a job scheduler) stops like Ctrl-C: with a checkpoint, not just the last validation's.
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous_sigterm = signal.signal(signal.SIGTERM, _raise_interrupt) if in_main_thread else None
    next_val = (episode // config.val_every + 1) * config.val_every
    try:
        if config.workers > 1 and not spent:
            # (elapsed now, not at the start: the helpers' clock lagged by the first validation)
            helpers = _Helpers(task, nets, config, episode, elapsed_before + time.perf_counter() - start, log_path)
        while episode < config.episodes:
            elapsed = elapsed_before + time.perf_counter() - start
            if config.max_minutes is not None and elapsed > config.max_minutes * 60:
                emit({"event": "time_budget", "episode": episode, "elapsed": elapsed})
                break
            if helpers and not helpers.claim():
                break  # the helpers have begun the budget's last episodes
            losses = _training_episode(task, nets, config, meta_opt, train_gen, rng, episode, elapsed)
            if averaged is not None:
                averaged.update_parameters(nets)
            done_before, episode = episode, (helpers.count_episode() if helpers else episode + 1)
            event = {"event": "train", "episode": episode, "steps": len(losses) - 1,
                     "score": trajectory_score(losses), "final": losses[-1],
                     "elapsed": elapsed_before + time.perf_counter() - start}
            history.append(event)
            emit(event)
            if bar is not None:
                bar.update(episode - done_before)
                left = ({} if config.max_minutes is None else
                        {"min_left": f"{max(0.0, config.max_minutes - event['elapsed'] / 60):.1f}"})
                bar.set_postfix(score=f"{event['score']:.4g}", best_val=f"{best_val:.4g}", **left)
            if helpers:
                helpers.check()
            if episode >= next_val or episode >= config.episodes:
                next_val = (episode // config.val_every + 1) * config.val_every
                validate_and_keep()
                if bar is not None:  # now, not after the next episode (the last validation never showed)
                    bar.set_postfix(score=f"{event['score']:.4g}", best_val=f"{best_val:.4g}", **left)
        if helpers:  # the helpers end their last episodes (the budget's) and stop by themselves
            episode = helpers.stop(wait=True)
            helpers.check()  # one killed in those episodes ended the run short, without a word
            if bar is not None:
                bar.update(episode - bar.n)
        if last_validated != episode:
            # The budget's last episodes (a time budget's, or a helper's) are validated too: a run
            # must not ship networks older than what it trained.
            validate_and_keep()
            if bar is not None:
                bar.set_postfix(best_val=f"{best_val:.4g}")
    except KeyboardInterrupt:
        # Keep the episodes done since the last validation.  (Meta-updates an interrupted episode
        # already applied stay in φ; its episode is not counted, so the rerun draws a new problem.)
        previous_sigint = None
        if helpers and in_main_thread:
            # A second Ctrl-C or SIGTERM while the helpers ended their episodes broke off this handler
            # before the checkpoint was written: now it stops them at once instead.
            previous_sigint = signal.signal(signal.SIGINT, lambda signum, frame: helpers.terminate())
            signal.signal(signal.SIGTERM, lambda signum, frame: helpers.terminate())
            (bar.write if bar is not None else print)(
                "stopping: the helper processes end their episodes first (Ctrl-C again: stop them now)",
                file=sys.stderr)
        try:
            if helpers:
                episode = helpers.stop()
            elapsed = elapsed_before + time.perf_counter() - start
            checkpoint(elapsed)
        finally:
            if previous_sigint is not None:
                signal.signal(signal.SIGINT, previous_sigint)
        emit({"event": "interrupted", "episode": episode, "elapsed": elapsed})
        if bar is not None:
            bar.write(f"interrupted: {ckpt_path} holds {episode} episodes; the same command resumes the run",
                      file=sys.stderr)  # beside the progress bar, not in the output a script may parse
        raise
    finally:
        if helpers:
            helpers.stop()
        if bar is not None:
            bar.close()
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous_sigterm)
    # (a rerun that trained and validated nothing adds nothing to the run's meta-training time)
    wall = elapsed_before + (time.perf_counter() - start if not spent or validations else 0.0)
    checkpoint(wall)
    return MetaTrainResult(best_val, best_episode, episode, wall, history)


def _as_module_dict(nets) -> nn.ModuleDict:
    """``nets`` as the ModuleDict meta-training needs: a plain dict of networks, or one network
    (it serves the group "default"), are wrapped; the networks themselves are not copied."""
    if isinstance(nets, nn.ModuleDict):
        return nets
    if isinstance(nets, LSTMOptimizerNet):
        return nn.ModuleDict({"default": nets})
    if isinstance(nets, dict) and nets and all(isinstance(n, LSTMOptimizerNet) for n in nets.values()):
        return nn.ModuleDict(nets)
    raise TypeError("nets must map parameter groups to networks, e.g. nn.ModuleDict({'default': "
                    f"LSTMOptimizerNet()}}), got {type(nets).__name__}")


def _check_validation_problems(task, seed: int, problems: list[Problem]) -> None:
    """Refuse, before any training, a task meta-training cannot learn from or validate on: a loss or
    gradient that is not finite at θ₀ (every episode would be skipped, and the run would end with an
    inf score and untrained networks), or a ``sample`` not determined by its generator (the validation
    problems, and so the scores a resumed run compares with, would change from run to run)."""
    start = []
    for i, problem in enumerate(problems):
        loss, grads = _grads(problem, problem.params, 0)
        if not (math.isfinite(float(loss)) and all(bool(torch.isfinite(g).all()) for g in grads)):
            what = "loss" if not math.isfinite(float(loss)) else "gradient"
            raise ValueError(f"validation problem {i}: the {what} at its starting point θ₀ is not finite (loss "
                             f"{float(loss)}); meta-training could learn nothing from it: fix the loss or θ₀")
        start.append(float(loss))
    (again,) = validation_problems(task, seed, 1)  # the first one, drawn again
    first = problems[0]
    same = (len(again.params) == len(first.params)
            and all(a.shape == b.shape and torch.allclose(a, b, rtol=1e-5, atol=1e-8)
                    for a, b in zip(again.params, first.params))
            and math.isclose(float(_grads(again, again.params, 0)[0]), start[0], rel_tol=1e-4, abs_tol=1e-12))
    if not same:
        raise ValueError("task.sample drew two different problems from generators in the same state: draw all of a "
                         "problem's randomness from the generator it is given (e.g. torch.randn(..., generator=g)), "
                         "not from torch's global one, so validation problems and resumed runs stay the same")


def _training_episode(task, nets: nn.ModuleDict, config: MetaTrainConfig, meta_opt: torch.optim.Optimizer,
                      gen: torch.Generator, rng: random.Random, episode: int, elapsed: float) -> list[float]:
    """One meta-training episode on a fresh problem, with the schedules' values for this point of the run."""
    for group in meta_opt.param_groups:
        group["lr"] = meta_lr_at(config, episode, elapsed)
    problem = sample_problems(task, gen, "train", config.problems_per_episode)
    scale = math.exp(rng.uniform(-1, 1) * config.loss_scale_jitter) if config.loss_scale_jitter else 1.0
    nets.train()
    steps = horizon_at(config, episode, elapsed)
    # (under a curriculum the trajectory weights span the episode's own horizon: its last step weighs
    # what a whole run's last step does)
    return run_episode(nets, problem, steps, min(steps, unroll_at(config, episode, elapsed)), meta_opt,
                       config.grad_clip, scale, config.meta_fraction, gen, config.trajectory_weights,
                       config.meta_loss)


class _Helpers:
    """The ``config.workers - 1`` helper processes of a Hogwild run and the episode count they share
    with this process.  ``nets`` moves to shared memory, so every process's Adam steps write the same φ."""

    def __init__(self, task, nets: nn.ModuleDict, config: MetaTrainConfig, episode: int, elapsed_before: float,
                 log_path: Path):
        # torch's context: it sends shared-memory tensors as handles.  Spawn, not fork: a forked child
        # inherits this process's OpenMP thread pool in an unusable state.
        ctx = torch.multiprocessing.get_context("spawn")
        nets.share_memory()
        self.episodes = ctx.Value("q", episode)  # episodes finished by all processes together
        self.claimed = ctx.Value("q", episode)  # ... and begun: a process claims an episode before it starts one
        self._stop = ctx.Event()
        ready = ctx.Semaphore(0)
        # Wall-clock time (time.time) is what the processes share; elapsed = elapsed_at + time.time().
        elapsed_at = elapsed_before - time.time()
        self.procs = [ctx.Process(target=_helper_main, name=f"meta-train helper {rank}", daemon=True,
                                  args=(rank, task, nets, config, elapsed_at, self.episodes, self.claimed,
                                        self._stop, ready, str(log_path), torch.get_num_threads(), os.getpid()))
                      for rank in range(1, config.workers)]
        self.stopped = False
        self.config = config
        try:
            for proc in self.procs:
                proc.start()
            # Start together: a helper takes seconds to import torch and build its task.
            for _ in self.procs:
                while not ready.acquire(timeout=1.0):
                    dead = [proc for proc in self.procs if proc.exitcode is not None]
                    if dead:
                        self.stop()
                        raise RuntimeError(f"{dead[0].name} did not start (exit code {dead[0].exitcode}; its "
                                           "traceback is above)")
        except BaseException:
            # e.g. Ctrl-C while they start: meta_train's caller has no handle on them yet, and a caller
            # that goes on (a notebook) had them train on in the background.
            self.terminate()
            for proc in self.procs:
                if proc.pid is not None:
                    proc.join()
            raise

    def claim(self) -> bool:
        """Whether this process may begin another episode within the episode budget."""
        return _claim(self.claimed, self.config.episodes, self.check)

    def count_episode(self) -> int:
        return _count(self.episodes, self.check)

    def check(self) -> None:
        for proc in self.procs:
            if proc.exitcode not in (None, 0):
                # A negative code is a signal: killed (e.g. SIGKILL by the out-of-memory killer), no traceback.
                why = (f"was killed by signal {-proc.exitcode} (out of memory?)" if proc.exitcode < 0 else
                       f"stopped with exit code {proc.exitcode} (its traceback is above)")
                raise RuntimeError(f"{proc.name} {why}; the checkpoint holds the last validation's state: rerun "
                                   "the command to resume")

    def terminate(self) -> None:
        """End the helpers now, mid-episode (what they counted stays counted)."""
        for proc in self.procs:
            if proc.is_alive():
                proc.terminate()

    def stop(self, wait: bool = False) -> int:
        """Stop the helpers after their current episode (``wait``: once they stop by themselves, at the end of
        the budget); the episode count once they have."""
        if not self.stopped:
            if not wait:
                self._stop.set()
            for proc in self.procs:
                proc.join(timeout=600)
                if proc.is_alive():
                    proc.terminate()
                    proc.join()
            self.stopped = True
        # Read without the lock: a helper killed while it held the lock (the out-of-memory killer)
        # never releases it, and the helpers are stopped now.
        return self.episodes.get_obj().value


@contextlib.contextmanager
def _holding(shared, alive: Callable[[], None]):
    """Hold ``shared``'s lock, calling ``alive()`` every second while another process holds it: ``alive``
    raises where that process is gone.  A process killed while it held the lock never releases it,
    and a plain ``with`` waited for it for ever, deaf to Ctrl-C and SIGTERM."""
    lock = shared.get_lock()
    while not lock.acquire(timeout=1.0):
        alive()
    try:
        yield
    finally:
        lock.release()


def _count(episodes, alive: Callable[[], None]) -> int:
    """Count one finished episode in the shared total; the new total."""
    with _holding(episodes, alive):
        episodes.value += 1
        return episodes.value


def _claim(claimed, budget: int, alive: Callable[[], None]) -> bool:
    with _holding(claimed, alive):
        if claimed.value >= budget:
            return False
        claimed.value += 1
        return True


def _still_wanted(parent: int, stop) -> Callable[[], None]:
    """A helper's ``alive`` for ``_holding``: it ends where the main process is gone or asks it to stop
    (e.g. after another helper died holding the lock this one waits for)."""
    def alive() -> None:
        if os.getppid() != parent or stop.is_set():
            raise SystemExit(0)
    return alive


def _helper_main(rank: int, task, nets: nn.ModuleDict, config: MetaTrainConfig, elapsed_at: float, episodes,
                 claimed, stop, ready, log_path: str, threads: int, parent: int) -> None:
    """A helper's loop: episodes on its own problems, its own Adam on the shared φ, until the budget is
    spent, the main process asks it to stop, or the main process is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the main process, which stops the helpers
    torch.set_num_threads(threads)
    meta_opt = torch.optim.Adam(nets.parameters(), lr=config.meta_lr)
    # Its own problems: seeded by the run's seed, the helper and the episode it starts at (a resumed run
    # draws new ones).
    first = episodes.get_obj().value  # (reads without the lock, which a killed helper may hold for ever)
    gen = torch.Generator().manual_seed(config.seed + 1_000_003 * rank + 7919 * first)
    rng = random.Random(gen.initial_seed())
    sample_problems(task, torch.Generator().manual_seed(0), "train", 1)  # builds what the task caches
    ready.release()
    while not stop.is_set() and os.getppid() == parent:
        elapsed = elapsed_at + time.time()
        episode = episodes.get_obj().value
        over_time = config.max_minutes is not None and elapsed > config.max_minutes * 60
        if over_time or not _claim(claimed, config.episodes, _still_wanted(parent, stop)):
            break
        losses = _training_episode(task, nets, config, meta_opt, gen, rng, episode, elapsed)
        if stop.is_set() or os.getppid() != parent:
            # the main process has taken its count already, or is gone (killed: a run restarted since
            # must not get this episode's line in its log); this episode's updates stay in φ
            break
        event = {"event": "train", "episode": _count(episodes, _still_wanted(parent, stop)), "worker": rank, "steps": len(losses) - 1,
                 "score": trajectory_score(losses), "final": losses[-1], "elapsed": elapsed_at + time.time()}
        with open(log_path, "a", encoding="utf-8") as f:  # one short line per append: whole lines, whatever the interleaving
            f.write(log_line(event))


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


# Settings a run may change when it is resumed: its budget.  Anything else would make the resumed
# episodes, or their comparison with the best validation so far, a different experiment.
RESUMABLE_CHANGES = ("episodes", "max_minutes")


def _run_settings(config: MetaTrainConfig, nets: nn.ModuleDict, task_settings: dict | None = None) -> dict:
    settings = {k: v for k, v in asdict(config).items() if k not in RESUMABLE_CHANGES}
    settings["nets"] = {name: net.config.to_dict() for name, net in nets.items()}
    if task_settings is not None:
        settings["task"] = task_settings
    return json.loads(json.dumps(settings))  # as stored: tuples become lists


def _default_settings(net_names) -> dict:
    """What ``_run_settings`` gives for a default MetaTrainConfig and default networks."""
    settings = {k: v for k, v in asdict(MetaTrainConfig()).items() if k not in RESUMABLE_CHANGES}
    settings["nets"] = {name: LSTMOptimizerConfig().to_dict() for name in net_names}
    return json.loads(json.dumps(settings))
