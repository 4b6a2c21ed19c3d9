//! From libvirt's callbacks to the sinks' queues, in lanes.
//!
//! A callback runs on libvirt's event-loop thread and must not wait: it
//! numbers the event (`seq`, continuous for the whole run, reloads
//! included) and offers it to every lane's bounded hand-off queue.
//!
//! - The shared lane feeds the listeners (collectors woken by events) and
//!   every sink that drops when full (Prometheus, OTLP, stdout, a Kafka
//!   sink set to `drop_newest`): it never waits for a sink.
//! - Each sink that blocks when full (Kafka by default) has a lane of its
//!   own, whose processor waits for room in that sink's queue. A slow spool
//!   disk thus fills the sink's queue, then its lane's hand-off queue, and
//!   only then are events dropped, at the callback, counted per lane with a
//!   reason. The other lanes go on meanwhile.
//!
//! So an event is lost on the way to a durable sink only when every bounded
//! buffer in front of its spool is full, and a consumer sees the loss as a
//! gap in `seq` that `virtpulse_events_dropped_total{lane}` accounts for.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::normalize::{to_record, Stamp};
use super::stats::EventStats;
use super::typed::{Event, Listener};
use super::SOURCE;
use crate::filter::DomainFilter;
use crate::libvirt::events::{Family, RawEvent};
use crate::record::kind::KindSpec;
use crate::record::{Batch, Identity};
use crate::router::Router;
use crate::util::live::Live;

/// Events a processor takes from its hand-off queue per batch at most.
const MAX_BATCH: usize = 512;

/// The name of the lane of the listeners and the sinks that drop when full.
pub const SHARED: &str = "shared";

/// Why an event was dropped in front of a lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaneDrop {
    /// The lane's hand-off queue was full (its sink too slow for the rate).
    QueueFull,
    /// The lane was closing (shutdown, or its sink removed for good and not
    /// able to take what was left).
    Stopped,
}

impl LaneDrop {
    pub const ALL: [LaneDrop; 2] = [LaneDrop::QueueFull, LaneDrop::Stopped];

    pub fn as_str(self) -> &'static str {
        match self {
            LaneDrop::QueueFull => "queue_full",
            LaneDrop::Stopped => "stopped",
        }
    }
}

/// One lane's hand-off queue and what went through it.
#[derive(Debug, Default)]
pub struct LaneStats {
    pub capacity: usize,
    depth: AtomicUsize,
    dropped: [AtomicU64; 2],
    routed: AtomicU64,
}

impl LaneStats {
    pub(crate) fn new(capacity: usize) -> Self {
        Self { capacity, ..Default::default() }
    }

    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::Relaxed)
    }

    pub fn dropped(&self, why: LaneDrop) -> u64 {
        self.dropped[why as usize].load(Ordering::Relaxed)
    }

    /// Events this lane handed to its sinks' queues.
    pub fn routed(&self) -> u64 {
        self.routed.load(Ordering::Relaxed)
    }

    fn drop_n(&self, why: LaneDrop, n: u64) {
        self.dropped[why as usize].fetch_add(n, Ordering::Relaxed);
    }

    fn taken(&self, n: usize) {
        let _ = self.depth.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| Some(d.saturating_sub(n)));
    }
}

/// An event with its number in this run.
pub(crate) struct Sequenced {
    pub seq: u64,
    pub raw: RawEvent,
}

struct LaneTx {
    name: &'static str,
    tx: mpsc::Sender<Arc<Sequenced>>,
    stats: Arc<LaneStats>,
}

/// What the callbacks hand events to.
pub(crate) struct Handoff {
    lanes: RwLock<Arc<Vec<LaneTx>>>,
    filter: Live<DomainFilter>,
    seq: AtomicU64,
    stats: Arc<EventStats>,
}

impl Handoff {
    pub(crate) fn new(filter: Live<DomainFilter>, stats: Arc<EventStats>) -> Arc<Self> {
        Arc::new(Self { lanes: RwLock::default(), filter, seq: AtomicU64::new(0), stats })
    }

