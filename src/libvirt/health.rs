//! Per-domain calls that tell whether a domain is well: its monitor
//! (control) state, a managed-save image, taint and deprecation messages,
//! block job progress and where its vCPUs run. None takes a domain job
//! except the block job and vCPU reads (asked only when wanted).

use std::ffi::{c_char, c_int, c_uint, CString};

use virt_sys as sys;

use super::domain::{take_string, Domain};
use super::error::{LibvirtError, Result};

/// `virDomainControlInfo`: the state of the domain's control interface
/// (its QEMU monitor).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlInfo {
    /// 0 ok, 1 job (a job is using the monitor), 2 occupied (a call waits
    /// on the monitor), 3 error.
    pub state: u32,
    /// In state error: 0 none, 1 unknown, 2 monitor, 3 internal.
    pub details: u32,
    /// Milliseconds spent in the current state (0 in state ok).
    pub state_ms: u64,
}

/// `virDomainBlockJobInfo` of one disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockJobInfo {
    /// `virDomainBlockJobType`: 1 pull, 2 copy, 3 commit, 4 active commit, 5 backup.
    pub job_type: i32,
    /// Bytes per second (libvirt reports MiB/s unless asked for bytes).
    pub bandwidth: u64,
    pub cur: u64,
    pub end: u64,
}

/// Where one vCPU runs (`virDomainGetVcpus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VcpuPlace {
    pub vcpu: u32,
    /// 0 offline, 1 running, 2 blocked.
    pub state: i32,
    /// The physical CPU it last ran on (-1: unknown).
    pub cpu: i32,
}

/// `VIR_DOMAIN_BLOCK_JOB_INFO_BANDWIDTH_BYTES`.
const BANDWIDTH_BYTES: c_uint = 1;

type GetMessages = unsafe extern "C" fn(sys::virDomainPtr, *mut *mut *mut c_char, c_uint) -> c_int;

impl Domain {
    /// The monitor's state (no job taken, QEMU not asked: answers while QEMU hangs).
    pub fn control_info(&self) -> Result<ControlInfo> {
        let mut info = sys::virDomainControlInfo { state: 0, details: 0, stateTime: 0 };
        // SAFETY: ptr valid; `info` is a valid out struct.
        if unsafe { sys::virDomainGetControlInfo(self.as_ptr(), &mut info, 0) } < 0 {
            return Err(LibvirtError::last());
        }
        Ok(ControlInfo { state: info.state, details: info.details, state_ms: info.stateTime })
    }

    pub fn has_managed_save(&self) -> Result<bool> {
        // SAFETY: ptr valid.
        match unsafe { sys::virDomainHasManagedSaveImage(self.as_ptr(), 0) } {
            r if r < 0 => Err(LibvirtError::last()),
            r => Ok(r == 1),
        }
    }

    /// Taint and deprecation messages (`virDomainGetMessages`, libvirt 7.1
    /// and later). `Ok(None)`: the client library has no such function.
    pub fn messages(&self) -> Result<Option<Vec<String>>> {
        let Some(addr) = super::optional::symbol(c"virDomainGetMessages") else { return Ok(None) };
        // SAFETY: the symbol is libvirt's virDomainGetMessages, whose C
        // signature is `int (virDomainPtr, char ***, unsigned int)`.
        let get: GetMessages = unsafe { std::mem::transmute::<*const std::ffi::c_void, GetMessages>(addr) };
        let mut msgs: *mut *mut c_char = std::ptr::null_mut();
        let flags = sys::VIR_DOMAIN_MESSAGE_DEPRECATION | sys::VIR_DOMAIN_MESSAGE_TAINTING;
        // SAFETY: ptr valid; `msgs` is a valid out pointer.
        let n = unsafe { get(self.as_ptr(), &mut msgs, flags) };
        if n < 0 {
            return Err(LibvirtError::last());
        }
        let mut out = Vec::with_capacity(n as usize);
        if !msgs.is_null() {
            for i in 0..n as usize {
                // SAFETY: libvirt returned `n` malloc'd strings in a malloc'd
                // array; each is taken (freed) once, then the array.
                unsafe {
                    let s = *msgs.add(i);
                    if !s.is_null() {
                        out.push(take_string(s));
                    }
                }
            }
            // SAFETY: the array itself, malloc'd by libvirt, freed once.
            unsafe { libc::free(msgs.cast()) };
        }
        Ok(Some(out))
    }

    /// The block job on `disk` (its target, `vda`), if one runs. Takes a
    /// query job and asks QEMU: callers ask only for disks known to have one.
    pub fn block_job_info(&self, disk: &str) -> Result<Option<BlockJobInfo>> {
        let disk = CString::new(disk).map_err(|_| LibvirtError::new(0, format!("disk name {disk:?} has a NUL")))?;
        let mut info = sys::virDomainBlockJobInfo { type_: 0, bandwidth: 0, cur: 0, end: 0 };
        // SAFETY: ptr valid; `disk` NUL-terminated; `info` a valid out struct.
        let r = unsafe { sys::virDomainGetBlockJobInfo(self.as_ptr(), disk.as_ptr(), &mut info, BANDWIDTH_BYTES) };
        match r {
            r if r < 0 => Err(LibvirtError::last()),
            0 => Ok(None),
            // `unsigned long`: 64 bits here, 32 on other targets.
            #[allow(clippy::useless_conversion)]
            _ => Ok(Some(BlockJobInfo {
                job_type: info.type_,
                bandwidth: u64::from(info.bandwidth),
                cur: info.cur,
                end: info.end,
            })),
        }
    }

    /// Where each vCPU runs now (asks QEMU for its threads' CPUs).
    pub fn vcpu_places(&self, max_vcpus: usize) -> Result<Vec<VcpuPlace>> {
        let max = max_vcpus.clamp(1, 4096);
        let mut info = vec![sys::virVcpuInfo { number: 0, state: 0, cpuTime: 0, cpu: -1 }; max];
        // SAFETY: ptr valid; `info` holds `max` entries; no cpumaps asked.
        let n =
            unsafe { sys::virDomainGetVcpus(self.as_ptr(), info.as_mut_ptr(), max as c_int, std::ptr::null_mut(), 0) };
        if n < 0 {
            return Err(LibvirtError::last());
        }
        info.truncate((n as usize).min(max));
        Ok(info.into_iter().map(|v| VcpuPlace { vcpu: v.number, state: v.state, cpu: v.cpu }).collect())
    }
}
