//! The agent's own health: per-collector and per-sink counters, read by the
//! Prometheus sink at scrape time.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
    pub interval: Duration,
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
}

/// Milliseconds since the process started, on a monotonic clock.
pub fn process_millis() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed().as_millis() as u64
}

impl CollectorStats {
    pub fn new(name: &'static str, interval: Duration) -> Arc<Self> {
        Arc::new(Self {
            name,
            interval,
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
        })
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

/// Counters of one sink's queue.
#[derive(Debug)]
pub struct SinkStats {
    pub name: &'static str,
    pub capacity: usize,
    depth: AtomicUsize,
    sent_records: AtomicU64,
    dropped_records: AtomicU64,
    failed_records: AtomicU64,
}

impl SinkStats {
    pub fn new(name: &'static str, capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            name,
            capacity,
            depth: AtomicUsize::new(0),
            sent_records: AtomicU64::new(0),
            dropped_records: AtomicU64::new(0),
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

    pub fn dropped(&self, records: u64) {
        self.dropped_records.fetch_add(records, Ordering::Relaxed);
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

    pub fn dropped_records(&self) -> u64 {
        self.dropped_records.load(Ordering::Relaxed)
    }

    pub fn failed_records(&self) -> u64 {
        self.failed_records.load(Ordering::Relaxed)
    }
}

/// Everything the agent knows about itself.
#[derive(Debug, Default)]
pub struct Registry {
    collectors: Mutex<Vec<Arc<CollectorStats>>>,
    sinks: Mutex<Vec<Arc<SinkStats>>>,
    /// Stats groups the daemon supports (bit mask), from the last probe.
    pub supported_groups: AtomicU64,
    /// Groups requested by the configuration.
    pub wanted_groups: AtomicU64,
    pub started_unix: f64,
    events: Mutex<Option<Arc<crate::events::EventStats>>>,
    kafka: Mutex<Option<Arc<crate::sinks::kafka::stats::KafkaStats>>>,
    otlp: Mutex<Option<Arc<crate::sinks::otlp::stats::OtlpStats>>>,
}

impl Registry {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            started_unix: SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64(),
            ..Default::default()
        })
    }

    pub fn add_collector(&self, c: Arc<CollectorStats>) {
        if let Ok(mut v) = self.collectors.lock() {
            v.push(c);
        }
    }

    pub fn add_sink(&self, s: Arc<SinkStats>) {
        if let Ok(mut v) = self.sinks.lock() {
            v.push(s);
        }
    }

    pub fn set_events(&self, stats: Arc<crate::events::EventStats>) {
        if let Ok(mut e) = self.events.lock() {
            *e = Some(stats);
        }
    }

    pub fn set_kafka(&self, stats: Arc<crate::sinks::kafka::stats::KafkaStats>) {
        if let Ok(mut k) = self.kafka.lock() {
            *k = Some(stats);
        }
    }

    pub fn kafka(&self) -> Option<Arc<crate::sinks::kafka::stats::KafkaStats>> {
        self.kafka.lock().ok().and_then(|k| k.clone())
    }

    pub fn set_otlp(&self, stats: Arc<crate::sinks::otlp::stats::OtlpStats>) {
        if let Ok(mut o) = self.otlp.lock() {
            *o = Some(stats);
        }
    }

    pub fn otlp(&self) -> Option<Arc<crate::sinks::otlp::stats::OtlpStats>> {
        self.otlp.lock().ok().and_then(|o| o.clone())
    }

    pub fn events(&self) -> Option<Arc<crate::events::EventStats>> {
        self.events.lock().ok().and_then(|e| e.clone())
    }

    pub fn collectors(&self) -> Vec<Arc<CollectorStats>> {
        self.collectors.lock().map(|v| v.clone()).unwrap_or_default()
    }

    pub fn sinks(&self) -> Vec<Arc<SinkStats>> {
        self.sinks.lock().map(|v| v.clone()).unwrap_or_default()
    }
}
