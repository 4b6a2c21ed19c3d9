//! The support matrix: the agent against older libvirt daemons, each run
//! privately from a Debian root that scripts/build-test-roots.sh builds and
//! caches (Debian 12: libvirt 9.0 + QEMU 7.2; Debian 11: libvirt 7.0 + QEMU
//! 5.2). The current libvirt (the host's packages) is what every other
//! end-to-end test runs against. Against each: domain stats equal to that
//! daemon's `virsh domstats`, groups and event IDs it lacks reported as
//! unsupported (not as errors), lifecycle events, a daemon restart, jobs,
//! node, pools, promtool-clean output; on Debian 12 also the agent binary
//! run inside the root against its stock libvirt0, and the .deb installed
//! there from Debian 12 alone.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::agent::{Agent, STDOUT};
use common::compare::compare_named;
use common::daemon::{self, PrivateDaemon};
use common::exposition::Scrape;
use common::{virsh, wait_for};
use virtpulse::record::samples::AllSamples;

/// A daemon from a root, shut down (guests and all) when dropped.
struct RootDaemon(PrivateDaemon);

impl Drop for RootDaemon {
    fn drop(&mut self) {
        self.0.shut_down();
    }
}

fn start(root_name: &str) -> (RootDaemon, PathBuf) {
    let root = daemon::root(root_name).unwrap_or_else(|| {
        panic!("no {root_name} root in {}: run scripts/build-test-roots.sh (the test command does)", daemon::ROOTS)
    });
    let dir = PathBuf::from(format!("/var/tmp/vpd/matrix-{root_name}-{}", std::process::id()));
    let d = PrivateDaemon::start(&dir, Some(&root)).unwrap_or_else(|e| panic!("{e}"));
    (RootDaemon(d), root)
}

/// A tiny no-OS KVM guest with a qcow2 disk and a NIC. Its files live
/// inside the root, where the root's QEMU sees them.
fn guest(uri: &str, root: &Path, name: &str) -> String {
    let dir_in_root = format!("/var/tmp/vpm-{}", std::process::id());
    let dir = root.join(dir_in_root.trim_start_matches('/'));
    std::fs::create_dir_all(&dir).unwrap();
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
    virsh::run_on(uri, &["create", path.to_str().unwrap()]).unwrap_or_else(|e| panic!("{e}"));
    virsh::run_on(uri, &["domuuid", name]).unwrap().trim().to_string()
}

fn up(agent: &Agent) -> Option<f64> {
    agent.scrape().value("libvirt_up", &[])
}

fn matches_virsh(agent: &Agent, uri: &str, name: &str, uuid: &str) {
    wait_for(Duration::from_secs(30), "the guest's stats", || {
        agent.scrape().value("libvirt_domain_block_read_bytes_total", &[("uuid", uuid)]).map(|_| ())
    });
    let before = virsh::domstats_on(uri, name, &[]);
    agent.wait_cycles(2, Duration::from_secs(20));
    let s = agent.scrape();
    let after = virsh::domstats_on(uri, name, &[]);
    let problems = compare_named(name, uuid, &before, &s, &after, &AllSamples);
    assert!(problems.is_empty(), "differs from that daemon's virsh domstats:\n{}", problems.join("\n"));
}

fn errors(s: &Scrape, collector: &str) -> f64 {
    s.value("virtpulse_collections_total", &[("collector", collector), ("result", "error")]).unwrap_or(0.0)
}

