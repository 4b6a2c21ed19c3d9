//! The health collector: is each domain's QEMU answering? Every interval,
//! each running domain's control (monitor) state: ok, job, occupied (a call
//! waits on QEMU: a hung QEMU shows here, with how long) or error. Less
//! often (and after its lifecycle events), whether it has a managed-save
//! image and the taint and deprecation messages libvirt recorded. From the
//! events: when the agent saw each domain start and change state.
//!
//! `virDomainGetControlInfo` takes no job and does not talk to QEMU, so it
//! answers on a read-only connection while QEMU hangs; still, every call
//! runs on its own blocking thread and a domain whose call is stuck is
//! skipped until it returns.

pub(crate) mod config;
pub(crate) mod metrics;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use super::blocking::{read_each, BusySet};
use super::controller::Wake;
use super::{BoxFuture, BuildContext, Built, CollectError, Collector, CollectorContext, CollectorPlugin};
use crate::events::typed::{Event, LifecycleEvent, Listener};
use crate::libvirt::health::ControlInfo;
use crate::libvirt::{Domain, LibvirtError, Session};
use crate::record::kind::KindSpec;
use crate::record::mapping::unit_of;
use crate::record::{Batch, DomainRef, Field, Record, RecordKind};
use crate::selfmon::{find, MetricDesc, MetricWriter, Report};
use crate::util::clock::unix_seconds;
use crate::util::text::bounded;
use crate::util::throttle::LogOnce;
use crate::value::TypedValue;
use config::HealthConfig;
use metrics::DOMAIN_HEALTH;

const SOURCE: &str = "health";

/// Domains whose event times are remembered at most (a storm of new
/// domains cannot grow it; gone domains are forgotten each cycle).
const MAX_REMEMBERED: usize = 100_000;

pub(crate) const METRICS: &[MetricDesc] = &[
    MetricDesc::counter(
        "virtpulse_health_errors_total",
        "Health reads of a domain that failed, by what (control, managed_save, messages): the domain's other series stay.",
    ),
    MetricDesc::counter(
        "virtpulse_health_skipped_total",
        "Domains left out of a health cycle because an earlier call on them had not returned.",
    ),
    MetricDesc::counter(
        "virtpulse_health_timeouts_total",
        "Domain health reads still running at the cycle's deadline (left running; the domain is skipped until they return).",
    ),
    MetricDesc::counter(
        "virtpulse_health_messages_cut_total",
        "Taint and deprecation messages not kept (past collectors.health.max_messages) or shortened (past max_message_bytes).",
    ),
];

#[derive(Default)]
struct HealthReport {
    errors: [AtomicU64; 3],
    skipped: AtomicU64,
    timeouts: AtomicU64,
    cut: AtomicU64,
}

const ERROR_WHAT: [&str; 3] = ["control", "managed_save", "messages"];

impl Report for HealthReport {
    fn metrics(&self, out: &mut dyn MetricWriter) {
        for (i, what) in ERROR_WHAT.iter().enumerate() {
            let n = self.errors[i].load(Ordering::Relaxed) as f64;
            out.sample(&find(METRICS, "virtpulse_health_errors_total"), &[("what", what)], n);
        }
        for (name, v) in [
            ("virtpulse_health_skipped_total", &self.skipped),
            ("virtpulse_health_timeouts_total", &self.timeouts),
            ("virtpulse_health_messages_cut_total", &self.cut),
        ] {
            out.sample(&find(METRICS, name), &[], v.load(Ordering::Relaxed) as f64);
        }
    }
}

/// What the events told, per domain UUID.
#[derive(Default)]
struct Seen {
    /// Unix seconds of the last lifecycle event.
    changed: HashMap<String, f64>,
    /// Unix seconds of the last start.
    started: HashMap<String, f64>,
    /// Domains whose details are read again at the next cycle.
    stale: HashSet<String>,
}

impl Seen {
    fn forget_absent(&mut self, present: &HashSet<&str>) {
        self.changed.retain(|u, _| present.contains(u.as_str()));
        self.started.retain(|u, _| present.contains(u.as_str()));
        self.stale.retain(|u| present.contains(u.as_str()));
    }
}

/// Times state changes and starts, and has a domain's details read again.
struct HealthListener {
    seen: Arc<Mutex<Seen>>,
    wake: Wake,
}

