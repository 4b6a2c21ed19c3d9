//! Configuration: one TOML file layered with `VIRTPULSE_<SECTION>__<KEY>`
//! environment overrides, read once and checked completely before anything
//! starts.
//!
//! The loader knows the agent's own sections (`core`) and nothing of the
//! collectors' and sinks': the registry hands it a `Schema` listing each
//! component's section (its type, defaults and checks live with the
//! component). Every error names the offending key and where it came from
//! (the file or the environment variable), and says what would be accepted.

use std::path::{Path, PathBuf};
use std::time::Duration;

pub(crate) mod core;
pub(crate) mod error;
pub(crate) mod keys;
pub(crate) mod section;

pub use self::core::{
    AdminConfig, AgentConfig, CollectorCommon, CollectorDefaults, DomainsConfig, EventsConfig, LibvirtConfig,
    LogFormat, MetricsConfig, MIN_INTERVAL,
};
pub use error::ConfigError;
pub use keys::{env_var_of, KeyTree, ENV_PREFIX};
pub use section::{typed, AnyConfig, ByteSize, KeyError, SectionConfig, SectionContext, SectionSpec};

use crate::record::kind::Catalog;
use crate::selection::Selection;
use error::{join, Origins};
use section::{at_most, DAY, HOUR};

pub const DEFAULT_PATH: &str = "/etc/virtpulse/config.toml";

/// What the loader needs to know of the components: their sections, and
/// the catalog whose switches `[metrics]` sets.
#[derive(Clone, Copy)]
pub struct Schema<'a> {
    pub collectors: &'a [&'a dyn SectionSpec],
    pub sinks: &'a [&'a dyn SectionSpec],
    pub catalog: Catalog,
}

/// One component's section, loaded.
#[derive(Clone)]
pub struct Component {
    pub name: &'static str,
    pub enabled: bool,
    /// A collector's own interval and deadline, when its section sets them
    /// (or its own default interval).
    pub interval: Option<Duration>,
    pub timeout: Option<Duration>,
    pub config: AnyConfig,
    /// The section as written (file and environment), so a reload can tell
    /// which components changed.
    pub raw: toml::Value,
}

impl std::fmt::Debug for Component {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Component").field("name", &self.name).field("enabled", &self.enabled).finish()
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub agent: AgentConfig,
    pub libvirt: LibvirtConfig,
    pub domains: DomainsConfig,
    pub events: EventsConfig,
    pub metrics: MetricsConfig,
    pub admin: AdminConfig,
    pub collector_defaults: CollectorDefaults,
    /// Every registered collector, in the registry's order.
    pub collectors: Vec<Component>,
    /// Every registered sink, in the registry's order.
    pub sinks: Vec<Component>,
    /// The catalog the selection was checked against.
    pub catalog: Catalog,
    /// Switches enabled collectors imply (`[metrics]` overrides them).
    pub implied_switches: Vec<(String, bool)>,
}

/// The agent's own sections and the keys of `[collectors]` besides the
/// collectors'.
const CORE_SECTIONS: &[&str] = &["agent", "libvirt", "domains", "events", "metrics", "admin", "collectors", "sinks"];

impl Schema<'_> {
    /// Every key, with its default.
    pub fn keys(&self) -> KeyTree {
        let mut t = KeyTree::default();
        let value = |v: Result<serde_json::Value, serde_json::Error>| v.unwrap_or_default();
        t.add("agent", &value(serde_json::to_value(AgentConfig::default())));
        t.add("libvirt", &value(serde_json::to_value(LibvirtConfig::default())));
        t.add("domains", &value(serde_json::to_value(DomainsConfig::default())));
        t.add("events", &value(serde_json::to_value(EventsConfig::default())));
        t.add("admin", &value(serde_json::to_value(AdminConfig::default())));
        t.add("metrics", &value(serde_json::to_value(MetricsConfig::default())));
        for s in self.catalog.switches() {
            t.add(&format!("metrics.{}", s.key), &serde_json::Value::Null);
        }
        t.add("collectors", &value(serde_json::to_value(CollectorDefaults::default())));
        for c in self.collectors {
            let prefix = format!("collectors.{}", c.name());
            t.add(&join(&prefix, "enabled"), &serde_json::Value::Bool(c.default_enabled()));
            let interval =
                c.default_interval().map(|d| humantime::format_duration(d).to_string().into()).unwrap_or_default();
            t.add(&join(&prefix, "interval"), &interval);
            t.add(&join(&prefix, "timeout"), &serde_json::Value::Null);
            t.add_section(&prefix, &c.defaults());
        }
        for s in self.sinks {
            let prefix = format!("sinks.{}", s.name());
            t.add(&join(&prefix, "enabled"), &serde_json::Value::Bool(s.default_enabled()));
            t.add_section(&prefix, &s.defaults());
        }
        t
    }
}

