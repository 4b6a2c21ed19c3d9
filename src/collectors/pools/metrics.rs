//! What the pools collector's records mean: `virStoragePoolGetInfo`, the
//! volume count and the pool's XML.

use crate::record::kind::{gauge, row, InfoSpec, InfoValue, KindSpec, StatSpec, Subject, NO_LABELS as NONE};
use crate::value::Unit::*;

/// `virStoragePoolState`, by code.
pub(crate) const POOL_STATES: &[&str] = &["inactive", "building", "running", "degraded", "inaccessible"];

#[rustfmt::skip]
static TABLE: &[StatSpec] = &[
    row("state", "pool", Enum, NONE, gauge("libvirt_storage_pool_state", 1.0, "Pool state: 0 inactive, 1 building, 2 running, 3 degraded, 4 inaccessible.")),
    row("capacity", "pool", Bytes, NONE, gauge("libvirt_storage_pool_capacity_bytes", 1.0, "Logical size of the pool (as of libvirt's last refresh).")),
    row("allocation", "pool", Bytes, NONE, gauge("libvirt_storage_pool_allocation_bytes", 1.0, "Space allocated in the pool.")),
    row("available", "pool", Bytes, NONE, gauge("libvirt_storage_pool_available_bytes", 1.0, "Free space in the pool.")),
    row("volumes", "pool", Count, NONE, gauge("libvirt_storage_pool_volumes", 1.0, "Volumes in the pool.")),
    row("type", "pool", Text, NONE, None),
    row("persistent", "pool", Boolean, NONE, None),
    row("autostart", "pool", Boolean, NONE, None),
];

/// One storage pool.
pub(crate) static STORAGE_POOL: KindSpec = KindSpec {
    name: "storage_pool",
    title: "Storage pools",
    subject: Subject::Pool,
    prefix: "libvirt_storage_pool_",
    table: TABLE,
    info: &[InfoSpec {
        name: "libvirt_storage_pool_info",
        help: "Descriptive data about the storage pool (value is always 1); join on pool/uuid.",
        labels: &[
            ("type", InfoValue::Field("type")),
            ("state", InfoValue::Code("state", POOL_STATES)),
            ("persistent", InfoValue::Field("persistent")),
            ("autostart", InfoValue::Field("autostart")),
        ],
        ..InfoSpec::EMPTY
    }],
    otlp_namespace: "libvirt.pool",
    ..KindSpec::EMPTY
};
