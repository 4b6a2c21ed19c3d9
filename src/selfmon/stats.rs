//! Counters every collector and every sink queue keeps, and how they read
//! as metrics.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{find, MetricDesc, MetricWriter, Report};
use crate::util::clock::{process_millis, unix_seconds};

/// Why a chunk of domains is missing from a cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkMiss {
    /// Still running at the cycle's deadline.
    Late,
    /// The call failed.
    Failed,
}

impl ChunkMiss {
    pub const ALL: [ChunkMiss; 2] = [ChunkMiss::Late, ChunkMiss::Failed];

    pub fn as_str(self) -> &'static str {
        match self {
            ChunkMiss::Late => "late",
            ChunkMiss::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CycleOutcome {
    Ok,
    Error,
    Timeout,
    NotConnected,
}

impl CycleOutcome {
    pub const ALL: [CycleOutcome; 4] =
        [CycleOutcome::Ok, CycleOutcome::Error, CycleOutcome::Timeout, CycleOutcome::NotConnected];

    pub fn as_str(self) -> &'static str {
        match self {
            CycleOutcome::Ok => "ok",
            CycleOutcome::Error => "error",
            CycleOutcome::Timeout => "timeout",
            CycleOutcome::NotConnected => "not_connected",
        }
    }
}

/// Counters of one collector.
#[derive(Debug)]
pub struct CollectorStats {
    pub name: &'static str,
    /// Its interval in milliseconds (a reload may change it).
    interval_ms: AtomicU64,
    outcomes: [AtomicU64; 4],
    skipped: AtomicU64,
    last_duration_ns: AtomicU64,
    last_success_unix_ns: AtomicU64,
    stuck_calls: AtomicUsize,
    partial_records: AtomicU64,
    missed_chunks: [AtomicU64; 2],
    /// Collections asked for by events (wakes), and those that ran.
    wakes: AtomicU64,
    triggered: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// When the control loop last came round (ms on the process clock).
    last_beat_ms: AtomicU64,
    /// The collector splits its cycle into chunks (their misses are reported).
    chunked: AtomicBool,
}

impl CollectorStats {
    pub fn new(name: &'static str, interval: Duration) -> Arc<Self> {
        Arc::new(Self {
            name,
            interval_ms: AtomicU64::new(interval.as_millis().min(u128::from(u64::MAX)) as u64),
            outcomes: Default::default(),
            skipped: AtomicU64::new(0),
            last_duration_ns: AtomicU64::new(0),
            last_success_unix_ns: AtomicU64::new(0),
            stuck_calls: AtomicUsize::new(0),
            partial_records: AtomicU64::new(0),
            missed_chunks: Default::default(),
            wakes: AtomicU64::new(0),
            triggered: AtomicU64::new(0),
            last_error: Mutex::new(None),
            last_beat_ms: AtomicU64::new(process_millis()),
            chunked: AtomicBool::new(false),
        })
    }

    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms.load(Ordering::Relaxed))
    }

    pub fn set_interval(&self, interval: Duration) {
        self.interval_ms.store(interval.as_millis().min(u128::from(u64::MAX)) as u64, Ordering::Relaxed);
    }

    pub fn record(&self, outcome: CycleOutcome, duration: Duration, error: Option<String>) {
        let idx = CycleOutcome::ALL.iter().position(|o| *o == outcome).unwrap_or(0);
        self.outcomes[idx].fetch_add(1, Ordering::Relaxed);
        self.last_duration_ns.store(duration.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
        if outcome == CycleOutcome::Ok {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
            self.last_success_unix_ns.store(now.as_nanos() as u64, Ordering::Relaxed);
        }
        if let Ok(mut e) = self.last_error.lock() {
            *e = error;
        }
    }

    /// A record exported with fewer stats than the domain had before.
    pub fn partial_record(&self) {
        self.partial_records.fetch_add(1, Ordering::Relaxed);
    }

    pub fn partial_records(&self) -> u64 {
        self.partial_records.load(Ordering::Relaxed)
    }

    /// This collector works in chunks: its missed chunks are reported.
    pub fn set_chunked(&self) {
        self.chunked.store(true, Ordering::Relaxed);
    }

    pub fn missed_chunks(&self, why: ChunkMiss, n: u64) {
        self.missed_chunks[why as usize].fetch_add(n, Ordering::Relaxed);
    }

    pub fn chunks_missed(&self, why: ChunkMiss) -> u64 {
        self.missed_chunks[why as usize].load(Ordering::Relaxed)
    }

    /// An event asked for a collection.
    pub fn woken(&self) {
        self.wakes.fetch_add(1, Ordering::Relaxed);
    }

    pub fn wakes(&self) -> u64 {
        self.wakes.load(Ordering::Relaxed)
    }

    /// A collection ran because events asked for one (however many did).
    pub fn triggered(&self) {
        self.triggered.fetch_add(1, Ordering::Relaxed);
    }

    pub fn triggered_runs(&self) -> u64 {
        self.triggered.load(Ordering::Relaxed)
    }

    pub fn skip(&self) {
        self.skipped.fetch_add(1, Ordering::Relaxed);
    }

    pub fn set_stuck_calls(&self, n: usize) {
        self.stuck_calls.store(n, Ordering::Relaxed);
    }

    pub fn outcomes(&self, outcome: CycleOutcome) -> u64 {
        let idx = CycleOutcome::ALL.iter().position(|o| *o == outcome).unwrap_or(0);
        self.outcomes[idx].load(Ordering::Relaxed)
    }

    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }

    pub fn last_duration(&self) -> Duration {
        Duration::from_nanos(self.last_duration_ns.load(Ordering::Relaxed))
    }

    /// Seconds since the Unix epoch of the last successful cycle (0: none yet).
    pub fn last_success_unix(&self) -> f64 {
        self.last_success_unix_ns.load(Ordering::Relaxed) as f64 / 1e9
    }

    pub fn stuck_calls(&self) -> usize {
        self.stuck_calls.load(Ordering::Relaxed)
    }

    /// The control loop is alive (see `health`).
    pub fn beat(&self) {
        self.last_beat_ms.store(process_millis(), Ordering::Relaxed);
    }

    pub fn since_beat(&self) -> Duration {
        Duration::from_millis(process_millis().saturating_sub(self.last_beat_ms.load(Ordering::Relaxed)))
    }
}

