#!/usr/bin/env bash
# Builds the Linux test guest used where the guest itself must act (balloon,
# watchdog, guest agent channel, PM suspend, device unplug, NIC MAC change,
# block threshold, panic, RTC): Debian's kernel and a busybox initramfs whose
# /init runs the shell commands it reads on its second serial port. Nothing
# is installed on the host (apt-get download + dpkg-deb -x). Idempotent: the
# result is cached in $OUT and rebuilt only when the kernel package changes.
set -euo pipefail
OUT=${VIRTPULSE_TEST_GUEST_DIR:-/var/cache/virtpulse/test-guest}

kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
[ -n "$kpkg" ] || { echo "cannot find Debian's kernel package (apt-get update?)" >&2; exit 1; }
stamp="$kpkg $(apt-cache policy busybox-static | awk '/Candidate/ {print $2}') v3"
if [ -f "$OUT/vmlinuz" ] && [ -f "$OUT/initrd.gz" ] && [ "$(cat "$OUT/stamp" 2>/dev/null)" = "$stamp" ]; then
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
chmod 777 "$work"   # apt-get download runs as _apt when it can
apt-get download -q "$kpkg" busybox-static >/dev/null 2>&1 || { apt-get update -q >/dev/null; apt-get download -q "$kpkg" busybox-static >/dev/null 2>&1; }
mkdir -p kernel bb root
dpkg-deb -x "$kpkg"_*.deb kernel
dpkg-deb -x busybox-static_*.deb bb
kver=$(ls kernel/lib/modules)
mods=kernel/lib/modules/$kver

# The drivers the tests need, with their dependencies (from the modules' own metadata).
want="virtio_pci virtio_blk virtio_net virtio_balloon virtio_console i6300esb pvpanic-mmio pvpanic-pci virtio_mem"
declare -A seen=()
order=()
add() {
  local name=$1 file dep
  [ -n "${seen[$name]:-}" ] && return
  seen[$name]=1
  file=$(find "$mods/kernel" -name "$name.ko" -o -name "${name//_/-}.ko" | head -n1)
  [ -n "$file" ] || return 0   # built into the kernel
  deps=$(tr '\0' '\n' < "$file" | sed -n 's/^depends=//p' | head -n1)
  for dep in ${deps//,/ }; do add "$dep"; done
  order+=("$file")
}
for m in $want; do add "$m"; done

mkdir -p root/{bin,dev,proc,sys,tmp,mnt} "root/lib/modules/$kver"
cp bb/bin/busybox root/bin/busybox
for f in "${order[@]}"; do cp "$f" "root/lib/modules/$kver/"; done
for f in "${order[@]}"; do basename "$f" .ko; done > root/modules.list
cat > root/init <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules.list); do insmod /lib/modules/*/$m.ko 2>/dev/null; done
stty -F /dev/ttyS1 raw -echo 115200
echo "virtpulse test guest ready" > /dev/ttyS0
# One shell command per line on ttyS1; its output, then "##done <status>".
while true; do
  while IFS= read -r line; do
    sh -c "$line" 2>&1
    echo "##done $?"
  done < /dev/ttyS1 > /dev/ttyS1
done
INIT
chmod +x root/init
(cd root && find . | ../bb/bin/busybox cpio -o -H newc 2>/dev/null) | gzip -9 > initrd.gz

mkdir -p "$OUT"
install -m 0644 "kernel/boot/vmlinuz-$kver" "$OUT/vmlinuz"
install -m 0644 initrd.gz "$OUT/initrd.gz"
echo "$stamp" > "$OUT/stamp"
echo "test guest: $OUT ($kver, $(du -h "$OUT/initrd.gz" | cut -f1) initramfs)"
