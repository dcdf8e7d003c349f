"""The ``artopt`` command line: ``artopt stylize``, ``artopt serve``, and ``artopt train`` /
``evaluate`` / ``bench``, which run the scripts of a source checkout (train/, bench/).

The stylize flags are made from the fields of :class:`artopt.style.engine.StylizeConfig`, so the
library's defaults and the command line's cannot drift apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

from artopt.file_writes import is_special_file

STYLIZE_EXAMPLE = """\
example:
  artopt stylize assets/photos/chelsea.jpg assets/styles/starry_night.jpg -o cat.png
  artopt stylize photo.jpg a.jpg b.jpg --style-weights 0.7 0.3 --size 1024 --keep-colors -o out.jpg \\
      --log-json out.json
Press Ctrl-C once to stop early and still save the current image.
"""


# Kept equal to artopt.web.DEFAULT_MAX_UPLOAD_MB (tested) without importing gradio for every command.
DEFAULT_MAX_UPLOAD_MB = 25.0

# `artopt bench` targets with a script of their own; the rest are bench/stylize.py's TARGETS.
OTHER_BENCH_SCRIPTS = {"web": "web_timing.py", "task-step-time": "task_step_time.py", "loss-weights": "loss_weights.py",
                       "long-runs": "long_runs.py", "style-sweep": "style_sweep.py"}


class CLIError(Exception):
    """A user error reported as one line."""


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    from artopt.style.engine import StylizeConfig

    for f in dataclasses.fields(StylizeConfig):
        meta = dict(f.metadata)
        help_text = meta.get("help", "").replace("%", "%%")  # (argparse formats help with %)
        kind = str(f.type).replace(" ", "")
        kwargs: dict = {"dest": f.name, "default": f.default}
        if kind == "bool" and not f.default:
            kwargs.update(action="store_true", help=help_text)
        elif kind in ("bool", "bool|None"):  # on by default (--no-keep-best), or automatic (--pyramid/--no-pyramid)
            kwargs.update(action=argparse.BooleanOptionalAction, help=help_text)
        elif kind.startswith("list[float]"):
            kwargs.update(type=float, nargs="+", metavar="W", help=help_text)
        else:
            base = kind.split("|")[0]
            kwargs.update(type={"int": int, "float": float, "str": str}[base], help=help_text + ("" if f.default is None else " (default: %(default)s)"))
            if "choices" in meta:
                kwargs["choices"] = meta["choices"]
            if "choices" in meta or meta.get("lowercase"):
                kwargs["type"] = str.lower  # the engine takes any case (--optimizer LSTM)
        parser.add_argument(_flag(f.name), **kwargs)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (0 < value < math.inf):  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def _build_parser() -> argparse.ArgumentParser:
    from artopt import __version__

    parser = argparse.ArgumentParser(prog="artopt", description="Neural style transfer driven by a learned optimizer.")
    parser.add_argument("--version", action="version", version=f"artopt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    st = sub.add_parser("stylize", help="stylize a photo with one or more style images",
                        description="Repaint CONTENT in the style of STYLE (several styles are blended).",
                        epilog=STYLIZE_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    st.add_argument("content", metavar="CONTENT", help="content photo")
    st.add_argument("styles", metavar="STYLE", nargs="+", help="style image(s)")
    st.add_argument("-o", "--output", required=True, metavar="OUT",
                    help="output image (.png, .jpg or .jpeg); an existing file is replaced unless --no-clobber")
    _add_config_flags(st)
    st.add_argument("--save-every", type=int, default=0, metavar="N",
                    help="also save the image every N steps as OUT_stepN.ext (default: off)")
    st.add_argument("--log-json", metavar="FILE",
                    help="write per-step losses (of the image before each step's update; for lbfgs, of its line "
                    "search's last point, one record per iteration), the output's own (final_losses) and wall "
                    "time, plus the settings, to FILE ('-': standard output)")
    st.add_argument("--no-clobber", action="store_true",
                    help="refuse to run if the output, the --log-json file or an OUT_stepN.ext already exists")
    st.add_argument("--quiet", action="store_true", help="no progress bar or notices")
    st.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                    help="CPU threads (default: the cores other processes leave free when the run starts, at least 1; "
                         "OMP_NUM_THREADS, when set, is left to torch)")
    st.set_defaults(handler=_stylize, subparser=st)

    sv = sub.add_parser("serve", help="run the web app",
                        description="Serve the web app: upload a photo and a style, watch it being painted, "
                                    "download the PNG.")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    sv.add_argument("--port", type=int, default=7860, help="port (default: %(default)s)")
    sv.add_argument("--share", action="store_true", help="create a public Gradio share link")
    sv.add_argument("--concurrency", type=int, default=1, help="stylizations run at once (default: %(default)s)")
    sv.add_argument("--max-upload-mb", type=_positive_float, default=DEFAULT_MAX_UPLOAD_MB,
                    help="largest upload accepted, in MB (default: %(default)s)")
    sv.add_argument("--max-size", type=int, default=None,
                    help="largest output long side allowed, 256-4096 (default: 4096 on a CUDA GPU, 2048 otherwise)")
    sv.add_argument("--device", default="auto", type=str.lower,
                    help="where stylizations run: auto, cpu, cuda, cuda:N (the Nth GPU) or mps (default: %(default)s: "
                         "a GPU when there is one)")
    sv.add_argument("--queue-size", type=int, default=32,
                    help="requests that may wait for their turn (default: %(default)s)")
    sv.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                    help="CPU threads of a stylization (default: the cores other processes leave free when it starts, "
                         "at least 1; OMP_NUM_THREADS, when set, is left to torch)")
    sv.set_defaults(handler=_serve, subparser=sv)

    for name, help_text, target_help in (
            ("train", "meta-train a learned optimizer (train/meta_train.py, train/neural_art.py)",
             "what to meta-train on: neural-art, or a suite of train/meta_train.py (quadratic, mnist, cifar10, ...)"),
            ("evaluate", "learned optimizer vs tuned baselines (train/evaluate.py, train/eval_neural_art.py)",
             "what to evaluate: neural-art (then its setting: 64, 128, 256, 384, 512, summary, grid), or a suite of "
             "train/evaluate.py (quadratic, mnist, cifar10, ...)"),
            ("bench", "engine benchmarks (bench/stylize.py, "
                      + ", ".join(f"bench/{s}" for s in OTHER_BENCH_SCRIPTS.values()) + ")",
             "which benchmark: quality, speed, memory, ... (bench/stylize.py), " + ", ".join(OTHER_BENCH_SCRIPTS))):
        sp = sub.add_parser(name, help=help_text, add_help=False,
                            description=f"{help_text}; every argument goes to the script: "
                                        f"'artopt {name} TARGET --help' shows its flags.")
        sp.add_argument("target", metavar="TARGET", nargs="?", help=target_help)
        sp.add_argument("script_args", nargs=argparse.REMAINDER, metavar="ARGS", help="the script's arguments")
        sp.add_argument("-h", "--help", action="store_true", dest="wants_help",
                        help="this help; after TARGET, the script's own help")
        sp.set_defaults(handler=_run_script, script_kind=name, subparser=sp)
    return parser


def _source_root() -> Path:
    return Path(__file__).resolve().parents[1]


def script_for(kind: str, target: str | None) -> tuple[Path, list[str]]:
    """The checkout script behind ``artopt train|evaluate|bench TARGET`` and its leading arguments."""
    root = _source_root()
    if kind == "train":
        if target == "neural-art":
            return root / "train" / "neural_art.py", []
        return root / "train" / "meta_train.py", [target] if target else []
    if kind == "evaluate":
        if target == "neural-art":
            return root / "train" / "eval_neural_art.py", []
        return root / "train" / "evaluate.py", [target] if target else []
    if target in OTHER_BENCH_SCRIPTS:
        return root / "bench" / OTHER_BENCH_SCRIPTS[target], []
    return root / "bench" / "stylize.py", [target] if target else []


def bench_targets() -> list[str]:
    """Every ``artopt bench`` target: bench/stylize.py's own, then those with a script of their own."""
    import runpy

    script = _source_root() / "bench" / "stylize.py"
    return [*runpy.run_path(str(script))["TARGETS"], *OTHER_BENCH_SCRIPTS] if script.is_file() else []


