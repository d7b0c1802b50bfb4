//! Per-stage queue and run policy ([`StagePolicy`]): attempts and backoff, stalled-job
//! recovery, the cluster-wide concurrency cap, the time limit and (downloads) the no-progress
//! timeout, with each stage's built-in defaults and their resolution from a
//! `[stages.<stage>]` table.

use std::time::Duration;

use super::file::{StagePolicyFile, StagesFile};
use super::ConfigError;
use crate::domain::Stage;

/// A stage's queue and run policy after resolution: retries, stalled-job recovery, the
/// cluster-wide concurrency cap and the time limit.
#[derive(Debug, Clone, PartialEq)]
pub struct StagePolicy {
    /// Attempts in total (≥ 1; 1 = no retry). Stalls (a worker died) do not count.
    pub attempts: u32,
    /// Delay before the first retry; retry `n` waits `backoff × 2^(n−1)` plus a random part of
    /// up to half that ([`crate::domain::retry::backoff_wait`]). A service's `Retry-After`
    /// shorter than `backoff` waits `backoff`, spread over one more `backoff`
    /// ([`crate::domain::retry::asked_wait`]).
    pub backoff: Duration,
    /// Delay before the first retry after a cool-down failure; doubles and is spread likewise.
    pub cool_down: Duration,
    /// Job lock duration; a job whose worker died is detected between `lock_duration +
    /// stalled_interval` and `lock_duration + 3 × stalled_interval` later (design notes, §3).
    pub lock_duration: Duration,
    /// Interval of the stalled-job check.
    pub stalled_interval: Duration,
    /// Stalls a job survives before it fails ("job stalled more than allowable limit").
    pub max_stalled_count: u32,
    /// Cluster-wide cap on active jobs of the queue, applied by workers of this stage when
    /// they start: `Some(n ≥ 1)` sets it, `Some(0)` removes it, `None` leaves Redis as is.
    pub global_concurrency: Option<u64>,
    /// Fixed part of the time limit of one attempt.
    pub timeout_base: Duration,
    /// Seconds of time limit per second of media (the media duration is known once the
    /// download has probed it; before that only the base applies).
    pub timeout_per_media_s: f64,
    /// Download stage only: a download that gets no new bytes for this long is stopped
    /// (yt-dlp killed, our HTTP client's transfer dropped) and the attempt fails as
    /// retryable. `None`: no such limit (other stages; `no_progress_timeout_s = 0`).
    pub no_progress_timeout: Option<Duration>,
}

/// Default of `[stages.download] no_progress_timeout_s`: two minutes without a new byte.
pub const DEFAULT_NO_PROGRESS_TIMEOUT: Duration = Duration::from_secs(120);

impl StagePolicy {
    /// Built-in defaults. Downloads meet flaky networks (3 attempts), transcription rarely
    /// fails twice (2), summaries may meet a busy LLM (3). A job may stall 5 times, so a long
    /// transcription survives several worker restarts. Time limits: download 1 h + 1 × media,
    /// transcribe 10 min + 4 × media (tiny.en runs at RTF ≈ 0.1 on 2 cores; larger models on
    /// CPU approach RTF 1), summarize 5 min + 0.5 × media (LLM calls). A download stops after
    /// [`DEFAULT_NO_PROGRESS_TIMEOUT`] without a new byte.
    pub fn default_for(stage: Stage) -> StagePolicy {
        let (attempts, backoff_s, base_s, per_media) = match stage {
            Stage::Download => (3, 2, 3600, 1.0),
            Stage::Transcribe => (2, 2, 600, 4.0),
            Stage::Summarize => (3, 5, 300, 0.5),
        };
        StagePolicy {
            attempts,
            backoff: Duration::from_secs(backoff_s),
            cool_down: Duration::from_secs(300),
            lock_duration: Duration::from_secs(30),
            stalled_interval: Duration::from_secs(15),
            max_stalled_count: 5,
            global_concurrency: None,
            timeout_base: Duration::from_secs(base_s),
            timeout_per_media_s: per_media,
            no_progress_timeout: (stage == Stage::Download).then_some(DEFAULT_NO_PROGRESS_TIMEOUT),
        }
    }

    /// The time limit of one attempt on `media_s` seconds of media (unknown: the base only).
    pub fn time_limit(&self, media_s: Option<f64>) -> Duration {
        let extra = media_s.unwrap_or(0.0).max(0.0) * self.timeout_per_media_s.max(0.0);
        self.timeout_base + Duration::from_secs_f64(extra.min(1e9))
    }

    /// Every stage's policy from the `[stages.*]` tables, in [`Stage::ALL`] order.
    ///
    /// Errors: the first out-of-range value, as [`ConfigError::Invalid`] with key
    /// `stages.<stage>.<key>`.
    pub fn resolve_all(f: &StagesFile) -> Result<Vec<(Stage, StagePolicy)>, ConfigError> {
        Stage::ALL
            .into_iter()
            .map(|stage| Ok((stage, StagePolicy::resolve(stage, f.of(stage))?)))
            .collect()
    }

    /// `stage`'s policy from its `[stages.<stage>]` table: file > default.
    pub(super) fn resolve(stage: Stage, f: &StagePolicyFile) -> Result<StagePolicy, ConfigError> {
        let d = StagePolicy::default_for(stage);
        let key = |k: &str| format!("stages.{stage}.{k}");
        let secs = |k: &str, v: Option<f64>, d: Duration, min: f64| match v {
            None => Ok(d),
            Some(v) if v.is_finite() && v >= min && v < 1e9 => Ok(Duration::from_secs_f64(v)),
            Some(v) => Err(ConfigError::Invalid {
                key: key(k),
                message: format!("{v} is out of range (at least {min} seconds)"),
            }),
        };
        let attempts = f.attempts.unwrap_or(d.attempts);
        if attempts == 0 {
            return Err(ConfigError::Invalid {
                key: key("attempts"),
                message: "must be at least 1".into(),
            });
        }
        let per_media = f.timeout_per_media_s.unwrap_or(d.timeout_per_media_s);
        if !(per_media.is_finite() && per_media >= 0.0) {
            return Err(ConfigError::Invalid {
                key: key("timeout_per_media_s"),
                message: format!("{per_media} must be a number ≥ 0"),
            });
        }
        let no_progress_timeout = match f.no_progress_timeout_s {
            None => d.no_progress_timeout,
            Some(_) if stage != Stage::Download => {
                return Err(ConfigError::Invalid {
                    key: key("no_progress_timeout_s"),
                    message: "only the download stage has a no-progress timeout \
                              ([stages.download])"
                        .into(),
                });
            }
            Some(0.0) => None,
            v => Some(secs("no_progress_timeout_s", v, Duration::ZERO, 0.1)?),
        };
        Ok(StagePolicy {
            attempts,
            backoff: secs("backoff_s", f.backoff_s, d.backoff, 0.0)?,
            cool_down: secs("cool_down_s", f.cool_down_s, d.cool_down, 0.0)?,
            lock_duration: secs("lock_duration_s", f.lock_duration_s, d.lock_duration, 0.5)?,
            stalled_interval: secs(
                "stalled_interval_s",
                f.stalled_interval_s,
                d.stalled_interval,
                0.1,
            )?,
            max_stalled_count: f.max_stalled_count.unwrap_or(d.max_stalled_count),
            global_concurrency: f.global_concurrency.or(d.global_concurrency),
            timeout_base: secs("timeout_base_s", f.timeout_base_s, d.timeout_base, 0.1)?,
            timeout_per_media_s: per_media,
            no_progress_timeout,
        })
    }
}
