# cython: language_level=3, boundscheck=False, wraparound=False
"""Thin Cython binding over the C API in ``csrc/include/mlip_md.h``.

Only shape/dtype checks and array conversion live here; input validation with
user-facing messages is done by the Python front-ends (e.g.
``mlip_md.neighbors``). Result buffers allocated by the C++ core are wrapped
into numpy arrays without a copy: each array's ``base`` is a PyCapsule whose
destructor releases the buffer with ``mlip_free``.
"""
from cpython.number cimport PyNumber_Index
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
        MLIP_ERR_STALE
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
    ctypedef struct mlip_verlet_candidates:
        pass
    int mlip_verlet_candidates_create(int64_t n_atoms, const double *positions, const double *cell,
                                      const int64_t *i, const int64_t *j, const int32_t *shifts,
                                      int64_t n_pairs, double cutoff, double skin,
                                      mlip_verlet_candidates **out, char *errbuf, size_t errbuf_len)
    void mlip_verlet_candidates_free(mlip_verlet_candidates *candidates)
    int64_t mlip_verlet_candidates_count(const mlip_verlet_candidates *candidates)
    int mlip_verlet_candidates_filter(const mlip_verlet_candidates *candidates, const double *positions,
                                      int64_t *out_ij, int64_t *out_index, double *out_vectors,
                                      double *out_distances, int64_t *n_kept, double *min_distance,
                                      char *errbuf, size_t errbuf_len)


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


# ============================================================================
# i-PI wire codec (section 3 of mlip_md.h)
#
# Raw bindings: every error (from the C core or from the shape / dtype checks
# here) raises ValueError with the message; mlip_md.engines.ipi_wire turns
# them into ProtocolError. Byte inputs may be any C-contiguous buffer of
# unsigned bytes (bytes, bytearray, memoryview, numpy uint8).
# ============================================================================
cdef extern from "mlip_md.h" nogil:
    enum:
        MLIP_IPI_HEADER_LEN
        MLIP_IPI_INIT_PREFIX_LEN
        MLIP_IPI_POSDATA_PREFIX_LEN
        MLIP_IPI_MAX_INIT_LEN
        MLIP_IPI_MAX_ATOMS
        MLIP_IPI_MAX_EXTRAS_LEN
        MLIP_IPI_N_MESSAGES
    double MLIP_IPI_BOHR_PER_ANGSTROM
    double MLIP_IPI_HARTREE_PER_EV
    double MLIP_IPI_HARTREE_PER_BOHR_PER_EV_PER_ANGSTROM

    int mlip_ipi_decode_header(const char *b, size_t n, int *message,
                               char *errbuf, size_t errbuf_len)
    int mlip_ipi_encode_header(int message, char *out, size_t out_len,
                               char *errbuf, size_t errbuf_len)
    int mlip_ipi_decode_init_prefix(const char *buf, size_t n, int32_t *index,
                                    int32_t *length, char *errbuf, size_t errbuf_len)
    size_t mlip_ipi_init_size(int32_t length)
    int mlip_ipi_encode_init(int32_t index, const char *init, int32_t length,
                             char *out, size_t out_len, size_t *n_written,
                             char *errbuf, size_t errbuf_len)
    int mlip_ipi_decode_posdata_prefix(const char *buf, size_t n,
                                       int32_t expected_atoms, int32_t max_atoms,
                                       double *cell_angstrom, int32_t *n_atoms,
                                       char *errbuf, size_t errbuf_len)
    int mlip_ipi_decode_positions(const char *buf, size_t n, int32_t n_atoms,
                                  double *positions_angstrom, char *errbuf,
                                  size_t errbuf_len)
    size_t mlip_ipi_posdata_size(int32_t n_atoms)
    int mlip_ipi_encode_posdata(const double *cell_angstrom,
                                const double *positions_angstrom, int32_t n_atoms,
                                char *out, size_t out_len, size_t *n_written,
                                char *errbuf, size_t errbuf_len)
    size_t mlip_ipi_forceready_size(int32_t n_atoms, int32_t extras_len)
    int mlip_ipi_encode_forceready(double energy_ev,
                                   const double *forces_ev_per_angstrom,
                                   int32_t n_atoms, const double *virial_ev,
                                   const char *extras, int32_t extras_len,
                                   char *out, size_t out_len, size_t *n_written,
                                   char *errbuf, size_t errbuf_len)
    int mlip_ipi_decode_forceready(const char *buf, size_t n, int32_t max_atoms,
                                   double *energy_ev, int32_t *n_atoms,
                                   double *forces_ev_per_angstrom,
                                   int32_t forces_capacity, double *virial_ev,
                                   size_t *extras_offset, int32_t *extras_len,
                                   char *errbuf, size_t errbuf_len)


IPI_HEADER_LEN = MLIP_IPI_HEADER_LEN
IPI_INIT_PREFIX_LEN = MLIP_IPI_INIT_PREFIX_LEN
IPI_POSDATA_PREFIX_LEN = MLIP_IPI_POSDATA_PREFIX_LEN
IPI_MAX_INIT_LEN = MLIP_IPI_MAX_INIT_LEN
IPI_MAX_ATOMS = MLIP_IPI_MAX_ATOMS
IPI_MAX_EXTRAS_LEN = MLIP_IPI_MAX_EXTRAS_LEN
IPI_N_MESSAGES = MLIP_IPI_N_MESSAGES
IPI_BOHR_PER_ANGSTROM = MLIP_IPI_BOHR_PER_ANGSTROM
IPI_HARTREE_PER_EV = MLIP_IPI_HARTREE_PER_EV
IPI_HARTREE_PER_BOHR_PER_EV_PER_ANGSTROM = MLIP_IPI_HARTREE_PER_BOHR_PER_EV_PER_ANGSTROM


cdef inline const char *_bytes_ptr(const unsigned char[::1] b) noexcept:
    """Start of ``b``, or NULL when empty (the C API accepts NULL with length 0)."""
    return <const char *>&b[0] if b.shape[0] > 0 else NULL


cdef inline int32_t _as_int32(object value, str name) except? -1:
    """``value`` as an int32; out-of-range values raise ValueError (not OverflowError)."""
    v = PyNumber_Index(value)  # TypeError for non-integers
    if v < -2147483648 or v > 2147483647:
        raise ValueError(f"{name} = {v} does not fit an int32")
    return <int32_t>v


cdef object _ipi_error(char *errbuf):
    return ValueError(errbuf.decode("utf-8", "replace"))


def ipi_decode_header(const unsigned char[::1] b not None):
    """Raw ``mlip_ipi_decode_header``: the message kind (int) of a 12-byte header."""
    cdef int message = -1
    cdef char errbuf[MLIP_ERRBUF_LEN]
    if mlip_ipi_decode_header(_bytes_ptr(b), b.shape[0], &message,
                              errbuf, MLIP_ERRBUF_LEN) != MLIP_OK:
        raise _ipi_error(errbuf)
    return message


def ipi_encode_header(int message):
    """Raw ``mlip_ipi_encode_header``: the 12 header bytes of ``message``."""
    cdef char out[MLIP_IPI_HEADER_LEN]
    cdef char errbuf[MLIP_ERRBUF_LEN]
    if mlip_ipi_encode_header(message, out, MLIP_IPI_HEADER_LEN,
                              errbuf, MLIP_ERRBUF_LEN) != MLIP_OK:
        raise _ipi_error(errbuf)
    return out[:MLIP_IPI_HEADER_LEN]


def ipi_decode_init_prefix(const unsigned char[::1] b not None):
    """Raw ``mlip_ipi_decode_init_prefix``: ``(index, length)``."""
    cdef int32_t index = 0, length = 0
    cdef char errbuf[MLIP_ERRBUF_LEN]
    if mlip_ipi_decode_init_prefix(_bytes_ptr(b), b.shape[0], &index, &length,
                                   errbuf, MLIP_ERRBUF_LEN) != MLIP_OK:
        raise _ipi_error(errbuf)
    return index, length


