//! Node devices: the host's devices as libvirt's node device driver lists
//! them, with what capacity planning needs: per SR-IOV physical function
//! the VFs it supports, has and lends to running domains; per mediated
//! device type (vGPU) the instances its parent can still create and those
//! it has; and which host devices (PCI and USB hostdevs, VFs as NICs,
//! mediated devices) each running domain holds.
//!
//! Per cycle: one `virConnectListAllNodeDevices` (active devices), then a
//! `virNodeDeviceGetXMLDesc` per device that is due: every device on the
//! full refresh (each `interval`, and after a reconnect), else only new
//! devices, devices an event named and the capacity devices (PFs and mdev
//! parents, whose figures change when a VF or an mdev comes or goes). The
//! device calls run as one blocking job that stops at the cycle's budget.
//! When something needs assignments (a PF exists, or the detail switch or
//! a record sink is on): one `virConnectListAllDomains` (running domains)
//! and a `virDomainGetXMLDesc` per running domain that is due (new, named
//! by a lifecycle or device event, or the full refresh), each on its own
//! blocking thread, a few at a time, under a deadline; a domain whose read
//! is still running is skipped until it returns.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

pub(crate) mod config;
pub(crate) mod inventory;
pub(crate) mod metrics;
pub(crate) mod xml;

use super::blocking::BusySet;
use super::controller::Wake;
use super::{BoxFuture, BuildContext, Built, CollectError, Collector, CollectorContext, CollectorPlugin};
use crate::events::typed::{Event, LifecycleEvent, Listener};
use crate::libvirt::node::LIST_ACTIVE as LIST_ACTIVE_DOMAINS;
use crate::libvirt::nodedev::{is_no_node_device, LIST_ACTIVE};
use crate::libvirt::{Domain, LibvirtError, Session};
use crate::record::kind::KindSpec;
use crate::record::mapping::unit_of;
use crate::record::{Batch, Field, ObjectRef, Record, RecordKind};
use crate::selfmon::{find, MetricDesc, MetricWriter, Report};
use crate::util::throttle::LogOnce;
use crate::value::TypedValue;
use config::NodeDevicesConfig;
use inventory::{build, DomainHostdevs};
use metrics::{NODE_DEVICE, NODE_DEVICE_DETAIL};
use xml::{bounded, parse_domain_hostdevs, parse_node_device, Bounds, Cuts, DeviceFacts, Hostdev};

pub(crate) const SOURCE: &str = "node_devices";

/// Warnings that would repeat every cycle: once in ten minutes.
static WARNINGS: crate::util::throttle::Throttle = crate::util::throttle::Throttle::new(Duration::from_secs(600));

/// VF addresses kept per physical function (every VF is counted; PCIe
/// allows 65535, NICs have up to a few hundred).
const MAX_VFS: usize = 4096;
/// Host devices kept per domain.
const MAX_HOSTDEVS: usize = 256;
/// Names that events marked for a re-read, kept between cycles at most;
/// past it the next cycle re-reads everything.
const MAX_STALE: usize = 4096;

pub(crate) const METRICS: &[MetricDesc] = &[
    MetricDesc::counter(
        "virtpulse_node_devices_xml_reads_total",
        "XML reads of the node devices collector, by object (device: virNodeDeviceGetXMLDesc, domain: virDomainGetXMLDesc).",
    ),
    MetricDesc::counter(
        "virtpulse_node_devices_xml_errors_total",
        "Node device or domain XML that could not be read or parsed; the object keeps what was known of it.",
    ),
    MetricDesc::counter(
        "virtpulse_node_devices_skipped_total",
        "Reads not started because the object's earlier read had not returned (domain: its XML read; device: the device job).",
    ),
    MetricDesc::counter(
        "virtpulse_node_devices_timeouts_total",
        "Reads still running at the node devices cycle's budget; the object keeps what was known of it.",
    ),
    MetricDesc::counter(
        "virtpulse_node_devices_truncated_total",
        "What the node devices collector's bounds cut, by what (devices, mdev_types, vfs, hostdevs, assignments, strings).",
    ),
];

