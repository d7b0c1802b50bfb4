//! Configuration: the only code that reads `TUBESCRIBE_*` environment variables and the TOML file.
//!
//! Precedence, highest first: command-line flag > `TUBESCRIBE_*` environment variable >
//! TOML config file (`--config` / `TUBESCRIBE_CONFIG`, else `./tubescribe.toml` when present) >
//! built-in default. Flags and their variables are declared in the CLI with clap's `env`
//! support (so clap applies the first two levels); [`Config::resolve`] applies the file and the
//! defaults. Settings without a flag are read from their variable here. Precedence is per
//! setting: a flag or variable for one setting never resets the file's other settings of the
//! same table (`TUBESCRIBE_LLM_BASE_URL` replaces `[llm] base_url` and nothing else).
//!
//! Files: this one holds [`Config`], the resolution steps and the settings they build;
//! [`file`] the TOML schema; [`policy`] the per-stage [`StagePolicy`] and its defaults.

pub mod file;
pub mod policy;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::domain::input::InputPolicy;
use crate::domain::models::Engine;
use crate::domain::transcript::subtitles::CueRules;
use crate::domain::webhook::{Endpoint, Event, Secret};
use crate::domain::Stage;
use file::{
    ConcurrencyFile, Days, FileConfig, LlmFile, ProgramsFile, RetentionFile, ScheduleFile,
    SubtitlesFile, WebhooksFile, WorkerFile,
};
pub use policy::StagePolicy;

/// Errors while loading configuration. None is retryable: the user must fix the setting.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The config file is not valid TOML for our schema; shown as
    /// `invalid config file <path>:<line>:<column>: <message>`.
    #[error(
        "invalid config file {}{}: {message}",
        path.display(),
        at.map(|(l, c)| format!(":{l}:{c}")).unwrap_or_default()
    )]
    Parse {
        /// The file.
        path: PathBuf,
        /// Line and column (1-based) of the mistake, when the parser knows it.
        at: Option<(usize, usize)>,
        /// The parser's message.
        message: String,
    },
    /// A value is out of range or malformed.
    #[error("invalid setting {key}: {message}")]
    Invalid {
        /// Setting name, e.g. `concurrency.transcribe`.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// Values given on the command line or through their `TUBESCRIBE_*` variables (clap applies
/// both); `None` means "not given", so the file or the default applies.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--config` / `TUBESCRIBE_CONFIG`.
    pub config: Option<PathBuf>,
    /// `--data-dir` / `TUBESCRIBE_DATA_DIR`.
    pub data_dir: Option<PathBuf>,
    /// `--redis-url` / `TUBESCRIBE_REDIS_URL`.
    pub redis_url: Option<String>,
    /// `--storage-url` / `TUBESCRIBE_STORAGE_URL`.
    pub storage_url: Option<String>,
    /// `--allow-host` (repeatable) / `TUBESCRIBE_ALLOW_HOSTS` (comma-separated).
    pub allow_hosts: Option<Vec<String>>,
    /// `--model` / `TUBESCRIBE_MODEL`.
    pub model: Option<PathBuf>,
    /// `--engine` / `TUBESCRIBE_ENGINE`.
    pub engine: Option<Engine>,
    /// `--download-concurrency` / `TUBESCRIBE_DOWNLOAD_CONCURRENCY`.
    pub download_concurrency: Option<usize>,
    /// `--transcribe-concurrency` / `TUBESCRIBE_TRANSCRIBE_CONCURRENCY`.
    pub transcribe_concurrency: Option<usize>,
    /// `--summarize-concurrency` / `TUBESCRIBE_SUMMARIZE_CONCURRENCY`.
    pub summarize_concurrency: Option<usize>,
    /// `--threads` / `TUBESCRIBE_THREADS`.
    pub threads: Option<usize>,
    /// `--shutdown-grace` / `TUBESCRIBE_SHUTDOWN_GRACE_S` (seconds).
    pub shutdown_grace_s: Option<f64>,
    /// `--webhook-secret` / `TUBESCRIBE_WEBHOOK_SECRET`.
    pub webhook_secret: Option<String>,
}

/// Webhook settings after resolution (`[webhooks]`, `--webhook-secret`).
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookSettings {
    /// The signing secret; `None` = no webhooks can be signed, so callbacks are refused.
    pub secret: Option<Secret>,
    /// Receivers of every task's events (`[[webhooks.endpoints]]`).
    pub endpoints: Vec<Endpoint>,
    /// Attempts per delivery in total (≥ 1, default 10).
    pub attempts: u32,
    /// Wait before the first retry; doubles with each (default 5 s).
    pub backoff: Duration,
    /// Time one attempt may take (default 15 s, at least 1 s).
    pub timeout: Duration,
}

/// The model for a `--model` value: a path as given, or — for a bare model name such as
/// `base`, `tiny.en` or `tiny.en-q8_0` that is not a file in the working directory — what
/// `tubescribe model install NAME` writes for `engine` (`<data_dir>/models/ggml-NAME.bin` for
/// whisper.cpp, the directory `<data_dir>/models/ct2-NAME` for CTranslate2, which has no q8_0
/// form: such a name stays as given and is reported missing). `None` means tiny.en.
fn model_path(given: Option<PathBuf>, data_dir: &Path, engine: Engine) -> PathBuf {
    use crate::domain::{ModelFile, ModelName, Quant};
    let models = data_dir.join("models");
    let installed = |file: ModelFile| match engine {
        Engine::WhisperCpp => Some(models.join(file.file_name())),
        Engine::Ct2 if file.quant == Quant::F16 => Some(models.join(file.model.ct2_dir_name())),
        Engine::Ct2 => None,
    };
    match given {
        None => installed(ModelName::TinyEn.into()).unwrap_or_default(),
        Some(p) if p.components().count() == 1 && !p.exists() => {
            ModelFile::parse(&p.to_string_lossy())
                .and_then(installed)
                .unwrap_or(p)
        }
        Some(p) => p,
    }
}

/// The ASR engine: `--engine` / `TUBESCRIBE_ENGINE`, else `[transcribe] engine`, else
/// [`Engine::default`] (CTranslate2 in a build with it, else whisper.cpp). An engine this
/// build lacks is refused here, before any work starts.
fn resolve_engine(given: Option<Engine>, file: Option<&str>) -> Result<Engine, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        key: "transcribe.engine".into(),
        message,
    };
    let engine = match (given, file) {
        (Some(e), _) => e,
        (None, Some(s)) => Engine::parse(s)
            .ok_or_else(|| invalid(format!("unknown engine {s:?}: whisper-cpp or ct2")))?,
        (None, None) => Engine::default(),
    };
    if !engine.available() {
        return Err(invalid(format!(
            "this build has no {engine} engine: build with `cargo build --features ct2` after \
             scripts/ct2-setup.sh"
        )));
    }
    Ok(engine)
}

