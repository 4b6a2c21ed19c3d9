//! From a libvirt key to what it means: its unit and, when exported, its
//! metric (name, type, unit conversion, labels), through the table of the
//! record's kind or its rule.
//!
//! Keys are matched after replacing every all-digit segment with `*`
//! (`block.3.rd.bytes` -> `block.*.rd.bytes`); the digits become labels or
//! point at sibling keys that hold label values (`block.3.name`). Keys
//! carry no domain names, so a host has a few hundred distinct ones: each
//! is resolved once per kind and cached.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

use rustc_hash::FxHashMap;

use super::kind::{KindSpec, LabelSource, StatSpec, Switch};
use crate::value::{MetricType, TypedValue, Unit};

/// A key mapped by a kind's rule rather than by a row.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleMatch {
    pub name: String,
    pub mtype: MetricType,
    /// `None`: the unit follows the value (booleans stay booleans, else a count).
    pub unit: Option<Unit>,
    pub scale: f64,
    pub help: String,
    pub labels: Vec<(&'static str, MappedLabel)>,
    pub switch: Option<&'static Switch>,
}

/// Where one label of a key's series takes its value from.
#[derive(Debug, Clone, PartialEq)]
pub enum MappedLabel {
    Literal(String),
    /// The value of another key of the same record (`block.3.name`).
    Sibling(String),
    /// The value of another key, in nanoseconds, written in seconds.
    NanosecondsAsSeconds(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct MappedExport {
    pub name: Cow<'static, str>,
    pub mtype: MetricType,
    pub scale: f64,
    pub help: Cow<'static, str>,
    pub labels: Vec<(&'static str, MappedLabel)>,
}

/// How one libvirt key maps.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyMapping {
    /// `None`: the unit follows the value's type (`numeric_unit` for numbers).
    pub unit: Option<Unit>,
    pub numeric_unit: Unit,
    pub export: Option<Arc<MappedExport>>,
    /// Neither exported nor describing anything known.
    pub unmapped: bool,
    /// The switch the metric sits behind (`None`: the default profile).
    pub switch: Option<&'static Switch>,
    /// `n` of keys under the kind's layered scope (`block.<n>.*`): layers
    /// are judged per record (see `Layers`).
    pub layer_index: Option<u32>,
}

impl KeyMapping {
    const NONE: KeyMapping = KeyMapping {
        unit: None,
        numeric_unit: Unit::Unknown,
        export: None,
        unmapped: false,
        switch: None,
        layer_index: None,
    };

    pub fn unit_for(&self, value: &TypedValue) -> Unit {
        self.unit.unwrap_or(match value {
            TypedValue::String(_) => Unit::Text,
            TypedValue::Boolean(_) => Unit::Boolean,
            _ => self.numeric_unit,
        })
    }
}

/// Distinct keys cached at most per kind; a daemon inventing keys without
/// end (it should not) costs a re-resolve, never unbounded memory.
const MAX_CACHED_KEYS: usize = 50_000;

/// Each kind's row index and resolved keys, by the kind's address (kinds
/// are statics).
#[derive(Default)]
struct KindCache {
    rows: HashMap<&'static str, &'static StatSpec>,
    keys: FxHashMap<Box<str>, Arc<KeyMapping>>,
}

fn caches() -> &'static RwLock<FxHashMap<usize, KindCache>> {
    static CACHES: OnceLock<RwLock<FxHashMap<usize, KindCache>>> = OnceLock::new();
    CACHES.get_or_init(RwLock::default)
}

fn address(kind: &'static KindSpec) -> usize {
    kind as *const KindSpec as usize
}

pub fn is_index(seg: &str) -> bool {
    !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit())
}

/// `block.3.rd.bytes` -> `block.*.rd.bytes`.
pub fn pattern_of(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for (i, seg) in key.split('.').enumerate() {
        if i > 0 {
            out.push('.');
        }
        out.push_str(if is_index(seg) { "*" } else { seg });
    }
    out
}

/// The row of `kind`'s table that `key` matches.
pub fn lookup(kind: &'static KindSpec, key: &str) -> Option<&'static StatSpec> {
    let pattern = pattern_of(key);
    if let Ok(c) = caches().read() {
        if let Some(k) = c.get(&address(kind)).filter(|k| !k.rows.is_empty()) {
            return k.rows.get(pattern.as_str()).copied();
        }
    }
    // Few kinds, small tables: built once each, or scanned if the lock is poisoned.
    if let Ok(mut c) = caches().write() {
        let k = c.entry(address(kind)).or_default();
        if k.rows.is_empty() {
            k.rows = kind.table.iter().map(|s| (s.pattern, s)).collect();
        }
        return k.rows.get(pattern.as_str()).copied();
    }
    kind.table.iter().find(|s| s.pattern == pattern)
}

/// A stat name made safe for a metric name (lower case, `_` for the rest).
pub fn sanitize(stat: &str) -> String {
    stat.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c.to_ascii_lowercase() } else { '_' }).collect()
}

