//! virtpulse: a telemetry agent for libvirt/KVM hosts.
//!
//! Data flows one way: `libvirt` (the only FFI) -> `collectors` -> `record`
//! -> `router` -> `sinks`.

pub mod app;
pub mod collectors;
pub mod config;
pub mod events;
pub mod filter;
pub mod health;
pub mod libvirt;
pub mod record;
pub mod reference;
pub mod router;
pub mod selfmon;
pub mod sinks;
pub mod stat_keys;
