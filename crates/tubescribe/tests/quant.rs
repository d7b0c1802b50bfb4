//! whisper.cpp's q8_0 model files (issue 16): what `model install tiny.en-q8_0` writes.
//!
//! * `ct2ggml`'s q8_0 blocks are byte for byte ggml's own (`ggml_quantize_chunk`, the function
//!   whisper.cpp's `quantize` tool calls, linked here through whisper-rs-sys);
//! * the q8_0 files load in whisper.cpp (whisper-rs) and transcribe the shared English samples
//!   — one by one and as a ≈ 2-minute talk — with a WER at most 0.5 point above their f16
//!   files', for tiny.en and base.
//!
//! The q8_0 files are installed into a temporary directory from the repository's f16 files
//! (`scripts/setup.sh --test`) through the product's install path: quantized, then checked
//! against their pinned size and SHA-256.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8};
use std::sync::Arc;

use common::*;
use tubescribe::domain::transcript::word_error_rate;
use tubescribe::domain::{ModelFile, ModelName, Quant};
use tubescribe::tools::asr::{AsrModel, TranscribeOptions};
use whisper_rs::whisper_rs_sys as sys;

/// The repository's f16 ggml file of `name` (`scripts/setup.sh --test`), whatever the engine.
fn ggml_f16(name: ModelName) -> PathBuf {
    let p = repo_root().join("models").join(name.file_name());
    assert!(
        p.is_file(),
        "{} is missing: run scripts/setup.sh --test",
        p.display()
    );
    p
}

/// ggml's q8_0 quantization of `x` as rows of `n_per_row` values.
fn ggml_q8_0(x: &[f32], n_per_row: usize) -> Vec<u8> {
    let nrows = x.len() / n_per_row;
    let mut out = vec![0u8; x.len() / 32 * 34];
    // SAFETY: `x` holds nrows · n_per_row floats and `out` the 34 bytes per 32 values that
    // q8_0 writes; ggml reads and writes nothing else (no importance matrix for q8_0).
    let n = unsafe {
        sys::ggml_quantize_chunk(
            sys::ggml_type_GGML_TYPE_Q8_0,
            x.as_ptr(),
            out.as_mut_ptr().cast(),
            0,
            nrows as i64,
            n_per_row as i64,
            std::ptr::null(),
        )
    };
    assert_eq!(n, out.len());
    out
}

#[test]
fn ct2ggml_q8_0_is_byte_for_byte_ggml_q8_0() {
    let mut seed = 7u64;
    let mut next = || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    };
    let mut cases: Vec<(String, Vec<f32>, usize)> = Vec::new();
    for (scale, n_per_row) in [(1.0f32, 384), (0.02, 512), (1e-5, 64), (300.0, 32)] {
        let x: Vec<f32> = (0..n_per_row * 8).map(|_| next() * scale).collect();
        cases.push((format!("noise ×{scale}, rows of {n_per_row}"), x, n_per_row));
    }
    // Exact halves (round half away from zero), an all-zero block, a lone outlier, ±0.
    let mut halves: Vec<f32> = (0..64).map(|i| (i as f32 - 32.0) + 0.5).collect();
    halves[0] = 127.0;
    halves[32] = -127.0;
    cases.push(("halves".into(), halves, 64));
    let mut spiky = vec![0.0f32; 96];
    spiky[40] = 1e3;
    spiky[41] = 3.0;
    spiky[70] = -0.0;
    cases.push(("spiky".into(), spiky, 96));
    // Real weights: the first rows of tiny.en's f16 token embedding, rounded as in the file.
    let embedding = first_token_embedding_rows(&ggml_f16(ModelName::TinyEn), 64);
    cases.push(("tiny.en token embedding".into(), embedding, 384));
    for (what, x, n_per_row) in &cases {
        let ours = ct2ggml::q8_0::quantize(x).unwrap();
        assert_eq!(ours, ggml_q8_0(x, *n_per_row), "{what}");
    }
}

