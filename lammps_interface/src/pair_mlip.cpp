#include "pair_mlip.h"

#include "mlip_convert.h"
#include "mlip_process.h"

#include "atom.h"
#include "comm.h"
#include "compute.h"
#include "error.h"
#include "force.h"
#include "memory.h"
#include "modify.h"
#include "neigh_list.h"
#include "neighbor.h"
#include "update.h"
#include "utils.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <exception>

using namespace LAMMPS_NS;

PairMLIP::PairMLIP(LAMMPS *lmp) :
    Pair(lmp), closest_contact(INFINITY), cutoff(0.0), nmax_monitor(0), mon_energy_sigma(nullptr),
    mon_force_sigma_max(nullptr), mon_mahalanobis(nullptr), mon_d_min(nullptr), mon_force_sigma(nullptr),
    mon_min_distance(nullptr), mon_min_ratio(nullptr),
    monitor_step(-1), monitor_has_force_sigma(false), monitor_has_d_min(false), nmax_members(0),
    member_f(nullptr), time_model(0.0), time_convert(0.0), time_kernel(0.0), time_edges(0.0), model_calls(0)
{
  single_enable = 0;
  restartinfo = 0;
  one_coeff = 1;
  manybody_flag = 1;
  no_virial_fdotr_compute = 1;    // virial straight from the edge gradients
  comm_reverse = 0;               // 3K while force sigma is reverse-communicated
}

PairMLIP::~PairMLIP()
{
  if (copymode) return;
  memory->destroy(mon_energy_sigma);
  memory->destroy(mon_force_sigma);
  memory->destroy(mon_force_sigma_max);
  memory->destroy(mon_mahalanobis);
  memory->destroy(mon_d_min);
  memory->destroy(mon_min_distance);
  memory->destroy(mon_min_ratio);
  memory->destroy(member_f);
  if (allocated) {
    memory->destroy(setflag);
    memory->destroy(cutsq);
  }
}

void PairMLIP::allocate()
{
  allocated = 1;
  const int n = atom->ntypes + 1;
  memory->create(setflag, n, n, "pair:setflag");
  memory->create(cutsq, n, n, "pair:cutsq");
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j) setflag[i][j] = 0;
  type_to_z.assign(n, 0);
}

/* pair_style mlip model.pt [keywords] (mlip_options) */

void PairMLIP::settings(int narg, char **arg)
{
  if (strcmp(update->unit_style, "metal") != 0)
    error->all(FLERR,
               "pair_style mlip requires units metal (Angstrom, eV, ps): mlip_md models are in "
               "Angstrom and eV, but this input uses units {}", update->unit_style);
  options = MLIP::parse_pair_options(lmp, narg, arg);
  std::string process;    // threads and malloc, set before the model loads
  try {
    process = MLIP::configure_threads(options.threads) + ", malloc " + MLIP::keep_freed_memory();
    model.load(options.model_path, options.device, options.model);
  } catch (std::exception &e) {
    error->all(FLERR, "pair_style mlip: {}", e.what());
  }
  const MLIP::ModelInfo &info = model.info();
  cutoff = info.cutoff;
  comm_reverse = 3 * info.ensemble_size;
  monitor = std::make_unique<MLIP::Monitor>(lmp, options.monitor);
  safety = std::make_unique<MLIP::SafetyChecks>(lmp, options.monitor, info.domain);
  closest_contact = INFINITY;
  monitor_step = -1;
  if (allocated)    // a new model: the type map must be given again
    for (int i = 0; i <= atom->ntypes; ++i)
      for (int j = 0; j <= atom->ntypes; ++j) setflag[i][j] = 0;
  if (comm->me == 0) log_setup(process);
}

/* the model, its backend and why, the monitors and the safety checks, in the log */

void PairMLIP::log_setup(const std::string &process)
{
  const MLIP::ModelInfo &info = model.info();
  const std::string dtype =
      info.dtype == info.stored_dtype ? info.dtype : info.dtype + " (stored " + info.stored_dtype + ")";
  utils::logmesg(lmp, "pair mlip: model {} (elements {}, cutoff {} A, {}, {} member(s)) on {}, {}; {}\n",
                 options.model_path, info.element_list(), info.cutoff, dtype, info.ensemble_size, options.device,
                 model.capabilities().description, process);
  utils::logmesg(lmp, "pair mlip: backend {}\n", model.choice());
  const MLIP::MonitorSettings &m = options.monitor;
  const int every = m.effective_every();
  if (every > 0)
    utils::logmesg(lmp, "pair mlip: monitoring {} every {} step(s){}{}\n", MLIP::signal_name(m.signal), every,
                   m.dump ? fmt::format(", dump above {:g}", m.dump_above) : "",
                   m.halt ? fmt::format(", halt above {:g}", m.halt_above) : "");
  utils::logmesg(lmp, safety->describe());
}

