//! Event counters for Prometheus.
//!
//! Cardinality, on purpose:
//! - `libvirt_events_total{family, event, type, detail}` is per host: the
//!   label values come from fixed enums, so the series are bounded.
//! - `libvirt_domain_events_total{domain, uuid, event, type, detail}` and
//!   `libvirt_domain_last_event_timestamp_seconds{domain, uuid, event}` are
//!   per domain, and kept only for domains that still exist: a domain that
//!   leaves the domain stats snapshot loses its series after a grace period
//!   (long enough for a scrape to see its last events). A host's series
//!   therefore track its live domains, not every domain it ever ran.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use crate::exposition::text::escape_label_value;
use crate::exposition::{Families, FamilyWriter, RenderStats};
use crate::record::samples::SampleFilter;
use crate::record::Record;
use crate::value::MetricType;

/// How long a vanished domain's event series stay.
pub(crate) const GRACE: Duration = Duration::from_secs(120);

type Key = (String, String, String);

struct DomainEvents {
    name: Arc<str>,
    counts: BTreeMap<Key, u64>,
    last: BTreeMap<&'static str, f64>,
    seen: Instant,
}

#[derive(Default)]
pub(crate) struct EventCounters {
    host: BTreeMap<(&'static str, Key), u64>,
    domains: HashMap<Arc<str>, DomainEvents>,
    /// The domains of the last domain stats snapshot (None before the
    /// first): while no snapshot comes (libvirtd down, reconnecting), the
    /// grace still runs out at render time.
    present: Option<HashSet<Arc<str>>>,
}

/// The operational "last time this happened" an event counts for.
fn last_of(name: &str, kind: &str, detail: &str) -> Option<&'static str> {
    match (name, kind, detail) {
        ("io_error" | "io_error_reason", _, _) => Some("io_error"),
        ("watchdog", _, _) => Some("watchdog"),
        ("lifecycle", "crashed", _) | ("lifecycle", "stopped", "crashed") => Some("crash"),
        ("block_threshold", _, _) => Some("block_threshold"),
        ("memory_failure", _, _) => Some("memory_failure"),
        ("control_error", _, _) => Some("control_error"),
        ("device_removal_failed", _, _) => Some("device_removal_failed"),
        _ => None,
    }
}

impl EventCounters {
    /// Counts event records (resync records describe state, not events).
    pub(crate) fn count(&mut self, records: &[Record]) {
        for r in records.iter().filter(|r| r.kind.is_event) {
            let Some(e) = &r.event else { continue };
            if e.name == "resync" {
                continue;
            }
            let key: Key = (e.name.to_string(), e.kind.clone(), e.detail.clone());
            *self.host.entry((e.family, key.clone())).or_default() += 1;
            let Some(d) = &r.domain else { continue };
            let entry = self.domains.entry(d.uuid.clone()).or_insert_with(|| DomainEvents {
                name: d.name.clone(),
                counts: BTreeMap::new(),
                last: BTreeMap::new(),
                seen: Instant::now(),
            });
            entry.name = d.name.clone();
            entry.seen = Instant::now();
            *entry.counts.entry(key).or_default() += 1;
            if let Some(l) = last_of(e.name, &e.kind, &e.detail) {
                let t = r.time.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
                entry.last.insert(l, t);
            }
        }
    }

    /// Drops per-domain series of domains no longer present, once their
    /// last event is older than `GRACE`.
    pub(crate) fn forget_absent(&mut self, present: &HashSet<&str>) {
        self.domains.retain(|uuid, d| present.contains(&**uuid) || d.seen.elapsed() < GRACE);
        self.present = Some(present.iter().map(|u| Arc::from(*u)).collect());
    }

    /// Whether a domain's series are past their grace: absent from the last
    /// snapshot and no event for `GRACE`. Such a domain is forgotten at the
    /// next snapshot, and not rendered until then.
    fn expired(&self, uuid: &str, d: &DomainEvents) -> bool {
        self.present.as_ref().is_some_and(|p| !p.contains(uuid)) && d.seen.elapsed() >= GRACE
    }

