//! The Prometheus scrape endpoint. Batches are rendered into exposition text
//! when they arrive (once per collection), so a scrape only concatenates
//! prepared text and the agent's own metrics: it never waits on libvirt.

pub mod events;
pub mod plan;
pub mod render;
pub mod selfmetrics;
pub mod text;
pub mod web;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use tower_http::compression::{CompressionLayer, CompressionLevel};

use crate::health::Health;
use crate::libvirt::ConnectionManager;
use crate::record::Batch;
use crate::router::SinkQueue;
use crate::selection::Selection;
use crate::selfmon::Registry;
use plan::SourcePlan;
use render::{Families, Family};
use selfmetrics::SinkFacts;
use text::write_header;

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Bytes of exposition text written before a chunk goes to the client.
const CHUNK_BYTES: usize = 64 * 1024;

/// Scrapes rendered at once at most; more wait for a turn (up to
/// `RENDER_WAIT`, then 503): a burst of scrapes never multiplies the work.
const RENDER_SLOTS: usize = 4;
const RENDER_WAIT: Duration = Duration::from_secs(10);

/// Snapshots of at least this many records give their memory back to the
/// kernel once replaced (see `libvirt::heap::trim`).
const TRIM_AFTER_RECORDS: usize = 50;

/// Distinct unmapped / mistyped keys remembered (each is logged once).
const MAX_LOGGED_KEYS: usize = 10_000;

struct Source {
    plan: Arc<SourcePlan>,
    expires: Option<Instant>,
}

impl Source {
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|e| e > now)
    }
}

#[derive(Default)]
struct Inner {
    sources: HashMap<&'static str, Source>,
    conflicts_total: u64,
    over_limit_total: u64,
    /// Keys already logged as unmapped or mistyped.
    logged_keys: BTreeSet<String>,
    /// The series limit is being hit (logged once per episode).
    limited: bool,
    events: events::EventCounters,
}

#[derive(Clone)]
pub struct Exporter {
    inner: Arc<RwLock<Inner>>,
    registry: Arc<Registry>,
    manager: Option<Arc<ConnectionManager>>,
    selection: Arc<Selection>,
    max_series: u64,
    render_slots: Arc<tokio::sync::Semaphore>,
}

/// The read lock, or an error for the caller to answer with (a panic while
/// the lock was held left the state unknown).
type Guard<'a> = std::sync::RwLockReadGuard<'a, Inner>;

impl Exporter {
    pub fn new(
        registry: Arc<Registry>,
        manager: Option<Arc<ConnectionManager>>,
        selection: Arc<Selection>,
        max_series: u64,
    ) -> Self {
        Self {
            inner: Arc::default(),
            registry,
            manager,
            selection,
            max_series,
            render_slots: Arc::new(tokio::sync::Semaphore::new(RENDER_SLOTS)),
        }
    }