/// `key` cut after its n-th (1-based) numeric segment.
fn scope_prefix(key: &str, n: usize) -> Option<&str> {
    let mut seen = 0;
    let mut end = 0;
    for seg in key.split('.') {
        end += seg.len();
        if is_index(seg) {
            seen += 1;
            if seen == n {
                return Some(&key[..end]);
            }
        }
        end += 1;
    }
    None
}

fn nth_index(key: &str, n: usize) -> Option<&str> {
    key.split('.').filter(|s| is_index(s)).nth(n)
}

/// The label whose value is the sibling of `key` at its n-th index scope
/// plus `suffix` (`block.3.rd.bytes`, 1, `name` -> `block.3.name`).
pub fn sibling(key: &str, n: usize, suffix: &str) -> MappedLabel {
    match scope_prefix(key, n) {
        Some(p) => MappedLabel::Sibling(format!("{p}.{suffix}")),
        None => MappedLabel::Literal(String::new()),
    }
}

fn resolve(kind: &'static KindSpec, key: &str) -> KeyMapping {
    let mut m = resolve_export(kind, key);
    if let Some(layers) = kind.layers {
        let mut parts = key.split('.');
        if parts.next() == Some(layers.scope) {
            m.layer_index = parts.next().and_then(|n| if is_index(n) { n.parse().ok() } else { None });
        }
    }
    m
}

fn resolve_export(kind: &'static KindSpec, key: &str) -> KeyMapping {
    if let Some(spec) = lookup(kind, key) {
        let export = spec.export.map(|e| {
            Arc::new(MappedExport {
                name: Cow::Borrowed(e.name),
                mtype: e.mtype,
                scale: e.scale,
                help: Cow::Borrowed(e.help),
                labels: spec
                    .labels
                    .iter()
                    .map(|ls| {
                        let v = match ls.source {
                            LabelSource::Index(n) => MappedLabel::Literal(nth_index(key, n).unwrap_or("").to_string()),
                            LabelSource::Literal(v) => MappedLabel::Literal(v.to_string()),
                            LabelSource::Sibling(n, suffix) => sibling(key, n, suffix),
                        };
                        (ls.name, v)
                    })
                    .collect(),
            })
        });
        return KeyMapping {
            unit: Some(spec.unit),
            numeric_unit: spec.unit,
            export,
            switch: spec.switch,
            ..KeyMapping::NONE
        };
    }
    if let Some(unit) = kind.rule_aux.and_then(|f| f(key)) {
        return KeyMapping { unit: Some(unit), numeric_unit: unit, ..KeyMapping::NONE };
    }
    if let Some(m) = kind.rule.and_then(|f| f(key)) {
        return KeyMapping {
            unit: m.unit,
            numeric_unit: Unit::Count,
            switch: m.switch,
            export: Some(Arc::new(MappedExport {
                name: Cow::Owned(m.name),
                mtype: m.mtype,
                scale: m.scale,
                help: Cow::Owned(m.help),
                labels: m.labels,
            })),
            ..KeyMapping::NONE
        };
    }
    KeyMapping { unmapped: true, ..KeyMapping::NONE }
}

/// The mapping of a key of a record kind (cached).
pub fn mapping(kind: &'static KindSpec, key: &str) -> Arc<KeyMapping> {
    if let Ok(c) = caches().read() {
        if let Some(m) = c.get(&address(kind)).and_then(|k| k.keys.get(key)) {
            return m.clone();
        }
    }
    let m = Arc::new(resolve(kind, key));
    if let Ok(mut c) = caches().write() {
        let k = c.entry(address(kind)).or_default();
        if k.keys.len() >= MAX_CACHED_KEYS {
            k.keys.clear();
        }
        k.keys.insert(key.into(), m.clone());
    }
    m
}

/// The unit of a key's value as libvirt reports it.
pub fn unit_of(kind: &'static KindSpec, key: &str, value: &TypedValue) -> Unit {
    mapping(kind, key).unit_for(value)
}
