"""What is timed: the cases, their arrays and one callable per implementation.

A :class:`Case` is one normalization problem -- batch norm on ``(N, D)`` or
``(N, C, H, W)`` (NCHW or channels-last memory), layer norm, or group norm --
with its dtype and, for the course sizes, a fixed thread count.  The suites
(:data:`SUITES`) are named lists of cases; :func:`implementations` turns a
case and a pass into zero-argument callables, one per implementation:

* ``fastbn``: the compiled kernels, outputs allocated by the call;
* ``reference``: the NumPy reference backend, the specification;
* ``torch``: PyTorch's own operator on the same memory (``native_batch_norm``,
  ``native_layer_norm``, ``native_group_norm`` and their backwards);
* ``stream``: one threaded pass over the same bytes into a reused buffer
  (``x * 2`` forward, ``x + dout`` backward), the floor any kernel pays.
"""
from dataclasses import dataclass

import numpy as np

DIRECTIONS = ("forward", "backward")
IMPLS = ("fastbn", "torch", "reference", "stream")
EPS = 1e-5
MOMENTUM = 0.9      # classic API: running = m * running + (1 - m) * batch

KINDS = ("bn", "nhwc", "ln", "gn")
_KIND_NAMES = {"bn": "batch norm", "nhwc": "batch norm, channels-last",
               "ln": "layer norm", "gn": "group norm"}


@dataclass(frozen=True)
class Case:
    """One benchmark case.

    Parameters
    ----------
    kind : {'bn', 'nhwc', 'ln', 'gn'}
        Batch norm (2-D rows or 4-D NCHW), batch norm on a channels-last
        array (``shape`` is the logical ``(N, C, H, W)``; memory is NHWC),
        layer norm over the rows of ``(N, D)``, group norm on ``(N, C, H, W)``.
    shape : tuple of int
        The logical shape (features or channels on axis 1).
    dtype : {'float32', 'float64'}
    groups : int, optional
        Group norm's ``G``.
    threads : int, optional
        A fixed thread count for this case (else the run's).
    order : {'C', 'F'}
        Memory order of 2-D arrays (``'F'``: column-major rows).
    """

    kind: str
    shape: tuple
    dtype: str = "float32"
    groups: int = None
    threads: int = None
    order: str = "C"

    def decorate(self, shape_text):
        """``shape_text`` with the kind, memory order and thread count around it."""
        s = shape_text
        if self.kind == "nhwc":
            s += " NHWC"
        elif self.kind == "ln":
            s = "LN " + s
        elif self.kind == "gn":
            s = f"GN G={self.groups} " + s
        if self.order == "F":
            s += " F-order"
        if self.threads is not None:
            s += f" {self.threads} thread" + ("s" if self.threads > 1 else "")
        return s

    @property
    def label(self):
        """``'LN 4096x1024:f32'``-style name of the case."""
        return self.decorate("x".join(map(str, self.shape))
                             + (":f64" if self.dtype == "float64" else ":f32"))

    @property
    def title(self):
        """What is normalized, in words (for reports)."""
        return _KIND_NAMES[self.kind]

    def as_dict(self):
        d = {"kind": self.kind, "shape": list(self.shape), "dtype": self.dtype}
        if self.groups is not None:
            d["groups"] = self.groups
        if self.threads is not None:
            d["threads"] = self.threads
        if self.order != "C":
            d["order"] = self.order
        return d

    @classmethod
    def from_dict(cls, d):
        return cls(d.get("kind", "bn"), tuple(d["shape"]), d["dtype"], d.get("groups"),
                   d.get("threads"), d.get("order", "C"))


def as_case(spec):
    """A :class:`Case` from a Case or a ``(shape, dtype)`` pair (batch norm)."""
    if isinstance(spec, Case):
        return spec
    shape, dtype = spec
    return Case("bn", tuple(shape), dtype)


# the target shapes of ``fastbn bench`` without options
DEFAULT_SHAPES = (
    ((100, 500), "float64"),
    ((256, 4096), "float32"),
    ((4096, 1024), "float32"),
    ((64, 64, 56, 56), "float32"),
    ((32, 256, 14, 14), "float32"),
)

SWEEP_N = (8, 64, 256, 1024, 4096, 16384)
SWEEP_D = (256, 1024, 4096)
SWEEP_MAX_ELEMENTS = 1 << 24


def sweep_cases(ns=SWEEP_N, ds=SWEEP_D, max_elements=SWEEP_MAX_ELEMENTS, dtype="float32"):
    """The ``(N, D)`` grid: every N x D with N * D <= ``max_elements``."""
    return [Case("bn", (n, d), dtype) for n in ns for d in ds if n * d <= max_elements]


SUITES = {
    "targets": [as_case(s) for s in DEFAULT_SHAPES],
    "sweep": sweep_cases(),
    "spatial": [Case("bn", (64, 64, 56, 56)), Case("bn", (32, 256, 14, 14)),
                Case("nhwc", (64, 64, 56, 56))],
    "layernorm": [Case("ln", (4096, 1024)), Case("ln", (256, 4096)), Case("ln", (16384, 256))],
    "course": [Case("bn", (4, 3), "float64", threads=1), Case("bn", (50, 100), "float32"),
               Case("bn", (100, 500), "float64")],
    "groupnorm": [Case("gn", (32, 64, 56, 56), groups=32),
                  Case("gn", (64, 256, 14, 14), groups=32)],
}


