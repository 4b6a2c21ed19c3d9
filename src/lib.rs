//! virtpulse: a telemetry agent for libvirt/KVM hosts.
//!
//! Data flows one way: `libvirt` (the only FFI) -> `collectors` -> `record`
//! -> `router` -> `sinks`.

// `unsafe` lives in src/libvirt only (it allows it back); every unsafe
// operation there sits in its own block with a SAFETY comment.
#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod app;
pub mod collectors;
pub mod config;
pub mod events;
pub mod filter;
#[doc(hidden)]
pub mod fuzzing;
pub mod health;
pub mod libvirt;
pub mod record;
pub mod reference;
pub mod router;
pub mod selection;
pub mod selfmon;
pub mod sinks;
pub mod stat_keys;
pub mod util;
pub mod value;
