//! The Grafana dashboards work: a real Prometheus (Debian package) scrapes
//! the agent over real guests, and every PromQL expression of every panel
//! and variable, with the template variables filled in, must return data.

mod common;

use std::collections::BTreeSet;
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::agent::{free_port, Agent};
use common::guest::{Guest, GuestSpec};
use common::{virsh, wait_for};
use serde_json::Value;

fn dashboard(name: &str) -> Value {
    let text = std::fs::read_to_string(common::project_root().join("dashboards").join(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn dashboards_are_what_the_generator_writes() {
    let dir = tempfile::tempdir().unwrap();
    let st = Command::new("python3")
        .arg(common::project_root().join("dashboards/generate.py"))
        .arg(dir.path())
        .status()
        .expect("python3");
    assert!(st.success());
    for name in ["virtpulse-fleet.json", "virtpulse-domain.json"] {
        let fresh = std::fs::read_to_string(dir.path().join(name)).unwrap();
        let committed = std::fs::read_to_string(common::project_root().join("dashboards").join(name)).unwrap();
        assert!(fresh == committed, "dashboards/{name} is out of date: run python3 dashboards/generate.py");
    }
}

struct Prometheus {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(target: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("prometheus.yml");
        std::fs::write(
            &cfg,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: virtpulse\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
            .spawn()
            .expect("prometheus (scripts/install-test-deps.sh installs it)");
        wait_for(Duration::from_secs(30), "Prometheus to listen", || TcpStream::connect(("127.0.0.1", port)).ok());
        Prometheus { port, child, _dir: dir }
    }

    /// The result vector of an instant query, or the error Prometheus gave.
    fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let url = format!("http://127.0.0.1:{}/api/v1/query", self.port);
        let resp = ureq::get(&url).query("query", expr).timeout(Duration::from_secs(10)).call();
        let text = match resp {
            Ok(r) => r.into_string().map_err(|e| e.to_string())?,
            Err(ureq::Error::Status(_, r)) => r.into_string().map_err(|e| e.to_string())?,
            Err(e) => return Err(e.to_string()),
        };
        let body: Value = serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))?;
        if body["status"] != "success" {
            return Err(format!("{}: {}", body["errorType"], body["error"]));
        }
        Ok(body["data"]["result"].as_array().cloned().unwrap_or_default())
    }
}

/// Every (panel title, expression) of a dashboard, variables substituted.
fn expressions(d: &Value, vars: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            let mut e = t["expr"].as_str().unwrap().to_string();
            for (k, v) in vars {
                e = e.replace(k, v);
            }
            out.push((p["title"].as_str().unwrap().to_string(), e));
        }
    }
    out
}

/// `label_values(selector, label)` of the query variables, substituted.
fn variable_queries(d: &Value, vars: &[(&str, &str)]) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for v in d["templating"]["list"].as_array().unwrap() {
        if v["type"] != "query" {
            continue;
        }
        let q = v["query"]["query"].as_str().unwrap();
        let inner = q.strip_prefix("label_values(").and_then(|s| s.strip_suffix(')')).unwrap();
        let (selector, label) = inner.rsplit_once(',').unwrap();
        let mut selector = selector.trim().to_string();
        for (k, val) in vars {
            selector = selector.replace(k, val);
        }
        out.push((v["name"].as_str().unwrap().to_string(), selector, label.trim().to_string()));
    }
    out
}

/// Metrics only hosts with SR-IOV or mediated devices have.
const HARDWARE_ONLY: &str = "libvirt_node_device_";

