//! The host: node info, CPU time (all CPUs and each CPU), memory (host and
//! per NUMA cell), free memory per cell, free pages per size and cell,
//! versions, and domain counts by state.
//!
//! Each call stands alone: one the daemon does not implement (the test
//! driver lacks several) is logged once and not asked again on that
//! connection; the rest is still collected.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::SystemTime;

pub(crate) mod config;
pub(crate) mod metrics;

use super::{BoxFuture, BuildContext, Built, CollectError, Collector, CollectorContext, CollectorPlugin};
use crate::libvirt::node::{ALL, LIST_OTHER, LIST_PAUSED, LIST_PERSISTENT, LIST_RUNNING, LIST_SHUTOFF, LIST_TRANSIENT};
use crate::libvirt::{Connection, LibvirtError};
use crate::record::kind::KindSpec;
use crate::record::mapping::unit_of;
use crate::record::{Batch, Field, Record, RecordKind};
use crate::util::throttle::LogOnce;
use crate::value::TypedValue;
use config::NodeConfig;
use metrics::{NODE, NODE_PER_CPU};

pub(crate) const SOURCE: &str = "node";

/// NUMA cells and page sizes, from the capabilities XML (read once per connection).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Topology {
    pub cells: Vec<i32>,
    pub page_sizes_kib: Vec<u32>,
}

pub(crate) fn parse_topology(caps: &str) -> Result<Topology, String> {
    let doc = roxmltree::Document::parse(caps).map_err(|e| format!("cannot parse the capabilities XML: {e}"))?;
    let mut t = Topology::default();
    let cells =
        doc.descendants().filter(|n| n.has_tag_name("cell") && n.parent().is_some_and(|p| p.has_tag_name("cells")));
    for cell in cells {
        let Some(id) = cell.attribute("id").and_then(|v| v.parse().ok()) else { continue };
        t.cells.push(id);
        for pages in cell.children().filter(|n| n.has_tag_name("pages")) {
            let unit_kib = match pages.attribute("unit").unwrap_or("KiB") {
                "KiB" | "k" => 1,
                "MiB" | "M" => 1024,
                "GiB" | "G" => 1024 * 1024,
                _ => continue,
            };
            if let Some(size) = pages.attribute("size").and_then(|v| v.parse::<u32>().ok()) {
                let kib = size.saturating_mul(unit_kib);
                if !t.page_sizes_kib.contains(&kib) {
                    t.page_sizes_kib.push(kib);
                }
            }
        }
    }
    Ok(t)
}

/// One pass: the fields gathered and the calls that failed.
#[derive(Debug, Default)]
struct Pass {
    fields: Vec<(String, TypedValue)>,
    /// (API, error): unsupported ones are not asked again on this connection.
    failures: Vec<(&'static str, LibvirtError)>,
    topology: Option<Topology>,
}

impl Pass {
    fn try_call<T>(
        &mut self,
        skip: &HashSet<&'static str>,
        api: &'static str,
        f: impl FnOnce() -> Result<T, LibvirtError>,
    ) -> Option<T> {
        if skip.contains(api) {
            return None;
        }
        match f() {
            Ok(v) => Some(v),
            Err(e) => {
                self.failures.push((api, e));
                None
            }
        }
    }

