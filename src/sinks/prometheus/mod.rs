//! The Prometheus scrape endpoint. Batches are rendered into exposition text
//! when they arrive (once per collection), so a scrape only concatenates
//! prepared text and the agent's own metrics: it never waits on libvirt.

pub(crate) mod body;
pub(crate) mod config;
pub(crate) mod events;
pub(crate) mod gzip;
pub(crate) mod plan;
pub(crate) mod selfmetrics;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use tower_http::compression::{CompressionLayer, CompressionLevel};

use crate::exposition::text::write_header;
pub use crate::exposition::CONTENT_TYPE;
use crate::exposition::{Families, Family};
use crate::record::Batch;
use crate::router::SinkQueue;
use crate::selection::Selection;
use crate::selfmon::Probe;
use crate::selfmon::Registry;
use crate::sinks::{BoxFuture, Consumes, Running, SinkContext, SinkPlugin};
use crate::util::clock::process_millis;
use crate::util::live::Live;
use body::{Chunks, Frames, Output};
pub use body::{Encoding, Written};
pub use config::PrometheusConfig;
use plan::SourcePlan;
use selfmetrics::SinkFacts;

/// Bytes of exposition text written before a chunk goes to the client.
const CHUNK_BYTES: usize = 64 * 1024;

/// Scrapes rendered at once at most; more wait for a turn (up to
/// `RENDER_WAIT`, then 503): a burst of scrapes never multiplies the work.
const RENDER_SLOTS: usize = 4;
const RENDER_WAIT: Duration = Duration::from_secs(10);

/// Snapshots of at least this many records give their memory back to the
/// kernel once replaced (see `SinkContext::release_memory`).
const TRIM_AFTER_RECORDS: usize = 50;

/// How long after a gzip scrape new snapshots are still compressed ahead:
/// longer than any sensible scrape interval, short enough that a client
/// gone for good stops costing a compression per snapshot.
const GZIP_EXPECTED_FOR: Duration = Duration::from_secs(600);

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
    /// What is exported; a reload may replace it.
    selection: Live<Selection>,
    max_series: u64,
    prerender_max: usize,
    render_slots: Arc<tokio::sync::Semaphore>,
    /// When a scrape last asked for gzip (process milliseconds + 1; 0:
    /// never): snapshots are compressed ahead only while someone does.
    gzip_asked: Arc<AtomicU64>,
    /// Gives freed heap pages back to the kernel (see `SinkContext`).
    release_memory: fn(),
}

/// The read lock, or an error for the caller to answer with (a panic while
/// the lock was held left the state unknown).
type Guard<'a> = std::sync::RwLockReadGuard<'a, Inner>;

impl Exporter {
    pub fn new(registry: Arc<Registry>, selection: impl Into<Live<Selection>>, max_series: u64) -> Self {
        Self {
            inner: Arc::default(),
            registry,
            selection: selection.into(),
            max_series,
            prerender_max: 0,
            render_slots: Arc::new(tokio::sync::Semaphore::new(RENDER_SLOTS)),
            gzip_asked: Arc::default(),
            release_memory: || {},
        }
    }

    /// Notes a scrape's encoding (gzip ones make later snapshots
    /// precompressed).
    pub fn scraped_with(&self, encoding: Encoding) {
        if encoding == Encoding::Gzip {
            self.gzip_asked.store(process_millis() + 1, Ordering::Relaxed);
        }
    }

    fn gzip_expected(&self) -> bool {
        let asked = self.gzip_asked.load(Ordering::Relaxed);
        asked != 0 && process_millis() + 1 - asked <= GZIP_EXPECTED_FOR.as_millis() as u64
    }

