//! What the networks collector reads from a network's XML
//! (`virNetworkGetXMLDesc`): the forward mode, the bridge, and the DHCP
//! ranges and static hosts of its `<ip>` elements. Pure functions over the
//! text, so they are unit-tested on real XML and fuzzed (`network_xml`).

use std::net::IpAddr;

/// Address counts past this are reported as this: 2^53, the largest
/// integer a float64 (Prometheus' sample value, a JSON number read by
/// JavaScript) holds exactly. libvirt 11 refuses a single range of more
/// than 65,536 addresses, so only many ranges, or XML from elsewhere, get
/// near it; an IPv6 /64 (2^64 addresses) would be cut to 2^53.
pub(crate) const ADDRESS_CAP: u64 = 1 << 53;

/// The facts of one network's XML the collector reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct NetworkFacts {
    /// `<forward mode=…>`: `nat` when the element has no mode (libvirt's
    /// default), `none` without `<forward>` (an isolated network).
    pub forward_mode: String,
    /// `<bridge name=…>`, empty when none (hostdev, direct modes).
    pub bridge: String,
    /// At least one `<ip>` has a `<dhcp>` element.
    pub dhcp: bool,
    /// Addresses in every `<dhcp><range start end>` of every `<ip>`, IPv4
    /// and IPv6 summed (saturating: never wraps).
    pub addresses: u128,
    /// `<dhcp><host>` entries (static leases), both families.
    pub hosts: u64,
    /// Ranges left out: an unreadable address, families that differ, or an
    /// end before the start.
    pub bad_ranges: u64,
}

impl NetworkFacts {
    /// The address count for a gauge: at most `ADDRESS_CAP`, and whether
    /// it was cut.
    pub(crate) fn capped_addresses(&self) -> (u64, bool) {
        cap(self.addresses)
    }
}

pub(crate) fn cap(n: u128) -> (u64, bool) {
    if n > u128::from(ADDRESS_CAP) {
        (ADDRESS_CAP, true)
    } else {
        (n as u64, false)
    }
}

/// Addresses from `start` to `end`, both included; `None` when either is
/// not an address, the families differ or `end` comes before `start`.
pub(crate) fn range_size(start: &str, end: &str) -> Option<u128> {
    let (s, e) = match (start.trim().parse::<IpAddr>().ok()?, end.trim().parse::<IpAddr>().ok()?) {
        (IpAddr::V4(s), IpAddr::V4(e)) => (u128::from(u32::from(s)), u128::from(u32::from(e))),
        (IpAddr::V6(s), IpAddr::V6(e)) => (u128::from(s), u128::from(e)),
        _ => return None,
    };
    // The whole IPv6 space is 2^128 addresses, one more than u128 holds.
    (e >= s).then(|| (e - s).saturating_add(1))
}

