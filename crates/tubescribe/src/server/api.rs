//! The task operations behind both wire formats, their inputs and outputs, and the one error
//! type ([`ApiError`]) that the tRPC and REST layers render in their own formats.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::Shared;
use crate::app::cancel;
use crate::app::cancel::Cancelled;
use crate::app::delete;
use crate::app::delete::Deleted;
use crate::app::tasks;
use crate::app::tasks::{SubmitError, TaskOpError, TaskPage};
use crate::domain::manifest::{Manifest, TaskStatus};
use crate::domain::options::{Batch, CaptionsMode, TaskOptions};
use crate::domain::ModelRef;
use crate::store::StoredUpload;
use crate::tools::model::ModelChoiceError;

/// An API error: HTTP status, tRPC error code name and a message for humans.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// tRPC code name (`BAD_REQUEST`, `NOT_FOUND`, `CONFLICT`, …).
    pub code: &'static str,
    /// What went wrong, e.g. "Invalid YouTube URL: …".
    pub message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
    /// 400 BAD_REQUEST.
    pub fn bad_request(m: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BAD_REQUEST", m)
    }
    /// 404 NOT_FOUND.
    pub fn not_found(m: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NOT_FOUND", m)
    }
    /// 409 CONFLICT.
    pub fn conflict(m: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "CONFLICT", m)
    }
    /// 401 UNAUTHORIZED.
    pub fn unauthorized(m: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", m)
    }
    /// 413 PAYLOAD_TOO_LARGE.
    pub fn too_large(m: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE", m)
    }
    /// 405 METHOD_NOT_SUPPORTED.
    pub fn method(m: impl Into<String>) -> Self {
        Self::new(StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_SUPPORTED", m)
    }
    /// 503 SERVICE_UNAVAILABLE (Redis or the disk failed; retrying may help).
    pub fn unavailable(m: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "SERVICE_UNAVAILABLE", m)
    }

    /// The JSON-RPC error number tRPC uses for `code` (tRPC's `TRPC_ERROR_CODES_BY_KEY`).
    pub fn rpc_number(&self) -> i32 {
        match self.code {
            "PARSE_ERROR" => -32700,
            "BAD_REQUEST" => -32600,
            "UNAUTHORIZED" => -32001,
            "NOT_FOUND" => -32004,
            "METHOD_NOT_SUPPORTED" => -32005,
            "CONFLICT" => -32009,
            "PAYLOAD_TOO_LARGE" => -32013,
            _ => -32603,
        }
    }
}

/// REST rendering: RFC 9457 `application/problem+json`.
impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "type": "about:blank",
            "title": self.status.canonical_reason().unwrap_or("Error"),
            "status": self.status.as_u16(),
            "detail": self.message,
            "code": self.code,
        });
        (
            self.status,
            [(axum::http::header::CONTENT_TYPE, "application/problem+json")],
            body.to_string(),
        )
            .into_response()
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::Input(_) | SubmitError::Options(_) | SubmitError::Callback(_) => {
                ApiError::bad_request(e.to_string())
            }
            SubmitError::List {
                retryable: false, ..
            } => ApiError::bad_request(e.to_string()),
            SubmitError::List { .. } => ApiError::unavailable(e.to_string()),
            SubmitError::Busy(_) => ApiError::conflict(e.to_string()),
            SubmitError::Store(_) | SubmitError::Queue(_) => ApiError::unavailable(e.to_string()),
        }
    }
}

impl From<ModelChoiceError> for ApiError {
    fn from(e: ModelChoiceError) -> Self {
        match e {
            ModelChoiceError::NotInstalled { .. } => ApiError::bad_request(e.to_string()),
            ModelChoiceError::Missing(_) | ModelChoiceError::Read { .. } => {
                ApiError::unavailable(e.to_string())
            }
        }
    }
}

impl From<TaskOpError> for ApiError {
    fn from(e: TaskOpError) -> Self {
        match e {
            TaskOpError::NotFound(_) => ApiError::not_found(e.to_string()),
            TaskOpError::Conflict(_) => ApiError::conflict(e.to_string()),
            TaskOpError::Store(_) | TaskOpError::Queue(_) => ApiError::unavailable(e.to_string()),
        }
    }
}

