//! What the node devices collector's records mean: one record per node
//! device libvirt lists, read from the device's XML, with the host devices
//! the running domains' XML assigns. The capacity gauges (SR-IOV VFs,
//! mediated device instances) are few series per host and in the default
//! profile; the descriptive data per device and assignment sits behind
//! `node_device_detail`.

use crate::record::kind::{
    gauge, label, row, InfoSpec, InfoValue, KindSpec, LabelSource, LabelSpec, StatSpec, Subject, Switch,
    NO_LABELS as NONE,
};
use crate::value::Unit::*;

/// Per-device and per-assignment detail.
pub(crate) static NODE_DEVICE_DETAIL: Switch = Switch {
    key: "node_device_detail",
    covers: "every node device, its capabilities, its mediated device types and the host devices assigned to domains (`libvirt_node_device_*_info`)",
    adds: "2-3 series per node device (a host lists 50-2000), one per mediated device type and one per assigned device",
};

const MDEV_TYPE: &[LabelSpec] = &[label("type", LabelSource::Sibling(1, "id"))];

#[rustfmt::skip]
static TABLE: &[StatSpec] = &[
    row("capability.count", "node_device", Count, NONE, None),
    row("capability.*.type", "node_device", Text, NONE, None),
    row("parent", "node_device", Text, NONE, None),
    row("driver", "node_device", Text, NONE, None),
    row("vendor.id", "node_device", Text, NONE, None),
    row("product.id", "node_device", Text, NONE, None),
    row("pci.address", "node_device", Text, NONE, None),
    row("sriov.vfs.max", "node_device", Count, NONE, gauge("libvirt_node_device_sriov_vfs_max", 1.0, "VFs the SR-IOV physical function supports (sriov_totalvfs; libvirt's maxCount).")),
    row("sriov.vfs", "node_device", Count, NONE, gauge("libvirt_node_device_sriov_vfs", 1.0, "VFs the SR-IOV physical function has now (sriov_numvfs).")),
    row("sriov.vfs.assigned", "node_device", Count, NONE, gauge("libvirt_node_device_sriov_vfs_assigned", 1.0, "VFs of the physical function that running domains use (<hostdev> or <interface type='hostdev'>), of the domains the agent watches.")),
    row("sriov.physical_function", "node_device", Text, NONE, None),
    row("mdev_type.count", "node_device", Count, NONE, None),
    row("mdev_type.*.id", "node_device", Text, NONE, None),
    row("mdev_type.*.name", "node_device", Text, NONE, None),
    row("mdev_type.*.device_api", "node_device", Text, NONE, None),
    row("mdev_type.*.available_instances", "node_device", Count, MDEV_TYPE, gauge("libvirt_node_device_mdev_available_instances", 1.0, "Mediated devices of this type the parent can still create (availableInstances: vGPU capacity left).")),
    row("mdev_type.*.devices", "node_device", Count, MDEV_TYPE, gauge("libvirt_node_device_mdev_devices", 1.0, "Mediated devices of this type that exist on the parent (active ones libvirt lists).")),
    row("mdev.type", "node_device", Text, NONE, None),
    row("mdev.uuid", "node_device", Text, NONE, None),
    row("assigned.count", "node_device", Count, NONE, None),
    row("assigned.*.domain", "node_device", Text, NONE, None),
    row("assigned.*.domain_uuid", "node_device", Text, NONE, None),
];

/// One node device.
pub(crate) static NODE_DEVICE: KindSpec = KindSpec {
    name: "node_device",
    title: "Node devices (SR-IOV, mediated devices, host devices assigned to domains)",
    subject: Subject::Object { label: "device", otlp: "libvirt.node_device" },
    prefix: "libvirt_node_device_",
    table: TABLE,
    info: &[
        InfoSpec {
            name: "libvirt_node_device_info",
            help: "A node device libvirt lists (value is always 1): its first capability, parent, driver, PCI vendor/product and, for a VF, its physical function.",
            labels: &[
                ("capability", InfoValue::Field("capability.0.type")),
                ("parent", InfoValue::Field("parent")),
                ("driver", InfoValue::Field("driver")),
                ("vendor_id", InfoValue::Field("vendor.id")),
                ("product_id", InfoValue::Field("product.id")),
                ("physical_function", InfoValue::Field("sriov.physical_function")),
            ],
            switch: Some(&NODE_DEVICE_DETAIL),
            note: "one per device; `count by (capability)` over `libvirt_node_device_capability_info` equals `virsh nodedev-list --cap`",
            ..InfoSpec::EMPTY
        },
        InfoSpec {
            name: "libvirt_node_device_capability_info",
            help: "A capability of a node device, as virsh nodedev-list --cap matches it (value is always 1).",
            labels: &[("capability", InfoValue::Field("type"))],
            repeat: Some(("capability.count", "capability")),
            switch: Some(&NODE_DEVICE_DETAIL),
            note: "one per device and capability (nested ones too: `mdev_types`, `vpd`, `fc_host`, `vports`)",
            ..InfoSpec::EMPTY
        },
        InfoSpec {
            name: "libvirt_node_device_mdev_type_info",
            help: "A mediated device type the parent offers (value is always 1): its name and device API.",
            labels: &[
                ("type", InfoValue::Field("id")),
                ("name", InfoValue::Field("name")),
                ("device_api", InfoValue::Field("device_api")),
            ],
            repeat: Some(("mdev_type.count", "mdev_type")),
            switch: Some(&NODE_DEVICE_DETAIL),
            note: "at most `collectors.node_devices.max_mdev_types` per device",
            ..InfoSpec::EMPTY
        },
        InfoSpec {
            name: "libvirt_node_device_assigned_info",
            help: "A host device assigned to a running domain (value is always 1): PCI and USB hostdevs, SR-IOV VFs as NICs, mediated devices.",
            labels: &[("domain", InfoValue::Field("domain")), ("domain_uuid", InfoValue::Field("domain_uuid"))],
            repeat: Some(("assigned.count", "assigned")),
            switch: Some(&NODE_DEVICE_DETAIL),
            note: "one per device and running domain the agent watches; `uuid` is the device's (mdevs), `domain_uuid` the domain's",
            ..InfoSpec::EMPTY
        },
    ],
    otlp_namespace: "libvirt.node_device",
    notes: "One record per node device libvirt lists as active, refreshed every `collectors.node_devices.interval` and at once on node device events; \
            domains' host device assignments are re-read on their lifecycle and device events. `uuid` is a mediated device's UUID (empty for other devices). \
            SR-IOV and mediated device figures were checked against libvirt's test driver and libvirt's own XML samples, not on such hardware.",
    ..KindSpec::EMPTY
};
