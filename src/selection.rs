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

use crate::record::RecordKind;
use crate::stat_keys::{detail_of, mapping, table, Detail, SampleFilter, DOMAIN_TABLE};

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// What the dashboards, the alert rules and a capacity planner need.
    Default,
    /// Every group and every detail the daemon offers.
    Everything,
}

/// One switch of deep data: its configuration key, what it covers, and the
/// series it adds (for config.example.toml and docs/metrics.md).
#[derive(Debug, Clone, Copy)]
pub struct Switch {
    pub detail: Detail,
    pub key: &'static str,
    pub covers: &'static str,
    pub adds: &'static str,
}

/// Every switch. `Detail::Core` has none: it is always exported.
pub const SWITCHES: &[Switch] = &[
    Switch {
        detail: Detail::VcpuKvm,
        key: "vcpu_kvm",
        covers: "per-vCPU hypervisor statistics from QEMU's query-stats (`vcpu.<n>.<stat>.sum|cur|max`: exits, halt polling, page faults, TLB flushes...)",
        adds: "about 45 series per vCPU (KVM, QEMU 7.1+, libvirt 8.9+)",
    },
    Switch {
        detail: Detail::VcpuState,
        key: "vcpu_state",
        covers: "per-vCPU state and halted flags (`vcpu.<n>.state`, `vcpu.<n>.halted`)",
        adds: "1-2 series per vCPU",
    },
    Switch {
        detail: Detail::VmKvm,
        key: "vm_kvm",
        covers: "per-domain hypervisor statistics (`vm` group: MMU, TLB, page counts)",
        adds: "about 16 series per domain (KVM, libvirt 8.9+); the `vm` group is not asked for without it",
    },
    Switch {
        detail: Detail::BackingChain,
        key: "backing_chain",
        covers: "every layer of each disk's backing chain (below the top image)",
        adds: "3 series (allocation, capacity, physical) per backing layer; the chain is not asked for without it",
    },
    Switch {
        detail: Detail::Haltpoll,
        key: "haltpoll",
        covers: "guest halt-polling time (`cpu.haltpoll.*`)",
        adds: "2 series per domain",
    },
    Switch {
        detail: Detail::Perf,
        key: "perf",
        covers: "perf event counters enabled on the domain (`perf` group)",
        adds: "one series per enabled perf event per domain; the `perf` group is not asked for without it",
    },
    Switch {
        detail: Detail::BlockLimits,
        key: "block_limits",
        covers: "block device I/O limits (`block.<n>.limits.*`)",
        adds: "up to 12 series per disk (libvirt 11.4+)",
    },
    Switch {
        detail: Detail::BlockLatency,
        key: "block_latency",
        covers: "block latency windows and histograms (`block.<n>.timed_group.*`, `block.<n>.latency_histogram.*`)",
        adds: "15 series per disk and window, one per histogram bin (libvirt 12+, when configured on the disk)",
    },
    Switch {
        detail: Detail::Resctrl,
        key: "resctrl",
        covers: "cache occupancy and memory bandwidth monitors (`cpu.cache.monitor.*`, `memory` group)",
        adds: "per monitor and cache bank / NUMA node (hosts with Intel RDT and monitors defined); the `memory` group is not asked for without it",
    },
    Switch {
        detail: Detail::Iothread,
        key: "iothread",
        covers: "IOThread polling parameters (`iothread` group)",
        adds: "4 series per IOThread; the `iothread` group is not asked for without it",
    },
    Switch {
        detail: Detail::Dirtyrate,
        key: "dirtyrate",
        covers: "memory dirty rate calculations (`dirtyrate` group)",
        adds: "4 series per domain, plus one per vCPU in dirty-ring mode; the `dirtyrate` group is not asked for without it",
    },
    Switch {
        detail: Detail::NodePerCpu,
        key: "node_per_cpu",
        covers: "each host CPU's time by mode (`libvirt_node_logical_cpu_time_seconds_total`)",
        adds: "5 series per host CPU; also one libvirt call per host CPU per node collection",
    },
];

/// Which switches the profile turns on.
fn profile_detail(profile: Profile, detail: Detail) -> bool {
    detail == Detail::Core || profile == Profile::Everything
}

