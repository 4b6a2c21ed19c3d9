#!/usr/bin/env bash
# OTLP export cost on real guests against a real receiver (rotel): the
# agent runs the same collection (domain stats every second) three times,
# without OTLP, exporting over OTLP/gRPC and over OTLP/HTTP (gzip) every
# second. Prints agent CPU per second, the extra CPU per export cycle,
# data points and protobuf bytes per export, and RSS.
#   bench/otlp.sh            (GUESTS=20 WINDOW=60 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
LISTEN=127.0.0.1:19177
GRPC=127.0.0.1:19317
HTTP=127.0.0.1:19318

start_bench
rotel=$(scripts/install-rotel.sh)
"$rotel" start --otlp-grpc-endpoint "$GRPC" --otlp-http-endpoint "$HTTP" --exporter blackhole >/dev/null 2>&1 &
pids+=($!)
sleep 3

# run NAME OTLP_TOML: one agent for WINDOW seconds; prints a result row.
run() {
  local name=$1 otlp=$2 cfg="$DIR/$1.toml"
  cat > "$cfg" <<TOML
[domains]
include = ["$PREFIX-*"]
[collectors.domain_stats]
interval = "1s"
[sinks.prometheus]
listen = "$LISTEN"
$otlp
TOML
  target/release/virtpulse --config "$cfg" 2>"$DIR/$name.log" &
  local pid=$!
  pids+=($pid)
  wait_http "http://$LISTEN/metrics"
  sleep 5
  local url="http://$LISTEN/metrics" tck; tck=$(clk_tck)
  local c0 e0 p0 b0 t0
  c0=$(cpu_ticks "$pid"); t0=$(date +%s.%N)
  e0=$(metric "$url" '^virtpulse_otlp_exports_total\{signal="metrics",result="ok"\}'); e0=${e0:-0}
  p0=$(metric "$url" '^virtpulse_otlp_items_sent_total\{signal="metrics"\}'); p0=${p0:-0}
  b0=$(metric "$url" '^virtpulse_otlp_request_bytes_total\{signal="metrics"\}'); b0=${b0:-0}
  sleep "$WINDOW"
  local c1 e1 p1 b1 t1 rss
  c1=$(cpu_ticks "$pid"); t1=$(date +%s.%N)
  e1=$(metric "$url" '^virtpulse_otlp_exports_total\{signal="metrics",result="ok"\}'); e1=${e1:-0}
  p1=$(metric "$url" '^virtpulse_otlp_items_sent_total\{signal="metrics"\}'); p1=${p1:-0}
  b1=$(metric "$url" '^virtpulse_otlp_request_bytes_total\{signal="metrics"\}'); b1=${b1:-0}
  rss=$(rss_kib "$pid")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  python3 - "$name" "$c0" "$c1" "$t0" "$t1" "$tck" "$e0" "$e1" "$p0" "$p1" "$b0" "$b1" "$rss" <<'PY'
import sys
name, c0, c1, t0, t1, tck, e0, e1, p0, p1, b0, b1, rss = sys.argv[1:]
secs = float(t1) - float(t0)
cpu_ms_s = (int(c1) - int(c0)) / int(tck) * 1000 / secs
exports = float(e1) - float(e0)
pts = (float(p1) - float(p0)) / exports if exports else 0
kib = (float(b1) - float(b0)) / exports / 1024 if exports else 0
print(f"{name:<6} {cpu_ms_s:12.2f} {exports:8.0f} {pts:14.0f} {kib:18.1f} {int(rss)/1024:8.1f}")
PY
}

echo "run    agent_ms_per_s  exports  points_per_exp  protobuf_KiB_per_exp  RSS_MiB"
base=$(run none "")
echo "$base"
grpc=$(run grpc "[sinks.otlp]
enabled = true
endpoint = \"http://$GRPC\"
protocol = \"grpc\"
export_interval = \"1s\"")
echo "$grpc"
http=$(run http "[sinks.otlp]
enabled = true
endpoint = \"http://$HTTP\"
protocol = \"http\"
compression = \"gzip\"
export_interval = \"1s\"")
echo "$http"
python3 - "$WINDOW" "$base" "$grpc" "$http" <<'PY'
import sys
window = float(sys.argv[1])
rows = [r.split() for r in sys.argv[2:]]
base = float(rows[0][1])
for r in rows[1:]:
    exports_per_s = float(r[2]) / window
    extra = (float(r[1]) - base) / exports_per_s if exports_per_s else 0
    print(f"{r[0]}: {extra:.2f} ms agent CPU per export cycle on top of collection")
PY
