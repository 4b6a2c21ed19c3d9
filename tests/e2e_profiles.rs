//! Export profiles and metric selection on real guests shaped like tenants
//! (4 vCPUs, vda on a backing file, vdb, two NICs): the default profile's
//! series per domain, `include`/`exclude`/`drop_labels`, groups nobody
//! exports left unasked, and the series cap, each checked against
//! `virsh domstats`.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::agent::Agent;
use common::compare::{compare_with, has_full_stats};
use common::exposition::Scrape;
use common::guest::{Guest, GuestSpec};
use common::{virsh, wait_for};
use virtpulse::registry::catalog;
use virtpulse::selection::{Profile, Selection, SelectionSpec};

const FAST: &str = "[collectors]\ninterval = \"1s\"\n";

/// The dashboards' and alerts' budget for one tenant-shaped domain.
const DEFAULT_BUDGET: usize = 80;

fn tenant(tag: &str) -> Guest {
    let g = Guest::start(tag, GuestSpec::tenant());
    wait_for(Duration::from_secs(20), "the guest's block stats", || {
        virsh::domstats(&g.name, &[]).contains_key("block.0.rd.reqs").then_some(())
    });
    g
}

/// Series of the domain that come from its stats (info included).
fn domain_series(s: &Scrape, uuid: &str) -> usize {
    s.stats_of_domain(uuid).count()
}

fn groups_asked(s: &Scrape) -> BTreeSet<String> {
    s.find("virtpulse_stats_group_enabled", &[]).iter().map(|x| x.labels["group"].clone()).collect()
}

fn names_of(s: &Scrape, uuid: &str) -> BTreeSet<String> {
    s.stats_of_domain(uuid).map(|x| x.name.clone()).collect()
}

/// Scrapes a cycle that started after `before` was read, with the virsh
/// reads around it, and returns the mismatches under `selection`.
fn check_against_virsh(agent: &Agent, g: &Guest, selection: &Selection) -> (Scrape, Vec<String>) {
    // Block and vCPU stats appear a cycle or two after the domain starts; a
    // selection without vCPU series is ready once block stats are there.
    let vcpus_selected = selection.selects_name("libvirt_domain_vcpu_time_seconds_total");
    wait_for(Duration::from_secs(30), "full stats", || {
        let s = agent.scrape();
        let ready = if vcpus_selected {
            has_full_stats(&s, &g.uuid)
        } else {
            s.value("libvirt_domain_block_read_bytes_total", &[("uuid", &g.uuid)]).is_some()
        };
        ready.then_some(())
    });
    let before = virsh::domstats(&g.name, &[]);
    agent.wait_cycles(2, Duration::from_secs(20));
    let s = agent.scrape();
    let after = virsh::domstats(&g.name, &[]);
    let problems = compare_with(g, &before, &s, &after, selection);
    (s, problems)
}

#[test]
fn default_profile_keeps_a_tenant_within_budget_and_everything_is_one_switch_away() {
    let g = tenant("prof");
    let default = Selection::new(&SelectionSpec::default(), &catalog()).unwrap();
    let agent = Agent::start_for(&[&g.name], FAST);
    let (s, problems) = check_against_virsh(&agent, &g, &default);
    assert!(problems.is_empty(), "default profile differs from virsh:\n{}", problems.join("\n"));
    let n = domain_series(&s, &g.uuid);
    println!("default profile: {n} series for a 4-vCPU, 2-disk (one on a backing file), 2-NIC guest");
    assert!(n <= DEFAULT_BUDGET, "{n} series per domain, budget {DEFAULT_BUDGET}: {:?}", names_of(&s, &g.uuid));
    // What dashboards, alerts and capacity planning need is there...
    for name in [
        "libvirt_domain_state",
        "libvirt_domain_cpu_time_seconds_total",
        "libvirt_domain_vcpu_time_seconds_total",
        "libvirt_domain_vcpu_delay_seconds_total",
        "libvirt_domain_balloon_current_bytes",
        "libvirt_domain_block_read_bytes_total",
        "libvirt_domain_block_capacity_bytes",
        "libvirt_domain_block_allocation_bytes",
        "libvirt_domain_block_physical_bytes",
        "libvirt_domain_interface_receive_bytes_total",
        "libvirt_domain_interface_transmit_drops_total",
        "libvirt_domain_info",
    ] {
        assert!(!s.find(name, &[("uuid", &g.uuid)]).is_empty(), "{name} missing from the default profile");
    }
    assert_eq!(s.find("libvirt_domain_vcpu_time_seconds_total", &[("uuid", &g.uuid)]).len(), 4, "one per vCPU");
    assert_eq!(s.find("libvirt_domain_interface_receive_bytes_total", &[("uuid", &g.uuid)]).len(), 2, "one per NIC");
    // ... the top layer of each disk only ...
    let layers: Vec<_> = s.find("libvirt_domain_block_capacity_bytes", &[("uuid", &g.uuid)]);
    let devices: BTreeSet<_> = layers.iter().map(|x| x.labels["device"].as_str()).collect();
    assert_eq!(layers.len(), 2, "one per disk, no backing layer: {layers:?}");
    assert_eq!(devices, BTreeSet::from(["vda", "vdb"]));
    // ... and the deep data is not, nor asked of libvirt.
    for name in names_of(&s, &g.uuid) {
        for deep in
            ["libvirt_domain_vcpu_kvm_", "libvirt_domain_vm_", "libvirt_domain_cpu_haltpoll_", "libvirt_domain_perf_"]
        {
            assert!(!name.starts_with(deep), "{name} is deep data, not in the default profile");
        }
        assert_ne!(name, "libvirt_domain_vcpu_state");
    }
    let asked = groups_asked(&s);
    assert_eq!(
        asked,
        ["state", "cpu-total", "balloon", "vcpu", "interface", "block"].iter().map(|g| g.to_string()).collect(),
        "groups asked of libvirt"
    );
    assert!(!s.find("libvirt_domain_info", &[("uuid", &g.uuid)])[0].labels.contains_key("state"));
    drop(agent);

    let everything =
        Selection::new(&SelectionSpec { profile: Profile::Everything, ..Default::default() }, &catalog()).unwrap();
    let agent = Agent::start_for(&[&g.name], &format!("{FAST}[metrics]\nprofile = \"everything\"\n"));
    let (s, problems) = check_against_virsh(&agent, &g, &everything);
    assert!(problems.is_empty(), "everything profile differs from virsh:\n{}", problems.join("\n"));
    let all = domain_series(&s, &g.uuid);
    println!("everything profile: {all} series for the same guest");
    assert!(all > n * 2, "everything ({all}) adds the deep data to the default ({n})");
    assert!(!s.find("libvirt_domain_vcpu_kvm_exits_total", &[("uuid", &g.uuid)]).is_empty());
    assert_eq!(s.find("libvirt_domain_block_capacity_bytes", &[("uuid", &g.uuid)]).len(), 3, "with the backing layer");
    assert!(groups_asked(&s).contains("vm"));
}

