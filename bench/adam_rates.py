"""Does the learned optimizer still beat Adam when Adam gets the best rate for each run?

The other user-setting benchmarks run Adam at the CLI's default rate (0.02, tuned once at 128 px).
A user, or an evaluator with ``--lr``, can try several.  This script runs the CLI as a user would
(150 steps, default flags) with the LSTM at its defaults and Adam on a sqrt(2) grid of rates around
its default (0.01-0.057, widened while the best is at an edge), and compares the LSTM with the
best of them *for each run*: an oracle chosen after the fact, so it favours Adam.

    .venv/bin/python bench/adam_rates.py          # 2 photos x 3 styles x 2 sizes, ~25 min on 2 cores

With ``--basis multiscale`` Adam steps on the multi-scale image basis the LSTM runs in (the
CLI's ``--basis multiscale``, where tuned Adam came within 1-9% of the LSTM in the evaluation), on
the same grid around that basis's default rate (0.0036); the LSTM's runs are the same (``--reuse``
reads them):

    .venv/bin/python bench/adam_rates.py --basis multiscale --reuse --json bench/results/adam_rates_multiscale.json

Per run it reports every Adam rate's final loss, the best rate, LSTM / best Adam and LSTM / Adam at
the default rate, and when the LSTM's image first reached the best Adam's final loss (its step on
the final scale and the seconds since the start, against the best Adam run's whole time).  Photos:
chelsea (a test photo) and matplotlib's grace_hopper.jpg (never used elsewhere); styles: the
held-out woman_with_a_hat, piano_keyboard_sketch (where Adam at its default was furthest behind in
the style sweep) and new_inputs.py's drawn checkerboard (where it was closest, at 256 px).
``--lstm-flags="FLAGS"`` runs the LSTM with these extra CLI flags as well (its runs named apart) and
reports it over the LSTM at its defaults too: part (C) of bench/handoff_finer.py's session-65 rule.

Writes bench/results/adam_rates.json; images and logs go to --out (``--reuse`` reads finished runs).
"""

from __future__ import annotations

import math
import os
import shlex
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from artopt.script_args import positive_int  # noqa: E402
from artopt.style.engine import STYLIZE_LR, STYLIZE_LR_MULTISCALE  # noqa: E402
from cli_runs import ROOT, stylize_totals, write_report  # noqa: E402
from new_inputs import drawn_styles, parse_with_photo, parser  # noqa: E402
from sizes import reach  # noqa: E402

# The grid: the default rate times sqrt(2)^k.
GRID_STEPS = range(-2, 4)
# Widen the grid by one rate at an edge whose rate was best, at most this many times per side.
MAX_WIDEN = 3


DEFAULT_LR = {"pixels": STYLIZE_LR["adam"], "multiscale": STYLIZE_LR_MULTISCALE["adam"]}


def rate(k: int, basis: str = "pixels") -> float:
    return round(DEFAULT_LR[basis] * math.sqrt(2) ** k, 6)


def adam_sweep(run_one) -> dict[int, dict]:
    """``run_one(k)`` for k in GRID_STEPS, then one k further out while the best is at an edge."""
    runs = {k: run_one(k) for k in GRID_STEPS}
    for _ in range(MAX_WIDEN):
        best = min(runs, key=lambda k: runs[k]["final_total"])
        if best == min(runs):
            runs[best - 1] = run_one(best - 1)
        elif best == max(runs):
            runs[best + 1] = run_one(best + 1)
        else:
            break
    return dict(sorted(runs.items()))


