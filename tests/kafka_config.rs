//! Kafka sink misconfiguration: each mistake is a clear error naming the key
//! (at --check-config, or at start), never a silent retry loop; secrets
//! never reach the logs.

mod common;

use std::process::Command;
use std::time::Duration;

use common::agent::{bin, free_port, Agent};
use common::wait_for;

fn check(config: &str, env: &[(&str, &str)]) -> (i32, String) {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), config).unwrap();
    let out = Command::new(bin())
        .args(["--check-config", "--config"])
        .arg(f.path())
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn kafka(extra: &str) -> String {
    format!("[sinks.kafka]\nenabled = true\nbrokers = [\"127.0.0.1:9\"]\nspool_dir = \"/tmp/virtpulse-kafka-check\"\n{extra}\n")
}

#[test]
fn unknown_librdkafka_property_is_named() {
    let (code, err) = check(&kafka("[sinks.kafka.properties]\n\"no.such.property\" = \"1\"\n"), &[]);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("sinks.kafka.properties.no.such.property"), "{err}");
    // The same property from the environment (dots spelled as underscores).
    let (code, err) = check(&kafka(""), &[("VIRTPULSE_SINKS__KAFKA__PROPERTIES__NO_SUCH_THING", "1")]);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("sinks.kafka.properties.no.such.thing"), "{err}");
    // A known property with an impossible value.
    let (code, err) = check(&kafka("[sinks.kafka.properties]\n\"acks\" = \"sometimes\"\n"), &[]);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("sinks.kafka.properties.acks"), "{err}");
}

#[test]
fn bad_topic_names_and_values_are_named() {
    for (extra, key) in [
        ("events_topic = \"libvirt events\"", "sinks.kafka.events_topic"),
        ("metrics_topic = \"..\"", "sinks.kafka.metrics_topic"),
        ("metrics_topic = \"libvirt.events\"", "sinks.kafka.metrics_topic"),
        ("compression = \"brotli\"", "sinks.kafka.compression"),
        ("spool_max_bytes = \"1KiB\"", "sinks.kafka.spool_max_bytes"),
        ("spool_max_bytes = \"12 parsecs\"", "sinks.kafka.spool_max_bytes"),
    ] {
        let (code, err) = check(&kafka(extra), &[]);
        assert_eq!(code, 78, "{extra}: {err}");
        assert!(err.contains(key), "{extra}: {err}");
    }
    // Keys the base config sets, overridden from the environment.
    for (var, value, key) in [
        ("VIRTPULSE_SINKS__KAFKA__BROKERS", "kafka-1", "sinks.kafka.brokers"),
        ("VIRTPULSE_SINKS__KAFKA__SPOOL_DIR", "relative/dir", "sinks.kafka.spool_dir"),
    ] {
        let (code, err) = check(&kafka(""), &[(var, value)]);
        assert_eq!(code, 78, "{var}: {err}");
        assert!(err.contains(key) && err.contains(var), "{var}: {err}");
    }
    let (code, err) = check(&kafka("[sinks.kafka.secret_files]\n\"sasl.password\" = \"/nonexistent/pw\"\n"), &[]);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("sinks.kafka.secret_files.sasl.password") && err.contains("/nonexistent/pw"), "{err}");
}

#[test]
fn unwritable_spool_directory_stops_the_start_with_the_key() {
    let f = tempfile::NamedTempFile::new().unwrap();
    let config = format!(
        "[libvirt]\nuri = \"test:///default\"\n[sinks.prometheus]\nlisten = \"127.0.0.1:{}\"\n{}",
        free_port(),
        kafka("")
    );
    std::fs::write(f.path(), config).unwrap();
    let out = Command::new(bin())
        .arg("--config")
        .arg(f.path())
        .env("VIRTPULSE_SINKS__KAFKA__SPOOL_DIR", "/proc/virtpulse-spool")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert!(err.contains("sinks.kafka.spool_dir") && err.contains("/proc/virtpulse-spool"), "{err}");
}

#[test]
fn unreachable_brokers_are_reported_plainly_and_secrets_stay_out_of_logs() {
    let spool = tempfile::tempdir().unwrap();
    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), "file-secret-b4\n").unwrap();
    for broker in [format!("127.0.0.1:{}", free_port()), "nosuchhost.invalid:9092".to_string()] {
        let agent = Agent::start(&format!(
            "[libvirt]\nuri = \"test:///default\"\n[sinks.kafka]\nenabled = true\nbrokers = [\"{broker}\"]\nspool_dir = \"{}\"\n\
             [sinks.kafka.properties]\n\"security.protocol\" = \"sasl_plaintext\"\n\"sasl.mechanisms\" = \"PLAIN\"\n\
             \"sasl.username\" = \"agent\"\n\"sasl.password\" = \"hunter2-in-config\"\n\
             [sinks.kafka.secret_files]\n\"ssl.key.password\" = \"{}\"\n",
            spool.path().display(),
            secret.path().display()
        ));
        wait_for(Duration::from_secs(30), "the unreachable-broker error in the log", || {
            agent.log().contains("cannot reach the Kafka brokers").then_some(())
        });
        let log = agent.log();
        assert!(log.contains(&broker), "the log names the brokers: {log}");
        assert_eq!(agent.scrape().value("virtpulse_kafka_broker_up", &[]), Some(0.0));
        // The agent keeps running (events are spooled), and says so.
        assert!(agent.try_scrape_text().is_ok());
        for s in ["hunter2-in-config", "file-secret-b4"] {
            assert!(!log.contains(s), "a secret reached the log: {log}");
        }
    }
}