def _run_script(args: argparse.Namespace) -> int:
    import runpy

    from artopt import script_args

    if args.target is None:
        if args.wants_help:
            args.subparser.print_help()
            return 0
        # as argparse says a missing argument: usage and one error line on stderr (it was the help on stdout)
        args.subparser.error(f"a TARGET is needed: {next(a.help for a in args.subparser._actions if a.dest == 'target')}; "
                             f"'artopt {args.script_kind} --help' says more")
    script, lead = script_for(args.script_kind, args.target)
    if args.script_kind == "bench" and script.is_file() and args.target not in bench_targets():
        # bench/stylize.py's own error would not name the targets with a script of their own
        args.subparser.error(f"argument TARGET: invalid choice: {args.target!r} "
                             f"(choose from {', '.join(bench_targets())})")
    if not script.is_file():
        raise CLIError(f"'artopt {args.script_kind}' runs {script.relative_to(_source_root())} from a source "
                       f"checkout of artopt, and {script} does not exist; clone the repository and install it "
                       f"with 'pip install -e .'")
    rest = list(args.script_args) + (["--help"] if args.wants_help else [])
    old_argv = sys.argv
    sys.argv = [str(script), *lead, *rest]
    # the script's usage and errors then name what the user typed; TARGET is the script's own
    # positional where it has one (lead), else part of the command
    script_args.PROG = f"artopt {args.script_kind}" + ("" if lead else f" {args.target}")
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as done:
        code = done.code
        if code is None or isinstance(code, int):
            return code or 0
        print(f"artopt: error: {code}", file=sys.stderr)  # sys.exit("message"): Python prints it, so do we
        return 1
    finally:
        sys.argv = old_argv
        script_args.PROG = None
    return 0


