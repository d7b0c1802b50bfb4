//! The TOML file's schema (`tubescribe.toml`, `--config` / `TUBESCRIBE_CONFIG`): plain serde
//! structs, every key optional, unknown keys refused. Values are range-checked when
//! [`super::Config::resolve`] applies them, not here.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::ConfigError;
use crate::domain::Stage;

/// The TOML file's schema. Every field is optional; see `tubescribe.example.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Data directory (tasks, embedded Redis, models).
    pub data_dir: Option<PathBuf>,
    /// Redis URL (`redis://host:port/db`, `redis+unix:///path/sock`); none = embedded Redis.
    pub redis_url: Option<String>,
    /// Where tasks live: `file:///path` (default: the data directory) or
    /// `s3://bucket/prefix` (S3-compatible storage, records in Redis).
    pub storage_url: Option<String>,
    /// Hosts allowed for direct media URLs (besides YouTube).
    pub allow_hosts: Option<Vec<String>>,
    /// Path or installed name of the Whisper model; default the engine's tiny.en
    /// (`<data_dir>/models/ggml-tiny.en.bin` or `ct2-tiny.en`).
    pub model: Option<PathBuf>,
    /// Worker concurrency per stage.
    #[serde(default)]
    pub concurrency: ConcurrencyFile,
    /// Transcription settings.
    #[serde(default)]
    pub transcribe: TranscribeFile,
    /// OpenAI-compatible LLM settings; absent = extractive summaries.
    pub llm: Option<LlmFile>,
    /// Scheduling, long-audio segments and the transcription memory budget.
    #[serde(default)]
    pub schedule: ScheduleFile,
    /// Program paths.
    #[serde(default)]
    pub programs: ProgramsFile,
    /// Queue and run policy per stage (`[stages.download]`, `[stages.transcribe]`,
    /// `[stages.summarize]`).
    #[serde(default)]
    pub stages: StagesFile,
    /// Worker process settings.
    #[serde(default)]
    pub worker: WorkerFile,
    /// Subtitle cue limits (`transcript.srt`, `transcript.vtt`).
    #[serde(default)]
    pub subtitles: SubtitlesFile,
    /// Signed webhooks: the secret, delivery policy and global endpoints.
    #[serde(default)]
    pub webhooks: WebhooksFile,
    /// What is deleted how long after a task ended (`[retention]`).
    #[serde(default)]
    pub retention: RetentionFile,
}

/// `[webhooks]` in the TOML file; every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhooksFile {
    /// The signing secret, `whsec_` + base64 (`--webhook-secret` and
    /// `TUBESCRIBE_WEBHOOK_SECRET` take precedence).
    pub secret: Option<String>,
    /// Attempts per delivery in total (default 10).
    pub attempts: Option<u32>,
    /// Wait before the first retry, seconds; doubles with each retry, spread by up to half
    /// again (default 5).
    pub backoff_s: Option<f64>,
    /// Seconds one attempt may take, connect to last byte (default 15).
    pub timeout_s: Option<f64>,
    /// `[[webhooks.endpoints]]`: receivers of every task's events.
    #[serde(default)]
    pub endpoints: Vec<EndpointFile>,
}

/// One `[[webhooks.endpoints]]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointFile {
    /// Where deliveries are POSTed (`http` or `https`).
    pub url: String,
    /// The events it receives (`task.completed`, `task.failed`); absent = all.
    pub events: Option<Vec<String>>,
}

/// `[retention]` in the TOML file: how many days after a task ended its files are deleted.
/// Each key is a number of days (fractions allowed; 0 = at the next pass) or `"never"`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionFile {
    /// The downloaded media (default 30).
    pub media_days: Option<Days>,
    /// The decoded 16 kHz WAV, `audio.wav` (default 30).
    pub audio_days: Option<Days>,
    /// The whole task: transcript, summary and record (default `"never"`).
    pub task_days: Option<Days>,
    /// Seconds between the passes a worker makes (default 3600; 0 = workers never prune,
    /// `tubescribe prune` still does).
    pub interval_s: Option<f64>,
}

