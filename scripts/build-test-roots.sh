#!/usr/bin/env bash
# Builds and caches Debian roots that hold older libvirt/QEMU releases, so the
# agent can be tested against them (with scripts/private-libvirtd.sh) without
# touching the host's own libvirt:
#   debian13-bp = trixie + trixie-backports: libvirt 12.9 + QEMU 11.1
#   debian13    = trixie:   libvirt 11.3 + QEMU 10.0
#   debian12    = bookworm: libvirt 9.0 + QEMU 7.2
#   debian11    = bullseye: libvirt 7.0 + QEMU 5.2
# Usage: build-test-roots.sh [debian13-bp|debian13|debian12|debian11|all]
#        (default: all)
# Roots go to $VIRTPULSE_ROOTS_DIR (default /var/cache/virtpulse/roots)/<name>.
# Idempotent: a root is built in <name>.partial and renamed only once it is
# complete, with a marker written last, so an interrupted build is redone and a
# finished one is skipped. The daemon settings are applied on every run (cheap,
# idempotent), so a change to them reaches roots built before.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

ROOTS=${VIRTPULSE_ROOTS_DIR:-/var/cache/virtpulse/roots}
MIRROR=${VIRTPULSE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
INCLUDE=libvirt-daemon,libvirt-daemon-driver-qemu,libvirt-clients,qemu-system-x86,qemu-utils
# Since Debian 13 (libvirt 11) libvirt-daemon no longer carries the storage,
# network, node device and secret drivers: without them pools and those
# event families are missing. (Debian 12's and 11's libvirt-daemon has them.)
DRIVERS=libvirt-daemon-driver-storage,libvirt-daemon-driver-network,libvirt-daemon-driver-nodedev,libvirt-daemon-driver-secret
MARKER=.virtpulse-root-complete
# Changing the package set must rebuild the roots: it is part of the marker.
STAMP="v1 $INCLUDE"

suite_of() {
  case "$1" in
    debian13-bp|debian13) echo trixie ;;
    debian12) echo bookworm ;;
    debian11) echo bullseye ;;
    *) echo "unknown root '$1' (want debian13-bp, debian13, debian12, debian11 or all)" >&2; return 1 ;;
  esac
}

# How a root gets libvirt and QEMU: "include" = debootstrap installs them
# (--include); otherwise apt installs them in the minimal root from the
# suite named here. debootstrap 1.0.128 (Debian 12's) cannot install them
# into trixie itself: with --include it unpacks systemd before
# libsystemd-shared is configured and fails on systemd's Pre-Depends.
packages_from() {
  case "$1" in
    debian13-bp) echo trixie-backports ;;
    debian13) echo trixie ;;
    *) echo include ;;
  esac
}

# The marker's content for a root: the roots that debootstrap fills keep
# the stamp they were built with; the others name their packages and where
# apt took them from.
stamp_of() {
  local from
  from=$(packages_from "$1")
  if [ "$from" = include ]; then echo "$STAMP"; else echo "$STAMP,$DRIVERS from $from"; fi
}

# Installs the daemon's packages from SUITE (the root's own or one added
# here) into a minimal root with apt, which orders the unpacking properly.
# Package scripts must not start services in the root (no init runs there).
install_from() {
  local root=$1 suite=$2
  if ! grep -rqs "[[:space:]]$suite[[:space:]]" "$root/etc/apt/sources.list" "$root/etc/apt/sources.list.d"; then
    echo "deb $MIRROR $suite main" > "$root/etc/apt/sources.list.d/$suite.list"
  fi
  printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"
  chmod +x "$root/usr/sbin/policy-rc.d"
  # /proc for the package scripts (systemd's complain without it), mounted
  # in a private mount namespace: it goes away with the command.
  # shellcheck disable=SC2016
  unshare -m --propagation private sh -euc '
    mount -t proc proc "$1/proc"
    chroot "$1" apt-get update -q
    chroot "$1" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends -t "$2" $3
    chroot "$1" apt-get clean' sh "$root" "$suite" "${INCLUDE//,/ } ${DRIVERS//,/ }"
  rm -f "$root/usr/sbin/policy-rc.d"
}

