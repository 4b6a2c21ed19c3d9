//! What the guest collector's records mean: what the guest agent reports
//! and the interfaces' addresses. Strings and counts are bounded by the
//! collector; OS, hostname and addresses are info metrics.

use crate::record::kind::{
    gauge, label, row, InfoSpec, InfoValue, InfoWhen, KindSpec, LabelSource, LabelSpec, StatSpec, Subject,
    NO_LABELS as NONE,
};
use crate::value::Unit::*;

const GUEST_FS: &[LabelSpec] = &[
    label("mountpoint", LabelSource::Sibling(1, "mountpoint")),
    label("device", LabelSource::Sibling(1, "name")),
    label("fstype", LabelSource::Sibling(1, "fstype")),
];

#[rustfmt::skip]
static TABLE: &[StatSpec] = &[
    row("fs.count", "guest", Count, NONE, gauge("libvirt_domain_guest_filesystems", 1.0, "Filesystems the guest agent reports (all of them; at most collectors.guest.max_filesystems have series).")),
    row("fs.*.mountpoint", "guest", Text, NONE, None),
    row("fs.*.name", "guest", Text, NONE, None),
    row("fs.*.fstype", "guest", Text, NONE, None),
    row("fs.*.total-bytes", "guest", Bytes, GUEST_FS, gauge("libvirt_domain_guest_filesystem_size_bytes", 1.0, "Size of a guest filesystem, as the guest sees it.")),
    row("fs.*.used-bytes", "guest", Bytes, GUEST_FS, gauge("libvirt_domain_guest_filesystem_used_bytes", 1.0, "Space used on a guest filesystem.")),
    row("user.count", "guest", Count, NONE, gauge("libvirt_domain_guest_users", 1.0, "Users logged in to the guest.")),
    row("load.1m", "guest", Ratio, NONE, gauge("libvirt_domain_guest_load1", 1.0, "The guest's 1-minute load average (libvirt 11.2 and a guest agent that reports it).")),
    row("load.5m", "guest", Ratio, NONE, gauge("libvirt_domain_guest_load5", 1.0, "The guest's 5-minute load average.")),
    row("load.15m", "guest", Ratio, NONE, gauge("libvirt_domain_guest_load15", 1.0, "The guest's 15-minute load average.")),
    row("hostname", "guest", Text, NONE, None),
    row("os.*", "guest", Text, NONE, None),
    row("timezone.name", "guest", Text, NONE, None),
    row("timezone.offset", "guest", Seconds, NONE, None),
    row("addr.count", "guest", Count, NONE, gauge("libvirt_domain_guest_interface_addresses", 1.0, "IP addresses reported for the guest's interfaces (at most collectors.guest.max_addresses).")),
    row("addr.*.prefix", "guest", Count, NONE, None),
    row("addr.*.*", "guest", Text, NONE, None),
];

/// What one domain's guest reports (guest agent, interface addresses).
pub(crate) static GUEST: KindSpec = KindSpec {
    name: "guest",
    title: "Guest (`[collectors.guest]`, off by default: the guest agent, interface addresses)",
    subject: Subject::Domain,
    prefix: "libvirt_domain_guest_",
    table: TABLE,
    info: &[
        InfoSpec {
            name: "libvirt_domain_guest_os_info",
            help: "What the guest agent says runs in the guest (value is always 1); join on domain/uuid.",
            labels: &[
                ("os_id", InfoValue::Field("os.id")),
                ("os_name", InfoValue::Field("os.name")),
                ("os_version", InfoValue::Field("os.version")),
                ("kernel_release", InfoValue::Field("os.kernel-release")),
                ("hostname", InfoValue::Field("hostname")),
            ],
            when: InfoWhen::AnyField(&["os.id", "hostname"]),
            note: "guest agent",
            ..InfoSpec::EMPTY
        },
        InfoSpec {
            name: "libvirt_domain_guest_interface_address_info",
            help: "An IP address of a guest interface (value is always 1), by where it was learnt (lease, arp, agent).",
            labels: &[
                ("interface", InfoValue::Field("interface")),
                ("mac", InfoValue::Field("mac")),
                ("address", InfoValue::Field("address")),
                ("prefix", InfoValue::Field("prefix")),
                ("family", InfoValue::Field("family")),
                ("source", InfoValue::Field("source")),
            ],
            repeat: Some(("addr.count", "addr")),
            note: "`source`: `lease`, `arp`, `agent`; at most `collectors.guest.max_addresses` per domain",
            ..InfoSpec::EMPTY
        },
    ],
    otlp_namespace: "libvirt.guest",
    ..KindSpec::EMPTY
};
