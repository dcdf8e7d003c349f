"""Does the learned optimizer's backoff change the evaluation's engine settings?

The engine settings of the neural-art evaluation (train/eval_neural_art.py: 256 and 512 px, pyramid on
and off, the held-out style, 4 test photos, 200 steps, 1 CPU thread) were run before the engine had
backoff.  This script runs the LSTM again on the same photos with the current engine, with backoff
and, where it lowered the step on some photo, without it, and reports both means next to the
committed ones (the tuned baselines do not back off, so their runs stand):

    .venv/bin/python bench/backoff_eval.py 256-pyramid-off    # ~2-4 min a 256 px setting, ~6-12 min a 512 px one

Writes train/results/neural_art/ablation-backoff-SETTING.json (the per-photo curves included).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "train"))
from artopt.script_args import script_parser  # noqa: E402

RESULTS = ROOT / "train" / "results" / "neural_art"
SETTINGS = ("256-pyramid-on", "256-pyramid-off", "512-pyramid-on", "512-pyramid-off")


def run_lstm(setting: dict, photo: str, backoff: bool) -> dict:
    """One LSTM run of the evaluation's ``_engine_run`` on ``photo``; the step multipliers backoff set."""
    import eval_neural_art as ev
    from artopt.tasks.neural_art import NeuralArtTask

    task = NeuralArtTask(size=64)  # (only for the data folder)
    style = ev._load_rgb(str(task.root / "styles" / setting["style"]), 1024).unsqueeze(0)
    run = ev._engine_run(task, photo, style, setting["size"], setting["pyramid"], "lstm", None, setting["steps"],
                         weights=ROOT / "weights" / "neural_art.safetensors", backoff=backoff,
                         handoff_lr=None)  # (backoff alone, as measured before the handoff was the default)
    return {"photo": photo, "final": run["final"], "backoff_scales": run["backoff_scales"], "curve": run["curve"],
            "seconds": run["seconds"]}


def main(argv=None) -> int:
    ap = script_parser(__doc__)
    ap.add_argument("setting", choices=SETTINGS)
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder of the report (default: %(default)s)")
    args = ap.parse_args(argv)
    import eval_neural_art as ev

    committed = json.loads((RESULTS / f"{args.setting}.json").read_text())
    setting = {"size": committed["size"], "pyramid": args.setting.endswith("-on"), "steps": committed["steps"],
               "style": committed["style"]}
    torch.set_num_threads(committed["timing_conditions"]["threads"])  # the evaluation's (1): the sums' order
    report = {"setting": args.setting, **setting, "photos": committed["photos"],
              "threads": torch.get_num_threads(), "committed_lstm_mean_final": ev.first_lstm_final(committed),
              "best_baseline": committed["best_baseline"], "best_baseline_final_loss": committed["best_baseline_final_loss"]}
    runs = {"backoff": [run_lstm(setting, p, True) for p in committed["photos"]]}
    for r in runs["backoff"]:
        print(f"{args.setting} {r['photo']} backoff: final {r['final']:.5f}, step multipliers {r['backoff_scales']}",
              flush=True)
    if any(r["backoff_scales"] for r in runs["backoff"]):
        runs["no_backoff"] = [run_lstm(setting, p, False) for p in committed["photos"]]
    else:  # nothing backed off: the same runs
        runs["no_backoff"] = runs["backoff"]
    for name, rs in runs.items():
        mean = sum(r["final"] for r in rs) / len(rs)
        report[name] = {"mean_final": mean, "over_best_baseline": mean / committed["best_baseline_final_loss"],
                        "photos_backed_off": sum(bool(r["backoff_scales"]) for r in rs)}
        print(f"{args.setting} {name}: mean final {mean:.5f} ({report[name]['over_best_baseline']:.4f} of "
              f"{committed['best_baseline']}); committed {report['committed_lstm_mean_final']:.5f}", flush=True)
    report["runs"] = runs if runs["no_backoff"] is not runs["backoff"] else {"backoff": runs["backoff"]}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"ablation-backoff-{args.setting}.json"
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
