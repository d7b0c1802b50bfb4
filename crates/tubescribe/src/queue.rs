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

use crate::manifest::StageState;
use crate::stages::{self, FailureClass, JobCtx, Progress, Stage, StageCtx, StageError};

/// BullMQ key prefix (BullMQ's default, so Bull Board finds the queues).
pub const PREFIX: &str = "bull";

/// Name of our custom backoff strategy (see [`backoff_delay_ms`]).
const BACKOFF_NAME: &str = "tubescribe";
/// Marker at the start of a failure message that asks for a cool-down backoff.
const COOL_DOWN_MARK: &str = "cool-down: ";

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

/// Retry policy per stage: attempts and the base of the exponential backoff.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in total (1 = no retry).
    pub attempts: u32,
}

/// Attempts per stage: downloads meet flaky networks; transcription rarely fails twice;
/// summaries may meet a busy LLM.
pub fn retry_policy(stage: Stage) -> RetryPolicy {
    match stage {
        Stage::Download => RetryPolicy { attempts: 3 },
        Stage::Transcribe => RetryPolicy { attempts: 2 },
        Stage::Summarize => RetryPolicy { attempts: 3 },
    }
}

/// Backoff before retry number `attempt` (1-based): 2 s × 2^(attempt−1), or for cool-down
/// failures (bot checks, HTTP 429) 5 min × 2^(attempt−1).
pub fn backoff_delay_ms(attempt: u32, error_message: &str) -> i64 {
    let base: i64 = if error_message.starts_with(COOL_DOWN_MARK) {
        300_000
    } else {
        2_000
    };
    base * 2i64.pow(attempt.saturating_sub(1).min(10))
}

/// Connection options for a Redis URL (`redis://`, `rediss://`, `redis+unix://`).
pub fn connection(url: &str) -> RedisConnectionOptions {
    RedisConnectionOptions::new().url(url)
}

fn job_options(stage: Stage, task_id: &str) -> JobOptions {
    let p = retry_policy(stage);
    let mut o = JobOptions::new()
        .job_id(stage.job_id(task_id))
        .attempts(p.attempts)
        .backoff(BackoffStrategy::Custom(BACKOFF_NAME.into()));
    if stage != Stage::LAST {
        o = o.fail_parent_on_failure();
    }
    o
}

