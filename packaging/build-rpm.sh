#!/bin/sh
# `make rpm`: the binary RPM (and the source RPM) of lb, in dist/.
#
# rpmbuild (Debian: apt-get install rpm) builds packaging/rpm/lb.spec from
# packaging/source-tarball.sh's tarball in a temporary _topdir. On a system
# without dnf (Debian) the spec's BuildRequires cannot be checked, so
# --nodeps, and --without cython: the tarball's generated C is compiled, as
# Debian has no Cython 3 for its python3; the package's Requires stay those
# of the spec. On Fedora: RPMBUILD_FLAGS= make rpm, after dnf builddep.
set -eu
cd "$(dirname "$0")/.."
# DIST: where the packages go (default dist/ of the tree)
dist=${DIST:-dist}
version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' lb/__init__.py)
specversion=$(sed -n 's/^Version: *//p' packaging/rpm/lb.spec)
if [ "$specversion" != "$version" ]; then
    echo "build-rpm: packaging/rpm/lb.spec is at $specversion but lb is $version" >&2
    exit 1
fi
if command -v dnf >/dev/null 2>&1; then
    default_flags=""
else
    # Debian's rpm: no find-debuginfo, and its brp scripts need bash, not dash
    default_flags="--nodeps --without cython --define 'debug_package %{nil}' --define '_buildshell /bin/bash'"
fi
flags=${RPMBUILD_FLAGS-$default_flags}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/SOURCES"
packaging/source-tarball.sh "$work/SOURCES/lb-$version.tar.gz"
# the system's python3 and tools only: not the caller's pyenv, virtualenv or PYTHONPATH
eval env -u PYTHONPATH -u PYTHONHOME -u VIRTUAL_ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    rpmbuild -ba --define "'_topdir $work'" $flags packaging/rpm/lb.spec
mkdir -p "$dist"
rm -f "$dist"/lb-*.rpm
cp "$work"/RPMS/*/lb-*.rpm "$work"/SRPMS/lb-*.src.rpm "$dist/"
ls -1 "$dist"/lb-*.rpm
