//! How a component brings its configuration to the loader: its section's
//! type, defaults and checks live with the component (a collector's
//! `config.rs`, a sink's), and the loader only sees them through
//! `SectionSpec`. The loader knows no component's keys.

use std::any::Any;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A problem with one key of a section: the key (relative to the section)
/// and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError {
    pub key: String,
    pub message: String,
}

impl KeyError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self { key: key.into(), message: message.into() }
    }
}

/// What a section's checks may know beyond its own keys.
#[derive(Debug, Clone, Copy)]
pub struct SectionContext {
    /// Whether the component is on (some checks only apply then).
    pub enabled: bool,
    /// A collector's resolved (interval, deadline).
    pub schedule: Option<(Duration, Duration)>,
}

/// A component's configuration type. `Default` is the configuration with
/// nothing set; it also tells the loader every key (serialized, it lists
/// each key with its default: `null` for keys with no default value, an
/// empty table for free tables such as librdkafka properties).
pub trait SectionConfig: DeserializeOwned + Serialize + Default + Clone + Debug + Send + Sync + 'static {
    /// Bounds and rules beyond what the types say. A value past a bound is
    /// a typo (and would overflow timers or allocate without end).
    fn validate(&self, ctx: &SectionContext) -> Result<(), KeyError>;

    /// `[metrics]` switches this configuration turns on or off unless
    /// `[metrics]` sets them itself (asking the node collector for per-CPU
    /// counters means wanting them exported).
    fn implied_switches(&self) -> Vec<(&'static str, bool)> {
        Vec::new()
    }
}

/// A loaded section, type-erased; its component downcasts it.
pub type AnyConfig = Arc<dyn Any + Send + Sync>;

/// What the loader needs of one component's section.
pub trait SectionSpec: Sync {
    /// The section's name under its group (`jobs` in `[collectors.jobs]`).
    fn name(&self) -> &'static str;
    /// Whether the component runs when the file says nothing.
    fn default_enabled(&self) -> bool;
    /// A collector's own default interval (`None`: `[collectors] interval`).
    fn default_interval(&self) -> Option<Duration> {
        None
    }
    /// Every key of the section with its default (see `SectionConfig`).
    fn defaults(&self) -> serde_json::Value;
    /// Deserializes the section (the common keys already taken out).
    fn parse(&self, value: toml::Value) -> Result<AnyConfig, KeyError>;
    fn validate(&self, config: &AnyConfig, ctx: &SectionContext) -> Result<(), KeyError>;
    /// See `SectionConfig::implied_switches`.
    fn implied_switches(&self, config: &AnyConfig) -> Vec<(&'static str, bool)>;
    /// The section's defaults as a loaded configuration.
    fn default_config(&self) -> AnyConfig;
}

/// `SectionSpec` for a typed section.
pub(crate) struct Section<C> {
    pub name: &'static str,
    pub enabled: bool,
    pub interval: Option<Duration>,
    _config: std::marker::PhantomData<fn() -> C>,
}

impl<C> Section<C> {
    pub(crate) const fn new(name: &'static str, enabled: bool, interval: Option<Duration>) -> Self {
        Self { name, enabled, interval, _config: std::marker::PhantomData }
    }
}

/// The typed configuration in a loaded section. Components call this on
/// their own section, whose type they know.
pub fn typed<C: SectionConfig>(config: &AnyConfig) -> C {
    config.downcast_ref::<C>().cloned().unwrap_or_default()
}

impl<C: SectionConfig> SectionSpec for Section<C> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn default_enabled(&self) -> bool {
        self.enabled
    }

    fn default_interval(&self) -> Option<Duration> {
        self.interval
    }

    fn defaults(&self) -> serde_json::Value {
        serde_json::to_value(C::default()).unwrap_or_default()
    }

    fn parse(&self, value: toml::Value) -> Result<AnyConfig, KeyError> {
        let c: C = serde_path_to_error::deserialize(value).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." { String::new() } else { key };
            KeyError::new(key, e.into_inner().to_string())
        })?;
        Ok(Arc::new(c))
    }

    fn validate(&self, config: &AnyConfig, ctx: &SectionContext) -> Result<(), KeyError> {
        match config.downcast_ref::<C>() {
            Some(c) => c.validate(ctx),
            None => Err(KeyError::new("", "internal error: a section of another type")),
        }
    }

    fn implied_switches(&self, config: &AnyConfig) -> Vec<(&'static str, bool)> {
        config.downcast_ref::<C>().map(C::implied_switches).unwrap_or_default()
    }

    fn default_config(&self) -> AnyConfig {
        Arc::new(C::default())
    }
}

// Shared value types and checks.

pub(crate) const HOUR: Duration = Duration::from_secs(3600);
pub(crate) const DAY: Duration = Duration::from_secs(24 * 3600);

/// `Err` when `value` is past `max`.
pub(crate) fn at_most(key: &str, value: Option<Duration>, max: Duration) -> Result<(), KeyError> {
    match value {
        Some(v) if v > max => Err(KeyError::new(key, format!("must be at most {}", humantime::format_duration(max)))),
        _ => Ok(()),
    }
}

/// `Err` when a count is past `max`.
pub(crate) fn count_at_most(key: &str, value: u64, max: u64) -> Result<(), KeyError> {
    if value > max {
        return Err(KeyError::new(key, format!("must be at most {max}")));
    }
    Ok(())
}

/// A list of strings, or one comma-separated string (handy in environment
/// variables).
pub(crate) fn string_or_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
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

/// A size in bytes, written as a number or with a unit ("64KiB", "256MiB", "1GB").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(s: &str) -> Result<ByteSize, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a size (e.g. \"256MiB\", \"64KiB\", 1048576)"))?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" | "K" => 1 << 10,
            "MiB" | "M" => 1 << 20,
            "GiB" | "G" => 1 << 30,
            "KB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            u => return Err(format!("unknown size unit {u:?} in {s:?}; use B, KiB, MiB, GiB, KB, MB or GB")),
        };
        n.checked_mul(mult).map(ByteSize).ok_or_else(|| format!("{s:?} is too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(ByteSize(n)),
            Raw::Text(s) => ByteSize::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

impl Serialize for ByteSize {
    /// In the largest binary unit that divides it ("256MiB").
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let n = self.0;
        for (unit, size) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
            if n >= size && n % size == 0 {
                return s.collect_str(&format_args!("{}{unit}", n / size));
            }
        }
        s.serialize_u64(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units_and_print_back() {
        assert_eq!(ByteSize::parse("64KiB").unwrap(), ByteSize(65536));
        assert_eq!(ByteSize::parse("1GB").unwrap(), ByteSize(1_000_000_000));
        assert!(ByteSize::parse("12 parsecs").is_err());
        assert!(ByteSize::parse("99999999999999999999GiB").is_err());
        assert_eq!(serde_json::to_value(ByteSize(256 << 20)).unwrap(), "256MiB");
        assert_eq!(serde_json::to_value(ByteSize(1000)).unwrap(), 1000);
    }
}
