"""How many steps should the pyramid's coarsest scale get (StylizeConfig.coarse_share)?

The engine gives the coarsest scale two thirds of the steps: 134 of 200 at 512 px (256 then 512 px).
For the learned optimizer that is about 20 s of a 1-thread run, and its 512 px scale starts no lower
for it.  ``val`` measures that on validation photos (512 px, pyramid, 200 steps, the held-out style,
engine defaults, 1 thread, seed 0): the LSTM with the coarsest scale cut to each of --coarse steps
(0: the engine's split), and Adam at the engine's split with its tuned rate, whose final loss each
LSTM run is timed to.  The runs go two at a time (--jobs), so their times are only roughly those of a
run alone; the losses are exact.

``speed`` reads a timed evaluation run alone on the test photos,

    artopt evaluate neural-art 512 --pyramid on --optimizers lstm-coarse0.1,adam,adam-coarse0.1 \\
        --photos 4 --out runs/coarse_share

and applies the rule committed with this script, before that run: the share is 0.1 (20 of 200
coarse steps), picked from ``val`` alone.  The issue's 512 px speed target (the LSTM at least 2x
faster than tuned Adam to Adam's final loss) counts as met with the pyramid and that share if the
LSTM's mean time to the Adam run's final loss is at most half the lower of Adam's mean time to it
and Adam's with the same share (where that gets there on every photo: Adam is given the cheaper
split too if it helps it).  Either way the engine's default split stays: with a share of 0.1 the
same step budget takes about twice as long, a user-facing change this check does not decide.

    .venv/bin/python bench/coarse_share.py val --jobs 2        # ~12 min on 2 cores
    .venv/bin/python bench/coarse_share.py speed runs/coarse_share/512-pyramid-on.json

``cli`` asks what a user gets at about the same wall time: the CLI's default learned run at 512 px
(150 steps, 100 of them at 256 px) against ``--coarse-share 0.1 --steps 80`` (8 + 72), whose count
was fixed beforehand from the 1-thread step costs of session 54's timed run (a 256 px step about
0.157 s, a 512 px step about 0.63 s: 100 x 0.157 + 50 x 0.63 = 47 s; 80 x (0.1 x 0.157 + 0.9 x 0.63) =
47 s), on the shipped photos with the held-out style and with piano_keyboard_sketch, one run after
the other with nothing else running (~6 min):

    .venv/bin/python bench/coarse_share.py cli

(Session 59's timed run is kept as train/results/neural_art/ablation-coarse-share0.1-512-pyramid-on.json.)
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "train"))
sys.path.insert(0, str(ROOT / "bench"))
from artopt.script_args import at_least, check_output_dir, script_parser  # noqa: E402
from cli_runs import stylize_totals, write_report  # noqa: E402

SIZE, STEPS = 512, 200
ADAM_RATE_KEY = f"engine-{SIZE}px/steps={STEPS}/adam"  # Adam's tuned rate in train/results/neural_art/lrs.json
VAL = {"n01616318_vulture.JPEG": (0, 67, 34, 20, 10), "n01675722_banded_gecko.JPEG": (0, 20)}
SHARE = 0.1  # the rule's share, from ``val``
FINE_STEPS_SHOWN = (0, 10, 20, 50, 65)


def one_run(job: tuple) -> dict:
    """(photo, optimizer, coarse steps or 0 for the engine's split, cache file): one engine run on 1 thread."""
    import torch

    photo, name, coarse, path = job
    if path.is_file():
        return json.loads(path.read_text())
    torch.set_num_threads(1)
    import eval_neural_art as ev
    from artopt.tasks.neural_art import HELD_OUT_STYLES, NeuralArtTask

    task = NeuralArtTask(size=64)  # (only for the data folder)
    style = ev._load_rgb(str(task.root / "styles" / HELD_OUT_STYLES[0]), 1024).unsqueeze(0)
    share = coarse / STEPS if coarse else None  # (round(share * STEPS) gives back ``coarse``)
    if name == "adam":
        run = ev._engine_run(task, photo, style, SIZE, True, "adam", adam_rate(), STEPS, coarse_share=share)
    else:
        run = ev._engine_run(task, photo, style, SIZE, True, "lstm", None, STEPS,
                             weights=ROOT / "weights" / "neural_art.safetensors", coarse_share=share)
    out = {"photo": photo, "optimizer": name, "coarse_steps": run["scale_starts"][-1], "final": run["final"],
           "curve": run["curve"], "elapsed": [t for t, _ in run["times"]], "seconds": run["seconds"],
           "handed_off_scales": run["handed_off_scales"]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out) + "\n")
    return out


