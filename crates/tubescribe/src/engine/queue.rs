//! The flow and the workers on BullMQ (`bullmq-official`): how a task becomes three jobs and
//! how a job becomes a stage run.
//!
//! Each task is one flow: the root is the `summarize` job, its child the `transcribe` job,
//! whose child is the `download` job (BullMQ runs children first). Job ids are derived from
//! the task id (`dl-`, `tr-`, `sum-`), so adding the same flow twice is a no-op. Every child
//! has `fail_parent_on_failure`, so a failed download fails the whole task and nothing waits
//! forever. Keys use BullMQ's default `bull` prefix, so Node BullMQ and Bull Board can read
//! the same queues.
//!
//! Guard rails for the crate's known pitfalls (see the design notes on the queue engine):
//! every processor runs under `catch_unwind` (a panicking handler would otherwise leave its
//! job active forever) and every worker's event channel is drained (it is unbounded).
//!
//! Crash safety: stalled-job recovery is tuned per stage ([`StagePolicy`]); every attempt is
//! logged in the manifest; a re-run whose outputs are already complete (size + SHA-256 match
//! the manifest) hands back the recorded result without running the stage again; each attempt
//! has a time limit scaled by the media duration (BullMQ has no job timeout), after which the
//! stage is cancelled (its programs' process groups are killed, whisper is aborted) and the
//! attempt fails as retryable `timeout`. On shutdown, [`Workers::close`] stops fetching, lets
//! active jobs finish within a grace period, then cancels the rest and moves them back to
//! `wait` (`moveJobFromActiveToWait`) so another worker takes them at once.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use bullmq::options::RedisConnectionOptions;
use bullmq::types::BackoffStrategy;
use bullmq::worker::{CancellationToken as BullToken, WorkerEvent};
use bullmq::{
    FlowJob, FlowProducer, FlowProducerOptions, Job, JobOptions, JobProgress, JobState, Queue,
    QueueOptions, Worker, WorkerOptions,
};
use futures::FutureExt;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, StagePolicy};
use crate::domain::keys::{PREFIX, SEGMENT_JOB};
use crate::domain::manifest::{AttemptOutcome, StageState};
use crate::domain::{FailureClass, Progress, Stage};
use crate::pipeline as stages;
use crate::pipeline::{JobCtx, StageCtx, StageError};

/// Name of our custom backoff strategy (see [`backoff_delay_ms`]).
const BACKOFF_NAME: &str = "tubescribe";
/// Marker at the start of a failure message that asks for a cool-down backoff.
const COOL_DOWN_MARK: &str = "cool-down: ";
/// Marker of a cool-down with the service's own wait: `cool-down <ms> ms: <message>`.
const WAIT_MARK: &str = "cool-down ";

/// Errors talking to the queue. Redis errors are retryable (the server may come back).
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// An error from BullMQ or Redis.
    #[error("queue error: {0}")]
    Bull(#[from] bullmq::Error),
}

/// The data every job of a task carries.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobData {
    /// The task id (directory name under `<data>/tasks`).
    pub task_id: String,
}

/// Backoff before retry number `attempt` (1-based): `base_ms × 2^(attempt−1)`, or for
/// cool-down failures (bot checks, HTTP 429; marked by the processor) `cool_down_ms ×
/// 2^(attempt−1)`. The defaults are 2 s (5 s for summaries) and 5 min per stage
/// ([`StagePolicy`]). A cool-down whose service named its wait (`Retry-After`, marked
/// `cool-down <ms> ms: `) waits exactly that, but at least `base_ms`.
pub fn backoff_delay_ms(attempt: u32, error_message: &str, base_ms: i64, cool_down_ms: i64) -> i64 {
    if let Some(wait_ms) = error_message
        .strip_prefix(WAIT_MARK)
        .and_then(|rest| rest.split_once(" ms: "))
        .and_then(|(n, _)| n.parse::<i64>().ok())
    {
        return wait_ms.max(base_ms);
    }
    let base = if error_message.starts_with(COOL_DOWN_MARK) {
        cool_down_ms
    } else {
        base_ms
    };
    base.saturating_mul(2i64.pow(attempt.saturating_sub(1).min(10)))
}

/// Connection options for a Redis URL (`redis://`, `rediss://`, `redis+unix://`).
pub fn connection(url: &str) -> RedisConnectionOptions {
    RedisConnectionOptions::new().url(url)
}

