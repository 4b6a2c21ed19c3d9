//! The running agent: the connection, the router, the sinks, the
//! collectors and the event lanes built from a configuration, and applying
//! the next configuration in place (a reload) by touching only what
//! changed.
//!
//! What a reload keeps: the process, the libvirt connection and its event
//! callbacks (unless `[libvirt]` changed), the event sequence, every
//! unchanged sink (with what it holds) and collector (with its caches and
//! pace), and the counters of whatever is rebuilt. A changed sink is
//! stopped (it hands over what it holds: the Kafka sink spools it) before
//! its successor starts; the events meanwhile wait in its lane.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use tokio::task::JoinHandle;

use super::reload;
use super::{consumes, identity, serves_health};
use crate::collectors::blocking::CallTracker;
use crate::collectors::connection::ConnectionReport;
use crate::collectors::controller::{self, Schedule, Wake};
use crate::collectors::{manager_options, BuildContext, CollectorContext, Consumers};
use crate::config::{Component, Config};
use crate::events::{self, EventStats, EventTasks, Listener};
use crate::filter::DomainFilter;
use crate::health::Health;
use crate::libvirt::ConnectionManager;
use crate::record::{Batch, Identity};
use crate::registry::{COLLECTORS, SINKS};
use crate::router::{Router, WhenFull};
use crate::selection::Selection;
use crate::selfmon::reload::ReloadStats;
use crate::selfmon::Registry;
use crate::sinks::{Running, SinkContext};
use crate::util::live::Live;

/// How long a lane may take to hand its events to a sink being removed.
const LANE_DRAIN: Duration = Duration::from_secs(10);

struct RunningSink {
    name: &'static str,
    fingerprint: String,
    when_full: WhenFull,
    running: Running,
}

struct RunningCollector {
    name: &'static str,
    fingerprint: String,
    task: JoinHandle<()>,
    /// The collector's own connection loop (read-write, for the guest agent).
    own_connection: Option<JoinHandle<()>>,
    listener: Option<Arc<dyn Listener>>,
}

impl RunningCollector {
    fn stop(self) {
        self.task.abort();
        if let Some(t) = self.own_connection {
            t.abort();
        }
    }
}

pub(crate) struct Agent {
    cfg: Config,
    registry: Arc<Registry>,
    manager: Arc<ConnectionManager>,
    health: Arc<Health>,
    router: Arc<Router>,
    selection: Live<Selection>,
    filter: Live<DomainFilter>,
    identity: Live<Identity>,
    listeners: Live<Vec<Arc<dyn Listener>>>,
    sinks: Vec<RunningSink>,
    collectors: Vec<RunningCollector>,
    events: Option<EventTasks>,
    admin: Option<crate::web::Server>,
    manager_task: JoinHandle<()>,
    pub(crate) reloads: Arc<ReloadStats>,
}

impl Agent {
    /// Builds and starts everything `cfg` asks for.
    pub(crate) async fn start(cfg: Config) -> anyhow::Result<Agent> {
        let registry = Registry::new();
        let selection = Live::new(cfg.selection().map_err(|(k, m)| anyhow!("metrics.{k}: {m}"))?);
        let filter = Live::new(cfg.domains.filter().map_err(|e| anyhow!("domains.{}: {}", e.key, e.message))?);
        let manager = ConnectionManager::new(manager_options(&cfg.libvirt));
        registry.add_report(Arc::new(ConnectionReport(manager.clone(), None)));
        let reloads = Arc::new(ReloadStats::started());
        registry.add_report(reloads.clone());
        let health = Health::new(registry.clone(), manager.clone());
        let manager_task = tokio::spawn(manager.clone().run());
        let mut agent = Agent {
            identity: Live::new(identity(&cfg)),
            cfg,
            registry,
            manager,
            health,
            router: Arc::new(Router::new()),
            selection,
            filter,
            listeners: Live::default(),
            sinks: Vec::new(),
            collectors: Vec::new(),
            events: None,
            admin: None,
            manager_task,
            reloads,
        };
        let cfg = agent.cfg.clone();
        for (i, c) in cfg.sinks.iter().enumerate().filter(|(_, c)| c.enabled) {
            let sink = agent.start_sink(&cfg, i, c).await?;
            agent.sinks.push(sink);
        }
        agent.admin = agent.start_admin(&cfg).await?;
        agent.start_collectors(&cfg)?;
        if cfg.events.enabled {
            agent.events = Some(agent.start_events(&cfg));
        }
        Ok(agent)
    }

    pub(crate) fn health(&self) -> Arc<Health> {
        self.health.clone()
    }

