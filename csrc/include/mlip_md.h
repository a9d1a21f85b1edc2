/*
 * mlip_md.h -- the single C API of the mlip_md C++ core.
 *
 * Everything the Python binding (mlip_md/_core.pyx) or any other client
 * (LAMMPS plugin, i-PI driver, C test programs) needs from the compiled core
 * is declared here, with a plain C ABI:
 *
 *   - only C types cross the boundary (no C++ classes, no exceptions);
 *   - every function returns an `int` status code (MLIP_OK == 0 on success)
 *     and writes a human-readable, NUL-terminated message into a
 *     caller-provided error buffer on failure;
 *   - result buffers are allocated by the core and handed to the caller, who
 *     releases them with the matching mlip_*_free / mlip_free function.
 *
 * Everything is prefixed `mlip_` (functions, types) or `MLIP_` (macros).
 *
 * Units: lengths in Angstrom. Arrays are C-contiguous (row-major) unless
 * stated otherwise; shapes are given as [dim0][dim1] in the comments.
 *
 * Sections:
 *   1. Common: export macro, status codes, memory
 *   2. Neighbour lists
 *   3. i-PI wire codec              (reserved, not yet implemented)
 *   4. Switching / cutoff functions (reserved, not yet implemented)
 */
#ifndef MLIP_MD_H
#define MLIP_MD_H

#include <stddef.h>
#include <stdint.h>

/* ========================================================================= */
/* 1. Common                                                                 */
/* ========================================================================= */

/* Symbol visibility. The core is currently linked statically into the Python
 * extension, so MLIP_API is empty; define MLIP_SHARED (+ MLIP_EXPORTS while
 * building) to build/use it as a shared library. */
#if defined(MLIP_SHARED) && (defined(__GNUC__) || defined(__clang__))
#define MLIP_API __attribute__((visibility("default")))
#elif defined(MLIP_SHARED) && defined(_MSC_VER) && defined(MLIP_EXPORTS)
#define MLIP_API __declspec(dllexport)
#elif defined(MLIP_SHARED) && defined(_MSC_VER)
#define MLIP_API __declspec(dllimport)
#else
#define MLIP_API
#endif

/* Version of this C API; bumped on any incompatible change. */
#define MLIP_API_VERSION 1

/* Status codes returned by every fallible function. */
#define MLIP_OK 0
#define MLIP_ERR_INVALID_ARGUMENT 1 /* bad input (shape, value, NULL ptr)  */
#define MLIP_ERR_OUT_OF_MEMORY 2    /* an allocation failed                 */
#define MLIP_ERR_INTERNAL 3         /* bug / unexpected C++ exception       */

/* Recommended size of the caller-provided error buffer (bytes). Messages
 * longer than the buffer are truncated; the buffer is always NUL-terminated
 * when errbuf_len > 0. errbuf may be NULL (then no message is written). */
#define MLIP_ERRBUF_LEN 512

