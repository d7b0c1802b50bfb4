//! tRPC's HTTP wire format (no transformer), for clients of the old system.
//!
//! Queries (`tasks.get`, `tasks.list`) are `GET /trpc/<path>?input=<url-encoded JSON>`;
//! mutations (`tasks.create`, `tasks.cancel`, `tasks.retry`, `tasks.delete`) are `POST /trpc/<path>` with the
//! input as the JSON body. Success is `{"result":{"data":…}}`; failure is
//! `{"error":{"message","code":<JSON-RPC number>,"data":{"code":"NOT_FOUND","httpStatus":404,"path"}}}`
//! with that HTTP status. Batching (`?batch=1`, paths joined by `,`, inputs keyed `"0"`,
//! `"1"`, …) answers a JSON array (HTTP 200 when all succeed, else 207).

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::api::{self, ApiError, CreateInput, DeleteInput, ListInput, TaskIdInput};
use super::Shared;

const QUERIES: [&str; 2] = ["tasks.get", "tasks.list"];
const MUTATIONS: [&str; 4] = [
    "tasks.create",
    "tasks.cancel",
    "tasks.retry",
    "tasks.delete",
];

fn error_json(e: &ApiError, path: &str) -> serde_json::Value {
    serde_json::json!({
        "error": {
            "message": e.message,
            "code": e.rpc_number(),
            "data": {"code": e.code, "httpStatus": e.status.as_u16(), "path": path}
        }
    })
}

/// A tRPC error response for one procedure.
pub fn error_response(e: &ApiError, path: &str) -> Response {
    (e.status, axum::Json(error_json(e, path))).into_response()
}

fn input_of<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T, ApiError> {
    serde_json::from_value(v).map_err(|e| api::invalid_input(&e))
}

async fn call(
    st: &Shared,
    path: &str,
    input: serde_json::Value,
) -> Result<serde_json::Value, ApiError> {
    let to_json = |v: Result<serde_json::Value, serde_json::Error>| {
        v.map_err(|e| ApiError::unavailable(format!("cannot encode the answer: {e}")))
    };
    match path {
        "tasks.get" => {
            let i: TaskIdInput = input_of(input)?;
            to_json(serde_json::to_value(api::get(st, &i.task_id)?))
        }
        "tasks.list" => {
            let i: ListInput = if input.is_null() {
                ListInput::default()
            } else {
                input_of(input)?
            };
            to_json(serde_json::to_value(api::list(st, i)?))
        }
        "tasks.create" => {
            let i: CreateInput = input_of(input)?;
            to_json(serde_json::to_value(api::create(st, i).await?))
        }
        "tasks.cancel" => {
            let i: TaskIdInput = input_of(input)?;
            to_json(serde_json::to_value(api::cancel(st, &i.task_id).await?))
        }
        "tasks.retry" => {
            let i: TaskIdInput = input_of(input)?;
            to_json(serde_json::to_value(api::retry(st, &i.task_id).await?))
        }
        "tasks.delete" => {
            let i: DeleteInput = input_of(input)?;
            to_json(serde_json::to_value(
                api::delete(st, &i.task_id, i.force).await?,
            ))
        }
        _ => Err(ApiError::not_found(format!(
            "No procedure on path \"{path}\""
        ))),
    }
}

/// Runs one or a batch of calls of `kind` ("query" or "mutation") and renders the answer.
async fn respond(
    st: &Shared,
    procedure: &str,
    batch: bool,
    kind: &str,
    input: Result<serde_json::Value, ApiError>,
) -> Response {
    let allowed: &[&str] = if kind == "query" {
        &QUERIES
    } else {
        &MUTATIONS
    };
    let other: &[&str] = if kind == "query" {
        &MUTATIONS
    } else {
        &QUERIES
    };
    let paths: Vec<&str> = if batch {
        procedure.split(',').collect()
    } else {
        vec![procedure]
    };
    let mut results = Vec::new();
    for (n, path) in paths.iter().enumerate() {
        let r = match &input {
            Err(e) => Err(e.clone()),
            Ok(_) if other.contains(path) => Err(ApiError::method(format!(
                "Unsupported {} for {} procedure \"{path}\"",
                if kind == "query" { "GET" } else { "POST" },
                if kind == "query" { "mutation" } else { "query" }
            ))),
            Ok(_) if !allowed.contains(path) => Err(ApiError::not_found(format!(
                "No \"{kind}\"-procedure on path \"{path}\""
            ))),
            Ok(v) => {
                let one = if batch {
                    v.get(n.to_string())
                        .cloned()
                        .unwrap_or(serde_json::Value::Null)
                } else {
                    v.clone()
                };
                call(st, path, one).await
            }
        };
        results.push((path.to_string(), r));
    }
    if !batch {
        let (path, r) = results.pop().expect("one call");
        return match r {
            Ok(data) => axum::Json(serde_json::json!({"result": {"data": data}})).into_response(),
            Err(e) => error_response(&e, &path),
        };
    }
    let all_ok = results.iter().all(|(_, r)| r.is_ok());
    let body: Vec<serde_json::Value> = results
        .iter()
        .map(|(path, r)| match r {
            Ok(data) => serde_json::json!({"result": {"data": data}}),
            Err(e) => error_json(e, path),
        })
        .collect();
    let status = if all_ok {
        StatusCode::OK
    } else if results.len() == 1 {
        results[0]
            .1
            .as_ref()
            .err()
            .map(|e| e.status)
            .unwrap_or(StatusCode::OK)
    } else {
        StatusCode::MULTI_STATUS
    };
    (status, axum::Json(body)).into_response()
}

/// `GET /trpc/<procedure>?input=…[&batch=1]`.
pub async fn query(
    State(st): State<Shared>,
    Path(procedure): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let batch = q
        .get("batch")
        .map(|b| b == "1" || b == "true")
        .unwrap_or(false);
    let input = match q.get("input") {
        None => Ok(serde_json::Value::Null),
        Some(s) => serde_json::from_str(s)
            .map_err(|e| ApiError::bad_request(format!("input is not valid JSON: {e}"))),
    };
    respond(&st, &procedure, batch, "query", input).await
}

/// `POST /trpc/<procedure>[?batch=1]` with the input as the JSON body.
pub async fn mutation(
    State(st): State<Shared>,
    Path(procedure): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let batch = q
        .get("batch")
        .map(|b| b == "1" || b == "true")
        .unwrap_or(false);
    let input = api::parse_json::<serde_json::Value>(body);
    respond(&st, &procedure, batch, "mutation", input).await
}
