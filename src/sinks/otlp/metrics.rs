//! Records -> OTLP metrics: one `Metric` per Prometheus family, counters as
//! cumulative monotonic sums, everything else as gauges.
//!
//! Cumulative sums need a start time. libvirt does not say when a domain's
//! counters began, so a domain's start is when the agent first saw it,
//! moved forward whenever its CPU time goes backwards (the domain was
//! restarted, so every counter restarted). A job's start is exact: its
//! time minus its elapsed time.

use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    metric::Data, number_data_point, AggregationTemporality, Gauge, Metric, NumberDataPoint, Sum,
};
use rustc_hash::{FxHashMap, FxHasher};

use super::naming::{attribute_key, metric_name};
use super::resource::kv;
use crate::record::{Record, RecordKind};
use crate::sinks::codes::{job_operation_name, job_type_name};
use crate::sinks::info::info_metrics;
use crate::stat_keys::{for_each_sample, MetricType, SampleStats};

pub fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// When the cumulative counters of one domain, job, host or pool began.
#[derive(Debug, Clone, Copy)]
struct Start {
    nanos: u64,
    /// A value that only grows while the counters are not reset.
    marker: f64,
    generation: u64,
}

#[derive(Debug, Default)]
pub struct Built {
    pub metrics: Vec<Metric>,
    pub points: u64,
    pub over_limit: u64,
    pub duplicates: u64,
}

/// Name and attribute-key translations, kept between exports.
#[derive(Default)]
struct Names {
    metrics: FxHashMap<String, (String, &'static str)>,
    attribute_keys: FxHashMap<(RecordKind, &'static str), String>,
}

/// Converts snapshots; keeps the start times and name translations between
/// exports.
pub struct MetricBuilder {
    starts: FxHashMap<String, Start>,
    names: Names,
    generation: u64,
    cardinality_limit: usize,
}

/// One export's metrics while they are being put together.
struct Assembler<'n> {
    names: &'n mut Names,
    metrics: Vec<(Metric, usize)>,
    index: FxHashMap<String, usize>,
    seen: HashSet<u64, BuildHasherDefault<FxHasher>>,
    limit: usize,
    built: Built,
}

impl Assembler<'_> {
    fn attribute(&mut self, kind: RecordKind, label: &'static str, value: &str) -> KeyValue {
        let key = self.names.attribute_keys.entry((kind, label)).or_insert_with(|| attribute_key(kind, label));
        kv(key.clone(), value)
    }

    fn push(&mut self, prom: &str, mtype: MetricType, help: &str, attributes: Vec<KeyValue>, point: (u64, u64, f64)) {
        let mut h = FxHasher::default();
        prom.hash(&mut h);
        for a in &attributes {
            a.key.hash(&mut h);
            if let Some(any_value::Value::StringValue(v)) = a.value.as_ref().and_then(|v| v.value.as_ref()) {
                v.hash(&mut h);
            }
        }
        if !self.seen.insert(h.finish()) {
            self.built.duplicates += 1;
            return;
        }
        let i = match self.index.get(prom) {
            Some(i) => *i,
            None => {
                let (name, unit) =
                    self.names.metrics.entry(prom.to_string()).or_insert_with(|| metric_name(prom, mtype)).clone();
                self.metrics.push((new_metric(name, unit, help, mtype), 0));
                self.index.insert(prom.to_string(), self.metrics.len() - 1);
                self.metrics.len() - 1
            }
        };
        let (metric, points) = &mut self.metrics[i];
        if *points >= self.limit {
            self.built.over_limit += 1;
            return;
        }
        let (start, time, value) = point;
        let point = NumberDataPoint {
            attributes,
            start_time_unix_nano: start,
            time_unix_nano: time,
            exemplars: Vec::new(),
            flags: 0,
            value: Some(number_data_point::Value::AsDouble(value)),
        };
        match &mut metric.data {
            Some(Data::Sum(s)) if mtype == MetricType::Counter => s.data_points.push(point),
            Some(Data::Gauge(g)) if mtype != MetricType::Counter => g.data_points.push(point),
            // One name, two types: the table tests rule it out; never send
            // a malformed metric.
            _ => {
                self.built.duplicates += 1;
                return;
            }
        }
        *points += 1;
        self.built.points += 1;
    }

    /// Attributes every point of a record carries.
    fn identity(&mut self, r: &Record) -> Vec<KeyValue> {
        match (r.kind, &r.domain, &r.pool) {
            (RecordKind::DomainStats, Some(d), _) => {
                vec![self.attribute(r.kind, "domain", &d.name), self.attribute(r.kind, "uuid", &d.uuid)]
            }
            (RecordKind::DomainJob, Some(d), _) => vec![
                self.attribute(r.kind, "domain", &d.name),
                self.attribute(r.kind, "uuid", &d.uuid),
                self.attribute(r.kind, "type", job_type_name(r.field("type").and_then(|v| v.as_u64()))),
                self.attribute(r.kind, "operation", job_operation_name(r.field("operation").and_then(|v| v.as_u64()))),
            ],
            (RecordKind::StoragePool, _, Some(p)) => {
                vec![self.attribute(r.kind, "pool", &p.name), self.attribute(r.kind, "uuid", &p.uuid)]
            }
            _ => Vec::new(),
        }
    }
}

