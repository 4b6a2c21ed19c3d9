//! The alerting rules: valid for Prometheus, unit-tested with promtool, and
//! naming only metrics the agent exports (docs/metrics.md is generated from
//! the code, so a renamed metric breaks this test, not a page at 3 am).

mod common;

use std::collections::BTreeSet;
use std::process::Command;

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(common::project_root().join("alerts"))
        .output()
        .expect("promtool (scripts/install-test-deps.sh installs prometheus)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
fn rules_pass_promtool_check_and_their_unit_tests() {
    let check = promtool(&["check", "rules", "virtpulse.rules.yml"]);
    assert!(check.contains("SUCCESS"), "{check}");
    let test = promtool(&["test", "rules", "virtpulse.tests.yml"]);
    assert!(test.contains("SUCCESS"), "{test}");
}

#[test]
fn every_rule_is_unit_tested_and_names_real_metrics() {
    let rules = std::fs::read_to_string(common::project_root().join("alerts/virtpulse.rules.yml")).unwrap();
    let tests = std::fs::read_to_string(common::project_root().join("alerts/virtpulse.tests.yml")).unwrap();
    let docs = std::fs::read_to_string(common::project_root().join("docs/metrics.md")).unwrap();
    let alerts: Vec<&str> = rules.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")).collect();
    assert!(alerts.len() >= 14, "{alerts:?}");
    for a in &alerts {
        assert!(tests.contains(&format!("alertname: {a}\n")), "{a} has no promtool unit test");
    }
    let re = regex::Regex::new(r"\b(libvirt|virtpulse)_[a-z_]+\b").unwrap();
    let used: BTreeSet<&str> = rules
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.contains("summary:") && !l.contains("description:"))
        .flat_map(|l| re.find_iter(l).map(|m| m.as_str()))
        .collect();
    for m in used {
        assert!(docs.contains(&format!("`{m}`")), "{m} is used by an alert but not exported (docs/metrics.md)");
    }
}
