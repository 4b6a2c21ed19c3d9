//! OTLP export cost in process: building the metrics request (encoded as it
//! is built) from a domain snapshot (20 and 100 domains, each as a 2-vCPU
//! KVM guest with a NIC and a two-layer disk reports), and the bytes per
//! export before and after gzip. `bench/otlp.sh` measures the same on real guests
//! against a real receiver.
//!
//!   cargo bench --bench otlp

use std::io::Write;
use std::time::Instant;

use virtpulse::sinks::otlp::metrics::MetricBuilder;

mod snapshot;

fn gzip_len(body: &[u8]) -> usize {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(body).unwrap();
    enc.finish().unwrap().len()
}

fn main() {
    println!("domains  points  build_ms  encode_ms  cpu_ms_per_export  protobuf_KiB  gzip_KiB");
    for domains in [20, 100] {
        let records = snapshot::snapshot(domains);
        let mut builder = MetricBuilder::new(
            100_000,
            std::sync::Arc::new(virtpulse::selection::Selection::everything(&virtpulse::registry::catalog())),
        );
        let rounds = 200;
        let (mut build, mut encode, mut bytes, mut gz, mut points) = (0.0, 0.0, 0, 0, 0);
        for i in 0..rounds {
            let t = Instant::now();
            let built = builder.build(records.iter());
            let b = t.elapsed().as_secs_f64();
            points = built.points;
            // The request is encoded as it is built; nothing is left to do.
            let e = 0.0;
            let body = built.body;
            if i >= 20 {
                build += b;
                encode += e;
            }
            bytes = body.len();
            if i == 0 {
                gz = gzip_len(&body);
            }
        }
        let n = f64::from(rounds - 20);
        println!(
            "{domains:>7}  {points:>6}  {:>8.2}  {:>9.2}  {:>17.2}  {:>12.1}  {:>8.1}",
            build / n * 1e3,
            encode / n * 1e3,
            (build + encode) / n * 1e3,
            bytes as f64 / 1024.0,
            gz as f64 / 1024.0
        );
    }
}
