//! Operational alerts: the one [`Alert`] type, raised through an [`EventLog`] the caller passes
//! in (no globals). Sources today: a transcribe job exceeded its memory share (raised by the
//! engine with [`raise`]) and this process's RSS went over its budget ([`spawn_memory_watch`]).
//!
//! A job's alert is delivered these ways, so every consumer finds it where it looks:
//! * a structured `WARN` log line (`alert = kind`, details);
//! * the task's manifest: its [`Alert::detail`] appended to `stages.<stage>.detail.alerts` (a
//!   JSON array), for the CLI and the task API;
//! * the Redis stream [`keys::ALERT_STREAM`] (`XADD … MAXLEN ~ 1000`, one field `alert`
//!   holding the same detail JSON), for other consumers of raw alerts;
//! * an `alert` event on the server's event stream [`keys::OWN_STREAM`] (data = the
//!   [`Alert`]: `kind`, `message`, `detail`), which the HTTP server's SSE
//!   (`/api/events/stream`) delivers with resumable ids (see `events.rs`);
//!
//! and counted in the `tubescribe_alerts_total{kind}` metric.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::domain::keys;
use crate::domain::Stage;
use crate::observe::events::{EventError, EventLog};
use crate::store::TaskDir;

/// An alert: something an operator should know about (e.g. memory over budget). Its JSON is
/// the data of an `alert` event on the event stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    /// Kind, e.g. `memory`.
    pub kind: String,
    /// Human-readable message.
    pub message: String,
    /// Machine-readable details. For a job's alert ([`Alert::job`]) the record kept in the
    /// manifest: `kind`, `task_id`, `job_id`, `stage`, `message`, `value`, `limit`, `at_ms`.
    pub detail: serde_json::Value,
}

impl Alert {
    /// An alert about one job: `value` exceeded `limit` (bytes for `memory`), now.
    pub fn job(
        kind: &str,
        stage: Stage,
        task_id: &str,
        job_id: &str,
        message: String,
        value: f64,
        limit: f64,
    ) -> Self {
        let detail = serde_json::json!({
            "kind": kind,
            "task_id": task_id,
            "job_id": job_id,
            "stage": stage,
            "message": message,
            "value": value,
            "limit": limit,
            "at_ms": crate::domain::manifest::now_ms(),
        });
        Self {
            kind: kind.to_string(),
            message,
            detail,
        }
    }
}

/// Appends `alert` as an `alert` event to the event stream of `log`.
///
/// # Errors
/// Redis errors.
pub async fn publish(log: &EventLog, alert: &Alert) -> Result<(), EventError> {
    let data = serde_json::to_value(alert).expect("alert serializes");
    log.emit("alert", &data).await.map(|_| ())
}

/// Raises a job's `alert` about `stage` of `task`: log, manifest, metric, the raw alert
/// stream and the event stream of `log`. Never fails: delivery problems are logged.
pub async fn raise(alert: &Alert, stage: Stage, task: &TaskDir, log: &EventLog) {
    tracing::warn!(alert = %alert.kind, detail = %alert.detail, "{}", alert.message);
    crate::observe::metrics::count_alert(&alert.kind);
    let record = alert.detail.clone();
    if let Err(e) = task.update_manifest(move |m| {
        let list = m
            .stage_mut(stage)
            .detail
            .entry("alerts")
            .or_insert_with(|| serde_json::Value::Array(Vec::new()));
        if let serde_json::Value::Array(a) = list {
            a.push(record);
        }
    }) {
        tracing::warn!(error = %e, "cannot record the alert in the manifest");
    }
    let r: Result<String, redis::RedisError> = redis::cmd("XADD")
        .arg(keys::ALERT_STREAM)
        .arg("MAXLEN")
        .arg("~")
        .arg(keys::ALERT_STREAM_MAXLEN)
        .arg("*")
        .arg("alert")
        .arg(alert.detail.to_string())
        .query_async(&mut log.connection())
        .await;
    if let Err(e) = r {
        tracing::warn!(error = %e, "cannot publish the alert to Redis");
    }
    // Task-less by the event stream's convention: the task and job are in `detail`.
    if let Err(e) = publish(log, alert).await {
        tracing::warn!(error = %e, "cannot publish the alert event to Redis");
    }
}

/// Checks this process's RSS every `every` and emits an `alert` (kind `memory`) on `log` when
/// it rises above `budget_bytes`; re-arms when it falls below 90 % of the budget. Stops with
/// `shutdown`.
pub fn spawn_memory_watch(
    log: EventLog,
    budget_bytes: u64,
    every: Duration,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut armed = true;
        loop {
            if let Some(rss) = crate::observe::rss::current_rss_bytes() {
                if armed && rss > budget_bytes {
                    armed = false;
                    let a = Alert {
                        kind: "memory".into(),
                        message: format!(
                            "process {} uses {} MiB, over its memory budget of {} MiB",
                            std::process::id(),
                            rss / (1 << 20),
                            budget_bytes / (1 << 20)
                        ),
                        detail: serde_json::json!({"pid": std::process::id(), "rssBytes": rss, "budgetBytes": budget_bytes}),
                    };
                    tracing::warn!(message = %a.message, "memory alert");
                    if let Err(e) = publish(&log, &a).await {
                        tracing::warn!(error = %e, "cannot publish the memory alert");
                    }
                } else if rss < budget_bytes / 10 * 9 {
                    armed = true;
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_alert_keeps_its_wire_shape() {
        let a = Alert::job(
            "memory",
            Stage::Transcribe,
            "t1",
            "tr-t1",
            "too much".into(),
            2.0,
            1.0,
        );
        let v = serde_json::to_value(&a).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys.len(), 3);
        assert!(["kind", "message", "detail"]
            .iter()
            .all(|k| keys.contains(k)));
        let d = &v["detail"];
        assert_eq!(d["stage"], "transcribe");
        assert_eq!(
            (d["task_id"].as_str(), d["job_id"].as_str()),
            (Some("t1"), Some("tr-t1"))
        );
        assert_eq!(
            (d["value"].as_f64(), d["limit"].as_f64()),
            (Some(2.0), Some(1.0))
        );
        assert_eq!(d["kind"], "memory");
        assert_eq!(d["message"], "too much");
        assert!(d["at_ms"].as_u64().unwrap() > 0);
    }
}
