//! An event storm into the Kafka sink with its spool on a slow disk: tens of
//! thousands of libvirt events as fast as libvirtd emits them (virsh shell
//! sessions, tests/common/storm.rs), the spool on an ext4 loop device whose
//! writes a blkio cgroup throttles (tests/common/slowdisk.rs), and an
//! independent consumer (kafka-python, tests/tools/kafka_consume.py) that
//! reads what reached the broker.
//!
//! - With buffers big enough for the storm every event arrives and nothing
//!   is counted as dropped.
//! - With small buffers events are lost, but each one is either in the
//!   topic or counted as dropped, exactly; /metrics answers and the
//!   collectors keep running throughout.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::agent::{toml_str, Agent};
use common::events::Capture;
use common::exposition::{parse, Scrape};
use common::guest::{Guest, GuestSpec};
use common::kafka::{sink_config, Broker};
use common::pykafka::{consume, fresh_group, Consumed, Until};
use common::slowdisk::{SlowDisk, Throttle};
use common::storm::{metadata_storm, Storm};
use common::wait_for;

/// Guests, and metadata changes each: 30,000 events.
const GUESTS: usize = 4;
const PER_GUEST: usize = 7_500;

fn sum(s: &Scrape, name: &str, labels: &[(&str, &str)], keep: impl Fn(&BTreeMap<String, String>) -> bool) -> f64 {
    s.find(name, labels).iter().filter(|x| keep(&x.labels)).map(|x| x.value).sum()
}

/// Events the agent counted as lost on their way to the broker, by where
/// the count was made.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Lost {
    /// The hand-off queue between libvirt's callbacks and the router: the
    /// Kafka sink's own lane. Drops in the `shared` lane lose events for
    /// the best-effort sinks only and are not counted here.
    handoff: f64,
    /// The Kafka sink's queue in the router, events only (dropped metric
    /// snapshot batches count under `stream="metrics"`).
    sink_queue: f64,
    /// Inside the Kafka sink (spool bounds, write errors, rejections).
    kafka: f64,
}

impl Lost {
    fn of(s: &Scrape) -> Lost {
        let handoff = sum(s, "virtpulse_events_dropped_total", &[], |l| l.get("lane").is_none_or(|x| x != "shared"));
        let sink_queue =
            sum(s, "virtpulse_sink_records_dropped_total", &[("sink", "kafka"), ("stream", "events")], |_| true);
        let kafka = sum(s, "virtpulse_kafka_records_dropped_total", &[("stream", "events")], |_| true);
        Lost { handoff, sink_queue, kafka }
    }

    fn total(&self) -> f64 {
        self.handoff + self.sink_queue + self.kafka
    }
}

fn value(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    s.value(name, labels).unwrap_or_else(|| panic!("{name}{labels:?} missing"))
}

fn include(names: &[&str]) -> String {
    let list: Vec<String> = names.iter().map(|n| toml_str(n)).collect();
    format!("[domains]\ninclude = [{}]\n", list.join(", "))
}

/// The guests, the broker with the events topic, and a virsh event
/// capture started after the guests (the reference count of the events
/// emitted from then on).
struct Stage {
    guests: Vec<Guest>,
    broker: Broker,
    capture: Capture,
}

fn stage(tag: &str) -> Stage {
    let guests: Vec<Guest> = (0..GUESTS)
        .map(|_| Guest::start(tag, GuestSpec { vcpus: 1, persistent: false, ..Default::default() }))
        .collect();
    let mut broker = Broker::start();
    broker.create_topic("libvirt.events", 3);
    broker.create_topic("libvirt.metrics", 3);
    let capture = Capture::start(&[]);
    Stage { guests, broker, capture }
}

impl Stage {
    fn names(&self) -> Vec<&str> {
        self.guests.iter().map(|g| g.name.as_str()).collect()
    }

