//! Webhooks as data: the events a task's end sends (`task.completed`, `task.failed`), where
//! they go (the task's callback URLs and the configured endpoints with their event filter),
//! the manifest's record of every delivery with its attempt log, and the payload in the
//! Standard Webhooks shape (`{type, timestamp, data}`). No IO: signing and the HTTP POST are
//! `pipeline/webhook.rs`, the durable queue and its worker `engine/webhooks.rs`.
//!
//! A delivery is planned once per target and *run* of a task (a retry starts a new run,
//! [`Webhooks::run`]) under the manifest lock ([`plan`]), so however often the planning is
//! repeated (a re-run after a crash, a new callback joining a finished task) each target hears
//! of each end once; its id is the message's `webhook-id` and its job's id, the same on every
//! attempt.

use serde::{Deserialize, Serialize};

use crate::domain::manifest::{now_ms, AttemptOutcome, AttemptRecord, Manifest, TaskStatus};

/// An event a webhook delivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Event {
    /// The task completed (with or without warnings).
    #[serde(rename = "task.completed")]
    TaskCompleted,
    /// The task failed for good.
    #[serde(rename = "task.failed")]
    TaskFailed,
}

impl Event {
    /// Every event.
    pub const ALL: [Event; 2] = [Event::TaskCompleted, Event::TaskFailed];

    /// The wire name (`task.completed`).
    pub fn as_str(self) -> &'static str {
        match self {
            Event::TaskCompleted => "task.completed",
            Event::TaskFailed => "task.failed",
        }
    }

    /// The event named `s`, if any.
    pub fn parse(s: &str) -> Option<Event> {
        Event::ALL.into_iter().find(|e| e.as_str() == s)
    }

    /// The event a task in `status` has ended with (`None` while it runs, or cancelled).
    pub fn of_status(status: TaskStatus) -> Option<Event> {
        match status {
            TaskStatus::Completed | TaskStatus::CompletedWithWarnings => Some(Event::TaskCompleted),
            TaskStatus::Failed => Some(Event::TaskFailed),
            _ => None,
        }
    }
}

/// A configured endpoint (`[[webhooks.endpoints]]`): every task's events of `events` go to
/// `url`. The operator's own setting: it is not subject to the media allow-list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Where deliveries are POSTed (`http`/`https`).
    pub url: String,
    /// The events it receives (all when the file names none).
    pub events: Vec<Event>,
}

/// The signing secret of the Standard Webhooks spec: `whsec_` and the base64 of the key.
/// Its `Debug` form hides the key.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps `s` after checking its form: `whsec_` followed by non-empty standard base64.
    ///
    /// # Errors
    /// One sentence saying what is wrong (never the secret itself).
    pub fn parse(s: &str) -> Result<Secret, String> {
        let s = s.trim();
        let key = s.strip_prefix("whsec_").ok_or(
            "a webhook secret starts with whsec_ followed by the base64 of the key".to_string(),
        )?;
        if key.is_empty() {
            return Err("the webhook secret's key after whsec_ is empty".into());
        }
        // The signer's own decoding (standard base64), so what passes here signs later.
        match standardwebhooks::Webhook::new(s) {
            Ok(_) => Ok(Secret(s.to_string())),
            Err(e) => Err(format!(
                "the webhook secret's key after whsec_ is not standard base64 ({e})"
            )),
        }
    }

    /// The secret as configured (`whsec_…`).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(whsec_…)")
    }
}

/// Who asked for a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// The task's `callbackUrl` (checked against the allow-list like a media URL).
    Callback,
    /// A configured endpoint (`[[webhooks.endpoints]]`).
    Endpoint,
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Not delivered yet; its job is queued, running or waiting for a retry.
    Pending,
    /// The endpoint answered 2xx.
    Delivered,
    /// Every attempt failed; no more are made.
    Failed,
}

/// One attempt of a delivery, as the manifest logs it: a stage attempt's record (worker,
/// times; outcome `completed` for a 2xx answer, `failed`, or `interrupted` when its worker
/// died, set when the next attempt starts; the error) and the endpoint's HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryAttempt {
    /// Attempt number (BullMQ's `attemptsStarted`), worker, times, outcome and error.
    #[serde(flatten)]
    pub record: AttemptRecord,
    /// The endpoint's HTTP status, when it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
}

