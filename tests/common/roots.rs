//! Debian roots (scripts/build-test-roots.sh) and the private daemons run
//! from them: an older (or newer) libvirt daemon, and a place where the
//! agent runs on that release's own client library and glibc, and where
//! its packages are installed and purged.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

use super::daemon::{self, PrivateDaemon};
use super::virsh;

/// A daemon from a root, shut down (guests and all) when dropped, with the
/// scratch directories made inside the root for it.
pub struct RootDaemon {
    pub daemon: PrivateDaemon,
    pub root: PathBuf,
    scratch: Mutex<Vec<PathBuf>>,
}

impl RootDaemon {
    /// Starts a private daemon from the cached root `root_name`; `tag` keeps
    /// the daemons of several tests of one binary apart.
    pub fn start(root_name: &str, tag: &str) -> RootDaemon {
        let root = daemon::root(root_name).unwrap_or_else(|| {
            panic!("no {root_name} root in {}: run scripts/build-test-roots.sh (the test command does)", daemon::ROOTS)
        });
        let dir = PathBuf::from(format!("/var/tmp/vpd/{tag}-{root_name}-{}", std::process::id()));
        let d = PrivateDaemon::start(&dir, Some(&root)).unwrap_or_else(|e| panic!("{e}"));
        RootDaemon { daemon: d, root, scratch: Mutex::new(Vec::new()) }
    }

    pub fn uri(&self) -> &str {
        &self.daemon.uri
    }

    /// The daemon's PID: its mount namespace is where the root's
    /// /run/libvirt is this daemon's.
    pub fn pid(&self) -> u32 {
        let pid = std::fs::read_to_string(self.daemon.dir.join("libvirtd.pid")).expect("the daemon's PID file");
        pid.trim().parse().expect("a PID in the daemon's PID file")
    }

    /// Runs `args` chrooted into the root inside the daemon's mount
    /// namespace (where a client reaches the daemon at the default
    /// qemu:///system socket), with `env` added.
    pub fn run_inside(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let pid = self.pid().to_string();
        Command::new("nsenter")
            .args(["-t", &pid, "-m", "-r", "-w"])
            .args(args)
            .envs(env.iter().copied())
            .output()
            .unwrap_or_else(|e| panic!("nsenter: {e}"))
    }

    /// A tiny no-OS KVM guest with a qcow2 disk and a NIC. Its files live
    /// inside the root, where the root's QEMU sees them. Returns its UUID.
    pub fn guest(&self, name: &str) -> String {
        let dir_in_root = format!("/var/tmp/vpm-{}-{name}", std::process::id());
        let dir = self.root.join(dir_in_root.trim_start_matches('/'));
        std::fs::create_dir_all(&dir).unwrap();
        self.scratch.lock().unwrap().push(dir.clone());
        let disk = dir.join("disk.qcow2");
        let ok = Command::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(&disk).arg("64M").status().unwrap();
        assert!(ok.success());
        let xml = format!(
            "<domain type='kvm'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>2</vcpu>\
             <os><type arch='x86_64' machine='pc'>hvm</type></os><devices>\
             <emulator>/usr/bin/qemu-system-x86_64</emulator>\
             <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{dir_in_root}/disk.qcow2'/><target dev='vda' bus='virtio'/></disk>\
             <interface type='ethernet'><model type='virtio'/></interface><memballoon model='virtio'/></devices></domain>"
        );
        let path = dir.join("guest.xml");
        std::fs::write(&path, xml).unwrap();
        virsh::run_on(self.uri(), &["create", path.to_str().unwrap()]).unwrap_or_else(|e| panic!("{e}"));
        virsh::run_on(self.uri(), &["domuuid", name]).unwrap().trim().to_string()
    }

    /// A directory inside the root (as `/var/tmp/...` there), removed with
    /// the daemon. Returns (path on the host, path inside the root).
    pub fn scratch_dir(&self, name: &str) -> (PathBuf, String) {
        let inside = format!("/var/tmp/vpm-{}-{name}", std::process::id());
        let host = self.root.join(inside.trim_start_matches('/'));
        std::fs::create_dir_all(&host).unwrap();
        self.scratch.lock().unwrap().push(host.clone());
        (host, inside)
    }
}

impl Drop for RootDaemon {
    fn drop(&mut self) {
        self.daemon.shut_down();
        for d in self.scratch.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// Runs a command chrooted into a root (this mount namespace: the root's
/// files as cached, no daemon reachable); its stdout. Panics on failure.
pub fn chroot(root: &Path, args: &[&str]) -> String {
    let out = Command::new("chroot").arg(root).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "chroot {} {args:?}: {}{}",
        root.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
