//! Task submission: input → task id → manifest → flow. Used by the CLI (and the server).
//!
//! The task id is derived from the input (`yt-<video id>`, `file-<hash>`, `url-<hash>`) and
//! the transcription model ([`ModelRef::task_suffix`]: nothing for tiny.en, `-base`, …), so
//! submitting the same video with the same model again joins the existing task instead of
//! running it twice, while another model gets its own task — which reuses the media another
//! model's task already downloaded. A task that failed or was cancelled is reset and run
//! again — its complete, intact stages are reused, except media a later stage found broken,
//! which is downloaded again (and the answer says so); `fresh` forces a new task.

use crate::domain::input;
use crate::domain::input::{Input, InputPolicy};
use crate::domain::manifest::{Manifest, Source, StageRecord, StageState, TaskStatus};
use crate::domain::ModelRef;
use crate::domain::Stage;
use crate::engine::producer::Producer;
use crate::engine::redis::QueueError;
use crate::pipeline::download::BROKEN_DOWNLOADS;
use crate::store::{DataDir, StoreError};

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
    /// For a restarted task: what runs again that the caller may not expect, one sentence
    /// (`the media will be downloaded again: the downloaded media is truncated: …`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
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

/// Parses `raw`, creates (or finds) its task for transcription with `model` and adds its
/// flow. A new task whose input another task (another model's) has already downloaded gets
/// that media instead of downloading it again ([`adopt_download`]).
///
/// Of concurrent submits of the same input exactly one is answered `existing: false`: the one
/// whose [`TaskDir::create`](crate::store::TaskDir::create) wrote the manifest, or, for a
/// failed or cancelled task, the one that restarts it ([`restart_if_ended`]); the others join
/// the task. The work runs once either way (the flow's job ids are the task's).
///
/// A new task whose flow cannot be added (Redis down) is removed again before the error is
/// returned: a submit either leaves a task with its jobs, or nothing.
///
/// Errors: [`SubmitError::Input`] before anything is created; `Busy` when a failed or
/// cancelled task's job is still active after [`BUSY_WAIT`]; `Store`/`Queue` on IO or Redis
/// failures.
pub async fn submit(
    data: &DataDir,
    producer: &Producer,
    policy: &InputPolicy,
    raw: &str,
    fresh: bool,
    model: &ModelRef,
) -> Result<Submitted, SubmitError> {
    let parsed = input::parse_input(raw, policy)?;
    let key = parsed.source_key();
    let mut task_id = format!("{key}{}", model.task_suffix());
    if fresh {
        task_id = format!(
            "{task_id}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
    }
    let answer = |existing, note| Submitted {
        task_id: task_id.clone(),
        video_id: video_id_of(&source_of(&parsed)),
        existing,
        note,
    };
    let task = data.task(&task_id);
    if !task.exists() {
        let mut manifest = Manifest::new(&task_id, raw.trim(), source_of(&parsed));
        manifest.model = Some(model.clone());
        if task.create(&manifest)? {
            if !fresh {
                adopt_download(data, &key, &task, &manifest);
            }
            if let Err(e) = producer.add_task(&task_id).await {
                // A task without its flow would stay `queued` forever: the submit that
                // created it takes it back, and the caller is told why (Redis is down).
                if let Err(rm) = task.remove() {
                    tracing::warn!(task = %task_id, "cannot remove the task that was not enqueued: {rm}");
                }
                return Err(e.into());
            }
            return Ok(answer(false, None));
        }
        // Another submit created it a moment ago: join it like any existing task.
    }
    match restart_if_ended::<SubmitError>(producer, &task, task.read_manifest()?).await? {
        Restart::Restarted(_, note) => Ok(answer(false, note)),
        Restart::Busy => Err(SubmitError::Busy(task_id)),
        Restart::NotEnded(m) => {
            // Re-adding is a no-op when the jobs exist; it repairs a lost flow otherwise.
            if !m.status.is_completed() {
                producer.add_task(&task_id).await?;
            }
            Ok(answer(true, None))
        }
    }
}

fn video_id_of(source: &Source) -> Option<String> {
    match source {
        Source::Youtube { video_id, .. } => Some(video_id.clone()),
        _ => None,
    }
}

/// What [`restart_if_ended`] found and did.
enum Restart {
    /// The task was failed or cancelled (this manifest) and runs again now; the note of
    /// [`restart`].
    Restarted(Manifest, Option<String>),
    /// The task is queued, running or completed (this manifest), perhaps restarted by another
    /// caller a moment ago; nothing was changed.
    NotEnded(Manifest),
    /// The task is failed or cancelled but one of its jobs is still active after
    /// [`BUSY_WAIT`] (a cancel its worker has not carried out); nothing was changed.
    Busy,
}

/// How long a retry (or a submit of the same input) waits for a cancelled task's running job
/// to stop before it gives up: a program is killed at once, whisper stops at its next encoder
/// pass (3–12 s measured on 2 cores).
pub const BUSY_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

/// Runs `task` (manifest `m`, as read by the caller) again if it failed or was cancelled: its
/// old jobs are removed (a job still active is waited for, up to [`BUSY_WAIT`]), it is reset
/// ([`restart`]) and its flow added. Checked and done under
/// the task's restart lock ([`TaskDir::lock_restart`](crate::store::TaskDir::lock_restart),
/// waited for on a blocking thread), so of concurrent callers — submits and retries, in any
/// process — exactly one restarts the task and the others find it queued.
///
/// Errors: IO on the task directory, Redis.
async fn restart_if_ended<E>(
    producer: &Producer,
    task: &crate::store::TaskDir,
    m: Manifest,
) -> Result<Restart, E>
where
    E: From<StoreError> + From<QueueError>,
{
    let ended = |m: &Manifest| matches!(m.status, TaskStatus::Failed | TaskStatus::Cancelled);
    if !ended(&m) {
        return Ok(Restart::NotEnded(m));
    }
    let t = task.clone();
    let _lock = tokio::task::spawn_blocking(move || t.lock_restart())
        .await
        .map_err(|e| StoreError::Io {
            op: "lock",
            path: task.path().to_path_buf(),
            source: std::io::Error::other(e),
        })??;
    let m = task.read_manifest()?;
    if !ended(&m) {
        return Ok(Restart::NotEnded(m));
    }
    // A job still active (a cancel whose worker is stopping the job) cannot be removed yet.
    let deadline = tokio::time::Instant::now() + BUSY_WAIT;
    while !producer.remove_task_jobs(&m.task_id).await? {
        if tokio::time::Instant::now() >= deadline {
            return Ok(Restart::Busy);
        }
        tracing::debug!(task = %m.task_id, "waiting for the task's stopping job to end");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // The stopped attempt has recorded its end by now.
    let m = task.read_manifest()?;
    let note = restart(task, &m)?;
    producer.add_task(&m.task_id).await?;
    Ok(Restart::Restarted(m, note))
}

/// Gives the new task `task` (manifest `m`, source key `key`) the completed download of
/// another task of the same input — another model's task or a `--fresh` run — so that
/// transcribing with a second model does not download again: the media is hard-linked (or
/// copied) and its SHA-256 checked, the download record is copied with `detail.media_from`
/// naming the task it came from, and the download job then finds its outputs complete and
/// records the attempt as `reused`. Best effort: on any problem the download simply runs.
fn adopt_download(data: &DataDir, key: &str, task: &crate::store::TaskDir, m: &Manifest) {
    let Ok(ids) = data.task_ids() else { return };
    let sibling = ids
        .iter()
        .filter(|id| id.starts_with(key) && **id != m.task_id)
        .filter_map(|id| Some((id, data.task(id).read_manifest().ok()?)))
        .find_map(|(id, sm)| {
            let r = sm.stage(Stage::Download)?;
            let usable = sm.source == m.source
                && r.state == StageState::Completed
                && r.invalidated.is_none()
                && r.result.is_some()
                && !r.outputs.is_empty();
            usable.then(|| (id.clone(), sm.video.clone(), r.clone()))
        });
    let Some((from, video, rec)) = sibling else {
        return;
    };
    let src = data.task(&from);
    let adopted = rec
        .outputs
        .iter()
        .all(|o| task.adopt_output(&src, o).unwrap_or(false));
    task.clear_tmp();
    if !adopted {
        for o in &rec.outputs {
            let _ = std::fs::remove_file(task.file(&o.name));
        }
        return;
    }
    let record = StageRecord {
        state: StageState::Completed,
        progress: 100.0,
        outputs: rec.outputs,
        result: rec.result,
        completions: 1,
        detail: [("media_from".to_string(), serde_json::json!(from))]
            .into_iter()
            .collect(),
        ..StageRecord::default()
    };
    let r = task.update_manifest(|m| {
        m.video = video;
        m.stages.insert(Stage::Download, record);
    });
    match r {
        Ok(_) => {
            tracing::info!(task = %m.task_id, %from, "media reused from another task of the same input")
        }
        Err(e) => tracing::warn!(task = %m.task_id, "could not reuse the media of {from}: {e}"),
    }
}

/// Resets a failed or cancelled task (manifest `old`) to run again: stages whose outputs are
/// complete and intact are kept and will be reused, not run again (a failed summary never
/// re-downloads); the others wait again; the attempt history stays; temp files are removed;
/// the count of broken downloads starts again ([`BROKEN_DOWNLOADS`]).
///
/// Returns a note when media that was downloaded is downloaded again — a later stage found it
/// broken ([`StageRecord::invalidated`]) or the file changed — also recorded as the download's
/// waiting phase: `the media will be downloaded again: <why>`.
fn restart(task: &crate::store::TaskDir, old: &Manifest) -> Result<Option<String>, StoreError> {
    let keep: Vec<Stage> = Stage::ALL
        .into_iter()
        .filter(|s| crate::pipeline::completed_earlier(*s, task, old).is_some())
        .collect();
    let note = old
        .stage(Stage::Download)
        .filter(|r| !keep.contains(&Stage::Download) && r.result.is_some())
        .map(|r| {
            let why = match r.invalidated.as_deref() {
                Some(why) => why,
                None if old.media_pruned() => "the retention policy deleted it",
                None => "the media file no longer matches what was downloaded (missing, or another size or SHA-256)",
            };
            format!("the media will be downloaded again: {why}")
        });
    task.clear_tmp();
    task.update_manifest(|m| {
        m.reset_for_retry(&keep);
        let d = &mut m.stage_mut(Stage::Download).detail;
        d.remove(BROKEN_DOWNLOADS);
        if let Some(n) = &note {
            d.insert("phase".into(), serde_json::json!(format!("waiting: {n}")));
        }
    })?;
    if let Some(n) = &note {
        tracing::info!(task = %old.task_id, "{n}");
    }
    Ok(note)
}

/// Why a task operation (get, retry, cancel) was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum TaskOpError {
    /// No task with this id (not retryable).
    #[error("task {0} not found")]
    NotFound(String),
    /// The task is not in a state that allows the operation (not retryable as is).
    #[error("{0}")]
    Conflict(String),
    /// The task directory could not be read or written (retryable).
    #[error(transparent)]
    Store(StoreError),
    /// Redis/BullMQ failed (retryable).
    #[error(transparent)]
    Queue(#[from] QueueError),
}

impl From<StoreError> for TaskOpError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(id) => TaskOpError::NotFound(id),
            e => TaskOpError::Store(e),
        }
    }
}

