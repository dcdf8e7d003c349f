"""Does the shipped neural-art LSTM gain from running in a different image basis, without retraining?

    python bench/basis_variants.py            # writes bench/results/basis_variants.json

The LSTM runs on the coefficients z of x = x₀ + M · Σ_k g^k · up(z_k) (artopt.learned_optimizers.
multiscale has M = identity, g = 1).  Variants tried:
- a colour mix M: an orthonormal luminance / opponent-colour rotation, the same with the luminance
  axis scaled, or the square root of natural images' colour covariance (the decorrelated colour
  space of feature-visualisation work);
- a per-level gain g: coarse levels weighted up (g > 1) or down (g < 1);
- an update multiplier that changes over the run (a ramp from one value to another over the 128 steps).
All are scored like the calibration script (train/calibrate_neural_art.py): 64 px, the training
style, 128 steps, validation problems only, mean loss over the last 5% of steps.  A gain here would be
an inference setting; the bench reports whether any is worth one.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from artopt.evaluation import run_optimizer  # noqa: E402
from artopt.learned_optimizers import LearnedOptimizer, load_learned  # noqa: E402
from artopt.learned_optimizers import multiscale as ms  # noqa: E402
from artopt.outer_trainers import validation_problems  # noqa: E402
from artopt.outer_trainers.truncated_bptt import final_score  # noqa: E402
from artopt.tasks.neural_art import TRAIN_STYLE, NeuralArtTask  # noqa: E402

from artopt.script_args import dumps, positive_int, val_seed  # noqa: E402
from basis_fourier import probe_weights  # noqa: E402

_S3, _S2, _S6 = math.sqrt(3), math.sqrt(2), math.sqrt(6)
# columns: luminance, red-green, yellow-blue
OPPONENT = [[1 / _S3, 1 / _S2, 1 / _S6], [1 / _S3, -1 / _S2, 1 / _S6], [1 / _S3, 0.0, -2 / _S6]]
# square root of an ImageNet colour covariance (as in Olah et al., "Feature Visualization", 2017),
# columns scaled so the largest has norm 1
_DECOR = [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]]
_N = max(math.sqrt(sum(r[j] ** 2 for r in _DECOR)) for j in range(3))
DECORRELATED = [[v / _N for v in r] for r in _DECOR]


def _lum(scale: float) -> list[list[float]]:
    return [[r[0] * scale, r[1], r[2]] for r in OPPONENT]


# name: (colour mix or None, per-level gain, update multiplier at the first and the last step)
VARIANTS = {
    "as shipped": (None, 1.0, (1.0, 1.0)),
    "opponent colours": (OPPONENT, 1.0, (1.0, 1.0)),
    "opponent colours, luminance x2": (_lum(2.0), 1.0, (1.0, 1.0)),
    "opponent colours, luminance x0.5": (_lum(0.5), 1.0, (1.0, 1.0)),
    "decorrelated colours": (DECORRELATED, 1.0, (1.0, 1.0)),
    "level gain 0.7": (None, 0.7, (1.0, 1.0)),
    "level gain 1.2": (None, 1.2, (1.0, 1.0)),
    "level gain 1.4": (None, 1.4, (1.0, 1.0)),
    "level gain 2": (None, 2.0, (1.0, 1.0)),
    "update x1.3": (None, 1.0, (1.3, 1.3)),
    "update ramp 1 -> 2": (None, 1.0, (1.0, 2.0)),
    "update ramp 1.5 -> 1": (None, 1.0, (1.5, 1.0)),
}


class _VariantBasis(ms.MultiscaleOptimizer):
    """MultiscaleOptimizer with a colour mix M on the channels, a gain g^k on level k and an update
    multiplier that moves linearly from ``ramp[0]`` to ``ramp[1]`` over ``steps``."""

    def __init__(self, params, inner, mix, gain, ramp, steps):
        super().__init__(params, inner, coarsest=ms.COARSEST)
        self.mix = None if mix is None else torch.tensor(mix, dtype=torch.float32)
        self.gain, self.ramp, self.steps, self.t = gain, ramp, steps, 0

    def _mix(self, matrix, x):
        return x if matrix is None else torch.einsum("ij,...jhw->...ihw", matrix, x)

    @torch.no_grad()
    def step(self, closure=None):
        loss = ms.evaluate_closure(closure)
        a, b = self.ramp
        self.inner.param_groups[0]["lr"] = a + (b - a) * min(self.t / max(self.steps - 1, 1), 1.0)
        self.t += 1
        for p, flat, zs in zip(self.images, self.flat, self.coefficients):
            flat.zero_()
            grad = self._mix(None if self.mix is None else self.mix.T, p.grad)
            levels = ms.adjoint(grad, [z.shape for z in zs])
            flat.grad = torch.cat([g.reshape(-1) * self.gain**k for k, g in enumerate(levels)])
        self.inner.step()
        for p, zs in zip(self.images, self.coefficients):
            update = ms.synthesize([z * self.gain**k for k, z in enumerate(zs)], tuple(p.shape[-2:]))
            p.add_(self._mix(self.mix, update))
        return loss


def _score(weights: Path, val_seeds, per_seed: int, steps: int, name: str) -> dict:
    torch.set_num_threads(1)
    mix, gain, ramp = VARIANTS[name]
    nets = load_learned(weights)
    task = NeuralArtTask(size=64, styles=[TRAIN_STYLE], steps=steps)
    problems = [p for seed in val_seeds for p in validation_problems(task, seed, per_seed)]

    def factory(params, groups):
        return _VariantBasis(params, lambda zs: LearnedOptimizer(zs, nets=nets),
                             mix, gain, ramp, steps)

    t0 = time.perf_counter()
    with torch.no_grad():
        curves = [run_optimizer(p, factory, steps).curve.tolist() for p in problems]
    at = sorted({t for t in (16, 32, 64, steps) if t <= steps})
    return {"variant": name, "score": sum(final_score(c) for c in curves) / len(curves),
            "mean_loss_at_step": {str(t): sum(c[t] for c in curves) / len(curves) for t in at},
            "seconds": time.perf_counter() - t0}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", type=Path, default=None, help="default: the shipped neural-art weights")
    ap.add_argument("--val-seeds", type=val_seed, nargs="+", default=[8, 9])
    ap.add_argument("--problems", type=positive_int, default=6, help="validation problems per seed")
    ap.add_argument("--steps", type=positive_int, default=128)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), metavar="NAME")
    ap.add_argument("--jobs", type=positive_int, default=2,
                    help="variants scored in parallel processes (1 thread each)")
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "basis_variants.json")
    args = ap.parse_args(argv)
    # checked now, not in the worker processes or after every variant has been scored
    weights = probe_weights(ap, args)
    names = args.variants if "as shipped" in args.variants else ["as shipped", *args.variants]
    work = partial(_score, weights, args.val_seeds, args.problems, args.steps)
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        rows = list(pool.map(work, names))
    base = next(r["score"] for r in rows if r["variant"] == "as shipped")
    for r in rows:
        r["over_as_shipped"] = r["score"] / base
        print(f"{r['variant']:34s} {r['score']:.4f} ({r['over_as_shipped']:.3f})  "
              + "  ".join(f"t{t} {v:.4f}" for t, v in r["mean_loss_at_step"].items()), flush=True)
    report = {"weights": str(weights), "val_seeds": args.val_seeds, "problems_per_seed": args.problems,
              "steps": args.steps, "size": 64, "style": TRAIN_STYLE,
              "criterion": "mean loss over the last 5% of steps, averaged over the problems",
              "threads_per_job": 1, "jobs": args.jobs, "rows": rows}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(dumps(report, indent=2) + "\n")  # a diverged run's inf is null
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
