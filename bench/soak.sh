#!/usr/bin/env bash
# Soak (issue 24): the release agent for DURATION seconds against GUESTS
# tenant-shaped halted guests on a private libvirtd, exporting to Prometheus,
# Kafka (tansu) and OTLP (rotel), under faults on a schedule:
#   - churn: a small transient guest created every CHURN_EVERY s, each
#     destroyed once CHURN_KEEP newer ones run;
#   - the private libvirtd restarted every LIBVIRTD_RESTART_EVERY s;
#   - the Kafka broker SIGKILLed every KAFKA_KILL_EVERY s, down KAFKA_DOWN s;
#   - the OTLP receiver stopped every OTLP_STOP_EVERY s for OTLP_DOWN s;
#   - a configuration reload (rewritten file + SIGHUP) every RELOAD_EVERY s,
#     toggling [domains] include and the domain stats interval;
#   - one guest's QEMU SIGSTOPped at SIGSTOP_AT s for SIGSTOP_FOR s.
# Every SAMPLE_EVERY s: the agent's VmRSS, RssAnon, open fds, threads, tokio tasks, spool
# size on disk and records, series (samples.csv), and which destroyed churn
# guests still have series. At the end: summary.txt (slopes per hour after
# WARMUP s, every drop/error/failure counter, the event accounting of the
# churned guests: an independent `virsh event --all --loop` listener vs what
# kafka-python reads back from the broker, and series that outlived their
# documented retention) and a plot, in OUT.
#
#   bench/soak.sh                       one hour, 120 guests (defaults below)
#   DURATION=360 GUESTS=6 WARMUP=60 LIBVIRTD_RESTART_EVERY=120 \
#   KAFKA_KILL_EVERY=150 KAFKA_DOWN=30 OTLP_STOP_EVERY=400 OTLP_STOP_FIRST=60 \
#   OTLP_DOWN=60 RELOAD_EVERY=45 SIGSTOP_AT=80 SIGSTOP_FOR=60 bench/soak.sh
#
# The host's libvirtd is never used: the guests, the agent and the listener
# talk to a private daemon (scripts/private-libvirtd.sh) in a network
# namespace of the soak's own (taps, no host network touched) that survives
# its restarts. The broker runs on tansu's in-memory storage (its other
# engines refuse idempotent producers), so a restart starts empty: before
# each SIGKILL the churn pauses, the agent's spool drains, and kafka-python
# reads everything the broker holds (kafka-GEN.jsonl); the events of the
# outage are spooled and delivered to the next generation. Churn also pauses
# while libvirtd restarts, until the agent and the listener are connected
# again (what happens while the agent cannot see is covered by its resync
# records, not by events).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DURATION=${DURATION:-3600}
GUESTS=${GUESTS:-120}
. bench/lib.sh
VCPUS=${VCPUS:-4}
SAMPLE_EVERY=${SAMPLE_EVERY:-10}
WARMUP=${WARMUP:-300}
CHURN_EVERY=${CHURN_EVERY:-5}
CHURN_KEEP=${CHURN_KEEP:-2}
LIBVIRTD_RESTART_EVERY=${LIBVIRTD_RESTART_EVERY:-600}
LIBVIRTD_RESTART_FIRST=${LIBVIRTD_RESTART_FIRST:-$LIBVIRTD_RESTART_EVERY}
KAFKA_KILL_EVERY=${KAFKA_KILL_EVERY:-900}
KAFKA_KILL_FIRST=${KAFKA_KILL_FIRST:-$((KAFKA_KILL_EVERY / 2))}
KAFKA_DOWN=${KAFKA_DOWN:-60}
OTLP_STOP_EVERY=${OTLP_STOP_EVERY:-1200}
OTLP_STOP_FIRST=${OTLP_STOP_FIRST:-$((OTLP_STOP_EVERY / 2))}
OTLP_DOWN=${OTLP_DOWN:-180}
RELOAD_EVERY=${RELOAD_EVERY:-180}
SIGSTOP_AT=${SIGSTOP_AT:-$((DURATION / 3))}
SIGSTOP_FOR=${SIGSTOP_FOR:-120}
# Seconds kafka-python reads the broker before each kill and at the end.
KAFKA_READ=${KAFKA_READ:-20}
OUT=${OUT:-/var/tmp/virtpulse-soak/$(date -u +%Y%m%dT%H%M%SZ)}
BIN=${VIRTPULSE_BIN:-target/release/virtpulse}
# Short: socket paths are limited to 108 bytes.
VPD=/var/tmp/vpsoak-$$
NETNS=vpsoak-$$
GDIR=/var/tmp/vpsoak-guests-$$
PREFIX=soakg
CPREFIX=soakc

