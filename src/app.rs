//! Wiring: builds the connection manager, collectors, router and sinks from
//! the configuration, runs them, and shuts down cleanly on SIGTERM/SIGINT.

use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;

use crate::collectors::blocking::CallTracker;
use crate::collectors::connection::ConnectionReport;
use crate::collectors::controller::{self, Schedule, Wake};
use crate::collectors::domain_info::InfoCache;
use crate::collectors::domain_stats::{self, DomainStatsCollector};
use crate::collectors::guest::{self, GuestCollector};
use crate::collectors::jobs::JobsCollector;
use crate::collectors::node::NodeCollector;
use crate::collectors::pools::PoolsCollector;
use crate::collectors::{CollectError, Collector, EventListener};
use crate::collectors::{CollectorContext, Identity};
use crate::config::{CollectorName, Config, LogFormat};
use crate::events::{self, EventStats};
use crate::filter::DomainFilter;
use crate::health::Health;
use crate::libvirt::manager::ManagerOptions;
use crate::libvirt::ConnectionManager;
use crate::record::Batch;
use crate::router::Router;
use crate::selection::Selection;
use crate::selfmon::{CollectorStats, CycleOutcome, Registry, SinkStats};
use crate::sinks::{self, kafka, otlp, prometheus, SinkContext};

/// Exit codes (sysexits.h).
pub const EXIT_CONFIG: i32 = 78;
pub const EXIT_UNAVAILABLE: i32 = 69;
pub const EXIT_SOFTWARE: i32 = 70;
pub const EXIT_TEMPFAIL: i32 = 75;

const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// Whether `auto` logs to the journal: systemd set JOURNAL_STREAM (stderr
/// goes to the journal anyway) and the journal's native socket is there.
pub fn journal_wanted(format: LogFormat, journal_stream: Option<&str>, socket_exists: bool) -> bool {
    match format {
        LogFormat::Journald => true,
        LogFormat::Auto => journal_stream.is_some_and(|s| !s.is_empty()) && socket_exists,
        LogFormat::Text | LogFormat::Json => false,
    }
}

pub fn init_logging(cfg: &Config) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = || {
        tracing_subscriber::EnvFilter::try_new(&cfg.agent.log_level)
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
    };
    let stream = std::env::var("JOURNAL_STREAM").ok();
    if journal_wanted(cfg.agent.log_format, stream.as_deref(), std::path::Path::new(JOURNAL_SOCKET).exists()) {
        match tracing_journald::layer() {
            Ok(layer) => {
                let layer = layer.with_syslog_identifier("virtpulse".into());
                let _ = tracing_subscriber::registry().with(filter()).with(layer).try_init();
                return;
            }
            Err(e) => eprintln!("virtpulse: cannot log to the journal ({e}); logging to stderr"),
        }
    }
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match cfg.agent.log_format {
        LogFormat::Json => builder.json().try_init(),
        _ => builder.try_init(),
    };
}

/// Every check a start makes short of connecting anywhere: what
/// `--check-config` proves, and what the daemon runs before it starts (a
/// failure is a configuration error, exit 78). The configuration itself
/// (keys, types, bounds, patterns, the web config's TLS files and users,
/// every VIRTPULSE_* variable) was checked when it was loaded.
pub fn preflight(cfg: &Config) -> Result<(), String> {
    // TLS certificates and keys, basic auth hashes.
    web_security(cfg)?;
    // Property names and values only librdkafka can judge (no connection made).
    kafka::check(&cfg.sinks.kafka)?;
    // OTLP settings from OTEL_* variables, TLS material, headers, resource
    // attributes; the transport needs a runtime to exist (it connects lazily).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime for the checks: {e}"))?;
    rt.block_on(async { otlp::check(&cfg.sinks.otlp, &cfg.hostname(), &cfg.libvirt.uri) })?;
    Ok(())
}

fn manager_options(cfg: &Config) -> ManagerOptions {
    ManagerOptions {
        uri: cfg.libvirt.uri.clone(),
        read_only: cfg.libvirt.read_only,
        keepalive_interval: cfg.libvirt.keepalive_interval,
        keepalive_count: cfg.libvirt.keepalive_count,
        min_backoff: cfg.libvirt.reconnect_min_backoff,
        max_backoff: cfg.libvirt.reconnect_max_backoff,
    }
}

fn filter(cfg: &Config) -> anyhow::Result<Arc<DomainFilter>> {
    DomainFilter::new(&cfg.domains.include, &cfg.domains.exclude)
        .map(Arc::new)
        .map_err(|(k, m)| anyhow!("domains.{k}: {m}"))
}