    /// Called on libvirt's event-loop thread: never waits.
    pub(crate) fn offer(&self, raw: RawEvent) {
        self.stats.received(raw.family.as_str());
        // Domains left out by [domains] include/exclude: their events too,
        // before they are numbered (a gap in seq always means a loss).
        if matches!(raw.family, Family::Domain | Family::QemuMonitor) && !self.filter.get().allows(&raw.object_name) {
            self.stats.excluded();
            return;
        }
        let lanes = self.lanes.read().unwrap_or_else(|e| e.into_inner()).clone();
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let ev = Arc::new(Sequenced { seq, raw });
        for lane in lanes.iter() {
            // Counted before the send: the processor may take it at once.
            lane.stats.depth.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = lane.tx.try_send(ev.clone()) {
                lane.stats.taken(1);
                let why = match e {
                    mpsc::error::TrySendError::Full(_) => LaneDrop::QueueFull,
                    mpsc::error::TrySendError::Closed(_) => LaneDrop::Stopped,
                };
                lane.stats.drop_n(why, 1);
            }
        }
    }

    fn add(&self, lane: LaneTx) {
        let mut lanes = self.lanes.write().unwrap_or_else(|e| e.into_inner());
        let mut next: Vec<LaneTx> = lanes.iter().filter(|l| l.name != lane.name).map(LaneTx::clone_tx).collect();
        next.push(lane);
        *lanes = Arc::new(next);
    }

    /// Stops offering events to the lane (its processor drains what it has).
    fn remove(&self, name: &str) {
        let mut lanes = self.lanes.write().unwrap_or_else(|e| e.into_inner());
        let next: Vec<LaneTx> = lanes.iter().filter(|l| l.name != name).map(LaneTx::clone_tx).collect();
        *lanes = Arc::new(next);
    }

    fn clear(&self) {
        *self.lanes.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(Vec::new());
    }
}

impl LaneTx {
    fn clone_tx(&self) -> LaneTx {
        LaneTx { name: self.name, tx: self.tx.clone(), stats: self.stats.clone() }
    }
}

/// What every processor needs to turn events into records.
#[derive(Clone)]
pub(crate) struct Normalizer {
    pub identity: Live<Identity>,
    pub run_id: Arc<str>,
    pub job_kind: Option<&'static KindSpec>,
}

impl Normalizer {
    fn batch(&self, events: &[Arc<Sequenced>]) -> Batch {
        let identity = self.identity.get();
        let records = events
            .iter()
            .map(|e| {
                let stamp = Stamp { identity: &identity, run_id: &self.run_id, seq: e.seq, job_kind: self.job_kind };
                to_record(&e.raw, stamp)
            })
            .collect();
        Batch { source: SOURCE, snapshot: false, records, ..Default::default() }
    }
}

/// A lane's processor, and how to make it give up.
struct LaneTask {
    handle: JoinHandle<()>,
    give_up: watch::Sender<bool>,
}

/// The lanes: the shared one and one per blocking sink.
pub(crate) struct Lanes {
    handoff: Arc<Handoff>,
    router: Arc<Router>,
    normalizer: Normalizer,
    stats: Arc<EventStats>,
    capacity: usize,
    tasks: Mutex<BTreeMap<&'static str, LaneTask>>,
}

impl Lanes {
    /// The shared lane, running; add the blocking sinks' with `add_blocking`.
    pub(crate) fn start(
        handoff: Arc<Handoff>,
        router: Arc<Router>,
        normalizer: Normalizer,
        stats: Arc<EventStats>,
        capacity: usize,
        listeners: Live<Vec<Arc<dyn Listener>>>,
    ) -> Lanes {
        let lanes = Lanes { handoff, router, normalizer, stats, capacity, tasks: Mutex::default() };
        let (rx, lane) = lanes.open(SHARED);
        let (give_up, _) = watch::channel(false);
        let handle = tokio::spawn(run_shared(
            rx,
            lane,
            lanes.router.clone(),
            lanes.normalizer.clone(),
            lanes.stats.clone(),
            listeners,
        ));
        lanes.tasks.lock().unwrap_or_else(|e| e.into_inner()).insert(SHARED, LaneTask { handle, give_up });
        lanes
    }

    fn open(&self, name: &'static str) -> (mpsc::Receiver<Arc<Sequenced>>, Arc<LaneStats>) {
        let (tx, rx) = mpsc::channel(self.capacity.max(1));
        let stats = self.stats.lane(name, self.capacity);
        self.handoff.add(LaneTx { name, tx, stats: stats.clone() });
        (rx, stats)
    }

