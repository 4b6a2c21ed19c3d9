//! A record's exported values: each field its kind maps to a metric, with
//! the labels read from sibling fields, as views into the record (nothing
//! copied). The Prometheus and OTLP sinks both read records through this.

use std::fmt::Write;
use std::sync::Arc;

use rustc_hash::FxHashMap;

use super::kind::{KindSpec, Switch, NS};
use super::mapping::{mapping, MappedExport, MappedLabel};
use super::Record;
use crate::value::{MetricType, TypedValue};

/// Labels of one series at most, beyond the record's identity.
pub const MAX_LABELS: usize = 6;

/// No sibling field: the label is empty.
pub const NO_FIELD: u32 = u32::MAX;

/// One exported value of a record: a view, nothing copied. Label values are
/// read from the record when asked for.
#[derive(Debug, Clone)]
pub struct Sample<'r> {
    pub export: Arc<MappedExport>,
    pub record: &'r Record,
    /// Index of the field in the record.
    pub field: u32,
    /// Per label (by position): the sibling field that holds its value.
    pub siblings: [u32; MAX_LABELS],
    /// Bit i set: the i-th label is dropped.
    pub dropped: u32,
    pub value: f64,
}

impl<'r> Sample<'r> {
    pub fn name(&self) -> &str {
        &self.export.name
    }

    pub fn mtype(&self) -> MetricType {
        self.export.mtype
    }

    pub fn help(&self) -> &str {
        &self.export.help
    }

    /// Calls `f` with each label beyond the record's identity (domain,
    /// uuid), in order, without allocating.
    pub fn for_each_label(&self, f: impl FnMut(&'static str, &str)) {
        for_each_label(&self.export, self.record, &self.siblings, self.dropped, f)
    }

    /// The labels as owned pairs (tests, slow paths).
    pub fn labels(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::with_capacity(self.export.labels.len());
        self.for_each_label(|k, v| out.push((k, v.to_string())));
        out
    }
}

/// The labels of a series of `export` in `record`: literal ones from the
/// mapping, the others from the sibling fields (see `Sample`).
pub fn for_each_label(
    export: &MappedExport,
    record: &Record,
    siblings: &[u32; MAX_LABELS],
    dropped: u32,
    mut f: impl FnMut(&'static str, &str),
) {
    let mut ints = itoa::Buffer::new();
    let mut text = String::new();
    for (i, (name, src)) in export.labels.iter().enumerate().take(MAX_LABELS) {
        if dropped & (1 << i) != 0 {
            continue;
        }
        let sibling = record.fields.get(siblings[i] as usize).map(|f| &f.value);
        match (src, sibling) {
            (MappedLabel::Literal(s), _) => f(name, s),
            (_, None) => f(name, ""),
            (MappedLabel::NanosecondsAsSeconds(_), Some(v)) => {
                text.clear();
                let _ = write!(text, "{}", scaled(v.as_f64().unwrap_or(0.0), NS));
                f(name, &text)
            }
            (MappedLabel::Sibling(_), Some(v)) => match v {
                TypedValue::String(s) => f(name, s),
                TypedValue::Int(x) => f(name, ints.format(*x)),
                TypedValue::UInt(x) => f(name, ints.format(*x)),
                TypedValue::LLong(x) => f(name, ints.format(*x)),
                TypedValue::ULLong(x) => f(name, ints.format(*x)),
                TypedValue::Boolean(b) => f(name, if *b { "1" } else { "0" }),
                TypedValue::Double(d) => {
                    text.clear();
                    let _ = write!(text, "{d}");
                    f(name, &text)
                }
            },
        }
    }
}

/// Dividing by 1e9 rounds better than multiplying by 1e-9 (1.5 s, not
/// 1.5000000000000002 s).
pub fn scaled(raw: f64, scale: f64) -> f64 {
    if scale < 1.0 {
        raw / (1.0 / scale).round()
    } else {
        raw * scale
    }
}

/// What `samples` could not map, for self-metrics and logs.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SampleStats {
    /// Keys with no table row and no rule (kept in records, not exported).
    pub unmapped: Vec<String>,
    /// Numeric keys whose value was a string.
    pub wrong_type: Vec<String>,
}

/// What a sink leaves out of a record's samples (see `selection`).
pub trait SampleFilter {
    /// Whether a metric behind this switch (`None`: the default profile)
    /// and of this name is exported.
    fn selects(&self, switch: Option<&'static Switch>, name: &str) -> bool;
    /// Whether series keep this label.
    fn keeps_label(&self, label: &str) -> bool;
    /// Whether any label is dropped at all (the common case is none).
    fn drops_labels(&self) -> bool;
}

/// Exports everything (tests, references).
pub struct AllSamples;

impl SampleFilter for AllSamples {
    fn selects(&self, _: Option<&'static Switch>, _: &str) -> bool {
        true
    }

