"""Build the Cython extension ``mlip_md._core`` over the C++ core in ``csrc/``."""
import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

core = Extension(
    "mlip_md._core",
    sources=["mlip_md/_core.pyx", "csrc/src/neighbors.cpp", "csrc/src/ipi_codec.cpp"],
    include_dirs=["csrc/include", numpy.get_include()],
    language="c++",
    extra_compile_args=["-std=c++17", "-O3", "-fno-math-errno"],
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
)

setup(ext_modules=cythonize([core], language_level=3))
