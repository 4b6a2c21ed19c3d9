//! What the health collector's records mean: each domain's monitor
//! (control) state, managed-save image, taint and deprecation messages,
//! and when the agent saw it start and change state.

use crate::record::kind::{gauge, row, InfoSpec, InfoValue, KindSpec, StatSpec, Subject, MS, NO_LABELS as NONE};
use crate::value::Unit::*;

#[rustfmt::skip]
static TABLE: &[StatSpec] = &[
    row("control.state", "control", Enum, NONE, gauge("libvirt_domain_control_state", 1.0, "State of the domain's control interface (its QEMU monitor): 0 ok, 1 job (a job uses it), 2 occupied (a call waits on it), 3 error.")),
    row("control.reason", "control", Enum, NONE, gauge("libvirt_domain_control_error_reason", 1.0, "Why the control interface is in state error: 0 none, 1 unknown, 2 monitor (the monitor connection failed), 3 internal.")),
    row("control.time", "control", Milliseconds, NONE, gauge("libvirt_domain_control_state_seconds", MS, "How long the control interface has been in its current state (0 when ok): a monitor occupied for long is a hung QEMU.")),
    row("managed_save", "details", Boolean, NONE, gauge("libvirt_domain_managed_save_image", 1.0, "1 if the domain has a managed-save image (it resumes from it at the next start).")),
    row("message.count", "details", Count, NONE, None),
    row("messages.taint", "details", Count, NONE, gauge("libvirt_domain_taint_messages", 1.0, "Taint flags libvirt recorded against the domain (custom QEMU arguments, monitor commands, ...; libvirt 7.1+).")),
    row("messages.deprecation", "details", Count, NONE, gauge("libvirt_domain_deprecation_messages", 1.0, "Deprecated configuration libvirt reports for the domain (libvirt 7.1+).")),
    row("message.*.kind", "details", Text, NONE, None),
    row("message.*.text", "details", Text, NONE, None),
    row("state.changed", "events", UnixSeconds, NONE, gauge("libvirt_domain_state_changed_timestamp_seconds", 1.0, "When the agent last saw a lifecycle event of the domain (absent until it sees one).")),
    row("started", "events", UnixSeconds, NONE, gauge("libvirt_domain_started_timestamp_seconds", 1.0, "When the agent saw the domain start (absent for a domain already running when the agent connected: libvirt has no call for a domain's start time).")),
];

/// One domain's health.
pub(crate) static DOMAIN_HEALTH: KindSpec = KindSpec {
    name: "domain_health",
    title: "Domain health (`[collectors.health]`: the monitor's state, managed save, taint and deprecation messages)",
    subject: Subject::Domain,
    prefix: "libvirt_domain_",
    table: TABLE,
    info: &[InfoSpec {
        name: "libvirt_domain_message_info",
        help: "A taint or deprecation message libvirt recorded against the domain (value is always 1).",
        labels: &[("kind", InfoValue::Field("kind")), ("message", InfoValue::Field("text"))],
        repeat: Some(("message.count", "message")),
        note: "`kind`: `taint` or `deprecation`; at most `collectors.health.max_messages` per domain",
        ..InfoSpec::EMPTY
    }],
    otlp_namespace: "libvirt.domain",
    notes: "The control state is read every interval for running domains (`virDomainGetControlInfo`: no job, \
QEMU is not asked, so it answers while QEMU hangs); the managed-save image and the messages every \
`details_interval` and after the domain's lifecycle events.",
    ..KindSpec::EMPTY
};
