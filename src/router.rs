//! Fans batches out to sinks. Each sink has its own bounded queue, and a
//! policy for events when it is full (Vector's `buffer.when_full`):
//!
//! - `DropNewest`: the batch is dropped for that sink only (counted with a
//!   reason); metric snapshots always go this way, for every sink, so a
//!   slow sink never stalls a collector or another sink.
//! - `Block`: events reach the sink through a lane of its own (see
//!   `crate::events::lanes`) that waits for room, so pressure flows back to
//!   the hand-off from libvirt's callbacks instead of losing events here.
//!
//! Sinks come and go while the agent runs (a reload): a removed sink's
//! queue closes once the router and its lane let go of it, and the sink
//! hands over what it holds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use tokio::sync::{mpsc, watch};

use crate::record::Batch;
use crate::selfmon::{DropReason, DropStream, SinkStats};
use crate::util::throttle::Throttle;

/// Drops are counted every time; the warning shows once a minute per sink.
static DROP_WARNINGS: Throttle = Throttle::new(std::time::Duration::from_secs(60));

/// What a sink's queue does with events when it is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Wait for room (events only; at least once from the hand-off on).
    Block,
    /// Drop the newest batch, counted.
    #[default]
    DropNewest,
}

impl WhenFull {
    pub fn as_str(self) -> &'static str {
        match self {
            WhenFull::Block => "block",
            WhenFull::DropNewest => "drop_newest",
        }
    }
}

/// The receiving end a sink task drains.
pub struct SinkQueue {
    pub rx: mpsc::Receiver<Arc<Batch>>,
    pub stats: Arc<SinkStats>,
}

impl SinkQueue {
    /// Next batch, or `None` once the router (and the sink's event lane)
    /// let go of the queue: shutdown, or the sink was removed.
    pub async fn recv(&mut self) -> Option<Arc<Batch>> {
        let b = self.rx.recv().await;
        if b.is_some() {
            self.stats.dequeued();
        }
        b
    }

    /// The next batch if one is waiting (never blocks).
    pub fn try_recv(&mut self) -> Option<Arc<Batch>> {
        let b = self.rx.try_recv().ok();
        if b.is_some() {
            self.stats.dequeued();
        }
        b
    }

    /// Blocking variant for sinks that run on their own OS thread.
    pub fn blocking_recv(&mut self) -> Option<Arc<Batch>> {
        let b = self.rx.blocking_recv();
        if b.is_some() {
            self.stats.dequeued();
        }
        b
    }
}

struct Route {
    tx: mpsc::Sender<Arc<Batch>>,
    stats: Arc<SinkStats>,
    events: WhenFull,
}

pub struct Router {
    routes: RwLock<Vec<Route>>,
    /// Bumped whenever a sink is added or removed (lanes wait on it).
    changes: watch::Sender<u64>,
    version: AtomicU64,
}

impl Default for Router {
    fn default() -> Self {
        Self { routes: RwLock::default(), changes: watch::channel(0).0, version: AtomicU64::new(0) }
    }
}

impl Router {
    pub fn new() -> Self {
        Self::default()
    }

    fn changed(&self) {
        let v = self.version.fetch_add(1, Ordering::Relaxed) + 1;
        self.changes.send_replace(v);
    }

    /// Adds a sink with a queue of `stats.capacity` batches. A sink of the
    /// same name is replaced (its queue closes).
    pub fn add_sink(&self, stats: Arc<SinkStats>, events: WhenFull) -> SinkQueue {
        let (tx, rx) = mpsc::channel(stats.capacity.max(1));
        {
            let mut routes = self.routes.write().unwrap_or_else(|e| e.into_inner());
            routes.retain(|r| r.stats.name != stats.name);
            routes.push(Route { tx, stats: stats.clone(), events });
        }
        self.changed();
        SinkQueue { rx, stats }
    }

    /// Lets go of a sink's queue: it closes once whatever else holds it (its
    /// event lane) lets go too, and the sink drains what is queued.
    pub fn remove_sink(&self, name: &str) -> bool {
        let removed = {
            let mut routes = self.routes.write().unwrap_or_else(|e| e.into_inner());
            let before = routes.len();
            routes.retain(|r| r.stats.name != name);
            routes.len() != before
        };
        if removed {
            self.changed();
        }
        removed
    }

    /// Lets go of every queue (shutdown).
    pub fn close(&self) {
        self.routes.write().unwrap_or_else(|e| e.into_inner()).clear();
        self.changed();
    }

