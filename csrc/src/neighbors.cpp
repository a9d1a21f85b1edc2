// Cell-list neighbour list: implementation of section 2 of mlip_md.h.
//
// Algorithm (one call):
//   1. Effective cell He: periodic cell vectors as given, non-periodic ones
//      replaced by unit vectors orthogonal to the periodic ones (identity when
//      nothing is periodic). Fractional coordinates f = r @ He^-1.
//   2. Wrap periodic fractional coordinates into [0, 1), remembering the
//      integer wrap offsets n (r = w + n @ H). Non-periodic fractional
//      coordinates span the bounding box [lo, hi].
//   3. Bins in fractional space: along k, nb_k bins whose perpendicular width
//      (distance between the bin's bounding planes) is >= bin_fraction *
//      cutoff; the search range is s_k = ceil(cutoff / width_k) bins each way.
//      With periodic wrapping every (bin, offset) gives a distinct (bin,
//      image) pair, which also covers cutoffs larger than the cell. The total
//      bin count is capped at ~N so sparse systems do not allocate huge grids.
//   4. Counting sort of atoms by bin (x fastest); wrapped positions, wrap
//      offsets and original indices stored bin-contiguous (SoA). A row of
//      bins along x with a constant periodic shift is a contiguous range of
//      atoms ("segment").
//   5. Loop over centre atoms i in ORIGINAL order (so the output is sorted by
//      i with no extra pass); for each segment of i's stencil, blocks of <= 64
//      candidates: SIMD squared-distance test against cutoff^2 (no sqrt, no
//      branch) giving a hit bit mask, then only the hits are visited
//      (count-trailing-zeros) and written: i, j, S = t + n_i - n_j and
//      r_ij = w_j + t @ H - w_i. Outputs are grown with realloc (mremap for
//      large blocks: no copy) and handed to the caller without a copy.
//   6. Multi-threading (optional, std::thread): a counting pass over chunks
//      of centre atoms, one exact allocation, then a filling pass writing
//      each chunk in place -- no concatenation copy, and the result is
//      identical to the single-threaded one.
#include "mlip_md.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <new>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace {

struct MlipError {
    int code;
    std::string message;
};

[[noreturn]] void fail(const std::string &message) {
    throw MlipError{MLIP_ERR_INVALID_ARGUMENT, message};
}

void write_error(char *errbuf, size_t errbuf_len, const std::string &msg) {
    if (errbuf == nullptr || errbuf_len == 0) return;
    size_t n = std::min(msg.size(), errbuf_len - 1);
    std::memcpy(errbuf, msg.data(), n);
    errbuf[n] = '\0';
}

// ---------------------------------------------------------------------------
// small 3-vector helpers
struct V3 {
    double x, y, z;
};
inline V3 sub(V3 a, V3 b) { return {a.x - b.x, a.y - b.y, a.z - b.z}; }
inline V3 scale(V3 a, double s) { return {a.x * s, a.y * s, a.z * s}; }
inline double dot(V3 a, V3 b) { return a.x * b.x + a.y * b.y + a.z * b.z; }
inline V3 cross(V3 a, V3 b) {
    return {a.y * b.z - a.z * b.y, a.z * b.x - a.x * b.z, a.x * b.y - a.y * b.x};
}
inline double norm(V3 a) { return std::sqrt(dot(a, a)); }
inline V3 normalized(V3 a) { return scale(a, 1.0 / norm(a)); }

// ---------------------------------------------------------------------------
// output buffers
void *checked_realloc(void *ptr, size_t bytes) {
    if (bytes == 0) bytes = 16;
    void *p = std::realloc(ptr, bytes);
    if (p == nullptr) throw std::bad_alloc();
    return p;
}

// Ask for transparent huge pages on large output buffers (fewer page
// faults when they are first written). Purely advisory.
void advise_huge(void *ptr, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    const size_t huge = size_t(2) << 20;
    if (ptr == nullptr || bytes < 4 * huge) return;
    uintptr_t begin = (reinterpret_cast<uintptr_t>(ptr) + huge - 1) & ~(huge - 1);
    uintptr_t end = (reinterpret_cast<uintptr_t>(ptr) + bytes) & ~(huge - 1);
    if (end > begin) madvise(reinterpret_cast<void *>(begin), end - begin, MADV_HUGEPAGE);
#else
    (void)ptr;
    (void)bytes;
#endif
}

// Output arrays. Either owned and growable (single-threaded path), or a
// fixed window into shared arrays (multi-threaded fill pass, exact size known
// from the counting pass).
struct Output {
    int64_t size = 0;
    int64_t capacity = 0;
    bool owned = true;
    bool want_vectors = false;
    bool want_distances = false;
    int64_t *i = nullptr;
    int64_t *j = nullptr;
    int32_t *shifts = nullptr;
    double *vectors = nullptr;
    double *distances = nullptr;

