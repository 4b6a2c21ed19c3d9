//! `[collectors.guest]`: what only the guest knows (off by default).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::section::{at_most, count_at_most, HOUR};
use crate::config::{KeyError, SectionConfig, SectionContext};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct GuestConfig {
    /// Ask the QEMU guest agent (filesystems, OS, users, load, addresses).
    /// libvirt allows it only on a read-write connection: this collector
    /// then opens its own (docs/operations.md "Guest data").
    pub agent: bool,
    /// Interface addresses (DHCP leases and ARP; the agent too with `agent`).
    pub addresses: bool,
    /// How long one domain's calls may take before the cycle goes on
    /// without it (default: three quarters of the timeout).
    #[serde(with = "humantime_serde")]
    pub call_timeout: Option<Duration>,
    pub calls_in_flight: usize,
    pub max_filesystems: usize,
    pub max_addresses: usize,
    pub max_string_bytes: usize,
}

impl Default for GuestConfig {
    fn default() -> Self {
        Self {
            agent: true,
            addresses: true,
            call_timeout: None,
            calls_in_flight: 4,
            max_filesystems: 32,
            max_addresses: 32,
            max_string_bytes: 256,
        }
    }
}

impl GuestConfig {
    /// How long one guest's calls may take within a guest cycle.
    pub(crate) fn call_timeout(&self, timeout: Duration) -> Duration {
        self.call_timeout.unwrap_or(timeout * 3 / 4).min(timeout)
    }
}

impl SectionConfig for GuestConfig {
    fn validate(&self, _: &SectionContext) -> Result<(), KeyError> {
        at_most("call_timeout", self.call_timeout, HOUR)?;
        count_at_most("calls_in_flight", self.calls_in_flight as u64, 64)?;
        count_at_most("max_filesystems", self.max_filesystems as u64, 4096)?;
        count_at_most("max_addresses", self.max_addresses as u64, 4096)?;
        count_at_most("max_string_bytes", self.max_string_bytes as u64, 65536)?;
        Ok(())
    }
}
