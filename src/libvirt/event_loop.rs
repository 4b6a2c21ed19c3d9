//! Process-wide libvirt initialisation and the default event loop thread.
//!
//! Keepalive, the close callback and (later) domain events are all driven by
//! libvirt's default event loop, which must be registered before the first
//! connection is opened and then run on a thread of its own because
//! `virEventRunDefaultImpl` blocks.

use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use virt_sys as sys;

use super::error::{LibvirtError, Result};

static INIT: OnceLock<std::result::Result<(), LibvirtError>> = OnceLock::new();
static STOP: AtomicBool = AtomicBool::new(false);
static DONE: Mutex<Option<std::sync::mpsc::Receiver<()>>> = Mutex::new(None);
/// When the heartbeat timer last ran on the loop thread (process clock, ms).
static HEARTBEAT_MS: AtomicU64 = AtomicU64::new(0);

unsafe extern "C" fn heartbeat(_timer: std::ffi::c_int, _opaque: *mut c_void) {
    HEARTBEAT_MS.store(crate::util::clock::process_millis().max(1), Ordering::Relaxed);
}

/// How long ago libvirt's event loop thread last ran its 1 s heartbeat
/// timer (`None` before the loop started).
pub(crate) fn heartbeat_age() -> Option<Duration> {
    let beat = HEARTBEAT_MS.load(Ordering::Relaxed);
    (beat > 0).then(|| Duration::from_millis(crate::util::clock::process_millis().saturating_sub(beat)))
}

/// libvirt's default error handler prints every error to stderr; the agent
/// reports errors itself, with context, so the default one is silenced.
unsafe extern "C" fn quiet_error_handler(_user: *mut c_void, _err: sys::virErrorPtr) {}

/// Initialises libvirt and starts the event loop thread. Idempotent.
pub(crate) fn init() -> Result<()> {
    INIT.get_or_init(|| {
        // SAFETY: plain libvirt initialisation calls, made once per process.
        unsafe {
            if sys::virInitialize() < 0 {
                return Err(LibvirtError::last());
            }
            sys::virSetErrorFunc(std::ptr::null_mut(), Some(quiet_error_handler));
            if sys::virEventRegisterDefaultImpl() < 0 {
                return Err(LibvirtError::last());
            }
            // A repeating 1 s timer proves the loop thread turns (health).
            if sys::virEventAddTimeout(1000, Some(heartbeat), std::ptr::null_mut(), None) >= 0 {
                HEARTBEAT_MS.store(crate::util::clock::process_millis().max(1), Ordering::Relaxed);
            }
        }
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("libvirt-events".into())
            .spawn(move || {
                run_loop();
                let _ = tx.send(());
            })
            .map_err(|e| LibvirtError::new(0, format!("cannot start the libvirt event loop thread: {e}")))?;
        if let Ok(mut d) = DONE.lock() {
            *d = Some(rx);
        }
        Ok(())
    })
    .clone()
}

unsafe extern "C" fn wake(_timer: std::ffi::c_int, _opaque: *mut c_void) {}

/// Stops the event loop thread: sets the flag and adds an immediate timer so
/// a loop blocked in poll wakes up and sees it. Waits at most `max`; returns
/// whether the thread ended. Connections should be closed first.
pub(crate) fn stop(max: Duration) -> bool {
    if INIT.get().is_none() {
        return true;
    }
    STOP.store(true, Ordering::SeqCst);
    // SAFETY: the default implementation is registered; a 0 ms timer fires on
    // the next loop iteration.
    let timer = unsafe { sys::virEventAddTimeout(0, Some(wake), std::ptr::null_mut(), None) };
    let ended = DONE.lock().ok().and_then(|mut d| d.take()).is_some_and(|rx| rx.recv_timeout(max).is_ok());
    if timer >= 0 {
        // SAFETY: the timer was added above.
        unsafe { sys::virEventRemoveTimeout(timer) };
    }
    ended
}

fn run_loop() {
    while !STOP.load(Ordering::SeqCst) {
        // SAFETY: registered above before this thread was started.
        let rc = unsafe { sys::virEventRunDefaultImpl() };
        if rc < 0 {
            let err = LibvirtError::last();
            tracing::warn!(error = %err, "libvirt event loop iteration failed");
            // Avoid a hot loop if the failure persists.
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}
