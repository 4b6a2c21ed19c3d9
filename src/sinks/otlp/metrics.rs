//! Records -> OTLP metrics: one `Metric` per Prometheus family, counters as
//! cumulative monotonic sums, everything else as gauges, encoded straight
//! into export requests of bounded size (see `wire`).
//!
//! Cumulative sums need a start time. libvirt does not say when a domain's
//! counters began, so a domain's start is when the agent first saw it,
//! moved forward whenever its CPU time goes backwards (the domain was
//! restarted, so every counter restarted). A job's start is exact: its
//! time minus its elapsed time.

use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};
use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::metrics::v1::AggregationTemporality;
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use rustc_hash::{FxHashMap, FxHasher};

use super::naming::{attribute_key, metric_name};
use super::wire::{
    len_field_len, put_bytes, put_double, put_fixed64, put_len_header, put_str_nonempty, put_string_attribute,
    put_varint_field, str_nonempty_len, varint_field_len,
};
use crate::record::info::info_metrics;
use crate::record::samples::{for_each_identity, for_each_sample, SampleFilter, SampleStats};
use crate::record::{Record, RecordKind};
use crate::selection::Selection;
use crate::value::MetricType;

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

/// One export request, encoded.
#[derive(Debug, Default)]
pub struct Built {
    /// An `ExportMetricsServiceRequest` in protobuf.
    pub body: Vec<u8>,
    /// Metrics in the request.
    pub metrics: usize,
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

impl Names {
    fn attribute_key(&mut self, kind: RecordKind, label: &'static str) -> &str {
        self.attribute_keys.entry((kind, label)).or_insert_with(|| attribute_key(kind.spec(), label))
    }
}

/// Converts snapshots; keeps the start times and name translations between
/// exports.
pub struct MetricBuilder {
    starts: FxHashMap<String, Start>,
    names: Names,
    generation: u64,
    cardinality_limit: usize,
    /// What is exported; a reload may replace it.
    selection: crate::util::live::Live<Selection>,
}

/// One metric of a request: its points, each already a tagged
/// `NumberDataPoint` of the `Gauge`/`Sum` message.
struct MetricBuf {
    name: String,
    unit: &'static str,
    help: String,
    mtype: MetricType,
    points: Vec<u8>,
}

/// One export request's metrics while they are being put together.
struct Assembler<'n> {
    names: &'n mut Names,
    metrics: Vec<MetricBuf>,
    index: FxHashMap<String, usize>,
    seen: HashSet<u64, BuildHasherDefault<FxHasher>>,
    /// Points per metric over the whole export (all of its requests).
    counts: &'n mut FxHashMap<String, usize>,
    limit: usize,
    /// The point being written: its attributes, then its fields.
    point: Vec<u8>,
    built: Built,
}

