//! Node devices: the host's real devices through the private daemon
//! against `virsh nodedev-list` (every device, and per capability as
//! `--cap` matches them); SR-IOV VFs, their use by running domains,
//! mediated device capacity and host device assignments against libvirt's
//! test driver on tests/fixtures/node_devices/testdriver.xml (this machine
//! has no SR-IOV or mdev hardware); the collector woken by domain events.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::agent::{Agent, STDOUT};
use common::exposition::{assert_promtool_clean, Scrape};
use common::guest::{Guest, GuestSpec};
use common::{ensure_libvirtd, project_root, virsh, wait_for};

/// Every capability `virsh nodedev-list --cap` takes.
const CAPS: &[&str] = &[
    "system",
    "pci",
    "usb_device",
    "usb",
    "net",
    "scsi_host",
    "scsi_target",
    "scsi",
    "storage",
    "fc_host",
    "vports",
    "scsi_generic",
    "drm",
    "mdev_types",
    "mdev",
    "ccw",
    "css",
    "vdpa",
    "ap_card",
    "ap_queue",
    "ap_matrix",
    "vpd",
];

/// Cycles every 2 s: a 1 s budget for the device reads even when the
/// machine is loaded.
const DETAIL: &str = "[collectors.node_devices]\ninterval = \"2s\"\n[metrics]\nnode_device_detail = true\n";

fn names(out: &str) -> BTreeSet<String> {
    out.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect()
}

/// What virsh lists: every active device, and the devices per capability.
fn virsh_inventory(uri: &str) -> (BTreeSet<String>, BTreeMap<String, usize>) {
    let all = names(&virsh::run_on(uri, &["nodedev-list"]).unwrap_or_else(|e| panic!("{e}")));
    let per_cap = CAPS
        .iter()
        .map(|c| {
            let n = names(&virsh::run_on(uri, &["nodedev-list", "--cap", c]).unwrap_or_else(|e| panic!("{e}"))).len();
            (c.to_string(), n)
        })
        .filter(|(_, n)| *n > 0)
        .collect();
    (all, per_cap)
}

/// The same, from the agent's detail series.
fn agent_inventory(s: &Scrape) -> (BTreeSet<String>, BTreeMap<String, usize>) {
    let all = s.find("libvirt_node_device_info", &[]).iter().map(|x| x.labels["device"].clone()).collect();
    let mut per_cap = BTreeMap::new();
    for x in s.find("libvirt_node_device_capability_info", &[]) {
        *per_cap.entry(x.labels["capability"].clone()).or_insert(0) += 1;
    }
    (all, per_cap)
}

fn node_device_records(agent: &Agent) -> Vec<serde_json::Value> {
    agent.records().into_iter().filter(|r| r["kind"] == "node_device").collect()
}

#[test]
fn the_hosts_devices_match_virsh_nodedev_list() {
    let uri = ensure_libvirtd();
    let agent = Agent::start(&format!("{DETAIL}{STDOUT}"));
    // The host's devices change only with udev events (none on this
    // machine); still, the agent must agree with virsh read before and
    // after its scrape.
    let (devices, per_cap, scrape) = wait_for(Duration::from_secs(30), "the agent to list what virsh lists", || {
        let before = virsh_inventory(uri);
        let s = agent.scrape();
        let seen = agent_inventory(&s);
        let after = virsh_inventory(uri);
        (before == after && seen == before).then_some((before.0, before.1, s))
    });
    println!("{} devices; per capability: {per_cap:?}", devices.len());
    assert!(devices.len() >= 2 && per_cap.contains_key("pci"), "a host lists a computer and PCI devices: {devices:?}");
    // No SR-IOV or mediated devices here: no capacity series, and nothing
    // invented.
    for name in ["libvirt_node_device_sriov_vfs", "libvirt_node_device_mdev_available_instances"] {
        assert!(scrape.find(name, &[]).is_empty(), "{name} on a host without such devices");
    }
    // The info series agree with each device's XML (the same devices are
    // in the scrape: it matched virsh's listing).
    for d in &devices {
        // Guests here and on this host come and go with their taps.
        let Ok(xml) = virsh::run(&["nodedev-dumpxml", d]) else { continue };
        let doc = roxmltree::Document::parse(&xml).unwrap();
        let parent = doc.descendants().find(|n| n.has_tag_name("parent")).and_then(|n| n.text()).unwrap_or("");
        let driver = doc
            .descendants()
            .find(|n| n.has_tag_name("driver"))
            .and_then(|n| n.children().find(|c| c.has_tag_name("name")))
            .and_then(|n| n.text())
            .unwrap_or("");
        let first = doc.root_element().children().find(|c| c.has_tag_name("capability")).unwrap();
        let labels = [
            ("device", d.as_str()),
            ("parent", parent),
            ("driver", driver),
            ("capability", first.attribute("type").unwrap()),
        ];
        assert_eq!(scrape.value("libvirt_node_device_info", &labels), Some(1.0), "{d}: {labels:?}\n{xml}");
    }
    assert_promtool_clean(&agent.scrape_text());
    // Records: one per device, valid against the schema.
    let records = wait_for(Duration::from_secs(20), "node_device records", || {
        let r = node_device_records(&agent);
        let named: BTreeSet<String> = r.iter().filter_map(|x| x["object"]["name"].as_str().map(String::from)).collect();
        (named == devices).then_some(r)
    });
    for r in &records {
        common::schema::assert_valid(r);
    }
    // Other guests' taps come and go on this host; a device listed while
    // its sysfs entry is already gone fails its read. Only devices still
    // there may not warn.
    let now = names(&virsh::must(&["nodedev-list"]));
    let log = agent.log();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("node_devices"))
        .filter(|l| {
            let device = l.split("device=").nth(1).and_then(|r| r.split_whitespace().next()).unwrap_or("");
            !l.contains("cannot read the node device's XML") || now.contains(device)
        })
        .collect();
    assert!(warnings.is_empty(), "{warnings:#?}");
}

