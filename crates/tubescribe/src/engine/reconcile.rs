//! The reconciler: repairs tasks whose record (`manifest.json`) disagrees with their jobs in
//! BullMQ, at process start and every `[worker] reconcile_s` seconds.
//!
//! **Who is right about what.** BullMQ's job states are the truth about where a task is in
//! its flow: which job waits, runs, failed (and why) or is gone. The task record is the truth
//! about what the user sees (status, stage states, error) and about outputs (size + SHA-256),
//! and it is the list of tasks that exist. Workers keep the two in step while they run a job
//! (`attempt.rs` writes the record before it tells BullMQ); faults in between are what this
//! module repairs. For each task that is not final and whose record has been quiet for a
//! period, it reads the task's jobs and decides one [`Repair`]:
//!
//! * a job **failed** in Redis without its worker recording it (the stalled-job check failed a
//!   job whose worker died too often, or a worker died between BullMQ's failure and its own
//!   record) → the task fails with BullMQ's reason, traced through `child … failed` links to
//!   the job that failed first (a segment, a download) and put in words;
//! * the flow is **lost** (the root job is gone, or no job of the task can ever run again:
//!   Redis restarted without its data, a job removed by hand) → the flow is added again; a
//!   stage whose outputs are complete is reused by the attempt protocol, not run again. After
//!   [`MAX_REQUEUES`] such repairs the task fails instead, with the reason;
//! * a stage the record calls **active** whose job is back in the queue (its worker died and
//!   the stalled-job check moved it) → the stage is waiting again, its attempt interrupted.
//!
//! **Safe on many machines.** A pass runs only under a lease in Redis
//! ([`crate::domain::keys::RECONCILER_LEASE`], `SET NX PX` for one period), so one process
//! reconciles per period. Each repair is compare-and-set on the record: it is written only if
//! the record is exactly what the decision was made on, so a worker that touched the task
//! meanwhile wins. Adding a flow is idempotent (job ids are the task's). A deleted task is
//! gone from the list of tasks (its directory is renamed away first), and a flow is added
//! again only while the task still exists, so the reconciler never brings a deleted task back.

use std::time::Duration;

use bullmq::JobState;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::domain::keys::{failed_child, job_of_key, RECONCILER_LEASE};
use crate::domain::manifest::{now_ms, Manifest, StageState};
use crate::domain::Stage;
use crate::engine::flow::decode_failure;
use crate::engine::producer::Producer;
use crate::engine::redis::{resending, QueueError};
use crate::store::DataDir;

/// Re-enqueues of a lost flow allowed per task run before the reconciler fails the task.
pub const MAX_REQUEUES: u32 = 3;
/// The least time a task's record must have been left alone before a pass looks at it: a
/// submit or retry between writing the record and adding the flow is far quicker.
pub const MIN_QUIET: Duration = Duration::from_secs(5);
/// How deep `child … failed` links are followed (stage → segment); deeper is a loop.
const MAX_DEPTH: usize = 64;

/// What one pass did to one task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Repair {
    /// The task failed: a job failed in Redis that no worker recorded.
    Failed {
        /// The stage whose job failed first.
        stage: Stage,
        /// The reason, in words (BullMQ's text included).
        reason: String,
    },
    /// The flow was added again (its jobs were gone).
    Requeued,
    /// These stages were active in the record but their jobs are back in the queue.
    Waiting(Vec<Stage>),
}

/// What a task's jobs say, read from BullMQ.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    /// Some job can still run; these stages' jobs are queued (not active).
    Live { queued: Vec<Stage> },
    /// A job failed for good; the first failure's stage and BullMQ's reason.
    Failed { stage: Stage, reason: String },
    /// Nothing of the flow can run again.
    Lost,
}

/// Repairs task records against BullMQ; see the module docs.
pub struct Reconciler {
    data: DataDir,
    producer: Producer,
    /// A task whose record changed more recently than this is left alone this pass.
    quiet: Duration,
    /// This process, as the lease holder: `<host>:<pid>`.
    me: String,
}

impl Reconciler {
    /// A reconciler over the tasks in `data` and the queues of `producer`, leaving alone tasks
    /// whose record changed within the last `quiet`.
    pub fn new(data: DataDir, producer: Producer, quiet: Duration) -> Self {
        Self {
            data,
            producer,
            quiet,
            me: crate::engine::attempt::worker_name(),
        }
    }

