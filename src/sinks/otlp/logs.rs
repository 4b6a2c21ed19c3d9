//! Event records -> OTLP log records (OpenTelemetry events: `event_name`
//! set, no trace context).

use std::time::SystemTime;

use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, SeverityNumber};

use super::metrics::unix_nanos;
use super::resource::{kv, kv_any};
use crate::record::{EventInfo, Record};
use crate::value::TypedValue;

/// How bad an event is. Errors: the guest or its I/O failed. Warnings: the
/// guest or a job may need attention. Everything else is information.
pub(crate) fn severity(e: &EventInfo) -> SeverityNumber {
    let (kind, detail) = (e.kind.as_str(), e.detail.as_str());
    match (e.family, e.name) {
        ("domain", "lifecycle") => match (kind, detail) {
            ("crashed", _) | ("stopped", "crashed" | "failed") => SeverityNumber::Error,
            ("suspended", "ioerror" | "watchdog" | "api_error" | "postcopy_failed")
            | ("resumed", "postcopy_failed") => SeverityNumber::Warn,
            _ => SeverityNumber::Info,
        },
        ("domain", "io_error" | "io_error_reason" | "control_error" | "memory_failure") => SeverityNumber::Error,
        ("domain", "watchdog") => SeverityNumber::Warn,
        ("domain", "block_job" | "block_job_2") if detail == "failed" => SeverityNumber::Warn,
        ("domain", "block_threshold" | "device_removal_failed") => SeverityNumber::Warn,
        ("domain", "disk_change") => SeverityNumber::Warn,
        ("domain", "resync") => match kind {
            "crashed" => SeverityNumber::Error,
            "paused" if matches!(detail, "ioerror" | "watchdog" | "crashed" | "api_error") => SeverityNumber::Warn,
            _ => SeverityNumber::Info,
        },
        _ => SeverityNumber::Info,
    }
}

fn severity_text(s: SeverityNumber) -> &'static str {
    match s {
        SeverityNumber::Error => "ERROR",
        SeverityNumber::Warn => "WARN",
        _ => "INFO",
    }
}

fn value(v: &TypedValue) -> any_value::Value {
    match v {
        TypedValue::Int(i) => any_value::Value::IntValue(i64::from(*i)),
        TypedValue::UInt(i) => any_value::Value::IntValue(i64::from(*i)),
        TypedValue::LLong(i) => any_value::Value::IntValue(*i),
        // Beyond i64 only as a double: OTLP has no unsigned integers.
        TypedValue::ULLong(i) => match i64::try_from(*i) {
            Ok(i) => any_value::Value::IntValue(i),
            Err(_) => any_value::Value::DoubleValue(*i as f64),
        },
        TypedValue::Double(d) => any_value::Value::DoubleValue(*d),
        TypedValue::Boolean(b) => any_value::Value::BoolValue(*b),
        TypedValue::String(s) => any_value::Value::StringValue(s.to_string()),
    }
}

/// "domain web1: lifecycle stopped (crashed)".
fn body(r: &Record, e: &EventInfo) -> String {
    let subject = match (&r.domain, &e.object) {
        (Some(d), _) => format!("domain {}", d.name),
        (None, Some(o)) => format!("{} {}", e.family.replace('_', " "), o.name),
        (None, None) => e.family.to_string(),
    };
    let mut s = format!("{subject}: {}", e.name);
    if !e.kind.is_empty() {
        s.push(' ');
        s.push_str(&e.kind);
    }
    if !e.detail.is_empty() {
        s.push_str(&format!(" ({})", e.detail));
    }
    s
}

