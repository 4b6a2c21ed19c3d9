//! `[collectors.node]`.

use serde::{Deserialize, Serialize};

use super::metrics::NODE_PER_CPU;
use crate::config::{KeyError, SectionConfig, SectionContext};

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct NodeConfig {
    /// Also read each CPU's counters (one libvirt call per CPU). Default:
    /// when the metrics export them (`metrics.node_per_cpu`); `true` also
    /// exports them unless `metrics.node_per_cpu = false`.
    pub per_cpu: Option<bool>,
}

impl SectionConfig for NodeConfig {
    fn validate(&self, _: &SectionContext) -> Result<(), KeyError> {
        Ok(())
    }

    fn implied_switches(&self) -> Vec<(&'static str, bool)> {
        match self.per_cpu {
            Some(true) => vec![(NODE_PER_CPU.key, true)],
            _ => Vec::new(),
        }
    }
}
