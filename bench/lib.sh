# Helpers for the benchmark scripts (sourced).

# The daemon the guest helpers talk to, and its runtime directory as seen
# from here (a private daemon of scripts/private-libvirtd.sh: its socket URI
# and DIR/run/libvirt). The host's daemon by default.
LIBVIRT_URI=${LIBVIRT_URI:-qemu:///system}
LIBVIRT_RUN=${LIBVIRT_RUN:-/run/libvirt}

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
  if [ -e /dev/kvm ] && virsh -c "$LIBVIRT_URI" domcapabilities --virttype kvm >/dev/null 2>&1; then vt=kvm; fi
  mkdir -p "$dir"; chmod 755 "$dir"
  for i in $(seq 1 "$n"); do
    local name="$prefix-$i"
    virsh -c "$LIBVIRT_URI" domstate "$name" >/dev/null 2>&1 && continue
    qemu-img create -q -f qcow2 "$dir/$name.qcow2" 64M; chmod 666 "$dir/$name.qcow2"
    cat > "$dir/$name.xml" <<XML
<domain type='$vt'><name>$name</name><memory unit='MiB'>32</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os><features><acpi/><apic/></features>
<devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='$dir/$name.qcow2'/><target dev='vda' bus='virtio'/></disk>
<interface type='ethernet'><model type='virtio'/></interface><memballoon model='virtio'><stats period='5'/></memballoon></devices></domain>
XML
    virsh -c "$LIBVIRT_URI" create "$dir/$name.xml" >/dev/null
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
  if [ -e /dev/kvm ] && virsh -c "$LIBVIRT_URI" domcapabilities --virttype kvm >/dev/null 2>&1; then vt=kvm; fi
  mkdir -p "$dir"; chmod 755 "$dir"
  [ -f "$dir/base.qcow2" ] || { make_halting_image "$dir/base.qcow2"; chmod 644 "$dir/base.qcow2"; }
  for i in $(seq 1 "$n"); do
    local name="$prefix-$i"
    virsh -c "$LIBVIRT_URI" domstate "$name" >/dev/null 2>&1 && continue
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
  done | xargs -r -P 4 -n 1 virsh -q -c "$LIBVIRT_URI" create >/dev/null
}

remove_guests() {
  local prefix=$1
  for name in $(virsh -c "$LIBVIRT_URI" list --all --name | grep "^$prefix-" || true); do
    local pid; pid=$(cat "$LIBVIRT_RUN/qemu/$name.pid" 2>/dev/null || true)
    [ -n "$pid" ] && kill -CONT "$pid" 2>/dev/null || true
    virsh -c "$LIBVIRT_URI" destroy "$name" >/dev/null 2>&1 || true
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

# CPU cgroups laid out as a systemd host has them: the agent, libvirtd and
# the scraper each in a service cgroup of its own (QEMU is in libvirt's
# /machine already), so a burst of libvirtd work competes with the agent as
# one group, not thread by thread. CGROUPS=0, or a host without a cpu
# controller, leaves every process where it is.
CG_ROOT=""
cg_setup() {
  [ "${CGROUPS:-1}" = 1 ] || return 0
  if [ -d /sys/fs/cgroup/cpu ] && [ -f /sys/fs/cgroup/cpu/cpu.shares ]; then
    CG_ROOT=/sys/fs/cgroup/cpu/system.slice
  elif grep -qw cpu /sys/fs/cgroup/cgroup.controllers 2>/dev/null; then
    grep -qw cpu /sys/fs/cgroup/cgroup.subtree_control || echo +cpu > /sys/fs/cgroup/cgroup.subtree_control
    CG_ROOT=/sys/fs/cgroup/virtpulse-bench.slice
    mkdir -p "$CG_ROOT"
    grep -qw cpu "$CG_ROOT/cgroup.subtree_control" || echo +cpu > "$CG_ROOT/cgroup.subtree_control"
  else
    echo "no cpu cgroup controller: every process shares one cgroup" >&2
    return 0
  fi
  mkdir -p "$CG_ROOT/virtpulse.service" "$CG_ROOT/libvirtd.service" "$CG_ROOT/prometheus.service"
}

# cg_move NAME PID: moves a process (all its threads) into NAME.service.
cg_move() { [ -z "$CG_ROOT" ] || echo "$2" > "$CG_ROOT/$1.service/cgroup.procs"; }

# cg_restore PID: back to the root cgroup.
cg_restore() {
  [ -n "$CG_ROOT" ] && [ -d "/proc/$1" ] || return 0
  echo "$1" > "$(dirname "$CG_ROOT")/cgroup.procs" 2>/dev/null || true
}

# Where a benchmark stands: printed with its figures.
cg_note() {
  if [ -n "$CG_ROOT" ]; then echo "cgroups: agent, libvirtd and scraper each in its own ($CG_ROOT/*.service), QEMU in libvirt's"
  else echo "cgroups: none (every process competes thread by thread)"; fi
}
