"""Does the learned optimizer beat Adam on every style, not only the one held out for evaluation?

The shipped LSTM was meta-trained with one style (starry_night.jpg); its evaluation used one held-out
style.  This script runs the CLI, as a user would, with the LSTM and Adam at their default rates
(150 steps, 256 px) on the shipped photos with every other shipped style, and reports the final
total losses and the ratio LSTM / Adam:

    .venv/bin/python bench/style_sweep.py             # 2 photos x 8 styles x 2 optimizers, ~15 min

Writes bench/results/style_sweep.json; images and logs go to --out (``--reuse`` reads finished runs).
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cli_runs import ROOT, add_run_flags, check_run_flags, stylize_totals, write_report  # noqa: E402
from artopt.script_args import script_parser  # noqa: E402

TRAINING_STYLE = "starry_night"


def main(argv=None) -> int:
    ap = script_parser(__doc__)
    add_run_flags(ap, "style_sweep", style=False)
    args = ap.parse_args(argv)
    check_run_flags(ap, args)
    styles = sorted(p for p in (ROOT / "assets" / "styles").glob("*.jpg") if p.stem != TRAINING_STYLE)
    rows = []
    for style in styles:
        for photo in args.photos:
            row = {"style": style.name, "photo": photo}
            for opt in ("lstm", "adam"):
                run = stylize_totals(ROOT / "assets" / "photos" / f"{photo}.jpg", style,
                                     ["--size", str(args.size), "--optimizer", opt], args.out,
                                     f"{photo}_{style.stem}_{opt}", args.reuse)
                row[opt] = run["final_total"]  # the returned image's: with keep_best, its lowest-loss one
                row[f"{opt}_kept_after_step"] = run.get("kept_after_step")
                row[f"{opt}_backoff_steps"] = run.get("backoff_steps")
            row["lstm_over_adam"] = row["lstm"] / row["adam"]
            rows.append(row)
            print(f"{style.stem:32s} {photo:10s} lstm {row['lstm']:.4f} adam {row['adam']:.4f} "
                  f"ratio {row['lstm_over_adam']:.3f}", flush=True)
    ratios = [r["lstm_over_adam"] for r in rows]
    report = {"size": args.size, "steps": "the CLI default (150)", "training_style": f"{TRAINING_STYLE}.jpg",
              "optimizers": "lstm and adam at their default rates (CLI defaults)", "runs": rows,
              "lstm_lower": sum(r < 1 for r in ratios), "runs_count": len(rows),
              "median_ratio": statistics.median(ratios), "worst_ratio": max(ratios)}
    write_report(report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
