//! The flow shape of a task on BullMQ, its jobs' options and retry backoff, and the encoding
//! of a failure's class in BullMQ's error text.
//!
//! Each task is one flow: the root is the `summarize` job, its child the `transcribe` job,
//! whose child is the `download` job (BullMQ runs children first). Job ids are derived from
//! the task id (`dl-`, `tr-`, `sum-`), so adding the same flow twice is a no-op. Every child
//! has `fail_parent_on_failure`, so a failed download fails the whole task and nothing waits
//! forever. Keys use BullMQ's default `bull` prefix, so Node BullMQ and Bull Board can read
//! the same queues.
//!
//! BullMQ knows a failure only as an error kind and a text (`failedReason`). The one pair
//! [`encode_failure`] / [`decode_failure`] maps a [`FailureClass`] onto them and back; the
//! backoff strategy ([`backoff_delay_ms`]) reads the class from the text and spreads every
//! wait at random above its floor ([`crate::domain::retry`]), `Retry-After` waits included.
//! Stage jobs and long audio's segment jobs use this one strategy ([`BACKOFF_NAME`]).

use std::time::Duration;

use bullmq::types::BackoffStrategy;
use bullmq::{FlowJob, JobOptions};
use serde::{Deserialize, Serialize};

use crate::config::StagePolicy;
use crate::domain::{retry, FailureClass, Stage};
use crate::engine::redis::QueueError;
use crate::pipeline::StageError;

/// Name of our custom backoff strategy (see [`backoff_delay_ms`]).
pub const BACKOFF_NAME: &str = "tubescribe";
/// Marker at the start of a failure message that asks for a cool-down backoff.
const COOL_DOWN_MARK: &str = "cool-down: ";
/// Marker of a cool-down with the service's own wait: `cool-down <ms> ms: <message>`.
const WAIT_MARK: &str = "cool-down ";

/// The data every job of a task carries.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobData {
    /// The task id (directory name under `<data>/tasks`).
    pub task_id: String,
}

/// The BullMQ error a failed attempt hands back. Permanent and cancelled failures are
/// `Unrecoverable` (no retry; the text is the message), retryable ones `ProcessingError` with
/// the message, cool-downs `ProcessingError` with a mark the backoff reads:
/// `cool-down: <message>`, or `cool-down <ms> ms: <message>` with the service's wait.
pub fn encode_failure(e: StageError) -> bullmq::Error {
    match e.class {
        FailureClass::Permanent | FailureClass::Cancelled => {
            bullmq::Error::Unrecoverable(e.message)
        }
        FailureClass::Retryable => bullmq::Error::ProcessingError(e.message),
        FailureClass::CoolDown { wait: None } => {
            bullmq::Error::ProcessingError(format!("{COOL_DOWN_MARK}{}", e.message))
        }
        FailureClass::CoolDown { wait: Some(w) } => bullmq::Error::ProcessingError(format!(
            "{WAIT_MARK}{} ms: {}",
            w.as_millis(),
            e.message
        )),
    }
}

/// The failure [`encode_failure`] made `e` from (class and message); `None` for BullMQ errors
/// of other kinds. An unrecoverable [`StageError::CANCELLED`] is a cancellation.
pub fn decode_failure(e: &bullmq::Error) -> Option<StageError> {
    Some(match e {
        bullmq::Error::Unrecoverable(m) if m == StageError::CANCELLED => StageError::cancelled(),
        bullmq::Error::Unrecoverable(m) => StageError::permanent(m.clone()),
        bullmq::Error::ProcessingError(m) => {
            if let Some(rest) = m.strip_prefix(COOL_DOWN_MARK) {
                StageError::cool_down(rest)
            } else if let Some((ms, rest)) = m
                .strip_prefix(WAIT_MARK)
                .and_then(|r| r.split_once(" ms: "))
                .and_then(|(n, rest)| Some((n.parse::<u64>().ok()?, rest)))
            {
                StageError::new(
                    FailureClass::CoolDown {
                        wait: Some(Duration::from_millis(ms)),
                    },
                    rest,
                )
            } else {
                StageError::retryable(m.clone())
            }
        }
        _ => return None,
    })
}

