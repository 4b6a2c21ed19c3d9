#!/usr/bin/env bash
# The OTLP receiver the OTLP sink's tests export to: rotel (a Rust
# OpenTelemetry collector shipped on PyPI), in its own virtualenv so that
# Debian's Python stays untouched. Idempotent; prints the binary's path.
set -euo pipefail
here=$(dirname "$0")
. "$here/lib.sh"

ROTEL_VERSION=${ROTEL_VERSION:-0.0.1a15}
venv=/opt/virtpulse-test/rotel
bin="$venv/bin/rotel-agent"

if [ -x "$bin" ] && "$bin" --version >/dev/null 2>&1; then
  echo "$bin"
  exit 0
fi
apt_install_missing python3 python3-venv python3-pip
mkdir -p "$(dirname "$venv")"
/usr/bin/python3 -m venv "$venv" >&2
"$venv/bin/pip" install -q --disable-pip-version-check "rotel==$ROTEL_VERSION" >&2
agent=$("$venv/bin/python" -c 'import os, rotel; print(os.path.join(os.path.dirname(rotel.__file__), "rotel-agent"))')
chmod +x "$agent"
ln -sf "$agent" "$bin"
"$bin" --version >&2
echo "$bin"