    /// Takes the lease for `period` and, if it got it, reconciles every task once. Returns
    /// the repairs made (none when another process holds the lease).
    ///
    /// # Errors
    /// Redis unreachable (the pass stops at the first such error; the next one goes on).
    pub async fn pass(&self, period: Duration) -> Result<Vec<(String, Repair)>, QueueError> {
        if !self.take_lease(period).await? {
            return Ok(Vec::new());
        }
        let mut repairs = Vec::new();
        let ids = self.data.task_ids().unwrap_or_default();
        for id in ids {
            if let Some(r) = self.reconcile_task(&id).await? {
                tracing::warn!(task = %id, repair = ?r, "reconciler repaired the task's record");
                repairs.push((id, r));
            }
        }
        Ok(repairs)
    }

    async fn take_lease(&self, period: Duration) -> Result<bool, QueueError> {
        self.producer
            .take_lease(RECONCILER_LEASE, &self.me, period)
            .await
    }

    /// Decides and applies the repair of one task, if it needs one.
    async fn reconcile_task(&self, task_id: &str) -> Result<Option<Repair>, QueueError> {
        let task = self.data.task(task_id);
        let Ok(seen) = task.read_manifest() else {
            return Ok(None);
        };
        let quiet_ms = u64::try_from(self.quiet.as_millis()).unwrap_or(u64::MAX);
        if seen.status.is_final() || now_ms().saturating_sub(seen.updated_at) < quiet_ms {
            return Ok(None);
        }
        let verdict = self.verdict(task_id).await?;
        let Some(repair) = repair_for(&seen, verdict) else {
            return Ok(None);
        };
        // Compare-and-set: only on the record the decision was made on.
        let applied = task
            .modify_manifest(|m| (*m == seen).then(|| apply(m, &repair)).is_some())
            .unwrap_or(false);
        if !applied {
            return Ok(None);
        }
        if repair == Repair::Requeued && !self.requeue(task_id).await? {
            return Ok(None);
        }
        if let Repair::Failed { .. } = repair {
            // The task ended here, not in a worker: its webhooks are queued here too.
            if let Err(e) = self.producer.outbox().notify(&task).await {
                tracing::warn!(task = %task_id, error = %e, "cannot queue the task's webhooks");
            }
        }
        Ok(Some(repair))
    }

    /// Removes what is left of the task's flow and adds it again; false when a job of it is
    /// active after all (the record says waiting; the worker's attempt will say otherwise), or
    /// when the task was deleted meanwhile (a deleted task's flow is never added again).
    async fn requeue(&self, task_id: &str) -> Result<bool, QueueError> {
        if !self.producer.remove_task_jobs(task_id).await? {
            return Ok(false);
        }
        if !self.data.task(task_id).exists() {
            return Ok(false);
        }
        self.producer.add_task(task_id).await?;
        Ok(true)
    }

    /// What the task's jobs say: the first failure (download first), else whether any job of
    /// the flow can still run.
    async fn verdict(&self, task_id: &str) -> Result<Verdict, QueueError> {
        for stage in Stage::ALL {
            if let Some((failed_stage, reason)) =
                self.failure(stage, &stage.job_id(task_id)).await?
            {
                return Ok(Verdict::Failed {
                    stage: failed_stage,
                    reason,
                });
            }
        }
        if !self.live(Stage::LAST, &Stage::LAST.job_id(task_id)).await? {
            return Ok(Verdict::Lost);
        }
        let mut queued = Vec::new();
        for stage in Stage::ALL {
            let state = self.producer.job_state(stage, task_id).await?;
            if matches!(
                state,
                Some(JobState::Waiting | JobState::Prioritized | JobState::Delayed)
            ) {
                queued.push(stage);
            }
        }
        Ok(Verdict::Live { queued })
    }

