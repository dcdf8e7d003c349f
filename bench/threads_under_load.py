"""How fast is a stylization when other processes keep the cores busy, by CPU thread count?

torch uses one thread per core by default.  This script starts 0, 1 or 2 busy processes (a Python
loop each) and times `artopt stylize` runs beside them, as a user would start them: 30 steps at 256 px
of the LSTM and of Adam with 2 threads (torch's default here), 1 thread, 2 threads with
OMP_WAIT_POLICY=PASSIVE (threads sleep instead of spinning while they wait), and artopt's automatic
choice (no --threads; artopt.cpu).  Each run's wall time is its log's, after start-up:

    .venv/bin/python bench/threads_under_load.py          # ~8 min on 2 cores with nothing else running

Writes bench/results/threads_under_load.json; images and logs go to --out.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from artopt.cpu import usable_cores  # noqa: E402
from artopt.script_args import check_output_dir, check_output_file, positive_int, script_parser  # noqa: E402
from cli_runs import ROOT, artopt, write_report  # noqa: E402

VARIANTS = {"2 threads": (["--threads", "2"], {}), "1 thread": (["--threads", "1"], {}),
            "2 threads, passive wait": (["--threads", "2"], {"OMP_WAIT_POLICY": "PASSIVE"}),
            "automatic": ([], {})}


def timed_run(optimizer: str, flags: list[str], env: dict, out: Path, steps: int, size: int) -> dict:
    log = out / "run.json"
    cmd = [*artopt(), "stylize", str(ROOT / "assets" / "photos" / "chelsea.jpg"),
           str(ROOT / "assets" / "styles" / "woman_with_a_hat.jpg"), "-o", str(out / "run.png"), "--quiet",
           "--size", str(size), "--steps", str(steps), "--optimizer", optimizer, "--log-json", str(log), *flags]
    full_env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # (it would turn off the choice)
    if subprocess.run(cmd, env={**full_env, **env}).returncode:
        raise SystemExit(f"this run failed: {' '.join(cmd)}")
    found = json.loads(log.read_text(encoding="utf-8"))
    return {"seconds": found["steps"][-1]["wall_time"], "final_loss": found["final_losses"]["total"],
            "threads": found["settings"]["cpu_threads"]}


def main(argv=None) -> int:
    ap = script_parser(__doc__)
    ap.add_argument("--loads", type=int, nargs="+", default=[0, 1, 2], help="busy processes beside the runs")
    ap.add_argument("--steps", type=positive_int, default=30)
    ap.add_argument("--size", type=positive_int, default=256)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "threads_under_load")
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "threads_under_load.json")
    args = ap.parse_args(argv)
    if any(n < 0 for n in args.loads):
        ap.error("--loads must be 0 or more")
    check_output_dir(ap, "--out", args.out)
    check_output_file(ap, "--json", args.json)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for load in args.loads:
        busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(load)]
        try:
            time.sleep(1.0)
            for optimizer in ("lstm", "adam"):
                for name, (flags, env) in VARIANTS.items():
                    row = {"busy_processes": load, "optimizer": optimizer, "variant": name,
                           **timed_run(optimizer, flags, env, args.out, args.steps, args.size)}
                    rows.append(row)
                    print(f"{load} busy, {optimizer}, {name}: {row['seconds']:.2f} s ({row['threads']} threads), "
                          f"final loss {row['final_loss']:.5f}", flush=True)
        finally:
            for p in busy:
                p.kill()
                p.wait()
    report = {"what": f"artopt stylize chelsea.jpg woman_with_a_hat.jpg, {args.steps} steps at {args.size} px, "
                      "beside busy Python loops; seconds: the log's wall time of the last step (after start-up)",
              "cores": len(usable_cores()),
              "runs": rows}
    write_report(report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
