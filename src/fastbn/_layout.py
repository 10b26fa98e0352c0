"""How arrays are handed to the kernels: loop shape, views and outputs.

The kernels come in two loop shapes.  *Row* kernels take an ``(R, D)`` view
whose feature axis varies fastest in memory (a C-ordered ``(N, D)`` array, a
channels-last 4-D array); *channel* kernels take an ``(A, C, B)`` view that
walks each feature's values in long runs (NCHW, a Fortran-ordered ``(N, D)``
array).  Both are strided views of the caller's array, never transposed
copies.  Fresh outputs are allocated so that their kernel view is
contiguous, and large ones are written with non-temporal stores when that
pays (see :data:`STREAM_MIN_BYTES`).

Every compiled module that calls a kernel (:mod:`fastbn.compiled`,
:mod:`fastbn.compiled_ln`, :mod:`fastbn.moments`) takes these decisions here.
"""
from typing import Callable, NamedTuple

import numpy as np

from ._alloc import MIN_BYTES, empty_reused
from ._validation import check_out


def uses_rows(x, spatial):
    """True when the feature axis of ``x`` varies fastest in memory (row kernels)."""
    if spatial:
        return x.shape[1] > 1 and x.transpose(0, 2, 3, 1).flags.c_contiguous
    N, D = x.shape
    if D == 1:
        return False
    if N == 1:
        return True
    return abs(x.strides[1]) <= abs(x.strides[0])


def kernel_view(a, rows, spatial):
    """The ``(R, D)`` or ``(A, C, B)`` view the kernels loop over (a copy only if needed)."""
    if spatial:
        N, C, H, W = a.shape
        if rows:
            return a.transpose(0, 2, 3, 1).reshape(N * H * W, C)
        return a.reshape(N, C, H * W)
    return a if rows else a.T[np.newaxis]


# 4 KiB aliasing: the core takes a load for dependent on an earlier store
# whose address agrees with it in the low 12 bits, and holds the load until
# the store's address is resolved.  An output that starts at the same offset
# within a page as an input it is computed from (two large mallocs do: each
# is a fresh mapping) meets that on every vector: on Zen 4 up to 40 % of a
# backward pass.  So the large outputs fastbn allocates start at the page
# offset farthest from their inputs' (the buffer cache places them).
_PAGE = 4096
_PLACE_STEP = 64                # a cache line: vector-aligned offsets only


