//! The agent against a libvirtd that goes away: (d) stopped and started
//! again while the agent runs, (e) absent when the agent starts. The daemon
//! is this test binary's own (tests/common/daemon.rs), so no other test, and
//! never the host's daemon, sees it down.

mod common;

use std::time::Duration;

use common::agent::{Agent, STDOUT};
use common::compare::{compare, has_full_stats};
use common::guest::{Guest, GuestSpec};
use common::{daemon, virsh, wait_for};

/// Starts the private daemon again however the test ends.
struct RestartOnDrop;

impl Drop for RestartOnDrop {
    fn drop(&mut self) {
        let d = daemon::shared();
        if !d.running() {
            d.restart();
        }
    }
}

fn stop_libvirtd() {
    daemon::shared().stop();
}

fn start_libvirtd() {
    daemon::shared().restart();
}

const CONFIG: &str =
    "[collectors]\ninterval = \"1s\"\n[libvirt]\nreconnect_min_backoff = \"200ms\"\nreconnect_max_backoff = \"1s\"\n[metrics]\nprofile = \"everything\"\n";

fn resyncs(agent: &Agent, g: &Guest) -> Vec<serde_json::Value> {
    agent
        .records()
        .into_iter()
        .filter(|r| r["event"]["name"] == "resync" && r["domain"]["uuid"] == g.uuid.as_str())
        .collect()
}

fn up(agent: &Agent) -> Option<f64> {
    agent.scrape().value("libvirt_up", &[])
}

fn assert_matches_virsh(agent: &Agent, g: &Guest) {
    wait_for(Duration::from_secs(30), "the guest's full stats", || {
        has_full_stats(&agent.scrape(), &g.uuid).then_some(())
    });
    let before = virsh::domstats(&g.name, &[]);
    agent.wait_cycles(2, Duration::from_secs(20));
    let s = agent.scrape();
    let after = virsh::domstats(&g.name, &[]);
    let problems = compare(g, &before, &s, &after);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn libvirtd_restart_and_late_start() {
    let _guard = RestartOnDrop;
    let g = Guest::start("restart", GuestSpec::default());

    // (d) libvirtd goes away and comes back while the agent runs.
    let agent = Agent::start_for(&[&g.name], &format!("{CONFIG}{STDOUT}"));
    wait_for(Duration::from_secs(20), "libvirt_up 1", || (up(&agent) == Some(1.0)).then_some(()));
    assert_matches_virsh(&agent, &g);
    let first = wait_for(Duration::from_secs(20), "the first resync record", || resyncs(&agent, &g).first().cloned());
    assert_eq!(first["event"]["type"], "running");
    stop_libvirtd();
    wait_for(Duration::from_secs(30), "libvirt_up 0 after libvirtd stopped", || {
        (up(&agent) == Some(0.0)).then_some(())
    });
    start_libvirtd();
    wait_for(Duration::from_secs(30), "libvirt_up 1 after libvirtd came back", || {
        (up(&agent) == Some(1.0)).then_some(())
    });
    let s = agent.scrape();
    assert!(s.value("virtpulse_libvirt_connects_total", &[]).unwrap() >= 2.0);
    assert!(s.value("virtpulse_libvirt_disconnects_total", &[]).unwrap() >= 1.0);
    assert_matches_virsh(&agent, &g);

    // Callbacks are registered again and a resync record tells the state.
    let again = wait_for(Duration::from_secs(20), "a resync record after the reconnect", || {
        let r = resyncs(&agent, &g);
        (r.len() >= 2).then_some(r)
    });
    assert_eq!(again[1]["event"]["type"], "running");
    assert!(again[1]["event"]["seq"].as_u64() > again[0]["event"]["seq"].as_u64());
    virsh::must(&["suspend", &g.name]);
    virsh::must(&["resume", &g.name]);
    wait_for(Duration::from_secs(20), "the suspend event after the reconnect", || {
        agent
            .records()
            .iter()
            .any(|r| {
                r["domain"]["uuid"] == g.uuid.as_str()
                    && r["event"]["type"] == "suspended"
                    && r["event"]["detail"] == "paused"
            })
            .then_some(())
    });
    assert!(agent.scrape().value("virtpulse_event_resyncs_total", &[]).unwrap() >= 2.0);
    assert_eq!(agent.stop(), Some(0), "clean exit on SIGTERM");

    // (e) the agent starts while libvirtd is down and catches up later.
    stop_libvirtd();
    let agent = Agent::start_for(&[&g.name], CONFIG);
    let s = agent.scrape();
    assert_eq!(s.value("libvirt_up", &[]), Some(0.0));
    assert_eq!(s.of_domain(&g.uuid).count(), 0, "no domain series without libvirt");
    wait_for(Duration::from_secs(20), "a not_connected cycle", || {
        (agent.scrape().value("virtpulse_collections_total", &[("result", "not_connected")]).unwrap_or(0.0) >= 1.0)
            .then_some(())
    });
    start_libvirtd();
    wait_for(Duration::from_secs(30), "libvirt_up 1 once libvirtd appeared", || {
        (up(&agent) == Some(1.0)).then_some(())
    });
    assert_matches_virsh(&agent, &g);
}
