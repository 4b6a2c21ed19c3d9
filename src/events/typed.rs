//! Events as collectors see them: what happened, in the agent's words. The
//! libvirt codes and callback names stay here and in src/libvirt;
//! collectors match on these types (see `Listener`).

use std::sync::Arc;

use crate::libvirt::events::{Family, RawEvent};
use crate::value::TypedValue;

/// The domain an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DomainId<'e> {
    pub name: &'e str,
    pub uuid: &'e str,
}

/// libvirt's lifecycle events (`virDomainEventType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifecycleEvent {
    Defined,
    Undefined,
    Started,
    Suspended,
    Resumed,
    Stopped,
    Shutdown,
    PmSuspended,
    Crashed,
    Unknown,
}

/// What caused a lifecycle change, where collectors care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifecycleCause {
    Migrated,
    Restored,
    Saved,
    /// A snapshot was taken or reverted to.
    FromSnapshot,
    Postcopy,
    PostcopyFailed,
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifecycle {
    pub event: LifecycleEvent,
    pub cause: LifecycleCause,
}

impl Lifecycle {
    /// A save, a restore, a migration or a snapshot finished: the domain's
    /// job is over (its statistics are now the completed job's).
    pub fn ends_a_job(&self) -> bool {
        matches!(
            self.event,
            LifecycleEvent::Started | LifecycleEvent::Suspended | LifecycleEvent::Resumed | LifecycleEvent::Stopped
        ) && self.cause != LifecycleCause::Other
    }
}

/// `virDomainBlockJobType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockJobKind {
    Pull,
    Copy,
    Commit,
    ActiveCommit,
    Backup,
    Unknown,
}

/// `virConnectDomainEventBlockJobStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockJobStatus {
    Completed,
    Failed,
    Canceled,
    /// A copy or active commit reached its mirror phase (waits for a pivot).
    Ready,
    Unknown,
}

impl BlockJobStatus {
    /// The job is gone.
    pub fn ended(self) -> bool {
        matches!(self, BlockJobStatus::Completed | BlockJobStatus::Failed | BlockJobStatus::Canceled)
    }
}

/// What happened to a virtual network or a node device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectChange {
    Defined,
    Undefined,
    Started,
    Stopped,
    /// Changed in place (a node device update, a network's metadata).
    Updated,
    Other,
}