/* pair_coeff * * El1 El2 ... (one element symbol or NULL per atom type) */

void PairMLIP::coeff(int narg, char **arg)
{
  if (!model.loaded()) error->all(FLERR, "pair_coeff for pair_style mlip before a model was loaded");
  if (!allocated) allocate();
  const int ntypes = atom->ntypes;
  if (narg < 2 || strcmp(arg[0], "*") != 0 || strcmp(arg[1], "*") != 0)
    error->all(FLERR, "pair_coeff for pair_style mlip must be 'pair_coeff * * El1 El2 ...' "
                      "with one element per atom type");
  if (narg != 2 + ntypes)
    error->all(FLERR,
               "pair_coeff * * for pair_style mlip needs one element per atom type: the box has {} "
               "atom type(s) but {} element(s) were given", ntypes, narg - 2);
  const MLIP::ModelInfo &info = model.info();
  for (int t = 1; t <= ntypes; ++t) {
    const std::string symbol = arg[1 + t];
    if (symbol == "NULL") {
      type_to_z[t] = 0;
      continue;
    }
    const int z = MLIP::atomic_number(symbol);
    if (z == 0)
      error->all(FLERR, "pair_coeff: '{}' (atom type {}) is not an element symbol", symbol, t);
    if (!info.knows(z))
      error->all(FLERR,
                 "pair_coeff: element {} (atom type {}) is unknown to model {}; it was trained on {}. "
                 "Use a model trained on this element or map the type to a known one",
                 symbol, t, options.model_path, info.element_list());
    type_to_z[t] = z;
  }
  int count = 0;
  for (int i = 1; i <= ntypes; ++i)
    for (int j = i; j <= ntypes; ++j)
      if (type_to_z[i] > 0 && type_to_z[j] > 0) {
        setflag[i][j] = 1;
        ++count;
      }
  if (count == 0) error->all(FLERR, "pair_coeff * * for pair_style mlip maps every type to NULL");
  safety->set_types(type_to_z);
}

void PairMLIP::init_style()
{
  if (strcmp(update->unit_style, "metal") != 0)
    error->all(FLERR, "pair_style mlip requires units metal, but this input uses units {}",
               update->unit_style);
  if (force->newton_pair == 0)
    error->all(FLERR,
               "pair_style mlip requires newton pair on: forces on ghost atoms are reverse-"
               "communicated (remove 'newton off' from the input)");
  if (atom->tag_enable == 0) error->all(FLERR, "pair_style mlip requires atom IDs");
  neighbor->add_request(this, NeighConst::REQ_FULL);
}

double PairMLIP::init_one(int, int)
{
  return cutoff;
}

void PairMLIP::setup()
{
  // ghost atoms must cover the model's cutoff, or atoms near sub-domain borders and
  // periodic images would miss neighbours silently
  const double comm_cutoff = comm->get_comm_cutoff();
  if (cutoff > comm_cutoff * (1.0 + 1e-12) || cutoff > neighbor->cutneighmax * (1.0 + 1e-12))
    error->all(FLERR,
               "pair_style mlip: the model cutoff {:g} A is longer than the communication cutoff "
               "{:g} A (neighbor cutoff {:g} A); ghost atoms would miss neighbours. Increase it with "
               "comm_modify cutoff {:g}", cutoff, comm_cutoff, neighbor->cutneighmax,
               cutoff + neighbor->skin);
  time_model = time_convert = time_kernel = time_edges = 0.0;
  model_calls = 0;
}

/* after each run/minimize: where the pair time went (average over ranks) */

void PairMLIP::finish()
{
  double mine[5] = {time_model, time_convert, static_cast<double>(model_calls), time_kernel, time_edges}, all[5];
  MPI_Allreduce(mine, all, 5, MPI_DOUBLE, MPI_SUM, world);
  if (comm->me == 0 && all[2] > 0)
    utils::logmesg(lmp,
                   "pair mlip: {:.0f} model call(s) per rank, model {:.4g} s, LAMMPS <-> model conversion "
                   "{:.4g} s (building edges {:.4g} s) per rank (average over {} rank(s)){}\n",
                   all[2] / comm->nprocs, all[0] / comm->nprocs, all[1] / comm->nprocs, all[4] / comm->nprocs,
                   comm->nprocs,
                   model.capabilities().kind == "fused"
                       ? fmt::format("; of the model time, fused descriptor kernel {:.4g} s", all[3] / comm->nprocs)
                       : "");
}

