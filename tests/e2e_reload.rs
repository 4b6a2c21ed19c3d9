//! SIGHUP reloads the configuration in place: the same process serves the
//! new selection and schedule, events keep their numbering and none is
//! lost during the reload, a broken file leaves the running configuration
//! serving (and says so in its metrics), and a Kafka sink added and removed
//! by reloads loses no event: what it held stays spooled for next time.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::agent::{toml_str, Agent, STDOUT};
use common::events::Capture;
use common::exposition::Scrape;
use common::guest::{Guest, GuestSpec};
use common::kafka::{sink_config, Broker, Reader};
use common::{virsh, wait_for};

fn include(names: &[&str]) -> String {
    let list: Vec<String> = names.iter().map(|n| toml_str(n)).collect();
    format!("[domains]\ninclude = [{}]\n", list.join(", "))
}

fn known(s: &Scrape, g: &Guest) -> bool {
    s.value("libvirt_domain_info", &[("uuid", g.uuid.as_str())]).is_some()
}

fn suspend_resume(name: &str) {
    virsh::must(&["suspend", name]);
    virsh::must(&["resume", name]);
}

/// The event records on stdout, by domain name.
fn event_records(agent: &Agent) -> Vec<serde_json::Value> {
    agent.records().into_iter().filter(|r| r["kind"] == "event").collect()
}

fn of_domain<'a>(records: &'a [serde_json::Value], name: &str) -> Vec<&'a serde_json::Value> {
    records.iter().filter(|r| r["domain"]["name"] == name && r["event"]["name"] != "resync").collect()
}