    fn read(&self) -> Result<Guard<'_>, String> {
        self.inner.read().map_err(|_| "the exporter's state lock is poisoned (a panic while rendering)".to_string())
    }

    /// Replaces the source's snapshot with this batch, or counts its events.
    pub fn apply(&self, batch: Arc<Batch>) {
        if !batch.snapshot {
            match self.inner.write() {
                Ok(mut inner) => inner.events.count(&batch.records),
                Err(_) => tracing::error!("Prometheus sink: state lock poisoned; events not counted"),
            }
            return;
        }
        let source = batch.source;
        // Series the other sources hold: this one gets what is left.
        let others: u64 = match self.inner.read() {
            Ok(inner) => {
                let now = Instant::now();
                inner
                    .sources
                    .iter()
                    .filter(|(name, s)| **name != source && s.live(now))
                    .map(|(_, s)| s.plan.stats.series)
                    .sum()
            }
            Err(_) => 0,
        };
        let expires = batch.ttl.map(|t| Instant::now() + t);
        let present: Option<HashSet<Arc<str>>> = (source == crate::collectors::domain_stats::SOURCE)
            .then(|| batch.records.iter().filter_map(|r| r.domain.as_ref()).map(|d| d.uuid.clone()).collect());
        let plan = SourcePlan::build(batch, &self.selection, self.max_series.saturating_sub(others));
        let Ok(mut inner) = self.inner.write() else {
            tracing::error!("Prometheus sink: state lock poisoned; snapshot not applied");
            return;
        };
        let st = &plan.stats;
        for key in &st.unmapped {
            if inner.logged_keys.len() < MAX_LOGGED_KEYS && inner.logged_keys.insert(format!("u:{key}")) {
                tracing::info!(
                    key,
                    "libvirt stat key has no metric mapping; it is kept in records but not exported to Prometheus"
                );
            }
        }
        for key in &st.wrong_type {
            if inner.logged_keys.len() < MAX_LOGGED_KEYS && inner.logged_keys.insert(format!("t:{key}")) {
                tracing::warn!(key, "libvirt stat key has an unexpected value type; not exported");
            }
        }
        inner.conflicts_total += st.conflicts;
        inner.over_limit_total += st.over_limit;
        if st.over_limit > 0 && !inner.limited {
            tracing::warn!(
                limit = self.max_series,
                source,
                dropped = st.over_limit,
                "more series than sinks.prometheus.max_series; the rest are not exported (counted in virtpulse_prometheus_series_dropped_total); raise the limit or export less ([metrics] exclude / profile)"
            );
        }
        if st.over_limit == 0 && inner.limited && others + st.series < self.max_series {
            tracing::info!(source, "back under sinks.prometheus.max_series; every series is exported again");
        }
        inner.limited = st.over_limit > 0 || (inner.limited && others + st.series >= self.max_series);
        if let Some(present) = present {
            let present: HashSet<&str> = present.iter().map(|u| &**u).collect();
            inner.events.forget_absent(&present);
        }
        inner.sources.insert(source, Source { plan: Arc::new(plan), expires });
    }

    /// The agent's own metrics and the event counters, as of now.
    fn own_families(&self, inner: &Inner, plans: &[Arc<SourcePlan>]) -> Families {
        let mut unmapped = BTreeSet::new();
        for p in plans {
            unmapped.extend(p.stats.unmapped.iter());
        }
        let facts = SinkFacts {
            unmapped_keys: unmapped.len(),
            conflicts_total: inner.conflicts_total,
            series: plans.iter().map(|p| p.stats.series).sum(),
            series_limit: self.max_series,
            over_limit_total: inner.over_limit_total,
        };
        let mut own = selfmetrics::render(&self.registry, self.manager.as_deref(), facts);
        let mut counted = Families::new();
        inner.events.render(&mut counted, &*self.selection);
        // Event counters are metrics about libvirt: the selection applies.
        counted.retain(|name, _| self.selection.selects_name(name));
        own.extend(counted);
        own
    }

    /// Writes the whole exposition, handing out chunks of about `chunk`
    /// bytes; stops early when `send` returns false (client gone).
    pub fn write_to(&self, chunk: usize, send: &mut dyn FnMut(Bytes) -> bool) -> Result<(), String> {
        let (plans, own) = {
            let inner = self.read()?;
            let now = Instant::now();
            let plans: Vec<Arc<SourcePlan>> =
                inner.sources.values().filter(|s| s.live(now)).map(|s| s.plan.clone()).collect();
            let own = self.own_families(&inner, &plans);
            (plans, own)
        };
        // Every family, by name; same-named families of several sources go
        // under one header.
        enum Part<'a> {
            Plan(&'a SourcePlan, &'a plan::PlanFamily),
            Own(&'a str, &'a Family),
        }
        let mut parts: Vec<(&str, Part)> = Vec::new();
        for p in &plans {
            parts.extend(p.families().iter().map(|f| (&*f.name, Part::Plan(p, f))));
        }
        parts.extend(own.iter().map(|(n, f)| (n.as_str(), Part::Own(n, f))));
        parts.sort_by(|a, b| a.0.cmp(b.0));

        let mut out = String::with_capacity(chunk + 4096);
        let mut open = true;
        let mut flush = |out: &mut String| {
            if open && !out.is_empty() {
                open = send(Bytes::from(std::mem::take(out)));
                out.reserve(chunk + 4096);
            }
        };
        let mut i = 0;
        while i < parts.len() {
            let name = parts[i].0;
            let mtype = match &parts[i].1 {
                Part::Plan(_, f) => f.mtype,
                Part::Own(_, f) => f.mtype,
            };
            match &parts[i].1 {
                Part::Plan(_, f) => out.push_str(SourcePlan::header(f)),
                Part::Own(n, f) => write_header(&mut out, n, &f.help, f.mtype.as_str()),
            }
            while i < parts.len() && parts[i].0 == name {
                match &parts[i].1 {
                    Part::Plan(p, f) if f.mtype == mtype => p.write_family(f, &mut out, chunk, &mut flush),
                    Part::Own(_, f) if f.mtype == mtype => out.push_str(&f.body),
                    _ => {}
                }
                i += 1;
            }
            if out.len() >= chunk {
                flush(&mut out);
            }
        }
        flush(&mut out);
        Ok(())
    }

    /// The full exposition text in one string (tests, benchmarks).
    pub fn encode(&self) -> String {
        let mut text = String::new();
        let _ = self.write_to(CHUNK_BYTES, &mut |b| {
            text.push_str(&String::from_utf8_lossy(&b));
            true
        });
        text
    }
}