    /// Snapshots whose text is at most `bytes` are rendered once on arrival
    /// (see `SourcePlan::prerender`).
    pub fn prerender_up_to(mut self, bytes: usize) -> Self {
        self.prerender_max = bytes;
        self
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
        let present: Option<HashSet<Arc<str>>> = batch
            .lists_every_domain
            .then(|| batch.records.iter().filter_map(|r| r.domain.as_ref()).map(|d| d.uuid.clone()).collect());
        let mut plan = SourcePlan::build(batch, &self.selection.get(), self.max_series.saturating_sub(others));
        plan.prerender(self.prerender_max, self.gzip_expected());
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
            prerendered_bytes: plans.iter().map(|p| p.prerendered_bytes()).sum(),
            series_limit: self.max_series,
            over_limit_total: inner.over_limit_total,
        };
        let mut own = crate::selfmon::render::render(&self.registry);
        selfmetrics::add_facts(&mut own, facts);
        let mut counted = Families::new();
        let selection = self.selection.get();
        inner.events.render(&mut counted, &*selection);
        // Event counters are metrics about libvirt: the selection applies.
        counted.retain(|name, _| selection.selects_name(name));
        own.extend(counted);
        own
    }

    /// Every live snapshot is held rendered: a scrape renders nothing but
    /// the agent's own metrics.
    pub fn all_prerendered(&self) -> bool {
        let Ok(inner) = self.read() else { return false };
        let now = Instant::now();
        inner.sources.values().filter(|s| s.live(now)).all(|s| s.plan.is_prerendered())
    }

    /// Writes the whole exposition, handing out chunks of about `chunk`
    /// bytes; stops early when `send` returns false (client gone).
    pub fn write_to(
        &self,
        encoding: Encoding,
        chunk: usize,
        send: &mut dyn FnMut(Bytes) -> bool,
    ) -> Result<Written, String> {
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

        let mut body = Output::new(encoding, chunk, send);
        let mut out = String::with_capacity(chunk + 4096);
        let mut piece_compressor = None;
        let mut i = 0;
        while i < parts.len() {
            let name = parts[i].0;
            let first = i;
            let mtype = match &parts[i].1 {
                Part::Plan(_, f) => f.mtype,
                Part::Own(_, f) => f.mtype,
            };
            // A piece holds the header too: only the first part can use it.
            let piece = match &parts[i].1 {
                Part::Plan(_, f) if body.takes_pieces() => SourcePlan::gzip_piece(f, &mut piece_compressor),
                _ => None,
            };
            match &parts[i].1 {
                _ if piece.is_some() => {}
                Part::Plan(_, f) => out.push_str(SourcePlan::header(f)),
                Part::Own(n, f) => write_header(&mut out, n, &f.help, f.mtype.as_str()),
            }
            while i < parts.len() && parts[i].0 == name {
                match &parts[i].1 {
                    Part::Plan(p, f) if f.mtype == mtype => match (piece, SourcePlan::rendered(f)) {
                        (Some(piece), _) if i == first => body.piece(&mut out, piece)?,
                        (_, Some(held)) => body.held(&mut out, held),
                        _ => p.write_family(f, &mut out, chunk, &mut |o| body.text(o)),
                    },
                    Part::Own(_, f) if f.mtype == mtype => out.push_str(&f.body),
                    _ => {}
                }
                i += 1;
            }
            if out.len() >= chunk {
                body.text(&mut out);
            }
        }
        body.text(&mut out);
        body.finish()
    }

    /// The full exposition text in one string (tests, benchmarks).
    pub fn encode(&self) -> String {
        let mut text = String::new();
        let _ = self.write_to(Encoding::Identity, CHUNK_BYTES, &mut |b| {
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
                (e.release_memory)();
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

async fn metrics(State(exporter): State<Exporter>, headers: axum::http::HeaderMap) -> Response {
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
    let encoding = Encoding::from_accept(headers.get(header::ACCEPT_ENCODING).and_then(|v| v.to_str().ok()));
    exporter.scraped_with(encoding);
    let body = if exporter.all_prerendered() {
        // Nothing to render: the body is slices of held text and pieces plus
        // the agent's own metrics, laid out in one go (handing 64 KiB chunks
        // one by one to the connection cost more than laying them out).
        let laid = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            let mut frames = std::collections::VecDeque::new();
            exporter.write_to(encoding, CHUNK_BYTES, &mut |b| {
                frames.push_back(b);
                true
            })?;
            Ok::<_, String>(frames)
        })
        .await;
        match laid {
            Ok(Ok(frames)) => Body::new(Frames(frames)),
            Ok(Err(e)) => {
                tracing::error!(problem = %e, "cannot serve /metrics");
                return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response();
            }
            Err(e) => {
                tracing::error!(problem = %e, "cannot serve /metrics");
                return (StatusCode::INTERNAL_SERVER_ERROR, "rendering failed\n").into_response();
            }
        }
    } else {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(2);
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            if let Err(e) = exporter.write_to(encoding, CHUNK_BYTES, &mut |b| tx.blocking_send(b).is_ok()) {
                tracing::error!(problem = %e, "cannot serve /metrics");
            }
        });
        Body::new(Chunks(rx))
    };
    match encoding {
        // Encoded here, so the compression layer leaves it alone.
        Encoding::Gzip => (
            [
                (header::CONTENT_TYPE, CONTENT_TYPE),
                (header::CONTENT_ENCODING, "gzip"),
                (header::VARY, "accept-encoding"),
            ],
            body,
        )
            .into_response(),
        Encoding::Identity => {
            ([(header::CONTENT_TYPE, CONTENT_TYPE), (header::VARY, "accept-encoding")], body).into_response()
        }
    }
}

