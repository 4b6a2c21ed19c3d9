#!/usr/bin/env bash
# Starts virtlogd and libvirtd without systemd when they are not running, and
# waits until the daemon answers. Idempotent; copes with a daemon that is
# still exiting when called.
#
# "Running" means the daemon of this mount namespace (its pid file names a
# live process of that name), not any process called libvirtd: other
# daemons run beside it in private mount namespaces (tests/common/daemon.rs,
# older libvirt roots), and `pgrep -x libvirtd` sees those too, so this
# script never started the host's own and gave up after 15 s.
set -euo pipefail

# running NAME PIDFILE: the pid file names a live NAME of this namespace.
running() {
  local pid
  pid=$(cat "$2" 2>/dev/null) || return 1
  [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ] &&
    [ "$(readlink "/proc/$pid/ns/mnt")" = "$(readlink /proc/self/ns/mnt)" ]
}

mkdir -p /run/libvirt
running virtlogd /run/virtlogd.pid || virtlogd -d

# Read-only clients are authorized by polkit over the system bus; the daemon
# this script starts (no systemd: containers, CI) has no polkit to ask, so
# only root could connect. libvirt's polkit policy lets every local user
# monitor read-only: say the same here, on the read-only socket only.
conf=/run/libvirt/virtpulse-libvirtd.conf
{ cat /etc/libvirt/libvirtd.conf; echo 'auth_unix_ro = "none"'; } > "$conf"
args=(-d --config "$conf")

for _ in $(seq 1 150); do
  if virsh -c qemu:///system version >/dev/null 2>&1; then
    exit 0
  fi
  running libvirtd /run/libvirtd.pid || libvirtd "${args[@]}"
  sleep 0.1
done
echo "libvirtd did not answer on qemu:///system within 15s" >&2
exit 1
