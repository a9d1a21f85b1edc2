#include "mlip_monitor.h"

#include "mlip_model.h"    // element_symbol

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
    case Signal::ForceSigma: return "force_sigma";
    case Signal::Mahalanobis: return "mahalanobis";
    case Signal::DMin: return "d_min";
  }
  return "?";
}

int parse_monitor_keyword(LAMMPS *lmp, MonitorSettings &s, int narg, char **arg, int iarg)
{
  const std::string key = arg[iarg];
  auto need = [&](int n) {
    if (iarg + n >= narg)
      lmp->error->all(FLERR, "Illegal pair_style mlip command: keyword {} needs {} value(s)", key, n);
  };
  if (key == "uncertainty_every") {
    need(1);
    s.every = utils::inumeric(FLERR, arg[iarg + 1], false, lmp);
    if (s.every < 0) lmp->error->all(FLERR, "pair_style mlip: uncertainty_every must be >= 0");
    return 2;
  }
  if (key == "monitor") {
    need(1);
    const std::string v = arg[iarg + 1];
    if (v == "energy_sigma") s.signal = Signal::EnergySigma;
    else if (v == "force_sigma") s.signal = Signal::ForceSigma;
    else if (v == "mahalanobis") s.signal = Signal::Mahalanobis;
    else if (v == "d_min") s.signal = Signal::DMin;
    else
      lmp->error->all(FLERR,
                      "pair_style mlip: unknown monitor signal '{}'; use energy_sigma, force_sigma, "
                      "mahalanobis or d_min", v);
    return 2;
  }
  if (key == "dump_above") {
    need(3);
    s.dump = true;
    s.dump_above = utils::numeric(FLERR, arg[iarg + 1], false, lmp);
    if (strcmp(arg[iarg + 2], "file") != 0)
      lmp->error->all(FLERR, "pair_style mlip: expected 'dump_above X file FILE', got '{} {} {}'",
                      arg[iarg], arg[iarg + 1], arg[iarg + 2]);
    s.dump_file = arg[iarg + 3];
    return 4;
  }
  if (key == "halt_above") {
    need(1);
    s.halt = true;
    s.halt_above = utils::numeric(FLERR, arg[iarg + 1], false, lmp);
    return 2;
  }
  return 0;
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
    case Signal::ForceSigma: per_atom = values.force_sigma; break;
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

void Monitor::write_frame(const PerAtomMonitors &values, const std::vector<int> &type_to_z,
                          double value)
{
  // per atom: tag, Z, x, y, z, energy_sigma, force_sigma, mahalanobis, d_min
  const int width = 9;
  const int nlocal = atom->nlocal;
  std::vector<double> mine(static_cast<size_t>(nlocal) * width);
  double **x = atom->x;
  for (int i = 0; i < nlocal; ++i) {
    double *row = &mine[static_cast<size_t>(i) * width];
    row[0] = static_cast<double>(atom->tag[i]);
    row[1] = type_to_z[atom->type[i]];
    for (int d = 0; d < 3; ++d) row[2 + d] = x[i][d] - domain->boxlo[d];
    row[5] = values.energy_sigma ? values.energy_sigma[i] : NAN;
    row[6] = values.force_sigma ? values.force_sigma[i] : NAN;
    row[7] = values.mahalanobis ? values.mahalanobis[i] : NAN;
    row[8] = values.d_min ? values.d_min[i] : NAN;
  }
  const int have[4] = {values.energy_sigma != nullptr, values.force_sigma != nullptr,
                       values.mahalanobis != nullptr, values.d_min != nullptr};
  int have_all[4];
  MPI_Allreduce(have, have_all, 4, MPI_INT, MPI_MAX, world);

  int count = nlocal * width;
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
  MPI_Gatherv(mine.data(), count, MPI_DOUBLE, all.data(), counts.data(), offsets.data(), MPI_DOUBLE, 0,
              world);
  ++frames_written;
  if (comm->me != 0) return;

  const size_t natoms = all.size() / width;
  std::vector<size_t> order(natoms);
  for (size_t k = 0; k < natoms; ++k) order[k] = k;
  std::sort(order.begin(), order.end(),
            [&](size_t a, size_t b) { return all[a * width] < all[b * width]; });

  if (!fp_) {
    fp_ = fopen(path_.c_str(), "a");
    if (!fp_) error->one(FLERR, "pair_style mlip: cannot open dump file {}: {}", path_, utils::getsyserror());
  }
  const char *columns[4] = {"energy_sigma", "force_sigma", "mahalanobis", "d_min"};
  std::string properties = "species:S:1:pos:R:3";
  for (int c = 0; c < 4; ++c)
    if (have_all[c]) properties += fmt::format(":{}:R:1", columns[c]);
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
    const double *row = &all[k * width];
    const char *symbol = element_symbol(static_cast<int>(row[1]));
    std::string line = fmt::format("{:<3s} {:16.10f} {:16.10f} {:16.10f}", symbol ? symbol : "X", row[2],
                                   row[3], row[4]);
    for (int c = 0; c < 4; ++c)
      if (have_all[c]) line += fmt::format(" {:.10g}", row[5 + c]);
    fputs(line.c_str(), fp_);
    fputc('\n', fp_);
  }
  fflush(fp_);
}

}    // namespace MLIP
