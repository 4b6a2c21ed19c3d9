#!/usr/bin/env bash
# Dense-host benchmark: GUESTS no-OS KVM guests shaped like tenants (VCPUS
# vCPUs, vda a qcow2 overlay on a shared base image, vdb plain, two virtio
# NICs, a balloon), and in one run, one after the other on the same guests:
#   - virtpulse with its default profile, domain stats every INTERVAL s,
#   - virtpulse exporting everything (every group, every backing layer,
#     every deep switch),
#   - Debian's prometheus-libvirt-exporter, scraped every INTERVAL s,
#   - the floor: `virsh -r domstats` for the same groups as each profile,
#   - virtpulse's default schedule for one minute (scraped every 15 s).
# Each run scrapes once per cycle and reports agent and libvirtd CPU per
# cycle, then 100 more scrapes with curl (plain and gzip) for latency, body size,
# series and memory. Each scrape of the agent is followed by one of the floor:
# the same bytes served from a file with sendfile, under the same load.
# Processes are placed in CPU cgroups as on a systemd host (bench/lib.sh
# cg_setup; CGROUPS=0 to leave them where they are).
#
#   bench/scale.sh        GUESTS=120 VCPUS=4 WINDOW=60 INTERVAL=5 by default
#   VIRTPULSE_BIN=path    measure another build (e.g. an older one)
#   LEGACY=1              that build predates export profiles: "everything"
#                         is its default configuration
#   KEEP_GUESTS=1         leave the guests running (to run again faster)
#   SCHEDULE_MINUTES=2    length of each default-schedule run
#   EXTRA_ENV="K=V ..."   environment for every virtpulse run (allocator
#                         tunables such as MALLOC_ARENA_MAX=2)
set -euo pipefail
cd "$(dirname "$0")/.."
GUESTS=${GUESTS:-120}
VCPUS=${VCPUS:-4}
. bench/lib.sh
INTERVAL=${INTERVAL:-5}
BIN=${VIRTPULSE_BIN:-target/release/virtpulse}
BUILD=${VIRTPULSE_BIN:+no}
# The agent refuses VIRTPULSE_* variables that name no configuration key.
unset VIRTPULSE_BIN
OURS=127.0.0.1:19177
THEIRS=127.0.0.1:19178
FLOOR=127.0.0.1:19179
PREFIX=vpscale
DIR=/var/tmp/virtpulse-scale
M="python3 bench/measure.py"

