//! Fuzz harnesses: one `pub fn <target>(data: &[u8])` per cargo-fuzz
//! target. `fuzz/fuzz_targets/<target>.rs` only hands libFuzzer's input to
//! the function here, and `tests/fuzz_corpus.rs` replays the committed
//! corpus (`fuzz/corpus/<target>/`) and every kept crash
//! (`fuzz/artifacts/<target>/`) through the same function on stable, so a
//! regression fails the ordinary test run without nightly.
//!
//! A harness must not panic on any input: a panic is a finding. Besides
//! "no panic", each one asserts properties of what it drives (values
//! decoded as built, intact spool records read back, settings within the
//! bounds the configuration enforces, ...). Inputs are decoded with a small
//! byte reader: missing bytes read as zero, so every input means something.
//!
//! Not part of the agent's API (hidden from the docs); `scripts/fuzz.sh`
//! runs the targets.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::ffi::c_int;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::{typed, Config};
use crate::events::normalize::{classify, namer, to_record, Stamp};
use crate::libvirt::events::{Family, RawEvent};
use crate::libvirt::typed_params::{KeyFilter, KeyInterner, ParamArray, RawParam, TypedValue};
use crate::record::{RecordKind, Unit, EVENT, SCHEMA};
use crate::sinks::kafka::spool::{encode_frame, segment_name, Entry, Spool, SpoolConfig, SyncPolicy, LOW_WATER_FILE};
use crate::sinks::otlp::config::{
    endpoint_problem, parse_key_values, percent_decode, OtlpCompression, OtlpConfig, OtlpProtocol, OtlpSettings,
};
use crate::sinks::otlp::resource::ResourceBuilder;
use crate::web::Security;

/// Reads a fuzz input front to back; past its end every read is zeros.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    fn take(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.0.split_at(n.min(self.0.len()));
        self.0 = b;
        a
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let t = self.take(N);
        out[..t.len()].copy_from_slice(t);
        out
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }

    fn i32(&mut self) -> i32 {
        i32::from_le_bytes(self.array())
    }

    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }

    /// A length byte, then that many bytes.
    fn short(&mut self) -> &'a [u8] {
        let n = self.byte() as usize;
        self.take(n)
    }

    fn text(&mut self) -> String {
        lossy(self.short())
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The bytes before the first NUL, and those after it.
fn split_nul(data: &[u8]) -> (&[u8], &[u8]) {
    match memchr::memchr(0, data) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

/// The OTEL_* variables the agent reads.
const OTEL_VARS: &[&str] = &[
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_EXPORTER_OTLP_COMPRESSION",
    "OTEL_EXPORTER_OTLP_CERTIFICATE",
    "OTEL_METRIC_EXPORT_INTERVAL",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_SERVICE_NAME",
];

/// What `OtlpSettings` may hold, whatever the environment said: the bounds
/// the configuration keys have (a zero interval panics the export loop's
/// timer, an unbounded one overflows `Instant + interval`), and endpoints
/// the transport can parse.
fn check_settings(s: &OtlpSettings) {
    assert!(
        (Duration::from_millis(100)..=Duration::from_secs(24 * 3600)).contains(&s.export_interval),
        "export interval out of bounds: {:?}",
        s.export_interval
    );
    assert!(
        !s.timeout.is_zero() && s.timeout <= Duration::from_secs(3600),
        "export timeout out of bounds: {:?}",
        s.timeout
    );
    for url in [&s.metrics_endpoint, &s.logs_endpoint] {
        assert_eq!(endpoint_problem(url), None, "settings hold an endpoint the transport refuses: {url:?}");
        assert!(url.parse::<hyper::Uri>().is_ok(), "{url:?}");
    }
}

/// `k=v` attributes as a map, for the checks on what `ResourceBuilder` built.
fn resource_attributes(b: &ResourceBuilder) -> BTreeMap<String, String> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    b.build()
        .attributes
        .into_iter()
        .map(|kv| {
            let v = match kv.value.and_then(|v| v.value) {
                Some(Value::StringValue(s)) => s,
                other => panic!("resource attribute {} is not a string: {other:?}", kv.key),
            };
            (kv.key, v)
        })
        .collect()
}

fn known_env_vars() -> &'static [String] {
    static VARS: OnceLock<Vec<String>> = OnceLock::new();
    VARS.get_or_init(|| crate::registry::schema().keys().leaves.keys().map(|k| crate::config::env_var_of(k)).collect())
}

/// Target `config`: TOML text, a NUL, then environment lines `KEY=VALUE`.
/// A key `@N` stands for the N-th configuration key's VIRTPULSE_ variable,
/// `#N` for the N-th OTEL_* variable (so short inputs reach every key).
/// A configuration that loads must pass every check a start makes short of
/// connecting anywhere.
pub fn config(data: &[u8]) {
    let (text, rest) = split_nul(data);
    let text = lossy(text);
    let mut env: Vec<(String, String)> = Vec::new();
    for line in rest.split(|b| *b == b'\n').take(64) {
        let line = lossy(line);
        let (k, v) = line.split_once('=').unwrap_or((&line, ""));
        let key = if let Some(n) = k.strip_prefix('@').and_then(|n| n.parse::<usize>().ok()) {
            let vars = known_env_vars();
            vars[n % vars.len()].clone()
        } else if let Some(n) = k.strip_prefix('#').and_then(|n| n.parse::<usize>().ok()) {
            OTEL_VARS[n % OTEL_VARS.len()].to_string()
        } else {
            k.to_string()
        };
        env.push((key, v.to_string()));
    }
    let cfg = match Config::from_parts(&text, "fuzz.toml", &env, &crate::registry::schema()) {
        Ok(cfg) => cfg,
        Err(e) => {
            // Errors name the file or a variable that was set.
            assert!(
                e.source == "fuzz.toml"
                    || e.source.strip_prefix("environment variable ").is_some_and(|v| env.iter().any(|(k, _)| k == v)),
                "error from an unknown source: {e:?}"
            );
            let _ = e.to_string();
            return;
        }
    };
    let vars: BTreeMap<String, String> = env.iter().cloned().collect();
    // Everything `validate` promised.
    let selection = cfg.selection().expect("a loaded configuration has a valid metric selection");
    for c in &cfg.collectors {
        let (interval, timeout) = cfg.schedule(c);
        assert!(!timeout.is_zero() && timeout <= interval, "{}: {interval:?} / {timeout:?}", c.name);
    }
    let jobs = cfg.collector("jobs").expect("the jobs collector is registered");
    let jobs_cfg = typed::<crate::collectors::jobs::config::JobsConfig>(&jobs.config);
    assert!(jobs_cfg.idle_interval(cfg.schedule(jobs).0) >= cfg.schedule(jobs).0);
    crate::filter::DomainFilter::new(&cfg.domains.include, &cfg.domains.exclude)
        .expect("a loaded configuration has valid domain patterns");
    let prometheus = cfg.sink("prometheus").expect("the Prometheus sink is registered");
    let prom = typed::<crate::sinks::prometheus::PrometheusConfig>(&prometheus.config);
    if prometheus.enabled {
        assert!(prom.listen.parse::<std::net::SocketAddr>().is_ok());
        assert_eq!(crate::sinks::prometheus::config::metrics_path_problem(&prom.path), None);
    }
    // What `app::preflight` and the start derive from it, minus the
    // network: the stats request, the OTLP settings and resource (with the
    // fuzzed environment instead of the process's).
    let ds = cfg.collector("domain_stats").expect("the domain stats collector is registered");
    let ds = typed::<crate::collectors::domain_stats::config::DomainStatsConfig>(&ds.config);
    let mask = ds.groups_mask().expect("a loaded configuration has valid stats groups");
    assert_ne!(mask, 0);
    let state = crate::libvirt::stats::group_by_name("state").map(|g| g.bit).unwrap_or(1);
    for records in [false, true] {
        let consumers = crate::collectors::Consumers { metrics: true, records };
        let (groups, _) =
            crate::collectors::domain_stats::requested_stats(&ds, &selection, consumers).expect("stats request");
        assert_eq!(groups & !mask & !state, 0, "groups asked beyond the configured ones");
    }
    let otlp = cfg.sink("otlp").expect("the OTLP sink is registered");
    let otlp_cfg = typed::<OtlpConfig>(&otlp.config);
    // (A disabled sink's keys are not checked: its settings are never used.)
    if let (true, Ok(settings)) = (otlp.enabled, otlp_cfg.settings(&vars)) {
        check_settings(&settings);
    }
    let host = cfg.agent.hostname.clone().unwrap_or_else(|| "fuzz-host".into());
    if let Ok(b) = ResourceBuilder::new(&host, &cfg.libvirt.uri, &vars, &otlp_cfg.resource_attributes) {
        let attrs = resource_attributes(&b);
        for (k, v) in &otlp_cfg.resource_attributes {
            assert_eq!(attrs.get(k), Some(v), "sinks.otlp.resource_attributes.{k} must win");
        }
    }
}

