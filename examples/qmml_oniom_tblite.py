"""Subtractive ONIOM with GFN2-xTB (tblite) as the high level: ethanol, QM region = the CH2OH
end, the cut C-C bond capped with a hydrogen link atom; low level EMT (ASE's toy parameters for
C, H, O -- a stand-in for a real force field or an MLIP).

    python examples/qmml_oniom_tblite.py        # needs `pip install tblite`

Prints the ONIOM energy, a finite-difference check of the forces and a short NVE run.
"""
from __future__ import annotations

import numpy as np
from ase import units
from ase.build import molecule
from ase.calculators.emt import EMT
from ase.md.verlet import VelocityVerlet

from mlip_md.qmml import ONIOMCalculator


def build():
    atoms = molecule("CH3CH2OH")
    atoms.center(vacuum=6.0)
    symbols = atoms.get_chemical_symbols()
    o = symbols.index("O")
    d = atoms.get_all_distances()
    carbons = [i for i, s in enumerate(symbols) if s == "C"]
    c_o = min(carbons, key=lambda i: d[o, i])  # the carbon bonded to O
    c_other = next(i for i in carbons if i != c_o)
    hydrogens = [i for i, s in enumerate(symbols) if s == "H" and (d[i, o] < 1.1 or d[i, c_o] < 1.2)]
    region = sorted([o, c_o, *hydrogens])
    return atoms, region, [(c_o, c_other)]


def main(steps: int = 20, high=None) -> dict:
    if high is None:
        from tblite.ase import TBLite

        high = TBLite(method="GFN2-xTB", verbosity=0)
    atoms, region, links = build()
    calc = ONIOMCalculator(high, EMT(), region, links=links, link_element="H", link_ratio=0.709)
    atoms.calc = calc
    energy = atoms.get_potential_energy()
    forces = atoms.get_forces()
    h, fd_error = 1e-4, 0.0
    for i in (region[0], links[0][1]):  # an atom inside, the link partner outside
        for k in range(3):
            work = atoms.copy()
            work.calc = calc
            work.positions[i, k] += h
            e_plus = work.get_potential_energy()
            work.positions[i, k] -= 2 * h
            fd_error = max(fd_error, abs(-(e_plus - work.get_potential_energy()) / (2 * h) - forces[i, k]))
    etot = []
    dyn = VelocityVerlet(atoms, timestep=0.25 * units.fs)
    dyn.attach(lambda: etot.append(atoms.get_potential_energy() + atoms.get_kinetic_energy()))
    dyn.run(steps)
    result = {"energy": energy, "fd_error": fd_error, "region": region, "links": links,
              "nve_max_deviation": float(np.ptp(etot)) if etot else 0.0}
    print(f"ONIOM energy {energy:.6f} eV, region {region}, link {links}; |F - FD| max {fd_error:.1e} eV/Å; "
          f"NVE {steps} steps: max |dE| {result['nve_max_deviation']:.2e} eV")
    return result


if __name__ == "__main__":
    main()
