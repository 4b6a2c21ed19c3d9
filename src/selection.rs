//! What the metric sinks (Prometheus and OTLP alike) export: a profile,
//! switches for deep data, `include`/`exclude` globs over metric names and
//! labels to drop, in the conventions of node_exporter's collector
//! switches, Telegraf's namepass/fieldexclude and the OpenTelemetry
//! Collector's filter processor.
//!
//! Records (Kafka, stdout) are not filtered: they carry every field
//! collected. What no metric sink exports and no record consumer needs is
//! not asked of libvirt at all (see `needed_groups`) and not decoded (see
//! `wants_key`).

use std::sync::RwLock;

use rustc_hash::FxHashMap;

use crate::record::kind::{Catalog, KindSpec, Switch};
use crate::record::mapping::mapping;
use crate::record::samples::SampleFilter;

/// A glob over metric (or label) names: `*` matches any run of characters,
/// `?` one character, everything else itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob(Vec<u8>);

impl Glob {
    pub fn new(pattern: &str) -> Result<Self, String> {
        if pattern.is_empty() {
            return Err("an empty pattern matches nothing; remove it".into());
        }
        if let Some(c) = pattern.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '*' | '?'))) {
            return Err(format!(
                "pattern {pattern:?} has {c:?}: metric and label names are made of letters, digits, '_' and ':' (globs add '*' and '?')"
            ));
        }
        Ok(Self(pattern.as_bytes().to_vec()))
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("")
    }

    /// Whether the whole of `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        let (p, s) = (&self.0, name.as_bytes());
        let (mut pi, mut si) = (0, 0);
        // Where the last `*` was and how much of `s` it took so far.
        let mut star: Option<(usize, usize)> = None;
        while si < s.len() {
            if pi < p.len() && (p[pi] == b'?' || p[pi] == s[si]) {
                pi += 1;
                si += 1;
            } else if pi < p.len() && p[pi] == b'*' {
                star = Some((pi, si));
                pi += 1;
            } else if let Some((sp, ss)) = star {
                pi = sp + 1;
                si = ss + 1;
                star = Some((sp, ss + 1));
            } else {
                return false;
            }
        }
        p[pi..].iter().all(|&c| c == b'*')
    }

    /// Whether some name that starts with `prefix` matches.
    pub fn could_match_with_prefix(&self, prefix: &str) -> bool {
        let p = &self.0;
        // The pattern positions reachable after the characters read so far.
        let closure = |states: &mut Vec<bool>| {
            for i in 0..p.len() {
                if states[i] && p[i] == b'*' {
                    states[i + 1] = true;
                }
            }
        };
        let mut states = vec![false; p.len() + 1];
        states[0] = true;
        closure(&mut states);
        for &c in prefix.as_bytes() {
            let mut next = vec![false; p.len() + 1];
            for i in 0..p.len() {
                if !states[i] {
                    continue;
                }
                match p[i] {
                    b'*' => next[i] = true,
                    b'?' => next[i + 1] = true,
                    x if x == c => next[i + 1] = true,
                    _ => {}
                }
            }
            closure(&mut next);
            states = next;
            if !states.iter().any(|&s| s) {
                return false;
            }
        }
        states.iter().any(|&s| s)
    }

    /// Whether every name that starts with `prefix` matches (judged only
    /// for patterns of the form `literal*`; others answer false).
    pub fn matches_every_name_with_prefix(&self, prefix: &str) -> bool {
        match self.0.split_last() {
            Some((b'*', lit)) if !lit.contains(&b'*') && !lit.contains(&b'?') => prefix.as_bytes().starts_with(lit),
            _ => false,
        }
    }
}

/// The starting point of the selection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// What the dashboards, the alert rules and a capacity planner need:
    /// every switch off.
    Default,
    /// Every group and every detail the daemon offers: every switch on.
    Everything,
}

/// What the operator asked for, validated.
#[derive(Debug, Clone)]
pub struct SelectionSpec {
    pub profile: Profile,
    /// Switch overrides (by key) over the profile's choice.
    pub switches: Vec<(String, bool)>,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub drop_labels: Vec<String>,
}

