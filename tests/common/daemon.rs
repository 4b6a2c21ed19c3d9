//! Private libvirt daemons for the tests (scripts/private-libvirtd.sh): each
//! test binary starts its own libvirtd, in its own mount namespace with its
//! own runtime, state, cache, config and log directories, and every test
//! talks to it through its socket URI. The host's daemon is never
//! connected to, configured, restarted or killed, and test binaries can run
//! side by side. Older daemons (Debian 12's libvirt 9.0, Debian 11's 7.0)
//! run the same way from the roots scripts/build-test-roots.sh caches.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use super::project_root;

/// Where the daemons' directories live (short: socket paths are limited to
/// 108 bytes).
const BASE: &str = "/var/tmp/vpd";

/// Roots built by scripts/build-test-roots.sh.
pub const ROOTS: &str = "/var/cache/virtpulse/roots";

pub struct PrivateDaemon {
    pub dir: PathBuf,
    pub root: Option<PathBuf>,
    pub uri: String,
    /// In a network namespace of its own (`VIRTPULSE_PRIVATE_NETNS=1`):
    /// the bridges, dnsmasq and guest traffic of its virtual networks never
    /// reach the host's network. Clients still use its unix sockets.
    pub own_network: bool,
}

impl PrivateDaemon {
    /// Starts a daemon in `dir` (from `root` when given). Fails with the
    /// reason when this machine cannot host one (no root, no namespaces):
    /// the tests never fall back to the host's daemon.
    pub fn start(dir: &Path, root: Option<&Path>) -> Result<PrivateDaemon, String> {
        Self::start_with(dir, root, false)
    }

    /// As `start`; with `own_network` the daemon gets a network namespace
    /// of its own (only its loopback up), for tests that start virtual
    /// networks.
    pub fn start_with(dir: &Path, root: Option<&Path>, own_network: bool) -> Result<PrivateDaemon, String> {
        seed_capabilities(dir, root);
        let mut cmd = Command::new(project_root().join("scripts/private-libvirtd.sh"));
        cmd.arg("start").arg(dir);
        if own_network {
            cmd.env("VIRTPULSE_PRIVATE_NETNS", "1");
        }
        if let Some(r) = root {
            cmd.arg(r);
        }
        let out = cmd.output().map_err(|e| format!("cannot run scripts/private-libvirtd.sh: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "cannot start a private libvirtd in {} (the end-to-end tests need root, mount namespaces and libvirt's \
                 packages; scripts/install-test-deps.sh installs them):\n{}",
                dir.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let uri = String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or("").trim().to_string();
        if !uri.starts_with("qemu:///system?socket=") {
            return Err(format!("scripts/private-libvirtd.sh printed no URI: {uri:?}"));
        }
        keep_capabilities(dir, root);
        Ok(PrivateDaemon { dir: dir.to_path_buf(), root: root.map(Path::to_path_buf), uri, own_network })
    }

    /// Stops this daemon (SIGTERM, then SIGKILL after a deadline); its
    /// guests keep running, as with any libvirtd.
    pub fn stop(&self) {
        let out = Command::new(project_root().join("scripts/private-libvirtd.sh"))
            .arg("stop")
            .arg(&self.dir)
            .output()
            .expect("run scripts/private-libvirtd.sh");
        assert!(out.status.success(), "stopping the private libvirtd: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Starts it again in the same directories (guests are reconnected).
    pub fn restart(&self) {
        if let Err(e) = PrivateDaemon::start_with(&self.dir, self.root.as_deref(), self.own_network) {
            panic!("{e}");
        }
    }

    pub fn running(&self) -> bool {
        Command::new(project_root().join("scripts/private-libvirtd.sh"))
            .arg("status")
            .arg(&self.dir)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    /// The daemon's PID (its namespaces are the guests' and dnsmasq's).
    pub fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.join("libvirtd.pid")).ok()?.trim().parse().ok()
    }

    /// Destroys every guest and active network (their dnsmasq would
    /// outlive the daemon), stops the daemon and removes its directories.
    pub fn shut_down(&self) {
        if let Ok(out) = Command::new("virsh").args(["-c", &self.uri, "list", "--name"]).output() {
            for name in String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.trim().is_empty()) {
                let _ = Command::new("virsh").args(["-c", &self.uri, "destroy", name.trim()]).output();
            }
        }
        if let Ok(out) = Command::new("virsh").args(["-c", &self.uri, "net-list", "--name"]).output() {
            for name in String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.trim().is_empty()) {
                let _ = Command::new("virsh").args(["-c", &self.uri, "net-destroy", name.trim()]).output();
            }
        }
        if self.running() {
            self.stop();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// This test binary's daemon: the current libvirt from the host's packages,
/// started on first use and shut down when the binary exits.
pub fn shared() -> &'static PrivateDaemon {
    shared_daemon(false)
}

/// As `shared`, in a network namespace of its own: for test binaries that
/// start virtual networks (call it before anything else starts the daemon).
pub fn shared_with_own_network() -> &'static PrivateDaemon {
    shared_daemon(true)
}

fn shared_daemon(own_network: bool) -> &'static PrivateDaemon {
    static DAEMON: OnceLock<PrivateDaemon> = OnceLock::new();
    let daemon = DAEMON.get_or_init(|| {
        sweep_stale();
        let exe = std::env::current_exe().ok();
        let stem = exe
            .as_ref()
            .and_then(|p| p.file_stem())
            .map(|s| s.to_string_lossy().split('-').next().unwrap_or("tests").to_string())
            .unwrap_or_else(|| "tests".into());
        let dir = PathBuf::from(BASE).join(format!("{stem}-{}", std::process::id()));
        let daemon = PrivateDaemon::start_with(&dir, None, own_network).unwrap_or_else(|e| panic!("{e}"));
        extern "C" fn at_exit() {
            if let Some(d) = DAEMON.get() {
                d.shut_down();
            }
        }
        // SAFETY: registers a plain function; it runs once, at exit.
        unsafe { libc::atexit(at_exit) };
        daemon
    });
    // Only the first caller chooses; a test asking for a network namespace
    // must never get a daemon in the host's.
    assert!(
        !own_network || daemon.own_network,
        "this test binary's daemon was started in the host's network namespace before \
         shared_with_own_network() was called"
    );
    daemon
}

/// Daemons of test binaries that died without cleaning up (killed, timed
/// out): their directory names end in a PID that is gone.
fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir(BASE) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(pid) = name.rsplit('-').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let dead = PrivateDaemon { dir: e.path(), root: None, uri: uri_of(&e.path()), own_network: false };
        dead.shut_down();
    }
}

