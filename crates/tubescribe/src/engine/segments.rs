//! Long audio as segment jobs: silence-aware cutting, the segment chain, and the merge — the
//! split/merge orchestration and the work of one segment ([`transcribe_segment`]). A segment
//! job's attempt (cancel hook, fencing under `detail.segment_attempts`, time limit, release at
//! shutdown, `catch_unwind`) is the one protocol of `attempt.rs`, like a stage job's.
//!
//! # Flow
//!
//! A task's transcribe job (`tr-<task>`) whose audio is longer than `schedule.segment_s`
//! (default 600 s) runs in two steps, BullMQ's "step job" idiom:
//!
//! 1. **split** — decode `audio.wav`, choose cut points in silence ([`find_cuts`]), store them
//!    in the job's data (`cuts_ms`), add the segment jobs as a *chain flow* whose root's
//!    parent is the running transcribe job, and move the job to `waiting-children`
//!    (`Job::move_to_waiting_children` + `Error::WaitingChildren`):
//!
//!    ```text
//!    tr-<task>  (waiting-children; child dl-<task> already completed)
//!      └─ seg<n-1>-<task>   queue "transcribe", name "segment"
//!           └─ …
//!                └─ seg0-<task>   runs first
//!    ```
//!
//!    Each segment job is an ordinary transcribe-queue job with its own priority (its own
//!    length, aged like any other — see `schedule.rs`), so segments of a long video
//!    interleave with short tasks on any worker of any machine and obey the memory budget.
//!    The chain makes segment `i` wait for `i−1` (no text passes between them: each segment
//!    is transcribed exactly like a chunk of the unsplit path); it also means one long task never occupies
//!    more than one transcribe slot.
//! 2. **merge** — when the last segment completes BullMQ releases the transcribe job again;
//!    it reads every segment job's return value, offsets are already applied, and
//!    [`merge`] joins them (monotonic, no repeated text at the cuts) into the usual
//!    `transcript.*` files.
//!
//! Re-running either step is safe: cut points are read back from the job's data, the flow
//! has fixed job ids (a second add is a no-op), and `move_to_waiting_children` tells whether
//! children are still pending.
//!
//! Progress of the transcribe stage while segments run is the duration-weighted sum:
//! `10 % (decode) + 90 % × (Σ finished segment ms + p × current segment ms) / total ms`
//! (the chain runs segments in order, so Σ finished = the current segment's start).

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bullmq::types::BackoffStrategy;
use bullmq::{FlowJob, Job, JobOptions, ParentOptions};
use serde::{Deserialize, Serialize};

use crate::domain::keys::{segment_job_id, SEGMENT_JOB};
use crate::domain::manifest::StageState;
use crate::domain::transcript::{Coverage, Segment, Transcript};
use crate::domain::Stage;
use crate::engine::attempt::{Done, Fence, SegmentSlot};
use crate::engine::schedule;
use crate::engine::schedule::Scheduler;
use crate::pipeline::download::DownloadResult;
use crate::pipeline::transcribe::TranscribeResult;
use crate::pipeline::{JobCtx, Measure, StageCtx, StageError, StageOutput};
use crate::store::names;
use crate::tools::asr;
use crate::tools::asr::{TranscribeOptions, SAMPLE_RATE};

/// BullMQ attempts of one segment job.
const SEGMENT_JOB_ATTEMPTS: u32 = 2;
/// Share of the transcribe stage's progress taken by decoding, in percent.
const DECODE_SHARE: f64 = 10.0;
/// Analysis frame for silence detection: 20 ms at 16 kHz.
const FRAME: usize = 320;

/// The data of one segment job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentData {
    /// The task id.
    pub task_id: String,
    /// 0-based segment index.
    pub index: usize,
    /// Number of segments of the task.
    pub count: usize,
    /// Start in the task's `audio.wav`, ms.
    pub start_ms: u64,
    /// End in the task's `audio.wav`, ms (exclusive).
    pub end_ms: u64,
    /// Duration of the whole audio, ms.
    pub total_ms: u64,
    /// This segment's length in seconds (read by the priority ager).
    pub audio_s: f64,
}

