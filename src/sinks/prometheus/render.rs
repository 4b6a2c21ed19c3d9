//! Turns records into metric families (rendered once per batch, not per scrape).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use rustc_hash::FxHasher;

use super::text::{escape_label_value, write_header, write_sample};
use crate::libvirt::TypedValue;
use crate::record::{Record, RecordKind};
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

fn state_name(code: Option<f64>) -> &'static str {
    match code.map(|c| c as i64) {
        Some(0) => "nostate",
        Some(1) => "running",
        Some(2) => "blocked",
        Some(3) => "paused",
        Some(4) => "shutdown",
        Some(5) => "shutoff",
        Some(6) => "crashed",
        Some(7) => "pmsuspended",
        _ => "unknown",
    }
}

fn opt_str(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("")
}

fn opt_bool(v: Option<bool>) -> &'static str {
    match v {
        Some(true) => "true",
        Some(false) => "false",
        None => "",
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

fn int_str(v: Option<impl ToString>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

fn field_str<'r>(r: &'r Record, key: &str) -> &'r str {
    r.field(key).and_then(|v| v.as_str()).unwrap_or("")
}

fn field_bool(r: &Record, key: &str) -> &'static str {
    match r.field(key) {
        Some(TypedValue::Boolean(b)) => opt_bool(Some(*b)),
        _ => "",
    }
}

fn job_type_name(code: Option<u64>) -> &'static str {
    match code {
        Some(0) => "none",
        Some(1) => "bounded",
        Some(2) => "unbounded",
        Some(3) => "completed",
        Some(4) => "failed",
        Some(5) => "cancelled",
        _ => "unknown",
    }
}

fn job_operation_name(code: Option<u64>) -> &'static str {
    match code {
        Some(1) => "start",
        Some(2) => "save",
        Some(3) => "restore",
        Some(4) => "migration_in",
        Some(5) => "migration_out",
        Some(6) => "snapshot",
        Some(7) => "snapshot_revert",
        Some(8) => "dump",
        Some(9) => "backup",
        Some(10) => "snapshot_delete",
        _ => "unknown",
    }
}

fn pool_state_name(code: Option<u64>) -> &'static str {
    match code {
        Some(0) => "inactive",
        Some(1) => "building",
        Some(2) => "running",
        Some(3) => "degraded",
        Some(4) => "inaccessible",
        _ => "unknown",
    }
}

const GAUGE: MetricType = MetricType::Gauge;

fn domain_info_metrics(w: &mut FamilyWriter, r: &Record, name: &str, uuid: &str) {
    let info = r.domain.as_ref().and_then(|d| d.info.as_deref()).cloned().unwrap_or_default();
    let vcpus = int_str(info.vcpus);
    let maxmem = int_str(info.max_memory_bytes);
    let state = state_name(r.field("state.state").and_then(|v| v.as_f64()));
    w.add(
        "libvirt_domain_info",
        GAUGE,
        "Descriptive data about the domain (value is always 1); join on domain/uuid.",
        &[
            ("domain", name),
            ("uuid", uuid),
            ("state", state),
            ("virt_type", opt_str(&info.virt_type)),
            ("os_type", opt_str(&info.os_type)),
            ("arch", opt_str(&info.arch)),
            ("machine", opt_str(&info.machine)),
            ("vcpus", &vcpus),
            ("max_memory_bytes", &maxmem),
            ("persistent", opt_bool(info.persistent)),
            ("autostart", opt_bool(info.autostart)),
        ],
        1.0,
    );
    if let Some(os) = &info.openstack {
        w.add(
            "libvirt_domain_openstack_info",
            GAUGE,
            "OpenStack Nova metadata of the domain (value is always 1); join on domain/uuid.",
            &[
                ("domain", name),
                ("uuid", uuid),
                ("instance_name", opt_str(&os.instance_name)),
                ("flavor", opt_str(&os.flavor)),
                ("project_name", opt_str(&os.project_name)),
                ("project_uuid", opt_str(&os.project_uuid)),
                ("user_name", opt_str(&os.user_name)),
                ("user_uuid", opt_str(&os.user_uuid)),
            ],
            1.0,
        );
    }
}

fn node_info_metrics(w: &mut FamilyWriter, r: &Record) {
    if let Some(model) = r.field("info.model").and_then(|v| v.as_str()) {
        w.add("libvirt_node_info", GAUGE, "The host's CPU model (value is always 1).", &[("model", model)], 1.0);
    }
    let version =
        |k: &str| r.field(k).and_then(|v| v.as_u64()).map(crate::libvirt::node::version_string).unwrap_or_default();
    if r.field("version.daemon").is_some() {
        let (library, daemon, hypervisor) =
            (version("version.library"), version("version.daemon"), version("version.hypervisor"));
        w.add(
            "libvirt_node_versions_info",
            GAUGE,
            "Versions of the libvirt client library, the libvirt daemon and the hypervisor (value is always 1).",
            &[
                ("library_version", &library),
                ("daemon_version", &daemon),
                ("hypervisor", field_str(r, "hypervisor.type")),
                ("hypervisor_version", &hypervisor),
            ],
            1.0,
        );
    }
}

fn pool_info_metrics(w: &mut FamilyWriter, r: &Record, name: &str, uuid: &str) {
    w.add(
        "libvirt_storage_pool_info",
        GAUGE,
        "Descriptive data about the storage pool (value is always 1); join on pool/uuid.",
        &[
            ("pool", name),
            ("uuid", uuid),
            ("type", field_str(r, "type")),
            ("state", pool_state_name(r.field("state").and_then(|v| v.as_u64()))),
            ("persistent", field_bool(r, "persistent")),
            ("autostart", field_bool(r, "autostart")),
        ],
        1.0,
    );
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
                    domain_info_metrics(&mut w, r, &d.name, &d.uuid);
                    label_prefix(&[("domain", &d.name), ("uuid", &d.uuid)])
                } else {
                    let job_type = job_type_name(r.field("type").and_then(|v| v.as_u64()));
                    let op = job_operation_name(r.field("operation").and_then(|v| v.as_u64()));
                    label_prefix(&[("domain", &d.name), ("uuid", &d.uuid), ("type", job_type), ("operation", op)])
                }
            }
            RecordKind::Node => {
                node_info_metrics(&mut w, r);
                String::new()
            }
            // Events are counted (see `events`), not rendered as samples.
            RecordKind::Event => continue,
            RecordKind::StoragePool => {
                let Some(p) = &r.pool else { continue };
                pool_info_metrics(&mut w, r, &p.name, &p.uuid);
                label_prefix(&[("pool", &p.name), ("uuid", &p.uuid)])
            }
        };
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
