//! The OpenAI-compatible speech-to-text API, so existing clients (the official `openai`
//! SDKs, Open WebUI, Bazarr…) can use this server:
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/audio/transcriptions` | multipart `file`, `model`, `language`, `prompt`, `response_format`, `timestamp_granularities[]`, `temperature` |
//! | `POST /v1/audio/translations` | the same fields but `timestamp_granularities[]`; into English, multilingual models only (below) |
//! | `GET /v1/models` | the installed models, plus `whisper-1` (= the server's default model) |
//!
//! A request becomes an ordinary task ([`tasks::submit_upload`]: same queues, limits and
//! dedup by content hash + model) and is answered when the task's transcription is done (the
//! summary is not awaited), from the task's transcript files:
//!
//! * `json` → `{text}`; `text` → the text; `srt`, `vtt` → the task's subtitle files;
//! * `verbose_json` → `{task, language (whisper's full name of the speech's language, e.g.
//!   "german"; a translation's is `"english"`, as OpenAI documents it), duration (s),
//!   text, segments: [{id, seek, start, end, text, tokens, temperature, avg_logprob,
//!   compression_ratio, no_speech_prob}], words: [{word, start, end}] (only when
//!   `timestamp_granularities[]` has `word`), usage: {type: "duration", seconds}}`. Times are
//!   seconds; `avg_logprob` is the mean natural log of the segment's word probabilities;
//!   `seek` is the segment start in 10 ms frames; the fields we do not measure are neutral:
//!   `tokens` `[]`, `temperature` 0, `compression_ratio` 1, `no_speech_prob` 0 (silence is cut
//!   before whisper runs).
//!
//! `language`, `prompt` and `temperature` are accepted and checked for form, not applied (a
//! task is identified by its content, model and options only). A translation is a task of
//! its own (`options.translate`, task id suffix `-tr`) run with whisper's translate task, so
//! the text is English whatever was spoken; the task's `transcript.json` keeps the detected
//! source language. English-only (`.en`) models have no translate task: asking one for a
//! translation is a 400 (`param` `model`, `code` `unsupported_value`) before anything is
//! submitted.
//!
//! **Long waits.** When the answer is not ready within the keep-alive interval (SSE's, 15 s by
//! default), JSON answers (`json`, `verbose_json`) commit to 200 and send a space every
//! interval before the body (JSON allows leading white space), so no idle timeout cuts the
//! connection; an error found after that comes as the OpenAI error body with status 200.
//! `text`, `srt` and `vtt` cannot carry padding and are answered when ready.
//!
//! Errors use OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, with proper
//! status codes: 400 (`invalid_request_error`), 401 (`invalid_api_key`), 404
//! (`model_not_found`), 413 (`file_too_large`), 500/503 (`server_error`). Every answer names
//! its task in `x-tubescribe-task-id`.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::api::{self, ApiError};
use super::upload::{self, FormError, UploadForm};
use super::Shared;
use crate::app::tasks::{self, StageWait};
use crate::domain::manifest::{Manifest, TaskStatus};
use crate::domain::options::TaskOptions;
use crate::domain::transcript::Transcript;
use crate::domain::Stage;
use crate::store::names;
use crate::tools::model::ModelChoiceError;

/// The model name OpenAI clients send by default; it means the server's default model.
pub const WHISPER_1: &str = "whisper-1";

/// How often the manifest is read while a request waits for its transcription.
const POLL: Duration = Duration::from_millis(200);

/// The header naming the task an answer came from.
const TASK_HEADER: &str = "x-tubescribe-task-id";

/// An error in OpenAI's shape.
#[derive(Debug, Clone)]
pub struct OpenAiError {
    /// HTTP status.
    pub status: StatusCode,
    /// One sentence, cause first.
    pub message: String,
    /// `invalid_request_error` or `server_error`.
    pub kind: &'static str,
    /// The request field at fault, if one is.
    pub param: Option<&'static str>,
    /// A machine-readable code (`model_not_found`, `file_too_large`…), if any.
    pub code: Option<&'static str>,
}

impl OpenAiError {
    /// 400 `invalid_request_error` about `param`.
    pub fn invalid(param: Option<&'static str>, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param,
            code: None,
        }
    }

    fn with(mut self, status: StatusCode, code: &'static str) -> Self {
        self.status = status;
        self.code = Some(code);
        self
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}

/// Our API errors in OpenAI's shape (same status; 5xx are `server_error`).
impl From<ApiError> for OpenAiError {
    fn from(e: ApiError) -> Self {
        let kind = if e.status.is_server_error() {
            "server_error"
        } else {
            "invalid_request_error"
        };
        let code = match e.status {
            StatusCode::UNAUTHORIZED => Some("invalid_api_key"),
            StatusCode::NOT_FOUND => Some("not_found"),
            StatusCode::PAYLOAD_TOO_LARGE => Some("file_too_large"),
            _ => None,
        };
        Self {
            status: e.status,
            message: e.message,
            kind,
            param: None,
            code,
        }
    }
}

impl From<FormError> for OpenAiError {
    fn from(e: FormError) -> Self {
        match &e {
            FormError::TooLarge { .. } => OpenAiError::invalid(Some("file"), e.to_string())
                .with(StatusCode::PAYLOAD_TOO_LARGE, "file_too_large"),
            FormError::Bad { field, .. } => OpenAiError::invalid(*field, e.to_string()),
            FormError::Store(_) => ApiError::unavailable(e.to_string()).into(),
        }
    }
}

/// The `response_format` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Text,
    Srt,
    Vtt,
    VerboseJson,
}

impl Format {
    fn parse(s: Option<&str>) -> Result<Self, OpenAiError> {
        Ok(match s.map(str::trim).unwrap_or("json") {
            "" | "json" => Format::Json,
            "text" => Format::Text,
            "srt" => Format::Srt,
            "vtt" => Format::Vtt,
            "verbose_json" => Format::VerboseJson,
            other => {
                return Err(OpenAiError::invalid(
                    Some("response_format"),
                    format!(
                    "unknown response_format {other:?}; use json, text, srt, verbose_json or vtt"
                ),
                ))
            }
        })
    }

    fn is_json(self) -> bool {
        matches!(self, Format::Json | Format::VerboseJson)
    }
}

/// What the client asked for, checked.
#[derive(Debug)]
struct Ask {
    /// `transcribe` or `translate`.
    task: &'static str,
    model: Option<String>,
    format: Format,
    words: bool,
}

/// Checks the fields of `form` for `task`.
fn ask(form: &UploadForm, task: &'static str) -> Result<Ask, OpenAiError> {
    let model = form.field("model").map(str::trim).unwrap_or("");
    if model.is_empty() {
        return Err(OpenAiError::invalid(
            Some("model"),
            "the form has no model: send model=whisper-1 (the server's default) or an installed model's name (GET /v1/models)",
        ));
    }
    let format = Format::parse(form.field("response_format"))?;
    let mut words = false;
    for g in form
        .all("timestamp_granularities[]")
        .chain(form.all("timestamp_granularities"))
    {
        match g.trim() {
            "word" => words = true,
            "segment" => {}
            other => {
                return Err(OpenAiError::invalid(
                    Some("timestamp_granularities"),
                    format!("unknown timestamp granularity {other:?}; use word or segment"),
                ))
            }
        }
    }
    if words && format != Format::VerboseJson {
        return Err(OpenAiError::invalid(
            Some("timestamp_granularities"),
            "word timestamps need response_format=verbose_json",
        ));
    }
    if let Some(t) = form
        .field("temperature")
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        if !t.parse::<f32>().is_ok_and(|t| (0.0..=1.0).contains(&t)) {
            return Err(OpenAiError::invalid(
                Some("temperature"),
                format!("temperature {t:?} is not a number between 0 and 1"),
            ));
        }
    }
    Ok(Ask {
        task,
        model: (model != WHISPER_1).then(|| model.to_string()),
        format,
        words,
    })
}

