// Ensemble MLP readout of the built-in model (mlip_md.model.readout.EnsembleReadout with SiLU
// hidden layers, uq "ensemble"): per-atom member energies and the gradient of the total
// (member-mean) energy with respect to the raw features; see section 7 of mlip_md.h.
//
// At create time the feature standardisation x = (raw - mean) / scale is folded into the first
// layer (W0' = W0 / scale, b0' = b0 - (mean / scale) W0), the K members' first layers are
// concatenated into one [D][K H1] matrix (they share the input), later layers are kept per
// member, and every matrix is also stored transposed for the backward pass. Rows are padded to
// whole vectors with zeros. Atoms are evaluated in blocks of kBlockAtoms rows so that every
// intermediate of a block stays in the L1/L2 cache; the products are register-blocked
// (kRows rows x kCols vectors of accumulators) and SiLU uses a polynomial exp, all in the
// same lane style as the power-spectrum kernel.
#include "mlip_md.h"

#include "errors.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <new>
#include <type_traits>
#include <vector>

namespace {

using mlip_detail::fail;

#ifndef MLIP_READOUT_VECTOR_BYTES
#define MLIP_READOUT_VECTOR_BYTES 32
#endif
template <typename T>
constexpr int kLanes = MLIP_READOUT_VECTOR_BYTES / int(sizeof(T));
constexpr int kRows = 4;           // accumulator rows of the product micro-kernel
constexpr int kCols = 3;           // accumulator vectors per row
constexpr int kBlockAtoms = 64;    // atoms per block

template <typename T>
int64_t padded(int64_t n) {
    return (n + kLanes<T> - 1) / kLanes<T> * kLanes<T>;
}

// GCC/Clang vector of kLanes<T> lanes, and its unaligned-load alias.
template <typename T>
struct Vec {
    typedef T type __attribute__((vector_size(MLIP_READOUT_VECTOR_BYTES)));
    typedef T unaligned __attribute__((vector_size(MLIP_READOUT_VECTOR_BYTES), aligned(alignof(T))));
    typedef typename std::conditional<sizeof(T) == 8, int64_t, int32_t>::type Int;
    typedef Int int_type __attribute__((vector_size(MLIP_READOUT_VECTOR_BYTES)));
};

template <typename T>
inline __attribute__((always_inline)) typename Vec<T>::type load(const T *p) {
    return *reinterpret_cast<const typename Vec<T>::unaligned *>(p);
}
template <typename T>
inline __attribute__((always_inline)) void store(T *p, typename Vec<T>::type v) {
    *reinterpret_cast<typename Vec<T>::unaligned *>(p) = v;
}

// exp(x), lanewise, for x clamped to [-lim, lim]: 2^n p(r), r = x - n ln 2, |r| <= ln 2 / 2;
// Taylor polynomial of degree 13 (double, relative error < 2e-16) or 7 (float, < 1e-7).
template <typename T>
inline __attribute__((always_inline)) typename Vec<T>::type exp_poly(typename Vec<T>::type x) {
    using V = typename Vec<T>::type;
    using I = typename Vec<T>::int_type;
    constexpr bool dbl = sizeof(T) == 8;
    constexpr T lim = dbl ? T(700) : T(87);
    constexpr T round = dbl ? T(6755399441055744.0) : T(12582912.0);   // 1.5 2^52, 1.5 2^23
    x = x > lim ? lim : x;
    x = x < -lim ? -lim : x;
    const V n = (x * T(1.4426950408889634) + round) - round;          // round to nearest
    const V r = (x - n * T(0.693145751953125)) - n * T(1.4286068203094172e-6);
    V p;
    if constexpr (dbl) {
        p = r * (1.0 / 6227020800.0) + 1.0 / 479001600.0;
        p = p * r + 1.0 / 39916800.0;
        p = p * r + 1.0 / 3628800.0;
        p = p * r + 1.0 / 362880.0;
        p = p * r + 1.0 / 40320.0;
        p = p * r + 1.0 / 5040.0;
        p = p * r + 1.0 / 720.0;
        p = p * r + 1.0 / 120.0;
        p = p * r + 1.0 / 24.0;
        p = p * r + 1.0 / 6.0;
        p = p * r + 0.5;
        p = p * r + 1.0;
        p = p * r + 1.0;
    } else {
        p = r * (1.0f / 5040.0f) + 1.0f / 720.0f;
        p = p * r + 1.0f / 120.0f;
        p = p * r + 1.0f / 24.0f;
        p = p * r + 1.0f / 6.0f;
        p = p * r + 0.5f;
        p = p * r + 1.0f;
        p = p * r + 1.0f;
    }
    const I bits = (__builtin_convertvector(n, I) + (dbl ? 1023 : 127)) << (dbl ? 52 : 23);
    return p * (V)bits;  // a cast between GCC vector types of one size reinterprets the bits
}

// z[k] <- silu(z[k]) and slope[k] = silu'(z[k]) for k < n (a multiple of the vector width).
template <typename T>
void silu_inplace(T *__restrict z, T *__restrict slope, int64_t n) {
    using V = typename Vec<T>::type;
    for (int64_t k = 0; k < n; k += kLanes<T>) {
        const V x = load<T>(z + k);
        const V s = T(1) / (T(1) + exp_poly<T>(-x));
        store<T>(z + k, x * s);
        store<T>(slope + k, s * (T(1) + x * (T(1) - s)));
    }
}

// out[r][c] = init[c] + sum_t A[r][t] B[t][c] for R rows and C vectors of columns.
template <typename T, int R, int C>
inline __attribute__((always_inline)) void micro_kernel(int64_t depth, const T *__restrict A, int64_t lda,
                                                        const T *__restrict B, int64_t ldb, const T *init,
                                                        T *__restrict out, int64_t ldc) {
    using V = typename Vec<T>::type;
    constexpr int W = kLanes<T>;
    V acc[R][C];
    for (int c = 0; c < C; ++c) {
        const V start = init != nullptr ? load<T>(init + c * W) : V{};
        for (int r = 0; r < R; ++r) acc[r][c] = start;
    }
    for (int64_t t = 0; t < depth; ++t) {
        V b[C];
        for (int c = 0; c < C; ++c) b[c] = load<T>(B + t * ldb + c * W);
        for (int r = 0; r < R; ++r) {
            const T a = A[r * lda + t];
            for (int c = 0; c < C; ++c) acc[r][c] += a * b[c];
        }
    }
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < C; ++c) store<T>(out + r * ldc + c * W, acc[r][c]);
}