/// The manifest of `task_id`. Errors: `NotFound` for unknown or malformed ids.
pub fn get(data: &DataDir, task_id: &str) -> Result<Manifest, TaskOpError> {
    if !crate::domain::keys::valid_task_id(task_id) {
        return Err(TaskOpError::NotFound(task_id.to_string()));
    }
    Ok(data.task(task_id).read_manifest()?)
}

/// One page of tasks.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TaskPage {
    /// The manifests on this page, newest first.
    pub tasks: Vec<Manifest>,
    /// Number of tasks matching the filter (all pages).
    pub total: usize,
    /// Offset of the first task on this page.
    pub offset: usize,
    /// Page size asked for.
    pub limit: usize,
}

/// Tasks newest first (by creation time), only those whose status is one of `status` (all
/// when empty; `completed` does not include `completed_with_warnings`), paged by
/// `offset`/`limit` (limit capped at 500). Unreadable manifests are skipped.
pub fn list(
    data: &DataDir,
    status: &[TaskStatus],
    offset: usize,
    limit: usize,
) -> Result<TaskPage, TaskOpError> {
    let limit = limit.min(500);
    let mut all: Vec<Manifest> = data
        .task_ids()?
        .iter()
        .filter_map(|id| data.task(id).read_manifest().ok())
        .filter(|m| status.is_empty() || status.contains(&m.status))
        .collect();
    all.sort_by(|a, b| {
        b.created_at
            .cmp(&a.created_at)
            .then(a.task_id.cmp(&b.task_id))
    });
    let total = all.len();
    let tasks = all.into_iter().skip(offset).take(limit).collect();
    Ok(TaskPage {
        tasks,
        total,
        offset,
        limit,
    })
}

