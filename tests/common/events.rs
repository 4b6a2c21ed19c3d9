//! `virsh event` / `net-event` / `pool-event` / `secret-event` captures:
//! the reference the agent's event records are compared with.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::virsh::uri;
use super::wait_for;

/// One event as virsh printed it.
#[derive(Debug, Clone, PartialEq)]
pub struct VirshEvent {
    /// `lifecycle`, `tray-change`, ... (virsh's spelling).
    pub name: String,
    pub object: String,
    /// What follows the object on the line (after `: ` when present), plus
    /// any indented continuation lines joined by `\n`.
    pub text: String,
}

/// Events virsh prints over several lines.
const MULTI_LINE: &[&str] =
    &["job-completed", "tunable", "memory-failure", "memory-device-size-change", "nic-mac-change"];

pub struct Capture {
    children: Vec<Child>,
    events: Arc<Mutex<Vec<VirshEvent>>>,
}

fn parse_line(line: &str) -> Option<VirshEvent> {
    // "<timestamp>: event 'NAME' for domain 'OBJECT'[ rest]", or for other
    // families "... for network OBJECT[: text]" (not quoted).
    let rest = &line[line.find("event '")? + 7..];
    let (name, rest) = rest.split_once('\'')?;
    let rest = rest.trim_start().strip_prefix("for ")?;
    let (object, rest) = if let Some(r) = rest.strip_prefix("domain '") {
        r.split_once('\'')?
    } else {
        let r = ["network ", "storage pool ", "secret ", "node device "].iter().find_map(|k| rest.strip_prefix(k))?;
        r.split_once(':').unwrap_or((r, ""))
    };
    let text = rest.strip_prefix(':').unwrap_or(rest).trim().to_string();
    Some(VirshEvent { name: name.to_string(), object: object.trim().to_string(), text })
}

impl Capture {
    /// Domain events (`virsh event --all`) and, for each (command, event)
    /// pair, that family's events.
    pub fn start(others: &[(&str, &str)]) -> Capture {
        Self::start_with(&["virsh", "-c", uri()], others)
    }

