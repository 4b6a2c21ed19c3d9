//! The agent's own metrics, rendered at scrape time.

use std::time::{SystemTime, UNIX_EPOCH};

use super::render::{Families, FamilyWriter, RenderStats};
use crate::libvirt::stats::ALL_GROUPS;
use crate::libvirt::ConnectionManager;
use crate::selfmon::{ChunkMiss, CycleOutcome, Registry};
use crate::sinks::kafka::stats::{DropCause, KafkaStats, Stream};
use crate::sinks::otlp::stats::{DropReason as OtlpDrop, ExportResult, OtlpStats, Signal};
use crate::stat_keys::MetricType::{self, Counter, Gauge, Histogram};

/// (name, type, help) of every self-metric, for the docs.
pub const SELF_METRICS: &[(&str, MetricType, &str)] = &[
    ("libvirt_up", Gauge, "1 if the agent is connected to libvirt, else 0."),
    ("virtpulse_build_info", Gauge, "Agent version (value is always 1)."),
    ("virtpulse_libvirt_connects_total", Counter, "Successful libvirt connections (the first included)."),
    ("virtpulse_libvirt_connect_failures_total", Counter, "Failed libvirt connection attempts."),
    ("virtpulse_libvirt_disconnects_total", Counter, "libvirt connections lost."),
    (
        "virtpulse_collections_total",
        Counter,
        "Collection cycles by collector and result (ok, error, timeout, not_connected).",
    ),
    (
        "virtpulse_collection_skipped_total",
        Counter,
        "Collection cycles skipped because earlier libvirt calls were still stuck or a cycle overran its interval.",
    ),
    ("virtpulse_collection_duration_seconds", Gauge, "Duration of the last collection cycle."),
    ("virtpulse_collection_last_success_timestamp_seconds", Gauge, "When the collector last succeeded (Unix time)."),
    ("virtpulse_collection_age_seconds", Gauge, "Seconds since the collector last succeeded."),
    (
        "virtpulse_collection_partial_records_total",
        Counter,
        "Domain records exported with fewer stats than before because the domain's job was held (busy or hung QEMU).",
    ),
    (
        "virtpulse_collection_chunks_missed_total",
        Counter,
        "Chunks of domains left out of a domain stats cycle, by reason (late: still running at the deadline, a hung QEMU; failed: the call failed).",
    ),
    (
        "virtpulse_collection_wakes_total",
        Counter,
        "Events that asked the collector for a collection before its next tick.",
    ),
    (
        "virtpulse_collection_triggered_total",
        Counter,
        "Collections run early because events asked (wakes close together share one).",
    ),
    (
        "virtpulse_libvirt_stuck_calls",
        Gauge,
        "libvirt calls still running past their collection's deadline (hung QEMU).",
    ),
    (
        "virtpulse_stats_group_enabled",
        Gauge,
        "Per requested stats group: 1 if the daemon supports it and it is collected, 0 if not supported.",
    ),
    ("virtpulse_sink_queue_depth", Gauge, "Batches waiting in the sink's queue."),
    ("virtpulse_sink_queue_capacity", Gauge, "Capacity of the sink's queue in batches."),
    ("virtpulse_sink_records_sent_total", Counter, "Records delivered by the sink."),
    ("virtpulse_sink_records_dropped_total", Counter, "Records dropped because the sink's queue was full or closed."),
    ("virtpulse_sink_records_failed_total", Counter, "Records the sink could not deliver."),
    (
        "virtpulse_prometheus_unmapped_stat_keys",
        Gauge,
        "Distinct libvirt stat keys in the last snapshot with no metric mapping (kept in records).",
    ),
    (
        "virtpulse_prometheus_series_conflicts_total",
        Counter,
        "Samples dropped because they duplicated a series or clashed on type.",
    ),
    ("virtpulse_prometheus_series", Gauge, "Series the snapshots on view export (all collectors)."),
    ("virtpulse_prometheus_series_limit", Gauge, "Most series /metrics exports (sinks.prometheus.max_series)."),
    (
        "virtpulse_prometheus_series_dropped_total",
        Counter,
        "Series not exported because the snapshots had more than sinks.prometheus.max_series.",
    ),
    (
        "virtpulse_internal_errors_total",
        Counter,
        "Panics caught and survived, by where (event_callback: a libvirt event callback). Each is a bug: please report it.",
    ),
    ("virtpulse_events_received_total", Counter, "Events handed over by libvirt's callbacks, by family."),
    ("virtpulse_events_dropped_total", Counter, "Events lost because the hand-off queue was full."),
    ("virtpulse_events_processed_total", Counter, "Events turned into records and routed."),
    ("virtpulse_event_queue_depth", Gauge, "Events waiting in the hand-off queue."),
    ("virtpulse_event_queue_capacity", Gauge, "Capacity of the hand-off queue."),
    (
        "virtpulse_event_delay_seconds_total",
        Counter,
        "Total time events waited between libvirt's callback and routing.",
    ),
    (
        "virtpulse_event_delay_max_seconds",
        Gauge,
        "Longest time an event waited between libvirt's callback and routing.",
    ),
    ("virtpulse_event_resyncs_total", Counter, "Resyncs done after (re)connecting (one record per domain each)."),
    (
        "virtpulse_event_callback_registered",
        Gauge,
        "Per event callback: 1 if registered on the current connection, 0 if the daemon refused it.",
    ),
    ("virtpulse_kafka_broker_up", Gauge, "1 if the Kafka producer has a connection to at least one broker, else 0."),
    ("virtpulse_kafka_brokers_up", Gauge, "Kafka brokers (cluster members) the producer is connected to."),
    ("virtpulse_kafka_spool_records", Gauge, "Events in the Kafka spool not yet acknowledged by the broker."),
    ("virtpulse_kafka_spool_bytes", Gauge, "Size of the Kafka spool on disk."),
    (
        "virtpulse_kafka_spool_oldest_age_seconds",
        Gauge,
        "Age of the oldest unacknowledged event in the Kafka spool (0 when empty).",
    ),
    ("virtpulse_kafka_messages_delivered_total", Counter, "Messages the broker acknowledged, by stream (events, metrics)."),
    (
        "virtpulse_kafka_delivery_failures_total",
        Counter,
        "Delivery reports with an error, by stream; failed events are sent again from the spool.",
    ),
    ("virtpulse_kafka_events_resent_total", Counter, "Events handed to the producer again after a failed delivery."),
    (
        "virtpulse_kafka_producer_restarts_total",
        Counter,
        "Kafka producers replaced, by reason (fatal_error, delivery_failures, stuck_in_flight: an event in flight past message_timeout with a broker reachable, broker_errors).",
    ),
    (
        "virtpulse_kafka_records_dropped_total",
        Counter,
        "Records that will never reach the broker, by stream and reason (spool_full, spool_expired, spool_corrupt, spool_write_failed, rejected, superseded, producer_queue_full, undelivered).",
    ),
    (
        "virtpulse_kafka_event_delivery_seconds",
        Histogram,
        "Time from libvirt's event callback to the broker's acknowledgement.",
    ),
    (
        "virtpulse_otlp_receiver_up",
        Gauge,
        "Per signal (metrics, logs): 1 if the last OTLP export succeeded, else 0.",
    ),
    ("virtpulse_otlp_exports_total", Counter, "OTLP export requests by signal and result (ok, partial, failed, rejected)."),
    (
        "virtpulse_otlp_items_sent_total",
        Counter,
        "Data points (metrics) or log records (logs) the OTLP receiver accepted.",
    ),
    (
        "virtpulse_otlp_request_bytes_total",
        Counter,
        "Protobuf bytes (before compression) of the OTLP requests the receiver accepted, by signal.",
    ),
    (
        "virtpulse_otlp_items_dropped_total",
        Counter,
        "Data points or log records that never reached the OTLP receiver, by signal and reason (superseded, queue_full, rejected, cardinality_limit, shutdown).",
    ),
    ("virtpulse_otlp_log_queue_records", Gauge, "Event log records waiting for the OTLP receiver."),
    ("virtpulse_otlp_log_queue_capacity", Gauge, "Capacity of the OTLP log queue in records."),
    ("virtpulse_otlp_export_duration_seconds", Gauge, "Duration of the last OTLP export request, by signal."),
    (
        "virtpulse_otlp_last_success_timestamp_seconds",
        Gauge,
        "When an OTLP export of the signal last succeeded (Unix time).",
    ),
    ("process_resident_memory_bytes", Gauge, "Resident memory of the agent process."),
    ("process_virtual_memory_bytes", Gauge, "Virtual memory of the agent process."),
    ("process_cpu_seconds_total", Counter, "CPU time used by the agent process."),
    ("process_open_fds", Gauge, "Open file descriptors of the agent process."),
    ("process_start_time_seconds", Gauge, "Start time of the agent process (Unix time)."),
];