    Output() = default;
    Output(const Output &) = delete;
    Output &operator=(const Output &) = delete;
    ~Output() { release(); }

    void release() {
        if (owned) {
            std::free(i);
            std::free(j);
            std::free(shifts);
            std::free(vectors);
            std::free(distances);
        }
        i = j = nullptr;
        shifts = nullptr;
        vectors = distances = nullptr;
        size = capacity = 0;
    }

    // (re)allocate owned storage for `cap` pairs
    void resize_storage(int64_t cap) {
        const size_t n = static_cast<size_t>(std::max<int64_t>(cap, 1));
        const bool grow = cap > capacity;
        i = static_cast<int64_t *>(checked_realloc(i, n * sizeof(int64_t)));
        j = static_cast<int64_t *>(checked_realloc(j, n * sizeof(int64_t)));
        shifts = static_cast<int32_t *>(checked_realloc(shifts, n * 3 * sizeof(int32_t)));
        if (want_vectors)
            vectors = static_cast<double *>(checked_realloc(vectors, n * 3 * sizeof(double)));
        if (want_distances)
            distances = static_cast<double *>(checked_realloc(distances, n * sizeof(double)));
        if (grow) {
            advise_huge(i, n * sizeof(int64_t));
            advise_huge(j, n * sizeof(int64_t));
            advise_huge(shifts, n * 3 * sizeof(int32_t));
            if (want_vectors) advise_huge(vectors, n * 3 * sizeof(double));
            if (want_distances) advise_huge(distances, n * sizeof(double));
        }
        capacity = cap;
    }

    // make room for `extra` more pairs
    void reserve_more(int64_t extra) {
        if (size + extra <= capacity) return;
        if (!owned) throw std::logic_error("neighbour count changed between passes");
        resize_storage(std::max<int64_t>(size + extra, capacity + capacity / 2 + 1024));
    }

    // window [offset, offset + count) of `whole` (not owned)
    void view_of(const Output &whole, int64_t offset, int64_t count) {
        release();
        owned = false;
        want_vectors = whole.want_vectors;
        want_distances = whole.want_distances;
        i = whole.i + offset;
        j = whole.j + offset;
        shifts = whole.shifts + 3 * offset;
        vectors = whole.want_vectors ? whole.vectors + 3 * offset : nullptr;
        distances = whole.want_distances ? whole.distances + offset : nullptr;
        size = 0;
        capacity = count;
    }
};

// ---------------------------------------------------------------------------
// cell list
struct Segment {
    int64_t begin, end;  // range in the bin-sorted atom arrays
    double tx, ty, tz;   // Cartesian shift t @ H
    int32_t sx, sy, sz;  // integer shift t
    bool zero_shift;
};

struct Axis {
    bool periodic = false;
    int64_t nbins = 1;
    int64_t search = 0;      // s: bins to search each way
    double lo = 0.0;         // fractional origin (non-periodic)
    double inv_width = 0.0;  // bins per fractional unit
    // periodic axes: for v in [-search, nbins - 1 + search] (index v + search),
    // the wrapped bin v mod nbins and the image index floor(v / nbins)
    std::vector<int64_t> wrapped, image;
};

struct CellList {
    double H[3][3];    // original cell (rows)
    double He[3][3];   // effective cell
    double Hinv[3][3]; // inverse of He: f = r @ Hinv
    Axis axis[3];
    int64_t n_bins = 1;
    std::vector<int64_t> bin_start;  // [n_bins + 1]
    // bin-sorted SoA copies
    std::vector<double> X, Y, Z;      // wrapped Cartesian positions
    std::vector<int32_t> NX, NY, NZ;  // wrap offsets n: r = w + n @ H
    std::vector<int64_t> orig;        // original index
    std::vector<int64_t> sorted_pos;  // original index -> sorted position
    std::vector<int64_t> atom_bin;    // original index -> linear bin
    std::vector<int32_t> atom_bin3;   // original index -> bin along a, b, c
};

inline int64_t floor_div(int64_t a, int64_t b) {
    int64_t q = a / b;
    if ((a % b != 0) && ((a < 0) != (b < 0))) --q;
    return q;
}