/// One parameter as the `typed_params` harness built it.
struct ParamSpec {
    field: [u8; 80],
    type_code: c_int,
    raw: u64,
    /// For strings: `None` is a NULL pointer; the bytes get a NUL appended.
    string: Option<Vec<u8>>,
}

/// Parameters in one array at most (more than the interner's table holds,
/// so its reset is reached).
const MAX_PARAMS: usize = 70_000;

/// Target `typed_params`: builds a `virTypedParameter` array from the input
/// (every type code, valid or not; NULL and non-UTF-8 strings; names that
/// fill all 80 bytes without a terminator; long runs of copies) and checks
/// that `decode` returns exactly what was built, with and without a key
/// filter. The count passed is always the array's length.
pub fn typed_params(data: &[u8]) {
    use crate::libvirt::typed_params::type_code;
    let mut inp = Input(data);
    let mode = inp.byte();
    let prefix = lossy(inp.short());
    let filter: Option<KeyFilter> = match mode % 4 {
        0 => None,
        1 => Some(Arc::new(move |k: &str| k.starts_with(prefix.as_str()))),
        2 => Some(Arc::new(|_: &str| false)),
        _ => Some(Arc::new(|k: &str| k.len() % 2 == 0)),
    };
    let wanted = |k: &str| filter.as_ref().is_none_or(|f| f(k));

    let mut specs: Vec<ParamSpec> = Vec::new();
    while !inp.is_empty() && specs.len() < MAX_PARAMS {
        let t = inp.byte();
        let type_code = if t >= 0xF0 { inp.i32() } else { c_int::from(t % 9) };
        let mut field = [0u8; 80];
        let n = inp.byte();
        let name_len = if n == 0xFF {
            // All 80 bytes used, no terminator.
            let src = inp.take(80);
            field.fill(b'x');
            field[..src.len()].copy_from_slice(src);
            80
        } else {
            let src = inp.take(usize::from(n) % 81);
            field[..src.len()].copy_from_slice(src);
            src.len()
        };
        let raw = inp.u64();
        let string = (type_code == type_code::STRING as c_int && inp.byte() & 1 == 1)
            .then(|| inp.short().iter().copied().chain([0]).collect::<Vec<u8>>());
        let rep = inp.byte();
        let copies = if rep >= 0xF0 { usize::from(inp.u16()).max(1) } else { 1 };
        for c in 0..copies {
            if specs.len() >= MAX_PARAMS {
                break;
            }
            let mut field = field;
            if rep == 0xFF && c > 0 {
                // Distinct names: the copy number where the name ends.
                let at = name_len.min(76);
                field[at..at + 4].copy_from_slice(format!("{:04x}", c & 0xffff).as_bytes());
            }
            specs.push(ParamSpec { field, type_code, raw, string: string.clone() });
        }
    }
    let params = ParamArray::new(specs.iter().map(|s| RawParam {
        field: s.field,
        type_code: s.type_code,
        bits: s.raw,
        string: s.string.as_deref(),
    }));
    let strings: Vec<Option<Vec<u8>>> = specs.iter().map(|s| s.string.clone()).collect();

    // What decode must return.
    let mut expected_params: Vec<(String, TypedValue)> = Vec::new();
    let mut expected_undecoded: Vec<(String, i32)> = Vec::new();
    let mut expected_skipped = 0u64;
    let mut distinct: HashSet<&[u8]> = HashSet::new();
    for (s, string) in specs.iter().zip(&strings) {
        let end = memchr::memchr(0, &s.field).unwrap_or(80);
        distinct.insert(&s.field[..end]);
        let name = lossy(&s.field[..end]);
        if !wanted(&name) {
            expected_skipped += 1;
            continue;
        }
        let r = s.raw.to_le_bytes();
        let low32 = [r[0], r[1], r[2], r[3]];
        let value = match u32::try_from(s.type_code).unwrap_or(u32::MAX) {
            type_code::INT => TypedValue::Int(i32::from_le_bytes(low32)),
            type_code::UINT => TypedValue::UInt(u32::from_le_bytes(low32)),
            type_code::LLONG => TypedValue::LLong(s.raw as i64),
            type_code::ULLONG => TypedValue::ULLong(s.raw),
            type_code::DOUBLE => TypedValue::Double(f64::from_bits(s.raw)),
            type_code::BOOLEAN => TypedValue::Boolean(r[0] != 0),
            type_code::STRING => TypedValue::String(match string {
                None => "".into(),
                Some(b) => lossy(&b[..memchr::memchr(0, b).unwrap_or(b.len())]).into(),
            }),
            _ => {
                expected_undecoded.push((name, s.type_code));
                continue;
            }
        };
        expected_params.push((name, value));
    }
    let same = |a: &TypedValue, b: &TypedValue| match (a, b) {
        (TypedValue::Double(x), TypedValue::Double(y)) => x.to_bits() == y.to_bits(),
        _ => a == b,
    };

    let mut names = KeyInterner::with_filter(filter.clone());
    let first = params.decode(&mut names);
    assert_eq!(first.params.len(), expected_params.len());
    for (p, (name, value)) in first.params.iter().zip(&expected_params) {
        assert_eq!(&*p.name, name.as_str());
        assert!(same(&p.value, value), "{name}: decoded {:?}, built {value:?}", p.value);
    }
    let undecoded: Vec<(String, i32)> = first.undecoded.iter().map(|u| (u.name.clone(), u.type_code)).collect();
    assert_eq!(undecoded, expected_undecoded);
    assert_eq!(names.skipped(), expected_skipped);
    if let Some((name, value)) = expected_params.first() {
        assert!(same(first.get(name).expect("get finds a decoded name"), value));
    }
    // Again with the same interner: the same result, names shared (while
    // the table has not started over).
    let second = params.decode(&mut names);
    assert_eq!(second.params.len(), first.params.len());
    assert_eq!(second.undecoded, first.undecoded);
    assert_eq!(names.skipped(), 2 * expected_skipped);
    let shared = distinct.len() < 50_000;
    for (a, b) in first.params.iter().zip(&second.params) {
        assert!(same(&a.value, &b.value));
        assert!(!shared || Arc::ptr_eq(&a.name, &b.name), "{} not shared", a.name);
    }
    // Empty views of the same array; a count past its end reads only it.
    let mut fresh = KeyInterner::with_filter(filter);
    assert_eq!(params.decode_first(0, &mut fresh), Default::default());
    assert_eq!(params.decode_first(-1, &mut fresh), Default::default());
    assert_eq!(fresh.len(), 0);
    assert_eq!(params.decode_first(c_int::MAX, &mut fresh).params.len(), expected_params.len());
}

/// Callback names the agent registers, plus `resync` and names it does not know.
const EVENT_NAMES: &[&str] = &[
    "lifecycle",
    "reboot",
    "rtc_change",
    "watchdog",
    "io_error",
    "graphics",
    "io_error_reason",
    "control_error",
    "block_job",
    "disk_change",
    "tray_change",
    "pm_wakeup",
    "pm_suspend",
    "balloon_change",
    "pm_suspend_disk",
    "device_removed",
    "block_job_2",
    "tunable",
    "agent_lifecycle",
    "device_added",
    "migration_iteration",
    "job_completed",
    "device_removal_failed",
    "metadata_change",
    "block_threshold",
    "memory_failure",
    "memory_device_size_change",
    "nic_mac_change",
    "vcpu_removed",
    "channel_lifecycle",
    "refresh",
    "update",
    "value_changed",
    "qemu_monitor",
    "resync",
    "",
    "future_event",
    "LIFECYCLE",
    "lifecycle ",
    "événement",
];

