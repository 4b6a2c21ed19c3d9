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
    // The Prometheus text format (the sink and the admin endpoint write it).
    ("exposition", &["value"]),
    // The FFI: knows nothing but the vocabulary.
    ("libvirt", &["util", "value"]),
    // The record model and the catalog's vocabulary (kinds, tables,
    // switches), and the agent's own telemetry, which components report
    // into through a trait.
    ("record", &["util", "value"]),
    ("selfmon", &["exposition", "util", "value"]),
    // TLS, basic auth and the health endpoints of the HTTP listeners.
    ("web", &["selfmon"]),
    // What to export, over the catalog.
    ("selection", &["record", "value"]),
    // Configuration: the loader and the agent's own sections; components
    // bring theirs through a trait.
    ("config", &["filter", "record", "selection", "util", "value"]),
    ("router", &["record", "selfmon", "util"]),
    // Events: libvirt's callbacks into records, and typed events for the
    // collectors' listeners.
    ("events", &["filter", "libvirt", "record", "router", "selfmon", "util", "value"]),
    (
        "collectors",
        &["config", "events", "filter", "libvirt", "record", "router", "selection", "selfmon", "util", "value"],
    ),
    // Sinks see records, never libvirt, collectors or events.
    ("sinks", &["config", "exposition", "record", "router", "selection", "selfmon", "util", "value", "web"]),
    ("health", &["libvirt", "selfmon", "util"]),
    ("admin", &["config", "exposition", "selfmon", "web"]),
    // The one list of collectors and sinks.
    // (`web` for the self-metrics its listeners report.)
    ("registry", &["collectors", "config", "events", "record", "selfmon", "sinks", "web"]),
    ("reference", &["record", "registry", "sinks"]),
    // The composition root and the fuzzing harnesses may use everything.
    ("app", &["*"]),
    ("fuzzing", &["*"]),
];

/// Every production source file: test modules kept in files of their own
/// are named `tests.rs` (declared `#[cfg(test)] mod tests;`) and left out.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") && !path.ends_with("tests.rs") {
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

/// The collectors under src/collectors/ that have a folder of their own.
fn collector_folders(src: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(src.join("collectors"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    out.sort();
    out
}

/// Whether `code` names collector `c` (`collectors::c`, or `super::c`
/// from inside another collector's folder).
fn names_collector(code: &str, c: &str, inside_collectors: bool) -> bool {
    let hit = |pat: &str| {
        code.match_indices(pat).any(|(i, _)| {
            let after = code[i + pat.len()..].chars().next();
            !after.is_some_and(is_ident)
        })
    };
    hit(&format!("collectors::{c}")) || (inside_collectors && hit(&format!("super::super::{c}")))
}

#[test]
fn collectors_stay_in_their_folders_and_only_the_registry_names_them() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let collectors = collector_folders(&src);
    assert!(collectors.len() >= 5, "{collectors:?}");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut problems = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap();
        let code = production_code(&std::fs::read_to_string(file).unwrap());
        let own = rel
            .strip_prefix("collectors")
            .ok()
            .and_then(|r| r.components().next())
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .filter(|c| collectors.contains(c));
        for c in &collectors {
            if own.as_deref() == Some(c.as_str()) || !names_collector(&code, c, own.is_some()) {
                continue;
            }
            let allowed = rel == Path::new("registry.rs") || rel.starts_with("fuzzing");
            if !allowed {
                problems.push(format!(
                    "src/{} names the {c} collector: collectors never import each other, and only src/registry.rs names a collector",
                    rel.display()
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn unsafe_code_lives_in_src_libvirt_only() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut problems = Vec::new();
    for file in &files {
        if file.starts_with(src.join("libvirt")) {
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap();
        // Comments stripped (test code too: there is no reason for unsafe in tests either).
        let code: String = text.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n");
        let found = code.match_indices("unsafe").any(|(i, _)| {
            let before = code[..i].chars().next_back();
            let after = code[i + "unsafe".len()..].chars().next();
            !before.is_some_and(is_ident) && !after.is_some_and(is_ident) && before != Some('"')
        });
        if found {
            problems.push(format!(
                "src/{} uses `unsafe`: only src/libvirt may",
                file.strip_prefix(&src).unwrap().display()
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
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