void build_effective_cell(CellList &cl, const double *cell, const int *pbc) {
    V3 v[3];
    for (int k = 0; k < 3; ++k) {
        for (int m = 0; m < 3; ++m) cl.H[k][m] = cell[3 * k + m];
        v[k] = {cell[3 * k], cell[3 * k + 1], cell[3 * k + 2]};
    }
    int periodic[3];
    int np = 0;
    for (int k = 0; k < 3; ++k) {
        periodic[k] = pbc[k] != 0;
        np += periodic[k];
        cl.axis[k].periodic = periodic[k];
    }
    static const char *names[3] = {"a", "b", "c"};
    for (int k = 0; k < 3; ++k) {
        if (!periodic[k]) continue;
        if (!(std::isfinite(v[k].x) && std::isfinite(v[k].y) && std::isfinite(v[k].z)))
            fail(std::string("cell vector ") + names[k] + " is not finite");
        if (norm(v[k]) == 0.0)
            fail(std::string("cell vector ") + names[k] +
                 " is zero along a periodic direction");
    }
    const double tol = 1e-10;
    V3 e[3] = {v[0], v[1], v[2]};
    if (np == 3) {
        double det = dot(v[0], cross(v[1], v[2]));
        if (!(std::fabs(det) > tol * norm(v[0]) * norm(v[1]) * norm(v[2])))
            fail("periodic cell has (near) zero volume");
    } else if (np == 2) {
        int k0 = -1, k1 = -1, kn = -1;
        for (int k = 0; k < 3; ++k) {
            if (periodic[k]) {
                (k0 < 0 ? k0 : k1) = k;
            } else {
                kn = k;
            }
        }
        V3 n = cross(v[k0], v[k1]);
        if (!(norm(n) > tol * norm(v[k0]) * norm(v[k1])))
            fail("the two periodic cell vectors are (near) parallel");
        e[kn] = normalized(n);
    } else if (np == 1) {
        int kp = periodic[0] ? 0 : (periodic[1] ? 1 : 2);
        V3 u = normalized(v[kp]);
        // axis least aligned with u
        V3 axes[3] = {{1, 0, 0}, {0, 1, 0}, {0, 0, 1}};
        int best = 0;
        for (int m = 1; m < 3; ++m)
            if (std::fabs(dot(axes[m], u)) < std::fabs(dot(axes[best], u))) best = m;
        V3 w1 = normalized(sub(axes[best], scale(u, dot(axes[best], u))));
        V3 w2 = cross(u, w1);
        int k1 = (kp + 1) % 3, k2 = (kp + 2) % 3;
        e[k1] = w1;
        e[k2] = w2;
    } else {
        e[0] = {1, 0, 0};
        e[1] = {0, 1, 0};
        e[2] = {0, 0, 1};
    }
    // non-periodic rows of H are never used (shifts are 0 there); zero them
    // so that arbitrary (even non-finite) values cannot leak into results
    for (int k = 0; k < 3; ++k)
        if (!periodic[k]) cl.H[k][0] = cl.H[k][1] = cl.H[k][2] = 0.0;
    for (int k = 0; k < 3; ++k) {
        cl.He[k][0] = e[k].x;
        cl.He[k][1] = e[k].y;
        cl.He[k][2] = e[k].z;
    }
    // inverse: f = r @ Hinv with Hinv = He^-1, columns of Hinv are the
    // reciprocal vectors (b x c) / det, ...
    double det = dot(e[0], cross(e[1], e[2]));
    V3 r0 = scale(cross(e[1], e[2]), 1.0 / det);
    V3 r1 = scale(cross(e[2], e[0]), 1.0 / det);
    V3 r2 = scale(cross(e[0], e[1]), 1.0 / det);
    V3 rec[3] = {r0, r1, r2};
    for (int k = 0; k < 3; ++k) {
        cl.Hinv[0][k] = rec[k].x;
        cl.Hinv[1][k] = rec[k].y;
        cl.Hinv[2][k] = rec[k].z;
    }
}

// Perpendicular thickness of the effective cell along k per fractional unit:
// d_k = |V| / |e_{k+1} x e_{k+2}|  (= 1 / |reciprocal vector k|).
double plane_spacing(const CellList &cl, int k) {
    double rx = cl.Hinv[0][k], ry = cl.Hinv[1][k], rz = cl.Hinv[2][k];
    return 1.0 / std::sqrt(rx * rx + ry * ry + rz * rz);
}

