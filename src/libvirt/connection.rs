//! One libvirt connection: open (read-only by default), keepalive, close
//! notification, and the domain listing calls every collector needs.

use std::ffi::{c_int, c_void, CString};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use virt_sys as sys;

use super::domain::Domain;
use super::error::{LibvirtError, Result};
use super::event_loop;
use super::events::{deregister, Family};

/// Raised by libvirt's close callback (on the event-loop thread) when the
/// connection dies: daemon gone, keepalive timeout, or socket error.
#[derive(Default)]
pub struct CloseSignal {
    closed: AtomicBool,
    reason: AtomicI32,
    notify: Notify,
}

impl CloseSignal {
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Marks the connection dead from the agent's side (a call failed with a
    /// connection error) and wakes the connection manager.
    pub fn trip(&self, reason: i32) {
        self.reason.store(reason, Ordering::Relaxed);
        self.closed.store(true, Ordering::Release);
        self.notify.notify_one();
    }

    pub async fn wait(&self) {
        while !self.is_closed() {
            self.notify.notified().await;
        }
    }

    pub fn reason_code(&self) -> i32 {
        self.reason.load(Ordering::Relaxed)
    }

    pub fn reason(&self) -> &'static str {
        match self.reason.load(Ordering::Relaxed) as u32 {
            sys::VIR_CONNECT_CLOSE_REASON_ERROR => "error",
            sys::VIR_CONNECT_CLOSE_REASON_EOF => "eof",
            sys::VIR_CONNECT_CLOSE_REASON_KEEPALIVE => "keepalive",
            sys::VIR_CONNECT_CLOSE_REASON_CLIENT => "client",
            x if x as i32 == CLOSE_REASON_RETARGETED => "retargeted",
            _ => "call_failed",
        }
    }
}

/// Reason code used when the agent itself decides the connection is dead.
pub const CLOSE_REASON_CALL_FAILED: i32 = -1;
/// The agent closed it to connect elsewhere (a reload changed `[libvirt]`).
pub const CLOSE_REASON_RETARGETED: i32 = -2;

unsafe extern "C" fn on_close(_conn: sys::virConnectPtr, reason: c_int, opaque: *mut c_void) {
    // Runs on the libvirt event-loop thread: only a non-blocking hand-off.
    // SAFETY: `opaque` is the box registered with this callback; libvirt
    // frees it (free_close_opaque) only after the last call.
    let signal = unsafe { &*(opaque as *const Arc<CloseSignal>) };
    signal.trip(reason);
}

unsafe extern "C" fn free_close_opaque(opaque: *mut c_void) {
    // SAFETY: `opaque` came from `Box::into_raw`; libvirt frees it once.
    drop(unsafe { Box::from_raw(opaque as *mut Arc<CloseSignal>) });
}

pub struct OpenOptions {
    pub uri: String,
    pub read_only: bool,
    /// Seconds between keepalive probes; 0 disables keepalive.
    pub keepalive_interval: i32,
    pub keepalive_count: u32,
}

/// An open connection. Every method is a blocking call: use it from a
/// blocking thread, never from an async task.
pub struct Connection {
    ptr: sys::virConnectPtr,
    uri: String,
    close_signal: Arc<CloseSignal>,
    close_registered: bool,
    keepalive: bool,
    /// Event callbacks registered on this connection, deregistered on drop.
    callbacks: Mutex<Vec<(Family, c_int)>>,
}

// SAFETY: libvirt connections are thread safe; calls may be made concurrently.
unsafe impl Send for Connection {}
// SAFETY: as for Send: libvirt locks inside each call.
unsafe impl Sync for Connection {}

impl Connection {
    pub fn open(opts: &OpenOptions) -> Result<Self> {
        event_loop::init()?;
        let c_uri = CString::new(opts.uri.as_str())
            .map_err(|_| LibvirtError::new(0, format!("libvirt URI {:?} contains a NUL byte", opts.uri)))?;
        // SAFETY: valid C string; the returned pointer is owned by Self.
        let ptr = unsafe {
            if opts.read_only {
                sys::virConnectOpenReadOnly(c_uri.as_ptr())
            } else {
                sys::virConnectOpen(c_uri.as_ptr())
            }
        };
        if ptr.is_null() {
            return Err(LibvirtError::last());
        }
        let mut conn = Connection {
            ptr,
            uri: opts.uri.clone(),
            close_signal: Arc::new(CloseSignal::default()),
            close_registered: false,
            keepalive: false,
            callbacks: Mutex::new(Vec::new()),
        };
        conn.keepalive = conn.enable_keepalive(opts.keepalive_interval, opts.keepalive_count);
        conn.close_registered = conn.register_close_callback();
        Ok(conn)
    }

