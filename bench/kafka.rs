//! Kafka sink: the event rate it sustains into a local broker (tansu) with
//! p50/p99 latency from libvirt's callback to the broker's acknowledgement,
//! the rate at which it spools while the broker is down, and the spool's own
//! write throughput per sync policy.
//!
//!   cargo bench --bench kafka [-- SECONDS]
//!
//! Producer threads change a real guest's description as fast as libvirtd
//! accepts (one metadata-change event per call); the agent (collectors off)
//! sends every event to the broker; the latency histogram is the agent's own
//! `virtpulse_kafka_event_delivery_seconds`, read before and after each run.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::{cpu_seconds, start_guest, virsh, Producers};
use virtpulse::sinks::kafka::spool::{Spool, SpoolConfig, SyncPolicy};

const GUEST: &str = "vpbench-kafka";
const LISTEN: &str = "127.0.0.1:19181";
const BROKER: &str = "127.0.0.1:19182";

fn tansu() -> String {
    std::env::var("VIRTPULSE_TANSU").unwrap_or_else(|_| "/opt/virtpulse-test/tansu/bin/tansu".into())
}

fn start_broker() -> Child {
    let url = format!("tcp://{BROKER}");
    let child = Command::new(tansu())
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
            "--storage-engine",
            "memory://tansu/",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("tansu (scripts/install-tansu.sh)");
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(BROKER).is_err() {
        assert!(Instant::now() < deadline, "the broker did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    for topic in ["libvirt.events", "libvirt.metrics"] {
        Command::new(tansu())
            .args(["topic", "create", topic, "--partitions", "3", "--broker", &url])
            .stderr(Stdio::null())
            .status()
            .unwrap();
    }
    child
}

fn scrape() -> String {
    let body = Command::new("curl").args(["-s", &format!("http://{LISTEN}/metrics")]).output().map(|o| o.stdout);
    String::from_utf8_lossy(&body.unwrap_or_default()).into_owned()
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// (upper bound, cumulative count) of the delivery latency histogram.
fn histogram(text: &str) -> Vec<(f64, f64)> {
    text.lines()
        .filter_map(|l| l.strip_prefix("virtpulse_kafka_event_delivery_seconds_bucket{le=\""))
        .filter_map(|l| {
            let (le, rest) = l.split_once("\"} ")?;
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            Some((le, rest.trim().parse().ok()?))
        })
        .collect()
}

/// Quantile by linear interpolation inside the bucket (as PromQL's
/// histogram_quantile does), from the difference of two snapshots.
fn quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> f64 {
    let counts: Vec<(f64, f64)> = after.iter().zip(before).map(|((le, a), (_, b))| (*le, a - b)).collect();
    let total = counts.last().map(|c| c.1).unwrap_or(0.0);
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for (le, c) in counts {
        if c >= rank {
            if le.is_infinite() {
                return lower.0;
            }
            return lower.0 + (le - lower.0) * (rank - lower.1) / (c - lower.1).max(1e-9);
        }
        lower = (le, c);
    }
    f64::NAN
}

/// Runs `producers` threads for `seconds`; returns events produced.
fn run_producers(producers: usize, seconds: u64) -> (u64, f64) {
    let p = Producers::start(GUEST, producers);
    std::thread::sleep(Duration::from_secs(seconds));
    p.finish()
}

fn spool_throughput() {
    println!("\nspool alone (1 KiB messages, 100,000 per run):");
    println!("{:>10} {:>8} {:>14} {:>10} {:>18}", "sync", "group", "appended/s", "MiB/s", "read+acked/s");
    let payload = vec![b'x'; 1024];
    for (label, sync) in [
        ("always", SyncPolicy::Always),
        ("1s", SyncPolicy::Interval(Duration::from_secs(1))),
        ("never", SyncPolicy::Never),
    ] {
        for group in [1usize, 64] {
            // One fsync per message is slow: measured on fewer.
            let n = if sync == SyncPolicy::Always && group == 1 { 2_000 } else { 100_000 };
            let dir = tempfile::tempdir().unwrap();
            let cfg = SpoolConfig {
                dir: dir.path().to_path_buf(),
                max_bytes: 1 << 30,
                max_age: Duration::from_secs(3600),
                sync,
            };
            let (mut spool, _) = Spool::open(cfg).unwrap();
            let started = Instant::now();
            for _ in 0..n / group {
                spool.append((0..group).map(|_| (0u64, payload.as_slice()))).unwrap();
            }
            let append = started.elapsed().as_secs_f64();
            let started = Instant::now();
            while let Some(e) = spool.read_next().unwrap() {
                spool.ack(e.seq);
            }
            spool.tick().unwrap();
            let read = started.elapsed().as_secs_f64();
            println!(
                "{label:>10} {group:>8} {:>14.0} {:>10.1} {:>18.0}",
                n as f64 / append,
                n as f64 * 1024.0 / append / 1048576.0,
                n as f64 / read
            );
        }
    }
}

fn main() {
    let seconds: u64 = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(10);
    let root = env!("CARGO_MANIFEST_DIR");
    assert!(Command::new(format!("{root}/scripts/start-libvirtd.sh")).status().unwrap().success());
    start_guest(GUEST);
    let mut broker = start_broker();
    let spool = tempfile::tempdir().unwrap();
    let mut agent = Command::new(env!("CARGO_BIN_EXE_virtpulse"))
        .args(["--config", "/dev/null"])
        .env("VIRTPULSE_SINKS__PROMETHEUS__LISTEN", LISTEN)
        .env("VIRTPULSE_SINKS__KAFKA__ENABLED", "true")
        .env("VIRTPULSE_SINKS__KAFKA__BROKERS", BROKER)
        .env("VIRTPULSE_SINKS__KAFKA__SPOOL_DIR", spool.path())
        .env("VIRTPULSE_SINKS__KAFKA__METRICS", "false")
        .env("VIRTPULSE_COLLECTORS__DOMAIN_STATS__ENABLED", "false")
        .env("VIRTPULSE_COLLECTORS__JOBS__ENABLED", "false")
        .env("VIRTPULSE_COLLECTORS__NODE__ENABLED", "false")
        .env("VIRTPULSE_COLLECTORS__POOLS__ENABLED", "false")
        .env("VIRTPULSE_DOMAINS__INCLUDE", GUEST)
        .env("VIRTPULSE_AGENT__LOG_LEVEL", "error")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&scrape(), "virtpulse_kafka_broker_up") < 1.0 {
        assert!(Instant::now() < deadline, "the agent did not connect to the broker");
        std::thread::sleep(Duration::from_millis(200));
    }

    println!("events into the broker (spool sync: always), {seconds} s per row:");
    println!(
        "{:>9} {:>12} {:>12} {:>9} {:>9} {:>10} {:>13}",
        "producers", "produced/s", "acked/s", "p50 ms", "p99 ms", "spool max", "agent CPU/ev"
    );
    for producers in [1usize, 2, 4] {
        let before = scrape();
        let acked0 = metric(&before, "virtpulse_kafka_messages_delivered_total{stream=\"events\"}");
        let cpu0 = cpu_seconds(agent.id());
        let spool_max = Arc::new(AtomicU64::new(0));
        let watching = Arc::new(AtomicBool::new(true));
        let watcher = {
            let (spool_max, watching) = (spool_max.clone(), watching.clone());
            std::thread::spawn(move || {
                while watching.load(Ordering::Relaxed) {
                    let depth = metric(&scrape(), "virtpulse_kafka_spool_records") as u64;
                    spool_max.fetch_max(depth, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        let (produced, window) = run_producers(producers, seconds);
        let settle = Instant::now() + Duration::from_secs(20);
        let mut after = scrape();
        while metric(&after, "virtpulse_kafka_messages_delivered_total{stream=\"events\"}") - acked0 < produced as f64
            && Instant::now() < settle
        {
            std::thread::sleep(Duration::from_millis(50));
            after = scrape();
        }
        watching.store(false, Ordering::Relaxed);
        watcher.join().unwrap();
        let acked = metric(&after, "virtpulse_kafka_messages_delivered_total{stream=\"events\"}") - acked0;
        let (h0, h1) = (histogram(&before), histogram(&after));
        let cpu = cpu_seconds(agent.id()) - cpu0;
        println!(
            "{producers:>9} {:>12.0} {:>12.0} {:>9.2} {:>9.2} {:>10} {:>10.1} us",
            produced as f64 / window,
            acked / window,
            quantile(&h0, &h1, 0.5) * 1e3,
            quantile(&h0, &h1, 0.99) * 1e3,
            spool_max.load(Ordering::Relaxed),
            cpu / acked.max(1.0) * 1e6
        );
        assert_eq!(acked as u64, produced, "events produced vs acknowledged");
    }

    // The broker goes away: events still go to disk as fast as they come.
    let _ = broker.kill();
    let _ = broker.wait();
    // Acknowledgements still on their way when the broker died also lower
    // the spool: count them back in.
    let taken = |t: &str| {
        metric(t, "virtpulse_kafka_spool_records")
            + metric(t, "virtpulse_kafka_messages_delivered_total{stream=\"events\"}")
    };
    let spooled0 = taken(&scrape());
    let processed0 = metric(&scrape(), "virtpulse_events_processed_total");
    let (produced, window) = run_producers(4, seconds);
    let settle = Instant::now() + Duration::from_secs(10);
    let mut spooled = taken(&scrape()) - spooled0;
    while spooled < produced as f64 && Instant::now() < settle {
        std::thread::sleep(Duration::from_millis(100));
        spooled = taken(&scrape()) - spooled0;
    }
    let end = scrape();
    println!(
        "\nbroker down, 4 producers: {:.0} events/s produced, {:.0} spooled/s ({} of {produced} spooled, {} events processed, {} dropped, {} bytes on disk)",
        produced as f64 / window,
        spooled / window,
        spooled,
        metric(&end, "virtpulse_events_processed_total") - processed0,
        metric(&end, "virtpulse_events_dropped_total"),
        metric(&end, "virtpulse_kafka_spool_bytes")
    );
    let _ = agent.kill();
    let _ = agent.wait();
    virsh(&["destroy", GUEST]);
    spool_throughput();
}