def ipi_encode_init(index, const unsigned char[::1] init not None):
    """Raw ``mlip_ipi_encode_init``: a complete INIT message (bytes)."""
    cdef int32_t idx = _as_int32(index, "index")
    if init.shape[0] > MLIP_IPI_MAX_INIT_LEN:
        raise ValueError(f"INIT: init string of {init.shape[0]} bytes, more than "
                         f"{MLIP_IPI_MAX_INIT_LEN}")
    cdef int32_t length = <int32_t>init.shape[0]
    cdef size_t need = mlip_ipi_init_size(length)
    out = bytearray(need)
    cdef unsigned char[::1] o = out
    cdef size_t written = 0
    cdef char errbuf[MLIP_ERRBUF_LEN]
    if mlip_ipi_encode_init(idx, _bytes_ptr(init), length, <char *>&o[0], need,
                            &written, errbuf, MLIP_ERRBUF_LEN) != MLIP_OK:
        raise _ipi_error(errbuf)
    return bytes(out)


def ipi_decode_posdata_prefix(const unsigned char[::1] b not None,
                              expected_atoms, max_atoms):
    """Raw ``mlip_ipi_decode_posdata_prefix``: ``(cell [3, 3] Angstrom rows, n_atoms)``."""
    cdef int32_t expected = _as_int32(expected_atoms, "expected_atoms")
    cdef int32_t maxn = _as_int32(max_atoms, "max_atoms")
    cdef cnp.ndarray[cnp.float64_t, ndim=2, mode="c"] cell = np.empty((3, 3), np.float64)
    cdef int32_t n = 0
    cdef char errbuf[MLIP_ERRBUF_LEN]
    if mlip_ipi_decode_posdata_prefix(_bytes_ptr(b), b.shape[0], expected, maxn,
                                      <double *>cell.data, &n,
                                      errbuf, MLIP_ERRBUF_LEN) != MLIP_OK:
        raise _ipi_error(errbuf)
    return cell, n


def ipi_decode_positions(const unsigned char[::1] b not None, n_atoms, out=None):
    """Raw ``mlip_ipi_decode_positions``: positions [n_atoms, 3] in Angstrom.

    ``out``: None (a new array is returned) or a writable C-contiguous float64
    array of shape [n_atoms, 3], filled in place and returned.
    """
    cdef int32_t n = _as_int32(n_atoms, "n_atoms")
    if n < 1 or n > MLIP_IPI_MAX_ATOMS:
        raise ValueError(f"n_atoms = {n} outside [1, {MLIP_IPI_MAX_ATOMS}]")
    if out is None:
        out = np.empty((n, 3), np.float64)
    elif (not isinstance(out, np.ndarray) or out.dtype != np.float64 or out.ndim != 2
          or out.shape[0] != n or out.shape[1] != 3 or not out.flags.c_contiguous
          or not out.flags.writeable):
        raise ValueError(
            f"out must be a writable C-contiguous float64 array of shape [{n}, 3], got "
            + (f"{out.dtype} array of shape {list(out.shape)} (C-contiguous: "
               f"{out.flags.c_contiguous}, writable: {out.flags.writeable})"
               if isinstance(out, np.ndarray) else type(out).__name__))
    cdef double[:, ::1] o = out
    cdef const char *p = _bytes_ptr(b)
    cdef size_t blen = b.shape[0]
    cdef int status
    cdef char errbuf[MLIP_ERRBUF_LEN]
    with nogil:
        status = mlip_ipi_decode_positions(p, blen, n, &o[0, 0], errbuf, MLIP_ERRBUF_LEN)
    if status != MLIP_OK:
        raise _ipi_error(errbuf)
    return out


def ipi_posdata_size(n_atoms):
    """Raw ``mlip_ipi_posdata_size`` (0 for an invalid count)."""
    return mlip_ipi_posdata_size(_as_int32(n_atoms, "n_atoms"))


def ipi_forceready_size(n_atoms, extras_len):
    """Raw ``mlip_ipi_forceready_size`` (0 for invalid arguments)."""
    return mlip_ipi_forceready_size(_as_int32(n_atoms, "n_atoms"),
                                    _as_int32(extras_len, "extras_len"))


def ipi_encode_posdata(cell, positions):
    """Raw ``mlip_ipi_encode_posdata``: a complete POSDATA message (bytes) from
    ``cell`` [3, 3] (rows = lattice vectors, Angstrom) and ``positions`` [N, 3]
    (Angstrom)."""
    c_arr = np.ascontiguousarray(cell, dtype=np.float64)
    pos_arr = np.ascontiguousarray(positions, dtype=np.float64)
    if c_arr.shape != (3, 3):
        raise ValueError(f"cell must have shape [3, 3], got {list(c_arr.shape)}")
    if pos_arr.ndim != 2 or pos_arr.shape[1] != 3 or not (
            1 <= pos_arr.shape[0] <= MLIP_IPI_MAX_ATOMS):
        raise ValueError(f"positions must have shape [N, 3] with 1 <= N <= "
                         f"{MLIP_IPI_MAX_ATOMS}, got {list(pos_arr.shape)}")
    cdef cnp.ndarray[cnp.float64_t, ndim=2, mode="c"] c = c_arr
    cdef cnp.ndarray[cnp.float64_t, ndim=2, mode="c"] pos = pos_arr
    cdef int32_t n = <int32_t>pos.shape[0]
    cdef size_t need = mlip_ipi_posdata_size(n)
    out = bytearray(need)
    cdef unsigned char[::1] o = out
    cdef size_t written = 0
    cdef char errbuf[MLIP_ERRBUF_LEN]
    if mlip_ipi_encode_posdata(<const double *>c.data, <const double *>pos.data, n,
                               <char *>&o[0], need, &written,
                               errbuf, MLIP_ERRBUF_LEN) != MLIP_OK:
        raise _ipi_error(errbuf)
    return bytes(out)


def ipi_encode_forceready(double energy, forces, virial,
                          const unsigned char[::1] extras not None,
                          unsigned char[::1] out not None):
    """Raw ``mlip_ipi_encode_forceready`` into the writable buffer ``out``.

    ``energy`` eV, ``forces`` [N, 3] eV/Angstrom, ``virial`` [3, 3] eV,
    ``extras`` bytes. Returns the number of bytes written at the start of
    ``out`` (which must be at least ``ipi_forceready_size(N, len(extras))``).
    """
    f_arr = np.ascontiguousarray(forces, dtype=np.float64)
    v_arr = np.ascontiguousarray(virial, dtype=np.float64)
    if f_arr.ndim != 2 or f_arr.shape[1] != 3 or not (
            1 <= f_arr.shape[0] <= MLIP_IPI_MAX_ATOMS):
        raise ValueError(f"forces must have shape [N, 3] with 1 <= N <= "
                         f"{MLIP_IPI_MAX_ATOMS}, got {list(f_arr.shape)}")
    if v_arr.shape != (3, 3):
        raise ValueError(f"virial must have shape [3, 3], got {list(v_arr.shape)}")
    cdef cnp.ndarray[cnp.float64_t, ndim=2, mode="c"] f = f_arr
    cdef cnp.ndarray[cnp.float64_t, ndim=2, mode="c"] v = v_arr
    if extras.shape[0] > MLIP_IPI_MAX_EXTRAS_LEN:
        raise ValueError(f"extras of {extras.shape[0]} bytes, more than "
                         f"{MLIP_IPI_MAX_EXTRAS_LEN}")
    cdef int32_t n = <int32_t>f.shape[0]
    cdef int32_t nx = <int32_t>extras.shape[0]
    cdef const char *xp = _bytes_ptr(extras)
    cdef char *op = <char *>&out[0] if out.shape[0] > 0 else NULL
    cdef size_t olen = out.shape[0]
    cdef size_t written = 0
    cdef int status
    cdef char errbuf[MLIP_ERRBUF_LEN]
    with nogil:
        status = mlip_ipi_encode_forceready(energy, <const double *>f.data, n,
                                            <const double *>v.data, xp, nx,
                                            op, olen, &written, errbuf, MLIP_ERRBUF_LEN)
    if status != MLIP_OK:
        raise _ipi_error(errbuf)
    return written


