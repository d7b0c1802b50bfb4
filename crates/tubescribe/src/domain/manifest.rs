//! The task manifest (`manifest.json`): what a task is, where each stage stands, what it
//! produced and why it failed. Plain data and pure state transitions; no IO (the task
//! directory module reads and writes it atomically).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::domain::options::TaskOptions;
use crate::domain::Stage;

/// Manifest format version, bumped on incompatible changes.
pub const MANIFEST_VERSION: u32 = 1;

/// A title made safe for a terminal or a log line, for display only (the manifest keeps the
/// title exactly as published): control characters (NUL, C0, DEL, C1) and the Unicode
/// bidirectional controls that can reorder the rest of a line (U+200E/F, U+202A–U+202E,
/// U+2066–U+2069) are shown as `\u{…}` escapes; right-to-left letters, emoji and everything
/// else are kept; longer than 120 characters is cut with `…`.
///
/// The escaping is [`summarizer::escape_controls`], the same function `summary.md` uses.
pub fn display_title(title: &str) -> String {
    match title.char_indices().nth(120) {
        Some((cut, _)) => format!("{}…", summarizer::escape_controls(&title[..cut])),
        None => summarizer::escape_controls(title),
    }
}

/// Milliseconds since the Unix epoch (UTC).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The overall state of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// Submitted; no stage has started.
    Queued,
    /// At least one stage started and the summary is not written yet.
    Running,
    /// All stages completed.
    Completed,
    /// All stages completed, but something the user should know about is in `warnings`
    /// (e.g. speech that produced no text).
    CompletedWithWarnings,
    /// A stage failed for good (see `error`).
    Failed,
    /// Cancelled by a user.
    Cancelled,
}

impl TaskStatus {
    /// True for completed, failed and cancelled.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Self::Completed | Self::CompletedWithWarnings | Self::Failed | Self::Cancelled
        )
    }

    /// True for completed, with or without warnings.
    pub fn is_completed(self) -> bool {
        matches!(self, Self::Completed | Self::CompletedWithWarnings)
    }

    /// The wire name, as serde writes it (`completed_with_warnings`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::CompletedWithWarnings => "completed_with_warnings",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

/// The state of one stage of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageState {
    /// Queued or waiting for its child stage.
    Waiting,
    /// A worker is running it.
    Active,
    /// Done; outputs are in place.
    Completed,
    /// Failed for good.
    Failed,
    /// Not run because an earlier stage failed or the task was cancelled.
    Skipped,
    /// Stopped while it ran (or was about to be retried) because the task was cancelled.
    Cancelled,
}

/// What the user submitted, after parsing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Source {
    /// A YouTube video.
    Youtube {
        /// The 11-character video id.
        video_id: String,
        /// Canonical watch URL handed to yt-dlp.
        url: String,
    },
    /// A local media file, copied into the task directory by the download stage.
    File {
        /// Absolute path of the original file.
        path: String,
    },
    /// A direct media URL on a host the user allowed.
    Url {
        /// The URL.
        url: String,
    },
}

impl Source {
    /// What `stage` does for this input, as messages say it: "reading the file" (the download
    /// stage of a local file), "downloading", "transcribing", "summarizing".
    pub fn step(&self, stage: Stage) -> &'static str {
        match (stage, self) {
            (Stage::Download, Source::File { .. }) => "reading the file",
            (Stage::Download, _) => "downloading",
            (Stage::Transcribe, _) => "transcribing",
            (Stage::Summarize, _) => "summarizing",
        }
    }
}

/// Video metadata captured by the download stage.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VideoInfo {
    /// Video id as reported by the extractor.
    pub id: Option<String>,
    /// Title, kept intact (never used for file names).
    pub title: Option<String>,
    /// Duration in seconds.
    pub duration_s: Option<f64>,
    /// Channel or uploader name.
    pub channel: Option<String>,
    /// The video's own chapters from yt-dlp (times in milliseconds, titles verbatim); the
    /// summary uses them instead of computed chapters. Empty when the video has none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chapters: Vec<summarizer::Chapter>,
}

/// One output file of a stage, relative to the task directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputFile {
    /// File name inside the task directory, e.g. `transcript.srt`.
    pub name: String,
    /// Size in bytes.
    pub bytes: u64,
    /// SHA-256 of the content, lower-case hex.
    pub sha256: String,
}

