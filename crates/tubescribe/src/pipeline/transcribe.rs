//! The transcribe stage: media → 16 kHz mono WAV (ffmpeg) → segments (whisper.cpp) →
//! `transcript.{json,txt,srt,vtt}`.
//!
//! One recognition loop ([`recognize`]) serves a whole file and a range of it: whisper.cpp
//! runs on a blocking thread (never on the async runtime, so job-lock renewal keeps going),
//! its progress is reported on every tick and a cancel flips its abort flag. Audio longer
//! than `schedule.segment_s` is transcribed in ranges cut in pauses and joined
//! ([`super::segmenting`]) — here in one process, one range after the other; the engine
//! runs the same ranges as segment jobs of the queue with the same pieces. Decoding takes
//! the first 10 % of the stage's progress, recognition the rest. A task that asked for a
//! translation (`options.translate`) runs every range with whisper's translate task
//! ([`options`]): English text, the detected source language as the transcript's `language`.
//!
//! A task that asked for the video's own captions (`options.captions` prefer/only) and whose
//! download stage found them ([`DownloadResult::captions`]) takes another path
//! ([`from_captions`]): the captions become the transcript files, no audio is decoded and
//! Whisper does not run; the stage's record says `source: captions`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::download::{CaptionsFile, DownloadResult};
use super::segmenting;
use super::{JobCtx, Measure, StageCtx, StageError, StageOutput};
use crate::domain::manifest::OutputFile;
use crate::domain::options::CaptionsMode;
use crate::domain::transcript::Transcript;
use crate::domain::Stage;
use crate::observe::rss::RssReport;
use crate::store::{names, TaskDir};
use crate::tools::asr;
use crate::tools::asr::{AsrModel, TranscribeOptions, WavTranscription};
use crate::tools::media;
use crate::tools::process;
use crate::tools::process::Cmd;

/// Share of the stage's progress spent decoding audio, in percent.
pub const DECODE_SHARE: f64 = 10.0;
/// How often a running recognition reports progress in this stage.
const TICK: Duration = Duration::from_millis(250);

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

/// What one [`recognize`] run produced.
#[derive(Debug, Clone)]
pub struct Recognized {
    /// Segments (on the WAV file's timeline) and what the post-processing did.
    pub out: WavTranscription,
    /// Wall seconds whisper took.
    pub wall_s: f64,
}

/// The recognition options of `task` on this worker: its thread share of the memory plan, the
/// configured language, no prompt (ranges get none either, so a long file's words come out
/// as an unsplit run's would), and Whisper's translate task when the task asked for a
/// translation (`options.translate`).
///
/// # Errors
/// The task's manifest cannot be read.
pub fn options(ctx: &StageCtx, task: &TaskDir) -> Result<TranscribeOptions, StageError> {
    Ok(TranscribeOptions {
        threads: ctx.job_threads(),
        language: ctx.cfg.language.clone(),
        initial_prompt: None,
        translate: task.read_manifest()?.options.translate,
    })
}

/// [`options`] for range `index` (0-based) of a task transcribed in ranges or segment jobs.
/// The first range's language guard stands for the task: on an English-only model with no
/// language configured, the other ranges run with English set, so the guard's multilingual
/// model listens once per task (≈ 1–2 s of CPU each time) and a later range's text rules
/// cannot refuse what the first range found to be English. A refusal by the first range
/// fails the task.
///
/// # Errors
/// As [`options`].
pub fn range_options(
    ctx: &StageCtx,
    task: &TaskDir,
    model: &AsrModel,
    index: usize,
) -> Result<TranscribeOptions, StageError> {
    let mut opts = options(ctx, task)?;
    if index > 0 && !model.is_multilingual() && opts.language.is_none() {
        opts.language = Some("en".into());
    }
    Ok(opts)
}