/// Drains the sink's queue into the exporter.
pub async fn run_sink(exporter: Exporter, mut queue: SinkQueue) {
    while let Some(batch) = queue.recv().await {
        let n = batch.records.len() as u64;
        let e = exporter.clone();
        let large = batch.records.len() >= TRIM_AFTER_RECORDS;
        // Indexing a large snapshot is CPU work; keep it off the async workers.
        match tokio::task::spawn_blocking(move || {
            e.apply(batch);
            // The previous snapshot is gone now: its pages go back too.
            if large {
                crate::libvirt::heap::trim();
            }
        })
        .await
        {
            Ok(()) => queue.stats.sent(n),
            Err(err) => {
                queue.stats.failed(n);
                tracing::error!(error = %err, "indexing a snapshot failed");
            }
        }
    }
}

/// The response body: chunks as the blocking renderer hands them over.
struct Chunks(tokio::sync::mpsc::Receiver<Bytes>);

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|c| c.map(|b| Ok(http_body::Frame::data(b))))
    }
}

async fn metrics(State(exporter): State<Exporter>) -> Response {
    let slot = match tokio::time::timeout(RENDER_WAIT, exporter.render_slots.clone().acquire_owned()).await {
        Ok(Ok(p)) => p,
        _ => return (StatusCode::SERVICE_UNAVAILABLE, "too many scrapes at once; try again\n").into_response(),
    };
    // The lock is checked first so a poisoned state answers 500, not an
    // empty 200.
    if let Err(e) = exporter.read().map(drop) {
        tracing::error!(problem = %e, "cannot serve /metrics");
        return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response();
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(2);
    tokio::task::spawn_blocking(move || {
        let _slot = slot;
        if let Err(e) = exporter.write_to(CHUNK_BYTES, &mut |b| tx.blocking_send(b).is_ok()) {
            tracing::error!(problem = %e, "cannot serve /metrics");
        }
    });
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], Body::new(Chunks(rx))).into_response()
}

/// Liveness: 200 while every loop turns (what the systemd watchdog checks).
async fn healthz(health: Arc<Health>) -> Response {
    match health.liveness() {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("unhealthy: {why}\n")).into_response(),
    }
}

/// Readiness: 200 when connected to libvirt with fresh collections; the
/// body tells the state of every part either way.
async fn readyz(health: Arc<Health>) -> Response {
    let (ready, body) = health.readiness();
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, [(header::CONTENT_TYPE, "application/json")], format!("{body}\n")).into_response()
}

pub fn router(exporter: Exporter, path: &str, health: Arc<Health>) -> axum::Router {
    let landing = format!(
        "<html><head><title>virtpulse</title></head><body><h1>virtpulse</h1><p><a href=\"{path}\">Metrics</a></p></body></html>\n"
    );
    axum::Router::new()
        .route(path, get(metrics))
        .route(
            "/healthz",
            get({
                let h = health.clone();
                move || healthz(h.clone())
            }),
        )
        .route("/readyz", get(move || readyz(health.clone())))
        .route("/", get(move || async move { ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], landing) }))
        // The fastest level: a large body compresses 3-4x faster than at the
        // default level for a body about 10% larger.
        .layer(CompressionLayer::new().gzip(true).no_br().no_deflate().no_zstd().quality(CompressionLevel::Fastest))
        .with_state(exporter)
}

