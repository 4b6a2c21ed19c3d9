//! The snapshots collector's logic against fake domains: caching by name,
//! change records, bounds, and isolation (a domain whose XML cannot be read
//! or whose call hangs costs only its own series).

use std::sync::atomic::AtomicUsize;
use std::sync::mpsc;

use super::*;
use crate::events::typed::{DomainId, Lifecycle};

const NO_SNAPSHOT: i32 = 72; // VIR_ERR_NO_DOMAIN_SNAPSHOT
const NO_SUPPORT: i32 = 3; // VIR_ERR_NO_SUPPORT
const INTERNAL_ERROR: i32 = 1; // VIR_ERR_INTERNAL_ERROR

fn snap_xml(name: &str, created: i64, parent: Option<&str>) -> String {
    let parent = parent.map(|p| format!("<parent><name>{p}</name></parent>")).unwrap_or_default();
    format!(
        "<domainsnapshot><name>{name}</name><state>running</state>{parent}<creationTime>{created}</creationTime>\
         <memory snapshot='internal'/><disks><disk name='vda' snapshot='internal'/></disks>\
         <domain><name>vm</name></domain></domainsnapshot>"
    )
}

fn ckpt_xml(name: &str, created: i64) -> String {
    format!("<domaincheckpoint><name>{name}</name><creationTime>{created}</creationTime></domaincheckpoint>")
}

/// A domain as the collector sees it, in memory. `hold` blocks the
/// snapshot listing until something is sent (a hung call).
#[derive(Default)]
struct Fake {
    list_error: Option<LibvirtError>,
    snaps: Vec<(String, Result<String, LibvirtError>)>,
    current: Option<String>,
    checkpoints: Option<Result<Vec<(String, String)>, LibvirtError>>,
    xml_reads: Arc<AtomicUsize>,
    hold: Option<Mutex<mpsc::Receiver<()>>>,
}

impl Fake {
    fn with(snaps: &[(&str, i64, Option<&str>)]) -> Fake {
        Fake {
            snaps: snaps.iter().map(|(n, t, p)| (n.to_string(), Ok(snap_xml(n, *t, *p)))).collect(),
            current: snaps.last().map(|s| s.0.to_string()),
            ..Fake::default()
        }
    }
}

impl Metadata for Fake {
    type Snap = usize;
    type Ckpt = (String, String);

    fn snapshots(&self) -> Result<Vec<usize>, LibvirtError> {
        if let Some(h) = &self.hold {
            let _ = h.lock().unwrap().recv();
        }
        match &self.list_error {
            Some(e) => Err(e.clone()),
            None => Ok((0..self.snaps.len()).collect()),
        }
    }

    fn snapshot_name(&self, s: &usize) -> String {
        self.snaps[*s].0.clone()
    }

    fn snapshot_xml(&self, s: &usize) -> Result<String, LibvirtError> {
        self.xml_reads.fetch_add(1, Ordering::SeqCst);
        self.snaps[*s].1.clone()
    }

    fn current_snapshot(&self) -> Result<Option<String>, LibvirtError> {
        Ok(self.current.clone())
    }

    fn checkpoints(&self) -> Result<Vec<(String, String)>, LibvirtError> {
        self.checkpoints.clone().unwrap_or(Ok(Vec::new()))
    }

    fn checkpoint_name(&self, c: &(String, String)) -> String {
        c.0.clone()
    }

    fn checkpoint_xml(&self, c: &(String, String)) -> Result<String, LibvirtError> {
        self.xml_reads.fetch_add(1, Ordering::SeqCst);
        Ok(c.1.clone())
    }
}

const BOUNDS: Bounds = Bounds { max_per_domain: 50, max_string_bytes: 256 };

fn field<'a>(fields: &'a [(String, TypedValue)], key: &str) -> Option<&'a TypedValue> {
    fields.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

fn want() -> Known {
    Known { want_checkpoints: true, ..Known::default() }
}

