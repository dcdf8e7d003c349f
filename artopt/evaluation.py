"""Evaluating optimizers on a task: loss curves, their mean with a 95% band, and the comparison.

    factories = {"adam": baseline_factory("adam", 0.01), "lstm": lstm_factory("weights/mnist.safetensors")}
    result = evaluate(get_task("mnist"), factories, instances=100, steps=100, seed=0)
    report = compare(result, lrs={"adam": 0.01})      # JSON-able

Every optimizer runs on the same ``instances`` problems, drawn from the task's "test" split with a
generator seeded ``EVAL_SEED_OFFSET + seed``: the split salt (see ``artopt.tasks.data.split_seed``)
keeps them apart from meta-training ("train") and validation / tuning ("val") problems.

A loss curve has ``steps + 1`` entries: f_t(θ_t) for t = 0..steps, the loss on step t's minibatch
before step t's update, then the last one, the same convention as the meta-trainer's episodes.
"""

from __future__ import annotations

import functools
import math
import numbers
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import torch

from .optimizers import make_optimizer
from .tasks.base import Problem, Task

EVAL_SEED_OFFSET = 1_000_000

# Builds an optimizer for a problem's parameters; ``groups`` names each parameter's network group.
OptimizerFactory = Callable[[list[torch.Tensor], list[str]], torch.optim.Optimizer]


@dataclass
class EvalProgress:
    """Passed to the ``progress`` callback after each (optimizer, instance) run."""

    optimizer: str
    instance: int  # 1-based count of finished instances for this optimizer
    instances: int
    final_loss: float


def baseline_factory(name: str, lr: float | None = None, basis: str = "pixels",
                     coarsest: int | None = None) -> OptimizerFactory:
    """A hand-designed optimizer (``make_optimizer`` names) with learning rate ``lr``.

    ``basis="multiscale"`` runs it on the coefficients of each image parameter's multi-scale basis
    (down to ``coarsest`` px), as the neural-art LSTM runs: the ablation that tells how much of the
    LSTM's lead is the basis and how much is learned.  L-BFGS is not offered there (its line search
    needs the closure, which the basis does not pass on)."""
    if basis not in ("pixels", "multiscale"):
        raise ValueError(f"basis must be 'pixels' or 'multiscale', got {basis!r}")
    if basis == "multiscale" and name == "lbfgs":
        raise ValueError("lbfgs does not run in the multi-scale basis")
    make_optimizer(name, [torch.zeros(1, requires_grad=True)], lr)  # validate name and lr now

    def build(params, groups):
        if basis == "multiscale":
            from .learned_optimizers.multiscale import COARSEST, MultiscaleOptimizer

            return MultiscaleOptimizer(params, lambda zs: make_optimizer(name, zs, lr), coarsest=coarsest or COARSEST)
        return make_optimizer(name, params, lr)

    return build


def lstm_factory(weights=None, nets: dict | None = None, lr: float | None = None,
                 state_dtype: torch.dtype = torch.float32, input_scale: float = 1.0,
                 basis: str = "pixels", coarsest: int | None = None) -> OptimizerFactory:
    """The learned optimizer from a weights file (or ready networks), loaded once.

    Parameters are routed to the network named by their group; a weights file with a single
    network (or a "default" one) serves groups it has no network for.  ``basis="multiscale"`` runs
    it on the coefficients of each image parameter's multi-scale basis
    (artopt.learned_optimizers.multiscale), down to ``coarsest`` px (default: its ``COARSEST``);
    "pixels" on the parameters themselves.
    """
    if basis not in ("pixels", "multiscale"):
        raise ValueError(f"basis must be 'pixels' or 'multiscale', got {basis!r}")
    from .learned_optimizers import LearnedOptimizer, load_learned

    if (weights is None) == (nets is None):
        raise ValueError("lstm_factory needs exactly one of weights= or nets=")
    loaded = dict(load_learned(weights) if weights is not None else nets)

    def route(group: str) -> str:
        if group in loaded:
            return group
        if "default" in loaded:
            return "default"
        if len(loaded) == 1:
            return next(iter(loaded))
        raise ValueError(f"the learned optimizer has networks {sorted(loaded)}, none for parameter group {group!r}")

    def build(params, groups):
        if basis == "multiscale":
            from .learned_optimizers.multiscale import COARSEST, MultiscaleOptimizer

            nets_used = {route(g) for g in groups}
            if len(nets_used) != 1:
                raise ValueError("the multi-scale basis serves parameters of one network group only")
            net = nets_used.pop()
            return MultiscaleOptimizer(params, lambda zs: LearnedOptimizer(
                [{"params": zs, "net": net}], nets=loaded, lr=lr, state_dtype=state_dtype, input_scale=input_scale),
                coarsest=coarsest or COARSEST)
        by_net: dict[str, list[torch.Tensor]] = {}
        for p, g in zip(params, groups):
            by_net.setdefault(route(g), []).append(p)
        return LearnedOptimizer([{"params": ps, "net": n} for n, ps in by_net.items()], nets=loaded, lr=lr,
                                state_dtype=state_dtype, input_scale=input_scale)

    return build


