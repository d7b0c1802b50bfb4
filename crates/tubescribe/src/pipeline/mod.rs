//! The pipeline's stages: a closed set ([`Stage`]), one module each, and what they share —
//! the per-process context ([`StageCtx`]), the per-job context ([`JobCtx`]) and the error
//! type that says whether a failure is worth retrying ([`StageError`]).
//!
//! A stage reads its inputs from the task directory and from its child job's return value,
//! writes its outputs under temp names and renames them, and returns a small JSON value that
//! its parent job reads with `get_children_values`.

pub mod budget;
pub mod download;
pub mod segmenting;
pub mod summarize;
pub mod transcribe;
pub mod webhook;

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::domain::manifest::{Manifest, OutputFile};
use crate::domain::{FailureClass, Progress, Stage, MAX_RETRY_AFTER};
use crate::observe::rss::RssReport;
use crate::store::{DataDir, StoreError, TaskDir};
use crate::tools::asr::AsrModel;
use crate::tools::process::ProcessError;

/// A stage failure: a class for the queue and a human message for the manifest and the API.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct StageError {
    /// What the queue should do (for a cool-down, with the wait the service asked for).
    pub class: FailureClass,
    /// Human-readable reason, e.g. "video is private": one sentence, cause first.
    pub message: String,
    /// The failing program's or service's own words (yt-dlp's error line, ffmpeg's stderr
    /// tail), kept in the manifest and logged under `--verbose`; never shown instead of
    /// `message`.
    pub detail: Option<String>,
}

impl StageError {
    /// The message of a cancelled job, as the manifest and the API show it.
    pub const CANCELLED: &'static str = "cancelled";

    /// A failure of class `class`.
    pub fn new(class: FailureClass, message: impl Into<String>) -> Self {
        Self {
            class,
            message: message.into(),
            detail: None,
        }
    }

    /// The same failure with the program's own words (`detail`; empty text is none).
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        let d: String = detail.into();
        self.detail = Some(d).filter(|d| !d.trim().is_empty());
        self
    }

    /// A failure that retrying cannot fix.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self::new(FailureClass::Permanent, message)
    }

    /// A transient failure.
    pub fn retryable(message: impl Into<String>) -> Self {
        Self::new(FailureClass::Retryable, message)
    }

    /// A rate-limit failure that needs a long pause (the stage's configured cool-down).
    pub fn cool_down(message: impl Into<String>) -> Self {
        Self::new(FailureClass::COOL_DOWN, message)
    }

    /// A rate-limit failure whose service said how long to wait (`Retry-After`); waits
    /// beyond [`MAX_RETRY_AFTER`] are shortened to it (the next attempt asks again).
    pub fn cool_down_for(message: impl Into<String>, wait: std::time::Duration) -> Self {
        Self::new(
            FailureClass::CoolDown {
                wait: Some(wait.min(MAX_RETRY_AFTER)),
            },
            message,
        )
    }

    /// The job was cancelled (its cancel token fired, or its task was cancelled); the
    /// message is [`StageError::CANCELLED`].
    pub fn cancelled() -> Self {
        Self::new(FailureClass::Cancelled, Self::CANCELLED)
    }

    /// This attempt is stale: another worker took the job over (its lock lapsed). Its
    /// processor records nothing and leaves the job to the current attempt.
    pub fn superseded() -> Self {
        Self::retryable("superseded: another worker runs this job now")
    }

    /// Whether another attempt may succeed.
    pub fn is_retryable(&self) -> bool {
        self.class.is_retryable()
    }

    /// For a cool-down: the wait the service asked for (`None` otherwise, or when it named
    /// none).
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self.class {
            FailureClass::CoolDown { wait } => wait,
            _ => None,
        }
    }
}

impl From<StoreError> for StageError {
    fn from(e: StoreError) -> Self {
        if e.is_disk_full() {
            StageError::retryable(format!("disk full: {e}"))
        } else {
            StageError::retryable(e.to_string())
        }
    }
}

impl From<ProcessError> for StageError {
    /// The message is the error's one sentence; a failed program's raw stderr tail is the
    /// detail.
    fn from(e: ProcessError) -> Self {
        let tail = e.stderr_tail().map(str::to_string);
        let se = match e {
            ProcessError::Cancelled { .. } => StageError::cancelled(),
            e if e.is_retryable() => StageError::retryable(e.to_string()),
            e => StageError::permanent(e.to_string()),
        };
        match tail {
            Some(t) => se.with_detail(t),
            None => se,
        }
    }
}

/// The Whisper models one process has loaded, by file: each loads once and is shared by the
/// concurrent transcribe jobs that use it.
type LoadedModels = std::sync::Mutex<HashMap<std::path::PathBuf, Arc<OnceCell<Arc<AsrModel>>>>>;