fn help(name: &str) -> &'static str {
    SELF_METRICS.iter().find(|(n, _, _)| *n == name).map(|(_, _, h)| *h).unwrap_or("")
}

fn add(w: &mut FamilyWriter, name: &'static str, labels: &[(&str, &str)], value: f64) {
    let mtype = SELF_METRICS.iter().find(|(n, _, _)| *n == name).map(|(_, t, _)| *t).unwrap_or(Gauge);
    w.add(name, mtype, help(name), labels, value);
}

/// Render-time facts the sink keeps about its own work.
#[derive(Debug, Default, Clone, Copy)]
pub struct SinkFacts {
    pub unmapped_keys: usize,
    pub conflicts_total: u64,
    pub series: u64,
    pub series_limit: u64,
    pub over_limit_total: u64,
}

struct ProcStat {
    cpu_seconds: f64,
    start_unix: f64,
    rss_bytes: f64,
    vsize_bytes: f64,
}

fn proc_stat() -> Option<ProcStat> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name (which may contain spaces).
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let (ticks, page) = (rustix::param::clock_ticks_per_second() as f64, rustix::param::page_size() as f64);
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok());
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime ").and_then(|v| v.trim().parse::<f64>().ok()))?;
    Some(ProcStat {
        cpu_seconds: (num(11)? + num(12)?) / ticks,
        start_unix: boot + num(19)? / ticks,
        vsize_bytes: num(20)?,
        rss_bytes: num(21)? * page,
    })
}

