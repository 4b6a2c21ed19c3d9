//! The bulk path (`virConnectGetAllDomainStats` over every domain, no
//! filter) against `virsh domstats`. In a binary of its own: an unfiltered
//! agent polls every domain, and must not contend with other tests' guests.

mod common;

use std::time::Duration;

use common::agent::Agent;
use common::compare::{compare, has_full_stats};
use common::guest::{Guest, GuestSpec};
use common::{virsh, wait_for};

/// Every group and detail: each value virsh shows must be exported.
const FAST: &str = "[collectors]\ninterval = \"1s\"\n[metrics]\nprofile = \"everything\"\n";

#[test]
fn every_exported_value_matches_virsh_domstats_in_one_call_and_in_chunks() {
    let g1 = Guest::start("stats", GuestSpec::default());
    let g2 = Guest::start("stats", GuestSpec { vcpus: 1, ..Default::default() });
    let g3 = Guest::start("stats", GuestSpec::tenant());
    // One bulk call for every domain, then one domain per chunk.
    for chunks in ["chunk_size = 0", "chunk_size = 1\nchunks_in_flight = 2"] {
        let agent = Agent::start(&format!("{FAST}[collectors.domain_stats]\n{chunks}\n"));
        check_every_value(&agent, &g1, &g2, &g3, chunks);
        let s = agent.scrape();
        for why in ["late", "failed"] {
            assert_eq!(
                s.value("virtpulse_collection_chunks_missed_total", &[("reason", why)]),
                Some(0.0),
                "{chunks}: {why}"
            );
        }
    }
}

fn check_every_value(agent: &Agent, g1: &Guest, g2: &Guest, g3: &Guest, how: &str) {
    wait_for(Duration::from_secs(30), "full stats of every guest", || {
        let s = agent.scrape();
        [g1, g2, g3].iter().all(|g| has_full_stats(&s, &g.uuid)).then_some(())
    });

    let before: Vec<_> = [g1, g2, g3].iter().map(|g| virsh::domstats(&g.name, &[])).collect();
    // Two completed cycles guarantee one that started after `before`.
    agent.wait_cycles(2, Duration::from_secs(20));
    let scrape = agent.scrape();
    let after: Vec<_> = [g1, g2, g3].iter().map(|g| virsh::domstats(&g.name, &[])).collect();

    let mut problems = Vec::new();
    for (i, g) in [g1, g2, g3].iter().enumerate() {
        problems.extend(compare(g, &before[i], &scrape, &after[i]));
        // Named series from the issue, checked by hand against raw virsh values.
        let raw =
            |k: &str| after[i].get(k).and_then(|v| v.parse::<f64>().ok()).unwrap_or_else(|| panic!("virsh lacks {k}"));
        let rawb = |k: &str| before[i].get(k).and_then(|v| v.parse::<f64>().ok()).unwrap();
        let v = |n: &str, l: &[(&str, &str)]| {
            let mut all = vec![("uuid", g.uuid.as_str())];
            all.extend_from_slice(l);
            scrape.value(n, &all).unwrap_or_else(|| {
                let have: Vec<_> =
                    scrape.find(n, &[("uuid", g.uuid.as_str())]).into_iter().map(|s| &s.labels).collect();
                panic!("{n} {l:?} missing for {}; exported: {have:?}", g.name)
            })
        };
        let cpu = v("libvirt_domain_cpu_time_seconds_total", &[]);
        assert!(rawb("cpu.time") / 1e9 <= cpu + 1e-9 && cpu <= raw("cpu.time") / 1e9 + 1e-9);
        assert_eq!(v("libvirt_domain_balloon_current_bytes", &[]), raw("balloon.current") * 1024.0);
        assert_eq!(v("libvirt_domain_state", &[]), 1.0);
        let vt = v("libvirt_domain_vcpu_time_seconds_total", &[("vcpu", "0")]);
        assert!(rawb("vcpu.0.time") / 1e9 <= vt + 1e-9 && vt <= raw("vcpu.0.time") / 1e9 + 1e-9);
        let top = after[i]["block.0.backingIndex"].clone();
        assert_eq!(after[i]["block.0.name"], "vda");
        let rd = v("libvirt_domain_block_read_bytes_total", &[("device", "vda"), ("backing_index", &top)]);
        assert!(rawb("block.0.rd.bytes") <= rd && rd <= raw("block.0.rd.bytes"));
        v("libvirt_domain_block_write_bytes_total", &[("device", "vda")]);
        let ifname = after[i]["net.0.name"].clone();
        let rx = v("libvirt_domain_interface_receive_bytes_total", &[("interface", &ifname)]);
        assert!(rawb("net.0.rx.bytes") <= rx && rx <= raw("net.0.rx.bytes"));
        v("libvirt_domain_interface_transmit_bytes_total", &[("interface", &ifname)]);
        let info = scrape
            .find("libvirt_domain_info", &[("uuid", g.uuid.as_str())])
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no libvirt_domain_info for {}", g.name));
        assert_eq!(info.labels["domain"], g.name);
        assert!(!info.labels.contains_key("state"), "the state has its own gauge");
        assert_eq!(info.labels["persistent"], "true");
        assert_eq!(info.labels["os_type"], "hvm");
        assert_eq!(info.labels["vcpus"], ["2", "1", "4"][i]);
        assert_eq!(info.labels["max_memory_bytes"], (32u64 << 20).to_string());
    }
    assert!(problems.is_empty(), "{how}: agent and virsh disagree:\n{}", problems.join("\n"));
}
