//! Virtual networks: active or not, persistent, autostart, bridge, forward
//! mode, the addresses in their DHCP ranges and the leases in use, so a
//! DHCP pool running full can be alerted on. Collected every interval and
//! at once when libvirt reports a network defined, undefined, started,
//! stopped or updated.
//!
//! Per cycle: one `virConnectListAllNetworks`, then per network
//! `virNetworkIsActive`, `virNetworkIsPersistent`, `virNetworkGetAutostart`
//! and `virNetworkGetXMLDesc`, plus `virNetworkGetDHCPLeases` for an active
//! network with DHCP: 1 + 4n + (active networks with DHCP) calls
//! (`virNetworkGetName`/`GetUUIDString` make none). Each network's calls run
//! on their own blocking thread, a few at a time, within a deadline; a
//! network whose calls are still running is left out and skipped (counted)
//! until they return. A network whose call or XML fails loses only its own
//! series (counted in `virtpulse_networks_errors_total`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

pub(crate) mod config;
pub(crate) mod metrics;
pub(crate) mod xml;

use super::blocking::BusySet;
use super::controller::Wake;
use super::{BoxFuture, BuildContext, Built, CollectError, Collector, CollectorContext, CollectorPlugin};
use crate::events::typed::{Event, Listener};
use crate::libvirt::networks::Network;
use crate::libvirt::{LibvirtError, Session};
use crate::record::kind::KindSpec;
use crate::record::mapping::unit_of;
use crate::record::{Batch, Field, ObjectRef, Record, RecordKind};
use crate::selfmon::{find, MetricDesc, MetricWriter, Report};
use crate::util::throttle::LogOnce;
use crate::value::TypedValue;
use config::NetworksConfig;
use metrics::NETWORK;

pub(crate) const SOURCE: &str = "networks";

/// Networks whose calls run at once.
const CALLS_IN_FLIGHT: usize = 4;

static WARNINGS: crate::util::throttle::Throttle = crate::util::throttle::Throttle::new(Duration::from_secs(600));

#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub leases: bool,
    pub max_networks: usize,
    pub max_string_bytes: usize,
    /// How long one network's calls may take before the cycle goes on
    /// without it.
    pub call_timeout: Duration,
}

/// What failed, for `virtpulse_networks_errors_total{what}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// `virNetworkIsActive`, `IsPersistent` or `GetAutostart`.
    State,
    /// `virNetworkGetXMLDesc`, or XML the reader could not use.
    Xml,
    /// `virNetworkGetDHCPLeases`.
    Leases,
    /// Calls still running at the network's deadline.
    Timeout,
}

impl Failure {
    const ALL: [Failure; 4] = [Failure::State, Failure::Xml, Failure::Leases, Failure::Timeout];

    fn as_str(self) -> &'static str {
        match self {
            Failure::State => "state",
            Failure::Xml => "xml",
            Failure::Leases => "leases",
            Failure::Timeout => "timeout",
        }
    }
}

/// What a bound cut, for `virtpulse_networks_truncated_total{what}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cut {
    /// Networks past `max_networks`.
    Networks,
    /// Strings cut at `max_string_bytes`.
    Strings,
    /// Address counts past 2^53 (`xml::ADDRESS_CAP`).
    Addresses,
}

impl Cut {
    const ALL: [Cut; 3] = [Cut::Networks, Cut::Strings, Cut::Addresses];

    fn as_str(self) -> &'static str {
        match self {
            Cut::Networks => "networks",
            Cut::Strings => "strings",
            Cut::Addresses => "addresses",
        }
    }
}

pub(crate) const METRICS: &[MetricDesc] = &[
    MetricDesc::counter(
        "virtpulse_networks_errors_total",
        "Virtual networks whose series were missing or partial in a cycle, by what failed (state: IsActive/IsPersistent/GetAutostart; xml: GetXMLDesc, or XML or a DHCP range it could not read; leases: GetDHCPLeases; timeout: calls still running at the deadline).",
    ),
    MetricDesc::counter(
        "virtpulse_networks_skipped_total",
        "Virtual networks left out of a cycle because an earlier call on them had not returned.",
    ),
    MetricDesc::counter(
        "virtpulse_networks_truncated_total",
        "What the networks collector's bounds cut, by what (networks past max_networks, strings past max_string_bytes, address counts past 2^53).",
    ),
];

