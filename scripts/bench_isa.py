"""Shipped build vs baseline vs ``-march=native`` build of the hot kernels.

Builds the extensions from this checkout into temporary directories -- once
with the flags a wheel gets, once adding ``-march=native`` -- then times
batch-norm forward (train) and backward in each configuration, alternating
configurations between rounds so machine noise hits all alike, and prints one
table of best times and ratios to the first configuration.

Default configurations (NAME=CFLAGS@FASTBN_KERNELS):

* ``native=-march=native@baseline``: everything compiled for this CPU;
* ``shipped=@auto``: what a wheel runs here (the dispatcher's pick);
* ``baseline=@baseline``: the portable SSE2 kernels every x86-64 CPU runs.

    python scripts/bench_isa.py [--threads 1] [--rounds 3] [--json out.json]

Timings are best-of-N wall times of the compiled backend with preallocated
outputs (``out=``/``dx=``), so only the kernels are measured.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CASES = [  # (label, shape)
    ("(64,64,56,56) f32", (64, 64, 56, 56)),
    ("(4096,1024) f32", (4096, 1024)),
]

CHILD = r"""
import json, sys, time
import numpy as np
import fastbn
from fastbn import compiled
assert fastbn.__file__.startswith(sys.argv[1]), fastbn.__file__
shapes = json.loads(sys.argv[2]); reps = int(sys.argv[3])
rng = np.random.default_rng(0)
res = {"isa": compiled.KERNEL_ISA + " kernels, baseline " +
       fastbn.show_config("dicts")["build"]["isa_level"]}
for shape in shapes:
    shape = tuple(shape)
    x = rng.standard_normal(shape, dtype=np.float32)
    C = shape[1]
    g, b = np.ones(C, np.float32), np.zeros(C, np.float32)
    out = np.empty_like(x); dx = np.empty_like(x); dout = rng.standard_normal(shape, dtype=np.float32)
    fwd = compiled.spatial_batchnorm_forward if len(shape) == 4 else compiled.batchnorm_forward
    bwd = compiled.spatial_batchnorm_backward if len(shape) == 4 else compiled.batchnorm_backward
    bn = {"mode": "train"}
    _, cache = fwd(x, g, b, bn, out=out)
    bwd(dout, cache, dx=dx)
    tf, tb = [], []
    for _ in range(reps):
        t = time.perf_counter(); _, cache = fwd(x, g, b, bn, out=out); tf.append(time.perf_counter() - t)
        t = time.perf_counter(); bwd(dout, cache, dx=dx); tb.append(time.perf_counter() - t)
    res[str(list(shape))] = {"forward": min(tf), "backward": min(tb)}
print(json.dumps(res))
"""


def build(dest, extra_cflags):
    """Build the package into dest/ (extensions + Python files)."""
    env = dict(os.environ)
    env["CFLAGS"] = (env.get("CFLAGS", "") + " " + extra_cflags).strip()
    subprocess.run([sys.executable, "setup.py", "build_ext", "-j", "2",
                    "-b", dest, "-t", os.path.join(dest, "tmp")],
                   cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    for name in os.listdir(os.path.join(ROOT, "src", "fastbn")):
        if name.endswith(".py"):
            shutil.copy(os.path.join(ROOT, "src", "fastbn", name), os.path.join(dest, "fastbn"))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="FASTBN_NUM_THREADS for both builds")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per build")
    ap.add_argument("--reps", type=int, default=10, help="timed calls per case per round")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--variants", nargs="+",
                    default=["native=-march=native@baseline", "shipped=@auto", "baseline=@baseline"],
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
        builds = {name: dirs[cflags] for name, (cflags, _) in configs.items()}
        env = dict(os.environ, FASTBN_NUM_THREADS=str(args.threads))
        best, isa = {}, {}
        shapes = json.dumps([s for _, s in CASES])
        for _ in range(args.rounds):
            for name, path in builds.items():
                out = subprocess.run([sys.executable, "-c", CHILD, path, shapes, str(args.reps)],
                                     env=dict(env, PYTHONPATH=path, FASTBN_KERNELS=configs[name][1]),
                                     check=True,
                                     capture_output=True, text=True).stdout
                res = json.loads(out)
                isa[name] = res.pop("isa")
                for key, times in res.items():
                    for op, t in times.items():
                        k = (name, key, op)
                        best[k] = min(best.get(k, float("inf")), t)

    rows = []
    names = list(builds)
    ref = names[0]
    print(f"threads={args.threads}  " + "  ".join(f"{n}: {isa[n]}" for n in names))
    print(f"{'case':<20}{'op':<10}" + "".join(f"{n + ' ms':>14}" for n in names)
          + "".join(f"{n + '/' + ref:>18}" for n in names[1:]))
    for label, shape in CASES:
        key = str(list(shape))
        for op in ("forward", "backward"):
            t = {n: best[(n, key, op)] for n in names}
            rows.append({"case": label, "op": op, **{f"{n}_ms": t[n] * 1e3 for n in names},
                         **{f"{n}/{ref}": t[n] / t[ref] for n in names[1:]}})
            print(f"{label:<20}{op:<10}" + "".join(f"{t[n] * 1e3:>14.2f}" for n in names)
                  + "".join(f"{t[n] / t[ref]:>18.3f}" for n in names[1:]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": args.threads, "isa": isa, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