#[test]
fn a_domain_reads_into_counts_times_current_and_detail() {
    let mut f = Fake::with(&[("s1", 100, None), ("s2", 300, Some("s1")), ("d1", 200, Some("s1"))]);
    f.current = Some("s2".into());
    f.checkpoints = Some(Ok(vec![("c1".into(), ckpt_xml("c1", 150)), ("c2".into(), ckpt_xml("c2", 250))]));
    let read = read_domain(&f, &want(), 256);
    assert!(read.failures.is_empty(), "{:?}", read.failures);
    assert_eq!(read.xml_reads, [3, 2]);
    let mut inv = Inventory::default();
    let a = inv.apply("u1", &read, Instant::now(), &BOUNDS);
    assert!(a.changes.is_empty(), "the first read is the baseline");
    let fields = a.fields.unwrap();
    assert_eq!(field(&fields, "snapshot.count"), Some(&TypedValue::UInt(3)));
    assert_eq!(field(&fields, "snapshot.oldest"), Some(&TypedValue::LLong(100)));
    assert_eq!(field(&fields, "snapshot.newest"), Some(&TypedValue::LLong(300)));
    assert_eq!(field(&fields, "snapshot.current"), Some(&text("s2")));
    // Oldest first.
    assert_eq!(field(&fields, "snapshot.0.name"), Some(&text("s1")));
    assert_eq!(field(&fields, "snapshot.1.name"), Some(&text("d1")));
    assert_eq!(field(&fields, "snapshot.2.current"), Some(&TypedValue::Boolean(true)));
    assert_eq!(field(&fields, "snapshot.1.parent"), Some(&text("s1")));
    assert_eq!(field(&fields, "snapshot.0.kind"), Some(&text("internal")));
    assert_eq!(field(&fields, "checkpoint.count"), Some(&TypedValue::UInt(2)));
    assert_eq!(field(&fields, "checkpoint.oldest"), Some(&TypedValue::LLong(150)));
    assert_eq!(field(&fields, "checkpoint.newest"), Some(&TypedValue::LLong(250)));
    assert_eq!(field(&fields, "checkpoint.1.name"), Some(&text("c2")));
}

#[test]
fn an_xml_is_read_once_per_name_until_it_is_stale_or_orphaned() {
    let f = Fake::with(&[("s1", 100, None), ("s2", 200, Some("s1"))]);
    let reads = f.xml_reads.clone();
    let mut inv = Inventory::default();
    let t0 = Instant::now();
    let refresh = Some(Duration::from_secs(3600));
    let r = read_domain(&f, &inv.known("u", t0, refresh, true), 256);
    inv.apply("u", &r, t0, &BOUNDS);
    assert_eq!(reads.load(Ordering::SeqCst), 2);
    let r = read_domain(&f, &inv.known("u", t0, refresh, true), 256);
    inv.apply("u", &r, t0, &BOUNDS);
    assert_eq!(reads.load(Ordering::SeqCst), 2, "known names are not read again");
    // A new snapshot: only it is read.
    let mut f2 = Fake::with(&[("s1", 100, None), ("s2", 200, Some("s1")), ("s3", 300, Some("s2"))]);
    f2.xml_reads = reads.clone();
    let r = read_domain(&f2, &inv.known("u", t0, refresh, true), 256);
    inv.apply("u", &r, t0, &BOUNDS);
    assert_eq!(reads.load(Ordering::SeqCst), 3);
    // s1 deleted: libvirt re-parents s2, whose XML is read again.
    let mut f3 = Fake::with(&[("s2", 200, None), ("s3", 300, Some("s2"))]);
    f3.xml_reads = reads.clone();
    let r = read_domain(&f3, &inv.known("u", t0, refresh, true), 256);
    let a = inv.apply("u", &r, t0, &BOUNDS);
    assert_eq!(reads.load(Ordering::SeqCst), 4, "only the orphan s2 is read again");
    let fields = a.fields.unwrap();
    assert_eq!(field(&fields, "snapshot.0.name"), Some(&text("s2")));
    assert_eq!(field(&fields, "snapshot.0.parent"), None);
    // Past xml_refresh everything is read again.
    let later = t0 + Duration::from_secs(3601);
    let r = read_domain(&f3, &inv.known("u", later, refresh, true), 256);
    inv.apply("u", &r, later, &BOUNDS);
    assert_eq!(reads.load(Ordering::SeqCst), 6);
}