fn collector_context(
    cfg: &Config,
    manager: Arc<ConnectionManager>,
    registry: Arc<Registry>,
    stats: Arc<CollectorStats>,
) -> anyhow::Result<CollectorContext> {
    Ok(CollectorContext {
        manager,
        tracker: CallTracker::default(),
        registry,
        stats,
        identity: Identity { host: cfg.hostname().into(), uri: cfg.libvirt.uri.as_str().into() },
        filter: filter(cfg)?,
    })
}

/// What the domain stats collector asks libvirt for: the groups a metric
/// sink exports, plus every configured group when a sink reads whole
/// records; the backing chain only when someone shows it.
pub fn requested_stats(cfg: &Config, selection: &Selection, records: bool) -> Result<(u32, bool), String> {
    let bit = |name: &str| crate::libvirt::stats::group_by_name(name).map(|g| g.bit);
    let configured = cfg.stats_groups_mask()?;
    let state = bit("state").unwrap_or(1);
    let mut wanted = state;
    let metrics = cfg.metric_consumers();
    if metrics {
        wanted |= selection.needed_groups(bit);
    }
    if records {
        wanted |= configured;
    }
    let backing = cfg.collectors.domain_stats.backing_chain
        && (records || (metrics && selection.enabled(crate::stat_keys::Detail::BackingChain)));
    Ok(((configured & wanted) | state, backing))
}

fn domain_stats_collector(
    cfg: &Config,
    ctx: CollectorContext,
    selection: &Arc<Selection>,
    records: bool,
) -> anyhow::Result<DomainStatsCollector> {
    let ds = &cfg.collectors.domain_stats;
    let (groups, backing_chain) = requested_stats(cfg, selection, records).map_err(|m| anyhow!(m))?;
    let key_filter: Option<crate::libvirt::typed_params::KeyFilter> = if records {
        None
    } else {
        let sel = selection.clone();
        // The state keys drive the collector itself (running or not).
        Some(Arc::new(move |k: &str| {
            k.starts_with("state.") || sel.wants_key(crate::record::RecordKind::DomainStats, k)
        }))
    };
    tracing::info!(
        groups = ?crate::libvirt::stats::group_names(groups),
        backing_chain,
        all_fields = records,
        metrics = ?selection.enabled_details(),
        "domain stats: what is asked of libvirt"
    );
    let timeout = cfg.domain_stats_schedule().1;
    let settings = domain_stats::Settings {
        groups,
        backing_chain,
        nowait: ds.nowait,
        connect_wait: timeout / 2,
        chunk_size: ds.chunk_size,
        chunks_in_flight: ds.chunks_in_flight,
        chunk_wait: timeout * 3 / 4,
        key_filter,
    };
    Ok(DomainStatsCollector::new(ctx, settings, InfoCache::new(ds.metadata_refresh)))
}

fn guest_settings(cfg: &Config) -> guest::Settings {
    let g = &cfg.collectors.guest;
    guest::Settings {
        agent: g.agent,
        addresses: g.addresses,
        call_timeout: cfg.guest_call_timeout(),
        calls_in_flight: g.calls_in_flight,
        max_filesystems: g.max_filesystems,
        max_addresses: g.max_addresses,
        max_string_bytes: g.max_string_bytes,
    }
}

/// Every collector kind behind one type, so the wiring can treat them alike.
enum AnyCollector {
    DomainStats(DomainStatsCollector),
    Jobs(JobsCollector),
    Node(NodeCollector),
    Pools(PoolsCollector),
    Guest(GuestCollector),
}

impl Collector for AnyCollector {
    fn name(&self) -> &'static str {
        match self {
            AnyCollector::DomainStats(c) => c.name(),
            AnyCollector::Jobs(c) => c.name(),
            AnyCollector::Node(c) => c.name(),
            AnyCollector::Pools(c) => c.name(),
            AnyCollector::Guest(c) => c.name(),
        }
    }

    async fn collect(&mut self) -> Result<Batch, CollectError> {
        match self {
            AnyCollector::DomainStats(c) => c.collect().await,
            AnyCollector::Jobs(c) => c.collect().await,
            AnyCollector::Node(c) => c.collect().await,
            AnyCollector::Pools(c) => c.collect().await,
            AnyCollector::Guest(c) => c.collect().await,
        }
    }
}

