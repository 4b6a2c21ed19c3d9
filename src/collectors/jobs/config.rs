//! `[collectors.jobs]`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::section::{at_most, DAY};
use crate::config::{KeyError, SectionConfig, SectionContext};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct JobsConfig {
    /// How long a completed job stays on view in Prometheus after it was first seen.
    #[serde(with = "humantime_serde")]
    pub completed_retention: Duration,
    /// How often a domain without a running job is read (domains with one:
    /// every interval). Default: 6 intervals.
    #[serde(with = "humantime_serde")]
    pub idle_interval: Option<Duration>,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self { completed_retention: Duration::from_secs(600), idle_interval: None }
    }
}

impl JobsConfig {
    /// How often a domain without a running job is read.
    pub(crate) fn idle_interval(&self, interval: Duration) -> Duration {
        self.idle_interval.unwrap_or(interval * 6)
    }
}

impl SectionConfig for JobsConfig {
    fn validate(&self, ctx: &SectionContext) -> Result<(), KeyError> {
        at_most("completed_retention", Some(self.completed_retention), DAY * 7)?;
        at_most("idle_interval", self.idle_interval, DAY)?;
        if let (Some(idle), Some((interval, _))) = (self.idle_interval, ctx.schedule) {
            if idle < interval {
                return Err(KeyError::new("idle_interval", "must not be shorter than the jobs interval"));
            }
        }
        Ok(())
    }
}