def ipi_decode_forceready(const unsigned char[::1] b not None, max_atoms):
    """Raw ``mlip_ipi_decode_forceready`` of a complete message:
    ``(energy eV, forces [N, 3] eV/Angstrom, virial [3, 3] eV, extras bytes)``."""
    cdef int32_t maxn = _as_int32(max_atoms, "max_atoms")
    cdef const char *p = _bytes_ptr(b)
    cdef size_t blen = b.shape[0]
    cdef double energy = 0.0
    cdef int32_t n = 0, nx = 0
    cdef size_t xoff = 0
    cdef cnp.ndarray[cnp.float64_t, ndim=2, mode="c"] vir = np.empty((3, 3), np.float64)
    cdef char errbuf[MLIP_ERRBUF_LEN]
    # first call: validate everything and learn N; second: fill the forces
    if mlip_ipi_decode_forceready(p, blen, maxn, &energy, &n, NULL, 0,
                                  <double *>vir.data, &xoff, &nx,
                                  errbuf, MLIP_ERRBUF_LEN) != MLIP_OK:
        raise _ipi_error(errbuf)
    cdef cnp.ndarray[cnp.float64_t, ndim=2, mode="c"] forces = np.empty((n, 3), np.float64)
    if mlip_ipi_decode_forceready(p, blen, maxn, &energy, &n, <double *>forces.data, n,
                                  <double *>vir.data, &xoff, &nx,
                                  errbuf, MLIP_ERRBUF_LEN) != MLIP_OK:
        raise _ipi_error(errbuf)
    return energy, forces, vir, bytes(b[xoff:xoff + nx])


# ============================================================================
# Switching functions (section 4 of mlip_md.h)
# ============================================================================
cdef extern from "mlip_md.h" nogil:
    enum:
        MLIP_SWITCH_N_SHAPES
    int mlip_switch_continuity(int shape)
    int mlip_switch_evaluate(int shape, double r_inner, double r_outer, const double *r,
                             int64_t n, double *s, double *ds, double *d2s,
                             char *errbuf, size_t errbuf_len)


SWITCH_N_SHAPES = MLIP_SWITCH_N_SHAPES


def switch_continuity(int shape):
    """Raw ``mlip_switch_continuity``: the order k of a C^k shape, -1 if unknown."""
    return mlip_switch_continuity(shape)


def switch_evaluate(int shape, double r_inner, double r_outer, r):
    """Raw ``mlip_switch_evaluate``: ``(s, ds/dr, d2s/dr2)``, float64 arrays shaped like ``r``."""
    cdef cnp.ndarray[cnp.float64_t, ndim=1, mode="c"] x = np.ascontiguousarray(
        np.asarray(r, dtype=np.float64).reshape(-1))
    cdef int64_t n = x.shape[0]
    cdef cnp.ndarray[cnp.float64_t, ndim=1, mode="c"] s = np.empty(n, np.float64)
    cdef cnp.ndarray[cnp.float64_t, ndim=1, mode="c"] ds = np.empty(n, np.float64)
    cdef cnp.ndarray[cnp.float64_t, ndim=1, mode="c"] d2s = np.empty(n, np.float64)
    cdef const double *xp = <const double *>x.data if n > 0 else NULL
    cdef double *sp = <double *>s.data if n > 0 else NULL
    cdef double *dp = <double *>ds.data if n > 0 else NULL
    cdef double *d2p = <double *>d2s.data if n > 0 else NULL
    cdef int status
    cdef char errbuf[MLIP_ERRBUF_LEN]
    with nogil:
        status = mlip_switch_evaluate(shape, r_inner, r_outer, xp, n, sp, dp, d2p,
                                      errbuf, MLIP_ERRBUF_LEN)
    if status != MLIP_OK:
        raise ValueError(errbuf.decode("utf-8", "replace"))
    shape_r = np.shape(r)
    return s.reshape(shape_r), ds.reshape(shape_r), d2s.reshape(shape_r)


class StaleCandidatesError(RuntimeError):
    """The Verlet candidates no longer cover the cutoff (an atom moved more than skin / 2)."""


cdef class VerletCandidates:
    """``mlip_verlet_candidates``: the candidate pairs of a Verlet list, stored once.

    ``VerletCandidates(positions [n_atoms, 3] Å, cell [3, 3] Å, i [E] int64 ascending, j [E]
    int64, shifts [E, 3] int32, cutoff Å, skin Å)`` (candidates built at cutoff + skin at
    these positions); ``filter(positions, out_ij [2 E] int64, out_vectors [E, 3], out_index [E]
    int64 or None, out_distances [E] or None)`` writes the n pairs closer than ``cutoff`` (``out_ij[:2 n].reshape(2, n)`` is the
    edge index) and returns ``(n, smallest kept distance or inf)``; StaleCandidatesError when an
    atom moved more than skin / 2 since the build."""
    cdef mlip_verlet_candidates *handle
    cdef readonly int64_t n_atoms, n_pairs

    def __cinit__(self):
        self.handle = NULL

    def __init__(self, positions, cell, i, j, shifts, double cutoff, double skin):
        cdef cnp.ndarray[cnp.float64_t, ndim=2, mode="c"] pos = np.ascontiguousarray(positions, dtype=np.float64)
        cdef cnp.ndarray[cnp.int64_t, ndim=1, mode="c"] ci = np.ascontiguousarray(i, dtype=np.int64)
        cdef cnp.ndarray[cnp.int64_t, ndim=1, mode="c"] cj = np.ascontiguousarray(j, dtype=np.int64)
        cdef cnp.ndarray[cnp.int32_t, ndim=2, mode="c"] cs = np.ascontiguousarray(
            np.reshape(shifts, (-1, 3)), dtype=np.int32)
        cdef cnp.ndarray[cnp.float64_t, ndim=2, mode="c"] cc = np.ascontiguousarray(
            np.reshape(cell, (3, 3)), dtype=np.float64)
        if pos.shape[1] != 3:
            raise ValueError(f"positions must be [n_atoms, 3], got {np.shape(positions)}")
        if cj.shape[0] != ci.shape[0] or cs.shape[0] != ci.shape[0]:
            raise ValueError(f"i [{ci.shape[0]}], j [{cj.shape[0]}] and shifts [{cs.shape[0]}, 3] must agree")
        cdef char errbuf[MLIP_ERRBUF_LEN]
        cdef int status = mlip_verlet_candidates_create(pos.shape[0], <const double *>pos.data,
                                                        <const double *>cc.data, <const int64_t *>ci.data,
                                                        <const int64_t *>cj.data, <const int32_t *>cs.data,
                                                        ci.shape[0], cutoff, skin, &self.handle, errbuf,
                                                        MLIP_ERRBUF_LEN)
        if status == MLIP_ERR_OUT_OF_MEMORY:
            raise MemoryError(errbuf.decode("utf-8", "replace"))
        if status != MLIP_OK:
            raise ValueError(errbuf.decode("utf-8", "replace"))
        self.n_atoms = pos.shape[0]
        self.n_pairs = mlip_verlet_candidates_count(self.handle)

    def __dealloc__(self):
        mlip_verlet_candidates_free(self.handle)

    def filter(self, positions, out_ij, out_vectors, out_index=None, out_distances=None):
        cdef cnp.ndarray[cnp.float64_t, ndim=2, mode="c"] pos = positions
        cdef cnp.ndarray[cnp.int64_t, ndim=1, mode="c"] oij = out_ij
        cdef cnp.ndarray[cnp.float64_t, ndim=2, mode="c"] ov = out_vectors
        cdef cnp.ndarray[cnp.int64_t, ndim=1, mode="c"] ok
        cdef cnp.ndarray[cnp.float64_t, ndim=1, mode="c"] od
        if pos.shape[0] != self.n_atoms or pos.shape[1] != 3:
            raise ValueError(f"positions must be [{self.n_atoms}, 3], got [{pos.shape[0]}, {pos.shape[1]}]")
        if oij.shape[0] != 2 * self.n_pairs or ov.shape[0] < self.n_pairs or ov.shape[1] != 3:
            raise ValueError("out_ij must hold 2 n_pairs entries and out_vectors n_pairs rows")
        cdef int64_t *index_ptr = NULL
        cdef double *dist_ptr = NULL
        if out_index is not None:
            ok = out_index
            if ok.shape[0] < self.n_pairs:
                raise ValueError("out_index must hold n_pairs entries")
            index_ptr = <int64_t *>ok.data
        if out_distances is not None:
            od = out_distances
            if od.shape[0] < self.n_pairs:
                raise ValueError("out_distances must hold n_pairs entries")
            dist_ptr = <double *>od.data
        cdef int64_t kept = 0
        cdef double closest = 0.0
        cdef char errbuf[MLIP_ERRBUF_LEN]
        cdef int status
        with nogil:
            status = mlip_verlet_candidates_filter(self.handle, <const double *>pos.data, <int64_t *>oij.data, index_ptr, <double *>ov.data, dist_ptr,
                                                   &kept, &closest, errbuf, MLIP_ERRBUF_LEN)
        if status == MLIP_ERR_STALE:
            raise StaleCandidatesError(errbuf.decode("utf-8", "replace"))
        if status != MLIP_OK:
            raise ValueError(errbuf.decode("utf-8", "replace"))
        return kept, closest