impl SegmentData {
    /// Where this segment sits in its task's audio (its attempt's fencing record).
    pub fn slot(&self) -> SegmentSlot {
        SegmentSlot {
            index: self.index,
            count: self.count,
            start_ms: self.start_ms,
            end_ms: self.end_ms,
        }
    }

    /// The transcribe stage's progress when this segment is `p` percent done: decoding's
    /// share, then the rest weighted by duration (the chain runs segments in order, so the
    /// finished ones end where this one starts).
    fn stage_percent(&self, p: f64) -> f64 {
        let done = self.start_ms as f64 + p / 100.0 * (self.end_ms - self.start_ms) as f64;
        DECODE_SHARE + (100.0 - DECODE_SHARE) * done / self.total_ms.max(1) as f64
    }
}

/// What a segment job returns (read by the next segment and by the merge step).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentResult {
    /// 0-based segment index.
    pub index: usize,
    /// Transcript segments with timestamps already offset to the whole audio, ms.
    pub segments: Vec<Segment>,
    /// Spoken language reported by whisper.
    pub language: String,
    /// Recognition wall seconds ÷ audio seconds.
    pub rtf: f64,
    /// Peak process RSS during the job, bytes.
    pub peak_rss_bytes: u64,
    /// Repeated-phrase loops cut from this segment (`asr::cut_repetition_loops`).
    #[serde(default)]
    pub loops_cut: usize,
    /// Speech found in this segment and how much of it got text.
    #[serde(default)]
    pub coverage: Coverage,
}

/// Per-frame RMS level in dBFS (−120 for digital silence).
fn frame_db(pcm: &[f32]) -> Vec<f32> {
    pcm.chunks(FRAME)
        .map(|f| {
            let e = f.iter().map(|x| x * x).sum::<f32>() / f.len().max(1) as f32;
            if e <= 1e-12 {
                -120.0
            } else {
                10.0 * e.log10()
            }
        })
        .collect()
}

/// Cut points for `pcm` (16 kHz mono) into segments of about `segment_s` seconds, in
/// samples, ascending, excluding 0 and the end. Audio no longer than `segment_s` gets none.
///
/// Method: `n = ⌈duration / segment_s⌉` segments; cut `k` aims at `k × duration / n` and
/// searches ± `min(60 s, segment_s / 4)` around it for the longest run of quiet frames
/// (20 ms RMS below `min(−30 dBFS, 10th-percentile level + 12 dB)`), preferring the run
/// closest to the aim on ties, and cuts at the run's middle. A window without any quiet
/// frame is cut at its quietest frame. Never mid-word when there is a pause to find.
pub fn find_cuts(pcm: &[f32], segment_s: f64) -> Vec<usize> {
    let total_s = pcm.len() as f64 / SAMPLE_RATE as f64;
    if segment_s <= 0.0 || total_s <= segment_s {
        return Vec::new();
    }
    let db = frame_db(pcm);
    let mut sorted = db.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let p10 = sorted[sorted.len() / 10];
    let thr = (p10 + 12.0).min(-30.0);
    let n = (total_s / segment_s).ceil() as usize;
    let frames_per_s = SAMPLE_RATE as f64 / FRAME as f64;
    let radius = (60.0f64.min(segment_s / 4.0) * frames_per_s) as usize;
    let mut cuts = Vec::new();
    let mut last = 0usize;
    for k in 1..n {
        let aim = (db.len() * k) / n;
        let lo = aim.saturating_sub(radius).max(last + 1);
        let hi = (aim + radius).min(db.len().saturating_sub(1));
        if lo >= hi {
            continue;
        }
        // Longest quiet run in [lo, hi]; ties → closest middle to the aim.
        let mut best: Option<(usize, usize)> = None; // (len, mid)
        let mut i = lo;
        while i <= hi {
            if db[i] < thr {
                let s = i;
                while i <= hi && db[i] < thr {
                    i += 1;
                }
                let len = i - s;
                let mid = s + len / 2;
                let better = match best {
                    None => true,
                    Some((bl, bm)) => {
                        len > bl || (len == bl && mid.abs_diff(aim) < bm.abs_diff(aim))
                    }
                };
                if better {
                    best = Some((len, mid));
                }
            } else {
                i += 1;
            }
        }
        let frame = match best {
            Some((_, mid)) => mid,
            None => (lo..=hi)
                .min_by(|a, b| db[*a].total_cmp(&db[*b]))
                .unwrap_or(aim),
        };
        last = frame;
        cuts.push(frame * FRAME);
    }
    cuts
}

