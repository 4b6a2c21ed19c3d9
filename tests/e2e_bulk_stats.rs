//! The bulk path (`virConnectGetAllDomainStats` over every domain, no
//! filter) against `virsh domstats`. In a binary of its own: an unfiltered
//! agent polls every domain, and must not contend with other tests' guests.

mod common;

use std::time::Duration;

use common::agent::Agent;
use common::compare::{compare, has_full_stats};
use common::guest::{Guest, GuestSpec};
use common::{virsh, wait_for};

const FAST: &str = "[collectors]\ninterval = \"1s\"\n";

#[test]
fn every_exported_value_matches_virsh_domstats() {
    let g1 = Guest::start("stats", GuestSpec::default());
    let g2 = Guest::start("stats", GuestSpec { vcpus: 1, ..Default::default() });
    let agent = Agent::start(FAST);
    wait_for(Duration::from_secs(30), "full stats of both guests", || {
        let s = agent.scrape();
        (has_full_stats(&s, &g1.uuid) && has_full_stats(&s, &g2.uuid)).then_some(())
    });

    let before: Vec<_> = [&g1, &g2].iter().map(|g| virsh::domstats(&g.name, &[])).collect();
    // Two completed cycles guarantee one that started after `before`.
    agent.wait_cycles(2, Duration::from_secs(20));
    let scrape = agent.scrape();
    let after: Vec<_> = [&g1, &g2].iter().map(|g| virsh::domstats(&g.name, &[])).collect();

    let mut problems = Vec::new();
    for (i, g) in [&g1, &g2].iter().enumerate() {
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
        let rd = v("libvirt_domain_block_read_bytes_total", &[("device", "vda"), ("backing_index", "1")]);
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
        assert_eq!(info.labels["state"], "running");
        assert_eq!(info.labels["persistent"], "true");
        assert_eq!(info.labels["os_type"], "hvm");
        assert_eq!(info.labels["vcpus"], if i == 0 { "2" } else { "1" });
        assert_eq!(info.labels["max_memory_bytes"], (32u64 << 20).to_string());
    }
    assert!(problems.is_empty(), "agent and virsh disagree:\n{}", problems.join("\n"));
}