pub fn router(exporter: Exporter, path: &str, health: Arc<dyn Probe>) -> axum::Router {
    let landing = format!(
        "<html><head><title>virtpulse</title></head><body><h1>virtpulse</h1><p><a href=\"{path}\">Metrics</a></p></body></html>\n"
    );
    let router = axum::Router::new()
        .route(path, get(metrics))
        .route("/", get(move || async move { ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], landing) }));
    crate::web::with_health(router, health)
        // The fastest level: a large body compresses 3-4x faster than at the
        // default level for a body about 10% larger.
        .layer(CompressionLayer::new().gzip(true).no_br().no_deflate().no_zstd().quality(CompressionLevel::Fastest))
        .with_state(exporter)
}

/// The endpoint's TLS and basic auth, if configured.
fn security(cfg: &PrometheusConfig) -> Result<Option<Arc<crate::web::Security>>, String> {
    match &cfg.web_config_file {
        Some(f) => crate::web::Security::load(f, "prometheus")
            .map(Some)
            .map_err(|e| format!("sinks.prometheus.web_config_file: {e}")),
        None => Ok(None),
    }
}

/// The Prometheus sink in the registry (on by default).
pub struct PrometheusPlugin;

impl SinkPlugin for PrometheusPlugin {
    type Config = PrometheusConfig;
    const NAME: &'static str = "prometheus";
    const ENABLED: bool = true;
    const METRICS: &'static [crate::selfmon::MetricDesc] = selfmetrics::METRICS;

    fn queue_capacity(&self, cfg: &PrometheusConfig) -> usize {
        cfg.queue_capacity
    }

    fn consumes(&self, _: &PrometheusConfig) -> Consumes {
        Consumes { metrics: true, records: false, durable_events: false }
    }

    fn serves_health(&self, _: &PrometheusConfig) -> bool {
        true
    }

    fn check(&self, cfg: &PrometheusConfig, _: &crate::sinks::CheckContext) -> Result<(), String> {
        security(cfg).map(drop)
    }

