"""Sizing the kernels' team to the CPUs the process can get (fastbn._cpus).

The parsers are fed files laid out as the kernel writes them, the window
logic runs on simulated clocks, and the live test starts a busy process and
checks that it takes a CPU from the team (a busy loop keeps its CPU busy
whatever else the machine runs).
"""
import os
import subprocess
import sys
import time

import pytest

import fastbn
from fastbn import _config, _cpus


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.mark.parametrize("cpu_max, want", [("150000 100000", 1.5), ("max 100000", None),
                                           ("200000 50000", 4.0)])
def test_cgroup_v2_quota(tmp_path, cpu_max, want):
    _write(tmp_path / "cgroup", "0::/a/b\n")
    _write(tmp_path / "root" / "a" / "b" / "cpu.max", cpu_max + "\n")
    assert _cpus.cgroup_quota(str(tmp_path / "root"), str(tmp_path / "cgroup")) == want


@pytest.mark.parametrize("quota, want", [("50000", 0.5), ("-1", None), ("300000", 3.0)])
def test_cgroup_v1_quota(tmp_path, quota, want):
    _write(tmp_path / "cgroup", "5:memory:/m\n4:cpu,cpuacct:/x\n0::/\n")
    d = tmp_path / "root" / "cpu,cpuacct" / "x"
    _write(d / "cpu.cfs_quota_us", quota + "\n")
    _write(d / "cpu.cfs_period_us", "100000\n")
    assert _cpus.cgroup_quota(str(tmp_path / "root"), str(tmp_path / "cgroup")) == want


def test_no_cgroup_files_means_no_quota(tmp_path):
    assert _cpus.cgroup_quota(str(tmp_path / "none"), str(tmp_path / "missing")) is None


def test_busy_seconds_reads_proc_stat(tmp_path):
    # user nice system idle iowait irq softirq steal guest guest_nice
    _write(tmp_path / "stat", "cpu  100 20 30 4000 50 6 7 8 90 0\n"
                              "cpu0 1 2 3 400 5 6 7 8 9 0\n"
                              "cpu1 10 20 30 400 50 60 70 80 90 0\n"
                              "cpu3 100 0 0 400 0 0 0 0 0 0\n"
                              "intr 12345 6 7\nctxt 99\n")
    tick = _cpus._CLOCK_TICKS
    stat = str(tmp_path / "stat")
    # idle, iowait and guest (already in user) left out
    assert _cpus.busy_seconds(stat=stat) == pytest.approx((100 + 20 + 30 + 6 + 7 + 8) / tick)
    assert _cpus.busy_seconds({0}, stat) == pytest.approx((1 + 2 + 3 + 6 + 7 + 8) / tick)
    assert _cpus.busy_seconds({1, 3}, stat) == pytest.approx((10 + 20 + 30 + 60 + 70 + 80
                                                              + 100) / tick)
    assert _cpus.busy_seconds({2}, stat) is None                   # offline: no line
    _write(tmp_path / "old", "cpu  100 20 30 4000\ncpu0 100 20 30 4000\n")   # before iowait
    assert _cpus.busy_seconds(stat=str(tmp_path / "old")) == pytest.approx(150 / tick)
    assert _cpus.busy_seconds({0}, str(tmp_path / "old")) == pytest.approx(150 / tick)
    _write(tmp_path / "bad", "garbage\n")
    assert _cpus.busy_seconds(stat=str(tmp_path / "bad")) is None
    _write(tmp_path / "nan", "cpu  1 x 3 4 5\n")
    assert _cpus.busy_seconds(stat=str(tmp_path / "nan")) is None
    assert _cpus.busy_seconds(stat=str(tmp_path / "missing")) is None


@pytest.mark.parametrize("available, others, measured, want", [
    (2, 0.0, 2, 2),       # a quiet machine
    (2, 0.2, 2, 2),       # below what a window resolves
    (2, 0.5, 2, 1),       # a hog sharing a CPU with one of this process's threads
    (2, 1.0, 2, 1),       # a hog on a CPU of its own
    (2, 1.9, 2, 1),       # overloaded: never below one
    (2, -0.1, 2, 2),      # rounding of the tick counts
    (4, 1.0, 4, 3),
    (4, 2.2, 4, 2),
    (2, 8.0, 64, 2),      # a quota of 2 on 64 CPUs, 8 of them busy: a quarter of one
    (2, 20.0, 64, 1),
])
def test_free_from(available, others, measured, want):
    assert _cpus.free_from(available, others, measured) == want


class _Machine:
    """Clocks and a /proc/stat for free_cpus: ``run(ms, own, others)``
    advances wall time by ms, this process's CPU time by own CPUs and the
    machine's busy time by own + others CPUs."""

    def __init__(self):
        self.t = 1000.0
        self.own = 5.0
        self.busy = 9000.0

    def monotonic(self):
        return self.t

    def process_time(self):
        return self.own

    def run(self, ms, own, others):
        self.t += ms / 1e3
        self.own += own * ms / 1e3
        self.busy += (own + others) * ms / 1e3


