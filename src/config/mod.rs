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
use crate::selection::{Profile, Selection, SelectionSpec};
use crate::stat_keys::Detail;

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
    pub metrics: MetricsConfig,
    pub sinks: SinksConfig,
}

/// What the Prometheus and OTLP sinks export (see `selection`). Each
/// switch left out follows the profile.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    pub profile: Profile,
    pub vcpu_kvm: Option<bool>,
    pub vcpu_state: Option<bool>,
    pub vm_kvm: Option<bool>,
    pub backing_chain: Option<bool>,
    pub haltpoll: Option<bool>,
    pub perf: Option<bool>,
    pub block_limits: Option<bool>,
    pub block_latency: Option<bool>,
    pub resctrl: Option<bool>,
    pub iothread: Option<bool>,
    pub dirtyrate: Option<bool>,
    pub node_per_cpu: Option<bool>,
    /// Globs over metric names: only these (empty: all the profile selects).
    #[serde(deserialize_with = "string_or_list")]
    pub include: Vec<String>,
    /// Globs over metric names: never these (wins over include).
    #[serde(deserialize_with = "string_or_list")]
    pub exclude: Vec<String>,
    /// Globs over label names removed from every series (e.g. "path").
    #[serde(deserialize_with = "string_or_list")]
    pub drop_labels: Vec<String>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            profile: Profile::Default,
            vcpu_kvm: None,
            vcpu_state: None,
            vm_kvm: None,
            backing_chain: None,
            haltpoll: None,
            perf: None,
            block_limits: None,
            block_latency: None,
            resctrl: None,
            iothread: None,
            dirtyrate: None,
            node_per_cpu: None,
            include: Vec::new(),
            exclude: Vec::new(),
            drop_labels: Vec::new(),
        }
    }
}

impl MetricsConfig {
    /// The switches set in the configuration, by detail.
    pub fn switches(&self) -> Vec<(Detail, bool)> {
        [
            (Detail::VcpuKvm, self.vcpu_kvm),
            (Detail::VcpuState, self.vcpu_state),
            (Detail::VmKvm, self.vm_kvm),
            (Detail::BackingChain, self.backing_chain),
            (Detail::Haltpoll, self.haltpoll),
            (Detail::Perf, self.perf),
            (Detail::BlockLimits, self.block_limits),
            (Detail::BlockLatency, self.block_latency),
            (Detail::Resctrl, self.resctrl),
            (Detail::Iothread, self.iothread),
            (Detail::Dirtyrate, self.dirtyrate),
            (Detail::NodePerCpu, self.node_per_cpu),
        ]
        .into_iter()
        .filter_map(|(d, v)| v.map(|v| (d, v)))
        .collect()
    }

    pub fn spec(&self) -> SelectionSpec {
        SelectionSpec {
            profile: self.profile,
            switches: self.switches(),
            include: self.include.clone(),
            exclude: self.exclude.clone(),
            drop_labels: self.drop_labels.clone(),
        }
    }
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
    pub guest: GuestConfig,
}

/// `[collectors.guest]`: what only the guest knows (off by default).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GuestConfig {
    pub enabled: bool,
    #[serde(with = "humantime_serde")]
    pub interval: Option<Duration>,
    #[serde(with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Ask the QEMU guest agent (filesystems, OS, users, load, addresses).
    /// libvirt allows it only on a read-write connection: this collector
    /// then opens its own (README "Guest data").
    pub agent: bool,
    /// Interface addresses (DHCP leases and ARP; the agent too with `agent`).
    pub addresses: bool,
    /// How long one domain's calls may take before the cycle goes on
    /// without it (default: three quarters of the timeout).
    #[serde(with = "humantime_serde")]
    pub call_timeout: Option<Duration>,
    pub calls_in_flight: usize,
    pub max_filesystems: usize,
    pub max_addresses: usize,
    pub max_string_bytes: usize,
}

impl Default for GuestConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            interval: Some(Duration::from_secs(60)),
            timeout: None,
            agent: true,
            addresses: true,
            call_timeout: None,
            calls_in_flight: 4,
            max_filesystems: 32,
            max_addresses: 32,
            max_string_bytes: 256,
        }
    }
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
    /// How often a domain without a running job is read (domains with one:
    /// every interval). Default: 3 intervals.
    #[serde(with = "humantime_serde")]
    pub idle_interval: Option<Duration>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    pub enabled: bool,
    #[serde(with = "humantime_serde")]
    pub interval: Option<Duration>,
    #[serde(with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Also read each CPU's counters (one libvirt call per CPU). Default:
    /// when the metrics export them (`metrics.node_per_cpu`); `true` also
    /// exports them unless `metrics.node_per_cpu = false`.
    pub per_cpu: Option<bool>,
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
            idle_interval: None,
        }
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self { enabled: true, interval: Some(Duration::from_secs(30)), timeout: None, per_cpu: None }
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
    Guest,
}