/// A failure as the user sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    /// The stage that failed.
    pub stage: Stage,
    /// Human-readable reason, e.g. "video is private".
    pub message: String,
    /// Whether a retry could succeed.
    pub retryable: bool,
    /// The failing program's or service's own words (e.g. yt-dlp's error line), for
    /// diagnosis; `message` is what to tell the user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// How one attempt (one run of a stage's job by one worker) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// The stage ran and wrote its outputs.
    Completed,
    /// The stage's outputs were already complete and verified (size + SHA-256), so nothing
    /// ran: a re-run after a crash between the outputs' commit and the job's completion.
    Reused,
    /// The stage failed (see the attempt's `error`); BullMQ retries it or fails the task.
    Failed,
    /// The worker shut down before the stage ended and put the job back in the queue.
    Released,
    /// The task was cancelled while the attempt ran; it stopped.
    Cancelled,
    /// Long audio (transcribe only): the audio was split and handed to segment jobs
    /// (`segments.rs`); the job's next attempt merges their results.
    Split,
    /// The attempt never reported an end: its worker died (kill -9, OOM, power) or lost
    /// Redis. Set when the next attempt of the same stage starts.
    Interrupted,
}

/// One attempt of a stage, as recorded in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// BullMQ's `attemptsStarted` for this run (1-based; a stalled re-run counts too).
    pub attempt: u32,
    /// The worker that ran it: `<hostname>:<pid>`.
    pub worker: String,
    /// Start, ms since the epoch.
    pub started_at: u64,
    /// End, ms since the epoch (absent while running or when interrupted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<u64>,
    /// How it ended (absent while running).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<AttemptOutcome>,
    /// The failure message, for failed attempts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The failing program's own words, when it said more than `error` tells.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl AttemptRecord {
    /// Attempt `attempt` on `worker`, started now and not ended.
    pub fn start(attempt: u32, worker: &str) -> Self {
        Self {
            attempt,
            worker: worker.to_string(),
            started_at: now_ms(),
            finished_at: None,
            outcome: None,
            error: None,
            detail: None,
        }
    }
}

/// One stage's record in the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageRecord {
    /// Current state.
    pub state: StageState,
    /// Progress in percent, 0–100.
    pub progress: f64,
    /// Attempts started (1 on the first run).
    pub attempts: u32,
    /// Start of the latest attempt, ms since the epoch.
    pub started_at: Option<u64>,
    /// End of the stage, ms since the epoch.
    pub finished_at: Option<u64>,
    /// Error of the latest failed attempt.
    pub error: Option<String>,
    /// Files the stage wrote.
    #[serde(default)]
    pub outputs: Vec<OutputFile>,
    /// The stage's job result (what the parent job reads), kept so that a re-run that finds
    /// the outputs complete can hand it back without running the stage again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// How many times the stage ran to completion and wrote its outputs (1 when all is well;
    /// re-runs that reuse complete outputs do not count).
    #[serde(default)]
    pub completions: u32,
    /// Why the stage's outputs, though in place, must not be reused: a later stage found them
    /// broken (the downloaded media is truncated). A re-run of the task runs this stage again;
    /// cleared when it completes again or is reset ([`Manifest::invalidate_outputs`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalidated: Option<String>,
    /// Intermediate files committed by a running stage (e.g. `audio.wav` before whisper), so a
    /// re-run after a crash resumes from them once their size and SHA-256 check out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checkpoints: Vec<OutputFile>,
    /// Every attempt, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempt_log: Vec<AttemptRecord>,
    /// Stage-specific details (download: bytes, speed; transcribe: RTF, language…).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub detail: serde_json::Map<String, serde_json::Value>,
    /// Set when the stage completed by its fallback path instead of its main one: today the
    /// summarize stage, which writes the offline extractive summary when the LLM failed
    /// ([`Manifest::set_summary_fallback`]). Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<Fallback>,
}

/// Why a stage's result came from its fallback path (`stages.<stage>.fallback`), e.g.
/// `{"reason": "LLM server error (503) after 5 attempt(s): overloaded", "at": 1767225600000}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fallback {
    /// Why the main path failed, as its error said it (one sentence, cause first).
    pub reason: String,
    /// When the fallback was taken, ms since the epoch.
    pub at: u64,
}