def adam_rate() -> float:
    import eval_neural_art as ev

    return ev._lr_cache()[ADAM_RATE_KEY]["lr"]


def val(args) -> dict:
    jobs = [(p, "adam", 0, args.runs / f"{p}-adam.json") for p in VAL]
    jobs += [(p, "lstm", c, args.runs / f"{p}-lstm-{c}.json") for p, cs in VAL.items() for c in cs]
    with ProcessPoolExecutor(args.jobs) as pool:
        runs = list(pool.map(one_run, jobs))
    rows = []
    for photo in VAL:
        adam = next(r for r in runs if r["photo"] == photo and r["optimizer"] == "adam")
        for r in (r for r in runs if r["photo"] == photo and r["optimizer"] == "lstm"):
            hit = next((k for k, v in enumerate(r["curve"]) if v <= adam["final"]), None)
            rows.append({"photo": photo, "coarse_steps": r["coarse_steps"], "final": r["final"],
                         "final_scale_losses": {str(k): r["curve"][k] for k in FINE_STEPS_SHOWN},
                         "final_scale_steps_to_adam_final": hit,
                         "seconds_to_adam_final": None if hit is None else r["elapsed"][hit],
                         "seconds": r["seconds"], "handed_off_scales": r["handed_off_scales"]})
    return {"what": "bench/coarse_share.py val: the LSTM with the coarsest scale cut short (validation photos)",
            "size": SIZE, "steps": STEPS, "adam_lr": adam_rate(), "threads": 1, "jobs": args.jobs,
            "adam": {r["photo"]: {"final": r["final"], "seconds": r["seconds"]} for r in runs if r["optimizer"] == "adam"},
            "rows": rows}


def speed(report: dict, lstm: str = f"lstm-coarse{SHARE:g}",
          what: str = "bench/coarse_share.py speed: the rule of the script's docstring") -> dict:
    """The rule's verdict from a timed evaluation JSON holding ``lstm`` (a learned optimizer with the share),
    adam and adam-coarseS."""
    adam_share = f"adam-coarse{SHARE:g}"
    timing = report["timing"]
    mean = {}
    for name in ("adam", lstm, adam_share):
        times = [row["seconds_to_adam_final"] for row in timing[name]]
        mean[name] = sum(times) / len(times) if all(t is not None for t in times) else None
    baseline = min(t for t in (mean["adam"], mean[adam_share]) if t is not None)
    finals = {k: v["mean_final_loss"] for k, v in report["optimizers"].items()}
    return {"what": what, "share": SHARE,
            "photos": report["photos"], "timing_conditions": report["timing_conditions"],
            "mean_seconds_to_adam_final": mean, "baseline_seconds": baseline,
            "lstm_speedup": baseline / mean[lstm] if mean[lstm] else None,
            "met": bool(mean[lstm] and mean[lstm] <= baseline / 2),
            "update_share": report["speed"][lstm]["update_share"],
            "mean_final_loss": finals, "lstm_over_adam": finals[lstm] / finals["adam"],
            "lstm_mean_curve_steps_to_adam_final": next(
                (k for k, v in enumerate(report["optimizers"][lstm]["mean_curve"]) if v <= finals["adam"]), None)}


