"""Instructions per element of the compiled kernels' inner loops.

Reads the kernel modules fastbn was built with (``objdump -d -l``: the
machine code with the debug info's source lines), finds every single-block
loop that does vector arithmetic, names the kernel function it belongs to,
and reports per loop: instructions per iteration, elements per iteration
and per element, and -- when LLVM's ``llvm-mca`` is installed -- the
cycles per element that its model of a CPU predicts for the loop running
from L1 (``--mcpu``: ``sapphirerapids`` for recent Intel Xeons, ``znver3``
for the AMD core that Zen 4 extends with AVX-512; LLVM 16 and later also
know ``znver4``).

A pass keeps up with memory when its cycles per element stay below what
memory takes per element: float32 read and written once is 8 bytes per
element, 0.3 ns at 25 GB/s per core, about one cycle at 3 GHz.

    python -m fastbn.benchmark.inner_loops               # the build fastbn uses
    python -m fastbn.benchmark.inner_loops --builds avx2 avx512 --markdown loops.md
    python -m fastbn.benchmark.inner_loops --all         # every vector loop found

It needs the modules' debug info (the build's ``-g``, on by default) for the
kernel names; a stripped build shows none.

Elements per iteration: the loop index's step (in elements, from the scale
of its vector memory operands) times the rows one iteration covers, which
the multi-row kernels below declare; loops whose step cannot be read show
"-".
"""
import argparse
import collections
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field

from .. import _dispatch

MODULES = ("_bn", "_moments", "_ln", "_gn")

# the hot loops of each pass, as the docs' table shows them (--all: every
# vector loop found); float64 twins end in _d instead of _f
PASSES = (
    ("batch norm (N, D): statistics, 8-row blocks", "fastbn_block8_sums_f"),
    ("batch norm (N, D): output, 4 rows at a time", "fastbn_norm_rows4_f"),
    ("batch norm (N, D): output, a row at a time", "fastbn_norm_row_f"),
    ("batch norm (N, D) backward: gradient sums, 4-row blocks", "fastbn_block4_grad_f"),
    ("batch norm (N, D) backward: dx, 4 rows at a time", "fastbn_dx_rows4_f"),
    ("batch norm (N, D) backward: dx, a row at a time", "fastbn_dx_row_f"),
    ("runs (NCHW channels, layer-norm rows, groups): sums", "fastbn_runacc_sums"),
    ("runs: gradient sums", "fastbn_runacc_grad"),
    ("runs: output", "fastbn_norm_run_f"),
    ("runs: dx", "fastbn_dx_run_f"),
    ("layer norm: output of a row", "_ln._forward_rows"),
    ("layer norm backward: row sums and column partials", "fastbn_ln_row_grad_f"),
    ("layer norm backward: dx of a row", "fastbn_ln_rows_backward_f"),
    ("group norm, channels last: output", "fastbn_gn_block_forward_f"),
    ("group norm, channels last: dx", "fastbn_gn_block_backward_f"),
)

# rows of the input one iteration of the kernel's inner loop covers (the
# others cover one row, or one run, per iteration)
ROWS_PER_ITERATION = {
    "fastbn_block8_sums_f": 8,
    "fastbn_block8_sums_d": 8,
    "fastbn_block4_grad_f": 4,
    "fastbn_block4_grad_d": 4,
    "fastbn_norm_rows4_f": 4,
    "fastbn_norm_rows4_d": 4,
    "fastbn_dx_rows4_f": 4,
    "fastbn_dx_rows4_d": 4,
    "_ln._backward_row_pair": 2,
}

# inlined helpers too small to own a loop: a loop is named after the
# kernel that calls them
HELPERS = re.compile(r"fastbn_(vf|vd|vfacc|hsum|center_fold|blend|dx_coef|prefetch|"
                     r"stream_fence|finish)")

