//! The Kafka sink against a real broker (tansu) and a real consumer: events
//! of real guests arrive in order with their keys and headers, and none is
//! lost when the broker is down, when the agent is killed meanwhile, or
//! (beyond the counted, oldest ones) when the spool bound is hit.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::agent::Agent;
use common::events::{normalize_virsh, virsh_view, Capture, VirshEvent};
use common::guest::{Guest, GuestSpec};
use common::kafka::{sink_config, Broker, Reader, Received};
use common::pykafka::{self, Consumed, Until};
use common::{virsh, wait_for};
use serde_json::Value;

fn include(names: &[&str]) -> String {
    let list: Vec<String> = names.iter().map(|n| common::agent::toml_str(n)).collect();
    format!("[domains]\ninclude = [{}]\n", list.join(", "))
}

/// Event messages of one domain, duplicates (same event id) removed, in
/// offset order (which is the order within the domain's partition).
fn events_of<'a>(got: &'a [Received], name: &str) -> Vec<&'a Received> {
    let mut seen = HashSet::new();
    let mut v: Vec<&Received> = got
        .iter()
        .filter(|m| m.value["kind"] == "event" && m.value["domain"]["name"] == name)
        .filter(|m| m.value["event"]["name"] != "resync")
        .collect();
    v.sort_by_key(|m| (m.generation, m.partition, m.offset));
    v.retain(|m| seen.insert(m.value["event"]["id"].as_str().unwrap_or_default().to_string()));
    v
}

/// Waits until virsh printed `last` for `name`; returns virsh's events of it.
fn virsh_events_until(capture: &Capture, name: &str, last: &str) -> Vec<VirshEvent> {
    wait_for(Duration::from_secs(60), &format!("virsh to print {last} for {name}"), || {
        let e = capture.of(name);
        e.iter().any(|e| format!("{} {}", e.name, e.text).contains(last)).then_some(e)
    })
}

/// Reads until every event virsh saw for each domain is in the topic, then
/// checks they are the same events in the same order.
fn assert_delivered(reader: &mut Reader, capture: &Capture, names: &[&str], timeout: Duration) {
    let expected: HashMap<&str, Vec<(String, String)>> = names
        .iter()
        .map(|n| (*n, virsh_events_until(capture, n, "Stopped Destroyed").iter().map(normalize_virsh).collect()))
        .collect();
    reader.read_until(timeout, "every event of the guests", |got| {
        names.iter().all(|n| events_of(got, n).len() >= expected[n].len())
    });
    for n in names {
        let ours: Vec<(String, String)> = events_of(&reader.got, n).iter().map(|m| virsh_view(&m.value)).collect();
        assert_same_sequence(&ours, &expected[n], &format!("events of {n} in Kafka vs virsh event"));
    }
}

/// Equal sequences, or a panic showing where they part (not thousands of lines).
fn assert_same_sequence(ours: &[(String, String)], theirs: &[(String, String)], what: &str) {
    if ours == theirs {
        return;
    }
    let at = ours.iter().zip(theirs).position(|(a, b)| a != b).unwrap_or(ours.len().min(theirs.len()));
    let window = |v: &[(String, String)]| v[at.saturating_sub(3)..(at + 4).min(v.len())].to_vec();
    panic!(
        "{what}: {} vs {} events, first difference at #{at}:\n  Kafka: {:?}\n  virsh: {:?}",
        ours.len(),
        theirs.len(),
        window(ours),
        window(theirs)
    );
}

fn value(agent: &Agent, metric: &str, labels: &[(&str, &str)]) -> f64 {
    agent.scrape().value(metric, labels).unwrap_or_else(|| panic!("{metric}{labels:?} missing"))
}

/// A broker with the sink's two topics (made again after a restart).
fn broker_with_topics() -> Broker {
    let mut b = Broker::start();
    b.create_topic("libvirt.events", 3);
    b.create_topic("libvirt.metrics", 3);
    b
}