#[test]
fn changes_are_reported_after_the_baseline() {
    let mut inv = Inventory::default();
    let now = Instant::now();
    let f = Fake::with(&[("s1", 100, None)]);
    let a = inv.apply("u", &read_domain(&f, &inv.known("u", now, None, true), 256), now, &BOUNDS);
    assert!(a.changes.is_empty());
    let mut f = Fake::with(&[("s2", 200, None)]);
    f.checkpoints = Some(Ok(vec![("c1".into(), ckpt_xml("c1", 150))]));
    let a = inv.apply("u", &read_domain(&f, &inv.known("u", now, None, true), 256), now, &BOUNDS);
    let summary: Vec<(bool, bool, TypedValue)> =
        a.changes.iter().map(|c| (c.appeared, c.checkpoint, c.fields[2].1.clone())).collect();
    assert_eq!(
        summary,
        vec![(true, false, text("s2")), (false, false, text("s1")), (true, true, text("c1"))],
        "{:?}",
        a.changes
    );
    let gone = &a.changes[1];
    assert!(gone.fields.contains(&("created", TypedValue::LLong(100))), "what was known of s1: {gone:?}");
    assert!(a.changes[0].fields.contains(&("kind", text("internal"))));
    // A change record is an event-like record that validates its own way.
    let identity = Identity { host: "h".into(), uri: "test:///default".into() };
    let r = change_record(&identity, "vm", "u", a.changes[0].clone(), 7, "run", SystemTime::now());
    let e = r.event.as_ref().unwrap();
    assert_eq!(
        (e.name, e.kind.as_str(), e.detail.as_str(), e.id.as_str()),
        ("snapshot_change", "appeared", "snapshot", "run-7")
    );
    assert_eq!(r.field("created").map(|_| r.fields[3].unit), Some(crate::value::Unit::UnixSeconds));
}

#[test]
fn a_failing_xml_costs_the_domain_its_record_and_nothing_else() {
    let mut bad = Fake::with(&[("s1", 100, None), ("s2", 200, None)]);
    bad.snaps[1].1 = Err(LibvirtError::new(INTERNAL_ERROR, "cannot read the snapshot"));
    let mut broken = Fake::with(&[("x", 1, None)]);
    broken.snaps[0].1 = Ok("<domainsnapshot><name>x".into());
    let good = Fake::with(&[("s1", 100, None)]);
    let mut inv = Inventory::default();
    let now = Instant::now();
    let rb = read_domain(&bad, &want(), 256);
    assert_eq!(rb.failures.len(), 1);
    assert_eq!(rb.failures[0].0, Failure::SnapshotXml);
    assert!(inv.apply("bad", &rb, now, &BOUNDS).fields.is_none());
    let rx = read_domain(&broken, &want(), 256);
    assert!(rx.failures[0].1.contains("does not parse"), "{:?}", rx.failures);
    assert!(inv.apply("broken", &rx, now, &BOUNDS).fields.is_none());
    let rg = read_domain(&good, &want(), 256);
    assert!(inv.apply("good", &rg, now, &BOUNDS).fields.is_some());
    // The snapshot read fine is kept: next time only the failed one is read.
    let reads = bad.xml_reads.clone();
    let before = reads.load(Ordering::SeqCst);
    let rb = read_domain(&bad, &inv.known("bad", now, None, true), 256);
    assert_eq!(reads.load(Ordering::SeqCst) - before, 1);
    assert!(rb.snapshots.is_some());
}

#[test]
fn vanished_snapshots_a_gone_domain_and_old_daemons() {
    let mut f = Fake::with(&[("s1", 100, None), ("s2", 200, None)]);
    f.snaps[1].1 = Err(LibvirtError::new(NO_SNAPSHOT, "deleted meanwhile"));
    f.checkpoints = Some(Err(LibvirtError::new(NO_SUPPORT, "this function is not supported")));
    let r = read_domain(&f, &want(), 256);
    assert!(r.failures.is_empty(), "{:?}", r.failures);
    assert_eq!(r.snapshots.as_ref().unwrap().len(), 1, "a snapshot deleted after the listing is not there");
    assert!(r.checkpoints_unsupported && r.checkpoints.is_none());
    let fields = Inventory::default().apply("u", &r, Instant::now(), &BOUNDS).fields.unwrap();
    assert_eq!(field(&fields, "snapshot.count"), Some(&TypedValue::UInt(1)));
    assert_eq!(field(&fields, "checkpoint.count"), None);
    let gone = Fake { list_error: Some(LibvirtError::new(42, "Domain not found")), ..Fake::default() };
    let r = read_domain(&gone, &want(), 256);
    assert!(r.gone && r.failures.is_empty());
    let listing = Fake { list_error: Some(LibvirtError::new(INTERNAL_ERROR, "boom")), ..Fake::default() };
    let r = read_domain(&listing, &want(), 256);
    assert_eq!(r.failures[0].0, Failure::List);
}

