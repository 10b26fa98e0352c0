"""Argument checks shared by both backends.

Every public function validates all of its arguments here *before* it
computes or writes anything, so a call that raises leaves ``bn_param``, the
running statistics and every input exactly as they were.  Both backends call
the same checks, so they fail the same way on the same bad input.

Dtype policy: ``x`` defines the dtype, float32 or float64; any other dtype
of ``x`` is a ``TypeError`` that says how to cast.  The learnable parameters
(``gamma``, ``beta``) follow NumPy's rule for values written into a given
dtype: any real dtype (bool, integer, floating) or sequence that casts to x's
dtype under ``casting='same_kind'`` is converted (a new array; the caller's
is never modified).  Running statistics, ``dout`` and buffers are never
cast: their dtype is state the caller owns (the running statistics are
stored back, a buffer is written in place), so a mismatch is a ``TypeError``.
"""
import math
import numbers
from collections.abc import Mapping, MutableMapping
from typing import NamedTuple, Optional

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _as_array(value, name, wanted):
    """``value`` as an ndarray (no copy for one), or TypeError naming ``name``."""
    if value is None or isinstance(value, (str, bytes)):
        raise TypeError(f"{name} must be {wanted}, got {type(value).__name__}")
    if isinstance(value, np.ma.MaskedArray):
        # np.asarray would drop the mask and normalize the masked values too.
        raise TypeError(f"{name} is a masked array; batch statistics cannot skip "
                        f"masked entries: pass {name}.filled(...) or a plain array")
    try:
        return np.asarray(value)
    except Exception as exc:  # ragged lists and the like
        raise TypeError(f"{name} must be {wanted}: {exc}") from None


def as_float_array(value, name, why=""):
    """Return ``value`` as an ndarray of float32/float64, or raise TypeError.

    ``why`` is appended to a dtype error: the reason this argument is never cast.
    """
    if type(value) is not np.ndarray:
        value = _as_array(value, name, "a float32 or float64 array")
    if value.dtype not in FLOAT_DTYPES:
        if value.dtype.kind == "f" and value.dtype.newbyteorder() in FLOAT_DTYPES:
            raise TypeError(f"{name} has non-native byte order ({value.dtype.str}); "
                            f"convert it first, e.g. {name}.astype(np.float64){why}")
        raise TypeError(f"{name} must have dtype float32 or float64, got {value.dtype}; "
                        f"cast it first, e.g. {name}.astype(np.float64){why}")
    if not value.flags.aligned:
        # A field of a packed structured array or a buffer at an odd offset:
        # the kernels address elements as base + i * (stride / itemsize), so
        # they read aligned copies.  (Such an x is then cached as a copy.)
        value = value.copy()
    return value


def check_input(x, ndim, name="x"):
    """Validate the activations: a float array of the given ndim, no empty axis."""
    x = as_float_array(x, name)
    if x.ndim != ndim:
        layout = "(N, D)" if ndim == 2 else "(N, C, H, W)"
        raise ValueError(f"{name} must be a {ndim}-D array of shape {layout}, "
                         f"got a {x.ndim}-D array of shape {x.shape}")
    if x.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {x.shape}: normalization "
                         f"needs at least one sample and one feature")
    return x


# Why running statistics are not converted like gamma and beta.
STATE_NOT_CAST = ("; running statistics are never cast: they are state the caller owns, "
                  "stored back into the dict in x's dtype")


def check_vector(v, name, size, dtype, why=STATE_NOT_CAST):
    """Per-feature state (running statistics): shape (size,) and exactly x's dtype."""
    # the common case in one test (x's dtype object itself: a native float dtype)
    if type(v) is np.ndarray and v.dtype is dtype and v.shape == (size,) and v.flags.aligned:
        return v
    v = as_float_array(v, name, why)
    if v.shape != (size,):
        raise ValueError(f"{name} must have shape ({size},) to match x, got {v.shape}")
    if v.dtype != dtype:
        raise TypeError(f"{name} has dtype {v.dtype} but x has dtype {dtype}{why}")
    return v


_REAL_KINDS = "biuf"     # bool, signed and unsigned integer, floating point


