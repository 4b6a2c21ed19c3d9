//! Wiring: builds the connection manager, collectors, router and sinks from
//! the configuration (`agent`), runs them, reloads in place on SIGHUP
//! (`reload`), and shuts down cleanly on SIGTERM/SIGINT.

mod agent;
pub(crate) mod reload;

use agent::{load_checked, Agent};

use std::sync::Arc;
use std::time::Duration;

use std::path::PathBuf;

use anyhow::anyhow;

use crate::collectors::blocking::CallTracker;
use crate::collectors::controller::{self, Schedule, Wake};
use crate::collectors::{manager_options, BuildContext, Collector, CollectorContext, Consumers, Identity};
use crate::config::{Config, LogFormat};
use crate::events;
use crate::filter::DomainFilter;
use crate::health::Health;
use crate::libvirt::ConnectionManager;
use crate::registry::{COLLECTORS, SINKS};
use crate::selection::Selection;
use crate::selfmon::{CollectorStats, CycleOutcome, Registry};
use crate::sinks::{CheckContext, Consumes};

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

/// The log filter, replaced by a reload that changes `agent.log_level`.
type FilterHandle = tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;
static LOG_FILTER: std::sync::OnceLock<FilterHandle> = std::sync::OnceLock::new();

pub fn init_logging(cfg: &Config) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_new(&cfg.agent.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let _ = LOG_FILTER.set(handle);
    let base = tracing_subscriber::registry().with(filter);
    let stream = std::env::var("JOURNAL_STREAM").ok();
    if journal_wanted(cfg.agent.log_format, stream.as_deref(), std::path::Path::new(JOURNAL_SOCKET).exists()) {
        match tracing_journald::layer() {
            Ok(layer) => {
                let _ = base.with(layer.with_syslog_identifier("virtpulse".into())).try_init();
                return;
            }
            Err(e) => eprintln!("virtpulse: cannot log to the journal ({e}); logging to stderr"),
        }
    }
    use std::io::IsTerminal;
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let _ = match cfg.agent.log_format {
        LogFormat::Json => base.with(fmt.json()).try_init(),
        _ => base.with(fmt.with_ansi(std::io::stderr().is_terminal())).try_init(),
    };
}

/// Applies a new `agent.log_level` (checked by the configuration already).
pub(crate) fn set_log_level(level: &str) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_new(level).map_err(|e| e.to_string())?;
    match LOG_FILTER.get() {
        Some(h) => h.reload(filter).map_err(|e| e.to_string()),
        None => Ok(()),
    }
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
pub(crate) fn consumes(cfg: &Config) -> Consumes {
    SINKS.iter().zip(&cfg.sinks).filter(|(_, c)| c.enabled).fold(Consumes::default(), |a, (f, c)| {
        let b = f.consumes(&c.config);
        Consumes {
            metrics: a.metrics || b.metrics,
            records: a.records || b.records,
            durable_events: a.durable_events || b.durable_events,
        }
    })
}

pub(crate) fn serves_health(cfg: &Config) -> bool {
    SINKS.iter().zip(&cfg.sinks).any(|(f, c)| c.enabled && f.serves_health(&c.config))
}

pub(crate) fn filter(cfg: &Config) -> anyhow::Result<Arc<DomainFilter>> {
    cfg.domains.filter().map(Arc::new).map_err(|e| anyhow!("domains.{}: {}", e.key, e.message))
}

pub(crate) fn identity(cfg: &Config) -> Identity {
    Identity { host: cfg.hostname().into(), uri: cfg.libvirt.uri.as_str().into() }
}

/// A collector built for `--once`, with what runs it.
struct Planned {
    name: &'static str,
    collector: Box<dyn Collector>,
    /// A connection of the collector's own (read-write for the guest agent).
    own_manager: Option<Arc<ConnectionManager>>,
    sched: Schedule,
    stats: Arc<CollectorStats>,
}

