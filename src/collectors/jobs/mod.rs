//! Domain jobs (migration, save, dump, backup, snapshot...): the running job
//! of every active domain, and the last completed job of every domain, read
//! with `virDomainGetJobStats`.
//!
//! There is no bulk call for jobs, so reads are scheduled per domain: a
//! domain with a running job is read every cycle; a domain without one every
//! `idle_interval` (spread over it, so each cycle reads a share of the
//! host); its completed job when a running one was last seen, on its first
//! read, when an event names it, and otherwise every `COMPLETED_SWEEPS`
//! idle reads. On a host of 120 idle domains that is about 50 calls per
//! 5 s cycle instead of 240.
//!
//! A job shorter than the interval is still seen once: libvirt keeps the
//! completed job's statistics, and they are read without consuming them
//! (`KEEP_COMPLETED`), reported as a record once, and kept on view in the
//! Prometheus snapshot for `completed_retention`. Job events trigger an
//! immediate read of their domain through the controller's `Wake`.

use std::collections::{HashMap, HashSet};
use std::hash::Hasher;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustc_hash::FxHasher;

use super::blocking::BusySet;
use super::controller::Wake;
pub(crate) mod config;
pub(crate) mod metrics;

use super::{BoxFuture, BuildContext, Built, CollectError, Collector, CollectorContext, CollectorPlugin};
use crate::events::typed::{DomainId, Event, Listener};
use crate::libvirt::jobs::{JobStats, FLAG_COMPLETED, FLAG_KEEP_COMPLETED, JOB_NONE};
use crate::libvirt::typed_params::KeyInterner;
use crate::libvirt::{Domain, LibvirtError};
use crate::record::kind::KindSpec;
use crate::record::mapping::unit_of;
use crate::record::{Batch, DomainRef, Field, Record, RecordKind};
use crate::util::throttle::LogOnce;
use crate::value::TypedValue;
use config::JobsConfig;
use metrics::DOMAIN_JOB;

pub(crate) const SOURCE: &str = "jobs";

/// What one domain had to say.
#[derive(Debug)]
struct DomainJobs {
    name: String,
    uuid: String,
    active: Option<JobStats>,
    completed: Option<JobStats>,
}

/// One domain's read, with what went wrong.
#[derive(Debug, Default)]
struct DomainRead {
    /// `None` when the domain vanished between listing and reading.
    jobs: Option<DomainJobs>,
    problems: Vec<String>,
    /// The driver has no virDomainGetJobStats at all (the test driver).
    unsupported: bool,
    /// The daemon refuses KEEP_COMPLETED (libvirt < 6.0).
    keep_unsupported: bool,
}

/// A completed job as the `job_completed` event told it.
#[derive(Debug, Clone)]
pub(crate) struct CompletedEvent {
    pub name: String,
    pub uuid: String,
    pub params: Vec<(std::sync::Arc<str>, TypedValue)>,
}

/// What the events subsystem tells this collector.
#[derive(Debug, Default)]
pub(crate) struct JobNews {
    /// `job_completed` events: their statistics are the completed job's, so
    /// they are reported at once, without asking libvirt (which may still be
    /// busy with the domain).
    pub completed: Vec<CompletedEvent>,
    /// Domains (by UUID) an event says have a job now (migration iteration):
    /// read at the next cycle whatever their schedule says.
    pub read_now: HashSet<String>,
    /// A lifecycle event came (a domain defined, undefined, started or
    /// stopped): the next cycle lists the domains again.
    pub relist: bool,
}

/// Events at most held between two cycles (a storm cannot grow it).
pub(crate) const MAX_NEWS: usize = 10_000;

pub(crate) type JobInbox = Arc<Mutex<JobNews>>;

/// Turns events into news for the jobs collector: completed jobs straight
/// from `job_completed`, domains to read now after a migration iteration or
/// a lifecycle change that ends a job.
struct JobsListener {
    inbox: JobInbox,
    wake: Wake,
}

impl JobsListener {
    fn read_now(news: &mut JobNews, uuid: &str) {
        if news.read_now.len() < MAX_NEWS {
            news.read_now.insert(uuid.to_string());
        }
    }
}

