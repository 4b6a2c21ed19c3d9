//! The normalized record model: everything the agent emits is a `Record`.
//!
//! The JSON form is a public contract (Kafka consumers depend on it): it is
//! versioned by `schema`, described by `schemas/record.v1.json` and
//! `docs/records.md`. Additive changes (new kinds, new fields, new keys in
//! `domain`) keep v1; anything that renames or retypes bumps the version.

use std::sync::Arc;
use std::time::SystemTime;

use serde::ser::{SerializeMap, SerializeStruct};
use serde::{Serialize, Serializer};

pub(crate) mod info;
pub mod kind;
pub mod mapping;
pub mod samples;

pub use crate::value::{TypedValue, Unit};
pub use kind::{KindSpec, Subject, Switch};

pub const SCHEMA: &str = "virtpulse.record/v1";

/// libvirt's domain states (`virDomainState`), by code: the one table of
/// their names.
pub const DOMAIN_STATES: &[&str] =
    &["nostate", "running", "blocked", "paused", "shutdown", "shutoff", "crashed", "pmsuspended"];

/// What a record describes: a handle on its kind's description (see
/// `kind`), compared and serialized by name.
#[derive(Clone, Copy)]
pub struct RecordKind(&'static KindSpec);

impl RecordKind {
    pub const fn of(spec: &'static KindSpec) -> Self {
        RecordKind(spec)
    }

    pub fn name(self) -> &'static str {
        self.0.name
    }

    pub fn spec(self) -> &'static KindSpec {
        self.0
    }
}

impl std::ops::Deref for RecordKind {
    type Target = KindSpec;
    fn deref(&self) -> &KindSpec {
        self.0
    }
}

impl PartialEq for RecordKind {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self.0, other.0) || self.0.name == other.0.name
    }
}

impl Eq for RecordKind {}

impl std::hash::Hash for RecordKind {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.0.name.hash(h)
    }
}

impl std::fmt::Debug for RecordKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.name)
    }
}

impl Serialize for RecordKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.name)
    }
}

/// A libvirt event (or a resync after a reconnect): see `Record::event`.
/// Counted by the sinks, never mapped key by key.
pub static EVENT: KindSpec = KindSpec {
    name: "event",
    title: "Events",
    subject: Subject::Domain,
    prefix: "libvirt_",
    otlp_namespace: "libvirt.domain",
    is_event: true,
    ..KindSpec::EMPTY
};

#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    /// Shared between records: the same keys come back every collection.
    pub key: Arc<str>,
    pub value: TypedValue,
    pub unit: Unit,
}

/// Descriptive data about a domain, read from its XML on a slow timer and
/// shared by every record of that domain.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DomainInfo {
    /// Hypervisor type from `<domain type=...>` (kvm, qemu, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub virt_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub os_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub machine: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_memory_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub persistent: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub autostart: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub openstack: Option<OpenStackInfo>,
}

/// OpenStack Nova's instance metadata (`<nova:instance>` in the domain XML).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OpenStackInfo {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flavor: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project_uuid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_uuid: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DomainRef {
    pub name: Arc<str>,
    pub uuid: Arc<str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info: Option<Arc<DomainInfo>>,
}

/// A storage pool's identity.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PoolRef {
    pub name: Arc<str>,
    pub uuid: Arc<str>,
}

/// The object of a non-domain event (network, storage pool, node device,
/// secret), or of a network or node device record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ObjectRef {
    pub name: Arc<str>,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub uuid: Arc<str>,
}

/// What an event record is about, with what a consumer needs to de-duplicate.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventInfo {
    /// domain, network, storage_pool, node_device, secret, qemu_monitor.
    pub family: &'static str,
    /// The libvirt callback: lifecycle, io_error_reason, block_job_2, ...;
    /// `resync` for the state records emitted after (re)connecting.
    pub name: &'static str,
    /// The event's main kind as a stable name (lifecycle: started, stopped...;
    /// watchdog: its action; block jobs: the job type ...), empty if none.
    #[serde(rename = "type")]
    pub kind: String,
    /// The secondary name (lifecycle detail, block job status ...), empty if none.
    pub detail: String,
    /// Increases by one per event within one agent run.
    pub seq: u64,
    /// Unique across agent runs: `<agent run id>-<seq>`.
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<ObjectRef>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Record {
    pub schema: &'static str,
    pub kind: RecordKind,
    #[serde(serialize_with = "serialize_time")]
    pub time: SystemTime,
    pub host: Arc<str>,
    pub libvirt_uri: Arc<str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<DomainRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool: Option<PoolRef>,
    /// The object of a record about something other than a domain, a pool
    /// or the host (a virtual network, a node device).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<ObjectRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<EventInfo>,
    #[serde(serialize_with = "serialize_fields")]
    pub fields: Vec<Field>,
}

