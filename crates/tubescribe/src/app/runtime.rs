//! The composition root: everything a tubescribe process runs besides its interface, brought
//! up in one place and taken down along one path.
//!
//! A [`Runtime`] is built from the resolved [`Config`] with [`Runtime::builder`]:
//!
//! 1. the data directory;
//! 2. Redis: the configured URL, or the embedded `redis-server` in the data directory
//!    ([`redis_embed`]); then where tasks live (`storage_url`): the data directory, another
//!    local directory, or shared storage — objects in S3, records in this Redis
//!    ([`RedisRecords`]);
//! 3. the stage workers of the chosen stages, over a fresh [`StageCtx`] (each with the
//!    configured per-process concurrency and its stage's policy; the engine adds the
//!    scheduler's ager with the transcribe worker), and with them the cancel watcher that
//!    stops this process's job of a cancelled task;
//! 4. the memory watch, when a memory budget is given;
//! 5. the reconciler ([`reconcile`]), in processes that ask for it (`serve`, `worker`,
//!    `process`): it repairs task records that disagree with their jobs, now and every
//!    `[worker] reconcile_s`;
//! 6. the retention pass ([`retention`]), in worker processes that ask for it (`serve` with
//!    workers, `worker`): now and every `[retention] interval_s`, under a lease.
//!
//! [`Runtime::shutdown`] is the single way down: it cancels the shutdown token (the watchers
//! and anything else the caller tied to it, such as the HTTP server, stop), closes the workers
//! within the grace period (the rest go back to the queue) and gives up Redis (the embedded
//! server stops when no other process uses it). Signals are not handled here: the caller
//! passes the token (the CLI cancels it on SIGINT/SIGTERM).
//!
//! `serve`, `worker`, `process`, `bench` and the integration tests all start through here.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::app::retention;
use crate::config::{Config, Storage};
use crate::domain::Stage;
use crate::engine::producer::Producer;
use crate::engine::reconcile;
use crate::engine::records::RedisRecords;
use crate::engine::redis::QueueError;
use crate::engine::workers::{WorkerSettings, Workers};
use crate::observe::events::{EventError, EventLog};
use crate::pipeline::StageCtx;
use crate::store::remote::{Objects, Remote};
use crate::store::{DataDir, StoreError};
use crate::tools::redis_embed;
use crate::tools::redis_embed::{EmbeddedRedis, RedisError};

/// How often the memory watch reads this process's RSS.
const MEMORY_WATCH_EVERY: Duration = Duration::from_secs(5);

