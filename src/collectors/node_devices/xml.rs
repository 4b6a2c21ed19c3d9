//! Pure readers of node device XML (`virNodeDeviceGetXMLDesc`) and of the
//! host devices a domain's XML assigns to it (`<hostdev>`, `<interface
//! type='hostdev'>`). Everything they keep is bounded: strings are cut at
//! a character boundary, lists at their bound, and what is cut is counted.
//! The formats: libvirt's docs/formatnode.rst and docs/formatdomain.rst
//! ("Host device assignment").

use std::fmt;

/// A PCI address, `domain:bus:slot.function`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct PciAddress {
    pub domain: u32,
    pub bus: u32,
    pub slot: u32,
    pub function: u32,
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04x}:{:02x}:{:02x}.{:x}", self.domain, self.bus, self.slot, self.function)
    }
}

/// A number as libvirt parses address attributes (`strtoul` base 0:
/// `0x` hexadecimal, a leading `0` octal, else decimal).
pub(crate) fn number(s: &str) -> Option<u32> {
    let s = s.trim();
    if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        return u32::from_str_radix(hex, 16).ok();
    }
    if s.len() > 1 && s.starts_with('0') {
        return u32::from_str_radix(&s[1..], 8).ok();
    }
    s.parse().ok()
}

impl PciAddress {
    /// `<address domain='0x0000' bus='0x02' slot='0x10' function='0x1'/>`
    /// (a missing domain is 0, as libvirt reads it).
    fn from_attributes(node: roxmltree::Node) -> Option<PciAddress> {
        Some(PciAddress {
            domain: node.attribute("domain").map_or(Some(0), number)?,
            bus: number(node.attribute("bus")?)?,
            slot: number(node.attribute("slot")?)?,
            function: number(node.attribute("function")?)?,
        })
    }

    /// A node device's `<capability type='pci'>`: `<domain>0</domain>
    /// <bus>2</bus> <slot>16</slot> <function>7</function>`.
    fn from_children(cap: roxmltree::Node) -> Option<PciAddress> {
        let n = |name: &str| child(cap, name).and_then(|c| c.text()).and_then(number);
        Some(PciAddress {
            domain: n("domain").unwrap_or(0),
            bus: n("bus")?,
            slot: n("slot")?,
            function: n("function")?,
        })
    }
}

/// How much of one XML document is kept.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounds {
    pub max_string_bytes: usize,
    /// Mediated device types per device.
    pub max_mdev_types: usize,
    /// VF addresses per physical function (all are counted).
    pub max_vfs: usize,
    /// Host devices per domain.
    pub max_hostdevs: usize,
}

/// What the bounds cut, by kind.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cuts {
    pub strings: u64,
    pub mdev_types: u64,
    pub vfs: u64,
    pub hostdevs: u64,
    pub assignments: u64,
    pub devices: u64,
}

/// Cuts `s` to at most `max` bytes on a character boundary.
pub(crate) fn bounded(s: &str, max: usize, cuts: &mut Cuts) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    cuts.strings += 1;
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

fn child<'a, 'i>(node: roxmltree::Node<'a, 'i>, name: &str) -> Option<roxmltree::Node<'a, 'i>> {
    node.children().find(|c| c.is_element() && c.tag_name().name() == name)
}

fn children<'a, 'i: 'a>(
    node: roxmltree::Node<'a, 'i>,
    name: &'a str,
) -> impl Iterator<Item = roxmltree::Node<'a, 'i>> + 'a {
    node.children().filter(move |c| c.is_element() && c.tag_name().name() == name)
}

fn text<'a>(node: Option<roxmltree::Node<'a, '_>>) -> Option<&'a str> {
    node.and_then(|n| n.text()).map(str::trim).filter(|t| !t.is_empty())
}

/// An SR-IOV physical function's `<capability type='virt_functions'>`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Sriov {
    /// `maxCount`: the VFs the device supports (sriov_totalvfs); libvirt
    /// 1.3+ writes it.
    pub max: Option<u64>,
    /// VFs the function has now (sriov_numvfs): every `<address>`.
    pub count: u64,
    /// Their addresses, at most `Bounds::max_vfs`.
    pub vfs: Vec<PciAddress>,
}

