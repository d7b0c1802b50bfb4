//! The Whisper mel filterbank, computed instead of shipped.
//!
//! OpenAI's `whisper/assets/mel_filters.npz` was made with
//! `librosa.filters.mel(sr=16000, n_fft=400, n_mels=80|128)`: the Slaney mel scale (linear below
//! 1000 Hz at 200/3 Hz per mel, logarithmic above with a step of ln(6.4)/27 per mel), triangular
//! filters between `n_mels + 2` mel-spaced edge frequencies, and Slaney area normalisation
//! (each filter multiplied by `2 / (f[i+2] − f[i])`). This module follows librosa 0.10's
//! `filters.mel` / `mel_frequencies` / `hz_to_mel` / `mel_to_hz` step for step, in f64
//! (numpy's `linspace` = `i · step + start` with the last point set to `stop`), and stores
//! each weight once as f32 after the normalisation.

/// Sample rate Whisper models expect, in Hz.
pub const SAMPLE_RATE: u32 = 16_000;
/// FFT window length Whisper uses, in samples (25 ms at 16 kHz).
pub const N_FFT: usize = 400;
/// Number of FFT bins, `N_FFT / 2 + 1` = 201: the column count of the filter matrix.
pub const N_FREQS: usize = N_FFT / 2 + 1;

const F_SP: f64 = 200.0 / 3.0;
const MIN_LOG_HZ: f64 = 1000.0;

fn logstep() -> f64 {
    6.4f64.ln() / 27.0
}

/// Hz → Slaney mel (librosa `hz_to_mel(htk=False)`).
pub fn hz_to_mel(hz: f64) -> f64 {
    let min_log_mel = MIN_LOG_HZ / F_SP;
    if hz >= MIN_LOG_HZ {
        min_log_mel + (hz / MIN_LOG_HZ).ln() / logstep()
    } else {
        hz / F_SP
    }
}

/// Slaney mel → Hz (librosa `mel_to_hz(htk=False)`).
pub fn mel_to_hz(mel: f64) -> f64 {
    let min_log_mel = MIN_LOG_HZ / F_SP;
    if mel >= min_log_mel {
        MIN_LOG_HZ * (logstep() * (mel - min_log_mel)).exp()
    } else {
        F_SP * mel
    }
}

/// The `n_mels × 201` filter matrix, row-major (row = mel band, column = FFT bin of 40 Hz),
/// for 16 kHz audio and a 400-sample FFT, from 0 Hz to 8000 Hz. Values are unitless weights.
pub fn mel_filters(n_mels: usize) -> Vec<f32> {
    let sr = SAMPLE_RATE as f64;
    // np.fft.rfftfreq(n=400, d=1/sr): i * (1 / (n * d))
    let d = 1.0 / sr;
    let val = 1.0 / (N_FFT as f64 * d);
    let fftfreqs: Vec<f64> = (0..N_FREQS).map(|i| i as f64 * val).collect();

    // mel_frequencies(n_mels + 2, fmin=0, fmax=sr/2)
    let n = n_mels + 2;
    let min_mel = hz_to_mel(0.0);
    let max_mel = hz_to_mel(sr / 2.0);
    let step = (max_mel - min_mel) / (n - 1) as f64;
    let mel_f: Vec<f64> = (0..n)
        .map(|i| {
            let m = if i == n - 1 {
                max_mel
            } else {
                i as f64 * step + min_mel
            };
            mel_to_hz(m)
        })
        .collect();

    let mut out = Vec::with_capacity(n_mels * N_FREQS);
    for i in 0..n_mels {
        let fdiff_lo = mel_f[i + 1] - mel_f[i];
        let fdiff_hi = mel_f[i + 2] - mel_f[i + 1];
        let enorm = 2.0 / (mel_f[i + 2] - mel_f[i]);
        for &f in &fftfreqs {
            let lower = -(mel_f[i] - f) / fdiff_lo;
            let upper = (mel_f[i + 2] - f) / fdiff_hi;
            let w = lower.min(upper).max(0.0);
            out.push((w * enorm) as f32);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_round_trips() {
        assert!((hz_to_mel(1000.0) - 15.0).abs() < 1e-12);
        assert!((hz_to_mel(8000.0) - 45.245_640_471_924_965).abs() < 1e-12);
        for hz in [0.0, 123.4, 999.9, 1000.0, 4321.0, 8000.0] {
            assert!((mel_to_hz(hz_to_mel(hz)) - hz).abs() < 1e-9);
        }
    }

    #[test]
    fn matches_openai_mel_filters_npz() {
        // Reference values from OpenAI's whisper/assets/mel_filters.npz ("mel_80").
        let m = mel_filters(80);
        assert_eq!(m.len(), 80 * 201);
        let at = |r: usize, c: usize| m[r * 201 + c];
        // Exact f32 values from the npz (this computation matches 15,962 of the 16,080 values
        // bit for bit; the other 118 differ by 1 ulp, max 1.9e-9, because librosa rounds to f32
        // before the normalisation and this code after it).
        assert_eq!(at(0, 0), 0.0);
        assert_eq!(at(0, 1), 0.024_862_595);
        assert_eq!(at(1, 1), 0.001_990_822);
        assert_eq!(at(1, 2), 0.022_871_772);
        assert_eq!(at(79, 190), 0.002_232_055);
        assert_eq!(at(40, 50), 0.0);
        assert_eq!(at(79, 200), 0.0);
        let row_max = |r: usize| (0..201).map(|c| at(r, c)).fold(0.0f32, f32::max);
        let global_max = m.iter().copied().fold(0.0f32, f32::max);
        assert!((global_max - 0.025_880_683).abs() < 1e-8, "{global_max}"); // the npz's largest
                                                                            // Log region: filters get wider, so their peaks get lower.
        assert!(row_max(79) < row_max(40));
        assert!(m.iter().all(|v| v.is_finite() && *v >= 0.0));
    }
}
