//! `[sinks.otlp]`: where and how metrics and event logs go over OTLP.
//!
//! Keys left unset fall back to the standard `OTEL_EXPORTER_OTLP_*`
//! environment variables, then to the OTLP defaults; keys set here win.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::section::{at_most, count_at_most, KeyError, SectionConfig, SectionContext, DAY, HOUR};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OtlpProtocol {
    /// OTLP/gRPC (default port 4317).
    Grpc,
    /// OTLP/HTTP with protobuf bodies (default port 4318).
    Http,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OtlpCompression {
    None,
    Gzip,
}

/// `[sinks.otlp]` (besides `enabled`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpConfig {
    /// `http://host:port` or `https://host:port` (for HTTP, the `/v1/metrics`
    /// and `/v1/logs` paths are appended). Default: OTEL_EXPORTER_OTLP_ENDPOINT,
    /// else localhost on the protocol's port.
    pub endpoint: Option<String>,
    /// Default: OTEL_EXPORTER_OTLP_PROTOCOL (`grpc`, `http/protobuf`), else grpc.
    pub protocol: Option<OtlpProtocol>,
    /// How often the metric snapshot is exported. Default:
    /// OTEL_METRIC_EXPORT_INTERVAL (ms), else 15 s.
    #[serde(with = "humantime_serde")]
    pub export_interval: Option<Duration>,
    /// Deadline of one export request. Default: OTEL_EXPORTER_OTLP_TIMEOUT (ms), else 10 s.
    #[serde(with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Default: OTEL_EXPORTER_OTLP_COMPRESSION, else gzip.
    pub compression: Option<OtlpCompression>,
    /// Request headers (authentication tokens...), added to
    /// OTEL_EXPORTER_OTLP_HEADERS. Values never reach the logs.
    pub headers: BTreeMap<String, String>,
    /// PEM file with the CA(s) that sign the receiver's certificate (besides
    /// the system's). Default: OTEL_EXPORTER_OTLP_CERTIFICATE.
    pub ca_file: Option<PathBuf>,
    /// Export metrics / event logs.
    pub metrics: bool,
    pub logs: bool,
    /// Event log records held while the receiver is slow or down; beyond
    /// this the oldest are dropped and counted.
    pub log_queue_capacity: usize,
    /// Log records per export request.
    pub log_batch_size: usize,
    /// Longest wait between retries of event logs.
    #[serde(with = "humantime_serde")]
    pub max_retry_backoff: Duration,
    /// Resource attributes added to (and overriding) the built-in ones and
    /// OTEL_RESOURCE_ATTRIBUTES.
    pub resource_attributes: BTreeMap<String, String>,
    /// Most data points sent per metric per export (a guard against a
    /// runaway label; far above what a 1,000-domain host needs).
    pub cardinality_limit: usize,
    /// Batches between the router and the sink.
    pub queue_capacity: usize,
    /// On shutdown, how long the last export may take.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        Self {
            endpoint: None,
            protocol: None,
            export_interval: None,
            timeout: None,
            compression: None,
            headers: BTreeMap::new(),
            ca_file: None,
            metrics: true,
            logs: true,
            log_queue_capacity: 10_000,
            log_batch_size: 512,
            max_retry_backoff: Duration::from_secs(30),
            resource_attributes: BTreeMap::new(),
            cardinality_limit: 100_000,
            queue_capacity: 64,
            shutdown_timeout: Duration::from_secs(5),
        }
    }
}

/// The settings in effect: config, else the OTEL_* environment, else defaults.
#[derive(Debug, Clone)]
pub struct OtlpSettings {
    pub protocol: OtlpProtocol,
    /// Full URLs of the two signals (HTTP: with the `/v1/...` path).
    pub metrics_endpoint: String,
    pub logs_endpoint: String,
    pub export_interval: Duration,
    pub timeout: Duration,
    pub compression: OtlpCompression,
    pub headers: Vec<(String, String)>,
    pub ca_file: Option<PathBuf>,
}

fn env(vars: &BTreeMap<String, String>, key: &str) -> Option<String> {
    vars.get(key).map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
}

