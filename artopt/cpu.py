"""How many CPU threads a stylization should use, given what else the machine is doing.

torch splits each op over as many threads as there are cores, and every op ends when its slowest
thread does.  When other processes keep some of the cores busy, a thread that is not running holds
up the rest at every op, and the learned optimizer's update is thousands of small ops per step.  On
this project's 2-core machines (``bench/threads_under_load.py``, bench/results/threads_under_load.json),
30 LSTM steps at 256 px took 3.1 s on 2 threads and 4.4 s on 1 with the machine to itself, but 61.8 s
against 9.8 s beside two busy processes.  So the CLI and the web app look at how busy the cores are
just before a run and use the ones left, at least one (``--threads`` chooses instead; so does
OMP_NUM_THREADS, when set).
"""

from __future__ import annotations

import os
import time

_torch_default: int | None = None  # torch's own thread count, read before the first set_threads


def usable_cores() -> list[int]:
    """The CPUs this process may run on."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # (not Linux)
        return list(range(os.cpu_count() or 1))


def _idle_and_total(stat_text: str, cpus: list[int]) -> tuple[int, int]:
    """Idle and total jiffies of ``cpus`` from the text of /proc/stat."""
    idle = total = 0
    wanted = {f"cpu{c}" for c in cpus}
    for line in stat_text.splitlines():
        fields = line.split()
        if fields and fields[0] in wanted:
            # user nice system idle iowait irq softirq steal (guest time is inside user already)
            values = [int(v) for v in fields[1:9]]
            idle += values[3] + (values[4] if len(values) > 4 else 0)
            total += sum(values)
    return idle, total


def busy_cores(interval: float = 0.25, stat_path: str = "/proc/stat") -> float | None:
    """How many of the usable cores other processes keep busy: their busy share over the next
    ``interval`` seconds, while this process sleeps.  None where /proc/stat cannot be read."""
    cpus = usable_cores()
    try:
        with open(stat_path, encoding="ascii") as f:
            idle0, total0 = _idle_and_total(f.read(), cpus)
        time.sleep(interval)
        with open(stat_path, encoding="ascii") as f:
            idle1, total1 = _idle_and_total(f.read(), cpus)
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if total1 <= total0:  # (a clock that did not move, or a file without these CPUs)
        return None
    return len(cpus) * (1 - (idle1 - idle0) / (total1 - total0))


def omp_num_threads_set() -> bool:
    """Whether OMP_NUM_THREADS chooses the threads (the user's choice, which torch follows)."""
    return bool(os.environ.get("OMP_NUM_THREADS", "").strip())


def auto_threads(busy: float) -> int:
    """Threads for a run that starts now, with ``busy`` cores kept busy by other processes: the usable
    cores they leave free, rounded, at least 1."""
    cores = len(usable_cores())
    return max(1, min(cores, round(cores - busy)))


def set_threads(asked: int | None, say=None) -> int:
    """Set torch's CPU threads for a run that starts now: ``asked``, else (unless OMP_NUM_THREADS is
    set: the user's choice, which torch follows) ``auto_threads()``, never more than torch's own
    default (one per physical core: hyperthreads count as CPUs here); return torch's number.
    ``say(text)`` hears of an automatic choice below that default."""
    import torch

    global _torch_default
    if _torch_default is None:
        _torch_default = torch.get_num_threads()
    busy = busy_cores() if asked is None and not omp_num_threads_set() else None
    if busy is not None:  # (None: asked, left to OMP_NUM_THREADS, or /proc/stat unreadable)
        asked = min(auto_threads(busy), _torch_default)
        if asked < _torch_default and say is not None:
            say(f"other processes keep {busy:.1f} of the {len(usable_cores())} cores busy: {asked} thread"
                f"{'s' if asked > 1 else ''} for this run (--threads N chooses)")
    if asked is not None:
        torch.set_num_threads(asked)
    return torch.get_num_threads()
