// Registration of pair_style mlip and compute mlip/atom with LAMMPS's `plugin load`.
//
// LAMMPS calls the C function lammpsplugin_init(lmp, handle, regfunc) of the shared object
// and expects one registration call per style with a small record (see the LAMMPS manual,
// "Writing plugins"). The record is declared here: this plugin does not need LAMMPS sources.
// The file LAMMPS opens is the loader (plugin_loader.cpp), which calls mlip_lammpsplugin_init
// of this library with the same arguments.
#include "compute_mlip_atom.h"
#include "pair_mlip.h"

#include "lammps.h"

using namespace LAMMPS_NS;

extern "C" {

typedef void *(mlip_plugin_factory1)(void *lmp);
typedef void *(mlip_plugin_factory2)(void *lmp, int argc, char **argv);

// same layout as LAMMPS's plugin record
struct mlip_plugin_record {
  const char *version;    // LAMMPS version the plugin was compiled for
  const char *style;      // "pair", "compute", ...
  const char *name;       // style name in input scripts
  const char *info;
  const char *author;
  union {
    mlip_plugin_factory1 *v1;    // pair, bond, ... : constructor(lmp)
    mlip_plugin_factory2 *v2;    // compute, fix, ... : constructor(lmp, argc, argv)
  } creator;
  void *handle;
};

typedef void (*mlip_plugin_register)(mlip_plugin_record *, void *lmp);

void mlip_lammpsplugin_init(void *lmp, void *handle, void *regfunc);
}

static void *make_pair_mlip(void *lmp)
{
  return new PairMLIP(static_cast<LAMMPS *>(lmp));
}

static void *make_compute_mlip_atom(void *lmp, int argc, char **argv)
{
  return new ComputeMLIPAtom(static_cast<LAMMPS *>(lmp), argc, argv);
}

#ifndef MLIP_LAMMPS_VERSION
#define MLIP_LAMMPS_VERSION nullptr
#endif

void mlip_lammpsplugin_init(void *lmp, void *handle, void *regfunc)
{
  auto do_register = reinterpret_cast<mlip_plugin_register>(regfunc);
  // the LAMMPS version this was compiled against (LAMMPS warns on a mismatch); when the
  // build could not determine it, the running version is used
  const char *version = MLIP_LAMMPS_VERSION;
  if (!version) version = static_cast<LAMMPS *>(lmp)->version;

  mlip_plugin_record pair{};
  pair.version = version;
  pair.style = "pair";
  pair.name = "mlip";
  pair.info = "mlip_md exported model (TorchScript) pair style with uncertainty monitors";
  pair.author = "mlip_md";
  pair.creator.v1 = &make_pair_mlip;
  pair.handle = handle;
  do_register(&pair, lmp);

  mlip_plugin_record compute{};
  compute.version = version;
  compute.style = "compute";
  compute.name = "mlip/atom";
  compute.info = "per-atom uncertainty and domain monitors of pair_style mlip";
  compute.author = "mlip_md";
  compute.creator.v2 = &make_compute_mlip_atom;
  compute.handle = handle;
  do_register(&compute, lmp);
}
