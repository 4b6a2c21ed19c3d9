//! Every configuration key, derived from the types: each section's
//! defaults, serialized, list its keys (see `SectionConfig`). The
//! environment overlay (`VIRTPULSE_<SECTION>__<KEY>`) accepts exactly these
//! keys, and tests hold config.example.toml to them.

use std::collections::{BTreeMap, BTreeSet};

use super::error::{ConfigError, Origins};

pub const ENV_PREFIX: &str = "VIRTPULSE_";

/// `VIRTPULSE_` variables that are not configuration keys.
pub(crate) const NON_KEY_VARS: &[&str] = &[
    // Fault injection for the watchdog test in debug builds (see
    // collectors::controller).
    "VIRTPULSE_TEST_WEDGE_COLLECTOR",
];

/// The keys of a configuration schema.
#[derive(Debug, Clone, Default)]
pub struct KeyTree {
    /// Dotted key -> its default (`null`: none).
    pub leaves: BTreeMap<String, serde_json::Value>,
    /// Tables whose keys are free (librdkafka properties, headers...).
    pub free: BTreeSet<String>,
}

impl KeyTree {
    /// Adds the keys of `value` under `prefix`: objects are sections, an
    /// empty object a free table, anything else a key.
    pub fn add(&mut self, prefix: &str, value: &serde_json::Value) {
        match value {
            serde_json::Value::Object(map) if map.is_empty() => {
                self.free.insert(prefix.to_string());
            }
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    self.add(&super::error::join(prefix, k), v);
                }
            }
            other => {
                self.leaves.insert(prefix.to_string(), other.clone());
            }
        }
    }

    /// Adds the keys of a section's defaults: a section without keys of
    /// its own adds none (it is not a free table).
    pub fn add_section(&mut self, prefix: &str, value: &serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    self.add(&super::error::join(prefix, k), v);
                }
            }
            other => self.add(prefix, other),
        }
    }

    pub fn is_key(&self, dotted: &str) -> bool {
        self.leaves.contains_key(dotted) || self.free.iter().any(|f| dotted.starts_with(&format!("{f}.")))
    }

    /// The sections that hold keys (`collectors.jobs`), and the free tables.
    pub fn sections(&self) -> BTreeSet<String> {
        self.leaves.keys().filter_map(|k| k.rsplit_once('.').map(|(s, _)| s.to_string())).collect()
    }
}

/// The environment variable that sets a key.
pub fn env_var_of(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.split('.').map(str::to_ascii_uppercase).collect::<Vec<_>>().join("__"))
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The candidate closest to `wanted`, when one is reasonably close.
pub(crate) fn nearest<'a>(wanted: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let squash = |v: &str| v.replace('_', "").to_ascii_lowercase();
    candidates
        .map(|c| {
            // Underscores miscounted are the commonest slip: weigh them less.
            let d = if squash(c) == squash(wanted) { 0 } else { edit_distance(c, wanted) };
            (d, c)
        })
        .filter(|(d, c)| *d <= c.len() / 3)
        .min()
        .map(|(_, c)| c)
}

/// The valid variable closest to `var`, when one is reasonably close.
pub(crate) fn nearest_var(tree: &KeyTree, var: &str) -> Option<String> {
    let vars: Vec<String> = tree.leaves.keys().map(|k| env_var_of(k)).collect();
    nearest(&var.to_ascii_uppercase(), vars.iter().map(String::as_str)).map(str::to_string)
}

fn unknown_var(tree: &KeyTree, var: &str, why: &str) -> ConfigError {
    let hint = match nearest_var(tree, var) {
        Some(v) => format!("; did you mean {v}?"),
        None => String::new(),
    };
    ConfigError {
        source: format!("environment variable {var}"),
        key: String::new(),
        message: format!(
            "{why}: VIRTPULSE_ variables are VIRTPULSE_<SECTION>__<KEY>, sections and keys joined by two underscores (e.g. VIRTPULSE_LIBVIRT__URI){hint} Unset it, or see config.example.toml for the keys"
        ),
    }
}

/// Parses an environment value as a TOML value when it is one (numbers,
/// booleans, arrays), else takes it as a string ("5s", "qemu:///system").
fn env_value(raw: &str) -> toml::Value {
    let doc = format!("v = {raw}");
    match doc.parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").unwrap_or_else(|| toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

/// Lays the `VIRTPULSE_*` variables over the file's table.
pub(crate) fn apply_env(
    tree: &KeyTree,
    root: &mut toml::Table,
    vars: &[(String, String)],
    origins: &mut Origins,
) -> Result<(), ConfigError> {
    for (var, raw) in vars {
        let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        if NON_KEY_VARS.contains(&var.as_str()) {
            continue;
        }
        if !rest.contains("__") {
            return Err(unknown_var(tree, var, "maps to no configuration key"));
        }
        let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
        if path.iter().any(|p| p.is_empty()) {
            return Err(ConfigError {
                source: format!("environment variable {var}"),
                key: String::new(),
                message: "empty key segment (use VIRTPULSE_<SECTION>__<KEY>, e.g. VIRTPULSE_LIBVIRT__URI)".into(),
            });
        }
        let dotted = path.join(".");
        if !tree.is_key(&dotted) {
            return Err(unknown_var(tree, var, &format!("maps to `{dotted}`, which is not a configuration key")));
        }
        let mut table = &mut *root;
        for seg in &path[..path.len() - 1] {
            let entry = table.entry(seg.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
            table = match entry {
                toml::Value::Table(t) => t,
                _ => {
                    return Err(ConfigError {
                        source: format!("environment variable {var}"),
                        key: dotted,
                        message: format!("`{seg}` is a value, not a section"),
                    })
                }
            };
        }
        table.insert(path[path.len() - 1].clone(), env_value(raw));
        origins.env.insert(dotted, var.clone());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_are_sections_and_empty_ones_free_tables() {
        let mut t = KeyTree::default();
        t.add("", &serde_json::json!({"a": {"b": 1, "c": null, "props": {}}, "d": [1]}));
        assert_eq!(t.leaves.keys().collect::<Vec<_>>(), vec!["a.b", "a.c", "d"]);
        assert!(t.is_key("a.props.anything") && t.is_key("a.c") && !t.is_key("a.x"));
        assert_eq!(env_var_of("collectors.domain_stats.groups"), "VIRTPULSE_COLLECTORS__DOMAIN_STATS__GROUPS");
        assert_eq!(nearest("intervall", ["interval", "timeout"].into_iter()), Some("interval"));
    }
}
