//! The agent's telemetry about itself. Components report into a `Registry`
//! through the `Report` trait (their own metrics, their part of /readyz);
//! the Prometheus sink reads it at scrape time and `health` judges from it.
//! This module knows no component: adding one touches neither it nor
//! `health`.

pub(crate) mod render;
mod stats;

use std::any::Any;
use std::sync::{Arc, Mutex};

pub mod reload;
pub use stats::{ChunkMiss, CollectorStats, CycleOutcome, DropReason, DropStream, SinkStats, METRICS};

use crate::util::clock::unix_seconds;
use crate::value::MetricType;

/// A self-metric: name, type and help, declared once by the component that
/// reports it (docs/metrics.md is generated from these).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricDesc {
    pub name: &'static str,
    pub mtype: MetricType,
    pub help: &'static str,
}

impl MetricDesc {
    pub const fn counter(name: &'static str, help: &'static str) -> Self {
        Self { name, mtype: MetricType::Counter, help }
    }

    pub const fn gauge(name: &'static str, help: &'static str) -> Self {
        Self { name, mtype: MetricType::Gauge, help }
    }

    pub const fn histogram(name: &'static str, help: &'static str) -> Self {
        Self { name, mtype: MetricType::Histogram, help }
    }
}

/// The declaration of `name` in a component's table. A name missing from
/// the table reads as a gauge without help (tests hold every emitted name
/// against the tables).
pub fn find(table: &[MetricDesc], name: &'static str) -> MetricDesc {
    table.iter().find(|d| d.name == name).copied().unwrap_or(MetricDesc::gauge(name, ""))
}

/// Where a component writes its metrics.
pub trait MetricWriter {
    /// One sample of a counter or gauge.
    fn sample(&mut self, desc: &MetricDesc, labels: &[(&str, &str)], value: f64);
    /// One histogram: cumulative `(upper bound, count)` buckets.
    fn histogram(&mut self, desc: &MetricDesc, labels: &[(&str, &str)], buckets: &[(f64, u64)], sum: f64, count: u64);
}

/// What a component says about itself.
pub trait Report: Send + Sync {
    /// Its metrics, as of now.
    fn metrics(&self, out: &mut dyn MetricWriter);

    /// Its entry in the readiness page (`/readyz`), if it has one.
    fn readiness(&self) -> Option<(&'static str, serde_json::Value)> {
        None
    }
}

/// Asked by `/healthz`, `/readyz` and the systemd watchdog.
pub trait Probe: Send + Sync {
    /// `Err` names what is stuck.
    fn liveness(&self) -> Result<(), String>;
    /// (ready, the state of every part as JSON).
    fn readiness(&self) -> (bool, serde_json::Value);
}

/// A report, and who owns it when the owner can go (a collector or sink a
/// reload removes) or be rebuilt (and keep counting where it left off).
struct Owned {
    owner: Option<String>,
    report: Arc<dyn Report>,
    /// The same object, for `keep` to hand back to a rebuilt owner.
    any: Option<Arc<dyn Any + Send + Sync>>,
}

/// Everything the agent knows about itself.
#[derive(Default)]
pub struct Registry {
    collectors: Mutex<Vec<Arc<CollectorStats>>>,
    sinks: Mutex<Vec<Arc<SinkStats>>>,
    reports: Mutex<Vec<Owned>>,
    pub started_unix: f64,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("collectors", &self.collectors().len())
            .field("sinks", &self.sinks().len())
            .field("reports", &self.reports().len())
            .finish()
    }
}

impl Registry {
    pub fn new() -> Arc<Self> {
        Arc::new(Self { started_unix: unix_seconds(), ..Default::default() })
    }

    pub fn add_collector(&self, c: Arc<CollectorStats>) {
        if let Ok(mut v) = self.collectors.lock() {
            v.retain(|o| o.name != c.name);
            v.push(c);
        }
    }

    /// The collector's counters: those it had before a reload rebuilt it
    /// (with the new interval), or new ones.
    pub fn collector(&self, name: &'static str, interval: std::time::Duration) -> Arc<CollectorStats> {
        let mut v = self.collectors.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = v.iter().find(|c| c.name == name) {
            c.set_interval(interval);
            return c.clone();
        }
        let c = CollectorStats::new(name, interval);
        v.push(c.clone());
        c
    }

    /// Forgets a collector a reload turned off (its series go).
    pub fn remove_collector(&self, name: &str) {
        self.collectors.lock().unwrap_or_else(|e| e.into_inner()).retain(|c| c.name != name);
        self.remove_owned(name);
    }

    pub fn add_sink(&self, s: Arc<SinkStats>) {
        if let Ok(mut v) = self.sinks.lock() {
            v.retain(|o| o.name != s.name);
            v.push(s);
        }
    }

