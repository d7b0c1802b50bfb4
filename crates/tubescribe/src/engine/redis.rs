//! The engine's Redis: connection options for BullMQ, queue handles under our prefix, and the
//! engine's error type ([`QueueError`]).

use bullmq::options::RedisConnectionOptions;
use bullmq::{Queue, QueueOptions};

use crate::domain::keys::PREFIX;
use crate::domain::{retry, Stage};
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

/// Whether `e` says the connection was lost or refused (Redis restarted, a network blip):
/// BullMQ's connections reconnect in the background, so the same command may succeed when
/// it is sent again.
pub fn is_connection_lost(e: &bullmq::Error) -> bool {
    matches!(e, bullmq::Error::Redis(r)
        if r.is_connection_dropped() || r.is_io_error() || r.is_connection_refusal())
}

/// The waits before sending a command again after its connection was lost: BullMQ's
/// reconnects start at 100 ms and back off (`ReconnectOptions` in bullmq-official 1.4.4).
/// Each is spread by up to half again ([`retry::backoff_wait`]), so the clients of a Redis
/// that just came back do not all resend in the same millisecond.
const RESEND_AFTER: [std::time::Duration; 3] = [
    std::time::Duration::from_millis(100),
    std::time::Duration::from_millis(400),
    std::time::Duration::from_millis(1500),
];

/// How long one resent command may wait for its connection: a Redis that is still down
/// keeps the reconnect cycle going far longer, and the caller should hear so now.
const RESEND_LIMIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Runs the idempotent Redis operation `op`, and again (up to three more times, each within
/// [`RESEND_LIMIT`]) while its error says the connection was lost. A BullMQ connection fails
/// the command in flight when its socket died and reconnects in the background, so without
/// this the first request after Redis came back would fail although Redis answers. While
/// Redis stays down the first error comes back after 2–3 s (the jittered waits).
///
/// # Errors
/// The first error when the connection does not come back; any other error at once.
pub async fn resending<T, F, Fut>(mut op: F) -> Result<T, bullmq::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, bullmq::Error>>,
{
    let lost = match op().await {
        Err(e) if is_connection_lost(&e) => e,
        done => return done,
    };
    for step in RESEND_AFTER {
        let wait = retry::backoff_wait(step, retry::draw());
        tracing::debug!("redis connection lost ({lost}); sending again in {wait:?}");
        tokio::time::sleep(wait).await;
        match tokio::time::timeout(RESEND_LIMIT, op()).await {
            Ok(Err(e)) if is_connection_lost(&e) => continue,
            Ok(done) => return done,
            Err(_) => break,
        }
    }
    Err(lost)
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
