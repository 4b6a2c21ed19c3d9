//! Event registration and the `extern "C"` trampolines libvirt calls.
//!
//! Callbacks run on the libvirt event-loop thread. Each trampoline copies
//! what libvirt passes (pointers are only valid during the call) into a
//! `RawEvent` and hands it to the sink, which must not block. Nothing here
//! may unwind into C: every trampoline body runs under `catch_unwind`, and a
//! caught panic is counted and logged (`crate::util::internal_errors`).
//!
//! Each trampoline is checked against its event's bindgen typedef before it
//! is cast to the generic callback type the register calls take, so a
//! trampoline with the wrong signature does not compile.

use std::ffi::{c_char, c_int, c_longlong, c_uint, c_ulonglong, c_void, CStr};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use virt_sys as sys;

use super::connection::Connection;
use super::domain::{domain_name, domain_uuid};
use super::error::{LibvirtError, Result};
use super::typed_params::{decode, KeyInterner, TypedValue};

/// Which registration API an event comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    Domain,
    Network,
    StoragePool,
    NodeDevice,
    Secret,
    QemuMonitor,
}

impl Family {
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Domain => "domain",
            Family::Network => "network",
            Family::StoragePool => "storage_pool",
            Family::NodeDevice => "node_device",
            Family::Secret => "secret",
            Family::QemuMonitor => "qemu_monitor",
        }
    }
}

/// An event copied out of libvirt's memory.
#[derive(Debug, Clone)]
pub struct RawEvent {
    pub family: Family,
    /// The event ID within its family (`VIR_DOMAIN_EVENT_ID_*` ...).
    pub event_id: i32,
    /// The callback's name: `lifecycle`, `io_error_reason`, `refresh`, ...
    pub name: &'static str,
    pub object_name: String,
    /// Empty for objects without a UUID (node devices).
    pub object_uuid: String,
    /// Every argument of the callback, typed; typed parameters (tunable,
    /// job completed) under their own names.
    pub fields: Vec<(Arc<str>, TypedValue)>,
    pub time: SystemTime,
    pub at: Instant,
}

/// Where trampolines deliver events. Must return at once.
pub type EventSink = Arc<dyn Fn(RawEvent) + Send + Sync>;

/// A string argument; NULL (libvirt's "none") stays `None` and the field is
/// left out, so consumers can tell it from an empty string.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string valid for the call.
unsafe fn text(p: *const c_char) -> Option<TypedValue> {
    // SAFETY: the caller's contract: non-NULL means NUL-terminated and valid.
    (!p.is_null()).then(|| TypedValue::String(unsafe { CStr::from_ptr(p) }.to_string_lossy().into()))
}

/// Fields of a callback; `None` values (NULL strings) are dropped.
fn fields<const N: usize>(items: [(&str, Option<TypedValue>); N]) -> Vec<(Arc<str>, TypedValue)> {
    items.into_iter().filter_map(|(k, v)| v.map(|v| (Arc::from(k), v))).collect()
}

fn f(key: &str, v: TypedValue) -> (&str, Option<TypedValue>) {
    (key, Some(v))
}

fn opt(key: &str, p: Option<TypedValue>) -> (&str, Option<TypedValue>) {
    (key, p)
}

fn put(out: &mut Vec<(Arc<str>, TypedValue)>, key: &str, v: Option<TypedValue>) {
    if let Some(v) = v {
        out.push((Arc::from(key), v));
    }
}

/// # Safety
/// `opaque` is NULL or the `EventSink` box made by `boxed` and not freed yet
/// (libvirt calls `free_sink` only after the callback's last call).
unsafe fn deliver(opaque: *mut c_void, ev: RawEvent) {
    if opaque.is_null() {
        return;
    }
    // SAFETY: the caller's contract: a live `Box<EventSink>`, shared only.
    let sink = unsafe { &*(opaque as *const EventSink) };
    sink(ev);
}

fn event(
    family: Family,
    event_id: u32,
    name: &'static str,
    object: (String, String),
    fields: Vec<(Arc<str>, TypedValue)>,
) -> RawEvent {
    RawEvent {
        family,
        event_id: event_id as i32,
        name,
        object_name: object.0,
        object_uuid: object.1,
        fields,
        time: SystemTime::now(),
        at: Instant::now(),
    }
}

/// # Safety
/// `dom` is NULL or a domain valid for the call.
unsafe fn dom_ident(dom: sys::virDomainPtr) -> (String, String) {
    if dom.is_null() {
        (String::new(), String::new())
    } else {
        // SAFETY: the caller's contract: a valid domain.
        unsafe { (domain_name(dom), domain_uuid(dom)) }
    }
}

/// libvirt's free callback for the opaque pointer of a registration.
unsafe extern "C" fn free_sink(opaque: *mut c_void) {
    if !opaque.is_null() {
        // SAFETY: `opaque` came from `Box::into_raw` in `boxed`, and libvirt
        // (or `register_one`, when registering failed) frees it once.
        drop(unsafe { Box::from_raw(opaque as *mut EventSink) });
    }
}

