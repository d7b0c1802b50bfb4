#!/usr/bin/env bash
# Measures what the native build buys (README: "Portable and native builds"): whisper.cpp
# transcription wall time of the portable build (the default) against the native one
# (GGML_NATIVE=ON), tiny.en and base, 2 threads, on ~2 min of real speech (the English clips of
# ../shared/samples, twice, 0.6 s apart). Each variant is built into its own target directory
# (portable: $CARGO_TARGET_DIR or target; native: target-native) so the runs can alternate:
# portable, native, portable, native… each in its own process, model load excluded; the table
# gives each variant's fastest run.
#   scripts/bench-native.sh [ROUNDS]      default 4 rounds
# BENCH_LOCK=FILE wraps every timed run in `flock FILE` (a machine shared with other benchmarks).
# Needs the models (scripts/setup.sh --test), sox and ffmpeg. Not part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
ROUNDS=${1:-4}
SAMPLES=${TUBESCRIBE_SAMPLES:-$ROOT/../shared/samples}
PORTABLE_TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
NATIVE_TARGET=$ROOT/target-native
log() { printf '\033[1m[bench-native]\033[0m %s\n' "$*" >&2; }
for m in tiny.en base; do
  [[ -f models/ggml-$m.bin ]] || { echo "bench-native: models/ggml-$m.bin is missing: scripts/setup.sh --test" >&2; exit 1; }
done
command -v sox >/dev/null && command -v ffmpeg >/dev/null || { echo "bench-native: sox and ffmpeg are required" >&2; exit 1; }

# Both builds (cargo at nice 15: it may share the machine with the timed runs of others).
# A target directory's whisper.cpp of the other kind is cleaned first (as scripts/setup.sh does).
build() { # TARGET_DIR GGML_NATIVE
  local cache
  for cache in "$1"/release/build/whisper-rs-sys-*/out/build/CMakeCache.txt; do
    [[ -f $cache ]] && ! grep -q "^GGML_NATIVE:[A-Z]*=$2\$" "$cache" &&
      CARGO_TARGET_DIR=$1 cargo clean --quiet -p whisper-rs-sys --release
  done
  log "cargo build --release --example engine_bench (GGML_NATIVE=$2, $1)"
  CARGO_TARGET_DIR=$1 GGML_NATIVE=$2 nice -n 15 cargo build --release --quiet -p tubescribe --example engine_bench
}
build "$PORTABLE_TARGET" OFF
build "$NATIVE_TARGET" ON

# ~2 min of real speech: the English clips twice, 16 kHz mono, 0.6 s of silence after each.
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
clips=(jfk librispeech-1272-128104-0000 librispeech-1995-1837-0001 librispeech-2412-153948-0000.16k
  ljspeech-LJ001-0001 ljspeech-LJ001-0007)
list=()
sox -n -r 16000 -c 1 -b 16 "$WORK/gap.wav" trim 0 0.6
for c in "${clips[@]}"; do
  ffmpeg -v error -y -i "$SAMPLES/$c.wav" -ac 1 -ar 16000 -sample_fmt s16 "$WORK/$c.wav"
done
for _ in 1 2; do for c in "${clips[@]}"; do list+=("$WORK/$c.wav" "$WORK/gap.wav"); done; done
sox "${list[@]}" "$WORK/speech.wav"
log "$(soxi -D "$WORK/speech.wav") s of speech, $ROUNDS alternating rounds"

run() { # TARGET_DIR MODEL → one wall time in seconds
  local cmd=("$1/release/examples/engine_bench" "models/ggml-$2.bin" "$WORK/speech.wav" --threads 2)
  [[ -n ${BENCH_LOCK:-} ]] && cmd=(flock "$BENCH_LOCK" "${cmd[@]}")
  "${cmd[@]}" | python3 -c 'import json, sys; print(json.load(sys.stdin)["walls_s"][0])'
}
printf '%-8s %-9s %-6s %s\n' model build min "runs (wall s)"
for m in tiny.en base; do
  declare -a p=() n=()
  for ((i = 0; i < ROUNDS; i++)); do
    p+=("$(run "$PORTABLE_TARGET" "$m")")
    n+=("$(run "$NATIVE_TARGET" "$m")")
    log "$m round $((i + 1)): portable ${p[-1]} s, native ${n[-1]} s"
  done
  python3 - "$m" "${p[*]}" "${n[*]}" <<'EOF'
import sys
m, p, n = sys.argv[1], [float(x) for x in sys.argv[2].split()], [float(x) for x in sys.argv[3].split()]
fmt = lambda xs: " ".join(f"{x:.2f}" for x in xs)
print(f"{m:<8} portable  {min(p):.2f}  {fmt(p)}")
print(f"{m:<8} native    {min(n):.2f}  {fmt(n)}")
print(f"{m:<8} portable ÷ native = {min(p) / min(n):.3f}")
EOF
done
