//! Layer 5, the engine: the flow shape on BullMQ — queues, workers, the attempt protocol
//! ([`queue`]), the fair-share [`schedule`] and long-file [`segments`] orchestration. The only
//! layer that speaks BullMQ; it runs the pipeline's stage work and records what it returns.

pub mod queue;
pub mod schedule;
pub mod segments;
