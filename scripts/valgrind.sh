#!/usr/bin/env bash
# Run part of the test suite under valgrind memcheck and fail on any invalid
# read, write or free, or use of uninitialised memory, in the process (the
# compiled kernels above all).
#
#   scripts/valgrind.sh                 # the default subset, every kernel build
#                                       # (~10 min per build on 2 cores)
#   scripts/valgrind.sh tests/test_errors.py -k tampered    # any pytest arguments
#
# Needs valgrind and a built extension: `python setup.py build_ext --inplace`
# (then src/ is used) or an installed fastbn.  PYTHONMALLOC=malloc sends every
# Python allocation through malloc, so valgrind sees exact block bounds and
# Python's own allocator raises no false alarms.  Leak checking is off: the
# interpreter keeps much alive at exit; tests/test_leaks.py covers leaks.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v valgrind >/dev/null; then
    echo "valgrind.sh: valgrind is not installed (apt-get install valgrind)" >&2
    exit 2
fi
if ls src/fastbn/_bn*.so >/dev/null 2>&1; then
    export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
fi

if [ $# -eq 0 ]; then
    # Every kernel, every layout, both dtypes, train and test mode, odd shapes;
    # the error paths; tampered caches; NaN/inf.  Two OpenMP threads so the
    # partitioned loops run too (valgrind serializes them, which is fine for
    # memcheck).
    set -- tests/test_batchnorm.py tests/test_layernorm.py tests/test_moments.py \
        tests/test_errors.py tests/test_nothing_lost.py -k "not large_offset and not numpy"
fi

# The interpreter binary itself: `python` may be a wrapper script (pyenv
# shims are), and valgrind would then watch the wrapper, not Python.
PY="$(python -c 'import sys; print(sys.executable)')"
export PYTHONMALLOC=malloc
export FASTBN_NUM_THREADS="${FASTBN_NUM_THREADS:-2}"
LOG="${VALGRIND_LOG:-$(mktemp -t fastbn-valgrind.XXXXXX)}"
SUPP=(--suppressions=scripts/valgrind-python.supp)

# The kernels are compiled twice (baseline and AVX2+FMA, picked at import);
# check every build this machine runs, unless FASTBN_KERNELS picks one.
if [ -n "${FASTBN_KERNELS:-}" ]; then
    BUILDS=("$FASTBN_KERNELS")
elif "$PY" -c "import sys, fastbn.compiled as c; sys.exit(c.KERNEL_ISA == 'baseline')"; then
    BUILDS=(auto baseline)
else
    BUILDS=(auto)
fi

# Memory errors valgrind reports as "Invalid read/write of size N", "Invalid
# free", "Mismatched free", "Source and destination overlap", and reads of
# uninitialised memory ("Conditional jump ... uninitialised", "Use of
# uninitialised value").
ERRORS="Invalid (read|write|free)|Mismatched free|Source and destination overlap|uninitialised"
failed=0
for build in "${BUILDS[@]}"; do
    log="$LOG.$build"
    echo "valgrind.sh: FASTBN_KERNELS=$build pytest $* under memcheck; log: $log"
    set +e
    FASTBN_KERNELS="$build" valgrind --tool=memcheck --leak-check=no --trace-children=no \
        --track-origins=yes --num-callers=30 "${SUPP[@]}" --log-file="$log" \
        "$PY" -m pytest -q -p no:cacheprovider -p no:randomly "$@"
    status=$?
    set -e
    if ! grep -q "ERROR SUMMARY" "$log"; then
        echo "valgrind.sh: no ERROR SUMMARY in $log: did valgrind run Python?" >&2
        exit 2
    fi
    grep -E "ERROR SUMMARY" "$log" | tail -1
    bad=$(grep -cE "$ERRORS" "$log" || true)
    if [ "$bad" -ne 0 ]; then
        echo "valgrind.sh: FAILED ($build): $bad memory error report(s); first ones:" >&2
        grep -E -A30 "$ERRORS" "$log" | head -100 >&2
        failed=1
    elif [ "$status" -ne 0 ]; then
        echo "valgrind.sh: the tests themselves failed under valgrind ($build, exit $status)" >&2
        failed=1
    else
        echo "valgrind.sh: $build kernels clean: no invalid reads, writes or frees, no use of uninitialised memory"
    fi
done
exit "$failed"