/// The first `rows` rows of `decoder.token_embedding.weight` (n_text_state 384 values each)
/// of the f16 ggml file at `path`, as f32.
fn first_token_embedding_rows(path: &Path, rows: usize) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    let name = b"decoder.token_embedding.weight";
    let at = bytes
        .windows(name.len())
        .position(|w| w == name)
        .expect("token embedding")
        + name.len();
    // The record before the name: n_dims 2, name length, type 1 (f16), 384, n_vocab.
    let ttype = i32::from_le_bytes(bytes[at - name.len() - 12..][..4].try_into().unwrap());
    assert_eq!(ttype, 1, "an f16 file");
    bytes[at..at + rows * 384 * 2]
        .chunks_exact(2)
        .map(|c| ct2ggml::f16::f16_to_f32(u16::from_le_bytes([c[0], c[1]])))
        .collect()
}

/// Installs `name`'s q8_0 file into `dir` from the repository's f16 file (linked into `dir`)
/// through the product's install path, which checks the pinned size and SHA-256.
fn install_q8_0(name: ModelName, dir: &Path) -> PathBuf {
    let f16 = ggml_f16(name);
    let link = dir.join(name.file_name());
    if !link.exists() {
        std::os::unix::fs::symlink(&f16, &link).unwrap();
    }
    let file = ModelFile::new(name, Quant::Q8_0);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let p = rt
        .block_on(tubescribe::tools::model::install(
            file,
            dir,
            Path::new("/nonexistent/python3"),
        ))
        .unwrap();
    assert_eq!(std::fs::metadata(&p).unwrap().len(), file.size());
    p
}

fn transcript(model: &AsrModel, wav: &Path) -> String {
    let opts = TranscribeOptions {
        threads: 2,
        ..TranscribeOptions::default()
    };
    let out = model
        .transcribe_wav(
            wav,
            &opts,
            Arc::new(AtomicU8::new(0)),
            Arc::new(AtomicBool::new(false)),
        )
        .unwrap();
    out.segments
        .iter()
        .map(|s| s.text.as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn q8_0_wer_is_within_half_a_point_of_f16() {
    if engine() != tubescribe::tools::asr::Engine::WhisperCpp {
        eprintln!("q8_0 files are whisper.cpp's: skipped for the ct2 engine");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let models = tempfile::tempdir().unwrap();
    let files = english_corpus(tmp.path());
    assert!(files.len() >= 6, "the English samples: {files:?}");
    for name in [ModelName::TinyEn, ModelName::Base] {
        let f16 = AsrModel::load(&ggml_f16(name)).unwrap();
        let q8 = AsrModel::load(&install_q8_0(name, models.path())).unwrap();
        assert_eq!(q8.is_multilingual(), f16.is_multilingual());
        let (mut refs, mut h16, mut h8) = (Vec::new(), Vec::new(), Vec::new());
        for (wav, reference) in &files {
            let (a, b) = (transcript(&f16, wav), transcript(&q8, wav));
            eprintln!(
                "{name} {}: WER f16 {:.1} %, q8_0 {:.1} % | {b}",
                wav.file_name().unwrap().to_string_lossy(),
                100.0 * word_error_rate(reference, &a),
                100.0 * word_error_rate(reference, &b),
            );
            assert!(
                !b.trim().is_empty(),
                "{name} q8_0: no text for {}",
                wav.display()
            );
            refs.push(reference.clone());
            h16.push(a);
            h8.push(b);
        }
        let reference = refs.join(" ");
        let (w16, w8) = (
            word_error_rate(&reference, &h16.join(" ")),
            word_error_rate(&reference, &h8.join(" ")),
        );
        eprintln!(
            "{name}: WER f16 {:.2} %, q8_0 {:.2} % over {} files",
            100.0 * w16,
            100.0 * w8,
            files.len()
        );
        assert!(
            w8 <= w16 + 0.005,
            "{name}: q8_0 WER {:.2} % > f16 {:.2} % + 0.5",
            100.0 * w8,
            100.0 * w16
        );
    }
}
