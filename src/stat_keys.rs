//! The one table that maps each libvirt domain stat key to its unit and, when
//! exported, to a metric (name, type, unit conversion, labels).
//!
//! Collectors use it to tag record fields with units; the Prometheus and
//! OTLP sinks use it to turn records into series; `docs/metrics.md` is
//! generated from it (`virtpulse --print-metrics-reference`).
//!
//! Keys are matched after replacing every all-digit segment with `*`
//! (`block.3.rd.bytes` -> `block.*.rd.bytes`); the digits become labels or
//! point at sibling keys that hold label values (`block.3.name`).
//! Hypervisor-defined stats (`vm.<stat>.<sum|cur|max>` and
//! `vcpu.<n>.<stat>.<sum|cur|max>`) and block latency histogram bins are
//! mapped by rule rather than by row, because their names are open-ended.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::{Arc, OnceLock, RwLock};

use rustc_hash::FxHashMap;

use crate::record::{Record, RecordKind, Unit};
use crate::value::TypedValue;

pub use crate::value::MetricType;

/// How deep a key's data goes: `Core` is in the default export profile,
/// the rest is one switch away each (see `selection::SWITCHES`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Detail {
    Core,
    VcpuKvm,
    VcpuState,
    VmKvm,
    BackingChain,
    Haltpoll,
    Perf,
    BlockLimits,
    BlockLatency,
    Resctrl,
    Iothread,
    Dirtyrate,
    NodePerCpu,
}

impl Detail {
    pub const ALL: [Detail; 13] = [
        Detail::Core,
        Detail::VcpuKvm,
        Detail::VcpuState,
        Detail::VmKvm,
        Detail::BackingChain,
        Detail::Haltpoll,
        Detail::Perf,
        Detail::BlockLimits,
        Detail::BlockLatency,
        Detail::Resctrl,
        Detail::Iothread,
        Detail::Dirtyrate,
        Detail::NodePerCpu,
    ];

    pub fn bit(self) -> u32 {
        1 << self as u32
    }
}

