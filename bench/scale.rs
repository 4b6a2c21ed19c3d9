//! Dense hosts in process: N synthetic domains shaped like big tenants
//! (16 vCPUs with the per-vCPU hypervisor statistics QEMU reports, 4 disks,
//! 2 NICs, as libvirt 11 sends them) through the whole pipeline, the way
//! the agent runs it: typed parameters decoded (with the key filter of the
//! profile), records built, the Prometheus snapshot indexed and scraped,
//! OTLP metrics built and encoded, Kafka messages encoded (when a record
//! consumer is on). Prints CPU time per domain per stage and heap memory
//! per domain, from 100 to 1,000 domains, for the default profile and for
//! everything.
//!
//!   cargo bench --bench scale [-- DOMAINS...]     (default 100 200 500 1000)
//!   VCPUS=16 DISKS=4 NICS=2 ROUNDS=5 PROFILES=default|everything

use std::alloc::{GlobalAlloc, Layout, System};
use std::ffi::{c_char, c_int, CString};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use virt_sys as sys;
use virtpulse::collectors::domain_stats::metrics::DOMAIN_STATS;
use virtpulse::libvirt::typed_params::{decode, KeyFilter, KeyInterner};
use virtpulse::record::mapping::unit_of;
use virtpulse::record::{Batch, DomainInfo, DomainRef, Field, Identity, Record, RecordKind};
use virtpulse::selection::{Profile, Selection, SelectionSpec};
use virtpulse::selfmon::Registry;
use virtpulse::sinks::kafka::message::{to_message, Topics};
use virtpulse::sinks::otlp::metrics::MetricBuilder;
use virtpulse::sinks::otlp::MAX_POINTS_PER_REQUEST;
use virtpulse::sinks::prometheus::Exporter;
use virtpulse::value::TypedValue;

/// Counts live heap bytes (the agent's own allocations).
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: forwarded to the system allocator with the same layout.
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            let now = LIVE.fetch_add(l.size(), Ordering::Relaxed) + l.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: p was allocated by `alloc` with this layout.
        unsafe { System.dealloc(p, l) };
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        // SAFETY: forwarded with the layout the block was allocated with.
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            if new >= l.size() {
                let now = LIVE.fetch_add(new - l.size(), Ordering::Relaxed) + new - l.size();
                PEAK.fetch_max(now, Ordering::Relaxed);
            } else {
                LIVE.fetch_sub(l.size() - new, Ordering::Relaxed);
            }
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The per-vCPU statistics QEMU 10's query-stats gives on KVM (libvirt 11.3).
const KVM_VCPU: &[&str] = &[
    "invlpg.sum",
    "l1d_flush.sum",
    "pf_parked.sum",
    "fpu_reload.sum",
    "pf_fast.sum",
    "pf_mmio_spte_created.sum",
    "pf_emulate.sum",
    "irq_window_exits.sum",
    "pf_park_timeouts.sum",
    "exits.sum",
    "irq_exits.sum",
    "halt_poll_fail_ns.sum",
    "nmi_window_exits.sum",
    "halt_poll_success_ns.sum",
    "preemption_other.sum",
    "halt_exits.sum",
    "irq_injections.sum",
    "halt_wakeup.sum",
    "preemption_reported.sum",
    "halt_poll_invalid.sum",
    "tlb_flush.sum",
    "halt_attempted_poll.sum",
    "insn_emulation.sum",
    "directed_yield_attempted.sum",
    "signal_exits.sum",
    "nmi_injections.sum",
    "mmio_exits.sum",
    "io_exits.sum",
    "pf_guest.sum",
    "req_event.sum",
    "pf_spurious.sum",
    "notify_window_exits.sum",
    "guest_mode.cur",
    "insn_emulation_fail.sum",
    "nested_run.sum",
    "halt_wait_ns.sum",
    "directed_yield_successful.sum",
    "pf_fixed.sum",
    "host_state_reload.sum",
    "request_irq_exits.sum",
    "hypercalls.sum",
    "pf_taken.sum",
    "blocking.cur",
    "halt_successful_poll.sum",
];
const KVM_VM: &[&str] = &[
    "mmu_shadow_zapped.sum",
    "remote_tlb_flush_requests.sum",
    "pages_1g.cur",
    "mmu_kicks_spared.sum",
    "max_mmu_rmap_size.max",
    "mmu_recycled.sum",
    "pages_2m.cur",
    "mmu_cache_miss.sum",
    "max_mmu_page_hash_collisions.max",
    "nx_lpage_splits.cur",
    "pages_4k.cur",
    "mmu_pte_write.sum",
    "mmu_unsync.cur",
    "remote_tlb_flush.sum",
    "mmu_flooded.sum",
    "mmu_pde_zapped.sum",
];

