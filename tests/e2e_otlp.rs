//! The OTLP sink against a real receiver (rotel, its debug exporter read
//! back): metrics of real guests match `virsh domstats` in name, kind, unit,
//! attributes and value; events of real guests arrive as log records; both
//! transports work; a receiver outage costs nothing but what the bounds say.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::agent::{bin, Agent, STDOUT};
use common::guest::{Guest, GuestSpec};
use common::otlp::{sink_config, Log, Point, Receiver};
use common::{compare, virsh, wait_for};
use virtpulse::collectors::domain_stats::metrics::DOMAIN_STATS;
use virtpulse::sinks::otlp::naming::{attribute_key, metric_name};
use virtpulse::value::MetricType;

fn include(names: &[&str]) -> String {
    let list: Vec<String> = names.iter().map(|n| common::agent::toml_str(n)).collect();
    format!("[domains]\ninclude = [{}]\n", list.join(", "))
}

/// Every group and detail: each value virsh shows must be exported.
const FAST: &str = "[collectors]\ninterval = \"1s\"\n[metrics]\nprofile = \"everything\"\n";

fn now_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

/// The points of the first export whose points of `uuid` were collected after `after`.
fn export_after(receiver: &Receiver, uuid: &str, after: u64) -> Vec<Point> {
    wait_for(Duration::from_secs(30), "an OTLP export collected after virsh", || {
        let points = receiver.points();
        let export = points
            .iter()
            .find(|p| p.attributes.get("libvirt.domain.uuid").map(String::as_str) == Some(uuid) && p.time > after)?
            .export;
        Some(points.into_iter().filter(|p| p.export == export).collect())
    })
}

fn point<'p>(points: &'p [Point], name: &str, attrs: &[(&str, &str)]) -> &'p Point {
    points
        .iter()
        .find(|p| p.name == name && attrs.iter().all(|(k, v)| p.attributes.get(*k).map(String::as_str) == Some(*v)))
        .unwrap_or_else(|| panic!("no point {name}{attrs:?} in the export"))
}

