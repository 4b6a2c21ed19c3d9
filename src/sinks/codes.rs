//! Names for the numeric codes records carry (domain state, job type and
//! operation, pool state), shared by the sinks that turn them into labels
//! or attributes.

pub fn state_name(code: Option<f64>) -> &'static str {
    match code.map(|c| c as i64) {
        Some(0) => "nostate",
        Some(1) => "running",
        Some(2) => "blocked",
        Some(3) => "paused",
        Some(4) => "shutdown",
        Some(5) => "shutoff",
        Some(6) => "crashed",
        Some(7) => "pmsuspended",
        _ => "unknown",
    }
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