#[test]
fn bounds_cut_detail_and_strings_and_count_it() {
    let many: Vec<(String, i64)> = (0..10).map(|i| (format!("snap-{i}"), 1000 - i)).collect();
    let refs: Vec<(&str, i64, Option<&str>)> = many.iter().map(|(n, t)| (n.as_str(), *t, None)).collect();
    let mut f = Fake::with(&refs);
    let long = "é".repeat(40);
    f.snaps.push((long.clone(), Ok(snap_xml(&long, 5, None))));
    f.current = Some(long.clone());
    let bounds = Bounds { max_per_domain: 3, max_string_bytes: 9 };
    let r = read_domain(&f, &want(), bounds.max_string_bytes);
    assert_eq!(r.strings_cut, 1);
    let a = Inventory::default().apply("u", &r, Instant::now(), &bounds);
    let fields = a.fields.unwrap();
    assert_eq!(field(&fields, "snapshot.count"), Some(&TypedValue::UInt(11)), "the count stays exact");
    assert_eq!(field(&fields, "snapshot.oldest"), Some(&TypedValue::LLong(5)));
    assert_eq!(field(&fields, "snapshot.detailed"), Some(&TypedValue::UInt(3)));
    assert_eq!(field(&fields, "snapshot.0.name"), Some(&text("éééé")), "cut on a character boundary");
    assert_eq!(field(&fields, "snapshot.current"), Some(&text("éééé")));
    assert_eq!(field(&fields, "snapshot.1.name"), Some(&text("snap-9")));
    assert!(field(&fields, "snapshot.3.name").is_none());
    assert_eq!(a.cuts, [8, 0, 1, 0]);
    for (_, v) in &fields {
        if let TypedValue::String(s) = v {
            assert!(s.len() <= 9, "{s}");
        }
    }
}

#[test]
fn change_records_are_bounded_per_domain() {
    let names: Vec<String> = (0..MAX_CHANGES_PER_DOMAIN + 5).map(|i| format!("s{i}")).collect();
    let mut inv = Inventory::default();
    let now = Instant::now();
    let empty = Fake::default();
    inv.apply("u", &read_domain(&empty, &want(), 256), now, &BOUNDS);
    let refs: Vec<(&str, i64, Option<&str>)> = names.iter().map(|n| (n.as_str(), 1, None)).collect();
    let f = Fake::with(&refs);
    let a = inv.apply("u", &read_domain(&f, &want(), 256), now, &BOUNDS);
    assert_eq!(a.changes.len(), MAX_CHANGES_PER_DOMAIN);
    assert_eq!(a.cuts[Cut::Changes as usize], 5);
}