    pub(crate) fn manager(&self) -> Arc<ConnectionManager> {
        self.manager.clone()
    }

    fn sink_context(&self, cfg: &Config) -> SinkContext {
        SinkContext {
            registry: self.registry.clone(),
            selection: self.selection.clone(),
            hostname: cfg.hostname(),
            libvirt_uri: cfg.libvirt.uri.clone(),
            probe: self.health.clone(),
            catalog: cfg.catalog,
            release_memory: crate::libvirt::heap::trim,
        }
    }

    async fn start_sink(&self, cfg: &Config, i: usize, c: &Component) -> anyhow::Result<RunningSink> {
        let factory = SINKS[i];
        let when_full = factory.when_full(&c.config);
        let stats = self.registry.sink(c.name, factory.queue_capacity(&c.config));
        let queue = self.router.add_sink(stats, when_full);
        let running = match factory.start(&c.config, queue, self.sink_context(cfg)).await {
            Ok(r) => r,
            Err(e) => {
                self.router.remove_sink(c.name);
                return Err(e.context(format!("sinks.{}", c.name)));
            }
        };
        if let Some(report) = running.report.clone() {
            self.registry.add_owned(c.name, report);
        }
        tracing::info!(sink = c.name, when_full = when_full.as_str(), "sink started");
        Ok(RunningSink { name: c.name, fingerprint: reload::sink_fingerprint(cfg, c), when_full, running })
    }

    async fn start_admin(&self, cfg: &Config) -> anyhow::Result<Option<crate::web::Server>> {
        Ok(match crate::admin::wanted(&cfg.admin, serves_health(cfg)) {
            true => Some(crate::admin::start(&cfg.admin, self.registry.clone(), self.health.clone()).await?),
            false => None,
        })
    }

    fn consumers(cfg: &Config) -> Consumers {
        let wanted = consumes(cfg);
        Consumers { metrics: wanted.metrics, records: wanted.records }
    }

    /// Builds and starts collector `i` of the registry.
    fn start_collector(&self, cfg: &Config, i: usize, c: &Component) -> anyhow::Result<RunningCollector> {
        let consumers = Self::consumers(cfg);
        let (interval, timeout) = cfg.schedule(c);
        let sched = Schedule {
            interval,
            timeout,
            max_stuck_calls: cfg.collector_defaults.max_stuck_calls,
            phase: phase(cfg, i),
        };
        let stats = self.registry.collector(c.name, interval);
        let ctx = CollectorContext {
            manager: self.manager.clone(),
            tracker: CallTracker::default(),
            registry: self.registry.clone(),
            stats: stats.clone(),
            identity: identity(cfg),
            filter: self.filter.get(),
        };
        let tracker = ctx.tracker.clone();
        let wake = Wake::counted(stats.clone());
        let mut build =
            BuildContext::new(ctx, sched, wake.clone(), self.selection.get(), consumers, cfg.libvirt.clone());
        let built = COLLECTORS[i].build(&c.config, &mut build).map_err(|e| anyhow!("collectors.{}: {e:#}", c.name))?;
        let own_connection = build.own_connection().map(|m| {
            self.registry.add_owned(c.name, Arc::new(ConnectionReport(m.clone(), Some(c.name))));
            tokio::spawn(m.run())
        });
        tracing::info!(collector = c.name, interval = ?sched.interval, timeout = ?sched.timeout, "collector started");
        let task = tokio::spawn(controller::run(built.collector, sched, tracker, stats, self.router.clone(), wake));
        Ok(RunningCollector {
            name: c.name,
            fingerprint: reload::collector_fingerprint(cfg, c, consumers),
            task,
            own_connection,
            listener: built.listener,
        })
    }

    fn start_collectors(&mut self, cfg: &Config) -> anyhow::Result<()> {
        for (i, c) in cfg.collectors.iter().enumerate().filter(|(_, c)| c.enabled) {
            let rc = self.start_collector(cfg, i, c)?;
            self.collectors.push(rc);
        }
        self.publish_listeners();
        Ok(())
    }

    fn publish_listeners(&self) {
        self.listeners.set(self.collectors.iter().filter_map(|c| c.listener.clone()).collect());
    }

    fn start_events(&self, cfg: &Config) -> EventTasks {
        let stats = self.registry.keep("events", || EventStats::with_capacity(cfg.events.queue_capacity));
        let settings = events::Settings {
            queue_capacity: cfg.events.queue_capacity,
            qemu_monitor: cfg.events.qemu_monitor,
            resync: cfg.events.resync,
            job_kind: crate::registry::job_statistics(),
        };
        events::start(
            settings,
            events::Inputs {
                manager: self.manager.clone(),
                router: self.router.clone(),
                listeners: self.listeners.clone(),
                identity: self.identity.clone(),
                filter: self.filter.clone(),
                stats,
            },
        )
    }

