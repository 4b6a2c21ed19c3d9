#!/usr/bin/env bash
# Quick start on a fresh Debian 12 machine (as root): installs what the agent
# needs, builds it, and runs it on an embedded default, printing records as
# JSON lines and serving http://127.0.0.1:9177/metrics.
#
# The default is a local libvirtd with two tiny demo guests when this machine
# can run them (scripts/demo-guests.sh destroy removes them), else libvirt's
# in-process test driver (test:///default). Ctrl-C stops the agent.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

scripts/install-libvirt.sh
ensure_cargo
cargo build --release --locked

uri=test:///default
if [ "$(id -u)" = 0 ] && scripts/start-libvirtd.sh 2>/dev/null && scripts/demo-guests.sh create; then
  uri=qemu:///system
fi
echo "virtpulse on $uri: records below, metrics at http://127.0.0.1:9177/metrics" >&2
export VIRTPULSE_LIBVIRT__URI="$uri"
export VIRTPULSE_SINKS__STDOUT__ENABLED=true
export VIRTPULSE_SINKS__PROMETHEUS__LISTEN="${VIRTPULSE_SINKS__PROMETHEUS__LISTEN:-127.0.0.1:9177}"
export VIRTPULSE_COLLECTORS__INTERVAL="${VIRTPULSE_COLLECTORS__INTERVAL:-5s}"
exec target/release/virtpulse --config config.example.toml
