#!/usr/bin/env bash
# Where the agent's time goes, in instructions (repeatable on noisy
# machines): runs the release build under valgrind's callgrind against the
# guests already running (e.g. those bench/scale.sh KEEP_GUESTS=1 left),
# lets it collect CYCLES domain stats cycles with one scrape each, and
# prints the inclusive cost of the agent's own functions and the total.
#   bench/callgrind.sh [CONFIG.toml]     CYCLES=5 INTERVAL=20
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
CYCLES=${CYCLES:-5}
INTERVAL=${INTERVAL:-20}
ADDR=127.0.0.1:19180
OUT=${OUT:-/tmp/virtpulse.callgrind}
cfg=$(mktemp)
{
  [ -n "${1:-}" ] && cat "$1"
  cat <<TOML
[sinks.prometheus]
listen = "$ADDR"
TOML
} > "$cfg"
grep -q '^\[collectors.domain_stats\]' "$cfg" || printf '[collectors.domain_stats]\ninterval = "%ss"\ntimeout = "10s"\n' "$INTERVAL" >> "$cfg"
command -v valgrind >/dev/null || apt_install_missing valgrind
cargo build --release --locked -q
rm -f "$OUT"
VIRTPULSE_AGENT__LOG_LEVEL=warn valgrind --tool=callgrind --callgrind-out-file="$OUT" \
  target/release/virtpulse --config "$cfg" 2>/tmp/virtpulse-callgrind.log &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -f "$cfg"' EXIT
for _ in $(seq 1 600); do curl -s -o /dev/null "http://$ADDR/healthz" && break; sleep 1; done
# One scrape per cycle, as the scale benchmark does.
for _ in $(seq 1 "$CYCLES"); do sleep "$INTERVAL"; curl -s -o /dev/null "http://$ADDR/metrics"; done
kill -INT "$pid"; wait "$pid" 2>/dev/null || true
callgrind_annotate --inclusive=yes "$OUT" 2>/dev/null | head -60
echo "cycles: $CYCLES (plus start-up); output: $OUT"
