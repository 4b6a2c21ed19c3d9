//! The generated stats-key references (docs/reference/keys-<version>.md,
//! written by scripts/reference-keys.sh): the rows of their "Stats keys"
//! section, for tests that hold them to a daemon and to the catalog.

use std::collections::BTreeMap;

use super::project_root;

/// One row: the key pattern (`block.*.rd.bytes`, as
/// `virtpulse::record::mapping::pattern_of` writes it) and its metric cell.
pub fn stats_key_rows(file: &str) -> BTreeMap<String, String> {
    let path = project_root().join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut rows = BTreeMap::new();
    let mut in_section = false;
    for line in text.lines() {
        if line.starts_with("## ") {
            in_section = line == "## Stats keys";
            continue;
        }
        if !in_section {
            continue;
        }
        let cells: Vec<&str> = line.split(" | ").collect();
        let Some(key) = cells.first().and_then(|c| c.strip_prefix("| `")).and_then(|c| c.strip_suffix('`')) else {
            continue;
        };
        let metric = cells.get(3).unwrap_or_else(|| panic!("{file}: a row without a metric cell: {line}"));
        rows.insert(key.replace("<n>", "*"), metric.to_string());
    }
    assert!(!rows.is_empty(), "{file} has no rows under \"## Stats keys\"");
    rows
}
