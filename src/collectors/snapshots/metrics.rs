//! What the snapshots collector's records mean: each domain's snapshot and
//! checkpoint inventory (`domain_snapshots`, every cycle) and what appeared
//! or disappeared since the last read (`domain_snapshot_change`, a stream
//! record like an event: Kafka and OTLP logs carry it, Prometheus exports
//! nothing of it). The default profile exports counts and ages; each
//! snapshot's own series sit behind `snapshot_detail`.

use crate::record::kind::{
    gauge, label, row, InfoSpec, InfoValue, KindSpec, LabelSource, LabelSpec, StatSpec, Subject, Switch,
    NO_LABELS as NONE,
};
use crate::value::Unit::*;

pub(crate) static SNAPSHOT_DETAIL: Switch = Switch {
    key: "snapshot_detail",
    covers:
        "each snapshot's and checkpoint's creation time and descriptive labels (name, state, current, parent, kind)",
    adds: "2 series per snapshot and per checkpoint (at most collectors.snapshots.max_per_domain of each per domain)",
};

const SNAPSHOT: &[LabelSpec] = &[label("snapshot", LabelSource::Sibling(1, "name"))];
const CHECKPOINT: &[LabelSpec] = &[label("checkpoint", LabelSource::Sibling(1, "name"))];

#[rustfmt::skip]
static TABLE: &[StatSpec] = &[
    row("snapshot.count", "snapshots", Count, NONE, gauge("libvirt_domain_snapshots", 1.0, "Snapshots libvirt has metadata for (internal, external and disk-only), all of them.")),
    row("snapshot.oldest", "snapshots", UnixSeconds, NONE, gauge("libvirt_domain_snapshot_oldest_timestamp_seconds", 1.0, "Creation time of the domain's oldest snapshot (no series without snapshots).")),
    row("snapshot.newest", "snapshots", UnixSeconds, NONE, gauge("libvirt_domain_snapshot_newest_timestamp_seconds", 1.0, "Creation time of the domain's newest snapshot (no series without snapshots).")),
    row("snapshot.current", "snapshots", Text, NONE, None),
    row("snapshot.detailed", "snapshots", Count, NONE, None),
    row("snapshot.*.name", "snapshots", Text, NONE, None),
    row("snapshot.*.created", "snapshots", UnixSeconds, SNAPSHOT, gauge("libvirt_domain_snapshot_created_timestamp_seconds", 1.0, "Creation time of one snapshot (at most collectors.snapshots.max_per_domain per domain, oldest first).")).behind(&SNAPSHOT_DETAIL),
    row("snapshot.*.state", "snapshots", Text, NONE, None),
    row("snapshot.*.kind", "snapshots", Text, NONE, None),
    row("snapshot.*.current", "snapshots", Boolean, NONE, None),
    row("snapshot.*.parent", "snapshots", Text, NONE, None),
    row("snapshot.*.description", "snapshots", Text, NONE, None),
    row("checkpoint.count", "snapshots", Count, NONE, gauge("libvirt_domain_checkpoints", 1.0, "Checkpoints (disk bitmaps for incremental backup) libvirt has metadata for; no series on daemons before 5.6.")),
    row("checkpoint.oldest", "snapshots", UnixSeconds, NONE, gauge("libvirt_domain_checkpoint_oldest_timestamp_seconds", 1.0, "Creation time of the domain's oldest checkpoint (no series without checkpoints).")),
    row("checkpoint.newest", "snapshots", UnixSeconds, NONE, gauge("libvirt_domain_checkpoint_newest_timestamp_seconds", 1.0, "Creation time of the domain's newest checkpoint (no series without checkpoints).")),
    row("checkpoint.detailed", "snapshots", Count, NONE, None),
    row("checkpoint.*.name", "snapshots", Text, NONE, None),
    row("checkpoint.*.created", "snapshots", UnixSeconds, CHECKPOINT, gauge("libvirt_domain_checkpoint_created_timestamp_seconds", 1.0, "Creation time of one checkpoint (at most collectors.snapshots.max_per_domain per domain, oldest first).")).behind(&SNAPSHOT_DETAIL),
    row("checkpoint.*.parent", "snapshots", Text, NONE, None),
    row("checkpoint.*.description", "snapshots", Text, NONE, None),
];

/// One domain's snapshots and checkpoints.
pub(crate) static DOMAIN_SNAPSHOTS: KindSpec = KindSpec {
    name: "domain_snapshots",
    title: "Snapshots and checkpoints (`[collectors.snapshots]`, every 5 minutes)",
    subject: Subject::Domain,
    prefix: "libvirt_domain_",
    table: TABLE,
    info: &[
        InfoSpec {
            name: "libvirt_domain_snapshot_info",
            help: "One snapshot of the domain (value is always 1); kind: internal, external or disk-only.",
            labels: &[
                ("snapshot", InfoValue::Field("name")),
                ("state", InfoValue::Field("state")),
                ("current", InfoValue::Field("current")),
                ("parent", InfoValue::Field("parent")),
                ("kind", InfoValue::Field("kind")),
            ],
            repeat: Some(("snapshot.detailed", "snapshot")),
            switch: Some(&SNAPSHOT_DETAIL),
            note: "at most `collectors.snapshots.max_per_domain` per domain, oldest first",
            ..InfoSpec::EMPTY
        },
        InfoSpec {
            name: "libvirt_domain_checkpoint_info",
            help: "One checkpoint of the domain (value is always 1).",
            labels: &[("checkpoint", InfoValue::Field("name")), ("parent", InfoValue::Field("parent"))],
            repeat: Some(("checkpoint.detailed", "checkpoint")),
            switch: Some(&SNAPSHOT_DETAIL),
            note: "at most `collectors.snapshots.max_per_domain` per domain, oldest first",
            ..InfoSpec::EMPTY
        },
    ],
    otlp_namespace: "libvirt.snapshot",
    notes: "Times are libvirt's `creationTime` (Unix seconds). A snapshot's age is `time() - libvirt_domain_snapshot_oldest_timestamp_seconds`; the `DomainSnapshotTooOld` alert fires past a week.",
    ..KindSpec::EMPTY
};

#[rustfmt::skip]
static CHANGE_TABLE: &[StatSpec] = &[
    row("change", "snapshots", Text, NONE, None),
    row("object", "snapshots", Text, NONE, None),
    row("name", "snapshots", Text, NONE, None),
    row("created", "snapshots", UnixSeconds, NONE, None),
    row("state", "snapshots", Text, NONE, None),
    row("kind", "snapshots", Text, NONE, None),
    row("parent", "snapshots", Text, NONE, None),
];

/// A snapshot or checkpoint that appeared or disappeared since the last
/// read of its domain. Carried like an event (at least once to Kafka's
/// events topic, as an OTLP log record); no metric.
pub(crate) static SNAPSHOT_CHANGE: KindSpec = KindSpec {
    name: "domain_snapshot_change",
    title: "Snapshot changes",
    subject: Subject::Domain,
    prefix: "libvirt_domain_snapshot_",
    table: CHANGE_TABLE,
    otlp_namespace: "libvirt.snapshot",
    is_event: true,
    ..KindSpec::EMPTY
};