const OBJECTS: [&str; 2] = ["device", "domain"];

/// What the collector read, cut or could not get.
#[derive(Debug, Default)]
struct NodeDevicesReport {
    reads: [AtomicU64; 2],
    errors: [AtomicU64; 2],
    skipped: [AtomicU64; 2],
    timeouts: [AtomicU64; 2],
    /// devices, mdev_types, vfs, hostdevs, assignments, strings.
    truncated: [AtomicU64; 6],
}

const DEVICE: usize = 0;
const DOMAIN: usize = 1;
const CUT_NAMES: [&str; 6] = ["devices", "mdev_types", "vfs", "hostdevs", "assignments", "strings"];

impl NodeDevicesReport {
    fn count(a: &AtomicU64, n: u64) {
        a.fetch_add(n, Ordering::Relaxed);
    }

    fn cuts(&self, c: &Cuts) {
        let values = [c.devices, c.mdev_types, c.vfs, c.hostdevs, c.assignments, c.strings];
        for (a, v) in self.truncated.iter().zip(values) {
            Self::count(a, v);
        }
    }
}

impl Report for NodeDevicesReport {
    fn metrics(&self, out: &mut dyn MetricWriter) {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
        for (i, object) in OBJECTS.iter().enumerate() {
            let l = [("object", *object)];
            out.sample(&find(METRICS, "virtpulse_node_devices_xml_reads_total"), &l, n(&self.reads[i]));
            out.sample(&find(METRICS, "virtpulse_node_devices_xml_errors_total"), &l, n(&self.errors[i]));
            out.sample(&find(METRICS, "virtpulse_node_devices_skipped_total"), &l, n(&self.skipped[i]));
            out.sample(&find(METRICS, "virtpulse_node_devices_timeouts_total"), &l, n(&self.timeouts[i]));
        }
        for (a, what) in self.truncated.iter().zip(CUT_NAMES) {
            out.sample(&find(METRICS, "virtpulse_node_devices_truncated_total"), &[("what", what)], n(a));
        }
    }
}

/// What events marked for a re-read since the last cycle.
#[derive(Debug, Default)]
struct Stale {
    devices: HashSet<String>,
    /// Domains by UUID.
    domains: HashSet<String>,
    /// Too many names: re-read everything.
    overflow: bool,
}

impl Stale {
    fn mark(set: &Mutex<Stale>, f: impl FnOnce(&mut Stale) -> &mut HashSet<String>, name: &str) {
        let Ok(mut s) = set.lock() else { return };
        if s.overflow {
            return;
        }
        let names = f(&mut s);
        if names.len() >= MAX_STALE {
            names.clear();
            s.overflow = true;
            return;
        }
        names.insert(name.to_string());
    }
}

/// Wakes the collector on node device events, and on the domain events
/// that change which host devices running domains hold (start, stop,
/// hot-plug) when assignments matter.
struct NodeDevicesListener {
    wake: Wake,
    stale: Arc<Mutex<Stale>>,
    domains_matter: Arc<AtomicBool>,
}

