#!/usr/bin/env bash
# Build fastbn with AddressSanitizer + UndefinedBehaviorSanitizer (and OpenMP)
# and run the kernel tests under them; fail on any report.
#
#   scripts/sanitize.sh                 # the kernel tests, every kernel build
#   scripts/sanitize.sh tests/test_unaligned.py -k forward   # any pytest arguments
#
# The build goes to a copy of the tracked sources in a temporary directory
# (FASTBN_SANITIZE_DIR to keep it), never over the in-place build of src/.
# It is GCC with CFLAGS/LDFLAGS "-fsanitize=address,undefined
# -fno-omit-frame-pointer -g"; setup.py links its OpenMP probe with those same
# flags and FASTBN_REQUIRE_OPENMP=1 stops the build if OpenMP is not found, so
# the OpenMP kernels (partitioned loops, reductions) are the ones checked.
# Python itself is not instrumented, so libasan is preloaded; leak detection
# is off (the interpreter keeps much alive at exit; tests/test_leaks.py covers
# leaks).  ASan reports out-of-bounds and use-after-free accesses; UBSan
# misaligned loads and stores (the tests/test_unaligned.py cases hand the
# kernels data at odd addresses), signed overflow, bad shifts.  Two threads,
# so the parallel paths run.  About 5 min of build and 5 min of tests on two
# busy cores.
set -euo pipefail
HERE="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-python3}"
command -v gcc >/dev/null || { echo "sanitize.sh: needs gcc" >&2; exit 2; }
ASAN_LIB="$(gcc -print-file-name=libasan.so)"
[ -f "$ASAN_LIB" ] || { echo "sanitize.sh: gcc has no libasan.so (apt-get install libasan8)" >&2; exit 2; }
"$PY" -c "import Cython, numpy, pytest, hypothesis" 2>/dev/null \
    || { echo "sanitize.sh: $PY lacks Cython/numpy/pytest/hypothesis" >&2; exit 2; }

BUILD="${FASTBN_SANITIZE_DIR:-$(mktemp -d -t fastbn-sanitize.XXXXXX)}"
[ -n "${FASTBN_SANITIZE_DIR:-}" ] || trap 'rm -rf "$BUILD"' EXIT
LOGS="$BUILD/reports"
mkdir -p "$BUILD/src" "$LOGS"
(cd "$HERE" && git ls-files -z 2>/dev/null | xargs -0 cp --parents -t "$BUILD/src" 2>/dev/null) \
    || cp -r "$HERE"/. "$BUILD/src"
SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -g"
echo "sanitize.sh: building in $BUILD/src with $SAN"
(cd "$BUILD/src" && CFLAGS="$SAN" LDFLAGS="$SAN" FASTBN_REQUIRE_OPENMP=1 FASTBN_BUILD_JOBS=1 \
    nice -n 19 "$PY" setup.py -q build_ext --inplace -j 1 >"$BUILD/build.log" 2>&1) \
    || { tail -30 "$BUILD/build.log"; echo "sanitize.sh: build failed" >&2; exit 1; }
grep -q "fastbn: WARNING" "$BUILD/build.log" && { grep "fastbn: WARNING" "$BUILD/build.log"; exit 1; }

if [ $# -eq 0 ]; then
    set -- tests/test_batchnorm.py tests/test_layernorm.py tests/test_moments.py \
        tests/test_kernel_builds.py tests/test_unaligned.py tests/test_errors.py \
        tests/test_nothing_lost.py
fi
export PYTHONPATH="$BUILD/src/src"
export FASTBN_NUM_THREADS="${FASTBN_NUM_THREADS:-2}"
export LD_PRELOAD="$ASAN_LIB"
export ASAN_OPTIONS="detect_leaks=0:log_path=$LOGS/asan:abort_on_error=0"
export UBSAN_OPTIONS="print_stacktrace=1:log_path=$LOGS/ubsan"
"$PY" -c "import fastbn, sys; print('sanitize.sh: OpenMP', fastbn.openmp_enabled()); \
sys.exit(not fastbn.openmp_enabled())" \
    || { echo "sanitize.sh: the sanitized build has no OpenMP" >&2; exit 1; }

if "$PY" -c "import sys, fastbn.compiled as c; sys.exit(c.KERNEL_ISA == 'baseline')"; then
    BUILDS=(auto baseline)
else
    BUILDS=(auto)
fi
failed=0
for build in "${BUILDS[@]}"; do
    echo "sanitize.sh: FASTBN_KERNELS=$build pytest $*"
    set +e
    (cd "$BUILD/src" && FASTBN_KERNELS="$build" nice -n 19 "$PY" -m pytest -q -p no:cacheprovider "$@")
    status=$?
    set -e
    reports=$(cat "$LOGS"/* 2>/dev/null | grep -cE "runtime error:|ERROR: AddressSanitizer" || true)
    if [ "$reports" -ne 0 ]; then
        echo "sanitize.sh: FAILED ($build): $reports sanitizer report(s); first ones:" >&2
        cat "$LOGS"/* | grep -E -A12 "runtime error:|ERROR: AddressSanitizer" | head -80 >&2
        failed=1
    elif [ "$status" -ne 0 ]; then
        echo "sanitize.sh: the tests failed under the sanitizers ($build, exit $status)" >&2
        failed=1
    else
        echo "sanitize.sh: $build kernels clean: no ASan or UBSan report"
    fi
    rm -f "$LOGS"/*
done
exit "$failed"
