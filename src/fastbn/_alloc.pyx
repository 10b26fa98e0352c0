# cython: language_level=3
"""A small cache of freed output buffers, plugged into NumPy's allocator.

A fresh multi-megabyte output costs more than the kernel that fills it: the
OS maps new pages and zeroes every one on first touch (on a 51 MB batch that
is a large part of a backward pass), and NumPy hands large blocks straight
back to the OS on free.  A training loop allocates the same shapes every
step, so fastbn keeps the last few freed outputs and hands them out again.

Mechanism: NumPy's NEP 49 memory-handler API.  :func:`empty` allocates one
array with fastbn's handler installed; the array remembers its handler, so
when its last reference dies NumPy calls our ``free``, which keeps the block
(up to a byte limit, oldest evicted first) instead of releasing it.  All
other arrays in the process keep NumPy's default handler.  Blocks come from
and go back to NumPy's default handler (so it still advises huge pages).

Each block has a page of slack, so an array can start at any 64-byte offset
within a page: :func:`empty_reused`'s ``place``, with which fastbn keeps an
output's offset away from its inputs' (``fastbn._layout.placement``).
"""
import os

import numpy as np

cdef extern from *:
    """
    #define NPY_TARGET_VERSION NPY_1_23_API_VERSION
    #define PY_ARRAY_UNIQUE_SYMBOL fastbn_alloc_ARRAY_API
    #include <numpy/arrayobject.h>
    #include <string.h>

    #define FASTBN_MAX_BLOCKS 16
    typedef struct { void* ptr; size_t size; } fastbn_block;   /* raw block, caller's size */

    /* Every block of this handler is FASTBN_PAD bytes larger than asked for,
       so the caller's memory can start at any 64-byte offset within a page
       (fastbn_place, chosen by the caller: see _layout.placement).  The
       16 bytes just before it record the raw block and the size. */
    #define FASTBN_PAGE 4096
    #define FASTBN_HEAD 64
    #define FASTBN_PAD (FASTBN_PAGE + FASTBN_HEAD)
    typedef struct { void* raw; size_t size; } fastbn_head;
    /* Page offset of the caller's memory in the next block, set with the GIL
       around one allocation; between them, half a page: far from the 16-byte
       offset of a fresh glibc mapping, where large NumPy arrays start. */
    #define FASTBN_PLACE_DEFAULT (FASTBN_PAGE / 2)
    static size_t fastbn_place = FASTBN_PLACE_DEFAULT;
    static void fastbn_set_place(size_t place) { fastbn_place = place; }
    static void fastbn_reset_place(void) { fastbn_place = FASTBN_PLACE_DEFAULT; }

    /* Guarded by a spin lock: NumPy frees with the GIL held, but a lock costs
       nothing next to a megabyte allocation and keeps free-threaded builds
       safe. */
    static fastbn_block fastbn_blocks[FASTBN_MAX_BLOCKS];   /* oldest first */
    static int fastbn_nblocks = 0;
    static size_t fastbn_cached_bytes = 0;
    static size_t fastbn_limit = 0;
    static size_t fastbn_hits = 0, fastbn_misses = 0;
    static PyDataMem_Handler* fastbn_base = NULL;          /* NumPy's default */

    #if defined(_MSC_VER)
    #include <intrin.h>
    static volatile long fastbn_lock_word = 0;
    static void fastbn_lock(void) { while (_InterlockedExchange(&fastbn_lock_word, 1)) {} }
    static void fastbn_unlock(void) { _InterlockedExchange(&fastbn_lock_word, 0); }
    #else
    static int fastbn_lock_word = 0;
    static void fastbn_lock(void) {
        while (__atomic_exchange_n(&fastbn_lock_word, 1, __ATOMIC_ACQUIRE)) {}
    }
    static void fastbn_unlock(void) { __atomic_store_n(&fastbn_lock_word, 0, __ATOMIC_RELEASE); }
    #endif

    static void* fastbn_base_malloc(size_t size) {
        return fastbn_base->allocator.malloc(fastbn_base->allocator.ctx, size);
    }
    static void fastbn_base_free(void* p, size_t size) {
        fastbn_base->allocator.free(fastbn_base->allocator.ctx, p, size);
    }

    /* Take block i out of the list (lock held). */
    static fastbn_block fastbn_take(int i) {
        fastbn_block b = fastbn_blocks[i];
        fastbn_cached_bytes -= b.size;
        memmove(fastbn_blocks + i, fastbn_blocks + i + 1,
                (size_t)(fastbn_nblocks - i - 1) * sizeof(fastbn_block));
        fastbn_nblocks--;
        return b;
    }

    /* The caller's pointer in raw block r of `size` bytes: at page offset
       `place` (rounded to 64 bytes), at least FASTBN_HEAD bytes in. */
    static void* fastbn_user(void* r, size_t size, size_t place) {
        size_t a = (size_t)r + FASTBN_HEAD;
        char* u = (char*)r + FASTBN_HEAD +
                  ((place & (FASTBN_PAGE - 64)) - a % FASTBN_PAGE) % FASTBN_PAGE;
        fastbn_head h = {r, size};
        memcpy(u - sizeof(fastbn_head), &h, sizeof h);
        return u;
    }

    static fastbn_head fastbn_head_of(void* u) {
        fastbn_head h;
        memcpy(&h, (char*)u - sizeof(fastbn_head), sizeof h);
        return h;
    }

    static void* fastbn_cache_malloc(void* ctx, size_t size) {
        void* r = NULL;
        int i;
        (void)ctx;
        if (size > (size_t)-1 - FASTBN_PAD) return NULL;
        fastbn_lock();
        for (i = fastbn_nblocks - 1; i >= 0; i--) {      /* newest first: warmest */
            if (fastbn_blocks[i].size == size) {
                r = fastbn_take(i).ptr;
                break;
            }
        }
        if (r) fastbn_hits++; else fastbn_misses++;
        fastbn_unlock();
        if (r == NULL) r = fastbn_base_malloc(size + FASTBN_PAD);
        return r ? fastbn_user(r, size, fastbn_place) : NULL;
    }

    static void* fastbn_cache_calloc(void* ctx, size_t n, size_t size) {
        void* r;
        (void)ctx;
        if (size != 0 && n > ((size_t)-1 - FASTBN_PAD) / size) return NULL;
        r = fastbn_base->allocator.calloc(fastbn_base->allocator.ctx, 1, n * size + FASTBN_PAD);
        return r ? fastbn_user(r, n * size, FASTBN_PLACE_DEFAULT) : NULL;
    }

    static void fastbn_cache_free(void* ctx, void* p, size_t size);

    static void* fastbn_cache_realloc(void* ctx, void* p, size_t size) {
        fastbn_head h;
        void* r;
        if (p == NULL) return fastbn_cache_malloc(ctx, size);
        if (size > (size_t)-1 - FASTBN_PAD) return NULL;
        h = fastbn_head_of(p);
        r = fastbn_base_malloc(size + FASTBN_PAD);
        if (r == NULL) return NULL;                       /* p stays valid, as realloc's */
        r = fastbn_user(r, size, FASTBN_PLACE_DEFAULT);
        memcpy(r, p, h.size < size ? h.size : size);
        fastbn_cache_free(ctx, p, h.size);
        return r;
    }

    static void fastbn_cache_free(void* ctx, void* u, size_t size) {
        fastbn_block evicted[FASTBN_MAX_BLOCKS];
        int nev = 0, i, kept = 0;
        void* p;
        (void)ctx;
        if (u == NULL) return;
        p = fastbn_head_of(u).raw;
        fastbn_lock();
        if (size > 0 && size <= fastbn_limit) {
            while (fastbn_nblocks > 0 && (fastbn_nblocks == FASTBN_MAX_BLOCKS ||
                                          fastbn_cached_bytes + size > fastbn_limit))
                evicted[nev++] = fastbn_take(0);               /* oldest first */
            fastbn_blocks[fastbn_nblocks].ptr = p;
            fastbn_blocks[fastbn_nblocks].size = size;
            fastbn_nblocks++;
            fastbn_cached_bytes += size;
            kept = 1;
        }
        fastbn_unlock();
        for (i = 0; i < nev; i++) fastbn_base_free(evicted[i].ptr, evicted[i].size + FASTBN_PAD);
        if (!kept) fastbn_base_free(p, size + FASTBN_PAD);
    }

    /* Change the limit; blocks beyond it go back to NumPy's handler. */
    static void fastbn_cache_set_limit(size_t limit) {
        fastbn_block evicted[FASTBN_MAX_BLOCKS];
        int nev = 0, i;
        fastbn_lock();
        fastbn_limit = limit;
        while (fastbn_nblocks > 0 && fastbn_cached_bytes > fastbn_limit)
            evicted[nev++] = fastbn_take(0);
        fastbn_unlock();
        for (i = 0; i < nev; i++) fastbn_base_free(evicted[i].ptr, evicted[i].size + FASTBN_PAD);
    }

    static PyDataMem_Handler fastbn_handler = {
        "fastbn_buffer_cache", 1,
        {NULL, fastbn_cache_malloc, fastbn_cache_calloc, fastbn_cache_realloc,
         fastbn_cache_free}
    };

    static PyObject* fastbn_handler_capsule = NULL;

    /* For tests only: a handler that is not NumPy's default but passes every
       call through to it, standing in for a caller's own handler. */
    static void* fastbn_pt_malloc(void* c, size_t n) { (void)c; return fastbn_base_malloc(n); }
    static void* fastbn_pt_calloc(void* c, size_t n, size_t sz) {
        (void)c; return fastbn_base->allocator.calloc(fastbn_base->allocator.ctx, n, sz); }
    static void* fastbn_pt_realloc(void* c, void* p, size_t n) {
        (void)c; return fastbn_base->allocator.realloc(fastbn_base->allocator.ctx, p, n); }
    static void fastbn_pt_free(void* c, void* p, size_t n) { (void)c; fastbn_base_free(p, n); }
    static PyDataMem_Handler fastbn_passthrough_handler = {
        "fastbn_test_passthrough", 1,
        {NULL, fastbn_pt_malloc, fastbn_pt_calloc, fastbn_pt_realloc, fastbn_pt_free}
    };
    static PyObject* fastbn_passthrough_capsule = NULL;

    static int fastbn_alloc_init(void) {
        if (_import_array() < 0) return -1;
        fastbn_base = (PyDataMem_Handler*)PyCapsule_GetPointer(PyDataMem_DefaultHandler,
                                                               "mem_handler");
        if (fastbn_base == NULL) return -1;
        fastbn_handler_capsule = PyCapsule_New(&fastbn_handler, "mem_handler", NULL);
        fastbn_passthrough_capsule = PyCapsule_New(&fastbn_passthrough_handler,
                                                   "mem_handler", NULL);
        return (fastbn_handler_capsule == NULL || fastbn_passthrough_capsule == NULL) ? -1 : 0;
    }

    /* Is NumPy's default handler the one in force here?  A caller who set
       their own (to track or place memory) keeps it for fastbn's outputs. */
    static int fastbn_default_handler_active(void) {
        PyObject* h = PyDataMem_GetHandler();
        int r = (h == PyDataMem_DefaultHandler);
        Py_XDECREF(h);
        return r;
    }

    /* Install fastbn's handler for this context; returns the previous one. */
    static PyObject* fastbn_use_cache(void) {
        return PyDataMem_SetHandler(fastbn_handler_capsule);
    }
    static PyObject* fastbn_use_passthrough(void) {
        return PyDataMem_SetHandler(fastbn_passthrough_capsule);
    }
    static PyObject* fastbn_restore(PyObject* old) {
        return PyDataMem_SetHandler(old);
    }
    """
    int fastbn_alloc_init() except -1
    void fastbn_set_place(size_t place)
    void fastbn_reset_place()
    object fastbn_use_cache()
    int fastbn_default_handler_active()
    object fastbn_use_passthrough()
    object fastbn_restore(object old)
    void fastbn_cache_set_limit(size_t limit)
    size_t fastbn_limit, fastbn_cached_bytes, fastbn_hits, fastbn_misses
    int fastbn_nblocks
    void fastbn_lock() nogil
    void fastbn_unlock() nogil

