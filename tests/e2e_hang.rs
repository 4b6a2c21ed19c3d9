//! A guest whose QEMU process is stopped (SIGSTOP) must delay neither
//! /metrics nor the other guests' values, must show as a stuck monitor
//! (control state occupied, for a growing time) while the others stay ok,
//! and the agent must recover when the process resumes (SIGCONT).

mod common;

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::agent::Agent;
use common::compare::{compare, has_full_stats};
use common::guest::{Guest, GuestSpec};
use common::{virsh, wait_for};

const DEADLINE: Duration = Duration::from_secs(1);

/// The two tests share this binary's daemon, and must not overlap: while
/// libvirt destroys a guest (the other test ending) it holds that guest's
/// lock until QEMU exits, and every domain listing waits for it (`virsh
/// list` took 1.8 s beside `virsh destroy` of a running guest on libvirt
/// 11.3, 11.4 s beside a stopped one's). A 1 s cycle that times out then is
/// the daemon's stall, not the hung guest's: one test at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn exclusive() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

#[test]
fn stopped_qemu_delays_neither_metrics_nor_other_guests() {
    let _exclusive = exclusive();
    let hung = Guest::start("hang", GuestSpec::default());
    let healthy = Guest::start("hang", GuestSpec::default());
    let agent = Agent::start_for(
        &[&hung.name, &healthy.name],
        "[collectors]\ninterval = \"1s\"\ntimeout = \"1s\"\n[collectors.jobs]\ninterval = \"1s\"\n[collectors.health]\ninterval = \"1s\"\n[metrics]\nprofile = \"everything\"\n",
    );
    let control = |s: &common::exposition::Scrape, g: &Guest| {
        s.value("libvirt_domain_control_state", &[("uuid", g.uuid.as_str())])
    };
    let control_seconds = |s: &common::exposition::Scrape, g: &Guest| {
        s.value("libvirt_domain_control_state_seconds", &[("uuid", g.uuid.as_str())])
    };
    // A guest's monitor can be occupied for a while as it starts (libvirt's
    // own start-up calls); what matters is that it settles to ok.
    wait_for(Duration::from_secs(90), "full stats and an ok monitor for both guests", || {
        let s = agent.scrape();
        (has_full_stats(&s, &hung.uuid)
            && has_full_stats(&s, &healthy.uuid)
            && control(&s, &hung) == Some(0.0)
            && control(&s, &healthy) == Some(0.0))
        .then_some(())
    });

    hung.signal("-STOP");
    let stopped_at = now();
    let mut slowest = Duration::ZERO;
    let mut timed_scrape = || {
        let (s, took) = agent.timed_scrape();
        slowest = slowest.max(took);
        s
    };

    // The agent hits the hang, gives up at the deadline, and keeps collecting.
    wait_for(Duration::from_secs(20), "a collection that timed out on the stopped guest", || {
        let s = timed_scrape();
        (s.value("virtpulse_collections_total", &[("result", "timeout")]).unwrap_or(0.0) >= 1.0).then_some(())
    });
    let s = wait_for(Duration::from_secs(20), "successful collections after the hang", || {
        let s = timed_scrape();
        let last = s.value("virtpulse_collection_last_success_timestamp_seconds", &[]).unwrap_or(0.0);
        (last > stopped_at + DEADLINE.as_secs_f64() + 1.0).then_some(s)
    });
    assert!(s.value("virtpulse_libvirt_stuck_calls", &[]).unwrap() >= 1.0, "the stuck call is reported");

    // Which domain is stuck, and for how long: its monitor is occupied (a
    // call waits on the stopped QEMU), for a growing time, as `virsh
    // domcontrol` says; the other guest's monitor stays ok.
    let first = wait_for(Duration::from_secs(20), "the stopped guest's monitor occupied", || {
        let s = timed_scrape();
        (control(&s, &hung) == Some(2.0)).then(|| control_seconds(&s, &hung).unwrap_or(0.0))
    });
    let domcontrol = virsh::must(&["domcontrol", &hung.name]);
    assert!(domcontrol.contains("occupied"), "virsh domcontrol: {domcontrol}");
    let later = wait_for(Duration::from_secs(20), "the occupied time to grow", || {
        let s = timed_scrape();
        let t = control_seconds(&s, &hung).unwrap_or(0.0);
        (control(&s, &hung) == Some(2.0) && t >= first + 1.0).then_some(t)
    });
    assert!(later > first);
    // The healthy guest's monitor is ok, or busy for a moment with one of
    // the agent's own calls (its cycles are 1 s here), never for long.
    let s = timed_scrape();
    let healthy_busy = if control(&s, &healthy) == Some(0.0) { 0.0 } else { control_seconds(&s, &healthy).unwrap() };
    assert!(healthy_busy < 1.0, "the healthy guest's monitor busy for {healthy_busy} s");

    // The healthy guest's values are fresh and equal virsh's.
    // A cycle that waited on the hung guest would run into its deadline:
    // none times out, and the last one took less than the deadline. (Not
    // the wall time between cycles: on a loaded machine that measures the
    // scheduler, not the agent.)
    let timeouts = |s: &common::exposition::Scrape| {
        s.value("virtpulse_collections_total", &[("collector", "domain_stats"), ("result", "timeout")]).unwrap_or(0.0)
    };
    let timeouts_before = timeouts(&timed_scrape());
    let before = virsh::domstats(&healthy.name, &[]);
    agent.wait_cycles(2, Duration::from_secs(20));
    let s = timed_scrape();
    let after = virsh::domstats(&healthy.name, &[]);
    let problems = compare(&healthy, &before, &s, &after);
    assert!(problems.is_empty(), "healthy guest while the other is hung:\n{}", problems.join("\n"));
    assert_eq!(timeouts(&s), timeouts_before, "domain stats cycles timed out while a guest is hung");
    let cycle = s.value("virtpulse_collection_duration_seconds", &[("collector", "domain_stats")]).unwrap();
    assert!(cycle < DEADLINE.as_secs_f64(), "a domain stats cycle took {cycle} s while a guest is hung");

    // Jobs go on too: the hung guest's job read is left stuck in the
    // background and skipped, while the healthy guest's dump is reported.
    let jobs_ok = |s: &common::exposition::Scrape| {
        s.value("virtpulse_collections_total", &[("collector", "jobs"), ("result", "ok")]).unwrap_or(0.0)
    };
    let jobs_before = jobs_ok(&s);
    let dump = healthy.dir().join("core");
    virsh::must(&["dump", &healthy.name, dump.to_str().unwrap()]);
    wait_for(Duration::from_secs(20), "the healthy guest's dump while the other is hung", || {
        let s = timed_scrape();
        let labels = [("uuid", healthy.uuid.as_str()), ("type", "completed")];
        (s.value("libvirt_domain_job_time_elapsed_seconds", &labels).is_some() && jobs_ok(&s) >= jobs_before + 2.0)
            .then_some(())
    });
    let _ = std::fs::remove_file(&dump);

    // The hung guest still reports what needs no QEMU monitor, and is flagged partial.
    assert_eq!(s.value("libvirt_domain_state", &[("uuid", hung.uuid.as_str())]), Some(1.0));
    assert!(s.value("virtpulse_collection_partial_records_total", &[]).unwrap() >= 1.0);
    assert!(slowest < DEADLINE, "a scrape took {slowest:?} while a guest was hung");

    hung.signal("-CONT");
    wait_for(Duration::from_secs(30), "recovery after SIGCONT", || {
        let s = agent.scrape();
        (s.value("virtpulse_libvirt_stuck_calls", &[]) == Some(0.0)
            && has_full_stats(&s, &hung.uuid)
            && control(&s, &hung) == Some(0.0))
        .then_some(())
    });
    let before = virsh::domstats(&hung.name, &[]);
    agent.wait_cycles(2, Duration::from_secs(20));
    let s = agent.scrape();
    let after = virsh::domstats(&hung.name, &[]);
    let problems = compare(&hung, &before, &s, &after);
    assert!(problems.is_empty(), "resumed guest:\n{}", problems.join("\n"));
}

