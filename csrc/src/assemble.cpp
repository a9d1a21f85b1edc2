// Forces and virial from edge gradients (DESIGN.md, "The exported model"): one pass over the
// edges, F_i += g_ij, F_j -= g_ij, W = -sum r_ij (x) g_ij.
#include "mlip_md.h"

#include "errors.h"

#include <algorithm>

using mlip_detail::fail;

extern "C" int mlip_assemble_forces(int64_t n_atoms, int64_t n_edges, const int64_t *edge_index,
                                    const double *edge_grad, const double *edge_vectors, double *forces,
                                    double *virial, char *errbuf, size_t errbuf_len) {
    if (n_atoms < 0 || n_edges < 0) return fail(errbuf, errbuf_len, "n_atoms and n_edges must be >= 0");
    if (n_edges > 0 && (edge_index == nullptr || edge_grad == nullptr))
        return fail(errbuf, errbuf_len, "edge_index or edge_grad is NULL");
    if (virial != nullptr && n_edges > 0 && edge_vectors == nullptr)
        return fail(errbuf, errbuf_len, "the virial needs edge_vectors");
    if (n_atoms > 0 && forces == nullptr) return fail(errbuf, errbuf_len, "forces is NULL");
    const int64_t *centres = edge_index, *neighbours = edge_index + n_edges;
    for (int64_t e = 0; e < n_edges; ++e)
        if (centres[e] < 0 || centres[e] >= n_atoms || neighbours[e] < 0 || neighbours[e] >= n_atoms)
            return fail(errbuf, errbuf_len, "edge %lld joins atoms %lld-%lld, outside 0..%lld", (long long)e,
                        (long long)centres[e], (long long)neighbours[e], (long long)n_atoms - 1);
    std::fill(forces, forces + 3 * n_atoms, 0.0);
    double w[9] = {0, 0, 0, 0, 0, 0, 0, 0, 0};
    for (int64_t e = 0; e < n_edges; ++e) {
        const double *g = edge_grad + 3 * e;
        double *fi = forces + 3 * centres[e], *fj = forces + 3 * neighbours[e];
        for (int a = 0; a < 3; ++a) {
            fi[a] += g[a];
            fj[a] -= g[a];
        }
        if (virial != nullptr) {
            const double *r = edge_vectors + 3 * e;
            for (int a = 0; a < 3; ++a)
                for (int b = 0; b < 3; ++b) w[3 * a + b] -= r[a] * g[b];
        }
    }
    if (virial != nullptr) std::copy(w, w + 9, virial);
    return MLIP_OK;
}
