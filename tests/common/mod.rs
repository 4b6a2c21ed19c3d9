//! Test harness shared by the end-to-end tests: a real libvirtd, tiny real
//! guests, the agent binary, and readers for /metrics and virsh.
#![allow(dead_code)]

pub mod agent;
pub mod compare;
pub mod daemon;
pub mod events;
pub mod exposition;
pub mod guest;
pub mod ioerror;
pub mod kafka;
pub mod linux;
pub mod otlp;
pub mod portable;
pub mod pykafka;
pub mod roots;
pub mod schema;
pub mod slowdisk;
pub mod storm;
pub mod tls;
pub mod virsh;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub fn project_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Starts this test binary's private libvirtd (once; see `daemon`) and
/// returns its URI.
pub fn ensure_libvirtd() -> &'static str {
    &daemon::shared().uri
}

/// Tests that load libvirtd heavily (dozens of guests at once) take this
/// exclusively; tests with tight deadlines take it shared, so they never
/// run beside such a burst in the same test binary.
pub fn heavy() -> std::sync::RwLockWriteGuard<'static, ()> {
    LOAD.write().unwrap_or_else(|e| e.into_inner())
}

pub fn light() -> std::sync::RwLockReadGuard<'static, ()> {
    LOAD.read().unwrap_or_else(|e| e.into_inner())
}

static LOAD: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// Polls `f` until it returns Some, or panics after `timeout` with `what`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A directory libvirt-qemu can traverse (disk images live there).
pub fn scratch_dir(tag: &str) -> tempfile::TempDir {
    let base = PathBuf::from("/var/tmp/virtpulse-tests");
    std::fs::create_dir_all(&base).expect("create /var/tmp/virtpulse-tests");
    set_mode(&base, 0o755);
    let d = tempfile::Builder::new().prefix(&format!("{tag}-")).tempdir_in(&base).expect("tempdir");
    set_mode(d.path(), 0o755);
    d
}

pub fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode));
}
