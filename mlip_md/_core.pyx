# cython: language_level=3, boundscheck=False, wraparound=False
"""Thin Cython binding over the C API in ``csrc/include/mlip_md.h``.

Only shape/dtype checks and array conversion live here; input validation with
user-facing messages is done by the Python front-ends (e.g.
``mlip_md.neighbors``). Result buffers allocated by the C++ core are wrapped
into numpy arrays without a copy: each array's ``base`` is a PyCapsule whose
destructor releases the buffer with ``mlip_free``.
"""
from cpython.pycapsule cimport PyCapsule_New, PyCapsule_GetPointer
from libc.stdint cimport int32_t, int64_t

import numpy as np
cimport numpy as cnp

cnp.import_array()


cdef extern from "mlip_md.h" nogil:
    enum:
        MLIP_OK
        MLIP_ERR_INVALID_ARGUMENT
        MLIP_ERR_OUT_OF_MEMORY
        MLIP_ERRBUF_LEN
        MLIP_API_VERSION

    void mlip_free(void *ptr)

    ctypedef struct mlip_neighbor_options:
        double cutoff
        int return_vectors
        int return_distances
        int num_threads
        double bin_fraction

    ctypedef struct mlip_neighbor_list:
        int64_t n_pairs
        int64_t *i
        int64_t *j
        int32_t *shifts
        double *vectors
        double *distances

    mlip_neighbor_options mlip_neighbor_options_default()
    int mlip_neighbors_compute(const double *positions, int64_t n_atoms,
                               const double *cell, const int *pbc,
                               const mlip_neighbor_options *options,
                               mlip_neighbor_list *result, char *errbuf,
                               size_t errbuf_len)
    void mlip_neighbor_list_free(mlip_neighbor_list *list)


API_VERSION = MLIP_API_VERSION

cdef void _capsule_free(object capsule) noexcept:
    mlip_free(PyCapsule_GetPointer(capsule, NULL))


cdef object _adopt(void **ptr, int ndim, cnp.npy_intp *shape, int typenum):
    """Wrap the C buffer ``*ptr`` in a numpy array that owns it (no copy).

    Ownership moves to the array as soon as the capsule exists: ``*ptr`` is
    set to NULL so that ``mlip_neighbor_list_free`` does not free it again.
    """
    capsule = PyCapsule_New(ptr[0], NULL, _capsule_free)
    ptr[0] = NULL
    arr = cnp.PyArray_SimpleNewFromData(ndim, shape, typenum,
                                        PyCapsule_GetPointer(capsule, NULL))
    cnp.set_array_base(<cnp.ndarray>arr, capsule)
    return arr


def compute_neighbors(positions, cell, pbc, double cutoff, *,
                      bint vectors=True, bint distances=False,
                      int num_threads=1, double bin_fraction=0.0):
    """Raw binding of ``mlip_neighbors_compute``.

    ``positions``: float64 [N, 3]; ``cell``: float64 [3, 3]; ``pbc``: 3 bools.
    Returns ``(i, j, shifts, vectors or None, distances or None)``.
    """
    cdef cnp.ndarray[cnp.float64_t, ndim=2, mode="c"] pos = np.ascontiguousarray(
        positions, dtype=np.float64)
    cdef cnp.ndarray[cnp.float64_t, ndim=2, mode="c"] c = np.ascontiguousarray(
        cell, dtype=np.float64)
    if pos.shape[1] != 3:
        raise ValueError(f"positions must have shape [N, 3], got {positions.shape}")
    if c.shape[0] != 3 or c.shape[1] != 3:
        raise ValueError(f"cell must have shape [3, 3], got {cell.shape}")
    cdef cnp.ndarray[cnp.int32_t, ndim=1, mode="c"] p = np.ascontiguousarray(
        np.asarray(pbc, dtype=bool).reshape(-1), dtype=np.int32)
    if p.shape[0] != 3:
        raise ValueError(f"pbc must have 3 entries, got {p.shape[0]}")

    cdef mlip_neighbor_options opts = mlip_neighbor_options_default()
    opts.cutoff = cutoff
    opts.return_vectors = vectors
    opts.return_distances = distances
    opts.num_threads = num_threads
    opts.bin_fraction = bin_fraction

    cdef mlip_neighbor_list nl
    cdef char errbuf[MLIP_ERRBUF_LEN]
    cdef int status
    cdef int64_t n = pos.shape[0]
    cdef const double *pos_ptr = <const double *>pos.data if n > 0 else NULL
    with nogil:
        status = mlip_neighbors_compute(pos_ptr, n, <const double *>c.data,
                                        <const int *>p.data, &opts, &nl,
                                        errbuf, MLIP_ERRBUF_LEN)
    if status != MLIP_OK:
        msg = errbuf.decode("utf-8", "replace")
        if status == MLIP_ERR_INVALID_ARGUMENT:
            raise ValueError(msg)
        if status == MLIP_ERR_OUT_OF_MEMORY:
            raise MemoryError(msg)
        raise RuntimeError(msg)

    cdef cnp.npy_intp shape1[1]
    cdef cnp.npy_intp shape2[2]
    shape1[0] = nl.n_pairs
    shape2[0] = nl.n_pairs
    shape2[1] = 3
    try:
        i = _adopt(<void **>&nl.i, 1, shape1, cnp.NPY_INT64)
        j = _adopt(<void **>&nl.j, 1, shape1, cnp.NPY_INT64)
        S = _adopt(<void **>&nl.shifts, 2, shape2, cnp.NPY_INT32)
        V = None
        D = None
        if nl.vectors != NULL:
            V = _adopt(<void **>&nl.vectors, 2, shape2, cnp.NPY_FLOAT64)
        if nl.distances != NULL:
            D = _adopt(<void **>&nl.distances, 1, shape1, cnp.NPY_FLOAT64)
    finally:
        mlip_neighbor_list_free(&nl)  # whatever was not adopted
    return i, j, S, V, D
