//! Stable names for libvirt's event enum codes. Records keep the raw code in
//! the field and the name next to it (`<field>_name`); the envelope's `type`
//! and `detail` use these names. Unknown codes (a newer daemon) become
//! `unknown_<code>`, never a failure.

fn pick(table: &[&'static str], code: i64) -> String {
    usize::try_from(code)
        .ok()
        .and_then(|i| table.get(i))
        .map(|s| (*s).to_string())
        .unwrap_or_else(|| format!("unknown_{code}"))
}

pub(crate) const LIFECYCLE: &[&str] =
    &["defined", "undefined", "started", "suspended", "resumed", "stopped", "shutdown", "pmsuspended", "crashed"];

/// Lifecycle detail names, indexed by lifecycle event code.
const LIFECYCLE_DETAILS: &[&[&str]] = &[
    &["added", "updated", "renamed", "from_snapshot"],
    &["removed", "renamed"],
    &["booted", "migrated", "restored", "from_snapshot", "wakeup", "recreated"],
    &[
        "paused",
        "migrated",
        "ioerror",
        "watchdog",
        "restored",
        "from_snapshot",
        "api_error",
        "postcopy",
        "postcopy_failed",
        "guest_shutdown",
    ],
    &["unpaused", "migrated", "from_snapshot", "postcopy", "postcopy_failed"],
    &["shutdown", "destroyed", "crashed", "migrated", "saved", "failed", "from_snapshot", "recreated"],
    &["finished", "guest", "host"],
    &["memory", "disk"],
    &["panicked", "crashloaded"],
];

pub(crate) fn lifecycle(event: i64) -> String {
    pick(LIFECYCLE, event)
}

pub(crate) fn lifecycle_detail(event: i64, detail: i64) -> String {
    match usize::try_from(event).ok().and_then(|i| LIFECYCLE_DETAILS.get(i)) {
        Some(t) => pick(t, detail),
        None => format!("unknown_{detail}"),
    }
}

pub(crate) fn watchdog_action(c: i64) -> String {
    pick(&["none", "pause", "reset", "poweroff", "shutdown", "debug", "inject_nmi"], c)
}

pub(crate) fn io_error_action(c: i64) -> String {
    pick(&["none", "pause", "report"], c)
}

pub(crate) fn graphics_phase(c: i64) -> String {
    pick(&["connect", "initialize", "disconnect"], c)
}

pub(crate) fn graphics_family(c: i64) -> String {
    pick(&["ipv4", "ipv6", "unix"], c)
}

pub(crate) fn block_job_type(c: i64) -> String {
    pick(&["unknown", "pull", "copy", "commit", "active_commit", "backup"], c)
}

pub(crate) fn block_job_status(c: i64) -> String {
    pick(&["completed", "failed", "canceled", "ready"], c)
}

pub(crate) fn disk_change_reason(c: i64) -> String {
    pick(&["missing_on_start", "dropped_missing_on_start"], c)
}

pub(crate) fn tray_change_reason(c: i64) -> String {
    pick(&["open", "close"], c)
}

/// Agent and channel lifecycle share their codes.
pub(crate) fn channel_state(c: i64) -> String {
    pick(&["unknown", "connected", "disconnected"], c)
}

pub(crate) fn channel_reason(c: i64) -> String {
    pick(&["unknown", "domain_started", "channel"], c)
}

pub(crate) fn metadata_type(c: i64) -> String {
    pick(&["description", "title", "element"], c)
}

pub(crate) fn memory_failure_recipient(c: i64) -> String {
    pick(&["hypervisor", "guest"], c)
}

pub(crate) fn memory_failure_action(c: i64) -> String {
    pick(&["ignore", "inject", "fatal", "reset"], c)
}

pub(crate) fn network_lifecycle(c: i64) -> String {
    pick(&["defined", "undefined", "started", "stopped"], c)
}

pub(crate) fn pool_lifecycle(c: i64) -> String {
    pick(&["defined", "undefined", "started", "stopped", "created", "deleted"], c)
}

pub(crate) fn nodedev_lifecycle(c: i64) -> String {
    pick(&["created", "deleted", "defined", "undefined"], c)
}

pub(crate) fn secret_lifecycle(c: i64) -> String {
    pick(&["defined", "undefined"], c)
}

/// `virDomainState`, for resync records.
pub(crate) fn domain_state(c: i64) -> String {
    pick(crate::record::DOMAIN_STATES, c)
}

/// The reason enum that goes with a `virDomainState`.
pub(crate) fn domain_state_reason(state: i64, reason: i64) -> String {
    let table: &[&str] = match state {
        1 => &[
            "unknown",
            "booted",
            "migrated",
            "restored",
            "from_snapshot",
            "unpaused",
            "migration_canceled",
            "save_canceled",
            "wakeup",
            "crashed",
            "postcopy",
            "postcopy_failed",
        ],
        3 => &[
            "unknown",
            "user",
            "migration",
            "save",
            "dump",
            "ioerror",
            "watchdog",
            "from_snapshot",
            "shutting_down",
            "snapshot",
            "crashed",
            "starting_up",
            "postcopy",
            "postcopy_failed",
            "api_error",
        ],
        4 => &["unknown", "user"],
        5 => &["unknown", "shutdown", "destroyed", "crashed", "migrated", "saved", "failed", "from_snapshot", "daemon"],
        6 => &["unknown", "panicked"],
        _ => &["unknown"],
    };
    pick(table, reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_unknown_codes() {
        assert_eq!(lifecycle(3), "suspended");
        assert_eq!(lifecycle_detail(3, 2), "ioerror");
        assert_eq!(lifecycle_detail(5, 2), "crashed");
        assert_eq!(lifecycle_detail(42, 0), "unknown_0");
        assert_eq!(lifecycle(99), "unknown_99");
        assert_eq!(watchdog_action(-1), "unknown_-1");
        assert_eq!(domain_state_reason(3, 5), "ioerror");
        assert_eq!(domain_state_reason(5, 5), "saved");
        assert_eq!(channel_state(1), "connected");
    }
}