def placement(addresses):
    """A page offset (a multiple of 64 bytes) far, around the page, from the
    page offsets of ``addresses``: the middle of the widest gap between them,
    rounded down to 64 bytes; None when there are no addresses."""
    offs = sorted({a % _PAGE for a in addresses})
    if not offs:
        return None
    width, start = max(((offs[(i + 1) % len(offs)] - o) % _PAGE or _PAGE, o)
                       for i, o in enumerate(offs))
    return (start + width // 2) % _PAGE // _PLACE_STEP * _PLACE_STEP


def _placed(shape, dtype, inputs):
    """``empty_reused(shape, dtype)``, placed away from the large ``inputs``."""
    big = [a.__array_interface__["data"][0] for a in inputs if a.nbytes >= MIN_BYTES]
    return empty_reused(shape, dtype, placement(big))


class PlainPolicy(NamedTuple):
    """What the compiled one-step path of plain (N, D) calls (``_plain.pxd``)
    asks of the Python side, fixed at import by the module that calls it."""
    cache_type: type            # cache_type(...) builds the forward's cache
    threads_for: Callable       # threads_for(size): the team of a threaded call
    rows_output: Callable       # rows_output(shape, dtype, addresses): a large output
    serial_below: int           # calls below this many elements run on one thread
    min_bytes: int              # outputs from this size come from rows_output


def rows_output(shape, dtype, addresses):
    """``(array, stream)``: a fresh C-ordered (R, D) output of the buffer
    cache, placed away from the inputs at ``addresses`` (their data
    pointers), and whether the row kernels should write it with
    non-temporal stores (:func:`stream_stores`).  The compiled plain-call
    path allocates its large outputs here, as :func:`output` would."""
    a, reused = empty_reused(shape, dtype, placement(addresses))
    return a, stream_stores(a, reused)


def empty_like_layout(x, rows, spatial, inputs=()):
    """``(array, reused)``: a fresh output of x's shape whose kernel view is contiguous.

    Large ones come from the buffer cache; ``reused`` says the block did
    (its pages are mapped already).  They start at the page offset
    :func:`placement` picks for the ``inputs`` they are computed from.
    """
    if spatial:
        N, C, H, W = x.shape
        if rows:
            a, reused = _placed((N, H, W, C), x.dtype, inputs)
            return a.transpose(0, 3, 1, 2), reused
        return _placed(x.shape, x.dtype, inputs)
    if rows:
        return _placed(x.shape, x.dtype, inputs)
    a, reused = _placed(x.shape[::-1], x.dtype, inputs)
    return a.T, reused


def empty_like_order(x, inputs=()):
    """A fresh output in x's memory order; C, Fortran and channels-last
    (4-D, C the fastest axis) ones from the buffer cache, placed away from
    ``inputs`` as in :func:`empty_like_layout`.

    For the kernels that take any strides (layer and group norm): the
    output then follows the input's layout, as NumPy's ufuncs do.
    """
    return empty_like_order_reused(x, inputs)[0]


def empty_like_order_reused(x, inputs=()):
    """``(array, reused)``: :func:`empty_like_order`, and whether its block
    came from the buffer cache (its pages are mapped already)."""
    if x.flags.c_contiguous:
        return _placed(x.shape, x.dtype, inputs)
    if x.flags.f_contiguous:
        a, reused = _placed(x.shape[::-1], x.dtype, inputs)
        return a.T, reused
    if x.ndim == 4 and x.transpose(0, 2, 3, 1).flags.c_contiguous:
        N, C, H, W = x.shape
        a, reused = _placed((N, H, W, C), x.dtype, inputs)
        return a.transpose(0, 3, 1, 2), reused
    return np.empty_like(x, order="K", subok=False), False


# Non-temporal stores bypass the cache: they pay only when the output is too
# large to stay cached for whatever reads it next, when the kernel writes it
# in long contiguous runs (a short run leaves write-combining buffers
# half-filled; the row kernels write rows that lie back to back as one run,
# and do not stream shorter rows: FASTBN_STREAM_ROW_BYTES in output.h), and
# when its pages are mapped already (the OS zeroes a fresh page through the
# cache just before the kernel writes it, so streaming it adds a second trip
# to memory).  The thresholds are the smallest sizes at
# which streaming won on the machines measured (see the docs' performance page).
STREAM_MIN_BYTES = 32 << 20
STREAM_MIN_RUN_BYTES = 4096


def stream_stores(view, warm):
    """Should the kernel write this output view with non-temporal stores?

    Parameters
    ----------
    view : ndarray
        The kernel view of the output.
    warm : bool
        Its memory is mapped already (a caller's buffer, a reused block).
    """
    if not warm or view.nbytes < STREAM_MIN_BYTES:
        return False
    item = view.itemsize
    run = view.shape[-1] * item if view.strides[-1] == item else item
    if view.ndim == 2 and view.strides[-1] == item and view.strides[0] == run:
        run = view.nbytes          # the row kernels stream contiguous rows as one run
    return run >= STREAM_MIN_RUN_BYTES


# Group norm re-reads each (sample, group) block from L1, not its whole input
# from cache, so streaming its output pays from a smaller size than batch
# norm's (on Zen 4 from 12 MB, losing 10 % at 6 MB).
GROUP_STREAM_MIN_BYTES = 16 << 20


def group_stream_stores(out, warm):
    """Should the group-norm kernel write ``out`` (N, C, H, W) with
    non-temporal stores?  Its runs are a channel's H * W values, when they
    are contiguous; channels-last outputs never stream."""
    if not warm or out.nbytes < GROUP_STREAM_MIN_BYTES:
        return False
    N, C, H, W = out.shape
    item = out.itemsize
    if (W > 1 and out.strides[3] != item) or (H > 1 and out.strides[2] != W * item):
        return False
    return H * W * item >= STREAM_MIN_RUN_BYTES


def output(x, out, name, rows, spatial, *inputs, stage=False):
    """Where a kernel writes an output of x's shape and dtype.

    Parameters
    ----------
    x : ndarray
        The input whose shape and dtype the output has.
    out : ndarray or None
        The caller's buffer, checked here (``name`` is its argument name),
        or None for a fresh array.
    rows, spatial : bool
        The kernel's loop shape (:func:`uses_rows`) and ndim.
    *inputs : ndarray
        Arrays the kernel reads, which ``out`` must not overlap.
    stage : bool
        Have the kernel write a temporary even when ``out`` fits its view:
        for a caller that must not touch ``out`` until a later step succeeds.

    Returns
    -------
    result : ndarray
        The array to return to the caller.
    view : ndarray
        The kernel view to write.
    staged : ndarray or None
        When ``out``'s strides do not fit the kernel's view, a temporary the
        kernel writes instead, to be copied into ``result`` afterwards
        (:func:`numpy.copyto`); None otherwise.
    stream : bool
        Whether the kernel should write ``view`` with non-temporal stores.
    """
    if out is None:
        if rows and not spatial and x.nbytes < MIN_BYTES:
            # the common small case: a C-ordered array, below the buffer
            # cache's size and the streaming threshold
            result = np.empty(x.shape, x.dtype)
            return result, result, None, False
        result, reused = empty_like_layout(x, rows, spatial, inputs)
        view = kernel_view(result, rows, spatial)
        return result, view, None, stream_stores(view, reused)
    check_out(out, name, x.shape, x.dtype, *inputs)
    view = kernel_view(out, rows, spatial)
    if not stage and np.may_share_memory(view, out):
        return out, view, None, stream_stores(view, True)
    tmp, reused = empty_like_layout(x, rows, spatial, inputs)
    view = kernel_view(tmp, rows, spatial)
    return out, view, tmp, stream_stores(view, reused)
