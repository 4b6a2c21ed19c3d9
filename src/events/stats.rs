//! What went through the hand-off queue between libvirt's callbacks and
//! the router, and which callbacks the daemon accepted.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::selfmon::{find, MetricDesc, MetricWriter, Report};

/// The hand-off queue and what went through it.
#[derive(Debug, Default)]
pub struct EventStats {
    pub capacity: usize,
    pub(super) received: Mutex<BTreeMap<&'static str, u64>>,
    pub(super) dropped: AtomicU64,
    pub(super) depth: AtomicUsize,
    pub(super) processed: AtomicU64,
    pub(super) delay_ns_total: AtomicU64,
    pub(super) delay_ns_max: AtomicU64,
    pub(super) resyncs: AtomicU64,
    /// (family, callback) -> registered on the current connection?
    pub(super) registrations: Mutex<BTreeMap<(&'static str, &'static str), bool>>,
}

impl EventStats {
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self { capacity, ..Default::default() })
    }

    pub fn received(&self) -> BTreeMap<&'static str, u64> {
        self.received.lock().map(|m| m.clone()).unwrap_or_default()
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::Relaxed)
    }

    pub fn processed(&self) -> u64 {
        self.processed.load(Ordering::Relaxed)
    }

    /// Total and longest time events waited between the callback and routing.
    pub fn delay_seconds(&self) -> (f64, f64) {
        (
            self.delay_ns_total.load(Ordering::Relaxed) as f64 / 1e9,
            self.delay_ns_max.load(Ordering::Relaxed) as f64 / 1e9,
        )
    }

    pub fn resyncs(&self) -> u64 {
        self.resyncs.load(Ordering::Relaxed)
    }

    pub fn registrations(&self) -> BTreeMap<(&'static str, &'static str), bool> {
        self.registrations.lock().map(|m| m.clone()).unwrap_or_default()
    }
}

/// The metrics the event stream reports.
pub const METRICS: &[MetricDesc] = &[
    MetricDesc::counter("virtpulse_events_received_total", "Events handed over by libvirt's callbacks, by family."),
    MetricDesc::counter("virtpulse_events_dropped_total", "Events lost because the hand-off queue was full."),
    MetricDesc::counter("virtpulse_events_processed_total", "Events turned into records and routed."),
    MetricDesc::gauge("virtpulse_event_queue_depth", "Events waiting in the hand-off queue."),
    MetricDesc::gauge("virtpulse_event_queue_capacity", "Capacity of the hand-off queue."),
    MetricDesc::counter(
        "virtpulse_event_delay_seconds_total",
        "Total time events waited between libvirt's callback and routing.",
    ),
    MetricDesc::gauge(
        "virtpulse_event_delay_max_seconds",
        "Longest time an event waited between libvirt's callback and routing.",
    ),
    MetricDesc::counter(
        "virtpulse_event_resyncs_total",
        "Resyncs done after (re)connecting (one record per domain each).",
    ),
    MetricDesc::gauge(
        "virtpulse_event_callback_registered",
        "Per event callback: 1 if registered on the current connection, 0 if the daemon refused it.",
    ),
];

impl Report for EventStats {
    fn metrics(&self, w: &mut dyn MetricWriter) {
        let mut put = |name: &'static str, labels: &[(&str, &str)], v: f64| w.sample(&find(METRICS, name), labels, v);
        for (family, n) in self.received() {
            put("virtpulse_events_received_total", &[("family", family)], n as f64);
        }
        let (delay_total, delay_max) = self.delay_seconds();
        for (metric, v) in [
            ("virtpulse_events_dropped_total", self.dropped() as f64),
            ("virtpulse_events_processed_total", self.processed() as f64),
            ("virtpulse_event_queue_depth", self.depth() as f64),
            ("virtpulse_event_queue_capacity", self.capacity as f64),
            ("virtpulse_event_delay_seconds_total", delay_total),
            ("virtpulse_event_delay_max_seconds", delay_max),
            ("virtpulse_event_resyncs_total", self.resyncs() as f64),
        ] {
            put(metric, &[], v);
        }
        for ((family, event), ok) in self.registrations() {
            let labels = [("family", family), ("event", event)];
            put("virtpulse_event_callback_registered", &labels, if ok { 1.0 } else { 0.0 });
        }
    }
}
