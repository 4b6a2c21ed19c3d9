#!/usr/bin/env bash
# Generates the stats-key and event-ID reference of a root's libvirt from
# what its daemon returns: docs/reference/keys-<version>.md.
#
# Usage: scripts/reference-keys.sh ROOT [OUT]
#   ROOT  a root built by scripts/build-test-roots.sh: its name (debian13-bp)
#         or its path (/var/cache/virtpulse/roots/debian13-bp)
#   OUT   where to write the Markdown (default: stdout)
#
# Starts the root's libvirtd privately (scripts/private-libvirtd.sh, as the
# tests do), defines one KVM guest that shows every stats group this host
# can show (two disks, one a qcow2 overlay on a qcow2 base and on an
# IOThread with a statistics window and latency histograms, a block
# threshold, a NIC, a balloon with a stats period, software perf events,
# KVM's dirty ring and a dirty-rate calculation), and runs
# examples/reference_keys.rs: `probe` inside the root on the root's own
# libvirt0 and on the host on the host's, `render` to Markdown with the
# root's `virsh domstats --raw --backing` as the cross-check. Everything it
# starts (daemon, guest, files in the root) is stopped and removed on exit.
# Needs root, /dev/kvm, and cargo (the example is built in the debug profile).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

[ $# -ge 1 ] && [ $# -le 2 ] || { echo "usage: $0 ROOT [OUT]" >&2; exit 2; }
repo=$(cd "$(dirname "$0")/.." && pwd)
case $1 in
  */*) ROOT=$(realpath -m "$1") ;;
  *) ROOT=/var/cache/virtpulse/roots/$1 ;;
esac
ROOT_NAME=$(basename "$ROOT")
OUT=${2:-}
[ -f "$ROOT/.virtpulse-root-complete" ] || { echo "$ROOT is not a root built by scripts/build-test-roots.sh" >&2; exit 1; }

ensure_cargo
cargo build -q --manifest-path "$repo/Cargo.toml" --example reference_keys >&2
target=$(cargo metadata -q --format-version 1 --no-deps --manifest-path "$repo/Cargo.toml" |
  sed -E 's/.*"target_directory":"([^"]*)".*/\1/')
BIN=$target/debug/examples/reference_keys
[ -x "$BIN" ] || { echo "no $BIN after cargo build" >&2; exit 1; }

DIR=/var/tmp/vpd/refkeys-$$           # the daemon's directories (host)
S=/var/tmp/vpr-refkeys-$$             # scratch, as the root sees it
WORK=$(mktemp -d)
NAME=vpr-keys-$$
URI=
cleanup() {
  if [ -n "$URI" ]; then
    virsh -q -c "$URI" destroy "$NAME" >/dev/null 2>&1 || true
  fi
  # Also when the start failed half-way: a daemon may be running.
  if [ -d "$DIR" ]; then "$repo/scripts/private-libvirtd.sh" stop "$DIR" >&2 || true; fi
  rm -rf "$DIR" "${ROOT:?}$S" "$WORK"
}
trap cleanup EXIT

# In a network namespace of its own: the guest's NIC makes a tap device,
# which then never appears on the host.
URI=$(VIRTPULSE_PRIVATE_NETNS=1 "$repo/scripts/private-libvirtd.sh" start "$DIR" "$ROOT" | tail -n 1)
PID=$(cat "$DIR/libvirtd.pid")
# Chrooted into the root, in the daemon's mount namespace: the root's own
# virsh and libvirt0 reach the daemon at the default qemu:///system.
inside() { nsenter -t "$PID" -m -r "$@"; }
V() { inside virsh -q -c qemu:///system "$@"; }

mkdir -p "$ROOT$S"
chroot "$ROOT" qemu-img create -q -f qcow2 "$S/base.qcow2" 64M
chroot "$ROOT" qemu-img create -q -f qcow2 -b "$S/base.qcow2" -F qcow2 "$S/top.qcow2"
chroot "$ROOT" qemu-img create -q -f raw "$S/data.raw" 32M

GUEST="no-OS KVM guest, 2 vCPUs, 64 MiB; \`vda\`: qcow2 overlay on a qcow2 base (backing chain), on IOThread 1, \
a 1 s statistics window, read/write/flush latency histograms, a block threshold; \`vdb\`: raw; a virtio NIC \
(\`type='ethernet'\`); a virtio balloon with a 5 s stats period; 9 software perf events; KVM's dirty ring and a \
dirty-rate calculation in dirty-ring mode"
perf=
for e in cpu_clock task_clock page_faults context_switches cpu_migrations page_faults_min page_faults_maj \
         alignment_faults emulation_faults; do
  perf="$perf<event name='$e' enabled='yes'/>"
done
guest_xml() {
  cat <<EOF
<domain type='kvm'><name>$NAME</name><memory unit='MiB'>64</memory><vcpu>2</vcpu><iothreads>1</iothreads>
<os><type arch='x86_64' machine='pc'>hvm</type></os>$1
<perf>$perf</perf>
<devices><emulator>/usr/bin/qemu-system-x86_64</emulator>
<disk type='file' device='disk'><driver name='qemu' type='qcow2' iothread='1'><statistics><statistic interval='1'/>
<latency-histogram><bin start='0'/><bin start='1000'/><bin start='100000'/></latency-histogram>
<latency-histogram type='flush'><bin start='0'/><bin start='5000'/></latency-histogram></statistics></driver>
<source file='$S/top.qcow2'/><target dev='vda' bus='virtio'/></disk>
<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='$S/data.raw'/><target dev='vdb' bus='virtio'/></disk>
<interface type='ethernet'><model type='virtio'/></interface>
<memballoon model='virtio'><stats period='5'/></memballoon></devices></domain>
EOF
}
mode=dirty-ring
guest_xml "<features><kvm><dirty-ring state='on' size='4096'/></kvm></features>" > "$ROOT$S/guest.xml"
if ! V create "$S/guest.xml" >&2; then
  echo "no KVM dirty ring here: the guest without it, the dirty rate by page sampling" >&2
  mode=page-sampling
  GUEST=${GUEST/KVM\'s dirty ring and a dirty-rate calculation in dirty-ring mode/a dirty-rate calculation (page sampling)}
  guest_xml "" > "$ROOT$S/guest.xml"
  V create "$S/guest.xml" >&2
fi
V domblkthreshold "$NAME" vda 1G || echo "no block threshold (libvirt before 3.2?)" >&2
# (--mode since libvirt 8.1, domdirtyrate-calc since 7.2.)
V domdirtyrate-calc "$NAME" --seconds 1 --mode "$mode" >&2 ||
  V domdirtyrate-calc "$NAME" --seconds 1 >&2 || echo "no dirty-rate calculation here" >&2
# calc_status 2: measured.
for _ in $(seq 50); do
  V domstats --raw --dirtyrate "$NAME" | grep -q 'dirtyrate.calc_status=2' && break
  sleep 0.2
done

V domstats --raw --backing "$NAME" > "$WORK/virsh.txt"
cp "$BIN" "$ROOT$S/reference_keys"
inside "$S/reference_keys" probe qemu:///system "$NAME" > "$WORK/root.json"
"$BIN" probe "$URI" "$NAME" > "$WORK/host.json"
if [ -n "$OUT" ]; then
  "$BIN" render "$ROOT_NAME" "$WORK/root.json" "$WORK/host.json" "$WORK/virsh.txt" "$GUEST" > "$OUT"
  echo "wrote $OUT" >&2
else
  "$BIN" render "$ROOT_NAME" "$WORK/root.json" "$WORK/host.json" "$WORK/virsh.txt" "$GUEST"
fi
