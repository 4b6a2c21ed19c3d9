//! The OTLP sink: metric snapshots exported on a fixed interval, events as
//! log records through a bounded queue, over gRPC or HTTP.
//!
//! Three tasks, so that a slow or absent receiver only delays its own
//! signal: the intake keeps the latest snapshot per source and queues log
//! records (never waits on the network); the metrics exporter sends what
//! is current each interval and gives up on a cycle once the next one is
//! due (newer data supersedes it); the logs exporter retries with
//! exponential backoff while the queue, bounded, drops its oldest records.

pub(crate) mod config;
pub(crate) mod logs;
pub mod metrics;
pub mod naming;
pub(crate) mod resource;
pub(crate) mod stats;
pub(crate) mod transport;
pub(crate) mod wire;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use prost::Message;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::record::Batch;
use crate::router::SinkQueue;
use crate::sinks::{BoxFuture, Consumes, Running, SinkContext, SinkPlugin};
pub use config::{OtlpConfig, OtlpSettings};
use metrics::MetricBuilder;
use resource::ResourceBuilder;
use stats::{DropReason, ExportResult, OtlpStats, Signal};
use transport::{Accepted, ExportError, Transport};

/// Warns about the first failure of an outage, then at most once a minute;
/// says when exports work again. An hour-long outage is a few lines.
#[derive(Default)]
struct Complaints {
    last_warning: Mutex<[Option<Instant>; 2]>,
}

impl Complaints {
    const EVERY: Duration = Duration::from_secs(60);

    fn should_warn(&self, signal: Signal) -> bool {
        let Ok(mut last) = self.last_warning.lock() else { return true };
        let slot = &mut last[signal as usize];
        if slot.is_some_and(|t| t.elapsed() < Self::EVERY) {
            return false;
        }
        *slot = Some(Instant::now());
        true
    }

    fn recovered(&self, signal: Signal) {
        if let Ok(mut last) = self.last_warning.lock() {
            if last[signal as usize].take().is_some() {
                tracing::info!(signal = signal.as_str(), "OTLP exports work again");
            }
        }
    }
}

/// Warnings that would repeat per batch, once a minute each.
static WARNINGS: crate::util::throttle::Throttle = crate::util::throttle::Throttle::new(Duration::from_secs(60));

/// Snapshots by source, each with its expiry.
type Snapshots = HashMap<&'static str, (Arc<Batch>, Option<Instant>)>;

struct Shared {
    snapshots: Mutex<Snapshots>,
    logs: Mutex<VecDeque<LogRecord>>,
    logs_ready: Notify,
    resource: Mutex<ResourceBuilder>,
    builder: Mutex<MetricBuilder>,
    stats: Arc<OtlpStats>,
    complaints: Complaints,
    transport: Transport,
    settings: OtlpSettings,
    log_capacity: usize,
    log_batch: usize,
    max_backoff: Duration,
    /// Set when the router closed the queue: flush and stop.
    closing: watch::Sender<bool>,
    /// Gives freed heap pages back to the kernel (see `SinkContext`).
    release_memory: fn(),
}

pub struct OtlpSink {
    pub stats: Arc<OtlpStats>,
    tasks: Vec<JoinHandle<()>>,
}

impl OtlpSink {
    /// Waits for the exporters' last flush (bounded by `shutdown_timeout`).
    pub async fn join(self) {
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: "virtpulse".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        attributes: Vec::new(),
        dropped_attributes_count: 0,
    }
}

/// Every check a start makes short of connecting (settings from the
/// environment, TLS material, headers, resource attributes); errors name
/// the setting or variable. `--check-config` runs it.
pub fn check(cfg: &OtlpConfig, host: &str, uri: &str) -> Result<(), String> {
    if let Some(ca) = &cfg.ca_file {
        std::fs::metadata(ca).map_err(|e| format!("sinks.otlp.ca_file: cannot read {}: {e}", ca.display()))?;
    }
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let settings = cfg.settings(&env).map_err(|e| format!("sinks.otlp: {e}"))?;
    Transport::new(&settings).map_err(|e| format!("sinks.otlp: {e}"))?;
    ResourceBuilder::new(host, uri, &env, &cfg.resource_attributes).map_err(|e| format!("sinks.otlp: {e}"))?;
    Ok(())
}

/// The OTLP sink in the registry.
pub struct OtlpPlugin;

