//! "Info" metrics: descriptive data about a domain, the host or a pool as
//! labels on a constant 1, shared by the Prometheus and OTLP sinks.

use crate::record::{Record, RecordKind};
use crate::sinks::codes::pool_state_name;
use crate::stat_keys::{Detail, SampleFilter};
use crate::value::TypedValue;

/// Called once per info metric: name, help, labels (identity included).
pub type InfoEmit<'e> = dyn FnMut(&'static str, &'static str, &[(&'static str, &str)]) + 'e;

fn opt_str(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("")
}

fn opt_bool(v: Option<bool>) -> &'static str {
    match v {
        Some(true) => "true",
        Some(false) => "false",
        None => "",
    }
}

fn int_str(v: Option<impl ToString>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

fn field_str<'r>(r: &'r Record, key: &str) -> &'r str {
    r.field(key).and_then(|v| v.as_str()).unwrap_or("")
}

fn field_bool(r: &Record, key: &str) -> &'static str {
    match r.field(key) {
        Some(TypedValue::Boolean(b)) => opt_bool(Some(*b)),
        _ => "",
    }
}

/// Emits the info metrics of one record (none for jobs and events) that
/// `filter` selects, without the labels it drops.
pub fn info_metrics(r: &Record, filter: &dyn SampleFilter, emit: &mut InfoEmit) {
    let mut selected = |name: &'static str, help: &'static str, labels: &[(&'static str, &str)]| {
        if !filter.selects(Detail::Core, name) {
            return;
        }
        if filter.drops_labels() {
            let kept: Vec<(&'static str, &str)> =
                labels.iter().copied().filter(|(k, _)| filter.keeps_label(k)).collect();
            emit(name, help, &kept);
        } else {
            emit(name, help, labels);
        }
    };
    match r.kind {
        RecordKind::DomainStats => domain(r, &mut selected),
        RecordKind::Node => node(r, &mut selected),
        RecordKind::StoragePool => pool(r, &mut selected),
        RecordKind::Guest => guest(r, &mut selected),
        RecordKind::DomainJob | RecordKind::Event => {}
    }
}

fn domain(r: &Record, emit: &mut InfoEmit) {
    let Some(d) = &r.domain else { return };
    let info = d.info.as_deref().cloned().unwrap_or_default();
    let vcpus = int_str(info.vcpus);
    let maxmem = int_str(info.max_memory_bytes);
    // No state label: every state change would start a new series (the
    // state has its own gauge, libvirt_domain_state).
    emit(
        "libvirt_domain_info",
        "Descriptive data about the domain (value is always 1); join on domain/uuid.",
        &[
            ("domain", &d.name),
            ("uuid", &d.uuid),
            ("virt_type", opt_str(&info.virt_type)),
            ("os_type", opt_str(&info.os_type)),
            ("arch", opt_str(&info.arch)),
            ("machine", opt_str(&info.machine)),
            ("vcpus", &vcpus),
            ("max_memory_bytes", &maxmem),
            ("persistent", opt_bool(info.persistent)),
            ("autostart", opt_bool(info.autostart)),
        ],
    );
    if let Some(os) = &info.openstack {
        emit(
            "libvirt_domain_openstack_info",
            "OpenStack Nova metadata of the domain (value is always 1); join on domain/uuid.",
            &[
                ("domain", &d.name),
                ("uuid", &d.uuid),
                ("instance_name", opt_str(&os.instance_name)),
                ("flavor", opt_str(&os.flavor)),
                ("project_name", opt_str(&os.project_name)),
                ("project_uuid", opt_str(&os.project_uuid)),
                ("user_name", opt_str(&os.user_name)),
                ("user_uuid", opt_str(&os.user_uuid)),
            ],
        );
    }
}

fn node(r: &Record, emit: &mut InfoEmit) {
    if let Some(model) = r.field("info.model").and_then(|v| v.as_str()) {
        emit("libvirt_node_info", "The host's CPU model (value is always 1).", &[("model", model)]);
    }
    let version =
        |k: &str| r.field(k).and_then(|v| v.as_u64()).map(crate::sinks::codes::version_string).unwrap_or_default();
    if r.field("version.daemon").is_some() {
        let (library, daemon, hypervisor) =
            (version("version.library"), version("version.daemon"), version("version.hypervisor"));
        emit(
            "libvirt_node_versions_info",
            "Versions of the libvirt client library, the libvirt daemon and the hypervisor (value is always 1).",
            &[
                ("library_version", &library),
                ("daemon_version", &daemon),
                ("hypervisor", field_str(r, "hypervisor.type")),
                ("hypervisor_version", &hypervisor),
            ],
        );
    }
}

/// The guest's OS and hostname, and one series per interface address
/// (the collector bounds how many and how long).
fn guest(r: &Record, emit: &mut InfoEmit) {
    let Some(d) = &r.domain else { return };
    if r.field("os.id").is_some() || r.field("hostname").is_some() {
        emit(
            "libvirt_domain_guest_os_info",
            "What the guest agent says runs in the guest (value is always 1); join on domain/uuid.",
            &[
                ("domain", &d.name),
                ("uuid", &d.uuid),
                ("os_id", field_str(r, "os.id")),
                ("os_name", field_str(r, "os.name")),
                ("os_version", field_str(r, "os.version")),
                ("kernel_release", field_str(r, "os.kernel-release")),
                ("hostname", field_str(r, "hostname")),
            ],
        );
    }
    let count = r.field("addr.count").and_then(|v| v.as_u64()).unwrap_or(0);
    for i in 0..count {
        let f = |name: &str| field_str(r, &format!("addr.{i}.{name}")).to_string();
        let prefix = r.field(&format!("addr.{i}.prefix")).and_then(|v| v.as_u64()).map(|p| p.to_string());
        let (iface, mac, address, family, source) = (f("interface"), f("mac"), f("address"), f("family"), f("source"));
        emit(
            "libvirt_domain_guest_interface_address_info",
            "An IP address of a guest interface (value is always 1), by where it was learnt (lease, arp, agent).",
            &[
                ("domain", &d.name),
                ("uuid", &d.uuid),
                ("interface", &iface),
                ("mac", &mac),
                ("address", &address),
                ("prefix", prefix.as_deref().unwrap_or("")),
                ("family", &family),
                ("source", &source),
            ],
        );
    }
}

fn pool(r: &Record, emit: &mut InfoEmit) {
    let Some(p) = &r.pool else { return };
    emit(
        "libvirt_storage_pool_info",
        "Descriptive data about the storage pool (value is always 1); join on pool/uuid.",
        &[
            ("pool", &p.name),
            ("uuid", &p.uuid),
            ("type", field_str(r, "type")),
            ("state", pool_state_name(r.field("state").and_then(|v| v.as_u64()))),
            ("persistent", field_bool(r, "persistent")),
            ("autostart", field_bool(r, "autostart")),
        ],
    );
}
