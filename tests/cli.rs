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
    assert_eq!(kinds, vec!["domain_stats", "node", "storage_pool"]);
    assert_eq!(recs[0]["domain"]["name"], "test");
    assert_eq!(recs[0]["fields"]["state.state"]["value"], 1);
    assert_eq!(recs[0]["fields"]["state.state"]["unit"], "enum");
    assert_eq!(recs[1]["fields"]["info.cpus"]["value"], 16, "the test driver's fake host");
    assert_eq!(recs[2]["pool"]["name"], "default-pool");
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
        .env("VIRTPULSE_CONFIG_UNUSED", "ignored without a section separator")
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