/// Waits until every event the agent got acknowledged was read back, so a
/// broker restart (which loses them: in-memory storage) hides none of them.
fn read_acknowledged(agent: &Agent, reader: &mut Reader) {
    wait_for(Duration::from_secs(20), "an empty spool", || {
        (value(agent, "virtpulse_kafka_spool_records", &[]) == 0.0).then_some(())
    });
    let acked = value(agent, "virtpulse_kafka_messages_delivered_total", &[("stream", "events")]) as usize;
    reader.read_until(Duration::from_secs(20), "the acknowledged events", |got| {
        got.iter().filter(|m| m.value["kind"] == "event").count() >= acked
    });
}

/// Distinct event ids the rdkafka reader got from one broker run.
fn event_ids(got: &[Received], generation: u32) -> HashSet<&str> {
    got.iter()
        .filter(|m| m.generation == generation && m.value["kind"] == "event")
        .filter_map(|m| m.value["event"]["id"].as_str())
        .collect()
}

/// The independent consumer (kafka-python, no librdkafka) reads the events
/// topic until it has `expect` distinct events; it must get there.
fn py_events(broker: &Broker, expect: usize, what: &str) -> Consumed {
    let c = pykafka::consume(
        &broker.address(),
        "libvirt.events",
        &pykafka::fresh_group("kafka"),
        &Until { distinct: expect, events: &[], deadline: Duration::from_secs(60), settle: Duration::from_secs(2) },
    );
    assert!(c.reached, "kafka-python read {} of {expect} events ({what}):\n{}", c.distinct, c.stderr);
    c
}

/// Distinct ids of one domain's events (resync records left out).
fn py_ids_of<'a>(c: &'a Consumed, name: &str) -> HashSet<&'a str> {
    c.events()
        .filter(|m| m.domain.as_deref() == Some(name) && m.event.as_deref() != Some("domain.resync"))
        .filter_map(|m| m.id.as_deref())
        .collect()
}

/// Duplicates in what kafka-python read only where docs/kafka.md
/// ("Delivery") allows them: after a failed delivery, everything
/// unacknowledged is sent again. Returns how many.
fn assert_py_duplicates_documented(c: &Consumed, agent: &Agent, what: &str) -> usize {
    let differing = c.differing_duplicates();
    assert!(differing.is_empty(), "{what}: duplicates that differ from their first copy: {differing:?}");
    let dups = c.duplicates();
    if dups > 0 {
        let s = agent.scrape();
        let failed = s.value("virtpulse_kafka_delivery_failures_total", &[("stream", "events")]).unwrap_or(0.0);
        let resent = s.value("virtpulse_kafka_events_resent_total", &[]).unwrap_or(0.0);
        assert!(
            failed + resent > 0.0,
            "{what}: {dups} duplicates without a failed delivery or a resend (the only documented cause)"
        );
    }
    dups
}

fn suspend_resume(name: &str) {
    virsh::must(&["suspend", name]);
    virsh::must(&["resume", name]);
}

