//! Turns a `RawEvent` into a record: stable names for enum codes (kept next
//! to the raw codes), units for every field, and the envelope's type/detail.

use std::sync::Arc;

use super::names;
use crate::libvirt::events::{Family, RawEvent};
use crate::record::kind::KindSpec;
use crate::record::mapping::unit_of;
use crate::record::{EventInfo, Field, Identity, ObjectRef, Record, RecordKind, Unit, EVENT};
use crate::value::TypedValue;

fn int(ev: &RawEvent, key: &str) -> Option<i64> {
    ev.fields.iter().find(|(k, _)| &**k == key).and_then(|(_, v)| match v {
        TypedValue::Int(i) => Some(i64::from(*i)),
        TypedValue::UInt(u) => Some(i64::from(*u)),
        TypedValue::LLong(l) => Some(*l),
        _ => None,
    })
}

fn string(ev: &RawEvent, key: &str) -> String {
    ev.fields.iter().find(|(k, _)| &**k == key).and_then(|(_, v)| v.as_str()).unwrap_or("").to_string()
}

/// The name function for an enum-coded field of an event, if it is one.
pub fn namer(family: Family, event: &str, key: &str) -> Option<fn(i64) -> String> {
    let f: fn(i64) -> String = match (family, event, key) {
        (Family::Domain, "lifecycle", "event") => names::lifecycle,
        (Family::Domain, "watchdog", "action") => names::watchdog_action,
        (Family::Domain, "io_error" | "io_error_reason", "action") => names::io_error_action,
        (Family::Domain, "graphics", "phase") => names::graphics_phase,
        (Family::Domain, "graphics", "local.family" | "remote.family") => names::graphics_family,
        (Family::Domain, "block_job" | "block_job_2", "type") => names::block_job_type,
        (Family::Domain, "block_job" | "block_job_2", "status") => names::block_job_status,
        (Family::Domain, "disk_change", "reason") => names::disk_change_reason,
        (Family::Domain, "tray_change", "reason") => names::tray_change_reason,
        (Family::Domain, "agent_lifecycle" | "channel_lifecycle", "state") => names::channel_state,
        (Family::Domain, "agent_lifecycle" | "channel_lifecycle", "reason") => names::channel_reason,
        (Family::Domain | Family::Network, "metadata_change", "type") => names::metadata_type,
        (Family::Domain, "memory_failure", "recipient") => names::memory_failure_recipient,
        (Family::Domain, "memory_failure", "action") => names::memory_failure_action,
        (Family::Domain, "resync", "state") => names::domain_state,
        (Family::Network, "lifecycle", "event") => names::network_lifecycle,
        (Family::StoragePool, "lifecycle", "event") => names::pool_lifecycle,
        (Family::NodeDevice, "lifecycle", "event") => names::nodedev_lifecycle,
        (Family::Secret, "lifecycle", "event") => names::secret_lifecycle,
        _ => return None,
    };
    Some(f)
}

fn unit(ev: &RawEvent, key: &str, value: &TypedValue, job_kind: Option<&'static KindSpec>) -> Unit {
    if matches!(value, TypedValue::String(_)) {
        return Unit::Text;
    }
    match (ev.name, key) {
        ("balloon_change", "actual") | ("memory_device_size_change", "size") => Unit::Kibibytes,
        ("rtc_change", "utcoffset") => Unit::Seconds,
        ("block_threshold", "threshold" | "excess") => Unit::Bytes,
        ("migration_iteration", "iteration") | ("qemu_monitor", "micros") => Unit::Count,
        ("qemu_monitor", "seconds") => Unit::UnixSeconds,
        ("job_completed", k) => job_kind.map(|j| unit_of(j, k, value)).unwrap_or(Unit::Unknown),
        ("tunable", _) => Unit::Unknown,
        (
            _,
            "event" | "detail" | "action" | "phase" | "type" | "status" | "reason" | "state" | "recipient" | "flags",
        ) => Unit::Enum,
        (_, "local.family" | "remote.family") => Unit::Enum,
        (_, "vcpu_id") => Unit::Count,
        _ => match value {
            TypedValue::Boolean(_) => Unit::Boolean,
            _ => Unit::Unknown,
        },
    }
}

/// (type, detail) of the envelope.
pub fn classify(ev: &RawEvent) -> (String, String) {
    let name_of = |key: &str| -> String {
        match (namer(ev.family, ev.name, key), int(ev, key)) {
            (Some(f), Some(code)) => f(code),
            _ => String::new(),
        }
    };
    match (ev.family, ev.name) {
        (Family::Domain, "lifecycle") => {
            let (e, d) = (int(ev, "event").unwrap_or(-1), int(ev, "detail").unwrap_or(-1));
            (names::lifecycle(e), names::lifecycle_detail(e, d))
        }
        (Family::Domain, "resync") => {
            let (s, r) = (int(ev, "state").unwrap_or(-1), int(ev, "reason").unwrap_or(-1));
            (names::domain_state(s), names::domain_state_reason(s, r))
        }
        (Family::Domain, "watchdog" | "io_error") => (name_of("action"), String::new()),
        (Family::Domain, "io_error_reason") => (name_of("action"), string(ev, "reason")),
        (Family::Domain, "graphics") => (name_of("phase"), String::new()),
        (Family::Domain, "block_job" | "block_job_2") => (name_of("type"), name_of("status")),
        (Family::Domain, "disk_change" | "tray_change") => (name_of("reason"), String::new()),
        (Family::Domain, "agent_lifecycle" | "channel_lifecycle") => (name_of("state"), name_of("reason")),
        (Family::Domain | Family::Network, "metadata_change") => (name_of("type"), String::new()),
        (Family::Domain, "memory_failure") => (name_of("action"), name_of("recipient")),
        (Family::Network | Family::StoragePool | Family::NodeDevice | Family::Secret, "lifecycle") => {
            (name_of("event"), String::new())
        }
        (Family::QemuMonitor, _) => (string(ev, "event").to_ascii_lowercase(), String::new()),
        _ => (String::new(), String::new()),
    }
}