impl Listener for HealthListener {
    fn on_event(&self, ev: &Event<'_>) {
        let Event::Lifecycle(d, change) = *ev else { return };
        let now = unix_seconds();
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.changed.len() < MAX_REMEMBERED || seen.changed.contains_key(d.uuid) {
            seen.changed.insert(d.uuid.to_string(), now);
            match change.event {
                LifecycleEvent::Started => {
                    seen.started.insert(d.uuid.to_string(), now);
                }
                LifecycleEvent::Stopped | LifecycleEvent::Undefined | LifecycleEvent::Crashed => {
                    seen.started.remove(d.uuid);
                }
                _ => {}
            }
            seen.stale.insert(d.uuid.to_string());
        }
        drop(seen);
        self.wake.now();
    }
}

/// A domain's managed-save image and messages, as last read.
#[derive(Clone, Default)]
struct Details {
    managed_save: Option<bool>,
    /// (kind, text), bounded; `None`: the client library has no
    /// virDomainGetMessages (libvirt < 7.1) or the read failed.
    messages: Option<Vec<(&'static str, String)>>,
    taint: u32,
    deprecation: u32,
    read_at: Option<Instant>,
}

/// A managed-save read and a messages read (`None` inside: no such call).
type DetailsRead = (Result<bool, LibvirtError>, Result<Option<Vec<String>>, LibvirtError>);

/// One domain's read.
struct Read {
    control: Option<Result<ControlInfo, LibvirtError>>,
    details: Option<DetailsRead>,
}

fn read_domain(dom: &Domain, active: bool, want_details: bool) -> Read {
    Read {
        control: active.then(|| dom.control_info()),
        details: want_details.then(|| {
            // A managed-save image exists only while the domain is off.
            let saved = if active { Ok(false) } else { dom.has_managed_save() };
            (saved, dom.messages())
        }),
    }
}

/// Splits libvirt's messages ("tainted: ...", "deprecated configuration:
/// ...") by kind, keeping at most `max` of at most `max_bytes` each.
/// Returns (kept, taint count, deprecation count, how many cut).
fn sort_messages(all: Vec<String>, max: usize, max_bytes: usize) -> (Vec<(&'static str, String)>, u32, u32, u64) {
    let (mut taint, mut deprecation, mut cut) = (0u32, 0u32, 0u64);
    let mut kept = Vec::new();
    for m in all {
        let kind = if m.starts_with("taint") {
            taint = taint.saturating_add(1);
            "taint"
        } else {
            deprecation = deprecation.saturating_add(1);
            "deprecation"
        };
        if kept.len() >= max {
            cut += 1;
            continue;
        }
        let (text, was_cut) = bounded(&m, max_bytes);
        cut += u64::from(was_cut);
        kept.push((kind, text.to_string()));
    }
    (kept, taint, deprecation, cut)
}

pub(crate) struct HealthCollector {
    ctx: CollectorContext,
    cfg: HealthConfig,
    /// How long one cycle waits for its domains' reads.
    call_timeout: Duration,
    seen: Arc<Mutex<Seen>>,
    details: HashMap<String, Details>,
    report: Arc<HealthReport>,
    busy: BusySet,
    permits: Arc<tokio::sync::Semaphore>,
    logged: LogOnce,
}

impl HealthCollector {
    fn new(ctx: CollectorContext, cfg: HealthConfig, call_timeout: Duration) -> Self {
        // Counters run on when a reload rebuilds the collector.
        let report = ctx.registry.keep(ctx.stats.name, HealthReport::default);
        let permits = Arc::new(tokio::sync::Semaphore::new(cfg.calls_in_flight.max(1)));
        Self {
            ctx,
            cfg,
            call_timeout,
            seen: Arc::default(),
            details: HashMap::new(),
            report,
            busy: BusySet::default(),
            permits,
            logged: LogOnce::default(),
        }
    }

    fn listener(&self, wake: Wake) -> Arc<dyn Listener> {
        Arc::new(HealthListener { seen: self.seen.clone(), wake })
    }

    fn error(&mut self, what: usize, name: &str, e: &LibvirtError) {
        self.report.errors[what].fetch_add(1, Ordering::Relaxed);
        if self.logged.first(&format!("{name}:{}", ERROR_WHAT[what])) {
            tracing::info!(collector = SOURCE, domain = name, what = ERROR_WHAT[what], error = %e, "cannot read part of a domain's health (logged once per domain and part)");
        }
    }

    fn record(&self, name: &str, uuid: &str, fields: Vec<(String, TypedValue)>, time: SystemTime) -> Record {
        let fields = fields
            .into_iter()
            .map(|(k, v)| Field { unit: unit_of(&DOMAIN_HEALTH, &k, &v), key: Arc::from(k), value: v })
            .collect();
        Record {
            domain: Some(DomainRef { name: name.into(), uuid: uuid.into(), info: None }),
            fields,
            ..Record::new(&self.ctx.identity, RecordKind::of(&DOMAIN_HEALTH), time)
        }
    }

    async fn collect_once(&mut self) -> Result<Batch, CollectError> {
        let started = Instant::now();
        let session: Session = self.ctx.manager.current().ok_or(CollectError::NotConnected)?;
        let s = session.clone();
        let domains = self.ctx.tracker.run(move || s.conn.list_all_domains(0)).await??;
        let stale = std::mem::take(&mut self.seen.lock().unwrap_or_else(|e| e.into_inner()).stale);
        let mut names = HashMap::new();
        let mut items = Vec::new();
        for dom in domains {
            let (name, uuid) = (dom.name(), dom.uuid());
            if !self.ctx.filter.allows(&name) {
                continue;
            }
            let due = self
                .details
                .get(&uuid)
                .and_then(|d| d.read_at)
                .is_none_or(|t| t.elapsed() >= self.cfg.details_interval || stale.contains(&uuid));
            let active = dom.is_active();
            names.insert(uuid.clone(), (name, active));
            if active || due {
                items.push((uuid, (dom, active, due)));
            }
        }
        let read = read_each(
            &self.ctx.tracker,
            &self.busy,
            &self.permits,
            items,
            started + self.call_timeout,
            |(dom, active, due): (Domain, bool, bool)| read_domain(&dom, active, due),
        )
        .await;
        self.report.skipped.fetch_add(read.skipped, Ordering::Relaxed);
        self.report.timeouts.fetch_add(read.late, Ordering::Relaxed);
        let mut controls: HashMap<String, ControlInfo> = HashMap::new();
        for (uuid, r) in read.done {
            let name = names.get(&uuid).map(|(n, _)| n.clone()).unwrap_or_default();
            match r.control {
                Some(Ok(c)) => {
                    controls.insert(uuid.clone(), c);
                }
                Some(Err(e)) if e.is_no_domain() => continue,
                Some(Err(e)) => {
                    if session.conn.lost(&e) {
                        self.ctx.manager.note_error(&session, &e);
                        return Err(e.into());
                    }
                    self.error(0, &name, &e);
                }
                None => {}
            }
            if let Some((saved, messages)) = r.details {
                let d = self.details.entry(uuid.clone()).or_default();
                d.read_at = Some(Instant::now());
                match saved {
                    Ok(b) => d.managed_save = Some(b),
                    Err(e) if e.is_no_domain() => continue,
                    Err(e) => {
                        d.managed_save = None;
                        self.error(1, &name, &e);
                    }
                }
                match messages {
                    Ok(Some(all)) => {
                        let (kept, taint, deprecation, cut) =
                            sort_messages(all, self.cfg.max_messages, self.cfg.max_message_bytes);
                        self.report.cut.fetch_add(cut, Ordering::Relaxed);
                        let d = self.details.entry(uuid.clone()).or_default();
                        (d.messages, d.taint, d.deprecation) = (Some(kept), taint, deprecation);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        self.details.entry(uuid.clone()).or_default().messages = None;
                        self.error(2, &name, &e);
                    }
                }
            }
        }
        let present: HashSet<&str> = names.keys().map(String::as_str).collect();
        self.details.retain(|u, _| present.contains(u.as_str()));
        let (changed, started_at) = {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            seen.forget_absent(&present);
            (seen.changed.clone(), seen.started.clone())
        };
        let time = SystemTime::now();
        let mut records = Vec::with_capacity(names.len());
        for (uuid, (name, active)) in &names {
            let mut f: Vec<(String, TypedValue)> = Vec::new();
            if let Some(c) = controls.get(uuid) {
                f.push(("control.state".into(), TypedValue::UInt(c.state)));
                f.push(("control.reason".into(), TypedValue::UInt(c.details)));
                f.push(("control.time".into(), TypedValue::ULLong(c.state_ms)));
            }
            if let Some(d) = self.details.get(uuid) {
                if let Some(b) = d.managed_save {
                    f.push(("managed_save".into(), TypedValue::Boolean(b)));
                }
                if let Some(msgs) = &d.messages {
                    f.push(("messages.taint".into(), TypedValue::UInt(d.taint)));
                    f.push(("messages.deprecation".into(), TypedValue::UInt(d.deprecation)));
                    f.push(("message.count".into(), TypedValue::UInt(msgs.len() as u32)));
                    for (i, (kind, text)) in msgs.iter().enumerate() {
                        f.push((format!("message.{i}.kind"), TypedValue::String((*kind).into())));
                        f.push((format!("message.{i}.text"), TypedValue::String(text.as_str().into())));
                    }
                }
            }
            if let Some(t) = changed.get(uuid) {
                f.push(("state.changed".into(), TypedValue::Double(*t)));
            }
            if let Some(t) = started_at.get(uuid).filter(|_| *active) {
                f.push(("started".into(), TypedValue::Double(*t)));
            }
            if !f.is_empty() {
                records.push(self.record(name, uuid, f, time));
            }
        }
        // Not every domain: one with nothing to report has no record here,
        // and must not count as gone (sinks forget what they keep per
        // domain, e.g. its event series, when a listing leaves it out).
        Ok(Batch { source: SOURCE, snapshot: true, records, lists_every_domain: false, ..Default::default() })
    }
}

impl Collector for HealthCollector {
    fn name(&self) -> &'static str {
        SOURCE
    }

    fn collect(&mut self) -> BoxFuture<'_, Result<Batch, CollectError>> {
        Box::pin(self.collect_once())
    }
}