/// Field names the normalization treats specially, plus a few others.
const EVENT_KEYS: &[&str] = &[
    "event",
    "detail",
    "action",
    "phase",
    "type",
    "status",
    "reason",
    "state",
    "recipient",
    "flags",
    "local.family",
    "remote.family",
    "local.node",
    "remote.service",
    "auth_scheme",
    "subject.0.type",
    "vcpu_id",
    "actual",
    "size",
    "utcoffset",
    "threshold",
    "excess",
    "iteration",
    "micros",
    "seconds",
    "details",
    "src_path",
    "dev_alias",
    "disk",
    "nsuri",
    "channel_name",
    "event_name",
    "action_name",
    "time_elapsed",
    "data_total",
    "memory_dirty_rate",
    "disk_bps",
    "cpu_shares",
    "",
];

const FAMILIES: [Family; 6] =
    [Family::Domain, Family::Network, Family::StoragePool, Family::NodeDevice, Family::Secret, Family::QemuMonitor];

/// The latest time humantime formats (9999-12-31T23:59:59Z).
const MAX_RFC3339_SECS: u64 = 253_402_300_799;

fn typed_value(inp: &mut Input) -> TypedValue {
    match inp.byte() % 7 {
        0 => TypedValue::Int(inp.i32()),
        1 => TypedValue::UInt(inp.i32() as u32),
        2 => TypedValue::LLong(inp.u64() as i64),
        3 => TypedValue::ULLong(inp.u64()),
        4 => TypedValue::Double(f64::from_bits(inp.u64())),
        5 => TypedValue::Boolean(inp.byte() & 1 == 1),
        _ => TypedValue::String(inp.text().into()),
    }
}

/// Target `events`: a `RawEvent` of any family and callback name (known or
/// not) with any fields of any type, normalized into a record and written
/// as JSON. The record keeps every field, in order, with the value it came
/// with; the JSON parses back to the same envelope and values.
pub fn events(data: &[u8]) {
    let mut inp = Input(data);
    let family = FAMILIES[usize::from(inp.byte()) % FAMILIES.len()];
    let name = EVENT_NAMES[usize::from(inp.byte()) % EVENT_NAMES.len()];
    let event_id = inp.i32();
    let object_name = inp.text();
    let object_uuid = inp.text();
    let time = UNIX_EPOCH
        + Duration::from_secs(inp.u64() % (MAX_RFC3339_SECS + 1))
        + Duration::from_nanos(inp.u64() % 1_000_000_000);
    let seq = inp.u64();
    let run_id = inp.text();
    let mut fields: Vec<(Arc<str>, TypedValue)> = Vec::new();
    while !inp.is_empty() && fields.len() < 256 {
        let k = inp.byte();
        let key: Arc<str> =
            if k < 0xC0 { EVENT_KEYS[usize::from(k) % EVENT_KEYS.len()].into() } else { inp.text().into() };
        fields.push((key, typed_value(&mut inp)));
    }
    let raw = RawEvent {
        family,
        event_id,
        name,
        object_name: object_name.clone(),
        object_uuid: object_uuid.clone(),
        fields,
        time,
        at: Instant::now(),
    };
    let (kind, detail) = classify(&raw);
    let identity = crate::record::Identity { host: "fuzz-host".into(), uri: "qemu:///system".into() };
    let stamp = Stamp { identity: &identity, run_id: &run_id, seq, job_kind: crate::registry::job_statistics() };
    let record = to_record(&raw, stamp);
    assert_eq!(record.kind, RecordKind::of(&EVENT));
    assert_eq!(record.time, time);
    let ev = record.event.as_ref().expect("an event record has its event");
    assert_eq!((ev.family, ev.name, ev.seq), (family.as_str(), name, seq));
    assert_eq!((&ev.kind, &ev.detail), (&kind, &detail));
    assert_eq!(ev.id, format!("{run_id}-{seq}"));
    let is_domain = matches!(family, Family::Domain | Family::QemuMonitor);
    assert_eq!(record.domain.is_some(), is_domain);
    assert_eq!(ev.object.is_some(), !is_domain);
    // Every field, in order, as it came; an enum code is followed by its name.
    let code = |key: &str| {
        raw.fields.iter().find(|(k, _)| &**k == key).and_then(|(_, v)| match v {
            TypedValue::Int(i) => Some(i64::from(*i)),
            TypedValue::UInt(u) => Some(i64::from(*u)),
            TypedValue::LLong(l) => Some(*l),
            _ => None,
        })
    };
    let mut out = record.fields.iter();
    for (key, value) in &raw.fields {
        let f = out.next().expect("a field went missing");
        assert_eq!(&f.key, key);
        let same = match (&f.value, value) {
            (TypedValue::Double(a), TypedValue::Double(b)) => a.to_bits() == b.to_bits(),
            (a, b) => a == b,
        };
        assert!(same, "{key}: {:?} became {:?}", value, f.value);
        if let (Some(namer), Some(code)) = (namer(family, name, key), code(key)) {
            assert_eq!(f.unit, Unit::Enum, "{key}");
            let n = out.next().expect("the name of an enum code went missing");
            assert_eq!(*n.key, *format!("{key}_name"));
            assert_eq!(n.unit, Unit::Text);
            assert_eq!(n.value, TypedValue::String(namer(code).into()));
        }
    }
    assert!(out.next().is_none(), "fields appeared from nowhere");

    let json = record.to_json();
    let v: serde_json::Value = serde_json::from_str(&json).expect("to_json writes JSON");
    assert_eq!(v["schema"], SCHEMA, "{json}");
    assert_eq!(v["kind"], "event");
    assert_eq!(v["event"]["id"], ev.id.as_str());
    assert_eq!(v["event"]["type"], kind.as_str());
    assert_eq!(v["event"]["detail"], detail.as_str());
    assert_eq!(v["event"]["seq"], seq);
    let parsed_time = humantime::parse_rfc3339(v["time"].as_str().expect("time is a string")).expect("RFC 3339 time");
    assert_eq!(parsed_time, time);
    if is_domain {
        assert_eq!(v["domain"]["name"], object_name.as_str());
        assert_eq!(v["domain"]["uuid"], object_uuid.as_str());
    } else {
        assert_eq!(v["event"]["object"]["name"], object_name.as_str());
    }
    // JSON objects keep the last of duplicated keys.
    let mut last: BTreeMap<&str, &crate::record::Field> = BTreeMap::new();
    for f in &record.fields {
        last.insert(&f.key, f);
    }
    let obj = v["fields"].as_object().expect("fields is an object");
    assert_eq!(obj.len(), last.len());
    for (key, f) in last {
        let j = &obj[key];
        assert_eq!(j["type"], f.value.type_name(), "{key}");
        let value = &j["value"];
        let ok = match &f.value {
            TypedValue::Int(x) => value.as_i64() == Some(i64::from(*x)),
            TypedValue::UInt(x) => value.as_u64() == Some(u64::from(*x)),
            TypedValue::LLong(x) => value.as_i64() == Some(*x),
            TypedValue::ULLong(x) => value.as_u64() == Some(*x),
            TypedValue::Double(x) if x.is_finite() => value.is_number(),
            TypedValue::Double(_) => value.is_null(),
            TypedValue::Boolean(x) => value.as_bool() == Some(*x),
            TypedValue::String(x) => value.as_str() == Some(&**x),
        };
        assert!(ok, "{key}: {:?} written as {value}", f.value);
    }
}

/// A fresh directory under the temporary directory, removed when dropped.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(what: &str) -> ScratchDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("virtpulse-fuzz-{what}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create a scratch directory");
        ScratchDir(p)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Segment content from the input: raw bytes, valid frames (in sequence
/// from `next` or with any seq), damaged frames.
fn segment_content(inp: &mut Input, mut next: u64) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..inp.byte() % 8 {
        match inp.byte() % 4 {
            0 => {
                let n = usize::from(inp.u16()) % 4096;
                out.extend_from_slice(inp.take(n));
            }
            1 => {
                let time = inp.u64();
                encode_frame(&mut out, next, time, inp.short());
                next = next.wrapping_add(1);
            }
            2 => {
                let (seq, time) = (inp.u64(), inp.u64());
                encode_frame(&mut out, seq, time, inp.short());
            }
            _ => {
                let start = out.len();
                let time = inp.u64();
                encode_frame(&mut out, next, time, inp.short());
                let at = start + usize::from(inp.u16()) % (out.len() - start);
                out[at] ^= inp.byte() | 1;
            }
        }
    }
    out
}

