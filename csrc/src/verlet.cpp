// Verlet list: candidate pairs built once at cutoff + skin, refreshed on every step by
// recomputing their vectors from the current positions and keeping those inside the cutoff.
// See mlip_md.h, section 2.
//
// A 4000-atom copper cell has 312 000 candidates, refreshed on every MD step. The refresh was
// bound by its compaction: a branchless keep (write every candidate, advance the output by
// r < cutoff) makes every store address wait for the previous test. So each atom's candidates
// are ordered by their distance at creation: those closer than inner_cutoff = cutoff - skin
// cannot leave the cutoff while no atom moves more than skin / 2, and are written without a
// test; the rest are tested, those inside the cutoff at creation first, so the branch
// predicts well (it changes only for the few pairs that crossed the cutoff since). The sure
// candidates are still checked (one compare, off the critical path) and a stale list is
// reported, never silently truncated. The candidates are stored compactly: rows by centre atom,
// int32 neighbours, an int32 code into the table of distinct shift vectors S @ cell. Indices
// are checked once, at creation, so the refresh loop has no range checks.
#include "mlip_md.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <algorithm>
#include <map>
#include <new>
#include <numeric>
#include <tuple>
#include <vector>

struct mlip_verlet_candidates {
    int64_t n_atoms = 0;
    int64_t n_pairs = 0;
    double cutoff = 0.0;             // Angstrom
    std::vector<int64_t> row_start;  // [n_atoms + 1]: candidates of atom a are row_start[a] .. row_start[a+1)
    std::vector<int64_t> sure_end;   // [n_atoms]: row_start[a] .. sure_end[a) were closer than cutoff - skin
    std::vector<int32_t> neighbor;   // [n_pairs]
    std::vector<int32_t> shift_code; // [n_pairs] index into shift_vectors
    std::vector<int64_t> original;   // [n_pairs] index of the candidate in the caller's arrays
    std::vector<double> shift_vectors;  // [n_shifts][3], Angstrom
};

namespace {

int fail(char *errbuf, size_t errbuf_len, int code, const char *message) {
    if (errbuf && errbuf_len) std::snprintf(errbuf, errbuf_len, "%s", message);
    return code;
}

// Codes of the distinct shifts S (int32 triples): a dense lookup over the bounding box of the
// shifts (27 entries for the usual -1..1 images), or a map when that box is huge.
class ShiftCodes {
  public:
    ShiftCodes(const int32_t *shifts, int64_t n_pairs) {
        for (int d = 0; d < 3; ++d) lo_[d] = hi_[d] = 0;
        for (int64_t k = 0; k < n_pairs; ++k)
            for (int d = 0; d < 3; ++d) {
                lo_[d] = std::min<int64_t>(lo_[d], shifts[3 * k + d]);
                hi_[d] = std::max<int64_t>(hi_[d], shifts[3 * k + d]);
            }
        const int64_t box = (hi_[0] - lo_[0] + 1) * (hi_[1] - lo_[1] + 1) * (hi_[2] - lo_[2] + 1);
        if (box <= (int64_t{1} << 20)) dense_.assign(static_cast<size_t>(box), -1);
    }

    // The code of shift s, appending S @ cell to `table` when s is new.
    int32_t operator()(const int32_t *s, const double *cell, std::vector<double> &table) {
        int32_t *slot = nullptr;
        if (!dense_.empty()) {
            const int64_t w1 = hi_[1] - lo_[1] + 1, w2 = hi_[2] - lo_[2] + 1;
            slot = &dense_[static_cast<size_t>(((s[0] - lo_[0]) * w1 + (s[1] - lo_[1])) * w2 + (s[2] - lo_[2]))];
        } else {
            slot = &sparse_.emplace(std::make_tuple(s[0], s[1], s[2]), -1).first->second;
        }
        if (*slot < 0) {
            *slot = static_cast<int32_t>(table.size() / 3);
            for (int d = 0; d < 3; ++d)
                table.push_back(double(s[0]) * cell[d] + double(s[1]) * cell[3 + d] + double(s[2]) * cell[6 + d]);
        }
        return *slot;
    }

  private:
    int64_t lo_[3], hi_[3];
    std::vector<int32_t> dense_;
    std::map<std::tuple<int32_t, int32_t, int32_t>, int32_t> sparse_;
};

}  // namespace