    /// Starts the agent (after the guests: its first events are one resync
    /// record per guest), moves it into the slow disk's cgroup and waits for
    /// the broker connection and the resync.
    fn agent(&self, disk: &SlowDisk, kafka: &str, extra: &str) -> Agent {
        let spool = disk.mount.join("spool");
        let agent = Agent::start(&format!(
            "{}{extra}\n[collectors.domain_stats]\ninterval = \"1s\"\n{}",
            sink_config(&self.broker.address(), &spool, kafka),
            include(&self.names())
        ));
        disk.add_process(agent.pid());
        wait_for(Duration::from_secs(30), "the broker connection and the resync records", || {
            let s = agent.scrape();
            (s.value("virtpulse_kafka_broker_up", &[]) == Some(1.0)
                && s.value("virtpulse_event_resyncs_total", &[]).unwrap_or(0.0) >= 1.0)
                .then_some(())
        });
        agent
    }

    /// Waits until virsh printed every event the storm emitted; returns how
    /// many events of the guests virsh saw in all.
    fn captured(&self, storm: &Storm) -> usize {
        for (name, n) in &storm.per_guest {
            self.capture.wait_count(name, *n, Duration::from_secs(120));
        }
        // Anything else the guests emitted in the meantime shows up too:
        // the count is taken once it holds for half a second.
        let count = || self.names().iter().map(|n| self.capture.of(n).len()).sum::<usize>();
        let mut last = (count(), Instant::now());
        wait_for(Duration::from_secs(10), "virsh's count of the guests' events to settle", || {
            let now = count();
            if now != last.0 {
                last = (now, Instant::now());
            }
            (last.1.elapsed() >= Duration::from_millis(500)).then_some(now)
        })
    }
}

/// What the independent consumer found of the guests' events.
struct Found {
    consumed: Consumed,
    /// Distinct event ids per domain.
    per_domain: HashMap<String, usize>,
    distinct: usize,
    duplicates: usize,
}

fn read_back(broker: &Broker, names: &[&str], expect: usize, deadline: Duration, settle: Duration) -> Found {
    let consumed = consume(
        &broker.address(),
        "libvirt.events",
        &fresh_group("storm"),
        &Until { distinct: expect, events: &[], deadline, settle },
    );
    let mut ids: HashMap<String, HashSet<&str>> = HashMap::new();
    for m in consumed.events() {
        let (Some(d), Some(id)) = (m.domain.as_deref(), m.id.as_deref()) else { continue };
        if names.contains(&d) {
            ids.entry(d.to_string()).or_default().insert(id);
        }
    }
    let per_domain: HashMap<String, usize> = ids.iter().map(|(d, s)| (d.clone(), s.len())).collect();
    let distinct = per_domain.values().sum();
    let duplicates = consumed.duplicates();
    Found { consumed, per_domain, distinct, duplicates }
}

/// One domain's events (duplicates removed) in offset order have
/// increasing sequence numbers, in one partition.
fn assert_in_order(consumed: &Consumed, name: &str) {
    let mut seen = HashSet::new();
    let mut msgs: Vec<_> = consumed.events().filter(|m| m.domain.as_deref() == Some(name)).collect();
    msgs.sort_by_key(|m| (m.partition, m.offset));
    msgs.retain(|m| seen.insert(m.id.clone()));
    let partitions: HashSet<i32> = msgs.iter().map(|m| m.partition).collect();
    assert!(partitions.len() <= 1, "{name}: events in partitions {partitions:?}");
    let seqs: Vec<u64> = msgs.iter().filter_map(|m| m.seq).collect();
    let out_of_order = seqs.windows(2).filter(|w| w[0] >= w[1]).count();
    assert_eq!(out_of_order, 0, "{name}: {out_of_order} events out of order in the partition");
}

/// Duplicates only where the documentation allows them (docs/kafka.md
/// "Delivery": after a failed delivery everything unacknowledged is sent
/// again), and always whole copies.
fn assert_duplicates_documented(found: &Found, s: &Scrape) {
    let differing = found.consumed.differing_duplicates();
    assert!(
        differing.is_empty(),
        "duplicates that differ from their first copy: {:?}",
        &differing[..differing.len().min(5)]
    );
    if found.duplicates > 0 {
        let failures = s.value("virtpulse_kafka_delivery_failures_total", &[("stream", "events")]).unwrap_or(0.0);
        let resent = s.value("virtpulse_kafka_events_resent_total", &[]).unwrap_or(0.0);
        assert!(
            failures + resent > 0.0,
            "{} duplicates, but no delivery failed and nothing was resent (docs/kafka.md allows duplicates only then)",
            found.duplicates
        );
    }
}