fn read_all(spool: &mut Spool) -> Vec<Entry> {
    let mut out = Vec::new();
    while let Some(e) = spool.read_next().expect("reading a recovered spool never fails") {
        out.push(e);
        assert!(out.len() <= 1 << 20, "read_next does not end");
    }
    for w in out.windows(2) {
        assert!(w[0].seq < w[1].seq, "records out of order: {} then {}", w[0].seq, w[1].seq);
    }
    out
}

/// Target `spool`: the Kafka spool on damaged files. Known records go in
/// through the spool's own append; then fuzz bytes are appended raw to
/// their segment, other segment files and the low-water file are written
/// with fuzz content, and the spool is reopened. It must open, count the
/// damage, and read back every intact record before the damage (unless the
/// low water says it was delivered); then acknowledge, append, reopen.
pub fn spool(data: &[u8]) {
    let mut inp = Input(data);
    let dir = ScratchDir::new("spool");
    let max_bytes = [64u64 << 10, 1 << 20, 1 << 30][usize::from(inp.byte()) % 3];
    let sync = match inp.byte() % 4 {
        0 => SyncPolicy::Always,
        1 => SyncPolicy::Interval(Duration::ZERO),
        2 => SyncPolicy::Interval(Duration::from_secs(3600)),
        _ => SyncPolicy::Never,
    };
    let cfg = || SpoolConfig { dir: dir.path().to_path_buf(), max_bytes, max_age: Duration::from_secs(3600), sync };

    // The intact records, through the spool itself.
    let (mut s, rec) = Spool::open(cfg()).expect("open an empty spool");
    assert_eq!((rec.pending, rec.corrupt, rec.segments), (0, 0, 0));
    let intact: Vec<Vec<u8>> = (0..1 + inp.byte() % 4).map(|_| inp.short().to_vec()).collect();
    let t = now_ms();
    assert_eq!(s.append(intact.iter().map(|p| (t, p.as_slice()))).expect("append"), 0);
    s.close().expect("close");
    drop(s);

    // The damage.
    let first = dir.path().join(segment_name(0));
    let tail = segment_content(&mut inp, intact.len() as u64);
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&first).expect("the first segment exists");
        f.write_all(&tail).expect("append to the segment");
    }
    for _ in 0..inp.byte() % 4 {
        let b = inp.byte();
        let first_seq = if b & 0x80 == 0 { u64::from(b) + 1 } else { inp.u64() };
        if first_seq == 0 {
            continue;
        }
        let content = segment_content(&mut inp, first_seq);
        std::fs::write(dir.path().join(segment_name(first_seq)), content).expect("write a segment");
    }
    let stored_low_water = match inp.byte() % 4 {
        1 => {
            std::fs::write(dir.path().join(LOW_WATER_FILE), inp.short()).expect("write the low water");
            None
        }
        2 => {
            let v = match inp.byte() {
                0xFF => inp.u64(),
                b => u64::from(b % 8),
            };
            let mut data = v.to_le_bytes().to_vec();
            data.extend_from_slice(&crc32fast::hash(&data).to_le_bytes());
            std::fs::write(dir.path().join(LOW_WATER_FILE), data).expect("write the low water");
            Some(v)
        }
        3 => {
            std::fs::write(dir.path().join("00000000000000000007.seg.tmp"), inp.short()).expect("write junk");
            None
        }
        _ => None,
    };

    // Recovery.
    let (mut s, rec) = Spool::open(cfg()).expect("the spool opens whatever its files hold");
    assert_eq!(rec.pending, s.pending());
    assert_eq!(s.dropped().corrupt, rec.corrupt);
    let read = read_all(&mut s);
    let delivered = stored_low_water.unwrap_or(0);
    for (seq, payload) in intact.iter().enumerate() {
        let seq = seq as u64;
        if seq < delivered {
            continue;
        }
        let e = read.iter().find(|e| e.seq == seq).unwrap_or_else(|| panic!("intact record {seq} lost: {rec:?}"));
        assert_eq!(&e.payload, payload, "intact record {seq} changed");
        assert_eq!(e.time_ms, t);
    }
    assert_eq!(read.len() as u64, s.pending(), "pending records that cannot be read: {rec:?}");

    // Acknowledgements, out of order and out of range.
    let mut acked: BTreeSet<u64> = BTreeSet::new();
    for _ in 0..inp.byte() % 16 {
        let b = inp.byte();
        if b & 0x80 == 0 && !read.is_empty() {
            let seq = read[usize::from(b) % read.len()].seq;
            s.ack(seq);
            acked.insert(seq);
        } else {
            let seq = inp.u64();
            s.ack(seq);
            if read.iter().any(|e| e.seq == seq) {
                acked.insert(seq);
            }
        }
    }
    assert_eq!(s.pending(), read.len() as u64 - acked.len() as u64);
    s.rewind();
    let again: Vec<u64> = read_all(&mut s).iter().map(|e| e.seq).collect();
    let want: Vec<u64> = read.iter().map(|e| e.seq).filter(|q| !acked.contains(q)).collect();
    assert_eq!(again, want, "rewind resends exactly what is unacknowledged");

    // New records after the damage.
    let dropped_before = s.dropped().total();
    let fresh: Vec<(u64, Vec<u8>)> = (0..inp.byte() % 8)
        .map(|_| {
            let time = if inp.byte() & 1 == 0 { now_ms() } else { inp.u64() };
            (time, inp.short().to_vec())
        })
        .collect();
    if !fresh.is_empty() {
        let first_new = s.append(fresh.iter().map(|(t, p)| (*t, p.as_slice()))).expect("append after recovery");
        if s.dropped().total() == dropped_before {
            let got = read_all(&mut s);
            let seqs: Vec<u64> = got.iter().map(|e| e.seq).collect();
            let want: Vec<u64> = (0..fresh.len() as u64).map(|i| first_new + i).collect();
            assert_eq!(seqs, want, "appended records are read next");
            for (e, (_, p)) in got.iter().zip(&fresh) {
                assert_eq!(&e.payload, p);
            }
        }
    }
    let _ = s.oldest_pending_ms();
    let _ = (s.unread(), s.bytes());
    s.tick().expect("tick");
    s.close().expect("close");
    let lost_nothing = s.dropped().total() == dropped_before;
    drop(s);

    // And once more from the disk.
    let (mut s, rec) = Spool::open(cfg()).expect("reopen");
    assert_eq!(rec.pending, s.pending());
    let reread = read_all(&mut s);
    if lost_nothing {
        for (t, p) in &fresh {
            assert!(
                reread.iter().any(|e| e.payload == *p && e.time_ms == *t),
                "a record appended after recovery did not survive a reopen"
            );
        }
    }
    assert_eq!(reread.len() as u64, s.pending());
}

/// Credentials of the fixed web config (bcrypt cost 4: fast enough to fuzz).
const FIXED_USERS: [(&str, &str); 2] = [("alice", "s3cret"), ("bob", "pa:ss wörd")];

fn fixed_security() -> &'static Security {
    static SEC: OnceLock<Security> = OnceLock::new();
    SEC.get_or_init(|| {
        let mut yaml = String::from("basic_auth_users:\n");
        for (user, pass) in FIXED_USERS {
            let hash = bcrypt::hash(pass, 4).expect("bcrypt");
            yaml.push_str(&format!("  {user}: \"{hash}\"\n"));
        }
        yaml.push_str("http_server_config:\n  headers:\n    X-Frame-Options: deny\n");
        Security::from_yaml(&yaml, "fixed-web.yml").expect("the fixed web config loads")
    })
}

/// The users of a web config text (none if it does not parse).
fn cfg_users(yaml: &str) -> BTreeMap<String, String> {
    serde_yaml::from_str::<crate::web::WebConfig>(yaml).map(|c| c.basic_auth_users).unwrap_or_default()
}