/// What every job of this process shares: configuration, the data directory and the lazily
/// loaded Whisper models (the configured one, plus any other a task asks for).
pub struct StageCtx {
    /// Resolved configuration.
    pub cfg: Config,
    /// The data directory.
    pub data: DataDir,
    models: LoadedModels,
    /// The multilingual model for the language guard, looked up and loaded once
    /// ([`StageCtx::language_id_model`]).
    language_id: OnceCell<Option<Arc<AsrModel>>>,
    /// This process's transcribe memory plan, once its transcribe worker started.
    plan: std::sync::RwLock<Option<budget::Plan>>,
}

impl StageCtx {
    /// A context over `cfg` and `data`; a model loads on the first transcribe job using it.
    pub fn new(cfg: Config, data: DataDir) -> Self {
        Self {
            cfg,
            data,
            models: LoadedModels::default(),
            language_id: OnceCell::new(),
            plan: std::sync::RwLock::new(None),
        }
    }

    /// Sets this process's transcribe memory plan (the engine does, when its transcribe
    /// worker starts with the plan's slots as concurrency).
    pub fn set_plan(&self, plan: budget::Plan) {
        *self.plan.write().unwrap_or_else(|e| e.into_inner()) = Some(plan);
    }

    /// This process's transcribe memory plan, if a transcribe worker set one.
    pub fn plan(&self) -> Option<budget::Plan> {
        *self.plan.read().unwrap_or_else(|e| e.into_inner())
    }

    /// whisper threads for a job in this process: the plan's, else the configured value.
    pub fn job_threads(&self) -> usize {
        self.plan().map_or(self.cfg.threads, |p| p.threads)
    }

    /// The configured Whisper model (`cfg.model`), loaded once. Errors are permanent (a
    /// missing or bad model file needs the user: `tubescribe model install`).
    pub async fn asr(&self) -> Result<Arc<AsrModel>, StageError> {
        self.asr_at(&self.cfg.model).await
    }

    /// The Whisper model `task` was submitted for (its manifest's `model`; the configured
    /// one for manifests without it), loaded once per process. This worker's file for it is
    /// the configured model, `<models dir>/<installable name's file>` or the submitter's
    /// path, whichever has the recorded SHA-256 ([`crate::tools::model::model_sha256`], hashed once
    /// per file). Errors are permanent: no such file here means the model must be installed.
    ///
    /// An English-only model comes back with the language guard's multilingual model
    /// attached ([`AsrModel::with_language_id`], [`StageCtx::language_id_model`]) unless a
    /// language is configured.
    pub async fn task_asr(&self, task: &TaskDir) -> Result<Arc<AsrModel>, StageError> {
        let model = self.task_model(task).await?;
        Ok(self.guarded(model).await)
    }

    /// `model` as transcription uses it here: an English-only model gets the language
    /// guard's multilingual model attached ([`AsrModel::with_language_id`],
    /// [`StageCtx::language_id_model`]) unless a language is configured; any other comes
    /// back as it is. (The bench gives whisper-rs the same pair, so P3 compares equal work.)
    pub async fn guarded(&self, model: Arc<AsrModel>) -> Arc<AsrModel> {
        if model.is_multilingual() || self.cfg.language.is_some() {
            return model;
        }
        match self.language_id_model().await {
            Some(lid) => Arc::new(model.with_language_id(lid)),
            None => model,
        }
    }

    /// A multilingual model installed here (the first of [`crate::tools::model::installed`] that is
    /// not English-only: `base` — or `base-q8_0` — next to the configured model or in the models
    /// directory), loaded once per process and shared with transcription; `None` when there is
    /// none or it does not load (then the language guard uses the text rules only; logged).
    pub async fn language_id_model(&self) -> Option<Arc<AsrModel>> {
        self.language_id
            .get_or_init(|| async {
                let installed =
                    crate::tools::model::installed(&self.cfg.model, &self.data.models_dir());
                for (name, path) in installed {
                    // English-only by name: `tiny.en`, `small.en`, and their q8_0 files.
                    let english = name.trim_end_matches("-q8_0").ends_with(".en");
                    if english || path == self.cfg.model {
                        continue;
                    }
                    match self.asr_at(&path).await {
                        Ok(m) if m.is_multilingual() => {
                            tracing::info!(model = %name, "language guard uses this multilingual model");
                            return Some(m);
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(model = %name, "language guard cannot use this model: {e}")
                        }
                    }
                }
                None
            })
            .await
            .clone()
    }