    fn u(&mut self, key: impl Into<String>, v: u64) {
        self.fields.push((key.into(), TypedValue::ULLong(v)));
    }
}

fn collect_node(conn: &Connection, skip: &HashSet<&'static str>, per_cpu: bool, known: Option<Topology>) -> Pass {
    let mut p = Pass::default();
    let info = p.try_call(skip, "virNodeGetInfo", || conn.node_info());
    if let Some(i) = &info {
        p.fields.push(("info.model".into(), TypedValue::String(i.model.as_str().into())));
        p.u("info.memory", i.memory_kib);
        for (k, v) in [
            ("info.cpus", i.cpus),
            ("info.mhz", i.mhz),
            ("info.nodes", i.nodes),
            ("info.sockets", i.sockets),
            ("info.cores", i.cores),
            ("info.threads", i.threads),
        ] {
            p.fields.push((k.into(), TypedValue::UInt(v)));
        }
    }
    if let Some(v) = p.try_call(skip, "virConnectGetVersion", || conn.versions()) {
        p.u("version.library", v.library);
        p.u("version.daemon", v.daemon);
        p.u("version.hypervisor", v.hypervisor);
        p.fields.push(("hypervisor.type".into(), TypedValue::String(v.hypervisor_type.into())));
    }
    if let Some(stats) = p.try_call(skip, "virNodeGetCPUStats", || conn.node_cpu_stats(ALL)) {
        for (k, v) in stats {
            p.u(format!("cpu.{k}"), v);
        }
        if per_cpu {
            for cpu in 0..info.as_ref().map_or(0, |i| i.cpus as i32) {
                match conn.node_cpu_stats(cpu) {
                    Ok(stats) => stats.into_iter().for_each(|(k, v)| p.u(format!("cpu.{cpu}.{k}"), v)),
                    // A CPU taken offline since virNodeGetInfo: skip it.
                    Err(e) if e.is_unsupported() || e.is_invalid_arg() => {}
                    Err(e) => p.failures.push(("virNodeGetCPUStats(cpu)", e)),
                }
            }
        }
    }
    let topology = known.or_else(|| {
        let caps = p.try_call(skip, "virConnectGetCapabilities", || conn.capabilities())?;
        match parse_topology(&caps) {
            Ok(t) => Some(t),
            Err(m) => {
                p.failures.push(("virConnectGetCapabilities", LibvirtError::new(0, m)));
                None
            }
        }
    });
    if let Some(stats) = p.try_call(skip, "virNodeGetMemoryStats", || conn.node_memory_stats(ALL)) {
        for (k, v) in stats {
            p.u(format!("memory.{k}"), v);
        }
        for &cell in topology.iter().flat_map(|t| &t.cells) {
            match conn.node_memory_stats(cell) {
                Ok(stats) => stats.into_iter().for_each(|(k, v)| p.u(format!("memory.cell.{cell}.{k}"), v)),
                Err(e) => p.failures.push(("virNodeGetMemoryStats(cell)", e)),
            }
        }
    }
    if let Some(t) = &topology {
        for &cell in &t.cells {
            if let Some(free) = p.try_call(skip, "virNodeGetCellsFreeMemory", || conn.cells_free_memory(cell, 1)) {
                if let Some(bytes) = free.first() {
                    p.u(format!("cell.{cell}.free_memory"), *bytes);
                }
            }
            if let Some(counts) =
                p.try_call(skip, "virNodeGetFreePages", || conn.free_pages(&t.page_sizes_kib, cell, 1))
            {
                for (size, count) in t.page_sizes_kib.iter().zip(counts) {
                    p.u(format!("pages.cell.{cell}.size.{}.free", u64::from(*size) * 1024), count);
                }
            }
        }
    }
    p.topology = topology;
    for (key, flags) in [
        ("domains.running", LIST_RUNNING),
        ("domains.paused", LIST_PAUSED),
        ("domains.shutoff", LIST_SHUTOFF),
        ("domains.other", LIST_OTHER),
        ("domains.persistent", LIST_PERSISTENT),
        ("domains.transient", LIST_TRANSIENT),
    ] {
        if let Some(n) = p.try_call(skip, "virConnectListAllDomains", || conn.count_domains(flags)) {
            p.u(key, n as u64);
        }
    }
    p
}

pub(crate) struct NodeCollector {
    ctx: CollectorContext,
    per_cpu: bool,
    generation: u64,
    topology: Option<Topology>,
    /// APIs the daemon does not implement (not asked again on this connection).
    unsupported: HashSet<&'static str>,
    logged: LogOnce,
}

impl NodeCollector {
    pub(crate) fn new(ctx: CollectorContext, per_cpu: bool) -> Self {
        Self { ctx, per_cpu, generation: 0, topology: None, unsupported: HashSet::new(), logged: LogOnce::default() }
    }
}

impl Collector for NodeCollector {
    fn name(&self) -> &'static str {
        SOURCE
    }

