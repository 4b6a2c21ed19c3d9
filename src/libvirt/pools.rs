//! Storage pools. The agent never calls `virStoragePoolRefresh`: it can take
//! minutes on a big pool; what libvirt last saw is good enough.

use std::ffi::{c_char, c_int, CStr};

use virt_sys as sys;

use super::connection::Connection;
use super::domain::take_string;
use super::error::{LibvirtError, Result};

pub struct StoragePool {
    ptr: sys::virStoragePoolPtr,
}

// SAFETY: libvirt objects are reference counted and thread safe.
unsafe impl Send for StoragePool {}
// SAFETY: as for Send: libvirt locks inside each call.
unsafe impl Sync for StoragePool {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolInfo {
    /// `virStoragePoolState`: 0 inactive, 1 building, 2 running, 3 degraded, 4 inaccessible.
    pub state: i32,
    pub capacity: u64,
    pub allocation: u64,
    pub available: u64,
}

pub(crate) const POOL_RUNNING: i32 = sys::VIR_STORAGE_POOL_RUNNING as i32;

impl StoragePool {
    pub fn name(&self) -> String {
        // SAFETY: valid pool; the name is owned by the pool object.
        unsafe {
            let p = sys::virStoragePoolGetName(self.ptr);
            if p.is_null() {
                return String::new();
            }
            CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    }

    pub fn uuid(&self) -> String {
        let mut buf = [0 as c_char; 37];
        // SAFETY: buf has VIR_UUID_STRING_BUFLEN bytes.
        unsafe {
            if sys::virStoragePoolGetUUIDString(self.ptr, buf.as_mut_ptr()) < 0 {
                sys::virResetLastError();
                return String::new();
            }
            buf[36] = 0;
            CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned()
        }
    }

    pub fn info(&self) -> Result<PoolInfo> {
        // SAFETY: plain old data, valid pool and out pointer.
        let mut i: sys::virStoragePoolInfo = unsafe { std::mem::zeroed() };
        // SAFETY: a valid pool and a writable out pointer.
        if unsafe { sys::virStoragePoolGetInfo(self.ptr, &mut i) } < 0 {
            return Err(LibvirtError::last());
        }
        Ok(PoolInfo { state: i.state, capacity: i.capacity, allocation: i.allocation, available: i.available })
    }

    /// Volumes libvirt knows in the pool (active pools only).
    pub fn num_volumes(&self) -> Result<u32> {
        // SAFETY: valid pool.
        match unsafe { sys::virStoragePoolNumOfVolumes(self.ptr) } {
            n if n < 0 => Err(LibvirtError::last()),
            n => Ok(n as u32),
        }
    }

    pub fn xml_desc(&self) -> Result<String> {
        // SAFETY: valid pool; the string is ours to free.
        unsafe {
            let s = sys::virStoragePoolGetXMLDesc(self.ptr, 0);
            if s.is_null() {
                return Err(LibvirtError::last());
            }
            Ok(take_string(s))
        }
    }

    pub fn is_persistent(&self) -> Result<bool> {
        // SAFETY: valid pool.
        match unsafe { sys::virStoragePoolIsPersistent(self.ptr) } {
            r if r < 0 => Err(LibvirtError::last()),
            r => Ok(r == 1),
        }
    }

    pub fn autostart(&self) -> Result<bool> {
        let mut v: c_int = 0;
        // SAFETY: valid pool and out pointer.
        if unsafe { sys::virStoragePoolGetAutostart(self.ptr, &mut v) } < 0 {
            return Err(LibvirtError::last());
        }
        Ok(v != 0)
    }
}

impl Drop for StoragePool {
    fn drop(&mut self) {
        // SAFETY: we own one reference; failure must not panic.
        unsafe {
            if sys::virStoragePoolFree(self.ptr) < 0 {
                sys::virResetLastError();
            }
        }
    }
}

impl Connection {
    /// Every storage pool (active and inactive).
    pub fn list_all_storage_pools(&self) -> Result<Vec<StoragePool>> {
        let mut pools: *mut sys::virStoragePoolPtr = std::ptr::null_mut();
        // SAFETY: valid connection; the array and each reference become ours.
        let n = unsafe { sys::virConnectListAllStoragePools(self.as_ptr(), &mut pools, 0) };
        if n < 0 {
            return Err(LibvirtError::last());
        }
        let mut out = Vec::with_capacity(n as usize);
        // SAFETY: n valid pointers; each owned by a StoragePool; the array freed.
        unsafe {
            for i in 0..n as usize {
                let p = *pools.add(i);
                if !p.is_null() {
                    out.push(StoragePool { ptr: p });
                }
            }
            libc::free(pools.cast());
        }
        Ok(out)
    }
}