/// Why a runtime could not start. Each wraps its cause's message unchanged.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The data directory could not be opened or created.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The embedded Redis could not be started.
    #[error(transparent)]
    Redis(#[from] RedisError),
    /// Redis refused the workers or the producer (unreachable, or a command failed).
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The memory watch could not connect to the event log.
    #[error(transparent)]
    Events(#[from] EventError),
    /// The shutdown token was cancelled while waiting for Redis ([`RuntimeBuilder::retry_redis`]).
    #[error("stopped before Redis at {url} could be reached")]
    Stopped {
        /// The Redis URL that was never reached.
        url: String,
    },
}

/// What to bring up; see [`Runtime::builder`].
pub struct RuntimeBuilder {
    cfg: Config,
    stages: Vec<Stage>,
    memory_budget_mb: Option<u64>,
    retry_redis: bool,
    reconcile: bool,
    retention: bool,
    shutdown: CancellationToken,
    hurry: CancellationToken,
}

impl RuntimeBuilder {
    /// Applies the retention policy in this process when it runs workers (unless
    /// `[retention] interval_s = 0`): a pass at start, then one per period, each under a
    /// lease so one worker of many prunes ([`retention::spawn`]).
    pub fn retention(mut self) -> Self {
        self.retention = true;
        self
    }

    /// Runs the reconciler in this process (unless `[worker] reconcile_s = 0`): a pass at
    /// start, then one per period ([`reconcile`]).
    pub fn reconcile(mut self) -> Self {
        self.reconcile = true;
        self
    }

    /// Starts workers for `stages` (none by default: a runtime that only submits or serves).
    pub fn workers(mut self, stages: &[Stage]) -> Self {
        self.stages = stages.to_vec();
        self
    }

    /// The memory budget in MiB (`--memory-budget-mb`): when `Some`, the memory watch raises
    /// an `alert` event above it, and a non-zero budget also replaces the configured one for
    /// the transcribe memory plan (`[schedule] memory_budget_mb`): one budget for both.
    pub fn memory_budget_mb(mut self, mb: Option<u64>) -> Self {
        self.memory_budget_mb = mb;
        self
    }

    /// Keeps trying to start the workers while Redis is unreachable (first after the
    /// configured `redis_retry`, doubling up to 30 s) until the shutdown token is cancelled;
    /// then [`RuntimeBuilder::start`] returns [`RuntimeError::Stopped`].
    pub fn retry_redis(mut self) -> Self {
        self.retry_redis = true;
        self
    }

    /// The token that stops the runtime's watchers (default: a new one). The caller may cancel
    /// it (on a signal) and tie its own tasks to it; [`Runtime::shutdown`] cancels it too.
    pub fn shutdown_token(mut self, token: CancellationToken) -> Self {
        self.shutdown = token;
        self
    }

    /// A token that, once cancelled, ends the grace period of a shutdown at once (default: a
    /// new one, never cancelled): active jobs are released to the queue without waiting for
    /// them (the CLI cancels it on a second Ctrl-C).
    pub fn hurry_token(mut self, token: CancellationToken) -> Self {
        self.hurry = token;
        self
    }

    /// Brings the runtime up in order: data directory, Redis, workers (with the cancel
    /// watcher), memory watch.
    ///
    /// # Errors
    /// [`RuntimeError`]: the first piece that failed; what started before it is taken down.
    pub async fn start(self) -> Result<Runtime, RuntimeError> {
        let mut cfg = self.cfg;
        if let Some(mb) = self.memory_budget_mb.filter(|mb| *mb > 0) {
            cfg.schedule.memory_budget_bytes = mb << 20;
        }
        let data = DataDir::open(&cfg.data_dir)?;
        let (url, redis) = match &cfg.redis_url {
            Some(u) => (u.clone(), None),
            None => {
                let r = redis_embed::ensure(&data.redis_dir(), &cfg.programs.redis_server).await?;
                (r.url.clone(), Some(r))
            }
        };
        let data = storage(data, &cfg.storage, &url)?;
        let mut rt = Runtime {
            cfg,
            data,
            url,
            redis,
            shutdown: self.shutdown,
            hurry: self.hurry,
            workers: None,
            reconciler: None,
            retention: None,
        };
        if !self.stages.is_empty() {
            if self.retry_redis {
                rt.start_workers_when_reachable(&self.stages).await?;
            } else {
                rt.start_workers(&self.stages).await?;
            }
        }
        if self.reconcile && !rt.cfg.reconcile_every.is_zero() {
            rt.reconciler = Some(reconcile::spawn(
                rt.url.clone(),
                rt.data.clone(),
                rt.cfg.clone(),
                rt.cfg.reconcile_every,
                rt.shutdown.child_token(),
            ));
        }
        if self.retention && rt.workers.is_some() && !rt.cfg.retention.interval.is_zero() {
            rt.retention = Some(retention::spawn(
                rt.url.clone(),
                rt.data.clone(),
                rt.cfg.retention.clone(),
                rt.shutdown.child_token(),
            ));
        }
        if let Some(mb) = self.memory_budget_mb {
            match EventLog::connect(&rt.url).await {
                Ok(log) => {
                    crate::observe::alerts::spawn_memory_watch(
                        log,
                        mb << 20,
                        MEMORY_WATCH_EVERY,
                        rt.shutdown.child_token(),
                    );
                }
                Err(e) => {
                    rt.shutdown(Duration::ZERO).await;
                    return Err(e.into());
                }
            }
        }
        Ok(rt)
    }
}

/// The data directory with its tasks where `storage` says: the data directory itself, another
/// local directory, or shared storage (objects in S3, records in the Redis at `url`).
fn storage(data: DataDir, storage: &Storage, url: &str) -> Result<DataDir, StoreError> {
    match storage {
        Storage::Local(dir) if dir == data.root() => Ok(data),
        Storage::Local(dir) => data.with_tasks_in(dir),
        Storage::S3 { bucket, prefix } => Ok(data.with_remote(Remote {
            objects: Objects::s3(bucket, prefix)?,
            records: Arc::new(RedisRecords::new(url)?),
        })),
    }
}

/// Stage workers running in this process with their cancel watcher.
struct Running {
    workers: Workers,
    /// Stops the cancel watcher of these workers.
    stop_watcher: CancellationToken,
    watcher: tokio::task::JoinHandle<()>,
}

/// A running tubescribe process core: its data directory, Redis, and (optionally) workers and
/// watchers. End it with [`Runtime::shutdown`]; dropping it instead still gives up Redis but
/// lets active jobs stall.
pub struct Runtime {
    cfg: Config,
    data: DataDir,
    url: String,
    redis: Option<EmbeddedRedis>,
    shutdown: CancellationToken,
    hurry: CancellationToken,
    workers: Option<Running>,
    reconciler: Option<tokio::task::JoinHandle<()>>,
    retention: Option<tokio::task::JoinHandle<()>>,
}

impl Runtime {
    /// A builder over `cfg` (final: resolved, with the CLI's overrides applied).
    pub fn builder(cfg: Config) -> RuntimeBuilder {
        RuntimeBuilder {
            cfg,
            stages: Vec::new(),
            memory_budget_mb: None,
            retry_redis: false,
            reconcile: false,
            retention: false,
            shutdown: CancellationToken::new(),
            hurry: CancellationToken::new(),
        }
    }

    /// The configuration the runtime runs with (including the memory budget it was given).
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The data directory.
    pub fn data(&self) -> &DataDir {
        &self.data
    }

    /// The Redis URL every connection of this process uses.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The unix socket of the embedded Redis, when this process uses it (none with a URL).
    pub fn redis_socket(&self) -> Option<&Path> {
        self.redis.as_ref().map(|r| r.socket.as_path())
    }

    /// The shutdown token (cancelled by the caller's signal handling or by
    /// [`Runtime::shutdown`]).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Whether stage workers run in this process.
    pub fn has_workers(&self) -> bool {
        self.workers.is_some()
    }

    /// A producer on this runtime's Redis that adds flows with the configured attempts.
    ///
    /// # Errors
    /// [`QueueError`] when Redis is unreachable.
    pub async fn producer(&self) -> Result<Producer, QueueError> {
        Ok(Producer::connect(&self.url).await?.with_config(&self.cfg))
    }

    /// Starts workers for `stages` over a fresh [`StageCtx`] (models load on their first job),
    /// and their cancel watcher. At most one set runs at a time: stop it first with
    /// [`Runtime::stop_workers`].
    ///
    /// # Errors
    /// [`QueueError`] when Redis is unreachable.
    pub async fn start_workers(&mut self, stages: &[Stage]) -> Result<(), QueueError> {
        assert!(self.workers.is_none(), "workers are already running");
        let w = Workers::start(&self.url, self.stage_ctx(), &self.settings(stages)).await?;
        self.watch_cancels(w);
        Ok(())
    }

    /// The transcribe memory plan of the running workers (`None` without a transcribe worker).
    pub fn plan(&self) -> Option<crate::pipeline::budget::Plan> {
        self.workers.as_ref().and_then(|r| r.workers.plan())
    }

    async fn start_workers_when_reachable(&mut self, stages: &[Stage]) -> Result<(), RuntimeError> {
        let Some(w) = Workers::start_when_reachable(
            &self.url,
            self.stage_ctx(),
            &self.settings(stages),
            self.cfg.redis_retry,
            self.shutdown.cancelled(),
        )
        .await
        else {
            return Err(RuntimeError::Stopped {
                url: self.url.clone(),
            });
        };
        self.watch_cancels(w);
        Ok(())
    }

    /// Graceful stop of the workers: their cancel watcher stops, they take no new job, active
    /// ones get `grace` to finish (cut short by the [`RuntimeBuilder::hurry_token`]), the rest
    /// go back to the queue. A no-op without workers.
    pub async fn stop_workers(&mut self, grace: Duration) {
        if let Some(r) = self.workers.take() {
            // The watcher's Redis connection is closed once this returns.
            r.stop_watcher.cancel();
            let _ = r.watcher.await;
            r.workers.close(grace, &self.hurry).await;
        }
    }

    /// The one way down: cancels the shutdown token, stops the workers within `grace`
    /// ([`Runtime::stop_workers`]) and gives up Redis.
    pub async fn shutdown(mut self, grace: Duration) {
        self.shutdown.cancel();
        self.stop_workers(grace).await;
        for r in [self.reconciler.take(), self.retention.take()]
            .into_iter()
            .flatten()
        {
            // It stops at once, or after the pass it is in (bounded by Redis' timeouts).
            let _ = tokio::time::timeout(Duration::from_secs(5), r).await;
        }
        if let Some(r) = self.redis.as_mut() {
            r.stop();
        }
    }

    fn stage_ctx(&self) -> Arc<StageCtx> {
        Arc::new(StageCtx::new(self.cfg.clone(), self.data.clone()))
    }

    fn settings(&self, stages: &[Stage]) -> Vec<(Stage, WorkerSettings)> {
        stages
            .iter()
            .map(|&s| {
                let settings =
                    WorkerSettings::from_policy(self.cfg.concurrency(s), self.cfg.policy(s));
                (s, settings)
            })
            .collect()
    }

    fn watch_cancels(&mut self, workers: Workers) {
        let stop_watcher = self.shutdown.child_token();
        let watcher =
            crate::app::cancel::spawn_watcher(&self.url, workers.canceller(), stop_watcher.clone());
        self.workers = Some(Running {
            workers,
            stop_watcher,
            watcher,
        });
    }
}
