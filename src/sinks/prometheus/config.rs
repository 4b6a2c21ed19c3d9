//! `[sinks.prometheus]`.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::section::{count_at_most, ByteSize};
use crate::config::{KeyError, SectionConfig, SectionContext};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrometheusConfig {
    pub listen: String,
    pub path: String,
    pub queue_capacity: usize,
    /// Most series /metrics exports; beyond it series are dropped (counted
    /// in virtpulse_prometheus_series_dropped_total, logged once).
    pub max_series: u64,
    /// Snapshots whose exposition text is at most this big are rendered
    /// once when they arrive, and scrapes send that text: a scrape then
    /// costs a copy, not a render. Larger ones are rendered at each scrape
    /// (0: always). The text is held in memory (docs/operations.md "Sizing").
    pub prerender_max_bytes: ByteSize,
    /// TLS and basic auth for every endpoint, in the Prometheus
    /// exporter-toolkit web config format (docs/operations.md "Endpoint security").
    pub web_config_file: Option<PathBuf>,
}

impl Default for PrometheusConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:9177".into(),
            path: "/metrics".into(),
            queue_capacity: 16,
            max_series: 500_000,
            prerender_max_bytes: ByteSize(8 << 20),
            web_config_file: None,
        }
    }
}

/// Paths the endpoint serves besides the metrics.
pub(crate) const RESERVED_PATHS: &[&str] = &["/", "/healthz", "/readyz"];

/// Why `path` cannot be the metrics path, if it cannot.
pub(crate) fn metrics_path_problem(path: &str) -> Option<String> {
    if !path.starts_with('/') || path.len() < 2 {
        return Some("must start with / and name a path (e.g. \"/metrics\")".into());
    }
    if RESERVED_PATHS.contains(&path) {
        return Some(format!(
            "{path:?} is served by the agent itself ({}); choose another path",
            RESERVED_PATHS.join(", ")
        ));
    }
    if path.contains("//") {
        return Some(format!("{path:?} has an empty segment (//)"));
    }
    // Unreserved and sub-delimiter characters of RFC 3986 path segments;
    // `{`, `}`, `*` and `:` would be route parameters to the HTTP router.
    if let Some(c) = path.chars().find(|c| !(c.is_ascii_alphanumeric() || "/-._~!$&'()+,;=@".contains(*c))) {
        return Some(format!(
            "{path:?} contains {c:?}; use letters, digits and - . _ ~ ! $ & ' ( ) + , ; = @ between slashes"
        ));
    }
    None
}

impl SectionConfig for PrometheusConfig {
    fn validate(&self, ctx: &SectionContext) -> Result<(), KeyError> {
        count_at_most("queue_capacity", self.queue_capacity as u64, 1024)?;
        count_at_most("max_series", self.max_series, 100_000_000)?;
        count_at_most("prerender_max_bytes", self.prerender_max_bytes.0, 1 << 30)?;
        if ctx.enabled {
            if self.listen.parse::<SocketAddr>().is_err() {
                return Err(KeyError::new(
                    "listen",
                    format!("{:?} is not an address:port (e.g. \"0.0.0.0:9177\" or \"[::1]:9177\")", self.listen),
                ));
            }
            if let Some(problem) = metrics_path_problem(&self.path) {
                return Err(KeyError::new("path", problem));
            }
        }
        if self.queue_capacity == 0 {
            return Err(KeyError::new("queue_capacity", "must be at least 1"));
        }
        if self.max_series == 0 {
            return Err(KeyError::new("max_series", "must be at least 1 (the agent's own metrics are not counted)"));
        }
        Ok(())
    }
}