impl StageRecord {
    /// The JSON object under `key` in [`StageRecord::detail`]: created empty when missing,
    /// and replacing a value that is not an object.
    pub fn detail_object(&mut self, key: &str) -> &mut serde_json::Map<String, serde_json::Value> {
        let v = self
            .detail
            .entry(key.to_string())
            .or_insert_with(|| serde_json::json!({}));
        if !v.is_object() {
            *v = serde_json::json!({});
        }
        v.as_object_mut().expect("an object")
    }
}

impl Default for StageRecord {
    fn default() -> Self {
        Self {
            state: StageState::Waiting,
            progress: 0.0,
            attempts: 0,
            started_at: None,
            finished_at: None,
            error: None,
            outputs: Vec::new(),
            result: None,
            completions: 0,
            invalidated: None,
            checkpoints: Vec::new(),
            attempt_log: Vec::new(),
            detail: serde_json::Map::new(),
            fallback: None,
        }
    }
}

/// The whole `manifest.json` of a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version ([`MANIFEST_VERSION`]).
    pub version: u32,
    /// The task id (also the directory name).
    pub task_id: String,
    /// The input string as submitted.
    pub input: String,
    /// The parsed input.
    pub source: Source,
    /// Overall status.
    pub status: TaskStatus,
    /// Creation time, ms since the epoch.
    pub created_at: u64,
    /// Last update, ms since the epoch.
    pub updated_at: u64,
    /// Video metadata, once downloaded.
    pub video: Option<VideoInfo>,
    /// The failure that ended the task, if any.
    pub error: Option<ErrorInfo>,
    /// The transcription model (name and file SHA-256) this task's transcript is made with;
    /// part of the task's identity (see [`crate::domain::ModelRef::task_suffix`]). Absent in
    /// manifests written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<crate::domain::ModelRef>,
    /// What the submitter asked of the task besides its input (captions); absent when all
    /// are defaults. Part of the task's identity ([`TaskOptions::task_suffix`]).
    #[serde(default, skip_serializing_if = "TaskOptions::is_default")]
    pub options: TaskOptions,
    /// The batch (an expanded playlist or channel) this task was submitted with, when any:
    /// the first batch that listed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_id: Option<String>,
    /// Per-stage records, keyed by stage name.
    pub stages: BTreeMap<Stage, StageRecord>,
    /// What the user should know about a completed task (one sentence each, cause first);
    /// non-empty makes the final status [`TaskStatus::CompletedWithWarnings`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<Warning>,
    /// How many times the reconciler added this task's flow again because its jobs were gone
    /// from Redis (e.g. Redis restarted without its data) since the task was (re)started;
    /// [`Manifest::reset_for_retry`] sets it back to 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub requeues: u32,
    /// The task's callback URLs and the delivery log of its webhooks (absent when it has none).
    #[serde(
        default,
        skip_serializing_if = "crate::domain::webhook::Webhooks::is_empty"
    )]
    pub webhooks: crate::domain::webhook::Webhooks,
    /// Files the retention policy (or `tubescribe prune`) deleted, oldest first: they are no
    /// longer among the stages' outputs, so nothing offers them, and a re-run that needs the
    /// media downloads it again ([`Manifest::record_pruned`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pruned: Vec<PrunedFile>,
}

/// What the retention policy deletes from a task whose stages are done: the downloaded media
/// (the download stage's output) or the 16 kHz WAV (the transcribe stage's `audio.wav`).
/// Transcripts and summaries are never pruned; only deleting the whole task removes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PruneKind {
    /// The downloaded (or imported) media file.
    Media,
    /// The decoded 16 kHz mono WAV.
    Audio,
}

impl PruneKind {
    /// Both kinds, media first.
    pub const ALL: [PruneKind; 2] = [PruneKind::Media, PruneKind::Audio];

    /// The stage whose output it is.
    pub fn stage(self) -> Stage {
        match self {
            PruneKind::Media => Stage::Download,
            PruneKind::Audio => Stage::Transcribe,
        }
    }

    /// The wire name: `media` or `audio` (also the `kind` label of the pruning metrics).
    pub fn as_str(self) -> &'static str {
        match self {
            PruneKind::Media => "media",
            PruneKind::Audio => "audio",
        }
    }
}

/// One file deleted from a task by the retention policy (`pruned` in the manifest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrunedFile {
    /// What it was.
    pub kind: PruneKind,
    /// Its name in the task directory.
    pub name: String,
    /// Its size in bytes.
    pub bytes: u64,
    /// When it was deleted, ms since the epoch.
    pub at: u64,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A warning about a task's result, from one stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Warning {
    /// The stage that raised it.
    pub stage: Stage,
    /// One sentence, cause first.
    pub message: String,
}

