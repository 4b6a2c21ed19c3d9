//! Collectors poll libvirt on a fixed schedule. Each one is driven by the
//! same controller (see `controller`), makes its libvirt calls on blocking
//! threads (see `blocking`), and hands a `Batch` of records to the router.

pub mod blocking;
pub mod connection;
pub mod controller;
pub mod domain_info;
pub mod domain_stats;
pub mod guest;
pub mod jobs;
pub mod node;
pub mod pools;

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use crate::filter::DomainFilter;
use crate::libvirt::events::RawEvent;
use crate::libvirt::{ConnectionManager, LibvirtError};
use crate::record::Batch;
use crate::selfmon::{CollectorStats, Registry};
use blocking::CallTracker;

pub use crate::record::Identity;

/// What every collector needs besides its own settings.
#[derive(Clone)]
pub struct CollectorContext {
    pub manager: Arc<ConnectionManager>,
    /// Counts this collector's libvirt calls in flight (stuck ones included).
    pub tracker: CallTracker,
    pub registry: Arc<Registry>,
    pub stats: Arc<CollectorStats>,
    pub identity: Identity,
    pub filter: Arc<DomainFilter>,
}

#[derive(Debug)]
pub enum CollectError {
    /// No libvirt connection right now (the manager is reconnecting).
    NotConnected,
    Libvirt(LibvirtError),
    Internal(String),
}

impl fmt::Display for CollectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CollectError::NotConnected => write!(f, "not connected to libvirt"),
            CollectError::Libvirt(e) => write!(f, "{e}"),
            CollectError::Internal(e) => write!(f, "internal error: {e}"),
        }
    }
}

impl From<LibvirtError> for CollectError {
    fn from(e: LibvirtError) -> Self {
        CollectError::Libvirt(e)
    }
}

/// How the event stream tells a collector what happened: collectors own
/// this trait and decide what an event means to them (collect now, re-read
/// a domain's XML, read a job); the events module only calls it.
pub trait EventListener: Send + Sync {
    /// Called for every event, in order, on the events task: must not block.
    fn on_event(&self, ev: &RawEvent);
}

pub trait Collector: Send {
    fn name(&self) -> &'static str;
    /// One collection. The controller bounds it with a deadline by dropping
    /// the future; libvirt calls already running go on in the background and
    /// are tracked as stuck until they return.
    fn collect(&mut self) -> impl Future<Output = Result<Batch, CollectError>> + Send;
}
