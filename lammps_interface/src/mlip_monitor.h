// Uncertainty monitoring for pair_style mlip: the per-step signal (max over
// atoms), extended-XYZ dump of flagged frames (gathered on rank 0) and a clean halt; and the
// default safety checks (SafetyChecks: close contacts every step, out-of-domain atoms on the
// steps with monitor values), the C++ mirror of mlip_md/safety.py with the same messages.
#ifndef MLIP_MONITOR_H
#define MLIP_MONITOR_H

#include "pointers.h"

#include "mlip_convert.h"       // ContactTable, EdgeBatch
#include "mlip_model_info.h"    // DomainLimits

#include <cstdio>
#include <string>
#include <vector>

namespace MLIP {

// The per-atom signal of `monitor` (keywords energy_sigma, force_sigma, mahalanobis, d_min);
// ForceSigmaMax: each atom's force_sigma_max, the largest of its three force sigma components.
enum class Signal { EnergySigma, ForceSigmaMax, Mahalanobis, DMin };
const char *signal_name(Signal s);

// close_contact warn|halt|ignore
enum class ContactAction { Warn, Halt, Ignore };
const char *contact_action_name(ContactAction a);

struct MonitorSettings {
  int every = -1;    // uncertainty_every; -1 = default (1 with dump/halt, else 0 = never)
  Signal signal = Signal::EnergySigma;
  bool dump = false;
  double dump_above = 0.0;
  std::string dump_file;
  bool halt = false;
  double halt_above = 0.0;
  // default safety checks
  ContactAction close_contact = ContactAction::Warn;
  bool ood_warnings = true;
  int ood_every = 200;    // monitor values computed for the out-of-domain check every N steps (0: only
                          // on steps that compute them anyway: uncertainty_every, compute mlip/atom)

  int effective_every() const { return every >= 0 ? every : ((dump || halt) ? 1 : 0); }
  bool due(LAMMPS_NS::bigint step) const
  {
    const int n = effective_every();
    return n > 0 && step % n == 0;
  }
  bool ood_due(LAMMPS_NS::bigint step) const { return ood_warnings && ood_every > 0 && step % ood_every == 0; }
};

// Per-atom values of the owned atoms (nullptr = not available this step).
struct PerAtomMonitors {
  const double *energy_sigma = nullptr;
  const double *const *force_sigma = nullptr;    // [nlocal][3] eV/A, calibrated force std per component
  const double *force_sigma_max = nullptr;       // eV/A, the largest of the atom's 3 components
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
  std::vector<double> gather_frame(const PerAtomMonitors &values, const std::vector<int> &type_to_z, int have_all[4]);
};

// First occurrence, then at most one report per `gap` steps, the gap doubling from 10 to 10 000
// steps (mlip_md.safety.RateLimiter). record() on every step the condition holds: true = report
// now; then steps / atoms flagged since the previous report (this step included) and that
// report's step (-1 for the first) are in since_steps, since_atoms, since_last.
class RateLimiter {
 public:
  bool record(LAMMPS_NS::bigint step, LAMMPS_NS::bigint n_atoms);
  LAMMPS_NS::bigint since_steps = 0, since_atoms = 0, since_last = -1;

 private:
  LAMMPS_NS::bigint gap_ = 10, last_ = -1, steps_ = 0, atoms_ = 0, reports_ = 0;
};

// The messages, word for word mlip_md.safety's close_contact_message / out_of_domain_message
// (atoms are LAMMPS atom IDs here). `pair`: "Cu-Cu"; distances in Angstrom.
std::string format_close_contact(LAMMPS_NS::bigint step, LAMMPS_NS::tagint a, LAMMPS_NS::tagint b, double distance,
                                 double ratio, const std::string &pair, double reference, LAMMPS_NS::bigint n_atoms,
                                 const RateLimiter &since, bool halt);
// t2 / d_min: {largest value, threshold, atom ID} when above the threshold, else nullptr.
struct Extreme {
  double value, threshold;
  LAMMPS_NS::tagint atom;
};
std::string format_out_of_domain(LAMMPS_NS::bigint step, LAMMPS_NS::bigint n_atoms, const Extreme *t2,
                                 const Extreme *d_min, const RateLimiter &since);

// The default safety checks of pair_style mlip (keywords close_contact, ood_warnings,
// ood_every). Collective calls over the partition's communicator.
class SafetyChecks : protected LAMMPS_NS::Pointers {
 public:
  SafetyChecks(LAMMPS_NS::LAMMPS *lmp, const MonitorSettings &settings, const DomainLimits &domain);

  // The table build_batch scans with (empty when close contacts are ignored or the model has
  // no pair_min_distance); call after pair_coeff set the type map.
  void set_types(const std::vector<int> &type_to_z);
  const ContactTable &table() const { return table_; }

  // Every step: `closest` = build_batch's (r / r_min)^2 of this rank. One MPI_Allreduce (min);
  // when below 1 the details (atom IDs, distance, count) are gathered and the message is
  // printed (warn) or the run stops with error->all (halt). Returns whether a contact is present
  // (not ignored) on this step.
  bool check_contacts(double closest, const EdgeBatch &batch, const int *type, const std::vector<int> &type_to_z);
  // On steps with monitor values: T^2 / d_min above the training maxima; quiet on steps with a
  // close contact (`contact`), whose message stands for both.
  void check_out_of_domain(const PerAtomMonitors &values, const std::vector<int> &type_to_z, bool contact);
  // whether check_contacts found a (not ignored) close contact on `step`
  bool contact_on(LAMMPS_NS::bigint step) const { return contact_step_ == step && contact_present_; }
  std::string describe() const;    // one line for the log: what is checked, how often, thresholds

 private:
  MonitorSettings settings_;
  DomainLimits domain_;
  ContactTable table_;
  RateLimiter contacts_, out_of_domain_;
  LAMMPS_NS::bigint contact_step_ = -1, ood_step_ = -1;
  bool contact_present_ = false;

  LAMMPS_NS::bigint locate_contact(const EdgeBatch &batch, const int *type, const std::vector<int> &type_to_z,
                                   double pair[5]);
};

}    // namespace MLIP

#endif
