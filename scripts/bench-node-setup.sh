#!/usr/bin/env bash
# Installs the Node BullMQ anchor for `tubescribe bench` (P5) into bench/node/node_modules
# from the committed lockfile. Bench-only: CI and the product never need it. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/../bench/node"
if [ -d node_modules/bullmq ] && [ node_modules/.package-lock.json -nt package-lock.json ]; then
  echo "[bench-node] already installed"; exit 0
fi
command -v npm >/dev/null || { echo "npm is required (apt-get install nodejs npm)" >&2; exit 1; }
npm ci --no-audit --no-fund --ignore-scripts