scripts/install-test-deps.sh >/dev/null
scripts/start-libvirtd.sh
[ -n "$BUILD" ] || cargo build --release --locked -q
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  cg_restore "${lpid:-}"
  if [ -z "${KEEP_GUESTS:-}" ]; then remove_guests "$PREFIX"; rm -rf "$DIR"; fi
}
trap cleanup EXIT
echo "starting $GUESTS guests with $VCPUS vCPUs, 2 disks, 2 NICs..." >&2
t0=$(date +%s)
make_shaped_guests "$PREFIX" "$GUESTS" "$DIR" "$VCPUS"
echo "guests up in $(( $(date +%s) - t0 )) s" >&2
running=$(virsh -r -c qemu:///system list --name | grep -c "^$PREFIX-" || true)
[ "$running" -ge "$GUESTS" ] || { echo "only $running of $GUESTS guests run" >&2; exit 1; }
sleep 5
# The host's daemon, not a private one a test runs in its own namespace.
lpid=$(cat /run/libvirtd.pid 2>/dev/null || true)
if [ -z "$lpid" ] || [ "$(cat "/proc/$lpid/comm" 2>/dev/null)" != libvirtd ] ||
  [ "$(readlink "/proc/$lpid/ns/mnt")" != "$(readlink /proc/self/ns/mnt)" ]; then
  echo "/run/libvirtd.pid names no libvirtd of this mount namespace (a virtqemud host?): cannot measure the daemon" >&2
  exit 1
fi
cg_setup
cg_move libvirtd "$lpid"

# scrape URL N NAME: latency, body and series of URL, with the floor serving
# the same bytes scraped in between (as the prometheus service).
scrape() {
  local url=$1 n=$2 floor="$DIR/floor-$3"
  mkdir -p "$floor"
  curl -s -o "$floor/body" "$url"
  curl -s -H 'Accept-Encoding: gzip' -o "$floor/body.gz" "$url"
  $M serve "$floor" "${FLOOR#*:}" &
  local fpid=$!
  cg_move virtpulse "$fpid"
  wait_http "http://$FLOOR/metrics"
  ( cg_move prometheus "$BASHPID"; exec $M scrape "$url" "$n" "http://$FLOOR/metrics" )
  kill "$fpid"; wait "$fpid" 2>/dev/null || true
}

# agent NAME TOML: runs virtpulse with that configuration, measures, and
# fills the row arrays under NAME.
declare -A CPU LCPU CYC P50 P99 RAW GZ SER DSER RSS ANON HWM G50 G99 F50 F99 FG50 FG99
agent() {
  local name=$1 toml=$2 cfg="$DIR/$1.toml"
  printf '%s\n' "$toml" > "$cfg"
  # shellcheck disable=SC2086
  env ${EXTRA_ENV:-} VIRTPULSE_SINKS__PROMETHEUS__LISTEN=$OURS VIRTPULSE_AGENT__LOG_LEVEL=warn \
    "$BIN" --config "$cfg" 2>>"$DIR/$name.log" &
  local pid=$!; pids+=("$pid")
  cg_move virtpulse "$pid"
  wait_http "http://$OURS/metrics"
  # Warm up: every guest exported, two cycles done.
  until [ "$(curl -s "http://$OURS/metrics" | grep -c "^libvirt_domain_state{domain=\"$PREFIX-")" -ge "$GUESTS" ]; do sleep 0.5; done
  sleep $((INTERVAL * 2))
  read -r CPU[$name] LCPU[$name] CYC[$name] <<<"$($M cycles "http://$OURS/metrics" "$pid" "$lpid" "$WINDOW" "$INTERVAL")"
  read -r P50[$name] P99[$name] RAW[$name] GZ[$name] SER[$name] DSER[$name] G50[$name] G99[$name] \
    F50[$name] F99[$name] FG50[$name] FG99[$name] <<<"$(scrape "http://$OURS/metrics" 100 "$name")"
  read -r RSS[$name] ANON[$name] HWM[$name] <<<"$($M memory "$pid")"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

base="[collectors.domain_stats]
interval = \"${INTERVAL}s\""
if [ -n "${LEGACY:-}" ]; then
  # Before profiles existed, the defaults exported everything; the second
  # run is the peer's groups without the backing chain.
  agent defaults "$base"
  everything_toml="$base
groups = [\"state\", \"cpu-total\", \"balloon\", \"interface\", \"block\"]
backing_chain = false"
  DEFAULT_GROUPS="--raw --backing"
else
  agent defaults "$base"
  everything_toml="$base
[collectors.node]
per_cpu = true
[metrics]
profile = \"everything\""
  DEFAULT_GROUPS="--state --cpu-total --balloon --vcpu --interface --block"
fi
agent everything "$everything_toml"

# The peer collects on every scrape.
prometheus-libvirt-exporter --web.listen-address="$THEIRS" --libvirt.uri=qemu:///system 2>"$DIR/peer.log" &
ppid=$!; pids+=("$ppid")
cg_move virtpulse "$ppid"
wait_http "http://$THEIRS/metrics"
curl -s -o /dev/null "http://$THEIRS/metrics"
read -r CPU[peer] LCPU[peer] CYC[peer] <<<"$($M cycles "http://$THEIRS/metrics" "$ppid" "$lpid" "$WINDOW" "$INTERVAL")"
read -r P50[peer] P99[peer] RAW[peer] GZ[peer] SER[peer] DSER[peer] G50[peer] G99[peer] \
  F50[peer] F99[peer] FG50[peer] FG99[peer] <<<"$(scrape "http://$THEIRS/metrics" 10 peer)"
read -r RSS[peer] ANON[peer] HWM[peer] <<<"$($M memory "$ppid")"
kill "$ppid"; wait "$ppid" 2>/dev/null || true

# The floor: what libvirtd spends answering the same question from virsh.
# shellcheck disable=SC2086
read -r F_DEF F_DEF_WALL <<<"$($M floor "$lpid" 10 virsh -r -c qemu:///system domstats $DEFAULT_GROUPS)"
read -r F_ALL F_ALL_WALL <<<"$($M floor "$lpid" 10 virsh -r -c qemu:///system domstats --raw --backing)"

# The default schedule for SCHEDULE_MINUTES minutes, scraped every 15 s:
# CPU per minute, and domain stats chunks missed (none expected). Then the
# same without the inventory and health collectors (health, snapshots,
# networks, node_devices) to show what they add.
printf '' > "$DIR/schedule.toml"
SCHEDULE_MINUTES=${SCHEDULE_MINUTES:-2}
[ "$SCHEDULE_MINUTES" -ge 1 ] || { echo "SCHEDULE_MINUTES must be at least 1" >&2; exit 1; }
WITHOUT_INVENTORY="VIRTPULSE_COLLECTORS__HEALTH__ENABLED=false VIRTPULSE_COLLECTORS__SNAPSHOTS__ENABLED=false VIRTPULSE_COLLECTORS__NETWORKS__ENABLED=false VIRTPULSE_COLLECTORS__NODE_DEVICES__ENABLED=false"
# schedule NAME ENV...: fills S_CPU, S_LCPU and S_MISSED under NAME.
declare -A S_CPU S_LCPU S_MISSED
schedule() {
  local name=$1; shift
  # shellcheck disable=SC2086
  env ${EXTRA_ENV:-} "$@" VIRTPULSE_SINKS__PROMETHEUS__LISTEN=$OURS VIRTPULSE_AGENT__LOG_LEVEL=warn \
    "$BIN" --config "$DIR/schedule.toml" 2>>"$DIR/schedule-$name.log" &
  local spid=$!; pids+=("$spid")
  cg_move virtpulse "$spid"
  wait_http "http://$OURS/metrics"
  # Every collector's first run (node devices and snapshots run every 5
  # minutes: their first run is inside this warm-up, so the window shows
  # what they cost on average only over a longer run).
  sleep 20
  local a0 l0; a0=$(cpu_ticks "$spid"); l0=$(cpu_ticks "$lpid")
  for _ in $(seq 1 $((SCHEDULE_MINUTES * 4))); do curl -s -o /dev/null "http://$OURS/metrics"; sleep 15; done
  S_CPU[$name]=$(( ($(cpu_ticks "$spid") - a0) * 1000 / $(clk_tck) / SCHEDULE_MINUTES ))
  S_LCPU[$name]=$(( ($(cpu_ticks "$lpid") - l0) * 1000 / $(clk_tck) / SCHEDULE_MINUTES ))
  S_MISSED[$name]=$(curl -s "http://$OURS/metrics" | awk '/^virtpulse_collection_chunks_missed_total\{collector="domain_stats"/ {n += $NF} END {print n + 0}')
  kill "$spid"; wait "$spid" 2>/dev/null || true
}
schedule all
# shellcheck disable=SC2086
schedule without $WITHOUT_INVENTORY

# An event storm: every guest destroyed in a row while the agent runs with
# its defaults. How many extra domain stats collections do the lifecycle
# events cause? (Skipped with KEEP_GUESTS: it destroys the guests.)
storm=""
if [ -z "${KEEP_GUESTS:-}" ]; then
  env ${EXTRA_ENV:-} VIRTPULSE_SINKS__PROMETHEUS__LISTEN=$OURS VIRTPULSE_AGENT__LOG_LEVEL=warn \
    "$BIN" --config "$DIR/schedule.toml" 2>>"$DIR/storm.log" &
  tpid=$!; pids+=("$tpid")
  cg_move virtpulse "$tpid"
  wait_http "http://$OURS/metrics"
  okc() { metric "http://$OURS/metrics" 'virtpulse_collections_total\{collector="domain_stats",result="ok"\}' | cut -d. -f1; }
  until [ "$(okc)" -ge 1 ]; do sleep 1; done
  c0=$(okc); t0=$(date +%s)
  virsh -r -c qemu:///system list --name | grep "^$PREFIX-" | xargs -r -P 4 -n 1 virsh -q -c qemu:///system destroy >/dev/null
  t1=$(date +%s); sleep 10
  c1=$(okc); t2=$(date +%s)
  ticks=$(( (t2 - t0) / 15 + 1 ))
  storm="event storm: $GUESTS guests destroyed in $((t1 - t0)) s: $((c1 - c0)) domain stats collections in the $((t2 - t0)) s after (about $ticks of them scheduled ticks)"
  kill "$tpid"; wait "$tpid" 2>/dev/null || true
fi

mib() { awk "BEGIN{printf \"%.1f\", $1/1024}"; }
kib() { awk "BEGIN{printf \"%.0f\", $1/1024}"; }
ratio() { awk "BEGIN{printf \"%.2f\", $1/$2}"; }
echo
echo "$GUESTS guests x $VCPUS vCPUs, 2 disks (vda on a backing file), 2 NICs; domain stats every ${INTERVAL} s, one scrape per cycle, ${WINDOW} s per run; binary $BIN ${EXTRA_ENV:-}"
cg_note
echo "latency: curl time_total; gzip bodies are fetched compressed and not inflated (inflating is the scraper's work)"
echo "peer: prometheus-libvirt-exporter $(dpkg-query -W -f='${Version}' prometheus-libvirt-exporter), per scrape"
echo
second="virtpulse everything"; [ -n "${LEGACY:-}" ] && second="virtpulse, peer's groups"
echo "| | virtpulse default | $second | peer |"
echo "|---|---|---|---|"
echo "| agent CPU per cycle (ms) | ${CPU[defaults]} ($(ratio "${CPU[defaults]}" "${CPU[peer]}") of peer) | ${CPU[everything]} ($(ratio "${CPU[everything]}" "${CPU[peer]}") of peer) | ${CPU[peer]} |"
echo "| libvirtd CPU per cycle (ms) | ${LCPU[defaults]} (floor ${F_DEF}: $(ratio "${LCPU[defaults]}" "$F_DEF")x) | ${LCPU[everything]} (floor ${F_ALL}: $(ratio "${LCPU[everything]}" "$F_ALL")x) | ${LCPU[peer]} |"
echo "| /metrics p50 / p99 (ms) | ${P50[defaults]} / ${P99[defaults]} | ${P50[everything]} / ${P99[everything]} | ${P50[peer]} / ${P99[peer]} |"
echo "| /metrics gzip p50 / p99 (ms) | ${G50[defaults]} / ${G99[defaults]} | ${G50[everything]} / ${G99[everything]} | ${G50[peer]} / ${G99[peer]} |"
echo "| floor, same bytes by sendfile: p50 / p99 (ms) | ${F50[defaults]} / ${F99[defaults]} | ${F50[everything]} / ${F99[everything]} | ${F50[peer]} / ${F99[peer]} |"
echo "| floor, gzip bytes: p50 / p99 (ms) | ${FG50[defaults]} / ${FG99[defaults]} | ${FG50[everything]} / ${FG99[everything]} | ${FG50[peer]} / ${FG99[peer]} |"
echo "| series (domain series per domain) | ${SER[defaults]} ($(( DSER[defaults] / GUESTS ))) | ${SER[everything]} ($(( DSER[everything] / GUESTS ))) | ${SER[peer]} ($(( DSER[peer] / GUESTS ))) |"
echo "| body raw / gzip (KiB) | $(kib "${RAW[defaults]}") / $(kib "${GZ[defaults]}") | $(kib "${RAW[everything]}") / $(kib "${GZ[everything]}") | $(kib "${RAW[peer]}") / $(kib "${GZ[peer]}") |"
echo "| VmRSS / RssAnon / VmHWM (MiB) | $(mib "${RSS[defaults]}") / $(mib "${ANON[defaults]}") / $(mib "${HWM[defaults]}") | $(mib "${RSS[everything]}") / $(mib "${ANON[everything]}") / $(mib "${HWM[everything]}") | $(mib "${RSS[peer]}") / $(mib "${ANON[peer]}") / $(mib "${HWM[peer]}") |"
echo "| cycles measured | ${CYC[defaults]} | ${CYC[everything]} | ${CYC[peer]} scrapes |"
echo
echo "floor: virsh -r domstats $DEFAULT_GROUPS: libvirtd ${F_DEF} ms, wall ${F_DEF_WALL} ms; --raw --backing: libvirtd ${F_ALL} ms, wall ${F_ALL_WALL} ms"
echo "default schedule, per minute over $SCHEDULE_MINUTES min: agent ${S_CPU[all]} ms CPU, libvirtd ${S_LCPU[all]} ms CPU, domain stats chunks missed ${S_MISSED[all]}"
echo "  without health, snapshots, networks, node_devices: agent ${S_CPU[without]} ms CPU, libvirtd ${S_LCPU[without]} ms CPU, chunks missed ${S_MISSED[without]}"
echo "per domain (default profile): agent $(awk "BEGIN{printf \"%.1f\", ${CPU[defaults]} * 1000 / $GUESTS}") us CPU per cycle, libvirtd $(awk "BEGIN{printf \"%.1f\", ${LCPU[defaults]} * 1000 / $GUESTS}") us per cycle, VmRSS $(awk "BEGIN{printf \"%.1f\", ${RSS[defaults]} / $GUESTS}") KiB, RssAnon $(awk "BEGIN{printf \"%.1f\", ${ANON[defaults]} / $GUESTS}") KiB"
if [ -n "$storm" ]; then echo "$storm"; fi
