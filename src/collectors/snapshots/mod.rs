//! The snapshots collector: each domain's snapshots and checkpoints, every
//! 5 minutes. Forgotten qcow2 snapshots fill storage and slow I/O; this
//! tells how many each domain has, how old the oldest is, which one is
//! current, and (behind `snapshot_detail`) each one's name, state, kind,
//! parent and creation time. Only libvirtd's metadata is read, never QEMU.
//!
//! Cost: per domain and cycle one `virDomainListAllSnapshots`, one
//! `virDomainSnapshotCurrent` (domains with snapshots only) and one
//! `virDomainListAllCheckpoints`, plus one XML read per snapshot or
//! checkpoint the collector has not seen yet (names are unique per domain:
//! what an XML says is kept by name, and read again only after
//! `xml_refresh`, or when its parent was deleted, which re-parents it).
//!
//! Isolation, as in the guest collector: each domain's calls run on their
//! own blocking thread, `calls_in_flight` at a time; a domain still running
//! after `call_timeout` is left out of the cycle (its last record stays on
//! view) and skipped (counted) until its call returns. A domain whose
//! listing or XML fails loses its own series for that cycle, counted by
//! what failed; the others are not touched.
//!
//! Snapshots have no event of their own: the collector runs again soon
//! after lifecycle events caused by a snapshot (a revert), after a domain
//! is defined or undefined, and after an unknown domain starts (a
//! transient one). Snapshots deleted, and disk-only ones created, show at
//! the next cycle.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

pub(crate) mod config;
pub(crate) mod metrics;
pub(crate) mod xml;

use super::blocking::{BusySet, CallTracker};
use super::controller::Wake;
use super::{BoxFuture, BuildContext, Built, CollectError, Collector, CollectorContext, CollectorPlugin};
use crate::events::typed::{Event, LifecycleCause, LifecycleEvent, Listener};
use crate::libvirt::snapshots::{Checkpoint, Snapshot};
use crate::libvirt::{Domain, LibvirtError, Session};
use crate::record::kind::KindSpec;
use crate::record::mapping::unit_of;
use crate::record::{Batch, DomainRef, EventInfo, Field, Identity, Record, RecordKind};
use crate::selfmon::{find, MetricDesc, MetricWriter, Report};
use crate::util::throttle::LogOnce;
use crate::value::TypedValue;
use config::SnapshotsConfig;
use metrics::{DOMAIN_SNAPSHOTS, SNAPSHOT_CHANGE};
use xml::{parse_checkpoint, parse_snapshot, snapshot_kind, CheckpointXml, SnapshotXml};

pub(crate) const SOURCE: &str = "snapshots";

/// Change records per domain and cycle at most (deleting a tree of
/// thousands of snapshots at once must not flood the stream sinks); the
/// rest are counted in `virtpulse_snapshots_truncated_total{what="changes"}`.
pub(crate) const MAX_CHANGES_PER_DOMAIN: usize = 1000;

#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub checkpoints: bool,
    pub call_timeout: Duration,
    pub calls_in_flight: usize,
    pub bounds: Bounds,
    /// Cached XML older than this is read again (`None`: never).
    pub xml_refresh: Option<Duration>,
}

/// How much of what libvirt says is kept.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounds {
    pub max_per_domain: usize,
    pub max_string_bytes: usize,
}

/// What failed, for `virtpulse_snapshots_errors_total{what}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    List,
    SnapshotXml,
    Current,
    CheckpointList,
    CheckpointXml,
}

impl Failure {
    const ALL: [Failure; 5] =
        [Failure::List, Failure::SnapshotXml, Failure::Current, Failure::CheckpointList, Failure::CheckpointXml];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Failure::List => "list",
            Failure::SnapshotXml => "snapshot_xml",
            Failure::Current => "current",
            Failure::CheckpointList => "checkpoint_list",
            Failure::CheckpointXml => "checkpoint_xml",
        }
    }
}

/// What a bound cut, for `virtpulse_snapshots_truncated_total{what}`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Cut {
    Snapshots,
    Checkpoints,
    Strings,
    Changes,
}

impl Cut {
    const ALL: [Cut; 4] = [Cut::Snapshots, Cut::Checkpoints, Cut::Strings, Cut::Changes];

    fn as_str(self) -> &'static str {
        match self {
            Cut::Snapshots => "snapshots",
            Cut::Checkpoints => "checkpoints",
            Cut::Strings => "strings",
            Cut::Changes => "changes",
        }
    }
}

/// Counts of what the bounds cut, by `Cut`.
pub(crate) type Cuts = [u64; 4];

pub(crate) const METRICS: &[MetricDesc] = &[
    MetricDesc::counter(
        "virtpulse_snapshots_errors_total",
        "Snapshot reads that failed, by what (list, snapshot_xml, current, checkpoint_list, checkpoint_xml); the domain's snapshot series are left out of that cycle.",
    ),
    MetricDesc::counter(
        "virtpulse_snapshots_skipped_total",
        "Domains left out of a snapshots cycle because their previous call had not returned.",
    ),
    MetricDesc::counter(
        "virtpulse_snapshots_timeouts_total",
        "Domains whose snapshot calls were still running after collectors.snapshots.call_timeout; skipped until they return.",
    ),
    MetricDesc::counter(
        "virtpulse_snapshots_truncated_total",
        "What the snapshots collector's bounds cut, by what (snapshots and checkpoints past max_per_domain, strings past max_string_bytes, change records past 1000 per domain and cycle).",
    ),
    MetricDesc::counter(
        "virtpulse_snapshots_xml_reads_total",
        "Snapshot and checkpoint XML documents read from libvirt, by object (each is read once and kept by name).",
    ),
];