def _serve(args: argparse.Namespace) -> int:
    try:  # Gradio would report an unresolvable host as "Cannot find empty port"
        socket.getaddrinfo(args.host, None)
    except (socket.gaierror, UnicodeError) as exc:
        raise CLIError(f"--host {args.host}: cannot resolve this name or address "
                       f"({getattr(exc, 'strerror', None) or exc})") from None
    try:
        from artopt import web  # lazy: gradio is an optional dependency
    except ImportError as exc:
        if exc.name is None or exc.name.split(".")[0] not in ("gradio", "gradio_client"):
            raise
        raise CLIError("the web app needs Gradio, which is not installed: pip install 'artopt[web]' "
                       "(from a checkout: pip install -e '.[web]')") from None

    try:
        web.serve(args.host, args.port, share=args.share, concurrency=args.concurrency,
                  max_upload_mb=args.max_upload_mb, max_size=args.max_size, device=args.device,
                  queue_size=args.queue_size, threads=args.threads)
    except ValueError as exc:
        raise CLIError(_with_flag_names(str(exc), ["concurrency", "max_upload_mb", "max_size", "port",
                                                   "queue_size", "device"])) from None
    except OSError as exc:
        if "Cannot find empty port" not in str(exc):  # Gradio's words for a port already taken
            raise
        raise CLIError(f"--port {args.port}: the port is in use on {args.host} (another server?); "
                       "choose another with --port") from None
    return 0


def _check_output_path(path: Path, no_clobber: bool = False) -> None:
    from artopt.style.images import SAVE_FORMATS

    if str(path) in ("", "."):
        raise CLIError("-o needs a file name (ending in .png, .jpg or .jpeg)")
    if path.suffix == "" and path.name.lower() in SAVE_FORMATS:  # "dir/.png": a hidden name, no extension
        raise CLIError(f"{path}: give the output a name before its extension, e.g. {path.with_name('out' + path.name)}")
    if path.suffix.lower() not in SAVE_FORMATS:
        raise CLIError(f"{path}: output must end in .png, .jpg or .jpeg")
    _check_writable_file(path, no_clobber)


def _check_writable_file(path: Path, no_clobber: bool = False) -> None:
    if is_special_file(path):  # /dev/null, a pipe, /dev/stdout: written in place, as a shell would
        if not os.access(path, os.W_OK):
            raise CLIError(f"{path} is not writable")
        return
    if path.is_dir():
        raise CLIError(f"{path} is a folder; give a file name")
    if path.parent.exists() and not path.parent.is_dir():
        raise CLIError(f"{path}: {path.parent} is a file, not a folder")
    if not path.parent.is_dir():
        raise CLIError(f"{path}: folder {path.parent} does not exist")
    folder = Path(os.path.realpath(path)).parent  # a symbolic link is written through, in its target's folder
    if not os.access(folder, os.W_OK | os.X_OK):  # else it fails only after the whole run
        raise CLIError(f"{path}: folder {folder} is not writable")
    try:  # os.access asks the permission bits (all yes to root); a mount or a security module may still refuse
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise CLIError(f"{path}: folder {folder} is not writable ({exc.strerror or exc})") from None
    if no_clobber and path.exists():
        raise CLIError(f"{path} exists and --no-clobber is given; remove it or choose another name")
    if path.exists() and not os.access(path, os.W_OK):  # (the atomic save would replace it all the same)
        raise CLIError(f"{path} is read-only; make it writable or choose another name")