# ============================================================================
# Power-spectrum descriptor (section 5 of mlip_md.h)
# ============================================================================
cdef extern from "mlip_md.h" nogil:
    ctypedef struct mlip_power_spectrum_params:
        int32_t n_species
        int32_t n_max
        int32_t l_max
        double cutoff
        double switch_width
        int32_t n_channels
        const double *radial_mixing
    int mlip_power_spectrum_check(const mlip_power_spectrum_params *params, char *errbuf, size_t errbuf_len)
    int64_t mlip_power_spectrum_n_features(const mlip_power_spectrum_params *params)
    int64_t mlip_power_spectrum_density_size(const mlip_power_spectrum_params *params)
    int mlip_power_spectrum_forward_f64(const mlip_power_spectrum_params *params, int64_t n_local,
                                        int64_t n_all, const int64_t *species_index, int64_t n_edges,
                                        const int64_t *edge_index, const double *edge_vectors,
                                        double *density, double *features, char *errbuf, size_t errbuf_len)
    int mlip_power_spectrum_forward_f32(const mlip_power_spectrum_params *params, int64_t n_local,
                                        int64_t n_all, const int64_t *species_index, int64_t n_edges,
                                        const int64_t *edge_index, const float *edge_vectors,
                                        float *density, float *features, char *errbuf, size_t errbuf_len)
    int mlip_power_spectrum_backward_f64(const mlip_power_spectrum_params *params, int64_t n_local,
                                         int64_t n_all, const int64_t *species_index, int64_t n_edges,
                                         const int64_t *edge_index, const double *edge_vectors,
                                         const double *density, int64_t n_rows, const double *feature_grad,
                                         double *edge_grad, char *errbuf, size_t errbuf_len)
    int mlip_power_spectrum_backward_f32(const mlip_power_spectrum_params *params, int64_t n_local,
                                         int64_t n_all, const int64_t *species_index, int64_t n_edges,
                                         const int64_t *edge_index, const float *edge_vectors,
                                         const float *density, int64_t n_rows, const float *feature_grad,
                                         float *edge_grad, char *errbuf, size_t errbuf_len)
    int mlip_power_spectrum_backward_forces_f64(const mlip_power_spectrum_params *params, int64_t n_local,
                                                int64_t n_all, const int64_t *species_index, int64_t n_edges,
                                                const int64_t *edge_index, const double *edge_vectors,
                                                const double *density, const double *feature_grad, double *forces,
                                                double *virial, char *errbuf, size_t errbuf_len)
    int mlip_power_spectrum_backward_forces_f32(const mlip_power_spectrum_params *params, int64_t n_local,
                                                int64_t n_all, const int64_t *species_index, int64_t n_edges,
                                                const int64_t *edge_index, const float *edge_vectors,
                                                const float *density, const float *feature_grad, double *forces,
                                                double *virial, char *errbuf, size_t errbuf_len)


cdef object _ps_params(params, mlip_power_spectrum_params *p):
    """Fill ``p`` from ``params`` = (n_species, n_max, l_max, cutoff, switch_width) (version 1,
    one-hot species) or (..., radial_mixing) with radial_mixing [n_species, n_max, Q] (version 2,
    species-compressed; None: one-hot). Returns the float64 array ``p.radial_mixing`` points
    into: keep it alive while ``p`` is used."""
    params = tuple(params)
    if len(params) not in (5, 6):
        raise ValueError(f"power-spectrum parameters must be (n_species, n_max, l_max, cutoff, switch_width"
                         f"[, radial_mixing]), got {len(params)} values")
    p.n_species, p.n_max, p.l_max, p.cutoff, p.switch_width = params[:5]
    p.n_channels = 0
    p.radial_mixing = NULL
    mixing = params[5] if len(params) == 6 else None
    cdef cnp.ndarray w
    if mixing is not None:
        mixing = np.ascontiguousarray(mixing, dtype=np.float64)
        shape = mixing.shape
        if len(shape) != 3 or shape[0] != p.n_species or shape[1] != p.n_max or not 1 <= shape[2] < 2 ** 31:
            raise ValueError(f"radial_mixing must be [n_species={p.n_species}, n_max={p.n_max}, Q >= 1], "
                             f"got shape {shape}")
        w = mixing
        p.n_channels = <int32_t>shape[2]
        p.radial_mixing = <const double *>w.data
    cdef char errbuf[MLIP_ERRBUF_LEN]
    if mlip_power_spectrum_check(p, errbuf, MLIP_ERRBUF_LEN) != MLIP_OK:
        raise ValueError(errbuf.decode("utf-8", "replace"))
    return mixing


def _ps_common(species_index, edge_index, edge_vectors):
    s = np.ascontiguousarray(species_index, dtype=np.int64)
    ei = np.ascontiguousarray(edge_index, dtype=np.int64)
    v = np.ascontiguousarray(edge_vectors)
    if v.dtype not in (np.float64, np.float32):
        raise ValueError(f"edge_vectors must be float64 or float32, got {v.dtype}")
    if s.ndim != 1 or ei.ndim != 2 or ei.shape[0] != 2 or v.ndim != 2 or v.shape[1] != 3 or v.shape[0] != ei.shape[1]:
        raise ValueError("need species_index [N], edge_index [2, E] and edge_vectors [E, 3]")
    return s, ei, v


