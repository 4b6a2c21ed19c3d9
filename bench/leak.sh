#!/usr/bin/env bash
# Leak check: RSS of the agent after a warm-up and after 10,000 more
# collection cycles against libvirt's test driver (10 ms interval, every
# cycle rendered for Prometheus and scraped every 100 cycles).
#   bench/leak.sh            (CYCLES=10000 URI=test:///default by default)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
CYCLES=${CYCLES:-10000}
URI=${URI:-test:///default}
ADDR=127.0.0.1:19179
cargo build --release --locked -q

VIRTPULSE_LIBVIRT__URI=$URI VIRTPULSE_SINKS__PROMETHEUS__LISTEN=$ADDR \
VIRTPULSE_COLLECTORS__INTERVAL=10ms VIRTPULSE_AGENT__LOG_LEVEL=warn \
  target/release/virtpulse --config /dev/null 2>/tmp/virtpulse-leak.log &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
wait_http "http://$ADDR/metrics"

cycles() { metric "http://$ADDR/metrics" 'virtpulse_collections_total.*result="ok"' | cut -d. -f1; }
until [ "$(cycles)" -ge 1000 ]; do sleep 0.5; done
c0=$(cycles); r0=$(rss_kib "$pid"); t0=$(cpu_ticks "$pid")
until [ "$(cycles)" -ge $((c0 + CYCLES)) ]; do sleep 1; done
c1=$(cycles); r1=$(rss_kib "$pid"); t1=$(cpu_ticks "$pid")
echo "leak check on $URI: cycles $c0 -> $c1 ($((c1 - c0)) cycles)"
echo "RSS: $r0 KiB -> $r1 KiB (growth $((r1 - r0)) KiB)"
echo "CPU per cycle: $(python3 -c "print(f'{($t1-$t0)/$(getconf CLK_TCK)/($c1-$c0)*1000:.3f}')") ms"
