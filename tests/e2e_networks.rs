//! The networks collector against a real NAT network with libvirt's
//! dnsmasq and a TCG Linux guest that takes a DHCP lease with busybox's
//! udhcpc: leases equal `virsh net-dhcp-leases`, addresses equal the
//! ranges' size, and `virsh net-destroy` / `net-undefine` show within an
//! event-triggered collection (the interval is a minute).
//!
//! This binary's private libvirtd runs in a network namespace of its own
//! (`daemon::shared_with_own_network`): the bridge, dnsmasq, the firewall
//! rules and the guest's DHCP traffic stay there; the test checks that the
//! bridge is not in the host's namespace. The agent talks to the daemon
//! through its read-only unix socket, from outside.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::agent::{Agent, STDOUT};
use common::linux::LinuxGuest;
use common::{daemon, virsh, wait_for};

/// Undefines (and destroys) the network however the test ends.
struct Net(String);

impl Drop for Net {
    fn drop(&mut self) {
        let _ = virsh::run(&["net-destroy", &self.0]);
        let _ = virsh::run(&["net-undefine", &self.0]);
    }
}

/// The leases `virsh net-dhcp-leases` lists: (MAC, IP address with prefix).
fn virsh_leases(net: &str) -> Vec<(String, String)> {
    virsh::must(&["net-dhcp-leases", net])
        .lines()
        .skip_while(|l| !l.starts_with("---"))
        .skip(1)
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            // Expiry date, time, MAC, protocol, address/prefix, ...
            (cols.len() >= 5).then(|| (cols[2].to_string(), cols[4].to_string()))
        })
        .collect()
}

fn netns_of(pid: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/net")).map(|p| p.display().to_string()).unwrap_or_default()
}

/// Whether `ip link show DEV` finds the device, in the daemon's network
/// namespace (`in_daemon`) or in this process's.
fn link_exists(dev: &str, in_daemon: Option<u32>) -> bool {
    let mut cmd = match in_daemon {
        Some(pid) => {
            let mut c = Command::new("nsenter");
            c.args(["-t", &pid.to_string(), "-n", "ip", "link", "show", dev]);
            c
        }
        None => {
            let mut c = Command::new("ip");
            c.args(["link", "show", dev]);
            c
        }
    };
    cmd.output().map(|o| o.status.success()).unwrap_or(false)
}

