//! The support matrix: the agent against other libvirt daemons than the
//! host's, each run privately from a Debian root that
//! scripts/build-test-roots.sh builds and caches (Debian 13 with
//! trixie-backports: libvirt 12.9 + QEMU 11.1; Debian 13: 11.3 + 10.0;
//! Debian 12: 9.0 + 7.2; Debian 11: 7.0 + 5.2). The host's packages are what
//! every other end-to-end test runs against. Against each: domain stats
//! equal to that daemon's `virsh domstats` (keys the agent does not know
//! counted, not lost), groups and event IDs it lacks reported as
//! unsupported (not as errors), lifecycle events, a daemon restart, jobs,
//! node, pools, promtool-clean output. On Debian 13 the agent binary runs
//! inside the root on that root's own libvirt0 (event IDs are checked by
//! the client library too: the host's 11.3 refuses IDs 28 and 29 itself);
//! against 12.9 every domain event ID registers and a guest's virtio-serial
//! channels connecting and disconnecting give channel_lifecycle events
//! equal to that root's `virsh event`. tests/portable.rs runs the release
//! binary and installs its packages in the Debian 11, 12 and 13 roots.
//! Every key the 12.9 daemon returns must have a row in the generated
//! docs/reference/keys-12.9.md (scripts/reference-keys.sh).
//! docs/reference/libvirt-12.md has the 12.x facts behind this.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::agent::{Agent, STDOUT};
use common::compare::{compare_named, unmapped};
use common::events::{normalize_virsh, virsh_view, Capture};
use common::exposition::Scrape;
use common::linux::Console;
use common::roots::{chroot, RootDaemon};
use common::{virsh, wait_for};
use virtpulse::record::mapping::pattern_of;
use virtpulse::record::samples::AllSamples;

/// libvirt's domain event IDs 0 (lifecycle) to 29 (channel_lifecycle):
/// every one this build registers.
const DOMAIN_EVENT_IDS: usize = 30;

/// A tiny no-OS KVM guest with a qcow2 disk and a NIC. With `newer`, also
/// an IOThread and the disk statistics libvirt 11.10 and 12.1 added
/// (`block.N.timed_group.*`, `block.N.latency_histogram.*`).
fn guest(d: &RootDaemon, name: &str, newer: bool) -> String {
    let uri = d.uri();
    let (dir, inside) = d.scratch_dir("guest");
    let ok = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(dir.join("disk.qcow2"))
        .arg("64M")
        .status()
        .unwrap();
    assert!(ok.success());
    let (iothreads, driver_extra, stats) = if newer {
        (
            "<iothreads>1</iothreads>",
            " iothread='1'",
            "<statistics><statistic interval='1'/><latency-histogram><bin start='0'/><bin start='1000'/>\
             <bin start='100000'/></latency-histogram><latency-histogram type='flush'><bin start='0'/>\
             <bin start='5000'/></latency-histogram></statistics>",
        )
    } else {
        ("", "", "")
    };
    let xml = format!(
        "<domain type='kvm'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>2</vcpu>{iothreads}\
         <os><type arch='x86_64' machine='pc'>hvm</type></os><devices>\
         <emulator>/usr/bin/qemu-system-x86_64</emulator>\
         <disk type='file' device='disk'><driver name='qemu' type='qcow2'{driver_extra}>{stats}</driver>\
         <source file='{inside}/disk.qcow2'/><target dev='vda' bus='virtio'/></disk>\
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

/// Compares the agent with that daemon's `virsh domstats` (every group).
/// Keys the stat-key table does not know must be counted in
/// `virtpulse_prometheus_unmapped_stat_keys` and logged, not exported.
/// Returns every key virsh showed.
fn matches_virsh(agent: &Agent, uri: &str, name: &str, uuid: &str) -> BTreeSet<String> {
    wait_for(Duration::from_secs(30), "the guest's stats", || {
        agent.scrape().value("libvirt_domain_block_read_bytes_total", &[("uuid", uuid)]).map(|_| ())
    });
    let before = virsh::domstats_on(uri, name, &[]);
    agent.wait_cycles(2, Duration::from_secs(20));
    let s = agent.scrape();
    let after = virsh::domstats_on(uri, name, &[]);
    let unknown: BTreeSet<String> = unmapped(&before).into_iter().chain(unmapped(&after)).collect();
    let known = |m: &BTreeMap<String, String>| -> BTreeMap<String, String> {
        m.iter().filter(|(k, _)| !unknown.contains(*k)).map(|(k, v)| (k.clone(), v.clone())).collect()
    };
    let problems = compare_named(name, uuid, &known(&before), &s, &known(&after), &AllSamples);
    assert!(problems.is_empty(), "differs from that daemon's virsh domstats:\n{}", problems.join("\n"));
    // (The count also holds other collectors' unknown keys: node stats.)
    let counted = s.value("virtpulse_prometheus_unmapped_stat_keys", &[]).unwrap_or(0.0);
    assert!(counted >= unknown.len() as f64, "{counted} unmapped keys counted; virsh shows {unknown:?}");
    let log = agent.log();
    for k in &unknown {
        assert!(
            log.contains(&format!(
                "no metric mapping; it is kept in records but not exported to Prometheus key=\"{k}\""
            )),
            "{k} is not logged as unmapped"
        );
    }
    println!("{name}: {} virsh keys compared, unmapped: {unknown:?}", before.len());
    before.into_keys().chain(after.into_keys()).collect()
}

fn errors(s: &Scrape, collector: &str) -> f64 {
    s.value("virtpulse_collections_total", &[("collector", collector), ("result", "error")]).unwrap_or(0.0)
}

/// Where the agent under test runs.
#[derive(Clone, Copy, PartialEq)]
enum Place {
    /// On the host, on the host's libvirt0.
    Host,
    /// Inside the root, on the root's own libvirt0.
    Root,
}

/// Which domain event IDs the daemon (and client library) must refuse.
enum Refused {
    /// Some (older daemons lack newer IDs).
    Some,
    /// Exactly these.
    Exactly(&'static [&'static str]),
}

struct Case {
    root: &'static str,
    /// Stats groups the daemon lacks.
    missing_groups: &'static [&'static str],
    refused: Refused,
    place: Place,
    /// The guest carries what newer daemons report (IOThread, disk statistics).
    newer_guest: bool,
}