impl Assembler<'_> {
    /// Starts a point: its attributes are appended next (`attribute`).
    fn begin(&mut self, identity: &[u8]) {
        self.point.clear();
        self.point.extend_from_slice(identity);
    }

    /// An attribute of the point being written (`NumberDataPoint.attributes` = 7).
    fn attribute(&mut self, kind: RecordKind, label: &'static str, value: &str) {
        let key = self.names.attribute_key(kind, label);
        put_string_attribute(&mut self.point, 7, key, value);
    }

    /// Ends the point begun last and files it under its metric.
    fn finish(&mut self, prom: &str, mtype: MetricType, help: &str, (start, time, value): (u64, u64, f64)) {
        let mut h = FxHasher::default();
        h.write(prom.as_bytes());
        h.write(&self.point);
        if !self.seen.insert(h.finish()) {
            self.built.duplicates += 1;
            return;
        }
        let count = match self.counts.get_mut(prom) {
            Some(n) => n,
            None => self.counts.entry(prom.to_string()).or_insert(0),
        };
        if *count >= self.limit {
            self.built.over_limit += 1;
            return;
        }
        let i = match self.index.get(prom) {
            Some(i) => *i,
            None => {
                let (name, unit) =
                    self.names.metrics.entry(prom.to_string()).or_insert_with(|| metric_name(prom, mtype)).clone();
                self.metrics.push(MetricBuf { name, unit, help: help.to_string(), mtype, points: Vec::new() });
                self.index.insert(prom.to_string(), self.metrics.len() - 1);
                self.metrics.len() - 1
            }
        };
        let m = &mut self.metrics[i];
        if m.mtype != mtype {
            // One name, two types: the table tests rule it out; never send
            // a malformed metric.
            self.built.duplicates += 1;
            return;
        }
        // NumberDataPoint: start_time_unix_nano = 2, time_unix_nano = 3 (fixed64), as_double = 4.
        if start != 0 {
            put_fixed64(&mut self.point, 2, start);
        }
        put_fixed64(&mut self.point, 3, time);
        put_double(&mut self.point, 4, value);
        // Gauge.data_points / Sum.data_points = 1.
        put_bytes(&mut m.points, 1, &self.point);
        *count += 1;
        self.built.points += 1;
    }

    /// The request put together so far, encoded; the next one starts empty.
    fn take(&mut self, resource: &[u8], scope: &[u8]) -> Built {
        self.index.clear();
        self.seen.clear();
        let metrics = std::mem::take(&mut self.metrics);
        let mut built = std::mem::take(&mut self.built);
        built.metrics = metrics.len();
        built.body = encode_request(resource, scope, &metrics);
        built
    }

    /// The identity attributes of a record, encoded once for all its points.
    fn identity(&mut self, r: &Record, filter: &dyn SampleFilter) -> Vec<u8> {
        let mut labels: Vec<(&'static str, &str)> = Vec::with_capacity(4);
        for_each_identity(r, |k, v| labels.push((k, v)));
        let mut out = Vec::new();
        for (k, v) in labels {
            if !filter.drops_labels() || filter.keeps_label(k) {
                put_string_attribute(&mut out, 7, self.names.attribute_key(r.kind, k), v);
            }
        }
        out
    }
}

/// `ExportMetricsServiceRequest { resource_metrics: [ResourceMetrics {
/// resource, scope_metrics: [ScopeMetrics { scope, metrics }] }] }`.
fn encode_request(resource: &[u8], scope: &[u8], metrics: &[MetricBuf]) -> Vec<u8> {
    let cumulative = AggregationTemporality::Cumulative as u64;
    // Metric: name = 1, description = 2, unit = 3, gauge = 5, sum = 7;
    // Sum: data_points = 1, aggregation_temporality = 2, is_monotonic = 3.
    let data_len = |m: &MetricBuf| match m.mtype {
        MetricType::Counter => m.points.len() + varint_field_len(2, cumulative) + varint_field_len(3, 1),
        MetricType::Gauge | MetricType::Histogram => m.points.len(),
    };
    let data_field = |m: &MetricBuf| if m.mtype == MetricType::Counter { 7 } else { 5 };
    let metric_len = |m: &MetricBuf| {
        str_nonempty_len(1, &m.name)
            + str_nonempty_len(2, &m.help)
            + str_nonempty_len(3, m.unit)
            + len_field_len(data_field(m), data_len(m))
    };
    let scope_metrics_len: usize =
        len_field_len(1, scope.len()) + metrics.iter().map(|m| len_field_len(2, metric_len(m))).sum::<usize>();
    let resource_metrics_len = len_field_len(1, resource.len()) + len_field_len(2, scope_metrics_len);
    let mut out = Vec::with_capacity(len_field_len(1, resource_metrics_len));
    put_len_header(&mut out, 1, resource_metrics_len);
    put_bytes(&mut out, 1, resource);
    put_len_header(&mut out, 2, scope_metrics_len);
    put_bytes(&mut out, 1, scope);
    for m in metrics {
        put_len_header(&mut out, 2, metric_len(m));
        put_str_nonempty(&mut out, 1, &m.name);
        put_str_nonempty(&mut out, 2, &m.help);
        put_str_nonempty(&mut out, 3, m.unit);
        put_len_header(&mut out, data_field(m), data_len(m));
        out.extend_from_slice(&m.points);
        if m.mtype == MetricType::Counter {
            put_varint_field(&mut out, 2, cumulative);
            put_varint_field(&mut out, 3, 1);
        }
    }
    out
}