#[test]
fn include_exclude_and_drop_labels_shape_what_is_exported_and_asked() {
    let g = tenant("sel");
    let spec = SelectionSpec {
        include: vec!["libvirt_domain_block_*".into(), "libvirt_domain_state".into(), "libvirt_domain_info".into()],
        exclude: vec!["*_time_seconds_total".into()],
        drop_labels: vec!["path".into()],
        ..Default::default()
    };
    let selection = Selection::new(&spec, &catalog()).unwrap();
    let config = format!(
        "{FAST}[metrics]\ninclude = [\"libvirt_domain_block_*\", \"libvirt_domain_state\", \"libvirt_domain_info\"]\n\
         exclude = [\"*_time_seconds_total\"]\ndrop_labels = [\"path\"]\n"
    );
    let agent = Agent::start_for(&[&g.name], &config);
    let (s, problems) = check_against_virsh(&agent, &g, &selection);
    assert!(problems.is_empty(), "selection differs from virsh:\n{}", problems.join("\n"));
    for name in names_of(&s, &g.uuid) {
        let ok = (name.starts_with("libvirt_domain_block_") && !name.ends_with("_time_seconds_total"))
            || name == "libvirt_domain_state"
            || name == "libvirt_domain_info";
        assert!(ok, "{name} is not selected");
    }
    assert!(!s.find("libvirt_domain_block_read_bytes_total", &[("uuid", &g.uuid)]).is_empty());
    assert!(s.find("libvirt_domain_block_read_time_seconds_total", &[]).is_empty(), "excluded");
    assert!(s.samples.iter().all(|x| !x.labels.contains_key("path")), "the path label is dropped everywhere");
    assert!(s.find("libvirt_domain_block_read_bytes_total", &[("device", "vda")]).len() == 1);
    assert_eq!(
        groups_asked(&s),
        BTreeSet::from(["state".to_string(), "block".to_string()]),
        "only the groups of selected metrics are asked of libvirt"
    );
    assert!(s.value("virtpulse_build_info", &[]).is_some(), "the agent's own metrics are never filtered");
}

#[test]
fn the_series_cap_bounds_metrics_counts_what_it_cuts_and_logs_once() {
    let g = tenant("cap");
    // FAST has no [sinks.prometheus] table but the harness's config does.
    let agent = Agent::start_with_env(
        &format!("{FAST}[domains]\ninclude = [\"{}\"]\n", g.name),
        &[("VIRTPULSE_SINKS__PROMETHEUS__MAX_SERIES", "25")],
    );
    wait_for(Duration::from_secs(30), "the cap to be hit", || {
        let s = agent.scrape();
        (s.value("virtpulse_prometheus_series_dropped_total", &[]).unwrap_or(0.0) > 0.0).then_some(())
    });
    let first = agent.scrape().value("virtpulse_prometheus_series_dropped_total", &[]).unwrap();
    agent.wait_cycles(3, Duration::from_secs(20));
    let s = agent.scrape();
    let records: usize = s
        .samples
        .iter()
        .filter(|x| x.name.starts_with("libvirt_") && x.name != "libvirt_up" && !x.name.contains("event"))
        .count();
    assert!(records <= 25, "{records} series exported past the cap of 25");
    assert_eq!(s.value("virtpulse_prometheus_series", &[]), Some(25.0));
    assert_eq!(s.value("virtpulse_prometheus_series_limit", &[]), Some(25.0));
    let dropped = s.value("virtpulse_prometheus_series_dropped_total", &[]).unwrap();
    assert!(dropped > first, "every cycle's cut is counted ({first} -> {dropped})");
    let warnings = agent.log().matches("more series than sinks.prometheus.max_series").count();
    assert_eq!(warnings, 1, "logged once, not per cycle:\n{}", agent.log());
    assert!(s.value("virtpulse_build_info", &[]).is_some(), "the agent's own metrics are not capped");
}