@pytest.fixture
def machine(monkeypatch):
    m = _Machine()
    monkeypatch.setattr(_cpus, "time", m)
    monkeypatch.setattr(_cpus, "busy_seconds", lambda cpus: m.busy)
    monkeypatch.setattr(_cpus, "available_cpus", lambda: 2)
    monkeypatch.setattr(_cpus, "_affinity", lambda: [0, 1])
    for name, value in [("_window", None), ("_last_call", (None, None)), ("_free", (None, None)),
                        ("_available", (None, None, None))]:
        monkeypatch.setattr(_cpus, name, value)
    return m


def _calls(m, ms, own, others, every_ms=1.0):
    """Call free_cpus every every_ms for ms; the answers."""
    got = []
    for _ in range(int(ms / every_ms)):
        got.append(_cpus.free_cpus())
        m.run(every_ms, own, others)
    return got


def test_a_hog_halves_the_team_after_one_window(machine):
    got = _calls(machine, 300, own=1.0, others=1.0)
    window = int(_cpus.WINDOW_S * 1e3)
    assert set(got[:window]) == {2}            # nothing measured yet: every CPU
    assert set(got[window + 1:]) == {1}
    got = _calls(machine, 300, own=1.0, others=0.0)   # the hog stops
    assert got[-1] == 2 and got[0] == 1


def test_load_while_this_process_waits_is_not_counted(machine):
    # bursts of calls, and between them others run while this process waits
    # (a benchmark's other workers, a process this one hands work to)
    for _ in range(20):
        assert set(_calls(machine, 40, own=2.0, others=0.0)) == {2}
        machine.run(80, own=0.01, others=2.0)
    # the same bursts next to a hog are still seen
    got = []
    for _ in range(20):
        got += _calls(machine, 150, own=1.0, others=1.0)
        machine.run(80, own=0.01, others=1.0)
    assert got[-1] == 1


def test_computing_between_calls_is_no_pause(machine):
    # a training step: 30 ms of this process's own work between calls
    got = _calls(machine, 1000, own=1.0, others=1.0, every_ms=30.0)
    assert got[-1] == 1


def test_old_measurements_lapse(machine):
    # calls so sparse that a window spans more than WINDOW_MAX_S: not measured
    got = _calls(machine, 3000, own=1.0, others=1.0, every_ms=1e3 * _cpus.WINDOW_MAX_S + 50)
    assert set(got) == {2}
    # a measured hog, then bursts with waits in between, which complete no window:
    # the measurement holds for HOLD_S, then the team is whole again
    assert _calls(machine, 300, own=1.0, others=1.0)[-1] == 1
    got = []
    for _ in range(int(3 * _cpus.HOLD_S / 0.1)):
        got += _calls(machine, 10, own=2.0, others=0.0)
        machine.run(90, own=0.01, others=0.0)
    assert got[0] == 1 and got[-1] == 2


def test_without_proc_stat_every_available_cpu(machine, monkeypatch):
    monkeypatch.setattr(_cpus, "busy_seconds", lambda cpus: None)
    assert set(_calls(machine, 500, own=1.0, others=1.0)) == {2}


def test_threads_for_is_capped_by_free_cpus(monkeypatch):
    fastbn.set_num_threads(2)
    try:
        monkeypatch.setattr(_cpus, "free_cpus", lambda: 1)
        assert _config.threads_for(1 << 24) == 1
        monkeypatch.setattr(_cpus, "free_cpus", lambda: 2)
        assert _config.threads_for(1 << 24) == 2
        assert _config.threads_for(16) == 1               # small inputs stay serial
    finally:
        fastbn.set_num_threads(None)


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="needs Linux /proc")
def test_a_busy_process_leaves_fewer_free_cpus(monkeypatch):
    available = _cpus.available_cpus()
    if available < 2 or available != os.cpu_count():
        pytest.skip("needs at least 2 CPUs, all of them available")
    for name, value in [("_window", None), ("_last_call", (None, None)), ("_free", (None, None))]:
        monkeypatch.setattr(_cpus, name, value)
    hog = subprocess.Popen([sys.executable, "-c", "while True:\n    pass\n"])
    try:
        # this process keeps calling and computing, the hog keeps a CPU busy:
        # a few windows later one CPU fewer is free
        free = available
        end = time.monotonic() + 30 * _cpus.WINDOW_S
        while time.monotonic() < end and free > available - 1:
            free = _cpus.free_cpus()
            sum(i * i for i in range(2000))
        assert free <= available - 1
    finally:
        hog.terminate()
        hog.wait()


def test_only_the_cpus_the_process_may_use_are_measured(machine, monkeypatch):
    # another process keeping CPU 1 busy does not take from a process pinned to CPU 0
    asked = []
    monkeypatch.setattr(_cpus, "_affinity", lambda: [0])
    monkeypatch.setattr(_cpus, "available_cpus", lambda: 1)
    monkeypatch.setattr(_cpus, "busy_seconds", lambda cpus: asked.append(cpus) or machine.busy)
    _calls(machine, 300, own=1.0, others=0.0)
    assert asked and all(c == frozenset({0}) for c in asked)
