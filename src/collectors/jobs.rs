//! Domain jobs (migration, save, dump, backup, snapshot...): the running job
//! of every active domain, and the last completed job of every domain, read
//! with `virDomainGetJobStats`.
//!
//! A job shorter than the interval is still seen once: libvirt keeps the
//! completed job's statistics, and they are read without consuming them
//! (`KEEP_COMPLETED`), reported as a record once, and kept on view in the
//! Prometheus snapshot for `completed_retention`. Job events trigger an
//! immediate collection through the controller's `Wake`.

use std::collections::{HashMap, HashSet};
use std::hash::Hasher;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustc_hash::FxHasher;

use super::{CollectError, Collector, CollectorContext};
use crate::libvirt::jobs::{JobStats, FLAG_COMPLETED, FLAG_KEEP_COMPLETED, JOB_NONE};
use crate::libvirt::node::LIST_ACTIVE;
use crate::libvirt::typed_params::KeyInterner;
use crate::libvirt::{LibvirtError, TypedValue};
use crate::record::{Batch, DomainRef, Field, Record, RecordKind, SCHEMA};
use crate::stat_keys::unit_of;

pub const SOURCE: &str = "jobs";

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
pub struct CompletedEvent {
    pub name: String,
    pub uuid: String,
    pub params: Vec<(std::sync::Arc<str>, TypedValue)>,
}

/// Where the events subsystem leaves `job_completed` events for this
/// collector: their statistics are the completed job's, so they are reported
/// at once, without asking libvirt (which may still be busy with the domain).
pub type JobInbox = Arc<Mutex<Vec<CompletedEvent>>>;

struct Completed {
    fingerprint: u64,
    first_seen: Instant,
    /// `None` once the retention has passed (the fingerprint stays, so the
    /// same job is never reported twice).
    record: Option<Record>,
}

/// Job reads run at once at most (each is one or two calls for one domain).
const PARALLEL_READS: usize = 4;

pub struct JobsCollector {
    ctx: CollectorContext,
    retention: Duration,
    /// How long a collection waits for per-domain reads; reads still running
    /// then (a hung QEMU) finish in the background and their domain is
    /// skipped until they do.
    read_deadline: Duration,
    completed: HashMap<String, Completed>,
    busy: Arc<Mutex<HashSet<String>>>,
    inbox: JobInbox,
    /// Running jobs of the last full read, kept on view when a collection
    /// only reports completed jobs from events.
    last_active: Vec<Record>,
    /// Problems already logged on this connection (each is logged once).
    logged: HashSet<String>,
    generation: u64,
    /// The daemon refuses KEEP_COMPLETED (libvirt < 6.0): reading completed
    /// stats would consume them for other tools, so they are not read.
    completed_unsupported: bool,
    /// The driver has no job statistics at all: nothing is asked.
    unsupported: bool,
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
fn read_domain(dom: &crate::libvirt::Domain, active: bool, read_completed: bool) -> DomainRead {
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
            Err(e) if e.code as u32 == virt_sys::VIR_ERR_NO_SUPPORT => {
                out.unsupported = true;
                return out;
            }
            // Shut off between the listing and this call: no running job.
            Err(e) if e.code as u32 == virt_sys::VIR_ERR_OPERATION_INVALID => {}
            Err(e) => out.problems.push(format!("running job of {}: {e}", jobs.name)),
        }
    }
    if read_completed {
        match dom.job_stats(FLAG_COMPLETED | FLAG_KEEP_COMPLETED, &mut names) {
            Ok(js) if js.job_type != JOB_NONE => jobs.completed = Some(js),
            Ok(_) => {}
            Err(e) if e.is_no_domain() => return out,
            Err(e) if e.code as u32 == virt_sys::VIR_ERR_NO_SUPPORT => out.unsupported = true,
            Err(e) if e.is_unsupported() => out.keep_unsupported = true,
            Err(e) => out.problems.push(format!("completed job of {}: {e}", jobs.name)),
        }
    }
    out.jobs = Some(jobs);
    out
}

impl JobsCollector {
    pub fn new(ctx: CollectorContext, retention: Duration, read_deadline: Duration) -> Self {
        Self {
            ctx,
            retention,
            read_deadline,
            completed: HashMap::new(),
            busy: Arc::default(),
            inbox: Arc::default(),
            last_active: Vec::new(),
            logged: HashSet::new(),
            generation: 0,
            completed_unsupported: false,
            unsupported: false,
        }
    }

    /// For the events subsystem: completed jobs from `job_completed` events.
    pub fn inbox(&self) -> JobInbox {
        self.inbox.clone()
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
        fields.push(Field {
            key: "type".into(),
            unit: unit_of(RecordKind::DomainJob, "type", &job_type),
            value: job_type,
        });
        for (key, value) in params {
            let unit = unit_of(RecordKind::DomainJob, &key, &value);
            fields.push(Field { key, value, unit });
        }
        Record {
            schema: SCHEMA,
            kind: RecordKind::DomainJob,
            time,
            host: self.ctx.identity.host.clone(),
            libvirt_uri: self.ctx.identity.uri.clone(),
            domain: Some(DomainRef { name: name.into(), uuid: uuid.into(), info: None }),
            pool: None,
            event: None,
            fields,
        }
    }

