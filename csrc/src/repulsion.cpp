// Short-range repulsion of a model file (ZBL times a C^2 switch): section 8 of mlip_md.h.
//
// Per species pair the create step precomputes k_e Z_a Z_b, 1 / a (the universal screening
// length) and the switch radii; the evaluation streams the edge vectors once in chunks of
// kChunk edges, skips a chunk after one vectorised squared-length test when none of its edges
// is shorter than the largest r_out (in domain: every chunk), and otherwise adds, for each edge
// inside its pair's r_out, V / 2 to the centre and g = d(V / 2)/d r_ij to the outputs.
// The same formula is written in TorchScript in mlip_md/model/repulsion.py (tests hold the two
// to 1e-10 in float64).
#include "mlip_md.h"

#include "errors.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <new>
#include <vector>

using mlip_detail::fail;

namespace {

constexpr double kCoulomb = 14.399645;   // e^2 / (4 pi eps_0), eV Angstrom (LAMMPS metal qqr2e)
constexpr double kScreening = 0.46850;   // 0.8854 a_0, Angstrom
constexpr double kExponent = 0.23;
constexpr double kCoefficient[4] = {0.18175, 0.50986, 0.28022, 0.02817};
constexpr double kDecay[4] = {3.19980, 0.94229, 0.40290, 0.20162};
constexpr int kMaxZ = 118;
constexpr int64_t kChunk = 64;   // edges per vectorised distance test

struct PairTerm {
    double charge = 0.0;      // k_e Z_a Z_b, eV Angstrom
    double inv_screen = 0.0;  // 1 / a, 1/Angstrom
    double r_inner = 0.0, r_outer = 0.0, outer2 = 0.0, inv_width = 0.0;
};

PairTerm make_pair(int z_a, int z_b, double r_inner, double r_outer) {
    PairTerm p;
    p.charge = kCoulomb * double(z_a) * double(z_b);
    p.inv_screen = (std::pow(double(z_a), kExponent) + std::pow(double(z_b), kExponent)) / kScreening;
    p.r_inner = r_inner;
    p.r_outer = r_outer;
    p.outer2 = r_outer * r_outer;
    p.inv_width = r_outer > r_inner ? 1.0 / (r_outer - r_inner) : 0.0;
    return p;
}

// E_ZBL(r) and dE_ZBL/dr.
inline void zbl(const PairTerm &p, double r, double &e, double &de) {
    const double x = r * p.inv_screen;
    double phi = 0.0, dphi = 0.0;
    for (int k = 0; k < 4; ++k) {
        const double t = kCoefficient[k] * std::exp(-kDecay[k] * x);
        phi += t;
        dphi -= kDecay[k] * t;
    }
    const double inv_r = 1.0 / r;
    e = p.charge * phi * inv_r;
    de = p.charge * inv_r * (dphi * p.inv_screen - phi * inv_r);
}

// V = s E_ZBL and dV/dr for r < r_outer.
inline void switched(const PairTerm &p, double r, double &v, double &dv) {
    double e, de;
    zbl(p, r, e, de);
    if (r <= p.r_inner) {
        v = e;
        dv = de;
        return;
    }
    const double x = (r - p.r_inner) * p.inv_width, x2 = x * x;
    const double s = 1.0 - x2 * x * (10.0 + x * (-15.0 + 6.0 * x));   // smootherstep, as switching.cpp
    const double ds = -30.0 * x2 * (1.0 - x) * (1.0 - x) * p.inv_width;
    v = s * e;
    dv = ds * e + s * de;
}

bool valid_z(int32_t z) { return z >= 1 && z <= kMaxZ; }

}  // namespace

struct mlip_repulsion {
    int32_t n_species = 0;
    double max_radius = 0.0;
    std::vector<PairTerm> pairs;   // [S][S]
};