impl SinkPlugin for OtlpPlugin {
    type Config = OtlpConfig;
    const NAME: &'static str = "otlp";
    const METRICS: &'static [crate::selfmon::MetricDesc] = stats::METRICS;

    fn queue_capacity(&self, cfg: &OtlpConfig) -> usize {
        cfg.queue_capacity
    }

    fn consumes(&self, cfg: &OtlpConfig) -> Consumes {
        Consumes { metrics: cfg.metrics, records: false, durable_events: false }
    }

    fn check(&self, cfg: &OtlpConfig, ctx: &crate::sinks::CheckContext) -> Result<(), String> {
        // The transport needs a runtime to exist (it connects lazily).
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start a runtime for the checks: {e}"))?;
        rt.block_on(async { check(cfg, &ctx.hostname, &ctx.libvirt_uri) })
    }

    fn start(
        &self,
        cfg: OtlpConfig,
        queue: SinkQueue,
        ctx: SinkContext,
    ) -> BoxFuture<'static, anyhow::Result<Running>> {
        Box::pin(async move {
            let sink = start(&cfg, &ctx.hostname, &ctx.libvirt_uri, ctx.selection.clone(), queue, ctx.release_memory)?;
            let report: Arc<dyn crate::selfmon::Report> = sink.stats.clone();
            Ok(Running {
                name: "otlp",
                report: Some(report),
                stop_within: cfg.shutdown_timeout + Duration::from_secs(2),
                // The exporters bound their own last flush by shutdown_timeout.
                stop: Box::new(move |deadline| {
                    Box::pin(async move {
                        if tokio::time::timeout(deadline, sink.join()).await.is_err() {
                            tracing::warn!("the OTLP sink did not stop in time");
                        }
                    })
                }),
            })
        })
    }
}

/// Checks the settings and starts the sink's tasks. Errors name the setting.
pub fn start(
    cfg: &OtlpConfig,
    host: &str,
    uri: &str,
    selection: crate::util::live::Live<crate::selection::Selection>,
    queue: SinkQueue,
    release_memory: fn(),
) -> anyhow::Result<OtlpSink> {
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let settings = cfg.settings(&env).map_err(|e| anyhow::anyhow!("sinks.otlp: {e}"))?;
    let transport = Transport::new(&settings).map_err(|e| anyhow::anyhow!("sinks.otlp: {e}"))?;
    let resource = ResourceBuilder::new(host, uri, &env, &cfg.resource_attributes)
        .map_err(|e| anyhow::anyhow!("sinks.otlp: {e}"))?;
    let stats = Arc::new(OtlpStats::default());
    stats.log_queue_capacity.store(cfg.log_queue_capacity, std::sync::atomic::Ordering::Relaxed);
    let (closing, _) = watch::channel(false);
    let shared = Arc::new(Shared {
        snapshots: Mutex::default(),
        logs: Mutex::new(VecDeque::new()),
        logs_ready: Notify::new(),
        resource: Mutex::new(resource),
        builder: Mutex::new(MetricBuilder::new(cfg.cardinality_limit, selection)),
        stats: stats.clone(),
        complaints: Complaints::default(),
        transport,
        settings,
        log_capacity: cfg.log_queue_capacity,
        log_batch: cfg.log_batch_size,
        max_backoff: cfg.max_retry_backoff,
        closing,
        release_memory,
    });
    tracing::info!(
        protocol = ?shared.settings.protocol,
        metrics_endpoint = %shared.settings.metrics_endpoint,
        logs_endpoint = %shared.settings.logs_endpoint,
        interval = ?shared.settings.export_interval,
        "OTLP sink started"
    );
    let mut tasks = vec![tokio::spawn(intake(shared.clone(), queue, cfg.metrics, cfg.logs))];
    let deadline = cfg.shutdown_timeout;
    if cfg.metrics {
        tasks.push(tokio::spawn(export_metrics_loop(shared.clone(), deadline)));
    }
    if cfg.logs {
        tasks.push(tokio::spawn(export_logs_loop(shared, deadline)));
    }
    Ok(OtlpSink { stats, tasks })
}