/// Who and where, stamped on every record.
#[derive(Debug, Clone)]
pub struct Identity {
    pub host: Arc<str>,
    pub uri: Arc<str>,
}

impl Record {
    /// A record of this kind from this host, with nothing in it yet.
    pub fn new(identity: &Identity, kind: RecordKind, time: SystemTime) -> Self {
        Record {
            schema: SCHEMA,
            kind,
            time,
            host: identity.host.clone(),
            libvirt_uri: identity.uri.clone(),
            domain: None,
            pool: None,
            object: None,
            event: None,
            fields: Vec::new(),
        }
    }

    pub fn field(&self, key: &str) -> Option<&TypedValue> {
        self.fields.iter().find(|f| &*f.key == key).map(|f| &f.value)
    }

    pub fn to_json(&self) -> String {
        // Serialization of this model cannot fail (no maps with non-string
        // keys, no failing Serialize impls); the fallback keeps it panic-free.
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"schema\":\"{SCHEMA}\",\"error\":\"{e}\"}}"))
    }
}

fn serialize_time<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_nanos(*t))
}

struct FieldBody<'a>(&'a Field);

impl Serialize for FieldBody<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let f = self.0;
        let mut st = s.serialize_struct("Field", 3)?;
        st.serialize_field("type", f.value.type_name())?;
        match &f.value {
            TypedValue::Int(v) => st.serialize_field("value", v)?,
            TypedValue::UInt(v) => st.serialize_field("value", v)?,
            TypedValue::LLong(v) => st.serialize_field("value", v)?,
            TypedValue::ULLong(v) => st.serialize_field("value", v)?,
            // JSON has no NaN/Inf: such doubles are written as null.
            TypedValue::Double(v) if v.is_finite() => st.serialize_field("value", v)?,
            TypedValue::Double(_) => st.serialize_field("value", &Option::<f64>::None)?,
            TypedValue::Boolean(v) => st.serialize_field("value", v)?,
            TypedValue::String(v) => st.serialize_field("value", v)?,
        }
        st.serialize_field("unit", &f.unit)?;
        st.end()
    }
}

fn serialize_fields<S: Serializer>(fields: &[Field], s: S) -> Result<S::Ok, S::Error> {
    let mut map = s.serialize_map(Some(fields.len()))?;
    for f in fields {
        map.serialize_entry(&*f.key, &FieldBody(f))?;
    }
    map.end()
}

/// What one collector run produced. `snapshot` batches replace everything a
/// sink holds from the same source (series of vanished domains disappear).
#[derive(Debug, Default)]
pub struct Batch {
    pub source: &'static str,
    pub snapshot: bool,
    /// New information: every sink gets these.
    pub records: Vec<Record>,
    /// Part of the current state but already delivered in an earlier batch
    /// (a completed job kept on view): snapshot sinks show them, stream
    /// sinks skip them.
    pub retained: Vec<Record>,
    /// How long a snapshot stays valid if no newer one arrives.
    pub ttl: Option<std::time::Duration>,
    /// The snapshot has a record for every domain the agent watches: a
    /// domain missing from it is gone, and sinks forget what they keep per
    /// domain.
    pub lists_every_domain: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn json_form_is_stable() {
        static DOMAIN_STATS: KindSpec = KindSpec { name: "domain_stats", ..KindSpec::EMPTY };
        let identity = Identity { host: "hv1".into(), uri: "qemu:///system".into() };
        let time = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let r = Record {
            domain: Some(DomainRef {
                name: "web \"1\"".into(),
                uuid: "0f0e".into(),
                info: Some(Arc::new(DomainInfo { vcpus: Some(2), persistent: Some(true), ..Default::default() })),
            }),
            fields: vec![
                Field { key: "cpu.time".into(), value: TypedValue::ULLong(5), unit: Unit::Nanoseconds },
                Field { key: "x".into(), value: TypedValue::Double(f64::NAN), unit: Unit::Unknown },
            ],
            ..Record::new(&identity, RecordKind::of(&DOMAIN_STATS), time)
        };
        assert_eq!(
            r.to_json(),
            r#"{"schema":"virtpulse.record/v1","kind":"domain_stats","time":"2023-11-14T22:13:20.123000000Z","host":"hv1","libvirt_uri":"qemu:///system","domain":{"name":"web \"1\"","uuid":"0f0e","info":{"vcpus":2,"persistent":true}},"fields":{"cpu.time":{"type":"ullong","value":5,"unit":"nanoseconds"},"x":{"type":"double","value":null,"unit":"unknown"}}}"#
        );
    }
}