impl Manifest {
    /// A new manifest with every stage waiting.
    pub fn new(task_id: &str, input: &str, source: Source) -> Self {
        let now = now_ms();
        Self {
            version: MANIFEST_VERSION,
            task_id: task_id.to_string(),
            input: input.to_string(),
            source,
            status: TaskStatus::Queued,
            created_at: now,
            updated_at: now,
            video: None,
            error: None,
            model: None,
            options: TaskOptions::default(),
            batch_id: None,
            warnings: Vec::new(),
            requeues: 0,
            webhooks: Default::default(),
            pruned: Vec::new(),
            stages: Stage::ALL
                .iter()
                .map(|s| (*s, StageRecord::default()))
                .collect(),
        }
    }

    /// The record of `stage` (created on demand).
    pub fn stage_mut(&mut self, stage: Stage) -> &mut StageRecord {
        self.stages.entry(stage).or_default()
    }

    /// Prepares a failed or cancelled task to run again: the task is `queued` without an error;
    /// the stages in `keep` (complete, outputs verified) stay as they are and are reused; every
    /// other stage waits again with no progress, error, result or outputs. Attempt logs and
    /// completion counts are kept, so the manifest still tells the whole history. A new run
    /// begins for webhooks: its end is delivered again ([`crate::domain::webhook::plan`]).
    pub fn reset_for_retry(&mut self, keep: &[Stage]) {
        self.status = TaskStatus::Queued;
        self.error = None;
        self.requeues = 0;
        self.webhooks.run += 1;
        for s in Stage::ALL {
            if keep.contains(&s) {
                continue;
            }
            let r = self.stage_mut(s);
            r.state = StageState::Waiting;
            r.progress = 0.0;
            r.error = None;
            r.started_at = None;
            r.finished_at = None;
            r.result = None;
            r.outputs.clear();
            r.fallback = None;
            r.invalidated = None;
            r.detail.remove("phase");
            // The earlier run's segments' progress (a new run splits again).
            r.detail.remove("segment_progress");
        }
    }

    /// Marks `stage`'s outputs as not to be reused, for `reason` (one sentence): the files stay,
    /// but the stage counts as incomplete for every re-run ([`StageRecord::invalidated`]).
    pub fn invalidate_outputs(&mut self, stage: Stage, reason: &str) {
        self.stage_mut(stage).invalidated = Some(reason.to_string());
    }

    /// The record of `stage`, if present.
    pub fn stage(&self, stage: Stage) -> Option<&StageRecord> {
        self.stages.get(&stage)
    }

    /// Marks `stage` active for a new attempt (`attempt` is 1-based).
    pub fn start_stage(&mut self, stage: Stage, attempt: u32) {
        if !self.status.is_final() {
            self.status = TaskStatus::Running;
        }
        let r = self.stage_mut(stage);
        r.state = StageState::Active;
        r.attempts = r.attempts.max(attempt);
        r.started_at = Some(now_ms());
        r.finished_at = None;
        r.error = None;
        r.progress = 0.0;
    }

    /// Starts attempt `attempt` of `stage` on `worker`: like [`Manifest::start_stage`], and
    /// logs the attempt; an earlier attempt that never reported an end is marked
    /// [`AttemptOutcome::Interrupted`].
    pub fn start_attempt(&mut self, stage: Stage, attempt: u32, worker: &str) {
        self.start_stage(stage, attempt);
        self.interrupt_open_attempts(stage);
        let record = AttemptRecord::start(attempt, worker);
        self.stage_mut(stage).attempt_log.push(record);
    }

    /// Marks every attempt of `stage` that never reported an end as
    /// [`AttemptOutcome::Interrupted`] (its worker is gone).
    pub fn interrupt_open_attempts(&mut self, stage: Stage) {
        let r = self.stage_mut(stage);
        for a in r.attempt_log.iter_mut().filter(|a| a.outcome.is_none()) {
            a.outcome = Some(AttemptOutcome::Interrupted);
        }
    }

