//! The summarize stage: `transcript.json` → `summary.{md,json}`.
//!
//! Without an LLM configured it runs the offline extractive summarizer. With one, it asks the
//! OpenAI-compatible API; a key the API rejects fails the task with that message, a long rate
//! limit (`Retry-After`) retries the job no sooner than the server asked, and any other LLM
//! failure (server down after retries, unusable output, rate-limited on the last attempt)
//! falls back to the extractive summary and says so: in the summary's notes and first line,
//! and in the manifest (`stages.summarize.fallback: {reason, at}` plus a summarize warning, so
//! the task ends `completed_with_warnings` and the API, SSE, the page and the CLI show why;
//! [`crate::domain::manifest::Manifest::set_summary_fallback`]). Every key-point
//! stamp is the start of a real transcript segment or word (its sentence's first word). The
//! LLM is told the transcript's language, and the video's own chapters (yt-dlp metadata in
//! the manifest) replace computed ones.

use summarizer::{extractive, llm, Summary};

use super::transcribe::TranscribeResult;
use super::{JobCtx, StageCtx, StageError, StageOutput};
use crate::domain::manifest::Source;
use crate::domain::transcript::Transcript;
use crate::store::names;

/// Runs the summarize stage for one job.
pub async fn run(ctx: &StageCtx, job: &JobCtx) -> Result<StageOutput, StageError> {
    let tr: TranscribeResult = job.child_result()?;
    let path = job.task.input(&tr.transcript)?;
    let text = std::fs::read_to_string(&path)
        .map_err(|e| StageError::permanent(format!("cannot read {}: {e}", tr.transcript)))?;
    let transcript: Transcript = serde_json::from_str(&text)
        .map_err(|e| StageError::permanent(format!("transcript.json is malformed: {e}")))?;
    let segments = summarizer_segments(&transcript);
    let manifest = job.task.read_manifest()?;
    let opts = extractive::Options {
        chapters: manifest
            .video
            .as_ref()
            .map(|v| v.chapters.clone())
            .unwrap_or_default(),
        ..extractive::Options::default()
    };
    job.report(5.0, Some("summarizing"));
    // Why the LLM summary could not be had, when the extractive one stands in for it.
    let mut fallback: Option<String> = None;
    let summary = match &ctx.cfg.llm {
        None => extractive::summarize(&segments, &opts),
        Some(l) => {
            let mut lc = llm::LlmConfig::new(l.base_url.clone(), l.model.clone());
            lc.api_key = l.api_key.clone();
            lc.request_timeout = l.timeout;
            lc.max_retries = l.max_retries;
            lc.context_tokens = l.context_tokens;
            let client = llm::LlmClient::new(lc)
                .map_err(|e| StageError::permanent(format!("LLM client: {e}")))?;
            let res = tokio::select! {
                r = client.summarize(&segments, Some(&transcript.language), &opts) => r,
                _ = job.cancel.cancelled() => return Err(StageError::cancelled()),
            };
            let attempts = ctx.cfg.policy(crate::domain::Stage::Summarize).attempts;
            match res {
                Ok(s) => s,
                Err(e) => {
                    if let Some(err) = stage_error_for(&e, job.attempt, attempts) {
                        return Err(err);
                    }
                    tracing::warn!(task = %job.task_id, error = %e, "LLM failed; using the extractive summary");
                    let mut s = extractive::summarize(&segments, &opts);
                    s.notes.push(format!(
                        "{}: LLM failed: {e}",
                        summarizer::FALLBACK_NOTE_PREFIX
                    ));
                    fallback = Some(e.to_string());
                    s
                }
            }
        }
    };
    let title = manifest.video.as_ref().and_then(|v| v.title.clone());
    let url = match &manifest.source {
        Source::Youtube { url, .. } => Some(url.clone()),
        _ => None,
    };
    let md = summary.to_markdown(title.as_deref(), url.as_deref());
    let json = serde_json::to_string_pretty(&summary).expect("summary serializes");
    check_stamps(&summary, &transcript)?;
    let outputs = vec![
        job.write_atomic(names::SUMMARY_JSON, json.as_bytes())?,
        job.write_atomic(names::SUMMARY_MD, md.as_bytes())?,
    ];
    let kind = serde_json::to_value(&summary.kind).unwrap_or_default();
    job.task.update_manifest(|m| {
        m.stage_mut(crate::domain::Stage::Summarize)
            .detail
            .insert("kind".into(), kind);
        m.set_summary_fallback(fallback);
    })?;
    Ok(StageOutput {
        result: serde_json::json!({
            "summary": names::SUMMARY_MD,
            "summary_json": names::SUMMARY_JSON,
            "key_points": summary.key_points.len(),
        }),
        outputs,
        measure: Default::default(),
    })
}

