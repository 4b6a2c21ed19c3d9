//! A snapshot ready to be scraped: the batch's records, held once (the same
//! `Arc` the other sinks got), and an index of the series they export,
//! grouped by family. The exposition text is written at scrape time and
//! streamed in chunks (see `stream`): no full copy of it is ever held.

use std::collections::BTreeSet;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, OnceLock};

use rustc_hash::{FxHashMap, FxHasher};

use super::gzip::{self, Piece};
use crate::exposition::text::{end_sample, escape_label_value, push_label, write_header, write_sample};
use crate::record::info::info_metrics;
use crate::record::mapping::MappedExport;
use crate::record::samples::{
    for_each_identity, for_each_label, for_each_sample, scaled, Sample, SampleFilter, SampleStats, MAX_LABELS, NO_FIELD,
};
use crate::record::{Batch, Record};
use crate::selection::Selection;
use crate::value::MetricType;
use flate2::Compress;

/// One series whose line is written at scrape time (16 bytes: a host's
/// series cost this much plus their share of the records).
#[derive(Debug, Clone, Copy)]
struct PlanSample {
    /// Into `SourcePlan::exports`.
    export: u32,
    record: u32,
    field: u32,
    /// Into the record's sibling tuples (see `SourcePlan::siblings`): the
    /// series of one disk or NIC share one.
    siblings: u16,
    dropped: u8,
}

/// No sibling fields at all.
const NO_SIBLINGS: u16 = u16::MAX;
const ALL_MISSING: [u32; MAX_LABELS] = [NO_FIELD; MAX_LABELS];

#[derive(Debug)]
pub(crate) struct PlanFamily {
    pub name: Arc<str>,
    pub mtype: MetricType,
    header: Box<str>,
    /// Lines written when the plan was made (info metrics: many labels,
    /// one line per object).
    text: String,
    /// The whole family's lines once prerendered (then `text` is empty and
    /// `samples` too), shared with the scrapes that send them.
    rendered: Option<Arc<str>>,
    /// Header and lines compressed once: when the snapshot arrives if gzip
    /// scrapes are expected, else by the first gzip scrape that needs it
    /// (`None` inside: compression failed; scrapes compress the text then).
    gzip: OnceLock<Option<Piece>>,
    samples: Vec<PlanSample>,
}

/// What a plan could not export, and how much it holds.
#[derive(Debug, Default, Clone)]
pub(crate) struct PlanStats {
    pub series: u64,
    /// Samples dropped because they duplicated a series or reused a family
    /// name with another type (both break a scrape).
    pub conflicts: u64,
    /// Series beyond the series limit, not exported.
    pub over_limit: u64,
    pub unmapped: BTreeSet<String>,
    pub wrong_type: BTreeSet<String>,
}

#[derive(Debug)]
pub(crate) struct SourcePlan {
    batch: Arc<Batch>,
    /// Identity labels (domain, uuid, ...) of each record in exposition form.
    prefixes: Vec<Box<str>>,
    exports: Vec<Arc<MappedExport>>,
    /// Per label position, the sibling fields holding label values, for
    /// every distinct combination in a record; `sibling_base[record]` is
    /// where the record's start.
    siblings: Vec<[u32; MAX_LABELS]>,
    sibling_base: Vec<u32>,
    /// Sorted by name.
    families: Vec<PlanFamily>,
    pub stats: PlanStats,
    /// Every family is held rendered (see `prerender`).
    prerendered: bool,
}

fn record_at(batch: &Batch, i: usize) -> Option<&Record> {
    batch.records.get(i).or_else(|| batch.retained.get(i.checked_sub(batch.records.len())?))
}

