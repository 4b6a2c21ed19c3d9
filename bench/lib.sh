# Helpers for the benchmark scripts (sourced).

# CPU time (user+system) of a process in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
clk_tck() { getconf CLK_TCK; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# Value of a metric line (first match of a regex) on a /metrics URL. awk
# reads to the end: leaving early would fail curl (SIGPIPE) under pipefail.
metric() { curl -s "$1" | awk -v re="$2" '!done && $0 ~ re && $0 !~ /^#/ {print $NF; done = 1}'; }

wait_http() {
  for _ in $(seq 1 200); do curl -sf -o /dev/null "$1" && return 0; sleep 0.1; done
  echo "no answer from $1" >&2; return 1
}

# Creates N tiny no-OS guests named $prefix-1..N (KVM if possible).
make_guests() {
  local prefix=$1 n=$2 dir=$3 vt=qemu
  if [ -e /dev/kvm ] && virsh -c qemu:///system domcapabilities --virttype kvm >/dev/null 2>&1; then vt=kvm; fi
  mkdir -p "$dir"; chmod 755 "$dir"
  for i in $(seq 1 "$n"); do
    local name="$prefix-$i"
    virsh -c qemu:///system domstate "$name" >/dev/null 2>&1 && continue
    qemu-img create -q -f qcow2 "$dir/$name.qcow2" 64M; chmod 666 "$dir/$name.qcow2"
    cat > "$dir/$name.xml" <<XML
<domain type='$vt'><name>$name</name><memory unit='MiB'>32</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os><features><acpi/><apic/></features>
<devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='$dir/$name.qcow2'/><target dev='vda' bus='virtio'/></disk>
<interface type='ethernet'><model type='virtio'/></interface><memballoon model='virtio'><stats period='5'/></memballoon></devices></domain>
XML
    virsh -c qemu:///system create "$dir/$name.xml" >/dev/null
  done
}

# A 64 MiB disk image whose boot sector only halts the CPU with interrupts
# off (cli; hlt): SeaBIOS boots it and the guest then costs the host nothing,
# where a disk without a boot sector has SeaBIOS retry (and reboot) forever.
make_halting_image() {
  local out=$1 raw="$1.raw"
  qemu-img create -q -f raw "$raw" 64M
  printf '\xfa\xf4\xeb\xfd' | dd of="$raw" conv=notrunc status=none
  printf '\x55\xaa' | dd of="$raw" bs=1 seek=510 conv=notrunc status=none
  qemu-img convert -q -f raw -O qcow2 "$raw" "$out"
  rm -f "$raw"
}

# Creates N guests shaped like tenants, named $prefix-1..N: $vcpus vCPUs,
# vda a qcow2 overlay on one shared base image (a two-layer backing chain),
# vdb a plain qcow2, two virtio NICs and a balloon. No OS: the base image's
# boot sector halts the guest. Started four at a time.
make_shaped_guests() {
  local prefix=$1 n=$2 dir=$3 vcpus=$4 vt=qemu
  if [ -e /dev/kvm ] && virsh -c qemu:///system domcapabilities --virttype kvm >/dev/null 2>&1; then vt=kvm; fi
  mkdir -p "$dir"; chmod 755 "$dir"
  [ -f "$dir/base.qcow2" ] || { make_halting_image "$dir/base.qcow2"; chmod 644 "$dir/base.qcow2"; }
  for i in $(seq 1 "$n"); do
    local name="$prefix-$i"
    virsh -c qemu:///system domstate "$name" >/dev/null 2>&1 && continue
    qemu-img create -q -f qcow2 -b "$dir/base.qcow2" -F qcow2 "$dir/$name-vda.qcow2"
    qemu-img create -q -f qcow2 "$dir/$name-vdb.qcow2" 64M
    chmod 666 "$dir/$name-vda.qcow2" "$dir/$name-vdb.qcow2"
    cat > "$dir/$name.xml" <<XML
<domain type='$vt'><name>$name</name><memory unit='MiB'>32</memory><vcpu>$vcpus</vcpu>
<os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os><features><acpi/><apic/></features>
<devices>
<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='$dir/$name-vda.qcow2'/><target dev='vda' bus='virtio'/></disk>
<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='$dir/$name-vdb.qcow2'/><target dev='vdb' bus='virtio'/></disk>
<interface type='ethernet'><model type='virtio'/></interface>
<interface type='ethernet'><model type='virtio'/></interface>
<memballoon model='virtio'><stats period='5'/></memballoon></devices></domain>
XML
    echo "$dir/$name.xml"
  done | xargs -r -P 4 -n 1 virsh -q -c qemu:///system create >/dev/null
}

remove_guests() {
  local prefix=$1
  for name in $(virsh -c qemu:///system list --all --name | grep "^$prefix-" || true); do
    local pid; pid=$(cat "/run/libvirt/qemu/$name.pid" 2>/dev/null || true)
    [ -n "$pid" ] && kill -CONT "$pid" 2>/dev/null || true
    virsh -c qemu:///system destroy "$name" >/dev/null 2>&1 || true
  done
}

# Guest benchmarks: how many guests, how long each measurement, and where.
GUESTS=${GUESTS:-20}
WINDOW=${WINDOW:-60}
PREFIX=vpbench
DIR=/var/tmp/virtpulse-bench

# Installs and builds what a guest benchmark needs, starts GUESTS guests
# named $PREFIX-N under $DIR, and removes them (and kills the PIDs added to
# the pids array) when the script exits.
start_bench() {
  scripts/install-test-deps.sh >/dev/null
  scripts/start-libvirtd.sh
  cargo build --release --locked -q
  pids=()
  trap bench_cleanup EXIT
  echo "starting $GUESTS guests..." >&2
  make_guests "$PREFIX" "$GUESTS" "$DIR"
}

bench_cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  remove_guests "$PREFIX"
  rm -rf "$DIR"
}