impl MetricBuilder {
    pub fn new(cardinality_limit: usize, selection: impl Into<crate::util::live::Live<Selection>>) -> Self {
        Self {
            starts: FxHashMap::default(),
            names: Names::default(),
            generation: 0,
            cardinality_limit: cardinality_limit.max(1),
            selection: selection.into(),
        }
    }

    fn start_of(&mut self, r: &Record) -> u64 {
        let now = unix_nanos(r.time);
        let kind = r.kind.spec();
        if kind.is_event {
            return now;
        }
        // One start per subject (and the kind's scope keys: a job's operation).
        let mut scope = String::from(kind.name);
        for_each_identity(r, |k, v| {
            if k == "uuid" {
                scope.push('/');
                scope.push_str(v);
            }
        });
        for key in kind.counter_start.scope_keys {
            scope.push('/');
            scope.push_str(&r.field(key).and_then(|v| v.as_u64()).unwrap_or(0).to_string());
        }
        let number = |key: Option<&str>| key.and_then(|k| r.field(k)).and_then(|v| v.as_f64()).unwrap_or(0.0);
        let marker = number(kind.counter_start.marker);
        let backdate_ms = number(kind.counter_start.backdate_ms);
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

    /// Builds the metrics of every record in one request; points of series
    /// no longer in the records are simply absent (vanished domains stop
    /// being exported).
    pub fn build<'a>(&mut self, records: impl IntoIterator<Item = &'a Record>) -> Built {
        let mut all = self.build_requests(records, u64::MAX, &Resource::default());
        all.pop().unwrap_or_default()
    }

