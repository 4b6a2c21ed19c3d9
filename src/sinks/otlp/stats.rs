//! The OTLP sink's own figures, read by the Prometheus sink at scrape time.

use crate::selfmon::{find, MetricDesc, MetricWriter, Report};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Metrics,
    Logs,
}

impl Signal {
    pub const ALL: [Signal; 2] = [Signal::Metrics, Signal::Logs];

    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Metrics => "metrics",
            Signal::Logs => "logs",
        }
    }
}

/// How one export request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportResult {
    Ok,
    /// Accepted, but the receiver refused some items (partial success).
    Partial,
    /// Failed; will be (or was) retried.
    Failed,
    /// Refused for good (malformed, unauthorized...): not retried.
    Rejected,
}

impl ExportResult {
    pub const ALL: [ExportResult; 4] =
        [ExportResult::Ok, ExportResult::Partial, ExportResult::Failed, ExportResult::Rejected];

    pub fn as_str(self) -> &'static str {
        match self {
            ExportResult::Ok => "ok",
            ExportResult::Partial => "partial",
            ExportResult::Failed => "failed",
            ExportResult::Rejected => "rejected",
        }
    }
}

/// Why data points or log records never reached the receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Metrics: retries ran out before the next export; newer data follows.
    Superseded,
    /// Logs: the queue was full while the receiver was down; oldest dropped.
    QueueFull,
    /// The receiver refused them (partial success or a permanent error).
    Rejected,
    /// Metrics: beyond `cardinality_limit` points for one metric.
    CardinalityLimit,
    /// Still queued when the shutdown deadline passed.
    Shutdown,
}

impl DropReason {
    pub const ALL: [DropReason; 5] = [
        DropReason::Superseded,
        DropReason::QueueFull,
        DropReason::Rejected,
        DropReason::CardinalityLimit,
        DropReason::Shutdown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Superseded => "superseded",
            DropReason::QueueFull => "queue_full",
            DropReason::Rejected => "rejected",
            DropReason::CardinalityLimit => "cardinality_limit",
            DropReason::Shutdown => "shutdown",
        }
    }
}

#[derive(Debug, Default)]
struct PerSignal {
    exports: [AtomicU64; 4],
    sent_items: AtomicU64,
    request_bytes: AtomicU64,
    dropped: [AtomicU64; 5],
    last_success_ms: AtomicU64,
    last_duration_us: AtomicU64,
    /// 1 after a success, 0 after a failure.
    up: AtomicU64,
}