/// What the operator asked for, validated.
#[derive(Debug, Clone)]
pub struct SelectionSpec {
    pub profile: Profile,
    /// Switch overrides (`Some`) over the profile's choice.
    pub switches: Vec<(Detail, bool)>,
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

/// Names never dropped: without them the series of different domains,
/// pools or histogram buckets would collapse into one.
const KEPT_LABELS: &[&str] = &["domain", "pool", "le"];

/// Distinct metric names whose decision is cached at most (names come from
/// the tables and the libvirt keys, a few hundred on any host).
const MAX_CACHED: usize = 20_000;

pub struct Selection {
    enabled: u32,
    include: Vec<Glob>,
    exclude: Vec<Glob>,
    drop_labels: Vec<Glob>,
    decisions: RwLock<FxHashMap<Box<str>, bool>>,
}

impl std::fmt::Debug for Selection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Selection")
            .field("details", &self.enabled_details())
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
    /// Errors name the list (`include`, `exclude`, `drop_labels`) and the problem.
    pub fn new(spec: &SelectionSpec) -> Result<Self, (&'static str, String)> {
        let mut enabled = 0u32;
        for d in Detail::ALL {
            let on = spec.switches.iter().rev().find(|(x, _)| *x == d).map(|(_, on)| *on);
            if on.unwrap_or_else(|| profile_detail(spec.profile, d)) {
                enabled |= d.bit();
            }
        }
        let drop_labels = globs(&spec.drop_labels).map_err(|e| ("drop_labels", e))?;
        for kept in KEPT_LABELS {
            if let Some(g) = drop_labels.iter().find(|g| g.matches(kept)) {
                return Err((
                    "drop_labels",
                    format!(
                        "{:?} would drop the `{kept}` label, which tells series of different objects apart; drop other labels",
                        g.as_str()
                    ),
                ));
            }
        }
        Ok(Self {
            enabled,
            include: globs(&spec.include).map_err(|e| ("include", e))?,
            exclude: globs(&spec.exclude).map_err(|e| ("exclude", e))?,
            drop_labels,
            decisions: RwLock::default(),
        })
    }

    /// Every metric, every label: what tests and benchmarks compare against.
    pub fn everything() -> Self {
        Self::new(&SelectionSpec { profile: Profile::Everything, ..Default::default() })
            .unwrap_or_else(|_| unreachable!("the everything profile has no patterns"))
    }

    pub fn enabled(&self, detail: Detail) -> bool {
        self.enabled & detail.bit() != 0
    }

    pub fn enabled_details(&self) -> Vec<&'static str> {
        SWITCHES.iter().filter(|s| self.enabled(s.detail)).map(|s| s.key).collect()
    }

    fn name_passes(&self, name: &str) -> bool {
        (self.include.is_empty() || self.include.iter().any(|g| g.matches(name)))
            && !self.exclude.iter().any(|g| g.matches(name))
    }

    /// Whether a metric of this name (its detail switched on) is exported.
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

    /// Whether a sample of this detail and name is exported.
    pub fn selects(&self, detail: Detail, name: &str) -> bool {
        self.enabled(detail) && self.selects_name(name)
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

    /// The domain stats groups (libvirt bit mask) some exported metric comes
    /// from. `group_bit` maps a group name to its bit.
    pub fn needed_groups(&self, group_bit: impl Fn(&str) -> Option<u32>) -> u32 {
        let mut mask = group_bit("state").unwrap_or(0);
        for row in DOMAIN_TABLE {
            let Some(e) = row.export else { continue };
            if self.selects(detail_of(RecordKind::DomainStats, row.pattern), e.name) {
                mask |= group_bit(row.group).unwrap_or(0);
            }
        }
        // Stats mapped by rule have open-ended names: judged by prefix.
        if self.enabled(Detail::VmKvm) && self.prefix_may_pass("libvirt_domain_vm_") {
            mask |= group_bit("vm").unwrap_or(0);
        }
        if self.enabled(Detail::VcpuKvm) && self.prefix_may_pass("libvirt_domain_vcpu_kvm_") {
            mask |= group_bit("vcpu").unwrap_or(0);
        }
        if self.enabled(Detail::BlockLatency) && self.prefix_may_pass("libvirt_domain_block_latency_") {
            mask |= group_bit("block").unwrap_or(0);
        }
        mask
    }

    /// Whether a field of a record kind is worth decoding for the metric
    /// sinks: false only for keys that map to a metric this selection does
    /// not export. Keys that feed labels, and keys nobody maps (kept so they
    /// are counted and reported), stay.
    pub fn wants_key(&self, kind: RecordKind, key: &str) -> bool {
        let m = mapping(kind, key);
        match &m.export {
            Some(e) => self.selects(m.detail, &e.name),
            None => true,
        }
    }

    /// Whether any metric of a record kind's table is exported (the node,
    /// pools and jobs collectors are needed by the metric sinks at all).
    pub fn exports_any(&self, kind: RecordKind) -> bool {
        table(kind).iter().any(|r| r.export.is_some_and(|e| self.selects(detail_of(kind, r.pattern), e.name)))
    }
}