/// Default `schedule.segment_s`: audio longer than 120 s is cut into segment jobs of about two
/// minutes. Measured with `tubescribe bench` on a quiet 2-core machine (tiny.en, language guard
/// on). `bench --quick` (20 s clips behind a 2-minute one), `segment_s` 60 / 120 / 600: P1 ÷
/// floor 1.17 / 1.19 / 1.57, P2 1.03 / 1.07 / 1.04. The full bench (≈ 65 s clips behind a
/// 10-minute video) separates 60 from 120: at 60 the clips are split too and each finishes
/// late (P1 ÷ floor 2.16, against 1.23 at 120 and 1.21 at 600), while at 600 the 10-minute
/// video is one job (P2 1.29, job peak RSS 522 MB, against 1.09 and 443 MB at 120). A 12-minute
/// talk alone is 1.65× faster on 2 slots than on 1 at 120 (1.76× at 600, 1.97× at 60 in one
/// run; single runs vary by ± 10 % here). With the segments shrinking towards the end
/// (`segmenting::segment_lengths`) and cut at the pause nearest the plan, the same talk is
/// 1.92–1.95× faster on 2 slots at 120 (3 runs; whisper-rs itself gets 1.78–1.83× from two
/// halves side by side on this machine). Measured again (full bench, 2026-12-06) once a split
/// task's segments kept its place in the queue and its merge step went first
/// (`schedule::job_priority`, `schedule::rank_merge_first`): at 60 the 1-minute clips finish
/// one after another instead of all late, but P1 ÷ floor is still 1.31–1.32 against 1.23 at
/// 120 — the floor divides by the slowest clip's solo latency, and which clip runs last is
/// decided by audio length while the solo latencies of clips of equal length differed by 30 %
/// (3.86–5.04 s) — and a split clip leaves no one-job run to measure P4 with. P2 1.02 / 1.09,
/// P3 1.04 / 0.92, P6 1.87 / 1.93.
pub const DEFAULT_SEGMENT_S: f64 = 120.0;

/// Scheduling settings after resolution (`[schedule]`, `TUBESCRIBE_SEGMENT_S`,
/// `TUBESCRIBE_AGING_RATE`, `TUBESCRIBE_MEMORY_BUDGET_MB`, `TUBESCRIBE_TRANSCRIBE_CORES`).
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleSettings {
    /// Segment length in seconds; longer audio is split into segment jobs (≥ 60).
    pub segment_s: f64,
    /// Audio seconds of priority credit per second waited (≥ 0).
    pub aging_rate: f64,
    /// Transcription memory budget per worker process, in bytes.
    pub memory_budget_bytes: u64,
    /// Cores given to transcription per worker process (≥ 1).
    pub cores: usize,
}

/// Total RAM from `/proc/meminfo` (`MemTotal`, kB), in bytes; `None` when unreadable.
pub fn machine_ram_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// LLM settings after resolution.
#[derive(Debug, Clone)]
pub struct LlmSettings {
    /// Base URL of the OpenAI-compatible API (ends before `/chat/completions`).
    pub base_url: String,
    /// Model name.
    pub model: String,
    /// API key, if the named variable is set.
    pub api_key: Option<String>,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Retries per request.
    pub max_retries: u32,
    /// Context window in tokens.
    pub context_tokens: usize,
}

/// Paths of the external programs.
#[derive(Debug, Clone)]
pub struct Programs {
    /// yt-dlp.
    pub ytdlp: PathBuf,
    /// ffmpeg.
    pub ffmpeg: PathBuf,
    /// ffprobe.
    pub ffprobe: PathBuf,
    /// redis-server.
    pub redis_server: PathBuf,
    /// Python 3 with pip.
    pub python: PathBuf,
}

/// The resolved configuration every command runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Data directory root (absolute).
    pub data_dir: PathBuf,
    /// Redis URL; `None` = start/reuse the embedded redis-server in the data directory.
    pub redis_url: Option<String>,
    /// Where task artifacts and records live (`storage_url`); default: the data directory.
    pub storage: Storage,
    /// Hosts allowed for direct media URLs (lower-case host or host:port).
    pub allow_hosts: Vec<String>,
    /// Whisper model: a ggml file (whisper.cpp) or a CTranslate2 model directory.
    pub model: PathBuf,
    /// The ASR engine (`--engine`, `[transcribe] engine`); the model's form follows it
    /// for named models.
    pub engine: Engine,
    /// Concurrent download jobs per worker process.
    pub download_concurrency: usize,
    /// Concurrent transcribe jobs per worker process.
    pub transcribe_concurrency: usize,
    /// Concurrent summarize jobs per worker process.
    pub summarize_concurrency: usize,
    /// Whisper threads per transcribe job (either engine).
    pub threads: usize,
    /// True when `threads` was set by a flag, variable or the file (not the default), so the
    /// memory budget does not recompute it.
    pub threads_explicit: bool,
    /// Scheduling, segment and memory-budget settings.
    pub schedule: ScheduleSettings,
    /// Spoken language, if fixed.
    pub language: Option<String>,
    /// Least share of the speech found by the gate that transcript words must cover (0–1);
    /// below it the task ends `completed_with_warnings` (`[transcribe] min_coverage`).
    pub min_coverage: f64,
    /// LLM settings; `None` = offline extractive summaries.
    pub llm: Option<LlmSettings>,
    /// External program paths.
    pub programs: Programs,
    /// Free space (bytes) the data directory's filesystem must have before a download or
    /// decode starts; below it the job pauses until space is freed
    /// (`TUBESCRIBE_MIN_FREE_MB`, default [`DEFAULT_MIN_FREE_MB`] MiB).
    pub min_free_bytes: u64,
    /// Queue and run policy of each stage (all three, in [`Stage::ALL`] order).
    pub stage_policies: Vec<(Stage, StagePolicy)>,
    /// How long a stopping worker lets active jobs finish before putting them back in the
    /// queue for another worker.
    pub shutdown_grace: Duration,
    /// Pause between attempts to reach Redis while it is unreachable (each worker waits
    /// 1–1.5 times it, drawn once: [`crate::domain::retry::backoff_wait`]).
    pub redis_retry: Duration,
    /// Period of the reconciler in serving and worker processes (`[worker] reconcile_s`,
    /// default 30 s); zero turns it off.
    pub reconcile_every: Duration,
    /// Subtitle cue limits (`[subtitles]`).
    pub subtitles: CueRules,
    /// Signed webhooks (`[webhooks]`).
    pub webhooks: WebhookSettings,
    /// What is deleted how long after a task ended (`[retention]`).
    pub retention: Retention,
}

/// The retention policy (`[retention]`; `TUBESCRIBE_RETENTION_*` variables override single
/// keys): how long after a task ended (completed, failed or cancelled) each kind of file is
/// deleted; `None` = kept. Applied by `tubescribe prune` and every `interval` by one worker.
#[derive(Debug, Clone, PartialEq)]
pub struct Retention {
    /// The downloaded media (`media_days`, default 30 days).
    pub media: Option<Duration>,
    /// `audio.wav` (`audio_days`, default 30 days).
    pub audio: Option<Duration>,
    /// The whole task (`task_days`, default never).
    pub task: Option<Duration>,
    /// Time between the passes a worker makes (`interval_s`, default 1 h); zero = none.
    pub interval: Duration,
}

/// Default `[retention] media_days` and `audio_days`.
pub const DEFAULT_RETENTION_DAYS: f64 = 30.0;

/// Default of `TUBESCRIBE_MIN_FREE_MB`: free space, in MiB, required before a download or
/// decode starts.
pub const DEFAULT_MIN_FREE_MB: u64 = 1024;
/// Default `[transcribe] min_coverage`: 90 % of the detected speech must have text.
pub const DEFAULT_MIN_COVERAGE: f64 = 0.9;

/// Largest accepted `transcribe.threads`: far above any useful value (whisper.cpp scales to
/// the physical cores), low enough that a typo cannot make the OS refuse thread creation,
/// which aborts the process mid-job.
pub const MAX_THREADS: usize = 256;

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// The default data directory: `$XDG_DATA_HOME/tubescribe`, else `~/.local/share/tubescribe`,
/// else `./.tubescribe`.
pub fn default_data_dir() -> PathBuf {
    if let Some(x) = env_path("XDG_DATA_HOME") {
        return x.join("tubescribe");
    }
    if let Some(h) = env_path("HOME") {
        return h.join(".local/share/tubescribe");
    }
    PathBuf::from(".tubescribe")
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|c| c.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}

