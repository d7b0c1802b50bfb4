//! Long audio as segment jobs: the fan-out of segment jobs and its split/merge orchestration, and the
//! work of one segment ([`transcribe_segment`]). The cut points, the join of the segments'
//! transcripts and the recognition loop are the pipeline's (`pipeline::segmenting`,
//! `pipeline::transcribe`), shared with the transcribe stage's in-process path, so both give
//! the same transcript. A segment job's attempt (cancel hook, fencing under
//! `detail.segment_attempts`, time limit, release at shutdown, `catch_unwind`) is the one
//! protocol of `attempt.rs`, like a stage job's.
//!
//! # Flow
//!
//! A task's transcribe job (`tr-<task>`) whose audio is longer than `schedule.segment_s`
//! (default 120 s) runs in two steps, BullMQ's "step job" idiom:
//!
//! 1. **split** — decode `audio.wav`, choose cut points in pauses
//!    ([`segmenting::find_cuts`]: segments that shrink towards the end), store them in the
//!    job's data (`cuts_ms`), add one segment job per range as a child of the running
//!    transcribe job (a *fan-out*), and move the job to `waiting-children` (`Job::move_to_waiting_children` + `Error::WaitingChildren`):
//!
//!    ```text
//!    tr-<task>  (waiting-children; child dl-<task> already completed)
//!      ├─ seg0-<task>     queue "transcribe", name "segment"
//!      ├─ seg1-<task>
//!      └─ …               all ready at once: any free slot of any worker takes one
//!    ```
//!
//!    Each segment job is an ordinary transcribe-queue job, so the segments of one long video
//!    run in parallel on every free transcribe slot of every machine and obey the memory
//!    budget. No text passes between segments (each is transcribed exactly like a chunk of the
//!    unsplit path), so nothing orders them. The language guard (English-only model) listens
//!    in the first segment only and its verdict stands for the task: a refusal there fails
//!    the task; the other segments run with English set. So the split itself stays short
//!    (decode and cut points) and holds its slot as briefly as possible. Their priority is
//!    the *task's* audio length when it was split — its remaining work — aged like any other
//!    job (`schedule.rs`), so a short task that arrives meanwhile goes before the long task's
//!    remaining segments.
//! 2. **merge** — when the last segment completes BullMQ releases the transcribe job again;
//!    it reads every segment job's return value, offsets are already applied, and
//!    [`segmenting::join`] joins them (monotonic, no repeated text at the cuts) into the usual
//!    `transcript.*` files.
//!
//! Re-running either step is safe: cut points are read back from the job's data, the flow
//! has fixed job ids (a second add is a no-op), and `move_to_waiting_children` tells whether
//! children are still pending.
//!
//! Progress of the transcribe stage while segments run is the duration-weighted sum
//! [`segmenting::ranges_percent`]: `10 % (decode) + 90 % × Σ (pᵢ × segment i ms) / total ms`
//! over each segment's own progress `pᵢ` (kept in the stage detail's `segment_progress`). Each
//! segment's run is recorded in `segment_runs.<i>` (`started_at`, `finished_at`, ms since the
//! epoch, and `completions`).

use std::time::Duration;

use bullmq::types::BackoffStrategy;
use bullmq::{FlowJob, Job, JobOptions, ParentOptions};
use serde::{Deserialize, Serialize};

use crate::domain::keys::{segment_job_id, SEGMENT_JOB};
use crate::domain::manifest::StageState;
use crate::domain::transcript::{Coverage, Segment, Transcript};
use crate::domain::Stage;
use crate::engine::attempt::{Done, Fence, SegmentSlot};
use crate::engine::flow::BACKOFF_NAME;
use crate::engine::schedule;
use crate::engine::schedule::Scheduler;
use crate::pipeline::download::DownloadResult;
use crate::pipeline::segmenting;
use crate::pipeline::transcribe;
use crate::pipeline::transcribe::{TranscribeResult, DECODE_SHARE};
use crate::pipeline::{JobCtx, Measure, StageCtx, StageError, StageOutput};
use crate::store::names;

/// The transcribe stage detail key recording each segment's completed run:
/// `{"<i>": {"started_at", "finished_at", "completions"}}` (ms since the epoch).
pub const SEGMENT_RUNS: &str = "segment_runs";

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
    /// The priority basis in seconds, read by the priority ager: the task's audio length when
    /// it was split (its remaining work then), not this segment's own length.
    pub audio_s: f64,
    /// When the task's transcribe job was queued, ms since the epoch: the segment ages from
    /// then ([`schedule::job_priority`]; 0 in jobs from before this field: from its own
    /// creation).
    #[serde(default)]
    pub queued_ms: u64,
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
}

/// What a segment job returns (read by the merge step).
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