    /// Gives the blocking sink `name` a lane of its own (if it has none).
    pub(crate) fn add_blocking(&self, name: &'static str) {
        if self.tasks.lock().unwrap_or_else(|e| e.into_inner()).contains_key(name) {
            return;
        }
        let (rx, lane) = self.open(name);
        let (give_up, give_up_rx) = watch::channel(false);
        let handle =
            tokio::spawn(run_blocking(name, rx, lane, self.router.clone(), self.normalizer.clone(), give_up_rx));
        self.tasks.lock().unwrap_or_else(|e| e.into_inner()).insert(name, LaneTask { handle, give_up });
    }

    pub(crate) fn blocking(&self) -> Vec<&'static str> {
        let tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        tasks.keys().copied().filter(|n| *n != SHARED).collect()
    }

    /// Closes the lane `name`: no new events enter it, its processor hands
    /// what it holds to the sink (still routed) within `wait`, then gives up
    /// and counts the rest as dropped (`stopped`).
    pub(crate) async fn close(&self, name: &str, wait: Duration) {
        self.handoff.remove(name);
        let task = self.tasks.lock().unwrap_or_else(|e| e.into_inner()).remove_entry(name);
        if let Some((name, t)) = task {
            finish(name, t, wait).await;
        }
    }

    /// Closes every lane (shutdown), each within `wait`.
    pub(crate) async fn close_all(&self, wait: Duration) {
        self.handoff.clear();
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        let all: Vec<_> = tasks.into_iter().map(|(name, t)| tokio::spawn(finish(name, t, wait))).collect();
        for t in all {
            let _ = t.await;
        }
    }
}

async fn finish(name: &'static str, mut t: LaneTask, wait: Duration) {
    if tokio::time::timeout(wait, &mut t.handle).await.is_ok() {
        return;
    }
    t.give_up.send_replace(true);
    if tokio::time::timeout(Duration::from_secs(1), &mut t.handle).await.is_err() {
        t.handle.abort();
    }
    tracing::warn!(
        lane = name,
        "the event lane did not drain within {wait:?}; what was left is counted as dropped (stopped)"
    );
}

/// The shared lane: listeners, then every sink that drops when full.
async fn run_shared(
    mut rx: mpsc::Receiver<Arc<Sequenced>>,
    lane: Arc<LaneStats>,
    router: Arc<Router>,
    normalizer: Normalizer,
    stats: Arc<EventStats>,
    listeners: Live<Vec<Arc<dyn Listener>>>,
) {
    let mut buf = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut buf, MAX_BATCH).await > 0 {
        lane.taken(buf.len());
        let listeners = listeners.get();
        for ev in &buf {
            stats.delayed(ev.raw.at.elapsed());
            let typed = Event::of(&ev.raw);
            for l in listeners.iter() {
                l.on_event(&typed);
            }
        }
        let batch = normalizer.batch(&buf);
        let n = buf.len() as u64;
        buf.clear();
        router.route(batch);
        lane.routed.fetch_add(n, Ordering::Relaxed);
        stats.processed(n);
    }
}

