//! What the Prometheus sink reports about its own work, added to the
//! agent's own metrics (see `selfmon::render`) at scrape time.

use crate::exposition::{Families, FamilyWriter, RenderStats};
use crate::selfmon::{find, MetricDesc};

/// The metrics this sink adds itself.
pub(crate) const METRICS: &[MetricDesc] = &[
    MetricDesc::gauge(
        "virtpulse_prometheus_prerendered_bytes",
        "Exposition text held rendered for scrapes, plain and gzip-compressed (snapshots up to sinks.prometheus.prerender_max_bytes).",
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
];

/// Render-time facts the sink keeps about its own work.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct SinkFacts {
    pub unmapped_keys: usize,
    pub conflicts_total: u64,
    pub series: u64,
    pub prerendered_bytes: usize,
    pub series_limit: u64,
    pub over_limit_total: u64,
}

/// Adds this sink's facts to the agent's own families (see `selfmon::render`).
pub(crate) fn add_facts(fams: &mut Families, facts: SinkFacts) {
    let mut stats = RenderStats::default();
    let mut w = FamilyWriter::new(fams, &mut stats);
    for (metric, v) in [
        ("virtpulse_prometheus_unmapped_stat_keys", facts.unmapped_keys as f64),
        ("virtpulse_prometheus_series_conflicts_total", facts.conflicts_total as f64),
        ("virtpulse_prometheus_series", facts.series as f64),
        ("virtpulse_prometheus_prerendered_bytes", facts.prerendered_bytes as f64),
        ("virtpulse_prometheus_series_limit", facts.series_limit as f64),
        ("virtpulse_prometheus_series_dropped_total", facts.over_limit_total as f64),
    ] {
        let d = find(METRICS, metric);
        w.add(d.name, d.mtype, d.help, &[], v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selfmon::{CollectorStats, CycleOutcome, Registry, SinkStats};
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
        let dir = tempfile::tempdir().unwrap();
        let web = dir.path().join("web.yml");
        std::fs::write(&web, "http_server_config:\n  headers:\n    X-A: a\n").unwrap();
        registry.add_report(crate::web::Security::load(&web, "prometheus").unwrap());
        let declared = crate::registry::self_metrics();
        let mut fams = crate::selfmon::render::render(&registry);
        add_facts(&mut fams, SinkFacts::default());
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
        for must in [
            "virtpulse_kafka_event_delivery_seconds",
            "virtpulse_otlp_exports_total",
            "libvirt_up",
            "virtpulse_web_config_reloads_total",
        ] {
            assert!(fams.contains_key(must), "{must} missing");
        }
        assert!(fams["libvirt_up"].body.contains("libvirt_up{uri=\"test:///default\"} 0"));
        assert!(fams.contains_key("process_threads"));
        // Outside a runtime there is no task count to give; inside one
        // there is (the soak samples it for leaks).
        assert!(!fams.contains_key("virtpulse_runtime_alive_tasks"));
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let inside = rt.block_on(async {
            let parked = tokio::spawn(std::future::pending::<()>());
            let fams = crate::selfmon::render::render(&registry);
            parked.abort();
            fams
        });
        assert!(inside["virtpulse_runtime_alive_tasks"].body.contains("virtpulse_runtime_alive_tasks 1"));
        let mut names: Vec<_> = declared.iter().map(|d| d.name).collect();
        names.sort();
        let n = names.len();
        names.dedup();
        assert_eq!(n, names.len(), "a self-metric is declared twice");
    }
}
