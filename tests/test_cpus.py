"""Sizing the kernels' team to the CPUs the process can get (fastbn._cpus).

The parsers are fed files laid out as the kernel writes them; the live test
starts a busy process and checks that it is seen as another process's
runnable task (a busy loop is always runnable, so this holds on any load).
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


def test_running_tasks_reads_the_fourth_field(tmp_path):
    _write(tmp_path / "loadavg", "2.57 1.15 0.52 3/412 12345\n")
    assert _cpus.running_tasks(str(tmp_path / "loadavg")) == 3
    _write(tmp_path / "bad", "garbage\n")
    assert _cpus.running_tasks(str(tmp_path / "bad")) is None
    assert _cpus.running_tasks(str(tmp_path / "missing")) is None


def test_own_running_counts_state_r_threads(tmp_path):
    # a command name may itself hold ') R (': the state follows the last ')'
    _write(tmp_path / "11" / "stat", "11 (python) R 1 11 11 0\n")
    _write(tmp_path / "12" / "stat", "12 (odd) R (name) S 1 11 11 0\n")
    _write(tmp_path / "13" / "stat", "13 (omp) R 1 11 11 0\n")
    _write(tmp_path / "14" / "stat", "14 (idle) S 1 11 11 0\n")
    assert _cpus.own_running(str(tmp_path)) == 2


@pytest.mark.parametrize("available, running, own, online, want", [
    (2, 1, 1, 2, 2),      # only this process
    (2, 2, 2, 2, 2),      # this process and its own spinning worker
    (2, 3, 2, 2, 1),      # one task of another process
    (2, 2, 1, 2, 1),      # a hog on one core, the caller on the other
    (2, 17, 1, 2, 1),     # overloaded: never below one
    (4, 3, 1, 4, 2),
    (2, 10, 1, 64, 2),    # 9 others spread over 64 CPUs: about 0.3 on this process's 2
])
def test_free_from(available, running, own, online, want):
    assert _cpus.free_from(available, running, own, online) == want


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


@pytest.mark.skipif(not os.path.exists("/proc/loadavg"), reason="needs Linux /proc")
def test_a_busy_process_leaves_fewer_free_cpus(monkeypatch):
    available = _cpus.available_cpus()
    if available < 2 or available != os.cpu_count():
        pytest.skip("needs at least 2 CPUs, all of them available")
    hog = subprocess.Popen([sys.executable, "-c", "while True:\n    pass\n"])
    try:
        # a busy loop is always runnable: counted as another process's task
        for _ in range(100):                              # until the child runs
            others = _cpus.running_tasks() - _cpus.own_running()
            if others >= 1:
                break
            time.sleep(0.05)
        assert others >= 1
        monkeypatch.setattr(_cpus, "_last", (None, None))  # measure now, not from the cache
        assert _cpus.free_cpus() <= available - 1
    finally:
        hog.terminate()
        hog.wait()
