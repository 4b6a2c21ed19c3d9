//! `[collectors.health]`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::section::{at_most, count_at_most, DAY};
use crate::config::{KeyError, SectionConfig, SectionContext};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct HealthConfig {
    /// How often each domain's managed-save image and taint/deprecation
    /// messages are read: they change rarely, and a lifecycle event has
    /// its domain's read again at once. The control state is read every
    /// interval.
    #[serde(with = "humantime_serde")]
    pub(crate) details_interval: Duration,
    /// Domains asked at once.
    pub(crate) calls_in_flight: usize,
    /// Taint and deprecation messages kept per domain (the counts stay exact).
    pub(crate) max_messages: usize,
    /// Longest message kept (cut at a character boundary).
    pub(crate) max_message_bytes: usize,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            details_interval: Duration::from_secs(300),
            calls_in_flight: 4,
            max_messages: 16,
            max_message_bytes: 256,
        }
    }
}

impl SectionConfig for HealthConfig {
    fn validate(&self, ctx: &SectionContext) -> Result<(), KeyError> {
        at_most("details_interval", Some(self.details_interval), DAY)?;
        count_at_most("calls_in_flight", self.calls_in_flight as u64, 64)?;
        count_at_most("max_messages", self.max_messages as u64, 1024)?;
        count_at_most("max_message_bytes", self.max_message_bytes as u64, 65536)?;
        if self.calls_in_flight == 0 {
            return Err(KeyError::new("calls_in_flight", "must be at least 1"));
        }
        if let Some((interval, _)) = ctx.schedule {
            if self.details_interval < interval {
                return Err(KeyError::new("details_interval", "must not be shorter than the health interval"));
            }
        }
        Ok(())
    }
}
