"""Builds lb._fastpath from lb/_fastpath.pyx, its fastpath/*.pxi topic files and
includes/*.pxd declarations.

Options of build_ext (as in uvloop):
  --cython-always      re-cythonize even when the .c is newer
  --cython-annotate    write the HTML annotation next to the sources
  --cython-directives  e.g. "linetrace=True,profile=True"

Cython 3 is needed to turn the .pyx into C. A source tarball made by
`make deb` / `make rpm` carries that C (lb/_fastpath.c), like an sdist, so
building from it needs only a compiler and the Python headers: without a
Cython >= 3 (Debian 12 has 0.29), or with LB_NO_CYTHON=1, setup.py compiles
the shipped .c as it is.
"""

import os
import sys

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
        if not self.cython_always and _use_shipped_c(self.distribution.ext_modules):
            super().finalize_options()
            return
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


def _cython3() -> bool:
    try:
        import Cython
    except ImportError:
        return False
    return int(Cython.__version__.split(".")[0]) >= 3


def _use_shipped_c(extensions) -> bool:
    """Point the extensions at their generated .c when Cython 3 is not to be
    used and every .c is there; False when Cython must run."""
    if not os.environ.get("LB_NO_CYTHON") and _cython3():
        return False
    c_sources = [[os.path.splitext(src)[0] + ".c" for src in ext.sources] for ext in extensions]
    missing = [c for sources in c_sources for c in sources if not os.path.exists(c)]
    if missing:
        sys.exit(f"setup.py: Cython >= 3 is needed to generate {', '.join(missing)} "
                 "(pip install 'Cython>=3,<4'), or build from a tarball of `make deb`/`make rpm`")
    for ext, sources in zip(extensions, c_sources):
        ext.sources = sources
    print(f"setup.py: compiling the shipped {', '.join(c for sources in c_sources for c in sources)} "
          "(no Cython >= 3 here, or LB_NO_CYTHON set)", file=sys.stderr)
    return True


CFLAGS = ["-O2", "-D_GNU_SOURCE", "-fno-strict-aliasing", "-Wno-unused-function"]
LDFLAGS = []
if os.environ.get("LB_DEBUG"):
    CFLAGS = ["-O0", "-g3", "-D_GNU_SOURCE", "-DCYTHON_TRACE_NOGIL=1"]
if os.environ.get("LB_SANITIZE"):
    # `make asan-test`: AddressSanitizer and UndefinedBehaviorSanitizer, every
    # report fatal (the interpreter itself is not instrumented: libasan is
    # preloaded into it)
    SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer"]
    CFLAGS = ["-O1", "-g", "-D_GNU_SOURCE", "-fno-strict-aliasing", "-Wno-unused-function"] + SANITIZE
    LDFLAGS = SANITIZE

if os.environ.get("LB_FUZZ"):
    # `make fuzz`: clang's libFuzzer coverage counters for atheris, and
    # AddressSanitizer (its runtime comes preloaded: atheris's asan_with_fuzzer.so)
    os.environ.setdefault("CC", "clang")
    os.environ.setdefault("LDSHARED", "clang -shared")
    FUZZ = ["-fsanitize=fuzzer-no-link,address", "-fno-omit-frame-pointer"]
    CFLAGS = ["-O1", "-g", "-D_GNU_SOURCE", "-fno-strict-aliasing", "-Wno-unused-function", "-Wno-sign-compare"] + FUZZ
    # no runtime linked in: the __asan_* and __sanitizer_cov_* symbols resolve
    # at load time from the preloaded runtime (Debian's clang has no shared libasan)
    LDFLAGS = []

setup(
    ext_modules=[
        Extension(
            "lb._fastpath",
            ["lb/_fastpath.pyx"],
            extra_compile_args=CFLAGS,
            extra_link_args=LDFLAGS,
            # TLS (lb/fastpath/tls.pxi): OpenSSL 3, libssl-dev to build; HTTP/2
            # (lb/fastpath/h2.pxi): libnghttp2, libnghttp2-dev to build; htpasswd
            # hashes (lb/fastpath/auth_basic.pxi): libxcrypt, libcrypt-dev to build;
            # tcp forwarding's batched calls (lb/fastpath/uring.pxi): liburing, liburing-dev
            libraries=["ssl", "crypto", "nghttp2", "crypt", "uring"],
            depends=["lb/_fastpath.pxd"],
        )
    ],
    cmdclass={"build_ext": build_ext},
)
