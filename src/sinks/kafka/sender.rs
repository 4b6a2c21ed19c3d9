//! The sender thread: hands spooled events to librdkafka in order, turns
//! delivery reports into spool acknowledgements, sends everything
//! unacknowledged again after a failure, and sends metric snapshots only
//! when no event is waiting.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::error::{KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};

use super::message::{to_message, Message, Topics};
use super::producer::{is_permanent, Delivery, Mailbox, Sent, SinkContext};
use super::spool::Spool;
use super::stats::{DropCause, KafkaStats, RestartReason, Stream};
use crate::record::Batch;
use crate::selfmon::SinkStats;

const TICK: Duration = Duration::from_secs(1);
const OUTAGE_LOG_EVERY: Duration = Duration::from_secs(60);
/// Longest wait before sending again after failures (a broker that comes
/// back ends the wait at once).
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// An event in flight this much longer than message_timeout, with a broker
/// reachable, means the producer is wedged (librdkafka gives no report).
const WEDGE_MARGIN: Duration = Duration::from_secs(10);
/// Client errors in a row, nothing delivered and events in flight: wedged.
const WEDGE_ERRORS: u64 = 50;

pub(crate) type MakeProducer = Box<dyn Fn() -> KafkaResult<ThreadedProducer<SinkContext>> + Send>;

pub(crate) struct Sender {
    pub producer: ThreadedProducer<SinkContext>,
    pub make_producer: MakeProducer,
    pub spool: Arc<Mutex<Spool>>,
    pub mailbox: Arc<Mailbox>,
    pub stats: Arc<KafkaStats>,
    pub sink_stats: Arc<SinkStats>,
    pub topics: Topics,
    pub cloudevents: bool,
    pub max_in_flight: usize,
    pub shutdown_timeout: Duration,
    pub spool_dir: PathBuf,
    pub brokers: String,
    /// librdkafka's own deadline for a delivery (`message_timeout`).
    pub message_timeout: Duration,
}

#[derive(Default)]
struct State {
    in_flight_events: usize,
    in_flight_metrics: usize,
    /// A delivery failed: once nothing is in flight, resend from the oldest.
    rewind: bool,
    /// Read from the spool but refused by a full producer queue.
    held: Option<super::spool::Entry>,
    /// Seqs below this were handed to the producer before (a resend).
    next_new_seq: u64,
    failed_rounds: u32,
    retry_at: Option<Instant>,
    last_tick: Option<Instant>,
    last_outage_log: Option<Instant>,
    last_problem_log: Option<Instant>,
    /// Producer replacements are logged apart from delivery problems (a
    /// failure logged just before must not hide the replacement).
    last_restart_log: Option<Instant>,
    shutdown_by: Option<Instant>,
    /// When each event in flight was handed to the producer, by seq.
    sent_at: std::collections::BTreeMap<u64, Instant>,
    /// Client errors since the last successful delivery.
    errors_since_delivery: u64,
    /// A wedge was logged and not yet cleared by a delivery (one log per incident).
    wedged: bool,
}

fn backoff(rounds: u32) -> Duration {
    (Duration::from_secs(1) * 2u32.saturating_pow(rounds.saturating_sub(1).min(5))).min(MAX_BACKOFF)
}

fn headers(m: &Message) -> OwnedHeaders {
    m.headers.iter().fold(OwnedHeaders::new_with_capacity(m.headers.len()), |h, (k, v)| {
        h.insert(Header { key: k, value: Some(v.as_bytes()) })
    })
}

fn since_ms(time_ms: u64) -> Duration {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    now.saturating_sub(Duration::from_millis(time_ms))
}

impl Sender {
    pub(crate) fn run(mut self) {
        let mut st = State::default();
        loop {
            let (deliveries, fatal, reconnected, intake_done, client_errors) = self.wait(&st);
            st.errors_since_delivery += client_errors;
            if fatal {
                self.replace_producer(&mut st);
            }
            if reconnected && !st.rewind {
                st.retry_at = None;
            }
            if !deliveries.is_empty() {
                for d in deliveries {
                    self.on_delivery(d, &mut st);
                }
                self.stats.set_spool_records(self.spool.lock().unwrap_or_else(|e| e.into_inner()).pending());
            }
            if st.rewind && st.in_flight_events == 0 {
                self.rewind(&mut st);
            }
            self.send_events(&mut st);
            self.send_metrics(&mut st);
            if st.last_tick.is_none_or(|t| t.elapsed() >= TICK) {
                self.tick(&mut st);
            }
            if intake_done {
                let by = *st.shutdown_by.get_or_insert_with(|| Instant::now() + self.shutdown_timeout);
                let idle = st.in_flight_events == 0 && st.in_flight_metrics == 0 && !self.backlog(&st);
                if idle || Instant::now() >= by {
                    break;
                }
            }
        }
        self.stop();
    }

