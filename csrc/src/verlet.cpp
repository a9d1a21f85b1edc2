// Verlet-list refresh: recompute the vectors of candidate pairs (built once at cutoff + skin)
// from the current positions and keep those inside the cutoff. One pass over the pairs, no
// allocation: the caller owns every buffer. See mlip_md.h, section 2.
#include "mlip_md.h"

#include <cmath>
#include <cstdio>
#include <cstring>

extern "C" {

int mlip_neighbors_filter(const double *positions, int64_t n_atoms, const int64_t *i, const int64_t *j,
                          const double *shift_vectors, int64_t n_pairs, double cutoff, int64_t *out_ij,
                          int64_t *out_index, double *out_vectors, double *out_distances, int64_t *n_kept,
                          char *errbuf, size_t errbuf_len) {
    *n_kept = 0;
    if (!(cutoff > 0.0) || n_atoms < 0 || n_pairs < 0) {
        if (errbuf && errbuf_len) std::snprintf(errbuf, errbuf_len, "cutoff must be > 0 and counts >= 0");
        return MLIP_ERR_INVALID_ARGUMENT;
    }
    const double rc2 = cutoff * cutoff;
    int64_t *out_i = out_ij, *out_j = out_ij + n_pairs;    // j moves next to i at the end
    int64_t m = 0;
    for (int64_t k = 0; k < n_pairs; ++k) {
        const int64_t a = i[k], b = j[k];
        if (a < 0 || a >= n_atoms || b < 0 || b >= n_atoms) {
            if (errbuf && errbuf_len)
                std::snprintf(errbuf, errbuf_len, "pair %lld refers to atom %lld or %lld, outside 0..%lld",
                              (long long)k, (long long)a, (long long)b, (long long)(n_atoms - 1));
            return MLIP_ERR_INVALID_ARGUMENT;
        }
        const double *s = shift_vectors + 3 * k;
        const double x = positions[3 * b] - positions[3 * a] + s[0];
        const double y = positions[3 * b + 1] - positions[3 * a + 1] + s[1];
        const double z = positions[3 * b + 2] - positions[3 * a + 2] + s[2];
        const double r2 = x * x + y * y + z * z;
        // written unconditionally, kept by advancing m: no branch on the cutoff test (about
        // half the candidates fail it, unpredictably)
        out_i[m] = a;
        out_j[m] = b;
        if (out_index) out_index[m] = k;
        out_vectors[3 * m] = x;
        out_vectors[3 * m + 1] = y;
        out_vectors[3 * m + 2] = z;
        if (out_distances) out_distances[m] = std::sqrt(r2);
        m += r2 < rc2;
    }
    if (m < n_pairs) std::memmove(out_ij + m, out_j, static_cast<size_t>(m) * sizeof(int64_t));
    *n_kept = m;
    return MLIP_OK;
}

}  // extern "C"
