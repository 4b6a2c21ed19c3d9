//! Wiring: builds the connection manager, collectors, router and sinks from
//! the configuration, runs them, and shuts down cleanly on SIGTERM/SIGINT.

use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;

use crate::collectors::blocking::CallTracker;
use crate::collectors::connection::ConnectionReport;
use crate::collectors::controller::{self, Schedule, Wake};
use crate::collectors::{manager_options, BuildContext, Collector, CollectorContext, Consumers, Identity};
use crate::config::{Config, LogFormat};
use crate::events::{self, EventStats, Listener};
use crate::filter::DomainFilter;
use crate::health::Health;
use crate::libvirt::ConnectionManager;
use crate::registry::{COLLECTORS, SINKS};
use crate::router::Router;
use crate::selection::Selection;
use crate::selfmon::{CollectorStats, CycleOutcome, Registry, SinkStats};
use crate::sinks::{CheckContext, Consumes, SinkContext};

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
/// (keys, types, bounds, patterns, every VIRTPULSE_* variable) was checked
/// when it was loaded; here the sinks check what only they can judge (TLS
/// files, librdkafka properties, OTEL_* variables).
pub fn preflight(cfg: &Config) -> Result<(), String> {
    let ctx = CheckContext { hostname: cfg.hostname(), libvirt_uri: cfg.libvirt.uri.clone() };
    for (factory, c) in SINKS.iter().zip(&cfg.sinks).filter(|(_, c)| c.enabled) {
        factory.check(&c.config, &ctx)?;
    }
    if crate::admin::wanted(&cfg.admin, serves_health(cfg)) {
        crate::admin::security(&cfg.admin)?;
    }
    Ok(())
}

/// What the enabled sinks consume, together.
fn consumes(cfg: &Config) -> Consumes {
    SINKS.iter().zip(&cfg.sinks).filter(|(_, c)| c.enabled).fold(Consumes::default(), |a, (f, c)| {
        let b = f.consumes(&c.config);
        Consumes {
            metrics: a.metrics || b.metrics,
            records: a.records || b.records,
            durable_events: a.durable_events || b.durable_events,
        }
    })
}

fn serves_health(cfg: &Config) -> bool {
    SINKS.iter().zip(&cfg.sinks).any(|(f, c)| c.enabled && f.serves_health(&c.config))
}

fn filter(cfg: &Config) -> anyhow::Result<Arc<DomainFilter>> {
    cfg.domains.filter().map(Arc::new).map_err(|e| anyhow!("domains.{}: {}", e.key, e.message))
}

fn identity(cfg: &Config) -> Identity {
    Identity { host: cfg.hostname().into(), uri: cfg.libvirt.uri.as_str().into() }
}

/// A collector ready to run, with what runs it.
struct Planned {
    name: &'static str,
    collector: Box<dyn Collector>,
    listener: Option<Arc<dyn Listener>>,
    /// A connection of the collector's own (read-write for the guest agent).
    own_manager: Option<Arc<ConnectionManager>>,
    sched: Schedule,
    tracker: CallTracker,
    stats: Arc<CollectorStats>,
    wake: Wake,
}

/// The enabled collectors, in the registry's order, each built by its
/// factory with its own schedule, call tracker and counters.
fn plan_collectors(
    cfg: &Config,
    manager: &Arc<ConnectionManager>,
    registry: &Arc<Registry>,
    selection: &Arc<Selection>,
    consumers: Consumers,
) -> anyhow::Result<Vec<Planned>> {
    let mut out = Vec::new();
    for (factory, c) in COLLECTORS.iter().zip(&cfg.collectors).filter(|(_, c)| c.enabled) {
        let (interval, timeout) = cfg.schedule(c);
        let sched = Schedule { interval, timeout, max_stuck_calls: cfg.collector_defaults.max_stuck_calls };
        let stats = CollectorStats::new(c.name, interval);
        registry.add_collector(stats.clone());
        let ctx = CollectorContext {
            manager: manager.clone(),
            tracker: CallTracker::default(),
            registry: registry.clone(),
            stats: stats.clone(),
            identity: identity(cfg),
            filter: filter(cfg)?,
        };
        let tracker = ctx.tracker.clone();
        let wake = Wake::counted(stats.clone());
        let mut build = BuildContext::new(ctx, sched, wake.clone(), selection.clone(), consumers, cfg.libvirt.clone());
        let built = factory.build(&c.config, &mut build).map_err(|e| anyhow!("collectors.{}: {e:#}", c.name))?;
        out.push(Planned {
            name: c.name,
            collector: built.collector,
            listener: built.listener,
            own_manager: build.own_connection(),
            sched,
            tracker,
            stats,
            wake,
        });
    }
    Ok(out)
}

