//! The process clock: one monotonic origin shared by loops, heartbeats and
//! health checks, so their ages compare.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the process started, on a monotonic clock.
pub(crate) fn process_millis() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed().as_millis() as u64
}

/// Wall-clock seconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn unix_seconds() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64()
}