/// libvirt's test driver as a host with an SR-IOV PF and an mdev-capable
/// GPU, from tests/fixtures/node_devices/testdriver.xml.
fn test_driver_uri() -> String {
    format!("test://{}", project_root().join("tests/fixtures/node_devices/testdriver.xml").display())
}

#[test]
fn sriov_and_mdev_figures_are_exactly_the_test_drivers() {
    let uri = test_driver_uri();
    let agent = Agent::start(&format!("[libvirt]\nuri = \"{uri}\"\n{DETAIL}{STDOUT}"));
    const PF: &str = "pci_0000_02_00_0";
    const VF: &str = "pci_0000_02_10_1";
    const GPU: &str = "pci_0000_00_02_0";
    const MDEV: &str = "mdev_d069d019_36ea_4111_8f0a_8c9a70e21366";
    const MDEV_UUID: &str = "d069d019-36ea-4111-8f0a-8c9a70e21366";
    const GUEST_UUID: &str = "6695eb01-f6a4-8304-79aa-97f2502e193f";
    let s = wait_for(Duration::from_secs(30), "the test driver's node devices", || {
        let s = agent.scrape();
        s.value("libvirt_node_device_sriov_vfs_assigned", &[("device", PF)]).map(|_| s)
    });
    let v = |name: &str, labels: &[(&str, &str)]| s.value(name, labels);
    let pf = [("device", PF)];
    assert_eq!(v("libvirt_node_device_sriov_vfs_max", &pf), Some(7.0));
    assert_eq!(v("libvirt_node_device_sriov_vfs", &pf), Some(3.0));
    assert_eq!(v("libvirt_node_device_sriov_vfs_assigned", &pf), Some(1.0), "vf-off is shut off: its VF is free");
    assert_eq!(s.find("libvirt_node_device_sriov_vfs", &[]).len(), 1, "one PF");
    let gpu = |t: &'static str| [("device", GPU), ("type", t)];
    assert_eq!(v("libvirt_node_device_mdev_available_instances", &gpu("i915-GVTg_V5_4")), Some(2.0));
    assert_eq!(v("libvirt_node_device_mdev_available_instances", &gpu("i915-GVTg_V5_8")), Some(5.0));
    assert_eq!(v("libvirt_node_device_mdev_devices", &gpu("i915-GVTg_V5_4")), Some(0.0));
    assert_eq!(v("libvirt_node_device_mdev_devices", &gpu("i915-GVTg_V5_8")), Some(1.0));
    assert_eq!(
        v(
            "libvirt_node_device_mdev_type_info",
            &[("device", GPU), ("type", "i915-GVTg_V5_8"), ("name", "GVTg_V5_8"), ("device_api", "vfio-pci")]
        ),
        Some(1.0)
    );
    // Who holds what: the VF and the mdev, both in vf-guest; nothing in vf-off.
    let assigned = s.find("libvirt_node_device_assigned_info", &[]);
    let held: BTreeSet<(String, String, String, String)> = assigned
        .iter()
        .map(|x| {
            let l = |k: &str| x.labels.get(k).cloned().unwrap_or_default();
            (l("device"), l("uuid"), l("domain"), l("domain_uuid"))
        })
        .collect();
    let expected: BTreeSet<(String, String, String, String)> =
        [(VF, "", "vf-guest", GUEST_UUID), (MDEV, MDEV_UUID, "vf-guest", GUEST_UUID)]
            .iter()
            .map(|(a, b, c, d)| (a.to_string(), b.to_string(), c.to_string(), d.to_string()))
            .collect();
    assert_eq!(held, expected);
    assert_eq!(
        v("libvirt_node_device_info", &[("device", VF), ("physical_function", PF), ("product_id", "0x10ca")]),
        Some(1.0)
    );
    // The inventory is virsh's on the same driver file.
    assert_eq!(agent_inventory(&s), virsh_inventory(&uri));
    assert_promtool_clean(&agent.scrape_text());
    // Records carry the same, and validate.
    let records = wait_for(Duration::from_secs(20), "node_device records", || {
        let r = node_device_records(&agent);
        (r.len() >= 5).then_some(r)
    });
    for r in &records {
        common::schema::assert_valid(r);
    }
    let pf_record = records.iter().find(|r| r["object"]["name"] == PF).unwrap();
    assert_eq!(pf_record["fields"]["sriov.vfs.assigned"]["value"], 1);
    assert_eq!(pf_record["fields"]["sriov.vfs"]["unit"], "count");
    let mdev = records.iter().find(|r| r["object"]["name"] == MDEV).unwrap();
    assert_eq!(mdev["object"]["uuid"], MDEV_UUID);
    assert_eq!(mdev["fields"]["assigned.0.domain"]["value"], "vf-guest");

    // The default profile: the capacity gauges only, and still the
    // domains' XML (a PF exists, so its VFs' use is wanted).
    let plain = Agent::start(&format!("[libvirt]\nuri = \"{uri}\"\n[collectors.node_devices]\ninterval = \"1s\"\n"));
    let s = wait_for(Duration::from_secs(30), "the default profile's gauges", || {
        let s = plain.scrape();
        s.value("libvirt_node_device_sriov_vfs_assigned", &pf).map(|_| s)
    });
    assert_eq!(s.value("libvirt_node_device_sriov_vfs_assigned", &pf), Some(1.0));
    let families: BTreeSet<&str> =
        s.samples.iter().map(|x| x.name.as_str()).filter(|n| n.starts_with("libvirt_node_device_")).collect();
    assert_eq!(
        families,
        BTreeSet::from([
            "libvirt_node_device_mdev_available_instances",
            "libvirt_node_device_mdev_devices",
            "libvirt_node_device_sriov_vfs",
            "libvirt_node_device_sriov_vfs_assigned",
            "libvirt_node_device_sriov_vfs_max",
        ])
    );
    let series = s.samples.iter().filter(|x| x.name.starts_with("libvirt_node_device_")).count();
    assert_eq!(series, 7, "3 for the PF, 2 per mdev type");
}

