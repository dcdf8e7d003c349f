"""Does the learned optimizer beat Adam on every style, not only the one held out for evaluation?

The shipped LSTM was meta-trained with one style (starry_night.jpg); its evaluation used one held-out
style.  This script runs the CLI, as a user would, with the LSTM and Adam at their default rates
(150 steps, 256 px) on the shipped photos with every other shipped style, and reports the final
total losses and the ratio LSTM / Adam:

    .venv/bin/python bench/style_sweep.py             # 2 photos x 8 styles x 2 optimizers, ~15 min

``--handoff-lr R`` adds a third run of each pair, the LSTM with ``--handoff-lr R``, and reports it
against the LSTM without the handoff (then run with ``--handoff-lr 0``, the engine before the handoff
became its default) and against Adam: parts 2 and 3 of bench/handoff.py's rules.  ``--handoff-finer-lr R``
adds the LSTM with ``--handoff-finer-lr R`` and reports it against the LSTM as it is (the engine's
defaults) and against Adam: part (c) of bench/handoff_finer.py's rule.

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
    ap.add_argument("--handoff-lr", type=float, help="also run the LSTM with this --handoff-lr")
    ap.add_argument("--handoff-warmup", type=int, default=0, help="and this --handoff-warmup (default: %(default)s)")
    ap.add_argument("--handoff-finer-lr", type=float, help="also run the LSTM with this --handoff-finer-lr")
    ap.add_argument("--handoff-finer-within", type=float, help="and this --handoff-finer-within")
    ap.add_argument("--handoff-finer-steps", type=int, help="and this --handoff-finer-steps")
    args = ap.parse_args(argv)
    if args.handoff_lr is not None and not 0 < args.handoff_lr < float("inf"):
        ap.error(f"--handoff-lr must be positive, got {args.handoff_lr}")
    if args.handoff_finer_lr is not None and not 0 < args.handoff_finer_lr < float("inf"):
        ap.error(f"--handoff-finer-lr must be positive, got {args.handoff_finer_lr}")
    if args.handoff_finer_lr is not None and args.handoff_lr is not None:
        ap.error("--handoff-finer-lr is compared with the engine's defaults: not with --handoff-lr")
    if args.handoff_finer_within is not None and (args.handoff_finer_lr is None
                                                  or not 0 <= args.handoff_finer_within <= 1):
        ap.error("--handoff-finer-within needs --handoff-finer-lr and is a fraction between 0 and 1")
    if args.handoff_finer_steps is not None and (args.handoff_finer_lr is None or args.handoff_finer_steps < 0):
        ap.error("--handoff-finer-steps needs --handoff-finer-lr and is 0 or more")
    check_run_flags(ap, args)  # (after the values: a bad one is said before a missing --json)
    variants = {"lstm": ["--optimizer", "lstm"], "adam": ["--optimizer", "adam"]}
    if args.handoff_lr is not None:
        variants["lstm"] += ["--handoff-lr", "0"]
        variants["lstm_handoff"] = ["--optimizer", "lstm", "--handoff-lr", f"{args.handoff_lr:g}"]
        if args.handoff_warmup:
            variants["lstm_handoff"] += ["--handoff-warmup", str(args.handoff_warmup)]
    if args.handoff_finer_lr is not None:
        variants["lstm_finer"] = ["--optimizer", "lstm", "--handoff-finer-lr", f"{args.handoff_finer_lr:g}"]
        if args.handoff_finer_within is not None:
            variants["lstm_finer"] += ["--handoff-finer-within", f"{args.handoff_finer_within:g}"]
        if args.handoff_finer_steps is not None:
            variants["lstm_finer"] += ["--handoff-finer-steps", str(args.handoff_finer_steps)]
    within = ("" if args.handoff_finer_within is None else f"_within{args.handoff_finer_within:g}") + (
        "" if args.handoff_finer_steps is None else f"_steps{args.handoff_finer_steps}")
    if args.handoff_warmup and (args.handoff_lr is None or args.handoff_warmup < 0):
        ap.error("--handoff-warmup needs --handoff-lr and is 0 or more")
    warm = f"_w{args.handoff_warmup}" if args.handoff_warmup else ""
    styles = sorted(p for p in (ROOT / "assets" / "styles").glob("*.jpg") if p.stem != TRAINING_STYLE)
    rows = []
    for style in styles:
        for photo in args.photos:
            row = {"style": style.name, "photo": photo}
            for name, flags in variants.items():
                stem = f"{photo}_{style.stem}_" + (
                    f"lstm_handoff{args.handoff_lr:g}{warm}" if name == "lstm_handoff" else
                    f"lstm_finer{args.handoff_finer_lr:g}{within}" if name == "lstm_finer" else name)
                run = stylize_totals(ROOT / "assets" / "photos" / f"{photo}.jpg", style,
                                     ["--size", str(args.size), *flags], args.out, stem, args.reuse)
                row[name] = run["final_total"]  # the returned image's: with keep_best, its lowest-loss one
                row[f"{name}_kept_after_step"] = run.get("kept_after_step")
                row[f"{name}_backoff_steps"] = run.get("backoff_steps")
                if name in ("lstm_handoff", "lstm_finer"):  # (the steps whose notices name a handoff)
                    key = "handoff_steps" if name == "lstm_handoff" else "lstm_finer_steps"
                    row[key] = [r["step"] for r in run["steps"] if "(handoff)" in r.get("notice", "")]
            row["lstm_over_adam"] = row["lstm"] / row["adam"]
            extra = ""
            if args.handoff_lr is not None:
                row["handoff_over_lstm"] = row["lstm_handoff"] / row["lstm"]
                row["lstm_handoff_over_adam"] = row["lstm_handoff"] / row["adam"]
                extra = (f" handoff {row['lstm_handoff']:.4f} (over lstm {row['handoff_over_lstm']:.3f}, "
                         f"over adam {row['lstm_handoff_over_adam']:.3f})")
            if args.handoff_finer_lr is not None:
                row["finer_over_lstm"] = row["lstm_finer"] / row["lstm"]
                row["lstm_finer_over_adam"] = row["lstm_finer"] / row["adam"]
                extra = (f" finer {row['lstm_finer']:.4f} (over lstm {row['finer_over_lstm']:.4f}, "
                         f"over adam {row['lstm_finer_over_adam']:.3f})")
            rows.append(row)
            print(f"{style.stem:32s} {photo:10s} lstm {row['lstm']:.4f} adam {row['adam']:.4f} "
                  f"ratio {row['lstm_over_adam']:.3f}{extra}", flush=True)
    ratios = [r["lstm_over_adam"] for r in rows]
    report = {"size": args.size, "steps": "the CLI default (150)", "training_style": f"{TRAINING_STYLE}.jpg",
              "optimizers": "lstm and adam at their default rates (CLI defaults)", "runs": rows,
              "lstm_lower": sum(r < 1 for r in ratios), "runs_count": len(rows),
              "median_ratio": statistics.median(ratios), "worst_ratio": max(ratios)}
    if args.handoff_lr is not None:
        over = [r["handoff_over_lstm"] for r in rows]
        report["handoff"] = {
            "lr": args.handoff_lr, "warmup": args.handoff_warmup, "runs_handed_off": sum(bool(r["handoff_steps"]) for r in rows),
            "mean_over_lstm": statistics.fmean(over), "median_over_lstm": statistics.median(over),
            "worst_over_lstm": max(over), "best_over_lstm": min(over),
            "lower_than_adam": sum(r["lstm_handoff_over_adam"] < 1 for r in rows),
            "median_over_adam": statistics.median(r["lstm_handoff_over_adam"] for r in rows),
            "worst_over_adam": max(r["lstm_handoff_over_adam"] for r in rows)}
        h = report["handoff"]
        print(f"handoff {args.handoff_lr:g}: handed off in {h['runs_handed_off']} of {len(rows)} runs; over lstm "
              f"mean {h['mean_over_lstm']:.4f}, worst {h['worst_over_lstm']:.4f}; lower than adam in "
              f"{h['lower_than_adam']} of {len(rows)}", flush=True)
    if args.handoff_finer_lr is not None:
        over = [r["finer_over_lstm"] for r in rows]
        report["handoff_finer"] = {
            "lr": args.handoff_finer_lr, "within": args.handoff_finer_within, "steps": args.handoff_finer_steps,
            "runs_handed_off": sum(bool(r["lstm_finer_steps"]) for r in rows),
            "mean_over_lstm": statistics.fmean(over), "worst_over_lstm": max(over), "best_over_lstm": min(over),
            "lower_than_adam": sum(r["lstm_finer_over_adam"] < 1 for r in rows),
            "worst_over_adam": max(r["lstm_finer_over_adam"] for r in rows)}
        h = report["handoff_finer"]
        print(f"handoff finer {args.handoff_finer_lr:g}: over lstm mean {h['mean_over_lstm']:.4f}, worst "
              f"{h['worst_over_lstm']:.4f}; lower than adam in {h['lower_than_adam']} of {len(rows)}", flush=True)
    write_report(report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
