//! Events against real guests: each event the agent records must be the
//! event `virsh event` prints for the same occurrence, in the same order,
//! with the same fields.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::agent::{Agent, STDOUT};
use common::events::{normalize_virsh, virsh_view, Capture, VirshEvent};
use common::guest::{Guest, GuestSpec};
use common::{virsh, wait_for};
use serde_json::Value;

fn event_records(agent: &Agent, family: &str, object: &str) -> Vec<Value> {
    agent
        .records()
        .into_iter()
        .filter(|r| r["kind"] == "event" && r["event"]["family"] == family && r["event"]["name"] != "resync")
        .filter(|r| {
            let name = if family == "domain" { &r["domain"]["name"] } else { &r["event"]["object"]["name"] };
            name == object
        })
        .collect()
}

/// Waits until the agent recorded as many events of `object` as virsh
/// printed, then compares the two sequences one by one.
fn assert_same_events(agent: &Agent, capture: &Capture, family: &str, object: &str, expected_last: &str) {
    let virsh_events: Vec<VirshEvent> =
        wait_for(Duration::from_secs(30), &format!("virsh to print {expected_last}"), || {
            let e = capture.of(object);
            e.iter().any(|e| format!("{} {}", e.name, e.text).contains(expected_last)).then_some(e)
        });
    let records = wait_for(Duration::from_secs(30), "the agent's records of the same events", || {
        let r = event_records(agent, family, object);
        (r.len() >= virsh_events.len()).then_some(r)
    });
    let ours: Vec<(String, String)> = records.iter().map(virsh_view).collect();
    let theirs: Vec<(String, String)> = virsh_events.iter().map(normalize_virsh).collect();
    assert_eq!(ours, theirs, "agent records (left) vs virsh event (right) for {object}");
    for r in &records {
        common::schema::assert_valid(r);
    }
    let seqs: Vec<u64> = records.iter().map(|r| r["event"]["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "sequence numbers must increase: {seqs:?}");
}

/// A VNC client that gets through the RFB handshake (security type None),
/// so QEMU reports connect, initialize and disconnect.
fn vnc_session(port: u16) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut version = [0u8; 12];
    s.read_exact(&mut version).unwrap();
    s.write_all(&version).unwrap();
    let mut count = [0u8; 1];
    s.read_exact(&mut count).unwrap();
    let mut types = vec![0u8; count[0] as usize];
    s.read_exact(&mut types).unwrap();
    assert!(types.contains(&1), "VNC security type None offered: {types:?}");
    s.write_all(&[1]).unwrap();
    let mut result = [0u8; 4];
    s.read_exact(&mut result).unwrap();
    s.write_all(&[1]).unwrap(); // ClientInit, shared
    let mut init = [0u8; 24];
    s.read_exact(&mut init).unwrap();
    let name_len = u32::from_be_bytes([init[20], init[21], init[22], init[23]]) as usize;
    let mut name = vec![0u8; name_len];
    s.read_exact(&mut name).unwrap();
}

const DEVICES: &str = "<disk type='file' device='cdrom'><driver name='qemu' type='raw'/><target dev='hdc' bus='ide'/><readonly/></disk>\n\
    <graphics type='vnc' port='-1' listen='127.0.0.1'/>";

#[test]
fn domain_events_match_virsh() {
    let capture = Capture::start(&[]);
    let name = Guest::name_for("ev");
    let agent = Agent::start(&format!("{STDOUT}[domains]\ninclude = [\"{name}\"]\n"));
    let mut g = Guest::start_named(&name, GuestSpec { extra_devices: DEVICES.into(), ..Default::default() });
    let v = |args: &[&str]| virsh::must(args);

    v(&["suspend", &g.name]);
    v(&["resume", &g.name]);
    v(&["desc", &g.name, "described by the events test"]);
    v(&["schedinfo", &g.name, "--set", "cpu_shares=512", "--live"]);
    v(&["reset", &g.name]);
    let iso = g.dir().join("cd.iso");
    std::fs::write(&iso, vec![0u8; 2048]).unwrap();
    v(&["change-media", &g.name, "hdc", iso.to_str().unwrap(), "--insert"]);
    v(&["change-media", &g.name, "hdc", "--eject"]);
    let tablet = g.dir().join("tablet.xml");
    std::fs::write(&tablet, "<input type='tablet' bus='usb'/>").unwrap();
    v(&["attach-device", &g.name, tablet.to_str().unwrap(), "--live"]);
    wait_for(Duration::from_secs(10), "the tablet in the live XML", || {
        v(&["dumpxml", &g.name]).contains("type='tablet'").then_some(())
    });
    v(&["detach-device", &g.name, tablet.to_str().unwrap(), "--live"]);
    let display = v(&["vncdisplay", &g.name]);
    let port = 5900 + display.trim().rsplit(':').next().unwrap().parse::<u16>().unwrap();
    vnc_session(port);
    let copy = g.dir().join("copy.qcow2");
    v(&["blockcopy", &g.name, "vda", copy.to_str().unwrap(), "--wait", "--pivot", "--transient-job"]);
    let image = g.dir().join("save.img");
    v(&["save", &g.name, image.to_str().unwrap()]);
    v(&["restore", image.to_str().unwrap()]);
    g.destroy();
    g.undefine();

    assert_same_events(&agent, &capture, "domain", &name, "Undefined Removed");
    let kinds: Vec<String> = event_records(&agent, "domain", &name)
        .iter()
        .map(|r| r["event"]["name"].as_str().unwrap().to_string())
        .collect();
    for expected in [
        "lifecycle",
        "metadata_change",
        "tunable",
        "reboot",
        "tray_change",
        "device_added",
        "device_removed",
        "graphics",
        "block_job",
        "block_job_2",
        "migration_iteration",
        "job_completed",
    ] {
        assert!(kinds.iter().any(|k| k == expected), "no {expected} event recorded: {kinds:?}");
    }
    // Counted for Prometheus, host-wide and per domain.
    let s = agent.scrape();
    assert!(
        s.value("libvirt_events_total", &[("event", "lifecycle"), ("type", "stopped"), ("detail", "destroyed")])
            .unwrap()
            >= 1.0
    );
    assert!(s.value("virtpulse_events_dropped_total", &[]) == Some(0.0));
}

#[test]
fn io_errors_match_virsh() {
    let capture = Capture::start(&[]);
    let name = Guest::name_for("ioerr");
    let agent = Agent::start(&format!("{STDOUT}[domains]\ninclude = [\"{name}\"]\n"));
    let (g, _disk) = common::ioerror::start_guest(&name);
    wait_for(Duration::from_secs(30), "the I/O error pause", || (v_state(&g.name).contains("paused")).then_some(()));
    g.destroy();
    assert_same_events(&agent, &capture, "domain", &name, "Stopped Destroyed");
    let recs = event_records(&agent, "domain", &name);
    let reason = recs.iter().find(|r| r["event"]["name"] == "io_error_reason").expect("io_error_reason recorded");
    assert_eq!(reason["event"]["type"], "pause");
    assert!(recs.iter().any(|r| r["event"]["type"] == "suspended" && r["event"]["detail"] == "ioerror"));
    let s = agent.scrape();
    let t = s.value("libvirt_domain_last_event_timestamp_seconds", &[("domain", name.as_str()), ("event", "io_error")]);
    assert!(t.is_some_and(|t| t > 1.7e9), "last I/O error timestamp: {t:?}");
}

fn v_state(name: &str) -> String {
    virsh::must(&["domstate", "--reason", name])
}

#[test]
fn disk_change_of_a_missing_cdrom_matches_virsh() {
    let capture = Capture::start(&[]);
    let name = Guest::name_for("diskchg");
    let agent = Agent::start(&format!("{STDOUT}[domains]\ninclude = [\"{name}\"]\n"));
    let cdrom = "<disk type='file' device='cdrom'><driver name='qemu' type='raw'/>\
        <source file='/nonexistent/virtpulse.iso' startupPolicy='optional'/><target dev='hdc' bus='ide'/><readonly/></disk>";
    let g = Guest::start_named(&name, GuestSpec { extra_devices: cdrom.into(), ..Default::default() });
    g.destroy();
    assert_same_events(&agent, &capture, "domain", &name, "Stopped Destroyed");
    assert!(event_records(&agent, "domain", &name).iter().any(|r| r["event"]["name"] == "disk_change"));
}

#[test]
fn network_pool_and_secret_events_match_virsh() {
    common::ensure_libvirtd();
    let capture = Capture::start(&[
        ("net-event", "lifecycle"),
        ("pool-event", "lifecycle"),
        ("pool-event", "refresh"),
        ("secret-event", "lifecycle"),
        ("secret-event", "value-changed"),
    ]);
    let agent = Agent::start(STDOUT);
    let pid = std::process::id();
    let dir = common::scratch_dir("evpool");
    let net = format!("vpt-net-{pid}");
    let bridge = format!("vpt{}", pid % 100000);
    let net_xml = dir.path().join("net.xml");
    std::fs::write(
        &net_xml,
        format!("<network><name>{net}</name><bridge name='{bridge}'/><dns enable='no'/></network>"),
    )
    .unwrap();
    let v = |args: &[&str]| virsh::must(args);
    v(&["net-define", net_xml.to_str().unwrap()]);
    v(&["net-start", &net]);
    v(&["net-destroy", &net]);
    v(&["net-undefine", &net]);

    let pool = format!("vpt-evpool-{pid}");
    v(&["pool-define-as", &pool, "dir", "--target", dir.path().to_str().unwrap()]);
    v(&["pool-start", &pool]);
    v(&["pool-refresh", &pool]);
    v(&["pool-destroy", &pool]);
    v(&["pool-undefine", &pool]);

    let usage = dir.path().join("volume.img");
    let secret_xml = dir.path().join("secret.xml");
    std::fs::write(
        &secret_xml,
        format!(
            "<secret ephemeral='no' private='no'><usage type='volume'><volume>{}</volume></usage></secret>",
            usage.display()
        ),
    )
    .unwrap();
    let out = v(&["secret-define", secret_xml.to_str().unwrap()]);
    let uuid = out.split_whitespace().nth(1).unwrap().to_string();
    v(&["secret-set-value", &uuid, "--base64", "aGVsbG8="]);
    v(&["secret-undefine", &uuid]);

    assert_same_events(&agent, &capture, "network", &net, "Undefined");
    assert_same_events(&agent, &capture, "storage_pool", &pool, "Undefined");
    // virsh names secrets by UUID; the agent records the usage ID as the name
    // and the UUID next to it.
    let secret_virsh = capture.wait_count(&uuid, 3, Duration::from_secs(20));
    let secret_ours = wait_for(Duration::from_secs(20), "the secret's events", || {
        let r: Vec<Value> = agent
            .records()
            .into_iter()
            .filter(|r| {
                r["kind"] == "event"
                    && r["event"]["family"] == "secret"
                    && r["event"]["object"]["uuid"] == uuid.as_str()
            })
            .collect();
        (r.len() >= secret_virsh.len()).then_some(r)
    });
    let ours: Vec<String> =
        secret_ours.iter().map(|r| format!("{} {}", r["event"]["name"], r["event"]["type"])).collect();
    assert_eq!(ours, vec!["\"lifecycle\" \"defined\"", "\"value_changed\" \"\"", "\"lifecycle\" \"undefined\""]);
    assert_eq!(secret_ours[0]["event"]["object"]["name"], usage.to_str().unwrap());
}

/// With intervals far longer than the test, only events can explain the
/// collectors' quick reactions.
#[test]
fn events_make_collectors_react() {
    let _quiet = common::light();
    let name = Guest::name_for("react");
    let agent = Agent::start(&format!(
        "[collectors.domain_stats]\ninterval = \"60s\"\n[collectors.jobs]\ninterval = \"60s\"\n[domains]\ninclude = [\"{name}\"]\n"
    ));
    let g = Guest::start_named(&name, GuestSpec::default());
    let u = g.uuid.clone();
    // Started: the domain stats collector runs at once.
    wait_for(Duration::from_secs(30), "the new domain's series", || {
        agent.scrape().value("libvirt_domain_cpu_time_seconds_total", &[("uuid", u.as_str())]).map(|_| ())
    });
    // job-completed: the job collector reads the completed save at once, and
    // the stopped (saved) domain loses its runtime series at once.
    let image = g.dir().join("save.img");
    virsh::must(&["save", &g.name, image.to_str().unwrap()]);
    wait_for(Duration::from_secs(30), "the completed save job", || {
        agent
            .scrape()
            .value("libvirt_domain_job_time_elapsed_seconds", &[("uuid", u.as_str()), ("type", "completed")])
            .map(|_| ())
    });
    wait_for(Duration::from_secs(30), "the saved domain's runtime series to go", || {
        let s = agent.scrape();
        (s.value("libvirt_domain_state", &[("uuid", u.as_str())]) == Some(5.0)
            && s.value("libvirt_domain_vcpu_time_seconds_total", &[("uuid", u.as_str())]).is_none())
        .then_some(())
    });
}

/// 30 guests started and stopped as fast as libvirt allows: every lifecycle
/// event virsh saw, the agent recorded.
#[test]
fn burst_of_thirty_guests_loses_no_event() {
    let _alone = common::heavy();
    let capture = Capture::start(&[]);
    let agent = Agent::start(&format!("{STDOUT}[domains]\ninclude = [\"{}burst-*\"]\n", common::guest::PREFIX));
    let started = std::time::Instant::now();
    let guests: Vec<Guest> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|_| {
                s.spawn(|| {
                    (0..10)
                        .map(|_| Guest::start("burst", GuestSpec { persistent: false, ..Default::default() }))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    std::thread::scope(|s| {
        for chunk in guests.chunks(10) {
            s.spawn(move || chunk.iter().for_each(|g| g.destroy()));
        }
    });
    let elapsed = started.elapsed();
    let names: Vec<String> = guests.iter().map(|g| g.name.clone()).collect();
    let expected: usize = wait_for(Duration::from_secs(30), "virsh to see every guest stop", || {
        let all: usize = names.iter().map(|n| capture.of(n).len()).sum();
        names.iter().all(|n| capture.of(n).iter().any(|e| e.text == "Stopped Destroyed")).then_some(all)
    });
    let recorded = wait_for(Duration::from_secs(30), "the agent's records of every event", || {
        let n = agent
            .records()
            .iter()
            .filter(|r| r["kind"] == "event" && r["event"]["name"] != "resync")
            .filter(|r| names.iter().any(|n| r["domain"]["name"] == n.as_str()))
            .count();
        (n >= expected).then_some(n)
    });
    assert_eq!(recorded, expected, "events recorded vs printed by virsh");
    for n in &names {
        let ours: Vec<(String, String)> = event_records(&agent, "domain", n).iter().map(virsh_view).collect();
        let theirs: Vec<(String, String)> = capture.of(n).iter().map(normalize_virsh).collect();
        assert_eq!(ours, theirs, "{n}");
    }
    let s = agent.scrape();
    assert_eq!(s.value("virtpulse_events_dropped_total", &[]), Some(0.0));
    let processed = s.value("virtpulse_events_processed_total", &[]).unwrap();
    let delay_total = s.value("virtpulse_event_delay_seconds_total", &[]).unwrap();
    let delay_max = s.value("virtpulse_event_delay_max_seconds", &[]).unwrap();
    eprintln!(
        "burst: {expected} events from 30 guests in {:.1} s ({:.0} events/s); agent hand-off delay mean {:.3} ms, max {:.3} ms",
        elapsed.as_secs_f64(),
        expected as f64 / elapsed.as_secs_f64(),
        delay_total / processed * 1e3,
        delay_max * 1e3
    );
    drop(guests);
}

/// A machine check injected through QEMU's monitor (what a real memory
/// failure looks like to libvirt).
#[test]
fn memory_failure_matches_virsh() {
    let capture = Capture::start(&[]);
    let name = Guest::name_for("mce");
    let agent = Agent::start(&format!("{STDOUT}[domains]\ninclude = [\"{name}\"]\n"));
    let g = Guest::start_named(&name, GuestSpec::default());
    // Needs a read-write connection: the test's virsh, not the agent.
    virsh::must(&["qemu-monitor-command", &g.name, "--hmp", "mce 0 9 0xbd000000000000c0 0xd 0x62000 0x8c"]);
    wait_for(Duration::from_secs(20), "virsh to print the memory failure", || {
        capture.of(&name).iter().any(|e| e.name == "memory-failure").then_some(())
    });
    g.destroy();
    assert_same_events(&agent, &capture, "domain", &name, "Stopped Destroyed");
    let recs = event_records(&agent, "domain", &name);
    let mf = recs.iter().find(|r| r["event"]["name"] == "memory_failure").expect("memory_failure recorded");
    assert_eq!(mf["event"]["detail"], "guest");
    let s = agent.scrape();
    assert!(s
        .value("libvirt_domain_last_event_timestamp_seconds", &[("domain", name.as_str()), ("event", "memory_failure")])
        .is_some());
}
