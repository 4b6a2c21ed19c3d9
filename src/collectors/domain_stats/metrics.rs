//! What the domain stats collector's records mean: the table that maps each
//! `virConnectGetAllDomainStats` key to its unit and metric, the rules for
//! QEMU's open-ended statistics, the switches deep data sits behind, and
//! the info metrics read from each domain's XML.

use crate::record::kind::{
    counter, gauge, label, row, CounterStart, DomainAttr, InfoSpec, InfoValue, InfoWhen, KindSpec, LabelSource,
    LabelSpec, Layers, RuleDoc, StatSpec, Subject, Switch, KIB, MIB, NO_LABELS as NONE, NS, US,
};
use crate::record::mapping::{is_index, sanitize, sibling, MappedLabel, RuleMatch};
use crate::value::{MetricType, Unit};

pub static VCPU_KVM: Switch = Switch {
    key: "vcpu_kvm",
    covers: "per-vCPU hypervisor statistics from QEMU's query-stats (`vcpu.<n>.<stat>.sum|cur|max`: exits, halt polling, page faults, TLB flushes...)",
    adds: "about 45 series per vCPU (KVM, QEMU 7.1+, libvirt 8.9+)",
};
pub static VCPU_STATE: Switch = Switch {
    key: "vcpu_state",
    covers: "per-vCPU state and halted flags (`vcpu.<n>.state`, `vcpu.<n>.halted`)",
    adds: "1-2 series per vCPU",
};
pub static VM_KVM: Switch = Switch {
    key: "vm_kvm",
    covers: "per-domain hypervisor statistics (`vm` group: MMU, TLB, page counts)",
    adds: "about 16 series per domain (KVM, libvirt 8.9+); the `vm` group is not asked for without it",
};
pub static BACKING_CHAIN: Switch = Switch {
    key: "backing_chain",
    covers: "every layer of each disk's backing chain (below the top image)",
    adds: "3 series (allocation, capacity, physical) per backing layer; the chain is not asked for without it",
};
pub static HALTPOLL: Switch =
    Switch { key: "haltpoll", covers: "guest halt-polling time (`cpu.haltpoll.*`)", adds: "2 series per domain" };
pub static PERF: Switch = Switch {
    key: "perf",
    covers: "perf event counters enabled on the domain (`perf` group)",
    adds: "one series per enabled perf event per domain; the `perf` group is not asked for without it",
};
pub static BLOCK_LIMITS: Switch = Switch {
    key: "block_limits",
    covers: "block device I/O limits (`block.<n>.limits.*`)",
    adds: "up to 12 series per disk (libvirt 11.4+)",
};
pub static BLOCK_LATENCY: Switch = Switch {
    key: "block_latency",
    covers: "block latency windows and histograms (`block.<n>.timed_group.*`, `block.<n>.latency_histogram.*`)",
    adds: "15 series per disk and window, one per histogram bin (libvirt 12+, when configured on the disk)",
};
pub static RESCTRL: Switch = Switch {
    key: "resctrl",
    covers: "cache occupancy, memory bandwidth and energy monitors (`cpu.cache.monitor.*`, `memory` group, `cpu.energy.monitor.*`)",
    adds: "per monitor and cache bank / NUMA node (hosts with Intel RDT and monitors defined); the `memory` group is not asked for without it",
};
pub static IOTHREAD: Switch = Switch {
    key: "iothread",
    covers: "IOThread polling parameters (`iothread` group)",
    adds: "4 series per IOThread; the `iothread` group is not asked for without it",
};
pub static DIRTYRATE: Switch = Switch {
    key: "dirtyrate",
    covers: "memory dirty rate calculations (`dirtyrate` group)",
    adds:
        "4 series per domain, plus one per vCPU in dirty-ring mode; the `dirtyrate` group is not asked for without it",
};

pub(crate) static CPU_PLACEMENT: Switch = Switch {
    key: "cpu_placement",
    covers: "CPU shares, period and quota, and vCPU, emulator and IOThread pinning and NUMA memory placement, from the domain XML (`<cputune>`, `<numatune>`)",
    adds: "up to 7 series per domain, plus one per pinned vCPU and IOThread",
};
pub(crate) static VCPU_MAPPING: Switch = Switch {
    key: "vcpu_mapping",
    covers: "the host CPU each vCPU last ran on (`virDomainGetVcpus`)",
    adds: "1 series per vCPU; also one libvirt call per running domain per cycle",
};

const VCPU: &[LabelSpec] = &[label("vcpu", LabelSource::Index(0))];
const fn iotune(direction: &'static str, limit: &'static str) -> [LabelSpec; 3] {
    [
        label("device", LabelSource::Sibling(1, "name")),
        label("direction", LabelSource::Literal(direction)),
        label("limit", LabelSource::Literal(limit)),
    ]
}
const TOTAL_BASE: &[LabelSpec] = &iotune("total", "base");
const READ_BASE: &[LabelSpec] = &iotune("read", "base");
const WRITE_BASE: &[LabelSpec] = &iotune("write", "base");
const TOTAL_BURST: &[LabelSpec] = &iotune("total", "burst");
const READ_BURST: &[LabelSpec] = &iotune("read", "burst");
const WRITE_BURST: &[LabelSpec] = &iotune("write", "burst");
const IOTUNE_BYTES: &str = "I/O limit of the disk in bytes per second (the domain's <iotune>), by direction (total, read, write) and limit (base; burst: the rate allowed for short bursts). Set limits only.";
const IOTUNE_OPS: &str = "I/O limit of the disk in operations per second (the domain's <iotune>), by direction (total, read, write) and limit (base; burst). Set limits only.";
const NET: &[LabelSpec] = &[label("interface", LabelSource::Sibling(1, "name"))];
const BLOCK: &[LabelSpec] = &[
    label("device", LabelSource::Sibling(1, "name")),
    label("path", LabelSource::Sibling(1, "path")),
    label("backing_index", LabelSource::Sibling(1, "backingIndex")),
];
const BLOCK_TIMED: &[LabelSpec] = &[
    label("device", LabelSource::Sibling(1, "name")),
    label("path", LabelSource::Sibling(1, "path")),
    label("backing_index", LabelSource::Sibling(1, "backingIndex")),
    label("interval_seconds", LabelSource::Sibling(2, "interval")),
];
const ENERGY_PKG: &[LabelSpec] = &[
    label("monitor", LabelSource::Sibling(1, "name")),
    label("vcpus", LabelSource::Sibling(1, "vcpus")),
    label("package", LabelSource::Sibling(2, "id")),
];
const IOTHREAD_ID: &[LabelSpec] = &[label("iothread", LabelSource::Index(0))];
const CACHE_MON: &[LabelSpec] =
    &[label("monitor", LabelSource::Sibling(1, "name")), label("vcpus", LabelSource::Sibling(1, "vcpus"))];
