//! Long audio as segment jobs: the segment chain and its split/merge orchestration. The cut
//! points, the join of the segments' transcripts and the recognition loop are the
//! pipeline's (`pipeline::segmenting`, `pipeline::transcribe`), shared with the transcribe
//! stage's in-process path, so both give the same transcript.
//!
//! # Flow
//!
//! A task's transcribe job (`tr-<task>`) whose audio is longer than `schedule.segment_s`
//! (default 600 s) runs in two steps, BullMQ's "step job" idiom:
//!
//! 1. **split** — decode `audio.wav`, choose cut points in silence
//!    ([`segmenting::find_cuts`]), store them in the job's data (`cuts_ms`), add the
//!    segment jobs as a *chain flow* whose root's parent is the running transcribe job, and
//!    move the job to `waiting-children`
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
//!    [`segmenting::join`] joins them (monotonic, no repeated text at the cuts) into the usual
//!    `transcript.*` files.
//!
//! Re-running either step is safe: cut points are read back from the job's data, the flow
//! has fixed job ids (a second add is a no-op), and `move_to_waiting_children` tells whether
//! children are still pending.
//!
//! Progress of the transcribe stage while segments run is the duration-weighted sum:
//! `10 % (decode) + 90 % × (Σ finished segment ms + p × current segment ms) / total ms`
//! (the chain runs segments in order, so Σ finished = the current segment's start).

use std::sync::Arc;
use std::time::Duration;

use bullmq::types::BackoffStrategy;
use bullmq::worker::CancellationToken as BullToken;
use bullmq::{FlowJob, Job, JobOptions, ParentOptions};
use futures::FutureExt;
use serde::{Deserialize, Serialize};

use crate::domain::keys::{segment_job_id, SEGMENT_JOB};
use crate::domain::manifest::StageState;
use crate::domain::transcript::{Coverage, Segment, Transcript};
use crate::domain::Stage;
use crate::engine::schedule;
use crate::engine::schedule::Scheduler;
use crate::pipeline::download::DownloadResult;
use crate::pipeline::segmenting;
use crate::pipeline::transcribe;
use crate::pipeline::transcribe::{TranscribeResult, DECODE_SHARE};
use crate::pipeline::{JobCtx, StageCtx, StageError, StageOutput};
use crate::store::names;

/// BullMQ attempts of one segment job.
const SEGMENT_JOB_ATTEMPTS: u32 = 2;

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
        .is_some_and(|d| segmenting::is_long(d.duration_s, ctx.cfg.schedule.segment_s))
}

fn retryable<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> StageError {
    move |e| StageError::retryable(format!("{what}: {e}"))
}

/// The transcribe job's long-audio path (split, then merge). `Ok(None)` means the job moved
/// to `waiting-children` and the processor must return `Error::WaitingChildren`.
pub async fn run_long(
    ctx: &StageCtx,
    jctx: &JobCtx,
    job: &Job,
    sched: &Scheduler,
) -> Result<Option<StageOutput>, StageError> {
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
        return Ok(None);
    }
    merge_step(
        jctx,
        &bounds,
        sched,
        &ctx.cfg.subtitles,
        ctx.cfg.min_coverage,
    )
    .await
    .map(Some)
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
    let bounds = segmenting::plan(&wav, ctx.cfg.schedule.segment_s).await?;
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

/// The segment jobs' results as the ranges `bounds` (ms) of the task's audio, in order, and
/// the highest peak RSS any of them measured (bytes).
async fn segment_results(
    jctx: &JobCtx,
    bounds: &[u64],
    sched: &Scheduler,
) -> Result<(Vec<segmenting::RangeText>, u64), StageError> {
    let q = sched.transcribe_queue();
    let mut parts = Vec::new();
    let mut peak = 0u64;
    for i in 0..bounds.len() - 1 {
        let id = segment_job_id(&jctx.task_id, i);
        let job = q
            .get_job(&id)
            .await
            .map_err(retryable("cannot read a segment job"))?
            .ok_or_else(|| StageError::permanent(format!("segment job {id} is missing")))?;
        let r: SegmentResult = serde_json::from_str(job.returnvalue()).map_err(|e| {
            StageError::permanent(format!("segment job {id} has no valid result: {e}"))
        })?;
        peak = peak.max(r.peak_rss_bytes);
        parts.push(segmenting::RangeText {
            start_ms: bounds[i],
            end_ms: bounds[i + 1],
            segments: r.segments,
            language: r.language,
            rtf: r.rtf,
            loops_cut: r.loops_cut,
            coverage: r.coverage,
        });
    }
    Ok((parts, peak))
}