struct Shape {
    vcpus: usize,
    disks: usize,
    nics: usize,
}

/// One domain's parameters as libvirt 11 sends them for every group with
/// the backing chain (the first disk is an overlay on a base image).
fn domain_params(i: usize, shape: &Shape) -> Vec<(String, TypedValue)> {
    let mut f: Vec<(String, TypedValue)> = Vec::new();
    let u = |v: u64| TypedValue::ULLong(v);
    let n = i as u64;
    f.push(("state.state".into(), TypedValue::Int(1)));
    f.push(("state.reason".into(), TypedValue::Int(1)));
    for k in ["cpu.time", "cpu.user", "cpu.system", "cpu.haltpoll.success.time", "cpu.haltpoll.fail.time"] {
        f.push((k.into(), u(1_000_000_000 + n)));
    }
    f.push(("cpu.cache.monitor.count".into(), TypedValue::UInt(0)));
    for k in ["balloon.current", "balloon.maximum", "balloon.rss", "balloon.last-update", "balloon.usable"] {
        f.push((k.into(), u(4 << 20)));
    }
    f.push(("vcpu.current".into(), TypedValue::UInt(shape.vcpus as u32)));
    f.push(("vcpu.maximum".into(), TypedValue::UInt(shape.vcpus as u32)));
    for v in 0..shape.vcpus {
        f.push((format!("vcpu.{v}.state"), TypedValue::Int(1)));
        for k in ["time", "wait", "delay"] {
            f.push((format!("vcpu.{v}.{k}"), u(5_000_000 + n)));
        }
        for k in KVM_VCPU {
            let value = if k.ends_with(".cur") { TypedValue::Boolean(false) } else { u(17 + n) };
            f.push((format!("vcpu.{v}.{k}"), value));
        }
    }
    f.push(("net.count".into(), TypedValue::UInt(shape.nics as u32)));
    for k in 0..shape.nics {
        f.push((format!("net.{k}.name"), TypedValue::String(format!("tap{i}n{k}").into())));
        for s in ["rx.bytes", "rx.pkts", "rx.errs", "rx.drop", "tx.bytes", "tx.pkts", "tx.errs", "tx.drop"] {
            f.push((format!("net.{k}.{s}"), u(4096 + n)));
        }
    }
    // Disk 0 has a backing layer: one more block entry.
    let entries = shape.disks + 1;
    f.push(("block.count".into(), TypedValue::UInt(entries as u32)));
    let dev = |d: usize| format!("vd{}", (b'a' + d as u8) as char);
    let mut b = 0;
    for d in 0..shape.disks {
        let layers = if d == 0 { 2 } else { 1 };
        for layer in 0..layers {
            f.push((format!("block.{b}.name"), TypedValue::String(dev(d).into())));
            let path = if layer == 0 {
                format!("/var/lib/libvirt/images/instance-{i:08x}-{}.qcow2", dev(d))
            } else {
                "/var/lib/libvirt/images/base/debian-12.qcow2".into()
            };
            f.push((format!("block.{b}.path"), TypedValue::String(path.into())));
            f.push((format!("block.{b}.backingIndex"), TypedValue::UInt((d + layer + 1) as u32)));
            if layer == 0 {
                for s in ["rd.reqs", "rd.bytes", "rd.times", "wr.reqs", "wr.bytes", "wr.times", "fl.reqs", "fl.times"] {
                    f.push((format!("block.{b}.{s}"), u(123_456 + n)));
                }
            }
            for s in ["allocation", "capacity", "physical"] {
                f.push((format!("block.{b}.{s}"), u(20 << 30)));
            }
            b += 1;
        }
    }
    for k in ["calc_status", "calc_start_time", "calc_period"] {
        f.push((format!("dirtyrate.{k}"), TypedValue::Int(0)));
    }
    f.push(("dirtyrate.calc_mode".into(), TypedValue::String("page-sampling".into())));
    for k in KVM_VM {
        let value = if k.ends_with(".sum") { u(9 + n) } else { TypedValue::ULLong(3) };
        f.push((format!("vm.{k}"), value));
    }
    f
}