/// `--once`: one collection of every enabled collector, printed as JSON
/// lines. Returns the exit code.
pub async fn run_once(cfg: Config) -> i32 {
    let manager = ConnectionManager::new(manager_options(&cfg.libvirt));
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
    let consumers = Consumers { metrics: consumes(&cfg).metrics, records: true };
    let plan = match plan_collectors(&cfg, &manager, &Registry::new(), &selection, consumers) {
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
                eprintln!("virtpulse: the {} collector cannot open its read-write connection: {e}", p.name);
            }
        }
        match controller::run_once(p.collector.as_mut(), &p.sched, &p.stats).await {
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
                eprintln!("virtpulse: the {} collection did not complete (see the log above)", p.name);
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
    let manager = ConnectionManager::new(manager_options(&cfg.libvirt));
    registry.add_report(Arc::new(ConnectionReport(manager.clone(), None)));
    let health = Health::new(registry.clone(), manager.clone());

    let mut router = Router::new();
    let context = SinkContext {
        registry: registry.clone(),
        selection: selection.clone(),
        hostname: cfg.hostname(),
        libvirt_uri: cfg.libvirt.uri.clone(),
        probe: health.clone(),
        catalog: cfg.catalog,
        release_memory: crate::libvirt::heap::trim,
    };
    let mut sinks = Vec::new();
    for (factory, c) in SINKS.iter().zip(&cfg.sinks).filter(|(_, c)| c.enabled) {
        let stats = SinkStats::new(c.name, factory.queue_capacity(&c.config));
        registry.add_sink(stats.clone());
        let sink = factory.start(&c.config, router.add_sink(stats), context.clone()).await?;
        if let Some(report) = sink.report.clone() {
            registry.add_report(report);
        }
        sinks.push(sink);
    }
    let admin = match crate::admin::wanted(&cfg.admin, serves_health(&cfg)) {
        true => Some(crate::admin::start(&cfg.admin, registry.clone(), health.clone()).await?),
        false => None,
    };
    let router = Arc::new(router);

    let mut tasks = vec![tokio::spawn(manager.clone().run())];
    let mut listeners = Vec::new();
    let mut collectors = Vec::new();
    let wanted = consumes(&cfg);
    let consumers = Consumers { metrics: wanted.metrics, records: wanted.records };
    for p in plan_collectors(&cfg, &manager, &registry, &selection, consumers)? {
        tracing::info!(collector = p.name, interval = ?p.sched.interval, timeout = ?p.sched.timeout, "collector started");
        listeners.extend(p.listener);
        if let Some(m) = &p.own_manager {
            registry.add_report(Arc::new(ConnectionReport(m.clone(), Some(p.name))));
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
    if let Some(a) = admin {
        let _ = tokio::time::timeout(Duration::from_secs(5), a.stop()).await;
    }
    for t in tasks {
        t.abort();
    }
    Ok(())
}

fn start_events(
    cfg: &Config,
    manager: &Arc<ConnectionManager>,
    router: &Arc<Router>,
    registry: &Registry,
    listeners: Vec<Arc<dyn Listener>>,
) -> anyhow::Result<events::EventTasks> {
    let stats = EventStats::new(cfg.events.queue_capacity);
    registry.add_report(stats.clone());
    let settings = events::Settings {
        queue_capacity: cfg.events.queue_capacity,
        qemu_monitor: cfg.events.qemu_monitor,
        resync: cfg.events.resync,
        job_kind: crate::registry::job_statistics(),
    };
    Ok(events::start(settings, manager.clone(), router.clone(), listeners, identity(cfg), filter(cfg)?, stats))
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