/// One event, typed. Events collectors do not look into are `Other`.
#[derive(Debug, Clone, Copy)]
pub enum Event<'e> {
    Lifecycle(DomainId<'e>, Lifecycle),
    /// A job finished; its statistics as libvirt reported them.
    JobCompleted(DomainId<'e>, &'e [(Arc<str>, TypedValue)]),
    MigrationIteration(DomainId<'e>),
    /// Tunables changed: the new values (`cputune.*`, `blkdeviotune.*`).
    Tunable(DomainId<'e>, &'e [(Arc<str>, TypedValue)]),
    BlockJob {
        domain: DomainId<'e>,
        disk: &'e str,
        kind: BlockJobKind,
        status: BlockJobStatus,
    },
    DeviceAdded(DomainId<'e>),
    DeviceRemoved(DomainId<'e>),
    MetadataChanged(DomainId<'e>),
    BalloonChanged(DomainId<'e>),
    /// After a (re)connect, the state the agent finds a domain in.
    Resync(DomainId<'e>),
    Network {
        name: &'e str,
        uuid: &'e str,
        change: ObjectChange,
    },
    NodeDevice {
        name: &'e str,
        change: ObjectChange,
    },
    /// Anything else about a domain.
    OtherDomain(DomainId<'e>),
    Other,
}

fn int(ev: &RawEvent, key: &str) -> Option<i32> {
    ev.fields.iter().find(|(k, _)| &**k == key).and_then(|(_, v)| match v {
        TypedValue::Int(i) => Some(*i),
        _ => None,
    })
}

fn text<'e>(ev: &'e RawEvent, key: &str) -> &'e str {
    ev.fields.iter().find(|(k, _)| &**k == key).and_then(|(_, v)| v.as_str()).unwrap_or("")
}

fn lifecycle(event: Option<i32>, detail: Option<i32>) -> Lifecycle {
    use LifecycleCause as C;
    use LifecycleEvent as E;
    let event = match event {
        Some(0) => E::Defined,
        Some(1) => E::Undefined,
        Some(2) => E::Started,
        Some(3) => E::Suspended,
        Some(4) => E::Resumed,
        Some(5) => E::Stopped,
        Some(6) => E::Shutdown,
        Some(7) => E::PmSuspended,
        Some(8) => E::Crashed,
        _ => E::Unknown,
    };
    // Each lifecycle event numbers its details its own way.
    let cause = match (event, detail) {
        (E::Defined, Some(3)) => C::FromSnapshot,
        (E::Started, Some(1)) | (E::Suspended, Some(1)) | (E::Resumed, Some(1)) | (E::Stopped, Some(3)) => C::Migrated,
        (E::Started, Some(2)) | (E::Suspended, Some(4)) => C::Restored,
        (E::Started, Some(3)) | (E::Suspended, Some(5)) | (E::Resumed, Some(2)) | (E::Stopped, Some(6)) => {
            C::FromSnapshot
        }
        (E::Suspended, Some(7)) | (E::Resumed, Some(3)) => C::Postcopy,
        (E::Suspended, Some(8)) | (E::Resumed, Some(4)) => C::PostcopyFailed,
        (E::Stopped, Some(4)) => C::Saved,
        _ => C::Other,
    };
    Lifecycle { event, cause }
}

fn object_change(family: Family, name: &str, event: Option<i32>) -> ObjectChange {
    match (family, name, event) {
        (_, "update" | "metadata_change", _) => ObjectChange::Updated,
        // virNetworkEventLifecycleType: defined, undefined, started, stopped.
        // virNodeDeviceEventLifecycleType: created, deleted, defined, undefined.
        (Family::Network, "lifecycle", Some(0)) | (Family::NodeDevice, "lifecycle", Some(2)) => ObjectChange::Defined,
        (Family::Network, "lifecycle", Some(1)) | (Family::NodeDevice, "lifecycle", Some(3)) => ObjectChange::Undefined,
        (Family::Network, "lifecycle", Some(2)) | (Family::NodeDevice, "lifecycle", Some(0)) => ObjectChange::Started,
        (Family::Network, "lifecycle", Some(3)) | (Family::NodeDevice, "lifecycle", Some(1)) => ObjectChange::Stopped,
        _ => ObjectChange::Other,
    }
}

impl<'e> Event<'e> {
    /// What a raw libvirt event means.
    pub fn of(ev: &'e RawEvent) -> Event<'e> {
        let domain = DomainId { name: &ev.object_name, uuid: &ev.object_uuid };
        match ev.family {
            Family::Domain => match ev.name {
                "lifecycle" => Event::Lifecycle(domain, lifecycle(int(ev, "event"), int(ev, "detail"))),
                "job_completed" => Event::JobCompleted(domain, &ev.fields),
                "migration_iteration" => Event::MigrationIteration(domain),
                "tunable" => Event::Tunable(domain, &ev.fields),
                "block_job" | "block_job_2" => Event::BlockJob {
                    domain,
                    disk: text(ev, "disk"),
                    kind: match int(ev, "type") {
                        Some(1) => BlockJobKind::Pull,
                        Some(2) => BlockJobKind::Copy,
                        Some(3) => BlockJobKind::Commit,
                        Some(4) => BlockJobKind::ActiveCommit,
                        Some(5) => BlockJobKind::Backup,
                        _ => BlockJobKind::Unknown,
                    },
                    status: match int(ev, "status") {
                        Some(0) => BlockJobStatus::Completed,
                        Some(1) => BlockJobStatus::Failed,
                        Some(2) => BlockJobStatus::Canceled,
                        Some(3) => BlockJobStatus::Ready,
                        _ => BlockJobStatus::Unknown,
                    },
                },
                "device_added" => Event::DeviceAdded(domain),
                "device_removed" => Event::DeviceRemoved(domain),
                "metadata_change" => Event::MetadataChanged(domain),
                "balloon_change" => Event::BalloonChanged(domain),
                "resync" => Event::Resync(domain),
                _ => Event::OtherDomain(domain),
            },
            Family::Network => Event::Network {
                name: &ev.object_name,
                uuid: &ev.object_uuid,
                change: object_change(ev.family, ev.name, int(ev, "event")),
            },
            Family::NodeDevice => {
                Event::NodeDevice { name: &ev.object_name, change: object_change(ev.family, ev.name, int(ev, "event")) }
            }
            _ => Event::Other,
        }
    }

    /// The domain the event is about, if any.
    pub fn domain(&self) -> Option<DomainId<'e>> {
        match *self {
            Event::Lifecycle(d, _)
            | Event::JobCompleted(d, _)
            | Event::MigrationIteration(d)
            | Event::Tunable(d, _)
            | Event::BlockJob { domain: d, .. }
            | Event::DeviceAdded(d)
            | Event::DeviceRemoved(d)
            | Event::MetadataChanged(d)
            | Event::BalloonChanged(d)
            | Event::Resync(d)
            | Event::OtherDomain(d) => Some(d),
            Event::Network { .. } | Event::NodeDevice { .. } | Event::Other => None,
        }
    }
}

/// How the event stream tells a component what happened: collectors
/// implement it and decide what an event means to them (collect now,
/// re-read a domain's XML, read a job); the events module only calls it.
pub trait Listener: Send + Sync {
    /// Called for every event, in order, on the events task: must not block.
    fn on_event(&self, ev: &Event<'_>);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Instant, SystemTime};

    fn raw(family: Family, name: &'static str, fields: &[(&str, TypedValue)]) -> RawEvent {
        RawEvent {
            family,
            event_id: 0,
            name,
            object_name: "d".into(),
            object_uuid: "u".into(),
            fields: fields.iter().map(|(k, v)| (Arc::from(*k), v.clone())).collect(),
            time: SystemTime::now(),
            at: Instant::now(),
        }
    }

    fn life(e: i32, d: i32) -> Lifecycle {
        match Event::of(&raw(
            Family::Domain,
            "lifecycle",
            &[("event", TypedValue::Int(e)), ("detail", TypedValue::Int(d))],
        )) {
            Event::Lifecycle(_, l) => l,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn lifecycle_changes_that_end_a_job() {
        // STARTED: MIGRATED, RESTORED, FROM_SNAPSHOT
        for d in 1..=3 {
            assert!(life(2, d).ends_a_job(), "started/{d}");
        }
        assert!(!life(2, 0).ends_a_job(), "booted");
        // SUSPENDED: MIGRATED, RESTORED, FROM_SNAPSHOT, POSTCOPY, POSTCOPY_FAILED
        for d in [1, 4, 5, 7, 8] {
            assert!(life(3, d).ends_a_job(), "suspended/{d}");
        }
        for d in [0, 2, 3, 6, 9] {
            assert!(!life(3, d).ends_a_job(), "suspended/{d}");
        }
        // RESUMED: MIGRATED, FROM_SNAPSHOT, POSTCOPY, POSTCOPY_FAILED
        for d in 1..=4 {
            assert!(life(4, d).ends_a_job(), "resumed/{d}");
        }
        // STOPPED: MIGRATED, SAVED, FROM_SNAPSHOT
        for d in [3, 4, 6] {
            assert!(life(5, d).ends_a_job(), "stopped/{d}");
        }
        for d in [0, 1, 2, 5, 7] {
            assert!(!life(5, d).ends_a_job(), "stopped/{d}");
        }
        assert!(!life(0, 3).ends_a_job(), "defined from a snapshot is no job's end");
        assert_eq!(life(0, 3).cause, LifecycleCause::FromSnapshot);
        assert_eq!(life(99, 1).event, LifecycleEvent::Unknown);
    }

    #[test]
    fn block_jobs_and_objects_are_named() {
        let ev = raw(
            Family::Domain,
            "block_job_2",
            &[("disk", TypedValue::String("vda".into())), ("type", TypedValue::Int(2)), ("status", TypedValue::Int(3))],
        );
        match Event::of(&ev) {
            Event::BlockJob { disk, kind, status, .. } => {
                assert_eq!((disk, kind, status), ("vda", BlockJobKind::Copy, BlockJobStatus::Ready));
                assert!(!status.ended());
            }
            other => panic!("{other:?}"),
        }
        let net = raw(Family::Network, "lifecycle", &[("event", TypedValue::Int(3))]);
        assert!(matches!(Event::of(&net), Event::Network { change: ObjectChange::Stopped, .. }));
        let dev = raw(Family::NodeDevice, "update", &[]);
        assert!(matches!(Event::of(&dev), Event::NodeDevice { change: ObjectChange::Updated, .. }));
        assert_eq!(Event::of(&raw(Family::Domain, "reboot", &[])).domain().map(|d| d.name), Some("d"));
    }
}