#[test]
fn events_and_metrics_round_trip() {
    let broker = Broker::start();
    let spool = tempfile::tempdir().unwrap();
    let capture = Capture::start(&[]);
    let (name, io_name) = (Guest::name_for("kafka"), Guest::name_for("kafkaio"));
    let agent = Agent::start(&format!(
        "{}{}[collectors.domain_stats]\ninterval = \"1s\"\n[collectors.node]\ninterval = \"2s\"\n",
        sink_config(&broker.address(), spool.path(), ""),
        include(&[&name, &io_name])
    ));
    let mut events = Reader::new(&broker.address(), "libvirt.events");
    let mut metrics = Reader::new(&broker.address(), "libvirt.metrics");

    let g = Guest::start_named(&name, GuestSpec::default());
    // Metric snapshots: the guest's domain stats keyed by its UUID, values as virsh has them.
    // (The first records of a starting guest may show it paused: libvirt
    // starts QEMU's CPUs last.)
    let running = |m: &&Received| {
        m.value["kind"] == "domain_stats"
            && m.value["domain"]["uuid"] == g.uuid.as_str()
            && m.value["fields"]["state.state"]["value"] == 1
    };
    metrics
        .read_until(Duration::from_secs(30), "the running guest's domain stats", |got| got.iter().any(|m| running(&m)));
    let stats = metrics.got.iter().find(running).unwrap();
    assert_eq!(stats.key, g.uuid);
    assert_eq!(stats.headers["virtpulse_kind"], "domain_stats");
    assert_eq!(stats.headers["ce_type"], "io.virtpulse.domain_stats");
    common::schema::assert_valid(&stats.value);
    let virsh_stats = virsh::domstats(&name, &[]);
    for key in ["balloon.maximum", "vcpu.maximum", "block.count"] {
        assert_eq!(
            stats.value["fields"][key]["value"].to_string(),
            virsh_stats[key],
            "{key}: Kafka record vs virsh domstats"
        );
    }
    metrics.read_until(Duration::from_secs(30), "a node record", |got| got.iter().any(|m| m.value["kind"] == "node"));
    let node = metrics.got.iter().find(|m| m.value["kind"] == "node").unwrap();
    assert_eq!(node.key, node.value["host"].as_str().unwrap(), "host-level records are keyed by host");

    suspend_resume(&name);
    g.destroy();
    let (io, _disk) = common::ioerror::start_guest(&io_name);
    wait_for(Duration::from_secs(30), "the I/O error pause", || {
        virsh::must(&["domstate", "--reason", &io_name]).contains("paused").then_some(())
    });
    io.destroy();
    assert_delivered(&mut events, &capture, &[&name, &io_name], Duration::from_secs(30));
    assert!(events_of(&events.got, &io_name).iter().any(|m| m.value["event"]["name"] == "io_error_reason"));

    for (n, uuid) in [(&name, &g.uuid), (&io_name, &io.uuid)] {
        let msgs = events_of(&events.got, n);
        let partitions: HashSet<i32> = msgs.iter().map(|m| m.partition).collect();
        assert_eq!(partitions.len(), 1, "one domain's events share a partition");
        let seqs: Vec<u64> = msgs.iter().map(|m| m.value["event"]["seq"].as_u64().unwrap()).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order within the partition: {seqs:?}");
        for m in msgs {
            let v = &m.value;
            common::schema::assert_valid(v);
            assert_eq!(&m.key, uuid);
            let id = v["event"]["id"].as_str().unwrap();
            let h = &m.headers;
            assert_eq!(h["virtpulse_schema"], v["schema"].as_str().unwrap());
            assert_eq!(h["virtpulse_kind"], "event");
            assert_eq!(h["virtpulse_host"], v["host"].as_str().unwrap());
            assert_eq!(h["virtpulse_event_id"], id);
            assert_eq!(h["content-type"], "application/json");
            assert_eq!(h["ce_specversion"], "1.0");
            assert_eq!(h["ce_id"], id);
            assert_eq!(h["ce_type"], format!("io.virtpulse.event.domain.{}", v["event"]["name"].as_str().unwrap()));
            assert_eq!(h["ce_source"], format!("virtpulse://{}", v["host"].as_str().unwrap()));
            assert_eq!(h["ce_time"], v["time"].as_str().unwrap());
            assert_eq!(h["ce_subject"], uuid.as_str());
            let t = humantime::parse_rfc3339(v["time"].as_str().unwrap()).unwrap();
            let ms = t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
            assert_eq!(m.timestamp_ms, Some(ms), "message timestamp = event time");
        }
    }
    wait_for(Duration::from_secs(10), "an empty spool", || {
        (value(&agent, "virtpulse_kafka_spool_records", &[]) == 0.0).then_some(())
    });
    assert_eq!(value(&agent, "virtpulse_kafka_broker_up", &[]), 1.0);
    let s = agent.scrape();
    assert!(s.value("virtpulse_kafka_event_delivery_seconds_count", &[]).unwrap() >= 8.0);
    assert_eq!(s.value("virtpulse_kafka_delivery_failures_total", &[("stream", "events")]), Some(0.0));
}

