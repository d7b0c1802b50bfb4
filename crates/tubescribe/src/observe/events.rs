//! Task and stage events for the server's Server-Sent Events, derived from what is in Redis,
//! so a server sees workers on any machine.
//!
//! Sources (read with `XREAD`/`XRANGE`, never written by us except the last one):
//!
//! | # | Redis stream | written by | gives |
//! |---|---|---|---|
//! | 0 | `bull:download:events` | BullMQ's Lua scripts | `added` (a new flow: `task.created`), `active`, `progress`, `delayed` (a retry), `completed`, `failed` |
//! | 1 | `bull:transcribe:events` | same | `active`, `progress`, `delayed`, `completed`, `failed` |
//! | 2 | `bull:summarize:events` | same | same (`completed`/`failed` also end the task) |
//! | 3 | `tubescribe:events` | [`EventLog`] (cancel; alerts, see `alerts.rs`) | `task.cancelled`, `alert` |
//!
//! BullMQ's events carry only a job id; our job ids are `dl-/tr-/sum-<task id>`, so each maps
//! to a task and a stage (long audio's segment jobs `seg<i>-<task id>` map to their task's
//! transcribe stage, see `map_segment_entry`). Details BullMQ does not carry (whether a failure is retryable, the
//! task-level reason) come from the task's manifest in the shared data directory. BullMQ
//! emits `failed` only for a job's final failure and `delayed` when a failed attempt waits for
//! its retry (see `moveToFinished-14.lua` and `moveToDelayed-11.lua` in bullmq-official 1.4.4).
//!
//! **Event ids.** An SSE event id is a [`Cursor`] (codec in [`super::cursor`]): the position
//! reached in each of the four streams (`<ms>-<seq>` per stream, joined with `_`; a `~<k>`
//! suffix marks that only events `0..=k` of a stream entry that maps to several events were
//! delivered). Resuming from a cursor reads each stream strictly after its position, so a client reconnecting with
//! `Last-Event-ID` gets exactly what it missed: no gap, no repeat. BullMQ trims its streams to
//! about 10 000 entries, and so do we; a cursor older than that resumes at the oldest entry.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::domain::keys::PREFIX;
use crate::domain::keys::{OWN_STREAM, OWN_STREAM_MAXLEN};
use crate::domain::manifest::{Manifest, StageState, TaskStatus};
use crate::domain::Stage;
use crate::observe::cursor::{Cursor, Pos, STREAMS};
use crate::store::DataDir;

/// Errors reading or writing events. Redis errors are retryable (the server may come back).
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// Redis refused or dropped the command.
    #[error("event stream: {0}")]
    Redis(#[from] redis::RedisError),
}

/// The Redis key of stream `i` (0–2: BullMQ's per-queue streams, 3: ours).
pub fn stream_key(i: usize) -> String {
    match i {
        0..=2 => format!("{PREFIX}:{}:events", Stage::ALL[i].queue_name()),
        _ => OWN_STREAM.to_string(),
    }
}

/// One event as the SSE layer sends it: `event: <name>`, `id: <cursor>`, `data: <data>`.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Which stream it came from (index into [`stream_key`]).
    pub stream: usize,
    /// Its position in that stream.
    pub pos: Pos,
    /// Event name: `task.created`, `stage.started`, `stage.progress`, `stage.completed`,
    /// `stage.failed`, `task.completed`, `task.failed`, `task.cancelled` or `alert`.
    pub name: String,
    /// The task it concerns (`None` for alerts).
    pub task_id: Option<String>,
    /// JSON payload (camelCase keys; always has `taskId` for task events and `at`, the Redis
    /// stream time in ms since the epoch).
    pub data: serde_json::Value,
}

/// Writes our own events (`tubescribe:events`) with `XADD MAXLEN ~`.
#[derive(Clone)]
pub struct EventLog {
    conn: redis::aio::ConnectionManager,
}

impl EventLog {
    /// Connects to Redis at `url`.
    pub async fn connect(url: &str) -> Result<Self, EventError> {
        let client = redis::Client::open(url)?;
        Ok(Self {
            conn: redis::aio::ConnectionManager::new(client).await?,
        })
    }

    /// A connection (multiplexed, reconnecting) other modules may share for short commands.
    pub fn connection(&self) -> redis::aio::ConnectionManager {
        self.conn.clone()
    }