#[tokio::test]
async fn a_hung_domain_is_left_out_then_skipped_until_its_call_returns() {
    let readers = Readers::new(CallTracker::default(), 2, Duration::from_millis(300), 256);
    let (tx, rx) = mpsc::channel();
    let quick = || Fake::with(&[("s1", 1, None)]);
    let hung = Fake { hold: Some(Mutex::new(rx)), ..Fake::with(&[("s1", 1, None)]) };
    let jobs =
        vec![("hung".to_string(), hung, want()), ("a".to_string(), quick(), want()), ("b".into(), quick(), want())];
    let round = readers.read(jobs).await;
    let mut done: Vec<&str> = round.reads.iter().map(|(u, _)| u.as_str()).collect();
    done.sort_unstable();
    assert_eq!(done, ["a", "b"], "the others are read while one hangs");
    assert_eq!(round.late, ["hung"]);
    // Next cycle: still running, so skipped (no second call piles up).
    let jobs = vec![("hung".to_string(), quick(), want()), ("a".to_string(), quick(), want())];
    let round = readers.read(jobs).await;
    assert_eq!(round.skipped, ["hung"]);
    assert_eq!(round.reads.len(), 1);
    // The call returns: the domain is read again.
    tx.send(()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while readers.busy.contains("hung") {
        assert!(Instant::now() < deadline, "the hung call's mark stayed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let round = readers.read(vec![("hung".to_string(), quick(), want())]).await;
    assert_eq!(round.reads.len(), 1);
    assert!(round.skipped.is_empty() && round.late.is_empty());
}

#[test]
fn the_listener_wakes_on_snapshot_causes_definitions_and_new_domains() {
    let stats = crate::selfmon::CollectorStats::new("snapshots", Duration::from_secs(300));
    let shared = Arc::new(Shared::default());
    shared.known.lock().unwrap().insert("old".to_string());
    let l = SnapshotsListener { wake: Wake::counted(stats.clone()), shared };
    let ev =
        |uuid: &'static str, event, cause| Event::Lifecycle(DomainId { name: "vm", uuid }, Lifecycle { event, cause });
    l.on_event(&ev("old", LifecycleEvent::Resumed, LifecycleCause::FromSnapshot));
    assert_eq!(stats.wakes(), 1);
    l.on_event(&ev("old", LifecycleEvent::Suspended, LifecycleCause::Other));
    l.on_event(&ev("old", LifecycleEvent::Started, LifecycleCause::Other));
    assert_eq!(stats.wakes(), 1, "a known domain starting changes no snapshot");
    l.on_event(&ev("new", LifecycleEvent::Started, LifecycleCause::Other));
    l.on_event(&ev("old", LifecycleEvent::Undefined, LifecycleCause::Other));
    l.on_event(&ev("x", LifecycleEvent::Defined, LifecycleCause::Other));
    assert_eq!(stats.wakes(), 4);
}

#[test]
fn records_export_counts_by_default_and_detail_behind_the_switch() {
    let mut f = Fake::with(&[("s1", 100, None), ("s2", 300, Some("s1"))]);
    f.checkpoints = Some(Ok(vec![("c1".into(), ckpt_xml("c1", 150))]));
    let fields =
        Inventory::default().apply("u", &read_domain(&f, &want(), 256), Instant::now(), &BOUNDS).fields.unwrap();
    let identity = Identity { host: "h".into(), uri: "test:///default".into() };
    let record = inventory_record(&identity, "vm", "u", fields, SystemTime::now());
    let render = |sel: crate::selection::Selection| {
        let exporter =
            crate::sinks::prometheus::Exporter::new(crate::selfmon::Registry::new(), Arc::new(sel), u64::MAX);
        exporter.apply(Arc::new(Batch {
            source: SOURCE,
            snapshot: true,
            records: vec![record.clone()],
            ..Default::default()
        }));
        exporter.encode()
    };
    let catalog = crate::registry::catalog();
    let default = render(crate::selection::Selection::new(&Default::default(), &catalog).unwrap());
    assert!(default.contains("libvirt_domain_snapshots{domain=\"vm\",uuid=\"u\"} 2"), "{default}");
    assert!(default.contains("libvirt_domain_snapshot_oldest_timestamp_seconds{domain=\"vm\",uuid=\"u\"} 100"));
    assert!(default.contains("libvirt_domain_checkpoint_oldest_timestamp_seconds{domain=\"vm\",uuid=\"u\"} 150"));
    assert!(!default.contains("libvirt_domain_snapshot_info"), "{default}");
    assert!(!default.contains("created_timestamp"));
    let all = render(crate::selection::Selection::everything(&catalog));
    assert!(
        all.contains(
            "libvirt_domain_snapshot_info{domain=\"vm\",uuid=\"u\",snapshot=\"s2\",state=\"running\",current=\"true\",parent=\"s1\",kind=\"internal\"} 1"
        ),
        "{all}"
    );
    assert!(
        all.contains("libvirt_domain_snapshot_created_timestamp_seconds{domain=\"vm\",uuid=\"u\",snapshot=\"s1\"} 100")
    );
    assert!(all.contains("libvirt_domain_checkpoint_info{domain=\"vm\",uuid=\"u\",checkpoint=\"c1\",parent=\"\"} 1"));
    // A change record in the same snapshot batch exports nothing.
    let change = change_record(&identity, "vm", "u", snapshot_change(true, "s3", None, 256), 1, "r", SystemTime::now());
    let exporter = crate::sinks::prometheus::Exporter::new(
        crate::selfmon::Registry::new(),
        Arc::new(crate::selection::Selection::everything(&catalog)),
        u64::MAX,
    );
    exporter.apply(Arc::new(Batch { source: SOURCE, snapshot: true, records: vec![change], ..Default::default() }));
    assert!(!exporter.encode().contains("libvirt_"), "{}", exporter.encode());
}