/// What a correct Basic check of `headers` says for the fixed users.
fn fixed_expected(headers: &axum::http::HeaderMap) -> bool {
    use base64::Engine;
    let Some(raw) = headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let Some(b64) = raw.strip_prefix("Basic ") else { return false };
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(b64.trim()) else { return false };
    let Ok(text) = String::from_utf8(decoded) else { return false };
    let Some((user, pass)) = text.split_once(':') else { return false };
    FIXED_USERS.iter().any(|(u, p)| *u == user && *p == pass)
}

/// Target `web_config`: a web config file's text, a NUL, then
/// `Authorization` header values, one a line (a line starting with `+`
/// adds a second header to the previous request). The text goes through
/// `Security::from_yaml` (errors must name the file); the headers through
/// `known` / `authorized` of the loaded config (when its bcrypt costs are
/// cheap) and of a fixed one with two users, where the answer must be right.
pub fn web_config(data: &[u8]) {
    use axum::http::{header, HeaderMap, HeaderValue};
    let (yaml, rest) = split_nul(data);
    let mut requests: Vec<HeaderMap> = Vec::new();
    for line in rest.split(|b| *b == b'\n').take(8) {
        let (append, value) = match line.strip_prefix(b"+") {
            Some(v) if !requests.is_empty() => (true, v),
            _ => (false, line),
        };
        let Ok(value) = HeaderValue::from_bytes(value) else { continue };
        if append {
            if let Some(h) = requests.last_mut() {
                h.append(header::AUTHORIZATION, value);
            }
        } else {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, value);
            requests.push(h);
        }
    }
    requests.push(HeaderMap::new());

    match Security::from_yaml(&lossy(yaml), "fuzz-web.yml") {
        Err(e) => assert!(e.starts_with("fuzz-web.yml: "), "an error that does not name the file: {e}"),
        Ok(sec) => {
            let mut resp = axum::response::Response::new(axum::body::Body::empty());
            sec.add_headers(&mut resp);
            // Costs above 6 would make every check take seconds.
            let users = cfg_users(&lossy(yaml));
            let cheap = users.values().all(|h| h.parse::<bcrypt::HashParts>().is_ok_and(|p| p.get_cost() <= 6));
            if cheap {
                // A hash the file check let through can be verified: a typo
                // in it must not lock the user out without a word.
                for (user, hash) in &users {
                    assert!(
                        bcrypt::verify("", hash).is_ok(),
                        "basic_auth_users.{user}: accepted but unusable: {hash:?}"
                    );
                }
                for h in &requests {
                    let known = sec.known(h);
                    let ok = sec.authorized(h);
                    if known == Some(true) {
                        assert!(ok, "a known credential was refused");
                    }
                    if !sec.requires_auth() {
                        assert!(ok, "no users: everyone is let in");
                    }
                    if ok {
                        assert_eq!(sec.known(h), Some(true), "an accepted credential is remembered");
                    }
                }
            }
        }
    }

    let fixed = fixed_security();
    for h in &requests {
        let want = fixed_expected(h);
        assert_eq!(fixed.authorized(h), want, "fixed config: {:?}", h.get(header::AUTHORIZATION));
        if let Some(known) = fixed.known(h) {
            assert_eq!(known, want, "fixed config (cached): {:?}", h.get(header::AUTHORIZATION));
        }
    }
}

fn percent_encode_all(s: &str) -> String {
    s.bytes().map(|b| format!("%{b:02X}")).collect()
}

/// Target `otel`: NUL-separated strings. The first goes through
/// `parse_key_values`, `percent_decode` and `endpoint_problem`; the next
/// ones are the OTEL_* variables in the order of `OTEL_VARS`; then a
/// control byte and strings for an `[sinks.otlp]` section that overrides
/// some of them. `settings` must only hand out values the configuration
/// would accept; `ResourceBuilder` must apply the documented precedence.
pub fn otel(data: &[u8]) {
    let parts: Vec<String> = data.split(|b| *b == 0).map(lossy).collect();
    let part = |i: usize| parts.get(i).cloned().unwrap_or_default();
    let s = part(0);

    // percent_decode: every byte written as %XX comes back; text without
    // a `%` stays as it is.
    assert_eq!(percent_decode(&percent_encode_all(&s)), s);
    if !s.contains('%') {
        assert_eq!(percent_decode(&s), s);
    }
    if let Ok(pairs) = parse_key_values(&s) {
        assert!(pairs.len() <= s.matches(',').count() + 1);
        for (k, _) in &pairs {
            assert_eq!(k.trim(), k);
        }
    }
    // Pairs written with encoded values parse back to themselves.
    let pairs: Vec<(String, String)> = parts
        .chunks(2)
        .map(|c| {
            let key: String = c[0].chars().filter(|c| !matches!(c, ',' | '=')).collect();
            (key.trim().to_string(), c.get(1).cloned().unwrap_or_default())
        })
        .filter(|(k, _)| !k.is_empty())
        .collect();
    let written: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={}", percent_encode_all(v))).collect();
    assert_eq!(parse_key_values(&written.join(",")).as_ref(), Ok(&pairs));
    if endpoint_problem(&s).is_none() {
        assert!(s.parse::<hyper::Uri>().is_ok());
    }
    // And the other way round: a plain http(s) URL with a host (and a port,
    // if any) is not refused.
    if let Ok(uri) = s.parse::<hyper::Uri>() {
        let plain = matches!(uri.scheme_str(), Some("http" | "https"))
            && !s.contains(['?', '#'])
            && s.starts_with(&format!("{}://", uri.scheme_str().unwrap_or("")))
            && uri.authority().is_some_and(|a| {
                !a.host().is_empty()
                    && !a.as_str().contains('@')
                    && !a.as_str().ends_with(':')
                    // hyper takes a port that is not a number; the
                    // transport would not.
                    && a.as_str().rsplit_once(':').is_none_or(|(_, port)| port.parse::<u16>().is_ok())
            });
        if plain {
            assert_eq!(endpoint_problem(&s), None, "a valid endpoint refused: {s:?}");
        }
    }

    let env: BTreeMap<String, String> =
        OTEL_VARS.iter().enumerate().map(|(i, k)| (k.to_string(), part(i + 1))).collect();
    let base = OtlpConfig::default();
    if let Ok(settings) = base.settings(&env) {
        check_settings(&settings);
    }
    let control = parts.get(OTEL_VARS.len() + 1).and_then(|p| p.bytes().next()).unwrap_or(0);
    let extra_at = OTEL_VARS.len() + 2;
    let mut cfg = OtlpConfig::default();
    if control & 1 != 0 {
        cfg.endpoint = Some(part(extra_at));
    }
    cfg.protocol = [None, Some(OtlpProtocol::Grpc), Some(OtlpProtocol::Http)][usize::from(control >> 1) % 3];
    cfg.compression = [None, Some(OtlpCompression::None), Some(OtlpCompression::Gzip)][usize::from(control >> 3) % 3];
    if control & 0x20 != 0 {
        cfg.timeout = Some(Duration::from_millis(100 + u64::from(control)));
        cfg.export_interval = Some(Duration::from_secs(1));
    }
    if let Ok(h) = parse_key_values(&part(extra_at + 1)) {
        cfg.headers = h.into_iter().collect();
    }
    if let Ok(settings) = cfg.settings(&env) {
        check_settings(&settings);
        if let Some(e) = &cfg.endpoint {
            let expected_base = e.as_str();
            assert!(settings.metrics_endpoint.starts_with(expected_base.trim_end_matches('/')));
        }
        for (k, v) in &cfg.headers {
            assert!(settings.headers.contains(&(k.clone(), v.clone())), "config header {k} lost");
        }
    }
    // The resource: config beats OTEL_SERVICE_NAME beats OTEL_RESOURCE_ATTRIBUTES.
    let extra: BTreeMap<String, String> =
        parse_key_values(&part(extra_at + 2)).unwrap_or_default().into_iter().collect();
    match ResourceBuilder::new("fuzz-host", "qemu:///system", &env, &extra) {
        Ok(b) => {
            let attrs = resource_attributes(&b);
            for (k, v) in &extra {
                assert_eq!(attrs.get(k), Some(v));
            }
            let service = env["OTEL_SERVICE_NAME"].trim();
            if !service.is_empty() && !extra.contains_key("service.name") {
                assert_eq!(attrs["service.name"], service);
            }
            assert!(attrs.contains_key("service.name"));
        }
        Err(e) => {
            assert!(e.starts_with("OTEL_RESOURCE_ATTRIBUTES: "), "{e}");
            assert!(parse_key_values(&env["OTEL_RESOURCE_ATTRIBUTES"]).is_err());
        }
    }
}

