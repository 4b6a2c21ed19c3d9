//! Domain jobs against real guests: a live memory dump whose progress the
//! agent follows, and a save (shorter than the interval) reported once as a
//! completed job with the statistics `virsh domjobinfo --completed` shows.
//! The guest starts after the agent: the collector lists it on its start event.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use common::agent::{Agent, STDOUT};
use common::guest::{Guest, GuestSpec};
use common::{virsh, wait_for};
use serde_json::Value;
use virtpulse::libvirt::typed_params::KeyInterner;

const JOBS_FAST: &str = "[collectors.jobs]\ninterval = \"200ms\"\n";

/// For following a running job: its domain is read every cycle (an idle
/// domain is otherwise read every `idle_interval`, six cycles by default,
/// and a dump can be over in one second), with a deadline a loaded
/// machine's monitor replies fit in.
const JOBS_EVERY_CYCLE: &str = "[collectors.jobs]\ninterval = \"500ms\"\nidle_interval = \"500ms\"\n";

fn jobs_of<'a>(records: &'a [Value], uuid: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["kind"] == "domain_job" && r["domain"]["uuid"] == uuid).collect()
}

fn field(r: &Value, key: &str) -> Option<u64> {
    r["fields"][key]["value"].as_u64()
}

/// `virsh domjobinfo --completed --keep-completed` in raw units, by libvirt key.
fn domjobinfo_completed(name: &str) -> BTreeMap<String, u64> {
    let out = virsh::must(&["domjobinfo", name, "--completed", "--keep-completed", "--rawstats"]);
    out.lines()
        .filter_map(|l| l.split_once(':'))
        .filter_map(|(k, v)| Some((k.trim().to_string(), v.trim().parse::<u64>().ok()?)))
        .collect()
}

#[test]
fn dump_progress_and_a_short_save_are_reported() {
    let agent =
        Agent::start(&format!("{JOBS_EVERY_CYCLE}{STDOUT}[domains]\ninclude = [\"{}job-*\"]\n", common::guest::PREFIX));
    agent.wait_cycles_of("jobs", 2, Duration::from_secs(20));
    // Started after the collector listed the domains (it keeps that listing
    // for a minute): its start event has them listed again, or its dump
    // below would go unseen. 2 GiB to write: a dump of a few seconds,
    // several 500 ms cycles.
    let mut g = Guest::start("job", GuestSpec { memory_mib: 2048, ..Default::default() });

    // A live dump writes all guest memory: a job of a few seconds.
    let dump = g.dir().join("dump.elf");
    let mut child = Command::new("virsh")
        .args(["-c", virsh::uri(), "dump", "--live", "--memory-only", &g.name, dump.to_str().unwrap()])
        .spawn()
        .unwrap();
    let mut seen_in_metrics = false;
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        let s = agent.scrape();
        let labels = [("uuid", g.uuid.as_str()), ("type", "unbounded"), ("operation", "dump")];
        seen_in_metrics |= s.value("libvirt_domain_job_memory_processed_bytes_total", &labels).is_some();
        assert!(started.elapsed() < Duration::from_secs(120), "dump did not finish");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(child.wait().unwrap().success(), "virsh dump failed");
    let _ = std::fs::remove_file(&dump);
    assert!(seen_in_metrics, "the running dump job never showed in /metrics");

    let records = agent.records();
    let running: Vec<&Value> = jobs_of(&records, &g.uuid)
        .into_iter()
        .filter(|r| field(r, "type") == Some(2) && field(r, "operation") == Some(8))
        .collect();
    eprintln!("the dump ran {:?}: {} samples of the running job", started.elapsed(), running.len());
    assert!(running.len() >= 2, "expected several samples of the running dump, got {}", running.len());
    let progress: Vec<u64> = running.iter().filter_map(|r| field(r, "memory_processed")).collect();
    assert!(progress.windows(2).all(|w| w[0] <= w[1]), "progress went backwards: {progress:?}");
    assert!(progress.first() < progress.last(), "progress did not move: {progress:?}");
    for r in &running {
        common::schema::assert_valid(r);
    }
    // The running job's series vanish once it is over.
    wait_for(Duration::from_secs(10), "the dump's series to vanish", || {
        let s = agent.scrape();
        s.find("libvirt_domain_job_time_elapsed_seconds", &[("uuid", g.uuid.as_str()), ("type", "unbounded")])
            .is_empty()
            .then_some(())
    });

    // A save of this guest takes tens of milliseconds: shorter than the
    // interval, so only the completed-job statistics can tell of it.
    let image = g.dir().join("save.img");
    virsh::must(&["save", &g.name, image.to_str().unwrap()]);
    let completed = wait_for(Duration::from_secs(20), "the completed save job", || {
        let recs = agent.records();
        let done: Vec<Value> = jobs_of(&recs, &g.uuid)
            .into_iter()
            .filter(|r| field(r, "type") == Some(3) && field(r, "operation") == Some(2))
            .cloned()
            .collect();
        (!done.is_empty()).then_some(done)
    });
    let expected = domjobinfo_completed(&g.name);
    let r = &completed[0];
    common::schema::assert_valid(r);
    for key in
        ["time_elapsed", "data_total", "data_processed", "memory_total", "memory_processed", "downtime", "setup_time"]
    {
        assert_eq!(field(r, key), expected.get(key).copied(), "{key}: record vs virsh domjobinfo --completed");
    }

    // Reported once, however many collections pass; kept on view in /metrics.
    agent.wait_cycles_of("jobs", 5, Duration::from_secs(20));
    let again: Vec<Value> = jobs_of(&agent.records(), &g.uuid)
        .into_iter()
        .filter(|r| field(r, "type") == Some(3) && field(r, "operation") == Some(2))
        .cloned()
        .collect();
    assert_eq!(again.len(), 1, "a completed job is reported once");
    let s = agent.scrape();
    let labels = [("uuid", g.uuid.as_str()), ("type", "completed"), ("operation", "save")];
    let elapsed = s.value("libvirt_domain_job_time_elapsed_seconds", &labels).expect("completed save in /metrics");
    assert_eq!(elapsed, expected["time_elapsed"] as f64 / 1000.0);
    let total = s.value("libvirt_domain_job_data_total_bytes", &labels).expect("data total of the save");
    assert_eq!(total, expected["data_total"] as f64);

    let _ = std::fs::remove_file(&image);
    g.undefine();
}

