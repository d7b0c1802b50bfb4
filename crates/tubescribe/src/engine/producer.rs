//! The producer side of the flow: adding a task's flow, inspecting and removing its jobs,
//! queueing a task's webhooks ([`Producer::outbox`]), and cancelling a task's active jobs held
//! by this process's workers ([`Canceller`]).

use std::sync::Arc;

use bullmq::{FlowProducer, FlowProducerOptions, JobState, Queue, Worker};

use crate::config::{Config, StagePolicy};
use crate::domain::keys::PREFIX;
use crate::domain::Stage;
use crate::engine::flow::task_flow_with;
use crate::engine::redis::{connection, queue, resending, QueueError};
use crate::engine::webhooks::Outbox;

/// A producer connection: adds flows and inspects or removes jobs.
pub struct Producer {
    flows: FlowProducer,
    queues: Vec<(Stage, Queue)>,
    attempts: Vec<(Stage, u32)>,
    outbox: Outbox,
}

impl Producer {
    /// Reads every queue's job counts from Redis and publishes them as the
    /// `tubescribe_queue_jobs` metric ([`crate::observe::metrics::set_queue_jobs`]).
    ///
    /// # Errors
    /// Redis errors (the previous counts stay published).
    pub async fn publish_queue_counts(&self) -> Result<(), QueueError> {
        for s in Stage::ALL {
            let c = self.job_counts(s).await?;
            crate::observe::metrics::set_queue_jobs(
                s.queue_name(),
                &[
                    ("waiting", c.waiting + c.prioritized + c.paused),
                    ("waiting_children", c.waiting_children),
                    ("active", c.active),
                    ("delayed", c.delayed),
                    ("completed", c.completed),
                    ("failed", c.failed),
                ],
            );
        }
        Ok(())
    }

    /// The job counts of `stage`'s queue (also the server's readiness probe), sent again
    /// while a lost connection comes back.
    ///
    /// # Errors
    /// Redis unreachable.
    pub async fn job_counts(&self, stage: Stage) -> Result<bullmq::types::JobCounts, QueueError> {
        Ok(resending(|| self.queue(stage).get_job_counts()).await?)
    }

    /// How many workers are connected to `stage`'s queue now, in any process (BullMQ's worker
    /// list: the connections a worker names in Redis' `CLIENT LIST`). 0 also when the server
    /// refuses `CLIENT LIST` (some managed Redis services do).
    ///
    /// # Errors
    /// Redis unreachable.
    pub async fn worker_count(&self, stage: Stage) -> Result<usize, QueueError> {
        Ok(self.queue(stage).get_workers_count().await?)
    }

    /// Connects to Redis at `url`.
    pub async fn connect(url: &str) -> Result<Self, QueueError> {
        let flows = FlowProducer::with_options(
            FlowProducerOptions::new()
                .connection(connection(url))
                .prefix(PREFIX),
        )
        .await?;
        let mut queues = Vec::new();
        for s in Stage::ALL {
            queues.push((s, queue(url, s).await?));
        }
        let attempts = Stage::ALL
            .iter()
            .map(|s| (*s, StagePolicy::default_for(*s).attempts))
            .collect();
        Ok(Self {
            flows,
            queues,
            attempts,
            outbox: Outbox::connect(url).await?,
        })
    }

    /// The webhook outbox on the same Redis (for a callback added to a task that ended).
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// Uses the attempts configured per stage in `cfg` for the flows it adds, and `cfg`'s
    /// webhook settings.
    pub fn with_config(mut self, cfg: &Config) -> Self {
        self.outbox = self.outbox.with_config(cfg);
        self.attempts = cfg
            .stage_policies
            .iter()
            .map(|(s, p)| (*s, p.attempts))
            .collect();
        self
    }

    /// The queue of `stage`.
    pub fn queue(&self, stage: Stage) -> &Queue {
        &self
            .queues
            .iter()
            .find(|(s, _)| *s == stage)
            .expect("all stages")
            .1
    }

    /// Adds the flow of `task_id` (a no-op if its jobs exist already).
    pub async fn add_task(&self, task_id: &str) -> Result<(), QueueError> {
        let attempts = |s: Stage| {
            self.attempts
                .iter()
                .find(|(st, _)| *st == s)
                .map_or(1, |(_, a)| *a)
        };
        let flow = task_flow_with(task_id, &attempts)?;
        resending(|| self.flows.add(flow.clone())).await?;
        Ok(())
    }

