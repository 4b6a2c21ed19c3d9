//! What the domain XML says about tuning (I/O limits, CPU shares, pinning)
//! and block jobs in flight, compared with virsh: the tuning series follow
//! a change within a cycle of its event, without the agent re-reading the
//! other domains' XML, and block copy progress is read while it runs.

mod common;

use std::time::Duration;

use common::agent::Agent;
use common::exposition::Scrape;
use common::guest::{Guest, GuestSpec};
use common::{virsh, wait_for};

fn xml_reads(s: &Scrape) -> f64 {
    s.value("virtpulse_domain_xml_reads_total", &[]).expect("virtpulse_domain_xml_reads_total")
}

/// `name : value` lines of virsh's blkdeviotune and schedinfo output.
fn virsh_fields(out: &str) -> std::collections::BTreeMap<String, String> {
    out.lines().filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).collect()
}

/// Runs `change`, waits until `seen` holds, and returns how many domain XMLs
/// the agent read meanwhile.
fn change_and_count_reads(agent: &Agent, what: &str, change: &[&str], seen: impl Fn(&Scrape) -> bool) -> f64 {
    let before = xml_reads(&agent.scrape());
    virsh::must(change);
    let s = wait_for(Duration::from_secs(10), what, || {
        let s = agent.scrape();
        seen(&s).then_some(s)
    });
    // A read the event asked for twice (two events, one change) would show
    // within a cycle: wait one out before counting.
    agent.wait_cycles_of("domain_stats", 2, Duration::from_secs(10));
    let after = xml_reads(&agent.scrape()).max(xml_reads(&s));
    after - before
}