template <typename T, int C>
void rows_kernel(int64_t rows, int64_t depth, const T *A, int64_t lda, const T *B, int64_t ldb, const T *init,
                 T *out, int64_t ldc) {
    int64_t r = 0;
    for (; r + kRows <= rows; r += kRows)
        micro_kernel<T, kRows, C>(depth, A + r * lda, lda, B, ldb, init, out + r * ldc, ldc);
    for (; r < rows; ++r) micro_kernel<T, 1, C>(depth, A + r * lda, lda, B, ldb, init, out + r * ldc, ldc);
}

// out [rows][cols] = bias [cols] (or 0) + A [rows][depth] B [depth][cols]; cols a multiple of
// the vector width, B and bias padded accordingly.
template <typename T>
void matmul(int64_t rows, int64_t cols, int64_t depth, const T *A, int64_t lda, const T *B, int64_t ldb,
            const T *bias, T *out, int64_t ldc) {
    constexpr int W = kLanes<T>;
    int64_t c = 0;
    for (; c + kCols * W <= cols; c += kCols * W)
        rows_kernel<T, kCols>(rows, depth, A, lda, B + c, ldb, bias ? bias + c : nullptr, out + c, ldc);
    for (; c < cols; c += W) rows_kernel<T, 1>(rows, depth, A, lda, B + c, ldb, bias ? bias + c : nullptr, out + c, ldc);
}