/// Why the router dropped records for a sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The sink's queue was full (a slow or stuck sink).
    QueueFull,
    /// The sink had stopped (shutdown, or removed by a reload).
    Stopped,
}

impl DropReason {
    pub const ALL: [DropReason; 2] = [DropReason::QueueFull, DropReason::Stopped];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::Stopped => "stopped",
        }
    }
}

/// What a dropped batch carried. Kept apart because an event dropped is a
/// hole in `event.seq` a consumer must account for, while a dropped metric
/// snapshot is superseded by the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropStream {
    Events,
    Metrics,
}

impl DropStream {
    pub const ALL: [DropStream; 2] = [DropStream::Events, DropStream::Metrics];

    pub fn as_str(self) -> &'static str {
        match self {
            DropStream::Events => "events",
            DropStream::Metrics => "metrics",
        }
    }
}

/// Counters of one sink's queue.
#[derive(Debug)]
pub struct SinkStats {
    pub name: &'static str,
    pub capacity: usize,
    depth: AtomicUsize,
    sent_records: AtomicU64,
    /// By `DropStream`, then `DropReason`.
    dropped_records: [[AtomicU64; 2]; 2],
    failed_records: AtomicU64,
}

impl SinkStats {
    pub fn new(name: &'static str, capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            name,
            capacity,
            depth: AtomicUsize::new(0),
            sent_records: AtomicU64::new(0),
            dropped_records: Default::default(),
            failed_records: AtomicU64::new(0),
        })
    }

    pub fn enqueued(&self) {
        self.depth.fetch_add(1, Ordering::Relaxed);
    }

    pub fn dequeued(&self) {
        // Saturating: a racy read must never wrap to a huge depth.
        let _ = self.depth.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| Some(d.saturating_sub(1)));
    }

    pub fn dropped(&self, stream: DropStream, why: DropReason, records: u64) {
        self.dropped_records[stream as usize][why as usize].fetch_add(records, Ordering::Relaxed);
    }

    pub fn sent(&self, records: u64) {
        self.sent_records.fetch_add(records, Ordering::Relaxed);
    }

    pub fn failed(&self, records: u64) {
        self.failed_records.fetch_add(records, Ordering::Relaxed);
    }

    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::Relaxed)
    }

    pub fn sent_records(&self) -> u64 {
        self.sent_records.load(Ordering::Relaxed)
    }

    /// Dropped for any reason.
    pub fn dropped_records(&self) -> u64 {
        DropStream::ALL.iter().flat_map(|s| DropReason::ALL.iter().map(move |r| self.dropped_for(*s, *r))).sum()
    }

    pub fn dropped_for(&self, stream: DropStream, why: DropReason) -> u64 {
        self.dropped_records[stream as usize][why as usize].load(Ordering::Relaxed)
    }

    pub fn failed_records(&self) -> u64 {
        self.failed_records.load(Ordering::Relaxed)
    }
}

