//! Server-Sent Events: `GET /api/events/stream` (all tasks, from now) and
//! `GET /api/tasks/{id}/events` (one task, from the oldest retained event). A client that
//! sends `Last-Event-ID` (browsers do on reconnect; `?lastEventId=` works too) resumes right
//! after that event: the same events, ids and order the live stream sent (the one order of
//! `observe/cursor.rs`). Keep-alive comments (`: keep-alive`) flow while nothing happens.
//!
//! A task's stream may be opened before the task exists (it waits, then delivers the task's
//! events; an id that no task can have is 404) and ends, the response finishing, right after
//! the task's final event (`task.completed`, `task.failed`, `task.cancelled`). Reconnecting
//! with that event's id ends at once with nothing; with an earlier id it delivers the rest,
//! the final event included, and ends. A task run again (retry) starts with a new
//! `task.created`: a stream opened after that goes on to the new run's end.

use std::collections::HashMap;
use std::convert::Infallible;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};

use super::api::ApiError;
use super::Shared;
use crate::app::tasks::TaskOpError;
use crate::domain::keys::valid_task_id;
use crate::observe::cursor::Cursor;

fn last_event_id(headers: &HeaderMap, q: &HashMap<String, String>) -> Option<Cursor> {
    headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| q.get("lastEventId").cloned())
        .and_then(|s| Cursor::parse(&s))
}

fn stream(st: &Shared, from: Option<Cursor>, task: Option<String>) -> Response {
    let rx = st.hub.follow(from, task, st.shutdown.clone());
    let events = futures::stream::unfold(rx, |mut rx| async move {
        let (cursor, e) = rx.recv().await?;
        let ev = SseEvent::default()
            .event(e.name)
            .id(cursor.to_string())
            .data(e.data.to_string());
        Some((Ok::<_, Infallible>(ev), rx))
    });
    Sse::new(events)
        .keep_alive(
            KeepAlive::new()
                .interval(st.opts.keep_alive)
                .text("keep-alive"),
        )
        .into_response()
}

/// `GET /api/events/stream`: every task's events from now (or after `Last-Event-ID`).
pub async fn all_events(
    State(st): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    stream(&st, last_event_id(&headers, &q), None)
}

/// `GET /api/tasks/{id}/events`: one task's events, from the oldest retained one (or after
/// `Last-Event-ID`), ending after its final event; a task not created yet is waited for.
/// 404 for an id no task can have ([`valid_task_id`]).
pub async fn task_events(
    State(st): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    if !valid_task_id(&id) {
        return Err(TaskOpError::NotFound(id).into());
    }
    let from = last_event_id(&headers, &q).unwrap_or_default();
    Ok(stream(&st, Some(from), Some(id)))
}