mkdir -p "$OUT" "$GDIR/churn"
OUT=$(realpath "$OUT")
CTL=$OUT/ctl
mkdir -p "$CTL"
log() { echo "$(date -u +%H:%M:%S) [$(( $(date +%s) - ${T0:-$(date +%s)} ))s] $*" | tee -a "$OUT/faults.log" >&2; }

# --- what is needed ---------------------------------------------------------
scripts/install-test-deps.sh >/dev/null
TANSU=/opt/virtpulse-test/tansu/bin/tansu
[ -x "$TANSU" ] || scripts/install-tansu.sh
ROTEL=$(scripts/install-rotel.sh)
KPY=$(scripts/install-kafka-python.sh)
if [ ! -x "$BIN" ]; then cargo build --release --locked -q; fi
BIN=$(realpath "$BIN")
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PROM=127.0.0.1:$(free_port)
KPORT=$(free_port)
GRPC=127.0.0.1:$(free_port)
HTTP=127.0.0.1:$(free_port)
URL=http://$PROM/metrics

# --- cleanup: only what this script started -----------------------------------
AGENT= BROKER= ROTELPID= LISTENER= CHURN= SAMPLER= STOPPED=
cleanup() {
  set +e
  [ -n "$STOPPED" ] && kill -CONT "$STOPPED" 2>/dev/null
  touch "$CTL/stop" "$CTL/churn-stop"
  rm -f "$CTL/pause"
  for p in $SAMPLER $CHURN; do wait "$p" 2>/dev/null; done
  for p in $AGENT $LISTENER $ROTELPID $BROKER; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  if [ -n "${URI:-}" ]; then
    LIBVIRT_URI=$URI LIBVIRT_RUN=$VPD/run/libvirt remove_guests "$PREFIX"
    LIBVIRT_URI=$URI LIBVIRT_RUN=$VPD/run/libvirt remove_guests "$CPREFIX"
  fi
  scripts/private-libvirtd.sh stop "$VPD" 2>>"$OUT/libvirtd.log"
  ip netns del "$NETNS" 2>/dev/null
  rm -rf "$VPD" "$GDIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- the private libvirtd, in a network namespace that outlives its restarts --
ip netns add "$NETNS"
ip netns exec "$NETNS" ip link set lo up
start_libvirtd() { nsenter --net="/run/netns/$NETNS" scripts/private-libvirtd.sh start "$VPD" 2>>"$OUT/libvirtd.log"; }
URI=$(start_libvirtd)
# Never the host's daemon: an empty URI would make virsh use qemu:///system.
case $URI in *"socket=$VPD/"*) ;; *) echo "private libvirtd gave no URI of its own: '$URI'" >&2; exit 1 ;; esac
export LIBVIRT_URI=$URI LIBVIRT_RUN=$VPD/run/libvirt
echo "private libvirtd: $URI (results in $OUT)" >&2

t=$(date +%s)
make_shaped_guests "$PREFIX" "$GUESTS" "$GDIR" "$VCPUS"
running=$(virsh -r -c "$URI" list --name | grep -c "^$PREFIX-" || true)
[ "$running" -ge "$GUESTS" ] || { echo "only $running of $GUESTS guests run" >&2; exit 1; }
echo "$GUESTS guests up in $(( $(date +%s) - t )) s" >&2

# --- the event listener (again after each libvirtd restart) -------------------
LGEN=0
start_listener() {
  LGEN=$((LGEN + 1))
  # Line-buffered: what it printed is on disk when it is stopped.
  stdbuf -oL virsh -c "$URI" event --all --loop --timestamp > "$OUT/virsh-events-$LGEN.log" 2>&1 &
  LISTENER=$!
  sleep 1
}
stop_listener() { [ -z "$LISTENER" ] || { kill -INT "$LISTENER" 2>/dev/null; wait "$LISTENER" 2>/dev/null || true; LISTENER=; }; }