#[test]
fn a_nat_network_with_a_dhcp_guest_matches_virsh_and_follows_events() {
    let t0 = Instant::now();
    let d = daemon::shared_with_own_network();
    let pid = d.pid().expect("the private daemon's pid");
    assert_ne!(netns_of(&pid.to_string()), netns_of("self"), "the daemon must not share the host's network namespace");

    let name = format!("vpt-net-{}", std::process::id());
    let bridge = format!("vptbr{}", std::process::id() % 100_000);
    let mac = "52:54:00:5e:00:01";
    let net = Net(name.clone());
    let xml = format!(
        "<network><name>{name}</name><forward mode='nat'/><bridge name='{bridge}' stp='off'/>\
         <ip address='192.168.150.1' netmask='255.255.255.0'><dhcp>\
         <range start='192.168.150.100' end='192.168.150.119'/>\
         <host mac='52:54:00:5e:00:99' ip='192.168.150.50'/></dhcp></ip>\
         <ip family='ipv6' address='fd00:150::1' prefix='64'><dhcp>\
         <range start='fd00:150::100' end='fd00:150::1ff'/></dhcp></ip></network>"
    );
    let dir = common::scratch_dir("net");
    let path = dir.path().join("net.xml");
    std::fs::write(&path, xml).unwrap();
    virsh::must(&["net-define", path.to_str().unwrap()]);
    virsh::must(&["net-start", &name]);
    let uuid = virsh::must(&["net-uuid", &name]).trim().to_string();
    assert!(link_exists(&bridge, Some(pid)), "the bridge {bridge} is not in the daemon's namespace");
    assert!(!link_exists(&bridge, None), "the bridge {bridge} appeared in the host's network namespace");

    // The guest's second NIC is on the network; udhcpc takes a lease (the
    // script does nothing: the lease is what counts).
    let guest = LinuxGuest::start(
        "net",
        &format!("<interface type='network'><source network='{name}'/><mac address='{mac}'/><model type='virtio'/></interface>"),
    );
    let iface =
        guest.run(&format!("for i in /sys/class/net/*; do [ \"$(cat $i/address)\" = {mac} ] && basename $i; done"));
    let iface = iface.trim();
    assert!(iface.starts_with("eth"), "no interface with MAC {mac} in the guest: {iface:?}");
    let dhcp = guest.run(&format!("ip link set {iface} up; udhcpc -i {iface} -n -q -t 10 -T 1 -s /bin/true 2>&1"));
    let leased = dhcp
        .split_whitespace()
        .skip_while(|w| *w != "lease")
        .nth(2)
        .unwrap_or_else(|| panic!("udhcpc got no lease:\n{dhcp}"))
        .to_string();
    let leases = wait_for(Duration::from_secs(20), "the lease in virsh net-dhcp-leases", || {
        let l = virsh_leases(&name);
        (!l.is_empty()).then_some(l)
    });
    assert_eq!(leases.len(), 1, "{leases:?}");
    assert_eq!(leases[0].0, mac);
    assert_eq!(leases[0].1.split('/').next(), Some(leased.as_str()), "udhcpc said {leased}");
    println!("guest {} leased {leased} on {name} after {:?}", guest.guest.name, t0.elapsed());
    // A read-only connection lists it too (the agent's kind).
    let ro = d.uri.replace("libvirt-sock", "libvirt-sock-ro");
    assert!(virsh::run_on(&ro, &["net-dhcp-leases", &name]).unwrap().contains(mac));

    // On the read-only socket (every call the collector makes is allowed
    // there), a minute between regular collections: what changes later
    // comes from event-triggered ones.
    let agent = Agent::start(&format!(
        "[libvirt]\nuri = \"{ro}\"\n{STDOUT}[collectors.domain_stats]\nenabled = false\n[collectors.jobs]\nenabled = false\n\
         [collectors.node]\nenabled = false\n[collectors.pools]\nenabled = false\n\
         [collectors.networks]\ninterval = \"60s\"\n"
    ));
    let n = [("network", name.as_str())];
    wait_for(Duration::from_secs(20), "the network's series", || {
        agent.scrape().value("libvirt_network_up", &n).filter(|v| *v == 1.0)
    });
    let s = agent.scrape();
    assert_eq!(s.value("libvirt_network_dhcp_leases", &n), Some(virsh_leases(&name).len() as f64));
    assert_eq!(s.value("libvirt_network_dhcp_addresses", &n), Some(20.0 + 256.0), "both ranges, summed");
    assert_eq!(s.value("libvirt_network_dhcp_hosts", &n), Some(1.0));
    let info = [
        ("network", name.as_str()),
        ("uuid", uuid.as_str()),
        ("bridge", bridge.as_str()),
        ("forward_mode", "nat"),
        ("persistent", "true"),
        ("autostart", "false"),
    ];
    assert_eq!(s.value("libvirt_network_info", &info), Some(1.0), "{}", agent.scrape_text());
    for what in ["state", "xml", "leases", "timeout"] {
        assert_eq!(s.value("virtpulse_networks_errors_total", &[("what", what)]), Some(0.0), "{what}");
    }
    common::exposition::assert_promtool_clean(&agent.scrape_text());
    let record = wait_for(Duration::from_secs(10), "a network record", || {
        agent.records().into_iter().find(|r| r["kind"] == "network" && r["object"]["name"] == name.as_str())
    });
    common::schema::assert_valid(&record);
    assert_eq!(record["object"]["uuid"], uuid.as_str());
    assert_eq!(record["fields"]["dhcp.leases"]["value"], 1);
    assert_eq!(record["fields"]["forward.mode"]["value"], "nat");
    let cycles = agent.ok_cycles_of("networks");

    // Destroyed: the event wakes the collector long before the next tick.
    let wakes = |a: &Agent| a.scrape().value("virtpulse_collection_wakes_total", &[("collector", "networks")]);
    let (woken, destroyed) = (wakes(&agent).unwrap_or(0.0), Instant::now());
    virsh::must(&["net-destroy", &name]);
    wait_for(Duration::from_secs(20), "libvirt_network_up 0 and no leases", || {
        let s = agent.scrape();
        (s.value("libvirt_network_up", &n) == Some(0.0) && s.value("libvirt_network_dhcp_leases", &n) == Some(0.0))
            .then_some(())
    });
    let took = destroyed.elapsed();
    assert!(took < Duration::from_secs(30), "{took:?}: not an event-triggered collection");
    assert!(wakes(&agent).unwrap_or(0.0) > woken, "no wake counted");
    assert!(agent.ok_cycles_of("networks") > cycles);
    assert!(virsh::must(&["net-info", &name]).lines().any(|l| l.starts_with("Active:") && l.ends_with("no")));
    assert!(!link_exists(&bridge, Some(pid)), "the bridge outlived the network");
    // libvirt itself still lists the last run's lease (until it expires);
    // the agent reports none in use.
    println!("after net-destroy: virsh net-dhcp-leases lists {:?}; the agent saw it in {took:?}", virsh_leases(&name));
    let s = agent.scrape();
    assert_eq!(s.value("libvirt_network_dhcp_addresses", &n), Some(276.0), "the definition's ranges stay");
    assert_eq!(s.value("libvirt_network_info", &[("network", name.as_str()), ("persistent", "true")]), Some(1.0));

    // Undefined: its series go.
    virsh::must(&["net-undefine", &name]);
    wait_for(Duration::from_secs(20), "the undefined network's series to go", || {
        let s = agent.scrape();
        s.samples.iter().all(|x| x.labels.get("network").map(String::as_str) != Some(name.as_str())).then_some(())
    });
    drop(net);
    drop(guest);
    println!("e2e_networks: {:?}", t0.elapsed());
}
