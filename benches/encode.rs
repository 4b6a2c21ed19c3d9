//! Exposition cost: virtpulse's own text encoder against prometheus-client
//! (the Prometheus project's Rust client) on the same snapshot.
//!
//!   cargo bench --bench encode [-- DOMAINS]
//!
//! Prints render and scrape times and writes both outputs to /tmp so they
//! can be linted with `promtool check metrics`.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry as PcRegistry;
use virtpulse::libvirt::TypedValue;
use virtpulse::record::{Batch, DomainInfo, DomainRef, Field, Record, RecordKind, SCHEMA};
use virtpulse::selfmon::Registry;
use virtpulse::sinks::prometheus::Exporter;
use virtpulse::stat_keys::{samples, unit_of, MetricType, SampleStats};

/// One domain's keys as a 2-vCPU KVM guest with a NIC and a two-layer disk reports them.
fn domain_fields(i: usize) -> Vec<(String, TypedValue)> {
    let mut f: Vec<(String, TypedValue)> = Vec::new();
    let u = |v: u64| TypedValue::ULLong(v);
    f.push(("state.state".into(), TypedValue::Int(1)));
    f.push(("state.reason".into(), TypedValue::Int(1)));
    for k in ["cpu.time", "cpu.user", "cpu.system", "cpu.haltpoll.success.time", "cpu.haltpoll.fail.time"] {
        f.push((k.into(), u(1_000_000_000 + i as u64)));
    }
    for k in ["balloon.current", "balloon.maximum", "balloon.rss", "balloon.last-update"] {
        f.push((k.into(), u(32768)));
    }
    f.push(("vcpu.current".into(), TypedValue::UInt(2)));
    f.push(("vcpu.maximum".into(), TypedValue::UInt(2)));
    let kvm = [
        "exits",
        "halt_exits",
        "io_exits",
        "mmio_exits",
        "signal_exits",
        "irq_exits",
        "request_irq_exits",
        "halt_successful_poll",
        "halt_attempted_poll",
        "halt_poll_invalid",
        "halt_wakeup",
        "halt_poll_success_ns",
        "halt_poll_fail_ns",
        "halt_wait_ns",
        "pf_taken",
        "pf_fixed",
        "pf_emulate",
        "pf_spurious",
        "insn_emulation",
        "insn_emulation_fail",
        "fpu_reload",
        "host_state_reload",
        "invlpg",
        "nmi_injections",
        "irq_injections",
        "hypercalls",
        "preemption_reported",
        "preemption_other",
        "directed_yield_successful",
        "nested_run",
        "l1d_flush",
        "tlb_flush",
        "req_event",
    ];
    for v in 0..2 {
        f.push((format!("vcpu.{v}.state"), TypedValue::Int(1)));
        for k in ["time", "wait", "delay"] {
            f.push((format!("vcpu.{v}.{k}"), u(5_000_000)));
        }
        for k in kvm {
            f.push((format!("vcpu.{v}.{k}.sum"), u(17)));
        }
        f.push((format!("vcpu.{v}.guest_mode.cur"), TypedValue::Boolean(false)));
        f.push((format!("vcpu.{v}.blocking.cur"), TypedValue::Boolean(true)));
    }
    f.push(("net.count".into(), TypedValue::UInt(1)));
    f.push(("net.0.name".into(), TypedValue::String(format!("vnet{i}"))));
    for k in ["rx.bytes", "rx.pkts", "rx.errs", "rx.drop", "tx.bytes", "tx.pkts", "tx.errs", "tx.drop"] {
        f.push((format!("net.0.{k}"), u(4096)));
    }
    f.push(("block.count".into(), TypedValue::UInt(2)));
    for b in 0..2 {
        f.push((format!("block.{b}.name"), TypedValue::String("vda".into())));
        f.push((format!("block.{b}.path"), TypedValue::String(format!("/var/lib/libvirt/images/d{i}-{b}.qcow2"))));
        f.push((format!("block.{b}.backingIndex"), TypedValue::UInt(b + 1)));
        if b == 0 {
            for k in ["rd.reqs", "rd.bytes", "rd.times", "wr.reqs", "wr.bytes", "wr.times", "fl.reqs", "fl.times"] {
                f.push((format!("block.{b}.{k}"), u(123_456)));
            }
        }
        for k in ["allocation", "capacity", "physical"] {
            f.push((format!("block.{b}.{k}"), u(64 << 20)));
        }
    }
    for k in [
        "remote_tlb_flush.sum",
        "mmu_shadow_zapped.sum",
        "mmu_cache_miss.sum",
        "pages_4k.cur",
        "pages_2m.cur",
        "max_mmu_page_hash_collisions.max",
    ] {
        f.push((format!("vm.{k}"), u(9)));
    }
    f
}