#[test]
fn slow_disk_slows_synchronous_writes() {
    let _light = common::light();
    let disk = SlowDisk::new("probe", 256, Throttle { write_iops: Some(50), write_bps: None });
    let fast = disk.dsync_writes_per_second(false, Duration::from_secs(2));
    let slow = disk.dsync_writes_per_second(true, Duration::from_secs(3));
    disk.set_throttle(Throttle { write_iops: None, write_bps: Some(256 << 10) });
    let by_bytes = disk.dsync_writes_per_second(true, Duration::from_secs(3));
    eprintln!(
        "O_DSYNC 4 KiB writes/s on the loop device: {fast:.0} unthrottled, {slow:.0} at write_iops=50, {by_bytes:.0} at write_bps=256KiB/s ({} writes charged to the group)",
        disk.writes_serviced()
    );
    assert!(slow <= 50.0 * 1.5, "50 IOPS allowed, {slow:.0} synchronous writes/s done");
    assert!(by_bytes <= 64.0 * 1.5, "256 KiB/s allowed, {by_bytes:.0} synchronous 4 KiB writes/s done");
    assert!(fast >= 4.0 * slow, "the throttle slows synchronous writes: {fast:.0}/s free vs {slow:.0}/s throttled");
    assert!(disk.writes_serviced() > 0);
}

/// Buffers sized for the storm: the hand-off queue holds every event at
/// once (30,000 < 100,000), the Kafka sink's queue every batch even if each
/// held a single event (30,000 events + a snapshot batch a second <
/// 100,000), and the spool (256 MiB by default) all of them (about 1 KiB
/// each). On the throttled disk the spool falls behind during the storm;
/// the queues wait, and nothing may be lost or counted as dropped.
#[test]
fn a_storm_with_room_for_it_delivers_every_event() {
    let _heavy = common::heavy();
    let disk = SlowDisk::new("storm-a", 1024, Throttle { write_iops: Some(20), write_bps: Some(512 << 10) });
    let st = stage("storm-a");
    let names = st.names();
    let agent = st.agent(&disk, "queue_capacity = 100000\nmetrics = false\n", "[events]\nqueue_capacity = 100000\n");
    let resync = GUESTS;
    let (storm, watched, storm_end, emitted) = run_storm(&st, &agent, &names);

    // Drained: the broker acknowledged every event.
    let drained = wait_for(Duration::from_secs(600), "every event acknowledged by the broker", || {
        let s = agent.scrape();
        let acked = value(&s, "virtpulse_kafka_messages_delivered_total", &[("stream", "events")]);
        (acked >= emitted as f64 && value(&s, "virtpulse_kafka_spool_records", &[]) == 0.0).then_some(s)
    });
    let drain = storm_end.elapsed();
    let found = read_back(&st.broker, &names, emitted, Duration::from_secs(300), Duration::from_secs(3));
    let s = agent.scrape();
    let lost = Lost::of(&s);
    eprintln!(
        "storm with room: {} events emitted in {:.1?} ({:.0}/s) + {resync} resync; delivered {} distinct ({} duplicates, \
         {} re-read after a rebalance) read by kafka-python; drained {drain:.1?} after the storm; peak backlog: hand-off \
         {}, Kafka queue {} batches, spool {:?} (records, bytes); lost {lost:?}; agent received {:?}; spool writes \
         charged to the throttled group {}; delivery failures {}",
        storm.emitted(),
        storm.elapsed,
        storm.rate(),
        found.distinct,
        found.duplicates,
        found.consumed.rereads,
        watched.peak_handoff,
        watched.peak_sink_queue,
        watched.peak_spool,
        s.find("virtpulse_events_received_total", &[]).iter().map(|x| x.value).sum::<f64>(),
        disk.writes_serviced(),
        value(&drained, "virtpulse_kafka_delivery_failures_total", &[("stream", "events")]),
    );
    assert!(found.consumed.reached, "kafka-python read {} of {emitted} events", found.distinct);
    for (name, n) in &storm.per_guest {
        // Each guest's storm events plus its resync record.
        assert_eq!(found.per_domain.get(name).copied().unwrap_or(0), n + 1, "events of {name} in Kafka");
        assert_in_order(&found.consumed, name);
    }
    assert_eq!(found.distinct, emitted, "every event emitted is in the topic");
    assert_eq!(lost, Lost::default(), "nothing counted as dropped");
    assert_eq!(sum(&s, "virtpulse_sink_records_dropped_total", &[("sink", "kafka")], |_| true), 0.0);
    assert_duplicates_documented(&found, &s);
    assert!(disk.writes_serviced() > 0, "the spool was written through the throttled group");
}