    /// Appends event `name` with JSON `data`; returns the stream id.
    pub async fn emit(&self, name: &str, data: &serde_json::Value) -> Result<String, EventError> {
        let mut c = self.conn.clone();
        let id: String = redis::cmd("XADD")
            .arg(OWN_STREAM)
            .arg("MAXLEN")
            .arg("~")
            .arg(OWN_STREAM_MAXLEN)
            .arg("*")
            .arg("event")
            .arg(name)
            .arg("data")
            .arg(data.to_string())
            .query_async(&mut c)
            .await?;
        Ok(id)
    }

    /// `task.cancelled`.
    pub async fn task_cancelled(&self, task_id: &str) -> Result<(), EventError> {
        self.emit("task.cancelled", &serde_json::json!({"taskId": task_id}))
            .await
            .map(|_| ())
    }
}

/// One raw stream entry: its id and its field/value pairs.
type Entry = (String, Vec<(String, String)>);

fn fields_map(fields: &[(String, String)]) -> HashMap<&str, &str> {
    fields
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

/// One mapped event: its name, the task it concerns (`None` for alerts) and its JSON data.
pub type Mapped = (String, Option<String>, serde_json::Value);

/// A task's manifest by task id, for details BullMQ's events do not carry.
type ManifestLookup<'a> = &'a dyn Fn(&str) -> Option<Manifest>;

/// Maps one stream entry to zero or more events (pure apart from `manifest`, which looks up a
/// task's manifest for details BullMQ's events do not carry).
///
/// `stream` 0–2 are BullMQ's queue streams (stage = `Stage::ALL[stream]`), 3 is ours.
pub fn map_entry(
    stream: usize,
    at_ms: u64,
    fields: &[(String, String)],
    manifest: ManifestLookup<'_>,
) -> Vec<Mapped> {
    let f = fields_map(fields);
    let Some(kind) = f.get("event").copied() else {
        return vec![];
    };
    if stream >= 3 {
        return vec![map_own_entry(kind, at_ms, &f)];
    }
    let stage = Stage::ALL[stream];
    let Some(job_id) = f.get("jobId") else {
        return vec![];
    };
    let Some(task) = Stage::task_id_of(job_id) else {
        return match crate::domain::keys::task_of_segment_job(job_id) {
            Some(task) => map_segment_entry(stage, kind, job_id, task, at_ms, manifest),
            None => vec![],
        };
    };
    let job = JobEvent {
        stage,
        task,
        at_ms,
        fields: &f,
        manifest,
    };
    match kind {
        // BullMQ adds a flow's leaf (the download job) with an `added` event; a duplicate add
        // (the same video submitted again) emits `duplicated` instead, so this is a new task.
        "added" if stage == Stage::ALL[0] => job.task_created(),
        "active" => job.started(),
        "progress" => job.progress(),
        "completed" => job.completed(),
        "delayed" => job.retrying(),
        "failed" => job.failed(),
        _ => vec![],
    }
}

/// An entry of our own stream (`task.cancelled`, `alert`): its `data` as written, plus `at`.
fn map_own_entry(kind: &str, at_ms: u64, f: &HashMap<&str, &str>) -> Mapped {
    let mut data: serde_json::Value = f
        .get("data")
        .and_then(|d| serde_json::from_str(d).ok())
        .unwrap_or_else(|| serde_json::json!({}));
    if let Some(o) = data.as_object_mut() {
        o.insert("at".into(), at_ms.into());
    }
    let task = data
        .get("taskId")
        .and_then(|t| t.as_str())
        .map(str::to_string);
    (kind.to_string(), task, data)
}

/// A BullMQ event of a task's stage job (`dl-/tr-/sum-<task>`): what each per-kind mapping
/// below needs.
struct JobEvent<'a> {
    stage: Stage,
    task: &'a str,
    /// Stream time, ms since the epoch.
    at_ms: u64,
    /// The entry's fields.
    fields: &'a HashMap<&'a str, &'a str>,
    manifest: ManifestLookup<'a>,
}