/// A variable in milliseconds, within the bounds the matching key has.
fn millis(
    vars: &BTreeMap<String, String>,
    key: &str,
    bounds: std::ops::RangeInclusive<Duration>,
) -> Result<Option<Duration>, String> {
    env(vars, key)
        .map(|v| {
            let d = v
                .trim()
                .parse::<u64>()
                .map(Duration::from_millis)
                .map_err(|_| format!("{key}={v:?} is not a number of milliseconds"))?;
            if bounds.contains(&d) {
                Ok(d)
            } else {
                Err(format!(
                    "{key}={v:?} is out of range: use {} to {} milliseconds",
                    bounds.start().as_millis(),
                    bounds.end().as_millis()
                ))
            }
        })
        .transpose()
}

/// Bounds of the export interval and the export timeout (keys and variables alike).
pub(crate) const EXPORT_INTERVAL_BOUNDS: std::ops::RangeInclusive<Duration> =
    Duration::from_millis(100)..=Duration::from_secs(24 * 3600);
pub(crate) const EXPORT_TIMEOUT_BOUNDS: std::ops::RangeInclusive<Duration> =
    Duration::from_millis(1)..=Duration::from_secs(3600);

/// Checks a base endpoint: scheme http or https, a host, nothing odd.
pub(crate) fn endpoint_problem(url: &str) -> Option<String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Some(format!("{url:?} is not a URL; write e.g. \"http://otel-collector:4317\""));
    };
    if scheme != "http" && scheme != "https" {
        return Some(format!("{url:?}: the scheme must be http or https"));
    }
    // Found by the `otel` fuzz target: a query was read as part of the
    // port. OTLP endpoints take none (paths are appended to them).
    if rest.contains(['?', '#']) {
        return Some(format!("{url:?}: an OTLP endpoint has no query or fragment"));
    }
    let authority = rest.split('/').next().unwrap_or("");
    let host = authority.rsplit_once(':').map(|(h, _)| h).unwrap_or(authority);
    if host.is_empty() || authority.contains(char::is_whitespace) {
        return Some(format!("{url:?} names no host"));
    }
    if let Some((_, port)) = authority.rsplit_once(':') {
        if port.is_empty() || (!host.ends_with(']') && port.parse::<u16>().is_err()) {
            return Some(format!("{url:?}: {port:?} is not a port"));
        }
    }
    url.parse::<hyper::Uri>().err().map(|e| format!("{url:?} is not a valid URL ({e})"))
}

/// `k1=v1,k2=v2` with percent-encoded values (OTEL_*_HEADERS,
/// OTEL_RESOURCE_ATTRIBUTES).
pub(crate) fn parse_key_values(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').ok_or_else(|| format!("{pair:?} is not key=value"))?;
        out.push((k.trim().to_string(), percent_decode(v.trim())));
    }
    Ok(out)
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// `%XX` -> the byte; anything else (a lone `%`, `%` before non-hex or
/// before a multi-byte character) stays as it is. Works on bytes: a `%`
/// followed by part of a UTF-8 character must not split it.
pub(crate) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex_digit(bytes[i + 1]), hex_digit(bytes[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl SectionConfig for OtlpConfig {
    fn validate(&self, ctx: &SectionContext) -> Result<(), KeyError> {
        at_most("export_interval", self.export_interval, DAY)?;
        at_most("timeout", self.timeout, HOUR)?;
        at_most("max_retry_backoff", Some(self.max_retry_backoff), DAY)?;
        at_most("shutdown_timeout", Some(self.shutdown_timeout), HOUR)?;
        const M: u64 = 1_000_000;
        count_at_most("queue_capacity", self.queue_capacity as u64, 1024 * 64)?;
        count_at_most("log_queue_capacity", self.log_queue_capacity as u64, 10 * M)?;
        count_at_most("log_batch_size", self.log_batch_size as u64, 100_000)?;
        count_at_most("cardinality_limit", self.cardinality_limit as u64, 100 * M)?;
        if self.queue_capacity == 0 {
            return Err(KeyError::new("queue_capacity", "must be at least 1"));
        }
        if !ctx.enabled {
            return Ok(());
        }
        if let Some(e) = &self.endpoint {
            if let Some(p) = endpoint_problem(e) {
                return Err(KeyError::new("endpoint", p));
            }
        }
        if self.export_interval.is_some_and(|i| i < Duration::from_millis(100)) {
            return Err(KeyError::new("export_interval", "must be at least 100ms"));
        }
        if self.timeout.is_some_and(|t| t.is_zero()) {
            return Err(KeyError::new("timeout", "must be greater than 0"));
        }
        if self.log_queue_capacity == 0 || self.log_batch_size == 0 {
            return Err(KeyError::new(
                "log_queue_capacity",
                "log_queue_capacity and log_batch_size must be at least 1",
            ));
        }
        if self.cardinality_limit == 0 {
            return Err(KeyError::new("cardinality_limit", "must be at least 1"));
        }
        if !self.metrics && !self.logs {
            return Err(KeyError::new("metrics", "metrics and logs are both off; disable the sink instead"));
        }
        for name in self.headers.keys() {
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b)) {
                return Err(KeyError::new(format!("headers.{name}"), "not a valid header name"));
            }
        }
        // What the environment would supply must be valid too.
        self.settings(&std::env::vars().collect()).map_err(|m| KeyError::new("endpoint", m))?;
        Ok(())
    }
}

