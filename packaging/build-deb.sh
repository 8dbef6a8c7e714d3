#!/bin/sh
# `make deb`: the Debian source package (lb_VERSION-REV.dsc, .orig.tar.gz,
# .debian.tar.xz) and the binary lb_VERSION-REV_ARCH.deb, in dist/.
#
# The orig tarball is packaging/source-tarball.sh's (sources plus the C that
# Cython 3 generates), debian/ is packaging/debian/; dpkg-buildpackage builds
# in a temporary directory, so the working tree is never touched. The build
# dependencies must be installed (dpkg-checkbuilddeps says which are not):
#   apt-get install debhelper dh-python python3-all-dev python3-click python3-setuptools
set -eu
cd "$(dirname "$0")/.."
# DIST: where the packages go (default dist/ of the tree)
dist=${DIST:-dist}
version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' lb/__init__.py)
debversion=$(dpkg-parsechangelog -l packaging/debian/changelog -S Version)
if [ "${debversion%-*}" != "$version" ]; then
    echo "build-deb: packaging/debian/changelog is at $debversion but lb is $version:" \
         "add a changelog entry (dch -c packaging/debian/changelog -v $version-1)" >&2
    exit 1
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
packaging/source-tarball.sh "$work/lb_$version.orig.tar.gz"
tar -C "$work" -xzf "$work/lb_$version.orig.tar.gz"
cp -r packaging/debian "$work/lb-$version/debian"
# Debian's python3 and tools only: not the caller's pyenv, virtualenv or PYTHONPATH
(cd "$work/lb-$version" && env -u PYTHONPATH -u PYTHONHOME -u VIRTUAL_ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    dpkg-buildpackage --no-sign -j"$(nproc)")
mkdir -p "$dist"
rm -f "$dist"/lb_*.deb "$dist"/lb-dbgsym_*.deb "$dist"/lb_*.dsc "$dist"/lb_*.debian.tar.* "$dist"/lb_*.changes \
      "$dist"/lb_*.buildinfo "$dist"/lb_*.orig.tar.gz
for f in "$work"/*.deb "$work"/*.ddeb "$work"/*.dsc "$work"/*.orig.tar.gz "$work"/*.debian.tar.* \
         "$work"/*.changes "$work"/*.buildinfo; do
    if [ -e "$f" ]; then cp "$f" "$dist/"; fi
done
ls -1 "$dist"/lb_*"$debversion"* "$dist"/lb-dbgsym_* 2>/dev/null || true
