//! The librdkafka producer: its configuration, and the context through which
//! librdkafka reports deliveries, broker state and errors.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryResult, ProducerContext};
use rdkafka::statistics::Statistics;
use rdkafka::ClientContext;

use super::config::is_secret_property;
use super::config::KafkaConfig;
use super::stats::KafkaStats;

/// What a message was, handed back with its delivery report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sent {
    Event { seq: u64, time_ms: u64 },
    Metric,
}

/// A delivery report.
#[derive(Debug)]
pub(crate) struct Delivery {
    pub sent: Sent,
    /// `None`: the broker has it.
    pub error: Option<KafkaError>,
}

/// Where librdkafka's threads leave reports for the sender thread.
#[derive(Default)]
pub(crate) struct Mailbox {
    pub inner: Mutex<MailboxInner>,
    pub wake: Condvar,
}

#[derive(Default)]
pub(crate) struct MailboxInner {
    pub deliveries: Vec<Delivery>,
    /// New events were spooled.
    pub new_events: bool,
    /// Latest metric snapshot per source, not yet sent.
    pub metrics: BTreeMap<&'static str, Arc<crate::record::Batch>>,
    /// The intake has ended (shutdown).
    pub intake_done: bool,
    /// librdkafka reported a fatal error: the producer must be replaced.
    pub fatal: bool,
    /// A broker connection came back: retry now rather than after the backoff.
    pub reconnected: bool,
    /// Errors librdkafka reported (not delivery reports) since the sender
    /// last looked: a broker that refuses the producer keeps giving them.
    pub client_errors: u64,
}

impl Mailbox {
    pub(crate) fn post(&self, f: impl FnOnce(&mut MailboxInner)) {
        let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut m);
        drop(m);
        self.wake.notify_all();
    }
}

pub(crate) struct SinkContext {
    pub mailbox: Arc<Mailbox>,
    pub stats: Arc<KafkaStats>,
    /// Last time a broker error was logged (they repeat every retry).
    last_error_log: Mutex<Option<Instant>>,
}

impl SinkContext {
    pub(crate) fn new(mailbox: Arc<Mailbox>, stats: Arc<KafkaStats>) -> Self {
        Self { mailbox, stats, last_error_log: Mutex::new(None) }
    }
}

const ERROR_LOG_EVERY: Duration = Duration::from_secs(30);

impl ClientContext for SinkContext {
    fn stats(&self, s: Statistics) {
        let up = s.brokers.values().filter(|b| b.nodeid >= 0 && b.state == "UP").count();
        let any_up = s.brokers.values().any(|b| b.state == "UP");
        let was = self.stats.connected();
        self.stats.set_connected(any_up, up);
        if any_up && !was {
            tracing::info!(sink = "kafka", brokers_up = up, "connected to the Kafka brokers");
            self.mailbox.post(|m| m.reconnected = true);
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::AllBrokersDown) => self.stats.set_connected(false, 0),
            Some(RDKafkaErrorCode::Fatal) => self.mailbox.post(|m| m.fatal = true),
            _ => self.mailbox.post(|m| m.client_errors += 1),
        }
        let mut last = self.last_error_log.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|t| t.elapsed() >= ERROR_LOG_EVERY) {
            *last = Some(Instant::now());
            tracing::warn!(sink = "kafka", error = %error, "Kafka client: {reason} (events stay spooled until delivered; repeats are logged every 30 s)");
        }
    }
}

impl ProducerContext for SinkContext {
    type DeliveryOpaque = Box<Sent>;

    fn delivery(&self, result: &DeliveryResult<'_>, sent: Box<Sent>) {
        let error = result.as_ref().err().map(|(e, _)| e.clone());
        self.mailbox.post(|m| m.deliveries.push(Delivery { sent: *sent, error }));
    }
}

/// Errors after which sending the same message again cannot succeed.
pub(crate) fn is_permanent(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::BadMessage
        )
    )
}

/// The client configuration: the sink's defaults, then the user's properties.
pub(crate) fn client_config(cfg: &KafkaConfig, client_id: &str) -> Result<ClientConfig, String> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", cfg.brokers.join(","))
        .set("client.id", client_id)
        // Retries never duplicate or reorder within a partition.
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", &cfg.compression)
        .set("message.timeout.ms", cfg.message_timeout.as_millis().to_string())
        // Events are few and wanted soon: batch for at most a millisecond.
        .set("linger.ms", "1")
        .set("statistics.interval.ms", "5000");
    for (k, v) in cfg.resolved_properties()? {
        c.set(k, v);
    }
    Ok(c)
}

/// Turns a librdkafka configuration error into one naming the config key.
pub(crate) fn describe_config_error(e: &KafkaError) -> String {
    match e {
        KafkaError::ClientConfig(_, desc, key, value) => {
            let shown = if is_secret_property(key) { "<redacted>" } else { value.as_str() };
            format!(
                "sinks.kafka.properties.{key} = {shown:?}: {desc} (see librdkafka's CONFIGURATION.md for the properties it knows)"
            )
        }
        other => format!("sinks.kafka: cannot create the Kafka client: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::producer::BaseProducer;

    #[test]
    fn unknown_property_is_named() {
        let mut cfg = KafkaConfig::default();
        cfg.properties.0.insert("no.such.property".into(), "1".into());
        let e = client_config(&cfg, "t").unwrap().create::<BaseProducer>().err().unwrap();
        let msg = describe_config_error(&e);
        assert!(msg.contains("sinks.kafka.properties.no.such.property"), "{msg}");
    }

    #[test]
    fn secret_values_stay_out_of_errors() {
        let mut cfg = KafkaConfig::default();
        cfg.properties.0.insert("sasl.password".into(), "hunter2".into());
        cfg.properties.0.insert("sasl.mechanisms".into(), "NOPE".into());
        cfg.properties.0.insert("security.protocol".into(), "sasl_plaintext".into());
        if let Err(e) = client_config(&cfg, "t").unwrap().create::<BaseProducer>() {
            assert!(!describe_config_error(&e).contains("hunter2"));
        }
    }
}
