//! The transcribe stage: media → 16 kHz mono WAV (ffmpeg) → segments (whisper.cpp) →
//! `transcript.{json,txt,srt,vtt}`.
//!
//! whisper.cpp runs on a blocking thread (never on the async runtime, so job-lock renewal
//! keeps going); its progress callback feeds the job's progress and a cancel flips its abort
//! flag. Decoding takes the first 10 % of the stage's progress, recognition the rest.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::download::DownloadResult;
use super::{JobCtx, Measure, StageCtx, StageError, StageOutput};
use crate::domain::transcript::Transcript;
use crate::store::names;
use crate::tools::asr;
use crate::tools::asr::TranscribeOptions;
use crate::tools::media;
use crate::tools::process;
use crate::tools::process::Cmd;

/// Share of the stage's progress spent decoding audio, in percent.
const DECODE_SHARE: f64 = 10.0;

/// The transcribe stage's result, read by the summarize job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TranscribeResult {
    /// `transcript.json` inside the task directory.
    pub transcript: String,
    /// Audio duration in seconds (decoded WAV).
    pub duration_s: f64,
    /// Spoken language code.
    pub language: String,
    /// Number of segments.
    pub segments: usize,
    /// Real-time factor of recognition: whisper wall seconds ÷ audio seconds.
    pub rtf: f64,
}