    fn keeps_label(&self, _: &str) -> bool {
        true
    }

    fn drops_labels(&self) -> bool {
        false
    }
}

/// Indices of a record's layered scope that are layers below the top one:
/// the objects are listed top first, so an index whose name appeared at a
/// lower index is a layer below (a disk's backing chain).
fn layers_of(kind: &KindSpec, record: &Record) -> Vec<u32> {
    let Some(layers) = kind.layers else { return Vec::new() };
    let mut names: Vec<(u32, &str)> = Vec::new();
    for f in &record.fields {
        let Some(rest) = f.key.strip_prefix(layers.scope).and_then(|r| r.strip_prefix('.')) else { continue };
        let Some(n) = rest.strip_suffix(layers.name_key).and_then(|r| r.strip_suffix('.')) else { continue };
        if let (Ok(n), Some(name)) = (n.parse::<u32>(), f.value.as_str()) {
            names.push((n, name));
        }
    }
    names.sort_unstable();
    let mut below = Vec::new();
    for (i, (n, name)) in names.iter().enumerate() {
        if names[..i].iter().any(|(_, other)| other == name) {
            below.push(*n);
        }
    }
    below
}

/// Calls `emit` with each exported value of a record that `filter`
/// selects, labels resolved from sibling keys.
pub fn for_each_sample<'r>(
    record: &'r Record,
    filter: &dyn SampleFilter,
    stats: &mut SampleStats,
    mut emit: impl FnMut(Sample<'r>),
) {
    let kind = record.kind.spec();
    // Built when the first sample needs a sibling (most records do).
    let mut by_key: Option<FxHashMap<&str, u32>> = None;
    let layers = layers_of(kind, record);
    let drops = filter.drops_labels();
    for (index, f) in record.fields.iter().enumerate() {
        let m = mapping(kind, &f.key);
        let Some(export) = &m.export else {
            if m.unmapped {
                stats.unmapped.push(f.key.to_string());
            }
            continue;
        };
        if !filter.selects(m.switch, &export.name) {
            continue;
        }
        if let (Some(n), Some(l)) = (m.layer_index, kind.layers) {
            if layers.contains(&n) && !filter.selects(Some(l.switch), &export.name) {
                continue;
            }
        }
        let Some(raw) = f.value.as_f64() else {
            stats.wrong_type.push(f.key.to_string());
            continue;
        };
        let mut dropped = 0u32;
        let mut siblings = [NO_FIELD; MAX_LABELS];
        for (i, (name, src)) in export.labels.iter().enumerate().take(MAX_LABELS) {
            if drops && !filter.keeps_label(name) {
                dropped |= 1 << i;
                continue;
            }
            let key = match src {
                MappedLabel::Literal(_) => continue,
                MappedLabel::Sibling(k) | MappedLabel::NanosecondsAsSeconds(k) => k,
            };
            let map = by_key
                .get_or_insert_with(|| record.fields.iter().enumerate().map(|(i, f)| (&*f.key, i as u32)).collect());
            siblings[i] = map.get(key.as_str()).copied().unwrap_or(NO_FIELD);
        }
        emit(Sample {
            export: export.clone(),
            record,
            field: index as u32,
            siblings,
            dropped,
            value: scaled(raw, export.scale),
        });
    }
}

/// Collects `for_each_sample` (everything selected) into a vector.
pub fn samples<'r>(record: &'r Record, stats: &mut SampleStats) -> Vec<Sample<'r>> {
    let mut out = Vec::with_capacity(record.fields.len());
    for_each_sample(record, &AllSamples, stats, |s| out.push(s));
    out
}

/// The identity labels of a record (its subject's, then its kind's coded
/// fields), in order; none for events.
pub fn for_each_identity<'r>(r: &'r Record, mut f: impl FnMut(&'static str, &'r str)) -> bool {
    use super::kind::Subject;
    let kind = r.kind.spec();
    if kind.is_event {
        return false;
    }
    match kind.subject {
        Subject::Domain => {
            let Some(d) = &r.domain else { return false };
            f("domain", &d.name);
            f("uuid", &d.uuid);
        }
        Subject::Pool => {
            let Some(p) = &r.pool else { return false };
            f("pool", &p.name);
            f("uuid", &p.uuid);
        }
        Subject::Object { label, .. } => {
            let Some(o) = &r.object else { return false };
            f(label, &o.name);
            f("uuid", &o.uuid);
        }
        Subject::Host => {}
    }
    for id in kind.identity {
        f(id.label, code_name(id.names, r.field(id.key).and_then(|v| v.as_u64())));
    }
    true
}

/// The name of a code in a table of names (`unknown` when absent or past
/// its end).
pub fn code_name(names: &'static [&'static str], code: Option<u64>) -> &'static str {
    code.and_then(|c| usize::try_from(c).ok()).and_then(|c| names.get(c)).copied().unwrap_or("unknown")
}