_INSN = re.compile(r"^\s*([0-9a-f]+):\t(\S+)\s*(.*)$")
_SYMBOL = re.compile(r"^[0-9a-f]+ <(.+)>:$")
_LABEL = re.compile(r"^([A-Za-z_][\w.]*)\(\):$")
_JUMP = re.compile(r"^j(?!mp)[a-z]+$")
_TARGET = re.compile(r"^([0-9a-f]+) <")
_VECTOR = re.compile(r"%[xyz]mm\d+")
# packed (not scalar ss/sd) operations and vector data movement, VEX or SSE
_PACKED = re.compile(r"(ps|pd|unpck\w*|perm\w*|shuf\w*|broadcast\w*|insert\w*|extract\w*)$")
_MEMIDX = re.compile(r"\((%\w+)?,(%\w+),(\d)\)")


@dataclass
class Insn:
    addr: int
    op: str
    args: str
    label: str
    intrinsic: bool = False  # from an intrinsic (hand-written vector code)


@dataclass
class Loop:
    module: str          # "_bn", "_ln", ...
    build: str           # "baseline", "avx2", "avx512"
    function: str
    body: list
    width: int = 0
    itemsize: int = 0
    step: int = 0
    mca: dict = field(default_factory=dict)

    @property
    def hand_written(self):
        """Built from intrinsics: the kernel's own vector loop, not a loop
        the compiler vectorized (such as a remainder loop, which in a wider
        build than the intrinsics' may get wider vectors but runs for the
        last few elements only)."""
        return any(i.intrinsic for i in self.body)

    @property
    def rows(self):
        return ROWS_PER_ITERATION.get(self.function, 1)

    @property
    def elements(self):
        return self.step * self.rows

    @property
    def insns(self):
        return len(self.body)


def _kernel_name(label):
    """'fastbn_rows_sums_f' stays; Cython's '__pyx_f_6fastbn_3_ln__forward_rows'
    (and its fused-type twins) becomes '_ln._forward_rows'."""
    m = re.search(r"__pyx_f_6fastbn_\d+(_[a-z]+)(?:_avx2|_avx512)?_(_\w+)$", label)
    if m:
        return f"{m.group(1)}.{m.group(2)}"
    return label


def disassemble(path, objdump="objdump"):
    """The module's instructions, each with the innermost kernel function
    (debug info) it comes from, grouped per symbol."""
    text = subprocess.run([objdump, "-d", "-l", "--no-show-raw-insn", path], check=True,
                          capture_output=True, text=True).stdout
    symbols, current, label, intrinsic = {}, None, "", False
    for line in text.splitlines():
        m = _SYMBOL.match(line)
        if m:
            current = symbols.setdefault(m.group(1), [])
            label, intrinsic = m.group(1), False
            continue
        m = _LABEL.match(line)
        if m:
            name = m.group(1)
            intrinsic = name.startswith("_mm")
            if not intrinsic and not HELPERS.match(name):
                label = name
            continue
        m = _INSN.match(line)
        if m and current is not None:
            args = m.group(3).split("#")[0].strip()
            current.append(Insn(int(m.group(1), 16), m.group(2), args, label, intrinsic))
    return symbols


def _packed(insn):
    return bool(_PACKED.search(insn.op) and _VECTOR.search(insn.args))


