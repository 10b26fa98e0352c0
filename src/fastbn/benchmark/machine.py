"""Where the numbers came from: CPU model, CPUs this process may use, the
kernel build, thread count and library versions."""
import os
import platform

import numpy as np


def cpu_model():
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else the platform's)."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return model


def kernel_build():
    """The batch-norm kernel build in use (``'baseline'``, ``'avx2'``, ...)."""
    import fastbn
    return fastbn.show_config("dicts")["build"]["kernels"]


def machine():
    """A short description of the machine, JSON-ready."""
    from .._cpus import available_cpus
    return {"cpu": cpu_model(), "logical_cpus": os.cpu_count(),
            "available_cpus": available_cpus(), "python": platform.python_version(),
            "numpy": np.__version__, "platform": platform.platform()}


def header(result):
    """One line naming the machine, the build and the versions of a result."""
    m = result["machine"]
    torch = result.get("torch_version")
    parts = [f"fastbn {result['fastbn_version']} ({result.get('kernels', '?')} kernels)",
             f"{result['threads']} threads", f"NumPy {m['numpy']}"]
    if torch:
        parts.append(f"torch {torch}")
    cpus = m.get("available_cpus")
    parts.append(m["cpu"] + (f", {cpus} of {m['logical_cpus']} CPUs available"
                             if cpus is not None and cpus != m["logical_cpus"] else
                             f", {m['logical_cpus']} CPUs"))
    return "; ".join(parts)
