#!/usr/bin/env bash
# Starts virtlogd and libvirtd without systemd when they are not running, and
# waits until the daemon answers. Idempotent; copes with a daemon that is
# still exiting when called.
set -euo pipefail

mkdir -p /run/libvirt
pgrep -x virtlogd >/dev/null || virtlogd -d

for _ in $(seq 1 150); do
  if virsh -c qemu:///system version >/dev/null 2>&1; then
    exit 0
  fi
  pgrep -x libvirtd >/dev/null || libvirtd -d
  sleep 0.1
done
echo "libvirtd did not answer on qemu:///system within 15s" >&2
exit 1
