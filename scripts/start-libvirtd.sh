#!/usr/bin/env bash
# Starts virtlogd and libvirtd without systemd when they are not running, and
# waits until the daemon answers. Idempotent; copes with a daemon that is
# still exiting when called.
set -euo pipefail

mkdir -p /run/libvirt
pgrep -x virtlogd >/dev/null || virtlogd -d

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
  pgrep -x libvirtd >/dev/null || libvirtd "${args[@]}"
  sleep 0.1
done
echo "libvirtd did not answer on qemu:///system within 15s" >&2
exit 1
