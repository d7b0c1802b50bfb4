//! Webhook deliveries on BullMQ: the durable queue `webhook` ([`WEBHOOK_QUEUE`]), planning a
//! task's deliveries when it ends ([`Outbox::notify`]) and the worker that makes each attempt.
//!
//! * **Plan, then enqueue.** When a task's record says it ended (completed or failed), its
//!   deliveries are planned under the manifest lock ([`webhook::plan`]: once per target and
//!   run) and each pending one is added as a job whose id is the message id, so planning and
//!   adding again (a re-run after a crash, the next attempt's end, a callback added to a
//!   finished task) adds nothing twice. The attempt protocol calls [`Outbox::notify`] after
//!   every stage attempt that ends a task, the submit path after adding a callback.
//! * **At least once.** A job stays in Redis until a 2xx answer: a failed attempt is retried
//!   with the engine's one jittered exponential backoff ([`backoff_delay_ms`]: `[webhooks]
//!   backoff_s` doubling, each wait spread by up to half again) up to `[webhooks] attempts`; a
//!   worker killed mid-attempt loses its lock and another worker (or the restarted one) runs
//!   the job again (stalled recovery, lock = timeout + 5 s).
//! * **Logged, never in the way.** Every attempt (worker, start, end, HTTP status, error; an
//!   attempt whose worker died is marked `interrupted` when the next starts) goes into the
//!   delivery's record in the task's manifest; a failed delivery never changes the task's
//!   status.

use std::future::{Future, IntoFuture};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use bullmq::types::BackoffStrategy;
use bullmq::worker::WorkerEvent;
use bullmq::{Job, JobOptions, Queue, QueueOptions, Worker, WorkerOptions};
use futures::FutureExt;
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::domain::keys::{PREFIX, WEBHOOK_QUEUE};
use crate::domain::retry;
use crate::domain::webhook::{self, Endpoint, Origin};
use crate::engine::attempt::worker_name;
use crate::engine::flow::{backoff_delay_ms, BACKOFF_NAME};
use crate::engine::redis::{connection, resending, QueueError};
use crate::pipeline::webhook::{post, Message, NotDelivered};
use crate::pipeline::StageCtx;
use crate::store::{StoreError, TaskDir};

/// Concurrent deliveries per worker process.
const CONCURRENCY: usize = 4;

/// The data of one delivery job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WebhookJob {
    /// The task whose manifest logs the delivery.
    pub task_id: String,
    /// The delivery's (message's) id.
    pub delivery_id: String,
    /// The target URL.
    pub url: String,
    /// The JSON body, fixed when the delivery was planned (signed anew per attempt).
    pub body: String,
    /// A callback URL (checked against the allow-list), not a configured endpoint.
    pub checked: bool,
}

/// Why deliveries could not be planned or enqueued.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// The task's manifest could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Redis refused the job.
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// The producer side of webhooks: plans a task's deliveries and adds their jobs.
pub struct Outbox {
    queue: Queue,
    endpoints: Vec<Endpoint>,
    attempts: u32,
    can_sign: bool,
}

impl Outbox {
    /// Connects to the `webhook` queue on Redis at `url`, with no endpoints, no secret and the
    /// default attempts until [`Outbox::with_config`].
    ///
    /// # Errors
    /// Redis unreachable.
    pub async fn connect(url: &str) -> Result<Self, QueueError> {
        let queue = Queue::with_options(
            WEBHOOK_QUEUE,
            QueueOptions {
                connection: connection(url),
                prefix: PREFIX.into(),
                ..Default::default()
            },
        )
        .await?;
        Ok(Self {
            queue,
            endpoints: Vec::new(),
            attempts: 10,
            can_sign: false,
        })
    }

    /// Uses `cfg`'s endpoints, attempts and (whether there is) a secret.
    pub fn with_config(mut self, cfg: &Config) -> Self {
        self.endpoints = cfg.webhooks.endpoints.clone();
        self.attempts = cfg.webhooks.attempts;
        self.can_sign = cfg.webhooks.secret.is_some();
        self
    }