    /// [`StageCtx::task_asr`] without the language guard's model.
    pub async fn task_model(&self, task: &TaskDir) -> Result<Arc<AsrModel>, StageError> {
        let Some(want) = task.read_manifest()?.model else {
            return self.asr().await;
        };
        let pinned = crate::domain::ModelFile::parse(&want.name);
        let mut candidates = vec![self.cfg.model.clone()];
        if let Some(m) = pinned {
            candidates.push(self.data.models_dir().join(m.file_name()));
            candidates.push(self.data.models_dir().join(m.model.ct2_dir_name()));
        }
        candidates.push(want.path.clone().into());
        let sha = want.sha256.clone();
        let found = tokio::task::spawn_blocking(move || {
            candidates.into_iter().find(|p| {
                crate::tools::model::model_exists(p)
                    && crate::tools::model::model_sha256(p).is_ok_and(|h| h == sha)
            })
        })
        .await
        .map_err(|e| StageError::permanent(format!("model lookup panicked: {e}")))?;
        match found {
            Some(p) => self.asr_at(&p).await,
            None => Err(StageError::permanent(format!(
                "the task asks for the Whisper model {} (sha256 {}), which this worker does not have: run `tubescribe model install {}` or point --model at that file",
                want.name,
                want.sha256,
                pinned.map_or(want.name.as_str(), |m| m.as_str())
            ))),
        }
    }

    /// The Whisper model at `path`, loaded once per process.
    async fn asr_at(&self, path: &std::path::Path) -> Result<Arc<AsrModel>, StageError> {
        let cell = self
            .models
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(path.to_path_buf())
            .or_default()
            .clone();
        cell.get_or_try_init(|| async {
            let path = path.to_path_buf();
            if !crate::tools::model::model_exists(&path) {
                return Err(StageError::permanent(crate::tools::model::missing_message(
                    &path,
                )));
            }
            tokio::task::spawn_blocking(move || AsrModel::load(&path))
                .await
                .map_err(|e| StageError::permanent(format!("model loading panicked: {e}")))?
                .map(Arc::new)
                .map_err(|e| StageError::permanent(format!("cannot load Whisper model: {e}")))
        })
        .await
        .cloned()
    }
}

/// One job's view: its task, attempt, cancel token, progress sink and its child's result.
///
/// A segment job of long audio gets one too (stage `transcribe`, its own attempt number); its
/// attempt is fenced by its segment's record, so segment work commits no files through
/// [`JobCtx::commit`] or [`JobCtx::write_atomic`] (they fence on the stage's attempt log).
pub struct JobCtx {
    /// The stage this job runs.
    pub stage: Stage,
    /// The task id.
    pub task_id: String,
    /// The task directory.
    pub task: TaskDir,
    /// 1-based attempt number.
    pub attempt: u32,
    /// Cancelled when the job must stop (user cancel, shutdown).
    pub cancel: CancellationToken,
    /// Where the stage reports progress.
    pub progress: tokio::sync::watch::Sender<Progress>,
    /// Return values of child jobs, keyed by BullMQ's child key.
    pub children: HashMap<String, serde_json::Value>,
}

impl JobCtx {
    /// Reports `percent` (0–100) with an optional phase text.
    pub fn report(&self, percent: f64, phase: Option<&str>) {
        self.progress.send_modify(|p| {
            p.percent = percent.clamp(0.0, 100.0);
            p.phase = phase.map(str::to_string);
        });
    }

    /// Commits a finished temp file as output `name` — only while this attempt is still the
    /// job's current one (see [`Manifest::is_current_attempt`]); a stale attempt gets
    /// [`StageError::superseded`] and its file is dropped.
    pub fn commit(&self, tmp: &std::path::Path, name: &str) -> Result<OutputFile, StageError> {
        self.task
            .commit_if(tmp, name, |m| {
                m.is_current_attempt(self.stage, self.attempt)
            })?
            .ok_or_else(StageError::superseded)
    }

    /// Writes output `name` atomically, fenced like [`JobCtx::commit`].
    pub fn write_atomic(&self, name: &str, bytes: &[u8]) -> Result<OutputFile, StageError> {
        self.task
            .write_atomic_if(name, bytes, |m| {
                m.is_current_attempt(self.stage, self.attempt)
            })?
            .ok_or_else(StageError::superseded)
    }

    /// The child's return value parsed as `T` (the previous stage's result).
    pub fn child_result<T: serde::de::DeserializeOwned>(&self) -> Result<T, StageError> {
        let v = self.children.values().next().ok_or_else(|| {
            StageError::permanent("the previous stage's result is missing (child job not found)")
        })?;
        serde_json::from_value(v.clone()).map_err(|e| {
            StageError::permanent(format!("the previous stage's result is malformed: {e}"))
        })
    }
}

