//! The stats-key and event-ID reference of one libvirt daemon, generated
//! from what it returns (scripts/reference-keys.sh runs this; it writes
//! docs/reference/keys-12.9.md).
//!
//! `reference_keys probe URI DOMAIN` prints, as JSON: the client library's,
//! daemon's and hypervisor's versions, every bulk-stats key of DOMAIN (all
//! groups, backing chain included) with the typed-parameter type the daemon
//! sent, and which event callbacks this client library and the daemon
//! accept (registered the way the agent registers them). Run it once on the
//! root's own client library (inside the root) and once on the host's.
//!
//! `reference_keys render ROOT ROOT_PROBE HOST_PROBE VIRSH GUEST` prints the
//! Markdown: every key pattern with its type, the unit records give it and
//! the metric the agent's catalog maps it to (or "unmapped"), the catalog
//! rows this daemon did not return, and the event table. VIRSH is that
//! daemon's `virsh domstats --raw --backing DOMAIN`, whose keys must be the
//! probe's; GUEST describes the guest.

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use virtpulse::collectors::domain_stats::metrics::DOMAIN_STATS;
use virtpulse::libvirt::stats::{ALL_GROUPS, FLAG_BACKING};
use virtpulse::libvirt::typed_params::KeyInterner;
use virtpulse::libvirt::{Connection, OpenOptions};
use virtpulse::record::mapping::{mapping, pattern_of};

#[derive(Serialize, Deserialize)]
struct Probe {
    client: String,
    daemon: String,
    hypervisor: String,
    kernel: String,
    /// (key, typed-parameter type)
    keys: Vec<(String, String)>,
    /// Parameters whose type code this build cannot decode: (key, code).
    undecoded: Vec<(String, i32)>,
    events: Vec<Event>,
}

#[derive(Serialize, Deserialize)]
struct Event {
    family: String,
    id: u32,
    name: String,
    /// `None`: registered; else the error.
    refused: Option<String>,
}

fn version(v: u64) -> String {
    format!("{}.{}.{}", v / 1_000_000, v / 1000 % 1000, v % 1000)
}

fn probe(uri: &str, domain: &str) -> Result<Probe, String> {
    let opts = OpenOptions { uri: uri.into(), read_only: true, keepalive_interval: 0, keepalive_count: 0 };
    let conn = Connection::open(&opts).map_err(|e| format!("cannot open {uri}: {e}"))?;
    let v = conn.versions().map_err(|e| e.to_string())?;
    // Groups 0: every group the daemon supports.
    let stats = conn.all_domain_stats(0, FLAG_BACKING, &mut KeyInterner::default()).map_err(|e| e.to_string())?;
    let d = stats.into_iter().find(|d| d.name == domain).ok_or_else(|| format!("no domain {domain} at {uri}"))?;
    let keys = d.params.params.iter().map(|p| (p.name.to_string(), p.value.type_name().to_string())).collect();
    let undecoded = d.params.undecoded.iter().map(|u| (u.name.clone(), u.type_code)).collect();
    let sink: virtpulse::libvirt::events::EventSink = Arc::new(|_| {});
    let events = conn
        .register_events(&sink, false)
        .into_iter()
        .map(|r| Event {
            family: r.family.as_str().into(),
            id: r.event_id,
            name: r.name.into(),
            refused: r.result.err().map(|e| e.to_string()),
        })
        .collect();
    conn.deregister_events();
    Ok(Probe {
        client: version(v.library),
        daemon: version(v.daemon),
        hypervisor: format!("{} {}", v.hypervisor_type, version(v.hypervisor)),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().into(),
        keys,
        undecoded,
        events,
    })
}

/// `block.*.rd.bytes` as the docs write it.
fn shown(pattern: &str) -> String {
    pattern.split('.').map(|s| if s == "*" { "<n>" } else { s }).collect::<Vec<_>>().join(".")
}

