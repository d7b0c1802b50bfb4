//! Duration-aware scheduling of transcribe jobs: shortest job first, with aging.
//!
//! BullMQ serves a queue's `prioritized` set lowest priority number first (0 = no priority,
//! which goes to the plain `wait` list and is served before every prioritized job, so we never
//! use it). The transcribe job of a task is created with the flow, before anyone knows how
//! long the audio is, with [`UNKNOWN_PRIORITY`]. When the download stage finishes — and
//! *before* its job completes — [`Scheduler::on_download_done`] writes the audio duration
//! into the transcribe job's data and calls `Job::change_priority` on it. The job is then in
//! `waiting-children`; BullMQ's `changePriority` Lua finds it in neither `wait` nor
//! `prioritized` and only sets the `priority` field of the job hash, and `moveToFinished`'s
//! `moveParentToWait` reads that field when the download completes and releases the parent
//! into `prioritized` with it (bullmq-official 1.4.4, `commands/changePriority-7.lua` and
//! `commands/moveToFinished-14.lua`). The queue test `tests/schedule.rs` proves the order.
//!
//! # Priority and aging
//!
//! For a job of `d` seconds of audio created at `t0` (the job's BullMQ timestamp), at time
//! `t`:
//!
//! ```text
//! priority(t) = clamp(ceil(d) − floor(r × (t − t0)), 1, MAX_PRIORITY)
//! ```
//!
//! with `r` = `schedule.aging_rate` (default 1.0). As long as no job is clamped at 1, the order
//! of the prioritized set is the order of the *virtual deadline* `t0 + d / r` — earliest
//! deadline first — so among jobs submitted together the shortest runs first, and a job of
//! `d` seconds is overtaken by at most the jobs whose deadline is earlier: none submitted
//! later than `t0 + d / r`. A long job therefore cannot starve: after waiting `d / r` it
//! outranks every new arrival. `r = 0` is pure shortest-job-first (starvation possible).
//!
//! Priorities in the set do not change by themselves: every transcribe worker process runs
//! [`Scheduler::spawn_ager`], which every few seconds recomputes the priority of each
//! prioritized transcribe job from its stored `audio_s` and timestamp and lowers it with
//! `change_priority` when it has aged by at least one step. The recomputation is a pure
//! function of stored fields, so several agers on several machines agree; a job that turns
//! active between the listing and the change only gets its (unused) hash field rewritten.

use std::sync::Arc;
use std::time::Duration;

use bullmq::{FlowJob, FlowProducer, FlowProducerOptions, Queue};
use serde::{Deserialize, Serialize};

use crate::domain::keys::PREFIX;
use crate::domain::Stage;
use crate::engine::redis::{connection, queue, QueueError};

/// The largest priority BullMQ accepts (`JobOptions::priority` docs: 2 097 152 = lowest; the
/// score is `priority × 2³² + counter` in a double).
pub const MAX_PRIORITY: u32 = 2_097_152;

/// Priority of a transcribe job whose duration is not known yet (as if it were 1 h long).
pub const UNKNOWN_PRIORITY: u32 = 3_600;

/// How often the ager re-ranks waiting transcribe jobs.
pub const AGING_INTERVAL: Duration = Duration::from_secs(5);

/// Seconds of audio by which a task in progress (its audio split into segment jobs) counts
/// shorter than its length: among tasks of the same length the one already started goes on
/// first, so the tasks of a batch finish one after another instead of all late (each split
/// first, then all their segments interleaved). Finishing a started task before an equal one
/// lowers every latency but one and the makespan not at all.
pub const IN_PROGRESS_CREDIT_S: f64 = 1.0;

/// The data field of a segment job holding when its task's transcribe job was queued (ms
/// since the epoch): the segment's age counts from then ([`job_priority`]).
pub const QUEUED_MS: &str = "queued_ms";

/// The priority of a waiting transcribe-queue job at `now_ms` from its BullMQ data and
/// `timestamp_ms` (its creation, ms since the epoch), or `None` when the data has no
/// `audio_s`. A transcribe job: [`priority`] of its `audio_s` aged since `timestamp_ms`. A
/// segment job (data with [`QUEUED_MS`], non-zero): its task's `audio_s` less
/// [`IN_PROGRESS_CREDIT_S`], aged since the task's transcribe job was queued, so its virtual
/// deadline is its task's and not the split's (segments created later must not fall behind
/// tasks that arrived with theirs).
pub fn job_priority(
    data: &serde_json::Value,
    timestamp_ms: u64,
    now_ms: u64,
    aging_rate: f64,
) -> Option<u32> {
    let audio_s = data.get("audio_s").and_then(serde_json::Value::as_f64)?;
    Some(
        match data.get(QUEUED_MS).and_then(serde_json::Value::as_u64) {
            Some(q) if q > 0 => segment_priority(audio_s, q, now_ms, aging_rate),
            _ => priority(
                audio_s,
                now_ms.saturating_sub(timestamp_ms) as f64 / 1000.0,
                aging_rate,
            ),
        },
    )
}

