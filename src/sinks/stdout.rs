//! JSON lines on stdout, one record per line (debugging, `--once`, piping
//! into other tools). Runs on its own OS thread: a blocked stdout pipe stalls
//! only this sink, whose queue then fills and drops (counted).

use std::io::{BufWriter, Write};

use super::{BoxFuture, Consumes, Running, SinkContext, SinkPlugin};
use crate::config::section::count_at_most;
use crate::config::{KeyError, SectionConfig, SectionContext};
use crate::router::SinkQueue;

pub(crate) fn spawn(mut queue: SinkQueue) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name("sink-stdout".into()).spawn(move || {
        let stdout = std::io::stdout();
        let mut out = BufWriter::with_capacity(64 * 1024, stdout.lock());
        while let Some(batch) = queue.blocking_recv() {
            let n = batch.records.len() as u64;
            let written = batch.records.iter().try_for_each(|r| {
                out.write_all(r.to_json().as_bytes())?;
                out.write_all(b"\n")
            });
            match written.and_then(|_| out.flush()) {
                Ok(()) => queue.stats.sent(n),
                Err(e) => {
                    queue.stats.failed(n);
                    if e.kind() == std::io::ErrorKind::BrokenPipe {
                        tracing::error!("stdout is closed; the stdout sink stops");
                        return;
                    }
                    tracing::warn!(error = %e, "cannot write records to stdout");
                }
            }
        }
    })
}
/// `[sinks.stdout]` (besides `enabled`).
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct StdoutConfig {
    pub queue_capacity: usize,
}

impl Default for StdoutConfig {
    fn default() -> Self {
        Self { queue_capacity: 4096 }
    }
}

impl SectionConfig for StdoutConfig {
    fn validate(&self, _: &SectionContext) -> Result<(), KeyError> {
        count_at_most("queue_capacity", self.queue_capacity as u64, 1_000_000)?;
        if self.queue_capacity == 0 {
            return Err(KeyError::new("queue_capacity", "must be at least 1"));
        }
        Ok(())
    }
}

/// The stdout sink in the registry.
pub(crate) struct StdoutPlugin;

impl SinkPlugin for StdoutPlugin {
    type Config = StdoutConfig;
    const NAME: &'static str = "stdout";

    fn queue_capacity(&self, cfg: &StdoutConfig) -> usize {
        cfg.queue_capacity
    }

    fn consumes(&self, _: &StdoutConfig) -> Consumes {
        Consumes { metrics: false, records: true, durable_events: false }
    }

    fn start(&self, _: StdoutConfig, queue: SinkQueue, _: SinkContext) -> BoxFuture<'static, anyhow::Result<Running>> {
        Box::pin(async move {
            use anyhow::Context;
            let thread = spawn(queue).context("cannot start the stdout sink thread")?;
            Ok(Running {
                name: "stdout",
                report: None,
                stop_within: std::time::Duration::from_secs(5),
                // The thread ends when its queue closes, after writing what it holds.
                stop: Box::new(move |_| {
                    Box::pin(async move {
                        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
                    })
                }),
            })
        })
    }
}