fn job_options(stage: Stage, task_id: &str, attempts: u32) -> JobOptions {
    let mut o = JobOptions::new()
        .job_id(stage.job_id(task_id))
        .attempts(attempts)
        .backoff(BackoffStrategy::Custom(BACKOFF_NAME.into()));
    if stage != Stage::LAST {
        o = o.fail_parent_on_failure();
    }
    if stage == Stage::Transcribe {
        // Until the download knows the duration (schedule.rs sets the real priority).
        o = o.priority(crate::engine::schedule::UNKNOWN_PRIORITY);
    }
    o
}

/// The flow of one task: summarize ← transcribe ← download, with each stage's default
/// attempts ([`StagePolicy::default_for`]).
pub fn task_flow(task_id: &str) -> Result<FlowJob, QueueError> {
    task_flow_with(task_id, &|s| StagePolicy::default_for(s).attempts)
}

/// The flow of one task with `attempts(stage)` attempts per stage job.
pub fn task_flow_with(
    task_id: &str,
    attempts: &dyn Fn(Stage) -> u32,
) -> Result<FlowJob, QueueError> {
    let data = serde_json::json!(JobData {
        task_id: task_id.to_string()
    });
    let mut node: Option<FlowJob> = None;
    for stage in Stage::ALL {
        let mut j = FlowJob::new(stage.queue_name(), stage.queue_name(), data.clone())?
            .options(job_options(stage, task_id, attempts(stage)));
        if let Some(child) = node.take() {
            j = j.add_child(child);
        }
        node = Some(j);
    }
    Ok(node.expect("three stages"))
}

/// A producer connection: adds flows and inspects or removes jobs.
pub struct Producer {
    flows: FlowProducer,
    queues: Vec<(Stage, Queue)>,
    attempts: Vec<(Stage, u32)>,
}

impl Producer {
    /// Reads every queue's job counts from Redis and publishes them as the
    /// `tubescribe_queue_jobs` metric ([`crate::observe::metrics::set_queue_jobs`]).
    ///
    /// # Errors
    /// Redis errors (the previous counts stay published).
    pub async fn publish_queue_counts(&self) -> Result<(), QueueError> {
        for s in Stage::ALL {
            let c = self.queue(s).get_job_counts().await?;
            crate::observe::metrics::set_queue_jobs(
                s.queue_name(),
                &[
                    ("waiting", c.waiting + c.prioritized + c.paused),
                    ("waiting_children", c.waiting_children),
                    ("active", c.active),
                    ("delayed", c.delayed),
                    ("completed", c.completed),
                    ("failed", c.failed),
                ],
            );
        }
        Ok(())
    }

    /// Connects to Redis at `url`.
    pub async fn connect(url: &str) -> Result<Self, QueueError> {
        let flows = FlowProducer::with_options(
            FlowProducerOptions::new()
                .connection(connection(url))
                .prefix(PREFIX),
        )
        .await?;
        let mut queues = Vec::new();
        for s in Stage::ALL {
            let q = Queue::with_options(
                s.queue_name(),
                QueueOptions {
                    connection: connection(url),
                    prefix: PREFIX.into(),
                    ..Default::default()
                },
            )
            .await?;
            queues.push((s, q));
        }
        let attempts = Stage::ALL
            .iter()
            .map(|s| (*s, StagePolicy::default_for(*s).attempts))
            .collect();
        Ok(Self {
            flows,
            queues,
            attempts,
        })
    }

    /// Uses the attempts configured per stage in `cfg` for the flows it adds.
    pub fn with_config(mut self, cfg: &Config) -> Self {
        self.attempts = cfg
            .stage_policies
            .iter()
            .map(|(s, p)| (*s, p.attempts))
            .collect();
        self
    }

    /// The queue of `stage`.
    pub fn queue(&self, stage: Stage) -> &Queue {
        &self
            .queues
            .iter()
            .find(|(s, _)| *s == stage)
            .expect("all stages")
            .1
    }

    /// Adds the flow of `task_id` (a no-op if its jobs exist already).
    pub async fn add_task(&self, task_id: &str) -> Result<(), QueueError> {
        let attempts = |s: Stage| {
            self.attempts
                .iter()
                .find(|(st, _)| *st == s)
                .map_or(1, |(_, a)| *a)
        };
        self.flows.add(task_flow_with(task_id, &attempts)?).await?;
        Ok(())
    }

