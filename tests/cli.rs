//! The command line: exit codes, error messages, --once, and the daemon on
//! libvirt's in-process test driver (the quick-start default).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::agent::{bin, free_port};
use common::wait_for;

fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(bin()).args(args).envs(env.iter().copied()).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn config_file(text: &str) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), text).unwrap();
    f
}

#[test]
fn schema_rejects_what_it_should() {
    let ok: serde_json::Value = serde_json::json!({
        "schema": "virtpulse.record/v1", "kind": "domain_stats", "time": "2026-01-01T00:00:00.5Z",
        "host": "h", "libvirt_uri": "test:///default", "domain": {"name": "d", "uuid": "u"},
        "fields": {"cpu.time": {"type": "ullong", "value": 5, "unit": "nanoseconds"}}
    });
    common::schema::assert_valid(&ok);
    let mut bad = ok.clone();
    bad["fields"]["cpu.time"]["value"] = serde_json::json!("5");
    assert!(
        std::panic::catch_unwind(|| common::schema::assert_valid(&bad)).is_err(),
        "a string value for ullong must be refused"
    );
    let mut bad = ok.clone();
    bad["schema"] = serde_json::json!("virtpulse.record/v2");
    assert!(std::panic::catch_unwind(|| common::schema::assert_valid(&bad)).is_err());
    let mut bad = ok.clone();
    bad["kind"] = serde_json::json!("storage_pool");
    assert!(std::panic::catch_unwind(|| common::schema::assert_valid(&bad)).is_err(), "a pool record needs `pool`");
}