/// Runs the transcribe stage for one job.
pub async fn run(ctx: &StageCtx, job: &JobCtx) -> Result<StageOutput, StageError> {
    let dl: DownloadResult = job.child_result()?;
    let media_path = job.task.file(&dl.media);
    if !media_path.is_file() {
        return Err(StageError::permanent(format!(
            "downloaded media {} is missing from the task directory",
            dl.media
        )));
    }
    // Load the model first: a missing model must fail before any work is done. The language
    // guard's model (optional) is attached after decoding, so its loading does not delay it.
    ctx.task_model(&job.task).await?;

    let (wav_out, duration_s) = match resume_decoded(job).await {
        Some(done) => done,
        None => {
            let done = decode(ctx, job, &media_path, dl.duration_s).await?;
            // Checkpoint: a re-run after a crash starts from this WAV.
            let rec = done.0.clone();
            job.task.update_manifest(move |m| {
                let r = m.stage_mut(crate::domain::Stage::Transcribe);
                r.checkpoints.retain(|c| c.name != rec.name);
                r.checkpoints.push(rec);
            })?;
            done
        }
    };

    job.report(DECODE_SHARE, Some("transcribing"));
    let model = ctx.task_asr(&job.task).await?;
    let probe = crate::observe::rss::RssProbe::start();
    let wav_path = job.task.file(names::AUDIO_WAV);

    let opts = TranscribeOptions {
        threads: ctx.job_threads(),
        language: ctx.cfg.language.clone(),
        initial_prompt: None,
    };
    let pct = Arc::new(AtomicU8::new(0));
    let abort = Arc::new(AtomicBool::new(false));
    let (p2, a2, m2) = (pct.clone(), abort.clone(), model.clone());
    let started = Instant::now();
    let mut handle =
        tokio::task::spawn_blocking(move || m2.transcribe_wav(&wav_path, &opts, p2, a2));
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let out = loop {
        tokio::select! {
            r = &mut handle => break r,
            _ = tick.tick() => {
                let p = pct.load(Ordering::Relaxed) as f64;
                job.report(DECODE_SHARE + p * (100.0 - DECODE_SHARE) / 100.0, Some("transcribing"));
            }
            _ = job.cancel.cancelled(), if !abort.load(Ordering::Relaxed) => {
                abort.store(true, Ordering::Relaxed);
            }
        }
    };
    let asr_wall = started.elapsed().as_secs_f64();
    let rss = probe.finish();
    let out = out
        .map_err(|e| StageError::permanent(format!("whisper panicked: {e}")))?
        .map_err(|e| match e {
            asr::AsrError::Aborted => StageError::cancelled(),
            e @ asr::AsrError::UnsupportedLanguage { .. } => StageError::permanent(e.to_string()),
            e if e.is_retryable() => StageError::retryable(format!("whisper failed: {e}")),
            e => StageError::permanent(format!("whisper failed: {e}")),
        })?;

    let out_stats = asr::WavTranscription {
        segments: Vec::new(),
        ..out.clone()
    };
    let mut transcript = Transcript {
        language: out.language.clone(),
        model: model.name().to_string(),
        duration_ms: (duration_s * 1000.0).round() as u64,
        segments: out.segments,
    };
    transcript.normalize();
    let mut outputs = vec![wav_out];
    outputs.extend(write_transcript(job, &transcript, &ctx.cfg.subtitles)?);
    let rtf = if duration_s > 0.0 {
        asr_wall / duration_s
    } else {
        0.0
    };
    let result = TranscribeResult {
        transcript: names::TRANSCRIPT_JSON.to_string(),
        duration_s,
        language: transcript.language.clone(),
        segments: transcript.segments.len(),
        rtf,
    };
    let detail = serde_json::json!({
        "language": result.language,
        "segments": result.segments,
        "audio_s": duration_s,
        "asr_wall_s": asr_wall,
        "rtf": rtf,
        "threads": ctx.job_threads(),
        "model": transcript.model,
        "speech_s": out_stats.coverage.speech_ms as f64 / 1000.0,
        "asr_chunks": out_stats.chunks,
        "mean_token_p": out_stats.mean_token_p,
        "repetition_loops_cut": out_stats.loops_cut,
        "repetition_cut": out_stats.loops_cut > 0,
        "dropped_tags": out_stats.dropped_tags,
        "dropped_stock_phrases": out_stats.dropped_stock,
        "stock_phrases_confirmed": out_stats.stock_confirmed,
        "language_id": out_stats.language_id,
    });
    let coverage = &out_stats.coverage;
    let warning = coverage.warning(ctx.cfg.min_coverage);
    if let Some(w) = &warning {
        tracing::warn!(task = %job.task_id, uncovered = ?coverage.uncovered_ms, "{w}");
    }
    job.task.update_manifest(|m| {
        let d = &mut m.stage_mut(crate::domain::Stage::Transcribe).detail;
        if let serde_json::Value::Object(o) = detail {
            d.extend(o);
        }
        d.extend(coverage.detail());
        m.set_warnings(
            crate::domain::Stage::Transcribe,
            warning.into_iter().collect(),
        );
    })?;
    Ok(StageOutput {
        result: serde_json::to_value(&result).expect("serializable"),
        outputs,
        // The engine records it: metrics, model stats, manifest memory detail, alerts.
        measure: Measure::recognition(rtf, rss),
    })
}

/// The `audio.wav` checkpoint of an earlier attempt and its duration in seconds, when the
/// manifest records it and the file still has the recorded size and SHA-256.
async fn resume_decoded(job: &JobCtx) -> Option<(crate::domain::manifest::OutputFile, f64)> {
    let m = job.task.read_manifest().ok()?;
    let rec = m
        .stage(crate::domain::Stage::Transcribe)?
        .checkpoints
        .iter()
        .find(|c| c.name == names::AUDIO_WAV)?
        .clone();
    let task = job.task.clone();
    tokio::task::spawn_blocking(move || {
        if !task.verify_output(&rec) {
            return None;
        }
        let r = hound::WavReader::open(task.file(names::AUDIO_WAV)).ok()?;
        let secs = r.duration() as f64 / r.spec().sample_rate as f64;
        tracing::info!(task = %task.path().display(), "resuming from the decoded audio.wav checkpoint");
        (secs > 0.0).then_some((rec, secs))
    })
    .await
    .ok()
    .flatten()
}