impl OtlpConfig {
    /// Resolves every setting from the config, then `vars` (the OTEL_*
    /// environment), then the defaults.
    pub fn settings(&self, vars: &BTreeMap<String, String>) -> Result<OtlpSettings, String> {
        let protocol = match (self.protocol, env(vars, "OTEL_EXPORTER_OTLP_PROTOCOL")) {
            (Some(p), _) => p,
            (None, Some(p)) => match p.as_str() {
                "grpc" => OtlpProtocol::Grpc,
                "http/protobuf" => OtlpProtocol::Http,
                other => {
                    return Err(format!(
                        "OTEL_EXPORTER_OTLP_PROTOCOL={other:?} is not supported; use grpc or http/protobuf"
                    ))
                }
            },
            (None, None) => OtlpProtocol::Grpc,
        };
        let default_base = match protocol {
            OtlpProtocol::Grpc => "http://localhost:4317",
            OtlpProtocol::Http => "http://localhost:4318",
        };
        let base = self
            .endpoint
            .clone()
            .or_else(|| env(vars, "OTEL_EXPORTER_OTLP_ENDPOINT"))
            .unwrap_or_else(|| default_base.to_string());
        if let Some(p) = endpoint_problem(&base) {
            return Err(p);
        }
        let signal = |var: &str, path: &str| -> Result<String, String> {
            // A per-signal variable is the full URL, used as is.
            if self.endpoint.is_none() {
                if let Some(url) = env(vars, var) {
                    return endpoint_problem(&url).map_or(Ok(url), Err);
                }
            }
            Ok(match protocol {
                OtlpProtocol::Grpc => base.clone(),
                OtlpProtocol::Http => format!("{}/{path}", base.trim_end_matches('/')),
            })
        };
        let compression = match (self.compression, env(vars, "OTEL_EXPORTER_OTLP_COMPRESSION")) {
            (Some(c), _) => c,
            (None, Some(c)) if c == "gzip" => OtlpCompression::Gzip,
            (None, Some(c)) if c == "none" => OtlpCompression::None,
            (None, Some(c)) => return Err(format!("OTEL_EXPORTER_OTLP_COMPRESSION={c:?}: use gzip or none")),
            (None, None) => OtlpCompression::Gzip,
        };
        let mut headers = match env(vars, "OTEL_EXPORTER_OTLP_HEADERS") {
            Some(h) => parse_key_values(&h).map_err(|e| format!("OTEL_EXPORTER_OTLP_HEADERS: {e}"))?,
            None => Vec::new(),
        };
        headers.retain(|(k, _)| !self.headers.contains_key(k));
        headers.extend(self.headers.iter().map(|(k, v)| (k.clone(), v.clone())));
        Ok(OtlpSettings {
            protocol,
            metrics_endpoint: signal("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "v1/metrics")?,
            logs_endpoint: signal("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "v1/logs")?,
            export_interval: self
                .export_interval
                .or(millis(vars, "OTEL_METRIC_EXPORT_INTERVAL", EXPORT_INTERVAL_BOUNDS)?)
                .unwrap_or(Duration::from_secs(15)),
            timeout: self
                .timeout
                .or(millis(vars, "OTEL_EXPORTER_OTLP_TIMEOUT", EXPORT_TIMEOUT_BOUNDS)?)
                .unwrap_or(Duration::from_secs(10)),
            compression,
            headers,
            ca_file: self.ca_file.clone().or_else(|| env(vars, "OTEL_EXPORTER_OTLP_CERTIFICATE").map(PathBuf::from)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_with_a_query_is_refused_for_what_it_is() {
        let e = endpoint_problem("https://c?x=1:https:/").unwrap();
        assert!(e.contains("no query or fragment"), "{e}");
        assert_eq!(endpoint_problem("https://collector:4318/otlp"), None);
    }

    /// Found by the `config` fuzz target: a zero export interval from the
    /// environment passed, and a zero period panics the export timer.
    #[test]
    fn otel_durations_out_of_bounds_are_refused_naming_the_variable() {
        let c = OtlpConfig::default();
        for (key, value) in [
            ("OTEL_METRIC_EXPORT_INTERVAL", "0000"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "99999999999"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "0"),
        ] {
            let e = c.settings(&vars(&[(key, value)])).unwrap_err();
            assert!(e.contains(key) && e.contains("out of range"), "{e}");
        }
        let ok = c.settings(&vars(&[("OTEL_METRIC_EXPORT_INTERVAL", " 5000 ")])).unwrap();
        assert_eq!(ok.export_interval, Duration::from_secs(5));
    }

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn config_wins_over_environment_which_wins_over_defaults() {
        let c = OtlpConfig::default();
        let s = c.settings(&vars(&[])).unwrap();
        assert_eq!((s.protocol, s.metrics_endpoint.as_str()), (OtlpProtocol::Grpc, "http://localhost:4317"));
        let env = vars(&[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4318/"),
            ("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "https://logs:9000/custom"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer%20abc,x-tenant=1"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
        ]);
        let s = c.settings(&env).unwrap();
        assert_eq!(s.metrics_endpoint, "https://collector:4318/v1/metrics");
        assert_eq!(s.logs_endpoint, "https://logs:9000/custom");
        assert_eq!(s.timeout, Duration::from_millis(2500));
        assert!(s.headers.contains(&("authorization".into(), "Bearer abc".into())));
        let mut c = OtlpConfig {
            endpoint: Some("http://mine:4317".into()),
            protocol: Some(OtlpProtocol::Grpc),
            ..Default::default()
        };
        c.headers.insert("x-tenant".into(), "2".into());
        let s = c.settings(&env).unwrap();
        assert_eq!((s.metrics_endpoint.as_str(), s.logs_endpoint.as_str()), ("http://mine:4317", "http://mine:4317"));
        assert_eq!(s.headers.iter().filter(|(k, _)| k == "x-tenant").count(), 1);
        assert!(s.headers.contains(&("x-tenant".into(), "2".into())));
    }

    #[test]
    fn bad_endpoints_and_protocols_are_explained() {
        for bad in ["localhost:4317", "ftp://x:1", "http://:4317", "http://host:notaport", "http://a b:1"] {
            assert!(endpoint_problem(bad).is_some(), "{bad}");
        }
        for good in ["http://localhost:4317", "https://otel.example.com", "http://[::1]:4318/"] {
            assert_eq!(endpoint_problem(good), None, "{good}");
        }
        let e = OtlpConfig::default().settings(&vars(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")])).unwrap_err();
        assert!(e.contains("OTEL_EXPORTER_OTLP_PROTOCOL"), "{e}");
    }

    #[test]
    fn percent_decoding_never_splits_a_character() {
        // `%` before a multi-byte character panicked (a &str sliced inside
        // the character) with OTEL_RESOURCE_ATTRIBUTES='k=%a€'.
        assert_eq!(percent_decode("%a€"), "%a€");
        assert_eq!(percent_decode("€%"), "€%");
        assert_eq!(percent_decode("%€"), "%€");
        assert_eq!(percent_decode("%41%4a%4A"), "AJJ");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%ff"), "\u{fffd}");
        assert_eq!(parse_key_values("k=%a€").unwrap(), vec![("k".to_string(), "%a€".to_string())]);
    }

    #[test]
    fn key_values_are_percent_decoded() {
        assert_eq!(
            parse_key_values("a=b%2Cc, d = e ").unwrap(),
            vec![("a".to_string(), "b,c".to_string()), ("d".to_string(), "e".to_string())]
        );
        assert!(parse_key_values("novalue").is_err());
    }
}