/// The parameters as the C array libvirt hands over (strings kept alive).
struct CParams {
    params: Vec<sys::virTypedParameter>,
    _strings: Vec<CString>,
}

fn c_params(fields: &[(String, TypedValue)]) -> CParams {
    let mut strings = Vec::new();
    let params = fields
        .iter()
        .map(|(k, v)| {
            let mut field = [0 as c_char; 80];
            for (i, b) in k.bytes().take(79).enumerate() {
                field[i] = b as c_char;
            }
            let (type_, value) = match v {
                TypedValue::Int(x) => (sys::VIR_TYPED_PARAM_INT, sys::_virTypedParameter__bindgen_ty_1 { i: *x }),
                TypedValue::UInt(x) => (sys::VIR_TYPED_PARAM_UINT, sys::_virTypedParameter__bindgen_ty_1 { ui: *x }),
                TypedValue::LLong(x) => (sys::VIR_TYPED_PARAM_LLONG, sys::_virTypedParameter__bindgen_ty_1 { l: *x }),
                TypedValue::ULLong(x) => {
                    (sys::VIR_TYPED_PARAM_ULLONG, sys::_virTypedParameter__bindgen_ty_1 { ul: *x })
                }
                TypedValue::Double(x) => (sys::VIR_TYPED_PARAM_DOUBLE, sys::_virTypedParameter__bindgen_ty_1 { d: *x }),
                TypedValue::Boolean(x) => {
                    (sys::VIR_TYPED_PARAM_BOOLEAN, sys::_virTypedParameter__bindgen_ty_1 { b: c_char::from(*x) })
                }
                TypedValue::String(s) => {
                    let c = CString::new(&**s).unwrap();
                    let p = c.as_ptr() as *mut c_char;
                    strings.push(c);
                    (sys::VIR_TYPED_PARAM_STRING, sys::_virTypedParameter__bindgen_ty_1 { s: p })
                }
            };
            sys::virTypedParameter { field, type_: type_ as c_int, value }
        })
        .collect();
    CParams { params, _strings: strings }
}

fn anon_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:").and_then(|v| v.split_whitespace().next()?.parse().ok()))
        .unwrap_or(0)
}

#[derive(Default, Clone, Copy)]
struct Times {
    decode: f64,
    prom_index: f64,
    prom_scrape: f64,
    otlp: f64,
    kafka: f64,
}

struct Run {
    anon_kib: u64,
    series: usize,
    body: usize,
    points: u64,
    otlp_bytes: usize,
    kafka_bytes: usize,
    times: Times,
    held: usize,
    peak: usize,
}