#[test]
fn every_panel_query_returns_data_from_a_real_prometheus() {
    // Real guests: one healthy, one whose disk fails (I/O error events),
    // and a Linux guest running the guest agent (the guest panels).
    let g = Guest::start("dash", GuestSpec::default());
    // A snapshot, for the snapshot age panels (an internal one: qcow2).
    virsh::must(&["snapshot-create-as", &g.name, "dash-snap"]);
    let linux = common::linux::LinuxGuest::with_data("dash-ga", true);
    let name = Guest::name_for("dash-ioerr");
    // A virtual network with a DHCP range for the network panels: defined,
    // not started (this daemon shares the host's network namespace, where
    // tests start no bridge or dnsmasq; e2e_networks runs one in its own).
    let network = format!("vpt-dash-{}", std::process::id());
    let net_xml = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        net_xml.path(),
        format!(
            "<network><name>{network}</name><forward mode='nat'/><ip address='192.168.151.1' prefix='24'><dhcp>\
             <range start='192.168.151.10' end='192.168.151.29'/></dhcp></ip></network>"
        ),
    )
    .unwrap();
    virsh::must(&["net-define", net_xml.path().to_str().unwrap()]);
    let spool = tempfile::tempdir().unwrap();
    let config = format!(
        "[collectors]\ninterval = \"1s\"\n[collectors.node]\ninterval = \"2s\"\n[collectors.pools]\ninterval = \"2s\"\n[collectors.networks]\ninterval = \"2s\"\n[collectors.health]\ninterval = \"2s\"\n\
         [collectors.guest]\nenabled = true\ninterval = \"2s\"\n[metrics]\ncpu_placement = true\n\
         [domains]\ninclude = [\"{}\", \"{name}\", \"{}\"]\n\
         [sinks.kafka]\nenabled = true\nbrokers = [\"127.0.0.1:{}\"]\nspool_dir = \"{}\"\n\
         [sinks.otlp]\nenabled = true\nendpoint = \"http://127.0.0.1:{}\"\nexport_interval = \"1s\"\n",
        g.name,
        linux.guest.name,
        free_port(),
        spool.path().display(),
        free_port()
    );
    let agent = Agent::start(&config);
    let (bad, _disk) = common::ioerror::start_guest(&name);
    wait_for(Duration::from_secs(30), "the I/O error pause", || {
        virsh::must(&["domstate", &bad.name]).contains("paused").then_some(())
    });
    // Tuning for the placement and I/O limit panels (a paused guest takes it).
    virsh::must(&[
        "blkdeviotune",
        &bad.name,
        "vdb",
        "--total-iops-sec",
        "500",
        "--total-bytes-sec",
        "10000000",
        "--live",
    ]);
    virsh::must(&["vcpupin", &bad.name, "0", "0", "--live"]);
    virsh::must(&["emulatorpin", &bad.name, "0-1", "--live"]);
    virsh::must(&["schedinfo", &bad.name, "--live", "--set", "cpu_shares=256"]);
    // A block copy in flight for the block job panel: the mirror of a
    // nearly empty disk is ready at once and waits to be pivoted.
    let copy = tempfile::Builder::new().prefix("dash-copy-").tempdir_in("/var/tmp").unwrap();
    common::set_mode(copy.path(), 0o777);
    let dest = copy.path().join("copy.qcow2");
    virsh::must(&["blockcopy", &g.name, "vda", dest.to_str().unwrap(), "--transient-job"]);
    wait_for(Duration::from_secs(30), "the block copy, the I/O limits and the pinning in the agent's output", || {
        let s = agent.scrape();
        (s.value("libvirt_domain_block_job_current_bytes", &[("domain", g.name.as_str())]).is_some()
            && s.value("libvirt_domain_block_iotune_operations_per_second", &[("domain", name.as_str())]).is_some()
            && s.value("libvirt_domain_emulator_pinning_info", &[("domain", name.as_str())]).is_some()
            && s.value("libvirt_domain_cpu_shares", &[("domain", name.as_str())]) == Some(256.0))
        .then_some(())
    });
    // A finished job stays on view (type completed) for the job panels.
    let dump = tempfile::Builder::new().prefix("dash-dump-").tempdir_in("/var/tmp").unwrap();
    virsh::must(&["dump", &bad.name, dump.path().join("core").to_str().unwrap()]);

    let prom = Prometheus::start(&format!("127.0.0.1:{}", agent.port));
    let instance = format!("127.0.0.1:{}", agent.port);
    // Enough scrapes for rates over the 20 s window used for $__rate_interval.
    wait_for(Duration::from_secs(90), "30 s of scrapes", || {
        let up = prom.query("count_over_time(libvirt_up[30s])").ok()?;
        let n = up.first()?["value"][1].as_str()?.parse::<f64>().ok()?;
        (n >= 25.0).then_some(())
    });
    let job = prom.query("{__name__=~\"libvirt_domain_job_.*\"}").unwrap();
    assert!(!job.is_empty(), "no job series after the dump:\n{}", agent.scrape_text());

    let mut problems = Vec::new();
    let mut names = BTreeSet::new();
    let metric_name = regex::Regex::new(r"\b(libvirt_[a-z_]+|virtpulse_[a-z_]+|process_[a-z_]+)\b").unwrap();
    for (file, domain) in [("virtpulse-fleet.json", ".*"), ("virtpulse-domain.json", name.as_str())] {
        let d = dashboard(file);
        let vars = [("$instance", instance.as_str()), ("$domain", domain), ("$__rate_interval", "20s")];
        let exprs = expressions(&d, &vars);
        assert!(exprs.len() > 20, "{file}: {} queries", exprs.len());
        for (title, expr) in exprs {
            assert!(!expr.contains('$'), "{file} / {title}: unsubstituted variable in {expr}");
            names.extend(metric_name.find_iter(&expr).map(|m| m.as_str().to_string()));
            // Guest panels show the Linux guest (the others have no agent).
            let expr = match expr.contains("libvirt_domain_guest_") && file == "virtpulse-domain.json" {
                true => expr.replace(&format!("domain=\"{domain}\""), &format!("domain=\"{}\"", linux.guest.name)),
                false => expr,
            };
            match prom.query(&expr) {
                // No SR-IOV or mdev hardware here: those panels must parse
                // and run; node_device_panels_show_the_test_drivers_devices
                // shows them with data.
                Ok(r) if r.is_empty() && expr.contains(HARDWARE_ONLY) => {}
                Ok(r) if r.is_empty() => problems.push(format!("{file} / {title}: no data for {expr}")),
                Ok(_) => {}
                Err(e) => problems.push(format!("{file} / {title}: error {e} for {expr}")),
            }
        }
        for (var, selector, label) in variable_queries(&d, &vars) {
            let r = prom.query(&selector).unwrap_or_default();
            if !r.iter().any(|s| s["metric"][label.as_str()].is_string()) {
                problems.push(format!("{file}: variable {var} finds no {label} in {selector}"));
            }
        }
    }
    // Every metric a panel names exists (so `or vector(0)` cannot hide a typo).
    for n in names.iter().filter(|n| !n.starts_with(HARDWARE_ONLY)) {
        if prom.query(&format!("count({n})")).map(|r| r.is_empty()).unwrap_or(true) {
            problems.push(format!("metric {n} has no series in Prometheus"));
        }
    }
    let _ = virsh::run(&["net-undefine", &network]);
    assert!(problems.is_empty(), "{} dashboard problems:\n{}", problems.len(), problems.join("\n"));
    let _ = virsh::run(&["blockjob", &g.name, "vda", "--abort"]);
    drop(bad);
    // Its metadata would keep the guest from being undefined.
    let _ = virsh::run(&["snapshot-delete", &g.name, "dash-snap", "--metadata"]);
}

