//! One attempt of a job — a stage job (`dl-`/`tr-`/`sum-`) or a segment job (`seg<i>-`) —
//! under ONE protocol: **admit → supervise → settle** ([`run`]). The caller (`workers.rs`)
//! picks the body; this module never knows what the body does.
//!
//! * **admit** — a job whose task was cancelled does not run; the attempt becomes the job's
//!   current one in the task's manifest (its [`Fence`] record; a stale run sees it is no longer
//!   current and records nothing); a stage whose outputs are already complete (size + SHA-256
//!   match the manifest, and no later stage invalidated them — media found truncated is
//!   downloaded again) hands back its recorded result without running again (checkpoint);
//!   the attempt gets a time limit scaled by the media duration (BullMQ has no job timeout).
//! * **supervise** — the body runs under `catch_unwind` (a panicking handler would otherwise
//!   leave its job active forever); its progress is forwarded to the manifest (and to BullMQ
//!   for stage jobs); it is stopped (its cancel token fires: programs' process groups are
//!   killed, whisper is aborted) when its time limit passes, when the worker shuts down and
//!   the grace period is over (release), when another worker took the job over (superseded)
//!   or when its task was cancelled; a stopped body that does not end within [`WIND_DOWN`] is
//!   given up on.
//! * **settle** — how it ended becomes the manifest record (completion, failure, release to
//!   `wait` with `moveJobFromActiveToWait`, or the split of long audio into segment jobs), the
//!   stage metrics, the body's measurement (RSS and RTF: metrics, model stats, manifest
//!   detail, memory alert) and BullMQ's retry rules ([`encode_failure`]).

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bullmq::worker::CancellationToken as BullToken;
use bullmq::{Job, JobProgress};
use futures::FutureExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::domain::manifest::{AttemptOutcome, Manifest, StageState, TaskStatus};
use crate::domain::{Progress, Stage};
use crate::engine::flow::{encode_failure, JobData};
use crate::engine::schedule::Scheduler;
use crate::observe::alerts::{self, Alert};
use crate::observe::events::EventLog;
use crate::observe::metrics;
use crate::pipeline::{budget, segmenting, JobCtx, Measure, StageCtx, StageError, StageOutput};
use crate::store::TaskDir;

/// Seconds a stopped body gets to wind down before its job is given up on anyway.
pub const WIND_DOWN: Duration = Duration::from_secs(30);
/// How often a running attempt checks its fence record and its task's status.
const FENCE_PERIOD: Duration = Duration::from_millis(500);
/// Progress is written at most once per this period; a change inside it is written when the
/// period ends, so the last value before a pause (a stalled download) is never lost.
const PROGRESS_PERIOD: Duration = Duration::from_millis(250);
/// The manifest key (in the transcribe stage's detail) holding each segment's current
/// attempt: `{"<index>": <attemptsStarted>}` — the segment jobs' fencing record.
const SEGMENT_ATTEMPTS: &str = "segment_attempts";

/// What every attempt in this worker process shares.
pub struct Shared {
    /// Configuration, data directory, loaded models and the memory plan.
    pub ctx: Arc<StageCtx>,
    /// Transcribe priorities (set when a download completes) and segment flows.
    pub sched: Arc<Scheduler>,
    /// Cancelled at shutdown after the grace period: active jobs stop and go back to `wait`.
    pub release: CancellationToken,
    /// Where alerts are published.
    pub events: EventLog,
}

/// Which record of the task's manifest an attempt owns (its fencing record).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fence {
    /// A stage job: the last entry of `stages.<stage>.attempt_log`.
    Stage(Stage),
    /// A segment job: `stages.transcribe.detail.segment_attempts.<index>`.
    Segment(SegmentSlot),
}

/// Where a segment job sits in its task's audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentSlot {
    /// 0-based segment index.
    pub index: usize,
    /// Number of segments of the task.
    pub count: usize,
    /// Start in the task's `audio.wav`, ms.
    pub start_ms: u64,
    /// End in the task's `audio.wav`, ms (exclusive).
    pub end_ms: u64,
}

