//! `[collectors.snapshots]`: the snapshot and checkpoint inventory.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::section::{at_most, count_at_most, DAY, HOUR};
use crate::config::{KeyError, SectionConfig, SectionContext};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct SnapshotsConfig {
    /// Also list checkpoints (libvirt 5.6+; older daemons are asked once
    /// per connection).
    pub checkpoints: bool,
    /// Snapshots (and checkpoints) described one by one per domain, oldest
    /// first; the counts and the oldest and newest times stay exact.
    pub max_per_domain: usize,
    /// Names, descriptions and parents are cut at this many bytes.
    pub max_string_bytes: usize,
    /// Domains read at once, each on its own blocking thread.
    pub calls_in_flight: usize,
    /// How long one domain's calls may take before the cycle goes on
    /// without it (default: three quarters of the timeout).
    #[serde(with = "humantime_serde")]
    pub call_timeout: Option<Duration>,
    /// A snapshot's XML is read once (names are unique per domain) and read
    /// again after this long, for what can change in place (a description
    /// edited, a parent deleted). "0s": never again.
    #[serde(with = "humantime_serde")]
    pub xml_refresh: Duration,
}

impl Default for SnapshotsConfig {
    fn default() -> Self {
        Self {
            checkpoints: true,
            max_per_domain: 50,
            max_string_bytes: 256,
            calls_in_flight: 4,
            call_timeout: None,
            xml_refresh: Duration::from_secs(6 * 3600),
        }
    }
}

impl SnapshotsConfig {
    /// How long one domain's calls may take within a cycle.
    pub(crate) fn call_timeout(&self, timeout: Duration) -> Duration {
        self.call_timeout.unwrap_or(timeout * 3 / 4).min(timeout)
    }
}

impl SectionConfig for SnapshotsConfig {
    fn validate(&self, _: &SectionContext) -> Result<(), KeyError> {
        at_most("call_timeout", self.call_timeout, HOUR)?;
        at_most("xml_refresh", Some(self.xml_refresh), 30 * DAY)?;
        count_at_most("calls_in_flight", self.calls_in_flight as u64, 64)?;
        count_at_most("max_per_domain", self.max_per_domain as u64, 4096)?;
        count_at_most("max_string_bytes", self.max_string_bytes as u64, 65536)?;
        if self.calls_in_flight == 0 {
            return Err(KeyError::new("calls_in_flight", "must be at least 1"));
        }
        if self.max_string_bytes < 8 {
            return Err(KeyError::new("max_string_bytes", "must be at least 8 (names would be unreadable)"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(c: SnapshotsConfig) -> Result<(), KeyError> {
        c.validate(&SectionContext { enabled: true, schedule: None })
    }

    #[test]
    fn defaults_pass_and_bounds_name_their_key() {
        check(SnapshotsConfig::default()).unwrap();
        let e = check(SnapshotsConfig { max_per_domain: 5000, ..Default::default() }).unwrap_err();
        assert_eq!(e.key, "max_per_domain");
        let e = check(SnapshotsConfig { max_string_bytes: 2, ..Default::default() }).unwrap_err();
        assert_eq!(e.key, "max_string_bytes");
        let e = check(SnapshotsConfig { calls_in_flight: 0, ..Default::default() }).unwrap_err();
        assert_eq!(e.key, "calls_in_flight");
        let e = check(SnapshotsConfig { xml_refresh: 31 * DAY, ..Default::default() }).unwrap_err();
        assert_eq!(e.key, "xml_refresh");
        check(SnapshotsConfig { xml_refresh: Duration::ZERO, max_per_domain: 0, ..Default::default() }).unwrap();
        let c = SnapshotsConfig::default();
        assert_eq!(c.call_timeout(Duration::from_secs(8)), Duration::from_secs(6));
        let c = SnapshotsConfig { call_timeout: Some(Duration::from_secs(60)), ..Default::default() };
        assert_eq!(c.call_timeout(Duration::from_secs(8)), Duration::from_secs(8));
    }
}
