//! IEEE 754 binary16 ("half") <-> binary32 conversions, bit-exact and without dependencies.
//!
//! f32 → f16 rounds to nearest, ties to even (what numpy's `astype(np.float16)` and the
//! hardware `vcvtps2ph` with the default rounding mode do); NaN stays NaN (quiet, sign kept),
//! overflow becomes ±infinity, and tiny values become f16 subnormals or ±0.

/// Converts one f16 bit pattern to the f32 with exactly the same value (always exact).
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h as u32) & 0x8000) << 16;
    let exp = ((h >> 10) & 0x1f) as u32;
    let man = (h & 0x03ff) as u32;
    let bits = match (exp, man) {
        (0, 0) => sign,
        (0, _) => {
            // Subnormal: value = man · 2^-24. Normalise it into an f32.
            let shift = man.leading_zeros() - 21; // bring the top set bit to bit 10
            let man = (man << shift) & 0x03ff;
            let exp = 127 - 15 + 1 - shift;
            sign | (exp << 23) | (man << 13)
        }
        (0x1f, 0) => sign | 0x7f80_0000,
        (0x1f, _) => sign | 0x7fc0_0000 | (man << 13),
        _ => sign | ((exp + 127 - 15) << 23) | (man << 13),
    };
    f32::from_bits(bits)
}

/// Converts an f32 to the nearest f16 bit pattern, ties to even.
pub fn f32_to_f16(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32;
    let man = bits & 0x007f_ffff;

    if exp == 0xff {
        // Infinity or NaN (keep NaN quiet and non-zero).
        return if man == 0 {
            sign | 0x7c00
        } else {
            sign | 0x7e00 | (man >> 13) as u16
        };
    }
    // Unbiased exponent.
    let e = exp - 127;
    if e > 15 {
        return sign | 0x7c00; // overflow → infinity
    }
    if e >= -14 {
        // Normal f16 range: keep 10 mantissa bits, round the 13 dropped bits.
        let half_exp = (e + 15) as u32;
        let mut h = (half_exp << 10) | (man >> 13);
        let rest = man & 0x1fff;
        if rest > 0x1000 || (rest == 0x1000 && (h & 1) == 1) {
            h += 1; // may carry into the exponent, up to infinity: both are correct
        }
        return sign | h as u16;
    }
    // Subnormal f16 (or zero): value = m · 2^-24 with m in 0..1024.
    if e < -25 {
        return sign; // below half of the smallest subnormal → ±0
    }
    let full = man | 0x0080_0000; // implicit 1, value = full · 2^(e-23)
    let shift = (-e - 14 + 13) as u32; // 14..=24 bits dropped
    let mut h = full >> shift;
    let rest = full & ((1u32 << shift) - 1);
    let halfway = 1u32 << (shift - 1);
    if rest > halfway || (rest == halfway && (h & 1) == 1) {
        h += 1;
    }
    sign | h as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_values() {
        assert_eq!(f32_to_f16(0.0), 0x0000);
        assert_eq!(f32_to_f16(-0.0), 0x8000);
        assert_eq!(f32_to_f16(1.0), 0x3c00);
        assert_eq!(f32_to_f16(-2.0), 0xc000);
        assert_eq!(f32_to_f16(65504.0), 0x7bff); // largest finite f16
        assert_eq!(f32_to_f16(6.103_515_6e-5), 0x0400); // smallest normal 2^-14
        assert_eq!(f32_to_f16(5.960_464_5e-8), 0x0001); // smallest subnormal 2^-24
        assert_eq!(f32_to_f16(f32::INFINITY), 0x7c00);
        assert_eq!(f32_to_f16(f32::NEG_INFINITY), 0xfc00);
        assert!(f16_to_f32(f32_to_f16(f32::NAN)).is_nan());
    }

    #[test]
    fn rounding_ties_to_even() {
        // 1 + 2^-11 is exactly between 1.0 (0x3c00, even) and 1 + 2^-10 (0x3c01).
        assert_eq!(f32_to_f16(1.0 + 2f32.powi(-11)), 0x3c00);
        // 1 + 3·2^-11 is between 0x3c01 (odd) and 0x3c02 (even) → 0x3c02.
        assert_eq!(f32_to_f16(1.0 + 3.0 * 2f32.powi(-11)), 0x3c02);
        // Just above the tie rounds up.
        assert_eq!(f32_to_f16(1.0 + 2f32.powi(-11) + 2f32.powi(-20)), 0x3c01);
        // 65520 is the tie between 65504 and 2^16 → rounds to even = infinity.
        assert_eq!(f32_to_f16(65520.0), 0x7c00);
        assert_eq!(f32_to_f16(65519.0), 0x7bff);
        // Subnormal ties: 2^-25 is half the smallest subnormal → 0 (even); 3·2^-25 → 2·2^-24.
        assert_eq!(f32_to_f16(2f32.powi(-25)), 0x0000);
        assert_eq!(f32_to_f16(3.0 * 2f32.powi(-25)), 0x0002);
        assert_eq!(f32_to_f16(2f32.powi(-25) + 2f32.powi(-40)), 0x0001);
        // Largest subnormal rounding up into the smallest normal.
        assert_eq!(f32_to_f16(2f32.powi(-14) - 2f32.powi(-26)), 0x0400);
    }

    #[test]
    fn every_f16_round_trips() {
        for h in 0..=u16::MAX {
            let x = f16_to_f32(h);
            if x.is_nan() {
                assert!(f16_to_f32(f32_to_f16(x)).is_nan());
            } else {
                assert_eq!(f32_to_f16(x), h, "h={h:#06x} x={x}");
            }
        }
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x03ff), 1023.0 * 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x3555), 0.333_251_95);
    }
}