impl MetricBuilder {
    pub fn new(cardinality_limit: usize) -> Self {
        Self {
            starts: FxHashMap::default(),
            names: Names::default(),
            generation: 0,
            cardinality_limit: cardinality_limit.max(1),
        }
    }

    fn start_of(&mut self, r: &Record) -> u64 {
        let now = unix_nanos(r.time);
        let (scope, marker, backdate_ms) = match r.kind {
            RecordKind::DomainStats => {
                let uuid = r.domain.as_ref().map(|d| &*d.uuid).unwrap_or("");
                (format!("d/{uuid}"), r.field("cpu.time").and_then(|v| v.as_f64()).unwrap_or(0.0), 0.0)
            }
            RecordKind::DomainJob => {
                let uuid = r.domain.as_ref().map(|d| &*d.uuid).unwrap_or("");
                let op = r.field("operation").and_then(|v| v.as_u64()).unwrap_or(0);
                let elapsed = r.field("time_elapsed").and_then(|v| v.as_f64()).unwrap_or(0.0);
                (format!("j/{uuid}/{op}"), elapsed, elapsed)
            }
            RecordKind::Node => ("n".to_string(), 0.0, 0.0),
            RecordKind::StoragePool => (format!("p/{}", r.pool.as_ref().map(|p| &*p.uuid).unwrap_or("")), 0.0, 0.0),
            RecordKind::Event => return now,
        };
        let generation = self.generation;
        let fresh = Start { nanos: now.saturating_sub((backdate_ms * 1e6) as u64), marker, generation };
        let s = self.starts.entry(scope).or_insert(fresh);
        if marker < s.marker {
            *s = fresh;
        }
        s.marker = marker;
        s.generation = generation;
        s.nanos
    }

    /// Builds the metrics of every record; points of series no longer in
    /// the records are simply absent (vanished domains stop being exported).
    pub fn build<'a>(&mut self, records: impl IntoIterator<Item = &'a Record>) -> Built {
        self.generation += 1;
        let records: Vec<&Record> = records.into_iter().filter(|r| r.kind != RecordKind::Event).collect();
        let starts: Vec<u64> = records.iter().map(|r| self.start_of(r)).collect();
        let generation = self.generation;
        self.starts.retain(|_, s| s.generation == generation);
        let mut asm = Assembler {
            names: &mut self.names,
            metrics: Vec::new(),
            index: FxHashMap::default(),
            seen: HashSet::default(),
            limit: self.cardinality_limit,
            built: Built::default(),
        };
        for (r, start) in records.into_iter().zip(starts) {
            let time = unix_nanos(r.time);
            info_metrics(r, &mut |name, help, labels| {
                let attrs = labels.iter().map(|(k, v)| asm.attribute(r.kind, k, v)).collect();
                asm.push(name, MetricType::Gauge, help, attrs, (0, time, 1.0));
            });
            let identity = asm.identity(r);
            let mut ss = SampleStats::default();
            for_each_sample(r, &mut ss, |s| {
                let mut attrs = identity.clone();
                attrs.extend(s.labels().map(|(k, v)| asm.attribute(r.kind, k, v)));
                let start = if s.mtype() == MetricType::Counter { start } else { 0 };
                asm.push(s.name(), s.mtype(), s.help(), attrs, (start, time, s.value));
            });
        }
        let mut built = asm.built;
        built.metrics = asm.metrics.into_iter().map(|(m, _)| m).collect();
        built
    }
}