const CACHE_BANK: &[LabelSpec] = &[
    label("monitor", LabelSource::Sibling(1, "name")),
    label("vcpus", LabelSource::Sibling(1, "vcpus")),
    label("bank", LabelSource::Sibling(2, "id")),
];
const MEMBW_NODE: &[LabelSpec] = &[
    label("monitor", LabelSource::Sibling(1, "name")),
    label("vcpus", LabelSource::Sibling(1, "vcpus")),
    label("node", LabelSource::Sibling(2, "id")),
];

use Unit::*;

#[rustfmt::skip]
static TABLE: &[StatSpec] = &[
    // state
    row("state.state", "state", Enum, NONE, gauge("libvirt_domain_state", 1.0, "Domain state: 0 nostate, 1 running, 2 blocked, 3 paused, 4 shutdown, 5 shutoff, 6 crashed, 7 pmsuspended.")),
    row("state.reason", "state", Enum, NONE, gauge("libvirt_domain_state_reason", 1.0, "Reason code for the current state (virDomain<State>Reason, e.g. paused 5 = I/O error).")),
    // cpu-total
    row("cpu.time", "cpu-total", Nanoseconds, NONE, counter("libvirt_domain_cpu_time_seconds_total", NS, "CPU time used by the domain (all threads).")),
    row("cpu.user", "cpu-total", Nanoseconds, NONE, counter("libvirt_domain_cpu_user_seconds_total", NS, "User-mode CPU time used by the domain.")),
    row("cpu.system", "cpu-total", Nanoseconds, NONE, counter("libvirt_domain_cpu_system_seconds_total", NS, "System-mode CPU time used by the domain.")),
    row("cpu.haltpoll.success.time", "cpu-total", Nanoseconds, NONE, counter("libvirt_domain_cpu_haltpoll_success_seconds_total", NS, "Time spent halt-polling that ended with a wakeup.")).behind(&HALTPOLL),
    row("cpu.haltpoll.fail.time", "cpu-total", Nanoseconds, NONE, counter("libvirt_domain_cpu_haltpoll_fail_seconds_total", NS, "Time spent halt-polling that ended without a wakeup.")).behind(&HALTPOLL),
    row("cpu.cache.monitor.count", "cpu-total", Count, NONE, gauge("libvirt_domain_cpu_cache_monitors", 1.0, "Number of cache (CMT) monitors defined for the domain.")).behind(&RESCTRL),
    row("cpu.cache.monitor.*.name", "cpu-total", Text, NONE, None).behind(&RESCTRL),
    row("cpu.cache.monitor.*.vcpus", "cpu-total", Text, NONE, None).behind(&RESCTRL),
    row("cpu.cache.monitor.*.bank.count", "cpu-total", Count, CACHE_MON, gauge("libvirt_domain_cpu_cache_monitor_banks", 1.0, "Number of cache banks covered by the monitor.")).behind(&RESCTRL),
    row("cpu.cache.monitor.*.bank.*.id", "cpu-total", Count, NONE, None).behind(&RESCTRL),
    row("cpu.cache.monitor.*.bank.*.bytes", "cpu-total", Bytes, CACHE_BANK, gauge("libvirt_domain_cpu_cache_occupancy_bytes", 1.0, "Last-level cache occupied by the domain on the bank.")).behind(&RESCTRL),
    // cpu-total, libvirt 12.4+: resctrl energy monitors (<cputune><energytune>;
    // Linux 7.0's PERF_PKG_MON). The last segment of a package key is a
    // resctrl feature name; libvirt 12.9 passes core_energy and activity.
    row("cpu.energy.monitor.count", "cpu-total", Count, NONE, gauge("libvirt_domain_cpu_energy_monitors", 1.0, "Number of energy (resctrl PERF_PKG) monitors defined for the domain.")).behind(&RESCTRL),
    row("cpu.energy.monitor.*.name", "cpu-total", Text, NONE, None).behind(&RESCTRL),
    row("cpu.energy.monitor.*.vcpus", "cpu-total", Text, NONE, None).behind(&RESCTRL),
    row("cpu.energy.monitor.*.pkg.count", "cpu-total", Count, CACHE_MON, gauge("libvirt_domain_cpu_energy_monitor_packages", 1.0, "Number of processor packages the energy monitor reports on.")).behind(&RESCTRL),
    row("cpu.energy.monitor.*.pkg.*.id", "cpu-total", Count, NONE, None).behind(&RESCTRL),
    row("cpu.energy.monitor.*.pkg.*.core_energy", "cpu-total", Joules, ENERGY_PKG, counter("libvirt_domain_cpu_energy_core_joules_total", 1.0, "Energy used by the monitored vCPUs on the package's cores (the hardware's estimate from the instructions executed).")).behind(&RESCTRL),
    row("cpu.energy.monitor.*.pkg.*.activity", "cpu-total", Farads, ENERGY_PKG, counter("libvirt_domain_cpu_energy_activity_farads_total", 1.0, "Dynamic capacitance accumulated by the monitored vCPUs on the package (energy use independent of frequency and voltage).")).behind(&RESCTRL),
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
    row("vcpu.*.state", "vcpu", Enum, VCPU, gauge("libvirt_domain_vcpu_state", 1.0, "vCPU state: 0 offline, 1 running, 2 blocked.")).behind(&VCPU_STATE),
    row("vcpu.*.time", "vcpu", Nanoseconds, VCPU, counter("libvirt_domain_vcpu_time_seconds_total", NS, "CPU time used by the vCPU thread.")),
    row("vcpu.*.wait", "vcpu", Nanoseconds, VCPU, counter("libvirt_domain_vcpu_wait_seconds_total", NS, "Time the vCPU wanted to run but the host ran something else.")),
    row("vcpu.*.halted", "vcpu", Boolean, VCPU, gauge("libvirt_domain_vcpu_halted", 1.0, "1 if the vCPU is halted.")).behind(&VCPU_STATE),
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
    row("block.*.limits.request_alignment", "block", Bytes, BLOCK, gauge("libvirt_domain_block_limit_request_alignment_bytes", 1.0, "Required alignment of I/O offset and length.")).behind(&BLOCK_LIMITS),
    row("block.*.limits.discard_max", "block", Bytes, BLOCK, gauge("libvirt_domain_block_limit_discard_max_bytes", 1.0, "Largest discard request.")).behind(&BLOCK_LIMITS),
    row("block.*.limits.discard_alignment", "block", Bytes, BLOCK, gauge("libvirt_domain_block_limit_discard_alignment_bytes", 1.0, "Optimal discard alignment.")).behind(&BLOCK_LIMITS),
    row("block.*.limits.write_zeroes_max", "block", Bytes, BLOCK, gauge("libvirt_domain_block_limit_write_zeroes_max_bytes", 1.0, "Largest write-zeroes request.")).behind(&BLOCK_LIMITS),
    row("block.*.limits.write_zeroes_alignment", "block", Bytes, BLOCK, gauge("libvirt_domain_block_limit_write_zeroes_alignment_bytes", 1.0, "Optimal write-zeroes alignment.")).behind(&BLOCK_LIMITS),
    row("block.*.limits.transfer_optimal", "block", Bytes, BLOCK, gauge("libvirt_domain_block_limit_transfer_optimal_bytes", 1.0, "Optimal transfer length.")).behind(&BLOCK_LIMITS),
    row("block.*.limits.transfer_max", "block", Bytes, BLOCK, gauge("libvirt_domain_block_limit_transfer_max_bytes", 1.0, "Largest transfer length.")).behind(&BLOCK_LIMITS),
    row("block.*.limits.transfer_hw_max", "block", Bytes, BLOCK, gauge("libvirt_domain_block_limit_transfer_hw_max_bytes", 1.0, "Largest hardware transfer length.")).behind(&BLOCK_LIMITS),
    row("block.*.limits.iov_max", "block", Count, BLOCK, gauge("libvirt_domain_block_limit_iov_max", 1.0, "Most elements in one I/O vector.")).behind(&BLOCK_LIMITS),
    row("block.*.limits.iov_hw_max", "block", Count, BLOCK, gauge("libvirt_domain_block_limit_iov_hw_max", 1.0, "Most elements in one hardware I/O vector.")).behind(&BLOCK_LIMITS),
    row("block.*.limits.memory_alignment_minimal", "block", Bytes, BLOCK, gauge("libvirt_domain_block_limit_memory_alignment_minimal_bytes", 1.0, "Minimal buffer memory alignment.")).behind(&BLOCK_LIMITS),
    row("block.*.limits.memory_alignment_optimal", "block", Bytes, BLOCK, gauge("libvirt_domain_block_limit_memory_alignment_optimal_bytes", 1.0, "Optimal buffer memory alignment.")).behind(&BLOCK_LIMITS),
    row("block.*.timed_group.count", "block", Count, NONE, None).behind(&BLOCK_LATENCY),
    row("block.*.timed_group.*.interval", "block", Seconds, NONE, None).behind(&BLOCK_LATENCY),
    row("block.*.timed_group.*.rd_latency_min", "block", Nanoseconds, BLOCK_TIMED, gauge("libvirt_domain_block_read_latency_min_seconds", NS, "Lowest read latency in the interval window.")).behind(&BLOCK_LATENCY),
    row("block.*.timed_group.*.rd_latency_max", "block", Nanoseconds, BLOCK_TIMED, gauge("libvirt_domain_block_read_latency_max_seconds", NS, "Highest read latency in the interval window.")).behind(&BLOCK_LATENCY),
    row("block.*.timed_group.*.rd_latency_avg", "block", Nanoseconds, BLOCK_TIMED, gauge("libvirt_domain_block_read_latency_avg_seconds", NS, "Average read latency in the interval window.")).behind(&BLOCK_LATENCY),
    row("block.*.timed_group.*.wr_latency_min", "block", Nanoseconds, BLOCK_TIMED, gauge("libvirt_domain_block_write_latency_min_seconds", NS, "Lowest write latency in the interval window.")).behind(&BLOCK_LATENCY),
    row("block.*.timed_group.*.wr_latency_max", "block", Nanoseconds, BLOCK_TIMED, gauge("libvirt_domain_block_write_latency_max_seconds", NS, "Highest write latency in the interval window.")).behind(&BLOCK_LATENCY),
    row("block.*.timed_group.*.wr_latency_avg", "block", Nanoseconds, BLOCK_TIMED, gauge("libvirt_domain_block_write_latency_avg_seconds", NS, "Average write latency in the interval window.")).behind(&BLOCK_LATENCY),
    row("block.*.timed_group.*.zone_append_latency_min", "block", Nanoseconds, BLOCK_TIMED, gauge("libvirt_domain_block_zone_append_latency_min_seconds", NS, "Lowest zone-append latency in the interval window.")).behind(&BLOCK_LATENCY),
    row("block.*.timed_group.*.zone_append_latency_max", "block", Nanoseconds, BLOCK_TIMED, gauge("libvirt_domain_block_zone_append_latency_max_seconds", NS, "Highest zone-append latency in the interval window.")).behind(&BLOCK_LATENCY),
    row("block.*.timed_group.*.zone_append_latency_avg", "block", Nanoseconds, BLOCK_TIMED, gauge("libvirt_domain_block_zone_append_latency_avg_seconds", NS, "Average zone-append latency in the interval window.")).behind(&BLOCK_LATENCY),
    row("block.*.timed_group.*.flush_latency_min", "block", Nanoseconds, BLOCK_TIMED, gauge("libvirt_domain_block_flush_latency_min_seconds", NS, "Lowest flush latency in the interval window.")).behind(&BLOCK_LATENCY),
    row("block.*.timed_group.*.flush_latency_max", "block", Nanoseconds, BLOCK_TIMED, gauge("libvirt_domain_block_flush_latency_max_seconds", NS, "Highest flush latency in the interval window.")).behind(&BLOCK_LATENCY),
    row("block.*.timed_group.*.flush_latency_avg", "block", Nanoseconds, BLOCK_TIMED, gauge("libvirt_domain_block_flush_latency_avg_seconds", NS, "Average flush latency in the interval window.")).behind(&BLOCK_LATENCY),
    row("block.*.timed_group.*.rd_queue_depth_avg", "block", Count, BLOCK_TIMED, gauge("libvirt_domain_block_read_queue_depth_avg", 1.0, "Average read queue depth in the interval window.")).behind(&BLOCK_LATENCY),
    row("block.*.timed_group.*.wr_queue_depth_avg", "block", Count, BLOCK_TIMED, gauge("libvirt_domain_block_write_queue_depth_avg", 1.0, "Average write queue depth in the interval window.")).behind(&BLOCK_LATENCY),
    row("block.*.timed_group.*.zone_append_queue_depth_avg", "block", Count, BLOCK_TIMED, gauge("libvirt_domain_block_zone_append_queue_depth_avg", 1.0, "Average zone-append queue depth in the interval window.")).behind(&BLOCK_LATENCY),
    // From the domain XML (refreshed after TUNABLE events): per-disk I/O
    // limits, CPU tuning and placement. Keys made by the collector.
    row("iotune.*.name", "xml", Text, NONE, None),
    row("iotune.*.total_bytes_sec", "xml", BytesPerSecond, TOTAL_BASE, gauge("libvirt_domain_block_iotune_bytes_per_second", 1.0, IOTUNE_BYTES)),
    row("iotune.*.read_bytes_sec", "xml", BytesPerSecond, READ_BASE, gauge("libvirt_domain_block_iotune_bytes_per_second", 1.0, IOTUNE_BYTES)),
    row("iotune.*.write_bytes_sec", "xml", BytesPerSecond, WRITE_BASE, gauge("libvirt_domain_block_iotune_bytes_per_second", 1.0, IOTUNE_BYTES)),
    row("iotune.*.total_bytes_sec_max", "xml", BytesPerSecond, TOTAL_BURST, gauge("libvirt_domain_block_iotune_bytes_per_second", 1.0, IOTUNE_BYTES)),
    row("iotune.*.read_bytes_sec_max", "xml", BytesPerSecond, READ_BURST, gauge("libvirt_domain_block_iotune_bytes_per_second", 1.0, IOTUNE_BYTES)),
    row("iotune.*.write_bytes_sec_max", "xml", BytesPerSecond, WRITE_BURST, gauge("libvirt_domain_block_iotune_bytes_per_second", 1.0, IOTUNE_BYTES)),
    row("iotune.*.total_iops_sec", "xml", OperationsPerSecond, TOTAL_BASE, gauge("libvirt_domain_block_iotune_operations_per_second", 1.0, IOTUNE_OPS)),
    row("iotune.*.read_iops_sec", "xml", OperationsPerSecond, READ_BASE, gauge("libvirt_domain_block_iotune_operations_per_second", 1.0, IOTUNE_OPS)),
    row("iotune.*.write_iops_sec", "xml", OperationsPerSecond, WRITE_BASE, gauge("libvirt_domain_block_iotune_operations_per_second", 1.0, IOTUNE_OPS)),
    row("iotune.*.total_iops_sec_max", "xml", OperationsPerSecond, TOTAL_BURST, gauge("libvirt_domain_block_iotune_operations_per_second", 1.0, IOTUNE_OPS)),
    row("iotune.*.read_iops_sec_max", "xml", OperationsPerSecond, READ_BURST, gauge("libvirt_domain_block_iotune_operations_per_second", 1.0, IOTUNE_OPS)),
    row("iotune.*.write_iops_sec_max", "xml", OperationsPerSecond, WRITE_BURST, gauge("libvirt_domain_block_iotune_operations_per_second", 1.0, IOTUNE_OPS)),
    row("cputune.shares", "xml", Count, NONE, gauge("libvirt_domain_cpu_shares", 1.0, "CPU shares (weight) of the domain against the host's other tasks (<cputune><shares>).")).behind(&CPU_PLACEMENT),
    row("cputune.period", "xml", Microseconds, NONE, gauge("libvirt_domain_cpu_period_seconds", US, "CFS period of each vCPU (<cputune><period>).")).behind(&CPU_PLACEMENT),
    row("cputune.quota", "xml", Microseconds, NONE, gauge("libvirt_domain_cpu_quota_seconds", US, "CPU time each vCPU may use per period (<cputune><quota>; negative: no limit).")).behind(&CPU_PLACEMENT),
    row("cputune.global_period", "xml", Microseconds, NONE, gauge("libvirt_domain_cpu_global_period_seconds", US, "CFS period of the whole domain (<cputune><global_period>).")).behind(&CPU_PLACEMENT),
    row("cputune.global_quota", "xml", Microseconds, NONE, gauge("libvirt_domain_cpu_global_quota_seconds", US, "CPU time the whole domain may use per global period (negative: no limit).")).behind(&CPU_PLACEMENT),
    row("cputune.emulator_period", "xml", Microseconds, NONE, gauge("libvirt_domain_cpu_emulator_period_seconds", US, "CFS period of the emulator threads (<cputune><emulator_period>).")).behind(&CPU_PLACEMENT),
    row("cputune.emulator_quota", "xml", Microseconds, NONE, gauge("libvirt_domain_cpu_emulator_quota_seconds", US, "CPU time the emulator threads may use per period (negative: no limit).")).behind(&CPU_PLACEMENT),
    row("cputune.vcpupin.count", "xml", Count, NONE, None),
    row("cputune.vcpupin.*.vcpu", "xml", Count, NONE, None),
    row("cputune.vcpupin.*.cpuset", "xml", Text, NONE, None),
    row("cputune.emulatorpin", "xml", Text, NONE, None),
    row("cputune.iothreadpin.count", "xml", Count, NONE, None),
    row("cputune.iothreadpin.*.iothread", "xml", Count, NONE, None),
    row("cputune.iothreadpin.*.cpuset", "xml", Text, NONE, None),
    row("numatune.mode", "xml", Text, NONE, None),
    row("numatune.nodeset", "xml", Text, NONE, None),
    // virDomainGetVcpus, with the vcpu_mapping switch.
    row("vcpu.*.cpu", "vcpu_mapping", Count, VCPU, gauge("libvirt_domain_vcpu_cpu", 1.0, "The host CPU the vCPU last ran on (virDomainGetVcpus; -1: unknown).")).behind(&VCPU_MAPPING),
    // perf (only events enabled on the domain appear)
    row("perf.cmt", "perf", Bytes, NONE, gauge("libvirt_domain_perf_cmt_bytes", 1.0, "L3 cache occupancy (Intel CMT).")).behind(&PERF),
    row("perf.mbmt", "perf", BytesPerSecond, NONE, gauge("libvirt_domain_perf_mbmt_bytes_per_second", 1.0, "Total memory bandwidth (Intel MBM).")).behind(&PERF),
    row("perf.mbml", "perf", BytesPerSecond, NONE, gauge("libvirt_domain_perf_mbml_bytes_per_second", 1.0, "Local memory bandwidth (Intel MBM).")).behind(&PERF),
    row("perf.cpu_cycles", "perf", Count, NONE, counter("libvirt_domain_perf_cpu_cycles_total", 1.0, "CPU cycles.")).behind(&PERF),
    row("perf.instructions", "perf", Count, NONE, counter("libvirt_domain_perf_instructions_total", 1.0, "Instructions retired.")).behind(&PERF),
    row("perf.cache_references", "perf", Count, NONE, counter("libvirt_domain_perf_cache_references_total", 1.0, "Cache references.")).behind(&PERF),
    row("perf.cache_misses", "perf", Count, NONE, counter("libvirt_domain_perf_cache_misses_total", 1.0, "Cache misses.")).behind(&PERF),
    row("perf.branch_instructions", "perf", Count, NONE, counter("libvirt_domain_perf_branch_instructions_total", 1.0, "Branch instructions retired.")).behind(&PERF),
    row("perf.branch_misses", "perf", Count, NONE, counter("libvirt_domain_perf_branch_misses_total", 1.0, "Mispredicted branches.")).behind(&PERF),
    row("perf.bus_cycles", "perf", Count, NONE, counter("libvirt_domain_perf_bus_cycles_total", 1.0, "Bus cycles.")).behind(&PERF),
    row("perf.stalled_cycles_frontend", "perf", Count, NONE, counter("libvirt_domain_perf_stalled_cycles_frontend_total", 1.0, "Cycles stalled in the front end.")).behind(&PERF),
    row("perf.stalled_cycles_backend", "perf", Count, NONE, counter("libvirt_domain_perf_stalled_cycles_backend_total", 1.0, "Cycles stalled in the back end.")).behind(&PERF),
    row("perf.ref_cpu_cycles", "perf", Count, NONE, counter("libvirt_domain_perf_ref_cpu_cycles_total", 1.0, "Reference CPU cycles (not scaled by frequency).")).behind(&PERF),
    row("perf.cpu_clock", "perf", Nanoseconds, NONE, counter("libvirt_domain_perf_cpu_clock_seconds_total", NS, "perf cpu-clock software event.")).behind(&PERF),
    row("perf.task_clock", "perf", Nanoseconds, NONE, counter("libvirt_domain_perf_task_clock_seconds_total", NS, "perf task-clock software event.")).behind(&PERF),
    row("perf.page_faults", "perf", Count, NONE, counter("libvirt_domain_perf_page_faults_total", 1.0, "Page faults.")).behind(&PERF),
    row("perf.context_switches", "perf", Count, NONE, counter("libvirt_domain_perf_context_switches_total", 1.0, "Context switches.")).behind(&PERF),
    row("perf.cpu_migrations", "perf", Count, NONE, counter("libvirt_domain_perf_cpu_migrations_total", 1.0, "Migrations between host CPUs.")).behind(&PERF),
    row("perf.page_faults_min", "perf", Count, NONE, counter("libvirt_domain_perf_minor_page_faults_total", 1.0, "Minor page faults.")).behind(&PERF),
    row("perf.page_faults_maj", "perf", Count, NONE, counter("libvirt_domain_perf_major_page_faults_total", 1.0, "Major page faults.")).behind(&PERF),
    row("perf.alignment_faults", "perf", Count, NONE, counter("libvirt_domain_perf_alignment_faults_total", 1.0, "Alignment faults.")).behind(&PERF),
    row("perf.emulation_faults", "perf", Count, NONE, counter("libvirt_domain_perf_emulation_faults_total", 1.0, "Emulation faults.")).behind(&PERF),
    // iothread
    row("iothread.count", "iothread", Count, NONE, gauge("libvirt_domain_iothreads", 1.0, "Number of IOThreads of the domain.")).behind(&IOTHREAD),
    row("iothread.*.poll-max-ns", "iothread", Nanoseconds, IOTHREAD_ID, gauge("libvirt_domain_iothread_poll_max_seconds", NS, "Longest polling time of the IOThread (0: polling disabled).")).behind(&IOTHREAD),
    row("iothread.*.poll-grow", "iothread", Ratio, IOTHREAD_ID, gauge("libvirt_domain_iothread_poll_grow_factor", 1.0, "Polling time grow factor (0: hypervisor default).")).behind(&IOTHREAD),
    row("iothread.*.poll-shrink", "iothread", Ratio, IOTHREAD_ID, gauge("libvirt_domain_iothread_poll_shrink_divisor", 1.0, "Polling time shrink divisor (0: hypervisor default).")).behind(&IOTHREAD),
    row("iothread.*.poll-weight", "iothread", Ratio, IOTHREAD_ID, gauge("libvirt_domain_iothread_poll_weight", 1.0, "Weight shift of the IOThread's adaptive polling: larger values let the last interval count less (0: hypervisor default; libvirt 12.7+).")).behind(&IOTHREAD),
    // memory (resctrl memory bandwidth monitors)
    row("memory.bandwidth.monitor.count", "memory", Count, NONE, gauge("libvirt_domain_memory_bandwidth_monitors", 1.0, "Number of memory bandwidth monitors of the domain.")).behind(&RESCTRL),
    row("memory.bandwidth.monitor.*.name", "memory", Text, NONE, None).behind(&RESCTRL),
    row("memory.bandwidth.monitor.*.vcpus", "memory", Text, NONE, None).behind(&RESCTRL),
    row("memory.bandwidth.monitor.*.node.count", "memory", Count, NONE, None).behind(&RESCTRL),
    row("memory.bandwidth.monitor.*.node.*.id", "memory", Count, NONE, None).behind(&RESCTRL),
    row("memory.bandwidth.monitor.*.node.*.bytes.local", "memory", Bytes, MEMBW_NODE, counter("libvirt_domain_memory_bandwidth_local_bytes_total", 1.0, "Bytes moved through the memory controller local to the vCPUs.")).behind(&RESCTRL),
    row("memory.bandwidth.monitor.*.node.*.bytes.total", "memory", Bytes, MEMBW_NODE, counter("libvirt_domain_memory_bandwidth_bytes_total", 1.0, "Bytes moved through all memory controllers.")).behind(&RESCTRL),
    // dirtyrate
    row("dirtyrate.calc_status", "dirtyrate", Enum, NONE, gauge("libvirt_domain_dirtyrate_calc_status", 1.0, "Dirty rate calculation status: 0 unstarted, 1 measuring, 2 measured.")).behind(&DIRTYRATE),
    row("dirtyrate.calc_start_time", "dirtyrate", Seconds, NONE, gauge("libvirt_domain_dirtyrate_calc_start_time_seconds", 1.0, "Start of the last dirty rate calculation (host monotonic clock).")).behind(&DIRTYRATE),
    row("dirtyrate.calc_period", "dirtyrate", Seconds, NONE, gauge("libvirt_domain_dirtyrate_calc_period_seconds", 1.0, "Length of the last dirty rate calculation.")).behind(&DIRTYRATE),
    row("dirtyrate.megabytes_per_second", "dirtyrate", MebibytesPerSecond, NONE, gauge("libvirt_domain_dirtyrate_bytes_per_second", MIB, "Memory dirty rate measured by the last calculation.")).behind(&DIRTYRATE),
    row("dirtyrate.calc_mode", "dirtyrate", Text, NONE, None).behind(&DIRTYRATE),
    row("dirtyrate.vcpu.*.megabytes_per_second", "dirtyrate", MebibytesPerSecond, VCPU, gauge("libvirt_domain_dirtyrate_vcpu_bytes_per_second", MIB, "Per-vCPU memory dirty rate (dirty-ring mode).")).behind(&DIRTYRATE),
];