/// The recognition loop: transcribes the 16 kHz mono WAV at `wav` — the range
/// `[start_ms, end_ms)` of it, or all of it for `None` — with `model` on a blocking thread
/// (speech gate, chunks, loop cutting, language check: [`AsrModel::transcribe_wav_range`]),
/// calls `on_tick` with whisper's progress (0–100) every `every`, and aborts whisper when
/// `cancel` fires.
///
/// # Errors
/// `cancelled` after an abort; permanent for a panic, a refused language or a bad file;
/// retryable for whisper failures that may pass.
pub async fn recognize(
    model: Arc<AsrModel>,
    wav: PathBuf,
    range_ms: Option<(u64, u64)>,
    opts: TranscribeOptions,
    cancel: &CancellationToken,
    every: Duration,
    mut on_tick: impl FnMut(f64),
) -> Result<Recognized, StageError> {
    let pct = Arc::new(AtomicU8::new(0));
    let abort = Arc::new(AtomicBool::new(false));
    let (p2, a2) = (pct.clone(), abort.clone());
    let started = Instant::now();
    let mut handle = tokio::task::spawn_blocking(move || {
        model.transcribe_wav_range(&wav, range_ms, &opts, p2, a2)
    });
    let mut tick = tokio::time::interval(every);
    let out = loop {
        tokio::select! {
            r = &mut handle => break r,
            _ = tick.tick() => on_tick(pct.load(Ordering::Relaxed) as f64),
            _ = cancel.cancelled(), if !abort.load(Ordering::Relaxed) => {
                abort.store(true, Ordering::Relaxed);
            }
        }
    };
    let wall_s = started.elapsed().as_secs_f64();
    let out = out
        .map_err(|e| StageError::permanent(format!("whisper panicked: {e}")))?
        .map_err(|e| match e {
            asr::AsrError::Aborted => StageError::cancelled(),
            e @ (asr::AsrError::UnsupportedLanguage { .. }
            | asr::AsrError::CannotTranslate { .. }) => StageError::permanent(e.to_string()),
            e if e.is_retryable() => StageError::retryable(format!("whisper failed: {e}")),
            e => StageError::permanent(format!("whisper failed: {e}")),
        })?;
    Ok(Recognized { out, wall_s })
}

/// Runs the transcribe stage for one job: the whole file in one run, or — audio longer than
/// `schedule.segment_s` ([`segmenting::is_long`]) — in ranges cut in pauses, joined.
pub async fn run(ctx: &StageCtx, job: &JobCtx) -> Result<StageOutput, StageError> {
    let dl: DownloadResult = job.child_result()?;
    if let Some(c) = captions_of(job, &dl) {
        return from_captions(ctx, job, &dl, &c);
    }
    let media_path = job.task.input(&dl.media)?;
    if !media_path.is_file() {
        return Err(StageError::permanent(format!(
            "downloaded media {} is missing from the task directory",
            dl.media
        )));
    }
    // Load the model first: a missing model must fail before any work is done. The language
    // guard's model (optional) is attached after decoding, so its loading does not delay it.
    ctx.task_model(&job.task).await?;
    let (wav_out, duration_s) = decoded(ctx, job, &media_path, dl.duration_s).await?;

    job.report(DECODE_SHARE, Some("transcribing"));
    let model = ctx.task_asr(&job.task).await?;
    let probe = crate::observe::rss::RssProbe::start();
    let wav = job.task.file(names::AUDIO_WAV);
    let (rec, bounds) = if segmenting::is_long(dl.duration_s, ctx.cfg.schedule.segment_s) {
        let (rec, bounds) = transcribe_ranges(ctx, job, &model, wav).await?;
        (rec, Some(bounds))
    } else {
        let report = |p: f64| {
            job.report(
                DECODE_SHARE + p * (100.0 - DECODE_SHARE) / 100.0,
                Some("transcribing"),
            )
        };
        let rec = recognize(
            model.clone(),
            wav,
            None,
            options(ctx, &job.task)?,
            &job.cancel,
            TICK,
            report,
        );
        (rec.await?, None)
    };
    let rss = probe.finish();
    let done = Done {
        wav_out,
        duration_s,
        model: model.name().to_string(),
        rec,
        bounds,
    };
    finish(ctx, job, done, rss).await
}

/// The captions this task's transcript comes from: the download stage's captions file when
/// the task asked for captions (`options.captions` prefer/only); `None` = Whisper runs.
pub fn captions_of(job: &JobCtx, dl: &DownloadResult) -> Option<CaptionsFile> {
    let asked = job
        .task
        .read_manifest()
        .is_ok_and(|m| m.options.captions != CaptionsMode::Never);
    dl.captions.clone().filter(|_| asked)
}

