"""artopt.cpu: the CPU threads of a run, from the cores other processes leave free."""

from __future__ import annotations

import pytest
import torch

from artopt import cpu

STAT = """cpu  {all}
cpu0 {c0} 0 {s0} {i0} 0 0 0 0 0 0
cpu1 {c1} 0 0 {i1} 5 0 0 0 0 0
cpu7 900 0 0 0 0 0 0 0 0 0
intr 1 2 3
"""


@pytest.fixture()
def two_cores(monkeypatch):
    monkeypatch.setattr(cpu, "usable_cores", lambda: [0, 1])
    monkeypatch.setattr(cpu, "_torch_default", 2)  # (the tests run torch on 1 thread)


@pytest.fixture()
def torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_busy_cores_counts_the_usable_cpus_busy_share_between_two_readings(two_cores, monkeypatch, tmp_path):
    """cpu0 busy the whole time, cpu1 idle (iowait counts as idle), cpu7 (not usable here) ignored."""
    stat = tmp_path / "stat"
    stat.write_text(STAT.format(all="1 2 3 4", c0=100, s0=50, i0=800, c1=10, i1=900))

    def a_quarter_second_later(seconds):
        stat.write_text(STAT.format(all="9 9 9 9", c0=180, s0=70, i0=800, c1=10, i1=1000))

    monkeypatch.setattr(cpu.time, "sleep", a_quarter_second_later)
    assert cpu.busy_cores(stat_path=str(stat)) == pytest.approx(1.0)
    assert cpu.busy_cores(stat_path=str(tmp_path / "missing")) is None  # (not Linux, or no /proc)
    monkeypatch.setattr(cpu.time, "sleep", lambda seconds: None)
    stat.write_text("cpu  1 2 3 4\n")  # no line of a usable CPU: no clock to read
    assert cpu.busy_cores(stat_path=str(stat)) is None


@pytest.mark.parametrize("busy, threads", [(0.0, 2), (0.4, 2), (0.6, 1), (1.0, 1), (5.0, 1)])
def test_auto_threads_leaves_the_busy_cores_to_their_processes(two_cores, busy, threads):
    assert cpu.auto_threads(busy) == threads


def test_set_threads_takes_the_number_asked_else_the_free_cores_unless_omp_num_threads_is_set(
        two_cores, monkeypatch, torch_threads):
    said = []
    monkeypatch.setattr(cpu, "busy_cores", lambda: 1.0)
    assert cpu.set_threads(2, said.append) == 2 == torch.get_num_threads() and said == []
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's choice: torch's setting stays
    assert cpu.set_threads(None, said.append) == 2 and said == []
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert cpu.set_threads(None, said.append) == 1 == torch.get_num_threads()
    assert said == ["other processes keep 1.0 of the 2 cores busy: 1 thread for this run (--threads N chooses)"]
    monkeypatch.setattr(cpu, "busy_cores", lambda: None)  # cannot tell: torch's setting stays
    assert cpu.set_threads(None, said.append) == 1 and len(said) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "")  # set but empty: no choice of the user's
    monkeypatch.setattr(cpu, "busy_cores", lambda: 0.0)
    monkeypatch.setattr(cpu, "usable_cores", lambda: [0, 1, 2, 3])  # hyperthreads: 4 CPUs, 2 cores
    assert cpu.set_threads(None, said.append) == 2  # never above torch's own default
