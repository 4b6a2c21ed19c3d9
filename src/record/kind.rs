//! The catalog's vocabulary: how a kind of record describes itself. Each
//! collector declares its kinds (`KindSpec` statics in its `metrics.rs`):
//! the table that maps its keys to metrics, the switch each piece of deep
//! data sits behind, its info metrics, its identity labels and how OTLP
//! names its attributes. The sinks, the selection and the generated docs
//! read only these declarations, so a new kind of record needs no code
//! outside its collector.

use super::mapping::RuleMatch;
use crate::value::{MetricType, Unit};

/// One switch of deep data, defined once by the collector whose metrics it
/// governs: its `[metrics]` key, what it covers and what it adds (for
/// config.example.toml and docs/metrics.md). The `default` profile turns
/// every switch off, `everything` turns every one on.
#[derive(Debug)]
pub struct Switch {
    pub key: &'static str,
    pub covers: &'static str,
    pub adds: &'static str,
}

impl Switch {
    /// Switches are compared by identity: each is one static.
    pub fn is(&self, other: &Switch) -> bool {
        std::ptr::eq(self, other)
    }
}

impl PartialEq for Switch {
    fn eq(&self, other: &Self) -> bool {
        self.is(other)
    }
}

/// What a record is about, which decides its identity labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    /// `domain` and `uuid` from `Record::domain`.
    Domain,
    /// `pool` and `uuid` from `Record::pool`.
    Pool,
    /// The host itself: no identity labels (the scrape target is the host).
    Host,
    /// `<label>` and `uuid` from `Record::object`; OTLP names them
    /// `<otlp>.name` and `<otlp>.uuid`.
    Object { label: &'static str, otlp: &'static str },
}

impl Subject {
    /// The labels that tell series of different subjects apart; selection
    /// never drops them.
    pub fn name_label(self) -> Option<&'static str> {
        match self {
            Subject::Domain => Some("domain"),
            Subject::Pool => Some("pool"),
            Subject::Host => None,
            Subject::Object { label, .. } => Some(label),
        }
    }

    /// The OTLP prefix of the subject's `name` and `uuid` attributes.
    pub fn otlp(self) -> Option<&'static str> {
        match self {
            Subject::Domain => Some("libvirt.domain"),
            Subject::Pool => Some("libvirt.pool"),
            Subject::Host => None,
            Subject::Object { otlp, .. } => Some(otlp),
        }
    }
}

/// An identity label taken from a coded field (a job's type and operation):
/// the code's name from `names`, `unknown` past its end.
#[derive(Debug, Clone, Copy)]
pub struct IdentityLabel {
    pub label: &'static str,
    pub key: &'static str,
    pub names: &'static [&'static str],
}

#[derive(Debug, Clone, Copy)]
pub struct Export {
    pub name: &'static str,
    pub mtype: MetricType,
    /// Multiplier from the libvirt unit to the metric's base unit.
    pub scale: f64,
    pub help: &'static str,
}