impl CollectorName {
    pub const ALL: [CollectorName; 5] = [
        CollectorName::DomainStats,
        CollectorName::Jobs,
        CollectorName::Node,
        CollectorName::Pools,
        CollectorName::Guest,
    ];

    pub fn key(self) -> &'static str {
        match self {
            CollectorName::DomainStats => "domain_stats",
            CollectorName::Jobs => "jobs",
            CollectorName::Node => "node",
            CollectorName::Pools => "pools",
            CollectorName::Guest => "guest",
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
    /// Domains per stats call: a host with more domains is read in chunks
    /// (virDomainListGetStats), so one call's latency and one stuck
    /// domain's reach stay bounded. 0: always one call for all domains.
    pub chunk_size: usize,
    /// Chunk calls in flight at once.
    pub chunks_in_flight: usize,
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
    /// Most series /metrics exports; beyond it series are dropped (counted
    /// in virtpulse_prometheus_series_dropped_total, logged once).
    pub max_series: u64,
    /// Snapshots whose exposition text is at most this big are rendered
    /// once when they arrive, and scrapes send that text: a scrape then
    /// costs a copy, not a render. Larger ones are rendered at each scrape
    /// (0: always). The text is held in memory (README "Sizing").
    pub prerender_max_bytes: kafka::ByteSize,
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
            guest: GuestConfig::default(),
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
            chunk_size: 50,
            chunks_in_flight: 2,
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
            max_series: 500_000,
            prerender_max_bytes: kafka::ByteSize(8 << 20),
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

/// `VIRTPULSE_` variables that are not configuration keys.
pub const NON_KEY_VARS: &[&str] = &[
    // Fault injection for the watchdog test (see collectors::controller).
    "VIRTPULSE_TEST_WEDGE_COLLECTOR",
];

/// Sections whose keys are free (librdkafka properties, headers...).
const FREE_SECTIONS: &[&str] =
    &["sinks.kafka.properties", "sinks.kafka.secret_files", "sinks.otlp.headers", "sinks.otlp.resource_attributes"];

/// Every configuration key, as config.example.toml documents it (each key
/// is there, set or commented out; a test holds the file to the structs).
pub fn known_keys() -> Vec<String> {
    let mut keys = Vec::new();
    let mut section = String::new();
    for line in include_str!("../../config.example.toml").lines() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
            continue;
        }
        let Some(rest) = line.strip_prefix('#').map(str::trim_start).or(Some(line)) else { continue };
        let Some((key, _)) = rest.split_once('=') else { continue };
        let key = key.trim();
        if !section.is_empty()
            && !key.is_empty()
            && key.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            && !FREE_SECTIONS.contains(&section.as_str())
        {
            keys.push(format!("{section}.{key}"));
        }
    }
    keys.sort();
    keys.dedup();
    keys
}

/// The environment variable that sets a key.
pub fn env_var_of(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.split('.').map(str::to_ascii_uppercase).collect::<Vec<_>>().join("__"))
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The valid variable closest to `var`, when one is reasonably close.
pub fn nearest_var(var: &str) -> Option<String> {
    let wanted = var.to_ascii_uppercase();
    let squash = |v: &str| v.replace('_', "");
    known_keys()
        .iter()
        .map(|k| env_var_of(k))
        .map(|v| {
            // Underscores miscounted are the commonest slip: weigh them less.
            let d = if squash(&v) == squash(&wanted) { 0 } else { edit_distance(&v, &wanted) };
            (d, v)
        })
        .filter(|(d, v)| *d <= v.len() / 3)
        .min()
        .map(|(_, v)| v)
}

fn unknown_var(var: &str, why: &str) -> ConfigError {
    let hint = match nearest_var(var) {
        Some(v) => format!("; did you mean {v}?"),
        None => String::new(),
    };
    ConfigError {
        source: format!("environment variable {var}"),
        key: String::new(),
        message: format!(
            "{why}: VIRTPULSE_ variables are VIRTPULSE_<SECTION>__<KEY>, sections and keys joined by two underscores (e.g. VIRTPULSE_LIBVIRT__URI){hint} Unset it, or see config.example.toml for the keys"
        ),
    }
}