    /// If the job failed for good (or carries a deferred failure from a child, which fails it
    /// as soon as a worker picks it up): the stage of the job that failed first and its
    /// reason, following `child <key> failed` links down.
    async fn failure(
        &self,
        mut stage: Stage,
        job_id: &str,
    ) -> Result<Option<(Stage, String)>, QueueError> {
        let mut id = job_id.to_string();
        let mut found = None;
        for _ in 0..MAX_DEPTH {
            let q = self.producer.queue(stage);
            let Some(job) = resending(|| q.get_job(&id)).await? else {
                break;
            };
            let reason = match job.deferred_failure() {
                Some(r) => r.to_string(),
                None if resending(|| q.get_job_state(&id)).await? == JobState::Failed => {
                    job.failed_reason().to_string()
                }
                None => break,
            };
            match failed_child(&reason) {
                Some((s, child)) => {
                    found.get_or_insert((stage, reason.clone()));
                    (stage, id) = (s, child);
                }
                None => return Ok(Some((stage, reason))),
            }
        }
        Ok(found)
    }

    /// Whether the job can still run or is running: waiting, prioritized, delayed or active,
    /// or waiting for a child that can.
    async fn live(&self, stage: Stage, job_id: &str) -> Result<bool, QueueError> {
        let mut pending = vec![(stage, job_id.to_string())];
        let mut seen = 0;
        while let Some((stage, id)) = pending.pop() {
            seen += 1;
            if seen > MAX_DEPTH * 4 {
                return Ok(true);
            }
            match self.producer.state_of(stage, &id).await? {
                None | Some(JobState::Completed | JobState::Failed) => {}
                Some(JobState::WaitingChildren) => {
                    let q = self.producer.queue(stage);
                    let children = resending(|| q.get_unprocessed_dependencies(&id)).await?;
                    pending.extend(children.iter().filter_map(|k| job_of_key(k)));
                }
                // Waiting, active, delayed, prioritized, and anything BullMQ adds later.
                Some(_) => return Ok(true),
            }
        }
        Ok(false)
    }
}

/// Runs a [`Reconciler`] over `data` on the Redis at `url` now and then every `period`, with
/// `period` (at least [`MIN_QUIET`]) as its quiet time, until `stop` fires. A task it fails
/// sends its `task.failed` webhooks (`cfg`'s endpoints and the task's callbacks). While Redis is unreachable a pass is
/// skipped (and connecting is tried again next period).
pub fn spawn(
    url: String,
    data: DataDir,
    cfg: Config,
    period: Duration,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut rec: Option<Reconciler> = None;
        loop {
            if rec.is_none() {
                match Producer::connect(&url).await {
                    Ok(p) => {
                        let p = p.with_config(&cfg);
                        rec = Some(Reconciler::new(data.clone(), p, period.max(MIN_QUIET)));
                    }
                    Err(e) => tracing::debug!("reconciler: {e}"),
                }
            }
            if let Some(r) = &rec {
                if let Err(e) = r.pass(period).await {
                    tracing::debug!("reconciler pass stopped: {e}");
                }
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(period) => {}
            }
        }
        if let Some(r) = rec {
            r.producer.close().await;
        }
    })
}

/// BullMQ's reason for a job that failed outside any worker's attempt, in words.
fn explain(stage: Stage, reason: &str) -> String {
    if reason.contains("stalled more than allowable limit") {
        format!(
            "the worker running the {stage} stage stopped responding too often (killed, out of memory or hung), so the queue gave up on it ({reason}); retry the task"
        )
    } else {
        // A worker's own failure text may carry the backoff's mark (`flow.rs`).
        let message = decode_failure(&bullmq::Error::ProcessingError(reason.to_string()))
            .map_or_else(|| reason.to_string(), |e| e.message);
        format!("the {stage} stage failed in the queue: {message}")
    }
}

/// The repair a task whose record is `m` needs when its jobs say `v`; `None` when they agree.
fn repair_for(m: &Manifest, v: Verdict) -> Option<Repair> {
    match v {
        Verdict::Failed { stage, reason } => Some(Repair::Failed {
            stage,
            reason: explain(stage, &reason),
        }),
        Verdict::Lost if m.requeues >= MAX_REQUEUES => Some(Repair::Failed {
            stage: first_unfinished(m),
            reason: format!(
                "the task's jobs disappeared from Redis {} times (was Redis restarted without its data?); it is not enqueued again — retry the task",
                m.requeues + 1
            ),
        }),
        Verdict::Lost => Some(Repair::Requeued),
        Verdict::Live { queued } => {
            let stale: Vec<Stage> = queued
                .into_iter()
                .filter(|s| m.stage(*s).is_some_and(|r| r.state == StageState::Active))
                .collect();
            (!stale.is_empty()).then_some(Repair::Waiting(stale))
        }
    }
}

