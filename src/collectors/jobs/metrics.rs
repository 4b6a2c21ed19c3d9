//! What the jobs collector's records mean: `virDomainGetJobStats`
//! parameters (plus `type`, the job type out-parameter) and the job's type
//! and operation as identity labels.

use crate::record::kind::{
    counter, gauge, row, CounterStart, IdentityLabel, KindSpec, StatSpec, Subject, MS, NO_LABELS as NONE, PERCENT,
};
use crate::value::Unit::*;

/// `virDomainJobType`, by code.
pub(crate) const JOB_TYPES: &[&str] = &["none", "bounded", "unbounded", "completed", "failed", "cancelled"];

/// `virDomainJobOperation`, by code.
pub(crate) const JOB_OPERATIONS: &[&str] = &[
    "unknown",
    "start",
    "save",
    "restore",
    "migration_in",
    "migration_out",
    "snapshot",
    "snapshot_revert",
    "dump",
    "backup",
    "snapshot_delete",
];

#[rustfmt::skip]
static TABLE: &[StatSpec] = &[
    row("type", "job", Enum, NONE, None),
    row("operation", "job", Enum, NONE, None),
    row("errmsg", "job", Text, NONE, None),
    row("time_elapsed", "job", Milliseconds, NONE, gauge("libvirt_domain_job_time_elapsed_seconds", MS, "Time since the job started.")),
    row("time_elapsed_net", "job", Milliseconds, NONE, gauge("libvirt_domain_job_time_elapsed_net_seconds", MS, "Time since the job started, without the time to hand control to the migration destination.")),
    row("time_remaining", "job", Milliseconds, NONE, gauge("libvirt_domain_job_time_remaining_seconds", MS, "Estimated time left (bounded jobs).")),
    row("downtime", "job", Milliseconds, NONE, gauge("libvirt_domain_job_downtime_seconds", MS, "Expected downtime of a running migration, or the real downtime of a completed one.")),
    row("downtime_net", "job", Milliseconds, NONE, gauge("libvirt_domain_job_downtime_net_seconds", MS, "Downtime without the time to hand control to the destination.")),
    row("setup_time", "job", Milliseconds, NONE, gauge("libvirt_domain_job_setup_time_seconds", MS, "Time spent setting the migration up.")),
    row("data_total", "job", Bytes, NONE, gauge("libvirt_domain_job_data_total_bytes", 1.0, "Data the job has to transfer in total (may grow for unbounded jobs).")),
    row("data_processed", "job", Bytes, NONE, counter("libvirt_domain_job_data_processed_bytes_total", 1.0, "Data transferred so far by the job.")),
    row("data_remaining", "job", Bytes, NONE, gauge("libvirt_domain_job_data_remaining_bytes", 1.0, "Data still to transfer.")),
    row("memory_total", "job", Bytes, NONE, gauge("libvirt_domain_job_memory_total_bytes", 1.0, "Guest memory the job has to transfer.")),
    row("memory_processed", "job", Bytes, NONE, counter("libvirt_domain_job_memory_processed_bytes_total", 1.0, "Guest memory transferred so far.")),
    row("memory_remaining", "job", Bytes, NONE, gauge("libvirt_domain_job_memory_remaining_bytes", 1.0, "Guest memory still to transfer.")),
    row("memory_constant", "job", Count, NONE, counter("libvirt_domain_job_memory_constant_pages_total", 1.0, "Pages filled with a constant (zero) value, sent as such.")),
    row("memory_normal", "job", Count, NONE, counter("libvirt_domain_job_memory_normal_pages_total", 1.0, "Pages sent as they are.")),
    row("memory_normal_bytes", "job", Bytes, NONE, counter("libvirt_domain_job_memory_normal_bytes_total", 1.0, "Bytes sent as normal pages.")),
    row("memory_bps", "job", BytesPerSecond, NONE, gauge("libvirt_domain_job_memory_bytes_per_second", 1.0, "Memory transfer rate.")),
    row("memory_dirty_rate", "job", PagesPerSecond, NONE, gauge("libvirt_domain_job_memory_dirty_pages_per_second", 1.0, "Rate at which the guest dirties memory during the migration.")),
    row("memory_page_size", "job", Bytes, NONE, gauge("libvirt_domain_job_memory_page_size_bytes", 1.0, "Page size of the page counts.")),
    row("memory_iteration", "job", Count, NONE, gauge("libvirt_domain_job_memory_iteration", 1.0, "Current memory copy iteration (0: first pass).")),
    row("memory_postcopy_requests", "job", Count, NONE, counter("libvirt_domain_job_memory_postcopy_requests_total", 1.0, "Page requests from the destination during post-copy.")),
    row("disk_total", "job", Bytes, NONE, gauge("libvirt_domain_job_disk_total_bytes", 1.0, "Disk data the job has to transfer.")),
    row("disk_processed", "job", Bytes, NONE, counter("libvirt_domain_job_disk_processed_bytes_total", 1.0, "Disk data transferred so far.")),
    row("disk_remaining", "job", Bytes, NONE, gauge("libvirt_domain_job_disk_remaining_bytes", 1.0, "Disk data still to transfer.")),
    row("disk_bps", "job", BytesPerSecond, NONE, gauge("libvirt_domain_job_disk_bytes_per_second", 1.0, "Disk transfer rate.")),
    row("disk_temp_used", "job", Bytes, NONE, gauge("libvirt_domain_job_disk_temp_used_bytes", 1.0, "Temporary disk space in use (backup scratch).")),
    row("disk_temp_total", "job", Bytes, NONE, gauge("libvirt_domain_job_disk_temp_total_bytes", 1.0, "Temporary disk space the job may use.")),
    row("compression_cache", "job", Bytes, NONE, gauge("libvirt_domain_job_compression_cache_bytes", 1.0, "Size of the XBZRLE compression cache.")),
    row("compression_bytes", "job", Bytes, NONE, counter("libvirt_domain_job_compression_bytes_total", 1.0, "Compressed bytes transferred.")),
    row("compression_pages", "job", Count, NONE, counter("libvirt_domain_job_compression_pages_total", 1.0, "Compressed pages transferred.")),
    row("compression_cache_misses", "job", Count, NONE, counter("libvirt_domain_job_compression_cache_misses_total", 1.0, "Changed pages not found in the compression cache.")),
    row("compression_overflow", "job", Count, NONE, counter("libvirt_domain_job_compression_overflow_pages_total", 1.0, "Pages sent uncompressed because compression made them bigger.")),
    row("auto_converge_throttle", "job", Percent, NONE, gauge("libvirt_domain_job_auto_converge_throttle_ratio", PERCENT, "Guest CPU throttle applied by auto-convergence (0 to 1).")),
    row("success", "job", Boolean, NONE, gauge("libvirt_domain_job_success", 1.0, "For a finished job: 1 if it succeeded.")),
    row("vfio_data_transferred", "job", Bytes, NONE, counter("libvirt_domain_job_vfio_data_transferred_bytes_total", 1.0, "Data transferred by VFIO devices.")),
];

/// One domain's running or last completed job.
pub(crate) static DOMAIN_JOB: KindSpec = KindSpec {
    name: "domain_job",
    title: "Domain jobs (`virDomainGetJobStats`)",
    subject: Subject::Domain,
    prefix: "libvirt_domain_job_",
    identity: &[
        IdentityLabel { label: "type", key: "type", names: JOB_TYPES },
        IdentityLabel { label: "operation", key: "operation", names: JOB_OPERATIONS },
    ],
    table: TABLE,
    otlp_namespace: "libvirt.job",
    counter_start: CounterStart {
        scope_keys: &["operation"],
        marker: Some("time_elapsed"),
        backdate_ms: Some("time_elapsed"),
    },
    notes: "Job series exist while a job runs (`type` bounded or unbounded); the last finished job of a domain stays \
on view with `type` completed, failed or cancelled for `collectors.jobs.completed_retention` after it was first seen.",
    ..KindSpec::EMPTY
};