impl Fence {
    /// The stage whose manifest record the attempt writes (segments: transcribe).
    pub fn stage(self) -> Stage {
        match self {
            Fence::Stage(s) => s,
            Fence::Segment(_) => Stage::Transcribe,
        }
    }

    /// True while `attempt` is the current attempt of this record in `m` (a stale attempt
    /// must record nothing).
    pub fn is_current(self, m: &Manifest, attempt: u32) -> bool {
        match self {
            Fence::Stage(s) => m.is_current_attempt(s, attempt),
            Fence::Segment(slot) => segment_attempt_of(m, slot.index) == Some(u64::from(attempt)),
        }
    }

    /// Makes `attempt` the current one in `m`.
    fn record_start(self, m: &mut Manifest, attempt: u32, worker: &str) {
        match self {
            Fence::Stage(s) => m.start_attempt(s, attempt, worker),
            Fence::Segment(slot) => {
                let r = m.stage_mut(Stage::Transcribe);
                r.detail_object(SEGMENT_ATTEMPTS)
                    .insert(slot.index.to_string(), serde_json::json!(attempt));
                // A segment picked up again after a shutdown makes the stage active again.
                if r.state == StageState::Waiting {
                    r.state = StageState::Active;
                }
            }
        }
    }

    /// The attempt's time limit (the stage policy for the media's length; segments: the
    /// transcribe policy for the segment's length) and the failure message when it passes.
    fn time_limit(self, ctx: &StageCtx, m: &Manifest) -> (Duration, String) {
        match self {
            Fence::Stage(stage) => {
                let policy = ctx.cfg.policy(stage);
                let media_s = m.video.as_ref().and_then(|v| v.duration_s);
                let limit = policy.time_limit(media_s);
                (limit, format!(
                    "timeout: the {stage} stage ran longer than its limit of {:.0} s ({:.0} s + {} s per second of media × {:.0} s) and was stopped; its programs were killed",
                    limit.as_secs_f64(),
                    policy.timeout_base.as_secs_f64(),
                    policy.timeout_per_media_s,
                    media_s.unwrap_or(0.0),
                ))
            }
            Fence::Segment(s) => {
                let len_s = (s.end_ms - s.start_ms) as f64 / 1000.0;
                (ctx.cfg.policy(Stage::Transcribe).time_limit(Some(len_s)), format!(
                    "timeout: segment {} of {} ran longer than the transcribe stage's limit for its length and was stopped",
                    s.index + 1,
                    s.count
                ))
            }
        }
    }
}

impl std::fmt::Display for Fence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fence::Stage(s) => write!(f, "{s} stage"),
            Fence::Segment(s) => write!(f, "segment {}/{}", s.index + 1, s.count),
        }
    }
}

/// The attempt number a segment job's fencing record holds in `m`.
fn segment_attempt_of(m: &Manifest, index: usize) -> Option<u64> {
    m.stage(Stage::Transcribe)?
        .detail
        .get(SEGMENT_ATTEMPTS)?
        .get(index.to_string())?
        .as_u64()
}

/// How a body ended when it did not fail.
pub enum Done {
    /// Its result, outputs and measurement.
    Output(StageOutput),
    /// Long audio: the job moved to `waiting-children` while its segment jobs run; this
    /// (split) attempt ends here and the merge is the job's next attempt.
    WaitingChildren,
}

/// Why a running attempt was stopped from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// Its time limit passed.
    TimedOut,
    /// The worker is shutting down and its grace period is over.
    Released,
    /// Another worker started the job again (this attempt's lock lapsed, e.g. while Redis was
    /// unreachable); this run is stale.
    Superseded,
    /// Its task was cancelled (manifest status `cancelled`).
    Cancelled,
}

