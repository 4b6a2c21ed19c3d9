#!/usr/bin/env bash
# Installs everything the tests need (Debian packages, libvirt 11 + QEMU 10
# from bookworm-backports, Prometheus' promtool), starts libvirtd, and runs
# the whole suite: formatting, lints, unit tests and end-to-end tests
# against real guests. Idempotent; run as root. CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

scripts/install-test-deps.sh
ensure_cargo
scripts/start-libvirtd.sh

rustup component list --installed 2>/dev/null | grep -q rustfmt || rustup component add rustfmt clippy >/dev/null 2>&1 || true
cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
# Test binaries run one after another (the libvirtd restart test relies on
# that); tests inside a binary run in parallel.
cargo test --locked