/// Splits a comma-separated host list, trimming and lower-casing, dropping empties.
pub fn split_hosts(s: &str) -> Vec<String> {
    s.split(',')
        .map(|h| h.trim().to_ascii_lowercase())
        .filter(|h| !h.is_empty())
        .collect()
}

impl Config {
    /// Loads the config file (if any) and applies the precedence described in the module docs.
    /// Each setting group is resolved by its own step below, in this order (so the first
    /// invalid setting is the one reported).
    ///
    /// Errors: an explicitly named config file that is missing or invalid, zero concurrency,
    /// any out-of-range setting ([`ConfigError::Invalid`] names it).
    pub fn resolve(o: &Overrides) -> Result<Config, ConfigError> {
        let file = FileConfig::load(o.config.as_deref())?;
        let data_dir = absolute(
            &o.data_dir
                .clone()
                .or(file.data_dir.clone())
                .unwrap_or_else(default_data_dir),
        );
        let engine = resolve_engine(o.engine, file.transcribe.engine.as_deref())?;
        let model = absolute(&model_path(
            o.model.clone().or(file.model.clone()),
            &data_dir,
            engine,
        ));
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let [download_concurrency, transcribe_concurrency, summarize_concurrency] =
            resolve_concurrency(o, &file.concurrency)?;
        let threads_given = o.threads.or(file.transcribe.threads);
        let threads = resolve_threads(threads_given, cores, transcribe_concurrency)?;
        let schedule = resolve_schedule(&file.schedule, cores)?;
        let subtitles = resolve_subtitles(&file.subtitles)?;
        let stage_policies = StagePolicy::resolve_all(&file.stages)?;
        let (shutdown_grace, redis_retry) = resolve_worker(o, &file.worker)?;
        let reconcile_every = seconds("worker.reconcile_s", file.worker.reconcile_s, 30.0)?;
        let allow_hosts = resolve_allow_hosts(o.allow_hosts.clone().or(file.allow_hosts))?;
        let min_coverage = resolve_min_coverage(file.transcribe.min_coverage)?;
        let llm = resolve_llm(file.llm.as_ref())?;
        let storage = resolve_storage(o.storage_url.clone().or(file.storage_url), &data_dir)?;
        let webhooks = resolve_webhooks(o.webhook_secret.clone(), &file.webhooks)?;
        let retention = resolve_retention(&file.retention)?;
        Ok(Config {
            data_dir,
            storage,
            redis_url: o
                .redis_url
                .clone()
                .or(file.redis_url)
                .filter(|s| !s.is_empty()),
            allow_hosts,
            model,
            engine,
            download_concurrency,
            transcribe_concurrency,
            summarize_concurrency,
            threads,
            threads_explicit: threads_given.is_some(),
            schedule,
            language: file.transcribe.language,
            min_coverage,
            llm,
            programs: resolve_programs(&file.programs),
            min_free_bytes: resolve_min_free_bytes()?,
            stage_policies,
            shutdown_grace,
            redis_retry,
            reconcile_every,
            subtitles,
            webhooks,
            retention,
        })
    }

    /// The resolved policy of `stage`.
    pub fn policy(&self, stage: Stage) -> &StagePolicy {
        &self
            .stage_policies
            .iter()
            .find(|(s, _)| *s == stage)
            .expect("resolve fills every stage")
            .1
    }

    /// Concurrent jobs of `stage` per worker process (`[concurrency]`, ≥ 1).
    pub fn concurrency(&self, stage: Stage) -> usize {
        match stage {
            Stage::Download => self.download_concurrency,
            Stage::Transcribe => self.transcribe_concurrency,
            Stage::Summarize => self.summarize_concurrency,
        }
    }

    /// The input policy of a local submitter (the CLI): direct URLs on [`Config::allow_hosts`]
    /// only, local files allowed. The server sets `remote` itself.
    pub fn input_policy(&self) -> InputPolicy {
        InputPolicy {
            allow_hosts: self.allow_hosts.clone(),
            ..Default::default()
        }
    }
}

/// `value` (flag or variable, else file) or `default`, refusing 0.
fn at_least_one(key: &str, value: Option<usize>, default: usize) -> Result<usize, ConfigError> {
    match value.unwrap_or(default) {
        0 => Err(ConfigError::Invalid {
            key: key.into(),
            message: "must be at least 1".into(),
        }),
        v => Ok(v),
    }
}

/// Jobs per worker process of download, transcribe and summarize (defaults 3, 2, 1).
fn resolve_concurrency(o: &Overrides, f: &ConcurrencyFile) -> Result<[usize; 3], ConfigError> {
    Ok([
        at_least_one(
            "concurrency.download",
            o.download_concurrency.or(f.download),
            3,
        )?,
        at_least_one(
            "concurrency.transcribe",
            o.transcribe_concurrency.or(f.transcribe),
            2,
        )?,
        at_least_one(
            "concurrency.summarize",
            o.summarize_concurrency.or(f.summarize),
            1,
        )?,
    ])
}

/// Whisper threads per transcribe job: `given`, else the cores shared by the transcribe
/// slots; 1 to [`MAX_THREADS`].
fn resolve_threads(given: Option<usize>, cores: usize, slots: usize) -> Result<usize, ConfigError> {
    let default = (cores / slots).clamp(1, MAX_THREADS);
    let threads = at_least_one("transcribe.threads", given, default)?;
    if threads > MAX_THREADS {
        return Err(ConfigError::Invalid {
            key: "transcribe.threads".into(),
            message: format!(
                "{threads} is more than {MAX_THREADS}; whisper.cpp gains nothing beyond the \
                 machine's cores ({cores} here)"
            ),
        });
    }
    Ok(threads)
}

/// A number of seconds (`value`, else `default`) as a duration; finite, ≥ 0 and < 10⁹.
fn seconds(key: &str, value: Option<f64>, default: f64) -> Result<Duration, ConfigError> {
    match value.unwrap_or(default) {
        v if v.is_finite() && (0.0..1e9).contains(&v) => Ok(Duration::from_secs_f64(v)),
        v => Err(ConfigError::Invalid {
            key: key.into(),
            message: format!("{v} is not a number of seconds ≥ 0"),
        }),
    }
}

/// `[worker]`: the shutdown grace (flag > file > 30 s) and the Redis retry pause (file > 2 s,
/// at least 100 ms).
fn resolve_worker(o: &Overrides, f: &WorkerFile) -> Result<(Duration, Duration), ConfigError> {
    let shutdown_grace = seconds(
        "worker.shutdown_grace_s",
        o.shutdown_grace_s.or(f.shutdown_grace_s),
        30.0,
    )?;
    let redis_retry =
        seconds("worker.redis_retry_s", f.redis_retry_s, 2.0)?.max(Duration::from_millis(100));
    Ok((shutdown_grace, redis_retry))
}

/// The allow-list of direct-URL hosts: every given entry split at commas, lower-cased, and
/// checked to be a host or host:port.
/// Where a deployment keeps its tasks (`--storage-url` / `TUBESCRIBE_STORAGE_URL` /
/// `storage_url`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Storage {
    /// A local directory holding `tasks/` (`file:///path`; default: the data directory):
    /// task records are `manifest.json` files under file locks, as on one machine.
    Local(PathBuf),
    /// S3-compatible object storage (`s3://bucket/prefix`): outputs are objects under
    /// `<prefix>/tasks/<task-id>/`, task records live in Redis, stages run in this process's
    /// own data directory as scratch. Endpoint and credentials come from the `AWS_*`
    /// variables (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_REGION`, `AWS_ALLOW_HTTP`).
    S3 {
        /// The bucket.
        bucket: String,
        /// Key prefix without leading or trailing `/` (may be empty).
        prefix: String,
    },
}

