//! libvirt events: every callback the daemon offers (domain, network,
//! storage pool, node device, secret; QEMU monitor events on request),
//! registered on each connection, normalized into records and routed to the
//! sinks like everything else.
//!
//! Callbacks run on the libvirt event-loop thread and only `try_send` into a
//! bounded queue; a full queue is counted, never waited on. After every
//! (re)connect, all callbacks are registered again and one `resync` record
//! per domain tells consumers the state the agent finds.

pub(crate) mod names;
pub mod normalize;
mod stats;
pub(crate) mod typed;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::filter::DomainFilter;
use crate::libvirt::events::{EventSink, Family, RawEvent};
use crate::libvirt::stats::FLAG_NOWAIT;
use crate::libvirt::typed_params::KeyInterner;
use crate::libvirt::{ConnectionManager, Session};
use crate::record::kind::KindSpec;
use crate::record::Batch;
use crate::record::Identity;
use crate::router::Router;
use crate::util::throttle::LogOnce;
use crate::value::TypedValue;
use normalize::{to_record, Stamp};
pub use stats::{EventStats, METRICS};
pub use typed::{Event, Listener};

pub const SOURCE: &str = "events";

/// Events taken from the queue per batch at most.
const MAX_BATCH: usize = 512;

pub struct Settings {
    pub queue_capacity: usize,
    pub qemu_monitor: bool,
    pub resync: bool,
    /// The kind whose table gives the units of job statistics.
    pub job_kind: Option<&'static KindSpec>,
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
    refused_logged: &mut LogOnce,
) {
    let results = session.conn.register_events(sink, settings.qemu_monitor);
    let mut table = BTreeMap::new();
    let mut ok = 0;
    for r in &results {
        table.insert((r.family.as_str(), r.name), r.result.is_ok());
        match &r.result {
            Ok(_) => ok += 1,
            Err(e) => {
                if refused_logged.first(&format!("{}:{}", r.family.as_str(), r.name)) {
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
    listeners: Vec<Arc<dyn Listener>>,
    identity: Identity,
    filter: Arc<DomainFilter>,
    stats: Arc<EventStats>,
) -> EventTasks {
    let (tx, mut rx) = mpsc::channel::<RawEvent>(settings.queue_capacity.max(1));
    let sink = make_sink(tx, stats.clone());
    let job_kind = settings.job_kind;
    let settings = Arc::new(settings);

    let registrar = {
        let stats = stats.clone();
        tokio::spawn(async move {
            let mut sessions = manager.subscribe();
            let mut done_generation = 0;
            let mut refused_logged = LogOnce::default();
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
                let typed = Event::of(&ev);
                for l in &listeners {
                    l.on_event(&typed);
                }
                seq += 1;
                records.push(to_record(ev, Stamp { identity: &identity, run_id: &run, seq, job_kind }));
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
