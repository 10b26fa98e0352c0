"""Which OpenMP runtime the compiled kernels run on, and whether it is safe.

The release wheels bundle LLVM's libomp; a build from source links the
compiler's runtime (GNU libgomp with GCC).  Two facts depend on which:

* **fork()**: libgomp's pool does not survive ``fork()``; libomp re-creates
  its pool in a forked child (a ``pthread_atfork`` handler) but a child of a
  ``multiprocessing`` fork pool can still hang, so :mod:`fastbn._config` runs
  a forked child's kernels on one thread with either (:func:`fork_keeps_threads`).
* **a second copy of libomp**: libomp registers itself per process and aborts
  the process (``OMP: Error #15``) when it finds another live copy of the LLVM
  or Intel runtime (``libomp``, ``libiomp5``) already registered.  libgomp
  next to libomp is fine (PyTorch, scikit-learn).  :func:`check_no_duplicate`
  runs at import, before fastbn's runtime starts, and turns that abort into an
  ``ImportError`` that names the other library and the ways out.

The runtime is found the way the dynamic linker found it: the address of
``omp_get_max_threads`` looked up from the kernel module's own handle, then
``dladdr`` for the file that holds it, then whether that file exports the
LLVM/Intel entry point ``__kmpc_fork_call``.  Only on Linux (elsewhere the
answers are "unknown" and the safe choices are made).
"""
import ctypes
import os
import sys

from . import _threads

_UNKNOWN = ("", "")


class _DlInfo(ctypes.Structure):
    _fields_ = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p),
                ("dli_sname", ctypes.c_char_p), ("dli_saddr", ctypes.c_void_p)]


def _dladdr(address):
    """The file holding ``address`` (a mapped address), or ''."""
    try:
        dladdr = ctypes.CDLL(None).dladdr
    except AttributeError:                  # glibc < 2.34: in libdl
        dladdr = ctypes.CDLL("libdl.so.2").dladdr
    dladdr.argtypes = [ctypes.c_void_p, ctypes.POINTER(_DlInfo)]
    dladdr.restype = ctypes.c_int
    info = _DlInfo()
    if not dladdr(address, ctypes.byref(info)) or not info.dli_fname:
        return ""
    return os.fsdecode(info.dli_fname)


def _find_runtime():
    """(path of the OpenMP runtime the kernels call, 'llvm' | 'gnu' | '')."""
    if not sys.platform.startswith("linux") or not _threads.openmp_enabled():
        return _UNKNOWN
    try:
        module = ctypes.CDLL(_threads.__file__, mode=getattr(os, "RTLD_NOLOAD", 0))
        func = ctypes.cast(module.omp_get_max_threads, ctypes.c_void_p).value
        path = _dladdr(func)
        if not path:
            return _UNKNOWN
        runtime = ctypes.CDLL(path, mode=getattr(os, "RTLD_NOLOAD", 0))
    except (OSError, AttributeError):
        return _UNKNOWN
    if hasattr(runtime, "__kmpc_fork_call"):
        return path, "llvm"
    if hasattr(runtime, "GOMP_parallel"):
        return path, "gnu"
    return path, ""


RUNTIME_PATH, RUNTIME_FAMILY = _find_runtime()


def fork_keeps_threads():
    """True when a forked child may run parallel kernels.

    False for every runtime: libgomp's child would hang in its first parallel
    region, and a libomp child made by a ``multiprocessing`` fork pool was
    seen to hang too (glibc 2.31, CPython 3.9), so until that is understood
    every forked child runs serially.  ``RUNTIME_FAMILY == "llvm"`` is the
    condition to restore once it is.
    """
    return False


def _registration():
    """The live LLVM/Intel runtime registered in this process: (text, address, value)."""
    name = f"__KMP_REGISTERED_LIB_{os.getpid()}"
    text = ""
    if hasattr(os, "getuid"):
        try:    # dynamic libomp on Linux: a POSIX shared-memory object
            with open(f"/dev/shm/{name}_{os.getuid()}", "rb") as f:
                text = f.read(1024).split(b"\0", 1)[0].decode("utf-8", "replace")
        except OSError:
            pass
    text = text or os.environ.get(name, "")      # static builds, libiomp5
    parts = text.split("-", 2)
    if len(parts) != 3:
        return None
    try:
        return parts[2], int(parts[0], 16), int(parts[1], 16)
    except ValueError:
        return None


def _mapped(address):
    """True when ``address`` lies in a readable mapping of this process."""
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                span, perms = line.split()[:2]
                lo, hi = (int(v, 16) for v in span.split("-"))
                if lo <= address < hi:
                    return perms.startswith("r")
    except OSError:
        pass
    return False


def _duplicate_ok():
    return os.environ.get("KMP_DUPLICATE_LIB_OK", "").strip().lower() in (
        "1", "true", "yes", "on", ".true.", "y", "t")


def other_llvm_runtime():
    """Path of another live libomp/libiomp5 registered in this process, or ''."""
    if RUNTIME_FAMILY != "llvm":
        return ""
    reg = _registration()
    if reg is None:
        return ""
    _, address, value = reg
    if not _mapped(address):                 # registered by a copy that is gone
        return ""
    owner = _dladdr(address)
    if owner and os.path.realpath(owner) == os.path.realpath(RUNTIME_PATH):
        return ""                            # fastbn's own runtime
    if ctypes.c_ulong.from_address(address).value != value:
        return ""
    return owner or reg[0]


def check_no_duplicate():
    """Raise ImportError instead of letting two LLVM OpenMP runtimes abort the process.

    Then start fastbn's runtime, so that it is registered from import on.
    """
    other = other_llvm_runtime()
    if other and not _duplicate_ok():
        raise ImportError(
            "fastbn: another copy of the LLVM/Intel OpenMP runtime is already running in "
            f"this process ({other}); fastbn's kernels use {RUNTIME_PATH}. Two copies in one "
            "process abort it (OMP: Error #15), so fastbn stops here instead. Ways out: "
            "(1) install fastbn from source so it links the compiler's runtime: "
            "pip install --no-binary fastbn fastbn; (2) run the other package and fastbn "
            "in separate processes; (3) at your own risk (the runtimes then do not know "
            "of each other's threads), start Python with KMP_DUPLICATE_LIB_OK=TRUE.")
    _threads.omp_max_threads()
