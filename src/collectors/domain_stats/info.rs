//! What the domain XML says: descriptive data (OS type, vCPUs, memory,
//! OpenStack Nova metadata) and tuning (per-disk I/O limits, CPU shares,
//! quota and pinning, NUMA memory placement, disks being mirrored by a
//! block job), cached per domain and re-read on a slow timer or after the
//! domain's events (a TUNABLE event re-reads its domain's), never on every
//! cycle.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::record::{DomainInfo, OpenStackInfo};
use crate::value::TypedValue;

const NOVA_NS_PREFIX: &str = "http://openstack.org/xmlns/libvirt/nova/";

fn memory_bytes(node: roxmltree::Node) -> Option<u64> {
    let value: u64 = node.text()?.trim().parse().ok()?;
    let mult: u64 = match node.attribute("unit").unwrap_or("KiB") {
        "b" | "bytes" => 1,
        "KB" => 1000,
        "k" | "KiB" => 1024,
        "MB" => 1000 * 1000,
        "M" | "MiB" => 1 << 20,
        "GB" => 1000 * 1000 * 1000,
        "G" | "GiB" => 1 << 30,
        "TB" => 1000 * 1000 * 1000 * 1000,
        "T" | "TiB" => 1 << 40,
        _ => return None,
    };
    value.checked_mul(mult)
}

fn child<'a, 'i>(node: roxmltree::Node<'a, 'i>, name: &str) -> Option<roxmltree::Node<'a, 'i>> {
    node.children().find(|c| c.is_element() && c.tag_name().name() == name)
}

/// Longest text kept from the XML (Nova names are user input).
pub(crate) const MAX_TEXT: usize = 256;

fn bounded(s: &str) -> String {
    crate::util::text::bounded(s, MAX_TEXT).0.to_string()
}

fn text(node: Option<roxmltree::Node>) -> Option<String> {
    node.and_then(|n| n.text()).map(|t| bounded(t.trim())).filter(|t| !t.is_empty())
}

fn attr(node: Option<roxmltree::Node>, name: &str) -> Option<String> {
    node.and_then(|n| n.attribute(name)).map(bounded)
}

fn nova(metadata: roxmltree::Node) -> Option<OpenStackInfo> {
    let inst = metadata.children().find(|c| {
        c.is_element()
            && c.tag_name().name() == "instance"
            && c.tag_name().namespace().is_some_and(|ns| ns.starts_with(NOVA_NS_PREFIX))
    })?;
    let owner = child(inst, "owner");
    let user = owner.and_then(|o| child(o, "user"));
    let project = owner.and_then(|o| child(o, "project"));
    Some(OpenStackInfo {
        instance_name: text(child(inst, "name")),
        flavor: attr(child(inst, "flavor"), "name"),
        project_name: text(project),
        project_uuid: attr(project, "uuid"),
        user_name: text(user),
        user_uuid: attr(user, "uuid"),
    })
}

/// The `<iotune>` limits libvirt writes, by element name (bytes or
/// operations per second; `_max`: the burst rate).
const IOTUNE: &[&str] = &[
    "total_bytes_sec",
    "read_bytes_sec",
    "write_bytes_sec",
    "total_iops_sec",
    "read_iops_sec",
    "write_iops_sec",
    "total_bytes_sec_max",
    "read_bytes_sec_max",
    "write_bytes_sec_max",
    "total_iops_sec_max",
    "read_iops_sec_max",
    "write_iops_sec_max",
];

/// `<cputune>` periods and quotas (microseconds) and shares.
const CPUTUNE: &[&str] =
    &["shares", "period", "quota", "global_period", "global_quota", "emulator_period", "emulator_quota"];