/// Joins per-segment transcripts (timestamps already absolute) into one sequence: starts are
/// non-decreasing and never before the previous end (times are clamped forward), ends are
/// clamped to their segment job's end, and words are kept inside their segment. No text is
/// dropped: segment jobs get no prompt, so nothing is echoed at a cut.
pub fn merge(parts: &[(u64, Vec<Segment>)]) -> Vec<Segment> {
    let mut out: Vec<Segment> = Vec::new();
    for (part_end, segs) in parts {
        for s in segs {
            let mut s = s.clone();
            let floor = out.last().map(|p| p.end_ms).unwrap_or(0);
            s.start_ms = s.start_ms.max(floor);
            s.end_ms = s.end_ms.min(*part_end).max(s.start_ms);
            let mut at = s.start_ms;
            for w in &mut s.words {
                w.start_ms = w.start_ms.clamp(at, s.end_ms);
                w.end_ms = w.end_ms.clamp(w.start_ms, s.end_ms);
                at = w.start_ms;
            }
            out.push(s);
        }
    }
    out
}

/// The chain flow of segment jobs for `task_id` with boundaries `bounds_ms` (0, cuts…, total),
/// attached to the task's transcribe job.
pub fn segment_flow(task_id: &str, bounds_ms: &[u64]) -> Result<FlowJob, bullmq::Error> {
    let count = bounds_ms.len().saturating_sub(1);
    let total_ms = *bounds_ms.last().unwrap_or(&0);
    let mut node: Option<FlowJob> = None;
    for i in 0..count {
        let (start_ms, end_ms) = (bounds_ms[i], bounds_ms[i + 1]);
        let audio_s = (end_ms - start_ms) as f64 / 1000.0;
        let data = SegmentData {
            task_id: task_id.to_string(),
            index: i,
            count,
            start_ms,
            end_ms,
            total_ms,
            audio_s,
        };
        let mut opts = JobOptions::new()
            .job_id(segment_job_id(task_id, i))
            .priority(schedule::priority(audio_s, 0.0, 0.0))
            .attempts(SEGMENT_JOB_ATTEMPTS)
            .backoff(BackoffStrategy::Exponential(2_000))
            .fail_parent_on_failure();
        if i + 1 == count {
            opts = opts.parent(ParentOptions {
                queue: Stage::Transcribe.queue_name().into(),
                id: Stage::Transcribe.job_id(task_id),
                wait_children: None,
            });
        }
        // FlowJob::new(job name, queue name, data).
        let mut j = FlowJob::new(
            SEGMENT_JOB,
            Stage::Transcribe.queue_name(),
            serde_json::to_value(&data).expect("serializable"),
        )?
        .options(opts);
        if let Some(child) = node.take() {
            j = j.add_child(child);
        }
        node = Some(j);
    }
    node.ok_or_else(|| bullmq::Error::InvalidConfig("no segments".into()))
}

/// The download result among a transcribe job's children (the key names the queue).
fn download_result(job: &JobCtx) -> Result<DownloadResult, StageError> {
    let v = job
        .children
        .iter()
        .find(|(k, _)| k.contains(":download:"))
        .map(|(_, v)| v.clone())
        .ok_or_else(|| StageError::permanent("the download stage's result is missing"))?;
    serde_json::from_value(v).map_err(|e| {
        StageError::permanent(format!("the download stage's result is malformed: {e}"))
    })
}

/// True when this transcribe job must go the segment way: its audio (download duration) is
/// longer than `schedule.segment_s`, or it was split already.
pub fn is_long(ctx: &StageCtx, job: &Job, jctx: &JobCtx) -> bool {
    if job.data().get("cuts_ms").is_some() {
        return true;
    }
    download_result(jctx)
        .ok()
        .and_then(|d| d.duration_s)
        .is_some_and(|d| d > ctx.cfg.schedule.segment_s)
}

fn retryable<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> StageError {
    move |e| StageError::retryable(format!("{what}: {e}"))
}

