//! What went through the hand-off queue between libvirt's callbacks and
//! the router, and which callbacks the daemon accepted.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::lanes::{LaneDrop, LaneStats, SHARED};
use crate::selfmon::{find, MetricDesc, MetricWriter, Report};

/// What went through the lanes, and which callbacks the daemon accepted.
#[derive(Debug, Default)]
pub struct EventStats {
    /// Each lane's hand-off queue capacity (events).
    pub capacity: usize,
    received: Mutex<BTreeMap<&'static str, u64>>,
    excluded: AtomicU64,
    processed: AtomicU64,
    delay_ns_total: AtomicU64,
    delay_ns_max: AtomicU64,
    pub(super) resyncs: AtomicU64,
    /// (family, callback) -> registered on the current connection?
    pub(super) registrations: Mutex<BTreeMap<(&'static str, &'static str), bool>>,
    /// Every lane ever opened, by name (kept across reloads so their
    /// counters run on).
    lanes: Mutex<BTreeMap<&'static str, Arc<LaneStats>>>,
}

impl EventStats {
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self::with_capacity(capacity))
    }

    pub fn with_capacity(capacity: usize) -> Self {
        Self { capacity, ..Default::default() }
    }

    pub(super) fn received(&self, family: &'static str) {
        if let Ok(mut m) = self.received.lock() {
            *m.entry(family).or_default() += 1;
        }
    }

    pub(super) fn excluded(&self) {
        self.excluded.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn processed(&self, n: u64) {
        self.processed.fetch_add(n, Ordering::Relaxed);
    }

    pub(super) fn delayed(&self, d: std::time::Duration) {
        let ns = d.as_nanos().min(u128::from(u64::MAX)) as u64;
        self.delay_ns_total.fetch_add(ns, Ordering::Relaxed);
        self.delay_ns_max.fetch_max(ns, Ordering::Relaxed);
    }

    /// The lane's counters (made on first use, kept for the run).
    pub fn lane(&self, name: &'static str, capacity: usize) -> Arc<LaneStats> {
        let mut lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
        lanes.entry(name).or_insert_with(|| Arc::new(LaneStats::new(capacity))).clone()
    }

    pub fn received_by_family(&self) -> BTreeMap<&'static str, u64> {
        self.received.lock().map(|m| m.clone()).unwrap_or_default()
    }

    pub fn excluded_total(&self) -> u64 {
        self.excluded.load(Ordering::Relaxed)
    }

    /// Dropped in front of any lane, for any reason.
    pub fn dropped(&self) -> u64 {
        let lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
        lanes.values().map(|l| LaneDrop::ALL.iter().map(|w| l.dropped(*w)).sum::<u64>()).sum()
    }

    /// Events waiting in the shared lane.
    pub fn depth(&self) -> usize {
        let lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
        lanes.get(SHARED).map(|l| l.depth()).unwrap_or(0)
    }

    pub fn processed_total(&self) -> u64 {
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
    MetricDesc::counter(
        "virtpulse_events_excluded_total",
        "Domain events left out because [domains] include/exclude leaves their domain out.",
    ),
    MetricDesc::counter(
        "virtpulse_events_dropped_total",
        "Events lost in front of a lane, by lane (shared: listeners and the sinks that drop when full; a sink's name: that blocking sink's own lane) and reason (queue_full: the lane's hand-off queue was full; stopped: the lane closed with events its sink could no longer take).",
    ),
    MetricDesc::counter(
        "virtpulse_events_routed_total",
        "Events a lane handed to its sinks' queues, by lane.",
    ),
    MetricDesc::counter("virtpulse_events_processed_total", "Events the shared lane turned into records and routed."),
    MetricDesc::gauge("virtpulse_event_queue_depth", "Events waiting in a lane's hand-off queue, by lane."),
    MetricDesc::gauge("virtpulse_event_queue_capacity", "Capacity of a lane's hand-off queue (events), by lane."),
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
        for (family, n) in self.received_by_family() {
            put("virtpulse_events_received_total", &[("family", family)], n as f64);
        }
        let lanes: Vec<(&'static str, Arc<LaneStats>)> =
            self.lanes.lock().map(|m| m.iter().map(|(k, v)| (*k, v.clone())).collect()).unwrap_or_default();
        for (lane, l) in &lanes {
            for why in LaneDrop::ALL {
                let labels = [("lane", *lane), ("reason", why.as_str())];
                put("virtpulse_events_dropped_total", &labels, l.dropped(why) as f64);
            }
            put("virtpulse_events_routed_total", &[("lane", lane)], l.routed() as f64);
            put("virtpulse_event_queue_depth", &[("lane", lane)], l.depth() as f64);
            put("virtpulse_event_queue_capacity", &[("lane", lane)], l.capacity as f64);
        }
        let (delay_total, delay_max) = self.delay_seconds();
        for (metric, v) in [
            ("virtpulse_events_excluded_total", self.excluded_total() as f64),
            ("virtpulse_events_processed_total", self.processed_total() as f64),
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