/// Runs a trampoline body. A panic must not cross into C: it is caught,
/// counted and logged.
fn guarded(body: impl FnOnce()) {
    if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
        crate::util::internal_errors::record("event_callback", panic.as_ref());
    }
}

macro_rules! domain_cb {
    ($fn_name:ident, $id:expr, $name:literal, ( $($arg:ident : $ty:ty),* ), |$($b:ident),*| $fields:expr) => {
        unsafe extern "C" fn $fn_name(_c: sys::virConnectPtr, dom: sys::virDomainPtr, $($arg: $ty,)* opaque: *mut c_void) {
            guarded(|| {
                let ($($b,)*) = ($($arg,)*);
                // SAFETY: libvirt passes a valid domain, arguments valid for
                // the call (strings NUL-terminated or NULL) and the opaque
                // pointer registered with the callback.
                unsafe {
                    let fields: Vec<(Arc<str>, TypedValue)> = $fields;
                    deliver(opaque, event(Family::Domain, $id, $name, dom_ident(dom), fields));
                }
            });
        }
    };
}

/// The lifecycle callback returns an int (unused by libvirt) unlike the rest.
unsafe extern "C" fn on_lifecycle(
    _c: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    e: c_int,
    d: c_int,
    opaque: *mut c_void,
) -> c_int {
    guarded(|| {
        let fields = fields([f("event", TypedValue::Int(e)), f("detail", TypedValue::Int(d))]);
        // SAFETY: as in `domain_cb!`.
        unsafe {
            deliver(
                opaque,
                event(Family::Domain, sys::VIR_DOMAIN_EVENT_ID_LIFECYCLE, "lifecycle", dom_ident(dom), fields),
            )
        }
    });
    0
}

unsafe extern "C" fn on_reboot(_c: sys::virConnectPtr, dom: sys::virDomainPtr, opaque: *mut c_void) {
    guarded(|| {
        // SAFETY: as in `domain_cb!`.
        unsafe {
            deliver(opaque, event(Family::Domain, sys::VIR_DOMAIN_EVENT_ID_REBOOT, "reboot", dom_ident(dom), vec![]))
        }
    });
}

unsafe extern "C" fn on_control_error(_c: sys::virConnectPtr, dom: sys::virDomainPtr, opaque: *mut c_void) {
    guarded(|| {
        let id = sys::VIR_DOMAIN_EVENT_ID_CONTROL_ERROR;
        // SAFETY: as in `domain_cb!`.
        unsafe { deliver(opaque, event(Family::Domain, id, "control_error", dom_ident(dom), vec![])) }
    });
}

domain_cb!(on_rtc_change, sys::VIR_DOMAIN_EVENT_ID_RTC_CHANGE, "rtc_change", (o: c_longlong), |o| fields([f("utcoffset", TypedValue::LLong(o))]));
domain_cb!(on_watchdog, sys::VIR_DOMAIN_EVENT_ID_WATCHDOG, "watchdog", (a: c_int), |a| fields([f("action", TypedValue::Int(a))]));
domain_cb!(on_io_error, sys::VIR_DOMAIN_EVENT_ID_IO_ERROR, "io_error", (s: *const c_char, d: *const c_char, a: c_int), |s, d, a| fields([
    opt("src_path", text(s)),
    opt("dev_alias", text(d)),
    f("action", TypedValue::Int(a)),
]));
domain_cb!(on_io_error_reason, sys::VIR_DOMAIN_EVENT_ID_IO_ERROR_REASON, "io_error_reason",
    (s: *const c_char, d: *const c_char, a: c_int, r: *const c_char), |s, d, a, r| fields([
    opt("src_path", text(s)),
    opt("dev_alias", text(d)),
    f("action", TypedValue::Int(a)),
    opt("reason", text(r)),
]));

/// # Safety
/// `a` is NULL or an address libvirt passed, valid for the call.
unsafe fn graphics_address(
    prefix: &str,
    a: *const sys::virDomainEventGraphicsAddress,
    out: &mut Vec<(Arc<str>, TypedValue)>,
) {
    if a.is_null() {
        return;
    }
    // SAFETY: the caller's contract: a valid address for the call.
    let a = unsafe { &*a };
    put(out, &format!("{prefix}.family"), Some(TypedValue::Int(a.family)));
    // SAFETY: libvirt's strings in the address are NULL or NUL-terminated.
    unsafe {
        put(out, &format!("{prefix}.node"), text(a.node));
        put(out, &format!("{prefix}.service"), text(a.service));
    }
}