/// The transcribe job's long-audio path (split, then merge). [`Done::WaitingChildren`] means
/// the job moved to `waiting-children` while its segment jobs run.
pub async fn run_long(
    ctx: &StageCtx,
    jctx: &JobCtx,
    job: &Job,
    sched: &Scheduler,
) -> Result<Done, StageError> {
    let bounds: Vec<u64> = match job.data().get("cuts_ms") {
        Some(v) => serde_json::from_value(v.clone())
            .map_err(|e| StageError::permanent(format!("malformed cut points: {e}")))?,
        None => {
            let bounds = split(ctx, jctx).await?;
            let mut data = job.data().clone();
            if let Some(o) = data.as_object_mut() {
                o.insert("cuts_ms".into(), serde_json::json!(bounds));
            }
            let mut j = job.clone();
            j.update_data(data)
                .await
                .map_err(retryable("cannot store cut points"))?;
            bounds
        }
    };
    sched
        .add_flow(segment_flow(&jctx.task_id, &bounds).map_err(retryable("segment flow"))?)
        .await
        .map_err(retryable("cannot add segment jobs"))?;
    let waiting = job
        .move_to_waiting_children(None)
        .await
        .map_err(|e| match e {
            bullmq::Error::Unrecoverable(m) => StageError::permanent(m),
            e => StageError::retryable(format!("cannot wait for segments: {e}")),
        })?;
    if waiting {
        return Ok(Done::WaitingChildren);
    }
    merge_step(
        jctx,
        &bounds,
        sched,
        &ctx.cfg.subtitles,
        ctx.cfg.min_coverage,
    )
    .await
    .map(Done::Output)
}

/// Split step: decode, find cuts, record them in the manifest. Returns the boundaries in ms
/// (0, cuts…, total).
async fn split(ctx: &StageCtx, jctx: &JobCtx) -> Result<Vec<u64>, StageError> {
    let dl = download_result(jctx)?;
    let media = jctx.task.file(&dl.media);
    if !media.is_file() {
        return Err(StageError::permanent(format!(
            "downloaded media {} is missing from the task directory",
            dl.media
        )));
    }
    ctx.task_model(&jctx.task).await?; // a missing model fails before any work
    crate::pipeline::transcribe::decode(ctx, jctx, &media, dl.duration_s).await?;
    jctx.report(DECODE_SHARE, Some("finding pauses"));
    let wav = jctx.task.file(names::AUDIO_WAV);
    let segment_s = ctx.cfg.schedule.segment_s;
    let (cuts, n) = tokio::task::spawn_blocking(move || {
        asr::read_wav_16k_mono(&wav).map(|pcm| (find_cuts(&pcm, segment_s), pcm.len()))
    })
    .await
    .map_err(|e| StageError::permanent(format!("cut finder panicked: {e}")))?
    .map_err(|e| StageError::permanent(format!("cannot read audio.wav: {e}")))?;
    let to_ms = |s: usize| s as u64 * 1000 / SAMPLE_RATE as u64;
    let mut bounds = vec![0u64];
    bounds.extend(cuts.iter().map(|c| to_ms(*c)));
    bounds.push(to_ms(n));
    let b2 = bounds.clone();
    let attempt = jctx.attempt;
    let started = jctx
        .task
        .read_manifest()?
        .stage(Stage::Transcribe)
        .and_then(|r| r.started_at);
    jctx.task.update_manifest(move |m| {
        let d = &mut m.stage_mut(Stage::Transcribe).detail;
        d.insert("segment_bounds_ms".into(), serde_json::json!(b2));
        d.insert("segments_planned".into(), serde_json::json!(b2.len() - 1));
        if let Some(t) = started {
            d.insert("split_started_at".into(), serde_json::json!(t));
        }
        d.insert("split_attempt".into(), serde_json::json!(attempt));
        d.insert("phase".into(), serde_json::json!("transcribing segments"));
    })?;
    tracing::info!(task = %jctx.task_id, segments = bounds.len() - 1, ?bounds, "long audio split");
    Ok(bounds)
}

