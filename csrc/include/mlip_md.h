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
 *   2. Neighbour lists and Verlet candidates (built at cutoff + skin, refreshed per step)
 *   3. i-PI wire codec (socket messages; atomic units <-> eV, Angstrom)
 *   4. Switching functions (QM/ML hybrid)
 *   5. Power-spectrum descriptor (fused forward and backward of the built-in model)
 *   6. Force and virial assembly from edge gradients (also added to a host's arrays, per-atom virial)
 *   7. Ensemble MLP readout (per-atom energies and their feature gradient)
 *   8. Short-range repulsion (ZBL screened nuclear repulsion, switched off before the
 *      distances a model was trained on)
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
#define MLIP_API_VERSION 2  /* 2: mlip_neighbors_filter replaced by mlip_verlet_candidates_* */

/* Status codes returned by every fallible function. */
#define MLIP_OK 0
#define MLIP_ERR_INVALID_ARGUMENT 1 /* bad input (shape, value, NULL ptr)  */
#define MLIP_ERR_OUT_OF_MEMORY 2    /* an allocation failed                 */
#define MLIP_ERR_INTERNAL 3         /* bug / unexpected C++ exception       */
#define MLIP_ERR_STALE 4            /* Verlet candidates out of date: rebuild */

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

/* Verlet list (csrc/src/verlet.cpp): candidate pairs built once at cutoff + skin by
 * mlip_neighbors_compute, refreshed on every step.
 *
 * mlip_verlet_candidates_create stores n_pairs candidates (i[k], j[k], shifts[k]) compactly:
 * i [n_pairs] int64 sorted ascending (as mlip_neighbors_compute returns it), j [n_pairs]
 * int64, shifts [n_pairs][3] int32 (S_k: r = x_j - x_i + S_k @ cell), cell [3][3] the rows
 * a, b, c and positions [n_atoms][3] the coordinates the list was built at, in Angstrom;
 * cutoff and skin (Angstrom) those of the list (candidates within cutoff + skin). Candidates
 * closer than cutoff - skin at `positions` stay inside the cutoff while no atom moves more
 * than skin / 2, and the refresh keeps them without a test. Indices are checked here, once.
 * Release with mlip_verlet_candidates_free. Returns MLIP_OK, MLIP_ERR_INVALID_ARGUMENT (index
 * out of range, i not sorted, n_atoms >= 2^31, cutoff <= 0, skin < 0) or
 * MLIP_ERR_OUT_OF_MEMORY. */
typedef struct mlip_verlet_candidates mlip_verlet_candidates;  /* opaque */

MLIP_API int mlip_verlet_candidates_create(int64_t n_atoms, const double *positions, const double *cell,
                                           const int64_t *i, const int64_t *j, const int32_t *shifts,
                                           int64_t n_pairs, double cutoff, double skin,
                                           mlip_verlet_candidates **out, char *errbuf, size_t errbuf_len);
MLIP_API void mlip_verlet_candidates_free(mlip_verlet_candidates *candidates);  /* NULL: no-op */
MLIP_API int64_t mlip_verlet_candidates_count(const mlip_verlet_candidates *candidates);

/* Refresh: for every candidate, r = positions[j] - positions[i] + S @ cell is recomputed from
 * positions [n_atoms][3] (Angstrom) and the pair kept when |r| < cutoff. The n kept pairs are
 * written, i ascending (the order of one atom's neighbours is unspecified), to the caller's
 * buffers, each sized for every candidate:
 * out_ij [2 * n_pairs] receives i in out_ij[0..n) and j in out_ij[n..2n) (an edge_index
 * [2][n], C-contiguous), out_vectors [n_pairs][3] the vectors, out_index [n_pairs] the
 * candidate index k (may be NULL), out_distances [n_pairs] |r| (may be NULL); *n_kept receives
 * n and *min_distance (may be NULL) the smallest kept |r| (infinity when none is kept). No
 * allocation, no per-pair checks. Returns MLIP_OK, MLIP_ERR_INVALID_ARGUMENT (NULL buffers)
 * or MLIP_ERR_STALE (a candidate closer than cutoff - skin at creation is now beyond the
 * cutoff: an atom moved more than skin / 2; rebuild the candidates -- the output is then
 * incomplete). */
MLIP_API int mlip_verlet_candidates_filter(const mlip_verlet_candidates *candidates,
                                           const double *positions, int64_t *out_ij,
                                           int64_t *out_index, double *out_vectors,
                                           double *out_distances, int64_t *n_kept,
                                           double *min_distance, char *errbuf, size_t errbuf_len);

/* ========================================================================= */
/* 3. i-PI wire codec                                                        */
/* ========================================================================= */
/*
 * Encoding / decoding of the messages of i-PI's socket protocol (the client,
 * or "driver", side; plus the server side for tests and mock servers). The
 * codec does no I/O: the caller reads / writes the bytes on the socket.
 *
 * Wire format. Every message starts with a 12-byte ASCII header, upper case,
 * right-padded with spaces ("POSDATA     "); some are followed by a payload.
 * Binary values are little-endian int32 / IEEE-754 float64, packed without
 * padding; on the wire everything is in atomic units (Bohr, Hartree).
 *
 *   INIT       (server -> client)  int32 replica index, int32 L, L bytes
 *   POSDATA    (server -> client)  h [3][3] float64 (COLUMNS = lattice
 *                                  vectors, Bohr), h^-1 [3][3] float64,
 *                                  int32 N, positions [N][3] float64 (Bohr)
 *   FORCEREADY (client -> server)  float64 energy (Hartree), int32 N,
 *                                  forces [N][3] float64 (Hartree/Bohr),
 *                                  virial [3][3] float64 (Hartree), int32 L,
 *                                  L bytes of extras (JSON string, may be
 *                                  empty)
 *   STATUS, READY, NEEDINIT, HAVEDATA, GETFORCE, EXIT: header only.
 *
 * API-side units and conventions: energies in eV, lengths in Angstrom,
 * forces in eV/Angstrom; cells as [3][3] with ROWS = lattice vectors (ASE
 * convention, i.e. the transpose of i-PI's h). Conversions use exactly
 * i-PI's own constants (ipi/utils/units.py): atomic units -> API units
 * DIVIDE by the constant, API units -> atomic units MULTIPLY by it, exactly
 * as i-PI's unit_to_user / unit_to_internal do, so values round-trip through
 * i-PI's Python drivers bit for bit.
 *
 * Only the standard protocol is covered: i-PI's batched mode (announced by
 * a "batch_size:N" token in the INIT string) and its shared-memory transport
 * use other POSDATA / FORCEREADY layouts and must be refused by the driver.
 *
 * Every function checks its sizes against the lengths given (never reads
 * or writes past them), validates the values (finite numbers, counts in
 * range) and returns MLIP_OK or MLIP_ERR_INVALID_ARGUMENT with a message in
 * errbuf (see section 1); no allocation, no global state, thread-safe. On
 * failure the output arguments are unspecified (caller-allocated arrays may
 * have been partially written).
 */

/* i-PI's unit constants (ipi/utils/units.py, UnitMap): atomic units per
 * API unit. */
#define MLIP_IPI_BOHR_PER_ANGSTROM 1.8897261          /* length            */
#define MLIP_IPI_HARTREE_PER_EV 0.036749326           /* energy, virial    */
#define MLIP_IPI_HARTREE_PER_BOHR_PER_EV_PER_ANGSTROM \
    0.019446904 /* force (i-PI's own value, not the ratio of the two above)  */

/* Sizes in bytes. */
#define MLIP_IPI_HEADER_LEN 12
#define MLIP_IPI_INIT_PREFIX_LEN 8       /* int32 index + int32 length     */
#define MLIP_IPI_POSDATA_PREFIX_LEN 148  /* 18 float64 (h, h^-1) + int32 N */

/* Limits enforced by the decoders (and encoders). */
#define MLIP_IPI_MAX_INIT_LEN (1 << 20)  /* INIT string: 1 MiB            */
#define MLIP_IPI_MAX_ATOMS 100000000     /* hard cap on any atom count     */
#define MLIP_IPI_MAX_EXTRAS_LEN 0x7fffffff /* FORCEREADY extras (int32 max) */

/* Message kinds (values of the `message` arguments). */
typedef enum mlip_ipi_message {
    MLIP_IPI_STATUS = 0,     /* "STATUS"     server asks for the state     */
    MLIP_IPI_READY = 1,      /* "READY"      client waits for positions    */
    MLIP_IPI_NEEDINIT = 2,   /* "NEEDINIT"   client wants INIT first       */
    MLIP_IPI_HAVEDATA = 3,   /* "HAVEDATA"   client has forces ready       */
    MLIP_IPI_INIT = 4,       /* "INIT"       + INIT payload                */
    MLIP_IPI_POSDATA = 5,    /* "POSDATA"    + POSDATA payload             */
    MLIP_IPI_GETFORCE = 6,   /* "GETFORCE"   server asks for the forces    */
    MLIP_IPI_FORCEREADY = 7, /* "FORCEREADY" + FORCEREADY payload          */
    MLIP_IPI_EXIT = 8        /* "EXIT"       server ends the run           */
} mlip_ipi_message;
#define MLIP_IPI_N_MESSAGES 9

/* Identify a 12-byte header. `len` must be exactly MLIP_IPI_HEADER_LEN (a
 * short read is reported as truncated). The match is exact (upper case,
 * space padded). An unknown header is an error whose message shows the
 * received bytes printably (non-printable bytes escaped as \xNN). */
MLIP_API int mlip_ipi_decode_header(const char *bytes, size_t len, int *message,
                                    char *errbuf, size_t errbuf_len);

/* Write the 12-byte header of `message` (a mlip_ipi_message) into
 * out[0..11]; out_len must be >= MLIP_IPI_HEADER_LEN. No NUL is written. */
MLIP_API int mlip_ipi_encode_header(int message, char *out, size_t out_len,
                                    char *errbuf, size_t errbuf_len);

/* INIT payload prefix: the 8 bytes after the header (len must be 8).
 * Checks index >= 0 and 0 <= length <= MLIP_IPI_MAX_INIT_LEN; the caller
 * then reads `length` bytes of init string. */
MLIP_API int mlip_ipi_decode_init_prefix(const char *buf, size_t len, int32_t *index,
                                         int32_t *length, char *errbuf,
                                         size_t errbuf_len);

/* Size of a complete INIT message (header + prefix + string), or 0 when
 * length is outside [0, MLIP_IPI_MAX_INIT_LEN]. */
MLIP_API size_t mlip_ipi_init_size(int32_t length);

/* Encode a complete INIT message (server side: tests, mock servers):
 * header, index (>= 0), length, `length` bytes of `init` (may be NULL when
 * length == 0). out_len must be >= mlip_ipi_init_size(length);
 * *n_written (may be NULL) receives the number of bytes written. */
MLIP_API int mlip_ipi_encode_init(int32_t index, const char *init, int32_t length,
                                  char *out, size_t out_len, size_t *n_written,
                                  char *errbuf, size_t errbuf_len);

/* POSDATA payload prefix: the 148 bytes after the header (len must be 148).
 *
 *   expected_atoms  the atom count the driver was initialised with, or -1
 *                   to accept any count (first step)
 *   max_atoms       upper bound on the count, in [1, MLIP_IPI_MAX_ATOMS]
 *   cell_angstrom   [3][3] output: the cell in Angstrom with ROWS = lattice
 *                   vectors (i.e. h^T / MLIP_IPI_BOHR_PER_ANGSTROM)
 *   n_atoms         output: the atom count N; the caller then reads
 *                   24 * N bytes of positions
 *
 * Checks: all 18 cell / inverse-cell values finite, the cell h non-singular
 * (|det h| > 1e-12 * |a| |b| |c|; a zero-volume cell is an error, and so is
 * one whose volume overflows a double),
 * 1 <= N <= max_atoms, N == expected_atoms when expected_atoms >= 0.
 * The inverse cell sent by i-PI is checked for finiteness and then
 * ignored. */
MLIP_API int mlip_ipi_decode_posdata_prefix(const char *buf, size_t len,
                                            int32_t expected_atoms, int32_t max_atoms,
                                            double *cell_angstrom, int32_t *n_atoms,
                                            char *errbuf, size_t errbuf_len);

/* POSDATA positions: the 24 * n_atoms bytes after the prefix (len must be
 * exactly 24 * n_atoms, 1 <= n_atoms <= MLIP_IPI_MAX_ATOMS) converted to
 * Angstrom into the caller-allocated positions_angstrom [n_atoms][3].
 * Non-finite values (NaN / inf) are an error naming the first bad atom. */
MLIP_API int mlip_ipi_decode_positions(const char *buf, size_t len, int32_t n_atoms,
                                       double *positions_angstrom, char *errbuf,
                                       size_t errbuf_len);

/* Size of a complete POSDATA message (header + prefix + positions), or 0
 * when n_atoms is outside [1, MLIP_IPI_MAX_ATOMS]. */
MLIP_API size_t mlip_ipi_posdata_size(int32_t n_atoms);

/* Encode a complete POSDATA message (server side: tests, mock servers) from
 * cell_angstrom [3][3] (ROWS = lattice vectors, non-singular, finite) and
 * positions_angstrom [n_atoms][3] (finite); h = cell^T and its inverse are
 * computed and converted to Bohr. out_len must be >=
 * mlip_ipi_posdata_size(n_atoms); *n_written (may be NULL) receives the
 * number of bytes written. */
MLIP_API int mlip_ipi_encode_posdata(const double *cell_angstrom,
                                     const double *positions_angstrom, int32_t n_atoms,
                                     char *out, size_t out_len, size_t *n_written,
                                     char *errbuf, size_t errbuf_len);

/* Size of a complete FORCEREADY message (header + payload), or 0 when
 * n_atoms is outside [1, MLIP_IPI_MAX_ATOMS] or extras_len outside
 * [0, MLIP_IPI_MAX_EXTRAS_LEN]. */
MLIP_API size_t mlip_ipi_forceready_size(int32_t n_atoms, int32_t extras_len);

/* Encode a complete FORCEREADY message (header included) into the caller's
 * buffer (no allocation: meant for the hot path).
 *
 *   energy_ev               potential energy, eV
 *   forces_ev_per_angstrom  [n_atoms][3], eV/Angstrom
 *   virial_ev               [3][3], eV; written in C order exactly as given
 *                           (no transpose), converted to Hartree
 *   extras, extras_len      JSON string sent verbatim (extras may be NULL
 *                           when extras_len == 0)
 *   out, out_len            out_len >= mlip_ipi_forceready_size(...)
 *   n_written               receives the number of bytes written (may be
 *                           NULL)
 *
 * Non-finite energy / forces / virial are an error (naming the first bad
 * atom): garbage is never sent to i-PI. */
MLIP_API int mlip_ipi_encode_forceready(double energy_ev,
                                        const double *forces_ev_per_angstrom,
                                        int32_t n_atoms, const double *virial_ev,
                                        const char *extras, int32_t extras_len,
                                        char *out, size_t out_len, size_t *n_written,
                                        char *errbuf, size_t errbuf_len);

/* Decode a complete FORCEREADY message (header included; server side: tests,
 * mock servers). len must equal the message size exactly.
 *
 *   max_atoms               upper bound on N, in [1, MLIP_IPI_MAX_ATOMS]
 *   energy_ev, n_atoms      outputs
 *   forces_ev_per_angstrom  output [forces_capacity][3]; may be NULL to only
 *                           validate and query N (the forces are then still
 *                           checked for finiteness); otherwise N must be
 *                           <= forces_capacity
 *   virial_ev               output [3][3] in C order, eV
 *   extras_offset, extras_len  outputs: the extras are buf[offset ..
 *                           offset + len) (not copied)
 *
 * Checks: exact header, 1 <= N <= max_atoms, extras length >= 0, total size
 * consistent with N and the extras length, every value finite. */
MLIP_API int mlip_ipi_decode_forceready(const char *buf, size_t len, int32_t max_atoms,
                                        double *energy_ev, int32_t *n_atoms,
                                        double *forces_ev_per_angstrom,
                                        int32_t forces_capacity, double *virial_ev,
                                        size_t *extras_offset, int32_t *extras_len,
                                        char *errbuf, size_t errbuf_len);

/* ========================================================================= */
/* 4. Switching functions                                                    */
/* ========================================================================= */
/*
 * Radial switching functions s(r) for QM/ML hybrids (mlip_md.qmml):
 *
 *   s(r) = 1                 for r <= r_inner
 *        = 1 - p(x)          for r_inner < r < r_outer,  x = (r - r_inner) / (r_outer - r_inner)
 *        = 0                 for r >= r_outer
 *
 * p rises from p(0) = 0 to p(1) = 1; its first k derivatives vanish at both
 * ends, so s is C^k on the whole line (k from mlip_switch_continuity).
 * Lengths in Angstrom (any unit shared by r and the radii); derivatives are
 * d/dr (1/Angstrom, 1/Angstrom^2).
 */

/* Shapes (values of the `shape` arguments). */
typedef enum mlip_switch_shape {
    MLIP_SWITCH_SMOOTHERSTEP = 0, /* p = 10x^3 - 15x^4 + 6x^5           C^2 */
    MLIP_SWITCH_C3 = 1,           /* p = 35x^4 - 84x^5 + 70x^6 - 20x^7  C^3 */
    MLIP_SWITCH_COSINE = 2,       /* p = x - sin(2 pi x) / (2 pi)        C^2 */
    MLIP_SWITCH_COSINE_C1 = 3     /* p = (1 - cos(pi x)) / 2  only C^1 (s'' jumps) */
} mlip_switch_shape;
#define MLIP_SWITCH_N_SHAPES 4

/* Continuity order k of a shape (s is C^k), or -1 for an unknown shape. */
MLIP_API int mlip_switch_continuity(int shape);

/* Evaluate s, ds/dr and d2s/dr2 at n distances.
 *
 *   shape            a mlip_switch_shape
 *   r_inner, r_outer 0 <= r_inner < r_outer, finite
 *   r                [n] distances (finite; may be NULL when n == 0)
 *   s                [n] output (may be NULL when n == 0)
 *   ds, d2s          [n] outputs, each may be NULL (not computed)
 *
 * Returns MLIP_OK or MLIP_ERR_INVALID_ARGUMENT (unknown shape, bad radii,
 * non-finite distance, NULL arrays). No allocation, thread-safe. */
MLIP_API int mlip_switch_evaluate(int shape, double r_inner, double r_outer, const double *r,
                                  int64_t n, double *s, double *ds, double *d2s, char *errbuf,
                                  size_t errbuf_len);

/* ========================================================================= */
/* 5. Power-spectrum descriptor                                              */
/* ========================================================================= */
/*
 * The descriptor of the built-in model (mlip_md.model.descriptor.PowerSpectrum), evaluated
 * edge by edge in one pass, and its exact backward: the hosts (Predictor, LAMMPS plugin) run
 * it instead of the TorchScript descriptor and call the model's `evaluate_features` for the
 * rest, which is several times faster (no padded tensors, no autograd graph over edges).
 *
 * For centre i, Q density channels q and L2 = (l_max + 1)^2 harmonics ordered l = 0..l_max,
 * m = -l..l, with s_j the species of neighbour j:
 *
 *   R_n(r) = sqrt(2 / r_c) sin(n pi r / r_c) / r f_c(r),   n = 1..n_max
 *   f_c    = 1 - (10 t^3 - 15 t^4 + 6 t^5),  t = clamp((r - r_c + w) / w, 0, 1)
 *   c_i[q][lm] = sum_{j in N(i)} R'_{s_j q}(r_ij) Y_lm(r_ij / |r_ij|)
 *   features_i = ( c_i[q][0] for q < Q,
 *                  then for l = 0..l_max: (2l + 1)^-1/2 sum_m c_i[q][lm] c_i[q'][lm]
 *                  for q <= q' in row-major upper-triangle order )
 *
 * where the per-species radial functions R'_{s q} are
 *
 *   version 1 (radial_mixing NULL, one-hot species): Q = S n_max and R'_{s q} = R_n for
 *             q = s n_max + n, 0 for the other q (each species has its own n_max channels);
 *   version 2 (species-compressed, radial_mixing W [S][n_max][Q]): Q = n_channels and
 *             R'_{s q} = sum_n W[s][n][q] R_n (neighbour species and radial channel mixed into
 *             Q pseudo-channels, so D does not grow with S). The one-hot W of version 1 gives
 *             version 1's features.
 *
 * (The radial index n of q and of W counts from 0 there: row n holds R_{n+1}.)
 *
 * so D = Q + Q (Q + 1) / 2 (l_max + 1). Y_lm are real, orthonormal, without the
 * Condon-Shortley phase (mlip_md.model.spherical). Edges at or beyond r_c contribute nothing.
 */
typedef struct mlip_power_spectrum_params {
    int32_t n_species;           /* S >= 1                                               */
    int32_t n_max;               /* radial functions R_n, 1 <= n_max <= 64                */
    int32_t l_max;               /* 0 <= l_max <= MLIP_POWER_SPECTRUM_MAX_L               */
    double cutoff;               /* r_c > 0, Angstrom                                    */
    double switch_width;         /* w in (0, r_c], Angstrom                              */
    int32_t n_channels;          /* Q of version 2, 1..MLIP_POWER_SPECTRUM_MAX_CHANNELS;
                                    0 (or S n_max) with radial_mixing NULL: version 1    */
    const double *radial_mixing; /* W [S][n_max][n_channels] row-major, finite; NULL: one-hot
                                    species (version 1). Read on every call, not copied:
                                    keep it alive while the params are used              */
} mlip_power_spectrum_params;
#define MLIP_POWER_SPECTRUM_MAX_L 8
#define MLIP_POWER_SPECTRUM_MAX_CHANNELS 1024

/* MLIP_OK when the parameters are valid, else MLIP_ERR_INVALID_ARGUMENT with a message naming
 * the bad value (sizes, radii, n_channels without or with a radial_mixing, a non-finite entry
 * of radial_mixing). Every other function of this section checks the same. */
MLIP_API int mlip_power_spectrum_check(const mlip_power_spectrum_params *params, char *errbuf, size_t errbuf_len);

/* Number of features D per centre, or -1 when the parameters are invalid. */
MLIP_API int64_t mlip_power_spectrum_n_features(const mlip_power_spectrum_params *params);

/* Size Q * L2 of one centre's density block (the workspace the backward needs), or -1. */
MLIP_API int64_t mlip_power_spectrum_density_size(const mlip_power_spectrum_params *params);

/* Forward pass.
 *
 *   n_local         centres are atoms 0..n_local-1
 *   n_all           atoms (centres + ghosts/images), species_index covers all of them
 *   species_index   [n_all] species of each atom, 0..S-1
 *   n_edges         E
 *   edge_index      [2][E] row 0: centre i < n_local, row 1: neighbour j < n_all (any order)
 *   edge_vectors    [E][3] r_j - r_i, Angstrom; must be finite and non-zero
 *   density         output [n_local][Q][L2] (keep it for the backward)
 *   features        output [n_local][D]
 *
 * Returns MLIP_OK or MLIP_ERR_INVALID_ARGUMENT (bad parameters, index out of range,
 * non-finite or zero-length edge vector). No allocation, thread-safe. */
MLIP_API int mlip_power_spectrum_forward_f64(const mlip_power_spectrum_params *params, int64_t n_local,
                                             int64_t n_all, const int64_t *species_index, int64_t n_edges,
                                             const int64_t *edge_index, const double *edge_vectors,
                                             double *density, double *features, char *errbuf,
                                             size_t errbuf_len);
MLIP_API int mlip_power_spectrum_forward_f32(const mlip_power_spectrum_params *params, int64_t n_local,
                                             int64_t n_all, const int64_t *species_index, int64_t n_edges,
                                             const int64_t *edge_index, const float *edge_vectors,
                                             float *density, float *features, char *errbuf,
                                             size_t errbuf_len);

/* Backward pass: edge gradients of n_rows scalar functions of the features.
 *
 *   density         [n_local][Q][L2] from the forward pass on the same edges
 *   n_rows          K >= 1 (e.g. the ensemble mean, or one row per member)
 *   feature_grad    [K][n_local][D] dF_k / d features
 *   edge_grad       output [K][E][3] dF_k / d edge_vectors (eV/Angstrom for energies)
 *
 * Same inputs and checks as the forward pass. Allocates K Q L2 numbers of scratch (and an
 * [E] permutation when the centres are not sorted); thread-safe. */
MLIP_API int mlip_power_spectrum_backward_f64(const mlip_power_spectrum_params *params, int64_t n_local,
                                              int64_t n_all, const int64_t *species_index, int64_t n_edges,
                                              const int64_t *edge_index, const double *edge_vectors,
                                              const double *density, int64_t n_rows,
                                              const double *feature_grad, double *edge_grad, char *errbuf,
                                              size_t errbuf_len);
MLIP_API int mlip_power_spectrum_backward_f32(const mlip_power_spectrum_params *params, int64_t n_local,
                                              int64_t n_all, const int64_t *species_index, int64_t n_edges,
                                              const int64_t *edge_index, const float *edge_vectors,
                                              const float *density, int64_t n_rows,
                                              const float *feature_grad, float *edge_grad, char *errbuf,
                                              size_t errbuf_len);

/* Backward pass straight to forces: for one row (the energy gradient feature_grad
 * [n_local][D]), each edge's gradient g_ij is accumulated as in section 6 -- F_i += g_ij,
 * F_j -= g_ij, W_ab -= r_ij,a g_ij,b -- in float64, without writing edge gradients (saves the
 * [E][3] array and a pass over it).
 *
 *   forces   [n_all][3] float64, eV/Angstrom, ACCUMULATED into (zero it first, or pass a host
 *            force array such as LAMMPS's atom->f[0])
 *   virial   [3][3] float64, eV, accumulated into, or NULL
 *
 * Same inputs and checks as mlip_power_spectrum_backward_*. */
MLIP_API int mlip_power_spectrum_backward_forces_f64(const mlip_power_spectrum_params *params, int64_t n_local,
                                                     int64_t n_all, const int64_t *species_index,
                                                     int64_t n_edges, const int64_t *edge_index,
                                                     const double *edge_vectors, const double *density,
                                                     const double *feature_grad, double *forces,
                                                     double *virial, char *errbuf, size_t errbuf_len);
MLIP_API int mlip_power_spectrum_backward_forces_f32(const mlip_power_spectrum_params *params, int64_t n_local,
                                                     int64_t n_all, const int64_t *species_index,
                                                     int64_t n_edges, const int64_t *edge_index,
                                                     const float *edge_vectors, const float *density,
                                                     const float *feature_grad, double *forces,
                                                     double *virial, char *errbuf, size_t errbuf_len);

/* ========================================================================= */
/* 6. Force and virial assembly                                              */
/* ========================================================================= */
/*
 * Forces and virial from the model's edge gradients g_ij = dE/d(r_j - r_i) (docs/model-contract.md):
 *
 *   F_i += g_ij,  F_j -= g_ij,  W_ab = -sum_ij r_ij,a g_ij,b
 *
 *   edge_index    [2][E] atom pairs (i, j), both < n_atoms
 *   edge_grad     [E][3] eV/Angstrom
 *   edge_vectors  [E][3] Angstrom (only read for the virial; may be NULL when virial is NULL)
 *   forces        output [n_atoms][3] eV/Angstrom (overwritten)
 *   virial        output [3][3] eV, C order, or NULL
 *
 * Returns MLIP_OK or MLIP_ERR_INVALID_ARGUMENT (index out of range, NULL arrays). No
 * allocation, thread-safe. */
MLIP_API int mlip_assemble_forces(int64_t n_atoms, int64_t n_edges, const int64_t *edge_index,
                                  const double *edge_grad, const double *edge_vectors, double *forces,
                                  double *virial, char *errbuf, size_t errbuf_len);

/*
 * The same sums for hosts that keep their own arrays (the LAMMPS plugin): the two ends of each
 * edge in separate arrays; everything ADDED to the caller's sums (forces of other terms already
 * there, ghost atoms' rows summed into their owners later by the host); force rows `force_stride`
 * doubles apart (3: [n_atoms][3]; per-member forces [n_atoms][K][3] take member k at
 * forces + 3 k with stride 3 K); optionally the per-atom virial; and the first non-finite
 * gradient reported instead of spread silently:
 *
 *   F_i += g_ij,  F_j -= g_ij,  W_ab -= r_ij,a g_ij,b,
 *   W_i = W_j += -(1/2) (r_ij,a g_ij,b) for (a,b) = xx yy zz xy xz yz   (LAMMPS's vatom layout)
 *
 * No allocation, thread-safe; one pass over the edges (the virial terms only when asked for).
 */
typedef struct mlip_edge_gradients {
    int64_t n_edges;            /* E >= 0                                                      */
    const int64_t *centres;     /* [E] atom i of each edge                                     */
    const int64_t *neighbours;  /* [E] atom j of each edge                                     */
    const double *grad;         /* [E][3] g_ij = dE / d r_ij, eV/Angstrom                      */
    const double *vectors;      /* [E][3] r_ij = r_j - r_i, Angstrom; read for the virials only
                                   (may be NULL without them)                                  */
} mlip_edge_gradients;

typedef struct mlip_force_sums {
    int64_t n_atoms;            /* every edge end must be < n_atoms                            */
    double *forces;             /* F_i at forces + i force_stride (3 doubles, eV/Angstrom)     */
    int64_t force_stride;       /* >= 3                                                        */
    double *virial;             /* [3][3] eV, C order, or NULL                                 */
    double *atom_virial;        /* [n_atoms][6] eV, xx yy zz xy xz yz, or NULL                 */
} mlip_force_sums;

/* Add the edges' forces and virials to `sums`. *nonfinite_atom (may be NULL): the centre i of
 * the first edge whose gradient is NaN or Inf, -1 when all are finite. Returns MLIP_OK or
 * MLIP_ERR_INVALID_ARGUMENT (NULL arrays, force_stride < 3, an edge end outside 0..n_atoms-1:
 * then the sums hold the edges before it). */
MLIP_API int mlip_add_edge_forces(const mlip_edge_gradients *edges, const mlip_force_sums *sums,
                                  int64_t *nonfinite_atom, char *errbuf, size_t errbuf_len);

/* ========================================================================= */
/* 7. Ensemble MLP readout                                                   */
/* ========================================================================= */
/*
 * The readout of the built-in model (mlip_md.model.readout.EnsembleReadout, SiLU hidden
 * layers, uq "ensemble") for hosts that also run the fused descriptor (section 5): per atom i
 * of species s and member k,
 *
 *   x_i  = (raw_i - feature_mean) / feature_scale
 *   e_ik = MLP_sk(x_i) energy_scale + reference_energy[s]          (eV)
 *   E_i  = mean_k e_ik,   feature_grad_i = d(sum_j E_j) / d raw_i  (eV per feature unit)
 *
 * where MLP_sk has n_layers linear layers y = x W + b (W [in][out]) with SiLU between them.
 * It replaces the model's evaluate_features on steps that need neither monitors nor member
 * gradients; results agree with it to rounding.
 *
 * A readout is created once from the weights (packed, standardisation folded into the first
 * layer) and evaluated any number of times; it holds no mutable state (thread-safe).
 */
typedef struct mlip_mlp_readout mlip_mlp_readout;   /* opaque */

typedef struct mlip_mlp_readout_spec {
    int32_t n_species;                /* S >= 1                                           */
    int32_t n_members;                /* K >= 1                                           */
    int32_t n_layers;                 /* linear layers >= 2                               */
    const int32_t *sizes;             /* [n_layers + 1]: D, H_1, ..., H_{n_layers-1}, 1   */
    const double *const *weights;     /* [n_layers], layer l: [S][K][sizes[l]][sizes[l+1]] */
    const double *const *biases;      /* [n_layers], layer l: [S][K][sizes[l+1]]           */
    const double *feature_mean;       /* [D]                                              */
    const double *feature_scale;      /* [D], finite and non-zero                         */
    const double *reference_energy;   /* [S] eV                                           */
    double energy_scale;              /* eV                                               */
} mlip_mlp_readout_spec;

/* Pack `spec` (copied; the caller's arrays may be freed afterwards) for evaluation in
 * `precision` 32 (float) or 64 (double). Release with mlip_mlp_readout_free. Returns MLIP_OK,
 * MLIP_ERR_INVALID_ARGUMENT or MLIP_ERR_OUT_OF_MEMORY. */
MLIP_API int mlip_mlp_readout_create(const mlip_mlp_readout_spec *spec, int32_t precision,
                                     mlip_mlp_readout **out, char *errbuf, size_t errbuf_len);
MLIP_API void mlip_mlp_readout_free(mlip_mlp_readout *readout);
/* D (input features) and K (members) of a readout; -1 for NULL. */
MLIP_API int64_t mlip_mlp_readout_n_features(const mlip_mlp_readout *readout);
MLIP_API int64_t mlip_mlp_readout_n_members(const mlip_mlp_readout *readout);

/* Evaluate n_atoms atoms (the f32 / f64 entry point must match the precision):
 *
 *   species_index   [n_atoms] 0..S-1
 *   features        [n_atoms][D] raw (unstandardised) features
 *   atomic_energy   output [n_atoms] E_i, eV
 *   member_energy   output [K][n_atoms] e_ik, eV, or NULL
 *   feature_grad    output [n_atoms][D]
 *
 * Returns MLIP_OK, MLIP_ERR_INVALID_ARGUMENT (species out of range, wrong precision) or
 * MLIP_ERR_OUT_OF_MEMORY. */
MLIP_API int mlip_mlp_readout_evaluate_f64(const mlip_mlp_readout *readout, int64_t n_atoms,
                                           const int64_t *species_index, const double *features,
                                           double *atomic_energy, double *member_energy,
                                           double *feature_grad, char *errbuf, size_t errbuf_len);
MLIP_API int mlip_mlp_readout_evaluate_f32(const mlip_mlp_readout *readout, int64_t n_atoms,
                                           const int64_t *species_index, const float *features,
                                           float *atomic_energy, float *member_energy,
                                           float *feature_grad, char *errbuf, size_t errbuf_len);

/* Energy and forces in one pass of the fused descriptor (section 5) and this readout: the
 * forward, the readout and mlip_power_spectrum_backward_forces_* in blocks of centres, so each
 * centre's basis is computed once and reused by the backward while it is in cache (the
 * separate calls compute it twice). Same inputs as section 5's functions; outputs:
 *
 *   atomic_energy   [n_local] E_i, eV
 *   member_energy   [K][n_local] e_ik, eV, or NULL
 *   forces          [n_all][3] float64, eV/Angstrom, ACCUMULATED into (F_i += g, F_j -= g)
 *   virial          [3][3] float64, eV, accumulated into (W -= r (x) g), or NULL
 *
 * The precision of the entry point must match the readout's. Results equal the separate calls
 * to rounding. Returns MLIP_OK, MLIP_ERR_INVALID_ARGUMENT (as the separate calls, or a readout
 * whose D is not the descriptor's), MLIP_ERR_OUT_OF_MEMORY or MLIP_ERR_INTERNAL. */
MLIP_API int mlip_power_spectrum_energy_forces_f64(const mlip_power_spectrum_params *params,
                                                   const mlip_mlp_readout *readout, int64_t n_local,
                                                   int64_t n_all, const int64_t *species_index,
                                                   int64_t n_edges, const int64_t *edge_index,
                                                   const double *edge_vectors, double *atomic_energy,
                                                   double *member_energy, double *forces, double *virial,
                                                   char *errbuf, size_t errbuf_len);
MLIP_API int mlip_power_spectrum_energy_forces_f32(const mlip_power_spectrum_params *params,
                                                   const mlip_mlp_readout *readout, int64_t n_local,
                                                   int64_t n_all, const int64_t *species_index,
                                                   int64_t n_edges, const int64_t *edge_index,
                                                   const float *edge_vectors, float *atomic_energy,
                                                   float *member_energy, double *forces, double *virial,
                                                   char *errbuf, size_t errbuf_len);

/* ========================================================================= */
/* 8. Short-range repulsion                                                  */
/* ========================================================================= */
/*
 * The pair repulsion stored in a model file (metadata block "repulsion", kind "zbl", version
 * 1; mlip_md.model.repulsion): the universal screened nuclear repulsion of Ziegler, Biersack
 * and Littmark (ZBL), multiplied by a switch that is 1 below r_in and exactly 0 from r_out on.
 * r_out is the closest distance seen in training for the element pair, so the term is zero on
 * the training data and in domain, and gives close contacts the repulsive wall an ML model
 * that never saw them lacks. For one pair of atomic numbers Z_a, Z_b at distance r (Angstrom):
 *
 *   V(r)   = s(r) E_ZBL(r)                                          eV
 *   E_ZBL  = k_e Z_a Z_b / r phi(r / a),   k_e = 14.399645 eV Angstrom (e^2 / 4 pi eps_0, the
 *            constant of LAMMPS units metal)
 *   a      = 0.46850 / (Z_a^0.23 + Z_b^0.23) Angstrom (0.8854 a_0, the universal screening length)
 *   phi(x) = 0.18175 e^(-3.19980 x) + 0.50986 e^(-0.94229 x)
 *          + 0.28022 e^(-0.40290 x) + 0.02817 e^(-0.20162 x)
 *   s(r)   = 1 (r <= r_in), 0 (r >= r_out), else 1 - (10 x^3 - 15 x^4 + 6 x^5),
 *            x = (r - r_in) / (r_out - r_in): C^2 (MLIP_SWITCH_SMOOTHERSTEP of section 4)
 *
 * (the constants of LAMMPS' pair_style zbl). Over the contract's directed edges (each pair
 * listed as i -> j and j -> i, i a centre), edge e = (i, j) gives V(|r_ij|) / 2 to centre i,
 * so every pair's energy is split half and half between its atoms, and has the edge gradient
 * g_e = d(V / 2) / d r_ij = V'(r) / 2 r_ij / r, which hosts assemble like the model's own
 * (section 6: F_i += g, F_j -= g, W -= r (x) g).
 *
 * A repulsion is created once from per species-pair radii and evaluated any number of times;
 * it holds no mutable state (thread-safe).
 */
typedef struct mlip_repulsion mlip_repulsion;   /* opaque */

typedef struct mlip_repulsion_spec {
    int32_t n_species;              /* S >= 1                                                */
    const int32_t *atomic_numbers;  /* [S] nuclear charges Z, 1..118                          */
    const double *r_inner;          /* [S][S] r_in, Angstrom, symmetric                       */
    const double *r_outer;          /* [S][S] r_out, Angstrom, symmetric: 0 = no repulsion for
                                       the pair, else finite and > r_in >= 0                  */
} mlip_repulsion_spec;

/* Copy `spec` into a new repulsion; release it with mlip_repulsion_free. Returns MLIP_OK,
 * MLIP_ERR_INVALID_ARGUMENT (sizes, atomic numbers, radii not as above or not symmetric) or
 * MLIP_ERR_OUT_OF_MEMORY. */
MLIP_API int mlip_repulsion_create(const mlip_repulsion_spec *spec, mlip_repulsion **out, char *errbuf,
                                   size_t errbuf_len);
MLIP_API void mlip_repulsion_free(mlip_repulsion *repulsion);   /* NULL: no-op */
/* The largest r_out over all pairs (Angstrom): edges at least this long are skipped after one
 * squared-length test. 0 when no pair has a repulsion; -1 for NULL. */
MLIP_API double mlip_repulsion_max_radius(const mlip_repulsion *repulsion);

/* Evaluate over the contract's edges (same layout as section 5):
 *
 *   n_local, n_all   centres are atoms 0..n_local-1 of n_all
 *   species_index    [n_all] 0..S-1
 *   edge_index       [2][E] row 0: centre i < n_local, row 1: neighbour j < n_all
 *   edge_vectors     [E][3] r_j - r_i, Angstrom
 *   atomic_energy    output [n_local], eV, OVERWRITTEN: each centre's half of its pairs' V
 *   edge_grad        [E][3] float64, eV/Angstrom, g_e ACCUMULATED into, or NULL
 *   forces           [n_all][3] float64, eV/Angstrom, accumulated into (F_i += g, F_j -= g), or NULL
 *   virial           [3][3] float64, eV, accumulated into (W_ab -= r_a g_b), or NULL
 *   n_active         output (may be NULL): the number of edges with |r_ij| < r_out of their pair
 *
 * Edges at least mlip_repulsion_max_radius() long are skipped: the vectors are tested in chunks
 * of 64 with one vectorised squared-length test each (in domain every chunk is skipped so: one
 * streaming pass over the vectors, under 1 % of a fused step of the shipped model), and the
 * indices of skipped edges are not read (the descriptor kernel checks those); the others' are
 * checked. *n_active == 0 means nothing was added (atomic_energy is all zero). The f32 entry point reads float vectors and computes in double. Returns MLIP_OK or
 * MLIP_ERR_INVALID_ARGUMENT (NULL arrays, a NaN vector, an index out of range or a zero-length
 * vector inside r_out). No allocation, thread-safe. */
MLIP_API int mlip_repulsion_evaluate_f64(const mlip_repulsion *repulsion, int64_t n_local, int64_t n_all,
                                         const int64_t *species_index, int64_t n_edges, const int64_t *edge_index,
                                         const double *edge_vectors, double *atomic_energy, double *edge_grad,
                                         double *forces, double *virial, int64_t *n_active, char *errbuf,
                                         size_t errbuf_len);
MLIP_API int mlip_repulsion_evaluate_f32(const mlip_repulsion *repulsion, int64_t n_local, int64_t n_all,
                                         const int64_t *species_index, int64_t n_edges, const int64_t *edge_index,
                                         const float *edge_vectors, double *atomic_energy, double *edge_grad,
                                         double *forces, double *virial, int64_t *n_active, char *errbuf,
                                         size_t errbuf_len);

/* One pair at n distances (reference values, tests, plots): energy [n] = V(r) (eV) and
 * denergy_dr [n] = dV/dr (eV/Angstrom; may be NULL) for atomic numbers z_a, z_b and radii
 * 0 <= r_inner < r_outer (finite); mlip_zbl_evaluate gives the bare E_ZBL (no switch). r [n]
 * finite and > 0. Returns MLIP_OK or MLIP_ERR_INVALID_ARGUMENT. No allocation, thread-safe. */
MLIP_API int mlip_repulsion_pair_evaluate(int32_t z_a, int32_t z_b, double r_inner, double r_outer, const double *r,
                                          int64_t n, double *energy, double *denergy_dr, char *errbuf,
                                          size_t errbuf_len);
MLIP_API int mlip_zbl_evaluate(int32_t z_a, int32_t z_b, const double *r, int64_t n, double *energy,
                               double *denergy_dr, char *errbuf, size_t errbuf_len);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* MLIP_MD_H */