def power_spectrum_forward(params, species_index, edge_index, edge_vectors, int64_t n_local):
    """Raw ``mlip_power_spectrum_forward_*``: ``(features [n_local, D], density [n_local, Q L2])``
    in the dtype of ``edge_vectors`` (float64 or float32). ``params`` = (n_species, n_max,
    l_max, cutoff, switch_width[, radial_mixing [n_species, n_max, Q] or None])."""
    cdef mlip_power_spectrum_params p
    keep = _ps_params(params, &p)
    s, ei, v = _ps_common(species_index, edge_index, edge_vectors)
    cdef int64_t n_all = s.shape[0], n_edges = ei.shape[1]
    features = np.empty((max(n_local, 0), mlip_power_spectrum_n_features(&p)), dtype=v.dtype)
    density = np.empty((max(n_local, 0), mlip_power_spectrum_density_size(&p)), dtype=v.dtype)
    cdef cnp.ndarray cs = s, cei = ei, cv = v, cf = features, cd = density
    cdef int status
    cdef char errbuf[MLIP_ERRBUF_LEN]
    cdef bint single = v.dtype == np.float32
    with nogil:
        if single:
            status = mlip_power_spectrum_forward_f32(&p, n_local, n_all, <const int64_t *>cs.data, n_edges,
                                                     <const int64_t *>cei.data, <const float *>cv.data,
                                                     <float *>cd.data, <float *>cf.data, errbuf, MLIP_ERRBUF_LEN)
        else:
            status = mlip_power_spectrum_forward_f64(&p, n_local, n_all, <const int64_t *>cs.data, n_edges,
                                                     <const int64_t *>cei.data, <const double *>cv.data,
                                                     <double *>cd.data, <double *>cf.data, errbuf, MLIP_ERRBUF_LEN)
    if status != MLIP_OK:
        raise ValueError(errbuf.decode("utf-8", "replace"))
    return features, density


def power_spectrum_backward(params, species_index, edge_index, edge_vectors, density, feature_grad,
                            int64_t n_local):
    """Raw ``mlip_power_spectrum_backward_*``: edge gradients [E, 3] for feature_grad
    [n_local, D], or [K, E, 3] for [K, n_local, D]; dtype of ``edge_vectors``."""
    cdef mlip_power_spectrum_params p
    keep = _ps_params(params, &p)
    s, ei, v = _ps_common(species_index, edge_index, edge_vectors)
    d = np.ascontiguousarray(density, dtype=v.dtype)
    g = np.ascontiguousarray(feature_grad, dtype=v.dtype)
    batched = g.ndim == 3
    if not batched:
        g = g.reshape((1,) + g.shape)
    cdef int64_t n_features = mlip_power_spectrum_n_features(&p)
    if g.ndim != 3 or g.shape[1] != n_local or g.shape[2] != n_features:
        raise ValueError(f"feature_grad must be [n_local, D] or [K, n_local, D] with D = {n_features}")
    if d.shape != (n_local, mlip_power_spectrum_density_size(&p)):
        raise ValueError("density must be the [n_local, Q L2] array of the forward pass")
    cdef int64_t n_all = s.shape[0], n_edges = ei.shape[1], n_rows = g.shape[0]
    out = np.empty((n_rows, n_edges, 3), dtype=v.dtype)
    cdef cnp.ndarray cs = s, cei = ei, cv = v, cd = d, cg = g, co = out
    cdef int status
    cdef char errbuf[MLIP_ERRBUF_LEN]
    cdef bint single = v.dtype == np.float32
    with nogil:
        if single:
            status = mlip_power_spectrum_backward_f32(&p, n_local, n_all, <const int64_t *>cs.data, n_edges,
                                                      <const int64_t *>cei.data, <const float *>cv.data,
                                                      <const float *>cd.data, n_rows, <const float *>cg.data,
                                                      <float *>co.data, errbuf, MLIP_ERRBUF_LEN)
        else:
            status = mlip_power_spectrum_backward_f64(&p, n_local, n_all, <const int64_t *>cs.data, n_edges,
                                                      <const int64_t *>cei.data, <const double *>cv.data,
                                                      <const double *>cd.data, n_rows, <const double *>cg.data,
                                                      <double *>co.data, errbuf, MLIP_ERRBUF_LEN)
    if status != MLIP_OK:
        raise ValueError(errbuf.decode("utf-8", "replace"))
    return out if batched else out[0]


def power_spectrum_backward_forces(params, species_index, edge_index, edge_vectors, density, feature_grad,
                                   int64_t n_local, bint virial=True):
    """Raw ``mlip_power_spectrum_backward_forces_*``: ``(forces [n_all, 3], virial [3, 3] or
    None)`` in float64 (F_i += g_ij, F_j -= g_ij, W = -sum r (x) g) for the energy gradient
    feature_grad [n_local, D]; inputs in the dtype of ``edge_vectors``."""
    cdef mlip_power_spectrum_params p
    keep = _ps_params(params, &p)
    s, ei, v = _ps_common(species_index, edge_index, edge_vectors)
    d = np.ascontiguousarray(density, dtype=v.dtype)
    g = np.ascontiguousarray(feature_grad, dtype=v.dtype)
    cdef int64_t n_features = mlip_power_spectrum_n_features(&p)
    if g.shape != (n_local, n_features):
        raise ValueError(f"feature_grad must be [n_local, D] with D = {n_features}")
    if d.shape != (n_local, mlip_power_spectrum_density_size(&p)):
        raise ValueError("density must be the [n_local, Q L2] array of the forward pass")
    cdef int64_t n_all = s.shape[0], n_edges = ei.shape[1]
    forces = np.zeros((n_all, 3), dtype=np.float64)
    w = np.zeros((3, 3), dtype=np.float64)
    cdef cnp.ndarray cs = s, cei = ei, cv = v, cd = d, cg = g, cf = forces, cw = w
    cdef double *wp = <double *>cw.data if virial else NULL
    cdef int status
    cdef char errbuf[MLIP_ERRBUF_LEN]
    cdef bint single = v.dtype == np.float32
    with nogil:
        if single:
            status = mlip_power_spectrum_backward_forces_f32(&p, n_local, n_all, <const int64_t *>cs.data, n_edges,
                                                             <const int64_t *>cei.data, <const float *>cv.data,
                                                             <const float *>cd.data, <const float *>cg.data,
                                                             <double *>cf.data, wp, errbuf, MLIP_ERRBUF_LEN)
        else:
            status = mlip_power_spectrum_backward_forces_f64(&p, n_local, n_all, <const int64_t *>cs.data, n_edges,
                                                             <const int64_t *>cei.data, <const double *>cv.data,
                                                             <const double *>cd.data, <const double *>cg.data,
                                                             <double *>cf.data, wp, errbuf, MLIP_ERRBUF_LEN)
    if status != MLIP_OK:
        raise ValueError(errbuf.decode("utf-8", "replace"))
    return forces, (w if virial else None)


# ============================================================================
# Force and virial assembly (section 6 of mlip_md.h)
# ============================================================================
cdef extern from "mlip_md.h" nogil:
    int mlip_assemble_forces(int64_t n_atoms, int64_t n_edges, const int64_t *edge_index,
                             const double *edge_grad, const double *edge_vectors, double *forces,
                             double *virial, char *errbuf, size_t errbuf_len)
    ctypedef struct mlip_edge_gradients:
        int64_t n_edges
        const int64_t *centres
        const int64_t *neighbours
        const double *grad
        const double *vectors
    ctypedef struct mlip_force_sums:
        int64_t n_atoms
        double *forces
        int64_t force_stride
        double *virial
        double *atom_virial
    int mlip_add_edge_forces(const mlip_edge_gradients *edges, const mlip_force_sums *sums,
                             int64_t *nonfinite_atom, char *errbuf, size_t errbuf_len)


def _writable_float64(array, name: str, rows, columns: int, at_least: bool = False):
    if (not isinstance(array, np.ndarray) or array.dtype != np.float64 or array.ndim != 2
            or (rows is not None and array.shape[0] != rows) or array.shape[1] < columns
            or (array.shape[1] != columns and not at_least) or not array.flags.c_contiguous
            or not array.flags.writeable):
        shape = f"[{'n' if rows is None else rows}, {'>= ' if at_least else ''}{columns}]"
        raise ValueError(f"{name} must be a writable C-contiguous float64 array of shape {shape}")