# --- Kafka broker (tansu, in-memory storage) ------------------------------------
KGEN=0
start_broker() {
  KGEN=$((KGEN + 1))
  "$TANSU" broker --listener-url "tcp://127.0.0.1:$KPORT" --advertised-listener-url "tcp://127.0.0.1:$KPORT" \
    --storage-engine memory://tansu/ >> "$OUT/broker.log" 2>&1 &
  BROKER=$!
  for _ in $(seq 1 200); do (exec 3<>"/dev/tcp/127.0.0.1/$KPORT") 2>/dev/null && break; sleep 0.1; done
  local topic
  for topic in libvirt.events libvirt.metrics; do
    "$TANSU" topic create "$topic" --partitions 3 --broker "tcp://127.0.0.1:$KPORT" >> "$OUT/broker.log" 2>&1 || true
  done
}
# Reads what the broker holds (a fresh consumer group each time).
read_broker() {
  "$KPY" tests/tools/kafka_consume.py --bootstrap "127.0.0.1:$KPORT" --topic libvirt.events \
    --group "soak-$$-$KGEN-$(date +%s)" --deadline "$KAFKA_READ" --headers \
    > "$OUT/kafka-$KGEN.jsonl" 2>>"$OUT/kafka-consume.err"
  log "kafka-python read generation $KGEN: $(grep -c '"event":"' "$OUT/kafka-$KGEN.jsonl" || true) event messages"
}

# --- OTLP receiver ------------------------------------------------------------------
start_rotel() {
  "$ROTEL" start --otlp-grpc-endpoint "$GRPC" --otlp-http-endpoint "$HTTP" --exporter blackhole >> "$OUT/rotel.log" 2>&1 &
  ROTELPID=$!
}

# --- the agent ------------------------------------------------------------------------
RELOADS=0
write_config() {
  local include='[]' interval=15s
  if [ $((RELOADS % 2)) = 1 ]; then include="[\"$PREFIX-*\", \"$CPREFIX-*\"]"; fi
  if [ $((RELOADS % 4)) -ge 2 ]; then interval=10s; fi
  cat > "$OUT/agent.toml.new" <<TOML
[agent]
log_level = "info"
log_format = "text"
[libvirt]
uri = "$URI"
[domains]
include = $include
[collectors.domain_stats]
interval = "$interval"
[sinks.prometheus]
listen = "$PROM"
[sinks.kafka]
enabled = true
brokers = ["127.0.0.1:$KPORT"]
create_topics = true
spool_dir = "$OUT/spool"
[sinks.otlp]
enabled = true
endpoint = "http://$GRPC"
protocol = "grpc"
export_interval = "15s"
TOML
  mv "$OUT/agent.toml.new" "$OUT/agent.toml"
  echo "$(date +%s) include=$include interval=$interval" >> "$OUT/config-history.log"
}

metrics() { curl -s --max-time 10 "$URL" || true; }
# metric_sum REGEX: sum of the samples of the lines matching it.
metric_sum() { metrics | awk -v re="$1" '$0 ~ re && $0 !~ /^#/ {s += $NF} END {printf "%d\n", s}'; }

