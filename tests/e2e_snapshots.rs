//! The snapshots collector against the private daemon: internal snapshots
//! of a running no-OS qcow2 KVM guest, a disk-only (external) one and
//! checkpoints, created and deleted with virsh. Count, current snapshot,
//! parents and creation times equal what `virsh snapshot-list --parent`,
//! `snapshot-info`, `snapshot-current --name`, `snapshot-dumpxml` and
//! `checkpoint-list --parent` say; a deletion shows within a cycle (no
//! event fires for it); change records on stdout say what appeared and
//! disappeared (nothing for what existed before the agent started), and so
//! do the Kafka events topic and the OTLP log records (a real tansu broker,
//! a real rotel receiver); the domain's series vanish when it is undefined.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::agent::{Agent, STDOUT};
use common::guest::{Guest, GuestSpec};
use common::{virsh, wait_for};

/// Removes the guest with its snapshot and checkpoint metadata however the
/// test ends (plain `undefine` refuses a domain that has either).
struct Undefine(String);

impl Drop for Undefine {
    fn drop(&mut self) {
        let _ = virsh::run(&["destroy", &self.0]);
        let _ = virsh::run(&["undefine", &self.0, "--snapshots-metadata", "--checkpoints-metadata", "--nvram"]);
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// days_from_civil).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// virsh's "2026-12-04 05:03:57 +0000" as Unix seconds.
fn virsh_time(date: &str, time: &str, offset: &str) -> i64 {
    let n = |s: &str| s.parse::<i64>().unwrap_or_else(|_| panic!("not a number: {s}"));
    let d: Vec<i64> = date.split('-').map(n).collect();
    let t: Vec<i64> = time.split(':').map(n).collect();
    let sign = if offset.starts_with('-') { -1 } else { 1 };
    let off = n(&offset[1..3]) * 3600 + n(&offset[3..5]) * 60;
    days_from_civil(d[0], d[1], d[2]) * 86400 + t[0] * 3600 + t[1] * 60 + t[2] - sign * off
}

/// `virsh snapshot-list --parent` (or `checkpoint-list --parent`): name ->
/// (creation time, state (snapshots) or "", parent or "").
fn listing(cmd: &str, dom: &str) -> BTreeMap<String, (i64, String, String)> {
    let out = virsh::must(&[cmd, dom, "--parent"]);
    let mut rows = BTreeMap::new();
    for line in out.lines().skip(2) {
        let c: Vec<&str> = line.split_whitespace().collect();
        if c.len() < 4 {
            continue;
        }
        let t = virsh_time(c[1], c[2], c[3]);
        let (state, parent) = match (cmd, &c[4..]) {
            ("snapshot-list", [state]) => (state.to_string(), String::new()),
            ("snapshot-list", [state, parent]) => (state.to_string(), parent.to_string()),
            (_, [parent]) => (String::new(), parent.to_string()),
            _ => (String::new(), String::new()),
        };
        rows.insert(c[0].to_string(), (t, state, parent));
    }
    rows
}

/// `<creationTime>` of `virsh snapshot-dumpxml` / `checkpoint-dumpxml`.
fn xml_time(cmd: &str, dom: &str, name: &str) -> i64 {
    let xml = virsh::must(&[cmd, dom, name]);
    let t = xml.split("<creationTime>").nth(1).and_then(|s| s.split('<').next()).expect("creationTime");
    t.trim().parse().unwrap()
}

/// `virsh snapshot-info` as key -> value.
fn snapshot_info(dom: &str, name: &str) -> BTreeMap<String, String> {
    virsh::must(&["snapshot-info", dom, name])
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn current(dom: &str) -> Option<String> {
    virsh::run(&["snapshot-current", dom, "--name"]).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

/// Compares everything the agent exports about `dom` with virsh.
fn matches_virsh(agent: &Agent, dom: &str) -> Result<(), String> {
    let s = agent.scrape();
    let d = [("domain", dom)];
    let snaps = listing("snapshot-list", dom);
    let cps = listing("checkpoint-list", dom);
    let want = |what: &str, got: Option<f64>, want: Option<f64>| {
        if got == want {
            Ok(())
        } else {
            Err(format!("{what}: agent {got:?}, virsh {want:?}"))
        }
    };
    want("snapshots", s.value("libvirt_domain_snapshots", &d), Some(snaps.len() as f64))?;
    want("checkpoints", s.value("libvirt_domain_checkpoints", &d), Some(cps.len() as f64))?;
    let times: Vec<i64> = snaps.values().map(|v| v.0).collect();
    let oldest = times.iter().min().map(|t| *t as f64);
    want("oldest snapshot", s.value("libvirt_domain_snapshot_oldest_timestamp_seconds", &d), oldest)?;
    let newest = times.iter().max().map(|t| *t as f64);
    want("newest snapshot", s.value("libvirt_domain_snapshot_newest_timestamp_seconds", &d), newest)?;
    let ctimes: Vec<i64> = cps.values().map(|v| v.0).collect();
    let oldest = ctimes.iter().min().map(|t| *t as f64);
    want("oldest checkpoint", s.value("libvirt_domain_checkpoint_oldest_timestamp_seconds", &d), oldest)?;
    let cur = current(dom);
    for (name, (t, state, parent)) in &snaps {
        let info = snapshot_info(dom, name);
        let is_current = cur.as_deref() == Some(name.as_str());
        assert_eq!(info["Current"] == "yes", is_current, "virsh disagrees with itself on {name}");
        assert_eq!(info["Parent"], if parent.is_empty() { "-" } else { parent.as_str() });
        let exact = xml_time("snapshot-dumpxml", dom, name);
        assert_eq!(*t, exact, "snapshot-list and snapshot-dumpxml disagree on {name}");
        let kind = match (state.as_str(), info["Location"].as_str()) {
            ("disk-snapshot", _) => "disk-only",
            (_, location) => location,
        };
        let labels = [
            ("domain", dom),
            ("snapshot", name.as_str()),
            ("state", state.as_str()),
            ("current", if is_current { "true" } else { "false" }),
            ("parent", parent.as_str()),
            ("kind", kind),
        ];
        want(&format!("{name} info"), s.value("libvirt_domain_snapshot_info", &labels), Some(1.0))?;
        let created =
            s.value("libvirt_domain_snapshot_created_timestamp_seconds", &[("domain", dom), ("snapshot", name)]);
        want(&format!("{name} created"), created, Some(exact as f64))?;
    }
    let described = s.find("libvirt_domain_snapshot_info", &d).len();
    want("snapshots described", Some(described as f64), Some(snaps.len() as f64))?;
    for (name, (t, _, parent)) in &cps {
        assert_eq!(*t, xml_time("checkpoint-dumpxml", dom, name));
        let labels = [("domain", dom), ("checkpoint", name.as_str()), ("parent", parent.as_str())];
        want(&format!("{name} info"), s.value("libvirt_domain_checkpoint_info", &labels), Some(1.0))?;
        let created =
            s.value("libvirt_domain_checkpoint_created_timestamp_seconds", &[("domain", dom), ("checkpoint", name)]);
        want(&format!("{name} created"), created, Some(*t as f64))?;
    }
    // The record says the same, and names the current snapshot.
    let records = agent.records();
    let last = records
        .iter()
        .rev()
        .find(|r| r["kind"] == "domain_snapshots" && r["domain"]["name"] == dom)
        .ok_or("no domain_snapshots record")?;
    common::schema::assert_valid(last);
    let f = &last["fields"];
    want("record count", f["snapshot.count"]["value"].as_f64(), Some(snaps.len() as f64))?;
    let rec_current = f["snapshot.current"]["value"].as_str().map(str::to_string);
    if rec_current != cur {
        return Err(format!("current: agent {rec_current:?}, virsh {cur:?}"));
    }
    Ok(())
}

/// Waits until the agent agrees with virsh (one cycle at most after a
/// change; the collector runs every 2 s here).
fn agree(agent: &Agent, dom: &str, step: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while let Err(e) = matches_virsh(agent, dom) {
        assert!(std::time::Instant::now() < deadline, "{step}: the agent does not match virsh: {e}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// (type, detail, name) of the change records about `dom`, each validated.
fn changes(agent: &Agent, dom: &str) -> BTreeSet<(String, String, String)> {
    agent
        .records()
        .iter()
        .filter(|r| r["kind"] == "domain_snapshot_change" && r["domain"]["name"] == dom)
        .map(|r| {
            common::schema::assert_valid(r);
            assert_eq!(r["event"]["name"], "snapshot_change");
            assert_eq!(r["event"]["type"], r["fields"]["change"]["value"]);
            assert_eq!(r["event"]["detail"], r["fields"]["object"]["value"]);
            let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
            (s(&r["event"]["type"]), s(&r["event"]["detail"]), s(&r["fields"]["name"]["value"]))
        })
        .collect()
}

fn change(t: &str, d: &str, n: &str) -> (String, String, String) {
    (t.to_string(), d.to_string(), n.to_string())
}

#[test]
fn snapshots_and_checkpoints_match_virsh_through_creation_and_deletion() {
    let started = std::time::Instant::now();
    let g = Guest::start("snap", GuestSpec::default());
    let _undefine = Undefine(g.name.clone());
    let dom = g.name.as_str();
    // Before the agent starts: part of the first read, no change record.
    virsh::must(&["snapshot-create-as", dom, "s1", "--description", "before the agent"]);

    let broker = common::kafka::Broker::start();
    let spool = tempfile::tempdir().unwrap();
    let receiver = common::otlp::Receiver::start();
    let agent = Agent::start_for(
        &[dom],
        &format!(
            "{STDOUT}[collectors.domain_stats]\nenabled = false\n[collectors.jobs]\nenabled = false\n\
             [collectors.node]\nenabled = false\n[collectors.pools]\nenabled = false\n\
             [collectors.snapshots]\ninterval = \"2s\"\n[metrics]\nsnapshot_detail = true\n{}{}",
            common::kafka::sink_config(&broker.address(), spool.path(), ""),
            common::otlp::sink_config(&receiver.grpc_endpoint(), "grpc", "1s"),
        ),
    );
    agree(&agent, dom, "one internal snapshot");
    let rec = agent.records().into_iter().rev().find(|r| r["kind"] == "domain_snapshots").unwrap();
    assert_eq!(rec["fields"]["snapshot.0.description"]["value"], "before the agent");
    assert_eq!(rec["fields"]["snapshot.0.kind"]["value"], "internal");
    assert_eq!(rec["fields"]["snapshot.0.state"]["value"], "running");

    // A second internal snapshot (a child of s1) and a checkpoint. A
    // checkpoint needs qcow2 disks (a bitmap per disk): this guest has one.
    virsh::must(&["snapshot-create-as", dom, "s2"]);
    virsh::must(&["checkpoint-create-as", dom, "c1"]);
    agree(&agent, dom, "two snapshots and a checkpoint");
    assert_eq!(current(dom).as_deref(), Some("s2"));

    // Deleting fires no event: the next cycle sees it.
    virsh::must(&["snapshot-delete", dom, "s2"]);
    agree(&agent, dom, "after deleting s2");

    // A disk-only (external) snapshot: an overlay file beside the image.
    let overlay = g.dir().join("d1.qcow2");
    let spec = format!("vda,file={}", overlay.display());
    virsh::must(&["snapshot-create-as", dom, "d1", "--disk-only", "--diskspec", &spec]);
    virsh::must(&["checkpoint-create-as", dom, "c2"]);
    agree(&agent, dom, "a disk-only snapshot and a second checkpoint");
    assert_eq!(snapshot_info(dom, "d1")["Location"], "external");
    let s = agent.scrape();
    let kind = [("domain", dom), ("snapshot", "d1"), ("kind", "disk-only"), ("state", "disk-snapshot")];
    assert_eq!(s.value("libvirt_domain_snapshot_info", &kind), Some(1.0));

    // Metadata of the external snapshot and a checkpoint deleted.
    virsh::must(&["snapshot-delete", dom, "d1", "--metadata"]);
    virsh::must(&["checkpoint-delete", dom, "c1"]);
    agree(&agent, dom, "after deleting d1 and c1");

    let want: BTreeSet<_> = [
        change("appeared", "snapshot", "s2"),
        change("appeared", "checkpoint", "c1"),
        change("disappeared", "snapshot", "s2"),
        change("appeared", "snapshot", "d1"),
        change("appeared", "checkpoint", "c2"),
        change("disappeared", "snapshot", "d1"),
        change("disappeared", "checkpoint", "c1"),
    ]
    .into();
    wait_for(Duration::from_secs(10), "the change records", || (changes(&agent, dom) == want).then_some(()));
    let appeared_d1 = agent
        .records()
        .into_iter()
        .find(|r| r["kind"] == "domain_snapshot_change" && r["fields"]["name"]["value"] == "d1")
        .unwrap();
    assert_eq!(appeared_d1["fields"]["kind"]["value"], "disk-only");
    assert_eq!(appeared_d1["fields"]["parent"]["value"], "s1");

    // Kafka: on the events topic, like libvirt's events (at least once:
    // duplicates share their event id).
    let mut reader = common::kafka::Reader::new(&broker.address(), "libvirt.events");
    let on_kafka = |got: &[common::kafka::Received]| -> BTreeSet<(String, String, String)> {
        got.iter()
            .filter(|m| m.value["kind"] == "domain_snapshot_change" && m.value["domain"]["name"] == dom)
            .map(|m| {
                assert_eq!(m.headers["virtpulse_event"], "domain.snapshot_change");
                assert_eq!(m.headers["virtpulse_event_id"], m.value["event"]["id"].as_str().unwrap());
                let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
                (s(&m.value["event"]["type"]), s(&m.value["event"]["detail"]), s(&m.value["fields"]["name"]["value"]))
            })
            .collect()
    };
    reader.read_until(Duration::from_secs(20), "the change records on Kafka", |got| on_kafka(got) == want);
    // OTLP: one log record each; the inventory as metrics.
    wait_for(Duration::from_secs(20), "the change records as OTLP logs", || {
        let logs = receiver.logs();
        let got: BTreeSet<_> = logs
            .iter()
            .filter(|l| l.event_name == "libvirt.domain.snapshot_change")
            .filter(|l| l.attributes.get("libvirt.domain.name").map(String::as_str) == Some(dom))
            .map(|l| {
                let a = |k: &str| l.attributes.get(k).cloned().unwrap_or_default();
                (a("libvirt.event.type"), a("libvirt.event.detail"), a("libvirt.event.field.name"))
            })
            .collect();
        (got == want).then_some(())
    });
    wait_for(Duration::from_secs(20), "the snapshot count as an OTLP metric", || {
        receiver.points().iter().any(|p| p.name == "libvirt.domain.snapshots" && p.value == 1.0).then_some(())
    });

    // Each XML was read once (s1, s2, d1; c1, c2), however many cycles ran,
    // and c2's once more when its parent c1 was deleted (libvirt re-parents
    // it: the agent's labels above say so too).
    let s = agent.scrape();
    let reads = |o: &str| s.value("virtpulse_snapshots_xml_reads_total", &[("object", o)]);
    assert_eq!((reads("snapshot"), reads("checkpoint")), (Some(3.0), Some(3.0)));
    let errors: f64 = s.find("virtpulse_snapshots_errors_total", &[]).iter().map(|x| x.value).sum();
    assert_eq!(errors, 0.0);
    common::exposition::assert_promtool_clean(&agent.scrape_text());

    // Undefined: its series go at once (the undefine event starts a cycle).
    virsh::must(&["destroy", dom]);
    virsh::must(&["undefine", dom, "--snapshots-metadata", "--checkpoints-metadata"]);
    wait_for(Duration::from_secs(10), "the undefined domain's series to vanish", || {
        agent.scrape().value("libvirt_domain_snapshots", &[("domain", dom)]).is_none().then_some(())
    });
    eprintln!("snapshots e2e took {:?}", started.elapsed());
}
