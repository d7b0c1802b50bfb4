//! One engine, one model, one WAV, through the product's transcription
//! (`AsrModel::transcribe_wav`: gate, joins, chunks, words, loop cut), timed:
//! `cargo run --release --example engine_bench -- MODEL WAV [options]`.
//!
//! MODEL is a ggml file (whisper.cpp) or a CTranslate2 model directory (ct2). Options:
//! `--threads N` (default 2), `--precision int8|float32` (ct2 only, default int8),
//! `--runs N` (default 1), `--ref TEXT_FILE` (prints the WER against it), `--lid MODEL` (a
//! multilingual model attached as the language guard's). Prints one JSON line: load seconds,
//! the wall seconds of each run, segments, words, WER, the process's peak RSS in MB
//! (`getrusage`, model and all runs included) and the whisper.cpp build (`ggml_cpu`). Run one
//! process per configuration so that the peak RSS is that configuration's own.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use tubescribe::domain::transcript::word_error_rate;
use tubescribe::tools::asr::{is_ct2_model_dir, AsrModel, Ct2Precision, TranscribeOptions};

/// The peak resident set size of this process, in MB.
fn peak_rss_mb() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    ru.ru_maxrss as f64 / 1024.0
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    anyhow::ensure!(
        args.len() >= 2,
        "usage: engine_bench MODEL WAV [--threads N] [--precision int8|float32] [--runs N] \
         [--ref TEXT_FILE] [--lid MODEL]"
    );
    let (model_path, wav) = (PathBuf::from(&args[0]), PathBuf::from(&args[1]));
    let mut threads = 2usize;
    let mut precision = Ct2Precision::default();
    let mut runs = 1usize;
    let mut reference: Option<String> = None;
    let mut lid: Option<PathBuf> = None;
    let mut rest = args[2..].iter();
    while let Some(flag) = rest.next() {
        let value = rest
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--threads" => threads = value.parse()?,
            "--precision" => {
                precision = Ct2Precision::parse(value).context("--precision int8|float32")?
            }
            "--runs" => runs = value.parse()?,
            "--ref" => reference = Some(std::fs::read_to_string(value)?),
            "--lid" => lid = Some(value.into()),
            other => anyhow::bail!("unknown option {other}"),
        }
    }
    let load = |p: &Path| {
        if is_ct2_model_dir(p) {
            AsrModel::load_ct2(p, precision)
        } else {
            AsrModel::load(p)
        }
    };
    let t = Instant::now();
    let mut model = load(&model_path)?;
    if let Some(lid) = lid {
        model = model.with_language_id(Arc::new(load(&lid)?));
    }
    let load_s = t.elapsed().as_secs_f64();
    let opts = TranscribeOptions {
        threads,
        ..TranscribeOptions::default()
    };
    let mut walls = Vec::new();
    let mut last = None;
    for _ in 0..runs.max(1) {
        let (p, a) = (Arc::new(AtomicU8::new(0)), Arc::new(AtomicBool::new(false)));
        let t = Instant::now();
        let out = model.transcribe_wav(&wav, &opts, p, a)?;
        walls.push(t.elapsed().as_secs_f64());
        last = Some(out);
    }
    let out = last.context("no run")?;
    let text = out
        .segments
        .iter()
        .map(|s| s.text.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    let wer = reference.as_deref().map(|r| word_error_rate(r, &text));
    println!(
        "{}",
        serde_json::json!({
            "engine": model.engine().as_str(),
            "model": model_path,
            "threads": threads,
            "precision": format!("{precision:?}").to_lowercase(),
            "load_s": load_s,
            "walls_s": walls,
            "audio_s": out.duration_ms as f64 / 1000.0,
            "segments": out.segments.len(),
            "words": out.segments.iter().map(|s| s.words.len()).sum::<usize>(),
            "wer": wer,
            "peak_rss_mb": peak_rss_mb(),
            "ggml_cpu": tubescribe::tools::asr::ggml_cpu_build(),
            "text": text,
        })
    );
    Ok(())
}
