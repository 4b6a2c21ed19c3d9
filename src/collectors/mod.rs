//! Collectors poll libvirt on a schedule. Each lives in a folder of its own
//! (its configuration, its metric catalog, its code) and describes itself
//! through a `CollectorFactory`; `crate::registry` lists the factories, and
//! the agent loops over that list. Every collector is driven by the same
//! controller (see `controller`), makes its libvirt calls on blocking
//! threads (see `blocking`), and hands a `Batch` of records to the router.

pub(crate) mod blocking;
pub(crate) mod connection;
pub(crate) mod controller;
pub mod domain_stats;
pub(crate) mod guest;
pub(crate) mod health;
pub(crate) mod jobs;
pub(crate) mod networks;
pub(crate) mod node;
pub(crate) mod node_devices;
pub(crate) mod pools;
pub(crate) mod snapshots;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{typed, AnyConfig, LibvirtConfig, SectionConfig, SectionSpec};
use crate::events::Listener;
use crate::filter::DomainFilter;
use crate::libvirt::manager::ManagerOptions;
use crate::libvirt::{ConnectionManager, LibvirtError};
use crate::record::kind::KindSpec;
use crate::record::Batch;
use crate::selection::Selection;
use crate::selfmon::{CollectorStats, MetricDesc, Registry};
use blocking::CallTracker;
use controller::{Schedule, Wake};

pub use crate::record::Identity;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What every collector needs at run time besides its own settings.
#[derive(Clone)]
pub struct CollectorContext {
    pub manager: Arc<ConnectionManager>,
    /// Counts this collector's libvirt calls in flight (stuck ones included).
    pub tracker: CallTracker,
    pub registry: Arc<Registry>,
    pub stats: Arc<CollectorStats>,
    pub identity: Identity,
    pub filter: Arc<DomainFilter>,
}

#[derive(Debug)]
pub enum CollectError {
    /// No libvirt connection right now (the manager is reconnecting).
    NotConnected,
    Libvirt(LibvirtError),
    Internal(String),
}

impl fmt::Display for CollectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CollectError::NotConnected => write!(f, "not connected to libvirt"),
            CollectError::Libvirt(e) => write!(f, "{e}"),
            CollectError::Internal(e) => write!(f, "internal error: {e}"),
        }
    }
}

impl From<LibvirtError> for CollectError {
    fn from(e: LibvirtError) -> Self {
        CollectError::Libvirt(e)
    }
}

pub trait Collector: Send {
    fn name(&self) -> &'static str;
    /// One collection. The controller bounds it with a deadline by dropping
    /// the future; libvirt calls already running go on in the background and
    /// are tracked as stuck until they return.
    fn collect(&mut self) -> BoxFuture<'_, Result<Batch, CollectError>>;
}

/// Who reads the records: decides what a collector asks of libvirt.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Consumers {
    /// A sink exports metrics (Prometheus, OTLP metrics).
    pub metrics: bool,
    /// A sink reads whole records (stdout, Kafka metric records): every
    /// configured group is asked for and every field kept.
    pub records: bool,
}

/// What a collector's factory is given to build it.
pub struct BuildContext {
    pub ctx: CollectorContext,
    pub schedule: Schedule,
    /// Starts a collection now (events use it through the listener).
    pub wake: Wake,
    pub selection: Arc<Selection>,
    pub consumers: Consumers,
    libvirt: LibvirtConfig,
    /// A connection the collector asked for besides the shared one.
    own_connection: Option<Arc<ConnectionManager>>,
}

impl BuildContext {
    pub fn new(
        ctx: CollectorContext,
        schedule: Schedule,
        wake: Wake,
        selection: Arc<Selection>,
        consumers: Consumers,
        libvirt: LibvirtConfig,
    ) -> Self {
        Self { ctx, schedule, wake, selection, consumers, libvirt, own_connection: None }
    }

    /// A read-write connection of the collector's own (the guest agent is
    /// refused on read-only ones); the rest of the agent stays read-only.
    pub fn use_read_write_connection(&mut self) {
        let manager = ConnectionManager::new(ManagerOptions { read_only: false, ..manager_options(&self.libvirt) });
        self.ctx.manager = manager.clone();
        self.own_connection = Some(manager);
    }

    pub fn own_connection(&self) -> Option<Arc<ConnectionManager>> {
        self.own_connection.clone()
    }
}

/// The shared connection's settings.
pub fn manager_options(cfg: &LibvirtConfig) -> ManagerOptions {
    ManagerOptions {
        uri: cfg.uri.clone(),
        read_only: cfg.read_only,
        keepalive_interval: cfg.keepalive_interval,
        keepalive_count: cfg.keepalive_count,
        min_backoff: cfg.reconnect_min_backoff,
        max_backoff: cfg.reconnect_max_backoff,
    }
}

/// A collector, ready to run.
pub struct Built {
    pub collector: Box<dyn Collector>,
    /// What tells it about events, if it reacts to them.
    pub listener: Option<Arc<dyn Listener>>,
}

/// A collector as its folder declares it. Implemented once per collector;
/// `CollectorFactory` is what the registry lists.
pub trait CollectorPlugin: Sync + 'static {
    type Config: SectionConfig;
    /// The `[collectors.<name>]` section, the `collector` label, the
    /// records' source.
    const NAME: &'static str;
    /// Whether it runs when the file says nothing.
    const ENABLED: bool = true;
    /// Its own default interval (`None`: `[collectors] interval`).
    const INTERVAL: Option<Duration> = None;
    /// The kinds of record it makes.
    const KINDS: &'static [&'static KindSpec];
    /// Its own self-metrics (docs/metrics.md lists them).
    const METRICS: &'static [MetricDesc] = &[];

    fn build(&self, config: &Self::Config, ctx: &mut BuildContext) -> anyhow::Result<Built>;
}

/// What the registry and the agent see of a collector.
pub trait CollectorFactory: Sync {
    fn name(&self) -> &'static str;
    fn section(&self) -> &dyn SectionSpec;
    fn kinds(&self) -> &'static [&'static KindSpec];
    fn metrics(&self) -> &'static [MetricDesc];
    fn build(&self, config: &AnyConfig, ctx: &mut BuildContext) -> anyhow::Result<Built>;
}

/// Puts a plugin in the registry: `&Factory(jobs::Jobs)`.
pub struct Factory<P: CollectorPlugin>(pub P);

impl<P: CollectorPlugin> Factory<P> {
    const SECTION: crate::config::section::Section<P::Config> =
        crate::config::section::Section::new(P::NAME, P::ENABLED, P::INTERVAL);
}

impl<P: CollectorPlugin> CollectorFactory for Factory<P> {
    fn name(&self) -> &'static str {
        P::NAME
    }

    fn section(&self) -> &dyn SectionSpec {
        &Self::SECTION
    }

    fn kinds(&self) -> &'static [&'static KindSpec] {
        P::KINDS
    }

    fn metrics(&self) -> &'static [MetricDesc] {
        P::METRICS
    }

    fn build(&self, config: &AnyConfig, ctx: &mut BuildContext) -> anyhow::Result<Built> {
        self.0.build(&typed::<P::Config>(config), ctx)
    }
}
