//! The intake thread: takes batches from the router, writes events to the
//! spool (one write, and per policy one fsync, per group of batches) and
//! keeps the latest metric snapshot per source for the sender.

use std::sync::{Arc, Mutex};

use super::message::{to_message, Topics};
use super::producer::Mailbox;
use super::spool::Spool;
use super::stats::{DropCause, KafkaStats};
use crate::record::Batch;
use crate::router::SinkQueue;

/// Batches taken at once before the spool write (group commit).
const GROUP: usize = 256;

pub(crate) struct Intake {
    pub queue: SinkQueue,
    pub spool: Arc<Mutex<Spool>>,
    pub mailbox: Arc<Mailbox>,
    pub stats: Arc<KafkaStats>,
    pub topics: Topics,
    pub cloudevents: bool,
    pub metrics: bool,
}

impl Intake {
    pub(crate) fn run(mut self) {
        while let Some(first) = self.queue.blocking_recv() {
            let mut group = vec![first];
            while group.len() < GROUP {
                match self.queue.try_recv() {
                    Some(b) => group.push(b),
                    None => break,
                }
            }
            self.take(group);
        }
        self.mailbox.post(|m| m.intake_done = true);
    }

    fn take(&self, group: Vec<Arc<Batch>>) {
        let mut encoded: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut snapshots = Vec::new();
        for batch in group {
            let has_events = batch.records.iter().any(|r| r.kind.is_event);
            if has_events {
                for r in batch.records.iter().filter(|r| r.kind.is_event) {
                    let m = to_message(r, &self.topics, self.cloudevents);
                    encoded.push((m.time_ms, m.encode()));
                }
            }
            if self.metrics && batch.records.iter().any(|r| !r.kind.is_event) {
                snapshots.push(batch);
            }
        }
        if !encoded.is_empty() {
            let n = encoded.len() as u64;
            let written = {
                let mut spool = self.spool.lock().unwrap_or_else(|e| e.into_inner());
                let r = spool.append(encoded.iter().map(|(t, p)| (*t, p.as_slice())));
                self.stats.set_spool_records(spool.pending());
                r
            };
            match written {
                Ok(_) => self.mailbox.post(|m| m.new_events = true),
                Err(e) => {
                    self.stats.dropped(DropCause::SpoolWrite, n);
                    tracing::error!(
                        sink = "kafka",
                        records = n,
                        error = %e,
                        "cannot write events to the Kafka spool: they are lost; check the spool directory's disk (space, permissions)"
                    );
                }
            }
        }
        if !snapshots.is_empty() {
            let stats = &self.stats;
            self.mailbox.post(|m| {
                for b in snapshots {
                    if let Some(old) = m.metrics.insert(b.source, b) {
                        stats.dropped(DropCause::Superseded, old.records.len() as u64);
                    }
                }
            });
        }
    }
}