/// Backoff before retry number `attempt` (1-based) of a job whose attempt failed with
/// `error_message` (BullMQ's `failedReason`, see [`encode_failure`]), in ms, with `draw` the
/// random part (uniform in `[0, 1)`, [`retry::draw`]; a parameter so tests pin it).
///
/// The step is `base_ms × 2^(attempt−1)`, or for cool-down failures (bot checks, HTTP 429)
/// `cool_down_ms × 2^(attempt−1)` — the defaults are 2 s (5 s for summaries) and 5 min per
/// stage ([`StagePolicy`]) — and the wait is spread over half a step above it
/// ([`retry::backoff_wait`]: `[step, 1.5·step]`). A cool-down whose service named its wait
/// (`Retry-After`, `w`) waits at least `max(w, base_ms)`, spread by a quarter of that or one
/// `base_ms`, whichever is longer ([`retry::asked_wait`]), so jobs told the same wait do not
/// come back in the same millisecond.
pub fn backoff_delay_ms(
    attempt: u32,
    error_message: &str,
    base_ms: i64,
    cool_down_ms: i64,
    draw: f64,
) -> i64 {
    let class = decode_failure(&bullmq::Error::ProcessingError(error_message.to_string()))
        .map_or(FailureClass::Retryable, |e| e.class);
    let ms = |v: i64| Duration::from_millis(u64::try_from(v).unwrap_or(0));
    let step = |v: i64| ms(v.saturating_mul(2i64.pow(attempt.saturating_sub(1).min(10))));
    let wait = match class {
        FailureClass::CoolDown { wait: Some(w) } => {
            retry::asked_wait(w.max(ms(base_ms)), ms(base_ms), draw)
        }
        FailureClass::CoolDown { wait: None } => retry::backoff_wait(step(cool_down_ms), draw),
        _ => retry::backoff_wait(step(base_ms), draw),
    };
    i64::try_from(wait.as_millis()).unwrap_or(i64::MAX)
}

fn job_options(stage: Stage, task_id: &str, attempts: u32) -> JobOptions {
    let mut o = JobOptions::new()
        .job_id(stage.job_id(task_id))
        .attempts(attempts)
        .backoff(BackoffStrategy::Custom(BACKOFF_NAME.into()));
    if stage != Stage::LAST {
        o = o.fail_parent_on_failure();
    }
    if stage == Stage::Transcribe {
        // Until the download knows the duration (schedule.rs sets the real priority).
        o = o.priority(crate::engine::schedule::UNKNOWN_PRIORITY);
    }
    o
}

/// The flow of one task: summarize ← transcribe ← download, with each stage's default
/// attempts ([`StagePolicy::default_for`]).
pub fn task_flow(task_id: &str) -> Result<FlowJob, QueueError> {
    task_flow_with(task_id, &|s| StagePolicy::default_for(s).attempts)
}

