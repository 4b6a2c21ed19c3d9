//! Domain statistics: one `virConnectGetAllDomainStats` call per cycle for
//! every stats group the daemon supports, with NOWAIT so that a domain whose
//! job lock is held (a hung QEMU, a migration) gives what it can without
//! blocking the others.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

pub(crate) mod config;
pub(crate) mod info;
pub mod metrics;

use super::blocking::{read_each, BusySet};
use super::controller::Wake;
use super::{BoxFuture, BuildContext, Built, CollectError, Collector, CollectorContext, CollectorPlugin};
use crate::events::typed::{Event, LifecycleEvent, Listener};
use crate::libvirt::health::{BlockJobInfo, VcpuPlace};
use crate::libvirt::stats::{
    group_by_name, group_names, DomainStats, StatsCapabilities, ALL_GROUPS, FLAG_BACKING, FLAG_NOWAIT,
};
use crate::libvirt::typed_params::{KeyFilter, KeyInterner};
use crate::libvirt::{Domain, LibvirtError, Session};
use crate::record::kind::KindSpec;
use crate::record::mapping::unit_of;
use crate::record::{Batch, DomainRef, Field, Record, RecordKind};
use crate::selection::Selection;
use crate::selfmon::{find, ChunkMiss, MetricDesc, MetricWriter, Report};
use crate::util::throttle::LogOnce;
use crate::value::TypedValue;
use config::DomainStatsConfig;
use info::{parse_domain, InfoCache, Parsed};
use metrics::{BACKING_CHAIN, BLOCK_JOB_TYPES, DOMAIN_BLOCK_JOB, DOMAIN_STATS, VCPU_MAPPING};

pub const SOURCE: &str = "domain_stats";

/// Domain XML reads per cycle at most, so a host with hundreds of new
/// domains spreads the work over a few cycles.
const MAX_INFO_READS_PER_CYCLE: usize = 64;
/// XML reads side by side, each on its own blocking thread.
const INFO_READS_IN_FLIGHT: usize = 4;

/// Pause before re-asking for records cut short by a busy domain job.
const PARTIAL_RETRY_DELAY: Duration = Duration::from_millis(30);

#[derive(Clone)]
pub struct Settings {
    pub groups: u32,
    pub backing_chain: bool,
    pub nowait: bool,
    /// How long a cycle waits for a connection in progress (at start-up)
    /// before reporting "not connected"; kept well inside the deadline.
    pub connect_wait: Duration,
    /// Domains per call once the host has more (0: one call for all).
    pub chunk_size: usize,
    pub chunks_in_flight: usize,
    /// How long a cycle waits for its chunks; chunks still running then
    /// (a domain whose QEMU hangs) finish in the background, and the cycle
    /// reports the others. Kept inside the cycle's deadline.
    pub chunk_wait: Duration,
    /// Which stat keys are decoded (`None`: all). Keys no sink exports and
    /// no record consumer needs are skipped before their values are read.
    pub key_filter: Option<KeyFilter>,
    /// vCPU and IOThread pinnings kept per domain XML.
    pub max_pinnings: usize,
    /// Read where each vCPU runs (`virDomainGetVcpus`) every cycle.
    pub vcpu_mapping: bool,
}

/// The metric this collector reports besides the common ones.
pub const METRICS: &[MetricDesc] = &[
    MetricDesc::gauge(
        "virtpulse_stats_group_enabled",
        "Per requested stats group: 1 if the daemon supports it and it is collected, 0 if not supported.",
    ),
    MetricDesc::counter(
        "virtpulse_domain_xml_reads_total",
        "Domain XMLs read (each domain every collectors.domain_stats.metadata_refresh, and after its events).",
    ),
    MetricDesc::counter(
        "virtpulse_domain_xml_cut_total",
        "vCPU and IOThread pinnings in domain XMLs not kept (past collectors.domain_stats.max_pinnings per domain).",
    ),
    MetricDesc::counter(
        "virtpulse_domain_reads_failed_total",
        "Per-domain reads of the domain stats collector that failed, by what (block_job, vcpu_mapping): only that domain's series of it are missing.",
    ),
];

/// Which requested stats groups the daemon supports (from the last probe),
/// and what the per-domain reads cut or missed.
#[derive(Debug, Default)]
struct GroupsReport {
    wanted: AtomicU64,
    supported: AtomicU64,
    xml_reads: AtomicU64,
    xml_cut: AtomicU64,
    block_job_failed: AtomicU64,
    vcpu_mapping_failed: AtomicU64,
}

