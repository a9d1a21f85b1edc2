// i-PI socket-protocol codec: implementation of section 3 of mlip_md.h.
//
// Pure byte manipulation: no I/O, no allocation, no exceptions, no global
// mutable state. Every multi-byte value is read / written with memcpy (the
// buffers carry no alignment guarantee) and byte-swapped on big-endian hosts
// (the wire is little-endian). Every function validates its lengths before
// touching the buffers, so no input can make it read or write out of bounds.
#include "mlip_md.h"
#include "errors.h"

#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstring>

namespace {

constexpr double kBohrPerAngstrom = MLIP_IPI_BOHR_PER_ANGSTROM;
constexpr double kHartreePerEv = MLIP_IPI_HARTREE_PER_EV;
constexpr double kForceAuPerEvA = MLIP_IPI_HARTREE_PER_BOHR_PER_EV_PER_ANGSTROM;

constexpr size_t kHdr = MLIP_IPI_HEADER_LEN;

// Header strings, indexed by mlip_ipi_message: upper case, space padded.
const char kHeaders[MLIP_IPI_N_MESSAGES][kHdr + 1] = {
    "STATUS      ", "READY       ", "NEEDINIT    ", "HAVEDATA    ", "INIT        ",
    "POSDATA     ", "GETFORCE    ", "FORCEREADY  ", "EXIT        ",
};

// ---------------------------------------------------------------------------
// errors
using mlip_detail::fail;

inline void clear_error(char *errbuf, size_t errbuf_len) {
    if (errbuf != nullptr && errbuf_len > 0) errbuf[0] = '\0';
}

// Printable rendering of `len` bytes ('STATUS  \x00\xff'): printable ASCII
// as is (backslash and quote escaped), everything else as \xNN. `out` must
// hold 4 * len + 3 bytes.
void escape_bytes(const char *bytes, size_t len, char *out) {
    static const char hex[] = "0123456789abcdef";
    size_t k = 0;
    out[k++] = '\'';
    for (size_t i = 0; i < len; ++i) {
        unsigned char c = static_cast<unsigned char>(bytes[i]);
        if (c == '\\' || c == '\'') {
            out[k++] = '\\';
            out[k++] = static_cast<char>(c);
        } else if (c >= 0x20 && c < 0x7f) {
            out[k++] = static_cast<char>(c);
        } else {
            out[k++] = '\\';
            out[k++] = 'x';
            out[k++] = hex[c >> 4];
            out[k++] = hex[c & 15];
        }
    }
    out[k++] = '\'';
    out[k] = '\0';
}

// ---------------------------------------------------------------------------
// little-endian loads / stores (unaligned-safe)
#if defined(__BYTE_ORDER__) && defined(__ORDER_BIG_ENDIAN__) && \
    __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
constexpr bool kBigEndian = true;
#else
constexpr bool kBigEndian = false;
#endif

inline uint32_t bswap32(uint32_t v) {
    return (v >> 24) | ((v >> 8) & 0xff00u) | ((v << 8) & 0xff0000u) | (v << 24);
}
inline uint64_t bswap64(uint64_t v) {
    return (static_cast<uint64_t>(bswap32(static_cast<uint32_t>(v))) << 32) |
           bswap32(static_cast<uint32_t>(v >> 32));
}

inline int32_t load_i32(const char *p) {
    uint32_t u;
    std::memcpy(&u, p, 4);
    if (kBigEndian) u = bswap32(u);
    int32_t v;
    std::memcpy(&v, &u, 4);
    return v;
}
inline double load_f64(const char *p) {
    uint64_t u;
    std::memcpy(&u, p, 8);
    if (kBigEndian) u = bswap64(u);
    double v;
    std::memcpy(&v, &u, 8);
    return v;
}
inline void store_i32(char *p, int32_t v) {
    uint32_t u;
    std::memcpy(&u, &v, 4);
    if (kBigEndian) u = bswap32(u);
    std::memcpy(p, &u, 4);
}
inline void store_f64(char *p, double v) {
    uint64_t u;
    std::memcpy(&u, &v, 8);
    if (kBigEndian) u = bswap64(u);
    std::memcpy(p, &u, 8);
}

// ---------------------------------------------------------------------------
// 3x3 helpers (row-major m[3 * r + c])
inline double det3(const double *m) {
    return m[0] * (m[4] * m[8] - m[5] * m[7]) - m[1] * (m[3] * m[8] - m[5] * m[6]) +
           m[2] * (m[3] * m[7] - m[4] * m[6]);
}

inline double norm3(double x, double y, double z) { return std::sqrt(x * x + y * y + z * z); }

// Non-zero error code when the cell whose lattice vectors are the ROWS of m
// is degenerate or too large for its determinant to be represented. `what`
// names the cell in the message.
int check_cell(const double *m, const char *what, const char *unit, char *errbuf,
               size_t errbuf_len) {
    double det = det3(m);
    double la = norm3(m[0], m[1], m[2]);
    double lb = norm3(m[3], m[4], m[5]);
    double lc = norm3(m[6], m[7], m[8]);
    double scale = la * lb * lc;
    if (!std::isfinite(det) || !std::isfinite(scale)) {
        return fail(errbuf, errbuf_len,
                    "%s is too large: its volume overflows a double (lattice vector "
                    "lengths %g, %g, %g %s)",
                    what, la, lb, lc, unit);
    }
    if (!(std::fabs(det) > 1e-12 * scale) || scale == 0.0) {
        return fail(errbuf, errbuf_len,
                    "%s has zero volume (det = %g, lattice vector lengths %g, %g, %g %s): "
                    "its lattice vectors are linearly dependent or zero; i-PI needs a "
                    "full 3D cell (use a large box for an isolated system)",
                    what, det, la, lb, lc, unit);
    }
    return MLIP_OK;
}

inline bool valid_atom_count(int64_t n) { return n >= 1 && n <= MLIP_IPI_MAX_ATOMS; }

// Byte counts (size_t is >= 64 bits on every supported platform; the counts
// are bounded by MLIP_IPI_MAX_ATOMS / MLIP_IPI_MAX_EXTRAS_LEN so they fit).
constexpr size_t kPosPrefix = MLIP_IPI_POSDATA_PREFIX_LEN;
constexpr size_t kInitPrefix = MLIP_IPI_INIT_PREFIX_LEN;
constexpr size_t kForceFixed = kHdr + 8 + 4 + 72 + 4;  // header, E, N, virial, L
static_assert(sizeof(size_t) >= 8 || MLIP_IPI_MAX_ATOMS < 80000000,
              "size_t too small for MLIP_IPI_MAX_ATOMS");

}  // namespace

