#!/usr/bin/env bash
# virtpulse against Debian's prometheus-libvirt-exporter on the same real
# guests, one after the other in one run. Prints, per collection cycle (ours:
# one collection of every stats group + one scrape) and per scrape (theirs):
# agent CPU, libvirtd CPU, /metrics latency, series, RSS; then the scrape
# time of each while one guest's QEMU is stopped (SIGSTOP).
#   bench/compare-peers.sh            (GUESTS=20 WINDOW=60 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
OURS=127.0.0.1:19177
THEIRS=127.0.0.1:19178

start_bench
sleep 3
libvirtd_pid=$(pgrep -xo libvirtd)

# measure URL PID UNITS_URL: scrapes URL once a second for WINDOW seconds and
# prints "agent_ms_per_unit libvirtd_ms_per_unit p50_ms p99_ms units". Units
# are the agent's successful collections (ours) or the scrapes (theirs).
measure() {
  python3 - "$1" "$2" "$libvirtd_pid" "$WINDOW" "${3:-}" <<'PY'
import os, re, sys, time, urllib.request
url, pid, lpid, window, cycles_url = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
tck = os.sysconf("SC_CLK_TCK")
def ticks(p):
    f = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
    return int(f[11]) + int(f[12])
def cycles():
    body = urllib.request.urlopen(cycles_url, timeout=30).read().decode()
    return float(re.search(r'^virtpulse_collections_total\{collector="domain_stats",result="ok"\} (\S+)', body, re.M).group(1))
c0 = cycles() if cycles_url else 0
a0, l0 = ticks(pid), ticks(lpid)
lat, start = [], time.monotonic()
for i in range(window):
    t = time.monotonic()
    urllib.request.urlopen(url, timeout=30).read()
    lat.append((time.monotonic() - t) * 1000)
    time.sleep(max(0.0, start + i + 1 - time.monotonic()))
a1, l1 = ticks(pid), ticks(lpid)
units = (cycles() - c0) if cycles_url else window
lat.sort()
p99 = lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))]
print(f"{(a1 - a0) / tck / units * 1000:.2f} {(l1 - l0) / tck / units * 1000:.2f} {lat[len(lat) // 2]:.2f} {p99:.2f} {int(units)}")
PY
}