/// The captions path: `captions` (the video's own WebVTT) → `transcript.{json,txt,srt,vtt}`,
/// one segment per caption line ([`crate::domain::transcript::segments_from_cues`]), no
/// audio decoded and no Whisper. The transcript's `model` is `youtube-captions` (`-auto` for
/// automatic captions), its language the captions' primary subtag; the stage's record says
/// `source: captions` with the captions' language and kind.
///
/// # Errors
/// Permanent when the file is missing, not WebVTT, or holds no text.
fn from_captions(
    ctx: &StageCtx,
    job: &JobCtx,
    dl: &DownloadResult,
    captions: &CaptionsFile,
) -> Result<StageOutput, StageError> {
    job.report(DECODE_SHARE, Some("reading captions"));
    let text = std::fs::read_to_string(job.task.file(&captions.file)).map_err(|e| {
        StageError::permanent(format!(
            "cannot read the video's captions ({}): {e}",
            captions.file
        ))
    })?;
    let cues = crate::domain::transcript::parse_vtt(&text).map_err(|e| {
        StageError::permanent(format!("the video's captions are not valid WebVTT: {e}"))
    })?;
    let segments = crate::domain::transcript::segments_from_cues(&cues);
    let end_ms = segments.iter().map(|s| s.end_ms).max().unwrap_or(0);
    if segments.is_empty() {
        return Err(StageError::permanent(
            "the video's captions hold no text; submit it with captions never to transcribe its audio",
        ));
    }
    let language = captions
        .lang
        .split('-')
        .next()
        .unwrap_or(&captions.lang)
        .to_ascii_lowercase();
    let model = match captions.kind.as_str() {
        "auto" => "youtube-captions-auto",
        _ => "youtube-captions",
    };
    let duration_ms = dl
        .duration_s
        .map(|d| (d * 1000.0).round() as u64)
        .unwrap_or(end_ms);
    let mut transcript = Transcript {
        language,
        model: model.to_string(),
        duration_ms,
        segments,
    };
    transcript.normalize();
    let outputs = write_transcript(job, &transcript, &ctx.cfg.subtitles)?;
    let result = TranscribeResult {
        transcript: names::TRANSCRIPT_JSON.to_string(),
        duration_s: duration_ms as f64 / 1000.0,
        language: transcript.language.clone(),
        segments: transcript.segments.len(),
        rtf: 0.0,
    };
    let detail = serde_json::json!({
        "source": "captions",
        "captions_lang": captions.lang,
        "captions_kind": captions.kind,
        "language": result.language,
        "segments": result.segments,
        "audio_s": result.duration_s,
        "model": transcript.model,
    });
    job.task.update_manifest(|m| {
        let d = &mut m.stage_mut(Stage::Transcribe).detail;
        if let serde_json::Value::Object(o) = detail {
            d.extend(o);
        }
        m.set_warnings(Stage::Transcribe, Vec::new());
    })?;
    tracing::info!(task = %job.task_id, lang = %captions.lang, kind = %captions.kind, segments = result.segments, "transcript from the video's captions; whisper not run");
    Ok(StageOutput {
        result: serde_json::to_value(&result).expect("serializable"),
        outputs,
        measure: Default::default(),
    })
}

/// The decoded `audio.wav`: an earlier attempt's checkpoint when it is intact, otherwise
/// decoded now and recorded as the checkpoint (a re-run after a crash starts from it).
async fn decoded(
    ctx: &StageCtx,
    job: &JobCtx,
    media_path: &std::path::Path,
    expected_s: Option<f64>,
) -> Result<(OutputFile, f64), StageError> {
    if let Some(done) = resume_decoded(job).await {
        return Ok(done);
    }
    let done = decode(ctx, job, media_path, expected_s).await?;
    let rec = done.0.clone();
    job.task.update_manifest(move |m| {
        let r = m.stage_mut(Stage::Transcribe);
        r.checkpoints.retain(|c| c.name != rec.name);
        r.checkpoints.push(rec);
    })?;
    Ok(done)
}