def _vector_info(body):
    """(lanes, itemsize) of the loop's widest vector arithmetic."""
    regs = {"x": 16, "y": 32, "z": 64}
    width, ps, pd = 0, 0, 0
    for i in body:
        if not _packed(i):
            continue
        for r in _VECTOR.findall(i.args):
            width = max(width, regs[r[1]])
        ps += i.op.endswith("ps")
        pd += i.op.endswith("pd")
    itemsize = 4 if ps >= pd else 8
    return (width // itemsize if width else 0), itemsize


def _step(body, itemsize):
    """Elements the loop index advances per iteration, or 0 when unreadable."""
    scales = collections.Counter()
    for i in body:
        if _VECTOR.search(i.args):
            for _, idx, scale in _MEMIDX.findall(i.args):
                scales[(idx, int(scale))] += 1
    if not scales:
        # pointer-bumping loops: the common increment of the vector pointers
        bumps = collections.Counter()
        bases = {b for i in body if _VECTOR.search(i.args)
                 for b in re.findall(r"\((%\w+)\)", i.args)}
        for i in body:
            m = re.match(r"^\$(-?0x[0-9a-f]+|-?\d+),(%\w+)$", i.args)
            if i.op in ("add", "sub") and m and m.group(2) in bases:
                v = int(m.group(1), 0)
                v = v - (1 << 64) if v >= 1 << 63 else v  # objdump prints -128 as 0xff..80
                v = v if i.op == "add" else -v
                bumps[v] += 1
        if not bumps:
            return 0
        v = bumps.most_common(1)[0][0]
        return v // itemsize if v > 0 and v % itemsize == 0 else 0
    (idx, scale), _ = scales.most_common(1)[0]
    # the index may be a copy of the register that is stepped (mov chains)
    copies = {}
    for i in body:
        m = re.match(r"^(%\w+),(%\w+)$", i.args)
        if i.op == "mov" and m:
            copies[m.group(2)] = m.group(1)
    chain = [idx]
    while chain[-1] in copies and copies[chain[-1]] not in chain and len(chain) < 8:
        chain.append(copies[chain[-1]])
    for i in body:
        m = re.match(r"^\$(0x[0-9a-f]+|\d+),(%\w+)$", i.args)
        if i.op == "add" and m and m.group(2) in chain:
            v = int(m.group(1), 0) * scale
            return v // itemsize if v % itemsize == 0 else 0
    return 0


def find_loops(module, build, symbols, min_vector=4):
    """Single-block loops with at least min_vector vector instructions, one
    entry per (function, instruction sequence): a kernel inlined in several
    places shows once."""
    found = {}
    for insns in symbols.values():
        index = {i.addr: k for k, i in enumerate(insns)}
        for k, i in enumerate(insns):
            if not _JUMP.match(i.op):
                continue
            m = _TARGET.match(i.args)
            if not m:
                continue
            start = index.get(int(m.group(1), 16))
            if start is None or start >= k:
                continue
            body = [b for b in insns[start:k + 1] if not b.op.startswith(("nop", "cs", "data"))]
            if any(_JUMP.match(b.op) or b.op == "jmp" for b in body[:-1]):
                continue
            if sum(map(_packed, body)) < min_vector:
                continue
            labels = collections.Counter(b.label for b in body)
            function = _kernel_name(labels.most_common(1)[0][0])
            key = (function, tuple(b.op for b in body))
            if key in found:
                continue
            loop = Loop(module, build, function, body)
            lanes, loop.itemsize = _vector_info(body)
            loop.width = lanes
            loop.step = _step(body, loop.itemsize)
            found[key] = loop
    return list(found.values())


def mca_cycles(loop, mcpu, tool="llvm-mca", iterations=200):
    """llvm-mca's predicted cycles per iteration of the loop body on mcpu."""
    asm = "\n".join(f"{i.op} {i.args}" for i in loop.body[:-1]) + "\n"
    got = subprocess.run([tool, f"-mcpu={mcpu}", f"-iterations={iterations}"], input=asm,
                         capture_output=True, text=True)
    m = re.search(r"Total Cycles:\s+(\d+)", got.stdout)
    return int(m.group(1)) / iterations if m else None


def module_path(name):
    """Where fastbn.<name> is installed (found, not imported: a build for a
    wider instruction set than the CPU's would die of SIGILL on import)."""
    spec = importlib.util.find_spec(f"fastbn.{name}")
    return spec.origin if spec is not None else None


def analyse(builds, objdump="objdump"):
    """Every vector loop of the kernel modules of these builds."""
    loops = []
    for build in builds:
        for mod in MODULES:
            path = module_path(mod if build == "baseline" else f"{mod}_{build}")
            if path is not None:
                loops += find_loops(mod, build, disassemble(path, objdump))
    return loops


def contiguous(loops):
    """The loops over contiguous data: full vectors per iteration (strided
    loops assemble their vectors an element at a time); Cython's own helpers
    left out."""
    return [lp for lp in loops
            if not lp.function.startswith("__pyx") and lp.width and lp.step >= lp.width]


def pass_rows(loops):
    """(pass, loop) per PASSES entry, dtype and build: the function's loop
    from the first module of MODULES that has it -- a hand-written one where
    the function has any, then the widest vectors, the most elements per
    iteration, the fewest instructions."""
    rows = []
    builds = list(dict.fromkeys(lp.build for lp in loops))
    for itemsize, dtype in ((4, "float32"), (8, "float64")):
        for name, function in PASSES:
            if itemsize == 8 and function.endswith("_f"):
                function = function[:-2] + "_d"
            for build in builds:
                cands = [lp for lp in loops if lp.function == function
                         and lp.itemsize == itemsize and lp.build == build]
                if not cands:
                    continue
                first = min(MODULES.index(c.module) for c in cands)
                best = max((c for c in cands if c.module == MODULES[first]),
                           key=lambda c: (c.hand_written, c.width, c.elements, -c.insns))
                rows.append((f"{name}, {dtype}", best))
    return rows


def table(rows, mcpus):
    """Markdown: one line per (pass, loop)."""
    head = ["pass", "kernel function", "build", "lanes", "insns / iteration",
            "elements / iteration", "insns / element"] + [f"{m} cycles / element"
                                                         for m in mcpus]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, lp in rows:
        per = f"{lp.insns / lp.elements:.2f}" if lp.elements else "-"
        cyc = [lp.mca.get(m) for m in mcpus]
        cells = [name, f"`{lp.function}`", lp.build, str(lp.width), str(lp.insns),
                 str(lp.elements) if lp.elements else "-", per]
        cells += [f"{c / lp.elements:.2f}" if c and lp.elements else "-" for c in cyc]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--builds", nargs="+", default=[_dispatch.KERNEL_ISA],
                    choices=[b for b in _dispatch.KERNEL_BUILDS if b != "auto"],
                    help="kernel builds to read (default: the one in use)")
    ap.add_argument("--mcpu", nargs="*", default=["sapphirerapids", "znver3"],
                    help="llvm-mca CPU models (default: sapphirerapids znver3; "
                         "LLVM before 16 has no znver4)")
    ap.add_argument("--all", action="store_true",
                    help="every contiguous vector loop, not only the passes' hot loops")
    ap.add_argument("--objdump", default=os.environ.get("OBJDUMP", "objdump"))
    ap.add_argument("--llvm-mca", default=os.environ.get("LLVM_MCA", "llvm-mca"))
    ap.add_argument("--markdown", metavar="FILE", help="also write the table to FILE")
    args = ap.parse_args(argv)
    if shutil.which(args.objdump) is None:
        ap.error(f"{args.objdump} not found (binutils)")
    mcpus = args.mcpu if shutil.which(args.llvm_mca) else []
    if args.mcpu and not mcpus:
        print(f"{args.llvm_mca} not found: no cycle predictions", file=sys.stderr)
    loops = contiguous(analyse(args.builds, args.objdump))
    if args.all:
        rows = [(f"{lp.module}", lp) for lp in sorted(
            loops, key=lambda lp: (lp.module, lp.function, lp.build, -lp.width))]
    else:
        rows = pass_rows(loops)
    for _, lp in rows:
        for mcpu in mcpus:
            lp.mca[mcpu] = mca_cycles(lp, mcpu, args.llvm_mca)
    out = table(rows, mcpus)
    print(out)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(out + "\n")


if __name__ == "__main__":
    main()
