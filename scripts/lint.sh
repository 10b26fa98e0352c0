#!/usr/bin/env bash
# Lint the tree: ruff (Python, config in pyproject.toml [tool.ruff]), cython-lint
# (.pyx/.pxd) and clang-format (the C headers, style in .clang-format).  Exits
# non-zero when any of them finds something.  The tools come from the `lint`
# extra (pip install ".[lint]"); PYTHON picks the interpreter that has them.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
BIN="$(dirname "$(command -v "$PYTHON")")"
export PATH="$BIN:$PATH"        # cython-lint runs pycodestyle from PATH
status=0

echo "lint: ruff"
"$PYTHON" -m ruff check --no-cache . || status=1

echo "lint: cython-lint"
mapfile -t CY < <(git ls-files '*.pyx' '*.pxd' 2>/dev/null || find src -name '*.pyx' -o -name '*.pxd')
if [ "${#CY[@]}" -gt 0 ]; then
    cython-lint "${CY[@]}" || status=1
fi

echo "lint: clang-format"
mapfile -t CH < <(git ls-files 'src/*.h' 'src/*.c' 2>/dev/null)
if [ "${#CH[@]}" -gt 0 ]; then
    clang-format --dry-run --Werror "${CH[@]}" || status=1
fi

[ "$status" -eq 0 ] && echo "lint: clean" || echo "lint: FAILED"
exit "$status"