/// The enabled collectors, in the registry's order, each built by its
/// factory with its own schedule and counters (`--once`).
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
        let sched = Schedule {
            interval,
            timeout,
            max_stuck_calls: cfg.collector_defaults.max_stuck_calls,
            phase: Duration::ZERO,
        };
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
        let wake = Wake::counted(stats.clone());
        let mut build = BuildContext::new(ctx, sched, wake, selection.clone(), consumers, cfg.libvirt.clone());
        let built = factory.build(&c.config, &mut build).map_err(|e| anyhow!("collectors.{}: {e:#}", c.name))?;
        out.push(Planned {
            name: c.name,
            collector: built.collector,
            own_manager: build.own_connection(),
            sched,
            stats,
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

/// Reloads on SIGHUP: the file and the environment are read and checked
/// as `--check-config` does; only a configuration that passes is applied,
/// in place. A bad one leaves the running configuration as it is.
async fn reload(agent: &mut Agent, path: Option<PathBuf>) {
    tracing::info!("SIGHUP: reloading the configuration");
    let new = match load_checked(path).await {
        Ok(c) => c,
        Err(e) => {
            agent.reloads.failed(&e);
            tracing::error!(error = %e, "configuration reload failed; the running configuration stays (virtpulse_config_last_reload_successful = 0)");
            return;
        }
    };
    // Listeners whose configuration did not change re-read their web
    // config and certificates too (they also do by themselves on change).
    let web = tokio::task::spawn_blocking(crate::web::reload_all)
        .await
        .unwrap_or_else(|e| Err(format!("internal error: {e}")));
    let applied = agent.apply(new).await;
    let applied = match (applied, web) {
        (Ok(r), Ok(())) => Ok(r),
        (Ok(_), Err(w)) => Err(format!("web config: {w}")),
        (Err(e), Ok(())) => Err(e),
        (Err(e), Err(w)) => Err(format!("{e}; web config: {w}")),
    };
    match applied {
        Ok(restart) => {
            agent.reloads.succeeded(!restart.is_empty());
            if restart.is_empty() {
                tracing::info!("configuration reloaded");
            } else {
                tracing::warn!(keys = ?restart, "configuration reloaded; these changes take effect at the next restart (virtpulse_config_restart_required = 1)");
            }
        }
        Err(e) => {
            agent.reloads.failed(&e);
            tracing::error!(error = %e, "configuration reload applied in part: these components could not start; the rest runs as configured");
        }
    }
}

enum Signal {
    Stop,
    Reload,
}

async fn next_signal(hup: &mut Option<tokio::signal::unix::Signal>) -> Signal {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    let hangup = async {
        match hup {
            Some(h) => {
                h.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    match (term, int) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! {
                _ = t.recv() => Signal::Stop,
                _ = i.recv() => Signal::Stop,
                _ = hangup => Signal::Reload,
            }
        }
        _ => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => Signal::Stop,
                _ = hangup => Signal::Reload,
            }
        }
    }
}

/// The daemon. Returns when a termination signal arrives; SIGHUP reloads
/// `path` (and the environment) in place.
pub async fn run_daemon(cfg: Config, path: Option<PathBuf>) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    // Before anything slow: SIGHUP's default action would end the process.
    let mut hup = signal(SignalKind::hangup()).ok();
    let log_uri = cfg.libvirt.uri.clone();
    let mut agent = Agent::start(cfg).await?;
    notify_ready(&log_uri, &agent.manager()).await;
    if let Some(period) = sd_notify::watchdog_enabled() {
        let h = agent.health();
        // Its own thread: a worker thread wedged by a bug must not take the
        // judge down with it (its heartbeats stop; the judge sees that).
        if let Err(e) = std::thread::Builder::new().name("watchdog".into()).spawn(move || watchdog(h, period)) {
            tracing::error!(error = %e, "cannot start the watchdog thread; systemd will restart the agent when WatchdogSec passes");
        }
    }
    while let Signal::Reload = next_signal(&mut hup).await {
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Reloading]);
        reload(&mut agent, path.clone()).await;
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    }
    tracing::info!("shutting down");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    agent.stop().await;
    Ok(())
}

/// Deregisters the callbacks while the connection is still open, stops the
/// libvirt event loop thread (it must not hold the exit up), then lets the
/// processor route what was handed over.
pub(crate) async fn stop_events(manager: &ConnectionManager, events: Option<events::EventTasks>) {
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
async fn notify_ready(uri: &str, manager: &ConnectionManager) {
    let attempted = tokio::time::timeout(Duration::from_secs(10), async {
        while manager.connects() + manager.failed_attempts() == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .is_ok();
    let status = match (manager.is_up(), attempted) {
        (true, _) => format!("connected to {}", uri),
        (false, true) => format!("waiting for libvirt at {} (first attempt failed; retrying)", uri),
        (false, false) => format!("connecting to libvirt at {}", uri),
    };
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status(&status)]);
    tracing::info!(version = env!("CARGO_PKG_VERSION"), uri = %uri, "virtpulse running");
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