/// "unknown field `x`, expected one of ..." with the nearest key first.
fn unknown_key(key: &str, known: &[&str]) -> String {
    let hint = keys::nearest(key, known.iter().copied()).map(|n| format!("did you mean `{n}`? ")).unwrap_or_default();
    format!(
        "unknown field `{key}`; {hint}expected one of {}",
        known.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
    )
}

/// Deserializes one of the agent's own sections out of `root`.
fn core_section<T: serde::de::DeserializeOwned + Default>(
    root: &mut toml::Table,
    name: &str,
    origins: &Origins,
) -> Result<T, ConfigError> {
    match root.remove(name) {
        None => Ok(T::default()),
        Some(v) => serde_path_to_error::deserialize(v).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." { name.to_string() } else { join(name, &key) };
            let message = e.into_inner().to_string();
            origins.err(&key, message)
        }),
    }
}

/// The section `name` of a group table as a table (absent: empty).
fn take_table(
    group: &mut toml::Table,
    name: &str,
    prefix: &str,
    origins: &Origins,
) -> Result<toml::Table, ConfigError> {
    match group.remove(name) {
        None => Ok(toml::Table::new()),
        Some(toml::Value::Table(t)) => Ok(t),
        Some(_) => Err(origins.err(&join(prefix, name), "must be a section ([...]), not a value")),
    }
}

/// Moves `keys` of `table` into a table of their own.
fn split_keys(table: &mut toml::Table, keys: &[&str]) -> toml::Table {
    let mut out = toml::Table::new();
    for k in keys {
        if let Some(v) = table.remove(*k) {
            out.insert((*k).to_string(), v);
        }
    }
    out
}

fn component_err(origins: &Origins, prefix: &str, e: KeyError) -> ConfigError {
    origins.err(&join(prefix, &e.key), e.message)
}

impl Config {
    /// Loads `path` (or the default path, where a missing file means all
    /// defaults), applies the process environment, and validates.
    pub fn load(path: Option<&Path>, schema: &Schema) -> Result<Config, ConfigError> {
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
        Self::from_parts(&text, &file.display().to_string(), &vars, schema)
    }

    /// Parses TOML text plus environment overrides; `source` names the text in errors.
    pub fn from_parts(
        text: &str,
        source: &str,
        env: &[(String, String)],
        schema: &Schema,
    ) -> Result<Config, ConfigError> {
        let mut origins = Origins { file: source.to_string(), env: Default::default() };
        let mut root: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigError {
            source: source.to_string(),
            key: String::new(),
            message: format!("invalid TOML: {}", e.message().trim()),
        })?;
        let tree = schema.keys();
        keys::apply_env(&tree, &mut root, env, &mut origins)?;
        if let Some(k) = root.keys().find(|k| !CORE_SECTIONS.contains(&k.as_str())) {
            return Err(origins.err(k, unknown_key(k, CORE_SECTIONS)));
        }

