//! The stage workers of one process on BullMQ (`bullmq-official`): starting and closing
//! them, and dispatching each job by its name to the body [`attempt::run`] supervises — a
//! stage's work, the long-audio split/merge of a transcribe job (`segments.rs`), or a
//! segment job.
//!
//! Guard rails for the crate's known pitfalls (see the design notes on the queue engine):
//! every processor runs under `catch_unwind` (in `attempt.rs`) and every worker's event
//! channel is drained (it is unbounded).
//!
//! Every worker process also runs the webhook worker (`webhooks.rs`), and after each stage or
//! segment attempt that ended its task, plans and queues the task's webhook deliveries.
//!
//! Crash safety: stalled-job recovery is tuned per stage ([`StagePolicy`]); the attempt
//! protocol (`attempt.rs`) logs every attempt, fences stale ones and limits their time. On
//! shutdown, [`Workers::close`] stops fetching, lets active jobs finish within a grace period,
//! then cancels the rest and moves them back to `wait` (`moveJobFromActiveToWait`) so another
//! worker takes them at once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bullmq::worker::{CancellationToken as BullToken, WorkerEvent};
use bullmq::{Job, Worker, WorkerOptions};
use tokio_util::sync::CancellationToken;

use crate::config::StagePolicy;
use crate::domain::keys::{PREFIX, SEGMENT_JOB};
use crate::domain::{retry, Stage};
use crate::engine::attempt::{self, Done, Fence, Shared, WIND_DOWN};
use crate::engine::flow::{backoff_delay_ms, JobData};
use crate::engine::producer::Canceller;
use crate::engine::redis::{connection, queue, QueueError};
use crate::engine::schedule::Scheduler;
use crate::engine::segments::{self, SegmentData};
use crate::engine::webhooks::{self, Outbox};
use crate::observe::events::EventLog;
use crate::pipeline::budget::{self, Plan};
use crate::pipeline::{JobCtx, StageCtx};

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
    /// The webhook delivery worker.
    webhook: Arc<Worker>,
    /// Plans and queues a task's webhooks when an attempt ended it.
    outbox: Arc<Outbox>,
    /// Event drains and the priority ager.
    drains: Vec<tokio::task::JoinHandle<()>>,
    shared: Arc<Shared>,
    /// Jobs whose processor is running in this process.
    running: Arc<AtomicUsize>,
}

impl Workers {
    /// Starts one worker per `(stage, settings)` on Redis at `url`, and applies each stage's
    /// global concurrency setting. A transcribe worker runs as many jobs as the memory plan
    /// has slots (the plan is set on `ctx`). Errors when Redis is unreachable (see
    /// [`Workers::start_when_reachable`]).
    pub async fn start(
        url: &str,
        ctx: Arc<StageCtx>,
        stages: &[(Stage, WorkerSettings)],
    ) -> Result<Self, QueueError> {
        // Priorities, aging and segment flows (schedule.rs, segments.rs); alerts (alerts.rs).
        let sched = Arc::new(Scheduler::connect(url, ctx.cfg.schedule.aging_rate).await?);
        let shared = Arc::new(Shared {
            ctx: ctx.clone(),
            sched: sched.clone(),
            release: CancellationToken::new(),
            events: EventLog::connect(url).await?,
        });
        let running = Arc::new(AtomicUsize::new(0));
        let mut workers = Vec::new();
        let (webhook, drain) = webhooks::start_worker(url, ctx.clone()).await?;
        let mut drains = vec![drain];
        let outbox = Arc::new(Outbox::connect(url).await?.with_config(&ctx.cfg));
        for (stage, ws) in stages {
            let stage = *stage;
            if let Some(n) = ws.global_concurrency {
                set_global_concurrency(url, stage, n).await?;
            }
            let concurrency = if stage == Stage::Transcribe {
                drains.push(sched.clone().spawn_ager());
                install_plan(&ctx, ws.concurrency).slots
            } else {
                ws.concurrency
            };
            let (sh, n, ob) = (shared.clone(), running.clone(), outbox.clone());
            let processor = move |job: Job, token: BullToken| {
                let (sh, n, ob) = (sh.clone(), n.clone(), ob.clone());
                async move {
                    let _count = RunningGuard::enter(n);
                    let task_id = serde_json::from_value::<JobData>(job.data().clone()).ok();
                    let r = process(stage, sh.clone(), job, token).await;
                    if let Some(d) = task_id {
                        notify(&ob, &sh, &d.task_id).await;
                    }
                    r
                }
            };
            let opts = worker_options(url, &ctx, stage, ws, concurrency);
            let w = Arc::new(Worker::with_options(stage.queue_name(), processor, opts).await?);
            drains.push(drain_events(stage, w.clone()));
            workers.push((stage, w));
        }
        Ok(Self {
            workers,
            webhook,
            outbox,
            drains,
            shared,
            running,
        })
    }

