//! Domain job statistics (`virDomainGetJobStats`), never through `virt`'s
//! own `job_stats` (it builds a Vec over libvirt's malloc'd memory).

use std::ffi::c_int;

use virt_sys as sys;

use super::domain::Domain;
use super::error::{LibvirtError, Result};
use super::typed_params::{decode, DecodedParams, KeyInterner};

/// Stats of the most recently completed job instead of the running one.
pub(crate) const FLAG_COMPLETED: u32 = sys::VIR_DOMAIN_JOB_STATS_COMPLETED;
/// Leave completed stats in place for other readers (`virsh domjobinfo
/// --completed`, Nova): a monitoring agent must not consume them.
pub(crate) const FLAG_KEEP_COMPLETED: u32 = sys::VIR_DOMAIN_JOB_STATS_KEEP_COMPLETED;

/// `virDomainJobType` 0: no job.
pub(crate) const JOB_NONE: i32 = 0;

#[derive(Debug, Clone)]
pub struct JobStats {
    /// `virDomainJobType`: 0 none, 1 bounded, 2 unbounded, 3 completed, 4 failed, 5 cancelled.
    pub job_type: i32,
    pub params: DecodedParams,
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

impl Domain {
    /// The running job's statistics, or with `FLAG_COMPLETED` the last
    /// completed job's (type `JOB_NONE` when there is none).
    pub fn job_stats(&self, flags: u32, names: &mut KeyInterner) -> Result<JobStats> {
        let mut job_type: c_int = 0;
        let mut params: sys::virTypedParameterPtr = std::ptr::null_mut();
        let mut n: c_int = 0;
        // SAFETY: valid domain; out pointers are valid; params freed by Params.
        let rc = unsafe { sys::virDomainGetJobStats(self.as_ptr(), &mut job_type, &mut params, &mut n, flags) };
        let owned = Params(params, n);
        if rc < 0 {
            return Err(LibvirtError::last());
        }
        // SAFETY: libvirt returned n initialised parameters.
        let params = unsafe { decode(owned.0, owned.1, names) };
        Ok(JobStats { job_type, params })
    }
}