/// Takes batches from the router: snapshots replace their source's, events
/// join the log queue (a snapshot may carry event-like records too: the
/// snapshots collector's change records). Never waits on the receiver.
async fn intake(shared: Arc<Shared>, mut queue: SinkQueue, metrics: bool, logs: bool) {
    while let Some(batch) = queue.recv().await {
        let n = batch.records.len() as u64;
        let now = SystemTime::now();
        let records: Vec<LogRecord> = match (logs, batch.snapshot) {
            (false, _) => Vec::new(),
            (true, false) => batch.records.iter().filter_map(|r| logs::log_record(r, now)).collect(),
            (true, true) => {
                batch.records.iter().filter(|r| r.kind.is_event).filter_map(|r| logs::log_record(r, now)).collect()
            }
        };
        if batch.snapshot && metrics {
            if let Ok(mut r) = shared.resource.lock() {
                for rec in &batch.records {
                    r.observe(rec);
                }
            }
            let expires = batch.ttl.map(|t| Instant::now() + t);
            if let Ok(mut s) = shared.snapshots.lock() {
                s.insert(batch.source, (batch, expires));
            }
        }
        if records.is_empty() {
            queue.stats.sent(n);
            continue;
        }
        let mut dropped = 0;
        if let Ok(mut q) = shared.logs.lock() {
            for rec in records {
                if q.len() >= shared.log_capacity {
                    q.pop_front();
                    dropped += 1;
                }
                q.push_back(rec);
            }
            shared.stats.log_queue.store(q.len(), std::sync::atomic::Ordering::Relaxed);
        }
        queue.stats.sent(n);
        if dropped > 0 {
            shared.stats.dropped(Signal::Logs, DropReason::QueueFull, dropped);
            if let Some(held_back) = WARNINGS.allow("log_queue_full") {
                tracing::warn!(dropped, earlier_not_logged = held_back, "OTLP log queue full (receiver slow or down); oldest event records dropped (counted in virtpulse_otlp_items_dropped_total; this warning shows once a minute)");
            }
        }
        shared.logs_ready.notify_one();
    }
    let _ = shared.closing.send(true);
    shared.logs_ready.notify_one();
}

/// Waits `d`, or less if the sink starts closing. True if closing.
async fn pause(closing: &mut watch::Receiver<bool>, d: Duration) -> bool {
    if *closing.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => *closing.borrow(),
        _ = closing.changed() => true,
    }
}

fn backoff(attempt: u32, max: Duration) -> Duration {
    let base = Duration::from_millis(500).saturating_mul(1 << attempt.min(16));
    // Up to 20% jitter, so that a fleet does not retry in lockstep.
    let jitter = (SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().subsec_nanos() % 200)
        as f64
        / 1000.0;
    base.min(max).mul_f64(1.0 - jitter)
}

/// Data points per metrics export request at most (whole records each; a
/// record with more points goes alone). Receivers bound a request's size
/// (the Collector's gRPC default: 4 MiB, about 30,000 points here).
pub const MAX_POINTS_PER_REQUEST: u64 = 20_000;

fn metrics_requests(shared: &Shared) -> Option<Vec<(Bytes, u64)>> {
    let now = Instant::now();
    let batches: Vec<Arc<Batch>> = {
        let mut snaps = shared.snapshots.lock().ok()?;
        snaps.retain(|_, (_, expires)| expires.is_none_or(|e| e > now));
        snaps.values().map(|(b, _)| b.clone()).collect()
    };
    if batches.is_empty() {
        return None;
    }
    let resource = shared.resource.lock().ok()?.build();
    let built = {
        let mut builder = shared.builder.lock().ok()?;
        builder.build_requests(
            batches.iter().flat_map(|b| b.records.iter().chain(&b.retained)),
            MAX_POINTS_PER_REQUEST,
            &resource,
        )
    };
    let mut out = Vec::with_capacity(built.len());
    for b in built {
        shared.stats.dropped(Signal::Metrics, DropReason::CardinalityLimit, b.over_limit);
        shared.stats.dropped(Signal::Metrics, DropReason::Rejected, b.duplicates);
        if b.metrics > 0 {
            out.push((Bytes::from(b.body), b.points));
        }
    }
    Some(out)
}

