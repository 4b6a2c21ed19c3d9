//! The Kafka sink's own figures, read by the Prometheus sink at scrape time.

use crate::selfmon::{find, MetricDesc, MetricWriter, Report};
use crate::util::clock::unix_seconds;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds (seconds) of the event delivery latency histogram.
/// Fine below 100 ms (a healthy local broker acknowledges within a few
/// milliseconds), coarse above (outages last seconds to hours).
pub(crate) const LATENCY_BUCKETS: [f64; 24] = [
    0.0005, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0, 300.0, 3600.0,
];

/// Which stream a message belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Events,
    Metrics,
}

impl Stream {
    pub const ALL: [Stream; 2] = [Stream::Events, Stream::Metrics];

    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Events => "events",
            Stream::Metrics => "metrics",
        }
    }

    fn idx(self) -> usize {
        self as usize
    }
}

/// Why records left the sink without reaching the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropCause {
    /// Spool size bound (events).
    SpoolFull,
    /// Spool age bound (events).
    SpoolExpired,
    /// Unreadable spool data (events).
    SpoolCorrupt,
    /// The spool could not be written (disk full, I/O error).
    SpoolWrite,
    /// The broker refused the message for good (too large, invalid...).
    Rejected,
    /// A newer snapshot replaced one not yet sent (metrics).
    Superseded,
    /// The producer's queue was full (metrics).
    ProducerQueueFull,
    /// Not delivered before `message_timeout` (metrics are not retried).
    Undelivered,
}

impl DropCause {
    pub const ALL: [DropCause; 8] = [
        DropCause::SpoolFull,
        DropCause::SpoolExpired,
        DropCause::SpoolCorrupt,
        DropCause::SpoolWrite,
        DropCause::Rejected,
        DropCause::Superseded,
        DropCause::ProducerQueueFull,
        DropCause::Undelivered,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropCause::SpoolFull => "spool_full",
            DropCause::SpoolExpired => "spool_expired",
            DropCause::SpoolCorrupt => "spool_corrupt",
            DropCause::SpoolWrite => "spool_write_failed",
            DropCause::Rejected => "rejected",
            DropCause::Superseded => "superseded",
            DropCause::ProducerQueueFull => "producer_queue_full",
            DropCause::Undelivered => "undelivered",
        }
    }

    pub fn stream(self) -> Stream {
        match self {
            DropCause::SpoolFull | DropCause::SpoolExpired | DropCause::SpoolCorrupt | DropCause::SpoolWrite => {
                Stream::Events
            }
            DropCause::Superseded | DropCause::ProducerQueueFull | DropCause::Undelivered => Stream::Metrics,
            DropCause::Rejected => Stream::Events,
        }
    }

    fn idx(self) -> usize {
        self as usize
    }
}

/// Why the sender replaced its producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartReason {
    /// librdkafka reported a fatal error.
    Fatal,
    /// Deliveries failed while a broker was reachable.
    DeliveryFailures,
    /// An event stayed in flight past message_timeout while a broker was
    /// reachable (a broker that forgot the producer id: no report comes).
    StuckInFlight,
    /// The broker kept answering errors while nothing was delivered.
    BrokerErrors,
}

impl RestartReason {
    pub const ALL: [RestartReason; 4] = [
        RestartReason::Fatal,
        RestartReason::DeliveryFailures,
        RestartReason::StuckInFlight,
        RestartReason::BrokerErrors,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RestartReason::Fatal => "fatal_error",
            RestartReason::DeliveryFailures => "delivery_failures",
            RestartReason::StuckInFlight => "stuck_in_flight",
            RestartReason::BrokerErrors => "broker_errors",
        }
    }
}

#[derive(Debug, Default)]
pub struct KafkaStats {
    connected: AtomicBool,
    brokers_up: AtomicUsize,
    delivered: [AtomicU64; 2],
    failures: [AtomicU64; 2],
    resent: AtomicU64,
    dropped: [AtomicU64; 8],
    spool_records: AtomicU64,
    spool_bytes: AtomicU64,
    spool_oldest_ms: AtomicU64,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    latency_sum_ns: AtomicU64,
    latency_count: AtomicU64,
    restarts: [AtomicU64; RestartReason::ALL.len()],
}

