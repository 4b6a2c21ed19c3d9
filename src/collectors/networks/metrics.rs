//! What the networks collector's records mean: each virtual network's
//! state, what its XML says (forward mode, bridge, DHCP ranges and hosts)
//! and its DHCP leases in use.

use crate::record::kind::{gauge, row, InfoSpec, InfoValue, KindSpec, StatSpec, Subject, NO_LABELS as NONE};
use crate::value::Unit::*;

#[rustfmt::skip]
static TABLE: &[StatSpec] = &[
    row("active", "network", Boolean, NONE, gauge("libvirt_network_up", 1.0, "Whether the virtual network is active (1) or not (0).")),
    row("persistent", "network", Boolean, NONE, None),
    row("autostart", "network", Boolean, NONE, None),
    row("bridge", "network", Text, NONE, None),
    row("forward.mode", "network", Text, NONE, None),
    row("dhcp.addresses", "network", Count, NONE, gauge("libvirt_network_dhcp_addresses", 1.0, "Addresses in the DHCP ranges (ip/dhcp/range elements) of the network, IPv4 and IPv6 summed (at most 2^53).")),
    row("dhcp.leases", "network", Count, NONE, gauge("libvirt_network_dhcp_leases", 1.0, "DHCP leases in use (virNetworkGetDHCPLeases, both families; 0 while the network is inactive).")),
    row("dhcp.hosts", "network", Count, NONE, gauge("libvirt_network_dhcp_hosts", 1.0, "Static DHCP host entries (ip/dhcp/host elements) of the network, both families.")),
];

/// One virtual network.
pub(crate) static NETWORK: KindSpec = KindSpec {
    name: "network",
    title: "Virtual networks (`[collectors.networks]`)",
    subject: Subject::Object { label: "network", otlp: "libvirt.network" },
    prefix: "libvirt_network_",
    table: TABLE,
    info: &[InfoSpec {
        name: "libvirt_network_info",
        help: "Descriptive data about the virtual network (value is always 1); join on network/uuid.",
        labels: &[
            ("bridge", InfoValue::Field("bridge")),
            ("forward_mode", InfoValue::Field("forward.mode")),
            ("persistent", InfoValue::Field("persistent")),
            ("autostart", InfoValue::Field("autostart")),
        ],
        note: "`forward_mode`: `nat`, `route`, `open`, `bridge`, `private`, `vepa`, `passthrough`, `hostdev`, or `none` (isolated); labels are empty when the network's XML could not be read",
        ..InfoSpec::EMPTY
    }],
    otlp_namespace: "libvirt.network",
    notes: "The DHCP figures are there for networks with a `<dhcp>` element. \
            `libvirt_network_dhcp_addresses` counts every address from `start` to `end` of each range (IPv4 and \
            IPv6 summed; a count past 2^53, the largest integer a float64 holds exactly, is reported as 2^53 and \
            counted in `virtpulse_networks_truncated_total{what=\"addresses\"}`). `libvirt_network_dhcp_leases` \
            counts what `virsh net-dhcp-leases` lists (leases of static hosts outside the ranges too); it is 0 \
            while the network is inactive (libvirt would still list the last run's unexpired leases). \
            `libvirt_network_dhcp_leases / libvirt_network_dhcp_addresses` is the pool's use (the \
            DhcpPoolNearlyFull alert).",
    ..KindSpec::EMPTY
};
