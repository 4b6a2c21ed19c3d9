//! Node devices (`virNodeDevice*`): the host's devices as libvirt's node
//! device driver sees them (PCI functions, SR-IOV PFs and VFs, mediated
//! devices, USB, network and storage devices). Listing and reading a
//! device's XML are allowed on a read-only connection.

use std::ffi::CStr;

use virt_sys as sys;

use super::connection::Connection;
use super::domain::take_string;
use super::error::{LibvirtError, Result};

/// Only devices that exist now (`virsh nodedev-list` without `--all`);
/// defined but inactive mediated devices are left out. libvirt 7.3+.
pub(crate) const LIST_ACTIVE: u32 = sys::VIR_CONNECT_LIST_NODE_DEVICES_ACTIVE;

/// An owned reference to a node device; freed on drop.
pub struct NodeDevice {
    ptr: sys::virNodeDevicePtr,
}

// SAFETY: libvirt objects are reference counted and thread safe.
unsafe impl Send for NodeDevice {}
// SAFETY: as for Send: libvirt locks inside each call.
unsafe impl Sync for NodeDevice {}

impl NodeDevice {
    /// The device's name as the client-side object holds it (no RPC).
    pub fn name(&self) -> String {
        // SAFETY: valid device; the name is owned by the device object and
        // valid while it is.
        unsafe {
            let p = sys::virNodeDeviceGetName(self.ptr);
            if p.is_null() {
                sys::virResetLastError();
                return String::new();
            }
            CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    }

    /// The device's XML (blocking RPC; the driver refreshes what it reads
    /// from sysfs, such as the VF list and the mediated device types).
    pub fn xml_desc(&self) -> Result<String> {
        // SAFETY: valid device; the string is malloc'd and ours to free.
        unsafe {
            let s = sys::virNodeDeviceGetXMLDesc(self.ptr, 0);
            if s.is_null() {
                return Err(LibvirtError::last());
            }
            Ok(take_string(s))
        }
    }
}

impl Drop for NodeDevice {
    fn drop(&mut self) {
        // SAFETY: we own one reference; a failure must not panic.
        unsafe {
            if sys::virNodeDeviceFree(self.ptr) < 0 {
                sys::virResetLastError();
            }
        }
    }
}

/// The device vanished between listing and reading it.
pub(crate) fn is_no_node_device(e: &LibvirtError) -> bool {
    let code = e.code as u32;
    code == sys::VIR_ERR_NO_NODE_DEVICE || code == sys::VIR_ERR_INVALID_NODE_DEVICE
}

impl Connection {
    /// Node devices; `flags` are `VIR_CONNECT_LIST_NODE_DEVICES_*` filters
    /// (0: every device, active or not; capability flags: devices with any
    /// of those capabilities, as `virsh nodedev-list --cap`).
    pub fn list_all_node_devices(&self, flags: u32) -> Result<Vec<NodeDevice>> {
        let mut devs: *mut sys::virNodeDevicePtr = std::ptr::null_mut();
        // SAFETY: valid connection; the array and each reference become ours.
        let n = unsafe { sys::virConnectListAllNodeDevices(self.as_ptr(), &mut devs, flags) };
        if n < 0 {
            return Err(LibvirtError::last());
        }
        let mut out = Vec::with_capacity(n as usize);
        // SAFETY: n valid pointers; each owned by a NodeDevice (freed on
        // drop); the array itself freed here.
        unsafe {
            for i in 0..n as usize {
                let p = *devs.add(i);
                if !p.is_null() {
                    out.push(NodeDevice { ptr: p });
                }
            }
            libc::free(devs.cast());
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::libvirt::OpenOptions;

    const LIST_CAP_PCI: u32 = sys::VIR_CONNECT_LIST_NODE_DEVICES_CAP_PCI_DEV;
    const LIST_CAP_MDEV_TYPES: u32 = sys::VIR_CONNECT_LIST_NODE_DEVICES_CAP_MDEV_TYPES;

    /// libvirt's test driver with node devices from its config file, on a
    /// read-only connection as the agent opens it.
    #[test]
    fn lists_names_and_reads_xml_read_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.xml");
        std::fs::write(
            &path,
            "<node>\
               <device><name>pci_0000_00_02_0</name><parent>computer</parent>\
                 <capability type='pci'><domain>0</domain><bus>0</bus><slot>2</slot><function>0</function>\
                   <product id='0x1912'/><vendor id='0x8086'/>\
                   <capability type='mdev_types'><type id='i915-GVTg_V5_4'><name>GVTg_V5_4</name>\
                     <deviceAPI>vfio-pci</deviceAPI><availableInstances>2</availableInstances></type></capability>\
                 </capability></device>\
               <device><name>net_lo_00_00_00_00_00_00</name><parent>computer</parent>\
                 <capability type='net'><interface>lo</interface></capability></device>\
             </node>",
        )
        .unwrap();
        let opts = OpenOptions {
            uri: format!("test://{}", path.display()),
            read_only: true,
            keepalive_interval: 0,
            keepalive_count: 0,
        };
        let c = Connection::open(&opts).unwrap();
        let mut names: Vec<String> = c.list_all_node_devices(0).unwrap().iter().map(NodeDevice::name).collect();
        names.sort();
        assert_eq!(names, ["net_lo_00_00_00_00_00_00", "pci_0000_00_02_0"]);
        let pci = c.list_all_node_devices(LIST_CAP_PCI).unwrap();
        assert_eq!(pci.len(), 1);
        let parents = c.list_all_node_devices(LIST_CAP_MDEV_TYPES).unwrap();
        assert_eq!(parents.iter().map(NodeDevice::name).collect::<Vec<_>>(), ["pci_0000_00_02_0"]);
        let xml = parents[0].xml_desc().unwrap();
        assert!(xml.contains("<availableInstances>2</availableInstances>"), "{xml}");
        // Active devices only: every device of the test driver is.
        assert_eq!(c.list_all_node_devices(LIST_ACTIVE).unwrap().len(), 2);
    }
}
