//! What only the guest knows, through libvirt: `virDomainGetGuestInfo` (the
//! QEMU guest agent: OS, hostname, users, filesystems, load) and
//! `virDomainInterfaceAddresses` (DHCP leases, the ARP table, or the agent).
//! The agent calls need a read-write connection (libvirt refuses them on a
//! read-only one); leases and ARP work read-only. A guest is untrusted: the
//! values are returned as decoded, bounds are the caller's.

use std::ffi::{c_int, c_uint, CStr};

use virt_sys as sys;

use super::domain::Domain;
use super::error::{LibvirtError, Result};
use super::typed_params::{decode, DecodedParams, KeyInterner};

/// `virDomainGuestInfoTypes` bits.
pub(crate) const INFO_USERS: u32 = sys::VIR_DOMAIN_GUEST_INFO_USERS;
pub(crate) const INFO_OS: u32 = sys::VIR_DOMAIN_GUEST_INFO_OS;
pub(crate) const INFO_HOSTNAME: u32 = sys::VIR_DOMAIN_GUEST_INFO_HOSTNAME;
pub(crate) const INFO_FILESYSTEM: u32 = sys::VIR_DOMAIN_GUEST_INFO_FILESYSTEM;
/// libvirt 11.2 and later.
pub(crate) const INFO_LOAD: u32 = sys::VIR_DOMAIN_GUEST_INFO_LOAD;

/// Where interface addresses come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressSource {
    /// The DHCP leases of libvirt's own networks.
    Lease,
    /// The host's ARP table.
    Arp,
    /// The guest agent (read-write connection only).
    Agent,
}

impl AddressSource {
    pub const ALL: [AddressSource; 3] = [AddressSource::Lease, AddressSource::Arp, AddressSource::Agent];

    pub fn as_str(self) -> &'static str {
        match self {
            AddressSource::Lease => "lease",
            AddressSource::Arp => "arp",
            AddressSource::Agent => "agent",
        }
    }

    fn code(self) -> c_uint {
        match self {
            AddressSource::Lease => sys::VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE,
            AddressSource::Arp => sys::VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_ARP,
            AddressSource::Agent => sys::VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpAddress {
    /// "ipv4" or "ipv6" (anything else libvirt reports as "unknown").
    pub family: &'static str,
    pub address: String,
    pub prefix: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub hwaddr: String,
    pub addrs: Vec<IpAddress>,
}

/// Frees typed parameters allocated by libvirt.
struct Params(sys::virTypedParameterPtr, c_int);

impl Drop for Params {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: allocated by libvirt for this call, freed once.
            unsafe { sys::virTypedParamsFree(self.0, self.1) };
        }
    }
}

/// Frees the interface array libvirt allocated (each entry, then the array).
struct Interfaces(*mut sys::virDomainInterfacePtr, c_int);

impl Drop for Interfaces {
    fn drop(&mut self) {
        if self.0.is_null() {
            return;
        }
        for i in 0..usize::try_from(self.1).unwrap_or(0) {
            // SAFETY: libvirt returned `self.1` entries; each is freed once.
            unsafe { sys::virDomainInterfaceFree(*self.0.add(i)) };
        }
        // SAFETY: the array itself was malloc'd by libvirt.
        unsafe { libc::free(self.0.cast()) };
    }
}

/// A C string libvirt handed over, or "" for NULL.
///
/// # Safety
/// `p` is NULL or a valid NUL-terminated string.
unsafe fn text(p: *const std::ffi::c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: non-NULL and NUL-terminated per the caller.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

impl Domain {
    /// `virDomainGetGuestInfo` for the `types` bits, as libvirt's flat
    /// typed parameters (`os.id`, `fs.0.mountpoint`, `load.1m`, ...).
    pub fn guest_info(&self, types: u32, names: &mut KeyInterner) -> Result<DecodedParams> {
        let mut params: sys::virTypedParameterPtr = std::ptr::null_mut();
        let mut n: c_int = 0;
        // SAFETY: valid domain; out pointers are valid; params freed by Params.
        let rc = unsafe { sys::virDomainGetGuestInfo(self.as_ptr(), types, &mut params, &mut n, 0) };
        let owned = Params(params, n);
        if rc < 0 {
            return Err(LibvirtError::last());
        }
        // SAFETY: libvirt returned n initialised parameters.
        Ok(unsafe { decode(owned.0, owned.1, names) })
    }

    /// `virDomainInterfaceAddresses` from `source`.
    pub fn interface_addresses(&self, source: AddressSource) -> Result<Vec<Interface>> {
        let mut ifaces: *mut sys::virDomainInterfacePtr = std::ptr::null_mut();
        // SAFETY: valid domain and out pointer; the array is freed by Interfaces.
        let n = unsafe { sys::virDomainInterfaceAddresses(self.as_ptr(), &mut ifaces, source.code(), 0) };
        if n < 0 {
            return Err(LibvirtError::last());
        }
        let owned = Interfaces(ifaces, n);
        let mut out = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
        for i in 0..usize::try_from(n).unwrap_or(0) {
            // SAFETY: libvirt returned n non-NULL entries.
            let iface = unsafe { &**owned.0.add(i) };
            let count = usize::try_from(iface.naddrs).unwrap_or(0);
            let mut addrs = Vec::with_capacity(count);
            for j in 0..count {
                if iface.addrs.is_null() {
                    break;
                }
                // SAFETY: `addrs` holds `naddrs` entries.
                let a = unsafe { &*iface.addrs.add(j) };
                let family = match a.type_ as u32 {
                    sys::VIR_IP_ADDR_TYPE_IPV4 => "ipv4",
                    sys::VIR_IP_ADDR_TYPE_IPV6 => "ipv6",
                    _ => "unknown",
                };
                // SAFETY: libvirt's strings, NULL or terminated.
                addrs.push(IpAddress { family, address: unsafe { text(a.addr) }, prefix: a.prefix });
            }
            // SAFETY: libvirt's strings, NULL or terminated.
            let (name, hwaddr) = unsafe { (text(iface.name), text(iface.hwaddr)) };
            out.push(Interface { name, hwaddr, addrs });
        }
        Ok(out)
    }
}
