//! How configuration reloads went (SIGHUP, `systemctl reload`); Prometheus's
//! own `prometheus_config_last_reload_successful` is the model.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use super::{find, MetricDesc, MetricWriter, Report};
use crate::util::clock::unix_seconds;

pub const METRICS: &[MetricDesc] = &[
    MetricDesc::gauge(
        "virtpulse_config_last_reload_successful",
        "Whether the last configuration reload (SIGHUP) succeeded: 1, or 0 while the previous configuration still runs.",
    ),
    MetricDesc::gauge(
        "virtpulse_config_last_reload_success_timestamp_seconds",
        "When the configuration was last loaded successfully, at start or by a reload (Unix time).",
    ),
    MetricDesc::counter("virtpulse_config_reloads_total", "Configuration reloads, by result (success, failure)."),
    MetricDesc::gauge(
        "virtpulse_config_restart_required",
        "1 when the running configuration differs from the file in keys only a restart applies ([events], agent.log_format); the log names them.",
    ),
];

/// How reloads went.
#[derive(Debug)]
pub struct ReloadStats {
    successful: AtomicBool,
    success_unix_ms: AtomicU64,
    results: [AtomicU64; 2],
    restart_required: AtomicBool,
    last_error: Mutex<Option<String>>,
}

impl ReloadStats {
    /// As of a successful start.
    pub fn started() -> Self {
        Self {
            successful: AtomicBool::new(true),
            success_unix_ms: AtomicU64::new((unix_seconds() * 1000.0) as u64),
            results: Default::default(),
            restart_required: AtomicBool::new(false),
            last_error: Mutex::new(None),
        }
    }

    pub fn succeeded(&self, restart_required: bool) {
        self.successful.store(true, Ordering::Relaxed);
        self.success_unix_ms.store((unix_seconds() * 1000.0) as u64, Ordering::Relaxed);
        self.results[0].fetch_add(1, Ordering::Relaxed);
        self.restart_required.store(restart_required, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    pub fn failed(&self, why: &str) {
        self.successful.store(false, Ordering::Relaxed);
        self.results[1].fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(why.to_string());
    }

    pub fn last_successful(&self) -> bool {
        self.successful.load(Ordering::Relaxed)
    }
}

impl Report for ReloadStats {
    fn metrics(&self, w: &mut dyn MetricWriter) {
        let mut put = |name: &'static str, labels: &[(&str, &str)], v: f64| w.sample(&find(METRICS, name), labels, v);
        put("virtpulse_config_last_reload_successful", &[], if self.last_successful() { 1.0 } else { 0.0 });
        let at = self.success_unix_ms.load(Ordering::Relaxed) as f64 / 1000.0;
        put("virtpulse_config_last_reload_success_timestamp_seconds", &[], at);
        for (i, result) in ["success", "failure"].into_iter().enumerate() {
            put(
                "virtpulse_config_reloads_total",
                &[("result", result)],
                self.results[i].load(Ordering::Relaxed) as f64,
            );
        }
        let restart = if self.restart_required.load(Ordering::Relaxed) { 1.0 } else { 0.0 };
        put("virtpulse_config_restart_required", &[], restart);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reload_metrics_say_how_the_last_one_went() {
        let s = ReloadStats::started();
        assert!(s.last_successful());
        s.failed("collectors.interval: must be at least 1s");
        assert!(!s.last_successful());
        s.succeeded(true);
        assert!(s.last_successful());
        assert_eq!(s.results[0].load(Ordering::Relaxed), 1);
        assert_eq!(s.results[1].load(Ordering::Relaxed), 1);
    }
}
