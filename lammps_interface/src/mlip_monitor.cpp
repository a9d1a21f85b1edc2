#include "mlip_monitor.h"

#include "mlip_model_info.h"    // element_symbol, DomainLimits

#include "atom.h"
#include "comm.h"
#include "domain.h"
#include "error.h"
#include "timer.h"
#include "universe.h"
#include "update.h"
#include "utils.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <mpi.h>

using namespace LAMMPS_NS;

namespace MLIP {

const char *signal_name(Signal s)
{
  switch (s) {
    case Signal::EnergySigma: return "energy_sigma";
    case Signal::ForceSigmaMax: return "force_sigma";
    case Signal::Mahalanobis: return "mahalanobis";
    case Signal::DMin: return "d_min";
  }
  return "?";
}

const char *contact_action_name(ContactAction a)
{
  switch (a) {
    case ContactAction::Warn: return "warn";
    case ContactAction::Halt: return "halt";
    case ContactAction::Ignore: return "ignore";
  }
  return "?";
}

Monitor::Monitor(LAMMPS *lmp, const MonitorSettings &settings) : Pointers(lmp), settings_(settings)
{
  path_ = settings.dump_file;
  // one file per NEB replica / partition
  if (!path_.empty() && universe->nworlds > 1) path_ += fmt::format(".{}", universe->iworld);
}

Monitor::~Monitor()
{
  if (fp_) fclose(fp_);
}

void Monitor::check(const PerAtomMonitors &values, const std::vector<int> &type_to_z)
{
  const bigint step = update->ntimestep;
  if (step == last_step_) return;    // once per step (minimizer line searches re-evaluate)
  last_step_ = step;

  const double *per_atom = nullptr;
  switch (settings_.signal) {
    case Signal::EnergySigma: per_atom = values.energy_sigma; break;
    case Signal::ForceSigmaMax: per_atom = values.force_sigma_max; break;
    case Signal::Mahalanobis: per_atom = values.mahalanobis; break;
    case Signal::DMin: per_atom = values.d_min; break;
  }
  const int nlocal = atom->nlocal;
  if (!per_atom && nlocal > 0)
    error->one(FLERR, "pair_style mlip: the model does not provide the monitored signal {}",
               signal_name(settings_.signal));
  struct {
    double value;
    int rank;
  } mine{-INFINITY, comm->me}, best{};
  int where = -1;
  for (int i = 0; i < nlocal; ++i)
    if (type_to_z[atom->type[i]] > 0 && per_atom[i] > mine.value) {
      mine.value = per_atom[i];
      where = i;
    }
  MPI_Allreduce(&mine, &best, 1, MPI_DOUBLE_INT, MPI_MAXLOC, world);
  bigint tag = (comm->me == best.rank && where >= 0) ? atom->tag[where] : 0;
  bigint tag_all = 0;
  MPI_Allreduce(&tag, &tag_all, 1, MPI_LMP_BIGINT, MPI_SUM, world);
  last_value = best.value;

  const char *name = signal_name(settings_.signal);
  if (settings_.dump && best.value > settings_.dump_above) {
    write_frame(values, type_to_z, best.value);
    if (comm->me == 0 && frames_written == 1)
      utils::logmesg(lmp,
                     "pair mlip: {} = {:.6g} > dump_above {:.6g} on step {} (atom {}); "
                     "appending flagged frames to {}\n",
                     name, best.value, settings_.dump_above, step, tag_all, path_);
  }
  if (settings_.halt && best.value > settings_.halt_above && !halted_) {
    halted_ = true;
    if (comm->me == 0)
      utils::logmesg(lmp,
                     "pair mlip: HALT: {} = {:.6g} > halt_above {:.6g} on step {} (atom {}); "
                     "the model is extrapolating, stopping the run\n",
                     name, best.value, settings_.halt_above, step, tag_all);
    timer->force_timeout();    // soft stop, as fix halt does: the run loop ends cleanly
  }
}

static constexpr int kFrameWidth = 9;    // per atom: tag, Z, x, y, z, the 4 signals

// All atoms' rows (tag, Z, position from the box corner, energy_sigma, force_sigma_max,
// mahalanobis, d_min; NaN where not computed) on rank 0, and which signals any rank has; collective.
std::vector<double> Monitor::gather_frame(const PerAtomMonitors &values, const std::vector<int> &type_to_z,
                                          int have_all[4])
{
  const int nlocal = atom->nlocal;
  std::vector<double> mine(static_cast<size_t>(nlocal) * kFrameWidth);
  const double *signals[4] = {values.energy_sigma, values.force_sigma_max, values.mahalanobis, values.d_min};
  for (int i = 0; i < nlocal; ++i) {
    double *row = &mine[static_cast<size_t>(i) * kFrameWidth];
    row[0] = static_cast<double>(atom->tag[i]);
    row[1] = type_to_z[atom->type[i]];
    for (int d = 0; d < 3; ++d) row[2 + d] = atom->x[i][d] - domain->boxlo[d];
    for (int c = 0; c < 4; ++c) row[5 + c] = signals[c] ? signals[c][i] : NAN;
  }
  const int have[4] = {signals[0] != nullptr, signals[1] != nullptr, signals[2] != nullptr, signals[3] != nullptr};
  MPI_Allreduce(have, have_all, 4, MPI_INT, MPI_MAX, world);

  int count = nlocal * kFrameWidth;
  std::vector<int> counts(comm->nprocs), offsets(comm->nprocs);
  MPI_Gather(&count, 1, MPI_INT, counts.data(), 1, MPI_INT, 0, world);
  std::vector<double> all;
  if (comm->me == 0) {
    int total = 0;
    for (int p = 0; p < comm->nprocs; ++p) {
      offsets[p] = total;
      total += counts[p];
    }
    all.resize(total);
  }
  MPI_Gatherv(mine.data(), count, MPI_DOUBLE, all.data(), counts.data(), offsets.data(), MPI_DOUBLE, 0, world);
  return all;
}

void Monitor::write_frame(const PerAtomMonitors &values, const std::vector<int> &type_to_z, double value)
{
  int have[4];
  const std::vector<double> all = gather_frame(values, type_to_z, have);
  ++frames_written;
  if (comm->me != 0) return;
  const size_t natoms = all.size() / kFrameWidth;
  std::vector<size_t> order(natoms);
  for (size_t k = 0; k < natoms; ++k) order[k] = k;
  std::sort(order.begin(), order.end(),
            [&](size_t a, size_t b) { return all[a * kFrameWidth] < all[b * kFrameWidth]; });
  if (!fp_) {
    fp_ = fopen(path_.c_str(), "a");
    if (!fp_) error->one(FLERR, "pair_style mlip: cannot open dump file {}: {}", path_, utils::getsyserror());
  }
  // the force sigma column holds each atom's force_sigma_max; its name stays what readers know
  const char *columns[4] = {"energy_sigma", "force_sigma", "mahalanobis", "d_min"};
  std::string properties = "species:S:1:pos:R:3";
  for (int c = 0; c < 4; ++c)
    if (have[c]) properties += fmt::format(":{}:R:1", columns[c]);
  const double *h = domain->h;    // xprd yprd zprd yz xz xy
  fputs(fmt::format("{}\n", natoms).c_str(), fp_);
  std::string header = fmt::format(
             "Lattice=\"{:.10f} 0 0 {:.10f} {:.10f} 0 {:.10f} {:.10f} {:.10f}\" Properties={} "
             "step={} signal={} value={:.10g} pbc=\"{} {} {}\"\n",
             h[0], h[5], h[1], h[4], h[3], h[2], properties, update->ntimestep,
             signal_name(settings_.signal), value, domain->xperiodic ? "T" : "F",
             domain->yperiodic ? "T" : "F", domain->zperiodic ? "T" : "F");
  fputs(header.c_str(), fp_);
  for (size_t k : order) {
    const double *row = &all[k * kFrameWidth];
    const char *symbol = element_symbol(static_cast<int>(row[1]));
    std::string line = fmt::format("{:<3s} {:16.10f} {:16.10f} {:16.10f}", symbol ? symbol : "X", row[2],
                                   row[3], row[4]);
    for (int c = 0; c < 4; ++c)
      if (have[c]) line += fmt::format(" {:.10g}", row[5 + c]);
    fputs(line.c_str(), fp_);
    fputc('\n', fp_);
  }
  fflush(fp_);
}

/* ---------------------------------------------------------------------- default safety checks */

bool RateLimiter::record(bigint step, bigint n_atoms)
{
  ++steps_;
  atoms_ += n_atoms;
  if (reports_ > 0 && step - last_ < gap_) return false;
  if (reports_ > 0) gap_ = std::min<bigint>(2 * gap_, 10000);
  since_steps = steps_;
  since_atoms = atoms_;
  since_last = last_;
  ++reports_;
  last_ = step;
  steps_ = atoms_ = 0;
  return true;
}

static std::string since_text(const RateLimiter &r, const char *what)
{
  if (r.since_last < 0) return "";
  return fmt::format("; {} step(s) with {} ({} atom(s) in all) since the message on step {}", r.since_steps, what,
                     r.since_atoms, r.since_last);
}

std::string format_close_contact(bigint step, tagint a, tagint b, double distance, double ratio,
                                 const std::string &pair, double reference, bigint n_atoms, const RateLimiter &since,
                                 bool halt)
{
  const std::string head = fmt::format(
      "mlip_md close contact on step {}: atoms {} and {} are {:.3f} A apart, {:.2f} of the closest {} distance in "
      "training ({:.3f} A); {} atom(s) closer to a neighbour than in any training structure{}; the model is "
      "extrapolating there",
      step, a, b, distance, ratio, pair, reference, n_atoms, since_text(since, "close contacts"));
  if (halt)
    return head + ". Stopping (close_contact halt): check the structure and the time step, or use close_contact "
                  "warn to go on";
  return head + " (check the structure and the time step; close_contact halt stops, ignore silences this)";
}

std::string format_out_of_domain(bigint step, bigint n_atoms, const Extreme *t2, const Extreme *d_min,
                                 const RateLimiter &since)
{
  std::string parts;
  if (t2)
    parts += fmt::format("Mahalanobis T^2 {:.4g} > {:.4g} (largest in training) at atom {}", t2->value, t2->threshold,
                         t2->atom);
  if (d_min)
    parts += fmt::format("{}d_min {:.4g} > {:.4g} (largest held out) at atom {}", t2 ? ", " : "", d_min->value,
                         d_min->threshold, d_min->atom);
  return fmt::format("mlip_md out of domain on step {}: {} atom(s) beyond the training data: {}{}; predictions there "
                     "are extrapolations (ood_warnings off silences this)",
                     step, n_atoms, parts, since_text(since, "atoms out of domain"));
}

SafetyChecks::SafetyChecks(LAMMPS *lmp, const MonitorSettings &settings, const DomainLimits &domain) :
    Pointers(lmp), settings_(settings), domain_(domain)
{
}

void SafetyChecks::set_types(const std::vector<int> &type_to_z)
{
  table_ = ContactTable();
  if (settings_.close_contact == ContactAction::Ignore || domain_.pair_min_distances.empty()) return;
  const int stride = static_cast<int>(type_to_z.size());
  table_.stride = stride;
  table_.inv_sq.assign(static_cast<size_t>(stride) * stride, INFINITY);
  bool first = true, known = false;
  for (int ti = 1; ti < stride; ++ti)
    for (int tj = 1; tj < stride; ++tj) {
      if (type_to_z[ti] <= 0 || type_to_z[tj] <= 0) continue;
      const double r = domain_.pair_min_distance(type_to_z[ti], type_to_z[tj]);    // inf: never seen
      const double inv = std::isfinite(r) ? 1.0 / (r * r) : INFINITY;
      table_.inv_sq[static_cast<size_t>(ti) * stride + tj] = inv;
      known = known || std::isfinite(r);
      if (first) table_.uniform_inv_sq = inv;
      table_.uniform = table_.uniform && inv == table_.uniform_inv_sq;
      first = false;
    }
  if (!known) table_ = ContactTable();    // no pair seen in training: nothing to compare with
}

// Rare (a contact is present somewhere): the atoms in contact (edges of one centre are contiguous)
// over all ranks, returned, and the closest pair's tag i, tag j, distance, Z i, Z j in `pair` on
// every rank; collective.
bigint SafetyChecks::locate_contact(const EdgeBatch &batch, const int *type, const std::vector<int> &type_to_z,
                                    double pair[5])
{
  bigint count = 0;
  struct {
    double ratio_sq;
    int rank;
  } mine{INFINITY, comm->me}, best{};
  size_t worst = 0;
  int64_t counted = -1;
  const double *v = batch.vectors.data();
  for (size_t e = 0; e < batch.n_edges(); ++e) {
    const int64_t i = batch.src[e], j = batch.dst[e];
    const double q = (v[3 * e] * v[3 * e] + v[3 * e + 1] * v[3 * e + 1] + v[3 * e + 2] * v[3 * e + 2]) *
                     table_.at(type[i], type[j]);
    if (!(q < 1.0)) continue;
    if (i != counted) {
      ++count;
      counted = i;
    }
    if (q < mine.ratio_sq) {
      mine.ratio_sq = q;
      worst = e;
    }
  }
  MPI_Allreduce(&mine, &best, 1, MPI_DOUBLE_INT, MPI_MINLOC, world);
  bigint total = 0;
  MPI_Allreduce(&count, &total, 1, MPI_LMP_BIGINT, MPI_SUM, world);
  std::fill(pair, pair + 5, 0.0);
  if (comm->me == best.rank && std::isfinite(mine.ratio_sq)) {
    const int64_t i = batch.src[worst], j = batch.dst[worst];
    pair[0] = static_cast<double>(atom->tag[i]);
    pair[1] = static_cast<double>(atom->tag[j]);
    pair[2] = std::sqrt(v[3 * worst] * v[3 * worst] + v[3 * worst + 1] * v[3 * worst + 1] +
                        v[3 * worst + 2] * v[3 * worst + 2]);
    pair[3] = type_to_z[type[i]];
    pair[4] = type_to_z[type[j]];
  }
  MPI_Bcast(pair, 5, MPI_DOUBLE, best.rank, world);
  return total;
}

bool SafetyChecks::check_contacts(double closest, const EdgeBatch &batch, const int *type,
                                  const std::vector<int> &type_to_z)
{
  if (table_.empty()) return false;
  const bigint step = update->ntimestep;
  if (step == contact_step_) return contact_present_;    // once per step (minimizer line searches)
  contact_step_ = step;
  double global = INFINITY;
  MPI_Allreduce(&closest, &global, 1, MPI_DOUBLE, MPI_MIN, world);
  contact_present_ = global < 1.0;
  if (!contact_present_) return false;

  double pair[5];    // tag i, tag j, distance, Z i, Z j of the closest contact
  const bigint total = locate_contact(batch, type, type_to_z, pair);

  const bool halt = settings_.close_contact == ContactAction::Halt;
  if (!contacts_.record(step, total) && !halt) return true;
  // named in ID order (as mlip_md.safety names them in index order)
  const bool swap = pair[0] > pair[1];
  const tagint ta = static_cast<tagint>(pair[swap ? 1 : 0]), tb = static_cast<tagint>(pair[swap ? 0 : 1]);
  const int za = static_cast<int>(pair[swap ? 4 : 3]), zb = static_cast<int>(pair[swap ? 3 : 4]);
  const double reference = domain_.pair_min_distance(za, zb);
  const char *sa = element_symbol(za), *sb = element_symbol(zb);
  const std::string message =
      format_close_contact(step, ta, tb, pair[2], pair[2] / reference,
                           fmt::format("{}-{}", sa ? sa : "X", sb ? sb : "X"), reference, total, contacts_, halt);
  if (halt) error->all(FLERR, "pair_style mlip: " + message);
  if (comm->me == 0) error->warning(FLERR, message);
  return true;
}

void SafetyChecks::check_out_of_domain(const PerAtomMonitors &values, const std::vector<int> &type_to_z,
                                       bool contact)
{
  const double t2_max = domain_.mahalanobis_threshold(), d_max = domain_.d_min_threshold();    // inf: unknown
  if (!settings_.ood_warnings || contact || (std::isinf(t2_max) && std::isinf(d_max))) return;
  const bigint step = update->ntimestep;
  if (step == ood_step_) return;
  ood_step_ = step;
  // [0] T^2, [1] d_min: largest value above its threshold on this rank and where
  struct {
    double value;
    int rank;
  } mine[2] = {{-INFINITY, comm->me}, {-INFINITY, comm->me}}, best[2];
  int where[2] = {-1, -1};
  const double *signal[2] = {std::isinf(t2_max) ? nullptr : values.mahalanobis,
                             std::isinf(d_max) ? nullptr : values.d_min};
  const double limit[2] = {t2_max, d_max};
  bigint count = 0;
  for (int i = 0; i < atom->nlocal; ++i) {
    if (type_to_z[atom->type[i]] <= 0) continue;
    bool above = false;
    for (int k = 0; k < 2; ++k)
      if (signal[k] && signal[k][i] > limit[k]) {
        above = true;
        if (signal[k][i] > mine[k].value) {
          mine[k].value = signal[k][i];
          where[k] = i;
        }
      }
    count += above;
  }
  bigint total = 0;
  MPI_Allreduce(&count, &total, 1, MPI_LMP_BIGINT, MPI_SUM, world);
  if (total == 0) return;
  MPI_Allreduce(mine, best, 2, MPI_DOUBLE_INT, MPI_MAXLOC, world);
  bigint tags[2], tags_all[2];
  for (int k = 0; k < 2; ++k) tags[k] = (comm->me == best[k].rank && where[k] >= 0) ? atom->tag[where[k]] : 0;
  MPI_Allreduce(tags, tags_all, 2, MPI_LMP_BIGINT, MPI_SUM, world);
  if (!out_of_domain_.record(step, total)) return;
  const Extreme t2{best[0].value, t2_max, static_cast<tagint>(tags_all[0])};
  const Extreme dm{best[1].value, d_max, static_cast<tagint>(tags_all[1])};
  if (comm->me == 0)
    error->warning(FLERR, format_out_of_domain(step, total, std::isfinite(t2.value) ? &t2 : nullptr,
                                               std::isfinite(dm.value) ? &dm : nullptr, out_of_domain_));
}

std::string SafetyChecks::describe() const
{
  std::string text = "pair mlip: close contacts ";
  if (settings_.close_contact == ContactAction::Ignore) text += "not checked (close_contact ignore)";
  else if (table_.empty() && domain_.pair_min_distances.empty()) text += "not checked (the model has no pair_min_distance)";
  else text += fmt::format("checked every step (close_contact {})", contact_action_name(settings_.close_contact));
  text += "; out-of-domain atoms ";
  if (!settings_.ood_warnings) return text + "not checked (ood_warnings no)\n";
  const double t2_max = domain_.mahalanobis_threshold(), d_max = domain_.d_min_threshold();    // inf: unknown
  if (std::isinf(t2_max) && std::isinf(d_max)) return text + "not checked (no thresholds in the model)\n";
  std::string limits;
  if (!std::isinf(t2_max)) limits += fmt::format("T^2 > {:.4g}", t2_max);
  if (!std::isinf(d_max)) limits += fmt::format("{}d_min > {:.4g}", limits.empty() ? "" : ", ", d_max);
  const std::string when = settings_.ood_every > 0 ? fmt::format("every {} steps and ", settings_.ood_every) : "";
  return text + fmt::format("({}) warned about {}on steps with monitor values (ood_warnings yes)\n", limits, when);
}

}    // namespace MLIP