/* which optional model outputs this step needs: monitors (energy sigma, T^2, d_min),
   per-member forces (force sigma), and whether the monitor thresholds are checked */

void PairMLIP::demand(bool &monitors, bool &force_sigma, bool &check)
{
  const bigint step = update->ntimestep;
  const MLIP::MonitorSettings &m = options.monitor;
  check = m.due(step);
  monitors = check || m.ood_due(step);
  force_sigma = check && m.signal == MLIP::Signal::ForceSigmaMax;
  for (Compute *c : modify->get_compute_list()) {
    auto *reader = dynamic_cast<MLIPMonitorReader *>(c);
    if (reader && reader->reads_monitors_on(step)) {
      monitors = true;
      force_sigma = force_sigma || reader->reads_force_sigma();
    }
  }
}

void PairMLIP::compute(int eflag, int vflag)
{
  ev_init(eflag, vflag);
  bool want_monitors, want_force_sigma, check;
  demand(want_monitors, want_force_sigma, check);

  bool ran = false;
  const MLIP::ModelOutput out = run_model(want_monitors, want_force_sigma, ran);
  const double start = MPI_Wtime();
  if (ran) write_forces(out);
  if (!update->setupflag) time_convert += MPI_Wtime() - start;
  const bool contact = safety->check_contacts(closest_contact, batch, atom->type, type_to_z);
  if (want_monitors) safety->check_out_of_domain(monitors(), type_to_z, contact);
  if (check) monitor->check(monitors(), type_to_z);
}

/* energies, forces and virials of the model call into LAMMPS's arrays */

void PairMLIP::write_forces(const MLIP::ModelOutput &out)
{
  MLIP::Tally tally;
  try {
    tally = MLIP::write_results(batch, out, atom->type, type_to_z, atom->f, eflag_atom ? eatom : nullptr,
                                vflag_global, vflag_atom ? vatom : nullptr);
  } catch (std::exception &e) {
    error->one(FLERR, "pair_style mlip: {} (step {})", e.what(), update->ntimestep);
  }
  if (tally.bad_atom >= 0)
    error->one(FLERR,
               "pair_style mlip: the model returned a non-finite (NaN or Inf) energy or force for "
               "atom {} on step {}; the structure is broken (overlapping atoms or an exploded run: "
               "check the time step) or far outside the model's training domain",
               atom->tag[tally.bad_atom], update->ntimestep);
  if (eflag_global) eng_vdwl += tally.energy;
  if (vflag_global)
    for (int c = 0; c < 6; ++c) virial[c] += tally.virial[c];
}

/* build the edges, call the model, keep monitor values; collective when force_sigma */

MLIP::ModelOutput PairMLIP::run_model(bool monitors, bool force_sigma, bool &ran)
{
  const int nlocal = atom->nlocal;
  const int nall = nlocal + atom->nghost;
  const MLIP::NeighView view{list->inum, list->ilist, list->numneigh, list->firstneigh};
  double start = MPI_Wtime();
  closest_contact = MLIP::build_batch(atom->x, atom->type, nlocal, nall, view, type_to_z,
                                      model.info().atomic_numbers.front(), cutoff * cutoff, safety->table(), batch);
  const bool timed = !update->setupflag;    // finish() reports the steps of the run only
  if (timed) {
    const double spent = MPI_Wtime() - start;
    time_convert += spent;
    time_edges += spent;
  }
  MLIP::ModelOutput out;
  ran = false;
  if (nlocal > 0) {
    start = MPI_Wtime();
    try {
      out = model.evaluate(batch, {monitors, force_sigma, vflag_atom != 0, vflag_global != 0});
    } catch (std::exception &e) {
      error->one(FLERR, "pair_style mlip: {} (step {})", e.what(), update->ntimestep);
    }
    if (timed) {
      time_model += MPI_Wtime() - start;
      time_kernel += model.kernel_seconds();
      ++model_calls;
    }
    if (out.n_members != model.info().ensemble_size)
      error->one(FLERR, "pair_style mlip: the model returned {} ensemble member(s), its metadata says {}",
                 out.n_members, model.info().ensemble_size);
    ran = true;
  }
  if (monitors) store_monitors(out, force_sigma);
  return out;
}