/// A blocking sink's lane: waits for room in that sink's queue.
async fn run_blocking(
    name: &'static str,
    mut rx: mpsc::Receiver<Arc<Sequenced>>,
    lane: Arc<LaneStats>,
    router: Arc<Router>,
    normalizer: Normalizer,
    mut give_up: watch::Receiver<bool>,
) {
    let mut buf = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut buf, MAX_BATCH).await > 0 {
        lane.taken(buf.len());
        let n = buf.len() as u64;
        let batch = Arc::new(normalizer.batch(&buf));
        buf.clear();
        match router.deliver(name, batch, &mut give_up).await {
            Ok(()) => {
                lane.routed.fetch_add(n, Ordering::Relaxed);
            }
            Err(_) => {
                // Told to give up with the sink gone: this batch and what is
                // still queued are lost, counted.
                rx.close();
                let mut left = n;
                while rx.try_recv().is_ok() {
                    lane.taken(1);
                    left += 1;
                }
                lane.drop_n(LaneDrop::Stopped, left);
                tracing::error!(
                    lane = name,
                    events = left,
                    "events could not be handed to the sink before it stopped; counted in virtpulse_events_dropped_total{{reason=\"stopped\"}}"
                );
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::WhenFull;
    use crate::selfmon::SinkStats;
    use std::time::{Instant, SystemTime};

    fn raw(name: &str) -> RawEvent {
        RawEvent {
            family: Family::Domain,
            event_id: 0,
            name: "lifecycle",
            object_name: name.into(),
            object_uuid: "u".into(),
            fields: Vec::new(),
            time: SystemTime::now(),
            at: Instant::now(),
        }
    }

    fn setup(capacity: usize, filter: &str) -> (Arc<Handoff>, Arc<Router>, Lanes, Arc<EventStats>) {
        let stats = EventStats::new(capacity);
        let spec = crate::config::DomainsConfig { include: vec![], exclude: vec![filter.to_string()] };
        let filter = Live::new(spec.filter().unwrap());
        let handoff = Handoff::new(filter, stats.clone());
        let router = Arc::new(Router::new());
        let normalizer = Normalizer {
            identity: Live::new(Identity { host: "h".into(), uri: "u".into() }),
            run_id: Arc::from("r"),
            job_kind: None,
        };
        let lanes = Lanes::start(handoff.clone(), router.clone(), normalizer, stats.clone(), capacity, Live::default());
        (handoff, router, lanes, stats)
    }

    #[tokio::test]
    async fn a_blocking_sink_holds_events_back_and_drops_only_when_its_lane_is_full() {
        let (handoff, router, lanes, stats) = setup(4, "excluded");
        let kafka = SinkStats::new("kafka", 1);
        let mut kq = router.add_sink(kafka.clone(), WhenFull::Block);
        let prom = SinkStats::new("prometheus", 64);
        let mut pq = router.add_sink(prom.clone(), WhenFull::DropNewest);
        lanes.add_blocking("kafka");
        // Nobody drains Kafka: its queue (1 batch) and lane (4 events) fill.
        handoff.offer(raw("excluded"));
        let mut offered = 0u64;
        for i in 0..40 {
            handoff.offer(raw(&format!("vm{i}")));
            offered += 1;
            tokio::task::yield_now().await;
        }
        let kafka_lane = stats.lane("kafka", 4);
        crate::util::test::eventually(|| kafka_lane.dropped(LaneDrop::QueueFull) > 0).await;
        // The shared lane went on: Prometheus got every event.
        let mut to_prom = 0;
        while to_prom < offered {
            to_prom += pq.recv().await.unwrap().records.len() as u64;
        }
        assert_eq!(to_prom, offered);
        assert_eq!(stats.excluded_total(), 1);
        // Kafka: what it gets plus what was dropped is everything, and the
        // seq numbers it gets are increasing with gaps exactly where drops were.
        let drain = tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Some(b) = kq.recv().await {
                seen.extend(b.records.iter().map(|r| r.event.as_ref().unwrap().seq));
            }
            seen
        });
        lanes.close("kafka", Duration::from_secs(5)).await;
        router.remove_sink("kafka");
        let seen = drain.await.unwrap();
        let dropped = kafka_lane.dropped(LaneDrop::QueueFull) + kafka_lane.dropped(LaneDrop::Stopped);
        assert_eq!(seen.len() as u64 + dropped, offered, "delivered {seen:?}, dropped {dropped}");
        assert!(seen.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(kafka.dropped_records(), 0, "the router never drops a blocking sink's events");
        assert_eq!(prom.dropped_records(), 0);
    }

    #[tokio::test]
    async fn a_replaced_sink_gets_the_events_queued_meanwhile() {
        let (handoff, router, lanes, stats) = setup(64, "no-such-domain");
        let old = router.add_sink(SinkStats::new("kafka", 8), WhenFull::Block);
        lanes.add_blocking("kafka");
        router.remove_sink("kafka");
        drop(old);
        for i in 0..10 {
            handoff.offer(raw(&format!("vm{i}")));
        }
        let mut new = router.add_sink(SinkStats::new("kafka", 8), WhenFull::Block);
        let mut n = 0;
        while n < 10 {
            n += new.recv().await.unwrap().records.len();
        }
        assert_eq!(stats.lane("kafka", 64).dropped(LaneDrop::QueueFull), 0);
        lanes.close_all(Duration::from_secs(1)).await;
    }

    #[tokio::test]
    async fn closing_a_lane_whose_sink_is_gone_counts_what_was_left() {
        let (handoff, _router, lanes, stats) = setup(64, "no-such-domain");
        lanes.add_blocking("kafka");
        for i in 0..5 {
            handoff.offer(raw(&format!("vm{i}")));
        }
        lanes.close("kafka", Duration::from_millis(50)).await;
        let lane = stats.lane("kafka", 64);
        assert_eq!(lane.dropped(LaneDrop::Stopped), 5);
        assert_eq!(lane.depth(), 0);
    }
}