/// What each old daemon must lack (and so report as unsupported).
fn check(root_name: &str, missing_groups: &[&str]) {
    let (d, root) = start(root_name);
    let uri = d.0.uri.clone();
    let name = format!("vpt-matrix-{root_name}-{}", std::process::id());
    let uuid = guest(&uri, &root, &name);
    let pool_dir = root.join(format!("var/tmp/vpm-{}/pool", std::process::id()));
    std::fs::create_dir_all(&pool_dir).unwrap();
    let pool = format!("vpt-pool-{root_name}");
    let pool_target = format!("/var/tmp/vpm-{}/pool", std::process::id());
    virsh::run_on(&uri, &["pool-create-as", &pool, "dir", "--target", &pool_target]).unwrap_or_else(|e| panic!("{e}"));

    let config = format!(
        "[libvirt]\nuri = \"{uri}\"\nreconnect_min_backoff = \"200ms\"\nreconnect_max_backoff = \"1s\"\n\
         [collectors]\ninterval = \"1s\"\n[metrics]\nprofile = \"everything\"\n{STDOUT}"
    );
    let agent = Agent::start(&config);
    wait_for(Duration::from_secs(20), "libvirt_up 1", || (up(&agent) == Some(1.0)).then_some(()));
    matches_virsh(&agent, &uri, &name, &uuid);

    // Groups and event IDs the daemon lacks: reported, not errors.
    let s = agent.scrape();
    for g in missing_groups {
        assert_eq!(s.value("virtpulse_stats_group_enabled", &[("group", g)]), Some(0.0), "{g} on {root_name}");
    }
    assert_eq!(s.value("virtpulse_stats_group_enabled", &[("group", "block")]), Some(1.0));
    let registrations = s.find("virtpulse_event_callback_registered", &[("family", "domain")]);
    let refused: Vec<_> = registrations.iter().filter(|x| x.value == 0.0).map(|x| x.labels["event"].clone()).collect();
    assert!(!refused.is_empty(), "{root_name} lacks newer event IDs: {refused:?}");
    assert!(registrations.iter().any(|x| x.labels["event"] == "lifecycle" && x.value == 1.0));
    println!("{root_name}: {} domain event IDs registered, refused: {refused:?}", registrations.len() - refused.len());
    for c in ["domain_stats", "jobs", "node", "pools"] {
        assert_eq!(errors(&s, c), 0.0, "{c} errors on {root_name}:\n{}", agent.log());
    }
    assert!(s.value("libvirt_node_memory_total_bytes", &[]).is_some_and(|v| v > 0.0));
    wait_for(Duration::from_secs(20), "the pool", || {
        agent.scrape().value("libvirt_storage_pool_state", &[("pool", pool.as_str())]).map(|_| ())
    });
    wait_for(Duration::from_secs(20), "a jobs cycle", || {
        let s = agent.scrape();
        (s.value("virtpulse_collections_total", &[("collector", "jobs"), ("result", "ok")]).unwrap_or(0.0) > 0.0)
            .then_some(())
    });
    common::exposition::assert_promtool_clean(&agent.scrape_text());

    // Lifecycle events.
    virsh::run_on(&uri, &["suspend", &name]).unwrap();
    virsh::run_on(&uri, &["resume", &name]).unwrap();
    wait_for(Duration::from_secs(20), "the suspend event", || {
        agent
            .records()
            .iter()
            .any(|r| r["domain"]["uuid"] == uuid.as_str() && r["event"]["type"] == "suspended")
            .then_some(())
    });

    // The daemon restarts under the agent.
    d.0.stop();
    wait_for(Duration::from_secs(30), "libvirt_up 0", || (up(&agent) == Some(0.0)).then_some(()));
    d.0.restart();
    wait_for(Duration::from_secs(30), "libvirt_up 1 again", || (up(&agent) == Some(1.0)).then_some(()));
    matches_virsh(&agent, &uri, &name, &uuid);
    assert!(!agent.log().contains("panicked"), "{}", agent.log());
}

#[test]
fn debian12_libvirt_9_0_and_its_own_client_library() {
    check("debian12", &[]);
    // The agent binary inside the root, on Debian 12's stock libvirt0 9.0,
    // in the daemon's namespace (where the root's /run/libvirt is its own).
    let (d, root) = start("debian12");
    let bin = root.join("usr/local/bin/virtpulse-under-test");
    std::fs::copy(env!("CARGO_BIN_EXE_virtpulse"), &bin).unwrap();
    let pid = std::fs::read_to_string(d.0.dir.join("libvirtd.pid")).unwrap().trim().to_string();
    let out = Command::new("nsenter")
        .args(["-t", &pid, "-m", "-r", "/usr/local/bin/virtpulse-under-test", "--once"])
        .env("VIRTPULSE_AGENT__LOG_LEVEL", "warn")
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&bin);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("\"kind\":\"node\""), "{stdout}");
    let libvirt0 = chroot(&root, &["dpkg-query", "-W", "-f=${Version}", "libvirt0"]);
    println!("inside debian12 with libvirt0 {libvirt0}: --once ok");

    // The .deb installs there, from Debian 12 alone (no backports), and purges.
    let out = tempfile::tempdir().unwrap();
    let built = Command::new(common::project_root().join("scripts/build-deb.sh"))
        .env("PROFILE", "debug")
        .env("OUT", out.path())
        .output()
        .unwrap();
    assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));
    let deb = String::from_utf8_lossy(&built.stdout).trim().to_string();
    std::fs::copy(&deb, root.join("tmp/virtpulse-under-test.deb")).unwrap();
    let apt = |args: &[&str]| {
        let mut all = vec!["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "-y", "-q"];
        all.extend_from_slice(args);
        chroot(&root, &all)
    };
    apt(&["install", "/tmp/virtpulse-under-test.deb"]);
    let check = chroot(&root, &["virtpulse", "--check-config", "--config", "/etc/virtpulse/config.toml"]);
    assert!(check.contains("configuration OK"), "{check}");
    apt(&["purge", "virtpulse"]);
    let _ = std::fs::remove_file(root.join("tmp/virtpulse-under-test.deb"));
    assert!(!root.join("usr/bin/virtpulse").exists(), "purged");
}

/// Runs a command inside a root; its stdout.
fn chroot(root: &Path, args: &[&str]) -> String {
    let out = Command::new("chroot").arg(root).args(args).output().unwrap();
    assert!(out.status.success(), "chroot {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn debian11_libvirt_7_0() {
    check("debian11", &["vm", "dirtyrate"]);
}
