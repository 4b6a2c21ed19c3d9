//! The only module that talks to libvirt's C API (and the only one with
//! `unsafe`). Everything here is blocking: callers run it on blocking threads.
#![allow(unsafe_code)]

pub mod connection;
pub(crate) mod domain;
pub(crate) mod error;
pub(crate) mod event_loop;
pub mod events;
pub(crate) mod guest;
pub(crate) mod health;
pub mod heap;

pub(crate) mod jobs;
pub(crate) mod manager;
pub(crate) mod networks;
pub(crate) mod node;
pub(crate) mod nodedev;
pub(crate) mod optional;
pub(crate) mod pools;
pub(crate) mod snapshots;
pub mod stats;
pub mod typed_params;

pub use connection::{Connection, OpenOptions};
pub use domain::Domain;
pub use error::{LibvirtError, Result};
pub use manager::{ConnectionManager, Session};
pub use typed_params::{DecodedParams, TypedParam};