impl Listener for JobsListener {
    fn on_event(&self, ev: &Event<'_>) {
        let mut news = self.inbox.lock().unwrap_or_else(|e| e.into_inner());
        match *ev {
            Event::Lifecycle(d, change) => {
                news.relist = true;
                if !change.ends_a_job() {
                    return;
                }
                // A save, snapshot or migration can be over before a poll
                // sees it running: read its completed job now.
                Self::read_now(&mut news, d.uuid)
            }
            Event::JobCompleted(DomainId { name, uuid }, params) => {
                if news.completed.len() < MAX_NEWS {
                    news.completed.push(CompletedEvent {
                        name: name.to_string(),
                        uuid: uuid.to_string(),
                        params: params.to_vec(),
                    });
                }
            }
            Event::MigrationIteration(d) => Self::read_now(&mut news, d.uuid),
            _ => return,
        }
        drop(news);
        self.wake.now();
    }
}

/// Idle reads between two reads of a domain's completed job.
const COMPLETED_SWEEPS: u32 = 4;

/// When a domain is read next.
#[derive(Debug, Clone, Copy)]
struct Due {
    running: Instant,
    /// Idle reads until the completed job is read again.
    sweep_in: u32,
    /// The last read found a running job.
    had_job: bool,
}

/// A fraction of `period` from the UUID, so domains' reads spread evenly.
fn stagger(uuid: &str, period: Duration) -> Duration {
    let mut h = FxHasher::default();
    h.write(uuid.as_bytes());
    period.mul_f64((h.finish() % 1024) as f64 / 1024.0)
}

struct Completed {
    fingerprint: u64,
    first_seen: Instant,
    /// `None` once the retention has passed (the fingerprint stays, so the
    /// same job is never reported twice).
    record: Option<Record>,
}

/// Job reads run at once at most (each is one or two calls for one domain).
const PARALLEL_READS: usize = 4;

/// The domains are listed again after this long even without a lifecycle
/// event (one lost to a full event queue, say). Between listings the
/// handles are kept: a listing every cycle cost some 26,000 instructions
/// per domain (every libvirt call on a handle formats its UUID for a debug
/// message, ~6,500 instructions in callgrind, and each listed domain took
/// four: its name, UUID, id and free).
const RELIST_EVERY: Duration = Duration::from_secs(60);

/// The domains as last listed.
struct Listing {
    /// Each says whether it ran when listed (`Domain::is_active`).
    domains: Vec<Arc<Domain>>,
    at: Instant,
    generation: u64,
}

pub(crate) struct JobsCollector {
    ctx: CollectorContext,
    retention: Duration,
    /// How often a domain without a running job is read.
    idle_interval: Duration,
    schedule: HashMap<String, Due>,
    /// How long a collection waits for per-domain reads; reads still running
    /// then (a hung QEMU) finish in the background and their domain is
    /// skipped until they do.
    read_deadline: Duration,
    /// Completed-job records not yet handed over: a cycle cut short by its
    /// deadline keeps them for the next one instead of losing them.
    unsent: Vec<Record>,
    completed: HashMap<String, Completed>,
    busy: BusySet,
    /// Turns to read, shared by the reads of one cycle (and of a cycle whose
    /// reads are still running).
    read_permits: Arc<tokio::sync::Semaphore>,
    inbox: JobInbox,
    /// Running jobs of the last full read, kept on view when a collection
    /// only reports completed jobs from events.
    last_active: Vec<Record>,
    /// Problems already logged on this connection (each is logged once).
    logged: LogOnce,
    generation: u64,
    /// The daemon refuses KEEP_COMPLETED (libvirt < 6.0): reading completed
    /// stats would consume them for other tools, so they are not read.
    completed_unsupported: bool,
    /// The driver has no job statistics at all: nothing is asked.
    unsupported: bool,
    listing: Option<Listing>,
}

/// Hash of everything a completed job reported: the same job reads the same,
/// whether it came from polling or from the job-completed event. Order-free
/// (a sum of per-parameter hashes): the event and the read list the same
/// parameters in different orders.
fn fingerprint(params: &[(impl AsRef<str>, &TypedValue)]) -> u64 {
    params.iter().fold(0u64, |acc, (name, value)| {
        let mut h = FxHasher::default();
        h.write(name.as_ref().as_bytes());
        match value {
            TypedValue::Int(v) => h.write_i64(i64::from(*v)),
            TypedValue::UInt(v) => h.write_i64(i64::from(*v)),
            TypedValue::LLong(v) => h.write_i64(*v),
            TypedValue::ULLong(v) => h.write_i64(*v as i64),
            TypedValue::Double(v) => h.write_u64(v.to_bits()),
            TypedValue::Boolean(v) => h.write_u8(u8::from(*v)),
            TypedValue::String(v) => h.write(v.as_bytes()),
        }
        acc.wrapping_add(h.finish())
    })
}

