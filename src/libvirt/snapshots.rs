//! Domain snapshots and checkpoints: listing them, their XML, the current
//! snapshot. These calls read libvirtd's own metadata (its in-memory
//! snapshot and checkpoint trees); none of them talks to QEMU.
//!
//! Every function used here is older than libvirt 7.0, the oldest daemon
//! and client the agent supports: `virDomainSnapshotGetXMLDesc`,
//! `virDomainSnapshotCurrent` and `virDomainSnapshotFree` (0.8.0),
//! `virDomainListAllSnapshots` and `virDomainSnapshotIsCurrent` (0.9.13),
//! `virDomainListAllCheckpoints`, `virDomainCheckpointGetXMLDesc`,
//! `virDomainCheckpointGetName` and `virDomainCheckpointFree` (5.6.0). They
//! are linked as usual; a function newer than libvirt 7.0 would have to be
//! resolved at run time (dlsym) so that one binary still starts against an
//! older libvirt0. A daemon older than 5.6 answers the checkpoint calls
//! with VIR_ERR_NO_SUPPORT (`LibvirtError::is_unsupported`).

use std::ffi::{c_char, CStr};

use virt_sys as sys;

use super::domain::{take_string, Domain};
use super::error::{LibvirtError, Result};

/// An owned reference to a domain snapshot; freed on drop.
pub struct Snapshot {
    ptr: sys::virDomainSnapshotPtr,
}

// SAFETY: libvirt snapshot objects are reference counted and thread safe.
unsafe impl Send for Snapshot {}
// SAFETY: as for Send: libvirt locks inside each call.
unsafe impl Sync for Snapshot {}

/// An owned reference to a domain checkpoint; freed on drop.
pub struct Checkpoint {
    ptr: sys::virDomainCheckpointPtr,
}

// SAFETY: libvirt checkpoint objects are reference counted and thread safe.
unsafe impl Send for Checkpoint {}
// SAFETY: as for Send: libvirt locks inside each call.
unsafe impl Sync for Checkpoint {}