pub fn render(registry: &Registry, manager: Option<&ConnectionManager>, facts: SinkFacts) -> Families {
    let mut fams = Families::new();
    let mut stats = RenderStats::default();
    let mut w = FamilyWriter::new(&mut fams, &mut stats);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();

    add(&mut w, "virtpulse_build_info", &[("version", env!("CARGO_PKG_VERSION"))], 1.0);
    if let Some(m) = manager {
        let uri = m.uri();
        add(&mut w, "libvirt_up", &[("uri", uri)], if m.is_up() { 1.0 } else { 0.0 });
        add(&mut w, "virtpulse_libvirt_connects_total", &[("uri", uri)], m.connects() as f64);
        add(&mut w, "virtpulse_libvirt_connect_failures_total", &[("uri", uri)], m.failed_attempts() as f64);
        add(&mut w, "virtpulse_libvirt_disconnects_total", &[("uri", uri)], m.disconnects() as f64);
    }
    for c in registry.collectors() {
        let l = [("collector", c.name)];
        for o in CycleOutcome::ALL {
            let labels = [("collector", c.name), ("result", o.as_str())];
            add(&mut w, "virtpulse_collections_total", &labels, c.outcomes(o) as f64);
        }
        if c.name == crate::collectors::domain_stats::SOURCE {
            for why in ChunkMiss::ALL {
                let labels = [("collector", c.name), ("reason", why.as_str())];
                add(&mut w, "virtpulse_collection_chunks_missed_total", &labels, c.chunks_missed(why) as f64);
            }
        }
        let mut values = vec![
            ("virtpulse_collection_skipped_total", c.skipped() as f64),
            ("virtpulse_collection_duration_seconds", c.last_duration().as_secs_f64()),
            ("virtpulse_libvirt_stuck_calls", c.stuck_calls() as f64),
            ("virtpulse_collection_partial_records_total", c.partial_records() as f64),
            ("virtpulse_collection_wakes_total", c.wakes() as f64),
            ("virtpulse_collection_triggered_total", c.triggered_runs() as f64),
        ];
        let last = c.last_success_unix();
        if last > 0.0 {
            values.push(("virtpulse_collection_last_success_timestamp_seconds", last));
            values.push(("virtpulse_collection_age_seconds", (now - last).max(0.0)));
        }
        for (metric, v) in values {
            add(&mut w, metric, &l, v);
        }
    }
    let wanted = registry.wanted_groups.load(std::sync::atomic::Ordering::Relaxed);
    let supported = registry.supported_groups.load(std::sync::atomic::Ordering::Relaxed);
    if supported != 0 {
        for g in ALL_GROUPS.iter().filter(|g| wanted & u64::from(g.bit) != 0) {
            let enabled = if supported & u64::from(g.bit) != 0 { 1.0 } else { 0.0 };
            add(&mut w, "virtpulse_stats_group_enabled", &[("group", g.name)], enabled);
        }
    }
    for s in registry.sinks() {
        let l = [("sink", s.name)];
        for (metric, v) in [
            ("virtpulse_sink_queue_depth", s.depth() as f64),
            ("virtpulse_sink_queue_capacity", s.capacity as f64),
            ("virtpulse_sink_records_sent_total", s.sent_records() as f64),
            ("virtpulse_sink_records_dropped_total", s.dropped_records() as f64),
            ("virtpulse_sink_records_failed_total", s.failed_records() as f64),
        ] {
            add(&mut w, metric, &l, v);
        }
    }
    for (metric, v) in [
        ("virtpulse_prometheus_unmapped_stat_keys", facts.unmapped_keys as f64),
        ("virtpulse_prometheus_series_conflicts_total", facts.conflicts_total as f64),
        ("virtpulse_prometheus_series", facts.series as f64),
        ("virtpulse_prometheus_series_limit", facts.series_limit as f64),
        ("virtpulse_prometheus_series_dropped_total", facts.over_limit_total as f64),
    ] {
        add(&mut w, metric, &[], v);
    }
    if let Some(e) = registry.events() {
        for (family, n) in e.received() {
            add(&mut w, "virtpulse_events_received_total", &[("family", family)], n as f64);
        }
        let (delay_total, delay_max) = e.delay_seconds();
        for (metric, v) in [
            ("virtpulse_events_dropped_total", e.dropped() as f64),
            ("virtpulse_events_processed_total", e.processed() as f64),
            ("virtpulse_event_queue_depth", e.depth() as f64),
            ("virtpulse_event_queue_capacity", e.capacity as f64),
            ("virtpulse_event_delay_seconds_total", delay_total),
            ("virtpulse_event_delay_max_seconds", delay_max),
            ("virtpulse_event_resyncs_total", e.resyncs() as f64),
        ] {
            add(&mut w, metric, &[], v);
        }
        for ((family, event), ok) in e.registrations() {
            add(
                &mut w,
                "virtpulse_event_callback_registered",
                &[("family", family), ("event", event)],
                if ok { 1.0 } else { 0.0 },
            );
        }
    }
    for (place, n) in crate::internal_errors::counts() {
        add(&mut w, "virtpulse_internal_errors_total", &[("where", place)], n as f64);
    }
    if let Some(k) = registry.kafka() {
        render_kafka(&mut w, &k, now);
    }
    if let Some(o) = registry.otlp() {
        render_otlp(&mut w, &o);
    }
    if let Some(p) = proc_stat() {
        add(&mut w, "process_resident_memory_bytes", &[], p.rss_bytes);
        add(&mut w, "process_virtual_memory_bytes", &[], p.vsize_bytes);
        add(&mut w, "process_cpu_seconds_total", &[], p.cpu_seconds);
        add(&mut w, "process_start_time_seconds", &[], p.start_unix);
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        add(&mut w, "process_open_fds", &[], dir.count() as f64);
    }
    fams
}

