"""Reports of a benchmark result: a Markdown table, a dated Markdown page,
a bar chart of the speedups and a heat map of the ``(N, D)`` sweep.

A *result* is the dict :func:`fastbn.benchmark.run_benchmark` returns (and
``fastbn bench --json`` writes); :func:`fastbn.benchmark.pytest_plugin.result_from_pytest_json`
turns a pytest-benchmark JSON file into the same structure, so both are
reported alike.  Tables and legends name only the columns present: no
PyTorch, no PyTorch column and no word about it.
"""
import numpy as np

from .cases import Case
from .machine import header

_TORCHES = ("torch", "torch_warm")
_LEGEND = {
    "fastbn": "fastbn ms: fastbn's best and median single call, in milliseconds.",
    "torch": "torch: PyTorch's own operator (native_batch_norm, native_layer_norm, "
             "native_group_norm and their backwards) on the same memory.",
    "torch_warm": "torch warm: PyTorch in a process whose glibc never returns freed memory "
                  "to the OS (MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_), its best case.",
    "reference": "reference: the NumPy reference backend (fastbn.reference).",
    "stream": "stream: one threaded pass over the same bytes into a reused buffer "
              "(x * 2 forward, x + dout backward), the floor any kernel pays.",
    "ratio": "A / fastbn: how many times faster fastbn is than A, of the best calls, and in "
             "brackets of the median calls (`1.22x (1.10x)`: 1.22 times faster at the best "
             "call, 1.10 at the median); above 1x fastbn is faster.",
    "over_stream": "fastbn / stream: fastbn's best call over the stream's; 1x is the "
                   "memory-bandwidth floor.",
    "faults": "faults / call: mean minor page faults per call (a fresh 4 KiB output page "
              "costs one); they tell which allocator state an implementation ran in.",
}


def _builds(rows):
    """The other kernel builds of fastbn present (``fastbn_avx512``, ...)."""
    return sorted({n for r in rows for n in r["ms"] if n.startswith("fastbn_")})


def _names(rows):
    """Implementations present in any row, in report order."""
    order = ["fastbn", *_builds(rows), "torch", "torch_warm", "reference", "stream"]
    return [n for n in order if any(n in r["ms"] for r in rows)]


def _case_cell(r):
    case = Case.from_dict(r)
    return case.decorate("(" + ", ".join(map(str, case.shape)) + ")")


def _ms(v):
    return "-" if v is None else f"{v:.3f}"


def _x(v, digits=2):
    return "-" if v is None else f"{v:.{digits}f}x"


def _faults_cell(ms, names):
    """Page faults per call of each named implementation: ``0 / 4097``."""
    got = [ms[n].get("faults_per_call") if n in ms else None for n in names]
    return " / ".join("-" if f is None else f"{f:.0f}" for f in got)


def _label(name):
    return name.replace("_", " ")


def format_table(result):
    """The result as a Markdown table: best and median call of fastbn, best
    calls of the others, ratios of the best calls (of the median calls in
    brackets) and page faults per call; only the columns of implementations
    present in the result."""
    rows = result["results"]
    names = _names(rows)
    others = [n for n in names if n != "fastbn"]
    peers = [n for n in others if n != "stream"]           # ratio peer / fastbn
    faults = [n for n in ("fastbn", *_TORCHES) if n in names] \
        if any(v.get("faults_per_call") is not None for r in rows for v in r["ms"].values()) \
        else []
    head = ["shape", "dtype", "pass", "fastbn best ms", "fastbn median ms"]
    head += [f"{_label(n)} ms" for n in others]
    head += [f"{_label(n)} / fastbn, best (median)" for n in peers]
    if "stream" in names:
        head.append("fastbn / stream")
    if faults:
        head.append("faults / call (" + ", ".join(_label(n) for n in faults) + ")")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ms, q, qm = r["ms"], r["ratios"], r.get("ratios_median", {})
        f = ms.get("fastbn", {})
        cells = [_case_cell(r), r["dtype"], r["direction"], _ms(f.get("min")),
                 _ms(f.get("median"))]
        cells += [_ms(ms[n]["min"]) if n in ms else "-" for n in others]
        for n in peers:
            best, med = q.get(n + "_over_fastbn"), qm.get(n + "_over_fastbn")
            digits = 1 if n == "reference" else 2
            cells.append(_x(best, digits) + (f" ({_x(med, digits)})" if med else ""))
        if "stream" in names:
            cells.append(_x(q.get("fastbn_over_stream")))
        if faults:
            cells.append(_faults_cell(ms, faults))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_legend(result):
    """What the table's columns mean, one line per column present."""
    names = _names(result["results"])
    lines = [_LEGEND[n] if n in _LEGEND else
             f"{_label(n)}: fastbn with FASTBN_KERNELS={n[len('fastbn_'):]}, in a worker "
             "of its own." for n in names]
    if len([n for n in names if n != "stream"]) > 1:
        lines.append(_LEGEND["ratio"])
    if "stream" in names:
        lines.append(_LEGEND["over_stream"])
    if any(v.get("faults_per_call") is not None for r in result["results"]
           for v in r["ms"].values()):
        lines.append(_LEGEND["faults"])
    return "\n".join(lines)


def describe_method(result):
    """How the times were taken, in one sentence."""
    if result.get("source") == "pytest-benchmark":
        heap = ", its heap kept warm" if result.get("warm_heap") else ""
        return (f"pytest-benchmark rounds in one process{heap} (best = its min, "
                "median = its median)")
    how = ("one worker process per implementation" if result.get("isolated")
           else "all in one process")
    fewer = " (the reference: fewer)" if "reference" in _names(result["results"]) else ""
    return (f"best and median call of {result['repeat']} interleaved rounds of call "
            f"bursts{fewer}, {how}")