#[derive(Debug, Default)]
pub struct OtlpStats {
    signals: [PerSignal; 2],
    pub log_queue: AtomicUsize,
    pub log_queue_capacity: AtomicUsize,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl OtlpStats {
    fn s(&self, signal: Signal) -> &PerSignal {
        &self.signals[signal as usize]
    }

    /// One export request finished: `items` sent in `bytes` of protobuf.
    pub fn export(&self, signal: Signal, result: ExportResult, items: u64, bytes: u64, took: Duration) {
        let s = self.s(signal);
        s.exports[result as usize].fetch_add(1, Relaxed);
        s.last_duration_us.store(took.as_micros() as u64, Relaxed);
        match result {
            ExportResult::Ok | ExportResult::Partial => {
                s.sent_items.fetch_add(items, Relaxed);
                s.request_bytes.fetch_add(bytes, Relaxed);
                s.last_success_ms.store(now_ms(), Relaxed);
                s.up.store(1, Relaxed);
            }
            ExportResult::Failed | ExportResult::Rejected => s.up.store(0, Relaxed),
        }
    }

    pub fn dropped(&self, signal: Signal, reason: DropReason, n: u64) {
        if n > 0 {
            self.s(signal).dropped[reason as usize].fetch_add(n, Relaxed);
        }
    }

    pub fn exports(&self, signal: Signal, result: ExportResult) -> u64 {
        self.s(signal).exports[result as usize].load(Relaxed)
    }

    pub fn sent_items(&self, signal: Signal) -> u64 {
        self.s(signal).sent_items.load(Relaxed)
    }

    pub fn request_bytes(&self, signal: Signal) -> u64 {
        self.s(signal).request_bytes.load(Relaxed)
    }

    pub fn dropped_count(&self, signal: Signal, reason: DropReason) -> u64 {
        self.s(signal).dropped[reason as usize].load(Relaxed)
    }

    /// Unix seconds of the last successful export, if any.
    pub fn last_success(&self, signal: Signal) -> Option<f64> {
        let ms = self.s(signal).last_success_ms.load(Relaxed);
        (ms > 0).then_some(ms as f64 / 1000.0)
    }

    pub fn last_duration(&self, signal: Signal) -> Duration {
        Duration::from_micros(self.s(signal).last_duration_us.load(Relaxed))
    }

    pub fn up(&self, signal: Signal) -> bool {
        self.s(signal).up.load(Relaxed) == 1
    }
}

/// The metrics the OTLP sink reports.
pub(crate) const METRICS: &[MetricDesc] = &[
    MetricDesc::gauge(
        "virtpulse_otlp_receiver_up",
        "Per signal (metrics, logs): 1 if the last OTLP export succeeded, else 0.",
    ),
    MetricDesc::counter(
        "virtpulse_otlp_exports_total",
        "OTLP export requests by signal and result (ok, partial, failed, rejected).",
    ),
    MetricDesc::counter(
        "virtpulse_otlp_items_sent_total",
        "Data points (metrics) or log records (logs) the OTLP receiver accepted.",
    ),
    MetricDesc::counter(
        "virtpulse_otlp_request_bytes_total",
        "Protobuf bytes (before compression) of the OTLP requests the receiver accepted, by signal.",
    ),
    MetricDesc::counter(
        "virtpulse_otlp_items_dropped_total",
        "Data points or log records that never reached the OTLP receiver, by signal and reason (superseded, queue_full, rejected, cardinality_limit, shutdown).",
    ),
    MetricDesc::gauge(
        "virtpulse_otlp_log_queue_records",
        "Event log records waiting for the OTLP receiver.",
    ),
    MetricDesc::gauge(
        "virtpulse_otlp_log_queue_capacity",
        "Capacity of the OTLP log queue in records.",
    ),
    MetricDesc::gauge(
        "virtpulse_otlp_export_duration_seconds",
        "Duration of the last OTLP export request, by signal.",
    ),
    MetricDesc::gauge(
        "virtpulse_otlp_last_success_timestamp_seconds",
        "When an OTLP export of the signal last succeeded (Unix time).",
    ),
];

fn put(w: &mut dyn MetricWriter, name: &'static str, labels: &[(&str, &str)], v: f64) {
    w.sample(&find(METRICS, name), labels, v);
}

impl Report for OtlpStats {
    fn metrics(&self, w: &mut dyn MetricWriter) {
        let o = self;
        use std::sync::atomic::Ordering::Relaxed;
        for s in Signal::ALL {
            let l = [("signal", s.as_str())];
            put(w, "virtpulse_otlp_receiver_up", &l, if o.up(s) { 1.0 } else { 0.0 });
            for r in ExportResult::ALL {
                put(
                    w,
                    "virtpulse_otlp_exports_total",
                    &[("signal", s.as_str()), ("result", r.as_str())],
                    o.exports(s, r) as f64,
                );
            }
            put(w, "virtpulse_otlp_items_sent_total", &l, o.sent_items(s) as f64);
            put(w, "virtpulse_otlp_request_bytes_total", &l, o.request_bytes(s) as f64);
            for d in DropReason::ALL {
                let n = o.dropped_count(s, d);
                // Only the reasons that can happen to the signal.
                let applies = match d {
                    DropReason::Superseded | DropReason::CardinalityLimit => s == Signal::Metrics,
                    DropReason::QueueFull | DropReason::Shutdown => s == Signal::Logs,
                    DropReason::Rejected => true,
                };
                if applies || n > 0 {
                    put(
                        w,
                        "virtpulse_otlp_items_dropped_total",
                        &[("signal", s.as_str()), ("reason", d.as_str())],
                        n as f64,
                    );
                }
            }
            put(w, "virtpulse_otlp_export_duration_seconds", &l, o.last_duration(s).as_secs_f64());
            if let Some(t) = o.last_success(s) {
                put(w, "virtpulse_otlp_last_success_timestamp_seconds", &l, t);
            }
        }
        put(w, "virtpulse_otlp_log_queue_records", &[], o.log_queue.load(Relaxed) as f64);
        put(w, "virtpulse_otlp_log_queue_capacity", &[], o.log_queue_capacity.load(Relaxed) as f64);
    }

    fn readiness(&self) -> Option<(&'static str, serde_json::Value)> {
        Some((
            "otlp_receiver",
            serde_json::json!({ "metrics_up": self.up(Signal::Metrics), "logs_up": self.up(Signal::Logs) }),
        ))
    }
}