#[test]
fn broker_outage_loses_no_event() {
    let mut broker = broker_with_topics();
    let spool = tempfile::tempdir().unwrap();
    let capture = Capture::start(&[]);
    let names = [Guest::name_for("kout"), Guest::name_for("kout")];
    let agent = Agent::start(&format!(
        "{}{}",
        sink_config(&broker.address(), spool.path(), ""),
        include(&[&names[0], &names[1]])
    ));
    let mut reader = Reader::new(&broker.address(), "libvirt.events");
    let guests: Vec<Guest> = names.iter().map(|n| Guest::start_named(n, GuestSpec::default())).collect();
    wait_for(Duration::from_secs(20), "the broker connection", || {
        (value(&agent, "virtpulse_kafka_broker_up", &[]) == 1.0).then_some(())
    });
    read_acknowledged(&agent, &mut reader);

    broker.stop();
    let outage = Instant::now();
    let mut pairs = 0;
    while outage.elapsed() < Duration::from_secs(60) {
        for g in &guests {
            suspend_resume(&g.name);
        }
        pairs += 1;
    }
    let spooled = value(&agent, "virtpulse_kafka_spool_records", &[]);
    assert!(spooled >= f64::from(pairs), "events wait in the spool during the outage: {spooled}");
    broker.resume();
    reader.reconnect(&broker.address(), "libvirt.events");
    for g in &guests {
        g.destroy();
    }
    let started = Instant::now();
    assert_delivered(&mut reader, &capture, &[&names[0], &names[1]], Duration::from_secs(120));
    let caught_up = started.elapsed();

    let total: usize = reader.got.iter().filter(|m| m.value["kind"] == "event").count();
    let unique: HashSet<&str> = reader.got.iter().filter_map(|m| m.value["event"]["id"].as_str()).collect();
    let s = agent.scrape();
    eprintln!(
        "outage of 60 s: {} events ({pairs} suspend/resume pairs per guest), {} duplicates, caught up {caught_up:?} after the broker returned, {} delivery failures, {} resent",
        unique.len(),
        total - unique.len(),
        s.value("virtpulse_kafka_delivery_failures_total", &[("stream", "events")]).unwrap_or(0.0),
        s.value("virtpulse_kafka_events_resent_total", &[]).unwrap_or(0.0),
    );
    // Duplicates are whole copies of one event (consumers de-duplicate by id).
    let mut by_id: HashMap<&str, &Value> = HashMap::new();
    for m in reader.got.iter().filter(|m| m.value["kind"] == "event") {
        let id = m.value["event"]["id"].as_str().unwrap();
        if let Some(prev) = by_id.insert(id, &m.value) {
            assert_eq!(prev, &m.value, "a duplicate differs from its first copy");
        }
    }
    for c in ["spool_full", "spool_expired", "spool_corrupt", "spool_write_failed", "rejected"] {
        assert_eq!(
            s.value("virtpulse_kafka_records_dropped_total", &[("stream", "events"), ("reason", c)]),
            Some(0.0),
            "{c}"
        );
    }
    assert!(s.value("virtpulse_kafka_delivery_failures_total", &[("stream", "events")]).unwrap() >= 1.0);
    wait_for(Duration::from_secs(20), "an empty spool", || {
        (value(&agent, "virtpulse_kafka_spool_records", &[]) == 0.0).then_some(())
    });
}