void build_cell_list(CellList &cl, const double *positions, int64_t n, double cutoff,
                     double bin_fraction) {
    // fractional coordinates, wrapping
    std::vector<double> frac(static_cast<size_t>(3 * n));
    std::vector<int32_t> wrap(static_cast<size_t>(3 * n), 0);
    double lo[3] = {0, 0, 0}, hi[3] = {0, 0, 0};
    for (int k = 0; k < 3; ++k) {
        lo[k] = HUGE_VAL;
        hi[k] = -HUGE_VAL;
    }
    const double (*Hi)[3] = cl.Hinv;
    for (int64_t a = 0; a < n; ++a) {
        const double *p = positions + 3 * a;
        for (int k = 0; k < 3; ++k) {
            double f = p[0] * Hi[0][k] + p[1] * Hi[1][k] + p[2] * Hi[2][k];
            if (cl.axis[k].periodic) {
                double fl = std::floor(f);
                if (!(std::fabs(fl) < 1e9))
                    fail("an atom is more than 1e9 cell lengths away from the cell");
                wrap[3 * a + k] = static_cast<int32_t>(fl);
                f -= fl;
            } else {
                lo[k] = std::min(lo[k], f);
                hi[k] = std::max(hi[k], f);
            }
            frac[3 * a + k] = f;
        }
    }

    // bins
    double d[3];
    for (int k = 0; k < 3; ++k) d[k] = plane_spacing(cl, k);
    const int64_t cap = std::max<int64_t>(n, 1);
    if (bin_fraction == 0.0) {
        // automatic: bins of one cutoff unless that puts many atoms in a bin
        // (measured crossover ~20 atoms per cutoff^3), then half a cutoff
        double volume = 1.0;
        for (int k = 0; k < 3; ++k) {
            const double extent = cl.axis[k].periodic ? d[k] : (n > 0 ? (hi[k] - lo[k]) * d[k] : 0.0);
            volume *= std::max(extent, cutoff);
        }
        const double atoms_per_rc3 = static_cast<double>(n) / volume * cutoff * cutoff * cutoff;
        bin_fraction = atoms_per_rc3 > 20.0 ? 0.5 : 1.0;
    }
    double width = bin_fraction * cutoff;
    for (int attempt = 0;; ++attempt) {
        double total = 1.0;  // double: the product may overflow int64
        for (int k = 0; k < 3; ++k) {
            Axis &ax = cl.axis[k];
            if (ax.periodic) {
                // slightly fewer bins than d / width so that cutoff / bin
                // width never lands exactly on an integer (see search below)
                double nb = std::floor(d[k] / width * (1.0 - 4e-9));
                ax.nbins = static_cast<int64_t>(std::max(1.0, std::min(nb, 1e7)));
                ax.lo = 0.0;
                ax.inv_width = static_cast<double>(ax.nbins);
            } else {
                double extent = (n > 0) ? (hi[k] - lo[k]) : 0.0;
                double nb = std::floor(extent * d[k] / width * (1.0 - 4e-9));
                ax.nbins = static_cast<int64_t>(std::max(1.0, std::min(nb, 1e7)));
                ax.lo = (n > 0) ? lo[k] : 0.0;
                ax.inv_width = extent > 0 ? static_cast<double>(ax.nbins) / extent : 0.0;
            }
            total *= static_cast<double>(ax.nbins);
        }
        if (total <= static_cast<double>(cap) || attempt > 400) break;
        width *= 1.25;
    }
    cl.n_bins = 1;
    double images = 1.0;  // stencil size per atom
    for (int k = 0; k < 3; ++k) {
        Axis &ax = cl.axis[k];
        cl.n_bins *= ax.nbins;
        // perpendicular width of one bin, and the number of bins to search
        if (ax.inv_width > 0) {
            double bin_perp = d[k] / ax.inv_width;
            double s = std::ceil(cutoff / bin_perp + 1e-9);
            if (!(s < 1e9))
                fail("the cutoff is too large compared to the periodic cell (more than 1e9 "
                     "periodic images per atom)");
            ax.search = static_cast<int64_t>(s);
        } else {
            ax.search = 0;
        }
        if (!ax.periodic) ax.search = std::min<int64_t>(ax.search, ax.nbins - 1);
        images *= static_cast<double>(2 * ax.search + 1);
        if (images > 1e9)
            fail("the cutoff is too large compared to the periodic cell: every atom would "
                 "have more than 1e9 periodic images within the cutoff; use a smaller cutoff "
                 "or a larger (super)cell");
        if (ax.periodic) {
            const int64_t len = ax.nbins + 2 * ax.search;
            ax.wrapped.resize(len);
            ax.image.resize(len);
            for (int64_t v = -ax.search; v < ax.nbins + ax.search; ++v) {
                const int64_t q = floor_div(v, ax.nbins);
                ax.wrapped[v + ax.search] = v - q * ax.nbins;
                ax.image[v + ax.search] = q;
            }
        }
    }

    // bin of each atom, counting sort
    cl.atom_bin.assign(static_cast<size_t>(n), 0);
    cl.atom_bin3.assign(static_cast<size_t>(3 * n), 0);
    cl.bin_start.assign(static_cast<size_t>(cl.n_bins + 1), 0);
    const int64_t nbx = cl.axis[0].nbins, nby = cl.axis[1].nbins;
    for (int64_t a = 0; a < n; ++a) {
        int64_t b[3];
        for (int k = 0; k < 3; ++k) {
            const Axis &ax = cl.axis[k];
            double x = (frac[3 * a + k] - ax.lo) * ax.inv_width;
            int64_t bi = static_cast<int64_t>(x);  // x >= 0 (up to rounding)
            if (bi < 0) bi = 0;
            if (bi >= ax.nbins) bi = ax.nbins - 1;
            b[k] = bi;
            cl.atom_bin3[3 * a + k] = static_cast<int32_t>(bi);
        }
        int64_t lin = b[0] + nbx * (b[1] + nby * b[2]);
        cl.atom_bin[a] = lin;
        cl.bin_start[lin + 1]++;
    }
    for (int64_t b = 0; b < cl.n_bins; ++b) cl.bin_start[b + 1] += cl.bin_start[b];

    cl.X.resize(n);
    cl.Y.resize(n);
    cl.Z.resize(n);
    cl.NX.resize(n);
    cl.NY.resize(n);
    cl.NZ.resize(n);
    cl.orig.resize(n);
    cl.sorted_pos.resize(n);
    std::vector<int64_t> fill(cl.bin_start.begin(), cl.bin_start.end() - 1);
    const double (*H)[3] = cl.H;
    for (int64_t a = 0; a < n; ++a) {
        int64_t s = fill[cl.atom_bin[a]]++;
        const double *p = positions + 3 * a;
        double n0 = wrap[3 * a], n1 = wrap[3 * a + 1], n2 = wrap[3 * a + 2];
        // wrapped Cartesian position w = r - n @ H (n == 0 along
        // non-periodic directions)
        cl.X[s] = p[0] - (n0 * H[0][0] + n1 * H[1][0] + n2 * H[2][0]);
        cl.Y[s] = p[1] - (n0 * H[0][1] + n1 * H[1][1] + n2 * H[2][1]);
        cl.Z[s] = p[2] - (n0 * H[0][2] + n1 * H[1][2] + n2 * H[2][2]);
        cl.NX[s] = wrap[3 * a];
        cl.NY[s] = wrap[3 * a + 1];
        cl.NZ[s] = wrap[3 * a + 2];
        cl.orig[s] = a;
        cl.sorted_pos[a] = s;
    }
}