/// The health collector in the registry.
pub(crate) struct HealthPlugin;

impl CollectorPlugin for HealthPlugin {
    type Config = HealthConfig;
    const NAME: &'static str = SOURCE;
    const KINDS: &'static [&'static KindSpec] = &[&DOMAIN_HEALTH];
    const METRICS: &'static [MetricDesc] = METRICS;
    /// A minute, not every domain-stats cycle: listing the domains and one
    /// control-info call each cost the agent about 90k instructions per
    /// domain (libvirt formats each handle's UUID for a debug message on
    /// lookup, ID and free), which every 15 s added some 12% to the agent's
    /// CPU at 120 guests (callgrind, bench/callgrind.sh). A stuck monitor
    /// shows at the next read, within a minute; `DomainMonitorStuck`
    /// (occupied for over 30 s, seen so for a minute) then fires at most
    /// about 2.5 minutes after the hang, against 1.75 with reads every 15 s.
    const INTERVAL: Option<Duration> = Some(Duration::from_secs(60));

    fn build(&self, cfg: &HealthConfig, ctx: &mut BuildContext) -> anyhow::Result<Built> {
        // Reads wait at most three quarters of the deadline, so the cycle
        // reports the domains that answered before the deadline drops it.
        let c = HealthCollector::new(ctx.ctx.clone(), cfg.clone(), ctx.schedule.timeout * 3 / 4);
        let listener = c.listener(ctx.wake.clone());
        Ok(Built { collector: Box::new(c), listener: Some(listener) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_sorted_by_kind_bounded_and_counted() {
        let all = vec![
            "tainted: custom monitor control commands issued".to_string(),
            "deprecated configuration: machine type 'pc-i440fx-2.11'".to_string(),
            "tainted: high-privileges ééé".to_string(),
        ];
        let (kept, taint, deprecation, cut) = sort_messages(all.clone(), 2, 1000);
        assert_eq!((taint, deprecation, cut), (2, 1, 1));
        assert_eq!(kept[0], ("taint", all[0].clone()));
        assert_eq!(kept[1].0, "deprecation");
        let (kept, _, _, cut) = sort_messages(all, 8, 27);
        assert_eq!(cut, 3, "every message longer than 27 bytes is cut");
        assert!(kept.iter().all(|(_, t)| t.len() <= 27));
        assert_eq!(kept[2].1, "tainted: high-privileges é", "cut on a character boundary");
    }

    #[test]
    fn events_time_starts_and_changes_and_forget_gone_domains() {
        use crate::libvirt::events::{Family, RawEvent};
        let seen: Arc<Mutex<Seen>> = Arc::default();
        let l = HealthListener { seen: seen.clone(), wake: Wake::default() };
        let raw = |e: i32, d: i32| RawEvent {
            family: Family::Domain,
            event_id: 0,
            name: "lifecycle",
            object_name: "vm".into(),
            object_uuid: "u".into(),
            fields: vec![(Arc::from("event"), TypedValue::Int(e)), (Arc::from("detail"), TypedValue::Int(d))],
            time: SystemTime::now(),
            at: Instant::now(),
        };
        l.on_event(&Event::of(&raw(2, 0)));
        assert!(seen.lock().unwrap().started.contains_key("u"));
        assert!(seen.lock().unwrap().stale.contains("u"));
        l.on_event(&Event::of(&raw(5, 1)));
        assert!(!seen.lock().unwrap().started.contains_key("u"), "stopped");
        assert!(seen.lock().unwrap().changed.contains_key("u"));
        seen.lock().unwrap().forget_absent(&HashSet::new());
        assert!(seen.lock().unwrap().changed.is_empty());
    }
}
