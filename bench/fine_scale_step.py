"""A smaller learned step at the pyramid's finer scales (StylizeConfig.fine_scale_step)?

The rule was committed before any score existed (48842c9): candidates 0.35, 0.5 and 0.7 against 1,
scored on validation photos only (held-out style, engine defaults, the shipped weights, 200 steps,
1 thread, seed 0): 256 px pyramid on, 8 photos; 512 px pyramid on, the first 4 of them.  A candidate
qualifies if its mean final loss is below 1's at both sizes; the lowest sum of its two ratios to 1
wins.  ``val`` runs that and writes the choice; ``test SETTING --step M`` then runs M (and 1, the
engine as before) on the evaluation's test photos of one pyramid setting:

    .venv/bin/python bench/fine_scale_step.py val --jobs 2     # ~30-40 min on 2 cores
    .venv/bin/python bench/fine_scale_step.py test 512-pyramid-on --step 0.5

Each (photo, size, step) run is one JSON file under --runs, reused when present, so an interrupted
run resumes; the reports go to bench/results/fine_scale_step_val.json and
train/results/neural_art/ablation-fine-scale-step-SETTING.json.
"""

from __future__ import annotations

import json
import random
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "train"))
sys.path.insert(0, str(ROOT / "bench"))
from artopt.script_args import at_least, check_output_dir, script_parser  # noqa: E402
from cli_runs import write_report  # noqa: E402

CANDIDATES = (0.35, 0.5, 0.7)
VAL_SIZES = {256: 8, 512: 4}  # size: validation photos (the first n of the 8)
TEST_SETTINGS = ("256-pyramid-on", "384-pyramid-on", "512-pyramid-on")
STEPS = 200
RESULTS = ROOT / "train" / "results" / "neural_art"


def one_run(job: tuple) -> dict:
    """The LSTM on one photo (split, photo, size, fine_scale_step, cache file[, carry_state[, extra]]), on 1
    thread; ``extra`` may name the style (a file in the data's styles; default: the first held-out one),
    a handoff_lr, handoff_warmup, handoff_finer_lr, handoff_finer_within, handoff_finer_steps and pyramid
    (default: on), and is recorded in the run's file."""
    import torch

    split, photo, size, step, path, *rest = job
    carry = bool(rest and rest[0])
    extra = rest[1] if len(rest) > 1 and rest[1] else {}
    if path.is_file():
        return {"carry": False, **json.loads(path.read_text())}  # (this script's own files have no "carry")
    torch.set_num_threads(1)  # the evaluation's: the sums' order
    import eval_neural_art as ev
    from artopt.tasks.neural_art import HELD_OUT_STYLES, NeuralArtTask

    task = NeuralArtTask(size=64)  # (only for the data folder)
    style = ev._load_rgb(str(task.root / "styles" / extra.get("style", HELD_OUT_STYLES[0])), 1024).unsqueeze(0)
    run = ev._engine_run(task, photo, style, size, extra.get("pyramid", True), "lstm", None, STEPS,
                         weights=ROOT / "weights" / "neural_art.safetensors", fine_scale_step=step, carry_state=carry,
                         handoff_lr=extra.get("handoff_lr"), handoff_warmup=extra.get("handoff_warmup", 0),
                         # (None, off, unless ``extra`` names it: the runs committed before it existed stay valid)
                         handoff_finer_lr=extra.get("handoff_finer_lr"),
                         handoff_finer_within=extra.get("handoff_finer_within", 1.0),
                         handoff_finer_steps=extra.get("handoff_finer_steps", 0))
    out = {"split": split, "photo": photo, "size": size, "fine_scale_step": step, "carry": carry, **extra,
           "final": run["final"], "curve": run["curve"], "backoff_scales": run["backoff_scales"],
           "handed_off_scales": run["handed_off_scales"], "handoff_steps": run["handoff_steps"],
           "scale_starts": run["scale_starts"], "n_scales": run["n_scales"],
           "seconds": run["seconds"]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out) + "\n")
    return out


def val_photos() -> list[str]:
    """The rule's 8 validation photos, in the order its runs take them (VAL_SIZES' sizes use the first n);
    the later benchmarks on the same question (carry_state, handoff, handoff_finer) use them too."""
    from artopt.tasks.neural_art import NeuralArtTask

    return random.Random(0).sample(NeuralArtTask(size=64).split["val"], max(VAL_SIZES.values()))


def committed_settings(names) -> dict[str, dict]:
    """The evaluation's committed results (train/results/neural_art/NAME.json) of these test settings."""
    return {name: json.loads((RESULTS / f"{name}.json").read_text()) for name in names}


def run_all(jobs: list, workers: int) -> list[dict]:
    if workers <= 1:
        return [one_run(j) for j in jobs]
    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(one_run, jobs))