impl Report for GroupsReport {
    fn metrics(&self, out: &mut dyn MetricWriter) {
        let cut = self.xml_cut.load(Ordering::Relaxed) as f64;
        out.sample(&find(METRICS, "virtpulse_domain_xml_cut_total"), &[], cut);
        let reads = self.xml_reads.load(Ordering::Relaxed) as f64;
        out.sample(&find(METRICS, "virtpulse_domain_xml_reads_total"), &[], reads);
        for (what, n) in [("block_job", &self.block_job_failed), ("vcpu_mapping", &self.vcpu_mapping_failed)] {
            let n = n.load(Ordering::Relaxed) as f64;
            out.sample(&find(METRICS, "virtpulse_domain_reads_failed_total"), &[("what", what)], n);
        }
        let (wanted, supported) = (self.wanted.load(Ordering::Relaxed), self.supported.load(Ordering::Relaxed));
        if supported == 0 {
            return; // not probed yet
        }
        let desc = find(METRICS, "virtpulse_stats_group_enabled");
        for g in ALL_GROUPS.iter().filter(|g| wanted & u64::from(g.bit) != 0) {
            let enabled = if supported & u64::from(g.bit) != 0 { 1.0 } else { 0.0 };
            out.sample(&desc, &[("group", g.name)], enabled);
        }
    }
}

/// Collects at once when a domain starts, stops or changes, and has its XML
/// read again when its definition or devices changed.
struct DomainStatsListener {
    wake: Wake,
    stale_info: Arc<std::sync::Mutex<HashSet<String>>>,
    /// Disks an event said have a block job running, by domain UUID.
    block_jobs: BlockJobs,
}

/// Disks known to have a block job (from events), by domain UUID.
type BlockJobs = Arc<std::sync::Mutex<HashMap<String, HashSet<String>>>>;

/// Domains whose block jobs are remembered at most (from events).
const MAX_JOB_DOMAINS: usize = 10_000;

impl DomainStatsListener {
    fn invalidate(&self, uuid: &str) {
        if let Ok(mut s) = self.stale_info.lock() {
            s.insert(uuid.to_string());
        }
    }
}

impl Listener for DomainStatsListener {
    fn on_event(&self, ev: &Event<'_>) {
        match *ev {
            Event::Lifecycle(d, change) => {
                if change.event == LifecycleEvent::Defined {
                    // A new definition: the XML may be new.
                    self.invalidate(d.uuid);
                }
                self.wake.now();
            }
            Event::BlockJob { domain, disk, status, .. } => {
                let mut jobs = self.block_jobs.lock().unwrap_or_else(|e| e.into_inner());
                if status.ended() {
                    if let Some(disks) = jobs.get_mut(domain.uuid) {
                        disks.remove(disk);
                        if disks.is_empty() {
                            jobs.remove(domain.uuid);
                        }
                    }
                } else if !disk.is_empty() && (jobs.len() < MAX_JOB_DOMAINS || jobs.contains_key(domain.uuid)) {
                    jobs.entry(domain.uuid.to_string()).or_default().insert(disk.to_string());
                }
                drop(jobs);
                // The XML shows the mirror (or no longer): read it again.
                self.invalidate(domain.uuid);
                self.wake.now();
            }
            Event::MetadataChanged(d)
            | Event::Tunable(d, _)
            | Event::DeviceAdded(d)
            | Event::DeviceRemoved(d)
            | Event::BalloonChanged(d) => {
                self.invalidate(d.uuid);
                self.wake.now();
            }
            _ => {}
        }
    }
}

pub struct DomainStatsCollector {
    ctx: CollectorContext,
    groups: Arc<GroupsReport>,
    settings: Settings,
    caps: Option<(u64, StatsCapabilities)>,
    info: InfoCache,
    warned_undecoded: LogOnce,
    /// Keys in each running domain's last record, to spot records that
    /// NOWAIT cut short because someone else held the domain's job.
    key_counts: HashMap<String, usize>,
    /// Parameter names shared across collections (see `KeyInterner`).
    names: Option<KeyInterner>,
    /// Spare interners for chunk calls running side by side.
    chunk_names: Vec<KeyInterner>,
    /// Domains the last cycle found (decides whether to chunk).
    last_count: usize,
    /// Domains of this cycle's chunks that were late: listed, so their
    /// cached info is kept, though they have no record this time.
    late: HashSet<String>,
    /// Domains whose XML read is still running (`virDomainGetXMLDesc`
    /// waits for a hung QEMU's job): not asked again until it returns.
    info_busy: BusySet,
    /// XML reads running at once.
    info_permits: Arc<tokio::sync::Semaphore>,
    /// Disks with a block job, from events (the XML tells the rest).
    block_jobs: BlockJobs,
    /// Domains with a block-job or vCPU read still running.
    reads_busy: BusySet,
    reads_permits: Arc<tokio::sync::Semaphore>,
}