/// One `<type>` of a device's `<capability type='mdev_types'>`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct MdevType {
    pub id: String,
    pub name: Option<String>,
    pub device_api: Option<String>,
    pub available_instances: Option<u64>,
}

/// A mediated device's `<capability type='mdev'>`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Mdev {
    pub type_id: Option<String>,
    /// Lower case; from `<uuid>` or, before libvirt 7.3, the device name.
    pub uuid: Option<String>,
}

/// What the collector keeps of one node device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct DeviceFacts {
    pub name: String,
    pub parent: Option<String>,
    pub driver: Option<String>,
    /// Capability names as `virsh nodedev-list --cap` matches them: the
    /// device's own, plus the nested ones libvirt lists by (`mdev_types`,
    /// `vpd`, `fc_host`, `vports`).
    pub capabilities: Vec<String>,
    pub vendor_id: Option<String>,
    pub product_id: Option<String>,
    /// The PCI function, for devices with a `pci` capability.
    pub pci: Option<PciAddress>,
    pub sriov: Option<Sriov>,
    /// A VF's physical function.
    pub physical_function: Option<PciAddress>,
    pub mdev_types: Vec<MdevType>,
    pub mdev: Option<Mdev>,
    /// A USB device's (bus, device number).
    pub usb: Option<(u32, u32)>,
    pub usb_ids: Option<(u32, u32)>,
}

/// Nested capabilities that `virsh nodedev-list --cap` lists devices by,
/// under the list name libvirt gives them (virNodeDeviceObjHasCap).
fn listed_nested(outer: &str, inner: &str) -> Option<&'static str> {
    match (outer, inner) {
        ("pci" | "css" | "ap_matrix", "mdev_types") => Some("mdev_types"),
        ("pci", "vpd") => Some("vpd"),
        ("scsi_host", "fc_host") => Some("fc_host"),
        ("scsi_host", "vport_ops") => Some("vports"),
        _ => None,
    }
}

/// A canonical UUID (8-4-4-4-12 hex digits), lower case.
fn uuid(s: &str) -> Option<String> {
    let s = s.trim();
    let ok = s.len() == 36
        && s.char_indices().all(|(i, c)| if matches!(i, 8 | 13 | 18 | 23) { c == '-' } else { c.is_ascii_hexdigit() });
    ok.then(|| s.to_ascii_lowercase())
}

/// An mdev's UUID from its name: `mdev_<uuid with _>` (libvirt before 7.3)
/// or `mdev_<uuid with _>_<parent>` (mdevctl-defined devices).
fn uuid_from_mdev_name(name: &str) -> Option<String> {
    let rest = name.strip_prefix("mdev_")?;
    uuid(&rest.get(..36)?.replace('_', "-"))
}