@dataclass
class Run:
    curve: torch.Tensor  # (steps + 1,) float64; +inf from the step where the loss stopped being finite
    params: list[torch.Tensor]  # final θ
    evaluations: int  # loss + gradient evaluations (L-BFGS's line search takes several per step)
    steps: int = -1  # steps taken: fewer than asked when the run diverged (-1: not recorded)


def run_optimizer(problem: Problem, factory: OptimizerFactory, steps: int) -> Run:
    """Optimize ``problem`` for ``steps`` steps and record f_t(θ_t) for t = 0..steps.

    Once the loss is non-finite the run stops and the rest of the curve is +inf (diverged).
    """
    params = problem.fresh_params()
    opt = factory(params, problem.groups)
    curve = torch.full((steps + 1,), math.inf, dtype=torch.float64)
    t = 0
    evaluations = 0

    def closure():
        nonlocal evaluations
        evaluations += 1
        opt.zero_grad(set_to_none=True)
        loss = problem.loss(params, t)
        loss.backward()
        return loss

    # L-BFGS runs unconstrained and is projected once, at the end, as the stylize engine runs it within
    # a scale (projected after every step, each step started on a point its line search had not seen;
    # in the neural-art crops either way wins on some photos, docs/results.md).
    every_step = not isinstance(opt, torch.optim.LBFGS)
    for t in range(steps):
        value = float(opt.step(closure).detach())  # f_t(θ_t), evaluated before the update
        if not math.isfinite(value):
            return Run(curve, [p.detach() for p in params], evaluations, t + 1)
        curve[t] = value
        if problem.project is not None and (every_step or t == steps - 1):
            with torch.no_grad():
                for p, q in zip(params, problem.project(list(params))):
                    p.copy_(q)
    with torch.no_grad():
        value = float(problem.loss(params, steps))
    if math.isfinite(value):
        curve[steps] = value
    return Run(curve, [p.detach() for p in params], evaluations, steps)


@dataclass
class EvalResult:
    task: str
    steps: int
    seed: int
    split: str
    curves: dict[str, torch.Tensor]  # optimizer -> (instances, steps + 1)
    metrics: dict[str, list[dict]] = field(default_factory=dict)  # optimizer -> final metric per instance
    seconds: dict[str, float] = field(default_factory=dict)  # optimizer -> total wall time
    evaluations: dict[str, float] = field(default_factory=dict)  # optimizer -> mean evaluations per step taken


def sample_problems(task: Task, instances: int, seed: int, split: str = "test") -> list[Problem]:
    """The evaluation problems for ``seed`` (generator seeded ``EVAL_SEED_OFFSET + seed``)."""
    gen = torch.Generator().manual_seed(EVAL_SEED_OFFSET + seed)
    return [task.sample(gen, split) for _ in range(instances)]


def evaluate(
    task: Task,
    factories: dict[str, OptimizerFactory],
    instances: int,
    steps: int | None = None,
    seed: int = 0,
    split: str = "test",
    with_metrics: bool = True,
    progress: Callable[[EvalProgress], None] | None = None,
) -> EvalResult:
    """Run every optimizer on the same ``instances`` fresh problems for ``steps`` steps."""
    if instances < 1:
        raise ValueError(f"instances must be at least 1, got {instances}")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, numbers.Integral)):
        raise ValueError(f"steps must be a whole number, got {steps!r}")  # 2.7 ran 2 steps
    steps = task.steps if steps is None else int(steps)
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    problems = sample_problems(task, instances, seed, split)
    result = EvalResult(task.name, steps, seed, split, {})
    for name, factory in factories.items():
        rows, metrics, evaluations, taken = [], [], 0, 0
        start = time.perf_counter()
        for i, problem in enumerate(problems):
            run = run_optimizer(problem, factory, steps)
            rows.append(run.curve)
            evaluations += run.evaluations
            taken += run.steps
            if with_metrics and problem.metric is not None:
                metrics.append(problem.metric(run.params))
            if progress:
                progress(EvalProgress(name, i + 1, instances, float(run.curve[-1])))
        result.seconds[name] = time.perf_counter() - start
        # per step taken: a diverged run stops early, and its missing steps took no evaluations
        result.evaluations[name] = evaluations / taken
        result.curves[name] = torch.stack(rows)
        if metrics:
            result.metrics[name] = metrics
    return result