fn fingerprint_of(js: &JobStats) -> u64 {
    let v: Vec<(&str, &TypedValue)> = js.params.params.iter().map(|p| (&*p.name, &p.value)).collect();
    fingerprint(&v)
}

/// Bounded or unbounded: a job still running.
fn is_running(job_type: i32) -> bool {
    matches!(job_type, 1 | 2)
}

/// Reads one domain's running and last completed job.
fn read_domain(dom: &Domain, active: bool, read_completed: bool) -> DomainRead {
    let mut names = KeyInterner::default();
    let mut out = DomainRead::default();
    let mut jobs = DomainJobs { name: dom.name(), uuid: dom.uuid(), active: None, completed: None };
    if active {
        match dom.job_stats(0, &mut names) {
            Ok(js) if js.job_type == JOB_NONE => {}
            Ok(js) if is_running(js.job_type) => jobs.active = Some(js),
            // Read just as the job ended, libvirt hands over the finished
            // job (type completed/failed/cancelled): it goes the completed
            // way, where it is de-duplicated, not out as a running job.
            Ok(js) => jobs.completed = Some(js),
            Err(e) if e.is_no_domain() => return out,
            Err(e) if e.is_no_support() => {
                out.unsupported = true;
                return out;
            }
            // Shut off between the listing and this call: no running job.
            Err(e) if e.is_operation_invalid() => {}
            Err(e) => out.problems.push(format!("running job of {}: {e}", jobs.name)),
        }
    }
    if read_completed {
        match dom.job_stats(FLAG_COMPLETED | FLAG_KEEP_COMPLETED, &mut names) {
            Ok(js) if js.job_type != JOB_NONE => jobs.completed = Some(js),
            Ok(_) => {}
            Err(e) if e.is_no_domain() => return out,
            Err(e) if e.is_no_support() => out.unsupported = true,
            Err(e) if e.is_unsupported_flags() => out.keep_unsupported = true,
            Err(e) => out.problems.push(format!("completed job of {}: {e}", jobs.name)),
        }
    }
    out.jobs = Some(jobs);
    out
}

impl JobsCollector {
    pub(crate) fn new(
        ctx: CollectorContext,
        retention: Duration,
        read_deadline: Duration,
        idle_interval: Duration,
    ) -> Self {
        Self {
            ctx,
            retention,
            idle_interval,
            schedule: HashMap::new(),
            read_deadline,
            unsent: Vec::new(),
            completed: HashMap::new(),
            busy: BusySet::default(),
            read_permits: Arc::new(tokio::sync::Semaphore::new(PARALLEL_READS)),
            inbox: Arc::default(),
            last_active: Vec::new(),
            logged: LogOnce::default(),
            generation: 0,
            completed_unsupported: false,
            unsupported: false,
            listing: None,
        }
    }

    /// What tells this collector about job events; `wake` starts its cycle.
    pub(crate) fn listener(&self, wake: Wake) -> Arc<dyn Listener> {
        Arc::new(JobsListener { inbox: self.inbox.clone(), wake })
    }

    fn record(
        &self,
        name: &str,
        uuid: &str,
        job_type: i32,
        params: Vec<(Arc<str>, TypedValue)>,
        time: SystemTime,
    ) -> Record {
        let mut fields = Vec::with_capacity(params.len() + 1);
        let job_type = TypedValue::Int(job_type);
        fields.push(Field { key: "type".into(), unit: unit_of(&DOMAIN_JOB, "type", &job_type), value: job_type });
        for (key, value) in params {
            let unit = unit_of(&DOMAIN_JOB, &key, &value);
            fields.push(Field { key, value, unit });
        }
        Record {
            domain: Some(DomainRef { name: name.into(), uuid: uuid.into(), info: None }),
            fields,
            ..Record::new(&self.ctx.identity, RecordKind::of(&DOMAIN_JOB), time)
        }
    }

