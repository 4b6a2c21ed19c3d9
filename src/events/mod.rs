//! libvirt events: every callback the daemon offers (domain, network,
//! storage pool, node device, secret; QEMU monitor events on request),
//! registered on each connection, normalized into records and routed to the
//! sinks like everything else.
//!
//! Callbacks run on the libvirt event-loop thread and only offer the event
//! to the lanes' bounded hand-off queues (`lanes`); a full queue is
//! counted, never waited on there, while a durable sink's lane waits for its
//! sink. After every (re)connect, all callbacks are registered again and one
//! `resync` record per domain tells consumers the state the agent finds.

pub(crate) mod lanes;
pub(crate) mod names;
pub mod normalize;
mod stats;
pub(crate) mod typed;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tokio::task::JoinHandle;

use crate::filter::DomainFilter;
use crate::libvirt::events::{EventSink, Family, RawEvent};
use crate::libvirt::stats::FLAG_NOWAIT;
use crate::libvirt::typed_params::KeyInterner;
use crate::libvirt::{ConnectionManager, Session};
use crate::record::kind::KindSpec;
use crate::record::Identity;
use crate::router::Router;
use crate::util::live::Live;
use crate::util::throttle::LogOnce;
use crate::value::TypedValue;
use lanes::{Handoff, Lanes, Normalizer};
pub use lanes::{LaneDrop, LaneStats, SHARED};
pub use stats::{EventStats, METRICS};
pub use typed::{Event, Listener};

pub const SOURCE: &str = "events";

pub struct Settings {
    /// Each lane's hand-off queue, in events.
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

/// What the event subsystem reads that a reload may replace.
pub struct Inputs {
    pub manager: Arc<ConnectionManager>,
    pub router: Arc<Router>,
    /// The collectors' event listeners (a reload rebuilds collectors).
    pub listeners: Live<Vec<Arc<dyn Listener>>>,
    pub identity: Live<Identity>,
    pub filter: Live<DomainFilter>,
    pub stats: Arc<EventStats>,
}

/// Starts the registrar and the lanes: the shared one and one per sink the
/// router says blocks when full.
pub fn start(settings: Settings, inputs: Inputs) -> EventTasks {
    let Inputs { manager, router, listeners, identity, filter, stats } = inputs;
    let handoff = Handoff::new(filter, stats.clone());
    let normalizer = Normalizer { identity, run_id: Arc::from(run_id()), job_kind: settings.job_kind };
    let lanes =
        Lanes::start(handoff.clone(), router.clone(), normalizer, stats.clone(), settings.queue_capacity, listeners);
    for name in router.blocking_sinks() {
        lanes.add_blocking(name);
    }
    let sink: EventSink = {
        let handoff = handoff.clone();
        Arc::new(move |ev: RawEvent| handoff.offer(ev))
    };
    let settings = Arc::new(settings);
    let registrar = tokio::spawn(async move {
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
    });
    EventTasks { registrar, lanes }
}

/// The event subsystem's tasks.
pub struct EventTasks {
    registrar: JoinHandle<()>,
    lanes: Lanes,
}

impl EventTasks {
    /// Gives a sink that blocks when full (just added) a lane of its own.
    pub fn add_blocking_lane(&self, sink: &'static str) {
        self.lanes.add_blocking(sink);
    }

    /// Closes a blocking sink's lane before the sink goes: what it holds is
    /// handed to the sink within `wait`.
    pub async fn close_lane(&self, sink: &str, wait: std::time::Duration) {
        self.lanes.close(sink, wait).await;
    }

    /// The sinks that have a lane of their own.
    pub fn blocking_lanes(&self) -> Vec<&'static str> {
        self.lanes.blocking()
    }

    /// Stops registering; routes the events already handed over (each lane
    /// within `wait`), then ends. Call after the callbacks were deregistered.
    pub async fn shutdown(self, wait: std::time::Duration) {
        self.registrar.abort();
        self.lanes.close_all(wait).await;
    }
}