#[test]
fn version() {
    let (code, out, _) = run(&["--version"], &[]);
    assert_eq!(code, 0);
    assert_eq!(out.trim(), format!("virtpulse {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn check_config_accepts_the_example() {
    let example = common::project_root().join("config.example.toml");
    let (code, out, err) = run(&["--check-config", "--config", example.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("configuration OK"));
}

#[test]
fn check_config_names_the_key_and_the_file() {
    let f = config_file("[collectors.domain_stats]\ngroups = [\"state\", \"cpus\"]\n");
    let path = f.path().to_str().unwrap();
    let (code, _, err) = run(&["--check-config", "--config", path], &[]);
    assert_eq!(code, 78);
    assert!(err.contains(path), "{err}");
    assert!(err.contains("collectors.domain_stats.groups"), "{err}");
    assert!(err.contains("\"cpus\"") && err.contains("cpu-total"), "the message lists the known groups: {err}");

    let f = config_file("[sinks.prometheus]\nlisten = 9177\n");
    let (code, _, err) = run(&["--check-config", "--config", f.path().to_str().unwrap()], &[]);
    assert_eq!(code, 78);
    assert!(err.contains("sinks.prometheus.listen") && err.contains("invalid type"), "{err}");

    let f = config_file("[libvirt]\nuri = \"qemu:///system\"\nretries = 3\n");
    let (code, _, err) = run(&["--check-config", "--config", f.path().to_str().unwrap()], &[]);
    assert_eq!(code, 78);
    assert!(err.contains("libvirt.retries") && err.contains("unknown field"), "{err}");

    let (code, _, err) = run(&["--check-config", "--config", "/nonexistent/virtpulse.toml"], &[]);
    assert_eq!(code, 78);
    assert!(err.contains("/nonexistent/virtpulse.toml") && err.contains("cannot read"), "{err}");
}

#[test]
fn check_config_names_the_environment_variable() {
    let f = config_file("");
    let (code, _, err) =
        run(&["--check-config", "--config", f.path().to_str().unwrap()], &[("VIRTPULSE_COLLECTORS__INTERVAL", "0s")]);
    assert_eq!(code, 78);
    assert!(err.contains("VIRTPULSE_COLLECTORS__INTERVAL") && err.contains("collectors.interval"), "{err}");
}

#[test]
fn once_on_the_test_driver() {
    let (code, out, err) = run(&["--once"], &[("VIRTPULSE_LIBVIRT__URI", "test:///default")]);
    assert_eq!(code, 0, "{err}");
    let recs: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    for r in &recs {
        common::schema::assert_valid(r);
        assert_eq!(r["libvirt_uri"], "test:///default");
    }
    let kinds: Vec<&str> = recs.iter().map(|r| r["kind"].as_str().unwrap()).collect();
    // The test driver has no job statistics: no domain_job record.
    let (devices, kinds): (Vec<&str>, Vec<&str>) = kinds.iter().partition(|k| **k == "node_device");
    assert_eq!(kinds, vec!["domain_stats", "node", "storage_pool", "domain_health", "network", "domain_snapshots"]);
    assert_eq!(devices.len(), 4, "one record per node device of the test driver's fake host");
    assert_eq!(recs[0]["domain"]["name"], "test");
    assert_eq!(recs[0]["fields"]["state.state"]["value"], 1);
    assert_eq!(recs[0]["fields"]["state.state"]["unit"], "enum");
    assert_eq!(recs[1]["fields"]["info.cpus"]["value"], 16, "the test driver's fake host");
    assert_eq!(recs[2]["pool"]["name"], "default-pool");
    // The test driver's network: 192.168.122.2 to .254 (it has no leases API).
    let network = recs.iter().find(|r| r["kind"] == "network").unwrap();
    assert_eq!(network["object"]["name"], "default");
    assert_eq!(network["fields"]["dhcp.addresses"]["value"], 253);
}

#[test]
fn once_without_a_daemon_says_what_to_do() {
    let (code, out, err) =
        run(&["--once"], &[("VIRTPULSE_LIBVIRT__URI", "qemu+unix:///system?socket=/nonexistent/libvirt-sock")]);
    assert_eq!(code, 69, "{err}");
    assert!(out.is_empty());
    assert!(err.contains("cannot connect to libvirt") && err.contains("libvirtd"), "{err}");
}

#[test]
fn busy_port_is_reported_with_the_address() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (code, _, err) =
        run(&[], &[("VIRTPULSE_LIBVIRT__URI", "test:///default"), ("VIRTPULSE_SINKS__PROMETHEUS__LISTEN", &addr)]);
    assert_eq!(code, 70);
    assert!(err.contains(&addr) && err.contains("sinks.prometheus.listen"), "{err}");
}

#[test]
fn metrics_reference_in_docs_is_current() {
    let (code, out, _) = run(&["--print-metrics-reference"], &[]);
    assert_eq!(code, 0);
    let docs = std::fs::read_to_string(common::project_root().join("docs/metrics.md")).unwrap();
    assert!(
        docs == out,
        "docs/metrics.md is out of date: run `cargo run -- --print-metrics-reference > docs/metrics.md`"
    );
}

/// The generated stats-key reference of libvirt 12.9 names, for each key
/// pattern, the metric this build's catalog maps it to (or none): a
/// catalog change makes it stale, and this says so.
#[test]
fn stats_key_reference_of_libvirt_12_9_matches_the_catalog() {
    use virtpulse::collectors::domain_stats::metrics::DOMAIN_STATS;
    use virtpulse::record::mapping::mapping;
    const FILE: &str = "docs/reference/keys-12.9.md";
    let mut stale = Vec::new();
    for (pattern, cell) in common::reference::stats_key_rows(FILE) {
        let m = mapping(&DOMAIN_STATS, &pattern.replace('*', "0"));
        let documented = cell.split('`').nth(1).filter(|n| n.starts_with("libvirt_"));
        let ok = match (&m.export, documented) {
            (Some(e), Some(name)) => e.name == name,
            (None, None) => m.unmapped == cell.starts_with("unmapped"),
            _ => false,
        };
        if !ok {
            let now = m.export.as_ref().map(|e| e.name.to_string()).unwrap_or_else(|| {
                if m.unmapped {
                    "unmapped".into()
                } else {
                    "records only".into()
                }
            });
            stale.push(format!("{pattern}: the file says {cell:?}, the catalog {now}"));
        }
    }
    assert!(
        stale.is_empty(),
        "{FILE} is out of date (run scripts/reference-keys.sh debian13-bp {FILE}):\n{}",
        stale.join("\n")
    );
}

/// The quick-start default: the daemon on the test driver prints records on
/// stdout and serves /metrics.
#[test]
fn daemon_on_the_test_driver_prints_records_and_serves_metrics() {
    let port = free_port();
    let mut child = Command::new(bin())
        .env("VIRTPULSE_LIBVIRT__URI", "test:///default")
        .env("VIRTPULSE_SINKS__STDOUT__ENABLED", "true")
        .env("VIRTPULSE_SINKS__PROMETHEUS__LISTEN", format!("127.0.0.1:{port}"))
        .env("VIRTPULSE_COLLECTORS__INTERVAL", "200ms")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut domain_records = 0;
    while domain_records < 3 {
        let line = lines.next().expect("a record line").unwrap();
        let r: serde_json::Value = serde_json::from_str(&line).unwrap();
        common::schema::assert_valid(&r);
        if r["kind"] == "domain_stats" {
            assert_eq!(r["domain"]["name"], "test");
            domain_records += 1;
        }
    }
    let url = format!("http://127.0.0.1:{port}/metrics");
    let text = wait_for(Duration::from_secs(10), "/metrics", || {
        ureq::get(&url).call().ok().and_then(|r| r.into_string().ok())
    });
    let s = common::exposition::parse(&text);
    assert_eq!(s.value("libvirt_up", &[]), Some(1.0));
    assert_eq!(s.value("libvirt_domain_state", &[("domain", "test")]), Some(1.0));
    assert!(s.value("virtpulse_sink_records_sent_total", &[("sink", "stdout")]).unwrap() >= 3.0);
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
}

/// A host that ships to Kafka or OTLP only still has its health endpoints
/// and the agent's own metrics: the admin listener serves them when no sink
/// does, and stays off while the Prometheus sink serves them.
#[test]
fn without_the_prometheus_sink_the_admin_listener_serves_health_and_own_metrics() {
    let port = free_port();
    let mut child = Command::new(bin())
        .env("VIRTPULSE_LIBVIRT__URI", "test:///default")
        .env("VIRTPULSE_SINKS__PROMETHEUS__ENABLED", "false")
        .env("VIRTPULSE_SINKS__STDOUT__ENABLED", "true")
        .env("VIRTPULSE_ADMIN__LISTEN", format!("127.0.0.1:{port}"))
        .env("VIRTPULSE_COLLECTORS__INTERVAL", "200ms")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let get = |path: &str| {
        let url = format!("http://127.0.0.1:{port}{path}");
        wait_for(Duration::from_secs(10), path, || match ureq::get(&url).call() {
            Ok(r) => Some((r.status(), r.into_string().unwrap_or_default())),
            Err(ureq::Error::Status(code, r)) => Some((code, r.into_string().unwrap_or_default())),
            Err(_) => None,
        })
    };
    assert_eq!(get("/healthz"), (200, "ok\n".to_string()));
    let ready = wait_for(Duration::from_secs(10), "ready", || Some(get("/readyz")).filter(|(c, _)| *c == 200));
    assert!(ready.1.contains("\"libvirt\""), "{}", ready.1);
    let text = get("/metrics").1;
    let s = common::exposition::parse(&text);
    assert_eq!(s.value("libvirt_up", &[]), Some(1.0));
    assert!(s.value("virtpulse_sink_records_sent_total", &[("sink", "stdout")]).is_some(), "{text}");
    assert!(text.contains("virtpulse_build_info"), "{text}");
    assert!(!text.contains("libvirt_domain_state"), "the admin listener serves no libvirt metrics");
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    assert_eq!(child.wait().unwrap().code(), Some(0));

    // With the Prometheus sink on, the admin listener is off unless asked for.
    let prom = free_port();
    let admin = free_port();
    let mut child = Command::new(bin())
        .env("VIRTPULSE_LIBVIRT__URI", "test:///default")
        .env("VIRTPULSE_SINKS__PROMETHEUS__LISTEN", format!("127.0.0.1:{prom}"))
        .env("VIRTPULSE_ADMIN__LISTEN", format!("127.0.0.1:{admin}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{prom}/healthz");
    wait_for(Duration::from_secs(10), "prometheus /healthz", || ureq::get(&url).call().ok());
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", admin)).is_err(),
        "the admin listener is off while the Prometheus sink serves health"
    );
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

#[test]
fn bad_input_found_by_hand_is_a_clear_error_not_a_panic() {
    let check = |toml: &str, env: &[(&str, &str)]| {
        let f = config_file(toml);
        run(&["--check-config", "--config", f.path().to_str().unwrap()], env)
    };
    for (toml, env, needles) in [
        ("[sinks.prometheus]\npath = \"/healthz\"\n", vec![], vec!["sinks.prometheus.path", "/healthz"]),
        ("[sinks.prometheus]\npath = \"/readyz\"\n", vec![], vec!["sinks.prometheus.path"]),
        ("[sinks.prometheus]\npath = \"/{metrics}\"\n", vec![], vec!["sinks.prometheus.path", "'{'"]),
        (
            "",
            vec![("VIRTPULSE_LIBVIRT_URI", "qemu+tcp://elsewhere/system")],
            vec!["VIRTPULSE_LIBVIRT_URI", "did you mean VIRTPULSE_LIBVIRT__URI"],
        ),
        ("[events]\nqueue_capacity = 9000000000000\n", vec![], vec!["events.queue_capacity", "at most"]),
        ("[sinks.kafka]\nqueue_capacity = 9000000000000\n", vec![], vec!["sinks.kafka.queue_capacity"]),
        ("[collectors]\ninterval = \"10000000000s\"\n", vec![], vec!["collectors.interval", "at most"]),
        ("[sinks.otlp]\nenabled = true\n", vec![("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=a%0Ab")], vec!["x-tenant"]),
        (
            "[sinks.otlp]\nenabled = true\n",
            vec![("OTEL_EXPORTER_OTLP_PROTOCOL", "carrier-pigeon")],
            vec!["OTEL_EXPORTER_OTLP_PROTOCOL"],
        ),
        (
            "[sinks.otlp]\nenabled = true\n",
            vec![("OTEL_RESOURCE_ATTRIBUTES", "novalue")],
            vec!["OTEL_RESOURCE_ATTRIBUTES"],
        ),
    ] {
        let (code, _, err) = check(toml, &env);
        assert_eq!(code, 78, "{toml} {env:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        for n in needles {
            assert!(err.contains(n), "{toml} {env:?}: {n:?} not in {err}");
        }
    }
    // What --check-config accepts, the daemon starts with: a multi-byte
    // character after a `%` (the daemon used to panic on it).
    let attrs = [("OTEL_RESOURCE_ATTRIBUTES", "k=%a€,team=virt")];
    let (code, out, err) = check("[sinks.otlp]\nenabled = true\nendpoint = \"http://127.0.0.1:9\"\n", &attrs);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("configuration OK"));
    let port = free_port();
    let child = Command::new(bin())
        .envs(attrs)
        .env("VIRTPULSE_LIBVIRT__URI", "test:///default")
        .env("VIRTPULSE_SINKS__OTLP__ENABLED", "true")
        .env("VIRTPULSE_SINKS__OTLP__ENDPOINT", "http://127.0.0.1:9")
        .env("VIRTPULSE_SINKS__PROMETHEUS__LISTEN", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/metrics");
    wait_for(Duration::from_secs(15), "the daemon's /metrics", || ureq::get(&url).call().ok().map(|_| ()));
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A small deterministic generator (xorshift64*): the same mutations on
/// every run, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

const ODD_VALUES: &[&str] = &[
    "0",
    "-1",
    "1",
    "\"\"",
    "\"%a€\"",
    "18446744073709551615",
    "9223372036854775807",
    "1e309",
    "nan",
    "true",
    "[]",
    "{}",
    "[\"a\", 1]",
    "\"/healthz\"",
    "\"1000000d\"",
    "\"0s\"",
    "\"☃\"",
    "\"\\u0000\"",
    "\"a,b,,c\"",
    "\"http://\"",
    "\"qemu:///system\"",
    "\"[::1]:99999\"",
    "\"*\"",
    "\"/x/\"",
    "\"everything\"",
    "{ a = 1 }",
];

const ODD_ENV: &[(&str, &[&str])] = &[
    ("OTEL_RESOURCE_ATTRIBUTES", &["k=%a€", "=", "a", "k=v,,", "%%%=%%%"]),
    ("OTEL_EXPORTER_OTLP_HEADERS", &["a=b%0A", "x", "k=%ff", "a=b"]),
    ("OTEL_EXPORTER_OTLP_ENDPOINT", &["http://", "ftp://x", "http://[::1", "https://h:0"]),
    ("OTEL_EXPORTER_OTLP_TIMEOUT", &["-5", "99999999999999999999", "1.5"]),
    ("OTEL_METRIC_EXPORT_INTERVAL", &["0", "x"]),
    ("VIRTPULSE_LIBVIRT_URI", &["x"]),
    ("VIRTPULSE_COLLECTORS__INTERVAL", &["1ms", "5s", "forever"]),
    ("VIRTPULSE_SINKS__PROMETHEUS__PATH", &["/healthz", "/ok", "x"]),
    ("VIRTPULSE_EVENTS__QUEUE_CAPACITY", &["0", "99999999999999", "[1]"]),
    ("VIRTPULSE_METRICS__INCLUDE", &["a,b", "libvirt.x", "*"]),
    ("VIRTPULSE_SINKS__KAFKA__PROPERTIES__SASL_MECHANISMS", &["NOPE"]),
];

fn mutate(rng: &mut Rng, base: &str) -> String {
    let mut lines: Vec<String> = base.lines().map(String::from).collect();
    for _ in 0..1 + rng.below(4) {
        let i = rng.below(lines.len());
        match rng.below(7) {
            0 => {
                lines.remove(i);
            }
            1 => {
                let l = lines[i].clone();
                lines.insert(i, l);
            }
            2 | 3 => {
                let l = lines[i].trim_start_matches("# ").to_string();
                if let Some((k, _)) = l.split_once('=') {
                    lines[i] = format!("{k}= {}", rng.pick(ODD_VALUES));
                }
            }
            4 => {
                let mut b = lines[i].clone().into_bytes();
                if !b.is_empty() {
                    let j = rng.below(b.len());
                    b[j] = (rng.next() & 0x7f) as u8;
                }
                lines[i] = String::from_utf8_lossy(&b).into_owned();
            }
            5 => lines.truncate(i),
            _ => lines[i] = lines[i].trim_start_matches("# ").to_string(),
        }
        if lines.is_empty() {
            break;
        }
    }
    lines.join("\n")
}

#[test]
fn a_thousand_mutated_configurations_give_0_or_78_and_never_a_panic() {
    let example = std::fs::read_to_string(common::project_root().join("config.example.toml")).unwrap();
    let with_sinks = example
        .replace("[sinks.otlp]\n# Metrics and event logs", "[sinks.otlp]\nenabled = true\n# Metrics and event logs")
        .replace("[sinks.kafka]\n# Events at least once", "[sinks.kafka]\nenabled = true\n# Events at least once");
    let dir = tempfile::tempdir().unwrap();
    let outcomes = std::sync::Mutex::new([0usize; 2]);
    std::thread::scope(|scope| {
        for worker in 0..2u64 {
            let (example, with_sinks, dir, outcomes) = (&example, &with_sinks, dir.path(), &outcomes);
            scope.spawn(move || {
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (worker + 1));
                for i in 0..500 {
                    // The Kafka check builds a librdkafka client: not every time.
                    let base = if i % 4 == 0 { with_sinks } else { example };
                    let text = mutate(&mut rng, base);
                    let path = dir.join(format!("c{worker}-{i}.toml"));
                    std::fs::write(&path, &text).unwrap();
                    let mut env: Vec<(String, String)> = Vec::new();
                    if rng.below(2) == 0 {
                        for _ in 0..1 + rng.below(3) {
                            let (k, vals) = ODD_ENV[rng.below(ODD_ENV.len())];
                            env.push((k.to_string(), rng.pick(vals).to_string()));
                        }
                    }
                    let out = Command::new(bin())
                        .args(["--check-config", "--config", path.to_str().unwrap()])
                        .env_remove("VIRTPULSE_AGENT__LOG_LEVEL")
                        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                        .output()
                        .unwrap();
                    let code = out.status.code();
                    let err = String::from_utf8_lossy(&out.stderr);
                    assert!(
                        matches!(code, Some(0) | Some(78)) && !err.contains("panicked"),
                        "exit {code:?} for\n{text}\nenv {env:?}\n{err}"
                    );
                    outcomes.lock().unwrap()[usize::from(code == Some(78))] += 1;
                }
            });
        }
    });
    let [ok, refused] = *outcomes.lock().unwrap();
    println!("1,000 mutated configurations: {ok} accepted, {refused} refused with exit 78");
    assert!(ok > 50 && refused > 50, "the mutations should exercise both outcomes ({ok} / {refused})");
}
