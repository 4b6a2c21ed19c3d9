#!/usr/bin/env bash
# Creates (or removes) two tiny demo guests for the quick start: no OS,
# SeaBIOS only, 32 MiB, a qcow2 disk with a backing file, a NIC and a balloon.
# KVM when it works, TCG otherwise. Idempotent.
#   scripts/demo-guests.sh create|destroy
set -euo pipefail
dir=/var/lib/virtpulse-demo
uri=qemu:///system
names=(virtpulse-demo-1 virtpulse-demo-2)

virt_type() {
  if [ -e /dev/kvm ] && virsh -c "$uri" domcapabilities --virttype kvm >/dev/null 2>&1; then echo kvm; else echo qemu; fi
}

create() {
  mkdir -p "$dir"; chmod 755 "$dir"
  local vt; vt=$(virt_type)
  for n in "${names[@]}"; do
    if virsh -c "$uri" dominfo "$n" >/dev/null 2>&1; then
      virsh -c "$uri" domstate "$n" | grep -q running || virsh -c "$uri" start "$n" >/dev/null
      continue
    fi
    [ -f "$dir/$n-base.qcow2" ] || qemu-img create -q -f qcow2 "$dir/$n-base.qcow2" 64M
    [ -f "$dir/$n.qcow2" ] || qemu-img create -q -f qcow2 -b "$dir/$n-base.qcow2" -F qcow2 "$dir/$n.qcow2"
    chmod 666 "$dir"/*.qcow2
    cat > "$dir/$n.xml" <<XML
<domain type='$vt'>
  <name>$n</name>
  <memory unit='MiB'>32</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <features><acpi/><apic/></features>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='$dir/$n.qcow2'/><target dev='vda' bus='virtio'/></disk>
    <interface type='ethernet'><model type='virtio'/></interface>
    <memballoon model='virtio'><stats period='5'/></memballoon>
  </devices>
</domain>
XML
    virsh -c "$uri" define "$dir/$n.xml" >/dev/null
    virsh -c "$uri" start "$n" >/dev/null
  done
  echo "demo guests running ($vt): ${names[*]}"
}

destroy() {
  for n in "${names[@]}"; do
    virsh -c "$uri" destroy "$n" >/dev/null 2>&1 || true
    virsh -c "$uri" undefine "$n" >/dev/null 2>&1 || true
  done
  rm -rf "$dir"
}

case "${1:-create}" in
  create) create ;;
  destroy) destroy ;;
  *) echo "usage: $0 create|destroy" >&2; exit 64 ;;
esac
