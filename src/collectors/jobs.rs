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

/// The result of one pass over the domains.
#[derive(Debug, Default)]
struct Pass {
    domains: Vec<DomainJobs>,
    /// Calls that failed for another reason than the domain vanishing.
    problems: Vec<String>,
    /// The driver has no virDomainGetJobStats at all (the test driver).
    unsupported: bool,
    /// The daemon refuses KEEP_COMPLETED (libvirt < 6.0).
    keep_unsupported: bool,
}

struct Completed {
    fingerprint: u64,
    first_seen: Instant,
    /// `None` once the retention has passed (the fingerprint stays, so the
    /// same job is never reported twice).
    record: Option<Record>,
}

pub struct JobsCollector {
    ctx: CollectorContext,
    retention: Duration,
    completed: HashMap<String, Completed>,
    names: Option<KeyInterner>,
    /// Problems already logged on this connection (each is logged once).
    logged: HashSet<String>,
    generation: u64,
    /// The daemon refuses KEEP_COMPLETED (libvirt < 6.0): reading completed
    /// stats would consume them for other tools, so they are not read.
    completed_unsupported: bool,
    /// The driver has no job statistics at all: nothing is asked.
    unsupported: bool,
}

/// Hash of everything a completed job reported: the same job reads the same.
fn fingerprint(js: &JobStats) -> u64 {
    let mut h = FxHasher::default();
    h.write_i32(js.job_type);
    for p in &js.params.params {
        h.write(p.name.as_bytes());
        match &p.value {
            TypedValue::Int(v) => h.write_i64(i64::from(*v)),
            TypedValue::UInt(v) => h.write_u64(u64::from(*v)),
            TypedValue::LLong(v) => h.write_i64(*v),
            TypedValue::ULLong(v) => h.write_u64(*v),
            TypedValue::Double(v) => h.write_u64(v.to_bits()),
            TypedValue::Boolean(v) => h.write_u8(u8::from(*v)),
            TypedValue::String(v) => h.write(v.as_bytes()),
        }
    }
    h.finish()
}

/// Reads one domain's jobs. A domain that vanished since the listing is
/// skipped (`Ok(None)`); other failures are reported, not fatal.
fn read_domain(
    dom: &crate::libvirt::Domain,
    active: bool,
    read_completed: bool,
    names: &mut KeyInterner,
    pass: &mut Pass,
) -> Option<DomainJobs> {
    let (name, uuid) = (dom.name(), dom.uuid());
    let mut out = DomainJobs { name, uuid, active: None, completed: None };
    if active && !pass.unsupported {
        match dom.job_stats(0, names) {
            Ok(js) if js.job_type != JOB_NONE => out.active = Some(js),
            Ok(_) => {}
            Err(e) if e.is_no_domain() => return None,
            Err(e) if e.code as u32 == virt_sys::VIR_ERR_NO_SUPPORT => pass.unsupported = true,
            // Shut off between the listing and this call: no running job.
            Err(e) if e.code as u32 == virt_sys::VIR_ERR_OPERATION_INVALID => {}
            Err(e) => pass.problems.push(format!("running job of {}: {e}", out.name)),
        }
    }
    if read_completed && !pass.unsupported && !pass.keep_unsupported {
        match dom.job_stats(FLAG_COMPLETED | FLAG_KEEP_COMPLETED, names) {
            Ok(js) if js.job_type != JOB_NONE => out.completed = Some(js),
            Ok(_) => {}
            Err(e) if e.is_no_domain() => return None,
            Err(e) if e.code as u32 == virt_sys::VIR_ERR_NO_SUPPORT => pass.unsupported = true,
            Err(e) if e.is_unsupported() => pass.keep_unsupported = true,
            Err(e) => pass.problems.push(format!("completed job of {}: {e}", out.name)),
        }
    }
    Some(out)
}

impl JobsCollector {
    pub fn new(ctx: CollectorContext, retention: Duration) -> Self {
        Self {
            ctx,
            retention,
            completed: HashMap::new(),
            names: None,
            logged: HashSet::new(),
            generation: 0,
            completed_unsupported: false,
            unsupported: false,
        }
    }

    fn record(&self, name: &str, uuid: &str, js: JobStats, time: SystemTime) -> Record {
        let mut fields = Vec::with_capacity(js.params.params.len() + 1);
        let job_type = TypedValue::Int(js.job_type);
        fields.push(Field {
            key: "type".into(),
            unit: unit_of(RecordKind::DomainJob, "type", &job_type),
            value: job_type,
        });
        for p in js.params.params {
            let unit = unit_of(RecordKind::DomainJob, &p.name, &p.value);
            fields.push(Field { key: p.name, value: p.value, unit });
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
}

impl Collector for JobsCollector {
    fn name(&self) -> &'static str {
        SOURCE
    }

    async fn collect(&mut self) -> Result<Batch, CollectError> {
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
        let read_completed = !self.completed_unsupported;
        let mut names = self.names.take().unwrap_or_default();
        let (pass, names) = self
            .ctx
            .tracker
            .run(move || {
                let listed = s.conn.list_all_domains(0).and_then(|all| {
                    let active: HashSet<String> =
                        s.conn.list_all_domains(LIST_ACTIVE)?.iter().map(|d| d.uuid()).collect();
                    Ok((all, active))
                });
                let result = listed.map(|(all, active)| {
                    let mut pass = Pass::default();
                    for d in all.iter().filter(|d| filter.allows(&d.name())) {
                        let is_active = active.contains(&d.uuid());
                        if let Some(j) = read_domain(d, is_active, read_completed, &mut names, &mut pass) {
                            pass.domains.push(j);
                        }
                    }
                    pass
                });
                (result.inspect_err(|e: &LibvirtError| manager.note_error(&s, e)), names)
            })
            .await?;
        self.names = Some(names);
        let pass = pass?;
        if pass.unsupported {
            self.unsupported = true;
            self.log_once(
                "the libvirt driver has no job statistics (virDomainGetJobStats); no job figures on this connection"
                    .into(),
            );
        }
        if pass.keep_unsupported {
            self.completed_unsupported = true;
            self.log_once("this libvirt cannot read completed job stats without consuming them (KEEP_COMPLETED needs libvirt >= 6.0); only running jobs are reported".into());
        }
        for p in pass.problems {
            self.log_once(p);
        }

        let time = SystemTime::now();
        let now = Instant::now();
        let mut records = Vec::new();
        let mut present = HashSet::new();
        for d in pass.domains {
            present.insert(d.uuid.clone());
            if let Some(js) = d.active {
                records.push(self.record(&d.name, &d.uuid, js, time));
            }
            if let Some(js) = d.completed {
                let fp = fingerprint(&js);
                if self.completed.get(&d.uuid).is_none_or(|c| c.fingerprint != fp) {
                    let rec = self.record(&d.name, &d.uuid, js, time);
                    records.push(rec.clone());
                    self.completed.insert(d.uuid, Completed { fingerprint: fp, first_seen: now, record: Some(rec) });
                }
            }
        }
        self.completed.retain(|uuid, _| present.contains(uuid));
        let mut retained = Vec::new();
        for c in self.completed.values_mut() {
            if now.duration_since(c.first_seen) >= self.retention {
                c.record = None;
            } else if c.first_seen != now {
                // Reported in an earlier batch: kept on view, not news.
                if let Some(r) = &c.record {
                    retained.push(r.clone());
                }
            }
        }
        Ok(Batch { source: SOURCE, snapshot: true, records, retained, ttl: None })
    }
}