impl JobEvent<'_> {
    /// `{taskId, stage, at}` plus the keys of `extra`.
    fn data(&self, extra: serde_json::Value) -> serde_json::Value {
        let mut d = serde_json::json!({"taskId": self.task, "stage": self.stage, "at": self.at_ms});
        if let (Some(o), serde_json::Value::Object(e)) = (d.as_object_mut(), extra) {
            o.extend(e);
        }
        d
    }

    /// Event `name` of this task with `data`.
    fn event(&self, name: &str, data: serde_json::Value) -> Mapped {
        (name.to_string(), Some(self.task.to_string()), data)
    }

    fn manifest(&self) -> Option<Manifest> {
        (self.manifest)(self.task)
    }

    /// Whether the manifest marks this stage skipped (a parent whose child failed).
    fn skipped(&self, m: Option<&Manifest>) -> bool {
        m.and_then(|m| m.stage(self.stage)).map(|r| r.state) == Some(StageState::Skipped)
    }

    /// `added` of the download job: `task.created`, with the input and YouTube id.
    fn task_created(&self) -> Vec<Mapped> {
        let m = self.manifest();
        let input = m.as_ref().map(|m| m.input.clone());
        let video_id = m.as_ref().and_then(|m| match &m.source {
            crate::domain::manifest::Source::Youtube { video_id, .. } => Some(video_id.clone()),
            _ => None,
        });
        vec![self.event(
            "task.created",
            serde_json::json!({"taskId": self.task, "videoId": video_id, "input": input, "at": self.at_ms}),
        )]
    }

    /// `active`: `stage.started`. A parent whose child failed is moved to active only to be
    /// failed (deferred failure); the manifest marks such a stage skipped: no event.
    fn started(&self) -> Vec<Mapped> {
        if self.skipped(self.manifest().as_ref()) {
            return vec![];
        }
        vec![self.event("stage.started", self.data(serde_json::json!({})))]
    }

    /// `progress`: `stage.progress` with the percent and the known details, camelCased.
    fn progress(&self) -> Vec<Mapped> {
        let raw: serde_json::Value = self
            .fields
            .get("data")
            .and_then(|d| serde_json::from_str(d).ok())
            .unwrap_or_default();
        let mut extra = serde_json::Map::new();
        let percent = raw
            .get("percent")
            .and_then(|p| p.as_f64())
            .or_else(|| raw.as_f64())
            .unwrap_or(0.0);
        extra.insert("percent".into(), percent.into());
        for (from, to) in [
            ("bytes", "bytes"),
            ("total_bytes", "totalBytes"),
            ("speed_bps", "speedBps"),
            ("eta_s", "etaS"),
            ("phase", "phase"),
        ] {
            if let Some(v) = raw.get(from) {
                extra.insert(to.into(), v.clone());
            }
        }
        vec![self.event(
            "stage.progress",
            self.data(serde_json::Value::Object(extra)),
        )]
    }

    /// `completed`: `stage.completed`, and for the last stage `task.completed`.
    fn completed(&self) -> Vec<Mapped> {
        let mut v = vec![self.event("stage.completed", self.data(serde_json::json!({})))];
        if self.stage == Stage::LAST {
            // The name stays `task.completed` for old clients; `status` tells a task
            // completed with warnings apart, `warnings` says why (from the manifest,
            // when it agrees that the task completed).
            let m = self.manifest().filter(|m| m.status.is_completed());
            let status = m.as_ref().map_or(TaskStatus::Completed, |m| m.status);
            let warnings = m.map(|m| m.warnings).unwrap_or_default();
            v.push(self.event(
                "task.completed",
                serde_json::json!({"taskId": self.task, "status": status, "warnings": warnings, "at": self.at_ms}),
            ));
        }
        v
    }

    /// `delayed`: a failed attempt waiting for its retry, `stage.failed` with `willRetry`.
    fn retrying(&self) -> Vec<Mapped> {
        let reason = self
            .manifest()
            .and_then(|m| m.stage(self.stage).and_then(|r| r.error.clone()))
            .unwrap_or_else(|| "attempt failed".into());
        vec![self.event(
            "stage.failed",
            self.data(serde_json::json!({"reason": reason, "retryable": true, "willRetry": true})),
        )]
    }

    /// `failed` (a job's final failure): `stage.failed` unless the stage was skipped, and for
    /// the last stage `task.failed` unless the task was cancelled.
    fn failed(&self) -> Vec<Mapped> {
        let m = self.manifest();
        let reason = self.fields.get("failedReason").copied().unwrap_or("failed");
        let mut v = Vec::new();
        if !self.skipped(m.as_ref()) {
            let retryable = m
                .as_ref()
                .and_then(|m| m.error.as_ref())
                .filter(|e| e.stage == self.stage)
                .map(|e| e.retryable)
                .unwrap_or(false);
            v.push(self.event(
                "stage.failed",
                self.data(serde_json::json!({"reason": reason, "retryable": retryable, "willRetry": false})),
            ));
        }
        let cancelled = m.as_ref().map(|m| m.status) == Some(TaskStatus::Cancelled);
        if self.stage == Stage::LAST && !cancelled {
            let (st, msg, retryable) = match m.and_then(|m| m.error) {
                Some(e) => (e.stage, e.message, e.retryable),
                None => (self.stage, reason.to_string(), false),
            };
            v.push(self.event(
                "task.failed",
                serde_json::json!({"taskId": self.task, "stage": st, "reason": msg, "retryable": retryable, "at": self.at_ms}),
            ));
        }
        v
    }
}