def add_edge_forces(edge_index, edge_grad, edge_vectors, forces, int64_t column=0, virial=None, atom_virial=None):
    """Raw ``mlip_add_edge_forces``: adds the forces of edge_grad [E, 3] (edge_index [2, E]) to
    ``forces[:, column:column + 3]`` (a writable C-contiguous float64 [n_atoms, W] array: W = 3K
    holds K members' forces side by side), and, when given, W = -sum r (x) g to ``virial`` [3, 3]
    and half of each edge's term to both ends' rows of ``atom_virial`` [n_atoms, 6] (xx yy zz xy
    xz yz), with edge_vectors [E, 3]. Returns the centre of the first edge with a non-finite
    gradient, or -1."""
    cdef cnp.ndarray[cnp.int64_t, ndim=2, mode="c"] ei = np.ascontiguousarray(edge_index, dtype=np.int64)
    cdef cnp.ndarray[cnp.float64_t, ndim=2, mode="c"] g = np.ascontiguousarray(edge_grad, dtype=np.float64)
    cdef cnp.ndarray[cnp.float64_t, ndim=2, mode="c"] v
    cdef cnp.ndarray f
    cdef int64_t n_edges = g.shape[0]
    cdef mlip_edge_gradients edges
    cdef mlip_force_sums sums
    cdef int64_t bad = -1
    cdef int status
    cdef char errbuf[MLIP_ERRBUF_LEN]
    if ei.shape[0] != 2 or ei.shape[1] != n_edges or g.shape[1] != 3:
        raise ValueError("need edge_index [2, E] and edge_grad [E, 3]")
    _writable_float64(forces, "forces", None, 3, at_least=True)
    f = forces
    if column < 0 or column + 3 > forces.shape[1]:
        raise ValueError(f"column {column} leaves no 3 columns in forces of width {forces.shape[1]}")
    edges.n_edges = n_edges
    edges.centres = <const int64_t *>ei.data
    edges.neighbours = <const int64_t *>ei.data + n_edges
    edges.grad = <const double *>g.data
    edges.vectors = NULL
    sums.n_atoms = forces.shape[0]
    sums.forces = <double *>f.data + column
    sums.force_stride = forces.shape[1]
    sums.virial = NULL
    sums.atom_virial = NULL
    if edge_vectors is not None:
        v = np.ascontiguousarray(edge_vectors, dtype=np.float64)
        if v.shape[0] != n_edges or v.shape[1] != 3:
            raise ValueError("edge_vectors must be [E, 3] like edge_grad")
        edges.vectors = <const double *>v.data
    if virial is not None:
        _writable_float64(virial, "virial", 3, 3)
        sums.virial = <double *>(<cnp.ndarray>virial).data
    if atom_virial is not None:
        _writable_float64(atom_virial, "atom_virial", forces.shape[0], 6)
        sums.atom_virial = <double *>(<cnp.ndarray>atom_virial).data
    with nogil:
        status = mlip_add_edge_forces(&edges, &sums, &bad, errbuf, MLIP_ERRBUF_LEN)
    if status != MLIP_OK:
        raise ValueError(errbuf.decode("utf-8", "replace"))
    return int(bad)


def assemble_forces(edge_index, edge_grad, edge_vectors, int64_t n_atoms):
    """Raw ``mlip_assemble_forces``: ``(forces [n_atoms, 3], virial [3, 3])`` in float64 from
    edge_index [2, E], edge_grad [E, 3] and edge_vectors [E, 3] (None: no virial, returned as None)."""
    cdef cnp.ndarray[cnp.int64_t, ndim=2, mode="c"] ei = np.ascontiguousarray(edge_index, dtype=np.int64)
    cdef cnp.ndarray[cnp.float64_t, ndim=2, mode="c"] g = np.ascontiguousarray(edge_grad, dtype=np.float64)
    cdef cnp.ndarray[cnp.float64_t, ndim=2, mode="c"] v
    cdef cnp.ndarray[cnp.float64_t, ndim=2, mode="c"] w
    cdef cnp.ndarray[cnp.float64_t, ndim=2, mode="c"] f = np.empty((max(n_atoms, 0), 3), np.float64)
    cdef int64_t n_edges = g.shape[0]
    cdef const double *vp = NULL
    cdef double *wp = NULL
    cdef int status
    cdef char errbuf[MLIP_ERRBUF_LEN]
    if ei.shape[0] != 2 or ei.shape[1] != n_edges or g.shape[1] != 3:
        raise ValueError("need edge_index [2, E] and edge_grad [E, 3]")
    w = np.zeros((3, 3), np.float64)
    if edge_vectors is not None:
        v = np.ascontiguousarray(edge_vectors, dtype=np.float64)
        if v.shape[0] != n_edges or v.shape[1] != 3:
            raise ValueError("edge_vectors must be [E, 3] like edge_grad")
        vp = <const double *>v.data
        wp = <double *>w.data
    with nogil:
        status = mlip_assemble_forces(n_atoms, n_edges, <const int64_t *>ei.data, <const double *>g.data, vp,
                                      <double *>f.data, wp, errbuf, MLIP_ERRBUF_LEN)
    if status != MLIP_OK:
        raise ValueError(errbuf.decode("utf-8", "replace"))
    return f, (w if edge_vectors is not None else None)


# ============================================================================
# Ensemble MLP readout (section 7 of mlip_md.h)
# ============================================================================
cdef extern from "mlip_md.h" nogil:
    ctypedef struct mlip_mlp_readout:
        pass
    ctypedef struct mlip_mlp_readout_spec:
        int32_t n_species
        int32_t n_members
        int32_t n_layers
        const int32_t *sizes
        const double *const *weights
        const double *const *biases
        const double *feature_mean
        const double *feature_scale
        const double *reference_energy
        double energy_scale
    int mlip_mlp_readout_create(const mlip_mlp_readout_spec *spec, int32_t precision, mlip_mlp_readout **out,
                                char *errbuf, size_t errbuf_len)
    void mlip_mlp_readout_free(mlip_mlp_readout *readout)
    int mlip_mlp_readout_evaluate_f64(const mlip_mlp_readout *readout, int64_t n_atoms,
                                      const int64_t *species_index, const double *features, double *atomic_energy,
                                      double *member_energy, double *feature_grad, char *errbuf,
                                      size_t errbuf_len)
    int mlip_mlp_readout_evaluate_f32(const mlip_mlp_readout *readout, int64_t n_atoms,
                                      const int64_t *species_index, const float *features, float *atomic_energy,
                                      float *member_energy, float *feature_grad, char *errbuf, size_t errbuf_len)
    int mlip_power_spectrum_energy_forces_f64(const mlip_power_spectrum_params *params,
                                              const mlip_mlp_readout *readout, int64_t n_local, int64_t n_all,
                                              const int64_t *species_index, int64_t n_edges,
                                              const int64_t *edge_index, const double *edge_vectors,
                                              double *atomic_energy, double *member_energy, double *forces,
                                              double *virial, char *errbuf, size_t errbuf_len)
    int mlip_power_spectrum_energy_forces_f32(const mlip_power_spectrum_params *params,
                                              const mlip_mlp_readout *readout, int64_t n_local, int64_t n_all,
                                              const int64_t *species_index, int64_t n_edges,
                                              const int64_t *edge_index, const float *edge_vectors,
                                              float *atomic_energy, float *member_energy, double *forces,
                                              double *virial, char *errbuf, size_t errbuf_len)


