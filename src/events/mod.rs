//! libvirt events: every callback the daemon offers (domain, network,
//! storage pool, node device, secret; QEMU monitor events on request),
//! registered on each connection, normalized into records and routed to the
//! sinks like everything else.
//!
//! Callbacks run on the libvirt event-loop thread and only `try_send` into a
//! bounded queue; a full queue is counted, never waited on. After every
//! (re)connect, all callbacks are registered again and one `resync` record
//! per domain tells consumers the state the agent finds.

pub mod names;
pub mod normalize;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::collectors::controller::Wake;
use crate::collectors::Identity;
use crate::filter::DomainFilter;
use crate::libvirt::events::{EventSink, Family, RawEvent};
use crate::libvirt::stats::FLAG_NOWAIT;
use crate::libvirt::typed_params::KeyInterner;
use crate::libvirt::{ConnectionManager, Session, TypedValue};
use crate::record::Batch;
use crate::router::Router;
use normalize::{to_record, Stamp};

pub const SOURCE: &str = "events";

/// Events taken from the queue per batch at most.
const MAX_BATCH: usize = 512;

/// The hand-off queue and what went through it.
#[derive(Debug, Default)]
pub struct EventStats {
    pub capacity: usize,
    received: Mutex<BTreeMap<&'static str, u64>>,
    dropped: AtomicU64,
    depth: AtomicUsize,
    processed: AtomicU64,
    delay_ns_total: AtomicU64,
    delay_ns_max: AtomicU64,
    resyncs: AtomicU64,
    /// (family, callback) -> registered on the current connection?
    registrations: Mutex<BTreeMap<(&'static str, &'static str), bool>>,
}

impl EventStats {
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self { capacity, ..Default::default() })
    }

    pub fn received(&self) -> BTreeMap<&'static str, u64> {
        self.received.lock().map(|m| m.clone()).unwrap_or_default()
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::Relaxed)
    }

    pub fn processed(&self) -> u64 {
        self.processed.load(Ordering::Relaxed)
    }

    /// Total and longest time events waited between the callback and routing.
    pub fn delay_seconds(&self) -> (f64, f64) {
        (
            self.delay_ns_total.load(Ordering::Relaxed) as f64 / 1e9,
            self.delay_ns_max.load(Ordering::Relaxed) as f64 / 1e9,
        )
    }

    pub fn resyncs(&self) -> u64 {
        self.resyncs.load(Ordering::Relaxed)
    }

    pub fn registrations(&self) -> BTreeMap<(&'static str, &'static str), bool> {
        self.registrations.lock().map(|m| m.clone()).unwrap_or_default()
    }
}

/// Lifecycle transitions that end a job (libvirt's lifecycle enums): the
/// domain was saved, restored, migrated or reverted to a snapshot.
fn ends_a_job(ev: &RawEvent) -> bool {
    let code = |key: &str| {
        ev.fields.iter().find(|(k, _)| &**k == key).and_then(|(_, v)| match v {
            TypedValue::Int(i) => Some(*i),
            _ => None,
        })
    };
    matches!(
        (code("event"), code("detail")),
        // STARTED: MIGRATED, RESTORED, FROM_SNAPSHOT
        (Some(2), Some(1..=3))
        // SUSPENDED: MIGRATED, RESTORED, FROM_SNAPSHOT, POSTCOPY, POSTCOPY_FAILED
        | (Some(3), Some(1 | 4 | 5 | 7 | 8))
        // RESUMED: MIGRATED, FROM_SNAPSHOT, POSTCOPY, POSTCOPY_FAILED
        | (Some(4), Some(1..=4))
        // STOPPED: MIGRATED, SAVED, FROM_SNAPSHOT
        | (Some(5), Some(3 | 4 | 6))
    )
}

/// What events make the rest of the agent do.
#[derive(Clone, Default)]
pub struct Hooks {
    /// Collect domain stats now (a domain started, stopped, vanished...).
    pub domain_stats: Option<Wake>,
    /// Read jobs now (migration iteration, job completed).
    pub jobs: Option<Wake>,
    /// Re-read these domains' XML (defined, metadata changed).
    pub info: Option<Arc<Mutex<HashSet<String>>>>,
    /// Completed jobs, straight from `job_completed` events.
    pub job_inbox: Option<crate::collectors::jobs::JobInbox>,
}

impl Hooks {
    /// Asks the jobs collector to read this domain's jobs at once.
    fn read_jobs_of(&self, uuid: &str) {
        if let Some(inbox) = &self.job_inbox {
            let mut news = inbox.lock().unwrap_or_else(|e| e.into_inner());
            if news.read_now.len() < crate::collectors::jobs::MAX_NEWS {
                news.read_now.insert(uuid.to_string());
            }
        }
        if let Some(w) = &self.jobs {
            w.now();
        }
    }