unsafe extern "C" fn on_graphics(
    _c: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    phase: c_int,
    local: *const sys::virDomainEventGraphicsAddress,
    remote: *const sys::virDomainEventGraphicsAddress,
    auth: *const c_char,
    subject: *const sys::virDomainEventGraphicsSubject,
    opaque: *mut c_void,
) {
    guarded(|| {
        let mut fields = fields([f("phase", TypedValue::Int(phase))]);
        // SAFETY: libvirt passes addresses, strings and a subject (each
        // possibly NULL) valid for the call; the subject holds `nidentity`
        // identities; the rest as in `domain_cb!`.
        unsafe {
            graphics_address("local", local, &mut fields);
            graphics_address("remote", remote, &mut fields);
            put(&mut fields, "auth_scheme", text(auth));
            if let Some(subject) = subject.as_ref() {
                if !subject.identities.is_null() {
                    let ids = std::slice::from_raw_parts(subject.identities, subject.nidentity.max(0) as usize);
                    for (i, id) in ids.iter().enumerate() {
                        put(&mut fields, &format!("subject.{i}.type"), text(id.type_));
                        put(&mut fields, &format!("subject.{i}.name"), text(id.name));
                    }
                }
            }
            deliver(
                opaque,
                event(Family::Domain, sys::VIR_DOMAIN_EVENT_ID_GRAPHICS, "graphics", dom_ident(dom), fields),
            );
        }
    });
}

domain_cb!(on_block_job, sys::VIR_DOMAIN_EVENT_ID_BLOCK_JOB, "block_job", (d: *const c_char, t: c_int, s: c_int), |d, t, s| fields([
    opt("disk", text(d)),
    f("type", TypedValue::Int(t)),
    f("status", TypedValue::Int(s)),
]));
domain_cb!(on_block_job_2, sys::VIR_DOMAIN_EVENT_ID_BLOCK_JOB_2, "block_job_2", (d: *const c_char, t: c_int, s: c_int), |d, t, s| fields([
    opt("disk", text(d)),
    f("type", TypedValue::Int(t)),
    f("status", TypedValue::Int(s)),
]));
domain_cb!(on_disk_change, sys::VIR_DOMAIN_EVENT_ID_DISK_CHANGE, "disk_change",
    (o: *const c_char, n: *const c_char, a: *const c_char, r: c_int), |o, n, a, r| fields([
    opt("old_src_path", text(o)),
    opt("new_src_path", text(n)),
    opt("dev_alias", text(a)),
    f("reason", TypedValue::Int(r)),
]));
domain_cb!(on_tray_change, sys::VIR_DOMAIN_EVENT_ID_TRAY_CHANGE, "tray_change", (a: *const c_char, r: c_int), |a, r| fields([
    opt("dev_alias", text(a)),
    f("reason", TypedValue::Int(r)),
]));
domain_cb!(on_pm_wakeup, sys::VIR_DOMAIN_EVENT_ID_PMWAKEUP, "pm_wakeup", (r: c_int), |r| fields([f("reason", TypedValue::Int(r))]));
domain_cb!(on_pm_suspend, sys::VIR_DOMAIN_EVENT_ID_PMSUSPEND, "pm_suspend", (r: c_int), |r| fields([f("reason", TypedValue::Int(r))]));
domain_cb!(on_pm_suspend_disk, sys::VIR_DOMAIN_EVENT_ID_PMSUSPEND_DISK, "pm_suspend_disk", (r: c_int), |r| fields([f("reason", TypedValue::Int(r))]));
domain_cb!(on_balloon_change, sys::VIR_DOMAIN_EVENT_ID_BALLOON_CHANGE, "balloon_change", (a: c_ulonglong), |a| fields([f("actual", TypedValue::ULLong(a))]));
domain_cb!(on_device_removed, sys::VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED, "device_removed", (a: *const c_char), |a| fields([opt("dev_alias", text(a))]));
domain_cb!(on_device_added, sys::VIR_DOMAIN_EVENT_ID_DEVICE_ADDED, "device_added", (a: *const c_char), |a| fields([opt("dev_alias", text(a))]));
domain_cb!(on_device_removal_failed, sys::VIR_DOMAIN_EVENT_ID_DEVICE_REMOVAL_FAILED, "device_removal_failed", (a: *const c_char), |a| fields([opt("dev_alias", text(a))]));
domain_cb!(on_agent_lifecycle, sys::VIR_DOMAIN_EVENT_ID_AGENT_LIFECYCLE, "agent_lifecycle", (s: c_int, r: c_int), |s, r| fields([
    f("state", TypedValue::Int(s)),
    f("reason", TypedValue::Int(r)),
]));
domain_cb!(on_migration_iteration, sys::VIR_DOMAIN_EVENT_ID_MIGRATION_ITERATION, "migration_iteration", (i: c_int), |i| fields([f("iteration", TypedValue::Int(i))]));
domain_cb!(on_metadata_change, sys::VIR_DOMAIN_EVENT_ID_METADATA_CHANGE, "metadata_change", (t: c_int, n: *const c_char), |t, n| fields([
    f("type", TypedValue::Int(t)),
    opt("nsuri", text(n)),
]));
domain_cb!(on_block_threshold, sys::VIR_DOMAIN_EVENT_ID_BLOCK_THRESHOLD, "block_threshold",
    (d: *const c_char, p: *const c_char, t: c_ulonglong, e: c_ulonglong), |d, p, t, e| fields([
    opt("dev", text(d)),
    opt("path", text(p)),
    f("threshold", TypedValue::ULLong(t)),
    f("excess", TypedValue::ULLong(e)),
]));
domain_cb!(on_memory_failure, sys::VIR_DOMAIN_EVENT_ID_MEMORY_FAILURE, "memory_failure", (r: c_int, a: c_int, fl: c_uint), |r, a, fl| fields([
    f("recipient", TypedValue::Int(r)),
    f("action", TypedValue::Int(a)),
    f("flags", TypedValue::UInt(fl)),
]));
domain_cb!(on_memory_device_size_change, sys::VIR_DOMAIN_EVENT_ID_MEMORY_DEVICE_SIZE_CHANGE, "memory_device_size_change",
    (a: *const c_char, s: c_ulonglong), |a, s| fields([
    opt("alias", text(a)),
    f("size", TypedValue::ULLong(s)),
]));
domain_cb!(on_nic_mac_change, sys::VIR_DOMAIN_EVENT_ID_NIC_MAC_CHANGE, "nic_mac_change",
    (a: *const c_char, o: *const c_char, n: *const c_char), |a, o, n| fields([
    opt("alias", text(a)),
    opt("old_mac", text(o)),
    opt("new_mac", text(n)),
]));
domain_cb!(on_vcpu_removed, sys::VIR_DOMAIN_EVENT_ID_VCPU_REMOVED, "vcpu_removed", (v: c_uint), |v| fields([f("vcpu_id", TypedValue::UInt(v))]));
domain_cb!(on_channel_lifecycle, sys::VIR_DOMAIN_EVENT_ID_CHANNEL_LIFECYCLE, "channel_lifecycle",
    (n: *const c_char, s: c_int, r: c_int), |n, s, r| fields([
    opt("channel_name", text(n)),
    f("state", TypedValue::Int(s)),
    f("reason", TypedValue::Int(r)),
]));