impl Default for SelectionSpec {
    fn default() -> Self {
        Self {
            profile: Profile::Default,
            switches: Vec::new(),
            include: Vec::new(),
            exclude: Vec::new(),
            drop_labels: Vec::new(),
        }
    }
}

/// Besides the subjects' own labels (`domain`, `pool`...), names never
/// dropped: without them histogram buckets would collapse into one.
const KEPT_LABELS: &[&str] = &["le"];

/// Distinct metric names whose decision is cached at most (names come from
/// the tables and the libvirt keys, a few hundred on any host).
const MAX_CACHED: usize = 20_000;

pub struct Selection {
    /// Every switch of the catalog, and whether it is on.
    switches: Vec<(&'static Switch, bool)>,
    include: Vec<Glob>,
    exclude: Vec<Glob>,
    drop_labels: Vec<Glob>,
    decisions: RwLock<FxHashMap<Box<str>, bool>>,
}

impl std::fmt::Debug for Selection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Selection")
            .field("switches", &self.enabled_switches())
            .field("include", &self.include)
            .field("exclude", &self.exclude)
            .field("drop_labels", &self.drop_labels)
            .finish()
    }
}

fn globs(list: &[String]) -> Result<Vec<Glob>, String> {
    list.iter().map(|p| Glob::new(p)).collect()
}

impl Selection {
    /// Errors name the key (`include`, `exclude`, `drop_labels`, or the
    /// switch) and the problem.
    pub fn new(spec: &SelectionSpec, catalog: &Catalog) -> Result<Self, (String, String)> {
        let all = catalog.switches();
        for (key, _) in &spec.switches {
            if !all.iter().any(|s| s.key == key) {
                let known: Vec<&str> = all.iter().map(|s| s.key).collect();
                return Err((key.clone(), format!("unknown switch; the switches are {}", known.join(", "))));
            }
        }
        let switches = all
            .into_iter()
            .map(|s| {
                let set = spec.switches.iter().rev().find(|(k, _)| k == s.key).map(|(_, on)| *on);
                (s, set.unwrap_or(spec.profile == Profile::Everything))
            })
            .collect();
        let drop_labels = globs(&spec.drop_labels).map_err(|e| ("drop_labels".to_string(), e))?;
        for kept in catalog.subject_labels().into_iter().chain(KEPT_LABELS.iter().copied()) {
            if let Some(g) = drop_labels.iter().find(|g| g.matches(kept)) {
                return Err((
                    "drop_labels".into(),
                    format!(
                        "{:?} would drop the `{kept}` label, which tells series of different objects apart; drop other labels",
                        g.as_str()
                    ),
                ));
            }
        }
        Ok(Self {
            switches,
            include: globs(&spec.include).map_err(|e| ("include".to_string(), e))?,
            exclude: globs(&spec.exclude).map_err(|e| ("exclude".to_string(), e))?,
            drop_labels,
            decisions: RwLock::default(),
        })
    }

    /// Every metric, every label: what tests and benchmarks compare against.
    pub fn everything(catalog: &Catalog) -> Self {
        Self::new(&SelectionSpec { profile: Profile::Everything, ..Default::default() }, catalog)
            .unwrap_or_else(|_| unreachable!("the everything profile has no patterns"))
    }

    /// Whether metrics behind this switch (`None`: the default profile) are on.
    pub fn enabled(&self, switch: Option<&'static Switch>) -> bool {
        match switch {
            None => true,
            Some(s) => self.switches.iter().any(|(x, on)| *on && x.is(s)),
        }
    }