/// Parses a JSON request body (or tRPC input), mapping errors to 400 / 413.
pub fn parse_json<T: serde::de::DeserializeOwned>(
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<T, ApiError> {
    let bytes = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large("request body is too large")
        } else {
            ApiError::bad_request(e.body_text())
        }
    })?;
    let bytes: &[u8] = if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        b"null"
    } else {
        &bytes
    };
    serde_json::from_slice(bytes).map_err(|e| invalid_input(&e))
}

/// 400 for a body or tRPC input that does not deserialize: serde's message (what, where) with
/// our Rust type names replaced by what the client sends, e.g. "invalid input: invalid type:
/// integer `42`, expected a string at line 1 column 11" or "invalid input: invalid type: null,
/// expected a JSON object like {\"link\": \"https://youtu.be/…\"}".
pub fn invalid_input(e: &serde_json::Error) -> ApiError {
    let mut msg = e.to_string();
    for (ty, shown) in [
        (
            "struct CreateInput",
            "a JSON object like {\"link\": \"https://youtu.be/…\"}",
        ),
        (
            "struct CreateOptions",
            "a JSON object like {\"fresh\": true, \"model\": \"base\"}",
        ),
        (
            "struct TaskIdInput",
            "a JSON object like {\"taskId\": \"…\"}",
        ),
        (
            "struct DeleteInput",
            "a JSON object like {\"taskId\": \"…\", \"force\": false}",
        ),
        (
            "struct ListInput",
            "a JSON object like {\"status\": \"failed\", \"limit\": 50}",
        ),
    ] {
        msg = msg.replace(ty, shown);
    }
    ApiError::bad_request(format!("invalid input: {msg}"))
}

/// `tasks.create` / `POST /api/tasks` input. `link` is the old system's name; `url` is
/// accepted too.
#[derive(Debug, Deserialize)]
pub struct CreateInput {
    /// The YouTube URL (or a direct media URL on an allowed host).
    #[serde(alias = "url")]
    pub link: String,
    /// Options; unknown keys are ignored for compatibility.
    #[serde(default)]
    pub options: CreateOptions,
    /// Same as `options.fresh`.
    #[serde(default)]
    pub fresh: bool,
    /// Where the task's end is POSTed as a signed webhook (`task.completed`, `task.failed`);
    /// the server's allow-list applies as to media URLs.
    #[serde(default, rename = "callbackUrl")]
    pub callback_url: Option<String>,
}

/// Options of [`CreateInput`].
#[derive(Debug, Default, Deserialize)]
pub struct CreateOptions {
    /// Run again even when a task for the same video exists.
    #[serde(default)]
    pub fresh: bool,
    /// The Whisper model: an installed model's name (`tiny.en`, `base`; see
    /// `GET /api/models`). Absent = the server's default. Each model has its own task.
    #[serde(default)]
    pub model: Option<String>,
    /// The video's own captions instead of Whisper: `prefer`, `only` or `never` (default).
    #[serde(default)]
    pub captions: Option<String>,
    /// With `captions`: accept YouTube's automatic captions too.
    #[serde(default, alias = "autoCaptions")]
    pub auto_captions: bool,
    /// With `captions`: the language (`en` by default; regional variants count).
    #[serde(default, alias = "captionsLang")]
    pub captions_lang: Option<String>,
    /// A playlist or channel URL becomes one task per video and a batch (without it they
    /// are refused).
    #[serde(default)]
    pub expand: bool,
    /// With `expand`: the most videos (the first ones), default 50.
    #[serde(default, alias = "maxVideos")]
    pub max_videos: Option<usize>,
}

impl CreateOptions {
    /// The task options asked for.
    fn task_options(&self) -> Result<TaskOptions, ApiError> {
        let captions = match &self.captions {
            Some(c) => CaptionsMode::parse(c).map_err(ApiError::bad_request)?,
            None => CaptionsMode::Never,
        };
        Ok(TaskOptions {
            captions,
            auto_captions: self.auto_captions,
            captions_lang: self.captions_lang.clone(),
            translate: false,
        })
    }
}

/// The answer to a create.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateOutput {
    /// The task id.
    pub task_id: String,
    /// The YouTube video id, when the input was a YouTube URL.
    pub video_id: Option<String>,
    /// True when the video was already queued, running or done and that task is returned.
    pub existing: bool,
    /// The task's status now.
    pub status: TaskStatus,
    /// For a retried task: what runs again that the caller may not expect, one sentence
    /// (`the media will be downloaded again: …`); absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// For an expanded playlist or channel: its batch (`taskId` is then its first video's
    /// task).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchOutput>,
}

