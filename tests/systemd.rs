//! The agent as systemd sees it: sd_notify messages on a NOTIFY_SOCKET the
//! test owns (READY=1, WATCHDOG=1 while healthy and not when wedged,
//! STOPPING=1 on SIGTERM), and the unit file checked by systemd-analyze.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::agent::{bin, free_port};

/// A notify socket and the messages that reached it, with arrival times.
struct Notify {
    sock: UnixDatagram,
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    started: Instant,
    got: Vec<(Duration, String)>,
}

impl Notify {
    fn new() -> Notify {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        Notify { sock, _dir: dir, path, started: Instant::now(), got: Vec::new() }
    }

    /// Reads for `wait`, keeping every message.
    fn read_for(&mut self, wait: Duration) {
        let end = Instant::now() + wait;
        let mut buf = [0u8; 4096];
        while Instant::now() < end {
            if let Ok(n) = self.sock.recv(&mut buf) {
                self.got.push((self.started.elapsed(), String::from_utf8_lossy(&buf[..n]).into_owned()));
            }
        }
    }

    /// Reads until a message contains `needle`, at most `wait`.
    fn wait_for(&mut self, needle: &str, wait: Duration) -> Option<String> {
        let end = Instant::now() + wait;
        while Instant::now() < end {
            if let Some((_, m)) = self.got.iter().find(|(_, m)| m.contains(needle)) {
                return Some(m.clone());
            }
            self.read_for(Duration::from_millis(100));
        }
        None
    }

    fn times_of(&self, needle: &str) -> Vec<Duration> {
        self.got.iter().filter(|(_, m)| m.lines().any(|l| l == needle)).map(|(t, _)| *t).collect()
    }
}

/// The agent under test; killed when dropped, so a failed assertion leaves
/// nothing running.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl std::ops::Deref for Running {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

fn start(notify: &Notify, config: &str, env: &[(&str, &str)]) -> (Running, tempfile::TempDir, u16) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, format!("[sinks.prometheus]\nlisten = \"127.0.0.1:{port}\"\n{config}")).unwrap();
    let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
    let child = Command::new(bin())
        .arg("--config")
        .arg(&path)
        .env("NOTIFY_SOCKET", &notify.path)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    (Running(child), dir, port)
}

