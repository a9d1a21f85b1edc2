#include "pair_mlip.h"

#include "compute_mlip_atom.h"
#include "mlip_convert.h"
#include "mlip_process.h"

#include "atom.h"
#include "comm.h"
#include "error.h"
#include "force.h"
#include "memory.h"
#include "modify.h"
#include "neigh_list.h"
#include "neighbor.h"
#include "update.h"
#include "utils.h"

#include <cmath>
#include <cstring>
#include <exception>

using namespace LAMMPS_NS;

PairMLIP::PairMLIP(LAMMPS *lmp) :
    Pair(lmp), cutoff(0.0), closest_contact(INFINITY), nmax_monitor(0), mon_energy_sigma(nullptr),
    mon_force_sigma(nullptr), mon_mahalanobis(nullptr), mon_d_min(nullptr), mon_min_distance(nullptr),
    mon_min_ratio(nullptr),
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

/* pair_style mlip model.pt [keywords] */

void PairMLIP::settings(int narg, char **arg)
{
  if (strcmp(update->unit_style, "metal") != 0)
    error->all(FLERR,
               "pair_style mlip requires units metal (Angstrom, eV, ps): mlip_md models are in "
               "Angstrom and eV, but this input uses units {}", update->unit_style);
  if (narg < 1)
    error->all(FLERR,
               "Illegal pair_style mlip command: expected pair_style mlip model.pt [device cpu|cuda] "
               "[fused yes|no] [readout native|torchscript] [dtype float64|float32] [uncertainty_every N] [monitor SIGNAL] "
               "[dump_above X file F] [halt_above Y] [close_contact warn|halt|ignore] [ood_warnings yes|no] "
               "[ood_every N] [threads N]");
  model_path = arg[0];
  device = "cpu";
  MLIP::ModelOptions options;
  int threads = 0;    // 0: OMP_NUM_THREADS if set, else 1 per rank
  monitor_settings = MLIP::MonitorSettings();
  int iarg = 1;
  while (iarg < narg) {
    if (strcmp(arg[iarg], "device") == 0) {
      if (iarg + 1 >= narg) error->all(FLERR, "Illegal pair_style mlip command: device needs a value");
      device = arg[iarg + 1];
      iarg += 2;
      continue;
    }
    if (strcmp(arg[iarg], "fused") == 0) {
      if (iarg + 1 >= narg || (strcmp(arg[iarg + 1], "yes") != 0 && strcmp(arg[iarg + 1], "no") != 0))
        error->all(FLERR, "Illegal pair_style mlip command: fused needs yes or no");
      options.fused = strcmp(arg[iarg + 1], "yes") == 0 ? MLIP::ModelOptions::Fused::Yes
                                                         : MLIP::ModelOptions::Fused::No;
      iarg += 2;
      continue;
    }
    if (strcmp(arg[iarg], "readout") == 0) {
      if (iarg + 1 >= narg || (strcmp(arg[iarg + 1], "native") != 0 && strcmp(arg[iarg + 1], "torchscript") != 0))
        error->all(FLERR, "Illegal pair_style mlip command: readout needs native or torchscript");
      options.native_readout = strcmp(arg[iarg + 1], "native") == 0;
      iarg += 2;
      continue;
    }
    if (strcmp(arg[iarg], "threads") == 0) {
      if (iarg + 1 >= narg) error->all(FLERR, "Illegal pair_style mlip command: threads needs a value");
      threads = utils::inumeric(FLERR, arg[iarg + 1], false, lmp);
      if (threads < 1) error->all(FLERR, "Illegal pair_style mlip command: threads must be >= 1, got {}", threads);
      iarg += 2;
      continue;
    }
    if (strcmp(arg[iarg], "dtype") == 0) {
      if (iarg + 1 >= narg || (strcmp(arg[iarg + 1], "float64") != 0 && strcmp(arg[iarg + 1], "float32") != 0))
        error->all(FLERR, "Illegal pair_style mlip command: dtype needs float64 or float32");
      options.dtype = arg[iarg + 1];
      iarg += 2;
      continue;
    }
    const int used = MLIP::parse_monitor_keyword(lmp, monitor_settings, narg, arg, iarg);
    if (used == 0)
      error->all(FLERR,
                 "Illegal pair_style mlip command: unknown keyword '{}' (known: device, fused, readout, dtype, "
                 "uncertainty_every, monitor, dump_above, halt_above, close_contact, ood_warnings, ood_every, threads)",
                 arg[iarg]);
    iarg += used;
  }

  std::string process;    // threads and malloc, set before the model loads
  try {
    process = MLIP::configure_threads(threads) + ", malloc " + MLIP::keep_freed_memory();
    model.load(model_path, device, options);
  } catch (std::exception &e) {
    error->all(FLERR, "pair_style mlip: {}", e.what());
  }
  const MLIP::ModelInfo &info = model.info();
  cutoff = info.cutoff;
  comm_reverse = 3 * info.ensemble_size;
  monitor = std::make_unique<MLIP::Monitor>(lmp, monitor_settings);
  safety = std::make_unique<MLIP::SafetyChecks>(lmp, monitor_settings, model.info());
  closest_contact = INFINITY;
  monitor_step = -1;
  if (allocated)    // a new model: the type map must be given again
    for (int i = 0; i <= atom->ntypes; ++i)
      for (int j = 0; j <= atom->ntypes; ++j) setflag[i][j] = 0;

  if (comm->me == 0) {
    const std::string dtype = model.dtype() == info.dtype ? info.dtype : model.dtype() + " (stored " + info.dtype + ")";
    utils::logmesg(lmp, "pair mlip: model {} (elements {}, cutoff {} A, {}, {} member(s)) on {}{}; {}\n",
                   model_path, info.element_list(), info.cutoff, dtype, info.ensemble_size, device,
                   model.compiled()         ? ", compiled graphs"
                   : model.native_readout() ? ", fused descriptor kernel and C readout"
                   : model.fused()          ? ", fused descriptor kernel"
                                            : "",
                   process);
    const int every = monitor_settings.effective_every();
    if (every > 0)
      utils::logmesg(lmp, "pair mlip: monitoring {} every {} step(s){}{}\n",
                     MLIP::signal_name(monitor_settings.signal), every,
                     monitor_settings.dump ? fmt::format(", dump above {:g}", monitor_settings.dump_above) : "",
                     monitor_settings.halt ? fmt::format(", halt above {:g}", monitor_settings.halt_above) : "");
    utils::logmesg(lmp, safety->describe());
  }
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
                 symbol, t, model_path, info.element_list());
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
                   model.fused() ? fmt::format("; of the model time, fused descriptor kernel {:.4g} s",
                                               all[3] / comm->nprocs) : "");
}

