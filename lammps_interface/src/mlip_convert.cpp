#include "mlip_convert.h"

#include "lmptype.h"    // NEIGHMASK

#include <cmath>

namespace MLIP {

void build_batch(double *const *x, const int *type, int nlocal, int nall, const NeighView &list,
                 const std::vector<int> &type_to_z, int unused_z, double cutsq, EdgeBatch &batch)
{
  batch.n_local = nlocal;
  batch.species.resize(nall);
  for (int k = 0; k < nall; ++k) {
    const int z = type_to_z[type[k]];
    batch.species[k] = z > 0 ? z : unused_z;
  }
  // sized for every listed pair (the list holds cutoff + skin), then each pair is written
  // unconditionally and kept by advancing the count: no push_back, no branch on the cutoff test
  size_t listed = 0;
  for (int ii = 0; ii < list.inum; ++ii) listed += static_cast<size_t>(list.numneigh[list.ilist[ii]]);
  batch.src.resize(listed + 1);
  batch.dst.resize(listed + 1);
  batch.vectors.resize(3 * (listed + 1));
  int64_t *src = batch.src.data(), *dst = batch.dst.data();
  double *vec = batch.vectors.data();
  size_t kept = 0;
  for (int ii = 0; ii < list.inum; ++ii) {
    const int i = list.ilist[ii];
    if (type_to_z[type[i]] <= 0) continue;
    const double xi = x[i][0], yi = x[i][1], zi = x[i][2];
    const int *neighbours = list.firstneigh[i];
    const int n = list.numneigh[i];
    for (int jj = 0; jj < n; ++jj) {
      const int j = neighbours[jj] & NEIGHMASK;
      const double dx = x[j][0] - xi, dy = x[j][1] - yi, dz = x[j][2] - zi;
      src[kept] = i;
      dst[kept] = j;
      vec[3 * kept] = dx;
      vec[3 * kept + 1] = dy;
      vec[3 * kept + 2] = dz;
      // types mapped to NULL (z = 0) get no edges
      kept += (dx * dx + dy * dy + dz * dz < cutsq) & (type_to_z[type[j]] > 0);
    }
  }
  batch.src.resize(kept);
  batch.dst.resize(kept);
  batch.vectors.resize(3 * kept);
}

Tally write_results(const EdgeBatch &batch, const ModelOutput &out, const int *type,
                    const std::vector<int> &type_to_z, double **f, double *eatom, bool virial,
                    double **vatom)
{
  Tally tally;
  for (int i = 0; i < batch.n_local; ++i) {
    if (type_to_z[type[i]] <= 0) continue;
    const double e = out.atomic_energy[i];
    if (!std::isfinite(e) && tally.bad_atom < 0) tally.bad_atom = i;
    tally.energy += e;
    if (eatom) eatom[i] += e;
  }
  const size_t n_edges = batch.n_edges();
  const double *g = out.edge_grad;
  const double *r = batch.vectors.data();
  double *w = tally.virial;
  for (size_t e = 0; e < n_edges; ++e, g += 3, r += 3) {
    const int64_t i = batch.src[e], j = batch.dst[e];
    if (!(std::isfinite(g[0]) && std::isfinite(g[1]) && std::isfinite(g[2])) && tally.bad_atom < 0)
      tally.bad_atom = static_cast<int>(i);
    f[i][0] += g[0];
    f[i][1] += g[1];
    f[i][2] += g[2];
    f[j][0] -= g[0];
    f[j][1] -= g[1];
    f[j][2] -= g[2];
    if (virial || vatom) {
      const double v[6] = {-r[0] * g[0], -r[1] * g[1], -r[2] * g[2],
                           -r[0] * g[1], -r[0] * g[2], -r[1] * g[2]};
      if (virial)
        for (int c = 0; c < 6; ++c) w[c] += v[c];
      if (vatom)
        for (int c = 0; c < 6; ++c) {
          vatom[i][c] += 0.5 * v[c];
          vatom[j][c] += 0.5 * v[c];
        }
    }
  }
  return tally;
}

void member_forces(const EdgeBatch &batch, const ModelOutput &out, int nall, double **fm)
{
  const int n_members = out.n_members;
  for (int k = 0; k < nall; ++k)
    for (int c = 0; c < 3 * n_members; ++c) fm[k][c] = 0.0;
  const size_t n_edges = batch.n_edges();
  for (int m = 0; m < n_members; ++m) {
    const double *g = out.member_edge_grad + static_cast<size_t>(m) * 3 * n_edges;
    for (size_t e = 0; e < n_edges; ++e, g += 3) {
      double *fi = fm[batch.src[e]] + 3 * m;
      double *fj = fm[batch.dst[e]] + 3 * m;
      for (int d = 0; d < 3; ++d) {
        fi[d] += g[d];
        fj[d] -= g[d];
      }
    }
  }
}

void force_sigma_from_members(double *const *fm, int nlocal, int n_members, double scale,
                              double *sigma)
{
  for (int i = 0; i < nlocal; ++i) {
    double largest = 0.0;
    if (n_members > 1) {
      for (int d = 0; d < 3; ++d) {
        double mean = 0.0;
        for (int m = 0; m < n_members; ++m) mean += fm[i][3 * m + d];
        mean /= n_members;
        double var = 0.0;
        for (int m = 0; m < n_members; ++m) {
          const double dev = fm[i][3 * m + d] - mean;
          var += dev * dev;
        }
        const double s = std::sqrt(var / (n_members - 1));
        if (s > largest) largest = s;
      }
    }
    sigma[i] = largest * scale;
  }
}

}    // namespace MLIP