fn new_metric(name: String, unit: &str, help: &str, mtype: MetricType) -> Metric {
    let data = match mtype {
        MetricType::Counter => Data::Sum(Sum {
            data_points: Vec::new(),
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
            is_monotonic: true,
        }),
        MetricType::Gauge | MetricType::Histogram => Data::Gauge(Gauge { data_points: Vec::new() }),
    };
    Metric { name, description: help.to_string(), unit: unit.to_string(), metadata: Vec::new(), data: Some(data) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::libvirt::TypedValue;
    use crate::record::{DomainInfo, DomainRef, Field, Unit, SCHEMA};
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use std::sync::Arc;
    use std::time::Duration;

    fn rec(uuid: &str, secs: u64, fields: Vec<(&str, TypedValue)>) -> Record {
        Record {
            schema: SCHEMA,
            kind: RecordKind::DomainStats,
            time: UNIX_EPOCH + Duration::from_secs(secs),
            host: "h".into(),
            libvirt_uri: "u".into(),
            pool: None,
            event: None,
            domain: Some(DomainRef {
                name: format!("vm-{uuid}").into(),
                uuid: uuid.into(),
                info: Some(Arc::new(DomainInfo { vcpus: Some(2), ..Default::default() })),
            }),
            fields: fields.into_iter().map(|(k, v)| Field { key: k.into(), value: v, unit: Unit::Unknown }).collect(),
        }
    }

    fn find<'m>(b: &'m Built, name: &str) -> &'m Metric {
        b.metrics.iter().find(|m| m.name == name).unwrap_or_else(|| panic!("no {name}"))
    }

    fn attr(p: &NumberDataPoint, key: &str) -> String {
        p.attributes
            .iter()
            .find(|a| a.key == key)
            .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                Value::StringValue(s) => Some(s.clone()),
                _ => None,
            })
            .unwrap_or_default()
    }

    fn sum_points(m: &Metric) -> &[NumberDataPoint] {
        match &m.data {
            Some(Data::Sum(s)) => {
                assert!(s.is_monotonic);
                assert_eq!(s.aggregation_temporality, AggregationTemporality::Cumulative as i32);
                &s.data_points
            }
            other => panic!("not a sum: {other:?}"),
        }
    }

    #[test]
    fn counters_are_cumulative_sums_that_restart_with_the_domain() {
        let mut b = MetricBuilder::new(1000);
        let fields = |cpu: u64| {
            vec![
                ("state.state", TypedValue::Int(1)),
                ("cpu.time", TypedValue::ULLong(cpu)),
                ("net.count", TypedValue::UInt(1)),
                ("net.0.name", TypedValue::String("vnet0".into())),
                ("net.0.rx.pkts", TypedValue::ULLong(7)),
            ]
        };
        let first = b.build(&[rec("a", 100, fields(5_000_000_000))]);
        let cpu = &sum_points(find(&first, "libvirt.domain.cpu.time"))[0];
        assert_eq!((cpu.start_time_unix_nano, cpu.time_unix_nano), (100_000_000_000, 100_000_000_000));
        assert_eq!(cpu.value, Some(number_data_point::Value::AsDouble(5.0)));
        assert_eq!(attr(cpu, "libvirt.domain.name"), "vm-a");
        assert_eq!(find(&first, "libvirt.domain.cpu.time").unit, "s");
        let pkts = &sum_points(find(&first, "libvirt.domain.interface.receive.packets"))[0];
        assert_eq!(attr(pkts, "libvirt.domain.interface"), "vnet0");
        let state = find(&first, "libvirt.domain.state");
        assert!(matches!(&state.data, Some(Data::Gauge(g)) if g.data_points[0].start_time_unix_nano == 0));
        let info = find(&first, "libvirt.domain.info");
        assert!(matches!(&info.data, Some(Data::Gauge(g)) if attr(&g.data_points[0], "libvirt.domain.vcpus") == "2"));

        let later = b.build(&[rec("a", 110, fields(6_000_000_000))]);
        assert_eq!(sum_points(find(&later, "libvirt.domain.cpu.time"))[0].start_time_unix_nano, 100_000_000_000);
        let restarted = b.build(&[rec("a", 120, fields(1_000_000_000))]);
        assert_eq!(sum_points(find(&restarted, "libvirt.domain.cpu.time"))[0].start_time_unix_nano, 120_000_000_000);
        // Gone, then back: a new start.
        let _ = b.build(&[rec("b", 130, fields(1))]);
        let back = b.build(&[rec("a", 140, fields(2_000_000_000))]);
        assert_eq!(sum_points(find(&back, "libvirt.domain.cpu.time"))[0].start_time_unix_nano, 140_000_000_000);
        assert!(back.metrics.iter().all(|m| match &m.data {
            Some(Data::Sum(s)) => s.data_points.iter().all(|p| attr(p, "libvirt.domain.uuid") == "a"),
            Some(Data::Gauge(g)) => g.data_points.iter().all(|p| attr(p, "libvirt.domain.uuid") == "a"),
            _ => false,
        }));
    }

    #[test]
    fn cardinality_limit_and_duplicates_are_counted() {
        let mut b = MetricBuilder::new(3);
        let recs: Vec<Record> =
            (0..5).map(|i| rec(&i.to_string(), 1, vec![("cpu.time", TypedValue::ULLong(1))])).collect();
        let built = b.build(&recs);
        assert_eq!(sum_points(find(&built, "libvirt.domain.cpu.time")).len(), 3);
        assert_eq!(built.over_limit, 2 + 2, "cpu.time and domain.info each lose two");
        let dup = b.build(&[rec("x", 1, vec![]), rec("x", 1, vec![])]);
        assert_eq!(dup.duplicates, 1);
    }
}
