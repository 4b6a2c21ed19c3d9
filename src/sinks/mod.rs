//! Sinks turn batches of records into output. They know records, never
//! libvirt or collectors, and each drains its own bounded queue from the
//! router.
//!
//! Every sink describes itself the same way (Vector's sinks, the
//! OpenTelemetry Collector's exporter factories): a `SinkPlugin` with its
//! configuration type and checks, what it consumes, and `start` that hands
//! back a `Running` sink which reports on it and shuts it down.
//! `crate::registry` lists them; the composition root loops over that list.

pub mod kafka;
pub mod otlp;
pub mod prometheus;
pub(crate) mod stdout;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{typed, AnyConfig, SectionConfig, SectionSpec};
use crate::record::kind::Catalog;
use crate::router::{SinkQueue, WhenFull};
use crate::selection::Selection;
use crate::selfmon::{MetricDesc, Probe, Registry, Report};
use crate::util::live::Live;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What every sink may use besides its own configuration.
#[derive(Clone)]
pub struct SinkContext {
    /// The agent's own telemetry (the Prometheus sink serves it).
    pub registry: Arc<Registry>,
    /// What the metric sinks export (a reload may replace it).
    pub selection: Live<Selection>,
    pub hostname: String,
    pub libvirt_uri: String,
    /// Answers health checks (the Prometheus sink's /healthz and /readyz).
    pub probe: Arc<dyn Probe>,
    /// Every kind of record the agent can make.
    pub catalog: Catalog,
    /// Gives freed heap pages back to the kernel, between live blocks too
    /// (glibc only returns the top of the heap by itself): sinks call it
    /// after dropping a large snapshot (`libvirt::heap::trim`).
    pub release_memory: fn(),
}

/// What the start-up checks may know besides a sink's own configuration.
#[derive(Debug, Clone)]
pub struct CheckContext {
    pub hostname: String,
    pub libvirt_uri: String,
}

/// What a sink reads, as it declares it from its configuration. The agent
/// asks libvirt only for what some sink consumes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Consumes {
    /// Metric snapshots, turned into series (Prometheus, OTLP metrics).
    pub metrics: bool,
    /// Whole records of the collectors, every field (stdout, Kafka metric records).
    pub records: bool,
    /// Events, delivered at least once (Kafka's spool).
    pub durable_events: bool,
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

/// A sink as its module declares it. `SinkFactory` is what the registry lists.
pub trait SinkPlugin: Sync + 'static {
    type Config: SectionConfig;
    /// The `[sinks.<name>]` section and the `sink` label.
    const NAME: &'static str;
    /// Whether it runs when the file says nothing.
    const ENABLED: bool = false;
    /// Its own self-metrics (docs/metrics.md lists them).
    const METRICS: &'static [MetricDesc] = &[];

    /// Batches its queue from the router holds.
    fn queue_capacity(&self, cfg: &Self::Config) -> usize;
    /// What its queue does with events when full: block (a lane of its
    /// own, at least once from the hand-off on) or drop the newest.
    fn when_full(&self, _cfg: &Self::Config) -> WhenFull {
        WhenFull::DropNewest
    }
    fn consumes(&self, cfg: &Self::Config) -> Consumes;
    /// Whether it serves `/healthz`, `/readyz` and the agent's own metrics
    /// (then the admin listener is not needed).
    fn serves_health(&self, _cfg: &Self::Config) -> bool {
        false
    }
    /// Checks only the sink can make, short of connecting anywhere
    /// (`--check-config` and the start run them): TLS files, client
    /// properties, environment. Errors name the key (`sinks.<name>.<key>`)
    /// or the variable.
    fn check(&self, _cfg: &Self::Config, _ctx: &CheckContext) -> Result<(), String> {
        Ok(())
    }
    /// Starts it draining `queue`. Fails on what will not fix itself (a
    /// port in use, bad client properties); an unreachable destination is
    /// the sink's to wait for.
    fn start(
        &self,
        cfg: Self::Config,
        queue: SinkQueue,
        ctx: SinkContext,
    ) -> BoxFuture<'static, anyhow::Result<Running>>;
}

/// What the registry and the agent see of a sink.
pub trait SinkFactory: Sync {
    fn name(&self) -> &'static str;
    fn section(&self) -> &dyn SectionSpec;
    fn metrics(&self) -> &'static [MetricDesc];
    fn queue_capacity(&self, cfg: &AnyConfig) -> usize;
    fn when_full(&self, cfg: &AnyConfig) -> WhenFull;
    fn consumes(&self, cfg: &AnyConfig) -> Consumes;
    fn serves_health(&self, cfg: &AnyConfig) -> bool;
    fn check(&self, cfg: &AnyConfig, ctx: &CheckContext) -> Result<(), String>;
    fn start(&self, cfg: &AnyConfig, queue: SinkQueue, ctx: SinkContext)
        -> BoxFuture<'static, anyhow::Result<Running>>;
}

/// Puts a plugin in the registry: `&Factory(kafka::KafkaPlugin)`.
pub struct Factory<P: SinkPlugin>(pub P);

impl<P: SinkPlugin> Factory<P> {
    const SECTION: crate::config::section::Section<P::Config> =
        crate::config::section::Section::new(P::NAME, P::ENABLED, None);
}

impl<P: SinkPlugin> SinkFactory for Factory<P> {
    fn name(&self) -> &'static str {
        P::NAME
    }

    fn section(&self) -> &dyn SectionSpec {
        &Self::SECTION
    }

    fn metrics(&self) -> &'static [MetricDesc] {
        P::METRICS
    }

    fn queue_capacity(&self, cfg: &AnyConfig) -> usize {
        self.0.queue_capacity(&typed::<P::Config>(cfg))
    }

    fn when_full(&self, cfg: &AnyConfig) -> WhenFull {
        self.0.when_full(&typed::<P::Config>(cfg))
    }

    fn consumes(&self, cfg: &AnyConfig) -> Consumes {
        self.0.consumes(&typed::<P::Config>(cfg))
    }

    fn serves_health(&self, cfg: &AnyConfig) -> bool {
        self.0.serves_health(&typed::<P::Config>(cfg))
    }

    fn check(&self, cfg: &AnyConfig, ctx: &CheckContext) -> Result<(), String> {
        self.0.check(&typed::<P::Config>(cfg), ctx)
    }

    fn start(
        &self,
        cfg: &AnyConfig,
        queue: SinkQueue,
        ctx: SinkContext,
    ) -> BoxFuture<'static, anyhow::Result<Running>> {
        self.0.start(typed::<P::Config>(cfg), queue, ctx)
    }
}
