"""What the train/ and bench/ scripts share: their argument parser; checks, so that a bad flag or an
output path that cannot be written ends in one argparse ``error:`` line (exit 2) before any work
starts, not in a traceback minutes later; strict JSON (a non-finite number is written as null: JSON
has no NaN or Infinity, and strict readers refuse them); and how a meta-training run starts and ends."""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from pathlib import Path


# Set by ``artopt train|evaluate|bench`` while it runs one of these scripts, so that the script's
# usage and errors name the command the user typed ("artopt train neural-art"), not the file.
PROG: str | None = None


def script_parser(description: str | None) -> argparse.ArgumentParser:
    """The argument parser of a script that ``artopt train|evaluate|bench`` runs."""
    return argparse.ArgumentParser(prog=PROG, description=description,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def at_least(minimum: int):
    """An argparse ``type``: an int of at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = "int"
    return parse


positive_int = at_least(1)

# validation_problems seeds a generator with 10 000 + seed, which must fit torch's 64-bit seed.
VAL_SEED_MAX = 2**63 - 1 - 10_000


def val_seed(text: str) -> int:
    """An argparse ``type``: a validation seed (``outer_trainers.validation_problems``), 0 to VAL_SEED_MAX.
    Past it the worker processes each ended in torch's "Overflow when unpacking long long"."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if not 0 <= value <= VAL_SEED_MAX:
        raise argparse.ArgumentTypeError(f"must be a seed from 0 to {VAL_SEED_MAX}, got {value}")
    return value


def check_output_file(ap: argparse.ArgumentParser, flag: str, path: Path | str) -> Path:
    """Refuse, now, an output file that could not be written at the end of the run; its folder is
    made now, as it would be then."""
    path = Path(path)
    if str(path) in ("", "."):
        ap.error(f"{flag} needs a file name")
    if path.is_dir():
        ap.error(f"{flag} {path} is a folder; give a file name")
    _refuse_file_above(ap, flag, path, "its folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        ap.error(f"{flag} {path}: cannot make its folder ({exc.strerror or exc})")
    if not os.access(path.parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        ap.error(f"{flag} {path} is not writable")
    return path


def refuse_same_files(ap: argparse.ArgumentParser, outputs, inputs=()) -> None:
    """One error line, now, when an output ``(flag, path)`` is the same file as an input or as another
    output: a report written over the weights or the photo it measured, or one screenshot over the other."""
    seen: dict[Path, str] = {}
    for flag, path in inputs:
        if path is not None:
            seen.setdefault(Path(path).resolve(), f"the input of {flag}")
    for flag, path in outputs:
        if path is None:
            continue
        key = Path(path).resolve()
        if key in seen:
            ap.error(f"{flag} {path} is also {seen[key]}: it would be overwritten; choose another file")
        seen[key] = f"the output of {flag}"


def _nearest_existing(path: Path) -> Path:
    """``path`` or the nearest folder above it that exists (a dangling link counts): where making the
    missing folders would start."""
    while not path.exists() and not path.is_symlink() and path.parent != path:
        path = path.parent
    return path


def _not_a_folder(path: Path) -> str:
    return f"{path} is a file, not a folder" if path.is_file() else f"{path} is not a folder"


def _refuse_file_above(ap: argparse.ArgumentParser, flag: str, path: Path, folder: str) -> None:
    above = _nearest_existing(path.absolute().parent)
    if not above.is_dir():  # mkdir's own error there is "File exists"
        ap.error(f"{flag} {path}: cannot make {folder} ({_not_a_folder(above)})")


def check_output_dir(ap: argparse.ArgumentParser, flag: str, path: Path | str) -> Path:
    """Refuse, now, an output folder that could not be written; it is made now."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        ap.error(f"{flag} {path} is a file; give a folder (made if missing)")
    _refuse_file_above(ap, flag, path, "the folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        ap.error(f"{flag} {path}: cannot make the folder ({exc.strerror or exc})")
    if not os.access(path, os.W_OK | os.X_OK):
        ap.error(f"{flag} {path} is not writable")
    return path


def check_names(ap: argparse.ArgumentParser, flag: str, names, folder: Path) -> None:
    """Each name must be a ``NAME.jpg`` in ``folder`` (the shipped photos or styles)."""
    known = sorted(p.stem for p in folder.glob("*.jpg"))
    for name in names:
        if not (folder / f"{name}.jpg").is_file():
            ap.error(f"{flag}: no {name}.jpg in {folder} (choose from {', '.join(known)})")


def check_photo_sizes(ap: argparse.ArgumentParser, photos, sizes) -> None:
    """Each photo must be stylizable at each size: a wide one made small is too short for the loss
    network, which the engine refuses only when that run starts."""
    from PIL import Image

    from artopt.style.engine import content_size_problem
    from artopt.style.loss_nets import MIN_SIDE

    for photo in photos:
        with Image.open(photo) as im:
            width, height = im.size
        for size in sizes:
            problem = content_size_problem((height, width), size, MIN_SIDE, "the loss network")
            if problem:
                ap.error(f"{Path(photo).name}: {problem}")


def finite_or_none(value):
    """``value`` with every non-finite float (NaN, inf) in it replaced by None; tuples become lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def dumps(data, **kwargs) -> str:
    """Strict JSON: a non-finite number is written as null."""
    return json.dumps(finite_or_none(data), allow_nan=False, **kwargs)


def folder_problem(path: Path | str) -> str | None:
    """Why files could not be written in folder ``path`` (made when missing), or None.  Nothing is
    made: a refused run leaves nothing behind."""
    existing = _nearest_existing(Path(path))
    if not existing.is_dir():
        return _not_a_folder(existing)
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    return None


def add_run_folder_flags(ap: argparse.ArgumentParser, root: Path) -> None:
    """A meta-training script's --runs (its checkpoints, logs and best networks) and --ship."""
    ap.add_argument("--runs", default=str(root / "runs"))
    # (no default folder: a smoke-sized run replaced the shipped weights and their card)
    ap.add_argument("--ship", default="", help='folder to copy the best weights and their card to when the run '
                    'ends: "weights" replaces the shipped ones (default: none; they stay in --runs/NAME)')


def check_run_flags(ap: argparse.ArgumentParser, name: str, runs: Path | str, ship: str | None) -> None:
    """A meta-training run's --name, --runs and --ship, before it trains: a --ship that is a file
    used to fail only once the training was done."""
    from artopt.outer_trainers.checkpoints import check_run_name

    try:
        check_run_name(name)
    except ValueError as err:
        ap.error(str(err))
    for flag, given, folder in (("--runs", runs, Path(runs) / name), ("--ship", ship, ship)):
        problem = folder and folder_problem(folder)
        if problem:
            ap.error(f"{flag} {given}: {problem}")


# Run settings (``truncated_bptt._run_settings``, checked on resume by ``checkpoints.check_resume``) set by a flag of another name; any other setting is
# set by the flag whose dest it is, if the script has one.
SETTING_DESTS = {"beta1": "moment_betas", "beta2": "moment_betas", "preprocess": "no_preprocess",
                 "task_kwargs": "task_arg", "max_minutes": "minutes"}


def config_error(ap: argparse.ArgumentParser, err: Exception):
    """``ap.error`` for a config's ValueError, its leading setting named as the flag that sets it
    ("minutes must be positive" -> "--minutes must be positive")."""
    message = str(err)
    word = re.match(r"[A-Za-z][\w-]*", message)
    if word:
        found = setting_flags(ap)((word.group().replace("-", "_"),))
        if found:
            message = found[0] + message[word.end():]
    ap.error(message)


def setting_flags(ap: argparse.ArgumentParser):
    """For ``SettingsChangedError.describe``: the flag of ``ap`` that sets a run setting, found from the
    setting's key path up (``("task", "task_kwargs", "labels")`` is set by --task-arg)."""
    flags = {action.dest: max(action.option_strings, key=len)
             for action in ap._actions if action.option_strings}  # argparse has no public list of its flags

    def flag_of(key: tuple[str, ...]):
        for i in range(len(key) - 1, -1, -1):
            flag = flags.get(SETTING_DESTS.get(key[i], key[i]))
            if flag:
                return flag, i
        return None

    return flag_of


def finish_meta_training(ap: argparse.ArgumentParser, train, ship, ship_to: str | None, kept: Path) -> int:
    """Run ``train()`` (the script's meta_train call), print its summary as one JSON line, then
    ``ship(result)`` when the script was given a --ship folder, ``ship_to``.  The script's exit code:
    a checkpoint that cannot be resumed, or a run another process trains, is one error line (2; not a
    bug: other errors keep their tracebacks); Ctrl-C 130, with no traceback after meta_train's hint on resuming; a
    failed ship 1, naming ``kept``, where the trained networks stay."""
    from artopt.outer_trainers.checkpoints import NotShippedError, ResumeError, RunBusyError, SettingsChangedError

    t0 = time.time()
    try:
        res = train()
    except SettingsChangedError as err:  # said with the flags the user gives, not the settings' names
        ap.exit(2, f"{ap.prog}: error: {err.describe(setting_flags(ap))}\n")
    except (ResumeError, RunBusyError) as err:
        ap.exit(2, f"{ap.prog}: error: {err}\n")
    except KeyboardInterrupt:
        return 130
    print(dumps({"best_val": res.best_val, "best_episode": res.best_episode, "episodes": res.episodes_done,
                 "wall_time_s": round(res.wall_time_s, 1), "this_run_s": round(time.time() - t0, 1)}))
    if res.best_episode == 0 and res.episodes_done > 0:  # shipped by the rule, but worth a word
        print(f"{ap.prog}: warning: no validation after the start scored lower than the start's, so the best "
              "networks are the ones the run started from (did meta-training diverge? try a smaller --meta-lr)",
              file=sys.stderr)
    if not ship_to:
        return 0
    try:
        dest = ship(res)
    except NotShippedError as err:  # it says it all
        print(f"{ap.prog}: error: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"{ap.prog}: error: not shipped to {ship_to} ({err}); the trained networks are in {kept} (their card beside "
              "them): rerun the command with a --ship it can write to, to ship them (the finished run does not "
              "train again)", file=sys.stderr)
        return 1
    print(f"shipped {dest}")
    return 0
