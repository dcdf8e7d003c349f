"""Shared by the user-setting benchmarks: one `artopt stylize` run through the CLI, as a user would
start it, and its per-step total losses read back from its --log-json."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def artopt() -> list[str]:
    """The artopt command next to this Python (a venv's), else ``python -m artopt``."""
    exe = shutil.which("artopt", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "artopt"]


def stylize_totals(content: Path, style: Path, flags: list[str], out: Path, stem: str, reuse: bool = False) -> dict:
    """Run ``artopt stylize CONTENT STYLE -o OUT/STEM.png --quiet FLAGS --log-json OUT/STEM.json``
    (or, with ``reuse``, read that log if it is there); return the log with ``totals`` added: the
    total loss after each step."""
    log = out / f"{stem}.json"  # f-strings, not Path.with_suffix: stems hold dots ("x0.1")
    if not (reuse and log.exists()):
        out.mkdir(parents=True, exist_ok=True)
        subprocess.run([*artopt(), "stylize", str(content), str(style), "-o", str(out / f"{stem}.png"), "--quiet",
                        *flags, "--log-json", str(log)], check=True)
    run = json.loads(log.read_text())
    run["totals"] = [s["total"] for s in run["steps"]]
    return run


def write_report(report: dict, path: Path) -> None:
    """Write a benchmark's JSON report and say where."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")


def add_run_flags(ap, name: str, style: bool = True) -> None:
    """The flags every user-setting benchmark takes; ``name`` names its run folder and JSON."""
    ap.add_argument("--photos", nargs="+", default=["chelsea", "rocket"], help="names in assets/photos")
    if style:
        ap.add_argument("--style", default="woman_with_a_hat", help="name in assets/styles (held out of training)")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / name)
    ap.add_argument("--reuse", action="store_true", help="read a run's log from --out when it is there")
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / f"{name}.json")