/// The priority at `now_ms` of a segment job of a task of `task_audio_s` seconds whose
/// transcribe job was queued at `queued_ms` (ms since the epoch): [`priority`] of the task's
/// audio less [`IN_PROGRESS_CREDIT_S`], aged since `queued_ms`.
pub fn segment_priority(task_audio_s: f64, queued_ms: u64, now_ms: u64, aging_rate: f64) -> u32 {
    let waited_s = now_ms.saturating_sub(queued_ms) as f64 / 1000.0;
    priority(
        (task_audio_s - IN_PROGRESS_CREDIT_S).max(0.0),
        waited_s,
        aging_rate,
    )
}

/// Priority of a split task's transcribe job once its segment jobs are queued
/// ([`rank_merge_first`]): its merge step, released when the last segment completes, takes
/// milliseconds and finishes the task, so it goes before every waiting job. With the task's
/// own priority it waited a whole segment's time for a slot behind the next tasks' segments
/// (`bench` full, `segment_s` 60: 3.2–3.6 s for each of five 1-minute clips).
pub const MERGE_PRIORITY: u32 = 1;

/// Gives `job` (a split task's transcribe job, active or waiting for its children)
/// [`MERGE_PRIORITY`]. BullMQ's `changePriority` only sets the job hash's `priority` field
/// when the job is in neither `wait` nor `prioritized`, and `moveParentToWait` reads that
/// field when the last child completes (bullmq-official 1.4.4, `changePriority-7.lua`), so
/// the merge step is queued with it. The ager never raises a priority, so it stays first.
///
/// # Errors
/// Redis errors, and a missing job.
pub async fn rank_merge_first(job: &bullmq::Job) -> Result<(), bullmq::Error> {
    job.change_priority(MERGE_PRIORITY, false).await
}

/// The scheduling fields kept in a transcribe job's data next to the task id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleData {
    /// The task id (as in `flow::JobData`).
    pub task_id: String,
    /// Audio duration in seconds, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio_s: Option<f64>,
}

/// BullMQ priority for `audio_s` seconds of audio after `waited_s` seconds of waiting, with
/// aging rate `aging_rate` (see the module docs for the formula). Always in
/// `1..=MAX_PRIORITY`; non-finite or negative inputs count as 0.
pub fn priority(audio_s: f64, waited_s: f64, aging_rate: f64) -> u32 {
    let fin = |x: f64| if x.is_finite() && x > 0.0 { x } else { 0.0 };
    let base = fin(audio_s).ceil();
    let credit = (fin(waited_s) * fin(aging_rate)).floor();
    (base - credit).clamp(1.0, MAX_PRIORITY as f64) as u32
}

fn now_ms() -> u64 {
    crate::domain::manifest::now_ms()
}

/// Sets and ages transcribe priorities through a connection to the transcribe queue.
pub struct Scheduler {
    transcribe: Queue,
    flows: FlowProducer,
    aging_rate: f64,
}

impl Scheduler {
    /// Connects to the transcribe queue on Redis at `url`.
    pub async fn connect(url: &str, aging_rate: f64) -> Result<Self, QueueError> {
        let transcribe = queue(url, Stage::Transcribe).await?;
        let flows = FlowProducer::with_options(
            FlowProducerOptions::new()
                .connection(connection(url))
                .prefix(PREFIX),
        )
        .await?;
        Ok(Self {
            transcribe,
            flows,
            aging_rate,
        })
    }

    /// Records `audio_s` in the task's transcribe job and gives the job its priority. Call
    /// it while the download job is still active, so the parent is released with it. Returns
    /// the priority set, or `None` when the transcribe job does not exist (removed task).
    pub async fn on_download_done(
        &self,
        task_id: &str,
        audio_s: f64,
    ) -> Result<Option<u32>, QueueError> {
        let Some(mut job) = self
            .transcribe
            .get_job(&Stage::Transcribe.job_id(task_id))
            .await?
        else {
            return Ok(None);
        };
        let mut data = job.data().clone();
        if let Some(o) = data.as_object_mut() {
            o.insert("audio_s".into(), serde_json::json!(audio_s));
        }
        job.update_data(data).await?;
        let waited_s = now_ms().saturating_sub(job.timestamp()) as f64 / 1000.0;
        let p = priority(audio_s, waited_s, self.aging_rate);
        job.change_priority(p, false).await?;
        Ok(Some(p))
    }

