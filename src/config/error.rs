//! Configuration errors: which key, from where (the file or the
//! environment variable that set it), and what is wrong.

use std::collections::BTreeMap;
use std::fmt;

/// A configuration error: which key, from where, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub source: String,
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "configuration error in {}: {}", self.source, self.message)
        } else {
            write!(f, "configuration error in {}: key `{}`: {}", self.source, self.key, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Where each value came from, for error messages.
pub(crate) struct Origins {
    pub file: String,
    /// Dotted key -> the variable that set it.
    pub env: BTreeMap<String, String>,
}

impl Origins {
    pub(crate) fn of(&self, key: &str) -> String {
        // An env var overriding `a.b` also explains errors reported at `a.b.c`.
        self.env
            .iter()
            .filter(|(k, _)| {
                key == k.as_str() || key.starts_with(&format!("{k}.")) || k.starts_with(&format!("{key}."))
            })
            .map(|(_, var)| format!("environment variable {var}"))
            .next()
            .unwrap_or_else(|| self.file.clone())
    }

    pub(crate) fn err(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError { source: self.of(key), key: key.to_string(), message: message.into() }
    }
}

/// `a.b` + `c` = `a.b.c`; an empty part adds nothing.
pub(crate) fn join(prefix: &str, key: &str) -> String {
    match (prefix.is_empty(), key.is_empty()) {
        (true, _) => key.to_string(),
        (_, true) => prefix.to_string(),
        _ => format!("{prefix}.{key}"),
    }
}
