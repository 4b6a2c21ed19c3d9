//! The scraper controller: a fixed interval, a deadline per collection, and
//! no new collection while libvirt calls from earlier ones are still stuck
//! (skipped and counted), after the OpenTelemetry Collector's design.

use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// Runs forever (until the task is aborted).
pub async fn run<C: Collector>(
    mut c: C,
    sched: Schedule,
    tracker: CallTracker,
    stats: Arc<CollectorStats>,
    router: Arc<Router>,
) {
    let mut ticker = tokio::time::interval(sched.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        let tick = ticker.tick().await;
        let stuck = tracker.in_flight();
        stats.set_stuck_calls(stuck);
        if stuck >= sched.max_stuck_calls {
            stats.skip();
            tracing::warn!(
                collector = c.name(),
                stuck_calls = stuck,
                "skipping collection: earlier libvirt calls are still stuck"
            );
            continue;
        }
        if let Some(batch) = run_once(&mut c, &sched, &stats).await {
            router.route(batch);
        }
        stats.set_stuck_calls(tracker.in_flight());
        // Ticks that passed while this cycle ran are skipped, not queued.
        let overrun = tick.elapsed().as_nanos() / sched.interval.as_nanos().max(1);
        for _ in 0..overrun {
            stats.skip();
        }
    }
}