/// The stats group a key comes from.
fn group_of(key: &str) -> &'static str {
    match key.split('.').next().unwrap_or("") {
        "state" => "state",
        "cpu" => "cpu-total",
        "balloon" => "balloon",
        "vcpu" => "vcpu",
        "net" => "interface",
        "block" => "block",
        "perf" => "perf",
        "iothread" => "iothread",
        "memory" => "memory",
        "dirtyrate" => "dirtyrate",
        "vm" => "vm",
        _ => "other",
    }
}

/// What the catalog does with a key: (metric cell, exported by).
fn catalog_cells(key: &str) -> (String, String) {
    let m = mapping(&DOMAIN_STATS, key);
    match &m.export {
        Some(e) => (
            format!("`{}` ({})", e.name, e.mtype.as_str()),
            m.switch.map(|s| format!("`{}`", s.key)).unwrap_or_else(|| "default".into()),
        ),
        None if m.unmapped => ("unmapped (kept in records, counted)".into(), "".into()),
        None => ("records only (a label or count of other series)".into(), "".into()),
    }
}

/// Why a catalog row's keys are missing from this daemon's answer (the
/// host and guest scripts/reference-keys.sh uses).
fn why_absent(pattern: &str) -> &'static str {
    if pattern.starts_with("cpu.cache.monitor")
        || pattern.starts_with("cpu.energy.monitor")
        || pattern.starts_with("memory.bandwidth.monitor")
    {
        "a resctrl monitor: needs resctrl on the host (this kernel has none) and a monitor in `<cputune>`"
    } else if pattern.starts_with("balloon.") {
        "reported by the guest's balloon driver: the no-OS guest has none"
    } else if pattern == "vcpu.*.halted" {
        "only where QEMU reports a vCPU's halted state (s390)"
    } else if pattern == "block.*.errors" {
        "Xen only"
    } else if pattern.starts_with("block.*.limits.") {
        "QEMU leaves out limits that are zero: file-backed disks have only the four above"
    } else if matches!(pattern, "perf.cmt" | "perf.mbmt" | "perf.mbml") {
        "Intel CMT/MBM perf events, gone from Linux since 4.14 (resctrl replaces them)"
    } else if pattern.starts_with("perf.") {
        "a hardware perf event: this VM has no PMU (the software events above work)"
    } else {
        ""
    }
}

#[derive(Default)]
struct Row {
    types: BTreeSet<String>,
    units: BTreeSet<String>,
    metric: BTreeSet<(String, String)>,
    keys: usize,
}

fn read_probe(path: &str) -> Result<Probe, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    serde_json::from_str(&text).map_err(|e| format!("{path}: {e}"))
}

