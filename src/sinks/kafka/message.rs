//! A record as a Kafka message (topic, key, headers, JSON value), and the
//! message's compact form in the spool.

use std::time::UNIX_EPOCH;

use crate::record::{Record, SCHEMA};

/// Where records go.
#[derive(Debug, Clone)]
pub struct Topics {
    pub events: String,
    pub metrics: String,
    /// `<events>.<family>` and `<metrics>.<kind>` instead of one topic each.
    pub per_family: bool,
    /// The kinds of metric records (topic names when `per_family`).
    pub kinds: Vec<&'static str>,
}

impl Topics {
    pub fn for_record(&self, r: &Record) -> String {
        match (&r.event, self.per_family) {
            (Some(ev), true) => format!("{}.{}", self.events, ev.family),
            (Some(_), false) => self.events.clone(),
            (None, true) => format!("{}.{}", self.metrics, r.kind.name()),
            (None, false) => self.metrics.clone(),
        }
    }

    /// Every topic this configuration can write to.
    pub fn all(&self) -> Vec<String> {
        if !self.per_family {
            return vec![self.events.clone(), self.metrics.clone()];
        }
        let families = ["domain", "network", "storage_pool", "node_device", "secret", "qemu_monitor"];
        let mut v: Vec<String> = families.iter().map(|f| format!("{}.{f}", self.events)).collect();
        v.extend(self.kinds.iter().map(|k| format!("{}.{k}", self.metrics)));
        v
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    /// The domain's UUID (a VM's records stay in order within one
    /// partition); the host for host-level records.
    pub key: String,
    pub headers: Vec<(String, String)>,
    pub value: Vec<u8>,
    /// The record's time (Unix ms), also the Kafka message timestamp.
    pub time_ms: u64,
}

/// Builds the message of one record. `cloudevents` adds the CloudEvents
/// Kafka protocol binding headers (binary content mode).
pub fn to_message(r: &Record, topics: &Topics, cloudevents: bool) -> Message {
    let key = r.domain.as_ref().map(|d| d.uuid.to_string()).unwrap_or_else(|| r.host.to_string());
    let time_ms = r.time.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let kind = r.kind.name();
    let mut headers = vec![
        ("content-type".to_string(), "application/json".to_string()),
        ("virtpulse_schema".to_string(), SCHEMA.to_string()),
        ("virtpulse_kind".to_string(), kind.to_string()),
        ("virtpulse_host".to_string(), r.host.to_string()),
    ];
    if let Some(ev) = &r.event {
        headers.push(("virtpulse_event_id".to_string(), ev.id.clone()));
        headers.push(("virtpulse_event".to_string(), format!("{}.{}", ev.family, ev.name)));
    }
    if cloudevents {
        let (ce_type, ce_id) = match &r.event {
            Some(ev) => (format!("io.virtpulse.event.{}.{}", ev.family, ev.name), ev.id.clone()),
            None => {
                let nanos = r.time.duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
                (format!("io.virtpulse.{kind}"), format!("{}/{kind}/{key}/{nanos}", r.host))
            }
        };
        headers.push(("ce_specversion".to_string(), "1.0".to_string()));
        headers.push(("ce_id".to_string(), ce_id));
        headers.push(("ce_source".to_string(), format!("virtpulse://{}", r.host)));
        headers.push(("ce_type".to_string(), ce_type));
        headers.push(("ce_time".to_string(), humantime::format_rfc3339_nanos(r.time).to_string()));
        let subject = r
            .domain
            .as_ref()
            .map(|d| d.uuid.to_string())
            .or_else(|| r.pool.as_ref().map(|p| p.name.to_string()))
            .or_else(|| r.event.as_ref().and_then(|e| e.object.as_ref()).map(|o| o.name.to_string()));
        if let Some(s) = subject {
            headers.push(("ce_subject".to_string(), s));
        }
    }
    Message { topic: topics.for_record(r), key, headers, value: r.to_json().into_bytes(), time_ms }
}

const FORMAT: u8 = 1;

fn put(buf: &mut Vec<u8>, bytes: &[u8]) {
    buf.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    buf.extend_from_slice(bytes);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = u32::from_le_bytes(self.take(4)?.try_into().ok()?) as usize;
        self.take(n)
    }

    fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }
}

impl Message {
    /// The spool form: format byte, then length-prefixed topic, key, headers
    /// and value (the record time is the spool frame's own).
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(self.value.len() + 256);
        buf.push(FORMAT);
        put(&mut buf, self.topic.as_bytes());
        put(&mut buf, self.key.as_bytes());
        buf.extend_from_slice(&(self.headers.len() as u32).to_le_bytes());
        for (k, v) in &self.headers {
            put(&mut buf, k.as_bytes());
            put(&mut buf, v.as_bytes());
        }
        put(&mut buf, &self.value);
        buf
    }

    pub fn decode(data: &[u8], time_ms: u64) -> Option<Message> {
        let mut r = Reader(data);
        if r.take(1)? != [FORMAT] {
            return None;
        }
        let topic = r.string()?;
        let key = r.string()?;
        let n = u32::from_le_bytes(r.take(4)?.try_into().ok()?) as usize;
        let mut headers = Vec::with_capacity(n.min(64));
        for _ in 0..n {
            headers.push((r.string()?, r.string()?));
        }
        let value = r.bytes()?.to_vec();
        r.0.is_empty().then_some(Message { topic, key, headers, value, time_ms })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{DomainRef, EventInfo, Identity, RecordKind, EVENT};
    use std::time::{Duration, SystemTime};

    fn event() -> Record {
        let identity = Identity { host: "hv1".into(), uri: "qemu:///system".into() };
        let time = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        Record {
            domain: Some(DomainRef { name: "vm".into(), uuid: "u-1".into(), info: None }),
            event: Some(EventInfo {
                family: "domain",
                name: "lifecycle",
                kind: "started".into(),
                detail: "booted".into(),
                seq: 7,
                id: "run-7".into(),
                object: None,
            }),
            ..Record::new(&identity, RecordKind::of(&EVENT), time)
        }
    }

    fn topics(per_family: bool) -> Topics {
        Topics {
            events: "libvirt.events".into(),
            metrics: "libvirt.metrics".into(),
            per_family,
            kinds: crate::registry::catalog().kinds.iter().filter(|k| !k.is_event).map(|k| k.name).collect(),
        }
    }

    #[test]
    fn event_message_has_key_headers_and_topic() {
        let m = to_message(&event(), &topics(false), true);
        assert_eq!(m.topic, "libvirt.events");
        assert_eq!(m.key, "u-1");
        assert_eq!(m.time_ms, 1_700_000_000_123);
        let h = |k: &str| m.headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(h("virtpulse_event_id"), Some("run-7"));
        assert_eq!(h("ce_id"), Some("run-7"));
        assert_eq!(h("ce_type"), Some("io.virtpulse.event.domain.lifecycle"));
        assert_eq!(h("ce_source"), Some("virtpulse://hv1"));
        assert_eq!(h("ce_time"), Some("2023-11-14T22:13:20.123000000Z"));
        assert_eq!(to_message(&event(), &topics(true), false).topic, "libvirt.events.domain");
        assert!(to_message(&event(), &topics(false), false).headers.iter().all(|(k, _)| !k.starts_with("ce_")));
    }

    #[test]
    fn host_level_records_are_keyed_by_host() {
        let mut r = event();
        r.event = None;
        r.domain = None;
        r.kind = RecordKind::of(&crate::collectors::node::metrics::NODE);
        r.time = SystemTime::now();
        let m = to_message(&r, &topics(true), true);
        assert_eq!((m.key.as_str(), m.topic.as_str()), ("hv1", "libvirt.metrics.node"));
    }

    #[test]
    fn spool_form_round_trips_and_rejects_damage() {
        let m = to_message(&event(), &topics(false), true);
        let bytes = m.encode();
        assert_eq!(Message::decode(&bytes, m.time_ms), Some(m.clone()));
        assert_eq!(Message::decode(&bytes[..bytes.len() - 1], m.time_ms), None);
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(Message::decode(&longer, m.time_ms), None);
        assert_eq!(Message::decode(&[], 0), None);
    }
}