    fn log_once(&mut self, what: String) {
        if self.logged.first(&what) {
            tracing::warn!(collector = SOURCE, "{what} (logged once per connection)");
        }
    }

    /// Records a completed job unless it was reported before; returns the
    /// record when it is news.
    fn note_completed(
        &mut self,
        name: &str,
        uuid: &str,
        job_type: i32,
        params: Vec<(Arc<str>, TypedValue)>,
        fp: u64,
        (now, time): (Instant, SystemTime),
    ) -> Option<Record> {
        if self.completed.get(uuid).is_some_and(|c| c.fingerprint == fp) {
            return None;
        }
        tracing::debug!(collector = SOURCE, domain = name, keys = ?params.iter().map(|(k, _)| k).collect::<Vec<_>>(), "new completed job");
        let rec = self.record(name, uuid, job_type, params, time);
        self.completed
            .insert(uuid.to_string(), Completed { fingerprint: fp, first_seen: now, record: Some(rec.clone()) });
        Some(rec)
    }

    /// Completed jobs still on view (reported in earlier batches).
    fn retained(&mut self, now: Instant) -> Vec<Record> {
        let mut out = Vec::new();
        for c in self.completed.values_mut() {
            if now.duration_since(c.first_seen) >= self.retention {
                c.record = None;
            } else if c.first_seen != now {
                if let Some(r) = &c.record {
                    out.push(r.clone());
                }
            }
        }
        out
    }

    /// Reads the given domains' jobs (running: the first flag, completed:
    /// the second), several at a time, each on its own blocking thread: one
    /// domain that does not answer holds up only itself.
    async fn read_all(&self, reads: Vec<(Arc<Domain>, bool, bool)>, deadline: tokio::time::Instant) -> Vec<DomainRead> {
        let sem = self.read_permits.clone();
        let mut set = tokio::task::JoinSet::new();
        for (dom, running, completed) in reads {
            let (sem, tracker, busy) = (sem.clone(), self.ctx.tracker.clone(), self.busy.clone());
            set.spawn(async move {
                let _permit = sem.acquire_owned().await;
                // Marked busy only once the read really starts: a read
                // dropped while it waited for its turn leaves no mark.
                let uuid = dom.uuid();
                let Some(guard) = busy.mark(uuid) else {
                    return Err(CollectError::Internal("an earlier read of this domain is still stuck".into()));
                };
                tracker
                    .run_isolated(move || {
                        let _guard = guard;
                        read_domain(&dom, running, completed)
                    })
                    .await
            });
        }
        let mut out = Vec::new();
        while let Ok(Some(joined)) = tokio::time::timeout_at(deadline, set.join_next()).await {
            if let Ok(Ok(r)) = joined {
                out.push(r);
            }
        }
        if !set.is_empty() {
            tracing::warn!(
                collector = SOURCE,
                still_running = set.len(),
                "job reads past their deadline; those domains are skipped until they answer"
            );
            set.detach_all();
        }
        out
    }

    /// Holds completed-job records until a cycle hands them over (bounded).
    fn keep_unsent(&mut self, records: Vec<Record>) {
        let room = MAX_NEWS.saturating_sub(self.unsent.len());
        if records.len() > room {
            self.log_once(format!(
                "more than {MAX_NEWS} completed-job records waiting to be sent; {} dropped",
                records.len() - room
            ));
        }
        self.unsent.extend(records.into_iter().take(room));
    }

    /// Reports the completed jobs events told of; returns their records.
    /// Returns them, the domains to read now, and whether to list again.
    fn take_news(&mut self, now: Instant, time: SystemTime) -> (Vec<Record>, HashSet<String>, bool) {
        let news = std::mem::take(&mut *self.inbox.lock().unwrap_or_else(|e| e.into_inner()));
        let mut records = Vec::new();
        for ev in news.completed {
            let fp = fingerprint(&ev.params.iter().map(|(k, v)| (k.as_ref(), v)).collect::<Vec<_>>());
            // libvirt reports a finished job as "completed" unless it says otherwise.
            let failed = ev.params.iter().any(|(k, v)| &**k == "success" && *v == TypedValue::Boolean(false));
            let job_type = if failed { 4 } else { 3 };
            if let Some(r) = self.note_completed(&ev.name, &ev.uuid, job_type, ev.params, fp, (now, time)) {
                records.push(r);
            }
        }
        (records, news.read_now, news.relist)
    }