/// The detail of a key (or of a table pattern, whose indices are `*`).
/// Backing-chain layers share their keys with the top layer: that detail
/// is judged per record (see `BlockLayers`).
pub fn detail_of(kind: RecordKind, key: &str) -> Detail {
    let index = |s: &str| s == "*" || is_index(s);
    let mut parts = key.split('.');
    let (a, b, c, d, e) = (parts.next(), parts.next(), parts.next(), parts.next(), parts.next());
    match kind {
        RecordKind::Node => match (a, b) {
            (Some("cpu"), Some(n)) if index(n) => Detail::NodePerCpu,
            _ => Detail::Core,
        },
        RecordKind::DomainStats => match (a, b, c, d, e) {
            (Some("vm"), ..) => Detail::VmKvm,
            (Some("perf"), ..) => Detail::Perf,
            (Some("iothread"), ..) => Detail::Iothread,
            (Some("dirtyrate"), ..) => Detail::Dirtyrate,
            (Some("memory"), ..) | (Some("cpu"), Some("cache"), ..) => Detail::Resctrl,
            (Some("cpu"), Some("haltpoll"), ..) => Detail::Haltpoll,
            (Some("vcpu"), Some(n), Some("state" | "halted"), None, _) if index(n) => Detail::VcpuState,
            (Some("vcpu"), Some(n), Some(_), Some("sum" | "cur" | "max"), None) if index(n) => Detail::VcpuKvm,
            (Some("block"), Some(n), Some("limits"), ..) if index(n) => Detail::BlockLimits,
            (Some("block"), Some(n), Some("timed_group" | "latency_histogram"), ..) if index(n) => Detail::BlockLatency,
            _ => Detail::Core,
        },
        RecordKind::DomainJob | RecordKind::StoragePool | RecordKind::Guest | RecordKind::Event => Detail::Core,
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Export {
    pub name: &'static str,
    pub mtype: MetricType,
    /// Multiplier from the libvirt unit to the metric's base unit.
    pub scale: f64,
    pub help: &'static str,
}

/// Where a label's value comes from.
#[derive(Debug, Clone, Copy)]
pub enum LabelSource {
    /// The n-th (0-based) numeric segment of the key itself.
    Index(usize),
    /// A fixed value (e.g. `mode="user"` for `cpu.user`).
    Literal(&'static str),
    /// A sibling key: the key cut after its n-th (1-based) numeric segment,
    /// plus this suffix (`block.3` + `name`).
    Sibling(usize, &'static str),
}

#[derive(Debug, Clone, Copy)]
pub struct LabelSpec {
    pub name: &'static str,
    pub source: LabelSource,
}

#[derive(Debug, Clone, Copy)]
pub struct StatSpec {
    pub pattern: &'static str,
    pub group: &'static str,
    pub unit: Unit,
    pub labels: &'static [LabelSpec],
    /// `None` for keys that only feed labels, or that repeat what the series
    /// already tell (`*.count`).
    pub export: Option<Export>,
}

const fn l(name: &'static str, source: LabelSource) -> LabelSpec {
    LabelSpec { name, source }
}

const NONE: &[LabelSpec] = &[];
const VCPU: &[LabelSpec] = &[l("vcpu", LabelSource::Index(0))];
const NET: &[LabelSpec] = &[l("interface", LabelSource::Sibling(1, "name"))];
const BLOCK: &[LabelSpec] = &[
    l("device", LabelSource::Sibling(1, "name")),
    l("path", LabelSource::Sibling(1, "path")),
    l("backing_index", LabelSource::Sibling(1, "backingIndex")),
];
const BLOCK_TIMED: &[LabelSpec] = &[
    l("device", LabelSource::Sibling(1, "name")),
    l("path", LabelSource::Sibling(1, "path")),
    l("backing_index", LabelSource::Sibling(1, "backingIndex")),
    l("interval_seconds", LabelSource::Sibling(2, "interval")),
];
const IOTHREAD: &[LabelSpec] = &[l("iothread", LabelSource::Index(0))];
const CACHE_MON: &[LabelSpec] =
    &[l("monitor", LabelSource::Sibling(1, "name")), l("vcpus", LabelSource::Sibling(1, "vcpus"))];
const CACHE_BANK: &[LabelSpec] = &[
    l("monitor", LabelSource::Sibling(1, "name")),
    l("vcpus", LabelSource::Sibling(1, "vcpus")),
    l("bank", LabelSource::Sibling(2, "id")),
];
const MEMBW_NODE: &[LabelSpec] = &[
    l("monitor", LabelSource::Sibling(1, "name")),
    l("vcpus", LabelSource::Sibling(1, "vcpus")),
    l("node", LabelSource::Sibling(2, "id")),
];

const NS: f64 = 1e-9;
const KIB: f64 = 1024.0;
const MIB: f64 = 1024.0 * 1024.0;

const fn counter(name: &'static str, scale: f64, help: &'static str) -> Option<Export> {
    Some(Export { name, mtype: MetricType::Counter, scale, help })
}

const fn gauge(name: &'static str, scale: f64, help: &'static str) -> Option<Export> {
    Some(Export { name, mtype: MetricType::Gauge, scale, help })
}

const fn row(
    pattern: &'static str,
    group: &'static str,
    unit: Unit,
    labels: &'static [LabelSpec],
    export: Option<Export>,
) -> StatSpec {
    StatSpec { pattern, group, unit, labels, export }
}

use Unit::*;

#[rustfmt::skip]
pub static DOMAIN_TABLE: &[StatSpec] = &[
    // state
    row("state.state", "state", Enum, NONE, gauge("libvirt_domain_state", 1.0, "Domain state: 0 nostate, 1 running, 2 blocked, 3 paused, 4 shutdown, 5 shutoff, 6 crashed, 7 pmsuspended.")),
    row("state.reason", "state", Enum, NONE, gauge("libvirt_domain_state_reason", 1.0, "Reason code for the current state (virDomain<State>Reason, e.g. paused 5 = I/O error).")),
    // cpu-total
    row("cpu.time", "cpu-total", Nanoseconds, NONE, counter("libvirt_domain_cpu_time_seconds_total", NS, "CPU time used by the domain (all threads).")),
    row("cpu.user", "cpu-total", Nanoseconds, NONE, counter("libvirt_domain_cpu_user_seconds_total", NS, "User-mode CPU time used by the domain.")),
    row("cpu.system", "cpu-total", Nanoseconds, NONE, counter("libvirt_domain_cpu_system_seconds_total", NS, "System-mode CPU time used by the domain.")),
    row("cpu.haltpoll.success.time", "cpu-total", Nanoseconds, NONE, counter("libvirt_domain_cpu_haltpoll_success_seconds_total", NS, "Time spent halt-polling that ended with a wakeup.")),
    row("cpu.haltpoll.fail.time", "cpu-total", Nanoseconds, NONE, counter("libvirt_domain_cpu_haltpoll_fail_seconds_total", NS, "Time spent halt-polling that ended without a wakeup.")),
    row("cpu.cache.monitor.count", "cpu-total", Count, NONE, gauge("libvirt_domain_cpu_cache_monitors", 1.0, "Number of cache (CMT) monitors defined for the domain.")),
    row("cpu.cache.monitor.*.name", "cpu-total", Text, NONE, None),
    row("cpu.cache.monitor.*.vcpus", "cpu-total", Text, NONE, None),
    row("cpu.cache.monitor.*.bank.count", "cpu-total", Count, CACHE_MON, gauge("libvirt_domain_cpu_cache_monitor_banks", 1.0, "Number of cache banks covered by the monitor.")),
    row("cpu.cache.monitor.*.bank.*.id", "cpu-total", Count, NONE, None),
    row("cpu.cache.monitor.*.bank.*.bytes", "cpu-total", Bytes, CACHE_BANK, gauge("libvirt_domain_cpu_cache_occupancy_bytes", 1.0, "Last-level cache occupied by the domain on the bank.")),
    // balloon (libvirt reports KiB)
    row("balloon.current", "balloon", Kibibytes, NONE, gauge("libvirt_domain_balloon_current_bytes", KIB, "Memory currently assigned to the domain (balloon size).")),
    row("balloon.maximum", "balloon", Kibibytes, NONE, gauge("libvirt_domain_balloon_maximum_bytes", KIB, "Maximum memory the domain may use.")),
    row("balloon.swap_in", "balloon", Kibibytes, NONE, counter("libvirt_domain_balloon_swap_in_bytes_total", KIB, "Data read from swap inside the guest.")),
    row("balloon.swap_out", "balloon", Kibibytes, NONE, counter("libvirt_domain_balloon_swap_out_bytes_total", KIB, "Data written to swap inside the guest.")),
    row("balloon.major_fault", "balloon", Count, NONE, counter("libvirt_domain_balloon_major_faults_total", 1.0, "Page faults inside the guest that needed disk I/O.")),
    row("balloon.minor_fault", "balloon", Count, NONE, counter("libvirt_domain_balloon_minor_faults_total", 1.0, "Page faults inside the guest served without disk I/O.")),
    row("balloon.unused", "balloon", Kibibytes, NONE, gauge("libvirt_domain_balloon_unused_bytes", KIB, "Memory left completely unused by the guest.")),
    row("balloon.available", "balloon", Kibibytes, NONE, gauge("libvirt_domain_balloon_available_bytes", KIB, "Memory usable by the guest as it sees it.")),
    row("balloon.usable", "balloon", Kibibytes, NONE, gauge("libvirt_domain_balloon_usable_bytes", KIB, "Memory the guest can reclaim without swapping.")),
    row("balloon.rss", "balloon", Kibibytes, NONE, gauge("libvirt_domain_balloon_rss_bytes", KIB, "Resident set size of the QEMU process on the host.")),
    row("balloon.last-update", "balloon", UnixSeconds, NONE, gauge("libvirt_domain_balloon_last_update_timestamp_seconds", 1.0, "When the guest last updated its memory statistics (0: never).")),
    row("balloon.disk_caches", "balloon", Kibibytes, NONE, gauge("libvirt_domain_balloon_disk_caches_bytes", KIB, "Guest memory reclaimable without extra I/O (page cache).")),
    row("balloon.hugetlb_pgalloc", "balloon", Count, NONE, counter("libvirt_domain_balloon_hugetlb_page_allocations_total", 1.0, "Successful huge page allocations inside the guest.")),
    row("balloon.hugetlb_pgfail", "balloon", Count, NONE, counter("libvirt_domain_balloon_hugetlb_page_allocation_failures_total", 1.0, "Failed huge page allocations inside the guest.")),
    // vcpu
    row("vcpu.current", "vcpu", Count, NONE, gauge("libvirt_domain_vcpus_current", 1.0, "Number of online vCPUs.")),
    row("vcpu.maximum", "vcpu", Count, NONE, gauge("libvirt_domain_vcpus_maximum", 1.0, "Maximum number of vCPUs.")),
    row("vcpu.*.state", "vcpu", Enum, VCPU, gauge("libvirt_domain_vcpu_state", 1.0, "vCPU state: 0 offline, 1 running, 2 blocked.")),
    row("vcpu.*.time", "vcpu", Nanoseconds, VCPU, counter("libvirt_domain_vcpu_time_seconds_total", NS, "CPU time used by the vCPU thread.")),
    row("vcpu.*.wait", "vcpu", Nanoseconds, VCPU, counter("libvirt_domain_vcpu_wait_seconds_total", NS, "Time the vCPU wanted to run but the host ran something else.")),
    row("vcpu.*.halted", "vcpu", Boolean, VCPU, gauge("libvirt_domain_vcpu_halted", 1.0, "1 if the vCPU is halted.")),
    row("vcpu.*.delay", "vcpu", Nanoseconds, VCPU, counter("libvirt_domain_vcpu_delay_seconds_total", NS, "Time the vCPU thread waited in the host run queue (steal time seen by the guest).")),
    // interface
    row("net.count", "interface", Count, NONE, None),
    row("net.*.name", "interface", Text, NONE, None),
    row("net.*.rx.bytes", "interface", Bytes, NET, counter("libvirt_domain_interface_receive_bytes_total", 1.0, "Bytes received by the guest on the interface.")),
    row("net.*.rx.pkts", "interface", Count, NET, counter("libvirt_domain_interface_receive_packets_total", 1.0, "Packets received by the guest on the interface.")),
    row("net.*.rx.errs", "interface", Count, NET, counter("libvirt_domain_interface_receive_errors_total", 1.0, "Receive errors on the interface.")),
    row("net.*.rx.drop", "interface", Count, NET, counter("libvirt_domain_interface_receive_drops_total", 1.0, "Received packets dropped on the interface.")),
    row("net.*.tx.bytes", "interface", Bytes, NET, counter("libvirt_domain_interface_transmit_bytes_total", 1.0, "Bytes transmitted by the guest on the interface.")),
    row("net.*.tx.pkts", "interface", Count, NET, counter("libvirt_domain_interface_transmit_packets_total", 1.0, "Packets transmitted by the guest on the interface.")),
    row("net.*.tx.errs", "interface", Count, NET, counter("libvirt_domain_interface_transmit_errors_total", 1.0, "Transmit errors on the interface.")),
    row("net.*.tx.drop", "interface", Count, NET, counter("libvirt_domain_interface_transmit_drops_total", 1.0, "Transmitted packets dropped on the interface.")),
    // block
    row("block.count", "block", Count, NONE, None),
    row("block.*.name", "block", Text, NONE, None),
    row("block.*.path", "block", Text, NONE, None),
    row("block.*.backingIndex", "block", Count, NONE, None),
    row("block.*.rd.reqs", "block", Count, BLOCK, counter("libvirt_domain_block_read_requests_total", 1.0, "Read requests completed.")),
    row("block.*.rd.bytes", "block", Bytes, BLOCK, counter("libvirt_domain_block_read_bytes_total", 1.0, "Bytes read.")),
    row("block.*.rd.times", "block", Nanoseconds, BLOCK, counter("libvirt_domain_block_read_time_seconds_total", NS, "Time spent on reads.")),
    row("block.*.wr.reqs", "block", Count, BLOCK, counter("libvirt_domain_block_write_requests_total", 1.0, "Write requests completed.")),
    row("block.*.wr.bytes", "block", Bytes, BLOCK, counter("libvirt_domain_block_write_bytes_total", 1.0, "Bytes written.")),
    row("block.*.wr.times", "block", Nanoseconds, BLOCK, counter("libvirt_domain_block_write_time_seconds_total", NS, "Time spent on writes.")),
    row("block.*.fl.reqs", "block", Count, BLOCK, counter("libvirt_domain_block_flush_requests_total", 1.0, "Flush requests completed.")),
    row("block.*.fl.times", "block", Nanoseconds, BLOCK, counter("libvirt_domain_block_flush_time_seconds_total", NS, "Time spent on flushes.")),
    row("block.*.errors", "block", Count, BLOCK, counter("libvirt_domain_block_errors_total", 1.0, "I/O errors (Xen only).")),
    row("block.*.allocation", "block", Bytes, BLOCK, gauge("libvirt_domain_block_allocation_bytes", 1.0, "Highest written offset of the image (what the block threshold compares against).")),
    row("block.*.capacity", "block", Bytes, BLOCK, gauge("libvirt_domain_block_capacity_bytes", 1.0, "Logical size of the image as the guest sees it.")),
    row("block.*.physical", "block", Bytes, BLOCK, gauge("libvirt_domain_block_physical_bytes", 1.0, "Physical size of the image's container (file or volume).")),
    row("block.*.threshold", "block", Bytes, BLOCK, gauge("libvirt_domain_block_threshold_bytes", 1.0, "Write threshold that fires the block-threshold event.")),
    row("block.*.limits.request_alignment", "block", Bytes, BLOCK, gauge("libvirt_domain_block_limit_request_alignment_bytes", 1.0, "Required alignment of I/O offset and length.")),
    row("block.*.limits.discard_max", "block", Bytes, BLOCK, gauge("libvirt_domain_block_limit_discard_max_bytes", 1.0, "Largest discard request.")),
    row("block.*.limits.discard_alignment", "block", Bytes, BLOCK, gauge("libvirt_domain_block_limit_discard_alignment_bytes", 1.0, "Optimal discard alignment.")),
    row("block.*.limits.write_zeroes_max", "block", Bytes, BLOCK, gauge("libvirt_domain_block_limit_write_zeroes_max_bytes", 1.0, "Largest write-zeroes request.")),
    row("block.*.limits.write_zeroes_alignment", "block", Bytes, BLOCK, gauge("libvirt_domain_block_limit_write_zeroes_alignment_bytes", 1.0, "Optimal write-zeroes alignment.")),
    row("block.*.limits.transfer_optimal", "block", Bytes, BLOCK, gauge("libvirt_domain_block_limit_transfer_optimal_bytes", 1.0, "Optimal transfer length.")),
    row("block.*.limits.transfer_max", "block", Bytes, BLOCK, gauge("libvirt_domain_block_limit_transfer_max_bytes", 1.0, "Largest transfer length.")),
    row("block.*.limits.transfer_hw_max", "block", Bytes, BLOCK, gauge("libvirt_domain_block_limit_transfer_hw_max_bytes", 1.0, "Largest hardware transfer length.")),
    row("block.*.limits.iov_max", "block", Count, BLOCK, gauge("libvirt_domain_block_limit_iov_max", 1.0, "Most elements in one I/O vector.")),
    row("block.*.limits.iov_hw_max", "block", Count, BLOCK, gauge("libvirt_domain_block_limit_iov_hw_max", 1.0, "Most elements in one hardware I/O vector.")),
    row("block.*.limits.memory_alignment_minimal", "block", Bytes, BLOCK, gauge("libvirt_domain_block_limit_memory_alignment_minimal_bytes", 1.0, "Minimal buffer memory alignment.")),
    row("block.*.limits.memory_alignment_optimal", "block", Bytes, BLOCK, gauge("libvirt_domain_block_limit_memory_alignment_optimal_bytes", 1.0, "Optimal buffer memory alignment.")),
    row("block.*.timed_group.count", "block", Count, NONE, None),
    row("block.*.timed_group.*.interval", "block", Seconds, NONE, None),
    row("block.*.timed_group.*.rd_latency_min", "block", Nanoseconds, BLOCK_TIMED, gauge("libvirt_domain_block_read_latency_min_seconds", NS, "Lowest read latency in the interval window.")),
    row("block.*.timed_group.*.rd_latency_max", "block", Nanoseconds, BLOCK_TIMED, gauge("libvirt_domain_block_read_latency_max_seconds", NS, "Highest read latency in the interval window.")),
    row("block.*.timed_group.*.rd_latency_avg", "block", Nanoseconds, BLOCK_TIMED, gauge("libvirt_domain_block_read_latency_avg_seconds", NS, "Average read latency in the interval window.")),
    row("block.*.timed_group.*.wr_latency_min", "block", Nanoseconds, BLOCK_TIMED, gauge("libvirt_domain_block_write_latency_min_seconds", NS, "Lowest write latency in the interval window.")),
    row("block.*.timed_group.*.wr_latency_max", "block", Nanoseconds, BLOCK_TIMED, gauge("libvirt_domain_block_write_latency_max_seconds", NS, "Highest write latency in the interval window.")),
    row("block.*.timed_group.*.wr_latency_avg", "block", Nanoseconds, BLOCK_TIMED, gauge("libvirt_domain_block_write_latency_avg_seconds", NS, "Average write latency in the interval window.")),
    row("block.*.timed_group.*.zone_append_latency_min", "block", Nanoseconds, BLOCK_TIMED, gauge("libvirt_domain_block_zone_append_latency_min_seconds", NS, "Lowest zone-append latency in the interval window.")),
    row("block.*.timed_group.*.zone_append_latency_max", "block", Nanoseconds, BLOCK_TIMED, gauge("libvirt_domain_block_zone_append_latency_max_seconds", NS, "Highest zone-append latency in the interval window.")),
    row("block.*.timed_group.*.zone_append_latency_avg", "block", Nanoseconds, BLOCK_TIMED, gauge("libvirt_domain_block_zone_append_latency_avg_seconds", NS, "Average zone-append latency in the interval window.")),
    row("block.*.timed_group.*.flush_latency_min", "block", Nanoseconds, BLOCK_TIMED, gauge("libvirt_domain_block_flush_latency_min_seconds", NS, "Lowest flush latency in the interval window.")),
    row("block.*.timed_group.*.flush_latency_max", "block", Nanoseconds, BLOCK_TIMED, gauge("libvirt_domain_block_flush_latency_max_seconds", NS, "Highest flush latency in the interval window.")),
    row("block.*.timed_group.*.flush_latency_avg", "block", Nanoseconds, BLOCK_TIMED, gauge("libvirt_domain_block_flush_latency_avg_seconds", NS, "Average flush latency in the interval window.")),
    row("block.*.timed_group.*.rd_queue_depth_avg", "block", Count, BLOCK_TIMED, gauge("libvirt_domain_block_read_queue_depth_avg", 1.0, "Average read queue depth in the interval window.")),
    row("block.*.timed_group.*.wr_queue_depth_avg", "block", Count, BLOCK_TIMED, gauge("libvirt_domain_block_write_queue_depth_avg", 1.0, "Average write queue depth in the interval window.")),
    row("block.*.timed_group.*.zone_append_queue_depth_avg", "block", Count, BLOCK_TIMED, gauge("libvirt_domain_block_zone_append_queue_depth_avg", 1.0, "Average zone-append queue depth in the interval window.")),
    // perf (only events enabled on the domain appear)
    row("perf.cmt", "perf", Bytes, NONE, gauge("libvirt_domain_perf_cmt_bytes", 1.0, "L3 cache occupancy (Intel CMT).")),
    row("perf.mbmt", "perf", BytesPerSecond, NONE, gauge("libvirt_domain_perf_mbmt_bytes_per_second", 1.0, "Total memory bandwidth (Intel MBM).")),
    row("perf.mbml", "perf", BytesPerSecond, NONE, gauge("libvirt_domain_perf_mbml_bytes_per_second", 1.0, "Local memory bandwidth (Intel MBM).")),
    row("perf.cpu_cycles", "perf", Count, NONE, counter("libvirt_domain_perf_cpu_cycles_total", 1.0, "CPU cycles.")),
    row("perf.instructions", "perf", Count, NONE, counter("libvirt_domain_perf_instructions_total", 1.0, "Instructions retired.")),
    row("perf.cache_references", "perf", Count, NONE, counter("libvirt_domain_perf_cache_references_total", 1.0, "Cache references.")),
    row("perf.cache_misses", "perf", Count, NONE, counter("libvirt_domain_perf_cache_misses_total", 1.0, "Cache misses.")),
    row("perf.branch_instructions", "perf", Count, NONE, counter("libvirt_domain_perf_branch_instructions_total", 1.0, "Branch instructions retired.")),
    row("perf.branch_misses", "perf", Count, NONE, counter("libvirt_domain_perf_branch_misses_total", 1.0, "Mispredicted branches.")),
    row("perf.bus_cycles", "perf", Count, NONE, counter("libvirt_domain_perf_bus_cycles_total", 1.0, "Bus cycles.")),
    row("perf.stalled_cycles_frontend", "perf", Count, NONE, counter("libvirt_domain_perf_stalled_cycles_frontend_total", 1.0, "Cycles stalled in the front end.")),
    row("perf.stalled_cycles_backend", "perf", Count, NONE, counter("libvirt_domain_perf_stalled_cycles_backend_total", 1.0, "Cycles stalled in the back end.")),
    row("perf.ref_cpu_cycles", "perf", Count, NONE, counter("libvirt_domain_perf_ref_cpu_cycles_total", 1.0, "Reference CPU cycles (not scaled by frequency).")),
    row("perf.cpu_clock", "perf", Nanoseconds, NONE, counter("libvirt_domain_perf_cpu_clock_seconds_total", NS, "perf cpu-clock software event.")),
    row("perf.task_clock", "perf", Nanoseconds, NONE, counter("libvirt_domain_perf_task_clock_seconds_total", NS, "perf task-clock software event.")),
    row("perf.page_faults", "perf", Count, NONE, counter("libvirt_domain_perf_page_faults_total", 1.0, "Page faults.")),
    row("perf.context_switches", "perf", Count, NONE, counter("libvirt_domain_perf_context_switches_total", 1.0, "Context switches.")),
    row("perf.cpu_migrations", "perf", Count, NONE, counter("libvirt_domain_perf_cpu_migrations_total", 1.0, "Migrations between host CPUs.")),
    row("perf.page_faults_min", "perf", Count, NONE, counter("libvirt_domain_perf_minor_page_faults_total", 1.0, "Minor page faults.")),
    row("perf.page_faults_maj", "perf", Count, NONE, counter("libvirt_domain_perf_major_page_faults_total", 1.0, "Major page faults.")),
    row("perf.alignment_faults", "perf", Count, NONE, counter("libvirt_domain_perf_alignment_faults_total", 1.0, "Alignment faults.")),
    row("perf.emulation_faults", "perf", Count, NONE, counter("libvirt_domain_perf_emulation_faults_total", 1.0, "Emulation faults.")),
    // iothread
    row("iothread.count", "iothread", Count, NONE, gauge("libvirt_domain_iothreads", 1.0, "Number of IOThreads of the domain.")),
    row("iothread.*.poll-max-ns", "iothread", Nanoseconds, IOTHREAD, gauge("libvirt_domain_iothread_poll_max_seconds", NS, "Longest polling time of the IOThread (0: polling disabled).")),
    row("iothread.*.poll-grow", "iothread", Ratio, IOTHREAD, gauge("libvirt_domain_iothread_poll_grow_factor", 1.0, "Polling time grow factor (0: hypervisor default).")),
    row("iothread.*.poll-shrink", "iothread", Ratio, IOTHREAD, gauge("libvirt_domain_iothread_poll_shrink_divisor", 1.0, "Polling time shrink divisor (0: hypervisor default).")),
    // memory (resctrl memory bandwidth monitors)
    row("memory.bandwidth.monitor.count", "memory", Count, NONE, gauge("libvirt_domain_memory_bandwidth_monitors", 1.0, "Number of memory bandwidth monitors of the domain.")),
    row("memory.bandwidth.monitor.*.name", "memory", Text, NONE, None),
    row("memory.bandwidth.monitor.*.vcpus", "memory", Text, NONE, None),
    row("memory.bandwidth.monitor.*.node.count", "memory", Count, NONE, None),
    row("memory.bandwidth.monitor.*.node.*.id", "memory", Count, NONE, None),
    row("memory.bandwidth.monitor.*.node.*.bytes.local", "memory", Bytes, MEMBW_NODE, counter("libvirt_domain_memory_bandwidth_local_bytes_total", 1.0, "Bytes moved through the memory controller local to the vCPUs.")),
    row("memory.bandwidth.monitor.*.node.*.bytes.total", "memory", Bytes, MEMBW_NODE, counter("libvirt_domain_memory_bandwidth_bytes_total", 1.0, "Bytes moved through all memory controllers.")),
    // dirtyrate
    row("dirtyrate.calc_status", "dirtyrate", Enum, NONE, gauge("libvirt_domain_dirtyrate_calc_status", 1.0, "Dirty rate calculation status: 0 unstarted, 1 measuring, 2 measured.")),
    row("dirtyrate.calc_start_time", "dirtyrate", Seconds, NONE, gauge("libvirt_domain_dirtyrate_calc_start_time_seconds", 1.0, "Start of the last dirty rate calculation (host monotonic clock).")),
    row("dirtyrate.calc_period", "dirtyrate", Seconds, NONE, gauge("libvirt_domain_dirtyrate_calc_period_seconds", 1.0, "Length of the last dirty rate calculation.")),
    row("dirtyrate.megabytes_per_second", "dirtyrate", MebibytesPerSecond, NONE, gauge("libvirt_domain_dirtyrate_bytes_per_second", MIB, "Memory dirty rate measured by the last calculation.")),
    row("dirtyrate.calc_mode", "dirtyrate", Text, NONE, None),
    row("dirtyrate.vcpu.*.megabytes_per_second", "dirtyrate", MebibytesPerSecond, VCPU, gauge("libvirt_domain_dirtyrate_vcpu_bytes_per_second", MIB, "Per-vCPU memory dirty rate (dirty-ring mode).")),
];

const MS: f64 = 1e-3;
const PERCENT: f64 = 0.01;

const MODE_USER: &[LabelSpec] = &[l("mode", LabelSource::Literal("user"))];
const MODE_KERNEL: &[LabelSpec] = &[l("mode", LabelSource::Literal("kernel"))];
const MODE_IDLE: &[LabelSpec] = &[l("mode", LabelSource::Literal("idle"))];
const MODE_IOWAIT: &[LabelSpec] = &[l("mode", LabelSource::Literal("iowait"))];
const MODE_INTR: &[LabelSpec] = &[l("mode", LabelSource::Literal("intr"))];
const CPU_USER: &[LabelSpec] = &[l("cpu", LabelSource::Index(0)), l("mode", LabelSource::Literal("user"))];
const CPU_KERNEL: &[LabelSpec] = &[l("cpu", LabelSource::Index(0)), l("mode", LabelSource::Literal("kernel"))];
const CPU_IDLE: &[LabelSpec] = &[l("cpu", LabelSource::Index(0)), l("mode", LabelSource::Literal("idle"))];
const CPU_IOWAIT: &[LabelSpec] = &[l("cpu", LabelSource::Index(0)), l("mode", LabelSource::Literal("iowait"))];
const CPU_INTR: &[LabelSpec] = &[l("cpu", LabelSource::Index(0)), l("mode", LabelSource::Literal("intr"))];
const CELL: &[LabelSpec] = &[l("cell", LabelSource::Index(0))];
const CELL_PAGES: &[LabelSpec] = &[l("cell", LabelSource::Index(0)), l("page_size_bytes", LabelSource::Index(1))];
const RUNNING: &[LabelSpec] = &[l("state", LabelSource::Literal("running"))];
const PAUSED: &[LabelSpec] = &[l("state", LabelSource::Literal("paused"))];
const SHUTOFF: &[LabelSpec] = &[l("state", LabelSource::Literal("shutoff"))];
const OTHER: &[LabelSpec] = &[l("state", LabelSource::Literal("other"))];

/// `virDomainGetJobStats` parameters (plus `type`, the job type out-parameter).
#[rustfmt::skip]
pub static JOB_TABLE: &[StatSpec] = &[
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

/// Host statistics, keyed as the node collector names them.
#[rustfmt::skip]
pub static NODE_TABLE: &[StatSpec] = &[
    row("info.model", "node", Text, NONE, None),
    row("info.memory", "node", Kibibytes, NONE, gauge("libvirt_node_memory_bytes", KIB, "Host memory as virNodeGetInfo reports it.")),
    row("info.cpus", "node", Count, NONE, gauge("libvirt_node_cpus", 1.0, "Active host CPUs.")),
    row("info.mhz", "node", Megahertz, NONE, gauge("libvirt_node_cpu_frequency_hertz", 1e6, "Expected CPU frequency.")),
    row("info.nodes", "node", Count, NONE, gauge("libvirt_node_numa_cells", 1.0, "NUMA cells (1 for a uniform memory layout).")),
    row("info.sockets", "node", Count, NONE, gauge("libvirt_node_cpu_sockets_per_cell", 1.0, "CPU sockets per NUMA cell.")),
    row("info.cores", "node", Count, NONE, gauge("libvirt_node_cpu_cores_per_socket", 1.0, "Cores per socket.")),
    row("info.threads", "node", Count, NONE, gauge("libvirt_node_cpu_threads_per_core", 1.0, "Threads per core.")),
    row("cpu.user", "node", Nanoseconds, MODE_USER, counter("libvirt_node_cpu_time_seconds_total", NS, "CPU time of all host CPUs by mode.")),
    row("cpu.kernel", "node", Nanoseconds, MODE_KERNEL, counter("libvirt_node_cpu_time_seconds_total", NS, "CPU time of all host CPUs by mode.")),
    row("cpu.idle", "node", Nanoseconds, MODE_IDLE, counter("libvirt_node_cpu_time_seconds_total", NS, "CPU time of all host CPUs by mode.")),
    row("cpu.iowait", "node", Nanoseconds, MODE_IOWAIT, counter("libvirt_node_cpu_time_seconds_total", NS, "CPU time of all host CPUs by mode.")),
    row("cpu.intr", "node", Nanoseconds, MODE_INTR, counter("libvirt_node_cpu_time_seconds_total", NS, "CPU time of all host CPUs by mode.")),
    row("cpu.utilization", "node", Percent, NONE, gauge("libvirt_node_cpu_utilization_ratio", PERCENT, "CPU utilization of the host (drivers that report it).")),
    row("cpu.*.user", "node", Nanoseconds, CPU_USER, counter("libvirt_node_logical_cpu_time_seconds_total", NS, "CPU time of each host CPU by mode.")),
    row("cpu.*.kernel", "node", Nanoseconds, CPU_KERNEL, counter("libvirt_node_logical_cpu_time_seconds_total", NS, "CPU time of each host CPU by mode.")),
    row("cpu.*.idle", "node", Nanoseconds, CPU_IDLE, counter("libvirt_node_logical_cpu_time_seconds_total", NS, "CPU time of each host CPU by mode.")),
    row("cpu.*.iowait", "node", Nanoseconds, CPU_IOWAIT, counter("libvirt_node_logical_cpu_time_seconds_total", NS, "CPU time of each host CPU by mode.")),
    row("cpu.*.intr", "node", Nanoseconds, CPU_INTR, counter("libvirt_node_logical_cpu_time_seconds_total", NS, "CPU time of each host CPU by mode.")),
    row("cpu.*.utilization", "node", Percent, NONE, None),
    row("memory.total", "node", Kibibytes, NONE, gauge("libvirt_node_memory_total_bytes", KIB, "Host memory in total (virNodeGetMemoryStats).")),
    row("memory.free", "node", Kibibytes, NONE, gauge("libvirt_node_memory_free_bytes", KIB, "Host memory free.")),
    row("memory.buffers", "node", Kibibytes, NONE, gauge("libvirt_node_memory_buffers_bytes", KIB, "Host memory used for buffers.")),
    row("memory.cached", "node", Kibibytes, NONE, gauge("libvirt_node_memory_cached_bytes", KIB, "Host memory used for the page cache.")),
    row("memory.cell.*.total", "node", Kibibytes, CELL, gauge("libvirt_node_numa_memory_total_bytes", KIB, "Memory of the NUMA cell.")),
    row("memory.cell.*.free", "node", Kibibytes, NONE, None),
    row("cell.*.free_memory", "node", Bytes, CELL, gauge("libvirt_node_numa_memory_free_bytes", 1.0, "Free memory of the NUMA cell (virNodeGetCellsFreeMemory).")),
    row("pages.cell.*.size.*.free", "node", Count, CELL_PAGES, gauge("libvirt_node_free_pages", 1.0, "Free pages of each size (e.g. huge pages) in the NUMA cell.")),
    row("version.library", "node", Count, NONE, None),
    row("version.daemon", "node", Count, NONE, None),
    row("version.hypervisor", "node", Count, NONE, None),
    row("hypervisor.type", "node", Text, NONE, None),
    row("domains.running", "node", Count, RUNNING, gauge("libvirt_node_domains", 1.0, "Domains on the host by state (running, paused, shutoff, other).")),
    row("domains.paused", "node", Count, PAUSED, gauge("libvirt_node_domains", 1.0, "Domains on the host by state (running, paused, shutoff, other).")),
    row("domains.shutoff", "node", Count, SHUTOFF, gauge("libvirt_node_domains", 1.0, "Domains on the host by state (running, paused, shutoff, other).")),
    row("domains.other", "node", Count, OTHER, gauge("libvirt_node_domains", 1.0, "Domains on the host by state (running, paused, shutoff, other).")),
    row("domains.persistent", "node", Count, NONE, gauge("libvirt_node_domains_persistent", 1.0, "Domains defined on the host (persistent).")),
    row("domains.transient", "node", Count, NONE, gauge("libvirt_node_domains_transient", 1.0, "Transient domains on the host.")),
];

/// Storage pool figures (`virStoragePoolGetInfo`, volume count, XML).
#[rustfmt::skip]
pub static POOL_TABLE: &[StatSpec] = &[
    row("state", "pool", Enum, NONE, gauge("libvirt_storage_pool_state", 1.0, "Pool state: 0 inactive, 1 building, 2 running, 3 degraded, 4 inaccessible.")),
    row("capacity", "pool", Bytes, NONE, gauge("libvirt_storage_pool_capacity_bytes", 1.0, "Logical size of the pool (as of libvirt's last refresh).")),
    row("allocation", "pool", Bytes, NONE, gauge("libvirt_storage_pool_allocation_bytes", 1.0, "Space allocated in the pool.")),
    row("available", "pool", Bytes, NONE, gauge("libvirt_storage_pool_available_bytes", 1.0, "Free space in the pool.")),
    row("volumes", "pool", Count, NONE, gauge("libvirt_storage_pool_volumes", 1.0, "Volumes in the pool.")),
    row("type", "pool", Text, NONE, None),
    row("persistent", "pool", Boolean, NONE, None),
    row("autostart", "pool", Boolean, NONE, None),
];

/// What the guest reports (collectors.guest; the guest agent and
/// virDomainInterfaceAddresses). Strings and counts are bounded by the
/// collector; OS, hostname and addresses are info metrics (sinks::info).
const GUEST_FS: &[LabelSpec] = &[
    l("mountpoint", LabelSource::Sibling(1, "mountpoint")),
    l("device", LabelSource::Sibling(1, "name")),
    l("fstype", LabelSource::Sibling(1, "fstype")),
];

#[rustfmt::skip]
pub static GUEST_TABLE: &[StatSpec] = &[
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

/// The table for a record kind.
pub fn table(kind: RecordKind) -> &'static [StatSpec] {
    match kind {
        RecordKind::DomainStats => DOMAIN_TABLE,
        RecordKind::DomainJob => JOB_TABLE,
        RecordKind::Node => NODE_TABLE,
        RecordKind::StoragePool => POOL_TABLE,
        RecordKind::Guest => GUEST_TABLE,
        // Events are counted by the sinks, not mapped key by key.
        RecordKind::Event => &[],
    }
}

/// The metric name prefix of a record kind (checked by the table tests).
pub fn prefix(kind: RecordKind) -> &'static str {
    match kind {
        RecordKind::DomainStats => "libvirt_domain_",
        RecordKind::DomainJob => "libvirt_domain_job_",
        RecordKind::Node => "libvirt_node_",
        RecordKind::StoragePool => "libvirt_storage_pool_",
        RecordKind::Guest => "libvirt_domain_guest_",
        RecordKind::Event => "libvirt_",
    }
}

/// Hypervisor-defined stats, mapped by rule. Described here for the docs.
pub const RULES: &[(&str, &str, &str)] = &[
    (
        "vm.<stat>.sum",
        "libvirt_domain_vm_<stat>_total",
        "counter; `<stat>` ending in `_ns` becomes `_seconds_total` (scaled)",
    ),
    ("vm.<stat>.cur / .max", "libvirt_domain_vm_<stat>", "gauge (instant value / peak); booleans as 0/1"),
    (
        "vcpu.<n>.<stat>.sum",
        "libvirt_domain_vcpu_kvm_<stat>_total{vcpu}",
        "counter; `_ns` stats become `_seconds_total`",
    ),
    ("vcpu.<n>.<stat>.cur / .max", "libvirt_domain_vcpu_kvm_<stat>{vcpu}", "gauge; booleans as 0/1"),
    (
        "block.<n>.latency_histogram.<op>.bin.<b>.value",
        "libvirt_domain_block_latency_operations_total{operation,bin_start_seconds}",
        "counter per latency bin",
    ),
];

type Index = HashMap<&'static str, &'static StatSpec>;

fn index(kind: RecordKind) -> &'static Index {
    static INDEX: OnceLock<Vec<Index>> = OnceLock::new();
    let all = INDEX
        .get_or_init(|| RecordKind::ALL.iter().map(|k| table(*k).iter().map(|s| (s.pattern, s)).collect()).collect());
    &all[kind.index()]
}

fn is_index(seg: &str) -> bool {
    !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit())
}

/// `block.3.rd.bytes` -> `block.*.rd.bytes`.
pub fn pattern_of(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for (i, seg) in key.split('.').enumerate() {
        if i > 0 {
            out.push('.');
        }
        out.push_str(if is_index(seg) { "*" } else { seg });
    }
    out
}

pub fn lookup(kind: RecordKind, key: &str) -> Option<&'static StatSpec> {
    index(kind).get(pattern_of(key).as_str()).copied()
}

/// A hypervisor-defined stat (`vm.*`, `vcpu.<n>.<stat>.<type>`) or a
/// latency histogram bin, mapped by rule.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleMatch {
    pub name: String,
    pub mtype: MetricType,
    /// `None`: the unit follows the value (booleans stay booleans, else a count).
    pub unit: Option<Unit>,
    pub scale: f64,
    pub help: String,
    pub labels: Vec<(&'static str, MappedLabel)>,
}

fn sanitize(stat: &str) -> String {
    stat.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c.to_ascii_lowercase() } else { '_' }).collect()
}