cdef class MLPReadout:
    """``mlip_mlp_readout``: weights [layers] of [S, K, in, out], biases [layers] of [S, K, out],
    feature_mean / feature_scale [D], reference_energy [S] (eV), energy_scale (eV); ``dtype``
    numpy float64 or float32. ``evaluate(species_index [n], features [n, D])`` returns
    ``(atomic_energy [n], member_energy [K, n], feature_grad [n, D])``."""
    cdef mlip_mlp_readout *handle
    cdef readonly object dtype
    cdef readonly int64_t n_features, n_members

    def __cinit__(self):
        self.handle = NULL

    def __init__(self, weights, biases, feature_mean, feature_scale, reference_energy, double energy_scale,
                 dtype=np.float64):
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.dtype(np.float64), np.dtype(np.float32)):
            raise ValueError(f"dtype must be float64 or float32, got {self.dtype}")
        ws = [np.ascontiguousarray(w, dtype=np.float64) for w in weights]
        bs = [np.ascontiguousarray(b, dtype=np.float64) for b in biases]
        if len(ws) < 2 or len(bs) != len(ws) or any(w.ndim != 4 for w in ws):
            raise ValueError("need >= 2 layers of weights [S, K, in, out] and as many biases [S, K, out]")
        n_species, n_members = ws[0].shape[0], ws[0].shape[1]
        sizes = [ws[0].shape[2]] + [w.shape[3] for w in ws]
        for l, (w, b) in enumerate(zip(ws, bs)):
            if (w.shape[:2] != (n_species, n_members) or w.shape[2] != sizes[l]
                    or b.size != n_species * n_members * sizes[l + 1]):
                raise ValueError(f"layer {l}: weights {w.shape} / biases {b.shape} do not chain")
        mean = np.ascontiguousarray(feature_mean, dtype=np.float64)
        scale = np.ascontiguousarray(feature_scale, dtype=np.float64)
        ref = np.ascontiguousarray(reference_energy, dtype=np.float64)
        if mean.shape != (sizes[0],) or scale.shape != (sizes[0],) or ref.shape != (n_species,):
            raise ValueError("feature_mean / feature_scale must be [D] and reference_energy [S]")
        cdef cnp.ndarray[cnp.int32_t, ndim=1, mode="c"] csizes = np.asarray(sizes, dtype=np.int32)
        cdef cnp.ndarray[cnp.uintp_t, ndim=1, mode="c"] wptr = np.asarray([w.ctypes.data for w in ws], np.uintp)
        cdef cnp.ndarray[cnp.uintp_t, ndim=1, mode="c"] bptr = np.asarray([b.ctypes.data for b in bs], np.uintp)
        cdef cnp.ndarray cm = mean, cs = scale, cr = ref
        cdef mlip_mlp_readout_spec spec
        spec.n_species = n_species
        spec.n_members = n_members
        spec.n_layers = len(ws)
        spec.sizes = <const int32_t *>csizes.data
        spec.weights = <const double *const *>wptr.data
        spec.biases = <const double *const *>bptr.data
        spec.feature_mean = <const double *>cm.data
        spec.feature_scale = <const double *>cs.data
        spec.reference_energy = <const double *>cr.data
        spec.energy_scale = energy_scale
        cdef char errbuf[MLIP_ERRBUF_LEN]
        cdef int precision = 32 if self.dtype == np.dtype(np.float32) else 64
        if mlip_mlp_readout_create(&spec, precision, &self.handle, errbuf, MLIP_ERRBUF_LEN) != MLIP_OK:
            raise ValueError(errbuf.decode("utf-8", "replace"))
        self.n_features = sizes[0]
        self.n_members = n_members

    def __dealloc__(self):
        mlip_mlp_readout_free(self.handle)

    def evaluate(self, species_index, features):
        cdef cnp.ndarray s = np.ascontiguousarray(species_index, dtype=np.int64)
        cdef cnp.ndarray x = np.ascontiguousarray(features, dtype=self.dtype)
        if s.ndim != 1 or x.ndim != 2 or x.shape[0] != s.shape[0] or x.shape[1] != self.n_features:
            raise ValueError(f"need species_index [n] and features [n, {self.n_features}]")
        cdef int64_t n = s.shape[0]
        cdef cnp.ndarray energy = np.empty(n, dtype=self.dtype)
        cdef cnp.ndarray members = np.empty((self.n_members, n), dtype=self.dtype)
        cdef cnp.ndarray grad = np.empty((n, self.n_features), dtype=self.dtype)
        cdef int status
        cdef char errbuf[MLIP_ERRBUF_LEN]
        cdef bint single = self.dtype == np.dtype(np.float32)
        with nogil:
            if single:
                status = mlip_mlp_readout_evaluate_f32(self.handle, n, <const int64_t *>s.data,
                                                       <const float *>x.data, <float *>energy.data,
                                                       <float *>members.data, <float *>grad.data, errbuf,
                                                       MLIP_ERRBUF_LEN)
            else:
                status = mlip_mlp_readout_evaluate_f64(self.handle, n, <const int64_t *>s.data,
                                                       <const double *>x.data, <double *>energy.data,
                                                       <double *>members.data, <double *>grad.data, errbuf,
                                                       MLIP_ERRBUF_LEN)
        if status != MLIP_OK:
            raise ValueError(errbuf.decode("utf-8", "replace"))
        return energy, members, grad

    def energy_forces(self, params, species_index, edge_index, edge_vectors, int64_t n_local, bint virial=True):
        """``mlip_power_spectrum_energy_forces_*``: the fused descriptor (``params``, section 5)
        and this readout in one pass. Returns ``(atomic_energy [n_local], member_energy [K,
        n_local], forces [n_all, 3] float64, virial [3, 3] float64 or None)``; edge_vectors in
        this readout's dtype."""
        cdef mlip_power_spectrum_params p
        keep = _ps_params(params, &p)
        s, ei, v = _ps_common(species_index, edge_index, edge_vectors)
        if v.dtype != self.dtype:
            raise ValueError(f"edge_vectors are {v.dtype}, the readout runs in {self.dtype}")
        cdef int64_t n_all = s.shape[0], n_edges = ei.shape[1]
        if not 0 <= n_local <= n_all:
            raise ValueError(f"n_local must lie in 0..{n_all}, got {n_local}")
        energy = np.empty(n_local, dtype=self.dtype)
        members = np.empty((self.n_members, n_local), dtype=self.dtype)
        forces = np.zeros((n_all, 3), dtype=np.float64)
        w = np.zeros((3, 3), dtype=np.float64)
        cdef cnp.ndarray cs = s, cei = ei, cv = v, ce = energy, cm = members, cf = forces, cw = w
        cdef double *wp = <double *>cw.data if virial else NULL
        cdef int status
        cdef char errbuf[MLIP_ERRBUF_LEN]
        cdef bint single = self.dtype == np.dtype(np.float32)
        with nogil:
            if single:
                status = mlip_power_spectrum_energy_forces_f32(&p, self.handle, n_local, n_all, <const int64_t *>cs.data,
                                                               n_edges, <const int64_t *>cei.data, <const float *>cv.data,
                                                               <float *>ce.data, <float *>cm.data, <double *>cf.data, wp,
                                                               errbuf, MLIP_ERRBUF_LEN)
            else:
                status = mlip_power_spectrum_energy_forces_f64(&p, self.handle, n_local, n_all, <const int64_t *>cs.data,
                                                               n_edges, <const int64_t *>cei.data, <const double *>cv.data,
                                                               <double *>ce.data, <double *>cm.data, <double *>cf.data, wp,
                                                               errbuf, MLIP_ERRBUF_LEN)
        if status != MLIP_OK:
            raise ValueError(errbuf.decode("utf-8", "replace"))
        return energy, members, forces, (w if virial else None)


# ============================================================================
# Short-range repulsion (section 8 of mlip_md.h)
# ============================================================================
cdef extern from "mlip_md.h" nogil:
    ctypedef struct mlip_repulsion:
        pass
    ctypedef struct mlip_repulsion_spec:
        int32_t n_species
        const int32_t *atomic_numbers
        const double *r_inner
        const double *r_outer
    int mlip_repulsion_create(const mlip_repulsion_spec *spec, mlip_repulsion **out, char *errbuf,
                              size_t errbuf_len)
    void mlip_repulsion_free(mlip_repulsion *repulsion)
    double mlip_repulsion_max_radius(const mlip_repulsion *repulsion)
    int mlip_repulsion_evaluate_f64(const mlip_repulsion *repulsion, int64_t n_local, int64_t n_all,
                                    const int64_t *species_index, int64_t n_edges, const int64_t *edge_index,
                                    const double *edge_vectors, double *atomic_energy, double *edge_grad,
                                    double *forces, double *virial, int64_t *n_active, char *errbuf,
                                    size_t errbuf_len)
    int mlip_repulsion_evaluate_f32(const mlip_repulsion *repulsion, int64_t n_local, int64_t n_all,
                                    const int64_t *species_index, int64_t n_edges, const int64_t *edge_index,
                                    const float *edge_vectors, double *atomic_energy, double *edge_grad,
                                    double *forces, double *virial, int64_t *n_active, char *errbuf,
                                    size_t errbuf_len)
    int mlip_repulsion_pair_evaluate(int32_t z_a, int32_t z_b, double r_inner, double r_outer, const double *r,
                                     int64_t n, double *energy, double *denergy_dr, char *errbuf,
                                     size_t errbuf_len)
    int mlip_zbl_evaluate(int32_t z_a, int32_t z_b, const double *r, int64_t n, double *energy,
                          double *denergy_dr, char *errbuf, size_t errbuf_len)