fn parse_id(s: &str) -> Option<u32> {
    let s = s.trim();
    u32::from_str_radix(s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")).unwrap_or(s), 16).ok()
}

fn parse_mdev_types(cap: roxmltree::Node, bounds: &Bounds, cuts: &mut Cuts) -> Vec<MdevType> {
    let mut out = Vec::new();
    for t in children(cap, "type") {
        let Some(id) = t.attribute("id") else { continue };
        if out.len() >= bounds.max_mdev_types {
            cuts.mdev_types += 1;
            continue;
        }
        let max = bounds.max_string_bytes;
        out.push(MdevType {
            id: bounded(id, max, cuts),
            name: text(child(t, "name")).map(|s| bounded(s, max, cuts)),
            device_api: text(child(t, "deviceAPI")).map(|s| bounded(s, max, cuts)),
            available_instances: text(child(t, "availableInstances")).and_then(|s| s.parse().ok()),
        });
    }
    out
}

/// Reads one node device's XML. Malformed XML is an error (the caller
/// keeps what it knew of the device).
pub(crate) fn parse_node_device(xml: &str, bounds: &Bounds, cuts: &mut Cuts) -> Result<DeviceFacts, String> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| format!("cannot parse node device XML: {e}"))?;
    let root = doc.root_element();
    if root.tag_name().name() != "device" {
        return Err(format!("node device XML has root <{}>, expected <device>", root.tag_name().name()));
    }
    let max = bounds.max_string_bytes;
    let mut f = DeviceFacts {
        name: text(child(root, "name")).map(|s| bounded(s, max, cuts)).unwrap_or_default(),
        parent: text(child(root, "parent")).map(|s| bounded(s, max, cuts)),
        driver: text(child(root, "driver").and_then(|d| child(d, "name"))).map(|s| bounded(s, max, cuts)),
        ..DeviceFacts::default()
    };
    let mut caps: Vec<String> = Vec::new();
    let mut add_cap = |c: &str, cuts: &mut Cuts| {
        let c = bounded(c, max, cuts);
        if !caps.contains(&c) {
            caps.push(c);
        }
    };
    for cap in children(root, "capability") {
        let Some(kind) = cap.attribute("type") else { continue };
        add_cap(kind, cuts);
        for inner in children(cap, "capability") {
            if let Some(listed) = inner.attribute("type").and_then(|t| listed_nested(kind, t)) {
                add_cap(listed, cuts);
            }
        }
        let id_of = |name: &str, cuts: &mut Cuts| {
            child(cap, name).and_then(|n| n.attribute("id")).map(|s| bounded(s.trim(), max, cuts))
        };
        match kind {
            "pci" => {
                f.pci = PciAddress::from_children(cap);
                f.vendor_id = id_of("vendor", cuts);
                f.product_id = id_of("product", cuts);
                for inner in children(cap, "capability") {
                    match inner.attribute("type") {
                        Some("virt_functions") => {
                            let mut s = Sriov {
                                max: inner.attribute("maxCount").and_then(|m| m.trim().parse().ok()),
                                ..Sriov::default()
                            };
                            for a in children(inner, "address").filter_map(PciAddress::from_attributes) {
                                s.count += 1;
                                if s.vfs.len() < bounds.max_vfs {
                                    s.vfs.push(a);
                                } else {
                                    cuts.vfs += 1;
                                }
                            }
                            f.sriov = Some(s);
                        }
                        Some("phys_function") => {
                            f.physical_function = child(inner, "address").and_then(PciAddress::from_attributes);
                        }
                        Some("mdev_types") => f.mdev_types.extend(parse_mdev_types(inner, bounds, cuts)),
                        _ => {}
                    }
                }
            }
            "css" | "ap_matrix" => {
                for inner in children(cap, "capability").filter(|c| c.attribute("type") == Some("mdev_types")) {
                    f.mdev_types.extend(parse_mdev_types(inner, bounds, cuts));
                }
            }
            "mdev" => {
                f.mdev = Some(Mdev {
                    type_id: child(cap, "type").and_then(|t| t.attribute("id")).map(|s| bounded(s, max, cuts)),
                    uuid: text(child(cap, "uuid")).and_then(uuid).or_else(|| uuid_from_mdev_name(&f.name)),
                });
            }
            "usb_device" => {
                let n = |name: &str| text(child(cap, name)).and_then(|t| t.parse::<u32>().ok());
                f.usb = n("bus").zip(n("device"));
                let id = |name: &str| child(cap, name).and_then(|n| n.attribute("id")).and_then(parse_id);
                f.usb_ids = id("vendor").zip(id("product"));
                f.vendor_id = id_of("vendor", cuts);
                f.product_id = id_of("product", cuts);
            }
            _ => {}
        }
    }
    if f.mdev_types.len() > bounds.max_mdev_types {
        cuts.mdev_types += (f.mdev_types.len() - bounds.max_mdev_types) as u64;
        f.mdev_types.truncate(bounds.max_mdev_types);
    }
    f.capabilities = caps;
    Ok(f)
}