// Stencil of one bin (bx, by, bz): list of contiguous atom ranges (rows of
// bins along a with one periodic image) with their shifts.
void build_segments(const CellList &cl, int64_t bx, int64_t by, int64_t bz,
                    std::vector<Segment> &segs) {
    segs.clear();
    const Axis &ax = cl.axis[0], &ay = cl.axis[1], &az = cl.axis[2];
    const int64_t nbx = ax.nbins, nby = ay.nbins, nbz = az.nbins;
    const double (*H)[3] = cl.H;
    const int64_t *bin_start = cl.bin_start.data();
    int64_t z0 = bz - az.search, z1 = bz + az.search;
    if (!az.periodic) {
        z0 = std::max<int64_t>(z0, 0);
        z1 = std::min<int64_t>(z1, nbz - 1);
    }
    int64_t y0 = by - ay.search, y1 = by + ay.search;
    if (!ay.periodic) {
        y0 = std::max<int64_t>(y0, 0);
        y1 = std::min<int64_t>(y1, nby - 1);
    }
    int64_t x0 = bx - ax.search, x1 = bx + ax.search;
    if (!ax.periodic) {
        x0 = std::max<int64_t>(x0, 0);
        x1 = std::min<int64_t>(x1, nbx - 1);
    }
    for (int64_t z = z0; z <= z1; ++z) {
        int64_t vz = z, qz = 0;
        if (az.periodic) {
            vz = az.wrapped[z + az.search];
            qz = az.image[z + az.search];
        }
        for (int64_t y = y0; y <= y1; ++y) {
            int64_t vy = y, qy = 0;
            if (ay.periodic) {
                vy = ay.wrapped[y + ay.search];
                qy = ay.image[y + ay.search];
            }
            const int64_t row = nbx * (vy + nby * vz);
            // Cartesian shift of this row without the a component
            const double fy = double(qy), fz = double(qz);
            const double ryx = fy * H[1][0] + fz * H[2][0];
            const double ryy = fy * H[1][1] + fz * H[2][1];
            const double ryz = fy * H[1][2] + fz * H[2][2];
            int64_t v = x0;
            while (v <= x1) {
                int64_t lo_bin = v, qx = 0;
                if (ax.periodic) {
                    lo_bin = ax.wrapped[v + ax.search];
                    qx = ax.image[v + ax.search];
                }
                // extend the run while the image stays the same
                const int64_t vend = std::min(x1, v + (nbx - 1 - lo_bin));
                const int64_t hi_bin = lo_bin + (vend - v);
                v = vend + 1;
                Segment s;
                s.begin = bin_start[row + lo_bin];
                s.end = bin_start[row + hi_bin + 1];
                if (s.begin == s.end) continue;
                s.sx = static_cast<int32_t>(qx);
                s.sy = static_cast<int32_t>(qy);
                s.sz = static_cast<int32_t>(qz);
                const double fx = double(qx);
                s.tx = fx * H[0][0] + ryx;
                s.ty = fx * H[0][1] + ryy;
                s.tz = fx * H[0][2] + ryz;
                s.zero_shift = (qx == 0 && qy == 0 && qz == 0);
                segs.push_back(s);
            }
        }
    }
}

