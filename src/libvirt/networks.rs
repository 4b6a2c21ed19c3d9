//! Virtual networks: the list, each network's state, its XML and its DHCP
//! leases. Every call here is allowed on a read-only connection (checked
//! against a private libvirtd 11.3: `virConnectListAllNetworks`,
//! `virNetworkIsActive`, `virNetworkIsPersistent`, `virNetworkGetAutostart`,
//! `virNetworkGetXMLDesc` without flags, `virNetworkGetDHCPLeases`; only
//! `VIR_NETWORK_XML_INACTIVE` would need a read-write one, and the agent
//! does not ask for it). `virNetworkGetName` and
//! `virNetworkGetUUIDString` read the handle and make no call.

use std::ffi::{c_char, c_int, CStr};

use virt_sys as sys;

use super::connection::Connection;
use super::domain::take_string;
use super::error::{LibvirtError, Result};

pub struct Network {
    ptr: sys::virNetworkPtr,
}

// SAFETY: libvirt objects are reference counted and thread safe.
unsafe impl Send for Network {}
// SAFETY: as for Send: libvirt locks inside each call.
unsafe impl Sync for Network {}

/// How many DHCP leases a network has handed out, by address family.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LeaseCounts {
    pub ipv4: u64,
    pub ipv6: u64,
}

impl LeaseCounts {
    pub fn total(&self) -> u64 {
        self.ipv4.saturating_add(self.ipv6)
    }
}

impl LibvirtError {
    /// The network vanished between listing and reading it.
    pub fn is_no_network(&self) -> bool {
        self.code as u32 == sys::VIR_ERR_NO_NETWORK
    }
}

impl Network {
    pub fn name(&self) -> String {
        // SAFETY: valid network; the name is owned by the network object.
        unsafe {
            let p = sys::virNetworkGetName(self.ptr);
            if p.is_null() {
                sys::virResetLastError();
                return String::new();
            }
            CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    }

    pub fn uuid(&self) -> String {
        let mut buf = [0 as c_char; 37];
        // SAFETY: buf has VIR_UUID_STRING_BUFLEN bytes.
        unsafe {
            if sys::virNetworkGetUUIDString(self.ptr, buf.as_mut_ptr()) < 0 {
                sys::virResetLastError();
                return String::new();
            }
            buf[36] = 0;
            CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned()
        }
    }

    pub fn is_active(&self) -> Result<bool> {
        // SAFETY: valid network.
        match unsafe { sys::virNetworkIsActive(self.ptr) } {
            r if r < 0 => Err(LibvirtError::last()),
            r => Ok(r == 1),
        }
    }

    pub fn is_persistent(&self) -> Result<bool> {
        // SAFETY: valid network.
        match unsafe { sys::virNetworkIsPersistent(self.ptr) } {
            r if r < 0 => Err(LibvirtError::last()),
            r => Ok(r == 1),
        }
    }

    pub fn autostart(&self) -> Result<bool> {
        let mut v: c_int = 0;
        // SAFETY: valid network and out pointer.
        if unsafe { sys::virNetworkGetAutostart(self.ptr, &mut v) } < 0 {
            return Err(LibvirtError::last());
        }
        Ok(v != 0)
    }

    /// The network's XML as it runs (its definition when inactive).
    pub fn xml_desc(&self) -> Result<String> {
        // SAFETY: valid network; the string is ours to free.
        unsafe {
            let s = sys::virNetworkGetXMLDesc(self.ptr, 0);
            if s.is_null() {
                return Err(LibvirtError::last());
            }
            Ok(take_string(s))
        }
    }

    /// The leases libvirt's dnsmasq has handed out and that have not
    /// expired, counted by family. Each lease and the array are freed here.
    pub fn lease_counts(&self) -> Result<LeaseCounts> {
        let mut leases: *mut sys::virNetworkDHCPLeasePtr = std::ptr::null_mut();
        // SAFETY: valid network; no MAC filter (NULL); the array and every
        // lease in it become ours.
        let n = unsafe { sys::virNetworkGetDHCPLeases(self.ptr, std::ptr::null(), &mut leases, 0) };
        if n < 0 {
            return Err(LibvirtError::last());
        }
        let mut counts = LeaseCounts::default();
        if leases.is_null() {
            return Ok(counts);
        }
        // SAFETY: n valid lease pointers (a NULL one is skipped); each is
        // read once, then freed with virNetworkDHCPLeaseFree; then the array.
        unsafe {
            for i in 0..n as usize {
                let l = *leases.add(i);
                if l.is_null() {
                    continue;
                }
                if (*l).type_ == sys::VIR_IP_ADDR_TYPE_IPV6 as c_int {
                    counts.ipv6 += 1;
                } else {
                    counts.ipv4 += 1;
                }
                sys::virNetworkDHCPLeaseFree(l);
            }
            libc::free(leases.cast());
        }
        Ok(counts)
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        // SAFETY: we own one reference; failure must not panic.
        unsafe {
            if sys::virNetworkFree(self.ptr) < 0 {
                sys::virResetLastError();
            }
        }
    }
}

impl Connection {
    /// Every virtual network (active and inactive).
    pub fn list_all_networks(&self) -> Result<Vec<Network>> {
        let mut nets: *mut sys::virNetworkPtr = std::ptr::null_mut();
        // SAFETY: valid connection; the array and each reference become ours.
        let n = unsafe { sys::virConnectListAllNetworks(self.as_ptr(), &mut nets, 0) };
        if n < 0 {
            return Err(LibvirtError::last());
        }
        let mut out = Vec::with_capacity(n as usize);
        if nets.is_null() {
            return Ok(out);
        }
        // SAFETY: n valid pointers; each owned by a Network; the array freed.
        unsafe {
            for i in 0..n as usize {
                let p = *nets.add(i);
                if !p.is_null() {
                    out.push(Network { ptr: p });
                }
            }
            libc::free(nets.cast());
        }
        Ok(out)
    }
}