/* which optional model outputs this step needs: monitors (energy sigma, T^2, d_min),
   per-member forces (force sigma), and whether the monitor thresholds are checked */

void PairMLIP::demand(bool &monitors, bool &force_sigma, bool &check)
{
  const bigint step = update->ntimestep;
  check = monitor_settings.due(step);
  monitors = check || monitor_settings.ood_due(step);
  force_sigma = check && monitor_settings.signal == MLIP::Signal::ForceSigma;
  for (Compute *c : modify->get_compute_by_style("mlip/atom")) {
    auto *peratom = dynamic_cast<ComputeMLIPAtom *>(c);
    if (peratom && c->matchstep(step)) {
      monitors = true;
      force_sigma = force_sigma || peratom->wants_force_sigma();
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
  if (ran) {
    const MLIP::Tally tally = MLIP::write_results(batch, out, atom->type, type_to_z, atom->f,
                                                  eflag_atom ? eatom : nullptr, vflag_global,
                                                  vflag_atom ? vatom : nullptr);
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
  if (!update->setupflag) time_convert += MPI_Wtime() - start;
  const bool contact = safety->check_contacts(closest_contact, batch, atom->type, type_to_z);
  if (want_monitors) safety->check_out_of_domain(monitors(), type_to_z, contact);
  if (check) monitor->check(monitors(), type_to_z);
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
      out = model.evaluate(batch, monitors, force_sigma, vflag_atom != 0, vflag_global != 0);
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
    memory->grow(mon_force_sigma, nmax_monitor, "pair:mon_force_sigma");
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
    const int n_members = model.info().ensemble_size;
    const int nall = nlocal + atom->nghost;
    if (atom->nmax > nmax_members) {
      nmax_members = atom->nmax;
      memory->destroy(member_f);
      memory->create(member_f, nmax_members, 3 * n_members, "pair:member_f");
    }
    if (out.member_edge_grad) {
      MLIP::member_forces(batch, out, nall, member_f);
    } else {
      for (int i = 0; i < nall; ++i)
        for (int c = 0; c < 3 * n_members; ++c) member_f[i][c] = 0.0;
    }
    comm->reverse_comm(this);    // ghost contributions to their owners
    MLIP::force_sigma_from_members(member_f, nlocal, n_members,
                                   std::sqrt(model.info().force_variance_scale), mon_force_sigma);
  } else {
    copy(nullptr, mon_force_sigma);
  }
  monitor_has_force_sigma = force_sigma;
  monitor_step = update->ntimestep;
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
  bytes += 6.0 * nmax_monitor * sizeof(double);
  bytes += 3.0 * model.info().ensemble_size * nmax_members * sizeof(double);
  bytes += batch.species.capacity() * sizeof(int64_t);
  bytes += (batch.src.capacity() + batch.dst.capacity()) * sizeof(int64_t);
  bytes += batch.vectors.capacity() * sizeof(double);
  return bytes;
}
