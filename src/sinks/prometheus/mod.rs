//! The Prometheus scrape endpoint. Batches are rendered into exposition text
//! when they arrive (once per collection), so a scrape only concatenates
//! prepared text and the agent's own metrics: it never waits on libvirt.

pub mod events;
pub mod render;
pub mod selfmetrics;
pub mod text;
pub mod web;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tower_http::compression::CompressionLayer;

use crate::health::Health;
use crate::libvirt::ConnectionManager;
use crate::record::Batch;
use crate::router::SinkQueue;
use crate::selfmon::Registry;
use render::{render_records, write_families, Families, RenderStats};
use selfmetrics::SinkFacts;

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

struct Snapshot {
    families: Families,
    expires: Option<Instant>,
}

#[derive(Default)]
struct Inner {
    sources: HashMap<&'static str, Snapshot>,
    unmapped: BTreeSet<String>,
    conflicts_total: u64,
    series: u64,
    events: events::EventCounters,
}

#[derive(Clone)]
pub struct Exporter {
    inner: Arc<RwLock<Inner>>,
    registry: Arc<Registry>,
    manager: Option<Arc<ConnectionManager>>,
}

impl Exporter {
    pub fn new(registry: Arc<Registry>, manager: Option<Arc<ConnectionManager>>) -> Self {
        Self { inner: Arc::default(), registry, manager }
    }

    /// Replaces the source's snapshot with this batch, or counts its events.
    pub fn apply(&self, batch: &Batch) {
        if !batch.snapshot {
            if let Ok(mut inner) = self.inner.write() {
                inner.events.count(&batch.records);
            }
            return;
        }
        let mut families = Families::new();
        let mut stats = RenderStats::default();
        render_records(batch.records.iter().chain(&batch.retained), &mut families, &mut stats);
        let expires = batch.ttl.map(|t| Instant::now() + t);
        let Ok(mut inner) = self.inner.write() else { return };
        for key in stats.unmapped.difference(&inner.unmapped) {
            tracing::info!(
                key,
                "libvirt stat key has no metric mapping; it is kept in records but not exported to Prometheus"
            );
        }
        for key in &stats.wrong_type {
            tracing::warn!(key, "libvirt stat key has an unexpected value type; not exported");
        }
        inner.unmapped = stats.unmapped;
        inner.conflicts_total += stats.conflicts;
        inner.series = stats.series;
        inner.sources.insert(batch.source, Snapshot { families, expires });
        if batch.source == crate::collectors::domain_stats::SOURCE {
            let present: HashSet<&str> =
                batch.records.iter().filter_map(|r| r.domain.as_ref()).map(|d| &*d.uuid).collect();
            inner.events.forget_absent(&present);
        }
    }

    /// The full exposition text.
    pub fn encode(&self) -> String {
        let Ok(inner) = self.inner.read() else {
            return String::new();
        };
        let facts = SinkFacts {
            unmapped_keys: inner.unmapped.len(),
            conflicts_total: inner.conflicts_total,
            series: inner.series,
        };
        let mut own = selfmetrics::render(&self.registry, self.manager.as_deref(), facts);
        inner.events.render(&mut own);
        let now = Instant::now();
        let live = inner.sources.values().filter(|s| s.expires.is_none_or(|e| e > now)).map(|s| &s.families);
        let mut out = String::with_capacity(64 * 1024);
        write_families(&mut out, live.chain(std::iter::once(&own)));
        out
    }
}

/// Drains the sink's queue into the exporter.
pub async fn run_sink(exporter: Exporter, mut queue: SinkQueue) {
    while let Some(batch) = queue.recv().await {
        let n = batch.records.len() as u64;
        let e = exporter.clone();
        // Rendering a large snapshot is CPU work; keep it off the async workers.
        match tokio::task::spawn_blocking(move || e.apply(&batch)).await {
            Ok(()) => queue.stats.sent(n),
            Err(err) => {
                queue.stats.failed(n);
                tracing::error!(error = %err, "rendering a snapshot failed");
            }
        }
    }
}

async fn metrics(State(exporter): State<Exporter>) -> Response {
    match tokio::task::spawn_blocking(move || exporter.encode()).await {
        Ok(body) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n").into_response(),
    }
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
        .layer(CompressionLayer::new().gzip(true).no_br().no_deflate().no_zstd())
        .with_state(exporter)
}

/// Binds the listener; errors name the address (busy port, no permission).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}