fn record_result(
    shared: &Shared,
    signal: Signal,
    result: &Result<Accepted, ExportError>,
    items: u64,
    bytes: u64,
    took: Duration,
) {
    match result {
        Ok(a) if a.rejected > 0 || !a.message.is_empty() => {
            shared.stats.export(signal, ExportResult::Partial, items.saturating_sub(a.rejected as u64), bytes, took);
            shared.stats.dropped(signal, DropReason::Rejected, a.rejected.max(0) as u64);
            if let Some(held_back) = WARNINGS.allow(&format!("partial/{}", signal.as_str())) {
                tracing::warn!(signal = signal.as_str(), rejected = a.rejected, message = %a.message, earlier_not_logged = held_back, "OTLP receiver refused part of an export");
            }
        }
        Ok(_) => {
            shared.stats.export(signal, ExportResult::Ok, items, bytes, took);
            shared.complaints.recovered(signal);
        }
        Err(e) if e.retryable => shared.stats.export(signal, ExportResult::Failed, 0, 0, took),
        Err(_) => shared.stats.export(signal, ExportResult::Rejected, 0, 0, took),
    }
}

/// One export cycle: build, send each request, retry while the next cycle
/// is not due.
async fn metrics_cycle(shared: &Arc<Shared>, due: Instant, closing: &mut watch::Receiver<bool>) {
    let s = shared.clone();
    // Building a large snapshot is CPU work; keep it off the async workers.
    let Ok(Some(requests)) = tokio::task::spawn_blocking(move || metrics_requests(&s)).await else { return };
    let large = requests.len() > 1 || requests.iter().any(|(b, _)| b.len() > 1 << 20);
    let mut requests = requests.into_iter();
    for (req, points) in requests.by_ref() {
        if !send_metrics(shared, req, points, due, closing).await {
            break;
        }
    }
    // The receiver is away: what was not sent is superseded by the next cycle.
    let rest: u64 = requests.map(|(_, p)| p).sum();
    shared.stats.dropped(Signal::Metrics, DropReason::Superseded, rest);
    if large {
        // The requests are gone: their pages go back.
        let _ = tokio::task::spawn_blocking(shared.release_memory).await;
    }
}

/// Sends one request, retrying while the next cycle is not due; false when
/// the cycle should give up (the rest of it is superseded too).
async fn send_metrics(
    shared: &Arc<Shared>,
    req: Bytes,
    points: u64,
    due: Instant,
    closing: &mut watch::Receiver<bool>,
) -> bool {
    let bytes = req.len() as u64;
    let mut attempt = 0;
    loop {
        let t0 = Instant::now();
        let result = shared.transport.export_metrics(req.clone()).await;
        record_result(shared, Signal::Metrics, &result, points, bytes, t0.elapsed());
        match result {
            Ok(_) => return true,
            Err(e) => {
                let wait = backoff(attempt, shared.max_backoff);
                attempt += 1;
                if !e.retryable || Instant::now() + wait >= due || *closing.borrow() {
                    let reason = if e.retryable { DropReason::Superseded } else { DropReason::Rejected };
                    shared.stats.dropped(Signal::Metrics, reason, points);
                    if shared.complaints.should_warn(Signal::Metrics) {
                        tracing::warn!(error = %e, points, "OTLP metrics export failed; this cycle's data points are dropped (the next cycle sends newer ones; see virtpulse_otlp_* for the count)");
                    }
                    // A refused request does not make the next one fail.
                    return !e.retryable;
                }
                tracing::debug!(error = %e, ?wait, "OTLP metrics export failed; retrying");
                if pause(closing, wait).await {
                    // Shutting down: one last try happens in the final flush.
                    shared.stats.dropped(Signal::Metrics, DropReason::Superseded, points);
                    return false;
                }
            }
        }
    }
}

async fn export_metrics_loop(shared: Arc<Shared>, shutdown_timeout: Duration) {
    let interval = shared.settings.export_interval;
    let mut closing = shared.closing.subscribe();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // The first tick fires at once: wait one interval for data first.
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = closing.changed() => {}
        }
        if *closing.borrow() {
            break;
        }
        metrics_cycle(&shared, Instant::now() + interval, &mut closing).await;
    }
    // Final flush: the latest snapshot, once, within the shutdown deadline.
    let (_, mut never) = watch::channel(false);
    let due = Instant::now() + shutdown_timeout;
    if tokio::time::timeout(shutdown_timeout, metrics_cycle(&shared, due, &mut never)).await.is_err() {
        tracing::warn!("OTLP: the final metrics export did not finish within shutdown_timeout");
    }
}

