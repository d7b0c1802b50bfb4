//! Measures the language guard: `cargo run --example lang_probe -- MODEL [LID_MODEL] WAV…`.
//!
//! For each 16 kHz mono WAV prints the multilingual model's language identification (top
//! language, p, p(en)) and the outcome of `AsrModel::transcribe_wav` on `MODEL` with the
//! language guard (segments, or the refusal). Without `LID_MODEL` (a second `.bin`) the guard
//! uses the text rules only.

use std::sync::atomic::{AtomicBool, AtomicU8};
use std::sync::Arc;

use tubescribe::tools::asr::{AsrModel, TranscribeOptions};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    anyhow::ensure!(
        args.len() >= 2,
        "usage: lang_probe MODEL [LID_MODEL.bin] WAV…"
    );
    let mut model = AsrModel::load(args[0].as_ref())?;
    let mut wavs = &args[1..];
    if args[1].ends_with(".bin") {
        model = model.with_language_id(Arc::new(AsrModel::load(args[1].as_ref())?));
        wavs = &args[2..];
    }
    let opts = TranscribeOptions {
        threads: 2,
        ..TranscribeOptions::default()
    };
    for wav in wavs {
        if let Some(lid) = model.language_id_model() {
            let pcm = tubescribe::tools::asr::read_wav_16k_mono(wav.as_ref())?;
            let head = &pcm[..pcm.len().min(30 * 16_000)];
            println!(
                "{wav}: whole-file LID {:?}",
                lid.identify_language(head, 2)?
            );
        }
        if std::env::var_os("RAW").is_some() {
            let pcm = tubescribe::tools::asr::read_wav_16k_mono(wav.as_ref())?;
            let (p, a) = (Arc::new(AtomicU8::new(0)), Arc::new(AtomicBool::new(false)));
            for s in model.transcribe(&pcm, &opts, p, a)?.segments {
                println!("  raw [{:>7} → {:>7}] {}", s.start_ms, s.end_ms, s.text);
            }
        }
        let t = std::time::Instant::now();
        let (p, a) = (Arc::new(AtomicU8::new(0)), Arc::new(AtomicBool::new(false)));
        match model.transcribe_wav(wav.as_ref(), &opts, p, a) {
            Ok(out) => {
                println!(
                    "{wav}: ok in {:.1} s, {} segments, language_id {:?}, loops cut {}, dropped stock {}, mean p {:?}",
                    t.elapsed().as_secs_f64(),
                    out.segments.len(),
                    out.language_id,
                    out.loops_cut,
                    out.dropped_stock.len(),
                    out.mean_token_p
                );
                for s in out.segments.iter().take(30) {
                    println!("  [{:>7} → {:>7}] {}", s.start_ms, s.end_ms, s.text);
                }
            }
            Err(e) => println!("{wav}: refused in {:.1} s: {e}", t.elapsed().as_secs_f64()),
        }
    }
    Ok(())
}
