//! Task submission: input → task id → manifest → flow. Used by the CLI (and the server).
//!
//! The task id is derived from the input (`yt-<video id>`, `file-<hash>`, `url-<hash>`) and
//! the transcription model ([`ModelRef::task_suffix`]: nothing for tiny.en, `-base`, …), so
//! submitting the same video with the same model again joins the existing task instead of
//! running it twice, while another model gets its own task — which reuses the media another
//! model's task already downloaded. A task that failed or was cancelled is reset and run
//! again — its complete, intact stages are reused, except media a later stage found broken,
//! which is downloaded again (and the answer says so); `fresh` forces a new task.
//!
//! Options ([`TaskOptions`]: the video's own captions instead of Whisper, a translation into
//! English) are part of a task's identity too ([`TaskOptions::task_suffix`]). A playlist or
//! channel submitted with `expand` ([`expand`]) is listed by yt-dlp and becomes one ordinary
//! submit per video plus a batch record ([`Batch`], kept by the store) naming their tasks.

use crate::domain::input;
use crate::domain::input::{Input, InputPolicy};
use crate::domain::manifest::{Manifest, Source, StageRecord, StageState, TaskStatus};
use crate::domain::options::{Batch, BatchItem, CaptionsMode, TaskOptions};
use crate::domain::ModelRef;
use crate::domain::Stage;
use crate::engine::producer::Producer;
use crate::engine::redis::QueueError;
use crate::engine::webhooks::OutboxError;
use crate::observe::events::EventLog;
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
    /// The options are not valid (not retryable), e.g. an unknown captions language form.
    #[error("{0}")]
    Options(String),
    /// yt-dlp could not list the playlist or channel (`retryable` says whether trying again
    /// may help: a network error, not a private playlist).
    #[error("{message}")]
    List {
        /// One sentence, cause first.
        message: String,
        /// Whether trying again may help.
        retryable: bool,
    },
    /// The callback URL is refused (not retryable): one sentence, cause first.
    #[error("{0}")]
    Callback(String),
}

/// Checks a submitter's callback URL before anything is created: an `http`/`https` URL that
/// `policy` allows like a media URL (allow-list, no private addresses unless allowed), and a
/// webhook secret to sign its deliveries with (`producer`'s configuration).
///
/// # Errors
/// [`SubmitError::Callback`] saying why.
pub fn check_callback(
    policy: &InputPolicy,
    producer: &Producer,
    raw: &str,
) -> Result<url::Url, SubmitError> {
    let url = url::Url::parse(raw.trim())
        .map_err(|e| SubmitError::Callback(format!("callback URL {raw:?} is not a URL: {e}")))?;
    policy
        .check_fetch_url(&url)
        .map_err(|e| SubmitError::Callback(format!("callback URL {url} is refused: {e}")))?;
    if !producer.outbox().can_sign() {
        return Err(SubmitError::Callback(
            "callbacks need a webhook secret to sign deliveries with; set --webhook-secret, \
             TUBESCRIBE_WEBHOOK_SECRET or [webhooks] secret"
                .into(),
        ));
    }
    Ok(url)
}