/// An admitted attempt: the job's current one in the manifest.
struct Attempt {
    fence: Fence,
    task_id: String,
    task: TaskDir,
    /// 1-based attempt number (BullMQ's `attemptsStarted`).
    number: u32,
    limit: Duration,
    /// The failure message when `limit` passes.
    timeout: String,
    /// Fires to stop the body.
    cancel: CancellationToken,
}

impl Attempt {
    /// True while the manifest still names this attempt as current (unreadable: assumed so).
    fn is_current(&self) -> bool {
        self.task
            .read_manifest()
            .map_or(true, |m| self.fence.is_current(&m, self.number))
    }
}

/// How the supervised body ended: its outcome (`None` when it did not stop after being
/// stopped) and why it was stopped, if it was.
struct Ended {
    outcome: Option<std::thread::Result<Result<Done, StageError>>>,
    stopped: Option<Stop>,
}

/// Runs one attempt of `job` owning the record `fence`: admits it, runs `body` (given the
/// job's context) under supervision, and settles the outcome into the manifest, metrics and
/// BullMQ's retry rules. Returns the job's result or the BullMQ error for the outcome.
pub async fn run<F, Fut>(
    sh: &Shared,
    job: Job,
    token: BullToken,
    fence: Fence,
    body: F,
) -> Result<serde_json::Value, bullmq::Error>
where
    F: FnOnce(Arc<JobCtx>) -> Fut,
    Fut: Future<Output = Result<Done, StageError>>,
{
    let started = Instant::now();
    let (at, children) = match admit(sh, &job, fence).await? {
        Admission::Run(at, children) => (at, children),
        Admission::Reused(result) => return Ok(result),
    };
    // With shared storage the task's scratch goes when this process's last job of it ends.
    let _scratch = at.task.scratch();
    let (ptx, prx) = watch::channel(Progress::default());
    // Kept alive until settled: the progress channel stays open while the body runs.
    let jctx = Arc::new(JobCtx {
        stage: fence.stage(),
        task_id: at.task_id.clone(),
        task: at.task.clone(),
        attempt: at.number,
        cancel: at.cancel.clone(),
        progress: ptx,
        children,
    });
    // Bridge BullMQ's cancel token (a user's cancel, see `cancel.rs`) into ours.
    let bridge = {
        let cancel = at.cancel.clone();
        tokio::spawn(async move {
            token.cancelled().await;
            cancel.cancel();
        })
    };
    let mut job = job;
    let ended = supervise(sh, &mut job, &at, prx, body(jctx.clone())).await;
    bridge.abort();
    drop(jctx);
    settle(sh, &mut job, &at, ended, started).await
}

/// What admission decided.
enum Admission {
    /// Run the body (with the children's results).
    Run(Attempt, HashMap<String, serde_json::Value>),
    /// The stage completed earlier: its recorded result.
    Reused(serde_json::Value),
}