        let mut collectors_table = take_table(&mut root, "collectors", "", &origins)?;
        let mut sinks_table = take_table(&mut root, "sinks", "", &origins)?;
        let mut metrics_table = take_table(&mut root, "metrics", "", &origins)?;
        let switches = schema.catalog.switches();
        let mut switch_values = std::collections::BTreeMap::new();
        for s in &switches {
            if let Some(v) = metrics_table.remove(s.key) {
                match v.as_bool() {
                    Some(b) => {
                        switch_values.insert(s.key.to_string(), b);
                    }
                    None => {
                        return Err(origins.err(
                            &format!("metrics.{}", s.key),
                            format!("invalid type: {}, expected a boolean", v.type_str()),
                        ))
                    }
                }
            }
        }
        let metric_keys: Vec<&str> = ["profile", "include", "exclude", "drop_labels"]
            .into_iter()
            .chain(switches.iter().map(|s| s.key))
            .collect();
        if let Some(k) = metrics_table.keys().find(|k| !metric_keys.contains(&k.as_str())) {
            return Err(origins.err(&format!("metrics.{k}"), unknown_key(k, &metric_keys)));
        }
        root.insert("metrics".into(), toml::Value::Table(metrics_table));

        let agent: AgentConfig = core_section(&mut root, "agent", &origins)?;
        let libvirt: LibvirtConfig = core_section(&mut root, "libvirt", &origins)?;
        let domains: DomainsConfig = core_section(&mut root, "domains", &origins)?;
        let events: EventsConfig = core_section(&mut root, "events", &origins)?;
        let mut metrics: MetricsConfig = core_section(&mut root, "metrics", &origins)?;
        metrics.switches = switch_values;
        let admin: AdminConfig = core_section(&mut root, "admin", &origins)?;

        // [collectors]: the defaults, then one section per collector.
        let names: Vec<&str> = schema.collectors.iter().map(|c| c.name()).collect();
        let mut collectors = Vec::new();
        let mut sections = Vec::new();
        for spec in schema.collectors {
            sections.push((*spec, take_table(&mut collectors_table, spec.name(), "collectors", &origins)?));
        }
        let default_keys: Vec<&str> =
            ["interval", "timeout", "max_stuck_calls"].into_iter().chain(names.iter().copied()).collect();
        if let Some(k) = collectors_table.keys().find(|k| !default_keys.contains(&k.as_str())) {
            return Err(origins.err(&format!("collectors.{k}"), unknown_key(k, &default_keys)));
        }
        let mut wrapped = toml::Table::new();
        wrapped.insert("collectors".into(), toml::Value::Table(collectors_table));
        let collector_defaults: CollectorDefaults = core_section(&mut wrapped, "collectors", &origins)?;
        for (spec, mut table) in sections {
            let prefix = format!("collectors.{}", spec.name());
            let raw = toml::Value::Table(table.clone());
            let common = split_keys(&mut table, CollectorCommon::KEYS);
            let mut w = toml::Table::new();
            w.insert(prefix.clone(), toml::Value::Table(common));
            let common: CollectorCommon = core_section(&mut w, &prefix, &origins)?;
            let config = spec.parse(toml::Value::Table(table)).map_err(|e| component_err(&origins, &prefix, e))?;
            collectors.push(Component {
                name: spec.name(),
                enabled: common.enabled.unwrap_or(spec.default_enabled()),
                interval: common.interval.or(spec.default_interval()),
                timeout: common.timeout,
                config,
                raw,
            });
        }

        // [sinks]: one section per sink.
        let names: Vec<&str> = schema.sinks.iter().map(|s| s.name()).collect();
        let mut sinks = Vec::new();
        for spec in schema.sinks {
            let prefix = format!("sinks.{}", spec.name());
            let mut table = take_table(&mut sinks_table, spec.name(), "sinks", &origins)?;
            let raw = toml::Value::Table(table.clone());
            let enabled = match table.remove("enabled") {
                None => spec.default_enabled(),
                Some(toml::Value::Boolean(b)) => b,
                Some(v) => {
                    return Err(origins
                        .err(&join(&prefix, "enabled"), format!("invalid type: {}, expected a boolean", v.type_str())))
                }
            };
            let config = spec.parse(toml::Value::Table(table)).map_err(|e| component_err(&origins, &prefix, e))?;
            sinks.push(Component { name: spec.name(), enabled, interval: None, timeout: None, config, raw });
        }
        if let Some(k) = sinks_table.keys().next() {
            return Err(origins.err(&format!("sinks.{k}"), unknown_key(k, &names)));
        }

