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

rustup component list --installed 2>/dev/null | grep -q rustfmt || rustup component add rustfmt clippy >/dev/null 2>&1 || true
cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
# Each test binary starts its own private libvirtd (tests/common/daemon.rs):
# the host's daemon is never touched, and binaries may run in parallel.
cargo test --locked