CLI_FLAGS = {"default": [], "share 0.1, 80 steps": ["--coarse-share", "0.1", "--steps", "80"]}
CLI_STYLES = ("woman_with_a_hat", "piano_keyboard_sketch")


def cli_table(args, variants: dict[str, list[str]]) -> list[dict]:
    """The CLI's learned run at 512 px with each variant's flags, on the shipped photos with CLI_STYLES, one
    run after the other: a row per photo and style, each variant's final loss and seconds under its name."""
    rows = []
    for style in CLI_STYLES:
        for photo in ("chelsea", "rocket"):
            row = {"photo": photo, "style": style}
            for name, flags in variants.items():
                run = stylize_totals(ROOT / "assets" / "photos" / f"{photo}.jpg",
                                     ROOT / "assets" / "styles" / f"{style}.jpg",
                                     ["--size", "512", "--optimizer", "lstm", *flags], args.runs,
                                     f"{photo}_{style}_{name.replace(' ', '_').replace(',', '')}", args.reuse)
                row[name] = {"final": run["final_total"], "seconds": run["seconds"]}
            rows.append(row)
    return rows


def cli(args) -> dict:
    rows = cli_table(args, CLI_FLAGS)
    for row in rows:
        row["loss_ratio"] = row["share 0.1, 80 steps"]["final"] / row["default"]["final"]
        row["time_ratio"] = row["share 0.1, 80 steps"]["seconds"] / row["default"]["seconds"]
        print(f"{row['photo']} {row['style']}: loss x{row['loss_ratio']:.3f}, time x{row['time_ratio']:.2f}", flush=True)
    return {"what": "bench/coarse_share.py cli: the CLI's default lstm run against --coarse-share 0.1 --steps 80, "
                    "512 px, one run after the other", "flags": CLI_FLAGS, "rows": rows,
            "mean_loss_ratio": sum(r["loss_ratio"] for r in rows) / len(rows),
            "mean_time_ratio": sum(r["time_ratio"] for r in rows) / len(rows)}


def main(argv=None) -> int:
    ap = script_parser(__doc__)
    ap.add_argument("mode", choices=("val", "speed", "cli"))
    ap.add_argument("report", nargs="?", type=Path, help="speed: the timed evaluation's JSON")
    ap.add_argument("--jobs", type=at_least(1), default=2)
    ap.add_argument("--runs", type=Path, default=None, help="run cache (default: runs/coarse_share_val or _cli)")
    ap.add_argument("--reuse", action="store_true", help="cli: read a finished run's log instead of running it again")
    args = ap.parse_args(argv)
    args.runs = args.runs or ROOT / "runs" / f"coarse_share_{'cli' if args.mode == 'cli' else 'val'}"
    check_output_dir(ap, "--runs", args.runs)
    if args.mode == "cli":
        write_report(cli(args), ROOT / "bench" / "results" / "coarse_share_cli.json")
    elif args.mode == "val":
        write_report(val(args), ROOT / "bench" / "results" / "coarse_share_val.json")
    else:
        if args.report is None or not args.report.is_file():
            ap.error("speed needs the timed evaluation's JSON (see the docstring's command)")
        try:
            report = json.loads(args.report.read_text(encoding="utf-8"))
            timing = speed(report)
        except (ValueError, KeyError) as err:  # (a traceback: an empty file, or a report of another run)
            ap.error(f"{args.report}: not the timed --coarse-share evaluation's JSON ({type(err).__name__}: {err})")
        write_speed(timing, args.report, "coarse_share_speed.json")
    return 0


def write_speed(found: dict, report: Path, name: str) -> None:
    """Write a speed verdict to bench/results/NAME, with the evaluation JSON it read as its source (relative
    to the repository where it lies inside it)."""
    source = report.resolve()
    found["source"] = str(source.relative_to(ROOT) if source.is_relative_to(ROOT) else source)
    write_report(found, ROOT / "bench" / "results" / name)


if __name__ == "__main__":
    raise SystemExit(main())