/// The results of the segment jobs of `jctx`'s task with boundaries `bounds`, in order.
async fn segment_results(
    jctx: &JobCtx,
    bounds: &[u64],
    sched: &Scheduler,
) -> Result<Vec<SegmentResult>, StageError> {
    let q = sched.transcribe_queue();
    let mut results = Vec::new();
    for i in 0..bounds.len() - 1 {
        let id = segment_job_id(&jctx.task_id, i);
        let job = q
            .get_job(&id)
            .await
            .map_err(retryable("cannot read a segment job"))?
            .ok_or_else(|| StageError::permanent(format!("segment job {id} is missing")))?;
        results.push(serde_json::from_str(job.returnvalue()).map_err(|e| {
            StageError::permanent(format!("segment job {id} has no valid result: {e}"))
        })?);
    }
    Ok(results)
}

/// Merge step: read every segment's result and write the transcript files.
async fn merge_step(
    jctx: &JobCtx,
    bounds: &[u64],
    sched: &Scheduler,
    rules: &crate::domain::transcript::subtitles::CueRules,
    min_coverage: f64,
) -> Result<StageOutput, StageError> {
    let mut parts = Vec::new();
    let mut language = String::from("en");
    let mut rtf_num = 0.0;
    let mut peak = 0u64;
    let mut loops_cut = 0usize;
    let mut coverage = Coverage::default();
    for (i, r) in segment_results(jctx, bounds, sched)
        .await?
        .into_iter()
        .enumerate()
    {
        language = r.language.clone();
        rtf_num += r.rtf * (bounds[i + 1] - bounds[i]) as f64;
        peak = peak.max(r.peak_rss_bytes);
        loops_cut += r.loops_cut;
        coverage.add(&r.coverage);
        parts.push((bounds[i + 1], r.segments));
    }
    let total_ms = *bounds.last().unwrap_or(&0);
    // The model the segments recorded (they all ran the task's model).
    let model = jctx
        .task
        .read_manifest()?
        .stage(Stage::Transcribe)
        .and_then(|r| r.detail.get("model")?.as_str().map(String::from))
        .unwrap_or_default();
    let mut transcript = Transcript {
        language,
        model,
        duration_ms: total_ms,
        segments: merge(&parts),
    };
    // Loops are cut inside each segment; one that runs across a cut is cut here.
    loops_cut += asr::cut_repetition_loops(&mut transcript.segments);
    transcript.normalize();
    let mut outputs: Vec<_> = jctx
        .task
        .existing_output(names::AUDIO_WAV)
        .into_iter()
        .collect();
    outputs.extend(crate::pipeline::transcribe::write_transcript(
        jctx,
        &transcript,
        rules,
    )?);
    let rtf = if total_ms > 0 {
        rtf_num / total_ms as f64
    } else {
        0.0
    };
    let result = TranscribeResult {
        transcript: names::TRANSCRIPT_JSON.to_string(),
        duration_s: total_ms as f64 / 1000.0,
        language: transcript.language.clone(),
        segments: transcript.segments.len(),
        rtf,
    };
    let warning = coverage.warning(min_coverage);
    if let Some(w) = &warning {
        tracing::warn!(task = %jctx.task_id, uncovered = ?coverage.uncovered_ms, "{w}");
    }
    let figures = serde_json::json!({
        "segments_merged": bounds.len() - 1,
        "segments": result.segments,
        "audio_s": total_ms as f64 / 1000.0,
        "rtf": rtf,
        "speech_s": coverage.speech_ms as f64 / 1000.0,
        "repetition_loops_cut": loops_cut,
        "repetition_cut": loops_cut > 0,
        "peak_rss_mb": peak as f64 / 1048576.0,
    });
    jctx.task.update_manifest(move |m| {
        let r = m.stage_mut(Stage::Transcribe);
        // The merge run is the job's second activation: keep the stage's real start.
        if let Some(t) = r.detail.get("split_started_at").and_then(|v| v.as_u64()) {
            r.started_at = Some(t);
        }
        // BullMQ counts the re-activation as a start; the user sees the split's attempt.
        if let Some(a) = r.detail.get("split_attempt").and_then(|v| v.as_u64()) {
            r.attempts = a as u32;
        }
        if let serde_json::Value::Object(o) = figures {
            r.detail.extend(o);
        }
        r.detail.extend(coverage.detail());
        m.set_warnings(Stage::Transcribe, warning.into_iter().collect());
    })?;
    Ok(StageOutput {
        result: serde_json::to_value(&result).expect("serializable"),
        outputs,
        measure: Measure::default(),
    })
}

