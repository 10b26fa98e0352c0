"""`fastbn bench`: the command runs and its JSON has the documented structure.

Timing values are not asserted (speed lives in bench/); only that every
shape, pass and implementation is reported with positive times and ratios
that are the quotients of those times.
"""
import json

import pytest

from fastbn import cli
from fastbn.benchmark import format_table, parse_shape


def test_bench_json_structure(tmp_path, capsys):
    path = tmp_path / "bench.json"
    rc = cli.main(["bench", "--shapes", "7x5", "3x2x4x5:f64", "--repeat", "2",
                   "--threads", "1", "--no-torch", "--json", str(path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "| (7, 5) | float32 | forward |" in out
    assert "| (3, 2, 4, 5) | float64 | backward |" in out
    data = json.loads(path.read_text())
    assert data["threads"] == 1 and data["repeat"] == 2
    assert data["torch_version"] is None
    assert {"cpu", "logical_cpus", "numpy"} <= set(data["machine"])
    got = [(tuple(r["shape"]), r["dtype"], r["direction"]) for r in data["results"]]
    assert got == [((7, 5), "float32", "forward"), ((7, 5), "float32", "backward"),
                   ((3, 2, 4, 5), "float64", "forward"), ((3, 2, 4, 5), "float64", "backward")]
    for r in data["results"]:
        assert set(r["ms"]) == {"fastbn", "reference", "stream"}
        for name, t in r["ms"].items():
            assert 0 < t["min"] <= t["median"]
            assert t["n"] >= 2 if name != "reference" else t["n"] >= 1
            assert t["faults_per_call"] is None or t["faults_per_call"] >= 0
        q, ms = r["ratios"], r["ms"]
        assert q["torch_over_fastbn"] is None
        assert q["reference_over_fastbn"] == pytest.approx(
            ms["reference"]["min"] / ms["fastbn"]["min"])
        assert q["fastbn_over_stream"] == pytest.approx(ms["fastbn"]["min"] / ms["stream"]["min"])
        assert r["ratios_median"]["reference_over_fastbn"] == pytest.approx(
            ms["reference"]["median"] / ms["fastbn"]["median"])
    # the printed table is the JSON's table
    assert format_table(data) in out


def test_time_rounds_counts_page_faults():
    # a call that maps and touches 64 fresh pages must be charged >= 64 faults
    # per call; a call that touches nothing must not be charged them
    import mmap
    from fastbn.benchmark import minor_faults, run_burst, time_rounds
    if minor_faults() is None:
        pytest.skip("no getrusage on this platform")
    pages = 64

    def touch():
        m = mmap.mmap(-1, pages * mmap.PAGESIZE)
        m[::mmap.PAGESIZE] = b"\1" * pages
        m.close()

    fns = {"touch": touch, "idle": lambda: None}
    faults = {}
    times = time_rounds(lambda name, *args: run_burst(fns[name], *args), list(fns), repeat=3,
                        burst=4, burst_s=0, settle_s=0, faults=faults)
    assert set(faults) == {"touch", "idle"}
    assert faults["touch"] >= pages * len(times["touch"])
    assert faults["idle"] < pages * len(times["idle"])


def test_bench_in_process_matches_isolated_structure(tmp_path, capsys):
    # --in-process: the same rows and names, one process; the JSON says which
    args = ["bench", "--shapes", "6x4", "--repeat", "1", "--threads", "1", "--no-torch"]
    path = tmp_path / "a.json"
    assert cli.main(args + ["--in-process", "--json", str(path)]) == 0
    a = json.loads(path.read_text())
    assert cli.main(args + ["--json", str(path)]) == 0
    b = json.loads(path.read_text())
    assert a["isolated"] is False and b["isolated"] is True
    assert "all in one process" in capsys.readouterr().out
    for ra, rb in zip(a["results"], b["results"]):
        assert (ra["shape"], ra["direction"]) == (rb["shape"], rb["direction"])
        assert set(ra["ms"]) == set(rb["ms"]) == {"fastbn", "reference", "stream"}


def test_bench_worker_failure_is_an_error_not_a_hang():
    from fastbn.benchmark import _Workers
    workers = _Workers(["fastbn", "no_such_impl"], 1)
    try:
        with pytest.raises(RuntimeError, match="no_such_impl worker failed"):
            workers.setup(((3, 2), "float32"), "forward")
    finally:
        workers.close()
    assert not any(p.is_alive() for p in workers.procs)


def test_bench_failing_worker_leaves_settings_as_they_were():
    # a case the workers cannot build (1-D shape, past parse_shape's check):
    # a RuntimeError naming the worker, no hang, the caller's thread setting kept
    import fastbn
    from fastbn import _config
    from fastbn.benchmark import run_benchmark
    saved = _config._user_threads
    fastbn.set_num_threads(3)           # differs from the threads=1 the bench sets
    try:
        with pytest.raises(RuntimeError, match="fastbn worker failed: IndexError"):
            run_benchmark([((3,), "float32")], threads=1, repeat=1, torch=None)
        assert fastbn.get_num_threads() == 3
    finally:
        fastbn.set_num_threads(saved)


def test_bench_torch_workers(tmp_path):
    # PyTorch twice, as it comes and with a heap kept (glibc): both timed,
    # both ratios are quotients of the times, faults counted for each
    pytest.importorskip("torch")
    import os
    from fastbn.benchmark import WARM_HEAP_ENV, has_glibc, run_benchmark
    before = {k: os.environ.get(k) for k in WARM_HEAP_ENV}
    r = run_benchmark([((6, 4), "float32")], threads=1, repeat=1)
    # the heap settings went to the torch_warm worker only, not to this process
    assert {k: os.environ.get(k) for k in WARM_HEAP_ENV} == before
    want = {"fastbn", "torch", "reference", "stream"} | ({"torch_warm"} if has_glibc() else set())
    for row in r["results"]:
        assert set(row["ms"]) == want
        for name in want - {"fastbn", "stream"}:
            assert row["ratios"][name + "_over_fastbn"] == pytest.approx(
                row["ms"][name]["min"] / row["ms"]["fastbn"]["min"])
            assert row["ratios_median"][name + "_over_fastbn"] == pytest.approx(
                row["ms"][name]["median"] / row["ms"]["fastbn"]["median"])
            assert row["ms"][name]["faults_per_call"] is None or \
                row["ms"][name]["faults_per_call"] >= 0
    assert format_table(r).count("|\n") == len(r["results"]) + 1


def test_bench_restores_thread_setting(tmp_path):
    import fastbn
    before = fastbn.get_num_threads()
    cli.main(["bench", "--shapes", "4x3", "--repeat", "1", "--threads", "1", "--no-torch"])
    assert fastbn.get_num_threads() == before


@pytest.mark.parametrize("text,want", [
    ("256x4096", ((256, 4096), "float32")),
    ("100x500:f64", ((100, 500), "float64")),
    ("2x3x4x5:float32", ((2, 3, 4, 5), "float32")),
])
def test_parse_shape(text, want):
    assert parse_shape(text) == want


@pytest.mark.parametrize("text", ["256", "2x3x4", "0x5", "axb", "4x5:f16"])
def test_parse_shape_rejects(text):
    with pytest.raises(ValueError, match="shape"):
        parse_shape(text)


def test_bench_rejects_bad_threads(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["bench", "--threads", "0", "--no-torch"])
    assert info.value.code == 2
    assert "--threads" in capsys.readouterr().err


def test_bench_without_torch_explains_only_present_columns(capsys):
    assert cli.main(["bench", "--shapes", "5x3", "--repeat", "1", "--threads", "1",
                     "--no-torch"]) == 0
    out = capsys.readouterr().out
    assert "torch" not in out.lower()
    assert "reference / fastbn, best (median)" in out       # the bracket explained in the head
    assert "stream:" in out and "reference:" in out          # the legend of the columns present


def test_bench_impls_fastbn_only(tmp_path, capsys):
    path = tmp_path / "r.json"
    assert cli.main(["bench", "--shapes", "5x3", "--repeat", "1", "--threads", "1",
                     "--impls", "fastbn", "--in-process", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    data = json.loads(path.read_text())
    assert all(set(r["ms"]) == {"fastbn"} for r in data["results"])
    assert "stream" not in out and "reference" not in out


def test_sweep_grid_definition():
    from fastbn.benchmark import sweep_cases
    cases = sweep_cases()
    cells = {c.shape for c in cases}
    want = {(n, d) for n in (8, 64, 256, 1024, 4096, 16384) for d in (256, 1024, 4096)
            if n * d <= 1 << 24}
    assert cells == want and len(cases) == len(want)
    assert (16384, 4096) not in cells and (4096, 4096) in cells
    assert all(c.dtype == "float32" and c.kind == "bn" for c in cases)


def test_sweep_heat_map_and_markdown(tmp_path, monkeypatch):
    # a small grid through the same code path as --sweep: the JSON carries the
    # machine facts, the plot is a heat map, the markdown quotes the command
    pytest.importorskip("matplotlib")
    from fastbn.benchmark import cases, cli as bench_cli
    from fastbn.benchmark.report import sweep_grid
    monkeypatch.setitem(cases.SUITES, "sweep", cases.sweep_cases(ns=(4, 6), ds=(3, 5)))
    path, png, md = tmp_path / "s.json", tmp_path / "s.png", tmp_path / "s.md"
    assert bench_cli.main(["--sweep", "--repeat", "1", "--threads", "1", "--no-torch",
                           "--json", str(path), "--plot", str(png), "--markdown", str(md)]) == 0
    data = json.loads(path.read_text())
    assert data["kernels"] and data["machine"]["cpu"] and data["threads"] == 1
    assert "torch_version" in data and data["date"]
    ns, ds, cells = sweep_grid(data)
    assert ns == [4, 6] and ds == [3, 5] and set(cells) == {"forward", "backward"}
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    text = md.read_text()
    assert "fastbn bench --sweep --repeat 1" in text and data["date"] in text
    assert data["machine"]["cpu"] in text


def test_bench_cases_of_every_kind_in_process(tmp_path):
    # layer norm, channels-last, F-order, a 1-thread case and group norm through one runner
    from fastbn.benchmark import Case, run_benchmark
    from fastbn.benchmark.report import format_table
    cs = [Case("ln", (6, 5)), Case("nhwc", (2, 3, 4, 5)), Case("ln", (6, 5), order="F"),
          Case("bn", (4, 3), "float64", threads=1), Case("gn", (2, 4, 3, 3), groups=2)]
    r = run_benchmark(cs, threads=1, repeat=1, torch=None, isolate=False)
    assert [(x["kind"], x["direction"]) for x in r["results"]] == \
        [(c.kind, d) for c in cs for d in ("forward", "backward")]
    table = format_table(r)
    assert "LN (6, 5)" in table and "(2, 3, 4, 5) NHWC" in table and "F-order" in table
    assert "(4, 3) 1 thread" in table and "GN G=2 (2, 4, 3, 3)" in table
    for row in r["results"]:
        assert {"fastbn", "reference", "stream"} <= set(row["ms"])



def test_under_load_report_has_the_control_and_the_stall_counts(tmp_path, capsys):
    """A short --under-load run: every case and the NumPy control, quiet and
    loaded, with p99, maximum and the count of calls over 5 ms, and the hog
    stopped afterwards."""
    import shutil
    import subprocess
    from fastbn.benchmark import load
    path = tmp_path / "load.json"
    load.run_under_load(json_path=str(path), seconds=0.05)
    out = capsys.readouterr().out
    got = json.loads(path.read_text())
    labels = [r["label"] for r in got["results"]]
    assert labels == [c.label for c in load.LOAD_CASES] + [load.CONTROL_LABEL]
    assert load.CONTROL_LABEL in out and "calls > 5 ms" in out
    for r in got["results"]:
        for phase in ("quiet_ms", "loaded_ms"):
            s = r[phase]
            assert s["n"] >= 1 and 0 < s["median"] <= s["p99"] <= s["max"]
            assert 0 <= s["over_slow"] <= s["n"]
    assert got["results"][-1]["threads"] == {"quiet": 1, "loaded": 1}
    if shutil.which("ps"):          # the hog process is gone
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        assert "while True" not in ps


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_stream_sizes_its_team_on_every_call(monkeypatch, direction):
    # the floor is threaded as the kernels are at the time of the call: a
    # team size fixed at setup would hold a moment's load for the whole run
    import fastbn
    from fastbn import _cpus, _stream
    from fastbn.benchmark.cases import Case, implementations
    case = Case("bn", (512, 1024))
    fn = implementations(case, direction, which=("stream",))["stream"]
    seen, name = [], "scale2" if direction == "forward" else "add"
    real = getattr(_stream, name)

    def spy(*args):
        seen.append(args[-1])
        return real(*args)

    monkeypatch.setattr(_stream, name, spy)
    saved = fastbn.get_num_threads()
    fastbn.set_num_threads(2)
    try:
        for free in (2, 1, 2):
            monkeypatch.setattr(_cpus, "free_cpus", lambda free=free: free)
            fn()
    finally:
        fastbn.set_num_threads(saved)
    assert seen == [2, 1, 2]


def test_bench_other_kernel_builds(tmp_path, capsys, monkeypatch):
    # --kernels: each named build in a worker of its own, started with
    # FASTBN_KERNELS set (this process's environment untouched), its ratio to
    # the build in use a quotient of the times, the builds named in the JSON
    import os
    from fastbn import _dispatch
    from fastbn.benchmark import run_benchmark
    before = os.environ.get("FASTBN_KERNELS")
    r = run_benchmark([((6, 4), "float32")], threads=1, repeat=1, torch=None,
                      impls=("fastbn", "stream"), kernels=["baseline"])
    assert os.environ.get("FASTBN_KERNELS") == before
    assert r["kernel_builds"] == {"fastbn": r["kernels"], "fastbn_baseline": "baseline"}
    for row in r["results"]:
        assert set(row["ms"]) == {"fastbn", "fastbn_baseline", "stream"}
        assert row["ratios"]["fastbn_baseline_over_fastbn"] == pytest.approx(
            row["ms"]["fastbn_baseline"]["min"] / row["ms"]["fastbn"]["min"])
    with pytest.raises(ValueError, match="kernels: unknown kernel build 'sse9'"):
        run_benchmark([((6, 4), "float32")], threads=1, repeat=1, torch=None,
                      kernels=["sse9"])
    monkeypatch.setattr(_dispatch, "cpu_supports", lambda isa: isa != "avx2")
    with pytest.raises(ValueError, match="kernels: this CPU cannot run the avx2 build"):
        run_benchmark([((6, 4), "float32")], threads=1, repeat=1, torch=None,
                      kernels=["avx2"])
    monkeypatch.undo()
    with pytest.raises(ValueError, match="isolate=False"):
        run_benchmark([((6, 4), "float32")], threads=1, repeat=1, torch=None,
                      isolate=False, kernels=["baseline"])
    path = tmp_path / "r.json"
    assert cli.main(["bench", "--shapes", "5x3", "--repeat", "1", "--threads", "1",
                     "--impls", "fastbn", "--kernels", "baseline", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "fastbn baseline / fastbn, best (median)" in out
    assert "fastbn baseline: fastbn with FASTBN_KERNELS=baseline" in out
