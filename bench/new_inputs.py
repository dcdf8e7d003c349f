"""Does the learned optimizer beat Adam on a photo and styles that are nowhere in artopt's data?

Every photo and style in assets/ (and ../shared/data) was seen while artopt was built, if only in
its evaluation.  This script makes inputs that were not: a photo artopt never used (matplotlib's
sample ``grace_hopper.jpg``, installed with matplotlib) and four drawn styles unlike the shipped
paintings (diagonal colour stripes, polka dots, blurred colour noise, a rotated checkerboard; made
here, deterministically).  It runs the CLI, as a user would, with the LSTM and Adam at their default
rates and the default 150 steps, and reports the final total losses and the ratio LSTM / Adam:

    .venv/bin/python bench/new_inputs.py                  # 1 photo x 4 styles x 2 sizes x 2 optimizers

Writes bench/results/new_inputs.json; the drawn styles, images and logs go to --out (``--reuse``
reads finished runs).
"""

from __future__ import annotations

import math
import statistics
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parent))
from artopt.script_args import check_output_dir, check_output_file, check_photo_sizes, positive_int, script_parser  # noqa: E402
from cli_runs import add_run_flags, check_sizes, report_path, stylize_totals, write_report  # noqa: E402

STYLE_SIDE = 512


def drawn_styles(side: int = STYLE_SIDE) -> dict[str, Image.Image]:
    """Four styles drawn from fixed formulas and one fixed seed (the same pixels on every machine)."""
    y, x = np.mgrid[0:side, 0:side].astype(np.float64) / side
    palette = np.array([[230, 57, 70], [241, 250, 238], [69, 123, 157], [29, 53, 87], [244, 162, 97]], np.float64)
    stripes = palette[(np.floor((x + y) * 12) % len(palette)).astype(int)]
    dots = np.empty((side, side, 3))
    dots[:] = [250, 240, 210]
    cell = 1 / 10
    cx, cy = (x % cell) / cell - 0.5, (y % cell) / cell - 0.5
    which = ((np.floor(x / cell) + 2 * np.floor(y / cell)) % 3).astype(int)
    inside = cx ** 2 + cy ** 2 < 0.3 ** 2
    dots[inside] = np.array([[200, 30, 60], [20, 90, 170], [30, 140, 60]], np.float64)[which[inside]]
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (side // 8, side // 8, 3), dtype=np.uint8)).resize(
        (side, side), Image.BICUBIC).filter(ImageFilter.GaussianBlur(4))
    u, v = (x - y) * math.sqrt(0.5), (x + y) * math.sqrt(0.5)
    checker = np.where((np.floor(u * 16) + np.floor(v * 16)) % 2 == 0, 20.0, 235.0)[..., None].repeat(3, axis=2)
    made = {"stripes": stripes, "dots": dots, "checker": checker}
    styles = {name: Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)) for name, a in made.items()}
    styles["noise"] = noise
    return dict(sorted(styles.items()))


def sample_photo() -> Path | None:
    """matplotlib's sample photo (Grace Hopper), where matplotlib is installed with its sample data."""
    try:
        import matplotlib
    except ImportError:
        return None
    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    return path if path.is_file() else None


def parser(doc: str, name: str):
    """A benchmark's flags: --sizes (default 256 and 512 px) and add_run_flags' --out, --reuse, --json."""
    ap = script_parser(doc)
    ap.add_argument("--sizes", type=positive_int, nargs="+", default=[256, 512],
                    help="output long sides (default: %(default)s)")
    add_run_flags(ap, name, style=False, size=False, photos=False)
    return ap


def parse_with_photo(ap, argv) -> tuple:
    """The parsed flags, checked, and the sample photo's path (a usage error where it is missing)."""
    args = ap.parse_args(argv)
    check_sizes(ap, "--sizes", args.sizes)
    photo = sample_photo()
    if photo is None:
        ap.error("matplotlib's sample photo grace_hopper.jpg is not installed (pip install matplotlib)")
    check_photo_sizes(ap, [photo], args.sizes)  # (said before any run, not when its run failed)
    check_output_dir(ap, "--out", args.out)
    args.json = report_path(ap, args)
    check_output_file(ap, "--json", args.json)
    return args, photo


def main(argv=None) -> int:
    args, photo = parse_with_photo(parser(__doc__, "new_inputs"), argv)
    args.out.mkdir(parents=True, exist_ok=True)
    style_files = {}
    for name, image in drawn_styles().items():
        style_files[name] = args.out / f"style_{name}.png"
        image.save(style_files[name])
    rows = []
    for size in args.sizes:
        for name, style in style_files.items():
            row = {"size": size, "style": name}
            for opt in ("lstm", "adam"):
                run = stylize_totals(photo, style, ["--size", str(size), "--optimizer", opt], args.out,
                                     f"grace_hopper_{name}_{size}px_{opt}", args.reuse)
                row[opt] = run["final_total"]  # the returned image's: with keep_best, its lowest-loss one
                row[f"{opt}_kept_after_step"] = run.get("kept_after_step")
                row[f"{opt}_backoff_steps"] = run.get("backoff_steps")
                row[f"{opt}_last_notice"] = run["steps"][-1].get("notice")  # (how much higher the last image was)
            row["lstm_over_adam"] = row["lstm"] / row["adam"]
            rows.append(row)
            print(f"{size} px {name:8s} lstm {row['lstm']:.4f} adam {row['adam']:.4f} "
                  f"ratio {row['lstm_over_adam']:.3f}", flush=True)
    ratios = [r["lstm_over_adam"] for r in rows]
    report = {"photo": "matplotlib sample_data/grace_hopper.jpg",
              "styles": sorted(style_files), "styles_made_by": "bench/new_inputs.py drawn_styles()",
              "steps": "the CLI default (150)", "optimizers": "lstm and adam at their default rates (CLI defaults)",
              "runs": rows, "lstm_lower": sum(r < 1 for r in ratios), "runs_count": len(rows),
              "median_ratio": statistics.median(ratios), "worst_ratio": max(ratios)}
    write_report(report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