/// Takes up to a batch of log records off the queue's front.
fn take_logs(shared: &Shared) -> Vec<LogRecord> {
    let Ok(mut q) = shared.logs.lock() else { return Vec::new() };
    let n = q.len().min(shared.log_batch);
    let out: Vec<LogRecord> = q.drain(..n).collect();
    shared.stats.log_queue.store(q.len(), std::sync::atomic::Ordering::Relaxed);
    out
}

/// Puts a failed batch back at the front, within the queue's bound (the
/// oldest records are the ones that no longer fit).
fn requeue_logs(shared: &Shared, batch: Vec<LogRecord>) -> u64 {
    let Ok(mut q) = shared.logs.lock() else { return batch.len() as u64 };
    let room = shared.log_capacity.saturating_sub(q.len());
    let skip = batch.len().saturating_sub(room);
    for rec in batch.into_iter().skip(skip).rev() {
        q.push_front(rec);
    }
    shared.stats.log_queue.store(q.len(), std::sync::atomic::Ordering::Relaxed);
    skip as u64
}

fn logs_request(shared: &Shared, records: Vec<LogRecord>) -> ExportLogsServiceRequest {
    let resource = shared.resource.lock().map(|r| r.build()).unwrap_or_default();
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(resource),
            scope_logs: vec![ScopeLogs { scope: Some(scope()), log_records: records, schema_url: String::new() }],
            schema_url: String::new(),
        }],
    }
}

/// Sends one batch. A retryable failure puts it back at the queue's front
/// and returns the error; anything else is settled (sent or dropped).
async fn send_logs(shared: &Shared, batch: Vec<LogRecord>) -> Result<(), ExportError> {
    let n = batch.len() as u64;
    let req = logs_request(shared, batch);
    let bytes = req.encoded_len() as u64;
    let t0 = Instant::now();
    let result = shared.transport.export_logs(req.clone()).await;
    record_result(shared, Signal::Logs, &result, n, bytes, t0.elapsed());
    match result {
        Ok(_) => Ok(()),
        Err(e) if !e.retryable => {
            shared.stats.dropped(Signal::Logs, DropReason::Rejected, n);
            if let Some(held_back) = WARNINGS.allow("logs_rejected") {
                tracing::error!(error = %e, records = n, earlier_not_logged = held_back, "OTLP receiver refused event log records for good; dropped (check the endpoint, headers and credentials)");
            }
            Ok(())
        }
        Err(e) => {
            let lost = requeue_logs(
                shared,
                req.resource_logs.into_iter().flat_map(|r| r.scope_logs).flat_map(|s| s.log_records).collect(),
            );
            shared.stats.dropped(Signal::Logs, DropReason::QueueFull, lost);
            Err(e)
        }
    }
}

async fn export_logs_loop(shared: Arc<Shared>, shutdown_timeout: Duration) {
    let mut closing = shared.closing.subscribe();
    let mut attempt = 0u32;
    loop {
        let batch = take_logs(&shared);
        if batch.is_empty() {
            if *closing.borrow() {
                break;
            }
            tokio::select! {
                _ = shared.logs_ready.notified() => {}
                _ = closing.changed() => {}
            }
            // Let a burst gather into one request.
            if !*closing.borrow() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            continue;
        }
        match send_logs(&shared, batch).await {
            Ok(()) => attempt = 0,
            Err(e) => {
                let wait = backoff(attempt, shared.max_backoff);
                attempt = attempt.saturating_add(1);
                if shared.complaints.should_warn(Signal::Logs) {
                    tracing::warn!(error = %e, retry_in = ?wait, "OTLP log export failed; event records stay queued and are retried (see virtpulse_otlp_log_queue_records)");
                }
                if pause(&mut closing, wait).await {
                    break;
                }
            }
        }
    }
    // Final flush: what is queued, until the deadline.
    let deadline = Instant::now() + shutdown_timeout;
    while Instant::now() < deadline {
        let batch = take_logs(&shared);
        if batch.is_empty() {
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, send_logs(&shared, batch)).await {
            Ok(Ok(())) => {}
            _ => break,
        }
    }
    let left = shared.logs.lock().map(|q| q.len() as u64).unwrap_or(0);
    if left > 0 {
        shared.stats.dropped(Signal::Logs, DropReason::Shutdown, left);
        tracing::warn!(records = left, "OTLP: event log records not exported before shutdown");
    }
}