def summarize(runs: list[dict], target: float) -> dict:
    """One variant's runs on a test setting: mean final loss, its ratio to ``target`` (the best
    baseline's final loss), and the final-scale steps the mean curve takes to reach it."""
    mean = sum(r["final"] for r in runs) / len(runs)
    n = min(len(r["curve"]) for r in runs)
    curve = [sum(r["curve"][i] for r in runs) / len(runs) for i in range(n)]  # the final scale's mean
    reach = next((i for i, v in enumerate(curve) if v <= target), None)  # (steps taken, as the evaluation counts)
    return {"mean_final": mean, "over_best_baseline": mean / target, "finals": [r["final"] for r in runs],
            "photos_backed_off": sum(bool(r["backoff_scales"]) for r in runs),
            "final_scale_steps_to_best_baseline": reach, "mean_curve": curve}


def choose(means: dict[int, dict[float, float]]) -> tuple[float, dict]:
    """The rule: (chosen step, each candidate's ratios to 1 and whether it qualifies)."""
    table = {}
    for m in CANDIDATES:
        ratios = {size: means[size][m] / means[size][1.0] for size in means}
        table[m] = {"ratios": ratios, "qualifies": all(r < 1 for r in ratios.values()), "sum": sum(ratios.values())}
    qualified = [m for m in CANDIDATES if table[m]["qualifies"]]
    return (min(qualified, key=lambda m: table[m]["sum"]) if qualified else 1.0), table


def main(argv=None) -> int:
    ap = script_parser(__doc__)
    ap.add_argument("what", choices=("val", "test"))
    ap.add_argument("setting", nargs="?", choices=TEST_SETTINGS, help="test: the evaluation's setting")
    ap.add_argument("--step", type=float, help="test: the step to run besides 1")
    ap.add_argument("--jobs", type=at_least(1), default=1, help="runs side by side, 1 thread each (default: %(default)s)")
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "fine_scale_step",
                    help="folder of the per-run files (default: %(default)s)")
    args = ap.parse_args(argv)
    check_output_dir(ap, "--runs", args.runs)  # (a file there failed after the first runs)
    if args.step is not None and not (0 < args.step < float("inf")):  # (refused only when its run started)
        ap.error(f"--step must be a positive number, got {args.step}")
    if args.what == "val":
        photos = val_photos()
        jobs = [("val", p, size, m, args.runs / f"val-{size}-{m:g}-{p}.json")
                for m in (1.0, *CANDIDATES) for size, n in VAL_SIZES.items() for p in photos[:n]]
        runs = run_all(jobs, args.jobs)
        means = {size: {m: sum(r["final"] for r in runs if r["size"] == size and r["fine_scale_step"] == m) / n
                        for m in (1.0, *CANDIDATES)} for size, n in VAL_SIZES.items()}
        chosen, table = choose(means)
        for size in VAL_SIZES:
            print(f"{size} px: " + ", ".join(f"{m:g}: {means[size][m]:.5f}" for m in (1.0, *CANDIDATES)))
        for m, row in table.items():
            print(f"{m:g}: ratios {', '.join(f'{s} px {r:.4f}' for s, r in row['ratios'].items())}; "
                  f"{'qualifies' if row['qualifies'] else 'does not qualify'}")
        print(f"chosen: {chosen:g}")
        report = {"rule_commit": "48842c9", "photos": photos, "sizes": {str(k): v for k, v in VAL_SIZES.items()},
                  "steps": STEPS, "threads": 1, "means": {str(s): {f"{m:g}": v for m, v in ms.items()}
                                                          for s, ms in means.items()},
                  "candidates": {f"{m:g}": {"ratios": {str(s): r for s, r in row["ratios"].items()},
                                            "qualifies": row["qualifies"], "sum": row["sum"]}
                                 for m, row in table.items()},
                  "chosen": chosen, "runs": runs}
        path = ROOT / "bench" / "results" / "fine_scale_step_val.json"
    else:
        if args.setting is None or args.step is None:
            ap.error("test needs a SETTING and --step")
        import eval_neural_art as ev

        committed = json.loads((RESULTS / f"{args.setting}.json").read_text())
        size = committed["size"]
        steps = (1.0, args.step)
        jobs = [("test", p, size, m, args.runs / f"test-{size}-{m:g}-{p}.json") for m in steps
                for p in committed["photos"]]
        runs = run_all(jobs, args.jobs)
        best = committed["best_baseline_final_loss"]
        report = {"setting": args.setting, "size": size, "photos": committed["photos"], "style": committed["style"],
                  "steps": STEPS, "threads": 1, "best_baseline": committed["best_baseline"],
                  "best_baseline_final_loss": best,
                  "committed_lstm_mean_final": ev.first_lstm_final(committed)}
        for m in steps:
            report[f"step_{m:g}"] = summarize([r for r in runs if r["fine_scale_step"] == m], best)
            mean = report[f"step_{m:g}"]["mean_final"]
            print(f"{args.setting} fine_scale_step {m:g}: mean final {mean:.5f} ({mean / best:.4f} of "
                  f"{committed['best_baseline']}); committed LSTM {report['committed_lstm_mean_final']:.5f}")
        report["runs"] = runs
        path = RESULTS / f"ablation-fine-scale-step-{args.setting}.json"
    write_report(report, path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
