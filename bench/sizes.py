"""Does the learned optimizer beat Adam at the sizes the evaluation did not measure?

The neural-art evaluation runs 64, 128, 256, 384 and 512 px.  artopt stylizes at any size, so this
script runs the CLI, as a user would, with the LSTM and Adam at their default rates and the default
150 steps (coarse-to-fine from 384 px, as the engine decides) on the shipped photos with the
held-out style, at sizes in between and above: by default 96, 192, 768 and 1024 px.  Per run it
reports the final total losses, the ratio LSTM / Adam, both runs' wall times, and when the LSTM's
image first reached Adam's final loss (its step on the final scale and the seconds since the start):

    .venv/bin/python bench/sizes.py                   # 2 photos x 4 sizes x 2 optimizers, ~15 min

Writes bench/results/sizes.json; images and logs go to --out (``--reuse`` reads finished runs).
Wall times are the machine's at the time (compare the two optimizers within one run only).
"""

from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from artopt.script_args import positive_int, script_parser  # noqa: E402
from cli_runs import ROOT, add_run_flags, check_run_flags, stylize_totals, write_report  # noqa: E402


def reach(run: dict, target: float) -> dict | None:
    """The first step of the run's final scale after which its image's loss is at or below ``target``:
    its step number, its number within the final scale and the seconds since the start (or None)."""
    last = run["steps"][-1]["scale"]
    final = [(r, after) for r, after in zip(run["steps"], run["after"]) if r["scale"] == last]
    for i, (r, after) in enumerate(final, 1):
        if after <= target:
            return {"step": r["step"], "final_scale_step": i, "of_final_scale_steps": len(final),
                    "seconds": r["wall_time"]}
    return None


def main(argv=None) -> int:
    ap = script_parser(__doc__)
    add_run_flags(ap, "sizes", size=False)
    ap.add_argument("--sizes", type=positive_int, nargs="+", default=[96, 192, 768, 1024],
                    help="output long sides (default: %(default)s)")
    args = ap.parse_args(argv)
    check_run_flags(ap, args, args.sizes)
    load_average_start = list(os.getloadavg())
    style = ROOT / "assets" / "styles" / f"{args.style}.jpg"
    rows = []
    for size in args.sizes:
        for photo in args.photos:
            runs = {opt: stylize_totals(ROOT / "assets" / "photos" / f"{photo}.jpg", style,
                                        ["--size", str(size), "--optimizer", opt], args.out,
                                        f"{photo}_{size}px_{opt}", args.reuse)
                    for opt in ("lstm", "adam")}
            lstm, adam = runs["lstm"], runs["adam"]
            hit = reach(lstm, adam["final_total"])
            row = {"size": size, "photo": photo, "output": [lstm["steps"][-1]["width"], lstm["steps"][-1]["height"]],
                   "scales": lstm["steps"][-1]["scale"] + 1,
                   "lstm": lstm["final_total"], "adam": adam["final_total"],
                   "lstm_over_adam": lstm["final_total"] / adam["final_total"],
                   "lstm_seconds": lstm["seconds"], "adam_seconds": adam["seconds"],
                   # (the CLI chooses its threads by the load as each run starts: the two may differ)
                   "cpu_threads": {"lstm": lstm["settings"].get("cpu_threads"),
                                   "adam": adam["settings"].get("cpu_threads")},
                   "lstm_kept_after_step": lstm.get("kept_after_step"), "lstm_backoff_steps": lstm.get("backoff_steps"),
                   "lstm_reaches_adam_final": hit,
                   "adam_seconds_over_lstm_seconds_to_it": adam["seconds"] / hit["seconds"] if hit else None}
            rows.append(row)
            print(f"{size} px {photo}: LSTM / Adam {row['lstm_over_adam']:.3f}, "
                  f"{lstm['seconds']:.1f} s against {adam['seconds']:.1f} s; Adam's final loss "
                  + (f"after final-scale step {hit['final_scale_step']} of {hit['of_final_scale_steps']}, "
                     f"{hit['seconds']:.1f} s" if hit else "not reached"), flush=True)
    ratios = [r["lstm_over_adam"] for r in rows]
    report = {"style": style.name, "steps": 150,
              "optimizers": "lstm and adam at their default rates (CLI defaults; the engine picks the pyramid)",
              "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
              "load_average_start": load_average_start,
              "lstm_lower_in": f"{sum(r < 1 for r in ratios)} of {len(ratios)}",
              "lstm_over_adam_range": [min(ratios), max(ratios)], "lstm_over_adam_median": statistics.median(ratios),
              "runs": rows}
    write_report(report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
