#!/usr/bin/env bash
# Builds the Debian package with dpkg-deb (no extra tooling): the binary,
# the systemd unit, /etc/virtpulse/config.toml as a conffile, the alert rules
# and dashboards, the docs. Prints the .deb's path.
#   scripts/build-deb.sh                        the release package: the
#                                               portable binary of
#                                               scripts/build-release.sh
#                                               (glibc 2.28+, no system OpenSSL)
#   PROFILE=portable-test scripts/build-deb.sh  the same portable binary, built
#                                               cheaply (what the tests install
#                                               in the Debian 11/12/13 roots)
#   PROFILE=debug scripts/build-deb.sh          the host's plain debug build
#                                               (needs this host's glibc; the
#                                               host-only package test)
# Depends names the glibc and libvirt0 versions the binary's symbols need,
# read from the binary itself, so each of these packages says what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_cargo
PROFILE=${PROFILE:-release}
OUT=${OUT:-target/debian}
apt_install_missing binutils dpkg

if [ "$PROFILE" = debug ]; then
  cargo build --locked -q
  bin=${CARGO_TARGET_DIR:-target}/debug/virtpulse
else
  # Checks PROFILE and says what is wrong with it.
  bin=$(PROFILE=$PROFILE scripts/build-release.sh)
fi
[ -x "$bin" ] || { echo "no binary at $bin after the build" >&2; exit 1; }

# The highest symbol version the binary references from a version family
# (GLIBC_2.28 -> 2.28; LIBVIRT_5.7.0 -> 5.7.0, not LIBVIRT_QEMU_*).
max_version() {
  objdump -T "$bin" | grep -o "($1_[0-9][0-9.]*)" | tr -d '()' | sed "s/^$1_//" | sort -uV | tail -n1
}
glibc=$(max_version GLIBC)
libvirt=$(max_version LIBVIRT)
[ -n "$glibc" ] && [ -n "$libvirt" ] ||
  { echo "$bin references no GLIBC_ or no LIBVIRT_ symbol versions: not the agent binary?" >&2; exit 1; }
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
arch=$(dpkg --print-architecture)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root="$stage/virtpulse_${version}_${arch}"

install -D -m 0755 "$bin" "$root/usr/bin/virtpulse"
strip --strip-debug "$root/usr/bin/virtpulse" 2>/dev/null || true
install -D -m 0644 systemd/virtpulse.service "$root/lib/systemd/system/virtpulse.service"
install -D -m 0640 config.example.toml "$root/etc/virtpulse/config.toml"
install -D -m 0644 config.example.toml "$root/usr/share/virtpulse/config.example.toml"
install -D -m 0644 alerts/virtpulse.rules.yml "$root/usr/share/virtpulse/alerts/virtpulse.rules.yml"
install -D -m 0644 alerts/virtpulse.tests.yml "$root/usr/share/virtpulse/alerts/virtpulse.tests.yml"
for d in dashboards/*.json; do install -D -m 0644 "$d" "$root/usr/share/virtpulse/dashboards/$(basename "$d")"; done
install -D -m 0644 README.md "$root/usr/share/doc/virtpulse/README.md"
for d in docs/*.md; do install -D -m 0644 "$d" "$root/usr/share/doc/virtpulse/$(basename "$d")"; done
cat > "$root/usr/share/doc/virtpulse/copyright" <<COPY
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: virtpulse
Files: *
License: Apache-2.0
 On Debian systems, the full text of the Apache License 2.0 is in
 /usr/share/common-licenses/Apache-2.0.
COPY

mkdir -p "$root/DEBIAN"
install -m 0755 systemd/debian/postinst systemd/debian/prerm systemd/debian/postrm "$root/DEBIAN/"
echo /etc/virtpulse/config.toml > "$root/DEBIAN/conffiles"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat > "$root/DEBIAN/control" <<CONTROL
Package: virtpulse
Version: $version
Architecture: $arch
Maintainer: virtpulse developers <virtpulse@example.org>
Installed-Size: $size
Depends: libc6 (>= $glibc), libvirt0 (>= $libvirt), adduser
Recommends: libvirt-daemon-system | libvirt-daemon
Section: admin
Priority: optional
Homepage: https://github.com/virtpulse/virtpulse
Description: telemetry agent for libvirt/KVM hypervisor hosts
 Turns libvirt into streams: every domain stats group, domain jobs, host and
 storage pool figures, and every libvirt event, normalized into versioned
 records and served to Prometheus, Kafka (at least once, with a disk spool),
 OTLP and JSON lines. A hung QEMU never stalls the rest.
 .
 The service is installed but not enabled: edit /etc/virtpulse/config.toml,
 then systemctl enable --now virtpulse.
CONTROL

mkdir -p "$OUT"
dpkg-deb --root-owner-group --build "$root" "$OUT/" >/dev/null
ls "$OUT/virtpulse_${version}_${arch}.deb"