    /// The BullMQ state of `stage`'s job of `task_id`, if the job exists.
    pub async fn job_state(
        &self,
        stage: Stage,
        task_id: &str,
    ) -> Result<Option<JobState>, QueueError> {
        let id = stage.job_id(task_id);
        match self.queue(stage).get_job(&id).await? {
            None => Ok(None),
            Some(_) => Ok(Some(self.queue(stage).get_job_state(&id).await?)),
        }
    }

    /// Removes the three jobs of `task_id` (root first), so the flow can be added again.
    /// Active jobs cannot be removed; returns false if one was.
    pub async fn remove_task_jobs(&self, task_id: &str) -> Result<bool, QueueError> {
        let mut all = true;
        for stage in Stage::ALL.iter().rev() {
            let id = stage.job_id(task_id);
            if self.queue(*stage).get_job(&id).await?.is_some()
                && !self.queue(*stage).remove(&id).await?
            {
                all = false;
            }
        }
        Ok(all)
    }

    /// Closes the connections.
    pub async fn close(&self) {
        self.flows.close().await;
        for (_, q) in &self.queues {
            q.close().await;
        }
    }
}

/// Worker settings for one stage in this process.
#[derive(Debug, Clone, Copy)]
pub struct WorkerSettings {
    /// Concurrent jobs in this process.
    pub concurrency: usize,
    /// Job lock duration; renewed every half of it while the job runs.
    pub lock_duration: Duration,
    /// How often stalled jobs (whose worker died) are looked for.
    pub stalled_interval: Duration,
    /// How many times a job may stall before it fails.
    pub max_stalled_count: u32,
    /// Cluster-wide cap on active jobs of the queue, set in Redis when the worker starts
    /// (`Some(0)` removes it, `None` leaves it alone).
    pub global_concurrency: Option<u64>,
}

impl WorkerSettings {
    /// Defaults: lock 30 s, stalled check every 15 s, a job may stall 5 times, no global cap.
    pub fn with_concurrency(concurrency: usize) -> Self {
        Self::from_policy(concurrency, &StagePolicy::default_for(Stage::Transcribe))
    }

    /// `concurrency` jobs in this process with the lock, stall and cap settings of `policy`.
    pub fn from_policy(concurrency: usize, policy: &StagePolicy) -> Self {
        Self {
            concurrency,
            lock_duration: policy.lock_duration,
            stalled_interval: policy.stalled_interval,
            max_stalled_count: policy.max_stalled_count,
            global_concurrency: policy.global_concurrency,
        }
    }
}

/// The stage workers of this process.
pub struct Workers {
    workers: Vec<(Stage, Arc<Worker>)>,
    drains: Vec<tokio::task::JoinHandle<()>>,
    sched: Arc<crate::engine::schedule::Scheduler>,
    /// Cancelled at shutdown after the grace period: active jobs stop and go back to `wait`.
    release: CancellationToken,
    /// Jobs whose processor is running in this process.
    running: Arc<std::sync::atomic::AtomicUsize>,
}