fn render(root: &str, ours: &Probe, host: &Probe, virsh: &str, guest: &str) -> String {
    let mut rows: BTreeMap<(usize, String), Row> = BTreeMap::new();
    let order = |g: &str| ALL_GROUPS.iter().position(|x| x.name == g).unwrap_or(ALL_GROUPS.len());
    let (mut mapped, mut described, mut unmapped) = (0, 0, Vec::new());
    for (key, ty) in &ours.keys {
        let value = match ty.as_str() {
            "string" => virtpulse::value::TypedValue::String("".into()),
            "boolean" => virtpulse::value::TypedValue::Boolean(false),
            "double" => virtpulse::value::TypedValue::Double(0.0),
            _ => virtpulse::value::TypedValue::ULLong(0),
        };
        let m = mapping(&DOMAIN_STATS, key);
        match (&m.export, m.unmapped) {
            (Some(_), _) => mapped += 1,
            (None, true) => unmapped.push(key.clone()),
            (None, false) => described += 1,
        }
        let pattern = pattern_of(key);
        let row = rows.entry((order(group_of(key)), pattern)).or_default();
        row.types.insert(ty.clone());
        let unit = serde_json::to_value(m.unit_for(&value)).ok().and_then(|v| v.as_str().map(String::from));
        row.units.insert(unit.unwrap_or_default());
        row.metric.insert(catalog_cells(key));
        row.keys += 1;
    }
    let patterns = |keys: &mut dyn Iterator<Item = &String>| keys.map(|k| pattern_of(k)).collect::<BTreeSet<_>>();
    let unmapped_patterns = patterns(&mut unmapped.iter());
    let virsh_keys: BTreeSet<String> =
        virsh.lines().filter_map(|l| l.trim().split_once('=').map(|(k, _)| k.to_string())).collect();
    let probe_keys: BTreeSet<String> = ours.keys.iter().map(|(k, _)| k.clone()).collect();

    let mut s = String::new();
    let mut w = |line: &str| {
        s.push_str(line);
        s.push('\n');
    };
    w(&format!("# libvirt {} stats keys and event IDs, as one daemon returned them", ours.daemon));
    w("");
    w(&format!(
        "Generated by `scripts/reference-keys.sh {root}` (`examples/reference_keys.rs`) from a private daemon of the \
         `{root}` root (`scripts/build-test-roots.sh`); do not edit by hand, run it again. The key and type columns \
         are what the daemon returned (`virConnectGetAllDomainStats`, every group, backing chain included); the unit \
         and metric columns are what this build's catalog (`src/collectors/domain_stats/metrics.rs`) makes of them. \
         `tests/e2e_matrix.rs` checks that every key its 12.9 guest returns has a row here, and `tests/cli.rs` that \
         the metric column still matches the catalog."
    ));
    w("");
    w("| | |");
    w("|---|---|");
    w(&format!("| daemon | libvirt {}, {} (root `{root}`) |", ours.daemon, ours.hypervisor));
    w(&format!(
        "| client library | the root's libvirt0 {}; the host's {} in the last column of the event table |",
        ours.client, host.client
    ));
    w(&format!(
        "| kernel | {} (`vm.*` and `vcpu.<n>.<stat>.sum\\|cur\\|max` are KVM's statistics: the kernel names them) |",
        ours.kernel
    ));
    w(&format!("| guest | {guest} |"));
    w("");
    let unmapped_list: Vec<String> = unmapped_patterns.iter().map(|p| format!("`{}`", shown(p))).collect();
    w(&format!(
        "**{} keys returned ({} patterns): {mapped} mapped to a metric, {described} kept in records only as labels or \
         counts, {} unmapped{}.**",
        ours.keys.len(),
        rows.len(),
        unmapped.len(),
        if unmapped_list.is_empty() { String::new() } else { format!(" ({})", unmapped_list.join(", ")) }
    ));
    if virsh_keys == probe_keys {
        w(&format!("The root's `virsh domstats --raw --backing` returned the same {} keys.", virsh_keys.len()));
    } else {
        let only_virsh: Vec<_> = virsh_keys.difference(&probe_keys).collect();
        let only_api: Vec<_> = probe_keys.difference(&virsh_keys).collect();
        w(&format!(
            "The root's `virsh domstats --raw --backing` differs: only in virsh {only_virsh:?}, only through the API \
             {only_api:?} (values that appear or go between two reads)."
        ));
    }
    if !ours.undecoded.is_empty() {
        w(&format!("Parameters of a type this build cannot decode (type code): {:?}.", ours.undecoded));
    }
    w("");
    w("## Stats keys");
    w("");
    w("`<n>` is an index (disk, NIC, vCPU, IOThread, histogram bin, backing layer). `block.<n>.*` rows cover every \
       layer of a backing chain: the top layer's series are exported as the row says, the layers below it with the \
       `backing_chain` switch. Unit: what records carry (`virtpulse.record/v1`); Prometheus and OTLP get base units.");
    let mut group = usize::MAX;
    for ((g, pattern), row) in &rows {
        if *g != group {
            group = *g;
            let name = ALL_GROUPS.get(*g).map(|x| x.name).unwrap_or("other");
            w("");
            w(&format!("### {name}"));
            w("");
            w("| key | type | unit | metric | exported by | keys |");
            w("|---|---|---|---|---|---|");
        }
        let join = |set: &BTreeSet<String>| set.iter().cloned().collect::<Vec<_>>().join(", ");
        let metric: Vec<String> = row.metric.iter().map(|(m, _)| m.clone()).collect();
        let by: Vec<String> = row.metric.iter().map(|(_, b)| b.clone()).filter(|b| !b.is_empty()).collect();
        w(&format!(
            "| `{}` | {} | {} | {} | {} | {} |",
            shown(pattern),
            join(&row.types),
            join(&row.units),
            metric.join("; "),
            by.join(", "),
            row.keys
        ));
    }
    w("");
    w("## In the catalog, not returned here");
    w("");
    w("Stats rows of the catalog that no returned key matched: decoded and exported as the row says when a daemon \
       returns them, but this guest on this host gave none. (The catalog's rows read from the domain XML and \
       `virDomainGetVcpus` are not stats keys: [metrics.md](../metrics.md).)");
    w("");
    w("| key | group | metric | exported by | why not here |");
    w("|---|---|---|---|---|");
    let seen: BTreeSet<&str> = rows.keys().map(|(_, p)| p.as_str()).collect();
    let stats_group = |g: &str| ALL_GROUPS.iter().any(|x| x.name == g);
    for spec in DOMAIN_STATS.table.iter().filter(|t| stats_group(t.group) && !seen.contains(t.pattern)) {
        let (metric, by) = match spec.export {
            Some(e) => (
                format!("`{}` ({})", e.name, e.mtype.as_str()),
                spec.switch.map(|s| format!("`{}`", s.key)).unwrap_or_else(|| "default".into()),
            ),
            None => ("records only (a label or count of other series)".into(), String::new()),
        };
        w(&format!("| `{}` | {} | {metric} | {by} | {} |", shown(spec.pattern), spec.group, why_absent(spec.pattern)));
    }
    w("");
    w("## Domain event IDs and the other callbacks");
    w("");
    w("Registered as the agent registers them (`virConnect*EventRegisterAny`, every ID this build knows; the QEMU \
       monitor callback, off by default, left out). Which IDs register depends on the client library too: it \
       refuses IDs newer than itself before asking the daemon.");
    w("");
    let count = |p: &Probe, family: Option<&str>| {
        let all: Vec<&Event> = p.events.iter().filter(|e| family.is_none_or(|f| e.family == f)).collect();
        (all.iter().filter(|e| e.refused.is_none()).count(), all.len())
    };
    let (ok, all) = count(ours, None);
    let (dok, dall) = count(ours, Some("domain"));
    let (hok, hall) = count(host, None);
    let (hdok, hdall) = count(host, Some("domain"));
    w(&format!(
        "Root's client {}: {ok} of {all} callbacks registered ({dok} of {dall} domain IDs). Host's client {}: {hok} \
         of {hall} ({hdok} of {hdall} domain IDs).",
        ours.client, host.client
    ));
    w("");
    w(&format!("| family | ID | callback | root's client {} | host's client {} |", ours.client, host.client));
    w("|---|---|---|---|---|");
    let host_events: BTreeMap<(&str, u32), &Event> =
        host.events.iter().map(|e| ((e.family.as_str(), e.id), e)).collect();
    let cell = |e: Option<&Event>| match e {
        None => "not asked".to_string(),
        Some(Event { refused: None, .. }) => "registered".into(),
        Some(Event { refused: Some(err), .. }) => format!("refused: {}", err.replace('|', "\\|")),
    };
    for e in &ours.events {
        w(&format!(
            "| {} | {} | `{}` | {} | {} |",
            e.family,
            e.id,
            e.name,
            cell(Some(e)),
            cell(host_events.get(&(e.family.as_str(), e.id)).copied())
        ));
    }
    s
}

fn run(args: &[String]) -> Result<String, String> {
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["probe", uri, domain] => serde_json::to_string_pretty(&probe(uri, domain)?).map_err(|e| e.to_string()),
        ["render", root, ours, host, virsh, guest] => {
            let virsh = std::fs::read_to_string(virsh).map_err(|e| format!("{virsh}: {e}"))?;
            Ok(render(root, &read_probe(ours)?, &read_probe(host)?, &virsh, guest))
        }
        _ => Err("usage: reference_keys probe URI DOMAIN | render ROOT ROOT_PROBE HOST_PROBE VIRSH GUEST".into()),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(out) => {
            print!("{out}");
            if !out.ends_with('\n') {
                println!();
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("reference_keys: {e}");
            ExitCode::FAILURE
        }
    }
}
