//! The HTTP server (`tubescribe serve`): the task API in two wire formats (tRPC-compatible
//! under `/trpc`, REST with `application/problem+json` errors under `/api`), Server-Sent
//! Events, the OpenAPI document and the web page, all served from the binary.
//!
//! | route | what |
//! |---|---|
//! | `GET /` | the web page (`web/index.html`, embedded) |
//! | `POST /trpc/tasks.create`, `tasks.cancel`, `tasks.retry`, `tasks.delete` | tRPC mutations (JSON body) |
//! | `GET /trpc/tasks.get`, `tasks.list` `?input=<json>` | tRPC queries |
//! | `POST /api/tasks` (JSON, or `multipart/form-data` with a `file`), `GET /api/tasks`, `GET /api/tasks/{id}` | REST |
//! | `POST /api/tasks/{id}/cancel`, `POST /api/tasks/{id}/retry` | REST |
//! | `GET /api/batches/{id}` | a playlist or channel expanded into tasks (`options.expand`) |
//! | `DELETE /api/tasks/{id}[?force=true]`, `POST /trpc/tasks.delete` | delete a task |
//! | `GET /api/tasks/{id}/transcript.{txt,srt,vtt,json}`, `summary.{md,json}`, `media` | outputs |
//! | `GET /api/events/stream`, `GET /api/tasks/{id}/events` | SSE (see `events.rs`) |
//! | `GET /api/openapi.json` | OpenAPI 3.1 document |
//! | `GET /metrics` | Prometheus text (`metrics.rs`; queue counts refreshed from Redis) |
//! | `GET /healthz`, `GET /readyz` | liveness; readiness (Redis answers) |
//! | `POST /v1/audio/transcriptions`, `/v1/audio/translations`, `GET /v1/models` | OpenAI-compatible speech-to-text (`openai.rs`) |
//!
//! Every `POST` and `DELETE` needs `Authorization: Bearer <token>` when a token is configured.
//! Request bodies are limited (64 KiB by default); uploads (`upload.rs`) by `--max-upload-mb`.
//! A refused request's unread body is read first, so the client gets the answer (`drain.rs`).

mod api;
mod drain;
mod openai;
mod rest;
mod sse;
mod trpc;
mod upload;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::domain::input::InputPolicy;
use crate::engine::producer::Producer;
use crate::engine::redis::QueueError;
use crate::observe::events::{EventError, EventHub, EventLog};
use crate::store::DataDir;

pub use api::ApiError;

/// The web page, embedded at build time.
const INDEX_HTML: &str = include_str!("web/index.html");
/// The OpenAPI document, embedded at build time.
const OPENAPI_JSON: &str = include_str!("openapi.json");

/// Errors starting the server. Binding errors need the user (address in use); Redis errors
/// are retryable.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The listen address could not be bound.
    #[error("{}", bind_message(addr, error))]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error (told in the message, so not a separate cause).
        error: std::io::Error,
    },
    /// The queue connection failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The event streams could not be read.
    #[error(transparent)]
    Events(#[from] EventError),
    /// The server stopped with an IO error.
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
}

/// The sentence for a bind failure, cause first: a busy port says so and how to pick another.
fn bind_message(addr: &SocketAddr, e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => format!(
            "address {addr} is already in use (another tubescribe serve?); pick another with \
             --listen, e.g. --listen {}:0 for any free port",
            addr.ip()
        ),
        _ => format!("cannot listen on {addr}: {e}"),
    }
}