/// The work of one segment job (`attempt.rs` runs the protocol around it): transcribes its
/// slice of `audio.wav` like a chunk of the unsplit path (same speech gate, loop cutting and
/// language check; timestamps on `audio.wav`'s timeline), reports the task's
/// duration-weighted progress, records its figures in the transcribe stage's detail (fenced:
/// a superseded run records nothing) and returns a [`SegmentResult`] with its measurement.
pub async fn transcribe_segment(
    ctx: &StageCtx,
    jctx: &JobCtx,
    d: &SegmentData,
    fence: Fence,
) -> Result<Done, StageError> {
    let task = &jctx.task;
    let model = ctx.task_asr(task).await?;
    let probe = crate::observe::rss::RssProbe::start();
    let wav = task.file(names::AUDIO_WAV);
    let range = Some((d.start_ms, d.end_ms));
    let threads = ctx.job_threads();
    let opts = TranscribeOptions {
        threads,
        language: ctx.cfg.language.clone(),
        // No prompt from the previous segment: the unsplit path has none at its chunk
        // boundaries either, and the same words must come out of both paths.
        initial_prompt: None,
    };
    let pct = Arc::new(AtomicU8::new(0));
    let abort = Arc::new(AtomicBool::new(false));
    let (p2, a2, m2) = (pct.clone(), abort.clone(), model.clone());
    let started = Instant::now();
    let mut handle =
        tokio::task::spawn_blocking(move || m2.transcribe_wav_range(&wav, range, &opts, p2, a2));
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let phase = format!("transcribing segment {}/{}", d.index + 1, d.count);
    let out = loop {
        tokio::select! {
            r = &mut handle => break r,
            _ = tick.tick() => jctx.report(d.stage_percent(pct.load(Ordering::Relaxed) as f64), Some(&phase)),
            _ = jctx.cancel.cancelled(), if !abort.load(Ordering::Relaxed) => {
                abort.store(true, Ordering::Relaxed);
            }
        }
    };
    let wall = started.elapsed().as_secs_f64();
    let rss = probe.finish();
    let out = out
        .map_err(|e| StageError::permanent(format!("whisper panicked: {e}")))?
        .map_err(|e| match e {
            asr::AsrError::Aborted => StageError::cancelled(),
            e @ asr::AsrError::UnsupportedLanguage { .. } => StageError::permanent(e.to_string()),
            e if e.is_retryable() => StageError::retryable(format!("whisper failed: {e}")),
            e => StageError::permanent(format!("whisper failed: {e}")),
        })?;
    let audio_s = (d.end_ms - d.start_ms) as f64 / 1000.0;
    let rtf = if audio_s > 0.0 { wall / audio_s } else { 0.0 };
    let model_name = model.name().to_string();
    let language_id = out.language_id.clone();
    // Fenced: a run superseded meanwhile records nothing.
    let recorded = task.modify_manifest(|m| {
        fence.is_current(m, jctx.attempt) && {
            let r = m.stage_mut(Stage::Transcribe);
            if r.state == StageState::Active {
                r.progress = d.stage_percent(100.0).min(100.0);
                r.detail.insert("phase".into(), serde_json::json!(phase));
            }
            let detail = &mut r.detail;
            detail.insert("model".into(), serde_json::json!(model_name));
            detail.insert("threads".into(), serde_json::json!(threads));
            detail.insert("segments_done".into(), serde_json::json!(d.index + 1));
            // The language guard of the first segment judged the task's first speech.
            if d.index == 0 {
                detail.insert("language_id".into(), serde_json::json!(language_id));
            }
            true
        }
    })?;
    if !recorded {
        return Err(StageError::superseded());
    }
    let result = SegmentResult {
        index: d.index,
        segments: out.segments,
        language: out.language,
        rtf,
        peak_rss_bytes: rss.peak_bytes,
        loops_cut: out.loops_cut,
        coverage: out.coverage,
    };
    Ok(Done::Output(StageOutput {
        result: serde_json::to_value(&result).expect("serializable"),
        outputs: Vec::new(),
        // The engine records it: metrics, model stats, manifest memory detail, alerts.
        measure: Measure::recognition(rtf, rss),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::transcript::Word;

    fn seg(a: u64, b: u64, t: &str) -> Segment {
        Segment {
            start_ms: a,
            end_ms: b,
            text: t.into(),
            words: Vec::new(),
        }
    }

    /// Tone bursts ("speech") with silent gaps at known places.
    fn synth(spans_s: &[(f64, f64)], total_s: f64) -> Vec<f32> {
        let n = (total_s * SAMPLE_RATE as f64) as usize;
        let mut v = vec![0.0f32; n];
        for (a, b) in spans_s {
            let (a, b) = (
                (a * SAMPLE_RATE as f64) as usize,
                ((b * SAMPLE_RATE as f64) as usize).min(n),
            );
            for (i, x) in v[a..b].iter_mut().enumerate() {
                *x = 0.3 * ((i as f32) * 0.07).sin();
            }
        }
        v
    }

    #[test]
    fn cuts_land_in_the_pauses() {
        // 25 s of "speech" with 1 s pauses every 5 s; 10 s segments → 3 segments.
        let spans: Vec<(f64, f64)> = (0..5)
            .map(|i| (i as f64 * 5.0, i as f64 * 5.0 + 4.0))
            .collect();
        let pcm = synth(&spans, 25.0);
        let cuts = find_cuts(&pcm, 10.0);
        assert_eq!(cuts.len(), 2, "{cuts:?}");
        for c in &cuts {
            let t = *c as f64 / SAMPLE_RATE as f64;
            let in_pause = (0..5).any(|i| t > i as f64 * 5.0 + 4.0 && t < (i + 1) as f64 * 5.0);
            assert!(in_pause, "cut at {t} s is not in a pause");
        }
        assert!(find_cuts(&pcm[..16_000 * 9], 10.0).is_empty());
    }

    #[test]
    fn merge_is_monotonic_keeps_every_line_and_words_inside() {
        let mut late = seg(4_000, 10_400, "three four");
        late.words = vec![
            Word {
                start_ms: 4_000,
                end_ms: 5_000,
                text: "three".into(),
                p: 0.9,
            },
            Word {
                start_ms: 9_900,
                end_ms: 10_400,
                text: "four".into(),
                p: 0.9,
            },
        ];
        let parts = vec![
            (10_000, vec![seg(0, 4_000, "one two"), late]),
            (
                20_000,
                vec![
                    seg(10_000, 12_000, "Three, four."),
                    seg(12_000, 15_000, "five"),
                ],
            ),
        ];
        let m = merge(&parts);
        let texts: Vec<&str> = m.iter().map(|s| s.text.as_str()).collect();
        assert_eq!(texts, ["one two", "three four", "Three, four.", "five"]);
        assert_eq!(m[1].end_ms, 10_000);
        assert_eq!(
            m[1].words
                .iter()
                .map(|w| (w.start_ms, w.end_ms))
                .collect::<Vec<_>>(),
            [(4_000, 5_000), (9_900, 10_000)]
        );
        assert!(m.windows(2).all(|w| w[0].end_ms <= w[1].start_ms));
    }

    #[test]
    fn segment_ids_round_trip() {
        assert_eq!(segment_job_id("yt-abc", 3), "seg3-yt-abc");
        assert_eq!(
            crate::domain::keys::task_of_segment_job("seg3-yt-abc"),
            Some("yt-abc")
        );
        assert_eq!(crate::domain::keys::task_of_segment_job("sum-yt-abc"), None);
        let f = segment_flow("t", &[0, 600_000, 1_200_000, 1_500_000]).unwrap();
        let v = format!("{f:?}");
        let (a, b, c) = (
            v.find("seg2-t").unwrap(),
            v.find("seg1-t").unwrap(),
            v.find("seg0-t").unwrap(),
        );
        assert!(a < b && b < c, "the last segment is the root: {v}");
        assert!(v.contains("queue_name: \"transcribe\""), "{v}");
        assert!(!v.contains("queue_name: \"segment\""), "{v}");
    }
}
