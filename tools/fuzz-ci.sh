#!/usr/bin/env bash
# Bounded coverage-guided fuzzing for CI (`make fuzz-ci`): builds the cargo-fuzz targets in
# fuzz/ and runs each for FUZZ_SECONDS (default 20) from its committed seed corpus
# (fuzz/corpus/<target>/, read-only here: new inputs go to a scratch directory). Any crash,
# panic, timeout or out-of-memory fails the run; its input is left in fuzz/artifacts/<target>/.
#
# Works with the stable toolchain: cargo-fuzz passes -Z flags, which RUSTC_BOOTSTRAP=1 allows.
# No sanitizer (--sanitizer none): the targets exercise safe Rust, libtorch is not
# instrumented, and ASan's runtime does not mix well with it; panics, aborts, timeouts and
# allocations past -rss_limit_mb are what is checked.
#
# Usage: tools/fuzz-ci.sh [target...]   (default: every target in fuzz/fuzz_targets/)
# Environment: FUZZ_SECONDS (per target), FUZZ_RSS_MB (default 2048), FUZZ_TIMEOUT (s per input,
# default 10), FUZZ_UPDATE_CORPUS=1 (merge the inputs that reach new coverage edges into
# fuzz/corpus/<target>/, for a longer local run whose finds should be committed).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1

FUZZ_SECONDS="${FUZZ_SECONDS:-20}"
FUZZ_RSS_MB="${FUZZ_RSS_MB:-2048}"
FUZZ_TIMEOUT="${FUZZ_TIMEOUT:-10}"
FUZZ_UPDATE_CORPUS="${FUZZ_UPDATE_CORPUS:-0}"
CARGO_FUZZ_VERSION=0.13.2
TOOLS="$ROOT/.tools"

# libtorch through the project's venv, as the Makefile does.
export VIRTUAL_ENV="$ROOT/.venv"
export PATH="$TOOLS/bin:$VIRTUAL_ENV/bin:$PATH"
export LIBTORCH_USE_PYTORCH=1
export RUSTC_BOOTSTRAP=1
# A fuzzed load must never reach the Hugging Face Hub.
export HF_HUB_OFFLINE=1

if ! [ -x "$TOOLS/bin/cargo-fuzz" ] || ! "$TOOLS/bin/cargo-fuzz" --version | grep -q " $CARGO_FUZZ_VERSION\$"; then
  echo "installing cargo-fuzz $CARGO_FUZZ_VERSION into $TOOLS"
  cargo install --quiet --locked --root "$TOOLS" cargo-fuzz --version "$CARGO_FUZZ_VERSION" || exit 1
fi

if [ $# -gt 0 ]; then
  targets=("$@")
else
  targets=()
  for f in fuzz/fuzz_targets/*.rs; do targets+=("$(basename "$f" .rs)"); done
fi

# The same flags for build and run, so that `cargo fuzz run` finds the build up to date.
FLAGS=(--sanitizer none)
HOST="$(rustc -vV | sed -n 's/^host: //p')"

start=$(date +%s)
echo "building ${#targets[@]} fuzz targets"
if ! cargo fuzz build "${FLAGS[@]}"; then
  echo "fuzz build failed"
  echo "0 passed, ${#targets[@]} failed"
  exit 1
fi
echo "build: $(( $(date +%s) - start )) s"

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
passed=0
failed=0
for target in "${targets[@]}"; do
  mkdir -p "$scratch/$target" "fuzz/artifacts/$target"
  log="$scratch/$target.log"
  t0=$(date +%s)
  cargo fuzz run "${FLAGS[@]}" "$target" "$scratch/$target" "fuzz/corpus/$target" -- \
    -max_total_time="$FUZZ_SECONDS" -rss_limit_mb="$FUZZ_RSS_MB" -timeout="$FUZZ_TIMEOUT" \
    -print_final_stats=1 -artifact_prefix="fuzz/artifacts/$target/" >"$log" 2>&1
  rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
  if [ $rc -eq 0 ]; then
    passed=$((passed + 1))
    echo "fuzz $target: ok, ${execs:-?} executions, ${cov:-cov: ?}, $(( $(date +%s) - t0 )) s"
    if [ "$FUZZ_UPDATE_CORPUS" = 1 ]; then
      # Edges only (no hit counters), which keeps the committed corpus small.
      "fuzz/target/$HOST/release/$target" -merge=1 -use_counters=0 -rss_limit_mb="$FUZZ_RSS_MB" \
        "fuzz/corpus/$target" "$scratch/$target" 2>&1 | grep -o 'MERGE-OUTER: [0-9]* new files.*'
    fi
  else
    failed=$((failed + 1))
    echo "fuzz $target: FAILED (exit $rc) after ${execs:-?} executions; last lines of its log:"
    tail -n 40 "$log"
    ls -1 "fuzz/artifacts/$target/" 2>/dev/null | sed 's/^/  artifact: /'
  fi
done
echo "total: $(( $(date +%s) - start )) s"
echo "$passed passed, $failed failed"
[ $failed -eq 0 ]
