"""Writing a user's file whole or not at all, and as a shell's ``>`` would leave it; the locks that keep
two processes from updating one shared file at once."""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from pathlib import Path
from typing import Callable

try:
    import fcntl
except ImportError:  # (Windows: stylizing needs no lock, so only what takes one refuses to run)
    fcntl = None


class FileLocksUnavailableError(OSError):
    """This system has no POSIX file locks (fcntl), which the training and evaluation scripts use to
    share their files between runs."""


def lock_file(fd: int, wait: bool = True) -> bool:
    """Take an exclusive lock on the open file or folder ``fd`` (released when it is closed).  With
    ``wait=False``, False where another process holds it."""
    if fcntl is None:
        raise FileLocksUnavailableError(
            "this system has no POSIX file locks (fcntl), which artopt's training and evaluation runs use "
            "to share their files; run them on Linux or macOS (stylizing and serving need no locks)")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextlib.contextmanager
def folder_lock(path: str | os.PathLike):
    """Hold an exclusive lock on the folder of ``path`` (made if missing) while a read-change-write of
    the file runs: runs updating one shared file at once keep each other's changes, and no lock
    file is left behind."""
    folder = Path(path).parent
    folder.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        lock_file(-1)  # (raises the error that says why, before a folder is opened as a file)
    fd = os.open(folder, os.O_RDONLY)
    try:
        lock_file(fd)
        yield
    finally:
        os.close(fd)  # releases the lock


def is_special_file(path: str | os.PathLike) -> bool:
    """True for an existing target that is not a regular file or a folder: /dev/null, a FIFO, /dev/stdout,
    a process substitution's /dev/fd/N.  These are written in place: a rename would put a plain file
    where the device or pipe was."""
    try:
        mode = os.stat(path).st_mode  # (follows links: /dev/stdout -> /proc/self/fd/1 -> the pipe)
    except OSError:
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


def _place_new(tmp: Path, target: Path) -> None:
    """Give ``tmp`` the name ``target`` only where no file has it: a hard link fails on an existing name
    (a rename would replace it)."""
    appeared = FileExistsError(errno.EEXIST, "a file of that name appeared during the run", str(target))
    try:
        os.link(tmp, target)
    except FileExistsError:
        raise appeared from None
    except OSError:  # no hard links on this file system: the check and the rename are two steps
        if target.exists():
            raise appeared from None
        os.replace(tmp, target)
        return
    tmp.unlink()


def replace_file(path: str | os.PathLike, write: Callable[[Path], None], exclusive: bool = False) -> None:
    """Have ``write(p)`` write the file's contents to ``p``, then put them at ``path`` in one rename.

    As a shell's ``>``: through a symbolic link to its target; a replaced file keeps its permissions,
    a new one gets those the umask gives; a special file (``is_special_file``) is written in place.
    On any failure (a full disk, Ctrl-C, a power cut) the temporary file, which has a name of its own
    beside the target, is removed and the old file stays as it was.  ``exclusive``: never replace a file
    (FileExistsError where one appeared meanwhile, e.g. another run's under --no-clobber)."""
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
        if exclusive:
            _place_new(tmp, target)
        else:
            os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