namespace {

template <typename T>
int evaluate(const mlip_repulsion *rep, int64_t n_local, int64_t n_all, const int64_t *species_index,
             int64_t n_edges, const int64_t *edge_index, const T *edge_vectors, double *atomic_energy,
             double *edge_grad, double *forces, double *virial, int64_t *n_active, char *errbuf,
             size_t errbuf_len) {
    if (errbuf != nullptr && errbuf_len > 0) errbuf[0] = '\0';
    if (rep == nullptr) return fail(errbuf, errbuf_len, "repulsion handle is NULL");
    if (n_local < 0 || n_all < n_local || n_edges < 0)
        return fail(errbuf, errbuf_len, "need 0 <= n_local <= n_all and n_edges >= 0 (got %lld, %lld, %lld)",
                    (long long)n_local, (long long)n_all, (long long)n_edges);
    if (n_local > 0 && atomic_energy == nullptr) return fail(errbuf, errbuf_len, "atomic_energy is NULL");
    if (n_edges > 0 && (edge_index == nullptr || edge_vectors == nullptr || species_index == nullptr))
        return fail(errbuf, errbuf_len, "species_index, edge_index and edge_vectors must not be NULL");
    if (n_edges > 0 && forces != nullptr && n_all == 0) return fail(errbuf, errbuf_len, "forces need n_all > 0");
    std::fill(atomic_energy, atomic_energy + n_local, 0.0);
    int64_t active = 0;
    const double max2 = rep->max_radius * rep->max_radius;
    // the chunk test in the vectors' own precision, its threshold widened past their rounding:
    // it may let an edge through that the exact test below skips, never the other way round
    const T chunk_max2 = static_cast<T>(max2 * (1.0 + 1e-5));
    const int64_t S = rep->n_species;
    const int64_t *centres = edge_index, *neighbours = edge_index + n_edges;
    double w[9] = {0, 0, 0, 0, 0, 0, 0, 0, 0};
    for (int64_t first = 0; first < n_edges; first += kChunk) {
        const int64_t last = std::min(first + kChunk, n_edges);
        // in domain no edge of a chunk is inside max_radius: one vectorised pass, nothing else
        int candidates = 0;
#pragma omp simd reduction(| : candidates)
        for (int64_t e = first; e < last; ++e) {
            const T x = edge_vectors[3 * e], y = edge_vectors[3 * e + 1], z = edge_vectors[3 * e + 2];
            const T r2 = x * x + y * y + z * z;
            candidates |= (r2 < chunk_max2 || r2 != r2) ? 1 : 0;   // NaN: reported below
        }
        if (!candidates) continue;
        for (int64_t e = first; e < last; ++e) {
            const double v[3] = {double(edge_vectors[3 * e]), double(edge_vectors[3 * e + 1]),
                                 double(edge_vectors[3 * e + 2])};
            const double r2 = v[0] * v[0] + v[1] * v[1] + v[2] * v[2];
            if (!(r2 < max2)) {
                if (std::isnan(r2))
                    return fail(errbuf, errbuf_len, "edge %lld has a non-finite vector", (long long)e);
                continue;
            }
            const int64_t i = centres[e], j = neighbours[e];
            if (i < 0 || i >= n_local || j < 0 || j >= n_all)
                return fail(errbuf, errbuf_len,
                            "edge %lld joins atoms %lld -> %lld, outside centres 0..%lld / atoms 0..%lld", (long long)e,
                            (long long)i, (long long)j, (long long)n_local - 1, (long long)n_all - 1);
            const int64_t si = species_index[i], sj = species_index[j];
            if (si < 0 || si >= S || sj < 0 || sj >= S)
                return fail(errbuf, errbuf_len, "edge %lld: species index %lld / %lld outside 0..%lld", (long long)e,
                            (long long)si, (long long)sj, (long long)S - 1);
            const PairTerm &p = rep->pairs[si * S + sj];
            if (!(r2 < p.outer2)) continue;
            if (!(r2 > 0.0))
                return fail(errbuf, errbuf_len, "atoms %lld and %lld (edge %lld) coincide: zero-length edge vector",
                            (long long)i, (long long)j, (long long)e);
            ++active;
            const double r = std::sqrt(r2);
            double energy, denergy;
            switched(p, r, energy, denergy);
            atomic_energy[i] += 0.5 * energy;
            const double scale = 0.5 * denergy / r;
            const double g[3] = {scale * v[0], scale * v[1], scale * v[2]};
            if (edge_grad != nullptr)
                for (int a = 0; a < 3; ++a) edge_grad[3 * e + a] += g[a];
            if (forces != nullptr)
                for (int a = 0; a < 3; ++a) {
                    forces[3 * i + a] += g[a];
                    forces[3 * j + a] -= g[a];
                }
            for (int a = 0; a < 3; ++a)
                for (int b = 0; b < 3; ++b) w[3 * a + b] -= v[a] * g[b];
        }
    }
    if (virial != nullptr)
        for (int k = 0; k < 9; ++k) virial[k] += w[k];
    if (n_active != nullptr) *n_active = active;
    return MLIP_OK;
}

int check_distances(const double *r, int64_t n, double *energy, char *errbuf, size_t errbuf_len) {
    if (n < 0) return fail(errbuf, errbuf_len, "negative count n = %lld", (long long)n);
    if (n > 0 && (r == nullptr || energy == nullptr))
        return fail(errbuf, errbuf_len, "r and energy must not be NULL when n > 0");
    for (int64_t k = 0; k < n; ++k)
        if (!(std::isfinite(r[k]) && r[k] > 0.0))
            return fail(errbuf, errbuf_len, "distance %lld must be finite and > 0 (got %g)", (long long)k, r[k]);
    return MLIP_OK;
}

}  // namespace