/// Waits until the spool is empty, the Kafka sink's queue too, and the
/// drop and delivery counts stay the same for 2 s. (Not the hand-off
/// queue's depth gauge: it is raised after the hand-off, so the processor
/// can take an event first and the gauge then stays above 0.)
fn settle(agent: &Agent, deadline: Duration) -> (Scrape, Lost) {
    let end = Instant::now() + deadline;
    let mut last = None;
    let mut same = 0;
    loop {
        let s = agent.scrape();
        let spool = value(&s, "virtpulse_kafka_spool_records", &[]);
        let queue = s.value("virtpulse_sink_queue_depth", &[("sink", "kafka")]).unwrap_or(0.0);
        let now = (Lost::of(&s), value(&s, "virtpulse_kafka_messages_delivered_total", &[("stream", "events")]));
        same = if last.replace(now) == Some(now) { same + 1 } else { 0 };
        if spool == 0.0 && queue == 0.0 && same >= 4 {
            return (s, now.0);
        }
        assert!(
            Instant::now() < end,
            "not settled after {deadline:?}: spool {spool} records, Kafka queue {queue} batches, hand-off depth \
             gauge {:?}, lost {:?}, delivered {}",
            s.value("virtpulse_event_queue_depth", &[]),
            now.0,
            now.1
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// What a monitor saw while the storm ran.
#[derive(Debug, Default)]
struct Watch {
    scrapes: usize,
    failed: Vec<String>,
    slowest: Duration,
    /// Successful domain stats collections at each scrape.
    collections: Vec<f64>,
    /// The largest backlog seen: hand-off queue (events), Kafka sink queue
    /// (batches), spool (events, bytes).
    peak_handoff: f64,
    peak_sink_queue: f64,
    peak_spool: (f64, f64),
}

/// Runs the storm while watching the agent; returns the storm, what the
/// watch saw, when the storm ended, and the events emitted (virsh's count
/// of the storm plus one resync record per guest).
fn run_storm(st: &Stage, agent: &Agent, names: &[&str]) -> (Storm, Watch, Instant, usize) {
    let stop = AtomicBool::new(false);
    let (storm, watched) = std::thread::scope(|scope| {
        let monitor = scope.spawn(|| watch(agent, &stop));
        let storm = metadata_storm(names, PER_GUEST, 1);
        stop.store(true, Ordering::Relaxed);
        (storm, monitor.join().expect("monitor"))
    });
    let storm_end = Instant::now();
    assert_eq!(storm.failed, 0, "virsh commands failed: {:?}", storm.errors);
    let seen_by_virsh = st.captured(&storm);
    assert_eq!(seen_by_virsh, storm.emitted(), "virsh event saw what the storm counted");
    (storm, watched, storm_end, GUESTS + seen_by_virsh)
}

/// Scrapes every 250 ms until `stop`.
fn watch(agent: &Agent, stop: &AtomicBool) -> Watch {
    let mut w = Watch::default();
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        match agent.try_scrape_text() {
            Ok(text) => {
                w.slowest = w.slowest.max(t.elapsed());
                let s = parse(&text);
                let v = |name: &str, labels: &[(&str, &str)]| s.value(name, labels).unwrap_or(0.0);
                w.peak_handoff = w.peak_handoff.max(v("virtpulse_event_queue_depth", &[]));
                w.peak_sink_queue = w.peak_sink_queue.max(v("virtpulse_sink_queue_depth", &[("sink", "kafka")]));
                let spool = (v("virtpulse_kafka_spool_records", &[]), v("virtpulse_kafka_spool_bytes", &[]));
                if spool.0 > w.peak_spool.0 {
                    w.peak_spool = spool;
                }
                w.collections.push(
                    s.value("virtpulse_collections_total", &[("collector", "domain_stats"), ("result", "ok")])
                        .unwrap_or(0.0),
                );
            }
            Err(e) => w.failed.push(e),
        }
        w.scrapes += 1;
        std::thread::sleep(Duration::from_millis(250).saturating_sub(t.elapsed()));
    }
    w
}

/// Small buffers (a hand-off queue of 256 events, a Kafka queue of 2
/// batches) on a disk that allows 10 writes and 512 KiB a second: most of
/// the storm is lost, and every event emitted is either in the topic or in
/// a drop counter, exactly. /metrics answers and collections go on.
#[test]
fn a_storm_without_room_loses_only_counted_events() {
    let _heavy = common::heavy();
    let disk = SlowDisk::new("storm-b", 1024, Throttle { write_iops: Some(10), write_bps: Some(512 << 10) });
    let st = stage("storm-b");
    let names = st.names();
    let agent = st.agent(&disk, "queue_capacity = 2\nmetrics = false\n", "[events]\nqueue_capacity = 256\n");
    let resync = GUESTS;
    let (storm, watched, storm_end, emitted) = run_storm(&st, &agent, &names);

    let (s, lost) = settle(&agent, Duration::from_secs(300));
    let drain = storm_end.elapsed();
    let expect = (emitted as f64 - lost.total()).max(0.0) as usize;
    let found = read_back(&st.broker, &names, expect, Duration::from_secs(120), Duration::from_secs(5));
    let grew = watched.collections.last().copied().unwrap_or(0.0) - watched.collections.first().copied().unwrap_or(0.0);
    eprintln!(
        "storm without room: {} events emitted in {:.1?} ({:.0}/s) + {resync} resync; delivered {} distinct ({} \
         duplicates, {} re-read after a rebalance) read by kafka-python; peak backlog: hand-off {}, Kafka queue {} \
         batches, spool {:?}; lost {lost:?} = {}; delivered + lost = {} (emitted {emitted}); settled \
         {drain:.1?} after the storm; {} scrapes during the storm, {} failed, slowest {:.1?}; domain stats \
         collections +{grew}; sink drops (all) {:?}; hand-off depth gauge after settling {:?}",
        storm.emitted(),
        storm.elapsed,
        storm.rate(),
        found.distinct,
        found.duplicates,
        found.consumed.rereads,
        watched.peak_handoff,
        watched.peak_sink_queue,
        watched.peak_spool,
        lost.total(),
        found.distinct as f64 + lost.total(),
        watched.scrapes,
        watched.failed.len(),
        watched.slowest,
        s.find("virtpulse_sink_records_dropped_total", &[]).iter().map(|x| (&x.labels, x.value)).collect::<Vec<_>>(),
        s.value("virtpulse_event_queue_depth", &[]),
    );
    assert!(lost.total() > 0.0, "the small buffers lost nothing: the test cannot tell counted from uncounted loss");
    assert!(found.distinct > 0, "nothing reached the broker");
    assert_eq!(found.distinct as f64 + lost.total(), emitted as f64, "every event is delivered or counted as dropped");
    assert_duplicates_documented(&found, &s);
    assert!(watched.failed.is_empty(), "scrapes failed during the storm: {:?}", watched.failed);
    assert!(watched.slowest < Duration::from_secs(2), "a scrape took {:?} during the storm", watched.slowest);
    let storm_secs = storm.elapsed.as_secs_f64();
    assert!(
        grew >= (storm_secs / 2.0).floor().max(2.0),
        "domain stats collections (every 1 s) went up by {grew} during a {storm_secs:.0} s storm"
    );
}
