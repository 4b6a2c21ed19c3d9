//! The scraper controller: a fixed interval, a deadline per collection, and
//! no new collection while libvirt calls from earlier ones are still stuck
//! (skipped and counted), after the OpenTelemetry Collector's design.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio::time::MissedTickBehavior;

use super::blocking::CallTracker;
use super::{CollectError, Collector};
use crate::router::Router;
use crate::selfmon::{CollectorStats, CycleOutcome};

#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub interval: Duration,
    pub timeout: Duration,
    /// Calls still running past their deadline before cycles are skipped.
    pub max_stuck_calls: usize,
}

impl Schedule {
    /// How long a snapshot stays valid in the sinks: long enough to ride out
    /// one failed cycle, short enough that a dead source's series vanish.
    pub fn snapshot_ttl(&self) -> Duration {
        self.interval * 2 + self.timeout
    }
}

/// Runs one collection under the deadline and records its outcome.
pub async fn run_once<C: Collector>(
    c: &mut C,
    sched: &Schedule,
    stats: &CollectorStats,
) -> Option<crate::record::Batch> {
    let started = Instant::now();
    let result = tokio::time::timeout(sched.timeout, c.collect()).await;
    let elapsed = started.elapsed();
    match result {
        Ok(Ok(mut batch)) => {
            batch.ttl = Some(sched.snapshot_ttl());
            stats.record(CycleOutcome::Ok, elapsed, None);
            Some(batch)
        }
        Ok(Err(CollectError::NotConnected)) => {
            stats.record(CycleOutcome::NotConnected, elapsed, Some("not connected to libvirt".into()));
            None
        }
        Ok(Err(e)) => {
            tracing::warn!(collector = c.name(), error = %e, "collection failed");
            stats.record(CycleOutcome::Error, elapsed, Some(e.to_string()));
            None
        }
        Err(_) => {
            tracing::warn!(
                collector = c.name(),
                deadline = ?sched.timeout,
                "collection exceeded its deadline; a domain's QEMU may be hung (its calls keep running in the background)"
            );
            stats.record(CycleOutcome::Timeout, elapsed, Some("deadline exceeded".into()));
            None
        }
    }
}

/// Triggered collections (see `Wake`) come at most this often.
const MIN_TRIGGER_SPACING: Duration = Duration::from_millis(200);

/// Lets another part of the agent ask for a collection now instead of at
/// the next tick (the events subsystem does this for job events, so a job
/// shorter than the interval is still seen).
#[derive(Clone, Default)]
pub struct Wake(Arc<Notify>);

impl Wake {
    pub fn now(&self) {
        self.0.notify_one();
    }
}

/// Fault injection for the watchdog test: `VIRTPULSE_TEST_WEDGE_COLLECTOR=<name>`
/// makes that collector's loop block its thread after the first cycle.
/// Without the variable (always, in production) nothing changes.
fn wedge_requested(name: &str) -> bool {
    std::env::var("VIRTPULSE_TEST_WEDGE_COLLECTOR").is_ok_and(|v| v == name)
}

/// How soon a cycle that found no connection is tried again.
const NOT_CONNECTED_RETRY: Duration = Duration::from_secs(1);

/// Runs forever (until the task is aborted).
pub async fn run<C: Collector>(
    mut c: C,
    sched: Schedule,
    tracker: CallTracker,
    stats: Arc<CollectorStats>,
    router: Arc<Router>,
    wake: Wake,
) {
    let mut ticker = tokio::time::interval(sched.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut last_start: Option<Instant> = None;
    let wedge = wedge_requested(c.name());
    loop {
        stats.beat();
        tokio::select! {
            _ = ticker.tick() => {}
            _ = wake.0.notified() => {
                if let Some(t) = last_start {
                    tokio::time::sleep(MIN_TRIGGER_SPACING.saturating_sub(t.elapsed())).await;
                }
            }
        }
        stats.beat();
        if wedge && last_start.is_some() {
            // Blocks this worker thread for good, as a buggy blocking call
            // would: the health check must notice (see `wedge_requested`).
            tracing::warn!(collector = c.name(), "VIRTPULSE_TEST_WEDGE_COLLECTOR: wedging this collector's loop");
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        let started = Instant::now();
        last_start = Some(started);
        stats.set_stuck_calls(tracker.in_flight());
        let stuck = tracker.gating();
        if stuck >= sched.max_stuck_calls {
            stats.skip();
            tracing::warn!(
                collector = c.name(),
                stuck_calls = stuck,
                "skipping collection: earlier libvirt calls are still stuck"
            );
            continue;
        }
        let not_connected = stats.outcomes(CycleOutcome::NotConnected);
        if let Some(batch) = run_once(&mut c, &sched, &stats).await {
            router.route(batch);
        }
        if stats.outcomes(CycleOutcome::NotConnected) > not_connected {
            // Most often the first tick, before the connection is up: a slow
            // collector (node, pools) would otherwise show nothing for a
            // whole interval after start or after a reconnect.
            ticker.reset_after(NOT_CONNECTED_RETRY.min(sched.interval));
        }
        stats.set_stuck_calls(tracker.in_flight());
        stats.beat();
        // Ticks that passed while this cycle ran are skipped, not queued.
        let overrun = started.elapsed().as_nanos() / sched.interval.as_nanos().max(1);
        for _ in 0..overrun {
            stats.skip();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Batch;
    use crate::selfmon::SinkStats;

    struct Counting(Arc<std::sync::atomic::AtomicUsize>);

    impl Collector for Counting {
        fn name(&self) -> &'static str {
            "counting"
        }

        async fn collect(&mut self) -> Result<Batch, CollectError> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(Batch { source: "counting", snapshot: true, ..Default::default() })
        }
    }

    #[tokio::test]
    async fn wake_runs_a_collection_before_the_next_tick() {
        let n = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut router = Router::new();
        let _q = router.add_sink(SinkStats::new("t", 64));
        let sched =
            Schedule { interval: Duration::from_secs(3600), timeout: Duration::from_secs(1), max_stuck_calls: 2 };
        let wake = Wake::default();
        let stats = CollectorStats::new("counting", sched.interval);
        let task = tokio::spawn(run(
            Counting(n.clone()),
            sched,
            CallTracker::default(),
            stats,
            Arc::new(router),
            wake.clone(),
        ));
        let deadline = Instant::now() + Duration::from_secs(5);
        while n.load(std::sync::atomic::Ordering::SeqCst) < 1 {
            assert!(Instant::now() < deadline, "first tick never ran");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        wake.now();
        while n.load(std::sync::atomic::Ordering::SeqCst) < 2 {
            assert!(Instant::now() < deadline, "wake did not trigger a collection");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        task.abort();
    }
}