    /// Puts a stage whose job went back to the queue without its worker saying so (the
    /// worker died and BullMQ recovered the job) back to waiting: open attempts are
    /// interrupted, progress restarts.
    pub fn requeue_stage(&mut self, stage: Stage) {
        self.interrupt_open_attempts(stage);
        let r = self.stage_mut(stage);
        if r.state == StageState::Active {
            r.state = StageState::Waiting;
            r.progress = 0.0;
            r.detail.remove("phase");
        }
    }

    /// True while `attempt` is the latest attempt of `stage` and has not ended. An attempt
    /// stops being current when another worker starts the job again (its lock lapsed, e.g.
    /// while Redis was unreachable): the stale run must then neither commit outputs nor record
    /// anything (fencing).
    pub fn is_current_attempt(&self, stage: Stage, attempt: u32) -> bool {
        self.stage(stage)
            .and_then(|r| r.attempt_log.last())
            .is_some_and(|a| a.attempt == attempt && a.outcome.is_none())
    }

    /// Records how attempt `attempt` of `stage` ended (a no-op if it was not logged).
    pub fn end_attempt(
        &mut self,
        stage: Stage,
        attempt: u32,
        outcome: AttemptOutcome,
        error: Option<&str>,
    ) {
        let r = self.stage_mut(stage);
        if let Some(a) = r
            .attempt_log
            .iter_mut()
            .rev()
            .find(|a| a.attempt == attempt && a.outcome.is_none())
        {
            a.outcome = Some(outcome);
            a.finished_at = Some(now_ms());
            a.error = error.map(str::to_string);
        }
    }

    /// Marks `stage` completed after it ran and wrote `outputs`: counts the completion and
    /// keeps `result` for re-runs (see [`StageRecord::result`]).
    pub fn record_completion(
        &mut self,
        stage: Stage,
        outputs: Vec<OutputFile>,
        result: serde_json::Value,
    ) {
        self.complete_stage(stage, outputs);
        let r = self.stage_mut(stage);
        r.completions += 1;
        r.result = Some(result);
        r.invalidated = None;
        r.checkpoints.clear();
        // Its files are back: what was pruned of them is no longer news.
        self.pruned.retain(|p| p.kind.stage() != stage);
    }

    /// Replaces `stage`'s warnings with `messages` (a re-run of a stage states its own anew).
    pub fn set_warnings(&mut self, stage: Stage, messages: Vec<String>) {
        self.warnings.retain(|w| w.stage != stage);
        self.warnings.extend(
            messages
                .into_iter()
                .map(|message| Warning { stage, message }),
        );
    }

    /// Records how the summary was made: `Some(reason)` when the LLM failed and the summary is
    /// the offline extractive one — `stages.summarize.fallback` says why and when, and a
    /// summarize warning (`"<reason>; the summary is the offline extractive one instead"`)
    /// makes the task [`TaskStatus::CompletedWithWarnings`] —, `None` when it is what was
    /// asked for (clears both). Replaces the summarize stage's warnings, like
    /// [`Manifest::set_warnings`].
    pub fn set_summary_fallback(&mut self, reason: Option<String>) {
        let fallback = reason.map(|reason| Fallback {
            reason,
            at: now_ms(),
        });
        let warning = fallback.as_ref().map(|f| {
            format!(
                "{}; the summary is the offline extractive one instead",
                f.reason
            )
        });
        self.stage_mut(Stage::Summarize).fallback = fallback;
        self.set_warnings(Stage::Summarize, warning.into_iter().collect());
    }

    /// The fallback the summary was made by, if any (see [`Manifest::set_summary_fallback`]).
    pub fn summary_fallback(&self) -> Option<&Fallback> {
        self.stage(Stage::Summarize)
            .and_then(|r| r.fallback.as_ref())
    }

    /// Marks `stage` completed with its outputs; the task completes with its last stage.
    pub fn complete_stage(&mut self, stage: Stage, outputs: Vec<OutputFile>) {
        let r = self.stage_mut(stage);
        r.state = StageState::Completed;
        r.progress = 100.0;
        r.finished_at = Some(now_ms());
        r.error = None;
        r.outputs = outputs;
        // A phase describes a running attempt; none is left once the stage ends.
        r.detail.remove("phase");
        if stage == Stage::LAST && self.status != TaskStatus::Cancelled {
            self.status = if self.warnings.is_empty() {
                TaskStatus::Completed
            } else {
                TaskStatus::CompletedWithWarnings
            };
            self.error = None;
        }
    }