impl AnyCollector {
    /// What tells the collector about events, for those that react to them.
    fn listener(&self, wake: Wake) -> Option<Arc<dyn EventListener>> {
        match self {
            AnyCollector::DomainStats(c) => Some(c.listener(wake)),
            AnyCollector::Jobs(c) => Some(c.listener(wake)),
            AnyCollector::Node(_) | AnyCollector::Pools(_) | AnyCollector::Guest(_) => None,
        }
    }
}

struct Planned {
    /// A connection of the collector's own (read-write for the guest agent).
    own_manager: Option<Arc<ConnectionManager>>,
    collector: AnyCollector,
    sched: Schedule,
    tracker: CallTracker,
    stats: Arc<CollectorStats>,
    wake: Wake,
}

/// The enabled collectors, in a fixed order, each with its own schedule,
/// call tracker and counters.
fn plan_collectors(
    cfg: &Config,
    manager: &Arc<ConnectionManager>,
    registry: &Arc<Registry>,
    selection: &Arc<Selection>,
    records: bool,
) -> anyhow::Result<Vec<Planned>> {
    let c = &cfg.collectors;
    let mut out = Vec::new();
    for name in CollectorName::ALL {
        let enabled = match name {
            CollectorName::DomainStats => c.domain_stats.enabled,
            CollectorName::Jobs => c.jobs.enabled,
            CollectorName::Node => c.node.enabled,
            CollectorName::Pools => c.pools.enabled,
            CollectorName::Guest => c.guest.enabled,
        };
        if !enabled {
            continue;
        }
        let (interval, timeout) = cfg.schedule(name);
        let sched = Schedule { interval, timeout, max_stuck_calls: c.max_stuck_calls };
        let stats = CollectorStats::new(name.key(), interval);
        registry.add_collector(stats.clone());
        // The guest agent is refused on read-only connections: the guest
        // collector asking it gets a read-write connection of its own.
        let own_manager = (name == CollectorName::Guest && c.guest.agent)
            .then(|| ConnectionManager::new(ManagerOptions { read_only: false, ..manager_options(cfg) }));
        let ctx = collector_context(
            cfg,
            own_manager.clone().unwrap_or_else(|| manager.clone()),
            registry.clone(),
            stats.clone(),
        )?;
        let tracker = ctx.tracker.clone();
        let collector = match name {
            CollectorName::DomainStats => {
                AnyCollector::DomainStats(domain_stats_collector(cfg, ctx, selection, records)?)
            }
            CollectorName::Jobs => AnyCollector::Jobs(JobsCollector::new(
                ctx,
                c.jobs.completed_retention,
                timeout * 3 / 4,
                cfg.jobs_idle_interval(),
            )),
            CollectorName::Node => AnyCollector::Node(NodeCollector::new(ctx, cfg.node_per_cpu(selection))),
            CollectorName::Pools => AnyCollector::Pools(PoolsCollector::new(ctx)),
            CollectorName::Guest => AnyCollector::Guest(GuestCollector::new(ctx, guest_settings(cfg))),
        };
        let wake = Wake::counted(stats.clone());
        out.push(Planned { collector, sched, tracker, stats, wake, own_manager });
    }
    Ok(out)
}

/// `--once`: one collection of every enabled collector, printed as JSON
/// lines. Returns the exit code.
pub async fn run_once(cfg: Config) -> i32 {
    let manager = ConnectionManager::new(manager_options(&cfg));
    let m = manager.clone();
    match tokio::task::spawn_blocking(move || m.connect_once()).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            eprintln!(
                "virtpulse: cannot connect to libvirt at {}: {e}\n  Is libvirtd (or virtqemud) running, and may this user read its socket? Set libvirt.uri to choose another daemon.",
                cfg.libvirt.uri
            );
            return EXIT_UNAVAILABLE;
        }
        Err(e) => {
            eprintln!("virtpulse: internal error while connecting: {e}");
            return EXIT_SOFTWARE;
        }
    }
    let selection = match cfg.selection() {
        Ok(s) => Arc::new(s),
        Err((k, m)) => {
            eprintln!("virtpulse: metrics.{k}: {m}");
            return EXIT_CONFIG;
        }
    };
    // Records are what --once prints: every configured group, every field.
    let plan = match plan_collectors(&cfg, &manager, &Registry::new(), &selection, true) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("virtpulse: {e}");
            return EXIT_CONFIG;
        }
    };
    let mut code = 0;
    for mut p in plan {
        if let Some(m) = p.own_manager.clone() {
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || m.connect_once()).await {
                eprintln!("virtpulse: the {} collector cannot open its read-write connection: {e}", p.collector.name());
            }
        }
        match controller::run_once(&mut p.collector, &p.sched, &p.stats).await {
            Some(batch) => {
                use std::io::Write;
                let mut out = std::io::stdout().lock();
                for r in &batch.records {
                    if writeln!(out, "{}", r.to_json()).is_err() {
                        return EXIT_SOFTWARE;
                    }
                }
            }
            None => {
                eprintln!("virtpulse: the {} collection did not complete (see the log above)", p.collector.name());
                if code == 0 {
                    code = if p.stats.outcomes(CycleOutcome::Timeout) > 0 { EXIT_TEMPFAIL } else { EXIT_UNAVAILABLE };
                }
            }
        }
    }
    code
}

