//! Turns records into metric families (rendered once per batch, not per scrape).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use rustc_hash::FxHasher;

use super::text::{escape_label_value, write_header, write_sample};
use crate::record::{Record, RecordKind};
use crate::sinks::codes::{job_operation_name, job_type_name};
use crate::sinks::info::info_metrics;
use crate::stat_keys::{for_each_sample, MetricType, SampleStats};

#[derive(Debug, Clone)]
pub struct Family {
    pub help: String,
    pub mtype: MetricType,
    /// Sample lines, already in exposition format.
    pub body: String,
}

pub type Families = BTreeMap<String, Family>;

#[derive(Debug, Default)]
pub struct RenderStats {
    pub unmapped: BTreeSet<String>,
    pub wrong_type: BTreeSet<String>,
    /// Samples dropped because they would have duplicated a series or
    /// reused a family name with another type (both break a scrape).
    pub conflicts: u64,
    pub series: u64,
}

/// Adds one sample to its family, refusing duplicates and type clashes.
pub struct FamilyWriter<'a> {
    families: &'a mut Families,
    stats: &'a mut RenderStats,
    /// Hashes of the series written so far (a 64-bit collision, which would
    /// drop one series, is far less likely than anything else going wrong).
    seen: HashSet<u64, BuildHasherDefault<FxHasher>>,
}

impl<'a> FamilyWriter<'a> {
    pub fn new(families: &'a mut Families, stats: &'a mut RenderStats) -> Self {
        Self { families, stats, seen: HashSet::default() }
    }

    pub fn add(&mut self, name: &str, mtype: MetricType, help: &str, labels: &[(&str, &str)], value: f64) {
        self.add_with_prefix(name, mtype, help, "", labels, value);
    }

    /// `prefix`: labels already in exposition form (see `write_sample`).
    pub fn add_with_prefix(
        &mut self,
        name: &str,
        mtype: MetricType,
        help: &str,
        prefix: &str,
        labels: &[(&str, &str)],
        value: f64,
    ) {
        let fam = match self.families.get_mut(name) {
            Some(f) => f,
            None => self.families.entry(name.to_string()).or_insert(Family {
                help: help.to_string(),
                mtype,
                body: String::with_capacity(1024),
            }),
        };
        if fam.mtype != mtype {
            self.stats.conflicts += 1;
            return;
        }
        let start = fam.body.len();
        write_sample(&mut fam.body, name, prefix, labels.iter().copied(), value);
        // The sample line minus its value identifies the series.
        let line = &fam.body[start..];
        let id = line.rsplit_once(' ').map(|(id, _)| id).unwrap_or(line);
        let mut h = FxHasher::default();
        h.write(id.as_bytes());
        if !self.seen.insert(h.finish()) {
            fam.body.truncate(start);
            self.stats.conflicts += 1;
            return;
        }
        self.stats.series += 1;
    }
}

impl FamilyWriter<'_> {
    /// A histogram: `buckets` are (upper bound, cumulative count), without +Inf.
    pub fn add_histogram(
        &mut self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        buckets: &[(f64, u64)],
        sum: f64,
        count: u64,
    ) {
        let fam = self.families.entry(name.to_string()).or_insert(Family {
            help: help.to_string(),
            mtype: MetricType::Histogram,
            body: String::with_capacity(1024),
        });
        if fam.mtype != MetricType::Histogram {
            self.stats.conflicts += 1;
            return;
        }
        let bucket = format!("{name}_bucket");
        let mut le = String::new();
        for (bound, n) in buckets.iter().map(|(b, n)| (*b, *n)).chain([(f64::INFINITY, count)]) {
            le.clear();
            super::text::write_value(&mut le, bound);
            let with_le: Vec<(&str, &str)> = labels.iter().copied().chain([("le", le.as_str())]).collect();
            write_sample(&mut fam.body, &bucket, "", with_le, n as f64);
        }
        write_sample(&mut fam.body, &format!("{name}_sum"), "", labels.iter().copied(), sum);
        write_sample(&mut fam.body, &format!("{name}_count"), "", labels.iter().copied(), count as f64);
        self.stats.series += buckets.len() as u64 + 3;
    }
}

/// Labels in exposition form, for labels every series of a record shares.
fn label_prefix(labels: &[(&str, &str)]) -> String {
    let mut p = String::with_capacity(96);
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            p.push(',');
        }
        p.push_str(k);
        p.push_str("=\"");
        escape_label_value(&mut p, v);
        p.push('"');
    }
    p
}

