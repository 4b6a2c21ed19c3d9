//! The OTLP resource: who sends (service, host) and what it watches
//! (libvirt URI, hypervisor). Precedence, lowest first: built-in values,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_SERVICE_NAME`, `sinks.otlp.resource_attributes`.

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;

use super::config::parse_key_values;
use crate::record::info::version_string;
use crate::record::{Record, Subject};

/// A string attribute.
pub(crate) fn kv(key: impl Into<String>, value: impl Into<String>) -> KeyValue {
    kv_any(key, any_value::Value::StringValue(value.into()))
}

/// An attribute of any type.
pub(crate) fn kv_any(key: impl Into<String>, value: any_value::Value) -> KeyValue {
    KeyValue { key: key.into(), value: Some(AnyValue { value: Some(value) }), ..Default::default() }
}

#[derive(Debug, Clone)]
pub(crate) struct ResourceBuilder {
    attributes: BTreeMap<String, String>,
}

/// `/etc/machine-id` (systemd), the id OpenTelemetry's host detector uses.
fn machine_id() -> Option<String> {
    ["/etc/machine-id", "/var/lib/dbus/machine-id"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

impl ResourceBuilder {
    /// `env` holds the process environment (passed in for tests).
    pub(crate) fn new(
        host: &str,
        uri: &str,
        env: &BTreeMap<String, String>,
        extra: &BTreeMap<String, String>,
    ) -> Result<Self, String> {
        let mut a = BTreeMap::new();
        a.insert("service.name".to_string(), "virtpulse".to_string());
        a.insert("service.version".to_string(), env!("CARGO_PKG_VERSION").to_string());
        a.insert("host.name".to_string(), host.to_string());
        if let Some(id) = machine_id() {
            a.insert("host.id".to_string(), id);
        }
        a.insert("os.type".to_string(), "linux".to_string());
        a.insert("libvirt.uri".to_string(), uri.to_string());
        if let Some(v) = env.get("OTEL_RESOURCE_ATTRIBUTES").filter(|v| !v.trim().is_empty()) {
            let pairs = parse_key_values(v).map_err(|e| format!("OTEL_RESOURCE_ATTRIBUTES: {e}"))?;
            a.extend(pairs);
        }
        if let Some(name) = env.get("OTEL_SERVICE_NAME").map(|s| s.trim()).filter(|s| !s.is_empty()) {
            a.insert("service.name".to_string(), name.to_string());
        }
        a.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
        Ok(Self { attributes: a })
    }

    /// Learns the hypervisor and daemon versions from a node record.
    pub(crate) fn observe(&mut self, r: &Record) -> bool {
        if r.kind.subject != Subject::Host {
            return false;
        }
        let version = |k: &str| r.field(k).and_then(|v| v.as_u64()).map(version_string);
        let mut changed = false;
        let mut set = |k: &str, v: Option<String>| {
            if let Some(v) = v.filter(|v| !v.is_empty()) {
                if self.attributes.get(k) != Some(&v) {
                    self.attributes.insert(k.to_string(), v);
                    changed = true;
                }
            }
        };
        set("libvirt.hypervisor.type", r.field("hypervisor.type").and_then(|v| v.as_str()).map(str::to_string));
        set("libvirt.hypervisor.version", version("version.hypervisor"));
        set("libvirt.daemon.version", version("version.daemon"));
        changed
    }

    pub(crate) fn build(&self) -> Resource {
        Resource {
            attributes: self.attributes.iter().map(|(k, v)| kv(k.clone(), v.clone())).collect(),
            dropped_attributes_count: 0,
            entity_refs: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(r: &Resource) -> BTreeMap<String, String> {
        r.attributes
            .iter()
            .map(|kv| {
                let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                    Some(any_value::Value::StringValue(s)) => s.clone(),
                    _ => String::new(),
                };
                (kv.key.clone(), v)
            })
            .collect()
    }

    #[test]
    fn config_beats_service_name_beats_resource_attributes_beats_builtin() {
        let env: BTreeMap<String, String> = [
            ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod,service.name=x,host.name=h2,rack=r%201"),
            ("OTEL_SERVICE_NAME", "hv-agent"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let extra = [("rack".to_string(), "r2".to_string())].into_iter().collect();
        let b = ResourceBuilder::new("hv1", "qemu:///system", &env, &extra).unwrap();
        let a = attrs(&b.build());
        assert_eq!(a["service.name"], "hv-agent");
        assert_eq!(a["host.name"], "h2");
        assert_eq!(a["rack"], "r2");
        assert_eq!(a["deployment.environment"], "prod");
        assert_eq!(a["libvirt.uri"], "qemu:///system");
        assert_eq!(a["service.version"], env!("CARGO_PKG_VERSION"));
        let bad: BTreeMap<String, String> = [("OTEL_RESOURCE_ATTRIBUTES".to_string(), "oops".to_string())].into();
        assert!(ResourceBuilder::new("h", "u", &bad, &BTreeMap::new())
            .unwrap_err()
            .contains("OTEL_RESOURCE_ATTRIBUTES"));
    }
}
