//! Events that need a guest that acts (a TCG Linux guest): balloon change,
//! guest agent channel, NIC MAC change, RTC change, block threshold,
//! watchdog, PM suspend and wakeup, device unplug acknowledged by the guest,
//! and a guest panic. Each recorded event must equal what `virsh event`
//! printed for it.

mod common;

use std::time::Duration;

use common::agent::{Agent, STDOUT};
use common::events::{normalize_virsh, virsh_view, Capture};
use common::linux::LinuxGuest;
use common::{virsh, wait_for};
use serde_json::Value;

fn records_of(agent: &Agent, name: &str) -> Vec<Value> {
    agent
        .records()
        .into_iter()
        .filter(|r| r["kind"] == "event" && r["event"]["name"] != "resync" && r["domain"]["name"] == name)
        .collect()
}

#[test]
fn guest_driven_events_match_virsh() {
    let capture = Capture::start(&[]);
    let tag = "lin";
    let agent = Agent::start(&format!("{STDOUT}[domains]\ninclude = [\"{}{tag}-*\"]\n", common::guest::PREFIX));
    // A virtio-mem device the guest can be asked to grow.
    let vmem = "<memory model='virtio-mem'><target><size unit='MiB'>128</size><node>0</node>\
        <block unit='MiB'>2</block><requested unit='MiB'>0</requested></target></memory>";
    let numa = "<maxMemory slots='4' unit='MiB'>1024</maxMemory>\
        <cpu><numa><cell id='0' cpus='0' memory='192' unit='MiB'/></numa></cpu>";
    let lg = LinuxGuest::start_with(tag, "", numa);
    let name = lg.guest.name.clone();
    let v = |args: &[&str]| virsh::must(args);
    let wait_virsh = |what: &str| {
        wait_for(Duration::from_secs(60), &format!("virsh to print {what}"), || {
            capture.of(&name).iter().any(|e| format!("{} {}", e.name, e.text).contains(what)).then_some(())
        })
    };

    // Balloon: the guest's virtio_balloon driver gives memory back.
    v(&["setmem", &name, "160M", "--live"]);
    wait_virsh("balloon-change 163840KiB");
    // The guest agent channel: opening and closing the port.
    let port = lg.run("for p in /sys/class/virtio-ports/*; do grep -q guest_agent $p/name && basename $p; done");
    let port = port.lines().next().unwrap().trim().to_string();
    lg.run(&format!("exec 4<>/dev/{port}; sleep 1; exec 4>&-"));
    wait_virsh("state: 'disconnected'");
    // NIC MAC change (the interface trusts the guest's RX filters).
    lg.run("ip link set eth0 address 52:54:00:aa:bb:cc");
    wait_virsh("newMAC: 52:54:00:aa:bb:cc");
    // RTC: the guest sets its clock to another year.
    lg.run("date -s '2031-02-03 04:05:06' >/dev/null; hwclock -w");
    wait_virsh("rtc-change");
    // Block threshold: the guest writes past 1 MiB.
    v(&["domblkthreshold", &name, "vda", "1M"]);
    lg.run("dd if=/dev/urandom of=/dev/vda bs=64k count=48 seek=16 conv=fsync");
    wait_virsh("block-threshold");
    // Watchdog: armed with a 2 s heartbeat, then starved.
    lg.run("rmmod i6300esb; insmod /lib/modules/*/i6300esb.ko heartbeat=2; (exec 3>/dev/watchdog; echo 1 >&3; sleep 600) >/dev/null 2>&1 &");
    wait_virsh("watchdog none");
    // PM suspend to RAM, woken from the host.
    lg.send("echo mem > /sys/power/state");
    wait_virsh("PMSuspended Memory");
    v(&["dompmwakeup", &name]);
    wait_virsh("Started Event wakeup");
    // A disk plugged and unplugged; the guest acknowledges the removal.
    let disk = lg.guest.dir().join("hot.qcow2");
    assert!(std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", disk.to_str().unwrap(), "16M"])
        .status()
        .unwrap()
        .success());
    common::set_mode(&disk, 0o666);
    v(&["attach-disk", &name, disk.to_str().unwrap(), "vdb", "--driver", "qemu", "--subdriver", "qcow2", "--live"]);
    wait_virsh("device-added");
    v(&["detach-disk", &name, "vdb", "--live"]);
    wait_virsh("device-removed");
    // virtio-mem, plugged after the suspend (its driver cannot suspend):
    // the guest plugs the memory it is asked for.
    let vmem_xml = lg.guest.dir().join("vmem.xml");
    std::fs::write(&vmem_xml, vmem).unwrap();
    v(&["attach-device", &name, vmem_xml.to_str().unwrap(), "--live"]);
    wait_for(Duration::from_secs(30), "the virtio-mem device in the live XML", || {
        v(&["dumpxml", &name]).contains("virtio-mem").then_some(())
    });
    v(&["update-memory-device", &name, "--requested-size", "64MiB"]);
    wait_virsh("size: 65536");
    // A kernel panic, reported through pvpanic.
    lg.send("echo c > /proc/sysrq-trigger");
    wait_virsh("Crashed Panicked");

    let theirs: Vec<(String, String)> = capture.of(&name).iter().map(normalize_virsh).collect();
    let records = wait_for(Duration::from_secs(30), "the agent's records of every event", || {
        let r = records_of(&agent, &name);
        (r.len() >= theirs.len()).then_some(r)
    });
    let ours: Vec<(String, String)> = records.iter().map(virsh_view).collect();
    assert_eq!(ours, theirs, "agent records (left) vs virsh event (right)");
    for r in &records {
        common::schema::assert_valid(r);
    }
    let names: Vec<&str> = records.iter().map(|r| r["event"]["name"].as_str().unwrap()).collect();
    for expected in [
        "balloon_change",
        "agent_lifecycle",
        "nic_mac_change",
        "rtc_change",
        "block_threshold",
        "watchdog",
        "pm_suspend",
        "pm_wakeup",
        "device_added",
        "device_removed",
        "memory_device_size_change",
    ] {
        assert!(names.contains(&expected), "no {expected} event: {names:?}");
    }
    let s = agent.scrape();
    for last in ["watchdog", "crash", "block_threshold"] {
        let t = s.value("libvirt_domain_last_event_timestamp_seconds", &[("domain", name.as_str()), ("event", last)]);
        assert!(t.is_some_and(|t| t > 1.7e9), "last {last} timestamp: {t:?}");
    }
}