/// Binds the listen address `addr` (port 0 = any free port), before anything else starts, so
/// that a busy port is the first and only thing a user hears about.
///
/// Errors: [`ServerError::Bind`].
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, ServerError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|error| ServerError::Bind { addr, error })
}

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Bearer token required on every `POST` and `DELETE`; `None` = open.
    pub api_token: Option<String>,
    /// Interval of SSE keep-alive comments.
    pub keep_alive: Duration,
    /// Largest accepted request body in bytes (JSON, tRPC).
    pub body_limit: usize,
    /// Largest accepted uploaded file in bytes (`POST /api/tasks` multipart, `/v1/audio/*`).
    pub max_upload: u64,
    /// Whether local file paths may be submitted over HTTP (off: a remote user must not make
    /// the server read its files).
    pub allow_local_files: bool,
    /// The Whisper model used when a submission names none (`--model`); `None` = the
    /// engine's installed tiny.en. Submissions may name any installed model instead.
    pub model: Option<std::path::PathBuf>,
    /// yt-dlp, which lists a playlist or channel submitted with `options.expand`.
    pub ytdlp: std::path::PathBuf,
}

impl ServeOptions {
    /// Defaults: no token, keep-alive every 15 s, 64 KiB bodies, 2048 MiB uploads, no local
    /// files.
    pub fn new() -> Self {
        Self {
            api_token: None,
            keep_alive: Duration::from_secs(15),
            body_limit: 64 * 1024,
            max_upload: 2048 * 1024 * 1024,
            allow_local_files: false,
            model: None,
            ytdlp: std::path::PathBuf::from("yt-dlp"),
        }
    }
}

/// What every handler shares.
pub(crate) struct AppState {
    pub data: DataDir,
    pub producer: Producer,
    pub log: EventLog,
    pub hub: EventHub,
    pub policy: InputPolicy,
    pub opts: ServeOptions,
    pub shutdown: CancellationToken,
}

pub(crate) type Shared = Arc<AppState>;

impl Default for ServeOptions {
    fn default() -> Self {
        Self::new()
    }
}

/// Runs the server on `listener` ([`bind`]) and Redis at `redis_url` until `shutdown` fires,
/// then finishes open requests (SSE streams end at once). Submissions go through `producer`
/// (on the same Redis, with the configured attempts and webhook settings). `on_bound`
/// receives the bound address.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    listener: tokio::net::TcpListener,
    data: DataDir,
    redis_url: &str,
    producer: Producer,
    mut policy: InputPolicy,
    opts: ServeOptions,
    shutdown: CancellationToken,
    on_bound: impl FnOnce(SocketAddr),
) -> Result<(), ServerError> {
    policy.remote = !opts.allow_local_files;
    let log = EventLog::connect(redis_url).await?;
    let hub = EventHub::start(redis_url, data.clone(), shutdown.clone()).await?;
    let addr = listener.local_addr()?;
    let state = Arc::new(AppState {
        data,
        producer,
        log,
        hub,
        policy,
        opts,
        shutdown: shutdown.clone(),
    });
    let app = router(state.clone());
    on_bound(addr);
    let r = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await;
    state.producer.close().await;
    r.map_err(ServerError::Io)
}

fn router(state: Shared) -> Router {
    let limit = state.opts.body_limit;
    Router::new()
        .route("/", get(index))
        .route("/api/openapi.json", get(openapi))
        // Uploads count their own bytes (`upload.rs`); JSON bodies too (`rest::create`).
        .route(
            "/api/tasks",
            post(rest::create)
                .get(rest::list)
                .layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/v1/audio/transcriptions",
            post(openai::transcriptions).layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/v1/audio/translations",
            post(openai::translations).layer(DefaultBodyLimit::disable()),
        )
        .route("/v1/models", get(openai::models))
        .route("/api/models", get(rest::models))
        .route("/api/batches/{id}", get(rest::batch))
        .route("/api/tasks/{id}", get(rest::get).delete(rest::delete))
        .route("/api/tasks/{id}/cancel", post(rest::cancel))
        .route("/api/tasks/{id}/retry", post(rest::retry))
        .route("/api/tasks/{id}/events", get(sse::task_events))
        .route("/api/tasks/{id}/{file}", get(rest::file))
        .route("/api/events/stream", get(sse::all_events))
        .route("/trpc/{procedure}", get(trpc::query).post(trpc::mutation))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(rest::not_found)
        .method_not_allowed_fallback(rest::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth))
        // Outside `auth`, so its 401 drains too (`drain.rs`).
        .layer(axum::middleware::from_fn(drain::drain_refused))
        .layer(DefaultBodyLimit::max(limit))
        .layer(
            tower_http::set_header::SetResponseHeaderLayer::if_not_present(
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        )
        .with_state(state)
}