#[test]
fn completed_jobs_leave_the_metrics_after_the_retention() {
    let g = Guest::start("jobret", GuestSpec::default());
    // `virsh save` returns ~1.5 s after the job itself completed (QEMU still
    // has to exit), so the retention must outlast that to be seen at all.
    let retention = Duration::from_secs(5);
    let agent = Agent::start_for(&[&g.name], &format!("{JOBS_FAST}completed_retention = \"5s\"\n"));
    let image = g.dir().join("save.img");
    virsh::must(&["save", &g.name, image.to_str().unwrap()]);
    let labels = [("uuid", g.uuid.as_str()), ("type", "completed")];
    wait_for(Duration::from_secs(20), "the completed save in /metrics", || {
        agent.scrape().value("libvirt_domain_job_time_elapsed_seconds", &labels).map(|_| ())
    });
    let seen = Instant::now();
    wait_for(Duration::from_secs(20), "the completed save to leave /metrics", || {
        agent.scrape().value("libvirt_domain_job_time_elapsed_seconds", &labels).is_none().then_some(())
    });
    // Cycles a loaded machine skips can hold the snapshot a little longer.
    assert!(seen.elapsed() < retention + Duration::from_secs(5), "left after {:?}", seen.elapsed());
    let _ = std::fs::remove_file(&image);
}

/// A domain that vanishes between listing and reading its job answers with
/// "no domain", which the collector treats as "gone", not as a failure.
#[test]
fn vanished_domain_reads_as_no_domain() {
    let g = Guest::start("jobgone", GuestSpec { persistent: false, ..Default::default() });
    let conn = virsh::read_only_connection();
    let dom = conn.list_all_domains(0).unwrap().into_iter().find(|d| d.uuid() == g.uuid).expect("guest listed");
    g.destroy();
    let err = dom.job_stats(0, &mut KeyInterner::default()).expect_err("the domain is gone");
    assert!(err.is_no_domain(), "{err:?}");

    // And the running agent, with guests coming and going under it, never
    // counts that as an error.
    let agent = Agent::start(&format!("{JOBS_FAST}[domains]\ninclude = [\"{}churn-*\"]\n", common::guest::PREFIX));
    for _ in 0..6 {
        let churn = Guest::start("churn", GuestSpec { persistent: false, ..Default::default() });
        std::thread::sleep(Duration::from_millis(150));
        drop(churn);
    }
    agent.wait_cycles_of("jobs", 2, Duration::from_secs(20));
    let s = agent.scrape();
    assert_eq!(s.value("virtpulse_collections_total", &[("collector", "jobs"), ("result", "error")]), Some(0.0));
    assert!(!agent.log().contains("running job of"), "{}", agent.log());
}