fn run(domains: usize, shape: &Shape, profile: Profile, rounds: usize) -> Run {
    let everything = profile == Profile::Everything;
    let selection = Arc::new(
        Selection::new(&SelectionSpec { profile, ..Default::default() }, &virtpulse::registry::catalog()).unwrap(),
    );
    // With everything exported, a record consumer (Kafka metric records)
    // is on too, so every field is decoded; else the profile's key filter.
    let filter: Option<KeyFilter> = if everything {
        None
    } else {
        let sel = selection.clone();
        Some(Arc::new(move |k: &str| k.starts_with("state.") || sel.wants_key(&DOMAIN_STATS, k)))
    };
    let inputs: Vec<CParams> = (0..domains).map(|i| c_params(&domain_params(i, shape))).collect();
    let names_info: Vec<(Arc<str>, Arc<str>)> = (0..domains)
        .map(|i| (format!("instance-{i:08x}").into(), format!("00000000-0000-4000-8000-{i:012x}").into()))
        .collect();
    let info =
        Arc::new(DomainInfo { vcpus: Some(shape.vcpus as u32), os_type: Some("hvm".into()), ..Default::default() });
    let exporter = Exporter::new(Registry::new(), selection.clone(), u64::MAX);
    let mut builder = MetricBuilder::new(1_000_000, selection.clone());
    let topics = Topics {
        events: "libvirt.events".into(),
        metrics: "libvirt.metrics".into(),
        per_family: false,
        kinds: vec!["domain_stats"],
    };
    let mut names = KeyInterner::with_filter(filter);

    let base = LIVE.load(Ordering::Relaxed);
    let anon0 = anon_kib();
    let mut t = Times::default();
    let mut out =
        Run { anon_kib: 0, series: 0, body: 0, points: 0, otlp_bytes: 0, kafka_bytes: 0, times: t, held: 0, peak: 0 };
    PEAK.store(base, Ordering::Relaxed);
    for round in 0..rounds + 1 {
        let s = Instant::now();
        let now = SystemTime::now();
        let identity = Identity { host: "hv".into(), uri: "qemu:///system".into() };
        let records: Vec<Record> = inputs
            .iter()
            .zip(&names_info)
            .map(|(c, (name, uuid))| {
                // SAFETY: the array and its strings live in `c`.
                let d = unsafe { decode(c.params.as_ptr(), c.params.len() as c_int, &mut names) };
                Record {
                    domain: Some(DomainRef { name: name.clone(), uuid: uuid.clone(), info: Some(info.clone()) }),
                    fields: d
                        .params
                        .into_iter()
                        .map(|p| {
                            let unit = unit_of(&DOMAIN_STATS, &p.name, &p.value);
                            Field { key: p.name, value: p.value, unit }
                        })
                        .collect(),
                    ..Record::new(&identity, RecordKind::of(&DOMAIN_STATS), now)
                }
            })
            .collect();
        let batch = Arc::new(Batch { source: "domain_stats", snapshot: true, records, ..Default::default() });
        let decode_s = s.elapsed().as_secs_f64();

        let s = Instant::now();
        exporter.apply(batch.clone());
        // As the agent's Prometheus sink does after a large snapshot.
        virtpulse::libvirt::heap::trim();
        let index_s = s.elapsed().as_secs_f64();
        let s = Instant::now();
        let (mut body, mut series) = (0, 0);
        let last = round == rounds;
        exporter
            .write_to(virtpulse::sinks::prometheus::Encoding::Identity, 64 * 1024, &mut |b| {
                body += b.len();
                if last {
                    series += b.split(|c| *c == b'\n').filter(|l| !l.is_empty() && l[0] != b'#').count();
                }
                true
            })
            .unwrap();
        let scrape_s = s.elapsed().as_secs_f64();

        let s = Instant::now();
        let (mut points, mut otlp_bytes) = (0, 0);
        let resource = opentelemetry_proto::tonic::resource::v1::Resource::default();
        for built in builder.build_requests(batch.records.iter(), MAX_POINTS_PER_REQUEST, &resource) {
            points += built.points;
            otlp_bytes += built.body.len();
        }
        let otlp_s = s.elapsed().as_secs_f64();

        let s = Instant::now();
        let mut kafka_bytes = 0;
        if everything {
            for r in &batch.records {
                kafka_bytes += to_message(r, &topics, true).encode().len();
            }
        }
        let kafka_s = s.elapsed().as_secs_f64();
        drop(batch);
        // As the agent does after an OTLP export of a large snapshot.
        virtpulse::libvirt::heap::trim();
        if round > 0 {
            t.decode += decode_s;
            t.prom_index += index_s;
            t.prom_scrape += scrape_s;
            t.otlp += otlp_s;
            t.kafka += kafka_s;
        }
        out = Run {
            anon_kib: anon_kib().saturating_sub(anon0),
            series,
            body,
            points,
            otlp_bytes,
            kafka_bytes,
            times: t,
            held: LIVE.load(Ordering::Relaxed).saturating_sub(base),
            peak: PEAK.load(Ordering::Relaxed).saturating_sub(base),
        };
    }
    drop(exporter);
    drop(builder);
    out
}