/// A finished `check`: the agent still runs against the (restarted) daemon.
/// Fields drop in order: the agent before the daemon.
struct Run {
    agent: Agent,
    d: RootDaemon,
    root: PathBuf,
    uri: String,
    /// Every stats key that daemon's virsh showed for the guest.
    keys: BTreeSet<String>,
}

/// Domain stats, unsupported groups and events, jobs, node, pools,
/// lifecycle events and a daemon restart against one root's daemon.
fn check(case: &Case) -> Run {
    let t0 = Instant::now();
    let root_name = case.root;
    let d = RootDaemon::start(root_name, "matrix");
    let root = d.root.clone();
    let uri = d.uri().to_string();
    let name = format!("vpt-matrix-{root_name}-{}", std::process::id());
    let uuid = guest(&d, &name, case.newer_guest);
    let (_, pool_target) = d.scratch_dir("pool");
    let pool = format!("vpt-pool-{root_name}");
    virsh::run_on(&uri, &["pool-create-as", &pool, "dir", "--target", &pool_target]).unwrap_or_else(|e| panic!("{e}"));

    let rest = format!(
        "reconnect_min_backoff = \"200ms\"\nreconnect_max_backoff = \"1s\"\n\
         [collectors]\ninterval = \"1s\"\n[metrics]\nprofile = \"everything\"\n{STDOUT}"
    );
    let agent = match case.place {
        Place::Host => Agent::start(&format!("[libvirt]\nuri = \"{uri}\"\n{rest}")),
        // The daemon's socket where the root's libvirt0 looks by default.
        Place::Root => Agent::start_in_root(&root, d.pid(), &format!("[libvirt]\nuri = \"qemu:///system\"\n{rest}")),
    };
    wait_for(Duration::from_secs(20), "libvirt_up 1", || (up(&agent) == Some(1.0)).then_some(()));
    let mut keys = matches_virsh(&agent, &uri, &name, &uuid);

    // Groups and event IDs the daemon lacks: reported, not errors.
    let s = agent.scrape();
    for g in case.missing_groups {
        assert_eq!(s.value("virtpulse_stats_group_enabled", &[("group", g)]), Some(0.0), "{g} on {root_name}");
    }
    assert_eq!(s.value("virtpulse_stats_group_enabled", &[("group", "block")]), Some(1.0));
    let registrations = s.find("virtpulse_event_callback_registered", &[("family", "domain")]);
    assert_eq!(registrations.len(), DOMAIN_EVENT_IDS, "one series per domain event ID");
    let refused: Vec<_> = registrations.iter().filter(|x| x.value == 0.0).map(|x| x.labels["event"].clone()).collect();
    match case.refused {
        Refused::Some => assert!(!refused.is_empty(), "{root_name} lacks newer event IDs: {refused:?}"),
        Refused::Exactly(want) => {
            let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
            let mut got = refused.clone();
            want.sort();
            got.sort();
            assert_eq!(got, want, "domain event IDs refused on {root_name}");
        }
    }
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

    // The daemon restarts under the agent. (An agent inside the root stays
    // in the first daemon's mount namespace; the restarted daemon binds the
    // same directory over /run/libvirt, so its sockets appear there too.)
    d.daemon.stop();
    wait_for(Duration::from_secs(30), "libvirt_up 0", || (up(&agent) == Some(0.0)).then_some(()));
    d.daemon.restart();
    wait_for(Duration::from_secs(30), "libvirt_up 1 again", || (up(&agent) == Some(1.0)).then_some(()));
    keys.extend(matches_virsh(&agent, &uri, &name, &uuid));
    assert!(!agent.log().contains("panicked"), "{}", agent.log());
    println!("{root_name}: checked in {:.1} s", t0.elapsed().as_secs_f64());
    Run { agent, d, root, uri, keys }
}

