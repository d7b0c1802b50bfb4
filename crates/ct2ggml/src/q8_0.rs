//! ggml's `Q8_0` quantization, bit-exact: blocks of 32 values, each stored as an f16 scale `d`
//! followed by 32 `i8` quants, 34 bytes per block.
//!
//! This is `quantize_row_q8_0_ref` of ggml (`ggml/src/ggml-quants.c`; whisper.cpp 1.8.x,
//! vendored by whisper-rs-sys 0.15), the function whisper.cpp's `quantize` tool reaches
//! through `ggml_quantize_chunk` → `quantize_q8_0`:
//!
//! ```text
//! amax = max |x_j|            over the block's 32 values
//! d    = amax / 127           (f32)
//! id   = d != 0 ? 1/d : 0     (f32)
//! y.d  = fp32_to_fp16(d)      (round to nearest even)
//! y.qs[j] = roundf(x_j * id)  (round half away from zero)
//! ```
//!
//! The block layout is ggml's `block_q8_0` (`ggml/src/ggml-common.h`: `ggml_half d; int8_t
//! qs[QK8_0];`, `QK8_0 = 32`, no padding), little-endian. A dequantized value is
//! `f16_to_f32(d) · q`, so one value is off by at most `d/2` from rounding plus
//! `127 · |d − f16(d)|` from the stored scale, where `|d − f16(d)| ≤ d · 2⁻¹¹` for a normal
//! f16 (`d ≥ 2⁻¹⁴`, a block's `amax ≥ 0.0078`) and `≤ 2⁻²⁵` below (f16 subnormals): at most
//! `0.5621 · d`, or `d/2 + 127 · 2⁻²⁵` for tiny blocks.

use crate::f16;

/// Values per block (ggml's `QK8_0`).
pub const BLOCK: usize = 32;

/// Bytes per block: the f16 scale and 32 quants (`sizeof(block_q8_0)`).
pub const BLOCK_BYTES: usize = 2 + BLOCK;

/// ggml's tensor type number of `Q8_0` (`GGML_TYPE_Q8_0` in `ggml.h`), written in a tensor's
/// record.
pub const GGML_TYPE_Q8_0: i32 = 8;

/// ggml's file type number of "mostly Q8_0" (`GGML_FTYPE_MOSTLY_Q8_0` in `ggml.h`: every
/// tensor but the 1-D ones).
pub const GGML_FTYPE_MOSTLY_Q8_0: i32 = 7;

/// A row whose length is not a multiple of [`BLOCK`] (ggml asserts `k % QK8_0 == 0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0} values do not split into q8_0 blocks of 32")]
pub struct NotBlockAligned(pub usize);

/// Size in bytes of `n` values in Q8_0 (`n` a multiple of [`BLOCK`]).
pub fn bytes_for(n: usize) -> usize {
    n / BLOCK * BLOCK_BYTES
}

/// Quantizes `x` (a whole number of blocks) and appends the blocks to `out`.
///
/// Errors with [`NotBlockAligned`] when `x.len()` is not a multiple of 32; nothing is appended
/// then.
pub fn quantize_into(x: &[f32], out: &mut Vec<u8>) -> Result<(), NotBlockAligned> {
    if x.len() % BLOCK != 0 {
        return Err(NotBlockAligned(x.len()));
    }
    out.reserve(bytes_for(x.len()));
    for block in x.chunks_exact(BLOCK) {
        let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16::f32_to_f16(d).to_le_bytes());
        // `as i8` saturates; |x · id| ≤ 127 (+ rounding) by construction, as in ggml.
        out.extend(block.iter().map(|v| (v * id).round() as i8 as u8));
    }
    Ok(())
}

/// Quantizes `x` (a whole number of blocks) into a new buffer; see [`quantize_into`].
pub fn quantize(x: &[f32]) -> Result<Vec<u8>, NotBlockAligned> {
    let mut out = Vec::new();
    quantize_into(x, &mut out)?;
    Ok(out)
}