/// Admits an attempt of `job`: refuses a cancelled task, records the attempt as current, and
/// hands back a completed stage's recorded result (checkpoint).
async fn admit(sh: &Shared, job: &Job, fence: Fence) -> Result<Admission, bullmq::Error> {
    let data: JobData = serde_json::from_value(job.data().clone())
        .map_err(|e| bullmq::Error::Unrecoverable(format!("malformed job data: {e}")))?;
    let task = sh.ctx.data.task(&data.task_id);
    if !task.exists() {
        return Err(bullmq::Error::Unrecoverable(format!(
            "task {} has no manifest in {}",
            data.task_id,
            sh.ctx.data.root().display()
        )));
    }
    // Cancel hook: a job picked up after its task was cancelled does not run.
    if task.read_manifest().map(|m| m.status).ok() == Some(TaskStatus::Cancelled) {
        return Err(encode_failure(StageError::cancelled()));
    }
    // attemptsStarted counts every pickup (stalled re-runs too); attemptsMade counts failures.
    let number = job.attempts_started().max(job.attempts_made() + 1);
    let worker = worker_name();
    let manifest = task
        .update_manifest(|m| fence.record_start(m, number, &worker))
        .map_err(|e| bullmq::Error::ProcessingError(e.to_string()))?;
    tracing::info!(%fence, task = %data.task_id, attempt = number, "attempt started");
    let (limit, timeout) = fence.time_limit(&sh.ctx, &manifest);
    let at = Attempt {
        fence,
        task_id: data.task_id,
        task,
        number,
        limit,
        timeout,
        cancel: CancellationToken::new(),
    };
    let Fence::Stage(stage) = fence else {
        return Ok(Admission::Run(at, HashMap::new()));
    };
    // Checkpoint: a previous run completed the stage (its outputs are in place and match the
    // manifest) but died before BullMQ heard of it. Hand back its result.
    if let Some(result) = crate::pipeline::completed_earlier(stage, &at.task, &manifest) {
        return reuse(sh, &at, stage, result).await;
    }
    let children = if stage.child().is_some() {
        job.get_children_values().await?
    } else {
        HashMap::new()
    };
    Ok(Admission::Run(at, children))
}

/// Records the attempt as `reused` and hands back `result`, the stage's recorded result.
async fn reuse(
    sh: &Shared,
    at: &Attempt,
    stage: Stage,
    result: serde_json::Value,
) -> Result<Admission, bullmq::Error> {
    at.task.clear_tmp();
    at.task
        .update_manifest(|m| {
            let outputs = m.stage_mut(stage).outputs.clone();
            m.complete_stage(stage, outputs);
            m.end_attempt(stage, at.number, AttemptOutcome::Reused, None);
        })
        .map_err(|e| bullmq::Error::ProcessingError(e.to_string()))?;
    tracing::info!(%stage, task = %at.task_id, attempt = at.number, "outputs already complete; stage not run again");
    if stage == Stage::Download {
        // The transcribe priority is set before the download job completes, reused or not.
        set_transcribe_priority(&sh.sched, &at.task_id, &result).await;
    }
    Ok(Admission::Reused(result))
}

/// Runs `body` until it ends, forwarding its progress and stopping it (time limit, release,
/// superseded, task cancelled); gives up on it [`WIND_DOWN`] after a stop.
async fn supervise(
    sh: &Shared,
    job: &mut Job,
    at: &Attempt,
    mut progress: watch::Receiver<Progress>,
    body: impl Future<Output = Result<Done, StageError>>,
) -> Ended {
    let run = AssertUnwindSafe(body).catch_unwind();
    tokio::pin!(run);
    let deadline = tokio::time::sleep(at.limit);
    tokio::pin!(deadline);
    let wind_down = tokio::time::sleep(Duration::MAX / 4);
    tokio::pin!(wind_down);
    let mut stopped: Option<Stop> = None;
    let mut fence = tokio::time::interval(FENCE_PERIOD);
    let mut last_sent = Instant::now() - Duration::from_secs(1);
    // Armed while a change waits for the end of the throttle period.
    let trailing = tokio::time::sleep(Duration::MAX / 4);
    tokio::pin!(trailing);
    let mut pending = false;
    let outcome = loop {
        let stop = tokio::select! {
            r = &mut run => break Some(r),
            _ = fence.tick(), if stopped.is_none() => match watch_fence(at) {
                Some(why) => why,
                None => continue,
            },
            _ = &mut deadline, if stopped.is_none() => {
                tracing::warn!(fence = %at.fence, task = %at.task_id, limit = ?at.limit, "time limit passed; cancelling the attempt");
                Stop::TimedOut
            }
            _ = sh.release.cancelled(), if stopped.is_none() => Stop::Released,
            _ = &mut wind_down => {
                tracing::error!(fence = %at.fence, task = %at.task_id, "the cancelled attempt did not end; giving up on it");
                break None;
            }
            changed = progress.changed() => {
                // Throttle: at most ~4 progress writes per second; a change inside the
                // period is written when it ends (`changed()` marks it seen either way).
                if changed.is_ok() && last_sent.elapsed() >= PROGRESS_PERIOD {
                    last_sent = Instant::now();
                    let p = progress.borrow_and_update().clone();
                    forward_progress(job, at, &p).await;
                } else if changed.is_ok() && !pending {
                    pending = true;
                    trailing.as_mut().reset((last_sent + PROGRESS_PERIOD).into());
                }
                continue;
            }
            _ = &mut trailing, if pending => {
                pending = false;
                last_sent = Instant::now();
                let p = progress.borrow_and_update().clone();
                forward_progress(job, at, &p).await;
                continue;
            }
        };
        stopped = Some(stop);
        at.cancel.cancel();
        wind_down
            .as_mut()
            .reset(tokio::time::Instant::now() + WIND_DOWN);
    };
    Ended { outcome, stopped }
}