fn render_kafka(w: &mut FamilyWriter, k: &KafkaStats, now: f64) {
    add(w, "virtpulse_kafka_broker_up", &[], if k.connected() { 1.0 } else { 0.0 });
    add(w, "virtpulse_kafka_brokers_up", &[], k.brokers_up() as f64);
    let (records, bytes, oldest_ms) = k.spool();
    add(w, "virtpulse_kafka_spool_records", &[], records as f64);
    add(w, "virtpulse_kafka_spool_bytes", &[], bytes as f64);
    let age = oldest_ms.map(|ms| (now - ms as f64 / 1000.0).max(0.0)).unwrap_or(0.0);
    add(w, "virtpulse_kafka_spool_oldest_age_seconds", &[], age);
    for s in Stream::ALL {
        let l = [("stream", s.as_str())];
        add(w, "virtpulse_kafka_messages_delivered_total", &l, k.delivered_count(s) as f64);
        add(w, "virtpulse_kafka_delivery_failures_total", &l, k.failure_count(s) as f64);
    }
    add(w, "virtpulse_kafka_events_resent_total", &[], k.resent_count() as f64);
    for why in crate::sinks::kafka::stats::RestartReason::ALL {
        add(w, "virtpulse_kafka_producer_restarts_total", &[("reason", why.as_str())], k.producer_restarts(why) as f64);
    }
    for c in DropCause::ALL {
        let l = [("stream", c.stream().as_str()), ("reason", c.as_str())];
        add(w, "virtpulse_kafka_records_dropped_total", &l, k.dropped_count(c) as f64);
    }
    let (buckets, sum, count) = k.latency();
    let name = "virtpulse_kafka_event_delivery_seconds";
    w.add_histogram(name, help(name), &[], &buckets, sum, count);
}