impl Workers {
    /// Starts one worker per `(stage, settings)` on Redis at `url`, and applies each stage's
    /// global concurrency setting. Errors when Redis is unreachable (see
    /// [`Workers::start_when_reachable`]).
    pub async fn start(
        url: &str,
        ctx: Arc<StageCtx>,
        stages: &[(Stage, WorkerSettings)],
    ) -> Result<Self, QueueError> {
        let mut workers = Vec::new();
        let mut drains = Vec::new();
        // Priorities, aging and segment flows (schedule.rs, segments.rs); alerts (alerts.rs).
        let sched = Arc::new(
            crate::engine::schedule::Scheduler::connect(url, ctx.cfg.schedule.aging_rate).await?,
        );
        crate::observe::alerts::set_connection(sched.transcribe_queue().connection().connection());
        let release = CancellationToken::new();
        let running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for (stage, ws) in stages {
            let stage = *stage;
            if let Some(n) = ws.global_concurrency {
                let q = Queue::with_options(
                    stage.queue_name(),
                    QueueOptions {
                        connection: connection(url),
                        prefix: PREFIX.into(),
                        ..Default::default()
                    },
                )
                .await?;
                if n == 0 {
                    q.remove_global_concurrency().await?;
                } else {
                    q.set_global_concurrency(n).await?;
                }
                q.close().await;
            }
            let ctx2 = ctx.clone();
            let sched2 = sched.clone();
            let release2 = release.clone();
            let running2 = running.clone();
            let processor = move |job: Job, token: BullToken| {
                let ctx = ctx2.clone();
                let release = release2.clone();
                let running = running2.clone();
                let sched = sched2.clone();
                async move {
                    let _count = RunningGuard::enter(running);
                    process_job(stage, ctx, sched, job, token, release).await
                }
            };
            let concurrency = if stage == Stage::Transcribe {
                let measured = crate::pipeline::budget::read_model_stats(
                    &ctx.data.model_stats_file(&ctx.cfg.model),
                )
                .map(|s| s.per_job_peak_bytes);
                let plan = crate::pipeline::budget::plan(&ctx.cfg, ws.concurrency, measured);
                crate::pipeline::budget::install(plan);
                drains.push(sched.clone().spawn_ager());
                tracing::info!(?plan, "transcribe memory plan");
                plan.slots
            } else {
                ws.concurrency
            };
            let backoff_cfg = ctx.cfg.clone();
            let opts = WorkerOptions::new()
                .connection(connection(url))
                .prefix(PREFIX)
                .concurrency(concurrency)
                .lock_duration(ws.lock_duration)
                .stalled_interval(ws.stalled_interval)
                .max_stalled_count(ws.max_stalled_count)
                .backoff_strategy(Arc::new(move |attempt, name, msg, _data| {
                    // The job name is the queue name, i.e. the stage.
                    let p = backoff_cfg.policy(Stage::from_queue_name(name).unwrap_or(stage));
                    let d = backoff_delay_ms(
                        attempt,
                        msg,
                        p.backoff.as_millis() as i64,
                        p.cool_down.as_millis() as i64,
                    );
                    Box::pin(async move { d })
                }));
            let mut opts = opts;
            // After a Redis error the fetch loop waits this long before trying again.
            opts.run_retry_delay = ctx.cfg.redis_retry.as_millis() as u64;
            let w = Arc::new(Worker::with_options(stage.queue_name(), processor, opts).await?);
            let w2 = w.clone();
            drains.push(tokio::spawn(async move {
                while let Some(ev) = w2.next_event().await {
                    match ev {
                        WorkerEvent::Error(e) => tracing::warn!(%stage, error = %e, "worker error"),
                        WorkerEvent::Stalled { job_id } => {
                            tracing::warn!(%stage, %job_id, "job stalled; it will run again")
                        }
                        WorkerEvent::Closed => break,
                        _ => {}
                    }
                }
            }));
            workers.push((stage, w));
        }
        Ok(Self {
            workers,
            drains,
            sched,
            release,
            running,
        })
    }

    /// A handle that cancels this process's active jobs of a task (see `cancel.rs`).
    pub fn canceller(&self) -> Canceller {
        Canceller {
            workers: self.workers.clone(),
        }
    }

