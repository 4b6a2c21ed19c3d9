//! The guest collector (off by default): what only the guest knows. Through
//! the QEMU guest agent (`virDomainGetGuestInfo`): OS, hostname, logged-in
//! users, filesystems with their size and use, load averages; and each
//! interface's addresses (`virDomainInterfaceAddresses`) from DHCP leases
//! and the ARP table (read-only) and from the agent.
//!
//! Guest agents hang, time out and answer garbage, so: each domain's calls
//! run on their own blocking thread, a few at a time; a domain whose call is
//! still running after `call_timeout` is left out of the cycle and skipped
//! (counted) until the call returns; no cycle waits for one guest. What a
//! guest says is bounded: at most `max_filesystems` filesystems and
//! `max_addresses` addresses per domain, strings cut at `max_string_bytes`
//! (what is cut is counted).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::blocking::BusySet;
pub(crate) mod config;
pub(crate) mod metrics;

use super::{BoxFuture, BuildContext, Built, CollectError, Collector, CollectorContext, CollectorPlugin};
use crate::libvirt::guest::{AddressSource, Interface, INFO_FILESYSTEM, INFO_HOSTNAME, INFO_LOAD, INFO_OS, INFO_USERS};
use crate::libvirt::node::LIST_ACTIVE;
use crate::libvirt::typed_params::KeyInterner;
use crate::libvirt::{Domain, LibvirtError, Session};
use crate::record::kind::KindSpec;
use crate::record::mapping::unit_of;
use crate::record::{Batch, DomainRef, Field, Record, RecordKind};
use crate::selfmon::{find, MetricDesc, MetricWriter, Report};
use crate::util::text::bounded;
use crate::util::throttle::LogOnce;
use crate::value::TypedValue;
use config::GuestConfig;
use metrics::GUEST;

pub(crate) const SOURCE: &str = "guest";

#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// Ask the guest agent (the connection must be read-write).
    pub agent: bool,
    /// Interface addresses: leases and ARP, plus the agent with `agent`.
    pub addresses: bool,
    /// How long one domain's calls may take before the cycle goes on
    /// without it.
    pub call_timeout: Duration,
    pub calls_in_flight: usize,
    pub max_filesystems: usize,
    pub max_addresses: usize,
    pub max_string_bytes: usize,
}

/// What the collector cut or could not get, for `virtpulse_guest_*`.
#[derive(Debug, Default)]
pub(crate) struct GuestReport {
    skipped_busy: AtomicU64,
    timeouts: AtomicU64,
    agent_errors: AtomicU64,
    truncated: [AtomicU64; 3],
}

#[derive(Debug, Clone, Copy)]
enum Cut {
    Filesystems,
    Addresses,
    Strings,
}

impl Cut {
    const ALL: [Cut; 3] = [Cut::Filesystems, Cut::Addresses, Cut::Strings];

    fn as_str(self) -> &'static str {
        match self {
            Cut::Filesystems => "filesystems",
            Cut::Addresses => "addresses",
            Cut::Strings => "strings",
        }
    }
}

pub(crate) const METRICS: &[MetricDesc] = &[
    MetricDesc::counter(
        "virtpulse_guest_skipped_total",
        "Domains left out of a guest cycle because their previous guest-agent call had not returned (a hung or absent agent).",
    ),
    MetricDesc::counter(
        "virtpulse_guest_timeouts_total",
        "Guest calls still running after collectors.guest.call_timeout; the domain is skipped until they return.",
    ),
    MetricDesc::counter(
        "virtpulse_guest_agent_errors_total",
        "Guest-agent calls that failed (agent not running, not answering, or refusing a command).",
    ),
    MetricDesc::counter(
        "virtpulse_guest_truncated_total",
        "What a guest reported beyond the collector's bounds, by what (filesystems, addresses, strings).",
    ),
];

impl Report for GuestReport {
    fn metrics(&self, out: &mut dyn MetricWriter) {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
        out.sample(&find(METRICS, "virtpulse_guest_skipped_total"), &[], n(&self.skipped_busy));
        out.sample(&find(METRICS, "virtpulse_guest_timeouts_total"), &[], n(&self.timeouts));
        out.sample(&find(METRICS, "virtpulse_guest_agent_errors_total"), &[], n(&self.agent_errors));
        for c in Cut::ALL {
            out.sample(
                &find(METRICS, "virtpulse_guest_truncated_total"),
                &[("what", c.as_str())],
                n(&self.truncated[c as usize]),
            );
        }
    }
}