#[test]
fn a_stuck_domain_in_one_chunk_leaves_the_other_chunks_fresh() {
    let _exclusive = exclusive();
    let hung = Guest::start("chunk-hang", GuestSpec::default());
    let healthy: Vec<Guest> = (0..2).map(|_| Guest::start("chunk-ok", GuestSpec::default())).collect();
    let names: Vec<&str> = std::iter::once(hung.name.as_str()).chain(healthy.iter().map(|g| g.name.as_str())).collect();
    // One domain per chunk: the hung guest's call blocks its own chunk only.
    let agent = Agent::start_for(
        &names,
        "[collectors]\ninterval = \"1s\"\ntimeout = \"1s\"\n[collectors.domain_stats]\nchunk_size = 1\nchunks_in_flight = 2\n[metrics]\nprofile = \"everything\"\n",
    );
    wait_for(Duration::from_secs(30), "full stats of every guest", || {
        let s = agent.scrape();
        (has_full_stats(&s, &hung.uuid) && healthy.iter().all(|g| has_full_stats(&s, &g.uuid))).then_some(())
    });
    let timeouts = |s: &common::exposition::Scrape| {
        s.value("virtpulse_collections_total", &[("collector", "domain_stats"), ("result", "timeout")]).unwrap_or(0.0)
    };
    let late = |s: &common::exposition::Scrape| {
        s.value("virtpulse_collection_chunks_missed_total", &[("reason", "late")]).unwrap_or(0.0)
    };
    let s0 = agent.scrape();
    hung.signal("-STOP");
    // The stuck chunk is left out of its cycle, which ends in time with the others.
    wait_for(Duration::from_secs(20), "the hung guest's chunk to be late once", || {
        (late(&agent.scrape()) > late(&s0)).then_some(())
    });
    for g in &healthy {
        let before = virsh::domstats(&g.name, &[]);
        agent.wait_cycles(2, Duration::from_secs(20));
        let s = agent.scrape();
        let after = virsh::domstats(&g.name, &[]);
        let problems = compare(g, &before, &s, &after);
        assert!(problems.is_empty(), "healthy guest beside a stuck chunk:\n{}", problems.join("\n"));
    }
    let s = agent.scrape();
    assert_eq!(timeouts(&s), timeouts(&s0), "no cycle ran past its deadline: the stuck chunk was left behind");
    // The next cycles skip the hung guest's monitor (its job is held): it
    // is back, with what needs no QEMU.
    wait_for(Duration::from_secs(20), "the hung guest back, partial", || {
        agent.scrape().value("libvirt_domain_state", &[("uuid", hung.uuid.as_str())]).map(|_| ())
    });
    hung.signal("-CONT");
    wait_for(Duration::from_secs(30), "recovery after SIGCONT", || {
        let s = agent.scrape();
        (s.value("virtpulse_libvirt_stuck_calls", &[]) == Some(0.0) && has_full_stats(&s, &hung.uuid)).then_some(())
    });
}