    /// [`Workers::start`], retried while Redis is unreachable: waits `first_retry`, doubling up
    /// to 30 s between attempts, until it succeeds or `stop` completes (then `None`).
    pub async fn start_when_reachable(
        url: &str,
        ctx: Arc<StageCtx>,
        stages: &[(Stage, WorkerSettings)],
        first_retry: Duration,
        stop: impl std::future::Future<Output = ()>,
    ) -> Option<Self> {
        tokio::pin!(stop);
        let mut wait = first_retry;
        loop {
            match Workers::start(url, ctx.clone(), stages).await {
                Ok(w) => return Some(w),
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?wait, "cannot start workers; is Redis reachable?");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = &mut stop => return None,
            }
            wait = (wait * 2).min(Duration::from_secs(30));
        }
    }

    /// Number of jobs running in this process.
    pub async fn active_count(&self) -> usize {
        self.running.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Graceful shutdown: stops taking jobs, waits up to `grace` for active ones to finish,
    /// then cancels the rest (their programs are killed) and moves them back to `wait` so
    /// another worker takes them at once; finally closes the workers.
    pub async fn close(self, grace: Duration) {
        for (_, w) in &self.workers {
            w.pause();
        }
        let deadline = tokio::time::Instant::now() + grace;
        while self.active_count().await > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let left = self.active_count().await;
        // Close the workers first: a paused worker still parks a blocking BZPOPMIN on the
        // queue's marker and would swallow the wake-up meant for other workers when our jobs
        // go back to `wait`. Closing and dropping them closes those connections; the running
        // jobs keep their own handles and can still move themselves back.
        futures::future::join_all(self.workers.iter().map(|(_, w)| w.close(0))).await;
        for d in self.drains {
            d.abort();
            let _ = d.await;
        }
        drop(self.workers);
        if left > 0 {
            tracing::warn!(
                jobs = left,
                "grace period over: putting active jobs back in the queue"
            );
            self.release.cancel();
            // Cancelled stages end within moments (process groups killed, whisper aborted
            // after at most one encoder pass); each then moves its job back to `wait`.
            let until = tokio::time::Instant::now() + WIND_DOWN;
            while self.running.load(std::sync::atomic::Ordering::SeqCst) > 0
                && tokio::time::Instant::now() < until
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        // After the wind-down: a released long-audio job may still have used the scheduler.
        self.sched.close().await;
    }
}

/// Counts a running processor until dropped (also when the processor panics or is dropped).
struct RunningGuard(Arc<std::sync::atomic::AtomicUsize>);

impl RunningGuard {
    fn enter(n: Arc<std::sync::atomic::AtomicUsize>) -> Self {
        n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        RunningGuard(n)
    }
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// This worker's name in attempt records: `<hostname>:<pid>`.
fn worker_name() -> String {
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

/// Cancels the active jobs of a task held by this process's workers (cloneable).
#[derive(Clone)]
pub struct Canceller {
    workers: Vec<(Stage, Arc<Worker>)>,
}

impl Canceller {
    /// Cancels `task_id`'s active job in each stage worker here; returns how many were found.
    /// The job's cancel token stops the stage (child process group killed, whisper aborted).
    pub async fn cancel_task(&self, task_id: &str) -> usize {
        let mut n = 0;
        for (stage, w) in &self.workers {
            if w.cancel_job(&stage.job_id(task_id)).await {
                n += 1;
            }
        }
        n
    }
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

/// Why a running stage was stopped from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// Its time limit passed.
    TimedOut,
    /// The worker is shutting down and its grace period is over.
    Released,
    /// Another worker started the job again (this attempt's lock lapsed, e.g. while Redis was
    /// unreachable); this run is stale.
    Superseded,
}

/// Seconds a cancelled stage gets to wind down before its job is given up on anyway.
const WIND_DOWN: Duration = Duration::from_secs(30);

/// Runs one job of `stage`: records the attempt in the manifest, hands back the recorded
/// result when the outputs are already complete, forwards progress, runs the stage under
/// `catch_unwind` and its time limit, records the outcome, and maps it onto BullMQ's retry
/// rules. When `release` fires (shutdown), an unfinished stage is cancelled and its job moved
/// back to `wait`.
async fn process_job(
    stage: Stage,
    ctx: Arc<StageCtx>,
    sched: Arc<crate::engine::schedule::Scheduler>,
    mut job: Job,
    token: BullToken,
    release: CancellationToken,
) -> Result<serde_json::Value, bullmq::Error> {
    if job.name() == SEGMENT_JOB {
        return crate::engine::segments::process_segment_job(ctx, job, token, release).await;
    }
    let run_started = std::time::Instant::now();
    let data: JobData = serde_json::from_value(job.data().clone())
        .map_err(|e| bullmq::Error::Unrecoverable(format!("malformed job data: {e}")))?;
    let task = ctx.data.task(&data.task_id);
    if !task.exists() {
        return Err(bullmq::Error::Unrecoverable(format!(
            "task {} has no manifest in {}",
            data.task_id,
            ctx.data.root().display()
        )));
    }
    // Cancel hook: a job picked up after its task was cancelled does not run.
    if task.read_manifest().map(|m| m.status).ok()
        == Some(crate::domain::manifest::TaskStatus::Cancelled)
    {
        return Err(bullmq::Error::Unrecoverable("cancelled".into()));
    }
    // attemptsStarted counts every pickup (stalled re-runs too); attemptsMade counts failures.
    let attempt = job.attempts_started().max(job.attempts_made() + 1);
    let max_attempts = job.opts().attempts.unwrap_or(1).max(1);
    let worker = worker_name();
    let manifest = task
        .update_manifest(|m| m.start_attempt(stage, attempt, &worker))
        .map_err(|e| bullmq::Error::ProcessingError(e.to_string()))?;
    tracing::info!(%stage, task = %data.task_id, attempt, "stage started");

    // Checkpoint: a previous run completed the stage (its outputs are in place and match the
    // manifest) but died before BullMQ heard of it. Hand back its result.
    if let Some(result) = stages::completed_earlier(stage, &task, &manifest) {
        task.clear_tmp();
        task.update_manifest(|m| {
            let outputs = m.stage_mut(stage).outputs.clone();
            m.complete_stage(stage, outputs);
            m.end_attempt(stage, attempt, AttemptOutcome::Reused, None);
        })
        .map_err(|e| bullmq::Error::ProcessingError(e.to_string()))?;
        tracing::info!(%stage, task = %data.task_id, attempt, "outputs already complete; stage not run again");
        if stage == Stage::Download {
            // The transcribe priority is set before the download job completes, reused or not.
            set_transcribe_priority(&sched, &data.task_id, &result).await;
        }
        return Ok(result);
    }
    let policy = ctx.cfg.policy(stage);
    let media_s = manifest.video.as_ref().and_then(|v| v.duration_s);
    let limit = policy.time_limit(media_s);

    let children = if stage.child().is_some() {
        job.get_children_values().await?
    } else {
        Default::default()
    };
    let cancel = CancellationToken::new();
    let (ptx, mut prx) = tokio::sync::watch::channel(Progress::default());
    let jctx = JobCtx {
        stage,
        task_id: data.task_id.clone(),
        task: task.clone(),
        attempt,
        cancel: cancel.clone(),
        progress: ptx,
        children,
    };
    // Bridge BullMQ's cancel token into ours.
    let bridge = {
        let cancel = cancel.clone();
        let token = token.clone();
        tokio::spawn(async move {
            token.cancelled().await;
            cancel.cancel();
        })
    };

    // Long audio goes through segment jobs (segments.rs); `Ok(None)` = waiting for them.
    let long = stage == Stage::Transcribe && crate::engine::segments::is_long(&ctx, &job, &jctx);
    let job_handle = job.clone();
    let run = AssertUnwindSafe(async {
        if long {
            crate::engine::segments::run_long(&ctx, &jctx, &job_handle, &sched).await
        } else {
            stages::run(stage, &ctx, &jctx).await.map(Some)
        }
    })
    .catch_unwind();
    tokio::pin!(run);
    let deadline = tokio::time::sleep(limit);
    tokio::pin!(deadline);
    let mut stopped: Option<Stop> = None;
    let wind_down = tokio::time::sleep(Duration::MAX / 4);
    tokio::pin!(wind_down);
    let mut last_sent = std::time::Instant::now() - Duration::from_secs(1);
    // Fencing watchdog: notices when another worker took the job over.
    let mut fence = tokio::time::interval(Duration::from_secs(1));
    let outcome = loop {
        tokio::select! {
            r = &mut run => break Some(r),
            _ = fence.tick(), if stopped.is_none() => {
                if task.read_manifest().is_ok_and(|m| !m.is_current_attempt(stage, attempt)) {
                    tracing::warn!(%stage, task = %data.task_id, attempt, "another worker took this job over; stopping the stale run");
                    stopped = Some(Stop::Superseded);
                    cancel.cancel();
                    wind_down.as_mut().reset(tokio::time::Instant::now() + WIND_DOWN);
                }
            }
            _ = &mut deadline, if stopped.is_none() => {
                tracing::warn!(%stage, task = %data.task_id, ?limit, "time limit passed; cancelling the stage");
                stopped = Some(Stop::TimedOut);
                cancel.cancel();
                wind_down.as_mut().reset(tokio::time::Instant::now() + WIND_DOWN);
            }
            _ = release.cancelled(), if stopped.is_none() => {
                stopped = Some(Stop::Released);
                cancel.cancel();
                wind_down.as_mut().reset(tokio::time::Instant::now() + WIND_DOWN);
            }
            _ = &mut wind_down => {
                tracing::error!(%stage, task = %data.task_id, "the cancelled stage did not end; giving up on it");
                break None;
            }
            changed = prx.changed() => {
                if changed.is_err() { continue; }
                // Throttle: at most ~4 progress writes per second.
                if last_sent.elapsed() < Duration::from_millis(250) { continue; }
                last_sent = std::time::Instant::now();
                let p = prx.borrow_and_update().clone();
                let _ = job
                    .update_progress(JobProgress::Object(serde_json::to_value(&p).unwrap_or_default()))
                    .await;
                let _ = task.update_manifest(|m| {
                    let r = m.stage_mut(stage);
                    if r.state == StageState::Active {
                        r.progress = p.percent;
                        if let Some(ph) = &p.phase {
                            r.detail.insert("phase".into(), serde_json::json!(ph));
                        }
                        for (k, v) in [("bytes", p.bytes.map(|b| b as f64)), ("total_bytes", p.total_bytes.map(|b| b as f64)), ("speed_bps", p.speed_bps), ("eta_s", p.eta_s)] {
                            if let Some(v) = v { r.detail.insert(k.into(), serde_json::json!(v)); }
                        }
                    }
                });
            }
        }
    };
    bridge.abort();
    let current = |m: &crate::domain::manifest::Manifest| m.is_current_attempt(stage, attempt);
    if matches!(outcome, Some(Ok(Ok(None)))) {
        // Long audio: the job moved to `waiting-children` while its segment jobs run
        // (segments.rs). The split attempt ends here; the merge is the job's next attempt.
        let _ = task.modify_manifest(|m| {
            current(m) && {
                m.end_attempt(stage, attempt, AttemptOutcome::Split, None);
                true
            }
        });
        task.clear_tmp();
        return Err(bullmq::Error::WaitingChildren);
    }
    if stopped == Some(Stop::Superseded) || task.read_manifest().is_ok_and(|m| !current(&m)) {
        // Stale: the current attempt owns the manifest record and the temp directory.
        tracing::warn!(%stage, task = %data.task_id, attempt, "stale attempt ended; leaving the job to the current one");
        return Err(bullmq::Error::Delayed);
    }
    task.clear_tmp();
    let outcome: Result<stages::StageOutput, StageError> = match outcome {
        Some(Ok(Ok(None))) => return Err(bullmq::Error::WaitingChildren), // handled above
        Some(Ok(Ok(Some(out)))) => Ok(out),
        // Stopped from outside: the stage's own error (usually "cancelled") is not the reason.
        Some(Ok(Err(_))) | None if stopped == Some(Stop::Released) => {
            return release_job(stage, &task, attempt, &job).await;
        }
        Some(Ok(Err(_))) | None if stopped == Some(Stop::TimedOut) => {
            Err(StageError::retryable(format!(
                "timeout: the {stage} stage ran longer than its limit of {:.0} s ({:.0} s + {} s per second of media × {:.0} s) and was stopped; its programs were killed",
                limit.as_secs_f64(),
                policy.timeout_base.as_secs_f64(),
                policy.timeout_per_media_s,
                media_s.unwrap_or(0.0),
            )))
        }
        Some(Ok(Err(e))) => Err(e),
        None => Err(StageError::retryable(format!(
            "internal error: the {stage} stage did not stop when cancelled"
        ))),
        Some(Err(panic)) => Err(StageError::permanent(format!(
            "internal error: the {stage} stage panicked: {}",
            panic_message(panic.as_ref())
        ))),
    };
    match outcome {
        Ok(out) => {
            if stage == Stage::Download {
                set_transcribe_priority(&sched, &data.task_id, &out.result).await;
            }
            let recorded = task
                .modify_manifest(|m| {
                    current(m).then(|| {
                        m.record_completion(stage, out.outputs, out.result.clone());
                        m.end_attempt(stage, attempt, AttemptOutcome::Completed, None);
                        m.status
                    })
                })
                .map_err(|e| bullmq::Error::ProcessingError(e.to_string()))?;
            let Some(status) = recorded else {
                return Err(bullmq::Error::Delayed);
            };
            crate::observe::metrics::observe_stage(
                stage,
                run_started.elapsed().as_secs_f64(),
                if status == crate::domain::manifest::TaskStatus::CompletedWithWarnings {
                    crate::observe::metrics::Outcome::CompletedWithWarnings
                } else {
                    crate::observe::metrics::Outcome::Completed
                },
            );
            let _ = job
                .update_progress(JobProgress::Object(serde_json::json!({"percent": 100.0})))
                .await;
            tracing::info!(%stage, task = %data.task_id, "stage completed");
            Ok(out.result)
        }
        Err(e) => {
            // BullMQ retries while attemptsMade (failures so far, not stalls) + 1 < attempts.
            let final_attempt = !e.is_retryable() || job.attempts_made() + 1 >= max_attempts;
            crate::observe::metrics::observe_stage(
                stage,
                run_started.elapsed().as_secs_f64(),
                if final_attempt {
                    crate::observe::metrics::Outcome::Failed
                } else {
                    crate::observe::metrics::Outcome::Retry
                },
            );
            tracing::warn!(%stage, task = %data.task_id, attempt, final_attempt, error = %e.message, "stage failed");
            let recorded = task.modify_manifest(|m| {
                current(m) && {
                    let r = m.stage_mut(stage);
                    r.detail.insert(
                        format!("attempt_{attempt}_error"),
                        serde_json::json!(e.message),
                    );
                    m.end_attempt(stage, attempt, AttemptOutcome::Failed, Some(&e.message));
                    m.fail_stage(stage, &e.message, e.is_retryable(), final_attempt);
                    true
                }
            });
            if matches!(recorded, Ok(false)) {
                return Err(bullmq::Error::Delayed);
            }
            Err(match e.class {
                FailureClass::Permanent => bullmq::Error::Unrecoverable(e.message),
                FailureClass::Retryable => bullmq::Error::ProcessingError(e.message),
                FailureClass::CoolDown => bullmq::Error::ProcessingError(match e.retry_after {
                    Some(w) => format!("{WAIT_MARK}{} ms: {}", w.as_millis(), e.message),
                    None => format!("{COOL_DOWN_MARK}{}", e.message),
                }),
            })
        }
    }
}

/// Sets the task's transcribe priority from the download result's `duration_s` (schedule.rs).
async fn set_transcribe_priority(
    sched: &crate::engine::schedule::Scheduler,
    task_id: &str,
    result: &serde_json::Value,
) {
    if let Some(d) = result.get("duration_s").and_then(|v| v.as_f64()) {
        match sched.on_download_done(task_id, d).await {
            Ok(p) => {
                tracing::debug!(task = %task_id, audio_s = d, priority = ?p, "transcribe priority set")
            }
            Err(e) => {
                tracing::warn!(task = %task_id, error = %e, "cannot set the transcribe priority")
            }
        }
    }
}

/// Puts a job whose stage was stopped at shutdown back in `wait` (its lock released), records
/// the attempt as released, and tells BullMQ the job was moved (`Error::Delayed`), so it is
/// neither completed nor failed. If Redis cannot be reached the job stays active and is
/// recovered as stalled once its lock lapses.
async fn release_job(
    stage: Stage,
    task: &crate::store::TaskDir,
    attempt: u32,
    job: &Job,
) -> Result<serde_json::Value, bullmq::Error> {
    let _ = task.update_manifest(|m| {
        m.end_attempt(stage, attempt, AttemptOutcome::Released, None);
        let r = m.stage_mut(stage);
        if r.state == StageState::Active {
            r.state = StageState::Waiting;
            r.progress = 0.0;
        }
    });
    match job.move_to_wait(None).await {
        Ok(_) => tracing::info!(%stage, job = %job.id(), "shutdown: job put back in the queue"),
        Err(e) => {
            tracing::warn!(%stage, job = %job.id(), error = %e, "shutdown: could not put the job back; it will be recovered as stalled")
        }
    }
    Err(bullmq::Error::Delayed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_cool_down_waits_long() {
        assert_eq!(backoff_delay_ms(1, "HTTP 503", 2_000, 300_000), 2_000);
        assert_eq!(backoff_delay_ms(3, "HTTP 503", 2_000, 300_000), 8_000);
        assert_eq!(
            backoff_delay_ms(1, "cool-down: HTTP 429", 2_000, 300_000),
            300_000
        );
        assert_eq!(
            backoff_delay_ms(2, "cool-down: bot check", 2_000, 300_000),
            600_000
        );
        assert_eq!(backoff_delay_ms(40, "x", i64::MAX / 2, 1), i64::MAX);
        // The service's own wait (Retry-After) wins over the configured cool-down.
        assert_eq!(
            backoff_delay_ms(
                1,
                "cool-down 3600000 ms: LLM API rate limit",
                5_000,
                300_000
            ),
            3_600_000
        );
        assert_eq!(
            backoff_delay_ms(2, "cool-down 10 ms: too short", 5_000, 300_000),
            5_000
        );
        // What the processor writes for a direct URL's absurd Retry-After: capped at an hour.
        let e = StageError::cool_down_for("HTTP 429", Duration::from_secs(u64::MAX));
        assert_eq!(e.retry_after, Some(crate::domain::MAX_RETRY_AFTER));
    }

    #[test]
    fn flow_is_summarize_over_transcribe_over_download() {
        let f = task_flow("yt-abcdefghijk").unwrap();
        let v = format!("{f:?}");
        // Root first, then its child, then the deepest child.
        let (s, t, d) = (
            v.find("sum-yt-abcdefghijk").unwrap(),
            v.find("tr-yt-abcdefghijk").unwrap(),
            v.find("dl-yt-abcdefghijk").unwrap(),
        );
        assert!(s < t && t < d, "{v}");
    }
}
