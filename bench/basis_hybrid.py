"""Could Adam take over the multi-scale basis's finest level from the neural-art LSTM?

    python bench/basis_hybrid.py            # writes bench/results/basis_hybrid.json

Level 0 of the multi-scale basis (artopt.learned_optimizers.multiscale) has the image's own
resolution: 3/4 of the coefficients, so 3/4 of the LSTM's update, the larger part of a step at
512 px on a CPU.  Here the shipped LSTM, as trained, updates only the coarser levels and Adam updates
level 0.  Scored like bench/basis_fourier.py: 64 px, the training style, 128 steps, Adam's rate on
level 0 chosen on the 6 validation problems of val seed 8, then both scored on the 6 of val seed 9
(mean loss over the last 5% of steps), with the wall time of each run on 1 thread.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from artopt.evaluation import lstm_factory  # noqa: E402
from artopt.learned_optimizers import LearnedOptimizer, load_learned  # noqa: E402
from artopt.learned_optimizers.multiscale import LevelSplit, MultiscaleOptimizer, level_sizes  # noqa: E402
from artopt.optimizers import make_optimizer  # noqa: E402

from basis_fourier import add_probe_flags, probe_weights, score_val_problems, write_report  # noqa: E402

ADAM_GRID = [0.0025, 0.005, 0.01, 0.02]


def hybrid_factory(weights: str, adam_lr: float):
    nets = load_learned(weights)  # once; LearnedOptimizer picks its network

    def build(params, groups):
        return MultiscaleOptimizer(params, lambda flats: LevelSplit(
            flats, [level_sizes(p.shape) for p in params], 1, lambda ps: make_optimizer("adam", ps, adam_lr),
            lambda ps: LearnedOptimizer(ps, nets=nets)))

    return build


def _run(job) -> dict:
    kind, adam_lr, seed, per_seed, steps, weights = job
    factory = hybrid_factory(weights, adam_lr) if kind == "hybrid" else lstm_factory(weights, basis="multiscale")
    return {"optimizer": kind, "adam_lr_level_0": adam_lr, **score_val_problems(factory, seed, per_seed, steps)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_probe_flags(ap, "basis_hybrid.json")
    args = ap.parse_args(argv)
    weights = probe_weights(ap, args)
    common = (args.problems, args.steps, weights)
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        tuned = list(pool.map(_run, [("hybrid", lr, args.tune_seed, *common) for lr in ADAM_GRID]))
        best = min(tuned, key=lambda r: r["score"])  # ties: the first (smaller) rate
        scored = list(pool.map(_run, [("lstm", None, args.score_seed, *common),
                                      ("hybrid", best["adam_lr_level_0"], args.score_seed, *common)]))
    for r in tuned:
        print(f"tune  hybrid, Adam at {r['adam_lr_level_0']:<7g} {r['score']:.4f}", flush=True)
    for r in scored:
        r["over_lstm"] = r["score"] / scored[0]["score"]
        print(f"score {r['optimizer']:7s} {r['score']:.4f} ({r['over_lstm']:.3f} of the LSTM's)  {r['seconds']:.1f} s  "
              + "  ".join(f"t{t} {v:.4f}" for t, v in r["mean_loss_at_step"].items()), flush=True)
    write_report(args, weights, tuning=tuned, scores=scored)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
