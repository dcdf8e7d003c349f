"""A meta-training run's files: the lock that keeps one process per run, the resumable checkpoint and
the checks before resuming it, the best networks so far with their card, the JSON log's lines, and
shipping the best networks to weights/.  ``truncated_bptt.meta_train`` writes them; the training
scripts report this module's errors (ResumeError, RunBusyError, NotShippedError) in one line."""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import pickle
import re
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..file_writes import lock_file, replace_file
from ..learned_optimizers.weights import save_learned, write_json_atomic

if TYPE_CHECKING:
    from .truncated_bptt import MetaTrainResult


class RunBusyError(ValueError):
    """``meta_train``'s refusal of a run another process is training."""


@contextlib.contextmanager
def run_lock(out_dir: Path, name: str):
    """Hold an exclusive lock on the run ``name`` in ``out_dir``: two processes training one run wrote
    the same temporary files (one crashed renaming the other's checkpoint) and interleaved its log."""
    fd = os.open(out_dir / f".{name}.lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        if not lock_file(fd, wait=False):
            raise RunBusyError(f"run {name!r} in {out_dir} is being trained by another process; wait for it to "
                               "end, or choose another name") from None
        yield
    finally:
        os.close(fd)  # releases the lock


class ResumeError(ValueError):
    """A run's checkpoint that cannot be resumed: not a readable checkpoint, or one of other settings.
    The training scripts report it in one line (a user's situation, not a bug)."""


class SettingsChangedError(ResumeError):
    """A run resumed with other settings.  ``changes``: (key path, stored value, this run's value) per
    changed setting, the path into the run's settings (``("nets", "default", "output_scale")``; a
    setting one side lacks has the value ``UNSET``), so that a script can name its own flags."""

    def __init__(self, path: Path, changes: list[tuple[tuple[str, ...], object, object]]):
        self.path, self.changes = path, changes
        super().__init__(self.describe())

    def describe(self, flag_of=None) -> str:
        """The message.  ``flag_of(key path)``: None, or (flag, i) where the flag sets the setting at
        ``key[i:]`` (the change is then said with the flag); by default each setting's key path says it."""
        said = []
        for key, old, new in self.changes:
            found = flag_of(key) if flag_of else None
            change = f"{_shown(old)} -> {_shown(new)}"
            if found is None:
                said.append(f"{'.'.join(key)} {change}")
            elif found[1] == len(key) - 1 and found[0] == "--" + key[-1].replace("_", "-"):
                said.append(f"{found[0]} {change}")  # the flag is the setting's name
            else:
                said.append(f"{found[0]} ({'.'.join(key[found[1]:])} {change})")
        said = "; ".join(dict.fromkeys(said))  # a flag that sets every network's copy is said once
        return (f"{self.path} belongs to a run with other settings ({said}); resume it with its own flags (only "
                "--episodes and --minutes may change), or choose another --name")


UNSET = object()  # a setting that one of two compared runs does not have


def _shown(value) -> str:
    return "unset" if value is UNSET else repr(value)


def setting_changes(stored: dict, settings: dict, defaults: dict | None = None,
                     prefix: tuple[str, ...] = ()) -> list:
    """(key path, stored, now) for every setting that differs, nested dicts compared key by key.  A
    setting one side lacks and the other has at its default (``defaults``, the same nesting; None counts
    as every setting's default) is no change: the run was written before the setting existed."""
    changes, defaults = [], defaults or {}
    for key in sorted(set(stored) | set(settings)):
        old, new = stored.get(key, UNSET), settings.get(key, UNSET)
        default = defaults.get(key, UNSET)
        if isinstance(old, dict) and isinstance(new, dict):
            changes += setting_changes(old, new, default if isinstance(default, dict) else None, prefix + (key,))
        elif old != new and not (UNSET in (old, new)
                                 and (None in (old, new) or (default is not UNSET and default in (old, new)))):
            changes.append((prefix + (key,), old, new))
    return changes


def unresumable(path: Path, exc: Exception) -> ResumeError:
    # The first line only: torch.load's refusal goes on for lines about weights_only and filing issues.
    reason = (str(exc).strip().splitlines() or [""])[0]
    return ResumeError(f"{path} cannot be resumed ({type(exc).__name__}: {reason}); delete it to start the run over, "
                       "or choose another --name")


def unloadable(path: Path, exc: Exception) -> ResumeError:
    """Why torch.load could not read the checkpoint at ``path``."""
    # e.g. no permission: the file may be fine.  (torch.load raises OSError(EINVAL) for a file cut
    # in the middle of its zip: that one is damage.)
    if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM, errno.ENOENT, errno.EISDIR, errno.EIO):
        return unresumable(path, exc)
    refused = isinstance(exc, pickle.UnpicklingError) and re.search(r"Unsupported global: GLOBAL \S+", str(exc))
    if refused:  # a real torch file, holding objects a weights-only load will not create
        return ResumeError(f"{path} cannot be resumed (UnpicklingError: a weights-only load refuses it: "
                           f"{refused.group(0)}); delete it to start the run over, or choose another --name")
    # Anything else is not what torch.save wrote: torch's words for garbage bytes are its advice on
    # weights_only, as if the file were unsafe rather than damaged.
    return ResumeError(f"{path} cannot be resumed: it is not a readable checkpoint (damaged, truncated or another kind "
                       "of file); delete it to start the run over, or choose another --name")