/// The fence watch: the reason to stop when the task was cancelled or another worker took
/// the job over.
fn watch_fence(at: &Attempt) -> Option<Stop> {
    let m = at.task.read_manifest().ok()?;
    if m.status == TaskStatus::Cancelled {
        return Some(Stop::Cancelled);
    }
    if at.fence.is_current(&m, at.number) {
        return None;
    }
    tracing::warn!(fence = %at.fence, task = %at.task_id, attempt = at.number, "another worker took this job over; stopping the stale run");
    Some(Stop::Superseded)
}

/// Writes progress `p` into the stage's manifest record (while it is active; not with shared
/// storage, whose records take no ticks) and, for stage jobs, into the BullMQ job.
async fn forward_progress(job: &mut Job, at: &Attempt, p: &Progress) {
    if let Fence::Stage(_) = at.fence {
        let v = serde_json::to_value(p).unwrap_or_default();
        let _ = job.update_progress(JobProgress::Object(v)).await;
    }
    if !at.task.records_progress() {
        // Shared storage: ticks stay in BullMQ (job progress and its event stream).
        return;
    }
    let stage = at.fence.stage();
    let _ = at.task.update_manifest(|m| {
        let r = m.stage_mut(stage);
        if r.state != StageState::Active {
            return;
        }
        match at.fence {
            Fence::Stage(_) => r.progress = p.percent,
            // A segment reports its own percent; the stage's sums every segment's.
            Fence::Segment(slot) => {
                segmenting::record_segment_progress(r, slot.index, p.percent);
            }
        }
        if let Some(ph) = &p.phase {
            r.detail.insert("phase".into(), serde_json::json!(ph));
        }
        let download = [
            ("bytes", p.bytes.map(|b| b as f64)),
            ("total_bytes", p.total_bytes.map(|b| b as f64)),
            ("speed_bps", p.speed_bps),
            ("eta_s", p.eta_s),
        ];
        for (k, v) in download {
            if let Some(v) = v {
                r.detail.insert(k.into(), serde_json::json!(v));
            }
        }
    });
}