/// Hibernation (suspend to disk) needs swap: a 512 MiB second disk.
#[test]
fn suspend_to_disk_matches_virsh() {
    let capture = Capture::start(&[]);
    let tag = "hib";
    let agent = Agent::start(&format!("{STDOUT}[domains]\ninclude = [\"{}{tag}-*\"]\n", common::guest::PREFIX));
    let dir = common::scratch_dir("hib-swap");
    let swap = dir.path().join("swap.qcow2");
    assert!(std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", swap.to_str().unwrap(), "512M"])
        .status()
        .unwrap()
        .success());
    common::set_mode(&swap, 0o666);
    let disk = format!(
        "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{}'/><target dev='vdb' bus='virtio'/></disk>",
        swap.display()
    );
    let lg = LinuxGuest::start(tag, &disk);
    let name = lg.guest.name.clone();
    lg.run("mkswap /dev/vdb >/dev/null && swapon /dev/vdb && echo 0 > /sys/power/image_size");
    lg.send("echo disk > /sys/power/state");
    wait_for(Duration::from_secs(120), "virsh to print the hibernation's end", || {
        capture.of(&name).iter().any(|e| e.text == "Stopped Shutdown").then_some(())
    });
    let theirs: Vec<(String, String)> = capture.of(&name).iter().map(normalize_virsh).collect();
    let records = wait_for(Duration::from_secs(30), "the agent's records", || {
        let r = records_of(&agent, &name);
        (r.len() >= theirs.len()).then_some(r)
    });
    let ours: Vec<(String, String)> = records.iter().map(virsh_view).collect();
    assert_eq!(ours, theirs);
    assert!(records.iter().any(|r| r["event"]["name"] == "pm_suspend_disk"));
    assert!(records.iter().any(|r| r["event"]["type"] == "pmsuspended" && r["event"]["detail"] == "disk"));
}
