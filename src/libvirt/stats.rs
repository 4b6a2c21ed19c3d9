//! Bulk domain statistics (`virConnectGetAllDomainStats` / `virDomainListGetStats`).

use std::ffi::c_int;

use virt_sys as sys;

use super::connection::Connection;
use super::domain::{domain_name, domain_uuid, Domain};
use super::error::{LibvirtError, Result};
use super::typed_params::{decode, DecodedParams, KeyInterner};

/// A `virDomainStatsTypes` group, by the name virsh and the docs use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StatsGroup {
    pub name: &'static str,
    pub bit: u32,
}

/// Every group this build knows, in libvirt's bit order.
pub const ALL_GROUPS: &[StatsGroup] = &[
    StatsGroup { name: "state", bit: sys::VIR_DOMAIN_STATS_STATE },
    StatsGroup { name: "cpu-total", bit: sys::VIR_DOMAIN_STATS_CPU_TOTAL },
    StatsGroup { name: "balloon", bit: sys::VIR_DOMAIN_STATS_BALLOON },
    StatsGroup { name: "vcpu", bit: sys::VIR_DOMAIN_STATS_VCPU },
    StatsGroup { name: "interface", bit: sys::VIR_DOMAIN_STATS_INTERFACE },
    StatsGroup { name: "block", bit: sys::VIR_DOMAIN_STATS_BLOCK },
    StatsGroup { name: "perf", bit: sys::VIR_DOMAIN_STATS_PERF },
    StatsGroup { name: "iothread", bit: sys::VIR_DOMAIN_STATS_IOTHREAD },
    StatsGroup { name: "memory", bit: sys::VIR_DOMAIN_STATS_MEMORY },
    StatsGroup { name: "dirtyrate", bit: sys::VIR_DOMAIN_STATS_DIRTYRATE },
    StatsGroup { name: "vm", bit: sys::VIR_DOMAIN_STATS_VM },
];

pub fn group_by_name(name: &str) -> Option<StatsGroup> {
    ALL_GROUPS.iter().copied().find(|g| g.name == name)
}

pub fn group_names(mask: u32) -> Vec<&'static str> {
    ALL_GROUPS.iter().filter(|g| mask & g.bit != 0).map(|g| g.name).collect()
}

pub const FLAG_NOWAIT: u32 = sys::VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT;
pub const FLAG_BACKING: u32 = sys::VIR_CONNECT_GET_ALL_DOMAINS_STATS_BACKING;
const FLAG_ENFORCE: u32 = sys::VIR_CONNECT_GET_ALL_DOMAINS_STATS_ENFORCE_STATS;
const FLAG_INACTIVE: u32 = sys::VIR_CONNECT_GET_ALL_DOMAINS_STATS_INACTIVE;
const FLAG_TRANSIENT: u32 = sys::VIR_CONNECT_GET_ALL_DOMAINS_STATS_TRANSIENT;
/// Selects no domain at all (a transient domain cannot be inactive): the
/// daemon then judges only whether it knows the requested groups.
const NO_DOMAIN: u32 = FLAG_INACTIVE | FLAG_TRANSIENT;

/// The statistics of one domain from one bulk call.
#[derive(Debug, Clone)]
pub struct DomainStats {
    pub name: String,
    pub uuid: String,
    pub params: DecodedParams,
}

/// What a daemon accepts, found once per connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatsCapabilities {
    /// Groups (of those asked about) the daemon supports.
    pub groups: u32,
    /// Of NOWAIT and BACKING, the flags the daemon accepts.
    pub flags: u32,
}

/// Owns the record array returned by libvirt; frees it (and every domain
/// reference and typed parameter in it) with `virDomainStatsRecordListFree`.
struct RecordList(*mut sys::virDomainStatsRecordPtr);

impl Drop for RecordList {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: the array came from libvirt and is freed exactly once.
            unsafe { sys::virDomainStatsRecordListFree(self.0) };
        }
    }
}

impl RecordList {
    /// Takes the result of a stats call: `n` records at `recs`, or an error.
    fn take(n: c_int, recs: *mut sys::virDomainStatsRecordPtr, names: &mut KeyInterner) -> Result<Vec<DomainStats>> {
        let list = RecordList(recs);
        if n < 0 {
            return Err(LibvirtError::last());
        }
        Ok(list.decode(n, names))
    }