def check_run_name(name: str) -> None:
    """A run's name names its files (and, in the scripts, its folder): a plain file name, no path."""
    if not isinstance(name, str) or name in ("", ".", "..") or any(sep and sep in name
                                                                  for sep in ("/", os.sep, os.altsep)):
        raise ValueError(f"--name must be a plain file name (not empty, '.' or '..', no '/'), got {name!r}")


def check_resume(path: Path, stored_json: str | None, settings: dict, defaults: dict) -> None:
    """Refuse (SettingsChangedError) to resume the checkpoint at ``path``, whose settings are
    ``stored_json``, with other ``settings`` (``defaults``: the default settings, the same nesting)."""
    if stored_json is None:  # written before settings were recorded
        return
    stored = json.loads(stored_json)
    if "task" not in stored:  # written before the task's settings were recorded: only the rest is known
        settings = {k: v for k, v in settings.items() if k != "task"}
    changes = setting_changes(stored, settings, defaults)
    if changes:
        raise SettingsChangedError(path, changes)


def log_line(event: dict) -> str:
    """One line of the JSON log, strict JSON: a diverged loss (NaN, inf) is logged as null."""
    return json.dumps({k: None if isinstance(v, float) and not math.isfinite(v) else v
                       for k, v in event.items()}) + "\n"


def tuple_state(state):
    """random.Random state round-tripped through JSON (lists back to tuples)."""
    return tuple(tuple_state(s) if isinstance(s, list) else s for s in state)


def save_checkpoint(path, nets, meta_opt, gen, rng, episode, best_val, best_episode, history, elapsed,
                     averaged=None, settings: dict | None = None, last_validated: int | None = None):
    ck = {
        "nets": nets.state_dict(),
        "meta_opt": meta_opt.state_dict(),
        "train_gen": gen.get_state(),
        "py_rng": json.dumps(rng.getstate()),
        "episode": episode,
        "best_val": best_val,
        "best_episode": best_episode,
        "history": json.dumps(history),
        "elapsed": elapsed,
    }
    if last_validated is not None:
        ck["last_validated"] = last_validated
    if averaged is not None:
        ck["averaged"] = averaged.state_dict()
    if settings is not None:
        ck["settings"] = json.dumps(settings)
    replace_file(path, lambda tmp: torch.save(ck, tmp))


def save_best(out_dir, name, nets, card, config, best_val, best_episode, elapsed):
    full_card = dict(card or {})
    best = best_val if math.isfinite(best_val) else None  # strict JSON (no validation was finite yet)
    full_card.update({
        "meta_training": {**asdict(config), f"best_val_{config.val_criterion}_loss": best, "best_episode": best_episode,
                          "wall_time_s_at_best": round(elapsed, 1)},
        "nets": {k: v.config.to_dict() for k, v in nets.items()},
    })
    save_learned(Path(out_dir) / f"{name}.safetensors", dict(nets.items()), full_card)


class NotShippedError(ValueError):
    """``ship_best``'s refusal of a run whose networks are not worth shipping."""


def ship_best(run_dir: str | os.PathLike, name: str, ship_dir: str | os.PathLike, result: "MetaTrainResult",
              prior_seconds: float = 0.0) -> Path:
    """Copy a run's best networks and card to ``ship_dir`` (e.g. weights/), recording total wall time.
    Refuses (NotShippedError, a ValueError) a run none of whose validations scored a finite loss: its
    "best" networks are the ones it started from, and would replace what ``ship_dir`` holds."""
    run_dir, ship_dir = Path(run_dir), Path(ship_dir)
    if not math.isfinite(result.best_val):
        raise NotShippedError("not shipped: no validation of this run scored a finite loss (a validation problem "
                              "diverged every time), so its best networks are the ones it started from; they stay in "
                              f"{run_dir / (name + '.safetensors')}")
    ship_dir.mkdir(parents=True, exist_ok=True)
    dest = ship_dir / f"{name}.safetensors"
    best = (run_dir / f"{name}.safetensors").read_bytes()
    card = json.loads((run_dir / f"{name}.json").read_text(encoding="utf-8"))
    shipped_card = dest.with_suffix(".json")
    if dest.is_file() and dest.read_bytes() == best and shipped_card.is_file():
        # The same networks again (e.g. a finished run's command rerun): what was added to their card
        # since (evaluation tables, calibration) still describes them, so it stays.
        try:
            earlier = json.loads(shipped_card.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            earlier = None
        if isinstance(earlier, dict):
            card = {**earlier, **card}
    replace_file(dest, lambda tmp: tmp.write_bytes(best))
    card["meta_training"]["total_wall_time_s"] = round(result.wall_time_s + prior_seconds, 1)
    card["meta_training"]["episodes_done"] = result.episodes_done
    write_json_atomic(ship_dir / f"{name}.json", card)
    return dest