/// The node device panels over libvirt's test driver with an SR-IOV PF
/// (3 VFs, 1 in a running domain) and an mdev-capable GPU (2 + 5 instances
/// left, 1 mediated device): every query returns the fixture's figures.
#[test]
fn node_device_panels_show_the_test_drivers_devices() {
    let uri = format!("test://{}", common::project_root().join("tests/fixtures/node_devices/testdriver.xml").display());
    let agent = Agent::start(&format!("[libvirt]\nuri = \"{uri}\"\n[collectors.node_devices]\ninterval = \"1s\"\n"));
    let prom = Prometheus::start(&format!("127.0.0.1:{}", agent.port));
    let instance = format!("127.0.0.1:{}", agent.port);
    wait_for(Duration::from_secs(60), "the node device series in Prometheus", || {
        let r = prom.query("libvirt_node_device_sriov_vfs_assigned").ok()?;
        (!r.is_empty()).then_some(())
    });
    let d = dashboard("virtpulse-fleet.json");
    let vars = [("$instance", instance.as_str()), ("$domain", ".*"), ("$__rate_interval", "20s")];
    let value = |r: &[Value]| r.first().and_then(|s| s["value"][1].as_str()).and_then(|v| v.parse::<f64>().ok());
    let mut seen = 0;
    for (title, expr) in expressions(&d, &vars).into_iter().filter(|(_, e)| e.contains(HARDWARE_ONLY)) {
        let r = prom.query(&expr).unwrap_or_else(|e| panic!("{title}: {e} for {expr}"));
        assert!(!r.is_empty(), "{title}: no data for {expr}");
        let expected = match title.as_str() {
            "vGPU (mdev) instances left" => Some(7.0),
            "vGPU (mdev) devices created" => Some(1.0),
            "SR-IOV VFs in use" => Some(1.0),
            "SR-IOV VFs free" => Some(2.0),
            "SR-IOV VFs in use per host" => Some(1.0 / 3.0),
            _ => None,
        };
        if let Some(x) = expected {
            let got = value(&r).unwrap();
            assert!((got - x).abs() < 1e-9, "{title}: {got}, expected {x}");
        }
        seen += 1;
    }
    assert_eq!(seen, 6, "the node device panels' queries");
    let by_type = prom.query("sort_desc(sum by (type) (libvirt_node_device_mdev_available_instances))").unwrap();
    let types: Vec<(String, Option<f64>)> = by_type
        .iter()
        .map(|s| (s["metric"]["type"].as_str().unwrap_or("").to_string(), value(std::slice::from_ref(s))))
        .collect();
    assert_eq!(types, [("i915-GVTg_V5_8".to_string(), Some(5.0)), ("i915-GVTg_V5_4".to_string(), Some(2.0))]);
}
