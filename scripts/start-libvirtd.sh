#!/usr/bin/env bash
# Starts virtlogd and libvirtd without systemd when they are not running, and
# waits until the daemon answers. Idempotent.
set -euo pipefail

mkdir -p /run/libvirt
pgrep -x virtlogd >/dev/null || virtlogd -d
pgrep -x libvirtd >/dev/null || libvirtd -d

for _ in $(seq 1 100); do
  if virsh -c qemu:///system version >/dev/null 2>&1; then
    exit 0
  fi
  sleep 0.1
done
echo "libvirtd did not answer on qemu:///system within 10s" >&2
exit 1