/// Renders records of any kind into families: identity labels per kind,
/// info metrics, then every mapped value.
pub fn render_records<'a>(
    records: impl IntoIterator<Item = &'a Record>,
    families: &mut Families,
    stats: &mut RenderStats,
) {
    let mut w = FamilyWriter::new(families, stats);
    for r in records {
        let prefix = match r.kind {
            RecordKind::DomainStats | RecordKind::DomainJob => {
                let Some(d) = &r.domain else { continue };
                if r.kind == RecordKind::DomainStats {
                    label_prefix(&[("domain", &d.name), ("uuid", &d.uuid)])
                } else {
                    let job_type = job_type_name(r.field("type").and_then(|v| v.as_u64()));
                    let op = job_operation_name(r.field("operation").and_then(|v| v.as_u64()));
                    label_prefix(&[("domain", &d.name), ("uuid", &d.uuid), ("type", job_type), ("operation", op)])
                }
            }
            RecordKind::Node => String::new(),
            // Events are counted (see `events`), not rendered as samples.
            RecordKind::Event => continue,
            RecordKind::StoragePool => {
                let Some(p) = &r.pool else { continue };
                label_prefix(&[("pool", &p.name), ("uuid", &p.uuid)])
            }
        };
        info_metrics(r, &mut |name, help, labels| w.add(name, MetricType::Gauge, help, labels, 1.0));
        let mut ss = SampleStats::default();
        for_each_sample(r, &mut ss, |s| {
            let labels: Vec<(&str, &str)> = s.labels().collect();
            w.add_with_prefix(s.name(), s.mtype(), s.help(), &prefix, &labels, s.value);
        });
        w.stats.unmapped.extend(ss.unmapped);
        w.stats.wrong_type.extend(ss.wrong_type);
    }
}

/// Writes families in name order, merging same-named families from several
/// sources under one header.
pub fn write_families<'a>(out: &mut String, sources: impl IntoIterator<Item = &'a Families>) {
    let mut merged: BTreeMap<&str, Vec<&Family>> = BTreeMap::new();
    for fams in sources {
        for (name, f) in fams {
            merged.entry(name.as_ref()).or_default().push(f);
        }
    }
    for (name, fams) in merged {
        let Some(first) = fams.first() else { continue };
        write_header(out, name, &first.help, first.mtype.as_str());
        for f in fams.iter().filter(|f| f.mtype == first.mtype) {
            out.push_str(&f.body);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::libvirt::TypedValue;
    use crate::record::{DomainInfo, DomainRef, Field, Unit, SCHEMA};
    use std::sync::Arc;

    fn rec(name: &str, fields: Vec<(&str, TypedValue)>) -> Record {
        Record {
            schema: SCHEMA,
            kind: RecordKind::DomainStats,
            time: std::time::SystemTime::now(),
            host: "h".into(),
            libvirt_uri: "u".into(),
            pool: None,
            event: None,
            domain: Some(DomainRef {
                name: name.into(),
                uuid: "11111111-2222-3333-4444-555555555555".into(),
                info: Some(Arc::new(DomainInfo { vcpus: Some(2), ..Default::default() })),
            }),
            fields: fields.into_iter().map(|(k, v)| Field { key: k.into(), value: v, unit: Unit::Unknown }).collect(),
        }
    }

    #[test]
    fn renders_info_state_and_stats() {
        let r = rec(
            "we\"ird\\name",
            vec![("state.state", TypedValue::Int(1)), ("cpu.time", TypedValue::ULLong(2_000_000_000))],
        );
        let mut fams = Families::new();
        let mut st = RenderStats::default();
        render_records(&[r], &mut fams, &mut st);
        let mut out = String::new();
        write_families(&mut out, [&fams]);
        assert!(out.contains("# TYPE libvirt_domain_cpu_time_seconds_total counter\n"), "{out}");
        assert!(out.contains("libvirt_domain_cpu_time_seconds_total{domain=\"we\\\"ird\\\\name\",uuid=\"11111111-2222-3333-4444-555555555555\"} 2\n"), "{out}");
        assert!(out.contains("state=\"running\""), "{out}");
        assert!(out.contains("vcpus=\"2\""), "{out}");
        assert_eq!(st.conflicts, 0);
        assert_eq!(st.series, 3);
    }

    #[test]
    fn duplicate_series_and_type_clashes_are_dropped() {
        // Two disks reporting the same name without a backing index.
        let r = rec(
            "d",
            vec![
                ("block.0.name", TypedValue::String("vda".into())),
                ("block.0.rd.bytes", TypedValue::ULLong(1)),
                ("block.1.name", TypedValue::String("vda".into())),
                ("block.1.rd.bytes", TypedValue::ULLong(2)),
                ("vm.x.sum", TypedValue::ULLong(1)),
                ("vm.x_total.cur", TypedValue::ULLong(1)),
            ],
        );
        let mut fams = Families::new();
        let mut st = RenderStats::default();
        render_records(&[r], &mut fams, &mut st);
        assert_eq!(st.conflicts, 2);
        let body = &fams["libvirt_domain_block_read_bytes_total"].body;
        assert_eq!(body.lines().count(), 1);
    }
}
