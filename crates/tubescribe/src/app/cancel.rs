//! Cancelling a task from any process: the requester marks the task cancelled, removes its
//! waiting jobs and publishes the task id on a Redis channel; every worker process listens on
//! that channel and cancels the task's active job, which kills the stage's child process group
//! (the process runner) or aborts whisper.cpp.
//!
//! BullMQ's `Worker::cancel_job` works only inside the process holding the job and
//! `Queue::remove` refuses active jobs (design notes on the queue, §5), hence the channel.
//! A job that starts after the manifest says `cancelled` refuses to run (a hook at the start
//! of every job in `engine/attempt.rs`), which closes the race between a waiting job being picked up
//! and the cancel. Outputs are only ever renamed into place when complete and a job's `.tmp/`
//! is cleared when it ends, so a cancelled task keeps no partial files.

use std::time::Duration;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::app::tasks;
use crate::app::tasks::TaskOpError;
use crate::domain::manifest::TaskStatus;
use crate::domain::retry;
use crate::engine::producer::{Canceller, Producer};
use crate::observe::events::EventLog;
use crate::store::DataDir;

/// The Redis pub/sub channel carrying task ids to cancel.
pub const CHANNEL: &str = "tubescribe:cancel";

/// What a cancel did.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Cancelled {
    /// The task id.
    pub task_id: String,
    /// The task's status afterwards (always `cancelled`).
    pub status: TaskStatus,
    /// True when every job was still waiting and was removed from its queue; false when a
    /// job was running and the worker holding it was asked to stop it.
    pub removed_from_queue: bool,
}

/// Cancels `task_id`: manifest → `cancelled` (a running stage → cancelled at once, waiting
/// stages → skipped: [`Manifest::cancel`](crate::domain::manifest::Manifest::cancel)), waiting jobs
/// removed from their queues, the id published on [`CHANNEL`] for the worker running it, and
/// a `task.cancelled` event.
///
/// Errors: `NotFound`; `Conflict` when the task is already completed, failed or cancelled;
/// `Store`/`Queue` on IO or Redis failures.
pub async fn cancel_task(
    data: &DataDir,
    producer: &Producer,
    log: &EventLog,
    task_id: &str,
) -> Result<Cancelled, TaskOpError> {
    let m = tasks::get(data, task_id)?;
    if m.status.is_final() {
        return Err(TaskOpError::Conflict(format!(
            "task {task_id} is already {}",
            status_name(m.status)
        )));
    }
    let task = data.task(task_id);
    let mut was_final = None;
    task.update_manifest(|m| {
        if !m.cancel() {
            was_final = Some(m.status);
        }
    })?;
    if let Some(s) = was_final {
        return Err(TaskOpError::Conflict(format!(
            "task {task_id} is already {}",
            status_name(s)
        )));
    }
    let removed = producer.remove_task_jobs(task_id).await?;
    let mut conn = log.connection();
    let published: Result<i64, _> = redis::cmd("PUBLISH")
        .arg(CHANNEL)
        .arg(task_id)
        .query_async(&mut conn)
        .await;
    if let Err(e) = published {
        tracing::warn!(task = task_id, error = %e, "cannot publish the cancel");
    }
    if let Err(e) = log.task_cancelled(task_id).await {
        tracing::warn!(task = task_id, error = %e, "cannot record task.cancelled");
    }
    Ok(Cancelled {
        task_id: task_id.to_string(),
        status: TaskStatus::Cancelled,
        removed_from_queue: removed,
    })
}

fn status_name(s: TaskStatus) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Listens on [`CHANNEL`] (reconnecting 1–1.5 s after Redis errors, [`retry::backoff_wait`])
/// and cancels the named task's
/// active job in this process's workers, until `shutdown`.
pub fn spawn_watcher(
    url: &str,
    canceller: Canceller,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let url = url.to_string();
    tokio::spawn(async move {
        loop {
            let r = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = listen(&url, &canceller) => r,
            };
            if let Err(e) = r {
                tracing::warn!(error = %e, "cancel listener lost Redis; reconnecting in 1–1.5 s");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(retry::backoff_wait(Duration::from_secs(1), retry::draw())) => {}
            }
        }
    })
}

async fn listen(url: &str, canceller: &Canceller) -> Result<(), redis::RedisError> {
    let client = redis::Client::open(url)?;
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(CHANNEL).await?;
    let mut messages = pubsub.on_message();
    while let Some(msg) = messages.next().await {
        let task: String = match msg.get_payload() {
            Ok(t) => t,
            Err(_) => continue,
        };
        if !crate::domain::keys::valid_task_id(&task) {
            continue;
        }
        let n = canceller.cancel_task(&task).await;
        if n > 0 {
            tracing::info!(task = %task, jobs = n, "cancelled the task's running job");
        }
    }
    Ok(())
}
