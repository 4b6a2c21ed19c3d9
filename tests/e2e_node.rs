//! Node (host) figures against `virsh nodeinfo`, `nodecpustats`,
//! `nodememstats`, `freecell --all`, `freepages --all` and `version` on the
//! same host, read before and after the agent's collection.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::agent::Agent;
use common::exposition::Scrape;
use common::{ensure_libvirtd, virsh, wait_for};

const NODE_FAST: &str = "[collectors.node]\ninterval = \"500ms\"\nper_cpu = true\n";

/// `key: number [unit]` lines as key -> number.
fn pairs(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .filter_map(|(k, v)| Some((k.trim().to_string(), v.split_whitespace().next()?.parse().ok()?)))
        .collect()
}

struct Reading {
    info: BTreeMap<String, u64>,
    model: String,
    cpu: BTreeMap<String, u64>,
    per_cpu: Vec<BTreeMap<String, u64>>,
    mem: BTreeMap<String, u64>,
    cell_mem: BTreeMap<String, u64>,
    freecell: BTreeMap<String, u64>,
    freepages: BTreeMap<String, u64>,
    running: usize,
    persistent: usize,
}

fn read() -> Reading {
    let nodeinfo = virsh::must(&["nodeinfo"]);
    let info = pairs(&nodeinfo);
    let cpus = info["CPU(s)"] as usize;
    let freepages = virsh::must(&["freepages", "--all"]);
    Reading {
        model: nodeinfo.lines().find_map(|l| l.strip_prefix("CPU model:")).unwrap().trim().to_string(),
        cpu: pairs(&virsh::must(&["nodecpustats"])),
        per_cpu: (0..cpus).map(|c| pairs(&virsh::must(&["nodecpustats", "--cpu", &c.to_string()]))).collect(),
        mem: pairs(&virsh::must(&["nodememstats"])),
        cell_mem: pairs(&virsh::must(&["nodememstats", "--cell", "0"])),
        freecell: pairs(&virsh::must(&["freecell", "--all"])),
        freepages: freepages
            .lines()
            .filter_map(|l| l.split_once("KiB:"))
            .filter_map(|(k, v)| Some((k.trim().to_string(), v.trim().parse().ok()?)))
            .collect(),
        running: virsh::must(&["list", "--state-running", "--name"]).lines().filter(|l| !l.trim().is_empty()).count(),
        persistent: virsh::must(&["list", "--all", "--persistent", "--name"])
            .lines()
            .filter(|l| !l.trim().is_empty())
            .count(),
        info,
    }
}

fn get(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    s.value(name, labels).unwrap_or_else(|| panic!("{name} {labels:?} missing"))
}

/// A counter read between two virsh reads.
fn between(what: &str, before: u64, v: f64, after: u64, scale: f64) {
    let (lo, hi) = (before as f64 * scale, after as f64 * scale);
    assert!(v >= lo - 1e-6 && v <= hi + 1e-6, "{what}: agent {v}, virsh {lo}..{hi}");
}

/// A gauge that moves on its own (free memory): within the two reads, give
/// or take 2%.
fn near(what: &str, before: u64, v: f64, after: u64, scale: f64) {
    let (lo, hi) = ((before.min(after)) as f64 * scale, (before.max(after)) as f64 * scale);
    assert!(v >= lo * 0.98 && v <= hi * 1.02, "{what}: agent {v}, virsh {lo}..{hi}");
}