/// Tuning from the domain XML, as record fields (see `fields`).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Tuning {
    /// (disk target, [(limit, value)]) of disks with limits.
    pub(crate) iotune: Vec<(String, Vec<(&'static str, u64)>)>,
    pub(crate) cputune: Vec<(&'static str, i64)>,
    /// (vCPU, cpuset), at most the bound.
    pub(crate) vcpupin: Vec<(u32, String)>,
    pub(crate) emulatorpin: Option<String>,
    pub(crate) iothreadpin: Vec<(u32, String)>,
    /// `<numatune><memory mode nodeset>`.
    pub(crate) numa: Option<(String, String)>,
    /// (disk target, job) of disks a block job mirrors (`<mirror job=...>`).
    pub(crate) mirrors: Vec<(String, String)>,
}

impl Tuning {
    /// As record fields: `iotune.<n>.name` and `iotune.<n>.<limit>`,
    /// `cputune.<what>`, `cputune.vcpupin.<n>.vcpu|cpuset`,
    /// `cputune.emulatorpin`, `cputune.iothreadpin.<n>.iothread|cpuset`,
    /// `numatune.mode|nodeset`.
    pub(crate) fn fields(&self, out: &mut Vec<(String, TypedValue)>) {
        for (n, (dev, limits)) in self.iotune.iter().enumerate() {
            out.push((format!("iotune.{n}.name"), TypedValue::String(dev.as_str().into())));
            for (k, v) in limits {
                out.push((format!("iotune.{n}.{k}"), TypedValue::ULLong(*v)));
            }
        }
        for (k, v) in &self.cputune {
            let v = if *k == "shares" { TypedValue::ULLong((*v).max(0) as u64) } else { TypedValue::LLong(*v) };
            out.push((format!("cputune.{k}"), v));
        }
        if !self.vcpupin.is_empty() {
            out.push(("cputune.vcpupin.count".into(), TypedValue::UInt(self.vcpupin.len() as u32)));
        }
        for (n, (vcpu, set)) in self.vcpupin.iter().enumerate() {
            out.push((format!("cputune.vcpupin.{n}.vcpu"), TypedValue::UInt(*vcpu)));
            out.push((format!("cputune.vcpupin.{n}.cpuset"), TypedValue::String(set.as_str().into())));
        }
        if let Some(set) = &self.emulatorpin {
            out.push(("cputune.emulatorpin".into(), TypedValue::String(set.as_str().into())));
        }
        if !self.iothreadpin.is_empty() {
            out.push(("cputune.iothreadpin.count".into(), TypedValue::UInt(self.iothreadpin.len() as u32)));
        }
        for (n, (id, set)) in self.iothreadpin.iter().enumerate() {
            out.push((format!("cputune.iothreadpin.{n}.iothread"), TypedValue::UInt(*id)));
            out.push((format!("cputune.iothreadpin.{n}.cpuset"), TypedValue::String(set.as_str().into())));
        }
        if let Some((mode, nodeset)) = &self.numa {
            out.push(("numatune.mode".into(), TypedValue::String(mode.as_str().into())));
            out.push(("numatune.nodeset".into(), TypedValue::String(nodeset.as_str().into())));
        }
    }
}

fn number<T: std::str::FromStr>(node: roxmltree::Node) -> Option<T> {
    node.text()?.trim().parse().ok()
}

/// A cpuset or nodeset as libvirt writes it ("0-3,^2"), bounded.
fn set_attr(node: roxmltree::Node, name: &str) -> Option<String> {
    attr(Some(node), name)
}

/// Reads the tuning; at most `max_pinnings` vCPU and IOThread pinnings are
/// kept. Returns it with how many pinnings were cut.
fn parse_tuning(root: roxmltree::Node, max_pinnings: usize) -> (Tuning, u64) {
    let mut t = Tuning::default();
    let mut cut = 0u64;
    if let Some(devices) = child(root, "devices") {
        for disk in devices.children().filter(|c| c.is_element() && c.tag_name().name() == "disk") {
            let Some(dev) = child(disk, "target").and_then(|t| t.attribute("dev")) else { continue };
            let dev = crate::util::text::bounded(dev, 64).0.to_string();
            if let Some(iotune) = child(disk, "iotune") {
                let limits: Vec<(&'static str, u64)> = IOTUNE
                    .iter()
                    .filter_map(|k| child(iotune, k).and_then(number::<u64>).filter(|v| *v > 0).map(|v| (*k, v)))
                    .collect();
                if !limits.is_empty() {
                    t.iotune.push((dev.clone(), limits));
                }
            }
            if let Some(job) = child(disk, "mirror").and_then(|m| m.attribute("job")) {
                t.mirrors.push((dev, crate::util::text::bounded(job, 32).0.to_string()));
            }
        }
    }
    if let Some(cputune) = child(root, "cputune") {
        t.cputune = CPUTUNE.iter().filter_map(|k| child(cputune, k).and_then(number::<i64>).map(|v| (*k, v))).collect();
        for c in cputune.children().filter(|c| c.is_element()) {
            match c.tag_name().name() {
                "vcpupin" | "iothreadpin" => {
                    let id_attr = if c.tag_name().name() == "vcpupin" { "vcpu" } else { "iothread" };
                    let (Some(id), Some(set)) =
                        (c.attribute(id_attr).and_then(|v| v.parse::<u32>().ok()), set_attr(c, "cpuset"))
                    else {
                        continue;
                    };
                    let list = if id_attr == "vcpu" { &mut t.vcpupin } else { &mut t.iothreadpin };
                    // libvirt refuses a second pinning of one vCPU; were one
                    // there, its series would repeat the first's labels.
                    if list.iter().any(|(seen, _)| *seen == id) {
                        continue;
                    }
                    if list.len() >= max_pinnings {
                        cut += 1;
                    } else {
                        list.push((id, set));
                    }
                }
                "emulatorpin" => t.emulatorpin = set_attr(c, "cpuset"),
                _ => {}
            }
        }
    }
    if let Some(mem) = child(root, "numatune").and_then(|n| child(n, "memory")) {
        let mode = attr(Some(mem), "mode").unwrap_or_else(|| "strict".into());
        if let Some(nodeset) = set_attr(mem, "nodeset") {
            t.numa = Some((mode, nodeset));
        }
    }
    (t, cut)
}

/// What the domain XML says.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Parsed {
    pub(crate) info: DomainInfo,
    pub(crate) tuning: Tuning,
    /// Pinnings past the bound, not kept.
    pub(crate) cut: u64,
}

/// Parses a domain XML: what the info metric and records carry, and the
/// tuning. Missing elements stay `None`; malformed XML is an error (the
/// caller keeps the old entry). Text is cut to `MAX_TEXT` bytes.
pub(crate) fn parse_domain(xml: &str, max_pinnings: usize) -> Result<Parsed, String> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| format!("cannot parse domain XML: {e}"))?;
    let root = doc.root_element();
    let info = info_of(root)?;
    let (tuning, cut) = parse_tuning(root, max_pinnings);
    Ok(Parsed { info, tuning, cut })
}

