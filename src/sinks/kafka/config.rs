//! `[sinks.kafka]`: brokers, topics, the disk spool, and librdkafka
//! properties passed through as they are.

use crate::router::WhenFull;
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::spool::SyncMode;
use crate::config::section::{
    at_most, count_at_most, string_or_list, ByteSize, KeyError, SectionConfig, SectionContext, DAY, HOUR,
};

/// librdkafka properties. Values that look like credentials never show in
/// logs or debug output.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Properties(pub BTreeMap<String, String>);

/// Property names whose values are secrets.
pub(crate) fn is_secret_property(name: &str) -> bool {
    ["password", "secret", "token", "key", "credential", "jaas"].iter().any(|w| name.contains(w))
}

impl fmt::Debug for Properties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| (k, if is_secret_property(k) { "<redacted>" } else { v.as_str() })))
            .finish()
    }
}

impl Serialize for Properties {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Properties {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Value {
            Text(String),
            Int(i64),
            Float(f64),
            Bool(bool),
        }
        let raw = BTreeMap::<String, Value>::deserialize(d)?;
        Ok(Properties(
            raw.into_iter()
                .map(|(k, v)| {
                    // Environment overrides cannot spell dots: `SASL_PASSWORD`
                    // arrives as `sasl_password` and means `sasl.password`.
                    let k = k.replace('_', ".");
                    let v = match v {
                        Value::Text(s) => s,
                        Value::Int(n) => n.to_string(),
                        Value::Float(x) => x.to_string(),
                        Value::Bool(b) => b.to_string(),
                    };
                    (k, v)
                })
                .collect(),
        ))
    }
}

/// `[sinks.kafka]` (besides `enabled`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, "host:port".
    #[serde(deserialize_with = "string_or_list")]
    pub brokers: Vec<String>,
    pub events_topic: String,
    pub metrics_topic: String,
    /// `<events_topic>.<family>` and `<metrics_topic>.<kind>` instead of one each.
    pub topic_per_family: bool,
    /// Send metric snapshots (best effort) besides events.
    pub metrics: bool,
    /// Add CloudEvents' Kafka binding headers (ce_id, ce_type, ...).
    pub cloudevents: bool,
    /// Create missing topics at start (admin API).
    pub create_topics: bool,
    pub topic_partitions: i32,
    pub topic_replication: i32,
    /// none, gzip, snappy, lz4 or zstd.
    pub compression: String,
    /// How long librdkafka tries to deliver a message before reporting
    /// failure (events are then sent again from the spool).
    #[serde(with = "humantime_serde")]
    pub message_timeout: Duration,
    pub spool_dir: PathBuf,
    pub spool_max_bytes: ByteSize,
    #[serde(with = "humantime_serde")]
    pub spool_max_age: Duration,
    pub spool_sync: SyncMode,
    #[serde(with = "humantime_serde")]
    pub spool_sync_interval: Duration,
    /// Messages handed to librdkafka and not yet acknowledged, at most.
    pub max_in_flight: usize,
    /// Batches waiting between the router and the sink.
    pub queue_capacity: usize,
    /// Events when the queue is full: "block" (the sink's event lane waits;
    /// at least once from libvirt's hand-off on) or "drop_newest".
    pub when_full: WhenFull,
    /// On shutdown, how long to wait for messages in flight.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Passed to librdkafka as they are (they override the sink's defaults).
    pub properties: Properties,
    /// librdkafka properties read from files (secrets: `sasl.password`, ...).
    pub secret_files: BTreeMap<String, PathBuf>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: vec!["127.0.0.1:9092".into()],
            events_topic: "libvirt.events".into(),
            metrics_topic: "libvirt.metrics".into(),
            topic_per_family: false,
            metrics: true,
            cloudevents: true,
            create_topics: false,
            topic_partitions: 3,
            topic_replication: 1,
            compression: "zstd".into(),
            message_timeout: Duration::from_secs(30),
            spool_dir: PathBuf::from("/var/lib/virtpulse/kafka-spool"),
            spool_max_bytes: ByteSize(256 << 20),
            spool_max_age: Duration::from_secs(7 * 24 * 3600),
            spool_sync: SyncMode::Always,
            spool_sync_interval: Duration::from_secs(1),
            max_in_flight: 10_000,
            queue_capacity: 4096,
            when_full: WhenFull::Block,
            shutdown_timeout: Duration::from_secs(5),
            properties: Properties::default(),
            secret_files: BTreeMap::new(),
        }
    }
}

/// Kafka's own rule for topic names.
pub(crate) fn topic_name_problem(name: &str) -> Option<String> {
    if name.is_empty() || name == "." || name == ".." {
        return Some(format!("{name:?} is not a topic name"));
    }
    if name.len() > 249 {
        return Some(format!("{name:?} is longer than Kafka's 249 characters"));
    }
    name.chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        .map(|c| format!("{name:?} contains {c:?}; topic names use only letters, digits, '.', '_' and '-'"))
}