/// The metrics `CollectorStats` and `SinkStats` report.
pub const METRICS: &[MetricDesc] = &[
    MetricDesc::counter(
        "virtpulse_collections_total",
        "Collection cycles by collector and result (ok, error, timeout, not_connected).",
    ),
    MetricDesc::counter(
        "virtpulse_collection_skipped_total",
        "Collection cycles skipped because earlier libvirt calls were still stuck or a cycle overran its interval.",
    ),
    MetricDesc::gauge("virtpulse_collection_duration_seconds", "Duration of the last collection cycle."),
    MetricDesc::gauge(
        "virtpulse_collection_last_success_timestamp_seconds",
        "When the collector last succeeded (Unix time).",
    ),
    MetricDesc::gauge("virtpulse_collection_age_seconds", "Seconds since the collector last succeeded."),
    MetricDesc::counter(
        "virtpulse_collection_partial_records_total",
        "Domain records exported with fewer stats than before because the domain's job was held (busy or hung QEMU).",
    ),
    MetricDesc::counter(
        "virtpulse_collection_chunks_missed_total",
        "Chunks of domains left out of a domain stats cycle, by reason (late: still running at the deadline, a hung QEMU; failed: the call failed).",
    ),
    MetricDesc::counter(
        "virtpulse_collection_wakes_total",
        "Events that asked the collector for a collection before its next tick.",
    ),
    MetricDesc::counter(
        "virtpulse_collection_triggered_total",
        "Collections run early because events asked (wakes close together share one).",
    ),
    MetricDesc::gauge(
        "virtpulse_libvirt_stuck_calls",
        "libvirt calls still running past their collection's deadline (hung QEMU).",
    ),
    MetricDesc::gauge("virtpulse_sink_queue_depth", "Batches waiting in the sink's queue."),
    MetricDesc::gauge("virtpulse_sink_queue_capacity", "Capacity of the sink's queue in batches."),
    MetricDesc::counter("virtpulse_sink_records_sent_total", "Records delivered by the sink."),
    MetricDesc::counter(
        "virtpulse_sink_records_dropped_total",
        "Records the router dropped for the sink, by stream (events, metrics) and reason (queue_full: the sink's queue was full; stopped: the sink had stopped). Events of sinks that block when full are never dropped here.",
    ),
    MetricDesc::counter("virtpulse_sink_records_failed_total", "Records the sink could not deliver."),
];

impl Report for CollectorStats {
    fn metrics(&self, out: &mut dyn MetricWriter) {
        let mut put = |name: &'static str, labels: &[(&str, &str)], v: f64| out.sample(&find(METRICS, name), labels, v);
        for o in CycleOutcome::ALL {
            put(
                "virtpulse_collections_total",
                &[("collector", self.name), ("result", o.as_str())],
                self.outcomes(o) as f64,
            );
        }
        if self.chunked.load(Ordering::Relaxed) {
            for why in ChunkMiss::ALL {
                let labels = [("collector", self.name), ("reason", why.as_str())];
                put("virtpulse_collection_chunks_missed_total", &labels, self.chunks_missed(why) as f64);
            }
        }
        let l = [("collector", self.name)];
        put("virtpulse_collection_skipped_total", &l, self.skipped() as f64);
        put("virtpulse_collection_duration_seconds", &l, self.last_duration().as_secs_f64());
        put("virtpulse_libvirt_stuck_calls", &l, self.stuck_calls() as f64);
        put("virtpulse_collection_partial_records_total", &l, self.partial_records() as f64);
        put("virtpulse_collection_wakes_total", &l, self.wakes() as f64);
        put("virtpulse_collection_triggered_total", &l, self.triggered_runs() as f64);
        let last = self.last_success_unix();
        if last > 0.0 {
            put("virtpulse_collection_last_success_timestamp_seconds", &l, last);
            put("virtpulse_collection_age_seconds", &l, (unix_seconds() - last).max(0.0));
        }
    }
}

impl Report for SinkStats {
    fn metrics(&self, out: &mut dyn MetricWriter) {
        let l = [("sink", self.name)];
        for (name, v) in [
            ("virtpulse_sink_queue_depth", self.depth() as f64),
            ("virtpulse_sink_queue_capacity", self.capacity as f64),
            ("virtpulse_sink_records_sent_total", self.sent_records() as f64),
            ("virtpulse_sink_records_failed_total", self.failed_records() as f64),
        ] {
            out.sample(&find(METRICS, name), &l, v);
        }
        for stream in DropStream::ALL {
            for why in DropReason::ALL {
                let labels = [("sink", self.name), ("stream", stream.as_str()), ("reason", why.as_str())];
                let v = self.dropped_for(stream, why) as f64;
                out.sample(&find(METRICS, "virtpulse_sink_records_dropped_total"), &labels, v);
            }
        }
    }
}