def band(curves: torch.Tensor, resamples: int = 2000, seed: int = 0) -> dict[str, torch.Tensor]:
    """Mean over instances (rows) and its 95% confidence band, per step.

    The band is a percentile bootstrap of the mean (instances resampled with replacement, fixed
    seed): losses are skewed and positive, and unlike mean ± 1.96·SE the bootstrap band never
    dips below zero on a log plot.  Non-finite entries (diverged runs) make that step's mean and
    band +inf: divergence is never hidden.
    """
    if curves.dim() != 2 or curves.shape[0] == 0:  # (a 1-D curve met an IndexError; no rows gave NaN)
        raise ValueError(f"curves must be (instances, steps + 1) with at least one instance, got {tuple(curves.shape)}")
    curves = curves.to(torch.float64)
    k = curves.shape[0]
    mean = curves.mean(0)
    finite = torch.isfinite(curves).all(0)
    safe = torch.where(torch.isfinite(curves), curves, torch.zeros_like(curves))
    if k > 1:
        g = torch.Generator().manual_seed(seed)
        idx = torch.randint(0, k, (resamples, k), generator=g)
        # (resamples, steps + 1), a block of resamples at a time: all at once, safe[idx] would hold
        # resamples x k x (steps + 1) doubles (1.6 GB for 1000 instances of 100 steps)
        block = max(1, (1 << 22) // max(1, k * curves.shape[1]))
        means = torch.cat([safe[idx[i : i + block]].mean(1) for i in range(0, resamples, block)])
        lo, hi = torch.quantile(means, torch.tensor([0.025, 0.975], dtype=torch.float64), dim=0)
    else:
        lo, hi = mean.clone(), mean.clone()
    inf = torch.full_like(mean, math.inf)
    return {"mean": torch.where(finite, mean, inf), "lo": torch.where(finite, lo, inf),
            "hi": torch.where(finite, hi, inf)}


@functools.lru_cache(maxsize=None)
def t_quantile(p: float, df: int) -> float:
    """Student's t distribution's ``p`` quantile (``0.5 < p < 1``) with ``df`` degrees of freedom.

    For a mean over a handful of instances (the neural-art settings' 2-8 photos) the 95% interval is
    mean ± t(0.975, n - 1)·SE: with 1.96 in place of t it is 6.5× too narrow for 2 photos and 1.6× for 4.
    The CDF is the pdf's integral from 0 (Simpson's rule on (1 + x²/df)^-(df+1)/2, smooth), inverted by
    bisection: a few numbers per evaluation, so no statistics library for it."""
    if not 0.5 < p < 1 or df < 1:
        raise ValueError(f"t_quantile needs 0.5 < p < 1 and df >= 1, got p={p}, df={df}")
    norm = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)

    def cdf(t: float) -> float:
        # substituting x = tan(u) keeps the integrand bounded for the heavy tails of small df
        n, top = 2000, math.atan(t)
        h = top / n
        f = [norm * (1 + math.tan(k * h) ** 2 / df) ** (-(df + 1) / 2) / math.cos(k * h) ** 2 for k in range(n + 1)]
        return 0.5 + h / 3 * (f[0] + f[-1] + 4 * sum(f[1:-1:2]) + 2 * sum(f[2:-1:2]))

    lo, hi = 0.0, 1.0
    while cdf(hi) < p:
        hi *= 2
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2