impl SectionConfig for KafkaConfig {
    fn validate(&self, ctx: &SectionContext) -> Result<(), KeyError> {
        at_most("message_timeout", Some(self.message_timeout), HOUR)?;
        at_most("spool_max_age", Some(self.spool_max_age), DAY * 366)?;
        at_most("spool_sync_interval", Some(self.spool_sync_interval), HOUR)?;
        at_most("shutdown_timeout", Some(self.shutdown_timeout), HOUR)?;
        const M: u64 = 1_000_000;
        count_at_most("queue_capacity", self.queue_capacity as u64, M)?;
        count_at_most("max_in_flight", self.max_in_flight as u64, M)?;
        count_at_most("topic_partitions", self.topic_partitions.max(0) as u64, 100_000)?;
        count_at_most("topic_replication", self.topic_replication.max(0) as u64, 100)?;
        count_at_most("spool_max_bytes", self.spool_max_bytes.0, 1 << 40)?;
        if self.queue_capacity == 0 {
            return Err(KeyError::new("queue_capacity", "must be at least 1"));
        }
        if !ctx.enabled {
            return Ok(());
        }
        if self.brokers.is_empty() {
            return Err(KeyError::new("brokers", "list at least one bootstrap server (\"host:port\")"));
        }
        for b in &self.brokers {
            let ok = b.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
            if !ok {
                return Err(KeyError::new("brokers", format!("{b:?} is not host:port (e.g. \"kafka-1:9092\")")));
            }
        }
        for (k, name) in [("events_topic", &self.events_topic), ("metrics_topic", &self.metrics_topic)] {
            // Per-family topics add a suffix: the longest is checked.
            let longest = if self.topic_per_family { format!("{name}.storage_pool") } else { name.clone() };
            if let Some(p) = topic_name_problem(name).or_else(|| topic_name_problem(&longest)) {
                return Err(KeyError::new(k, p));
            }
        }
        if self.events_topic == self.metrics_topic {
            return Err(KeyError::new(
                "metrics_topic",
                "must differ from events_topic (events and metrics are separate streams)",
            ));
        }
        if !["none", "gzip", "snappy", "lz4", "zstd"].contains(&self.compression.as_str()) {
            return Err(KeyError::new(
                "compression",
                format!("{:?} is not one of none, gzip, snappy, lz4, zstd", self.compression),
            ));
        }
        if self.message_timeout < Duration::from_secs(1) || self.message_timeout.as_millis() > i32::MAX as u128 {
            return Err(KeyError::new("message_timeout", "must be between 1s and 24d"));
        }
        if self.topic_partitions < 1 {
            return Err(KeyError::new("topic_partitions", "must be at least 1"));
        }
        if self.topic_replication < 1 {
            return Err(KeyError::new("topic_replication", "must be at least 1"));
        }
        if self.spool_dir.as_os_str().is_empty() || !self.spool_dir.is_absolute() {
            return Err(KeyError::new("spool_dir", "must be an absolute directory path"));
        }
        if self.spool_max_bytes.0 < 64 << 10 {
            return Err(KeyError::new("spool_max_bytes", "must be at least 64KiB"));
        }
        if self.spool_max_age < Duration::from_secs(1) {
            return Err(KeyError::new("spool_max_age", "must be at least 1s"));
        }
        if self.spool_sync == SyncMode::Interval && self.spool_sync_interval.is_zero() {
            return Err(KeyError::new("spool_sync_interval", "must be greater than 0"));
        }
        if self.max_in_flight == 0 {
            return Err(KeyError::new("max_in_flight", "must be at least 1"));
        }
        for (name, path) in &self.secret_files {
            if self.properties.0.contains_key(name) {
                return Err(KeyError::new(
                    format!("secret_files.{name}"),
                    "also set in sinks.kafka.properties; set it in one place",
                ));
            }
            if let Err(e) = std::fs::metadata(path) {
                return Err(KeyError::new(
                    format!("secret_files.{name}"),
                    format!("cannot read {}: {e}", path.display()),
                ));
            }
        }
        Ok(())
    }
}

impl KafkaConfig {
    /// The properties with the secret files read in.
    pub fn resolved_properties(&self) -> Result<BTreeMap<String, String>, String> {
        let mut props = self.properties.0.clone();
        for (name, path) in &self.secret_files {
            let v = std::fs::read_to_string(path)
                .map_err(|e| format!("sinks.kafka.secret_files.{name}: cannot read {}: {e}", path.display()))?;
            props.insert(name.clone(), v.trim_end_matches(['\n', '\r']).to_string());
        }
        Ok(props)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(ByteSize::parse("64KiB"), Ok(ByteSize(65536)));
        assert_eq!(ByteSize::parse("256MiB"), Ok(ByteSize(256 << 20)));
        assert_eq!(ByteSize::parse("1GB"), Ok(ByteSize(1_000_000_000)));
        assert_eq!(ByteSize::parse("12"), Ok(ByteSize(12)));
        assert!(ByteSize::parse("12 parsecs").unwrap_err().contains("unknown size unit"));
        assert!(ByteSize::parse("MiB").is_err());
    }

    #[test]
    fn topic_names_follow_kafka_rules() {
        assert_eq!(topic_name_problem("libvirt.events"), None);
        assert!(topic_name_problem("bad topic").unwrap().contains("' '"));
        assert!(topic_name_problem("..").is_some());
        assert!(topic_name_problem(&"x".repeat(250)).is_some());
    }

    #[test]
    fn secret_values_are_redacted_in_debug_output() {
        let p = Properties(
            [("sasl.password".to_string(), "hunter2".to_string()), ("acks".to_string(), "all".to_string())].into(),
        );
        let shown = format!("{p:?}");
        assert!(!shown.contains("hunter2") && shown.contains("<redacted>") && shown.contains("all"), "{shown}");
    }
}
