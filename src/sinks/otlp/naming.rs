//! OpenTelemetry names for the Prometheus metric names and labels.
//!
//! The OTLP name is the Prometheus name with its `_total` and unit suffix
//! moved into the instrument kind and the UCUM unit, and `_` turned into `.`
//! (`libvirt_domain_cpu_time_seconds_total` -> `libvirt.domain.cpu.time`,
//! unit `s`, monotonic sum). The mapping is chosen so that the standard
//! OTLP -> Prometheus translation (as done by the Collector's Prometheus
//! exporters) gives back exactly the Prometheus sink's names.

use crate::record::KindSpec;
use crate::value::MetricType;

/// Unit suffixes of Prometheus names and their UCUM units, longest first.
const UNIT_SUFFIXES: &[(&str, &str)] = &[
    ("_bytes_per_second", "By/s"),
    ("_pages_per_second", "{page}/s"),
    ("_seconds", "s"),
    ("_bytes", "By"),
    ("_hertz", "Hz"),
    ("_ratio", "1"),
    ("_joules", "J"),
    ("_farads", "F"),
];

/// The thing a dimensionless count counts, by the name's last word (UCUM
/// annotations: they document without changing the unit). Some last words
/// stand for their family (`vcpus_current`, `cores_per_socket`).
const COUNTED: &[(&str, &str)] = &[
    ("packets", "{packet}"),
    ("drops", "{packet}"),
    ("errors", "{error}"),
    ("requests", "{request}"),
    ("faults", "{fault}"),
    ("instructions", "{instruction}"),
    ("misses", "{miss}"),
    ("references", "{reference}"),
    ("cycles", "{cycle}"),
    ("switches", "{switch}"),
    ("migrations", "{migration}"),
    ("operations", "{operation}"),
    ("pages", "{page}"),
    ("allocations", "{allocation}"),
    ("failures", "{failure}"),
    ("cpus", "{cpu}"),
    ("vcpus", "{vcpu}"),
    ("domains", "{domain}"),
    ("volumes", "{volume}"),
    ("cells", "{cell}"),
    ("monitors", "{monitor}"),
    ("banks", "{bank}"),
    ("iothreads", "{iothread}"),
    ("iteration", "{iteration}"),
    ("current", "{vcpu}"),
    ("maximum", "{vcpu}"),
    ("persistent", "{domain}"),
    ("transient", "{domain}"),
    ("socket", "{core}"),
    ("cell", "{socket}"),
    ("core", "{thread}"),
];

/// (OTLP name, UCUM unit) of a Prometheus metric.
pub fn metric_name(prometheus: &str, mtype: MetricType) -> (String, &'static str) {
    let mut base = prometheus;
    if mtype == MetricType::Counter {
        base = base.strip_suffix("_total").unwrap_or(base);
    }
    let mut unit = "";
    for (suffix, u) in UNIT_SUFFIXES {
        if let Some(b) = base.strip_suffix(suffix) {
            // `_pages_per_second` keeps "pages" in the name: only the rate
            // part is a unit.
            base = if suffix.starts_with("_pages") { &base[..base.len() - "_per_second".len()] } else { b };
            unit = u;
            break;
        }
    }
    if unit.is_empty() {
        let last = base.rsplit('_').next().unwrap_or("");
        unit = COUNTED.iter().find(|(w, _)| *w == last).map(|(_, u)| *u).unwrap_or("");
    }
    (base.replace('_', "."), unit)
}

