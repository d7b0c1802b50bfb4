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
//! | 3 | `tubescribe:events` | [`EventLog`] (cancel, delete, prune, playlist expansion; alerts, see `alerts.rs`) | `task.cancelled`, `task.deleted`, `task.pruned`, `batch.created`, `alert` |
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
//!
//! **One order.** Live and replayed events follow the one order of [`super::cursor::order`]
//! (stream ms, stream index, seq, index within the entry), so a replay from `Last-Event-ID`
//! is exactly what the live stream sent after that event, ids included. Replay sorts what
//! it reads; the live reader ([`EventHub`]) holds events back until Redis's clock shows that
//! no stream can still get an earlier one (the watermark).
//!
//! **A task's follower** ([`EventHub::follow`] with a task) waits for a task that does not
//! exist yet and ends right after the task's final event (`task.completed`, `task.failed`,
//! `task.cancelled`, `task.deleted`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::domain::keys::PREFIX;
use crate::domain::keys::{OWN_STREAM, OWN_STREAM_MAXLEN};
use crate::domain::manifest::{Manifest, StageState, TaskStatus};
use crate::domain::options::Batch;
use crate::domain::retry;
use crate::domain::Stage;
use crate::observe::cursor::{order, Cursor, Pos, STREAMS};
use crate::store::DataDir;

/// Errors reading or writing events. Redis errors are retryable (the server may come back).
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// Redis refused or dropped the command.
    #[error("event stream: {0}")]
    Redis(#[from] redis::RedisError),
}

/// The wait before reading Redis again after an error: 1–1.5 s ([`retry::backoff_wait`]), so
/// the readers of many servers do not all come back in the same millisecond.
fn reconnect_wait() -> Duration {
    retry::backoff_wait(Duration::from_secs(1), retry::draw())
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
    /// `stage.failed`, `task.completed`, `task.failed`, `task.cancelled`, `task.deleted`,
    /// `task.pruned`, `batch.created` or `alert`.
    pub name: String,
    /// The task it concerns (`None` for alerts and batches).
    pub task_id: Option<String>,
    /// JSON payload (camelCase keys; always has `taskId` for task events and `at`, the Redis
    /// stream time in ms since the epoch).
    pub data: serde_json::Value,
}

impl Event {
    /// Its place in the one order of all events ([`order`]).
    pub fn order(&self) -> (u64, usize, u64, u64) {
        order(self.stream, self.pos)
    }

    /// True for the events that end a task: `task.completed`, `task.failed`,
    /// `task.cancelled`, `task.deleted`.
    pub fn ends_task(&self) -> bool {
        matches!(
            self.name.as_str(),
            "task.completed" | "task.failed" | "task.cancelled" | "task.deleted"
        )
    }
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

    /// `task.deleted` `{taskId, reason}`: the task and every file of it are gone; `reason` is
    /// `user` (a delete) or `retention` (`[retention] task_days`).
    pub async fn task_deleted(&self, task_id: &str, reason: &str) -> Result<(), EventError> {
        let data = serde_json::json!({"taskId": task_id, "reason": reason});
        self.emit("task.deleted", &data).await.map(|_| ())
    }

    /// `batch.created` `{batchId, kind, title, url, taskIds}`: a playlist or channel became
    /// these tasks (in listing order; some may have existed already) and the batch record
    /// `GET /api/batches/{batchId}`. Not a task event: only the all-tasks stream carries it.
    pub async fn batch_created(&self, b: &Batch) -> Result<(), EventError> {
        let ids: Vec<&str> = b.items.iter().map(|i| i.task_id.as_str()).collect();
        let data = serde_json::json!({"batchId": b.batch_id, "kind": b.kind, "title": b.title,
            "url": b.url, "taskIds": ids});
        self.emit("batch.created", &data).await.map(|_| ())
    }

    /// `task.pruned` `{taskId, files: [{kind, name, bytes, at}]}`: the retention policy deleted
    /// these files of the task (its manifest lists them under `pruned`).
    pub async fn task_pruned(
        &self,
        task_id: &str,
        files: &[crate::domain::manifest::PrunedFile],
    ) -> Result<(), EventError> {
        let data = serde_json::json!({"taskId": task_id, "files": files});
        self.emit("task.pruned", &data).await.map(|_| ())
    }
}

/// One raw stream entry: its id and its field/value pairs.
type Entry = (String, Vec<(String, String)>);