cdef double *_accumulator(object array, tuple shape, str name) except? NULL:
    """Data pointer of a C-contiguous, writeable float64 array of ``shape`` (None -> NULL)."""
    if array is None:
        return NULL
    if (not isinstance(array, np.ndarray) or array.dtype != np.float64 or array.shape != shape
            or not array.flags.c_contiguous or not array.flags.writeable):
        raise ValueError(f"{name} must be a writeable C-contiguous float64 array of shape {shape}")
    return <double *>cnp.PyArray_DATA(<cnp.ndarray>array)


cdef class Repulsion:
    """``mlip_repulsion``: atomic_numbers [S], r_inner / r_outer [S, S] (Å, symmetric; r_outer 0:
    no repulsion for the pair). ``evaluate(species_index [N], edge_index [2, E], edge_vectors
    [E, 3] (float64 or float32), n_local, edge_grad=None, forces=None, virial=None)`` returns
    ``(atomic_energy [n_local] float64 eV, n_active)`` and accumulates into the float64 arrays
    given (edge_grad [E, 3], forces [N, 3], virial [3, 3])."""
    cdef mlip_repulsion *handle
    cdef readonly double max_radius

    def __cinit__(self):
        self.handle = NULL

    def __init__(self, atomic_numbers, r_inner, r_outer):
        cdef cnp.ndarray[cnp.int32_t, ndim=1, mode="c"] z = np.ascontiguousarray(atomic_numbers, dtype=np.int32)
        cdef int64_t s = z.shape[0]
        cdef cnp.ndarray[cnp.float64_t, ndim=2, mode="c"] ri = np.ascontiguousarray(r_inner, dtype=np.float64)
        cdef cnp.ndarray[cnp.float64_t, ndim=2, mode="c"] ro = np.ascontiguousarray(r_outer, dtype=np.float64)
        if ri.shape[0] != s or ri.shape[1] != s or ro.shape[0] != s or ro.shape[1] != s:
            raise ValueError(f"r_inner and r_outer must be [{s}, {s}] (one row per atomic number)")
        cdef mlip_repulsion_spec spec
        spec.n_species = s
        spec.atomic_numbers = <const int32_t *>z.data
        spec.r_inner = <const double *>ri.data
        spec.r_outer = <const double *>ro.data
        cdef char errbuf[MLIP_ERRBUF_LEN]
        if mlip_repulsion_create(&spec, &self.handle, errbuf, MLIP_ERRBUF_LEN) != MLIP_OK:
            raise ValueError(errbuf.decode("utf-8", "replace"))
        self.max_radius = mlip_repulsion_max_radius(self.handle)

    def __dealloc__(self):
        mlip_repulsion_free(self.handle)

    def evaluate(self, species_index, edge_index, edge_vectors, int64_t n_local, edge_grad=None, forces=None,
                 virial=None):
        cdef cnp.ndarray s = np.ascontiguousarray(species_index, dtype=np.int64)
        cdef cnp.ndarray ei = np.ascontiguousarray(edge_index, dtype=np.int64)
        v = np.asarray(edge_vectors)
        if v.dtype != np.float32:
            v = np.ascontiguousarray(v, dtype=np.float64)
        else:
            v = np.ascontiguousarray(v)
        cdef cnp.ndarray cv = v
        if s.ndim != 1 or ei.ndim != 2 or ei.shape[0] != 2 or v.ndim != 2 or v.shape[1] != 3 or v.shape[0] != ei.shape[1]:
            raise ValueError("need species_index [N], edge_index [2, E] and edge_vectors [E, 3]")
        cdef int64_t n_all = s.shape[0], n_edges = ei.shape[1]
        if not 0 <= n_local <= n_all:
            raise ValueError(f"n_local must lie in 0..{n_all}, got {n_local}")
        cdef double *gp = _accumulator(edge_grad, (n_edges, 3), "edge_grad")
        cdef double *fp = _accumulator(forces, (n_all, 3), "forces")
        cdef double *wp = _accumulator(virial, (3, 3), "virial")
        energy = np.empty(n_local, dtype=np.float64)
        cdef cnp.ndarray ce = energy
        cdef int64_t active = 0
        cdef int status
        cdef char errbuf[MLIP_ERRBUF_LEN]
        cdef bint single = v.dtype == np.float32
        with nogil:
            if single:
                status = mlip_repulsion_evaluate_f32(self.handle, n_local, n_all, <const int64_t *>s.data, n_edges,
                                                     <const int64_t *>ei.data, <const float *>cv.data,
                                                     <double *>ce.data, gp, fp, wp, &active, errbuf, MLIP_ERRBUF_LEN)
            else:
                status = mlip_repulsion_evaluate_f64(self.handle, n_local, n_all, <const int64_t *>s.data, n_edges,
                                                     <const int64_t *>ei.data, <const double *>cv.data,
                                                     <double *>ce.data, gp, fp, wp, &active, errbuf, MLIP_ERRBUF_LEN)
        if status != MLIP_OK:
            raise ValueError(errbuf.decode("utf-8", "replace"))
        return energy, active


def repulsion_pair(int z_a, int z_b, double r_inner, double r_outer, r):
    """``mlip_repulsion_pair_evaluate``: (V [n] eV, dV/dr [n] eV/Å) of one switched pair at r [n] Å."""
    cdef cnp.ndarray[cnp.float64_t, ndim=1, mode="c"] x = np.ascontiguousarray(np.ravel(r), dtype=np.float64)
    cdef cnp.ndarray[cnp.float64_t, ndim=1, mode="c"] e = np.empty_like(x)
    cdef cnp.ndarray[cnp.float64_t, ndim=1, mode="c"] de = np.empty_like(x)
    cdef char errbuf[MLIP_ERRBUF_LEN]
    if mlip_repulsion_pair_evaluate(z_a, z_b, r_inner, r_outer, <const double *>x.data, x.shape[0], <double *>e.data,
                                    <double *>de.data, errbuf, MLIP_ERRBUF_LEN) != MLIP_OK:
        raise ValueError(errbuf.decode("utf-8", "replace"))
    return e, de


def zbl(int z_a, int z_b, r):
    """``mlip_zbl_evaluate``: (E_ZBL [n] eV, dE_ZBL/dr [n] eV/Å) of the bare ZBL at r [n] Å."""
    cdef cnp.ndarray[cnp.float64_t, ndim=1, mode="c"] x = np.ascontiguousarray(np.ravel(r), dtype=np.float64)
    cdef cnp.ndarray[cnp.float64_t, ndim=1, mode="c"] e = np.empty_like(x)
    cdef cnp.ndarray[cnp.float64_t, ndim=1, mode="c"] de = np.empty_like(x)
    cdef char errbuf[MLIP_ERRBUF_LEN]
    if mlip_zbl_evaluate(z_a, z_b, <const double *>x.data, x.shape[0], <double *>e.data, <double *>de.data, errbuf,
                         MLIP_ERRBUF_LEN) != MLIP_OK:
        raise ValueError(errbuf.decode("utf-8", "replace"))
    return e, de
