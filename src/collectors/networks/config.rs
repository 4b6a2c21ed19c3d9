//! `[collectors.networks]`: virtual networks.

use serde::{Deserialize, Serialize};

use crate::config::section::count_at_most;
use crate::config::{KeyError, SectionConfig, SectionContext};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct NetworksConfig {
    /// Count the DHCP leases of each active network with DHCP
    /// (`virNetworkGetDHCPLeases`, one call per such network and cycle).
    pub leases: bool,
    /// Networks with series; those past it (by name) are left out and
    /// counted in `virtpulse_networks_truncated_total{what="networks"}`.
    pub max_networks: usize,
    /// Names, bridges and forward modes are cut to this many bytes.
    pub max_string_bytes: usize,
}

impl Default for NetworksConfig {
    fn default() -> Self {
        Self { leases: true, max_networks: 1024, max_string_bytes: 256 }
    }
}

impl SectionConfig for NetworksConfig {
    fn validate(&self, _: &SectionContext) -> Result<(), KeyError> {
        count_at_most("max_networks", self.max_networks as u64, 65536)?;
        count_at_most("max_string_bytes", self.max_string_bytes as u64, 65536)?;
        if self.max_string_bytes == 0 {
            return Err(KeyError::new("max_string_bytes", "must be at least 1"));
        }
        Ok(())
    }
}