    /// Records a failed attempt (`detail`: the program's own words, if any). When
    /// `final_attempt`, the stage and the task fail and the later stages are marked skipped;
    /// otherwise the stage waits for its retry. In a cancelled task the stage is marked
    /// cancelled instead, and the task stays cancelled.
    pub fn fail_stage(
        &mut self,
        stage: Stage,
        message: &str,
        detail: Option<&str>,
        retryable: bool,
        final_attempt: bool,
    ) {
        let cancelled = self.status == TaskStatus::Cancelled;
        let r = self.stage_mut(stage);
        r.error = Some(message.to_string());
        r.finished_at = Some(now_ms());
        r.detail.remove("phase");
        if cancelled {
            r.state = StageState::Cancelled;
            self.skip_later(stage);
            return;
        }
        if !final_attempt {
            r.state = StageState::Waiting;
            return;
        }
        r.state = StageState::Failed;
        self.skip_later(stage);
        self.status = TaskStatus::Failed;
        self.error = Some(ErrorInfo {
            stage,
            message: message.to_string(),
            retryable,
            detail: detail.map(str::to_string),
        });
    }

    /// Marks the stages after `stage` that have not completed as skipped.
    fn skip_later(&mut self, stage: Stage) {
        for later in stage.later() {
            let l = self.stage_mut(later);
            if l.state != StageState::Completed {
                l.state = StageState::Skipped;
            }
        }
    }

    /// Cancels the task (a user asked): it is `cancelled` without an error; a running stage is
    /// marked cancelled at once with the error "cancelled" (its worker stops it), waiting ones
    /// skipped. Returns false
    /// (and changes nothing) when the task had already ended.
    pub fn cancel(&mut self) -> bool {
        if self.status.is_final() {
            return false;
        }
        self.status = TaskStatus::Cancelled;
        self.error = None;
        for r in self.stages.values_mut() {
            match r.state {
                StageState::Waiting => r.state = StageState::Skipped,
                StageState::Active => {
                    r.state = StageState::Cancelled;
                    r.finished_at = Some(now_ms());
                    // Said at once: a long task's segments may be all that runs, and the
                    // transcribe job they belong to ends in Redis, where no stage code runs.
                    r.error = Some("cancelled".into());
                    r.detail.remove("phase");
                }
                _ => {}
            }
        }
        true
    }

    /// When the task ended, ms since the epoch: the latest end of a stage of a completed, failed
    /// or cancelled task (its last update when no stage recorded an end); `None` while it is
    /// queued or running. The retention policy counts its days from here.
    pub fn ended_at(&self) -> Option<u64> {
        if !self.status.is_final() {
            return None;
        }
        let last = self.stages.values().filter_map(|r| r.finished_at).max();
        Some(last.unwrap_or(self.updated_at))
    }

    /// Records that `file`, an output of `kind`'s stage, was deleted at `at`: it leaves the
    /// stage's outputs and checkpoints (so no listing offers it and no re-run reuses it: a
    /// download without outputs runs again) and is listed in [`Manifest::pruned`].
    pub fn record_pruned(&mut self, kind: PruneKind, file: &OutputFile, at: u64) {
        let r = self.stage_mut(kind.stage());
        r.outputs.retain(|o| o.name != file.name);
        r.checkpoints.retain(|o| o.name != file.name);
        self.pruned.push(PrunedFile {
            kind,
            name: file.name.clone(),
            bytes: file.bytes,
            at,
        });
    }

    /// True when the downloaded media was deleted by the retention policy and has not been
    /// downloaded again.
    pub fn media_pruned(&self) -> bool {
        self.pruned.iter().any(|p| p.kind == PruneKind::Media)
    }

    /// Why the task failed, as one line for people: `failed while reading the file: <reason>`
    /// (the step in the words of [`Source::step`]); `None` unless the task failed.
    pub fn failure_line(&self) -> Option<String> {
        let e = self.error.as_ref()?;
        Some(format!(
            "failed while {}: {}",
            self.source.step(e.stage),
            e.message
        ))
    }