extern "C" {

int mlip_verlet_candidates_create(int64_t n_atoms, const double *positions, const double *cell, const int64_t *i,
                                  const int64_t *j, const int32_t *shifts, int64_t n_pairs, double cutoff,
                                  double skin, mlip_verlet_candidates **out, char *errbuf, size_t errbuf_len) {
    if (!out) return fail(errbuf, errbuf_len, MLIP_ERR_INVALID_ARGUMENT, "out must not be NULL");
    *out = nullptr;
    if (n_atoms < 0 || n_pairs < 0 || n_atoms > std::numeric_limits<int32_t>::max())
        return fail(errbuf, errbuf_len, MLIP_ERR_INVALID_ARGUMENT, "need 0 <= n_atoms < 2^31 and n_pairs >= 0");
    if (!(cutoff > 0.0) || !(skin >= 0.0))
        return fail(errbuf, errbuf_len, MLIP_ERR_INVALID_ARGUMENT, "need cutoff > 0 and skin >= 0 (Angstrom)");
    if (n_pairs > 0 && (!positions || !i || !j || !shifts || !cell))
        return fail(errbuf, errbuf_len, MLIP_ERR_INVALID_ARGUMENT,
                    "positions, cell, i, j and shifts must not be NULL");
    mlip_verlet_candidates *c = nullptr;
    try {
        c = new mlip_verlet_candidates();
        c->n_atoms = n_atoms;
        c->n_pairs = n_pairs;
        c->cutoff = cutoff;
        c->row_start.assign(static_cast<size_t>(n_atoms) + 1, 0);
        c->sure_end.resize(static_cast<size_t>(n_atoms));
        c->neighbor.resize(static_cast<size_t>(n_pairs));
        c->shift_code.resize(static_cast<size_t>(n_pairs));
        c->original.resize(static_cast<size_t>(n_pairs));
        std::vector<int32_t> code_of(static_cast<size_t>(n_pairs));
        std::vector<double> r2(static_cast<size_t>(n_pairs));
        ShiftCodes codes(shifts, n_pairs);
        int64_t previous = 0;
        for (int64_t k = 0; k < n_pairs; ++k) {
            const int64_t a = i[k], b = j[k];
            if (a < 0 || a >= n_atoms || b < 0 || b >= n_atoms || a < previous) {
                if (errbuf && errbuf_len)
                    std::snprintf(errbuf, errbuf_len,
                                  "candidate pair %lld (%lld, %lld): indices must lie in 0..%lld and i must be "
                                  "sorted ascending (as mlip_neighbors_compute returns them)",
                                  (long long)k, (long long)a, (long long)b, (long long)(n_atoms - 1));
                delete c;
                return MLIP_ERR_INVALID_ARGUMENT;
            }
            previous = a;
            ++c->row_start[static_cast<size_t>(a) + 1];
            code_of[k] = codes(shifts + 3 * k, cell, c->shift_vectors);
            const double *s = &c->shift_vectors[3 * static_cast<size_t>(code_of[k])];
            double d2 = 0.0;
            for (int d = 0; d < 3; ++d) {
                const double x = positions[3 * b + d] - positions[3 * a + d] + s[d];
                d2 += x * x;
            }
            r2[k] = d2;
        }
        for (int64_t a = 0; a < n_atoms; ++a) c->row_start[a + 1] += c->row_start[a];
        // each row in three groups by distance now: sure (< cutoff - skin, kept without a
        // test), inside, outside; the refresh's cutoff test then follows a predictable pattern
        std::iota(c->original.begin(), c->original.end(), int64_t{0});
        const double inner2 = cutoff > skin ? (cutoff - skin) * (cutoff - skin) : -1.0, rc2 = cutoff * cutoff;
        for (int64_t a = 0; a < n_atoms; ++a) {
            auto first = c->original.begin() + c->row_start[a], last = c->original.begin() + c->row_start[a + 1];
            auto sure = std::partition(first, last, [&](int64_t k) { return r2[k] < inner2; });
            std::partition(sure, last, [&](int64_t k) { return r2[k] < rc2; });
            c->sure_end[a] = sure - c->original.begin();
        }
        for (int64_t k = 0; k < n_pairs; ++k) {
            c->neighbor[k] = static_cast<int32_t>(j[c->original[k]]);
            c->shift_code[k] = code_of[c->original[k]];
        }
        *out = c;
        return MLIP_OK;
    } catch (const std::bad_alloc &) {
        delete c;
        return fail(errbuf, errbuf_len, MLIP_ERR_OUT_OF_MEMORY, "out of memory storing the candidate pairs");
    }
}

void mlip_verlet_candidates_free(mlip_verlet_candidates *candidates) { delete candidates; }

int64_t mlip_verlet_candidates_count(const mlip_verlet_candidates *candidates) {
    return candidates ? candidates->n_pairs : 0;
}

int mlip_verlet_candidates_filter(const mlip_verlet_candidates *c, const double *positions, int64_t *out_ij, int64_t *out_index, double *out_vectors,
                                  double *out_distances, int64_t *n_kept, double *min_distance, char *errbuf,
                                  size_t errbuf_len) {
    if (n_kept) *n_kept = 0;
    if (!c || !n_kept) return fail(errbuf, errbuf_len, MLIP_ERR_INVALID_ARGUMENT, "need candidates and n_kept");
    if (c->n_pairs > 0 && (!positions || !out_ij || !out_vectors))
        return fail(errbuf, errbuf_len, MLIP_ERR_INVALID_ARGUMENT, "positions, out_ij and out_vectors must not be NULL");
    const double rc2 = c->cutoff * c->cutoff;
    const int64_t *row = c->row_start.data();
    const int64_t *sure_end = c->sure_end.data();
    const int32_t *nb = c->neighbor.data();
    const int32_t *code = c->shift_code.data();
    const double *table = c->shift_vectors.data();
    const int64_t *original = c->original.data();
    int64_t *out_i = out_ij, *out_j = out_ij + c->n_pairs;  // j moves next to i at the end
    int64_t m = 0;
    bool escaped = false;  // a sure candidate left the cutoff: the candidates are stale
    double r2_min = std::numeric_limits<double>::infinity();
    auto keep = [&](int64_t a, int64_t k, int64_t b, double x, double y, double z, double r2) {
        out_i[m] = a;
        out_j[m] = b;
        if (out_index) out_index[m] = original[k];
        out_vectors[3 * m] = x;
        out_vectors[3 * m + 1] = y;
        out_vectors[3 * m + 2] = z;
        if (out_distances) out_distances[m] = std::sqrt(r2);
        ++m;
    };
    for (int64_t a = 0; a < c->n_atoms; ++a) {
        const double xa = positions[3 * a], ya = positions[3 * a + 1], za = positions[3 * a + 2];
        int64_t k = row[a];
        for (; k < sure_end[a]; ++k) {  // kept without a test: no branch, no dependence on r2
            const int64_t b = nb[k];
            const double *s = table + 3 * code[k];
            const double x = positions[3 * b] - xa + s[0], y = positions[3 * b + 1] - ya + s[1],
                         z = positions[3 * b + 2] - za + s[2];
            const double r2 = x * x + y * y + z * z;
            escaped |= !(r2 < rc2);
            r2_min = r2 < r2_min ? r2 : r2_min;
            keep(a, k, b, x, y, z, r2);
        }
        for (; k < row[a + 1]; ++k) {  // inside first, then outside: the branch is predictable
            const int64_t b = nb[k];
            const double *s = table + 3 * code[k];
            const double x = positions[3 * b] - xa + s[0], y = positions[3 * b + 1] - ya + s[1],
                         z = positions[3 * b + 2] - za + s[2];
            const double r2 = x * x + y * y + z * z;
            r2_min = r2 < r2_min ? r2 : r2_min;
            if (r2 < rc2) keep(a, k, b, x, y, z, r2);
        }
    }
    if (escaped)
        return fail(errbuf, errbuf_len, MLIP_ERR_STALE,
                    "an atom moved more than skin / 2 since the Verlet candidates were built: rebuild them");
    if (m < c->n_pairs) std::memmove(out_ij + m, out_j, static_cast<size_t>(m) * sizeof(int64_t));
    *n_kept = m;
    // the closest candidate is kept whenever any kept pair could be as close
    if (min_distance) *min_distance = r2_min < rc2 ? std::sqrt(r2_min) : std::numeric_limits<double>::infinity();
    return MLIP_OK;
}

}  // extern "C"