    /// The BullMQ state of `stage`'s job of `task_id`, if the job exists.
    pub async fn job_state(
        &self,
        stage: Stage,
        task_id: &str,
    ) -> Result<Option<JobState>, QueueError> {
        self.state_of(stage, &stage.job_id(task_id)).await
    }

    /// The BullMQ state of the job `job_id` in `stage`'s queue (stage or segment job), if the
    /// job exists.
    pub async fn state_of(
        &self,
        stage: Stage,
        job_id: &str,
    ) -> Result<Option<JobState>, QueueError> {
        let q = self.queue(stage);
        match resending(|| q.get_job(job_id)).await? {
            None => Ok(None),
            Some(_) => Ok(Some(resending(|| q.get_job_state(job_id)).await?)),
        }
    }

    /// Removes the three jobs of `task_id` (root first), so the flow can be added again.
    /// Active jobs cannot be removed; returns false if one was.
    pub async fn remove_task_jobs(&self, task_id: &str) -> Result<bool, QueueError> {
        let mut all = true;
        for stage in Stage::ALL.iter().rev() {
            let (id, q) = (stage.job_id(task_id), self.queue(*stage));
            if resending(|| q.get_job(&id)).await?.is_some() && !resending(|| q.remove(&id)).await?
            {
                all = false;
            }
        }
        Ok(all)
    }

    /// Takes the lease `key` for `period` as `holder` (`SET key holder NX PX period`): true
    /// when this caller got it, false while another holds it. A lease is never released; it
    /// lapses after its period, so of many processes one acts per period (the reconciler, the
    /// retention pass).
    ///
    /// # Errors
    /// Redis unreachable.
    pub async fn take_lease(
        &self,
        key: &str,
        holder: &str,
        period: std::time::Duration,
    ) -> Result<bool, QueueError> {
        let ms = u64::try_from(period.as_millis()).unwrap_or(u64::MAX).max(1);
        let conn = self.queue(Stage::LAST).connection();
        let set: Option<String> = resending(|| async {
            let mut set = redis::cmd("SET");
            set.arg(key).arg(holder).arg("NX").arg("PX").arg(ms);
            conn.cmd(&mut set).await
        })
        .await?;
        Ok(set.is_some())
    }

    /// Gives up the lease `key` if `holder` still holds it (compare-and-delete in one script),
    /// so that the next process need not wait out the period (a stopping worker).
    ///
    /// # Errors
    /// Redis unreachable.
    pub async fn release_lease(&self, key: &str, holder: &str) -> Result<(), QueueError> {
        const SCRIPT: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
                              return redis.call('DEL', KEYS[1]) else return 0 end";
        let conn = self.queue(Stage::LAST).connection();
        let _: i64 = resending(|| async {
            let mut eval = redis::cmd("EVAL");
            eval.arg(SCRIPT).arg(1).arg(key).arg(holder);
            conn.cmd(&mut eval).await
        })
        .await?;
        Ok(())
    }

    /// Closes the connections.
    pub async fn close(&self) {
        self.flows.close().await;
        for (_, q) in &self.queues {
            q.close().await;
        }
        self.outbox.close().await;
    }
}

/// Cancels the active jobs of a task held by this process's workers (cloneable).
#[derive(Clone)]
pub struct Canceller {
    workers: Vec<(Stage, Arc<Worker>)>,
}

impl Canceller {
    /// A canceller over these stage workers (see `Workers::canceller`).
    pub(crate) fn new(workers: Vec<(Stage, Arc<Worker>)>) -> Self {
        Self { workers }
    }
}

impl Canceller {
    /// Cancels `task_id`'s active job in each stage worker here; returns how many were found.
    /// The job's cancel token stops the stage (child process group killed, whisper aborted).
    pub async fn cancel_task(&self, task_id: &str) -> usize {
        let mut n = 0;
        for (stage, w) in &self.workers {
            if w.cancel_job(&stage.job_id(task_id)).await {
                n += 1;
            }
        }
        n
    }
}
