//! Readers of libvirt's snapshot and checkpoint XML
//! (`virDomainSnapshotGetXMLDesc`, `virDomainCheckpointGetXMLDesc`): pure
//! functions over the text, so they are unit-tested on real samples and
//! fuzzed (`fuzz/fuzz_targets/snapshot_xml.rs`). Only the root's own
//! children are read: a snapshot embeds the domain's whole definition,
//! whose `<name>`, `<description>` and `<disk>` elements are the domain's.

use roxmltree::{Document, Node};

/// What a snapshot's XML says, as libvirt wrote it (strings unbounded here;
/// the collector bounds them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SnapshotXml {
    pub name: String,
    pub description: Option<String>,
    /// The domain's state when the snapshot was taken (`running`,
    /// `shutoff`, `paused`, ...) or `disk-snapshot` for a disk-only one.
    pub state: String,
    /// `<creationTime>`: seconds since the Unix epoch.
    pub created: Option<i64>,
    pub parent: Option<String>,
    /// `<memory snapshot=...>`: `internal`, `external` or `no`.
    pub memory: Option<String>,
    /// Disks whose snapshot is `internal` / `external` (`no` and `manual`
    /// ones are not counted).
    pub internal_disks: u32,
    pub external_disks: u32,
    /// See `snapshot_kind`.
    pub kind: &'static str,
}

/// What kind of snapshot it is, as an operator sorts them: `disk-only`
/// (the disks alone, no guest memory: `virsh snapshot-create-as
/// --disk-only`), `external` (memory or a disk in a file of its own beside
/// the image) or `internal` (everything inside the qcow2 images).
/// Decided when the XML is read (before the collector bounds `state`).
pub(crate) fn snapshot_kind(s: &SnapshotXml) -> &'static str {
    s.kind
}

fn kind_of(state: &str, memory: Option<&str>, external_disks: u32) -> &'static str {
    if state == "disk-snapshot" {
        "disk-only"
    } else if memory == Some("external") || external_disks > 0 {
        "external"
    } else {
        "internal"
    }
}

/// What a checkpoint's XML says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CheckpointXml {
    pub name: String,
    pub description: Option<String>,
    pub created: Option<i64>,
    pub parent: Option<String>,
    /// Disks with a bitmap (`checkpoint='bitmap'`).
    pub disks: u32,
}

/// The first direct child element of `node` named `name`.
fn child<'a, 'i>(node: Node<'a, 'i>, name: &str) -> Option<Node<'a, 'i>> {
    node.children().find(|c| c.is_element() && c.tag_name().name() == name)
}

/// The text of a direct child element (empty elements read as "").
fn child_text(node: Node, name: &str) -> Option<String> {
    child(node, name).map(|c| c.text().unwrap_or("").to_string())
}

/// `<parent><name>x</name></parent>`.
fn parent_name(root: Node) -> Option<String> {
    child(root, "parent").and_then(|p| child_text(p, "name")).filter(|n| !n.is_empty())
}

/// `<creationTime>`: libvirt writes whole seconds; a value that is not a
/// number is treated as absent.
fn creation_time(root: Node) -> Option<i64> {
    child_text(root, "creationTime").and_then(|t| t.trim().parse::<i64>().ok())
}

fn root_of<'a>(doc: &'a Document, expected: &str) -> Result<Node<'a, 'a>, String> {
    let root = doc.root_element();
    if root.tag_name().name() != expected {
        return Err(format!("the root element is <{}>, not <{expected}>", root.tag_name().name()));
    }
    Ok(root)
}

/// Reads a `<domainsnapshot>`. Errors name what is wrong.
pub(crate) fn parse_snapshot(xml: &str) -> Result<SnapshotXml, String> {
    let doc = Document::parse(xml).map_err(|e| format!("snapshot XML does not parse: {e}"))?;
    let root = root_of(&doc, "domainsnapshot")?;
    let name = child_text(root, "name").filter(|n| !n.is_empty()).ok_or("snapshot XML without a <name>")?;
    let (mut internal_disks, mut external_disks) = (0u32, 0u32);
    if let Some(disks) = child(root, "disks") {
        for d in disks.children().filter(|c| c.is_element() && c.tag_name().name() == "disk") {
            match d.attribute("snapshot") {
                Some("internal") => internal_disks = internal_disks.saturating_add(1),
                Some("external") => external_disks = external_disks.saturating_add(1),
                _ => {}
            }
        }
    }
    let state = child_text(root, "state").unwrap_or_default();
    let memory = child(root, "memory").and_then(|m| m.attribute("snapshot")).map(str::to_string);
    Ok(SnapshotXml {
        name,
        description: child_text(root, "description").filter(|d| !d.is_empty()),
        kind: kind_of(&state, memory.as_deref(), external_disks),
        state,
        created: creation_time(root),
        parent: parent_name(root),
        memory,
        internal_disks,
        external_disks,
    })
}