def check_param_vector(v, name, size, dtype, other_shape=None):
    """A learnable per-feature parameter (gamma, beta), converted to x's dtype.

    NumPy's rule for values written into a given dtype: any real array or
    sequence whose dtype casts to ``dtype`` under ``casting='same_kind'``
    (bool, integers, any float, e.g. float64 for float32 ``x``).  The
    caller's array is never modified; a converted copy is returned.

    Parameters
    ----------
    v : array_like
    name : str
        The argument's name, for the error messages.
    size : int
        The number of features.
    dtype : numpy.dtype
        x's dtype.
    other_shape : tuple, optional
        A second accepted shape holding ``size`` values, e.g. ``(1, C, 1, 1)``
        for the course's convolutional parameters.

    Returns
    -------
    ndarray of ``dtype``, shape (size,)

    Raises
    ------
    TypeError
        Not an array of a real dtype (complex, object, strings, dates, None),
        or one that does not cast to ``dtype``.
    ValueError
        A shape other than ``(size,)`` (or ``other_shape``).
    """
    # the common case in one test (x's dtype object itself: a native float dtype)
    if type(v) is np.ndarray and v.dtype is dtype and v.shape == (size,) and v.flags.aligned:
        return v
    if type(v) is not np.ndarray:
        v = _as_array(v, name, "a real array")
    if v.dtype is not dtype and v.dtype != dtype:
        if v.dtype.kind not in _REAL_KINDS:
            raise TypeError(f"{name} must be a real array (bool, integer or floating "
                            f"point), got dtype {v.dtype}")
        if not np.can_cast(v.dtype, dtype, "same_kind"):
            raise TypeError(f"{name} has dtype {v.dtype}, which does not cast to x's "
                            f"dtype {dtype} under casting='same_kind'")
    if v.shape != (size,):
        if other_shape is None or v.shape != other_shape:
            shapes = f"({size},)" + ("" if other_shape is None else f" or {other_shape}")
            raise ValueError(f"{name} must have shape {shapes} to match x, got {v.shape}")
        v = v.reshape(size)
    if v.dtype != dtype or not v.flags.aligned:    # (unaligned: see as_float_array)
        v = v.astype(dtype)
    return v


def _real(value, name):
    if type(value) is float:      # the common case, without the ABC check (speed)
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value}")
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def _any_negative(v):
    """``(v < 0).any()``, NaN counting as not negative."""
    if v.size <= 32:    # a comparison array and a reduction cost more than the loop
        return any(e < 0 for e in v.tolist())
    return bool((v < 0).any())


class NormParams(NamedTuple):
    """Everything a forward pass needs, checked."""
    x: np.ndarray
    gamma: np.ndarray
    beta: np.ndarray
    mode: str
    eps: float
    momentum: float
    running_mean: Optional[np.ndarray]
    running_var: Optional[np.ndarray]


def check_batchnorm_args(x, gamma, beta, bn_param, ndim):
    """Validate a (spatial) batch-norm forward call; features are axis 1."""
    x = check_input(x, ndim)
    size = x.shape[1]
    gamma = check_param_vector(gamma, "gamma", size, x.dtype)
    beta = check_param_vector(beta, "beta", size, x.dtype)
    # type(...) is dict first: the ABC check costs a microsecond per call
    if type(bn_param) is not dict and not isinstance(bn_param, MutableMapping):
        raise TypeError(f"bn_param must be a dict, got {type(bn_param).__name__}")
    if "mode" not in bn_param:
        raise ValueError("bn_param['mode'] is required: 'train' or 'test'")
    mode = bn_param["mode"]
    if not isinstance(mode, str) or mode not in ("train", "test"):
        raise ValueError(f"bn_param['mode'] must be 'train' or 'test', got {mode!r}")
    eps = _real(bn_param.get("eps", 1e-5), "bn_param['eps']")
    if eps < 0:
        raise ValueError(f"bn_param['eps'] must be >= 0, got {eps}")
    momentum = _real(bn_param.get("momentum", 0.9), "bn_param['momentum']")
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"bn_param['momentum'] must be in [0, 1], got {momentum}")
    running = []
    for key in ("running_mean", "running_var"):
        value = bn_param.get(key)
        if value is not None:
            value = check_vector(value, f"bn_param['{key}']", size, x.dtype)
        running.append(value)
    # a variance below zero is no variance: in test mode sqrt(var + eps) would
    # be NaN for that feature, in train mode it would be blended into the new
    # running_var.  NaN entries pass (NaN stays in its feature, as in x).
    if running[1] is not None and _any_negative(running[1]):
        bad = int(np.flatnonzero(running[1] < 0)[0])
        raise ValueError(f"bn_param['running_var'] must be >= 0, got {running[1][bad]!r} "
                         f"for feature {bad}")
    return NormParams(x, gamma, beta, mode, eps, momentum, *running)


# Why dout is not converted like gamma and beta.
DOUT_NOT_CAST = ("; dout is never cast: a gradient in another dtype than the forward "
                 "input means the layers upstream run in another precision")