#[test]
fn a_broker_that_forgets_the_producer_id_does_not_wedge_the_sink() {
    let mut broker = broker_with_topics();
    let spool = tempfile::tempdir().unwrap();
    let capture = Capture::start(&[]);
    let name = Guest::name_for("kwedge");
    // message_timeout is 5 s here (sink_config): the watchdog acts after
    // that plus its margin, well within the 60 s allowed.
    let agent = Agent::start(&format!("{}{}", sink_config(&broker.address(), spool.path(), ""), include(&[&name])));
    let mut reader = Reader::new(&broker.address(), "libvirt.events");
    let g = Guest::start_named(&name, GuestSpec::default());
    wait_for(Duration::from_secs(20), "the broker connection", || {
        (value(&agent, "virtpulse_kafka_broker_up", &[]) == 1.0).then_some(())
    });
    read_acknowledged(&agent, &mut reader);
    // The broker forgets everything at the restart: the independent
    // consumer reads what it holds now.
    let py_before = py_events(&broker, event_ids(&reader.got, 0).len(), "before the restart");

    // Restarted at once with empty storage: nothing timed out in between,
    // the new broker just does not know the producer's id.
    broker.stop();
    broker.resume();
    reader.reconnect(&broker.address(), "libvirt.events");
    let restarted = Instant::now();
    for _ in 0..3 {
        suspend_resume(&g.name);
    }
    g.destroy();
    let expected: Vec<(String, String)> =
        virsh_events_until(&capture, &name, "Stopped Destroyed").iter().map(normalize_virsh).collect();
    let after: Vec<(String, String)> = expected
        .iter()
        .skip_while(|(event, text)| !(event == "lifecycle" && text.contains("Suspended")))
        .cloned()
        .collect();
    reader.read_until(Duration::from_secs(60), "the events after the restart, within 60 s", |got| {
        let ours: Vec<(String, String)> = events_of(got, &name).iter().map(|m| virsh_view(&m.value)).collect();
        ours.ends_with(&after)
    });
    let took = restarted.elapsed();
    let s = agent.scrape();
    let restarts: f64 = s.find("virtpulse_kafka_producer_restarts_total", &[]).iter().map(|x| x.value).sum();
    eprintln!("broker restarted empty: events delivered {took:?} later, {restarts} producer restarts");
    assert!(restarts >= 1.0, "the wedged producer was replaced and counted");
    // Which path replaces the producer depends on timing: no delivery
    // report at all (the watchdog: "stuck") or reports with errors while a
    // broker answers. Either is logged, and the watchdog once per incident.
    let log = agent.log();
    let stuck = log.matches("Kafka producer is stuck").count();
    let failing = log.matches("event deliveries fail while a broker is reachable").count();
    assert!(stuck + failing >= 1, "the replacement is logged:\n{log}");
    assert!(stuck <= 1, "the watchdog logs once per incident:\n{log}");

    // kafka-python confirms: every event virsh saw is in one broker run or
    // the other, the same ones the rdkafka reader got, and duplicates come
    // only from the documented resend after failed deliveries.
    let py_after = py_events(&broker, event_ids(&reader.got, 1).len(), "after the restart");
    let mut py: HashSet<&str> = py_ids_of(&py_before, &name);
    py.extend(py_ids_of(&py_after, &name));
    let rd: HashSet<&str> = reader
        .got
        .iter()
        .filter(|m| m.value["kind"] == "event" && m.value["domain"]["name"] == name.as_str())
        .filter(|m| m.value["event"]["name"] != "resync")
        .filter_map(|m| m.value["event"]["id"].as_str())
        .collect();
    assert_eq!(py, rd, "kafka-python and the rdkafka reader read the same events");
    assert_eq!(py.len(), expected.len(), "every event virsh saw is in Kafka (kafka-python)");
    let dups = assert_py_duplicates_documented(&py_before, &agent, "before the restart")
        + assert_py_duplicates_documented(&py_after, &agent, "after the restart");
    eprintln!(
        "kafka-python: {} events before the restart, {} after, {dups} duplicates, {} re-read after rebalances",
        py_before.distinct,
        py_after.distinct,
        py_before.rereads + py_after.rereads
    );
}

#[test]
fn events_spooled_before_a_sigkill_are_delivered_after_restart() {
    let mut broker = broker_with_topics();
    let spool = tempfile::tempdir().unwrap();
    let capture = Capture::start(&[]);
    let name = Guest::name_for("kkill");
    let config = format!("{}{}", sink_config(&broker.address(), spool.path(), ""), include(&[&name]));
    let agent = Agent::start(&config);
    wait_for(Duration::from_secs(20), "the broker connection", || {
        (value(&agent, "virtpulse_kafka_broker_up", &[]) == 1.0).then_some(())
    });
    broker.stop();
    let g = Guest::start_named(&name, GuestSpec::default());
    for _ in 0..5 {
        suspend_resume(&name);
    }
    g.destroy();
    let n = virsh_events_until(&capture, &name, "Stopped Destroyed").len();
    wait_for(Duration::from_secs(20), "the events in the spool", || {
        (value(&agent, "virtpulse_kafka_spool_records", &[]) >= n as f64).then_some(())
    });
    agent.kill();

    broker.resume();
    let mut reader = Reader::new(&broker.address(), "libvirt.events");
    let agent = Agent::start(&config);
    assert!(agent.log().contains("replaying events spooled by an earlier run"), "{}", agent.log());
    assert_delivered(&mut reader, &capture, &[&name], Duration::from_secs(60));
    wait_for(Duration::from_secs(20), "an empty spool", || {
        (value(&agent, "virtpulse_kafka_spool_records", &[]) == 0.0).then_some(())
    });
    // kafka-python confirms: every event spooled before the kill is in the
    // topic (the broker was down, so none had been acknowledged: a replay
    // resends each once), the same ones the rdkafka reader got.
    let py = py_events(&broker, event_ids(&reader.got, 0).len(), "after the replay");
    let ids = py_ids_of(&py, &name);
    assert_eq!(ids.len(), n, "every event virsh saw is in Kafka (kafka-python)");
    let rd: HashSet<&str> =
        events_of(&reader.got, &name).iter().filter_map(|m| m.value["event"]["id"].as_str()).collect();
    assert_eq!(ids, rd, "kafka-python and the rdkafka reader read the same events");
    let dups = assert_py_duplicates_documented(&py, &agent, "after the replay");
    eprintln!("kafka-python after the SIGKILL and replay: {} events, {dups} duplicates", ids.len());
}