/// Maps an event of a long-audio segment job (`seg<i>-<task>` in the transcribe queue, see
/// `segments.rs`) onto its task's transcribe stage. The stage itself starts, completes and
/// fails with the task's `tr-` job, so segment jobs only add progress: `active` and
/// `completed` become `stage.progress` (the task's duration-weighted percent and phase from
/// the manifest, plus `segment`), and `delayed` (a segment attempt failed and will retry)
/// becomes `stage.failed` with `willRetry`. A segment's final failure fails the `tr-` job
/// (`failParentOnFailure`), whose own `failed` event reports it, so it maps to nothing.
fn map_segment_entry(
    stage: Stage,
    kind: &str,
    job_id: &str,
    task: &str,
    at_ms: u64,
    manifest: ManifestLookup<'_>,
) -> Vec<Mapped> {
    let index: Option<u64> = job_id
        .strip_prefix("seg")
        .and_then(|r| r.split_once('-'))
        .and_then(|(i, _)| i.parse().ok());
    let m = manifest(task);
    let rec = m.as_ref().and_then(|m| m.stage(stage));
    match kind {
        "active" | "completed" => {
            let percent = rec.map(|r| r.progress).unwrap_or(0.0);
            let mut d = serde_json::json!({"taskId": task, "stage": stage, "at": at_ms, "percent": percent, "segment": index});
            if let Some(ph) = rec.and_then(|r| r.detail.get("phase")) {
                d["phase"] = ph.clone();
            }
            vec![("stage.progress".into(), Some(task.to_string()), d)]
        }
        "delayed" => vec![(
            "stage.failed".into(),
            Some(task.to_string()),
            serde_json::json!({"taskId": task, "stage": stage, "at": at_ms, "segment": index,
                "reason": format!("segment {} attempt failed", index.map(|i| i + 1).unwrap_or(0)),
                "retryable": true, "willRetry": true}),
        )],
        _ => vec![],
    }
}

/// Turns entries of one stream into [`Event`]s, skipping the first `skip_first` events of the
/// first entry (a partially delivered entry, see [`Pos::sub`]).
fn entries_to_events(
    stream: usize,
    entries: &[Entry],
    skip_first: Option<u32>,
    manifest: ManifestLookup<'_>,
) -> Vec<Event> {
    let mut out = Vec::new();
    for (n, (id, fields)) in entries.iter().enumerate() {
        let Some(p) = Pos::parse(id) else { continue };
        let mapped = map_entry(stream, p.ms, fields, manifest);
        let count = mapped.len();
        for (k, (name, task_id, data)) in mapped.into_iter().enumerate() {
            if n == 0 {
                if let Some(s) = skip_first {
                    if k as u32 <= s {
                        continue;
                    }
                }
            }
            let sub = (k + 1 < count).then_some(k as u32);
            out.push(Event {
                stream,
                pos: Pos { sub, ..p },
                name,
                task_id,
                data,
            });
        }
    }
    out
}

/// Merges per-stream event lists by stream time (ms, then stream order), keeping each
/// stream's own order.
fn merge(mut lists: Vec<Vec<Event>>) -> Vec<Event> {
    let mut out: Vec<Event> = lists.iter_mut().flat_map(std::mem::take).collect();
    out.sort_by_key(|e| (e.pos.ms, e.stream, e.pos.seq, e.pos.sub.unwrap_or(u32::MAX)));
    out
}

