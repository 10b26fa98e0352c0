"""setup.py's OpenMP probe links like the extensions do, CFLAGS/LDFLAGS included.

With ``CFLAGS=-fsanitize=address`` the probe's object needs libasan at link
time; a probe linked without those flags fails and the build silently goes
serial.  The probe is taken from setup.py itself (by name, with ``ast``), so
this checks the code that builds fastbn; skipped where there is no setup.py
(an installed wheel's tests) or no C compiler with OpenMP and AddressSanitizer.
"""
import ast
import os
import shutil

import pytest

SETUP = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "setup.py")


def _probe():
    with open(SETUP) as f:
        tree = ast.parse(f.read())
    keep = [n for n in tree.body if isinstance(n, ast.FunctionDef)
            and n.name == "_compiler_has_openmp"]
    keep += ast.parse("import os, tempfile, textwrap").body
    ns = {}
    # our own setup.py's function, run as it is (importing setup.py would build)
    exec(compile(ast.Module(body=keep[1:] + keep[:1], type_ignores=[]), SETUP, "exec"), ns)  # noqa: S102
    return ns["_compiler_has_openmp"]


def _compiler(monkeypatch, cflags):
    from setuptools._distutils.ccompiler import new_compiler
    from setuptools._distutils.sysconfig import customize_compiler
    monkeypatch.setenv("CFLAGS", cflags)
    monkeypatch.setenv("LDFLAGS", cflags)
    cc = new_compiler()
    customize_compiler(cc)
    return cc


@pytest.mark.skipif(not os.path.exists(SETUP), reason="no setup.py beside the tests")
@pytest.mark.skipif(shutil.which("gcc") is None, reason="no gcc")
@pytest.mark.parametrize("cflags", ["", "-fsanitize=address,undefined", "-fsanitize=address"])
def test_probe_finds_openmp_with_sanitizer_flags(monkeypatch, tmp_path, cflags):
    pytest.importorskip("setuptools")
    probe = _probe()
    monkeypatch.chdir(tmp_path)
    ok, why = probe(_compiler(monkeypatch, ""), ["-fopenmp"], ["-fopenmp"])
    if not ok:
        pytest.skip(f"this compiler has no OpenMP at all: {why}")
    ok, why = probe(_compiler(monkeypatch, cflags), ["-fopenmp"], ["-fopenmp"])
    assert ok, f"CFLAGS={cflags!r}: {why}"


@pytest.mark.skipif(not os.path.exists(SETUP), reason="no setup.py beside the tests")
@pytest.mark.skipif(shutil.which("gcc") is None, reason="no gcc")
def test_probe_reports_why_it_failed(monkeypatch, tmp_path):
    pytest.importorskip("setuptools")
    monkeypatch.chdir(tmp_path)
    ok, why = _probe()(_compiler(monkeypatch, ""), ["-fopenmp"],
                       ["-L/nonexistent", "-lfastbn_no_such_runtime"])
    assert not ok and why