// One species' packed network. Layer 0 is shared by the members: forward [D][K P1] (P = padded
// widths), backward [K P1][Dp]. Hidden layer l >= 1 (inner, P_l -> P_{l+1}): per member forward
// [P_l][P_{l+1}] and backward [P_{l+1}][P_l]. The last layer is a vector w [K][P_last] and a
// bias [K]; energy_scale / K is folded into the backward seed.
template <typename T>
struct SpeciesNet {
    std::vector<std::vector<T>> forward, backward, bias;   // per linear layer except the last
    std::vector<T> last_w, last_b;                         // [K][P_last], [K]
    T reference;                                           // eV
};

template <typename T>
struct Readout {
    int S, K, L;                 // species, members, linear layers (>= 2)
    int64_t D, Dp;               // features, padded
    std::vector<int64_t> width;  // hidden widths H_1..H_{L-1}
    std::vector<int64_t> pad;    // padded widths P_1..P_{L-1}
    T energy_scale;
    std::vector<SpeciesNet<T>> nets;
};

template <typename T>
Readout<T> *build(const mlip_mlp_readout_spec &sp) {
    auto *ro = new Readout<T>();
    ro->S = sp.n_species;
    ro->K = sp.n_members;
    ro->L = sp.n_layers;
    ro->D = sp.sizes[0];
    ro->Dp = padded<T>(ro->D);
    ro->energy_scale = T(sp.energy_scale);
    for (int l = 1; l < ro->L; ++l) {
        ro->width.push_back(sp.sizes[l]);
        ro->pad.push_back(padded<T>(sp.sizes[l]));
    }
    const int S = ro->S, K = ro->K, L = ro->L;
    const int64_t D = ro->D, Dp = ro->Dp;
    ro->nets.resize(S);
    for (int s = 0; s < S; ++s) {
        SpeciesNet<T> &net = ro->nets[s];
        net.reference = T(sp.reference_energy[s]);
        net.forward.resize(L - 1);
        net.backward.resize(L - 1);
        net.bias.resize(L - 1);
        {   // layer 0, standardisation folded in, members concatenated
            const int64_t H = ro->width[0], P = ro->pad[0], KP = K * P;
            std::vector<T> &f = net.forward[0], &b = net.backward[0], &bias = net.bias[0];
            f.assign(D * KP, T(0));
            b.assign(KP * Dp, T(0));
            bias.assign(KP, T(0));
            for (int k = 0; k < K; ++k) {
                const double *w = sp.weights[0] + (int64_t(s) * K + k) * D * H;
                const double *b0 = sp.biases[0] + (int64_t(s) * K + k) * H;
                for (int64_t h = 0; h < H; ++h) {
                    double shift = b0[h];
                    for (int64_t d = 0; d < D; ++d) {
                        const double folded = w[d * H + h] / sp.feature_scale[d];
                        shift -= sp.feature_mean[d] * folded;
                        f[d * KP + k * P + h] = T(folded);
                        b[(k * P + h) * Dp + d] = T(folded);
                    }
                    bias[k * P + h] = T(shift);
                }
            }
        }
        for (int l = 1; l < L - 1; ++l) {   // hidden -> hidden, per member
            const int64_t Hi = ro->width[l - 1], Pi = ro->pad[l - 1], Ho = ro->width[l], Po = ro->pad[l];
            std::vector<T> &f = net.forward[l], &b = net.backward[l], &bias = net.bias[l];
            f.assign(K * Pi * Po, T(0));
            b.assign(K * Po * Pi, T(0));
            bias.assign(K * Po, T(0));
            for (int k = 0; k < K; ++k) {
                const double *w = sp.weights[l] + (int64_t(s) * K + k) * Hi * Ho;
                const double *bl = sp.biases[l] + (int64_t(s) * K + k) * Ho;
                for (int64_t i = 0; i < Hi; ++i)
                    for (int64_t o = 0; o < Ho; ++o) {
                        f[(k * Pi + i) * Po + o] = T(w[i * Ho + o]);
                        b[(k * Po + o) * Pi + i] = T(w[i * Ho + o]);
                    }
                for (int64_t o = 0; o < Ho; ++o) bias[k * Po + o] = T(bl[o]);
            }
        }
        {   // last layer: H_{L-1} -> 1
            const int64_t H = ro->width[L - 2], P = ro->pad[L - 2];
            net.last_w.assign(K * P, T(0));
            net.last_b.assign(K, T(0));
            for (int k = 0; k < K; ++k) {
                const double *w = sp.weights[L - 1] + (int64_t(s) * K + k) * H;
                for (int64_t h = 0; h < H; ++h) net.last_w[k * P + h] = T(w[h]);
                net.last_b[k] = T(sp.biases[L - 1][int64_t(s) * K + k]);
            }
        }
    }
    return ro;
}

