"""Every kernel module's guard for concurrent calls.

A kernel call that starts while another call of the same module runs (Python
threads each calling fastbn: the kernels release the GIL) gets one thread
instead of a full OpenMP team.  Each module (``_bn``, ``_ln``, ``_moments``)
counts its calls in flight (``_active_calls``) and reports the team a call
starting now would get (``_team_size``); here a second Python thread keeps a
kernel of the module busy while the main thread asks both.
"""
import threading
import time

import numpy as np
import pytest

from fastbn import compiled, compiled_ln, moments


def _bn_call():
    x = np.random.default_rng(0).standard_normal((2048, 512)).astype(np.float32)
    g, b = np.ones(512, np.float32), np.zeros(512, np.float32)
    return lambda: compiled.batchnorm_forward(x, g, b, {"mode": "train"})


def _ln_call():
    x = np.random.default_rng(0).standard_normal((2048, 512)).astype(np.float32)
    g, b = np.ones(512, np.float32), np.zeros(512, np.float32)
    return lambda: compiled_ln.layernorm_forward(x, g, b, {})


def _moments_call():
    x = np.random.default_rng(0).standard_normal((2048, 512)).astype(np.float32)
    return lambda: moments.partial_moments(x)


MODULES = {
    "_bn": (lambda: compiled._bn, _bn_call),
    "_ln": (lambda: compiled_ln._ln, _ln_call),
    "_moments": (lambda: moments._moments, _moments_call),
}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_a_call_during_another_gets_one_thread(name):
    module, make_call = MODULES[name]
    mod = module()
    call = make_call()
    assert mod._active_calls() == 0
    assert mod._team_size(4) == 4
    stop, failed = threading.Event(), []

    def busy():
        try:
            while not stop.is_set():
                call()
        except BaseException as e:     # reported by the main thread
            failed.append(e)
            stop.set()

    worker = threading.Thread(target=busy)
    worker.start()
    seen = []
    try:
        # on a loaded machine the worker may be between calls at any one
        # look; it is inside one at some look within the time limit (the
        # short sleeps hand it the GIL it needs to start a call)
        deadline = time.monotonic() + 60
        while not stop.is_set() and len(seen) < 3 and time.monotonic() < deadline:
            if mod._active_calls() == 1:
                seen.append(mod._team_size(4))
            time.sleep(0.0002)
    finally:
        stop.set()
        worker.join(60)
    assert not failed, failed
    assert seen, f"{name}: never saw the worker's call in flight"
    # a call may end between the two questions: then it reports the full team
    assert 1 in seen, seen
    assert mod._active_calls() == 0
    assert mod._team_size(4) == 4