    fn start(
        &self,
        cfg: PrometheusConfig,
        queue: SinkQueue,
        ctx: SinkContext,
    ) -> BoxFuture<'static, anyhow::Result<Running>> {
        Box::pin(async move {
            use anyhow::Context;
            let security = security(&cfg).map_err(|e| anyhow::anyhow!(e))?;
            let addr: SocketAddr = cfg
                .listen
                .parse()
                .with_context(|| format!("sinks.prometheus.listen {:?} is not an address", cfg.listen))?;
            let listener = bind(addr).await.with_context(|| {
                format!("cannot listen on {addr} (sinks.prometheus.listen): is another exporter using the port?")
            })?;
            let mut exporter = Exporter::new(ctx.registry.clone(), ctx.selection.clone(), cfg.max_series)
                .prerender_up_to(usize::try_from(cfg.prerender_max_bytes.0).unwrap_or(usize::MAX));
            exporter.release_memory = ctx.release_memory;
            let intake = tokio::spawn(run_sink(exporter.clone(), queue));
            let app = router(exporter, &cfg.path, ctx.probe.clone());
            let tls = security.as_ref().is_some_and(|s| s.is_tls());
            // Its reloads and certificate expiry among the agent's own metrics.
            let report = security.clone().map(|s| s as Arc<dyn crate::selfmon::Report>);
            let basic_auth = security.as_ref().is_some_and(|s| s.requires_auth());
            tracing::info!(%addr, path = %cfg.path, tls, basic_auth, "serving Prometheus metrics");
            let server = crate::web::Server::start(listener, app, security);
            Ok(Running {
                name: "prometheus",
                report,
                stop_within: Duration::from_secs(5),
                // Scrapes under way finish; the intake ends with its queue.
                stop: Box::new(move |deadline| {
                    Box::pin(async move {
                        let _ = tokio::time::timeout(deadline, async move {
                            server.stop().await;
                            let _ = intake.await;
                        })
                        .await;
                    })
                }),
            })
        })
    }
}