fn render_otlp(w: &mut FamilyWriter, o: &OtlpStats) {
    use std::sync::atomic::Ordering::Relaxed;
    for s in Signal::ALL {
        let l = [("signal", s.as_str())];
        add(w, "virtpulse_otlp_receiver_up", &l, if o.up(s) { 1.0 } else { 0.0 });
        for r in ExportResult::ALL {
            add(
                w,
                "virtpulse_otlp_exports_total",
                &[("signal", s.as_str()), ("result", r.as_str())],
                o.exports(s, r) as f64,
            );
        }
        add(w, "virtpulse_otlp_items_sent_total", &l, o.sent_items(s) as f64);
        add(w, "virtpulse_otlp_request_bytes_total", &l, o.request_bytes(s) as f64);
        for d in OtlpDrop::ALL {
            let n = o.dropped_count(s, d);
            // Only the reasons that can happen to the signal.
            let applies = match d {
                OtlpDrop::Superseded | OtlpDrop::CardinalityLimit => s == Signal::Metrics,
                OtlpDrop::QueueFull | OtlpDrop::Shutdown => s == Signal::Logs,
                OtlpDrop::Rejected => true,
            };
            if applies || n > 0 {
                add(
                    w,
                    "virtpulse_otlp_items_dropped_total",
                    &[("signal", s.as_str()), ("reason", d.as_str())],
                    n as f64,
                );
            }
        }
        add(w, "virtpulse_otlp_export_duration_seconds", &l, o.last_duration(s).as_secs_f64());
        if let Some(t) = o.last_success(s) {
            add(w, "virtpulse_otlp_last_success_timestamp_seconds", &l, t);
        }
    }
    add(w, "virtpulse_otlp_log_queue_records", &[], o.log_queue.load(Relaxed) as f64);
    add(w, "virtpulse_otlp_log_queue_capacity", &[], o.log_queue_capacity.load(Relaxed) as f64);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selfmon::{CollectorStats, SinkStats};
    use std::time::Duration;

    #[test]
    fn every_emitted_metric_is_declared_with_help() {
        let registry = Registry::new();
        let c = CollectorStats::new("domain_stats", Duration::from_secs(1));
        c.record(CycleOutcome::Ok, Duration::from_millis(3), None);
        registry.add_collector(c);
        registry.add_sink(SinkStats::new("stdout", 4));
        registry.wanted_groups.store(3, std::sync::atomic::Ordering::Relaxed);
        registry.set_events(crate::events::EventStats::new(8));
        registry.supported_groups.store(1, std::sync::atomic::Ordering::Relaxed);
        registry.set_kafka(Default::default());
        let otlp = std::sync::Arc::new(OtlpStats::default());
        otlp.export(Signal::Logs, ExportResult::Ok, 3, 100, Duration::from_millis(2));
        registry.set_otlp(otlp);
        let manager = ConnectionManager::new(crate::libvirt::manager::ManagerOptions {
            uri: "test:///default".into(),
            read_only: true,
            keepalive_interval: Duration::from_secs(5),
            keepalive_count: 3,
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(2),
        });
        let fams = render(&registry, Some(&manager), SinkFacts::default());
        for (name, fam) in &fams {
            let declared = SELF_METRICS.iter().find(|(n, _, _)| n == name);
            let (_, mtype, help) = declared.unwrap_or_else(|| panic!("{name} is emitted but not in SELF_METRICS"));
            assert_eq!(*mtype, fam.mtype, "{name}");
            assert!(!help.is_empty());
            assert_eq!(
                fam.mtype == Counter,
                name.ends_with("_total"),
                "{name}: counters and only counters end in _total"
            );
        }
        assert_eq!(fams["virtpulse_stats_group_enabled"].body.lines().count(), 2);
        assert!(fams["libvirt_up"].body.contains("libvirt_up{uri=\"test:///default\"} 0"));
    }
}
