// Uncertainty monitoring for pair_style mlip: keyword parsing, the per-step signal (max over
// atoms), extended-XYZ dump of flagged frames (gathered on rank 0) and a clean halt.
#ifndef MLIP_MONITOR_H
#define MLIP_MONITOR_H

#include "pointers.h"

#include <cstdio>
#include <string>
#include <vector>

namespace MLIP {

enum class Signal { EnergySigma, ForceSigma, Mahalanobis, DMin };
const char *signal_name(Signal s);

struct MonitorSettings {
  int every = -1;    // uncertainty_every; -1 = default (1 with dump/halt, else 0 = never)
  Signal signal = Signal::EnergySigma;
  bool dump = false;
  double dump_above = 0.0;
  std::string dump_file;
  bool halt = false;
  double halt_above = 0.0;

  int effective_every() const { return every >= 0 ? every : ((dump || halt) ? 1 : 0); }
  bool due(LAMMPS_NS::bigint step) const
  {
    const int n = effective_every();
    return n > 0 && step % n == 0;
  }
};

// Parse one monitor keyword at arg[iarg] (uncertainty_every, monitor, dump_above, halt_above).
// Returns the number of words consumed, 0 if arg[iarg] is not a monitor keyword; calls
// error->all on bad values.
int parse_monitor_keyword(LAMMPS_NS::LAMMPS *lmp, MonitorSettings &settings, int narg, char **arg,
                          int iarg);

// Per-atom values of the owned atoms (nullptr = not available this step).
struct PerAtomMonitors {
  const double *energy_sigma = nullptr;
  const double *force_sigma = nullptr;
  const double *mahalanobis = nullptr;
  const double *d_min = nullptr;
};

class Monitor : protected LAMMPS_NS::Pointers {
 public:
  Monitor(LAMMPS_NS::LAMMPS *lmp, const MonitorSettings &settings);
  ~Monitor() override;

  // Reduce the signal over all atoms, dump the frame / halt the run when above the
  // thresholds. Collective over the partition's communicator. type_to_z maps types to Z.
  void check(const PerAtomMonitors &values, const std::vector<int> &type_to_z);

  double last_value = 0.0;
  int frames_written = 0;

 private:
  MonitorSettings settings_;
  FILE *fp_ = nullptr;
  std::string path_;
  LAMMPS_NS::bigint last_step_ = -1;
  bool halted_ = false;

  void write_frame(const PerAtomMonitors &values, const std::vector<int> &type_to_z, double value);
};

}    // namespace MLIP

#endif
