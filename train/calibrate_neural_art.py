r"""Calibrate how a meta-trained neural-art optimizer is run, on validation problems only.

    python train/calibrate_neural_art.py weights/neural_art.safetensors --val-seeds 8 9 \
        --lr 1 1.15 1.3 --coarsest 8 2 --json train/results/neural_art_calibration.json --card

Two settings are free after meta-training: a multiplier on the learned update (the engine's ``--lr``
for ``lstm``) and, for weights trained in the multi-scale basis, how coarse its coarsest level is
(``coarsest`` px; training used ``shipped.trained_coarsest``).  Every pair on the grid runs the inference
path the engine uses (MultiscaleOptimizer around LearnedOptimizer) on the validation problems of
``--val-seeds`` (as ``select_neural_art.py``: 64 px, the training style, 128 steps) and is scored by
the meta-training criterion (mean loss over the last 5% of steps).  ``--card`` writes the best pair
into the card beside the weights as ``inference``, which the engine and the evaluation then use.
Test photos are never used.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import shlex
import sys
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from artopt.evaluation import lstm_factory, run_optimizer  # noqa: E402
from artopt.learned_optimizers.shipped import (check_neural_art, missing_card, trained_basis,  # noqa: E402
                                              trained_coarsest)
from artopt.learned_optimizers.weights import WeightsError, load_learned, write_json_atomic  # noqa: E402
from artopt.outer_trainers import validation_problems  # noqa: E402
from artopt.outer_trainers.truncated_bptt import final_score  # noqa: E402
from artopt.script_args import check_output_file, val_seed  # noqa: E402
from artopt.tasks.neural_art import TRAIN_STYLE, NeuralArtTask  # noqa: E402


def _score(weights: Path, basis: str, val_seeds, per_seed: int, size: int, steps: int, threads: int,
           point: tuple[int, float]) -> dict:
    """One grid point: the mean validation score of (coarsest, lr)."""
    torch.set_num_threads(threads)
    coarsest, lr = point
    task = NeuralArtTask(size=size, styles=[TRAIN_STYLE], steps=steps)
    problems = [p for seed in val_seeds for p in validation_problems(task, seed, per_seed)]
    factory = lstm_factory(nets=load_learned(weights), lr=lr, basis=basis, coarsest=coarsest)
    with torch.no_grad():
        curves = [run_optimizer(p, factory, steps).curve.tolist() for p in problems]
    checkpoints = sorted({t for t in (16, 32, 64, steps) if t <= steps})
    return {"lr": lr, "coarsest": coarsest, "score": sum(final_score(c) for c in curves) / len(curves),
            "mean_loss_at_step": {str(t): sum(c[t] for c in curves) / len(curves) for t in checkpoints}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("weights", type=Path)
    ap.add_argument("--val-seeds", type=val_seed, nargs="+", default=[8, 9],
                    help="validation problems of these meta-training seeds (10000 + seed)")
    ap.add_argument("--problems", type=int, default=6, help="problems per seed")
    ap.add_argument("--lr", type=float, nargs="+", default=[1.0], help="update multipliers to try")
    ap.add_argument("--coarsest", type=int, nargs="+", default=None,
                    help="coarsest basis level (px) to try; multi-scale weights only (default: as trained)")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1, help="threads per job")
    ap.add_argument("--jobs", type=int, default=1, help="grid points scored in parallel processes")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--card", action="store_true", help="record the best pair in the weights' card")
    args = ap.parse_args(argv)
    for flag in ("problems", "steps", "size", "threads", "jobs"):
        if getattr(args, flag) < 1:
            ap.error(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    if args.json is not None:  # before the grid is scored, not after
        check_output_file(ap, "--json", args.json)
    try:
        check_neural_art(args.weights)
        load_learned(args.weights)  # readable, before any job starts
    except (WeightsError, ValueError) as err:
        ap.error(str(err))
    if missing_card(args.weights):  # without it the weights would be scored in pixels, maybe not their basis
        ap.error(f"{args.weights} {missing_card(args.weights)}")
    card_path = args.weights.with_suffix(".json")
    if args.coarsest is not None and trained_basis(args.weights) != "multiscale":
        ap.error("--coarsest applies to weights meta-trained in the multi-scale basis; these run on pixels")
    trained = trained_coarsest(args.weights)
    args.coarsest = args.coarsest or [trained]
    if any(not 0 < lr < math.inf for lr in args.lr) or any(c < 1 for c in args.coarsest):
        ap.error("--lr values must be positive and finite, and --coarsest values at least 1")

    basis = trained_basis(args.weights)
    coarsest_grid = args.coarsest if basis == "multiscale" else [trained]
    grid = [(coarsest, lr) for coarsest in coarsest_grid for lr in args.lr]
    work = partial(_score, args.weights, basis, args.val_seeds, args.problems, args.size, args.steps, args.threads)
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            rows = list(pool.map(work, grid))
    else:
        rows = [work(point) for point in grid]
    for r in rows:
        print(f"coarsest {r['coarsest']:3d} px  lr x{r['lr']:g}: {r['score']:.4f}  "
              + "  ".join(f"t{t} {v:.4f}" for t, v in r["mean_loss_at_step"].items()), flush=True)
    best = min(rows, key=lambda r: r["score"])
    as_trained = next((r for r in rows if r["lr"] == 1.0 and r["coarsest"] == trained), None)
    report = {"weights": str(args.weights), "basis": basis, "val_seeds": args.val_seeds,
              "problems_per_seed": args.problems, "size": args.size, "steps": args.steps,
              "criterion": "mean loss over the last 5% of steps, averaged over the problems",
              "grid": rows, "best": best, "as_trained": as_trained}
    print(f"best: coarsest {best['coarsest']} px, lr x{best['lr']:g}: {best['score']:.4f}"
          + (f" (as trained {as_trained['score']:.4f})" if as_trained else ""))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(args.json, report)
    if args.card:
        card = json.loads(card_path.read_text(encoding="utf-8"))
        card["inference"] = {"lr": best["lr"], "coarsest": best["coarsest"], "val_score": best["score"],
                             "as_trained_val_score": as_trained["score"] if as_trained else None,
                             "how": "train/calibrate_neural_art.py " + shlex.join(argv if argv is not None else sys.argv[1:])}
        write_json_atomic(card_path, card)
        print(f"wrote inference settings to {card_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