    /// Builds the metrics of every record, split into requests of about
    /// `max_points` points (whole records each): receivers bound a request's
    /// size, and the agent's memory stays bounded by one request, not by
    /// the host's domain count.
    pub fn build_requests<'a>(
        &mut self,
        records: impl IntoIterator<Item = &'a Record>,
        max_points: u64,
        resource: &Resource,
    ) -> Vec<Built> {
        self.generation += 1;
        let records: Vec<&Record> = records.into_iter().filter(|r| !r.kind.is_event).collect();
        let starts: Vec<u64> = records.iter().map(|r| self.start_of(r)).collect();
        let generation = self.generation;
        self.starts.retain(|_, s| s.generation == generation);
        let resource = resource.encode_to_vec();
        let scope = InstrumentationScope {
            name: "virtpulse".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            attributes: Vec::new(),
            dropped_attributes_count: 0,
        }
        .encode_to_vec();
        let mut counts = FxHashMap::default();
        let mut asm = Assembler {
            names: &mut self.names,
            metrics: Vec::new(),
            index: FxHashMap::default(),
            seen: HashSet::default(),
            counts: &mut counts,
            limit: self.cardinality_limit,
            point: Vec::with_capacity(512),
            built: Built::default(),
        };
        let selection = self.selection.get();
        let filter: &dyn SampleFilter = &*selection;
        let mut out = Vec::new();
        for (r, start) in records.into_iter().zip(starts) {
            let time = unix_nanos(r.time);
            info_metrics(r, filter, &mut |name, help, labels| {
                asm.begin(&[]);
                for (k, v) in labels {
                    asm.attribute(r.kind, k, v);
                }
                asm.finish(name, MetricType::Gauge, help, (0, time, 1.0));
            });
            let identity = asm.identity(r, filter);
            let mut ss = SampleStats::default();
            for_each_sample(r, filter, &mut ss, |s| {
                asm.begin(&identity);
                s.for_each_label(|k, v| asm.attribute(r.kind, k, v));
                let start = if s.mtype() == MetricType::Counter { start } else { 0 };
                asm.finish(s.name(), s.mtype(), s.help(), (start, time, s.value));
            });
            if asm.built.points >= max_points {
                out.push(asm.take(&resource, &scope));
            }
        }
        if asm.built.points > 0 || asm.built.over_limit > 0 || asm.built.duplicates > 0 || out.is_empty() {
            out.push(asm.take(&resource, &scope));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::domain_stats::metrics::DOMAIN_STATS;
    use crate::record::{DomainInfo, DomainRef, Field, Identity, Unit};
    use crate::value::TypedValue;
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use opentelemetry_proto::tonic::metrics::v1::{metric::Data, number_data_point, Metric, NumberDataPoint};
    use std::sync::Arc;
    use std::time::Duration;

    fn rec(uuid: &str, secs: u64, fields: Vec<(&str, TypedValue)>) -> Record {
        let identity = Identity { host: "h".into(), uri: "u".into() };
        Record {
            domain: Some(DomainRef {
                name: format!("vm-{uuid}").into(),
                uuid: uuid.into(),
                info: Some(Arc::new(DomainInfo { vcpus: Some(2), ..Default::default() })),
            }),
            fields: fields.into_iter().map(|(k, v)| Field { key: k.into(), value: v, unit: Unit::Unknown }).collect(),
            ..Record::new(&identity, RecordKind::of(&DOMAIN_STATS), UNIX_EPOCH + Duration::from_secs(secs))
        }
    }

    /// The metrics of a request, decoded with the generated types.
    fn metrics(b: &Built) -> Vec<Metric> {
        let req = ExportMetricsServiceRequest::decode(b.body.as_slice()).expect("a valid request");
        assert_eq!(req.resource_metrics.len(), 1);
        let scopes = &req.resource_metrics[0].scope_metrics;
        assert_eq!(scopes[0].scope.as_ref().unwrap().name, "virtpulse");
        scopes[0].metrics.clone()
    }

    fn find<'m>(b: &'m [Metric], name: &str) -> &'m Metric {
        b.iter().find(|m| m.name == name).unwrap_or_else(|| panic!("no {name}"))
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
        let mut b = MetricBuilder::new(1000, Arc::new(Selection::everything(&crate::registry::catalog())));
        let fields = |cpu: u64| {
            vec![
                ("state.state", TypedValue::Int(1)),
                ("cpu.time", TypedValue::ULLong(cpu)),
                ("net.count", TypedValue::UInt(1)),
                ("net.0.name", TypedValue::String("vnet0".into())),
                ("net.0.rx.pkts", TypedValue::ULLong(7)),
            ]
        };
        let first = metrics(&b.build(&[rec("a", 100, fields(5_000_000_000))]));
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

        let later = metrics(&b.build(&[rec("a", 110, fields(6_000_000_000))]));
        assert_eq!(sum_points(find(&later, "libvirt.domain.cpu.time"))[0].start_time_unix_nano, 100_000_000_000);
        let restarted = metrics(&b.build(&[rec("a", 120, fields(1_000_000_000))]));
        assert_eq!(sum_points(find(&restarted, "libvirt.domain.cpu.time"))[0].start_time_unix_nano, 120_000_000_000);
        // Gone, then back: a new start.
        let _ = b.build(&[rec("b", 130, fields(1))]);
        let back = metrics(&b.build(&[rec("a", 140, fields(2_000_000_000))]));
        assert_eq!(sum_points(find(&back, "libvirt.domain.cpu.time"))[0].start_time_unix_nano, 140_000_000_000);
        assert!(back.iter().all(|m| match &m.data {
            Some(Data::Sum(s)) => s.data_points.iter().all(|p| attr(p, "libvirt.domain.uuid") == "a"),
            Some(Data::Gauge(g)) => g.data_points.iter().all(|p| attr(p, "libvirt.domain.uuid") == "a"),
            _ => false,
        }));
    }

    #[test]
    fn cardinality_limit_and_duplicates_are_counted() {
        let mut b = MetricBuilder::new(3, Arc::new(Selection::everything(&crate::registry::catalog())));
        let recs: Vec<Record> =
            (0..5).map(|i| rec(&i.to_string(), 1, vec![("cpu.time", TypedValue::ULLong(1))])).collect();
        let built = b.build(&recs);
        assert_eq!(sum_points(find(&metrics(&built), "libvirt.domain.cpu.time")).len(), 3);
        assert_eq!(built.over_limit, 2 + 2, "cpu.time and domain.info each lose two");
        let dup = b.build(&[rec("x", 1, vec![]), rec("x", 1, vec![])]);
        assert_eq!(dup.duplicates, 1);
    }

    #[test]
    fn the_selection_applies_as_in_prometheus() {
        use crate::selection::SelectionSpec;
        let spec = SelectionSpec {
            include: vec!["libvirt_domain_interface_*".into(), "libvirt_domain_info".into()],
            exclude: vec!["*_packets_total".into()],
            drop_labels: vec!["uuid".into(), "arch".into()],
            ..Default::default()
        };
        let mut b = MetricBuilder::new(1000, Arc::new(Selection::new(&spec, &crate::registry::catalog()).unwrap()));
        let built = b.build(&[rec(
            "a",
            1,
            vec![
                ("state.state", TypedValue::Int(1)),
                ("cpu.time", TypedValue::ULLong(5)),
                ("net.0.name", TypedValue::String("vnet0".into())),
                ("net.0.rx.bytes", TypedValue::ULLong(7)),
                ("net.0.rx.pkts", TypedValue::ULLong(1)),
                ("vcpu.0.exits.sum", TypedValue::ULLong(9)),
            ],
        )]);
        let built = metrics(&built);
        let names: Vec<&str> = built.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, vec!["libvirt.domain.info", "libvirt.domain.interface.receive"]);
        let rx = &sum_points(find(&built, "libvirt.domain.interface.receive"))[0];
        assert_eq!(attr(rx, "libvirt.domain.interface"), "vnet0");
        assert_eq!(attr(rx, "libvirt.domain.name"), "vm-a");
        assert!(rx.attributes.iter().all(|a| a.key != "libvirt.domain.uuid"), "uuid dropped");
        let info = find(&built, "libvirt.domain.info");
        let Some(Data::Gauge(g)) = &info.data else { panic!("info is a gauge") };
        assert!(g.data_points[0]
            .attributes
            .iter()
            .all(|a| a.key != "libvirt.domain.uuid" && a.key != "libvirt.domain.arch"));
    }

    #[test]
    fn requests_are_split_by_points_and_decode_like_one() {
        let mut b = MetricBuilder::new(1_000_000, Arc::new(Selection::everything(&crate::registry::catalog())));
        let recs: Vec<Record> = (0..50)
            .map(|i| {
                rec(
                    &i.to_string(),
                    1,
                    vec![("cpu.time", TypedValue::ULLong(1)), ("vcpu.0.time", TypedValue::ULLong(2))],
                )
            })
            .collect();
        let parts = b.build_requests(&recs, 20, &opentelemetry_proto::tonic::resource::v1::Resource::default());
        assert!(parts.len() >= 5, "{} requests", parts.len());
        assert!(parts.iter().all(|p| p.points <= 20 + 3), "{:?}", parts.iter().map(|p| p.points).collect::<Vec<_>>());
        let total: u64 = parts.iter().map(|p| p.points).sum();
        assert_eq!(total, 50 * 3, "cpu.time, vcpu.0.time and the info metric of each");
        let uuids: std::collections::BTreeSet<String> = parts
            .iter()
            .flat_map(metrics)
            .filter(|m| m.name == "libvirt.domain.cpu.time")
            .flat_map(|m| sum_points(&m).iter().map(|p| attr(p, "libvirt.domain.uuid")).collect::<Vec<_>>())
            .collect();
        assert_eq!(uuids.len(), 50, "every domain once");
    }
}
