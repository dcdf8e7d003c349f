"""Would a Fourier basis serve the neural-art optimizers better than the multi-scale one?

    python bench/basis_fourier.py            # writes bench/results/basis_fourier.json

The multi-scale basis (artopt.learned_optimizers.multiscale) gave the LSTM most of its lead: the same
weights, run on the coefficients of x = x₀ + Σ_k up(z_k) instead of the pixels, ended 11% lower at
64 px without retraining.  Feature-visualisation work (Olah et al., 2017) optimises images in a
Fourier basis scaled by 1/f^α instead, x = x₀ + irfft2(S ⊙ z) with S(f) ∝ max(f, 1/N)^-α.  Its
coordinates are global (one frequency each) where the multi-scale ones are local, and it keeps one
coordinate per pixel where the multi-scale basis keeps 4/3.

A probe before any meta-training: tuned Adam and the shipped LSTM (as trained, in a Fourier basis,
with a gain on S standing in for a learning rate) against both in the multi-scale basis, at 64 px,
the training style, 128 steps.  Each setting's rate or gain is chosen on the 6 validation problems
of val seed 8 and scored on the 6 of val seed 9 (mean loss over the last 5% of steps, as
train/select_neural_art.py).  Only if a Fourier setting beats its multi-scale counterpart clearly
would a meta-training run in it be worth its hour.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from artopt.evaluation import baseline_factory, lstm_factory, run_optimizer  # noqa: E402
from artopt.learned_optimizers import LearnedOptimizer, load_learned  # noqa: E402
from artopt.learned_optimizers.shipped import check_neural_art, weights_path  # noqa: E402
from artopt.optimizers import make_optimizer  # noqa: E402
from artopt.outer_trainers import validation_problems  # noqa: E402
from artopt.outer_trainers.truncated_bptt import final_score  # noqa: E402
from artopt.script_args import check_output_file, dumps, positive_int, refuse_same_files, val_seed  # noqa: E402
from artopt.tasks.neural_art import TRAIN_STYLE, NeuralArtTask  # noqa: E402

DECAYS = (0.5, 1.0, 1.5, 2.0, 2.5)
ADAM_GRID = [0.0025 * 2**k for k in range(7)]  # 0.0025 .. 0.16
LSTM_GAINS = [0.5, 1.0, 2.0, 4.0, 8.0]


def spectrum_scale(height: int, width: int, decay: float) -> torch.Tensor:
    """S(f) = max(f, 1/N)^-decay on rfft2's grid (f in cycles per pixel, N the long side), scaled to
    mean S² = 1 so that a ±1 step on every coefficient moves the pixels about as much at any decay."""
    fy = torch.fft.fftfreq(height)[:, None]
    fx = torch.fft.rfftfreq(width)[None, :]
    f = (fy**2 + fx**2).sqrt().clamp_min(1.0 / max(height, width))
    s = f.pow(-decay)
    return s / s.pow(2).mean().sqrt()


class FourierOptimizer(torch.optim.Optimizer):
    """Runs ``inner`` on z, the real and imaginary parts of x's scaled spectrum: x = x₀ + irfft2(S ⊙ z)
    (orthonormal transform), with ``gain`` × S.  Like MultiscaleOptimizer, each step hands the inner
    optimizer the coefficients' gradient and adds the image of their update to x."""

    def __init__(self, params, inner, decay: float, gain: float = 1.0):
        super().__init__(params, {})
        self.images = [p for g in self.param_groups for p in g["params"]]
        self.scales = [gain * spectrum_scale(*p.shape[-2:], decay).to(p) for p in self.images]
        self.z = [torch.zeros(*p.shape[:-1], p.shape[-1] // 2 + 1, 2, dtype=p.dtype, requires_grad=True)
                  for p in self.images]
        self.inner = inner(self.z)

    @staticmethod
    def _image(z: torch.Tensor, scale: torch.Tensor, size) -> torch.Tensor:
        return torch.fft.irfft2(torch.view_as_complex(z) * scale, s=size, norm="ortho")

    @torch.no_grad()
    def step(self, closure=None):
        with torch.enable_grad():
            loss = closure()
        for p, z, s in zip(self.images, self.z, self.scales):
            probe = torch.zeros_like(z, requires_grad=True)
            with torch.enable_grad():
                z.grad, = torch.autograd.grad(self._image(probe, s, p.shape[-2:]), probe, p.grad)
            z.zero_()  # after the inner step z holds the update alone
        self.inner.step()
        for p, z, s in zip(self.images, self.z, self.scales):
            p.add_(self._image(z, s, p.shape[-2:]))
        return loss


def _factory(optimizer: str, basis: str, value: float, weights: str):
    """(basis "multiscale" or "fourier-α") an Adam at rate ``value`` or the LSTM at gain ``value``."""
    if basis == "multiscale":
        if optimizer == "adam":
            return baseline_factory("adam", value, basis="multiscale")
        return lstm_factory(weights, lr=value, basis="multiscale")
    decay = float(basis.split("-", 1)[1])
    if optimizer == "adam":
        return lambda params, groups: FourierOptimizer(params, lambda zs: make_optimizer("adam", zs, value), decay)
    nets = load_learned(weights)  # once; LearnedOptimizer picks its network
    return lambda params, groups: FourierOptimizer(
        params, lambda zs: LearnedOptimizer(zs, nets=nets), decay, gain=value)


def score_val_problems(factory, seed: int, per_seed: int, steps: int) -> dict:
    """Run ``factory`` on the ``per_seed`` validation problems of val ``seed`` (64 px, the training
    style) on 1 thread: the score (mean loss over the last 5% of steps), the mean loss at a few steps,
    and the wall time."""
    torch.set_num_threads(1)
    task = NeuralArtTask(size=64, styles=[TRAIN_STYLE], steps=steps)
    t0 = time.perf_counter()
    with torch.no_grad():
        curves = [run_optimizer(p, factory, steps).curve.tolist() for p in validation_problems(task, seed, per_seed)]
    at = [t for t in (16, 32, 64, steps) if t <= steps]
    return {"val_seed": seed, "score": sum(final_score(c) for c in curves) / len(curves),
            "mean_loss_at_step": {str(t): sum(c[t] for c in curves) / len(curves) for t in at},
            "seconds": time.perf_counter() - t0}


def add_probe_flags(ap: argparse.ArgumentParser, json_name: str) -> None:
    """The flags this probe and bench/basis_hybrid.py share."""
    ap.add_argument("--weights", type=Path, default=None, help="default: the shipped neural-art weights")
    ap.add_argument("--tune-seed", type=val_seed, default=8)
    ap.add_argument("--score-seed", type=val_seed, default=9)
    ap.add_argument("--problems", type=positive_int, default=6, help="validation problems per seed")
    ap.add_argument("--steps", type=positive_int, default=128)
    ap.add_argument("--jobs", type=positive_int, default=2, help="runs in parallel processes (1 thread each)")
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / json_name)


