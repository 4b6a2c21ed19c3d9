//! The agent binary under test, with its own config, port and log file.

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use super::exposition::{parse, Scrape};
use super::wait_for;

pub struct Agent {
    pub port: u16,
    child: Child,
    dir: tempfile::TempDir,
    /// The binary and config copied into a root (`start_in_root`), removed on drop.
    in_root: Option<PathBuf>,
}

/// A TOML basic string (test domain names contain no glob characters).
pub fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Config snippet that turns the stdout sink on (records land in `records()`).
pub const STDOUT: &str = "[sinks.stdout]\nenabled = true\n";

/// A loopback port that is free now and that nothing else in this run will
/// be handed: the caller gives it to a process that binds it later.
///
/// Not a port from the kernel (`bind(0)`): those come from the ephemeral
/// range, which the kernel also hands to every outgoing connection (the
/// tests' scrapes, Kafka and OTLP clients), so one was once taken between
/// this answer and the agent's bind ("Address already in use" in CI).
/// Ports below that range are never handed out implicitly; a counter keeps
/// the tests of one binary apart, and the process id spreads binaries.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOWEST: u32 = 10_000;
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .filter(|&first| first > LOWEST + 1_000)
        .unwrap_or(32_768);
    let span = ephemeral - LOWEST;
    let start = std::process::id().wrapping_mul(97) % span;
    for _ in 0..span {
        let port = (LOWEST + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port between {LOWEST} and {ephemeral}");
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_virtpulse")
}

/// Points a configuration that names no libvirt URI at this test binary's
/// private daemon (never the host's).
fn with_private_uri(extra: &str) -> String {
    if extra.lines().any(|l| l.trim_start().starts_with("uri")) && extra.contains("[libvirt]") {
        return extra.to_string();
    }
    let line = format!("uri = \"{}\"\n", super::virsh::uri());
    if extra.contains("[libvirt]\n") {
        extra.replacen("[libvirt]\n", &format!("[libvirt]\n{line}"), 1)
    } else {
        format!("[libvirt]\n{line}{extra}")
    }
}

impl Agent {
    /// Starts the agent with `extra` TOML appended to a config that listens
    /// on a free loopback port. Waits until /metrics answers.
    pub fn start(extra: &str) -> Agent {
        Self::start_with_env(extra, &[])
    }

    /// Starts an agent that watches only these domains, so that tests running
    /// side by side do not contend for each other's domain jobs.
    pub fn start_for(names: &[&str], extra: &str) -> Agent {
        let list: Vec<String> = names.iter().map(|n| toml_str(n)).collect();
        Self::start(&format!("{extra}\n[domains]\ninclude = [{}]\n", list.join(", ")))
    }

    pub fn start_with_env(extra: &str, env: &[(&str, &str)]) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = format!("[sinks.prometheus]\nlisten = \"127.0.0.1:{port}\"\n{}\n", with_private_uri(extra));
        let cfg_path = dir.path().join("config.toml");
        std::fs::write(&cfg_path, config).unwrap();
        let mut cmd = Command::new(bin());
        cmd.arg("--config").arg(&cfg_path).envs(env.iter().copied());
        Self::spawn(cmd, port, dir, None)
    }

    /// Starts the agent binary inside `root` (a root built by
    /// scripts/build-test-roots.sh), linked against that root's own
    /// libvirt0, in the mount namespace of process `ns_pid` (the root's
    /// private libvirtd, whose /run/libvirt is its own). `extra` must name
    /// the URI as seen from there (`qemu:///system`). The network
    /// namespace is the host's: /metrics answers on the loopback port.
    pub fn start_in_root(root: &Path, ns_pid: u32, extra: &str) -> Agent {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Not the root's /tmp: the daemon's namespace has its own tmpfs there.
        let inside = PathBuf::from(format!("/var/tmp/virtpulse-agent-{}-{n}", std::process::id()));
        let host = root.join(inside.strip_prefix("/").unwrap());
        std::fs::create_dir_all(&host).unwrap();
        std::fs::copy(bin(), host.join("virtpulse")).unwrap();
        let port = free_port();
        let config = format!("[sinks.prometheus]\nlisten = \"127.0.0.1:{port}\"\n{extra}\n");
        std::fs::write(host.join("config.toml"), config).unwrap();
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &ns_pid.to_string(), "-m", "-r"])
            .arg(inside.join("virtpulse"))
            .arg("--config")
            .arg(inside.join("config.toml"));
        Self::spawn(cmd, port, tempfile::tempdir().unwrap(), Some(host))
    }

    fn spawn(mut cmd: Command, port: u16, dir: tempfile::TempDir, in_root: Option<PathBuf>) -> Agent {
        let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
        let records = std::fs::File::create(dir.path().join("records.jsonl")).unwrap();
        let child = cmd
            .env("VIRTPULSE_AGENT__LOG_LEVEL", "virtpulse=debug,info")
            .stdout(records)
            .stderr(log)
            .spawn()
            .expect("start agent");
        let mut agent = Agent { port, child, dir, in_root };
        wait_for(Duration::from_secs(20), "the agent's /metrics endpoint", || {
            if let Ok(Some(status)) = agent.child.try_wait() {
                panic!("the agent exited ({status}) before serving /metrics:\n{}", agent.log());
            }
            agent.try_scrape_text().ok()
        });
        agent
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/metrics", self.port)
    }

    pub fn try_scrape_text(&self) -> Result<String, String> {
        let resp = ureq::get(&self.url()).timeout(Duration::from_secs(5)).call().map_err(|e| e.to_string())?;
        let mut body = String::new();
        resp.into_reader().read_to_string(&mut body).map_err(|e| e.to_string())?;
        Ok(body)
    }

    pub fn scrape_text(&self) -> String {
        self.try_scrape_text().unwrap_or_else(|e| panic!("scrape failed: {e}\n{}", self.log()))
    }

    pub fn scrape(&self) -> Scrape {
        parse(&self.scrape_text())
    }

    /// Times one scrape.
    pub fn timed_scrape(&self) -> (Scrape, Duration) {
        let t = Instant::now();
        let s = self.scrape();
        (s, t.elapsed())
    }

    pub fn ok_cycles(&self) -> f64 {
        self.ok_cycles_of("domain_stats")
    }

    pub fn ok_cycles_of(&self, collector: &str) -> f64 {
        self.scrape().value("virtpulse_collections_total", &[("collector", collector), ("result", "ok")]).unwrap_or(0.0)
    }

    /// Waits until at least `n` more successful domain stats collections have completed.
    pub fn wait_cycles(&self, n: u32, timeout: Duration) {
        self.wait_cycles_of("domain_stats", n, timeout)
    }

    /// Waits until at least `n` more successful collections of `collector` have completed.
    pub fn wait_cycles_of(&self, collector: &str, n: u32, timeout: Duration) {
        let start = self.ok_cycles_of(collector);
        wait_for(timeout, &format!("{collector} collections"), || {
            (self.ok_cycles_of(collector) >= start + f64::from(n)).then_some(())
        });
    }

    /// Records printed so far (the stdout sink must be enabled: see `STDOUT`).
    pub fn records(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(self.dir.path().join("records.jsonl")).unwrap_or_default();
        // The last line may still be being written.
        text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("agent.log")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The configuration file the agent was started with.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    /// Writes `extra` as `start` would have (same port, same private daemon).
    pub fn rewrite_config(&self, extra: &str) {
        let config = format!("[sinks.prometheus]\nlisten = \"127.0.0.1:{}\"\n{}\n", self.port, with_private_uri(extra));
        std::fs::write(self.config_path(), config).unwrap();
    }

    /// Rewrites the configuration and sends SIGHUP; returns once the agent
    /// counted the reload (either way) and says whether it succeeded.
    pub fn reload_with(&self, extra: &str) -> bool {
        self.rewrite_config(extra);
        self.reload()
    }

    /// Sends SIGHUP and waits until the agent counted one more reload;
    /// whether it succeeded.
    pub fn reload(&self) -> bool {
        let reloads =
            |s: &Scrape, result: &str| s.value("virtpulse_config_reloads_total", &[("result", result)]).unwrap_or(0.0);
        let s = self.scrape();
        let before = reloads(&s, "success") + reloads(&s, "failure");
        self.signal("-HUP");
        let s = wait_for(Duration::from_secs(30), "the reload to finish", || {
            let s = self.scrape();
            (reloads(&s, "success") + reloads(&s, "failure") > before).then_some(s)
        });
        s.value("virtpulse_config_last_reload_successful", &[]) == Some(1.0)
    }

    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill").args([sig, &self.child.id().to_string()]).status().unwrap();
        assert!(st.success(), "kill {sig}");
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for a clean exit; returns the exit code.
    pub fn stop(mut self) -> Option<i32> {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- agent log ----\n{}\n---- end of agent log ----", self.log());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(d) = &self.in_root {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}