    /// Applies `new` in place. `new` passed every check `--check-config`
    /// makes; what still fails here (a port in use) leaves that component
    /// stopped and is returned, the rest applied.
    pub(crate) async fn apply(&mut self, new: Config) -> Result<Vec<String>, String> {
        let old = std::mem::replace(&mut self.cfg, new.clone());
        let mut problems = Vec::new();
        let restart = reload::needs_restart(&old, &new);
        if old.agent.log_level != new.agent.log_level {
            match super::set_log_level(&new.agent.log_level) {
                Ok(()) => tracing::info!(level = %new.agent.log_level, "log level changed"),
                Err(e) => problems.push(format!("agent.log_level: {e}")),
            }
        }
        // What everything reads live.
        if let Ok(sel) = new.selection() {
            self.selection.set(sel);
        }
        if let Ok(f) = new.domains.filter() {
            self.filter.set(f);
        }
        self.identity.set(identity(&new));
        if serde_json::to_value(&old.libvirt).ok() != serde_json::to_value(&new.libvirt).ok() {
            tracing::info!(uri = %new.libvirt.uri, "libvirt settings changed: reconnecting");
            self.manager.retarget(manager_options(&new.libvirt));
        }
        self.apply_sinks(&new, &mut problems).await;
        if let Err(e) = self.apply_admin(&old, &new).await {
            problems.push(format!("admin: {e:#}"));
        }
        self.apply_collectors(&new, &mut problems);
        if problems.is_empty() {
            Ok(restart)
        } else {
            Err(problems.join("; "))
        }
    }

    async fn apply_sinks(&mut self, new: &Config, problems: &mut Vec<String>) {
        for (i, c) in new.sinks.iter().enumerate() {
            let pos = self.sinks.iter().position(|s| s.name == c.name);
            let fingerprint = reload::sink_fingerprint(new, c);
            if pos.is_some_and(|p| self.sinks[p].fingerprint == fingerprint) {
                continue;
            }
            let new_when_full = SINKS[i].when_full(&c.config);
            if let Some(p) = pos {
                let old = self.sinks.remove(p);
                // A lane that goes (the sink goes, or drops when full from
                // now on) first hands what it holds to the running sink.
                let keep_lane = c.enabled && new_when_full == WhenFull::Block;
                if old.when_full == WhenFull::Block && !keep_lane {
                    if let Some(e) = &self.events {
                        e.close_lane(old.name, LANE_DRAIN).await;
                    }
                }
                self.stop_sink(old).await;
                if !c.enabled {
                    self.registry.remove_sink(c.name);
                    tracing::info!(sink = c.name, "sink removed");
                }
            }
            if c.enabled {
                match self.start_sink(new, i, c).await {
                    Ok(s) => {
                        if s.when_full == WhenFull::Block {
                            if let Some(e) = &self.events {
                                e.add_blocking_lane(s.name);
                            }
                        }
                        self.sinks.push(s);
                    }
                    Err(e) => {
                        // Its lane (if kept) holds the events until a
                        // later reload starts the sink.
                        tracing::error!(sink = c.name, error = %format!("{e:#}"), "the changed sink did not start");
                        problems.push(format!("{e:#}"));
                    }
                }
            }
        }
    }

    async fn stop_sink(&self, s: RunningSink) {
        self.router.remove_sink(s.name);
        let (wait, name) = (s.running.stop_within, s.name);
        if tokio::time::timeout(wait, (s.running.stop)(wait)).await.is_err() {
            tracing::warn!(sink = name, "the sink did not stop within {wait:?}");
        }
    }

