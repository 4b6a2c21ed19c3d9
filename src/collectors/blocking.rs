//! Runs libvirt calls on tokio's blocking pool and counts those in flight, so
//! the controller can see calls stuck past their deadline (a hung QEMU holds
//! a call until the process resumes; nothing can cancel it).

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::CollectError;

/// Calls in flight: `gating` ones hold up the next collection while stuck;
/// `isolated` ones belong to a collector that skips the stuck object itself
/// (one domain's job read) and only show in the stuck-calls gauge.
#[derive(Clone, Default, Debug)]
pub struct CallTracker {
    gating: Arc<AtomicUsize>,
    isolated: Arc<AtomicUsize>,
}

struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl CallTracker {
    /// Every call still running, for the stuck-calls gauge.
    pub fn in_flight(&self) -> usize {
        self.gating.load(Ordering::Acquire) + self.isolated.load(Ordering::Acquire)
    }

    /// Calls that keep the next collection from starting while they run.
    pub fn gating(&self) -> usize {
        self.gating.load(Ordering::Acquire)
    }

    /// Runs `f` on a blocking thread. If the caller stops waiting (deadline),
    /// `f` still runs to completion and stays counted until then.
    pub async fn run<T, F>(&self, f: F) -> Result<T, CollectError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        Self::spawn(&self.gating, f).await
    }

    /// Like `run`, for a call whose caller copes with it being stuck (skips
    /// its object until it returns): it does not hold up later collections.
    pub async fn run_isolated<T, F>(&self, f: F) -> Result<T, CollectError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        Self::spawn(&self.isolated, f).await
    }

    async fn spawn<T, F>(count: &Arc<AtomicUsize>, f: F) -> Result<T, CollectError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        count.fetch_add(1, Ordering::AcqRel);
        let guard = InFlight(count.clone());
        tokio::task::spawn_blocking(move || {
            let _guard = guard;
            f()
        })
        .await
        .map_err(|e| CollectError::Internal(format!("libvirt call task failed: {e}")))
    }
}

/// Objects (by UUID) with a libvirt call running on them. A call stuck on
/// one (a hung QEMU) keeps it marked until the call returns; later cycles
/// skip it instead of piling more stuck calls onto it.
#[derive(Clone, Default, Debug)]
pub(crate) struct BusySet(Arc<Mutex<HashSet<String>>>);

impl BusySet {
    /// Marks `uuid` until the mark is dropped; `None` when it is marked already.
    pub(crate) fn mark(&self, uuid: String) -> Option<BusyMark> {
        let fresh = self.0.lock().unwrap_or_else(|e| e.into_inner()).insert(uuid.clone());
        fresh.then(|| BusyMark { set: self.clone(), uuid })
    }

    pub(crate) fn contains(&self, uuid: &str) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).contains(uuid)
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).is_empty()
    }
}

/// Clears its object's busy mark when the call ends (or is abandoned).
pub(crate) struct BusyMark {
    set: BusySet,
    uuid: String,
}

impl Drop for BusyMark {
    fn drop(&mut self) {
        self.set.0.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.uuid);
    }
}

/// What `read_each` got back.
pub(crate) struct EachRead<T> {
    /// (key, result) of every read that finished before the deadline.
    pub(crate) done: Vec<(String, T)>,
    /// Objects left out because an earlier call on them is still stuck.
    pub(crate) skipped: u64,
    /// Reads still running at the deadline: they finish in the background
    /// and keep their object marked busy until they do.
    pub(crate) late: u64,
}

/// Reads objects one blocking call each, at most `permits` at once: a call
/// stuck on one object (a hung QEMU, a guest agent that never answers)
/// holds up only that object. Objects still busy from an earlier cycle are
/// skipped; reads not done by `deadline` are left running.
pub(crate) async fn read_each<I, T, F>(
    tracker: &CallTracker,
    busy: &BusySet,
    permits: &Arc<tokio::sync::Semaphore>,
    items: Vec<(String, I)>,
    deadline: std::time::Instant,
    read: F,
) -> EachRead<T>
where
    I: Send + 'static,
    T: Send + 'static,
    F: Fn(I) -> T + Clone + Send + Sync + 'static,
{
    let mut set = tokio::task::JoinSet::new();
    let mut skipped = 0;
    for (key, item) in items {
        let Some(mark) = busy.mark(key.clone()) else {
            skipped += 1;
            continue;
        };
        let (tracker, permits, read) = (tracker.clone(), permits.clone(), read.clone());
        set.spawn(async move {
            // A read dropped while it waits for its turn leaves no mark.
            let _permit = permits.acquire_owned().await;
            tracker
                .run_isolated(move || {
                    let _mark = mark;
                    (key, read(item))
                })
                .await
                .ok()
        });
    }
    let mut done = Vec::new();
    while let Ok(Some(joined)) = tokio::time::timeout_at(deadline.into(), set.join_next()).await {
        if let Ok(Some(r)) = joined {
            done.push(r);
        }
    }
    let late = set.len() as u64;
    // Dropping the set would only abort the waits, not libvirt's calls.
    set.detach_all();
    EachRead { done, skipped, late }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn abandoned_calls_stay_counted_until_they_end() {
        let t = CallTracker::default();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let t2 = t.clone();
        let fut = t2.run(move || rx.recv().ok());
        assert!(tokio::time::timeout(Duration::from_millis(50), fut).await.is_err());
        assert_eq!(t.in_flight(), 1);
        tx.send(()).unwrap();
        for _ in 0..200 {
            if t.in_flight() == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("in-flight count did not drop");
    }

    #[tokio::test]
    async fn isolated_calls_show_but_do_not_gate() {
        let t = CallTracker::default();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let fut = t.run_isolated(move || rx.recv().ok());
        assert!(tokio::time::timeout(Duration::from_millis(50), fut).await.is_err());
        assert_eq!((t.in_flight(), t.gating()), (1, 0));
        tx.send(()).unwrap();
    }
}
