// Fused forward and backward pass of the built-in model's power-spectrum descriptor
// (mlip_md.model.descriptor.PowerSpectrum); see section 5 of mlip_md.h for the definitions.
//
// Forward: one pass over the edges accumulates the density c_i[q][lm] += R'_q Y_lm, then each
// centre's power spectrum is formed from its density block. Backward: per centre, the feature
// gradient is pulled back to the density (dF/dc, a few hundred numbers), then each of the
// centre's edges gets
//
//   dF/dv = u sum_q A_q R'_q'(r) + (G - (u . G) u) / r,
//   A_q = sum_lm dF/dc[q][lm] Y_lm,  B_lm = sum_q dF/dc[q][lm] R'_q,  G = sum_lm B_lm grad_u Y_lm
//
// where R'_q is the edge's radial row of channel q: R_n in row s n_max + n for the edge's
// species s (version 1, one-hot), or sum_n W[s][n][q] R_n (version 2, species-compressed; the
// edges of a centre are grouped by species so the mixing runs over contiguous lanes).
//
// (u = v / r; grad_u Y is the gradient of Y's polynomial in (x, y, z), projected onto the
// sphere by the (I - u u^T) / r Jacobian of u(v)). The basis of an edge is computed once and
// serves every gradient row.
#include "mlip_md.h"

#include "errors.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <new>
#include <numeric>
#include <type_traits>
#include <vector>