def _save_elsewhere(text: str, path: Path) -> str | None:
    """``text`` in a new temporary file named after ``path``; its path, or None if that failed too."""
    fd, fallback = None, None
    try:
        fd, fallback = tempfile.mkstemp(prefix=f"artopt-{path.stem}-", suffix=path.suffix)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        return fallback
    except OSError:
        if fallback is not None:
            Path(fallback).unlink(missing_ok=True)
        return None


def _step_image_pattern(output: Path) -> re.Pattern:
    """Names of the OUT_stepN.ext intermediates --save-every writes beside ``output``."""
    # (a step number has no leading zero: OUT_step02 is never written, so a photo of that name is safe)
    return re.compile(re.escape(output.stem) + r"_step[1-9]\d*" + re.escape(output.suffix) + "$")


def _same_file(a: Path, b: Path) -> bool:
    if is_special_file(a) and is_special_file(b):  # e.g. -o /dev/null --log-json /dev/null
        return False
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and a.samefile(b)  # hard links
    except OSError:
        return False


def _refuse_overwriting(outputs: dict[str, Path], inputs: dict[str, Path], step_images: Path | None) -> None:
    """Nothing the run writes may replace one of its inputs, or another of its outputs.
    ``step_images``: the output whose OUT_stepN.ext intermediates --save-every writes, if any."""
    names = list(outputs.items())
    for i, (out_name, out) in enumerate(names):
        for in_name, src in inputs.items():
            if _same_file(out, src):
                raise CLIError(f"{out_name} {out} is the {in_name}; write elsewhere so the {in_name} is not overwritten")
        for other_name, other in names[i + 1:]:
            if _same_file(out, other):
                raise CLIError(f"{out_name} and {other_name} are the same file ({out}); give them different names")
    if step_images is not None:
        # They are written as OUT_stepN.ext in the output's folder as typed (not a symbolic link's
        # target folder), through any link or hard link already there under such a name.
        pattern, folder = _step_image_pattern(step_images), step_images.parent
        existing = [e for e in folder.iterdir() if pattern.match(e.name)] if folder.is_dir() else []
        for name, path in [*inputs.items(), *outputs.items()]:
            target = path.resolve()
            # (the log's clash is its name's to change; the output's name sets the step images')
            hint = "choose another --log-json name" if name == "--log-json file" else "choose another output name"
            if pattern.match(target.name) and target.parent == folder.resolve():
                raise CLIError(f"--save-every would write {target.name} over the {name}; {hint}")
            for entry in existing:
                if _same_file(entry, path):
                    raise CLIError(f"--save-every would write {entry.name} over the {name}; {hint}")


def _finite_or_none(value):
    """JSON has no NaN or Infinity: a diverged run logs null for its non-finite losses."""
    return value if not isinstance(value, float) or math.isfinite(value) else None


def _with_flag_names(message: str, fields: list[str], aliases: dict[str, str] | None = None) -> str:
    """The library names its settings ("tv weight must be ...", "max_size must be ..."); the user
    typed flags (--tv-weight, --max-size).  ``fields``: the settings behind flags; ``aliases``:
    other names for them in messages."""
    names = {**(aliases or {}), **{spelling: f for f in fields for spelling in (f.replace("_", " "), f)}}
    for name, field_name in names.items():
        if message.startswith(name + " "):
            return _flag(field_name) + message[len(name):]
    return message