struct Worker {
    Output out;
    std::vector<Segment> segs;
};

inline int count_trailing_zeros(uint64_t x) {
#if defined(__GNUC__) || defined(__clang__)
    return __builtin_ctzll(x);
#else
    int n = 0;
    while (!(x & 1)) {
        x >>= 1;
        ++n;
    }
    return n;
#endif
}

// Bit t of the result is set when candidate t (0 <= t < n <= 64) lies within
// the cutoff of the centre c: |(x, y, z)[t] - c|^2 < rc2.
inline uint64_t hit_mask(const double *x, const double *y, const double *z, int n, double cx,
                         double cy, double cz, double rc2) {
    uint64_t mask = 0;
    int t = 0;
#if defined(__SSE2__)
    const __m128d vcx = _mm_set1_pd(cx), vcy = _mm_set1_pd(cy), vcz = _mm_set1_pd(cz);
    const __m128d vrc2 = _mm_set1_pd(rc2);
    for (; t + 2 <= n; t += 2) {
        const __m128d dx = _mm_sub_pd(_mm_loadu_pd(x + t), vcx);
        const __m128d dy = _mm_sub_pd(_mm_loadu_pd(y + t), vcy);
        const __m128d dz = _mm_sub_pd(_mm_loadu_pd(z + t), vcz);
        const __m128d r2 =
            _mm_add_pd(_mm_add_pd(_mm_mul_pd(dx, dx), _mm_mul_pd(dy, dy)), _mm_mul_pd(dz, dz));
        mask |= static_cast<uint64_t>(_mm_movemask_pd(_mm_cmplt_pd(r2, vrc2))) << t;
    }
#endif
    for (; t < n; ++t) {
        const double dx = x[t] - cx, dy = y[t] - cy, dz = z[t] - cz;
        mask |= static_cast<uint64_t>(dx * dx + dy * dy + dz * dz < rc2) << t;
    }
    return mask;
}

inline int popcount64(uint64_t x) {
#if defined(__GNUC__) || defined(__clang__)
    return __builtin_popcountll(x);
#else
    int n = 0;
    for (; x; x &= x - 1) ++n;
    return n;
#endif
}

// What process_range does with the hits.
enum class Mode {
    Count,  // only count them (multi-threaded counting pass)
    Write,  // append them to w.out
};

// Neighbours of centre atoms [i_begin, i_end) (original indices). Hot loop:
// per segment, blocks of <= 64 candidates give a hit bit mask (SIMD distance
// test, no branches), then only the hits are visited (count-trailing-zeros)
// and written. Returns the number of pairs found.
template <Mode M, bool WantVectors, bool WantDistances>
int64_t process_range_impl(const CellList &cl, int64_t i_begin, int64_t i_end, double cutoff,
                           Worker &w) {
    const double rc2 = cutoff * cutoff;
    const double *X = cl.X.data(), *Y = cl.Y.data(), *Z = cl.Z.data();
    const int32_t *NX = cl.NX.data(), *NY = cl.NY.data(), *NZ = cl.NZ.data();
    const int64_t *orig = cl.orig.data();
    Output &out = w.out;
    int64_t found = 0;
    int64_t last_bin = -1;
    for (int64_t i = i_begin; i < i_end; ++i) {
        const int64_t bin = cl.atom_bin[i];
        if (bin != last_bin) {
            const int32_t *b3 = cl.atom_bin3.data() + 3 * i;
            build_segments(cl, b3[0], b3[1], b3[2], w.segs);
            last_bin = bin;
        }
        const int64_t ii = cl.sorted_pos[i];
        const double xi = X[ii], yi = Y[ii], zi = Z[ii];
        const int32_t nxi = NX[ii], nyi = NY[ii], nzi = NZ[ii];
        for (const Segment &s : w.segs) {
            // centre moved by -t: r_ij = w_j - (w_i - t) = w_j + t @ H - w_i
            const double cx = xi - s.tx, cy = yi - s.ty, cz = zi - s.tz;
            const int32_t bsx = s.sx + nxi, bsy = s.sy + nyi, bsz = s.sz + nzi;
            for (int64_t base = s.begin; base < s.end; base += 64) {
                const int n = static_cast<int>(std::min<int64_t>(64, s.end - base));
                uint64_t mask = hit_mask(X + base, Y + base, Z + base, n, cx, cy, cz, rc2);
                if (s.zero_shift && ii >= base && ii < base + n)
                    mask &= ~(uint64_t(1) << (ii - base));  // no (i, i, 0)
                if (mask == 0) continue;
                if (M == Mode::Count) {
                    found += popcount64(mask);
                    continue;
                }
                out.reserve_more(out.owned ? 64 : popcount64(mask));
                int64_t k = out.size;
                int64_t *oi = out.i, *oj = out.j;
                int32_t *os = out.shifts;
                double *ov = out.vectors, *od = out.distances;
                do {
                    const int64_t jj = base + count_trailing_zeros(mask);
                    mask &= mask - 1;
                    oi[k] = i;
                    oj[k] = orig[jj];
                    os[3 * k + 0] = bsx - NX[jj];
                    os[3 * k + 1] = bsy - NY[jj];
                    os[3 * k + 2] = bsz - NZ[jj];
                    const double dx = X[jj] - cx, dy = Y[jj] - cy, dz = Z[jj] - cz;
                    if (WantVectors) {
                        ov[3 * k + 0] = dx;
                        ov[3 * k + 1] = dy;
                        ov[3 * k + 2] = dz;
                    }
                    if (WantDistances) od[k] = std::sqrt(dx * dx + dy * dy + dz * dz);
                    ++k;
                } while (mask != 0);
                found += k - out.size;
                out.size = k;
            }
        }
    }
    return found;
}