/// One planned delivery of an event to one target (`webhooks.deliveries[]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// The message id (`webhook-id`, `msg_<32 hex>`), also its BullMQ job id.
    pub id: String,
    /// The event.
    pub event: Event,
    /// The target URL.
    pub url: String,
    /// Who asked for it.
    pub origin: Origin,
    /// The task's run it reports on ([`Webhooks::run`]).
    pub run: u32,
    /// When it was planned, ms since the epoch.
    pub created_at: u64,
    /// Where it stands.
    pub state: DeliveryState,
    /// Every attempt, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<DeliveryAttempt>,
}

/// A task's webhooks in its manifest (`webhooks`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Webhooks {
    /// The callback URLs submitters gave (`callbackUrl`, `--callback`), each once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub callbacks: Vec<String>,
    /// The task's run: 0 for the first, one more for each retry
    /// ([`Manifest::reset_for_retry`]); each run's end is delivered once per target.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub run: u32,
    /// Every delivery, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deliveries: Vec<Delivery>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Webhooks {
    /// True when there is nothing to record (the manifest then has no `webhooks` key).
    pub fn is_empty(&self) -> bool {
        self == &Webhooks::default()
    }

    /// Adds callback `url` unless present; true when it was added.
    pub fn add_callback(&mut self, url: &str) -> bool {
        let new = !self.callbacks.iter().any(|c| c == url);
        if new {
            self.callbacks.push(url.to_string());
        }
        new
    }

    /// The delivery with id `id`.
    pub fn delivery_mut(&mut self, id: &str) -> Option<&mut Delivery> {
        self.deliveries.iter_mut().find(|d| d.id == id)
    }
}

impl Delivery {
    /// Starts attempt `attempt` on `worker`: an earlier attempt that never ended is marked
    /// interrupted. Returns false (and records nothing) when the delivery is no longer
    /// pending.
    pub fn start_attempt(&mut self, attempt: u32, worker: &str) -> bool {
        if self.state != DeliveryState::Pending {
            return false;
        }
        for a in self
            .attempts
            .iter_mut()
            .filter(|a| a.record.outcome.is_none())
        {
            a.record.outcome = Some(AttemptOutcome::Interrupted);
        }
        self.attempts.push(DeliveryAttempt {
            record: AttemptRecord::start(attempt, worker),
            status_code: None,
        });
        true
    }

    /// Records how attempt `attempt` ended: the endpoint's status (if it answered) and, for a
    /// failure, why; `last` says no attempt follows a failure (the delivery then failed).
    pub fn end_attempt(
        &mut self,
        attempt: u32,
        status_code: Option<u16>,
        error: Option<&str>,
        last: bool,
    ) {
        if let Some(a) = self
            .attempts
            .iter_mut()
            .rev()
            .find(|a| a.record.attempt == attempt && a.record.outcome.is_none())
        {
            a.record.finished_at = Some(now_ms());
            a.record.outcome = Some(match error {
                None => AttemptOutcome::Completed,
                Some(_) => AttemptOutcome::Failed,
            });
            a.record.error = error.map(str::to_string);
            a.status_code = status_code;
        }
        self.state = match error {
            None => DeliveryState::Delivered,
            Some(_) if last => DeliveryState::Failed,
            Some(_) => DeliveryState::Pending,
        };
    }
}