#[test]
fn include_and_interval_change_in_place_and_events_run_on() {
    let _load = common::light();
    let capture = Capture::start(&[]);
    let a = Guest::start("reload-a", GuestSpec::default());
    let b = Guest::start("reload-b", GuestSpec::default());
    // Defined and started before the agent runs: not its to see.
    let a_base = capture.wait_count(&a.name, 2, Duration::from_secs(20)).len();
    let config = |names: &[&str], interval: &str| {
        format!("{STDOUT}[collectors.domain_stats]\ninterval = \"{interval}\"\n{}", include(names))
    };
    let agent = Agent::start(&config(&[&a.name], "10s"));
    let s = wait_for(Duration::from_secs(30), "the included guest's series", || {
        let s = agent.scrape();
        known(&s, &a).then_some(s)
    });
    assert!(!known(&s, &b), "the other guest is left out");
    let started = s.value("process_start_time_seconds", &[]).unwrap();
    let cycles = agent.ok_cycles();

    // Both guests change state all through the reload.
    let stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let (stop, names) = (stop.clone(), [a.name.clone(), b.name.clone()]);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for n in &names {
                    suspend_resume(n);
                }
            }
        })
    };
    wait_for(Duration::from_secs(20), "events of the included guest on stdout", || {
        (of_domain(&event_records(&agent), &a.name).len() >= 4).then_some(())
    });
    assert!(agent.reload_with(&config(&[&a.name, &b.name], "1s")), "{}", agent.log());
    let b_before = capture.of(&b.name).len();
    let s = wait_for(Duration::from_secs(20), "the newly included guest's series", || {
        let s = agent.scrape();
        known(&s, &b).then_some(s)
    });
    // Same process, counters not reset, the new interval in force.
    assert_eq!(s.value("process_start_time_seconds", &[]), Some(started));
    assert!(agent.ok_cycles() >= cycles);
    agent.wait_cycles(3, Duration::from_secs(8));
    wait_for(Duration::from_secs(20), "events of the newly included guest", || {
        (of_domain(&event_records(&agent), &b.name).len() >= 4).then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    churn.join().unwrap();

    // Every event of the guest included all along is there, in order, and
    // every event of the other one since the reload.
    let a_all = capture.of(&a.name).len();
    wait_for(Duration::from_secs(20), "every event of the first guest on stdout", || {
        (of_domain(&event_records(&agent), &a.name).len() >= a_all - a_base).then_some(())
    });
    let b_all = capture.of(&b.name).len();
    let records = event_records(&agent);
    assert_eq!(of_domain(&records, &a.name).len(), a_all - a_base, "events of the guest included all along");
    let b_got = of_domain(&records, &b.name).len();
    assert!(
        b_got >= b_all - b_before && b_got <= b_all,
        "{b_got} events of the other guest; virsh saw {b_before} before the reload returned and {b_all} in all"
    );
    // Numbered without a gap across the reload (a gap would be a loss).
    let seqs: BTreeSet<u64> = records.iter().map(|r| r["event"]["seq"].as_u64().unwrap()).collect();
    let (first, last) = (*seqs.first().unwrap(), *seqs.last().unwrap());
    assert_eq!(seqs.len() as u64, last - first + 1, "seq runs from {first} to {last} with gaps");
    let s = agent.scrape();
    let dropped: f64 = s.find("virtpulse_events_dropped_total", &[]).iter().map(|x| x.value).sum();
    assert_eq!(dropped, 0.0);
    assert_eq!(s.value("virtpulse_config_reloads_total", &[("result", "success")]), Some(1.0));
}

#[test]
fn a_broken_file_leaves_the_running_configuration_serving() {
    let _load = common::light();
    let a = Guest::start("reload-bad", GuestSpec::default());
    let good = format!("[collectors]\ninterval = \"1s\"\n{}", include(&[&a.name]));
    let agent = Agent::start(&good);
    wait_for(Duration::from_secs(30), "the guest's series", || known(&agent.scrape(), &a).then_some(()));
    let s = agent.scrape();
    assert_eq!(s.value("virtpulse_config_last_reload_successful", &[]), Some(1.0));
    let loaded_at = s.value("virtpulse_config_last_reload_success_timestamp_seconds", &[]).unwrap();

    // A value the checks refuse, then a file that is no TOML at all.
    for broken in ["[collectors]\ninterval = \"fast\"\n", "[collectors\ninterval = 1s\n"] {
        assert!(!agent.reload_with(broken), "the broken file was accepted");
        let s = agent.scrape();
        assert_eq!(s.value("virtpulse_config_last_reload_successful", &[]), Some(0.0));
        assert_eq!(s.value("virtpulse_config_last_reload_success_timestamp_seconds", &[]), Some(loaded_at));
        // Still collecting as before.
        agent.wait_cycles(2, Duration::from_secs(10));
        assert!(known(&agent.scrape(), &a));
    }
    assert!(agent.log().contains("collectors.interval"), "the failing key is logged:\n{}", agent.log());
    assert_eq!(agent.scrape().value("virtpulse_config_reloads_total", &[("result", "failure")]), Some(2.0));

    // Fixed: applied, and the metric says so.
    assert!(agent.reload_with(&good));
    let s = agent.scrape();
    assert_eq!(s.value("virtpulse_config_last_reload_successful", &[]), Some(1.0));
    assert!(s.value("virtpulse_config_last_reload_success_timestamp_seconds", &[]).unwrap() >= loaded_at);
    assert_eq!(s.value("virtpulse_config_restart_required", &[]), Some(0.0));

    // A change only a restart applies is flagged, the rest applied.
    assert!(agent.reload_with(&format!("{good}[events]\nqueue_capacity = 1000\n")));
    assert_eq!(agent.scrape().value("virtpulse_config_restart_required", &[]), Some(1.0));
}

#[test]
fn a_kafka_sink_added_then_removed_by_reload_loses_no_event() {
    let _load = common::light();
    let mut broker = Broker::start();
    broker.create_topic("libvirt.events", 3);
    broker.create_topic("libvirt.metrics", 3);
    let spool = tempfile::tempdir().unwrap();
    let capture = Capture::start(&[]);
    let name = Guest::name_for("reload-kafka");
    let base = include(&[&name]);
    let with_kafka = format!("{}{base}", sink_config(&broker.address(), spool.path(), ""));
    let agent = Agent::start(&base);
    let g = Guest::start_named(&name, GuestSpec::default());
    let started = wait_for(Duration::from_secs(20), "the guest's start event", || {
        let e = capture.of(&name);
        e.iter().any(|e| e.text.starts_with("Started")).then_some(e.len())
    });
    assert!(agent.scrape().value("virtpulse_kafka_broker_up", &[]).is_none());

    // Added by a reload.
    assert!(agent.reload_with(&with_kafka), "{}", agent.log());
    wait_for(Duration::from_secs(20), "the broker connection", || {
        (agent.scrape().value("virtpulse_kafka_broker_up", &[]) == Some(1.0)).then_some(())
    });
    for _ in 0..3 {
        suspend_resume(&name);
    }
    // Then the broker goes away and events pile up in the spool.
    let mut reader = Reader::new(&broker.address(), "libvirt.events");
    reader.read_until(Duration::from_secs(30), "the first events", |got| {
        got.iter().filter(|m| m.value["domain"]["name"] == name.as_str()).count() >= 6
    });
    broker.stop();
    for _ in 0..5 {
        suspend_resume(&name);
    }
    // Eight suspend/resume cycles while the sink ran: sixteen events.
    capture.wait_count(&name, started + 16, Duration::from_secs(20));
    wait_for(Duration::from_secs(20), "the events in the spool", || {
        (agent.scrape().value("virtpulse_kafka_spool_records", &[]).unwrap_or(0.0) >= 10.0).then_some(())
    });

    // Removed by a reload with events queued: they stay spooled.
    assert!(agent.reload_with(&base), "{}", agent.log());
    let s = agent.scrape();
    assert!(s.value("virtpulse_kafka_spool_records", &[]).is_none(), "the sink's series go with it");
    let spooled: u64 =
        std::fs::read_dir(spool.path()).unwrap().filter_map(|e| e.ok()?.metadata().ok()).map(|m| m.len()).sum();
    assert!(spooled > 0, "the spool stays on disk");
    for _ in 0..2 {
        suspend_resume(&name);
    }

    // Back with the broker: everything it had queued arrives.
    broker.resume();
    reader.reconnect(&broker.address(), "libvirt.events");
    assert!(agent.reload_with(&with_kafka), "{}", agent.log());
    wait_for(Duration::from_secs(60), "an empty spool", || {
        (agent.scrape().value("virtpulse_kafka_spool_records", &[]) == Some(0.0)).then_some(())
    });
    let expected = 16;
    reader.read_until(Duration::from_secs(60), "every event the sink took", |got| {
        let ids: BTreeSet<&str> = got
            .iter()
            .filter(|m| m.value["domain"]["name"] == name.as_str() && m.value["event"]["name"] != "resync")
            .filter_map(|m| m.value["event"]["id"].as_str())
            .collect();
        ids.len() >= expected
    });
    let ids: BTreeSet<&str> = reader
        .got
        .iter()
        .filter(|m| m.value["domain"]["name"] == name.as_str() && m.value["event"]["name"] != "resync")
        .filter_map(|m| m.value["event"]["id"].as_str())
        .collect();
    assert_eq!(ids.len(), expected, "events while the sink ran: every one delivered, none of the time without it");
    let dropped: f64 = agent.scrape().find("virtpulse_events_dropped_total", &[]).iter().map(|x| x.value).sum();
    assert_eq!(dropped, 0.0);
    drop(g);
}