/// The OTLP attribute key for a Prometheus label of a record kind: the
/// subject's name and uuid under its own prefix (`libvirt.domain.name`),
/// every other label under the kind's namespace (`libvirt.job.operation`).
pub fn attribute_key(kind: &KindSpec, label: &str) -> String {
    if let Some(prefix) = kind.subject.otlp() {
        if kind.subject.name_label() == Some(label) {
            return format!("{prefix}.name");
        }
        if label == "uuid" {
            return format!("{prefix}.uuid");
        }
    }
    format!("{}.{label}", kind.otlp_namespace)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::domain_stats::metrics::DOMAIN_STATS;
    use crate::collectors::jobs::metrics::DOMAIN_JOB;
    use crate::collectors::pools::metrics::STORAGE_POOL;

    /// The OTLP -> Prometheus name translation of the OpenTelemetry
    /// compatibility spec (units to suffixes, `_total` for monotonic sums).
    fn to_prometheus(name: &str, unit: &str, mtype: MetricType) -> String {
        let mut out = name.replace('.', "_");
        let suffix = match unit {
            "By" => "_bytes",
            "s" => "_seconds",
            "By/s" => "_bytes_per_second",
            "Hz" => "_hertz",
            "1" => "_ratio",
            "J" => "_joules",
            "F" => "_farads",
            u if u.ends_with("}/s") => "_per_second",
            _ => "",
        };
        if !out.ends_with(suffix) {
            out.push_str(suffix);
        }
        if mtype == MetricType::Counter {
            out.push_str("_total");
        }
        out
    }

    #[test]
    fn every_metric_round_trips_to_its_prometheus_name() {
        let mut names = Vec::new();
        for kind in crate::registry::catalog().kinds {
            for spec in kind.table {
                if let Some(e) = spec.export {
                    names.push((e.name.to_string(), e.mtype));
                }
            }
        }
        names.push(("libvirt_domain_vm_remote_tlb_flush_total".into(), MetricType::Counter));
        names.push(("libvirt_domain_vcpu_kvm_halt_poll_success_seconds_total".into(), MetricType::Counter));
        assert!(names.len() > 100 && !DOMAIN_STATS.rules.is_empty());
        for (prom, mtype) in names {
            let (otel, unit) = metric_name(&prom, mtype);
            assert!(!otel.contains('_') || otel.split('.').all(|p| !p.is_empty()), "{otel}");
            assert!(otel.starts_with("libvirt."), "{otel}");
            assert!(!otel.ends_with(".seconds") && !otel.ends_with(".bytes"), "{otel}");
            assert_eq!(to_prometheus(&otel, unit, mtype), prom, "{otel} [{unit}]");
        }
    }

    #[test]
    fn names_and_units_follow_opentelemetry_conventions() {
        let c = MetricType::Counter;
        let g = MetricType::Gauge;
        let cases = [
            ("libvirt_domain_cpu_time_seconds_total", c, "libvirt.domain.cpu.time", "s"),
            ("libvirt_domain_interface_receive_bytes_total", c, "libvirt.domain.interface.receive", "By"),
            (
                "libvirt_domain_interface_receive_packets_total",
                c,
                "libvirt.domain.interface.receive.packets",
                "{packet}",
            ),
            ("libvirt_domain_balloon_current_bytes", g, "libvirt.domain.balloon.current", "By"),
            ("libvirt_node_cpu_utilization_ratio", g, "libvirt.node.cpu.utilization", "1"),
            ("libvirt_domain_cpu_energy_core_joules_total", c, "libvirt.domain.cpu.energy.core", "J"),
            (
                "libvirt_domain_job_memory_dirty_pages_per_second",
                g,
                "libvirt.domain.job.memory.dirty.pages",
                "{page}/s",
            ),
            ("libvirt_domain_state", g, "libvirt.domain.state", ""),
            ("libvirt_node_cpus", g, "libvirt.node.cpus", "{cpu}"),
            ("libvirt_domain_vcpus_current", g, "libvirt.domain.vcpus.current", "{vcpu}"),
        ];
        for (prom, t, name, unit) in cases {
            assert_eq!(metric_name(prom, t), (name.to_string(), unit), "{prom}");
        }
        assert_eq!(attribute_key(&DOMAIN_STATS, "domain"), "libvirt.domain.name");
        assert_eq!(attribute_key(&DOMAIN_STATS, "interface"), "libvirt.domain.interface");
        assert_eq!(attribute_key(&DOMAIN_JOB, "operation"), "libvirt.job.operation");
        assert_eq!(attribute_key(&DOMAIN_JOB, "domain"), "libvirt.domain.name");
        assert_eq!(attribute_key(&STORAGE_POOL, "uuid"), "libvirt.pool.uuid");
        assert_eq!(attribute_key(&STORAGE_POOL, "pool"), "libvirt.pool.name");
    }
}