/// The flow of one task: summarize ← transcribe ← download.
pub fn task_flow(task_id: &str) -> Result<FlowJob, QueueError> {
    let data = serde_json::json!(JobData {
        task_id: task_id.to_string()
    });
    let mut node: Option<FlowJob> = None;
    for stage in Stage::ALL {
        let mut j = FlowJob::new(stage.queue_name(), stage.queue_name(), data.clone())?
            .options(job_options(stage, task_id));
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
}

impl Producer {
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
        Ok(Self { flows, queues })
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
        self.flows.add(task_flow(task_id)?).await?;
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

/// Worker settings for one stage.
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
}

impl WorkerSettings {
    /// Defaults: lock 30 s, stalled check every 15 s, a job may stall twice.
    pub fn with_concurrency(concurrency: usize) -> Self {
        Self {
            concurrency,
            lock_duration: Duration::from_secs(30),
            stalled_interval: Duration::from_secs(15),
            max_stalled_count: 2,
        }
    }
}

/// The stage workers of this process.
pub struct Workers {
    workers: Vec<(Stage, Arc<Worker>)>,
    drains: Vec<tokio::task::JoinHandle<()>>,
}

impl Workers {
    /// Starts one worker per `(stage, settings)` on Redis at `url`.
    pub async fn start(
        url: &str,
        ctx: Arc<StageCtx>,
        stages: &[(Stage, WorkerSettings)],
    ) -> Result<Self, QueueError> {
        let mut workers = Vec::new();
        let mut drains = Vec::new();
        for (stage, ws) in stages {
            let stage = *stage;
            let ctx2 = ctx.clone();
            let processor = move |job: Job, token: BullToken| {
                let ctx = ctx2.clone();
                async move { process_job(stage, ctx, job, token).await }
            };
            let opts = WorkerOptions::new()
                .connection(connection(url))
                .prefix(PREFIX)
                .concurrency(ws.concurrency)
                .lock_duration(ws.lock_duration)
                .stalled_interval(ws.stalled_interval)
                .max_stalled_count(ws.max_stalled_count)
                .backoff_strategy(Arc::new(|attempt, _name, msg, _data| {
                    let d = backoff_delay_ms(attempt, msg);
                    Box::pin(async move { d })
                }));
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
        Ok(Self { workers, drains })
    }

    /// A handle that cancels this process's active jobs of a task (see `cancel.rs`).
    pub fn canceller(&self) -> Canceller {
        Canceller {
            workers: self.workers.clone(),
        }
    }

    /// Stops taking jobs and waits up to `grace` for active ones to finish.
    pub async fn close(self, grace: Duration) {
        // Concurrently: each close waits for its blocked fetch (seconds), so one by one adds up.
        futures::future::join_all(
            self.workers
                .iter()
                .map(|(_, w)| w.close(grace.as_millis() as u64)),
        )
        .await;
        for d in self.drains {
            d.abort();
        }
    }
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

/// Runs one job of `stage`: records the attempt in the manifest, forwards progress, runs the
/// stage under `catch_unwind`, records the outcome, and maps it onto BullMQ's retry rules.
async fn process_job(
    stage: Stage,
    ctx: Arc<StageCtx>,
    mut job: Job,
    token: BullToken,
) -> Result<serde_json::Value, bullmq::Error> {
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
    if task.read_manifest().map(|m| m.status).ok() == Some(crate::manifest::TaskStatus::Cancelled) {
        return Err(bullmq::Error::Unrecoverable("cancelled".into()));
    }
    let attempt = job.attempts_started().max(job.attempts_made() + 1);
    let max_attempts = job.opts().attempts.unwrap_or(1).max(1);
    task.update_manifest(|m| m.start_stage(stage, attempt))
        .map_err(|e| bullmq::Error::ProcessingError(e.to_string()))?;
    tracing::info!(%stage, task = %data.task_id, attempt, "stage started");

    let children = if stage.child().is_some() {
        job.get_children_values().await?
    } else {
        Default::default()
    };
    let cancel = CancellationToken::new();
    let (ptx, mut prx) = tokio::sync::watch::channel(Progress::default());
    let jctx = JobCtx {
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

    let run = AssertUnwindSafe(stages::run(stage, &ctx, &jctx)).catch_unwind();
    tokio::pin!(run);
    let mut last_sent = std::time::Instant::now() - Duration::from_secs(1);
    let outcome = loop {
        tokio::select! {
            r = &mut run => break r,
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
    task.clear_tmp();
    let outcome: Result<stages::StageOutput, StageError> = match outcome {
        Ok(r) => r,
        Err(panic) => Err(StageError::permanent(format!(
            "internal error: the {stage} stage panicked: {}",
            panic_message(panic.as_ref())
        ))),
    };
    match outcome {
        Ok(out) => {
            task.update_manifest(|m| m.complete_stage(stage, out.outputs))
                .map_err(|e| bullmq::Error::ProcessingError(e.to_string()))?;
            let _ = job
                .update_progress(JobProgress::Object(serde_json::json!({"percent": 100.0})))
                .await;
            tracing::info!(%stage, task = %data.task_id, "stage completed");
            Ok(out.result)
        }
        Err(e) => {
            let final_attempt = !e.is_retryable() || attempt >= max_attempts;
            tracing::warn!(%stage, task = %data.task_id, attempt, final_attempt, error = %e.message, "stage failed");
            let _ = task.update_manifest(|m| {
                let r = m.stage_mut(stage);
                r.detail.insert(
                    format!("attempt_{attempt}_error"),
                    serde_json::json!(e.message),
                );
                m.fail_stage(stage, &e.message, e.is_retryable(), final_attempt)
            });
            Err(match e.class {
                FailureClass::Permanent => bullmq::Error::Unrecoverable(e.message),
                FailureClass::Retryable => bullmq::Error::ProcessingError(e.message),
                FailureClass::CoolDown => {
                    bullmq::Error::ProcessingError(format!("{COOL_DOWN_MARK}{}", e.message))
                }
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_cool_down_waits_long() {
        assert_eq!(backoff_delay_ms(1, "HTTP 503"), 2_000);
        assert_eq!(backoff_delay_ms(3, "HTTP 503"), 8_000);
        assert_eq!(backoff_delay_ms(1, "cool-down: HTTP 429"), 300_000);
        assert_eq!(backoff_delay_ms(2, "cool-down: bot check"), 600_000);
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