/// A host device a domain's XML assigns to it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Hostdev {
    /// `<hostdev type='pci'>` or `<interface type='hostdev'>` (an SR-IOV VF
    /// as a NIC).
    Pci(PciAddress),
    /// `<hostdev type='usb'>`: by bus and device number, or by vendor and
    /// product id.
    Usb { address: Option<(u32, u32)>, ids: Option<(u32, u32)> },
    /// `<hostdev type='mdev'>`: the mediated device's UUID (lower case).
    Mdev(String),
}

/// The host devices a domain's XML assigns to it (`mode='subsystem'`
/// hostdevs of type pci, usb and mdev; `<interface type='hostdev'>`), at
/// most `Bounds::max_hostdevs`.
pub(crate) fn parse_domain_hostdevs(xml: &str, bounds: &Bounds, cuts: &mut Cuts) -> Result<Vec<Hostdev>, String> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| format!("cannot parse domain XML: {e}"))?;
    let root = doc.root_element();
    if root.tag_name().name() != "domain" {
        return Err(format!("domain XML has root <{}>, expected <domain>", root.tag_name().name()));
    }
    let Some(devices) = child(root, "devices") else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for dev in devices.children().filter(|c| c.is_element()) {
        let source = child(dev, "source");
        let found = match (dev.tag_name().name(), dev.attribute("type")) {
            ("hostdev", Some(kind)) if dev.attribute("mode").unwrap_or("subsystem") == "subsystem" => match kind {
                "pci" => {
                    source.and_then(|s| child(s, "address")).and_then(PciAddress::from_attributes).map(Hostdev::Pci)
                }
                "usb" => source.map(|s| {
                    let address = child(s, "address")
                        .and_then(|a| Some((number(a.attribute("bus")?)?, number(a.attribute("device")?)?)));
                    let id = |name: &str| child(s, name).and_then(|n| n.attribute("id")).and_then(parse_id);
                    Hostdev::Usb { address, ids: id("vendor").zip(id("product")) }
                }),
                "mdev" => source
                    .and_then(|s| child(s, "address"))
                    .and_then(|a| a.attribute("uuid"))
                    .and_then(uuid)
                    .map(Hostdev::Mdev),
                _ => None,
            },
            ("interface", Some("hostdev")) => source
                .and_then(|s| child(s, "address"))
                .filter(|a| a.attribute("type").unwrap_or("pci") == "pci")
                .and_then(PciAddress::from_attributes)
                .map(Hostdev::Pci),
            _ => None,
        };
        let Some(h) = found else { continue };
        if out.len() >= bounds.max_hostdevs {
            cuts.hostdevs += 1;
            continue;
        }
        out.push(h);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: Bounds = Bounds { max_string_bytes: 256, max_mdev_types: 64, max_vfs: 4096, max_hostdevs: 256 };

    /// libvirt's own test data and this host's devices: see
    /// tests/fixtures/node_devices/README.md for where each file comes from.
    fn fixture(name: &str) -> String {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/node_devices").join(name);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn device(name: &str) -> DeviceFacts {
        let mut cuts = Cuts::default();
        let f = parse_node_device(&fixture(name), &BOUNDS, &mut cuts).unwrap();
        assert_eq!(cuts, Cuts::default(), "{name}");
        f
    }

    fn pci(domain: u32, bus: u32, slot: u32, function: u32) -> PciAddress {
        PciAddress { domain, bus, slot, function }
    }

    #[test]
    fn numbers_are_read_as_libvirt_reads_them() {
        assert_eq!(number("0x10"), Some(16));
        assert_eq!(number("16"), Some(16));
        assert_eq!(number("010"), Some(8));
        assert_eq!(number("0"), Some(0));
        assert_eq!(number("0xg"), None);
        assert_eq!(number(""), None);
        assert_eq!(pci(0, 2, 16, 7).to_string(), "0000:02:10.7");
    }

    #[test]
    fn a_physical_function_with_its_vfs() {
        let f = device("pci_0000_02_10_7_sriov_pf_vfs_all.xml");
        assert_eq!(f.name, "pci_0000_02_10_7");
        assert_eq!(f.parent.as_deref(), Some("pci_0000_00_04_0"));
        assert_eq!(f.capabilities, ["pci"]);
        assert_eq!(f.pci, Some(pci(0, 2, 16, 7)));
        assert_eq!((f.vendor_id.as_deref(), f.product_id.as_deref()), (Some("0x8086"), Some("0x10ca")));
        let s = f.sriov.unwrap();
        assert_eq!((s.max, s.count), (Some(7), 4));
        assert_eq!(s.vfs, [pci(0, 2, 0, 2), pci(0, 2, 0, 3), pci(0, 2, 0, 4), pci(0, 2, 0, 5)]);
        assert_eq!(f.physical_function, Some(pci(0, 2, 0, 1)));
    }

    #[test]
    fn a_pf_without_max_count_and_one_with_no_vfs_yet() {
        let s = device("pci_0000_02_10_7_sriov_vfs.xml").sriov.unwrap();
        assert_eq!((s.max, s.count), (None, 4));
        let f = device("pci_0000_42_00_0_vpd.xml");
        assert_eq!(f.sriov, Some(Sriov { max: Some(16), count: 0, vfs: vec![] }));
        assert_eq!(f.capabilities, ["pci", "vpd"], "VPD is listed as a capability of its own");
    }

    #[test]
    fn a_virtual_function_names_its_pf() {
        let f = device("pci_0000_02_10_7_sriov.xml");
        assert_eq!(f.sriov, None);
        assert_eq!(f.physical_function, Some(pci(0, 2, 0, 1)));
    }

    #[test]
    fn mdev_types_of_a_parent() {
        let f = device("pci_0000_02_10_7_mdev_types.xml");
        assert_eq!(f.capabilities, ["pci", "mdev_types"]);
        assert_eq!(
            f.mdev_types,
            [
                MdevType {
                    id: "foo1".into(),
                    name: Some("bar1".into()),
                    device_api: Some("vfio-pci".into()),
                    available_instances: Some(1)
                },
                MdevType {
                    id: "foo2".into(),
                    name: Some("bar2".into()),
                    device_api: Some("vfio-pci".into()),
                    available_instances: Some(2)
                },
            ]
        );
    }

    #[test]
    fn a_mediated_device_and_its_uuid() {
        let f = device("mdev_d069d019_36ea_4111_8f0a_8c9a70e21366.xml");
        assert_eq!(f.capabilities, ["mdev"]);
        assert_eq!(
            f.mdev,
            Some(Mdev {
                type_id: Some("i915-GVTg_V5_8".into()),
                uuid: Some("d069d019-36ea-4111-8f0a-8c9a70e21366".into())
            })
        );
        // Before libvirt 7.3 the XML had no <uuid>: the name tells it.
        let old = "<device><name>mdev_D069D019_36ea_4111_8f0a_8c9a70e21366_0000_00_02_0</name>\
                   <capability type='mdev'><type id='t'/></capability></device>";
        let f = parse_node_device(old, &BOUNDS, &mut Cuts::default()).unwrap();
        assert_eq!(f.mdev.unwrap().uuid.as_deref(), Some("d069d019-36ea-4111-8f0a-8c9a70e21366"));
    }

    #[test]
    fn nested_capabilities_listed_as_libvirt_lists_them() {
        let f = device("hba_vport_ops.xml");
        assert_eq!(f.capabilities, ["scsi_host", "fc_host", "vports"]);
        let usb = device("usb_device_1d6b_1_0000_00_1d_0.xml");
        assert_eq!(usb.capabilities, ["usb_device"]);
        assert_eq!((usb.usb, usb.usb_ids), (Some((2, 1)), Some((0x1d6b, 0x0001))));
        // This host's devices, as its libvirt 11.3 describes them.
        let net = device("host_net_eth0.xml");
        assert_eq!(net.capabilities, ["net"], "the 80203 sub-capability is not a listed one");
        let virtio = device("host_pci_0000_00_03_0.xml");
        assert_eq!(virtio.driver.as_deref(), Some("virtio-pci"));
        assert_eq!(virtio.capabilities, ["pci"]);
        assert_eq!(device("host_computer.xml").capabilities, ["system"]);
    }

    #[test]
    fn bounds_cut_and_count() {
        let tight = Bounds { max_string_bytes: 4, max_mdev_types: 1, max_vfs: 2, max_hostdevs: 1 };
        let mut cuts = Cuts::default();
        let f = parse_node_device(&fixture("pci_0000_02_10_7_mdev_types.xml"), &tight, &mut cuts).unwrap();
        assert_eq!(f.mdev_types.len(), 1);
        assert_eq!(f.name, "pci_");
        assert_eq!(cuts.mdev_types, 1);
        let mut cuts = Cuts::default();
        let f = parse_node_device(&fixture("pci_0000_02_10_7_sriov_pf_vfs_all.xml"), &tight, &mut cuts).unwrap();
        let s = f.sriov.unwrap();
        assert_eq!((s.count, s.vfs.len(), cuts.vfs), (4, 2, 2), "every VF counted, two kept");
        let mut c = Cuts::default();
        assert_eq!(bounded("ééé", 3, &mut c), "é");
        assert_eq!(c.strings, 1);
    }

    #[test]
    fn malformed_or_foreign_xml_is_an_error() {
        assert!(parse_node_device("<device", &BOUNDS, &mut Cuts::default()).is_err());
        assert!(parse_node_device("<domain/>", &BOUNDS, &mut Cuts::default()).is_err());
        assert!(parse_domain_hostdevs("<device/>", &BOUNDS, &mut Cuts::default()).is_err());
        let f = parse_node_device("<device/>", &BOUNDS, &mut Cuts::default()).unwrap();
        assert_eq!(f, DeviceFacts::default());
    }

    #[test]
    fn hostdevs_of_real_domains() {
        let mut cuts = Cuts::default();
        let pci_xml = fixture("domain_hostdev_pci.xml");
        assert_eq!(parse_domain_hostdevs(&pci_xml, &BOUNDS, &mut cuts).unwrap(), [Hostdev::Pci(pci(0, 6, 0x12, 5))]);
        let mdev_xml = fixture("domain_hostdev_mdev.xml");
        assert_eq!(
            parse_domain_hostdevs(&mdev_xml, &BOUNDS, &mut cuts).unwrap(),
            [Hostdev::Mdev("53764d0e-85a0-42b4-af5c-2046b460b1dc".into())]
        );
        let mixed = fixture("domain_hostdev_mixed.xml");
        let all = parse_domain_hostdevs(&mixed, &BOUNDS, &mut cuts).unwrap();
        assert_eq!(
            all,
            [
                Hostdev::Pci(pci(0, 0x41, 0, 6)),
                Hostdev::Pci(pci(0, 2, 0x10, 1)),
                Hostdev::Usb { address: Some((1, 4)), ids: Some((0x0951, 0x1625)) },
                Hostdev::Usb { address: None, ids: Some((0x046d, 0xc077)) },
                Hostdev::Mdev("d069d019-36ea-4111-8f0a-8c9a70e21366".into()),
            ]
        );
        assert_eq!(cuts, Cuts::default());
        // Capability-mode hostdevs, SCSI ones and plain NICs are not PCI/USB/mdev assignments.
        let none = "<domain><devices><hostdev mode='capabilities' type='storage'><source><block>/dev/sdf1</block></source></hostdev>\
                    <hostdev mode='subsystem' type='scsi'><source><adapter name='scsi_host0'/></source></hostdev>\
                    <interface type='network'><source network='default'/></interface></devices></domain>";
        assert!(parse_domain_hostdevs(none, &BOUNDS, &mut cuts).unwrap().is_empty());
        let tight = Bounds { max_hostdevs: 2, ..BOUNDS };
        let mut cuts = Cuts::default();
        assert_eq!(parse_domain_hostdevs(&mixed, &tight, &mut cuts).unwrap().len(), 2);
        assert_eq!(cuts.hostdevs, 3);
    }
}