#ifdef __cplusplus
extern "C" {
#endif

/* Release one buffer allocated by the core (e.g. a field of
 * mlip_neighbor_list whose ownership the caller took). NULL is a no-op.
 * Always use this rather than the caller's own free(): the core and the
 * caller may not share an allocator. */
MLIP_API void mlip_free(void *ptr);

/* ========================================================================= */
/* 2. Neighbour lists                                                        */
/* ========================================================================= */
/*
 * Full neighbour list (both i->j and j->i) of N points under any mix of
 * periodic / non-periodic boundary conditions, built with a cell list
 * (O(N) for a fixed density), in double precision.
 *
 * Definition. With positions r (N x 3), cell H (3 x 3, rows = cell vectors
 * a, b, c) and integer cell shift S (a row vector of 3 ints), the pair
 * vector is
 *
 *       r_ij = r[j] - r[i] + S @ H
 *
 * and the list contains EXACTLY ONCE every (i, j, S) with |r_ij| < cutoff,
 * except the trivial self pairs (i, i, S = 0). In particular:
 *   - periodic self-images (i, i, S != 0) are included when the cell is small;
 *   - several images of the same j (different S) are included when the
 *     cutoff exceeds half the cell (or the whole cell);
 *   - coincident distinct atoms (i != j, |r_ij| == 0) ARE included (same
 *     convention as ase.neighborlist.neighbor_list); a model that divides by
 *     the distance must guard against them itself;
 *   - S[k] == 0 along every non-periodic direction k.
 *
 * Positions may lie anywhere (outside the cell is fine): they are wrapped
 * internally, but the returned S and r_ij refer to the ORIGINAL positions.
 * Along non-periodic directions the corresponding cell vector is ignored (it
 * may be zero, e.g. an isolated molecule with H = 0).
 *
 * Ordering: pairs are sorted by i ascending; the order of pairs sharing the
 * same i is unspecified (but deterministic for a given input and options,
 * independently of num_threads).
 *
 * Preconditions (checked, MLIP_ERR_INVALID_ARGUMENT otherwise): finite
 * positions and periodic cell vectors, cutoff finite and > 0, the periodic
 * cell vectors linearly independent (non-zero volume / area / length),
 * positions within 1e9 cell lengths of the cell, fewer than 1e9 periodic
 * images per atom inside the cutoff sphere.
 *
 * Cost: O(N) for a fixed density; no sqrt unless distances are requested.
 */

/* Options of mlip_neighbors_compute. Initialise with
 * mlip_neighbor_options_default() and override fields. */
typedef struct mlip_neighbor_options {
    /* Spherical cutoff in Angstrom (> 0, finite). Strict: |r_ij| < cutoff. */
    double cutoff;
    /* Non-zero: fill mlip_neighbor_list.vectors (r_ij, [n_pairs][3]). */
    int return_vectors;
    /* Non-zero: fill mlip_neighbor_list.distances (|r_ij|, [n_pairs]). */
    int return_distances;
    /* Worker threads (std::thread). <= 1: single-threaded (default 1).
     * At most one thread per 2048 atoms is used. The result is identical
     * for any value. */
    int num_threads;
    /* Cell-list bin width as a fraction of the cutoff, in (0, 1].
     * 0 (default) = automatic: 1.0, or 0.5 for dense systems (more than
     * 20 atoms per cutoff^3), the faster choices measured. */
    double bin_fraction;
} mlip_neighbor_options;

/* Result of mlip_neighbors_compute. All arrays are allocated by the core
 * (never NULL after a successful call, even when n_pairs == 0, unless not
 * requested). The caller either
 *   (a) releases everything with mlip_neighbor_list_free(), or
 *   (b) takes ownership of individual arrays -- e.g. to wrap them in numpy
 *       arrays without a copy -- releasing each with mlip_free() and setting
 *       the field to NULL, then calls mlip_neighbor_list_free() for the rest.
 */
typedef struct mlip_neighbor_list {
    int64_t n_pairs;   /* number of pairs E                                 */
    int64_t *i;        /* [E]    centre atom index, ascending               */
    int64_t *j;        /* [E]    neighbour atom index                       */
    int32_t *shifts;   /* [E][3] integer cell shift S                       */
    double *vectors;   /* [E][3] r_ij in Angstrom, or NULL if not requested  */
    double *distances; /* [E]    |r_ij| in Angstrom, or NULL if not requested */
} mlip_neighbor_list;

/* Default options: cutoff = 0 (must be set), return_vectors = 1,
 * return_distances = 0, num_threads = 1, bin_fraction = 0 (auto). */
MLIP_API mlip_neighbor_options mlip_neighbor_options_default(void);

/* Compute the full neighbour list.
 *
 *   positions  [n_atoms][3] double, Angstrom, C-contiguous
 *              (may be NULL when n_atoms == 0)
 *   n_atoms    >= 0
 *   cell       [3][3] double, rows are the cell vectors a, b, c (Angstrom)
 *   pbc        [3] int, non-zero = periodic along a / b / c
 *   options    see mlip_neighbor_options
 *   result     output; overwritten (its previous content is NOT freed).
 *              On failure all its fields are NULL / 0.
 *   errbuf     buffer of errbuf_len bytes for an error message (may be NULL)
 *
 * Returns MLIP_OK, MLIP_ERR_INVALID_ARGUMENT, MLIP_ERR_OUT_OF_MEMORY or
 * MLIP_ERR_INTERNAL. Thread-safe (no global state). */
MLIP_API int mlip_neighbors_compute(const double *positions, int64_t n_atoms,
                                    const double *cell, const int *pbc,
                                    const mlip_neighbor_options *options,
                                    mlip_neighbor_list *result, char *errbuf,
                                    size_t errbuf_len);

/* Free every non-NULL array of `list` with mlip_free and zero the struct.
 * NULL is a no-op. */
MLIP_API void mlip_neighbor_list_free(mlip_neighbor_list *list);

/* ========================================================================= */
/* 3. i-PI wire codec (reserved)                                             */
/* ========================================================================= */
/* To be added: encoding/decoding of i-PI socket messages (headers, cell,
 * positions, forces, virial) in atomic units. Functions prefixed mlip_ipi_. */

/* ========================================================================= */
/* 4. Switching / cutoff functions (reserved)                                */
/* ========================================================================= */
/* To be added: smooth cutoff / switching functions and their derivatives.
 * Functions prefixed mlip_switch_. */

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* MLIP_MD_H */