/// One domain's answers, bounded.
#[derive(Debug, Default)]
struct GuestRead {
    fields: Vec<(String, TypedValue)>,
    /// Problems worth a (rate-limited) log line.
    problems: Vec<String>,
    agent_failed: bool,
    lost: Option<LibvirtError>,
}

/// The guest-info keys kept in records (users' names and per-filesystem
/// disk details are not: personal data, and unbounded).
fn kept_info_key(key: &str) -> bool {
    matches!(
        key,
        "user.count"
            | "hostname"
            | "fs.count"
            | "load.1m"
            | "load.5m"
            | "load.15m"
            | "timezone.name"
            | "timezone.offset"
    ) || key.strip_prefix("os.").is_some_and(|k| {
        matches!(
            k,
            "id" | "name" | "pretty-name" | "version" | "version-id" | "kernel-release" | "kernel-version" | "machine"
        )
    }) || fs_field(key).is_some()
}

/// `fs.<n>.<field>` for the fields kept: (n, field).
fn fs_field(key: &str) -> Option<(usize, &str)> {
    let rest = key.strip_prefix("fs.")?;
    let (n, field) = rest.split_once('.')?;
    let n: usize = n.parse().ok()?;
    matches!(field, "mountpoint" | "name" | "fstype" | "total-bytes" | "used-bytes").then_some((n, field))
}

/// How much of what a guest says is kept.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounds {
    pub max_filesystems: usize,
    pub max_addresses: usize,
    pub max_string_bytes: usize,
}

/// Counts of what the bounds cut, by `Cut`.
pub(crate) type Cuts = [u64; 3];

fn bounded_field(key: String, value: TypedValue, bounds: &Bounds, cuts: &mut Cuts) -> (String, TypedValue) {
    let value = match value {
        TypedValue::String(s) => {
            let (kept, cut) = bounded(&s, bounds.max_string_bytes);
            if cut {
                cuts[Cut::Strings as usize] += 1;
                TypedValue::String(kept.into())
            } else {
                TypedValue::String(s)
            }
        }
        v => v,
    };
    (key, value)
}

/// The guest-info parameters worth keeping, bounded.
pub(crate) fn keep_info(
    params: impl IntoIterator<Item = (Arc<str>, TypedValue)>,
    bounds: &Bounds,
    out: &mut Vec<(String, TypedValue)>,
    cuts: &mut Cuts,
) {
    let mut over = std::collections::BTreeSet::new();
    for (name, value) in params {
        if !kept_info_key(&name) {
            continue;
        }
        if let Some((n, _)) = fs_field(&name) {
            if n >= bounds.max_filesystems {
                over.insert(n);
                continue;
            }
        }
        out.push(bounded_field(name.to_string(), value, bounds, cuts));
    }
    cuts[Cut::Filesystems as usize] += over.len() as u64;
}

/// One source's interface addresses as `addr.<k>.*` fields, `k` counting
/// on from earlier sources, at most `max_addresses` in all.
pub(crate) fn keep_addresses(
    source: AddressSource,
    ifaces: Vec<Interface>,
    k: &mut usize,
    bounds: &Bounds,
    out: &mut Vec<(String, TypedValue)>,
    cuts: &mut Cuts,
) {
    for iface in ifaces {
        for a in iface.addrs {
            if *k >= bounds.max_addresses {
                cuts[Cut::Addresses as usize] += 1;
                continue;
            }
            let key = |f: &str| format!("addr.{k}.{f}");
            let fields = [
                (key("interface"), TypedValue::String(iface.name.as_str().into())),
                (key("mac"), TypedValue::String(iface.hwaddr.as_str().into())),
                (key("address"), TypedValue::String(a.address.into())),
                (key("prefix"), TypedValue::UInt(a.prefix)),
                (key("family"), TypedValue::String(a.family.into())),
                (key("source"), TypedValue::String(source.as_str().into())),
            ];
            out.extend(fields.into_iter().map(|(k, v)| bounded_field(k, v, bounds, cuts)));
            *k += 1;
        }
    }
}