def parse_shape(text):
    """``'64x64x56x56'`` or ``'100x500:f64'`` -> ((64, 64, 56, 56), 'float32').

    Raises ValueError with a message in the terms of the ``--shapes`` option.
    """
    spec, _, dt = text.partition(":")
    dtype = {"": "float32", "f32": "float32", "float32": "float32",
             "f64": "float64", "float64": "float64"}.get(dt.lower())
    if dtype is None:
        raise ValueError(f"shape {text!r}: the dtype after ':' must be f32 or f64, got {dt!r}")
    try:
        shape = tuple(int(s) for s in spec.lower().split("x"))
    except ValueError:
        raise ValueError(f"shape {text!r}: expected sizes joined by 'x', "
                         "e.g. 256x4096 or 64x64x56x56:f32") from None
    if len(shape) not in (2, 4) or min(shape) < 1:
        raise ValueError(f"shape {text!r}: need 2 (N, D) or 4 (N, C, H, W) positive sizes")
    return shape, dtype


def shape_label(shape, dtype):
    """``(256, 4096), 'float32'`` -> ``'256x4096:f32'``."""
    return Case("bn", tuple(shape), dtype).label


def make_case(shape, dtype, seed=0, channels_last=False, order="C"):
    """Inputs for one shape: x, dout, gamma, beta (features on axis 1).

    With ``channels_last`` the 4-D arrays are NCHW views of NHWC memory;
    ``order='F'`` makes x and dout column-major.
    """
    rng = np.random.default_rng(seed)
    mem = (shape[0], *shape[2:], shape[1]) if channels_last else shape
    x = rng.standard_normal(mem, dtype=np.float32).astype(dtype, copy=False)
    x = x * 2 + 1            # stats away from (0, 1), as real activations are
    dout = rng.standard_normal(mem, dtype=np.float32).astype(dtype, copy=False)
    if channels_last:
        x, dout = (a.transpose(0, 3, 1, 2) for a in (x, dout))
    elif order == "F":
        x, dout = np.asfortranarray(x), np.asfortranarray(dout)
    D = shape[1]
    gamma = (1 + 0.1 * rng.standard_normal(D)).astype(dtype)
    beta = (0.1 * rng.standard_normal(D)).astype(dtype)
    return {"x": x, "dout": dout, "gamma": gamma, "beta": beta}


def case_arrays(case, seed=0):
    """:func:`make_case` for a :class:`Case`."""
    return make_case(case.shape, case.dtype, seed, channels_last=case.kind == "nhwc",
                     order=case.order)


def has_groupnorm(module):
    """True when ``module`` provides the spatial group-norm pair."""
    return hasattr(module, "spatial_groupnorm_forward") and \
        hasattr(module, "spatial_groupnorm_backward")


def _bn_impl(module, arrays, direction):
    x, dout, gamma, beta = arrays["x"], arrays["dout"], arrays["gamma"], arrays["beta"]
    spatial = x.ndim == 4
    fwd = module.spatial_batchnorm_forward if spatial else module.batchnorm_forward
    bwd = module.spatial_batchnorm_backward if spatial else module.batchnorm_backward_alt
    D = x.shape[1]
    bn_param = {"mode": "train", "eps": EPS, "momentum": MOMENTUM,
                "running_mean": np.zeros(D, x.dtype), "running_var": np.ones(D, x.dtype)}
    if direction == "forward":
        return lambda: fwd(x, gamma, beta, bn_param)
    _, cache = fwd(x, gamma, beta, dict(bn_param))
    return lambda: bwd(dout, cache)


def _ln_impl(module, arrays, direction):
    x, dout, gamma, beta = arrays["x"], arrays["dout"], arrays["gamma"], arrays["beta"]
    ln_param = {"eps": EPS}
    if direction == "forward":
        return lambda: module.layernorm_forward(x, gamma, beta, ln_param)
    _, cache = module.layernorm_forward(x, gamma, beta, ln_param)
    return lambda: module.layernorm_backward(dout, cache)


def _gn_impl(module, arrays, direction, groups):
    if not has_groupnorm(module):
        return None
    x, dout = arrays["x"], arrays["dout"]
    C = x.shape[1]
    gamma, beta = (arrays[k].reshape(1, C, 1, 1) for k in ("gamma", "beta"))
    gn_param = {"eps": EPS}
    if direction == "forward":
        return lambda: module.spatial_groupnorm_forward(x, gamma, beta, groups, gn_param)
    _, cache = module.spatial_groupnorm_forward(x, gamma, beta, groups, gn_param)
    return lambda: module.spatial_groupnorm_backward(dout, cache)


