//! Kafka sink: events at least once (disk spool, acknowledged by the
//! broker), metric snapshots best effort.
//!
//! Two OS threads: the intake writes events to the spool as they come from
//! the router; the sender feeds librdkafka from the spool and acknowledges
//! spooled events when their delivery reports arrive. A broker outage only
//! grows the spool (bounded by size and age, drops counted); a restart,
//! even after SIGKILL, resends what was not acknowledged.

pub(crate) mod intake;
pub mod message;
pub(crate) mod producer;
pub(crate) mod sender;
pub mod spool;
pub(crate) mod stats;

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{BaseProducer, Producer, ThreadedProducer};
use rdkafka::ClientConfig;

pub(crate) mod config;

use crate::router::SinkQueue;
use crate::sinks::{BoxFuture, Consumes, Running, SinkPlugin};
pub use config::KafkaConfig;
use message::Topics;
use producer::{client_config, describe_config_error, Mailbox, SinkContext};
use spool::{Spool, SpoolConfig, SyncPolicy};
use stats::{DropCause, KafkaStats};

/// How long the start-up check waits for the brokers.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where records go; `kinds` are the kinds of metric records (topic names
/// when `topic_per_family`).
fn topics(cfg: &KafkaConfig, kinds: &[&'static str]) -> Topics {
    Topics {
        events: cfg.events_topic.clone(),
        metrics: cfg.metrics_topic.clone(),
        per_family: cfg.topic_per_family,
        kinds: kinds.to_vec(),
    }
}

fn client_id(host: &str) -> String {
    format!("virtpulse-{host}")
}

/// Validates what only librdkafka can (property names and values) without
/// connecting: for `--check-config` and before start. The error names the key.
pub fn check(cfg: &KafkaConfig) -> Result<(), String> {
    let c = client_config(cfg, "virtpulse-check")?;
    c.create::<BaseProducer>().map(|_| ()).map_err(|e| describe_config_error(&e))
}

pub struct KafkaSink {
    pub stats: Arc<KafkaStats>,
    threads: Vec<JoinHandle<()>>,
}

impl KafkaSink {
    /// Waits for both threads (the router must be gone so the intake ends);
    /// the sender gives in-flight messages up to `shutdown_timeout`.
    pub fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// The Kafka sink in the registry.
pub struct KafkaPlugin;

impl SinkPlugin for KafkaPlugin {
    type Config = KafkaConfig;
    const NAME: &'static str = "kafka";
    const METRICS: &'static [crate::selfmon::MetricDesc] = stats::METRICS;

    fn queue_capacity(&self, cfg: &KafkaConfig) -> usize {
        cfg.queue_capacity
    }

    fn when_full(&self, cfg: &KafkaConfig) -> crate::router::WhenFull {
        cfg.when_full
    }

    fn consumes(&self, cfg: &KafkaConfig) -> Consumes {
        Consumes { metrics: false, records: cfg.metrics, durable_events: true }
    }

    fn check(&self, cfg: &KafkaConfig, _: &crate::sinks::CheckContext) -> Result<(), String> {
        check(cfg)
    }

    fn start(
        &self,
        cfg: KafkaConfig,
        queue: SinkQueue,
        ctx: crate::sinks::SinkContext,
    ) -> BoxFuture<'static, anyhow::Result<Running>> {
        Box::pin(async move {
            let kinds: Vec<&'static str> = ctx.catalog.kinds.iter().filter(|k| !k.is_event).map(|k| k.name).collect();
            let sink = start(&cfg, &ctx.hostname, &kinds, queue, tokio::runtime::Handle::current())?;
            tracing::info!(brokers = %cfg.brokers.join(","), events_topic = %cfg.events_topic, spool = %cfg.spool_dir.display(), "Kafka sink started");
            let report: Arc<dyn crate::selfmon::Report> = sink.stats.clone();
            Ok(Running {
                name: "kafka",
                report: Some(report),
                stop_within: cfg.shutdown_timeout + Duration::from_secs(2),
                // The sender gives messages in flight up to shutdown_timeout itself.
                stop: Box::new(move |deadline| {
                    Box::pin(async move {
                        if tokio::time::timeout(deadline, tokio::task::spawn_blocking(move || sink.join()))
                            .await
                            .is_err()
                        {
                            tracing::warn!("the Kafka sink did not stop in time; undelivered events stay in the spool");
                        }
                    })
                }),
            })
        })
    }
}

/// Opens the spool, creates the producer and starts the threads. Fails on
/// what will not fix itself (bad properties, unusable spool directory); an
/// unreachable broker is logged and waited for, with events spooled.
pub fn start(
    cfg: &KafkaConfig,
    host: &str,
    kinds: &[&'static str],
    queue: SinkQueue,
    runtime: tokio::runtime::Handle,
) -> anyhow::Result<KafkaSink> {
    let stats = Arc::new(KafkaStats::default());
    let spool_cfg = SpoolConfig {
        dir: cfg.spool_dir.clone(),
        max_bytes: cfg.spool_max_bytes.0,
        max_age: cfg.spool_max_age,
        sync: SyncPolicy::new(cfg.spool_sync, cfg.spool_sync_interval),
    };
    let (spool, recovery) = Spool::open(spool_cfg).map_err(|e| {
        anyhow::anyhow!(
            "cannot open the Kafka spool at {} (sinks.kafka.spool_dir): {e}; the directory must be writable by the agent",
            cfg.spool_dir.display()
        )
    })?;
    if recovery.pending > 0 || recovery.corrupt > 0 {
        tracing::info!(
            sink = "kafka",
            pending = recovery.pending,
            lost_to_damage = recovery.corrupt,
            dir = %cfg.spool_dir.display(),
            "replaying events spooled by an earlier run before new ones"
        );
    }
    stats.dropped(DropCause::SpoolCorrupt, recovery.corrupt);
    stats.set_spool(recovery.pending, spool.bytes(), None);
    let spool = Arc::new(Mutex::new(spool));
    let mailbox = Arc::new(Mailbox::default());
    let client = client_config(cfg, &client_id(host)).map_err(|e| anyhow::anyhow!(e))?;
    let make_producer: sender::MakeProducer = {
        let (client, mailbox, stats) = (client.clone(), mailbox.clone(), stats.clone());
        Box::new(move || {
            client.create_with_context::<_, ThreadedProducer<_>>(SinkContext::new(mailbox.clone(), stats.clone()))
        })
    };
    let producer = make_producer().map_err(|e| anyhow::anyhow!(describe_config_error(&e)))?;

    let probe_cfg = cfg.clone();
    let probe_topics = topics(cfg, kinds);
    let probe_client = client.clone();
    let sink_stats = queue.stats.clone();
    let intake = intake::Intake {
        queue,
        spool: spool.clone(),
        mailbox: mailbox.clone(),
        stats: stats.clone(),
        topics: topics(cfg, kinds),
        cloudevents: cfg.cloudevents,
        metrics: cfg.metrics,
    };
    let sender = sender::Sender {
        producer,
        make_producer,
        spool,
        mailbox,
        stats: stats.clone(),
        sink_stats,
        topics: topics(cfg, kinds),
        cloudevents: cfg.cloudevents,
        max_in_flight: cfg.max_in_flight,
        shutdown_timeout: cfg.shutdown_timeout,
        spool_dir: cfg.spool_dir.clone(),
        brokers: cfg.brokers.join(","),
        message_timeout: cfg.message_timeout,
    };
    let threads = vec![
        std::thread::Builder::new().name("kafka-intake".into()).spawn(move || intake.run())?,
        std::thread::Builder::new().name("kafka-sender".into()).spawn(move || sender.run())?,
    ];
    // The probe only reports (and creates topics when asked): it never
    // holds up the start, and tries again until the brokers and topics are there.
    std::thread::Builder::new().name("kafka-probe".into()).spawn(move || {
        let mut wait = Duration::from_secs(5);
        let mut reported = false;
        while !probe(&probe_cfg, &probe_topics, &probe_client, &runtime, !reported) {
            reported = true;
            std::thread::sleep(wait);
            wait = (wait * 2).min(Duration::from_secs(60));
        }
    })?;
    Ok(KafkaSink { stats, threads })
}

/// Checks that the brokers answer and the topics exist (creating them when
/// configured); says plainly what is wrong if not (at error level the first
/// time, then at debug). Returns true once all is well.
fn probe(
    cfg: &KafkaConfig,
    topics: &Topics,
    client: &ClientConfig,
    runtime: &tokio::runtime::Handle,
    first: bool,
) -> bool {
    macro_rules! problem {
        ($($t:tt)*) => {{
            if first {
                tracing::error!($($t)*);
            } else {
                tracing::debug!($($t)*);
            }
            return false;
        }};
    }
    let brokers = cfg.brokers.join(",");
    let producer: BaseProducer = match client.create() {
        Ok(p) => p,
        Err(e) => problem!(sink = "kafka", "{}", describe_config_error(&e)),
    };
    let metadata = match producer.client().fetch_metadata(None, PROBE_TIMEOUT) {
        Ok(m) => m,
        Err(e) => problem!(
            sink = "kafka",
            brokers = %brokers,
            error = %e,
            "cannot reach the Kafka brokers (sinks.kafka.brokers): events are kept in the spool until they can be delivered; check the addresses, the network and the brokers' advertised listeners"
        ),
    };
    let existing: Vec<&str> = metadata.topics().iter().filter(|t| t.error().is_none()).map(|t| t.name()).collect();
    let wanted = topics.all();
    let missing: Vec<&String> = wanted.iter().filter(|t| !existing.contains(&t.as_str())).collect();
    if missing.is_empty() {
        tracing::info!(sink = "kafka", brokers = %brokers, "Kafka brokers reachable; topics present");
        return true;
    }
    if !cfg.create_topics {
        problem!(
            sink = "kafka",
            missing = ?missing,
            "Kafka topics missing: create them, or set sinks.kafka.create_topics = true; events are spooled until the topics exist"
        );
    }
    let admin: AdminClient<DefaultClientContext> = match client.create() {
        Ok(a) => a,
        Err(e) => problem!(sink = "kafka", error = %e, "cannot create the Kafka admin client"),
    };
    let new: Vec<NewTopic> = missing
        .iter()
        .map(|t| NewTopic::new(t, cfg.topic_partitions, TopicReplication::Fixed(cfg.topic_replication)))
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(PROBE_TIMEOUT));
    let results = match runtime.block_on(admin.create_topics(&new, &opts)) {
        Ok(r) => r,
        Err(e) => problem!(sink = "kafka", error = %e, "cannot create Kafka topics"),
    };
    let mut all_there = true;
    for r in results {
        match r {
            Ok(t) => {
                tracing::info!(sink = "kafka", topic = %t, partitions = cfg.topic_partitions, "created Kafka topic")
            }
            Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => {
                all_there = false;
                tracing::error!(sink = "kafka", topic = %t, error = %code, "cannot create Kafka topic")
            }
        }
    }
    all_there
}
