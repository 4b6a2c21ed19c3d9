//! Rate limits for warnings that would repeat: once per batch or per cycle
//! during an outage is thousands of lines an hour that say one thing.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Distinct keys tracked at most; beyond that the table starts over (a
/// warning then shows once more, never more often).
const MAX_KEYS: usize = 1024;

/// Lets a warning through the first time, then at most once per `every`,
/// saying how many were held back in between.
pub(crate) struct Throttle {
    every: Duration,
    seen: Mutex<BTreeMap<String, (Instant, u64)>>,
}

impl Throttle {
    pub(crate) const fn new(every: Duration) -> Self {
        Self { every, seen: Mutex::new(BTreeMap::new()) }
    }

    /// `Some(held_back)` when the warning for `key` may be logged now (with
    /// the number suppressed since it last was); `None` when it is held back.
    pub(crate) fn allow(&self, key: &str) -> Option<u64> {
        let Ok(mut seen) = self.seen.lock() else { return Some(0) };
        let now = Instant::now();
        if let Some((last, held)) = seen.get_mut(key) {
            if now.duration_since(*last) < self.every {
                *held += 1;
                return None;
            }
            let n = *held;
            *last = now;
            *held = 0;
            return Some(n);
        }
        if seen.len() >= MAX_KEYS {
            seen.clear();
        }
        seen.insert(key.to_string(), (now, 0));
        Some(0)
    }

    /// Forgets `key`: its next warning shows at once (the problem ended).
    #[cfg(test)]
    pub(crate) fn reset(&self, key: &str) -> bool {
        self.seen.lock().map(|mut s| s.remove(key).is_some()).unwrap_or(false)
    }
}

/// Remembers which messages were logged (until `forget`, e.g. on a new
/// connection), so each shows once. Bounded: past `MAX_KEYS` distinct keys
/// it starts over, so a message shows once more, never more often.
#[derive(Debug, Default)]
pub(crate) struct LogOnce {
    seen: std::collections::HashSet<String>,
}

impl LogOnce {
    /// True the first time `key` is seen.
    pub(crate) fn first(&mut self, key: &str) -> bool {
        if self.seen.contains(key) {
            return false;
        }
        if self.seen.len() >= MAX_KEYS {
            self.seen.clear();
        }
        self.seen.insert(key.to_string());
        true
    }

    pub(crate) fn forget(&mut self) {
        self.seen.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_once_is_once_until_forgotten_and_bounded() {
        let mut once = LogOnce::default();
        assert!(once.first("a"));
        assert!(!once.first("a"));
        once.forget();
        assert!(once.first("a"));
        for i in 0..MAX_KEYS * 2 {
            once.first(&i.to_string());
        }
        assert!(once.seen.len() <= MAX_KEYS);
    }

    #[test]
    fn once_then_once_per_period_with_the_count_held_back() {
        let t = Throttle::new(Duration::from_millis(50));
        assert_eq!(t.allow("a"), Some(0));
        assert_eq!(t.allow("a"), None);
        assert_eq!(t.allow("a"), None);
        assert_eq!(t.allow("b"), Some(0), "keys are independent");
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(t.allow("a"), Some(2));
        assert!(t.reset("a"));
        assert_eq!(t.allow("a"), Some(0));
    }
}