// Scratch of one block: per layer the activations and the SiLU slopes, [B][K P_l] each, the
// gathered input [B][D] and the input gradient [B][Dp].
template <typename T>
struct Scratch {
    std::vector<std::vector<T>> act, slope;
    std::vector<T> input, grad;
    explicit Scratch(const Readout<T> &ro) {
        act.resize(ro.L - 1);
        slope.resize(ro.L - 1);
        for (int l = 0; l < ro.L - 1; ++l) {
            act[l].resize(kBlockAtoms * ro.K * ro.pad[l]);
            slope[l].resize(kBlockAtoms * ro.K * ro.pad[l]);
        }
        input.resize(kBlockAtoms * ro.D);
        grad.resize(kBlockAtoms * ro.Dp);
    }
};

// One block of m <= kBlockAtoms atoms of species s: rows[a] are their indices.
template <typename T>
void evaluate_block(const Readout<T> &ro, const SpeciesNet<T> &net, const int64_t *rows, int64_t m, int64_t n,
                    const T *features, T *atomic_energy, T *member_energy, T *feature_grad, Scratch<T> &sc) {
    const int K = ro.K, L = ro.L;
    const int64_t D = ro.D, Dp = ro.Dp;
    for (int64_t a = 0; a < m; ++a) std::memcpy(sc.input.data() + a * D, features + rows[a] * D, D * sizeof(T));
    // forward
    {
        const int64_t KP = K * ro.pad[0];
        matmul<T>(m, KP, D, sc.input.data(), D, net.forward[0].data(), KP, net.bias[0].data(), sc.act[0].data(), KP);
        silu_inplace<T>(sc.act[0].data(), sc.slope[0].data(), m * KP);
    }
    for (int l = 1; l < L - 1; ++l) {
        const int64_t Pi = ro.pad[l - 1], Po = ro.pad[l];
        for (int k = 0; k < K; ++k)
            matmul<T>(m, Po, Pi, sc.act[l - 1].data() + k * Pi, K * Pi, net.forward[l].data() + k * Pi * Po, Po,
                      net.bias[l].data() + k * Po, sc.act[l].data() + k * Po, K * Po);
        silu_inplace<T>(sc.act[l].data(), sc.slope[l].data(), m * K * Po);
    }
    // energies, and the seed of the backward pass: d(mean energy)/d(last activations)
    const int64_t P = ro.pad[L - 2];
    const T seed = ro.energy_scale / T(K);
    T *last = sc.act[L - 2].data();
    const T *slope_last = sc.slope[L - 2].data();
    for (int64_t a = 0; a < m; ++a) {
        T mean = 0;
        for (int k = 0; k < K; ++k) {
            const T *x = last + (a * K + k) * P;
            const T *w = net.last_w.data() + k * P;
            T e = 0;
#pragma omp simd reduction(+ : e)
            for (int64_t h = 0; h < P; ++h) e += x[h] * w[h];
            e = (e + net.last_b[k]) * ro.energy_scale + net.reference;
            if (member_energy != nullptr) member_energy[k * n + rows[a]] = e;
            mean += e;
        }
        atomic_energy[rows[a]] = mean / T(K);
        // the activations of the last layer are no longer needed: overwrite with dE/dz
        for (int k = 0; k < K; ++k) {
            T *x = last + (a * K + k) * P;
            const T *g = slope_last + (a * K + k) * P;
            const T *w = net.last_w.data() + k * P;
#pragma omp simd
            for (int64_t h = 0; h < P; ++h) x[h] = seed * w[h] * g[h];
        }
    }
    // backward through the hidden layers: act[l] becomes dE/dz_l
    for (int l = L - 2; l >= 1; --l) {
        const int64_t Pi = ro.pad[l - 1], Po = ro.pad[l];
        for (int k = 0; k < K; ++k)
            matmul<T>(m, Pi, Po, sc.act[l].data() + k * Po, K * Po, net.backward[l].data() + k * Po * Pi, Pi, nullptr,
                      sc.act[l - 1].data() + k * Pi, K * Pi);
        T *z = sc.act[l - 1].data();
        const T *g = sc.slope[l - 1].data();
        const int64_t count = m * K * Pi;
#pragma omp simd
        for (int64_t q = 0; q < count; ++q) z[q] *= g[q];
    }
    const int64_t KP = K * ro.pad[0];
    matmul<T>(m, Dp, KP, sc.act[0].data(), KP, net.backward[0].data(), Dp, nullptr, sc.grad.data(), Dp);
    for (int64_t a = 0; a < m; ++a) std::memcpy(feature_grad + rows[a] * D, sc.grad.data() + a * Dp, D * sizeof(T));
}

