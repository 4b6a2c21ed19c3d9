//! "Info" metrics: descriptive data about a record's subject as labels on a
//! constant 1, as its kind declares them (`InfoSpec`); shared by the
//! Prometheus and OTLP sinks and the generated docs.

use super::kind::{DomainAttr, InfoSpec, InfoValue, InfoWhen};
use super::samples::{code_name, for_each_identity, SampleFilter};
use super::{DomainInfo, Record};
use crate::value::TypedValue;

/// Called once per info metric: name, help, labels (identity included).
pub(crate) type InfoEmit<'e> = dyn FnMut(&'static str, &'static str, &[(&'static str, &str)]) + 'e;

/// libvirt's packed version number (major * 1,000,000 + minor * 1,000 +
/// release) as text.
pub(crate) fn version_string(v: u64) -> String {
    format!("{}.{}.{}", v / 1_000_000, (v / 1000) % 1000, v % 1000)
}

fn value_text(v: &TypedValue) -> String {
    match v {
        TypedValue::String(s) => s.to_string(),
        TypedValue::Boolean(b) => b.to_string(),
        TypedValue::Int(x) => x.to_string(),
        TypedValue::UInt(x) => x.to_string(),
        TypedValue::LLong(x) => x.to_string(),
        TypedValue::ULLong(x) => x.to_string(),
        TypedValue::Double(d) => d.to_string(),
    }
}

fn opt_bool(v: Option<bool>) -> String {
    v.map(|b| b.to_string()).unwrap_or_default()
}

fn domain_attr(info: &DomainInfo, attr: DomainAttr) -> String {
    let os = info.openstack.as_ref();
    let os_str = |f: fn(&super::OpenStackInfo) -> &Option<String>| os.and_then(|o| f(o).clone()).unwrap_or_default();
    match attr {
        DomainAttr::VirtType => info.virt_type.clone().unwrap_or_default(),
        DomainAttr::OsType => info.os_type.clone().unwrap_or_default(),
        DomainAttr::Arch => info.arch.clone().unwrap_or_default(),
        DomainAttr::Machine => info.machine.clone().unwrap_or_default(),
        DomainAttr::Vcpus => info.vcpus.map(|v| v.to_string()).unwrap_or_default(),
        DomainAttr::MaxMemoryBytes => info.max_memory_bytes.map(|v| v.to_string()).unwrap_or_default(),
        DomainAttr::Persistent => opt_bool(info.persistent),
        DomainAttr::Autostart => opt_bool(info.autostart),
        DomainAttr::InstanceName => os_str(|o| &o.instance_name),
        DomainAttr::Flavor => os_str(|o| &o.flavor),
        DomainAttr::ProjectName => os_str(|o| &o.project_name),
        DomainAttr::ProjectUuid => os_str(|o| &o.project_uuid),
        DomainAttr::UserName => os_str(|o| &o.user_name),
        DomainAttr::UserUuid => os_str(|o| &o.user_uuid),
    }
}

fn applies(spec: &InfoSpec, r: &Record) -> bool {
    match spec.when {
        InfoWhen::Always => true,
        InfoWhen::AnyField(keys) => keys.iter().any(|k| r.field(k).is_some()),
        InfoWhen::OpenStack => r.domain.as_ref().and_then(|d| d.info.as_ref()).is_some_and(|i| i.openstack.is_some()),
    }
}

/// The label values of one info metric (`scope`: `addr.3.` inside a
/// repeated one, else empty).
fn label_values(spec: &InfoSpec, r: &Record, scope: &str) -> Vec<String> {
    let field = |key: &str| {
        if scope.is_empty() {
            r.field(key)
        } else {
            r.field(&format!("{scope}{key}"))
        }
    };
    let info = r.domain.as_ref().and_then(|d| d.info.as_deref());
    spec.labels
        .iter()
        .map(|(_, v)| match *v {
            InfoValue::Field(k) => field(k).map(value_text).unwrap_or_default(),
            InfoValue::Code(k, names) => code_name(names, field(k).and_then(|v| v.as_u64())).to_string(),
            InfoValue::Version(k) => field(k).and_then(|v| v.as_u64()).map(version_string).unwrap_or_default(),
            InfoValue::Domain(attr) => info.map(|i| domain_attr(i, attr)).unwrap_or_default(),
        })
        .collect()
}

/// Emits the info metrics of one record that `filter` selects, without the
/// labels it drops.
pub(crate) fn info_metrics(r: &Record, filter: &dyn SampleFilter, emit: &mut InfoEmit) {
    let kind = r.kind.spec();
    if kind.info.is_empty() {
        return;
    }
    let mut identity: Vec<(&'static str, String)> = Vec::with_capacity(2);
    if !for_each_identity(r, |k, v| identity.push((k, v.to_string()))) {
        return;
    }
    for spec in kind.info {
        if !filter.selects(spec.switch, spec.name) || !applies(spec, r) {
            continue;
        }
        let mut scopes: Vec<String> = Vec::new();
        match spec.repeat {
            None => scopes.push(String::new()),
            Some((count_key, scope)) => {
                let count = r.field(count_key).and_then(|v| v.as_u64()).unwrap_or(0);
                scopes.extend((0..count).map(|i| format!("{scope}.{i}.")));
            }
        }
        for scope in scopes {
            let values = label_values(spec, r, &scope);
            let mut labels: Vec<(&'static str, &str)> = identity.iter().map(|(k, v)| (*k, v.as_str())).collect();
            labels.extend(spec.labels.iter().zip(&values).map(|((k, _), v)| (*k, v.as_str())));
            if filter.drops_labels() {
                labels.retain(|(k, _)| filter.keeps_label(k));
            }
            emit(spec.name, spec.help, &labels);
        }
    }
}
