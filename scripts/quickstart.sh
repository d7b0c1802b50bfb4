#!/usr/bin/env bash
# Quick start: set everything up, then process the given YouTube URLs or media files.
#   scripts/quickstart.sh https://www.youtube.com/watch?v=jNQXAC9IVRw
#   scripts/quickstart.sh ../shared/samples/jfk.wav        (offline)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH" TUBESCRIBE_PYTHON="$PWD/.venv/bin/python"
args=()
for a in "$@"; do
  # Relative file paths are relative to where the user ran the script.
  if [[ -e "$OLDPWD/$a" && $a != /* ]]; then args+=("$OLDPWD/$a"); else args+=("$a"); fi
done
exec "${CARGO_TARGET_DIR:-target}/release/tubescribe" process "${args[@]}"
