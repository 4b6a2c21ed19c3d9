//! Fans batches out to sinks. Each sink has its own bounded queue: a slow or
//! stuck sink fills its own queue and loses (counted) batches, while
//! collection and every other sink go on.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::record::Batch;
use crate::selfmon::SinkStats;
use crate::util::throttle::Throttle;

/// Drops are counted every time; the warning shows once a minute per sink.
static DROP_WARNINGS: Throttle = Throttle::new(std::time::Duration::from_secs(60));

/// The receiving end a sink task drains.
pub struct SinkQueue {
    pub rx: mpsc::Receiver<Arc<Batch>>,
    pub stats: Arc<SinkStats>,
}

impl SinkQueue {
    /// Next batch, or `None` once the router is gone (shutdown).
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
}

#[derive(Default)]
pub struct Router {
    routes: Vec<Route>,
}

impl Router {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a sink with a queue of `capacity` batches.
    pub fn add_sink(&mut self, stats: Arc<SinkStats>) -> SinkQueue {
        let (tx, rx) = mpsc::channel(stats.capacity.max(1));
        self.routes.push(Route { tx, stats: stats.clone() });
        SinkQueue { rx, stats }
    }

    /// Never blocks: a full queue drops the batch for that sink only.
    pub fn route(&self, batch: Batch) {
        let n = batch.records.len() as u64;
        let batch = Arc::new(batch);
        for r in &self.routes {
            // Counted before the send: the sink may take the batch at once.
            r.stats.enqueued();
            match r.tx.try_send(batch.clone()) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    r.stats.dequeued();
                    r.stats.dropped(n);
                    if let Some(held_back) = DROP_WARNINGS.allow(r.stats.name) {
                        tracing::warn!(sink = r.stats.name, records = n, earlier_drops_not_logged = held_back, "sink queue full; batch dropped (counted in virtpulse_sink_records_dropped_total; this warning shows once a minute)");
                    }
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    r.stats.dequeued();
                    r.stats.dropped(n);
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(n: usize) -> Batch {
        use crate::record::*;
        Batch {
            source: "t",
            snapshot: true,
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
        let mut router = Router::new();
        let slow = SinkStats::new("slow", 1);
        let fast = SinkStats::new("fast", 8);
        let mut slow_q = router.add_sink(slow.clone());
        let mut fast_q = router.add_sink(fast.clone());
        router.route(batch(3));
        router.route(batch(2));
        assert_eq!(slow.dropped_records(), 2);
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
        let mut router = Router::new();
        let s = SinkStats::new("gone", 4);
        drop(router.add_sink(s.clone()));
        router.route(batch(5));
        assert_eq!(s.dropped_records(), 5);
    }

    #[test]
    fn drops_are_counted_every_time_and_warned_once_a_minute() {
        use std::sync::atomic::{AtomicUsize, Ordering};
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
            let mut router = Router::new();
            let _q = router.add_sink(stats.clone());
            for _ in 0..100 {
                router.route(batch(1));
            }
        });
        assert_eq!(stats.dropped_records(), 99);
        assert_eq!(warnings.load(Ordering::Relaxed), 1, "one warning for 99 drops, not one per batch");
    }
}