    fn react(&self, ev: &RawEvent) {
        if ev.family != Family::Domain {
            return;
        }
        match ev.name {
            "lifecycle" => {
                if let Some(w) = &self.domain_stats {
                    w.now();
                }
                let defined = ev.fields.iter().any(|(k, v)| &**k == "event" && *v == TypedValue::Int(0));
                if defined {
                    self.invalidate(&ev.object_uuid);
                }
                if ends_a_job(ev) {
                    // A save, snapshot or migration can be over before a
                    // poll sees it running: read its completed job now.
                    self.read_jobs_of(&ev.object_uuid);
                }
            }
            "metadata_change" | "tunable" | "device_added" | "device_removed" | "balloon_change" => {
                self.invalidate(&ev.object_uuid);
                if let Some(w) = &self.domain_stats {
                    w.now();
                }
            }
            "job_completed" | "migration_iteration" => {
                if let Some(inbox) = &self.job_inbox {
                    let mut news = inbox.lock().unwrap_or_else(|e| e.into_inner());
                    if ev.name == "job_completed" {
                        if news.completed.len() < crate::collectors::jobs::MAX_NEWS {
                            news.completed.push(crate::collectors::jobs::CompletedEvent {
                                name: ev.object_name.clone(),
                                uuid: ev.object_uuid.clone(),
                                params: ev.fields.clone(),
                            });
                        }
                    } else if news.read_now.len() < crate::collectors::jobs::MAX_NEWS {
                        news.read_now.insert(ev.object_uuid.clone());
                    }
                }
                if let Some(w) = &self.jobs {
                    w.now();
                }
            }
            _ => {}
        }
    }

    fn invalidate(&self, uuid: &str) {
        if let Some(set) = &self.info {
            if let Ok(mut s) = set.lock() {
                s.insert(uuid.to_string());
            }
        }
    }
}

pub struct Settings {
    pub queue_capacity: usize,
    pub qemu_monitor: bool,
    pub resync: bool,
}