    /// Which of the domains to read this cycle, and what of each.
    fn plan_reads(
        &mut self,
        domains: &[Arc<Domain>],
        read_now: &HashSet<String>,
        now: Instant,
    ) -> Vec<(Arc<Domain>, bool, bool)> {
        let can_complete = !self.completed_unsupported;
        let mut reads = Vec::new();
        for dom in domains {
            let uuid = dom.uuid();
            let is_active = dom.is_active();
            let told = read_now.contains(&uuid);
            let (running, completed) = match self.schedule.get(&uuid) {
                // First sight: both, to know what was there.
                None => (is_active, can_complete),
                Some(due) => {
                    let idle_due = now >= due.running;
                    (
                        is_active && (due.had_job || idle_due || told),
                        can_complete && (due.had_job || told || (idle_due && due.sweep_in == 0)),
                    )
                }
            };
            if running || completed {
                reads.push((dom.clone(), running, completed));
            }
        }
        reads
    }

    /// After a domain's read: when it is read next.
    fn reschedule(&mut self, uuid: &str, had_job: bool, read_completed: bool, now: Instant) {
        let idle = self.idle_interval;
        let due = self.schedule.entry(uuid.to_string()).or_insert_with(|| Due {
            running: now + stagger(uuid, idle),
            sweep_in: COMPLETED_SWEEPS,
            had_job,
        });
        if !had_job && now >= due.running {
            due.running = now + idle;
            due.sweep_in = if read_completed { COMPLETED_SWEEPS } else { due.sweep_in.saturating_sub(1) };
        } else if read_completed {
            due.sweep_in = COMPLETED_SWEEPS;
        }
        due.had_job = had_job;
    }
}

impl Collector for JobsCollector {
    fn name(&self) -> &'static str {
        SOURCE
    }

    fn collect(&mut self) -> BoxFuture<'_, Result<Batch, CollectError>> {
        Box::pin(self.collect_once())
    }
}

