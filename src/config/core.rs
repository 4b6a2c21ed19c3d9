//! The sections of the agent itself (not of a collector or a sink):
//! `[agent]`, `[libvirt]`, `[domains]`, `[events]`, `[metrics]`, `[admin]`
//! and the `[collectors]` defaults.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::section::{at_most, count_at_most, string_or_list, KeyError, DAY, HOUR};
use crate::filter::DomainFilter;
use crate::selection::{Profile, SelectionSpec};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// The journal (structured fields) when systemd connected stderr to it
    /// and its socket exists, else text on stderr.
    Auto,
    Text,
    Json,
    /// Always the journal (native protocol, structured fields).
    Journald,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Host name put on every record; defaults to the system host name.
    pub hostname: Option<String>,
    /// tracing filter directive, e.g. "info" or "virtpulse=debug".
    pub log_level: String,
    pub log_format: LogFormat,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self { hostname: None, log_level: "info".into(), log_format: LogFormat::Auto }
    }
}

impl AgentConfig {
    pub fn validate(&self) -> Result<(), KeyError> {
        if let Some(h) = &self.hostname {
            if h.trim().is_empty() {
                return Err(KeyError::new("hostname", "must not be empty; remove the key to use the system host name"));
            }
        }
        // tracing-subscriber's directive parser slices inside multi-byte
        // characters and panics (found by the `config` fuzz target): a
        // filter is ASCII (targets, levels, span fields) and checked as such.
        if !self.log_level.is_ascii() || self.log_level.len() > 1024 {
            return Err(KeyError::new(
                "log_level",
                "must be ASCII and at most 1024 bytes; use e.g. \"info\" or \"virtpulse=debug\"",
            ));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log_level) {
            return Err(KeyError::new(
                "log_level",
                format!("not a valid filter ({e}); use e.g. \"info\" or \"virtpulse=debug\""),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LibvirtConfig {
    pub uri: String,
    /// The agent only reads; read-write is needed only for drivers that
    /// refuse read-only connections.
    pub read_only: bool,
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Duration,
    pub keepalive_count: u32,
    #[serde(with = "humantime_serde")]
    pub reconnect_min_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub reconnect_max_backoff: Duration,
}

impl Default for LibvirtConfig {
    fn default() -> Self {
        Self {
            uri: "qemu:///system".into(),
            read_only: true,
            keepalive_interval: Duration::from_secs(5),
            keepalive_count: 3,
            reconnect_min_backoff: Duration::from_secs(1),
            reconnect_max_backoff: Duration::from_secs(30),
        }
    }
}

impl LibvirtConfig {
    pub fn validate(&self) -> Result<(), KeyError> {
        at_most("keepalive_interval", Some(self.keepalive_interval), HOUR)?;
        at_most("reconnect_min_backoff", Some(self.reconnect_min_backoff), HOUR)?;
        at_most("reconnect_max_backoff", Some(self.reconnect_max_backoff), DAY)?;
        count_at_most("keepalive_count", u64::from(self.keepalive_count), 100)?;
        if self.uri.trim().is_empty() {
            return Err(KeyError::new("uri", "must not be empty (e.g. \"qemu:///system\")"));
        }
        if !self.keepalive_interval.is_zero() && self.keepalive_count == 0 {
            return Err(KeyError::new("keepalive_count", "must be at least 1 when keepalive is enabled"));
        }
        if self.reconnect_min_backoff.is_zero() {
            return Err(KeyError::new("reconnect_min_backoff", "must be greater than 0"));
        }
        if self.reconnect_max_backoff < self.reconnect_min_backoff {
            return Err(KeyError::new(
                "reconnect_max_backoff",
                "must not be smaller than libvirt.reconnect_min_backoff",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DomainsConfig {
    /// Glob patterns (`*`, `?`) or `/regex/` on domain names; empty = all.
    #[serde(deserialize_with = "string_or_list")]
    pub include: Vec<String>,
    #[serde(deserialize_with = "string_or_list")]
    pub exclude: Vec<String>,
}

impl DomainsConfig {
    pub fn validate(&self) -> Result<(), KeyError> {
        DomainFilter::new(&self.include, &self.exclude).map(drop).map_err(|(key, m)| KeyError::new(key, m))
    }

    pub fn filter(&self) -> Result<DomainFilter, KeyError> {
        DomainFilter::new(&self.include, &self.exclude).map_err(|(key, m)| KeyError::new(key, m))
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    pub enabled: bool,
    /// Events the hand-off queue between libvirt's callbacks and the agent
    /// holds; beyond that they are dropped (counted).
    pub queue_capacity: usize,
    /// Also subscribe to raw QEMU monitor events (qemu:// URIs only).
    pub qemu_monitor: bool,
    /// Emit one `resync` record per domain after every (re)connect.
    pub resync: bool,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self { enabled: true, queue_capacity: 65536, qemu_monitor: false, resync: true }
    }
}

impl EventsConfig {
    pub fn validate(&self) -> Result<(), KeyError> {
        count_at_most("queue_capacity", self.queue_capacity as u64, 10_000_000)?;
        if self.queue_capacity == 0 {
            return Err(KeyError::new("queue_capacity", "must be at least 1"));
        }
        Ok(())
    }
}

/// What the Prometheus and OTLP sinks export (see `selection`). Each switch
/// (the catalog's, `[metrics] <switch> = true|false`) left out follows the
/// profile.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    pub profile: Profile,
    /// Globs over metric names: only these (empty: all the profile selects).
    #[serde(deserialize_with = "string_or_list")]
    pub include: Vec<String>,
    /// Globs over metric names: never these (wins over include).
    #[serde(deserialize_with = "string_or_list")]
    pub exclude: Vec<String>,
    /// Globs over label names removed from every series (e.g. "path").
    #[serde(deserialize_with = "string_or_list")]
    pub drop_labels: Vec<String>,
    /// The switches set, by key: the loader takes them out of the section
    /// (they are the catalog's, not this type's) and checks them.
    #[serde(skip)]
    pub switches: BTreeMap<String, bool>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            profile: Profile::Default,
            include: Vec::new(),
            exclude: Vec::new(),
            drop_labels: Vec::new(),
            switches: BTreeMap::new(),
        }
    }
}

impl MetricsConfig {
    pub fn spec(&self) -> SelectionSpec {
        SelectionSpec {
            profile: self.profile,
            switches: self.switches.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            include: self.include.clone(),
            exclude: self.exclude.clone(),
            drop_labels: self.drop_labels.clone(),
        }
    }
}

/// `[admin]`: `/healthz`, `/readyz` and the agent's own metrics on a
/// listener of their own, for hosts whose metrics go only to Kafka or OTLP.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Default: on when no sink serves these endpoints (the Prometheus sink
    /// does, on its own port).
    pub enabled: Option<bool>,
    pub listen: String,
    /// TLS and basic auth, in the exporter-toolkit web config format.
    pub web_config_file: Option<PathBuf>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self { enabled: None, listen: "127.0.0.1:9178".into(), web_config_file: None }
    }
}

impl AdminConfig {
    pub fn validate(&self) -> Result<(), KeyError> {
        if self.listen.parse::<SocketAddr>().is_err() {
            return Err(KeyError::new(
                "listen",
                format!("{:?} is not an address:port (e.g. \"127.0.0.1:9178\")", self.listen),
            ));
        }
        Ok(())
    }
}

/// `[collectors]`: what every collector follows unless its section says
/// otherwise.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CollectorDefaults {
    /// Default interval for every collector.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Default deadline for one collection; defaults to the interval (at most 10s).
    #[serde(with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// libvirt calls still running past their deadline (a hung QEMU) before
    /// a collector stops starting new cycles.
    pub max_stuck_calls: usize,
}

impl Default for CollectorDefaults {
    fn default() -> Self {
        Self { interval: Duration::from_secs(15), timeout: None, max_stuck_calls: 2 }
    }
}

/// The shortest interval anything polls at.
pub const MIN_INTERVAL: Duration = Duration::from_millis(10);

impl CollectorDefaults {
    pub fn validate(&self) -> Result<(), KeyError> {
        at_most("interval", Some(self.interval), DAY)?;
        at_most("timeout", self.timeout, HOUR)?;
        count_at_most("max_stuck_calls", self.max_stuck_calls as u64, 64)?;
        if self.interval < MIN_INTERVAL {
            return Err(KeyError::new(
                "interval",
                format!("must be at least {}", humantime::format_duration(MIN_INTERVAL)),
            ));
        }
        if self.max_stuck_calls == 0 {
            return Err(KeyError::new("max_stuck_calls", "must be at least 1"));
        }
        if self.timeout.is_some_and(|t| t.is_zero()) {
            return Err(KeyError::new("timeout", "must be greater than 0"));
        }
        Ok(())
    }
}

/// The keys every collector section has besides its own.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CollectorCommon {
    pub enabled: Option<bool>,
    #[serde(default, with = "humantime_serde")]
    pub interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
}

impl CollectorCommon {
    pub const KEYS: &'static [&'static str] = &["enabled", "interval", "timeout"];
}
