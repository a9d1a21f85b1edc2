#include "mlip_options.h"

#include "error.h"
#include "utils.h"

#include <cstring>
#include <utility>

using namespace LAMMPS_NS;

namespace MLIP {

namespace {

// One keyword and the words after it.
struct Keyword {
  LAMMPS *lmp;
  int narg;
  char **arg;
  int iarg;

  std::string name() const { return arg[iarg]; }
  std::string value(int k = 1) const { return arg[iarg + k]; }
  bool has(int n) const { return iarg + n < narg; }
  void need(int n) const
  {
    if (!has(n)) lmp->error->all(FLERR, "Illegal pair_style mlip command: keyword {} needs {} value(s)", name(), n);
  }
  // the value among `choices` (word -> result), else error->all with `error` ({}: the value given)
  template <typename T>
  T choice(std::initializer_list<std::pair<const char *, T>> choices, const std::string &error) const
  {
    const std::string v = has(1) ? value() : "";
    for (const auto &c : choices)
      if (has(1) && v == c.first) return c.second;
    lmp->error->all(FLERR, error, v);
    return choices.begin()->second;
  }
  int integer(int at_least, const char *what) const
  {
    need(1);
    const int n = utils::inumeric(FLERR, arg[iarg + 1], false, lmp);
    if (n < at_least) lmp->error->all(FLERR, "pair_style mlip: {} must be >= {}{}", name(), at_least, what);
    return n;
  }
};

// device, fused, readout, dtype, threads; returns the words used, 0 for another keyword
int parse_model_keyword(const Keyword &k, PairOptions &o)
{
  const std::string key = k.name();
  if (key == "device") {
    if (!k.has(1)) k.lmp->error->all(FLERR, "Illegal pair_style mlip command: device needs a value");
    o.device = k.value();
  } else if (key == "fused") {
    o.model.fused = k.choice<ModelOptions::Fused>({{"yes", ModelOptions::Fused::Yes}, {"no", ModelOptions::Fused::No}},
                                                  "Illegal pair_style mlip command: fused needs yes or no");
  } else if (key == "readout") {
    o.model.native_readout = k.choice<bool>({{"native", true}, {"torchscript", false}},
                                            "Illegal pair_style mlip command: readout needs native or torchscript");
  } else if (key == "dtype") {
    o.model.dtype = k.choice<const char *>({{"float64", "float64"}, {"float32", "float32"}},
                                           "Illegal pair_style mlip command: dtype needs float64 or float32");
  } else if (key == "threads") {
    if (!k.has(1)) k.lmp->error->all(FLERR, "Illegal pair_style mlip command: threads needs a value");
    o.threads = utils::inumeric(FLERR, k.value().c_str(), false, k.lmp);
    if (o.threads < 1)
      k.lmp->error->all(FLERR, "Illegal pair_style mlip command: threads must be >= 1, got {}", o.threads);
  } else {
    return 0;
  }
  return 2;
}

// uncertainty_every, monitor, dump_above, halt_above; returns the words used, 0 for another keyword
int parse_monitor_keyword(const Keyword &k, MonitorSettings &s)
{
  const std::string key = k.name();
  if (key == "uncertainty_every") {
    s.every = k.integer(0, "");
  } else if (key == "monitor") {
    k.need(1);
    s.signal = k.choice<Signal>({{"energy_sigma", Signal::EnergySigma}, {"force_sigma", Signal::ForceSigmaMax},
                                 {"mahalanobis", Signal::Mahalanobis}, {"d_min", Signal::DMin}},
                                "pair_style mlip: unknown monitor signal '{}'; use energy_sigma, force_sigma, "
                                "mahalanobis or d_min");
  } else if (key == "dump_above") {
    k.need(3);
    s.dump = true;
    s.dump_above = utils::numeric(FLERR, k.value().c_str(), false, k.lmp);
    if (k.value(2) != "file")
      k.lmp->error->all(FLERR, "pair_style mlip: expected 'dump_above X file FILE', got '{} {} {}'", key, k.value(),
                        k.value(2));
    s.dump_file = k.value(3);
    return 4;
  } else if (key == "halt_above") {
    k.need(1);
    s.halt = true;
    s.halt_above = utils::numeric(FLERR, k.value().c_str(), false, k.lmp);
  } else {
    return 0;
  }
  return 2;
}

// close_contact, ood_warnings, ood_every; returns the words used, 0 for another keyword
int parse_safety_keyword(const Keyword &k, MonitorSettings &s)
{
  const std::string key = k.name();
  if (key == "close_contact") {
    k.need(1);
    s.close_contact = k.choice<ContactAction>(
        {{"warn", ContactAction::Warn}, {"halt", ContactAction::Halt}, {"ignore", ContactAction::Ignore}},
        "pair_style mlip: close_contact must be warn, halt or ignore, got '{}'");
  } else if (key == "ood_warnings") {
    k.need(1);
    s.ood_warnings = utils::logical(FLERR, k.value().c_str(), false, k.lmp) == 1;
  } else if (key == "ood_every") {
    s.ood_every = k.integer(0, " (0: only on steps with monitor values)");
  } else {
    return 0;
  }
  return 2;
}

}    // namespace

PairOptions parse_pair_options(LAMMPS *lmp, int narg, char **arg)
{
  if (narg < 1)
    lmp->error->all(FLERR,
                    "Illegal pair_style mlip command: expected pair_style mlip model.pt [device cpu|cuda] "
                    "[fused yes|no] [readout native|torchscript] [dtype float64|float32] [uncertainty_every N] "
                    "[monitor SIGNAL] [dump_above X file F] [halt_above Y] [close_contact warn|halt|ignore] "
                    "[ood_warnings yes|no] [ood_every N] [threads N]");
  PairOptions options;
  options.model_path = arg[0];
  for (int iarg = 1; iarg < narg;) {
    const Keyword k{lmp, narg, arg, iarg};
    int used = parse_model_keyword(k, options);
    if (!used) used = parse_monitor_keyword(k, options.monitor);
    if (!used) used = parse_safety_keyword(k, options.monitor);
    if (!used)
      lmp->error->all(FLERR,
                      "Illegal pair_style mlip command: unknown keyword '{}' (known: device, fused, readout, dtype, "
                      "uncertainty_every, monitor, dump_above, halt_above, close_contact, ood_warnings, ood_every, "
                      "threads)", arg[iarg]);
    iarg += used;
  }
  return options;
}

}    // namespace MLIP
