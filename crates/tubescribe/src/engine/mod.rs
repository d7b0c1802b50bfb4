//! Layer 5, the engine: the flow shape on BullMQ and the attempt protocol. The only layer
//! that speaks BullMQ; it runs the pipeline's stage work and records what it returns.
//!
//! * [`redis`] — connection options, queue handles, [`redis::QueueError`];
//! * [`flow`] — a task's flow, job options, backoff and the BullMQ encoding of a failure class;
//! * [`producer`] — adding flows, inspecting and removing jobs, cancelling active ones;
//! * [`workers`] — starting and closing the workers, dispatching a job by its name;
//! * [`attempt`] — ONE protocol for stage and segment jobs: admit → supervise → settle;
//! * [`schedule`] — the fair-share priorities of transcribe jobs;
//! * [`segments`] — long audio as segment jobs: the split/merge orchestration;
//! * [`reconcile`] — repairs task records that disagree with their jobs after faults;
//! * [`records`] — task records in Redis when no filesystem is shared (the store's backend).
//! * [`webhooks`] — the `webhook` queue: planning a task's deliveries when it ends, the
//!   delivery worker.
//!
//! Imports inside the engine point one way: `workers` → `attempt`, `segments`, `schedule`,
//! `webhooks`, `flow`, `producer`, `redis`; `attempt` never imports `segments`, `webhooks` or
//! `workers`; `schedule` never imports `workers`.

pub mod attempt;
pub mod flow;
pub mod producer;
pub mod reconcile;
pub mod records;
pub mod redis;
pub mod schedule;
pub mod segments;
pub mod webhooks;
pub mod workers;