# Prepares ROOT so that a libvirtd can run there under private-libvirtd.sh.
setup_root() {
  local root=$1
  # libvirt-daemon-system (not installed: it brings init scripts and the
  # default network) is what normally creates this user; the QEMU driver
  # still looks it up when it loads its config.
  chroot "$root" getent group libvirt-qemu >/dev/null || chroot "$root" groupadd --system libvirt-qemu
  chroot "$root" getent passwd libvirt-qemu >/dev/null ||
    chroot "$root" useradd --system -g libvirt-qemu -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu

  local q=$root/etc/libvirt/qemu.conf d=$root/etc/libvirt/libvirtd.conf
  # QEMU runs as root: no need for the kvm group or chown of images between
  # a daemon in a chroot and files on the host.
  set_conf "$q" user '"root"'
  set_conf "$q" group '"root"'
  # No per-guest mount namespace: /dev inside the chroot is a bind of the
  # host's, and libvirt's private /dev setup is not needed for test guests.
  set_conf "$q" namespaces '[]'
  # QEMU writes its log file itself, so no virtlogd has to run in the root.
  set_conf "$q" stdio_handler '"file"'
  # Remembering owners uses xattrs on image files; two daemons (host and
  # private) must not keep competing refcounts on the same files.
  set_conf "$q" remember_owner 0
  # cgroup_controllers is left to private-libvirtd.sh: what is safe depends
  # on how the daemon is run (its own cgroup subtree, or none).
  # No polkit in the root: let the socket permissions decide.
  set_conf "$d" auth_unix_ro '"none"'
  set_conf "$d" auth_unix_rw '"none"'
  set_conf "$d" unix_sock_ro_perms '"0777"'
  # With no polkit the read-write socket would be open to every user
  # (libvirt's default is 0777 when built with polkit): root only.
  set_conf "$d" unix_sock_rw_perms '"0700"'
}

build_root() {
  local name=$1 suite from stamp root partial start
  suite=$(suite_of "$name")
  from=$(packages_from "$name")
  stamp=$(stamp_of "$name")
  root=$ROOTS/$name
  partial=$root.partial
  if [ "$(cat "$root/$MARKER" 2>/dev/null)" = "$stamp" ]; then
    echo "$name: already built in $root"
  else
    # A root whose marker is missing or stale is rebuilt from scratch; refuse
    # if something is mounted in it (a daemon started from it in this mount
    # namespace), rather than delete through the mount.
    for dir in "$root" "$partial"; do
      if [ -d "$dir" ] && findmnt -rn -o TARGET | grep -q "^$dir\(/\|$\)"; then
        echo "$dir has mounts inside: stop what uses it first" >&2
        return 1
      fi
    done
    rm -rf "$partial"
    mkdir -p "$ROOTS"
    echo "$name: debootstrap $suite into $partial"
    start=$(date +%s)
    if [ "$from" = include ]; then
      debootstrap --variant=minbase --include="$INCLUDE" "$suite" "$partial" "$MIRROR"
    else
      debootstrap --variant=minbase "$suite" "$partial" "$MIRROR"
      install_from "$partial" "$from"
    fi
    # Downloaded .debs are not needed once installed; they are most of the size.
    rm -f "$partial"/var/cache/apt/archives/*.deb
    setup_root "$partial"
    echo "$stamp" > "$partial/$MARKER"
    rm -rf "$root"
    mv "$partial" "$root"
    echo "$name: built in $(( $(date +%s) - start ))s"
  fi
  setup_root "$root"
}

what=${1:-all}
case "$what" in
  all) names=(debian13-bp debian13 debian12 debian11) ;;
  *) suite_of "$what" >/dev/null; names=("$what") ;;
esac

apt_install_missing debootstrap
for n in "${names[@]}"; do
  build_root "$n"
done

for n in "${names[@]}"; do
  echo "== $n ($ROOTS/$n)"
  chroot "$ROOTS/$n" libvirtd --version
  chroot "$ROOTS/$n" qemu-system-x86_64 --version | head -n1
done