#[test]
fn debian13_backports_libvirt_12_9_on_its_own_client_library() {
    let run = check(&Case {
        root: "debian13-bp",
        missing_groups: &[],
        refused: Refused::Exactly(&[]),
        place: Place::Root,
        newer_guest: true,
    });
    let libvirt0 = chroot(&run.root, &["dpkg-query", "-W", "-f=${Version}", "libvirt0"]);
    assert!(libvirt0.starts_with("12.9."), "libvirt0 {libvirt0} in debian13-bp");
    // The generated reference (scripts/reference-keys.sh) has a row for
    // every key this daemon returned.
    const REFERENCE: &str = "docs/reference/keys-12.9.md";
    let rows = common::reference::stats_key_rows(REFERENCE);
    let missing: Vec<&String> = run.keys.iter().filter(|k| !rows.contains_key(&pattern_of(k))).collect();
    assert!(
        missing.is_empty(),
        "keys the 12.9 daemon returns that {REFERENCE} lacks (run scripts/reference-keys.sh debian13-bp \
         {REFERENCE}): {missing:?}"
    );
    // Every callback of every family, on each connection.
    assert!(run.agent.log().contains("registered=38 refused=0"), "{}", run.agent.log());
    // Node keys of 11.8 and 12.3, mapped (the domain keys are compared above).
    let s = run.agent.scrape();
    assert!(s.value("libvirt_node_memory_available_bytes", &[]).is_some_and(|v| v > 0.0), "memory.available");
    assert!(s.value("libvirt_node_cpu_guest_seconds_total", &[]).is_some(), "cpu.guest");
    channel_lifecycle(&run);
}

