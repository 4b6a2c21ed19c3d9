//! The loader against the registered components (crate::registry).

use std::collections::BTreeMap;
use std::time::Duration;

use super::*;
use crate::collectors::domain_stats::config::DomainStatsConfig;
use crate::sinks::prometheus::PrometheusConfig;

const EXAMPLE: &str = include_str!("../../config.example.toml");

fn load(text: &str) -> Result<Config, ConfigError> {
    Config::from_parts(text, "/etc/x.toml", &[], &crate::registry::schema())
}

fn load_env(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    Config::from_parts(text, "f.toml", &env, &crate::registry::schema())
}

fn prometheus(c: &Config) -> PrometheusConfig {
    typed(&c.sink("prometheus").unwrap().config)
}

#[test]
fn defaults_are_valid() {
    let c = load("").unwrap();
    assert_eq!(c.libvirt.uri, "qemu:///system");
    assert!(c.libvirt.read_only);
    assert_eq!(prometheus(&c).listen, "0.0.0.0:9177");
    assert_eq!(prometheus(&c).path, "/metrics");
    assert!(c.sink("prometheus").unwrap().enabled && !c.sink("kafka").unwrap().enabled);
    let ds = c.collector("domain_stats").unwrap();
    assert_eq!(c.schedule(ds), (Duration::from_secs(15), Duration::from_secs(10)));
    assert_eq!(c.schedule(c.collector("jobs").unwrap()).0, Duration::from_secs(5));
    assert_eq!(typed::<DomainStatsConfig>(&ds.config).groups_mask().unwrap(), 2047);
    assert!(!c.collector("guest").unwrap().enabled);
}

#[test]
fn example_config_is_valid() {
    load(EXAMPLE).unwrap();
}

/// `key = value` lines of the example by dotted key, with whether they are
/// commented out. Free tables are skipped.
fn documented(tree: &KeyTree) -> BTreeMap<String, (bool, String)> {
    let mut out = BTreeMap::new();
    let mut section = String::new();
    for line in EXAMPLE.lines() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
            continue;
        }
        let (commented, rest) = match line.strip_prefix('#') {
            Some(r) => (true, r.trim_start()),
            None => (false, line),
        };
        let Some((key, value)) = rest.split_once('=') else { continue };
        let key = key.trim();
        if section.is_empty()
            || key.is_empty()
            || !key.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            || tree.free.contains(&section)
        {
            continue;
        }
        // A trailing comment after the value ("# vcpu_kvm = false  # ...").
        let value = value.split(" #").next().unwrap_or(value).trim();
        out.insert(format!("{section}.{key}"), (commented, value.to_string()));
    }
    out
}

/// Whether an example value (TOML) says the same as a default (JSON).
fn same(example: &str, default: &serde_json::Value) -> bool {
    let Ok(v) = format!("v = {example}").parse::<toml::Table>().map(|mut t| t.remove("v")) else { return false };
    let Some(v) = v else { return false };
    let as_json = serde_json::to_value(&v).unwrap_or_default();
    if as_json == *default {
        return true;
    }
    match (v.as_str(), default.as_str()) {
        (Some(a), Some(b)) => {
            let dur = |s: &str| humantime::parse_duration(s).ok();
            let size = |s: &str| ByteSize::parse(s).ok();
            (dur(a).is_some() && dur(a) == dur(b)) || (size(a).is_some() && size(a) == size(b))
        }
        _ => false,
    }
}

#[test]
fn the_example_documents_every_key_with_its_default_and_nothing_else() {
    let tree = crate::registry::schema().keys();
    let doc = documented(&tree);
    for (key, default) in &tree.leaves {
        let Some((commented, value)) = doc.get(key) else {
            panic!("config.example.toml does not document `{key}` (default {default})");
        };
        if default.is_null() {
            assert!(*commented, "`{key}` has no default: the example shows it commented out, not as `{value}`");
        } else {
            assert!(!commented, "`{key}` defaults to {default}: the example shows it set");
            assert!(same(value, default), "`{key}`: the example says {value}, the default is {default}");
        }
    }
    for key in doc.keys() {
        assert!(tree.leaves.contains_key(key), "config.example.toml documents `{key}`, which is not a key");
    }
    for free in &tree.free {
        assert!(EXAMPLE.contains(&format!("[{free}]")), "config.example.toml lacks the [{free}] table");
    }
}