fn kvm_rule(prefix: &str, stat: &str, kind: &str) -> Option<RuleMatch> {
    let stat = sanitize(stat);
    if stat.is_empty() {
        return None;
    }
    let (base, unit, scale) = match stat.strip_suffix("_ns") {
        Some(b) if !b.is_empty() => (format!("{b}_seconds"), Some(Nanoseconds), NS),
        _ => (stat.clone(), None, 1.0),
    };
    let (name, mtype, what) = match kind {
        "sum" => (format!("{prefix}{base}_total"), MetricType::Counter, "cumulative"),
        "cur" => (format!("{prefix}{base}"), MetricType::Gauge, "current"),
        "max" => (format!("{prefix}{base}"), MetricType::Gauge, "peak"),
        _ => return None,
    };
    Some(RuleMatch {
        help: format!("Hypervisor statistic {stat} ({what}) reported by QEMU query-stats."),
        name,
        mtype,
        unit,
        scale,
        labels: Vec::new(),
    })
}

fn sibling(key: &str, n: usize, suffix: &str) -> MappedLabel {
    match scope_prefix(key, n) {
        Some(p) => MappedLabel::Sibling(format!("{p}.{suffix}")),
        None => MappedLabel::Literal(String::new()),
    }
}

/// Applies the rules to a key not in the table.
pub fn rule_for(key: &str) -> Option<RuleMatch> {
    let parts: Vec<&str> = key.split('.').collect();
    match parts.as_slice() {
        ["vm", stat, kind] => kvm_rule("libvirt_domain_vm_", stat, kind),
        ["vcpu", n, stat, kind] if is_index(n) => kvm_rule("libvirt_domain_vcpu_kvm_", stat, kind).map(|mut m| {
            m.labels.push(("vcpu", MappedLabel::Literal((*n).to_string())));
            m
        }),
        ["block", n, "latency_histogram", op, "bin", b, "value"] if is_index(n) && is_index(b) => {
            let mut labels: Vec<(&'static str, MappedLabel)> = BLOCK
                .iter()
                .filter_map(|ls| match ls.source {
                    LabelSource::Sibling(n, suffix) => Some((ls.name, sibling(key, n, suffix))),
                    LabelSource::Index(_) | LabelSource::Literal(_) => None,
                })
                .collect();
            labels.push(("operation", MappedLabel::Literal(sanitize(op))));
            labels.push((
                "bin_start_seconds",
                MappedLabel::NanosecondsAsSeconds(format!("block.{n}.latency_histogram.{op}.bin.{b}.start")),
            ));
            Some(RuleMatch {
                name: "libvirt_domain_block_latency_operations_total".into(),
                mtype: MetricType::Counter,
                unit: Some(Count),
                scale: 1.0,
                help: "Operations whose latency fell in the bin starting at bin_start_seconds.".into(),
                labels,
            })
        }
        _ => None,
    }
}

/// Latency histogram keys that only describe bins (their count and bounds).
fn histogram_aux_unit(key: &str) -> Option<Unit> {
    let parts: Vec<&str> = key.split('.').collect();
    match parts.as_slice() {
        ["block", n, "latency_histogram", _, "bin", "count"] if is_index(n) => Some(Count),
        ["block", n, "latency_histogram", _, "bin", b, "start"] if is_index(n) && is_index(b) => Some(Nanoseconds),
        _ => None,
    }
}

/// Where one label of a key's series takes its value from.
#[derive(Debug, Clone, PartialEq)]
pub enum MappedLabel {
    Literal(String),
    /// The value of another key of the same record (`block.3.name`).
    Sibling(String),
    /// The value of another key, in nanoseconds, written in seconds.
    NanosecondsAsSeconds(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct MappedExport {
    pub name: Cow<'static, str>,
    pub mtype: MetricType,
    pub scale: f64,
    pub help: Cow<'static, str>,
    pub labels: Vec<(&'static str, MappedLabel)>,
}

/// How one libvirt key maps. Keys carry no domain names, so a host has only
/// a few hundred distinct ones: each is resolved once and cached.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyMapping {
    /// `None`: the unit follows the value's type (`numeric_unit` for numbers).
    pub unit: Option<Unit>,
    pub numeric_unit: Unit,
    pub export: Option<Arc<MappedExport>>,
    /// Neither exported nor describing anything known.
    pub unmapped: bool,
    pub detail: Detail,
    /// `n` of `block.<n>.*` keys (backing-chain layers are judged by it).
    pub block_index: Option<u32>,
}

impl KeyMapping {
    const NONE: KeyMapping = KeyMapping {
        unit: None,
        numeric_unit: Unknown,
        export: None,
        unmapped: false,
        detail: Detail::Core,
        block_index: None,
    };

    pub fn unit_for(&self, value: &TypedValue) -> Unit {
        self.unit.unwrap_or(match value {
            TypedValue::String(_) => Text,
            TypedValue::Boolean(_) => Boolean,
            _ => self.numeric_unit,
        })
    }
}

fn resolve(kind: RecordKind, key: &str) -> KeyMapping {
    let mut m = resolve_export(kind, key);
    m.detail = detail_of(kind, key);
    if kind == RecordKind::DomainStats {
        let mut parts = key.split('.');
        if parts.next() == Some("block") {
            m.block_index = parts.next().and_then(|n| if is_index(n) { n.parse().ok() } else { None });
        }
    }
    m
}

fn resolve_export(kind: RecordKind, key: &str) -> KeyMapping {
    if let Some(spec) = lookup(kind, key) {
        let export = spec.export.map(|e| {
            Arc::new(MappedExport {
                name: Cow::Borrowed(e.name),
                mtype: e.mtype,
                scale: e.scale,
                help: Cow::Borrowed(e.help),
                labels: spec
                    .labels
                    .iter()
                    .map(|ls| {
                        let v = match ls.source {
                            LabelSource::Index(n) => MappedLabel::Literal(nth_index(key, n).unwrap_or("").to_string()),
                            LabelSource::Literal(v) => MappedLabel::Literal(v.to_string()),
                            LabelSource::Sibling(n, suffix) => sibling(key, n, suffix),
                        };
                        (ls.name, v)
                    })
                    .collect(),
            })
        });
        return KeyMapping {
            unit: Some(spec.unit),
            numeric_unit: spec.unit,
            export,
            unmapped: false,
            ..KeyMapping::NONE
        };
    }
    if kind != RecordKind::DomainStats {
        return KeyMapping { unmapped: true, ..KeyMapping::NONE };
    }
    if let Some(unit) = histogram_aux_unit(key) {
        return KeyMapping { unit: Some(unit), numeric_unit: unit, ..KeyMapping::NONE };
    }
    if let Some(m) = rule_for(key) {
        return KeyMapping {
            unit: m.unit,
            numeric_unit: Count,
            export: Some(Arc::new(MappedExport {
                name: Cow::Owned(m.name),
                mtype: m.mtype,
                scale: m.scale,
                help: Cow::Owned(m.help),
                labels: m.labels,
            })),
            ..KeyMapping::NONE
        };
    }
    KeyMapping { unmapped: true, ..KeyMapping::NONE }
}

/// Distinct keys cached at most; a daemon inventing keys without end (it
/// should not) costs a re-resolve, never unbounded memory.
const MAX_CACHED_KEYS: usize = 50_000;

type Cache = RwLock<FxHashMap<Box<str>, Arc<KeyMapping>>>;

fn cache(kind: RecordKind) -> &'static Cache {
    static CACHES: OnceLock<Vec<Cache>> = OnceLock::new();
    &CACHES.get_or_init(|| RecordKind::ALL.iter().map(|_| Cache::default()).collect())[kind.index()]
}

/// The mapping of a key of a record kind (cached).
pub fn mapping(kind: RecordKind, key: &str) -> Arc<KeyMapping> {
    if let Ok(c) = cache(kind).read() {
        if let Some(m) = c.get(key) {
            return m.clone();
        }
    }
    let m = Arc::new(resolve(kind, key));
    if let Ok(mut c) = cache(kind).write() {
        if c.len() >= MAX_CACHED_KEYS {
            c.clear();
        }
        c.insert(key.into(), m.clone());
    }
    m
}

/// The unit of a key's value as libvirt reports it.
pub fn unit_of(kind: RecordKind, key: &str, value: &TypedValue) -> Unit {
    mapping(kind, key).unit_for(value)
}

/// Labels of one series at most, beyond the record's identity.
pub const MAX_LABELS: usize = 6;

/// No sibling field: the label is empty.
pub const NO_FIELD: u32 = u32::MAX;

/// One exported value of a record: a view, nothing copied. Label values are
/// read from the record when asked for.
#[derive(Debug, Clone)]
pub struct Sample<'r> {
    pub export: Arc<MappedExport>,
    pub record: &'r Record,
    /// Index of the field in the record.
    pub field: u32,
    /// Per label (by position): the sibling field that holds its value.
    pub siblings: [u32; MAX_LABELS],
    /// Bit i set: the i-th label is dropped.
    pub dropped: u32,
    pub value: f64,
}

impl<'r> Sample<'r> {
    pub fn name(&self) -> &str {
        &self.export.name
    }

    pub fn mtype(&self) -> MetricType {
        self.export.mtype
    }

    pub fn help(&self) -> &str {
        &self.export.help
    }

    /// Calls `f` with each label beyond the record's identity (domain,
    /// uuid), in order, without allocating.
    pub fn for_each_label(&self, f: impl FnMut(&'static str, &str)) {
        for_each_label(&self.export, self.record, &self.siblings, self.dropped, f)
    }

    /// The labels as owned pairs (tests, slow paths).
    pub fn labels(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::with_capacity(self.export.labels.len());
        self.for_each_label(|k, v| out.push((k, v.to_string())));
        out
    }
}

/// The labels of a series of `export` in `record`: literal ones from the
/// mapping, the others from the sibling fields (see `Sample`).
pub fn for_each_label(
    export: &MappedExport,
    record: &Record,
    siblings: &[u32; MAX_LABELS],
    dropped: u32,
    mut f: impl FnMut(&'static str, &str),
) {
    let mut ints = itoa::Buffer::new();
    let mut text = String::new();
    for (i, (name, src)) in export.labels.iter().enumerate().take(MAX_LABELS) {
        if dropped & (1 << i) != 0 {
            continue;
        }
        let sibling = record.fields.get(siblings[i] as usize).map(|f| &f.value);
        match (src, sibling) {
            (MappedLabel::Literal(s), _) => f(name, s),
            (_, None) => f(name, ""),
            (MappedLabel::NanosecondsAsSeconds(_), Some(v)) => {
                text.clear();
                let _ = write!(text, "{}", scaled(v.as_f64().unwrap_or(0.0), NS));
                f(name, &text)
            }
            (MappedLabel::Sibling(_), Some(v)) => match v {
                TypedValue::String(s) => f(name, s),
                TypedValue::Int(x) => f(name, ints.format(*x)),
                TypedValue::UInt(x) => f(name, ints.format(*x)),
                TypedValue::LLong(x) => f(name, ints.format(*x)),
                TypedValue::ULLong(x) => f(name, ints.format(*x)),
                TypedValue::Boolean(b) => f(name, if *b { "1" } else { "0" }),
                TypedValue::Double(d) => {
                    text.clear();
                    let _ = write!(text, "{d}");
                    f(name, &text)
                }
            },
        }
    }
}

/// `key` cut after its n-th (1-based) numeric segment.
fn scope_prefix(key: &str, n: usize) -> Option<&str> {
    let mut seen = 0;
    let mut end = 0;
    for seg in key.split('.') {
        end += seg.len();
        if is_index(seg) {
            seen += 1;
            if seen == n {
                return Some(&key[..end]);
            }
        }
        end += 1;
    }
    None
}

fn nth_index(key: &str, n: usize) -> Option<&str> {
    key.split('.').filter(|s| is_index(s)).nth(n)
}

/// Dividing by 1e9 rounds better than multiplying by 1e-9 (1.5 s, not
/// 1.5000000000000002 s).
pub fn scaled(raw: f64, scale: f64) -> f64 {
    if scale < 1.0 {
        raw / (1.0 / scale).round()
    } else {
        raw * scale
    }
}

/// What `samples` could not map, for self-metrics and logs.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SampleStats {
    /// Keys with no table row and no rule (kept in records, not exported).
    pub unmapped: Vec<String>,
    /// Numeric keys whose value was a string.
    pub wrong_type: Vec<String>,
}

/// What a sink leaves out of a record's samples (see `selection`).
pub trait SampleFilter {
    /// Whether a sample of this detail and metric name is exported.
    fn selects(&self, detail: Detail, name: &str) -> bool;
    /// Whether series keep this label.
    fn keeps_label(&self, label: &str) -> bool;
    /// Whether any label is dropped at all (the common case is none).
    fn drops_labels(&self) -> bool;
}

/// Exports everything (tests, references).
pub struct AllSamples;

impl SampleFilter for AllSamples {
    fn selects(&self, _: Detail, _: &str) -> bool {
        true
    }

    fn keeps_label(&self, _: &str) -> bool {
        true
    }

    fn drops_labels(&self) -> bool {
        false
    }
}

/// Block indices that are backing-chain layers of a record: libvirt lists
/// each disk's chain top first, so an index whose disk name appeared at a
/// lower index is a layer below the top.
fn backing_layers(record: &Record) -> Vec<u32> {
    let mut names: Vec<(u32, &str)> = Vec::new();
    for f in &record.fields {
        let Some(rest) = f.key.strip_prefix("block.") else { continue };
        let Some(n) = rest.strip_suffix(".name") else { continue };
        if let (Ok(n), Some(name)) = (n.parse::<u32>(), f.value.as_str()) {
            names.push((n, name));
        }
    }
    names.sort_unstable();
    let mut layers = Vec::new();
    for (i, (n, name)) in names.iter().enumerate() {
        if names[..i].iter().any(|(_, other)| other == name) {
            layers.push(*n);
        }
    }
    layers
}

/// Calls `emit` with each exported value of a record that `filter`
/// selects, labels resolved from sibling keys.
pub fn for_each_sample<'r>(
    record: &'r Record,
    filter: &dyn SampleFilter,
    stats: &mut SampleStats,
    mut emit: impl FnMut(Sample<'r>),
) {
    // Built when the first sample needs a sibling (most records do).
    let mut by_key: Option<FxHashMap<&str, u32>> = None;
    let layers = if record.kind == RecordKind::DomainStats { backing_layers(record) } else { Vec::new() };
    let drops = filter.drops_labels();
    for (index, f) in record.fields.iter().enumerate() {
        let m = mapping(record.kind, &f.key);
        let Some(export) = &m.export else {
            if m.unmapped {
                stats.unmapped.push(f.key.to_string());
            }
            continue;
        };
        if !filter.selects(m.detail, &export.name) {
            continue;
        }
        if m.block_index.is_some_and(|n| layers.contains(&n)) && !filter.selects(Detail::BackingChain, &export.name) {
            continue;
        }
        let Some(raw) = f.value.as_f64() else {
            stats.wrong_type.push(f.key.to_string());
            continue;
        };
        let mut dropped = 0u32;
        let mut siblings = [NO_FIELD; MAX_LABELS];
        for (i, (name, src)) in export.labels.iter().enumerate().take(MAX_LABELS) {
            if drops && !filter.keeps_label(name) {
                dropped |= 1 << i;
                continue;
            }
            let key = match src {
                MappedLabel::Literal(_) => continue,
                MappedLabel::Sibling(k) | MappedLabel::NanosecondsAsSeconds(k) => k,
            };
            let map = by_key
                .get_or_insert_with(|| record.fields.iter().enumerate().map(|(i, f)| (&*f.key, i as u32)).collect());
            siblings[i] = map.get(key.as_str()).copied().unwrap_or(NO_FIELD);
        }
        emit(Sample {
            export: export.clone(),
            record,
            field: index as u32,
            siblings,
            dropped,
            value: scaled(raw, export.scale),
        });
    }
}

/// Collects `for_each_sample` (everything selected) into a vector.
pub fn samples<'r>(record: &'r Record, stats: &mut SampleStats) -> Vec<Sample<'r>> {
    let mut out = Vec::with_capacity(record.fields.len());
    for_each_sample(record, &AllSamples, stats, |s| out.push(s));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{DomainRef, Field, RecordKind, SCHEMA};
    use std::collections::HashSet;
    use std::time::SystemTime;

    fn labels_of(s: &Sample) -> Vec<(&'static str, String)> {
        s.labels()
    }

    fn rec(fields: &[(&str, TypedValue)]) -> Record {
        Record {
            schema: SCHEMA,
            kind: RecordKind::DomainStats,
            time: SystemTime::now(),
            host: "h".into(),
            libvirt_uri: "test:///default".into(),
            pool: None,
            event: None,
            domain: Some(DomainRef { name: "d".into(), uuid: "u".into(), info: None }),
            fields: fields
                .iter()
                .map(|(k, v)| Field {
                    key: (*k).into(),
                    value: v.clone(),
                    unit: unit_of(RecordKind::DomainStats, k, v),
                })
                .collect(),
        }
    }

    #[test]
    fn tables_are_consistent() {
        // name -> (type, help, label names): one metric, one meaning, across all tables.
        let mut names: HashMap<&str, (MetricType, &str, Vec<&str>)> = HashMap::new();
        for kind in RecordKind::ALL {
            let mut patterns = HashSet::new();
            let mut series = HashSet::new();
            for s in table(kind) {
                assert!(patterns.insert(s.pattern), "duplicate pattern {}", s.pattern);
                let stars = s.pattern.split('.').filter(|p| *p == "*").count();
                for ls in s.labels {
                    match ls.source {
                        LabelSource::Index(n) => assert!(n < stars, "{}", s.pattern),
                        LabelSource::Sibling(n, _) => assert!(n >= 1 && n <= stars, "{}", s.pattern),
                        LabelSource::Literal(v) => assert!(!v.is_empty()),
                    }
                }
                let Some(e) = s.export else { continue };
                assert!(e.name.starts_with(prefix(kind)), "{} in the {kind:?} table", e.name);
                assert!(
                    e.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                    "{}",
                    e.name
                );
                match e.mtype {
                    MetricType::Counter => assert!(e.name.ends_with("_total"), "counter {} lacks _total", e.name),
                    MetricType::Gauge => assert!(!e.name.ends_with("_total"), "gauge {} ends in _total", e.name),
                    MetricType::Histogram => panic!("stat keys are never histograms: {}", e.name),
                }
                // Base units only: non-base source units must be scaled.
                match s.unit {
                    Nanoseconds => assert!(e.name.contains("_seconds") && e.scale == NS, "{}", e.name),
                    Milliseconds => assert!(e.name.contains("_seconds") && e.scale == MS, "{}", e.name),
                    Kibibytes => assert!(e.name.contains("_bytes") && e.scale == KIB, "{}", e.name),
                    Percent => assert!(e.name.ends_with("_ratio") && e.scale == PERCENT, "{}", e.name),
                    _ => {}
                }
                assert!(!e.help.is_empty());
                let label_names: Vec<&str> = s.labels.iter().map(|l| l.name).collect();
                let literals: Vec<&str> = s
                    .labels
                    .iter()
                    .filter_map(|l| if let LabelSource::Literal(v) = l.source { Some(v) } else { None })
                    .collect();
                // Rows sharing a metric must agree on it and differ in a literal label.
                assert!(
                    series.insert((e.name, literals, s.pattern.matches('*').count())),
                    "{} mapped twice alike",
                    e.name
                );
                match names.get(e.name) {
                    Some((t, h, l)) => {
                        assert!(*t == e.mtype && *h == e.help && *l == label_names, "{} differs between rows", e.name)
                    }
                    None => {
                        names.insert(e.name, (e.mtype, e.help, label_names));
                    }
                }
            }
        }
    }

    #[test]
    fn block_labels_come_from_siblings() {
        let r = rec(&[
            ("block.count", TypedValue::UInt(2)),
            ("block.0.name", TypedValue::String("vda".into())),
            ("block.0.path", TypedValue::String("/img/top.qcow2".into())),
            ("block.0.backingIndex", TypedValue::UInt(1)),
            ("block.0.rd.bytes", TypedValue::ULLong(4096)),
            ("block.0.rd.times", TypedValue::ULLong(2_500_000_000)),
            ("block.1.name", TypedValue::String("vda".into())),
            ("block.1.backingIndex", TypedValue::UInt(2)),
            ("block.1.capacity", TypedValue::ULLong(1 << 26)),
        ]);
        let mut st = SampleStats::default();
        let s = samples(&r, &mut st);
        assert_eq!(st, SampleStats::default());
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].name(), "libvirt_domain_block_read_bytes_total");
        assert_eq!(
            labels_of(&s[0]),
            vec![("device", "vda".into()), ("path", "/img/top.qcow2".into()), ("backing_index", "1".into())]
        );
        assert_eq!(s[1].value, 2.5);
        assert_eq!(labels_of(&s[2])[1], ("path", "".into()));
        assert_eq!(labels_of(&s[2])[2], ("backing_index", "2".into()));
    }

    #[test]
    fn units_are_converted() {
        let r = rec(&[
            ("cpu.time", TypedValue::ULLong(1_500_000_000)),
            ("balloon.current", TypedValue::ULLong(32768)),
            ("vcpu.1.time", TypedValue::ULLong(1_000_000)),
            ("vcpu.1.halted", TypedValue::Boolean(true)),
            ("dirtyrate.megabytes_per_second", TypedValue::LLong(2)),
        ]);
        let s = samples(&r, &mut SampleStats::default());
        assert_eq!(s[0].value, 1.5);
        let r = rec(&[("cpu.system", TypedValue::ULLong(9_378_848_000))]);
        assert_eq!(samples(&r, &mut SampleStats::default())[0].value, 9.378848);
        assert_eq!(s[1].value, 32768.0 * 1024.0);
        assert_eq!(labels_of(&s[2]), vec![("vcpu", "1".into())]);
        assert_eq!(s[2].value, 0.001);
        assert_eq!(s[3].value, 1.0);
        assert_eq!(s[4].value, 2.0 * 1024.0 * 1024.0);
    }

    #[test]
    fn kvm_stats_follow_rules() {
        let r = rec(&[
            ("vm.remote_tlb_flush.sum", TypedValue::ULLong(3)),
            ("vm.pages_4k.cur", TypedValue::ULLong(10)),
            ("vm.max_mmu_rmap_size.max", TypedValue::ULLong(4)),
            ("vcpu.0.halt_poll_success_ns.sum", TypedValue::ULLong(2_000_000_000)),
            ("vcpu.0.guest_mode.cur", TypedValue::Boolean(false)),
            ("vcpu.0.weird-name.sum", TypedValue::ULLong(1)),
        ]);
        let s = samples(&r, &mut SampleStats::default());
        let names: Vec<_> = s.iter().map(|s| s.name().to_string()).collect();
        assert_eq!(
            names,
            vec![
                "libvirt_domain_vm_remote_tlb_flush_total",
                "libvirt_domain_vm_pages_4k",
                "libvirt_domain_vm_max_mmu_rmap_size",
                "libvirt_domain_vcpu_kvm_halt_poll_success_seconds_total",
                "libvirt_domain_vcpu_kvm_guest_mode",
                "libvirt_domain_vcpu_kvm_weird_name_total",
            ]
        );
        assert_eq!(s[3].value, 2.0);
        assert_eq!(labels_of(&s[3]), vec![("vcpu", "0".into())]);
        assert_eq!(
            unit_of(RecordKind::DomainStats, "vcpu.0.halt_poll_success_ns.sum", &TypedValue::ULLong(1)),
            Nanoseconds
        );
    }

    #[test]
    fn unknown_and_mistyped_keys_are_reported_not_exported() {
        let r = rec(&[
            ("future.thing", TypedValue::ULLong(1)),
            ("cpu.time", TypedValue::String("oops".into())),
            ("net.0.name", TypedValue::String("vnet0".into())),
        ]);
        let mut st = SampleStats::default();
        let s = samples(&r, &mut st);
        assert!(s.is_empty());
        assert_eq!(st.unmapped, vec!["future.thing".to_string()]);
        assert_eq!(st.wrong_type, vec!["cpu.time".to_string()]);
        assert_eq!(unit_of(RecordKind::DomainStats, "future.thing", &TypedValue::ULLong(1)), Unknown);
    }

    #[test]
    fn empty_record_gives_nothing() {
        let r = rec(&[]);
        let mut st = SampleStats::default();
        assert!(samples(&r, &mut st).is_empty());
        assert_eq!(st, SampleStats::default());
    }

    #[test]
    fn latency_histogram_bins() {
        let r = rec(&[
            ("block.0.name", TypedValue::String("vda".into())),
            ("block.0.latency_histogram.read.bin.count", TypedValue::ULLong(2)),
            ("block.0.latency_histogram.read.bin.0.start", TypedValue::ULLong(0)),
            ("block.0.latency_histogram.read.bin.0.value", TypedValue::ULLong(7)),
            ("block.0.latency_histogram.read.bin.1.start", TypedValue::ULLong(1_000_000)),
            ("block.0.latency_histogram.read.bin.1.value", TypedValue::ULLong(2)),
        ]);
        let mut st = SampleStats::default();
        let s = samples(&r, &mut st);
        assert_eq!(st, SampleStats::default());
        assert_eq!(s.len(), 2);
        assert_eq!(labels_of(&s[1]).last().unwrap(), &("bin_start_seconds", "0.001".into()));
        assert_eq!(labels_of(&s[1])[0], ("device", "vda".into()));
        assert_eq!(labels_of(&s[1])[3], ("operation", "read".into()));
    }

    #[test]
    fn cache_monitor_labels_use_two_scopes() {
        let r = rec(&[
            ("cpu.cache.monitor.0.name", TypedValue::String("mon0".into())),
            ("cpu.cache.monitor.0.vcpus", TypedValue::String("0-1".into())),
            ("cpu.cache.monitor.0.bank.1.id", TypedValue::UInt(7)),
            ("cpu.cache.monitor.0.bank.1.bytes", TypedValue::ULLong(1024)),
        ]);
        let s = samples(&r, &mut SampleStats::default());
        assert_eq!(labels_of(&s[0]), vec![("monitor", "mon0".into()), ("vcpus", "0-1".into()), ("bank", "7".into())]);
    }
}