/// Where a label's value comes from.
#[derive(Debug, Clone, Copy)]
pub enum LabelSource {
    /// The n-th (0-based) numeric segment of the key itself.
    Index(usize),
    /// A fixed value (e.g. `mode="user"` for `cpu.user`).
    Literal(&'static str),
    /// A sibling key: the key cut after its n-th (1-based) numeric segment,
    /// plus this suffix (`block.3` + `name`).
    Sibling(usize, &'static str),
}

#[derive(Debug, Clone, Copy)]
pub struct LabelSpec {
    pub name: &'static str,
    pub source: LabelSource,
}

/// One row of a kind's table: a key pattern (all-digit segments written
/// `*`), its unit, and the metric it becomes, if any.
#[derive(Debug, Clone, Copy)]
pub struct StatSpec {
    pub pattern: &'static str,
    /// The libvirt stats group (or the collector) the key comes from.
    pub group: &'static str,
    pub unit: Unit,
    pub labels: &'static [LabelSpec],
    /// `None` for keys that only feed labels, or that repeat what the series
    /// already tell (`*.count`).
    pub export: Option<Export>,
    /// The switch the metric sits behind; `None`: the default profile.
    pub switch: Option<&'static Switch>,
}

impl StatSpec {
    /// The same row behind a switch.
    pub const fn behind(self, switch: &'static Switch) -> Self {
        StatSpec { switch: Some(switch), ..self }
    }
}

/// How keys with open-ended names are mapped (QEMU's own statistics,
/// latency histogram bins), for the docs and for what the selection asks
/// of libvirt.
#[derive(Debug, Clone, Copy)]
pub struct RuleDoc {
    pub key: &'static str,
    pub metric: &'static str,
    pub notes: &'static str,
    pub switch: Option<&'static Switch>,
    /// The stats group such keys come from, and the prefix of every metric
    /// the rule makes.
    pub group: &'static str,
    pub metric_prefix: &'static str,
}

/// Repeated objects where all but the first of one name are layers below
/// it (a disk's backing chain: `block.<n>.name` repeats). Their series sit
/// behind `switch`.
#[derive(Debug, Clone, Copy)]
pub struct Layers {
    /// `block` for `block.<n>.*`.
    pub scope: &'static str,
    /// `name` for `block.<n>.name`.
    pub name_key: &'static str,
    pub switch: &'static Switch,
}

/// Where an info metric's label value comes from.
#[derive(Debug, Clone, Copy)]
pub enum InfoValue {
    /// A field as text (numbers in decimal, booleans `true`/`false`);
    /// empty when absent. Inside a repeated info, relative to its index.
    Field(&'static str),
    /// A coded field by name (`names[code]`, `unknown` past the end).
    Code(&'static str, &'static [&'static str]),
    /// libvirt's packed version number as `major.minor.release`.
    Version(&'static str),
    /// From the domain's XML (`DomainRef::info`).
    Domain(DomainAttr),
}

/// A fact from a domain's XML.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainAttr {
    VirtType,
    OsType,
    Arch,
    Machine,
    Vcpus,
    MaxMemoryBytes,
    Persistent,
    Autostart,
    InstanceName,
    Flavor,
    ProjectName,
    ProjectUuid,
    UserName,
    UserUuid,
}

/// When an info metric is emitted.
#[derive(Debug, Clone, Copy)]
pub enum InfoWhen {
    Always,
    /// One of these fields is present.
    AnyField(&'static [&'static str]),
    /// The domain has OpenStack Nova metadata.
    OpenStack,
}

/// A descriptive metric: labels on a constant 1, shared by the Prometheus
/// and OTLP sinks. The subject's identity labels come first.
#[derive(Debug, Clone, Copy)]
pub struct InfoSpec {
    pub name: &'static str,
    pub help: &'static str,
    pub labels: &'static [(&'static str, InfoValue)],
    pub when: InfoWhen,
    /// Emitted once per index below this count field (`addr.count`), with
    /// `Field` keys read under `<scope>.<index>.` (`addr.3.address`).
    pub repeat: Option<(&'static str, &'static str)>,
    pub switch: Option<&'static Switch>,
    /// A note for the docs (when it appears, what bounds it).
    pub note: &'static str,
}

impl InfoSpec {
    pub const EMPTY: InfoSpec =
        InfoSpec { name: "", help: "", labels: &[], when: InfoWhen::Always, repeat: None, switch: None, note: "" };
}

/// How OTLP finds the start time of a kind's counters: per subject (and
/// these fields), reset when `marker` goes backwards (a restarted domain),
/// and moved back by `backdate_ms` milliseconds (a job's elapsed time).
#[derive(Debug, Clone, Copy)]
pub struct CounterStart {
    pub scope_keys: &'static [&'static str],
    pub marker: Option<&'static str>,
    pub backdate_ms: Option<&'static str>,
}

/// A kind of record, as its collector declares it.
pub struct KindSpec {
    /// The record's `kind` (JSON, Kafka headers and topic names).
    pub name: &'static str,
    /// Its section title in docs/metrics.md.
    pub title: &'static str,
    pub subject: Subject,
    /// Every metric name of this kind starts with it (tests hold the table to it).
    pub prefix: &'static str,
    /// Identity labels beyond the subject's.
    pub identity: &'static [IdentityLabel],
    pub table: &'static [StatSpec],
    /// Maps keys the table has no row for (open-ended names).
    pub rule: Option<fn(&str) -> Option<RuleMatch>>,
    /// Keys that only describe what a rule maps (bin bounds): their unit.
    pub rule_aux: Option<fn(&str) -> Option<Unit>>,
    pub rules: &'static [RuleDoc],
    pub layers: Option<Layers>,
    pub info: &'static [InfoSpec],
    /// OTLP attribute prefix for labels beyond the identity: `libvirt.job`.
    pub otlp_namespace: &'static str,
    pub counter_start: CounterStart,
    /// A paragraph for the docs after the table.
    pub notes: &'static str,
    /// Events are counted by the sinks, not mapped key by key.
    pub is_event: bool,
}

impl KindSpec {
    /// The base for a kind's declaration (`..KindSpec::EMPTY`).
    pub const EMPTY: KindSpec = KindSpec {
        name: "",
        title: "",
        subject: Subject::Host,
        prefix: "libvirt_",
        identity: &[],
        table: &[],
        rule: None,
        rule_aux: None,
        rules: &[],
        layers: None,
        info: &[],
        otlp_namespace: "libvirt",
        counter_start: CounterStart { scope_keys: &[], marker: None, backdate_ms: None },
        notes: "",
        is_event: false,
    };