impl Listener for NodeDevicesListener {
    fn on_event(&self, ev: &Event<'_>) {
        match *ev {
            Event::NodeDevice { name, .. } => {
                Stale::mark(&self.stale, |s| &mut s.devices, name);
                self.wake.now();
            }
            Event::Lifecycle(d, l)
                if matches!(l.event, LifecycleEvent::Started | LifecycleEvent::Stopped)
                    && self.domains_matter.load(Ordering::Relaxed) =>
            {
                Stale::mark(&self.stale, |s| &mut s.domains, d.uuid);
                self.wake.now();
            }
            Event::DeviceAdded(d) | Event::DeviceRemoved(d) if self.domains_matter.load(Ordering::Relaxed) => {
                Stale::mark(&self.stale, |s| &mut s.domains, d.uuid);
                self.wake.now();
            }
            _ => {}
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub interval: Duration,
    pub timeout: Duration,
    pub bounds: Bounds,
    pub max_devices: usize,
    pub reads_in_flight: usize,
    /// Assignments are wanted whatever the host has (the detail switch, or
    /// a sink that reads whole records).
    pub wants_assignments: bool,
}

/// What a device job sends back as it goes.
enum DeviceMsg {
    /// The listing (sorted, cut to `max_devices`, names bounded) and what
    /// was cut.
    Listed(Vec<String>, Cuts),
    /// One device read: its facts and cuts, or why not.
    Read(String, Result<Box<(DeviceFacts, Cuts)>, ReadError>),
}

enum ReadError {
    Vanished,
    Libvirt(LibvirtError),
    Parse(String),
}

/// Marks a device job as running until dropped: when the job ends, or
/// with the future that would have started it.
struct JobMark(Arc<AtomicBool>);

impl JobMark {
    fn new(flag: &Arc<AtomicBool>) -> Self {
        flag.store(true, Ordering::Release);
        JobMark(flag.clone())
    }
}

impl Drop for JobMark {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// A running domain as last read.
#[derive(Debug)]
struct DomainEntry {
    name: String,
    hostdevs: Vec<Hostdev>,
}

pub(crate) struct NodeDevicesCollector {
    ctx: CollectorContext,
    settings: Settings,
    report: Arc<NodeDevicesReport>,
    stale: Arc<Mutex<Stale>>,
    domains_matter: Arc<AtomicBool>,
    /// Facts per device name, for the devices listed last.
    devices: HashMap<String, DeviceFacts>,
    /// The devices listed last, sorted.
    listed: Vec<String>,
    /// Running domains by UUID.
    domains: HashMap<String, DomainEntry>,
    domain_busy: BusySet,
    domain_permits: Arc<tokio::sync::Semaphore>,
    /// A device job is still running (stuck past an earlier cycle's budget).
    device_job: Arc<AtomicBool>,
    last_full: Option<Instant>,
    generation: Option<u64>,
    /// `VIR_CONNECT_LIST_NODE_DEVICES_ACTIVE`, or 0 on daemons before 7.3
    /// (which refuse it and know no inactive devices).
    list_flags: u32,
    /// Devices whose XML read failed last cycle.
    failing: HashSet<String>,
    /// Each device's fields as last sent: unchanged ones are `retained`
    /// between full refreshes (stream sinks skip them).
    sent: HashMap<String, Vec<Field>>,
    logged: LogOnce,
}

/// The cycle re-reads everything when this much of the interval has
/// passed since the last full refresh (ticks come a little early or late).
fn full_refresh_due(last: Option<Instant>, interval: Duration, now: Instant) -> bool {
    last.is_none_or(|t| now.duration_since(t) + interval / 10 >= interval)
}

impl NodeDevicesCollector {
    pub(crate) fn new(ctx: CollectorContext, settings: Settings) -> Self {
        // Counters run on when a reload rebuilds the collector.
        let report = ctx.registry.keep(ctx.stats.name, NodeDevicesReport::default);
        let permits = Arc::new(tokio::sync::Semaphore::new(settings.reads_in_flight.max(1)));
        Self {
            ctx,
            domains_matter: Arc::new(AtomicBool::new(settings.wants_assignments)),
            settings,
            report,
            stale: Arc::default(),
            devices: HashMap::new(),
            listed: Vec::new(),
            domains: HashMap::new(),
            domain_busy: BusySet::default(),
            domain_permits: permits,
            device_job: Arc::default(),
            last_full: None,
            generation: None,
            list_flags: LIST_ACTIVE,
            sent: HashMap::new(),
            failing: HashSet::new(),
            logged: LogOnce::default(),
        }
    }

    pub(crate) fn listener(&self, wake: Wake) -> Arc<dyn Listener> {
        Arc::new(NodeDevicesListener { wake, stale: self.stale.clone(), domains_matter: self.domains_matter.clone() })
    }

    /// Lists the devices and reads the XML of those due, until `deadline`.
    /// `Ok(false)`: the daemon has no node device driver.
    async fn refresh_devices(
        &mut self,
        session: &Session,
        full: bool,
        stale: HashSet<String>,
        deadline: Instant,
    ) -> Result<bool, CollectError> {
        if self.device_job.load(Ordering::Acquire) {
            NodeDevicesReport::count(&self.report.skipped[DEVICE], 1);
            tracing::debug!(collector = SOURCE, "the previous device job is still running; devices as last read");
            return Ok(true);
        }
        // Re-read: everything (full), else new devices, those events named
        // and the capacity devices.
        let known: HashSet<String> = self.devices.keys().cloned().collect();
        let mut due: HashSet<String> = stale;
        due.extend(
            self.devices.values().filter(|d| d.sriov.is_some() || !d.mdev_types.is_empty()).map(|d| d.name.clone()),
        );
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<DeviceMsg>();
        let cancel = Arc::new(AtomicBool::new(false));
        let (s, manager, flags, bounds, max) = (
            session.clone(),
            self.ctx.manager.clone(),
            self.list_flags,
            self.settings.bounds,
            self.settings.max_devices,
        );
        let job_cancel = cancel.clone();
        // Marked until the job ends, or is dropped unstarted with the future.
        let running = JobMark::new(&self.device_job);
        let job = self.ctx.tracker.run(move || -> Result<u32, LibvirtError> {
            let _running = running;
            let (list, flags) = match s.conn.list_all_node_devices(flags) {
                Ok(l) => (l, flags),
                // Daemons before 7.3 know no ACTIVE filter (nor inactive devices).
                Err(e) if flags != 0 && e.is_unsupported_flags() => (s.conn.list_all_node_devices(0)?, 0),
                Err(e) => {
                    manager.note_error(&s, &e);
                    return Err(e);
                }
            };
            let mut named: Vec<(String, crate::libvirt::nodedev::NodeDevice)> =
                list.into_iter().map(|d| (d.name(), d)).collect();
            named.sort_by(|a, b| a.0.cmp(&b.0));
            let mut cuts = Cuts { devices: named.len().saturating_sub(max) as u64, ..Cuts::default() };
            named.truncate(max);
            for (n, _) in named.iter_mut() {
                if n.len() > bounds.max_string_bytes {
                    *n = bounded(n, bounds.max_string_bytes, &mut cuts);
                }
            }
            let _ = tx.send(DeviceMsg::Listed(named.iter().map(|(n, _)| n.clone()).collect(), cuts));
            for (name, dev) in named {
                if job_cancel.load(Ordering::Acquire) {
                    break;
                }
                if !(full || !known.contains(&name) || due.contains(&name)) {
                    continue;
                }
                let read = match dev.xml_desc() {
                    Ok(x) => {
                        let mut cuts = Cuts::default();
                        parse_node_device(&x, &bounds, &mut cuts).map(|f| Box::new((f, cuts))).map_err(ReadError::Parse)
                    }
                    Err(e) if is_no_node_device(&e) => Err(ReadError::Vanished),
                    Err(e) => {
                        if s.conn.lost(&e) {
                            manager.note_error(&s, &e);
                            return Err(e);
                        }
                        Err(ReadError::Libvirt(e))
                    }
                };
                if tx.send(DeviceMsg::Read(name, read)).is_err() {
                    break;
                }
            }
            Ok(flags)
        });
        tokio::pin!(job);
        let mut listed: Option<Vec<String>> = None;
        let mut fresh: HashMap<String, DeviceFacts> = HashMap::new();
        let mut vanished: HashSet<String> = HashSet::new();
        let mut failing: HashSet<String> = HashSet::new();
        let mut finished: Option<Result<u32, LibvirtError>> = None;
        let sleep = tokio::time::sleep_until(deadline.into());
        tokio::pin!(sleep);
        let mut job_done = false;
        loop {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(DeviceMsg::Listed(names, cuts)) => {
                        self.report.cuts(&cuts);
                        listed = Some(names);
                    }
                    Some(DeviceMsg::Read(name, r)) => {
                        NodeDevicesReport::count(&self.report.reads[DEVICE], 1);
                        match r {
                            Ok(read) => {
                                let (mut facts, cuts) = *read;
                                self.report.cuts(&cuts);
                                // The listing's name is the key, whatever the XML says.
                                facts.name = name.clone();
                                fresh.insert(name, facts);
                            }
                            Err(ReadError::Vanished) => {
                                vanished.insert(name);
                            }
                            Err(ReadError::Libvirt(e)) => {
                                NodeDevicesReport::count(&self.report.errors[DEVICE], 1);
                                // A device that goes away (a guest's tap) fails its
                                // read before it leaves the listing: a problem only
                                // when it fails again the next cycle.
                                if self.failing.contains(&name) && self.logged.first(&format!("device {name}: {}", e.code)) {
                                    tracing::warn!(collector = SOURCE, device = %name, error = %e, "cannot read the node device's XML; it keeps what was known of it (logged once per device and error)");
                                } else {
                                    tracing::debug!(collector = SOURCE, device = %name, error = %e, "cannot read the node device's XML");
                                }
                                failing.insert(name);
                            }
                            Err(ReadError::Parse(m)) => {
                                NodeDevicesReport::count(&self.report.errors[DEVICE], 1);
                                if self.logged.first(&format!("device {name}: parse")) {
                                    tracing::warn!(collector = SOURCE, device = %name, problem = %m, "node device XML not understood; it keeps what was known of it (logged once per device)");
                                }
                            }
                        }
                    }
                    // The job ended and dropped its sender: take its result.
                    None => {
                        if !job_done {
                            finished = Some((&mut job).await?);
                        }
                        break;
                    }
                },
                r = &mut job, if !job_done => {
                    job_done = true;
                    finished = Some(r?);
                }
                _ = &mut sleep => {
                    cancel.store(true, Ordering::Release);
                    NodeDevicesReport::count(&self.report.timeouts[DEVICE], 1);
                    if let Some(held_back) = WARNINGS.allow("device budget") {
                        tracing::warn!(collector = SOURCE, budget = ?(self.settings.timeout / 2), repeats_not_logged = held_back, "node device reads past the cycle's budget (half its timeout); devices not read keep what was known of them");
                    }
                    break;
                }
            }
        }
        match finished {
            Some(Ok(flags)) => self.list_flags = flags,
            Some(Err(e)) if e.is_unsupported() => {
                if self.logged.first("no nodedev driver") {
                    tracing::warn!(collector = SOURCE, error = %e, "the libvirt daemon has no node device driver (Debian: libvirt-daemon-driver-nodedev); no node device figures");
                }
                self.devices.clear();
                self.listed.clear();
                return Ok(false);
            }
            Some(Err(e)) if listed.is_none() => return Err(e.into()),
            // Lost mid-way: what was read stands; the manager reconnects.
            Some(Err(_)) | None => {}
        }
        let Some(listed) = listed else {
            // Past the budget before the listing came: devices as last read.
            return Ok(true);
        };
        self.failing = failing;
        let present: HashSet<&str> = listed.iter().map(String::as_str).filter(|n| !vanished.contains(*n)).collect();
        self.devices.retain(|n, _| present.contains(n.as_str()));
        self.devices.extend(fresh);
        self.listed = listed.into_iter().filter(|n| !vanished.contains(n)).collect();
        Ok(true)
    }

    /// Lists the running domains and reads the XML of those due, each on
    /// its own blocking thread, until `deadline`.
    async fn refresh_domains(
        &mut self,
        session: &Session,
        full: bool,
        stale: &HashSet<String>,
        deadline: Instant,
    ) -> Result<(), CollectError> {
        let s = session.clone();
        let manager = self.ctx.manager.clone();
        let filter = self.ctx.filter.clone();
        let max = self.settings.bounds.max_string_bytes;
        let domains = self
            .ctx
            .tracker
            .run(move || {
                s.conn
                    .list_all_domains(LIST_ACTIVE_DOMAINS)
                    .map(|doms| doms.into_iter().filter(|d| filter.allows(&d.name())).collect::<Vec<Domain>>())
                    .inspect_err(|e| manager.note_error(&s, e))
            })
            .await??;
        let listed: HashSet<String> = domains.iter().map(|d| d.uuid()).collect();
        self.domains.retain(|u, _| listed.contains(u));
        let mut set = tokio::task::JoinSet::new();
        let mut skipped = 0u64;
        for dom in domains {
            let uuid = dom.uuid();
            let due = full || stale.contains(&uuid) || !self.domains.contains_key(&uuid);
            if !due {
                continue;
            }
            let Some(mark) = self.domain_busy.mark(uuid.clone()) else {
                skipped += 1;
                continue;
            };
            let (tracker, permits, bounds) =
                (self.ctx.tracker.clone(), self.domain_permits.clone(), self.settings.bounds);
            set.spawn(async move {
                let _permit = permits.acquire_owned().await;
                tracker
                    .run_isolated(move || {
                        let _mark = mark;
                        let mut cuts = Cuts::default();
                        let name = bounded(&dom.name(), max, &mut cuts);
                        let r = dom.xml_desc(0).map(|x| parse_domain_hostdevs(&x, &bounds, &mut cuts));
                        (uuid, name, r, cuts)
                    })
                    .await
                    .ok()
            });
        }
        NodeDevicesReport::count(&self.report.skipped[DOMAIN], skipped);
        let deadline = tokio::time::Instant::from_std(deadline);
        loop {
            match tokio::time::timeout_at(deadline, set.join_next()).await {
                Ok(Some(Ok(Some((uuid, name, r, cuts))))) => {
                    NodeDevicesReport::count(&self.report.reads[DOMAIN], 1);
                    self.report.cuts(&cuts);
                    match r {
                        Ok(Ok(hostdevs)) => {
                            self.domains.insert(uuid, DomainEntry { name, hostdevs });
                        }
                        Err(e) if e.is_no_domain() || e.is_operation_invalid() => {
                            self.domains.remove(&uuid);
                        }
                        Err(e) => {
                            NodeDevicesReport::count(&self.report.errors[DOMAIN], 1);
                            if session.conn.lost(&e) {
                                self.ctx.manager.note_error(session, &e);
                                set.detach_all();
                                return Err(e.into());
                            }
                            tracing::debug!(collector = SOURCE, domain = %name, error = %e, "cannot read the domain's XML; its host devices stay as last read");
                        }
                        Ok(Err(m)) => {
                            NodeDevicesReport::count(&self.report.errors[DOMAIN], 1);
                            tracing::debug!(collector = SOURCE, domain = %name, problem = %m, "domain XML not understood; its host devices stay as last read");
                        }
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => {
                    let late = set.len() as u64;
                    NodeDevicesReport::count(&self.report.timeouts[DOMAIN], late);
                    tracing::debug!(
                        collector = SOURCE,
                        late,
                        "domain XML reads past the cycle's budget (a hung QEMU?); their host devices stay as last read"
                    );
                    // The reads go on and keep their domains marked busy.
                    set.detach_all();
                    break;
                }
            }
        }
        Ok(())
    }

    fn take_stale(&self) -> (HashSet<String>, HashSet<String>, bool) {
        match self.stale.lock() {
            Ok(mut s) => {
                let overflow = std::mem::take(&mut s.overflow);
                (std::mem::take(&mut s.devices), std::mem::take(&mut s.domains), overflow)
            }
            Err(_) => (HashSet::new(), HashSet::new(), true),
        }
    }

    fn record(&self, name: String, uuid: String, fields: Vec<Field>, time: SystemTime) -> Record {
        Record {
            object: Some(ObjectRef { name: name.into(), uuid: uuid.into() }),
            fields,
            ..Record::new(&self.ctx.identity, RecordKind::of(&NODE_DEVICE), time)
        }
    }
}

impl Collector for NodeDevicesCollector {
    fn name(&self) -> &'static str {
        SOURCE
    }

    fn collect(&mut self) -> BoxFuture<'_, Result<Batch, CollectError>> {
        Box::pin(self.collect_once())
    }
}

impl NodeDevicesCollector {
    async fn collect_once(&mut self) -> Result<Batch, CollectError> {
        let started = Instant::now();
        let session = self.ctx.manager.current().ok_or(CollectError::NotConnected)?;
        let (stale_devices, stale_domains, overflow) = self.take_stale();
        let reconnected = self.generation != Some(session.generation);
        let full = reconnected || overflow || full_refresh_due(self.last_full, self.settings.interval, started);
        let timeout = self.settings.timeout;
        if !self.refresh_devices(&session, full, stale_devices, started + timeout / 2).await? {
            self.generation = Some(session.generation);
            self.sent.clear();
            return Ok(Batch { source: SOURCE, snapshot: true, ..Default::default() });
        }
        let has_pf = self.devices.values().any(|d| d.sriov.is_some());
        let need_domains = self.settings.wants_assignments || has_pf;
        self.domains_matter.store(need_domains, Ordering::Relaxed);
        if need_domains {
            self.refresh_domains(&session, full, &stale_domains, started + timeout * 3 / 4).await?;
        } else {
            self.domains.clear();
        }
        self.generation = Some(session.generation);
        if full {
            self.last_full = Some(started);
        }
        let facts: Vec<DeviceFacts> = self.listed.iter().filter_map(|n| self.devices.get(n).cloned()).collect();
        let mut holders: Vec<DomainHostdevs> = self
            .domains
            .iter()
            .map(|(uuid, e)| DomainHostdevs { name: &e.name, uuid, hostdevs: &e.hostdevs })
            .collect();
        // The same order every cycle: unchanged records stay unchanged.
        holders.sort_by(|a, b| (a.name, a.uuid).cmp(&(b.name, b.uuid)));
        let mut cuts = Cuts::default();
        let built = build(&facts, need_domains.then_some(holders.as_slice()), &mut cuts);
        self.report.cuts(&cuts);
        let time = SystemTime::now();
        let mut batch = Batch { source: SOURCE, snapshot: true, ..Default::default() };
        let mut sent = HashMap::with_capacity(built.len());
        for r in built {
            let fields: Vec<Field> = r
                .fields
                .into_iter()
                .map(|(k, v): (String, TypedValue)| Field {
                    unit: unit_of(&NODE_DEVICE, &k, &v),
                    key: Arc::from(k),
                    value: v,
                })
                .collect();
            let unchanged = !full && self.sent.get(&r.name) == Some(&fields);
            sent.insert(r.name.clone(), fields.clone());
            let record = self.record(r.name, r.uuid, fields, time);
            if unchanged {
                batch.retained.push(record);
            } else {
                batch.records.push(record);
            }
        }
        self.sent = sent;
        Ok(batch)
    }
}

/// The node devices collector in the registry.
pub(crate) struct NodeDevicesPlugin;

impl CollectorPlugin for NodeDevicesPlugin {
    type Config = NodeDevicesConfig;
    const NAME: &'static str = SOURCE;
    const INTERVAL: Option<Duration> = Some(Duration::from_secs(300));
    const KINDS: &'static [&'static KindSpec] = &[&NODE_DEVICE];
    const METRICS: &'static [MetricDesc] = METRICS;

