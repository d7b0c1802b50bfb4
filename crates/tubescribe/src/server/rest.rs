//! The REST routes under `/api`: the same operations as the tRPC procedures, JSON answers,
//! errors as `application/problem+json`, and the task's output files.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::api::{self, ApiError, CreateInput, DeleteInput, ListInput};
use super::Shared;
use crate::domain::manifest::TaskStatus;
use crate::store::names;

/// `POST /api/tasks` → 201 with `{taskId, videoId, existing, status}` and a `Location`
/// header for a new task, 200 when an existing task was joined.
pub async fn create(
    State(st): State<Shared>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let input: CreateInput = api::parse_json(body)?;
    let out = api::create(&st, input).await?;
    let status = if out.existing {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let location = format!("/api/tasks/{}", out.task_id);
    Ok((status, [(header::LOCATION, location)], Json(out)).into_response())
}

/// `GET /api/tasks?status=&limit=&offset=` → `{tasks, total, offset, limit}`.
pub async fn list(
    State(st): State<Shared>,
    q: Result<Query<ListInput>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) =
        q.map_err(|e| ApiError::bad_request(format!("invalid query: {}", e.body_text())))?;
    Ok(Json(api::list(&st, q)?).into_response())
}

/// `GET /api/models` → `{default, models}`: the names `options.model` accepts.
pub async fn models(State(st): State<Shared>) -> Response {
    Json(api::models(&st)).into_response()
}

/// `GET /api/tasks/{id}` → the manifest.
pub async fn get(State(st): State<Shared>, Path(id): Path<String>) -> Result<Response, ApiError> {
    Ok(Json(api::get(&st, &id)?).into_response())
}

/// `POST /api/tasks/{id}/cancel` → `{taskId, status: "cancelled", removedFromQueue}`.
pub async fn cancel(
    State(st): State<Shared>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(api::cancel(&st, &id).await?).into_response())
}

/// `POST /api/tasks/{id}/retry` → 202 with `{taskId, videoId, existing: false, status}`.
pub async fn retry(State(st): State<Shared>, Path(id): Path<String>) -> Result<Response, ApiError> {
    Ok((StatusCode::ACCEPTED, Json(api::retry(&st, &id).await?)).into_response())
}

/// `DELETE /api/tasks/{id}[?force=true]` → `{taskId, deleted, cancelled, files, bytes}`; 409
/// while a stage runs unless `force` (which cancels the task first).
pub async fn delete(
    State(st): State<Shared>,
    Path(id): Path<String>,
    q: Result<Query<DeleteInput>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) =
        q.map_err(|e| ApiError::bad_request(format!("invalid query: {}", e.body_text())))?;
    Ok(Json(api::delete(&st, &id, q.force).await?).into_response())
}

/// The name under which `GET /api/tasks/{id}/{file}` serves the downloaded media.
pub const MEDIA: &str = "media";

/// Output files served by `GET /api/tasks/{id}/{file}` and their content types.
pub const FILES: [(&str, &str); 6] = [
    (names::TRANSCRIPT_TXT, "text/plain; charset=utf-8"),
    (names::TRANSCRIPT_SRT, "application/x-subrip; charset=utf-8"),
    (names::TRANSCRIPT_VTT, "text/vtt; charset=utf-8"),
    (names::TRANSCRIPT_JSON, "application/json"),
    (names::SUMMARY_MD, "text/markdown; charset=utf-8"),
    (names::SUMMARY_JSON, "application/json"),
];

/// `GET /api/tasks/{id}/transcript.{txt,srt,vtt,json}` and `summary.{md,json}`; 404 while
/// the file does not exist yet (the detail says the task's status). `GET
/// /api/tasks/{id}/media`: the downloaded media while it exists ([`media`]).
pub async fn file(
    State(st): State<Shared>,
    Path((id, file)): Path<(String, String)>,
    req: axum::extract::Request,
) -> Result<Response, ApiError> {
    if file == MEDIA {
        return media(&st, &id, req).await;
    }
    let Some((name, ctype)) = FILES.iter().find(|(n, _)| *n == file) else {
        return Err(ApiError::not_found(format!(
            "no such output {file:?}; outputs are {}, {MEDIA}",
            FILES.map(|(n, _)| n).join(", ")
        )));
    };
    let m = api::get(&st, &id)?;
    let path = st.data.task(&id).file(name);
    match tokio::fs::read(&path).await {
        Ok(bytes) => Ok((
            [
                (header::CONTENT_TYPE, ctype.to_string()),
                (
                    header::CONTENT_DISPOSITION,
                    format!("inline; filename=\"{id}.{name}\""),
                ),
            ],
            bytes,
        )
            .into_response()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let why = match m.status {
                TaskStatus::Completed | TaskStatus::CompletedWithWarnings => {
                    "it was not produced".to_string()
                }
                s => format!("the task is {}", s.as_str()),
            };
            Err(ApiError::not_found(format!(
                "{name} of task {id} is not available: {why}"
            )))
        }
        Err(e) => Err(ApiError::unavailable(format!("cannot read {name}: {e}"))),
    }
}

/// `GET /api/tasks/{id}/media`: the downloaded (or imported) media, streamed with its content
/// type guessed from its name, byte ranges honoured (an audio player can seek); 404 before the
/// download completed or after the retention policy deleted it (the detail says which).
async fn media(st: &Shared, id: &str, req: axum::extract::Request) -> Result<Response, ApiError> {
    let m = api::get(st, id)?;
    let Some((rec, path)) = st.data.task(id).media(&m) else {
        let why = if m.media_pruned() {
            "it was deleted by the retention policy".to_string()
        } else {
            format!("the task is {}", m.status.as_str())
        };
        return Err(ApiError::not_found(format!(
            "the media of task {id} is not available: {why}"
        )));
    };
    let served = tower_http::services::ServeFile::new(path)
        .try_call(req)
        .await
        .map_err(|e| ApiError::unavailable(format!("cannot read {}: {e}", rec.name)))?;
    let ext = rec.name.rsplit_once('.').map_or("", |(_, e)| e);
    let mut resp = served.map(axum::body::Body::new).into_response();
    if let Ok(v) = format!("inline; filename=\"{id}.{ext}\"").parse() {
        resp.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}

/// Any other path: 404 problem.
pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no route for {}", uri.path()))
}

/// 405 (problem+json) for a known path with a method it does not have.
pub async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::method(format!("{method} is not allowed on {}", uri.path()))
}
