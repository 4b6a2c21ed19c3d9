#!/usr/bin/env bash
# Builds and caches Debian roots that hold older libvirt/QEMU releases, so the
# agent can be tested against them (with scripts/private-libvirtd.sh) without
# touching the host's own libvirt:
#   debian12 = bookworm: libvirt 9.0 + QEMU 7.2
#   debian11 = bullseye: libvirt 7.0 + QEMU 5.2
# Usage: build-test-roots.sh [debian12|debian11|all]   (default: all)
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
MARKER=.virtpulse-root-complete
# Changing the package set must rebuild the roots: it is part of the marker.
STAMP="v1 $INCLUDE"

suite_of() {
  case "$1" in
    debian12) echo bookworm ;;
    debian11) echo bullseye ;;
    *) echo "unknown root '$1' (want debian12, debian11 or all)" >&2; return 1 ;;
  esac
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
  local name=$1 suite root partial start
  suite=$(suite_of "$name")
  root=$ROOTS/$name
  partial=$root.partial
  if [ "$(cat "$root/$MARKER" 2>/dev/null)" = "$STAMP" ]; then
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
    debootstrap --variant=minbase --include="$INCLUDE" "$suite" "$partial" "$MIRROR"
    # Downloaded .debs are not needed once installed; they are most of the size.
    rm -f "$partial"/var/cache/apt/archives/*.deb
    setup_root "$partial"
    echo "$STAMP" > "$partial/$MARKER"
    rm -rf "$root"
    mv "$partial" "$root"
    echo "$name: built in $(( $(date +%s) - start ))s"
  fi
  setup_root "$root"
}

what=${1:-all}
case "$what" in
  all) names=(debian12 debian11) ;;
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