    async fn apply_admin(&mut self, old: &Config, new: &Config) -> anyhow::Result<()> {
        let was = crate::admin::wanted(&old.admin, serves_health(old));
        let wanted = crate::admin::wanted(&new.admin, serves_health(new));
        let same = serde_json::to_value(&old.admin).ok() == serde_json::to_value(&new.admin).ok();
        if was == wanted && same {
            return Ok(());
        }
        if let Some(a) = self.admin.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), a.stop()).await;
        }
        self.admin = self.start_admin(new).await?;
        Ok(())
    }

    fn apply_collectors(&mut self, new: &Config, problems: &mut Vec<String>) {
        let consumers = Self::consumers(new);
        for (i, c) in new.collectors.iter().enumerate() {
            let pos = self.collectors.iter().position(|r| r.name == c.name);
            let fingerprint = reload::collector_fingerprint(new, c, consumers);
            if pos.is_some_and(|p| self.collectors[p].fingerprint == fingerprint) {
                continue;
            }
            if let Some(p) = pos {
                self.collectors.remove(p).stop();
            }
            if !c.enabled {
                self.registry.remove_collector(c.name);
                // Its series go now, not when they would have expired.
                self.router.route(Batch { source: c.name, snapshot: true, ..Default::default() });
                tracing::info!(collector = c.name, "collector stopped");
                continue;
            }
            match self.start_collector(new, i, c) {
                Ok(rc) => self.collectors.push(rc),
                Err(e) => problems.push(format!("{e:#}")),
            }
        }
        self.publish_listeners();
    }

    /// Stops everything: collectors, then the callbacks and the lanes (what
    /// libvirt handed over is routed), then the sinks, each handing over
    /// what it holds (the Prometheus endpoint last).
    pub(crate) async fn stop(mut self) {
        for c in self.collectors.drain(..) {
            let t = c.task;
            t.abort();
            let _ = t.await;
            if let Some(o) = c.own_connection {
                o.abort();
            }
        }
        super::stop_events(&self.manager, self.events.take()).await;
        self.router.close();
        for sink in self.sinks.drain(..).rev() {
            let (wait, name) = (sink.running.stop_within, sink.name);
            if tokio::time::timeout(wait, (sink.running.stop)(wait)).await.is_err() {
                tracing::warn!(sink = name, "the sink did not stop within {wait:?}");
            }
        }
        if let Some(a) = self.admin.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), a.stop()).await;
        }
        self.manager_task.abort();
    }
}

/// Loads and checks the configuration as `--check-config` does, off the
/// async workers (some sink checks run a runtime of their own).
pub(crate) async fn load_checked(path: Option<PathBuf>) -> Result<Config, String> {
    tokio::task::spawn_blocking(move || {
        let cfg = Config::load(path.as_deref(), &crate::registry::schema()).map_err(|e| e.to_string())?;
        super::preflight(&cfg).map_err(|e| format!("configuration error: {e}"))?;
        cfg.selection().map_err(|(k, m)| format!("metrics.{k}: {m}"))?;
        Ok(cfg)
    })
    .await
    .unwrap_or_else(|e| Err(format!("internal error while loading the configuration: {e}")))
}

/// When collector `i`'s first collection runs: each enabled collector is
/// offset by an equal share of the shortest interval. Collectors on one tick
/// would call libvirt at the same instant: the health collector would read
/// each monitor while the agent's own domain stats call occupies it, and
/// report the agent's call as a busy monitor on every cycle.
fn phase(cfg: &Config, i: usize) -> Duration {
    let enabled: Vec<usize> = cfg.collectors.iter().enumerate().filter(|(_, c)| c.enabled).map(|(j, _)| j).collect();
    let shortest = enabled.iter().map(|&j| cfg.schedule(&cfg.collectors[j]).0).min().unwrap_or_default();
    let k = enabled.iter().position(|&j| j == i).unwrap_or(0);
    shortest * k as u32 / enabled.len().max(1) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> Config {
        Config::from_parts(text, "test", &[], &crate::registry::schema()).unwrap()
    }

    fn phases(cfg: &Config) -> Vec<(&'static str, Duration)> {
        cfg.collectors.iter().enumerate().filter(|(_, c)| c.enabled).map(|(i, c)| (c.name, phase(cfg, i))).collect()
    }

    #[test]
    fn collectors_start_apart_within_the_shortest_interval() {
        for text in ["", "[collectors]\ninterval = \"1s\"\n[collectors.jobs]\ninterval = \"1s\"\n[collectors.health]\ninterval = \"1s\"\n"] {
            let cfg = cfg(text);
            let p = phases(&cfg);
            let shortest = cfg.collectors.iter().filter(|c| c.enabled).map(|c| cfg.schedule(c).0).min().unwrap();
            let of = |name: &str| p.iter().find(|(n, _)| *n == name).unwrap().1;
            assert_eq!(of("domain_stats"), Duration::ZERO);
            let mut seen: Vec<Duration> = p.iter().map(|(_, d)| *d).collect();
            seen.dedup();
            assert_eq!(seen.len(), p.len(), "two collectors share a start: {p:?}");
            assert!(p.iter().all(|(_, d)| *d < shortest), "{p:?}");
            // Health reads monitors between domain stats cycles, never at their start.
            let ds = cfg.schedule(cfg.collector("domain_stats").unwrap()).0;
            let offset = of("health").as_nanos() % ds.as_nanos();
            assert!(offset > 0, "health starts with domain stats: {p:?}");
        }
    }
}