# start_ours ENABLE_OTHERS: the agent with every stats group at a 1 s
# interval; with ENABLE_OTHERS=true the jobs, node and pools collectors run
# every second as well (a full cycle), else only domain stats.
start_ours() {
  VIRTPULSE_LIBVIRT__URI=qemu:///system VIRTPULSE_SINKS__PROMETHEUS__LISTEN=$OURS \
  VIRTPULSE_COLLECTORS__INTERVAL=1s VIRTPULSE_AGENT__LOG_LEVEL=warn \
  VIRTPULSE_COLLECTORS__JOBS__ENABLED=$1 VIRTPULSE_COLLECTORS__NODE__ENABLED=$1 VIRTPULSE_COLLECTORS__POOLS__ENABLED=$1 \
  VIRTPULSE_COLLECTORS__JOBS__INTERVAL=1s VIRTPULSE_COLLECTORS__NODE__INTERVAL=1s VIRTPULSE_COLLECTORS__POOLS__INTERVAL=1s \
    target/release/virtpulse --config /dev/null 2>>/tmp/virtpulse-bench.log &
  ours_pid=$!; pids+=("$ours_pid")
  wait_http "http://$OURS/metrics"
  until [ "$(curl -s "http://$OURS/metrics" | grep -c "^libvirt_domain_info{domain=\"$PREFIX-")" -ge "$GUESTS" ]; do sleep 0.5; done
  sleep 2
}

# --- virtpulse, domain stats only (what the peer does, and more): every stats group.
start_ours false
read -r o_cpu o_lcpu o_p50 o_p99 o_cycles <<<"$(measure "http://$OURS/metrics" "$ours_pid" "http://$OURS/metrics")"
o_series=$(curl -s "http://$OURS/metrics" | grep -vc '^#')
o_rss=$(rss_kib "$ours_pid")
o_groups=$(curl -s "http://$OURS/metrics" | grep -c '^virtpulse_stats_group_enabled.* 1$')
kill "$ours_pid"; wait "$ours_pid" 2>/dev/null || true

# --- virtpulse, full cycle: domain stats + jobs + node + pools, each every second.
start_ours true
read -r f_cpu f_lcpu f_p50 f_p99 f_cycles <<<"$(measure "http://$OURS/metrics" "$ours_pid" "http://$OURS/metrics")"
f_series=$(curl -s "http://$OURS/metrics" | grep -vc '^#')
f_rss=$(rss_kib "$ours_pid")
kill "$ours_pid"; wait "$ours_pid" 2>/dev/null || true

# --- virtpulse with its default schedule (domain stats 15 s, jobs 5 s, node
# 30 s, pools 60 s), scraped every 15 s: what it costs on a host per minute.
VIRTPULSE_LIBVIRT__URI=qemu:///system VIRTPULSE_SINKS__PROMETHEUS__LISTEN=$OURS VIRTPULSE_AGENT__LOG_LEVEL=warn \
  target/release/virtpulse --config /dev/null 2>>/tmp/virtpulse-bench.log &
ours_pid=$!; pids+=("$ours_pid")
wait_http "http://$OURS/metrics"
sleep 5
d_a0=$(cpu_ticks "$ours_pid"); d_l0=$(cpu_ticks "$libvirtd_pid")
for _ in 1 2 3 4; do curl -s -o /dev/null "http://$OURS/metrics"; sleep 15; done
d_cpu=$(( $(cpu_ticks "$ours_pid") - d_a0 )); d_lcpu=$(( $(cpu_ticks "$libvirtd_pid") - d_l0 ))
kill "$ours_pid"; wait "$ours_pid" 2>/dev/null || true

# --- Debian prometheus-libvirt-exporter (kumina 0.2.0), one scrape a second.
prometheus-libvirt-exporter --web.listen-address="$THEIRS" --libvirt.uri=qemu:///system 2>/tmp/peer-bench.log &
their_pid=$!; pids+=("$their_pid")
wait_http "http://$THEIRS/metrics"
curl -s -o /dev/null "http://$THEIRS/metrics"
read -r t_cpu t_lcpu t_p50 t_p99 _ <<<"$(measure "http://$THEIRS/metrics" "$their_pid")"
t_series=$(curl -s "http://$THEIRS/metrics" | grep -v '^#' | grep -c '^libvirt')
t_rss=$(rss_kib "$their_pid")

# --- One guest's QEMU stopped: how long does one scrape take?
start_ours true
victim="$PREFIX-1"; vpid=$(cat "/run/libvirt/qemu/$victim.pid")
kill -STOP "$vpid"
sleep 3
scrape_time() {
  local t
  if t=$(curl -s -o /dev/null -w '%{time_total}' --max-time 20 "$1"); then printf '%.3f' "$t"; else echo ">20 (gave up)"; fi
}
o_hang=$(scrape_time "http://$OURS/metrics")
t_hang=$(scrape_time "http://$THEIRS/metrics")
sleep 3
o_fresh=$(metric "http://$OURS/metrics" 'virtpulse_collection_age_seconds' | cut -c1-5)
kill -CONT "$vpid"

echo
echo "virtpulse vs prometheus-libvirt-exporter ($(dpkg-query -W -f='${Version}' prometheus-libvirt-exporter)), $GUESTS guests, $WINDOW s each, 1 cycle/scrape per second"
printf '%-44s %14s %14s\n' "" "virtpulse" "peer"
printf '%-44s %14s %14s\n' "stats groups exported" "$o_groups of 11" "3 (info,block,net)"
printf '%-44s %14s %14s\n' "agent CPU per cycle/scrape (ms)" "$o_cpu" "$t_cpu"
printf '%-44s %14s %14s\n' "libvirtd CPU per cycle/scrape (ms)" "$o_lcpu" "$t_lcpu"
printf '%-44s %14s %14s\n' "/metrics latency p50 (ms)" "$o_p50" "$t_p50"
printf '%-44s %14s %14s\n' "/metrics latency p99 (ms)" "$o_p99" "$t_p99"
printf '%-44s %14s %14s\n' "series" "$o_series" "$t_series"
printf '%-44s %14s %14s\n' "RSS (MiB)" "$(awk "BEGIN{printf \"%.1f\", $o_rss/1024}")" "$(awk "BEGIN{printf \"%.1f\", $t_rss/1024}")"
printf '%-44s %14s %14s\n' "scrape with one QEMU stopped (s)" "$o_hang" "$t_hang"
printf '%-44s %14s %14s\n' "age of data 6 s into the hang (s)" "$o_fresh" "-"
echo "virtpulse cycles measured: $o_cycles; CPU ratio ours/peer: $(python3 -c "print(f'{$o_cpu/$t_cpu:.3f}')")"
echo
echo "virtpulse full cycle (domain stats + jobs + node + pools, each every second, $f_cycles cycles):"
printf '%-44s %14s\n' "agent CPU per cycle (ms)" "$f_cpu"
printf '%-44s %14s\n' "libvirtd CPU per cycle (ms)" "$f_lcpu"
printf '%-44s %14s\n' "/metrics latency p50 / p99 (ms)" "$f_p50 / $f_p99"
printf '%-44s %14s\n' "series" "$f_series"
printf '%-44s %14s\n' "RSS (MiB)" "$(awk "BEGIN{printf \"%.1f\", $f_rss/1024}")"
echo
echo "virtpulse with its default schedule (domain stats 15 s, jobs 5 s, node 30 s, pools 60 s), one minute:"
printf '%-44s %14s\n' "agent CPU per minute (ms)" "$(( d_cpu * 1000 / $(clk_tck) ))"
printf '%-44s %14s\n' "libvirtd CPU per minute (ms)" "$(( d_lcpu * 1000 / $(clk_tck) ))"