def format_report(result):
    """Header line, method, table and legend, as printed by ``fastbn bench``."""
    return "\n".join([header(result), describe_method(result), "", format_table(result), "",
                      format_legend(result)])


def markdown(result, command=None):
    """A dated Markdown section for the docs' performance page."""
    m = result["machine"]
    lines = [f"### {m['cpu']}, {result['threads']} threads, {result.get('date', '')}", "",
             header(result) + ".", describe_method(result) + ".", ""]
    if command:
        lines += ["Reproduce with:", "", "```", command, "```", ""]
    lines += [format_table(result), ""]
    lines += [f"- {line}" for line in format_legend(result).splitlines()]
    return "\n".join(lines) + "\n"


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def sweep_grid(result):
    """The 2-D batch-norm rows as a grid: (Ns, Ds, {direction: {(N, D): row}}),
    or None when they do not span at least two N and two D."""
    cells = {}
    for r in result["results"]:
        if r.get("kind", "bn") == "bn" and len(r["shape"]) == 2 and r.get("order", "C") == "C" \
                and r.get("threads") is None:
            cells.setdefault(r["direction"], {})[tuple(r["shape"])] = r
    ns = sorted({n for d in cells.values() for n, _ in d})
    ds = sorted({d for c in cells.values() for _, d in c})
    if len(ns) < 2 or len(ds) < 2:
        return None
    return ns, ds, cells


def _heat_key(result):
    rows = result["results"]
    for key, label in (("torch_warm_over_fastbn", "torch warm / fastbn"),
                       ("torch_over_fastbn", "torch / fastbn"),
                       ("fastbn_over_stream", "fastbn / stream")):
        if any(r["ratios"].get(key) for r in rows):
            return key, label
    return "reference_over_fastbn", "reference / fastbn"


def plot_sweep(result, path):
    """Heat map of the sweep: one panel per pass, N down, D across, colour
    the ratio of the best calls (median in brackets) of PyTorch warm (else
    PyTorch, else the stream) to fastbn, on a log scale centred at 1."""
    from matplotlib.colors import LogNorm
    plt = _pyplot()
    ns, ds, cells = sweep_grid(result)
    key, label = _heat_key(result)
    directions = [d for d in ("forward", "backward") if d in cells]
    grids = {}
    for direction in directions:
        g = np.full((len(ns), len(ds)), np.nan)
        for (n, d), r in cells[direction].items():
            v = r["ratios"].get(key)
            g[ns.index(n), ds.index(d)] = np.nan if v is None else v
        grids[direction] = g
    finite = np.concatenate([g[np.isfinite(g)] for g in grids.values()])
    span = max(1.5, float(np.max(np.abs(np.log(finite)))) if finite.size else 1.5)
    norm = LogNorm(vmin=np.exp(-span), vmax=np.exp(span))
    cmap = "RdBu" if key != "fastbn_over_stream" else "RdBu_r"
    fig, axes = plt.subplots(1, len(directions), figsize=(4.2 * len(directions), 4.2),
                             squeeze=False)
    for ax, direction in zip(axes[0], directions):
        g = grids[direction]
        im = ax.imshow(np.where(np.isfinite(g), g, np.nan), cmap=cmap, norm=norm)
        for i, n in enumerate(ns):
            for j, d in enumerate(ds):
                r = cells[direction].get((n, d))
                if r is None or not np.isfinite(g[i, j]):
                    continue
                med = r.get("ratios_median", {}).get(key)
                # white on the dark ends of the colour map, black in between
                dark = abs(np.log(g[i, j])) > 0.6 * span
                ax.text(j, i, f"{g[i, j]:.2f}" + (f"\n({med:.2f})" if med else ""),
                        ha="center", va="center", fontsize=7,
                        color="white" if dark else "black")
        ax.set_xticks(range(len(ds)), [str(d) for d in ds])
        ax.set_yticks(range(len(ns)), [str(n) for n in ns])
        ax.set_xlabel("D (features)")
        ax.set_ylabel("N (batch)")
        ax.set_title(f"{direction}: {label}", fontsize=9)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label=f"{label} (best call)")
    fig.suptitle(header(result), fontsize=7)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_bars(result, path):
    """Bar chart of the speedups of fastbn over each peer (log scale)."""
    plt = _pyplot()
    rows = result["results"]
    labels = [f"{_case_cell(r)} {r['dtype']}\n{r['direction']}" for r in rows]
    names = _names(rows)
    series = [(f"vs {_label(n)}" + (" (heap kept)" if n == "torch_warm" else ""),
               n + "_over_fastbn") for n in ("torch", "torch_warm", "reference") if n in names]
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(rows)), 4))
    xs = np.arange(len(rows))
    for k, (name, key) in enumerate(series):
        ax.bar(xs + k * width, [r["ratios"].get(key) or np.nan for r in rows], width,
               label=name)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_yscale("log")
    ax.set_xticks(xs + width * (len(series) - 1) / 2)
    ax.set_xticklabels(labels, fontsize=7, rotation=30, ha="right")
    ax.set_ylabel("speedup of fastbn (x, log scale)")
    ax.set_title(header(result), fontsize=7)
    if series:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot(result, path):
    """The chart of a result: the sweep's heat map when the result is an
    ``(N, D)`` grid and nothing else, else a bar chart of the speedups."""
    grid = sweep_grid(result)
    if grid is not None and sum(len(c) for c in grid[2].values()) == len(result["results"]):
        plot_sweep(result, path)
    else:
        plot_bars(result, path)
