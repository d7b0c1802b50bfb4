//! The REST routes under `/api`: the same operations as the tRPC procedures, JSON answers,
//! errors as `application/problem+json`, and the task's output files.

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;

use super::api::{self, ApiError, CreateInput, CreateOptions, DeleteInput, ListInput};
use super::upload::{self, FormError};
use super::Shared;
use crate::domain::manifest::TaskStatus;
use crate::store::{names, Media};

/// `POST /api/tasks` → 201 with `{taskId, videoId, existing, status}` and a `Location`
/// header for a new task, 200 when an existing task was joined.
///
/// The body is JSON (`{link, options}`, at most `--max-body-kb`) or `multipart/form-data`
/// with the media in the field `file` (at most `--max-upload-mb`, streamed into the store)
/// and optional fields `options` (the JSON object of the JSON form) and `callbackUrl`; other
/// fields are ignored. One task per content and model (`upload-<hash>`).
pub async fn create(State(st): State<Shared>, req: Request) -> Result<Response, ApiError> {
    let out = if upload::is_multipart(req.headers()) {
        let form = upload::read_form(&st, req, "file")
            .await
            .map_err(form_error)?;
        let options: CreateOptions = match form.field("options") {
            Some(o) if !o.trim().is_empty() => {
                serde_json::from_str(o).map_err(|e| api::invalid_input(&e))?
            }
            _ => CreateOptions::default(),
        };
        let Some((stored, name)) = &form.file else {
            return Err(ApiError::bad_request(
                "the form has no file: send the media in the field \"file\"",
            ));
        };
        let callback = form.field("callbackUrl").filter(|c| !c.trim().is_empty());
        api::create_upload(&st, stored, name, &options, callback).await?
    } else {
        let body = read_limited(req.into_body(), st.opts.body_limit).await?;
        let input: CreateInput = api::parse_json(Ok(body))?;
        api::create(&st, input).await?
    };
    let status = if out.existing {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let location = format!("/api/tasks/{}", out.task_id);
    Ok((status, [(header::LOCATION, location)], Json(out)).into_response())
}

/// An upload form's error as a problem: 413, 400 or 503.
fn form_error(e: FormError) -> ApiError {
    match e {
        FormError::TooLarge { .. } => ApiError::too_large(e.to_string()),
        FormError::Bad { .. } => ApiError::bad_request(e.to_string()),
        FormError::Store(_) => ApiError::unavailable(e.to_string()),
    }
}

/// The whole of `body`, refused with 413 once it passes `limit` bytes.
async fn read_limited(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let mut out = Vec::new();
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::bad_request(format!("cannot read the body: {e}")))?;
        if out.len() + chunk.len() > limit {
            return Err(ApiError::too_large("request body is too large"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out.into())
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

/// `GET /api/batches/{id}` → the batch record of an expanded playlist or channel, each item
/// with its task's current status.
pub async fn batch(State(st): State<Shared>, Path(id): Path<String>) -> Result<Response, ApiError> {
    Ok(Json(api::batch(&st, &id)?).into_response())
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

/// `GET /api/tasks/{id}/transcript.{txt,srt,vtt,json}` and `summary.{md,json}`, streamed from
/// the artifact store; 404 while the file does not exist yet (the detail says the task's
/// status).
/// `GET /api/tasks/{id}/media`: the downloaded media while it exists ([`media`]).
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
    match st.data.task(&id).output_stream(name).await {
        Ok(Some((size, chunks))) => Ok((
            [
                (header::CONTENT_TYPE, ctype.to_string()),
                (
                    header::CONTENT_DISPOSITION,
                    format!("inline; filename=\"{id}.{name}\""),
                ),
                (header::CONTENT_LENGTH, size.to_string()),
            ],
            axum::body::Body::from_stream(chunks),
        )
            .into_response()),
        Ok(None) => {
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
/// type guessed from its name; 404 before the download completed or after the retention
/// policy deleted it (the detail says which). From the local directory byte ranges are
/// honoured (an audio player can seek); from shared storage the object is streamed whole
/// (no `Range`).
async fn media(st: &Shared, id: &str, req: axum::extract::Request) -> Result<Response, ApiError> {
    let m = api::get(st, id)?;
    let found = st.data.task(id).media(&m).await;
    let found = found.map_err(|e| ApiError::unavailable(format!("cannot read the media: {e}")))?;
    let Some((rec, media)) = found else {
        let why = if m.media_pruned() {
            "it was deleted by the retention policy".to_string()
        } else {
            format!("the task is {}", m.status.as_str())
        };
        return Err(ApiError::not_found(format!(
            "the media of task {id} is not available: {why}"
        )));
    };
    let mut resp = match media {
        Media::File(path) => {
            let served = tower_http::services::ServeFile::new(path)
                .try_call(req)
                .await
                .map_err(|e| ApiError::unavailable(format!("cannot read {}: {e}", rec.name)))?;
            served.map(axum::body::Body::new).into_response()
        }
        Media::Object((size, chunks)) => {
            let ctype = mime_guess::from_path(&rec.name).first_or_octet_stream();
            (
                [
                    (header::CONTENT_TYPE, ctype.to_string()),
                    (header::CONTENT_LENGTH, size.to_string()),
                ],
                axum::body::Body::from_stream(chunks),
            )
                .into_response()
        }
    };
    let ext = rec.name.rsplit_once('.').map_or("", |(_, e)| e);
    if let Ok(v) = format!("inline; filename=\"{id}.{ext}\"").parse() {
        resp.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}

/// Any other path: 404 problem (in OpenAI's shape under `/v1/`).
pub async fn not_found(uri: axum::http::Uri) -> Response {
    let e = ApiError::not_found(format!("no route for {}", uri.path()));
    if uri.path().starts_with("/v1/") {
        super::openai::OpenAiError::from(e).into_response()
    } else {
        e.into_response()
    }
}

/// 405 (problem+json) for a known path with a method it does not have.
pub async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::method(format!("{method} is not allowed on {}", uri.path()))
}