    /// A handle that cancels this process's active jobs of a task (see `cancel.rs`).
    pub fn canceller(&self) -> Canceller {
        Canceller::new(self.workers.clone())
    }

    /// This process's transcribe memory plan, when it runs a transcribe worker.
    pub fn plan(&self) -> Option<Plan> {
        self.shared.ctx.plan()
    }

    /// [`Workers::start`], retried while Redis is unreachable: waits `first_retry`, doubling up
    /// to 30 s between attempts (each wait spread by up to half again,
    /// [`retry::backoff_wait`]), until it succeeds or `stop` completes (then `None`).
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
                _ = tokio::time::sleep(retry::backoff_wait(wait, retry::draw())) => {}
                _ = &mut stop => return None,
            }
            wait = (wait * 2).min(Duration::from_secs(30));
        }
    }

    /// Number of jobs running in this process.
    pub async fn active_count(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }

    /// Graceful shutdown: stops taking jobs, waits up to `grace` (less if `now` is cancelled
    /// meanwhile) for active ones to finish, then cancels the rest (their programs are
    /// killed) and moves them back to `wait` so another worker takes them at once; finally
    /// closes the workers.
    pub async fn close(self, grace: Duration, now: &CancellationToken) {
        for (_, w) in &self.workers {
            w.pause();
        }
        self.webhook.pause();
        let deadline = tokio::time::Instant::now() + grace;
        while self.active_count().await > 0 && tokio::time::Instant::now() < deadline {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = now.cancelled() => break,
            }
        }
        let left = self.active_count().await;
        // Close the workers first: a paused worker still parks a blocking BZPOPMIN on the
        // queue's marker and would swallow the wake-up meant for other workers when our jobs
        // go back to `wait`. Closing and dropping them closes those connections; the running
        // jobs keep their own handles and can still move themselves back.
        let all = self.workers.iter().map(|(_, w)| w).chain([&self.webhook]);
        futures::future::join_all(all.map(|w| w.close(0))).await;
        self.outbox.close().await;
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
            self.shared.release.cancel();
            // Cancelled stages end within moments (process groups killed, whisper aborted
            // after at most one encoder pass); each then moves its job back to `wait`.
            let until = tokio::time::Instant::now() + WIND_DOWN;
            while self.running.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        // After the wind-down: a released long-audio job may still have used the scheduler.
        self.shared.sched.close().await;
    }
}

/// Runs one job of `stage`'s queue: a segment job (name [`SEGMENT_JOB`]) transcribes its
/// slice; a stage job runs its stage, or for long audio the split/merge of segment jobs.
async fn process(
    stage: Stage,
    sh: Arc<Shared>,
    job: Job,
    token: BullToken,
) -> Result<serde_json::Value, bullmq::Error> {
    let ctx = sh.ctx.clone();
    if job.name() == SEGMENT_JOB {
        let d: SegmentData = serde_json::from_value(job.data().clone())
            .map_err(|e| bullmq::Error::Unrecoverable(format!("malformed segment data: {e}")))?;
        let fence = Fence::Segment(d.slot());
        let body = move |jctx: Arc<JobCtx>| async move {
            segments::transcribe_segment(&ctx, &jctx, &d, fence).await
        };
        return attempt::run(&sh, job, token, fence, body).await;
    }
    let (sched, handle) = (sh.sched.clone(), job.clone());
    let body = move |jctx: Arc<JobCtx>| async move {
        // Long audio goes through segment jobs (segments.rs).
        if stage == Stage::Transcribe && segments::is_long(&ctx, &handle, &jctx) {
            segments::run_long(&ctx, &jctx, &handle, &sched).await
        } else {
            crate::pipeline::run(stage, &ctx, &jctx)
                .await
                .map(Done::Output)
        }
    };
    attempt::run(&sh, job, token, Fence::Stage(stage), body).await
}

