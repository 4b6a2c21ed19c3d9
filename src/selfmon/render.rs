//! The agent's own metrics as Prometheus families, rendered when asked
//! for: what every component reports into the registry, the build and the
//! process. The Prometheus sink and the admin endpoint serve them.

use super::{find, MetricDesc, MetricWriter, Registry};
use crate::exposition::{Families, FamilyWriter, RenderStats};

/// The metrics rendered here besides the components'.
pub(crate) const METRICS: &[MetricDesc] = &[
    MetricDesc::gauge(
        "virtpulse_build_info",
        "Agent version (value is always 1).",
    ),
    MetricDesc::counter(
        "virtpulse_internal_errors_total",
        "Panics caught and survived, by where (event_callback: a libvirt event callback). Each is a bug: please report it.",
    ),
    MetricDesc::gauge(
        "process_resident_memory_bytes",
        "Resident memory of the agent process.",
    ),
    MetricDesc::gauge(
        "process_virtual_memory_bytes",
        "Virtual memory of the agent process.",
    ),
    MetricDesc::counter(
        "process_cpu_seconds_total",
        "CPU time used by the agent process.",
    ),
    MetricDesc::gauge(
        "process_open_fds",
        "Open file descriptors of the agent process.",
    ),
    MetricDesc::gauge(
        "process_start_time_seconds",
        "Start time of the agent process (Unix time).",
    ),
    MetricDesc::gauge(
        "process_threads",
        "Threads of the agent process (tokio workers, blocking threads running libvirt calls, libvirt's event loop, librdkafka's).",
    ),
    MetricDesc::gauge(
        "virtpulse_runtime_alive_tasks",
        "Tasks alive in the agent's async runtime: flat over time unless something leaks tasks.",
    ),
];

/// Registry reports, written as Prometheus families.
struct Writer<'a>(FamilyWriter<'a>);

impl MetricWriter for Writer<'_> {
    fn sample(&mut self, desc: &MetricDesc, labels: &[(&str, &str)], value: f64) {
        self.0.add(desc.name, desc.mtype, desc.help, labels, value);
    }

    fn histogram(&mut self, desc: &MetricDesc, labels: &[(&str, &str)], buckets: &[(f64, u64)], sum: f64, count: u64) {
        self.0.add_histogram(desc.name, desc.help, labels, buckets, sum, count);
    }
}

struct ProcStat {
    cpu_seconds: f64,
    start_unix: f64,
    rss_bytes: f64,
    vsize_bytes: f64,
    threads: f64,
}

fn proc_stat() -> Option<ProcStat> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name (which may contain spaces).
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let (ticks, page) = (rustix::param::clock_ticks_per_second() as f64, rustix::param::page_size() as f64);
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok());
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime ").and_then(|v| v.trim().parse::<f64>().ok()))?;
    Some(ProcStat {
        cpu_seconds: (num(11)? + num(12)?) / ticks,
        start_unix: boot + num(19)? / ticks,
        threads: num(17)?,
        vsize_bytes: num(20)?,
        rss_bytes: num(21)? * page,
    })
}

pub(crate) fn render(registry: &Registry) -> Families {
    let mut fams = Families::new();
    let mut stats = RenderStats::default();
    let mut w = Writer(FamilyWriter::new(&mut fams, &mut stats));
    let put = |w: &mut Writer, name: &'static str, labels: &[(&str, &str)], v: f64| {
        w.sample(&find(METRICS, name), labels, v);
    };
    put(&mut w, "virtpulse_build_info", &[("version", env!("CARGO_PKG_VERSION"))], 1.0);
    registry.write_metrics(&mut w);
    for (place, n) in crate::util::internal_errors::counts() {
        put(&mut w, "virtpulse_internal_errors_total", &[("where", place)], n as f64);
    }
    if let Some(p) = proc_stat() {
        put(&mut w, "process_resident_memory_bytes", &[], p.rss_bytes);
        put(&mut w, "process_virtual_memory_bytes", &[], p.vsize_bytes);
        put(&mut w, "process_cpu_seconds_total", &[], p.cpu_seconds);
        put(&mut w, "process_start_time_seconds", &[], p.start_unix);
        put(&mut w, "process_threads", &[], p.threads);
    }
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        put(&mut w, "virtpulse_runtime_alive_tasks", &[], rt.metrics().num_alive_tasks() as f64);
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        put(&mut w, "process_open_fds", &[], dir.count() as f64);
    }
    fams
}