def _stylize(args: argparse.Namespace) -> int:
    from artopt.style.engine import (StylizeConfig, content_size_problem, cpu_memory_problem, resolve_device,
                                     resolve_lr, resolve_optimizer, stylize)
    from artopt.style.images import ImageError, check_min_size, load_image, save_image
    from artopt.learned_optimizers.weights import write_text_atomic
    from artopt.learned_optimizers.shipped import NEURAL_ART, weights_path
    from artopt.style.loss_nets import LossNetError, build_loss_net, resolve_loss_net_name, vgg19_weights_file

    try:
        config = StylizeConfig(**{f.name: getattr(args, f.name)
                                  for f in dataclasses.fields(StylizeConfig)}).validated()
    except ValueError as exc:
        raise CLIError(_with_flag_names(str(exc), [f.name for f in dataclasses.fields(StylizeConfig)],
                                        {"learning rate": "lr"})) from None
    if config.style_weights is not None and len(config.style_weights) != len(args.styles):
        raise CLIError(f"--style-weights has {len(config.style_weights)} value(s) for {len(args.styles)} style image(s)")
    output = Path(args.output)
    _check_output_path(output, args.no_clobber)  # the --save-every images go beside it: checked too
    if args.log_json is not None and not args.log_json.strip():
        raise CLIError("--log-json needs a file name")
    # "-": standard output, as the convention goes (it made a file named "-")
    log_to_stdout = args.log_json == "-"
    log_path = Path(args.log_json) if args.log_json is not None and not log_to_stdout else None
    if log_path is not None:
        _check_writable_file(log_path, args.no_clobber)
    if args.save_every < 0:
        raise CLIError("--save-every must be 0 (off) or a positive number of steps")
    if args.no_clobber and args.save_every:
        pattern = _step_image_pattern(output)
        for existing in sorted(output.parent.iterdir()):
            if pattern.match(existing.name):
                raise CLIError(f"--save-every would replace {existing} and --no-clobber is given; "
                               f"remove it or choose another output name")
    # Also the files the run reads without a flag naming them: the shipped optimizer and its card,
    # $ARTOPT_VGG_WEIGHTS or torchvision's cached VGG-19.
    lstm_weights = Path(config.lstm_weights) if config.lstm_weights else weights_path(NEURAL_ART)
    try:
        vgg_file = vgg19_weights_file(config.vgg_weights)
    except LossNetError:  # said where the loss network is built, if this run uses VGG-19
        vgg_file = None
    inputs = {"content image": Path(args.content),
              **{(f"style image {i + 1}" if len(args.styles) > 1 else "style image"): Path(p)
                 for i, p in enumerate(args.styles)},
              "lstm weights": lstm_weights, "lstm weights' card": lstm_weights.with_suffix(".json"),
              **({"vgg weights": vgg_file} if vgg_file is not None else {})}
    outputs = {"output": output, **({"--log-json file": log_path} if log_path is not None else {})}
    _refuse_overwriting(outputs, inputs, output if args.save_every else None)
    optimizer = resolve_optimizer(config.optimizer, config.size, config.pyramid)
    if config.lstm_weights and optimizer != "lstm":  # warned even with --quiet: the user asked for them
        print(f"artopt: warning: --lstm-weights is ignored: it is for --optimizer lstm, "
              f"and this run uses {optimizer}", file=sys.stderr)
    if optimizer == "lstm" and config.lr is not None:
        # An Adam-sized rate (0.01) given to the LSTM shrinks its meta-trained steps 100-fold.
        card_lr = resolve_lr("lstm", None, config.lstm_weights)
        ratio = config.lr / card_lr
        if not 0.25 <= ratio <= 4:
            size = f"{1 / ratio:.3g}x smaller" if ratio < 1 else f"{ratio:.3g}x larger"
            print(f"artopt: warning: for --optimizer lstm, --lr multiplies the learned step (its weights' card: "
                  f"{card_lr:g}); {config.lr:g} makes every step {size} than that", file=sys.stderr)

    net_name = resolve_loss_net_name(config.loss_net, config.vgg_weights)
    if net_name != "vgg19":  # e.g. --vgg-pooling avg on the offline default, which has no VGG pooling to change
        for flag, given in (("--vgg-pooling", config.vgg_pooling != "max"), ("--vgg-weights", config.vgg_weights)):
            if given:
                print(f"artopt: warning: {flag} is ignored: it is for the vgg19 loss network, and this run uses "
                      f"{net_name}", file=sys.stderr)
    device = resolve_device(config.device)
    # Decoded before the loss network is built (seconds): a missing or damaged file is said at once.
    content = load_image(args.content, min_size=1)
    styles = [load_image(s, min_size=1) for s in args.styles]
    min_size = build_loss_net(net_name, device=device, vgg_weights=config.vgg_weights,
                              pooling=config.vgg_pooling, download_progress=not args.quiet).min_size
    if net_name == "vgg19" and vgg_file is None:  # downloaded just now: the log names the cached file
        vgg_file = vgg19_weights_file(config.vgg_weights)
    for path, image in zip([args.content, *args.styles], [content, *styles]):
        check_min_size(image, min_size, str(path))
    # The engine refuses this too, but only once it runs: after the progress bar has been drawn.
    too_narrow = content_size_problem((content.height, content.width), config.size, min_size, net_name)
    if too_narrow:
        raise CLIError(too_narrow)
    if device.type == "cpu":  # past the machine's RAM the kernel would kill the run without a word
        too_big, tight = cpu_memory_problem((content.height, content.width), config.size, "--size",
                                            style_hws=[(s.height, s.width) for s in styles],
                                            style_scale=config.style_scale)
        if too_big:
            raise CLIError(too_big)
        if tight:
            print(f"artopt: warning: {tight}", file=sys.stderr)

    # First Ctrl-C: finish the current step and save; a second one aborts.
    stop_requested = False

    def on_sigint(signum, frame):
        nonlocal stop_requested
        if stop_requested:
            raise KeyboardInterrupt
        stop_requested = True
        print("\nstopping after this step (Ctrl-C again to abort without saving)", file=sys.stderr)

    in_main_thread = threading.current_thread() is threading.main_thread()  # signals need it
    previous_handler = signal.signal(signal.SIGINT, on_sigint) if in_main_thread else None
    records: list[dict] = []
    final_losses: dict | None = None  # of the image the run ends with (StepInfo.final_losses)
    bar = None
    if not args.quiet:
        from tqdm import tqdm

        bar = tqdm(total=config.steps, unit="step", file=sys.stderr, dynamic_ncols=True)

    kept_after: int | None = None  # keep_best: the steps that made the returned image, when not all of them

    def on_step(info) -> None:
        nonlocal final_losses, kept_after
        if info.final_losses is not None:
            final_losses = {k: _finite_or_none(info.final_losses.get(k)) for k in ("total", "content", "style", "tv")}
            kept_after = info.kept_after
        if records and info.step == records[-1]["step"]:
            return  # the engine's last report after a stop between steps: no new step to log
        records.append({"step": info.step, "scale": info.scale_index, "height": info.size[0], "width": info.size[1],
                        **{k: _finite_or_none(info.losses.get(k)) for k in ("total", "content", "style", "tv")},
                        "wall_time": round(info.elapsed, 4), "loss_net_time": round(info.loss_seconds, 4),
                        **({"step_scale": info.step_scale} if info.step_scale is not None else {}),
                        **({"notice": info.notice} if info.notice else {})})
        if bar is not None:
            if info.step > bar.total:  # L-BFGS's last line search may end past the budget
                bar.total = info.step
            bar.update(info.step - bar.n)
            bar.set_postfix(loss=f"{info.losses.get('total', float('nan')):.4g}",
                            scale=f"{info.scale_index + 1}/{info.n_scales}")
            if info.notice:
                bar.write(info.notice, file=sys.stderr)  # (with every other message: stdout stays empty)
        previous = records[-2]["step"] if len(records) > 1 else 0
        # every --save-every steps, or the first step past a multiple (an L-BFGS step counts several)
        # (not the last step's when keep_best returns an earlier image: OUT_stepN would hold that one)
        if args.save_every and info.image is not None and info.kept_after is None \
                and info.step // args.save_every > previous // args.save_every:
            try:
                save_image(info.image, output.with_name(f"{output.stem}_step{info.step}{output.suffix}"),
                           exclusive=args.no_clobber)
            except ImageError as exc:  # e.g. a full disk: the run, and its final image, go on
                (bar.write if bar is not None else print)(f"artopt: warning: {exc}", file=sys.stderr)

    threads = None  # CPU threads, chosen now: from what other processes leave free unless asked
    if device.type == "cpu":
        from artopt.cpu import set_threads

        def say(text: str) -> None:
            (bar.write if bar is not None else print)(f"artopt: {text}", file=sys.stderr)

        threads = set_threads(args.threads, None if args.quiet else say)
    start = time.perf_counter()
    try:
        result = stylize(content, styles, config, callback=on_step, image_every=args.save_every,
                         should_stop=lambda: stop_requested)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGINT, previous_handler)
        if bar is not None:
            bar.close()
    failed_save = None
    try:
        # --no-clobber: also a file that appeared during the run (another run's) is not replaced
        save_image(result, output, exclusive=args.no_clobber)
    except ImageError as exc:
        # The run's work is not thrown away: the image goes to a temporary file, which the error names.
        failed_save, fallback = exc, None
        try:
            fd, fallback = tempfile.mkstemp(prefix=f"artopt-{output.stem}-", suffix=output.suffix)
            os.close(fd)
            output = save_image(result, fallback)
        except (OSError, ImageError):  # nowhere to write: the error is the user's file's
            if fallback is not None:
                Path(fallback).unlink(missing_ok=True)
            raise exc from None
    if log_path is not None or log_to_stdout:
        settings = dataclasses.asdict(config)
        settings.update(resolved_optimizer=optimizer,
                        resolved_lr=resolve_lr(optimizer, config.lr, config.lstm_weights, config.basis,
                                               result.shape[-2] * result.shape[-1]),  # sgd, nag: the output size's
                        resolved_loss_net=net_name, resolved_device=str(device), cpu_threads=threads,
                        resolved_vgg_weights=str(vgg_file) if net_name == "vgg19" and vgg_file else None,
                        content_path=args.content,
                        style_paths=args.styles, output_path=str(output))
        log = {"settings": settings, "seconds": round(time.perf_counter() - start, 3),
               "stopped_early": stop_requested, "final_losses": final_losses, "kept_after_step": kept_after,
               "backoff_steps": [r["step"] for r in records if "step_scale" in r], "steps": records}
        text = json.dumps(log, indent=1, allow_nan=False)
        # Whole or not at all, as the image: on a full disk, writing in place left half a JSON file
        # where the last run's log had been.
        try:
            if log_to_stdout:
                print(text, flush=True)  # (every message goes to stderr: stdout holds the log alone)
            else:
                write_text_atomic(log_path, text, exclusive=args.no_clobber)
        except OSError as exc:
            kept = _save_elsewhere(text, log_path)
            raise CLIError(f"--log-json {log_path}: cannot write it ({exc.strerror or exc})"
                           + (f"; the log was saved to {kept}" if kept else "")
                           + f"; the image was saved to {output}") from None
    if failed_save is not None:
        raise CLIError(f"{failed_save}; the image was saved to {output} instead")
    if not args.quiet:
        print(f"wrote {output}" + (" (stopped early)" if stop_requested else ""), file=sys.stderr)
    # Saved, but cut short: 130 as for any Ctrl-C (0 let `artopt stylize ... && publish` publish it)
    return 130 if stop_requested else 0