    pub fn enabled_switches(&self) -> Vec<&'static str> {
        self.switches.iter().filter(|(_, on)| *on).map(|(s, _)| s.key).collect()
    }

    fn name_passes(&self, name: &str) -> bool {
        (self.include.is_empty() || self.include.iter().any(|g| g.matches(name)))
            && !self.exclude.iter().any(|g| g.matches(name))
    }

    /// Whether a metric of this name (its switch on) is exported.
    pub fn selects_name(&self, name: &str) -> bool {
        if self.include.is_empty() && self.exclude.is_empty() {
            return true;
        }
        if let Ok(d) = self.decisions.read() {
            if let Some(v) = d.get(name) {
                return *v;
            }
        }
        let v = self.name_passes(name);
        if let Ok(mut d) = self.decisions.write() {
            if d.len() >= MAX_CACHED {
                d.clear();
            }
            d.insert(name.into(), v);
        }
        v
    }

    /// Whether a sample behind this switch and of this name is exported.
    pub fn selects(&self, switch: Option<&'static Switch>, name: &str) -> bool {
        self.enabled(switch) && self.selects_name(name)
    }

    /// Whether series keep this label.
    pub fn keeps_label(&self, label: &str) -> bool {
        self.drop_labels.is_empty() || !self.drop_labels.iter().any(|g| g.matches(label))
    }

    pub fn drops_labels(&self) -> bool {
        !self.drop_labels.is_empty()
    }

    /// Whether some name with this prefix may pass include/exclude.
    fn prefix_may_pass(&self, prefix: &str) -> bool {
        (self.include.is_empty() || self.include.iter().any(|g| g.could_match_with_prefix(prefix)))
            && !self.exclude.iter().any(|g| g.matches_every_name_with_prefix(prefix))
    }

    /// The groups of a kind's table (libvirt's stats groups for domain
    /// stats) that some exported metric comes from.
    pub fn needed_groups(&self, kind: &KindSpec) -> Vec<&'static str> {
        let mut groups: Vec<&'static str> = Vec::new();
        let mut add = |g: &'static str| {
            if !groups.contains(&g) {
                groups.push(g);
            }
        };
        for row in kind.table {
            let Some(e) = row.export else { continue };
            if self.selects(row.switch, e.name) {
                add(row.group);
            }
        }
        // Stats mapped by rule have open-ended names: judged by prefix.
        for rule in kind.rules {
            if self.enabled(rule.switch) && self.prefix_may_pass(rule.metric_prefix) {
                add(rule.group);
            }
        }
        groups
    }

    /// Whether a field of a record kind is worth decoding for the metric
    /// sinks: false only for keys that map to a metric this selection does
    /// not export. Keys that feed labels, and keys nobody maps (kept so they
    /// are counted and reported), stay.
    pub fn wants_key(&self, kind: &'static KindSpec, key: &str) -> bool {
        let m = mapping(kind, key);
        match &m.export {
            Some(e) => self.selects(m.switch, &e.name),
            None => true,
        }
    }

    /// Whether any metric of a record kind is exported.
    pub fn exports_any(&self, kind: &KindSpec) -> bool {
        kind.table.iter().any(|r| r.export.is_some_and(|e| self.selects(r.switch, e.name)))
            || kind.info.iter().any(|i| self.selects(i.switch, i.name))
    }
}

impl SampleFilter for Selection {
    fn selects(&self, switch: Option<&'static Switch>, name: &str) -> bool {
        Selection::selects(self, switch, name)
    }

    fn keeps_label(&self, label: &str) -> bool {
        Selection::keeps_label(self, label)
    }