template <typename T>
int evaluate(const mlip_mlp_readout *handle, int64_t n, const int64_t *species_index, const T *features,
             T *atomic_energy, T *member_energy, T *feature_grad, char *errbuf, size_t errbuf_len);

}  // namespace

struct mlip_mlp_readout {
    int precision;   // 32 or 64
    Readout<float> *f32 = nullptr;
    Readout<double> *f64 = nullptr;
};

namespace {

template <typename T>
const Readout<T> *get(const mlip_mlp_readout *h);
template <>
const Readout<float> *get<float>(const mlip_mlp_readout *h) { return h->f32; }
template <>
const Readout<double> *get<double>(const mlip_mlp_readout *h) { return h->f64; }

template <typename T>
int evaluate(const mlip_mlp_readout *handle, int64_t n, const int64_t *species_index, const T *features,
             T *atomic_energy, T *member_energy, T *feature_grad, char *errbuf, size_t errbuf_len) {
    if (handle == nullptr) return fail(errbuf, errbuf_len, "readout handle is NULL");
    const Readout<T> *ro = get<T>(handle);
    if (ro == nullptr)
        return fail(errbuf, errbuf_len, "readout was created for float%d; call mlip_mlp_readout_evaluate_f%d", handle->precision,
                    handle->precision);
    if (n < 0) return fail(errbuf, errbuf_len, "n_atoms must be >= 0 (got %lld)", (long long)n);
    if (n == 0) return MLIP_OK;
    if (species_index == nullptr || features == nullptr || atomic_energy == nullptr || feature_grad == nullptr)
        return fail(errbuf, errbuf_len, "species_index, features, atomic_energy and "
                    "feature_grad must not be NULL");
    try {
        // group the atoms by species (stable counting sort)
        std::vector<int64_t> count(ro->S + 1, 0);
        for (int64_t i = 0; i < n; ++i) {
            const int64_t s = species_index[i];
            if (s < 0 || s >= ro->S)
                return fail(errbuf, errbuf_len, "species_index[%lld] = %lld is outside 0..%d", (long long)i, (long long)s, ro->S - 1);
            ++count[s + 1];
        }
        for (int s = 0; s < ro->S; ++s) count[s + 1] += count[s];
        std::vector<int64_t> order(n);
        {
            std::vector<int64_t> next(count.begin(), count.end() - 1);
            for (int64_t i = 0; i < n; ++i) order[next[species_index[i]]++] = i;
        }
        Scratch<T> scratch(*ro);
        for (int s = 0; s < ro->S; ++s)
            for (int64_t first = count[s]; first < count[s + 1]; first += kBlockAtoms) {
                const int64_t m = std::min<int64_t>(kBlockAtoms, count[s + 1] - first);
                evaluate_block<T>(*ro, ro->nets[s], order.data() + first, m, n, features, atomic_energy,
                                  member_energy, feature_grad, scratch);
            }
    } catch (const std::bad_alloc &) {
        fail(errbuf, errbuf_len, "out of memory in the MLP readout");
        return MLIP_ERR_OUT_OF_MEMORY;
    }
    return MLIP_OK;
}

}  // namespace

