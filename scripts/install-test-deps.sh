#!/usr/bin/env bash
# Everything the test suite and the benchmarks need, from Debian (libvirt 11
# + QEMU 10 from bookworm-backports). Idempotent.
set -euo pipefail
here=$(dirname "$0")
. "$here/lib.sh"

"$here/install-libvirt.sh"
# promtool (metrics lint, rules) and the Prometheus server; the Debian
# libvirt exporter is the peer the benchmark compares against.
apt_install_missing prometheus prometheus-libvirt-exporter procps curl systemd openssl python3
# The packages' tests (tests/package.rs, tests/portable.rs, tests/rpm.rs):
# readelf/objdump for what a binary needs, rpm for rpmbuild and its
# queries, ca-certificates for the bundle the TLS check swaps, perl and
# make for the vendored OpenSSL and librdkafka builds.
apt_install_missing binutils rpm ca-certificates perl make pkg-config util-linux
ensure_cargo
# zig and cargo-zigbuild for the portable build (scripts/build-release.sh).
"$here/install-zigbuild.sh" >/dev/null
# The Linux guest for events a guest must cause (kernel + busybox initramfs).
"$here/build-test-guest.sh"
# The Kafka-protocol broker for the Kafka sink's tests (built once, ~9 min).
"$here/install-tansu.sh"
# The OTLP receiver for the OTLP sink's tests.
"$here/install-rotel.sh" >/dev/null
# The independent Kafka consumer (kafka-python, no librdkafka) that checks
# what the Kafka sink delivered (tests/tools/kafka_consume.py).
"$here/install-kafka-python.sh" >/dev/null
# Other libvirt daemons for the support matrix (tests/e2e_matrix.rs): Debian
# 13 with trixie-backports (libvirt 12.9), Debian 13 (11.3), Debian 12 (9.0)
# and Debian 11 (7.0) roots, cached (under a minute each).
"$here/build-test-roots.sh" >/dev/null
