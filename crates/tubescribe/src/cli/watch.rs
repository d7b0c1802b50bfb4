//! What `process` shows: one progress bar per task and stage while the tasks run
//! ([`progress`]), then one result line per task with its output files ([`report`]).

use std::time::Duration;

use anyhow::Result;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio_util::sync::CancellationToken;

use crate::domain::manifest::{display_title, Manifest, StageRecord, StageState, TaskStatus};
use crate::domain::Stage;
use crate::store::{names, DataDir};

/// Shows one progress bar per task and stage (hidden when `quiet`) until every task is final.
/// Returns true when `stop` was cancelled first (Ctrl-C / SIGTERM).
pub(super) async fn progress(
    data: &DataDir,
    tasks: &[String],
    quiet: bool,
    stop: &CancellationToken,
) -> bool {
    let mp = if quiet {
        MultiProgress::with_draw_target(ProgressDrawTarget::hidden())
    } else {
        MultiProgress::new()
    };
    let bars = bars(&mp, data, tasks);
    loop {
        let mut all_final = true;
        for (t, s, b) in &bars {
            let m = match data.task(t).read_manifest() {
                Ok(m) => m,
                Err(_) => continue,
            };
            if !m.status.is_final() {
                all_final = false;
            }
            if let Some(r) = m.stage(*s) {
                b.set_position(r.progress.round().clamp(0.0, 100.0) as u64);
                b.set_message(stage_message(&m, *s, r));
            }
        }
        if all_final {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = stop.cancelled() => { mp.clear().ok(); return true; }
        }
    }
    // Leave each bar where its stage ended (a failed or skipped stage does not show 100 %).
    for (_, _, b) in &bars {
        b.abandon();
    }
    false
}

/// One bar per task and stage, labelled by what the user submitted (title, else file or URL
/// name), not by id.
fn bars(mp: &MultiProgress, data: &DataDir, tasks: &[String]) -> Vec<(String, Stage, ProgressBar)> {
    let style = ProgressStyle::with_template("{prefix:.bold} [{bar:28.cyan/blue}] {pos:>3}% {msg}")
        .expect("valid template")
        .progress_chars("=> ");
    let labels: Vec<String> = tasks
        .iter()
        .map(|t| {
            data.task(t)
                .read_manifest()
                .map(|m| task_label(&m))
                .unwrap_or_else(|_| t.clone())
        })
        .collect();
    let width = labels.iter().map(|l| l.chars().count()).max().unwrap_or(0);
    let mut bars = Vec::new();
    for (t, label) in tasks.iter().zip(&labels) {
        let pad = width - label.chars().count();
        for s in Stage::ALL {
            let b = mp.add(ProgressBar::new(100));
            b.set_style(style.clone());
            b.set_prefix(format!("{label}{:pad$} {s:<10}", ""));
            bars.push((t.clone(), s, b));
        }
    }
    bars
}

/// The text after stage `s`'s bar.
fn stage_message(m: &Manifest, s: Stage, r: &StageRecord) -> String {
    match r.state {
        StageState::Waiting if r.attempts > 0 => {
            format!("retrying after: {}", r.error.clone().unwrap_or_default())
        }
        StageState::Waiting => "waiting".to_string(),
        StageState::Active => {
            let phase = r
                .detail
                .get("phase")
                .and_then(|v| v.as_str())
                .unwrap_or("running");
            match (s, r.detail.get("speed_bps").and_then(|v| v.as_f64())) {
                (Stage::Download, Some(sp)) => format!("{phase} {:.1} MB/s", sp / 1e6),
                _ => phase.to_string(),
            }
        }
        // A stage's warning (e.g. speech without text) shows on its bar.
        StageState::Completed => m
            .warnings
            .iter()
            .find(|w| w.stage == s)
            .map_or("done".to_string(), |w| format!("done ⚠ {}", w.message)),
        StageState::Failed => format!("failed: {}", r.error.clone().unwrap_or_default()),
        StageState::Skipped => "skipped".to_string(),
        StageState::Cancelled => "cancelled".to_string(),
    }
}

/// Prints each final task: its manifest as a JSON line (`json`), else `✔`/`⚠` with the title,
/// warnings and output files, or `✘` with the failed stage and reason. Returns how many tasks
/// did not complete.
///
/// # Errors
/// A manifest that cannot be read.
pub(super) fn report(data: &DataDir, tasks: &[String], json: bool) -> Result<usize> {
    let mut failed = 0;
    for id in tasks {
        let t = data.task(id);
        let m = t.read_manifest()?;
        if json {
            println!("{}", serde_json::to_string(&m)?);
        }
        match m.status {
            TaskStatus::Completed | TaskStatus::CompletedWithWarnings => {
                if !json {
                    let title = m
                        .video
                        .as_ref()
                        .and_then(|v| v.title.as_deref())
                        .map(display_title)
                        .unwrap_or_default();
                    let mark = if m.warnings.is_empty() { "✔" } else { "⚠" };
                    println!("{mark} {id}  {title}");
                    for w in &m.warnings {
                        println!("    warning: {}", w.message);
                    }
                    for n in [
                        names::SUMMARY_MD,
                        names::TRANSCRIPT_TXT,
                        names::TRANSCRIPT_SRT,
                        names::TRANSCRIPT_VTT,
                        names::TRANSCRIPT_JSON,
                        names::AUDIO_WAV,
                    ] {
                        println!("    {}", t.file(n).display());
                    }
                }
            }
            _ => {
                failed += 1;
                // A failure is an error: on stderr, once, in the user's words.
                let why = m
                    .failure_line()
                    .unwrap_or_else(|| m.status.as_str().to_string());
                if !json {
                    eprintln!("✘ {id}  {}  {why}", task_label(&m));
                }
            }
        }
    }
    Ok(failed)
}

/// A short human label for a task: its title, else the last part of its input (file name or
/// URL path), at most 32 characters, control and bidi characters escaped.
fn task_label(m: &Manifest) -> String {
    let raw = m
        .video
        .as_ref()
        .and_then(|v| v.title.clone())
        .filter(|t| !t.trim().is_empty())
        .unwrap_or_else(|| {
            let i = m.input.trim_end_matches('/');
            i.rsplit('/').next().unwrap_or(i).to_string()
        });
    let shown = display_title(&raw);
    if shown.chars().count() > 32 {
        format!("{}…", shown.chars().take(31).collect::<String>())
    } else {
        shown
    }
}