extern "C" {

int mlip_mlp_readout_create(const mlip_mlp_readout_spec *spec, int32_t precision, mlip_mlp_readout **out,
                            char *errbuf, size_t errbuf_len) {
    if (out == nullptr) return fail(errbuf, errbuf_len, "out is NULL");
    *out = nullptr;
    if (spec == nullptr) return fail(errbuf, errbuf_len, "spec is NULL");
    if (precision != 32 && precision != 64)
        return fail(errbuf, errbuf_len, "precision must be 32 or 64 (got %d)", precision);
    const mlip_mlp_readout_spec &sp = *spec;
    if (sp.n_species < 1 || sp.n_members < 1 || sp.n_layers < 2 || sp.sizes == nullptr)
        return fail(errbuf, errbuf_len, "need n_species >= 1, n_members >= 1, n_layers >= 2 and sizes (got %d, %d, %d)", sp.n_species,
                    sp.n_members, sp.n_layers);
    for (int l = 0; l <= sp.n_layers; ++l)
        if (sp.sizes[l] < 1)
            return fail(errbuf, errbuf_len, "sizes[%d] = %d must be >= 1", l, sp.sizes[l]);
    if (sp.sizes[sp.n_layers] != 1)
        return fail(errbuf, errbuf_len, "the last layer must have one output (an energy), got %d", sp.sizes[sp.n_layers]);
    if (sp.weights == nullptr || sp.biases == nullptr || sp.feature_mean == nullptr || sp.feature_scale == nullptr ||
        sp.reference_energy == nullptr)
        return fail(errbuf, errbuf_len, "spec has NULL arrays");
    for (int l = 0; l < sp.n_layers; ++l)
        if (sp.weights[l] == nullptr || sp.biases[l] == nullptr)
            return fail(errbuf, errbuf_len, "spec has NULL weights for layer %d", l);
    for (int d = 0; d < sp.sizes[0]; ++d)
        if (!(sp.feature_scale[d] != 0.0) || !std::isfinite(sp.feature_scale[d]))
            return fail(errbuf, errbuf_len, "feature_scale[%d] = %g must be finite and "
                        "non-zero", d, sp.feature_scale[d]);
    try {
        auto *h = new mlip_mlp_readout();
        h->precision = precision;
        if (precision == 32)
            h->f32 = build<float>(sp);
        else
            h->f64 = build<double>(sp);
        *out = h;
    } catch (const std::bad_alloc &) {
        fail(errbuf, errbuf_len, "out of memory packing the MLP readout");
        return MLIP_ERR_OUT_OF_MEMORY;
    }
    return MLIP_OK;
}

int64_t mlip_mlp_readout_n_features(const mlip_mlp_readout *readout) {
    if (readout == nullptr) return -1;
    return readout->f32 ? readout->f32->D : readout->f64->D;
}

int64_t mlip_mlp_readout_n_members(const mlip_mlp_readout *readout) {
    if (readout == nullptr) return -1;
    return readout->f32 ? readout->f32->K : readout->f64->K;
}

void mlip_mlp_readout_free(mlip_mlp_readout *readout) {
    if (readout == nullptr) return;
    delete readout->f32;
    delete readout->f64;
    delete readout;
}

int mlip_mlp_readout_evaluate_f64(const mlip_mlp_readout *readout, int64_t n_atoms, const int64_t *species_index,
                                  const double *features, double *atomic_energy, double *member_energy,
                                  double *feature_grad, char *errbuf, size_t errbuf_len) {
    return evaluate<double>(readout, n_atoms, species_index, features, atomic_energy, member_energy, feature_grad,
                            errbuf, errbuf_len);
}

int mlip_mlp_readout_evaluate_f32(const mlip_mlp_readout *readout, int64_t n_atoms, const int64_t *species_index,
                                  const float *features, float *atomic_energy, float *member_energy,
                                  float *feature_grad, char *errbuf, size_t errbuf_len) {
    return evaluate<float>(readout, n_atoms, species_index, features, atomic_energy, member_energy, feature_grad,
                           errbuf, errbuf_len);
}

}  // extern "C"
