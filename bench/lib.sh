# Helpers for the benchmark scripts (sourced).

# CPU time (user+system) of a process in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
clk_tck() { getconf CLK_TCK; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# Value of a metric line (first match of a regex) on a /metrics URL.
metric() { curl -s "$1" | awk -v re="$2" '$0 ~ re && $0 !~ /^#/ {print $NF; exit}'; }

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