/// Target `guest`: what a guest agent may say (any parameter names, from a
/// vocabulary of real keys with any indices, any values, long and odd
/// strings; any interfaces and addresses) through the guest collector's
/// bounds, into a record, through the Prometheus exporter. Checks that
/// nothing passes the bounds (filesystems, addresses, string bytes) and that
/// every exposition line is one well-formed sample.
pub fn guest(data: &[u8]) {
    use crate::collectors::guest::metrics::GUEST;
    use crate::collectors::guest::{keep_addresses, keep_info, Bounds, Cuts};
    use crate::libvirt::guest::{AddressSource, Interface, IpAddress};
    use crate::record::{DomainRef, Field, Identity, Record, RecordKind};

    const KEYS: &[&str] = &[
        "fs.{}.mountpoint",
        "fs.{}.name",
        "fs.{}.fstype",
        "fs.{}.total-bytes",
        "fs.{}.used-bytes",
        "fs.{}.disk.0.serial",
        "fs.count",
        "user.count",
        "user.{}.name",
        "os.id",
        "os.name",
        "os.version",
        "os.kernel-release",
        "hostname",
        "load.1m",
        "load.5m",
        "load.15m",
        "timezone.name",
        "timezone.offset",
        "if.{}.name",
    ];
    let mut inp = Input(data);
    let bounds = Bounds {
        max_filesystems: usize::from(inp.byte() % 8),
        max_addresses: usize::from(inp.byte() % 8),
        max_string_bytes: usize::from(inp.byte() % 64) + 1,
    };
    let value = |inp: &mut Input| match inp.byte() % 4 {
        0 => TypedValue::ULLong(inp.u64()),
        1 => TypedValue::Double(f64::from_bits(inp.u64())),
        2 => TypedValue::String(lossy(inp.short()).repeat(usize::from(inp.byte() % 8) + 1).into()),
        _ => TypedValue::Int(inp.byte().into()),
    };
    let mut params = Vec::new();
    let mut ifaces = Vec::new();
    while !inp.is_empty() && params.len() < 2000 {
        if inp.byte() % 8 == 0 {
            let addrs = (0..inp.byte() % 6)
                .map(|_| IpAddress { family: "ipv4", address: lossy(inp.short()), prefix: inp.byte().into() })
                .collect();
            ifaces.push(Interface { name: lossy(inp.short()), hwaddr: lossy(inp.short()), addrs });
            continue;
        }
        let key = KEYS[usize::from(inp.byte()) % KEYS.len()].replace("{}", &inp.u16().to_string());
        params.push((Arc::<str>::from(key), value(&mut inp)));
    }
    let mut fields = Vec::new();
    let mut cuts: Cuts = [0; 3];
    keep_info(params, &bounds, &mut fields, &mut cuts);
    let mut k = 0;
    keep_addresses(AddressSource::Agent, ifaces, &mut k, &bounds, &mut fields, &mut cuts);
    fields.push(("addr.count".into(), TypedValue::UInt(k as u32)));
    assert!(k <= bounds.max_addresses);
    for (key, v) in &fields {
        assert!(!key.starts_with("user.") || key == "user.count", "{key} kept");
        if let Some(n) = key.strip_prefix("fs.").and_then(|r| r.split('.').next()).and_then(|n| n.parse::<usize>().ok())
        {
            assert!(n < bounds.max_filesystems, "{key} past the bound");
        }
        if let TypedValue::String(s) = v {
            assert!(s.len() <= bounds.max_string_bytes, "{key}: {} bytes", s.len());
        }
    }
    let identity = Identity { host: "h".into(), uri: "qemu:///system".into() };
    let record = Record {
        domain: Some(DomainRef { name: "vm".into(), uuid: "u".into(), info: None }),
        fields: fields
            .into_iter()
            .map(|(k, v)| Field { unit: crate::record::mapping::unit_of(&GUEST, &k, &v), key: Arc::from(k), value: v })
            .collect(),
        ..Record::new(&identity, RecordKind::of(&GUEST), std::time::SystemTime::now())
    };
    let exporter = crate::sinks::prometheus::Exporter::new(
        crate::selfmon::Registry::new(),
        Arc::new(crate::selection::Selection::everything(&crate::registry::catalog())),
        u64::MAX,
    )
    .prerender_up_to(if data.len() % 2 == 0 { 1 << 20 } else { 0 });
    exporter.apply(Arc::new(crate::record::Batch {
        source: "guest",
        snapshot: true,
        records: vec![record],
        ..Default::default()
    }));
    let text = exporter.encode();
    // The gzip body (pieces compressed on the first gzip scrape when the
    // snapshot is held rendered) decodes to the same series.
    let mut gz = Vec::new();
    exporter
        .write_to(crate::sinks::prometheus::Encoding::Gzip, 4096, &mut |b| {
            gz.extend_from_slice(&b);
            true
        })
        .expect("gzip body");
    let mut decoded = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&gz[..]), &mut decoded).expect("gzip decodes");
    let libvirt = |t: &str| t.lines().filter(|l| l.starts_with("libvirt_")).map(str::to_owned).collect::<Vec<_>>();
    assert_eq!(libvirt(&decoded), libvirt(&text), "gzip and plain bodies differ");
    let guest_series = text.lines().filter(|l| l.starts_with("libvirt_domain_guest_filesystem_size_bytes{")).count();
    assert!(guest_series <= bounds.max_filesystems);
    let addr_series = text.lines().filter(|l| l.starts_with("libvirt_domain_guest_interface_address_info{")).count();
    assert!(addr_series <= bounds.max_addresses);
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        // name{labels} value: the label part ends at the last '}'.
        let (head, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line:?}"));
        assert!(value == "NaN" || value.ends_with("Inf") || value.parse::<f64>().is_ok(), "value in {line:?}");
        assert!(!head.is_empty());
    }
}

