//! Exposition cost: virtpulse's own text encoder against prometheus-client
//! (the Prometheus project's Rust client) on the same snapshot.
//!
//!   cargo bench --bench encode [-- DOMAINS]
//!
//! Prints render and scrape times and writes both outputs to /tmp so they
//! can be linted with `promtool check metrics`.

use std::sync::Arc;
use std::time::{Duration, Instant};

mod snapshot;
use snapshot::snapshot;

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry as PcRegistry;
use virtpulse::record::samples::{samples, SampleStats};
use virtpulse::record::{Batch, Record};
use virtpulse::selection::Selection;
use virtpulse::selfmon::Registry;
use virtpulse::sinks::prometheus::Exporter;
use virtpulse::value::MetricType;

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
                labels.extend(s.labels().into_iter().map(|(k, v)| (k.to_string(), v)));
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

    let exporter =
        Exporter::new(Registry::new(), Arc::new(Selection::everything(&virtpulse::registry::catalog())), u64::MAX);
    let mut render = Vec::new();
    let mut scrape = Vec::new();
    let mut ours = String::new();
    for _ in 0..rounds {
        let batch = Batch { source: "domain_stats", snapshot: true, records: records.clone(), ..Default::default() };
        let t = Instant::now();
        exporter.apply(Arc::new(batch));
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
