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
    /// How long after start the first collection runs (see `agent::phase`).
    pub phase: Duration,
}

impl Schedule {
    /// How long a snapshot stays valid in the sinks: long enough to ride out
    /// one failed cycle, short enough that a dead source's series vanish.
    pub fn snapshot_ttl(&self) -> Duration {
        self.interval * 2 + self.timeout
    }
}

/// Runs one collection under the deadline and records its outcome.
pub(crate) async fn run_once(
    c: &mut dyn Collector,
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

/// Triggered collections (see `Wake`) start at least this far apart, and
/// at least twice the last collection's duration apart: during an event
/// storm (a hundred domains destroyed in a row) the collector does not run
/// back to back.
const MIN_TRIGGER_SPACING: Duration = Duration::from_secs(2);
/// A wake waits for this much quiet, so the wakes of one burst share a
/// collection...
const WAKE_QUIET: Duration = Duration::from_millis(250);
/// ...but never longer than this after the first.
const WAKE_MAX_DELAY: Duration = Duration::from_secs(1);

/// Lets another part of the agent ask for a collection now instead of at
/// the next tick (the events subsystem does this for job events, so a job
/// shorter than the interval is still seen). Wakes close together share one
/// collection.
#[derive(Clone, Default)]
pub struct Wake {
    notify: Arc<Notify>,
    stats: Option<Arc<CollectorStats>>,
}

impl Wake {
    /// A wake that counts itself in the collector's stats.
    pub fn counted(stats: Arc<CollectorStats>) -> Self {
        Self { notify: Arc::default(), stats: Some(stats) }
    }

    pub fn now(&self) {
        if let Some(s) = &self.stats {
            s.woken();
        }
        self.notify.notify_one();
    }
}

/// After a wake: waits for the burst to end, then for the spacing since
/// the last collection. A regular tick that comes meanwhile ends the wait:
/// wakes add collections between ticks, never take the ticks' place.
async fn coalesce(
    wake: &Wake,
    ticker: &mut tokio::time::Interval,
    last_start: Option<Instant>,
    last_duration: Duration,
) {
    let first = Instant::now();
    loop {
        tokio::select! {
            _ = ticker.tick() => return,
            _ = tokio::time::sleep(WAKE_QUIET) => break,
            _ = wake.notify.notified() => {
                if first.elapsed() >= WAKE_MAX_DELAY {
                    break;
                }
            }
        }
    }
    if let Some(t) = last_start {
        let spacing = MIN_TRIGGER_SPACING.max(last_duration * 2);
        tokio::select! {
            _ = ticker.tick() => {}
            _ = tokio::time::sleep(spacing.saturating_sub(t.elapsed())) => {}
        }
    }
}

/// Fault injection for the watchdog test (tests/systemd.rs), in debug
/// builds only: `VIRTPULSE_TEST_WEDGE_COLLECTOR=<name>` makes that
/// collector's loop block its thread after the first cycle. Release builds
/// (what ships) have no such hook.
#[cfg(debug_assertions)]
fn wedge_requested(name: &str) -> bool {
    std::env::var("VIRTPULSE_TEST_WEDGE_COLLECTOR").is_ok_and(|v| v == name)
}

#[cfg(not(debug_assertions))]
fn wedge_requested(_: &str) -> bool {
    false
}

/// How soon a cycle that found no connection is tried again.
const NOT_CONNECTED_RETRY: Duration = Duration::from_secs(1);

/// Runs forever (until the task is aborted).
pub(crate) async fn run(
    mut c: Box<dyn Collector>,
    sched: Schedule,
    tracker: CallTracker,
    stats: Arc<CollectorStats>,
    router: Arc<Router>,
    wake: Wake,
) {
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + sched.phase, sched.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut last_start: Option<Instant> = None;
    let wedge = wedge_requested(c.name());
    loop {
        stats.beat();
        tokio::select! {
            _ = ticker.tick() => {}
            _ = wake.notify.notified() => {
                coalesce(&wake, &mut ticker, last_start, stats.last_duration()).await;
                stats.triggered();
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
        if let Some(batch) = run_once(c.as_mut(), &sched, &stats).await {
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

        fn collect(&mut self) -> crate::collectors::BoxFuture<'_, Result<Batch, CollectError>> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Box::pin(async { Ok(Batch { source: "counting", snapshot: true, ..Default::default() }) })
        }
    }

    #[tokio::test]
    async fn wake_runs_a_collection_before_the_next_tick() {
        let n = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let router = Router::new();
        let _q = router.add_sink(SinkStats::new("t", 64), crate::router::WhenFull::DropNewest);
        let sched = Schedule {
            interval: Duration::from_secs(3600),
            timeout: Duration::from_secs(1),
            max_stuck_calls: 2,
            phase: Duration::ZERO,
        };
        let wake = Wake::default();
        let stats = CollectorStats::new("counting", sched.interval);
        let task = tokio::spawn(run(
            Box::new(Counting(n.clone())),
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

    #[tokio::test]
    async fn a_burst_of_wakes_runs_one_collection() {
        let n = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let router = Router::new();
        let _q = router.add_sink(SinkStats::new("t", 64), crate::router::WhenFull::DropNewest);
        let sched = Schedule {
            interval: Duration::from_secs(3600),
            timeout: Duration::from_secs(1),
            max_stuck_calls: 2,
            phase: Duration::ZERO,
        };
        let stats = CollectorStats::new("counting", sched.interval);
        let wake = Wake::counted(stats.clone());
        let task = tokio::spawn(run(
            Box::new(Counting(n.clone())),
            sched,
            CallTracker::default(),
            stats.clone(),
            Arc::new(router),
            wake.clone(),
        ));
        let deadline = Instant::now() + Duration::from_secs(10);
        while n.load(std::sync::atomic::Ordering::SeqCst) < 1 {
            assert!(Instant::now() < deadline, "first tick never ran");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // A storm: 100 wakes within half a second (100 domains destroyed).
        for _ in 0..100 {
            wake.now();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        while stats.triggered_runs() < 1 {
            assert!(Instant::now() < deadline, "the burst triggered no collection");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Quiet now: nothing more runs.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(stats.wakes(), 100);
        assert!(stats.triggered_runs() <= 2, "{} collections for one burst", stats.triggered_runs());
        assert_eq!(n.load(std::sync::atomic::Ordering::SeqCst), 1 + stats.triggered_runs() as usize);
        task.abort();
    }
}