/// Writes `transcript` as `transcript.{json,txt,srt,vtt}` (atomic and fenced like every stage
/// output: a stale run writes nothing), the subtitles with the cue limits `rules` (the
/// config's `[subtitles]`); returns their records.
pub(crate) fn write_transcript(
    job: &JobCtx,
    transcript: &Transcript,
    rules: &crate::domain::transcript::subtitles::CueRules,
) -> Result<Vec<crate::domain::manifest::OutputFile>, StageError> {
    [
        (names::TRANSCRIPT_JSON, transcript.to_json()),
        (names::TRANSCRIPT_TXT, transcript.to_txt()),
        (names::TRANSCRIPT_SRT, transcript.to_srt(rules)),
        (names::TRANSCRIPT_VTT, transcript.to_vtt(rules)),
    ]
    .into_iter()
    .map(|(name, body)| job.write_atomic(name, body.as_bytes()))
    .collect()
}

/// Decodes `media` to `audio.wav` (16 kHz mono s16) and checks its length against the
/// expected duration. Returns the output record and the decoded duration in seconds.
pub(crate) async fn decode(
    ctx: &StageCtx,
    job: &JobCtx,
    media_path: &std::path::Path,
    expected_s: Option<f64>,
) -> Result<(crate::domain::manifest::OutputFile, f64), StageError> {
    // audio.wav needs 32 kB per second of audio on top of the minimum free space.
    let wav_bytes =
        (expected_s.unwrap_or(0.0).max(0.0) * media::WAV_BYTES_PER_SECOND as f64) as u64;
    super::wait_for_free_space(
        job,
        ctx.cfg.min_free_bytes.saturating_add(wav_bytes),
        "decode",
    )
    .await?;
    job.report(0.0, Some("decoding audio"));
    let tmp = job.task.tmp_file(names::AUDIO_WAV)?;
    let limit = Duration::from_secs(600 + expected_s.unwrap_or(3600.0) as u64);
    let cmd = Cmd::new(&ctx.cfg.programs.ffmpeg)
        .args(media::ffmpeg_to_wav_args(media_path, &tmp))
        .timeout(limit);
    let progress = job.progress.clone();
    let res = process::run(&cmd, &job.cancel, &mut |line: &str| {
        if let (Some(p), Some(total)) = (media::parse_ffmpeg_progress_line(line), expected_s) {
            if let Some(t) = p.out_time_s {
                if total > 0.0 {
                    let pct = (t / total).clamp(0.0, 1.0) * DECODE_SHARE;
                    progress.send_modify(|cur| cur.percent = pct);
                }
            }
        }
    })
    .await;
    let fail = |e: StageError| {
        let _ = std::fs::remove_file(&tmp);
        e
    };
    let out = res.map_err(|e| fail(e.into()))?;
    if !out.success() {
        let line = out.last_stderr_line().to_string();
        if out.stderr_tail.contains("No space left on device") {
            return Err(fail(StageError::retryable(
                "disk full: no space left while writing audio.wav; the partial file was removed",
            )));
        }
        let msg = if line.contains("matches no streams")
            || line.contains("does not contain any stream")
        {
            media::MediaError::NoAudioStream.to_string()
        } else {
            format!("ffmpeg could not decode the audio: {line}")
        };
        return Err(fail(StageError::permanent(msg)));
    }
    let decoded_s = {
        let t = tmp.clone();
        tokio::task::spawn_blocking(move || {
            hound::WavReader::open(&t).map(|r| r.duration() as f64 / r.spec().sample_rate as f64)
        })
        .await
        .map_err(|e| fail(StageError::permanent(format!("wav reader panicked: {e}"))))?
        .map_err(|e| {
            fail(StageError::permanent(format!(
                "ffmpeg wrote an unreadable WAV: {e}"
            )))
        })?
    };
    if let Some(expected) = expected_s {
        media::check_decoded_length(expected, decoded_s)
            .map_err(|e| fail(StageError::permanent(e.to_string())))?;
    }
    if decoded_s <= 0.0 {
        return Err(fail(StageError::permanent(
            "the audio stream is empty (0 s decoded)",
        )));
    }
    let rec = job.commit(&tmp, names::AUDIO_WAV)?;
    Ok((rec, decoded_s))
}
