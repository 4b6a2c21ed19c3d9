//! The agent's own metrics, rendered at scrape time: what every component
//! reports into the registry, plus this sink's facts and the process.

use super::render::{Families, FamilyWriter, RenderStats};
use crate::selfmon::{find, MetricDesc, MetricWriter, Registry};

/// The metrics this sink adds itself.
pub const METRICS: &[MetricDesc] = &[
    MetricDesc::gauge(
        "virtpulse_prometheus_prerendered_bytes",
        "Exposition text held rendered for scrapes, plain and gzip-compressed (snapshots up to sinks.prometheus.prerender_max_bytes).",
    ),
    MetricDesc::gauge(
        "virtpulse_build_info",
        "Agent version (value is always 1).",
    ),
    MetricDesc::gauge(
        "virtpulse_prometheus_unmapped_stat_keys",
        "Distinct libvirt stat keys in the last snapshot with no metric mapping (kept in records).",
    ),
    MetricDesc::counter(
        "virtpulse_prometheus_series_conflicts_total",
        "Samples dropped because they duplicated a series or clashed on type.",
    ),
    MetricDesc::gauge(
        "virtpulse_prometheus_series",
        "Series the snapshots on view export (all collectors).",
    ),
    MetricDesc::gauge(
        "virtpulse_prometheus_series_limit",
        "Most series /metrics exports (sinks.prometheus.max_series).",
    ),
    MetricDesc::counter(
        "virtpulse_prometheus_series_dropped_total",
        "Series not exported because the snapshots had more than sinks.prometheus.max_series.",
    ),
    MetricDesc::counter(
        "virtpulse_internal_errors_total",
        "Panics caught and survived, by where (event_callback: a libvirt event callback). Each is a bug: please report it.",
    ),
    MetricDesc::gauge(
        "process_resident_memory_bytes",
        "Resident memory of the agent process.",
    ),
    MetricDesc::gauge(
        "process_virtual_memory_bytes",
        "Virtual memory of the agent process.",
    ),
    MetricDesc::counter(
        "process_cpu_seconds_total",
        "CPU time used by the agent process.",
    ),
    MetricDesc::gauge(
        "process_open_fds",
        "Open file descriptors of the agent process.",
    ),
    MetricDesc::gauge(
        "process_start_time_seconds",
        "Start time of the agent process (Unix time).",
    ),
];

/// Registry reports, written as Prometheus families.
struct Writer<'a>(FamilyWriter<'a>);

impl MetricWriter for Writer<'_> {
    fn sample(&mut self, desc: &MetricDesc, labels: &[(&str, &str)], value: f64) {
        self.0.add(desc.name, desc.mtype, desc.help, labels, value);
    }

    fn histogram(&mut self, desc: &MetricDesc, labels: &[(&str, &str)], buckets: &[(f64, u64)], sum: f64, count: u64) {
        self.0.add_histogram(desc.name, desc.help, labels, buckets, sum, count);
    }
}

/// Render-time facts the sink keeps about its own work.
#[derive(Debug, Default, Clone, Copy)]
pub struct SinkFacts {
    pub unmapped_keys: usize,
    pub conflicts_total: u64,
    pub series: u64,
    pub prerendered_bytes: usize,
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

pub fn render(registry: &Registry, facts: SinkFacts) -> Families {
    let mut fams = Families::new();
    let mut stats = RenderStats::default();
    let mut w = Writer(FamilyWriter::new(&mut fams, &mut stats));
    let put = |w: &mut Writer, name: &'static str, labels: &[(&str, &str)], v: f64| {
        w.sample(&find(METRICS, name), labels, v);
    };
    put(&mut w, "virtpulse_build_info", &[("version", env!("CARGO_PKG_VERSION"))], 1.0);
    registry.write_metrics(&mut w);
    for (metric, v) in [
        ("virtpulse_prometheus_unmapped_stat_keys", facts.unmapped_keys as f64),
        ("virtpulse_prometheus_series_conflicts_total", facts.conflicts_total as f64),
        ("virtpulse_prometheus_series", facts.series as f64),
        ("virtpulse_prometheus_prerendered_bytes", facts.prerendered_bytes as f64),
        ("virtpulse_prometheus_series_limit", facts.series_limit as f64),
        ("virtpulse_prometheus_series_dropped_total", facts.over_limit_total as f64),
    ] {
        put(&mut w, metric, &[], v);
    }
    for (place, n) in crate::util::internal_errors::counts() {
        put(&mut w, "virtpulse_internal_errors_total", &[("where", place)], n as f64);
    }
    if let Some(p) = proc_stat() {
        put(&mut w, "process_resident_memory_bytes", &[], p.rss_bytes);
        put(&mut w, "process_virtual_memory_bytes", &[], p.vsize_bytes);
        put(&mut w, "process_cpu_seconds_total", &[], p.cpu_seconds);
        put(&mut w, "process_start_time_seconds", &[], p.start_unix);
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        put(&mut w, "process_open_fds", &[], dir.count() as f64);
    }
    fams
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selfmon::{CollectorStats, CycleOutcome, SinkStats};
    use crate::sinks::otlp::stats::{ExportResult, OtlpStats, Signal};
    use crate::value::MetricType::Counter;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn every_emitted_metric_is_declared_with_help() {
        let registry = Registry::new();
        let c = CollectorStats::new("domain_stats", Duration::from_secs(1));
        c.record(CycleOutcome::Ok, Duration::from_millis(3), None);
        c.set_chunked();
        registry.add_collector(c);
        registry.add_sink(SinkStats::new("stdout", 4));
        registry.add_report(crate::events::EventStats::new(8));
        registry.add_report(Arc::new(crate::sinks::kafka::stats::KafkaStats::default()));
        let otlp = Arc::new(OtlpStats::default());
        otlp.export(Signal::Logs, ExportResult::Ok, 3, 100, Duration::from_millis(2));
        registry.add_report(otlp);
        let manager = crate::libvirt::ConnectionManager::new(crate::libvirt::manager::ManagerOptions {
            uri: "test:///default".into(),
            read_only: true,
            keepalive_interval: Duration::from_secs(5),
            keepalive_count: 3,
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(2),
        });
        registry.add_report(Arc::new(crate::collectors::connection::ConnectionReport(manager, None)));
        let declared = crate::reference::self_metrics();
        let fams = render(&registry, SinkFacts::default());
        for (name, fam) in &fams {
            let d = declared.iter().find(|d| d.name == name);
            let d = d.unwrap_or_else(|| panic!("{name} is emitted but declared by no component"));
            assert_eq!(d.mtype, fam.mtype, "{name}");
            assert!(!d.help.is_empty());
            assert_eq!(
                d.mtype == Counter,
                name.ends_with("_total"),
                "{name}: counters and only counters end in _total"
            );
        }
        for must in ["virtpulse_kafka_event_delivery_seconds", "virtpulse_otlp_exports_total", "libvirt_up"] {
            assert!(fams.contains_key(must), "{must} missing");
        }
        assert!(fams["libvirt_up"].body.contains("libvirt_up{uri=\"test:///default\"} 0"));
        let mut names: Vec<_> = declared.iter().map(|d| d.name).collect();
        names.sort();
        let n = names.len();
        names.dedup();
        assert_eq!(n, names.len(), "a self-metric is declared twice");
    }
}
