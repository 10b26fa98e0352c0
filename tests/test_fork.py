"""Processes made by fork() never hang in a kernel call.

GNU libgomp's worker threads do not survive ``fork()``; a child that enters a
parallel region of the parent's runtime waits for them forever.  fastbn runs
the kernels of a forked child on one thread (``fastbn._config``) with either
runtime, GNU libgomp or LLVM's libomp (the wheels'), unless
``fastbn._openmp_runtime.fork_keeps_threads()`` says the child may keep the
parent's thread count.  Every
scenario runs in a subprocess under a timeout, so a regression fails the
test instead of hanging the suite.  Each first makes a multi-threaded call in
the parent (the state that used to hang the child) and compares the child's
results with the parent's, bit for bit, at the child's thread count.
"""
import os
import signal
import subprocess
import sys
import textwrap

import pytest

import fastbn

TIMEOUT = 120

PRELUDE = textwrap.dedent("""
    import os, sys, threading, multiprocessing as mp
    import numpy as np
    import fastbn
    from fastbn import _config

    N, D = 1024, 512                    # above the serial cut-off: a team runs
    rng = np.random.default_rng(0)
    X = rng.standard_normal((N, D))
    G, B = rng.standard_normal(D), rng.standard_normal(D)

    def run(seed=0):
        x = X + seed
        out, cache = fastbn.batchnorm_forward(x, G, B, {"mode": "train"})
        dx, dg, db = fastbn.batchnorm_backward(np.ones_like(out), cache)
        lout, lcache = fastbn.layernorm_forward(x, G, B, {})
        ldx, _, _ = fastbn.layernorm_backward(np.ones_like(lout), lcache)
        return np.concatenate([out.ravel(), dx.ravel(), dg, db, lout.ravel(), ldx.ravel()])

    def serial(seed=0):
        saved = _config._user_threads
        fastbn.set_num_threads(1)
        try:
            return run(seed)
        finally:
            fastbn.set_num_threads(saved)

    def task(seed):
        return run(seed), fastbn.get_num_threads()

    def check(results, seeds, child_threads):
        for (got, threads), seed in zip(results, seeds):
            assert threads == child_threads, (threads, child_threads)
            want = serial(seed) if threads == 1 else run(seed)
            assert np.array_equal(got, want), "child result differs"

    # a team of 2 whatever else the machine runs (fastbn._cpus would shrink
    # it under load), so parent and children compute with the same split
    _config._cpus.free_cpus = lambda: 2
    fastbn.set_num_threads(2)
    run()                               # the parent starts its OpenMP team
    # libgomp: a forked child runs serially; libomp (the wheels): it keeps its threads
    from fastbn import _openmp_runtime
    CHILD = fastbn.get_num_threads() if _openmp_runtime.fork_keeps_threads() else 1
    WANT = run() if CHILD > 1 else serial()
""")

SCENARIOS = {
    "os_fork": """
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            ok = np.array_equal(run(), WANT) and fastbn.get_num_threads() == CHILD
            os.write(w, b"ok" if ok else b"bad")
            os._exit(0)
        os.close(w)
        msg = os.read(r, 2)
        os.waitpid(pid, 0)
        assert msg == b"ok", msg
    """,
    "fork_from_thread": """
        box = {}
        def forker():
            pid = os.fork()
            if pid == 0:
                ok = np.array_equal(run(), WANT) and fastbn.get_num_threads() == CHILD
                os._exit(0 if ok else 3)
            box["status"] = os.waitpid(pid, 0)[1]
        t = threading.Thread(target=forker)
        t.start()
        t.join()
        assert os.waitstatus_to_exitcode(box["status"]) == 0, box
    """,
    "mp_fork": """
        ctx = mp.get_context("fork")
        with ctx.Pool(1) as pool:
            check(pool.map(task, [0]), [0], CHILD)
    """,
    "mp_fork_pool_map": """
        ctx = mp.get_context("fork")
        with ctx.Pool(2) as pool:
            seeds = list(range(8))
            check(pool.map(task, seeds), seeds, CHILD)
    """,
    "mp_forkserver": """
        if __name__ == "__main__":
            ctx = mp.get_context("forkserver")
            # the server would preload this script (Python 3.14 does), run its kernels
            # and fork the workers from that state: serial children, the os_fork case
            ctx.set_forkserver_preload([])
            with ctx.Pool(1) as pool:
                check(pool.map(task, [0, 1]), [0, 1], fastbn.get_num_threads())
    """,
    "mp_spawn": """
        if __name__ == "__main__":
            ctx = mp.get_context("spawn")
            with ctx.Pool(1) as pool:
                check(pool.map(task, [0, 1]), [0, 1], fastbn.get_num_threads())
    """,
}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork() on this platform")
@pytest.mark.skipif(not fastbn.openmp_enabled(), reason="serial build: no team to lose")
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_child_process_never_hangs(scenario, tmp_path):
    script = tmp_path / f"{scenario}.py"
    # spawn/forkserver children re-import the script: the prelude must be importable
    script.write_text(PRELUDE + textwrap.dedent(SCENARIOS[scenario]) + "\nprint('done')\n")
    # the fastbn under test, wherever it is imported from (installed or in place)
    here = os.path.dirname(os.path.dirname(os.path.abspath(fastbn.__file__)))
    path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, FASTBN_NUM_THREADS="2", PYTHONPATH=path)
    # its own process group, so a timeout ends the hung grandchildren too
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"{scenario}: no answer within {TIMEOUT} s (a child hangs)")
    assert proc.returncode == 0, stderr[-3000:]
    assert stdout.strip().endswith("done")


def test_forked_flag_limits_threads(monkeypatch):
    from fastbn import _config
    monkeypatch.setattr(_config, "_forked", True)
    assert fastbn.get_num_threads() == 1
    assert _config.threads_for(1 << 24) == 1
    monkeypatch.setattr(_config, "_forked", False)
    monkeypatch.setattr(_config._cpus, "free_cpus", lambda: 2)    # whatever else runs
    fastbn.set_num_threads(2)
    try:
        assert _config.threads_for(1 << 24) == 2
    finally:
        fastbn.set_num_threads(None)