def main(argv: list[str] | None = None) -> int:
    try:  # building the parser imports torch: a Ctrl-C in those first seconds printed a traceback
        parser = _build_parser()
        args, unknown = parser.parse_known_args(argv)
        if unknown:  # argparse would name them under the top-level usage; the command's own is more use
            where = (f" (a script's flags go after TARGET: artopt {args.script_kind} TARGET FLAGS)"
                     if getattr(args, "script_kind", None) else "")
            getattr(args, "subparser", parser).error(f"unrecognized arguments: {' '.join(unknown)}{where}")
        from artopt.style.images import ImageError
        from artopt.style.loss_nets import LossNetError
    except KeyboardInterrupt:
        print("artopt: aborted", file=sys.stderr)
        return 130

    try:
        return args.handler(args)
    except (CLIError, ImageError, LossNetError, ValueError) as exc:
        print(f"artopt: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("artopt: aborted", file=sys.stderr)
        return 130
    except (MemoryError, RuntimeError) as exc:
        # torch.OutOfMemoryError (a GPU) and the CPU allocator's RuntimeError: one line, not a traceback
        if not (isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError"
                or "can't allocate memory" in str(exc)):
            raise
        print(f"artopt: error: out of memory at this size ({str(exc).splitlines()[0] if str(exc) else 'MemoryError'}); "
              "choose a smaller --size", file=sys.stderr)
        return 1
    except OSError as exc:
        # e.g. a photo in a folder this user may not enter: Path.exists() raises before our own checks
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"artopt: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2 if isinstance(exc, PermissionError) else 1


if __name__ == "__main__":
    sys.exit(main())
