//! Sinks turn batches of records into output. They know records, never
//! libvirt, and each drains its own bounded queue from the router.

pub mod kafka;
pub mod prometheus;
pub mod stdout;