/// The server's single reader of the streams: one blocking `XREAD` connection, events
/// broadcast to every SSE client, and catch-up reads (`XRANGE`) for clients that resume.
#[derive(Clone)]
pub struct EventHub {
    inner: Arc<HubInner>,
}

struct HubInner {
    client: redis::Client,
    range_conn: redis::aio::ConnectionManager,
    data: DataDir,
    tx: broadcast::Sender<Arc<Event>>,
    head: Mutex<Cursor>,
}

impl EventHub {
    /// Connects, finds the current end of every stream, and starts the reader task (stopped
    /// by `shutdown`).
    pub async fn start(
        url: &str,
        data: DataDir,
        shutdown: CancellationToken,
    ) -> Result<Self, EventError> {
        let client = redis::Client::open(url)?;
        let mut range_conn = redis::aio::ConnectionManager::new(client.clone()).await?;
        let mut head = Cursor::default();
        for i in 0..STREAMS {
            let last: Vec<Entry> = redis::cmd("XREVRANGE")
                .arg(stream_key(i))
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1)
                .query_async(&mut range_conn)
                .await?;
            if let Some(p) = last.first().and_then(|(id, _)| Pos::parse(id)) {
                head.0[i] = p;
            }
        }
        let (tx, _) = broadcast::channel(1024);
        let hub = EventHub {
            inner: Arc::new(HubInner {
                client,
                range_conn,
                data,
                tx,
                head: Mutex::new(head),
            }),
        };
        let h2 = hub.clone();
        tokio::spawn(async move {
            loop {
                let r = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = h2.read_loop() => r,
                };
                if let Err(e) = r {
                    tracing::warn!(error = %e, "event reader lost Redis; reconnecting in 1 s");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        });
        Ok(hub)
    }