/// What a stage hands back: its JSON result for the parent job, its output files for the
/// manifest and what it measured about its own run (recorded by the engine).
pub struct StageOutput {
    /// Return value stored in BullMQ (read by the parent with `get_children_values`).
    pub result: serde_json::Value,
    /// Files written, for the manifest.
    pub outputs: Vec<OutputFile>,
    /// Measurements of the run (speech recognition's RTF and memory); empty for stages that
    /// measure nothing.
    pub measure: Measure,
}

/// What a stage run measured, for the engine to record as metrics, model stats, manifest
/// detail and alerts. The stage only measures; it records none of it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Measure {
    /// Real-time factor of speech recognition: whisper wall seconds ÷ audio seconds.
    pub rtf: Option<f64>,
    /// The process's resident memory while recognising ([`RssReport`], bytes).
    pub rss: Option<RssReport>,
}

impl Measure {
    /// A speech-recognition run: its real-time factor and its memory report.
    pub fn recognition(rtf: f64, rss: RssReport) -> Self {
        Self {
            rtf: Some(rtf),
            rss: Some(rss),
        }
    }
}

/// How often a job paused for disk space looks again.
const SPACE_POLL: std::time::Duration = std::time::Duration::from_secs(2);
/// How long a job waits for disk space before it fails with `disk full`.
pub const MAX_SPACE_WAIT: std::time::Duration = std::time::Duration::from_secs(6 * 3600);

/// Waits until the task directory's filesystem has at least `need` bytes free. While it has
/// not, the job is *paused* (phase `paused: waiting for free disk space …` in the manifest),
/// so a full disk makes new work wait instead of failing in a loop; it resumes by itself once
/// space is freed. Cancel-aware.
///
/// # Errors
/// `cancelled`; `disk full: …` (retryable) after [`MAX_SPACE_WAIT`]; the statvfs error.
pub async fn wait_for_free_space(job: &JobCtx, need: u64, what: &str) -> Result<(), StageError> {
    let started = std::time::Instant::now();
    let mut warned = false;
    loop {
        let free = job.task.free_bytes()?;
        if free >= need {
            if warned {
                tracing::info!(task = %job.task_id, free, "disk space available again; resuming");
            }
            return Ok(());
        }
        let mib = |b: u64| b as f64 / 1_048_576.0;
        let msg = format!(
            "paused: waiting for free disk space before the {what} ({:.1} MiB free, {:.1} MiB needed)",
            mib(free),
            mib(need)
        );
        if !warned {
            tracing::warn!(task = %job.task_id, free, need, "{msg}");
            warned = true;
        }
        if started.elapsed() >= MAX_SPACE_WAIT {
            return Err(StageError::retryable(format!(
                "disk full: only {:.1} MiB free, {:.1} MiB needed before the {what}",
                mib(free),
                mib(need)
            )));
        }
        job.report(0.0, Some(&msg));
        tokio::select! {
            _ = tokio::time::sleep(SPACE_POLL) => {}
            _ = job.cancel.cancelled() => return Err(StageError::cancelled()),
        }
    }
}

/// The result recorded by an earlier run that completed `stage`, when every output it
/// recorded is still in place with the same size and SHA-256 and no later stage found them
/// broken ([`StageRecord::invalidated`](crate::domain::manifest::StageRecord::invalidated):
/// media whose decode came out truncated is downloaded again, never reused); `None` means the
/// stage must run.
///
/// This is what makes a re-run after a crash cheap and exactly-once: a worker killed between
/// writing the manifest's completion and telling BullMQ leaves a job that runs again, finds
/// its outputs complete and hands back the result without redoing (or rewriting) anything.
pub fn completed_earlier(stage: Stage, task: &TaskDir, m: &Manifest) -> Option<serde_json::Value> {
    let r = m.stage(stage)?;
    let result = r.result.clone()?;
    (r.completions > 0
        && r.invalidated.is_none()
        && !r.outputs.is_empty()
        && r.outputs.iter().all(|o| task.verify_output(o)))
    .then_some(result)
}

/// Runs `stage` for one job.
pub async fn run(stage: Stage, ctx: &StageCtx, job: &JobCtx) -> Result<StageOutput, StageError> {
    #[cfg(debug_assertions)]
    if let Ok(m) = job.task.read_manifest() {
        if crate::config::test_hooks::panic_requested(stage, &m.input) {
            panic!("test hook: injected panic in the {stage} stage");
        }
    }
    match stage {
        Stage::Download => download::run(ctx, job).await,
        Stage::Transcribe => transcribe::run(ctx, job).await,
        Stage::Summarize => summarize::run(ctx, job).await,
    }
}
