#!/usr/bin/env bash
# Runs the cargo-fuzz targets (fuzz/fuzz_targets/) one after the other for
# SECONDS each (default 600), growing the committed corpus in
# fuzz/corpus/<target>/, minimizes each corpus at the end (cargo fuzz cmin)
# and prints executions, executions/s, coverage (libFuzzer's cov: and ft:)
# and crashes per target. Crash inputs land in fuzz/artifacts/<target>/;
# replay them with `cargo test --test fuzz_corpus` (stable).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Needs the nightly toolchain (installed with rustup if missing) and
# cargo-fuzz (installed if missing). Idempotent.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

seconds=${1:-600}
shift || true
case $seconds in
  '' | *[!0-9]*)
    echo "usage: $0 [SECONDS] [TARGET...]" >&2
    exit 64
    ;;
esac
RSS_LIMIT_MB=${RSS_LIMIT_MB:-2048}
root=$(cd "$here/.." && pwd)
cd "$root"

ensure_cargo
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --help >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi

if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo +nightly fuzz list)
fi
# The spool target writes scratch directories: on tmpfs when there is one.
if [ -z "${TMPDIR:-}" ] && [ -d /dev/shm ] && [ -w /dev/shm ]; then
  export TMPDIR=/dev/shm
fi
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT

# No AddressSanitizer: librdkafka's vendored C build (a dependency of the
# crate) does not link under ASan, and the code under test is safe Rust,
# where the findings are panics, aborts, timeouts and runaway memory, all of
# which libFuzzer reports without a sanitizer. Debug assertions stay on.
fuzz_flags=(--sanitizer none --debug-assertions)
cargo +nightly fuzz build "${fuzz_flags[@]}"

# Crash, leak, timeout and out-of-memory inputs kept for a target.
artifact_count() {
  find "fuzz/artifacts/$1" -maxdepth 1 -type f \( -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' -o -name 'oom-*' \) 2>/dev/null | wc -l
}

declare -A result
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
  before=$(artifact_count "$t")
  echo "== $t: ${seconds}s" >&2
  rc=0
  cargo +nightly fuzz run "${fuzz_flags[@]}" "$t" "fuzz/corpus/$t" -- \
    -max_total_time="$seconds" -rss_limit_mb="$RSS_LIMIT_MB" -timeout=60 -print_final_stats=1 \
    >"$logs/$t.log" 2>&1 || rc=$?
  crashes=$(($(artifact_count "$t") - before))
  if [ "$rc" -ne 0 ] && [ "$crashes" -eq 0 ]; then
    crashes="? (exit $rc)"
  fi
  # libFuzzer's final statistics, and its last status line for coverage.
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$logs/$t.log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$logs/$t.log" | tail -1)
  status=$(grep -E '^#[0-9]+' "$logs/$t.log" | grep 'cov:' | tail -1 || true)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$status")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$status")
  [ -n "$execs" ] || execs=$(sed -n 's/^#\([0-9]*\).*/\1/p' <<<"$status")
  [ -n "$rate" ] || rate=$(sed -n 's/.* exec\/s: \([0-9]*\).*/\1/p' <<<"$status")
  result[$t]="${execs:--}|${rate:--}|${cov:--}|${ft:--}|$crashes"
  if [ "$rc" -ne 0 ]; then
    echo "$t: libFuzzer stopped (exit $rc); the end of its output:" >&2
    tail -40 "$logs/$t.log" >&2
  fi
done

for t in "${targets[@]}"; do
  echo "== minimizing fuzz/corpus/$t" >&2
  before=$(find "fuzz/corpus/$t" -type f | wc -l)
  if cargo +nightly fuzz cmin "${fuzz_flags[@]}" "$t" "fuzz/corpus/$t" -- -rss_limit_mb="$RSS_LIMIT_MB" >"$logs/$t.cmin.log" 2>&1; then
    echo "$t: $before -> $(find "fuzz/corpus/$t" -type f | wc -l) inputs, $(du -sh "fuzz/corpus/$t" | cut -f1)" >&2
  else
    echo "$t: cmin failed; the end of its output:" >&2
    tail -20 "$logs/$t.cmin.log" >&2
  fi
done

printf '\n%-14s %14s %10s %8s %8s %s\n' target executions exec/s cov ft crashes
for t in "${targets[@]}"; do
  IFS='|' read -r execs rate cov ft crashes <<<"${result[$t]}"
  printf '%-14s %14s %10s %8s %8s %s\n' "$t" "$execs" "$rate" "$cov" "$ft" "$crashes"
done
