//! A real OTLP receiver (rotel, from PyPI) with its debug exporter on, and a
//! reader for what it printed: every metric data point and log record the
//! agent sent, with its resource.

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::agent::free_port;
use super::wait_for;

pub fn rotel_bin() -> PathBuf {
    std::env::var_os("VIRTPULSE_ROTEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/virtpulse-test/rotel/bin/rotel-agent"))
}

pub struct Receiver {
    pub grpc_port: u16,
    pub http_port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Point {
    /// Which export request (0-based, in arrival order) carried it.
    pub export: usize,
    pub resource: BTreeMap<String, String>,
    pub name: String,
    pub unit: String,
    pub description: String,
    /// Gauge or Sum.
    pub data_type: String,
    pub monotonic: bool,
    pub temporality: String,
    pub attributes: BTreeMap<String, String>,
    pub start: u64,
    pub time: u64,
    pub value: f64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Log {
    pub resource: BTreeMap<String, String>,
    pub time: u64,
    pub observed: u64,
    pub severity_text: String,
    pub severity_number: String,
    pub event_name: String,
    pub body: String,
    /// Values as rotel prints them: `Str(x)` -> x, `Int(5)` -> `Int(5)`.
    pub attributes: BTreeMap<String, String>,
    pub trace_id: String,
}

impl Receiver {
    pub fn start() -> Receiver {
        let bin = rotel_bin();
        assert!(bin.exists(), "{} missing: run scripts/install-test-deps.sh", bin.display());
        let mut r =
            Receiver { grpc_port: free_port(), http_port: free_port(), dir: tempfile::tempdir().unwrap(), child: None };
        r.resume();
        r
    }

    pub fn grpc_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    pub fn http_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    fn out_path(&self) -> PathBuf {
        self.dir.path().join("rotel.out")
    }

    /// Starts rotel (again, on the same ports and output file).
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "receiver already running");
        let out = std::fs::OpenOptions::new().create(true).append(true).open(self.out_path()).unwrap();
        let child = Command::new(rotel_bin())
            .args(["start", "--otlp-grpc-endpoint", &format!("127.0.0.1:{}", self.grpc_port)])
            .args(["--otlp-http-endpoint", &format!("127.0.0.1:{}", self.http_port)])
            .args(["--exporter", "blackhole", "--debug-log", "metrics", "--debug-log", "logs"])
            .args(["--debug-log-verbosity", "detailed"])
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start rotel");
        self.child = Some(child);
        let ports = [self.grpc_port, self.http_port];
        wait_for(Duration::from_secs(20), "rotel to listen", || {
            ports.iter().all(|p| TcpStream::connect(("127.0.0.1", *p)).is_ok()).then_some(())
        });
    }

    /// Kills the receiver (the ports refuse connections until `resume`).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn output(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(self.out_path()).unwrap_or_default()).into_owned()
    }

    pub fn points(&self) -> Vec<Point> {
        parse_points(&self.output())
    }

    pub fn logs(&self) -> Vec<Log> {
        parse_logs(&self.output())
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `     -> key: Str(value)` -> (key, value); other types keep their wrapper.
fn attribute(line: &str) -> Option<(String, String)> {
    let rest = line.trim_start().strip_prefix("-> ")?;
    let (k, v) = rest.split_once(": ")?;
    let v = match v.strip_prefix("Str(").and_then(|s| s.strip_suffix(')')) {
        Some(s) => s.to_string(),
        None => v.to_string(),
    };
    Some((k.to_string(), v))
}

fn value_of<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.trim_start().strip_prefix(key).map(str::trim)
}

#[derive(PartialEq)]
enum Section {
    Resource,
    Descriptor,
    PointAttributes,
    LogAttributes,
    Other,
}

pub fn parse_points(text: &str) -> Vec<Point> {
    let mut out = Vec::new();
    let mut export = 0usize;
    let mut started = false;
    let mut resource = BTreeMap::new();
    let mut metric = Point::default();
    let mut point: Option<Point> = None;
    let mut section = Section::Other;
    for line in text.lines() {
        let line = line.trim_start_matches('\0');
        if line.starts_with("ResourceMetrics #") {
            if let Some(p) = point.take() {
                out.push(p);
            }
            if started {
                export += 1;
            }
            started = true;
            resource = BTreeMap::new();
            section = Section::Resource;
        } else if line.starts_with("ResourceLog") {
            if let Some(p) = point.take() {
                out.push(p);
            }
            section = Section::Other;
        } else if line == "Resource attributes:" {
            section = Section::Resource;
        } else if line.starts_with("Metric #") {
            if let Some(p) = point.take() {
                out.push(p);
            }
            metric = Point { export, resource: resource.clone(), ..Default::default() };
            section = Section::Other;
        } else if line == "Descriptor:" {
            section = Section::Descriptor;
        } else if line.starts_with("NumberDataPoints #") {
            if let Some(p) = point.take() {
                out.push(p);
            }
            point = Some(metric.clone());
            section = Section::Other;
        } else if line == "Data point attributes:" {
            section = Section::PointAttributes;
        } else if let Some(v) = value_of(line, "StartTimestamp:") {
            if let Some(p) = point.as_mut() {
                p.start = v.parse().unwrap_or(0);
            }
        } else if let Some(v) = value_of(line, "Timestamp:") {
            if let Some(p) = point.as_mut() {
                p.time = v.parse().unwrap_or(0);
            }
        } else if let Some(v) = value_of(line, "Value:") {
            if let Some(p) = point.as_mut() {
                p.value = v.parse().unwrap_or(f64::NAN);
            }
        } else if let Some((k, v)) = attribute(line) {
            match section {
                Section::Resource => {
                    resource.insert(k, v);
                }
                Section::Descriptor => match k.as_str() {
                    "Name" => metric.name = v,
                    "Unit" => metric.unit = v,
                    "Description" => metric.description = v,
                    "DataType" => metric.data_type = v,
                    "IsMonotonic" => metric.monotonic = v == "true",
                    "AggregationTemporality" => metric.temporality = v,
                    _ => {}
                },
                Section::PointAttributes => {
                    if let Some(p) = point.as_mut() {
                        p.attributes.insert(k, v);
                    }
                }
                _ => {}
            }
        } else if line.trim_start().starts_with("-> Unit:") {
            // An empty unit prints as "-> Unit: " (no value after the colon).
            metric.unit = String::new();
        }
    }
    if let Some(p) = point.take() {
        out.push(p);
    }
    out
}