        let implied_switches = schema
            .collectors
            .iter()
            .zip(&collectors)
            .filter(|(_, c)| c.enabled)
            .flat_map(|(spec, c)| spec.implied_switches(&c.config))
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        let cfg = Config {
            implied_switches,
            agent,
            libvirt,
            domains,
            events,
            metrics,
            admin,
            collector_defaults,
            collectors,
            sinks,
            catalog: schema.catalog,
        };
        cfg.validate(schema, &origins)?;
        Ok(cfg)
    }

    fn validate(&self, schema: &Schema, o: &Origins) -> Result<(), ConfigError> {
        let within = |prefix: &str, r: Result<(), KeyError>| r.map_err(|e| component_err(o, prefix, e));
        within("agent", self.agent.validate())?;
        within("libvirt", self.libvirt.validate())?;
        within("domains", self.domains.validate())?;
        within("events", self.events.validate())?;
        within("admin", self.admin.validate())?;
        within("collectors", self.collector_defaults.validate())?;
        self.selection().map_err(|(key, m)| o.err(&format!("metrics.{key}"), m))?;
        for (spec, c) in schema.collectors.iter().zip(&self.collectors) {
            let prefix = format!("collectors.{}", c.name);
            let key = |k: &str| join(&prefix, k);
            within(&prefix, at_most("interval", c.interval, DAY))?;
            within(&prefix, at_most("timeout", c.timeout, HOUR))?;
            if let Some(i) = c.interval {
                if i < MIN_INTERVAL {
                    return Err(o.err(
                        &key("interval"),
                        format!("must be at least {}", humantime::format_duration(MIN_INTERVAL)),
                    ));
                }
            }
            let (interval, timeout) = self.schedule(c);
            if timeout.is_zero() {
                return Err(o.err(&key("timeout"), "must be greater than 0"));
            }
            if timeout > interval {
                let k = if c.timeout.is_some() { key("timeout") } else { "collectors.timeout".to_string() };
                return Err(o.err(
                    &k,
                    format!(
                        "the deadline ({}) must not exceed the {} interval ({}): a collection must end before the next one is due",
                        humantime::format_duration(timeout),
                        c.name,
                        humantime::format_duration(interval)
                    ),
                ));
            }
            let ctx = SectionContext { enabled: c.enabled, schedule: Some((interval, timeout)) };
            within(&prefix, spec.validate(&c.config, &ctx))?;
        }
        for (spec, s) in schema.sinks.iter().zip(&self.sinks) {
            let prefix = format!("sinks.{}", s.name);
            let ctx = SectionContext { enabled: s.enabled, schedule: None };
            within(&prefix, spec.validate(&s.config, &ctx))?;
        }
        Ok(())
    }

    /// (interval, deadline) of a collector: its own keys, else the
    /// `[collectors]` defaults; the deadline defaults to the interval, at most 10s.
    pub fn schedule(&self, c: &Component) -> (Duration, Duration) {
        let interval = c.interval.unwrap_or(self.collector_defaults.interval);
        let timeout =
            c.timeout.or(self.collector_defaults.timeout).unwrap_or_else(|| interval.min(Duration::from_secs(10)));
        (interval, timeout)
    }

    pub fn collector(&self, name: &str) -> Option<&Component> {
        self.collectors.iter().find(|c| c.name == name)
    }

    pub fn sink(&self, name: &str) -> Option<&Component> {
        self.sinks.iter().find(|s| s.name == name)
    }

    /// What the metric sinks export. Errors name the `[metrics]` key.
    pub fn selection(&self) -> Result<Selection, (String, String)> {
        let mut spec = self.metrics.spec();
        let explicit = std::mem::take(&mut spec.switches);
        spec.switches = self.implied_switches.iter().cloned().chain(explicit).collect();
        Selection::new(&spec, &self.catalog)
    }

    pub fn hostname(&self) -> String {
        self.agent.hostname.clone().unwrap_or_else(system_hostname)
    }
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
mod tests;
