//! Operational alerts (today: a transcribe job exceeded its memory share).
//!
//! An alert is delivered these ways, so every consumer finds it where it looks:
//! * a structured `WARN` log line (`alert = kind`, task, figures);
//! * the task's manifest: appended to `stages.transcribe.detail.alerts` (a JSON array of
//!   [`Alert`]), for the CLI and the task API;
//! * the Redis stream `tubescribe:alerts` ([`crate::domain::keys::ALERT_STREAM`]) (`XADD … MAXLEN ~ 1000`, one field `alert` holding the JSON of
//!   [`Alert`]), for other consumers of raw alerts;
//! * an `alert` event on the server's event stream `tubescribe:events`
//!   ([`keys::OWN_STREAM`], data = [`crate::observe::events::Alert`] with this [`Alert`] as
//!   `detail`), which the HTTP server's SSE (`/api/events/stream`) delivers with resumable
//!   ids (see `events.rs`);
//!
//! and counted in the `tubescribe_alerts_total{kind}` metric.

use std::sync::OnceLock;

use bullmq::redis_connection::AnyConnection;
use serde::{Deserialize, Serialize};

use crate::domain::keys;
use crate::domain::Stage;
use crate::store::TaskDir;

/// One alert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// What happened: `memory` (a job's memory exceeded its share of the budget).
    pub kind: String,
    /// The task concerned.
    pub task_id: String,
    /// The BullMQ job concerned (`tr-…` or a segment job id).
    pub job_id: String,
    /// The stage.
    pub stage: Stage,
    /// Human-readable text.
    pub message: String,
    /// The measured value (bytes for `memory`).
    pub value: f64,
    /// The limit it exceeded (bytes for `memory`).
    pub limit: f64,
    /// When, ms since the epoch.
    pub at_ms: u64,
}

static CONN: OnceLock<AnyConnection> = OnceLock::new();

/// Sets the Redis connection alerts are published on (the workers do this at start; the
/// first call wins). Without one, alerts go to the log, the manifest and the metric only.
pub fn set_connection(conn: AnyConnection) {
    let _ = CONN.set(conn);
}

/// Raises `alert`: log, manifest, metric, and the Redis stream when a connection is set.
/// Never fails: delivery problems are logged.
pub async fn raise(alert: &Alert, task: &TaskDir) {
    tracing::warn!(
        alert = %alert.kind,
        task = %alert.task_id,
        job = %alert.job_id,
        value = alert.value,
        limit = alert.limit,
        "{}",
        alert.message
    );
    crate::observe::metrics::count_alert(&alert.kind);
    let json = serde_json::to_value(alert).unwrap_or_default();
    let j2 = json.clone();
    if let Err(e) = task.update_manifest(move |m| {
        let d = &mut m.stage_mut(alert.stage).detail;
        let list = d
            .entry("alerts")
            .or_insert_with(|| serde_json::Value::Array(Vec::new()));
        if let serde_json::Value::Array(a) = list {
            a.push(j2);
        }
    }) {
        tracing::warn!(error = %e, "cannot record the alert in the manifest");
    }
    if let Some(mut c) = CONN.get().cloned() {
        let r: Result<String, redis::RedisError> = redis::cmd("XADD")
            .arg(keys::ALERT_STREAM)
            .arg("MAXLEN")
            .arg("~")
            .arg(keys::ALERT_STREAM_MAXLEN)
            .arg("*")
            .arg("alert")
            .arg(json.to_string())
            .query_async(&mut c)
            .await;
        if let Err(e) = r {
            tracing::warn!(error = %e, "cannot publish the alert to Redis");
        }
        // Also as an `alert` event on the server's own event stream (`events.rs`), so SSE
        // clients (`/api/events/stream`) see it like the memory watch's alerts. Task-less by
        // that stream's convention: the task and job are in `detail`.
        let ev = crate::observe::events::Alert {
            kind: alert.kind.clone(),
            message: alert.message.clone(),
            detail: json.clone(),
        };
        let r: Result<String, redis::RedisError> = redis::cmd("XADD")
            .arg(keys::OWN_STREAM)
            .arg("MAXLEN")
            .arg("~")
            .arg(keys::OWN_STREAM_MAXLEN)
            .arg("*")
            .arg("event")
            .arg("alert")
            .arg("data")
            .arg(serde_json::to_string(&ev).unwrap_or_default())
            .query_async(&mut c)
            .await;
        if let Err(e) = r {
            tracing::warn!(error = %e, "cannot publish the alert event to Redis");
        }
    }
}
