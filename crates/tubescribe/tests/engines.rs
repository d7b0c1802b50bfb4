//! The CTranslate2 engine against whisper.cpp, side by side on the same audio and the same
//! weights (issue 16), through the product's transcription (`AsrModel::transcribe_wav`: gate,
//! joins, chunks, words, loop cut):
//!
//! * on the shared English samples, one by one and joined into a ≈ 2-minute talk with pauses
//!   (several 30 s windows, so seeking and the previous-text prompt count), the ct2 engine's
//!   WER is at most whisper.cpp's + 0.5 point, with tiny.en and with base;
//! * its words are in time order and inside their segments;
//! * base identifies the Mandarin sample as Chinese on both engines, and the language guard
//!   refuses it on tiny.en with either engine.
//!
//! Needs the `ct2` feature and both forms of the models: `models/ggml-*.bin`
//! (`scripts/setup.sh --test`) and `models/ct2-*` (`scripts/ct2-setup.sh --models`).
#![cfg(feature = "ct2")]

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU8};
use std::sync::{Arc, OnceLock};

use common::*;
use tubescribe::domain::transcript::{word_error_rate, Segment};
use tubescribe::domain::ModelName;
use tubescribe::tools::asr::{AsrError, AsrModel, Engine, TranscribeOptions, WavTranscription};

/// The models loaded so far: engine, name, model.
type Loaded = Vec<(Engine, ModelName, &'static AsrModel)>;

/// The installed model `name` for `engine`, loaded once per test process.
fn load(engine: Engine, name: ModelName) -> &'static AsrModel {
    static MODELS: OnceLock<std::sync::Mutex<Loaded>> = OnceLock::new();
    let models = MODELS.get_or_init(Default::default);
    let mut models = models.lock().unwrap();
    if let Some((_, _, m)) = models.iter().find(|(e, n, _)| *e == engine && *n == name) {
        return m;
    }
    let path = repo_root().join("models").join(match engine {
        Engine::WhisperCpp => name.file_name(),
        Engine::Ct2 => name.ct2_dir_name(),
    });
    let m: &'static AsrModel = Box::leak(Box::new(
        AsrModel::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    ));
    assert_eq!(m.engine(), engine);
    models.push((engine, name, m));
    m
}

fn run(model: &AsrModel, wav: &Path) -> Result<WavTranscription, AsrError> {
    let opts = TranscribeOptions {
        threads: 2,
        ..TranscribeOptions::default()
    };
    model.transcribe_wav(
        wav,
        &opts,
        Arc::new(AtomicU8::new(0)),
        Arc::new(AtomicBool::new(false)),
    )
}

fn text(segs: &[Segment]) -> String {
    segs.iter()
        .map(|s| s.text.as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Words are in time order and inside their segment; segments start in order.
fn assert_words_hold(segs: &[Segment]) {
    let mut last = 0;
    for s in segs {
        assert!(!s.words.is_empty(), "segment without words: {s:?}");
        assert!(s.start_ms >= last, "segments out of order at {s:?}");
        last = s.start_ms;
        let mut w_last = s.start_ms;
        for w in &s.words {
            assert!(w.start_ms >= w_last && w.start_ms <= w.end_ms, "{s:?}");
            assert!(w.end_ms <= s.end_ms, "word past its segment: {s:?}");
            assert!((0.0..=1.0).contains(&w.p), "{w:?}");
            w_last = w.start_ms;
        }
    }
}

#[test]
fn ct2_wer_is_within_half_a_point_of_whisper_cpp() {
    let tmp = tempfile::tempdir().unwrap();
    let files = english_corpus(tmp.path());
    assert!(files.len() >= 6, "the English samples: {files:?}");
    for name in [ModelName::TinyEn, ModelName::Base] {
        let mut refs = Vec::new();
        let mut hyps: Vec<Vec<String>> = vec![Vec::new(), Vec::new()];
        for (wav, reference) in &files {
            refs.push(reference.clone());
            for (k, engine) in Engine::ALL.into_iter().enumerate() {
                let out = run(load(engine, name), wav).unwrap();
                assert_words_hold(&out.segments);
                let t = text(&out.segments);
                eprintln!(
                    "{name} {engine} {}: WER {:.1} % | {t}",
                    wav.file_name().unwrap().to_string_lossy(),
                    100.0 * word_error_rate(reference, &t)
                );
                hyps[k].push(t);
            }
        }
        let reference = refs.join(" ");
        let cpp = word_error_rate(&reference, &hyps[0].join(" "));
        let ct2 = word_error_rate(&reference, &hyps[1].join(" "));
        eprintln!(
            "{name}: WER whisper-cpp {:.2} %, ct2 {:.2} % over {} files",
            100.0 * cpp,
            100.0 * ct2,
            files.len()
        );
        assert!(
            ct2 <= cpp + 0.005,
            "{name}: ct2 WER {:.2} % > whisper.cpp {:.2} % + 0.5",
            100.0 * ct2,
            100.0 * cpp
        );
    }
}

#[test]
fn both_engines_identify_and_refuse_mandarin() {
    let zh = repo_root().join("../shared/samples/aishell-BAC009S0724W0121.wav");
    assert!(zh.is_file(), "{} is missing", zh.display());
    for engine in Engine::ALL {
        let base = load(engine, ModelName::Base);
        let out = run(base, &zh).unwrap();
        assert_eq!(out.language, "zh", "{engine}: {out:?}");
        assert!(!out.segments.is_empty(), "{engine}: no text");
        let pcm = tubescribe::tools::asr::read_wav_16k_mono(&zh).unwrap();
        let id = base.identify_language(&pcm, 2).unwrap();
        assert_eq!(id.language, "zh", "{engine}: {id:?}");
        assert!(id.p >= 0.5 && id.p_en < 0.2, "{engine}: {id:?}");
        let guarded = load(engine, ModelName::TinyEn).with_language_id(Arc::new(base.clone()));
        let err = run(&guarded, &zh).unwrap_err();
        assert!(
            matches!(&err, AsrError::UnsupportedLanguage { reason, .. }
                if reason.starts_with("the base model identified Chinese (zh, p = ")),
            "{engine}: {err}"
        );
    }
}