extern "C" {

// ---------------------------------------------------------------------------
// headers
int mlip_ipi_decode_header(const char *bytes, size_t len, int *message, char *errbuf,
                           size_t errbuf_len) {
    clear_error(errbuf, errbuf_len);
    if (message == nullptr) return fail(errbuf, errbuf_len, "message is NULL");
    if (bytes == nullptr && len > 0) return fail(errbuf, errbuf_len, "bytes is NULL");
    if (len != kHdr) {
        char shown[4 * kHdr + 3];
        escape_bytes(bytes, len < kHdr ? len : kHdr, shown);
        return fail(errbuf, errbuf_len,
                    "truncated i-PI message header: got %zu bytes %s%s, expected %d "
                    "(the server closed the connection or the stream is out of sync)",
                    len, shown, len > kHdr ? "..." : "", MLIP_IPI_HEADER_LEN);
    }
    for (int m = 0; m < MLIP_IPI_N_MESSAGES; ++m) {
        if (std::memcmp(bytes, kHeaders[m], kHdr) == 0) {
            *message = m;
            return MLIP_OK;
        }
    }
    char shown[4 * kHdr + 3];
    escape_bytes(bytes, kHdr, shown);
    return fail(errbuf, errbuf_len,
                "unknown i-PI message header %s: expected one of STATUS, READY, NEEDINIT, "
                "HAVEDATA, INIT, POSDATA, GETFORCE, FORCEREADY, EXIT (upper case, "
                "space-padded to 12 bytes); the peer is not an i-PI server or the stream "
                "is out of sync",
                shown);
}

int mlip_ipi_encode_header(int message, char *out, size_t out_len, char *errbuf,
                           size_t errbuf_len) {
    clear_error(errbuf, errbuf_len);
    if (message < 0 || message >= MLIP_IPI_N_MESSAGES)
        return fail(errbuf, errbuf_len, "unknown i-PI message kind %d (expected 0..%d)",
                    message, MLIP_IPI_N_MESSAGES - 1);
    if (out == nullptr) return fail(errbuf, errbuf_len, "out is NULL");
    if (out_len < kHdr)
        return fail(errbuf, errbuf_len, "output buffer too small: %zu bytes, need %d",
                    out_len, MLIP_IPI_HEADER_LEN);
    std::memcpy(out, kHeaders[message], kHdr);
    return MLIP_OK;
}

// ---------------------------------------------------------------------------
// INIT
int mlip_ipi_decode_init_prefix(const char *buf, size_t len, int32_t *index,
                                int32_t *length, char *errbuf, size_t errbuf_len) {
    clear_error(errbuf, errbuf_len);
    if (index == nullptr || length == nullptr)
        return fail(errbuf, errbuf_len, "index or length is NULL");
    if (buf == nullptr && len > 0) return fail(errbuf, errbuf_len, "buf is NULL");
    if (len != kInitPrefix)
        return fail(errbuf, errbuf_len,
                    "INIT: truncated or oversized prefix: got %zu bytes, expected %d "
                    "(int32 replica index + int32 string length)",
                    len, MLIP_IPI_INIT_PREFIX_LEN);
    int32_t idx = load_i32(buf);
    int32_t n = load_i32(buf + 4);
    if (idx < 0)
        return fail(errbuf, errbuf_len,
                    "INIT: negative replica index %d (the stream is corrupt or out of sync)",
                    static_cast<int>(idx));
    if (n < 0 || n > MLIP_IPI_MAX_INIT_LEN)
        return fail(errbuf, errbuf_len,
                    "INIT: init string length %d outside [0, %d] bytes (the stream is "
                    "corrupt or out of sync)",
                    static_cast<int>(n), MLIP_IPI_MAX_INIT_LEN);
    *index = idx;
    *length = n;
    return MLIP_OK;
}

size_t mlip_ipi_init_size(int32_t length) {
    if (length < 0 || length > MLIP_IPI_MAX_INIT_LEN) return 0;
    return kHdr + kInitPrefix + static_cast<size_t>(length);
}

int mlip_ipi_encode_init(int32_t index, const char *init, int32_t length, char *out,
                         size_t out_len, size_t *n_written, char *errbuf,
                         size_t errbuf_len) {
    clear_error(errbuf, errbuf_len);
    if (index < 0) return fail(errbuf, errbuf_len, "INIT: negative replica index %d",
                               static_cast<int>(index));
    size_t need = mlip_ipi_init_size(length);
    if (need == 0)
        return fail(errbuf, errbuf_len, "INIT: init string length %d outside [0, %d]",
                    static_cast<int>(length), MLIP_IPI_MAX_INIT_LEN);
    if (init == nullptr && length > 0) return fail(errbuf, errbuf_len, "init is NULL");
    if (out == nullptr) return fail(errbuf, errbuf_len, "out is NULL");
    if (out_len < need)
        return fail(errbuf, errbuf_len,
                    "INIT: output buffer too small: %zu bytes, need %zu", out_len, need);
    std::memcpy(out, kHeaders[MLIP_IPI_INIT], kHdr);
    store_i32(out + kHdr, index);
    store_i32(out + kHdr + 4, length);
    if (length > 0) std::memcpy(out + kHdr + kInitPrefix, init, static_cast<size_t>(length));
    if (n_written != nullptr) *n_written = need;
    return MLIP_OK;
}

// ---------------------------------------------------------------------------
// POSDATA
int mlip_ipi_decode_posdata_prefix(const char *buf, size_t len, int32_t expected_atoms,
                                   int32_t max_atoms, double *cell_angstrom,
                                   int32_t *n_atoms, char *errbuf, size_t errbuf_len) {
    clear_error(errbuf, errbuf_len);
    if (cell_angstrom == nullptr || n_atoms == nullptr)
        return fail(errbuf, errbuf_len, "cell_angstrom or n_atoms is NULL");
    if (buf == nullptr && len > 0) return fail(errbuf, errbuf_len, "buf is NULL");
    if (!valid_atom_count(max_atoms))
        return fail(errbuf, errbuf_len, "max_atoms = %d outside [1, %d]",
                    static_cast<int>(max_atoms), MLIP_IPI_MAX_ATOMS);
    if (expected_atoms < -1 || expected_atoms == 0 || expected_atoms > max_atoms)
        return fail(errbuf, errbuf_len,
                    "expected_atoms = %d: must be -1 (any) or in [1, max_atoms = %d]",
                    static_cast<int>(expected_atoms), static_cast<int>(max_atoms));
    if (len != kPosPrefix)
        return fail(errbuf, errbuf_len,
                    "POSDATA: truncated or oversized prefix: got %zu bytes, expected %d "
                    "(cell and inverse cell as 18 float64 + int32 atom count)",
                    len, MLIP_IPI_POSDATA_PREFIX_LEN);
    double h[9];
    for (int k = 0; k < 18; ++k) {
        double v = load_f64(buf + 8 * k);
        if (!std::isfinite(v))
            return fail(errbuf, errbuf_len,
                        "POSDATA: non-finite value %g in the %s (entry [%d][%d]): the "
                        "simulation has diverged or the stream is corrupt",
                        v, k < 9 ? "cell" : "inverse cell", (k % 9) / 3, k % 3);
        if (k < 9) h[k] = v;
    }
    int32_t n = load_i32(buf + 144);
    if (n < 1)
        return fail(errbuf, errbuf_len,
                    "POSDATA: atom count %d < 1 (the stream is corrupt or out of sync)",
                    static_cast<int>(n));
    if (n > max_atoms)
        return fail(errbuf, errbuf_len,
                    "POSDATA: i-PI announced %d atoms, more than max_atoms = %d (the "
                    "stream is corrupt or out of sync, or raise max_atoms)",
                    static_cast<int>(n), static_cast<int>(max_atoms));
    if (expected_atoms >= 0 && n != expected_atoms)
        return fail(errbuf, errbuf_len,
                    "POSDATA: i-PI sent %d atoms, the driver was initialised with %d: the "
                    "structure given to i-PI and the driver's template must hold the same "
                    "atoms in the same order",
                    static_cast<int>(n), static_cast<int>(expected_atoms));
    // cell rows = lattice vectors = columns of h
    double c[9];
    for (int r = 0; r < 3; ++r)
        for (int k = 0; k < 3; ++k) c[3 * r + k] = h[3 * k + r] / kBohrPerAngstrom;
    int st = check_cell(c, "POSDATA: the cell", "Angstrom", errbuf, errbuf_len);
    if (st != MLIP_OK) return st;
    std::memcpy(cell_angstrom, c, sizeof(c));
    *n_atoms = n;
    return MLIP_OK;
}

int mlip_ipi_decode_positions(const char *buf, size_t len, int32_t n_atoms,
                              double *positions_angstrom, char *errbuf,
                              size_t errbuf_len) {
    clear_error(errbuf, errbuf_len);
    if (!valid_atom_count(n_atoms))
        return fail(errbuf, errbuf_len, "n_atoms = %d outside [1, %d]",
                    static_cast<int>(n_atoms), MLIP_IPI_MAX_ATOMS);
    if (positions_angstrom == nullptr)
        return fail(errbuf, errbuf_len, "positions_angstrom is NULL");
    if (buf == nullptr && len > 0) return fail(errbuf, errbuf_len, "buf is NULL");
    size_t need = 24 * static_cast<size_t>(n_atoms);
    if (len != need)
        return fail(errbuf, errbuf_len,
                    "POSDATA: got %zu bytes of positions, expected %zu (3 float64 for each "
                    "of %d atoms)",
                    len, need, static_cast<int>(n_atoms));
    const size_t n3 = 3 * static_cast<size_t>(n_atoms);
    for (size_t k = 0; k < n3; ++k) {
        double v = load_f64(buf + 8 * k) / kBohrPerAngstrom;
        positions_angstrom[k] = v;
        if (!std::isfinite(v))
            return fail(errbuf, errbuf_len,
                        "POSDATA: non-finite position of atom %zu (coordinate %zu = %g): the "
                        "simulation has diverged or the stream is corrupt",
                        k / 3, k % 3, v);
    }
    return MLIP_OK;
}

size_t mlip_ipi_posdata_size(int32_t n_atoms) {
    if (!valid_atom_count(n_atoms)) return 0;
    return kHdr + kPosPrefix + 24 * static_cast<size_t>(n_atoms);
}

int mlip_ipi_encode_posdata(const double *cell_angstrom, const double *positions_angstrom,
                            int32_t n_atoms, char *out, size_t out_len, size_t *n_written,
                            char *errbuf, size_t errbuf_len) {
    clear_error(errbuf, errbuf_len);
    size_t need = mlip_ipi_posdata_size(n_atoms);
    if (need == 0)
        return fail(errbuf, errbuf_len, "n_atoms = %d outside [1, %d]",
                    static_cast<int>(n_atoms), MLIP_IPI_MAX_ATOMS);
    if (cell_angstrom == nullptr || positions_angstrom == nullptr || out == nullptr)
        return fail(errbuf, errbuf_len, "cell_angstrom, positions_angstrom or out is NULL");
    if (out_len < need)
        return fail(errbuf, errbuf_len,
                    "POSDATA: output buffer too small: %zu bytes, need %zu", out_len, need);
    // h (Bohr) = cell^T * k: h[3 * r + c] = cell[3 * c + r] * k
    double h[9];
    for (int r = 0; r < 3; ++r)
        for (int k = 0; k < 3; ++k) {
            double v = cell_angstrom[3 * k + r];
            if (!std::isfinite(v))
                return fail(errbuf, errbuf_len, "non-finite cell entry [%d][%d] = %g", k, r,
                            v);
            h[3 * r + k] = v * kBohrPerAngstrom;
        }
    int st = check_cell(h, "the cell", "Bohr", errbuf, errbuf_len);
    if (st != MLIP_OK) return st;
    // inverse by the adjugate
    double det = det3(h);
    double ih[9] = {
        (h[4] * h[8] - h[5] * h[7]) / det, (h[2] * h[7] - h[1] * h[8]) / det,
        (h[1] * h[5] - h[2] * h[4]) / det, (h[5] * h[6] - h[3] * h[8]) / det,
        (h[0] * h[8] - h[2] * h[6]) / det, (h[2] * h[3] - h[0] * h[5]) / det,
        (h[3] * h[7] - h[4] * h[6]) / det, (h[1] * h[6] - h[0] * h[7]) / det,
        (h[0] * h[4] - h[1] * h[3]) / det,
    };
    for (double v : ih)
        if (!std::isfinite(v))
            return fail(errbuf, errbuf_len,
                        "the inverse cell is not representable (cell too small or too "
                        "ill-conditioned)");
    const size_t n3 = 3 * static_cast<size_t>(n_atoms);
    char *p = out + kHdr + kPosPrefix;
    for (size_t k = 0; k < n3; ++k) {
        double x = positions_angstrom[k];
        double v = x * kBohrPerAngstrom;
        if (!std::isfinite(v))
            return fail(errbuf, errbuf_len,
                        "%s position of atom %zu (coordinate %zu = %g)",
                        std::isfinite(x) ? "too large" : "non-finite", k / 3, k % 3, x);
        store_f64(p + 8 * k, v);
    }
    std::memcpy(out, kHeaders[MLIP_IPI_POSDATA], kHdr);
    for (int k = 0; k < 9; ++k) store_f64(out + kHdr + 8 * k, h[k]);
    for (int k = 0; k < 9; ++k) store_f64(out + kHdr + 72 + 8 * k, ih[k]);
    store_i32(out + kHdr + 144, n_atoms);
    if (n_written != nullptr) *n_written = need;
    return MLIP_OK;
}

// ---------------------------------------------------------------------------
// FORCEREADY
size_t mlip_ipi_forceready_size(int32_t n_atoms, int32_t extras_len) {
    if (!valid_atom_count(n_atoms) || extras_len < 0 || extras_len > MLIP_IPI_MAX_EXTRAS_LEN)
        return 0;
    return kForceFixed + 24 * static_cast<size_t>(n_atoms) + static_cast<size_t>(extras_len);
}

int mlip_ipi_encode_forceready(double energy_ev, const double *forces_ev_per_angstrom,
                               int32_t n_atoms, const double *virial_ev, const char *extras,
                               int32_t extras_len, char *out, size_t out_len,
                               size_t *n_written, char *errbuf, size_t errbuf_len) {
    clear_error(errbuf, errbuf_len);
    if (!valid_atom_count(n_atoms))
        return fail(errbuf, errbuf_len, "FORCEREADY: n_atoms = %d outside [1, %d]",
                    static_cast<int>(n_atoms), MLIP_IPI_MAX_ATOMS);
    if (extras_len < 0)
        return fail(errbuf, errbuf_len, "FORCEREADY: negative extras length %d",
                    static_cast<int>(extras_len));
    size_t need = mlip_ipi_forceready_size(n_atoms, extras_len);
    if (forces_ev_per_angstrom == nullptr || virial_ev == nullptr || out == nullptr)
        return fail(errbuf, errbuf_len, "forces, virial or out is NULL");
    if (extras == nullptr && extras_len > 0)
        return fail(errbuf, errbuf_len, "extras is NULL with extras_len = %d",
                    static_cast<int>(extras_len));
    if (out_len < need)
        return fail(errbuf, errbuf_len,
                    "FORCEREADY: output buffer too small: %zu bytes, need %zu", out_len, need);
    double e = energy_ev * kHartreePerEv;
    if (!std::isfinite(e))
        return fail(errbuf, errbuf_len,
                    "FORCEREADY: non-finite energy %g eV: refusing to send it to i-PI",
                    energy_ev);
    char *p = out + kHdr + 12;
    const size_t n3 = 3 * static_cast<size_t>(n_atoms);
    for (size_t k = 0; k < n3; ++k) {
        double f = forces_ev_per_angstrom[k];
        double v = f * kForceAuPerEvA;
        if (!std::isfinite(v))
            return fail(errbuf, errbuf_len,
                        "FORCEREADY: non-finite force on atom %zu (component %zu = %g "
                        "eV/Angstrom): refusing to send it to i-PI",
                        k / 3, k % 3, f);
        store_f64(p + 8 * k, v);
    }
    p += 8 * n3;
    for (int k = 0; k < 9; ++k) {
        double w = virial_ev[k];
        double v = w * kHartreePerEv;
        if (!std::isfinite(v))
            return fail(errbuf, errbuf_len,
                        "FORCEREADY: non-finite virial entry [%d][%d] = %g eV: refusing to "
                        "send it to i-PI",
                        k / 3, k % 3, w);
        store_f64(p + 8 * k, v);
    }
    p += 72;
    store_i32(p, extras_len);
    if (extras_len > 0) std::memcpy(p + 4, extras, static_cast<size_t>(extras_len));
    std::memcpy(out, kHeaders[MLIP_IPI_FORCEREADY], kHdr);
    store_f64(out + kHdr, e);
    store_i32(out + kHdr + 8, n_atoms);
    if (n_written != nullptr) *n_written = need;
    return MLIP_OK;
}

int mlip_ipi_decode_forceready(const char *buf, size_t len, int32_t max_atoms,
                               double *energy_ev, int32_t *n_atoms,
                               double *forces_ev_per_angstrom, int32_t forces_capacity,
                               double *virial_ev, size_t *extras_offset,
                               int32_t *extras_len, char *errbuf, size_t errbuf_len) {
    clear_error(errbuf, errbuf_len);
    if (energy_ev == nullptr || n_atoms == nullptr || virial_ev == nullptr ||
        extras_offset == nullptr || extras_len == nullptr)
        return fail(errbuf, errbuf_len, "an output pointer is NULL");
    if (buf == nullptr && len > 0) return fail(errbuf, errbuf_len, "buf is NULL");
    if (!valid_atom_count(max_atoms))
        return fail(errbuf, errbuf_len, "max_atoms = %d outside [1, %d]",
                    static_cast<int>(max_atoms), MLIP_IPI_MAX_ATOMS);
    if (len < kHdr + 12)
        return fail(errbuf, errbuf_len,
                    "FORCEREADY: truncated message: %zu bytes, need at least %zu for the "
                    "header, energy and atom count",
                    len, kHdr + 12);
    if (std::memcmp(buf, kHeaders[MLIP_IPI_FORCEREADY], kHdr) != 0) {
        char shown[4 * kHdr + 3];
        escape_bytes(buf, kHdr, shown);
        return fail(errbuf, errbuf_len, "FORCEREADY: wrong header %s, expected 'FORCEREADY  '",
                    shown);
    }
    double e = load_f64(buf + kHdr) / kHartreePerEv;
    if (!std::isfinite(e))
        return fail(errbuf, errbuf_len, "FORCEREADY: non-finite energy %g eV", e);
    int32_t n = load_i32(buf + kHdr + 8);
    if (n < 1 || n > max_atoms)
        return fail(errbuf, errbuf_len, "FORCEREADY: atom count %d outside [1, max_atoms = %d]",
                    static_cast<int>(n), static_cast<int>(max_atoms));
    if (forces_ev_per_angstrom != nullptr && n > forces_capacity)
        return fail(errbuf, errbuf_len,
                    "FORCEREADY: %d atoms do not fit the forces array of %d atoms",
                    static_cast<int>(n), static_cast<int>(forces_capacity));
    const size_t n3 = 3 * static_cast<size_t>(n);
    const size_t fixed = kForceFixed + 8 * n3;  // everything but the extras
    if (len < fixed)
        return fail(errbuf, errbuf_len,
                    "FORCEREADY: truncated message: %zu bytes, need at least %zu for %d atoms",
                    len, fixed, static_cast<int>(n));
    int32_t nx = load_i32(buf + fixed - 4);
    if (nx < 0)
        return fail(errbuf, errbuf_len, "FORCEREADY: negative extras length %d",
                    static_cast<int>(nx));
    if (len - fixed != static_cast<size_t>(nx))
        return fail(errbuf, errbuf_len,
                    "FORCEREADY: message of %zu bytes, expected %zu for %d atoms and %d "
                    "bytes of extras",
                    len, fixed + static_cast<size_t>(nx), static_cast<int>(n),
                    static_cast<int>(nx));
    const char *p = buf + kHdr + 12;
    for (size_t k = 0; k < n3; ++k) {
        double v = load_f64(p + 8 * k) / kForceAuPerEvA;
        if (!std::isfinite(v))
            return fail(errbuf, errbuf_len,
                        "FORCEREADY: non-finite force on atom %zu (component %zu = %g)", k / 3,
                        k % 3, v);
        if (forces_ev_per_angstrom != nullptr) forces_ev_per_angstrom[k] = v;
    }
    p += 8 * n3;
    for (int k = 0; k < 9; ++k) {
        double v = load_f64(p + 8 * k) / kHartreePerEv;
        if (!std::isfinite(v))
            return fail(errbuf, errbuf_len, "FORCEREADY: non-finite virial entry [%d][%d] = %g",
                        k / 3, k % 3, v);
        virial_ev[k] = v;
    }
    *energy_ev = e;
    *n_atoms = n;
    *extras_offset = fixed;
    *extras_len = nx;
    return MLIP_OK;
}

}  // extern "C"