    fn backlog(&self, st: &State) -> bool {
        st.held.is_some() || self.spool.lock().unwrap_or_else(|e| e.into_inner()).unread() > 0
    }

    /// Metric messages in flight at most: they must never crowd out events.
    fn metrics_cap(&self) -> usize {
        self.max_in_flight / 2 + 1
    }

    fn can_send_events(&self, st: &State) -> bool {
        !st.rewind && st.in_flight_events < self.max_in_flight && st.retry_at.is_none_or(|t| Instant::now() >= t)
    }

    /// Sleeps until there is something to do; returns the delivery reports,
    /// whether the producer hit a fatal error, whether a broker connection
    /// came back, and whether the intake ended.
    fn wait(&self, st: &State) -> (Vec<Delivery>, bool, bool, bool, u64) {
        let sendable = self.can_send_events(st) && self.backlog(st);
        let mut next = st.last_tick.map(|t| t + TICK).unwrap_or_else(Instant::now);
        if let Some(t) = st.retry_at {
            next = next.min(t);
        }
        let mut m = self.mailbox.inner.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let metrics_ready = !m.metrics.is_empty() && st.in_flight_metrics < self.metrics_cap() && !self.backlog(st);
            let work =
                !m.deliveries.is_empty() || m.new_events || m.fatal || m.reconnected || m.intake_done || metrics_ready;
            let now = Instant::now();
            if work || sendable || now >= next {
                break;
            }
            m = match self.mailbox.wake.wait_timeout(m, next - now) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
        m.new_events = false;
        let fatal = std::mem::take(&mut m.fatal);
        let reconnected = std::mem::take(&mut m.reconnected);
        let errors = std::mem::take(&mut m.client_errors);
        (std::mem::take(&mut m.deliveries), fatal, reconnected, m.intake_done, errors)
    }

    fn on_delivery(&self, d: Delivery, st: &mut State) {
        match (d.sent, d.error) {
            (Sent::Event { seq, time_ms }, None) => {
                st.in_flight_events = st.in_flight_events.saturating_sub(1);
                st.sent_at.remove(&seq);
                st.errors_since_delivery = 0;
                if std::mem::take(&mut st.wedged) {
                    tracing::info!(sink = "kafka", "events are delivered again");
                }
                self.spool.lock().unwrap_or_else(|e| e.into_inner()).ack(seq);
                self.stats.delivered(Stream::Events, 1);
                self.stats.observe_latency(since_ms(time_ms));
                self.sink_stats.sent(1);
                st.failed_rounds = 0;
            }
            (Sent::Event { seq, .. }, Some(e)) => {
                st.in_flight_events = st.in_flight_events.saturating_sub(1);
                st.sent_at.remove(&seq);
                self.stats.failed(Stream::Events, 1);
                self.sink_stats.failed(1);
                if is_permanent(&e) {
                    self.spool.lock().unwrap_or_else(|e| e.into_inner()).ack(seq);
                    self.stats.dropped(DropCause::Rejected, 1);
                    tracing::error!(sink = "kafka", error = %e, "the broker refused an event for good; it is dropped (counted in virtpulse_kafka_records_dropped_total{{reason=\"rejected\"}})");
                } else {
                    st.rewind = true;
                    self.log_problem(st, &format!("event delivery failed ({e}); it will be sent again"));
                }
            }
            (Sent::Metric, None) => {
                st.in_flight_metrics = st.in_flight_metrics.saturating_sub(1);
                self.stats.delivered(Stream::Metrics, 1);
                self.sink_stats.sent(1);
            }
            (Sent::Metric, Some(_)) => {
                st.in_flight_metrics = st.in_flight_metrics.saturating_sub(1);
                self.stats.failed(Stream::Metrics, 1);
                self.stats.dropped(DropCause::Undelivered, 1);
                self.sink_stats.failed(1);
            }
        }
    }

