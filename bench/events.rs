//! Event hand-off: latency from libvirt's callback in the agent to a reader
//! of its stdout sink (p50/p99), and the event rate the agent sustains.
//!
//!   cargo bench --bench events [-- SECONDS]
//!
//! A real guest and a real libvirtd: producer threads (each with its own
//! read-write connection) change the guest's description as fast as
//! libvirtd accepts, one metadata-change event per call; the agent, with its
//! collectors off, prints every event on stdout, which this process reads.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

mod common;

use common::{cpu_seconds, start_guest, virsh, Producers};

const GUEST: &str = "vpbench-events";
const LISTEN: &str = "127.0.0.1:19180";

fn metric(name: &str) -> f64 {
    let body = Command::new("curl")
        .args(["-s", &format!("http://{LISTEN}/metrics")])
        .output()
        .map(|o| o.stdout)
        .unwrap_or_default();
    String::from_utf8_lossy(&body)
        .lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((p * (sorted.len() - 1) as f64).round() as usize).min(sorted.len() - 1)]
}

fn main() {
    let seconds: u64 = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(10);
    let root = env!("CARGO_MANIFEST_DIR");
    assert!(Command::new(format!("{root}/scripts/start-libvirtd.sh")).status().unwrap().success());
    start_guest(GUEST);

    let mut agent = Command::new(env!("CARGO_BIN_EXE_virtpulse"))
        .args(["--config", "/dev/null"])
        .env("VIRTPULSE_SINKS__STDOUT__ENABLED", "true")
        .env("VIRTPULSE_SINKS__PROMETHEUS__LISTEN", LISTEN)
        .env("VIRTPULSE_COLLECTORS__DOMAIN_STATS__ENABLED", "false")
        .env("VIRTPULSE_COLLECTORS__JOBS__ENABLED", "false")
        .env("VIRTPULSE_COLLECTORS__NODE__ENABLED", "false")
        .env("VIRTPULSE_COLLECTORS__POOLS__ENABLED", "false")
        .env("VIRTPULSE_DOMAINS__INCLUDE", GUEST)
        .env("VIRTPULSE_AGENT__LOG_LEVEL", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let latencies: Arc<Mutex<Vec<f64>>> = Arc::default();
    let received = Arc::new(AtomicU64::new(0));
    {
        let (latencies, received) = (latencies.clone(), received.clone());
        let out = agent.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let now = SystemTime::now();
                let Ok(r) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
                if r["event"]["name"] != "metadata_change" {
                    continue;
                }
                if let Some(t) = r["time"].as_str().and_then(|t| humantime::parse_rfc3339(t).ok()) {
                    let ms = now.duration_since(t).unwrap_or_default().as_secs_f64() * 1e3;
                    latencies.lock().unwrap().push(ms);
                }
                received.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric("virtpulse_event_callback_registered{family=\"domain\",event=\"metadata_change\"}") < 1.0 {
        assert!(Instant::now() < deadline, "the agent did not register its callbacks");
        std::thread::sleep(Duration::from_millis(100));
    }

    println!(
        "{:>9} {:>12} {:>12} {:>9} {:>9} {:>9} {:>11} {:>8} {:>13}",
        "producers", "produced/s", "recorded/s", "p50 ms", "p99 ms", "max ms", "queue max", "dropped", "agent CPU/ev"
    );
    for producers in [1usize, 2, 4] {
        latencies.lock().unwrap().clear();
        let before = received.load(Ordering::Relaxed);
        let cpu0 = cpu_seconds(agent.id());
        let p = Producers::start(GUEST, producers);
        let mut queue_max: f64 = 0.0;
        while p.elapsed() < Duration::from_secs(seconds) {
            queue_max = queue_max.max(metric("virtpulse_event_queue_depth"));
            std::thread::sleep(Duration::from_millis(100));
        }
        let (produced, window) = p.finish();
        let settle = Instant::now() + Duration::from_secs(10);
        while received.load(Ordering::Relaxed) - before < produced && Instant::now() < settle {
            std::thread::sleep(Duration::from_millis(50));
        }
        let got = received.load(Ordering::Relaxed) - before;
        let mut l = latencies.lock().unwrap().clone();
        l.sort_by(|a, b| a.total_cmp(b));
        let cpu = cpu_seconds(agent.id()) - cpu0;
        println!(
            "{producers:>9} {:>12.0} {:>12.0} {:>9.2} {:>9.2} {:>9.2} {queue_max:>11.0} {:>8.0} {:>10.1} us",
            produced as f64 / window,
            got as f64 / window,
            percentile(&l, 0.5),
            percentile(&l, 0.99),
            l.last().copied().unwrap_or(f64::NAN),
            metric("virtpulse_events_dropped_total"),
            cpu / got.max(1) as f64 * 1e6
        );
        assert_eq!(got, produced, "events produced vs recorded");
    }
    let _ = agent.kill();
    let _ = agent.wait();
    virsh(&["destroy", GUEST]);

    // What one core of the agent can turn into records, without libvirtd in
    // the way: normalization and JSON, the per-event work after the hand-off.
    use virtpulse::events::normalize::{to_record, Stamp};
    use virtpulse::libvirt::events::{Family, RawEvent};
    use virtpulse::value::TypedValue;
    let identity = virtpulse::record::Identity { host: "hv".into(), uri: "qemu:///system".into() };
    let raw = RawEvent {
        family: Family::Domain,
        event_id: 6,
        name: "io_error_reason",
        object_name: "instance-00000001".into(),
        object_uuid: "8712a26a-5c92-41e5-942f-682399ec37cf".into(),
        fields: vec![
            ("src_path".into(), TypedValue::String("/var/lib/libvirt/images/instance-00000001.qcow2".into())),
            ("dev_alias".into(), TypedValue::String("virtio-disk0".into())),
            ("action".into(), TypedValue::Int(1)),
            ("reason".into(), TypedValue::String("eio".into())),
        ],
        time: SystemTime::now(),
        at: Instant::now(),
    };
    let n = 200_000u64;
    let started = Instant::now();
    let mut bytes = 0usize;
    for seq in 0..n {
        let r = to_record(&raw, Stamp { identity: &identity, run_id: "bench", seq, job_kind: None });
        bytes += r.to_json().len();
    }
    let per = started.elapsed().as_secs_f64() / n as f64;
    println!(
        "in-process: {:.0} events/s per core normalized and serialized ({:.1} us each, {} bytes of JSON each)",
        1.0 / per,
        per * 1e6,
        bytes as u64 / n
    );
}
