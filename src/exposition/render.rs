//! Metric families written as text at once: the agent's own metrics and the
//! event counters, rendered per scrape (records go through `plan`).

use std::collections::{BTreeMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use rustc_hash::FxHasher;

use super::text::write_sample;
use crate::value::MetricType;

#[derive(Debug, Clone)]
pub(crate) struct Family {
    pub help: String,
    pub mtype: MetricType,
    /// Sample lines, already in exposition format.
    pub body: String,
}

pub(crate) type Families = BTreeMap<String, Family>;

#[derive(Debug, Default)]
pub(crate) struct RenderStats {
    /// Samples dropped because they would have duplicated a series or
    /// reused a family name with another type (both break a scrape).
    pub conflicts: u64,
    pub series: u64,
}

/// Adds one sample to its family, refusing duplicates and type clashes.
pub(crate) struct FamilyWriter<'a> {
    families: &'a mut Families,
    stats: &'a mut RenderStats,
    /// Hashes of the series written so far (a 64-bit collision, which would
    /// drop one series, is far less likely than anything else going wrong).
    seen: HashSet<u64, BuildHasherDefault<FxHasher>>,
}

impl<'a> FamilyWriter<'a> {
    pub(crate) fn new(families: &'a mut Families, stats: &'a mut RenderStats) -> Self {
        Self { families, stats, seen: HashSet::default() }
    }

    pub(crate) fn add(&mut self, name: &str, mtype: MetricType, help: &str, labels: &[(&str, &str)], value: f64) {
        self.add_with_prefix(name, mtype, help, "", labels, value);
    }

    /// `prefix`: labels already in exposition form (see `write_sample`).
    pub(crate) fn add_with_prefix(
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
    pub(crate) fn add_histogram(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_series_and_type_clashes_are_dropped() {
        let mut fams = Families::new();
        let mut st = RenderStats::default();
        let mut w = FamilyWriter::new(&mut fams, &mut st);
        w.add("m", MetricType::Gauge, "h", &[("a", "1")], 1.0);
        w.add("m", MetricType::Gauge, "h", &[("a", "1")], 2.0);
        w.add("m", MetricType::Counter, "h", &[("a", "2")], 2.0);
        w.add("m", MetricType::Gauge, "h", &[("a", "2")], 3.0);
        assert_eq!(st.conflicts, 2);
        assert_eq!(st.series, 2);
        assert_eq!(fams["m"].body, "m{a=\"1\"} 1\nm{a=\"2\"} 3\n");
    }
}