    /// Every switch this kind's metrics sit behind, in table order.
    pub fn switches(&self) -> Vec<&'static Switch> {
        let mut out: Vec<&'static Switch> = Vec::new();
        let all = self
            .table
            .iter()
            .filter_map(|r| r.switch)
            .chain(self.rules.iter().filter_map(|r| r.switch))
            .chain(self.layers.map(|l| l.switch))
            .chain(self.info.iter().filter_map(|i| i.switch));
        for s in all {
            if !out.iter().any(|o| o.is(s)) {
                out.push(s);
            }
        }
        out
    }
}

impl std::fmt::Debug for KindSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

// Helpers for writing tables.

/// Multipliers from libvirt's units to base units.
pub const NS: f64 = 1e-9;
pub const US: f64 = 1e-6;
pub const MS: f64 = 1e-3;
pub const KIB: f64 = 1024.0;
pub const MIB: f64 = 1024.0 * 1024.0;
pub const PERCENT: f64 = 0.01;

pub const fn label(name: &'static str, source: LabelSource) -> LabelSpec {
    LabelSpec { name, source }
}

pub const NO_LABELS: &[LabelSpec] = &[];

pub const fn counter(name: &'static str, scale: f64, help: &'static str) -> Option<Export> {
    Some(Export { name, mtype: MetricType::Counter, scale, help })
}

pub const fn gauge(name: &'static str, scale: f64, help: &'static str) -> Option<Export> {
    Some(Export { name, mtype: MetricType::Gauge, scale, help })
}

pub const fn row(
    pattern: &'static str,
    group: &'static str,
    unit: Unit,
    labels: &'static [LabelSpec],
    export: Option<Export>,
) -> StatSpec {
    StatSpec { pattern, group, unit, labels, export, switch: None }
}

/// Every kind of record the agent can make (the registry lists them).
#[derive(Debug, Clone, Copy)]
pub struct Catalog {
    pub kinds: &'static [&'static KindSpec],
}

impl Catalog {
    /// Every switch, in the order of the kinds and their tables.
    pub fn switches(&self) -> Vec<&'static Switch> {
        let mut out: Vec<&'static Switch> = Vec::new();
        for s in self.kinds.iter().flat_map(|k| k.switches()) {
            if !out.iter().any(|o| o.is(s)) {
                out.push(s);
            }
        }
        out
    }

    pub fn switch(&self, key: &str) -> Option<&'static Switch> {
        self.switches().into_iter().find(|s| s.key == key)
    }

    /// The labels that tell subjects apart (`domain`, `pool`, ...).
    pub fn subject_labels(&self) -> Vec<&'static str> {
        let mut out: Vec<&'static str> = Vec::new();
        for l in self.kinds.iter().filter_map(|k| k.subject.name_label()) {
            if !out.contains(&l) {
                out.push(l);
            }
        }
        out
    }

    pub fn kind(&self, name: &str) -> Option<&'static KindSpec> {
        self.kinds.iter().copied().find(|k| k.name == name)
    }
}