/// What the collector cut, could not get, or read, for `virtpulse_snapshots_*`.
#[derive(Debug, Default)]
pub(crate) struct SnapshotsReport {
    skipped: AtomicU64,
    timeouts: AtomicU64,
    errors: [AtomicU64; 5],
    truncated: [AtomicU64; 4],
    xml_reads: [AtomicU64; 2],
}

impl SnapshotsReport {
    fn failed(&self, f: Failure) {
        let i = Failure::ALL.iter().position(|x| *x == f).unwrap_or(0);
        self.errors[i].fetch_add(1, Ordering::Relaxed);
    }

    fn cut(&self, cuts: &Cuts) {
        for (a, n) in self.truncated.iter().zip(cuts) {
            a.fetch_add(*n, Ordering::Relaxed);
        }
    }
}

impl Report for SnapshotsReport {
    fn metrics(&self, out: &mut dyn MetricWriter) {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
        out.sample(&find(METRICS, "virtpulse_snapshots_skipped_total"), &[], n(&self.skipped));
        out.sample(&find(METRICS, "virtpulse_snapshots_timeouts_total"), &[], n(&self.timeouts));
        for (f, a) in Failure::ALL.iter().zip(&self.errors) {
            out.sample(&find(METRICS, "virtpulse_snapshots_errors_total"), &[("what", f.as_str())], n(a));
        }
        for (c, a) in Cut::ALL.iter().zip(&self.truncated) {
            out.sample(&find(METRICS, "virtpulse_snapshots_truncated_total"), &[("what", c.as_str())], n(a));
        }
        for (o, a) in ["snapshot", "checkpoint"].iter().zip(&self.xml_reads) {
            out.sample(&find(METRICS, "virtpulse_snapshots_xml_reads_total"), &[("object", o)], n(a));
        }
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary.
pub(crate) fn bounded(s: &str, max: usize) -> (&str, bool) {
    if s.len() <= max {
        return (s, false);
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    (&s[..end], true)
}

/// Bounds a string in place; true if it was cut.
fn bound(s: &mut String, max: usize) -> bool {
    let (kept, cut) = bounded(s, max);
    if cut {
        let kept = kept.len();
        s.truncate(kept);
    }
    cut
}

fn bound_opt(s: &mut Option<String>, max: usize) -> bool {
    s.as_mut().is_some_and(|s| bound(s, max))
}

/// A snapshot's XML with its strings bounded (name, description, state,
/// parent), and how many were cut. Bounded once, when read: what the
/// collector keeps and reports never exceeds the bound.
pub(crate) fn bounded_snapshot(mut s: SnapshotXml, max: usize) -> (SnapshotXml, u64) {
    let mut cut = 0;
    for c in [bound(&mut s.name, max), bound(&mut s.state, max), bound_opt(&mut s.description, max)] {
        cut += u64::from(c);
    }
    cut += u64::from(bound_opt(&mut s.parent, max));
    cut += u64::from(bound_opt(&mut s.memory, max));
    (s, cut)
}

pub(crate) fn bounded_checkpoint(mut c: CheckpointXml, max: usize) -> (CheckpointXml, u64) {
    let cuts = [bound(&mut c.name, max), bound_opt(&mut c.description, max), bound_opt(&mut c.parent, max)];
    let cut = cuts.iter().filter(|c| **c).count() as u64;
    (c, cut)
}

/// What the collector asks of one domain. Behind a trait so that the
/// reading logic is tested with a fake domain (one whose XML cannot be
/// read, one whose calls hang).
pub(crate) trait Metadata: Send + 'static {
    type Snap;
    type Ckpt;
    fn snapshots(&self) -> Result<Vec<Self::Snap>, LibvirtError>;
    fn snapshot_name(&self, s: &Self::Snap) -> String;
    fn snapshot_xml(&self, s: &Self::Snap) -> Result<String, LibvirtError>;
    fn current_snapshot(&self) -> Result<Option<String>, LibvirtError>;
    fn checkpoints(&self) -> Result<Vec<Self::Ckpt>, LibvirtError>;
    fn checkpoint_name(&self, c: &Self::Ckpt) -> String;
    fn checkpoint_xml(&self, c: &Self::Ckpt) -> Result<String, LibvirtError>;
}

impl Metadata for Domain {
    type Snap = Snapshot;
    type Ckpt = Checkpoint;

    fn snapshots(&self) -> Result<Vec<Snapshot>, LibvirtError> {
        self.list_all_snapshots()
    }

    fn snapshot_name(&self, s: &Snapshot) -> String {
        s.name()
    }

    fn snapshot_xml(&self, s: &Snapshot) -> Result<String, LibvirtError> {
        s.xml_desc()
    }

    fn current_snapshot(&self) -> Result<Option<String>, LibvirtError> {
        Domain::current_snapshot(self)
    }

    fn checkpoints(&self) -> Result<Vec<Checkpoint>, LibvirtError> {
        self.list_all_checkpoints()
    }

    fn checkpoint_name(&self, c: &Checkpoint) -> String {
        c.name()
    }

    fn checkpoint_xml(&self, c: &Checkpoint) -> Result<String, LibvirtError> {
        c.xml_desc()
    }
}

/// What the collector already knows of a domain's snapshots: parsed XML by
/// name, and whether it is fresh enough to use without reading it again.
#[derive(Debug, Clone, Default)]
pub(crate) struct Known {
    pub snapshots: HashMap<String, (Arc<SnapshotXml>, bool)>,
    pub checkpoints: HashMap<String, (Arc<CheckpointXml>, bool)>,
    pub want_checkpoints: bool,
}

/// One listed snapshot or checkpoint: its name (libvirt's, unbounded: the
/// key), what its XML says if it could be read, and whether it was read in
/// this call (else it came from the cache).
#[derive(Debug, Clone)]
pub(crate) struct Item<T> {
    pub name: String,
    pub info: Option<Arc<T>>,
    pub read_now: bool,
}

/// One domain's answers.
#[derive(Debug, Default)]
pub(crate) struct DomainRead {
    /// `Some` when the snapshot listing succeeded (snapshots deleted between
    /// the listing and the XML read are left out).
    pub snapshots: Option<Vec<Item<SnapshotXml>>>,
    pub current: Option<String>,
    /// `Some` when checkpoints were listed.
    pub checkpoints: Option<Vec<Item<CheckpointXml>>>,
    /// The daemon has no checkpoint API (libvirt before 5.6).
    pub checkpoints_unsupported: bool,
    pub failures: Vec<(Failure, String)>,
    /// XML documents read: snapshots, checkpoints.
    pub xml_reads: [u64; 2],
    /// Strings cut while bounding what was read.
    pub strings_cut: u64,
    /// The domain went away during the read.
    pub gone: bool,
    /// An error that may mean the connection is gone (the caller checks).
    pub lost: Option<LibvirtError>,
}

impl DomainRead {
    /// Records a failed call; false when reading this domain must stop
    /// (it is gone, or the connection may be).
    fn fail(&mut self, what: Failure, subject: &str, e: LibvirtError) -> bool {
        if e.is_no_domain() {
            self.gone = true;
            return false;
        }
        let stop = e.may_mean_connection_lost();
        self.failures.push((what, format!("{subject}{e}")));
        if stop {
            self.lost = Some(e);
        }
        !stop
    }
}

/// Reads the XML of listed objects the cache cannot answer for: new names,
/// stale entries, and entries whose parent is gone (libvirt re-parents the
/// children of a deleted snapshot or checkpoint).
#[allow(clippy::too_many_arguments)]
fn read_items<H, T>(
    handles: Vec<H>,
    name_of: impl Fn(&H) -> String,
    xml_of: impl Fn(&H) -> Result<String, LibvirtError>,
    parse: impl Fn(&str) -> Result<(T, u64), String>,
    parent_of: impl Fn(&T) -> Option<&str>,
    is_vanished: impl Fn(&LibvirtError) -> bool,
    known: &HashMap<String, (Arc<T>, bool)>,
    what: Failure,
    reads: &mut u64,
    out: &mut DomainRead,
) -> Option<Vec<Item<T>>> {
    let names: Vec<String> = handles.iter().map(&name_of).collect();
    let listed: HashSet<&str> = names.iter().map(String::as_str).collect();
    let vanished: HashSet<&str> = known.keys().map(String::as_str).filter(|n| !listed.contains(n)).collect();
    let mut items = Vec::with_capacity(handles.len());
    for (h, name) in handles.iter().zip(&names) {
        if let Some((info, fresh)) = known.get(name) {
            let orphaned = parent_of(info).is_some_and(|p| vanished.contains(p));
            if *fresh && !orphaned {
                items.push(Item { name: name.clone(), info: Some(info.clone()), read_now: false });
                continue;
            }
        }
        *reads += 1;
        match xml_of(h) {
            Ok(text) => match parse(&text) {
                Ok((t, cut)) => {
                    out.strings_cut += cut;
                    items.push(Item { name: name.clone(), info: Some(Arc::new(t)), read_now: true });
                }
                Err(m) => {
                    out.failures.push((what, format!("{name}: {m}")));
                    items.push(Item { name: name.clone(), info: None, read_now: false });
                }
            },
            // Deleted since the listing: not there any more.
            Err(e) if is_vanished(&e) => {}
            Err(e) => {
                let go_on = out.fail(what, &format!("{name}: "), e);
                items.push(Item { name: name.clone(), info: None, read_now: false });
                if !go_on {
                    return None;
                }
            }
        }
    }
    Some(items)
}

/// Reads one domain's snapshots, current snapshot and checkpoints (on a
/// blocking thread: every call is an RPC).
pub(crate) fn read_domain<M: Metadata>(m: &M, known: &Known, max_string_bytes: usize) -> DomainRead {
    let mut out = DomainRead::default();
    let mut reads = [0u64; 2];
    match m.snapshots() {
        Ok(handles) => {
            let any = !handles.is_empty();
            let items = read_items(
                handles,
                |h| m.snapshot_name(h),
                |h| m.snapshot_xml(h),
                |x| parse_snapshot(x).map(|s| bounded_snapshot(s, max_string_bytes)),
                |s: &SnapshotXml| s.parent.as_deref(),
                LibvirtError::is_no_snapshot,
                &known.snapshots,
                Failure::SnapshotXml,
                &mut reads[0],
                &mut out,
            );
            out.xml_reads = reads;
            let Some(items) = items else { return out };
            out.snapshots = Some(items);
            if any {
                match m.current_snapshot() {
                    Ok(c) => out.current = c,
                    Err(e) => {
                        if !out.fail(Failure::Current, "current snapshot: ", e) {
                            return out;
                        }
                    }
                }
            }
        }
        Err(e) => {
            if !out.fail(Failure::List, "snapshot list: ", e) {
                return out;
            }
        }
    }
    if known.want_checkpoints {
        match m.checkpoints() {
            Ok(handles) => {
                let items = read_items(
                    handles,
                    |h| m.checkpoint_name(h),
                    |h| m.checkpoint_xml(h),
                    |x| parse_checkpoint(x).map(|c| bounded_checkpoint(c, max_string_bytes)),
                    |c: &CheckpointXml| c.parent.as_deref(),
                    LibvirtError::is_no_checkpoint,
                    &known.checkpoints,
                    Failure::CheckpointXml,
                    &mut reads[1],
                    &mut out,
                );
                out.checkpoints = items;
            }
            Err(e) if e.is_unsupported() => out.checkpoints_unsupported = true,
            Err(e) => {
                out.fail(Failure::CheckpointList, "checkpoint list: ", e);
            }
        }
    }
    out.xml_reads = reads;
    out
}

/// Parsed XML kept between cycles, with when it was read.
#[derive(Debug, Clone)]
struct Cached<T> {
    info: Arc<T>,
    read: Instant,
}

/// What the collector remembers of one domain.
#[derive(Debug, Default)]
struct DomainState {
    snapshots: HashMap<String, Cached<SnapshotXml>>,
    checkpoints: HashMap<String, Cached<CheckpointXml>>,
    /// Names of the last successful listing in this run (`None`: not
    /// listed yet: the first listing is the baseline, no change records).
    snapshot_names: Option<BTreeSet<String>>,
    checkpoint_names: Option<BTreeSet<String>>,
    /// The last record, kept on view while the domain's call is stuck.
    last: Option<Record>,
}

fn fresh<T>(
    c: &HashMap<String, Cached<T>>,
    now: Instant,
    refresh: Option<Duration>,
) -> HashMap<String, (Arc<T>, bool)> {
    c.iter()
        .map(|(k, v)| {
            let fresh = refresh.is_none_or(|r| now.saturating_duration_since(v.read) < r);
            (k.clone(), (v.info.clone(), fresh))
        })
        .collect()
}

fn remember<T>(old: &HashMap<String, Cached<T>>, items: &[Item<T>], now: Instant) -> HashMap<String, Cached<T>> {
    items
        .iter()
        .filter_map(|i| {
            let info = i.info.clone()?;
            let read = if i.read_now { now } else { old.get(&i.name).map(|c| c.read).unwrap_or(now) };
            Some((i.name.clone(), Cached { info, read }))
        })
        .collect()
}

/// A change of one domain's inventory since its last read.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Change {
    pub appeared: bool,
    pub checkpoint: bool,
    pub fields: Vec<(&'static str, TypedValue)>,
}

fn text(s: &str) -> TypedValue {
    TypedValue::String(s.into())
}

fn snapshot_change(appeared: bool, name: &str, info: Option<&SnapshotXml>, max: usize) -> Change {
    let mut fields = vec![
        ("change", text(if appeared { "appeared" } else { "disappeared" })),
        ("object", text("snapshot")),
        ("name", text(info.map(|s| s.name.as_str()).unwrap_or_else(|| bounded(name, max).0))),
    ];
    if let Some(s) = info {
        if let Some(t) = s.created {
            fields.push(("created", TypedValue::LLong(t)));
        }
        fields.push(("state", text(&s.state)));
        fields.push(("kind", text(snapshot_kind(s))));
        if let Some(p) = &s.parent {
            fields.push(("parent", text(p)));
        }
    }
    Change { appeared, checkpoint: false, fields }
}

fn checkpoint_change(appeared: bool, name: &str, info: Option<&CheckpointXml>, max: usize) -> Change {
    let mut fields = vec![
        ("change", text(if appeared { "appeared" } else { "disappeared" })),
        ("object", text("checkpoint")),
        ("name", text(info.map(|c| c.name.as_str()).unwrap_or_else(|| bounded(name, max).0))),
    ];
    if let Some(c) = info {
        if let Some(t) = c.created {
            fields.push(("created", TypedValue::LLong(t)));
        }
        if let Some(p) = &c.parent {
            fields.push(("parent", text(p)));
        }
    }
    Change { appeared, checkpoint: true, fields }
}

/// Appeared and disappeared names between two listings.
fn diff<'a>(prev: &'a BTreeSet<String>, now: &'a BTreeSet<String>) -> (Vec<&'a String>, Vec<&'a String>) {
    (now.difference(prev).collect(), prev.difference(now).collect())
}

/// The inventory fields of one domain's record, bounded.
pub(crate) fn inventory_fields(
    snapshots: &[Item<SnapshotXml>],
    current: Option<&str>,
    checkpoints: Option<&[Item<CheckpointXml>]>,
    bounds: &Bounds,
    cuts: &mut Cuts,
) -> Vec<(String, TypedValue)> {
    let count = |n: usize| TypedValue::UInt(u32::try_from(n).unwrap_or(u32::MAX));
    let mut out: Vec<(String, TypedValue)> = Vec::new();
    out.push(("snapshot.count".into(), count(snapshots.len())));
    let known: Vec<&SnapshotXml> = snapshots.iter().filter_map(|i| i.info.as_deref()).collect();
    let times: Vec<i64> = known.iter().filter_map(|s| s.created).collect();
    if let (Some(lo), Some(hi)) = (times.iter().min(), times.iter().max()) {
        out.push(("snapshot.oldest".into(), TypedValue::LLong(*lo)));
        out.push(("snapshot.newest".into(), TypedValue::LLong(*hi)));
    }
    // The current snapshot by its listed name; shown as the (bounded) name
    // its XML gave.
    let current_item = current.and_then(|c| snapshots.iter().find(|i| i.name == c));
    if let Some(c) = current {
        let shown = current_item.and_then(|i| i.info.as_deref()).map(|s| s.name.as_str());
        out.push(("snapshot.current".into(), text(shown.unwrap_or_else(|| bounded(c, bounds.max_string_bytes).0))));
    }
    let mut sorted: Vec<&Item<SnapshotXml>> = snapshots.iter().filter(|i| i.info.is_some()).collect();
    sorted.sort_by(|a, b| {
        let key = |i: &Item<SnapshotXml>| i.info.as_ref().and_then(|s| s.created).unwrap_or(i64::MAX);
        key(a).cmp(&key(b)).then_with(|| a.name.cmp(&b.name))
    });
    let detailed = sorted.len().min(bounds.max_per_domain);
    cuts[Cut::Snapshots as usize] += (snapshots.len() - detailed) as u64;
    out.push(("snapshot.detailed".into(), count(detailed)));
    for (n, item) in sorted.iter().take(detailed).enumerate() {
        let Some(s) = item.info.as_deref() else { continue };
        let key = |f: &str| format!("snapshot.{n}.{f}");
        out.push((key("name"), text(&s.name)));
        if let Some(t) = s.created {
            out.push((key("created"), TypedValue::LLong(t)));
        }
        out.push((key("state"), text(&s.state)));
        out.push((key("kind"), text(snapshot_kind(s))));
        out.push((key("current"), TypedValue::Boolean(current == Some(item.name.as_str()))));
        if let Some(p) = &s.parent {
            out.push((key("parent"), text(p)));
        }
        if let Some(d) = &s.description {
            out.push((key("description"), text(d)));
        }
    }
    if let Some(cps) = checkpoints {
        out.push(("checkpoint.count".into(), count(cps.len())));
        let times: Vec<i64> = cps.iter().filter_map(|i| i.info.as_ref().and_then(|c| c.created)).collect();
        if let (Some(lo), Some(hi)) = (times.iter().min(), times.iter().max()) {
            out.push(("checkpoint.oldest".into(), TypedValue::LLong(*lo)));
            out.push(("checkpoint.newest".into(), TypedValue::LLong(*hi)));
        }
        let mut sorted: Vec<&Item<CheckpointXml>> = cps.iter().filter(|i| i.info.is_some()).collect();
        sorted.sort_by(|a, b| {
            let key = |i: &Item<CheckpointXml>| i.info.as_ref().and_then(|c| c.created).unwrap_or(i64::MAX);
            key(a).cmp(&key(b)).then_with(|| a.name.cmp(&b.name))
        });
        let detailed = sorted.len().min(bounds.max_per_domain);
        cuts[Cut::Checkpoints as usize] += (cps.len() - detailed) as u64;
        out.push(("checkpoint.detailed".into(), count(detailed)));
        for (n, item) in sorted.iter().take(detailed).enumerate() {
            let Some(c) = item.info.as_deref() else { continue };
            let key = |f: &str| format!("checkpoint.{n}.{f}");
            out.push((key("name"), text(&c.name)));
            if let Some(t) = c.created {
                out.push((key("created"), TypedValue::LLong(t)));
            }
            if let Some(p) = &c.parent {
                out.push((key("parent"), text(p)));
            }
            if let Some(d) = &c.description {
                out.push((key("description"), text(d)));
            }
        }
    }
    out
}

/// What the collector knows of every domain, and what it has reported.
#[derive(Debug, Default)]
pub(crate) struct Inventory {
    domains: HashMap<String, DomainState>,
}

/// What one domain's read gave: its record (none when a call failed) and
/// what changed since its last read.
#[derive(Debug, Default)]
pub(crate) struct Applied {
    pub fields: Option<Vec<(String, TypedValue)>>,
    pub changes: Vec<Change>,
    pub cuts: Cuts,
}

impl Inventory {
    /// What the cache can answer for a domain (`refresh`: how old a cached
    /// XML may be).
    pub(crate) fn known(&self, uuid: &str, now: Instant, refresh: Option<Duration>, want_checkpoints: bool) -> Known {
        let Some(d) = self.domains.get(uuid) else {
            return Known { want_checkpoints, ..Known::default() };
        };
        Known {
            snapshots: fresh(&d.snapshots, now, refresh),
            checkpoints: fresh(&d.checkpoints, now, refresh),
            want_checkpoints,
        }
    }