/// Plans and queues the webhooks of `task_id` if its record says it ended (a no-op while it
/// runs); a failure is logged, and the next attempt's end, a retry of the job or a callback
/// added later plans them again.
async fn notify(outbox: &Outbox, sh: &Shared, task_id: &str) {
    let task = sh.ctx.data.task(task_id);
    if let Err(e) = outbox.notify(&task).await {
        tracing::warn!(task = %task_id, error = %e, "cannot queue the task's webhooks");
    }
}

/// Computes this process's transcribe memory plan for `concurrency` configured jobs (with
/// the model's measured per-job peak), sets it on `ctx` and in the metrics.
fn install_plan(ctx: &StageCtx, concurrency: usize) -> Plan {
    let plan = budget::plan_measured(&ctx.cfg, &ctx.data, concurrency);
    ctx.set_plan(plan);
    crate::observe::metrics::set_plan(plan.slots, plan.threads, plan.budget_bytes);
    tracing::info!(?plan, "transcribe memory plan");
    plan
}

/// Sets (`n > 0`) or removes (`n == 0`) the cluster-wide cap on `stage`'s active jobs.
async fn set_global_concurrency(url: &str, stage: Stage, n: u64) -> Result<(), QueueError> {
    let q = queue(url, stage).await?;
    if n == 0 {
        q.remove_global_concurrency().await?;
    } else {
        q.set_global_concurrency(n).await?;
    }
    q.close().await;
    Ok(())
}

/// BullMQ options of `stage`'s worker on Redis at `url`: concurrency, lock and stall settings, our backoff
/// strategy ([`backoff_delay_ms`] with each stage's policy and a fresh random draw per retry)
/// and the Redis retry delay (`redis_retry`, spread once per worker by
/// [`retry::backoff_wait`]).
fn worker_options(
    url: &str,
    ctx: &StageCtx,
    stage: Stage,
    ws: &WorkerSettings,
    concurrency: usize,
) -> WorkerOptions {
    let cfg = ctx.cfg.clone();
    let mut opts = WorkerOptions::new()
        .connection(connection(url))
        .prefix(PREFIX)
        .concurrency(concurrency)
        .lock_duration(ws.lock_duration)
        .stalled_interval(ws.stalled_interval)
        .max_stalled_count(ws.max_stalled_count)
        .backoff_strategy(Arc::new(move |attempt, _strategy, msg, _data| {
            // BullMQ passes the strategy's name (`flow::BACKOFF_NAME`), not the job's: this
            // worker's stage (segment jobs included, on the transcribe queue) sets the policy.
            let p = cfg.policy(stage);
            let d = backoff_delay_ms(
                attempt,
                msg,
                p.backoff.as_millis() as i64,
                p.cool_down.as_millis() as i64,
                retry::draw(),
            );
            Box::pin(async move { d })
        }));
    // After a Redis error the fetch loop waits this long before trying again. BullMQ sleeps
    // the same delay every time, so each worker draws its own once: workers of all processes
    // then do not reconnect in step after Redis returns.
    opts.run_retry_delay =
        retry::backoff_wait(ctx.cfg.redis_retry, retry::draw()).as_millis() as u64;
    opts
}

/// Drains `w`'s event channel (it is unbounded), logging errors and stalls.
fn drain_events(stage: Stage, w: Arc<Worker>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(ev) = w.next_event().await {
            match ev {
                WorkerEvent::Error(e) => tracing::warn!(%stage, error = %e, "worker error"),
                WorkerEvent::Stalled { job_id } => {
                    tracing::warn!(%stage, %job_id, "job stalled; it will run again")
                }
                WorkerEvent::Closed => break,
                _ => {}
            }
        }
    })
}

/// Counts a running processor until dropped (also when the processor panics or is dropped).
struct RunningGuard(Arc<AtomicUsize>);

impl RunningGuard {
    fn enter(n: Arc<AtomicUsize>) -> Self {
        n.fetch_add(1, Ordering::SeqCst);
        RunningGuard(n)
    }
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