    /// True when this process has a webhook secret (a callback can be accepted).
    pub fn can_sign(&self) -> bool {
        self.can_sign
    }

    /// Plans the deliveries of `task`'s end (nothing while it runs or when cancelled) and
    /// adds a job for each one still pending; returns how many are pending.
    ///
    /// # Errors
    /// The manifest could not be updated, or Redis refused a job (the deliveries stay planned
    /// and are added again by the next call).
    pub async fn notify(&self, task: &TaskDir) -> Result<usize, OutboxError> {
        let m = task.read_manifest()?;
        if webhook::Event::of_status(m.status).is_none() {
            return Ok(0);
        }
        let (pending, body) = task.modify_manifest(|m| {
            let pending = webhook::plan(m, &self.endpoints);
            let body = pending
                .first()
                .map(|d| webhook::payload(d.event, m).to_string());
            (pending, body)
        })?;
        let (Some(body), task_id) = (body, m.task_id) else {
            return Ok(0);
        };
        for d in &pending {
            let job = WebhookJob {
                task_id: task_id.clone(),
                delivery_id: d.id.clone(),
                url: d.url.clone(),
                body: body.clone(),
                checked: d.origin == Origin::Callback,
            };
            let opts = JobOptions::new()
                .job_id(d.id.clone())
                .attempts(self.attempts)
                .backoff(BackoffStrategy::Custom(BACKOFF_NAME.into()));
            resending(|| {
                self.queue
                    .add(WEBHOOK_QUEUE, job.clone())
                    .options(opts.clone())
                    .into_future()
            })
            .await
            .map_err(QueueError::from)?;
            tracing::info!(task = %task_id, delivery = %d.id, url = %d.url, event = d.event.as_str(), "webhook queued");
        }
        Ok(pending.len())
    }

    /// Closes the queue's connection.
    pub async fn close(&self) {
        self.queue.close().await;
    }
}

/// Starts this process's webhook worker on Redis at `url`: [`CONCURRENCY`] deliveries at
/// once, signed with `ctx`'s secret, callbacks checked with its allow-list.
///
/// # Errors
/// Redis unreachable.
pub async fn start_worker(
    url: &str,
    ctx: Arc<StageCtx>,
) -> Result<(Arc<Worker>, tokio::task::JoinHandle<()>), QueueError> {
    let w = &ctx.cfg.webhooks;
    let lock = w.timeout + Duration::from_secs(5);
    let (base, attempts) = (w.backoff.as_millis() as i64, w.attempts);
    let mut opts = WorkerOptions::new()
        .connection(connection(url))
        .prefix(PREFIX)
        .concurrency(CONCURRENCY)
        .lock_duration(lock)
        .stalled_interval(lock / 2)
        .max_stalled_count(attempts)
        .backoff_strategy(Arc::new(move |attempt, _strategy, msg, _data| {
            let d = backoff_delay_ms(attempt, msg, base, base, retry::draw());
            Box::pin(async move { d })
        }));
    opts.run_retry_delay =
        retry::backoff_wait(ctx.cfg.redis_retry, retry::draw()).as_millis() as u64;
    let processor = move |job: Job, _token| {
        let ctx = ctx.clone();
        guarded(async move { deliver(&ctx, &job).await })
    };
    let worker = Arc::new(Worker::with_options(WEBHOOK_QUEUE, processor, opts).await?);
    let events = worker.clone();
    let drain = tokio::spawn(async move {
        while let Some(ev) = events.next_event().await {
            match ev {
                WorkerEvent::Error(e) => tracing::warn!(error = %e, "webhook worker error"),
                WorkerEvent::Closed => break,
                _ => {}
            }
        }
    });
    Ok((worker, drain))
}

