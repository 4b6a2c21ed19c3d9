//! Panics the agent caught and lived through (a callback from C, where an
//! unwind must not cross): each one is a bug, so each is counted for
//! `virtpulse_internal_errors_total{where}` and logged, rate-limited per
//! place, never swallowed.

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::util::throttle::Throttle;

/// Places that catch panics; their series exist (at 0) from the start.
pub(crate) const PLACES: &[&str] = &["event_callback"];

static COUNTS: Mutex<BTreeMap<&'static str, u64>> = Mutex::new(BTreeMap::new());
static LOGGED: Throttle = Throttle::new(Duration::from_secs(60));

/// Counts and logs a panic caught at `place`.
pub(crate) fn record(place: &'static str, panic: &(dyn Any + Send)) {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into());
    if let Ok(mut counts) = COUNTS.lock() {
        *counts.entry(place).or_insert(0) += 1;
    }
    if let Some(held) = LOGGED.allow(place) {
        tracing::error!(
            place,
            held_back = held,
            "internal error: a panic was caught in {place} ({message}); the agent carries on. \
             Please report it with this log line"
        );
    }
}

/// Panics caught so far, per place (every known place listed).
pub(crate) fn counts() -> Vec<(&'static str, u64)> {
    let counts = COUNTS.lock().map(|c| c.clone()).unwrap_or_default();
    let mut out: BTreeMap<&'static str, u64> = PLACES.iter().map(|p| (*p, 0)).collect();
    out.extend(counts);
    out.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caught_panic_is_counted_per_place() {
        let before = counts().into_iter().find(|(p, _)| *p == "test_place").map_or(0, |(_, n)| n);
        let panic = std::panic::catch_unwind(|| panic!("boom")).unwrap_err();
        record("test_place", panic.as_ref());
        record("test_place", Box::new(String::from("owned")).as_ref());
        let after = counts().into_iter().find(|(p, _)| *p == "test_place").map_or(0, |(_, n)| n);
        assert_eq!(after, before + 2);
        assert!(counts().iter().any(|(p, _)| *p == "event_callback"), "known places start at 0");
    }
}
