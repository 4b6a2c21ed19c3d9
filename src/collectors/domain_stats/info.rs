//! Descriptive domain data from the domain XML (OS type, vCPUs, memory,
//! OpenStack Nova metadata), cached per domain and re-read on a slow timer,
//! never on every cycle.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::record::{DomainInfo, OpenStackInfo};

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

fn text(node: Option<roxmltree::Node>) -> Option<String> {
    node.and_then(|n| n.text()).map(|t| t.trim().to_string()).filter(|t| !t.is_empty())
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
        flavor: child(inst, "flavor").and_then(|f| f.attribute("name")).map(String::from),
        project_name: text(project),
        project_uuid: project.and_then(|p| p.attribute("uuid")).map(String::from),
        user_name: text(user),
        user_uuid: user.and_then(|u| u.attribute("uuid")).map(String::from),
    })
}

/// Extracts what the info metric and records carry. Missing elements stay
/// `None`; malformed XML is an error (the caller keeps the old entry).
pub(crate) fn parse_domain_xml(xml: &str) -> Result<DomainInfo, String> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| format!("cannot parse domain XML: {e}"))?;
    let root = doc.root_element();
    if root.tag_name().name() != "domain" {
        return Err(format!("domain XML has root <{}>, expected <domain>", root.tag_name().name()));
    }
    let os_type = child(root, "os").and_then(|os| child(os, "type"));
    let vcpu = child(root, "vcpu");
    Ok(DomainInfo {
        virt_type: root.attribute("type").map(String::from),
        os_type: text(os_type),
        arch: os_type.and_then(|t| t.attribute("arch")).map(String::from),
        machine: os_type.and_then(|t| t.attribute("machine")).map(String::from),
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

    pub fn put(&mut self, uuid: String, info: DomainInfo, now: Instant) {
        if let Ok(mut s) = self.invalidated.lock() {
            s.remove(&uuid);
        }
        self.entries.insert(uuid, Entry { info: Arc::new(info), fetched: now });
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
        c.put("a".into(), DomainInfo::default(), t0);
        assert!(c.due(["a"].into_iter(), t0).is_empty());
        assert_eq!(c.due(["a"].into_iter(), t0 + Duration::from_secs(61)), vec!["a"]);
        c.invalidation_handle().lock().unwrap().insert("a".into());
        assert_eq!(c.due(["a"].into_iter(), t0), vec!["a"]);
        c.put("a".into(), DomainInfo::default(), t0);
        assert!(c.due(["a"].into_iter(), t0).is_empty());
        c.retain(&HashSet::new());
        assert!(c.is_empty());
    }
}