/// Settles how the attempt ended: the split of long audio, a stale run (nothing recorded),
/// a release at shutdown, a completion or a failure.
async fn settle(
    sh: &Shared,
    job: &mut Job,
    at: &Attempt,
    ended: Ended,
    started: Instant,
) -> Result<serde_json::Value, bullmq::Error> {
    let Ended { outcome, stopped } = ended;
    if matches!(outcome, Some(Ok(Ok(Done::WaitingChildren)))) {
        let _ = at.task.modify_manifest(|m| {
            at.fence.is_current(m, at.number) && {
                m.end_attempt(at.fence.stage(), at.number, AttemptOutcome::Split, None);
                true
            }
        });
        at.task.clear_tmp();
        return Err(bullmq::Error::WaitingChildren);
    }
    if stopped == Some(Stop::Superseded) || !at.is_current() {
        // Stale: the current attempt owns the manifest record and the temp directory.
        tracing::warn!(fence = %at.fence, task = %at.task_id, attempt = at.number, "stale attempt ended; leaving the job to the current one");
        return Err(bullmq::Error::Delayed);
    }
    if let Fence::Stage(_) = at.fence {
        at.task.clear_tmp();
    }
    let failed = |why: &str| format!("internal error: {} {why}", subject(at.fence));
    let result = match outcome {
        Some(Ok(Ok(Done::Output(out)))) => Ok(out),
        Some(Ok(Ok(Done::WaitingChildren))) => return Err(bullmq::Error::WaitingChildren),
        // Stopped from outside: the body's own error (usually "cancelled") is not the reason.
        Some(Ok(Err(_))) | None if stopped == Some(Stop::Released) => {
            return release(job, at).await;
        }
        Some(Ok(Err(_))) | None if stopped == Some(Stop::TimedOut) => {
            Err(StageError::retryable(at.timeout.clone()))
        }
        Some(Ok(Err(_))) | None if stopped == Some(Stop::Cancelled) => Err(StageError::cancelled()),
        Some(Ok(Err(e))) => Err(e),
        None => Err(StageError::retryable(failed("did not stop when cancelled"))),
        Some(Err(panic)) => Err(StageError::permanent(match at.fence {
            Fence::Stage(_) => failed(&format!("panicked: {}", panic_message(panic.as_ref()))),
            Fence::Segment(_) => "internal error: a segment job panicked".into(),
        })),
    };
    match result {
        Ok(out) => complete(sh, job, at, out, started).await,
        Err(e) => fail(job, at, e, started),
    }
}

/// What an attempt's messages call the work: "the transcribe stage", "segment 2 of 3".
fn subject(fence: Fence) -> String {
    match fence {
        Fence::Stage(s) => format!("the {s} stage"),
        Fence::Segment(s) => format!("segment {} of {}", s.index + 1, s.count),
    }
}

/// Records a completed attempt: its measurement, and for stage jobs the completion (fenced),
/// the transcribe priority after a download, the stage metric and BullMQ progress 100 %.
async fn complete(
    sh: &Shared,
    job: &mut Job,
    at: &Attempt,
    out: StageOutput,
    started: Instant,
) -> Result<serde_json::Value, bullmq::Error> {
    record_measure(sh, job.id(), at, out.measure).await;
    let Fence::Stage(stage) = at.fence else {
        return Ok(out.result);
    };
    if stage == Stage::Download {
        set_transcribe_priority(&sh.sched, &at.task_id, &out.result).await;
    }
    let recorded = at
        .task
        .modify_manifest(|m| {
            at.fence.is_current(m, at.number).then(|| {
                m.record_completion(stage, out.outputs, out.result.clone());
                m.end_attempt(stage, at.number, AttemptOutcome::Completed, None);
                m.status
            })
        })
        .map_err(|e| bullmq::Error::ProcessingError(e.to_string()))?;
    let Some(status) = recorded else {
        return Err(bullmq::Error::Delayed);
    };
    let outcome = if status == TaskStatus::CompletedWithWarnings {
        metrics::Outcome::CompletedWithWarnings
    } else {
        metrics::Outcome::Completed
    };
    metrics::observe_stage(stage, started.elapsed().as_secs_f64(), outcome);
    let done = JobProgress::Object(serde_json::json!({"percent": 100.0}));
    let _ = job.update_progress(done).await;
    tracing::info!(%stage, task = %at.task_id, "stage completed");
    Ok(out.result)
}