/// The values Q8_0 blocks stand for: `f16_to_f32(d) · q` (ggml's `dequantize_row_q8_0`).
/// Trailing bytes that do not fill a block are ignored.
pub fn dequantize(blocks: &[u8]) -> Vec<f32> {
    blocks
        .chunks_exact(BLOCK_BYTES)
        .flat_map(|b| {
            let d = f16::f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
            b[2..].iter().map(move |&q| d * (q as i8) as f32)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic stream of values in (-1, 1) (a 64-bit LCG, as in the other tests).
    fn noise(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn a_known_block_has_exact_bytes() {
        // x_j = j: amax 31, d = 31/127 = 0.244094…, stored as f16 0x33D0 (0.24414…);
        // q_j = round(j · 127/31).
        let x: Vec<f32> = (0..32).map(|j| j as f32).collect();
        let got = quantize(&x).unwrap();
        let mut want = vec![0xD0, 0x33];
        want.extend([
            0u8, 4, 8, 12, 16, 20, 25, 29, 33, 37, 41, 45, 49, 53, 57, 61, 66, 70, 74, 78, 82, 86,
            90, 94, 98, 102, 107, 111, 115, 119, 123, 127,
        ]);
        assert_eq!(got, want);

        // Negative extreme and halves: d = 1 exactly, so q = round(x), half away from zero
        // (C's roundf), not to even.
        let mut x = vec![0.0f32; 32];
        x[0] = -127.0;
        x[1] = 0.5;
        x[2] = -0.5;
        x[3] = 2.5;
        x[4] = -2.5;
        x[5] = 1.49;
        let got = quantize(&x).unwrap();
        assert_eq!(&got[..2], &[0x00, 0x3C]); // f16 1.0
        assert_eq!(
            got[2..8].iter().map(|&b| b as i8).collect::<Vec<_>>(),
            vec![-127, 1, -1, 3, -3, 1]
        );
        assert!(got[8..].iter().all(|&b| b == 0));
    }

    #[test]
    fn a_zero_block_is_all_zero_bytes() {
        assert_eq!(quantize(&[0.0; 64]).unwrap(), vec![0u8; 68]);
        assert_eq!(dequantize(&[0u8; 68]), vec![0.0; 64]);
    }

    #[test]
    fn round_trip_error_is_within_the_bound() {
        for (seed, scale) in [(1u64, 1.0f32), (2, 1e-3), (3, 40.0), (4, 1e-6), (5, 0.05)] {
            let x: Vec<f32> = noise(32 * 64, seed).iter().map(|v| v * scale).collect();
            let q = quantize(&x).unwrap();
            assert_eq!(q.len(), 64 * BLOCK_BYTES);
            let y = dequantize(&q);
            assert_eq!(y.len(), x.len());
            for (bx, by) in x.chunks(BLOCK).zip(y.chunks(BLOCK)) {
                let amax = bx.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let d = amax / 127.0;
                let scale_err = (d * 2f32.powi(-11)).max(2f32.powi(-25));
                let bound = 0.5 * d + 127.0 * scale_err + f32::EPSILON * amax;
                for (a, b) in bx.iter().zip(by) {
                    assert!((a - b).abs() <= bound, "{a} → {b} (d {d}, scale {scale})");
                }
                // The largest value keeps its sign and comes back to ±127 · d.
                let i = bx.iter().position(|v| v.abs() == amax).unwrap();
                let qi = q
                    [(bx.as_ptr() as usize - x.as_ptr() as usize) / 4 / BLOCK * BLOCK_BYTES + 2 + i]
                    as i8;
                assert_eq!(qi.unsigned_abs(), 127);
                assert_eq!(qi < 0, bx[i] < 0.0);
            }
        }
    }

    #[test]
    fn rows_that_are_not_whole_blocks_are_refused() {
        let mut out = vec![9u8];
        assert_eq!(
            quantize_into(&[1.0; 33], &mut out),
            Err(NotBlockAligned(33))
        );
        assert_eq!(out, vec![9u8]);
        assert_eq!(quantize(&[1.0; 31]), Err(NotBlockAligned(31)));
        assert_eq!(
            NotBlockAligned(31).to_string(),
            "31 values do not split into q8_0 blocks of 32"
        );
        assert_eq!(quantize(&[]), Ok(Vec::new()));
        assert_eq!(bytes_for(384 * 384), 384 * 384 / 32 * 34);
    }
}