def store_running(bn_param, running_mean, running_var):
    """Store new running statistics into ``bn_param``: both, or neither.

    A dict accepts any item, but another ``MutableMapping`` may refuse one
    (a validating ``__setitem__``); then ``running_mean`` is put back as it
    was (or removed, if it was absent) and the mapping's exception
    propagates.  Callers write their ``out=`` buffer only after this
    returns, so a refused store changes nothing the caller owns.
    """
    if type(bn_param) is dict:
        bn_param["running_mean"] = running_mean
        bn_param["running_var"] = running_var
        return
    absent = object()
    old_mean = bn_param["running_mean"] if "running_mean" in bn_param else absent
    bn_param["running_mean"] = running_mean
    try:
        bn_param["running_var"] = running_var
    except BaseException:
        if old_mean is absent:
            del bn_param["running_mean"]
        else:
            bn_param["running_mean"] = old_mean
        raise


def check_dout(dout, x):
    """The upstream gradient must match the cached input in shape and dtype."""
    dout = as_float_array(dout, "dout", DOUT_NOT_CAST)
    if dout.shape != x.shape:
        raise ValueError(f"dout has shape {dout.shape} but the forward input had "
                         f"shape {x.shape}")
    if dout.dtype != x.dtype:
        raise TypeError(f"dout has dtype {dout.dtype} but the forward input had "
                        f"dtype {x.dtype}{DOUT_NOT_CAST}")
    return dout


def _self_overlaps(a):
    """Could two elements of ``a`` share memory?  (May say yes for exotic layouts.)

    Sufficient test for no overlap: with the axes sorted by stride, each
    stride steps over everything the smaller-strided axes span.
    """
    span = a.itemsize
    for stride, n in sorted((abs(st), n) for n, st in zip(a.shape, a.strides) if n > 1):
        if stride < span:
            return True
        span = stride * (n - 1) + span
    return False


def check_out(out, name, shape, dtype, *inputs):
    """A caller-supplied output buffer: right shape and dtype, writeable, no overlap."""
    if type(out) is not np.ndarray:
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(out).__name__}")
    if out.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {out.shape}")
    if out.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype}, got {out.dtype}")
    if not out.flags.writeable:
        raise ValueError(f"{name} is read-only")
    if not out.flags.aligned:
        raise ValueError(f"{name} is not aligned: its address or strides {out.strides} are "
                         f"not multiples of its itemsize {out.itemsize} (a field of a "
                         f"packed structured array, or a buffer at an odd offset); pass "
                         f"an aligned array, e.g. np.empty_like({name}), and copy into "
                         f"{name} afterwards")
    if not (out.flags.c_contiguous or out.flags.f_contiguous) and _self_overlaps(out):
        raise ValueError(f"{name} has elements that share memory (a zero or too small "
                         f"stride, e.g. from as_strided or broadcast_to): each output "
                         f"element needs its own place; pass a regular array")
    for arr in inputs:
        if np.may_share_memory(out, arr):
            raise ValueError(f"{name} must not overlap the inputs (x, dout, gamma, beta, "
                             f"running statistics): it is written while they are read, "
                             f"and the cache keeps x for the backward pass; pass a "
                             f"separate buffer")
    return out


class LayerNormParams(NamedTuple):
    """Everything a layer-norm forward pass needs, checked."""
    x: np.ndarray
    gamma: np.ndarray
    beta: np.ndarray
    eps: float


def check_layernorm_args(x, gamma, beta, ln_param):
    """Validate a layer-norm forward call: x (N, D), statistics per row.

    ``ln_param`` may be any mapping; only ``eps`` (default 1e-5) is read, so
    the classic course code can pass its shared ``bn_param`` dicts unchanged.
    """
    x = check_input(x, 2)
    size = x.shape[1]
    gamma = check_param_vector(gamma, "gamma", size, x.dtype)
    beta = check_param_vector(beta, "beta", size, x.dtype)
    if not isinstance(ln_param, Mapping):
        raise TypeError(f"ln_param must be a dict, got {type(ln_param).__name__}")
    eps = _real(ln_param.get("eps", 1e-5), "ln_param['eps']")
    if eps < 0:
        raise ValueError(f"ln_param['eps'] must be >= 0, got {eps}")
    return LayerNormParams(x, gamma, beta, eps)


_F64 = np.dtype(np.float64)


def _fits(a, n, dtype):
    """``a`` is a C-contiguous ndarray of shape (n,) and this dtype."""
    return (type(a) is np.ndarray and a.shape == (n,) and a.dtype == dtype
            and a.flags.c_contiguous)


