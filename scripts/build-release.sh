#!/usr/bin/env bash
# Builds the portable virtpulse binary, the one the packages ship: it runs on
# glibc 2.28 and later (EL8, Debian 10+, Ubuntu 20.04+) and needs no system
# OpenSSL. Prints the binary's path on stdout (everything else on stderr).
#   scripts/build-release.sh                       (the release build)
#   PROFILE=portable-test scripts/build-release.sh (what the tests build:
#                                                   same target and features,
#                                                   cheaper code generation)
# How: cargo-zigbuild links with zig against glibc 2.28's symbol stubs (the
# target suffix .2.28), so no symbol newer than GLIBC_2.28 can be referenced;
# the C parts (librdkafka, OpenSSL, zstd) are compiled by zig's clang against
# glibc 2.28's headers. OpenSSL, librdkafka's only TLS, is built from source
# and linked statically (feature vendored-openssl); the rest uses rustls.
# libvirt stays a shared library: the binary is linked against this host's
# libvirt.so.0 and runs against the target host's. What counts there is the
# LIBVIRT_x.y.z symbol versions it references (the versions that introduced
# each function, the same in every libvirt release), not the glibc that this
# host's libvirt.so itself needs. zig's linker (lld) would refuse that
# library's references to newer glibc symbols, hence --allow-shlib-undefined:
# they are the host library's business, resolved on the target against its
# own glibc.
# Idempotent and incremental: the tools are cached (scripts/install-zigbuild.sh)
# and cargo's output stays in target/x86_64-unknown-linux-gnu/<profile>/,
# apart from the host builds' target/debug and target/release.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

PROFILE=${PROFILE:-release}
GLIBC=${VIRTPULSE_GLIBC:-2.28}
TRIPLE=x86_64-unknown-linux-gnu

case "$PROFILE" in
  release | portable-test) ;;
  debug | dev)
    echo "PROFILE=$PROFILE is the host's own debug build, not a portable one: use PROFILE=portable-test for a" \
      "cheap portable build, or plain cargo build for a debug binary" >&2
    exit 2 ;;
  *)
    grep -q "^\[profile\.$PROFILE\]" Cargo.toml || {
      echo "unknown PROFILE '$PROFILE': want release or portable-test (or a [profile.NAME] of Cargo.toml)" >&2
      exit 2
    } ;;
esac
[ "$(uname -m)" = x86_64 ] || { echo "the portable build is set up for x86_64 hosts only (this is $(uname -m))" >&2; exit 2; }

ensure_cargo
# Builds OpenSSL from source (openssl-src runs its Configure with perl) and
# librdkafka (mklove configure + make); virt-sys finds libvirt with pkg-config.
apt_install_missing perl make pkg-config libvirt-dev
tools=$(scripts/install-zigbuild.sh)
export PATH="$tools:$PATH"

# The glibc stubs cover libc, libm, libpthread, libdl, librt; anything else
# in NEEDED must exist on the target (libvirt's libraries, libz, libgcc_s).
# Passed per target so build scripts and proc macros (host code) keep
# their own flags and stay shared with nothing else.
export CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C link-arg=-Wl,--allow-shlib-undefined"

start=$(date +%s)
cargo zigbuild --locked -q --profile "$PROFILE" --features vendored-openssl --target "$TRIPLE.$GLIBC" --bin virtpulse >&2
dir=$PROFILE
bin=${CARGO_TARGET_DIR:-target}/$TRIPLE/$dir/virtpulse
[ -x "$bin" ] || { echo "cargo zigbuild succeeded but $bin is missing" >&2; exit 1; }
echo "built $bin ($PROFILE, glibc $GLIBC) in $(( $(date +%s) - start ))s" >&2
realpath "$bin"