fn terminate(child: &mut Child) -> Option<i32> {
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let end = Instant::now() + Duration::from_secs(15);
    while Instant::now() < end {
        if let Ok(Some(st)) = child.try_wait() {
            return st.code();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    None
}

fn get(port: u16, path: &str) -> (u16, String) {
    match ureq::get(&format!("http://127.0.0.1:{port}{path}")).timeout(Duration::from_secs(5)).call() {
        Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        Err(e) => panic!("GET {path}: {e}"),
    }
}

const TEST_DRIVER: &str = "[libvirt]\nuri = \"test:///default\"\n[collectors]\ninterval = \"1s\"\n";

#[test]
fn ready_watchdog_and_stopping_are_sent() {
    let mut n = Notify::new();
    let (mut child, dir, port) = start(&n, TEST_DRIVER, &[("WATCHDOG_USEC", "2000000")]);
    let ready = n.wait_for("READY=1", Duration::from_secs(20)).expect("READY=1");
    assert!(ready.contains("STATUS=connected to test:///default"), "{ready}");
    // Pings at half the period while healthy.
    n.read_for(Duration::from_secs(5));
    let pings = n.times_of("WATCHDOG=1");
    assert!(pings.len() >= 4, "{} pings in 5 s with a 2 s watchdog: {:?}", pings.len(), n.got);
    assert!(pings.windows(2).all(|w| w[1] - w[0] < Duration::from_millis(1500)), "{pings:?}");
    let (code, body) = get(port, "/healthz");
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    let (code, body) = get(port, "/readyz");
    assert_eq!(code, 200, "{body}");
    let state: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(state["libvirt"]["up"], true);
    assert_eq!(state["collectors"]["domain_stats"]["ok"], true);
    assert_eq!(terminate(&mut child), Some(0), "{}", std::fs::read_to_string(dir.path().join("agent.log")).unwrap());
    n.read_for(Duration::from_millis(300));
    assert!(n.got.iter().any(|(_, m)| m.contains("STOPPING=1")), "{:?}", n.got);
}

#[test]
fn ready_does_not_wait_for_an_absent_libvirtd() {
    let mut n = Notify::new();
    let config = "[libvirt]\nuri = \"qemu+unix:///system?socket=/nonexistent/libvirt-sock\"\n";
    let (mut child, _dir, port) = start(&n, config, &[]);
    let t = Instant::now();
    let ready = n.wait_for("READY=1", Duration::from_secs(20)).expect("READY=1 without libvirtd");
    assert!(t.elapsed() < Duration::from_secs(12), "READY took {:?}", t.elapsed());
    assert!(ready.contains("STATUS=waiting for libvirt"), "{ready}");
    let (code, body) = get(port, "/readyz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("\"up\":false"), "{body}");
    assert_eq!(get(port, "/healthz").0, 200, "not connected is not unhealthy");
    assert_eq!(terminate(&mut child), Some(0));
}

#[test]
fn watchdog_pings_stop_when_a_collector_loop_is_wedged() {
    let mut n = Notify::new();
    let (child, dir, _port) =
        start(&n, TEST_DRIVER, &[("WATCHDOG_USEC", "2000000"), ("VIRTPULSE_TEST_WEDGE_COLLECTOR", "domain_stats")]);
    n.wait_for("READY=1", Duration::from_secs(20)).expect("READY=1");
    // Allowed silence: 2 x 1 s interval + 10 s grace. Watch for 25 s.
    n.read_for(Duration::from_secs(25));
    let pings = n.times_of("WATCHDOG=1");
    assert!(!pings.is_empty(), "pings while still healthy");
    let last = *pings.last().unwrap();
    let end = n.started.elapsed();
    assert!(end - last > Duration::from_secs(8), "pings went on after the wedge: last at {last:?} of {end:?}");
    // A wedged worker thread may hold up other tasks too (the HTTP server
    // among them): that is why the watchdog, not an endpoint, must catch it.
    let log = std::fs::read_to_string(dir.path().join("agent.log")).unwrap();
    assert!(log.contains("no longer pinging the systemd watchdog"), "{log}");
    // The wedged loop, or another one its wedged worker thread starves.
    assert!(log.contains("collector's loop has not come round"), "{log}");
    drop(child);
}

#[test]
fn sighup_reloads_and_tells_systemd() {
    let mut n = Notify::new();
    let (mut child, dir, port) = start(&n, TEST_DRIVER, &[]);
    n.wait_for("READY=1", Duration::from_secs(20)).expect("READY=1");
    let _ = Command::new("kill").args(["-HUP", &child.id().to_string()]).status();
    // RELOADING=1, then READY=1 again once applied (ExecReload= in the unit
    // sends the signal; systemd waits for these).
    n.wait_for("RELOADING=1", Duration::from_secs(20)).expect("RELOADING=1");
    let log_path = dir.path().join("agent.log");
    common::wait_for(Duration::from_secs(20), "the reload in the log", || {
        std::fs::read_to_string(&log_path).ok().filter(|l| l.contains("configuration reloaded")).map(|_| ())
    });
    n.read_for(Duration::from_millis(300));
    assert_eq!(n.times_of("READY=1").len(), 2, "READY=1 after the reload: {:?}", n.got);
    assert_eq!(child.try_wait().unwrap(), None, "SIGHUP ended the agent");
    assert_eq!(get(port, "/healthz").0, 200);
    assert_eq!(terminate(&mut child), Some(0));
}

/// `systemd-analyze verify` on the unit with this build's binary in place
/// of /usr/bin/virtpulse; prints the `security` exposure.
#[test]
fn unit_file_verifies_and_is_hardened() {
    let unit = std::fs::read_to_string(common::project_root().join("systemd/virtpulse.service")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("virtpulse.service");
    std::fs::write(&path, unit.replace("/usr/bin/virtpulse", bin())).unwrap();
    let out = Command::new("systemd-analyze").arg("verify").arg(&path).output().expect("systemd-analyze");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let problems: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("virtpulse.service"))
        // Without systemd as PID 1 (containers, CI) the unit's own lines are all that count.
        .filter(|l| !l.contains("Failed to connect") && !l.contains("not running"))
        .collect();
    assert!(out.status.success() && problems.is_empty(), "systemd-analyze verify:\n{text}");
    let sec = Command::new("systemd-analyze").args(["security", "--offline=true"]).arg(&path).output().unwrap();
    let sec = String::from_utf8_lossy(&sec.stdout).into_owned();
    let overall = sec.lines().find(|l| l.contains("Overall exposure level")).unwrap_or("").to_string();
    eprintln!("{overall}");
    let level: f64 = overall
        .split("virtpulse.service:")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{sec}"));
    assert!(level <= 2.0, "exposure {level} (want OK or better):\n{sec}");
    assert!(Path::new(bin()).exists());
}
