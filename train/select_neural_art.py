"""Compare neural-art optimizers on the same validation problems, to choose which one to ship.

    python train/select_neural_art.py runs/a/a.safetensors runs/b/b.safetensors weights/neural_art.safetensors

Each meta-training run validates on problems drawn from its own seed (10000 + seed), and keeps the
checkpoint that scored best there, so its own score is biased low and two runs' scores are not on the
same problems.  This scores every file on the validation problems of ``--val-seeds`` (pick seeds
that no compared run trained with), 128 steps at 64 px with the training style, by the same
criterion the runs use (mean loss over the last 5% of steps).  Test photos are never used.

With ``--tie-within R`` every file whose mean is within a fraction R of the lowest counts as tied,
and the tie is broken by the mean loss at ``--tie-break-step`` (the 64 px target counts steps).
Fix both before looking at the scores: the rule is part of the choice.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from artopt.learned_optimizers.multiscale import multiscale_problem  # noqa: E402
from artopt.learned_optimizers.shipped import (BASES, check_neural_art, missing_card, trained_basis,  # noqa: E402
                                              trained_coarsest)
from artopt.learned_optimizers.weights import WeightsError, load_learned, write_json_atomic  # noqa: E402
from artopt.outer_trainers import run_episode, validation_problems  # noqa: E402
from artopt.outer_trainers.truncated_bptt import final_score  # noqa: E402
from artopt.script_args import check_output_file, val_seed  # noqa: E402
from artopt.tasks.neural_art import TRAIN_STYLE, NeuralArtTask  # noqa: E402


def choose(scores: dict, tie_within: float, tie_step: str) -> tuple[str, list[str]]:
    """The lowest mean, unless others lie within ``tie_within`` of it: then the lowest loss at
    ``tie_step`` among those.  Returns the choice and the tied files (the choice alone if none)."""
    lowest = min(s["mean"] for s in scores.values())
    tied = [k for k, s in scores.items() if s["mean"] <= lowest * (1 + tie_within)]
    if len(tied) == 1:
        return tied[0], tied
    return min(tied, key=lambda k: (scores[k]["mean_loss_at_step"][tie_step], scores[k]["mean"])), tied


def _candidate(path: str, basis: str) -> tuple[nn.ModuleDict, str, int]:
    """(networks, basis, coarsest level) of a neural-art weights file, or ValueError / WeightsError."""
    check_neural_art(path)
    problem = missing_card(path, ", or name the basis they were meta-trained in: PATH@multiscale or PATH@pixels")
    if not basis and Path(path).is_file() and problem:  # it would run in pixels, maybe not its basis
        raise ValueError(f"it {problem}")
    basis = basis or trained_basis(path)
    if basis not in BASES:
        raise ValueError(f"unknown basis {basis!r}; choose from {BASES}")
    return nn.ModuleDict(load_learned(path)), basis, trained_coarsest(path)  # coarsest: as meta-trained


def _training_seed(path: str) -> int | None:
    """The meta-training seed a weights file's card records (None without a card or a seed)."""
    try:
        card = json.loads(Path(path).with_suffix(".json").read_text(encoding="utf-8"))
        seed = card["meta_training"]["seed"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("weights", nargs="+",
                    help="weights files; PATH@multiscale or PATH@pixels overrides the basis its card records")
    ap.add_argument("--val-seeds", type=val_seed, nargs="+", default=[2, 3],
                    help="validation problems of these meta-training seeds (10000 + seed)")
    ap.add_argument("--problems", type=int, default=6, help="problems per seed (as --val-problems)")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tie-within", type=float, default=0.0,
                    help="files whose mean is within this fraction of the lowest tie (0: plain lowest mean)")
    ap.add_argument("--tie-break-step", type=int, default=None,
                    help="ties go to the lowest mean loss after this many steps (default: steps // 4)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if not 0 <= args.tie_within < math.inf:
        ap.error(f"--tie-within must be a finite number >= 0, got {args.tie_within}")
    if args.json is not None:  # before the scoring, not after it
        check_output_file(ap, "--json", args.json)
    for flag in ("problems", "steps", "size", "threads"):
        if getattr(args, flag) < 1:
            ap.error(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    tie_step = max(1, args.steps // 4) if args.tie_break_step is None else args.tie_break_step
    if not 1 <= tie_step <= args.steps:
        ap.error(f"--tie-break-step must lie in [1, {args.steps}] (the --steps run), got {tie_step}")
    candidates = {}
    for entry in args.weights:  # all checked before any is scored (scoring takes minutes per file)
        path, _, basis = entry.partition("@")
        try:
            candidates[entry] = _candidate(path, basis)
        except (WeightsError, ValueError) as err:
            ap.error(f"{entry}: {err}")
        # its own validation problems favour it: it kept the checkpoint that scored best on them
        trained = _training_seed(path)
        if trained in args.val_seeds:
            ap.error(f"{entry} was meta-trained with seed {trained} (its card), so --val-seeds {trained} are its own "
                     "validation problems, which favour it; choose seeds no compared run trained with")
    torch.set_num_threads(args.threads)

    task = NeuralArtTask(size=args.size, styles=[TRAIN_STYLE], steps=args.steps)
    problems = [p for seed in args.val_seeds for p in validation_problems(task, seed, args.problems)]
    report = {"val_seeds": args.val_seeds, "problems_per_seed": args.problems, "size": args.size,
              "steps": args.steps, "weights": {}}
    for entry, (nets, basis, coarsest) in candidates.items():
        runs = problems if basis == "pixels" else [multiscale_problem(p, coarsest=coarsest) for p in problems]
        with torch.no_grad():
            curves = [run_episode(nets, p, args.steps) for p in runs]
        scores = [final_score(c) for c in curves]
        # not the criterion, but how fast it gets there (the 64 px target counts steps too)
        at_step = {str(t): sum(c[t] for c in curves) / len(curves)
                   for t in sorted({args.steps // 8, args.steps // 4, args.steps // 2, tie_step} - {0})}  # 128: 16, 32, 64
        per_seed = {str(s): sum(scores[i * args.problems:(i + 1) * args.problems]) / args.problems
                    for i, s in enumerate(args.val_seeds)}
        report["weights"][entry] = {"mean": sum(scores) / len(scores), "per_seed": per_seed, "basis": basis,
                                  "coarsest": coarsest, "mean_loss_at_step": at_step}
        print(f"{entry}: {sum(scores) / len(scores):.4f}  per seed {json.dumps({k: round(v, 4) for k, v in per_seed.items()})}"
              + "".join(f"  t{t} {v:.4f}" for t, v in at_step.items()), flush=True)
    best, tied = choose(report["weights"], args.tie_within, str(tie_step))
    report.update(best=best, rule={"tie_within": args.tie_within, "tie_break_step": tie_step}, tied=tied)
    print(f"best: {best}" + (f"  (tied within {args.tie_within:.2%}: {', '.join(tied)}; "
                             f"broken by the loss at step {tie_step})" if len(tied) > 1 else ""))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(args.json, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
