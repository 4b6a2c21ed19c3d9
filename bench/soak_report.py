#!/usr/bin/env python3
"""The summary of a bench/soak.sh run, from its results directory:

    soak_report.py OUT [--warmup S] [--churn-prefix P] [--stats-retention S]
                   [--events-retention S] [--sample-every S]

- slope per hour (least squares, samples after the warm-up) of each series
  of samples.csv;
- every virtpulse_* counter of drops, errors and failures (metrics-final.txt);
- the event accounting of the churned guests: the independent
  `virsh event --all --loop --timestamp` listener (virsh-events-*.log) vs
  what kafka-python read back from each broker generation (kafka-*.jsonl),
  matched by domain and event kind (timestamps of matched pairs compared),
  and the agent's counted drops;
- destroyed churn guests whose series outlived the documented retention
  (churn.log, churn-series.csv);
- a plot of RSS, fds, threads and spool over time: plot.png with
  matplotlib, else with gnuplot, else ASCII sparklines here.
Only the standard library is needed.
"""
import argparse
import collections
import csv
import datetime
import glob
import json
import os
import re
import shutil
import statistics
import subprocess
import sys


def slope(xs, ys):
    n = len(xs)
    if n < 3:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx


def load_samples(out):
    rows = []
    with open(os.path.join(out, "samples.csv")) as f:
        for r in csv.DictReader(f):
            row = {}
            for k, v in r.items():
                try:
                    row[k] = float(v)
                except (TypeError, ValueError):
                    row[k] = None
            rows.append(row)
    return rows


SERIES = [
    ("rss_kib", "VmRSS", "KiB"),
    ("rss_anon_kib", "RssAnon", "KiB"),
    ("fds", "open fds", ""),
    ("threads", "threads", ""),
    ("tasks", "tokio tasks", ""),
    ("spool_bytes", "spool on disk", "B"),
    ("spool_records", "spool records", ""),
    ("series", "Prometheus series", ""),
]


def section_slopes(rows, warmup, p):
    p("== Samples: slope per hour (least squares over t >= %d s) ==" % warmup)
    late = [r for r in rows if r["t"] is not None and r["t"] >= warmup]
    p("samples: %d in all, %d after the warm-up (t %s..%s s)"
      % (len(rows), len(late), int(late[0]["t"]) if late else "-", int(late[-1]["t"]) if late else "-"))
    p("%-18s %12s %12s %12s %12s %14s %9s" % ("series", "first", "last", "min", "max", "slope/h", "%/h"))
    for key, name, unit in SERIES:
        pts = [(r["t"], r[key]) for r in late if r.get(key) is not None]
        if not pts:
            p("%-18s (no samples)" % name)
            continue
        ys = [y for _, y in pts]
        s = slope([x for x, _ in pts], ys)
        mean = statistics.mean(ys)
        per_h = s * 3600 if s is not None else None
        rel = (per_h / mean * 100) if per_h is not None and mean else None
        p("%-18s %12.0f %12.0f %12.0f %12.0f %14s %9s %s" % (
            name, ys[0], ys[-1], min(ys), max(ys),
            "%+.1f" % per_h if per_h is not None else "-",
            "%+.1f" % rel if rel is not None else "-", unit))
    p("spool on disk: the active segment (an eighth of spool_max_bytes, at most 16 MiB) grows until it "
      "rotates and acknowledged segments are deleted; spool records (unacknowledged events) is the one to be flat")
    if not any(r.get("tasks") is not None for r in late):
        p("tokio tasks: not sampled (an agent older than virtpulse_runtime_alive_tasks)")


def parse_metrics(path):
    out = []
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("#") or not line.strip():
                    continue
                name_labels, _, value = line.rstrip("\n").rpartition(" ")
                try:
                    out.append((name_labels, float(value)))
                except ValueError:
                    pass
    except FileNotFoundError:
        pass
    return out


def metric_name(s):
    return s.split("{", 1)[0]