/// A SIGKILL right after the broker acknowledged a burst loses nothing,
/// but the restart resends the events above the spool's low-water mark as
/// last persisted (once a second, by the sender's housekeeping): events the
/// broker already had arrive twice, without any failed delivery. Those
/// duplicates are bounded by what the restart says it replays.
#[test]
fn a_sigkill_after_acknowledgements_resends_only_what_the_spool_had_not_marked() {
    let broker = broker_with_topics();
    let spool = tempfile::tempdir().unwrap();
    // Started before the agent: its only other event is one resync record.
    let g = Guest::start("kack", GuestSpec { vcpus: 1, persistent: false, ..Default::default() });
    let config =
        format!("{}{}", sink_config(&broker.address(), spool.path(), "metrics = false\n"), include(&[&g.name]));
    let agent = Agent::start(&config);
    wait_for(Duration::from_secs(20), "the broker connection", || {
        (value(&agent, "virtpulse_kafka_broker_up", &[]) == 1.0).then_some(())
    });
    let storm = common::storm::metadata_storm(&[&g.name], 3000, 1);
    assert_eq!(storm.failed, 0, "{:?}", storm.errors);
    let n = storm.emitted() + 1;
    wait_for(Duration::from_secs(60), "every event acknowledged", || {
        (value(&agent, "virtpulse_kafka_messages_delivered_total", &[("stream", "events")]) >= n as f64).then_some(())
    });
    agent.kill();

    let agent = Agent::start(&config);
    // The spool is opened, and a replay logged (only when something is
    // pending), before the sink logs that it started; /metrics may answer
    // earlier, so wait for that line.
    let log = wait_for(Duration::from_secs(20), "the Kafka sink started", || {
        let log = agent.log();
        log.contains("Kafka sink started").then_some(log)
    });
    let replayed: usize = log
        .lines()
        .find(|l| l.contains("replaying events spooled by an earlier run"))
        .map(|l| {
            let n = l.split("pending=").nth(1).and_then(|v| v.split_whitespace().next());
            n.and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("no pending=<n> in the replay line: {l}"))
        })
        .unwrap_or(0);
    wait_for(Duration::from_secs(30), "an empty spool", || {
        (value(&agent, "virtpulse_kafka_spool_records", &[]) == 0.0).then_some(())
    });
    // The storm, the first run's resync record and the second run's.
    let py = py_events(&broker, n + 1, "after the restart");
    let ids = py_ids_of(&py, &g.name);
    assert_eq!(ids.len(), storm.emitted(), "every event of the storm is in Kafka (kafka-python)");
    let differing = py.differing_duplicates();
    assert!(differing.is_empty(), "duplicates that differ from their first copy: {differing:?}");
    let s = agent.scrape();
    eprintln!(
        "SIGKILL after {n} acknowledged events: {replayed} replayed by the restart, {} duplicates read by kafka-python \
         (delivery failures {:?}, resent {:?})",
        py.duplicates(),
        s.value("virtpulse_kafka_delivery_failures_total", &[("stream", "events")]),
        s.value("virtpulse_kafka_events_resent_total", &[]),
    );
    assert!(py.duplicates() <= replayed, "{} duplicates, {replayed} events replayed", py.duplicates());
}