/// A random id for this agent run, so event ids stay unique across restarts.
fn run_id() -> String {
    let mut bytes = [0u8; 8];
    let ok =
        std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes)).is_ok();
    if !ok {
        let t = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_nanos() as u64;
        bytes = (t ^ u64::from(std::process::id())).to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn make_sink(tx: mpsc::Sender<RawEvent>, stats: Arc<EventStats>) -> EventSink {
    Arc::new(move |ev: RawEvent| {
        let family = ev.family.as_str();
        match tx.try_send(ev) {
            Ok(()) => {
                stats.depth.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut m) = stats.received.lock() {
                    *m.entry(family).or_default() += 1;
                }
            }
            Err(_) => {
                stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    })
}

/// Registers every callback on a new connection, then emits resync records.
fn register_and_resync(
    session: &Session,
    sink: &EventSink,
    settings: &Settings,
    stats: &EventStats,
    refused_logged: &mut HashSet<String>,
) {
    let results = session.conn.register_events(sink, settings.qemu_monitor);
    let mut table = BTreeMap::new();
    let mut ok = 0;
    for r in &results {
        table.insert((r.family.as_str(), r.name), r.result.is_ok());
        match &r.result {
            Ok(_) => ok += 1,
            Err(e) => {
                if refused_logged.insert(format!("{}:{}", r.family.as_str(), r.name)) {
                    tracing::info!(family = r.family.as_str(), event = r.name, error = %e, "the daemon does not offer this event; not registered");
                }
            }
        }
    }
    tracing::info!(
        registered = ok,
        refused = results.len() - ok,
        generation = session.generation,
        "event callbacks registered"
    );
    if let Ok(mut t) = stats.registrations.lock() {
        *t = table;
    }
    if !settings.resync {
        return;
    }
    let state = crate::libvirt::stats::ALL_GROUPS.iter().find(|g| g.name == "state").map(|g| g.bit).unwrap_or(1);
    match session.conn.all_domain_stats(state, FLAG_NOWAIT, &mut KeyInterner::default()) {
        Ok(domains) => {
            let now = SystemTime::now();
            for d in domains {
                let fields: Vec<(Arc<str>, TypedValue)> = ["state.state", "state.reason"]
                    .iter()
                    .filter_map(|k| d.params.get(k).map(|v| (Arc::from(k.trim_start_matches("state.")), v.clone())))
                    .collect();
                sink(RawEvent {
                    family: Family::Domain,
                    event_id: -1,
                    name: "resync",
                    object_name: d.name,
                    object_uuid: d.uuid,
                    fields,
                    time: now,
                    at: Instant::now(),
                });
            }
            stats.resyncs.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => tracing::warn!(error = %e, "cannot list domains for the resync records"),
    }
}

/// Starts the registrar and the processor. Returns their tasks.
pub fn start(
    settings: Settings,
    manager: Arc<ConnectionManager>,
    router: Arc<Router>,
    hooks: Hooks,
    identity: Identity,
    filter: Arc<DomainFilter>,
    stats: Arc<EventStats>,
) -> EventTasks {
    let (tx, mut rx) = mpsc::channel::<RawEvent>(settings.queue_capacity.max(1));
    let sink = make_sink(tx, stats.clone());
    let settings = Arc::new(settings);

    let registrar = {
        let stats = stats.clone();
        tokio::spawn(async move {
            let mut sessions = manager.subscribe();
            let mut done_generation = 0;
            let mut refused_logged = HashSet::new();
            loop {
                let current = sessions.borrow_and_update().clone();
                if let Some(session) = current.filter(|s| s.generation != done_generation) {
                    done_generation = session.generation;
                    let (sink, settings, stats) = (sink.clone(), settings.clone(), stats.clone());
                    let logged = std::mem::take(&mut refused_logged);
                    let result = tokio::task::spawn_blocking(move || {
                        let mut logged = logged;
                        register_and_resync(&session, &sink, &settings, &stats, &mut logged);
                        logged
                    })
                    .await;
                    if let Ok(logged) = result {
                        refused_logged = logged;
                    }
                }
                if sessions.changed().await.is_err() {
                    return;
                }
            }
        })
    };

    let stop = Arc::new(tokio::sync::Notify::new());
    let stop_rx = stop.clone();
    let processor = tokio::spawn(async move {
        let run = run_id();
        let mut seq: u64 = 0;
        let mut buf: Vec<RawEvent> = Vec::with_capacity(MAX_BATCH);
        let mut stopping = false;
        loop {
            tokio::select! {
                biased;
                _ = stop_rx.notified() => {
                    // Whatever libvirt handed over before the callbacks went
                    // away is still routed (the Kafka sink spools it).
                    rx.close();
                    while let Ok(ev) = rx.try_recv() {
                        buf.push(ev);
                    }
                    stopping = true;
                }
                n = rx.recv_many(&mut buf, MAX_BATCH) => {
                    if n == 0 {
                        return;
                    }
                }
            }
            let n = buf.len();
            stats.depth.fetch_sub(n.min(stats.depth()), Ordering::Relaxed);
            let mut records = Vec::with_capacity(n);
            for ev in buf.drain(..) {
                // Domains left out by [domains] include/exclude: their events too.
                if matches!(ev.family, Family::Domain | Family::QemuMonitor) && !filter.allows(&ev.object_name) {
                    continue;
                }
                let delay = ev.at.elapsed().as_nanos() as u64;
                stats.delay_ns_total.fetch_add(delay, Ordering::Relaxed);
                stats.delay_ns_max.fetch_max(delay, Ordering::Relaxed);
                hooks.react(&ev);
                seq += 1;
                records.push(to_record(ev, Stamp { host: &identity.host, uri: &identity.uri, run_id: &run, seq }));
            }
            stats.processed.fetch_add(n as u64, Ordering::Relaxed);
            if !records.is_empty() {
                router.route(Batch { source: SOURCE, snapshot: false, records, ..Default::default() });
            }
            if stopping {
                return;
            }
        }
    });
    EventTasks { registrar, processor, stop }
}

/// The event subsystem's tasks.
pub struct EventTasks {
    registrar: JoinHandle<()>,
    processor: JoinHandle<()>,
    stop: Arc<tokio::sync::Notify>,
}

impl EventTasks {
    /// Stops registering; routes the events already handed over, then ends.
    /// Call after the callbacks were deregistered.
    pub async fn shutdown(self, wait: std::time::Duration) {
        self.registrar.abort();
        self.stop.notify_one();
        if tokio::time::timeout(wait, self.processor).await.is_err() {
            tracing::warn!("the event processor did not finish routing within {wait:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lifecycle(event: i32, detail: i32) -> RawEvent {
        RawEvent {
            family: Family::Domain,
            event_id: 0,
            name: "lifecycle",
            object_name: "vm".into(),
            object_uuid: "u".into(),
            fields: vec![(Arc::from("event"), TypedValue::Int(event)), (Arc::from("detail"), TypedValue::Int(detail))],
            time: std::time::SystemTime::now(),
            at: std::time::Instant::now(),
        }
    }

    #[test]
    fn saves_restores_and_migrations_end_jobs_plain_starts_and_stops_do_not() {
        assert!(ends_a_job(&lifecycle(5, 4)), "stopped: saved");
        assert!(ends_a_job(&lifecycle(2, 2)), "started: restored");
        assert!(ends_a_job(&lifecycle(3, 1)), "suspended: migrated");
        assert!(!ends_a_job(&lifecycle(5, 1)), "stopped: destroyed");
        assert!(!ends_a_job(&lifecycle(2, 0)), "started: booted");
        assert!(!ends_a_job(&lifecycle(3, 0)), "suspended: paused");
    }

    #[test]
    fn a_save_asks_the_jobs_collector_for_that_domain() {
        let inbox: crate::collectors::jobs::JobInbox = Default::default();
        let hooks = Hooks { job_inbox: Some(inbox.clone()), ..Default::default() };
        hooks.react(&lifecycle(5, 4));
        assert!(inbox.lock().unwrap().read_now.contains("u"));
        hooks.react(&lifecycle(5, 1));
        assert_eq!(inbox.lock().unwrap().read_now.len(), 1);
    }
}