/// The domain XML reader (`parse_domain`): raw text, or a `<domain>` built
/// from the elements it reads with fuzzed values, under a fuzzed pinning
/// bound. It never panics; what it keeps is bounded (pinnings, text), set
/// limits are positive, and every field it makes is one the catalog maps
/// and the Prometheus sink renders.
pub fn domain_xml(data: &[u8]) {
    use crate::collectors::domain_stats::info::{parse_domain, MAX_TEXT};
    use crate::collectors::domain_stats::metrics::DOMAIN_STATS;
    use crate::record::{DomainRef, Field, Identity, Record, RecordKind};

    let mut inp = Input(data);
    let max_pinnings = usize::from(inp.byte() % 8);
    let xml = if inp.byte() % 2 == 0 {
        lossy(inp.0)
    } else {
        // Elements the reader looks at, each with a fuzzed value.
        const PIECES: &[&str] = &[
            "<vcpupin vcpu='{}' cpuset='{}'/>",
            "<iothreadpin iothread='{}' cpuset='{}'/>",
            "<emulatorpin cpuset='{}'/>",
            "<shares>{}</shares>",
            "<period>{}</period>",
            "<quota>{}</quota>",
            "<global_quota>{}</global_quota>",
        ];
        const DISK: &[&str] = &["total_bytes_sec", "read_iops_sec", "write_bytes_sec_max", "total_iops_sec"];
        let esc = |s: String| s.replace('&', "&amp;").replace('<', "&lt;").replace('\'', "&apos;");
        let mut cputune = String::new();
        let mut disks = String::new();
        let mut n = 0;
        while !inp.is_empty() && n < 500 {
            n += 1;
            match inp.byte() % 4 {
                0 | 1 => {
                    let piece = PIECES[usize::from(inp.byte()) % PIECES.len()];
                    let mut out = String::new();
                    for (i, part) in piece.split("{}").enumerate() {
                        if i > 0 {
                            out.push_str(&esc(inp.text()));
                        }
                        out.push_str(part);
                    }
                    cputune.push_str(&out);
                }
                2 => {
                    let limit = DISK[usize::from(inp.byte()) % DISK.len()];
                    let job = if inp.byte() % 2 == 0 {
                        format!("<mirror job='{}'/>", esc(inp.text()))
                    } else {
                        String::new()
                    };
                    disks.push_str(&format!(
                        "<disk><target dev='{}'/><iotune><{limit}>{}</{limit}></iotune>{job}</disk>",
                        esc(inp.text()),
                        esc(inp.text())
                    ));
                }
                _ => cputune.push_str(&format!(
                    "</cputune><numatune><memory mode='{}' nodeset='{}'/></numatune><cputune>",
                    esc(inp.text()),
                    esc(inp.text())
                )),
            }
        }
        format!(
            "<domain type='kvm'><name>d</name><vcpu>{}</vcpu><memory unit='{}'>{}</memory><cputune>{cputune}</cputune><devices>{disks}</devices></domain>",
            esc(inp.text()),
            esc(inp.text()),
            inp.u64()
        )
    };
    let Ok(parsed) = parse_domain(&xml, max_pinnings) else { return };
    let t = &parsed.tuning;
    assert!(t.vcpupin.len() <= max_pinnings && t.iothreadpin.len() <= max_pinnings);
    let info = &parsed.info;
    for s in [&info.virt_type, &info.os_type, &info.arch, &info.machine].into_iter().flatten() {
        assert!(s.len() <= MAX_TEXT);
    }
    for (_, set) in t.vcpupin.iter().chain(&t.iothreadpin) {
        assert!(set.len() <= MAX_TEXT);
    }
    for (_, limits) in &t.iotune {
        assert!(!limits.is_empty() && limits.iter().all(|(_, v)| *v > 0));
    }
    let mut fields = Vec::new();
    t.fields(&mut fields);
    let identity = Identity { host: "h".into(), uri: "qemu:///system".into() };
    let record = Record {
        domain: Some(DomainRef { name: "vm".into(), uuid: "u".into(), info: None }),
        fields: fields
            .into_iter()
            .map(|(k, v)| Field {
                unit: crate::record::mapping::unit_of(&DOMAIN_STATS, &k, &v),
                key: Arc::from(k),
                value: v,
            })
            .collect(),
        ..Record::new(&identity, RecordKind::of(&DOMAIN_STATS), std::time::SystemTime::now())
    };
    let mut stats = crate::record::samples::SampleStats::default();
    crate::record::samples::for_each_sample(&record, &crate::record::samples::AllSamples, &mut stats, |_| {});
    assert!(stats.unmapped.is_empty(), "fields the catalog does not map: {:?}", stats.unmapped);
    let exporter = crate::sinks::prometheus::Exporter::new(
        crate::selfmon::Registry::new(),
        Arc::new(crate::selection::Selection::everything(&crate::registry::catalog())),
        u64::MAX,
    );
    exporter.apply(Arc::new(crate::record::Batch {
        source: "domain_stats",
        snapshot: true,
        records: vec![record],
        ..Default::default()
    }));
    let text = exporter.encode();
    let pins = text.lines().filter(|l| l.starts_with("libvirt_domain_vcpu_pinning_info{")).count();
    assert_eq!(pins, t.vcpupin.len(), "one pinning series per kept vCPU pinning");
}

/// A virtual network's XML (any text; the corpus holds real
/// `virsh net-dumpxml` output) through the networks collector's reader and
/// bounds, into a record, through the Prometheus exporter. Checks that
/// address counts stay within the cap, strings within `max_string_bytes`
/// (taken from the input's length), and that every exposition line is one
/// well-formed sample.
pub fn network_xml(data: &[u8]) {
    use crate::collectors::networks::metrics::NETWORK;
    use crate::collectors::networks::xml::{parse_network, range_size, ADDRESS_CAP};
    use crate::collectors::networks::{xml_fields, NetworkRead};
    use crate::record::{Field, Identity, ObjectRef, Record, RecordKind};

    let text = lossy(data);
    // Two halves of the text as a range: never a panic, never an empty range.
    let mut mid = text.len() / 2;
    while !text.is_char_boundary(mid) {
        mid -= 1;
    }
    let (a, b) = text.split_at(mid);
    if let Some(n) = range_size(a, b) {
        assert!(n >= 1);
    }
    let Ok(facts) = parse_network(&text) else { return };
    assert!(!facts.forward_mode.is_empty() || text.contains("mode"), "{facts:?}");
    let (capped, cut) = facts.capped_addresses();
    assert!(capped <= ADDRESS_CAP);
    assert_eq!(cut, facts.addresses > u128::from(ADDRESS_CAP));
    let max_string_bytes = data.len() % 64 + 1;
    let active = data.len() % 2 == 0;
    let mut read = NetworkRead::default();
    xml_fields(&facts, active, Some(data.len() as u64), data.len() % 3 != 0, max_string_bytes, &mut read);
    for (key, v) in &read.fields {
        if let TypedValue::String(s) = v {
            assert!(s.len() <= max_string_bytes, "{key}: {} bytes", s.len());
        }
        if let TypedValue::ULLong(n) = v {
            assert!(*n <= ADDRESS_CAP.max(data.len() as u64), "{key}: {n}");
        }
    }
    read.fields.push(("active", TypedValue::Boolean(active)));
    let identity = Identity { host: "h".into(), uri: "qemu:///system".into() };
    let record = Record {
        object: Some(ObjectRef { name: "net".into(), uuid: "u".into() }),
        fields: read
            .fields
            .into_iter()
            .map(|(k, v)| Field { unit: crate::record::mapping::unit_of(&NETWORK, k, &v), key: Arc::from(k), value: v })
            .collect(),
        ..Record::new(&identity, RecordKind::of(&NETWORK), std::time::SystemTime::now())
    };
    let exporter = crate::sinks::prometheus::Exporter::new(
        crate::selfmon::Registry::new(),
        Arc::new(crate::selection::Selection::everything(&crate::registry::catalog())),
        u64::MAX,
    );
    exporter.apply(Arc::new(crate::record::Batch {
        source: "networks",
        snapshot: true,
        records: vec![record],
        ..Default::default()
    }));
    let text = exporter.encode();
    assert_eq!(text.lines().filter(|l| l.starts_with("libvirt_network_up{")).count(), 1, "{text}");
    assert_eq!(text.lines().filter(|l| l.starts_with("libvirt_network_info{")).count(), 1, "{text}");
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (head, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line:?}"));
        assert!(value.parse::<f64>().is_ok(), "value in {line:?}");
        assert!(!head.is_empty());
    }
}