#[test]
fn tuning_follows_each_change_and_rereads_only_that_domains_xml() {
    let _load = common::light();
    let guests: Vec<Guest> = (0..3).map(|_| Guest::start("tuning", GuestSpec::tenant())).collect();
    let names: Vec<&str> = guests.iter().map(|g| g.name.as_str()).collect();
    // The periodic XML refresh is far away: only events can bring a change in.
    let agent = Agent::start_for(
        &names,
        "[collectors]\ninterval = \"1s\"\n[collectors.domain_stats]\nmetadata_refresh = \"10m\"\n[metrics]\nprofile = \"everything\"\n",
    );
    let g = &guests[0];
    let uuid = g.uuid.as_str();
    wait_for(Duration::from_secs(30), "every guest's XML read once", || {
        let s = agent.scrape();
        guests.iter().all(|g| s.value("libvirt_domain_info", &[("uuid", g.uuid.as_str())]).is_some()).then_some(())
    });
    agent.wait_cycles_of("domain_stats", 2, Duration::from_secs(10));

    // I/O limits: virsh blkdeviotune sets them live, the TUNABLE event
    // brings them in.
    let iops = |s: &Scrape, dir: &str, limit: &str| {
        s.value(
            "libvirt_domain_block_iotune_operations_per_second",
            &[("uuid", uuid), ("device", "vda"), ("direction", dir), ("limit", limit)],
        )
    };
    let bytes = |s: &Scrape, dir: &str| {
        s.value(
            "libvirt_domain_block_iotune_bytes_per_second",
            &[("uuid", uuid), ("device", "vda"), ("direction", dir), ("limit", "base")],
        )
    };
    let reads = change_and_count_reads(
        &agent,
        "the iotune limits",
        &[
            "blkdeviotune",
            &g.name,
            "vda",
            "--total-iops-sec",
            "1234",
            "--total-iops-sec-max",
            "2000",
            "--read-bytes-sec",
            "5000000",
            "--write-bytes-sec",
            "3000000",
            "--live",
        ],
        |s| iops(s, "total", "base") == Some(1234.0),
    );
    assert_eq!(reads, 1.0, "one change to one domain: its XML only is read again");
    let s = agent.scrape();
    let tune = virsh_fields(&virsh::must(&["blkdeviotune", &g.name, "vda"]));
    let want = |k: &str| tune[k].parse::<f64>().unwrap();
    assert_eq!(iops(&s, "total", "base"), Some(want("total_iops_sec")));
    assert_eq!(iops(&s, "total", "burst"), Some(want("total_iops_sec_max")));
    assert_eq!(bytes(&s, "read"), Some(want("read_bytes_sec")));
    assert_eq!(bytes(&s, "write"), Some(want("write_bytes_sec")));
    // Limits not set are not shown as zero.
    assert_eq!(want("read_iops_sec"), 0.0);
    assert_eq!(iops(&s, "read", "base"), None);
    // The other domains have none.
    for other in &guests[1..] {
        assert!(s
            .find("libvirt_domain_block_iotune_operations_per_second", &[("uuid", other.uuid.as_str())])
            .is_empty());
    }

    // CPU shares (virsh schedinfo).
    let reads = change_and_count_reads(
        &agent,
        "the new CPU shares",
        &["schedinfo", &g.name, "--live", "--set", "cpu_shares=512"],
        |s| s.value("libvirt_domain_cpu_shares", &[("uuid", uuid)]) == Some(512.0),
    );
    assert_eq!(reads, 1.0);
    let sched = virsh_fields(&virsh::must(&["schedinfo", &g.name]));
    assert_eq!(sched["cpu_shares"], "512");
    let s = agent.scrape();
    if let Some(quota) = sched.get("vcpu_quota").and_then(|v| v.parse::<f64>().ok()) {
        // Seconds in the metric, microseconds in virsh (negative: no limit).
        let got = s.value("libvirt_domain_cpu_quota_seconds", &[("uuid", uuid)]);
        assert!(got.is_none() || got == Some(quota / 1e6), "quota {got:?} vs virsh {quota}");
    }

    // vCPU and emulator pinning (virsh vcpupin / emulatorpin). vCPU 0 runs
    // SeaBIOS (the others wait for a start-up IPI that never comes, asleep
    // where they last ran), so it is the one seen to move.
    let pinned = |s: &Scrape, vcpu: &str, cpuset: &str| {
        s.value("libvirt_domain_vcpu_pinning_info", &[("uuid", uuid), ("vcpu", vcpu), ("cpuset", cpuset)]) == Some(1.0)
    };
    let reads =
        change_and_count_reads(&agent, "vCPU 0 pinned to CPU 0", &["vcpupin", &g.name, "0", "0", "--live"], |s| {
            pinned(s, "0", "0")
        });
    assert_eq!(reads, 1.0);
    let vcpupin = virsh::must(&["vcpupin", &g.name, "--vcpu", "0"]);
    assert!(vcpupin.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["0", "0"]), "{vcpupin}");
    let reads =
        change_and_count_reads(&agent, "the emulator pinned to CPU 1", &["emulatorpin", &g.name, "1", "--live"], |s| {
            s.value("libvirt_domain_emulator_pinning_info", &[("uuid", uuid), ("cpuset", "1")]) == Some(1.0)
        });
    assert_eq!(reads, 1.0);
    let emulatorpin = virsh::must(&["emulatorpin", &g.name]);
    assert!(emulatorpin.lines().any(|l| l.trim().ends_with(": 1")), "{emulatorpin}");

    // Where each vCPU runs (virDomainGetVcpus) equals virsh vcpuinfo's CPU
    // before or after the agent's read; the pinned one runs on CPU 0.
    let vcpu_cpus = || -> Vec<f64> {
        let out = virsh::must(&["vcpuinfo", &g.name]);
        out.lines()
            .filter_map(|l| l.split_once(':'))
            .filter(|(k, _)| k.trim() == "CPU")
            .map(|(_, v)| v.trim().parse().unwrap())
            .collect()
    };
    wait_for(Duration::from_secs(10), "vCPU 0 on CPU 0, the others where virsh vcpuinfo says", || {
        let before = vcpu_cpus();
        let s = agent.scrape();
        let after = vcpu_cpus();
        let agent_cpus: Vec<Option<f64>> =
            (0..4).map(|n| s.value("libvirt_domain_vcpu_cpu", &[("uuid", uuid), ("vcpu", &n.to_string())])).collect();
        (before.len() == 4
            && agent_cpus[0] == Some(0.0)
            && (0..4).all(|n| agent_cpus[n] == Some(before[n]) || agent_cpus[n] == Some(after[n])))
        .then_some(())
    });
    let s = agent.scrape();
    // The others' pinning is untouched by this domain's change.
    for other in &guests[1..] {
        assert!(s.find("libvirt_domain_vcpu_pinning_info", &[("uuid", other.uuid.as_str())]).is_empty());
    }
}