/// `POST /v1/audio/transcriptions`.
pub async fn transcriptions(State(st): State<Shared>, req: Request) -> Response {
    answer(st, req, "transcribe").await
}

/// `POST /v1/audio/translations`.
pub async fn translations(State(st): State<Shared>, req: Request) -> Response {
    answer(st, req, "translate").await
}

/// Reads the form, submits the task and answers when its transcription is done.
async fn answer(st: Shared, req: Request, task: &'static str) -> Response {
    let (task_id, ask) = match start(&st, req, task).await {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let json = ask.format.is_json();
    let header = HeaderValue::from_str(&task_id).ok();
    let st2 = st.clone();
    let mut done = Box::pin(async move {
        tokio::select! {
            r = result(&st2, &task_id, &ask) => r,
            () = st2.shutdown.cancelled() => Err(ApiError::unavailable(format!(
                "the server is shutting down; task {task_id} goes on and its transcript will be \
                 at /api/tasks/{task_id}/transcript.json"
            )).into()),
        }
    });
    let mut resp = match tokio::time::timeout(st.opts.keep_alive, &mut done).await {
        Ok(r) => reply(r),
        Err(_) if !json => reply(done.await),
        Err(_) => padded(st.opts.keep_alive, done),
    };
    if let Some(h) = header {
        resp.headers_mut().insert(TASK_HEADER, h);
    }
    resp
}

/// An answer: its content type and body.
type Answer = (&'static str, String);

/// The response for a finished wait.
fn reply(r: Result<Answer, OpenAiError>) -> Response {
    match r {
        Ok((ctype, body)) => ([(header::CONTENT_TYPE, ctype)], body).into_response(),
        Err(e) => e.into_response(),
    }
}

/// 200 at once, a space every `every` until `done` ends, then its JSON body (an error too).
fn padded(
    every: Duration,
    mut done: std::pin::Pin<
        Box<impl std::future::Future<Output = Result<Answer, OpenAiError>> + Send + 'static>,
    >,
) -> Response {
    let (mut tx, rx) = futures::channel::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
    tokio::spawn(async move {
        use futures::SinkExt;
        loop {
            tokio::select! {
                r = &mut done => {
                    let body = match r {
                        Ok((_, body)) => body,
                        Err(e) => e.body().to_string(),
                    };
                    let _ = tx.send(Ok(Bytes::from(body))).await;
                    return;
                }
                () = tokio::time::sleep(every) => {
                    // The client went away: stop waiting (the task goes on).
                    if tx.send(Ok(Bytes::from_static(b" "))).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(rx),
    )
        .into_response()
}

/// Reads and checks the form, chooses the model and submits the task; returns its id.
async fn start(
    st: &Shared,
    req: Request,
    task: &'static str,
) -> Result<(String, Ask), OpenAiError> {
    let form = upload::read_form(st, req, "file").await?;
    let ask = ask(&form, task)?;
    let Some((stored, name)) = &form.file else {
        return Err(OpenAiError::invalid(
            Some("file"),
            "the form has no file: send the audio in the field \"file\"",
        ));
    };
    let model = api::choose_model(st, ask.model.as_deref())
        .await
        .map_err(|e| match e {
            ModelChoiceError::NotInstalled { .. } => {
                OpenAiError::invalid(Some("model"), e.to_string())
                    .with(StatusCode::NOT_FOUND, "model_not_found")
            }
            e => OpenAiError::from(ApiError::from(e)),
        })?;
    if task == "translate" && model.english_only() {
        return Err(OpenAiError::invalid(
            Some("model"),
            format!(
                "the model {} is English-only, so it cannot translate; send model=base \
                 (or another multilingual model: GET /v1/models) to translate into English",
                model.name
            ),
        )
        .with(StatusCode::BAD_REQUEST, "unsupported_value"));
    }
    let opts = TaskOptions {
        translate: task == "translate",
        ..TaskOptions::default()
    };
    let s = tasks::submit_upload(&st.data, &st.producer, stored, name, false, &model, &opts)
        .await
        .map_err(|e| OpenAiError::from(ApiError::from(e)))?;
    tracing::info!(task = %s.task_id, existing = s.existing, endpoint = task, "OpenAI-compatible request");
    Ok((s.task_id, ask))
}

/// Waits for the task's transcription and renders it as asked.
async fn result(st: &Shared, task_id: &str, ask: &Ask) -> Result<Answer, OpenAiError> {
    let wait = tasks::wait_for_stage(&st.data, task_id, Stage::Transcribe, POLL)
        .await
        .map_err(|e| OpenAiError::from(ApiError::from(e)))?;
    if let StageWait::Ended(m) = wait {
        return Err(ended(&m));
    }
    let task = st.data.task(task_id);
    let read = |name: &'static str| {
        std::fs::read_to_string(task.file(name)).map_err(|e| {
            OpenAiError::from(ApiError::unavailable(format!(
                "cannot read {name} of task {task_id}: {e}"
            )))
        })
    };
    let transcript: Transcript =
        serde_json::from_str(&read(names::TRANSCRIPT_JSON)?).map_err(|e| {
            OpenAiError::from(ApiError::unavailable(format!(
                "{} of task {task_id} is not a transcript: {e}",
                names::TRANSCRIPT_JSON
            )))
        })?;
    Ok(match ask.format {
        Format::Json => (
            "application/json",
            json!({"text": text_of(&transcript)}).to_string(),
        ),
        Format::Text => (
            "text/plain; charset=utf-8",
            format!("{}\n", text_of(&transcript)),
        ),
        Format::Srt => ("text/plain; charset=utf-8", read(names::TRANSCRIPT_SRT)?),
        Format::Vtt => ("text/vtt; charset=utf-8", read(names::TRANSCRIPT_VTT)?),
        Format::VerboseJson => (
            "application/json",
            verbose(&transcript, ask.task, ask.words).to_string(),
        ),
    })
}

/// The error for a task that failed or was cancelled before its transcription was done:
/// a permanent failure is the request's fault (400: not media, no audio…), a retryable one
/// the server's (503), a cancel 409.
fn ended(m: &Manifest) -> OpenAiError {
    let id = &m.task_id;
    match (&m.status, &m.error) {
        (TaskStatus::Cancelled, _) => OpenAiError::from(ApiError::conflict(format!(
            "task {id} was cancelled before its transcription was done"
        ))),
        (_, Some(e)) if !e.retryable => OpenAiError::invalid(
            Some("file"),
            format!("{} (task {id}, {} stage)", e.message, e.stage),
        ),
        (_, e) => OpenAiError::from(ApiError::unavailable(format!(
            "{} (task {id}); retrying may help",
            e.as_ref().map_or("the task failed", |e| e.message.as_str())
        ))),
    }
}

/// The whole text: the segments' texts, trimmed, joined with spaces.
fn text_of(t: &Transcript) -> String {
    t.segments
        .iter()
        .map(|s| s.text.trim())
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Seconds of `ms`, rounded to the millisecond.
fn secs(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

/// The `verbose_json` body (see the module's documentation).
fn verbose(t: &Transcript, task: &str, words: bool) -> Value {
    let segments: Vec<Value> = t
        .segments
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let lp: Vec<f64> = s
                .words
                .iter()
                .map(|w| f64::from(w.p.max(1e-6)).ln())
                .collect();
            let avg_logprob = if lp.is_empty() {
                0.0
            } else {
                lp.iter().sum::<f64>() / lp.len() as f64
            };
            json!({
                "id": i,
                "seek": s.start_ms / 10,
                "start": secs(s.start_ms),
                "end": secs(s.end_ms),
                "text": s.text,
                "tokens": [],
                "temperature": 0.0,
                "avg_logprob": avg_logprob,
                "compression_ratio": 1.0,
                "no_speech_prob": 0.0,
            })
        })
        .collect();
    // OpenAI documents a translation's language as the output's, "english".
    let language = if task == "translate" {
        "en"
    } else {
        &t.language
    };
    let mut v = json!({
        "task": task,
        "language": crate::tools::asr::language_name(language),
        "duration": secs(t.duration_ms),
        "text": text_of(t),
        "segments": segments,
        "usage": {"type": "duration", "seconds": secs(t.duration_ms)},
    });
    if words {
        let w: Vec<Value> = t
            .segments
            .iter()
            .flat_map(|s| &s.words)
            .filter(|w| !w.text.trim().is_empty())
            .map(|w| json!({"word": w.text.trim(), "start": secs(w.start_ms), "end": secs(w.end_ms)}))
            .collect();
        v["words"] = Value::Array(w);
    }
    v
}

/// `GET /v1/models` → `{object: "list", data: [{id, object: "model", created, owned_by}]}`:
/// the installed models (the default first) and `whisper-1`, which means the default.
pub async fn models(State(st): State<Shared>) -> Response {
    let m = api::models(&st);
    let data: Vec<Value> = m
        .models
        .iter()
        .map(String::as_str)
        .chain([WHISPER_1])
        .map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "tubescribe"}))
        .collect();
    Json(json!({"object": "list", "data": data})).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::transcript::{Segment, Word};

    fn form(fields: &[(&str, &str)]) -> UploadForm {
        UploadForm {
            file: None,
            fields: fields
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        }
    }

    #[test]
    fn fields_are_checked_like_openai() {
        let a = ask(&form(&[("model", "whisper-1")]), "transcribe").unwrap();
        assert_eq!((a.model, a.format, a.words), (None, Format::Json, false));
        let a = ask(
            &form(&[
                ("model", "tiny.en"),
                ("response_format", "verbose_json"),
                ("timestamp_granularities[]", "word"),
                ("timestamp_granularities[]", "segment"),
                ("temperature", "0.2"),
            ]),
            "transcribe",
        )
        .unwrap();
        assert_eq!(
            (a.model.as_deref(), a.format, a.words),
            (Some("tiny.en"), Format::VerboseJson, true)
        );
        for (fields, param) in [
            (vec![], "model"),
            (
                vec![("model", "x"), ("response_format", "xml")],
                "response_format",
            ),
            (
                vec![("model", "x"), ("timestamp_granularities[]", "word")],
                "timestamp_granularities",
            ),
            (vec![("model", "x"), ("temperature", "hot")], "temperature"),
        ] {
            let e = ask(&form(&fields), "transcribe").unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            assert_eq!(e.param, Some(param), "{fields:?}");
            assert_eq!(e.body()["error"]["type"], "invalid_request_error");
        }
    }

    #[test]
    fn verbose_json_has_openai_fields_in_seconds() {
        let w = |s, e, t: &str, p| Word {
            start_ms: s,
            end_ms: e,
            text: t.into(),
            p,
        };
        let t = Transcript {
            language: "en".into(),
            model: "tiny.en".into(),
            duration_ms: 11_000,
            segments: vec![Segment {
                start_ms: 320,
                end_ms: 2_500,
                text: " And so my fellow".into(),
                words: vec![w(320, 900, " And", 1.0), w(900, 2_500, " so", 0.5)],
            }],
        };
        let v = verbose(&t, "transcribe", true);
        assert_eq!(v["language"], "english");
        assert_eq!(v["duration"], 11.0);
        assert_eq!(v["text"], "And so my fellow");
        let s = &v["segments"][0];
        assert_eq!((s["id"].clone(), s["seek"].clone()), (json!(0), json!(32)));
        assert_eq!(
            (s["start"].as_f64(), s["end"].as_f64()),
            (Some(0.32), Some(2.5))
        );
        let lp = s["avg_logprob"].as_f64().unwrap();
        assert!((lp - 0.5f64.ln() / 2.0).abs() < 1e-6, "{lp}");
        assert_eq!(
            v["words"],
            json!([{"word": "And", "start": 0.32, "end": 0.9}, {"word": "so", "start": 0.9, "end": 2.5}])
        );
        assert!(verbose(&t, "transcribe", false).get("words").is_none());
        // A translation's language is its output's, as OpenAI documents it.
        let zh = Transcript {
            language: "zh".into(),
            ..t
        };
        assert_eq!(verbose(&zh, "transcribe", false)["language"], "chinese");
        assert_eq!(verbose(&zh, "translate", false)["language"], "english");
    }
}