    fn enable_keepalive(&self, interval: i32, count: u32) -> bool {
        if interval <= 0 {
            return false;
        }
        // SAFETY: valid connection.
        let rc = unsafe { sys::virConnectSetKeepAlive(self.ptr, interval, count) };
        if rc == 0 {
            return true;
        }
        if rc < 0 {
            // Local drivers (test:///, qemu:///embed) have no keepalive.
            let err = LibvirtError::last();
            tracing::debug!(uri = %self.uri, error = %err, "keepalive not available on this connection");
        }
        false
    }

    fn register_close_callback(&self) -> bool {
        let opaque = Box::into_raw(Box::new(self.close_signal.clone()));
        // SAFETY: opaque is freed by free_close_opaque when libvirt drops the
        // callback, or by us below if registration fails.
        let rc = unsafe {
            sys::virConnectRegisterCloseCallback(self.ptr, Some(on_close), opaque.cast(), Some(free_close_opaque))
        };
        if rc < 0 {
            let err = LibvirtError::last();
            tracing::debug!(uri = %self.uri, error = %err, "close callback not available on this connection");
            // SAFETY: libvirt did not take ownership.
            unsafe { drop(Box::from_raw(opaque)) };
            return false;
        }
        true
    }

    pub(crate) fn as_ptr(&self) -> sys::virConnectPtr {
        self.ptr
    }

    pub(crate) fn remember_callbacks(&self, ids: Vec<(Family, c_int)>) {
        if let Ok(mut v) = self.callbacks.lock() {
            v.extend(ids);
        }
    }

