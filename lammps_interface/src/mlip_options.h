// The keywords of `pair_style mlip model.pt [keywords]`, parsed into one struct:
//
//   model      device cpu|cuda, fused yes|no, readout native|torchscript, dtype float64|float32,
//              threads N
//   monitors   uncertainty_every N, monitor energy_sigma|force_sigma|mahalanobis|d_min,
//              dump_above X file F, halt_above Y
//   safety     close_contact warn|halt|ignore, ood_warnings yes|no, ood_every N
#ifndef MLIP_OPTIONS_H
#define MLIP_OPTIONS_H

#include "mlip_model.h"      // ModelOptions
#include "mlip_monitor.h"    // MonitorSettings

#include <string>

namespace MLIP {

struct PairOptions {
  std::string model_path;
  std::string device = "cpu";
  ModelOptions model;
  int threads = 0;    // torch threads per rank; 0: OMP_NUM_THREADS if set, else 1 (mlip_process)
  MonitorSettings monitor;
};

// arg[0] is the model file, the rest keywords; calls error->all with the usage on bad input.
PairOptions parse_pair_options(LAMMPS_NS::LAMMPS *lmp, int narg, char **arg);

}    // namespace MLIP

#endif