/// Merge step: read every segment's result and write the transcript files.
async fn merge_step(
    jctx: &JobCtx,
    bounds: &[u64],
    sched: &Scheduler,
    rules: &crate::domain::transcript::subtitles::CueRules,
    min_coverage: f64,
) -> Result<StageOutput, StageError> {
    let (parts, peak) = segment_results(jctx, bounds, sched).await?;
    let total_ms = *bounds.last().unwrap_or(&0);
    let model = jctx
        .task
        .read_manifest()?
        .stage(Stage::Transcribe)
        .and_then(|r| {
            r.detail
                .get("model")
                .and_then(|v| v.as_str())
                .map(String::from)
        })
        .unwrap_or_default();
    // Loops are cut inside each segment; one that runs across a cut is cut by the join.
    let segmenting::Joined {
        segments,
        language,
        loops_cut,
        coverage,
        rtf,
        ..
    } = segmenting::join(parts);
    let mut transcript = Transcript {
        language,
        model,
        duration_ms: total_ms,
        segments,
    };
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
    let result = TranscribeResult {
        transcript: names::TRANSCRIPT_JSON.to_string(),
        duration_s: total_ms as f64 / 1000.0,
        language: transcript.language.clone(),
        segments: transcript.segments.len(),
        rtf,
    };
    let n = bounds.len() - 1;
    let segs = result.segments;
    let warning = coverage.warning(min_coverage);
    if let Some(w) = &warning {
        tracing::warn!(task = %jctx.task_id, uncovered = ?coverage.uncovered_ms, "{w}");
    }
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
        let d = &mut r.detail;
        d.insert("segments_merged".into(), serde_json::json!(n));
        d.insert("segments".into(), serde_json::json!(segs));
        d.insert(
            "audio_s".into(),
            serde_json::json!(total_ms as f64 / 1000.0),
        );
        d.insert("rtf".into(), serde_json::json!(rtf));
        d.insert(
            "speech_s".into(),
            serde_json::json!(coverage.speech_ms as f64 / 1000.0),
        );
        d.insert("repetition_loops_cut".into(), serde_json::json!(loops_cut));
        d.insert("repetition_cut".into(), serde_json::json!(loops_cut > 0));
        d.insert(
            "peak_rss_mb".into(),
            serde_json::json!(peak as f64 / 1048576.0),
        );
        d.extend(coverage.detail());
        m.set_warnings(Stage::Transcribe, warning.into_iter().collect());
    })?;
    Ok(StageOutput {
        result: serde_json::to_value(&result).expect("serializable"),
        outputs,
    })
}

/// Why a running segment job was stopped from outside (mirrors `queue.rs`'s stage stops).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SegStop {
    /// The transcribe stage's time limit for this segment's length passed.
    TimedOut,
    /// The worker is shutting down and its grace period is over: back to `wait`.
    Released,
    /// The task was cancelled (manifest status `cancelled`).
    Cancelled,
    /// Another worker started this segment job again (fencing): this run is stale.
    Superseded,
}

/// The reason a segment run was stopped, shared between the run and its caller.
#[derive(Default)]
struct StopFlag(std::sync::Mutex<Option<SegStop>>);

impl StopFlag {
    fn get(&self) -> Option<SegStop> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn set(&self, why: Option<SegStop>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = why;
    }
}

/// How a segment job ended, before mapping onto BullMQ.
enum SegEnd {
    Done(serde_json::Value),
    Failed(StageError),
    /// Stale (superseded) or released: record nothing more, leave the job to its new owner.
    Delayed,
}

