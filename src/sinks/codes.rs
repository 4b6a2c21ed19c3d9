//! Names for the numeric codes records carry (job type and operation, pool
//! state), shared by the sinks that turn them into labels
//! or attributes.

/// libvirt's packed version number (major * 1,000,000 + minor * 1,000 +
/// release) as text.
pub fn version_string(v: u64) -> String {
    format!("{}.{}.{}", v / 1_000_000, (v / 1000) % 1000, v % 1000)
}

pub fn job_type_name(code: Option<u64>) -> &'static str {
    match code {
        Some(0) => "none",
        Some(1) => "bounded",
        Some(2) => "unbounded",
        Some(3) => "completed",
        Some(4) => "failed",
        Some(5) => "cancelled",
        _ => "unknown",
    }
}

pub fn job_operation_name(code: Option<u64>) -> &'static str {
    match code {
        Some(1) => "start",
        Some(2) => "save",
        Some(3) => "restore",
        Some(4) => "migration_in",
        Some(5) => "migration_out",
        Some(6) => "snapshot",
        Some(7) => "snapshot_revert",
        Some(8) => "dump",
        Some(9) => "backup",
        Some(10) => "snapshot_delete",
        _ => "unknown",
    }
}

pub fn pool_state_name(code: Option<u64>) -> &'static str {
    match code {
        Some(0) => "inactive",
        Some(1) => "building",
        Some(2) => "running",
        Some(3) => "degraded",
        Some(4) => "inaccessible",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_decoded() {
        assert_eq!(version_string(11_003_000), "11.3.0");
        assert_eq!(version_string(10_000_002), "10.0.2");
    }
}