/// A retention period in the TOML file: a number of days, or the word `"never"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Days {
    /// Days (≥ 0).
    Days(f64),
    /// Only `"never"` is valid (checked when resolved).
    Word(String),
}

/// `[subtitles]` in the TOML file; every key is optional (defaults in
/// [`CueRules::default`](crate::domain::transcript::subtitles::CueRules::default)).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubtitlesFile {
    /// Characters per cue line (default 42).
    pub max_line_chars: Option<usize>,
    /// Lines per cue (default 2).
    pub max_lines: Option<usize>,
    /// Longest time a cue is shown, milliseconds (default 7000).
    pub max_cue_ms: Option<u64>,
    /// Shortest time a cue is shown when the next one leaves room, milliseconds (default 1000).
    pub min_cue_ms: Option<u64>,
    /// Reading speed a cue is held for when silence follows, characters per second (default 20).
    pub max_cps: Option<f64>,
}

/// `[stages.*]` in the TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StagesFile {
    /// `[stages.download]`.
    #[serde(default)]
    pub download: StagePolicyFile,
    /// `[stages.transcribe]`.
    #[serde(default)]
    pub transcribe: StagePolicyFile,
    /// `[stages.summarize]`.
    #[serde(default)]
    pub summarize: StagePolicyFile,
}

/// One `[stages.<stage>]` table; every key is optional (defaults in
/// [`StagePolicy::default_for`](super::StagePolicy::default_for)).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StagePolicyFile {
    /// Attempts in total (1 = no retry).
    pub attempts: Option<u32>,
    /// Delay before the first retry, seconds; doubles with each retry (each wait is spread by
    /// up to half again).
    pub backoff_s: Option<f64>,
    /// Delay before the first retry after a cool-down failure (bot check, HTTP 429), seconds.
    pub cool_down_s: Option<f64>,
    /// Job lock duration, seconds (renewed every half of it while the job runs).
    pub lock_duration_s: Option<f64>,
    /// Interval of the stalled-job check, seconds.
    pub stalled_interval_s: Option<f64>,
    /// How many times a job may stall (its worker died) before it fails.
    pub max_stalled_count: Option<u32>,
    /// Cluster-wide cap on active jobs of this queue (BullMQ global concurrency); 0 removes it.
    pub global_concurrency: Option<u64>,
    /// Fixed part of the stage's time limit, seconds.
    pub timeout_base_s: Option<f64>,
    /// Seconds of time limit added per second of media.
    pub timeout_per_media_s: Option<f64>,
    /// `[stages.download]` only: seconds a download may go without a new byte before it is
    /// stopped and retried (default 120; 0 = no limit).
    pub no_progress_timeout_s: Option<f64>,
}

/// `[worker]` in the TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerFile {
    /// Seconds a stopping worker lets active jobs finish before putting them back in the
    /// queue (default 30).
    pub shutdown_grace_s: Option<f64>,
    /// Seconds between attempts to reach Redis while it is unreachable (default 2; each
    /// worker waits 1–1.5 times it).
    pub redis_retry_s: Option<f64>,
    /// Seconds between passes of the reconciler, which repairs tasks whose record disagrees
    /// with their jobs in Redis (default 30; 0 turns it off).
    pub reconcile_s: Option<f64>,
}

/// `[concurrency]` in the TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConcurrencyFile {
    /// Concurrent download jobs per worker process (default 3).
    pub download: Option<usize>,
    /// Concurrent transcribe jobs per worker process (default 2).
    pub transcribe: Option<usize>,
    /// Concurrent summarize jobs per worker process (default 1).
    pub summarize: Option<usize>,
}