/// Runs a failed or cancelled task again under the same id: its jobs are removed, stages
/// whose outputs are complete and intact are kept (their jobs reuse them), the others are
/// reset ([`Manifest::reset_for_retry`]; attempt history kept), temp files are removed and a
/// new flow is added. Of concurrent retries (and submits) of the task only one restarts it
/// ([`restart_if_ended`]); the others get `Conflict`, the task being queued by then.
///
/// Right after a cancel the task's running job may still be stopping (whisper ends at its
/// next encoder pass): the retry waits for it, up to [`BUSY_WAIT`].
///
/// Errors: `NotFound`; `Conflict` when the task is queued, running or completed, or when one
/// of its jobs is still active after [`BUSY_WAIT`].
pub async fn retry(
    data: &DataDir,
    producer: &Producer,
    task_id: &str,
) -> Result<Submitted, TaskOpError> {
    let old = get(data, task_id)?;
    match restart_if_ended::<TaskOpError>(producer, &data.task(task_id), old).await? {
        Restart::Restarted(old, note) => Ok(Submitted {
            task_id: task_id.to_string(),
            video_id: video_id_of(&old.source),
            existing: false,
            note,
        }),
        Restart::NotEnded(m) => Err(TaskOpError::Conflict(format!(
            "task {task_id} is {}; only failed or cancelled tasks can be retried",
            m.status.as_str()
        ))),
        Restart::Busy => Err(TaskOpError::Conflict(format!(
            "task {task_id} still has a running job; try again in a moment"
        ))),
    }
}
