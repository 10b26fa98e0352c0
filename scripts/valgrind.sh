#!/usr/bin/env bash
# Run part of the test suite under valgrind memcheck and fail on any invalid
# read, write or free in the process (the compiled kernels above all).
#
#   scripts/valgrind.sh                 # the default subset (~10-20 min on 2 cores)
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
    set -- tests/test_batchnorm.py tests/test_layernorm.py tests/test_errors.py \
        tests/test_nothing_lost.py -k "not large_offset and not numpy"
fi

# The interpreter binary itself: `python` may be a wrapper script (pyenv
# shims are), and valgrind would then watch the wrapper, not Python.
PY="$(python -c 'import sys; print(sys.executable)')"
export PYTHONMALLOC=malloc
export FASTBN_NUM_THREADS="${FASTBN_NUM_THREADS:-2}"
LOG="${VALGRIND_LOG:-$(mktemp -t fastbn-valgrind.XXXXXX)}"
SUPP=(--suppressions=scripts/valgrind-python.supp)

echo "valgrind.sh: running pytest $* under memcheck; log: $LOG"
set +e
valgrind --tool=memcheck --leak-check=no --trace-children=no --track-origins=no --num-callers=30 \
    "${SUPP[@]}" --log-file="$LOG" \
    "$PY" -m pytest -q -p no:cacheprovider -p no:randomly "$@"
status=$?
set -e

# Memory errors valgrind reports as "Invalid read/write of size N", "Invalid
# free", "Mismatched free", "Source and destination overlap", and reads of
# uninitialised memory ("Conditional jump ... uninitialised", "Use of
# uninitialised value").
bad=$(grep -cE "Invalid (read|write|free)|Mismatched free|Source and destination overlap|uninitialised" "$LOG" || true)
if ! grep -q "ERROR SUMMARY" "$LOG"; then
    echo "valgrind.sh: no ERROR SUMMARY in $LOG: did valgrind run Python?" >&2
    exit 2
fi
grep -E "ERROR SUMMARY" "$LOG" | tail -1
if [ "$bad" -ne 0 ]; then
    echo "valgrind.sh: FAILED: $bad memory error report(s); first ones:" >&2
    grep -E -A12 "Invalid (read|write|free)|Mismatched free|Source and destination overlap|uninitialised" "$LOG" | head -80 >&2
    exit 1
fi
if [ "$status" -ne 0 ]; then
    echo "valgrind.sh: the tests themselves failed under valgrind (exit $status)" >&2
    exit "$status"
fi
echo "valgrind.sh: clean: no invalid reads, writes or frees"