# --- background: churn and sampler ------------------------------------------------
churn_loop() {
  # A failed command here is logged, not fatal: errexit would end the loop
  # silently and the soak would go on without churn.
  set +e
  local i=0 alive=() name vt=qemu
  if [ -e /dev/kvm ] && virsh -c "$URI" domcapabilities --virttype kvm >/dev/null 2>&1; then vt=kvm; fi
  destroy_oldest() {
    local n=${alive[0]}
    if virsh -q -c "$URI" destroy "$n" >/dev/null 2>>"$OUT/churn.err"; then
      echo "$(date +%s.%N) destroy $n" >> "$OUT/churn.log"
    else
      echo "$(date +%s.%N) destroy-failed $n" >> "$OUT/churn.log"
    fi
    rm -f "$GDIR/churn/$n.qcow2" "$GDIR/churn/$n.xml"
    alive=("${alive[@]:1}")
  }
  while [ ! -e "$CTL/churn-stop" ]; do
    if [ -e "$CTL/pause" ]; then touch "$CTL/paused"; sleep 0.2; continue; fi
    rm -f "$CTL/paused"
    i=$((i + 1)); name=$CPREFIX-$i
    if ! qemu-img create -q -f qcow2 -b "$GDIR/base.qcow2" -F qcow2 "$GDIR/churn/$name.qcow2" 2>>"$OUT/churn.err"; then
      echo "$(date +%s.%N) image-failed $name" >> "$OUT/churn.log"
      sleep "$CHURN_EVERY"; continue
    fi
    cat > "$GDIR/churn/$name.xml" <<XML
<domain type='$vt'><name>$name</name><memory unit='MiB'>32</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os><features><acpi/><apic/></features>
<devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='$GDIR/churn/$name.qcow2'/><target dev='vda' bus='virtio'/></disk>
<interface type='ethernet'><model type='virtio'/></interface><memballoon model='virtio'/></devices></domain>
XML
    if virsh -q -c "$URI" create "$GDIR/churn/$name.xml" >/dev/null 2>>"$OUT/churn.err"; then
      echo "$(date +%s.%N) create $name" >> "$OUT/churn.log"
      alive+=("$name")
    else
      echo "$(date +%s.%N) create-failed $name" >> "$OUT/churn.log"
      rm -f "$GDIR/churn/$name.qcow2"
    fi
    while [ ${#alive[@]} -gt "$CHURN_KEEP" ]; do destroy_oldest; done
    sleep "$CHURN_EVERY"
  done
  while [ ${#alive[@]} -gt 0 ]; do destroy_oldest; done
  touch "$CTL/churn-done"
}

# pause_churn: returns once the churn loop stands still.
pause_churn() {
  touch "$CTL/pause"
  for _ in $(seq 1 300); do [ -e "$CTL/paused" ] && return 0; sleep 0.2; done
  log "churn did not pause within 60 s"
}
resume_churn() { rm -f "$CTL/pause" "$CTL/paused"; }

sampler_loop() {
  # Not errexit: du fails when a spool segment goes mid-walk, awk when the
  # agent just exited; a sample with a gap beats a sampler that stopped.
  set +e
  local next now m pid
  echo "t,rss_kib,rss_anon_kib,fds,threads,spool_bytes,spool_records,series,libvirt_up,tasks" > "$OUT/samples.csv"
  echo "t,domain,kind" > "$OUT/churn-series.csv"
  next=$(date +%s)
  while [ ! -e "$CTL/stop" ]; do
    now=$(date +%s)
    if [ "$now" -lt "$next" ]; then sleep 0.5; continue; fi
    next=$((next + SAMPLE_EVERY))
    pid=$AGENT
    [ -d "/proc/$pid" ] || { echo "$now agent gone" >> "$OUT/faults.log"; break; }
    m=$(curl -s --max-time 5 "$URL" || true)
    local rss anon fds thr spool srec series up tasks
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")
    anon=$(awk '/^RssAnon:/ {print $2}' "/proc/$pid/status")
    thr=$(awk '/^Threads:/ {print $2}' "/proc/$pid/status")
    fds=$(find "/proc/$pid/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
    spool=$(du -sb "$OUT/spool" 2>/dev/null | cut -f1)
    srec=$(awk '/^virtpulse_kafka_spool_records / {print $NF}' <<<"$m")
    series=$(awk '/^virtpulse_prometheus_series / {print $NF}' <<<"$m")
    up=$(awk '/^libvirt_up[{ ]/ {print $NF; exit}' <<<"$m")
    tasks=$(awk '/^virtpulse_runtime_alive_tasks / {print $NF}' <<<"$m")
    echo "$((now - T0)),$rss,$anon,$fds,$thr,${spool:-0},${srec:-},${series:-},${up:-},${tasks:-}" >> "$OUT/samples.csv"
    # Churn guests with series now: stats series vs per-domain event series.
    awk -v t="$((now - T0))" -v p="$CPREFIX-" '
      /^#/ { next }
      { if (!match($0, /domain="[^"]*"/)) next
        d = substr($0, RSTART + 8, RLENGTH - 9); if (index(d, p) != 1) next
        split($0, a, "{"); k = (a[1] ~ /^libvirt_domain_(events_total|last_event_timestamp_seconds)$/) ? "events" : "stats"
        seen[d "," k] = 1 }
      END { for (x in seen) print t "," x }' <<<"$m" >> "$OUT/churn-series.csv"
  done
}

# --- start everything -----------------------------------------------------------------
start_broker
start_rotel
write_config
: > "$OUT/churn.log"
env $(env | awk -F= '/^VIRTPULSE_/ {print "-u", $1}') "$BIN" --config "$OUT/agent.toml" 2> "$OUT/agent.log" &
AGENT=$!
wait_http "$URL"
start_listener
T0=$(date +%s)
echo "$T0" > "$OUT/t0"
log "agent pid $AGENT up; $GUESTS guests; faults for ${DURATION}s"
sampler_loop &
SAMPLER=$!
churn_loop &
CHURN=$!

# --- the fault schedule -------------------------------------------------------------------
END=$((T0 + DURATION))
next_restart=$((T0 + LIBVIRTD_RESTART_FIRST))
next_kill=$((T0 + KAFKA_KILL_FIRST))
next_otlp=$((T0 + OTLP_STOP_FIRST))
next_reload=$((T0 + RELOAD_EVERY))
stop_at=$((T0 + SIGSTOP_AT)) cont_at=0 stopped_done=
broker_up_at=0 rotel_up_at=0

restart_libvirtd() {
  local c0 t c1 up
  pause_churn
  c0=$(metric_sum '^virtpulse_libvirt_connects_total')
  stop_listener
  t=$(date +%s.%N)
  scripts/private-libvirtd.sh stop "$VPD" 2>>"$OUT/libvirtd.log"
  start_libvirtd >/dev/null
  log "libvirtd restarted in $(python3 -c "print(f'{$(date +%s.%N) - $t:.1f}')") s"
  start_listener
  for _ in $(seq 1 120); do
    c1=$(metric_sum '^virtpulse_libvirt_connects_total')
    up=$(metric_sum '^libvirt_up')
    [ "$c1" -gt "$c0" ] && [ "$up" -ge 1 ] && break
    sleep 0.5
  done
  log "agent reconnected (connects $c0 -> $c1, libvirt_up $up) $(python3 -c "print(f'{$(date +%s.%N) - $t:.1f}')") s after the stop"
  sleep 1
  resume_churn
}

kill_broker() {
  local n
  pause_churn
  for _ in $(seq 1 120); do
    n=$(metric_sum '^virtpulse_kafka_spool_records ')
    [ "$n" = 0 ] && break
    sleep 0.5
  done
  [ "$n" = 0 ] || log "spool still holds $n events before the kill"
  read_broker
  kill -KILL "$BROKER"; wait "$BROKER" 2>/dev/null || true; BROKER=
  log "Kafka broker generation $KGEN SIGKILLed (down ${KAFKA_DOWN}s)"
  resume_churn
}

reload() {
  local ok0 ok1
  ok0=$(metric_sum '^virtpulse_config_reloads_total\{result="success"')
  RELOADS=$((RELOADS + 1))
  write_config
  kill -HUP "$AGENT"
  for _ in $(seq 1 40); do
    ok1=$(metric_sum '^virtpulse_config_reloads_total\{result="success"')
    [ "$ok1" -gt "$ok0" ] && break
    sleep 0.25
  done
  log "reload $RELOADS ($(tail -n1 "$OUT/config-history.log" | cut -d' ' -f2-)): successes $ok0 -> $ok1"
}

while [ "$(date +%s)" -lt "$END" ]; do
  now=$(date +%s)
  [ -d "/proc/$AGENT" ] || { log "AGENT EXITED"; break; }
  if [ -z "$BROKER" ] && [ "$now" -ge "$broker_up_at" ]; then
    start_broker; log "Kafka broker generation $KGEN started (empty storage)"
  fi
  if [ -z "$ROTELPID" ] && [ "$now" -ge "$rotel_up_at" ]; then start_rotel; log "OTLP receiver started"; fi
  if [ -n "$STOPPED" ] && [ "$now" -ge "$cont_at" ]; then
    kill -CONT "$STOPPED"; log "SIGCONT QEMU $STOPPED"; STOPPED=
  fi
  if [ -z "$stopped_done" ] && [ "$now" -ge "$stop_at" ]; then
    stopped_done=1
    pid=$(cat "$VPD/run/libvirt/qemu/$PREFIX-1.pid" 2>/dev/null || true)
    # Only a QEMU of this soak's daemon: its /run/libvirt is ours.
    if [ -n "$pid" ] && grep -q "guest=$PREFIX-1," "/proc/$pid/cmdline" 2>/dev/null &&
       [ "$(stat -L -c %d:%i "/proc/$pid/root/run/libvirt")" = "$(stat -c %d:%i "$VPD/run/libvirt")" ]; then
      kill -STOP "$pid"; STOPPED=$pid; cont_at=$((now + SIGSTOP_FOR))
      log "SIGSTOP QEMU $pid ($PREFIX-1) for ${SIGSTOP_FOR}s"
    else
      log "no QEMU of $PREFIX-1 found to stop"
    fi
  fi
  if [ "$now" -ge "$next_restart" ]; then
    if [ -n "$STOPPED" ]; then
      next_restart=$((cont_at + 5)); log "libvirtd restart deferred until the QEMU runs again"
    else
      next_restart=$((next_restart + LIBVIRTD_RESTART_EVERY)); restart_libvirtd
    fi
  fi
  if [ -n "$BROKER" ] && [ "$now" -ge "$next_kill" ]; then
    next_kill=$((next_kill + KAFKA_KILL_EVERY)); kill_broker; broker_up_at=$(( $(date +%s) + KAFKA_DOWN ))
  fi
  if [ -n "$ROTELPID" ] && [ "$now" -ge "$next_otlp" ]; then
    next_otlp=$((next_otlp + OTLP_STOP_EVERY))
    kill "$ROTELPID"; wait "$ROTELPID" 2>/dev/null || true; ROTELPID=
    rotel_up_at=$((now + OTLP_DOWN)); log "OTLP receiver stopped for ${OTLP_DOWN}s"
  fi
  if [ "$now" -ge "$next_reload" ]; then next_reload=$((next_reload + RELOAD_EVERY)); reload; fi
  sleep 1
done

# --- wind down: churn stops, everything comes back, Kafka is read -------------------------------
log "faults over; churn stops"
[ -z "$STOPPED" ] || { kill -CONT "$STOPPED"; log "SIGCONT QEMU $STOPPED"; STOPPED=; }
[ -n "$ROTELPID" ] || { start_rotel; log "OTLP receiver started"; }
[ -n "$BROKER" ] || { start_broker; log "Kafka broker generation $KGEN started (empty storage)"; }
# The churn loop destroys its last guests and ends; the sampler goes on.
touch "$CTL/churn-stop"
resume_churn
wait "$CHURN" 2>/dev/null || true; CHURN=
for _ in $(seq 1 240); do
  [ "$(metric_sum '^virtpulse_kafka_spool_records ')" = 0 ] && break
  sleep 0.5
done
sleep 3
read_broker
metrics > "$OUT/metrics-final.txt"
touch "$CTL/stop"
wait "$SAMPLER" 2>/dev/null || true; SAMPLER=
stop_listener
kill "$AGENT"; wait "$AGENT" 2>/dev/null || true; AGENT=
log "agent stopped"

# Documented retention of a destroyed domain's series (docs/prometheus.md,
# docs/metrics.md): a snapshot older than two intervals plus the deadline is
# dropped (largest domain stats interval of the run: 15 s, deadline 10 s);
# per-domain event series go 2 minutes after the domain leaves the domain
# stats snapshot (plus one interval for that snapshot to come).
python3 bench/soak_report.py "$OUT" --warmup "$WARMUP" --churn-prefix "$CPREFIX-" \
  --stats-retention 40 --events-retention 135 --sample-every "$SAMPLE_EVERY" | tee "$OUT/summary.txt"
echo "results: $OUT" >&2
