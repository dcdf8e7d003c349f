"""Does the learned optimizer still beat Adam when a user changes the loss weights?

The shipped LSTM was meta-trained with the default weights (content 1, style 20, TV 1).  Its inputs
(log|g| / p and sign, m/√v, g/√v) see the gradient's scale, so a user's other weighting shows it
gradients unlike those it was trained on.  This script runs the CLI, as a user would, with each
optimizer at its default rate (`artopt stylize ... --optimizer lstm|adam --log-json`) at 256 px on
the shipped photos with a held-out style, for weightings 10x either side of the defaults, and
reports the final total loss of each and the ratio LSTM / Adam:

    .venv/bin/python bench/loss_weights.py            # 2 photos x 7 weightings x 2 optimizers, ~20 min

Writes bench/results/loss_weights.json; the images and logs go to --out (kept there: ``--reuse``
reads finished runs instead of repeating them).
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cli_runs import ROOT, add_run_flags, check_run_flags, stylize_totals, write_report  # noqa: E402
from artopt.script_args import script_parser  # noqa: E402

SETTINGS = {
    "defaults": [],
    "style x0.1": ["--style-weight", "2"],
    "style x10": ["--style-weight", "200"],
    "content x0.1": ["--content-weight", "0.1"],
    "tv x10": ["--tv-weight", "10"],
    "tv 0": ["--tv-weight", "0"],
    "all x10": ["--content-weight", "10", "--style-weight", "200", "--tv-weight", "10"],
}


def run_settings(argv, settings: dict[str, list[str]], name: str, doc: str) -> int:
    """Run each photo with each setting's flags (and none other than --size and --optimizer),
    LSTM and Adam at their default rates; write the report ``name``.json.  Also used by
    user_options.py."""
    ap = script_parser(doc)
    add_run_flags(ap, name)
    args = ap.parse_args(argv)
    check_run_flags(ap, args)
    style = ROOT / "assets" / "styles" / f"{args.style}.jpg"
    rows = []
    for photo in args.photos:
        for setting, flags in settings.items():
            row = {"photo": photo, "setting": setting, "flags": " ".join(flags)}
            for opt in ("lstm", "adam"):
                run = stylize_totals(ROOT / "assets" / "photos" / f"{photo}.jpg", style,
                                     ["--size", str(args.size), "--optimizer", opt, *flags], args.out,
                                     f"{photo}_{setting.replace(' ', '_')}_{opt}", args.reuse)
                row[opt] = run["final_total"]  # the loss of the image it returned
                row[f"{opt}_seconds"] = run["seconds"]
                row[f"{opt}_kept_after_step"] = run.get("kept_after_step")
                row[f"{opt}_backoff_steps"] = run.get("backoff_steps")
            row["lstm_over_adam"] = row["lstm"] / row["adam"]
            rows.append(row)
            print(f"{photo:10s} {setting:14s} lstm {row['lstm']:.4f} adam {row['adam']:.4f} "
                  f"ratio {row['lstm_over_adam']:.3f}", flush=True)
    report = {
        "size": args.size, "style": style.name, "optimizers": "lstm and adam at their default rates (CLI defaults)",
        "steps": "the CLI default (150) where a setting's flags give no --steps", "runs": rows,
        "median_ratio_by_setting": {s: statistics.median(r["lstm_over_adam"] for r in rows if r["setting"] == s)
                                    for s in settings},
        "worst_ratio": max(r["lstm_over_adam"] for r in rows),
    }
    write_report(report, args.json)
    return 0


def main(argv=None) -> int:
    return run_settings(argv, SETTINGS, "loss_weights", __doc__)


if __name__ == "__main__":
    raise SystemExit(main())