/// Hypervisor-defined stats (`vm.*`, `vcpu.<n>.<stat>.<type>`) and latency
/// histogram bins: open-ended names, mapped by rule.
static RULES: &[RuleDoc] = &[
    RuleDoc {
        key: "vm.<stat>.sum",
        metric: "libvirt_domain_vm_<stat>_total",
        notes: "counter; `<stat>` ending in `_ns` becomes `_seconds_total` (scaled)",
        switch: Some(&VM_KVM),
        group: "vm",
        metric_prefix: "libvirt_domain_vm_",
    },
    RuleDoc {
        key: "vm.<stat>.cur / .max",
        metric: "libvirt_domain_vm_<stat>",
        notes: "gauge (instant value / peak); booleans as 0/1",
        switch: Some(&VM_KVM),
        group: "vm",
        metric_prefix: "libvirt_domain_vm_",
    },
    RuleDoc {
        key: "vcpu.<n>.<stat>.sum",
        metric: "libvirt_domain_vcpu_kvm_<stat>_total{vcpu}",
        notes: "counter; `_ns` stats become `_seconds_total`",
        switch: Some(&VCPU_KVM),
        group: "vcpu",
        metric_prefix: "libvirt_domain_vcpu_kvm_",
    },
    RuleDoc {
        key: "vcpu.<n>.<stat>.cur / .max",
        metric: "libvirt_domain_vcpu_kvm_<stat>{vcpu}",
        notes: "gauge; booleans as 0/1",
        switch: Some(&VCPU_KVM),
        group: "vcpu",
        metric_prefix: "libvirt_domain_vcpu_kvm_",
    },
    RuleDoc {
        key: "block.<n>.latency_histogram.<op>.bin.<b>.value",
        metric: "libvirt_domain_block_latency_operations_total{operation,bin_start_seconds}",
        notes: "counter per latency bin",
        switch: Some(&BLOCK_LATENCY),
        group: "block",
        metric_prefix: "libvirt_domain_block_latency_",
    },
];

