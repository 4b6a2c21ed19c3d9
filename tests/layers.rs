//! The layering of src/, held against what the code imports.
//!
//! Every top-level module of the crate is declared below with the modules it
//! may use. The test reads every `crate::` path outside `#[cfg(test)]`
//! code and fails on one that is not allowed, on a module nobody declared,
//! and on a declaration that would make a cycle. libvirt's C bindings
//! (`virt_sys`) may only be named under src/libvirt.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each module and what it may import, lowest layer first. Data flows
/// libvirt -> collectors / events -> record -> router -> sinks; imports
/// point the other way only as far as the data model.
const LAYERS: &[(&str, &[&str])] = &[
    // Vocabulary and small utilities: nothing of the agent's.
    ("util", &[]),
    ("value", &[]),
    ("filter", &[]),
    // The FFI: knows nothing but the vocabulary.
    ("libvirt", &["util", "value"]),
    // The record model, and the agent's own telemetry, which components
    // report into through a trait.
    ("record", &["util", "value"]),
    ("selfmon", &["util", "value"]),
    ("stat_keys", &["record", "value"]),
    // What to export (libvirt stats groups are part of its vocabulary).
    ("selection", &["libvirt", "record", "stat_keys", "value"]),
    // Configuration: pure data and its validation.
    ("config", &["filter", "libvirt", "selection", "stat_keys", "util", "value"]),
    ("router", &["record", "selfmon", "util"]),
    ("collectors", &["filter", "libvirt", "record", "router", "selection", "selfmon", "stat_keys", "util", "value"]),
    // Events tell collectors what happened through the collectors' trait.
    ("events", &["collectors", "filter", "libvirt", "record", "router", "selfmon", "stat_keys", "util", "value"]),
    // Sinks see records, never libvirt, collectors or events.
    ("sinks", &["config", "record", "router", "selection", "selfmon", "stat_keys", "util", "value"]),
    ("health", &["libvirt", "selfmon", "util"]),
    ("reference", &["collectors", "events", "record", "selection", "selfmon", "sinks", "stat_keys", "value"]),
    // The composition root and the fuzzing harnesses may use everything.
    ("app", &["*"]),
    ("fuzzing", &["*"]),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The text without `#[cfg(test)]` items (tests may reach anywhere) and
/// without comments.
fn production_code(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line.trim() == "#[cfg(test)]" {
            // Skip the next item: up to its closing brace at the same indent,
            // or a one-line item.
            let indent = line.len() - line.trim_start().len();
            if let Some(item) = lines.next() {
                if item.trim_end().ends_with('{') {
                    for l in lines.by_ref() {
                        if l.len() - l.trim_start().len() == indent && l.trim() == "}" {
                            break;
                        }
                    }
                }
            }
            continue;
        }
        let code = match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        };
        out.push_str(code);
        out.push('\n');
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Top-level modules named after `crate::`, in paths and in grouped uses
/// (`use crate::{a::b, c};`).
fn imported_modules(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let before = rest[..i].chars().next_back();
        rest = &rest[i + "crate::".len()..];
        if before.is_some_and(is_ident) {
            continue; // e.g. `virtpulse_crate::`
        }
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            // Top-level names inside the braces: each one starts an item.
            let mut depth = 0;
            let mut start = true;
            for (j, c) in group[..end].char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start = true,
                    c if start && depth == 0 && is_ident(c) => {
                        let name: String = group[j..].chars().take_while(|c| is_ident(*c)).collect();
                        found.insert(name);
                        start = false;
                    }
                    _ => {}
                }
            }
        } else {
            let name: String = rest.chars().take_while(|c| is_ident(*c)).collect();
            if !name.is_empty() {
                found.insert(name);
            }
        }
    }
    found
}

fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel.components().next().unwrap().as_os_str().to_string_lossy().into_owned();
    first.trim_end_matches(".rs").to_string()
}

#[test]
fn imports_follow_the_declared_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let declared: BTreeMap<&str, &[&str]> = LAYERS.iter().copied().collect();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut problems = Vec::new();
    let mut seen_modules = BTreeSet::new();
    for file in &files {
        let module = module_of(&src, file);
        if module == "lib" || module == "main" {
            continue;
        }
        seen_modules.insert(module.clone());
        let Some(allowed) = declared.get(module.as_str()) else {
            problems.push(format!("src/{module} is not declared in tests/layers.rs LAYERS: give it a place"));
            continue;
        };
        let code = production_code(&std::fs::read_to_string(file).unwrap());
        for used in imported_modules(&code) {
            if used == module || allowed.contains(&"*") || allowed.contains(&used.as_str()) {
                continue;
            }
            problems.push(format!(
                "{} uses crate::{used}, which {module} may not (allowed: {})",
                file.strip_prefix(src.parent().unwrap()).unwrap().display(),
                allowed.join(", ")
            ));
        }
        let in_ffi = file.starts_with(src.join("libvirt"));
        if !in_ffi && (code.contains("virt_sys::") || code.contains("use virt_sys")) {
            problems.push(format!(
                "{} names virt_sys: libvirt's C API is src/libvirt's alone",
                file.strip_prefix(src.parent().unwrap()).unwrap().display()
            ));
        }
    }
    for (module, _) in LAYERS {
        if !seen_modules.contains(*module) {
            problems.push(format!("LAYERS declares {module}, which src/ does not have"));
        }
    }
    assert!(problems.is_empty(), "layering broken:\n  {}", problems.join("\n  "));
}

#[test]
fn the_declared_layers_have_no_cycle_and_point_downwards() {
    // Each module may only use modules declared before it, which also rules
    // out cycles.
    let mut earlier: BTreeSet<&str> = BTreeSet::new();
    for (module, allowed) in LAYERS {
        for dep in *allowed {
            assert!(*dep == "*" || earlier.contains(dep), "{module} may use {dep}, which is not declared below it");
        }
        earlier.insert(module);
    }
}

#[test]
fn the_import_reader_sees_paths_groups_and_skips_tests() {
    let code = production_code(
        "use crate::record::{Batch, Record};\nuse crate::{router::Router, util::{clock, heap}};\n\
         fn f() { crate::libvirt::x(); } // crate::sinks in a comment\n\
         #[cfg(test)]\nmod tests {\n    use crate::app;\n}\n",
    );
    let found: Vec<String> = imported_modules(&code).into_iter().collect();
    assert_eq!(found, ["libvirt", "record", "router", "util"]);
}