/// A batch as the API shows it: the record (its own snake_case fields, like a manifest) plus
/// each task's status now.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchOutput {
    /// The record (`items`: `video_id`, `title`, `task_id`, `existing`).
    #[serde(flatten)]
    pub batch: Batch,
    /// Each item's task status, in item order (`null` when its task is gone).
    pub statuses: Vec<Option<TaskStatus>>,
}

/// The batch `id` with its tasks' statuses.
pub fn batch(st: &Shared, id: &str) -> Result<BatchOutput, ApiError> {
    let b = tasks::get_batch(&st.data, id)?;
    Ok(batch_output(st, b))
}

fn batch_output(st: &Shared, b: Batch) -> BatchOutput {
    let statuses = b
        .items
        .iter()
        .map(|i| tasks::get(&st.data, &i.task_id).ok().map(|m| m.status))
        .collect();
    BatchOutput { batch: b, statuses }
}

/// Input naming one task (`tasks.get`, `tasks.cancel`, `tasks.retry`).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskIdInput {
    /// The task id.
    #[serde(alias = "id")]
    pub task_id: String,
}

/// `tasks.delete` input; `DELETE /api/tasks/{id}?force=true` takes `force` from the query.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeleteInput {
    /// The task id (absent in the REST query, which has it in the path).
    #[serde(alias = "id", default)]
    pub task_id: String,
    /// Delete a running task too: it is cancelled first.
    #[serde(default)]
    pub force: bool,
}

/// `tasks.list` / `GET /api/tasks` input.
#[derive(Debug, Default, Deserialize)]
pub struct ListInput {
    /// Only tasks with this status (`queued`, `running`, `completed`,
    /// `completed_with_warnings`, `failed`, `cancelled`), or with any of several separated by
    /// commas (`completed,completed_with_warnings` = every completed task). `completed` alone
    /// does not match `completed_with_warnings`.
    pub status: Option<String>,
    /// Page size (default 50, at most 500).
    pub limit: Option<usize>,
    /// Tasks to skip (default 0).
    pub offset: Option<usize>,
}

/// Creates (or joins) the task for `input.link`.
pub async fn create(st: &Shared, input: CreateInput) -> Result<CreateOutput, ApiError> {
    // Input errors become 400s; with `allow_local_files` off the policy is `remote`, so
    // parsing never looks at this machine's disk.
    let fresh = input.fresh || input.options.fresh;
    let model = choose_model(st, input.options.model.as_deref()).await?;
    let opts = input.options.task_options()?;
    let callback = match input.callback_url.as_deref() {
        Some(raw) => Some(tasks::check_callback(&st.policy, &st.producer, raw)?),
        None => None,
    };
    if input.options.expand {
        let lister = tasks::Lister {
            program: st.opts.ytdlp.clone(),
            cache_dir: st.data.root().join("cache").join("yt-dlp"),
        };
        let max = input
            .options
            .max_videos
            .unwrap_or(crate::domain::options::DEFAULT_MAX_VIDEOS);
        let b = tasks::expand(
            &st.data,
            &st.producer,
            &st.policy,
            &lister,
            &input.link,
            fresh,
            &model,
            &opts,
            max,
            &st.log,
        )
        .await?;
        if let Some(b) = b {
            if let Some(url) = &callback {
                for item in &b.items {
                    tasks::add_callback(&st.data, &st.producer, &item.task_id, url).await?;
                }
            }
            let first = &b.items[0];
            let status = tasks::get(&st.data, &first.task_id)?.status;
            return Ok(CreateOutput {
                task_id: first.task_id.clone(),
                video_id: Some(first.video_id.clone()),
                existing: b.items.iter().all(|i| i.existing),
                status,
                note: None,
                batch: Some(batch_output(st, b)),
            });
        }
    }
    let s = tasks::submit_with(
        &st.data,
        &st.producer,
        &st.policy,
        &input.link,
        fresh,
        &model,
        &opts,
    )
    .await?;
    created(st, s, callback.as_ref()).await
}

