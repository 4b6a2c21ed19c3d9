#!/usr/bin/env bash
# The tools of the portable build (scripts/build-release.sh): the zig C
# toolchain, whose linker and libc stubs let the binary target an older glibc
# than the build host's, and cargo-zigbuild, which drives cargo with it. Both
# come from PyPI as prebuilt wheels (no toolchain download of their own, and
# no 5-minute `cargo install`), in their own virtualenv so that Debian's
# Python stays untouched. Versions are pinned: a new zig can change the libc
# stubs and so the binary. Idempotent; prints the venv's bin directory.
set -euo pipefail
here=$(dirname "$0")
. "$here/lib.sh"

ZIG_VERSION=${ZIG_VERSION:-0.15.2}
CARGO_ZIGBUILD_VERSION=${CARGO_ZIGBUILD_VERSION:-0.24.1}
TOOLS=${VIRTPULSE_BUILD_TOOLS:-/opt/virtpulse-build}
# One venv per version pair: changing a pin never half-upgrades a venv.
venv=$TOOLS/zigbuild-$ZIG_VERSION-$CARGO_ZIGBUILD_VERSION
bin=$venv/bin

# The marker is written last: an interrupted install is redone from scratch.
ready() {
  [ -f "$venv/.complete" ] && [ -x "$bin/zig" ] && [ -x "$bin/cargo-zigbuild" ] && "$bin/zig" version >/dev/null 2>&1
}

if ready; then
  echo "$bin"
  exit 0
fi
apt_install_missing python3 python3-venv python3-pip
mkdir -p "$TOOLS"
rm -rf "$venv"
/usr/bin/python3 -m venv "$venv" >&2
"$bin/pip" install -q --disable-pip-version-check \
  "ziglang==$ZIG_VERSION" "cargo-zigbuild==$CARGO_ZIGBUILD_VERSION" >&2
# The ziglang wheel ships the zig binary inside the package, not on PATH;
# cargo-zigbuild looks for `zig` on PATH (or $ZIG_COMMAND).
zig=$("$bin/python" -c 'import os, ziglang; print(os.path.join(os.path.dirname(ziglang.__file__), "zig"))')
ln -sf "$zig" "$bin/zig"
touch "$venv/.complete"
ready || { echo "zig or cargo-zigbuild does not run from $bin" >&2; exit 1; }
echo "zig $("$bin/zig" version), $("$bin/cargo-zigbuild" --version) in $bin" >&2
echo "$bin"