fn kvm_rule(prefix: &str, stat: &str, kind: &str, switch: &'static Switch) -> Option<RuleMatch> {
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
        switch: Some(switch),
    })
}

/// Applies the rules to a key not in the table.
fn rule_for(key: &str) -> Option<RuleMatch> {
    let parts: Vec<&str> = key.split('.').collect();
    match parts.as_slice() {
        ["vm", stat, kind] => kvm_rule("libvirt_domain_vm_", stat, kind, &VM_KVM),
        ["vcpu", n, stat, kind] if is_index(n) => {
            kvm_rule("libvirt_domain_vcpu_kvm_", stat, kind, &VCPU_KVM).map(|mut m| {
                m.labels.push(("vcpu", MappedLabel::Literal((*n).to_string())));
                m
            })
        }
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
                switch: Some(&BLOCK_LATENCY),
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

const DOMAIN_INFO: &[(&str, InfoValue)] = &[
    ("virt_type", InfoValue::Domain(DomainAttr::VirtType)),
    ("os_type", InfoValue::Domain(DomainAttr::OsType)),
    ("arch", InfoValue::Domain(DomainAttr::Arch)),
    ("machine", InfoValue::Domain(DomainAttr::Machine)),
    ("vcpus", InfoValue::Domain(DomainAttr::Vcpus)),
    ("max_memory_bytes", InfoValue::Domain(DomainAttr::MaxMemoryBytes)),
    ("persistent", InfoValue::Domain(DomainAttr::Persistent)),
    ("autostart", InfoValue::Domain(DomainAttr::Autostart)),
];

const OPENSTACK_INFO: &[(&str, InfoValue)] = &[
    ("instance_name", InfoValue::Domain(DomainAttr::InstanceName)),
    ("flavor", InfoValue::Domain(DomainAttr::Flavor)),
    ("project_name", InfoValue::Domain(DomainAttr::ProjectName)),
    ("project_uuid", InfoValue::Domain(DomainAttr::ProjectUuid)),
    ("user_name", InfoValue::Domain(DomainAttr::UserName)),
    ("user_uuid", InfoValue::Domain(DomainAttr::UserUuid)),
];

/// One domain's statistics from `virConnectGetAllDomainStats`.
pub static DOMAIN_STATS: KindSpec = KindSpec {
    name: "domain_stats",
    title: "Domain statistics (`virConnectGetAllDomainStats`)",
    subject: Subject::Domain,
    prefix: "libvirt_domain_",
    table: TABLE,
    rule: Some(rule_for),
    rule_aux: Some(histogram_aux_unit),
    rules: RULES,
    layers: Some(Layers { scope: "block", name_key: "name", switch: &BACKING_CHAIN }),
    info: &[
        InfoSpec {
            name: "libvirt_domain_info",
            help: "Descriptive data about the domain (value is always 1); join on domain/uuid.",
            labels: DOMAIN_INFO,
            ..InfoSpec::EMPTY
        },
        InfoSpec {
            name: "libvirt_domain_vcpu_pinning_info",
            help: "The host CPUs a vCPU may run on (<cputune><vcpupin>; value is always 1).",
            labels: &[("vcpu", InfoValue::Field("vcpu")), ("cpuset", InfoValue::Field("cpuset"))],
            repeat: Some(("cputune.vcpupin.count", "cputune.vcpupin")),
            switch: Some(&CPU_PLACEMENT),
            note: "pinned vCPUs only; at most `collectors.domain_stats.max_pinnings` per domain (cuts counted in `virtpulse_domain_xml_cut_total`)",
            ..InfoSpec::EMPTY
        },
        InfoSpec {
            name: "libvirt_domain_emulator_pinning_info",
            help: "The host CPUs the emulator threads may run on (<cputune><emulatorpin>; value is always 1).",
            labels: &[("cpuset", InfoValue::Field("cputune.emulatorpin"))],
            when: InfoWhen::AnyField(&["cputune.emulatorpin"]),
            switch: Some(&CPU_PLACEMENT),
            ..InfoSpec::EMPTY
        },
        InfoSpec {
            name: "libvirt_domain_iothread_pinning_info",
            help: "The host CPUs an IOThread may run on (<cputune><iothreadpin>; value is always 1).",
            labels: &[("iothread", InfoValue::Field("iothread")), ("cpuset", InfoValue::Field("cpuset"))],
            repeat: Some(("cputune.iothreadpin.count", "cputune.iothreadpin")),
            switch: Some(&CPU_PLACEMENT),
            ..InfoSpec::EMPTY
        },
        InfoSpec {
            name: "libvirt_domain_numa_memory_info",
            help: "Where the domain's memory comes from (<numatune><memory>: mode strict, preferred, interleave or restrictive, and the host NUMA nodes; value is always 1).",
            labels: &[("mode", InfoValue::Field("numatune.mode")), ("nodeset", InfoValue::Field("numatune.nodeset"))],
            when: InfoWhen::AnyField(&["numatune.mode"]),
            switch: Some(&CPU_PLACEMENT),
            ..InfoSpec::EMPTY
        },
        InfoSpec {
            name: "libvirt_domain_openstack_info",
            help: "OpenStack Nova metadata of the domain (value is always 1); join on domain/uuid.",
            labels: OPENSTACK_INFO,
            when: InfoWhen::OpenStack,
            note: "only for domains with Nova metadata",
            ..InfoSpec::EMPTY
        },
    ],
    otlp_namespace: "libvirt.domain",
    counter_start: CounterStart { scope_keys: &[], marker: Some("cpu.time"), backdate_ms: None },
    notes: "`libvirt_domain_info` carries no state: the state has its own gauge (`libvirt_domain_state`), and a state \
label would start a new series at every state change.",
    ..KindSpec::EMPTY
};

/// `virDomainBlockJobType`, by code.
pub(crate) const BLOCK_JOB_TYPES: &[&str] = &["unknown", "pull", "copy", "commit", "active_commit", "backup"];

const BLOCK_JOB: &[LabelSpec] =
    &[label("device", LabelSource::Sibling(1, "disk")), label("type", LabelSource::Sibling(1, "type_name"))];

#[rustfmt::skip]
static BLOCK_JOB_TABLE: &[StatSpec] = &[
    row("job.count", "block_job", Count, NONE, None),
    row("job.*.disk", "block_job", Text, NONE, None),
    row("job.*.type", "block_job", Enum, NONE, None),
    row("job.*.type_name", "block_job", Text, NONE, None),
    row("job.*.current", "block_job", Bytes, BLOCK_JOB, gauge("libvirt_domain_block_job_current_bytes", 1.0, "How far the block job (copy, commit, pull) has come, in bytes of its end.")),
    row("job.*.end", "block_job", Bytes, BLOCK_JOB, gauge("libvirt_domain_block_job_end_bytes", 1.0, "Where the block job ends (it may grow while the guest writes); done when current equals end.")),
    row("job.*.bandwidth", "block_job", BytesPerSecond, BLOCK_JOB, gauge("libvirt_domain_block_job_bandwidth_bytes_per_second", 1.0, "Bandwidth limit of the block job (0: none).")),
];

/// The block jobs of one domain, each cycle while they run: the disks the
/// domain XML shows mirrored (`<mirror>`: copy, active commit) and those a
/// BLOCK_JOB event said are running.
pub(crate) static DOMAIN_BLOCK_JOB: KindSpec = KindSpec {
    name: "domain_block_job",
    title: "Block jobs (`virDomainGetBlockJobInfo`, for disks known to have one)",
    subject: Subject::Domain,
    prefix: "libvirt_domain_block_job_",
    table: BLOCK_JOB_TABLE,
    otlp_namespace: "libvirt.domain",
    notes: "A job is known from the domain XML (`<mirror>`: block copy and active commit; the XML is read every \
`metadata_refresh` and after the domain's events) and from BLOCK_JOB events (a job ready to pivot); while known its \
progress is read every cycle. Pull and plain commit jobs show no `<mirror>`: only their end is seen, as an event. \
The series go when the job ends.",
    ..KindSpec::EMPTY
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::mapping::unit_of;
    use crate::record::samples::{samples, Sample, SampleStats};
    use crate::record::{DomainRef, Field, Identity, Record, RecordKind, TypedValue};
    use crate::selection::{Profile, Selection, SelectionSpec};
    use std::time::SystemTime;

    fn labels_of(s: &Sample) -> Vec<(&'static str, String)> {
        s.labels()
    }

    fn rec(fields: &[(&str, TypedValue)]) -> Record {
        let identity = Identity { host: "h".into(), uri: "test:///default".into() };
        Record {
            domain: Some(DomainRef { name: "d".into(), uuid: "u".into(), info: None }),
            fields: fields
                .iter()
                .map(|(k, v)| Field { key: (*k).into(), value: v.clone(), unit: unit_of(&DOMAIN_STATS, k, v) })
                .collect(),
            ..Record::new(&identity, RecordKind::of(&DOMAIN_STATS), SystemTime::now())
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
        assert_eq!(unit_of(&DOMAIN_STATS, "vcpu.0.halt_poll_success_ns.sum", &TypedValue::ULLong(1)), Nanoseconds);
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
        assert_eq!(unit_of(&DOMAIN_STATS, "future.thing", &TypedValue::ULLong(1)), Unknown);
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

    fn sel(spec: SelectionSpec) -> Selection {
        Selection::new(&spec, &crate::registry::catalog()).unwrap()
    }

    #[test]
    fn default_profile_asks_only_for_the_groups_it_exports() {
        let d = sel(SelectionSpec::default());
        // `xml` (the domain XML's iotune) is no stats group: libvirt is not asked for it.
        assert_eq!(
            d.needed_groups(&DOMAIN_STATS),
            vec!["state", "cpu-total", "balloon", "vcpu", "interface", "block", "xml"]
        );
        assert!(!d.enabled(Some(&BACKING_CHAIN)));
        let all = Selection::everything(&crate::registry::catalog());
        let mut groups = all.needed_groups(&DOMAIN_STATS);
        groups.sort_unstable();
        groups.retain(|g| crate::libvirt::stats::group_by_name(g).is_some());
        let mut every: Vec<&str> = crate::libvirt::stats::ALL_GROUPS.iter().map(|g| g.name).collect();
        every.sort_unstable();
        assert_eq!(groups, every);
        // A switch brings its group; excluding all of a group's metrics drops it.
        let perf = sel(SelectionSpec { switches: vec![("perf".into(), true)], ..Default::default() });
        assert!(perf.needed_groups(&DOMAIN_STATS).contains(&"perf"));
        let no_net = sel(SelectionSpec { exclude: vec!["libvirt_domain_interface_*".into()], ..Default::default() });
        assert!(!no_net.needed_groups(&DOMAIN_STATS).contains(&"interface"));
        let only_cpu = sel(SelectionSpec { include: vec!["libvirt_domain_cpu_*".into()], ..Default::default() });
        assert_eq!(only_cpu.needed_groups(&DOMAIN_STATS), vec!["cpu-total"]);
        let vm_off = sel(SelectionSpec {
            profile: Profile::Everything,
            exclude: vec!["libvirt_domain_vm_*".into()],
            ..Default::default()
        });
        assert!(!vm_off.needed_groups(&DOMAIN_STATS).contains(&"vm"));
    }

    #[test]
    fn keys_of_unselected_metrics_are_not_wanted() {
        let d = sel(SelectionSpec::default());
        assert!(d.wants_key(&DOMAIN_STATS, "vcpu.0.time"));
        assert!(!d.wants_key(&DOMAIN_STATS, "vcpu.0.exits.sum"));
        assert!(!d.wants_key(&DOMAIN_STATS, "cpu.haltpoll.success.time"));
        assert!(d.wants_key(&DOMAIN_STATS, "block.0.name"), "labels come from it");
        assert!(d.wants_key(&DOMAIN_STATS, "future.key"), "unmapped keys are kept and reported");
        let x =
            sel(SelectionSpec { exclude: vec!["libvirt_domain_vcpu_time_seconds_total".into()], ..Default::default() });
        assert!(!x.wants_key(&DOMAIN_STATS, "vcpu.3.time"));
        assert!(x.wants_key(&DOMAIN_STATS, "vcpu.3.delay"));
    }

    #[test]
    fn switches_override_the_profile() {
        let s = sel(SelectionSpec {
            profile: Profile::Everything,
            switches: vec![("vcpu_kvm".into(), false)],
            ..Default::default()
        });
        assert!(!s.enabled(Some(&VCPU_KVM)));
        assert!(s.enabled(Some(&VM_KVM)));
        assert!(s.wants_key(&DOMAIN_STATS, "vm.pages_4k.cur"));
        assert!(!s.wants_key(&DOMAIN_STATS, "vcpu.0.exits.sum"));
    }

    #[test]
    fn energy_monitor_keys_of_libvirt_12_9() {
        // Names and types as libvirt 12.9's QEMU driver adds them (UInt
        // counts and ids, String name and vcpus, Double feature values).
        let r = rec(&[
            ("cpu.energy.monitor.count", TypedValue::UInt(1)),
            ("cpu.energy.monitor.0.name", TypedValue::String("vcpus_0-1".into())),
            ("cpu.energy.monitor.0.vcpus", TypedValue::String("0-1".into())),
            ("cpu.energy.monitor.0.pkg.count", TypedValue::UInt(1)),
            ("cpu.energy.monitor.0.pkg.0.id", TypedValue::UInt(0)),
            ("cpu.energy.monitor.0.pkg.0.core_energy", TypedValue::Double(42.375)),
            ("cpu.energy.monitor.0.pkg.0.activity", TypedValue::Double(0.25)),
        ]);
        let mut st = SampleStats::default();
        let s = samples(&r, &mut st);
        assert_eq!(st, SampleStats::default());
        let by_name: Vec<(&str, f64)> = s.iter().map(|x| (x.name(), x.value)).collect();
        assert_eq!(
            by_name,
            vec![
                ("libvirt_domain_cpu_energy_monitors", 1.0),
                ("libvirt_domain_cpu_energy_monitor_packages", 1.0),
                ("libvirt_domain_cpu_energy_core_joules_total", 42.375),
                ("libvirt_domain_cpu_energy_activity_farads_total", 0.25),
            ]
        );
        assert_eq!(
            labels_of(&s[2]),
            vec![("monitor", "vcpus_0-1".into()), ("vcpus", "0-1".into()), ("package", "0".into())]
        );
        let unit = |k: &str, v: TypedValue| unit_of(&DOMAIN_STATS, k, &v);
        assert_eq!(unit("cpu.energy.monitor.3.pkg.1.core_energy", TypedValue::Double(1.0)), Joules);
        assert_eq!(unit("cpu.energy.monitor.3.pkg.1.activity", TypedValue::Double(1.0)), Farads);
        let default = Selection::new(&SelectionSpec::default(), &crate::registry::catalog()).unwrap();
        assert!(!default.wants_key(&DOMAIN_STATS, "cpu.energy.monitor.0.pkg.0.core_energy"), "behind resctrl");
    }
}