/// Plans the deliveries of `m`'s end (nothing while it runs, or when cancelled): one per
/// callback URL and per endpoint whose filter has the event, each once per run. Returns the
/// run's deliveries still pending (new or planned earlier), for the caller to enqueue.
pub fn plan(m: &mut Manifest, endpoints: &[Endpoint]) -> Vec<Delivery> {
    let Some(event) = Event::of_status(m.status) else {
        return Vec::new();
    };
    let run = m.webhooks.run;
    let callbacks = m.webhooks.callbacks.iter().map(|u| (u, Origin::Callback));
    let configured = endpoints
        .iter()
        .filter(|e| e.events.contains(&event))
        .map(|e| (&e.url, Origin::Endpoint));
    let targets: Vec<(String, Origin)> = callbacks
        .chain(configured)
        .map(|(u, o)| (u.clone(), o))
        .collect();
    let w = &mut m.webhooks;
    for (url, origin) in targets {
        let planned = w
            .deliveries
            .iter()
            .any(|d| d.run == run && d.event == event && d.url == url);
        if !planned {
            w.deliveries.push(Delivery {
                id: format!("msg_{}", uuid::Uuid::new_v4().simple()),
                event,
                url,
                origin,
                run,
                created_at: now_ms(),
                state: DeliveryState::Pending,
                attempts: Vec::new(),
            });
        }
    }
    w.deliveries
        .iter()
        .filter(|d| d.run == run && d.event == event && d.state == DeliveryState::Pending)
        .cloned()
        .collect()
}