def check_cache_arrays(x, ndim, gamma, stats, stats_axis=None, stats_len=None):
    """A compiled cache's arrays still fit together, or ValueError.

    The kernels index gamma and the float64 statistics without bounds checks.
    A cache's attributes are writable, and its ``x`` is the caller's array
    (whose ``shape`` can be reassigned in place), so the backward pass
    re-checks them: a mismatch would otherwise be an out-of-bounds read.

    Parameters
    ----------
    x : ndarray
        The cached forward input.
    ndim : int
        The ndim the forward pass accepted.
    gamma : ndarray
        Must be C-contiguous, shape ``(x.shape[1],)``, x's dtype.
    stats : sequence of ndarray
        Per-feature, per-row or per-group statistics: C-contiguous float64
        of shape ``(x.shape[stats_axis],)`` or ``(stats_len,)``.
    stats_axis : int, optional
        1 for batch norm (per feature), 0 for layer norm (per row).
    stats_len : int, optional
        The statistics' length when no axis of x gives it (group norm:
        N * G).
    """
    ok = (type(x) is np.ndarray and x.ndim == ndim and x.dtype in FLOAT_DTYPES
          and x.size > 0 and _fits(gamma, x.shape[1], x.dtype))
    if ok:
        n = x.shape[stats_axis] if stats_len is None else stats_len
        for s in stats:
            if not _fits(s, n, _F64):
                ok = False
                break
    if not ok:
        raise ValueError("cache is inconsistent (its arrays were modified or the forward "
                         "input was reshaped in place after the forward pass); run the "
                         "forward pass again")


class GroupNormParams(NamedTuple):
    """Everything a group-norm forward pass needs, checked."""
    x: np.ndarray
    gamma: np.ndarray       # (C,), whatever shape the caller passed
    beta: np.ndarray        # (C,)
    G: int
    eps: float
    param_shape: tuple      # the caller's gamma shape: (C,) or (1, C, 1, 1)


def _check_channel_param(v, name, C, dtype):
    """gamma/beta of group norm: shape (C,) or the course's (1, C, 1, 1).

    Returns the (C,) vector in x's dtype (:func:`check_param_vector`) and the
    caller's shape, which the gradients take.
    """
    vector = check_param_vector(v, name, C, dtype, other_shape=(1, C, 1, 1))
    return vector, ((C,) if np.ndim(v) == 1 else (1, C, 1, 1))


def check_groups(G, C):
    """The number of groups: a positive int dividing the channel count C."""
    if isinstance(G, (bool, np.bool_)) or not isinstance(G, numbers.Integral):
        raise TypeError(f"G must be an int (the number of groups), got {type(G).__name__}")
    G = int(G)
    if G <= 0:
        raise ValueError(f"G must be a positive number of groups, got {G}")
    if C % G:
        raise ValueError(f"G = {G} groups must divide the number of channels C = {C}")
    return G


def check_groupnorm_args(x, gamma, beta, G, gn_param):
    """Validate a group-norm forward call: x (N, C, H, W), statistics per (n, group).

    ``gn_param`` may be any mapping; only ``eps`` (default 1e-5) is read, so
    the course's ``bn_param`` dicts (with a ``mode``) pass unchanged.
    """
    x = check_input(x, 4)
    C = x.shape[1]
    gamma, shape = _check_channel_param(gamma, "gamma", C, x.dtype)
    beta, _ = _check_channel_param(beta, "beta", C, x.dtype)
    G = check_groups(G, C)
    if not isinstance(gn_param, Mapping):
        raise TypeError(f"gn_param must be a dict, got {type(gn_param).__name__}")
    eps = _real(gn_param.get("eps", 1e-5), "gn_param['eps']")
    if eps < 0:
        raise ValueError(f"gn_param['eps'] must be >= 0, got {eps}")
    warn_single_value(x.size // (x.shape[0] * G), "group norm", "C/G*H*W")
    return GroupNormParams(x, gamma, beta, G, eps, shape)


def warn_batch_of_one(p):
    """Batch norm in train mode with one value per feature: see warn_single_value."""
    if p.mode == "train":
        warn_single_value(p.x.size // p.x.shape[1], "batch norm",
                          "N" if p.x.ndim == 2 else "N*H*W", stacklevel=4)


def warn_single_value(count, kind, what, stacklevel=3):
    """Warn when every statistic covers one value: the output is then beta.

    Normalizing a single value gives x - mean = 0, so the layer outputs beta
    whatever x is, and dx and dgamma are 0: the classic result, kept, but
    almost always a mistake (a batch of one in train mode).
    """
    if count == 1:
        import warnings
        warnings.warn(f"{kind} statistics over a single value ({what} = 1): every output "
                      f"equals beta and the input gradient is 0", RuntimeWarning,
                      stacklevel=stacklevel)