def section_counters(metrics, p):
    p("")
    p("== Drop, error and failure counters (virtpulse_*, /metrics at the end) ==")
    pat = re.compile(r"^virtpulse_\w*(drop|error|fail)\w*$")
    shown = 0
    for nl, v in metrics:
        if pat.match(metric_name(nl)):
            p("%s%-100s %g" % ("!" if v else " ", nl, v))
            shown += 1
    if not shown:
        p("(none found: no metrics-final.txt?)")
    p("")
    p("-- context --")
    ctx = re.compile(r"^(virtpulse_(libvirt_(connects|disconnects)_total|config_reloads_total|event_resyncs_total|"
                     r"kafka_producer_restarts_total|kafka_events_resent_total|kafka_messages_delivered_total|"
                     r"otlp_exports_total|collection_chunks_missed_total|collection_skipped_total|"
                     r"events_received_total|events_processed_total|sink_records_sent_total)|libvirt_up)$")
    for nl, v in metrics:
        if ctx.match(metric_name(nl)):
            p("  %-100s %g" % (nl, v))


VIRSH_LINE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?)([+-]\d{4}): event '([^']+)' for domain '([^']+)'(?::\s*(.*))?$")


def parse_time(s):
    try:
        return datetime.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def virsh_events(out, prefix):
    ev = []
    for path in sorted(glob.glob(os.path.join(out, "virsh-events-*.log")),
                       key=lambda p: int(re.search(r"-(\d+)\.log$", p).group(1))):
        with open(path, errors="replace") as f:
            for line in f:
                m = VIRSH_LINE.match(line.strip())
                if not m or not m.group(4).startswith(prefix):
                    continue
                ts = parse_time(m.group(1) + m.group(2)[:3] + ":" + m.group(2)[3:])
                ev.append({"t": ts, "kind": m.group(3).replace("-", "_"), "domain": m.group(4),
                           "detail": (m.group(5) or "").strip()})
    return ev


def kafka_events(out, prefix):
    ev, copies, gens = [], collections.Counter(), 0
    for path in sorted(glob.glob(os.path.join(out, "kafka-*.jsonl")),
                       key=lambda p: int(re.search(r"-(\d+)\.jsonl$", p).group(1))):
        gens += 1
        with open(path) as f:
            for line in f:
                try:
                    m = json.loads(line)
                except ValueError:
                    continue
                if m.get("summary") or not m.get("event"):
                    continue
                if m.get("id"):
                    copies[m["id"]] += 1
                if not (m.get("domain") or "").startswith(prefix):
                    continue
                if m.get("id") and copies[m["id"]] > 1:
                    continue
                family, _, kind = m["event"].partition(".")
                h = m.get("headers") or {}
                ts = parse_time(h["ce_time"]) if h.get("ce_time") else None
                if ts is None and m.get("timestamp_ms"):
                    ts = m["timestamp_ms"] / 1000
                ev.append({"t": ts, "kind": kind, "family": family, "domain": m["domain"], "id": m.get("id")})
    return ev, copies, gens


def section_events(out, prefix, metrics, p):
    p("")
    p("== Event accounting of the churned guests (%s*) ==" % prefix)
    v = virsh_events(out, prefix)
    k, copies, gens = kafka_events(out, prefix)
    # The agent's resync records (one per domain after each reconnect) are
    # state, not libvirt events: virsh never prints them.
    resyncs = sum(1 for e in k if e["kind"] == "resync")
    k = [e for e in k if e["kind"] != "resync"]
    dups = sum(n - 1 for n in copies.values() if n > 1)
    p("virsh listener: %d events of %d churned domains (%d listener runs)"
      % (len(v), len({e["domain"] for e in v}), len(glob.glob(os.path.join(out, "virsh-events-*.log")))))
    p("Kafka (kafka-python, %d broker generations): %d distinct events of churned domains; "
      "%d duplicate copies of any event id across the topic" % (gens, len(k), dups))
    vk = collections.Counter(e["kind"] for e in v)
    kk = collections.Counter(e["kind"] for e in k)
    p("%-24s %10s %10s" % ("kind", "virsh", "Kafka"))
    for kind in sorted(set(vk) | set(kk)):
        p("%-24s %10d %10d" % (kind, vk[kind], kk[kind]))
    by_v = collections.defaultdict(list)
    by_k = collections.defaultdict(list)
    for e in v:
        by_v[(e["domain"], e["kind"])].append(e)
    for e in k:
        by_k[(e["domain"], e["kind"])].append(e)
    delivered = missing = extra = 0
    deltas, missing_list = [], []
    for key in sorted(set(by_v) | set(by_k)):
        a = sorted(by_v.get(key, []), key=lambda e: e["t"] or 0)
        b = sorted(by_k.get(key, []), key=lambda e: e["t"] or 0)
        n = min(len(a), len(b))
        delivered += n
        for x, y in zip(a[:n], b[:n]):
            if x["t"] is not None and y["t"] is not None:
                deltas.append(y["t"] - x["t"])
        if len(a) > n:
            missing += len(a) - n
            missing_list.extend("%s %s %s (%s)" % (
                datetime.datetime.fromtimestamp(e["t"], datetime.timezone.utc).strftime("%H:%M:%S.%f")[:-3]
                if e["t"] else "?", key[0], key[1], e["detail"]) for e in a[n:])
        if len(b) > n:
            extra += len(b) - n
    # Only what loses Kafka events counts (as in tests/e2e_storm.rs): the
    # Kafka lane's hand-off (not the shared lane, which feeds the
    # best-effort sinks), the router's Kafka queue for events, and the
    # sink's own drops of events. These count every domain's events, so
    # they bound the churned guests' loss from above.
    ev_dropped = sum(val for nl, val in metrics if metric_name(nl) == "virtpulse_events_dropped_total"
                     and 'lane="shared"' not in nl)
    queue_dropped = sum(val for nl, val in metrics if metric_name(nl) == "virtpulse_sink_records_dropped_total"
                        and 'sink="kafka"' in nl and 'stream="events"' in nl)
    kafka_dropped = sum(val for nl, val in metrics
                        if metric_name(nl) == "virtpulse_kafka_records_dropped_total" and 'stream="events"' in nl)
    counted = ev_dropped + queue_dropped + kafka_dropped
    p("")
    p("delivered (virsh event matched in Kafka by domain + kind): %d" % delivered)
    p("counted dropped by the agent (any domain): %d (virtpulse_events_dropped_total without lane=\"shared\" %g, "
      "virtpulse_sink_records_dropped_total{sink=\"kafka\",stream=\"events\"} %g, "
      "virtpulse_kafka_records_dropped_total{stream=\"events\"} %g)"
      % (counted, ev_dropped, queue_dropped, kafka_dropped))
    p("missing (seen by virsh, not in Kafka): %d%s" % (
        missing, "" if missing <= counted else "  <-- LOST beyond the counted drops"))
    p("in Kafka only (virsh listener not connected, or not an event virsh prints): %d" % extra)
    p("resync records of churned domains in Kafka (after reconnects; not events): %d" % resyncs)
    if deltas:
        ad = sorted(abs(d) for d in deltas)
        p("timestamps of matched pairs (Kafka ce_time - virsh): median %+.3f s, |max| %.3f s, %d pairs over 1 s"
          % (statistics.median(deltas), ad[-1], sum(1 for d in ad if d > 1)))
    for line in missing_list[:40]:
        p("  missing: " + line)
    if len(missing_list) > 40:
        p("  ... %d more" % (len(missing_list) - 40))
    return missing, counted


def section_retention(out, prefix, stats_ret, events_ret, p):
    p("")
    p("== Series of destroyed churn guests vs the documented retention ==")
    p("retention: stats series %d s (two intervals + deadline), per-domain event series %d s (2 min + an interval)"
      % (stats_ret, events_ret))
    t0 = float(open(os.path.join(out, "t0")).read())
    destroyed = {}
    created = 0
    with open(os.path.join(out, "churn.log")) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[1] == "destroy":
                destroyed[parts[2]] = float(parts[0]) - t0
            elif len(parts) == 3 and parts[1] == "create":
                created += 1
    p("churn: %d guests created, %d destroyed" % (created, len(destroyed)))
    last_seen = {}
    with open(os.path.join(out, "churn-series.csv")) as f:
        for r in csv.DictReader(f):
            d, kind, t = r["domain"], r["kind"], float(r["t"])
            if d in destroyed and t > destroyed[d]:
                key = (d, kind)
                last_seen[key] = max(last_seen.get(key, t), t)
    over = []
    for (d, kind), t in sorted(last_seen.items()):
        age = t - destroyed[d]
        limit = stats_ret if kind == "stats" else events_ret
        if age > limit:
            over.append("%s %s series still there %.0f s after the destroy (limit %d s)" % (d, kind, age, limit))
    ages = collections.defaultdict(list)
    for (d, kind), t in last_seen.items():
        ages[kind].append(t - destroyed[d])
    for kind in ("stats", "events"):
        if ages[kind]:
            p("%s series after a destroy: last seen at most %.0f s after it (%d domains)"
              % (kind, max(ages[kind]), len(ages[kind])))
    p("outliving the retention: %d" % len(over))
    for line in over[:40]:
        p("  " + line)
    return len(over)


def sparkline(ys, width=60):
    bars = " ▁▂▃▄▅▆▇█"
    if not ys:
        return ""
    step = max(1, len(ys) // width)
    pts = [statistics.mean(ys[i:i + step]) for i in range(0, len(ys), step)]
    lo, hi = min(pts), max(pts)
    span = (hi - lo) or 1
    return "".join(bars[int((y - lo) / span * (len(bars) - 1))] for y in pts)


PLOTTED = [("rss_kib", "VmRSS (KiB)"), ("rss_anon_kib", "RssAnon (KiB)"), ("fds", "open fds"),
           ("threads", "threads"), ("tasks", "tokio tasks"), ("spool_bytes", "spool (bytes)")]


def section_plot(out, rows, p):
    p("")
    p("== Plot ==")
    png = os.path.join(out, "plot.png")
    ts = [r["t"] / 60 for r in rows]
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, axes = plt.subplots(len(PLOTTED), 1, sharex=True, figsize=(9, 2 * len(PLOTTED)))
        for ax, (key, name) in zip(axes, PLOTTED):
            ax.plot(ts, [r[key] if r.get(key) is not None else float("nan") for r in rows])
            ax.set_ylabel(name, fontsize=8)
        axes[-1].set_xlabel("minutes")
        fig.tight_layout()
        fig.savefig(png, dpi=90)
        p("plot: %s (matplotlib)" % png)
        return
    except ImportError:
        pass
    if shutil.which("gnuplot"):
        data = os.path.join(out, "samples.dat")
        with open(data, "w") as f:
            for r in rows:
                f.write(" ".join(str(r["t"] / 60 if k == "t" else (r[k] if r.get(k) is not None else "NaN"))
                                 for k in ["t"] + [k for k, _ in PLOTTED]) + "\n")
        script = ["set terminal png size 900,%d" % (180 * len(PLOTTED)), "set output '%s'" % png,
                  "set multiplot layout %d,1" % len(PLOTTED)]
        for i, (_, name) in enumerate(PLOTTED):
            script.append("plot '%s' using 1:%d with lines title '%s'" % (data, i + 2, name))
        script.append("unset multiplot")
        if subprocess.run(["gnuplot"], input="\n".join(script), text=True).returncode == 0:
            p("plot: %s (gnuplot)" % png)
            return
    p("(no matplotlib, no gnuplot: ASCII sparklines, each scaled min..max)")
    for key, name in PLOTTED:
        ys = [r[key] for r in rows if r.get(key) is not None]
        if ys:
            p("%-14s %s  %g..%g" % (name, sparkline(ys), min(ys), max(ys)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--warmup", type=float, default=300)
    ap.add_argument("--churn-prefix", default="soakc-")
    ap.add_argument("--stats-retention", type=float, default=40)
    ap.add_argument("--events-retention", type=float, default=135)
    ap.add_argument("--sample-every", type=float, default=10)
    a = ap.parse_args()
    lines = []

    def p(s=""):
        lines.append(s)
        print(s)

    rows = load_samples(a.out)
    duration = rows[-1]["t"] if rows else 0
    p("virtpulse soak: %s" % a.out)
    p("run: %.0f s of faults sampled, every %g s" % (duration, a.sample_every))
    try:
        with open(os.path.join(a.out, "faults.log")) as f:
            p("")
            p("== Faults ==")
            for line in f:
                p(line.rstrip("\n"))
    except FileNotFoundError:
        pass
    p("")
    section_slopes(rows, a.warmup, p)
    metrics = parse_metrics(os.path.join(a.out, "metrics-final.txt"))
    section_counters(metrics, p)
    missing, dropped = section_events(a.out, a.churn_prefix, metrics, p)
    over = section_retention(a.out, a.churn_prefix, a.stats_retention, a.events_retention, p)
    section_plot(a.out, rows, p)
    p("")
    p("verdict: %s" % ("events: none lost beyond the counted drops" if missing <= dropped
                       else "events: %d LOST" % (missing - dropped))
      + "; retention: %s" % ("kept" if not over else "%d series outlived it" % over))
    return 0


if __name__ == "__main__":
    sys.exit(main())