#[test]
fn grpc_metrics_match_virsh_domstats() {
    let receiver = Receiver::start();
    let mut g = Guest::start("otlp-grpc", GuestSpec::default());
    wait_for(Duration::from_secs(20), "the guest's block stats", || {
        virsh::domstats(&g.name, &[]).contains_key("block.0.rd.reqs").then_some(())
    });
    let config = format!(
        "{FAST}{}{}[sinks.otlp.resource_attributes]\n\"deployment.environment\" = \"test\"\n",
        include(&[&g.name]),
        sink_config(&receiver.grpc_endpoint(), "grpc", "1s")
    );
    let agent = Agent::start_with_env(&config, &[("OTEL_RESOURCE_ATTRIBUTES", "rack=r%2017,team=virt")]);
    // Let the node collector report the hypervisor version first.
    wait_for(Duration::from_secs(30), "node metrics over OTLP", || {
        receiver.points().iter().any(|p| p.name == "libvirt.node.memory.total").then_some(())
    });

    let before = virsh::domstats(&g.name, &[]);
    let t0 = now_nanos();
    let points = export_after(&receiver, &g.uuid, t0);
    let after = virsh::domstats(&g.name, &[]);

    // Every series the Prometheus sink exports for this domain, as OTLP.
    let expected = compare::expected(&g.name, &g.uuid, &after);
    assert!(expected.len() > 40, "virsh shows few stats: {}", expected.len());
    for ((prom, labels), (mtype, help, _)) in &expected {
        let (name, unit) = metric_name(prom, *mtype);
        let attrs: Vec<(String, String)> =
            labels.iter().map(|(k, v)| (attribute_key(&DOMAIN_STATS, k), v.clone())).collect();
        let attrs: Vec<(&str, &str)> = attrs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let p = point(&points, &name, &attrs);
        assert_eq!(p.unit, unit, "{name}");
        assert_eq!(&p.description, help, "{name}");
        match mtype {
            MetricType::Counter => {
                assert_eq!((p.data_type.as_str(), p.monotonic), ("Sum", true), "{name}");
                assert_eq!(p.temporality, "AGGREGATION_TEMPORALITY_CUMULATIVE", "{name}");
                assert!(p.start > 0 && p.start <= p.time, "{name}: start {} time {}", p.start, p.time);
            }
            _ => assert_eq!(p.data_type, "Gauge", "{name}"),
        }
        // Counters moved between the two virsh calls; the export lies between.
        let key_range = |stats: &BTreeMap<String, String>| {
            compare::expected(&g.name, &g.uuid, stats).get(&(prom.clone(), labels.clone())).map(|e| e.2)
        };
        let (lo, hi) = (key_range(&before).unwrap_or(f64::MIN), key_range(&after).unwrap_or(f64::MAX));
        let volatile =
            prom.contains("balloon") || prom.ends_with("_state") || prom.contains("_vm_") || prom.contains("kvm");
        let eps = 1e-9 * lo.abs().max(1.0);
        assert!(
            volatile || (lo.min(hi) - eps <= p.value && p.value <= lo.max(hi) + eps),
            "{name}{attrs:?}: exported {}, virsh {lo}..{hi}",
            p.value
        );
    }

    // Spot checks, written out: the names, units and attributes users see.
    let cpu = point(&points, "libvirt.domain.cpu.time", &[("libvirt.domain.name", &g.name)]);
    assert_eq!((cpu.unit.as_str(), cpu.data_type.as_str()), ("s", "Sum"));
    let cpu_ns: f64 = after["cpu.time"].parse().unwrap();
    assert!(cpu.value > 0.0 && cpu.value <= cpu_ns / 1e9);
    let read = point(&points, "libvirt.domain.block.read", &[("libvirt.domain.device", "vda")]);
    assert_eq!(read.unit, "By");
    let nic = after["net.0.name"].as_str();
    let pkts = point(&points, "libvirt.domain.interface.receive.packets", &[("libvirt.domain.interface", nic)]);
    assert_eq!(pkts.unit, "{packet}");
    for vcpu in ["0", "1"] {
        assert_eq!(point(&points, "libvirt.domain.vcpu.time", &[("libvirt.domain.vcpu", vcpu)]).unit, "s");
    }
    let bal = point(&points, "libvirt.domain.balloon.maximum", &[("libvirt.domain.uuid", &g.uuid)]);
    assert_eq!((bal.unit.as_str(), bal.data_type.as_str(), bal.value), ("By", "Gauge", 32.0 * 1024.0 * 1024.0));
    let info = point(&points, "libvirt.domain.info", &[("libvirt.domain.name", &g.name)]);
    assert_eq!(info.attributes["libvirt.domain.vcpus"], "2");
    assert!(!info.attributes.contains_key("libvirt.domain.state"), "the state has its own gauge");

    // The resource.
    let r = &cpu.resource;
    assert_eq!(r["service.name"], "virtpulse");
    assert_eq!(r["service.version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(r["libvirt.uri"], virsh::uri());
    assert_eq!(r["deployment.environment"], "test");
    assert_eq!((r["rack"].as_str(), r["team"].as_str()), ("r 17", "virt"));
    let machine_id = std::fs::read_to_string("/etc/machine-id").unwrap_or_default();
    if !machine_id.trim().is_empty() {
        assert_eq!(r["host.id"], machine_id.trim());
    }
    let version = virsh::must(&["version"]);
    let qemu = version
        .lines()
        .find(|l| l.contains("hypervisor: QEMU"))
        .and_then(|l| l.split_whitespace().last())
        .expect("virsh version names QEMU");
    assert_eq!(r["libvirt.hypervisor.version"], qemu);
    assert_eq!(r["libvirt.hypervisor.type"], "QEMU");
    assert!(r.contains_key("host.name"));

    // Node and pool metrics travel too.
    assert!(points.iter().any(|p| p.name == "libvirt.node.cpu.time" && p.data_type == "Sum" && p.unit == "s"));

    // A domain that is gone stops being exported.
    g.destroy();
    g.undefine();
    let seen = receiver.points().iter().map(|p| p.export).max().unwrap_or(0);
    wait_for(Duration::from_secs(30), "an export without the destroyed domain", || {
        let points = receiver.points();
        let last = points.iter().map(|p| p.export).max()?;
        // Some export built after the domain was gone has none of its points.
        (seen + 1..=last)
            .any(|e| {
                let of: Vec<&Point> = points.iter().filter(|p| p.export == e).collect();
                of.iter().any(|p| p.name.starts_with("libvirt.node."))
                    && !of.iter().any(|p| p.attributes.get("libvirt.domain.uuid") == Some(&g.uuid))
            })
            .then_some(())
    });
    let s = agent.scrape();
    assert!(s.value("virtpulse_otlp_exports_total", &[("signal", "metrics"), ("result", "ok")]).unwrap() >= 3.0);
    assert_eq!(s.value("virtpulse_otlp_receiver_up", &[("signal", "metrics")]), Some(1.0));
    assert!(s.value("virtpulse_otlp_items_sent_total", &[("signal", "metrics")]).unwrap() > 100.0);
}

/// Event records of the stdout sink, by event id.
fn stdout_events(agent: &Agent, name: &str) -> BTreeMap<String, serde_json::Value> {
    agent
        .records()
        .into_iter()
        .filter(|r| r["kind"] == "event" && r["domain"]["name"] == name)
        .map(|r| (r["event"]["id"].as_str().unwrap().to_string(), r))
        .collect()
}

fn logs_of(receiver: &Receiver, name: &str) -> BTreeMap<String, Log> {
    receiver
        .logs()
        .into_iter()
        .filter(|l| l.attributes.get("libvirt.domain.name").map(String::as_str) == Some(name))
        .map(|l| (l.attributes["libvirt.event.id"].clone(), l))
        .collect()
}

/// What a log record's attribute should read for a record field.
fn printed(v: &serde_json::Value) -> String {
    match &v["value"] {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Bool(b) => format!("Bool({b})"),
        n if v["type"] == "double" => format!("Double({})", n.as_f64().unwrap()),
        n => format!("Int({n})"),
    }
}

#[test]
fn http_transport_carries_guest_events_as_log_records() {
    let receiver = Receiver::start();
    let name = Guest::name_for("otlp-ev");
    let config = format!("{STDOUT}{FAST}{}{}", include(&[&name]), sink_config(&receiver.http_endpoint(), "http", "1s"));
    let agent = Agent::start(&config);
    // A guest whose disk fails: an I/O error pauses it (error severity).
    let (g, _disk) = common::ioerror::start_guest(&name);
    wait_for(Duration::from_secs(30), "the I/O error pause", || {
        virsh::must(&["domstate", &g.name]).contains("paused").then_some(())
    });
    virsh::must(&["resume", &g.name]);
    g.destroy();
    wait_for(Duration::from_secs(30), "the stopped event in the records", || {
        stdout_events(&agent, &name).values().any(|r| r["event"]["type"] == "stopped").then_some(())
    });
    let records = stdout_events(&agent, &name);
    let logs = wait_for(Duration::from_secs(30), "every event record as a log record", || {
        let logs = logs_of(&receiver, &name);
        records.keys().all(|id| logs.contains_key(id)).then_some(logs)
    });
    assert!(records.len() >= 5, "{records:?}");
    for (id, r) in &records {
        let l = &logs[id];
        let e = &r["event"];
        assert_eq!(l.event_name, format!("libvirt.{}.{}", e["family"].as_str().unwrap(), e["name"].as_str().unwrap()));
        assert_eq!(l.attributes["libvirt.domain.uuid"], g.uuid);
        assert_eq!(l.attributes["libvirt.event.seq"], format!("Int({})", e["seq"]));
        assert!(l.trace_id.is_empty(), "trace-free: {l:?}");
        for (key, f) in r["fields"].as_object().unwrap() {
            assert_eq!(l.attributes[&format!("libvirt.event.field.{key}")], printed(f), "{id}: {key}");
        }
        let expected_time = humantime::parse_rfc3339(r["time"].as_str().unwrap()).unwrap();
        let nanos = expected_time.duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64;
        assert_eq!(l.time, nanos, "{id}: the event's own time");
        assert!(l.observed >= l.time);
    }
    let by = |event: &str, kind: &str| -> Vec<&Log> {
        logs.values()
            .filter(|l| {
                l.event_name == event && l.attributes.get("libvirt.event.type").map(String::as_str) == Some(kind)
            })
            .collect()
    };
    let io = by("libvirt.domain.io_error_reason", "pause");
    assert!(!io.is_empty(), "no io_error_reason log record");
    assert!(io.iter().all(|l| l.severity_text == "ERROR" && l.severity_number.contains("ERROR")));
    assert!(io[0].attributes["libvirt.event.field.dev_alias"].starts_with("virtio-disk"));
    let paused = by("libvirt.domain.lifecycle", "suspended");
    assert!(paused.iter().any(|l| l.severity_text == "WARN" && l.attributes["libvirt.event.detail"] == "ioerror"));
    let started = by("libvirt.domain.lifecycle", "started");
    assert_eq!(started[0].severity_text, "INFO");
    assert_eq!(started[0].body, format!("domain {name}: lifecycle started (booted)"));
    assert_eq!(started[0].resource["service.name"], "virtpulse");
    // Metrics took the same transport.
    assert!(receiver.points().iter().any(|p| p.name == "libvirt.node.memory.total"));
    let s = agent.scrape();
    assert!(s.value("virtpulse_otlp_exports_total", &[("signal", "logs"), ("result", "ok")]).unwrap() >= 1.0);
    assert_eq!(
        s.value("virtpulse_otlp_items_dropped_total", &[("signal", "logs"), ("reason", "queue_full")]),
        Some(0.0)
    );
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The receiver is down for 60 s while a guest keeps producing events:
/// the agent keeps collecting, says so in its self-metrics, and catches up
/// once the receiver is back. A second agent with a tiny log queue shows
/// the bound: only the newest records survive, the rest are counted.
#[test]
fn receiver_down_for_60_seconds_then_back() {
    let mut receiver = Receiver::start();
    let g = Guest::start("otlp-outage", GuestSpec::default());
    let base = format!("{STDOUT}{FAST}{}{}", include(&[&g.name]), sink_config(&receiver.grpc_endpoint(), "grpc", "1s"));
    let big = Agent::start(&format!("{base}max_retry_backoff = \"4s\"\n"));
    let small =
        Agent::start(&format!("{base}max_retry_backoff = \"4s\"\nlog_queue_capacity = 10\nlog_batch_size = 5\n"));
    wait_for(Duration::from_secs(30), "metrics from both agents", || {
        let n = receiver.points().iter().filter(|p| p.name == "libvirt.domain.cpu.time").count();
        (n >= 4).then_some(())
    });

    receiver.stop();
    let outage_start = now_nanos();
    let rss_before = rss_kib(big.pid());
    let mut rss_max = rss_before;
    let mut cycles: usize = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        virsh::must(&["suspend", &g.name]);
        virsh::must(&["resume", &g.name]);
        cycles += 1;
        rss_max = rss_max.max(rss_kib(big.pid()));
        std::thread::sleep(Duration::from_millis(400));
    }
    // During the outage: collection goes on, the failures show.
    for agent in [&big, &small] {
        let s = agent.scrape();
        assert_eq!(s.value("virtpulse_otlp_receiver_up", &[("signal", "metrics")]), Some(0.0));
        assert!(
            s.value("virtpulse_otlp_exports_total", &[("signal", "metrics"), ("result", "failed")]).unwrap() >= 10.0
        );
        assert!(
            s.value("virtpulse_otlp_items_dropped_total", &[("signal", "metrics"), ("reason", "superseded")]).unwrap()
                > 0.0
        );
        assert!(
            s.value("virtpulse_collections_total", &[("collector", "domain_stats"), ("result", "ok")]).unwrap() >= 55.0
        );
    }
    let queued = big.scrape().value("virtpulse_otlp_log_queue_records", &[]).unwrap();
    assert!(queued >= (cycles * 2) as f64, "queued {queued} of {cycles} suspend/resume cycles");
    assert_eq!(small.scrape().value("virtpulse_otlp_log_queue_records", &[]), Some(10.0));
    assert!(rss_max < rss_before + 16 * 1024, "RSS grew from {rss_before} KiB to {rss_max} KiB during the outage");

    receiver.resume();
    let resumed = now_nanos();
    let back = std::time::Instant::now();
    // Every event of the outage reaches the receiver from the big agent.
    let outage_ids = |agent: &Agent| -> BTreeSet<String> {
        stdout_events(agent, &g.name)
            .into_iter()
            .filter(|(_, r)| {
                let t = humantime::parse_rfc3339(r["time"].as_str().unwrap()).unwrap();
                let t = t.duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64;
                t > outage_start && t < resumed
            })
            .map(|(id, _)| id)
            .collect()
    };
    let expected = outage_ids(&big);
    assert!(expected.len() >= cycles * 2, "{} events for {cycles} cycles", expected.len());
    wait_for(Duration::from_secs(60), "the big agent's outage events at the receiver", || {
        let got = logs_of(&receiver, &g.name);
        expected.iter().all(|id| got.contains_key(id)).then_some(())
    });
    eprintln!(
        "outage: {cycles} suspend/resume cycles, {} events, RSS {rss_before} -> max {rss_max} KiB, caught up {:?} after the receiver came back",
        expected.len(),
        back.elapsed()
    );
    wait_for(Duration::from_secs(30), "metrics after the outage", || {
        receiver.points().iter().any(|p| p.name == "libvirt.domain.cpu.time" && p.time > resumed).then_some(())
    });
    let s = big.scrape();
    assert_eq!(s.value("virtpulse_otlp_receiver_up", &[("signal", "metrics")]), Some(1.0));
    assert_eq!(
        s.value("virtpulse_otlp_items_dropped_total", &[("signal", "logs"), ("reason", "queue_full")]),
        Some(0.0)
    );

    // The small agent kept the newest ten and counted the rest.
    let small_expected = outage_ids(&small);
    let got = wait_for(Duration::from_secs(60), "the small agent's queue to drain", || {
        let s = small.scrape();
        (s.value("virtpulse_otlp_log_queue_records", &[]) == Some(0.0)).then_some(s)
    });
    let dropped =
        got.value("virtpulse_otlp_items_dropped_total", &[("signal", "logs"), ("reason", "queue_full")]).unwrap();
    let received = logs_of(&receiver, &g.name);
    let delivered = small_expected.iter().filter(|id| received.contains_key(*id)).count();
    assert!(delivered >= 10, "the newest records survive: {delivered}");
    assert_eq!(delivered as f64 + dropped, small_expected.len() as f64, "every outage event is delivered or counted");
    let newest: Vec<&String> = {
        let mut v: Vec<(&String, u64)> =
            small_expected.iter().map(|id| (id, id.rsplit('-').next().unwrap().parse::<u64>().unwrap())).collect();
        v.sort_by_key(|(_, seq)| *seq);
        v.iter().rev().take(10).map(|(id, _)| *id).collect()
    };
    assert!(newest.iter().all(|id| received.contains_key(*id)), "the newest ten survive");
}

#[test]
fn shutdown_is_bounded_when_the_receiver_is_down() {
    let port = common::agent::free_port();
    let config = format!(
        "[libvirt]\nuri = \"test:///default\"\n{FAST}{}shutdown_timeout = \"2s\"\n",
        sink_config(&format!("http://127.0.0.1:{port}"), "grpc", "1s")
    );
    let agent = Agent::start(&config);
    wait_for(Duration::from_secs(20), "a failed export", || {
        let s = agent.scrape();
        (s.value("virtpulse_otlp_exports_total", &[("signal", "metrics"), ("result", "failed")])? >= 1.0).then_some(())
    });
    let t = std::time::Instant::now();
    assert_eq!(agent.stop(), Some(0));
    assert!(t.elapsed() < Duration::from_secs(6), "stopping took {:?}", t.elapsed());
}

#[test]
fn shutdown_flushes_the_last_events() {
    let receiver = Receiver::start();
    let config = format!(
        "{STDOUT}[libvirt]\nuri = \"test:///default\"\n{}",
        sink_config(&receiver.grpc_endpoint(), "grpc", "1h")
    );
    let agent = Agent::start(&config);
    wait_for(Duration::from_secs(20), "the resync event record", || {
        agent.records().iter().any(|r| r["kind"] == "event").then_some(())
    });
    let ids: BTreeSet<String> = agent
        .records()
        .iter()
        .filter(|r| r["kind"] == "event")
        .map(|r| r["event"]["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(agent.stop(), Some(0));
    let got: BTreeSet<String> = receiver.logs().iter().map(|l| l.attributes["libvirt.event.id"].clone()).collect();
    assert!(ids.is_subset(&got), "{ids:?} vs {got:?}");
    // The 1 h interval never elapsed: the metrics came from the final flush.
    assert!(receiver.points().iter().any(|p| p.name == "libvirt.domain.state"));
}

fn run_with(config: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config).unwrap();
    let out = std::process::Command::new(bin()).arg("--config").arg(&path).envs(env.iter().copied()).output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Config snippet, environment, what the error must name.
type BadCase<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a [&'a str]);

#[test]
fn bad_otlp_config_is_a_clear_error_at_start() {
    let base = "[libvirt]\nuri = \"test:///default\"\n[sinks.prometheus]\nenabled = false\n";
    let cases: &[BadCase] = &[
        ("[sinks.otlp]\nenabled = true\nendpoint = \"localhost:4317\"\n", &[], &["sinks.otlp.endpoint", "not a URL"]),
        (
            "[sinks.otlp]\nenabled = true\nendpoint = \"ftp://collector:4317\"\n",
            &[],
            &["sinks.otlp.endpoint", "scheme"],
        ),
        ("[sinks.otlp]\nenabled = true\nprotocol = \"thrift\"\n", &[], &["sinks.otlp.protocol", "thrift"]),
        (
            "[sinks.otlp]\nenabled = true\n",
            &[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")],
            &["OTEL_EXPORTER_OTLP_PROTOCOL"],
        ),
        (
            "[sinks.otlp]\nenabled = true\n",
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector")],
            &["collector", "not a URL"],
        ),
        ("[sinks.otlp]\nenabled = true\nca_file = \"/nonexistent/ca.pem\"\n", &[], &["sinks.otlp.ca_file"]),
        ("[sinks.otlp]\nenabled = true\ncompression = \"zstd\"\n", &[], &["sinks.otlp.compression"]),
    ];
    for (snippet, env, needles) in cases {
        let (code, err) = run_with(&format!("{base}{snippet}"), env);
        assert_eq!(code, Some(78), "{snippet} {env:?}: {err}");
        for n in *needles {
            assert!(err.contains(n), "{snippet} {env:?}: error should name {n:?}: {err}");
        }
    }
}

/// Real TLS (a private CA, ALPN h2 for gRPC) in front of the receiver: the
/// CA from `ca_file` or OTEL_EXPORTER_OTLP_CERTIFICATE is trusted, a
/// receiver whose CA is unknown is refused and says why.
#[test]
fn tls_with_a_private_ca_over_both_transports() {
    let receiver = Receiver::start();
    let tls = common::otlp::TlsFront::start(&receiver);
    let agent_config = |endpoint: String, protocol: &str, who: &str, ca: Option<&std::path::Path>| {
        let ca = ca.map(|p| format!("ca_file = \"{}\"\n", p.display())).unwrap_or_default();
        format!(
            "[libvirt]\nuri = \"test:///default\"\n{}{ca}[sinks.otlp.resource_attributes]\nwho = \"{who}\"\n",
            sink_config(&endpoint, protocol, "1s")
        )
    };
    let grpc =
        Agent::start(&agent_config(format!("https://localhost:{}", tls.grpc_port), "grpc", "grpc", Some(&tls.ca_file)));
    let http = Agent::start_with_env(
        &agent_config(format!("https://127.0.0.1:{}", tls.http_port), "http", "http", None),
        &[("OTEL_EXPORTER_OTLP_CERTIFICATE", tls.ca_file.to_str().unwrap())],
    );
    let untrusted =
        Agent::start(&agent_config(format!("https://localhost:{}", tls.grpc_port), "grpc", "untrusted", None));
    wait_for(Duration::from_secs(30), "metrics from both TLS agents", || {
        let points = receiver.points();
        let from = |who: &str| points.iter().any(|p| p.resource.get("who").map(String::as_str) == Some(who));
        (from("grpc") && from("http")).then_some(())
    });
    wait_for(Duration::from_secs(30), "the untrusted agent to report failures", || {
        let s = untrusted.scrape();
        (s.value("virtpulse_otlp_exports_total", &[("signal", "metrics"), ("result", "failed")])? >= 2.0).then_some(())
    });
    assert!(!receiver.points().iter().any(|p| p.resource.get("who").map(String::as_str) == Some("untrusted")));
    let log = untrusted.log();
    assert!(log.contains("certificate") || log.contains("UnknownIssuer"), "the failure names the certificate:\n{log}");
    for agent in [&grpc, &http] {
        assert_eq!(agent.scrape().value("virtpulse_otlp_receiver_up", &[("signal", "metrics")]), Some(1.0));
    }
    drop(tls);
}