impl DomainStatsCollector {
    pub fn new(ctx: CollectorContext, settings: Settings, info: InfoCache) -> Self {
        // Counters run on when a reload rebuilds the collector.
        let groups = ctx.registry.keep(ctx.stats.name, GroupsReport::default);
        groups.wanted.store(u64::from(settings.groups), Ordering::Relaxed);
        ctx.stats.set_chunked();
        Self {
            ctx,
            groups,
            settings,
            caps: None,
            info,
            warned_undecoded: LogOnce::default(),
            key_counts: HashMap::new(),
            names: None,
            chunk_names: Vec::new(),
            last_count: 0,
            late: HashSet::new(),
            info_busy: BusySet::default(),
            info_permits: Arc::new(tokio::sync::Semaphore::new(INFO_READS_IN_FLIGHT)),
            block_jobs: Arc::default(),
            reads_busy: BusySet::default(),
            reads_permits: Arc::new(tokio::sync::Semaphore::new(INFO_READS_IN_FLIGHT)),
        }
    }

    fn new_names(&self) -> KeyInterner {
        KeyInterner::with_filter(self.settings.key_filter.clone())
    }

    /// What tells this collector about domain changes; `wake` starts its
    /// cycle.
    pub fn listener(&self, wake: Wake) -> Arc<dyn Listener> {
        Arc::new(DomainStatsListener {
            wake,
            stale_info: self.info.invalidation_handle(),
            block_jobs: self.block_jobs.clone(),
        })
    }

    fn flags(&self) -> u32 {
        let mut f = 0;
        if self.settings.nowait {
            f |= FLAG_NOWAIT;
        }
        if self.settings.backing_chain {
            f |= FLAG_BACKING;
        }
        f
    }

    /// Probes once per connection which groups and flags the daemon accepts.
    async fn capabilities(&mut self, session: &Session) -> Result<StatsCapabilities, CollectError> {
        if let Some((gen, caps)) = self.caps {
            if gen == session.generation {
                return Ok(caps);
            }
        }
        let (wanted, flags) = (self.settings.groups, self.flags());
        let s = session.clone();
        let manager = self.ctx.manager.clone();
        let caps = self
            .ctx
            .tracker
            .run(move || s.conn.probe_stats(wanted, flags).inspect_err(|e| manager.note_error(&s, e)))
            .await??;
        let missing = wanted & !caps.groups;
        tracing::info!(
            groups = ?group_names(caps.groups),
            unsupported = ?group_names(missing),
            nowait = caps.flags & FLAG_NOWAIT != 0,
            backing = caps.flags & FLAG_BACKING != 0,
            "probed domain stats support"
        );
        self.groups.supported.store(u64::from(caps.groups), Ordering::Relaxed);
        self.caps = Some((session.generation, caps));
        Ok(caps)
    }

    /// Runs `f` with the key interner on a blocking thread. A call stuck
    /// past the deadline keeps its interner; the next call starts a new one.
    async fn with_names<T, F>(&mut self, f: F) -> Result<T, CollectError>
    where
        F: FnOnce(&mut KeyInterner) -> T + Send + 'static,
        T: Send + 'static,
    {
        let mut names = self.names.take().unwrap_or_else(|| self.new_names());
        let (result, names) = self
            .ctx
            .tracker
            .run(move || {
                let r = f(&mut names);
                (r, names)
            })
            .await?;
        self.names = Some(names);
        Ok(result)
    }

