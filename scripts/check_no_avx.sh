#!/usr/bin/env bash
# Prove an installed fastbn wheel runs correctly on an x86-64 CPU without AVX.
#
#   scripts/check_no_avx.sh [VENV_PYTHON] [CPU]
#
# VENV_PYTHON: a Python with the fastbn wheel (and pytest, hypothesis)
#              installed; default: the python on PATH.
# CPU:         a QEMU CPU model without AVX; default Nehalem (SSE4.2, POPCNT:
#              the oldest model NumPy >= 2.4's x86-64-v2 baseline still runs on).
#
# Under qemu-user (Debian: apt-get install qemu-user) the whole Python process
# sees, and may only execute, that CPU's instructions:
#   1. control: calling an AVX2 kernel directly must die of SIGILL, so the
#      emulator really refuses AVX (otherwise this check would prove nothing);
#   2. fastbn must pick its baseline kernels and show_config must say so;
#   3. the kernel tests (batch norm, both kernel builds, layer norm, moments,
#      packaging; NO_AVX_TESTS="test_a.py test_b.py" picks others) pass.
set -uo pipefail
PY="${1:-python}"
CPU="${2:-Nehalem}"
HERE="$(cd "$(dirname "$0")/.." && pwd)"
command -v qemu-x86_64 >/dev/null || { echo "check_no_avx: qemu-x86_64 not found (apt-get install qemu-user)"; exit 2; }
[ "$(uname -m)" = x86_64 ] || { echo "check_no_avx: needs an x86-64 host"; exit 2; }
# qemu-user needs the real interpreter binary, not a venv's symlink chain
# (the venv is found through pyvenv.cfg next to the given path, so keep it).
Q="qemu-x86_64 -cpu $CPU"
# NumPy's OpenBLAS takes its kernels from OPENBLAS_CORETYPE when it is set,
# and an inherited value names the host's CPU, not the emulated one (with
# Haswell, import numpy dies of SIGILL under qemu before fastbn loads): name
# a core the emulated CPU runs, so that only fastbn's own dispatch is tested.
export OPENBLAS_CORETYPE=Nehalem
WORK="$(mktemp -d)"; trap 'rm -rf "$WORK"' EXIT
cd "$WORK"     # outside the source tree: import fastbn finds the installed wheel

echo "check_no_avx: emulated CPU $CPU"
$Q "$PY" -c "import fastbn, sys; print('check_no_avx: fastbn from', fastbn.__file__)"

# 1. control: the AVX2 build must not run here
if "$PY" -c "import fastbn._bn_avx2" 2>/dev/null; then
    cat > "$WORK/control.py" <<'EOF'
import numpy as np
from fastbn import _bn_avx2
x = np.ones((64, 64), np.float32); o = np.empty_like(x)
m, v, i = np.empty(64), np.empty(64), np.empty(64)
_bn_avx2.rows_forward_train(x, np.ones(64, np.float32), np.zeros(64, np.float32), 1e-5, o, m, v, i, 1)
EOF
    # an inner shell reaps the crash, so its "Illegal instruction" notice goes to /dev/null
    bash -c 'qemu-x86_64 -cpu "$0" "$1" "$2"; exit $?' "$CPU" "$PY" "$WORK/control.py" >/dev/null 2>&1
    rc=$?
    if [ $rc -ne 132 ] && [ $rc -ne 4 ]; then
        echo "check_no_avx: FAIL: the AVX2 kernel did not die of SIGILL (exit $rc): emulation proves nothing"
        exit 1
    fi
    echo "check_no_avx: control OK: the AVX2 kernel dies of SIGILL (exit $rc) on $CPU"
else
    echo "check_no_avx: no AVX2 build in this wheel; skipping the control"
fi

# 2. dispatch picks the baseline; the kernels compute the right thing
$Q "$PY" - <<'EOF' || { echo "check_no_avx: FAIL: dispatch or correctness"; exit 1; }
import numpy as np
import fastbn
from fastbn import reference
cfg = fastbn.show_config("dicts")
assert "AVX" not in cfg["cpu_features"], cfg["cpu_features"]
assert cfg["build"]["kernels"] == "baseline", cfg["build"]
assert not {"AVX", "AVX2"} & set(cfg["build"]["isa_macros"]), cfg["build"]
rng = np.random.default_rng(0)
for dt in (np.float32, np.float64):
    x = (5 + rng.standard_normal((33, 17))).astype(dt)
    g, b = rng.standard_normal(17).astype(dt), rng.standard_normal(17).astype(dt)
    dout = rng.standard_normal(x.shape).astype(dt)
    out, cache = fastbn.batchnorm_forward(x, g, b, {"mode": "train"})
    ref, rcache = reference.batchnorm_forward(x.astype(np.float64), g.astype(np.float64),
                                              b.astype(np.float64), {"mode": "train"})
    tol = 1e-4 if dt == np.float32 else 1e-10
    np.testing.assert_allclose(out, ref, rtol=tol, atol=tol)
    dx = fastbn.batchnorm_backward(dout, cache)[0]
    rdx = reference.batchnorm_backward(dout.astype(np.float64), rcache)[0]
    np.testing.assert_allclose(dx, rdx, rtol=tol, atol=tol)
print(f"check_no_avx: baseline kernels picked ({cfg['build']['isa_level']}); "
      f"forward/backward match the reference")
EOF

# 3. the kernel tests, on the installed wheel
TESTS=()
for t in ${NO_AVX_TESTS:-test_batchnorm.py test_kernel_builds.py test_layernorm.py \
         test_moments.py test_packaging.py}; do
    [ -f "$HERE/tests/$t" ] && TESTS+=("$HERE/tests/$t")
done
$Q "$PY" -m pytest -q -p no:cacheprovider "${TESTS[@]}" 2>&1 | tail -3
rc=${PIPESTATUS[0]}
[ $rc -eq 0 ] || { echo "check_no_avx: FAIL: tests under $CPU (exit $rc)"; exit 1; }
echo "check_no_avx: OK on $CPU"