    /// Takes one domain's read into the inventory.
    pub(crate) fn apply(&mut self, uuid: &str, read: &DomainRead, now: Instant, bounds: &Bounds) -> Applied {
        let mut applied = Applied::default();
        if read.gone {
            self.domains.remove(uuid);
            return applied;
        }
        let st = self.domains.entry(uuid.to_string()).or_default();
        let mut changes = Vec::new();
        if let Some(items) = &read.snapshots {
            let names: BTreeSet<String> = items.iter().map(|i| i.name.clone()).collect();
            if let Some(prev) = &st.snapshot_names {
                let (appeared, gone) = diff(prev, &names);
                for n in appeared {
                    let info = items.iter().find(|i| &i.name == n).and_then(|i| i.info.as_deref());
                    changes.push(snapshot_change(true, n, info, bounds.max_string_bytes));
                }
                for n in gone {
                    let info = st.snapshots.get(n).map(|c| &*c.info);
                    changes.push(snapshot_change(false, n, info, bounds.max_string_bytes));
                }
            }
            st.snapshots = remember(&st.snapshots, items, now);
            st.snapshot_names = Some(names);
        }
        if let Some(items) = &read.checkpoints {
            let names: BTreeSet<String> = items.iter().map(|i| i.name.clone()).collect();
            if let Some(prev) = &st.checkpoint_names {
                let (appeared, gone) = diff(prev, &names);
                for n in appeared {
                    let info = items.iter().find(|i| &i.name == n).and_then(|i| i.info.as_deref());
                    changes.push(checkpoint_change(true, n, info, bounds.max_string_bytes));
                }
                for n in gone {
                    let info = st.checkpoints.get(n).map(|c| &*c.info);
                    changes.push(checkpoint_change(false, n, info, bounds.max_string_bytes));
                }
            }
            st.checkpoints = remember(&st.checkpoints, items, now);
            st.checkpoint_names = Some(names);
        }
        if changes.len() > MAX_CHANGES_PER_DOMAIN {
            applied.cuts[Cut::Changes as usize] += (changes.len() - MAX_CHANGES_PER_DOMAIN) as u64;
            changes.truncate(MAX_CHANGES_PER_DOMAIN);
        }
        applied.changes = changes;
        applied.cuts[Cut::Strings as usize] += read.strings_cut;
        let complete = read.failures.is_empty() && read.lost.is_none();
        match (&read.snapshots, complete) {
            (Some(items), true) => {
                applied.fields = Some(inventory_fields(
                    items,
                    read.current.as_deref(),
                    read.checkpoints.as_deref(),
                    bounds,
                    &mut applied.cuts,
                ));
            }
            _ => st.last = None,
        }
        applied
    }

