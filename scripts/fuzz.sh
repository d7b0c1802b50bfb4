#!/usr/bin/env bash
# Runs each cargo-fuzz target for a bounded time (default 120 s each; not part of CI).
#   scripts/fuzz.sh [seconds-per-target]
# Needs a nightly toolchain (`rustup toolchain install nightly`) and cargo-fuzz
# (`cargo install cargo-fuzz`). Findings land in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
SECS=${1:-120}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
for t in url_parser subtitle_writer; do
  mkdir -p "corpus/$t"
  echo "[fuzz] $t for ${SECS}s" >&2
  cargo +nightly fuzz run "$t" "corpus/$t" -- -max_total_time="$SECS" -max_len=4096 2>&1 \
    | grep -E '^#[0-9]+ +DONE|Done [0-9]+ runs|SUMMARY|panicked|ERROR' || true
done