    /// Overall progress in percent: the mean of the stages' progress.
    pub fn overall_progress(&self) -> f64 {
        let n = Stage::ALL.len() as f64;
        Stage::ALL
            .iter()
            .map(|s| self.stage(*s).map(|r| r.progress).unwrap_or(0.0))
            .sum::<f64>()
            / n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m() -> Manifest {
        Manifest::new(
            "yt-abcdefghijk",
            "https://youtu.be/abcdefghijk",
            Source::Youtube {
                video_id: "abcdefghijk".into(),
                url: "https://www.youtube.com/watch?v=abcdefghijk".into(),
            },
        )
    }

    #[test]
    fn status_names_are_the_serde_names() {
        use TaskStatus::*;
        for s in [
            Queued,
            Running,
            Completed,
            CompletedWithWarnings,
            Failed,
            Cancelled,
        ] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
    }

    #[test]
    fn stages_move_the_task_to_completed() {
        let mut m = m();
        assert_eq!(m.status, TaskStatus::Queued);
        m.start_stage(Stage::Download, 1);
        assert_eq!(m.status, TaskStatus::Running);
        m.complete_stage(Stage::Download, vec![]);
        m.start_stage(Stage::Transcribe, 1);
        m.stage_mut(Stage::Transcribe)
            .detail
            .insert("phase".into(), serde_json::json!("transcribing"));
        m.complete_stage(Stage::Transcribe, vec![]);
        assert_eq!(
            m.stage(Stage::Transcribe).unwrap().detail.get("phase"),
            None
        );
        assert_eq!(m.status, TaskStatus::Running);
        m.start_stage(Stage::Summarize, 1);
        m.complete_stage(Stage::Summarize, vec![]);
        assert_eq!(m.status, TaskStatus::Completed);
        assert_eq!(m.overall_progress(), 100.0);
    }

    #[test]
    fn a_summary_fallback_is_recorded_and_warned() {
        let reason = "LLM server error (503) after 5 attempt(s): overloaded";
        let mut m = m();
        for s in Stage::ALL {
            m.start_stage(s, 1);
            if s == Stage::Summarize {
                m.set_summary_fallback(Some(reason.into()));
            }
            m.complete_stage(s, vec![]);
        }
        assert_eq!(m.status, TaskStatus::CompletedWithWarnings);
        let f = m.summary_fallback().expect("recorded");
        assert_eq!(f.reason, reason);
        assert!(f.at > 0);
        assert_eq!(
            m.warnings,
            [Warning {
                stage: Stage::Summarize,
                message: format!("{reason}; the summary is the offline extractive one instead"),
            }]
        );
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["stages"]["summarize"]["fallback"]["reason"], reason);
        assert_eq!(
            serde_json::from_value::<Manifest>(v).unwrap(),
            m,
            "round trip"
        );
        // A later summary made as asked clears both; no fallback, no key.
        m.start_stage(Stage::Summarize, 2);
        m.set_summary_fallback(None);
        m.complete_stage(Stage::Summarize, vec![]);
        assert_eq!(m.status, TaskStatus::Completed);
        assert!(m.summary_fallback().is_none() && m.warnings.is_empty());
        let v = serde_json::to_value(&m).unwrap();
        assert!(v["stages"]["summarize"].get("fallback").is_none(), "{v}");
    }

    #[test]
    fn invalidated_outputs_last_until_the_stage_completes_again_or_is_reset() {
        let mut m = m();
        let media = serde_json::json!({"media": "x.m4a"});
        m.record_completion(Stage::Download, vec![], media.clone());
        let why = "the downloaded media is truncated: its audio ends at 6.0 s but the file declares 10.0 s";
        m.invalidate_outputs(Stage::Download, why);
        assert_eq!(
            m.stage(Stage::Download).unwrap().invalidated.as_deref(),
            Some(why)
        );
        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(json["stages"]["download"]["invalidated"], why);
        m.record_completion(Stage::Download, vec![], media.clone());
        assert_eq!(m.stage(Stage::Download).unwrap().invalidated, None);
        m.invalidate_outputs(Stage::Download, why);
        m.reset_for_retry(&[]);
        assert_eq!(m.stage(Stage::Download).unwrap().invalidated, None);
        assert_eq!(m.stage(Stage::Download).unwrap().result, None);
    }