/// Creates (or joins) the task for a file uploaded as `name` and kept by the store
/// ([`tasks::submit_upload`]: one task per content and model), with the form's
/// `callbackUrl` when given (checked before the task is created).
pub async fn create_upload(
    st: &Shared,
    upload: &StoredUpload,
    name: &str,
    options: &CreateOptions,
    callback_url: Option<&str>,
) -> Result<CreateOutput, ApiError> {
    let model = choose_model(st, options.model.as_deref()).await?;
    let callback = match callback_url {
        Some(raw) => Some(tasks::check_callback(&st.policy, &st.producer, raw)?),
        None => None,
    };
    let s = tasks::submit_upload(
        &st.data,
        &st.producer,
        upload,
        name,
        options.fresh,
        &model,
        &TaskOptions::default(),
    )
    .await?;
    created(st, s, callback.as_ref()).await
}

/// The model for a submission that names `asked` (`None` = the server's default).
/// Errors: [`ModelChoiceError`] (an unknown name is `NotInstalled`).
pub async fn choose_model(st: &Shared, asked: Option<&str>) -> Result<ModelRef, ModelChoiceError> {
    let (default, dir) = model_files(st);
    crate::tools::model::choose(asked, &default, &dir).await
}

/// The answer to a submission `s`, with the task's status now, after adding `callback` to
/// its task.
async fn created(
    st: &Shared,
    s: tasks::Submitted,
    callback: Option<&url::Url>,
) -> Result<CreateOutput, ApiError> {
    if let Some(url) = callback {
        tasks::add_callback(&st.data, &st.producer, &s.task_id, url).await?;
    }
    let status = tasks::get(&st.data, &s.task_id)?.status;
    Ok(CreateOutput {
        task_id: s.task_id,
        video_id: s.video_id,
        existing: s.existing,
        status,
        note: s.note,
        batch: None,
    })
}

/// The server's default model file and the models directory.
fn model_files(st: &Shared) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = st.data.models_dir();
    let default = st
        .opts
        .model
        .clone()
        .unwrap_or_else(|| dir.join(crate::domain::ModelName::TinyEn.file_name()));
    (default, dir)
}

/// The models a submission may name.
#[derive(Debug, Serialize)]
pub struct ModelsOutput {
    /// The model used when a submission names none.
    pub default: String,
    /// Installed models' names, the default first.
    pub models: Vec<String>,
}

/// The installed models ([`crate::tools::model::installed`]).
pub fn models(st: &Shared) -> ModelsOutput {
    let (default, dir) = model_files(st);
    ModelsOutput {
        default: crate::tools::model::model_name(&default),
        models: crate::tools::model::installed(&default, &dir)
            .into_iter()
            .map(|(n, _)| n)
            .collect(),
    }
}

/// The manifest of a task.
pub fn get(st: &Shared, id: &str) -> Result<Manifest, ApiError> {
    Ok(tasks::get(&st.data, id)?)
}

/// A page of tasks.
pub fn list(st: &Shared, input: ListInput) -> Result<TaskPage, ApiError> {
    let status = input
        .status
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            serde_json::from_value::<TaskStatus>(serde_json::json!(s)).map_err(|_| {
                ApiError::bad_request(format!(
                    "unknown status {s:?}; use queued, running, completed, \
                     completed_with_warnings, failed or cancelled (several separated by commas)"
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let limit = input.limit.unwrap_or(50);
    if limit == 0 || limit > 500 {
        return Err(ApiError::bad_request("limit must be between 1 and 500"));
    }
    Ok(tasks::list(
        &st.data,
        &status,
        input.offset.unwrap_or(0),
        limit,
    )?)
}

/// Cancels a task.
pub async fn cancel(st: &Shared, id: &str) -> Result<Cancelled, ApiError> {
    Ok(cancel::cancel_task(&st.data, &st.producer, &st.log, id).await?)
}

/// Retries a failed or cancelled task.
pub async fn retry(st: &Shared, id: &str) -> Result<CreateOutput, ApiError> {
    let s = tasks::retry(&st.data, &st.producer, id).await?;
    let m = tasks::get(&st.data, id)?;
    Ok(CreateOutput {
        task_id: s.task_id,
        video_id: s.video_id,
        existing: false,
        status: m.status,
        note: s.note,
        batch: None,
    })
}

/// Deletes a task: every file and the record (see [`delete::delete_task`]).
pub async fn delete(st: &Shared, id: &str, force: bool) -> Result<Deleted, ApiError> {
    Ok(delete::delete_task(&st.data, &st.producer, &st.log, id, force).await?)
}