/// What an LLM failure on attempt `attempt` of `attempts` does to the job; `None` = fall back
/// to the extractive summary (with a note).
///
/// * Refused credentials, model or quota (401/403/404, `insufficient_quota`), bad settings:
///   a permanent failure — the user must fix a setting, so no silent fallback.
/// * A rate limit the client could not wait out (`Retry-After` longer than its 60 s cap, or
///   429 on every try): a cool-down retry that starts no sooner than the server asked, while
///   attempts remain; on the last attempt, or when the server asks for more than
///   [`crate::domain::MAX_RETRY_AFTER`] (a quota, not a burst), the fallback.
/// * Anything else (server down after retries, unusable output): the fallback.
fn stage_error_for(e: &llm::LlmError, attempt: u32, attempts: u32) -> Option<StageError> {
    match e {
        llm::LlmError::Auth { .. }
        | llm::LlmError::NotFound { .. }
        | llm::LlmError::QuotaExceeded { .. }
        | llm::LlmError::Config(_) => Some(StageError::permanent(e.to_string())),
        llm::LlmError::RateLimited { retry_after, .. }
            if attempt < attempts
                && retry_after.is_none_or(|w| w <= crate::domain::MAX_RETRY_AFTER) =>
        {
            Some(match retry_after {
                Some(w) => StageError::cool_down_for(e.to_string(), *w),
                None => StageError::cool_down(e.to_string()),
            })
        }
        _ => None,
    }
}

/// The transcript as the summarizer's input: segments with their words' times and text.
fn summarizer_segments(t: &Transcript) -> Vec<summarizer::Segment> {
    t.segments
        .iter()
        .map(|s| summarizer::Segment {
            start_ms: s.start_ms,
            end_ms: s.end_ms,
            text: s.text.clone(),
            words: s
                .words
                .iter()
                .map(|w| summarizer::Word {
                    start_ms: w.start_ms,
                    end_ms: w.end_ms,
                    text: w.text.clone(),
                })
                .collect(),
        })
        .collect()
}

/// Guards the invariant that every key-point stamp is the start of a real transcript segment
/// or of a real word.
fn check_stamps(summary: &Summary, t: &Transcript) -> Result<(), StageError> {
    for k in &summary.key_points {
        let real = t
            .segments
            .iter()
            .any(|s| s.start_ms == k.start_ms || s.words.iter().any(|w| w.start_ms == k.start_ms));
        if !real {
            return Err(StageError::permanent(format!(
                "internal error: summary stamp {} ms is not a transcript segment or word start",
                k.start_ms
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::FailureClass;
    use std::time::Duration;

    fn limited(retry_after: Option<Duration>) -> llm::LlmError {
        llm::LlmError::RateLimited {
            attempts: 1,
            retry_after,
            message: "Rate limit reached".into(),
        }
    }

    #[test]
    fn stamps_are_sentence_starts_from_word_times() {
        use crate::domain::transcript::{Segment, Word};
        let text = "Printing presses spread cheap books quickly. Movable metal type made printing presses fast.";
        let words = text
            .split(' ')
            .enumerate()
            .map(|(i, w)| Word {
                start_ms: 2_000 + i as u64 * 5_000,
                end_ms: 6_000 + i as u64 * 5_000,
                text: w.into(),
                p: 0.9,
            })
            .collect();
        let t = Transcript {
            language: "en".into(),
            segments: vec![Segment {
                start_ms: 1_000,
                end_ms: 61_000,
                text: text.into(),
                words,
            }],
            ..Transcript::default()
        };
        let s = extractive::summarize(&summarizer_segments(&t), &Default::default());
        let stamps: Vec<u64> = s.key_points.iter().map(|k| k.start_ms).collect();
        assert_eq!(stamps, vec![2_000, 32_000]); // word 0 and word 6, not the segment's 1 s
        check_stamps(&s, &t).unwrap();
        let mut bad = s.clone();
        bad.key_points[0].start_ms = 3_000;
        assert!(check_stamps(&bad, &t).is_err());
    }

    #[test]
    fn rate_limits_wait_as_asked_then_fall_back() {
        let hour = Duration::from_secs(3600);
        let e = stage_error_for(&limited(Some(hour)), 1, 3).expect("a retry");
        assert!(matches!(e.class, FailureClass::CoolDown { .. }));
        assert_eq!(e.retry_after(), Some(hour));
        assert!(
            e.message.contains("server asks to wait 3600 s"),
            "{}",
            e.message
        );
        let e = stage_error_for(&limited(None), 2, 3).expect("a retry");
        assert_eq!((e.class, e.retry_after()), (FailureClass::COOL_DOWN, None));
        // The last attempt uses the extractive summary instead of failing the task, and so
        // does a wait longer than an hour (even an absurd one).
        assert!(stage_error_for(&limited(Some(hour)), 3, 3).is_none());
        assert!(stage_error_for(&limited(Some(hour + Duration::from_secs(1))), 1, 3).is_none());
        assert!(stage_error_for(&limited(Some(Duration::MAX)), 1, 3).is_none());
    }

    #[test]
    fn settings_errors_fail_and_outages_fall_back() {
        let auth = llm::LlmError::Auth {
            status: 401,
            message: "Incorrect API key provided".into(),
        };
        let e = stage_error_for(&auth, 1, 3).expect("a failure");
        assert_eq!(e.class, FailureClass::Permanent);
        assert_eq!(
            e.message,
            "LLM API rejected the key (401): Incorrect API key provided — check the configured API key"
        );
        let down = llm::LlmError::Server {
            status: 503,
            attempts: 5,
            message: "overloaded".into(),
        };
        assert!(stage_error_for(&down, 1, 3).is_none());
    }
}
