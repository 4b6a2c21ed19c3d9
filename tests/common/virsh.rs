//! virsh as the reference the agent is compared with.

use std::collections::BTreeMap;
use std::process::Command;

use virtpulse::value::TypedValue;

/// The URI of this test binary's private libvirtd (started on first use).
pub fn uri() -> &'static str {
    super::ensure_libvirtd()
}

pub fn run(args: &[&str]) -> Result<String, String> {
    run_on(uri(), args)
}

/// virsh against another daemon than the test binary's.
pub fn run_on(uri: &str, args: &[&str]) -> Result<String, String> {
    let out =
        Command::new("virsh").arg("-c").arg(uri).args(args).output().map_err(|e| format!("cannot run virsh: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("virsh {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

pub fn must(args: &[&str]) -> String {
    run(args).unwrap_or_else(|e| panic!("{e}"))
}

/// Parses a virsh value the way libvirt typed it (as far as text tells).
pub fn typed(v: &str) -> TypedValue {
    if v == "yes" {
        TypedValue::Boolean(true)
    } else if v == "no" {
        TypedValue::Boolean(false)
    } else if let Ok(u) = v.parse::<u64>() {
        TypedValue::ULLong(u)
    } else if let Ok(i) = v.parse::<i64>() {
        TypedValue::LLong(i)
    } else if let Ok(d) = v.parse::<f64>() {
        TypedValue::Double(d)
    } else {
        TypedValue::String(v.into())
    }
}

/// `virsh domstats --backing NAME` (all groups) as key -> value.
pub fn domstats(name: &str, extra: &[&str]) -> BTreeMap<String, String> {
    domstats_on(uri(), name, extra)
}

pub fn domstats_on(uri: &str, name: &str, extra: &[&str]) -> BTreeMap<String, String> {
    let mut args = vec!["domstats", "--backing"];
    args.extend_from_slice(extra);
    args.push(name);
    let out = run_on(uri, &args).unwrap_or_else(|e| panic!("{e}"));
    out.lines().filter_map(|l| l.trim().split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

pub fn domuuid(name: &str) -> String {
    must(&["domuuid", name]).trim().to_string()
}

pub fn qemu_pid(name: &str) -> Option<u32> {
    // The private daemon's /run/libvirt is the directory of its socket.
    let run = std::path::Path::new(uri().split_once("socket=")?.1).parent()?.to_path_buf();
    std::fs::read_to_string(run.join(format!("qemu/{name}.pid"))).ok()?.trim().parse().ok()
}

/// The agent's own kind of connection: read-only, no keepalive.
pub fn read_only_connection() -> virtpulse::libvirt::Connection {
    virtpulse::libvirt::Connection::open(&virtpulse::libvirt::OpenOptions {
        uri: uri().into(),
        read_only: true,
        keepalive_interval: 0,
        keepalive_count: 0,
    })
    .expect("read-only connection to libvirtd")
}
