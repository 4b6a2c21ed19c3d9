//! Storage pools against `virsh pool-info`: a real `dir` pool with volumes;
//! the agent never refreshes it; a destroyed pool's series vanish.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::agent::Agent;
use common::{ensure_libvirtd, scratch_dir, virsh, wait_for};

const POOLS_FAST: &str = "[collectors.pools]\ninterval = \"200ms\"\n";

/// Removes the pool however the test ends.
struct Pool(String);

impl Drop for Pool {
    fn drop(&mut self) {
        let _ = virsh::run(&["pool-destroy", &self.0]);
        let _ = virsh::run(&["pool-undefine", &self.0]);
    }
}

fn pool_info(name: &str) -> BTreeMap<String, String> {
    virsh::must(&["pool-info", "--bytes", name])
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

#[test]
fn dir_pool_matches_virsh_is_never_refreshed_and_vanishes() {
    ensure_libvirtd();
    let dir = scratch_dir("pool");
    let name = format!("vpt-pool-{}", std::process::id());
    let pool = Pool(name.clone());
    virsh::must(&["pool-create-as", &name, "dir", "--target", dir.path().to_str().unwrap()]);
    virsh::must(&["vol-create-as", &name, "v1", "16M", "--format", "raw"]);
    virsh::must(&["vol-create-as", &name, "v2", "8M", "--format", "qcow2"]);
    let uuid = virsh::must(&["pool-uuid", &name]).trim().to_string();

    let agent = Agent::start(POOLS_FAST);
    let p = [("pool", name.as_str())];
    wait_for(Duration::from_secs(20), "the pool's series", || {
        agent.scrape().value("libvirt_storage_pool_volumes", &p).map(|_| ())
    });
    let info = pool_info(&name);
    agent.wait_cycles_of("pools", 2, Duration::from_secs(20));
    let s = agent.scrape();
    let bytes = |k: &str| info[k].split_whitespace().next().unwrap().parse::<f64>().unwrap();
    assert_eq!(s.value("libvirt_storage_pool_capacity_bytes", &p), Some(bytes("Capacity")));
    assert_eq!(s.value("libvirt_storage_pool_allocation_bytes", &p), Some(bytes("Allocation")));
    assert_eq!(s.value("libvirt_storage_pool_available_bytes", &p), Some(bytes("Available")));
    assert_eq!(s.value("libvirt_storage_pool_volumes", &p), Some(2.0));
    assert_eq!(s.value("libvirt_storage_pool_state", &p), Some(2.0), "running");
    let labels = [
        ("pool", name.as_str()),
        ("uuid", uuid.as_str()),
        ("type", "dir"),
        ("state", "running"),
        ("persistent", "false"),
    ];
    assert_eq!(s.value("libvirt_storage_pool_info", &labels), Some(1.0));

    // A file libvirt has not seen yet: the agent must not refresh the pool.
    std::fs::write(dir.path().join("v3"), vec![0u8; 4096]).unwrap();
    agent.wait_cycles_of("pools", 3, Duration::from_secs(20));
    assert_eq!(agent.scrape().value("libvirt_storage_pool_volumes", &p), Some(2.0), "the agent refreshed the pool");
    virsh::must(&["pool-refresh", &name]);
    wait_for(Duration::from_secs(20), "the refreshed volume count", || {
        (agent.scrape().value("libvirt_storage_pool_volumes", &p) == Some(3.0)).then_some(())
    });

    // A transient pool that is destroyed is gone, and so are its series.
    virsh::must(&["pool-destroy", &name]);
    agent.wait_cycles_of("pools", 2, Duration::from_secs(20));
    let s = agent.scrape();
    let left: Vec<_> =
        s.samples.iter().filter(|x| x.labels.get("pool").map(String::as_str) == Some(name.as_str())).collect();
    assert!(left.is_empty(), "series of the destroyed pool remain: {left:?}");
    drop(pool);
}

#[test]
fn inactive_persistent_pool_keeps_only_its_state() {
    ensure_libvirtd();
    let dir = scratch_dir("pool2");
    let name = format!("vpt-pool2-{}", std::process::id());
    let _pool = Pool(name.clone());
    virsh::must(&["pool-define-as", &name, "dir", "--target", dir.path().to_str().unwrap()]);
    virsh::must(&["pool-start", &name]);
    let agent = Agent::start(POOLS_FAST);
    let p = [("pool", name.as_str())];
    wait_for(Duration::from_secs(20), "the pool", || {
        agent.scrape().value("libvirt_storage_pool_capacity_bytes", &p).map(|_| ())
    });
    virsh::must(&["pool-destroy", &name]);
    agent.wait_cycles_of("pools", 2, Duration::from_secs(20));
    let s = agent.scrape();
    assert_eq!(s.value("libvirt_storage_pool_state", &p), Some(0.0), "inactive");
    assert_eq!(s.value("libvirt_storage_pool_capacity_bytes", &p), None);
    assert_eq!(
        s.value("libvirt_storage_pool_info", &[("pool", name.as_str()), ("persistent", "true"), ("state", "inactive")]),
        Some(1.0)
    );
}
