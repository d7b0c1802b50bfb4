//! The summarize stage: `transcript.json` → `summary.{md,json}`.
//!
//! Without an LLM configured it runs the offline extractive summarizer. With one, it asks the
//! OpenAI-compatible API; a key the API rejects fails the task with that message, while any
//! other LLM failure (server down after retries, unusable output) falls back to the
//! extractive summary and says so in the summary's notes. Every timestamp in the summary is
//! the start of a real transcript segment.

use summarizer::{extractive, llm, Summary};

use super::transcribe::TranscribeResult;
use super::{JobCtx, StageCtx, StageError, StageOutput};
use crate::manifest::Source;
use crate::taskdir::names;
use crate::transcript::Transcript;

/// Runs the summarize stage for one job.
pub async fn run(ctx: &StageCtx, job: &JobCtx) -> Result<StageOutput, StageError> {
    let tr: TranscribeResult = job.child_result()?;
    let path = job.task.file(&tr.transcript);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| StageError::permanent(format!("cannot read {}: {e}", tr.transcript)))?;
    let transcript: Transcript = serde_json::from_str(&text)
        .map_err(|e| StageError::permanent(format!("transcript.json is malformed: {e}")))?;
    let segments: Vec<summarizer::Segment> = transcript
        .segments
        .iter()
        .map(|s| summarizer::Segment {
            start_ms: s.start_ms,
            end_ms: s.end_ms,
            text: s.text.clone(),
        })
        .collect();
    job.report(5.0, Some("summarizing"));
    let summary = match &ctx.cfg.llm {
        None => extractive::summarize(&segments, &extractive::Options::default()),
        Some(l) => {
            let mut lc = llm::LlmConfig::new(l.base_url.clone(), l.model.clone());
            lc.api_key = l.api_key.clone();
            lc.request_timeout = l.timeout;
            lc.max_retries = l.max_retries;
            lc.context_tokens = l.context_tokens;
            let client = llm::LlmClient::new(lc)
                .map_err(|e| StageError::permanent(format!("LLM client: {e}")))?;
            let res = tokio::select! {
                r = client.summarize(&segments) => r,
                _ = job.cancel.cancelled() => return Err(StageError::permanent("cancelled")),
            };
            match res {
                Ok(s) => s,
                Err(e) if is_auth_error(&e) => {
                    return Err(StageError::permanent(e.to_string()));
                }
                Err(e) => {
                    tracing::warn!(task = %job.task_id, error = %e, "LLM failed; using the extractive summary");
                    let mut s = extractive::summarize(&segments, &extractive::Options::default());
                    s.notes.push(format!(
                        "{}: LLM failed: {e}",
                        summarizer::FALLBACK_NOTE_PREFIX
                    ));
                    s
                }
            }
        }
    };
    let manifest = job.task.read_manifest()?;
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
        m.stage_mut(super::Stage::Summarize)
            .detail
            .insert("kind".into(), kind);
    })?;
    Ok(StageOutput {
        result: serde_json::json!({
            "summary": names::SUMMARY_MD,
            "summary_json": names::SUMMARY_JSON,
            "key_points": summary.key_points.len(),
        }),
        outputs,
    })
}

/// True when the LLM API refused our credentials or the model (401/403/404): a setting the
/// user must fix, so the task fails instead of falling back silently.
fn is_auth_error(e: &llm::LlmError) -> bool {
    matches!(
        e,
        llm::LlmError::Auth { .. }
            | llm::LlmError::NotFound { .. }
            | llm::LlmError::QuotaExceeded { .. }
            | llm::LlmError::Config(_)
    )
}

/// Guards the invariant that every key-point stamp is a real segment start.
fn check_stamps(summary: &Summary, t: &Transcript) -> Result<(), StageError> {
    for k in &summary.key_points {
        if !t.segments.iter().any(|s| s.start_ms == k.start_ms) {
            return Err(StageError::permanent(format!(
                "internal error: summary stamp {} ms is not a transcript segment start",
                k.start_ms
            )));
        }
    }
    Ok(())
}
