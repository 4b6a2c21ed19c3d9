//! The guest collector against real TCG Linux guests running Debian's
//! qemu-guest-agent (scripts/build-test-guest.sh): filesystems, OS,
//! hostname, users and addresses equal what `virsh guestinfo` and `virsh
//! domifaddr --source agent` say; a guest whose agent was stopped and one
//! whose agent port is open but never answers leave the good guest's data
//! fresh; a guest with many filesystems stays within the bound.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::agent::{Agent, STDOUT};
use common::linux::LinuxGuest;
use common::{virsh, wait_for};

/// `virsh guestinfo` as key -> value.
fn guestinfo(name: &str) -> Option<BTreeMap<String, String>> {
    let out = virsh::run(&["guestinfo", name]).ok()?;
    Some(
        out.lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .filter(|(k, _)| !k.is_empty())
            .collect(),
    )
}

/// `virsh domifaddr --source agent`: (interface, mac, family, address, prefix).
fn agent_addresses(name: &str) -> Vec<(String, String, String, String, String)> {
    let out = virsh::must(&["domifaddr", name, "--source", "agent"]);
    let mut rows = Vec::new();
    let (mut iface, mut mac) = (String::new(), String::new());
    for line in out.lines().skip(2) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        // Continuation lines ("-  -  ipv6 ...") repeat the interface above.
        let (i, m, fam, addr) = match cols.as_slice() {
            [i, m, fam, addr] => (*i, *m, *fam, *addr),
            _ => continue,
        };
        if i != "-" {
            iface = i.to_string();
            mac = m.to_string();
        }
        if fam == "N/A" {
            continue; // an interface without addresses
        }
        let (a, p) = addr.split_once('/').unwrap_or((addr, ""));
        rows.push((iface.clone(), mac.clone(), fam.to_string(), a.to_string(), p.to_string()));
    }
    rows
}

fn guest_config(names: &[&str], extra: &str) -> String {
    let list: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    format!(
        "{STDOUT}[collectors.domain_stats]\nenabled = false\n[collectors.jobs]\nenabled = false\n\
         [collectors.guest]\nenabled = true\ninterval = \"3s\"\ntimeout = \"3s\"\ncall_timeout = \"2s\"\n{extra}\n\
         [domains]\ninclude = [{}]\n",
        list.join(", ")
    )
}

