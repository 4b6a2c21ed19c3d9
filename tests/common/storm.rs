//! An event storm: libvirt events as fast as libvirtd emits them.
//! `virsh` in shell mode reads thousands of `metadata --live --set` commands
//! from its standard input over ONE connection each; every successful one
//! makes libvirtd emit exactly one METADATA_CHANGE event and prints
//! "Metadata modified" (not with `-q`, which hides it), so the events
//! emitted are counted exactly. One
//! connection per guest, all guests at once (libvirtd handles a
//! connection's calls one at a time; several connections keep its worker
//! threads busy).

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::virsh::uri;

/// The namespace URI of the storm's metadata element.
pub const NS: &str = "urn:virtpulse:storm";
/// The event name (`virtpulse_event` header) a storm emits.
pub const EVENT: &str = "domain.metadata_change";

#[derive(Debug, Clone, Default)]
pub struct Storm {
    /// Per guest: (name, events emitted = commands that succeeded).
    pub per_guest: Vec<(String, usize)>,
    /// Commands that failed (their first errors in `errors`).
    pub failed: usize,
    pub errors: Vec<String>,
    pub elapsed: Duration,
}

impl Storm {
    pub fn emitted(&self) -> usize {
        self.per_guest.iter().map(|(_, n)| n).sum()
    }

    pub fn rate(&self) -> f64 {
        self.emitted() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// `per_guest` metadata changes on each guest, `conns` connections per
/// guest, all at once; returns when every virsh has finished.
pub fn metadata_storm(guests: &[&str], per_guest: usize, conns: usize) -> Storm {
    let conns = conns.max(1);
    let started = Instant::now();
    let mut children = Vec::new();
    for (gi, name) in guests.iter().enumerate() {
        for c in 0..conns {
            let n = per_guest / conns + usize::from(c < per_guest % conns);
            let mut script = String::with_capacity(n * 96);
            for i in 0..n {
                script.push_str(&format!(
                    "metadata {name} --uri {NS} --key storm --set '<s g=\"{gi}\" c=\"{c}\" i=\"{i}\"/>' --live\n"
                ));
            }
            let mut child = Command::new("virsh")
                .args(["-c", uri()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("virsh shell");
            let mut stdin = child.stdin.take().unwrap();
            // A writer thread: virsh answers while it reads.
            let writer = std::thread::spawn(move || {
                let _ = stdin.write_all(script.as_bytes());
            });
            let stdout = child.stdout.take().unwrap();
            let counter = std::thread::spawn(move || {
                BufReader::new(stdout).lines().map_while(Result::ok).filter(|l| l.contains("Metadata modified")).count()
            });
            let mut stderr = child.stderr.take().unwrap();
            let errs = std::thread::spawn(move || {
                let mut s = String::new();
                let _ = stderr.read_to_string(&mut s);
                s
            });
            children.push((name.to_string(), n, child, writer, counter, errs));
        }
    }
    let mut storm = Storm::default();
    for (name, asked, mut child, writer, counter, errs) in children {
        let _ = writer.join();
        let ok = counter.join().unwrap_or(0);
        let _ = child.wait();
        let err_text = errs.join().unwrap_or_default();
        storm.failed += asked.saturating_sub(ok);
        storm.errors.extend(err_text.lines().filter(|l| !l.trim().is_empty()).take(3).map(str::to_string));
        match storm.per_guest.iter_mut().find(|(n, _)| *n == name) {
            Some((_, total)) => *total += ok,
            None => storm.per_guest.push((name, ok)),
        }
    }
    storm.elapsed = started.elapsed();
    storm
}