/// The manifest key (in the transcribe stage's detail) holding each segment's current
/// attempt: `{"<index>": <attemptsStarted>}` — the segment jobs' fencing record.
const SEGMENT_ATTEMPTS: &str = "segment_attempts";

fn segment_attempt_of(m: &crate::domain::manifest::Manifest, index: usize) -> Option<u64> {
    m.stage(Stage::Transcribe)?
        .detail
        .get(SEGMENT_ATTEMPTS)?
        .get(index.to_string())?
        .as_u64()
}

/// Processes one segment job (name [`SEGMENT_JOB`] in the transcribe queue): transcribes
/// its slice of `audio.wav` with the previous segment's tail as prompt, reports the task's
/// duration-weighted progress, measures memory, and returns a [`SegmentResult`]. Runs under
/// `catch_unwind`; failures map to BullMQ errors like stage failures do.
///
/// Like stage jobs (`queue.rs`), a segment job refuses to run for a cancelled task and stops
/// when the task is cancelled while it runs, has a time limit (the transcribe policy applied
/// to the segment's length), is fenced (its attempt is recorded under
/// `detail.segment_attempts`; a run superseded by a newer attempt records nothing), and goes
/// back to `wait` when `release` fires at shutdown.
pub async fn process_segment_job(
    ctx: Arc<StageCtx>,
    job: Job,
    token: BullToken,
    release: tokio_util::sync::CancellationToken,
) -> Result<serde_json::Value, bullmq::Error> {
    let run = std::panic::AssertUnwindSafe(segment_job(&ctx, &job, token, release)).catch_unwind();
    let out = match run.await {
        Ok(r) => r,
        Err(_) => SegEnd::Failed(StageError::permanent(
            "internal error: a segment job panicked",
        )),
    };
    match out {
        SegEnd::Done(v) => Ok(v),
        SegEnd::Delayed => Err(bullmq::Error::Delayed),
        SegEnd::Failed(e) => {
            tracing::warn!(job = %job.id(), error = %e.message, "segment failed");
            // The last failure of a segment fails its parent job inside Redis (BullMQ's
            // fail-parent-on-failure), where no stage code runs: the task's record says so here.
            let final_attempt =
                !e.is_retryable() || job.attempts_made() + 1 >= SEGMENT_JOB_ATTEMPTS;
            if final_attempt && e.message != "cancelled" {
                record_final_failure(&ctx, &job, &e);
            }
            Err(if e.is_retryable() {
                bullmq::Error::ProcessingError(e.message)
            } else {
                bullmq::Error::Unrecoverable(e.message)
            })
        }
    }
}

/// Fails the transcribe stage (and so the task) in the manifest after a segment job's last
/// failure, unless the run was superseded by a newer attempt.
fn record_final_failure(ctx: &StageCtx, job: &Job, e: &StageError) {
    let Ok(d) = serde_json::from_value::<SegmentData>(job.data().clone()) else {
        return;
    };
    let attempt = u64::from(job.attempts_started().max(job.attempts_made() + 1));
    let task = ctx.data.task(&d.task_id);
    let message = format!(
        "{} (segment {} of {}, {}–{})",
        e.message,
        d.index + 1,
        d.count,
        crate::domain::transcript::format_clock(d.start_ms),
        crate::domain::transcript::format_clock(d.end_ms),
    );
    let r = task.modify_manifest(|m| {
        segment_attempt_of(m, d.index) == Some(attempt) && {
            m.fail_stage(Stage::Transcribe, &message, e.is_retryable(), true);
            true
        }
    });
    if let Err(err) = r {
        tracing::warn!(job = %job.id(), error = %err, "could not record the segment failure");
    }
}