/// Binds the listener; errors name the address (busy port, no permission).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::domain_stats::metrics::DOMAIN_STATS;
    use crate::record::{DomainInfo, DomainRef, Field, Identity, Record, RecordKind, Unit};
    use crate::selection::{Profile, SelectionSpec};
    use crate::value::TypedValue;

    fn domain(i: usize, fields: &[(&str, TypedValue)]) -> Record {
        let identity = Identity { host: "h".into(), uri: "u".into() };
        Record {
            domain: Some(DomainRef {
                name: format!("we\"ird-{i}").into(),
                uuid: format!("uuid-{i}").into(),
                info: Some(Arc::new(DomainInfo { vcpus: Some(2), ..Default::default() })),
            }),
            fields: fields
                .iter()
                .map(|(k, v)| Field { key: (*k).into(), value: v.clone(), unit: Unit::Unknown })
                .collect(),
            ..Record::new(&identity, RecordKind::of(&DOMAIN_STATS), std::time::SystemTime::now())
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
        Exporter::new(
            Registry::new(),
            Arc::new(Selection::new(&spec, &crate::registry::catalog()).unwrap()),
            max_series,
        )
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
        let node_kind = RecordKind::of(&crate::collectors::node::metrics::NODE);
        let node = Record { kind: node_kind, domain: None, ..domain(9, &[("info.cpus", TypedValue::UInt(4))]) };
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
        assert!(e.write_to(Encoding::Identity, 1024, &mut |_| true).is_err());
        assert!(e.encode().is_empty());
    }

    #[test]
    fn a_prerendered_snapshot_reads_the_same_and_a_big_one_is_rendered_at_scrape_time() {
        let records = || (0..50).map(|i| domain(i, &fields())).collect::<Vec<_>>();
        let plain = exporter(SelectionSpec::default(), u64::MAX);
        plain.apply(batch("domain_stats", records()));
        let pre = exporter(SelectionSpec::default(), u64::MAX).prerender_up_to(8 << 20);
        pre.apply(batch("domain_stats", records()));
        let samples = |text: &str| {
            text.lines()
                .filter(|l| !l.starts_with("virtpulse_") && !l.starts_with("process_"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        let (a, b) = (plain.encode(), pre.encode());
        assert_eq!(samples(&a), samples(&b));
        let held = |text: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix("virtpulse_prometheus_prerendered_bytes "))
                .and_then(|v| v.parse::<f64>().ok())
        };
        assert_eq!(held(&a), Some(0.0));
        let bytes = held(&b).unwrap();
        assert!(bytes > 10_000.0, "{bytes}");
        // Over the budget: nothing held, the same text rendered per scrape.
        let small = exporter(SelectionSpec::default(), u64::MAX).prerender_up_to(1000);
        small.apply(batch("domain_stats", records()));
        let c = small.encode();
        assert_eq!(held(&c), Some(0.0));
        assert_eq!(samples(&a), samples(&c));
        // Streaming a held snapshot still comes in bounded chunks.
        let mut chunks = Vec::new();
        pre.write_to(Encoding::Identity, 4096, &mut |b| {
            chunks.push(b.len());
            true
        })
        .unwrap();
        assert!(chunks.len() > 5 && chunks.iter().all(|n| *n < 4096 + 1024), "{chunks:?}");
    }

    #[test]
    fn the_exposition_is_streamed_in_bounded_chunks() {
        let e = exporter(SelectionSpec::default(), u64::MAX);
        e.apply(batch("domain_stats", (0..200).map(|i| domain(i, &fields())).collect()));
        let mut chunks = Vec::new();
        e.write_to(Encoding::Identity, 4096, &mut |b| {
            chunks.push(b.len());
            true
        })
        .unwrap();
        assert!(chunks.len() > 5);
        assert!(chunks.iter().all(|n| *n < 4096 + 1024), "{chunks:?}");
        // A client gone stops the rendering.
        let mut sent = 0;
        e.write_to(Encoding::Identity, 4096, &mut |_| {
            sent += 1;
            false
        })
        .unwrap();
        assert_eq!(sent, 1);
    }

    fn gunzipped(e: &Exporter, chunk: usize) -> (String, Vec<usize>, Written) {
        let mut body = Vec::new();
        let mut chunks = Vec::new();
        let written = e
            .write_to(Encoding::Gzip, chunk, &mut |b| {
                chunks.push(b.len());
                body.extend_from_slice(&b);
                true
            })
            .unwrap();
        assert_eq!(written.bytes, body.len() as u64);
        let mut text = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&body[..]), &mut text).unwrap();
        (text, chunks, written)
    }

    fn held(text: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix("virtpulse_prometheus_prerendered_bytes "))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap()
    }

    #[test]
    fn gzip_bodies_decode_to_the_plain_text_with_or_without_precompressed_pieces() {
        let records = || (0..60).map(|i| domain(i, &fields())).collect::<Vec<_>>();
        // Own metrics change between two scrapes: compare the rest.
        let samples = |text: &str| {
            text.lines().filter(|l| !l.contains("virtpulse_") && !l.contains("process_")).collect::<Vec<_>>().join("\n")
        };
        let text_only = exporter(SelectionSpec::default(), u64::MAX).prerender_up_to(8 << 20);
        text_only.apply(batch("domain_stats", records()));
        let with_pieces = exporter(SelectionSpec::default(), u64::MAX).prerender_up_to(8 << 20);
        with_pieces.scraped_with(Encoding::Gzip);
        with_pieces.apply(batch("domain_stats", records()));
        let streamed = exporter(SelectionSpec::default(), u64::MAX);
        streamed.apply(batch("domain_stats", records()));
        let plain = text_only.encode();
        // Pieces are made when the snapshot arrives once gzip was asked for,
        // else by the first gzip scrape; they cost memory.
        let (a, b) = (held(&plain), held(&with_pieces.encode()));
        assert!(b > a * 1.05 && b < a * 1.6, "text {a} bytes, with pieces {b}");
        for (name, e, pieces) in
            [("text only", &text_only, true), ("with pieces", &with_pieces, true), ("streamed", &streamed, false)]
        {
            let (text, chunks, written) = gunzipped(e, 4096);
            assert_eq!(written.pieces > 0, pieces, "{name}: {written:?}");
            assert_eq!(samples(&text), samples(&plain), "{name}");
            assert!(text.ends_with('\n') && text.contains("# TYPE virtpulse_"), "{name}");
            assert!(chunks.iter().all(|n| *n <= 4096 + 1024), "{name}: {chunks:?}");
        }
        assert_eq!(held(&text_only.encode()), b, "the first gzip scrape made the pieces");
        // A family merged from two sources keeps one header: the second
        // source's part is written from its text, not its piece.
        with_pieces.apply(batch("other", records()));
        let (text, _, _) = gunzipped(&with_pieces, 4096);
        let plain = with_pieces.encode();
        assert_eq!(samples(&text), samples(&plain));
        let headers = text.lines().filter(|l| l.starts_with("# TYPE libvirt_domain_cpu_time_seconds_total ")).count();
        assert_eq!(headers, 1, "{text}");
    }
}