/// The descriptive part of `parse_domain`.
#[cfg(test)]
pub(crate) fn parse_domain_xml(xml: &str) -> Result<DomainInfo, String> {
    parse_domain(xml, 0).map(|p| p.info)
}

fn info_of(root: roxmltree::Node) -> Result<DomainInfo, String> {
    if root.tag_name().name() != "domain" {
        let name = crate::util::text::bounded(root.tag_name().name(), 64).0;
        return Err(format!("domain XML has root <{name}>, expected <domain>"));
    }
    let os_type = child(root, "os").and_then(|os| child(os, "type"));
    let vcpu = child(root, "vcpu");
    Ok(DomainInfo {
        virt_type: attr(Some(root), "type"),
        os_type: text(os_type),
        arch: attr(os_type, "arch"),
        machine: attr(os_type, "machine"),
        vcpus: vcpu.and_then(|v| v.attribute("current").or(v.text())).and_then(|s| s.trim().parse().ok()),
        max_memory_bytes: child(root, "memory").and_then(memory_bytes),
        memory_bytes: child(root, "currentMemory").and_then(memory_bytes),
        persistent: None,
        autostart: None,
        openstack: child(root, "metadata").and_then(nova),
    })
}

struct Entry {
    info: Arc<DomainInfo>,
    tuning: Arc<Tuning>,
    fetched: Instant,
}

/// Per-domain info keyed by UUID. Entries are re-read after `refresh`, or at
/// once after `invalidate` (the events subsystem calls it on define and
/// metadata-change events).
pub struct InfoCache {
    entries: HashMap<String, Entry>,
    refresh: Duration,
    invalidated: Arc<Mutex<HashSet<String>>>,
}

impl InfoCache {
    pub fn new(refresh: Duration) -> Self {
        Self { entries: HashMap::new(), refresh, invalidated: Arc::default() }
    }

    /// A handle others can use to force a re-read of a domain's info.
    pub fn invalidation_handle(&self) -> Arc<Mutex<HashSet<String>>> {
        self.invalidated.clone()
    }

    pub fn get(&self, uuid: &str) -> Option<Arc<DomainInfo>> {
        self.entries.get(uuid).map(|e| e.info.clone())
    }

    pub(crate) fn tuning(&self, uuid: &str) -> Option<Arc<Tuning>> {
        self.entries.get(uuid).map(|e| e.tuning.clone())
    }

