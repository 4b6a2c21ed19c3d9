//! The components of the agent, listed once: every collector and every
//! sink, as node_exporter registers its collectors and the OpenTelemetry
//! Collector its factories. The agent, the configuration loader, the
//! selection and the generated docs all loop over these lists; this is the
//! only module that names a concrete collector or sink. A new collector is
//! a folder under src/collectors/ and one line here.

use std::sync::OnceLock;

use crate::collectors::{self, CollectorFactory};
use crate::config::{Schema, SectionSpec};
use crate::record::kind::{Catalog, KindSpec};
use crate::sinks::{self, SinkFactory};

/// Every collector, in the order they start.
pub static COLLECTORS: &[&dyn CollectorFactory] = &[
    &collectors::Factory(collectors::domain_stats::DomainStatsPlugin),
    &collectors::Factory(collectors::jobs::JobsPlugin),
    &collectors::Factory(collectors::node::NodePlugin),
    &collectors::Factory(collectors::pools::PoolsPlugin),
    &collectors::Factory(collectors::guest::GuestPlugin),
    &collectors::Factory(collectors::health::HealthPlugin),
    &collectors::Factory(collectors::networks::NetworksPlugin),
    &collectors::Factory(collectors::node_devices::NodeDevicesPlugin),
    &collectors::Factory(collectors::snapshots::SnapshotsPlugin),
];

/// Every sink, in the order they start (they stop in reverse).
pub static SINKS: &[&dyn SinkFactory] = &[
    &sinks::Factory(sinks::prometheus::PrometheusPlugin),
    &sinks::Factory(sinks::stdout::StdoutPlugin),
    &sinks::Factory(sinks::kafka::KafkaPlugin),
    &sinks::Factory(sinks::otlp::OtlpPlugin),
];

/// Every kind of record: events, then each collector's kinds.
pub fn catalog() -> Catalog {
    static KINDS: OnceLock<Vec<&'static KindSpec>> = OnceLock::new();
    let kinds = KINDS.get_or_init(|| {
        std::iter::once(&crate::record::EVENT)
            .chain(COLLECTORS.iter().flat_map(|c| c.kinds().iter().copied()))
            .collect()
    });
    Catalog { kinds }
}

/// The kind whose table gives the units of job statistics (the
/// `job_completed` event carries a finished job's).
pub fn job_statistics() -> Option<&'static KindSpec> {
    Some(&collectors::jobs::metrics::DOMAIN_JOB)
}

/// What the configuration loader needs to know of the components.
pub fn schema() -> Schema<'static> {
    static COLLECTOR_SECTIONS: OnceLock<Vec<&'static dyn SectionSpec>> = OnceLock::new();
    static SINK_SECTIONS: OnceLock<Vec<&'static dyn SectionSpec>> = OnceLock::new();
    Schema {
        collectors: COLLECTOR_SECTIONS.get_or_init(|| COLLECTORS.iter().map(|c| c.section()).collect()),
        sinks: SINK_SECTIONS.get_or_init(|| SINKS.iter().map(|s| s.section()).collect()),
        catalog: catalog(),
    }
}

