// Forces and virial from edge gradients (docs/model-contract.md, "Outputs"): one pass over the
// edges, F_i += g_ij, F_j -= g_ij, W = -sum r_ij (x) g_ij, optionally half of each edge's term
// to the per-atom virial of either end. mlip_assemble_forces (Python's predictor) and
// mlip_add_edge_forces (the LAMMPS plugin) share the loop.
#include "mlip_md.h"

#include "errors.h"

#include <algorithm>
#include <cmath>

using mlip_detail::fail;

namespace {

// Adds edges 0..E-1 to `sums` (w: the [3][3] virial, summed when Virial); returns the first edge
// with an end outside 0..n_atoms-1, or E. `finite` stays finite unless some gradient is not: one
// test after the loop instead of one per edge.
template <bool Virial, bool AtomVirial>
int64_t add_edges(const mlip_edge_gradients &edges, const mlip_force_sums &sums, double *w, double &finite) {
    const uint64_t n_atoms = static_cast<uint64_t>(sums.n_atoms);
    const int64_t stride = sums.force_stride;
    for (int64_t e = 0; e < edges.n_edges; ++e) {
        const int64_t i = edges.centres[e], j = edges.neighbours[e];
        if (static_cast<uint64_t>(i) >= n_atoms || static_cast<uint64_t>(j) >= n_atoms) return e;
        const double gx = edges.grad[3 * e], gy = edges.grad[3 * e + 1], gz = edges.grad[3 * e + 2];
        finite += 0.0 * (gx + gy + gz);
        double *fi = sums.forces + i * stride, *fj = sums.forces + j * stride;
        fi[0] += gx;
        fi[1] += gy;
        fi[2] += gz;
        fj[0] -= gx;
        fj[1] -= gy;
        fj[2] -= gz;
        if (Virial || AtomVirial) {
            const double *r = edges.vectors + 3 * e;
            if (Virial) {
                const double g[3] = {gx, gy, gz};
                for (int a = 0; a < 3; ++a)
                    for (int b = 0; b < 3; ++b) w[3 * a + b] -= r[a] * g[b];
            }
            if (AtomVirial) {
                const double v[6] = {-r[0] * gx, -r[1] * gy, -r[2] * gz, -r[0] * gy, -r[0] * gz, -r[1] * gz};
                double *vi = sums.atom_virial + 6 * i, *vj = sums.atom_virial + 6 * j;
                for (int c = 0; c < 6; ++c) {
                    vi[c] += 0.5 * v[c];
                    vj[c] += 0.5 * v[c];
                }
            }
        }
    }
    return edges.n_edges;
}

int64_t first_nonfinite_centre(const mlip_edge_gradients &edges) {
    for (int64_t e = 0; e < edges.n_edges; ++e) {
        const double *g = edges.grad + 3 * e;
        if (!(std::isfinite(g[0]) && std::isfinite(g[1]) && std::isfinite(g[2]))) return edges.centres[e];
    }
    return -1;
}

const char *null_array(const mlip_edge_gradients &edges, const mlip_force_sums &sums) {
    if (edges.n_edges < 0 || sums.n_atoms < 0) return "n_edges and n_atoms must be >= 0";
    if (sums.force_stride < 3) return "force_stride must be >= 3";
    if (sums.n_atoms > 0 && !sums.forces) return "forces is NULL";
    if (edges.n_edges == 0) return nullptr;
    if (!edges.centres || !edges.neighbours || !edges.grad) return "centres, neighbours or grad is NULL";
    if ((sums.virial || sums.atom_virial) && !edges.vectors) return "the virial needs the edge vectors";
    return nullptr;
}

}  // namespace

extern "C" int mlip_add_edge_forces(const mlip_edge_gradients *edges, const mlip_force_sums *sums,
                                    int64_t *nonfinite_atom, char *errbuf, size_t errbuf_len) {
    if (nonfinite_atom) *nonfinite_atom = -1;
    if (!edges || !sums) return fail(errbuf, errbuf_len, "edges or sums is NULL");
    if (const char *problem = null_array(*edges, *sums)) return fail(errbuf, errbuf_len, "%s", problem);
    double w[9] = {0, 0, 0, 0, 0, 0, 0, 0, 0}, finite = 0.0;
    const bool virial = sums->virial != nullptr, atom_virial = sums->atom_virial != nullptr;
    const int64_t done = virial ? (atom_virial ? add_edges<true, true>(*edges, *sums, w, finite)
                                               : add_edges<true, false>(*edges, *sums, w, finite))
                                : (atom_virial ? add_edges<false, true>(*edges, *sums, w, finite)
                                               : add_edges<false, false>(*edges, *sums, w, finite));
    if (virial)
        for (int c = 0; c < 9; ++c) sums->virial[c] += w[c];
    if (done < edges->n_edges)
        return fail(errbuf, errbuf_len, "edge %lld joins atoms %lld-%lld, outside 0..%lld", (long long)done,
                    (long long)edges->centres[done], (long long)edges->neighbours[done],
                    (long long)sums->n_atoms - 1);
    if (nonfinite_atom && !std::isfinite(finite)) *nonfinite_atom = first_nonfinite_centre(*edges);
    return MLIP_OK;
}

extern "C" int mlip_assemble_forces(int64_t n_atoms, int64_t n_edges, const int64_t *edge_index,
                                    const double *edge_grad, const double *edge_vectors, double *forces,
                                    double *virial, char *errbuf, size_t errbuf_len) {
    if (n_edges > 0 && edge_index == nullptr) return fail(errbuf, errbuf_len, "edge_index or edge_grad is NULL");
    const mlip_edge_gradients edges{n_edges, edge_index, edge_index ? edge_index + n_edges : nullptr, edge_grad,
                                    edge_vectors};
    const mlip_force_sums sums{n_atoms, forces, 3, virial, nullptr};
    if (forces != nullptr && n_atoms > 0) std::fill(forces, forces + 3 * n_atoms, 0.0);
    if (virial != nullptr) std::fill(virial, virial + 9, 0.0);
    return mlip_add_edge_forces(&edges, &sums, nullptr, errbuf, errbuf_len);
}