    fn lookup(&self) -> impl Fn(&str) -> Option<Manifest> + '_ {
        move |t: &str| {
            if !crate::domain::keys::valid_task_id(t) {
                return None;
            }
            self.inner.data.task(t).read_manifest().ok()
        }
    }

    async fn read_loop(&self) -> Result<(), EventError> {
        let cfg =
            redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(30)));
        let mut conn = self
            .inner
            .client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await?;
        loop {
            let head = *self.inner.head.lock().expect("head lock");
            let mut cmd = redis::cmd("XREAD");
            cmd.arg("COUNT")
                .arg(500)
                .arg("BLOCK")
                .arg(5000)
                .arg("STREAMS");
            for i in 0..STREAMS {
                cmd.arg(stream_key(i));
            }
            for p in head.0 {
                cmd.arg(p.id());
            }
            let reply: Option<Vec<(String, Vec<Entry>)>> = cmd.query_async(&mut conn).await?;
            let Some(reply) = reply else { continue };
            let lookup = self.lookup();
            let mut lists = Vec::new();
            let mut new_head = head;
            for (key, entries) in reply {
                let Some(i) = (0..STREAMS).find(|i| stream_key(*i) == key) else {
                    continue;
                };
                if let Some(p) = entries.last().and_then(|(id, _)| Pos::parse(id)) {
                    new_head.0[i] = p;
                }
                lists.push(entries_to_events(i, &entries, None, &lookup));
            }
            // Broadcast before moving the head: a client that takes the head as its start
            // after this point must not skip these events (it reads them from the backlog).
            for e in merge(lists) {
                let _ = self.inner.tx.send(Arc::new(e));
            }
            *self.inner.head.lock().expect("head lock") = new_head;
        }
    }

    /// Events after `from` that are still in the streams, in order.
    pub async fn backlog(&self, from: &Cursor) -> Result<Vec<Event>, EventError> {
        let mut conn = self.inner.range_conn.clone();
        let lookup = self.lookup();
        let mut lists = Vec::new();
        for i in 0..STREAMS {
            let p = from.0[i];
            let start = match p.sub {
                Some(_) => p.id(),
                None if p == Pos::default() => "-".to_string(),
                None => format!("({}", p.id()),
            };
            let entries: Vec<Entry> = redis::cmd("XRANGE")
                .arg(stream_key(i))
                .arg(start)
                .arg("+")
                .query_async(&mut conn)
                .await?;
            let skip = match (p.sub, entries.first()) {
                (Some(k), Some((id, _)))
                    if Pos::parse(id).map(|q| (q.ms, q.seq)) == Some((p.ms, p.seq)) =>
                {
                    Some(k)
                }
                _ => None,
            };
            lists.push(entries_to_events(i, &entries, skip, &lookup));
        }
        Ok(merge(lists))
    }

    /// Follows the streams from `from` (or from now when `None`), sending events of `task`
    /// (all tasks when `None`) with the cursor to use as their SSE id, until the receiver is
    /// dropped or `shutdown` fires. The cursor advances past every event considered, so
    /// resuming from the id of the last event received yields exactly the events after it.
    pub fn follow(
        &self,
        from: Option<Cursor>,
        task: Option<String>,
        shutdown: CancellationToken,
    ) -> mpsc::Receiver<(Cursor, Event)> {
        let (tx, rx) = mpsc::channel(256);
        let hub = self.clone();
        tokio::spawn(async move {
            let mut live = hub.inner.tx.subscribe();
            let mut cur = from.unwrap_or_else(|| *hub.inner.head.lock().expect("head lock"));
            let wanted = |e: &Event| task.is_none() || e.task_id == task;
            loop {
                // Catch up from `cur` (at the start, and after falling behind the broadcast).
                let backlog = loop {
                    match hub.backlog(&cur).await {
                        Ok(b) => break b,
                        Err(e) => {
                            tracing::warn!(error = %e, "event backlog read failed; retrying");
                            tokio::select! {
                                _ = shutdown.cancelled() => return,
                                _ = tx.closed() => return,
                                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                            }
                        }
                    }
                };
                for e in backlog {
                    if e.pos <= cur.0[e.stream] {
                        continue;
                    }
                    cur.0[e.stream] = e.pos;
                    if wanted(&e) && tx.send((cur, e)).await.is_err() {
                        return;
                    }
                }
                loop {
                    let r = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tx.closed() => return,
                        r = live.recv() => r,
                    };
                    match r {
                        Ok(e) => {
                            if e.pos <= cur.0[e.stream] {
                                continue;
                            }
                            cur.0[e.stream] = e.pos;
                            if wanted(&e) && tx.send((cur, (*e).clone())).await.is_err() {
                                return;
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => break,
                        Err(broadcast::error::RecvError::Closed) => return,
                    }
                }
            }
        });
        rx
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::manifest::Source;

    fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn stream_keys() {
        assert_eq!(stream_key(1), "bull:transcribe:events");
        assert_eq!(stream_key(3), "tubescribe:events");
    }

    #[test]
    fn bullmq_entries_map_to_stage_events() {
        let none = |_: &str| None;
        let p = map_entry(
            0,
            42,
            &kv(&[
                ("event", "progress"),
                ("jobId", "dl-yt-abcdefghijk"),
                (
                    "data",
                    r#"{"percent":40.5,"bytes":100,"speed_bps":2.5,"eta_s":3}"#,
                ),
            ]),
            &none,
        );
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].0, "stage.progress");
        assert_eq!(p[0].1.as_deref(), Some("yt-abcdefghijk"));
        assert_eq!(
            p[0].2,
            serde_json::json!({"taskId":"yt-abcdefghijk","stage":"download","at":42,"percent":40.5,"bytes":100,"speedBps":2.5,"etaS":3})
        );
        let done = map_entry(
            2,
            7,
            &kv(&[
                ("event", "completed"),
                ("jobId", "sum-t1"),
                ("returnvalue", "{}"),
            ]),
            &none,
        );
        let names: Vec<_> = done.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(names, vec!["stage.completed", "task.completed"]);
        let created = map_entry(0, 5, &kv(&[("event", "added"), ("jobId", "dl-t1")]), &none);
        assert_eq!(
            created,
            vec![(
                "task.created".to_string(),
                Some("t1".to_string()),
                serde_json::json!({"taskId": "t1", "videoId": null, "input": null, "at": 5})
            )]
        );
        // Only the flow's leaf (download) announces a task; other queues' `added` do not.
        assert!(map_entry(1, 1, &kv(&[("event", "added"), ("jobId", "tr-t1")]), &none).is_empty());
        assert!(map_entry(0, 1, &kv(&[("event", "active"), ("jobId", "other")]), &none).is_empty());
    }

    #[test]
    fn failures_use_the_manifest_and_skip_deferred_parents() {
        let mut m = Manifest::new(
            "t1",
            "x",
            Source::Url {
                url: "http://h/x".into(),
            },
        );
        m.start_stage(Stage::Download, 1);
        m.fail_stage(Stage::Download, "HTTP 404", None, false, true);
        let lookup = move |_: &str| Some(m.clone());
        let dl = map_entry(
            0,
            1,
            &kv(&[
                ("event", "failed"),
                ("jobId", "dl-t1"),
                ("failedReason", "HTTP 404"),
            ]),
            &lookup,
        );
        assert_eq!(dl.len(), 1);
        assert_eq!(dl[0].2["reason"], "HTTP 404");
        assert_eq!(dl[0].2["retryable"], false);
        // The transcribe parent is failed by BullMQ's deferred failure: no stage events.
        assert!(map_entry(
            1,
            2,
            &kv(&[("event", "active"), ("jobId", "tr-t1")]),
            &lookup
        )
        .is_empty());
        let sum = map_entry(
            2,
            3,
            &kv(&[
                ("event", "failed"),
                ("jobId", "sum-t1"),
                ("failedReason", "child bull:transcribe:tr-t1 failed"),
            ]),
            &lookup,
        );
        assert_eq!(sum.len(), 1);
        assert_eq!(sum[0].0, "task.failed");
        assert_eq!(
            sum[0].2,
            serde_json::json!({"taskId":"t1","stage":"download","reason":"HTTP 404","retryable":false,"at":3})
        );
    }

    #[test]
    fn task_completed_carries_status_and_warnings() {
        let mut m = Manifest::new(
            "t1",
            "x",
            Source::Url {
                url: "http://h/x".into(),
            },
        );
        let done = kv(&[("event", "completed"), ("jobId", "sum-t1")]);
        // A manifest that is not (yet) completed does not contradict the event.
        let plain = m.clone();
        let ev = map_entry(2, 9, &done, &move |_: &str| Some(plain.clone()));
        assert_eq!(
            ev[1].2,
            serde_json::json!({"taskId":"t1","status":"completed","warnings":[],"at":9})
        );
        m.set_warnings(
            Stage::Transcribe,
            vec!["speech at 00:10–00:20 has no text".into()],
        );
        m.complete_stage(Stage::LAST, vec![]);
        let ev = map_entry(2, 9, &done, &move |_: &str| Some(m.clone()));
        assert_eq!(ev[1].0, "task.completed");
        assert_eq!(
            ev[1].2,
            serde_json::json!({"taskId":"t1","status":"completed_with_warnings",
                "warnings":[{"stage":"transcribe","message":"speech at 00:10–00:20 has no text"}],"at":9})
        );
    }

    #[test]
    fn segment_jobs_map_to_their_task() {
        let none = |_: &str| None;
        let ev = map_entry(
            1,
            5,
            &kv(&[("event", "completed"), ("jobId", "seg2-yt-abc")]),
            &none,
        );
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].0, "stage.progress");
        assert_eq!(ev[0].1.as_deref(), Some("yt-abc"));
        assert_eq!(ev[0].2["segment"], 2);
        let ev = map_entry(
            1,
            5,
            &kv(&[("event", "failed"), ("jobId", "seg0-yt-abc")]),
            &none,
        );
        assert!(ev.is_empty());
        let ev = map_entry(
            1,
            5,
            &kv(&[("event", "delayed"), ("jobId", "seg0-yt-abc")]),
            &none,
        );
        assert_eq!(ev[0].0, "stage.failed");
        assert_eq!(ev[0].2["willRetry"], true);
    }

    #[test]
    fn partial_entries_resume_after_the_delivered_event() {
        let none = |_: &str| None;
        let entries: Vec<Entry> = vec![
            (
                "10-0".into(),
                kv(&[("event", "completed"), ("jobId", "sum-t1")]),
            ),
            (
                "11-0".into(),
                kv(&[("event", "active"), ("jobId", "sum-t2")]),
            ),
        ];
        let all = entries_to_events(2, &entries, None, &none);
        let ids: Vec<String> = all.iter().map(|e| e.pos.to_string()).collect();
        assert_eq!(ids, vec!["10-0~0", "10-0", "11-0"]);
        let rest = entries_to_events(2, &entries, Some(0), &none);
        let names: Vec<&str> = rest.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, vec!["task.completed", "stage.started"]);
    }
}