#[test]
fn node_values_match_virsh() {
    ensure_libvirtd();
    let agent = Agent::start(NODE_FAST);
    wait_for(Duration::from_secs(20), "node metrics", || agent.scrape().value("libvirt_node_cpus", &[]).map(|_| ()));
    let b = read();
    agent.wait_cycles_of("node", 2, Duration::from_secs(20));
    let s = agent.scrape();
    let a = read();

    assert_eq!(get(&s, "libvirt_node_cpus", &[]), a.info["CPU(s)"] as f64);
    assert_eq!(get(&s, "libvirt_node_cpu_frequency_hertz", &[]), a.info["CPU frequency"] as f64 * 1e6);
    assert_eq!(get(&s, "libvirt_node_cpu_sockets_per_cell", &[]), a.info["CPU socket(s)"] as f64);
    assert_eq!(get(&s, "libvirt_node_cpu_cores_per_socket", &[]), a.info["Core(s) per socket"] as f64);
    assert_eq!(get(&s, "libvirt_node_cpu_threads_per_core", &[]), a.info["Thread(s) per core"] as f64);
    assert_eq!(get(&s, "libvirt_node_numa_cells", &[]), a.info["NUMA cell(s)"] as f64);
    assert_eq!(get(&s, "libvirt_node_memory_bytes", &[]), a.info["Memory size"] as f64 * 1024.0);
    assert_eq!(get(&s, "libvirt_node_info", &[("model", a.model.as_str())]), 1.0);

    // virsh prints libvirt's "kernel" field as "system".
    for (virsh_key, mode) in [("user", "user"), ("system", "kernel"), ("idle", "idle"), ("iowait", "iowait")] {
        let v = get(&s, "libvirt_node_cpu_time_seconds_total", &[("mode", mode)]);
        between(&format!("all CPUs {mode}"), b.cpu[virsh_key], v, a.cpu[virsh_key], 1e-9);
        for cpu in 0..a.per_cpu.len() {
            let c = cpu.to_string();
            let v = get(&s, "libvirt_node_logical_cpu_time_seconds_total", &[("cpu", c.as_str()), ("mode", mode)]);
            between(&format!("cpu {cpu} {mode}"), b.per_cpu[cpu][virsh_key], v, a.per_cpu[cpu][virsh_key], 1e-9);
        }
    }

    assert_eq!(get(&s, "libvirt_node_memory_total_bytes", &[]), a.mem["total"] as f64 * 1024.0);
    near("free", b.mem["free"], get(&s, "libvirt_node_memory_free_bytes", &[]), a.mem["free"], 1024.0);
    near("cached", b.mem["cached"], get(&s, "libvirt_node_memory_cached_bytes", &[]), a.mem["cached"], 1024.0);
    near("buffers", b.mem["buffers"], get(&s, "libvirt_node_memory_buffers_bytes", &[]), a.mem["buffers"], 1024.0);
    assert_eq!(get(&s, "libvirt_node_numa_memory_total_bytes", &[("cell", "0")]), a.cell_mem["total"] as f64 * 1024.0);
    near(
        "cell 0 free",
        b.freecell["0"],
        get(&s, "libvirt_node_numa_memory_free_bytes", &[("cell", "0")]),
        a.freecell["0"],
        1024.0,
    );

    for size_kib in a.freepages.keys() {
        let bytes = (size_kib.parse::<u64>().unwrap() * 1024).to_string();
        let v = get(&s, "libvirt_node_free_pages", &[("cell", "0"), ("page_size_bytes", bytes.as_str())]);
        near(&format!("{size_kib} KiB pages"), b.freepages[size_kib], v, a.freepages[size_kib], 1.0);
    }

    let daemon = virsh::must(&["version", "--daemon"]);
    let version = |prefix: &str| daemon.lines().find_map(|l| l.strip_prefix(prefix)).unwrap().trim().to_string();
    let hv = version("Running hypervisor:");
    let (hv_name, hv_version) = hv.split_once(' ').unwrap();
    let daemon_version = version("Running against daemon:");
    let labels =
        [("daemon_version", daemon_version.as_str()), ("hypervisor", hv_name), ("hypervisor_version", hv_version)];
    assert_eq!(get(&s, "libvirt_node_versions_info", &labels), 1.0);

    assert_eq!(b.running, a.running, "domains started or stopped during the test");
    assert_eq!(get(&s, "libvirt_node_domains", &[("state", "running")]), a.running as f64);
    assert_eq!(get(&s, "libvirt_node_domains_persistent", &[]), a.persistent as f64);
}

/// The test driver lacks virNodeGetMemoryStats: the rest is collected and
/// the gap is logged once, not every cycle.
#[test]
fn missing_node_calls_are_logged_once() {
    let agent = Agent::start_with_env(
        "[collectors.node]\ninterval = \"100ms\"\n[collectors.jobs]\ninterval = \"100ms\"\n",
        &[("VIRTPULSE_LIBVIRT__URI", "test:///default")],
    );
    agent.wait_cycles_of("node", 5, Duration::from_secs(20));
    agent.wait_cycles_of("jobs", 5, Duration::from_secs(20));
    let s = agent.scrape();
    assert_eq!(s.value("libvirt_node_cpus", &[]), Some(16.0));
    assert!(s.value("libvirt_node_numa_memory_free_bytes", &[("cell", "0")]).is_some());
    assert!(s.value("libvirt_node_cpu_time_seconds_total", &[("mode", "user")]).is_some());
    assert_eq!(s.value("libvirt_node_memory_total_bytes", &[]), None);
    let log = agent.log();
    assert_eq!(log.lines().filter(|l| l.contains("virNodeGetMemoryStats")).count(), 1, "{log}");
    assert_eq!(log.lines().filter(|l| l.contains("no job figures")).count(), 1, "{log}");
    assert_eq!(s.value("virtpulse_collections_total", &[("collector", "node"), ("result", "error")]), Some(0.0));
}
