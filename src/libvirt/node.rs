//! Host-level calls: node info, CPU and memory statistics, free memory per
//! NUMA cell, free pages, versions, capabilities.

use std::ffi::{c_char, c_int, c_uint, c_ulong, CStr};

use virt_sys as sys;

use super::connection::Connection;
use super::domain::take_string;
use super::error::{LibvirtError, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub model: String,
    pub memory_kib: u64,
    pub cpus: u32,
    pub mhz: u32,
    /// NUMA cells (1 when the host reports a non-NUMA layout).
    pub nodes: u32,
    /// Sockets per NUMA cell.
    pub sockets: u32,
    pub cores: u32,
    pub threads: u32,
}

/// All CPUs, for `node_cpu_stats`; all cells, for `node_memory_stats`.
pub(crate) const ALL: i32 = -1;

/// Versions as libvirt encodes them: major * 1,000,000 + minor * 1,000 + micro.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versions {
    pub library: u64,
    pub daemon: u64,
    pub hypervisor: u64,
    /// Driver name, e.g. "QEMU".
    pub hypervisor_type: String,
}

fn cstr_field(field: &[c_char]) -> String {
    // SAFETY: c_char and u8 have the same layout.
    let bytes: &[u8] = unsafe { std::slice::from_raw_parts(field.as_ptr().cast(), field.len()) };
    let end = memchr::memchr(0, bytes).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// virNodeGetCPUStats and virNodeGetMemoryStats share one shape: ask for the
/// count, then fill an array of {field[80], value}.
macro_rules! field_stats {
    ($conn:expr, $func:path, $ty:ty, $which:expr) => {{
        let mut n: c_int = 0;
        // SAFETY: a NULL array with n = 0 asks for the count.
        if unsafe { $func($conn, $which, std::ptr::null_mut(), &mut n, 0) } < 0 {
            return Err(LibvirtError::last());
        }
        if n <= 0 {
            return Ok(Vec::new());
        }
        // SAFETY: the struct is plain old data; zeroed is a valid value.
        let mut buf: Vec<$ty> = vec![unsafe { std::mem::zeroed() }; n as usize];
        // SAFETY: buf holds n entries.
        if unsafe { $func($conn, $which, buf.as_mut_ptr(), &mut n, 0) } < 0 {
            return Err(LibvirtError::last());
        }
        buf.truncate(n.max(0) as usize);
        Ok(buf.iter().map(|s| (cstr_field(&s.field), s.value as u64)).collect())
    }};
}

impl Connection {
    pub fn node_info(&self) -> Result<NodeInfo> {
        // SAFETY: plain old data.
        let mut info: sys::virNodeInfo = unsafe { std::mem::zeroed() };
        // SAFETY: valid connection and out pointer.
        if unsafe { sys::virNodeGetInfo(self.as_ptr(), &mut info) } < 0 {
            return Err(LibvirtError::last());
        }
        Ok(NodeInfo {
            model: cstr_field(&info.model),
            memory_kib: info.memory as u64,
            cpus: info.cpus,
            mhz: info.mhz,
            nodes: info.nodes,
            sockets: info.sockets,
            cores: info.cores,
            threads: info.threads,
        })
    }

    /// CPU time counters (ns) of one CPU, or of all with `ALL`.
    pub fn node_cpu_stats(&self, cpu: i32) -> Result<Vec<(String, u64)>> {
        field_stats!(self.as_ptr(), sys::virNodeGetCPUStats, sys::virNodeCPUStats, cpu)
    }

    /// Memory figures (KiB) of one NUMA cell, or of the host with `ALL`.
    pub fn node_memory_stats(&self, cell: i32) -> Result<Vec<(String, u64)>> {
        field_stats!(self.as_ptr(), sys::virNodeGetMemoryStats, sys::virNodeMemoryStats, cell)
    }

    /// Free memory (bytes) of `count` cells from `start`.
    pub fn cells_free_memory(&self, start: i32, count: i32) -> Result<Vec<u64>> {
        let mut buf = vec![0u64; count.max(0) as usize];
        // SAFETY: buf holds count entries.
        let n = unsafe { sys::virNodeGetCellsFreeMemory(self.as_ptr(), buf.as_mut_ptr(), start, count) };
        if n < 0 {
            return Err(LibvirtError::last());
        }
        buf.truncate(n as usize);
        Ok(buf)
    }

    /// Free pages per (cell, page size): the result is cell-major, one entry
    /// per page size (KiB) in `sizes_kib` for each of `count` cells.
    pub fn free_pages(&self, sizes_kib: &[u32], start: i32, count: u32) -> Result<Vec<u64>> {
        if sizes_kib.is_empty() || count == 0 {
            return Ok(Vec::new());
        }
        let mut pages: Vec<c_uint> = sizes_kib.to_vec();
        let mut counts = vec![0u64; sizes_kib.len() * count as usize];
        // SAFETY: pages has npages entries, counts npages * cellcount.
        let n = unsafe {
            sys::virNodeGetFreePages(
                self.as_ptr(),
                pages.len() as c_uint,
                pages.as_mut_ptr(),
                start,
                count,
                counts.as_mut_ptr(),
                0,
            )
        };
        if n < 0 {
            return Err(LibvirtError::last());
        }
        counts.truncate(n as usize);
        Ok(counts)
    }

    /// The capabilities XML (host topology, page sizes, guest types).
    pub fn capabilities(&self) -> Result<String> {
        // SAFETY: valid connection; the string is ours to free.
        unsafe {
            let s = sys::virConnectGetCapabilities(self.as_ptr());
            if s.is_null() {
                return Err(LibvirtError::last());
            }
            Ok(take_string(s))
        }
    }

    pub fn versions(&self) -> Result<Versions> {
        let mut library: c_ulong = 0;
        let mut hypervisor: c_ulong = 0;
        // SAFETY: valid out pointers; a NULL type asks for the library version only.
        unsafe {
            if sys::virGetVersion(&mut library, std::ptr::null(), std::ptr::null_mut()) < 0 {
                return Err(LibvirtError::last());
            }
            if sys::virConnectGetVersion(self.as_ptr(), &mut hypervisor) < 0 {
                return Err(LibvirtError::last());
            }
        }
        let daemon = self.lib_version()?;
        // SAFETY: valid connection; the returned string is static in libvirt.
        let hypervisor_type = unsafe {
            let t = sys::virConnectGetType(self.as_ptr());
            if t.is_null() {
                String::new()
            } else {
                CStr::from_ptr(t).to_string_lossy().into_owned()
            }
        };
        Ok(Versions { library: library as u64, daemon, hypervisor: hypervisor as u64, hypervisor_type })
    }

    /// Number of domains matching `VIR_CONNECT_LIST_DOMAINS_*` filter flags.
    pub fn count_domains(&self, flags: u32) -> Result<usize> {
        Ok(self.list_all_domains(flags)?.len())
    }
}

pub(crate) use sys::{
    VIR_CONNECT_LIST_DOMAINS_OTHER as LIST_OTHER, VIR_CONNECT_LIST_DOMAINS_PAUSED as LIST_PAUSED,
    VIR_CONNECT_LIST_DOMAINS_PERSISTENT as LIST_PERSISTENT, VIR_CONNECT_LIST_DOMAINS_RUNNING as LIST_RUNNING,
    VIR_CONNECT_LIST_DOMAINS_SHUTOFF as LIST_SHUTOFF, VIR_CONNECT_LIST_DOMAINS_TRANSIENT as LIST_TRANSIENT,
};

/// Filter for active domains in `list_all_domains`.
pub(crate) const LIST_ACTIVE: u32 = sys::VIR_CONNECT_LIST_DOMAINS_ACTIVE;