    async fn fetch_stats(
        &mut self,
        session: &Session,
        caps: StatsCapabilities,
        started: Instant,
    ) -> Result<Vec<DomainStats>, CollectError> {
        let chunk = self.settings.chunk_size;
        let chunked = chunk > 0 && self.last_count > chunk;
        if self.ctx.filter.is_all() && !chunked {
            let s = session.clone();
            let manager = self.ctx.manager.clone();
            let stats = self
                .with_names(move |names| {
                    s.conn.all_domain_stats(caps.groups, caps.flags, names).inspect_err(|e| manager.note_error(&s, e))
                })
                .await??;
            self.last_count = stats.len();
            return Ok(stats);
        }
        // Only the selected domains are asked for, so excluded domains cost
        // the daemon nothing.
        let s = session.clone();
        let manager = self.ctx.manager.clone();
        let filter = self.ctx.filter.clone();
        let domains = self
            .ctx
            .tracker
            .run(move || {
                s.conn
                    .list_all_domains(0)
                    .map(|doms| {
                        doms.into_iter().filter(|d| filter.is_all() || filter.allows(&d.name())).collect::<Vec<_>>()
                    })
                    .inspect_err(|e| manager.note_error(&s, e))
            })
            .await??;
        self.last_count = domains.len();
        if chunk == 0 || domains.len() <= chunk {
            let s = session.clone();
            let manager = self.ctx.manager.clone();
            return Ok(self
                .with_names(move |names| {
                    s.conn
                        .domain_list_stats(&domains, caps.groups, caps.flags, names)
                        .inspect_err(|e| manager.note_error(&s, e))
                })
                .await??);
        }
        self.fetch_chunks(session, caps, domains, started).await
    }

    /// Reads the domains in chunks, a few calls at a time, each on its own
    /// blocking thread, until `chunk_wait` has passed since `started`.
    async fn fetch_chunks(
        &mut self,
        session: &Session,
        caps: StatsCapabilities,
        domains: Vec<Domain>,
        started: Instant,
    ) -> Result<Vec<DomainStats>, CollectError> {
        let mut pending: VecDeque<(usize, Vec<Domain>)> = VecDeque::new();
        let mut domains = domains.into_iter().peekable();
        while domains.peek().is_some() {
            pending.push_back((pending.len(), domains.by_ref().take(self.settings.chunk_size).collect()));
        }
        type ChunkResult = (usize, Result<Vec<DomainStats>, LibvirtError>, KeyInterner);
        let mut set: tokio::task::JoinSet<Result<ChunkResult, CollectError>> = tokio::task::JoinSet::new();
        let start_next =
            |this: &mut Self, set: &mut tokio::task::JoinSet<_>, pending: &mut VecDeque<(usize, Vec<Domain>)>| {
                let Some((i, chunk)) = pending.pop_front() else { return };
                let mut names = this.chunk_names.pop().unwrap_or_else(|| this.new_names());
                let (s, tracker, manager) = (session.clone(), this.ctx.tracker.clone(), this.ctx.manager.clone());
                set.spawn(async move {
                    tracker
                        .run(move || {
                            let r = s.conn.domain_list_stats(&chunk, caps.groups, caps.flags, &mut names);
                            if let Err(e) = &r {
                                manager.note_error(&s, e);
                            }
                            (i, r, names)
                        })
                        .await
                });
            };
        // Each chunk's domains, to name those without a record this cycle.
        let mut unfinished: HashMap<usize, Vec<String>> =
            pending.iter().map(|(i, chunk)| (*i, chunk.iter().map(|d| d.uuid()).collect())).collect();
        for _ in 0..self.settings.chunks_in_flight.max(1) {
            start_next(self, &mut set, &mut pending);
        }
        let total = pending.len() + set.len();
        let deadline = tokio::time::Instant::from_std(started + self.settings.chunk_wait);
        let mut parts: Vec<(usize, Vec<DomainStats>)> = Vec::with_capacity(total);
        let mut failure = None;
        loop {
            match tokio::time::timeout_at(deadline, set.join_next()).await {
                Ok(Some(joined)) => {
                    match joined.map_err(|e| CollectError::Internal(format!("stats chunk task failed: {e}")))? {
                        Ok((i, Ok(stats), names)) => {
                            unfinished.remove(&i);
                            parts.push((i, stats));
                            self.chunk_names.push(names);
                        }
                        Ok((_, Err(e), names)) => {
                            self.chunk_names.push(names);
                            if session.conn.lost(&e) {
                                return Err(e.into());
                            }
                            self.ctx.stats.missed_chunks(ChunkMiss::Failed, 1);
                            tracing::warn!(collector = SOURCE, error = %e, "a domain stats chunk failed; its domains are left out of this cycle");
                            failure = Some(e);
                        }
                        Err(e) => return Err(e),
                    }
                    start_next(self, &mut set, &mut pending);
                }
                Ok(None) => break,
                Err(_) => {
                    let late = set.len() + pending.len();
                    self.ctx.stats.missed_chunks(ChunkMiss::Late, late as u64);
                    tracing::warn!(
                        collector = SOURCE,
                        late_chunks = late,
                        chunks = total,
                        "domain stats chunks past their deadline; their domains are left out of this cycle (a domain's QEMU may be hung)"
                    );
                    set.detach_all();
                    break;
                }
            }
        }
        self.late = unfinished.into_values().flatten().collect();
        if parts.is_empty() {
            if let Some(e) = failure {
                return Err(e.into());
            }
        }
        parts.sort_by_key(|(i, _)| *i);
        Ok(parts.into_iter().flat_map(|(_, s)| s).collect())
    }