/// What `XREAD` returns: per stream with new entries, its key and those entries.
type XreadReply = Vec<(String, Vec<Entry>)>;

/// The last entry of each stream at or before `end` (an `XREVRANGE` bound: `+`, or
/// `(<ms>-0` for strictly before `<ms>`), as a cursor.
async fn tails(conn: &mut redis::aio::ConnectionManager, end: &str) -> Result<Cursor, EventError> {
    let mut tail = Cursor::default();
    for i in 0..STREAMS {
        let last: Vec<Entry> = redis::cmd("XREVRANGE")
            .arg(stream_key(i))
            .arg(end)
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(conn)
            .await?;
        if let Some(p) = last.first().and_then(|(id, _)| Pos::parse(id)) {
            tail.0[i] = p;
        }
    }
    Ok(tail)
}

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
            Some(task) => map_segment_entry(stage, kind, job_id, &f, task, at_ms, manifest),
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

    /// `completed`: `stage.completed`, and for the last stage `task.completed`. A summary
    /// made by the extractive fallback adds `fallback: {reason, at}` (the manifest's
    /// `stages.summarize.fallback`) to both.
    fn completed(&self) -> Vec<Mapped> {
        if self.stage != Stage::LAST {
            return vec![self.event("stage.completed", self.data(serde_json::json!({})))];
        }
        // The name stays `task.completed` for old clients; `status` tells a task completed
        // with warnings apart, `warnings` says why (from the manifest, when it agrees that the
        // task completed).
        let m = self.manifest().filter(|m| m.status.is_completed());
        let status = m.as_ref().map_or(TaskStatus::Completed, |m| m.status);
        let fallback = m.as_ref().and_then(|m| m.summary_fallback().cloned());
        let warnings = m.map(|m| m.warnings).unwrap_or_default();
        let mut stage = serde_json::json!({});
        let mut task = serde_json::json!({"taskId": self.task, "status": status, "warnings": warnings, "at": self.at_ms});
        if let Some(f) = fallback {
            stage["fallback"] = serde_json::json!(f);
            task["fallback"] = serde_json::json!(f);
        }
        vec![
            self.event("stage.completed", self.data(stage)),
            self.event("task.completed", task),
        ]
    }

    /// `delayed`: a failed attempt waiting for its retry, `stage.failed` with `willRetry` and
    /// `retryAt` (when the next attempt may start, from BullMQ's `delay` field).
    fn retrying(&self) -> Vec<Mapped> {
        let reason = self
            .manifest()
            .and_then(|m| m.stage(self.stage).and_then(|r| r.error.clone()))
            .unwrap_or_else(|| "attempt failed".into());
        vec![self.event(
            "stage.failed",
            self.data(
                serde_json::json!({"reason": reason, "retryable": true, "willRetry": true,
                "retryAt": retry_at(self.fields)}),
            ),
        )]
    }

    /// `failed` (a job's final failure): `stage.failed` unless the stage was skipped, and for
    /// the last stage `task.failed` unless the task was cancelled.
    fn failed(&self) -> Vec<Mapped> {
        let m = self.manifest();
        let raw = self.fields.get("failedReason").copied().unwrap_or("failed");
        // A `tr-` job failed by one of its segment jobs (BullMQ's `failParentOnFailure`
        // reason "child <key> failed") says why in the stage's record: the segment's error,
        // or "cancelled" when the task was cancelled while its segments ran.
        let from_record = m
            .as_ref()
            .filter(|_| crate::domain::keys::failed_child(raw).is_some())
            .and_then(|m| m.stage(self.stage).and_then(|r| r.error.clone()));
        let reason = from_record.as_deref().unwrap_or(raw);
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

/// When a `delayed` job may run again: BullMQ's `delay` field, the absolute time in ms since the
/// epoch (`moveToDelayed-11.lua`, `addDelayedJob` in `moveToFinished-14.lua`); `None` when absent.
fn retry_at(fields: &HashMap<&str, &str>) -> Option<u64> {
    fields.get("delay").and_then(|d| d.parse().ok())
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
    fields: &HashMap<&str, &str>,
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
                "retryable": true, "willRetry": true, "retryAt": retry_at(fields)}),
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

/// Per-stream event lists as one list in [`order`].
fn merge(lists: Vec<Vec<Event>>) -> Vec<Event> {
    let mut out: Vec<Event> = lists.into_iter().flatten().collect();
    out.sort_by_key(Event::order);
    out
}