template <Mode M>
int64_t process_range(const CellList &cl, int64_t i_begin, int64_t i_end, double cutoff,
                      Worker &w) {
    const bool v = w.out.want_vectors, d = w.out.want_distances;
    if (M == Mode::Count) return process_range_impl<M, false, false>(cl, i_begin, i_end, cutoff, w);
    if (v && d) return process_range_impl<M, true, true>(cl, i_begin, i_end, cutoff, w);
    if (v) return process_range_impl<M, true, false>(cl, i_begin, i_end, cutoff, w);
    if (d) return process_range_impl<M, false, true>(cl, i_begin, i_end, cutoff, w);
    return process_range_impl<M, false, false>(cl, i_begin, i_end, cutoff, w);
}

// Rough number of pairs expected for n_centres centre atoms: used for the
// initial allocation (too large is harmless: untouched pages cost nothing;
// too small triggers a realloc).
int64_t estimate_pairs(const CellList &cl, int64_t n_atoms, int64_t n_centres, double cutoff) {
    if (n_atoms <= 1 && !(cl.axis[0].periodic || cl.axis[1].periodic || cl.axis[2].periodic))
        return 16;
    double volume = 1.0;
    for (int k = 0; k < 3; ++k) {
        double d = plane_spacing(cl, k);
        const Axis &ax = cl.axis[k];
        double extent = ax.periodic ? d : (ax.inv_width > 0 ? static_cast<double>(ax.nbins) / ax.inv_width * d : 0.0);
        volume *= std::max(extent, cutoff);
    }
    double density = static_cast<double>(n_atoms) / volume;
    const double pi = 3.14159265358979323846;
    double sphere = 4.0 / 3.0 * pi * cutoff * cutoff * cutoff;
    double est = 1.15 * static_cast<double>(n_centres) * density * sphere + 1024.0;
    return static_cast<int64_t>(std::min(est, 4e9));
}

// Run fn(thread_index) on n_threads std::threads; rethrow the first error.
template <class F>
void run_parallel(int n_threads, F fn) {
    std::vector<std::exception_ptr> errors(static_cast<size_t>(n_threads));
    std::vector<std::thread> threads;
    threads.reserve(static_cast<size_t>(n_threads));
    for (int t = 0; t < n_threads; ++t) {
        threads.emplace_back([&, t]() {
            try {
                fn(t);
            } catch (...) {
                errors[t] = std::current_exception();
            }
        });
    }
    for (auto &th : threads) th.join();
    for (auto &e : errors)
        if (e) std::rethrow_exception(e);
}