/// The flow of one task with `attempts(stage)` attempts per stage job.
pub fn task_flow_with(
    task_id: &str,
    attempts: &dyn Fn(Stage) -> u32,
) -> Result<FlowJob, QueueError> {
    let data = serde_json::json!(JobData {
        task_id: task_id.to_string()
    });
    let mut node: Option<FlowJob> = None;
    for stage in Stage::ALL {
        let mut j = FlowJob::new(stage.queue_name(), stage.queue_name(), data.clone())?
            .options(job_options(stage, task_id, attempts(stage)));
        if let Some(child) = node.take() {
            j = j.add_child(child);
        }
        node = Some(j);
    }
    Ok(node.expect("three stages"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_failure_class_round_trips_through_bullmq() {
        let failures = [
            StageError::permanent("video is private"),
            StageError::retryable("HTTP 503"),
            StageError::cool_down("bot check"),
            StageError::cool_down_for("LLM API rate limit", Duration::from_secs(3600)),
            StageError::cancelled(),
        ];
        for e in failures {
            let bull = encode_failure(e.clone());
            assert_eq!(decode_failure(&bull).as_ref(), Some(&e), "{bull:?}");
            // What BullMQ retries is exactly what the class says may succeed.
            let retried = matches!(bull, bullmq::Error::ProcessingError(_));
            assert_eq!(retried, e.is_retryable(), "{e:?}");
        }
        // The text a user sees in BullMQ stays the message (with the backoff's mark).
        assert_eq!(
            encode_failure(StageError::cancelled()).to_string(),
            bullmq::Error::Unrecoverable("cancelled".into()).to_string()
        );
        assert!(decode_failure(&bullmq::Error::Delayed).is_none());
    }

    #[test]
    fn backoff_grows_and_cool_down_waits_long() {
        // The floor (draw 0) and the top (draw 1) of each wait.
        let at = |attempt, msg, base, cool| {
            [0.0, 1.0].map(|d| backoff_delay_ms(attempt, msg, base, cool, d))
        };
        assert_eq!(at(1, "HTTP 503", 2_000, 300_000), [2_000, 3_000]);
        assert_eq!(at(3, "HTTP 503", 2_000, 300_000), [8_000, 12_000]);
        assert_eq!(
            at(1, "cool-down: HTTP 429", 2_000, 300_000),
            [300_000, 450_000]
        );
        assert_eq!(
            at(2, "cool-down: bot check", 2_000, 300_000),
            [600_000, 900_000]
        );
        assert_eq!(at(40, "x", i64::MAX / 2, 1), [i64::MAX, i64::MAX]);
        // The service's own wait (Retry-After) wins over the configured cool-down: never
        // sooner, up to a quarter more.
        assert_eq!(
            at(
                1,
                "cool-down 3600000 ms: LLM API rate limit",
                5_000,
                300_000
            ),
            [3_600_000, 4_500_000]
        );
        // A short one waits at least one base step, spread over one more.
        assert_eq!(
            at(2, "cool-down 10 ms: too short", 5_000, 300_000),
            [5_000, 10_000]
        );
        assert_eq!(
            at(1, "cool-down 2000 ms: LLM API rate limit", 10_000, 300_000),
            [10_000, 20_000]
        );
        // What the processor writes for a direct URL's absurd Retry-After: capped at an hour.
        let e = StageError::cool_down_for("HTTP 429", Duration::from_secs(u64::MAX));
        assert_eq!(e.retry_after(), Some(crate::domain::MAX_RETRY_AFTER));
    }

    #[test]
    fn every_backoff_is_jittered_within_its_bounds() {
        // Five jobs told `Retry-After: 2` (the summarize stage's 5 s base): their waits are
        // drawn apart, none sooner than the floor.
        for (msg, lo, hi) in [
            ("cool-down 2000 ms: LLM API rate limit", 5_000, 10_000),
            ("HTTP 503", 10_000, 15_000),
            ("cool-down: bot check", 600_000, 900_000),
        ] {
            let waits: Vec<i64> = (0..5)
                .map(|_| backoff_delay_ms(2, msg, 5_000, 300_000, retry::draw()))
                .collect();
            assert!(
                waits.iter().all(|w| (lo..=hi).contains(w)),
                "{msg}: {waits:?}"
            );
            let distinct: std::collections::BTreeSet<_> = waits.iter().collect();
            // Five draws over ≥ 5 000 ms: two equal to the millisecond has a chance of
            // about 10 × 1/5 000 = 0.2 %; all five equal, none.
            assert!(distinct.len() >= 2, "{msg}: {waits:?}");
        }
    }

    #[test]
    fn flow_is_summarize_over_transcribe_over_download() {
        let f = task_flow("yt-abcdefghijk").unwrap();
        let v = format!("{f:?}");
        // Root first, then its child, then the deepest child.
        let (s, t, d) = (
            v.find("sum-yt-abcdefghijk").unwrap(),
            v.find("tr-yt-abcdefghijk").unwrap(),
            v.find("dl-yt-abcdefghijk").unwrap(),
        );
        assert!(s < t && t < d, "{v}");
    }
}