/// # Safety
/// `params` is NULL or libvirt's array of `n` parameters, valid for the call.
unsafe fn params_fields(params: sys::virTypedParameterPtr, n: c_int) -> Vec<(Arc<str>, TypedValue)> {
    // Event rates are low: a fresh interner per event costs nothing worth caching.
    // SAFETY: the caller's contract.
    let decoded = unsafe { decode(params, n, &mut KeyInterner::default()) };
    decoded.params.into_iter().map(|p| (p.name, p.value)).collect()
}

domain_cb!(on_tunable, sys::VIR_DOMAIN_EVENT_ID_TUNABLE, "tunable", (p: sys::virTypedParameterPtr, n: c_int), |p, n| params_fields(p, n));
domain_cb!(on_job_completed, sys::VIR_DOMAIN_EVENT_ID_JOB_COMPLETED, "job_completed", (p: sys::virTypedParameterPtr, n: c_int), |p, n| params_fields(p, n));

/// A trampoline as the callback type a register call takes, after checking
/// it against its event's typedef: `$f: $typedef` alone when the typedef is
/// that type, `$f: $typedef => $generic` to cast it.
macro_rules! callback {
    ($f:ident: $typedef:ident) => {{
        let typed: sys::$typedef = Some($f);
        typed
    }};
    ($f:ident: $typedef:ident => $generic:ident) => {{
        let typed: sys::$typedef = Some($f);
        // SAFETY: both are `Option<unsafe extern "C" fn>`, one pointer with
        // the same niche. libvirt calls the pointer with the signature of
        // the event ID it is registered for (VIR_DOMAIN_EVENT_CALLBACK and
        // its kin cast it the same way), which the line above checks.
        unsafe { std::mem::transmute::<sys::$typedef, sys::$generic>(typed) }
    }};
}

macro_rules! domain {
    ($f:ident: $typedef:ident) => {
        callback!($f: $typedef => virConnectDomainEventGenericCallback)
    };
}

