//! The independent consumer (tests/tools/kafka_consume.py): kafka-python,
//! a pure-Python Kafka client that shares no code with librdkafka, reads a
//! topic in a consumer group from the beginning. What it saw confirms what
//! the rdkafka-based `kafka::Reader` and the agent's own counters say.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde::Deserialize;

/// The virtualenv's python (scripts/install-kafka-python.sh).
pub fn python() -> PathBuf {
    std::env::var_os("VIRTPULSE_KAFKA_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/virtpulse-test/kafka-python/bin/python"))
}

/// One message as kafka-python read it.
#[derive(Debug, Clone, Deserialize)]
pub struct PyMessage {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub timestamp_ms: Option<i64>,
    /// `ce_id`, else `virtpulse_event_id`, else the value's event.id.
    pub id: Option<String>,
    /// The `virtpulse_event` header (`domain.metadata_change`).
    pub event: Option<String>,
    /// The `virtpulse_kind` header.
    pub kind: Option<String>,
    /// The value's domain.name.
    pub domain: Option<String>,
    pub seq: Option<u64>,
    pub value_sha256: String,
    #[serde(default)]
    pub headers: Option<HashMap<String, String>>,
}

#[derive(Debug, Deserialize)]
struct Summary {
    messages: usize,
    distinct: usize,
    rereads: usize,
    reason: String,
}

/// What one run of the consumer read.
#[derive(Debug, Default)]
pub struct Consumed {
    pub messages: Vec<PyMessage>,
    /// Distinct ids among the counted messages.
    pub distinct: usize,
    /// The expected count was reached before the deadline.
    pub reached: bool,
    /// Messages read again after a rebalance (skipped: not duplicates).
    pub rereads: usize,
    pub stderr: String,
}

impl Consumed {
    /// Event messages (those with an event header), in read order.
    pub fn events(&self) -> impl Iterator<Item = &PyMessage> {
        self.messages.iter().filter(|m| m.event.is_some())
    }

    /// Distinct event ids and, per id, how many copies arrived.
    pub fn copies(&self) -> HashMap<&str, usize> {
        let mut m: HashMap<&str, usize> = HashMap::new();
        for e in self.events() {
            if let Some(id) = e.id.as_deref() {
                *m.entry(id).or_default() += 1;
            }
        }
        m
    }

    /// Copies beyond the first of each event id.
    pub fn duplicates(&self) -> usize {
        self.copies().values().map(|n| n - 1).sum()
    }

    /// Duplicates whose bytes differ from their first copy (must be none:
    /// a duplicate is the same message sent again).
    pub fn differing_duplicates(&self) -> Vec<&str> {
        let mut first: HashMap<&str, &str> = HashMap::new();
        let mut bad = Vec::new();
        for e in self.events() {
            if let Some(id) = e.id.as_deref() {
                if let Some(sha) = first.insert(id, &e.value_sha256) {
                    if sha != e.value_sha256 {
                        bad.push(id);
                    }
                }
            }
        }
        bad
    }
}

/// What to read until.
pub struct Until<'a> {
    /// Distinct ids to wait for (0: read until the deadline).
    pub distinct: usize,
    /// Only messages whose `virtpulse_event` is one of these count (empty: all with an id).
    pub events: &'a [&'a str],
    pub deadline: Duration,
    /// Keep reading this long once the count is reached (late duplicates).
    pub settle: Duration,
}

/// A consumer group name no earlier run used.
pub fn fresh_group(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("virtpulse-tests-py-{tag}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// Runs the consumer to the end (count reached, or deadline) and returns
/// what it printed.
pub fn consume(broker: &str, topic: &str, group: &str, until: &Until) -> Consumed {
    let py = python();
    assert!(
        py.exists(),
        "{} missing: run scripts/install-kafka-python.sh (scripts/install-test-deps.sh)",
        py.display()
    );
    let script = super::project_root().join("tests/tools/kafka_consume.py");
    let mut cmd = Command::new(&py);
    cmd.arg(script)
        .args(["--bootstrap", broker, "--topic", topic, "--group", group])
        .args(["--expect", &until.distinct.to_string()])
        .args(["--deadline", &format!("{:.1}", until.deadline.as_secs_f64())])
        .args(["--settle", &format!("{:.1}", until.settle.as_secs_f64())]);
    for e in until.events {
        cmd.args(["--count-event", e]);
    }
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start kafka_consume.py");
    let stderr = child.stderr.take().unwrap();
    let err_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut s);
        s
    });
    let mut out = Consumed::default();
    let mut summary = None;
    for line in BufReader::new(child.stdout.take().unwrap()).lines().map_while(Result::ok) {
        if line.starts_with("{\"summary\"") {
            summary = Some(serde_json::from_str::<Summary>(&line).expect("summary line"));
        } else {
            out.messages.push(serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}")));
        }
    }
    let status = child.wait().expect("kafka_consume.py");
    out.stderr = err_thread.join().unwrap_or_default();
    let summary =
        summary.unwrap_or_else(|| panic!("kafka_consume.py ended ({status}) without a summary:\n{}", out.stderr));
    assert_eq!(summary.messages, out.messages.len(), "kafka_consume.py: summary vs lines");
    out.distinct = summary.distinct;
    out.reached = summary.reason == "count";
    out.rereads = summary.rereads;
    out
}
