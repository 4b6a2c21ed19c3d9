//! From what the XML readers found (the node devices, the host devices
//! the running domains' XML assigns) to each device's record fields: VFs
//! in use per physical function, mediated devices per type, and who holds
//! each assigned device. Pure: the unit tests and the fuzz harness drive it.

use std::collections::{HashMap, HashSet};

use super::xml::{Cuts, DeviceFacts, Hostdev, PciAddress};
use crate::value::TypedValue;

/// Domains listed per assigned device at most (a PCI function can only be
/// in one running domain; a USB device named by vendor/product in several
/// configurations is the rest).
pub(crate) const MAX_ASSIGNMENTS: usize = 16;

/// A running domain and the host devices its XML assigns.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DomainHostdevs<'a> {
    pub name: &'a str,
    pub uuid: &'a str,
    pub hostdevs: &'a [Hostdev],
}

/// One device's record: its name, its UUID (mediated devices) and fields.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DeviceRecord {
    pub name: String,
    pub uuid: String,
    pub fields: Vec<(String, TypedValue)>,
}

fn text(s: &str) -> TypedValue {
    TypedValue::String(s.into())
}

/// Each device's fields. `domains` is `None` when the domains' XML was not
/// read (nothing needs it): the records then say nothing of assignments.
pub(crate) fn build(devices: &[DeviceFacts], domains: Option<&[DomainHostdevs]>, cuts: &mut Cuts) -> Vec<DeviceRecord> {
    let mut by_pci: HashMap<PciAddress, usize> = HashMap::new();
    let mut by_usb: HashMap<(u32, u32), usize> = HashMap::new();
    let mut by_usb_ids: HashMap<(u32, u32), Vec<usize>> = HashMap::new();
    let mut by_mdev: HashMap<&str, usize> = HashMap::new();
    // Mediated devices per (parent, type).
    let mut mdevs: HashMap<(&str, &str), u64> = HashMap::new();
    for (i, d) in devices.iter().enumerate() {
        if let Some(a) = d.pci {
            by_pci.entry(a).or_insert(i);
        }
        if let Some(a) = d.usb {
            by_usb.entry(a).or_insert(i);
        }
        if let Some(ids) = d.usb_ids {
            by_usb_ids.entry(ids).or_default().push(i);
        }
        if let Some(m) = &d.mdev {
            if let Some(u) = &m.uuid {
                by_mdev.entry(u.as_str()).or_insert(i);
            }
            if let (Some(p), Some(t)) = (&d.parent, &m.type_id) {
                *mdevs.entry((p.as_str(), t.as_str())).or_default() += 1;
            }
        }
    }
    let mut assigned: Vec<Vec<(&str, &str)>> = vec![Vec::new(); devices.len()];
    let mut assigned_pci: HashSet<PciAddress> = HashSet::new();
    for d in domains.unwrap_or_default() {
        for h in d.hostdevs {
            let target = match h {
                Hostdev::Pci(a) => {
                    assigned_pci.insert(*a);
                    by_pci.get(a).copied()
                }
                Hostdev::Usb { address, ids } => address.and_then(|a| by_usb.get(&a).copied()).or_else(|| {
                    // By vendor/product only when that names one device.
                    ids.and_then(|i| by_usb_ids.get(&i)).filter(|v| v.len() == 1).map(|v| v[0])
                }),
                Hostdev::Mdev(u) => by_mdev.get(u.as_str()).copied(),
            };
            let Some(i) = target else { continue };
            let list = &mut assigned[i];
            if list.iter().any(|(_, u)| *u == d.uuid) {
                continue;
            }
            if list.len() >= MAX_ASSIGNMENTS {
                cuts.assignments += 1;
                continue;
            }
            list.push((d.name, d.uuid));
        }
    }
    let mut out = Vec::with_capacity(devices.len());
    for (i, d) in devices.iter().enumerate() {
        let mut f: Vec<(String, TypedValue)> = Vec::with_capacity(8);
        f.push(("capability.count".into(), TypedValue::UInt(d.capabilities.len() as u32)));
        for (n, c) in d.capabilities.iter().enumerate() {
            f.push((format!("capability.{n}.type"), text(c)));
        }
        let opt = |f: &mut Vec<(String, TypedValue)>, key: &str, v: &Option<String>| {
            if let Some(v) = v {
                f.push((key.into(), text(v)));
            }
        };
        opt(&mut f, "parent", &d.parent);
        opt(&mut f, "driver", &d.driver);
        opt(&mut f, "vendor.id", &d.vendor_id);
        opt(&mut f, "product.id", &d.product_id);
        if let Some(a) = d.pci {
            f.push(("pci.address".into(), text(&a.to_string())));
        }
        if let Some(s) = &d.sriov {
            if let Some(max) = s.max {
                f.push(("sriov.vfs.max".into(), TypedValue::ULLong(max)));
            }
            f.push(("sriov.vfs".into(), TypedValue::ULLong(s.count)));
            if domains.is_some() {
                let used = s.vfs.iter().filter(|a| assigned_pci.contains(a)).count();
                f.push(("sriov.vfs.assigned".into(), TypedValue::ULLong(used as u64)));
            }
        }
        if let Some(pf) = d.physical_function {
            let name = by_pci.get(&pf).map(|&j| devices[j].name.clone()).unwrap_or_else(|| pf.to_string());
            f.push(("sriov.physical_function".into(), text(&name)));
        }
        if !d.mdev_types.is_empty() {
            f.push(("mdev_type.count".into(), TypedValue::UInt(d.mdev_types.len() as u32)));
            for (n, t) in d.mdev_types.iter().enumerate() {
                f.push((format!("mdev_type.{n}.id"), text(&t.id)));
                opt(&mut f, &format!("mdev_type.{n}.name"), &t.name);
                opt(&mut f, &format!("mdev_type.{n}.device_api"), &t.device_api);
                if let Some(a) = t.available_instances {
                    f.push((format!("mdev_type.{n}.available_instances"), TypedValue::ULLong(a)));
                }
                let made = mdevs.get(&(d.name.as_str(), t.id.as_str())).copied().unwrap_or(0);
                f.push((format!("mdev_type.{n}.devices"), TypedValue::ULLong(made)));
            }
        }
        if let Some(m) = &d.mdev {
            opt(&mut f, "mdev.type", &m.type_id);
            opt(&mut f, "mdev.uuid", &m.uuid);
        }
        if !assigned[i].is_empty() {
            f.push(("assigned.count".into(), TypedValue::UInt(assigned[i].len() as u32)));
            for (n, (name, uuid)) in assigned[i].iter().enumerate() {
                f.push((format!("assigned.{n}.domain"), text(name)));
                f.push((format!("assigned.{n}.domain_uuid"), text(uuid)));
            }
        }
        let uuid = d.mdev.as_ref().and_then(|m| m.uuid.clone()).unwrap_or_default();
        out.push(DeviceRecord { name: d.name.clone(), uuid, fields: f });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::xml::{parse_domain_hostdevs, parse_node_device, Bounds};
    use super::*;

    const BOUNDS: Bounds = Bounds { max_string_bytes: 256, max_mdev_types: 64, max_vfs: 4096, max_hostdevs: 256 };

    fn fixture(name: &str) -> String {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/node_devices").join(name);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// The devices of tests/fixtures/node_devices/testdriver.xml, one
    /// `<device>` at a time, and its running domain's hostdevs.
    fn testdriver() -> (Vec<DeviceFacts>, Vec<Hostdev>) {
        let xml = fixture("testdriver.xml");
        let doc = roxmltree::Document::parse(&xml).unwrap();
        let mut devices = Vec::new();
        let mut hostdevs = Vec::new();
        for n in doc.root_element().children().filter(|c| c.is_element()) {
            let text = &xml[n.range()];
            match n.tag_name().name() {
                "device" => devices.push(parse_node_device(text, &BOUNDS, &mut Cuts::default()).unwrap()),
                "domain" if n.descendants().any(|d| d.tag_name().name() == "name" && d.text() == Some("vf-guest")) => {
                    hostdevs = parse_domain_hostdevs(text, &BOUNDS, &mut Cuts::default()).unwrap()
                }
                _ => {}
            }
        }
        (devices, hostdevs)
    }

    fn field<'r>(r: &'r DeviceRecord, key: &str) -> Option<&'r TypedValue> {
        r.fields.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    fn record<'r>(all: &'r [DeviceRecord], name: &str) -> &'r DeviceRecord {
        all.iter().find(|r| r.name == name).unwrap_or_else(|| panic!("no record for {name}"))
    }

    #[test]
    fn the_test_driver_host_as_the_agent_must_report_it() {
        let (devices, hostdevs) = testdriver();
        assert_eq!(devices.len(), 5);
        let doms =
            [DomainHostdevs { name: "vf-guest", uuid: "6695eb01-f6a4-8304-79aa-97f2502e193f", hostdevs: &hostdevs }];
        let mut cuts = Cuts::default();
        let all = build(&devices, Some(&doms), &mut cuts);
        assert_eq!(cuts, Cuts::default());
        let pf = record(&all, "pci_0000_02_00_0");
        assert_eq!(field(pf, "sriov.vfs.max"), Some(&TypedValue::ULLong(7)));
        assert_eq!(field(pf, "sriov.vfs"), Some(&TypedValue::ULLong(3)));
        assert_eq!(field(pf, "sriov.vfs.assigned"), Some(&TypedValue::ULLong(1)), "only vf-guest runs");
        assert_eq!(field(pf, "pci.address"), Some(&TypedValue::String("0000:02:00.0".into())));
        let vf = record(&all, "pci_0000_02_10_1");
        assert_eq!(field(vf, "sriov.physical_function"), Some(&TypedValue::String("pci_0000_02_00_0".into())));
        assert_eq!(field(vf, "assigned.count"), Some(&TypedValue::UInt(1)));
        assert_eq!(field(vf, "assigned.0.domain"), Some(&TypedValue::String("vf-guest".into())));
        let gpu = record(&all, "pci_0000_00_02_0");
        assert_eq!(field(gpu, "mdev_type.count"), Some(&TypedValue::UInt(2)));
        assert_eq!(field(gpu, "mdev_type.0.id"), Some(&TypedValue::String("i915-GVTg_V5_4".into())));
        assert_eq!(field(gpu, "mdev_type.0.available_instances"), Some(&TypedValue::ULLong(2)));
        assert_eq!(field(gpu, "mdev_type.0.devices"), Some(&TypedValue::ULLong(0)));
        assert_eq!(field(gpu, "mdev_type.1.available_instances"), Some(&TypedValue::ULLong(5)));
        assert_eq!(field(gpu, "mdev_type.1.devices"), Some(&TypedValue::ULLong(1)));
        assert_eq!(field(gpu, "capability.1.type"), Some(&TypedValue::String("mdev_types".into())));
        let mdev = record(&all, "mdev_d069d019_36ea_4111_8f0a_8c9a70e21366");
        assert_eq!(mdev.uuid, "d069d019-36ea-4111-8f0a-8c9a70e21366");
        assert_eq!(field(mdev, "assigned.0.domain_uuid"), Some(&TypedValue::String(doms[0].uuid.into())));
        let computer = record(&all, "computer");
        assert_eq!(field(computer, "assigned.count"), None);
        assert_eq!(computer.uuid, "");
    }

    #[test]
    fn without_the_domains_nothing_is_said_of_assignments() {
        let (devices, _) = testdriver();
        let all = build(&devices, None, &mut Cuts::default());
        let pf = record(&all, "pci_0000_02_00_0");
        assert_eq!(field(pf, "sriov.vfs.assigned"), None);
        assert_eq!(field(pf, "sriov.vfs"), Some(&TypedValue::ULLong(3)));
        assert!(all.iter().all(|r| field(r, "assigned.count").is_none()));
    }

    #[test]
    fn usb_and_vf_nics_are_matched_and_assignments_bounded() {
        let mut cuts = Cuts::default();
        let usb = parse_node_device(&fixture("usb_device_1d6b_1_0000_00_1d_0.xml"), &BOUNDS, &mut cuts).unwrap();
        let pf = parse_node_device(&fixture("pci_0000_02_10_7_sriov_vfs.xml"), &BOUNDS, &mut cuts).unwrap();
        let devices = [usb, pf];
        let by_addr = [Hostdev::Usb { address: Some((2, 1)), ids: None }];
        let by_ids = [
            Hostdev::Usb { address: None, ids: Some((0x1d6b, 0x0001)) },
            Hostdev::Pci(PciAddress { domain: 0, bus: 2, slot: 0, function: 3 }),
        ];
        let uuids: Vec<String> = (0..MAX_ASSIGNMENTS + 2).map(|i| format!("u{i}")).collect();
        let mut doms = vec![
            DomainHostdevs { name: "a", uuid: "ua", hostdevs: &by_addr },
            DomainHostdevs { name: "b", uuid: "ub", hostdevs: &by_ids },
        ];
        doms.extend(uuids.iter().map(|u| DomainHostdevs { name: "many", uuid: u, hostdevs: &by_addr }));
        let all = build(&devices, Some(&doms), &mut cuts);
        let usb = record(&all, "usb_device_1d6b_1_0000_00_1d_0");
        assert_eq!(field(usb, "assigned.count"), Some(&TypedValue::UInt(MAX_ASSIGNMENTS as u32)));
        assert_eq!(field(usb, "assigned.1.domain"), Some(&TypedValue::String("b".into())));
        assert_eq!(cuts.assignments, 4, "{cuts:?}");
        let pf = record(&all, "pci_0000_02_10_7");
        assert_eq!(field(pf, "sriov.vfs.assigned"), Some(&TypedValue::ULLong(1)), "a VF assigned as a NIC");
    }
}