/// Every self-metric, from the components that report them.
pub fn self_metrics() -> Vec<crate::selfmon::MetricDesc> {
    let mut all: Vec<crate::selfmon::MetricDesc> = [
        crate::selfmon::render::METRICS,
        collectors::connection::METRICS,
        crate::selfmon::METRICS,
        crate::events::METRICS,
        crate::selfmon::reload::METRICS,
        crate::web::METRICS,
    ]
    .concat();
    all.extend(COLLECTORS.iter().flat_map(|c| c.metrics().iter().copied()));
    all.extend(SINKS.iter().flat_map(|s| s.metrics().iter().copied()));
    all.sort_by_key(|m| m.name);
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique() {
        let mut names: Vec<&str> = COLLECTORS.iter().map(|c| c.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), COLLECTORS.len(), "two collectors share a name");
        let mut kinds: Vec<&str> = catalog().kinds.iter().map(|k| k.name).collect();
        kinds.sort_unstable();
        kinds.dedup();
        assert_eq!(kinds.len(), catalog().kinds.len(), "two kinds share a name");
        let mut switches: Vec<&str> = catalog().switches().iter().map(|s| s.key).collect();
        switches.sort_unstable();
        let n = switches.len();
        switches.dedup();
        assert_eq!(n, switches.len(), "two switches share a key");
    }

    /// One metric, one meaning, across every kind's table; names, types,
    /// units and labels follow the conventions.
    #[test]
    fn the_catalog_is_consistent() {
        use crate::record::kind::{LabelSource, KIB, MS, NS, PERCENT, US};
        use crate::value::{MetricType, Unit};
        use std::collections::{HashMap, HashSet};
        // name -> (type, help, label names)
        let mut names: HashMap<&str, (MetricType, &str, Vec<&str>)> = HashMap::new();
        for kind in catalog().kinds {
            assert!(!kind.title.is_empty(), "{} has no title", kind.name);
            let mut patterns = HashSet::new();
            let mut series = HashSet::new();
            for s in kind.table {
                assert!(patterns.insert(s.pattern), "duplicate pattern {}", s.pattern);
                let stars = s.pattern.split('.').filter(|p| *p == "*").count();
                for ls in s.labels {
                    match ls.source {
                        LabelSource::Index(n) => assert!(n < stars, "{}", s.pattern),
                        LabelSource::Sibling(n, _) => assert!(n >= 1 && n <= stars, "{}", s.pattern),
                        LabelSource::Literal(v) => assert!(!v.is_empty()),
                    }
                }
                let Some(e) = s.export else { continue };
                assert!(e.name.starts_with(kind.prefix), "{} in the {} table", e.name, kind.name);
                assert!(
                    e.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                    "{}",
                    e.name
                );
                match e.mtype {
                    MetricType::Counter => assert!(e.name.ends_with("_total"), "counter {} lacks _total", e.name),
                    MetricType::Gauge => assert!(!e.name.ends_with("_total"), "gauge {} ends in _total", e.name),
                    MetricType::Histogram => panic!("stat keys are never histograms: {}", e.name),
                }
                // Base units only: non-base source units must be scaled.
                match s.unit {
                    Unit::Nanoseconds => assert!(e.name.contains("_seconds") && e.scale == NS, "{}", e.name),
                    Unit::Microseconds => assert!(e.name.contains("_seconds") && e.scale == US, "{}", e.name),
                    Unit::Milliseconds => assert!(e.name.contains("_seconds") && e.scale == MS, "{}", e.name),
                    Unit::Kibibytes => assert!(e.name.contains("_bytes") && e.scale == KIB, "{}", e.name),
                    Unit::Percent => assert!(e.name.ends_with("_ratio") && e.scale == PERCENT, "{}", e.name),
                    _ => {}
                }
                assert!(!e.help.is_empty());
                let label_names: Vec<&str> = s.labels.iter().map(|l| l.name).collect();
                let literals: Vec<&str> = s
                    .labels
                    .iter()
                    .filter_map(|l| if let LabelSource::Literal(v) = l.source { Some(v) } else { None })
                    .collect();
                // Rows sharing a metric must agree on it and differ in a literal label.
                assert!(
                    series.insert((e.name, literals, s.pattern.matches('*').count())),
                    "{} mapped twice alike",
                    e.name
                );
                match names.get(e.name) {
                    Some((t, h, l)) => {
                        assert!(*t == e.mtype && *h == e.help && *l == label_names, "{} differs between rows", e.name)
                    }
                    None => {
                        names.insert(e.name, (e.mtype, e.help, label_names));
                    }
                }
            }
            for i in kind.info {
                assert!(i.name.starts_with(kind.prefix) && i.name.ends_with("_info"), "{}", i.name);
                assert!(!i.help.is_empty(), "{}", i.name);
            }
        }
    }

    /// A new kind of record is documented: in the JSON Schema's list of
    /// kinds and in docs/records.md.
    #[test]
    fn every_kind_is_in_the_schema_and_the_record_docs() {
        let schema: serde_json::Value =
            serde_json::from_str(include_str!("../schemas/record.v1.json")).expect("the schema is JSON");
        let listed: Vec<&str> = schema["properties"]["kind"]["enum"]
            .as_array()
            .expect("kind is an enum")
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        let docs = include_str!("../docs/records.md");
        for kind in catalog().kinds {
            assert!(listed.contains(&kind.name), "schemas/record.v1.json does not list the kind {}", kind.name);
            assert!(docs.contains(&format!("`{}`", kind.name)), "docs/records.md does not describe {}", kind.name);
        }
    }
}
