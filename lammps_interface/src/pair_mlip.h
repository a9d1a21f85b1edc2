// pair_style mlip: an exported mlip_md model (TorchScript + metadata) as a LAMMPS pair style.
//
//   pair_style mlip model.pt [device cpu|cuda] [fused yes|no] [readout native|torchscript]
//              [dtype float64|float32] [uncertainty_every N]
//              [monitor energy_sigma|force_sigma|mahalanobis|d_min]
//              [dump_above X file F] [halt_above Y]
//              [close_contact warn|halt|ignore] [ood_warnings yes|no] [ood_every N] [threads N]
//   pair_coeff * * Cu Ni ...      (one element per atom type, NULL for types left to hybrid)
//
// fused: the descriptor from the fused C++ kernel + the model's evaluate_features or the C
// readout (default yes when the model supports it, i.e. its metadata has a power_spectrum v1
// descriptor block); the log says which backend runs and why (Model::choice);
// dtype: run a .pt model in that precision (default: the precision it was saved in);
// threads: torch threads per rank (default OMP_NUM_THREADS when set, else 1; mlip_process).
//
// Full neighbour list, newton on; forces on ghosts are reverse-communicated by LAMMPS.
// The keywords come from mlip_options, the model call from the backend Model chose
// (mlip_model, mlip_backend_*), the array conversions and force assembly from mlip_convert and
// the monitor actions from mlip_monitor.
//
// Default safety checks (mlip_monitor's SafetyChecks, the mirror of mlip_md.safety): close
// contacts every step from the edge loop (close_contact, default warn), atoms beyond the
// training data's T^2 / d_min on steps with monitor values, at least every ood_every steps
// (ood_warnings, default yes, every 200 steps).
#ifndef LMP_PAIR_MLIP_H
#define LMP_PAIR_MLIP_H

#include "pair.h"

#include "mlip_model.h"
#include "mlip_monitor.h"
#include "mlip_options.h"

#include <memory>
#include <string>
#include <vector>

namespace LAMMPS_NS {

// A compute that reads pair_style mlip's per-atom monitors (compute mlip/atom) says through this
// interface on which steps it reads them and whether it needs force sigma; the pair style asks
// every compute that implements it, so that its force call computes what they will read.
class MLIPMonitorReader {
 public:
  virtual bool reads_monitors_on(bigint step) = 0;
  virtual bool reads_force_sigma() const = 0;

 protected:
  ~MLIPMonitorReader() = default;    // not owned through this interface (LAMMPS deletes its computes)
};

class PairMLIP : public Pair {
 public:
  PairMLIP(class LAMMPS *);
  ~PairMLIP() override;

  void compute(int, int) override;
  void settings(int, char **) override;
  void coeff(int, char **) override;
  void init_style() override;
  double init_one(int, int) override;
  void setup() override;
  void finish() override;
  int pack_reverse_comm(int, int, double *) override;
  void unpack_reverse_comm(int, int *, double *) override;
  double memory_usage() override;

  // Per-atom monitor values of owned atoms for compute mlip/atom. ensure_monitors() makes
  // them current for this step (re-evaluating the model if the last force call did not
  // compute them); collective.
  void ensure_monitors(bool need_force_sigma);
  MLIP::PerAtomMonitors monitors() const;
  const double *min_distance() const { return mon_min_distance; }
  const double *min_distance_ratio() const { return mon_min_ratio; }

 protected:
  MLIP::Model model;
  MLIP::PairOptions options;    // the pair_style keywords
  std::unique_ptr<MLIP::Monitor> monitor;
  std::unique_ptr<MLIP::SafetyChecks> safety;
  double closest_contact;    // this rank's smallest (r / r_min)^2 of the last build_batch
  std::vector<int> type_to_z;    // [ntypes+1], 0 = NULL
  MLIP::EdgeBatch batch;
  double cutoff;

  // per-atom monitor values (owned atoms) and the step they belong to; force sigma per
  // component [nmax][3] and its largest component per atom (force_sigma_max)
  int nmax_monitor;
  double *mon_energy_sigma, *mon_force_sigma_max, *mon_mahalanobis, *mon_d_min;
  double **mon_force_sigma;
  double *mon_min_distance, *mon_min_ratio;
  bigint monitor_step;
  bool monitor_has_force_sigma, monitor_has_d_min;
  // per-member forces [nmax][3K] for force sigma (reverse-communicated)
  int nmax_members;
  double **member_f;

  // timing of the last run (printed by finish()): model calls vs. LAMMPS <-> model conversion
  double time_model, time_convert, time_kernel;    // time_kernel: fused descriptor kernel, part of time_model
  double time_edges;    // the edge-building part of time_convert
  bigint model_calls;

  void allocate();
  void log_setup(const std::string &process);
  void demand(bool &monitors, bool &force_sigma, bool &check);
  MLIP::ModelOutput run_model(bool monitors, bool force_sigma, bool &ran);
  void write_forces(const MLIP::ModelOutput &out);
  void store_monitors(const MLIP::ModelOutput &out, bool force_sigma);
  void store_force_sigma(const MLIP::ModelOutput &out);
};

}    // namespace LAMMPS_NS

#endif