    fn log_problem(&self, st: &mut State, what: &str) {
        if st.last_problem_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(30)) {
            st.last_problem_log = Some(Instant::now());
            tracing::warn!(sink = "kafka", "{what} (repeats are logged every 30 s)");
        }
    }

    /// After a failure, everything unacknowledged goes again from the oldest,
    /// so each key's order holds; waits longer after each failed round.
    fn rewind(&mut self, st: &mut State) {
        if self.stats.connected() {
            // Deliveries fail although a broker answers: the producer's state
            // may be what the cluster rejects (a broker that lost its producer
            // state answers UnknownProducerId to every retry). A new producer
            // gets a new producer id.
            if st.last_restart_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(30)) {
                st.last_restart_log = Some(Instant::now());
                tracing::warn!(
                    sink = "kafka",
                    "event deliveries fail while a broker is reachable; starting a new producer (counted in virtpulse_kafka_producer_restarts_total; repeats are logged every 30 s)"
                );
            }
            if self.new_producer() {
                self.stats.producer_restarted(RestartReason::DeliveryFailures);
            }
        }
        self.spool.lock().unwrap_or_else(|e| e.into_inner()).rewind();
        st.held = None;
        st.rewind = false;
        st.sent_at.clear();
        st.failed_rounds += 1;
        st.retry_at = Some(Instant::now() + backoff(st.failed_rounds));
    }

    fn send_events(&self, st: &mut State) {
        if !self.can_send_events(st) {
            return;
        }
        st.retry_at = None;
        let mut spool = self.spool.lock().unwrap_or_else(|e| e.into_inner());
        while st.in_flight_events < self.max_in_flight {
            let entry = match st.held.take() {
                Some(e) => e,
                None => match spool.read_next() {
                    Ok(Some(e)) => e,
                    Ok(None) => break,
                    Err(e) => {
                        drop(spool);
                        self.log_problem(st, &format!("cannot read the Kafka spool: {e}"));
                        st.retry_at = Some(Instant::now() + MAX_BACKOFF);
                        return;
                    }
                },
            };
            let Some(msg) = Message::decode(&entry.payload, entry.time_ms) else {
                spool.ack(entry.seq);
                self.stats.dropped(DropCause::SpoolCorrupt, 1);
                tracing::error!(sink = "kafka", seq = entry.seq, "unreadable message in the Kafka spool; dropped");
                continue;
            };
            let sent = Box::new(Sent::Event { seq: entry.seq, time_ms: entry.time_ms });
            let record = BaseRecord::with_opaque_to(&msg.topic, sent)
                .key(&msg.key)
                .payload(&msg.value)
                .headers(headers(&msg))
                .timestamp(msg.time_ms as i64);
            match self.producer.send(record) {
                Ok(()) => {
                    st.in_flight_events += 1;
                    st.sent_at.insert(entry.seq, Instant::now());
                    if entry.seq < st.next_new_seq {
                        self.stats.resent(1);
                    } else {
                        st.next_new_seq = entry.seq + 1;
                    }
                }
                Err((e, _)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                    // Deliveries make room; until one arrives, look again shortly.
                    st.held = Some(entry);
                    st.retry_at = Some(Instant::now() + Duration::from_millis(50));
                    break;
                }
                Err((e, _)) if is_permanent(&e) => {
                    spool.ack(entry.seq);
                    self.stats.dropped(DropCause::Rejected, 1);
                    tracing::error!(sink = "kafka", error = %e, topic = %msg.topic, "the producer refused an event for good; it is dropped");
                }
                Err((e, _)) => {
                    st.held = Some(entry);
                    st.failed_rounds += 1;
                    st.retry_at = Some(Instant::now() + backoff(st.failed_rounds));
                    drop(spool);
                    self.log_problem(st, &format!("cannot hand an event to the producer ({e}); retrying"));
                    return;
                }
            }
        }
    }

    fn send_metrics(&self, st: &mut State) {
        if st.in_flight_metrics >= self.metrics_cap() || self.backlog(st) {
            return;
        }
        let batches: Vec<Arc<Batch>> = {
            let mut m = self.mailbox.inner.lock().unwrap_or_else(|e| e.into_inner());
            std::mem::take(&mut m.metrics).into_values().collect()
        };
        for batch in batches {
            let records: Vec<_> = batch.records.iter().filter(|r| !r.kind.is_event).collect();
            for (i, r) in records.iter().enumerate() {
                let msg = to_message(r, &self.topics, self.cloudevents);
                let record = BaseRecord::with_opaque_to(&msg.topic, Box::new(Sent::Metric))
                    .key(&msg.key)
                    .payload(&msg.value)
                    .headers(headers(&msg))
                    .timestamp(msg.time_ms as i64);
                match self.producer.send(record) {
                    Ok(()) => st.in_flight_metrics += 1,
                    Err((e, _)) => {
                        let cause = if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) {
                            DropCause::ProducerQueueFull
                        } else {
                            DropCause::Rejected
                        };
                        self.stats.dropped(cause, (records.len() - i) as u64);
                        break;
                    }
                }
            }
        }
    }

    /// Whether the producer is wedged: a broker is reachable, yet an event
    /// stays in flight well past message_timeout (a broker that forgot the
    /// producer id answers every retry with UnknownProducerId and librdkafka
    /// reports nothing), or errors keep coming and nothing is delivered.
    fn wedge(&self, st: &State) -> Option<RestartReason> {
        if !self.stats.connected() || st.in_flight_events == 0 {
            return None;
        }
        let oldest = st.sent_at.values().min()?;
        if oldest.elapsed() > self.message_timeout + WEDGE_MARGIN {
            return Some(RestartReason::StuckInFlight);
        }
        (st.errors_since_delivery >= WEDGE_ERRORS).then_some(RestartReason::BrokerErrors)
    }

    /// Replaces a wedged producer: what it holds is purged (reported as
    /// failures) and everything unacknowledged goes again from the oldest.
    fn unwedge(&mut self, st: &mut State, why: RestartReason) {
        if !st.wedged {
            tracing::warn!(
                sink = "kafka",
                reason = why.as_str(),
                in_flight = st.in_flight_events,
                "the Kafka producer is stuck although a broker is reachable; replacing it and sending every unacknowledged event again (counted in virtpulse_kafka_producer_restarts_total; logged once per incident)"
            );
        }
        st.wedged = true;
        use rdkafka::producer::PurgeConfig;
        self.producer.purge(PurgeConfig::default().queue().inflight());
        if self.new_producer() {
            self.stats.producer_restarted(why);
        }
        // The purged messages' reports may not come: nothing is in flight
        // from here on, and the spool sends it all again.
        st.in_flight_events = 0;
        st.in_flight_metrics = 0;
        st.errors_since_delivery = 0;
        st.sent_at.clear();
        self.spool.lock().unwrap_or_else(|e| e.into_inner()).rewind();
        st.held = None;
        st.rewind = false;
        st.retry_at = None;
    }

    fn tick(&mut self, st: &mut State) {
        st.last_tick = Some(Instant::now());
        if let Some(why) = self.wedge(st) {
            self.unwedge(st, why);
        }
        let (pending, bytes, oldest, dropped) = {
            let mut spool = self.spool.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = spool.tick() {
                tracing::warn!(sink = "kafka", error = %e, "Kafka spool housekeeping failed");
            }
            (spool.pending(), spool.bytes(), spool.oldest_pending_ms(), spool.dropped())
        };
        self.stats.set_spool(pending, bytes, oldest);
        self.stats.set_dropped(DropCause::SpoolFull, dropped.size);
        self.stats.set_dropped(DropCause::SpoolExpired, dropped.age);
        if !self.stats.connected() && pending > 0 {
            if st.last_outage_log.is_none_or(|t| t.elapsed() >= OUTAGE_LOG_EVERY) {
                st.last_outage_log = Some(Instant::now());
                tracing::warn!(
                    sink = "kafka",
                    brokers = %self.brokers,
                    spooled = pending,
                    spool_bytes = bytes,
                    spool_dir = %self.spool_dir.display(),
                    "no Kafka broker reachable: events wait in the spool and are delivered when one is"
                );
            }
        } else {
            st.last_outage_log = None;
        }
    }

    /// A fatal producer error (idempotence state lost) leaves the producer
    /// unusable: a new one takes over, and what was in flight goes again.
    fn replace_producer(&mut self, st: &mut State) {
        tracing::error!(sink = "kafka", "the Kafka producer hit a fatal error; replacing it");
        if self.new_producer() {
            self.stats.producer_restarted(RestartReason::Fatal);
            st.rewind = true;
        }
    }

    fn new_producer(&mut self) -> bool {
        match (self.make_producer)() {
            Ok(p) => {
                let old = std::mem::replace(&mut self.producer, p);
                // Dropping purges what it held: those reports arrive as failures.
                drop(old);
                true
            }
            Err(e) => {
                tracing::error!(sink = "kafka", error = %e, "cannot create a new Kafka producer");
                false
            }
        }
    }

    fn stop(self) {
        let _ = self.producer.flush(Duration::from_millis(100));
        let left = {
            let mut spool = self.spool.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = spool.close() {
                tracing::warn!(sink = "kafka", error = %e, "cannot close the Kafka spool cleanly");
            }
            spool.pending()
        };
        if left > 0 {
            tracing::info!(
                sink = "kafka",
                spooled = left,
                "Kafka sink stopped; undelivered events stay spooled for the next start"
            );
        } else {
            tracing::info!(sink = "kafka", "Kafka sink stopped; every event was delivered");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_cap() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(4), Duration::from_secs(8));
        assert_eq!(backoff(5), MAX_BACKOFF);
        assert_eq!(backoff(40), MAX_BACKOFF);
    }
}
