//! Sinks turn batches of records into output. They know records, never
//! libvirt, and each drains its own bounded queue from the router.
//!
//! Every sink is built the same way (Vector's sinks, the OpenTelemetry
//! Collector's exporter factories): a `SinkFactory` made from its
//! configuration starts it with a `SinkContext` and its queue, and hands
//! back a `Running` sink that reports on it and shuts it down. `configured`
//! lists the enabled ones; the composition root loops over that list.

pub mod codes;
pub mod info;
pub mod kafka;
pub mod otlp;
pub mod prometheus;
pub mod stdout;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::config::SinksConfig;
use crate::router::SinkQueue;
use crate::selection::Selection;
use crate::selfmon::{Probe, Registry, Report};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What every sink may use besides its own configuration.
#[derive(Clone)]
pub struct SinkContext {
    /// The agent's own telemetry (the Prometheus sink serves it).
    pub registry: Arc<Registry>,
    /// What the metric sinks export.
    pub selection: Arc<Selection>,
    pub hostname: String,
    pub libvirt_uri: String,
    /// Answers health checks (the Prometheus sink's /healthz and /readyz).
    pub probe: Arc<dyn Probe>,
}

/// Starts a sink draining its queue. Fails on what will not fix itself (a
/// port in use, bad client properties); an unreachable destination is the
/// sink's to wait for.
pub type StartFn = Box<dyn FnOnce(SinkQueue, SinkContext) -> BoxFuture<'static, anyhow::Result<Running>> + Send>;

/// A configured sink, not yet running.
pub struct SinkFactory {
    pub name: &'static str,
    /// Batches its queue from the router holds.
    pub queue_capacity: usize,
    pub start: StartFn,
}

/// A running sink.
pub struct Running {
    pub name: &'static str,
    /// What it says about itself beyond its queue (transport, spool).
    pub report: Option<Arc<dyn Report>>,
    /// How long its shutdown may take (from its configuration).
    pub stop_within: Duration,
    /// Stops it once the router is gone (its queue closed): it hands over
    /// what it holds, giving up at the deadline it is given.
    pub stop: Box<dyn FnOnce(Duration) -> BoxFuture<'static, ()> + Send>,
}

/// The enabled sinks, in a fixed order. `web_security`: the Prometheus
/// endpoint's TLS and basic auth, loaded by the caller's checks.
pub fn configured(cfg: &SinksConfig, web_security: Option<Arc<prometheus::web::Security>>) -> Vec<SinkFactory> {
    let mut sinks = Vec::new();
    if cfg.prometheus.enabled {
        sinks.push(prometheus::factory(cfg.prometheus.clone(), web_security));
    }
    if cfg.stdout.enabled {
        sinks.push(stdout::factory(cfg.stdout.queue_capacity));
    }
    if cfg.kafka.enabled {
        sinks.push(kafka::factory(cfg.kafka.clone()));
    }
    if cfg.otlp.enabled {
        sinks.push(otlp::factory(cfg.otlp.clone()));
    }
    sinks
}