impl SampleFilter for Selection {
    fn selects(&self, detail: Detail, name: &str) -> bool {
        Selection::selects(self, detail, name)
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

    fn sel(spec: SelectionSpec) -> Selection {
        Selection::new(&spec).unwrap()
    }

    fn bit(name: &str) -> Option<u32> {
        crate::libvirt::stats::group_by_name(name).map(|g| g.bit)
    }

    #[test]
    fn default_profile_asks_only_for_the_groups_it_exports() {
        let d = sel(SelectionSpec::default());
        let names: Vec<_> = crate::libvirt::stats::group_names(d.needed_groups(bit));
        assert_eq!(names, vec!["state", "cpu-total", "balloon", "vcpu", "interface", "block"]);
        assert!(!d.enabled(Detail::BackingChain));
        let all = Selection::everything();
        assert_eq!(all.needed_groups(bit), crate::libvirt::stats::ALL_GROUPS.iter().fold(0, |m, g| m | g.bit));
        // A switch brings its group; excluding all of a group's metrics drops it.
        let perf = sel(SelectionSpec { switches: vec![(Detail::Perf, true)], ..Default::default() });
        assert!(crate::libvirt::stats::group_names(perf.needed_groups(bit)).contains(&"perf"));
        let no_net = sel(SelectionSpec { exclude: vec!["libvirt_domain_interface_*".into()], ..Default::default() });
        assert!(!crate::libvirt::stats::group_names(no_net.needed_groups(bit)).contains(&"interface"));
        let only_cpu = sel(SelectionSpec { include: vec!["libvirt_domain_cpu_*".into()], ..Default::default() });
        assert_eq!(crate::libvirt::stats::group_names(only_cpu.needed_groups(bit)), vec!["state", "cpu-total"]);
        let vm_off = sel(SelectionSpec {
            profile: Profile::Everything,
            exclude: vec!["libvirt_domain_vm_*".into()],
            ..Default::default()
        });
        assert!(!crate::libvirt::stats::group_names(vm_off.needed_groups(bit)).contains(&"vm"));
    }

    #[test]
    fn keys_of_unselected_metrics_are_not_wanted() {
        let d = sel(SelectionSpec::default());
        assert!(d.wants_key(RecordKind::DomainStats, "vcpu.0.time"));
        assert!(!d.wants_key(RecordKind::DomainStats, "vcpu.0.exits.sum"));
        assert!(!d.wants_key(RecordKind::DomainStats, "cpu.haltpoll.success.time"));
        assert!(d.wants_key(RecordKind::DomainStats, "block.0.name"), "labels come from it");
        assert!(d.wants_key(RecordKind::DomainStats, "future.key"), "unmapped keys are kept and reported");
        let x =
            sel(SelectionSpec { exclude: vec!["libvirt_domain_vcpu_time_seconds_total".into()], ..Default::default() });
        assert!(!x.wants_key(RecordKind::DomainStats, "vcpu.3.time"));
        assert!(x.wants_key(RecordKind::DomainStats, "vcpu.3.delay"));
    }

    #[test]
    fn switches_override_the_profile_and_labels_can_be_dropped() {
        let s = sel(SelectionSpec {
            profile: Profile::Everything,
            switches: vec![(Detail::VcpuKvm, false)],
            drop_labels: vec!["path".into(), "backing_*".into()],
            ..Default::default()
        });
        assert!(!s.enabled(Detail::VcpuKvm));
        assert!(s.enabled(Detail::VmKvm));
        assert!(!s.keeps_label("path"));
        assert!(!s.keeps_label("backing_index"));
        assert!(s.keeps_label("device"));
        let e = Selection::new(&SelectionSpec { drop_labels: vec!["*".into()], ..Default::default() }).unwrap_err();
        assert_eq!(e.0, "drop_labels");
        assert!(e.1.contains("domain"), "{}", e.1);
    }
}
