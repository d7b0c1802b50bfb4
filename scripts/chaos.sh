#!/usr/bin/env bash
# Chaos run (not in CI): the kill -9 fault test at scale. Starts a private Redis, WORKERS
# worker processes and TASKS tasks on short real speech, SIGKILLs a worker every EVERY_MS
# (preferring one that is transcribing) KILLS times, restarting each, and prints tasks
# done / lost / duplicated and the recovery times (kill -> next start of each interrupted job).
#   scripts/chaos.sh [TASKS [KILLS [WORKERS [EVERY_MS]]]]      defaults: 100 50 3 2000
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
export PATH="$PWD/.venv/bin:$PATH"
export CHAOS_TASKS=${1:-100} CHAOS_KILLS=${2:-50} CHAOS_WORKERS=${3:-3} CHAOS_EVERY_MS=${4:-2000}
cargo test -q -p tubescribe --test faults -- --ignored --exact chaos_at_scale --nocapture 2>&1 |
  grep -E '^(CHAOS|test result|thread|  left|  right|assertion)' || true