#[test]
fn block_copy_progress_equals_virsh_blockjob_until_aborted() {
    let _load = common::light();
    // A raw data disk full of non-zero data, so that the copy has work to do.
    // QEMU's mirror copies in 16 MiB steps: at 4 MiB/s one every 4 s, and
    // the 64 MiB take 16 s.
    let data_dir = common::scratch_dir("blockcopy");
    let data = data_dir.path().join("data.raw");
    std::fs::write(&data, vec![0x55u8; 64 << 20]).unwrap();
    common::set_mode(&data, 0o666);
    let spec = GuestSpec {
        // Block copy needs a transient domain (or a transient job).
        persistent: false,
        extra_devices: format!(
            "<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='{}'/><target dev='vdc' bus='virtio'/></disk>",
            data.display()
        ),
        ..GuestSpec::default()
    };
    let g = Guest::start("blockcopy", spec);
    let uuid = g.uuid.as_str();
    // No event says a copy started: the XML (its <mirror>) does, read each second here.
    let agent = Agent::start_for(
        &[&g.name],
        "[collectors]\ninterval = \"1s\"\n[collectors.domain_stats]\nmetadata_refresh = \"1s\"\n",
    );
    agent.wait_cycles_of("domain_stats", 2, Duration::from_secs(20));
    let labels = [("uuid", uuid), ("device", "vdc"), ("type", "copy")];
    assert!(agent.scrape().find("libvirt_domain_block_job_current_bytes", &[("uuid", uuid)]).is_empty());

    let dest = data_dir.path().join("copy.raw");
    virsh::must(&["blockcopy", &g.name, "vdc", dest.to_str().unwrap(), "--format", "raw", "--bandwidth", "4"]);
    let raw = |key: &str| -> f64 {
        let out = virsh::must(&["blockjob", &g.name, "vdc", "--raw", "--bytes"]);
        let v = out
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key} in virsh blockjob --raw: {out}"));
        v.parse().unwrap()
    };
    let first = wait_for(Duration::from_secs(15), "the copy's progress", || {
        agent.scrape().value("libvirt_domain_block_job_current_bytes", &labels).filter(|v| *v > 0.0)
    });
    // What the agent read last lies between two of virsh's reads around it.
    let lower = raw("cur");
    let s = agent.scrape();
    let upper = raw("cur");
    let current = s.value("libvirt_domain_block_job_current_bytes", &labels).unwrap();
    assert!(current <= upper, "agent {current} ahead of virsh {upper}");
    assert!(current >= first && lower > 0.0);
    assert_eq!(s.value("libvirt_domain_block_job_end_bytes", &labels), Some(raw("end")));
    assert_eq!(s.value("libvirt_domain_block_job_bandwidth_bytes_per_second", &labels), Some(raw("bandwidth")));
    assert_eq!(raw("bandwidth"), (4 << 20) as f64);
    let end = raw("end");
    assert!(end >= (64 << 20) as f64, "end {end}");
    // It moves, and is read each cycle.
    wait_for(Duration::from_secs(15), "the copy to progress", || {
        let v = agent.scrape().value("libvirt_domain_block_job_current_bytes", &labels)?;
        (v > current && v < end).then_some(())
    });

    virsh::must(&["blockjob", &g.name, "vdc", "--abort"]);
    wait_for(Duration::from_secs(15), "the job's series to go", || {
        let s = agent.scrape();
        s.find("libvirt_domain_block_job_current_bytes", &[("uuid", uuid)]).is_empty().then_some(())
    });
    assert!(virsh::run(&["blockjob", &g.name, "vdc", "--raw"]).map(|o| !o.contains("cur=")).unwrap_or(true));
    let s = agent.scrape();
    let cancelled: f64 = s
        .find("libvirt_events_total", &[("event", "block_job")])
        .iter()
        .filter(|x| x.labels.values().any(|v| v.contains("cancel")))
        .map(|x| x.value)
        .sum();
    assert!(cancelled >= 1.0, "the abort is counted as a cancelled block job event");
}
