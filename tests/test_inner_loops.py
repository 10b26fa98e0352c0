"""The kernels' inner loops as built: float32 passes run in float32 lanes of
the build's vector width, with no conversion to float64 inside the loop
and float64 only in the carries of float32 partials (read from the machine
code by fastbn.benchmark.inner_loops)."""
import shutil

import pytest

from fastbn import _dispatch
from fastbn.benchmark import inner_loops

pytestmark = pytest.mark.skipif(shutil.which("objdump") is None, reason="needs binutils' objdump")

# float32 lanes per vector of each build
LANES = {"baseline": 4, "avx2": 8, "avx512": 16}

BUILDS = [b for b in LANES if inner_loops.module_path("_bn" if b == "baseline" else f"_bn_{b}")]


@pytest.fixture(scope="module", params=BUILDS)
def loops(request):
    found = inner_loops.contiguous(inner_loops.analyse([request.param]))
    if not any(lp.function.startswith("fastbn_") for lp in found):
        pytest.skip("kernel modules built without debug info: no kernel names")
    return request.param, found


def _hot(found, function):
    rows = [lp for _, lp in inner_loops.pass_rows(found) if lp.function == function]
    assert rows, f"no contiguous vector loop of {function} found"
    return rows[0]


@pytest.mark.parametrize("function, rows", [
    ("fastbn_block8_sums_f", 8),
    ("fastbn_block4_grad_f", 4),
    ("fastbn_runacc_sums", 1),
    ("fastbn_runacc_grad", 1),
    ("fastbn_ln_row_grad_f", 1),
])
def test_float32_sums_run_in_float32_lanes(loops, function, rows):
    build, found = loops
    lp = _hot(found, function)
    assert lp.itemsize == 4 and lp.width == LANES[build]
    # a full vector of each row per step at least; the float64 carries of the
    # float32 partials take at most one conversion per vector of elements,
    # half of what converting every element to float64 takes
    assert lp.elements >= rows * LANES[build]
    conversions = sum("cvtps2pd" in i.op for i in lp.body)
    assert conversions * LANES[build] <= lp.elements


# the output loops are a build's widest vectors: batch norm's intrinsics are
# 512 bits wide in the AVX-512 build, layer norm's loop is left to the compiler
@pytest.mark.parametrize("function", [
    "fastbn_norm_row_f", "fastbn_dx_row_f", "fastbn_norm_run_f", "fastbn_dx_run_f",
    "_ln._forward_rows",
])
def test_float32_output_passes_are_vector_loops(loops, function):
    build, found = loops
    lp = _hot(found, function)
    lanes = LANES[build]
    assert lp.itemsize == 4 and lp.width == lanes and lp.elements == lanes
    assert lp.insns <= 16  # a handful of instructions per vector


def test_step_reading_on_known_code():
    """The index step and vector width read from a hand-written loop body."""
    body = [inner_loops.Insn(0, op, args, "f") for op, args in [
        ("vmovups", "(%rdi,%rax,4),%ymm0"), ("vfmadd213ps", "%ymm1,%ymm2,%ymm0"),
        ("vmovups", "%ymm0,(%rsi,%rax,4)"), ("add", "$0x8,%rax"), ("cmp", "%rax,%rdx"),
        ("jne", "10 <f+0x10>")]]
    assert inner_loops._vector_info(body) == (8, 4)
    assert inner_loops._step(body, 4) == 8
    bumped = [inner_loops.Insn(0, "vmovupd", "(%rax),%zmm1", "f"),
              inner_loops.Insn(0, "vaddpd", "%zmm1,%zmm2,%zmm2", "f"),
              inner_loops.Insn(0, "sub", "$0xffffffffffffffc0,%rax", "f")]
    assert inner_loops._vector_info(bumped) == (8, 8)
    assert inner_loops._step(bumped, 8) == 8


def test_cli_table_of_the_build_in_use(loops, capsys, tmp_path):
    build, _ = loops
    if build != _dispatch.KERNEL_ISA:
        pytest.skip("the CLI reads the build in use by default")
    out = tmp_path / "loops.md"
    inner_loops.main(["--mcpu", "--markdown", str(out)])
    printed = capsys.readouterr().out
    assert printed.strip() == out.read_text().strip()
    lines = [ln for ln in printed.splitlines() if "`fastbn_block8_sums_f`" in ln]
    assert len(lines) == 1 and f"| {build} | {LANES[build]} |" in lines[0]


def test_cli_refuses_an_unknown_build(capsys):
    with pytest.raises(SystemExit) as exc:
        inner_loops.main(["--builds", "sse9"])
    assert exc.value.code == 2
    assert "--builds" in capsys.readouterr().err
