//! Owned domain handles.

use std::ffi::{c_char, CStr};

use virt_sys as sys;

use super::error::{LibvirtError, Result};

/// An owned reference to a libvirt domain; freed on drop.
pub struct Domain {
    ptr: sys::virDomainPtr,
    /// Every libvirt call on a domain formats its UUID for a debug message
    /// whether or not debug logging is on (VIR_DOMAIN_DEBUG: some 6,500
    /// instructions, callgrind); what cannot change for this object is
    /// asked once.
    uuid: std::sync::OnceLock<String>,
    name: std::sync::OnceLock<String>,
    id: std::sync::OnceLock<u32>,
}

// SAFETY: libvirt domain objects are reference counted and thread safe.
unsafe impl Send for Domain {}
// SAFETY: as for Send: libvirt locks inside each call.
unsafe impl Sync for Domain {}

impl Domain {
    /// # Safety
    /// `ptr` must be a valid domain reference that the caller owns.
    pub(crate) unsafe fn from_owned(ptr: sys::virDomainPtr) -> Self {
        Self { ptr, uuid: std::sync::OnceLock::new(), name: std::sync::OnceLock::new(), id: std::sync::OnceLock::new() }
    }

    pub(crate) fn as_ptr(&self) -> sys::virDomainPtr {
        self.ptr
    }

    /// Name as cached in the client-side object (no RPC).
    pub fn name(&self) -> String {
        let ptr = self.ptr;
        // SAFETY: ptr is valid for the lifetime of self.
        self.name.get_or_init(|| unsafe { domain_name(ptr) }).clone()
    }

    /// Whether the domain was running (or paused) when it was listed: the
    /// client-side object's id (no RPC); inactive domains have none.
    pub fn is_active(&self) -> bool {
        let ptr = self.ptr;
        // SAFETY: ptr is valid for the lifetime of self.
        *self.id.get_or_init(|| unsafe { sys::virDomainGetID(ptr) }) != u32::MAX
    }

    /// UUID string as cached in the client-side object (no RPC).
    pub fn uuid(&self) -> String {
        let ptr = self.ptr;
        // SAFETY: ptr is valid for the lifetime of self.
        self.uuid.get_or_init(|| unsafe { domain_uuid(ptr) }).clone()
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
    // SAFETY: the caller's contract; the name is owned by the domain object.
    let p = unsafe { sys::virDomainGetName(dom) };
    if p.is_null() {
        return String::new();
    }
    // SAFETY: libvirt returned a NUL-terminated name, valid while `dom` is.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// The canonical UUID string (8-4-4-4-12 lower-case hex digits).
pub(crate) fn format_uuid(raw: &[u8; 16]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(36);
    for (i, b) in raw.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 0xf)] as char);
    }
    out
}

/// # Safety
/// `dom` must be a valid domain pointer.
pub(crate) unsafe fn domain_uuid(dom: sys::virDomainPtr) -> String {
    // The raw bytes, formatted here: virDomainGetUUIDString formats once
    // more through g_snprintf on top of the debug message every call makes.
    let mut raw = [0u8; 16];
    // SAFETY: the caller's contract; `raw` has the 16 bytes libvirt writes.
    if unsafe { sys::virDomainGetUUID(dom, raw.as_mut_ptr()) } < 0 {
        // SAFETY: clears this thread's error slot.
        unsafe { sys::virResetLastError() };
        return String::new();
    }
    format_uuid(&raw)
}

/// Copies and frees a malloc'd C string returned by libvirt.
///
/// # Safety
/// `s` must be a non-NULL, NUL-terminated string allocated by libvirt.
pub(crate) unsafe fn take_string(s: *mut c_char) -> String {
    // SAFETY: the caller's contract: libvirt's malloc'd, NUL-terminated
    // string, ours to free once copied.
    unsafe {
        let out = CStr::from_ptr(s).to_string_lossy().into_owned();
        libc::free(s.cast());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_formatted_as_libvirt_does() {
        let raw: [u8; 16] =
            [0x8d, 0x6c, 0x1f, 0x02, 0xab, 0xcd, 0x40, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0xff];
        assert_eq!(format_uuid(&raw), "8d6c1f02-abcd-4000-8000-0000000001ff");
    }
}