    /// With NOWAIT, a domain whose job another client holds at that moment
    /// reports only the stats that need no QEMU monitor. Such records are
    /// asked for once more, shortly after; what is still short is exported
    /// as it is (a hung QEMU stays partial until it resumes) and counted.
    async fn retry_partial(&mut self, session: &Session, caps: StatsCapabilities, stats: &mut [DomainStats]) {
        let suspects: Vec<String> = stats
            .iter()
            .filter(|d| is_running(d) && self.key_counts.get(&d.uuid).is_some_and(|&n| d.params.params.len() < n))
            .map(|d| d.uuid.clone())
            .collect();
        if suspects.is_empty() || caps.flags & FLAG_NOWAIT == 0 {
            return;
        }
        tokio::time::sleep(PARTIAL_RETRY_DELAY).await;
        let s = session.clone();
        let again = self
            .with_names(move |names| {
                let doms: Vec<_> = suspects.iter().filter_map(|u| s.conn.lookup_domain_by_uuid(u).ok()).collect();
                s.conn.domain_list_stats(&doms, caps.groups, caps.flags, names)
            })
            .await;
        let Ok(Ok(again)) = again else { return };
        for fresh in again {
            if let Some(old) = stats.iter_mut().find(|d| d.uuid == fresh.uuid) {
                if fresh.params.params.len() > old.params.params.len() {
                    *old = fresh;
                }
            }
        }
        for d in stats.iter() {
            if is_running(d) && self.key_counts.get(&d.uuid).is_some_and(|&n| d.params.params.len() < n) {
                self.ctx.stats.partial_record();
                tracing::debug!(domain = d.name, "domain stats incomplete: its job is held (busy or hung QEMU)");
            }
        }
    }

    fn remember_key_counts(&mut self, stats: &[DomainStats]) {
        self.key_counts =
            stats.iter().filter(|d| is_running(d)).map(|d| (d.uuid.clone(), d.params.params.len())).collect();
    }

    /// Reads the XML of domains whose cached info is missing or old.
    async fn refresh_info(&mut self, session: &Session, stats: &[DomainStats], deadline: Instant) {
        let now = Instant::now();
        let busy = self.info_busy.clone();
        let mut due = self.info.due(stats.iter().map(|d| d.uuid.as_str()).filter(|u| !busy.contains(u)), now);
        if due.is_empty() {
            return;
        }
        due.truncate(MAX_INFO_READS_PER_CYCLE);
        // One blocking thread per domain, a few at a time: a read stuck on
        // a hung QEMU holds up only its own domain, and only until the
        // deadline; it stays marked busy until it returns.
        let mut set = tokio::task::JoinSet::new();
        let max_pinnings = self.settings.max_pinnings;
        for uuid in due {
            let (s, tracker, busy, permits) =
                (session.clone(), self.ctx.tracker.clone(), busy.clone(), self.info_permits.clone());
            set.spawn(async move {
                let _permit = permits.acquire_owned().await;
                let mark = busy.mark(uuid.clone())?;
                tracker
                    .run_isolated(move || {
                        let _mark = mark;
                        let r = read_info(&s, &uuid, max_pinnings);
                        (uuid, r)
                    })
                    .await
                    .ok()
            });
        }
        let deadline = tokio::time::Instant::from_std(deadline);
        loop {
            match tokio::time::timeout_at(deadline, set.join_next()).await {
                Ok(Some(Ok(Some((uuid, r))))) => match r {
                    Ok(parsed) => {
                        self.groups.xml_cut.fetch_add(parsed.cut, Ordering::Relaxed);
                        self.groups.xml_reads.fetch_add(1, Ordering::Relaxed);
                        self.info.put(uuid, parsed, now)
                    }
                    Err(e) if e.is_no_domain() => {}
                    Err(e) => tracing::debug!(uuid, error = %e, "cannot read domain info; will retry"),
                },
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => {
                    tracing::debug!(
                        collector = SOURCE,
                        left = set.len(),
                        "domain XML reads past the deadline (a hung QEMU?); their info stays as it was"
                    );
                    set.detach_all();
                    break;
                }
            }
        }
    }