#[derive(Debug, Default)]
pub(crate) struct NetworksReport {
    errors: [AtomicU64; 4],
    skipped: AtomicU64,
    truncated: [AtomicU64; 3],
}

impl NetworksReport {
    fn error(&self, f: Failure) {
        self.errors[f as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn cut(&self, c: Cut, n: u64) {
        self.truncated[c as usize].fetch_add(n, Ordering::Relaxed);
    }
}

impl Report for NetworksReport {
    fn metrics(&self, out: &mut dyn MetricWriter) {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
        for f in Failure::ALL {
            out.sample(
                &find(METRICS, "virtpulse_networks_errors_total"),
                &[("what", f.as_str())],
                n(&self.errors[f as usize]),
            );
        }
        out.sample(&find(METRICS, "virtpulse_networks_skipped_total"), &[], n(&self.skipped));
        for c in Cut::ALL {
            out.sample(
                &find(METRICS, "virtpulse_networks_truncated_total"),
                &[("what", c.as_str())],
                n(&self.truncated[c as usize]),
            );
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

/// One network's answers.
#[derive(Debug, Default)]
pub(crate) struct NetworkRead {
    pub fields: Vec<(&'static str, TypedValue)>,
    /// What failed, with libvirt's words (logged, rate-limited).
    pub failures: Vec<(Failure, String)>,
    pub cuts: Vec<Cut>,
    /// Undefined between the list and a call: no record, nothing counted.
    pub vanished: bool,
    /// An error that may mean the connection is gone.
    pub lost: Option<LibvirtError>,
    /// A call the daemon does not implement (the test driver has no
    /// leases): logged once, not counted.
    pub unsupported: Option<String>,
}

impl NetworkRead {
    fn text(&mut self, key: &'static str, value: &str, max: usize) {
        let (kept, cut) = bounded(value, max);
        if cut {
            self.cuts.push(Cut::Strings);
        }
        self.fields.push((key, TypedValue::String(kept.into())));
    }

    /// Notes a failed call; false when the network is gone (stop reading it).
    fn failed(&mut self, what: Failure, call: &str, e: LibvirtError) -> bool {
        if e.is_no_network() {
            self.vanished = true;
            return false;
        }
        self.failures.push((what, format!("{call}: {e}")));
        if e.may_mean_connection_lost() {
            self.lost.get_or_insert(e);
        }
        true
    }
}

/// The fields of one network from its XML facts and lease counts (pure:
/// the fuzz target drives it too). `leases`: `Some` when asked (active
/// networks), `None` when not.
pub(crate) fn xml_fields(
    facts: &xml::NetworkFacts,
    active: bool,
    leases: Option<u64>,
    count_leases: bool,
    max_string_bytes: usize,
    out: &mut NetworkRead,
) {
    out.text("forward.mode", &facts.forward_mode, max_string_bytes);
    out.text("bridge", &facts.bridge, max_string_bytes);
    if !facts.dhcp {
        return;
    }
    let (addresses, capped) = facts.capped_addresses();
    if capped {
        out.cuts.push(Cut::Addresses);
    }
    out.fields.push(("dhcp.addresses", TypedValue::ULLong(addresses)));
    out.fields.push(("dhcp.hosts", TypedValue::ULLong(facts.hosts)));
    match (count_leases, active, leases) {
        (true, true, Some(n)) => out.fields.push(("dhcp.leases", TypedValue::ULLong(n))),
        // No dnsmasq runs for an inactive network: nothing is in use.
        (true, false, _) => out.fields.push(("dhcp.leases", TypedValue::ULLong(0))),
        _ => {}
    }
}

/// Everything about one network, on a blocking thread.
fn read_network(net: &Network, settings: &Settings) -> NetworkRead {
    let mut out = NetworkRead::default();
    let active = match net.is_active() {
        Ok(a) => a,
        Err(e) => {
            out.failed(Failure::State, "virNetworkIsActive", e);
            // Up or down is this network's main series: without it, none.
            out.fields.clear();
            return out;
        }
    };
    out.fields.push(("active", TypedValue::Boolean(active)));
    match net.is_persistent() {
        Ok(p) => out.fields.push(("persistent", TypedValue::Boolean(p))),
        Err(e) => {
            if !out.failed(Failure::State, "virNetworkIsPersistent", e) {
                return out;
            }
        }
    }
    match net.autostart() {
        Ok(a) => out.fields.push(("autostart", TypedValue::Boolean(a))),
        Err(e) => {
            if !out.failed(Failure::State, "virNetworkGetAutostart", e) {
                return out;
            }
        }
    }
    let facts = match net.xml_desc() {
        Ok(x) => match xml::parse_network(&x) {
            Ok(f) => f,
            Err(problem) => {
                out.failures.push((Failure::Xml, problem));
                return out;
            }
        },
        Err(e) => {
            out.failed(Failure::Xml, "virNetworkGetXMLDesc", e);
            return out;
        }
    };
    if facts.bad_ranges > 0 {
        out.failures
            .push((Failure::Xml, format!("{} DHCP range(s) left out (unreadable or reversed)", facts.bad_ranges)));
    }
    let mut leases = None;
    if settings.leases && active && facts.dhcp {
        match net.lease_counts() {
            Ok(c) => leases = Some(c.total()),
            Err(e) if e.is_unsupported() => out.unsupported = Some(format!("virNetworkGetDHCPLeases: {e}")),
            Err(e) => {
                if !out.failed(Failure::Leases, "virNetworkGetDHCPLeases", e) {
                    return out;
                }
            }
        }
    }
    xml_fields(&facts, active, leases, settings.leases, settings.max_string_bytes, &mut out);
    out
}

/// Collects at once when a network is defined, undefined, started,
/// stopped or changed.
struct NetworksListener {
    wake: Wake,
}

impl Listener for NetworksListener {
    fn on_event(&self, ev: &Event<'_>) {
        if let Event::Network { .. } = ev {
            self.wake.now();
        }
    }
}

pub(crate) struct NetworksCollector {
    ctx: CollectorContext,
    settings: Arc<Settings>,
    report: Arc<NetworksReport>,
    busy: BusySet,
    permits: Arc<tokio::sync::Semaphore>,
    logged: LogOnce,
}

impl NetworksCollector {
    pub(crate) fn new(ctx: CollectorContext, settings: Settings) -> Self {
        // Counters run on when a reload rebuilds the collector.
        let report = ctx.registry.keep(ctx.stats.name, NetworksReport::default);
        Self {
            ctx,
            settings: Arc::new(settings),
            report,
            busy: BusySet::default(),
            permits: Arc::new(tokio::sync::Semaphore::new(CALLS_IN_FLIGHT)),
            logged: LogOnce::default(),
        }
    }

    fn record(&self, name: &str, uuid: &str, fields: Vec<(&'static str, TypedValue)>, time: SystemTime) -> Record {
        let fields = fields
            .into_iter()
            .map(|(k, v)| Field { unit: unit_of(&NETWORK, k, &v), key: Arc::from(k), value: v })
            .collect();
        Record {
            object: Some(ObjectRef { name: name.into(), uuid: uuid.into() }),
            fields,
            ..Record::new(&self.ctx.identity, RecordKind::of(&NETWORK), time)
        }
    }

    fn warn(&self, name: &str, uuid: &str, problem: &str) {
        // The same network fails the same way every cycle: once in ten minutes.
        if let Some(held_back) = WARNINGS.allow(&format!("{uuid}: {problem}")) {
            tracing::warn!(collector = SOURCE, network = %name, repeats_not_logged = held_back, "{problem}");
        }
    }
}

impl Collector for NetworksCollector {
    fn name(&self) -> &'static str {
        SOURCE
    }

    fn collect(&mut self) -> BoxFuture<'_, Result<Batch, CollectError>> {
        Box::pin(self.collect_once())
    }
}

/// A network as listed: name, UUID, handle.
type Listed = (String, String, Network);

/// Keeps the first `max` networks by name; returns how many it dropped.
fn keep_first<T>(nets: &mut Vec<(String, String, T)>, max: usize) -> usize {
    nets.sort_by(|a, b| a.0.cmp(&b.0));
    let over = nets.len().saturating_sub(max);
    nets.truncate(max);
    over
}

impl NetworksCollector {
    async fn collect_once(&mut self) -> Result<Batch, CollectError> {
        let session: Session = self.ctx.manager.current().ok_or(CollectError::NotConnected)?;
        let (s, manager, max) = (session.clone(), self.ctx.manager.clone(), self.settings.max_networks);
        // Handles are freed on blocking threads: the last one of a closed
        // connection closes it.
        let listed = self
            .ctx
            .tracker
            .run(move || -> Result<(Vec<Listed>, usize), LibvirtError> {
                let nets = s.conn.list_all_networks().inspect_err(|e| manager.note_error(&s, e))?;
                let mut nets: Vec<_> = nets.into_iter().map(|n| (n.name(), n.uuid(), n)).collect();
                let over = keep_first(&mut nets, max);
                Ok((nets, over))
            })
            .await?;
        let (nets, over) = match listed {
            Ok(listed) => listed,
            // A daemon without the network driver (a session daemon, a
            // trimmed build): nothing to report, and nothing wrong.
            Err(e) if e.is_unsupported() => {
                self.warn("", "", &format!("virConnectListAllNetworks: {e}; no network series"));
                return Ok(Batch { source: SOURCE, snapshot: true, ..Default::default() });
            }
            Err(e) => return Err(e.into()),
        };
        self.report.cut(Cut::Networks, over as u64);
        let started = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        let mut names = HashMap::new();
        let mut skipped = Vec::new();
        for (name, uuid, net) in nets {
            let Some(mark) = self.busy.mark(uuid.clone()) else {
                self.report.skipped.fetch_add(1, Ordering::Relaxed);
                skipped.push(net);
                continue;
            };
            names.insert(uuid.clone(), name);
            let (tracker, permits, settings) = (self.ctx.tracker.clone(), self.permits.clone(), self.settings.clone());
            set.spawn(async move {
                let _permit = permits.acquire_owned().await;
                tracker
                    .run_isolated(move || {
                        let _mark = mark;
                        let read = read_network(&net, &settings);
                        (uuid, read)
                    })
                    .await
                    .ok()
            });
        }
        if !skipped.is_empty() {
            drop(tokio::task::spawn_blocking(move || drop(skipped)));
        }
        // Each network gets `call_timeout` from the start of the cycle; the
        // stragglers finish in the background and stay marked busy.
        let deadline = started + self.settings.call_timeout;
        let time = SystemTime::now();
        let mut records = Vec::new();
        loop {
            let next = tokio::time::timeout_at(deadline.into(), set.join_next()).await;
            let Ok(Some(joined)) = next else { break };
            let Ok(Some((uuid, read))) = joined else { continue };
            if let Some(e) = &read.lost {
                if session.conn.lost(e) {
                    self.ctx.manager.note_error(&session, e);
                    return Err(CollectError::Libvirt(e.clone()));
                }
            }
            let name = names.remove(&uuid).unwrap_or_default();
            if read.vanished {
                continue;
            }
            if let Some(u) = &read.unsupported {
                if self.logged.first(u) {
                    tracing::info!(collector = SOURCE, "{u}; no lease counts from this daemon (logged once)");
                }
            }
            for c in &read.cuts {
                self.report.cut(*c, 1);
            }
            let mut counted = Vec::new();
            for (what, problem) in &read.failures {
                if !counted.contains(what) {
                    self.report.error(*what);
                    counted.push(*what);
                }
                self.warn(&name, &uuid, problem);
            }
            if read.fields.is_empty() {
                continue;
            }
            let (kept, cut) = bounded(&name, self.settings.max_string_bytes);
            if cut {
                self.report.cut(Cut::Strings, 1);
            }
            records.push(self.record(kept, &uuid, read.fields, time));
        }
        for _ in 0..set.len() {
            self.report.error(Failure::Timeout);
        }
        if !set.is_empty() {
            let late: Vec<&str> = names.values().map(String::as_str).collect();
            self.warn(
                "",
                "late",
                &format!("calls on network(s) {late:?} still running after {:?}", self.settings.call_timeout),
            );
        }
        // Leave the stragglers running: dropping the set would only abort
        // the waits, not libvirt's calls (their marks keep them skipped).
        set.detach_all();
        Ok(Batch { source: SOURCE, snapshot: true, records, ..Default::default() })
    }
}

/// The virtual networks collector in the registry.
pub(crate) struct NetworksPlugin;

impl CollectorPlugin for NetworksPlugin {
    type Config = NetworksConfig;
    const NAME: &'static str = SOURCE;
    const INTERVAL: Option<Duration> = Some(Duration::from_secs(60));
    const KINDS: &'static [&'static KindSpec] = &[&NETWORK];
    const METRICS: &'static [MetricDesc] = METRICS;

    fn build(&self, cfg: &NetworksConfig, ctx: &mut BuildContext) -> anyhow::Result<Built> {
        let settings = Settings {
            leases: cfg.leases,
            max_networks: cfg.max_networks,
            max_string_bytes: cfg.max_string_bytes,
            call_timeout: ctx.schedule.timeout * 3 / 4,
        };
        let collector = NetworksCollector::new(ctx.ctx.clone(), settings);
        let listener: Arc<dyn Listener> = Arc::new(NetworksListener { wake: ctx.wake.clone() });
        Ok(Built { collector: Box::new(collector), listener: Some(listener) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(dhcp: bool) -> xml::NetworkFacts {
        xml::NetworkFacts {
            forward_mode: "nat".into(),
            bridge: "virbr0".into(),
            dhcp,
            addresses: 253,
            hosts: 2,
            bad_ranges: 0,
        }
    }

    fn get(read: &NetworkRead, key: &str) -> Option<TypedValue> {
        read.fields.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone())
    }

    #[test]
    fn an_active_network_with_dhcp() {
        let mut r = NetworkRead::default();
        xml_fields(&facts(true), true, Some(7), true, 256, &mut r);
        assert_eq!(get(&r, "dhcp.addresses"), Some(TypedValue::ULLong(253)));
        assert_eq!(get(&r, "dhcp.leases"), Some(TypedValue::ULLong(7)));
        assert_eq!(get(&r, "dhcp.hosts"), Some(TypedValue::ULLong(2)));
        assert_eq!(get(&r, "bridge"), Some(TypedValue::String("virbr0".into())));
        assert!(r.cuts.is_empty());
    }

    #[test]
    fn an_inactive_network_has_no_leases_in_use() {
        let mut r = NetworkRead::default();
        xml_fields(&facts(true), false, None, true, 256, &mut r);
        assert_eq!(get(&r, "dhcp.leases"), Some(TypedValue::ULLong(0)));
        let mut r = NetworkRead::default();
        xml_fields(&facts(true), true, None, true, 256, &mut r);
        assert_eq!(get(&r, "dhcp.leases"), None, "the leases call failed: no series");
        let mut r = NetworkRead::default();
        xml_fields(&facts(true), true, None, false, 256, &mut r);
        assert_eq!(get(&r, "dhcp.leases"), None, "leases = false");
        assert_eq!(get(&r, "dhcp.addresses"), Some(TypedValue::ULLong(253)));
    }

    #[test]
    fn no_dhcp_no_dhcp_series() {
        let mut r = NetworkRead::default();
        xml_fields(&facts(false), true, Some(0), true, 256, &mut r);
        assert!(r.fields.iter().all(|(k, _)| !k.starts_with("dhcp.")), "{:?}", r.fields);
    }

    #[test]
    fn strings_and_counts_are_bounded() {
        let mut f = facts(true);
        f.bridge = "é".repeat(10);
        f.addresses = u128::MAX;
        let mut r = NetworkRead::default();
        xml_fields(&f, true, Some(1), true, 5, &mut r);
        assert_eq!(get(&r, "bridge"), Some(TypedValue::String("éé".into())));
        assert_eq!(get(&r, "dhcp.addresses"), Some(TypedValue::ULLong(xml::ADDRESS_CAP)));
        assert_eq!(r.cuts, vec![Cut::Strings, Cut::Addresses]);
    }

    #[test]
    fn networks_past_the_bound_are_dropped_by_name() {
        let mut nets: Vec<(String, String, ())> =
            ["c", "a", "b"].iter().map(|n| (n.to_string(), format!("u-{n}"), ())).collect();
        assert_eq!(keep_first(&mut nets, 2), 1);
        assert_eq!(nets.iter().map(|n| n.0.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(keep_first(&mut nets, 10), 0);
    }

    #[test]
    fn only_network_events_wake_the_collector() {
        use crate::selfmon::CollectorStats;
        let stats = CollectorStats::new(SOURCE, Duration::from_secs(60));
        let l = NetworksListener { wake: Wake::counted(stats.clone()) };
        l.on_event(&Event::Other);
        assert_eq!(stats.wakes(), 0);
        let change = crate::events::typed::ObjectChange::Stopped;
        l.on_event(&Event::Network { name: "n", uuid: "u", change });
        assert_eq!(stats.wakes(), 1);
    }
}