/// Reads a `<domaincheckpoint>`.
pub(crate) fn parse_checkpoint(xml: &str) -> Result<CheckpointXml, String> {
    let doc = Document::parse(xml).map_err(|e| format!("checkpoint XML does not parse: {e}"))?;
    let root = root_of(&doc, "domaincheckpoint")?;
    let name = child_text(root, "name").filter(|n| !n.is_empty()).ok_or("checkpoint XML without a <name>")?;
    let disks = child(root, "disks")
        .map(|d| {
            d.children()
                .filter(|c| {
                    c.is_element() && c.tag_name().name() == "disk" && c.attribute("checkpoint") == Some("bitmap")
                })
                .count()
        })
        .unwrap_or(0);
    Ok(CheckpointXml {
        name,
        description: child_text(root, "description").filter(|d| !d.is_empty()),
        created: creation_time(root),
        parent: parent_name(root),
        disks: u32::try_from(disks).unwrap_or(u32::MAX),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Real XML from libvirt 11.3 / QEMU 10.0 (`virsh snapshot-dumpxml`,
    // `virsh checkpoint-dumpxml --no-domain`), kept here: the fuzz corpus's
    // copies go whenever cmin finds them redundant.
    pub(crate) const INTERNAL: &str = include_str!("testdata/internal-running.xml");
    pub(crate) const DISK_ONLY: &str = include_str!("testdata/disk-only.xml");
    pub(crate) const CHECKPOINT: &str = include_str!("testdata/checkpoint.xml");

    #[test]
    fn an_internal_snapshot_of_a_running_guest() {
        let s = parse_snapshot(INTERNAL).unwrap();
        assert_eq!(s.name, "s1");
        assert_eq!(s.description.as_deref(), Some("first one"));
        assert_eq!(s.state, "running");
        assert_eq!(s.created, Some(1796360637));
        assert_eq!(s.parent, None);
        assert_eq!(s.memory.as_deref(), Some("internal"));
        assert_eq!((s.internal_disks, s.external_disks), (1, 0));
        assert_eq!(snapshot_kind(&s), "internal");
    }

    #[test]
    fn a_disk_only_snapshot_with_a_parent() {
        let s = parse_snapshot(DISK_ONLY).unwrap();
        assert_eq!(s.name, "d1");
        assert_eq!(s.description, None);
        assert_eq!(s.state, "disk-snapshot");
        assert_eq!(s.parent.as_deref(), Some("s1"));
        assert_eq!(s.created, Some(1796360643));
        assert_eq!((s.internal_disks, s.external_disks), (0, 1));
        assert_eq!(snapshot_kind(&s), "disk-only");
    }

    #[test]
    fn the_embedded_domain_is_not_read_as_the_snapshot() {
        // The domain's own <name> and <description> come after the
        // snapshot's in libvirt's output, but only the root's children count.
        let xml = "<domainsnapshot><domain><name>vm</name><description>d</description></domain>\
                   <name>snap</name><state>shutoff</state></domainsnapshot>";
        let s = parse_snapshot(xml).unwrap();
        assert_eq!((s.name.as_str(), s.description.as_deref()), ("snap", None));
        assert_eq!(s.created, None);
    }

    #[test]
    fn a_full_external_snapshot() {
        let xml = "<domainsnapshot><name>e</name><state>running</state><creationTime>5</creationTime>\
                   <memory snapshot='external' file='/m'/><disks><disk name='vda' snapshot='external'/>\
                   <disk name='vdb' snapshot='no'/></disks></domainsnapshot>";
        let s = parse_snapshot(xml).unwrap();
        assert_eq!(snapshot_kind(&s), "external");
        assert_eq!((s.internal_disks, s.external_disks), (0, 1));
    }

    #[test]
    fn a_checkpoint() {
        let c = parse_checkpoint(CHECKPOINT).unwrap();
        assert_eq!(c.name, "c2");
        assert_eq!(c.parent.as_deref(), Some("c1"));
        assert_eq!(c.created, Some(1796360651));
        assert_eq!(c.disks, 1);
        assert_eq!(c.description, None);
    }

    #[test]
    fn broken_xml_is_an_error_that_says_why() {
        assert!(parse_snapshot("<domainsnapshot>").unwrap_err().contains("does not parse"));
        assert!(parse_snapshot("<domaincheckpoint><name>x</name></domaincheckpoint>").unwrap_err().contains("root"));
        assert!(parse_snapshot("<domainsnapshot><name></name></domainsnapshot>").unwrap_err().contains("<name>"));
        assert!(parse_checkpoint("<domaincheckpoint/>").unwrap_err().contains("<name>"));
        let odd = "<domainsnapshot><name>x</name><creationTime>soon</creationTime></domainsnapshot>";
        assert_eq!(parse_snapshot(odd).unwrap().created, None);
    }
}
