//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) and every
//! kept crash input (`fuzz/artifacts/<target>/`) through the harnesses in
//! `crate::fuzzing`, on stable: a regression of anything the fuzzers
//! found fails the ordinary test run, no nightly needed. `scripts/fuzz.sh`
//! runs the fuzzers themselves.

use std::path::{Path, PathBuf};

type Harness = fn(&[u8]);

const TARGETS: &[(&str, Harness)] = &[
    ("config", super::config),
    ("typed_params", super::typed_params),
    ("events", super::events),
    ("spool", super::spool),
    ("web_config", super::web_config),
    ("guest", super::guest),
    ("otel", super::otel),
    ("domain_xml", super::domain_xml),
    ("network_xml", super::network_xml),
    ("nodedev_xml", super::nodedev_xml),
    ("snapshot_xml", super::snapshot_xml),
];

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out: Vec<PathBuf> = entries.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_file()).collect();
    out.sort();
    out
}

fn replay(target: &str, harness: Harness) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let corpus = files(&root.join("corpus").join(target));
    assert!(!corpus.is_empty(), "fuzz/corpus/{target}/ is empty or missing: the corpus is committed (scripts/fuzz.sh)");
    let artifacts = files(&root.join("artifacts").join(target));
    let mut failed = Vec::new();
    for path in corpus.iter().chain(&artifacts) {
        let data = match std::fs::read(path) {
            Ok(data) => data,
            // A fuzzer running beside the tests merges the corpus.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("{}: {e}", path.display()),
        };
        if std::panic::catch_unwind(|| harness(&data)).is_err() {
            failed.push(path.display().to_string());
        }
    }
    assert!(failed.is_empty(), "{target}: {} input(s) fail:\n{}", failed.len(), failed.join("\n"));
}

#[test]
fn every_fuzz_target_has_a_replayed_corpus() {
    let targets: Vec<&str> = TARGETS.iter().map(|(t, _)| *t).collect();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/fuzz_targets");
    let mut on_disk: Vec<String> =
        files(&dir).iter().filter_map(|p| p.file_stem().and_then(|s| s.to_str()).map(str::to_string)).collect();
    on_disk.sort();
    let mut listed: Vec<String> = targets.iter().map(|t| t.to_string()).collect();
    listed.sort();
    assert_eq!(on_disk, listed, "src/fuzzing/corpus.rs must replay every target in fuzz/fuzz_targets/");
}

#[test]
fn config_corpus() {
    replay("config", super::config);
}

#[test]
fn typed_params_corpus() {
    replay("typed_params", super::typed_params);
}

#[test]
fn events_corpus() {
    replay("events", super::events);
}

#[test]
fn spool_corpus() {
    replay("spool", super::spool);
}

#[test]
fn web_config_corpus() {
    replay("web_config", super::web_config);
}

#[test]
fn otel_corpus() {
    replay("otel", super::otel);
}

#[test]
fn guest_corpus() {
    replay("guest", super::guest);
}

#[test]
fn domain_xml_corpus() {
    replay("domain_xml", super::domain_xml);
}

#[test]
fn network_xml_corpus() {
    replay("network_xml", super::network_xml);
}

#[test]
fn nodedev_xml_corpus() {
    replay("nodedev_xml", super::nodedev_xml);
}

#[test]
fn snapshot_xml_corpus() {
    replay("snapshot_xml", super::snapshot_xml);
}