def _median(x: torch.Tensor) -> float:
    """The median: for an even count the mean of the two middle values (torch's ``median`` returns
    the lower one).  A diverged run's inf sorts last, so it counts as a high loss."""
    s = x.to(torch.float64).sort().values
    n = s.numel()
    return float((s[(n - 1) // 2] + s[n // 2]) / 2)


def _num(x: float) -> float | str:
    """JSON has no inf/nan: write them as strings."""
    x = float(x)
    return x if math.isfinite(x) else ("inf" if x > 0 else "-inf" if x < 0 else "nan")


def compare(
    result: EvalResult,
    lrs: dict[str, float | None] | None = None,
    learned: Iterable[str] = ("lstm",),
    reference: str = "lstm",
    window: int = 10,
) -> dict:
    """JSON-able summary: per optimizer its mean final loss (with 95% band), mean trajectory loss,
    diverged-run count, mean curve and band; the best baseline by mean final loss; and
    ``lstm_over_best_baseline`` = mean final loss of ``reference`` / that of the best baseline
    (None without a ``reference`` run).  ``learned`` names the runs that are not baselines.

    Minibatch losses are noisy step to step, so the mean over the last ``window`` losses of each
    run is reported as well (``mean_last_window_loss``, and its ratio).
    """
    if isinstance(window, bool) or not isinstance(window, numbers.Integral) or window < 1:
        # 0 averaged the whole curve and -1 all but its first loss, under the name of the last window
        raise ValueError(f"window must be a whole number of steps, at least 1, got {window!r}")
    learned = set(learned) | {reference}
    lrs = lrs or {}
    out: dict = {"task": result.task, "steps": result.steps, "seed": result.seed, "split": result.split,
                 "instances": None, "optimizers": {}}
    finals: dict[str, float] = {}
    windows: dict[str, float] = {}
    for name, curves in result.curves.items():
        out["instances"] = int(curves.shape[0])
        b = band(curves)
        final = curves[:, -1]
        diverged = int((~torch.isfinite(final)).sum())
        traj = curves.mean(1)
        last = curves[:, -min(window, curves.shape[1]):].mean(1)
        finals[name] = float(b["mean"][-1])
        windows[name] = float(last.mean())
        entry = {
            "learned": name in learned,
            "lr": lrs.get(name),
            "mean_final_loss": _num(b["mean"][-1]),
            "final_loss_ci95": [_num(b["lo"][-1]), _num(b["hi"][-1])],
            "median_final_loss": _num(_median(final)),
            "mean_trajectory_loss": _num(traj.mean()),
            "mean_last_window_loss": _num(last.mean()),
            "diverged": diverged,
            "seconds": round(result.seconds[name], 3) if name in result.seconds else None,
            "evaluations_per_step": result.evaluations.get(name),
            "final_losses": [_num(v) for v in final],  # per instance, for further statistics
            "mean_curve": [_num(v) for v in b["mean"]],
            "band_lo": [_num(v) for v in b["lo"]],
            "band_hi": [_num(v) for v in b["hi"]],
        }
        if result.metrics.get(name):
            keys = result.metrics[name][0].keys()
            entry["final_metrics"] = {k: _num(sum(m[k] for m in result.metrics[name]) / len(result.metrics[name]))
                                      for k in keys}
        out["optimizers"][name] = entry
    baselines = {n: v for n, v in finals.items() if n not in learned}
    best = min(baselines, key=lambda n: baselines[n]) if baselines else None
    out["best_baseline"] = best
    out["best_baseline_final_loss"] = _num(baselines[best]) if best else None

    def ratio(num: float, den: float):
        # None where undefined: over 0, or over a baseline that diverged (x / inf would read 0.0,
        # "infinitely better", when that baseline merely blew up on some instance)
        return _num(num / den) if 0 < den < math.inf else None

    ratios = {}
    for name in finals:
        if name in learned and best is not None:
            ratios[name] = ratio(finals[name], baselines[best])
    out["learned_over_best_baseline"] = ratios
    out["lstm_over_best_baseline"] = ratios.get(reference)
    out["window"] = window
    if reference in windows and best is not None and 0 < windows[best] < math.inf:
        out["lstm_over_best_baseline_last_window"] = ratio(windows[reference], windows[best])
    if reference in finals:
        # Against each baseline too: e.g. the paper's quadratic figure leaves L-BFGS out.
        out["lstm_over_each_baseline"] = {n: ratio(finals[reference], v) for n, v in baselines.items()}
    if reference in result.curves and best is not None:
        # Per instance: how often the learned optimizer ends below the best baseline.
        wins = result.curves[reference][:, -1] < result.curves[best][:, -1]
        out["lstm_wins_fraction"] = float(wins.double().mean())
    return out


__all__: Sequence[str] = (
    "EVAL_SEED_OFFSET", "EvalProgress", "EvalResult", "OptimizerFactory", "baseline_factory", "lstm_factory",
    "Run", "run_optimizer", "sample_problems", "evaluate", "band", "compare",
)