/// The in-process long-file path: cuts `wav` in pauses ([`segmenting::plan`]), recognizes
/// each range with [`recognize`] one after the other and joins them ([`segmenting::join`]).
/// Returns the joined recognition and the range boundaries in ms (0, cuts…, end). Progress is
/// duration-weighted over the ranges, as for segment jobs.
async fn transcribe_ranges(
    ctx: &StageCtx,
    job: &JobCtx,
    model: &Arc<AsrModel>,
    wav: PathBuf,
) -> Result<(Recognized, Vec<u64>), StageError> {
    job.report(DECODE_SHARE, Some("finding pauses"));
    // Ranges run one after another here: one slot.
    let rule = segmenting::CutRule {
        segment_s: ctx.cfg.schedule.segment_s,
        slots: 1,
        head_start_s: 0.0,
    };
    let bounds = segmenting::plan(&wav, rule).await?;
    let total_ms = *bounds.last().unwrap_or(&0);
    let n = bounds.len() - 1;
    tracing::info!(task = %job.task_id, segments = n, ?bounds, "long audio split (in process)");
    let mut runs = Vec::with_capacity(n);
    for (i, r) in bounds.windows(2).enumerate() {
        let (start_ms, end_ms) = (r[0], r[1]);
        // Audio with no pause to cut in is one range: nothing to count.
        let phase = match n {
            1 => "transcribing".to_string(),
            n => format!("transcribing segment {}/{n}", i + 1),
        };
        let report = |p: f64| {
            let done = start_ms as f64 + p / 100.0 * (end_ms - start_ms) as f64;
            let percent = DECODE_SHARE + (100.0 - DECODE_SHARE) * done / total_ms.max(1) as f64;
            job.report(percent, Some(&phase));
        };
        let range = Some((start_ms, end_ms));
        let rec = recognize(
            model.clone(),
            wav.clone(),
            range,
            range_options(ctx, &job.task, model, i)?,
            &job.cancel,
            TICK,
            report,
        );
        runs.push(rec.await?);
    }
    Ok((combine(&bounds, runs), bounds))
}

/// One recognition from the runs over the ranges `bounds` (in order): the segments, language,
/// loops and coverage [`segmenting::join`]ed; chunks and dropped lines summed; the mean token
/// probability weighted by speech; the first range's language identification (it judged the
/// first speech); the wall time summed.
fn combine(bounds: &[u64], runs: Vec<Recognized>) -> Recognized {
    let mut all = WavTranscription {
        segments: Vec::new(),
        language: String::new(),
        duration_ms: *bounds.last().unwrap_or(&0),
        chunks: 0,
        loops_cut: 0,
        mean_token_p: None,
        dropped_tags: Vec::new(),
        dropped_stock: Vec::new(),
        coverage: Default::default(),
        language_id: None,
        stock_confirmed: false,
    };
    let (mut p_sum, mut p_weight, mut wall_s) = (0.0f64, 0.0f64, 0.0);
    let mut parts = Vec::with_capacity(runs.len());
    for (i, Recognized { mut out, wall_s: w }) in runs.into_iter().enumerate() {
        let (start_ms, end_ms) = (bounds[i], bounds[i + 1]);
        wall_s += w;
        all.chunks += out.chunks;
        all.dropped_tags.append(&mut out.dropped_tags);
        all.dropped_stock.append(&mut out.dropped_stock);
        all.stock_confirmed |= out.stock_confirmed;
        if i == 0 {
            all.language_id = out.language_id.take();
        }
        if let Some(p) = out.mean_token_p {
            let weight = out.coverage.speech_ms.max(1) as f64;
            p_sum += f64::from(p) * weight;
            p_weight += weight;
        }
        let audio_s = end_ms.saturating_sub(start_ms) as f64 / 1000.0;
        parts.push(segmenting::RangeText {
            start_ms,
            end_ms,
            segments: out.segments,
            language: out.language,
            rtf: if audio_s > 0.0 { w / audio_s } else { 0.0 },
            loops_cut: out.loops_cut,
            coverage: out.coverage,
        });
    }
    let joined = segmenting::join(parts);
    all.segments = joined.segments;
    all.language = joined.language;
    all.loops_cut = joined.loops_cut;
    all.coverage = joined.coverage;
    all.mean_token_p = (p_weight > 0.0).then(|| (p_sum / p_weight) as f32);
    Recognized { out: all, wall_s }
}

/// A finished recognition of the task's audio, ready to be written.
struct Done {
    /// The `audio.wav` record.
    wav_out: OutputFile,
    /// Decoded audio seconds.
    duration_s: f64,
    /// The Whisper model's name.
    model: String,
    /// The recognition (whole file, or ranges joined).
    rec: Recognized,
    /// Range boundaries in ms when the audio was transcribed in ranges.
    bounds: Option<Vec<u64>>,
}