    fn drops_labels(&self) -> bool {
        Selection::drops_labels(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::kind::{gauge, row, Subject, NO_LABELS};
    use crate::value::Unit;

    fn g(p: &str) -> Glob {
        Glob::new(p).unwrap()
    }

    #[test]
    fn globs_match_whole_names() {
        assert!(g("libvirt_domain_*").matches("libvirt_domain_state"));
        assert!(!g("libvirt_domain_*").matches("libvirt_node_cpus"));
        assert!(g("*_total").matches("a_total"));
        assert!(!g("*_total").matches("a_total_x"));
        assert!(g("a?c").matches("abc"));
        assert!(!g("a?c").matches("abbc"));
        assert!(g("*").matches(""));
        assert!(g("a*b*c").matches("aXbYc"));
        assert!(g("a*b*c").matches("abbbc"));
        assert!(!g("a*b*c").matches("acb"));
        assert!(g("exact").matches("exact"));
        assert!(!g("exact").matches("exactly"));
        assert!(Glob::new("").is_err());
        assert!(Glob::new("libvirt.domain").is_err());
    }

    #[test]
    fn prefix_judgements() {
        assert!(g("libvirt_domain_vm_*").could_match_with_prefix("libvirt_domain_vm_"));
        assert!(g("*_total").could_match_with_prefix("libvirt_domain_vm_"));
        assert!(g("libvirt_domain_vm_pages_*").could_match_with_prefix("libvirt_domain_vm_"));
        assert!(!g("libvirt_node_*").could_match_with_prefix("libvirt_domain_vm_"));
        assert!(!g("libvirt_domain_vcpu").could_match_with_prefix("libvirt_domain_vm_"));
        assert!(g("libvirt_domain_*").matches_every_name_with_prefix("libvirt_domain_vm_"));
        assert!(g("*").matches_every_name_with_prefix("x"));
        assert!(!g("libvirt_domain_vm_pages_*").matches_every_name_with_prefix("libvirt_domain_vm_"));
        assert!(!g("*_total").matches_every_name_with_prefix("libvirt_domain_vm_"));
    }

    static DEEP: Switch = Switch { key: "deep", covers: "deep data", adds: "a lot" };
    static TABLE: &[crate::record::kind::StatSpec] = &[
        row("a.x", "ga", Unit::Count, NO_LABELS, gauge("t_a_x", 1.0, "a")),
        row("b.*.y", "gb", Unit::Count, NO_LABELS, gauge("t_b_y", 1.0, "b")).behind(&DEEP),
    ];
    static KIND: KindSpec =
        KindSpec { name: "selection_test", subject: Subject::Domain, table: TABLE, ..KindSpec::EMPTY };
    const CATALOG: Catalog = Catalog { kinds: &[&KIND] };

    fn sel(spec: SelectionSpec) -> Selection {
        Selection::new(&spec, &CATALOG).unwrap()
    }

    #[test]
    fn switches_decide_groups_keys_and_names() {
        let d = sel(SelectionSpec::default());
        assert_eq!(d.needed_groups(&KIND), vec!["ga"]);
        assert!(d.wants_key(&KIND, "a.x"));
        assert!(!d.wants_key(&KIND, "b.3.y"));
        assert!(d.wants_key(&KIND, "future.key"), "unmapped keys are kept and reported");
        let all = Selection::everything(&CATALOG);
        assert_eq!(all.needed_groups(&KIND), vec!["ga", "gb"]);
        let on = sel(SelectionSpec { switches: vec![("deep".into(), true)], ..Default::default() });
        assert!(on.enabled(Some(&DEEP)) && on.wants_key(&KIND, "b.0.y"));
        let off = sel(SelectionSpec {
            profile: Profile::Everything,
            switches: vec![("deep".into(), false)],
            ..Default::default()
        });
        assert!(!off.enabled(Some(&DEEP)));
        let no_a = sel(SelectionSpec { exclude: vec!["t_a_*".into()], ..Default::default() });
        assert!(no_a.needed_groups(&KIND).is_empty());
        assert!(!no_a.exports_any(&KIND));
        let e =
            Selection::new(&SelectionSpec { switches: vec![("nope".into(), true)], ..Default::default() }, &CATALOG)
                .unwrap_err();
        assert_eq!(e.0, "nope");
        assert!(e.1.contains("deep"), "{}", e.1);
    }

    #[test]
    fn labels_can_be_dropped_but_not_the_subjects() {
        let s = sel(SelectionSpec { drop_labels: vec!["path".into(), "backing_*".into()], ..Default::default() });
        assert!(!s.keeps_label("path"));
        assert!(!s.keeps_label("backing_index"));
        assert!(s.keeps_label("device"));
        let e = Selection::new(&SelectionSpec { drop_labels: vec!["*".into()], ..Default::default() }, &CATALOG)
            .unwrap_err();
        assert_eq!(e.0, "drop_labels");
        assert!(e.1.contains("domain"), "{}", e.1);
    }
}