/// Records a failed attempt (fenced) and returns its BullMQ error. A stage job's failure is
/// logged in the stage's record (final or not); a segment job's only on its last attempt (the
/// last failure fails the parent inside Redis, where no stage code runs), never for a cancel.
fn fail(
    job: &Job,
    at: &Attempt,
    e: StageError,
    started: Instant,
) -> Result<serde_json::Value, bullmq::Error> {
    // BullMQ retries while attemptsMade (failures so far, not stalls) + 1 < attempts.
    let max_attempts = job.opts().attempts.unwrap_or(1).max(1);
    let final_attempt = !e.is_retryable() || job.attempts_made() + 1 >= max_attempts;
    // A retry is routine (the user sees "retrying after …" in the task's record): info. The
    // program's own words go with it, so `--verbose` shows them.
    let detail = e.detail.as_deref().unwrap_or("");
    if final_attempt && e.class != crate::domain::FailureClass::Cancelled {
        tracing::warn!(fence = %at.fence, task = %at.task_id, attempt = at.number, detail, "failed: {}", e.message);
    } else {
        tracing::info!(fence = %at.fence, task = %at.task_id, attempt = at.number, final_attempt, detail, "attempt failed: {}", e.message);
    }
    let current = |m: &Manifest| at.fence.is_current(m, at.number);
    match at.fence {
        Fence::Stage(stage) => {
            let outcome = if final_attempt {
                metrics::Outcome::Failed
            } else {
                metrics::Outcome::Retry
            };
            metrics::observe_stage(stage, started.elapsed().as_secs_f64(), outcome);
            let recorded = at.task.modify_manifest(|m| {
                current(m) && {
                    let key = format!("attempt_{}_error", at.number);
                    let r = m.stage_mut(stage);
                    r.detail.insert(key, serde_json::json!(e.message));
                    let outcome = if e.class == crate::domain::FailureClass::Cancelled {
                        AttemptOutcome::Cancelled
                    } else {
                        AttemptOutcome::Failed
                    };
                    m.end_attempt(stage, at.number, outcome, Some(&e.message));
                    if let Some(a) = m.stage_mut(stage).attempt_log.last_mut() {
                        a.detail = e.detail.clone();
                    }
                    let d = e.detail.as_deref();
                    m.fail_stage(stage, &e.message, d, e.is_retryable(), final_attempt);
                    true
                }
            });
            if matches!(recorded, Ok(false)) {
                return Err(bullmq::Error::Delayed);
            }
        }
        Fence::Segment(s) if final_attempt && e.class != crate::domain::FailureClass::Cancelled => {
            use crate::domain::transcript::format_clock;
            let message = format!(
                "{} (segment {} of {}, {}–{})",
                e.message,
                s.index + 1,
                s.count,
                format_clock(s.start_ms),
                format_clock(s.end_ms),
            );
            let r = at.task.modify_manifest(|m| {
                current(m) && {
                    let d = e.detail.as_deref();
                    m.fail_stage(Stage::Transcribe, &message, d, e.is_retryable(), true);
                    true
                }
            });
            if let Err(err) = r {
                tracing::warn!(job = %job.id(), error = %err, "could not record the segment failure");
            }
        }
        Fence::Segment(_) => {}
    }
    Err(encode_failure(e))
}

/// Puts a job whose attempt was stopped at shutdown back in `wait` (its lock released),
/// records the attempt as released (the stage waits again), and tells BullMQ the job was
/// moved (`Error::Delayed`), so it is neither completed nor failed. If Redis cannot be
/// reached the job stays active and is recovered as stalled once its lock lapses.
async fn release(job: &Job, at: &Attempt) -> Result<serde_json::Value, bullmq::Error> {
    let fence = at.fence;
    let _ = at.task.update_manifest(|m| {
        if let Fence::Stage(stage) = fence {
            m.end_attempt(stage, at.number, AttemptOutcome::Released, None);
        }
        let r = m.stage_mut(fence.stage());
        if r.state != StageState::Active {
            return;
        }
        r.state = StageState::Waiting;
        match fence {
            Fence::Stage(_) => r.progress = 0.0,
            // The stage resumes at this segment.
            Fence::Segment(s) => {
                let phase = format!(
                    "waiting: segment {}/{} goes back to the queue",
                    s.index + 1,
                    s.count
                );
                r.detail.insert("phase".into(), serde_json::json!(phase));
            }
        }
    });
    match job.move_to_wait(None).await {
        Ok(_) => tracing::info!(%fence, job = %job.id(), "shutdown: job put back in the queue"),
        Err(e) => {
            tracing::warn!(%fence, job = %job.id(), error = %e, "shutdown: could not put the job back; it will be recovered as stalled")
        }
    }
    Err(bullmq::Error::Delayed)
}