fn uri_of(dir: &Path) -> String {
    format!("qemu:///system?socket={}/run/libvirt/libvirt-sock", dir.display())
}

/// The QEMU capabilities cache of an earlier daemon from the same binaries:
/// probing QEMU takes seconds on a daemon's first start, and libvirt checks
/// the cache against the binaries' timestamps itself.
fn capabilities_template(root: Option<&Path>) -> PathBuf {
    let name = root.and_then(|r| r.file_name()).map(|n| n.to_string_lossy().to_string()).unwrap_or("host".into());
    PathBuf::from(BASE).join(format!(".capabilities-{name}"))
}

fn seed_capabilities(dir: &Path, root: Option<&Path>) {
    let template = capabilities_template(root);
    let target = dir.join("cache/libvirt/qemu/capabilities");
    if template.is_dir() && !target.exists() {
        let _ = std::fs::create_dir_all(&target);
        let _ = Command::new("cp").arg("-a").arg(format!("{}/.", template.display())).arg(&target).status();
    }
}

fn keep_capabilities(dir: &Path, root: Option<&Path>) {
    let template = capabilities_template(root);
    let source = dir.join("cache/libvirt/qemu/capabilities");
    if !template.exists() && source.is_dir() {
        let _ = std::fs::create_dir_all(&template);
        let _ = Command::new("cp").arg("-a").arg(format!("{}/.", source.display())).arg(&template).status();
    }
}

/// A cached root by name (debian12, debian11), if built.
pub fn root(name: &str) -> Option<PathBuf> {
    let r = PathBuf::from(ROOTS).join(name);
    r.join(".virtpulse-root-complete").exists().then_some(r)
}
