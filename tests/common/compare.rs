//! Compares what the agent exports with what `virsh domstats` reports.

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use super::exposition::Scrape;
use super::guest::Guest;
use super::virsh;
use virtpulse::collectors::domain_stats::metrics::DOMAIN_STATS;
use virtpulse::record::mapping::unit_of;
use virtpulse::record::samples::{for_each_sample, AllSamples, SampleFilter, SampleStats};
use virtpulse::record::{DomainRef, Field, Identity, Record, RecordKind};
use virtpulse::value::MetricType;

pub type SeriesKey = (String, BTreeMap<String, String>);

/// What the agent must export for this virsh output, via the stat-key
/// table, when it exports everything.
pub fn expected(
    name: &str,
    uuid: &str,
    stats: &BTreeMap<String, String>,
) -> BTreeMap<SeriesKey, (MetricType, String, f64)> {
    expected_with(name, uuid, stats, &AllSamples)
}

/// What the agent must export for this virsh output under a selection.
pub fn expected_with(
    name: &str,
    uuid: &str,
    stats: &BTreeMap<String, String>,
    filter: &dyn SampleFilter,
) -> BTreeMap<SeriesKey, (MetricType, String, f64)> {
    let record = record_of(name, uuid, stats);
    let mut st = SampleStats::default();
    let mut out = BTreeMap::new();
    for_each_sample(&record, filter, &mut st, |s| {
        let mut labels: BTreeMap<String, String> =
            s.labels().into_iter().filter(|(_, v)| !v.is_empty()).map(|(k, v)| (k.to_string(), v)).collect();
        labels.insert("domain".into(), name.into());
        if !filter.drops_labels() || filter.keeps_label("uuid") {
            labels.insert("uuid".into(), uuid.into());
        }
        out.insert((s.name().to_string(), labels), (s.mtype(), s.help().to_string(), s.value));
    });
    assert!(st.unmapped.is_empty(), "virsh shows keys the table does not map: {:?}", st.unmapped);
    out
}

/// The keys of this virsh output that the catalog neither maps nor covers
/// by a rule (the agent keeps them in records and counts them in
/// `virtpulse_prometheus_unmapped_stat_keys`).
pub fn unmapped(stats: &BTreeMap<String, String>) -> Vec<String> {
    let mut st = SampleStats::default();
    for_each_sample(&record_of("d", "u", stats), &AllSamples, &mut st, |_| {});
    st.unmapped
}

fn record_of(name: &str, uuid: &str, stats: &BTreeMap<String, String>) -> Record {
    let identity = Identity { host: "h".into(), uri: "qemu:///system".into() };
    Record {
        domain: Some(DomainRef { name: name.into(), uuid: uuid.into(), info: None }),
        fields: stats
            .iter()
            .map(|(k, v)| {
                let value = virsh::typed(v);
                Field { key: k.as_str().into(), unit: unit_of(&DOMAIN_STATS, k, &value), value }
            })
            .collect(),
        ..Record::new(&identity, RecordKind::of(&DOMAIN_STATS), SystemTime::now())
    }
}

pub fn scraped(scrape: &Scrape, uuid: &str) -> BTreeMap<SeriesKey, f64> {
    scrape
        .stats_of_domain(uuid)
        .filter(|s| !s.name.ends_with("_info"))
        .map(|s| {
            let labels = s.labels.iter().filter(|(_, v)| !v.is_empty()).map(|(k, v)| (k.clone(), v.clone())).collect();
            ((s.name.clone(), labels), s.value)
        })
        .collect()
}

/// Gauges that legitimately move between two reads of an idle guest.
pub fn volatile(name: &str) -> bool {
    name == "libvirt_domain_vcpu_state"
        || name == "libvirt_domain_vcpu_halted"
        || name == "libvirt_domain_balloon_rss_bytes"
        || name.starts_with("libvirt_domain_vm_")
        || name.starts_with("libvirt_domain_vcpu_kvm_")
        // block.N.timed_group.*: over a window that slides with time.
        || (name.starts_with("libvirt_domain_block_") && (name.contains("_latency_") || name.contains("_queue_depth_")))
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

/// Compares one domain (everything exported); returns the mismatches.
pub fn compare(
    g: &Guest,
    before: &BTreeMap<String, String>,
    scrape: &Scrape,
    after: &BTreeMap<String, String>,
) -> Vec<String> {
    compare_with(g, before, scrape, after, &AllSamples)
}

/// Compares one domain under a selection; returns the mismatches.
pub fn compare_with(
    g: &Guest,
    before: &BTreeMap<String, String>,
    scrape: &Scrape,
    after: &BTreeMap<String, String>,
    filter: &dyn SampleFilter,
) -> Vec<String> {
    compare_named(&g.name, &g.uuid, before, scrape, after, filter)
}

/// As `compare_with`, for a domain known by name and UUID only (one on
/// another daemon than the test binary's).
pub fn compare_named(
    name: &str,
    uuid: &str,
    before: &BTreeMap<String, String>,
    scrape: &Scrape,
    after: &BTreeMap<String, String>,
    filter: &dyn SampleFilter,
) -> Vec<String> {
    let b = expected_with(name, uuid, before, filter);
    let a = expected_with(name, uuid, after, filter);
    let got = scraped(scrape, uuid);
    let mut problems = Vec::new();
    let want: BTreeSet<_> = b.keys().chain(a.keys()).collect();
    for k in got.keys().filter(|k| !want.contains(k)) {
        problems.push(format!("exported but not in virsh domstats: {k:?}"));
    }
    for k in &want {
        let Some(&v) = got.get(*k) else {
            problems.push(format!("in virsh domstats but not exported: {k:?}"));
            continue;
        };
        let (Some((mtype, _, vb)), Some((_, _, va))) = (b.get(*k), a.get(*k)) else {
            continue;
        };
        let (lo, hi) = (vb.min(*va), vb.max(*va));
        let ok = match mtype {
            MetricType::Counter => (vb <= &v || close(*vb, v)) && (v <= *va || close(v, *va)),
            MetricType::Gauge if volatile(&k.0) => v.is_finite() && v >= 0.0,
            MetricType::Gauge => (lo <= v || close(lo, v)) && (v <= hi || close(v, hi)),
            MetricType::Histogram => false,
        };
        if !ok {
            problems.push(format!("{k:?}: agent {v}, virsh before {vb}, after {va} ({mtype:?})"));
        }
    }
    problems
}

pub fn has_full_stats(scrape: &Scrape, uuid: &str) -> bool {
    scrape.value("libvirt_domain_block_read_bytes_total", &[("uuid", uuid)]).is_some()
        && !scrape.find("libvirt_domain_vcpu_time_seconds_total", &[("uuid", uuid)]).is_empty()
}
