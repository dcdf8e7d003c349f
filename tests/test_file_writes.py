import os
import stat
import threading

import pytest

from artopt.file_writes import is_special_file, replace_file


def _write(text):
    return lambda p: p.write_text(text)


def test_a_replaced_file_keeps_its_mode_and_a_new_one_gets_the_umasks(tmp_path):
    old = tmp_path / "old.txt"
    old.write_text("old")
    old.chmod(0o600)
    replace_file(old, _write("new"))
    assert old.read_text() == "new" and stat.S_IMODE(old.stat().st_mode) == 0o600
    plain, new = tmp_path / "plain", tmp_path / "new.txt"
    plain.write_text("x")
    replace_file(new, _write("new"))
    assert stat.S_IMODE(new.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)


def test_a_users_file_with_the_temporary_files_old_name_is_left_alone(tmp_path):
    # The temporary file used to be ".NAME.tmp" (or "NAME.tmp"): a file of the user's by that name was
    # overwritten, then renamed away.
    for name in (".out.png.tmp", "out.png.tmp"):
        (tmp_path / name).write_text("mine")
    replace_file(tmp_path / "out.png", _write("new"))
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {
        ".out.png.tmp": "mine", "out.png.tmp": "mine", "out.png": "new"}


def test_a_failed_write_leaves_the_old_file_and_nothing_else(tmp_path):
    old = tmp_path / "log.json"
    old.write_text("whole")

    def failing(p):
        p.write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        replace_file(old, failing)
    assert [p.name for p in tmp_path.iterdir()] == ["log.json"] and old.read_text() == "whole"


def test_a_link_is_written_through_and_a_pipe_in_place(tmp_path):
    target = tmp_path / "target.txt"
    target.write_text("old")
    (tmp_path / "link.txt").symlink_to(target)
    replace_file(tmp_path / "link.txt", _write("new"))
    assert (tmp_path / "link.txt").is_symlink() and target.read_text() == "new"

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()), daemon=True)
    reader.start()
    assert is_special_file(fifo) and not is_special_file(target) and not is_special_file(tmp_path)
    replace_file(fifo, _write("through the pipe"))
    reader.join(10)
    assert got == ["through the pipe"] and stat.S_ISFIFO(fifo.stat().st_mode)
    assert is_special_file(os.devnull)


def test_the_new_contents_are_on_disk_before_the_rename(tmp_path, monkeypatch):
    # Without the fsync a power cut after the rename could leave an empty file under the name
    # (e.g. a meta-training checkpoint, which saves and resumes runs of an hour).
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: events.append("fsync") or real_fsync(fd))
    monkeypatch.setattr(os, "replace", lambda a, b: events.append("replace") or real_replace(a, b))
    replace_file(tmp_path / "ckpt", _write("state"))
    assert events == ["fsync", "replace"] and (tmp_path / "ckpt").read_text() == "state"


def test_folder_lock_keeps_out_another_holder_until_released(tmp_path):
    """Runs updating one shared results file take turns: a second lock waits while one is held."""
    from artopt.file_writes import folder_lock, lock_file

    path = tmp_path / "runs" / "results.json"

    def can_lock():
        fd = os.open(path.parent, os.O_RDONLY)  # its own open file: flock conflicts even in one process
        try:
            return lock_file(fd, wait=False)
        finally:
            os.close(fd)

    with folder_lock(path):
        assert not can_lock()
    assert can_lock() and not list(path.parent.iterdir())  # no lock file left behind


def test_without_posix_file_locks_stylizing_runs_and_what_locks_says_why(tmp_path):
    """On a system without fcntl (Windows) `import artopt` failed outright, stylizing included: only what
    takes a lock (the training and evaluation runs' shared files) may refuse, and it says why."""
    import subprocess
    import sys
    from pathlib import Path

    assets = Path(__file__).resolve().parents[1] / "assets"
    script = f"""
import sys
sys.modules["fcntl"] = None  # import fcntl now raises ImportError, as on Windows
from pathlib import Path
from artopt.cli import main
from artopt.file_writes import FileLocksUnavailableError, folder_lock
from artopt.outer_trainers.checkpoints import run_lock
out = Path({str(tmp_path)!r})
assert main(["stylize", {str(assets / "photos" / "chelsea.jpg")!r}, {str(assets / "styles" / "starry_night.jpg")!r},
             "-o", str(out / "out.png"), "--size", "48", "--steps", "2", "--loss-net", "efficientnet-lite0",
             "--device", "cpu", "--quiet"]) == 0
for lock in (lambda: folder_lock(out / "shared" / "x.json"), lambda: run_lock(out, "run")):
    try:
        with lock():
            raise SystemExit("locked without fcntl")
    except FileLocksUnavailableError as e:
        assert "Linux or macOS" in str(e), e
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]
    assert (tmp_path / "out.png").is_file()


def test_an_exclusive_write_never_replaces_a_file_that_appeared(tmp_path):
    # --no-clobber was checked when a run started only: another run's file made meanwhile was replaced.
    target = tmp_path / "out.txt"
    replace_file(target, _write("first"), exclusive=True)
    assert target.read_text() == "first"
    with pytest.raises(FileExistsError):
        replace_file(target, _write("second"), exclusive=True)
    assert target.read_text() == "first" and sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]