/// Binds the listener; errors name the address (busy port, no permission).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::libvirt::TypedValue;
    use crate::record::{DomainInfo, DomainRef, Field, Record, RecordKind, Unit, SCHEMA};
    use crate::selection::{Profile, SelectionSpec};

    fn domain(i: usize, fields: &[(&str, TypedValue)]) -> Record {
        Record {
            schema: SCHEMA,
            kind: RecordKind::DomainStats,
            time: std::time::SystemTime::now(),
            host: "h".into(),
            libvirt_uri: "u".into(),
            pool: None,
            event: None,
            domain: Some(DomainRef {
                name: format!("we\"ird-{i}").into(),
                uuid: format!("uuid-{i}").into(),
                info: Some(Arc::new(DomainInfo { vcpus: Some(2), ..Default::default() })),
            }),
            fields: fields
                .iter()
                .map(|(k, v)| Field { key: (*k).into(), value: v.clone(), unit: Unit::Unknown })
                .collect(),
        }
    }

    fn fields() -> Vec<(&'static str, TypedValue)> {
        vec![
            ("state.state", TypedValue::Int(1)),
            ("cpu.time", TypedValue::ULLong(2_000_000_000)),
            ("cpu.haltpoll.success.time", TypedValue::ULLong(1)),
            ("vcpu.0.time", TypedValue::ULLong(1_000_000_000)),
            ("vcpu.0.exits.sum", TypedValue::ULLong(5)),
            ("block.count", TypedValue::UInt(2)),
            ("block.0.name", TypedValue::String("vda".into())),
            ("block.0.path", TypedValue::String("/img/top.qcow2".into())),
            ("block.0.backingIndex", TypedValue::UInt(1)),
            ("block.0.rd.bytes", TypedValue::ULLong(4096)),
            ("block.0.capacity", TypedValue::ULLong(1 << 26)),
            ("block.1.name", TypedValue::String("vda".into())),
            ("block.1.path", TypedValue::String("/img/base.qcow2".into())),
            ("block.1.backingIndex", TypedValue::UInt(2)),
            ("block.1.capacity", TypedValue::ULLong(1 << 26)),
        ]
    }

    fn exporter(spec: SelectionSpec, max_series: u64) -> Exporter {
        Exporter::new(Registry::new(), None, Arc::new(Selection::new(&spec).unwrap()), max_series)
    }

    fn batch(source: &'static str, records: Vec<Record>) -> Arc<Batch> {
        Arc::new(Batch { source, snapshot: true, records, ..Default::default() })
    }

    fn series(text: &str, prefix: &str) -> Vec<String> {
        text.lines().filter(|l| l.starts_with(prefix)).map(String::from).collect()
    }

    #[test]
    fn the_default_profile_leaves_deep_data_and_backing_layers_out() {
        let e = exporter(SelectionSpec::default(), u64::MAX);
        e.apply(batch("domain_stats", vec![domain(0, &fields())]));
        let text = e.encode();
        let got = series(&text, "libvirt_domain_");
        let prefix = "domain=\"we\\\"ird-0\",uuid=\"uuid-0\"";
        assert!(got.contains(&format!("libvirt_domain_cpu_time_seconds_total{{{prefix}}} 2")), "{text}");
        assert!(got.contains(&format!("libvirt_domain_vcpu_time_seconds_total{{{prefix},vcpu=\"0\"}} 1")), "{text}");
        assert!(got.contains(&format!(
            "libvirt_domain_block_capacity_bytes{{{prefix},device=\"vda\",path=\"/img/top.qcow2\",backing_index=\"1\"}} 67108864"
        )));
        assert!(!text.contains("base.qcow2"), "backing layer exported: {text}");
        assert!(!text.contains("haltpoll") && !text.contains("vcpu_kvm"), "{text}");
        assert!(got.iter().any(|l| l.starts_with("libvirt_domain_info{") && !l.contains("state=")), "{text}");
        // Families are contiguous and each has one header.
        assert_eq!(text.matches("# TYPE libvirt_domain_cpu_time_seconds_total counter\n").count(), 1);
        assert_eq!(text.lines().filter(|l| l.starts_with("virtpulse_prometheus_series ")).count(), 1);

        let all = exporter(SelectionSpec { profile: Profile::Everything, ..Default::default() }, u64::MAX);
        all.apply(batch("domain_stats", vec![domain(0, &fields())]));
        let text = all.encode();
        assert!(text.contains("base.qcow2") && text.contains("libvirt_domain_vcpu_kvm_exits_total"), "{text}");
    }

    #[test]
    fn include_exclude_and_dropped_labels() {
        let e = exporter(
            SelectionSpec {
                include: vec!["libvirt_domain_block_*".into(), "libvirt_domain_cpu_*".into()],
                exclude: vec!["*_capacity_bytes".into()],
                drop_labels: vec!["path".into(), "uuid".into()],
                ..Default::default()
            },
            u64::MAX,
        );
        e.apply(batch("domain_stats", vec![domain(0, &fields())]));
        let text = e.encode();
        assert_eq!(
            series(&text, "libvirt_"),
            vec![
                "libvirt_domain_block_read_bytes_total{domain=\"we\\\"ird-0\",device=\"vda\",backing_index=\"1\"} 4096",
                "libvirt_domain_cpu_time_seconds_total{domain=\"we\\\"ird-0\"} 2",
            ],
            "{text}"
        );
        assert!(text.contains("virtpulse_build_info"), "the agent's metrics are never filtered");
    }

    #[test]
    fn the_series_cap_holds_across_sources_and_is_counted() {
        let e = exporter(SelectionSpec::default(), 10);
        let many: Vec<Record> = (0..5).map(|i| domain(i, &fields())).collect();
        e.apply(batch("domain_stats", many));
        let text = e.encode();
        let exported = series(&text, "libvirt_domain_").len();
        assert_eq!(exported, 10, "{text}");
        assert!(text.contains("virtpulse_prometheus_series 10\n"), "{text}");
        let dropped = |t: &str| {
            t.lines()
                .find_map(|l| l.strip_prefix("virtpulse_prometheus_series_dropped_total "))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap()
        };
        let first = dropped(&text);
        assert!(first > 0.0);
        // Another source gets only what is left: nothing.
        let node = Record { kind: RecordKind::Node, domain: None, ..domain(9, &[("info.cpus", TypedValue::UInt(4))]) };
        e.apply(batch("node", vec![node]));
        let text = e.encode();
        assert_eq!(series(&text, "libvirt_").len(), 10, "{text}");
        assert!(dropped(&text) > first);
    }

    #[test]
    fn duplicate_series_are_refused_not_exported() {
        // Dropping every distinguishing label makes two disks one series.
        let e = exporter(
            SelectionSpec {
                profile: Profile::Everything,
                drop_labels: vec!["path".into(), "backing_index".into()],
                ..Default::default()
            },
            u64::MAX,
        );
        e.apply(batch("domain_stats", vec![domain(0, &fields())]));
        let text = e.encode();
        assert_eq!(series(&text, "libvirt_domain_block_capacity_bytes{").len(), 1, "{text}");
        assert!(text.contains("virtpulse_prometheus_series_conflicts_total 1\n"), "{text}");
    }

    #[test]
    fn a_poisoned_state_is_an_error_not_an_empty_page() {
        let e = exporter(SelectionSpec::default(), u64::MAX);
        let inner = e.inner.clone();
        let _ = std::thread::spawn(move || {
            let _guard = inner.write().unwrap();
            panic!("poison the lock");
        })
        .join();
        assert!(e.write_to(1024, &mut |_| true).is_err());
        assert!(e.encode().is_empty());
    }

    #[test]
    fn the_exposition_is_streamed_in_bounded_chunks() {
        let e = exporter(SelectionSpec::default(), u64::MAX);
        e.apply(batch("domain_stats", (0..200).map(|i| domain(i, &fields())).collect()));
        let mut chunks = Vec::new();
        e.write_to(4096, &mut |b| {
            chunks.push(b.len());
            true
        })
        .unwrap();
        assert!(chunks.len() > 5);
        assert!(chunks.iter().all(|n| *n < 4096 + 1024), "{chunks:?}");
        // A client gone stops the rendering.
        let mut sent = 0;
        e.write_to(4096, &mut |_| {
            sent += 1;
            false
        })
        .unwrap();
        assert_eq!(sent, 1);
    }
}
