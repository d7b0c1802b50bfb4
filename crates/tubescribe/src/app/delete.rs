//! Deleting a task: every file of it and its record (the store's
//! [`TaskDir::delete`](crate::store::TaskDir::delete)), its BullMQ jobs, and a `task.deleted`
//! event for SSE and the web page.
//!
//! A task whose stage runs is refused unless forced; force cancels it first
//! ([`cancel::cancel_task`]: the worker holding the job stops it) and deletes once the job has
//! left `active`. The order keeps a deleted task deleted: the jobs are removed (so no flow is
//! left that would run it again), then the directory is renamed away under the manifest lock
//! (with shared storage: its objects and then its record are deleted under the record lock;
//! either way the task is gone for every reader at once, and the reconciler adds a flow only
//! for a task that exists), then the jobs are removed once more (a flow a reconciler pass
//! added in between).

use crate::app::cancel;
use crate::app::tasks::{self, TaskOpError, BUSY_WAIT};
use crate::domain::manifest::{Manifest, StageState, TaskStatus};
use crate::domain::Stage;
use crate::engine::producer::Producer;
use crate::observe::events::EventLog;
use crate::store::{DataDir, Removed, StoreError};

/// What a delete did.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Deleted {
    /// The task id.
    pub task_id: String,
    /// Always true (an answer at all means the task is gone).
    pub deleted: bool,
    /// True when the task was queued or running and was cancelled first.
    pub cancelled: bool,
    /// Files removed (outputs, record, lock files).
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// The stage a task runs now: an active stage, else — for a `running` task between two
/// stages — the first one not completed; `None` for a queued or ended task.
fn running_stage(m: &Manifest) -> Option<Stage> {
    let active = Stage::ALL
        .into_iter()
        .find(|s| m.stage(*s).is_some_and(|r| r.state == StageState::Active));
    active.or_else(|| {
        (m.status == TaskStatus::Running).then(|| {
            Stage::ALL
                .into_iter()
                .find(|s| m.stage(*s).is_none_or(|r| r.state != StageState::Completed))
                .unwrap_or(Stage::LAST)
        })
    })
}

/// Deletes `task_id` for a user: every file and the record, and its jobs; emits
/// `task.deleted` (`reason: user`). A queued task is cancelled first; a running one only with
/// `force` (cancelled, then deleted once its job has stopped, waiting up to [`BUSY_WAIT`]).
///
/// Errors: `NotFound`; `Conflict` when the task runs and `force` is false, or when its job is
/// still active after [`BUSY_WAIT`]; `Store`/`Queue` on IO or Redis failures.
pub async fn delete_task(
    data: &DataDir,
    producer: &Producer,
    log: &EventLog,
    task_id: &str,
    force: bool,
) -> Result<Deleted, TaskOpError> {
    let m = tasks::get(data, task_id)?;
    if let (Some(stage), false) = (running_stage(&m), force) {
        return Err(TaskOpError::Conflict(format!(
            "task {task_id} is running (its {stage} stage); cancel it first, or delete it with force, which cancels it"
        )));
    }
    let mut cancelled = false;
    if !m.status.is_final() {
        match cancel::cancel_task(data, producer, log, task_id).await {
            Ok(_) => cancelled = true,
            // It ended meanwhile: delete it as it is.
            Err(TaskOpError::Conflict(_)) => {}
            Err(e) => return Err(e),
        }
    }
    let removed = remove(data, producer, log, task_id, "user").await?;
    crate::observe::metrics::count_deleted("user");
    Ok(Deleted {
        task_id: task_id.to_string(),
        deleted: true,
        cancelled,
        files: removed.files,
        bytes: removed.bytes,
    })
}

/// Removes an ended (or cancelled) task: its jobs (waiting up to [`BUSY_WAIT`] for a stopping
/// one to leave `active`), its directory, its jobs again, then `task.deleted` with `reason`
/// (`user` or `retention`). Shared by [`delete_task`] and the retention policy.
///
/// Errors: `NotFound` (deleted meanwhile); `Conflict` when a job stays active;
/// `Store`/`Queue`.
pub(crate) async fn remove(
    data: &DataDir,
    producer: &Producer,
    log: &EventLog,
    task_id: &str,
    reason: &str,
) -> Result<Removed, TaskOpError> {
    let deadline = tokio::time::Instant::now() + BUSY_WAIT;
    while !producer.remove_task_jobs(task_id).await? {
        if tokio::time::Instant::now() >= deadline {
            return Err(TaskOpError::Conflict(format!(
                "task {task_id} still has a running job that did not stop within {} s; try again in a moment",
                BUSY_WAIT.as_secs()
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let task = data.task(task_id);
    let removed = tokio::task::spawn_blocking(move || task.delete())
        .await
        .map_err(|e| {
            TaskOpError::Store(StoreError::Io {
                op: "delete",
                path: data.root().to_path_buf(),
                source: std::io::Error::other(e),
            })
        })??;
    // A flow a reconciler pass added between the first removal and the rename.
    producer.remove_task_jobs(task_id).await?;
    tracing::info!(
        task = task_id,
        reason,
        files = removed.files,
        bytes = removed.bytes,
        "task deleted"
    );
    if let Err(e) = log.task_deleted(task_id, reason).await {
        tracing::warn!(task = task_id, error = %e, "cannot record task.deleted");
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::manifest::Source;

    #[test]
    fn the_running_stage_is_the_active_one_or_the_next_to_run() {
        let mut m = Manifest::new("t", "/x.wav", Source::File { path: "/x".into() });
        assert_eq!(running_stage(&m), None, "queued");
        m.start_attempt(Stage::Download, 1, "h:1");
        assert_eq!(running_stage(&m), Some(Stage::Download));
        m.record_completion(Stage::Download, vec![], serde_json::json!({}));
        assert_eq!(running_stage(&m), Some(Stage::Transcribe), "between stages");
        m.start_attempt(Stage::Transcribe, 1, "h:1");
        assert!(m.cancel());
        assert_eq!(running_stage(&m), None, "cancelled");
    }
}