#[test]
fn guest_data_equals_virsh_and_bad_agents_do_not_stall_the_good_one() {
    let good = LinuxGuest::with_data("ga", true);
    let stopped = LinuxGuest::with_data("gstop", true);
    let silent = LinuxGuest::with_data("gsilent", false);
    let (gname, sname, qname) = (good.guest.name.clone(), stopped.guest.name.clone(), silent.guest.name.clone());
    // The stopped guest's agent goes away; the silent guest opens its agent
    // port and never answers (libvirt then waits for its own timeout).
    stopped.run("killall qemu-ga; sleep 1");
    silent.send(
        "for p in /sys/class/virtio-ports/*; do grep -q guest_agent $p/name && exec 3<>/dev/$(basename $p); done; sleep 100000",
    );

    let agent = Agent::start(&guest_config(&[&gname, &sname, &qname], ""));
    let info = guestinfo(&gname).expect("virsh guestinfo");
    let fs_index = info
        .iter()
        .find(|(k, v)| k.ends_with(".mountpoint") && *v == "/data")
        .map(|(k, _)| k.trim_end_matches(".mountpoint").to_string())
        .expect("virsh guestinfo lists /data");
    let total: f64 = info[&format!("{fs_index}.total-bytes")].parse().unwrap();
    let used: f64 = info[&format!("{fs_index}.used-bytes")].parse().unwrap();

    // Filesystems, users, OS and hostname equal virsh's.
    let s = wait_for(Duration::from_secs(120), "guest filesystem series", || {
        let s = agent.scrape();
        s.value("libvirt_domain_guest_filesystem_size_bytes", &[("domain", &gname), ("mountpoint", "/data")]).map(|_| s)
    });
    let fs =
        [("domain", gname.as_str()), ("mountpoint", "/data"), ("fstype", info[&format!("{fs_index}.fstype")].as_str())];
    assert_eq!(s.value("libvirt_domain_guest_filesystem_size_bytes", &fs), Some(total));
    assert_eq!(s.value("libvirt_domain_guest_filesystem_used_bytes", &fs), Some(used));
    assert_eq!(
        s.value("libvirt_domain_guest_filesystems", &[("domain", &gname)]),
        Some(info["fs.count"].parse().unwrap())
    );
    assert_eq!(s.value("libvirt_domain_guest_users", &[("domain", &gname)]), Some(info["user.count"].parse().unwrap()));
    let os = s.find("libvirt_domain_guest_os_info", &[("domain", &gname)]);
    assert_eq!(os.len(), 1, "one OS info series");
    assert_eq!(os[0].labels["os_id"], info["os.id"]);
    assert_eq!(os[0].labels["os_id"], "virtpulse-test");
    assert_eq!(os[0].labels["kernel_release"], info["os.kernel-release"]);
    assert_eq!(os[0].labels["hostname"], info["hostname"]);
    assert_eq!(os[0].labels["hostname"], "vptest");
    // The test daemon (libvirt 11.3) and qemu-ga 10 both know load averages.
    // Load moves, so ours (read by a cycle that started after the first
    // virsh read) must lie between virsh's readings before and after it.
    let load_before = guestinfo(&gname).expect("virsh guestinfo");
    agent.wait_cycles_of("guest", 2, Duration::from_secs(60));
    let load_s = agent.scrape();
    let load_after = guestinfo(&gname).expect("virsh guestinfo");
    for (key, metric) in [
        ("load.1m", "libvirt_domain_guest_load1"),
        ("load.5m", "libvirt_domain_guest_load5"),
        ("load.15m", "libvirt_domain_guest_load15"),
    ] {
        let theirs = |info: &BTreeMap<String, String>| -> f64 {
            info.get(key).unwrap_or_else(|| panic!("virsh guestinfo reports {key}: {info:?}")).parse().unwrap()
        };
        let (a, b) = (theirs(&load_before), theirs(&load_after));
        let ours = load_s.value(metric, &[("domain", &gname)]).unwrap_or_else(|| panic!("{metric} exported"));
        assert!(
            ours >= a.min(b) - 0.25 && ours <= a.max(b) + 0.25,
            "{metric} {ours} outside virsh's {key} readings {a} (before) and {b} (after)"
        );
    }

    // Addresses from the agent equal virsh domifaddr --source agent.
    let theirs = agent_addresses(&gname);
    assert!(theirs.iter().any(|r| r.3 == "192.0.2.10" && r.4 == "24"), "{theirs:?}");
    let ours = s.find("libvirt_domain_guest_interface_address_info", &[("domain", &gname), ("source", "agent")]);
    let mut ours: Vec<_> = ours
        .iter()
        .map(|x| {
            let l = |k: &str| x.labels[k].clone();
            (l("interface"), l("mac"), l("family"), l("address"), l("prefix"))
        })
        .collect();
    let mut theirs = theirs;
    ours.sort();
    theirs.sort();
    assert_eq!(ours, theirs);

    // The bad guests: counted, never in the way. The good guest's series
    // are there in every scrape over several cycles, and cycles succeed.
    let cycles = agent.ok_cycles_of("guest");
    let until = Instant::now() + Duration::from_secs(90);
    let mut scrapes = 0;
    loop {
        let s = agent.scrape();
        assert!(
            s.value("libvirt_domain_guest_filesystem_size_bytes", &fs).is_some(),
            "the good guest's data went missing while the others misbehave"
        );
        scrapes += 1;
        let done = s.value("virtpulse_collections_total", &[("collector", "guest"), ("result", "ok")]).unwrap_or(0.0);
        if done >= cycles + 3.0 && scrapes >= 15 {
            break;
        }
        assert!(Instant::now() < until, "guest cycles stalled: {done} after {cycles}");
        std::thread::sleep(Duration::from_millis(700));
    }
    let s = agent.scrape();
    assert!(s.value("virtpulse_guest_agent_errors_total", &[]).unwrap() >= 1.0, "the stopped agent is counted");
    assert!(s.value("virtpulse_guest_timeouts_total", &[]).unwrap() >= 1.0, "the silent agent timed out");
    assert!(s.value("virtpulse_guest_skipped_total", &[]).unwrap() >= 1.0, "the silent guest is skipped while busy");
    assert!(
        s.value("libvirt_domain_guest_filesystem_size_bytes", &[("domain", &qname)]).is_none(),
        "nothing invented for the silent guest"
    );

    // The page, guest series and the read-write connection's own included,
    // is clean for promtool.
    let text = agent.scrape_text();
    assert!(text.contains("libvirt_up{uri=") && text.contains("connection=\"guest\""), "both connections report");
    common::exposition::assert_promtool_clean(&text);

    // Records: one guest record per domain with the agent's fields.
    let rec = agent
        .records()
        .into_iter()
        .rev()
        .find(|r| r["kind"] == "guest" && r["domain"]["name"] == gname.as_str())
        .expect("a guest record");
    let fields = rec["fields"].as_object().expect("fields");
    assert_eq!(fields["os.id"]["value"], "virtpulse-test");
    assert_eq!(fields[&format!("{fs_index}.total-bytes")]["value"].as_f64(), Some(total));
}

#[test]
fn a_guest_with_many_filesystems_stays_within_the_bound() {
    let lg = LinuxGuest::with_data("gmany", false);
    // Distinct block devices (the agent skips bind mounts): loop devices.
    let out = lg.run("for i in $(seq 1 12); do dd if=/dev/zero of=/tmp/img$i bs=1k count=1024 2>/dev/null && mke2fs -q -F /tmp/img$i >/dev/null && mkdir -p /m$i && mount -t ext4 -o loop /tmp/img$i /m$i; done; grep -c ' /m' /proc/mounts; ls /dev/loop* | head -3; dmesg | tail -2");
    assert!(out.trim_start().starts_with("12"), "loop mounts: {out}");
    lg.run("start-ga");
    let name = lg.guest.name.clone();
    let deadline = Instant::now() + Duration::from_secs(240);
    let info = loop {
        let g = guestinfo(&name);
        if let Some(g) =
            g.clone().filter(|g| g.get("fs.count").and_then(|c| c.parse::<u32>().ok()).is_some_and(|c| c >= 13))
        {
            break g;
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not list 13 filesystems: {g:?}; mounts: {}",
            lg.run("cat /proc/mounts")
        );
        std::thread::sleep(Duration::from_secs(2));
    };
    let agent = Agent::start(&guest_config(&[&name], "max_filesystems = 4\nmax_string_bytes = 64"));
    let s = wait_for(Duration::from_secs(120), "guest filesystem series", || {
        let s = agent.scrape();
        s.value("libvirt_domain_guest_filesystems", &[("domain", &name)]).map(|_| s)
    });
    assert_eq!(
        s.value("libvirt_domain_guest_filesystems", &[("domain", &name)]),
        Some(info["fs.count"].parse().unwrap())
    );
    let series = s.find("libvirt_domain_guest_filesystem_size_bytes", &[("domain", &name)]);
    assert_eq!(series.len(), 4, "at most max_filesystems series");
    assert!(s.value("virtpulse_guest_truncated_total", &[("what", "filesystems")]).unwrap() > 0.0);
}