/// The segment jobs of `task_id` with boundaries `bounds_ms` (0, cuts…, total): one job per
/// range, each a child of the task's transcribe job (a fan-out), all with the task's audio
/// length as their priority basis, aged since `queued_ms` (the transcribe job's creation, ms
/// since the epoch) at `aging_rate` ([`schedule::segment_priority`] at this moment).
pub fn segment_jobs(
    task_id: &str,
    bounds_ms: &[u64],
    queued_ms: u64,
    aging_rate: f64,
) -> Result<Vec<FlowJob>, bullmq::Error> {
    let count = bounds_ms.len().saturating_sub(1);
    let total_ms = *bounds_ms.last().unwrap_or(&0);
    let audio_s = total_ms as f64 / 1000.0;
    if count == 0 {
        return Err(bullmq::Error::InvalidConfig("no segments".into()));
    }
    // Every segment ranks as its task does (the ager keeps it so: `schedule::job_priority`).
    let priority = schedule::segment_priority(
        audio_s,
        queued_ms,
        crate::domain::manifest::now_ms(),
        aging_rate,
    );
    (0..count)
        .map(|i| {
            let data = SegmentData {
                task_id: task_id.to_string(),
                index: i,
                count,
                start_ms: bounds_ms[i],
                end_ms: bounds_ms[i + 1],
                total_ms,
                audio_s,
                queued_ms,
            };
            let data = serde_json::to_value(&data).expect("serializable");
            let opts = JobOptions::new()
                .job_id(segment_job_id(task_id, i))
                .priority(priority)
                .attempts(SEGMENT_JOB_ATTEMPTS)
                // The stage jobs' strategy: the transcribe policy's backoff, jittered.
                .backoff(BackoffStrategy::Custom(BACKOFF_NAME.into()))
                .fail_parent_on_failure()
                .parent(ParentOptions {
                    queue: Stage::Transcribe.queue_name().into(),
                    id: Stage::Transcribe.job_id(task_id),
                    wait_children: None,
                });
            // FlowJob::new(job name, queue name, data).
            Ok(FlowJob::new(SEGMENT_JOB, Stage::Transcribe.queue_name(), data)?.options(opts))
        })
        .collect()
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
/// longer than `schedule.segment_s` and its transcript does not come from the video's
/// captions, or it was split already.
pub fn is_long(ctx: &StageCtx, job: &Job, jctx: &JobCtx) -> bool {
    if job.data().get("cuts_ms").is_some() {
        return true;
    }
    // A transcript from the video's captions needs no audio, so nothing to split.
    download_result(jctx).ok().is_some_and(|d| {
        segmenting::is_long(d.duration_s, ctx.cfg.schedule.segment_s)
            && crate::pipeline::transcribe::captions_of(jctx, &d).is_none()
    })
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
    // A cancel that came during the split: no segment jobs for a cancelled task (they would
    // be added after the cancel removed the task's jobs, and the split would end as "split").
    if stopping(jctx) {
        return Err(StageError::cancelled());
    }
    // Fixed job ids: adding them again after a crash is a no-op for those already there.
    let jobs = segment_jobs(&jctx.task_id, &bounds, job.timestamp(), sched.aging_rate());
    for seg in jobs.map_err(retryable("segment jobs"))? {
        sched
            .add_flow(seg)
            .await
            .map_err(retryable("cannot add segment jobs"))?;
    }
    // The merge step that follows costs milliseconds: once the last segment completes it
    // goes first instead of waiting a segment's time behind other tasks' segments.
    schedule::rank_merge_first(job)
        .await
        .map_err(retryable("cannot rank the merge step"))?;
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

/// True when this attempt must stop: its cancel token fired or the task's record already
/// says cancelled (the cancel writes the record before it tells the worker).
fn stopping(jctx: &JobCtx) -> bool {
    jctx.cancel.is_cancelled()
        || jctx
            .task
            .read_manifest()
            .is_ok_and(|m| m.status == crate::domain::manifest::TaskStatus::Cancelled)
}

/// Split step: decode, find cuts, record them in the manifest. Returns the boundaries in ms
/// (0, cuts…, total).
async fn split(ctx: &StageCtx, jctx: &JobCtx) -> Result<Vec<u64>, StageError> {
    let dl = download_result(jctx)?;
    let media = jctx.task.input(&dl.media)?;
    if !media.is_file() {
        return Err(StageError::permanent(format!(
            "downloaded media {} is missing from the task directory",
            dl.media
        )));
    }
    let model = ctx.task_model(&jctx.task).await?; // a missing model fails before any work
    crate::pipeline::transcribe::decode(ctx, jctx, &media, dl.duration_s).await?;
    jctx.report(DECODE_SHARE, Some("finding pauses"));
    let wav = jctx.task.file(names::AUDIO_WAV);
    // As many segments per wave as this worker has transcribe slots.
    let slots = ctx
        .plan()
        .map_or(ctx.cfg.transcribe_concurrency, |p| p.slots);
    // The first segment's job runs the language guard when the model is English-only and no
    // language is set: the others of its wave take over its head start.
    let first = crate::pipeline::transcribe::range_options(ctx, &jctx.task, &model, 0)?;
    let guarded = !model.is_multilingual()
        && first.language.is_none()
        && ctx.language_id_model().await.is_some();
    let rule = segmenting::CutRule {
        segment_s: ctx.cfg.schedule.segment_s,
        slots,
        head_start_s: if guarded {
            segmenting::GUARD_HEAD_START_S
        } else {
            0.0
        },
    };
    let bounds = segmenting::plan(&wav, rule).await?;
    let b2 = bounds.clone();
    let attempt = jctx.attempt;
    let started = jctx
        .task
        .read_manifest()?
        .stage(Stage::Transcribe)
        .and_then(|r| r.started_at);
    jctx.task.update_manifest(move |m| {
        let d = &mut m.stage_mut(Stage::Transcribe).detail;
        d.insert(segmenting::SEGMENT_BOUNDS.into(), serde_json::json!(b2));
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
    // The model the segments recorded (they all ran the task's model).
    let model = jctx
        .task
        .read_manifest()?
        .stage(Stage::Transcribe)
        .and_then(|r| r.detail.get("model")?.as_str().map(String::from))
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
/// slice of `audio.wav` like a chunk of the unsplit path (same speech gate and loop cutting;
/// the first segment's language check stands for the task, [`transcribe::range_options`];
/// timestamps on `audio.wav`'s timeline), reports the task's
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
    let wav = task.input(names::AUDIO_WAV)?;
    let range = Some((d.start_ms, d.end_ms));
    // No prompt from the previous segment: the unsplit path has none at its chunk
    // boundaries either, and the same words must come out of both paths.
    let opts = transcribe::range_options(ctx, task, &model, d.index)?;
    let threads = opts.threads;
    // Audio with no pause to cut in is one segment: nothing to count.
    let phase = match d.count {
        1 => "transcribing".to_string(),
        n => format!("transcribing {n} segments"),
    };
    let started_at = crate::domain::manifest::now_ms();
    // The recognition loop of a whole short file (speech gate, loop cutting, language
    // check) over this slice; timestamps come back on audio.wav's timeline.
    let recognized = transcribe::recognize(
        model.clone(),
        wav,
        range,
        opts,
        &jctx.cancel,
        Duration::from_millis(500),
        // The segment's own percent; the engine sums the segments into the stage's.
        |p| jctx.report(p, Some(&phase)),
    )
    .await;
    let rss = probe.finish();
    let transcribe::Recognized { out, wall_s: wall } = recognized?;
    let audio_s = (d.end_ms - d.start_ms) as f64 / 1000.0;
    let rtf = if audio_s > 0.0 { wall / audio_s } else { 0.0 };
    let model_name = model.name().to_string();
    let language_id = out.language_id.clone();
    // Fenced: a run superseded meanwhile records nothing.
    let recorded = task.modify_manifest(|m| {
        fence.is_current(m, jctx.attempt) && {
            let r = m.stage_mut(Stage::Transcribe);
            segmenting::record_segment_progress(r, d.index, 100.0);
            let runs = r.detail_object(SEGMENT_RUNS);
            let key = d.index.to_string();
            let completions = runs
                .get(&key)
                .and_then(|run| run["completions"].as_u64())
                .unwrap_or(0)
                + 1;
            runs.insert(
                key,
                serde_json::json!({
                    "started_at": started_at,
                    "finished_at": crate::domain::manifest::now_ms(),
                    "completions": completions,
                }),
            );
            let done = runs.len();
            if r.state == StageState::Active {
                let phase = format!("transcribing segments: {done} of {} done", d.count);
                r.detail.insert("phase".into(), serde_json::json!(phase));
            }
            let detail = &mut r.detail;
            detail.insert("model".into(), serde_json::json!(model_name));
            detail.insert("threads".into(), serde_json::json!(threads));
            detail.insert("segments_done".into(), serde_json::json!(done));
            // The language guard of the first segment judged the task (`range_options`).
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

    #[test]
    fn segment_ids_round_trip() {
        assert_eq!(segment_job_id("yt-abc", 3), "seg3-yt-abc");
        assert_eq!(
            crate::domain::keys::task_of_segment_job("seg3-yt-abc"),
            Some("yt-abc")
        );
        assert_eq!(crate::domain::keys::task_of_segment_job("sum-yt-abc"), None);
        let now = crate::domain::manifest::now_ms();
        let jobs = segment_jobs("t", &[0, 600_000, 1_200_000, 1_500_000], now, 1.0).unwrap();
        assert_eq!(jobs.len(), 3);
        for (i, j) in jobs.iter().enumerate() {
            let v = format!("{j:?}");
            // Every segment is a direct child of the transcribe job, none waits for another.
            assert!(v.contains(&format!("seg{i}-t")), "{v}");
            assert!(v.contains("tr-t"), "{v}");
            assert!(v.contains("children: None"), "{v}");
            assert!(v.contains("queue_name: \"transcribe\""), "{v}");
            // The task's 1 500 s, not the segment's own length, is the priority basis (less
            // the second of credit of a task under way; aged by at most a second here).
            assert!(
                v.contains("priority: Some(1499)") || v.contains("priority: Some(1498)"),
                "{v}"
            );
        }
        let v = format!("{jobs:?}");
        assert!(!v.contains("queue_name: \"segment\""), "{v}");
    }
}