    fn decode(&self, n: c_int, names: &mut KeyInterner) -> Vec<DomainStats> {
        let mut out = Vec::with_capacity(n.max(0) as usize);
        for i in 0..n.max(0) as usize {
            // SAFETY: libvirt returned n valid record pointers.
            unsafe {
                let rec = *self.0.add(i);
                if rec.is_null() {
                    continue;
                }
                let dom = (*rec).dom;
                let (name, uuid) =
                    if dom.is_null() { (String::new(), String::new()) } else { (domain_name(dom), domain_uuid(dom)) };
                out.push(DomainStats { name, uuid, params: decode((*rec).params, (*rec).nparams, names) });
            }
        }
        out
    }
}

impl Connection {
    /// Statistics of every domain (filtered by `flags`) in one RPC.
    pub fn all_domain_stats(&self, groups: u32, flags: u32, names: &mut KeyInterner) -> Result<Vec<DomainStats>> {
        let mut recs: *mut sys::virDomainStatsRecordPtr = std::ptr::null_mut();
        // SAFETY: valid connection; recs receives an array we free via RecordList.
        let n = unsafe { sys::virConnectGetAllDomainStats(self.as_ptr(), groups, &mut recs, flags) };
        RecordList::take(n, recs, names)
    }

    /// Statistics of the given domains in one RPC.
    pub fn domain_list_stats(
        &self,
        domains: &[Domain],
        groups: u32,
        flags: u32,
        names: &mut KeyInterner,
    ) -> Result<Vec<DomainStats>> {
        if domains.is_empty() {
            return Ok(Vec::new());
        }
        let mut ptrs: Vec<sys::virDomainPtr> = domains.iter().map(|d| d.as_ptr()).collect();
        ptrs.push(std::ptr::null_mut());
        let mut recs: *mut sys::virDomainStatsRecordPtr = std::ptr::null_mut();
        // SAFETY: NULL-terminated array of valid domains that outlive the call.
        let n = unsafe { sys::virDomainListGetStats(ptrs.as_mut_ptr(), groups, &mut recs, flags) };
        RecordList::take(n, recs, names)
    }

    /// Finds which of `wanted` groups, and which of `flags`, the daemon supports.
    ///
    /// Asking for a group the daemon does not know fails the whole call (with
    /// ENFORCE_STATS), so this asks once for everything and, only if that is
    /// refused, once per group. The calls select no domain, so no QEMU
    /// monitor is ever touched (a hung guest cannot hang the probe), and no
    /// domain's own QEMU decides: libvirt refuses the `vm` and `dirtyrate`
    /// groups for any inactive domain under ENFORCE, which would drop them
    /// for every running one on a host with a shut-off guest.
    pub fn probe_stats(&self, wanted: u32, flags: u32) -> Result<StatsCapabilities> {
        let mut flags = flags & (FLAG_NOWAIT | FLAG_BACKING);
        let mut names = KeyInterner::default();
        let mut try_call =
            |groups: u32, flags: u32| self.all_domain_stats(groups, flags | FLAG_ENFORCE | NO_DOMAIN, &mut names);

        // Find the accepted flags with the always-present state group.
        let state = sys::VIR_DOMAIN_STATS_STATE;
        while let Err(e) = try_call(state, flags) {
            if self.lost(&e) || flags == 0 {
                return Err(e);
            }
            // Drop the newest flag first (BACKING is older than NOWAIT).
            flags &= if flags & FLAG_NOWAIT != 0 { !FLAG_NOWAIT } else { !FLAG_BACKING };
        }

        match try_call(wanted, flags) {
            Ok(_) => Ok(StatsCapabilities { groups: wanted, flags }),
            Err(e) if self.lost(&e) => Err(e),
            Err(_) => {
                let mut groups = 0;
                for g in ALL_GROUPS.iter().filter(|g| wanted & g.bit != 0) {
                    match try_call(g.bit, flags) {
                        Ok(_) => groups |= g.bit,
                        Err(e) if self.lost(&e) => return Err(e),
                        Err(e) => tracing::debug!(group = g.name, error = %e, "stats group refused by the daemon"),
                    }
                }
                Ok(StatsCapabilities { groups, flags })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_are_distinct_bits_in_order() {
        let mut seen = 0u32;
        for w in ALL_GROUPS.windows(2) {
            assert!(w[0].bit < w[1].bit);
        }
        for g in ALL_GROUPS {
            assert_eq!(g.bit.count_ones(), 1);
            assert_eq!(seen & g.bit, 0);
            seen |= g.bit;
        }
        assert_eq!(group_by_name("vm").unwrap().bit, 1024);
        assert_eq!(group_names(1 | 32), vec!["state", "block"]);
    }
}
