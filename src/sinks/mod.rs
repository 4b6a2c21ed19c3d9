//! Sinks turn batches of records into output. They know records, never
//! libvirt, and each drains its own bounded queue from the router.

pub mod codes;
pub mod info;
pub mod kafka;
pub mod otlp;
pub mod prometheus;
pub mod stdout;
