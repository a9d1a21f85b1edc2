#include "compute_mlip_atom.h"

#include "atom.h"
#include "error.h"
#include "force.h"
#include "memory.h"
#include "update.h"
#include "utils.h"

#include <cstring>

using namespace LAMMPS_NS;

static constexpr int NCOLUMNS = 6;

ComputeMLIPAtom::ComputeMLIPAtom(LAMMPS *lmp, int narg, char **arg) :
    Compute(lmp, narg, arg), force_sigma(false), nmax(0), values(nullptr), pair(nullptr)
{
  int iarg = 3;
  while (iarg < narg) {
    if (strcmp(arg[iarg], "force_sigma") == 0 && iarg + 1 < narg) {
      force_sigma = utils::logical(FLERR, arg[iarg + 1], false, lmp) == 1;
      iarg += 2;
    } else {
      error->all(FLERR, "Illegal compute mlip/atom command: unknown keyword '{}' (usage: compute ID "
                        "group mlip/atom [force_sigma yes|no])", arg[iarg]);
    }
  }
  peratom_flag = 1;
  size_peratom_cols = NCOLUMNS;
  timeflag = 1;    // lets pair_style mlip see the steps this compute will be invoked on
}

ComputeMLIPAtom::~ComputeMLIPAtom()
{
  memory->destroy(values);
}

void ComputeMLIPAtom::init()
{
  pair = dynamic_cast<PairMLIP *>(force->pair_match("mlip", 1));
  if (!pair) error->all(FLERR, "compute mlip/atom requires pair_style mlip");
}

void ComputeMLIPAtom::compute_peratom()
{
  invoked_peratom = update->ntimestep;
  if (atom->nmax > nmax) {
    memory->destroy(values);
    nmax = atom->nmax;
    memory->create(values, nmax, NCOLUMNS, "mlip/atom:values");
    array_atom = values;
  }
  pair->ensure_monitors(force_sigma);    // re-evaluates only if this step lacks the values
  const MLIP::PerAtomMonitors m = pair->monitors();
  const double *columns[NCOLUMNS] = {m.energy_sigma, m.force_sigma_max, m.mahalanobis,
                                     m.d_min,        pair->min_distance(), pair->min_distance_ratio()};
  const int *mask = atom->mask;
  for (int i = 0; i < atom->nlocal; ++i)
    for (int c = 0; c < NCOLUMNS; ++c)
      values[i][c] = (mask[i] & groupbit) && columns[c] ? columns[c][i] : 0.0;
}

double ComputeMLIPAtom::memory_usage()
{
  return static_cast<double>(nmax) * NCOLUMNS * sizeof(double);
}