    pub(crate) fn render(&self, fams: &mut Families, filter: &dyn SampleFilter) {
        let mut stats = RenderStats::default();
        let mut w = FamilyWriter::new(fams, &mut stats);
        for ((family, (name, kind, detail)), n) in &self.host {
            w.add(
                "libvirt_events_total",
                MetricType::Counter,
                "libvirt events received by the agent on this host, by family, event, type and detail.",
                &[("family", family), ("event", name), ("type", kind), ("detail", detail)],
                *n as f64,
            );
        }
        for (uuid, d) in &self.domains {
            if self.expired(uuid, d) {
                continue;
            }
            let mut prefix = String::from("domain=\"");
            escape_label_value(&mut prefix, &d.name);
            prefix.push('"');
            if !filter.drops_labels() || filter.keeps_label("uuid") {
                prefix.push_str(",uuid=\"");
                escape_label_value(&mut prefix, uuid);
                prefix.push('"');
            }
            for ((name, kind, detail), n) in &d.counts {
                w.add_with_prefix(
                    "libvirt_domain_events_total",
                    MetricType::Counter,
                    "libvirt events of the domain by event, type and detail (kept while the domain exists).",
                    &prefix,
                    &[("event", name), ("type", kind), ("detail", detail)],
                    *n as f64,
                );
            }
            for (event, t) in &d.last {
                w.add_with_prefix(
                    "libvirt_domain_last_event_timestamp_seconds",
                    MetricType::Gauge,
                    "When the domain last had an I/O error, watchdog, crash, block threshold, memory failure, control error or failed device removal (Unix time).",
                    &prefix,
                    &[("event", event)],
                    *t,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::record::samples::AllSamples;
    use crate::record::{DomainRef, EventInfo, Identity, RecordKind, EVENT};

    fn stopped(name: &str, uuid: &str) -> Record {
        let identity = Identity { host: "h".into(), uri: "u".into() };
        Record {
            domain: Some(DomainRef { name: name.into(), uuid: uuid.into(), info: None }),
            event: Some(EventInfo {
                family: "domain",
                name: "lifecycle",
                kind: "stopped".into(),
                detail: "destroyed".into(),
                seq: 1,
                id: "run-1".into(),
                object: None,
            }),
            ..Record::new(&identity, RecordKind::of(&EVENT), SystemTime::now())
        }
    }

    fn rendered(c: &EventCounters) -> String {
        let mut fams = Families::new();
        c.render(&mut fams, &AllSamples);
        let mut out = String::new();
        crate::exposition::write_families(&fams, &mut out);
        out
    }

    /// The soak (bench/soak.sh) saw a destroyed domain's event series stay
    /// up to 30 s past the 2 minutes while libvirtd restarted: forgetting
    /// ran only when a domain stats snapshot came.
    #[test]
    fn a_gone_domain_leaves_after_the_grace_even_without_a_new_snapshot() {
        let mut c = EventCounters::default();
        c.count(&[stopped("gone", "u-gone"), stopped("alive", "u-alive")]);
        c.forget_absent(&HashSet::from(["u-alive"]));
        assert!(rendered(&c).contains("u-gone"), "within the grace the last events stay on view");
        for d in c.domains.values_mut() {
            d.seen = Instant::now() - GRACE - Duration::from_secs(1);
        }
        // No snapshot since (libvirtd down): the gone domain is no longer shown.
        let text = rendered(&c);
        assert!(!text.contains("u-gone"), "{text}");
        assert!(text.contains("u-alive"), "{text}");
        // The next snapshot forgets it for good.
        c.forget_absent(&HashSet::from(["u-alive"]));
        assert_eq!(c.domains.len(), 1);
    }

    #[test]
    fn before_any_snapshot_nothing_is_hidden() {
        let mut c = EventCounters::default();
        c.count(&[stopped("vm", "u-vm")]);
        for d in c.domains.values_mut() {
            d.seen = Instant::now() - GRACE - Duration::from_secs(1);
        }
        assert!(rendered(&c).contains("u-vm"));
    }
}
