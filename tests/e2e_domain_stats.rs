//! Domain statistics against a real libvirtd and real guests, compared with
//! `virsh domstats` for the same domains.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use common::agent::{bin, Agent};
use common::compare::{compare, has_full_stats};
use common::guest::{Guest, GuestSpec};
use common::{virsh, wait_for};

/// Every group and detail: each value virsh shows must be exported.
const FAST: &str = "[collectors]\ninterval = \"1s\"\n[metrics]\nprofile = \"everything\"\n";

#[test]
fn once_prints_records_matching_virsh() {
    let g = Guest::start("once", GuestSpec::default());
    wait_for(Duration::from_secs(20), "the guest's block stats", || {
        virsh::domstats(&g.name, &[]).contains_key("block.0.rd.reqs").then_some(())
    });
    let before = virsh::domstats(&g.name, &[]);
    let out = Command::new(bin())
        .arg("--once")
        .env("VIRTPULSE_LIBVIRT__URI", virsh::uri())
        .env("VIRTPULSE_DOMAINS__INCLUDE", &g.name)
        .env("VIRTPULSE_AGENT__LOG_LEVEL", "warn")
        .output()
        .unwrap();
    let after = virsh::domstats(&g.name, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let all: Vec<serde_json::Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    all.iter().for_each(common::schema::assert_valid);
    let lines: Vec<&serde_json::Value> = all.iter().filter(|r| r["kind"] == "domain_stats").collect();
    assert_eq!(lines.len(), 1, "the include filter selects exactly one domain");
    let r = lines[0];
    assert_eq!(r["schema"], "virtpulse.record/v1");
    assert_eq!(r["kind"], "domain_stats");
    assert_eq!(r["domain"]["name"], g.name.as_str());
    assert_eq!(r["domain"]["uuid"], g.uuid.as_str());
    assert_eq!(r["domain"]["info"]["vcpus"], 2);
    let fields = r["fields"].as_object().unwrap();
    let keys: BTreeSet<&str> = fields.keys().map(String::as_str).collect();
    let vkeys: BTreeSet<&str> = after.keys().map(String::as_str).collect();
    assert_eq!(keys, vkeys, "record keys differ from virsh domstats keys");
    for (k, f) in fields {
        assert_ne!(f["unit"], "unknown", "{k} has no known unit");
        let (vb, va) = (virsh::typed(&before[k.as_str()]), virsh::typed(&after[k.as_str()]));
        match (&f["value"], vb.as_f64(), va.as_f64()) {
            (serde_json::Value::String(s), _, _) => assert_eq!(s, &after[k.as_str()], "{k}"),
            (serde_json::Value::Bool(b), Some(x), Some(y)) => {
                assert!(x.min(y) <= f64::from(u8::from(*b)) || k.ends_with(".cur") || k.ends_with("halted"), "{k}")
            }
            (n, Some(x), Some(y)) => {
                let n = n.as_f64().unwrap();
                let volatile = k.ends_with(".cur") || k == "balloon.rss" || k.ends_with(".state");
                assert!(volatile || (x.min(y) <= n && n <= x.max(y)), "{k}: record {n}, virsh {x}..{y}");
            }
            (v, _, _) => panic!("{k}: unexpected value {v}"),
        }
    }
}

#[test]
fn destroyed_domains_lose_their_series_on_the_next_scrape() {
    let mut persistent = Guest::start("gone", GuestSpec::default());
    let transient = Guest::start("gone", GuestSpec { persistent: false, ..Default::default() });
    let agent = Agent::start_for(&[&persistent.name, &transient.name], FAST);
    wait_for(Duration::from_secs(30), "both guests", || {
        let s = agent.scrape();
        (has_full_stats(&s, &persistent.uuid) && has_full_stats(&s, &transient.uuid)).then_some(())
    });

    transient.destroy();
    persistent.destroy();
    let off_before = virsh::domstats(&persistent.name, &[]);
    agent.wait_cycles(2, Duration::from_secs(20));
    let s = agent.scrape();
    let off_after = virsh::domstats(&persistent.name, &[]);
    assert_eq!(s.stats_of_domain(&transient.uuid).count(), 0, "a destroyed transient domain has no series");
    // A destroyed persistent domain is shut off: it keeps the series libvirt
    // still reports for inactive domains, and loses the runtime ones.
    let pu = persistent.uuid.as_str();
    assert_eq!(s.value("libvirt_domain_state", &[("uuid", pu)]), Some(5.0));
    assert!(s.find("libvirt_domain_vcpu_time_seconds_total", &[("uuid", pu)]).is_empty());
    assert!(s.find("libvirt_domain_interface_receive_bytes_total", &[("uuid", pu)]).is_empty());
    let info = s.find("libvirt_domain_info", &[("uuid", pu)]);
    assert_eq!(info.len(), 1, "one info series");
    assert!(!info[0].labels.contains_key("state"), "the state has its own gauge; info never changes with it");
    let problems = compare(&persistent, &off_before, &s, &off_after);
    assert!(problems.is_empty(), "shut-off domain differs from virsh:\n{}", problems.join("\n"));

    persistent.undefine();
    agent.wait_cycles(2, Duration::from_secs(20));
    assert_eq!(agent.scrape().stats_of_domain(&persistent.uuid).count(), 0, "an undefined domain has no series");
}

#[test]
fn include_and_exclude_filters_select_domains() {
    let keep = Guest::start("filt-keep", GuestSpec::default());
    let drop_me = Guest::start("filt-drop", GuestSpec::default());
    let agent = Agent::start(&format!(
        "{FAST}[domains]\ninclude = [\"{}*\"]\nexclude = [\"/.*filt-drop.*/\"]\n",
        common::guest::PREFIX
    ));
    wait_for(Duration::from_secs(30), "the included guest", || {
        has_full_stats(&agent.scrape(), &keep.uuid).then_some(())
    });
    agent.wait_cycles(2, Duration::from_secs(20));
    let s = agent.scrape();
    assert_eq!(s.of_domain(&drop_me.uuid).count(), 0, "excluded domain must not be exported");
    assert!(s
        .samples
        .iter()
        .filter(|x| x.name.starts_with("libvirt_domain_"))
        .all(|x| x.labels["domain"].starts_with(common::guest::PREFIX)));
}

#[test]
fn output_passes_promtool_with_hostile_names_and_gzip() {
    // Quotes, a backslash and UTF-8 in a domain name; Nova metadata in its XML.
    let nova = r#"<nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1"><nova:name>web "1"</nova:name><nova:flavor name="m1.tiny"/><nova:owner><nova:user uuid="u1">alice</nova:user><nova:project uuid="p1">shop</nova:project></nova:owner></nova:instance>"#;
    let g =
        Guest::start("esc", GuestSpec { metadata: nova.into(), name_suffix: "-q\"b\\é".into(), ..Default::default() });
    let odd = g.name.clone();
    assert!(odd.contains('"') && odd.contains('\\') && odd.contains('é'));
    let agent = Agent::start_for(&[&odd], FAST);
    // The domain's XML (Nova's metadata) is read on a thread of its own, so
    // the first snapshots may have its stats without it.
    let (text, os) = wait_for(Duration::from_secs(30), "the oddly named guest with its Nova metadata", || {
        let text = agent.scrape_text();
        let s = common::exposition::parse(&text);
        if s.find("libvirt_domain_info", &[("domain", odd.as_str())]).len() != 1 {
            return None;
        }
        let os = s.find("libvirt_domain_openstack_info", &[("uuid", g.uuid.as_str())]).into_iter().next().cloned()?;
        Some((text, os))
    });
    assert_eq!(os.labels["instance_name"], "web \"1\"");
    assert_eq!(os.labels["flavor"], "m1.tiny");
    assert_eq!(os.labels["project_name"], "shop");
    assert_eq!(os.labels["user_uuid"], "u1");

    common::exposition::assert_promtool_clean(&text);

    // curl shows the headers as sent (ureq would decode gzip and hide them).
    let out = Command::new("curl")
        .args(["-s", "-D", "-", "-o", "/dev/null", "-H", "Accept-Encoding: gzip", &agent.url()])
        .output()
        .unwrap();
    let headers = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(headers.contains("content-encoding: gzip"), "{headers}");
    assert!(headers.contains("content-type: text/plain; version=0.0.4"), "{headers}");

    // The gzip body is laid out from families compressed when the snapshot
    // arrived: decoded by curl's zlib it holds the series of the plain text
    // (values may move between two scrapes), and passes promtool.
    let curl = |args: &[&str]| {
        let out = Command::new("curl").args(["-sS"]).args(args).arg(agent.url()).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let series = |text: &str| -> std::collections::BTreeSet<String> {
        text.lines()
            .filter(|l| l.starts_with("libvirt_"))
            .map(|l| l.rsplit_once(' ').map_or(l, |(id, _)| id).to_string())
            .collect()
    };
    // Collectors deliver on their own schedules (health, snapshots and
    // pools arrive after domain stats), so the series may change between
    // two scrapes: compare a gzip scrape with the plain ones taken just
    // before and after it, once those two agree.
    let (plain, decoded) =
        common::wait_for(std::time::Duration::from_secs(30), "two scrapes with the same series", || {
            let before = curl(&[]);
            let decoded = curl(&["--compressed"]);
            let after = curl(&[]);
            (series(&before) == series(&after)).then_some((before, decoded))
        });
    common::exposition::assert_promtool_clean(&decoded);
    assert!(series(&plain).iter().any(|s| s.contains(g.uuid.as_str())), "{plain}");
    assert_eq!(series(&decoded), series(&plain));
}

/// libvirt refuses the `vm` and `dirtyrate` groups for an inactive domain
/// under ENFORCE; the probe must not let a shut-off guest take them away
/// from the running ones.
#[test]
fn probe_keeps_qemu_groups_with_a_shut_off_guest() {
    use virtpulse::libvirt::stats::{ALL_GROUPS, FLAG_BACKING, FLAG_NOWAIT};
    let off = Guest::start("probeoff", GuestSpec::default());
    off.destroy();
    let on = Guest::start("probeon", GuestSpec::default());
    let conn = virsh::read_only_connection();
    let all = ALL_GROUPS.iter().fold(0, |m, g| m | g.bit);
    let caps = conn.probe_stats(all, FLAG_NOWAIT | FLAG_BACKING).unwrap();
    for g in ALL_GROUPS {
        // What the running guest's QEMU reports when asked for just this group.
        let works = virsh::run(&["domstats", "--enforce", &format!("--{}", g.name), &on.name]).is_ok();
        assert_eq!(caps.groups & g.bit != 0, works, "group {} (probe vs virsh domstats --enforce)", g.name);
    }
}
