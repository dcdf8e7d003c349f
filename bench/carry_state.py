"""Carry the learned optimizer's state across the pyramid's scales (StylizeConfig.carry_state)?

The rule was committed before any score existed (149c3fa), as bench/fine_scale_step.py's: candidates
carry + fine_scale_step 0.5 and carry + 1 against the default (no carry, 0.5), scored on the same
validation photos (held-out style, engine defaults, the shipped weights, 200 steps, 1 thread, seed 0):
256 px pyramid on, 8 photos; 512 px, the first 4.  A candidate qualifies if its mean final loss is
below the default's at both sizes; the lowest sum of its two ratios wins.  ``val`` runs that;
``test SETTING`` runs the best-scoring candidate and the default on the evaluation's test photos:

    .venv/bin/python bench/carry_state.py val --jobs 2         # ~10 min on 2 cores (the default's runs are reused)
    .venv/bin/python bench/carry_state.py test 512-pyramid-on --jobs 2

Per-run files go to --runs (shared with bench/fine_scale_step.py, whose default runs this reuses);
reports: bench/results/carry_state_val.json, train/results/neural_art/ablation-carry-state-SETTING.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "train"))
sys.path.insert(0, str(ROOT / "bench"))
from artopt.script_args import at_least, check_output_dir, script_parser  # noqa: E402
from cli_runs import write_report  # noqa: E402
from fine_scale_step import STEPS, run_all, summarize, val_photos  # noqa: E402  (the runs are that script's, with carry_state)

DEFAULT = ("no carry", 0.5)
CANDIDATES = (("carry", 0.5), ("carry", 1.0))
VAL_SIZES = {256: 8, 512: 4}
TEST_SETTINGS = ("256-pyramid-on", "384-pyramid-on", "512-pyramid-on")
RESULTS = ROOT / "train" / "results" / "neural_art"


def _file(runs: Path, split: str, size: int, variant: tuple[str, float], photo: str) -> Path:
    carry, step = variant
    # (the no-carry runs are bench/fine_scale_step.py's files)
    return runs / f"{split}-{size}-{step:g}{'-carry' if carry == 'carry' else ''}-{photo}.json"


def label(variant: tuple[str, float]) -> str:
    return f"{variant[0]}, step {variant[1]:g}"


def choose(means: dict[int, dict[tuple, float]]) -> tuple[tuple | None, dict]:
    """The rule: (the chosen candidate or None, each candidate's ratios to the default and whether it qualifies)."""
    table = {}
    for v in CANDIDATES:
        ratios = {size: means[size][v] / means[size][DEFAULT] for size in means}
        table[v] = {"ratios": ratios, "qualifies": all(r < 1 for r in ratios.values()), "sum": sum(ratios.values())}
    qualified = [v for v in CANDIDATES if table[v]["qualifies"]]
    return (min(qualified, key=lambda v: table[v]["sum"]) if qualified else None), table


def main(argv=None) -> int:
    ap = script_parser(__doc__)
    ap.add_argument("what", choices=("val", "test"))
    ap.add_argument("setting", nargs="?", choices=TEST_SETTINGS, help="test: the evaluation's setting")
    ap.add_argument("--jobs", type=at_least(1), default=1, help="runs side by side, 1 thread each (default: %(default)s)")
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "fine_scale_step",
                    help="folder of the per-run files (default: %(default)s)")
    args = ap.parse_args(argv)
    check_output_dir(ap, "--runs", args.runs)  # (a file there failed after the first runs)
    variants = (DEFAULT, *CANDIDATES)
    val_path = ROOT / "bench" / "results" / "carry_state_val.json"
    if args.what == "val":
        photos = val_photos()  # (the same 8: VAL_SIZES here are fine_scale_step's)
        jobs = [("val", p, size, v[1], _file(args.runs, "val", size, v, p), v[0] == "carry")
                for v in variants for size, n in VAL_SIZES.items() for p in photos[:n]]
        runs = run_all(jobs, args.jobs)
        means = {size: {v: sum(r["final"] for r in runs if r["size"] == size and r["fine_scale_step"] == v[1]
                               and r["carry"] == (v[0] == "carry")) / n for v in variants}
                 for size, n in VAL_SIZES.items()}
        chosen, table = choose(means)
        for size in VAL_SIZES:
            print(f"{size} px: " + ", ".join(f"{label(v)}: {means[size][v]:.5f}" for v in variants))
        for v, row in table.items():
            print(f"{label(v)}: ratios {', '.join(f'{s} px {r:.4f}' for s, r in row['ratios'].items())}; "
                  f"{'qualifies' if row['qualifies'] else 'does not qualify'}")
        print(f"chosen: {label(chosen) if chosen else 'none (carry stays off)'}")
        best = chosen or min(CANDIDATES, key=lambda v: table[v]["sum"])
        report = {"rule_commit": "149c3fa", "photos": photos, "sizes": {str(k): v for k, v in VAL_SIZES.items()},
                  "steps": STEPS, "threads": 1,
                  "means": {str(s): {label(v): m for v, m in ms.items()} for s, ms in means.items()},
                  "candidates": {label(v): {"ratios": {str(s): r for s, r in row["ratios"].items()},
                                            "qualifies": row["qualifies"], "sum": row["sum"]}
                                 for v, row in table.items()},
                  "chosen": label(chosen) if chosen else None, "best_scoring": label(best),
                  "best_scoring_step": best[1], "runs": runs}
        path = val_path
    else:
        if args.setting is None:
            ap.error("test needs a SETTING")
        best = ("carry", json.loads(val_path.read_text())["best_scoring_step"])
        committed = json.loads((RESULTS / f"{args.setting}.json").read_text())
        size = committed["size"]
        jobs = [("test", p, size, v[1], _file(args.runs, "test", size, v, p), v[0] == "carry") for v in (DEFAULT, best)
                for p in committed["photos"]]
        runs = run_all(jobs, args.jobs)
        target = committed["best_baseline_final_loss"]
        report = {"setting": args.setting, "size": size, "photos": committed["photos"], "style": committed["style"],
                  "steps": STEPS, "threads": 1, "best_baseline": committed["best_baseline"],
                  "best_baseline_final_loss": target}
        for v in (DEFAULT, best):
            report[label(v)] = summarize([r for r in runs if r["carry"] == (v[0] == "carry")
                                          and r["fine_scale_step"] == v[1]], target)
            mean = report[label(v)]["mean_final"]
            print(f"{args.setting} {label(v)}: mean final {mean:.5f} ({mean / target:.4f} of {committed['best_baseline']})")
        report["runs"] = runs
        path = RESULTS / f"ablation-carry-state-{args.setting}.json"
    write_report(report, path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
