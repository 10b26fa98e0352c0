"""Shipped build vs baseline vs ``-march=native`` build of the hot kernels.

Builds the extensions from this checkout into temporary directories -- once
with the flags a wheel gets, once adding ``-march=native`` -- then runs
``python -m fastbn.benchmark --impls fastbn --in-process`` (the same cases
and timing as ``fastbn bench``) in each configuration, alternating
configurations between rounds so machine noise hits all alike, and prints
one table of best times and ratios to the first configuration.

Default configurations (NAME=CFLAGS@FASTBN_KERNELS):

* ``native=-march=native@baseline``: everything compiled for this CPU;
* ``shipped=@auto``: what a wheel runs here (the dispatcher's pick);
* ``baseline=@baseline``: the portable SSE2 kernels every x86-64 CPU runs.

    python scripts/bench_isa.py [--threads 1] [--rounds 3] [--json out.json]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPES = ["64x64x56x56", "4096x1024"]


def build(dest, extra_cflags):
    """Build the package into dest/ (extensions + Python files)."""
    env = dict(os.environ)
    env["CFLAGS"] = (env.get("CFLAGS", "") + " " + extra_cflags).strip()
    subprocess.run([sys.executable, "setup.py", "build_ext", "-j", "2",
                    "-b", dest, "-t", os.path.join(dest, "tmp")],
                   cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    shutil.copytree(os.path.join(ROOT, "src", "fastbn"), os.path.join(dest, "fastbn"),
                    ignore=shutil.ignore_patterns("*.so", "*.c", "*.pyd", "__pycache__"),
                    dirs_exist_ok=True)


def run_bench(path, isa_env, threads, repeat, out):
    """One ``fastbn bench`` run of the build in ``path``; its result dict."""
    subprocess.run([sys.executable, "-m", "fastbn.benchmark", "--impls", "fastbn",
                    "--in-process", "--threads", str(threads), "--repeat", str(repeat),
                    "--shapes", *SHAPES, "--json", out],
                   env=dict(os.environ, PYTHONPATH=path, FASTBN_KERNELS=isa_env),
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(out) as f:
        return json.load(f)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="threads of every build")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per build")
    ap.add_argument("--repeat", type=int, default=5, help="fastbn bench --repeat per round")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--variants", nargs="+",
                    default=["native=-march=native@baseline", "shipped=@auto",
                             "baseline=@baseline"],
                    help="NAME=CFLAGS@FASTBN_KERNELS configurations; the first is the reference")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        configs = {}                       # name -> (cflags, FASTBN_KERNELS)
        for v in args.variants:
            name, spec = v.split("=", 1)
            cflags, _, isa_env = spec.partition("@")
            configs[name] = (cflags, isa_env or "auto")
        dirs = {}                          # cflags -> build directory
        for cflags, _ in configs.values():
            if cflags not in dirs:
                dirs[cflags] = os.path.join(tmp, f"build{len(dirs)}")
                build(dirs[cflags], cflags)
        best, kernels = {}, {}
        for _ in range(args.rounds):
            for name, (cflags, isa_env) in configs.items():
                res = run_bench(dirs[cflags], isa_env, args.threads, args.repeat,
                                os.path.join(tmp, "run.json"))
                kernels[name] = res["kernels"]
                for r in res["results"]:
                    k = (name, r["label"], r["direction"])
                    best[k] = min(best.get(k, float("inf")), r["ms"]["fastbn"]["min"])

    names = list(configs)
    ref = names[0]
    cases = sorted({(label, d) for _, label, d in best}, key=lambda c: (c[0], c[1] != "forward"))
    print(f"threads={args.threads}  " + "  ".join(f"{n}: {kernels[n]} kernels" for n in names))
    print(f"{'case':<20}{'pass':<10}" + "".join(f"{n + ' ms':>14}" for n in names)
          + "".join(f"{n + '/' + ref:>18}" for n in names[1:]))
    rows = []
    for label, op in cases:
        t = {n: best[(n, label, op)] for n in names}
        rows.append({"case": label, "pass": op, **{f"{n}_ms": t[n] for n in names},
                     **{f"{n}/{ref}": t[n] / t[ref] for n in names[1:]}})
        print(f"{label:<20}{op:<10}" + "".join(f"{t[n]:>14.3f}" for n in names)
              + "".join(f"{t[n] / t[ref]:>18.3f}" for n in names[1:]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": args.threads, "kernels": kernels, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