/// The body of `event` for the task `m` (Standard Webhooks' shape): `type`, `timestamp` (the
/// task's end: its last stage end, RFC 3339 UTC) and `data` — `taskId`, `status`, `input`, `videoId` (YouTube),
/// `model`, and `outputs` (`[{name, bytes, sha256}]`, every stage's files) and `warnings` for
/// a completed task, or `error` (`{stage, message, retryable}`) for a failed one.
pub fn payload(event: Event, m: &Manifest) -> serde_json::Value {
    let ended = m.stages.values().filter_map(|r| r.finished_at).max();
    let at = chrono::DateTime::from_timestamp_millis(ended.unwrap_or(m.updated_at) as i64)
        .unwrap_or_default();
    let video_id = match &m.source {
        crate::domain::manifest::Source::Youtube { video_id, .. } => Some(video_id.clone()),
        _ => None,
    };
    let mut data = serde_json::json!({
        "taskId": m.task_id,
        "status": m.status,
        "input": m.input,
        "videoId": video_id,
        "model": m.model.as_ref().map(|r| r.name.clone()),
    });
    match event {
        Event::TaskCompleted => {
            let outputs: Vec<_> = m.stages.values().flat_map(|r| r.outputs.iter()).collect();
            data["outputs"] = serde_json::json!(outputs);
            data["warnings"] =
                serde_json::json!(m.warnings.iter().map(|w| &w.message).collect::<Vec<_>>());
        }
        Event::TaskFailed => {
            data["error"] = match &m.error {
                Some(e) => {
                    serde_json::json!({"stage": e.stage, "message": e.message, "retryable": e.retryable})
                }
                None => serde_json::Value::Null,
            };
        }
    }
    serde_json::json!({
        "type": event.as_str(),
        "timestamp": at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "data": data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::manifest::{OutputFile, Source};
    use crate::domain::Stage;

    fn task() -> Manifest {
        let source = Source::File {
            path: "/a.wav".into(),
        };
        let mut m = Manifest::new("file-abc", "/a.wav", source);
        m.webhooks.add_callback("http://127.0.0.1:9/hook");
        m
    }

    fn endpoints() -> Vec<Endpoint> {
        vec![
            Endpoint {
                url: "http://hooks.test/failed".into(),
                events: vec![Event::TaskFailed],
            },
            Endpoint {
                url: "http://hooks.test/all".into(),
                events: Event::ALL.to_vec(),
            },
        ]
    }

    #[test]
    fn an_end_is_planned_once_per_target_and_run() {
        let mut m = task();
        assert!(
            plan(&mut m, &endpoints()).is_empty(),
            "a queued task sends nothing"
        );
        m.status = TaskStatus::Completed;
        let first = plan(&mut m, &endpoints());
        let urls: Vec<_> = first.iter().map(|d| d.url.as_str()).collect();
        // The failed-only endpoint does not hear of a completion.
        assert_eq!(urls, ["http://127.0.0.1:9/hook", "http://hooks.test/all"]);
        assert_eq!(first[0].origin, Origin::Callback);
        assert_eq!(first[1].origin, Origin::Endpoint);
        assert!(first
            .iter()
            .all(|d| d.id.starts_with("msg_") && d.id.len() == 36));
        // Planning again (a re-run after a crash) gives the same deliveries, no new ones.
        assert_eq!(plan(&mut m, &endpoints()), first);
        // Delivered ones are no longer handed back; a callback added later gets its own.
        let id = first[0].id.clone();
        let d = m.webhooks.delivery_mut(&id).unwrap();
        assert!(d.start_attempt(1, "w:1"));
        d.end_attempt(1, Some(200), None, false);
        assert!(
            !d.start_attempt(2, "w:1"),
            "a delivered message is not sent again"
        );
        m.webhooks.add_callback("http://127.0.0.1:9/late");
        let again = plan(&mut m, &endpoints());
        let urls: Vec<_> = again.iter().map(|d| d.url.as_str()).collect();
        assert_eq!(urls, ["http://hooks.test/all", "http://127.0.0.1:9/late"]);
        assert_eq!(m.webhooks.deliveries.len(), 3);
        // A retry is a new run: its failure is delivered again, to the failed-only endpoint too.
        m.reset_for_retry(&[]);
        m.fail_stage(Stage::Download, "HTTP 404", None, false, true);
        let failed = plan(&mut m, &endpoints());
        assert_eq!(failed.len(), 4);
        assert!(failed
            .iter()
            .all(|d| d.run == 1 && d.event == Event::TaskFailed));
    }

    #[test]
    fn attempts_log_codes_interruptions_and_the_final_failure() {
        let mut m = task();
        m.status = TaskStatus::Failed;
        let id = plan(&mut m, &[])[0].id.clone();
        let d = m.webhooks.delivery_mut(&id).unwrap();
        d.start_attempt(1, "w:1");
        d.end_attempt(1, Some(500), Some("HTTP 500"), false);
        d.start_attempt(2, "w:1");
        // Its worker died: the next attempt marks it interrupted.
        d.start_attempt(3, "w:2");
        d.end_attempt(3, None, Some("connection refused"), true);
        assert_eq!(d.state, DeliveryState::Failed);
        let log: Vec<_> = d
            .attempts
            .iter()
            .map(|a| (a.record.attempt, a.status_code, a.record.outcome))
            .collect();
        use AttemptOutcome::{Failed, Interrupted};
        assert_eq!(
            log,
            [
                (1, Some(500), Some(Failed)),
                (2, None, Some(Interrupted)),
                (3, None, Some(Failed))
            ]
        );
        let json = serde_json::to_value(&d.attempts[0]).unwrap();
        assert_eq!(json["status_code"], 500);
        assert_eq!(json["outcome"], "failed");
        assert_eq!(json["error"], "HTTP 500");
    }

    #[test]
    fn payloads_carry_outputs_or_the_error() {
        let mut m = task();
        m.status = TaskStatus::Completed;
        m.stage_mut(Stage::Summarize).finished_at = Some(1_767_225_600_123);
        m.stage_mut(Stage::Transcribe).outputs.push(OutputFile {
            name: "transcript.txt".into(),
            bytes: 10,
            sha256: "ab".into(),
        });
        let p = payload(Event::TaskCompleted, &m);
        assert_eq!(p["type"], "task.completed");
        assert_eq!(p["timestamp"], "2026-01-01T00:00:00.123Z");
        assert_eq!(p["data"]["taskId"], "file-abc");
        assert_eq!(p["data"]["status"], "completed");
        assert_eq!(p["data"]["outputs"][0]["name"], "transcript.txt");
        m.reset_for_retry(&[]);
        m.fail_stage(Stage::Download, "HTTP 404", None, false, true);
        let p = payload(Event::TaskFailed, &m);
        assert_eq!(p["data"]["error"]["message"], "HTTP 404");
        assert_eq!(p["data"]["error"]["stage"], "download");
        assert!(p["data"].get("outputs").is_none());
    }

    #[test]
    fn secrets_are_checked_and_never_shown() {
        let s = Secret::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        assert_eq!(format!("{s:?}"), "Secret(whsec_…)");
        assert!(Secret::parse("C2FVsBQIhrscChlQIMV").is_err());
        assert!(Secret::parse("whsec_").is_err());
        assert!(Secret::parse("whsec_not base64!").is_err());
    }
}