    /// Per running domain, each on its own blocking call: the progress of
    /// its known block jobs (disks its XML shows mirrored, or an event said
    /// have a job) and, with `vcpu_mapping`, where its vCPUs run. Returns
    /// (uuid, name, jobs) of domains with a running job, and the vCPU
    /// places by UUID.
    #[allow(clippy::type_complexity)]
    async fn read_extras(
        &mut self,
        session: &Session,
        stats: &[DomainStats],
        deadline: Instant,
    ) -> (Vec<(String, String, Vec<(String, BlockJobInfo)>)>, HashMap<String, Vec<VcpuPlace>>) {
        let from_events = self.block_jobs.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut items = Vec::new();
        let mut names = HashMap::new();
        for d in stats.iter().filter(|d| is_running(d)) {
            let mut disks: Vec<String> = self
                .info
                .tuning(&d.uuid)
                .map(|t| t.mirrors.iter().map(|(disk, _)| disk.clone()).collect())
                .unwrap_or_default();
            for disk in from_events.get(&d.uuid).into_iter().flatten() {
                if !disks.contains(disk) {
                    disks.push(disk.clone());
                }
            }
            let vcpus = self
                .settings
                .vcpu_mapping
                .then(|| d.params.get("vcpu.maximum").and_then(|v| v.as_u64()).unwrap_or(64).max(1) as usize);
            if disks.is_empty() && vcpus.is_none() {
                continue;
            }
            names.insert(d.uuid.clone(), d.name.clone());
            items.push((d.uuid.clone(), (session.clone(), d.uuid.clone(), disks, vcpus)));
        }
        if items.is_empty() {
            return (Vec::new(), HashMap::new());
        }
        let read = read_each(
            &self.ctx.tracker,
            &self.reads_busy,
            &self.reads_permits,
            items,
            deadline,
            |(s, uuid, disks, vcpus): (Session, String, Vec<String>, Option<usize>)| {
                read_extra(&s, &uuid, &disks, vcpus)
            },
        )
        .await;
        let mut jobs = Vec::new();
        let mut places = HashMap::new();
        for (uuid, r) in read.done {
            let Ok(r) = r else { continue };
            let mut running = Vec::new();
            for (disk, j) in r.jobs {
                match j {
                    Ok(Some(info)) => running.push((disk, info)),
                    Ok(None) => {
                        // Over: forget what an event said.
                        let mut known = self.block_jobs.lock().unwrap_or_else(|e| e.into_inner());
                        if let Some(disks) = known.get_mut(&uuid) {
                            disks.remove(&disk);
                        }
                    }
                    Err(e) if e.is_no_domain() => {}
                    Err(e) => {
                        self.groups.block_job_failed.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(collector = SOURCE, uuid, disk, error = %e, "cannot read a block job");
                    }
                }
            }
            if !running.is_empty() {
                jobs.push((uuid.clone(), names.get(&uuid).cloned().unwrap_or_default(), running));
            }
            match r.vcpus {
                Some(Ok(p)) => {
                    places.insert(uuid, p);
                }
                Some(Err(e)) if !e.is_no_domain() => {
                    self.groups.vcpu_mapping_failed.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(collector = SOURCE, uuid, error = %e, "cannot read where the vCPUs run");
                }
                _ => {}
            }
        }
        (jobs, places)
    }