impl JobsCollector {
    async fn collect_once(&mut self) -> Result<Batch, CollectError> {
        let time = SystemTime::now();
        let now = Instant::now();
        // Completed jobs told by events are reported at once, without a read;
        // the polling below still runs.
        let (news, read_now, relist) = self.take_news(now, time);
        self.keep_unsent(news);

        let Some(session) = self.ctx.manager.current() else {
            if self.unsent.is_empty() {
                return Err(CollectError::NotConnected);
            }
            let records = std::mem::take(&mut self.unsent);
            let mut retained = self.last_active.clone();
            retained.extend(self.retained(now));
            return Ok(Batch { source: SOURCE, snapshot: true, records, retained, ..Default::default() });
        };
        if session.generation != self.generation {
            self.generation = session.generation;
            self.logged.forget();
            self.completed_unsupported = false;
            self.unsupported = false;
        }
        if self.unsupported {
            let records = std::mem::take(&mut self.unsent);
            return Ok(Batch { source: SOURCE, snapshot: true, records, ..Default::default() });
        }
        let deadline = tokio::time::Instant::from_std(now + self.read_deadline);
        let listing = match self.listing.take() {
            Some(l) if !relist && l.generation == session.generation && l.at.elapsed() < RELIST_EVERY => l,
            _ => {
                let s = session.clone();
                let manager = self.ctx.manager.clone();
                let filter = self.ctx.filter.clone();
                let listing = self.ctx.tracker.run(move || {
                    // One listing: whether a domain runs comes with it (its
                    // id). The handles cache it and the UUID here, on this
                    // blocking thread.
                    let listed = s.conn.list_all_domains(0).map(|all| {
                        all.into_iter()
                            .filter(|d| filter.allows(&d.name()))
                            .inspect(|d| {
                                d.is_active();
                                d.uuid();
                            })
                            .map(Arc::new)
                            .collect::<Vec<Arc<Domain>>>()
                    });
                    listed.inspect_err(|e: &LibvirtError| manager.note_error(&s, e))
                });
                // Past the cycle's deadline the listing is cut off as a
                // timeout; records waiting in `unsent` go with the next cycle.
                let domains = listing.await??;
                Listing { domains, at: Instant::now(), generation: session.generation }
            }
        };
        let present: HashSet<String> = listing.domains.iter().map(|d| d.uuid()).collect();
        let reads = self.plan_reads(&listing.domains, &read_now, now);
        self.listing = Some(listing);
        let asked: HashMap<String, bool> = reads.iter().map(|(d, _, completed)| (d.uuid(), *completed)).collect();
        let results = self.read_all(reads, deadline).await;

        // Running jobs of domains not read this cycle stay as they were.
        let mut active_records: Vec<Record> = self
            .last_active
            .iter()
            .filter(|r| r.domain.as_ref().is_some_and(|d| present.contains(&*d.uuid) && !asked.contains_key(&*d.uuid)))
            .cloned()
            .collect();
        for read in results {
            if read.unsupported {
                self.unsupported = true;
                self.log_once("the libvirt driver has no job statistics (virDomainGetJobStats); no job figures on this connection".into());
            }
            if read.keep_unsupported {
                self.completed_unsupported = true;
                self.log_once("this libvirt cannot read completed job stats without consuming them (KEEP_COMPLETED needs libvirt >= 6.0); only running jobs are reported".into());
            }
            for p in read.problems {
                self.log_once(p);
            }
            let Some(d) = read.jobs else { continue };
            let had_job = d.active.is_some();
            if let Some(js) = d.active {
                let params = js.params.params.into_iter().map(|p| (p.name, p.value)).collect();
                active_records.push(self.record(&d.name, &d.uuid, js.job_type, params, time));
            }
            let read_completed = asked.get(&d.uuid).copied().unwrap_or(false);
            if let Some(js) = d.completed {
                let fp = fingerprint_of(&js);
                let params = js.params.params.into_iter().map(|p| (p.name, p.value)).collect();
                if let Some(r) = self.note_completed(&d.name, &d.uuid, js.job_type, params, fp, (now, time)) {
                    self.keep_unsent(vec![r]);
                }
            }
            self.reschedule(&d.uuid, had_job, read_completed, now);
        }
        self.completed.retain(|uuid, _| present.contains(uuid));
        self.schedule.retain(|uuid, _| present.contains(uuid));
        let mut records = std::mem::take(&mut self.unsent);
        records.extend(active_records.iter().cloned());
        self.last_active = active_records;
        let retained = self.retained(now);
        Ok(Batch { source: SOURCE, snapshot: true, records, retained, ..Default::default() })
    }
}

/// The jobs collector in the registry.
pub(crate) struct JobsPlugin;

