//! A real Kafka-protocol broker (tansu) and a real consumer reading topics
//! back with explicit partition assignment.
//!
//! tansu runs on its in-memory storage: its SQLite engine refuses the
//! idempotent producer (UnknownProducerId on every produce). A restart thus
//! starts empty; `resume` creates the topics again, as a broker that keeps
//! its data would still have them, and readers read what was there before
//! the outage first.

use std::collections::HashMap;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::agent::free_port;
use super::wait_for;

pub fn tansu_bin() -> PathBuf {
    std::env::var_os("VIRTPULSE_TANSU")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/virtpulse-test/tansu/bin/tansu"))
}

pub struct Broker {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Topics created so far (made again after a restart).
    topics: Vec<(String, u32)>,
}

impl Broker {
    pub fn start() -> Broker {
        Self::start_on(free_port())
    }

    pub fn start_on(port: u16) -> Broker {
        let bin = tansu_bin();
        assert!(bin.exists(), "{} missing: run scripts/install-test-deps.sh", bin.display());
        let mut b = Broker { port, dir: tempfile::tempdir().unwrap(), child: None, topics: Vec::new() };
        b.resume();
        b
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts the broker process (again, on the same port and storage).
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "broker already running");
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("broker.log")).unwrap();
        let child = Command::new(tansu_bin())
            .arg("broker")
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start tansu");
        self.child = Some(child);
        let addr = self.address();
        wait_for(Duration::from_secs(20), "the broker to listen", || TcpStream::connect(&addr).ok().map(|_| ()));
        for (name, partitions) in self.topics.clone() {
            self.run_topic_create(&name, partitions);
        }
    }

    /// Kills the broker (an outage, as clients see it).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Creates a topic (and again after each restart).
    pub fn create_topic(&mut self, name: &str, partitions: u32) {
        self.run_topic_create(name, partitions);
        self.topics.push((name.to_string(), partitions));
    }

    fn run_topic_create(&self, name: &str, partitions: u32) {
        let out = Command::new(tansu_bin())
            .args(["topic", "create", name, "--partitions", &partitions.to_string()])
            .args(["--broker", &format!("tcp://{}", self.address())])
            .output()
            .unwrap();
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        // The agent (create_topics = true) may have made it first.
        assert!(out.status.success() || said.contains("already exists"), "topic create {name}: {said}");
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("broker.log")).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- broker log (tail) ----\n{}\n----", tail(&self.log(), 40));
        }
        self.stop();
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// One message read back.
#[derive(Debug, Clone)]
pub struct Received {
    /// Which broker run it was read from (offsets restart with an empty broker).
    pub generation: u32,
    pub partition: i32,
    pub offset: i64,
    pub key: String,
    pub headers: HashMap<String, String>,
    pub timestamp_ms: Option<i64>,
    pub value: serde_json::Value,
}

/// Reads a topic from the beginning of every partition.
pub struct Reader {
    consumer: BaseConsumer,
    generation: u32,
    pub got: Vec<Received>,
}

impl Reader {
    /// A new consumer from the beginning of every partition (after a broker
    /// restart), keeping what was read so far.
    pub fn reconnect(&mut self, broker: &str, topic: &str) {
        let got = std::mem::take(&mut self.got);
        let generation = self.generation + 1;
        *self = Reader::new(broker, topic);
        self.got = got;
        self.generation = generation;
    }

    pub fn new(broker: &str, topic: &str) -> Reader {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", broker)
            .set("group.id", "virtpulse-tests")
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let partitions = wait_for(Duration::from_secs(30), &format!("topic {topic} on the broker"), || {
            let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(5)).ok()?;
            let t = md.topics().iter().find(|t| t.name() == topic && t.error().is_none())?;
            (!t.partitions().is_empty()).then(|| t.partitions().len() as i32)
        });
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
        }
        consumer.assign(&tpl).expect("assign");
        Reader { consumer, generation: 0, got: Vec::new() }
    }

    /// Polls for `wait` and keeps what arrived.
    pub fn poll_for(&mut self, wait: Duration) {
        let end = Instant::now() + wait;
        while Instant::now() < end {
            match self.consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    let headers = m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|h| {
                                    (h.key.to_string(), String::from_utf8_lossy(h.value.unwrap_or_default()).into())
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    let value =
                        serde_json::from_slice(m.payload().unwrap_or_default()).unwrap_or(serde_json::Value::Null);
                    self.got.push(Received {
                        generation: self.generation,
                        partition: m.partition(),
                        offset: m.offset(),
                        key: String::from_utf8_lossy(m.key().unwrap_or_default()).into(),
                        headers,
                        timestamp_ms: m.timestamp().to_millis(),
                        value,
                    });
                }
                // Transport errors (a broker being restarted) are transient.
                Some(Err(_)) => std::thread::sleep(Duration::from_millis(100)),
                None => {}
            }
        }
    }

    /// Polls until `done` holds for what was read, or panics at `timeout`.
    pub fn read_until(&mut self, timeout: Duration, what: &str, done: impl Fn(&[Received]) -> bool) {
        let end = Instant::now() + timeout;
        loop {
            self.poll_for(Duration::from_millis(300));
            if done(&self.got) {
                return;
            }
            assert!(
                Instant::now() < end,
                "timed out after {timeout:?} waiting for {what}; read {} messages",
                self.got.len()
            );
        }
    }
}

/// The agent config for a Kafka sink on `broker` with its spool in `spool`.
pub fn sink_config(broker: &str, spool: &std::path::Path, extra: &str) -> String {
    format!(
        "[sinks.kafka]\nenabled = true\nbrokers = [\"{broker}\"]\ncreate_topics = true\nspool_dir = \"{}\"\nmessage_timeout = \"5s\"\n{extra}\n",
        spool.display()
    )
}
