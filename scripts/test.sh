#!/usr/bin/env bash
# Sets up the test prerequisites and runs every check CI runs: fmt, clippy, the test suite,
# the browser test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
export PATH="$PWD/.venv/bin:$PATH" TUBESCRIBE_PYTHON="$PWD/.venv/bin/python"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo test --workspace -- --test-threads 2
# whisper.cpp in the binary is portable (no AVX-512; native with GGML_NATIVE=ON): objdump, ~15 s.
scripts/check-portable.sh "${CARGO_TARGET_DIR:-target}/debug/tubescribe"
# The suite above runs on CTranslate2, the default engine (the `ct2` cargo feature, on by
# default), and compares whisper.cpp with it (tests/engines.rs). The transcript's own tests run
# on whisper.cpp too, and a build without the `ct2` feature lints clean.
TUBESCRIBE_ENGINE=whisper-cpp cargo test -p tubescribe --test transcript_quality -- --test-threads 2
cargo clippy -p tubescribe --all-targets --no-default-features --quiet -- -D warnings
# The web page in headless Chromium (screenshot in test-output/browser.png).
node tests/browser/web.test.mjs
# Its harder states: 401 and the saved token, retrying, cancelled, long errors at 400 and 1400 px
# (screenshots test-output/browser-400.png, browser-1400.png).
node tests/browser/web-states.test.mjs
# Uploads: the file picker and drag-and-drop, both tasks complete (test-output/browser-upload.png).
node tests/browser/upload.test.mjs