#[test]
fn full_spool_drops_the_oldest_counts_them_and_keeps_memory_bounded() {
    let port = common::agent::free_port(); // nothing listens there yet
    let spool = tempfile::tempdir().unwrap();
    let capture = Capture::start(&[]);
    let name = Guest::name_for("kfull");
    let agent = Agent::start(&format!(
        "{}{}",
        sink_config(
            &format!("127.0.0.1:{port}"),
            spool.path(),
            "spool_max_bytes = \"64KiB\"\nmax_in_flight = 50\nmetrics = false\n"
        ),
        include(&[&name])
    ));
    let g = Guest::start_named(&name, GuestSpec::default());
    let rss = || value(&agent, "process_resident_memory_bytes", &[]);
    for _ in 0..100 {
        suspend_resume(&name);
    }
    let rss_mid = rss();
    for _ in 0..100 {
        suspend_resume(&name);
    }
    let n = capture.wait_count(&name, 401, Duration::from_secs(30)).len() as f64;
    let dropped = |a: &Agent| {
        value(a, "virtpulse_kafka_records_dropped_total", &[("stream", "events"), ("reason", "spool_full")])
    };
    let (kept, lost_at_first_count) =
        wait_for(Duration::from_secs(20), "every event spooled or counted as dropped", || {
            let (kept, lost) = (value(&agent, "virtpulse_kafka_spool_records", &[]), dropped(&agent));
            (kept + lost == n).then_some((kept, lost))
        });
    assert!(lost_at_first_count > 0.0 && kept > 0.0, "kept {kept}, dropped {lost_at_first_count}");
    assert!(value(&agent, "virtpulse_kafka_spool_bytes", &[]) <= 65536.0);
    assert!(agent.log().contains("the oldest undelivered records were dropped"));
    let growth = rss() - rss_mid;
    assert!(growth < 8.0 * 1048576.0, "memory grew by {growth} bytes while the spool was full");

    // The broker appears: what the spool kept arrives, in order, plus any
    // dropped record the producer already held (then no longer counted as
    // dropped); every event is either in Kafka or counted.
    let mut broker = Broker::start_on(port);
    broker.create_topic("libvirt.events", 3);
    let mut reader = Reader::new(&broker.address(), "libvirt.events");
    g.destroy();
    let expected: Vec<(String, String)> =
        virsh_events_until(&capture, &name, "Stopped Destroyed").iter().map(normalize_virsh).collect();
    wait_for(Duration::from_secs(60), "an empty spool", || {
        (value(&agent, "virtpulse_kafka_spool_records", &[]) == 0.0).then_some(())
    });
    // Records the producer held when the spool dropped them may still be
    // acknowledged after the spool is empty (each un-counts its drop), so
    // wait for the two figures to settle: every event exactly once, either
    // in the topic or in the dropped count (both would never settle).
    let mut last = (0, 0);
    let settled = (0..300).any(|_| {
        reader.poll_for(Duration::from_millis(200));
        let lost = dropped(&agent) as usize;
        let delivered = events_of(&reader.got, &name).len();
        last = (delivered, lost);
        delivered + lost == expected.len()
    });
    let (delivered, lost) = last;
    assert!(settled, "delivered {delivered} + dropped {lost} != {} events", expected.len());
    assert!(lost > 0 && lost < expected.len());
    let ours: Vec<(String, String)> = events_of(&reader.got, &name).iter().map(|m| virsh_view(&m.value)).collect();
    assert_eq!(ours.len(), delivered);
    // The kept ones (and those after) are the newest, complete and in order.
    // Events after the first count (the destroy) may have pushed more of the
    // oldest out of the still-full spool before the broker drained it.
    let pushed_out_later = lost.saturating_sub(lost_at_first_count as usize);
    let tail = (expected.len() - n as usize + kept as usize).saturating_sub(pushed_out_later);
    assert!(ours.len() >= tail, "{} delivered, but the {tail} newest events should all be there", ours.len());
    assert_same_sequence(&ours[ours.len() - tail..], &expected[expected.len() - tail..], "the newest events");
    // Whatever else arrived is older, in order too.
    let mut rest = expected.iter();
    assert!(ours.iter().all(|e| rest.any(|x| x == e)), "Kafka's events are in virsh's order");
}
