"""What an installed fastbn says about itself: show_config, build facts, stubs."""
import ast
import contextlib
import importlib
import io
import pathlib
import platform

import numpy as np
import pytest

import fastbn
from fastbn import _buildinfo

PKG = pathlib.Path(fastbn.__file__).parent
EXTENSIONS = sorted(p.name.split(".")[0] for p in PKG.iterdir()
                    if p.suffix in (".so", ".pyd") and p.name.startswith("_"))


def test_show_config_dicts_reports_build_and_runtime():
    cfg = fastbn.show_config("dicts")
    assert cfg["fastbn"]["version"] == fastbn.__version__
    assert cfg["numpy"]["version"] == np.__version__
    assert cfg["openmp"]["enabled"] is fastbn.openmp_enabled()
    assert (cfg["openmp"]["version"] is None) is (not fastbn.openmp_enabled())
    assert cfg["threads"] == fastbn.get_num_threads()
    assert cfg["build"]["isa_macros"] == _buildinfo.isa()
    assert cfg["build"]["kernels"] == fastbn.compiled.KERNEL_ISA
    assert cfg["build"]["kernels"] in cfg["build"]["kernel_builds"]
    assert cfg["build"]["compiler"] and cfg["build"]["compiler"] != "unknown"
    # the flags header was found and filled in by setup.py
    assert "-O" in cfg["build"]["extra_compile_args"] or "/O" in cfg["build"]["extra_compile_args"]


def test_show_config_follows_set_num_threads():
    old = fastbn.get_num_threads()
    try:
        fastbn.set_num_threads(3)
        assert fastbn.show_config("dicts")["threads"] == 3
    finally:
        fastbn.set_num_threads(None)
    assert fastbn.get_num_threads() == old


def test_show_config_prints_report():
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert fastbn.show_config() is None
    text = buf.getvalue()
    assert f"fastbn {fastbn.__version__}" in text
    assert "OpenMP:" in text and "threads:" in text and "kernels:" in text


def test_show_config_reports_the_buffer_cache():
    from fastbn import compiled
    before = fastbn.show_config("dicts")["buffer_cache"]
    assert before["limit"] == fastbn.buffer_cache_info()["limit"]
    x = np.ones((300, 1024), np.float32)                       # a 1.2 MB output
    out = compiled.batchnorm_forward(x, np.ones(1024, np.float32),
                                     np.zeros(1024, np.float32), {"mode": "train"})[0]
    del out
    after = fastbn.show_config("dicts")["buffer_cache"]
    assert after["bytes"] >= x.nbytes and after["blocks"] >= 1
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        fastbn.show_config()
    assert "buffer cache:" in buf.getvalue() and "freed outputs kept" in buf.getvalue()


def test_show_config_bad_mode_names_argument():
    with pytest.raises(ValueError, match="mode"):
        fastbn.show_config("json")


def test_openmp_flag_agrees_with_binary():
    # _threads and _buildinfo are separate binaries built with the same flags
    assert fastbn.openmp_enabled() == (_buildinfo.openmp_version() > 0)


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"),
                    reason="x86-64 instruction-set levels")
def test_baseline_build_is_portable_x86_64():
    """The baseline modules use nothing beyond SSE2: no -march=native leaks in.

    (The AVX2 build of the kernels is separate and loaded only on CPUs with AVX2.)
    """
    from fastbn import _bn
    assert "SSE2" in _buildinfo.isa()
    assert not {"SSE4.1", "SSE4.2", "AVX", "AVX2", "FMA", "AVX512F"} & set(_buildinfo.isa())
    assert _bn.kernel_isa() == "baseline"


def test_cli_info_prints_show_config(capsys):
    from fastbn.cli import main
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "OpenMP:" in out and "backend:" in out


def test_py_typed_marker_ships():
    assert (PKG / "py.typed").is_file()


def _stubbed_functions(stub):
    """Functions a stub declares, following ``from .other import *`` re-exports
    (the AVX2 builds' stubs re-export their baseline module's)."""
    names = set()
    for node in ast.parse(stub.read_text()).body:
        if isinstance(node, ast.FunctionDef):
            names.add(node.name)
        elif (isinstance(node, ast.ImportFrom) and node.level == 1
              and [a.name for a in node.names] == ["*"]):
            names |= _stubbed_functions(stub.with_name(f"{node.module}.pyi"))
    return names


@pytest.mark.parametrize("name", EXTENSIONS)
def test_every_extension_has_a_matching_stub(name):
    """The .pyi lists exactly the public functions the extension exports."""
    stub = PKG / f"{name}.pyi"
    assert stub.is_file(), f"{name} has no type stub {stub.name}"
    isa = name.rsplit("_", 1)[-1]
    if isa in ("avx2", "avx512") and not fastbn._dispatch.cpu_supports(isa):
        pytest.skip(f"importing an {isa} build on a CPU without it dies of SIGILL")
    stubbed = _stubbed_functions(stub)
    mod = importlib.import_module(f"fastbn.{name}")
    exported = {k for k, v in vars(mod).items()
                if callable(v) and not k.startswith("_") and not isinstance(v, type)
                and getattr(v, "__module__", None) == mod.__name__}
    assert stubbed == exported
