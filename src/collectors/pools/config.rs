//! `[collectors.pools]`: nothing beyond the schedule.

use serde::{Deserialize, Serialize};

use crate::config::{KeyError, SectionConfig, SectionContext};

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct PoolsConfig {}

impl SectionConfig for PoolsConfig {
    fn validate(&self, _: &SectionContext) -> Result<(), KeyError> {
        Ok(())
    }
}