fn apply_env(root: &mut toml::Table, vars: &[(String, String)], origins: &mut Origins) -> Result<(), ConfigError> {
    let known = known_keys();
    for (var, raw) in vars {
        let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        if NON_KEY_VARS.contains(&var.as_str()) {
            continue;
        }
        if !rest.contains("__") {
            return Err(unknown_var(var, "maps to no configuration key"));
        }
        let dotted_key = rest.split("__").map(|s| s.to_ascii_lowercase()).collect::<Vec<_>>().join(".");
        let free = FREE_SECTIONS.iter().any(|f| dotted_key.starts_with(&format!("{f}.")));
        if !free && !known.contains(&dotted_key) {
            return Err(unknown_var(var, &format!("maps to `{dotted_key}`, which is not a configuration key")));
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

    /// Upper bounds on every duration and count: a value past them is a typo
    /// (and would overflow timers or allocate without end), never a wish.
    fn bounds(&self, o: &Origins) -> Result<(), ConfigError> {
        const DAY: Duration = Duration::from_secs(24 * 3600);
        const HOUR: Duration = Duration::from_secs(3600);
        let c = &self.collectors;
        let k = &self.sinks.kafka;
        let t = &self.sinks.otlp;
        let durations: [(&str, Option<Duration>, Duration); 24] = [
            ("libvirt.keepalive_interval", Some(self.libvirt.keepalive_interval), HOUR),
            ("libvirt.reconnect_min_backoff", Some(self.libvirt.reconnect_min_backoff), HOUR),
            ("libvirt.reconnect_max_backoff", Some(self.libvirt.reconnect_max_backoff), DAY),
            ("collectors.interval", Some(c.interval), DAY),
            ("collectors.timeout", c.timeout, HOUR),
            ("collectors.domain_stats.interval", c.domain_stats.interval, DAY),
            ("collectors.domain_stats.timeout", c.domain_stats.timeout, HOUR),
            ("collectors.domain_stats.metadata_refresh", Some(c.domain_stats.metadata_refresh), DAY * 7),
            ("collectors.jobs.interval", c.jobs.interval, DAY),
            ("collectors.jobs.timeout", c.jobs.timeout, HOUR),
            ("collectors.jobs.completed_retention", Some(c.jobs.completed_retention), DAY * 7),
            ("collectors.jobs.idle_interval", c.jobs.idle_interval, DAY),
            ("collectors.node.interval", c.node.interval, DAY),
            ("collectors.node.timeout", c.node.timeout, HOUR),
            ("collectors.pools.interval", c.pools.interval, DAY),
            ("collectors.pools.timeout", c.pools.timeout, HOUR),
            ("sinks.kafka.message_timeout", Some(k.message_timeout), HOUR),
            ("sinks.kafka.spool_max_age", Some(k.spool_max_age), DAY * 366),
            ("sinks.kafka.spool_sync_interval", Some(k.spool_sync_interval), HOUR),
            ("sinks.kafka.shutdown_timeout", Some(k.shutdown_timeout), HOUR),
            ("sinks.otlp.export_interval", t.export_interval, DAY),
            ("sinks.otlp.timeout", t.timeout, HOUR),
            ("sinks.otlp.max_retry_backoff", Some(t.max_retry_backoff), DAY),
            ("sinks.otlp.shutdown_timeout", Some(t.shutdown_timeout), HOUR),
        ];
        for (key, value, max) in durations {
            if value.is_some_and(|v| v > max) {
                return Err(o.err(key, format!("must be at most {}", humantime::format_duration(max))));
            }
        }
        const M: u64 = 1_000_000;
        let counts: [(&str, u64, u64); 21] = [
            ("libvirt.keepalive_count", u64::from(self.libvirt.keepalive_count), 100),
            ("collectors.max_stuck_calls", c.max_stuck_calls as u64, 64),
            ("collectors.domain_stats.chunk_size", c.domain_stats.chunk_size as u64, 100_000),
            ("events.queue_capacity", self.events.queue_capacity as u64, 10 * M),
            ("sinks.prometheus.queue_capacity", self.sinks.prometheus.queue_capacity as u64, 1024),
            ("sinks.prometheus.max_series", self.sinks.prometheus.max_series, 100 * M),
            ("sinks.stdout.queue_capacity", self.sinks.stdout.queue_capacity as u64, M),
            ("sinks.kafka.queue_capacity", k.queue_capacity as u64, M),
            ("sinks.kafka.max_in_flight", k.max_in_flight as u64, M),
            ("sinks.kafka.topic_partitions", k.topic_partitions.max(0) as u64, 100_000),
            ("sinks.kafka.topic_replication", k.topic_replication.max(0) as u64, 100),
            ("sinks.otlp.queue_capacity", t.queue_capacity as u64, 1024 * 64),
            ("sinks.otlp.log_queue_capacity", t.log_queue_capacity as u64, 10 * M),
            ("sinks.otlp.log_batch_size", t.log_batch_size as u64, 100_000),
            ("sinks.otlp.cardinality_limit", t.cardinality_limit as u64, 100 * M),
            ("sinks.kafka.spool_max_bytes", k.spool_max_bytes.0, 1 << 40),
            ("sinks.prometheus.prerender_max_bytes", self.sinks.prometheus.prerender_max_bytes.0, 1 << 30),
            ("collectors.guest.calls_in_flight", c.guest.calls_in_flight as u64, 64),
            ("collectors.guest.max_filesystems", c.guest.max_filesystems as u64, 4096),
            ("collectors.guest.max_addresses", c.guest.max_addresses as u64, 4096),
            ("collectors.guest.max_string_bytes", c.guest.max_string_bytes as u64, 65536),
        ];
        for (key, value, max) in counts {
            if value > max {
                return Err(o.err(key, format!("must be at most {max}")));
            }
        }
        Ok(())
    }

    fn validate(&self, o: &Origins) -> Result<(), ConfigError> {
        self.bounds(o)?;
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
        // tracing-subscriber's directive parser slices inside multi-byte
        // characters and panics (found by the `config` fuzz target): a
        // filter is ASCII (targets, levels, span fields) and checked as such.
        if !self.agent.log_level.is_ascii() || self.agent.log_level.len() > 1024 {
            return Err(o.err(
                "agent.log_level",
                "must be ASCII and at most 1024 bytes; use e.g. \"info\" or \"virtpulse=debug\"",
            ));
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
        if let Some(idle) = self.collectors.jobs.idle_interval {
            if idle < self.schedule(CollectorName::Jobs).0 {
                return Err(o.err("collectors.jobs.idle_interval", "must not be shorter than the jobs interval"));
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
        self.selection().map_err(|(key, m)| o.err(&format!("metrics.{key}"), m))?;
        let p = &self.sinks.prometheus;
        if p.enabled {
            if p.listen.parse::<SocketAddr>().is_err() {
                return Err(o.err(
                    "sinks.prometheus.listen",
                    format!("{:?} is not an address:port (e.g. \"0.0.0.0:9177\" or \"[::1]:9177\")", p.listen),
                ));
            }
            if let Some(problem) = metrics_path_problem(&p.path) {
                return Err(o.err("sinks.prometheus.path", problem));
            }
        }
        if p.queue_capacity == 0 {
            return Err(o.err("sinks.prometheus.queue_capacity", "must be at least 1"));
        }
        if p.max_series == 0 {
            return Err(
                o.err("sinks.prometheus.max_series", "must be at least 1 (the agent's own metrics are not counted)")
            );
        }
        if ds.chunks_in_flight == 0 || ds.chunks_in_flight > 16 {
            return Err(o.err(
                "collectors.domain_stats.chunks_in_flight",
                "must be between 1 and 16 (libvirtd serves 5 calls of one client at once by default)",
            ));
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
            CollectorName::Guest => (c.guest.interval, c.guest.timeout),
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

    /// What the metric sinks export.
    pub fn selection(&self) -> Result<Selection, (&'static str, String)> {
        let mut spec = self.metrics.spec();
        // Asking the node collector for per-CPU counters means wanting them
        // exported, unless metrics.node_per_cpu says otherwise.
        if self.collectors.node.per_cpu == Some(true) && self.metrics.node_per_cpu.is_none() {
            spec.switches.push((Detail::NodePerCpu, true));
        }
        Selection::new(&spec)
    }

    /// Whether a sink consumes whole records of the collectors (stdout, or
    /// Kafka with metric records): then every configured group is asked for
    /// and every field kept, whatever the metric selection exports.
    pub fn record_consumers(&self) -> bool {
        self.sinks.stdout.enabled || (self.sinks.kafka.enabled && self.sinks.kafka.metrics)
    }

    /// Whether a sink exports metrics (Prometheus, OTLP metrics).
    pub fn metric_consumers(&self) -> bool {
        self.sinks.prometheus.enabled || (self.sinks.otlp.enabled && self.sinks.otlp.metrics)
    }

    /// How often the jobs collector reads a domain without a running job.
    /// How long one guest's calls may take within a guest cycle.
    pub fn guest_call_timeout(&self) -> Duration {
        let (_, timeout) = self.schedule(CollectorName::Guest);
        self.collectors.guest.call_timeout.unwrap_or(timeout * 3 / 4).min(timeout)
    }

    pub fn jobs_idle_interval(&self) -> Duration {
        self.collectors.jobs.idle_interval.unwrap_or_else(|| self.schedule(CollectorName::Jobs).0 * 6)
    }

    /// Whether the node collector reads each host CPU's counters.
    pub fn node_per_cpu(&self, selection: &Selection) -> bool {
        self.collectors.node.per_cpu.unwrap_or_else(|| selection.enabled(Detail::NodePerCpu))
    }

    pub fn hostname(&self) -> String {
        self.agent.hostname.clone().unwrap_or_else(system_hostname)
    }
}

/// Paths the endpoint serves besides the metrics.
pub const RESERVED_PATHS: &[&str] = &["/", "/healthz", "/readyz"];

/// Why `path` cannot be the metrics path, if it cannot.
pub fn metrics_path_problem(path: &str) -> Option<String> {
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

fn system_hostname() -> String {
    let name = rustix::system::uname().nodename().to_string_lossy().into_owned();
    if name.is_empty() {
        "localhost".into()
    } else {
        name
    }
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
    fn metric_selection_is_validated_and_named() {
        let c =
            load("[metrics]\nprofile = \"everything\"\nvcpu_kvm = false\ninclude = \"libvirt_domain_*\"\n").unwrap();
        let sel = c.selection().unwrap();
        assert!(!sel.enabled(Detail::VcpuKvm));
        assert!(sel.enabled(Detail::VmKvm));
        assert!(!sel.selects_name("libvirt_node_cpus"));
        for (text, key, needle) in [
            ("[metrics]\nprofile = \"all\"\n", "metrics.profile", "unknown variant"),
            ("[metrics]\ninclude = [\"libvirt.domain\"]\n", "metrics.include", "letters, digits"),
            ("[metrics]\nexclude = [\"\"]\n", "metrics.exclude", "empty pattern"),
            ("[metrics]\ndrop_labels = [\"dom*\"]\n", "metrics.drop_labels", "`domain` label"),
            ("[metrics]\nvcpu_kvm = \"yes\"\n", "metrics.vcpu_kvm", "invalid type"),
            ("[metrics]\nvcpu_kvms = true\n", "metrics.vcpu_kvms", "unknown field"),
            ("[sinks.prometheus]\nmax_series = 0\n", "sinks.prometheus.max_series", "at least 1"),
            // Found by the `config` fuzz target: tracing-subscriber panicked on this.
            ("[agent]\nlog_level = \"ins: ~5\u{e9}\u{e9}{{\"\n", "agent.log_level", "ASCII"),
            (
                "[collectors.domain_stats]\nchunks_in_flight = 0\n",
                "collectors.domain_stats.chunks_in_flight",
                "between",
            ),
            (
                "[collectors.jobs]\ninterval = \"5s\"\nidle_interval = \"1s\"\n",
                "collectors.jobs.idle_interval",
                "shorter",
            ),
        ] {
            let e = load(text).unwrap_err();
            assert_eq!(e.key, key, "{text}: {e}");
            assert!(e.message.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn every_switch_is_a_key_and_documented() {
        let example = include_str!("../../config.example.toml");
        for sw in crate::selection::SWITCHES {
            let c = load(&format!("[metrics]\n{} = true\n", sw.key)).unwrap();
            assert_eq!(c.metrics.switches(), vec![(sw.detail, true)], "{}", sw.key);
            assert!(example.contains(&format!("# {} = false", sw.key)), "config.example.toml lacks {}", sw.key);
        }
        assert_eq!(MetricsConfig::default().switches().len(), 0);
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
                ("VIRTPULSE_TEST_WEDGE_COLLECTOR", "x"),
                ("OTHER_UNRELATED", "x"),
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
        assert!(e.message.contains("not a configuration key"), "{e}");
        assert_eq!(e.source, "environment variable VIRTPULSE_NOPE__X");
    }

    #[test]
    fn a_variable_that_maps_to_no_key_is_an_error_with_the_nearest_one() {
        for (var, nearest) in [
            ("VIRTPULSE_LIBVIRT_URI", "VIRTPULSE_LIBVIRT__URI"),
            ("VIRTPULSE_SINKS__PROMETHEUS_LISTEN", "VIRTPULSE_SINKS__PROMETHEUS__LISTEN"),
            ("VIRTPULSE_COLLECTORS__INTERVALL", "VIRTPULSE_COLLECTORS__INTERVAL"),
            ("virtpulse_x", ""),
        ] {
            let r = Config::from_parts("", "f.toml", &env(&[(var, "qemu+tcp://elsewhere/system")]));
            if nearest.is_empty() {
                assert!(r.is_ok(), "{var} is not ours (the prefix is upper case)");
                continue;
            }
            let e = r.unwrap_err();
            assert_eq!(e.source, format!("environment variable {var}"));
            assert!(e.message.contains(&format!("did you mean {nearest}?")), "{var}: {e}");
        }
        // Free tables take any key.
        Config::from_parts("", "f.toml", &env(&[("VIRTPULSE_SINKS__OTLP__HEADERS__X_TENANT", "a")])).unwrap();
    }

    #[test]
    fn the_documented_keys_are_exactly_the_accepted_ones() {
        let known = known_keys();
        let sections: std::collections::BTreeSet<String> =
            known.iter().filter_map(|k| k.rsplit_once('.').map(|(s, _)| s.to_string())).collect();
        for section in &sections {
            let e = load(&format!("[{section}]\nzz_not_a_key = 1\n")).unwrap_err();
            // serde: "expected one of `a`, `b`" or "expected `a` or `b`".
            let first = e.message.lines().next().unwrap_or("");
            let expected = first.split("expected ").nth(1).unwrap_or_else(|| panic!("{section}: {e}"));
            let expected = expected.strip_prefix("one of ").unwrap_or(expected);
            let accepted: std::collections::BTreeSet<&str> = expected
                .split(", ")
                .flat_map(|f| f.split(" or "))
                .map(|f| f.trim().trim_matches('`'))
                .filter(|f| !f.is_empty())
                .collect();
            let documented: std::collections::BTreeSet<&str> = known
                .iter()
                .chain(sections.iter())
                .filter_map(|k| k.strip_prefix(&format!("{section}.")))
                .filter(|k| !k.contains('.'))
                .chain(FREE_SECTIONS.iter().filter_map(|f| f.strip_prefix(&format!("{section}."))))
                .collect();
            assert_eq!(accepted, documented, "[{section}]: accepted vs documented in config.example.toml");
        }
    }

    #[test]
    fn every_duration_and_count_is_bounded() {
        for (text, key) in [
            ("[collectors]\ninterval = \"100000000000s\"\n", "collectors.interval"),
            ("[events]\nqueue_capacity = 9223372036854775807\n", "events.queue_capacity"),
            ("[sinks.kafka]\nmax_in_flight = 100000000000\n", "sinks.kafka.max_in_flight"),
            ("[sinks.otlp]\nmax_retry_backoff = \"1000d\"\n", "sinks.otlp.max_retry_backoff"),
            ("[collectors.domain_stats]\nmetadata_refresh = \"3650d\"\n", "collectors.domain_stats.metadata_refresh"),
            ("[sinks.prometheus]\npath = \"/healthz\"\n", "sinks.prometheus.path"),
            ("[sinks.prometheus]\npath = \"/readyz\"\n", "sinks.prometheus.path"),
            ("[sinks.prometheus]\npath = \"/{x}\"\n", "sinks.prometheus.path"),
            ("[sinks.prometheus]\npath = \"/a//b\"\n", "sinks.prometheus.path"),
            ("[sinks.prometheus]\npath = \"/m*\"\n", "sinks.prometheus.path"),
        ] {
            let e = load(text).unwrap_err();
            assert_eq!(e.key, key, "{text}: {e}");
        }
        load("[sinks.prometheus]\npath = \"/prometheus/metrics\"\n").unwrap();
    }
}
