#!/usr/bin/env bash
# Builds the RPM for EL8/EL9 with rpmbuild (Debian's rpm package is enough):
# systemd/rpm/virtpulse.spec around the portable binary of
# scripts/build-release.sh (glibc 2.28+, OpenSSL linked in), the same unit
# as the .deb, /etc/virtpulse/config.toml as %config(noreplace). Prints the
# .rpm's path.
#   scripts/build-rpm.sh                        the release package
#   PROFILE=portable-test scripts/build-rpm.sh  the same, from the cheaper
#                                               build the tests use
# rpmbuild derives the glibc and libvirt requirements from the binary's
# symbol versions (libc.so.6(GLIBC_2.28)(64bit), libvirt.so.0(LIBVIRT_...)).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
PROFILE=${PROFILE:-release}
OUT=${OUT:-target/rpm}
case "$PROFILE" in
  debug | dev)
    echo "PROFILE=$PROFILE: an RPM for EL carries the portable binary only (release or portable-test)" >&2
    exit 2 ;;
esac

# rpm: rpmbuild and its ELF dependency generator; binutils: strip.
apt_install_missing rpm binutils
bin=$(PROFILE=$PROFILE scripts/build-release.sh)
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)

# Everything rpmbuild reads or writes lives in a scratch top directory, so
# no ~/rpmbuild or rpm database of this host is touched.
top=$(mktemp -d)
trap 'rm -rf "$top"' EXIT
src=$top/SOURCES
mkdir -p "$src/dashboards" "$src/docs"
install -m 0755 "$bin" "$src/virtpulse"
strip --strip-debug "$src/virtpulse"
install -m 0644 systemd/virtpulse.service systemd/rpm/virtpulse.sysusers config.example.toml \
  alerts/virtpulse.rules.yml alerts/virtpulse.tests.yml README.md "$src/"
install -m 0644 dashboards/*.json "$src/dashboards/"
install -m 0644 docs/*.md "$src/docs/"

if ! rpmbuild -bb --quiet --target x86_64 \
  --define "_topdir $top" --define "_sourcedir $src" --define "_rpmdir $top/RPMS" \
  --define "vp_version $version" systemd/rpm/virtpulse.spec > "$top/rpmbuild.log" 2>&1; then
  cat "$top/rpmbuild.log" >&2
  echo "rpmbuild failed (above)" >&2
  exit 1
fi
rpm=$(find "$top/RPMS" -name "virtpulse-$version-*.x86_64.rpm" | head -n1)
[ -n "$rpm" ] || { echo "rpmbuild wrote no virtpulse-$version RPM" >&2; exit 1; }
mkdir -p "$OUT"
cp "$rpm" "$OUT/"
realpath "$OUT/$(basename "$rpm")"