impl KafkaStats {
    pub fn producer_restarted(&self, why: RestartReason) {
        self.restarts[why as usize].fetch_add(1, Relaxed);
    }

    pub fn producer_restarts(&self, why: RestartReason) -> u64 {
        self.restarts[why as usize].load(Relaxed)
    }

    pub fn set_connected(&self, up: bool, brokers_up: usize) {
        self.connected.store(up, Relaxed);
        self.brokers_up.store(brokers_up, Relaxed);
    }

    pub fn connected(&self) -> bool {
        self.connected.load(Relaxed)
    }

    pub fn brokers_up(&self) -> usize {
        self.brokers_up.load(Relaxed)
    }

    pub fn delivered(&self, s: Stream, n: u64) {
        self.delivered[s.idx()].fetch_add(n, Relaxed);
    }

    pub fn delivered_count(&self, s: Stream) -> u64 {
        self.delivered[s.idx()].load(Relaxed)
    }

    pub fn failed(&self, s: Stream, n: u64) {
        self.failures[s.idx()].fetch_add(n, Relaxed);
    }

    pub fn failure_count(&self, s: Stream) -> u64 {
        self.failures[s.idx()].load(Relaxed)
    }

    pub fn resent(&self, n: u64) {
        self.resent.fetch_add(n, Relaxed);
    }

    pub fn resent_count(&self) -> u64 {
        self.resent.load(Relaxed)
    }

    pub fn dropped(&self, c: DropCause, n: u64) {
        self.dropped[c.idx()].fetch_add(n, Relaxed);
    }

    /// Sets a spool drop counter to the spool's own running total.
    pub fn set_dropped(&self, c: DropCause, total: u64) {
        self.dropped[c.idx()].store(total, Relaxed);
    }

    pub fn dropped_count(&self, c: DropCause) -> u64 {
        self.dropped[c.idx()].load(Relaxed)
    }

    pub fn set_spool(&self, records: u64, bytes: u64, oldest_ms: Option<u64>) {
        self.spool_records.store(records, Relaxed);
        self.spool_bytes.store(bytes, Relaxed);
        self.spool_oldest_ms.store(oldest_ms.unwrap_or(0), Relaxed);
    }

    /// Kept current on every append and acknowledgement (bytes and age
    /// follow once a second).
    pub fn set_spool_records(&self, records: u64) {
        self.spool_records.store(records, Relaxed);
    }

    /// (records, bytes, oldest record's time in Unix ms if any).
    pub fn spool(&self) -> (u64, u64, Option<u64>) {
        let oldest = self.spool_oldest_ms.load(Relaxed);
        (self.spool_records.load(Relaxed), self.spool_bytes.load(Relaxed), (oldest > 0).then_some(oldest))
    }

    /// An event reached the broker `latency` after libvirt's callback.
    pub fn observe_latency(&self, latency: Duration) {
        let secs = latency.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| secs <= *b) {
            self.latency_buckets[i].fetch_add(1, Relaxed);
        }
        self.latency_sum_ns.fetch_add(latency.as_nanos().min(u64::MAX as u128) as u64, Relaxed);
        self.latency_count.fetch_add(1, Relaxed);
    }

    /// Cumulative buckets, sum (s) and count of the latency histogram.
    pub fn latency(&self) -> (Vec<(f64, u64)>, f64, u64) {
        let mut acc = 0;
        let buckets = LATENCY_BUCKETS
            .iter()
            .zip(&self.latency_buckets)
            .map(|(b, n)| {
                acc += n.load(Relaxed);
                (*b, acc)
            })
            .collect();
        (buckets, self.latency_sum_ns.load(Relaxed) as f64 / 1e9, self.latency_count.load(Relaxed))
    }
}

