#!/usr/bin/env bash
# Checks which instructions whisper.cpp got in a built binary (README: "Portable and native
# builds"): in the portable build (the default, GGML_NATIVE=OFF) its code must hold no AVX-512
# instruction; in the native build (GGML_NATIVE=ON) on a CPU with AVX-512 it must hold some (which
# also shows that this check sees them).
#   scripts/check-portable.sh [BINARY]   default: $CARGO_TARGET_DIR/release/tubescribe
# The kind expected is the one GGML_NATIVE asks for now, as for the build. whisper.cpp's code is
# told apart from the rest of the binary by its function names: those defined in the static
# libraries whisper-rs-sys built next to it (<profile>/build/whisper-rs-sys-*/out/lib). The rest
# may hold AVX-512 legitimately: aws-lc's and ring's assembly picks it at run time by CPUID.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-${CARGO_TARGET_DIR:-target}/release/tubescribe}
die() { echo "check-portable: $*" >&2; exit 1; }
[[ -x $BIN ]] || die "$BIN is not a built binary"
if [[ $(uname -m) != x86_64 ]]; then
  echo "check-portable: $(uname -m): AVX-512 is x86 only, nothing to check"
  exit 0
fi
command -v objdump >/dev/null && command -v nm >/dev/null || die "objdump and nm (binutils) are required"
cmake_bool() { case "${1^^}" in ON | YES | TRUE | Y | [1-9]*) echo ON ;; *) echo OFF ;; esac; }
want=$(cmake_bool "${GGML_NATIVE:-OFF}")

# whisper.cpp's functions: every function symbol its archives define, in the binary's profile
# directory (the binary's own directory, or its parent for examples/ and deps/).
dir=$(dirname "$BIN")
[[ -d $dir/build ]] || dir=$(dirname "$dir")
libs=$(ls -d "$dir"/build/whisper-rs-sys-*/out/lib 2>/dev/null) ||
  die "no whisper-rs-sys build next to $BIN ($dir/build/whisper-rs-sys-*/out/lib)"
syms=$(mktemp)
trap 'rm -f "$syms"' EXIT
for d in $libs; do nm --defined-only "$d"/*.a 2>/dev/null; done | awk '$2 ~ /^[Tt]$/ {print $3}' | sort -u >"$syms"
[[ -s $syms ]] || die "no function symbols in $libs"

# AVX-512 in AT&T syntax: a zmm register, a mask register (%k0-%k7), xmm/ymm 16-31 (EVEX-only),
# an embedded broadcast {1toN}, or an EVEX-only mnemonic (ternary logic, two-table permutes).
read -r ggml rest < <(objdump -d --no-show-raw-insn "$BIN" | awk -v syms="$syms" '
  BEGIN { while ((getline s < syms) > 0) ours[s] = 1 }
  /^[0-9a-f]+ <.*>:$/ { name = $2; gsub(/^<|>:$/, "", name); inside = (name in ours); next }
  /%zmm|%k[0-7]|%[xy]mm(1[6-9]|2[0-9]|3[01])|\{1to[0-9]+\}|\tvpternlog|\tvperm[it]2/ {
    if (inside) g++; else r++
  }
  END { print g + 0, r + 0 }')
echo "check-portable: $BIN: $ggml AVX-512 instructions in whisper.cpp, $rest elsewhere; GGML_NATIVE=$want"
if [[ $want == OFF ]]; then
  ((ggml == 0)) || die "the portable build's whisper.cpp holds $ggml AVX-512 instructions: built with \
GGML_NATIVE=ON before? whisper-rs-sys does not rebuild when GGML_* change: cargo clean -p whisper-rs-sys"
elif grep -qw avx512f /proc/cpuinfo; then
  ((ggml > 0)) || die "GGML_NATIVE=ON on an AVX-512 CPU, but whisper.cpp holds no AVX-512 instruction: \
cargo clean -p whisper-rs-sys and build again"
fi