void PairMLIP::store_monitors(const MLIP::ModelOutput &out, bool force_sigma)
{
  const int nlocal = atom->nlocal;
  if (atom->nmax > nmax_monitor) {
    nmax_monitor = atom->nmax;
    memory->grow(mon_energy_sigma, nmax_monitor, "pair:mon_energy_sigma");
    memory->grow(mon_force_sigma, nmax_monitor, 3, "pair:mon_force_sigma");
    memory->grow(mon_force_sigma_max, nmax_monitor, "pair:mon_force_sigma_max");
    memory->grow(mon_mahalanobis, nmax_monitor, "pair:mon_mahalanobis");
    memory->grow(mon_d_min, nmax_monitor, "pair:mon_d_min");
    memory->grow(mon_min_distance, nmax_monitor, "pair:mon_min_distance");
    memory->grow(mon_min_ratio, nmax_monitor, "pair:mon_min_ratio");
  }
  auto copy = [nlocal](const double *from, double *to) {
    for (int i = 0; i < nlocal; ++i) to[i] = from ? from[i] : 0.0;
  };
  copy(out.energy_sigma, mon_energy_sigma);
  copy(out.mahalanobis, mon_mahalanobis);
  copy(out.d_min, mon_d_min);
  copy(out.min_distance, mon_min_distance);
  copy(out.min_distance_ratio, mon_min_ratio);
  monitor_has_d_min = out.d_min != nullptr;
  if (force_sigma) {
    store_force_sigma(out);
  } else {
    copy(nullptr, mon_force_sigma_max);
    if (nlocal > 0) std::fill(mon_force_sigma[0], mon_force_sigma[0] + 3 * nlocal, 0.0);
  }
  monitor_has_force_sigma = force_sigma;
  monitor_step = update->ntimestep;
}

/* force sigma [nlocal][3] and its per-atom max from the members' forces; collective (the
   ghosts' member forces are reverse-communicated to their owners) */

void PairMLIP::store_force_sigma(const MLIP::ModelOutput &out)
{
  const int n_members = model.info().ensemble_size;
  const int nall = atom->nlocal + atom->nghost;
  if (atom->nmax > nmax_members) {
    nmax_members = atom->nmax;
    memory->destroy(member_f);
    memory->create(member_f, nmax_members, 3 * n_members, "pair:member_f");
  }
  if (out.member_edge_grad)
    MLIP::member_forces(batch, out, nall, member_f);
  else if (nall > 0)    // no model call on this rank (no owned atoms): its ghosts add nothing
    std::fill(member_f[0], member_f[0] + static_cast<size_t>(nall) * 3 * n_members, 0.0);
  comm->reverse_comm(this);
  MLIP::force_sigma_from_members(member_f, atom->nlocal, n_members,
                                 std::sqrt(model.info().calibration.force_variance_scale), mon_force_sigma,
                                 mon_force_sigma_max);
}

void PairMLIP::ensure_monitors(bool need_force_sigma)
{
  if (monitor_step == update->ntimestep && (monitor_has_force_sigma || !need_force_sigma)) return;
  bool ran = false;
  run_model(true, need_force_sigma, ran);
  safety->check_out_of_domain(monitors(), type_to_z, safety->contact_on(update->ntimestep));
}

MLIP::PerAtomMonitors PairMLIP::monitors() const
{
  MLIP::PerAtomMonitors m;
  m.energy_sigma = mon_energy_sigma;
  m.mahalanobis = mon_mahalanobis;
  m.force_sigma = monitor_has_force_sigma ? mon_force_sigma : nullptr;
  m.force_sigma_max = monitor_has_force_sigma ? mon_force_sigma_max : nullptr;
  m.d_min = monitor_has_d_min ? mon_d_min : nullptr;
  return m;
}

int PairMLIP::pack_reverse_comm(int n, int first, double *buf)
{
  const int width = 3 * model.info().ensemble_size;
  int m = 0;
  for (int i = first; i < first + n; ++i)
    for (int c = 0; c < width; ++c) buf[m++] = member_f[i][c];
  return m;
}

void PairMLIP::unpack_reverse_comm(int n, int *list_, double *buf)
{
  const int width = 3 * model.info().ensemble_size;
  int m = 0;
  for (int k = 0; k < n; ++k)
    for (int c = 0; c < width; ++c) member_f[list_[k]][c] += buf[m++];
}

double PairMLIP::memory_usage()
{
  double bytes = Pair::memory_usage();
  bytes += 9.0 * nmax_monitor * sizeof(double);
  bytes += 3.0 * model.info().ensemble_size * nmax_members * sizeof(double);
  bytes += batch.species.capacity() * sizeof(int64_t);
  bytes += (batch.src.capacity() + batch.dst.capacity()) * sizeof(int64_t);
  bytes += batch.vectors.capacity() * sizeof(double);
  return bytes;
}
