#!/usr/bin/env bash
# Installs libvirt 11 + QEMU 10 from bookworm-backports (Debian 12's own QEMU
# 7.2 conflicts with the newer qemu-utils these machines carry). Idempotent.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

# The network driver, dnsmasq and iproute2: virtual networks with DHCP
# (tests/e2e_networks.rs runs them in a private daemon's own network
# namespace); the driver is only a Recommends of libvirt-daemon.
pkgs=(libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients libvirt-dev
      qemu-system-x86 qemu-utils pkg-config
      libvirt-daemon-driver-network dnsmasq-base iproute2)

if ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
  mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  cat > /etc/apt/sources.list.d/backports.sources <<SRC
Types: deb
URIs: ${mirror:-http://deb.debian.org/debian}
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  apt-get update -q
fi
APT_OPTS="-t bookworm-backports" apt_install_missing "${pkgs[@]}"