def main(argv=None) -> int:
    ap = parser(__doc__, "adam_rates")
    ap.add_argument("--steps", type=positive_int, default=150, help="steps per run (default: %(default)s)")
    ap.add_argument("--basis", choices=tuple(DEFAULT_LR), default="pixels",
                    help="where Adam steps: on the pixels (the CLI's default) or on the multi-scale basis the LSTM "
                         "runs in (--basis multiscale; its grid is around that basis's default rate)")
    ap.add_argument("--lstm-flags", type=shlex.split, default=[], metavar='"FLAGS"',
                    help='also run the LSTM with these CLI flags, as one string (--lstm-flags="--handoff-finer-steps 75")')
    args, hopper = parse_with_photo(ap, argv)
    if args.lstm_flags and not args.lstm_flags[0].startswith("-"):
        ap.error(f"--lstm-flags are CLI flags, got {args.lstm_flags}")
    adam_flags = ["--optimizer", "adam", *(["--basis", args.basis] if args.basis != "pixels" else [])]
    adam_name = "adam" if args.basis == "pixels" else "adam-ms"
    checker = args.out / "style_checker.png"
    drawn_styles()["checker"].save(checker)
    photos = {"chelsea": ROOT / "assets" / "photos" / "chelsea.jpg", "grace_hopper": hopper}
    styles = {"woman_with_a_hat": ROOT / "assets" / "styles" / "woman_with_a_hat.jpg",
              "piano_keyboard_sketch": ROOT / "assets" / "styles" / "piano_keyboard_sketch.jpg",
              "checker": checker}
    load_average_start = list(os.getloadavg())
    rows = []
    for size in args.sizes:
        for photo_name, photo in photos.items():
            for style_name, style in styles.items():
                stem = f"{photo_name}_{style_name}_{size}px"
                common = ["--size", str(size), "--steps", str(args.steps)]
                lstm = stylize_totals(photo, style, [*common, "--optimizer", "lstm"], args.out, f"{stem}_lstm",
                                      args.reuse)
                defaults = lstm
                if args.lstm_flags:  # (named by its flags: --handoff-finer-steps 75 -> _handoff-finer-steps_75)
                    named = "_".join(flag.lstrip("-") for flag in args.lstm_flags)
                    lstm = stylize_totals(photo, style, [*common, "--optimizer", "lstm", *args.lstm_flags], args.out,
                                          f"{stem}_lstm_{named}", args.reuse)
                adam = adam_sweep(lambda k: stylize_totals(
                    photo, style, [*common, *adam_flags, "--lr", f"{rate(k, args.basis):g}"], args.out,
                    f"{stem}_{adam_name}_{rate(k, args.basis):g}", args.reuse))
                best = min(adam, key=lambda k: adam[k]["final_total"])
                best_run = adam[best]
                row = {"size": size, "photo": photo_name, "style": style_name,
                       "lstm": lstm["final_total"],
                       "adam": {f"{rate(k, args.basis):g}": r["final_total"] for k, r in adam.items()},
                       "adam_best_lr": rate(best, args.basis), "adam_best": best_run["final_total"],
                       "adam_default": adam[0]["final_total"],
                       "lstm_over_best_adam": lstm["final_total"] / best_run["final_total"],
                       "lstm_over_default_adam": lstm["final_total"] / adam[0]["final_total"],
                       "lstm_reaches_best_adam": reach(lstm, best_run["final_total"]),
                       "best_adam_seconds": best_run["steps"][-1]["wall_time"],
                       "lstm_seconds": lstm["steps"][-1]["wall_time"],
                       "lstm_backoff_steps": lstm.get("backoff_steps")}
                if args.lstm_flags:
                    row.update(lstm_defaults=defaults["final_total"],
                               lstm_over_lstm_defaults=lstm["final_total"] / defaults["final_total"])
                rows.append(row)
                print(f"{size} px {photo_name} {style_name}: lstm {row['lstm']:.4f}, adam best "
                      f"{row['adam_best']:.4f} at {row['adam_best_lr']:g} (default {row['adam_default']:.4f}); "
                      f"ratio {row['lstm_over_best_adam']:.3f}", flush=True)
    ratios = [r["lstm_over_best_adam"] for r in rows]
    report = {"steps": args.steps, "photos": {"chelsea": "assets/photos/chelsea.jpg",
                                               "grace_hopper": "matplotlib sample_data/grace_hopper.jpg"},
              "styles": {"woman_with_a_hat": "assets (held out of training)",
                         "piano_keyboard_sketch": "assets (held out of training)",
                         "checker": "bench/new_inputs.py drawn_styles()"},
              "optimizers": "lstm at its defaults; adam at the default rate x sqrt(2)^k, k = -2..3, widened at an "
                            "edge that was best; the best adam rate is chosen per run after the fact (an oracle)",
              "lstm_flags": args.lstm_flags, "adam_basis": args.basis, "adam_default_lr": DEFAULT_LR[args.basis],
              "load_average_start": load_average_start,
              "runs": rows, "lstm_lower_than_best_adam": sum(r < 1 for r in ratios), "runs_count": len(rows),
              "median_ratio": statistics.median(ratios), "worst_ratio": max(ratios),
              "per_size": {str(s): {"median_ratio": statistics.median(r["lstm_over_best_adam"] for r in rows
                                                                      if r["size"] == s),
                                    "worst_ratio": max(r["lstm_over_best_adam"] for r in rows if r["size"] == s)}
                           for s in args.sizes}}
    if args.lstm_flags:
        over = [r["lstm_over_lstm_defaults"] for r in rows]
        report.update(mean_over_lstm_defaults=statistics.fmean(over), worst_over_lstm_defaults=max(over))
        print(f"lstm {' '.join(args.lstm_flags)} over the lstm at its defaults: mean {statistics.fmean(over):.4f}, "
              f"worst {max(over):.4f}", flush=True)
    write_report(report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