/// Node device and domain XML (`nodedev_xml`): documents separated by NUL
/// bytes, each read as a node device (`<device>`) or a domain's host
/// devices (`<domain>`) by the node devices collector's readers, under
/// bounds taken from the input's length (so the corpus stays plain XML);
/// then the collector's inventory over all of them, into records, through
/// the Prometheus exporter. Checks that nothing passes the bounds (strings,
/// mdev types, VF addresses, hostdevs, assignments), that VFs in use never
/// exceed VFs, and that every exposition line is one well-formed sample.
pub fn nodedev_xml(data: &[u8]) {
    use crate::collectors::node_devices::inventory::{build, DomainHostdevs, MAX_ASSIGNMENTS};
    use crate::collectors::node_devices::metrics::NODE_DEVICE;
    use crate::collectors::node_devices::xml::{parse_domain_hostdevs, parse_node_device, Bounds, Cuts};
    use crate::record::{Field, Identity, ObjectRef, Record, RecordKind};

    let n = data.len();
    let bounds = Bounds { max_string_bytes: 1 + n % 97, max_mdev_types: n % 5, max_vfs: n % 7, max_hostdevs: n % 6 };
    let mut devices = Vec::new();
    let mut domains = Vec::new();
    for doc in data.split(|b| *b == 0).take(64) {
        let text = String::from_utf8_lossy(doc);
        let mut cuts = Cuts::default();
        if text.contains("<domain") {
            if let Ok(h) = parse_domain_hostdevs(&text, &bounds, &mut cuts) {
                assert!(h.len() <= bounds.max_hostdevs, "{} hostdevs kept", h.len());
                domains.push(h);
            }
            continue;
        }
        let Ok(f) = parse_node_device(&text, &bounds, &mut cuts) else { continue };
        let strings = [&Some(f.name.clone()), &f.parent, &f.driver, &f.vendor_id, &f.product_id];
        for s in strings.into_iter().flatten().chain(&f.capabilities) {
            assert!(s.len() <= bounds.max_string_bytes, "{s:?} past the bound");
        }
        assert!(f.mdev_types.len() <= bounds.max_mdev_types);
        for t in &f.mdev_types {
            for s in [&Some(t.id.clone()), &t.name, &t.device_api].into_iter().flatten() {
                assert!(s.len() <= bounds.max_string_bytes, "{s:?} past the bound");
            }
        }
        if let Some(sr) = &f.sriov {
            assert!(sr.vfs.len() <= bounds.max_vfs && sr.vfs.len() as u64 <= sr.count);
        }
        devices.push(f);
    }
    let uuids: Vec<String> = (0..domains.len()).map(|i| format!("00000000-0000-0000-0000-{i:012}")).collect();
    let holders: Vec<DomainHostdevs> =
        domains.iter().zip(&uuids).map(|(h, u)| DomainHostdevs { name: "vm", uuid: u, hostdevs: h }).collect();
    let mut cuts = Cuts::default();
    let built = build(&devices, Some(&holders), &mut cuts);
    assert_eq!(built.len(), devices.len());
    let identity = Identity { host: "h".into(), uri: "qemu:///system".into() };
    let mut records = Vec::new();
    for r in built {
        let get = |k: &str| r.fields.iter().find(|(key, _)| key == k).and_then(|(_, v)| v.as_u64());
        assert!(get("assigned.count").unwrap_or(0) <= MAX_ASSIGNMENTS as u64);
        if let Some(used) = get("sriov.vfs.assigned") {
            assert!(used <= get("sriov.vfs").unwrap_or(0), "more VFs in use than there are");
        }
        records.push(Record {
            object: Some(ObjectRef { name: r.name.into(), uuid: r.uuid.into() }),
            fields: r
                .fields
                .into_iter()
                .map(|(k, v)| Field {
                    unit: crate::record::mapping::unit_of(&NODE_DEVICE, &k, &v),
                    key: Arc::from(k),
                    value: v,
                })
                .collect(),
            ..Record::new(&identity, RecordKind::of(&NODE_DEVICE), std::time::SystemTime::now())
        });
    }
    let exporter = crate::sinks::prometheus::Exporter::new(
        crate::selfmon::Registry::new(),
        Arc::new(crate::selection::Selection::everything(&crate::registry::catalog())),
        u64::MAX,
    );
    exporter.apply(Arc::new(crate::record::Batch {
        source: "node_devices",
        snapshot: true,
        records,
        ..Default::default()
    }));
    let text = exporter.encode();
    let types: usize = devices.iter().map(|d| d.mdev_types.len()).sum();
    let capacity = text.lines().filter(|l| l.starts_with("libvirt_node_device_mdev_available_instances{")).count();
    assert!(capacity <= types, "{capacity} mdev capacity series for {types} types");
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (head, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line:?}"));
        assert!(value == "NaN" || value.ends_with("Inf") || value.parse::<f64>().is_ok(), "value in {line:?}");
        assert!(!head.is_empty());
    }
}

/// Target `snapshot_xml`: any text as libvirt's snapshot and checkpoint XML
/// (the committed corpus is real `virsh snapshot-dumpxml` and
/// `checkpoint-dumpxml` output), through the snapshots collector's readers,
/// its bounds and a `domain_snapshots` record, through the Prometheus
/// exporter with every switch on. Checks that no string passes the bound,
/// that no more snapshots are described than allowed, and that every
/// exposition line is one well-formed sample.
pub fn snapshot_xml(data: &[u8]) {
    use crate::collectors::snapshots::metrics::DOMAIN_SNAPSHOTS;
    use crate::collectors::snapshots::xml::{parse_checkpoint, parse_snapshot, snapshot_kind};
    use crate::collectors::snapshots::{bounded_checkpoint, bounded_snapshot, inventory_fields, Bounds, Item};
    use crate::record::{DomainRef, Field, Identity, Record, RecordKind};

    let text = lossy(data);
    // The bounds come from the input's length: the corpus stays plain XML.
    let bounds = Bounds { max_per_domain: data.len() % 4, max_string_bytes: 8 + data.len() % 57 };
    let max = bounds.max_string_bytes;
    let mut snapshots = Vec::new();
    let mut checkpoints = Vec::new();
    if let Ok(s) = parse_snapshot(&text) {
        let (b, cut) = bounded_snapshot(s.clone(), max);
        assert!(cut <= 5);
        for v in [Some(&b.name), Some(&b.state), b.description.as_ref(), b.parent.as_ref(), b.memory.as_ref()] {
            assert!(v.is_none_or(|v| v.len() <= max), "{v:?} past {max} bytes");
        }
        assert!(["internal", "external", "disk-only"].contains(&snapshot_kind(&b)));
        assert_eq!(snapshot_kind(&b), snapshot_kind(&s), "bounding changed the kind");
        // The same snapshot listed under a few names, as a domain with many.
        for i in 0..3 {
            snapshots.push(Item { name: format!("{}{i}", s.name), info: Some(Arc::new(b.clone())), read_now: true });
        }
        snapshots.push(Item { name: "unreadable".into(), info: None, read_now: false });
    }
    if let Ok(c) = parse_checkpoint(&text) {
        let (b, cut) = bounded_checkpoint(c.clone(), max);
        assert!(cut <= 3);
        for v in [Some(&b.name), b.description.as_ref(), b.parent.as_ref()] {
            assert!(v.is_none_or(|v| v.len() <= max), "{v:?} past {max} bytes");
        }
        checkpoints.push(Item { name: c.name.clone(), info: Some(Arc::new(b)), read_now: true });
    }
    let current = snapshots.first().map(|i| i.name.clone());
    let mut cuts = [0u64; 4];
    let fields = inventory_fields(&snapshots, current.as_deref(), Some(&checkpoints), &bounds, &mut cuts);
    for (key, v) in &fields {
        match v {
            // The kind is the agent's own word (internal, external, disk-only).
            TypedValue::String(s) if key.ends_with(".kind") => {
                assert!(["internal", "external", "disk-only"].contains(&&**s))
            }
            TypedValue::String(s) => assert!(s.len() <= max, "{key}: {} bytes", s.len()),
            _ => {}
        }
    }
    let identity = Identity { host: "h".into(), uri: "qemu:///system".into() };
    let record = Record {
        domain: Some(DomainRef { name: "vm".into(), uuid: "u".into(), info: None }),
        fields: fields
            .into_iter()
            .map(|(k, v)| Field {
                unit: crate::record::mapping::unit_of(&DOMAIN_SNAPSHOTS, &k, &v),
                key: Arc::from(k),
                value: v,
            })
            .collect(),
        ..Record::new(&identity, RecordKind::of(&DOMAIN_SNAPSHOTS), std::time::SystemTime::now())
    };
    let exporter = crate::sinks::prometheus::Exporter::new(
        crate::selfmon::Registry::new(),
        Arc::new(crate::selection::Selection::everything(&crate::registry::catalog())),
        u64::MAX,
    );
    exporter.apply(Arc::new(crate::record::Batch {
        source: "snapshots",
        snapshot: true,
        records: vec![record],
        ..Default::default()
    }));
    let out = exporter.encode();
    let info = out.lines().filter(|l| l.starts_with("libvirt_domain_snapshot_info{")).count();
    assert!(info <= bounds.max_per_domain, "{info} snapshots described, at most {}", bounds.max_per_domain);
    let count = out.lines().find(|l| l.starts_with("libvirt_domain_snapshots{"));
    assert_eq!(count.and_then(|l| l.rsplit(' ').next()), Some(snapshots.len().to_string().as_str()));
    for line in out.lines().filter(|l| !l.starts_with('#')) {
        let (head, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line:?}"));
        assert!(value == "NaN" || value.ends_with("Inf") || value.parse::<f64>().is_ok(), "value in {line:?}");
        assert!(!head.is_empty());
    }
}

#[cfg(test)]
mod corpus;
