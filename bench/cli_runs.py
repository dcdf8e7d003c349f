"""Shared by the user-setting benchmarks: one `artopt stylize` run through the CLI, as a user would
start it, and its total losses read back from its --log-json."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

from artopt.script_args import (check_names, check_output_dir, check_output_file, check_photo_sizes, dumps,  # noqa: E402
                                refuse_same_files)
from artopt.style.engine import (FINE_SCALE_STEP, HANDOFF_FINER_LR, HANDOFF_FINER_STEPS,  # noqa: E402
                                 HANDOFF_FINER_WITHIN, HANDOFF_LR, HANDOFF_WARMUP)

ROOT = Path(__file__).resolve().parents[1]


def artopt() -> list[str]:
    """The artopt command next to this Python (a venv's), else ``python -m artopt``."""
    exe = shutil.which("artopt", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "artopt"]


def stylize_totals(content: Path, style: Path, flags: list[str], out: Path, stem: str, reuse: bool = False) -> dict:
    """Run ``artopt stylize CONTENT STYLE -o OUT/STEM.png --quiet FLAGS --log-json OUT/STEM.json``
    (or, with ``reuse``, read that log if it is there); return the log with three entries added:
    ``totals``, the log's per-step total, which is the loss of the image each step started from
    (before its update); ``final_total``, the loss of the image the run returned; and ``after``, the
    loss after each step (``totals`` shifted by one, ending in ``final_total``; across a pyramid's
    change of scale, the next scale's first loss)."""
    log = out / f"{stem}.json"  # f-strings, not Path.with_suffix: stems hold dots ("x0.1")
    if not (reuse and log.exists() and _log_matches(log, content, style, flags)):
        out.mkdir(parents=True, exist_ok=True)
        cmd = [*artopt(), "stylize", str(content), str(style), "-o", str(out / f"{stem}.png"), "--quiet",
               *flags, "--log-json", str(log)]
        if subprocess.run(cmd).returncode:  # artopt has printed why
            raise SystemExit(f"this run failed: {' '.join(cmd)}")
    run = json.loads(log.read_text(encoding="utf-8"))
    if run.get("stopped_early"):  # (Ctrl-C reached the child: it saved what it had, fewer steps)
        raise SystemExit(f"this run stopped early: {log}; run the benchmark again to finish it")
    # the log has null for a non-finite loss; inf keeps the arithmetic on it (written back as null)
    run["totals"] = [math.inf if s["total"] is None else s["total"] for s in run["steps"]]
    final = (run.get("final_losses") or {}).get("total")
    run["final_total"] = math.inf if final is None else final
    run["after"] = run["totals"][1:] + [run["final_total"]]
    return run


def _log_matches(log: Path, content: Path, style: Path, flags: list[str]) -> bool:
    """Whether a finished run's log is one of these inputs and flags: a log left in --out by a run
    at another --size (the stems of some benchmarks do not name it) is not reused."""
    try:
        found = json.loads(log.read_text(encoding="utf-8"))
        settings = found["settings"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if "final_losses" not in found:  # written before the logs had the returned image's loss
        print(f"not reusing {log}: it has no final_losses", flush=True)
        return False
    if found.get("stopped_early"):  # a run stopped by Ctrl-C has fewer steps than its flags asked
        print(f"not reusing {log}: that run stopped early", flush=True)
        return False
    if "keep_best" not in settings:  # written before keep_best: its final_losses are of the last image
        print(f"not reusing {log}: it was written before keep_best", flush=True)
        return False
    if settings.get("resolved_optimizer") == "lstm" and "backoff" not in settings:  # (the others never back off)
        print(f"not reusing {log}: it was written before the learned optimizer's backoff", flush=True)
        return False
    # fields a log may lack or hold as null, as the engine then ran: the full step at every scale (1), no
    # handoff (0, as --handoff-lr 0 says it now), no finer scales' handoff, which then followed any coarse
    # handoff (within 1); the checks below and the flags read these
    settings = {**settings, "fine_scale_step": settings.get("fine_scale_step", 1.0),
                "handoff_lr": settings.get("handoff_lr") or 0.0, "handoff_warmup": settings.get("handoff_warmup", 0),
                "handoff_finer_lr": settings.get("handoff_finer_lr") or 0.0,
                "handoff_finer_within": settings.get("handoff_finer_within", 1.0),
                "handoff_finer_steps": settings.get("handoff_finer_steps", 0)}
    fine = settings["fine_scale_step"]
    if (settings.get("resolved_optimizer") == "lstm" and "--fine-scale-step" not in flags
            and fine != FINE_SCALE_STEP and any(s.get("scale", 0) > 0 for s in found.get("steps", []))):
        print(f"not reusing {log}: its learned step at the pyramid's finer scales was {fine:g}x, not the "
              f"default {FINE_SCALE_STEP:g}x", flush=True)
        return False
    handoff = (settings["handoff_lr"], settings["handoff_warmup"])
    if (settings.get("resolved_optimizer") == "lstm" and "--handoff-lr" not in flags
            and handoff != (HANDOFF_LR, HANDOFF_WARMUP)):
        print(f"not reusing {log}: its handoff (lr, warm-up) was {handoff}, not the default "
              f"{(HANDOFF_LR, HANDOFF_WARMUP)}", flush=True)
        return False
    # (where no coarse scale was handed off early, a log from before session 58 is the same run, but a log
    # cannot tell)
    for flag, default in (("--handoff-finer-lr", HANDOFF_FINER_LR), ("--handoff-finer-within", HANDOFF_FINER_WITHIN),
                          ("--handoff-finer-steps", HANDOFF_FINER_STEPS)):
        value = settings[flag[2:].replace("-", "_")]
        if settings.get("resolved_optimizer") == "lstm" and flag not in flags and value != default:
            print(f"not reusing {log}: its {flag[2:]} was {value:g}, not the default {default:g}", flush=True)
            return False
    if settings.get("coarse_share") is not None and "--coarse-share" not in flags:  # (any optimizer's pyramid)
        print(f"not reusing {log}: its coarsest scale had {settings['coarse_share']:g} of the steps, not the "
              "default two thirds", flush=True)
        return False
    if settings.get("adam_levels") and "--adam-levels" not in flags:  # (a log from before the option had none)
        print(f"not reusing {log}: Adam stepped its {settings['adam_levels']} finest basis level(s)", flush=True)
        return False
    logged = [settings.get("content_path", ""), *settings.get("style_paths", [])]
    if len(logged) != 2 or not all(_same_file(Path(a), b) for a, b in zip(logged, (content, style))):
        print(f"not reusing {log}: it is of other images ({', '.join(map(str, logged))})", flush=True)
        return False
    for flag, value in _flag_values(flags):
        key = flag[2:].replace("-", "_")
        have = settings.get(key)
        if value is None:  # a switch such as --keep-colors
            same = have is True
        else:
            try:
                same = float(have) == float(value)
            except (TypeError, ValueError):
                same = str(have) == value
        if not same:
            print(f"not reusing {log}: it has {flag} {have}, not {value}", flush=True)
            return False
    return True


def _same_file(logged: Path, path: Path) -> bool:
    """Whether a log's image path is ``path``: the same file however spelt (relative, through a link), or
    a file of the same bytes (a log made in another checkout, or before the folder was moved)."""
    try:
        return logged.resolve() == path.resolve() or logged.read_bytes() == path.read_bytes()
    except OSError:
        return False


def _flag_values(flags: list[str]) -> list[tuple[str, str | None]]:
    """``flags`` as (flag, value) pairs; a flag followed by another flag (or by nothing) is a switch,
    with the value None.  (The benchmarks' values never start with "--".)"""
    pairs, i = [], 0
    while i < len(flags):
        takes_value = i + 1 < len(flags) and not flags[i + 1].startswith("--")
        pairs.append((flags[i], flags[i + 1] if takes_value else None))
        i += 2 if takes_value else 1
    return pairs


def write_report(report: dict, path: Path) -> None:
    """Write a benchmark's JSON report (strict JSON: a non-finite number is null) and say where."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps(report, indent=2) + "\n")
    print(f"wrote {path}")


def add_run_flags(ap, name: str, style: bool = True, size: bool = True, photos: bool = True) -> None:
    """The flags every user-setting benchmark takes; ``name`` names its run folder and JSON (``style``,
    ``size``, ``photos``: whether it takes --style, --size and --photos)."""
    if photos:
        ap.add_argument("--photos", nargs="+", default=["chelsea", "rocket"], help="names in assets/photos")
    if style:
        ap.add_argument("--style", default="woman_with_a_hat", help="name in assets/styles (held out of training)")
    if size:
        ap.add_argument("--size", type=int, default=256, help="output long side (default: %(default)s)")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / name,
                    help="folder for the runs' images and logs, and any style a benchmark draws (default: runs/%s)"
                    % name)
    ap.add_argument("--reuse", action="store_true",
                    help="read a run's log from --out when it is there (and has this run's settings)")
    ap.add_argument("--json", type=Path, help="the report (default: bench/results/%s.json, the committed one, "
                    "for a run at the default settings; a run at others must name its own)" % name)
    ap.set_defaults(default_report=ROOT / "bench" / "results" / f"{name}.json")


# flags that say where a benchmark's files go, or how it runs them, not what its report holds
NOT_VARIANT = frozenset({"json", "out", "runs", "reuse", "jobs", "default_report"})


def report_path(ap, args, default: Path | None = None, exempt: tuple[str, ...] = ()) -> Path:
    """``--json`` as given, else ``default`` (``args.default_report`` unless given), the committed report,
    but only for a run at the benchmark's default settings: a variant (another --size, --basis, ...)
    would replace that report with its own runs, so it must name its report (a usage error says so).
    ``exempt``: more flags' dests that do not change what the report holds."""
    if args.json is not None:
        return args.json
    default = args.default_report if default is None else default
    changed = ["--" + dest.replace("_", "-") for dest, value in vars(args).items()
               if dest not in NOT_VARIANT and dest not in exempt and value != ap.get_default(dest)]
    if changed:
        shown = default.relative_to(ROOT) if default.is_relative_to(ROOT) else default
        ap.error(f"{', '.join(changed)} make{'s' if len(changed) == 1 else ''} this run a variant of the "
                 f"committed report {shown}: name its own report with --json PATH")
    return default


def check_sizes(ap, flag: str, sizes: list[int]) -> None:
    """Refuse output sizes the engine would refuse, naming ``flag``."""
    from artopt.style.engine import StylizeConfig

    for size in sizes:
        try:
            StylizeConfig(size=size).validated()
        except ValueError as exc:
            ap.error(f"{flag}: {exc}")


def check_run_flags(ap, args, sizes: list[int] | None = None) -> None:
    """Refuse bad values of add_run_flags' flags now, not when the first of many runs fails (``sizes``:
    the output sizes, where the benchmark takes them by another flag than --size)."""
    flag, sizes = ("--size", [args.size]) if sizes is None else ("--sizes", sizes)
    check_sizes(ap, flag, sizes)
    check_names(ap, "--photos", args.photos, ROOT / "assets" / "photos")
    check_photo_sizes(ap, [ROOT / "assets" / "photos" / f"{p}.jpg" for p in args.photos], sizes)
    if getattr(args, "style", None) is not None:
        check_names(ap, "--style", [args.style], ROOT / "assets" / "styles")
    check_output_dir(ap, "--out", args.out)
    args.json = report_path(ap, args)
    check_output_file(ap, "--json", args.json)
    inputs = [("--photos", ROOT / "assets" / "photos" / f"{p}.jpg") for p in args.photos]
    if getattr(args, "style", None) is not None:
        inputs.append(("--style", ROOT / "assets" / "styles" / f"{args.style}.jpg"))
    refuse_same_files(ap, [("--json", args.json)], inputs)