def _torch_bn(torch, x, dout, w, b, direction):
    D = x.shape[1]
    rm, rv = torch.zeros(D, dtype=x.dtype), torch.ones(D, dtype=x.dtype)
    tmom = 1 - MOMENTUM                          # torch's momentum is the new-data weight
    if direction == "forward":
        return lambda: torch.native_batch_norm(x, w, b, rm, rv, True, tmom, EPS)
    _, save_mean, save_invstd = torch.native_batch_norm(x, w, b, rm.clone(), rv.clone(),
                                                        True, tmom, EPS)
    bwd = torch.ops.aten.native_batch_norm_backward
    mask = [True, True, True]
    return lambda: bwd(dout, x, w, rm, rv, save_mean, save_invstd, True, EPS, mask)


def _torch_ln(torch, x, dout, w, b, direction):
    D = [x.shape[1]]
    if direction == "forward":
        return lambda: torch.native_layer_norm(x, D, w, b, EPS)
    _, mean, rstd = torch.native_layer_norm(x, D, w, b, EPS)
    bwd = torch.ops.aten.native_layer_norm_backward
    return lambda: bwd(dout, x, D, mean, rstd, w, b, [True, True, True])


def _torch_gn(torch, x, dout, w, b, direction, groups):
    N, C = x.shape[:2]
    HxW = x.numel() // (N * C)
    if direction == "forward":
        return lambda: torch.native_group_norm(x, w, b, N, C, HxW, groups, EPS)
    _, mean, rstd = torch.native_group_norm(x, w, b, N, C, HxW, groups, EPS)
    bwd = torch.ops.aten.native_group_norm_backward
    return lambda: bwd(dout, x, mean, rstd, w, N, C, HxW, groups, [True, True, True])


def _torch_impl(torch, case, arrays, direction):
    # from_numpy: no copies, the same memory (and strides) fastbn gets
    x, dout, w, b = (torch.from_numpy(arrays[k]) for k in ("x", "dout", "gamma", "beta"))
    if case.kind == "ln":
        if case.order != "C":
            return None         # torch's layer norm takes contiguous rows (it would copy)
        return _torch_ln(torch, x, dout, w, b, direction)
    if case.kind == "gn":
        return _torch_gn(torch, x, dout, w, b, direction, case.groups)
    return _torch_bn(torch, x, dout, w, b, direction)


def _stream_impl(arrays, direction):
    """One pass over the bytes of the call: the floor any kernel must pay.

    ``x * 2`` for the forward (read x, write out), ``x + dout`` for the
    backward (read both, write dx), into an output allocated once (no page
    faults: fastbn's own large outputs come from its buffer cache), as an
    OpenMP loop with the thread count fastbn's kernels would use for the
    call.  The count is asked for on every call, as the kernels ask: one
    fixed at setup would keep a team sized for a moment's load (or its
    absence) for the whole run.
    """
    from .. import _stream
    from .._config import threads_for
    # order="K": the memory as laid out (a channels-last view stays a view)
    x, dout = (arrays[k].ravel(order="K") for k in ("x", "dout"))
    out = np.empty_like(x)
    n = x.size
    if direction == "forward":
        return lambda: _stream.scale2(x, out, threads_for(n))
    return lambda: _stream.add(x, dout, out, threads_for(n))


def import_torch():
    """torch, or None when it is not installed."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def _numpy_impl(module, case, arrays, direction):
    if case.kind == "ln":
        return _ln_impl(module, arrays, direction)
    if case.kind == "gn":
        return _gn_impl(module, arrays, direction, case.groups)
    return _bn_impl(module, arrays, direction)


def _compiled_groupnorm():
    """The module holding the compiled group norm, or None."""
    import importlib
    for name in ("fastbn.compiled_gn", "fastbn"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if has_groupnorm(module):
            return module
    return None


def case_kind(case):
    return case.kind if isinstance(case, Case) else "bn"


def implementations(case, direction, torch=None, which=IMPLS, arrays=None):
    """name -> zero-argument callable running one call of that implementation.

    Parameters
    ----------
    case : Case or dict
        A :class:`Case`, or the arrays of :func:`make_case` (batch norm).
    direction : {'forward', 'backward'}
    torch : module or None
        PyTorch, or None to leave it out.
    which : iterable of str
        The implementations wanted; those unavailable (torch not installed,
        a function this fastbn lacks) are left out of the result.
    arrays : dict, optional
        The case's arrays, if already made (:func:`case_arrays`).
    """
    from .. import compiled, reference
    gn_module = _compiled_groupnorm() if case_kind(case) == "gn" else None
    if isinstance(case, dict):
        arrays, case = case, Case("bn", case["x"].shape, case["x"].dtype.name)
    if arrays is None:
        arrays = case_arrays(case)
    out = {}
    for name in which:
        if name == "fastbn":
            fn = _numpy_impl(gn_module or compiled, case, arrays, direction)
        elif name == "reference":
            fn = _numpy_impl(reference, case, arrays, direction)
        elif name == "torch" and torch is not None:
            fn = _torch_impl(torch, case, arrays, direction)
        elif name == "stream":
            fn = _stream_impl(arrays, direction)
        elif name in IMPLS:
            fn = None
        else:
            raise ValueError(f"which: unknown implementation {name!r}, expected some of {IMPLS}")
        if fn is not None:
            out[name] = fn
    return out