async fn index() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        INDEX_HTML,
    )
        .into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON).into_response()
}

/// `GET /metrics`: Prometheus text; queue counts are read from Redis first (a Redis error
/// leaves the previous counts and is logged), the other figures are this process's.
async fn metrics(State(st): State<Shared>) -> Response {
    if let Err(e) = st.producer.publish_queue_counts().await {
        tracing::warn!(error = %e, "metrics: cannot read queue counts");
    }
    (
        [(header::CONTENT_TYPE, crate::observe::metrics::CONTENT_TYPE)],
        crate::observe::metrics::render(),
    )
        .into_response()
}

/// `GET /healthz`: 200 while the process answers.
async fn healthz() -> Response {
    match crate::observe::metrics::healthz() {
        Ok(()) => "ok\n".into_response(),
        Err(e) => (axum::http::StatusCode::SERVICE_UNAVAILABLE, e).into_response(),
    }
}

/// `GET /readyz`: 200 when Redis answers, else 503 with the reason.
async fn readyz(State(st): State<Shared>) -> Response {
    let ready = st.producer.job_counts(crate::domain::Stage::Download).await;
    match ready.map_err(|e| format!("redis: {e}")) {
        Ok(_) => "ready\n".into_response(),
        Err(e) => (axum::http::StatusCode::SERVICE_UNAVAILABLE, e).into_response(),
    }
}

/// Rejects `POST`s and `DELETE`s without the configured bearer token (401 in the route's
/// error format).
async fn auth(State(st): State<Shared>, req: Request, next: Next) -> Response {
    let changes = matches!(*req.method(), Method::POST | Method::DELETE);
    if let (Some(token), true) = (&st.opts.api_token, changes) {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_credentials)
            .unwrap_or("");
        if !constant_time_eq(given.as_bytes(), token.as_bytes()) {
            let e = ApiError::unauthorized("missing or wrong bearer token");
            return if req.uri().path().starts_with("/trpc/") {
                let path = req.uri().path().trim_start_matches("/trpc/").to_string();
                trpc::error_response(&e, &path)
            } else if req.uri().path().starts_with("/v1/") {
                openai::OpenAiError::from(e).into_response()
            } else {
                e.into_response()
            };
        }
    }
    next.run(req).await
}

/// The credentials of an `Authorization: Bearer <token>` value; the scheme name is
/// case-insensitive (RFC 7235 §2.1), surrounding spaces are ignored.
fn bearer_credentials(value: &str) -> Option<&str> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(rest.trim_start())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_documents_are_valid() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI_JSON).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        for p in [
            "/api/tasks",
            "/api/tasks/{id}",
            "/api/tasks/{id}/cancel",
            "/api/tasks/{id}/retry",
            "/api/tasks/{id}/events",
            "/api/events/stream",
            "/v1/audio/transcriptions",
            "/v1/audio/translations",
            "/v1/models",
            "/api/batches/{id}",
            "/api/tasks/{id}/media",
        ] {
            assert!(doc["paths"].get(p).is_some(), "{p} missing");
        }
        assert_eq!(
            doc["paths"]["/api/tasks/{id}"]["delete"]["operationId"],
            "deleteTask"
        );
        assert!(INDEX_HTML.contains("<form"));
        assert!(INDEX_HTML.contains(r#"type="file""#));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        for v in ["Bearer t0k", "bearer t0k", "BEARER  t0k", " Bearer t0k "] {
            assert_eq!(bearer_credentials(v), Some("t0k"), "{v:?}");
        }
        for v in ["Basic dTpw", "Bearert0k", "t0k", ""] {
            assert_eq!(bearer_credentials(v), None, "{v:?}");
        }
    }
}
