// LAMMPS arrays <-> model buffers: edges from the full neighbour list, species from the
// type map, and forces / per-atom energies / virial / per-atom virial written back (the edge
// gradients assembled by the C core's mlip_add_edge_forces, the assembly Python's predictor
// uses too); per-member forces and the force sigma of the monitors. Plain loops over raw
// arrays; no libtorch.
#ifndef MLIP_CONVERT_H
#define MLIP_CONVERT_H

#include "mlip_backend.h"

#include <vector>

namespace MLIP {

// Neighbour-list view (LAMMPS NeighList fields).
struct NeighView {
  int inum;
  const int *ilist;
  const int *numneigh;
  int *const *firstneigh;
};

// The close-contact check's table: 1 / r_min^2 per pair of atom types, r_min the closest
// distance of that element pair in training; inf for pairs never seen in training and for
// types mapped to NULL. Row-major [stride][stride], stride = ntypes + 1. `uniform`: every
// mapped pair has the same r_min (one element), so the edge loop needs no per-pair lookup.
struct ContactTable {
  int stride = 0;
  std::vector<double> inv_sq;
  bool uniform = true;
  double uniform_inv_sq = 0.0;
  bool empty() const { return inv_sq.empty(); }
  double at(int ti, int tj) const { return inv_sq[static_cast<size_t>(ti) * stride + tj]; }
};

// Fill `batch` for all owned + ghost atoms: species[k] = type_to_z[type[k]] (types mapped to
// NULL, z = 0, get `unused_z` and no edges), one edge i -> j per neighbour j of owned atom i
// closer than sqrt(cutsq), vectors r_j - r_i. Returns the smallest (r / r_min)^2 over the edges
// (the closest approach relative to training, found in the same loop; inf when `contacts` is
// empty or there are no edges).
double build_batch(double *const *x, const int *type, int nlocal, int nall, const NeighView &list,
                   const std::vector<int> &type_to_z, int unused_z, double cutsq, const ContactTable &contacts,
                   EdgeBatch &batch);

struct Tally {
  double energy = 0.0;      // sum of per-atom energies of owned atoms (eV)
  double virial[6] = {};    // xx yy zz xy xz yz (eV), W = -sum r_ij (x) g_ij
  int bad_atom = -1;        // local index of an atom with non-finite energy or force, else -1
};

// F_i += g_ij, F_j -= g_ij on owned and ghost atoms (ghosts are reverse-communicated by
// LAMMPS), or the backend's assembled forces added; per-atom energies into eatom, the global
// virial when `virial` is true and the per-atom virial (half of each edge term to each end)
// into vatom when given (needs edge gradients). f, vatom: LAMMPS's contiguous arrays.
// Throws std::runtime_error when the C core refuses the edges (an index out of range).
Tally write_results(const EdgeBatch &batch, const ModelOutput &out, const int *type,
                    const std::vector<int> &type_to_z, double **f, double *eatom, bool virial,
                    double **vatom);

// Per-member forces fm[atom][3*k + d] (owned + ghost rows, zeroed here; LAMMPS's contiguous
// [nall][3K] array) from member_edge_grad.
void member_forces(const EdgeBatch &batch, const ModelOutput &out, int nall, double **fm);

// force_sigma: the calibrated force std over members (ddof = 1) per owned atom and component,
// sigma [nlocal][3] (eV/A, 0 with one member); force_sigma_max: its largest component per atom
// [nlocal], the per-atom value of the monitor signal and of compute mlip/atom's column 2.
void force_sigma_from_members(double *const *fm, int nlocal, int n_members, double scale,
                              double **sigma, double *sigma_max);

}    // namespace MLIP

#endif
