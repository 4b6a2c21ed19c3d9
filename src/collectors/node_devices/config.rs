//! `[collectors.node_devices]`: the bounds on what a host's devices and
//! its domains' XML may add.

use serde::{Deserialize, Serialize};

use crate::config::section::count_at_most;
use crate::config::{KeyError, SectionConfig, SectionContext};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct NodeDevicesConfig {
    /// Node devices with a record at most; the rest are counted in
    /// virtpulse_node_devices_truncated_total{what="devices"}.
    pub max_devices: usize,
    /// Mediated device types kept per device.
    pub max_mdev_types: usize,
    /// Longer strings (names, types, drivers) are cut at a character boundary.
    pub max_string_bytes: usize,
    /// Domain XML reads side by side, each on its own blocking thread.
    pub domain_reads_in_flight: usize,
}

impl Default for NodeDevicesConfig {
    fn default() -> Self {
        Self { max_devices: 10_000, max_mdev_types: 64, max_string_bytes: 256, domain_reads_in_flight: 4 }
    }
}

impl SectionConfig for NodeDevicesConfig {
    fn validate(&self, _: &SectionContext) -> Result<(), KeyError> {
        count_at_most("max_devices", self.max_devices as u64, 1_000_000)?;
        count_at_most("max_mdev_types", self.max_mdev_types as u64, 4096)?;
        count_at_most("max_string_bytes", self.max_string_bytes as u64, 65536)?;
        if self.max_string_bytes < 16 {
            return Err(KeyError::new("max_string_bytes", "must be at least 16 (device names would be cut)"));
        }
        if self.domain_reads_in_flight == 0 || self.domain_reads_in_flight > 64 {
            return Err(KeyError::new("domain_reads_in_flight", "must be between 1 and 64"));
        }
        Ok(())
    }
}