/// Writes the transcript files and records the stage's figures (and coverage warning) in
/// the manifest.
async fn finish(
    ctx: &StageCtx,
    job: &JobCtx,
    done: Done,
    rss: RssReport,
) -> Result<StageOutput, StageError> {
    let Done {
        wav_out,
        duration_s,
        model,
        rec: Recognized { mut out, wall_s },
        bounds,
    } = done;
    let mut transcript = Transcript {
        language: out.language.clone(),
        model,
        duration_ms: (duration_s * 1000.0).round() as u64,
        segments: std::mem::take(&mut out.segments),
    };
    transcript.normalize();
    let mut outputs = vec![wav_out];
    outputs.extend(write_transcript(job, &transcript, &ctx.cfg.subtitles)?);
    let rtf = if duration_s > 0.0 {
        wall_s / duration_s
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
    let mut detail = serde_json::json!({
        "source": "whisper",
        "language": result.language,
        "segments": result.segments,
        "audio_s": duration_s,
        "asr_wall_s": wall_s,
        "rtf": rtf,
        "threads": ctx.job_threads(),
        "model": transcript.model,
        "speech_s": out.coverage.speech_ms as f64 / 1000.0,
        "asr_chunks": out.chunks,
        "mean_token_p": out.mean_token_p,
        "repetition_loops_cut": out.loops_cut,
        "repetition_cut": out.loops_cut > 0,
        "dropped_tags": out.dropped_tags,
        "dropped_stock_phrases": out.dropped_stock,
        "stock_phrases_confirmed": out.stock_confirmed,
        "language_id": out.language_id,
    });
    if let Some(b) = &bounds {
        detail["segment_bounds_ms"] = serde_json::json!(b);
        detail["segments_merged"] = serde_json::json!(b.len() - 1);
    }
    let coverage = &out.coverage;
    let warning = coverage.warning(ctx.cfg.min_coverage);
    if let Some(w) = &warning {
        tracing::warn!(task = %job.task_id, uncovered = ?coverage.uncovered_ms, "{w}");
    }
    job.task.update_manifest(|m| {
        let d = &mut m.stage_mut(Stage::Transcribe).detail;
        if let serde_json::Value::Object(o) = detail {
            d.extend(o);
        }
        d.extend(coverage.detail());
        m.set_warnings(Stage::Transcribe, warning.into_iter().collect());
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
async fn resume_decoded(job: &JobCtx) -> Option<(OutputFile, f64)> {
    let m = job.task.read_manifest().ok()?;
    let rec = m
        .stage(Stage::Transcribe)?
        .checkpoints
        .iter()
        .find(|c| c.name == names::AUDIO_WAV)?
        .clone();
    let task = job.task.clone();
    tokio::task::spawn_blocking(move || {
        if !task.verify_output(&rec) {
            return None;
        }
        let r = hound::WavReader::open(task.input(names::AUDIO_WAV).ok()?).ok()?;
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
) -> Result<Vec<OutputFile>, StageError> {
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
/// expected duration (too short: [`super::download::broken_media`], which invalidates the
/// download). Returns the output record and the decoded duration in seconds.
pub(crate) async fn decode(
    ctx: &StageCtx,
    job: &JobCtx,
    media_path: &std::path::Path,
    expected_s: Option<f64>,
) -> Result<(OutputFile, f64), StageError> {
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
    if out.signal().is_some() {
        // A crash (or the OOM killer) says nothing about the media: another run may pass.
        let e = process::ensure_success(&out, "ffmpeg (decoding the audio)").unwrap_err();
        return Err(fail(e.into()));
    }
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
        } else if line.is_empty() {
            format!(
                "ffmpeg could not decode the audio (exit code {}, no error message)",
                out.code
            )
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
        // The download's check missed it (or ran before there was one): the task must not
        // keep this file, so the download record is invalidated and the next run fetches again.
        media::check_length(expected, decoded_s)
            .map_err(|e| fail(super::download::broken_media(job, &e)))?;
    }
    if decoded_s <= 0.0 {
        return Err(fail(StageError::permanent(
            "the audio stream is empty (0 s decoded)",
        )));
    }
    let rec = job.commit(&tmp, names::AUDIO_WAV)?;
    Ok((rec, decoded_s))
}