    fn log_once(&mut self, what: String) {
        if self.logged.insert(what.clone()) {
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

    /// Reads every domain's jobs, several at a time, each on its own
    /// blocking thread: one domain that does not answer holds up only itself.
    async fn read_all(&self, domains: Vec<crate::libvirt::Domain>, active: HashSet<String>) -> Vec<DomainRead> {
        let sem = Arc::new(tokio::sync::Semaphore::new(PARALLEL_READS));
        let mut set = tokio::task::JoinSet::new();
        let read_completed = !self.completed_unsupported;
        for dom in domains {
            let uuid = dom.uuid();
            {
                let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
                if !busy.insert(uuid.clone()) {
                    continue; // an earlier read of this domain is still stuck
                }
            }
            let (sem, tracker, busy) = (sem.clone(), self.ctx.tracker.clone(), self.busy.clone());
            let is_active = active.contains(&uuid);
            set.spawn(async move {
                let _permit = sem.acquire_owned().await;
                tracker
                    .run_isolated(move || {
                        let r = read_domain(&dom, is_active, read_completed);
                        busy.lock().unwrap_or_else(|e| e.into_inner()).remove(&uuid);
                        r
                    })
                    .await
            });
        }
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + self.read_deadline;
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
}

impl Collector for JobsCollector {
    fn name(&self) -> &'static str {
        SOURCE
    }

    async fn collect(&mut self) -> Result<Batch, CollectError> {
        let time = SystemTime::now();
        let now = Instant::now();
        // Completed jobs told by events are reported at once, without a read.
        let told: Vec<CompletedEvent> = std::mem::take(&mut *self.inbox.lock().unwrap_or_else(|e| e.into_inner()));
        if !told.is_empty() {
            let mut records = Vec::new();
            for ev in told {
                let fp = fingerprint(&ev.params.iter().map(|(k, v)| (k.as_ref(), v)).collect::<Vec<_>>());
                // libvirt reports a finished job as "completed" unless it says otherwise.
                let failed = ev.params.iter().any(|(k, v)| &**k == "success" && *v == TypedValue::Boolean(false));
                let job_type = if failed { 4 } else { 3 };
                if let Some(r) = self.note_completed(&ev.name, &ev.uuid, job_type, ev.params, fp, (now, time)) {
                    records.push(r);
                }
            }
            let mut retained = self.last_active.clone();
            retained.extend(self.retained(now));
            return Ok(Batch { source: SOURCE, snapshot: true, records, retained, ttl: None });
        }

        let session = self.ctx.manager.current().ok_or(CollectError::NotConnected)?;
        if session.generation != self.generation {
            self.generation = session.generation;
            self.logged.clear();
            self.completed_unsupported = false;
            self.unsupported = false;
        }
        if self.unsupported {
            return Ok(Batch { source: SOURCE, snapshot: true, ..Default::default() });
        }
        let s = session.clone();
        let manager = self.ctx.manager.clone();
        let filter = self.ctx.filter.clone();
        let (domains, active) = self
            .ctx
            .tracker
            .run(move || {
                let listed = s.conn.list_all_domains(0).and_then(|all| {
                    let active: HashSet<String> =
                        s.conn.list_all_domains(LIST_ACTIVE)?.iter().map(|d| d.uuid()).collect();
                    Ok((all.into_iter().filter(|d| filter.allows(&d.name())).collect::<Vec<_>>(), active))
                });
                listed.inspect_err(|e: &LibvirtError| manager.note_error(&s, e))
            })
            .await??;
        let present: HashSet<String> = domains.iter().map(|d| d.uuid()).collect();
        let reads = self.read_all(domains, active).await;

        let mut records = Vec::new();
        let mut active_records = Vec::new();
        for read in reads {
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
            if let Some(js) = d.active {
                let params = js.params.params.into_iter().map(|p| (p.name, p.value)).collect();
                active_records.push(self.record(&d.name, &d.uuid, js.job_type, params, time));
            }
            if let Some(js) = d.completed {
                let fp = fingerprint_of(&js);
                let params = js.params.params.into_iter().map(|p| (p.name, p.value)).collect();
                if let Some(r) = self.note_completed(&d.name, &d.uuid, js.job_type, params, fp, (now, time)) {
                    records.push(r);
                }
            }
        }
        self.completed.retain(|uuid, _| present.contains(uuid));
        records.extend(active_records.iter().cloned());
        self.last_active = active_records;
        let retained = self.retained(now);
        Ok(Batch { source: SOURCE, snapshot: true, records, retained, ttl: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_ignores_parameter_order_but_not_values() {
        let (a, b) = (TypedValue::ULLong(16), TypedValue::Int(2));
        let one = fingerprint(&[("time_elapsed", &a), ("operation", &b)]);
        assert_eq!(one, fingerprint(&[("operation", &b), ("time_elapsed", &a)]));
        assert_ne!(one, fingerprint(&[("operation", &b), ("time_elapsed", &TypedValue::ULLong(17))]));
    }
}