extern "C" {

int mlip_repulsion_create(const mlip_repulsion_spec *spec, mlip_repulsion **out, char *errbuf, size_t errbuf_len) {
    if (errbuf != nullptr && errbuf_len > 0) errbuf[0] = '\0';
    if (out == nullptr) return fail(errbuf, errbuf_len, "out is NULL");
    *out = nullptr;
    if (spec == nullptr) return fail(errbuf, errbuf_len, "spec is NULL");
    const int32_t S = spec->n_species;
    if (S < 1 || S > kMaxZ) return fail(errbuf, errbuf_len, "n_species must be in 1..%d (got %d)", kMaxZ, S);
    if (spec->atomic_numbers == nullptr || spec->r_inner == nullptr || spec->r_outer == nullptr)
        return fail(errbuf, errbuf_len, "spec has NULL arrays");
    for (int32_t a = 0; a < S; ++a)
        if (!valid_z(spec->atomic_numbers[a]))
            return fail(errbuf, errbuf_len, "atomic_numbers[%d] = %d is not in 1..%d", a, spec->atomic_numbers[a], kMaxZ);
    for (int32_t a = 0; a < S; ++a)
        for (int32_t b = 0; b < S; ++b) {
            const double ri = spec->r_inner[a * S + b], ro = spec->r_outer[a * S + b];
            if (ri != spec->r_inner[b * S + a] || ro != spec->r_outer[b * S + a])
                return fail(errbuf, errbuf_len, "the radii must be symmetric: pair (%d, %d) differs from (%d, %d)", a, b,
                            b, a);
            if (!(std::isfinite(ri) && std::isfinite(ro) && ro >= 0.0 && (ro == 0.0 || (ri >= 0.0 && ri < ro))))
                return fail(errbuf, errbuf_len,
                            "pair (%d, %d): need r_outer = 0 (no repulsion) or 0 <= r_inner < r_outer, finite "
                            "(got r_inner = %g, r_outer = %g Angstrom)", a, b, ri, ro);
        }
    try {
        auto *rep = new mlip_repulsion();
        rep->n_species = S;
        rep->pairs.resize(size_t(S) * S);
        for (int32_t a = 0; a < S; ++a)
            for (int32_t b = 0; b < S; ++b) {
                const double ro = spec->r_outer[a * S + b];
                rep->pairs[size_t(a) * S + b] = make_pair(spec->atomic_numbers[a], spec->atomic_numbers[b],
                                                          spec->r_inner[a * S + b], ro);
                rep->max_radius = std::max(rep->max_radius, ro);
            }
        *out = rep;
    } catch (const std::bad_alloc &) {
        fail(errbuf, errbuf_len, "out of memory creating the repulsion");
        return MLIP_ERR_OUT_OF_MEMORY;
    }
    return MLIP_OK;
}

void mlip_repulsion_free(mlip_repulsion *repulsion) { delete repulsion; }

double mlip_repulsion_max_radius(const mlip_repulsion *repulsion) {
    return repulsion == nullptr ? -1.0 : repulsion->max_radius;
}

int mlip_repulsion_evaluate_f64(const mlip_repulsion *repulsion, int64_t n_local, int64_t n_all,
                                const int64_t *species_index, int64_t n_edges, const int64_t *edge_index,
                                const double *edge_vectors, double *atomic_energy, double *edge_grad, double *forces,
                                double *virial, int64_t *n_active, char *errbuf, size_t errbuf_len) {
    return evaluate<double>(repulsion, n_local, n_all, species_index, n_edges, edge_index, edge_vectors, atomic_energy,
                            edge_grad, forces, virial, n_active, errbuf, errbuf_len);
}

int mlip_repulsion_evaluate_f32(const mlip_repulsion *repulsion, int64_t n_local, int64_t n_all,
                                const int64_t *species_index, int64_t n_edges, const int64_t *edge_index,
                                const float *edge_vectors, double *atomic_energy, double *edge_grad, double *forces,
                                double *virial, int64_t *n_active, char *errbuf, size_t errbuf_len) {
    return evaluate<float>(repulsion, n_local, n_all, species_index, n_edges, edge_index, edge_vectors, atomic_energy,
                           edge_grad, forces, virial, n_active, errbuf, errbuf_len);
}

int mlip_repulsion_pair_evaluate(int32_t z_a, int32_t z_b, double r_inner, double r_outer, const double *r, int64_t n,
                                 double *energy, double *denergy_dr, char *errbuf, size_t errbuf_len) {
    if (errbuf != nullptr && errbuf_len > 0) errbuf[0] = '\0';
    if (!valid_z(z_a) || !valid_z(z_b))
        return fail(errbuf, errbuf_len, "atomic numbers must be in 1..%d (got %d, %d)", kMaxZ, z_a, z_b);
    if (!(std::isfinite(r_inner) && std::isfinite(r_outer) && r_inner >= 0.0 && r_outer > r_inner))
        return fail(errbuf, errbuf_len, "need 0 <= r_inner < r_outer, finite (got %g, %g)", r_inner, r_outer);
    const int status = check_distances(r, n, energy, errbuf, errbuf_len);
    if (status != MLIP_OK) return status;
    const PairTerm p = make_pair(z_a, z_b, r_inner, r_outer);
    for (int64_t k = 0; k < n; ++k) {
        double v = 0.0, dv = 0.0;
        if (r[k] < r_outer) switched(p, r[k], v, dv);
        energy[k] = v;
        if (denergy_dr != nullptr) denergy_dr[k] = dv;
    }
    return MLIP_OK;
}

int mlip_zbl_evaluate(int32_t z_a, int32_t z_b, const double *r, int64_t n, double *energy, double *denergy_dr,
                      char *errbuf, size_t errbuf_len) {
    if (errbuf != nullptr && errbuf_len > 0) errbuf[0] = '\0';
    if (!valid_z(z_a) || !valid_z(z_b))
        return fail(errbuf, errbuf_len, "atomic numbers must be in 1..%d (got %d, %d)", kMaxZ, z_a, z_b);
    const int status = check_distances(r, n, energy, errbuf, errbuf_len);
    if (status != MLIP_OK) return status;
    const PairTerm p = make_pair(z_a, z_b, 0.0, 0.0);
    for (int64_t k = 0; k < n; ++k) {
        double e, de;
        zbl(p, r[k], e, de);
        energy[k] = e;
        if (denergy_dr != nullptr) denergy_dr[k] = de;
    }
    return MLIP_OK;
}

}  // extern "C"