namespace {

using mlip_detail::fail;

constexpr int kMaxL = MLIP_POWER_SPECTRUM_MAX_L;
constexpr int kMaxLM = (kMaxL + 1) * (kMaxL + 1);
constexpr int kMaxRadial = 64;
// Register blocking: chunks of kChunk<T> lanes (32 bytes) times kBlock rows give 8 independent
// accumulator vectors, enough to hide the FMA latency. Lanes are padded to a multiple of kLanePad.
#ifndef MLIP_PS_VECTOR_BYTES
#define MLIP_PS_VECTOR_BYTES 32
#endif
template <typename T>
constexpr int kChunk = MLIP_PS_VECTOR_BYTES / int(sizeof(T));
constexpr int kBlock = 4;
constexpr int kLanePad = MLIP_PS_VECTOR_BYTES / 4;    // a multiple of kChunk<float> and kChunk<double>

constexpr int kMaxChannels = MLIP_POWER_SPECTRUM_MAX_CHANNELS;

struct Layout {
    int S, N, L, L2, Q;
    int64_t D;
    double cutoff, width;
    const double *W;    // radial mixing [S][N][Q] (version 2), or nullptr: one-hot species (version 1)
};

// The layout of valid parameters, or MLIP_ERR_INVALID_ARGUMENT with a message naming the bad one.
int make_layout(const mlip_power_spectrum_params *p, Layout &out, char *errbuf, size_t errbuf_len) {
    if (p == nullptr) return fail(errbuf, errbuf_len, "power-spectrum parameters are NULL");
    if (p->n_species < 1 || p->n_max < 1 || p->n_max > kMaxRadial || p->l_max < 0 || p->l_max > kMaxL ||
        !(p->cutoff > 0.0) || !std::isfinite(p->cutoff) || !(p->switch_width > 0.0) ||
        !(p->switch_width <= p->cutoff))
        return fail(errbuf, errbuf_len,
                    "invalid power-spectrum parameters n_species=%d n_max=%d l_max=%d cutoff=%g switch_width=%g "
                    "(need n_species >= 1, 1 <= n_max <= %d, 0 <= l_max <= %d, cutoff > 0, "
                    "0 < switch_width <= cutoff)",
                    p->n_species, p->n_max, p->l_max, p->cutoff, p->switch_width, kMaxRadial, kMaxL);
    const int64_t one_hot = int64_t(p->n_species) * p->n_max;
    if (p->radial_mixing == nullptr) {
        if (p->n_channels != 0 && p->n_channels != one_hot)
            return fail(errbuf, errbuf_len,
                        "n_channels=%d without a radial_mixing matrix: pass the matrix W [n_species][n_max]"
                        "[n_channels] of the species-compressed descriptor, or n_channels 0 for one-hot species",
                        p->n_channels);
        if (one_hot > kMaxChannels * int64_t(kMaxChannels))
            return fail(errbuf, errbuf_len, "n_species * n_max = %lld channels is too many", (long long)one_hot);
        out.Q = int(one_hot);
        out.W = nullptr;
    } else {
        if (p->n_channels < 1 || p->n_channels > kMaxChannels)
            return fail(errbuf, errbuf_len,
                        "n_channels=%d: the species-compressed descriptor needs 1 <= n_channels <= %d "
                        "(the last dimension of radial_mixing)", p->n_channels, kMaxChannels);
        const int64_t size = one_hot * p->n_channels;
        for (int64_t k = 0; k < size; ++k)
            if (!std::isfinite(p->radial_mixing[k])) {
                const int64_t q = k % p->n_channels, n = k / p->n_channels % p->n_max,
                              s = k / (int64_t(p->n_channels) * p->n_max);
                return fail(errbuf, errbuf_len,
                            "radial_mixing[%lld][%lld][%lld] is not finite (%g): the model file's mixing matrix is "
                            "corrupt; re-export or re-train the model",
                            (long long)s, (long long)n, (long long)q, p->radial_mixing[k]);
            }
        out.Q = p->n_channels;
        out.W = p->radial_mixing;
    }
    out.S = p->n_species;
    out.N = p->n_max;
    out.L = p->l_max;
    out.L2 = (p->l_max + 1) * (p->l_max + 1);
    out.D = int64_t(out.Q) + int64_t(out.Q) * (out.Q + 1) / 2 * (out.L + 1);
    out.cutoff = p->cutoff;
    out.width = p->switch_width;
    return MLIP_OK;
}

// Normalisation of Y_lm (orthonormal, sqrt 2 for m != 0), column order l, m = -l..l.
struct Norms {
    double value[kMaxLM];
    Norms() {
        int k = 0;
        for (int l = 0; l <= kMaxL; ++l)
            for (int m = -l; m <= l; ++m) {
                const int am = m < 0 ? -m : m;
                double ratio = 1.0;    // (l - am)! / (l + am)!
                for (int f = l - am + 1; f <= l + am; ++f) ratio /= f;
                double n = std::sqrt((2 * l + 1) / (4.0 * M_PI) * ratio);
                value[k++] = m != 0 ? n * std::sqrt(2.0) : n;
            }
    }
};
const Norms kNorms;

// Recurrence constants of d^m P_l / dz^m (mlip_md.model.spherical):
//   P[m][m] = (2m - 1)!!,  P[m+1][m] = (2m + 1) z P[m][m],
//   P[l][m] = a z P[l-1][m] - b P[l-2][m],  a = (2l - 1) / (l - m),  b = (l + m - 1) / (l - m).
struct LegendreTable {
    double diagonal[kMaxL + 1];
    double a[kMaxL + 1][kMaxL + 1], b[kMaxL + 1][kMaxL + 1];
    LegendreTable() {
        for (int m = 0; m <= kMaxL; ++m) {
            double df = 1.0;
            for (int f = 2 * m - 1; f > 1; f -= 2) df *= f;
            diagonal[m] = df;
        }
        for (int l = 0; l <= kMaxL; ++l)
            for (int m = 0; m <= kMaxL; ++m) {
                a[l][m] = m < l ? double(2 * l - 1) / (l - m) : 0.0;
                b[l][m] = m < l ? double(l + m - 1) / (l - m) : 0.0;
            }
    }
};
const LegendreTable kLegendre;

// Real harmonics of a batch of unit vectors (lanes) by the recurrences of
// mlip_md.model.spherical: sectoral (x + i y)^m, then d^m P_l / dz^m in z. Gradients of the
// polynomials: d(x + i y)^m / dx = m (x + i y)^(m-1), d/dy = i m (x + i y)^(m-1), and d/dz of
// d^m P_l/dz^m is d^(m+1) P_l/dz^(m+1). Rows of `stride` lanes: Y [L2], gY [3][L2];
// `scratch` holds (L + 1) (L + 6) rows. Every inner loop runs over lanes and vectorises.
template <typename T, bool Gradient>
void harmonics(int L, int64_t lanes, int64_t stride, const T *x, const T *y, const T *z, T *Y, T *gY, T *scratch) {
    const int L2 = (L + 1) * (L + 1);
    T *C = scratch, *Sn = C + (L + 1) * stride;          // [L + 1] rows each
    T *P = Sn + (L + 1) * stride;                         // row (l, m) at (l (l + 1) / 2 + m), m <= l + 1
    auto prow = [&](int l, int m) { return P + int64_t(l * (l + 3) / 2 + m) * stride; };
    for (int64_t k = 0; k < lanes; ++k) {
        C[k] = T(1);
        Sn[k] = T(0);
    }
    for (int m = 1; m <= L; ++m) {
        const T *c0 = C + (m - 1) * stride, *s0 = Sn + (m - 1) * stride;
        T *c1 = C + m * stride, *s1 = Sn + m * stride;
#pragma omp simd
        for (int64_t k = 0; k < lanes; ++k) {
            c1[k] = x[k] * c0[k] - y[k] * s0[k];
            s1[k] = x[k] * s0[k] + y[k] * c0[k];
        }
    }
    for (int l = 0; l <= L; ++l) {
        for (int m = 0; m <= l; ++m) {
            T *out = prow(l, m);
            if (m == l) {
                const T d = T(kLegendre.diagonal[m]);
                for (int64_t k = 0; k < lanes; ++k) out[k] = d;
            } else if (m == l - 1) {
                const T *p1 = prow(l - 1, m);
                const T f = T(2 * m + 1);
#pragma omp simd
                for (int64_t k = 0; k < lanes; ++k) out[k] = z[k] * p1[k] * f;
            } else {
                const T *p1 = prow(l - 1, m), *p2 = prow(l - 2, m);
                const T a = T(kLegendre.a[l][m]), b = T(kLegendre.b[l][m]);
#pragma omp simd
                for (int64_t k = 0; k < lanes; ++k) out[k] = a * z[k] * p1[k] - b * p2[k];
            }
        }
        T *top = prow(l, l + 1);
        for (int64_t k = 0; k < lanes; ++k) top[k] = T(0);
    }
    int row = 0;
    for (int l = 0; l <= L; ++l) {
        for (int m = -l; m <= l; ++m, ++row) {
            const int am = m < 0 ? -m : m;
            const T n = T(kNorms.value[row]);
            const T *p = prow(l, am), *dp = prow(l, am + 1);
            T *y_out = Y + row * stride;
            if (m == 0) {
#pragma omp simd
                for (int64_t k = 0; k < lanes; ++k) y_out[k] = n * p[k];
                if (Gradient) {
                    T *gx = gY + row * stride, *gy = gx + L2 * stride, *gz = gy + L2 * stride;
#pragma omp simd
                    for (int64_t k = 0; k < lanes; ++k) {
                        gx[k] = T(0);
                        gy[k] = T(0);
                        gz[k] = n * dp[k];
                    }
                }
                continue;
            }
            // xy = Re or Im (x + i y)^|m|, and its x / y derivatives
            const T *xy = (m < 0 ? Sn : C) + am * stride;
            const T *cm = C + (am - 1) * stride, *sm = Sn + (am - 1) * stride;
            const T fm = T(am);
#pragma omp simd
            for (int64_t k = 0; k < lanes; ++k) y_out[k] = n * p[k] * xy[k];
            if (Gradient) {
                T *gx = gY + row * stride, *gy = gx + L2 * stride, *gz = gy + L2 * stride;
                if (m < 0) {
#pragma omp simd
                    for (int64_t k = 0; k < lanes; ++k) {
                        gx[k] = n * p[k] * (fm * sm[k]);
                        gy[k] = n * p[k] * (fm * cm[k]);
                        gz[k] = n * dp[k] * xy[k];
                    }
                } else {
#pragma omp simd
                    for (int64_t k = 0; k < lanes; ++k) {
                        gx[k] = n * p[k] * (fm * cm[k]);
                        gy[k] = n * p[k] * (-fm * sm[k]);
                        gz[k] = n * dp[k] * xy[k];
                    }
                }
            }
        }
    }
}

// Checks shared by forward and backward; fills `sorted` (true when the centres are
// non-decreasing, so each centre's edges form one run).
template <typename T>
int check_inputs(const Layout &ly, int64_t n_local, int64_t n_all, const int64_t *species_index, int64_t n_edges,
                 const int64_t *edge_index, const T *vectors, bool &sorted, char *errbuf, size_t errbuf_len) {
    if (n_local < 0 || n_all < n_local)
        return fail(errbuf, errbuf_len, "need 0 <= n_local <= n_all, got n_local=%lld n_all=%lld",
                    (long long)n_local, (long long)n_all);
    if (n_edges < 0) return fail(errbuf, errbuf_len, "n_edges must be >= 0");
    if (n_all > 0 && species_index == nullptr) return fail(errbuf, errbuf_len, "species_index is NULL");
    if (n_edges > 0 && (edge_index == nullptr || vectors == nullptr))
        return fail(errbuf, errbuf_len, "edge_index or edge_vectors is NULL");
    for (int64_t a = 0; a < n_all; ++a)
        if (species_index[a] < 0 || species_index[a] >= ly.S)
            return fail(errbuf, errbuf_len, "atom %lld has species index %lld, outside 0..%d", (long long)a,
                        (long long)species_index[a], ly.S - 1);
    sorted = true;
    for (int64_t e = 0; e < n_edges; ++e) {
        const int64_t i = edge_index[e], j = edge_index[n_edges + e];
        if (i < 0 || i >= n_local)
            return fail(errbuf, errbuf_len, "edge %lld: centre %lld is not a local atom (0..%lld)", (long long)e,
                        (long long)i, (long long)n_local - 1);
        if (j < 0 || j >= n_all)
            return fail(errbuf, errbuf_len, "edge %lld: neighbour %lld is outside 0..%lld", (long long)e,
                        (long long)j, (long long)n_all - 1);
        const T *v = vectors + 3 * e;
        const double r2 = double(v[0]) * v[0] + double(v[1]) * v[1] + double(v[2]) * v[2];
        if (!std::isfinite(r2))
            return fail(errbuf, errbuf_len, "edge %lld (atoms %lld-%lld): edge vector is not finite", (long long)e,
                        (long long)i, (long long)j);
        if (!(r2 > 0.0))
            return fail(errbuf, errbuf_len,
                        "edge %lld: atoms %lld and %lld sit on top of each other (zero edge vector)", (long long)e,
                        (long long)i, (long long)j);
        if (e > 0 && i < edge_index[e - 1]) sorted = false;
    }
    return MLIP_OK;
}

// Edges grouped by centre: identity when sorted, else a stable counting sort.
struct EdgeOrder {
    std::vector<int64_t> perm;
    int64_t operator[](int64_t k) const { return perm.empty() ? k : perm[k]; }
    void build(bool sorted, int64_t n_local, int64_t n_edges, const int64_t *centres) {
        if (sorted) return;
        std::vector<int64_t> start(n_local + 1, 0);
        for (int64_t e = 0; e < n_edges; ++e) ++start[centres[e] + 1];
        std::partial_sum(start.begin(), start.end(), start.begin());
        perm.resize(n_edges);
        for (int64_t e = 0; e < n_edges; ++e) perm[start[centres[e]]++] = e;
    }
};

// Per-centre power spectrum and its pull-back, through the transposed density ct[lm][q], so
// the inner loops run over channels q (contiguous) and vectorise.
template <typename T>
struct PairWork {
    std::vector<T> ct, dct, gram;
    void reserve(const Layout &ly) {
        if (gram.empty()) {
            ct.assign(size_t(ly.L2) * ly.Q, T(0));
            dct.assign(size_t(ly.L2) * ly.Q, T(0));
            gram.assign(size_t(ly.Q) * ly.Q, T(0));
        }
    }
    void transpose_in(const Layout &ly, const T *c) {
        for (int q = 0; q < ly.Q; ++q)
            for (int lm = 0; lm < ly.L2; ++lm) ct[size_t(lm) * ly.Q + q] = c[q * ly.L2 + lm];
    }
};

// f = (c[q][0] for q, then per l: (2l + 1)^-1/2 sum_m c[q][lm] c[p][lm] for q <= p).
template <typename T>
void features_of_centre(const Layout &ly, const T *c, T *f, PairWork<T> &w) {
    const int Q = ly.Q;
    w.transpose_in(ly, c);
    for (int q = 0; q < Q; ++q) f[q] = c[q * ly.L2];
    T *out = f + Q, *gram = w.gram.data();
    for (int l = 0; l <= ly.L; ++l) {
        std::fill(gram, gram + Q * Q, T(0));
        for (int lm = l * l; lm < (l + 1) * (l + 1); ++lm) {
            const T *col = w.ct.data() + size_t(lm) * Q;
            for (int q = 0; q < Q; ++q) {
                const T a = col[q];
                T *row = gram + q * Q;
#pragma omp simd
                for (int p = 0; p < Q; ++p) row[p] += a * col[p];
            }
        }
        const T weight = T(1.0 / std::sqrt(2.0 * l + 1.0));
        for (int q = 0; q < Q; ++q)
            for (int p = q; p < Q; ++p) *out++ = gram[q * Q + p] * weight;
    }
}

// dF/dc [Q][L2] of one centre from dF/dfeatures [D]: per l the symmetric matrix
// S[q][p] = w_l g[q p] (doubled on the diagonal) acting on the density, dc = S c.
template <typename T>
void density_grad_of_centre(const Layout &ly, const T *c, const T *g, T *dc, PairWork<T> &w) {
    const int Q = ly.Q, L2 = ly.L2;
    w.transpose_in(ly, c);
    T *sym = w.gram.data(), *dct = w.dct.data();
    std::fill(dct, dct + size_t(L2) * Q, T(0));
    const T *gp = g + Q;
    for (int l = 0; l <= ly.L; ++l) {
        const T weight = T(1.0 / std::sqrt(2.0 * l + 1.0));
        for (int q = 0; q < Q; ++q) {
            sym[q * Q + q] = T(2) * weight * *gp++;
            for (int p = q + 1; p < Q; ++p) sym[q * Q + p] = sym[p * Q + q] = weight * *gp++;
        }
        for (int lm = l * l; lm < (l + 1) * (l + 1); ++lm) {
            const T *col = w.ct.data() + size_t(lm) * Q;
            T *out = dct + size_t(lm) * Q;
            for (int p = 0; p < Q; ++p) {
                const T a = col[p];
                const T *row = sym + p * Q;
#pragma omp simd
                for (int q = 0; q < Q; ++q) out[q] += row[q] * a;
            }
        }
    }
    for (int q = 0; q < Q; ++q) {
        for (int lm = 0; lm < L2; ++lm) dc[q * L2 + lm] = dct[size_t(lm) * Q + q];
        dc[q * L2] += g[q];
    }
}

// Calls f(std::integral_constant<int, L>) for the runtime l_max, so the per-edge loops see
// L2 = (L + 1)^2 as a constant.
template <typename F>
void with_l_max(int l_max, F &&f) {
    switch (l_max) {
        case 0: f(std::integral_constant<int, 0>{}); break;
        case 1: f(std::integral_constant<int, 1>{}); break;
        case 2: f(std::integral_constant<int, 2>{}); break;
        case 3: f(std::integral_constant<int, 3>{}); break;
        case 4: f(std::integral_constant<int, 4>{}); break;
        case 5: f(std::integral_constant<int, 5>{}); break;
        case 6: f(std::integral_constant<int, 6>{}); break;
        case 7: f(std::integral_constant<int, 7>{}); break;
        default: f(std::integral_constant<int, 8>{}); break;
    }
}

// sin and cos of theta in [0, pi] by Taylor series around pi / 2 (|phi| <= pi / 2, terms to
// phi^23: truncation < 1e-18), so a loop over lanes vectorises (libm's sincos does not).
template <typename T>
inline __attribute__((always_inline)) void sin_cos_half_turn(T theta, T &s, T &c) {
    // (2k)! and (2k + 1)! for k = 11 .. 0 (Horner from the highest order down)
    constexpr double even_factorial[] = {1124000727777607680000.0, 2432902008176640000.0, 6402373705728000.0,
                                         20922789888000.0, 87178291200.0, 479001600.0, 3628800.0, 40320.0, 720.0,
                                         24.0, 2.0, 1.0};
    constexpr double odd_factorial[] = {25852016738884976640000.0, 51090942171709440000.0, 121645100408832000.0,
                                        355687428096000.0, 1307674368000.0, 6227020800.0, 39916800.0, 362880.0,
                                        5040.0, 120.0, 6.0, 1.0};
    const T phi = theta - T(M_PI / 2), p2 = phi * phi;
    T cos_phi = T(0), sin_phi = T(0);
    // float needs terms to phi^15 only (truncation < 1e-10)
    constexpr int first = sizeof(T) == sizeof(float) ? 4 : 0;
    for (int i = first; i < 12; ++i) {
        const double sign = ((11 - i) % 2 == 0) ? 1.0 : -1.0;    // (-1)^k, k = 11 - i
        cos_phi = cos_phi * p2 + T(sign / even_factorial[i]);
        sin_phi = sin_phi * p2 + T(sign / odd_factorial[i]);
    }
    s = cos_phi;           // sin(theta) = cos(phi)
    c = -sin_phi * phi;    // cos(theta) = -sin(phi)
}

// The basis of one centre's edges in structure-of-arrays form, lanes = edges, padded to a
// multiple of kLanePad with lanes beyond the cutoff (whose basis functions are exactly 0):
//   u [3][lanes] unit vectors, r [lanes] (Angstrom),
//   R, dR [Q][lanes]: the edge's radial rows R'_q(r) and their r-derivatives: R_n, dR_n/dr in
//     the row q = s N + n of the edge's species s and 0 in the others (one-hot), or
//     sum_n W[s][n][q] R_n (mixing; then the lanes are grouped by species: run_start[s] ..
//     run_start[s + 1], the padding lanes in the last run),
//   Y [L2][lanes], gY [3][L2][lanes]: harmonics and their polynomial gradients.
template <typename T>
struct CentreBasis {
    int64_t lanes = 0, capacity = 0;
    std::vector<T> u, r, sin1, cos1, R, dR, Rn, dRn, Y, gY, work, harmonic_scratch;
    std::vector<int64_t> species, edges, lane_of, run_start;
    std::vector<T> mixing;    // W [S][N][Q] in precision T (mixing only)
    void reserve(const Layout &ly, int64_t n) {
        if (ly.W != nullptr && mixing.empty()) {
            mixing.assign(ly.W, ly.W + int64_t(ly.S) * ly.N * ly.Q);
            run_start.assign(ly.S + 1, 0);
        }
        const int64_t c = (n + 15) / 16 * 16;
        if (c <= capacity) return;
        capacity = c;
        for (std::vector<T> *v : {&r, &sin1, &cos1}) v->assign(c, T(0));
        u.assign(3 * c, T(0));
        R.assign(int64_t(ly.Q) * c, T(0));
        dR.assign(int64_t(ly.Q) * c, T(0));
        Rn.assign(int64_t(ly.N) * c + kChunk<T>, T(0));     // + slack for mix_chunk's last loads
        dRn.assign(int64_t(ly.N) * c + kChunk<T>, T(0));
        Y.assign(int64_t(ly.L2) * c, T(0));
        gY.assign(3 * int64_t(ly.L2) * c, T(0));
        work.assign(7 * c, T(0));
        harmonic_scratch.assign(int64_t(ly.L + 1) * (ly.L + 6) * c, T(0));
        species.assign(c, 0);
        edges.assign(c, 0);
        lane_of.assign(c, 0);
    }
};

// R[q][k0 + j] = sum_n W[n][q] Rn[n][k0 + j] (and dR from dRn) for Rows rows q0.. and the first
// m <= kChunk<T> lanes j of the chunk at k0 (the chunk's loads may run past them: Rn and dRn
// carry kChunk<T> lanes of slack).
template <typename T, bool Gradient, int Rows>
inline __attribute__((always_inline)) void mix_chunk(const T *Ws, int N, int Q, int q0, const T *Rn, const T *dRn,
                                                     int64_t c, int64_t k0, int m, T *R, T *dR) {
    constexpr int W = kChunk<T>;
    T acc[Rows][W] = {}, dacc[Rows][W] = {};
    for (int nn = 0; nn < N; ++nn) {
        const T *x = Rn + int64_t(nn) * c + k0, *dx = dRn + int64_t(nn) * c + k0;
        for (int r = 0; r < Rows; ++r) {
            const T w = Ws[nn * Q + q0 + r];
#pragma omp simd
            for (int j = 0; j < W; ++j) {
                acc[r][j] += w * x[j];
                if (Gradient) dacc[r][j] += w * dx[j];
            }
        }
    }
    for (int r = 0; r < Rows; ++r) {
        T *out = R + int64_t(q0 + r) * c + k0, *dout = dR + int64_t(q0 + r) * c + k0;
        if (m == W) {
#pragma omp simd
            for (int j = 0; j < W; ++j) {
                out[j] = acc[r][j];
                if (Gradient) dout[j] = dacc[r][j];
            }
        } else {
            for (int j = 0; j < m; ++j) {
                out[j] = acc[r][j];
                if (Gradient) dout[j] = dacc[r][j];
            }
        }
    }
}

// R[q][k] = sum_n W[s][n][q] Rn[n][k] (and dR from dRn) on the lanes [a, b) of species s
// (Ws = W[s]), in chunks of kChunk<T> lanes times kBlock rows q.
template <typename T, bool Gradient>
void mix_radial_run(const Layout &ly, const T *Ws, int64_t a, int64_t b, int64_t c, const T *Rn, const T *dRn,
                    T *R, T *dR) {
    constexpr int W = kChunk<T>;
    const int N = ly.N, Q = ly.Q;
    for (int64_t k0 = a; k0 < b; k0 += W) {
        const int m = int(std::min<int64_t>(W, b - k0));
        int q0 = 0;
        for (; q0 + kBlock <= Q; q0 += kBlock) mix_chunk<T, Gradient, kBlock>(Ws, N, Q, q0, Rn, dRn, c, k0, m, R, dR);
        for (; q0 < Q; ++q0) mix_chunk<T, Gradient, 1>(Ws, N, Q, q0, Rn, dRn, c, k0, m, R, dR);
    }
}

// Fill `b` with the basis of the edges order[first..last) (all of one centre).
template <typename T, int L, bool Gradient>
void centre_basis(const Layout &ly, const int64_t *species_index, const int64_t *neighbours, const T *vectors,
                  const EdgeOrder &order, int64_t first, int64_t last, CentreBasis<T> &b) {
    const int N = ly.N;
    const int64_t n = last - first;
    b.reserve(ly, n);
    const int64_t lanes = (n + kLanePad - 1) / kLanePad * kLanePad;
    b.lanes = lanes;
    const int64_t c = b.capacity;
    const bool mixing = ly.W != nullptr;
    if (mixing) {    // lane of each edge: grouped by neighbour species (a stable counting sort)
        int64_t *start = b.run_start.data();
        std::fill(start, start + ly.S + 1, 0);
        for (int64_t k = 0; k < n; ++k) ++start[species_index[neighbours[order[first + k]]] + 1];
        for (int s = 0; s < ly.S; ++s) start[s + 1] += start[s];
        for (int64_t k = 0; k < n; ++k) b.lane_of[k] = start[species_index[neighbours[order[first + k]]]]++;
        for (int s = ly.S; s > 0; --s) start[s] = start[s - 1];    // back to the runs' starts
        start[0] = 0;
    }
    T *ux = b.u.data(), *uy = ux + c, *uz = uy + c;
    for (int64_t k0 = 0; k0 < lanes; ++k0) {
        if (k0 < n) {
            const int64_t k = mixing ? b.lane_of[k0] : k0;
            const int64_t e = order[first + k0];
            const T *v = vectors + 3 * e;
            const T rr = T(std::sqrt(double(v[0]) * v[0] + double(v[1]) * v[1] + double(v[2]) * v[2]));
            const T inv_r = T(1) / rr;    // the unit vector in the model's precision T
            ux[k] = v[0] * inv_r;
            uy[k] = v[1] * inv_r;
            uz[k] = v[2] * inv_r;
            b.r[k] = rr;
            b.edges[k] = e;
            b.species[k] = species_index[neighbours[e]];
        } else {
            const int64_t k = k0;
            ux[k] = T(0);
            uy[k] = T(0);
            uz[k] = T(1);
            b.r[k] = T(2 * ly.cutoff);
            b.edges[k] = -1;
            b.species[k] = -1;
        }
    }
    const T r_on = T(ly.cutoff - ly.width), inv_width = T(1.0 / ly.width);
    const T pref = T(std::sqrt(2.0 / ly.cutoff)), k1 = T(M_PI / ly.cutoff);
    T *Rn = b.Rn.data(), *dRn = b.dRn.data();
    T *s_prev = b.work.data(), *s_cur = s_prev + c, *c_prev = s_cur + c, *c_cur = c_prev + c;
    T *env = c_cur + c, *denv = env + c, *env_k = denv + c;    // envelope pref fc / r, its r-derivative, pref fc / r
    const T *r = b.r.data(), *cos1 = b.cos1.data();
    // smooth cutoff f_c, envelope pref f_c / r and its derivative; sin(n theta), cos(n theta) by
    // the Chebyshev recurrence: R_n = sin(n theta) env, dR_n/dr = k_n cos(n theta) env + sin(n theta) denv
    const T theta_scale = T(M_PI / ly.cutoff);
#pragma omp simd
    for (int64_t k = 0; k < lanes; ++k) {
        const T theta = std::min(r[k] * theta_scale, T(M_PI));    // beyond the cutoff R_n is 0 anyway
        sin_cos_half_turn(theta, b.sin1[k], b.cos1[k]);
        T t = (r[k] - r_on) * inv_width;
        t = t < T(0) ? T(0) : (t > T(1) ? T(1) : t);
        const T fc = T(1) - t * t * t * (T(10) - T(15) * t + T(6) * t * t);
        const T dfc = -T(30) * t * t * (T(1) - t) * (T(1) - t) * inv_width;
        const T inv_r = T(1) / r[k];
        env[k] = pref * fc * inv_r;
        denv[k] = pref * (dfc - fc * inv_r) * inv_r;
        s_prev[k] = T(0);
        s_cur[k] = b.sin1[k];
        c_prev[k] = T(1);
        c_cur[k] = cos1[k];
    }
    for (int nn = 0; nn < N; ++nn) {
        const T kn = k1 * T(nn + 1);
        T *Rrow = Rn + int64_t(nn) * c, *dRrow = dRn + int64_t(nn) * c;
#pragma omp simd
        for (int64_t k = 0; k < lanes; ++k) {
            const T sv = s_cur[k], cv = c_cur[k];
            Rrow[k] = sv * env[k];
            if (Gradient) dRrow[k] = kn * cv * env[k] + sv * denv[k];
            const T s_next = T(2) * cos1[k] * sv - s_prev[k];
            const T c_next = T(2) * cos1[k] * cv - c_prev[k];
            s_prev[k] = sv;
            s_cur[k] = s_next;
            c_prev[k] = cv;
            c_cur[k] = c_next;
        }
    }
    (void)env_k;
    // rows per channel: mixed per species run (the padding lanes, whose R_n are exactly 0, ride
    // with the last run); one-hot: R[s N + n] = R_n on edges to species s, 0 on the others (one
    // species: R is R_n itself)
    if (mixing) {
        const int64_t *start = b.run_start.data();
        for (int s = 0; s < ly.S; ++s) {
            const int64_t a = start[s], e = s + 1 < ly.S ? start[s + 1] : lanes;
            if (e > a)
                mix_radial_run<T, Gradient>(ly, b.mixing.data() + int64_t(s) * N * ly.Q, a, e, c, Rn, dRn,
                                            b.R.data(), b.dR.data());
        }
    } else if (ly.S == 1) {
        b.R.swap(b.Rn);
        b.dR.swap(b.dRn);
    } else {
        for (int s = 0; s < ly.S; ++s)
            for (int nn = 0; nn < N; ++nn) {
                T *Rq = b.R.data() + int64_t(s * N + nn) * c, *dRq = b.dR.data() + int64_t(s * N + nn) * c;
                const T *Rrow = Rn + int64_t(nn) * c, *dRrow = dRn + int64_t(nn) * c;
                const int64_t *species = b.species.data();
#pragma omp simd
                for (int64_t k = 0; k < lanes; ++k) {
                    const bool mine = species[k] == s;
                    Rq[k] = mine ? Rrow[k] : T(0);
                    if (Gradient) dRq[k] = mine ? dRrow[k] : T(0);
                }
            }
    }
    harmonics<T, Gradient>(ly.L, lanes, c, ux, uy, uz, b.Y.data(), b.gY.data(), b.harmonic_scratch.data());
}

// Runs of `order` with one centre: calls f(centre, first, last) for each.
template <typename F>
void for_each_centre(int64_t n_edges, const int64_t *centres, const EdgeOrder &order, F &&f) {
    int64_t first = 0;
    while (first < n_edges) {
        const int64_t i = centres[order[first]];
        int64_t last = first + 1;
        while (last < n_edges && centres[order[last]] == i) ++last;
        f(i, first, last);
        first = last;
    }
}

// acc[r][j] += sum_t coef[r * row_stride + t * term_stride] * basis[t * basis_stride + j]
// for Rows rows, n_terms terms and the kChunk<T> lanes j of one chunk.
template <typename T, int Rows>
inline __attribute__((always_inline)) void combine_rows(const T *coef, int row_stride, int term_stride, int n_terms,
                                                        const T *basis, int64_t basis_stride,
                                                        T (&acc)[Rows][kChunk<T>]) {
    constexpr int W = kChunk<T>;
    for (int t = 0; t < n_terms; ++t) {
        const T *bt = basis + t * basis_stride;
        for (int r = 0; r < Rows; ++r) {
            const T w = coef[r * row_stride + t * term_stride];
#pragma omp simd
            for (int j = 0; j < W; ++j) acc[r][j] += w * bt[j];
        }
    }
}

// dens[q][lm] = sum over the centre's edges (the lanes of b) of R[q] Y[lm].
template <typename T, int L>
void density_of_centre(const Layout &ly, const CentreBasis<T> &b, T *dens) {
    constexpr int L2 = (L + 1) * (L + 1);
    const int Q = ly.Q;
    const int64_t c = b.capacity, lanes = b.lanes;
    constexpr int W = kChunk<T>;
    for (int q = 0; q < Q; ++q) {
        const T *Rq = b.R.data() + int64_t(q) * c;
        int lm0 = 0;
        for (; lm0 + kBlock <= L2; lm0 += kBlock) {
            T acc[kBlock][W] = {};
            for (int64_t k0 = 0; k0 < lanes; k0 += W)
                for (int r = 0; r < kBlock; ++r) {
                    const T *Y = b.Y.data() + int64_t(lm0 + r) * c + k0;
#pragma omp simd
                    for (int j = 0; j < W; ++j) acc[r][j] += Rq[k0 + j] * Y[j];
                }
            for (int r = 0; r < kBlock; ++r) {
                T sum = 0;
                for (int j = 0; j < W; ++j) sum += acc[r][j];
                dens[q * L2 + lm0 + r] = sum;
            }
        }
        for (; lm0 < L2; ++lm0) {
            const T *Y = b.Y.data() + int64_t(lm0) * c;
            T acc[W] = {};
            for (int64_t k0 = 0; k0 < lanes; k0 += W)
#pragma omp simd
                for (int j = 0; j < W; ++j) acc[j] += Rq[k0 + j] * Y[k0 + j];
            T sum = 0;
            for (int j = 0; j < W; ++j) sum += acc[j];
            dens[q * L2 + lm0] = sum;
        }
    }
}

// density[i][q][lm] = sum over the edges of i of R[q] Y[lm].
template <typename T, int L>
void accumulate_density(const Layout &ly, const int64_t *species_index, int64_t n_edges, const int64_t *edge_index,
                        const T *vectors, const EdgeOrder &order, T *density) {
    constexpr int L2 = (L + 1) * (L + 1);
    CentreBasis<T> b;
    for_each_centre(n_edges, edge_index, order, [&](int64_t i, int64_t first, int64_t last) {
        centre_basis<T, L, false>(ly, species_index, edge_index + n_edges, vectors, order, first, last, b);
        density_of_centre<T, L>(ly, b, density + i * int64_t(ly.Q) * L2);
    });
}

// Where pull_back_edges puts the gradient g = dF_row / d r_ij of edge e (centre i, neighbour
// j, vector r): the edge_grad array [n_rows][E][3] ...
template <typename T>
struct EdgeGradSink {
    T *edge_grad;
    int64_t n_edges;
    inline void operator()(int64_t row, int64_t e, int64_t, int64_t, const T *, const T (&g)[3]) {
        T *o = edge_grad + (row * n_edges + e) * 3;
        o[0] = g[0];
        o[1] = g[1];
        o[2] = g[2];
    }
};

// ... or straight into forces and virial (section 6's convention, float64): F_i += g, F_j -= g,
// W_ab -= r_a g_b, without the edge gradients ever reaching memory.
template <typename T>
struct ForceSink {
    double *forces;          // [n_all][3], accumulated into
    double *virial;          // [3][3], accumulated into, or NULL
    double w[9] = {};
    inline void operator()(int64_t, int64_t, int64_t i, int64_t j, const T *r, const T (&g)[3]) {
        for (int a = 0; a < 3; ++a) {
            forces[3 * i + a] += double(g[a]);
            forces[3 * j + a] -= double(g[a]);
        }
        if (virial != nullptr)
            for (int a = 0; a < 3; ++a)
                for (int c = 0; c < 3; ++c) w[3 * a + c] -= double(r[a]) * double(g[c]);
    }
    void finish() {
        if (virial != nullptr)
            for (int k = 0; k < 9; ++k) virial[k] += w[k];
    }
};

// Edge gradients of one centre i (its edges: the n lanes of b) for one row, from dF/dc [Q][L2],
// handed to `sink`. scratch: 4 b.capacity values.
template <typename T, int L, typename Sink>
void pull_back_centre(const Layout &ly, const CentreBasis<T> &b, int64_t n, int64_t i, int64_t row, const T *dc,
                      const int64_t *neighbours, const T *vectors, T *scratch, Sink &sink) {
    constexpr int L2 = (L + 1) * (L + 1);
    const int Q = ly.Q;
    const int64_t c = b.capacity, lanes = b.lanes;
    T *radial_sum = scratch, *G = radial_sum + c;
    const T *ux = b.u.data(), *uy = ux + c, *uz = uy + c;
    constexpr int W = kChunk<T>;
    for (int64_t k0 = 0; k0 < lanes; k0 += W) {
        // radial part: sum_q (sum_lm dF/dc[q][lm] Y[lm]) dR[q], kBlock rows q at a time
        T rs[W] = {};
        const T *Yk = b.Y.data() + k0;
        int q0 = 0;
        for (; q0 + kBlock <= Q; q0 += kBlock) {
            T acc[kBlock][W] = {};
            combine_rows<T, kBlock>(dc + q0 * L2, L2, 1, L2, Yk, c, acc);
            for (int r = 0; r < kBlock; ++r) {
                const T *dRq = b.dR.data() + int64_t(q0 + r) * c + k0;
#pragma omp simd
                for (int j = 0; j < W; ++j) rs[j] += acc[r][j] * dRq[j];
            }
        }
        for (; q0 < Q; ++q0) {
            T acc[1][W] = {};
            combine_rows<T, 1>(dc + q0 * L2, L2, 1, L2, Yk, c, acc);
            const T *dRq = b.dR.data() + int64_t(q0) * c + k0;
#pragma omp simd
            for (int j = 0; j < W; ++j) rs[j] += acc[0][j] * dRq[j];
        }
        // angular part: G = sum_lm (sum_q dF/dc[q][lm] R[q]) grad_u Y[lm], kBlock rows lm at a time
        T gx[W] = {}, gy[W] = {}, gz[W] = {};
        const T *Rk = b.R.data() + k0;
        auto add_gradient = [&](const T *acc_row, int lm) {
            const T *ax = b.gY.data() + int64_t(lm) * c + k0, *ay = ax + int64_t(L2) * c,
                    *az = ay + int64_t(L2) * c;
#pragma omp simd
            for (int j = 0; j < W; ++j) {
                gx[j] += acc_row[j] * ax[j];
                gy[j] += acc_row[j] * ay[j];
                gz[j] += acc_row[j] * az[j];
            }
        };
        int lm0 = 0;
        for (; lm0 + kBlock <= L2; lm0 += kBlock) {
            T acc[kBlock][W] = {};
            combine_rows<T, kBlock>(dc + lm0, 1, L2, Q, Rk, c, acc);
            for (int r = 0; r < kBlock; ++r) add_gradient(acc[r], lm0 + r);
        }
        for (; lm0 < L2; ++lm0) {
            T acc[1][W] = {};
            combine_rows<T, 1>(dc + lm0, 1, L2, Q, Rk, c, acc);
            add_gradient(acc[0], lm0);
        }
        for (int j = 0; j < W; ++j) {
            radial_sum[k0 + j] = rs[j];
            G[k0 + j] = gx[j];
            G[c + k0 + j] = gy[j];
            G[2 * c + k0 + j] = gz[j];
        }
    }
    for (int64_t k = 0; k < n; ++k) {
        const T u[3] = {ux[k], uy[k], uz[k]};
        const T g[3] = {G[k], G[c + k], G[2 * c + k]};
        const T uG = u[0] * g[0] + u[1] * g[1] + u[2] * g[2];
        const int64_t e = b.edges[k];
        T grad[3];
        for (int a = 0; a < 3; ++a) grad[a] = u[a] * radial_sum[k] + (g[a] - uG * u[a]) / b.r[k];
        sink(row, e, i, neighbours[e], vectors + 3 * e, grad);
    }
}

// Edge gradients from the feature gradients, centre by centre, handed to `sink`.
template <typename T, int L, typename Sink>
void pull_back_edges(const Layout &ly, int64_t n_local, const int64_t *species_index, int64_t n_edges,
                     const int64_t *edge_index, const T *vectors, const T *density, int64_t n_rows,
                     const T *feature_grad, const EdgeOrder &order, T *dc, Sink &sink) {
    const int64_t block = int64_t(ly.Q) * ly.L2;
    CentreBasis<T> b;
    PairWork<T> pair;
    pair.reserve(ly);
    std::vector<T> scratch;
    for_each_centre(n_edges, edge_index, order, [&](int64_t i, int64_t first, int64_t last) {
        centre_basis<T, L, true>(ly, species_index, edge_index + n_edges, vectors, order, first, last, b);
        if (int64_t(scratch.size()) < 4 * b.capacity) scratch.assign(4 * b.capacity, T(0));
        for (int64_t row = 0; row < n_rows; ++row) {
            density_grad_of_centre(ly, density + i * block, feature_grad + (row * n_local + i) * ly.D, dc, pair);
            pull_back_centre<T, L>(ly, b, last - first, i, row, dc, edge_index + n_edges, vectors, scratch.data(),
                                   sink);
        }
    });
}

template <typename T>
int forward(const mlip_power_spectrum_params *params, int64_t n_local, int64_t n_all, const int64_t *species_index,
            int64_t n_edges, const int64_t *edge_index, const T *vectors, T *density, T *features, char *errbuf,
            size_t errbuf_len) {
    Layout ly{};
    int status = make_layout(params, ly, errbuf, errbuf_len);
    if (status != MLIP_OK) return status;
    bool sorted = true;
    status = check_inputs(ly, n_local, n_all, species_index, n_edges, edge_index, vectors, sorted, errbuf,
                          errbuf_len);
    if (status != MLIP_OK) return status;
    if (n_local > 0 && (density == nullptr || features == nullptr))
        return fail(errbuf, errbuf_len, "density or features output is NULL");
    std::fill(density, density + n_local * int64_t(ly.Q) * ly.L2, T(0));
    EdgeOrder order;
    order.build(sorted, n_local, n_edges, edge_index);
    with_l_max(ly.L, [&](auto l) {
        accumulate_density<T, decltype(l)::value>(ly, species_index, n_edges, edge_index, vectors, order, density);
    });
    const int64_t block = int64_t(ly.Q) * ly.L2;
    PairWork<T> pair;
    pair.reserve(ly);
    for (int64_t i = 0; i < n_local; ++i) features_of_centre(ly, density + i * block, features + i * ly.D, pair);
    return MLIP_OK;
}

template <typename T, typename Sink>
int backward(const mlip_power_spectrum_params *params, int64_t n_local, int64_t n_all, const int64_t *species_index,
             int64_t n_edges, const int64_t *edge_index, const T *vectors, const T *density, int64_t n_rows,
             const T *feature_grad, Sink &sink, char *errbuf, size_t errbuf_len) {
    Layout ly{};
    int status = make_layout(params, ly, errbuf, errbuf_len);
    if (status != MLIP_OK) return status;
    bool sorted = true;
    status = check_inputs(ly, n_local, n_all, species_index, n_edges, edge_index, vectors, sorted, errbuf,
                          errbuf_len);
    if (status != MLIP_OK) return status;
    if (n_rows < 1) return fail(errbuf, errbuf_len, "n_rows must be >= 1, got %lld", (long long)n_rows);
    if (n_edges == 0) return MLIP_OK;
    if (density == nullptr || feature_grad == nullptr)
        return fail(errbuf, errbuf_len, "density or feature_grad is NULL");
    EdgeOrder order;
    std::vector<T> dc;
    try {
        order.build(sorted, n_local, n_edges, edge_index);
        dc.resize(size_t(ly.Q) * ly.L2);
    } catch (std::bad_alloc &) {
        return MLIP_ERR_OUT_OF_MEMORY;
    }
    with_l_max(ly.L, [&](auto l) {
        pull_back_edges<T, decltype(l)::value>(ly, n_local, species_index, n_edges, edge_index, vectors, density,
                                                n_rows, feature_grad, order, dc.data(), sink);
    });
    return MLIP_OK;
}

int readout_evaluate(const mlip_mlp_readout *r, int64_t n, const int64_t *s, const double *f, double *e, double *m,
                     double *g, char *eb, size_t el) {
    return mlip_mlp_readout_evaluate_f64(r, n, s, f, e, m, g, eb, el);
}
int readout_evaluate(const mlip_mlp_readout *r, int64_t n, const int64_t *s, const float *f, float *e, float *m,
                     float *g, char *eb, size_t el) {
    return mlip_mlp_readout_evaluate_f32(r, n, s, f, e, m, g, eb, el);
}

// Centres per block of the one-pass energy_forces: the bases of a block (~30 KB per centre in
// float32, twice that in float64) stay in cache between the forward and the backward of the
// block. At N = 4000 on one core: 8 and 32 run float32 1.18x faster than the separate calls;
// float64 gains 1.11x with 8 and loses with 32 (its bases leave the cache).
constexpr int64_t kCentreBlock = 8;

// One pass: per block of centres, the basis (with gradients) of each centre's edges, its
// density and features; the readout of the block (per atom, so the block's feature gradient
// needs nothing else); then the block's pull-back straight to forces, reusing the bases.
// With several species the centres are visited grouped by species, so a block's readout runs
// one species' network on all its rows and that network's weights stay in cache from block to
// block (in a host's spatial order, a block of 8 centres of 5 species would run up to 5
// networks of 1-2 rows each, cycling through every species' weights: 2x the time at S = 5).
template <typename T>
int energy_forces(const mlip_power_spectrum_params *params, const mlip_mlp_readout *readout, int64_t n_local,
                  int64_t n_all, const int64_t *species_index, int64_t n_edges, const int64_t *edge_index,
                  const T *vectors, T *atomic_energy, T *member_energy, double *forces, double *virial,
                  char *errbuf, size_t errbuf_len) {
    Layout ly{};
    int status = make_layout(params, ly, errbuf, errbuf_len);
    if (status != MLIP_OK) return status;
    if (readout == nullptr) return fail(errbuf, errbuf_len, "readout is NULL");
    if (mlip_mlp_readout_n_features(readout) != ly.D)
        return fail(errbuf, errbuf_len, "the readout takes %lld features, the descriptor makes %lld: they belong to "
                    "different models", (long long)mlip_mlp_readout_n_features(readout), (long long)ly.D);
    bool sorted = true;
    status = check_inputs(ly, n_local, n_all, species_index, n_edges, edge_index, vectors, sorted, errbuf,
                          errbuf_len);
    if (status != MLIP_OK) return status;
    if (n_local > 0 && (atomic_energy == nullptr || forces == nullptr))
        return fail(errbuf, errbuf_len, "atomic_energy or forces is NULL");
    EdgeOrder order;
    order.build(sorted, n_local, n_edges, edge_index);
    std::vector<int64_t> start(n_local + 1, 0);    // centre i's edges: order[start[i] .. start[i + 1])
    for (int64_t e = 0; e < n_edges; ++e) ++start[edge_index[e] + 1];
    std::partial_sum(start.begin(), start.end(), start.begin());
    std::vector<int64_t> by_species;    // centres in the order visited: grouped by species (S > 1)
    if (ly.S > 1) {
        std::vector<int64_t> next(ly.S + 1, 0);
        for (int64_t i = 0; i < n_local; ++i) ++next[species_index[i] + 1];
        std::partial_sum(next.begin(), next.end(), next.begin());
        by_species.resize(n_local);
        for (int64_t i = 0; i < n_local; ++i) by_species[next[species_index[i]]++] = i;
    }
    auto centre = [&](int64_t k) { return by_species.empty() ? k : by_species[k]; };
    const int64_t K = mlip_mlp_readout_n_members(readout), block_size = int64_t(ly.Q) * ly.L2;
    std::vector<CentreBasis<T>> bases(kCentreBlock);
    std::vector<T> density(kCentreBlock * block_size), features(kCentreBlock * ly.D), grad(kCentreBlock * ly.D),
        members(K * kCentreBlock), energy(kCentreBlock), dc(block_size), scratch;
    int64_t block_centres[kCentreBlock], block_species[kCentreBlock];
    PairWork<T> pair;
    pair.reserve(ly);
    ForceSink<T> sink{forces, virial};
    const int64_t *neighbours = edge_index + n_edges;
    with_l_max(ly.L, [&](auto l) {
        constexpr int L = decltype(l)::value;
        for (int64_t i0 = 0; i0 < n_local && status == MLIP_OK; i0 += kCentreBlock) {
            const int64_t m = std::min(kCentreBlock, n_local - i0);
            for (int64_t t = 0; t < m; ++t) {
                const int64_t i = block_centres[t] = centre(i0 + t);
                block_species[t] = species_index[i];
                CentreBasis<T> &b = bases[t];
                centre_basis<T, L, true>(ly, species_index, neighbours, vectors, order, start[i], start[i + 1], b);
                density_of_centre<T, L>(ly, b, density.data() + t * block_size);
                features_of_centre(ly, density.data() + t * block_size, features.data() + t * ly.D, pair);
            }
            status = readout_evaluate(readout, m, block_species, features.data(), energy.data(), members.data(),
                                      grad.data(), errbuf, errbuf_len);
            if (status != MLIP_OK) return;
            for (int64_t t = 0; t < m; ++t) {
                const int64_t i = block_centres[t];
                atomic_energy[i] = energy[t];
                if (member_energy != nullptr)
                    for (int64_t k = 0; k < K; ++k) member_energy[k * n_local + i] = members[k * m + t];
            }
            for (int64_t t = 0; t < m; ++t) {
                const CentreBasis<T> &b = bases[t];
                const int64_t i = block_centres[t];
                if (int64_t(scratch.size()) < 4 * b.capacity) scratch.assign(4 * b.capacity, T(0));
                density_grad_of_centre(ly, density.data() + t * block_size, grad.data() + t * ly.D, dc.data(), pair);
                pull_back_centre<T, L>(ly, b, start[i + 1] - start[i], i, 0, dc.data(), neighbours, vectors,
                                       scratch.data(), sink);
            }
        }
    });
    if (status == MLIP_OK) sink.finish();
    return status;
}

template <typename F>
int guarded(F &&body, char *errbuf, size_t errbuf_len) {
    try {
        return body();
    } catch (std::bad_alloc &) {
        fail(errbuf, errbuf_len, "out of memory in the power-spectrum kernel");
        return MLIP_ERR_OUT_OF_MEMORY;
    } catch (...) {
        fail(errbuf, errbuf_len, "internal error in the power-spectrum kernel");
        return MLIP_ERR_INTERNAL;
    }
}

}    // namespace