/// A TCG Linux guest inside the root with the guest agent's channel and a
/// second virtio-serial channel: domain start, qemu-ga starting and
/// stopping, and the guest opening and closing the second port each give
/// channel_lifecycle events (ID 29). The agent's records of the guest's
/// events must equal the root's own `virsh event` (the host's virsh, on
/// libvirt0 11.3, cannot register ID 29).
fn channel_lifecycle(run: &Run) {
    let t0 = Instant::now();
    let pid = run.d.pid().to_string();
    let capture = Capture::start_with(&["nsenter", "-t", &pid, "-m", "-r", "virsh", "-c", "qemu:///system"], &[]);
    let img = common::linux::image_dir();
    let (dir, inside) = run.d.scratch_dir("linux");
    for f in ["vmlinuz", "initrd.gz"] {
        std::fs::copy(img.join(f), dir.join(f)).unwrap();
    }
    common::set_mode(&dir, 0o1777);
    let name = format!("vpt-matrix-chan-{}", std::process::id());
    let xml = format!(
        "<domain type='qemu'><name>{name}</name><memory unit='MiB'>192</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64' machine='pc'>hvm</type><kernel>{inside}/vmlinuz</kernel>\
         <initrd>{inside}/initrd.gz</initrd><cmdline>console=ttyS0 quiet panic=0</cmdline></os>\
         <features><acpi/><apic/></features><devices><emulator>/usr/bin/qemu-system-x86_64</emulator>\
         <serial type='pty'/><serial type='unix'><source mode='bind' path='{inside}/cmd.sock'/><target port='1'/></serial>\
         <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>\
         <channel type='unix'><target type='virtio' name='org.virtpulse.test.0'/></channel>\
         <memballoon model='none'/></devices></domain>"
    );
    std::fs::write(dir.join("linux.xml"), xml).unwrap();
    virsh::run_on(&run.uri, &["create", dir.join("linux.xml").to_str().unwrap()]).unwrap_or_else(|e| panic!("{e}"));
    let console = Console::new(&dir.join("cmd.sock"));
    console.wait_ready();
    let booted = t0.elapsed();

    // At start: lifecycle (2), agent_lifecycle and one channel_lifecycle
    // per channel, all disconnected; then connected/disconnected pairs.
    capture.wait_count(&name, 5, Duration::from_secs(60));
    console.run("start-ga");
    capture.wait_count(&name, 7, Duration::from_secs(60));
    console.run("kill $(pidof qemu-ga)");
    capture.wait_count(&name, 9, Duration::from_secs(60));
    console.run(
        "for p in /sys/class/virtio-ports/*; do [ \"$(cat $p/name)\" = org.virtpulse.test.0 ] && d=/dev/${p##*/}; done; \
         (exec 3<>$d; sleep 1)",
    );
    let theirs: Vec<(String, String)> =
        capture.wait_count(&name, 11, Duration::from_secs(60)).iter().map(normalize_virsh).collect();
    let records = wait_for(Duration::from_secs(30), "the agent's records of the guest's events", || {
        let r: Vec<serde_json::Value> = run
            .agent
            .records()
            .into_iter()
            .filter(|r| r["kind"] == "event" && r["event"]["name"] != "resync" && r["domain"]["name"] == name.as_str())
            .collect();
        (r.len() >= theirs.len()).then_some(r)
    });
    let ours: Vec<(String, String)> = records.iter().map(virsh_view).collect();
    assert_eq!(ours, theirs, "agent records (left) vs the root's virsh event (right)");
    for r in &records {
        common::schema::assert_valid(r);
    }
    let channel: Vec<String> = records
        .iter()
        .filter(|r| r["event"]["name"] == "channel_lifecycle")
        .map(|r| format!("{} {}", r["fields"]["channel_name"]["value"], r["event"]["type"]))
        .collect();
    assert_eq!(
        channel.len(),
        6,
        "two channels disconnected at start, then each connected and disconnected: {channel:?}"
    );
    let _ = virsh::run_on(&run.uri, &["destroy", &name]);
    println!(
        "channel_lifecycle: TCG guest ready in {:.1} s, events compared after {:.1} s: {theirs:?}",
        booted.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
}

#[test]
fn debian13_libvirt_11_3_on_its_own_client_library() {
    // The 11.3 client library refuses IDs 28 and 29 before asking the daemon.
    check(&Case {
        root: "debian13",
        missing_groups: &[],
        refused: Refused::Exactly(&["vcpu_removed", "channel_lifecycle"]),
        place: Place::Root,
        newer_guest: false,
    });
}

#[test]
fn debian12_libvirt_9_0_and_its_own_client_library() {
    drop(check(&Case {
        root: "debian12",
        missing_groups: &[],
        refused: Refused::Some,
        place: Place::Host,
        newer_guest: false,
    }));
}

#[test]
fn debian11_libvirt_7_0() {
    drop(check(&Case {
        root: "debian11",
        missing_groups: &["vm", "dirtyrate"],
        refused: Refused::Some,
        place: Place::Host,
        newer_guest: false,
    }));
}
