#!/usr/bin/env bash
# Builds the Linux test guest used where the guest itself must act (balloon,
# watchdog, guest agent channel, PM suspend, device unplug, NIC MAC change,
# block threshold, panic, RTC, guest data): Debian's kernel, a busybox
# initramfs whose /init runs the shell commands it reads on its second serial
# port, and Debian's qemu-guest-agent (started by `start-ga`). Nothing
# is installed on the host (apt-get download + dpkg-deb -x). Idempotent: the
# result is cached in $OUT and rebuilt only when the kernel package changes.
set -euo pipefail
OUT=${VIRTPULSE_TEST_GUEST_DIR:-/var/cache/virtpulse/test-guest}

kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
[ -n "$kpkg" ] || { echo "cannot find Debian's kernel package (apt-get update?)" >&2; exit 1; }
# The guest agent from backports when there (guest-get-load needs QEMU 9.1+).
gapkg=qemu-guest-agent
case "$(apt-cache policy qemu-guest-agent 2>/dev/null)" in *bookworm-backports*) gapkg=qemu-guest-agent/bookworm-backports ;; esac
stamp="$kpkg $(apt-cache policy busybox-static | awk '/Candidate/ {print $2}') $gapkg v7"
if [ -f "$OUT/vmlinuz" ] && [ -f "$OUT/initrd.gz" ] && [ "$(cat "$OUT/stamp" 2>/dev/null)" = "$stamp" ]; then
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
chmod 777 "$work"   # apt-get download runs as _apt when it can
apt-get download -q "$kpkg" busybox-static "$gapkg" >/dev/null 2>&1 || { apt-get update -q >/dev/null; apt-get download -q "$kpkg" busybox-static "$gapkg" >/dev/null 2>&1; }
mkdir -p kernel bb ga root
dpkg-deb -x "$kpkg"_*.deb kernel
dpkg-deb -x busybox-static_*.deb bb
dpkg-deb -x qemu-guest-agent_*.deb ga
kver=$(ls kernel/lib/modules)
mods=kernel/lib/modules/$kver

# The drivers the tests need, with their dependencies (from the modules' own metadata).
want="virtio_pci virtio_blk virtio_net virtio_balloon virtio_console i6300esb pvpanic-mmio pvpanic-pci virtio_mem crc32c_generic ext4 loop"
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
# qemu-ga and the shared libraries it needs (the host's: the same release).
mkdir -p root/usr/sbin root/etc root/var/run root/run
cp ga/usr/sbin/qemu-ga root/usr/sbin/qemu-ga
for lib in $(ldd ga/usr/sbin/qemu-ga | grep -o '/[^ ]*'); do
  mkdir -p "root$(dirname "$lib")"
  cp -L "$lib" "root$lib"
done
printf 'ID=virtpulse-test\nNAME="virtpulse test guest"\nVERSION_ID="1"\nVERSION="1 (initramfs)"\nPRETTY_NAME="virtpulse test guest 1"\n' > root/etc/os-release
echo vptest > root/etc/hostname
cat > root/bin/start-ga <<'GA'
#!/bin/sh
# Starts qemu-ga on the org.qemu.guest_agent.0 port (no udev: find it in sysfs).
for p in /sys/class/virtio-ports/*; do
  [ "$(cat "$p/name" 2>/dev/null)" = org.qemu.guest_agent.0 ] || continue
  exec /usr/sbin/qemu-ga -m virtio-serial -p "/dev/$(basename "$p")" -d -t /run
done
echo "no guest agent port" >&2; exit 1
GA
chmod +x root/bin/start-ga
for f in "${order[@]}"; do cp "$f" "root/lib/modules/$kver/"; done
for f in "${order[@]}"; do basename "$f" .ko; done > root/modules.list
cat > root/init <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
hostname -F /etc/hostname
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
