//! Retry waits: how long to wait before trying again, spread at random so that jobs or
//! connections that failed together do not all come back in the same millisecond. The one
//! rule for every retry wait of this crate — the queue's backoff (`engine/flow.rs`), Redis
//! reconnects and resends, workers waiting for Redis, yt-dlp's retry sleep. (The LLM client in
//! `summarizer::llm` spreads its own in-call waits the same way: a `Retry-After` by up to a
//! quarter more, its backoff over half the step.)
//!
//! Every wait is a floor plus a random part drawn *above* it, so no wait is ever shorter
//! than the configured step or than what a service asked for:
//!
//! * **our own backoff step** `d` (exponential or fixed): [`backoff_wait`] =
//!   `d + U(0, ½)·d`, i.e. uniform in `[d, 1.5·d]`. The spread is half the step, as in the
//!   "equal jitter" of AWS's *Exponential Backoff And Jitter* (Marc Brooker, 2015,
//!   <https://aws.amazon.com/blogs/architecture/exponential-backoff-and-jitter/>), which shows
//!   that un-jittered backoff keeps clients that failed together in lock-step, retry after
//!   retry, and that a spread proportional to the step removes the clustering. It is shifted
//!   above the step (AWS's range is `[d/2, d]`) so a configured `backoff_s` stays the least
//!   wait.
//! * **a wait a service named** (`Retry-After`, RFC 9110 §10.2.3) `w`: [`asked_wait`] =
//!   `w + U(0, 1)·max(w/4, min_spread)`: never sooner than asked, up to a quarter more, but
//!   spread over at least `min_spread` (the caller's backoff step), so jobs told the same
//!   short wait still come back seconds apart rather than in the same millisecond.
//!
//! The random draw is a parameter (`draw`, uniform in `[0, 1)`), so tests pin it; [`draw`]
//! gives a fresh one.

use std::time::Duration;

/// A fresh uniform draw in `[0, 1)` for [`backoff_wait`] and [`asked_wait`].
pub fn draw() -> f64 {
    fastrand::f64()
}

/// `draw` forced into `[0, 1]` (a NaN counts as 0).
fn unit(draw: f64) -> f64 {
    if draw.is_nan() {
        0.0
    } else {
        draw.clamp(0.0, 1.0)
    }
}

/// The wait before retrying after our own backoff step `step`: `step + draw·step/2`, in
/// `[step, 1.5·step]` (saturating at [`Duration::MAX`]).
pub fn backoff_wait(step: Duration, draw: f64) -> Duration {
    step.saturating_add((step / 2).mul_f64(unit(draw)))
}

/// The wait before retrying after a service asked for `asked` (`Retry-After`):
/// `asked + draw·max(asked/4, min_spread)` — never sooner, spread over a quarter of the wait
/// or `min_spread`, whichever is longer (saturating at [`Duration::MAX`]).
pub fn asked_wait(asked: Duration, min_spread: Duration, draw: f64) -> Duration {
    asked.saturating_add((asked / 4).max(min_spread).mul_f64(unit(draw)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn backoff_waits_spread_over_half_a_step_above_it() {
        assert_eq!(backoff_wait(2 * S, 0.0), 2 * S);
        assert_eq!(backoff_wait(2 * S, 0.5), Duration::from_millis(2_500));
        assert_eq!(backoff_wait(2 * S, 1.0), 3 * S);
        // Out-of-range draws are clamped, never shorter than the step.
        assert_eq!(backoff_wait(2 * S, -3.0), 2 * S);
        assert_eq!(backoff_wait(2 * S, f64::NAN), 2 * S);
        assert_eq!(backoff_wait(2 * S, 7.0), 3 * S);
        assert_eq!(backoff_wait(Duration::MAX, 0.9), Duration::MAX);
        assert_eq!(backoff_wait(Duration::ZERO, 0.9), Duration::ZERO);
    }

    #[test]
    fn asked_waits_are_never_sooner_and_spread_by_a_quarter_or_the_minimum() {
        // Short Retry-After: spread over the minimum (here 5 s).
        assert_eq!(asked_wait(2 * S, 5 * S, 0.0), 2 * S);
        assert_eq!(asked_wait(2 * S, 5 * S, 0.5), Duration::from_millis(4_500));
        assert_eq!(asked_wait(2 * S, 5 * S, 1.0), 7 * S);
        // Long Retry-After: a quarter more at most.
        assert_eq!(asked_wait(3600 * S, 5 * S, 1.0), 4500 * S);
        assert_eq!(asked_wait(3600 * S, 5 * S, 0.2), 3780 * S);
        assert_eq!(asked_wait(Duration::MAX, S, 0.99), Duration::MAX);
    }

    #[test]
    fn fresh_draws_differ_and_stay_in_bounds() {
        let waits: Vec<Duration> = (0..100).map(|_| backoff_wait(2 * S, draw())).collect();
        assert!(
            waits.iter().all(|w| *w >= 2 * S && *w <= 3 * S),
            "{waits:?}"
        );
        let distinct: std::collections::BTreeSet<_> = waits.iter().collect();
        // 100 uniform draws over 1 s at nanosecond resolution: all distinct in practice;
        // 50 leaves room for any coincidence.
        assert!(distinct.len() > 50, "{waits:?}");
        let (lo, hi) = (waits.iter().min().unwrap(), waits.iter().max().unwrap());
        // P(100 draws all within 0.2 of the range) = 100·0.2^99 − 99·0.2^100 ≈ 0.
        assert!(*hi - *lo > Duration::from_millis(200), "{lo:?}..{hi:?}");
    }
}
