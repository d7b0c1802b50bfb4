//! Task submission: input → task id → manifest → flow. Used by the CLI (and the server).
//!
//! The task id is derived from the input (`yt-<video id>`, `file-<hash>`, `url-<hash>`), so
//! submitting the same video again joins the existing task instead of running it twice. A
//! task that failed or was cancelled is reset and run again; `fresh` forces a new task.

use crate::input::{self, Input, InputPolicy};
use crate::manifest::{Manifest, Source, TaskStatus};
use crate::queue::{Producer, QueueError};
use crate::taskdir::{DataDir, StoreError};

/// Why a submission was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The input is not a supported URL or file (not retryable).
    #[error(transparent)]
    Input(#[from] input::InputError),
    /// The task directory could not be written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Redis/BullMQ refused the flow (retryable).
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The task's previous run is still active in a worker; it cannot be reset now.
    #[error("task {0} is still running; wait for it or cancel it first")]
    Busy(String),
}

/// The answer to a submission.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Submitted {
    /// The task id.
    pub task_id: String,
    /// The YouTube video id, for YouTube inputs.
    pub video_id: Option<String>,
    /// True when the input matched a queued, running or completed task that was reused.
    pub existing: bool,
}

fn source_of(i: &Input) -> Source {
    match i {
        Input::YouTube { video_id, url } => Source::Youtube {
            video_id: video_id.clone(),
            url: url.clone(),
        },
        Input::LocalFile { path } => Source::File {
            path: path.to_string_lossy().into_owned(),
        },
        Input::DirectUrl { url } => Source::Url {
            url: url.to_string(),
        },
    }
}

/// Parses `raw`, creates (or finds) its task and adds its flow.
///
/// Errors: [`SubmitError::Input`] before anything is created; `Busy` when a failed task's
/// job is somehow still active; `Store`/`Queue` on IO or Redis failures.
pub async fn submit(
    data: &DataDir,
    producer: &Producer,
    policy: &InputPolicy,
    raw: &str,
    fresh: bool,
) -> Result<Submitted, SubmitError> {
    let parsed = input::parse_input(raw, policy)?;
    let mut task_id = parsed.source_key();
    if fresh {
        task_id = format!(
            "{task_id}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
    }
    let video_id = match &parsed {
        Input::YouTube { video_id, .. } => Some(video_id.clone()),
        _ => None,
    };
    let task = data.task(&task_id);
    if task.exists() {
        let m = task.read_manifest()?;
        match m.status {
            TaskStatus::Queued | TaskStatus::Running | TaskStatus::Completed => {
                // Re-adding is a no-op when the jobs exist; it repairs a lost flow otherwise.
                if m.status != TaskStatus::Completed {
                    producer.add_task(&task_id).await?;
                }
                return Ok(Submitted {
                    task_id,
                    video_id,
                    existing: true,
                });
            }
            TaskStatus::Failed | TaskStatus::Cancelled => {
                if !producer.remove_task_jobs(&task_id).await? {
                    return Err(SubmitError::Busy(task_id));
                }
                task.remove()?;
            }
        }
    }
    let manifest = Manifest::new(&task_id, raw.trim(), source_of(&parsed));
    task.create(&manifest)?;
    producer.add_task(&task_id).await?;
    Ok(Submitted {
        task_id,
        video_id,
        existing: false,
    })
}