fn snapshot(domains: usize) -> Vec<Record> {
    let now = SystemTime::now();
    (0..domains)
        .map(|i| Record {
            schema: SCHEMA,
            kind: RecordKind::DomainStats,
            time: now,
            host: "hv".into(),
            libvirt_uri: "qemu:///system".into(),
            pool: None,
            event: None,
            domain: Some(DomainRef {
                name: format!("instance-{i:08x}").into(),
                uuid: format!("00000000-0000-4000-8000-{i:012x}").into(),
                info: Some(Arc::new(DomainInfo { vcpus: Some(2), os_type: Some("hvm".into()), ..Default::default() })),
            }),
            fields: domain_fields(i)
                .into_iter()
                .map(|(k, v)| Field { unit: unit_of(RecordKind::DomainStats, &k, &v), key: k.into(), value: v })
                .collect(),
        })
        .collect()
}

/// The same samples through prometheus-client's collector API.
#[derive(Debug)]
struct PcCollector(Arc<Vec<Record>>);

impl prometheus_client::collector::Collector for PcCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use std::collections::BTreeMap;
        type Row = (Vec<(String, String)>, f64);
        let mut fams: BTreeMap<String, (MetricType, String, Vec<Row>)> = BTreeMap::new();
        for r in self.0.iter() {
            let d = r.domain.as_ref().unwrap();
            for s in samples(r, &mut SampleStats::default()) {
                let mut labels =
                    vec![("domain".to_string(), d.name.to_string()), ("uuid".to_string(), d.uuid.to_string())];
                labels.extend(s.labels().map(|(k, v)| (k.to_string(), v.to_string())));
                fams.entry(s.name().to_string())
                    .or_insert_with(|| (s.mtype(), s.help().to_string(), Vec::new()))
                    .2
                    .push((labels, s.value));
            }
        }
        for (name, (mtype, help, rows)) in fams {
            // prometheus-client adds `_total` to counters itself.
            let base = name.strip_suffix("_total").unwrap_or(&name).to_string();
            let t = match mtype {
                MetricType::Counter => prometheus_client::metrics::MetricType::Counter,
                // Record series are never histograms.
                MetricType::Gauge | MetricType::Histogram => prometheus_client::metrics::MetricType::Gauge,
            };
            let mut fam =
                encoder.encode_descriptor(if mtype == MetricType::Counter { &base } else { &name }, &help, None, t)?;
            for (labels, v) in rows {
                let me = fam.encode_family(&labels)?;
                match mtype {
                    MetricType::Counter => ConstCounter::new(v).encode(me)?,
                    MetricType::Gauge | MetricType::Histogram => ConstGauge::new(v).encode(me)?,
                }
            }
        }
        Ok(())
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let domains: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(400);
    let records = snapshot(domains);
    let rounds = 15;

    let exporter = Exporter::new(Registry::new(), None);
    let mut render = Vec::new();
    let mut scrape = Vec::new();
    let mut ours = String::new();
    for _ in 0..rounds {
        let batch = Batch { source: "domain_stats", snapshot: true, records: records.clone(), ..Default::default() };
        let t = Instant::now();
        exporter.apply(&batch);
        render.push(t.elapsed());
        let t = Instant::now();
        ours = exporter.encode();
        scrape.push(t.elapsed());
    }
    let series = ours.lines().filter(|l| !l.starts_with('#')).count();

    let shared = Arc::new(records);
    let mut reg = PcRegistry::default();
    reg.register_collector(Box::new(PcCollector(shared.clone())));
    let mut pc = Vec::new();
    let mut theirs = String::new();
    for _ in 0..rounds {
        let t = Instant::now();
        theirs.clear();
        prometheus_client::encoding::text::encode(&mut theirs, &reg).unwrap();
        pc.push(t.elapsed());
    }
    std::fs::write("/tmp/virtpulse-encode-ours.txt", &ours).unwrap();
    std::fs::write("/tmp/virtpulse-encode-prometheus-client.txt", &theirs).unwrap();

    println!("snapshot: {domains} domains, {series} series, {} KiB of text", ours.len() / 1024);
    println!(
        "virtpulse: render once per collection  {:>8.2} ms (median of {rounds})",
        median(render).as_secs_f64() * 1e3
    );
    println!("virtpulse: per scrape                   {:>8.2} ms", median(scrape).as_secs_f64() * 1e3);
    println!("prometheus-client: per scrape           {:>8.2} ms (samples + encode)", median(pc).as_secs_f64() * 1e3);
    println!("outputs: /tmp/virtpulse-encode-ours.txt /tmp/virtpulse-encode-prometheus-client.txt");
}
