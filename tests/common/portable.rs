//! The portable binary (scripts/build-release.sh) as the tests build it:
//! the release target (glibc 2.28 symbol stubs through zig) and features
//! (vendored OpenSSL) in the cheaper `portable-test` profile, incremental
//! and cached in target/x86_64-unknown-linux-gnu/portable-test/. Also the
//! .deb around it, and readers for what a binary needs from its host.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use super::project_root;

/// The cargo profile the tests build the portable binary in.
pub const PROFILE: &str = "portable-test";

/// Builds the portable binary (once per test binary; cargo makes a rebuild
/// with nothing changed a matter of a second) and returns its path.
pub fn binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let out = Command::new(project_root().join("scripts/build-release.sh"))
            .env("PROFILE", PROFILE)
            .output()
            .expect("run scripts/build-release.sh");
        assert!(
            out.status.success(),
            "scripts/build-release.sh (PROFILE={PROFILE}) failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or("").trim());
        assert!(path.is_file(), "scripts/build-release.sh printed no binary path: {path:?}");
        path
    })
}

/// Builds the .deb around the portable binary into `out`; its path.
pub fn deb(out: &Path) -> PathBuf {
    let built = Command::new(project_root().join("scripts/build-deb.sh"))
        .env("PROFILE", PROFILE)
        .env("OUT", out)
        .output()
        .expect("run scripts/build-deb.sh");
    assert!(built.status.success(), "scripts/build-deb.sh failed:\n{}", String::from_utf8_lossy(&built.stderr));
    let deb = PathBuf::from(String::from_utf8_lossy(&built.stdout).trim());
    assert!(deb.extension().is_some_and(|e| e == "deb") && deb.is_file(), "{}", deb.display());
    deb
}

/// A dotted version ("2.28", "5.7.0") as numbers, for ordering.
pub fn version(v: &str) -> Vec<u32> {
    v.split('.').map(|p| p.parse().unwrap_or_else(|_| panic!("not a version: {v}"))).collect()
}

/// The symbol versions a binary requires, as (library, version name) pairs:
/// the "Version needs" section of `readelf -V`, which the dynamic loader
/// checks at start ("version `GLIBC_2.34' not found").
pub fn needed_versions(bin: &Path) -> Vec<(String, String)> {
    let out = Command::new("readelf").arg("-V").arg(bin).output().expect("run readelf (binutils)");
    assert!(out.status.success(), "readelf -V {}: {}", bin.display(), String::from_utf8_lossy(&out.stderr));
    parse_version_needs(&String::from_utf8_lossy(&out.stdout))
}

pub fn parse_version_needs(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut in_needs = false;
    let mut file = String::new();
    for line in text.lines() {
        if line.starts_with("Version needs section") {
            in_needs = true;
            continue;
        }
        if !line.starts_with(' ') && !line.trim().is_empty() {
            // Another section's header.
            in_needs = false;
        }
        if !in_needs {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        if let Some(i) = words.iter().position(|w| *w == "File:") {
            file = words.get(i + 1).unwrap_or(&"").to_string();
        } else if let Some(i) = words.iter().position(|w| *w == "Name:") {
            out.push((file.clone(), words.get(i + 1).unwrap_or(&"").to_string()));
        }
    }
    out
}

/// The highest version of a family ("GLIBC", "LIBVIRT") among `needs`.
pub fn max_of(needs: &[(String, String)], family: &str) -> Option<String> {
    let prefix = format!("{family}_");
    needs
        .iter()
        .filter_map(|(_, n)| n.strip_prefix(&prefix))
        .filter(|v| v.chars().next().is_some_and(|c| c.is_ascii_digit()))
        .max_by_key(|v| version(v))
        .map(str::to_string)
}

/// The shared libraries a binary names in its dynamic section (NEEDED).
pub fn needed_libraries(bin: &Path) -> Vec<String> {
    let out = Command::new("readelf").arg("-d").arg(bin).output().expect("run readelf (binutils)");
    assert!(out.status.success(), "readelf -d {}: {}", bin.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| Some(l.split_once('[')?.1.split_once(']')?.0.to_string()))
        .collect()
}