pub fn parse_logs(text: &str) -> Vec<Log> {
    let mut out = Vec::new();
    let mut resource = BTreeMap::new();
    let mut log: Option<Log> = None;
    let mut section = Section::Other;
    let mut in_logs = false;
    for line in text.lines() {
        let line = line.trim_start_matches('\0');
        if line.starts_with("ResourceLog") || line.starts_with("ResourceMetrics") {
            if let Some(l) = log.take() {
                out.push(l);
            }
            in_logs = line.starts_with("ResourceLog");
            resource = BTreeMap::new();
            section = Section::Resource;
            continue;
        }
        if !in_logs {
            continue;
        }
        if line == "Resource attributes:" {
            section = Section::Resource;
        } else if line.starts_with("LogRecord #") {
            if let Some(l) = log.take() {
                out.push(l);
            }
            log = Some(Log { resource: resource.clone(), ..Default::default() });
            section = Section::Other;
        } else if line == "Attributes:" {
            section = Section::LogAttributes;
        } else if let Some(l) = log.as_mut() {
            if let Some(v) = value_of(line, "ObservedTimestamp:") {
                l.observed = v.parse().unwrap_or(0);
            } else if let Some(v) = value_of(line, "Timestamp:") {
                l.time = v.parse().unwrap_or(0);
            } else if let Some(v) = value_of(line, "SeverityText:") {
                l.severity_text = v.to_string();
            } else if let Some(v) = value_of(line, "SeverityNumber:") {
                l.severity_number = v.to_string();
            } else if let Some(v) = value_of(line, "EventName:") {
                l.event_name = v.to_string();
            } else if let Some(v) = value_of(line, "Body:") {
                l.body = v.strip_prefix("Str(").and_then(|s| s.strip_suffix(')')).unwrap_or(v).to_string();
            } else if let Some(v) = value_of(line, "Trace ID       :") {
                l.trace_id = v.to_string();
            } else if let Some((k, v)) = attribute(line) {
                if section == Section::LogAttributes {
                    l.attributes.insert(k, v);
                }
            }
        } else if let Some((k, v)) = attribute(line) {
            if section == Section::Resource {
                resource.insert(k, v);
            }
        }
    }
    if let Some(l) = log.take() {
        out.push(l);
    }
    out
}

/// The `[sinks.otlp]` section for this receiver.
pub fn sink_config(endpoint: &str, protocol: &str, interval: &str) -> String {
    format!(
        "[sinks.otlp]\nenabled = true\nendpoint = \"{endpoint}\"\nprotocol = \"{protocol}\"\nexport_interval = \"{interval}\"\n"
    )
}

/// TLS in front of a receiver (tests/tools/tls_proxy.py), with a private CA
/// made for this test only.
pub struct TlsFront {
    pub grpc_port: u16,
    pub http_port: u16,
    pub ca_file: PathBuf,
    _pki: super::tls::Pki,
    child: Child,
}

impl TlsFront {
    pub fn start(receiver: &Receiver) -> TlsFront {
        let pki = super::tls::Pki::new();
        let (grpc_port, http_port) = (free_port(), free_port());
        let script = super::project_root().join("tests/tools/tls_proxy.py");
        let child = Command::new("python3")
            .arg(script)
            .arg(pki.path("server.pem"))
            .arg(pki.path("server.key"))
            .args([grpc_port, receiver.grpc_port, http_port, receiver.http_port].map(|p| p.to_string()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start the TLS proxy");
        wait_for(Duration::from_secs(20), "the TLS proxy to listen", || {
            [grpc_port, http_port].iter().all(|p| TcpStream::connect(("127.0.0.1", *p)).is_ok()).then_some(())
        });
        TlsFront { grpc_port, http_port, ca_file: pki.ca(), _pki: pki, child }
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