fn main() {
    // As the agent does at start (see util::heap).
    virtpulse::libvirt::heap::tune(virtpulse::libvirt::heap::DEFAULT_TUNING);
    let env = |k: &str, d: usize| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let shape = Shape { vcpus: env("VCPUS", 16), disks: env("DISKS", 4), nics: env("NICS", 2) };
    let rounds = env("ROUNDS", 5);
    let mut counts: Vec<usize> =
        std::env::args().skip(1).take_while(|a| a != "--one").filter_map(|a| a.parse().ok()).collect();
    if counts.is_empty() {
        counts = vec![100, 200, 500, 1000];
    }
    // Each size runs in a process of its own, so the resident memory of one
    // does not carry over into the next.
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--one") {
        let profile = if args[2] == "everything" { Profile::Everything } else { Profile::Default };
        let n: usize = args[3].parse().unwrap();
        let r = run(n, &shape, profile, rounds);
        let per = |s: f64| s / rounds as f64 / n as f64 * 1e6;
        let t = r.times;
        let total = t.decode + t.prom_index + t.prom_scrape + t.otlp + t.kafka;
        println!(
            "{:<10} {:>7} {:>10} {:>8} | {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} | {:>10.1} {:>10.1} {:>9.1}",
            args[2],
            n,
            r.series,
            r.series / n,
            per(t.decode),
            per(t.prom_index),
            per(t.prom_scrape),
            per(t.otlp),
            per(t.kafka),
            per(total),
            r.held as f64 / 1024.0 / n as f64,
            r.peak as f64 / 1024.0 / n as f64,
            r.anon_kib as f64 / n as f64,
        );
        let _ = (r.body, r.points, r.otlp_bytes, r.kafka_bytes);
        return;
    }
    let profiles: Vec<&str> = match std::env::var("PROFILES").as_deref() {
        Ok("default") => vec!["default"],
        Ok("everything") => vec!["everything"],
        _ => vec!["default", "everything"],
    };
    println!(
        "synthetic domains: {} vCPUs (with query-stats), {} disks (one on a backing file), {} NICs; means of {rounds} cycles after a warm-up",
        shape.vcpus, shape.disks, shape.nics
    );
    println!(
        "{:<10} {:>7} {:>10} {:>8} | {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} | {:>10} {:>10} {:>9}",
        "profile",
        "domains",
        "series",
        "per dom",
        "decode",
        "prom idx",
        "scrape",
        "otlp",
        "kafka",
        "total",
        "held",
        "peak",
        "RssAnon"
    );
    println!(
        "{:<10} {:>7} {:>10} {:>8} | {:>53} {:>9} | {:>10} {:>10} {:>9}",
        "", "", "", "", "microseconds per domain per cycle", "", "KiB/domain", "KiB/domain", "KiB/dom"
    );
    let me = std::env::current_exe().unwrap();
    for profile in profiles {
        for &n in &counts {
            let out = std::process::Command::new(&me).args(["--one", profile, &n.to_string()]).output().unwrap();
            print!("{}", String::from_utf8_lossy(&out.stdout));
            if !out.status.success() {
                eprintln!("{}", String::from_utf8_lossy(&out.stderr));
            }
        }
    }
}