    /// A cancel marks the running stage cancelled with its reason at once; a retry starts
    /// the stage afresh, without the earlier run's segment progress.
    #[test]
    fn cancel_says_why_and_a_retry_forgets_the_segments_progress() {
        let mut m = m();
        m.start_stage(Stage::Download, 1);
        m.record_completion(Stage::Download, vec![], serde_json::json!({}));
        m.start_stage(Stage::Transcribe, 1);
        m.stage_mut(Stage::Transcribe)
            .detail
            .insert("segment_progress".into(), serde_json::json!({"3": 91.0}));
        assert!(m.cancel());
        let r = m.stage(Stage::Transcribe).unwrap();
        assert_eq!(
            (r.state, r.error.as_deref()),
            (StageState::Cancelled, Some("cancelled"))
        );
        assert_eq!(
            m.stage(Stage::Summarize).unwrap().state,
            StageState::Skipped
        );
        assert_eq!(m.error, None);
        m.reset_for_retry(&[Stage::Download]);
        let r = m.stage(Stage::Transcribe).unwrap();
        assert_eq!((r.state, r.error.as_deref()), (StageState::Waiting, None));
        assert!(r.detail.get("segment_progress").is_none(), "{:?}", r.detail);
    }

    #[test]
    fn final_failure_skips_later_stages_and_says_why() {
        let mut m = m();
        m.start_stage(Stage::Download, 1);
        m.stage_mut(Stage::Download)
            .detail
            .insert("phase".into(), serde_json::json!("downloading"));
        m.fail_stage(Stage::Download, "network is unreachable", None, true, false);
        assert_eq!(m.stage(Stage::Download).unwrap().detail.get("phase"), None);
        assert_eq!(m.stage(Stage::Download).unwrap().state, StageState::Waiting);
        assert_eq!(m.status, TaskStatus::Running);
        m.start_stage(Stage::Download, 2);
        m.fail_stage(Stage::Download, "video is private", None, false, true);
        assert_eq!(m.status, TaskStatus::Failed);
        assert_eq!(m.stage(Stage::Download).unwrap().attempts, 2);
        assert_eq!(
            m.stage(Stage::Transcribe).unwrap().state,
            StageState::Skipped
        );
        assert_eq!(
            m.stage(Stage::Summarize).unwrap().state,
            StageState::Skipped
        );
        let e = m.error.unwrap();
        assert_eq!(
            (e.stage, e.message.as_str(), e.retryable),
            (Stage::Download, "video is private", false)
        );
    }

    #[test]
    fn attempts_are_logged_and_only_the_latest_is_current() {
        let mut m = m();
        m.start_attempt(Stage::Transcribe, 1, "h:1");
        assert!(m.is_current_attempt(Stage::Transcribe, 1));
        // The worker died; another one starts attempt 2.
        m.start_attempt(Stage::Transcribe, 2, "h:2");
        assert!(!m.is_current_attempt(Stage::Transcribe, 1));
        assert!(m.is_current_attempt(Stage::Transcribe, 2));
        m.record_completion(Stage::Transcribe, vec![], serde_json::json!({"x": 1}));
        m.end_attempt(Stage::Transcribe, 2, AttemptOutcome::Completed, None);
        // A late end of the stale attempt changes nothing.
        m.end_attempt(Stage::Transcribe, 1, AttemptOutcome::Failed, Some("late"));
        let r = m.stage(Stage::Transcribe).unwrap();
        let outcomes: Vec<_> = r
            .attempt_log
            .iter()
            .map(|a| (a.attempt, a.outcome))
            .collect();
        assert_eq!(
            outcomes,
            vec![
                (1, Some(AttemptOutcome::Interrupted)),
                (2, Some(AttemptOutcome::Completed))
            ]
        );
        assert_eq!((r.completions, r.attempts), (1, 2));
        assert_eq!(r.result, Some(serde_json::json!({"x": 1})));
        assert!(!m.is_current_attempt(Stage::Transcribe, 2), "ended");
    }

    #[test]
    fn json_round_trip_uses_stage_names() {
        let m = m();
        let j = serde_json::to_value(&m).unwrap();
        assert_eq!(j["stages"]["transcribe"]["state"], "waiting");
        assert_eq!(j["source"]["kind"], "youtube");
        let back: Manifest = serde_json::from_value(j).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn display_title_escapes_controls_and_keeps_text() {
        assert_eq!(display_title("a\0b/../c"), "a\\u{0}b/../c");
        assert_eq!(display_title("שלום 🎵 مرحبا"), "שלום 🎵 مرحبا");
        assert_eq!(display_title("x\u{202E}gpj.exe"), "x\\u{202e}gpj.exe");
        assert_eq!(display_title("line\nbreak\t"), "line\\u{a}break\\u{9}");
        let long = "é".repeat(300);
        assert_eq!(display_title(&long).chars().count(), 121);
    }
}