void compute(const double *positions, int64_t n, const double *cell, const int *pbc,
             const mlip_neighbor_options &opt, mlip_neighbor_list *result) {
    if (n < 0) fail("n_atoms must be >= 0");
    if (n > 0 && positions == nullptr) fail("positions is NULL");
    if (cell == nullptr) fail("cell is NULL");
    if (pbc == nullptr) fail("pbc is NULL");
    const double cutoff = opt.cutoff;
    if (!(std::isfinite(cutoff) && cutoff > 0)) fail("cutoff must be finite and > 0");
    const double bin_fraction = opt.bin_fraction;
    if (!(bin_fraction == 0.0 || (bin_fraction > 0.0 && bin_fraction <= 1.0)))
        fail("bin_fraction must be in (0, 1] (or 0 for automatic)");
    for (int64_t a = 0; a < 3 * n; ++a)
        if (!std::isfinite(positions[a])) fail("positions contain NaN or infinite values");

    CellList cl;
    build_effective_cell(cl, cell, pbc);
    build_cell_list(cl, positions, n, cutoff, bin_fraction);

    // threads only pay off with enough centre atoms each
    const int n_threads = static_cast<int>(
        std::max<int64_t>(1, std::min<int64_t>(opt.num_threads, n / 2048)));

    Output all;
    all.want_vectors = opt.return_vectors != 0;
    all.want_distances = opt.return_distances != 0;

    if (n_threads == 1) {
        // single pass, growing output (realloc: mremap for large blocks)
        Worker w;
        w.out.want_vectors = all.want_vectors;
        w.out.want_distances = all.want_distances;
        w.out.resize_storage(estimate_pairs(cl, n, n, cutoff));
        process_range<Mode::Write>(cl, 0, n, cutoff, w);
        w.out.resize_storage(w.out.size);  // shrink: no copy for large blocks
        std::swap(all.i, w.out.i);
        std::swap(all.j, w.out.j);
        std::swap(all.shifts, w.out.shifts);
        std::swap(all.vectors, w.out.vectors);
        std::swap(all.distances, w.out.distances);
        all.size = all.capacity = w.out.size;
    } else {
        // counting pass, exact allocation, filling pass writing in place:
        // no concatenation copy. Chunks of centre atoms, dynamic schedule.
        const int64_t n_chunks = std::min<int64_t>(n, int64_t(8) * n_threads);
        std::vector<int64_t> counts(static_cast<size_t>(n_chunks + 1), 0);
        auto chunk_begin = [&](int64_t c) { return n * c / n_chunks; };
        std::atomic<int64_t> next{0};
        std::vector<Worker> workers(static_cast<size_t>(n_threads));
        run_parallel(n_threads, [&](int t) {
            for (int64_t c; (c = next.fetch_add(1)) < n_chunks;)
                counts[c + 1] = process_range<Mode::Count>(cl, chunk_begin(c), chunk_begin(c + 1),
                                                           cutoff, workers[t]);
        });
        for (int64_t c = 0; c < n_chunks; ++c) counts[c + 1] += counts[c];
        all.resize_storage(counts[n_chunks]);
        next = 0;
        run_parallel(n_threads, [&](int t) {
            Worker &w = workers[t];
            for (int64_t c; (c = next.fetch_add(1)) < n_chunks;) {
                w.out.view_of(all, counts[c], counts[c + 1] - counts[c]);
                process_range<Mode::Write>(cl, chunk_begin(c), chunk_begin(c + 1), cutoff, w);
                if (w.out.size != w.out.capacity)
                    throw std::logic_error("neighbour count changed between passes");
            }
        });
        all.size = counts[n_chunks];
    }

    result->n_pairs = all.size;
    result->i = all.i;
    result->j = all.j;
    result->shifts = all.shifts;
    result->vectors = all.vectors;
    result->distances = all.distances;
    // ownership transferred to the caller
    all.i = all.j = nullptr;
    all.shifts = nullptr;
    all.vectors = all.distances = nullptr;
}

}  // namespace

extern "C" {

void mlip_free(void *ptr) { std::free(ptr); }

mlip_neighbor_options mlip_neighbor_options_default(void) {
    mlip_neighbor_options o;
    o.cutoff = 0.0;
    o.return_vectors = 1;
    o.return_distances = 0;
    o.num_threads = 1;
    o.bin_fraction = 0.0;
    return o;
}

int mlip_neighbors_compute(const double *positions, int64_t n_atoms, const double *cell,
                           const int *pbc, const mlip_neighbor_options *options,
                           mlip_neighbor_list *result, char *errbuf, size_t errbuf_len) {
    if (errbuf != nullptr && errbuf_len > 0) errbuf[0] = '\0';
    if (result == nullptr) {
        write_error(errbuf, errbuf_len, "result is NULL");
        return MLIP_ERR_INVALID_ARGUMENT;
    }
    std::memset(result, 0, sizeof(*result));
    if (options == nullptr) {
        write_error(errbuf, errbuf_len, "options is NULL");
        return MLIP_ERR_INVALID_ARGUMENT;
    }
    try {
        compute(positions, n_atoms, cell, pbc, *options, result);
        return MLIP_OK;
    } catch (const MlipError &e) {
        mlip_neighbor_list_free(result);
        write_error(errbuf, errbuf_len, e.message);
        return e.code;
    } catch (const std::bad_alloc &) {
        mlip_neighbor_list_free(result);
        write_error(errbuf, errbuf_len, "out of memory while building the neighbour list");
        return MLIP_ERR_OUT_OF_MEMORY;
    } catch (const std::exception &e) {
        mlip_neighbor_list_free(result);
        write_error(errbuf, errbuf_len, std::string("internal error: ") + e.what());
        return MLIP_ERR_INTERNAL;
    } catch (...) {
        mlip_neighbor_list_free(result);
        write_error(errbuf, errbuf_len, "internal error (unknown exception)");
        return MLIP_ERR_INTERNAL;
    }
}

void mlip_neighbor_list_free(mlip_neighbor_list *list) {
    if (list == nullptr) return;
    std::free(list->i);
    std::free(list->j);
    std::free(list->shifts);
    std::free(list->vectors);
    std::free(list->distances);
    std::memset(list, 0, sizeof(*list));
}

}  // extern "C"
