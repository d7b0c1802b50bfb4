//! Side-by-side check of the product's transcription against whisper.cpp called directly:
//! `cargo run --release --example asr_probe -- MODEL WAV [REFERENCE.txt]`.
//!
//! Prints each segment of the product's run (`AsrModel::transcribe_wav`: gate, joins, chunks,
//! mapping, loop cut), then for both runs the number of segments, the share ending in `.?!`
//! and, with a reference, the WER.

use std::sync::atomic::{AtomicBool, AtomicU8};
use std::sync::Arc;

use tubescribe::domain::transcript::word_error_rate;
use tubescribe::tools::asr::{read_wav_16k_mono, AsrModel, TranscribeOptions};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    anyhow::ensure!(
        args.len() >= 2,
        "usage: asr_probe MODEL WAV [REFERENCE.txt]"
    );
    let model = AsrModel::load(args[0].as_ref())?;
    let reference = args.get(2).map(std::fs::read_to_string).transpose()?;
    let opts = TranscribeOptions {
        threads: 2,
        ..TranscribeOptions::default()
    };
    let flags = || (Arc::new(AtomicU8::new(0)), Arc::new(AtomicBool::new(false)));
    let (p, a) = flags();
    let t = std::time::Instant::now();
    let product = model.transcribe_wav(args[1].as_ref(), &opts, p, a)?;
    let product_s = t.elapsed().as_secs_f64();
    for s in &product.segments {
        println!("[{:>8} → {:>8}] {}", s.start_ms, s.end_ms, s.text);
    }
    println!(
        "coverage {:.3} of {} ms speech; uncovered {:?}; retried {}, recovered {}; loops cut {}",
        product.coverage.ratio(),
        product.coverage.speech_ms,
        product.coverage.uncovered_ms,
        product.coverage.retried,
        product.coverage.recovered,
        product.loops_cut
    );
    let pcm = read_wav_16k_mono(args[1].as_ref())?;
    let (p, a) = flags();
    let t = std::time::Instant::now();
    let direct = model.transcribe(&pcm, &opts, p, a)?;
    let direct_s = t.elapsed().as_secs_f64();
    let report = |name: &str, texts: Vec<&str>, wall: f64| {
        let punct = texts
            .iter()
            .filter(|t| t.trim_end().ends_with(['.', '?', '!']))
            .count();
        let all = texts.join(" ");
        let wer = reference
            .as_deref()
            .map(|r| format!("{:.1} %", 100.0 * word_error_rate(r, &all)))
            .unwrap_or_else(|| "-".into());
        println!(
            "{name:<8} segments {:>3}  punctuated {:>3}  WER {wer}  wall {wall:.1} s",
            texts.len(),
            punct
        );
    };
    report(
        "product",
        product.segments.iter().map(|s| s.text.as_str()).collect(),
        product_s,
    );
    report(
        "direct",
        direct.segments.iter().map(|s| s.text.as_str()).collect(),
        direct_s,
    );
    Ok(())
}
