//! The engine's Redis: connection options for BullMQ, queue handles under our prefix, and the
//! engine's error type ([`QueueError`]).

use bullmq::options::RedisConnectionOptions;
use bullmq::{Queue, QueueOptions};

use crate::domain::keys::PREFIX;
use crate::domain::Stage;
use crate::observe::events::EventError;

/// Errors talking to the queue. Redis errors are retryable (the server may come back).
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// An error from BullMQ or Redis.
    #[error("queue error: {0}")]
    Bull(#[from] bullmq::Error),
    /// An error connecting to the event stream alerts are published on.
    #[error("{0}")]
    Events(#[from] EventError),
}

/// Connection options for a Redis URL (`redis://`, `rediss://`, `redis+unix://`).
pub fn connection(url: &str) -> RedisConnectionOptions {
    RedisConnectionOptions::new().url(url)
}

/// A handle on `stage`'s queue on Redis at `url`, under BullMQ's default prefix
/// ([`PREFIX`], `bull`).
///
/// # Errors
/// Redis unreachable.
pub async fn queue(url: &str, stage: Stage) -> Result<Queue, QueueError> {
    Ok(Queue::with_options(
        stage.queue_name(),
        QueueOptions {
            connection: connection(url),
            prefix: PREFIX.into(),
            ..Default::default()
        },
    )
    .await?)
}
