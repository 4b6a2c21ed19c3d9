//! libvirt errors, captured from the calling thread's last-error slot.

use std::ffi::CStr;
use std::fmt;

use virt_sys as sys;

/// An error reported by libvirt (or by this layer on libvirt's behalf).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LibvirtError {
    /// `virErrorNumber`; 0 when libvirt left no error behind.
    pub code: i32,
    /// `virErrorDomain` (which libvirt subsystem raised it).
    pub domain: i32,
    pub message: String,
}

impl LibvirtError {
    /// Takes the calling thread's last libvirt error. libvirt keeps errors per
    /// thread, so this must run on the thread that made the failing call.
    pub fn last() -> Self {
        // SAFETY: virGetLastError returns NULL or a pointer to this thread's
        // error object, valid until the next libvirt call on this thread.
        unsafe {
            let err = sys::virGetLastError();
            if err.is_null() {
                return Self::new(0, "libvirt call failed without reporting an error");
            }
            let message = if (*err).message.is_null() {
                "libvirt call failed without a message".to_string()
            } else {
                CStr::from_ptr((*err).message).to_string_lossy().into_owned()
            };
            let out = Self { code: (*err).code, domain: (*err).domain, message };
            sys::virResetLastError();
            out
        }
    }

    pub fn new(code: i32, message: impl Into<String>) -> Self {
        Self { code, domain: 0, message: message.into() }
    }

    /// True when the error may mean the connection to the daemon is gone.
    /// Only the connection can tell (`Connection::lost`): a failing call
    /// reports VIR_ERR_SYSTEM_ERROR for a file it could not read as well.
    pub fn may_mean_connection_lost(&self) -> bool {
        let code = self.code as u32;
        code == sys::VIR_ERR_RPC
            || code == sys::VIR_ERR_SYSTEM_ERROR
            || code == sys::VIR_ERR_NO_CONNECT
            || code == sys::VIR_ERR_INVALID_CONN
            || (code == sys::VIR_ERR_INTERNAL_ERROR && self.message.contains("client socket is closed"))
    }

    /// The domain vanished between listing and reading it.
    pub fn is_no_domain(&self) -> bool {
        let code = self.code as u32;
        code == sys::VIR_ERR_NO_DOMAIN || code == sys::VIR_ERR_INVALID_DOMAIN
    }

    /// The daemon does not implement what was asked (old libvirt, other
    /// driver). A bad argument is not that: it fails one call, not the API.
    pub fn is_unsupported(&self) -> bool {
        let code = self.code as u32;
        code == sys::VIR_ERR_NO_SUPPORT || code == sys::VIR_ERR_OPERATION_UNSUPPORTED
    }

    /// Only `VIR_ERR_NO_SUPPORT`: the API itself is missing (where
    /// "operation unsupported" means something else, such as a domain state).
    pub fn is_no_support(&self) -> bool {
        self.code as u32 == sys::VIR_ERR_NO_SUPPORT
    }

    /// Not valid in the object's current state (e.g. a domain shut off
    /// between listing and the call).
    pub fn is_operation_invalid(&self) -> bool {
        self.code as u32 == sys::VIR_ERR_OPERATION_INVALID
    }

    /// An argument the daemon refused (e.g. a CPU taken offline).
    pub fn is_invalid_arg(&self) -> bool {
        self.code as u32 == sys::VIR_ERR_INVALID_ARG
    }

    /// The storage pool vanished between listing and reading it.
    pub fn is_no_storage_pool(&self) -> bool {
        self.code as u32 == sys::VIR_ERR_NO_STORAGE_POOL
    }

    /// The daemon refused a flag it does not know (libvirt older than the
    /// flag answers VIR_ERR_INVALID_ARG "unsupported flags").
    pub fn is_unsupported_flags(&self) -> bool {
        self.is_unsupported()
            || (self.code as u32 == sys::VIR_ERR_INVALID_ARG && self.message.contains("unsupported flags"))
    }
}

impl fmt::Display for LibvirtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (libvirt error code {})", self.message, self.code)
    }
}

impl std::error::Error for LibvirtError {}

pub type Result<T> = std::result::Result<T, LibvirtError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_argument_does_not_disable_an_api() {
        let invalid = LibvirtError::new(sys::VIR_ERR_INVALID_ARG as i32, "argument cpuNum must be less than 2");
        assert!(!invalid.is_unsupported());
        assert!(!invalid.is_unsupported_flags());
        let flags = LibvirtError::new(sys::VIR_ERR_INVALID_ARG as i32, "unsupported flags (0x2) in function x");
        assert!(flags.is_unsupported_flags());
        assert!(LibvirtError::new(sys::VIR_ERR_NO_SUPPORT as i32, "no").is_unsupported());
    }
}
