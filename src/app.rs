//! Wiring: builds the connection manager, collectors, router and sinks from
//! the configuration, runs them, and shuts down cleanly on SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};

use crate::collectors::blocking::CallTracker;
use crate::collectors::controller::{self, Schedule};
use crate::collectors::domain_info::InfoCache;
use crate::collectors::domain_stats::{self, DomainStatsCollector};
use crate::collectors::{CollectorContext, Identity};
use crate::config::{Config, LogFormat};
use crate::filter::DomainFilter;
use crate::libvirt::manager::ManagerOptions;
use crate::libvirt::ConnectionManager;
use crate::router::Router;
use crate::selfmon::{CollectorStats, Registry, SinkStats};
use crate::sinks::{prometheus, stdout};

/// Exit codes (sysexits.h).
pub const EXIT_CONFIG: i32 = 78;
pub const EXIT_UNAVAILABLE: i32 = 69;
pub const EXIT_SOFTWARE: i32 = 70;
pub const EXIT_TEMPFAIL: i32 = 75;

pub fn init_logging(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&cfg.agent.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match cfg.agent.log_format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
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

fn domain_stats_collector(cfg: &Config, ctx: CollectorContext) -> anyhow::Result<DomainStatsCollector> {
    let ds = &cfg.collectors.domain_stats;
    let settings = domain_stats::Settings {
        groups: cfg.stats_groups_mask().map_err(|m| anyhow!(m))?,
        backing_chain: ds.backing_chain,
        nowait: ds.nowait,
        connect_wait: cfg.domain_stats_schedule().1 / 2,
    };
    Ok(DomainStatsCollector::new(ctx, settings, InfoCache::new(ds.metadata_refresh)))
}

fn schedule(cfg: &Config) -> Schedule {
    let (interval, timeout) = cfg.domain_stats_schedule();
    Schedule { interval, timeout, max_stuck_calls: cfg.collectors.max_stuck_calls }
}

/// `--once`: one collection printed as JSON lines. Returns the exit code.
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
    let registry = Registry::new();
    let sched = schedule(&cfg);
    let stats = CollectorStats::new(domain_stats::SOURCE, sched.interval);
    let built =
        collector_context(&cfg, manager, registry, stats.clone()).and_then(|ctx| domain_stats_collector(&cfg, ctx));
    let mut collector = match built {
        Ok(c) => c,
        Err(e) => {
            eprintln!("virtpulse: {e}");
            return EXIT_CONFIG;
        }
    };
    match controller::run_once(&mut collector, &sched, &stats).await {
        Some(batch) => {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            for r in &batch.records {
                if writeln!(out, "{}", r.to_json()).is_err() {
                    return EXIT_SOFTWARE;
                }
            }
            0
        }
        None => {
            let why = stats.outcomes(crate::selfmon::CycleOutcome::Timeout);
            eprintln!("virtpulse: the collection did not complete (see the log above)");
            if why > 0 {
                EXIT_TEMPFAIL
            } else {
                EXIT_UNAVAILABLE
            }
        }
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
    let manager = ConnectionManager::new(manager_options(&cfg));
    let mut router = Router::new();
    let mut tasks = Vec::new();

    let mut server = None;
    if cfg.sinks.prometheus.enabled {
        let p = &cfg.sinks.prometheus;
        let addr: SocketAddr =
            p.listen.parse().with_context(|| format!("sinks.prometheus.listen {:?} is not an address", p.listen))?;
        let listener = prometheus::bind(addr).await.with_context(|| {
            format!("cannot listen on {addr} (sinks.prometheus.listen): is another exporter using the port?")
        })?;
        let stats = SinkStats::new("prometheus", p.queue_capacity);
        registry.add_sink(stats.clone());
        let exporter = prometheus::Exporter::new(registry.clone(), Some(manager.clone()));
        tasks.push(tokio::spawn(prometheus::run_sink(exporter.clone(), router.add_sink(stats))));
        let app = prometheus::router(exporter, &p.path);
        tracing::info!(%addr, path = %p.path, "serving Prometheus metrics");
        server = Some(tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown_signal()).await {
                tracing::error!(error = %e, "HTTP server failed");
            }
        }));
    }
    let mut stdout_thread = None;
    if cfg.sinks.stdout.enabled {
        let stats = SinkStats::new("stdout", cfg.sinks.stdout.queue_capacity);
        registry.add_sink(stats.clone());
        stdout_thread = Some(stdout::spawn(router.add_sink(stats)).context("cannot start the stdout sink thread")?);
    }
    let router = Arc::new(router);

    tasks.push(tokio::spawn(manager.clone().run()));

    let mut collectors = Vec::new();
    if cfg.collectors.domain_stats.enabled {
        let sched = schedule(&cfg);
        let stats = CollectorStats::new(domain_stats::SOURCE, sched.interval);
        registry.add_collector(stats.clone());
        let ctx = collector_context(&cfg, manager.clone(), registry.clone(), stats.clone())?;
        let tracker = ctx.tracker.clone();
        let c = domain_stats_collector(&cfg, ctx)?;
        tracing::info!(interval = ?sched.interval, timeout = ?sched.timeout, "domain stats collector started");
        collectors.push(tokio::spawn(controller::run(c, sched, tracker, stats, router.clone())));
    }
    drop(router);

    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    tracing::info!(version = env!("CARGO_PKG_VERSION"), uri = %cfg.libvirt.uri, "virtpulse running");

    shutdown_signal().await;
    tracing::info!("shutting down");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    for c in collectors {
        c.abort();
        let _ = c.await;
    }
    // With every collector gone the router is dropped and the sink queues
    // close; give the sinks a moment to flush what they hold.
    if let Some(t) = stdout_thread {
        let _ = tokio::time::timeout(Duration::from_secs(5), tokio::task::spawn_blocking(move || t.join())).await;
    }
    if let Some(s) = server {
        let _ = tokio::time::timeout(Duration::from_secs(5), s).await;
    }
    for t in tasks {
        t.abort();
    }
    Ok(())
}
