"""Does the learned optimizer hold up on runs much longer than it was trained for?

The shipped LSTM was meta-trained on 128-step runs and evaluated on 200.  A user may ask for more
(`--steps 600`).  This script runs the CLI, as a user would, with the LSTM and Adam at their default
rates for ``--steps`` steps at 256 px (no pyramid there) on the shipped photos with a held-out style,
and reports each one's total loss at several points of the run, the ratio LSTM / Adam there, and
whether the LSTM's loss ever rose by more than 1% over its lowest so far:

    .venv/bin/python bench/long_runs.py               # 2 photos x 600 steps x 2 optimizers, ~6 min

Writes bench/results/long_runs.json; images and logs go to --out (``--reuse`` reads finished runs).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from artopt.script_args import positive_int, script_parser  # noqa: E402
from cli_runs import ROOT, add_run_flags, check_run_flags, stylize_totals, write_report  # noqa: E402


def main(argv=None) -> int:
    ap = script_parser(__doc__)
    add_run_flags(ap, "long_runs")
    ap.add_argument("--steps", type=positive_int, default=600, help="steps per run (default: %(default)s)")
    # a point of 0 or less read after[p - 1] from the end of the run and labelled it p
    ap.add_argument("--points", type=positive_int, nargs="+", default=[50, 100, 150, 200, 300, 400, 600],
                    help="steps at which the losses are reported (those above --steps are left out)")
    args = ap.parse_args(argv)
    check_run_flags(ap, args)
    style = ROOT / "assets" / "styles" / f"{args.style}.jpg"
    points = [p for p in args.points if p <= args.steps]
    rows = []
    for photo in args.photos:
        row: dict = {"photo": photo}
        for opt in ("lstm", "adam"):
            run = stylize_totals(ROOT / "assets" / "photos" / f"{photo}.jpg", style,
                                 ["--size", str(args.size), "--steps", str(args.steps), "--optimizer", opt],
                                 args.out, f"{photo}_{args.size}px_{args.steps}steps_{opt}", args.reuse)
            row[opt] = {str(p): run["after"][p - 1] for p in points}  # the loss after p steps
            if opt == "lstm":
                # on the final scale only: from 384 px the run is coarse-to-fine, and the loss of a
                # coarser scale's image is not comparable (the step to the next scale is no rise)
                last = run["steps"][-1]["scale"]
                final = [(r["step"], t) for r, t in zip(run["steps"], run["after"]) if r["scale"] == last]
                best, worst_rise = float("inf"), 0.0
                for _, v in final:
                    best = min(best, v)
                    worst_rise = max(worst_rise, v / best - 1)
                row["lstm_largest_rise_over_its_best"] = worst_rise
                row["lstm_lowest_at_step"] = min(final, key=lambda sv: sv[1])[0]
                row["lstm_kept_after_step"], row["lstm_backoff_steps"] = run.get("kept_after_step"), run.get("backoff_steps")
        row["lstm_over_adam"] = {str(p): row["lstm"][str(p)] / row["adam"][str(p)] for p in points}
        rows.append(row)
        print(photo, {p: round(r, 3) for p, r in row["lstm_over_adam"].items()},
              f"largest rise {row['lstm_largest_rise_over_its_best']:.4f}", flush=True)
    report = {"size": args.size, "steps": args.steps, "style": style.name,
              "optimizers": "lstm and adam at their default rates (CLI defaults)", "runs": rows}
    write_report(report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