fn read_guest(dom: &Domain, settings: &Settings, cuts: &mut Cuts) -> GuestRead {
    let bounds = Bounds {
        max_filesystems: settings.max_filesystems,
        max_addresses: settings.max_addresses,
        max_string_bytes: settings.max_string_bytes,
    };
    let mut out = GuestRead::default();
    if settings.agent {
        let mut names = KeyInterner::default();
        let mut types = INFO_OS | INFO_HOSTNAME | INFO_USERS | INFO_FILESYSTEM | INFO_LOAD;
        let mut result = dom.guest_info(types, &mut names);
        // Daemons before 11.2 refuse the load type: ask without it.
        if matches!(&result, Err(e) if e.is_invalid_arg() || e.is_unsupported_flags()) {
            types &= !INFO_LOAD;
            result = dom.guest_info(types, &mut names);
        }
        match result {
            Ok(params) => {
                keep_info(params.params.into_iter().map(|p| (p.name, p.value)), &bounds, &mut out.fields, cuts);
            }
            Err(e) => {
                out.agent_failed = true;
                out.problems.push(format!("guest info: {e}"));
                out.lost = Some(e);
            }
        }
    }
    if settings.addresses {
        let mut k = 0usize;
        let sources: &[AddressSource] = if settings.agent && !out.agent_failed {
            &AddressSource::ALL
        } else {
            &[AddressSource::Lease, AddressSource::Arp]
        };
        for source in sources {
            match dom.interface_addresses(*source) {
                Ok(ifaces) => keep_addresses(*source, ifaces, &mut k, &bounds, &mut out.fields, cuts),
                Err(e) if *source == AddressSource::Agent => {
                    out.agent_failed = true;
                    out.problems.push(format!("addresses from the agent: {e}"));
                }
                // No libvirt network (lease) or nothing in the ARP table:
                // not a problem of the guest's.
                Err(e) if e.is_unsupported() || e.is_invalid_arg() || e.is_operation_invalid() => {}
                Err(e) => {
                    out.problems.push(format!("addresses from {}: {e}", source.as_str()));
                    out.lost.get_or_insert(e);
                }
            }
        }
        out.fields.push(("addr.count".into(), TypedValue::UInt(u32::try_from(k).unwrap_or(u32::MAX))));
    }
    out
}

pub(crate) struct GuestCollector {
    ctx: CollectorContext,
    settings: Arc<Settings>,
    report: Arc<GuestReport>,
    busy: BusySet,
    permits: Arc<tokio::sync::Semaphore>,
    logged: LogOnce,
}

impl GuestCollector {
    pub(crate) fn new(ctx: CollectorContext, settings: Settings) -> Self {
        // Counters run on when a reload rebuilds the collector.
        let report = ctx.registry.keep(ctx.stats.name, GuestReport::default);
        let permits = Arc::new(tokio::sync::Semaphore::new(settings.calls_in_flight.max(1)));
        Self {
            ctx,
            settings: Arc::new(settings),
            report,
            busy: BusySet::default(),
            permits,
            logged: LogOnce::default(),
        }
    }

    fn record(&self, name: &str, uuid: &str, fields: Vec<(String, TypedValue)>, time: SystemTime) -> Record {
        let fields = fields
            .into_iter()
            .map(|(k, v)| Field { unit: unit_of(&GUEST, &k, &v), key: Arc::from(k), value: v })
            .collect();
        Record {
            domain: Some(DomainRef { name: name.into(), uuid: uuid.into(), info: None }),
            fields,
            ..Record::new(&self.ctx.identity, RecordKind::of(&GUEST), time)
        }
    }
}

impl Collector for GuestCollector {
    fn name(&self) -> &'static str {
        SOURCE
    }

    fn collect(&mut self) -> BoxFuture<'_, Result<Batch, CollectError>> {
        Box::pin(self.collect_once())
    }
}

