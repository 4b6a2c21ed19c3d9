//! Owned domain handles.

use std::ffi::{c_char, CStr};

use virt_sys as sys;

use super::error::{LibvirtError, Result};

const UUID_STRING_BUFLEN: usize = 37;

/// An owned reference to a libvirt domain; freed on drop.
pub struct Domain {
    ptr: sys::virDomainPtr,
}

// SAFETY: libvirt domain objects are reference counted and thread safe.
unsafe impl Send for Domain {}
unsafe impl Sync for Domain {}

impl Domain {
    /// # Safety
    /// `ptr` must be a valid domain reference that the caller owns.
    pub(crate) unsafe fn from_owned(ptr: sys::virDomainPtr) -> Self {
        Self { ptr }
    }

    pub(crate) fn as_ptr(&self) -> sys::virDomainPtr {
        self.ptr
    }

    /// Name as cached in the client-side object (no RPC).
    pub fn name(&self) -> String {
        // SAFETY: ptr is valid for the lifetime of self.
        unsafe { domain_name(self.ptr) }
    }

    /// UUID string as cached in the client-side object (no RPC).
    pub fn uuid(&self) -> String {
        // SAFETY: ptr is valid for the lifetime of self.
        unsafe { domain_uuid(self.ptr) }
    }

    /// The domain XML (blocking RPC).
    pub fn xml_desc(&self, flags: u32) -> Result<String> {
        // SAFETY: ptr valid; the returned string is malloc'd and ours to free.
        unsafe {
            let s = sys::virDomainGetXMLDesc(self.ptr, flags);
            if s.is_null() {
                return Err(LibvirtError::last());
            }
            Ok(take_string(s))
        }
    }

    pub fn is_persistent(&self) -> Result<bool> {
        // SAFETY: ptr valid.
        match unsafe { sys::virDomainIsPersistent(self.ptr) } {
            r if r < 0 => Err(LibvirtError::last()),
            r => Ok(r == 1),
        }
    }

    pub fn autostart(&self) -> Result<bool> {
        let mut v: std::ffi::c_int = 0;
        // SAFETY: ptr valid, v is a valid out pointer.
        if unsafe { sys::virDomainGetAutostart(self.ptr, &mut v) } < 0 {
            return Err(LibvirtError::last());
        }
        Ok(v != 0)
    }
}

impl Drop for Domain {
    fn drop(&mut self) {
        // SAFETY: we own one reference. A failure here only means a leaked
        // client-side object; it must never panic the agent.
        unsafe {
            if sys::virDomainFree(self.ptr) < 0 {
                sys::virResetLastError();
            }
        }
    }
}

/// # Safety
/// `dom` must be a valid domain pointer.
pub(crate) unsafe fn domain_name(dom: sys::virDomainPtr) -> String {
    let p = sys::virDomainGetName(dom);
    if p.is_null() {
        return String::new();
    }
    CStr::from_ptr(p).to_string_lossy().into_owned()
}

/// # Safety
/// `dom` must be a valid domain pointer.
pub(crate) unsafe fn domain_uuid(dom: sys::virDomainPtr) -> String {
    let mut buf = [0 as c_char; UUID_STRING_BUFLEN];
    if sys::virDomainGetUUIDString(dom, buf.as_mut_ptr()) < 0 {
        sys::virResetLastError();
        return String::new();
    }
    buf[UUID_STRING_BUFLEN - 1] = 0;
    CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned()
}

/// Copies and frees a malloc'd C string returned by libvirt.
///
/// # Safety
/// `s` must be a non-NULL, NUL-terminated string allocated by libvirt.
pub(crate) unsafe fn take_string(s: *mut c_char) -> String {
    let out = CStr::from_ptr(s).to_string_lossy().into_owned();
    libc::free(s.cast());
    out
}
