//! Configuration: one typed struct, read once from a TOML file and layered
//! with `VIRTPULSE_<SECTION>__<KEY>` environment overrides.
//!
//! Every error names the offending key and where it came from (the file or
//! the environment variable), and says what would be accepted.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::filter::DomainFilter;
use crate::libvirt::stats::{group_by_name, ALL_GROUPS};

pub mod kafka;
pub mod otlp;
pub use kafka::{ByteSize, KafkaConfig, SpoolSync};
pub use otlp::{OtlpCompression, OtlpConfig, OtlpProtocol, OtlpSettings};

pub const DEFAULT_PATH: &str = "/etc/virtpulse/config.toml";
pub const ENV_PREFIX: &str = "VIRTPULSE_";

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub agent: AgentConfig,
    pub libvirt: LibvirtConfig,
    pub collectors: CollectorsConfig,
    pub domains: DomainsConfig,
    pub events: EventsConfig,
    pub sinks: SinksConfig,
}

#[derive(Debug, Clone, Deserialize)]
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Host name put on every record; defaults to the system host name.
    pub hostname: Option<String>,
    /// tracing filter directive, e.g. "info" or "virtpulse=debug".
    pub log_level: String,
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Deserialize)]
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CollectorsConfig {
    /// Default interval for every collector.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Default deadline for one collection; defaults to the interval (at most 10s).
    #[serde(with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// libvirt calls still running past their deadline (a hung QEMU) before
    /// a collector stops starting new cycles.
    pub max_stuck_calls: usize,
    pub domain_stats: DomainStatsConfig,
    pub jobs: JobsConfig,
    pub node: NodeConfig,
    pub pools: PoolsConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobsConfig {
    pub enabled: bool,
    #[serde(with = "humantime_serde")]
    pub interval: Option<Duration>,
    #[serde(with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// How long a completed job stays on view in Prometheus after it was first seen.
    #[serde(with = "humantime_serde")]
    pub completed_retention: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    pub enabled: bool,
    #[serde(with = "humantime_serde")]
    pub interval: Option<Duration>,
    #[serde(with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Also read each CPU's counters (one libvirt call per CPU).
    pub per_cpu: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolsConfig {
    pub enabled: bool,
    #[serde(with = "humantime_serde")]
    pub interval: Option<Duration>,
    #[serde(with = "humantime_serde")]
    pub timeout: Option<Duration>,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Some(Duration::from_secs(5)),
            timeout: None,
            completed_retention: Duration::from_secs(600),
        }
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self { enabled: true, interval: Some(Duration::from_secs(30)), timeout: None, per_cpu: true }
    }
}

impl Default for PoolsConfig {
    fn default() -> Self {
        Self { enabled: true, interval: Some(Duration::from_secs(60)), timeout: None }
    }
}

/// Which collector a schedule is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CollectorName {
    DomainStats,
    Jobs,
    Node,
    Pools,
}

impl CollectorName {
    pub const ALL: [CollectorName; 4] =
        [CollectorName::DomainStats, CollectorName::Jobs, CollectorName::Node, CollectorName::Pools];

    pub fn key(self) -> &'static str {
        match self {
            CollectorName::DomainStats => "domain_stats",
            CollectorName::Jobs => "jobs",
            CollectorName::Node => "node",
            CollectorName::Pools => "pools",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DomainStatsConfig {
    pub enabled: bool,
    #[serde(with = "humantime_serde")]
    pub interval: Option<Duration>,
    #[serde(with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Stats groups to collect; "all" means every group the daemon supports.
    #[serde(deserialize_with = "string_or_list")]
    pub groups: Vec<String>,
    /// Report every layer of each disk's backing chain.
    pub backing_chain: bool,
    /// Skip domains whose job lock is held (a migration, a hung QEMU)
    /// instead of waiting for it.
    pub nowait: bool,
    /// How often a domain's XML (OS type, vCPUs, memory, Nova metadata) is re-read.
    #[serde(with = "humantime_serde")]
    pub metadata_refresh: Duration,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DomainsConfig {
    /// Glob patterns (`*`, `?`) or `/regex/` on domain names; empty = all.
    #[serde(deserialize_with = "string_or_list")]
    pub include: Vec<String>,
    #[serde(deserialize_with = "string_or_list")]
    pub exclude: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinksConfig {
    pub prometheus: PrometheusConfig,
    pub stdout: StdoutConfig,
    pub kafka: KafkaConfig,
    pub otlp: OtlpConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrometheusConfig {
    pub enabled: bool,
    pub listen: String,
    pub path: String,
    pub queue_capacity: usize,
    /// TLS and basic auth for every endpoint, in the Prometheus
    /// exporter-toolkit web config format (see README "Endpoint security").
    pub web_config_file: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StdoutConfig {
    pub enabled: bool,
    pub queue_capacity: usize,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self { hostname: None, log_level: "info".into(), log_format: LogFormat::Auto }
    }
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

impl Default for CollectorsConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(15),
            timeout: None,
            max_stuck_calls: 2,
            domain_stats: DomainStatsConfig::default(),
            jobs: JobsConfig::default(),
            node: NodeConfig::default(),
            pools: PoolsConfig::default(),
        }
    }
}

impl Default for DomainStatsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: None,
            timeout: None,
            groups: vec!["all".into()],
            backing_chain: true,
            nowait: true,
            metadata_refresh: Duration::from_secs(300),
        }
    }
}