#[test]
fn every_switch_is_a_key_and_documented() {
    for sw in crate::registry::catalog().switches() {
        let c = load(&format!("[metrics]\n{} = true\n", sw.key)).unwrap();
        assert_eq!(c.metrics.switches.get(sw.key), Some(&true), "{}", sw.key);
        assert!(c.selection().unwrap().enabled(Some(sw)), "{}", sw.key);
        assert!(EXAMPLE.contains(&format!("# {} = false", sw.key)), "config.example.toml lacks {}", sw.key);
    }
}

#[test]
fn unknown_keys_are_named_with_the_file_and_the_nearest_key() {
    let e = load("[collectors]\nintervall = \"5s\"\n").unwrap_err();
    assert_eq!(e.source, "/etc/x.toml");
    assert_eq!(e.key, "collectors.intervall");
    assert!(e.message.contains("unknown field `intervall`") && e.message.contains("did you mean `interval`"), "{e}");
    assert!(e.to_string().contains("/etc/x.toml"), "{e}");
    for (text, key) in [
        ("[collectors.jobs]\nper_cpu = true\n", "collectors.jobs.per_cpu"),
        ("[collectors.job]\nenabled = true\n", "collectors.job"),
        ("[sinks.kafkaa]\nenabled = true\n", "sinks.kafkaa"),
        ("[sinks.kafka]\nbrokerz = []\n", "sinks.kafka.brokerz"),
        ("[metrics]\nvcpu_kvms = true\n", "metrics.vcpu_kvms"),
        ("[agnet]\nlog_level = \"info\"\n", "agnet"),
    ] {
        let e = load(text).unwrap_err();
        assert_eq!(e.key, key, "{text}: {e}");
        assert!(e.message.contains("unknown field"), "{text}: {e}");
    }
}

#[test]
fn wrong_types_are_named() {
    for (text, key) in [
        ("[libvirt]\nread_only = \"yes\"\n", "libvirt.read_only"),
        ("[collectors]\ninterval = \"fast\"\n", "collectors.interval"),
        ("[collectors.node]\nenabled = 3\n", "collectors.node.enabled"),
        ("[sinks.kafka]\nenabled = \"on\"\n", "sinks.kafka.enabled"),
        ("[metrics]\nvcpu_kvm = \"yes\"\n", "metrics.vcpu_kvm"),
        ("[sinks.otlp]\nprotocol = \"smoke\"\n", "sinks.otlp.protocol"),
    ] {
        let e = load(text).unwrap_err();
        assert_eq!(e.key, key, "{text}: {e}");
    }
}

#[test]
fn impossible_values_are_rejected() {
    for (text, key) in [
        ("[collectors]\ninterval = \"0s\"\n", "collectors.interval"),
        ("[collectors]\ninterval = \"5s\"\ntimeout = \"6s\"\n", "collectors.timeout"),
        ("[collectors.pools]\ninterval = \"1s\"\ntimeout = \"2s\"\n", "collectors.pools.timeout"),
        ("[collectors.node]\ninterval = \"1ms\"\n", "collectors.node.interval"),
        ("[collectors.domain_stats]\ngroups = [\"cpu\"]\n", "collectors.domain_stats.groups"),
        ("[collectors.domain_stats]\ngroups = []\n", "collectors.domain_stats.groups"),
        ("[sinks.prometheus]\nlisten = \"nowhere\"\n", "sinks.prometheus.listen"),
        ("[sinks.prometheus]\npath = \"metrics\"\n", "sinks.prometheus.path"),
        ("[domains]\ninclude = [\"/([/\"]\n", "domains.include"),
        ("[libvirt]\nuri = \"\"\n", "libvirt.uri"),
        (
            "[libvirt]\nreconnect_min_backoff = \"10s\"\nreconnect_max_backoff = \"1s\"\n",
            "libvirt.reconnect_max_backoff",
        ),
        ("[agent]\nlog_level = \"[\"\n", "agent.log_level"),
        ("[admin]\nlisten = \"everywhere\"\n", "admin.listen"),
    ] {
        let e = load(text).unwrap_err();
        assert_eq!(e.key, key, "{text}: {e}");
    }
}

