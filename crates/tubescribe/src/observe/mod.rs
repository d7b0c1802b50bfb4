//! Layer 3, observation: Prometheus [`metrics`] (a leaf that takes numbers), the event log and
//! SSE mapping ([`events`], with the SSE event id codec in [`cursor`]), and [`alerts`].
//! Observation is recorded by the engine from what stages return; stages never call into it.

pub mod alerts;
pub mod cursor;
pub mod events;
pub mod metrics;
pub mod rss;
