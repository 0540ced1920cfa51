"""Builds fer_edge's C/Cython preprocessing extension, with OpenMP when the compiler supports it.

Everything else about the package lives in pyproject.toml.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import warnings

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

OPENMP_PROBE = r"""
#include <omp.h>
int main(void) {
    int n = 0;
    #pragma omp parallel reduction(+:n)
    n += 1;
    return n > 0 ? 0 : 1;
}
"""


def openmp_flags():
    """Compile and run a tiny OpenMP program; return (compile, link) flags, or ([], []) with a warning.

    FER_EDGE_NO_OPENMP=1 forces a build without OpenMP.
    """
    if os.environ.get("FER_EDGE_NO_OPENMP") == "1":
        warnings.warn("FER_EDGE_NO_OPENMP=1: building fer_edge's extension without OpenMP (single thread)")
        return [], []
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    cc = cc.split()
    flags = ["/openmp"] if sys.platform == "win32" else ["-fopenmp"]
    tmp = tempfile.mkdtemp()
    try:
        src = os.path.join(tmp, "probe.c")
        exe = os.path.join(tmp, "probe")
        with open(src, "w") as fh:
            fh.write(OPENMP_PROBE)
        result = subprocess.run(cc + flags + [src, "-o", exe], capture_output=True)
        if result.returncode == 0 and subprocess.run([exe]).returncode == 0:
            return flags, flags
    except OSError:
        pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    warnings.warn("the C compiler does not support OpenMP: fer_edge's preprocessing will run on one thread")
    return [], []


compile_omp, link_omp = openmp_flags()
extra_compile = ["-O3", "-std=c99"] + compile_omp if sys.platform != "win32" else ["/O2"] + compile_omp
define_macros = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]
if os.environ.get("FER_EDGE_SANITIZE") == "address":
    # For the AddressSanitizer run described in the README (LD_PRELOAD the runtime when importing).
    extra_compile += ["-fsanitize=address", "-fno-omit-frame-pointer", "-g", "-O1"]
    link_omp = link_omp + ["-fsanitize=address"]

extensions = [
    Extension(
        "fer_edge._preprocess_cy",
        sources=["fer_edge/_preprocess_cy.pyx", "csrc/preprocess.c"],
        include_dirs=["csrc", numpy.get_include()],
        extra_compile_args=extra_compile,
        extra_link_args=link_omp,
        define_macros=define_macros,
    )
]

setup(ext_modules=cythonize(extensions, language_level=3, compiler_directives={"boundscheck": False,
                                                                               "wraparound": False}))
