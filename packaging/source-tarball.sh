#!/bin/sh
# packaging/source-tarball.sh OUTPUT.tar.gz
#
# The source tarball both packages build from, top directory lb-VERSION/: the
# tree as an sdist would have it (no tests, benchmarks or build products),
# plus lb/_fastpath.c, the C that Cython 3 generates from lb/_fastpath.pyx.
# Shipping that C is what lets the packages build where no Cython 3 is
# packaged (Debian 12 has 0.29): they need only a C compiler and the Python
# headers. Cython comes from the Python that runs this ($PYTHON, default
# python3); the project's own build requirement, Cython>=3,<4, is installed
# with pip if that Python lacks it.
set -eu
out=$1
case $out in /*) ;; *) out=$(pwd)/$out ;; esac
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' lb/__init__.py)
[ -n "$version" ] || { echo "no __version__ in lb/__init__.py" >&2; exit 1; }

if ! $PYTHON -c 'import Cython, sys; sys.exit(int(Cython.__version__.split(".")[0]) < 3)' 2>/dev/null; then
    echo "source-tarball: installing Cython>=3,<4 for $PYTHON (the build requirement of pyproject.toml)" >&2
    $PYTHON -m pip install --quiet --disable-pip-version-check 'Cython>=3,<4'
fi

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
top="$stage/lb-$version"
mkdir "$top"
# what the packages need to build and document lb; build products stay out
tar -cf - --exclude=__pycache__ --exclude='*.so' --exclude='*.html' --exclude='lb/_fastpath.c' \
    setup.py pyproject.toml Makefile README.md docs lb packaging | tar -C "$top" -xf -
(cd "$top" && $PYTHON -c '
from Cython.Build import cythonize
# the same options as setup.py build_ext
cythonize(["lb/_fastpath.pyx"], compiler_directives={"language_level": 3}, include_path=["."],
          force=True, quiet=True)
')
[ -s "$top/lb/_fastpath.c" ] || { echo "source-tarball: Cython produced no lb/_fastpath.c" >&2; exit 1; }
# reproducible: fixed order, owners and times (the last commit's, when in git)
mtime=$(git log -1 --format=%ct 2>/dev/null || date +%s)
tar -C "$stage" --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$mtime" \
    -cf - "lb-$version" | gzip -9n > "$out"
echo "source-tarball: $out"