    fn make_record(&mut self, d: DomainStats, vcpus: Option<Vec<VcpuPlace>>, time: SystemTime) -> Record {
        for u in &d.params.undecoded {
            if self.warned_undecoded.first(&u.name) {
                tracing::warn!(
                    key = u.name,
                    type_code = u.type_code,
                    "libvirt sent a typed parameter of a type this build does not know; it is skipped (upgrade virtpulse)"
                );
            }
        }
        let info = self.info.get(&d.uuid);
        let mut extra: Vec<(String, TypedValue)> = Vec::new();
        if let Some(t) = self.info.tuning(&d.uuid) {
            t.fields(&mut extra);
        }
        if let Some(places) = vcpus {
            for p in places {
                extra.push((format!("vcpu.{}.cpu", p.vcpu), TypedValue::Int(p.cpu)));
            }
        }
        let fields = d
            .params
            .params
            .into_iter()
            .map(|p| {
                let unit = unit_of(&DOMAIN_STATS, &p.name, &p.value);
                Field { key: p.name, value: p.value, unit }
            })
            .chain(extra.into_iter().map(|(k, v)| Field {
                unit: unit_of(&DOMAIN_STATS, &k, &v),
                key: Arc::from(k),
                value: v,
            }))
            .collect();
        Record {
            domain: Some(DomainRef { name: d.name.into(), uuid: d.uuid.into(), info }),
            fields,
            ..Record::new(&self.ctx.identity, RecordKind::of(&DOMAIN_STATS), time)
        }
    }
}

/// state.state 1 = running (only running domains can have monitor stats).
fn is_running(d: &DomainStats) -> bool {
    d.params.get("state.state").and_then(|v| v.as_u64()) == Some(1)
}

fn read_info(s: &Session, uuid: &str, max_pinnings: usize) -> Result<Parsed, LibvirtError> {
    let dom = s.conn.lookup_domain_by_uuid(uuid)?;
    let xml = dom.xml_desc(0)?;
    let mut parsed = parse_domain(&xml, max_pinnings).map_err(|m| LibvirtError::new(0, m))?;
    parsed.info.persistent = dom.is_persistent().ok();
    parsed.info.autostart = dom.autostart().ok();
    Ok(parsed)
}

/// One running domain's extra reads: its block jobs (on the disks given)
/// and, when asked, where its vCPUs run.
struct ExtraRead {
    jobs: Vec<(String, Result<Option<BlockJobInfo>, LibvirtError>)>,
    vcpus: Option<Result<Vec<VcpuPlace>, LibvirtError>>,
}

fn read_extra(s: &Session, uuid: &str, disks: &[String], vcpus: Option<usize>) -> Result<ExtraRead, LibvirtError> {
    let dom = s.conn.lookup_domain_by_uuid(uuid)?;
    Ok(ExtraRead {
        jobs: disks.iter().map(|d| (d.clone(), dom.block_job_info(d))).collect(),
        vcpus: vcpus.map(|n| dom.vcpu_places(n)),
    })
}

/// A block job read, as record fields (`job.<n>.*`).
fn job_fields(jobs: &[(String, BlockJobInfo)]) -> Vec<(String, TypedValue)> {
    let mut f = vec![("job.count".to_string(), TypedValue::UInt(jobs.len() as u32))];
    for (n, (disk, j)) in jobs.iter().enumerate() {
        let name = usize::try_from(j.job_type).ok().and_then(|i| BLOCK_JOB_TYPES.get(i)).copied().unwrap_or("unknown");
        f.push((format!("job.{n}.disk"), TypedValue::String(disk.as_str().into())));
        f.push((format!("job.{n}.type"), TypedValue::Int(j.job_type)));
        f.push((format!("job.{n}.type_name"), TypedValue::String(name.into())));
        f.push((format!("job.{n}.current"), TypedValue::ULLong(j.cur)));
        f.push((format!("job.{n}.end"), TypedValue::ULLong(j.end)));
        f.push((format!("job.{n}.bandwidth"), TypedValue::ULLong(j.bandwidth)));
    }
    f
}

impl Collector for DomainStatsCollector {
    fn name(&self) -> &'static str {
        SOURCE
    }

    fn collect(&mut self) -> BoxFuture<'_, Result<Batch, CollectError>> {
        Box::pin(self.collect_once())
    }
}

