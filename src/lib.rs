//! virtpulse: a telemetry agent for libvirt/KVM hosts.
//!
//! Data flows one way: `libvirt` (the only FFI) -> `collectors` and
//! `events` -> `record` -> `router` -> `sinks`. `registry` lists the
//! collectors and sinks; `app` wires them.

// `unsafe` lives in src/libvirt only (it allows it back); every unsafe
// operation there sits in its own block with a SAFETY comment.
#![deny(unsafe_code)]
#![warn(unreachable_pub)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub(crate) mod admin;
pub mod app;
pub mod collectors;
pub mod config;
pub mod events;
pub(crate) mod exposition;
pub(crate) mod filter;
/// Harnesses for the fuzz crate (`fuzz/`), and the replay of its corpus in
/// the unit tests; not in the shipped binary.
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub(crate) mod health;
pub mod libvirt;
pub mod record;
pub mod reference;
pub mod registry;
pub(crate) mod router;
pub mod selection;
pub mod selfmon;
pub mod sinks;
pub(crate) mod util;
pub mod value;
pub(crate) mod web;