    /// One aging pass over the prioritized transcribe jobs: lowers each job's priority to
    /// [`job_priority`] of its data and age when that is lower. Returns how many jobs
    /// were re-ranked.
    pub async fn age_once(&self) -> Result<usize, QueueError> {
        if self.aging_rate <= 0.0 {
            return Ok(0);
        }
        let now = now_ms();
        let mut changed = 0;
        for job in self.transcribe.get_prioritized(0, -1).await? {
            let Some(p) = job_priority(job.data(), job.timestamp(), now, self.aging_rate) else {
                continue;
            };
            if p < job.priority() {
                job.change_priority(p, false).await?;
                changed += 1;
            }
        }
        Ok(changed)
    }

    /// Runs [`Scheduler::age_once`] every [`AGING_INTERVAL`] until the task is aborted.
    pub fn spawn_ager(self: Arc<Self>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(AGING_INTERVAL);
            tick.tick().await;
            loop {
                tick.tick().await;
                match self.age_once().await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(jobs = n, "aged transcribe priorities"),
                    Err(e) => tracing::warn!(error = %e, "aging transcribe priorities failed"),
                }
            }
        })
    }

    /// The transcribe queue (for adding segment jobs).
    pub fn transcribe_queue(&self) -> &Queue {
        &self.transcribe
    }

    /// Adds a flow atomically (a segment job of a long task; a no-op when its jobs exist).
    pub async fn add_flow(&self, flow: FlowJob) -> Result<(), QueueError> {
        self.flows.add(flow).await?;
        Ok(())
    }

    /// The configured aging rate.
    pub fn aging_rate(&self) -> f64 {
        self.aging_rate
    }

    /// Closes the connection.
    pub async fn close(&self) {
        self.flows.close().await;
        self.transcribe.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shorter_audio_gets_a_lower_number() {
        assert_eq!(priority(60.0, 0.0, 1.0), 60);
        assert_eq!(priority(59.2, 0.0, 1.0), 60);
        assert!(priority(60.0, 0.0, 1.0) < priority(300.0, 0.0, 1.0));
        assert_eq!(priority(0.0, 0.0, 1.0), 1);
        assert_eq!(priority(f64::NAN, 0.0, 1.0), 1);
        assert_eq!(priority(1e12, 0.0, 1.0), MAX_PRIORITY);
    }

    #[test]
    fn aging_is_earliest_virtual_deadline_first() {
        // A 40 min job submitted at t=0 and a 1 min job submitted at t=2370 s: deadlines
        // 2400 and 2430 → at t=2370 the long job ranks first.
        let t = 2370.0;
        assert!(priority(2400.0, t, 1.0) < priority(60.0, 0.0, 1.0));
        // …but a 1 min job submitted at t=2300 s (deadline 2360) still goes first.
        assert!(priority(60.0, t - 2300.0, 1.0) < priority(2400.0, t, 1.0));
        // Rate 0: no aging.
        assert_eq!(priority(2400.0, 1e6, 0.0), 2400);
        // Never below 1 (0 would mean "no priority" and jump the queue).
        assert_eq!(priority(10.0, 1e6, 1.0), 1);
    }

    #[test]
    fn a_split_task_keeps_its_place_and_goes_before_an_equal_one() {
        let t0 = 1_000_000u64;
        // Five 65 s tasks queued at t0; the first is split 8 s later into segment jobs.
        let waiting = serde_json::json!({"task_id": "b", "audio_s": 65.0});
        let segment = serde_json::json!({"task_id": "a", "audio_s": 65.0, "queued_ms": t0});
        let now = t0 + 8_000;
        let p_waiting = job_priority(&waiting, t0, now, 1.0).unwrap();
        let p_segment = job_priority(&segment, now, now, 1.0).unwrap();
        assert_eq!(p_waiting, 57);
        // Aged from its task's queueing, not from its own creation at `now`, and one second
        // of credit for being under way: it goes first.
        assert_eq!(p_segment, 56);
        // A 30 s task queued now still goes before both (shortest first) …
        let short = serde_json::json!({"task_id": "c", "audio_s": 30.0});
        assert!(job_priority(&short, now, now, 1.0).unwrap() < p_segment);
        // … and without a queueing time a segment ages from its own creation as before.
        let old = serde_json::json!({"task_id": "a", "audio_s": 65.0});
        assert_eq!(job_priority(&old, now, now, 1.0), Some(65));
        assert_eq!(
            job_priority(&serde_json::json!({"task_id": "x"}), t0, now, 1.0),
            None
        );
    }
}