/// Every domain event ID this build knows, with its trampoline.
fn domain_callbacks() -> Vec<(u32, &'static str, sys::virConnectDomainEventGenericCallback)> {
    vec![
        (sys::VIR_DOMAIN_EVENT_ID_LIFECYCLE, "lifecycle", domain!(on_lifecycle: virConnectDomainEventCallback)),
        (sys::VIR_DOMAIN_EVENT_ID_REBOOT, "reboot", callback!(on_reboot: virConnectDomainEventGenericCallback)),
        (
            sys::VIR_DOMAIN_EVENT_ID_RTC_CHANGE,
            "rtc_change",
            domain!(on_rtc_change: virConnectDomainEventRTCChangeCallback),
        ),
        (sys::VIR_DOMAIN_EVENT_ID_WATCHDOG, "watchdog", domain!(on_watchdog: virConnectDomainEventWatchdogCallback)),
        (sys::VIR_DOMAIN_EVENT_ID_IO_ERROR, "io_error", domain!(on_io_error: virConnectDomainEventIOErrorCallback)),
        (sys::VIR_DOMAIN_EVENT_ID_GRAPHICS, "graphics", domain!(on_graphics: virConnectDomainEventGraphicsCallback)),
        (
            sys::VIR_DOMAIN_EVENT_ID_IO_ERROR_REASON,
            "io_error_reason",
            domain!(on_io_error_reason: virConnectDomainEventIOErrorReasonCallback),
        ),
        (
            sys::VIR_DOMAIN_EVENT_ID_CONTROL_ERROR,
            "control_error",
            callback!(on_control_error: virConnectDomainEventGenericCallback),
        ),
        (sys::VIR_DOMAIN_EVENT_ID_BLOCK_JOB, "block_job", domain!(on_block_job: virConnectDomainEventBlockJobCallback)),
        (
            sys::VIR_DOMAIN_EVENT_ID_DISK_CHANGE,
            "disk_change",
            domain!(on_disk_change: virConnectDomainEventDiskChangeCallback),
        ),
        (
            sys::VIR_DOMAIN_EVENT_ID_TRAY_CHANGE,
            "tray_change",
            domain!(on_tray_change: virConnectDomainEventTrayChangeCallback),
        ),
        (sys::VIR_DOMAIN_EVENT_ID_PMWAKEUP, "pm_wakeup", domain!(on_pm_wakeup: virConnectDomainEventPMWakeupCallback)),
        (
            sys::VIR_DOMAIN_EVENT_ID_PMSUSPEND,
            "pm_suspend",
            domain!(on_pm_suspend: virConnectDomainEventPMSuspendCallback),
        ),
        (
            sys::VIR_DOMAIN_EVENT_ID_BALLOON_CHANGE,
            "balloon_change",
            domain!(on_balloon_change: virConnectDomainEventBalloonChangeCallback),
        ),
        (
            sys::VIR_DOMAIN_EVENT_ID_PMSUSPEND_DISK,
            "pm_suspend_disk",
            domain!(on_pm_suspend_disk: virConnectDomainEventPMSuspendDiskCallback),
        ),
        (
            sys::VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED,
            "device_removed",
            domain!(on_device_removed: virConnectDomainEventDeviceRemovedCallback),
        ),
        (
            sys::VIR_DOMAIN_EVENT_ID_BLOCK_JOB_2,
            "block_job_2",
            domain!(on_block_job_2: virConnectDomainEventBlockJobCallback),
        ),
        (sys::VIR_DOMAIN_EVENT_ID_TUNABLE, "tunable", domain!(on_tunable: virConnectDomainEventTunableCallback)),
        (
            sys::VIR_DOMAIN_EVENT_ID_AGENT_LIFECYCLE,
            "agent_lifecycle",
            domain!(on_agent_lifecycle: virConnectDomainEventAgentLifecycleCallback),
        ),
        (
            sys::VIR_DOMAIN_EVENT_ID_DEVICE_ADDED,
            "device_added",
            domain!(on_device_added: virConnectDomainEventDeviceAddedCallback),
        ),
        (
            sys::VIR_DOMAIN_EVENT_ID_MIGRATION_ITERATION,
            "migration_iteration",
            domain!(on_migration_iteration: virConnectDomainEventMigrationIterationCallback),
        ),
        (
            sys::VIR_DOMAIN_EVENT_ID_JOB_COMPLETED,
            "job_completed",
            domain!(on_job_completed: virConnectDomainEventJobCompletedCallback),
        ),
        (
            sys::VIR_DOMAIN_EVENT_ID_DEVICE_REMOVAL_FAILED,
            "device_removal_failed",
            domain!(on_device_removal_failed: virConnectDomainEventDeviceRemovalFailedCallback),
        ),
        (
            sys::VIR_DOMAIN_EVENT_ID_METADATA_CHANGE,
            "metadata_change",
            domain!(on_metadata_change: virConnectDomainEventMetadataChangeCallback),
        ),
        (
            sys::VIR_DOMAIN_EVENT_ID_BLOCK_THRESHOLD,
            "block_threshold",
            domain!(on_block_threshold: virConnectDomainEventBlockThresholdCallback),
        ),
        (
            sys::VIR_DOMAIN_EVENT_ID_MEMORY_FAILURE,
            "memory_failure",
            domain!(on_memory_failure: virConnectDomainEventMemoryFailureCallback),
        ),
        (
            sys::VIR_DOMAIN_EVENT_ID_MEMORY_DEVICE_SIZE_CHANGE,
            "memory_device_size_change",
            domain!(on_memory_device_size_change: virConnectDomainEventMemoryDeviceSizeChangeCallback),
        ),
        (
            sys::VIR_DOMAIN_EVENT_ID_NIC_MAC_CHANGE,
            "nic_mac_change",
            domain!(on_nic_mac_change: virConnectDomainEventNICMACChangeCallback),
        ),
        (
            sys::VIR_DOMAIN_EVENT_ID_VCPU_REMOVED,
            "vcpu_removed",
            domain!(on_vcpu_removed: virConnectDomainEventVcpuRemovedCallback),
        ),
        (
            sys::VIR_DOMAIN_EVENT_ID_CHANNEL_LIFECYCLE,
            "channel_lifecycle",
            domain!(on_channel_lifecycle: virConnectDomainEventChannelLifecycleCallback),
        ),
    ]
}