/// Labels shared by every series of a record, in exposition form.
fn identity_prefix(r: &Record, filter: &dyn SampleFilter) -> Option<String> {
    let mut p = String::with_capacity(96);
    // Events are counted (see `events`), not rendered as samples.
    let any = for_each_identity(r, |k, v| {
        if filter.drops_labels() && !filter.keeps_label(k) {
            return;
        }
        if !p.is_empty() {
            p.push(',');
        }
        p.push_str(k);
        p.push_str("=\"");
        escape_label_value(&mut p, v);
        p.push('"');
    });
    if !any {
        return None;
    }
    Some(p)
}

/// Builds a plan; `budget` is how many series it may hold at most.
struct Planner<'s> {
    selection: &'s Selection,
    families: Vec<PlanFamily>,
    by_name: FxHashMap<Arc<str>, u32>,
    /// Export (by address) -> (index in `exports`, family).
    by_export: FxHashMap<usize, (u32, u32)>,
    exports: Vec<Arc<MappedExport>>,
    seen: std::collections::HashSet<u64, BuildHasherDefault<FxHasher>>,
    budget: u64,
    stats: PlanStats,
    siblings: Vec<[u32; MAX_LABELS]>,
    /// Where the current record's sibling tuples start.
    record_base: usize,
}

impl Planner<'_> {
    /// The family of `name`, or `None` when the name has another type.
    fn family(&mut self, name: &str, mtype: MetricType, help: &str) -> Option<u32> {
        let i = match self.by_name.get(name) {
            Some(i) => *i,
            None => {
                let mut header = String::with_capacity(name.len() * 2 + help.len() + 24);
                write_header(&mut header, name, help, mtype.as_str());
                let name: Arc<str> = name.into();
                self.families.push(PlanFamily {
                    name: name.clone(),
                    mtype,
                    header: header.into(),
                    text: String::new(),
                    rendered: None,
                    gzip: OnceLock::new(),
                    samples: Vec::new(),
                });
                let i = (self.families.len() - 1) as u32;
                self.by_name.insert(name, i);
                i
            }
        };
        if self.families[i as usize].mtype != mtype {
            self.stats.conflicts += 1;
            return None;
        }
        Some(i)
    }

    /// Counts a new series, refusing duplicates and series over the budget.
    fn admit(&mut self, id: u64) -> bool {
        if !self.seen.insert(id) {
            self.stats.conflicts += 1;
            return false;
        }
        if self.stats.series >= self.budget {
            self.stats.over_limit += 1;
            return false;
        }
        self.stats.series += 1;
        true
    }

    fn info(&mut self, name: &'static str, help: &'static str, labels: &[(&'static str, &str)]) {
        let Some(fam) = self.family(name, MetricType::Gauge, help) else { return };
        let text = &mut self.families[fam as usize].text;
        let start = text.len();
        write_sample(text, name, "", labels.iter().copied(), 1.0);
        let line = &text[start..];
        let mut h = FxHasher::default();
        h.write(line.as_bytes());
        if !self.admit(h.finish()) {
            self.families[fam as usize].text.truncate(start);
        }
    }

    fn sample(&mut self, record: u32, prefix_hash: u64, s: &Sample) {
        let key = Arc::as_ptr(&s.export) as usize;
        let (export, fam) = match self.by_export.get(&key) {
            Some(v) => *v,
            None => {
                let Some(fam) = self.family(s.name(), s.mtype(), s.help()) else { return };
                self.exports.push(s.export.clone());
                let v = ((self.exports.len() - 1) as u32, fam);
                self.by_export.insert(key, v);
                v
            }
        };
        if self.families[fam as usize].mtype != s.mtype() {
            self.stats.conflicts += 1;
            return;
        }
        let mut h = FxHasher::default();
        h.write_u32(fam);
        h.write_u64(prefix_hash);
        s.for_each_label(|k, v| {
            h.write(k.as_bytes());
            h.write_u8(0xff);
            h.write(v.as_bytes());
            h.write_u8(0xfe);
        });
        let siblings = if s.siblings.iter().all(|f| *f == NO_FIELD) {
            NO_SIBLINGS
        } else {
            let mine = &self.siblings[self.record_base..];
            match mine.iter().position(|t| *t == s.siblings) {
                Some(i) => i as u16,
                None if mine.len() < usize::from(NO_SIBLINGS) => {
                    self.siblings.push(s.siblings);
                    (self.siblings.len() - 1 - self.record_base) as u16
                }
                // More distinct devices in one record than a u16 counts.
                None => {
                    self.stats.conflicts += 1;
                    return;
                }
            }
        };
        if !self.admit(h.finish()) {
            return;
        }
        self.families[fam as usize].samples.push(PlanSample {
            export,
            record,
            field: s.field,
            siblings,
            dropped: s.dropped as u8,
        });
    }
}

impl SourcePlan {
    /// Indexes the records of a batch (records, then retained ones).
    pub(crate) fn build(batch: Arc<Batch>, selection: &Selection, budget: u64) -> SourcePlan {
        let mut p = Planner {
            selection,
            families: Vec::new(),
            by_name: FxHashMap::default(),
            by_export: FxHashMap::default(),
            exports: Vec::new(),
            seen: Default::default(),
            budget,
            stats: PlanStats::default(),
            siblings: Vec::new(),
            record_base: 0,
        };
        let filter: &dyn SampleFilter = p.selection;
        let mut prefixes = Vec::with_capacity(batch.records.len() + batch.retained.len());
        let mut sibling_base = Vec::with_capacity(prefixes.capacity());
        for (i, r) in batch.records.iter().chain(&batch.retained).enumerate() {
            p.record_base = p.siblings.len();
            sibling_base.push(p.record_base as u32);
            let Some(prefix) = identity_prefix(r, filter) else {
                prefixes.push(Box::default());
                continue;
            };
            let mut h = FxHasher::default();
            h.write(prefix.as_bytes());
            let prefix_hash = h.finish();
            prefixes.push(prefix.into_boxed_str());
            info_metrics(r, filter, &mut |name, help, labels| p.info(name, help, labels));
            let mut ss = SampleStats::default();
            for_each_sample(r, filter, &mut ss, |s| p.sample(i as u32, prefix_hash, &s));
            p.stats.unmapped.extend(ss.unmapped);
            p.stats.wrong_type.extend(ss.wrong_type);
        }
        let mut families = p.families;
        families.sort_by(|a, b| a.name.cmp(&b.name));
        for f in &mut families {
            f.text.shrink_to_fit();
            f.samples.shrink_to_fit();
        }
        let mut siblings = p.siblings;
        siblings.shrink_to_fit();
        SourcePlan {
            batch,
            prefixes,
            exports: p.exports,
            siblings,
            sibling_base,
            families,
            stats: p.stats,
            prerendered: false,
        }
    }

    /// Renders every family's lines now, if they come to at most
    /// `max_bytes`, so scrapes only copy them; the sample index is dropped
    /// then. With `gzip`, each family (header and lines) is also compressed
    /// once, for scrapes that ask for gzip. Returns the bytes held.
    pub(crate) fn prerender(&mut self, max_bytes: usize, gzip: bool) -> usize {
        if max_bytes == 0 {
            return 0;
        }
        let mut texts = Vec::with_capacity(self.families.len());
        let mut total = 0usize;
        for fam in &self.families {
            let mut out = String::new();
            self.write_family(fam, &mut out, usize::MAX, &mut |_| {});
            total += out.len();
            if total > max_bytes {
                return 0;
            }
            texts.push(out);
        }
        let mut compressor = gzip.then(gzip::compressor);
        for (fam, text) in self.families.iter_mut().zip(texts) {
            if let Some(c) = &mut compressor {
                let _ = fam.gzip.set(Piece::compress(c, &[&fam.header, &text]).ok());
            }
            fam.rendered = Some(text.into());
            fam.text = String::new();
            fam.samples = Vec::new();
        }
        // Only the text is read from now on: the records (unless another
        // sink still holds them) and the index go.
        self.batch = Arc::default();
        self.prefixes = Vec::new();
        self.exports = Vec::new();
        self.siblings = Vec::new();
        self.sibling_base = Vec::new();
        self.prerendered = true;
        self.prerendered_bytes()
    }

    /// Every family is held rendered (or there is none): a scrape only lays
    /// out held bytes.
    pub(crate) fn is_prerendered(&self) -> bool {
        self.prerendered || self.families.is_empty()
    }

    /// The family's lines, if held rendered.
    pub(crate) fn rendered(fam: &PlanFamily) -> Option<&Arc<str>> {
        fam.rendered.as_ref()
    }

    /// Bytes of exposition text held rendered, plain and compressed (see
    /// `prerender`).
    pub(crate) fn prerendered_bytes(&self) -> usize {
        if !self.prerendered {
            return 0;
        }
        let piece = |f: &PlanFamily| f.gzip.get().and_then(Option::as_ref).map_or(0, Piece::size);
        self.families.iter().map(|f| f.rendered.as_ref().map_or(0, |t| t.len()) + piece(f)).sum()
    }

    /// The family's header and lines compressed, if held rendered: made now
    /// if no scrape or snapshot made it yet, with `compressor` (made on first
    /// use, kept for the next).
    pub(crate) fn gzip_piece<'a>(fam: &'a PlanFamily, compressor: &mut Option<Compress>) -> Option<&'a Piece> {
        let text = fam.rendered.as_ref()?;
        let make = || Piece::compress(compressor.get_or_insert_with(gzip::compressor), &[&fam.header, text]).ok();
        fam.gzip.get_or_init(make).as_ref()
    }

    pub(crate) fn families(&self) -> &[PlanFamily] {
        &self.families
    }

    /// Writes one family's lines (no header) into `out`, calling `flush`
    /// whenever `out` has grown past `chunk` bytes.
    pub(crate) fn write_family(
        &self,
        fam: &PlanFamily,
        out: &mut String,
        chunk: usize,
        flush: &mut dyn FnMut(&mut String),
    ) {
        let mut text: &str = fam.rendered.as_deref().unwrap_or(&fam.text);
        while !text.is_empty() {
            let room = chunk.saturating_sub(out.len()).max(1);
            let cut = if text.len() <= room {
                text.len()
            } else {
                // Cut after a line feed: always a character boundary.
                let bytes = text.as_bytes();
                memchr::memrchr(b'\n', &bytes[..room])
                    .or_else(|| memchr::memchr(b'\n', bytes))
                    .map_or(text.len(), |i| i + 1)
            };
            out.push_str(&text[..cut]);
            text = &text[cut..];
            if out.len() >= chunk {
                flush(out);
            }
        }
        for ps in &fam.samples {
            let Some(r) = record_at(&self.batch, ps.record as usize) else { continue };
            let Some(f) = r.fields.get(ps.field as usize) else { continue };
            let Some(export) = self.exports.get(ps.export as usize) else { continue };
            let value = scaled(f.value.as_f64().unwrap_or(f64::NAN), export.scale);
            let prefix = &self.prefixes[ps.record as usize];
            out.push_str(&export.name);
            let mut first = prefix.is_empty();
            if !first {
                out.push('{');
                out.push_str(prefix);
            }
            let tuple = match ps.siblings {
                NO_SIBLINGS => None,
                i => self.siblings.get(self.sibling_base[ps.record as usize] as usize + usize::from(i)),
            };
            let siblings = tuple.unwrap_or(&ALL_MISSING);
            for_each_label(export, r, siblings, u32::from(ps.dropped), |k, v| push_label(out, &mut first, k, v));
            end_sample(out, first, value);
            if out.len() >= chunk {
                flush(out);
            }
        }
    }

    pub(crate) fn header(fam: &PlanFamily) -> &str {
        &fam.header
    }
}