/// Records what the body measured: hands freed memory back to the OS, folds the RSS report
/// into the model's stats, exports the metrics, records the figures in the stage's manifest
/// detail (`peak_rss_mb`, `rss_delta_mb`, `rss_overlapped`) and raises a `memory` alert when
/// the job's delta exceeds its share of the memory budget.
async fn record_measure(sh: &Shared, job_id: &str, at: &Attempt, measure: Measure) {
    let Some(rss) = measure.rss else {
        return;
    };
    let ctx = &sh.ctx;
    crate::observe::rss::trim_heap();
    budget::record_model_stats(&ctx.data.model_stats_file(&ctx.cfg.model), &rss);
    metrics::observe_transcription(measure.rtf.unwrap_or(0.0), &rss);
    let stage = at.fence.stage();
    let _ = at
        .task
        .update_manifest(|m| budget::fold_rss_detail(&mut m.stage_mut(stage).detail, &rss));
    let share = budget::share_bytes(ctx.plan(), &ctx.cfg);
    if rss.delta_bytes > share {
        let message = format!(
            "{stage} job {job_id} used {} MB, more than its {} MB share of the memory budget",
            budget::mb(rss.delta_bytes),
            budget::mb(share)
        );
        let (value, limit) = (rss.delta_bytes as f64, share as f64);
        let alert = Alert::job("memory", stage, &at.task_id, job_id, message, value, limit);
        alerts::raise(&alert, stage, &at.task, &sh.events).await;
    }
}

/// Sets the task's transcribe priority from the download result's `duration_s` (schedule.rs).
async fn set_transcribe_priority(sched: &Scheduler, task_id: &str, result: &serde_json::Value) {
    let Some(d) = result.get("duration_s").and_then(|v| v.as_f64()) else {
        return;
    };
    match sched.on_download_done(task_id, d).await {
        Ok(p) => {
            tracing::debug!(task = %task_id, audio_s = d, priority = ?p, "transcribe priority set")
        }
        Err(e) => tracing::warn!(task = %task_id, error = %e, "cannot set the transcribe priority"),
    }
}

/// This process's name in attempt records and the reconciler's lease: `<hostname>:<pid>`.
pub(crate) fn worker_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname(2) writes at most `buf.len()` bytes into our buffer.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let host = if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        "localhost".into()
    };
    format!("{host}:{}", std::process::id())
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::manifest::Source;

    #[test]
    fn a_segment_fence_follows_its_record() {
        let slot = SegmentSlot {
            index: 1,
            count: 3,
            start_ms: 60_000,
            end_ms: 120_000,
        };
        let fence = Fence::Segment(slot);
        let source = Source::File {
            path: "/a.wav".into(),
        };
        let mut m = Manifest::new("t", "/a.wav", source);
        assert!(!fence.is_current(&m, 1));
        fence.record_start(&mut m, 1, "w:1");
        assert!(fence.is_current(&m, 1));
        fence.record_start(&mut m, 2, "w:2");
        assert!(!fence.is_current(&m, 1) && fence.is_current(&m, 2));
        assert_eq!(segment_attempt_of(&m, 1), Some(2));
        assert_eq!(fence.to_string(), "segment 2/3");
        assert_eq!(subject(fence), "segment 2 of 3");
        let stage = Fence::Stage(Stage::Download);
        stage.record_start(&mut m, 1, "w:1");
        assert!(stage.is_current(&m, 1) && !stage.is_current(&m, 2));
    }
}