/// Pings the systemd watchdog at half its period, only while the agent is
/// healthy: a wedged loop stops the pings and systemd restarts the service.
fn watchdog(health: Arc<Health>, period: Duration) {
    let mut failing = false;
    loop {
        std::thread::sleep(period / 2);
        match health.liveness() {
            Ok(()) => {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                if failing {
                    tracing::info!("healthy again; pinging the systemd watchdog");
                }
                failing = false;
            }
            Err(why) => {
                if !failing {
                    tracing::error!(problem = %why, "unhealthy: no longer pinging the systemd watchdog (systemd will restart the agent)");
                }
                failing = true;
            }
        }
    }
}

/// SIGHUP would end the process by default. Reloading in place is not
/// supported: the connection, the event callbacks and every sink are built
/// from the configuration, and a restart rebuilds them in well under a
/// second while the Kafka spool keeps every undelivered event.
async fn refuse_reload() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else { return };
    while hup.recv().await.is_some() {
        tracing::warn!("SIGHUP: configuration reload is not supported; restart the service to apply changes (systemctl restart virtpulse)");
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! {
                _ = t.recv() => {}
                _ = i.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// The daemon. Returns when a termination signal arrives.
pub async fn run_daemon(cfg: Config) -> anyhow::Result<()> {
    let registry = Registry::new();
    let selection = Arc::new(cfg.selection().map_err(|(k, m)| anyhow!("metrics.{k}: {m}"))?);
    let manager = ConnectionManager::new(manager_options(&cfg));
    registry.add_report(Arc::new(ConnectionReport(manager.clone(), None)));
    let health = Health::new(registry.clone(), manager.clone());

    let mut router = Router::new();
    let context = SinkContext {
        registry: registry.clone(),
        selection: selection.clone(),
        hostname: cfg.hostname(),
        libvirt_uri: cfg.libvirt.uri.clone(),
        probe: health.clone(),
    };
    let mut sinks = Vec::new();
    for factory in sinks::configured(&cfg.sinks, web_security(&cfg).map_err(|e| anyhow!(e))?) {
        let stats = SinkStats::new(factory.name, factory.queue_capacity);
        registry.add_sink(stats.clone());
        let sink = (factory.start)(router.add_sink(stats), context.clone()).await?;
        if let Some(report) = sink.report.clone() {
            registry.add_report(report);
        }
        sinks.push(sink);
    }
    let router = Arc::new(router);

    let mut tasks = vec![tokio::spawn(manager.clone().run())];
    let mut listeners = Vec::new();
    let mut collectors = Vec::new();
    for p in plan_collectors(&cfg, &manager, &registry, &selection, cfg.record_consumers())? {
        tracing::info!(collector = p.collector.name(), interval = ?p.sched.interval, timeout = ?p.sched.timeout, "collector started");
        listeners.extend(p.collector.listener(p.wake.clone()));
        if let Some(m) = &p.own_manager {
            registry.add_report(Arc::new(ConnectionReport(m.clone(), Some(p.collector.name()))));
            tasks.push(tokio::spawn(m.clone().run()));
        }
        collectors.push(tokio::spawn(controller::run(
            p.collector,
            p.sched,
            p.tracker,
            p.stats,
            router.clone(),
            p.wake,
        )));
    }
    let events = match cfg.events.enabled {
        true => Some(start_events(&cfg, &manager, &router, &registry, listeners)?),
        false => None,
    };
    drop(router);

    notify_ready(&cfg, &manager).await;
    if let Some(period) = sd_notify::watchdog_enabled() {
        let h = health.clone();
        // Its own thread: a worker thread wedged by a bug must not take the
        // judge down with it (its heartbeats stop; the judge sees that).
        if let Err(e) = std::thread::Builder::new().name("watchdog".into()).spawn(move || watchdog(h, period)) {
            tracing::error!(error = %e, "cannot start the watchdog thread; systemd will restart the agent when WatchdogSec passes");
        }
    }
    tasks.push(tokio::spawn(refuse_reload()));

    shutdown_signal().await;
    tracing::info!("shutting down");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    for c in collectors {
        c.abort();
        let _ = c.await;
    }
    stop_events(&manager, events).await;
    // With every collector and the event processor gone the router is
    // dropped and the sink queues close: each sink hands over what it holds,
    // the Prometheus endpoint last.
    for sink in sinks.into_iter().rev() {
        let (wait, name) = (sink.stop_within, sink.name);
        if tokio::time::timeout(wait, (sink.stop)(wait)).await.is_err() {
            tracing::warn!(sink = name, "the sink did not stop within {wait:?}");
        }
    }
    for t in tasks {
        t.abort();
    }
    Ok(())
}

/// The Prometheus endpoint's TLS and basic auth, if configured.
fn web_security(cfg: &Config) -> Result<Option<Arc<prometheus::web::Security>>, String> {
    let p = &cfg.sinks.prometheus;
    match (&p.web_config_file, p.enabled) {
        (Some(f), true) => prometheus::web::Security::load(f)
            .map(|s| Some(Arc::new(s)))
            .map_err(|e| format!("sinks.prometheus.web_config_file: {e}")),
        _ => Ok(None),
    }
}

fn start_events(
    cfg: &Config,
    manager: &Arc<ConnectionManager>,
    router: &Arc<Router>,
    registry: &Registry,
    listeners: Vec<Arc<dyn EventListener>>,
) -> anyhow::Result<events::EventTasks> {
    let stats = EventStats::new(cfg.events.queue_capacity);
    registry.add_report(stats.clone());
    let settings = events::Settings {
        queue_capacity: cfg.events.queue_capacity,
        qemu_monitor: cfg.events.qemu_monitor,
        resync: cfg.events.resync,
    };
    let identity = Identity { host: cfg.hostname().into(), uri: cfg.libvirt.uri.as_str().into() };
    Ok(events::start(settings, manager.clone(), router.clone(), listeners, identity, filter(cfg)?, stats))
}

/// Deregisters the callbacks while the connection is still open, stops the
/// libvirt event loop thread (it must not hold the exit up), then lets the
/// processor route what was handed over.
async fn stop_events(manager: &ConnectionManager, events: Option<events::EventTasks>) {
    if let Some(session) = manager.current() {
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            tokio::task::spawn_blocking(move || session.conn.deregister_events()),
        )
        .await;
    }
    let stopped =
        tokio::task::spawn_blocking(|| crate::libvirt::event_loop::stop(Duration::from_secs(2))).await.unwrap_or(false);
    if !stopped {
        tracing::warn!("the libvirt event loop did not stop within 2 s");
    }
    if let Some(e) = events {
        e.shutdown(Duration::from_secs(2)).await;
    }
}

/// Tells systemd the service is up once the first connection attempt ended
/// either way: a service that waited for libvirtd could hold up the boot
/// forever.
async fn notify_ready(cfg: &Config, manager: &ConnectionManager) {
    let attempted = tokio::time::timeout(Duration::from_secs(10), async {
        while manager.connects() + manager.failed_attempts() == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .is_ok();
    let status = match (manager.is_up(), attempted) {
        (true, _) => format!("connected to {}", cfg.libvirt.uri),
        (false, true) => format!("waiting for libvirt at {} (first attempt failed; retrying)", cfg.libvirt.uri),
        (false, false) => format!("connecting to libvirt at {}", cfg.libvirt.uri),
    };
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status(&status)]);
    tracing::info!(version = env!("CARGO_PKG_VERSION"), uri = %cfg.libvirt.uri, "virtpulse running");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_logs_to_the_journal_only_under_systemd_with_its_socket() {
        assert!(journal_wanted(LogFormat::Auto, Some("8:1234"), true));
        assert!(!journal_wanted(LogFormat::Auto, Some("8:1234"), false), "no socket: stderr");
        assert!(!journal_wanted(LogFormat::Auto, None, true), "a terminal on a systemd host: stderr");
        assert!(!journal_wanted(LogFormat::Text, Some("8:1234"), true));
        assert!(journal_wanted(LogFormat::Journald, None, false));
    }
}