/// # Safety
/// `p` must be NULL or a NUL-terminated string valid for this call.
unsafe fn borrowed_name(p: *const c_char) -> String {
    if p.is_null() {
        // SAFETY: clears this thread's error slot (a NULL name sets it).
        unsafe { sys::virResetLastError() };
        return String::new();
    }
    // SAFETY: the caller's contract.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

impl Snapshot {
    /// The snapshot's name as cached in the client-side object (no RPC;
    /// names are unique within a domain).
    pub fn name(&self) -> String {
        // SAFETY: ptr is valid for the lifetime of self; the name is owned
        // by the snapshot object.
        unsafe { borrowed_name(sys::virDomainSnapshotGetName(self.ptr)) }
    }

    /// The snapshot's XML (blocking RPC). Without the SECURE flag, which a
    /// read-only connection may not ask for.
    pub fn xml_desc(&self) -> Result<String> {
        // SAFETY: ptr valid; the returned string is malloc'd and ours to free.
        unsafe {
            let s = sys::virDomainSnapshotGetXMLDesc(self.ptr, 0);
            if s.is_null() {
                return Err(LibvirtError::last());
            }
            Ok(take_string(s))
        }
    }

    /// Whether this is the domain's current snapshot (blocking RPC; one per
    /// snapshot: `Domain::current_snapshot` asks once per domain).
    pub fn is_current(&self) -> Result<bool> {
        // SAFETY: ptr valid.
        match unsafe { sys::virDomainSnapshotIsCurrent(self.ptr, 0) } {
            r if r < 0 => Err(LibvirtError::last()),
            r => Ok(r == 1),
        }
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        // SAFETY: we own one reference. A failure only leaks a client-side
        // object (no RPC is made); it must never panic the agent.
        unsafe {
            if sys::virDomainSnapshotFree(self.ptr) < 0 {
                sys::virResetLastError();
            }
        }
    }
}

impl Checkpoint {
    /// The checkpoint's name as cached in the client-side object (no RPC).
    pub fn name(&self) -> String {
        // SAFETY: ptr is valid for the lifetime of self; the name is owned
        // by the checkpoint object.
        unsafe { borrowed_name(sys::virDomainCheckpointGetName(self.ptr)) }
    }

    /// The checkpoint's XML without the copy of the domain definition it
    /// otherwise embeds (VIR_DOMAIN_CHECKPOINT_XML_NO_DOMAIN; blocking RPC).
    pub fn xml_desc(&self) -> Result<String> {
        // SAFETY: ptr valid; the returned string is malloc'd and ours to free.
        unsafe {
            let s = sys::virDomainCheckpointGetXMLDesc(self.ptr, sys::VIR_DOMAIN_CHECKPOINT_XML_NO_DOMAIN);
            if s.is_null() {
                return Err(LibvirtError::last());
            }
            Ok(take_string(s))
        }
    }
}

impl Drop for Checkpoint {
    fn drop(&mut self) {
        // SAFETY: we own one reference; failure must not panic.
        unsafe {
            if sys::virDomainCheckpointFree(self.ptr) < 0 {
                sys::virResetLastError();
            }
        }
    }
}

/// Takes ownership of a malloc'd array of `n` owned object pointers.
///
/// # Safety
/// `array` must be NULL or a malloc'd array of `n` pointers, each NULL or an
/// owned reference that `wrap` takes over.
unsafe fn take_array<P: Copy, T>(
    array: *mut P,
    n: usize,
    is_null: impl Fn(P) -> bool,
    wrap: impl Fn(P) -> T,
) -> Vec<T> {
    if array.is_null() {
        return Vec::new();
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        // SAFETY: the caller's contract: `n` valid slots.
        let p = unsafe { *array.add(i) };
        if !is_null(p) {
            out.push(wrap(p));
        }
    }
    // SAFETY: the array itself is malloc'd by libvirt and ours to free.
    unsafe { libc::free(array.cast()) };
    out
}

impl Domain {
    /// Every snapshot libvirt has metadata for (one RPC; the names come
    /// with the handles).
    pub fn list_all_snapshots(&self) -> Result<Vec<Snapshot>> {
        let mut snaps: *mut sys::virDomainSnapshotPtr = std::ptr::null_mut();
        // SAFETY: valid domain; snaps receives a malloc'd array of owned refs.
        let n = unsafe { sys::virDomainListAllSnapshots(self.as_ptr(), &mut snaps, 0) };
        if n < 0 {
            return Err(LibvirtError::last());
        }
        // SAFETY: n valid pointers, each owned by a Snapshot; the array freed.
        Ok(unsafe { take_array(snaps, n as usize, |p| p.is_null(), |ptr| Snapshot { ptr }) })
    }

    /// The name of the domain's current snapshot, `None` when it has none
    /// (one RPC).
    pub fn current_snapshot(&self) -> Result<Option<String>> {
        // SAFETY: valid domain; the result is an owned reference or NULL.
        let p = unsafe { sys::virDomainSnapshotCurrent(self.as_ptr(), 0) };
        if p.is_null() {
            let e = LibvirtError::last();
            return if e.is_no_snapshot() { Ok(None) } else { Err(e) };
        }
        let snap = Snapshot { ptr: p };
        Ok(Some(snap.name()))
    }

    /// Every checkpoint of the domain (one RPC; libvirt 5.6+, else
    /// VIR_ERR_NO_SUPPORT).
    pub fn list_all_checkpoints(&self) -> Result<Vec<Checkpoint>> {
        let mut cps: *mut sys::virDomainCheckpointPtr = std::ptr::null_mut();
        // SAFETY: valid domain; cps receives a malloc'd array of owned refs.
        let n = unsafe { sys::virDomainListAllCheckpoints(self.as_ptr(), &mut cps, 0) };
        if n < 0 {
            return Err(LibvirtError::last());
        }
        // SAFETY: n valid pointers, each owned by a Checkpoint; the array freed.
        Ok(unsafe { take_array(cps, n as usize, |p| p.is_null(), |ptr| Checkpoint { ptr }) })
    }
}

impl LibvirtError {
    /// The snapshot is gone (deleted between listing and reading it), or
    /// the domain has no current snapshot.
    pub fn is_no_snapshot(&self) -> bool {
        self.code as u32 == sys::VIR_ERR_NO_DOMAIN_SNAPSHOT
    }

    /// The checkpoint is gone (deleted between listing and reading it).
    pub fn is_no_checkpoint(&self) -> bool {
        self.code as u32 == sys::VIR_ERR_NO_DOMAIN_CHECKPOINT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vanished_objects_are_told_apart() {
        let snap = LibvirtError::new(sys::VIR_ERR_NO_DOMAIN_SNAPSHOT as i32, "no snapshot");
        let cp = LibvirtError::new(sys::VIR_ERR_NO_DOMAIN_CHECKPOINT as i32, "no checkpoint");
        assert!(snap.is_no_snapshot() && !snap.is_no_checkpoint());
        assert!(cp.is_no_checkpoint() && !cp.is_no_snapshot());
        assert!(!LibvirtError::new(sys::VIR_ERR_NO_DOMAIN as i32, "x").is_no_snapshot());
    }
}