/// Takes out of `held`, in [`order`], every event of a millisecond before `watermark_ms`: the
/// ones no stream can still precede (see [`EventHub`]).
fn release(held: &mut Vec<Event>, watermark_ms: u64) -> Vec<Event> {
    held.sort_by_key(Event::order);
    let n = held.partition_point(|e| e.pos.ms < watermark_ms);
    held.drain(..n).collect()
}

/// Entries the reader asks for per stream and `XREAD`.
const READ_COUNT: usize = 500;

/// Redis's clock (`TIME`) in ms since the epoch.
fn time_ms((secs, micros): (u64, u64)) -> u64 {
    secs * 1000 + micros / 1000
}

/// The server's single reader of the streams: one `XREAD` connection, events broadcast to
/// every SSE client in [`order`], and catch-up reads (`XRANGE`) for clients that resume.
///
/// **Watermark.** Redis gives an `XADD` at server time T an id of at least T ms (the id is
/// the larger of the clock and the stream's last id), and it runs commands one at a time.
/// So every entry with an id below what `TIME` answered is already in its stream when an
/// `XREAD` sent right after `TIME` runs, and that `XREAD` returns all of them (unless its
/// `COUNT` cut a stream short; then that stream is complete only below its last id's ms).
/// The reader sends `TIME` + `XREAD` in one pipeline, holds what it read, and sends on only
/// the events of milliseconds below that watermark, sorted: a later read can then never
/// bring an event that sorts before one already sent, and the live order is exactly the
/// order of [`EventHub::backlog`]. The cost is a hold-back of about a millisecond (while
/// events are held the reader polls every millisecond instead of blocking). Were Redis's
/// clock stepped back, an entry could come below the watermark: it is then sent late
/// (nothing is lost or repeated, only its place differs from a replay's).
#[derive(Clone)]
pub struct EventHub {
    inner: Arc<HubInner>,
}

struct HubInner {
    client: redis::Client,
    range_conn: redis::aio::ConnectionManager,
    data: DataDir,
    tx: broadcast::Sender<Arc<Event>>,
    /// The cut sent so far: every event at or before it (per stream) has been broadcast, every
    /// later one will be. Moved under this lock together with the broadcast.
    head: Mutex<Cursor>,
}

