//! JSON lines on stdout, one record per line (debugging, `--once`, piping
//! into other tools). Runs on its own OS thread: a blocked stdout pipe stalls
//! only this sink, whose queue then fills and drops (counted).

use std::io::{BufWriter, Write};

use crate::router::SinkQueue;

pub fn spawn(mut queue: SinkQueue) -> std::io::Result<std::thread::JoinHandle<()>> {
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
/// The stdout sink as configured.
pub fn factory(queue_capacity: usize) -> super::SinkFactory {
    use super::SinkFactory;
    SinkFactory {
        name: "stdout",
        queue_capacity,
        start: Box::new(move |queue, _| {
            Box::pin(async move {
                use anyhow::Context;
                let thread = spawn(queue).context("cannot start the stdout sink thread")?;
                Ok(super::Running {
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
        }),
    }
}
