"""Every fastbn module imports on its own, in any order, with no import circle.

Each module is imported first in a fresh interpreter (then all the others),
and all of them in reverse order: a circle shows up as an ImportError of a
partially initialized module in one of those orders.  The module-level
imports inside the package are also read from the source and must form a
graph without cycles, so a circle that happens to import in every order
tried here fails too.
"""
import ast
import importlib.util
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import fastbn

PACKAGE_DIR = Path(fastbn.__file__).parent


def _modules():
    """Every module of the package that this CPU can load (``__main__`` runs the CLI)."""
    names = ["fastbn"] + sorted(f"fastbn.{m.name}" for m in pkgutil.iter_modules([str(PACKAGE_DIR)])
                                if m.name != "__main__")
    # a wider build's init code runs its instructions: SIGILL on a CPU without them
    supports = importlib.import_module("fastbn._dispatch").cpu_supports
    return [n for n in names
            if n.rsplit("_", 1)[-1] not in ("avx2", "avx512") or supports(n.rsplit("_", 1)[-1])]


MODULES = _modules()


# modules of optional extras: without their dependency they raise their own ImportError
# (fastbn.distributed without mpi4py or an MPI library: the wheels' test venvs have neither)
OPTIONAL = {"fastbn.distributed": "fastbn.distributed needs mpi4py"}


def _import_in_fresh_interpreter(order):
    code = ("import importlib, sys\n"
            f"optional = {OPTIONAL!r}\n"
            "for name in sys.argv[1:]:\n"
            "    try:\n"
            "        importlib.import_module(name)\n"
            "    except ImportError as exc:\n"
            "        if name not in optional or not str(exc).startswith(optional[name]):\n"
            "            raise\n")
    return subprocess.run([sys.executable, "-c", code, *order], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("first", MODULES)
def test_each_module_imports_first(first):
    order = [first] + [m for m in MODULES if m != first]
    result = _import_in_fresh_interpreter(order)
    assert result.returncode == 0, f"importing {first} first failed:\n{result.stderr}"


def test_all_modules_import_in_reverse_order():
    result = _import_in_fresh_interpreter(MODULES[::-1])
    assert result.returncode == 0, result.stderr


def _module_level_imports(path, package="fastbn"):
    """The fastbn modules a source file imports when it is executed (not in functions)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()

    def visit(stmts):
        for node in stmts:
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.split(".")[0] == package)
            elif isinstance(node, ast.ImportFrom):
                if node.level == 0 and (node.module or "").split(".")[0] != package:
                    continue
                base = package if node.level else node.module
                if node.level and node.module:
                    base = f"{package}.{node.module}"
                if base == package:     # from . import name: name is a submodule or an attribute
                    found.update(f"{package}.{a.name}" for a in node.names)
                else:
                    found.add(base)
            elif isinstance(node, (ast.If, ast.Try, ast.With)):
                for field in ("body", "orelse", "finalbody", "handlers"):
                    for child in getattr(node, field, []):
                        visit(child.body if isinstance(child, ast.ExceptHandler) else [child])
    visit(tree.body)
    return found


def test_no_import_cycle_in_the_source():
    sources = {("fastbn" if p.stem == "__init__" else f"fastbn.{p.stem}"): p
               for p in PACKAGE_DIR.glob("*.py")}
    graph = {name: {m for m in _module_level_imports(path) if m in sources and m != "fastbn"}
             for name, path in sources.items()}
    assert graph["fastbn.compiled"], "the source scan found no imports: it is broken"
    # depth-first search for a back edge
    state, stack = {}, []

    def walk(node):
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                cycle = stack[stack.index(dep):] + [dep]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if dep not in state:
                walk(dep)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            walk(node)