#[test]
fn metric_selection_is_validated_and_named() {
    let c = load("[metrics]\nprofile = \"everything\"\nvcpu_kvm = false\ninclude = \"libvirt_domain_*\"\n").unwrap();
    let sel = c.selection().unwrap();
    assert!(!sel.enabled(Some(&crate::collectors::domain_stats::metrics::VCPU_KVM)));
    assert!(sel.enabled(Some(&crate::collectors::domain_stats::metrics::VM_KVM)));
    assert!(!sel.selects_name("libvirt_node_cpus"));
    for (text, key, needle) in [
        ("[metrics]\nprofile = \"all\"\n", "metrics.profile", "unknown variant"),
        ("[metrics]\ninclude = [\"libvirt.domain\"]\n", "metrics.include", "letters, digits"),
        ("[metrics]\nexclude = [\"\"]\n", "metrics.exclude", "empty pattern"),
        ("[metrics]\ndrop_labels = [\"dom*\"]\n", "metrics.drop_labels", "`domain` label"),
        ("[metrics]\ndrop_labels = [\"po*\"]\n", "metrics.drop_labels", "`pool` label"),
        ("[sinks.prometheus]\nmax_series = 0\n", "sinks.prometheus.max_series", "at least 1"),
        // Found by the `config` fuzz target: tracing-subscriber panicked on this.
        ("[agent]\nlog_level = \"ins: ~5\u{e9}\u{e9}{{\"\n", "agent.log_level", "ASCII"),
        ("[collectors.domain_stats]\nchunks_in_flight = 0\n", "collectors.domain_stats.chunks_in_flight", "between"),
        ("[collectors.jobs]\ninterval = \"5s\"\nidle_interval = \"1s\"\n", "collectors.jobs.idle_interval", "shorter"),
    ] {
        let e = load(text).unwrap_err();
        assert_eq!(e.key, key, "{text}: {e}");
        assert!(e.message.contains(needle), "{text}: {e}");
    }
}

#[test]
fn a_collector_implies_its_switch_unless_metrics_says_otherwise() {
    let per_cpu = &crate::collectors::node::metrics::NODE_PER_CPU;
    let c = load("[collectors.node]\nper_cpu = true\n").unwrap();
    assert!(c.selection().unwrap().enabled(Some(per_cpu)));
    let c = load("[collectors.node]\nper_cpu = true\n[metrics]\nnode_per_cpu = false\n").unwrap();
    assert!(!c.selection().unwrap().enabled(Some(per_cpu)));
    let c = load("[collectors.node]\nenabled = false\nper_cpu = true\n").unwrap();
    assert!(!c.selection().unwrap().enabled(Some(per_cpu)), "a disabled collector implies nothing");
}

#[test]
fn invalid_toml_is_reported() {
    let e = load("[libvirt\n").unwrap_err();
    assert!(e.message.starts_with("invalid TOML"), "{e}");
}

