//! What the node collector's records mean: host statistics, keyed as the
//! collector names them, and the host's info metrics.

use crate::record::kind::{
    counter, gauge, label, row, InfoSpec, InfoValue, InfoWhen, KindSpec, LabelSource, LabelSpec, StatSpec, Subject,
    Switch, KIB, NO_LABELS as NONE, NS, PERCENT,
};
use crate::value::Unit::*;

pub(crate) static NODE_PER_CPU: Switch = Switch {
    key: "node_per_cpu",
    covers: "each host CPU's time by mode (`libvirt_node_logical_cpu_time_seconds_total`)",
    adds: "5 series per host CPU; also one libvirt call per host CPU per node collection",
};

const MODE_USER: &[LabelSpec] = &[label("mode", LabelSource::Literal("user"))];
const MODE_KERNEL: &[LabelSpec] = &[label("mode", LabelSource::Literal("kernel"))];
const MODE_IDLE: &[LabelSpec] = &[label("mode", LabelSource::Literal("idle"))];
const MODE_IOWAIT: &[LabelSpec] = &[label("mode", LabelSource::Literal("iowait"))];
const MODE_INTR: &[LabelSpec] = &[label("mode", LabelSource::Literal("intr"))];
const CPU_USER: &[LabelSpec] = &[label("cpu", LabelSource::Index(0)), label("mode", LabelSource::Literal("user"))];
const CPU_KERNEL: &[LabelSpec] = &[label("cpu", LabelSource::Index(0)), label("mode", LabelSource::Literal("kernel"))];
const CPU_IDLE: &[LabelSpec] = &[label("cpu", LabelSource::Index(0)), label("mode", LabelSource::Literal("idle"))];
const CPU_IOWAIT: &[LabelSpec] = &[label("cpu", LabelSource::Index(0)), label("mode", LabelSource::Literal("iowait"))];
const CPU_INTR: &[LabelSpec] = &[label("cpu", LabelSource::Index(0)), label("mode", LabelSource::Literal("intr"))];
const HOST_CPU: &[LabelSpec] = &[label("cpu", LabelSource::Index(0))];
const CELL: &[LabelSpec] = &[label("cell", LabelSource::Index(0))];
const CELL_PAGES: &[LabelSpec] =
    &[label("cell", LabelSource::Index(0)), label("page_size_bytes", LabelSource::Index(1))];
const RUNNING: &[LabelSpec] = &[label("state", LabelSource::Literal("running"))];
const PAUSED: &[LabelSpec] = &[label("state", LabelSource::Literal("paused"))];
const SHUTOFF: &[LabelSpec] = &[label("state", LabelSource::Literal("shutoff"))];
const OTHER: &[LabelSpec] = &[label("state", LabelSource::Literal("other"))];

#[rustfmt::skip]
static TABLE: &[StatSpec] = &[
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
    row("cpu.guest", "node", Nanoseconds, NONE, counter("libvirt_node_cpu_guest_seconds_total", NS, "CPU time of all host CPUs spent running guests' vCPUs (also counted in user time; libvirt 11.8+).")),
    row("cpu.utilization", "node", Percent, NONE, gauge("libvirt_node_cpu_utilization_ratio", PERCENT, "CPU utilization of the host (drivers that report it).")),
    row("cpu.*.user", "node", Nanoseconds, CPU_USER, counter("libvirt_node_logical_cpu_time_seconds_total", NS, "CPU time of each host CPU by mode.")).behind(&NODE_PER_CPU),
    row("cpu.*.kernel", "node", Nanoseconds, CPU_KERNEL, counter("libvirt_node_logical_cpu_time_seconds_total", NS, "CPU time of each host CPU by mode.")).behind(&NODE_PER_CPU),
    row("cpu.*.idle", "node", Nanoseconds, CPU_IDLE, counter("libvirt_node_logical_cpu_time_seconds_total", NS, "CPU time of each host CPU by mode.")).behind(&NODE_PER_CPU),
    row("cpu.*.iowait", "node", Nanoseconds, CPU_IOWAIT, counter("libvirt_node_logical_cpu_time_seconds_total", NS, "CPU time of each host CPU by mode.")).behind(&NODE_PER_CPU),
    row("cpu.*.intr", "node", Nanoseconds, CPU_INTR, counter("libvirt_node_logical_cpu_time_seconds_total", NS, "CPU time of each host CPU by mode.")).behind(&NODE_PER_CPU),
    row("cpu.*.guest", "node", Nanoseconds, HOST_CPU, counter("libvirt_node_logical_cpu_guest_seconds_total", NS, "CPU time of each host CPU spent running guests' vCPUs (also counted in user time; libvirt 11.8+).")).behind(&NODE_PER_CPU),
    row("cpu.*.utilization", "node", Percent, NONE, None).behind(&NODE_PER_CPU),
    row("memory.total", "node", Kibibytes, NONE, gauge("libvirt_node_memory_total_bytes", KIB, "Host memory in total (virNodeGetMemoryStats).")),
    row("memory.free", "node", Kibibytes, NONE, gauge("libvirt_node_memory_free_bytes", KIB, "Host memory free.")),
    row("memory.buffers", "node", Kibibytes, NONE, gauge("libvirt_node_memory_buffers_bytes", KIB, "Host memory used for buffers.")),
    row("memory.cached", "node", Kibibytes, NONE, gauge("libvirt_node_memory_cached_bytes", KIB, "Host memory used for the page cache.")),
    row("memory.available", "node", Kibibytes, NONE, gauge("libvirt_node_memory_available_bytes", KIB, "Host memory available for new work without swapping (Linux MemAvailable; libvirt 12.3+).")),
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

/// The host: node info, CPU and memory statistics, NUMA cells, free pages,
/// versions, domain counts.
pub(crate) static NODE: KindSpec = KindSpec {
    name: "node",
    title: "Node (host)",
    subject: Subject::Host,
    prefix: "libvirt_node_",
    table: TABLE,
    info: &[
        InfoSpec {
            name: "libvirt_node_info",
            help: "The host's CPU model (value is always 1).",
            labels: &[("model", InfoValue::Field("info.model"))],
            when: InfoWhen::AnyField(&["info.model"]),
            ..InfoSpec::EMPTY
        },
        InfoSpec {
            name: "libvirt_node_versions_info",
            help: "Versions of the libvirt client library, the libvirt daemon and the hypervisor (value is always 1).",
            labels: &[
                ("library_version", InfoValue::Version("version.library")),
                ("daemon_version", InfoValue::Version("version.daemon")),
                ("hypervisor", InfoValue::Field("hypervisor.type")),
                ("hypervisor_version", InfoValue::Version("version.hypervisor")),
            ],
            when: InfoWhen::AnyField(&["version.daemon"]),
            ..InfoSpec::EMPTY
        },
    ],
    otlp_namespace: "libvirt.node",
    ..KindSpec::EMPTY
};