extern "C" {

int mlip_power_spectrum_check(const mlip_power_spectrum_params *params, char *errbuf, size_t errbuf_len) {
    Layout ly{};
    return make_layout(params, ly, errbuf, errbuf_len);
}

int64_t mlip_power_spectrum_n_features(const mlip_power_spectrum_params *params) {
    Layout ly{};
    return make_layout(params, ly, nullptr, 0) == MLIP_OK ? ly.D : -1;
}

int64_t mlip_power_spectrum_density_size(const mlip_power_spectrum_params *params) {
    Layout ly{};
    return make_layout(params, ly, nullptr, 0) == MLIP_OK ? int64_t(ly.Q) * ly.L2 : -1;
}

int mlip_power_spectrum_forward_f64(const mlip_power_spectrum_params *params, int64_t n_local, int64_t n_all,
                                    const int64_t *species_index, int64_t n_edges, const int64_t *edge_index,
                                    const double *edge_vectors, double *density, double *features, char *errbuf,
                                    size_t errbuf_len) {
    return guarded([&] { return forward<double>(params, n_local, n_all, species_index, n_edges, edge_index,
                                                edge_vectors, density, features, errbuf, errbuf_len); },
                   errbuf, errbuf_len);
}

int mlip_power_spectrum_forward_f32(const mlip_power_spectrum_params *params, int64_t n_local, int64_t n_all,
                                    const int64_t *species_index, int64_t n_edges, const int64_t *edge_index,
                                    const float *edge_vectors, float *density, float *features, char *errbuf,
                                    size_t errbuf_len) {
    return guarded([&] { return forward<float>(params, n_local, n_all, species_index, n_edges, edge_index,
                                               edge_vectors, density, features, errbuf, errbuf_len); },
                   errbuf, errbuf_len);
}

int mlip_power_spectrum_backward_f64(const mlip_power_spectrum_params *params, int64_t n_local, int64_t n_all,
                                     const int64_t *species_index, int64_t n_edges, const int64_t *edge_index,
                                     const double *edge_vectors, const double *density, int64_t n_rows,
                                     const double *feature_grad, double *edge_grad, char *errbuf,
                                     size_t errbuf_len) {
    if (edge_grad == nullptr && n_edges > 0) return fail(errbuf, errbuf_len, "edge_grad is NULL");
    EdgeGradSink<double> sink{edge_grad, n_edges};
    return guarded([&] { return backward<double>(params, n_local, n_all, species_index, n_edges, edge_index,
                                               edge_vectors, density, n_rows, feature_grad, sink, errbuf,
                                               errbuf_len); },
                   errbuf, errbuf_len);
}

int mlip_power_spectrum_backward_f32(const mlip_power_spectrum_params *params, int64_t n_local, int64_t n_all,
                                     const int64_t *species_index, int64_t n_edges, const int64_t *edge_index,
                                     const float *edge_vectors, const float *density, int64_t n_rows,
                                     const float *feature_grad, float *edge_grad, char *errbuf,
                                     size_t errbuf_len) {
    if (edge_grad == nullptr && n_edges > 0) return fail(errbuf, errbuf_len, "edge_grad is NULL");
    EdgeGradSink<float> sink{edge_grad, n_edges};
    return guarded([&] { return backward<float>(params, n_local, n_all, species_index, n_edges, edge_index,
                                               edge_vectors, density, n_rows, feature_grad, sink, errbuf,
                                               errbuf_len); },
                   errbuf, errbuf_len);
}

int mlip_power_spectrum_backward_forces_f64(const mlip_power_spectrum_params *params, int64_t n_local,
                                            int64_t n_all, const int64_t *species_index, int64_t n_edges,
                                            const int64_t *edge_index, const double *edge_vectors,
                                            const double *density, const double *feature_grad, double *forces,
                                            double *virial, char *errbuf, size_t errbuf_len) {
    if (forces == nullptr && n_all > 0) return fail(errbuf, errbuf_len, "forces is NULL");
    ForceSink<double> sink{forces, virial};
    const int status = guarded([&] { return backward<double>(params, n_local, n_all, species_index, n_edges, edge_index,
                                                           edge_vectors, density, 1, feature_grad, sink, errbuf,
                                                           errbuf_len); },
                               errbuf, errbuf_len);
    if (status == MLIP_OK) sink.finish();
    return status;
}

int mlip_power_spectrum_backward_forces_f32(const mlip_power_spectrum_params *params, int64_t n_local,
                                            int64_t n_all, const int64_t *species_index, int64_t n_edges,
                                            const int64_t *edge_index, const float *edge_vectors,
                                            const float *density, const float *feature_grad, double *forces,
                                            double *virial, char *errbuf, size_t errbuf_len) {
    if (forces == nullptr && n_all > 0) return fail(errbuf, errbuf_len, "forces is NULL");
    ForceSink<float> sink{forces, virial};
    const int status = guarded([&] { return backward<float>(params, n_local, n_all, species_index, n_edges, edge_index,
                                                           edge_vectors, density, 1, feature_grad, sink, errbuf,
                                                           errbuf_len); },
                               errbuf, errbuf_len);
    if (status == MLIP_OK) sink.finish();
    return status;
}

int mlip_power_spectrum_energy_forces_f64(const mlip_power_spectrum_params *params, const mlip_mlp_readout *readout,
                                          int64_t n_local, int64_t n_all, const int64_t *species_index,
                                          int64_t n_edges, const int64_t *edge_index, const double *edge_vectors,
                                          double *atomic_energy, double *member_energy, double *forces,
                                          double *virial, char *errbuf, size_t errbuf_len) {
    return guarded([&] { return energy_forces<double>(params, readout, n_local, n_all, species_index, n_edges,
                                                      edge_index, edge_vectors, atomic_energy, member_energy, forces,
                                                      virial, errbuf, errbuf_len); },
                   errbuf, errbuf_len);
}

int mlip_power_spectrum_energy_forces_f32(const mlip_power_spectrum_params *params, const mlip_mlp_readout *readout,
                                          int64_t n_local, int64_t n_all, const int64_t *species_index,
                                          int64_t n_edges, const int64_t *edge_index, const float *edge_vectors,
                                          float *atomic_energy, float *member_energy, double *forces,
                                          double *virial, char *errbuf, size_t errbuf_len) {
    return guarded([&] { return energy_forces<float>(params, readout, n_local, n_all, species_index, n_edges,
                                                     edge_index, edge_vectors, atomic_energy, member_energy, forces,
                                                     virial, errbuf, errbuf_len); },
                   errbuf, errbuf_len);
}

}    // extern "C"