#[test]
fn env_overrides_file_and_is_named_in_errors() {
    let c = load_env(
        "[libvirt]\nuri = \"qemu:///system\"\n",
        &[
            ("VIRTPULSE_LIBVIRT__URI", "test:///default"),
            ("VIRTPULSE_SINKS__PROMETHEUS__LISTEN", "127.0.0.1:9999"),
            ("VIRTPULSE_COLLECTORS__DOMAIN_STATS__GROUPS", "state, vcpu"),
            ("VIRTPULSE_LIBVIRT__READ_ONLY", "false"),
            ("VIRTPULSE_SINKS__KAFKA__ENABLED", "true"),
            ("VIRTPULSE_COLLECTORS__GUEST__INTERVAL", "2m"),
            ("VIRTPULSE_METRICS__PERF", "true"),
            ("VIRTPULSE_TEST_WEDGE_COLLECTOR", "x"),
            ("OTHER_UNRELATED", "x"),
        ],
    )
    .unwrap();
    assert_eq!(c.libvirt.uri, "test:///default");
    assert_eq!(prometheus(&c).listen, "127.0.0.1:9999");
    let ds = typed::<DomainStatsConfig>(&c.collector("domain_stats").unwrap().config);
    assert_eq!(ds.groups, vec!["state", "vcpu"]);
    assert!(!c.libvirt.read_only);
    assert!(c.sink("kafka").unwrap().enabled);
    assert_eq!(c.collector("guest").unwrap().interval, Some(Duration::from_secs(120)));
    assert_eq!(c.metrics.switches.get("perf"), Some(&true));

    let e = load_env("", &[("VIRTPULSE_COLLECTORS__INTERVAL", "soon")]).unwrap_err();
    assert_eq!(e.source, "environment variable VIRTPULSE_COLLECTORS__INTERVAL");
    let e = load_env("", &[("VIRTPULSE_NOPE__X", "1")]).unwrap_err();
    assert!(e.message.contains("not a configuration key"), "{e}");
    assert_eq!(e.source, "environment variable VIRTPULSE_NOPE__X");
    let e = load_env("", &[("VIRTPULSE_COLLECTORS__JOBS__IDLE_INTERVAL", "1s")]).unwrap_err();
    assert_eq!(e.source, "environment variable VIRTPULSE_COLLECTORS__JOBS__IDLE_INTERVAL");
}

#[test]
fn a_variable_that_maps_to_no_key_is_an_error_with_the_nearest_one() {
    for (var, nearest) in [
        ("VIRTPULSE_LIBVIRT_URI", "VIRTPULSE_LIBVIRT__URI"),
        ("VIRTPULSE_SINKS__PROMETHEUS_LISTEN", "VIRTPULSE_SINKS__PROMETHEUS__LISTEN"),
        ("VIRTPULSE_COLLECTORS__INTERVALL", "VIRTPULSE_COLLECTORS__INTERVAL"),
        ("VIRTPULSE_COLLECTORS__NODE__PERCPU", "VIRTPULSE_COLLECTORS__NODE__PER_CPU"),
        ("virtpulse_x", ""),
    ] {
        let r = load_env("", &[(var, "qemu+tcp://elsewhere/system")]);
        if nearest.is_empty() {
            assert!(r.is_ok(), "{var} is not ours (the prefix is upper case)");
            continue;
        }
        let e = r.unwrap_err();
        assert_eq!(e.source, format!("environment variable {var}"));
        assert!(e.message.contains(&format!("did you mean {nearest}?")), "{var}: {e}");
    }
    // Free tables take any key.
    load_env("", &[("VIRTPULSE_SINKS__OTLP__HEADERS__X_TENANT", "a")]).unwrap();
}

#[test]
fn every_duration_and_count_is_bounded() {
    for (text, key) in [
        ("[collectors]\ninterval = \"100000000000s\"\n", "collectors.interval"),
        ("[collectors.jobs]\ninterval = \"100000000000s\"\n", "collectors.jobs.interval"),
        ("[events]\nqueue_capacity = 9223372036854775807\n", "events.queue_capacity"),
        ("[sinks.kafka]\nmax_in_flight = 100000000000\n", "sinks.kafka.max_in_flight"),
        ("[sinks.otlp]\nmax_retry_backoff = \"1000d\"\n", "sinks.otlp.max_retry_backoff"),
        ("[collectors.domain_stats]\nmetadata_refresh = \"3650d\"\n", "collectors.domain_stats.metadata_refresh"),
        ("[collectors.guest]\nmax_filesystems = 1000000\n", "collectors.guest.max_filesystems"),
        ("[sinks.prometheus]\npath = \"/healthz\"\n", "sinks.prometheus.path"),
        ("[sinks.prometheus]\npath = \"/readyz\"\n", "sinks.prometheus.path"),
        ("[sinks.prometheus]\npath = \"/{x}\"\n", "sinks.prometheus.path"),
        ("[sinks.prometheus]\npath = \"/a//b\"\n", "sinks.prometheus.path"),
        ("[sinks.prometheus]\npath = \"/m*\"\n", "sinks.prometheus.path"),
    ] {
        let e = load(text).unwrap_err();
        assert_eq!(e.key, key, "{text}: {e}");
    }
    load("[sinks.prometheus]\npath = \"/prometheus/metrics\"\n").unwrap();
}
