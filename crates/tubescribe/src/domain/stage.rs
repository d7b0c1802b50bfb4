//! The closed set of pipeline stages ([`Stage`]), the one failure class every layer speaks
//! ([`FailureClass`]) and the progress a running job reports ([`Progress`]).

use serde::{Deserialize, Serialize};

/// The stages of a task, in the order they run. Each is one BullMQ queue of the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Fetch the media (yt-dlp, or a local file copy) and check it has an audio stream.
    Download,
    /// Decode to 16 kHz mono WAV (ffmpeg) and transcribe it (whisper.cpp).
    Transcribe,
    /// Summarize the transcript (extractive offline, or an OpenAI-compatible LLM).
    Summarize,
}

impl Stage {
    /// All stages in run order.
    pub const ALL: [Stage; 3] = [Stage::Download, Stage::Transcribe, Stage::Summarize];
    /// The last stage: the root job of each task's flow.
    pub const LAST: Stage = Stage::Summarize;

    /// The BullMQ queue name (`download`, `transcribe`, `summarize`).
    pub fn queue_name(self) -> &'static str {
        match self {
            Stage::Download => "download",
            Stage::Transcribe => "transcribe",
            Stage::Summarize => "summarize",
        }
    }

    /// Parses a queue name.
    pub fn from_queue_name(s: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|st| st.queue_name() == s)
    }

    /// The deterministic job id of this stage for `task_id` (`dl-…`, `tr-…`, `sum-…`), so a
    /// re-added flow is a no-op.
    pub fn job_id(self, task_id: &str) -> String {
        let p = match self {
            Stage::Download => "dl",
            Stage::Transcribe => "tr",
            Stage::Summarize => "sum",
        };
        format!("{p}-{task_id}")
    }

    /// The task id encoded in one of our job ids.
    pub fn task_id_of(job_id: &str) -> Option<&str> {
        ["dl-", "tr-", "sum-"]
            .iter()
            .find_map(|p| job_id.strip_prefix(p))
    }

    /// The stages after this one.
    pub fn later(self) -> impl Iterator<Item = Stage> {
        Stage::ALL.into_iter().filter(move |s| *s > self)
    }

    /// The stage before this one (its child in the flow).
    pub fn child(self) -> Option<Stage> {
        match self {
            Stage::Download => None,
            Stage::Transcribe => Some(Stage::Download),
            Stage::Summarize => Some(Stage::Transcribe),
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.queue_name())
    }
}

/// The longest service-requested wait (`Retry-After`) a job is parked for: 1 hour. A task
/// should not sit for days on one header; a summary falls back instead, a download asks
/// again after this long.
pub const MAX_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(3600);

/// How a failure should be handled by the queue: the one retry class every layer speaks
/// (stage work returns it, the engine maps it onto BullMQ's retry rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureClass {
    /// Retrying cannot help (private video, no audio stream, bad model): fail now.
    Permanent,
    /// Transient (network, 5xx, timeout): retry with exponential backoff.
    Retryable,
    /// The service asked us to slow down (bot check, HTTP 429): retry much later.
    CoolDown {
        /// The wait the service asked for (HTTP `Retry-After`), at most [`MAX_RETRY_AFTER`];
        /// the next attempt starts no sooner. `None` = the stage's configured cool-down.
        wait: Option<std::time::Duration>,
    },
    /// The task was cancelled (by its user, or its job's cancel token fired): fail now,
    /// without blaming the stage.
    Cancelled,
}

impl FailureClass {
    /// A cool-down without a service-requested wait.
    pub const COOL_DOWN: FailureClass = FailureClass::CoolDown { wait: None };

    /// Whether another attempt may succeed (`Retryable` and `CoolDown`).
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            FailureClass::Retryable | FailureClass::CoolDown { .. }
        )
    }
}

/// Progress of a running job, reported by the stage and forwarded to BullMQ (job progress)
/// and to the manifest.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Percent done, 0–100.
    pub percent: f64,
    /// Download only: bytes received so far.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Download only: total bytes, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_bytes: Option<u64>,
    /// Download only: bytes per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speed_bps: Option<f64>,
    /// Download only: estimated seconds left.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eta_s: Option<f64>,
    /// What the stage is doing, e.g. "decoding audio".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_round_trip() {
        for s in Stage::ALL {
            let id = s.job_id("yt--abc_DEF12");
            assert_eq!(Stage::task_id_of(&id), Some("yt--abc_DEF12"));
            assert_eq!(Stage::from_queue_name(s.queue_name()), Some(s));
        }
        assert_eq!(Stage::Download.job_id("t"), "dl-t");
        assert_eq!(Stage::Summarize.job_id("t"), "sum-t");
        assert_eq!(
            Stage::Download.later().collect::<Vec<_>>(),
            vec![Stage::Transcribe, Stage::Summarize]
        );
        assert_eq!(Stage::Summarize.child(), Some(Stage::Transcribe));
    }
}
