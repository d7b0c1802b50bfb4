//! The HTTP client behind `tubescribe submit|status|get|cancel|retry|delete`: talks to a running
//! `tubescribe serve` over its REST API (`/api/tasks…`, see `server/`).

use serde_json::Value;

use crate::domain::options::TaskOptions;

/// What a submission asks besides its URL (the CLI's `submit` flags).
#[derive(Debug, Clone, Default)]
pub struct SubmitRequest {
    /// Run again even when a task for the same input exists.
    pub fresh: bool,
    /// Where the task's end is POSTed as a signed webhook (`callbackUrl`).
    pub callback: Option<String>,
    /// Captions instead of Whisper (`options.captions`, `autoCaptions`, `captionsLang`).
    pub options: TaskOptions,
    /// Expand a playlist or channel into at most this many videos (`options.expand`,
    /// `maxVideos`); `None` = a playlist is refused.
    pub expand: Option<usize>,
}

impl SubmitRequest {
    /// The JSON body of `POST /api/tasks` for `url`.
    fn body(&self, url: &str) -> Value {
        let o = &self.options;
        let mut options = serde_json::json!({
            "captions": o.captions.as_str(),
            "autoCaptions": o.auto_captions,
        });
        if let Some(lang) = &o.captions_lang {
            options["captionsLang"] = serde_json::json!(lang);
        }
        if let Some(max) = self.expand {
            options["expand"] = serde_json::json!(true);
            options["maxVideos"] = serde_json::json!(max);
        }
        let mut body = serde_json::json!({"link": url, "fresh": self.fresh, "options": options});
        if let Some(c) = &self.callback {
            body["callbackUrl"] = serde_json::json!(c);
        }
        body
    }
}

/// Errors of an API call. Transport errors are retryable; API errors carry the server's
/// problem details (4xx are not retryable, 5xx are).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server could not be reached or the connection broke (retryable).
    #[error(
        "cannot reach the tubescribe server at {url}: {}",
        transport_cause(source)
    )]
    Transport {
        /// The server URL.
        url: String,
        /// The HTTP client's error.
        source: reqwest::Error,
    },
    /// The server answered with an error (problem+json `detail`).
    #[error("{message} (HTTP {status})")]
    Api {
        /// HTTP status code.
        status: u16,
        /// tRPC-style code name, e.g. `NOT_FOUND`.
        code: String,
        /// The server's explanation.
        message: String,
    },
    /// The answer was not the JSON we expect.
    #[error("unexpected answer from the server: {0}")]
    Decode(String),
    /// A task id that no task can have (see [`crate::domain::keys::valid_task_id`]); refused before
    /// any request, so it never becomes part of a URL path.
    #[error("invalid task id {0:?}: task ids are 1–100 characters of A–Z, a–z, 0–9, '-' and '_'")]
    InvalidId(String),
}

/// The innermost cause of a transport error (reqwest's own text only says "error sending
/// request"), with a hint when nothing listens there.
fn transport_cause(e: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    let text = cause.to_string();
    if text.to_lowercase().contains("connection refused") {
        format!("{text} — is `tubescribe serve` running there?")
    } else if e.is_timeout() {
        "no answer within 30 s".to_string()
    } else {
        text
    }
}

impl ClientError {
    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Transport { .. } => true,
            ClientError::Api { status, .. } => *status >= 500,
            ClientError::Decode(_) | ClientError::InvalidId(_) => false,
        }
    }
}

/// A client for one server.
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    /// A client for the server at `base` (e.g. `http://127.0.0.1:8080`), sending `token` as a
    /// bearer token on mutating calls when given.
    pub fn new(base: &str, token: Option<String>) -> Self {
        Self {
            base: base.trim_end_matches('/').to_string(),
            token,
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(30))
                .build()
                .expect("HTTP client builds"),
        }
    }

    /// `{base}/api/tasks/{id}{rest}`, for a valid id only.
    fn task_url(&self, id: &str, rest: &str) -> Result<String, ClientError> {
        if !crate::domain::keys::valid_task_id(id) {
            return Err(ClientError::InvalidId(id.to_string()));
        }
        Ok(format!("{}/api/tasks/{id}{rest}", self.base))
    }

    /// Sends `req` and returns the answer's body; an error status becomes
    /// [`ClientError::Api`] with the problem's `detail` and `code`.
    async fn send_raw(&self, req: reqwest::RequestBuilder) -> Result<Vec<u8>, ClientError> {
        let req = match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let transport = |source| ClientError::Transport {
            url: self.base.clone(),
            source,
        };
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.map_err(transport)?.to_vec();
        if status >= 400 {
            let text = String::from_utf8_lossy(&body);
            let v: Value = serde_json::from_slice(&body).unwrap_or_default();
            return Err(ClientError::Api {
                status,
                code: v["code"].as_str().unwrap_or("").to_string(),
                message: v["detail"].as_str().unwrap_or(&text).to_string(),
            });
        }
        Ok(body)
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<Value, ClientError> {
        let body = self.send_raw(req).await?;
        serde_json::from_slice(&body).map_err(|e| {
            ClientError::Decode(format!(
                "{e}: {}",
                String::from_utf8_lossy(&body)
                    .chars()
                    .take(200)
                    .collect::<String>()
            ))
        })
    }

    /// Submits `url` with what `req` asks (`options` as the API takes them, `callbackUrl`);
    /// answers `{taskId, videoId, existing, status}`, plus `batch` (the record and its tasks'
    /// `statuses`) when `req.expand` turned a playlist or channel into its videos' tasks.
    pub async fn submit(&self, url: &str, req: &SubmitRequest) -> Result<Value, ClientError> {
        self.send(
            self.http
                .post(format!("{}/api/tasks", self.base))
                .json(&req.body(url)),
        )
        .await
    }

    /// The manifest of `id`.
    pub async fn get(&self, id: &str) -> Result<Value, ClientError> {
        self.send(self.http.get(self.task_url(id, "")?)).await
    }

    /// The output file `name` of task `id` (`transcript.srt`, `summary.md`, …; see the
    /// server's `GET /api/tasks/{id}/{file}`), byte for byte. A task whose file does not exist
    /// yet answers [`ClientError::Api`] 404 saying the task's status.
    pub async fn file(&self, id: &str, name: &str) -> Result<Vec<u8>, ClientError> {
        self.send_raw(self.http.get(self.task_url(id, &format!("/{name}"))?))
            .await
    }

    /// The newest tasks: `{tasks: [manifest…], total, offset, limit}`.
    pub async fn list(&self, limit: usize) -> Result<Value, ClientError> {
        self.send(
            self.http
                .get(format!("{}/api/tasks", self.base))
                .query(&[("limit", limit)]),
        )
        .await
    }

    /// Cancels `id`: `{taskId, status, removedFromQueue}`.
    pub async fn cancel(&self, id: &str) -> Result<Value, ClientError> {
        self.send(self.http.post(self.task_url(id, "/cancel")?))
            .await
    }

    /// Deletes `id` (`force`: a running task too, cancelled first): `{taskId, deleted,
    /// cancelled, files, bytes}`.
    pub async fn delete(&self, id: &str, force: bool) -> Result<Value, ClientError> {
        let url = self.task_url(id, if force { "?force=true" } else { "" })?;
        self.send(self.http.delete(url)).await
    }

    /// Retries `id`: `{taskId, videoId, existing, status}`.
    pub async fn retry(&self, id: &str) -> Result<Value, ClientError> {
        self.send(self.http.post(self.task_url(id, "/retry")?))
            .await
    }
}
