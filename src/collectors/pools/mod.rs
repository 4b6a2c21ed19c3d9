//! Storage pools: state, capacity, allocation, available space and volume
//! count. Never refreshes a pool (`virStoragePoolRefresh` can take minutes on
//! big pools): the figures are libvirt's as of its last refresh.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

pub(crate) mod config;
pub(crate) mod metrics;

use super::{BoxFuture, BuildContext, Built, CollectError, Collector, CollectorContext, CollectorPlugin};
use crate::libvirt::pools::POOL_RUNNING;
use crate::libvirt::LibvirtError;
use crate::record::kind::KindSpec;
use crate::record::mapping::unit_of;
use crate::record::{Batch, Field, PoolRef, Record, RecordKind};
use crate::value::TypedValue;
use config::PoolsConfig;
use metrics::STORAGE_POOL;

pub(crate) const SOURCE: &str = "pools";

static POOL_WARNINGS: crate::util::throttle::Throttle =
    crate::util::throttle::Throttle::new(std::time::Duration::from_secs(600));

#[derive(Debug)]
struct PoolReading {
    name: String,
    uuid: String,
    fields: Vec<(&'static str, TypedValue)>,
}

/// The pool type from its XML (`<pool type='dir'>`).
pub(crate) fn pool_type(xml: &str) -> Option<String> {
    let doc = roxmltree::Document::parse(xml).ok()?;
    doc.root_element().attribute("type").map(String::from)
}

pub(crate) struct PoolsCollector {
    ctx: CollectorContext,
    /// Pool type by UUID (a pool's type never changes).
    types: HashMap<String, String>,
}

impl PoolsCollector {
    pub(crate) fn new(ctx: CollectorContext) -> Self {
        Self { ctx, types: HashMap::new() }
    }
}

fn is_vanished(e: &LibvirtError) -> bool {
    e.is_no_storage_pool()
}

impl Collector for PoolsCollector {
    fn name(&self) -> &'static str {
        SOURCE
    }

    fn collect(&mut self) -> BoxFuture<'_, Result<Batch, CollectError>> {
        Box::pin(self.collect_once())
    }
}

impl PoolsCollector {
    async fn collect_once(&mut self) -> Result<Batch, CollectError> {
        let session = self.ctx.manager.current().ok_or(CollectError::NotConnected)?;
        let s = session.clone();
        let manager = self.ctx.manager.clone();
        let known_types = self.types.clone();
        let (readings, problems) = self
            .ctx
            .tracker
            .run(move || -> Result<(Vec<PoolReading>, Vec<String>), LibvirtError> {
                let pools = s.conn.list_all_storage_pools().inspect_err(|e| manager.note_error(&s, e))?;
                let mut out = Vec::with_capacity(pools.len());
                let mut problems = Vec::new();
                for pool in pools {
                    let (name, uuid) = (pool.name(), pool.uuid());
                    let info = match pool.info() {
                        Ok(i) => i,
                        Err(e) if is_vanished(&e) => continue,
                        Err(e) => {
                            problems.push(format!("pool {name}: {e}"));
                            continue;
                        }
                    };
                    let mut fields: Vec<(&'static str, TypedValue)> = vec![("state", TypedValue::Int(info.state))];
                    if info.state == POOL_RUNNING {
                        fields.push(("capacity", TypedValue::ULLong(info.capacity)));
                        fields.push(("allocation", TypedValue::ULLong(info.allocation)));
                        fields.push(("available", TypedValue::ULLong(info.available)));
                        match pool.num_volumes() {
                            Ok(n) => fields.push(("volumes", TypedValue::UInt(n))),
                            Err(e) if is_vanished(&e) => continue,
                            Err(e) => problems.push(format!("volumes of pool {name}: {e}")),
                        }
                    }
                    let pool_type =
                        known_types.get(&uuid).cloned().or_else(|| pool.xml_desc().ok().and_then(|x| pool_type(&x)));
                    if let Some(t) = pool_type {
                        fields.push(("type", TypedValue::String(t.into())));
                    }
                    if let Ok(p) = pool.is_persistent() {
                        fields.push(("persistent", TypedValue::Boolean(p)));
                    }
                    if let Ok(a) = pool.autostart() {
                        fields.push(("autostart", TypedValue::Boolean(a)));
                    }
                    out.push(PoolReading { name, uuid, fields });
                }
                Ok((out, problems))
            })
            .await??;
        for p in problems {
            // The same pool fails the same way every cycle: once in ten minutes.
            if let Some(held_back) = POOL_WARNINGS.allow(&p) {
                tracing::warn!(collector = SOURCE, repeats_not_logged = held_back, "{p}");
            }
        }
        let time = SystemTime::now();
        self.types.clear();
        let mut records = Vec::with_capacity(readings.len());
        for r in readings {
            if let Some(TypedValue::String(t)) = r.fields.iter().find(|(k, _)| *k == "type").map(|(_, v)| v) {
                self.types.insert(r.uuid.clone(), t.to_string());
            }
            let fields = r
                .fields
                .into_iter()
                .map(|(k, v)| Field { unit: unit_of(&STORAGE_POOL, k, &v), key: Arc::from(k), value: v })
                .collect();
            records.push(Record {
                pool: Some(PoolRef { name: r.name.into(), uuid: r.uuid.into() }),
                fields,
                ..Record::new(&self.ctx.identity, RecordKind::of(&STORAGE_POOL), time)
            });
        }
        Ok(Batch { source: SOURCE, snapshot: true, records, ..Default::default() })
    }
}

/// The storage pools collector in the registry.
pub(crate) struct PoolsPlugin;

impl CollectorPlugin for PoolsPlugin {
    type Config = PoolsConfig;
    const NAME: &'static str = SOURCE;
    const INTERVAL: Option<std::time::Duration> = Some(std::time::Duration::from_secs(60));
    const KINDS: &'static [&'static KindSpec] = &[&STORAGE_POOL];

    fn build(&self, _: &PoolsConfig, ctx: &mut BuildContext) -> anyhow::Result<Built> {
        Ok(Built { collector: Box::new(PoolsCollector::new(ctx.ctx.clone())), listener: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_type_from_xml() {
        assert_eq!(pool_type("<pool type='dir'><name>x</name></pool>").as_deref(), Some("dir"));
        assert_eq!(pool_type("<pool/>"), None);
        assert_eq!(pool_type("<pool"), None);
    }
}