    /// UUIDs among `present` whose info is missing, old, or invalidated.
    pub fn due<'a>(&self, present: impl Iterator<Item = &'a str>, now: Instant) -> Vec<String> {
        let invalidated = self.invalidated.lock().map(|s| s.clone()).unwrap_or_default();
        present
            .filter(|u| match self.entries.get(*u) {
                None => true,
                Some(e) => now.duration_since(e.fetched) >= self.refresh || invalidated.contains(*u),
            })
            .map(String::from)
            .collect()
    }

    pub(crate) fn put(&mut self, uuid: String, parsed: Parsed, now: Instant) {
        if let Ok(mut s) = self.invalidated.lock() {
            s.remove(&uuid);
        }
        self.entries.insert(uuid, Entry { info: Arc::new(parsed.info), tuning: Arc::new(parsed.tuning), fetched: now });
    }

    /// Forgets domains that no longer exist.
    pub fn retain(&mut self, present: &HashSet<&str>) {
        self.entries.retain(|u, _| present.contains(u.as_str()));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOVA_XML: &str = r#"<domain type='kvm' id='3'>
  <name>instance-0000002a</name>
  <uuid>7b6e6f2a-0000-4000-8000-000000000001</uuid>
  <metadata>
    <nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1">
      <nova:package version="27.0.0"/>
      <nova:name>web-1</nova:name>
      <nova:flavor name="m1.small"><nova:memory>2048</nova:memory></nova:flavor>
      <nova:owner>
        <nova:user uuid="u-1">alice</nova:user>
        <nova:project uuid="p-1">shop</nova:project>
      </nova:owner>
    </nova:instance>
  </metadata>
  <memory unit='KiB'>2097152</memory>
  <currentMemory unit='KiB'>1048576</currentMemory>
  <vcpu placement='static' current='2'>4</vcpu>
  <os><type arch='x86_64' machine='pc-q35-8.2'>hvm</type></os>
</domain>"#;

    #[test]
    fn parses_nova_and_basics() {
        let i = parse_domain_xml(NOVA_XML).unwrap();
        assert_eq!(i.virt_type.as_deref(), Some("kvm"));
        assert_eq!(i.os_type.as_deref(), Some("hvm"));
        assert_eq!(i.arch.as_deref(), Some("x86_64"));
        assert_eq!(i.machine.as_deref(), Some("pc-q35-8.2"));
        assert_eq!(i.vcpus, Some(2));
        assert_eq!(i.max_memory_bytes, Some(2 << 30));
        assert_eq!(i.memory_bytes, Some(1 << 30));
        let os = i.openstack.unwrap();
        assert_eq!(os.instance_name.as_deref(), Some("web-1"));
        assert_eq!(os.flavor.as_deref(), Some("m1.small"));
        assert_eq!(os.user_name.as_deref(), Some("alice"));
        assert_eq!(os.user_uuid.as_deref(), Some("u-1"));
        assert_eq!(os.project_name.as_deref(), Some("shop"));
        assert_eq!(os.project_uuid.as_deref(), Some("p-1"));
    }

    #[test]
    fn plain_domain_has_no_openstack_info() {
        let i = parse_domain_xml("<domain type='qemu'><memory unit='MiB'>32</memory><vcpu>1</vcpu><metadata><x:y xmlns:x='urn:x'/></metadata></domain>").unwrap();
        assert_eq!(i.openstack, None);
        assert_eq!(i.vcpus, Some(1));
        assert_eq!(i.max_memory_bytes, Some(32 << 20));
    }

    #[test]
    fn malformed_xml_is_an_error() {
        assert!(parse_domain_xml("<domain").is_err());
        assert!(parse_domain_xml("<network/>").is_err());
        let i = parse_domain_xml("<domain><memory unit='parsecs'>1</memory></domain>").unwrap();
        assert_eq!(i.max_memory_bytes, None);
    }

    #[test]
    fn cache_refreshes_and_invalidates() {
        let mut c = InfoCache::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(c.due(["a"].into_iter(), t0), vec!["a"]);
        c.put("a".into(), Parsed::default(), t0);
        assert!(c.due(["a"].into_iter(), t0).is_empty());
        assert_eq!(c.due(["a"].into_iter(), t0 + Duration::from_secs(61)), vec!["a"]);
        c.invalidation_handle().lock().unwrap().insert("a".into());
        assert_eq!(c.due(["a"].into_iter(), t0), vec!["a"]);
        c.put("a".into(), Parsed::default(), t0);
        assert!(c.due(["a"].into_iter(), t0).is_empty());
        c.retain(&HashSet::new());
        assert!(c.is_empty());
    }

    const TUNED_XML: &str = r#"<domain type='kvm' id='7'>
  <name>db</name>
  <vcpu placement='static'>4</vcpu>
  <iothreads>1</iothreads>
  <cputune>
    <shares>512</shares>
    <period>100000</period>
    <quota>50000</quota>
    <vcpupin vcpu='0' cpuset='2'/>
    <vcpupin vcpu='1' cpuset='3-4,^4'/>
    <vcpupin vcpu='2' cpuset='5'/>
    <emulatorpin cpuset='0-1'/>
    <iothreadpin iothread='1' cpuset='6'/>
  </cputune>
  <numatune><memory mode='preferred' nodeset='0'/></numatune>
  <devices>
    <disk type='file' device='disk'>
      <source file='/img/db.qcow2'/>
      <target dev='vda' bus='virtio'/>
      <iotune>
        <total_bytes_sec>10485760</total_bytes_sec>
        <read_iops_sec>400</read_iops_sec>
        <write_iops_sec>0</write_iops_sec>
        <total_bytes_sec_max>20971520</total_bytes_sec_max>
        <group_name>g1</group_name>
      </iotune>
    </disk>
    <disk type='file' device='disk'>
      <source file='/img/data.qcow2'/>
      <mirror type='file' file='/img/copy.qcow2' format='qcow2' job='copy' ready='yes'>
        <format type='qcow2'/>
      </mirror>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'><target dev='hdc' bus='ide'/></disk>
  </devices>
</domain>"#;

    #[test]
    fn a_vcpu_pinned_twice_keeps_its_first_pinning() {
        // Found by the domain_xml fuzz target: two pinnings of one vCPU gave
        // two series with the same labels.
        let xml = "<domain><cputune><vcpupin vcpu='0' cpuset='2'/><vcpupin vcpu='0' cpuset='3'/>\
                   <iothreadpin iothread='1' cpuset='0'/><iothreadpin iothread='1' cpuset='1'/></cputune></domain>";
        let p = parse_domain(xml, 8).unwrap();
        assert_eq!(p.tuning.vcpupin, vec![(0, "2".to_string())]);
        assert_eq!(p.tuning.iothreadpin, vec![(1, "0".to_string())]);
        assert_eq!(p.cut, 0);
    }

    #[test]
    fn text_from_the_xml_is_bounded() {
        let long = "x".repeat(MAX_TEXT * 2);
        let xml = format!("<domain type='{long}'><os><type machine='{long}'>hvm</type></os><cputune><emulatorpin cpuset='{long}'/></cputune></domain>");
        let p = parse_domain(&xml, 8).unwrap();
        assert_eq!(p.info.virt_type.unwrap().len(), MAX_TEXT);
        assert_eq!(p.info.machine.unwrap().len(), MAX_TEXT);
        assert_eq!(p.tuning.emulatorpin.unwrap().len(), MAX_TEXT);
    }

    #[test]
    fn tuning_reads_iotune_cputune_pinning_numa_and_mirrors() {
        let p = parse_domain(TUNED_XML, 2).unwrap();
        let t = &p.tuning;
        assert_eq!(
            t.iotune,
            vec![(
                "vda".to_string(),
                vec![("total_bytes_sec", 10485760), ("read_iops_sec", 400), ("total_bytes_sec_max", 20971520)]
            )],
            "zero limits are no limits"
        );
        assert_eq!(t.cputune, vec![("shares", 512), ("period", 100000), ("quota", 50000)]);
        assert_eq!(t.vcpupin, vec![(0, "2".to_string()), (1, "3-4,^4".to_string())]);
        assert_eq!(p.cut, 1, "the third vCPU pinning is past the bound");
        assert_eq!(t.emulatorpin.as_deref(), Some("0-1"));
        assert_eq!(t.iothreadpin, vec![(1, "6".to_string())]);
        assert_eq!(t.numa, Some(("preferred".to_string(), "0".to_string())));
        assert_eq!(t.mirrors, vec![("vdb".to_string(), "copy".to_string())]);
        let mut f = Vec::new();
        t.fields(&mut f);
        let get = |k: &str| f.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
        assert_eq!(get("iotune.0.name"), Some(TypedValue::String("vda".into())));
        assert_eq!(get("iotune.0.read_iops_sec"), Some(TypedValue::ULLong(400)));
        assert_eq!(get("cputune.quota"), Some(TypedValue::LLong(50000)));
        assert_eq!(get("cputune.vcpupin.count"), Some(TypedValue::UInt(2)));
        assert_eq!(get("cputune.vcpupin.1.cpuset"), Some(TypedValue::String("3-4,^4".into())));
        assert_eq!(get("numatune.mode"), Some(TypedValue::String("preferred".into())));
        assert_eq!(parse_domain(NOVA_XML, 8).unwrap().tuning, Tuning::default());
    }
}
