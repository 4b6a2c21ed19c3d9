//! Reloading the configuration in place (SIGHUP, `systemctl reload`): what
//! each component's configuration looks like (so unchanged ones are left
//! alone) and what a reload cannot apply. How reloads went is
//! `crate::selfmon::reload`.

use serde_json::json;

use crate::collectors::Consumers;
use crate::config::{Component, Config};

/// Everything a collector is built from: one that compares equal after a
/// reload keeps running untouched (its caches and its pace intact).
pub(crate) fn collector_fingerprint(cfg: &Config, c: &Component, consumers: Consumers) -> String {
    let (interval, timeout) = cfg.schedule(c);
    json!({
        "section": c.raw,
        "enabled": c.enabled,
        "interval": interval.as_millis() as u64,
        "timeout": timeout.as_millis() as u64,
        "defaults": cfg.collector_defaults,
        "metrics": cfg.metrics,
        "implied": cfg.implied_switches,
        "domains": cfg.domains,
        "hostname": cfg.hostname(),
        "libvirt": cfg.libvirt,
        "consumers": [consumers.metrics, consumers.records],
    })
    .to_string()
}

/// Everything a sink is started from. The selection is not in it: sinks
/// read it live.
pub(crate) fn sink_fingerprint(cfg: &Config, c: &Component) -> String {
    json!({
        "section": c.raw,
        "enabled": c.enabled,
        "hostname": cfg.hostname(),
        "uri": cfg.libvirt.uri,
    })
    .to_string()
}

/// Keys that differ between `old` and `new` and only a restart applies.
pub(crate) fn needs_restart(old: &Config, new: &Config) -> Vec<String> {
    let mut keys = Vec::new();
    if serde_json::to_value(&old.events).ok() != serde_json::to_value(&new.events).ok() {
        keys.push("[events]".to_string());
    }
    if old.agent.log_format != new.agent.log_format {
        keys.push("agent.log_format".to_string());
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> Config {
        Config::from_parts(text, "test", &[], &crate::registry::schema()).unwrap()
    }

    #[test]
    fn a_collector_changes_with_its_section_the_selection_and_the_domains_only() {
        let base = cfg("");
        let c = |cfg: &Config, name: &str| {
            collector_fingerprint(cfg, cfg.collector(name).unwrap(), Consumers { metrics: true, records: false })
        };
        let interval = cfg("[collectors.jobs]\ninterval = \"7s\"\n");
        assert_ne!(c(&base, "jobs"), c(&interval, "jobs"));
        assert_eq!(c(&base, "node"), c(&interval, "node"), "another collector's section");
        let domains = cfg("[domains]\nexclude = [\"test-*\"]\n");
        assert_ne!(c(&base, "node"), c(&domains, "node"));
        let profile = cfg("[metrics]\nprofile = \"everything\"\n");
        assert_ne!(c(&base, "domain_stats"), c(&profile, "domain_stats"));
        let sink = cfg("[sinks.stdout]\nenabled = true\n");
        assert_eq!(c(&base, "domain_stats"), c(&sink, "domain_stats"));
    }

    #[test]
    fn a_sink_changes_with_its_section_not_with_the_selection() {
        let base = cfg("");
        let s = |cfg: &Config, name: &str| sink_fingerprint(cfg, cfg.sink(name).unwrap());
        assert_eq!(s(&base, "prometheus"), s(&cfg("[metrics]\nprofile = \"everything\"\n"), "prometheus"));
        assert_ne!(s(&base, "kafka"), s(&cfg("[sinks.kafka]\nevents_topic = \"x\"\n"), "kafka"));
    }

    #[test]
    fn events_and_the_log_format_need_a_restart() {
        let base = cfg("");
        assert!(needs_restart(&base, &cfg("[collectors.jobs]\ninterval = \"7s\"\n")).is_empty());
        assert_eq!(needs_restart(&base, &cfg("[events]\nqueue_capacity = 10\n")), vec!["[events]"]);
        assert_eq!(needs_restart(&base, &cfg("[agent]\nlog_format = \"json\"\n")), vec!["agent.log_format"]);
    }
}