/// The first stage that is not completed (where a failure of the whole flow is recorded).
fn first_unfinished(m: &Manifest) -> Stage {
    Stage::ALL
        .into_iter()
        .find(|s| m.stage(*s).is_none_or(|r| r.state != StageState::Completed))
        .unwrap_or(Stage::LAST)
}

/// Writes `repair` into the record.
fn apply(m: &mut Manifest, repair: &Repair) {
    match repair {
        Repair::Failed { stage, reason } => {
            m.interrupt_open_attempts(*stage);
            m.fail_stage(*stage, reason, None, true, true);
        }
        Repair::Requeued => {
            m.requeues += 1;
            for s in Stage::ALL {
                m.requeue_stage(s);
            }
        }
        Repair::Waiting(stages) => {
            for s in stages {
                m.requeue_stage(*s);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::manifest::{Source, TaskStatus};

    fn running() -> Manifest {
        let mut m = Manifest::new(
            "file-abc",
            "/x.wav",
            Source::File {
                path: "/x.wav".into(),
            },
        );
        m.start_attempt(Stage::Download, 1, "h:1");
        m.record_completion(Stage::Download, vec![], serde_json::json!({}));
        m.end_attempt(
            Stage::Download,
            1,
            crate::domain::manifest::AttemptOutcome::Completed,
            None,
        );
        m.start_attempt(Stage::Transcribe, 3, "h:2");
        m
    }

    #[test]
    fn a_stalled_out_job_fails_the_task_with_the_reason_in_words() {
        let mut m = running();
        let r = repair_for(
            &m,
            Verdict::Failed {
                stage: Stage::Transcribe,
                reason: "job stalled more than allowable limit".into(),
            },
        )
        .unwrap();
        apply(&mut m, &r);
        assert_eq!(m.status, TaskStatus::Failed);
        let e = m.error.as_ref().unwrap();
        assert_eq!(e.stage, Stage::Transcribe);
        assert!(
            e.message
                .starts_with("the worker running the transcribe stage stopped responding")
                && e.message
                    .contains("(job stalled more than allowable limit)"),
            "{}",
            e.message
        );
        let t = m.stage(Stage::Transcribe).unwrap();
        assert_eq!(t.state, StageState::Failed);
        assert_eq!(
            t.attempt_log.last().unwrap().outcome,
            Some(crate::domain::manifest::AttemptOutcome::Interrupted)
        );
        assert_eq!(
            m.stage(Stage::Summarize).unwrap().state,
            StageState::Skipped
        );
    }

    #[test]
    fn a_lost_flow_is_requeued_a_few_times_then_fails() {
        let mut m = running();
        for n in 1..=MAX_REQUEUES {
            let r = repair_for(&m, Verdict::Lost).unwrap();
            assert_eq!(r, Repair::Requeued);
            apply(&mut m, &r);
            assert_eq!(m.requeues, n);
            // The completed download stays; the interrupted transcribe waits again.
            assert_eq!(
                m.stage(Stage::Download).unwrap().state,
                StageState::Completed
            );
            assert_eq!(
                m.stage(Stage::Transcribe).unwrap().state,
                StageState::Waiting
            );
        }
        let r = repair_for(&m, Verdict::Lost).unwrap();
        let Repair::Failed { stage, reason } = &r else {
            panic!("{r:?}")
        };
        assert_eq!(*stage, Stage::Transcribe);
        assert!(reason.starts_with("the task's jobs disappeared from Redis 4 times"));
        apply(&mut m, &r);
        assert_eq!(m.status, TaskStatus::Failed);
        // A retry starts the count again.
        m.reset_for_retry(&[Stage::Download]);
        assert_eq!(m.requeues, 0);
    }

    #[test]
    fn only_active_stages_whose_job_is_queued_go_back_to_waiting() {
        let m = running();
        assert_eq!(
            repair_for(
                &m,
                Verdict::Live {
                    queued: vec![Stage::Transcribe]
                }
            ),
            Some(Repair::Waiting(vec![Stage::Transcribe]))
        );
        // The summarize job waits for its child: nothing to repair.
        assert_eq!(
            repair_for(
                &m,
                Verdict::Live {
                    queued: vec![Stage::Summarize]
                }
            ),
            None
        );
        assert_eq!(repair_for(&m, Verdict::Live { queued: vec![] }), None);
    }
}