    fn collect(&mut self) -> BoxFuture<'_, Result<Batch, CollectError>> {
        Box::pin(self.collect_once())
    }
}

impl NodeCollector {
    async fn collect_once(&mut self) -> Result<Batch, CollectError> {
        let session = self.ctx.manager.current().ok_or(CollectError::NotConnected)?;
        if session.generation != self.generation {
            self.generation = session.generation;
            self.topology = None;
            self.unsupported.clear();
            self.logged.forget();
        }
        let s = session.clone();
        let skip = self.unsupported.clone();
        let per_cpu = self.per_cpu;
        let known = self.topology.clone();
        let pass = self.ctx.tracker.run(move || collect_node(&s.conn, &skip, per_cpu, known)).await?;
        for (api, e) in &pass.failures {
            if session.conn.lost(e) {
                self.ctx.manager.note_error(&session, e);
                return Err(CollectError::Libvirt(e.clone()));
            }
            if e.is_unsupported() {
                self.unsupported.insert(api);
                tracing::info!(api, error = %e, "the daemon does not support this node call; its figures are not collected on this connection");
            } else if self.logged.first(&format!("{api}: {e}")) {
                tracing::warn!(api, error = %e, "node call failed (logged once per connection)");
            }
        }
        if pass.fields.is_empty() {
            return Err(pass
                .failures
                .into_iter()
                .next()
                .map(|(_, e)| CollectError::Libvirt(e))
                .unwrap_or_else(|| CollectError::Internal("no node figure could be read".into())));
        }
        self.topology = pass.topology;
        let fields = pass
            .fields
            .into_iter()
            .map(|(k, v)| Field { unit: unit_of(&NODE, &k, &v), key: Arc::from(k), value: v })
            .collect();
        let record = Record { fields, ..Record::new(&self.ctx.identity, RecordKind::of(&NODE), SystemTime::now()) };
        Ok(Batch { source: SOURCE, snapshot: true, records: vec![record], ..Default::default() })
    }
}

/// The node collector in the registry.
pub(crate) struct NodePlugin;

impl CollectorPlugin for NodePlugin {
    type Config = NodeConfig;
    const NAME: &'static str = SOURCE;
    const INTERVAL: Option<std::time::Duration> = Some(std::time::Duration::from_secs(30));
    const KINDS: &'static [&'static KindSpec] = &[&NODE];

    fn build(&self, cfg: &NodeConfig, ctx: &mut BuildContext) -> anyhow::Result<Built> {
        let per_cpu = cfg.per_cpu.unwrap_or_else(|| ctx.selection.enabled(Some(&NODE_PER_CPU)));
        Ok(Built { collector: Box::new(NodeCollector::new(ctx.ctx.clone(), per_cpu)), listener: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topology_from_capabilities() {
        let caps = r#"<capabilities><host><topology><cells num='2'>
            <cell id='0'><memory unit='KiB'>100</memory><pages unit='KiB' size='4'>10</pages><pages unit='KiB' size='2048'>0</pages></cell>
            <cell id='3'><pages unit='KiB' size='4'>10</pages><pages unit='GiB' size='1'>0</pages></cell>
        </cells></topology></host></capabilities>"#;
        let t = parse_topology(caps).unwrap();
        assert_eq!(t.cells, vec![0, 3]);
        assert_eq!(t.page_sizes_kib, vec![4, 2048, 1024 * 1024]);
        assert_eq!(parse_topology("<capabilities/>").unwrap(), Topology::default());
        assert!(parse_topology("<capabilities").is_err());
    }
}