/// Domain event IDs this build can register (the daemon may support fewer).
pub fn domain_event_names() -> Vec<(u32, &'static str)> {
    domain_callbacks().into_iter().map(|(id, n, _)| (id, n)).collect()
}

// ---- other families ---------------------------------------------------------

/// An object's name and UUID string for a record.
///
/// # Safety
/// `name` is NULL or NUL-terminated; `uuid` writes at most 37 bytes
/// (VIR_UUID_STRING_BUFLEN) into the buffer it is given.
unsafe fn name_and_uuid(name: *const c_char, uuid: impl FnOnce(*mut c_char) -> c_int) -> (String, String) {
    let mut buf = [0 as c_char; 37];
    let uuid = if uuid(buf.as_mut_ptr()) == 0 {
        buf[36] = 0;
        // SAFETY: NUL-terminated just above, whatever libvirt wrote.
        unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned()
    } else {
        // SAFETY: clears this thread's error slot.
        unsafe { sys::virResetLastError() };
        String::new()
    };
    // SAFETY: the caller's contract.
    let name = unsafe { text(name) }.and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
    (name, uuid)
}

/// # Safety
/// The object is NULL or valid for the call.
unsafe fn net_ident(net: sys::virNetworkPtr) -> (String, String) {
    if net.is_null() {
        return (String::new(), String::new());
    }
    // SAFETY: a valid network; its name lives as long as it does.
    unsafe { name_and_uuid(sys::virNetworkGetName(net), |b| sys::virNetworkGetUUIDString(net, b)) }
}

/// # Safety
/// The object is NULL or valid for the call.
unsafe fn pool_ident(pool: sys::virStoragePoolPtr) -> (String, String) {
    if pool.is_null() {
        return (String::new(), String::new());
    }
    // SAFETY: a valid pool; its name lives as long as it does.
    unsafe { name_and_uuid(sys::virStoragePoolGetName(pool), |b| sys::virStoragePoolGetUUIDString(pool, b)) }
}

/// # Safety
/// The object is NULL or valid for the call.
unsafe fn nodedev_ident(dev: sys::virNodeDevicePtr) -> (String, String) {
    if dev.is_null() {
        return (String::new(), String::new());
    }
    // SAFETY: a valid node device; its name lives as long as it does.
    let name = unsafe { text(sys::virNodeDeviceGetName(dev)) };
    (name.and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default(), String::new())
}

/// # Safety
/// The object is NULL or valid for the call.
unsafe fn secret_ident(secret: sys::virSecretPtr) -> (String, String) {
    if secret.is_null() {
        return (String::new(), String::new());
    }
    // SAFETY: a valid secret; its usage ID lives as long as it does.
    unsafe { name_and_uuid(sys::virSecretGetUsageID(secret), |b| sys::virSecretGetUUIDString(secret, b)) }
}

/// The lifecycle callback of an object family: (event, detail) codes.
macro_rules! object_lifecycle {
    ($fn_name:ident, $obj:ty, $family:expr, $id:expr, $ident:ident) => {
        unsafe extern "C" fn $fn_name(_c: sys::virConnectPtr, o: $obj, e: c_int, d: c_int, opaque: *mut c_void) {
            guarded(|| {
                let fields = fields([f("event", TypedValue::Int(e)), f("detail", TypedValue::Int(d))]);
                // SAFETY: libvirt passes a valid object and the opaque
                // pointer registered with the callback.
                unsafe { deliver(opaque, event($family, $id, "lifecycle", $ident(o), fields)) };
            });
        }
    };
}

/// A callback that carries nothing but its object (refresh, update, value changed).
macro_rules! object_plain {
    ($fn_name:ident, $obj:ty, $family:expr, $id:expr, $name:expr, $ident:ident) => {
        unsafe extern "C" fn $fn_name(_c: sys::virConnectPtr, o: $obj, opaque: *mut c_void) {
            // SAFETY: libvirt passes a valid object and the opaque pointer
            // registered with the callback.
            guarded(|| unsafe { deliver(opaque, event($family, $id, $name, $ident(o), vec![])) });
        }
    };
}