    pub(crate) fn take_callbacks(&self) -> Vec<(Family, c_int)> {
        self.callbacks.lock().map(|mut v| std::mem::take(&mut *v)).unwrap_or_default()
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    pub fn close_signal(&self) -> &Arc<CloseSignal> {
        &self.close_signal
    }

    /// Whether keepalive probes are running (remote connections only).
    pub fn has_keepalive(&self) -> bool {
        self.keepalive
    }

    pub fn is_alive(&self) -> bool {
        // SAFETY: valid connection.
        unsafe { sys::virConnectIsAlive(self.ptr) == 1 }
    }

    /// Whether `e` means this connection is gone: only when the error is of
    /// a kind that can mean it and the connection itself says it is dead
    /// (a local check, no RPC).
    pub fn lost(&self, e: &LibvirtError) -> bool {
        e.may_mean_connection_lost() && !self.is_alive()
    }

    /// libvirt version of the daemon, as major*1_000_000 + minor*1000 + micro.
    pub fn lib_version(&self) -> Result<u64> {
        let mut v: std::ffi::c_ulong = 0;
        // SAFETY: valid connection, valid out pointer.
        if unsafe { sys::virConnectGetLibVersion(self.ptr, &mut v) } < 0 {
            return Err(LibvirtError::last());
        }
        Ok(v as u64)
    }

    /// Lists domains; `flags` are `VIR_CONNECT_LIST_DOMAINS_*` filters (0 = all).
    pub fn list_all_domains(&self, flags: u32) -> Result<Vec<Domain>> {
        let mut doms: *mut sys::virDomainPtr = std::ptr::null_mut();
        // SAFETY: valid connection; doms receives a malloc'd array of owned refs.
        let n = unsafe { sys::virConnectListAllDomains(self.ptr, &mut doms, flags) };
        if n < 0 {
            return Err(LibvirtError::last());
        }
        let mut out = Vec::with_capacity(n as usize);
        // SAFETY: n valid pointers; each is owned by a Domain, the array freed.
        unsafe {
            for i in 0..n as usize {
                let d = *doms.add(i);
                if !d.is_null() {
                    out.push(Domain::from_owned(d));
                }
            }
            libc::free(doms.cast());
        }
        Ok(out)
    }

    pub fn lookup_domain_by_uuid(&self, uuid: &str) -> Result<Domain> {
        let c = CString::new(uuid).map_err(|_| LibvirtError::new(0, "UUID contains a NUL byte"))?;
        // SAFETY: valid connection and C string.
        let d = unsafe { sys::virDomainLookupByUUIDString(self.ptr, c.as_ptr()) };
        if d.is_null() {
            return Err(LibvirtError::last());
        }
        // SAFETY: lookup returns an owned reference.
        Ok(unsafe { Domain::from_owned(d) })
    }
}

/// What closing a connection needs, movable to another thread.
struct Closing {
    ptr: sys::virConnectPtr,
    callbacks: Vec<(Family, c_int)>,
    close_registered: bool,
}

// SAFETY: a libvirt connection pointer may be used from any thread.
unsafe impl Send for Closing {}

impl Closing {
    /// Deregisters the callbacks (one RPC each, ~38 of them) and closes.
    /// Failures are ignored: closing must never panic the agent.
    fn run(self) {
        #[cfg(test)]
        tests::closed_on(self.ptr as usize, std::thread::current().id());
        for (family, id) in self.callbacks {
            deregister(self.ptr, family, id);
        }
        // SAFETY: we own the connection; the close callback is unregistered
        // first so that libvirt frees its opaque box.
        unsafe {
            if self.close_registered && sys::virConnectUnregisterCloseCallback(self.ptr, Some(on_close)) < 0 {
                sys::virResetLastError();
            }
            if sys::virConnectClose(self.ptr) < 0 {
                sys::virResetLastError();
            }
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let closing =
            Closing { ptr: self.ptr, callbacks: self.take_callbacks(), close_registered: self.close_registered };
        // Closing makes blocking RPCs: when the last reference goes on an
        // async worker (a collector's session, the manager replacing a dead
        // connection), the work moves to the blocking pool.
        match tokio::runtime::Handle::try_current() {
            Ok(rt) if rt.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                drop(rt.spawn_blocking(move || closing.run()));
            }
            _ => closing.run(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_call_on_a_live_connection_does_not_lose_it() {
        let opts =
            OpenOptions { uri: "test:///default".into(), read_only: true, keepalive_interval: 0, keepalive_count: 0 };
        let c = Connection::open(&opts).unwrap();
        // A node call that could not read a host file reports a system error:
        // that is one call failing, not the connection.
        let e =
            LibvirtError::new(sys::VIR_ERR_SYSTEM_ERROR as i32, "cannot open /sys/devices/system/node/node0/meminfo");
        assert!(e.may_mean_connection_lost());
        assert!(c.is_alive());
        assert!(!c.lost(&e));
    }

    /// Which connection closed on which thread. Other tests close
    /// connections too, so each entry names its connection.
    static CLOSED_ON: std::sync::Mutex<Vec<(usize, std::thread::ThreadId)>> = std::sync::Mutex::new(Vec::new());

    pub(super) fn closed_on(connection: usize, t: std::thread::ThreadId) {
        CLOSED_ON.lock().unwrap().push((connection, t));
    }

    fn thread_that_closed(connection: usize) -> Option<std::thread::ThreadId> {
        CLOSED_ON.lock().unwrap().iter().rev().find(|(c, _)| *c == connection).map(|(_, t)| *t)
    }

    #[test]
    fn a_connection_dropped_on_an_async_worker_closes_on_a_blocking_thread() {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let (connection, worker, closed_by) = rt.block_on(async {
            let opts = OpenOptions {
                uri: "test:///default".into(),
                read_only: true,
                keepalive_interval: 0,
                keepalive_count: 0,
            };
            let c = tokio::task::spawn_blocking(move || Connection::open(&opts).unwrap()).await.unwrap();
            let connection = c.ptr as usize;
            let worker = tokio::spawn(async move {
                drop(c);
                std::thread::current().id()
            })
            .await
            .unwrap();
            // Wait while the worker is still a worker: once the runtime shuts
            // down, tokio may reuse that thread for leftover blocking work.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            let mut closed_by = thread_that_closed(connection);
            while closed_by.is_none() && std::time::Instant::now() < deadline {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                closed_by = thread_that_closed(connection);
            }
            (connection, worker, closed_by)
        });
        rt.shutdown_timeout(std::time::Duration::from_secs(5));
        let closed_by = closed_by.unwrap_or_else(|| panic!("connection {connection:#x} was not closed within 20 s"));
        assert_ne!(closed_by, worker, "closed on the async worker that dropped it");
    }
}