/// `storage_url`: `file:///path`, `s3://bucket[/prefix]` or none (the data directory).
fn resolve_storage(given: Option<String>, data_dir: &Path) -> Result<Storage, ConfigError> {
    let Some(raw) = given.filter(|s| !s.trim().is_empty()) else {
        return Ok(Storage::Local(data_dir.to_path_buf()));
    };
    let bad = |why: &str| ConfigError::Invalid {
        key: "storage_url".into(),
        message: format!("{raw:?} {why} (write file:///path or s3://bucket/prefix)"),
    };
    let url = url::Url::parse(raw.trim()).map_err(|e| bad(&format!("is not a URL: {e}")))?;
    match url.scheme() {
        "file" => {
            let p = url
                .to_file_path()
                .map_err(|_| bad("is not an absolute local path"))?;
            Ok(Storage::Local(p))
        }
        "s3" => {
            let bucket = url.host_str().unwrap_or_default().to_string();
            if bucket.is_empty() {
                return Err(bad("names no bucket"));
            }
            let prefix = url.path().trim_matches('/').to_string();
            Ok(Storage::S3 { bucket, prefix })
        }
        other => Err(bad(&format!("has the unsupported scheme {other}:"))),
    }
}

fn resolve_allow_hosts(given: Option<Vec<String>>) -> Result<Vec<String>, ConfigError> {
    let hosts: Vec<String> = given
        .unwrap_or_default()
        .iter()
        .flat_map(|h| split_hosts(h))
        .collect();
    if let Some(bad) = hosts
        .iter()
        .find(|h| !crate::domain::input::valid_host_entry(h))
    {
        return Err(ConfigError::Invalid {
            key: "allow_hosts".into(),
            message: format!(
                "{bad:?} is not a host or host:port (write e.g. media.example.org, \
                 localhost:8080 or [::1]:9000; no scheme, path or wildcard)"
            ),
        });
    }
    Ok(hosts)
}