impl DomainStatsCollector {
    async fn collect_once(&mut self) -> Result<Batch, CollectError> {
        let started = Instant::now();
        let session =
            self.ctx.manager.session_within(self.settings.connect_wait).await.ok_or(CollectError::NotConnected)?;
        let caps = self.capabilities(&session).await?;
        self.late.clear();
        let mut stats = self.fetch_stats(&session, caps, started).await?;
        let time = SystemTime::now();
        if !self.ctx.filter.is_all() {
            // The listing and the stats call are not atomic; re-check names.
            stats.retain(|d| self.ctx.filter.allows(&d.name));
        }
        self.retry_partial(&session, caps, &mut stats).await;
        self.remember_key_counts(&stats);
        self.refresh_info(&session, &stats, started + self.settings.chunk_wait).await;
        let (jobs, mut vcpus) = self.read_extras(&session, &stats, started + self.settings.chunk_wait).await;
        let present: HashSet<&str> =
            stats.iter().map(|d| d.uuid.as_str()).chain(self.late.iter().map(String::as_str)).collect();
        self.info.retain(&present);
        self.block_jobs.lock().unwrap_or_else(|e| e.into_inner()).retain(|u, _| present.contains(u.as_str()));
        let mut records: Vec<Record> = Vec::with_capacity(stats.len() + jobs.len());
        for (uuid, name, list) in jobs {
            records.push(Record {
                domain: Some(DomainRef { name: name.into(), uuid: uuid.into(), info: None }),
                fields: job_fields(&list)
                    .into_iter()
                    .map(|(k, v)| Field { unit: unit_of(&DOMAIN_BLOCK_JOB, &k, &v), key: Arc::from(k), value: v })
                    .collect(),
                ..Record::new(&self.ctx.identity, RecordKind::of(&DOMAIN_BLOCK_JOB), time)
            });
        }
        for d in stats {
            let places = vcpus.remove(&d.uuid);
            let r = self.make_record(d, places, time);
            records.push(r);
        }
        Ok(Batch { source: SOURCE, snapshot: true, records, lists_every_domain: true, ..Default::default() })
    }
}

/// What the domain stats collector asks libvirt for: the groups a metric
/// sink exports, plus every configured group when a sink reads whole
/// records; the backing chain only when someone shows it.
pub fn requested_stats(
    cfg: &DomainStatsConfig,
    selection: &Selection,
    consumers: super::Consumers,
) -> Result<(u32, bool), String> {
    let bit = |name: &str| group_by_name(name).map(|g| g.bit);
    let configured = cfg.groups_mask()?;
    let state = bit("state").unwrap_or(1);
    let mut wanted = state;
    if consumers.metrics {
        for g in selection.needed_groups(&DOMAIN_STATS) {
            wanted |= bit(g).unwrap_or(0);
        }
    }
    if consumers.records {
        wanted |= configured;
    }
    let backing =
        cfg.backing_chain && (consumers.records || (consumers.metrics && selection.enabled(Some(&BACKING_CHAIN))));
    Ok(((configured & wanted) | state, backing))
}

/// The domain stats collector in the registry.
pub struct DomainStatsPlugin;

impl CollectorPlugin for DomainStatsPlugin {
    type Config = DomainStatsConfig;
    const NAME: &'static str = SOURCE;
    const KINDS: &'static [&'static KindSpec] = &[&DOMAIN_STATS, &DOMAIN_BLOCK_JOB];
    const METRICS: &'static [MetricDesc] = METRICS;

    fn build(&self, cfg: &DomainStatsConfig, ctx: &mut BuildContext) -> anyhow::Result<Built> {
        let records = ctx.consumers.records;
        let (groups, backing_chain) =
            requested_stats(cfg, &ctx.selection, ctx.consumers).map_err(|m| anyhow::anyhow!(m))?;
        let key_filter: Option<KeyFilter> = if records {
            None
        } else {
            let sel = ctx.selection.clone();
            // The state keys drive the collector itself (running or not).
            Some(Arc::new(move |k: &str| k.starts_with("state.") || sel.wants_key(&DOMAIN_STATS, k)))
        };
        tracing::info!(
            groups = ?group_names(groups),
            backing_chain,
            all_fields = records,
            metrics = ?ctx.selection.enabled_switches(),
            "domain stats: what is asked of libvirt"
        );
        let timeout = ctx.schedule.timeout;
        let settings = Settings {
            groups,
            backing_chain,
            nowait: cfg.nowait,
            connect_wait: timeout / 2,
            chunk_size: cfg.chunk_size,
            chunks_in_flight: cfg.chunks_in_flight,
            chunk_wait: timeout * 3 / 4,
            key_filter,
            max_pinnings: cfg.max_pinnings,
            vcpu_mapping: ctx.selection.enabled(Some(&VCPU_MAPPING)) && (ctx.consumers.metrics || records),
        };
        let c = DomainStatsCollector::new(ctx.ctx.clone(), settings, InfoCache::new(cfg.metadata_refresh));
        let listener = c.listener(ctx.wake.clone());
        Ok(Built { collector: Box::new(c), listener: Some(listener) })
    }
}