/// Domain starts and stops wake the collector (when assignments matter),
/// which then reads only the new domain's XML.
#[test]
fn domain_events_wake_the_collector_which_reads_only_new_domains() {
    ensure_libvirtd();
    // A long interval: every later cycle is one an event triggered.
    let agent = Agent::start(&format!(
        "[collectors.node_devices]\ninterval = \"1h\"\n[metrics]\nnode_device_detail = true\n\
         [collectors.domain_stats]\nenabled = false\n[collectors.jobs]\nenabled = false\n{STDOUT}"
    ));
    // The first cycle runs at start (and may be over already).
    wait_for(Duration::from_secs(30), "the first node_devices cycle", || {
        (agent.ok_cycles_of("node_devices") >= 1.0).then_some(())
    });
    let first = wait_for(Duration::from_secs(10), "the first cycle's records", || {
        let r = node_device_records(&agent);
        r.iter().any(|x| x["object"]["name"] == "computer").then_some(r.len())
    });
    let reads = |object: &str| {
        agent.scrape().value("virtpulse_node_devices_xml_reads_total", &[("object", object)]).unwrap_or(-1.0)
    };
    let triggered = || {
        agent.scrape().value("virtpulse_collection_triggered_total", &[("collector", "node_devices")]).unwrap_or(0.0)
    };
    let (domains0, triggered0) = (reads("domain"), triggered());
    let running0 = names(&virsh::must(&["list", "--name"])).len() as f64;
    assert_eq!(domains0, running0, "the first cycle reads each running domain once");
    let g = Guest::start("nodedev", GuestSpec::default());
    wait_for(Duration::from_secs(30), "a cycle triggered by the start", || {
        (triggered() > triggered0 && reads("domain") > domains0).then_some(())
    });
    // Its tap's node device event may trigger a cycle of its own before
    // the start event's: the new domain is read once or twice, no other.
    let read = reads("domain") - domains0;
    assert!((1.0..=2.0).contains(&read), "{read} domain XML reads for one started domain");
    let domains1 = reads("domain");
    let triggered1 = triggered();
    g.destroy();
    wait_for(Duration::from_secs(30), "a cycle triggered by the stop", || (triggered() > triggered1).then_some(()));
    assert_eq!(reads("domain"), domains1, "a stopped domain is dropped, not read");
    assert_eq!(agent.ok_cycles_of("node_devices"), 1.0 + triggered());
    // Cycles an event woke send only the records that changed (a guest's
    // tap comes and goes); the host itself did not.
    let later: Vec<String> =
        node_device_records(&agent)[first..].iter().map(|r| r["object"]["name"].to_string()).collect();
    assert!(!later.iter().any(|n| n == "\"computer\""), "unchanged devices sent again: {later:?}");
}
