//! Runs libvirt calls on tokio's blocking pool and counts those in flight, so
//! the controller can see calls stuck past their deadline (a hung QEMU holds
//! a call until the process resumes; nothing can cancel it).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::CollectError;

#[derive(Clone, Default, Debug)]
pub struct CallTracker(Arc<AtomicUsize>);

struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl CallTracker {
    pub fn in_flight(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }

    /// Runs `f` on a blocking thread. If the caller stops waiting (deadline),
    /// `f` still runs to completion and stays counted until then.
    pub async fn run<T, F>(&self, f: F) -> Result<T, CollectError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.0.fetch_add(1, Ordering::AcqRel);
        let guard = InFlight(self.0.clone());
        tokio::task::spawn_blocking(move || {
            let _guard = guard;
            f()
        })
        .await
        .map_err(|e| CollectError::Internal(format!("libvirt call task failed: {e}")))
    }
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
}