impl Default for PrometheusConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: "0.0.0.0:9177".into(),
            path: "/metrics".into(),
            queue_capacity: 16,
            web_config_file: None,
        }
    }
}

impl Default for StdoutConfig {
    fn default() -> Self {
        Self { enabled: false, queue_capacity: 4096 }
    }
}

fn string_or_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(
        match OneOrMany::deserialize(d)
            .map_err(|_| serde::de::Error::custom("expected a list of strings or a comma-separated string"))?
        {
            OneOrMany::One(s) => s.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect(),
            OneOrMany::Many(v) => v,
        },
    )
}

/// A configuration error: which key, from where, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub source: String,
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "configuration error in {}: {}", self.source, self.message)
        } else {
            write!(f, "configuration error in {}: key `{}`: {}", self.source, self.key, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Where each value came from, for error messages.
struct Origins {
    file: String,
    env: BTreeMap<String, String>,
}

impl Origins {
    fn of(&self, key: &str) -> String {
        // An env var overriding `a.b` also explains errors reported at `a.b.c`.
        self.env
            .iter()
            .filter(|(k, _)| {
                key == k.as_str() || key.starts_with(&format!("{k}.")) || k.starts_with(&format!("{key}."))
            })
            .map(|(_, var)| format!("environment variable {var}"))
            .next()
            .unwrap_or_else(|| self.file.clone())
    }

    fn err(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError { source: self.of(key), key: key.to_string(), message: message.into() }
    }
}

/// Parses an environment value as a TOML value when it is one (numbers,
/// booleans, arrays), else takes it as a string ("5s", "qemu:///system").
fn env_value(raw: &str) -> toml::Value {
    let doc = format!("v = {raw}");
    match doc.parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").unwrap_or_else(|| toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

fn apply_env(root: &mut toml::Table, vars: &[(String, String)], origins: &mut Origins) -> Result<(), ConfigError> {
    for (var, raw) in vars {
        let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        if !rest.contains("__") {
            continue;
        }
        let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
        if path.iter().any(|p| p.is_empty()) {
            return Err(ConfigError {
                source: format!("environment variable {var}"),
                key: String::new(),
                message: "empty key segment (use VIRTPULSE_<SECTION>__<KEY>, e.g. VIRTPULSE_LIBVIRT__URI)".into(),
            });
        }
        let dotted = path.join(".");
        let mut table = &mut *root;
        for seg in &path[..path.len() - 1] {
            let entry = table.entry(seg.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
            table = match entry {
                toml::Value::Table(t) => t,
                _ => {
                    return Err(ConfigError {
                        source: format!("environment variable {var}"),
                        key: dotted,
                        message: format!("`{seg}` is a value, not a section"),
                    })
                }
            };
        }
        table.insert(path[path.len() - 1].clone(), env_value(raw));
        origins.env.insert(dotted, var.clone());
    }
    Ok(())
}

impl Config {
    /// Loads `path` (or the default path, where a missing file means all
    /// defaults), applies the process environment, and validates.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let vars: Vec<(String, String)> = std::env::vars().filter(|(k, _)| k.starts_with(ENV_PREFIX)).collect();
        let (text, file) = match path {
            Some(p) => (
                std::fs::read_to_string(p).map_err(|e| ConfigError {
                    source: p.display().to_string(),
                    key: String::new(),
                    message: format!("cannot read the file: {e}"),
                })?,
                p.to_path_buf(),
            ),
            None => {
                let p = PathBuf::from(DEFAULT_PATH);
                match std::fs::read_to_string(&p) {
                    Ok(t) => (t, p),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => (String::new(), p),
                    Err(e) => {
                        return Err(ConfigError {
                            source: p.display().to_string(),
                            key: String::new(),
                            message: format!("cannot read the file: {e}"),
                        })
                    }
                }
            }
        };
        Self::from_parts(&text, &file.display().to_string(), &vars)
    }

    /// Parses TOML text plus environment overrides; `source` names the text in errors.
    pub fn from_parts(text: &str, source: &str, env: &[(String, String)]) -> Result<Config, ConfigError> {
        let mut origins = Origins { file: source.to_string(), env: BTreeMap::new() };
        let mut root: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigError {
            source: source.to_string(),
            key: String::new(),
            message: format!("invalid TOML: {}", e.message().trim()),
        })?;
        apply_env(&mut root, env, &mut origins)?;
        let cfg: Config = serde_path_to_error::deserialize(toml::Value::Table(root)).map_err(|e| {
            // serde_path_to_error's path ends with the unknown field's name too.
            let key = e.path().to_string();
            let key = if key == "." { String::new() } else { key };
            let message = e.into_inner().to_string();
            origins.err(&key, message)
        })?;
        cfg.validate(&origins)?;
        Ok(cfg)
    }

    fn validate(&self, o: &Origins) -> Result<(), ConfigError> {
        let min_interval = Duration::from_millis(10);
        if self.libvirt.uri.trim().is_empty() {
            return Err(o.err("libvirt.uri", "must not be empty (e.g. \"qemu:///system\")"));
        }
        if self.libvirt.keepalive_interval.as_secs() > i32::MAX as u64 {
            return Err(o.err("libvirt.keepalive_interval", "too large"));
        }
        if !self.libvirt.keepalive_interval.is_zero() && self.libvirt.keepalive_count == 0 {
            return Err(o.err("libvirt.keepalive_count", "must be at least 1 when keepalive is enabled"));
        }
        if self.libvirt.reconnect_min_backoff.is_zero() {
            return Err(o.err("libvirt.reconnect_min_backoff", "must be greater than 0"));
        }
        if self.libvirt.reconnect_max_backoff < self.libvirt.reconnect_min_backoff {
            return Err(
                o.err("libvirt.reconnect_max_backoff", "must not be smaller than libvirt.reconnect_min_backoff")
            );
        }
        if let Some(h) = &self.agent.hostname {
            if h.trim().is_empty() {
                return Err(o.err("agent.hostname", "must not be empty; remove the key to use the system host name"));
            }
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.agent.log_level) {
            return Err(o.err(
                "agent.log_level",
                format!("not a valid filter ({e}); use e.g. \"info\" or \"virtpulse=debug\""),
            ));
        }
        if self.collectors.interval < min_interval {
            return Err(
                o.err("collectors.interval", format!("must be at least {}", humantime::format_duration(min_interval)))
            );
        }
        if self.collectors.max_stuck_calls == 0 {
            return Err(o.err("collectors.max_stuck_calls", "must be at least 1"));
        }
        if let Some(t) = self.collectors.timeout {
            if t.is_zero() {
                return Err(o.err("collectors.timeout", "must be greater than 0"));
            }
        }
        for name in CollectorName::ALL {
            let (own_interval, own_timeout) = self.schedule_overrides(name);
            let key = |k: &str| format!("collectors.{}.{k}", name.key());
            if let Some(i) = own_interval {
                if i < min_interval {
                    return Err(o.err(
                        &key("interval"),
                        format!("must be at least {}", humantime::format_duration(min_interval)),
                    ));
                }
            }
            let (interval, timeout) = self.schedule(name);
            if timeout.is_zero() {
                return Err(o.err(&key("timeout"), "must be greater than 0"));
            }
            if timeout > interval {
                let k = if own_timeout.is_some() { key("timeout") } else { "collectors.timeout".to_string() };
                return Err(o.err(
                    &k,
                    format!(
                        "the deadline ({}) must not exceed the {} interval ({}): a collection must end before the next one is due",
                        humantime::format_duration(timeout),
                        name.key(),
                        humantime::format_duration(interval)
                    ),
                ));
            }
        }
        let ds = &self.collectors.domain_stats;
        let (interval, _) = self.schedule(CollectorName::DomainStats);
        if ds.metadata_refresh < interval {
            return Err(o.err(
                "collectors.domain_stats.metadata_refresh",
                "must not be shorter than the domain stats interval",
            ));
        }
        self.stats_groups_mask().map_err(|m| o.err("collectors.domain_stats.groups", m))?;
        DomainFilter::new(&self.domains.include, &self.domains.exclude)
            .map_err(|(key, m)| o.err(&format!("domains.{key}"), m))?;
        let p = &self.sinks.prometheus;
        if p.enabled {
            if p.listen.parse::<SocketAddr>().is_err() {
                return Err(o.err(
                    "sinks.prometheus.listen",
                    format!("{:?} is not an address:port (e.g. \"0.0.0.0:9177\" or \"[::1]:9177\")", p.listen),
                ));
            }
            if !p.path.starts_with('/') || p.path.len() < 2 {
                return Err(o.err("sinks.prometheus.path", "must start with / and name a path (e.g. \"/metrics\")"));
            }
            if let Some(f) = &p.web_config_file {
                crate::sinks::prometheus::web::Security::load(f)
                    .map_err(|m| o.err("sinks.prometheus.web_config_file", m))?;
            }
        }
        if p.queue_capacity == 0 {
            return Err(o.err("sinks.prometheus.queue_capacity", "must be at least 1"));
        }
        if self.events.queue_capacity == 0 {
            return Err(o.err("events.queue_capacity", "must be at least 1"));
        }
        if self.sinks.stdout.queue_capacity == 0 {
            return Err(o.err("sinks.stdout.queue_capacity", "must be at least 1"));
        }
        self.sinks.kafka.validate(o)?;
        self.sinks.otlp.validate(o)?;
        Ok(())
    }

    fn schedule_overrides(&self, name: CollectorName) -> (Option<Duration>, Option<Duration>) {
        let c = &self.collectors;
        match name {
            CollectorName::DomainStats => (c.domain_stats.interval, c.domain_stats.timeout),
            CollectorName::Jobs => (c.jobs.interval, c.jobs.timeout),
            CollectorName::Node => (c.node.interval, c.node.timeout),
            CollectorName::Pools => (c.pools.interval, c.pools.timeout),
        }
    }

    /// (interval, deadline) of a collector: its own keys, else the
    /// `[collectors]` defaults; the deadline defaults to the interval, at most 10s.
    pub fn schedule(&self, name: CollectorName) -> (Duration, Duration) {
        let (own_interval, own_timeout) = self.schedule_overrides(name);
        let interval = own_interval.unwrap_or(self.collectors.interval);
        let timeout = own_timeout.or(self.collectors.timeout).unwrap_or_else(|| interval.min(Duration::from_secs(10)));
        (interval, timeout)
    }

    /// (interval, deadline) of the domain stats collector.
    pub fn domain_stats_schedule(&self) -> (Duration, Duration) {
        self.schedule(CollectorName::DomainStats)
    }

    /// The stats groups bit mask asked for (before probing the daemon).
    pub fn stats_groups_mask(&self) -> Result<u32, String> {
        let mut mask = 0;
        for g in &self.collectors.domain_stats.groups {
            if g == "all" {
                mask |= ALL_GROUPS.iter().fold(0, |m, g| m | g.bit);
                continue;
            }
            match group_by_name(g) {
                Some(grp) => mask |= grp.bit,
                None => {
                    let known: Vec<&str> = ALL_GROUPS.iter().map(|g| g.name).collect();
                    return Err(format!("unknown stats group {g:?}; known groups: all, {}", known.join(", ")));
                }
            }
        }
        if mask == 0 {
            return Err("no stats group selected; use [\"all\"] or a list of groups".into());
        }
        Ok(mask)
    }

    pub fn hostname(&self) -> String {
        self.agent.hostname.clone().unwrap_or_else(system_hostname)
    }
}

fn system_hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buf is writable for its length.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, ConfigError> {
        Config::from_parts(text, "/etc/x.toml", &[])
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_are_valid() {
        let c = load("").unwrap();
        assert_eq!(c.libvirt.uri, "qemu:///system");
        assert!(c.libvirt.read_only);
        assert_eq!(c.sinks.prometheus.listen, "0.0.0.0:9177");
        assert_eq!(c.sinks.prometheus.path, "/metrics");
        assert_eq!(c.domain_stats_schedule(), (Duration::from_secs(15), Duration::from_secs(10)));
        assert_eq!(c.stats_groups_mask().unwrap(), 2047);
    }

    #[test]
    fn example_config_is_valid() {
        let text = include_str!("../../config.example.toml");
        load(text).unwrap();
    }

    #[test]
    fn unknown_key_is_named_with_file() {
        let e = load("[collectors]\nintervall = \"5s\"\n").unwrap_err();
        assert_eq!(e.source, "/etc/x.toml");
        assert_eq!(e.key, "collectors.intervall");
        assert!(e.message.contains("unknown field `intervall`"), "{e}");
        assert!(e.to_string().contains("/etc/x.toml"), "{e}");
    }

    #[test]
    fn wrong_type_is_named() {
        let e = load("[libvirt]\nread_only = \"yes\"\n").unwrap_err();
        assert_eq!(e.key, "libvirt.read_only");
        assert!(e.message.contains("invalid type"), "{e}");
        let e = load("[collectors]\ninterval = \"fast\"\n").unwrap_err();
        assert_eq!(e.key, "collectors.interval");
    }

    #[test]
    fn impossible_values_are_rejected() {
        for (text, key) in [
            ("[collectors]\ninterval = \"0s\"\n", "collectors.interval"),
            ("[collectors]\ninterval = \"5s\"\ntimeout = \"6s\"\n", "collectors.timeout"),
            ("[collectors.pools]\ninterval = \"1s\"\ntimeout = \"2s\"\n", "collectors.pools.timeout"),
            ("[collectors.node]\ninterval = \"1ms\"\n", "collectors.node.interval"),
            ("[collectors.jobs]\nper_cpu = true\n", "collectors.jobs.per_cpu"),
            ("[collectors.domain_stats]\ngroups = [\"cpu\"]\n", "collectors.domain_stats.groups"),
            ("[collectors.domain_stats]\ngroups = []\n", "collectors.domain_stats.groups"),
            ("[sinks.prometheus]\nlisten = \"nowhere\"\n", "sinks.prometheus.listen"),
            ("[sinks.prometheus]\npath = \"metrics\"\n", "sinks.prometheus.path"),
            ("[domains]\ninclude = [\"/([/\"]\n", "domains.include"),
            ("[libvirt]\nuri = \"\"\n", "libvirt.uri"),
            (
                "[libvirt]\nreconnect_min_backoff = \"10s\"\nreconnect_max_backoff = \"1s\"\n",
                "libvirt.reconnect_max_backoff",
            ),
            ("[agent]\nlog_level = \"[\"\n", "agent.log_level"),
        ] {
            let e = load(text).unwrap_err();
            assert_eq!(e.key, key, "{text}: {e}");
        }
    }

    #[test]
    fn invalid_toml_is_reported() {
        let e = load("[libvirt\n").unwrap_err();
        assert!(e.message.starts_with("invalid TOML"), "{e}");
    }

    #[test]
    fn env_overrides_file_and_is_named_in_errors() {
        let c = Config::from_parts(
            "[libvirt]\nuri = \"qemu:///system\"\n",
            "f.toml",
            &env(&[
                ("VIRTPULSE_LIBVIRT__URI", "test:///default"),
                ("VIRTPULSE_SINKS__PROMETHEUS__LISTEN", "127.0.0.1:9999"),
                ("VIRTPULSE_COLLECTORS__DOMAIN_STATS__GROUPS", "state, vcpu"),
                ("VIRTPULSE_LIBVIRT__READ_ONLY", "false"),
                ("VIRTPULSE_UNRELATED", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(c.libvirt.uri, "test:///default");
        assert_eq!(c.sinks.prometheus.listen, "127.0.0.1:9999");
        assert_eq!(c.collectors.domain_stats.groups, vec!["state", "vcpu"]);
        assert!(!c.libvirt.read_only);

        let e = Config::from_parts("", "f.toml", &env(&[("VIRTPULSE_COLLECTORS__INTERVAL", "soon")])).unwrap_err();
        assert_eq!(e.source, "environment variable VIRTPULSE_COLLECTORS__INTERVAL");
        let e = Config::from_parts("", "f.toml", &env(&[("VIRTPULSE_NOPE__X", "1")])).unwrap_err();
        assert!(e.message.contains("unknown field `nope`"), "{e}");
        assert_eq!(e.source, "environment variable VIRTPULSE_NOPE__X");
    }
}