async fn segment_job(
    ctx: &StageCtx,
    job: &Job,
    token: BullToken,
    release: tokio_util::sync::CancellationToken,
) -> SegEnd {
    let d: SegmentData = match serde_json::from_value(job.data().clone()) {
        Ok(d) => d,
        Err(e) => {
            return SegEnd::Failed(StageError::permanent(format!(
                "malformed segment data: {e}"
            )))
        }
    };
    let task = ctx.data.task(&d.task_id);
    if !task.exists() {
        return SegEnd::Failed(StageError::permanent(format!(
            "task {} has no manifest",
            d.task_id
        )));
    }
    // Cancel hook: a segment picked up after its task was cancelled does not run.
    if task.read_manifest().map(|m| m.status).ok()
        == Some(crate::domain::manifest::TaskStatus::Cancelled)
    {
        return SegEnd::Failed(StageError::permanent("cancelled"));
    }
    // Fencing record: this run is now the segment's current attempt.
    let attempt = u64::from(job.attempts_started().max(job.attempts_made() + 1));
    let index = d.index;
    if let Err(e) = task.update_manifest(|m| {
        let r = m.stage_mut(Stage::Transcribe);
        let slot = r
            .detail
            .entry(SEGMENT_ATTEMPTS.to_string())
            .or_insert_with(|| serde_json::json!({}));
        if !slot.is_object() {
            *slot = serde_json::json!({});
        }
        slot[index.to_string()] = serde_json::json!(attempt);
        // A segment picked up again after a shutdown makes the stage active again.
        if r.state == StageState::Waiting {
            r.state = StageState::Active;
        }
    }) {
        return SegEnd::Failed(StageError::retryable(format!(
            "cannot record the segment attempt: {e}"
        )));
    }
    let stop = StopFlag::default();
    match segment_run(ctx, job, &d, &task, attempt, token, release, &stop).await {
        Ok(v) => SegEnd::Done(v),
        Err(e) => match stop.get() {
            Some(SegStop::Superseded) => {
                tracing::warn!(job = %job.id(), attempt, "stale segment attempt ended; leaving the job to the current one");
                SegEnd::Delayed
            }
            Some(SegStop::Released) => {
                // The manifest says the stage waits again (it resumes at this segment), as a
                // released stage job does in `queue.rs`.
                let phase = format!(
                    "waiting: segment {}/{} goes back to the queue",
                    d.index + 1,
                    d.count
                );
                let _ = task.update_manifest(|m| {
                    let r = m.stage_mut(Stage::Transcribe);
                    if r.state == StageState::Active {
                        r.state = StageState::Waiting;
                        r.detail.insert("phase".into(), serde_json::json!(phase));
                    }
                });
                match job.move_to_wait(None).await {
                    Ok(_) => tracing::info!(job = %job.id(), "shutdown: segment job put back in the queue"),
                    Err(e) => tracing::warn!(job = %job.id(), error = %e, "shutdown: could not put the segment job back; it will be recovered as stalled"),
                }
                SegEnd::Delayed
            }
            Some(SegStop::Cancelled) => SegEnd::Failed(StageError::permanent("cancelled")),
            Some(SegStop::TimedOut) => SegEnd::Failed(StageError::retryable(format!(
                "timeout: segment {} of {} ran longer than the transcribe stage's limit for its length and was stopped",
                d.index + 1,
                d.count
            ))),
            None => SegEnd::Failed(e),
        },
    }
}