/// `[transcribe]` in the TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TranscribeFile {
    /// whisper.cpp threads per job (default: cores / transcribe concurrency, at least 1).
    pub threads: Option<usize>,
    /// ASR engine: `whisper-cpp` (default) or `ct2` (CTranslate2; builds with the `ct2`
    /// feature, on by default). Decides which form of a named model is used (`ggml-NAME.bin` or `ct2-NAME/`).
    pub engine: Option<String>,
    /// Spoken language code, e.g. "en"; default: "en" for `.en` models, else auto-detect.
    pub language: Option<String>,
    /// Least share of the detected speech the transcript must cover (0–1, default 0.9);
    /// below it the task completes with a warning.
    pub min_coverage: Option<f64>,
}

/// `[schedule]` in the TOML file (see `schedule.rs`, `segments.rs`, `budget.rs`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleFile {
    /// Audio longer than this many seconds is cut into segment jobs of about this length
    /// (default 600, at least 60).
    pub segment_s: Option<f64>,
    /// Priority aging: seconds of audio credited per second a transcribe job has waited
    /// (default 1.0; 0 = pure shortest-job-first).
    pub aging_rate: Option<f64>,
    /// Memory for transcription per worker process, in MB (default: half the machine's RAM).
    pub memory_budget_mb: Option<u64>,
    /// CPU cores given to transcription per worker process (default: all cores).
    pub cores: Option<usize>,
}

/// `[llm]` in the TOML file. Each key is one setting: `TUBESCRIBE_LLM_BASE_URL` and
/// `TUBESCRIBE_LLM_MODEL` replace `base_url` and `model` only, never the rest of the table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmFile {
    /// Base URL of an OpenAI-compatible API, e.g. `http://127.0.0.1:11434/v1`; required here
    /// unless `TUBESCRIBE_LLM_BASE_URL` gives it.
    pub base_url: Option<String>,
    /// Model name sent in requests (default `default`).
    pub model: Option<String>,
    /// Name of the environment variable holding the API key (default `TUBESCRIBE_LLM_API_KEY`).
    pub api_key_env: Option<String>,
    /// Per-request timeout in seconds (default 120).
    pub timeout_s: Option<u64>,
    /// Retries of 429/5xx/timeouts per request (default 4).
    pub max_retries: Option<u32>,
    /// The model's context window in tokens (default 8192).
    pub context_tokens: Option<usize>,
}

/// `[programs]` in the TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProgramsFile {
    /// yt-dlp (default `yt-dlp` on PATH).
    pub ytdlp: Option<PathBuf>,
    /// ffmpeg (default `ffmpeg` on PATH).
    pub ffmpeg: Option<PathBuf>,
    /// ffprobe (default `ffprobe` on PATH).
    pub ffprobe: Option<PathBuf>,
    /// redis-server for the embedded Redis (default `redis-server` on PATH).
    pub redis_server: Option<PathBuf>,
    /// Python with pip, for `model install` (default `python3`).
    pub python: Option<PathBuf>,
}

impl FileConfig {
    /// Reads and parses the config file: `path` when given, else `./tubescribe.toml` when it
    /// exists, else none (all defaults).
    ///
    /// Errors: [`ConfigError::Read`] (a named file that is missing or unreadable),
    /// [`ConfigError::Parse`] (not TOML, or not this schema).
    pub fn load(path: Option<&Path>) -> Result<FileConfig, ConfigError> {
        let default = Path::new("tubescribe.toml");
        let Some(p) = path.or_else(|| default.exists().then_some(default)) else {
            return Ok(FileConfig::default());
        };
        let text = std::fs::read_to_string(p).map_err(|e| ConfigError::Read {
            path: p.to_path_buf(),
            source: e,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: p.to_path_buf(),
            at: e.span().map(|s| line_col(&text, s.start)),
            message: e.message().trim().replace('\n', "; "),
        })
    }
}

/// The 1-based line and column (in characters) of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, col)
}

impl StagesFile {
    /// The `[stages.<stage>]` table of `stage`.
    pub fn of(&self, stage: Stage) -> &StagePolicyFile {
        match stage {
            Stage::Download => &self.download,
            Stage::Transcribe => &self.transcribe,
            Stage::Summarize => &self.summarize,
        }
    }
}
