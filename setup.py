"""Builds lb._fastpath from lb/_fastpath.pyx, its fastpath/*.pxi topic files and
includes/*.pxd declarations.

Options of build_ext (as in uvloop):
  --cython-always      re-cythonize even when the .c is newer
  --cython-annotate    write the HTML annotation next to the sources
  --cython-directives  e.g. "linetrace=True,profile=True"
"""

import os

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext as _build_ext


class build_ext(_build_ext):
    user_options = _build_ext.user_options + [
        ("cython-always", None, "run cythonize() even if .c files are present"),
        ("cython-annotate", None, "produce a colorized HTML version of the Cython source"),
        ("cython-directives=", None, "Cython compiler directives"),
    ]
    boolean_options = _build_ext.boolean_options + ["cython-always", "cython-annotate"]

    def initialize_options(self):
        super().initialize_options()
        self.cython_always = False
        self.cython_annotate = False
        self.cython_directives = None

    def finalize_options(self):
        from Cython.Build import cythonize

        directives = {"language_level": 3}
        if self.cython_directives:
            for item in self.cython_directives.split(","):
                key, _, value = item.partition("=")
                directives[key.strip()] = value.strip() not in ("False", "0", "")
        self.distribution.ext_modules[:] = cythonize(
            self.distribution.ext_modules,
            compiler_directives=directives,
            annotate=self.cython_annotate,
            force=self.cython_always,
            include_path=[os.path.dirname(os.path.abspath(__file__))],
        )
        super().finalize_options()


CFLAGS = ["-O2", "-D_GNU_SOURCE", "-fno-strict-aliasing", "-Wno-unused-function"]
if os.environ.get("LB_DEBUG"):
    CFLAGS = ["-O0", "-g3", "-D_GNU_SOURCE", "-DCYTHON_TRACE_NOGIL=1"]

setup(
    ext_modules=[
        Extension(
            "lb._fastpath",
            ["lb/_fastpath.pyx"],
            extra_compile_args=CFLAGS,
            depends=["lb/_fastpath.pxd"],
        )
    ],
    cmdclass={"build_ext": build_ext},
)