    fn keep_last(&mut self, uuid: &str, r: &Record) {
        if let Some(st) = self.domains.get_mut(uuid) {
            st.last = Some(r.clone());
        }
    }

    fn last(&self, uuid: &str) -> Option<Record> {
        self.domains.get(uuid).and_then(|d| d.last.clone())
    }

    /// Forgets domains that are gone (not in `present`).
    pub(crate) fn retain(&mut self, present: &HashSet<String>) {
        self.domains.retain(|u, _| present.contains(u));
    }
}

/// State shared with the listener.
#[derive(Debug, Default)]
struct Shared {
    /// Domains the last cycle listed (a domain starting that is not among
    /// them is new: a transient one).
    known: Mutex<HashSet<String>>,
}

/// Runs a cycle soon after what changes snapshots or the domain list: a
/// lifecycle event caused by a snapshot (a revert), a domain defined or
/// undefined, an unknown domain started.
struct SnapshotsListener {
    wake: Wake,
    shared: Arc<Shared>,
}

impl Listener for SnapshotsListener {
    fn on_event(&self, ev: &Event<'_>) {
        let Event::Lifecycle(d, l) = *ev else { return };
        let wake = l.cause == LifecycleCause::FromSnapshot
            || matches!(l.event, LifecycleEvent::Defined | LifecycleEvent::Undefined)
            || (l.event == LifecycleEvent::Started
                && self.shared.known.lock().map(|k| !k.contains(d.uuid)).unwrap_or(true));
        if wake {
            self.wake.now();
        }
    }
}

/// A random id for this agent run: change records' ids stay unique across
/// restarts.
fn run_id() -> String {
    let mut bytes = [0u8; 8];
    let ok =
        std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes)).is_ok();
    if !ok {
        let t = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_nanos() as u64;
        bytes = (t ^ u64::from(std::process::id())).to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Domains read side by side, each on its own blocking thread, within a
/// per-cycle deadline; domains still busy from an earlier cycle are skipped.
#[derive(Clone)]
pub(crate) struct Readers {
    tracker: CallTracker,
    busy: BusySet,
    permits: Arc<tokio::sync::Semaphore>,
    call_timeout: Duration,
    max_string_bytes: usize,
}

/// What one round of reads gave.
#[derive(Debug, Default)]
pub(crate) struct Round {
    pub reads: Vec<(String, DomainRead)>,
    /// Domains whose earlier call is still running.
    pub skipped: Vec<String>,
    /// Domains whose call is still running at the deadline.
    pub late: Vec<String>,
}

impl Readers {
    pub(crate) fn new(
        tracker: CallTracker,
        calls_in_flight: usize,
        call_timeout: Duration,
        max_string_bytes: usize,
    ) -> Self {
        Self {
            tracker,
            busy: BusySet::default(),
            permits: Arc::new(tokio::sync::Semaphore::new(calls_in_flight.max(1))),
            call_timeout,
            max_string_bytes,
        }
    }

    /// Reads each domain (uuid, handle, what is known of it).
    pub(crate) async fn read<M: Metadata>(&self, domains: Vec<(String, M, Known)>) -> Round {
        let started = Instant::now();
        let mut round = Round::default();
        let mut pending: HashSet<String> = HashSet::new();
        let mut set = tokio::task::JoinSet::new();
        for (uuid, m, known) in domains {
            let Some(mark) = self.busy.mark(uuid.clone()) else {
                round.skipped.push(uuid);
                continue;
            };
            pending.insert(uuid.clone());
            let (tracker, permits, max) = (self.tracker.clone(), self.permits.clone(), self.max_string_bytes);
            set.spawn(async move {
                let _permit = permits.acquire_owned().await;
                tracker
                    .run_isolated(move || {
                        let _mark = mark;
                        let read = read_domain(&m, &known, max);
                        drop(m);
                        (uuid, read)
                    })
                    .await
                    .ok()
            });
        }
        // Each domain gets `call_timeout` from the start of the cycle (its
        // turn may wait for a permit); the stragglers finish in the
        // background and stay marked busy until they do.
        let deadline = tokio::time::Instant::from_std(started + self.call_timeout);
        loop {
            match tokio::time::timeout_at(deadline, set.join_next()).await {
                Ok(Some(Ok(Some((uuid, read))))) => {
                    pending.remove(&uuid);
                    round.reads.push((uuid, read));
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        // Dropping the set would only abort the waits, not libvirt's calls.
        set.detach_all();
        round.late = pending.into_iter().collect();
        round
    }
}

pub(crate) struct SnapshotsCollector {
    ctx: CollectorContext,
    settings: Settings,
    report: Arc<SnapshotsReport>,
    readers: Readers,
    inventory: Inventory,
    shared: Arc<Shared>,
    /// Whether the daemon of this connection generation has checkpoints.
    checkpoints: Option<(u64, bool)>,
    logged: LogOnce,
    run: String,
    seq: u64,
}

impl SnapshotsCollector {
    pub(crate) fn new(ctx: CollectorContext, settings: Settings) -> Self {
        // Counters run on when a reload rebuilds the collector.
        let report = ctx.registry.keep(ctx.stats.name, SnapshotsReport::default);
        let readers = Readers::new(
            ctx.tracker.clone(),
            settings.calls_in_flight,
            settings.call_timeout,
            settings.bounds.max_string_bytes,
        );
        Self {
            ctx,
            settings,
            report,
            readers,
            inventory: Inventory::default(),
            shared: Arc::default(),
            checkpoints: None,
            logged: LogOnce::default(),
            run: run_id(),
            seq: 0,
        }
    }

    fn listener(&self, wake: Wake) -> Arc<dyn Listener> {
        Arc::new(SnapshotsListener { wake, shared: self.shared.clone() })
    }

    fn want_checkpoints(&self, generation: u64) -> bool {
        self.settings.checkpoints && !matches!(self.checkpoints, Some((g, false)) if g == generation)
    }
}

/// A `domain_snapshots` record.
fn inventory_record(
    identity: &Identity,
    name: &str,
    uuid: &str,
    fields: Vec<(String, TypedValue)>,
    time: SystemTime,
) -> Record {
    let fields = fields
        .into_iter()
        .map(|(k, v)| Field { unit: unit_of(&DOMAIN_SNAPSHOTS, &k, &v), key: Arc::from(k), value: v })
        .collect();
    Record {
        domain: Some(DomainRef { name: name.into(), uuid: uuid.into(), info: None }),
        fields,
        ..Record::new(identity, RecordKind::of(&DOMAIN_SNAPSHOTS), time)
    }
}

/// A `domain_snapshot_change` record: carried like an event (its own
/// sequence and id, family `domain`, name `snapshot_change`).
pub(crate) fn change_record(
    identity: &Identity,
    name: &str,
    uuid: &str,
    change: Change,
    seq: u64,
    run: &str,
    time: SystemTime,
) -> Record {
    let fields = change
        .fields
        .into_iter()
        .map(|(k, v)| Field { unit: unit_of(&SNAPSHOT_CHANGE, k, &v), key: Arc::from(k), value: v })
        .collect();
    Record {
        domain: Some(DomainRef { name: name.into(), uuid: uuid.into(), info: None }),
        event: Some(EventInfo {
            family: "domain",
            name: "snapshot_change",
            kind: if change.appeared { "appeared" } else { "disappeared" }.to_string(),
            detail: if change.checkpoint { "checkpoint" } else { "snapshot" }.to_string(),
            seq,
            id: format!("{run}-{seq}"),
            object: None,
        }),
        fields,
        ..Record::new(identity, RecordKind::of(&SNAPSHOT_CHANGE), time)
    }
}

impl Collector for SnapshotsCollector {
    fn name(&self) -> &'static str {
        SOURCE
    }

    fn collect(&mut self) -> BoxFuture<'_, Result<Batch, CollectError>> {
        Box::pin(self.collect_once())
    }
}

impl SnapshotsCollector {
    async fn collect_once(&mut self) -> Result<Batch, CollectError> {
        let session: Session = self.ctx.manager.current().ok_or(CollectError::NotConnected)?;
        let (s, manager, filter) = (session.clone(), self.ctx.manager.clone(), self.ctx.filter.clone());
        let domains = self
            .ctx
            .tracker
            .run(move || {
                s.conn
                    .list_all_domains(0)
                    .map(|doms| doms.into_iter().filter(|d| filter.allows(&d.name())).collect::<Vec<_>>())
                    .inspect_err(|e| manager.note_error(&s, e))
            })
            .await??;
        let now = Instant::now();
        let want_checkpoints = self.want_checkpoints(session.generation);
        let mut names: HashMap<String, String> = HashMap::with_capacity(domains.len());
        let mut jobs = Vec::with_capacity(domains.len());
        for dom in domains {
            let uuid = dom.uuid();
            names.insert(uuid.clone(), dom.name());
            let known = self.inventory.known(&uuid, now, self.settings.xml_refresh, want_checkpoints);
            jobs.push((uuid, dom, known));
        }
        let present: HashSet<String> = names.keys().cloned().collect();
        if let Ok(mut k) = self.shared.known.lock() {
            k.clone_from(&present);
        }
        let round = self.readers.read(jobs).await;
        self.report.skipped.fetch_add(round.skipped.len() as u64, Ordering::Relaxed);
        self.report.timeouts.fetch_add(round.late.len() as u64, Ordering::Relaxed);
        let time = SystemTime::now();
        let (mut records, mut changes) = (Vec::new(), Vec::new());
        for (uuid, read) in round.reads {
            for (i, n) in read.xml_reads.iter().enumerate() {
                self.report.xml_reads[i].fetch_add(*n, Ordering::Relaxed);
            }
            if let Some(e) = &read.lost {
                if session.conn.lost(e) {
                    self.ctx.manager.note_error(&session, e);
                    return Err(CollectError::Libvirt(e.clone()));
                }
            }
            if read.checkpoints_unsupported && self.checkpoints != Some((session.generation, false)) {
                tracing::info!(
                    collector = SOURCE,
                    "this libvirt has no checkpoint API (libvirt 5.6+): checkpoints are not collected on this connection"
                );
                self.checkpoints = Some((session.generation, false));
            }
            let name = names.get(&uuid).cloned().unwrap_or_default();
            for (what, problem) in &read.failures {
                self.report.failed(*what);
                if self.logged.first(&format!("{uuid}: {problem}")) {
                    tracing::warn!(
                        collector = SOURCE,
                        domain = %name,
                        what = what.as_str(),
                        problem = %problem,
                        "cannot read the domain's snapshots; its snapshot series are left out of this cycle (logged once per domain and problem)"
                    );
                }
            }
            let applied = self.inventory.apply(&uuid, &read, now, &self.settings.bounds);
            self.report.cut(&applied.cuts);
            for c in applied.changes {
                self.seq += 1;
                changes.push(change_record(&self.ctx.identity, &name, &uuid, c, self.seq, &self.run, time));
            }
            if let Some(fields) = applied.fields {
                let r = inventory_record(&self.ctx.identity, &name, &uuid, fields, time);
                self.inventory.keep_last(&uuid, &r);
                records.push(r);
            }
        }
        // Domains whose call is still running keep their last record on
        // view (snapshot sinks); stream sinks do not get it again.
        let retained: Vec<Record> =
            round.skipped.iter().chain(&round.late).filter_map(|u| self.inventory.last(u)).collect();
        self.inventory.retain(&present);
        records.extend(changes);
        Ok(Batch { source: SOURCE, snapshot: true, records, retained, ..Default::default() })
    }
}

/// The snapshots collector in the registry.
pub(crate) struct SnapshotsPlugin;

impl CollectorPlugin for SnapshotsPlugin {
    type Config = SnapshotsConfig;
    const NAME: &'static str = SOURCE;
    const INTERVAL: Option<Duration> = Some(Duration::from_secs(300));
    const KINDS: &'static [&'static KindSpec] = &[&DOMAIN_SNAPSHOTS, &SNAPSHOT_CHANGE];
    const METRICS: &'static [MetricDesc] = METRICS;

    fn build(&self, cfg: &SnapshotsConfig, ctx: &mut BuildContext) -> anyhow::Result<Built> {
        let settings = Settings {
            checkpoints: cfg.checkpoints,
            call_timeout: cfg.call_timeout(ctx.schedule.timeout),
            calls_in_flight: cfg.calls_in_flight,
            bounds: Bounds { max_per_domain: cfg.max_per_domain, max_string_bytes: cfg.max_string_bytes },
            xml_refresh: (!cfg.xml_refresh.is_zero()).then_some(cfg.xml_refresh),
        };
        let c = SnapshotsCollector::new(ctx.ctx.clone(), settings);
        let listener = c.listener(ctx.wake.clone());
        Ok(Built { collector: Box::new(c), listener: Some(listener) })
    }
}

#[cfg(test)]
mod tests;