/// Adds `url` (from [`check_callback`]) to the callbacks of task `task_id` (once); if the task
/// has ended already, its delivery is queued now.
///
/// # Errors
/// `Store` when the manifest cannot be updated, `Queue` when Redis refuses the delivery.
pub async fn add_callback(
    data: &DataDir,
    producer: &Producer,
    task_id: &str,
    url: &url::Url,
) -> Result<(), SubmitError> {
    let task = data.task(task_id);
    task.update_manifest(|m| {
        m.webhooks.add_callback(url.as_str());
    })?;
    producer.outbox().notify(&task).await.map_err(|e| match e {
        OutboxError::Store(e) => SubmitError::Store(e),
        OutboxError::Queue(e) => SubmitError::Queue(e),
    })?;
    Ok(())
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
        Input::LocalFile { path } | Input::Upload { path, .. } => Source::File {
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
    submit_with(
        data,
        producer,
        policy,
        raw,
        fresh,
        model,
        &TaskOptions::default(),
    )
    .await
}

/// [`submit`] with task options `opts` (recorded in the manifest, part of the task id). The
/// captions options apply to YouTube videos only: `captions: prefer` on another input is
/// dropped (there are no captions to prefer), `captions: only` is refused.
///
/// Errors: as [`submit`]; [`SubmitError::Options`] for invalid options.
pub async fn submit_with(
    data: &DataDir,
    producer: &Producer,
    policy: &InputPolicy,
    raw: &str,
    fresh: bool,
    model: &ModelRef,
    opts: &TaskOptions,
) -> Result<Submitted, SubmitError> {
    opts.validate().map_err(SubmitError::Options)?;
    let parsed = input::parse_input(raw, policy)?;
    submit_input(data, producer, parsed, raw.trim(), fresh, model, opts).await
}

/// [`submit`] for a file uploaded over HTTP and kept by the store (`upload`): the task is
/// `upload-<16 hex of the content's SHA-256>` plus the model's and the options' suffixes, so
/// the same bytes with the same model and options join one task whatever the file was
/// called; `name` (the client's file name) is the manifest's `input`; `opts` as for
/// [`submit_with`] (a translation: `translate`). Errors as [`submit_with`], without `Input`.
pub async fn submit_upload(
    data: &DataDir,
    producer: &Producer,
    upload: &crate::store::StoredUpload,
    name: &str,
    fresh: bool,
    model: &ModelRef,
    opts: &TaskOptions,
) -> Result<Submitted, SubmitError> {
    opts.validate().map_err(SubmitError::Options)?;
    let parsed = Input::Upload {
        sha256: upload.sha256.clone(),
        path: upload.path.clone(),
    };
    submit_input(data, producer, parsed, name, fresh, model, opts).await
}

/// The common part of [`submit_with`] and [`submit_upload`]: `parsed` (given as `raw`) with
/// options `opts` → task.
async fn submit_input(
    data: &DataDir,
    producer: &Producer,
    parsed: Input,
    raw: &str,
    fresh: bool,
    model: &ModelRef,
    opts: &TaskOptions,
) -> Result<Submitted, SubmitError> {
    let opts = match (&parsed, opts.captions) {
        (input::Input::YouTube { .. }, _) | (_, CaptionsMode::Never) => opts.clone(),
        (_, CaptionsMode::Prefer) => TaskOptions::default(),
        (_, CaptionsMode::Only) => {
            return Err(SubmitError::Options(
                "captions: only needs a YouTube video; files and direct URLs have no captions"
                    .into(),
            ))
        }
    };
    let key = parsed.source_key();
    let mut task_id = format!("{key}{}{}", model.task_suffix(), opts.task_suffix());
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
        let mut manifest = Manifest::new(&task_id, raw, source_of(&parsed));
        manifest.model = Some(model.clone());
        manifest.options = opts.clone();
        if task.create(&manifest)? {
            if let Source::File { path } = &manifest.source {
                // Shared storage: the file goes up now, so no worker reads this disk.
                if let Err(e) = task.upload_input(std::path::Path::new(path)) {
                    let _ = task.remove();
                    return Err(e.into());
                }
            }
            // A captions task needs the captions beside the media: another task's download
            // has none, so it downloads itself.
            if !fresh && opts.captions == CaptionsMode::Never {
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

/// What [`expand`] needs to list a playlist or channel: yt-dlp and its cache directory.
#[derive(Debug, Clone)]
pub struct Lister {
    /// The yt-dlp program.
    pub program: std::path::PathBuf,
    /// yt-dlp's persistent cache directory.
    pub cache_dir: std::path::PathBuf,
}

/// How long listing a playlist or channel may take.
pub const LIST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// Expands the playlist or channel `raw` ([`input::parse_collection_url`]) into one task per
/// video: yt-dlp lists its first `max_videos` (1–[`MAX_MAX_VIDEOS`](crate::domain::options::MAX_MAX_VIDEOS))
/// videos, each is submitted like a single video with `opts` ([`submit_with`]: deduplicated
/// as usual, so a video already transcribed joins its task), and a batch record listing them
/// is stored (`<data>/batches/<id>.json`) and named in each new task's manifest, then
/// announced on `log` (`batch.created`; a Redis error there is logged, the batch stands).
/// Returns `None` when `raw` is no playlist or channel (the caller submits it as one input).
///
/// Errors: [`SubmitError::Options`] for a limit out of range; [`SubmitError::List`] when
/// yt-dlp cannot list it or it holds no video; a video's submit error ends the expansion
/// (the tasks submitted before it stay).
#[allow(clippy::too_many_arguments)]
pub async fn expand(
    data: &DataDir,
    producer: &Producer,
    policy: &InputPolicy,
    lister: &Lister,
    raw: &str,
    fresh: bool,
    model: &ModelRef,
    opts: &TaskOptions,
    max_videos: usize,
    log: &EventLog,
) -> Result<Option<Batch>, SubmitError> {
    let Some(coll) = input::parse_collection_url(raw) else {
        return Ok(None);
    };
    let max = crate::domain::options::MAX_MAX_VIDEOS;
    if !(1..=max).contains(&max_videos) {
        return Err(SubmitError::Options(format!(
            "max videos {max_videos} is out of range; use 1 to {max}"
        )));
    }
    opts.validate().map_err(SubmitError::Options)?;
    let listing = crate::pipeline::download::listing::list(
        &lister.program,
        &coll.url,
        max_videos,
        lister.cache_dir.clone(),
        &tokio_util::sync::CancellationToken::new(),
        LIST_TIMEOUT,
    )
    .await
    .map_err(|e| SubmitError::List {
        retryable: e.class != crate::domain::FailureClass::Permanent,
        message: e.message,
    })?;
    if listing.entries.is_empty() {
        return Err(SubmitError::List {
            message: format!("{} lists no videos", coll.url),
            retryable: false,
        });
    }
    let mut batch = Batch {
        batch_id: format!("batch-{}", &uuid::Uuid::new_v4().simple().to_string()[..16]),
        input: raw.trim().to_string(),
        url: coll.url,
        kind: coll.kind,
        title: listing.title,
        max_videos,
        created_at: crate::domain::manifest::now_ms(),
        options: opts.clone(),
        items: Vec::new(),
        skipped: listing.skipped,
    };
    for e in listing.entries {
        let s = submit_with(data, producer, policy, &e.url, fresh, model, opts).await?;
        if !s.existing {
            let id = batch.batch_id.clone();
            data.task(&s.task_id).update_manifest(|m| {
                m.batch_id.get_or_insert(id);
            })?;
        }
        batch.items.push(BatchItem {
            video_id: e.video_id,
            title: e.title,
            task_id: s.task_id,
            existing: s.existing,
        });
        // Written after every video, so a failure part-way leaves a record of what exists.
        data.write_batch(&batch)?;
    }
    tracing::info!(batch = %batch.batch_id, videos = batch.items.len(), url = %batch.url, "playlist expanded");
    if let Err(e) = log.batch_created(&batch).await {
        tracing::warn!(batch = %batch.batch_id, error = %e, "cannot record batch.created");
    }
    Ok(Some(batch))
}

/// The batch record `batch_id`. Errors: `NotFound` for unknown or malformed ids.
pub fn get_batch(data: &DataDir, batch_id: &str) -> Result<Batch, TaskOpError> {
    if !crate::domain::options::valid_batch_id(batch_id) {
        return Err(TaskOpError::NotFound(batch_id.to_string()));
    }
    data.read_batch(batch_id)?
        .ok_or_else(|| TaskOpError::NotFound(batch_id.to_string()))
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

/// How [`wait_for_stage`] ended.
#[derive(Debug, Clone)]
pub enum StageWait {
    /// The stage completed; the manifest read then.
    Done(Manifest),
    /// The task failed or was cancelled before the stage completed; the manifest read then
    /// (`status`, `error`).
    Ended(Manifest),
}

/// Waits until `stage` of `task_id` has completed (its outputs are in the task directory) or
/// the task failed or was cancelled, reading the manifest every `poll`; the task record is
/// the only truth, so any process's workers may run the task.
///
/// Errors: `NotFound` (unknown or removed task), `Store`.
pub async fn wait_for_stage(
    data: &DataDir,
    task_id: &str,
    stage: Stage,
    poll: std::time::Duration,
) -> Result<StageWait, TaskOpError> {
    loop {
        let m = get(data, task_id)?;
        if m.stage(stage)
            .is_some_and(|r| r.state == StageState::Completed)
        {
            return Ok(StageWait::Done(m));
        }
        if matches!(m.status, TaskStatus::Failed | TaskStatus::Cancelled) {
            return Ok(StageWait::Ended(m));
        }
        tokio::time::sleep(poll).await;
    }
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