object_lifecycle!(
    on_net_lifecycle,
    sys::virNetworkPtr,
    Family::Network,
    sys::VIR_NETWORK_EVENT_ID_LIFECYCLE,
    net_ident
);
object_lifecycle!(
    on_pool_lifecycle,
    sys::virStoragePoolPtr,
    Family::StoragePool,
    sys::VIR_STORAGE_POOL_EVENT_ID_LIFECYCLE,
    pool_ident
);
object_plain!(
    on_pool_refresh,
    sys::virStoragePoolPtr,
    Family::StoragePool,
    sys::VIR_STORAGE_POOL_EVENT_ID_REFRESH,
    "refresh",
    pool_ident
);
object_lifecycle!(
    on_nodedev_lifecycle,
    sys::virNodeDevicePtr,
    Family::NodeDevice,
    sys::VIR_NODE_DEVICE_EVENT_ID_LIFECYCLE,
    nodedev_ident
);
object_plain!(
    on_nodedev_update,
    sys::virNodeDevicePtr,
    Family::NodeDevice,
    sys::VIR_NODE_DEVICE_EVENT_ID_UPDATE,
    "update",
    nodedev_ident
);
object_lifecycle!(
    on_secret_lifecycle,
    sys::virSecretPtr,
    Family::Secret,
    sys::VIR_SECRET_EVENT_ID_LIFECYCLE,
    secret_ident
);
object_plain!(
    on_secret_value_changed,
    sys::virSecretPtr,
    Family::Secret,
    sys::VIR_SECRET_EVENT_ID_VALUE_CHANGED,
    "value_changed",
    secret_ident
);

unsafe extern "C" fn on_net_metadata(
    _c: sys::virConnectPtr,
    n: sys::virNetworkPtr,
    t: c_int,
    ns: *const c_char,
    opaque: *mut c_void,
) {
    guarded(|| {
        let id = sys::VIR_NETWORK_EVENT_ID_METADATA_CHANGE;
        // SAFETY: libvirt passes a valid network, a NULL or NUL-terminated
        // namespace and the opaque pointer registered with the callback.
        unsafe {
            let fields = fields([f("type", TypedValue::Int(t)), ("nsuri", text(ns))]);
            deliver(opaque, event(Family::Network, id, "metadata_change", net_ident(n), fields));
        }
    });
}

unsafe extern "C" fn on_qemu_monitor(
    _c: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    ev: *const c_char,
    seconds: c_longlong,
    micros: c_uint,
    details: *const c_char,
    opaque: *mut c_void,
) {
    guarded(|| {
        // SAFETY: as in `domain_cb!`.
        unsafe {
            let fields = fields([
                opt("event", text(ev)),
                f("seconds", TypedValue::LLong(seconds)),
                f("micros", TypedValue::UInt(micros)),
                opt("details", text(details)),
            ]);
            deliver(opaque, event(Family::QemuMonitor, 0, "qemu_monitor", dom_ident(dom), fields));
        }
    });
}

/// The outcome of registering one event ID.
#[derive(Debug)]
pub struct Registered {
    pub family: Family,
    pub event_id: u32,
    pub name: &'static str,
    pub result: Result<c_int>,
}

fn boxed(sink: &EventSink) -> *mut c_void {
    Box::into_raw(Box::new(sink.clone())).cast()
}

/// Registers `register(opaque)`; on failure reclaims the opaque box.
fn register_one(
    family: Family,
    event_id: u32,
    name: &'static str,
    sink: &EventSink,
    register: impl FnOnce(*mut c_void) -> c_int,
) -> Registered {
    let opaque = boxed(sink);
    let id = register(opaque);
    let result = if id < 0 {
        let e = LibvirtError::last();
        // SAFETY: libvirt did not take the opaque pointer.
        unsafe { free_sink(opaque) };
        Err(e)
    } else {
        Ok(id)
    };
    Registered { family, event_id, name, result }
}

