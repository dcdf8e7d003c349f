"""Writing a user's file whole or not at all, and as a shell's ``>`` would leave it."""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path
from typing import Callable


def is_special_file(path: str | os.PathLike) -> bool:
    """True for an existing target that is not a regular file or a folder: /dev/null, a FIFO, /dev/stdout,
    a process substitution's /dev/fd/N.  These are written in place: a rename would put a plain file
    where the device or pipe was."""
    try:
        mode = os.stat(path).st_mode  # (follows links: /dev/stdout -> /proc/self/fd/1 -> the pipe)
    except OSError:
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


def replace_file(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Have ``write(p)`` write the file's contents to ``p``, then put them at ``path`` in one rename.

    As a shell's ``>``: through a symbolic link to its target; a replaced file keeps its permissions,
    a new one gets those the umask gives; a special file (``is_special_file``) is written in place.
    On any failure (a full disk, Ctrl-C, a power cut) the temporary file, which has a name of its own
    beside the target, is removed and the old file stays as it was."""
    if is_special_file(path):
        write(Path(path))
        return
    target = Path(os.path.realpath(path))
    try:
        kept_mode = stat.S_IMODE(target.stat().st_mode)
    except FileNotFoundError:
        kept_mode = None
    while True:  # a name no file has: a user's own ".name.tmp" is never overwritten
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # (mode: as the umask gives)
            break
        except FileExistsError:
            continue
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:  # on disk before the rename: after a power cut the name holds the old file or the new one
            os.fsync(fd)
        finally:
            os.close(fd)
        if kept_mode is not None:
            os.chmod(tmp, kept_mode)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
