#!/usr/bin/env bash
# The independent Kafka consumer of the Kafka sink's tests
# (tests/tools/kafka_consume.py): kafka-python, a pure-Python client that
# shares no code with librdkafka, plus zstandard for the agent's
# zstd-compressed batches, pinned, in their own virtualenv so that Debian's
# Python stays untouched. Idempotent; prints the venv's python.
set -euo pipefail
here=$(dirname "$0")
. "$here/lib.sh"

KAFKA_PYTHON_VERSION=${KAFKA_PYTHON_VERSION:-3.0.12}
ZSTANDARD_VERSION=${ZSTANDARD_VERSION:-0.25.0}
venv=/opt/virtpulse-test/kafka-python
py="$venv/bin/python"
check="import kafka, zstandard, sys; sys.exit(0 if (kafka.__version__, zstandard.__version__) == ('$KAFKA_PYTHON_VERSION', '$ZSTANDARD_VERSION') else 1)"

if [ -x "$py" ] && "$py" -c "$check" 2>/dev/null; then
  echo "$py"
  exit 0
fi
apt_install_missing python3 python3-venv python3-pip
mkdir -p "$(dirname "$venv")"
[ -x "$py" ] || /usr/bin/python3 -m venv "$venv" >&2
"$venv/bin/pip" install -q --disable-pip-version-check \
  "kafka-python==$KAFKA_PYTHON_VERSION" "zstandard==$ZSTANDARD_VERSION" >&2
"$py" -c "$check"
echo "$py"