impl Connection {
    /// Registers every event callback this build knows on this connection
    /// (the QEMU monitor one only when asked). Registrations the daemon
    /// refuses come back as errors; the rest stay until the connection is
    /// dropped or `deregister_events` is called.
    pub fn register_events(&self, sink: &EventSink, qemu_monitor: bool) -> Vec<Registered> {
        let c = self.as_ptr();
        let null_dom: sys::virDomainPtr = std::ptr::null_mut();
        let mut out = Vec::new();
        for (id, name, cb) in domain_callbacks() {
            // SAFETY: valid connection; cb matches id; opaque freed by free_sink.
            out.push(register_one(Family::Domain, id, name, sink, |o| unsafe {
                sys::virConnectDomainEventRegisterAny(c, null_dom, id as c_int, cb, o, Some(free_sink))
            }));
        }
        // The four object families register alike: (family, the register
        // function, [(event id, name, callback checked by `callback!`)]).
        macro_rules! register_family {
            ($family:expr, $register:ident, [$(($id:expr, $name:expr, $cb:expr)),+ $(,)?]) => {
                for (id, name, cb) in [$(($id, $name, $cb)),+] {
                    // SAFETY: valid connection; cb has the signature of id's
                    // event; the opaque box is freed by free_sink.
                    out.push(register_one($family, id, name, sink, |o| unsafe {
                        sys::$register(c, std::ptr::null_mut(), id as c_int, cb, o, Some(free_sink))
                    }));
                }
            };
        }
        register_family!(
            Family::Network,
            virConnectNetworkEventRegisterAny,
            [
                (
                    sys::VIR_NETWORK_EVENT_ID_LIFECYCLE,
                    "lifecycle",
                    callback!(on_net_lifecycle: virConnectNetworkEventLifecycleCallback => virConnectNetworkEventGenericCallback)
                ),
                (
                    sys::VIR_NETWORK_EVENT_ID_METADATA_CHANGE,
                    "metadata_change",
                    callback!(on_net_metadata: virConnectNetworkEventMetadataChangeCallback => virConnectNetworkEventGenericCallback)
                ),
            ]
        );
        register_family!(
            Family::StoragePool,
            virConnectStoragePoolEventRegisterAny,
            [
                (
                    sys::VIR_STORAGE_POOL_EVENT_ID_LIFECYCLE,
                    "lifecycle",
                    callback!(on_pool_lifecycle: virConnectStoragePoolEventLifecycleCallback => virConnectStoragePoolEventGenericCallback)
                ),
                (
                    sys::VIR_STORAGE_POOL_EVENT_ID_REFRESH,
                    "refresh",
                    callback!(on_pool_refresh: virConnectStoragePoolEventGenericCallback)
                ),
            ]
        );
        register_family!(
            Family::NodeDevice,
            virConnectNodeDeviceEventRegisterAny,
            [
                (
                    sys::VIR_NODE_DEVICE_EVENT_ID_LIFECYCLE,
                    "lifecycle",
                    callback!(on_nodedev_lifecycle: virConnectNodeDeviceEventLifecycleCallback => virConnectNodeDeviceEventGenericCallback)
                ),
                (
                    sys::VIR_NODE_DEVICE_EVENT_ID_UPDATE,
                    "update",
                    callback!(on_nodedev_update: virConnectNodeDeviceEventGenericCallback)
                ),
            ]
        );
        register_family!(
            Family::Secret,
            virConnectSecretEventRegisterAny,
            [
                (
                    sys::VIR_SECRET_EVENT_ID_LIFECYCLE,
                    "lifecycle",
                    callback!(on_secret_lifecycle: virConnectSecretEventLifecycleCallback => virConnectSecretEventGenericCallback)
                ),
                (
                    sys::VIR_SECRET_EVENT_ID_VALUE_CHANGED,
                    "value_changed",
                    callback!(on_secret_value_changed: virConnectSecretEventGenericCallback)
                ),
            ]
        );
        if qemu_monitor {
            // SAFETY: as above; a NULL event name subscribes to every event.
            out.push(register_one(Family::QemuMonitor, 0, "qemu_monitor", sink, |o| unsafe {
                sys::virConnectDomainQemuMonitorEventRegister(
                    c,
                    null_dom,
                    std::ptr::null(),
                    Some(on_qemu_monitor),
                    o,
                    Some(free_sink),
                    0,
                )
            }));
        }
        let ids: Vec<(Family, c_int)> =
            out.iter().filter_map(|r| r.result.as_ref().ok().map(|id| (r.family, *id))).collect();
        self.remember_callbacks(ids);
        out
    }

    /// Deregisters every event callback registered on this connection.
    pub fn deregister_events(&self) {
        for (family, id) in self.take_callbacks() {
            deregister(self.as_ptr(), family, id);
        }
    }
}

pub(crate) fn deregister(c: sys::virConnectPtr, family: Family, id: c_int) {
    // SAFETY: valid connection; a failure only means libvirt already dropped it.
    let rc = unsafe {
        match family {
            Family::Domain => sys::virConnectDomainEventDeregisterAny(c, id),
            Family::Network => sys::virConnectNetworkEventDeregisterAny(c, id),
            Family::StoragePool => sys::virConnectStoragePoolEventDeregisterAny(c, id),
            Family::NodeDevice => sys::virConnectNodeDeviceEventDeregisterAny(c, id),
            Family::Secret => sys::virConnectSecretEventDeregisterAny(c, id),
            Family::QemuMonitor => sys::virConnectDomainQemuMonitorEventDeregister(c, id),
        }
    };
    if rc < 0 {
        // SAFETY: clears this thread's error slot.
        unsafe { sys::virResetLastError() };
    }
}
