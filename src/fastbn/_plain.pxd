# cython: language_level=3
"""The checks and outputs of the one-step path of plain calls.

A call whose arguments are all in their plain form (exact ndarrays of one
float dtype, C-contiguous, aligned, native byte order) is checked here, in
C, and run straight on the C loops, where the general Python path would
validate, convert and wrap ten memoryviews first.  ``_bn`` (batch norm) and
``_ln`` (layer norm) cimport these.  A module cimporting this one calls
``_import_array()`` at import.

``policy`` below: what a plain call needs from the Python side, a
:class:`fastbn._layout.PlainPolicy` fixed at import: ``cache_type`` builds
the cache, ``threads_for(size)`` sizes the team of a call of
``serial_below`` or more elements, and ``rows_output(shape, dtype,
addresses)`` returns ``(array, stream)`` for an output of ``min_bytes`` or
more computed from the inputs at ``addresses``.
"""

cdef extern from "numpy/arrayobject.h":
    ctypedef Py_ssize_t npy_intp
    ctypedef struct PyArrayObject:
        pass
    enum:
        NPY_FLOAT
        NPY_DOUBLE
        NPY_ARRAY_C_CONTIGUOUS
        NPY_ARRAY_ALIGNED
    bint PyArray_CheckExact(object)
    int PyArray_TYPE(PyArrayObject*)
    int PyArray_NDIM(PyArrayObject*)
    int PyArray_ITEMSIZE(PyArrayObject*)
    npy_intp PyArray_NBYTES(PyArrayObject*)
    npy_intp* PyArray_DIMS(PyArrayObject*)
    void* PyArray_DATA(PyArrayObject*)
    int PyArray_FLAGS(PyArrayObject*)
    bint PyArray_ISNOTSWAPPED(PyArrayObject*)
    object PyArray_EMPTY(int nd, npy_intp* dims, int typenum, int fortran)
    int _import_array() except -1


cdef inline bint _plain(object a, int ndim, int typenum) noexcept:
    """``a`` is an exact ndarray of ``typenum``, ``ndim`` axes, native byte
    order, C-contiguous and aligned."""
    cdef PyArrayObject* p
    if not PyArray_CheckExact(a):
        return False
    p = <PyArrayObject*>a
    return (PyArray_NDIM(p) == ndim and PyArray_TYPE(p) == typenum and PyArray_ISNOTSWAPPED(p)
            and (PyArray_FLAGS(p) & NPY_ARRAY_C_CONTIGUOUS) != 0
            and (PyArray_FLAGS(p) & NPY_ARRAY_ALIGNED) != 0)


cdef inline bint _plain_float(dict d, str key, double* value) except -1:
    """False when ``d[key]`` is present and not a Python float (the general
    path then converts or raises); else True, with ``value`` set to it when
    present and left as it is (the default) when absent."""
    if key not in d:
        return True
    v = d[key]
    if type(v) is not float:
        return False
    value[0] = v
    return True


cdef inline bint _vector(object a, Py_ssize_t n, int typenum) noexcept:
    return _plain(a, 1, typenum) and PyArray_DIMS(<PyArrayObject*>a)[0] == n


cdef inline void* _data(object a) noexcept:
    return PyArray_DATA(<PyArrayObject*>a)


cdef inline int _plain_rows(object x, Py_ssize_t min_bytes) noexcept:
    """The typenum of ``x`` when it is a plain, non-empty float32/float64
    (R, D) array whose rows are shorter than ``min_bytes`` bytes (parameter
    vectors that small are never placed by the buffer cache); else 0."""
    cdef int typenum
    cdef npy_intp* dims
    if not PyArray_CheckExact(x):
        return 0
    typenum = PyArray_TYPE(<PyArrayObject*>x)
    if (typenum != NPY_DOUBLE and typenum != NPY_FLOAT) or not _plain(x, 2, typenum):
        return 0
    dims = PyArray_DIMS(<PyArrayObject*>x)
    if dims[0] < 1 or dims[1] < 1 or dims[1] * PyArray_ITEMSIZE(<PyArrayObject*>x) >= min_bytes:
        return 0
    return typenum


cdef inline int _plain_threads(object policy, Py_ssize_t size) except -1:
    """The team of a call of ``size`` elements, as ``threads_for`` gives it."""
    if size < <Py_ssize_t>policy.serial_below:
        return 1
    return policy.threads_for(size)


cdef inline tuple _plain_output(object policy, object x, object other, int typenum):
    """``(array, stream)``: the C-ordered (R, D) output of a call on ``x``
    (and ``other``, of the same size, or None), as the general path
    allocates it: small ones fresh, large ones from ``policy.rows_output``."""
    cdef PyArrayObject* p = <PyArrayObject*>x
    cdef tuple addresses
    if PyArray_NBYTES(p) < <Py_ssize_t>policy.min_bytes:
        return PyArray_EMPTY(2, PyArray_DIMS(p), typenum, 0), False
    if other is None:
        addresses = (<Py_ssize_t>_data(x),)
    else:
        addresses = (<Py_ssize_t>_data(x), <Py_ssize_t>_data(other))
    return policy.rows_output(x.shape, x.dtype, addresses)
