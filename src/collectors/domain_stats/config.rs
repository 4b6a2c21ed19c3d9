//! `[collectors.domain_stats]`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::section::{at_most, count_at_most, string_or_list, DAY};
use crate::config::{KeyError, SectionConfig, SectionContext};
use crate::libvirt::stats::{group_by_name, ALL_GROUPS};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DomainStatsConfig {
    /// Stats groups to collect; "all" means every group the daemon supports.
    #[serde(deserialize_with = "string_or_list")]
    pub groups: Vec<String>,
    /// Report every layer of each disk's backing chain.
    pub backing_chain: bool,
    /// Skip domains whose job lock is held (a migration, a hung QEMU)
    /// instead of waiting for it.
    pub nowait: bool,
    /// How often a domain's XML (OS type, vCPUs, memory, Nova metadata) is re-read.
    #[serde(with = "humantime_serde")]
    pub metadata_refresh: Duration,
    /// Domains per stats call: a host with more domains is read in chunks
    /// (virDomainListGetStats), so one call's latency and one stuck
    /// domain's reach stay bounded. 0: always one call for all domains.
    pub chunk_size: usize,
    /// Chunk calls in flight at once.
    pub chunks_in_flight: usize,
    /// vCPU and IOThread pinnings kept per domain from its XML (the rest
    /// are cut and counted).
    pub max_pinnings: usize,
}

impl Default for DomainStatsConfig {
    fn default() -> Self {
        Self {
            groups: vec!["all".into()],
            backing_chain: true,
            nowait: true,
            metadata_refresh: Duration::from_secs(300),
            chunk_size: 50,
            chunks_in_flight: 2,
            max_pinnings: 256,
        }
    }
}

impl DomainStatsConfig {
    /// The stats groups bit mask asked for (before probing the daemon).
    pub fn groups_mask(&self) -> Result<u32, String> {
        let mut mask = 0;
        for g in &self.groups {
            if g == "all" {
                mask |= ALL_GROUPS.iter().fold(0, |m, g| m | g.bit);
                continue;
            }
            match group_by_name(g) {
                Some(grp) => mask |= grp.bit,
                None => {
                    let known: Vec<&str> = ALL_GROUPS.iter().map(|g| g.name).collect();
                    return Err(format!("unknown stats group {g:?}; known groups: all, {}", known.join(", ")));
                }
            }
        }
        if mask == 0 {
            return Err("no stats group selected; use [\"all\"] or a list of groups".into());
        }
        Ok(mask)
    }
}

impl SectionConfig for DomainStatsConfig {
    fn validate(&self, ctx: &SectionContext) -> Result<(), KeyError> {
        at_most("metadata_refresh", Some(self.metadata_refresh), DAY * 7)?;
        count_at_most("chunk_size", self.chunk_size as u64, 100_000)?;
        count_at_most("max_pinnings", self.max_pinnings as u64, 16_384)?;
        if let Some((interval, _)) = ctx.schedule {
            if self.metadata_refresh < interval {
                return Err(KeyError::new("metadata_refresh", "must not be shorter than the domain stats interval"));
            }
        }
        self.groups_mask().map_err(|m| KeyError::new("groups", m))?;
        if self.chunks_in_flight == 0 || self.chunks_in_flight > 16 {
            return Err(KeyError::new(
                "chunks_in_flight",
                "must be between 1 and 16 (libvirtd serves 5 calls of one client at once by default)",
            ));
        }
        Ok(())
    }
}