/// `[webhooks]`: the secret (flag or variable > file; checked, never echoed), the endpoints
/// (an `http`/`https` URL each, events known; none named = all), attempts (≥ 1, default 10),
/// backoff (default 5 s) and the per-attempt timeout (default 15 s, at least 1 s).
fn resolve_webhooks(
    secret: Option<String>,
    f: &WebhooksFile,
) -> Result<WebhookSettings, ConfigError> {
    let invalid = |key: &str, message: String| ConfigError::Invalid {
        key: key.into(),
        message,
    };
    let secret = match secret.filter(|s| !s.is_empty()).or(f.secret.clone()) {
        Some(s) => Some(Secret::parse(&s).map_err(|m| invalid("webhooks.secret", m))?),
        None => None,
    };
    let mut endpoints = Vec::new();
    for e in &f.endpoints {
        let key = "webhooks.endpoints";
        match url::Url::parse(&e.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {}
            _ => {
                return Err(invalid(
                    key,
                    format!("{:?} is not an http or https URL", e.url),
                ))
            }
        }
        let events = match &e.events {
            None => Event::ALL.to_vec(),
            Some(names) => names
                .iter()
                .map(|n| {
                    Event::parse(n).ok_or_else(|| {
                        invalid(
                            key,
                            format!("unknown event {n:?}; use task.completed or task.failed"),
                        )
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        endpoints.push(Endpoint {
            url: e.url.clone(),
            events,
        });
    }
    let attempts = f.attempts.unwrap_or(10);
    if attempts == 0 {
        return Err(invalid("webhooks.attempts", "must be at least 1".into()));
    }
    Ok(WebhookSettings {
        secret,
        endpoints,
        attempts,
        backoff: seconds("webhooks.backoff_s", f.backoff_s, 5.0)?,
        timeout: seconds("webhooks.timeout_s", f.timeout_s, 15.0)?.max(Duration::from_secs(1)),
    })
}

/// `[transcribe] min_coverage`: a share between 0 and 1, default [`DEFAULT_MIN_COVERAGE`].
fn resolve_min_coverage(given: Option<f64>) -> Result<f64, ConfigError> {
    match given {
        None => Ok(DEFAULT_MIN_COVERAGE),
        Some(c) if (0.0..=1.0).contains(&c) => Ok(c),
        Some(c) => Err(ConfigError::Invalid {
            key: "transcribe.min_coverage".into(),
            message: format!("{c} is not a share between 0 and 1"),
        }),
    }
}

/// `TUBESCRIBE_MIN_FREE_MB` (default [`DEFAULT_MIN_FREE_MB`]) in bytes.
fn resolve_min_free_bytes() -> Result<u64, ConfigError> {
    let mb = match std::env::var("TUBESCRIBE_MIN_FREE_MB") {
        Ok(v) if !v.trim().is_empty() => {
            v.trim().parse::<u64>().map_err(|e| ConfigError::Invalid {
                key: "TUBESCRIBE_MIN_FREE_MB".into(),
                message: format!("{v:?}: {e}"),
            })?
        }
        _ => DEFAULT_MIN_FREE_MB,
    };
    Ok(mb.saturating_mul(1024 * 1024))
}

/// The LLM, per setting: `TUBESCRIBE_LLM_BASE_URL` > `[llm] base_url`,
/// `TUBESCRIBE_LLM_MODEL` > `[llm] model` > `default`; the key from the variable that
/// `[llm] api_key_env` names (default `TUBESCRIBE_LLM_API_KEY`); `timeout_s`, `max_retries`
/// and `context_tokens` from `[llm]` or their defaults (120 s, 4, 8192). An empty variable
/// counts as unset. No base URL anywhere means offline extractive summaries.
///
/// Errors: an `[llm]` table without a base URL in it or in the variable.
fn resolve_llm(f: Option<&LlmFile>) -> Result<Option<LlmSettings>, ConfigError> {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let none = LlmFile::default();
    let l = f.unwrap_or(&none);
    let Some(base_url) = env("TUBESCRIBE_LLM_BASE_URL").or_else(|| l.base_url.clone()) else {
        return match f {
            None => Ok(None),
            Some(_) => Err(ConfigError::Invalid {
                key: "llm.base_url".into(),
                message: "missing: set [llm] base_url or TUBESCRIBE_LLM_BASE_URL".into(),
            }),
        };
    };
    Ok(Some(LlmSettings {
        base_url,
        model: env("TUBESCRIBE_LLM_MODEL")
            .or_else(|| l.model.clone())
            .unwrap_or_else(|| "default".into()),
        api_key: env(l.api_key_env.as_deref().unwrap_or("TUBESCRIBE_LLM_API_KEY")),
        timeout: Duration::from_secs(l.timeout_s.unwrap_or(120)),
        max_retries: l.max_retries.unwrap_or(4),
        context_tokens: l.context_tokens.unwrap_or(8192),
    }))
}

/// One program's path: its variable > the file > `default`. A bare name is looked up on
/// PATH; a relative path with a separator is made absolute now, because programs may run in
/// other working directories.
fn program(var: &str, file: &Option<PathBuf>, default: &str) -> PathBuf {
    let p = env_path(var)
        .or_else(|| file.clone())
        .unwrap_or_else(|| PathBuf::from(default));
    if p.components().count() > 1 {
        absolute(&p)
    } else {
        p
    }
}

/// `[programs]` with their `TUBESCRIBE_*` variables.
fn resolve_programs(f: &ProgramsFile) -> Programs {
    Programs {
        ytdlp: program("TUBESCRIBE_YTDLP", &f.ytdlp, "yt-dlp"),
        ffmpeg: program("TUBESCRIBE_FFMPEG", &f.ffmpeg, "ffmpeg"),
        ffprobe: program("TUBESCRIBE_FFPROBE", &f.ffprobe, "ffprobe"),
        redis_server: program("TUBESCRIBE_REDIS_SERVER", &f.redis_server, "redis-server"),
        python: program("TUBESCRIBE_PYTHON", &f.python, "python3"),
    }
}

/// The tracing filter directives of `TUBESCRIBE_LOG` (e.g. `info,tubescribe=debug`), if set;
/// the binary falls back to its own default filter when unset or invalid.
pub fn log_filter() -> Option<String> {
    std::env::var("TUBESCRIBE_LOG").ok()
}

/// Resolves `[subtitles]`: file > default, each value range-checked.
fn resolve_subtitles(f: &SubtitlesFile) -> Result<CueRules, ConfigError> {
    let d = CueRules::default();
    let invalid = |key: &str, message: String| ConfigError::Invalid {
        key: format!("subtitles.{key}"),
        message,
    };
    let r = CueRules {
        max_line_chars: f.max_line_chars.unwrap_or(d.max_line_chars),
        max_lines: f.max_lines.unwrap_or(d.max_lines),
        max_cue_ms: f.max_cue_ms.unwrap_or(d.max_cue_ms),
        min_cue_ms: f.min_cue_ms.unwrap_or(d.min_cue_ms),
        max_cps: f.max_cps.unwrap_or(d.max_cps),
    };
    if !(10..=1000).contains(&r.max_line_chars) {
        return Err(invalid(
            "max_line_chars",
            format!(
                "{} is out of range (10 to 1000 characters)",
                r.max_line_chars
            ),
        ));
    }
    if !(1..=10).contains(&r.max_lines) {
        return Err(invalid(
            "max_lines",
            format!("{} is out of range (1 to 10 lines)", r.max_lines),
        ));
    }
    if !(1000..=600_000).contains(&r.max_cue_ms) {
        return Err(invalid(
            "max_cue_ms",
            format!("{} is out of range (1000 to 600000 ms)", r.max_cue_ms),
        ));
    }
    if r.min_cue_ms > r.max_cue_ms {
        return Err(invalid(
            "min_cue_ms",
            format!(
                "{} is more than subtitles.max_cue_ms ({})",
                r.min_cue_ms, r.max_cue_ms
            ),
        ));
    }
    if !(r.max_cps.is_finite() && r.max_cps >= 1.0) {
        return Err(invalid(
            "max_cps",
            format!(
                "{} must be a number of characters per second ≥ 1",
                r.max_cps
            ),
        ));
    }
    Ok(r)
}

fn env_parse<T: std::str::FromStr>(name: &str, key: &str) -> Result<Option<T>, ConfigError> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => {
            v.trim()
                .parse()
                .map(Some)
                .map_err(|_| ConfigError::Invalid {
                    key: key.into(),
                    message: format!("{name}={v:?} is not a number"),
                })
        }
        _ => Ok(None),
    }
}

/// Resolves `[schedule]` with its `TUBESCRIBE_*` variables (variable > file > default).
fn resolve_schedule(f: &ScheduleFile, cores: usize) -> Result<ScheduleSettings, ConfigError> {
    let invalid = |key: &str, message: &str| ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    };
    let segment_s = env_parse::<f64>("TUBESCRIBE_SEGMENT_S", "schedule.segment_s")?
        .or(f.segment_s)
        .unwrap_or(DEFAULT_SEGMENT_S);
    if segment_s.is_nan() || segment_s < 60.0 {
        return Err(invalid("schedule.segment_s", "must be at least 60 seconds"));
    }
    let aging_rate = env_parse::<f64>("TUBESCRIBE_AGING_RATE", "schedule.aging_rate")?
        .or(f.aging_rate)
        .unwrap_or(1.0);
    if aging_rate.is_nan() || aging_rate < 0.0 {
        return Err(invalid("schedule.aging_rate", "must be 0 or more"));
    }
    let budget_mb = env_parse::<u64>("TUBESCRIBE_MEMORY_BUDGET_MB", "schedule.memory_budget_mb")?
        .or(f.memory_budget_mb);
    let memory_budget_bytes = match budget_mb {
        Some(0) => return Err(invalid("schedule.memory_budget_mb", "must be at least 1")),
        Some(mb) => mb * 1024 * 1024,
        None => machine_ram_bytes().unwrap_or(2 << 30) / 2,
    };
    let machine_cores = cores;
    let cores = env_parse::<usize>("TUBESCRIBE_TRANSCRIBE_CORES", "schedule.cores")?
        .or(f.cores)
        .unwrap_or(cores);
    if cores == 0 {
        return Err(invalid("schedule.cores", "must be at least 1"));
    }
    if cores > machine_cores {
        return Err(invalid(
            "schedule.cores",
            &format!("{cores} is more than this machine's {machine_cores} cores"),
        ));
    }
    Ok(ScheduleSettings {
        segment_s,
        aging_rate,
        memory_budget_bytes,
        cores,
    })
}

/// Resolves `[retention]` with its variables (`TUBESCRIBE_RETENTION_MEDIA_DAYS`, `…_AUDIO_DAYS`,
/// `…_TASK_DAYS`: a number of days or `never`; `TUBESCRIBE_RETENTION_INTERVAL_S`), variable >
/// file > default.
fn resolve_retention(f: &RetentionFile) -> Result<Retention, ConfigError> {
    let days = |key: &str, var: &str, file: &Option<Days>, default: Option<f64>| {
        let given = match std::env::var(var) {
            Ok(v) if !v.trim().is_empty() => Some(match v.trim().parse::<f64>() {
                Ok(n) => Days::Days(n),
                Err(_) => Days::Word(v.trim().to_string()),
            }),
            _ => file.clone(),
        };
        let n = match given {
            None => default,
            Some(Days::Word(w)) if w == "never" => None,
            Some(Days::Days(n)) if n.is_finite() && (0.0..1e6).contains(&n) => Some(n),
            Some(v) => {
                let shown = match v {
                    Days::Days(n) => n.to_string(),
                    Days::Word(w) => format!("{w:?}"),
                };
                return Err(ConfigError::Invalid {
                    key: key.into(),
                    message: format!("{shown} is neither a number of days ≥ 0 nor \"never\""),
                });
            }
        };
        Ok(n.map(|d| Duration::from_secs_f64(d * 86_400.0)))
    };
    let interval_s = env_parse::<f64>("TUBESCRIBE_RETENTION_INTERVAL_S", "retention.interval_s")?
        .or(f.interval_s);
    Ok(Retention {
        media: days(
            "retention.media_days",
            "TUBESCRIBE_RETENTION_MEDIA_DAYS",
            &f.media_days,
            Some(DEFAULT_RETENTION_DAYS),
        )?,
        audio: days(
            "retention.audio_days",
            "TUBESCRIBE_RETENTION_AUDIO_DAYS",
            &f.audio_days,
            Some(DEFAULT_RETENTION_DAYS),
        )?,
        task: days(
            "retention.task_days",
            "TUBESCRIBE_RETENTION_TASK_DAYS",
            &f.task_days,
            None,
        )?,
        interval: seconds("retention.interval_s", interval_s, 3600.0)?,
    })
}

/// Hooks for the fault tests, compiled into debug builds only (`cfg(debug_assertions)`), so a
/// release binary never reads them. `scripts/test.sh` and `cargo test` use debug builds.
#[cfg(debug_assertions)]
pub mod test_hooks {
    use crate::domain::Stage;

    /// `TUBESCRIBE_TEST_PANIC=<stage>:<text>`: the stage panics for every task whose input
    /// contains `<text>` (e.g. `summarize:panic-me`).
    pub fn panic_requested(stage: Stage, input: &str) -> bool {
        std::env::var("TUBESCRIBE_TEST_PANIC").is_ok_and(|v| {
            v.split_once(':').is_some_and(|(s, text)| {
                s == stage.queue_name() && !text.is_empty() && input.contains(text)
            })
        })
    }
}

/// whisper threads per job so that `slots × threads ≤ cores` (at least 1, at most
/// [`MAX_THREADS`]).
pub fn threads_per_job(cores: usize, slots: usize) -> usize {
    (cores / slots.max(1)).clamp(1, MAX_THREADS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_urls() {
        let data = Path::new("/d");
        let r = |u: &str| resolve_storage(Some(u.to_string()), data);
        assert_eq!(
            resolve_storage(None, data).unwrap(),
            Storage::Local("/d".into())
        );
        assert_eq!(r("").unwrap(), Storage::Local("/d".into()));
        assert_eq!(
            r("file:///srv/ts").unwrap(),
            Storage::Local("/srv/ts".into())
        );
        assert_eq!(
            r("s3://b/p/q/").unwrap(),
            Storage::S3 {
                bucket: "b".into(),
                prefix: "p/q".into()
            }
        );
        assert_eq!(
            r("s3://b").unwrap(),
            Storage::S3 {
                bucket: "b".into(),
                prefix: String::new()
            }
        );
        assert_eq!(
            r("gs://b/p").unwrap_err().to_string(),
            "invalid setting storage_url: \"gs://b/p\" has the unsupported scheme gs: \
             (write file:///path or s3://bucket/prefix)"
        );
        assert!(r("s3:///p").is_err());
    }

    /// A fresh scratch directory `<tmp>/<tag>-<pid>` and the path of a `c.toml` in it.
    fn scratch(tag: &str) -> (PathBuf, PathBuf) {
        let dir = std::env::temp_dir().join(format!("{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c.toml");
        (dir, f)
    }

    /// [`Config::resolve`] with the config file `f` and nothing else given.
    fn with_file(f: &Path) -> Result<Config, ConfigError> {
        Config::resolve(&Overrides {
            config: Some(f.to_path_buf()),
            ..Default::default()
        })
    }

    #[test]
    fn the_engine_comes_from_the_flag_then_the_file() {
        let default = if cfg!(feature = "ct2") {
            Engine::Ct2
        } else {
            Engine::WhisperCpp
        };
        assert_eq!(resolve_engine(None, None).unwrap(), default);
        assert_eq!(
            resolve_engine(Some(Engine::WhisperCpp), Some("ct2")).unwrap(),
            Engine::WhisperCpp
        );
        assert_eq!(
            resolve_engine(None, Some("whisper.cpp")).unwrap(),
            Engine::WhisperCpp
        );
        match resolve_engine(None, Some("onnx")) {
            Err(ConfigError::Invalid { key, message }) => {
                assert_eq!(key, "transcribe.engine");
                assert!(message.contains("onnx"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        // ct2 is accepted exactly when this build has it.
        assert_eq!(
            resolve_engine(None, Some("ct2")).is_ok(),
            cfg!(feature = "ct2")
        );
    }

    #[test]
    fn threads_never_oversubscribe() {
        for cores in 1..=16 {
            for s in 1..=8 {
                let t = threads_per_job(cores, s);
                assert!(t >= 1);
                assert!(
                    s * t <= cores.max(s),
                    "{cores} cores, {s} slots, {t} threads"
                );
            }
        }
        assert_eq!(threads_per_job(2, 1), 2);
        assert_eq!(threads_per_job(2, 2), 1);
    }

    #[test]
    fn webhooks_resolve_with_the_flag_over_the_file() {
        let (_dir, f) = scratch("ts-cfg-webhooks");
        let file_secret = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
        std::fs::write(
            &f,
            format!(
                "[webhooks]\nsecret = \"{file_secret}\"\nbackoff_s = 0.5\n\
                 [[webhooks.endpoints]]\nurl = \"https://h.test/a\"\n\
                 [[webhooks.endpoints]]\nurl = \"http://h.test/f\"\nevents = [\"task.failed\"]\n"
            ),
        )
        .unwrap();
        let w = with_file(&f).unwrap().webhooks;
        assert_eq!(w.secret.as_ref().map(Secret::expose), Some(file_secret));
        assert_eq!(
            (w.attempts, w.backoff, w.timeout),
            (10, Duration::from_millis(500), Duration::from_secs(15))
        );
        assert_eq!(w.endpoints[0].events, Event::ALL.to_vec());
        assert_eq!(w.endpoints[1].events, vec![Event::TaskFailed]);
        let flag = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let o = Overrides {
            config: Some(f.clone()),
            webhook_secret: Some(flag.into()),
            ..Default::default()
        };
        let w = Config::resolve(&o).unwrap().webhooks;
        assert_eq!(w.secret.as_ref().map(Secret::expose), Some(flag));
        for (bad, says) in [
            ("[webhooks]\nsecret = \"hunter2\"\n", "webhooks.secret"),
            (
                "[[webhooks.endpoints]]\nurl = \"ftp://x\"\n",
                "is not an http or https URL",
            ),
            (
                "[[webhooks.endpoints]]\nurl = \"http://x\"\nevents = [\"task.done\"]\n",
                "unknown event \"task.done\"",
            ),
        ] {
            std::fs::write(&f, bad).unwrap();
            let e = with_file(&f).unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
            assert!(!e.contains("hunter2"), "the secret is never echoed: {e}");
        }
    }

    #[test]
    fn flag_beats_file_beats_default() {
        let (dir, f) = scratch("ts-cfg");
        std::fs::write(
            &f,
            "data_dir = \"/srv/ts\"\nallow_hosts = [\"Media.Example:8080\"]\n[concurrency]\ntranscribe = 4\n",
        )
        .unwrap();
        let o = Overrides {
            config: Some(f.clone()),
            download_concurrency: Some(5),
            ..Default::default()
        };
        let c = Config::resolve(&o).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/srv/ts"));
        assert_eq!(c.download_concurrency, 5);
        assert_eq!(c.transcribe_concurrency, 4);
        assert_eq!(c.summarize_concurrency, 1);
        assert_eq!(c.allow_hosts, vec!["media.example:8080".to_string()]);
        let default_model = match Engine::default() {
            Engine::Ct2 => "/srv/ts/models/ct2-tiny.en",
            Engine::WhisperCpp => "/srv/ts/models/ggml-tiny.en.bin",
        };
        assert_eq!(c.model, PathBuf::from(default_model));
        // A bare model name means the installed file of that name.
        let d = Path::new("/srv/ts");
        assert_eq!(
            model_path(Some("base".into()), d, Engine::WhisperCpp),
            PathBuf::from("/srv/ts/models/ggml-base.bin")
        );
        assert_eq!(
            model_path(Some("ggml-tiny.en.bin".into()), d, Engine::WhisperCpp),
            PathBuf::from("/srv/ts/models/ggml-tiny.en.bin")
        );
        assert_eq!(
            model_path(Some("tiny.en-q8_0".into()), d, Engine::WhisperCpp),
            PathBuf::from("/srv/ts/models/ggml-tiny.en-q8_0.bin")
        );
        assert_eq!(
            model_path(Some("ggml-base-q8_0.bin".into()), d, Engine::WhisperCpp),
            PathBuf::from("/srv/ts/models/ggml-base-q8_0.bin")
        );
        // The ct2 engine has no q8_0 file: the name stays as given (reported missing).
        assert_eq!(
            model_path(Some("base-q8_0".into()), d, Engine::Ct2),
            PathBuf::from("base-q8_0")
        );
        assert_eq!(
            model_path(Some("/m/x.bin".into()), d, Engine::WhisperCpp),
            PathBuf::from("/m/x.bin")
        );
        assert_eq!(
            model_path(Some("custom.bin".into()), d, Engine::WhisperCpp),
            PathBuf::from("custom.bin")
        );
        // With the CTranslate2 engine a name means its installed model directory.
        assert_eq!(
            model_path(Some("base".into()), d, Engine::Ct2),
            PathBuf::from("/srv/ts/models/ct2-base")
        );
        assert_eq!(
            model_path(None, d, Engine::Ct2),
            PathBuf::from("/srv/ts/models/ct2-tiny.en")
        );
        assert_eq!(c.engine, Engine::default());
        assert!(c.threads >= 1);
        let o2 = Overrides {
            config: Some(f.clone()),
            data_dir: Some("/tmp/other".into()),
            allow_hosts: Some(vec!["a.test, b.test".into()]),
            ..Default::default()
        };
        let c2 = Config::resolve(&o2).unwrap();
        assert_eq!(c2.data_dir, PathBuf::from("/tmp/other"));
        assert_eq!(c2.allow_hosts, vec!["a.test", "b.test"]);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn malformed_hosts_and_threads_are_refused() {
        for bad in [
            "host/evil",
            "http://host:80",
            "*",
            "*.example.org",
            "host:99999",
            "127.0.0.1\\evil:8080",
            "127.0.0\t.1:8080",
            "..",
            "a..b",
            "example.org:0",
            "example.org:+80",
            "%65xample.org",
        ] {
            let o = Overrides {
                config: Some("/dev/null".into()),
                allow_hosts: Some(vec![format!("ok.example, {bad}")]),
                ..Default::default()
            };
            match Config::resolve(&o) {
                Err(ConfigError::Invalid { key, message }) => {
                    assert_eq!(key, "allow_hosts");
                    assert!(
                        message.starts_with(&format!("{bad:?} is not a host")),
                        "{message}"
                    );
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
        let ok = Overrides {
            config: Some("/dev/null".into()),
            allow_hosts: Some(vec![
                "localhost:8080, [::1]:9000, 10.0.0.5, media.lan".into()
            ]),
            threads: Some(MAX_THREADS),
            ..Default::default()
        };
        let c = Config::resolve(&ok).unwrap();
        assert_eq!(c.allow_hosts.len(), 4);
        assert_eq!(c.threads, MAX_THREADS);
        let o = Overrides {
            config: Some("/dev/null".into()),
            threads: Some(100_000),
            ..Default::default()
        };
        match Config::resolve(&o) {
            Err(ConfigError::Invalid { key, .. }) => assert_eq!(key, "transcribe.threads"),
            other => panic!("{other:?}"),
        }
        // The scheduler's per-job threads come from the cores given to transcription: never
        // more than the machine has, never more than MAX_THREADS per job.
        let many = std::env::temp_dir().join(format!("ts-cores-{}.toml", std::process::id()));
        std::fs::write(&many, "[schedule]\ncores = 100000\n").unwrap();
        let o = Overrides {
            config: Some(many.clone()),
            ..Default::default()
        };
        match Config::resolve(&o) {
            Err(ConfigError::Invalid { key, message }) => {
                assert_eq!(key, "schedule.cores");
                assert!(
                    message.starts_with("100000 is more than this machine's"),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
        std::fs::remove_file(&many).ok();
        assert_eq!(threads_per_job(100_000, 1), MAX_THREADS);
        assert_eq!(threads_per_job(3, 2), 1);
    }

    #[test]
    fn the_example_config_is_valid() {
        let text = include_str!("../../../../tubescribe.example.toml");
        let f: FileConfig = toml::from_str(text).unwrap();
        let t = StagePolicy::resolve(Stage::Transcribe, &f.stages.transcribe).unwrap();
        assert_eq!(t, StagePolicy::default_for(Stage::Transcribe));
        assert!(f.worker.shutdown_grace_s.is_none());
        assert_eq!(
            resolve_subtitles(&f.subtitles).unwrap(),
            CueRules::default()
        );
    }

    #[test]
    fn retention_days_file_variables_and_defaults() {
        let (dir, f) = scratch("ts-cfg-retention");
        let day = Duration::from_secs(86_400);
        // Defaults: media and WAV 30 days, the task kept, a pass an hour.
        std::fs::write(&f, "").unwrap();
        let r = with_file(&f).unwrap().retention;
        assert_eq!(
            (r.media, r.audio, r.task, r.interval),
            (
                Some(day * 30),
                Some(day * 30),
                None,
                Duration::from_secs(3600)
            )
        );
        std::fs::write(
            &f,
            "[retention]\nmedia_days = 0\naudio_days = 1.5\ntask_days = 90\ninterval_s = 60\n",
        )
        .unwrap();
        let r = with_file(&f).unwrap().retention;
        assert_eq!(
            (r.media, r.audio, r.task, r.interval),
            (
                Some(Duration::ZERO),
                Some(day * 3 / 2),
                Some(day * 90),
                Duration::from_secs(60)
            )
        );
        // A variable replaces its key only; "never" keeps the files.
        std::env::set_var("TUBESCRIBE_RETENTION_AUDIO_DAYS", "never");
        let r = with_file(&f).unwrap().retention;
        std::env::remove_var("TUBESCRIBE_RETENTION_AUDIO_DAYS");
        assert_eq!(
            (r.media, r.audio, r.task),
            (Some(Duration::ZERO), None, Some(day * 90))
        );
        for bad in ["media_days = -1", "task_days = \"forever\""] {
            std::fs::write(&f, format!("[retention]\n{bad}\n")).unwrap();
            let e = with_file(&f).unwrap_err().to_string();
            assert!(
                e.starts_with("invalid setting retention.") && e.contains("nor \"never\""),
                "{e}"
            );
        }
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn subtitle_settings() {
        let (dir, f) = scratch("ts-cfg-subs");
        let resolve = |toml: &str| {
            std::fs::write(&f, toml).unwrap();
            with_file(&f)
        };
        let c = resolve("").unwrap();
        assert_eq!(c.subtitles, CueRules::default());
        let c =
            resolve("[subtitles]\nmax_line_chars = 37\nmax_lines = 1\nmax_cps = 17.5\n").unwrap();
        assert_eq!(
            c.subtitles,
            CueRules {
                max_line_chars: 37,
                max_lines: 1,
                max_cps: 17.5,
                ..CueRules::default()
            }
        );
        for (toml, msg) in [
            (
                "max_line_chars = 5",
                "invalid setting subtitles.max_line_chars: 5 is out of range (10 to 1000 characters)",
            ),
            (
                "max_lines = 0",
                "invalid setting subtitles.max_lines: 0 is out of range (1 to 10 lines)",
            ),
            (
                "max_cue_ms = 500",
                "invalid setting subtitles.max_cue_ms: 500 is out of range (1000 to 600000 ms)",
            ),
            (
                "min_cue_ms = 8000",
                "invalid setting subtitles.min_cue_ms: 8000 is more than subtitles.max_cue_ms (7000)",
            ),
            (
                "max_cps = 0",
                "invalid setting subtitles.max_cps: 0 must be a number of characters per second ≥ 1",
            ),
            (
                "max_cps = nan",
                "invalid setting subtitles.max_cps: NaN must be a number of characters per second ≥ 1",
            ),
        ] {
            let e = resolve(&format!("[subtitles]\n{toml}\n")).unwrap_err();
            assert_eq!(e.to_string(), msg);
        }
        let e = resolve("[subtitles]\nmax_chars = 40\n").unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn stage_policies_and_worker_settings() {
        let (dir, f) = scratch("ts-cfg3");
        std::fs::write(
            &f,
            "[stages.transcribe]\nattempts = 4\nlock_duration_s = 2.5\nglobal_concurrency = 2\n\
             timeout_base_s = 10\ntimeout_per_media_s = 2\n[worker]\nshutdown_grace_s = 7\n",
        )
        .unwrap();
        let c = with_file(&f).unwrap();
        let t = c.policy(Stage::Transcribe);
        assert_eq!(t.attempts, 4);
        assert_eq!(t.lock_duration, Duration::from_millis(2500));
        assert_eq!(t.stalled_interval, Duration::from_secs(15));
        assert_eq!(t.global_concurrency, Some(2));
        assert_eq!(t.time_limit(Some(30.0)), Duration::from_secs(70));
        assert_eq!(t.time_limit(None), Duration::from_secs(10));
        assert_eq!(
            c.policy(Stage::Download),
            &StagePolicy::default_for(Stage::Download)
        );
        assert_eq!(c.shutdown_grace, Duration::from_secs(7));
        assert_eq!(c.redis_retry, Duration::from_secs(2));
        // The flag (or its variable) beats the file.
        let c = Config::resolve(&Overrides {
            config: Some(f.clone()),
            shutdown_grace_s: Some(1.5),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.shutdown_grace, Duration::from_millis(1500));
        assert_eq!(
            c.policy(Stage::Download).no_progress_timeout,
            Some(Duration::from_secs(120))
        );
        assert_eq!(c.policy(Stage::Transcribe).no_progress_timeout, None);
        for (toml, want) in [
            (
                "no_progress_timeout_s = 2.5",
                Some(Duration::from_millis(2500)),
            ),
            ("no_progress_timeout_s = 0", None),
        ] {
            std::fs::write(&f, format!("[stages.download]\n{toml}\n")).unwrap();
            let c = with_file(&f).unwrap();
            assert_eq!(
                c.policy(Stage::Download).no_progress_timeout,
                want,
                "{toml}"
            );
        }
        std::fs::write(&f, "[stages.transcribe]\nno_progress_timeout_s = 5\n").unwrap();
        assert_eq!(
            with_file(&f).unwrap_err().to_string(),
            "invalid setting stages.transcribe.no_progress_timeout_s: only the download stage \
             has a no-progress timeout ([stages.download])"
        );
        std::fs::write(&f, "[stages.download]\nno_progress_timeout_s = -1\n").unwrap();
        assert!(with_file(&f)
            .unwrap_err()
            .to_string()
            .contains("stages.download.no_progress_timeout_s"),);
        std::fs::write(&f, "[stages.summarize]\nattempts = 0\n").unwrap();
        let e = with_file(&f).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid setting stages.summarize.attempts: must be at least 1"
        );
        std::fs::write(&f, "[stages.download]\nlock_duration_s = 0\n").unwrap();
        let e = with_file(&f).unwrap_err();
        assert!(
            e.to_string().contains("stages.download.lock_duration_s"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn bad_file_and_zero_concurrency_are_errors() {
        let (dir, f) = scratch("ts-cfg2");
        std::fs::write(&f, "data_dirr = 1\n").unwrap();
        let e = with_file(&f).unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
        let e = Config::resolve(&Overrides {
            transcribe_concurrency: Some(0),
            config: Some(dir.join("missing.toml")),
            ..Default::default()
        })
        .unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }));
        let e = Config::resolve(&Overrides {
            transcribe_concurrency: Some(0),
            data_dir: Some(dir.clone()),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid setting concurrency.transcribe: must be at least 1"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    /// Issue 13 finding 8: a `TUBESCRIBE_LLM_*` variable overrides its own setting only; the
    /// `[llm]` table's other settings still apply (per-setting precedence, as for every table).
    /// Goes through [`Config::resolve`] with the real process environment, as the binary does
    /// (the CLI passes no LLM flags; these variables are read here only).
    #[test]
    fn llm_variables_override_single_settings() {
        let (dir, f) = scratch("ts-cfg-llm");
        std::fs::write(
            &f,
            "[llm]\nbase_url = \"http://file.example/v1\"\nmodel = \"from-file\"\ntimeout_s = 5\n\
             max_retries = 1\ncontext_tokens = 2048\napi_key_env = \"TS_TEST_LLM_KEY\"\n",
        )
        .unwrap();
        // Sets (or removes) the variables, resolves, and shows the LLM settings in one line.
        let llm = |vars: &[(&str, Option<&str>)]| {
            for (k, v) in vars {
                match v {
                    Some(v) => std::env::set_var(k, v),
                    None => std::env::remove_var(k),
                }
            }
            let l = with_file(&f).unwrap().llm.unwrap();
            format!(
                "{} {} {:?} retries={} context={} key={:?}",
                l.base_url, l.model, l.timeout, l.max_retries, l.context_tokens, l.api_key
            )
        };
        // The base URL from the variable; everything else from the file.
        let got = llm(&[
            ("TUBESCRIBE_LLM_BASE_URL", Some("http://env.example/v1")),
            ("TUBESCRIBE_LLM_MODEL", None),
            ("TUBESCRIBE_LLM_API_KEY", Some("sk-default-var")),
            ("TS_TEST_LLM_KEY", Some("sk-file-var")),
        ]);
        let file_rest = "5s retries=1 context=2048 key=Some(\"sk-file-var\")";
        assert_eq!(got, format!("http://env.example/v1 from-file {file_rest}"));
        // The model variable replaces the model only.
        let got = llm(&[("TUBESCRIBE_LLM_MODEL", Some("from-env"))]);
        assert_eq!(got, format!("http://env.example/v1 from-env {file_rest}"));
        // No variables: the file alone.
        let got = llm(&[
            ("TUBESCRIBE_LLM_BASE_URL", None),
            ("TUBESCRIBE_LLM_MODEL", Some("")),
        ]);
        assert_eq!(got, format!("http://file.example/v1 from-file {file_rest}"));
        // A table without base_url takes it from the variable; defaults fill the rest.
        std::fs::write(&f, "[llm]\ntimeout_s = 7\n").unwrap();
        let got = llm(&[("TUBESCRIBE_LLM_BASE_URL", Some("http://env.example/v1"))]);
        assert_eq!(
            got,
            "http://env.example/v1 default 7s retries=4 context=8192 key=Some(\"sk-default-var\")"
        );
        // ... and without either, the table is an error that names both.
        std::env::remove_var("TUBESCRIBE_LLM_BASE_URL");
        let e = with_file(&f).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid setting llm.base_url: missing: set [llm] base_url or TUBESCRIBE_LLM_BASE_URL"
        );
        for k in [
            "TUBESCRIBE_LLM_MODEL",
            "TUBESCRIBE_LLM_API_KEY",
            "TS_TEST_LLM_KEY",
        ] {
            std::env::remove_var(k);
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}