impl GuestCollector {
    async fn collect_once(&mut self) -> Result<Batch, CollectError> {
        let session: Session = self.ctx.manager.current().ok_or(CollectError::NotConnected)?;
        let s = session.clone();
        let domains = self.ctx.tracker.run(move || s.conn.list_all_domains(LIST_ACTIVE)).await??;
        let started = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        let mut names = HashMap::new();
        for dom in domains {
            let (name, uuid) = (dom.name(), dom.uuid());
            if !self.ctx.filter.allows(&name) {
                continue;
            }
            let Some(mark) = self.busy.mark(uuid.clone()) else {
                self.report.skipped_busy.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            names.insert(uuid.clone(), name);
            let (tracker, permits, settings) = (self.ctx.tracker.clone(), self.permits.clone(), self.settings.clone());
            set.spawn(async move {
                let _permit = permits.acquire_owned().await;
                tracker
                    .run_isolated(move || {
                        let _mark = mark;
                        let mut cuts: Cuts = [0; 3];
                        let read = read_guest(&dom, &settings, &mut cuts);
                        (uuid, read, cuts)
                    })
                    .await
                    .ok()
            });
        }
        // Each domain gets `call_timeout` from the start of the cycle (its
        // turn may wait for a permit); the stragglers finish in the
        // background and stay marked busy until they do.
        let deadline = started + self.settings.call_timeout;
        let mut records = Vec::new();
        let time = SystemTime::now();
        loop {
            let next = tokio::time::timeout_at(deadline.into(), set.join_next()).await;
            let Ok(Some(joined)) = next else { break };
            let Ok(Some((uuid, read, cuts))) = joined else { continue };
            for c in Cut::ALL {
                self.report.truncated[c as usize].fetch_add(cuts[c as usize], Ordering::Relaxed);
            }
            if read.agent_failed {
                self.report.agent_errors.fetch_add(1, Ordering::Relaxed);
            }
            if let Some(e) = &read.lost {
                if session.conn.lost(e) {
                    self.ctx.manager.note_error(&session, e);
                    return Err(CollectError::Libvirt(e.clone()));
                }
            }
            let name = names.remove(&uuid).unwrap_or_default();
            for p in &read.problems {
                if self.logged.first(&format!("{uuid}: {p}")) {
                    tracing::info!(collector = SOURCE, domain = %name, problem = %p, "guest data incomplete (logged once per domain and problem)");
                }
            }
            if !read.fields.is_empty() {
                records.push(self.record(&name, &uuid, read.fields, time));
            }
        }
        let late = set.len() as u64;
        self.report.timeouts.fetch_add(late, Ordering::Relaxed);
        // Leave the stragglers running: dropping the set would only abort
        // the waits, not libvirt's calls (their marks keep them skipped).
        set.detach_all();
        Ok(Batch { source: SOURCE, snapshot: true, records, ..Default::default() })
    }
}

/// The guest collector in the registry (off by default).
pub(crate) struct GuestPlugin;

impl CollectorPlugin for GuestPlugin {
    type Config = GuestConfig;
    const NAME: &'static str = SOURCE;
    const ENABLED: bool = false;
    const INTERVAL: Option<Duration> = Some(Duration::from_secs(60));
    const KINDS: &'static [&'static KindSpec] = &[&GUEST];
    const METRICS: &'static [MetricDesc] = METRICS;

    fn build(&self, cfg: &GuestConfig, ctx: &mut BuildContext) -> anyhow::Result<Built> {
        if cfg.agent {
            // The guest agent is refused on read-only connections.
            ctx.use_read_write_connection();
        }
        let settings = Settings {
            agent: cfg.agent,
            addresses: cfg.addresses,
            call_timeout: cfg.call_timeout(ctx.schedule.timeout),
            calls_in_flight: cfg.calls_in_flight,
            max_filesystems: cfg.max_filesystems,
            max_addresses: cfg.max_addresses,
            max_string_bytes: cfg.max_string_bytes,
        };
        Ok(Built { collector: Box::new(GuestCollector::new(ctx.ctx.clone(), settings)), listener: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_cut_on_character_boundaries() {
        assert_eq!(bounded("abc", 5), ("abc", false));
        assert_eq!(bounded("ééé", 3), ("é", true));
        assert_eq!(bounded("abcdef", 4), ("abcd", true));
    }

    #[test]
    fn only_bounded_non_personal_keys_are_kept() {
        for k in ["os.id", "hostname", "user.count", "fs.3.used-bytes", "fs.0.mountpoint", "load.15m"] {
            assert!(kept_info_key(k), "{k}");
        }
        for k in ["user.0.name", "fs.0.disk.0.serial", "fs.x.name", "os.other", "fs.1.unknown"] {
            assert!(!kept_info_key(k), "{k}");
        }
        assert_eq!(fs_field("fs.12.total-bytes"), Some((12, "total-bytes")));
    }

    #[test]
    fn a_guest_cannot_grow_the_record_past_its_bounds() {
        let bounds = Bounds { max_filesystems: 2, max_addresses: 2, max_string_bytes: 8 };
        let mut cuts: Cuts = [0; 3];
        let mut fields = Vec::new();
        let params = (0..5).map(|i| (Arc::from(format!("fs.{i}.total-bytes")), TypedValue::ULLong(1)));
        let long = std::iter::once((Arc::from("os.name"), TypedValue::String("x".repeat(4 << 20).into())));
        keep_info(params.chain(long), &bounds, &mut fields, &mut cuts);
        assert_eq!(fields.len(), 3, "two filesystems and the OS name: {fields:?}");
        assert_eq!(fields[2].1, TypedValue::String("xxxxxxxx".into()));
        assert_eq!(cuts, [3, 0, 1]);
    }
}