    /// Never blocks. A metric snapshot goes to every sink; events to those
    /// that drop when full (the others have a lane of their own). A full
    /// queue drops the batch for that sink only, counted.
    pub fn route(&self, batch: Batch) {
        let n = batch.records.len() as u64;
        let events_only = !batch.snapshot;
        let stream = if events_only { DropStream::Events } else { DropStream::Metrics };
        let batch = Arc::new(batch);
        let routes = self.routes.read().unwrap_or_else(|e| e.into_inner());
        for r in routes.iter().filter(|r| !(events_only && r.events == WhenFull::Block)) {
            // Counted before the send: the sink may take the batch at once.
            r.stats.enqueued();
            match r.tx.try_send(batch.clone()) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    r.stats.dequeued();
                    r.stats.dropped(stream, DropReason::QueueFull, n);
                    if let Some(held_back) = DROP_WARNINGS.allow(r.stats.name) {
                        tracing::warn!(sink = r.stats.name, records = n, earlier_drops_not_logged = held_back, "sink queue full; batch dropped (counted in virtpulse_sink_records_dropped_total; this warning shows once a minute)");
                    }
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    r.stats.dequeued();
                    r.stats.dropped(stream, DropReason::Stopped, n);
                    if let Some(held_back) = DROP_WARNINGS.allow(&format!("{}/stopped", r.stats.name)) {
                        tracing::error!(
                            sink = r.stats.name,
                            records = n,
                            earlier_drops_not_logged = held_back,
                            "sink stopped; batch dropped"
                        );
                    }
                }
            }
        }
    }

    /// The sinks whose events go through a lane of their own.
    pub fn blocking_sinks(&self) -> Vec<&'static str> {
        let routes = self.routes.read().unwrap_or_else(|e| e.into_inner());
        routes.iter().filter(|r| r.events == WhenFull::Block).map(|r| r.stats.name).collect()
    }

    fn sender(&self, name: &str) -> Option<(mpsc::Sender<Arc<Batch>>, Arc<SinkStats>)> {
        let routes = self.routes.read().unwrap_or_else(|e| e.into_inner());
        routes.iter().find(|r| r.stats.name == name).map(|r| (r.tx.clone(), r.stats.clone()))
    }

    /// Hands an event batch to the sink `name`, waiting for room in its
    /// queue and, while the sink is being replaced, for its successor.
    /// Returns the batch if `give_up` resolves first (the lane is being
    /// closed and the sink is gone for good).
    pub async fn deliver(
        &self,
        name: &str,
        mut batch: Arc<Batch>,
        give_up: &mut watch::Receiver<bool>,
    ) -> Result<(), Arc<Batch>> {
        let mut changes = self.changes.subscribe();
        loop {
            if let Some((tx, stats)) = self.sender(name) {
                stats.enqueued();
                match tx.send(batch).await {
                    Ok(()) => return Ok(()),
                    // Replaced while we waited: try its successor.
                    Err(mpsc::error::SendError(b)) => {
                        stats.dequeued();
                        batch = b;
                    }
                }
            }
            if *give_up.borrow() {
                return Err(batch);
            }
            tokio::select! {
                r = changes.changed() => if r.is_err() { return Err(batch) },
                r = give_up.changed() => if r.is_err() { return Err(batch) },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(n: usize) -> Batch {
        batch_of(n, true)
    }

    fn batch_of(n: usize, snapshot: bool) -> Batch {
        use crate::record::*;
        Batch {
            source: "t",
            snapshot,
            records: (0..n)
                .map(|_| {
                    let identity = Identity { host: "h".into(), uri: "u".into() };
                    Record::new(&identity, RecordKind::of(&EVENT), std::time::SystemTime::now())
                })
                .collect(),
            ttl: None,
            retained: Vec::new(),
            lists_every_domain: false,
        }
    }

    #[tokio::test]
    async fn full_queue_drops_only_for_that_sink() {
        let router = Router::new();
        let slow = SinkStats::new("slow", 1);
        let fast = SinkStats::new("fast", 8);
        let mut slow_q = router.add_sink(slow.clone(), WhenFull::DropNewest);
        let mut fast_q = router.add_sink(fast.clone(), WhenFull::DropNewest);
        router.route(batch(3));
        router.route(batch(2));
        assert_eq!(slow.dropped_records(), 2);
        assert_eq!(slow.dropped_for(DropStream::Metrics, DropReason::QueueFull), 2);
        assert_eq!(slow.depth(), 1);
        assert_eq!(fast.dropped_records(), 0);
        assert_eq!(fast.depth(), 2);
        assert_eq!(fast_q.recv().await.unwrap().records.len(), 3);
        assert_eq!(fast_q.recv().await.unwrap().records.len(), 2);
        assert_eq!(fast.depth(), 0);
        assert_eq!(slow_q.recv().await.unwrap().records.len(), 3);
    }

    #[tokio::test]
    async fn closed_sink_counts_drops() {
        let router = Router::new();
        let s = SinkStats::new("gone", 4);
        drop(router.add_sink(s.clone(), WhenFull::DropNewest));
        router.route(batch(5));
        assert_eq!(s.dropped_records(), 5);
        assert_eq!(s.dropped_for(DropStream::Metrics, DropReason::Stopped), 5);
    }

    #[tokio::test]
    async fn events_skip_blocking_sinks_snapshots_do_not() {
        let router = Router::new();
        let durable = SinkStats::new("durable", 8);
        let mut q = router.add_sink(durable.clone(), WhenFull::Block);
        router.route(batch_of(2, false));
        assert!(q.try_recv().is_none(), "events reach a blocking sink through its lane only");
        router.route(batch_of(3, true));
        assert_eq!(q.try_recv().unwrap().records.len(), 3);
        assert_eq!(router.blocking_sinks(), vec!["durable"]);
    }

    #[tokio::test]
    async fn drops_are_counted_by_what_the_batch_carried() {
        let router = Router::new();
        let s = SinkStats::new("slow", 1);
        let _q = router.add_sink(s.clone(), WhenFull::DropNewest);
        router.route(batch_of(1, true));
        router.route(batch_of(2, false));
        router.route(batch_of(4, true));
        assert_eq!(s.dropped_for(DropStream::Events, DropReason::QueueFull), 2);
        assert_eq!(s.dropped_for(DropStream::Metrics, DropReason::QueueFull), 4);
        assert_eq!(s.dropped_records(), 6);
    }

    #[tokio::test]
    async fn deliver_waits_for_room_and_for_a_replaced_sink() {
        let router = Arc::new(Router::new());
        let (_stop_tx, mut stop) = watch::channel(false);
        let s = SinkStats::new("k", 1);
        let mut q = router.add_sink(s.clone(), WhenFull::Block);
        router.deliver("k", Arc::new(batch_of(1, false)), &mut stop).await.unwrap();
        // Full: the next delivery waits until the sink takes one.
        let r = router.clone();
        let mut stop2 = stop.clone();
        let waiting = tokio::spawn(async move { r.deliver("k", Arc::new(batch_of(2, false)), &mut stop2).await });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        assert_eq!(q.recv().await.unwrap().records.len(), 1);
        waiting.await.unwrap().unwrap();
        assert_eq!(q.recv().await.unwrap().records.len(), 2);
        // Removed: a delivery waits for the successor, which gets the batch.
        router.remove_sink("k");
        drop(q);
        let r = router.clone();
        let mut stop3 = stop.clone();
        let waiting = tokio::spawn(async move { r.deliver("k", Arc::new(batch_of(4, false)), &mut stop3).await });
        tokio::task::yield_now().await;
        let mut q2 = router.add_sink(SinkStats::new("k", 4), WhenFull::Block);
        waiting.await.unwrap().unwrap();
        assert_eq!(q2.recv().await.unwrap().records.len(), 4);
        assert_eq!(s.dropped_records(), 0);
    }

    #[tokio::test]
    async fn deliver_hands_the_batch_back_when_told_to_give_up() {
        let router = Router::new();
        let (stop_tx, mut stop) = watch::channel(false);
        stop_tx.send_replace(true);
        let back = router.deliver("nobody", Arc::new(batch_of(3, false)), &mut stop).await.unwrap_err();
        assert_eq!(back.records.len(), 3);
    }

    #[test]
    fn drops_are_counted_every_time_and_warned_once_a_minute() {
        use std::sync::atomic::AtomicUsize;
        use tracing_subscriber::layer::SubscriberExt;
        struct Count(Arc<AtomicUsize>);
        impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Count {
            fn on_event(&self, _: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        let warnings = Arc::new(AtomicUsize::new(0));
        let subscriber = tracing_subscriber::registry().with(Count(warnings.clone()));
        let stats = SinkStats::new("router-test-warn-once", 1);
        tracing::subscriber::with_default(subscriber, || {
            let router = Router::new();
            let _q = router.add_sink(stats.clone(), WhenFull::DropNewest);
            for _ in 0..100 {
                router.route(batch(1));
            }
        });
        assert_eq!(stats.dropped_records(), 99);
        assert_eq!(warnings.load(Ordering::Relaxed), 1, "one warning for 99 drops, not one per batch");
    }
}