fastbn_alloc_init()

#: Outputs smaller than this come from NumPy's allocator as usual: their
#: pages are reused by malloc anyway, and the handler switch would cost more.
MIN_BYTES = 1 << 20

#: Default byte limit of the cache (``FASTBN_BUFFER_CACHE`` overrides it).
DEFAULT_LIMIT = 256 << 20


def _parse_limit(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer number of bytes, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0 bytes (0 disables the cache), got {value}")
    return int(value)


def set_buffer_cache(nbytes):
    """Set how many bytes of freed fastbn outputs are kept for reuse.

    Parameters
    ----------
    nbytes : int
        Byte limit, ``0`` disables the cache and releases what it holds.
        The default is 256 MiB, or the ``FASTBN_BUFFER_CACHE`` environment
        variable (a byte count) read at import.

    Raises
    ------
    TypeError
        If ``nbytes`` is not an integer.
    ValueError
        If ``nbytes`` is negative.

    Notes
    -----
    Only outputs of at least 1 MiB that fastbn allocates itself (no ``out=``
    / ``dx=``) are cached, and only once the caller has dropped every
    reference to them; at most 16 blocks are kept, oldest evicted first.

    Examples
    --------
    >>> import fastbn
    >>> fastbn.set_buffer_cache(64 << 20)    # keep up to 64 MiB
    >>> fastbn.buffer_cache_info()["limit"]
    67108864
    >>> fastbn.set_buffer_cache(256 << 20)
    """
    # with the GIL: evicted blocks go back through NumPy's default handler
    fastbn_cache_set_limit(_parse_limit(nbytes, "nbytes"))


def buffer_cache_info():
    """The state of the buffer cache of freed outputs.

    Returns
    -------
    dict
        ``limit`` (bytes), ``bytes`` and ``blocks`` held now, and the
        ``hits`` and ``misses`` of output allocations so far.

    Examples
    --------
    >>> import fastbn
    >>> sorted(fastbn.buffer_cache_info())
    ['blocks', 'bytes', 'hits', 'limit', 'misses']
    """
    fastbn_lock()
    info = {"limit": fastbn_limit, "bytes": fastbn_cached_bytes, "blocks": fastbn_nblocks,
            "hits": fastbn_hits, "misses": fastbn_misses}
    fastbn_unlock()
    return info


def empty(shape, dtype):
    """``np.empty(shape, dtype)``, from the buffer cache when it is large enough."""
    return empty_reused(shape, dtype)[0]


def empty_reused(shape, dtype, place=None):
    """``(array, reused)``: :func:`empty`, and whether its block came from the cache.

    A reused block's pages are mapped and likely cached; a fresh one's are
    not yet (the caller may pick different stores for it).  ``place``: the
    byte offset within a 4 KiB page at which a cached array's memory starts
    (rounded down to 64 bytes; default half a page).
    """
    cdef Py_ssize_t n = np.dtype(dtype).itemsize
    for s in shape:
        n *= s
    if n < MIN_BYTES or fastbn_limit == 0 or not fastbn_default_handler_active():
        return np.empty(shape, dtype), False
    hits = fastbn_hits          # the GIL is held from here to the allocation
    old = fastbn_use_cache()
    if place is not None:
        fastbn_set_place(<size_t>(place % 4096))
    try:
        a = np.empty(shape, dtype)
    finally:
        fastbn_reset_place()
        fastbn_restore(old)
    return a, fastbn_hits != hits


def _in_foreign_context(fn):
    """Call fn() with a non-default (pass-through) handler in force.

    For tests: it stands in for a caller's own handler, which :func:`empty`
    must leave in charge of fastbn's outputs.
    """
    old = fastbn_use_passthrough()
    try:
        return fn()
    finally:
        fastbn_restore(old)


def _limit_from_env():
    text = os.environ.get("FASTBN_BUFFER_CACHE", "").strip()
    if not text:
        return DEFAULT_LIMIT
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"FASTBN_BUFFER_CACHE must be a byte count (0 disables), "
                         f"got {text!r}") from None
    return _parse_limit(value, "FASTBN_BUFFER_CACHE")


set_buffer_cache(_limit_from_env())