impl CollectorPlugin for JobsPlugin {
    type Config = JobsConfig;
    const NAME: &'static str = SOURCE;
    const INTERVAL: Option<Duration> = Some(Duration::from_secs(5));
    const KINDS: &'static [&'static KindSpec] = &[&DOMAIN_JOB];

    fn build(&self, cfg: &JobsConfig, ctx: &mut BuildContext) -> anyhow::Result<Built> {
        let s = ctx.schedule;
        // Per-domain reads wait at most three quarters of the deadline, so
        // the cycle reports what it has before the deadline drops it.
        let c = JobsCollector::new(
            ctx.ctx.clone(),
            cfg.completed_retention,
            s.timeout * 3 / 4,
            cfg.idle_interval(s.interval),
        );
        let listener = c.listener(ctx.wake.clone());
        Ok(Built { collector: Box::new(c), listener: Some(listener) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::blocking::CallTracker;
    use crate::collectors::{CollectorContext, Identity};
    use crate::libvirt::manager::ManagerOptions;
    use crate::libvirt::ConnectionManager;
    use crate::selfmon::{CollectorStats, Registry};

    fn lifecycle(event: i32, detail: i32) -> crate::libvirt::events::RawEvent {
        use crate::libvirt::events::{Family, RawEvent};
        RawEvent {
            family: Family::Domain,
            event_id: 0,
            name: "lifecycle",
            object_name: "vm".into(),
            object_uuid: "u".into(),
            fields: vec![(Arc::from("event"), TypedValue::Int(event)), (Arc::from("detail"), TypedValue::Int(detail))],
            time: std::time::SystemTime::now(),
            at: std::time::Instant::now(),
        }
    }

    #[test]
    fn a_save_asks_the_jobs_collector_for_that_domain() {
        let inbox: JobInbox = Default::default();
        let listener = JobsListener { inbox: inbox.clone(), wake: Wake::default() };
        listener.on_event(&Event::of(&lifecycle(5, 4)));
        assert!(inbox.lock().unwrap().read_now.contains("u"));
        listener.on_event(&Event::of(&lifecycle(5, 1)));
        assert_eq!(inbox.lock().unwrap().read_now.len(), 1);
        assert!(inbox.lock().unwrap().relist, "a lifecycle event has the domains listed again");
    }

    #[test]
    fn any_lifecycle_event_has_the_domains_listed_again_without_a_read() {
        let inbox: JobInbox = Default::default();
        let listener = JobsListener { inbox: inbox.clone(), wake: Wake::default() };
        // Started (booted): the listing changed; no job ended.
        listener.on_event(&Event::of(&lifecycle(2, 0)));
        let news = inbox.lock().unwrap();
        assert!(news.relist);
        assert!(news.read_now.is_empty());
    }

    /// A jobs collector on libvirt's test driver (one domain, "test").
    fn on_test_driver() -> (JobsCollector, Arc<ConnectionManager>) {
        let manager = ConnectionManager::new(ManagerOptions {
            uri: "test:///default".into(),
            read_only: true,
            keepalive_interval: Duration::ZERO,
            keepalive_count: 0,
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(1),
        });
        manager.connect_once().unwrap();
        let ctx = CollectorContext {
            manager: manager.clone(),
            tracker: CallTracker::default(),
            registry: Registry::new(),
            stats: CollectorStats::new(SOURCE, Duration::from_secs(5)),
            identity: Identity { host: "h".into(), uri: "test:///default".into() },
            filter: Arc::default(),
        };
        (JobsCollector::new(ctx, Duration::from_secs(60), Duration::from_millis(200), Duration::from_secs(15)), manager)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_read_dropped_while_waiting_its_turn_leaves_no_busy_mark() {
        let (c, manager) = on_test_driver();
        let session = manager.current().unwrap();
        let domains = || session.conn.list_all_domains(0).unwrap();
        // Every turn taken: the read waits for one, and the cycle's deadline
        // drops the whole collection (and its reads) meanwhile.
        let turns = c.read_permits.clone().acquire_many_owned(PARALLEL_READS as u32).await.unwrap();
        let reads: Vec<_> = domains().into_iter().map(|d| (Arc::new(d), true, true)).collect();
        assert_eq!(reads.len(), 1);
        assert!(tokio::time::timeout(
            Duration::from_millis(20),
            c.read_all(reads, tokio::time::Instant::now() + Duration::from_secs(5))
        )
        .await
        .is_err());
        drop(turns);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(c.busy.is_empty(), "the domain was marked busy by a read that never started");
        let reads: Vec<_> = domains().into_iter().map(|d| (Arc::new(d), true, true)).collect();
        assert_eq!(
            c.read_all(reads, tokio::time::Instant::now() + Duration::from_secs(5)).await.len(),
            1,
            "the domain is read again"
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn completed_jobs_from_events_do_not_skip_the_poll() {
        let (mut c, _manager) = on_test_driver();
        c.inbox.lock().unwrap().completed.push(CompletedEvent {
            name: "test".into(),
            uuid: "6695eb01-f6a4-8304-79aa-97f2502e193f".into(),
            params: vec![(Arc::from("time_elapsed"), TypedValue::ULLong(5))],
        });
        let batch = c.collect().await.unwrap();
        assert_eq!(batch.records.len(), 1, "the event's completed job is reported");
        // The poll ran too: it found that the test driver has no job stats.
        assert!(c.unsupported, "the cycle with a completed-job event still polled the domains");
    }

    #[test]
    fn fingerprint_ignores_parameter_order_but_not_values() {
        let (a, b) = (TypedValue::ULLong(16), TypedValue::Int(2));
        let one = fingerprint(&[("time_elapsed", &a), ("operation", &b)]);
        assert_eq!(one, fingerprint(&[("operation", &b), ("time_elapsed", &a)]));
        assert_ne!(one, fingerprint(&[("operation", &b), ("time_elapsed", &TypedValue::ULLong(17))]));
    }
}
