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