/// The log record of an event record; `None` for other kinds.
pub(crate) fn log_record(r: &Record, observed: SystemTime) -> Option<LogRecord> {
    let e = r.event.as_ref()?;
    let sev = severity(e);
    let mut attributes: Vec<KeyValue> = Vec::with_capacity(r.fields.len() + 10);
    attributes.push(kv("libvirt.event.family", e.family));
    attributes.push(kv("libvirt.event.name", e.name));
    if !e.kind.is_empty() {
        attributes.push(kv("libvirt.event.type", e.kind.clone()));
    }
    if !e.detail.is_empty() {
        attributes.push(kv("libvirt.event.detail", e.detail.clone()));
    }
    attributes.push(kv("libvirt.event.id", e.id.clone()));
    attributes.push(kv_any("libvirt.event.seq", any_value::Value::IntValue(i64::try_from(e.seq).unwrap_or(i64::MAX))));
    if let Some(d) = &r.domain {
        attributes.push(kv("libvirt.domain.name", &*d.name));
        attributes.push(kv("libvirt.domain.uuid", &*d.uuid));
    }
    if let Some(o) = &e.object {
        attributes.push(kv("libvirt.object.name", &*o.name));
        if !o.uuid.is_empty() {
            attributes.push(kv("libvirt.object.uuid", &*o.uuid));
        }
    }
    for f in &r.fields {
        attributes.push(kv_any(format!("libvirt.event.field.{}", f.key), value(&f.value)));
    }
    Some(LogRecord {
        time_unix_nano: unix_nanos(r.time),
        observed_time_unix_nano: unix_nanos(observed),
        severity_number: sev as i32,
        severity_text: severity_text(sev).to_string(),
        body: Some(AnyValue { value: Some(any_value::Value::StringValue(body(r, e))) }),
        attributes,
        dropped_attributes_count: 0,
        flags: 0,
        trace_id: Vec::new(),
        span_id: Vec::new(),
        event_name: format!("libvirt.{}.{}", e.family, e.name),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{DomainRef, Field, Identity, RecordKind, Unit, EVENT};

    fn event(name: &'static str, kind: &str, detail: &str, fields: Vec<(&str, TypedValue)>) -> Record {
        let identity = Identity { host: "h".into(), uri: "u".into() };
        let time = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(5);
        Record {
            domain: Some(DomainRef { name: "vm1".into(), uuid: "u-1".into(), info: None }),
            event: Some(EventInfo {
                family: "domain",
                name,
                kind: kind.into(),
                detail: detail.into(),
                seq: 7,
                id: "run-7".into(),
                object: None,
            }),
            fields: fields.into_iter().map(|(k, v)| Field { key: k.into(), value: v, unit: Unit::Unknown }).collect(),
            ..Record::new(&identity, RecordKind::of(&EVENT), time)
        }
    }

    #[test]
    fn events_become_log_records_with_severity_and_fields() {
        let r = event("lifecycle", "stopped", "crashed", vec![("event", TypedValue::Int(5))]);
        let l = log_record(&r, SystemTime::now()).unwrap();
        assert_eq!(l.event_name, "libvirt.domain.lifecycle");
        assert_eq!((l.severity_number, l.severity_text.as_str()), (SeverityNumber::Error as i32, "ERROR"));
        assert_eq!(l.time_unix_nano, 5_000_000_000);
        assert!(l.trace_id.is_empty());
        let body = match l.body.and_then(|b| b.value) {
            Some(any_value::Value::StringValue(s)) => s,
            other => panic!("{other:?}"),
        };
        assert_eq!(body, "domain vm1: lifecycle stopped (crashed)");
        let field = l.attributes.iter().find(|a| a.key == "libvirt.event.field.event").unwrap();
        assert_eq!(field.value.as_ref().unwrap().value, Some(any_value::Value::IntValue(5)));
        assert!(l.attributes.iter().any(|a| a.key == "libvirt.domain.uuid"));

        let info = |n, k: &str, d: &str| severity(event(n, k, d, vec![]).event.as_ref().unwrap());
        assert_eq!(info("lifecycle", "started", "booted"), SeverityNumber::Info);
        assert_eq!(info("lifecycle", "suspended", "ioerror"), SeverityNumber::Warn);
        assert_eq!(info("watchdog", "reset", ""), SeverityNumber::Warn);
        assert_eq!(info("io_error_reason", "pause", "enospc"), SeverityNumber::Error);
        assert_eq!(info("block_job_2", "copy", "failed"), SeverityNumber::Warn);
        assert_eq!(info("block_job_2", "copy", "completed"), SeverityNumber::Info);
        assert_eq!(info("balloon_change", "", ""), SeverityNumber::Info);
    }
}