/// Runs `f`, turning a panic into a failed job (a panicking processor would leave its job
/// active until it stalls).
async fn guarded(
    f: impl Future<Output = Result<serde_json::Value, bullmq::Error>>,
) -> Result<serde_json::Value, bullmq::Error> {
    AssertUnwindSafe(f)
        .catch_unwind()
        .await
        .unwrap_or_else(|_| {
            Err(bullmq::Error::ProcessingError(
                "internal error: the webhook delivery panicked".into(),
            ))
        })
}

/// One attempt of a delivery job: logged in the manifest before and after; a delivery that is
/// no longer pending (delivered by an earlier run) completes without sending.
async fn deliver(ctx: &StageCtx, job: &Job) -> Result<serde_json::Value, bullmq::Error> {
    let d: WebhookJob = serde_json::from_value(job.data().clone())
        .map_err(|e| bullmq::Error::Unrecoverable(format!("malformed webhook job: {e}")))?;
    let task = ctx.data.task(&d.task_id);
    let number = job.attempts_started().max(job.attempts_made() + 1);
    let worker = worker_name();
    let started = task.modify_manifest(|m| {
        m.webhooks
            .delivery_mut(&d.delivery_id)
            .map(|x| x.start_attempt(number, &worker))
    });
    match started {
        Ok(Some(true)) => {}
        Ok(Some(false)) => return Ok(serde_json::json!({"delivered": "earlier"})),
        Ok(None) => {
            return Err(bullmq::Error::Unrecoverable(format!(
                "task {} has no delivery {}",
                d.task_id, d.delivery_id
            )))
        }
        Err(StoreError::NotFound(_)) => {
            return Err(bullmq::Error::Unrecoverable(format!(
                "task {} is gone",
                d.task_id
            )))
        }
        Err(e) => return Err(bullmq::Error::ProcessingError(e.to_string())),
    }
    let msg = Message {
        id: &d.delivery_id,
        url: &d.url,
        body: &d.body,
        checked: d.checked,
    };
    let cfg = &ctx.cfg;
    let result = match &cfg.webhooks.secret {
        Some(secret) => post(secret, &cfg.input_policy(), &msg, cfg.webhooks.timeout).await,
        // Another worker may have one: retried like a failed attempt.
        None => Err(NotDelivered {
            message: "this worker has no webhook secret to sign with (set --webhook-secret, \
                      TUBESCRIBE_WEBHOOK_SECRET or [webhooks] secret)"
                .into(),
            status: None,
            permanent: false,
        }),
    };
    let max_attempts = job.opts().attempts.unwrap_or(1).max(1);
    let last = match &result {
        Ok(_) => false,
        Err(e) => e.permanent || job.attempts_made() + 1 >= max_attempts,
    };
    let (code, error) = match &result {
        Ok(c) => (Some(*c), None),
        Err(e) => (e.status, Some(e.message.as_str())),
    };
    let logged = task.modify_manifest(|m| {
        if let Some(x) = m.webhooks.delivery_mut(&d.delivery_id) {
            x.end_attempt(number, code, error, last);
        }
    });
    if let Err(e) = logged {
        tracing::warn!(task = %d.task_id, delivery = %d.delivery_id, error = %e, "cannot log the webhook attempt");
    }
    match result {
        Ok(code) => {
            tracing::info!(task = %d.task_id, delivery = %d.delivery_id, url = %d.url, attempt = number, status = code, "webhook delivered");
            Ok(serde_json::json!({"status": code}))
        }
        Err(e) if last => {
            tracing::warn!(task = %d.task_id, delivery = %d.delivery_id, url = %d.url, attempt = number, "webhook not delivered, no more attempts: {}", e.message);
            Err(bullmq::Error::Unrecoverable(e.message))
        }
        Err(e) => {
            tracing::info!(task = %d.task_id, delivery = %d.delivery_id, url = %d.url, attempt = number, "webhook attempt failed, retrying: {}", e.message);
            Err(bullmq::Error::ProcessingError(e.message))
        }
    }
}