    fn build(&self, cfg: &NodeDevicesConfig, ctx: &mut BuildContext) -> anyhow::Result<Built> {
        let settings = Settings {
            interval: ctx.schedule.interval,
            timeout: ctx.schedule.timeout,
            bounds: Bounds {
                max_string_bytes: cfg.max_string_bytes,
                max_mdev_types: cfg.max_mdev_types,
                max_vfs: MAX_VFS,
                max_hostdevs: MAX_HOSTDEVS,
            },
            max_devices: cfg.max_devices,
            reads_in_flight: cfg.domain_reads_in_flight,
            wants_assignments: ctx.consumers.records || ctx.selection.enabled(Some(&NODE_DEVICE_DETAIL)),
        };
        let c = NodeDevicesCollector::new(ctx.ctx.clone(), settings);
        let listener = c.listener(ctx.wake.clone());
        Ok(Built { collector: Box::new(c), listener: Some(listener) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_refresh_each_interval_with_slack_for_early_ticks() {
        let t0 = Instant::now();
        let i = Duration::from_secs(300);
        assert!(full_refresh_due(None, i, t0));
        assert!(!full_refresh_due(Some(t0), i, t0 + Duration::from_secs(5)));
        assert!(full_refresh_due(Some(t0), i, t0 + Duration::from_secs(299)));
        assert!(full_refresh_due(Some(t0), i, t0 + Duration::from_secs(400)));
    }

    #[test]
    fn device_events_always_wake_domain_events_only_when_assignments_matter() {
        use crate::events::typed::{DomainId, Lifecycle, LifecycleCause, ObjectChange};
        let stats = crate::selfmon::CollectorStats::new(SOURCE, Duration::from_secs(300));
        let matter = Arc::new(AtomicBool::new(false));
        let l = NodeDevicesListener {
            wake: Wake::counted(stats.clone()),
            stale: Arc::default(),
            domains_matter: matter.clone(),
        };
        let d = DomainId { name: "d", uuid: "u-1" };
        let life = |event| Event::Lifecycle(d, Lifecycle { event, cause: LifecycleCause::Other });
        l.on_event(&Event::NodeDevice { name: "mdev_x", change: ObjectChange::Started });
        l.on_event(&life(LifecycleEvent::Started));
        assert_eq!(stats.wakes(), 1, "no PF and no detail: domain events do not matter");
        matter.store(true, Ordering::Relaxed);
        l.on_event(&life(LifecycleEvent::Started));
        l.on_event(&life(LifecycleEvent::Suspended));
        l.on_event(&Event::DeviceRemoved(d));
        l.on_event(&life(LifecycleEvent::Stopped));
        assert_eq!(stats.wakes(), 4, "start, unplug, stop; a pause changes no assignment");
        let s = l.stale.lock().unwrap();
        assert_eq!(s.devices, HashSet::from(["mdev_x".to_string()]));
        assert_eq!(s.domains, HashSet::from(["u-1".to_string()]));
    }

    #[tokio::test]
    async fn a_device_job_clears_its_mark_when_done_or_dropped_unstarted() {
        let flag = Arc::new(AtomicBool::new(false));
        let tracker = crate::collectors::blocking::CallTracker::default();
        let mark = JobMark::new(&flag);
        let unstarted = tracker.run(move || drop(mark));
        assert!(flag.load(Ordering::Acquire));
        drop(unstarted);
        assert!(!flag.load(Ordering::Acquire), "a job never started must not block later cycles");
        let mark = JobMark::new(&flag);
        tracker.run(move || drop(mark)).await.unwrap();
        assert!(!flag.load(Ordering::Acquire));
    }

    #[test]
    fn events_mark_names_until_a_bound_then_everything() {
        let stale = Mutex::new(Stale::default());
        Stale::mark(&stale, |s| &mut s.devices, "pci_0000_00_02_0");
        assert!(stale.lock().unwrap().devices.contains("pci_0000_00_02_0"));
        for i in 0..MAX_STALE + 1 {
            Stale::mark(&stale, |s| &mut s.domains, &format!("u{i}"));
        }
        let s = stale.lock().unwrap();
        assert!(s.overflow && s.domains.is_empty());
    }
}