/// Reads a network's XML; `Err` names what is wrong with it.
pub(crate) fn parse_network(xml: &str) -> Result<NetworkFacts, String> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| format!("unreadable network XML: {e}"))?;
    let root = doc.root_element();
    if root.tag_name().name() != "network" {
        return Err(format!("the XML describes a <{}>, not a <network>", root.tag_name().name()));
    }
    let mut facts = NetworkFacts { forward_mode: "none".into(), ..Default::default() };
    for child in root.children().filter(|n| n.is_element()) {
        match child.tag_name().name() {
            "forward" => facts.forward_mode = child.attribute("mode").unwrap_or("nat").to_string(),
            "bridge" => facts.bridge = child.attribute("name").unwrap_or("").to_string(),
            "ip" => {
                for dhcp in child.children().filter(|n| n.has_tag_name("dhcp")) {
                    facts.dhcp = true;
                    for e in dhcp.children().filter(|n| n.is_element()) {
                        match e.tag_name().name() {
                            "range" => {
                                match range_size(e.attribute("start").unwrap_or(""), e.attribute("end").unwrap_or("")) {
                                    Some(n) => facts.addresses = facts.addresses.saturating_add(n),
                                    None => facts.bad_ranges += 1,
                                }
                            }
                            "host" => facts.hosts += 1,
                            _ => {}
                        }
                    }
                }
            }
            _ => {}
        }
    }
    Ok(facts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(name: &str) -> NetworkFacts {
        let path = format!("{}/src/collectors/networks/testdata/{name}.xml", env!("CARGO_MANIFEST_DIR"));
        let xml = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        parse_network(&xml).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    /// libvirt's own default network, as `virsh net-dumpxml` prints it.
    #[test]
    fn the_default_nat_network() {
        let f = sample("default");
        assert_eq!((f.forward_mode.as_str(), f.bridge.as_str()), ("nat", "vpdef0"));
        assert!(f.dhcp);
        assert_eq!((f.addresses, f.hosts, f.bad_ranges), (253, 0, 0), "192.168.122.2 to .254");
    }

    /// IPv4 and IPv6 ranges are summed; a static host is counted apart.
    #[test]
    fn a_dual_stack_network_sums_both_families() {
        let f = sample("dualstack");
        assert_eq!(f.forward_mode, "nat");
        assert_eq!(f.bridge, "vpbr0");
        assert_eq!(f.addresses, 20 + 256, ".100-.119 and ::100-::1ff");
        assert_eq!(f.hosts, 1);
    }

    #[test]
    fn several_ranges_and_hosts_in_one_ip() {
        let f = sample("openmulti");
        assert_eq!(f.forward_mode, "open");
        assert_eq!((f.addresses, f.hosts), (256 + 10, 2));
    }

    #[test]
    fn networks_without_dhcp() {
        let iso = sample("isolated");
        assert_eq!(
            (iso.forward_mode.as_str(), iso.bridge.as_str(), iso.dhcp, iso.addresses),
            ("none", "vpiso0", false, 0)
        );
        let br = sample("hostbridge");
        assert_eq!((br.forward_mode.as_str(), br.bridge.as_str(), br.dhcp), ("bridge", "br0", false));
        let sriov = sample("sriov");
        assert_eq!((sriov.forward_mode.as_str(), sriov.bridge.as_str(), sriov.dhcp), ("hostdev", "", false));
    }

    /// The biggest IPv6 range libvirt 11.3 accepts (65,535 addresses).
    #[test]
    fn a_big_ipv6_range() {
        let f = sample("v6big");
        assert_eq!((f.forward_mode.as_str(), f.addresses, f.hosts), ("route", 65535, 1));
        assert_eq!(f.capped_addresses(), (65535, false));
    }

    #[test]
    fn huge_ranges_neither_overflow_nor_pass_the_cap() {
        assert_eq!(range_size("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"), Some(u128::MAX), "2^128 saturates");
        assert_eq!(range_size("fd00::", "fd00::ffff:ffff:ffff:ffff"), Some(1 << 64), "a /64");
        assert_eq!(range_size("0.0.0.0", "255.255.255.255"), Some(1 << 32));
        let xml = "<network><ip family='ipv6' address='fd00::1' prefix='64'><dhcp>\
                   <range start='::' end='ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff'/>\
                   <range start='::' end='ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff'/></dhcp></ip></network>";
        let f = parse_network(xml).unwrap();
        assert_eq!(f.addresses, u128::MAX);
        assert_eq!(f.capped_addresses(), (ADDRESS_CAP, true));
        assert_eq!(cap(1 << 64), (1 << 53, true));
        assert_eq!(cap(1 << 53), (1 << 53, false));
    }

    #[test]
    fn bad_ranges_are_left_out_and_counted() {
        let xml = "<network><forward mode='route'/><ip address='10.0.0.1' prefix='24'><dhcp>\
                   <range start='10.0.0.9' end='10.0.0.2'/><range start='10.0.0.1' end='fd00::1'/>\
                   <range start='x' end='10.0.0.2'/><range end='10.0.0.2'/>\
                   <range start=' 10.0.0.10 ' end='10.0.0.10'/></dhcp></ip></network>";
        let f = parse_network(xml).unwrap();
        assert_eq!((f.addresses, f.bad_ranges), (1, 4));
        assert_eq!(f.forward_mode, "route");
    }

    #[test]
    fn forward_without_a_mode_is_nat_and_not_xml_is_an_error() {
        assert_eq!(parse_network("<network><forward/></network>").unwrap().forward_mode, "nat");
        assert!(parse_network("<network").is_err());
        assert!(parse_network("<domain/>").unwrap_err().contains("not a <network>"));
        assert!(parse_network("").is_err());
    }
}