    /// As `start`, with another virsh: `virsh` is its command line up to
    /// the subcommand (another daemon's URI, or a virsh run inside a root
    /// on that root's client library, which knows newer event IDs).
    pub fn start_with(virsh: &[&str], others: &[(&str, &str)]) -> Capture {
        let events = Arc::new(Mutex::new(Vec::new()));
        let mut cmds: Vec<Vec<String>> = vec![vec!["event".into(), "--all".into()]];
        for (cmd, ev) in others {
            cmds.push(vec![cmd.to_string(), "--event".into(), ev.to_string()]);
        }
        let mut children = Vec::new();
        for args in cmds {
            let mut child = Command::new(virsh[0])
                .args(&virsh[1..])
                .args(&args)
                .args(["--loop", "--timestamp"])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("virsh event");
            let out = child.stdout.take().unwrap();
            let sink = events.clone();
            let (tx, rx) = std::sync::mpsc::channel::<String>();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        return;
                    }
                }
            });
            std::thread::spawn(move || {
                let mut current: Option<VirshEvent> = None;
                loop {
                    let line = match rx.recv_timeout(Duration::from_millis(300)) {
                        Ok(l) => l,
                        // A multi-line event is complete once virsh goes quiet.
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                            if let Some(prev) = current.take() {
                                sink.lock().unwrap().push(prev);
                            }
                            continue;
                        }
                        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                    };
                    let Some(parsed) = parse_line(&line) else {
                        // A continuation line of a multi-line event.
                        if let Some(c) = current.as_mut() {
                            c.text.push('\n');
                            c.text.push_str(line.trim());
                        }
                        continue;
                    };
                    if let Some(prev) = current.take() {
                        sink.lock().unwrap().push(prev);
                    }
                    // Multi-line events are complete at the next event line.
                    if MULTI_LINE.contains(&parsed.name.as_str()) {
                        current = Some(parsed);
                    } else {
                        sink.lock().unwrap().push(parsed);
                    }
                }
                if let Some(prev) = current.take() {
                    sink.lock().unwrap().push(prev);
                }
            });
            children.push(child);
        }
        // virsh prints nothing when it is ready; give it a moment to register.
        std::thread::sleep(Duration::from_millis(700));
        Capture { children, events }
    }

    pub fn events(&self) -> Vec<VirshEvent> {
        self.events.lock().unwrap().clone()
    }

    pub fn of(&self, object: &str) -> Vec<VirshEvent> {
        self.events().into_iter().filter(|e| e.object == object).collect()
    }

    /// Waits until `n` events of `object` were printed.
    pub fn wait_count(&self, object: &str, n: usize, timeout: Duration) -> Vec<VirshEvent> {
        wait_for(timeout, &format!("{n} virsh events of {object}"), || {
            let e = self.of(object);
            (e.len() >= n).then_some(e)
        })
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn parses_virsh_event_lines() {
    let e = parse_line("2026-11-27 06:15:13.844+0000: event 'tray-change' for domain 'vm 1' disk ide0-1-0: opened")
        .unwrap();
    assert_eq!((e.name.as_str(), e.object.as_str(), e.text.as_str()), ("tray-change", "vm 1", "disk ide0-1-0: opened"));
    let e = parse_line("t: event 'lifecycle' for domain 'x': Started Booted").unwrap();
    assert_eq!(e.text, "Started Booted");
    let e = parse_line(
        "t: event 'channel-lifecycle' for domain 'g': channel name: 'org.qemu.guest_agent.0' state: 'connected' reason: 'channel event'",
    )
    .unwrap();
    assert_eq!(e.text, "channel name: 'org.qemu.guest_agent.0' state: 'connected' reason: 'channel event'");
    let e = parse_line("t: event 'refresh' for storage pool p").unwrap();
    assert_eq!((e.object.as_str(), e.text.as_str()), ("p", ""));
    let e = parse_line("t: event 'lifecycle' for network n1: Defined").unwrap();
    assert_eq!((e.object.as_str(), e.text.as_str()), ("n1", "Defined"));
}

fn pick(table: &[&str], i: i64) -> String {
    usize::try_from(i).ok().and_then(|i| table.get(i)).map(|s| s.to_string()).unwrap_or_else(|| "unknown".into())
}

const LIFECYCLE: &[&str] =
    &["Defined", "Undefined", "Started", "Suspended", "Resumed", "Stopped", "Shutdown", "PMSuspended", "Crashed"];
const DETAILS: &[&[&str]] = &[
    &["Added", "Updated", "Renamed", "Snapshot"],
    &["Removed", "Renamed"],
    &["Booted", "Migrated", "Restored", "Snapshot", "Event wakeup", "Recreation"],
    &[
        "Paused",
        "Migrated",
        "I/O Error",
        "Watchdog",
        "Restored",
        "Snapshot",
        "API error",
        "Post-copy",
        "Post-copy Error",
    ],
    &["Unpaused", "Migrated", "Snapshot", "Post-copy", "Post-copy Error"],
    &["Shutdown", "Destroyed", "Crashed", "Migrated", "Saved", "Failed", "Snapshot", "Recreation"],
    &["Finished", "Finished after guest request", "Finished after host request"],
    &["Memory", "Disk"],
    &["Panicked", "Crashloaded"],
];
const BLOCK_JOB: &[&str] = &["Unknown", "Block Pull", "Block Copy", "Block Commit", "Active Block Commit", "Backup"];

/// How `virsh event` would print this event record: (event name, text).
/// Fields come from the record, so equal output means equal fields.
pub fn virsh_view(r: &serde_json::Value) -> (String, String) {
    let ev = &r["event"];
    let name = ev["name"].as_str().unwrap_or("");
    let fields = &r["fields"];
    let i = |k: &str| fields[k]["value"].as_i64().unwrap_or(-1);
    let s = |k: &str| fields[k]["value"].as_str().map(String::from).unwrap_or_else(|| "<null>".into());
    let u = |k: &str| fields[k]["value"].as_u64().unwrap_or(0);
    let family = |k: &str| pick(&["IPv4", "IPv6", "unix"], i(k));
    let params = || {
        let mut lines = Vec::new();
        if let Some(m) = fields.as_object() {
            for (k, v) in m {
                let val = match &v["value"] {
                    serde_json::Value::String(x) => x.clone(),
                    serde_json::Value::Bool(b) => {
                        if *b {
                            "yes".into()
                        } else {
                            "no".into()
                        }
                    }
                    other => other.to_string(),
                };
                lines.push(format!("{k}: {val}"));
            }
        }
        lines.sort();
        lines.join("\n")
    };
    let vname = |n: &str| n.replace('_', "-");
    if ev["family"] != "domain" {
        let kind = ev["type"].as_str().unwrap_or("");
        let mut c = kind.chars();
        let capital = c.next().map(|f| f.to_uppercase().chain(c).collect::<String>()).unwrap_or_default();
        return (vname(name), capital);
    }
    let (n, text) = domain_view(name, fields, i, s, u, family, params, vname);
    (n, text.trim().to_string())
}

#[allow(clippy::too_many_arguments)]
fn domain_view(
    name: &str,
    fields: &serde_json::Value,
    i: impl Fn(&str) -> i64,
    s: impl Fn(&str) -> String,
    u: impl Fn(&str) -> u64,
    family: impl Fn(&str) -> String,
    params: impl Fn() -> String,
    vname: impl Fn(&str) -> String,
) -> (String, String) {
    match name {
        "lifecycle" => {
            let (e, d) = (i("event"), i("detail"));
            let detail = usize::try_from(e)
                .ok()
                .and_then(|e| DETAILS.get(e))
                .map(|t| pick(t, d))
                .unwrap_or_else(|| "unknown".into());
            ("lifecycle".into(), format!("{} {}", pick(LIFECYCLE, e), detail))
        }
        "reboot" | "control_error" | "pm_wakeup" | "pm_suspend" | "pm_suspend_disk" => (vname(name), String::new()),
        "rtc_change" => ("rtc-change".into(), i("utcoffset").to_string()),
        "watchdog" => (
            "watchdog".into(),
            pick(&["none", "pause", "reset", "poweroff", "shutdown", "debug", "inject-nmi"], i("action")),
        ),
        "io_error" => (
            "io-error".into(),
            format!("{} ({}) {}", s("src_path"), s("dev_alias"), pick(&["none", "pause", "report"], i("action"))),
        ),
        "io_error_reason" => (
            "io-error".into(),
            format!(
                "{} ({}) {} due to {}",
                s("src_path"),
                s("dev_alias"),
                pick(&["none", "pause", "report"], i("action")),
                s("reason")
            ),
        ),
        "graphics" => (
            "graphics".into(),
            format!(
                "{} local[{} {} {}] remote[{} {} {}] {}",
                pick(&["connect", "initialize", "disconnect"], i("phase")),
                family("local.family"),
                s("local.node"),
                s("local.service"),
                family("remote.family"),
                s("remote.node"),
                s("remote.service"),
                s("auth_scheme")
            ),
        ),
        "block_job" | "block_job_2" => (
            vname(name),
            format!(
                "{} for {} {}",
                pick(BLOCK_JOB, i("type")),
                s("disk"),
                pick(&["completed", "failed", "canceled", "ready"], i("status"))
            ),
        ),
        "disk_change" => (
            "disk-change".into(),
            format!(
                "disk {}: {} -> {}: {}",
                s("dev_alias"),
                s("old_src_path"),
                s("new_src_path"),
                pick(&["changed", "dropped"], i("reason"))
            ),
        ),
        "tray_change" => {
            ("tray-change".into(), format!("disk {}: {}", s("dev_alias"), pick(&["opened", "closed"], i("reason"))))
        }
        "balloon_change" => ("balloon-change".into(), format!("{}KiB", u("actual"))),
        "device_removed" | "device_added" | "device_removal_failed" => (vname(name), s("dev_alias")),
        "agent_lifecycle" => (
            "agent-lifecycle".into(),
            format!(
                "state: '{}' reason: '{}'",
                pick(&["unknown", "connected", "disconnected"], i("state")),
                pick(&["unknown", "domain started", "channel event"], i("reason"))
            ),
        ),
        "channel_lifecycle" => (
            "channel-lifecycle".into(),
            format!(
                "channel name: '{}' state: '{}' reason: '{}'",
                s("channel_name"),
                pick(&["unknown", "connected", "disconnected"], i("state")),
                pick(&["unknown", "domain started", "channel event"], i("reason"))
            ),
        ),
        "vcpu_removed" => ("vcpu-removed".into(), format!("vcpu {}", u("vcpu_id"))),
        "migration_iteration" => ("migration-iteration".into(), format!("iteration: '{}'", i("iteration"))),
        "job_completed" | "tunable" => (vname(name), params()),
        "metadata_change" => (
            "metadata-change".into(),
            format!(
                "type {}, uri {}",
                pick(&["description", "title", "element"], i("type")),
                fields["nsuri"]["value"].as_str().filter(|x| !x.is_empty()).unwrap_or("<null>")
            ),
        ),
        "block_threshold" => {
            ("block-threshold".into(), format!("dev: {}({}) {} {}", s("dev"), s("path"), u("threshold"), u("excess")))
        }
        "nic_mac_change" => (
            "nic-mac-change".into(),
            format!("\nalias: {}\noldMAC: {}\nnewMAC: {}", s("alias"), s("old_mac"), s("new_mac")),
        ),
        "memory_device_size_change" => {
            ("memory-device-size-change".into(), format!("\nalias: {}\nsize: {}", s("alias"), u("size")))
        }
        "memory_failure" => (
            "memory-failure".into(),
            format!(
                "\nrecipient: {}\naction: {}\nflags:\naction required: {}\nrecursive: {}",
                pick(&["hypervisor", "guest"], i("recipient")),
                pick(&["ignore", "inject", "fatal", "reset"], i("action")),
                u("flags") & 1,
                (u("flags") >> 1) & 1
            ),
        ),
        other => (vname(other), String::new()),
    }
}

/// virsh's text, normalized the way `virsh_view` renders multi-line parts
/// (typed parameter lines sorted).
pub fn normalize_virsh(e: &VirshEvent) -> (String, String) {
    if matches!(e.name.as_str(), "job-completed" | "tunable") {
        let mut lines: Vec<&str> = e.text.lines().filter(|l| !l.is_empty()).collect();
        lines.sort();
        return (e.name.clone(), lines.join("\n"));
    }
    (e.name.clone(), e.text.trim().to_string())
}