def probe_weights(ap: argparse.ArgumentParser, args) -> str:
    """The weights to probe, after refusing a missing or unreadable one, or an unwritable --json or
    one naming the weights (before any work: the worker processes printed a traceback each)."""
    if args.weights is not None:
        if not args.weights.is_file():
            ap.error(f"--weights {args.weights}: no such file")
        try:
            load_learned(args.weights)
            check_neural_art(args.weights)  # an MNIST optimizer ran here and scored without a word
        except ValueError as err:  # e.g. the JSON card given for the weights
            ap.error(f"--weights {err}")
    check_output_file(ap, "--json", args.json)
    weights = args.weights or weights_path("neural_art")
    refuse_same_files(ap, [("--json", args.json)], [("--weights", weights)])
    return str(weights)


def write_report(args, weights: str, **results) -> None:
    report = {"weights": weights, "size": 64, "style": TRAIN_STYLE, "steps": args.steps,
              "problems_per_seed": args.problems, "tune_seed": args.tune_seed, "score_seed": args.score_seed,
              "criterion": "mean loss over the last 5% of steps, averaged over the problems",
              "threads_per_job": 1, "jobs": args.jobs, **results}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}")


def _run(job) -> dict:
    optimizer, basis, value, seed, per_seed, steps, weights = job
    return {"optimizer": optimizer, "basis": basis, "value": value,
            **score_val_problems(_factory(optimizer, basis, value, weights), seed, per_seed, steps)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_probe_flags(ap, "basis_fourier.json")
    ap.add_argument("--decays", type=float, nargs="+", default=list(DECAYS), help="the α of S ∝ f^-α to try")
    ap.add_argument("--optimizers", nargs="+", choices=("lstm", "adam"), default=["lstm", "adam"])
    args = ap.parse_args(argv)
    weights = probe_weights(ap, args)
    if not all(math.isfinite(d) and d >= 0 for d in args.decays):
        ap.error("--decays must be finite and not negative")
    bases = ["multiscale", *(f"fourier-{d:g}" for d in args.decays)]
    values = {"adam": ADAM_GRID, "lstm": LSTM_GAINS}
    common = (args.problems, args.steps, weights)
    tune = [(o, b, v, args.tune_seed, *common) for o in args.optimizers for b in bases for v in values[o]
            if not (o == "lstm" and b == "multiscale" and v != 1.0)]  # the LSTM's own basis runs as trained
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        tuned = list(pool.map(_run, tune))
        best = {}
        for r in tuned:
            key = (r["optimizer"], r["basis"])
            if key not in best or r["score"] < best[key]["score"]:  # ties: the first (smaller) value
                best[key] = r
        scored = list(pool.map(_run, [(o, b, r["value"], args.score_seed, *common) for (o, b), r in best.items()]))
    for r in tuned:
        print(f"tune  {r['optimizer']:5s} {r['basis']:12s} {r['value']:<8g} {r['score']:.4f}", flush=True)
    for r in scored:
        ref = next(s["score"] for s in scored if s["optimizer"] == r["optimizer"] and s["basis"] == "multiscale")
        r["over_multiscale"] = r["score"] / ref
        print(f"score {r['optimizer']:5s} {r['basis']:12s} {r['value']:<8g} {r['score']:.4f} "
              f"({r['over_multiscale']:.3f} of multiscale)  "
              + "  ".join(f"t{t} {v:.4f}" for t, v in r["mean_loss_at_step"].items()), flush=True)
    write_report(args, weights, value="Adam: learning rate; LSTM: gain on S (fourier) or output lr multiplier "
                 "(multiscale)", tuning=tuned, scores=scored)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