impl EventHub {
    /// Connects, takes as its start every entry older than Redis's clock now (a cut of the
    /// one order), and starts the reader task (stopped by `shutdown`).
    pub async fn start(
        url: &str,
        data: DataDir,
        shutdown: CancellationToken,
    ) -> Result<Self, EventError> {
        let client = redis::Client::open(url)?;
        let mut range_conn = redis::aio::ConnectionManager::new(client.clone()).await?;
        let now = time_ms(redis::cmd("TIME").query_async(&mut range_conn).await?);
        let head = tails(&mut range_conn, &format!("({now}-0")).await?;
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
                    tracing::warn!(error = %e, "event reader lost Redis; reconnecting in 1–1.5 s");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(reconnect_wait()) => {}
                    }
                }
            }
        });
        Ok(hub)
    }

    /// Whether a `task.created` of `task` was written after `from` (up to the streams' tails,
    /// which may be ahead of the hub's head): a retry that returned before the hub read it.
    async fn rerun_after(&self, from: &Cursor, task: &str) -> bool {
        let mut conn = self.inner.range_conn.clone();
        let Ok(tail) = tails(&mut conn, "+").await else {
            return false;
        };
        self.backlog(from, &tail).await.is_ok_and(|b| {
            b.iter()
                .any(|e| e.name == "task.created" && e.task_id.as_deref() == Some(task))
        })
    }

    fn lookup(&self) -> impl Fn(&str) -> Option<Manifest> + '_ {
        move |t: &str| {
            if !crate::domain::keys::valid_task_id(t) {
                return None;
            }
            self.inner.data.task(t).read_manifest().ok()
        }
    }

    /// Reads from the head on, holding events until the watermark passes them (see
    /// [`EventHub`]). After an error it is started again from the head: what it held is read
    /// again.
    async fn read_loop(&self) -> Result<(), EventError> {
        let cfg =
            redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(30)));
        let mut conn = self
            .inner
            .client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await?;
        let mut read = *self.inner.head.lock().expect("head lock");
        let mut held = Vec::new();
        loop {
            let mut xread = redis::cmd("XREAD");
            xread.arg("COUNT").arg(READ_COUNT);
            if held.is_empty() {
                xread.arg("BLOCK").arg(5000);
            }
            xread.arg("STREAMS");
            for i in 0..STREAMS {
                xread.arg(stream_key(i));
            }
            for p in read.0 {
                xread.arg(p.id());
            }
            let (now, reply): ((u64, u64), Option<XreadReply>) = redis::pipe()
                .cmd("TIME")
                .add_command(xread)
                .query_async(&mut conn)
                .await?;
            let mut watermark = time_ms(now);
            let lookup = self.lookup();
            for (key, entries) in reply.unwrap_or_default() {
                let Some(i) = (0..STREAMS).find(|i| stream_key(*i) == key) else {
                    continue;
                };
                if let Some(p) = entries.last().and_then(|(id, _)| Pos::parse(id)) {
                    read.0[i] = p;
                }
                if entries.len() >= READ_COUNT {
                    watermark = watermark.min(read.0[i].ms);
                }
                held.extend(entries_to_events(i, &entries, None, &lookup));
            }
            self.publish(release(&mut held, watermark));
            if !held.is_empty() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }

    /// Broadcasts `events` (in order) and moves the head past them, under the head lock.
    fn publish(&self, events: Vec<Event>) {
        let mut head = self.inner.head.lock().expect("head lock");
        for e in events {
            head.0[e.stream] = e.pos;
            let _ = self.inner.tx.send(Arc::new(e));
        }
    }

    /// A receiver of every event broadcast after the returned head.
    fn subscribe(&self) -> (broadcast::Receiver<Arc<Event>>, Cursor) {
        let head = self.inner.head.lock().expect("head lock");
        (self.inner.tx.subscribe(), *head)
    }

    /// Events after `from` up to and including `to` (per stream) that are still in the
    /// streams, in [`order`]. With `to` a head of the hub (a cut of the one order), this is
    /// exactly what the live stream sent between the two cuts.
    pub async fn backlog(&self, from: &Cursor, to: &Cursor) -> Result<Vec<Event>, EventError> {
        let mut conn = self.inner.range_conn.clone();
        let lookup = self.lookup();
        let mut lists = Vec::new();
        for i in 0..STREAMS {
            let (p, end) = (from.0[i], to.0[i]);
            if end <= p {
                continue;
            }
            let start = match p.sub {
                Some(_) => p.id(),
                None if p == Pos::default() => "-".to_string(),
                None => format!("({}", p.id()),
            };
            let entries: Vec<Entry> = redis::cmd("XRANGE")
                .arg(stream_key(i))
                .arg(start)
                .arg(end.id())
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
            let mut events = entries_to_events(i, &entries, skip, &lookup);
            events.retain(|e| e.pos <= end);
            lists.push(events);
        }
        Ok(merge(lists))
    }

    /// The event whose SSE id `c` is (the last one delivered before it), if still retained.
    async fn event_at(&self, c: &Cursor) -> Option<Event> {
        let (i, p) = c.last()?;
        let mut conn = self.inner.range_conn.clone();
        let entries: Vec<Entry> = redis::cmd("XRANGE")
            .arg(stream_key(i))
            .arg(p.id())
            .arg(p.id())
            .query_async(&mut conn)
            .await
            .ok()?;
        entries_to_events(i, &entries, None, &self.lookup())
            .into_iter()
            .find(|e| e.pos == p)
    }

    /// Follows the streams from `from` (or from now when `None`), sending events of `task`
    /// (all tasks when `None`) with the cursor to use as their SSE id, until the receiver is
    /// dropped or `shutdown` fires. The cursor advances past every event considered, so
    /// resuming from the id of the last event received yields exactly the events after it,
    /// in the same order and with the same ids.
    ///
    /// A task's follower ends (the receiver closes) right after the task's final event
    /// (`task.completed`, `task.failed`, `task.cancelled`, `task.deleted`), unless the backlog it read
    /// already shows the task run again (a later `task.created`: a retry); one resuming right
    /// after the final event ends at once unless the streams hold a later `task.created` (a
    /// retry that returned before the hub read its events). A task that does not exist yet is waited for.
    pub fn follow(
        &self,
        from: Option<Cursor>,
        task: Option<String>,
        shutdown: CancellationToken,
    ) -> mpsc::Receiver<(Cursor, Event)> {
        let (tx, rx) = mpsc::channel(256);
        let hub = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tx.closed() => {}
                _ = hub.feed(from, task.as_deref(), &tx) => {}
            }
        });
        rx
    }

    /// [`Self::follow`]'s body: returns when the follower ends or the receiver is gone.
    async fn feed(
        &self,
        from: Option<Cursor>,
        task: Option<&str>,
        tx: &mpsc::Sender<(Cursor, Event)>,
    ) {
        let wanted = |e: &Event| task.is_none() || e.task_id.as_deref() == task;
        let ends = |e: &Event| task.is_some() && e.ends_task();
        let mut ended = match from {
            Some(c) if task.is_some() => self
                .event_at(&c)
                .await
                .is_some_and(|e| wanted(&e) && ends(&e)),
            _ => false,
        };
        let mut resume = from;
        loop {
            // Catch up from the cursor to the head (at the start, and after falling behind
            // the broadcast), then follow the broadcast from that head.
            let (mut live, head) = self.subscribe();
            let cur = resume.get_or_insert(head);
            let backlog = loop {
                match self.backlog(cur, &head).await {
                    Ok(b) => break b,
                    Err(e) => {
                        tracing::warn!(error = %e, "event backlog read failed; retrying");
                        tokio::time::sleep(reconnect_wait()).await;
                    }
                }
            };
            let rerun = backlog
                .iter()
                .rposition(|e| wanted(e) && e.name == "task.created");
            if std::mem::take(&mut ended)
                && rerun.is_none()
                && !self.rerun_after(cur, task.unwrap_or_default()).await
            {
                return;
            }
            for (k, e) in backlog.into_iter().enumerate() {
                if e.pos <= cur.0[e.stream] {
                    continue;
                }
                cur.0[e.stream] = e.pos;
                if wanted(&e) {
                    let last = ends(&e) && rerun.is_none_or(|r| r < k);
                    if tx.send((*cur, e)).await.is_err() || last {
                        return;
                    }
                }
            }
            loop {
                let e = match live.recv().await {
                    Ok(e) => e,
                    Err(broadcast::error::RecvError::Lagged(_)) => break,
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if e.pos <= cur.0[e.stream] {
                    continue;
                }
                cur.0[e.stream] = e.pos;
                if wanted(&e) && (tx.send((*cur, (*e).clone())).await.is_err() || ends(&e)) {
                    return;
                }
            }
        }
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

    /// A task `t1` of a direct URL.
    fn url_task() -> Manifest {
        Manifest::new(
            "t1",
            "x",
            Source::Url {
                url: "http://h/x".into(),
            },
        )
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
        let mut m = url_task();
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
    fn task_completed_carries_status_warnings_and_fallback() {
        let mut m = url_task();
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
        let warned = m.clone();
        let ev = map_entry(2, 9, &done, &move |_: &str| Some(warned.clone()));
        assert_eq!(ev[1].0, "task.completed");
        assert_eq!(
            ev[1].2,
            serde_json::json!({"taskId":"t1","status":"completed_with_warnings",
                "warnings":[{"stage":"transcribe","message":"speech at 00:10–00:20 has no text"}],"at":9})
        );
        assert_eq!(
            ev[0].2,
            serde_json::json!({"taskId":"t1","stage":"summarize","at":9})
        );

        // The extractive fallback: its reason on the summarize stage's and the task's event.
        m.set_summary_fallback(Some(
            "LLM server error (503) after 5 attempt(s): down".into(),
        ));
        m.complete_stage(Stage::LAST, vec![]);
        let f = serde_json::json!(m.summary_fallback().unwrap());
        let ev = map_entry(2, 9, &done, &move |_: &str| Some(m.clone()));
        assert_eq!(ev[0].0, "stage.completed");
        assert_eq!(
            ev[0].2,
            serde_json::json!({"taskId":"t1","stage":"summarize","at":9,"fallback":f})
        );
        assert_eq!(ev[1].2["fallback"], f);
        assert_eq!(
            ev[1].2["warnings"][1]["message"],
            "LLM server error (503) after 5 attempt(s): down; the summary is the offline extractive one instead"
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
            &kv(&[
                ("event", "delayed"),
                ("jobId", "seg0-yt-abc"),
                ("delay", "1700000004000"),
            ]),
            &none,
        );
        assert_eq!(ev[0].0, "stage.failed");
        assert_eq!(ev[0].2["willRetry"], true);
        assert_eq!(ev[0].2["retryAt"], 1_700_000_004_000u64);
    }

    /// A `tr-` job failed by a segment job (BullMQ's reason "child … failed") reports the
    /// stage record's error: "cancelled" when the task was cancelled while segments ran.
    #[test]
    fn a_transcribe_job_failed_by_a_segment_says_why() {
        let mut m = url_task();
        m.start_stage(Stage::Download, 1);
        m.start_stage(Stage::Transcribe, 1);
        assert!(m.cancel());
        let lookup = move |_: &str| Some(m.clone());
        let ev = map_entry(
            1,
            7,
            &kv(&[
                ("event", "failed"),
                ("jobId", "tr-t1"),
                ("failedReason", "child bull:transcribe:seg2-t1 failed"),
            ]),
            &lookup,
        );
        assert_eq!(ev.len(), 1, "{ev:?}");
        assert_eq!(ev[0].0, "stage.failed");
        assert_eq!(ev[0].2["reason"], "cancelled");
        assert_eq!(ev[0].2["retryable"], false);
        // Without a record the raw reason stays.
        let none = |_: &str| None;
        let ev = map_entry(
            1,
            7,
            &kv(&[
                ("event", "failed"),
                ("jobId", "tr-t1"),
                ("failedReason", "child bull:transcribe:seg2-t1 failed"),
            ]),
            &none,
        );
        assert_eq!(ev[0].2["reason"], "child bull:transcribe:seg2-t1 failed");
    }

    #[test]
    fn a_delayed_stage_job_says_why_and_when_it_runs_again() {
        let mut m = url_task();
        m.start_stage(Stage::Download, 1);
        m.fail_stage(Stage::Download, "HTTP 503", None, true, false);
        let lookup = move |_: &str| Some(m.clone());
        let delayed = |delay: Option<&str>| {
            let mut f = vec![("event", "delayed"), ("jobId", "dl-t1")];
            f.extend(delay.map(|d| ("delay", d)));
            map_entry(0, 8, &kv(&f), &lookup)
        };
        assert_eq!(
            delayed(Some("1700000002000")),
            vec![(
                "stage.failed".to_string(),
                Some("t1".to_string()),
                serde_json::json!({"taskId":"t1","stage":"download","at":8,"reason":"HTTP 503",
                    "retryable":true,"willRetry":true,"retryAt":1_700_000_002_000u64})
            )]
        );
        // Without BullMQ's `delay` the time is unknown: `retryAt` is null.
        assert_eq!(delayed(None)[0].2["retryAt"], serde_json::Value::Null);
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

    #[test]
    fn live_release_follows_the_replay_order() {
        let none = |_: &str| None;
        let e = |id: &str, kind: &str, job: &str| -> Entry {
            (id.into(), kv(&[("event", kind), ("jobId", job)]))
        };
        let s0 = vec![
            e("100-0", "active", "dl-a"),
            e("100-1", "completed", "dl-a"),
            e("101-0", "active", "dl-b"),
        ];
        let s1 = vec![e("100-0", "active", "tr-c")];
        let s2 = vec![e("99-5", "completed", "sum-d")];
        let events = |i: usize, entries: &[Entry]| entries_to_events(i, entries, None, &none);
        let replay = merge(vec![events(0, &s0), events(1, &s1), events(2, &s2)]);
        // The reader sees ms 100 in two reads: stream 0's first entry and stream 1's with TIME
        // at 100, then stream 0's second with TIME at 101.
        let reads = [
            (
                100,
                vec![events(0, &s0[..1]), events(1, &s1), events(2, &s2)],
            ),
            (101, vec![events(0, &s0[1..2])]),
            (102, vec![events(0, &s0[2..])]),
        ];
        let (mut held, mut live, mut per_read) = (Vec::new(), Vec::new(), Vec::new());
        for (time_ms, lists) in reads {
            per_read.extend(merge(lists.clone()));
            held.extend(lists.into_iter().flatten());
            live.extend(release(&mut held, time_ms));
        }
        assert!(held.is_empty());
        let ids = |v: &[Event]| -> Vec<String> {
            v.iter()
                .map(|e| format!("{}:{}", e.stream, e.pos))
                .collect()
        };
        assert_eq!(
            ids(&live),
            ["2:99-5~0", "2:99-5", "0:100-0", "0:100-1", "1:100-0", "0:101-0"]
        );
        assert_eq!(live, replay);
        // Sorting each read on its own (the old reader) gave another order.
        assert_ne!(ids(&per_read), ids(&replay));
    }
}
