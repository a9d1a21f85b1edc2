// compute ID group mlip/atom [force_sigma yes|no]
//
// Per-atom array from pair_style mlip's model, 6 columns:
//   1 energy_sigma (eV, calibrated ensemble std of the atomic energy)
//   2 force_sigma_max (eV/A, the largest of the atom's three calibrated force std components;
//                   0 unless computed: force_sigma yes here, or pair_style ... monitor force_sigma)
//   3 mahalanobis  (T^2 of the atom's descriptor against the training distribution)
//   4 d_min        (kernel distance to the training set; 0 when the model has none)
//   5 min_distance (A, closest neighbour)
//   6 min_distance_ratio (closest neighbour / closest distance seen in training)
#ifndef LMP_COMPUTE_MLIP_ATOM_H
#define LMP_COMPUTE_MLIP_ATOM_H

#include "compute.h"
#include "pair_mlip.h"    // MLIPMonitorReader

namespace LAMMPS_NS {

class ComputeMLIPAtom : public Compute, public MLIPMonitorReader {
 public:
  ComputeMLIPAtom(class LAMMPS *, int, char **);
  ~ComputeMLIPAtom() override;
  void init() override;
  void compute_peratom() override;
  double memory_usage() override;

  // MLIPMonitorReader: pair_style mlip computes what this compute reads on the steps it runs
  bool reads_monitors_on(bigint step) override { return matchstep(step) != 0; }
  bool reads_force_sigma() const override { return force_sigma; }

 private:
  bool force_sigma;
  int nmax;
  double **values;
  PairMLIP *pair;
};

}    // namespace LAMMPS_NS

#endif