/// The metrics the Kafka sink reports.
pub(crate) const METRICS: &[MetricDesc] = &[
    MetricDesc::gauge(
        "virtpulse_kafka_broker_up",
        "1 if the Kafka producer has a connection to at least one broker, else 0.",
    ),
    MetricDesc::gauge(
        "virtpulse_kafka_brokers_up",
        "Kafka brokers (cluster members) the producer is connected to.",
    ),
    MetricDesc::gauge(
        "virtpulse_kafka_spool_records",
        "Events in the Kafka spool not yet acknowledged by the broker.",
    ),
    MetricDesc::gauge(
        "virtpulse_kafka_spool_bytes",
        "Size of the Kafka spool on disk.",
    ),
    MetricDesc::gauge(
        "virtpulse_kafka_spool_oldest_age_seconds",
        "Age of the oldest unacknowledged event in the Kafka spool (0 when empty).",
    ),
    MetricDesc::counter(
        "virtpulse_kafka_messages_delivered_total",
        "Messages the broker acknowledged, by stream (events, metrics).",
    ),
    MetricDesc::counter(
        "virtpulse_kafka_delivery_failures_total",
        "Delivery reports with an error, by stream; failed events are sent again from the spool.",
    ),
    MetricDesc::counter(
        "virtpulse_kafka_events_resent_total",
        "Events handed to the producer again after a failed delivery.",
    ),
    MetricDesc::counter(
        "virtpulse_kafka_producer_restarts_total",
        "Kafka producers replaced, by reason (fatal_error, delivery_failures, stuck_in_flight: an event in flight past message_timeout with a broker reachable, broker_errors).",
    ),
    MetricDesc::counter(
        "virtpulse_kafka_records_dropped_total",
        "Records that will never reach the broker, by stream and reason (spool_full, spool_expired, spool_corrupt, spool_write_failed, rejected, superseded, producer_queue_full, undelivered).",
    ),
    MetricDesc::histogram(
        "virtpulse_kafka_event_delivery_seconds",
        "Time from libvirt's event callback to the broker's acknowledgement.",
    ),
];

fn put(w: &mut dyn MetricWriter, name: &'static str, labels: &[(&str, &str)], v: f64) {
    w.sample(&find(METRICS, name), labels, v);
}

impl Report for KafkaStats {
    fn metrics(&self, w: &mut dyn MetricWriter) {
        let k = self;
        let now = unix_seconds();
        put(w, "virtpulse_kafka_broker_up", &[], if k.connected() { 1.0 } else { 0.0 });
        put(w, "virtpulse_kafka_brokers_up", &[], k.brokers_up() as f64);
        let (records, bytes, oldest_ms) = k.spool();
        put(w, "virtpulse_kafka_spool_records", &[], records as f64);
        put(w, "virtpulse_kafka_spool_bytes", &[], bytes as f64);
        let age = oldest_ms.map(|ms| (now - ms as f64 / 1000.0).max(0.0)).unwrap_or(0.0);
        put(w, "virtpulse_kafka_spool_oldest_age_seconds", &[], age);
        for s in Stream::ALL {
            let l = [("stream", s.as_str())];
            put(w, "virtpulse_kafka_messages_delivered_total", &l, k.delivered_count(s) as f64);
            put(w, "virtpulse_kafka_delivery_failures_total", &l, k.failure_count(s) as f64);
        }
        put(w, "virtpulse_kafka_events_resent_total", &[], k.resent_count() as f64);
        for why in RestartReason::ALL {
            put(
                w,
                "virtpulse_kafka_producer_restarts_total",
                &[("reason", why.as_str())],
                k.producer_restarts(why) as f64,
            );
        }
        for c in DropCause::ALL {
            let l = [("stream", c.stream().as_str()), ("reason", c.as_str())];
            put(w, "virtpulse_kafka_records_dropped_total", &l, k.dropped_count(c) as f64);
        }
        let (buckets, sum, count) = k.latency();
        w.histogram(&find(METRICS, "virtpulse_kafka_event_delivery_seconds"), &[], &buckets, sum, count);
    }

    fn readiness(&self) -> Option<(&'static str, serde_json::Value)> {
        let (records, bytes, _) = self.spool();
        Some((
            "kafka_broker",
            serde_json::json!({ "up": self.connected(), "spool_records": records, "spool_bytes": bytes }),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_buckets_are_cumulative() {
        let s = KafkaStats::default();
        s.observe_latency(Duration::from_micros(300));
        s.observe_latency(Duration::from_millis(3));
        s.observe_latency(Duration::from_secs(7200));
        let (b, sum, count) = s.latency();
        assert_eq!(b[0], (0.0005, 1));
        assert_eq!(b[5], (0.005, 2));
        assert_eq!(b.last().unwrap().1, 2, "beyond the last bound only +Inf counts it");
        assert_eq!(count, 3);
        assert!((sum - 7200.0033).abs() < 1e-6);
    }
}
