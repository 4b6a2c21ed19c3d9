#!/usr/bin/env bash
# The Kafka-protocol broker the Kafka sink's tests run against: tansu, from
# crates.io (about 9 minutes to build once). Idempotent: skips the build when
# the pinned version is already installed.
set -euo pipefail
here=$(dirname "$0")
. "$here/lib.sh"

TANSU_VERSION=${TANSU_VERSION:-0.6.0}
root=/opt/virtpulse-test/tansu
if [ -x "$root/bin/tansu" ]; then
  exit 0
fi
ensure_cargo
apt_install_missing gcc g++ make pkg-config
# dynostore: the in-memory storage engine the tests use (tansu's SQLite
# engine refuses idempotent producers).
cargo install tansu ${TANSU_VERSION:+--version "$TANSU_VERSION"} --locked --features dynostore --root "$root" \
  --target-dir /var/cache/virtpulse/tansu-build
rm -rf /var/cache/virtpulse/tansu-build