#[allow(clippy::too_many_arguments)]
async fn segment_run(
    ctx: &StageCtx,
    job: &Job,
    d: &SegmentData,
    task: &crate::store::TaskDir,
    attempt: u64,
    token: BullToken,
    release: tokio_util::sync::CancellationToken,
    stop: &StopFlag,
) -> Result<serde_json::Value, StageError> {
    let d = d.clone();
    let task = task.clone();
    let model = ctx.task_asr(&task).await?;
    let probe = crate::observe::rss::RssProbe::start();
    let wav = task.file(names::AUDIO_WAV);
    let range = Some((d.start_ms, d.end_ms));
    // No prompt from the previous segment: the unsplit path has none at its chunk
    // boundaries either, and the same words must come out of both paths.
    let opts = transcribe::options(ctx);
    let threads = opts.threads;
    let report = |p: f64| {
        let done = d.start_ms as f64 + p / 100.0 * (d.end_ms - d.start_ms) as f64;
        let percent = DECODE_SHARE + (100.0 - DECODE_SHARE) * done / d.total_ms.max(1) as f64;
        let phase = format!("transcribing segment {}/{}", d.index + 1, d.count);
        let _ = task.update_manifest(|m| {
            let r = m.stage_mut(Stage::Transcribe);
            if r.state == StageState::Active {
                r.progress = percent.min(100.0);
                r.detail.insert("phase".into(), serde_json::json!(phase));
            }
        });
    };
    let limit = ctx
        .cfg
        .policy(Stage::Transcribe)
        .time_limit(Some((d.end_ms - d.start_ms) as f64 / 1000.0));
    let deadline = tokio::time::sleep(limit);
    tokio::pin!(deadline);
    let is_current =
        |m: &crate::domain::manifest::Manifest| segment_attempt_of(m, d.index) == Some(attempt);
    let abort = tokio_util::sync::CancellationToken::new();
    let halt = |why: SegStop| {
        if stop.get().is_none() {
            stop.set(Some(why));
        }
        abort.cancel();
    };
    // Each tick: a cancelled task or a stale attempt stops the run; otherwise progress.
    let on_tick = |p: f64| {
        match task.read_manifest() {
            Ok(m) if m.status == crate::domain::manifest::TaskStatus::Cancelled => {
                halt(SegStop::Cancelled)
            }
            Ok(m) if !is_current(&m) => {
                tracing::warn!(job = %job.id(), attempt, "another worker took this segment over; stopping the stale run");
                halt(SegStop::Superseded)
            }
            _ => {}
        }
        if stop.get().is_none() {
            report(p);
        }
    };
    // Same recognition loop (speech gate, loop cutting, language check) as a whole short
    // file; timestamps come back on audio.wav's timeline.
    let every = Duration::from_millis(500);
    let recognition =
        transcribe::recognize(model.clone(), wav, range, opts, &abort, every, on_tick);
    let supervise = async {
        loop {
            tokio::select! {
                _ = token.cancelled(), if !abort.is_cancelled() => abort.cancel(),
                _ = release.cancelled(), if stop.get().is_none() => halt(SegStop::Released),
                _ = &mut deadline, if stop.get().is_none() => {
                    tracing::warn!(job = %job.id(), ?limit, "segment time limit passed; cancelling it");
                    halt(SegStop::TimedOut)
                }
                else => std::future::pending::<()>().await,
            }
        }
    };
    let out = tokio::select! {
        r = recognition => r,
        _ = supervise => unreachable!("the supervisor never ends"),
    };
    if stop.get().is_some() {
        return Err(StageError::permanent("stopped"));
    }
    if task.read_manifest().is_ok_and(|m| !is_current(&m)) {
        stop.set(Some(SegStop::Superseded));
        return Err(StageError::permanent("stale"));
    }
    let rss = probe.finish();
    let transcribe::Recognized { out, wall_s: wall } = out?;
    report(100.0);
    let audio_s = (d.end_ms - d.start_ms) as f64 / 1000.0;
    let rtf = if audio_s > 0.0 { wall / audio_s } else { 0.0 };
    crate::pipeline::budget::after_job(ctx, &task, &d.task_id, job.id(), rtf, &rss).await;
    let segments = out.segments;
    let model_name = model.name().to_string();
    let language_id = out.language_id.clone();
    // Fenced: a run superseded meanwhile records nothing.
    let recorded = task.modify_manifest(|m| {
        is_current(m) && {
            let r = m.stage_mut(Stage::Transcribe);
            r.detail
                .insert("model".into(), serde_json::json!(model_name));
            r.detail
                .insert("threads".into(), serde_json::json!(threads));
            r.detail
                .insert("segments_done".into(), serde_json::json!(d.index + 1));
            // The language guard of the first segment judged the task's first speech.
            if d.index == 0 {
                r.detail
                    .insert("language_id".into(), serde_json::json!(language_id));
            }
            true
        }
    })?;
    if !recorded {
        stop.set(Some(SegStop::Superseded));
        return Err(StageError::permanent("stale"));
    }
    let result = SegmentResult {
        index: d.index,
        segments,
        language: out.language,
        rtf,
        peak_rss_bytes: rss.peak_bytes,
        loops_cut: out.loops_cut,
        coverage: out.coverage,
    };
    Ok(serde_json::to_value(&result).expect("serializable"))
}

#[cfg(test)]
mod tests {
    use super::*;

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