    /// The sink's queue counters: those it had before a reload restarted it
    /// (when its queue keeps its size), or new ones.
    pub fn sink(&self, name: &'static str, capacity: usize) -> Arc<SinkStats> {
        let mut v = self.sinks.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = v.iter().find(|s| s.name == name && s.capacity == capacity) {
            return s.clone();
        }
        v.retain(|s| s.name != name);
        let s = SinkStats::new(name, capacity);
        v.push(s.clone());
        s
    }

    /// Forgets a sink a reload removed (its series go).
    pub fn remove_sink(&self, name: &str) {
        self.sinks.lock().unwrap_or_else(|e| e.into_inner()).retain(|s| s.name != name);
        self.remove_owned(name);
    }

    /// A component's own report (connection, events).
    pub fn add_report(&self, r: Arc<dyn Report>) {
        if let Ok(mut v) = self.reports.lock() {
            v.push(Owned { owner: None, report: r, any: None });
        }
    }

    /// A report `owner` (a collector's or sink's name) replaces when it is
    /// rebuilt and that goes with it (`remove_owned`).
    pub fn add_owned(&self, owner: &str, r: Arc<dyn Report>) {
        if let Ok(mut v) = self.reports.lock() {
            v.retain(|o| o.owner.as_deref() != Some(owner) || o.any.is_some());
            v.push(Owned { owner: Some(owner.to_string()), report: r, any: None });
        }
    }

    /// The report of type `T` that `owner` registered before a reload
    /// rebuilt it, so its counters run on; or a new one from `make`.
    pub fn keep<T: Report + Send + Sync + 'static>(&self, owner: &str, make: impl FnOnce() -> T) -> Arc<T> {
        let mut v = self.reports.lock().unwrap_or_else(|e| e.into_inner());
        for o in v.iter().filter(|o| o.owner.as_deref() == Some(owner)) {
            if let Some(t) = o.any.clone().and_then(|a| a.downcast::<T>().ok()) {
                return t;
            }
        }
        let t = Arc::new(make());
        v.push(Owned { owner: Some(owner.to_string()), report: t.clone(), any: Some(t.clone()) });
        t
    }

    /// Forgets every report of `owner`.
    pub fn remove_owned(&self, owner: &str) {
        if let Ok(mut v) = self.reports.lock() {
            v.retain(|o| o.owner.as_deref() != Some(owner));
        }
    }

    pub fn collectors(&self) -> Vec<Arc<CollectorStats>> {
        self.collectors.lock().map(|v| v.clone()).unwrap_or_default()
    }

    pub fn sinks(&self) -> Vec<Arc<SinkStats>> {
        self.sinks.lock().map(|v| v.clone()).unwrap_or_default()
    }

    pub fn reports(&self) -> Vec<Arc<dyn Report>> {
        self.reports.lock().map(|v| v.iter().map(|o| o.report.clone()).collect()).unwrap_or_default()
    }

    /// Every metric of every collector, sink and report.
    pub fn write_metrics(&self, out: &mut dyn MetricWriter) {
        for c in self.collectors() {
            c.metrics(out);
        }
        for s in self.sinks() {
            s.metrics(out);
        }
        for r in self.reports() {
            r.metrics(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[derive(Default)]
    struct Names(Vec<String>);

    impl MetricWriter for Names {
        fn sample(&mut self, desc: &MetricDesc, labels: &[(&str, &str)], _: f64) {
            assert!(!desc.help.is_empty(), "{} is not declared (labels {labels:?})", desc.name);
            self.0.push(desc.name.to_string());
        }
        fn histogram(&mut self, desc: &MetricDesc, _: &[(&str, &str)], _: &[(f64, u64)], _: f64, _: u64) {
            self.0.push(desc.name.to_string());
        }
    }

    #[test]
    fn collectors_and_sinks_report_declared_metrics_and_chunk_misses_only_when_chunked() {
        let registry = Registry::new();
        let c = CollectorStats::new("jobs", Duration::from_secs(1));
        c.record(CycleOutcome::Ok, Duration::from_millis(3), None);
        registry.add_collector(c.clone());
        registry.add_sink(SinkStats::new("stdout", 4));
        let mut names = Names::default();
        registry.write_metrics(&mut names);
        assert!(names.0.iter().any(|n| n == "virtpulse_sink_queue_capacity"));
        assert!(names.0.iter().any(|n| n == "virtpulse_collection_age_seconds"));
        assert!(!names.0.iter().any(|n| n == "virtpulse_collection_chunks_missed_total"));
        c.set_chunked();
        let mut names = Names::default();
        registry.write_metrics(&mut names);
        assert_eq!(names.0.iter().filter(|n| *n == "virtpulse_collection_chunks_missed_total").count(), 2);
    }
}
