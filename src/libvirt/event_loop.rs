//! Process-wide libvirt initialisation and the default event loop thread.
//!
//! Keepalive, the close callback and (later) domain events are all driven by
//! libvirt's default event loop, which must be registered before the first
//! connection is opened and then run on a thread of its own because
//! `virEventRunDefaultImpl` blocks.

use std::ffi::c_void;
use std::sync::OnceLock;
use std::time::Duration;

use virt_sys as sys;

use super::error::{LibvirtError, Result};

static INIT: OnceLock<std::result::Result<(), LibvirtError>> = OnceLock::new();

/// libvirt's default error handler prints every error to stderr; the agent
/// reports errors itself, with context, so the default one is silenced.
unsafe extern "C" fn quiet_error_handler(_user: *mut c_void, _err: sys::virErrorPtr) {}

/// Initialises libvirt and starts the event loop thread. Idempotent.
pub fn init() -> Result<()> {
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
        }
        std::thread::Builder::new()
            .name("libvirt-events".into())
            .spawn(run_loop)
            .map_err(|e| LibvirtError::new(0, format!("cannot start the libvirt event loop thread: {e}")))?;
        Ok(())
    })
    .clone()
}

fn run_loop() {
    loop {
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