/// Who and where, and the sequence, stamped on each event record.
pub struct Stamp<'a> {
    pub identity: &'a Identity,
    pub run_id: &'a str,
    pub seq: u64,
    /// The kind whose table gives the units of job statistics
    /// (`job_completed` carries a finished job's).
    pub job_kind: Option<&'static KindSpec>,
}

pub fn to_record(ev: &RawEvent, stamp: Stamp) -> Record {
    let (kind, detail) = classify(ev);
    let mut fields = Vec::with_capacity(ev.fields.len() * 2);
    for (key, value) in &ev.fields {
        if let (Some(f), Some(code)) = (namer(ev.family, ev.name, key), int(ev, key)) {
            fields.push(Field { key: key.clone(), unit: Unit::Enum, value: value.clone() });
            fields.push(Field {
                key: Arc::from(format!("{key}_name")),
                unit: Unit::Text,
                value: TypedValue::String(f(code).into()),
            });
        } else {
            fields.push(Field { key: key.clone(), unit: unit(ev, key, value, stamp.job_kind), value: value.clone() });
        }
    }
    let is_domain = matches!(ev.family, Family::Domain | Family::QemuMonitor);
    let domain = is_domain.then(|| crate::record::DomainRef {
        name: ev.object_name.as_str().into(),
        uuid: ev.object_uuid.as_str().into(),
        info: None,
    });
    let object =
        (!is_domain).then(|| ObjectRef { name: ev.object_name.as_str().into(), uuid: ev.object_uuid.as_str().into() });
    Record {
        domain,
        event: Some(EventInfo {
            family: ev.family.as_str(),
            name: ev.name,
            kind,
            detail,
            seq: stamp.seq,
            id: format!("{}-{}", stamp.run_id, stamp.seq),
            object,
        }),
        fields,
        ..Record::new(stamp.identity, RecordKind::of(&EVENT), ev.time)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Instant, SystemTime};

    fn raw(family: Family, name: &'static str, fields: Vec<(&str, TypedValue)>) -> RawEvent {
        RawEvent {
            family,
            event_id: 0,
            name,
            object_name: "vm1".into(),
            object_uuid: "u1".into(),
            fields: fields.into_iter().map(|(k, v)| (Arc::from(k), v)).collect(),
            time: SystemTime::now(),
            at: Instant::now(),
        }
    }

    fn stamp<'a>(identity: &'a Identity) -> Stamp<'a> {
        Stamp { identity, run_id: "r", seq: 7, job_kind: Some(&crate::collectors::jobs::metrics::DOMAIN_JOB) }
    }

    fn here() -> Identity {
        Identity { host: "h".into(), uri: "qemu:///system".into() }
    }

    #[test]
    fn lifecycle_gets_names_and_keeps_codes() {
        let id = here();
        let r = to_record(
            &raw(Family::Domain, "lifecycle", vec![("event", TypedValue::Int(3)), ("detail", TypedValue::Int(2))]),
            stamp(&id),
        );
        let e = r.event.as_ref().unwrap();
        assert_eq!((e.kind.as_str(), e.detail.as_str()), ("suspended", "ioerror"));
        assert_eq!(e.id, "r-7");
        assert_eq!(r.field("event"), Some(&TypedValue::Int(3)));
        assert_eq!(r.field("event_name"), Some(&TypedValue::String("suspended".into())));
        assert_eq!(r.domain.as_ref().unwrap().name.as_ref(), "vm1");
        let json: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(json["event"]["type"], "suspended");
        assert_eq!(json["fields"]["detail"]["unit"], "enum");
    }

    #[test]
    fn other_events_are_classified() {
        let io = raw(
            Family::Domain,
            "io_error_reason",
            vec![
                ("src_path", TypedValue::String("/x".into())),
                ("dev_alias", TypedValue::String("virtio-disk0".into())),
                ("action", TypedValue::Int(1)),
                ("reason", TypedValue::String("eio".into())),
            ],
        );
        assert_eq!(classify(&io), ("pause".into(), "eio".into()));
        let bj = raw(
            Family::Domain,
            "block_job_2",
            vec![
                ("disk", TypedValue::String("vda".into())),
                ("type", TypedValue::Int(2)),
                ("status", TypedValue::Int(3)),
            ],
        );
        assert_eq!(classify(&bj), ("copy".into(), "ready".into()));
        let net =
            raw(Family::Network, "lifecycle", vec![("event", TypedValue::Int(2)), ("detail", TypedValue::Int(0))]);
        let id = here();
        let r = to_record(&net, stamp(&id));
        assert_eq!(r.event.as_ref().unwrap().kind, "started");
        assert!(r.domain.is_none());
        assert_eq!(r.event.as_ref().unwrap().object.as_ref().unwrap().name.as_ref(), "vm1");
        let b = raw(Family::Domain, "balloon_change", vec![("actual", TypedValue::ULLong(163840))]);
        let r = to_record(&b, stamp(&id));
        assert_eq!(r.fields[0].unit, Unit::Kibibytes);
        let unknown =
            raw(Family::Domain, "lifecycle", vec![("event", TypedValue::Int(40)), ("detail", TypedValue::Int(1))]);
        assert_eq!(classify(&unknown), ("unknown_40".into(), "unknown_1".into()));
    }
}
