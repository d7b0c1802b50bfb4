//! `tubescribe bench`: the benchmark the project ships. Every figure is a ratio of two
//! measurements taken side by side in the same run, on real speech (the shared sample clips,
//! else sentences synthesized with espeak-ng), with this process's own embedded Redis and
//! in-process workers using the resolved configuration.
//!
//! | key | what |
//! |---|---|
//! | `p1_short_latency_ratio_max` | 5 short tasks submitted right after 1 long one: max over shorts of latency in the batch ÷ its solo latency (goal ≤ 1.15 × the P1 floor, also printed as `p1_ratio_to_floor`). The "seed baseline" (one queue, concurrency 1 for the whole pipeline = tasks one after another in submission order) is computed from the same solo runs: short *i* finishes after the long task and shorts 1..i. Also printed: the **P1 floor** `(Σ CPU seconds of the 5 solo short runs ÷ cores) ÷ longest solo latency`, below which no scheduler can go on this machine (the shorts arrive together and share the cores even with no long task), and `p1_whole_jobs`, the lowest P1 of the shorts run uncut on the transcribe slots in the best order with no long task and no overhead ([`best_whole_job_p1`]; NaN when their solo runs were split): the floor assumes their work divides freely over the cores, which one job per short cannot do. |
//! | `p2_makespan_ratio` | batch makespan ÷ max(batch CPU seconds ÷ cores, longest chain = the long task's solo latency) (goal ≤ 1.10). CPU = this process + its reaped children (ffmpeg, ffprobe; not Redis). |
//! | `p3_transcribe_overhead_ratio` | the long solo task's transcribe stage wall (ffmpeg decode + whisper + files) ÷ the engine (whisper-rs or CTranslate2) called directly on its `audio.wav` with the same model and threads (goal ≤ 1.05), making the same whisper calls as the stage (with an English-only model and a multilingual one installed, also the language guard's identification of the first 15 s of speech); each side is the faster of two runs. When the stage ran as segments side by side, the engine gets the threads of all the slots they ran on (a split must not look faster than the tool given the same cores) |
//! | `p3_engine_ratio_vs_faster_whisper` | the same stage wall ÷ PyPI faster-whisper (CTranslate2, `bench/anchors`) on the same WAV, CTranslate2 weights and threads, greedy, no VAD, its faster of int8 and float32 (goal ≤ 1.0); when the stage ran the language guard, the anchor makes the guard's call too (the identifier's `detect_language` on the first 15 s) and `p3_engine_ratio_without_guard` is the ratio to its transcription alone |
//! | `p3_hop_ms_p50`, `p3_hop_ms_p99` | job completed → next stage's job active, from BullMQ's `finishedOn`/`processedOn` (ms) of no-op flows run one at a time through the engine (goal ≤ 5 / 50 ms) |
//! | `p4_job_peak_rss_mb` | peak process RSS during one transcription job (solo runs, model included; see `budget.rs` for the method); the worker with 2 jobs (the batch, and a solo long task whose segments ran side by side) is reported as `p4_worker_2jobs_peak_rss_mb` |
//! | `p6_long_speedup` | one long talk (12 min, so it is cut into segments) alone: latency with 1 transcribe slot ÷ latency with 2 slots, 1 whisper thread per job in both (goal ≥ 1.7 on 2 cores: its segments run in parallel). The same talk with 1 slot × 2 threads is reported beside it (`p6_latency_s`), the measurement behind the default slots × threads, and so is `p6_machine_ceiling`, the speedup whisper-rs itself gets from two halves side by side on this machine ([`parallel_ceiling`]), with `p6_ratio_to_ceiling` |
//! | `p5_throughput_ratio_vs_node` | no-op 3-stage flows, jobs/s through bullmq-official ÷ the Node `bullmq` package (bench/node) on the same Redis, each run twice alternately, mean of each (goal ≥ 1.5) |
//!
//! `--quick` uses ≈20 s shorts, a ≈2 min long task and fewer no-op flows (a few minutes).
//! The 1-minute load average at start and end is reported with the figures: on a shared
//! machine every wall-clock ratio is inflated by other load.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bullmq::worker::{CancellationToken as BullToken, WorkerEvent};
use bullmq::{FlowJob, FlowProducer, FlowProducerOptions, Job, Worker, WorkerOptions};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::app::runtime::Runtime;
use crate::config::Config;
use crate::domain::input::InputPolicy;
use crate::domain::manifest::{now_ms, TaskStatus};
use crate::domain::Stage;
use crate::engine::redis::connection;
use crate::pipeline::StageCtx;
use crate::store::{names, DataDir};
use crate::tools::asr;
use crate::tools::asr::TranscribeOptions;
use crate::tools::process;
use crate::tools::process::Cmd;

/// Why the benchmark could not run (none is retryable without a fix).
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A prerequisite (program, samples, model, Redis) is missing or failed.
    #[error("{0}")]
    Setup(String),
    /// A benchmark run failed (task failed, timeout, queue error).
    #[error("{0}")]
    Run(String),
}

fn setup<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> BenchError {
    move |e| BenchError::Setup(format!("{what}: {e}"))
}
fn run_err<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> BenchError {
    move |e| BenchError::Run(format!("{what}: {e}"))
}

/// Options of one benchmark run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Smaller batch (a few minutes).
    pub quick: bool,
    /// Directory of sample clips (`<name>.wav` + `<name>.txt`; relative to the working
    /// directory), or [`SYNTHESIZE`] for espeak-ng speech; none = the first of
    /// `<data dir>/samples` and the checkout's `../shared/samples` that holds the clips (see
    /// [`speech_source`]).
    pub samples: Option<PathBuf>,
    /// Directory of the Node anchor (`flows.js` + `node_modules`); default the checkout's
    /// `bench/node` (wherever the bench is run from).
    pub node_dir: Option<PathBuf>,
}

/// The results; field names are the JSON keys.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// P1: max over short tasks of batch latency ÷ solo latency.
    pub p1_short_latency_ratio_max: f64,
    /// P1 under the seed baseline (sequential, one queue, concurrency 1).
    pub p1_baseline_short_latency_ratio_max: f64,
    /// P2: makespan ÷ lower bound.
    pub p2_makespan_ratio: f64,
    /// P3: transcribe stage wall ÷ the engine's wall called directly (whisper-rs or CTranslate2).
    pub p3_transcribe_overhead_ratio: f64,
    /// P3: transcribe stage wall ÷ PyPI faster-whisper on the same WAV, weights and threads
    /// (its faster of int8 and float32), making the language guard's call too when the stage
    /// did; `None` when the anchor is not installed.
    pub p3_engine_ratio_vs_faster_whisper: Option<f64>,
    /// P3: stage hop, median, ms.
    pub p3_hop_ms_p50: f64,
    /// P3: stage hop, 99th percentile, ms.
    pub p3_hop_ms_p99: f64,
    /// P4: peak process RSS during one transcription job, MB.
    pub p4_job_peak_rss_mb: f64,
    /// P4: peak process RSS with two concurrent transcription jobs, MB.
    pub p4_worker_2jobs_peak_rss_mb: f64,
    /// P5: jobs/s ratio vs Node BullMQ (`None` when the Node anchor is not installed).
    pub p5_throughput_ratio_vs_node: Option<f64>,
    /// P6: latency of one long talk alone with 1 transcribe slot ÷ with 2 slots (1 thread
    /// per job both times).
    pub p6_long_speedup: f64,
    /// Raw figures behind the ratios.
    pub detail: serde_json::Value,
}

/// One task's timings from its manifest.
#[derive(Debug, Clone, Serialize)]
struct TaskRun {
    task_id: String,
    latency_s: f64,
    stage_wall_s: [f64; 3],
    peak_rss_mb: f64,
    threads: u64,
    /// Segment jobs its transcription ran as (1 when it was not split).
    segments: u64,
}

fn load_avg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// User + system CPU seconds of this process and its reaped children.
fn cpu_seconds() -> f64 {
    let get = |who| {
        // SAFETY: getrusage writes into the zeroed struct we own.
        let mut r: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::getrusage(who, &mut r) };
        let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
        t(r.ru_utime) + t(r.ru_stime)
    };
    get(libc::RUSAGE_SELF) + get(libc::RUSAGE_CHILDREN)
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() - 1) as f64 * p).round() as usize;
    v[i]
}

/// A speech clip: 16 kHz mono s16 samples and its reference text.
struct Clip {
    pcm: Vec<i16>,
}

const SAMPLE_NAMES: [&str; 5] = [
    "jfk",
    "librispeech-1272-128104-0000",
    "librispeech-1995-1837-0001",
    "ljspeech-LJ001-0001",
    "ljspeech-LJ001-0007",
];
const SYNTH_TEXT: [&str; 5] = [
    "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country.",
    "Mister Quilter is the apostle of the middle classes, and we are glad to welcome his gospel.",
    "He knew that the time had come when the question could no longer be avoided.",
    "Printing, in the only sense with which we are at present concerned, differs from most if not from all the arts and crafts.",
    "The earliest book printed with movable types, the Gutenberg, or forty-two line Bible of about fourteen fifty-five.",
];

async fn to_16k(cfg: &Config, input: &Path, out: &Path) -> Result<Vec<i16>, BenchError> {
    let cmd = Cmd::new(&cfg.programs.ffmpeg)
        .args(["-nostdin", "-loglevel", "error", "-y", "-i"])
        .arg(input)
        .args(["-ac", "1", "-ar", "16000", "-c:a", "pcm_s16le"])
        .arg(out)
        .timeout(Duration::from_secs(120));
    let o = process::run(&cmd, &CancellationToken::new(), &mut |_| {})
        .await
        .map_err(setup("ffmpeg"))?;
    process::ensure_success(&o, "ffmpeg").map_err(setup("ffmpeg"))?;
    let r = hound::WavReader::open(out).map_err(setup("resampled clip"))?;
    r.into_samples::<i16>()
        .collect::<Result<Vec<_>, _>>()
        .map_err(setup("resampled clip"))
}

/// The `--samples` value that asks for speech synthesized with espeak-ng instead of clips.
pub const SYNTHESIZE: &str = "espeak-ng";

/// Where the benchmark's speech comes from.
#[derive(Debug, PartialEq)]
enum Speech {
    /// A directory holding every clip of [`SAMPLE_NAMES`] (absolute).
    Clips(PathBuf),
    /// espeak-ng reading [`SYNTH_TEXT`].
    Synthesized,
}

/// Where the clips are looked for when `--samples` is not given, in order: `<data_dir>/samples`
/// and the checkout's `../shared/samples` (found from where this binary was built, so the
/// working directory does not matter).
fn default_sample_dirs(data_dir: &Path) -> Vec<PathBuf> {
    let checkout = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/samples");
    vec![
        data_dir.join("samples"),
        checkout.canonicalize().unwrap_or(checkout),
    ]
}

/// Resolves the speech before anything starts: `given` (relative to the working directory;
/// [`SYNTHESIZE`] unless such a directory exists = espeak-ng), else the first of `defaults`
/// that holds every clip.
///
/// # Errors
/// [`BenchError::Setup`]: `given` lacks a clip (named), or no default directory holds them
/// (the places looked at and how to choose).
fn speech_source(given: Option<&Path>, defaults: &[PathBuf]) -> Result<Speech, BenchError> {
    let missing = |dir: &Path| {
        SAMPLE_NAMES
            .iter()
            .map(|n| dir.join(format!("{n}.wav")))
            .find(|w| !w.is_file())
    };
    if let Some(given) = given {
        if given == Path::new(SYNTHESIZE) && !given.exists() {
            return Ok(Speech::Synthesized);
        }
        let dir = std::path::absolute(given).map_err(setup("--samples"))?;
        return match missing(&dir) {
            None => Ok(Speech::Clips(dir)),
            Some(w) => Err(BenchError::Setup(format!(
                "sample {} is missing (--samples needs {})",
                w.display(),
                clip_list()
            ))),
        };
    }
    if let Some(dir) = defaults.iter().find(|d| missing(d).is_none()) {
        return Ok(Speech::Clips(dir.clone()));
    }
    let looked: Vec<String> = defaults.iter().map(|d| d.display().to_string()).collect();
    Err(BenchError::Setup(format!(
        "no speech samples in {}: pass --samples DIR (a directory with {}) or --samples {SYNTHESIZE} for synthesized speech",
        looked.join(" or "),
        clip_list()
    )))
}

/// The clip files a sample directory needs, for messages.
fn clip_list() -> String {
    SAMPLE_NAMES.map(|n| format!("{n}.wav")).join(", ")
}

async fn clips(
    cfg: &Config,
    work: &Path,
    speech: &Speech,
) -> Result<(Vec<Clip>, String), BenchError> {
    let mut out = Vec::new();
    let source;
    if let Speech::Clips(dir) = speech {
        source = format!("real speech from {}", dir.display());
        for n in SAMPLE_NAMES {
            let wav = dir.join(format!("{n}.wav"));
            out.push(Clip {
                pcm: to_16k(cfg, &wav, &work.join(format!("{n}.16k.wav"))).await?,
            });
        }
    } else {
        source = format!("synthesized with espeak-ng (--samples {SYNTHESIZE})");
        for (i, t) in SYNTH_TEXT.iter().enumerate() {
            let raw = work.join(format!("synth{i}.wav"));
            let cmd = Cmd::new("espeak-ng")
                .args(["-v", "en-us", "-s", "150", "-w"])
                .arg(&raw)
                .arg(t)
                .timeout(Duration::from_secs(60));
            let o = process::run(&cmd, &CancellationToken::new(), &mut |_| {})
                .await
                .map_err(setup("espeak-ng"))?;
            process::ensure_success(&o, "espeak-ng").map_err(setup("espeak-ng"))?;
            out.push(Clip {
                pcm: to_16k(cfg, &raw, &work.join(format!("synth{i}.16k.wav"))).await?,
            });
        }
    }
    Ok((out, source))
}

/// Writes clips round-robin from `first`, with 0.8 s pauses, until `target_s` is reached.
fn write_talk(path: &Path, clips: &[Clip], first: usize, target_s: f64) -> Result<f64, BenchError> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 16_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).map_err(setup("write talk"))?;
    let mut n = 0usize;
    let mut i = first;
    while (n as f64) / 16_000.0 < target_s {
        for s in clips[i % clips.len()]
            .pcm
            .iter()
            .chain(std::iter::repeat_n(&0i16, 12_800))
        {
            w.write_sample(*s).map_err(setup("write talk"))?;
        }
        n += clips[i % clips.len()].pcm.len() + 12_800;
        i += 1;
    }
    w.finalize().map_err(setup("write talk"))?;
    Ok(n as f64 / 16_000.0)
}

/// Runs `files` as tasks through in-process workers (started on `rt` for this run, over a
/// fresh stage context, and stopped after it); returns per-task timings (in input order), the
/// makespan (first submit → last summary) and the CPU seconds used.
async fn run_tasks(
    rt: &mut Runtime,
    files: &[PathBuf],
) -> Result<(Vec<TaskRun>, f64, f64), BenchError> {
    let producer = rt.producer().await.map_err(run_err("redis"))?;
    let model = crate::tools::model::identify(&rt.config().model)
        .await
        .map_err(run_err("model"))?;
    rt.start_workers(&Stage::ALL)
        .await
        .map_err(run_err("workers"))?;
    let data = rt.data().clone();
    let cpu0 = cpu_seconds();
    let t0 = now_ms();
    let mut ids = Vec::new();
    for f in files {
        let submitted = now_ms();
        let s = crate::app::tasks::submit(
            &data,
            &producer,
            &InputPolicy::default(),
            &f.to_string_lossy(),
            true,
            &model,
        )
        .await
        .map_err(run_err("submit"))?;
        ids.push((s.task_id, submitted));
    }
    let limit = Instant::now() + Duration::from_secs(3600);
    loop {
        let mut all = true;
        for (id, _) in &ids {
            let m = data.task(id).read_manifest().map_err(run_err("manifest"))?;
            match m.status {
                TaskStatus::Completed | TaskStatus::CompletedWithWarnings => {}
                TaskStatus::Failed | TaskStatus::Cancelled => {
                    return Err(BenchError::Run(format!("task {id} failed: {:?}", m.error)))
                }
                _ => all = false,
            }
        }
        if all {
            break;
        }
        if Instant::now() > limit {
            return Err(BenchError::Run(
                "tasks did not finish within an hour".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cpu = cpu_seconds() - cpu0;
    rt.stop_workers(Duration::from_secs(10)).await;
    producer.close().await;
    let mut runs = Vec::new();
    let mut end = t0;
    for (id, submitted) in &ids {
        let m = data.task(id).read_manifest().map_err(run_err("manifest"))?;
        let wall = |s: Stage| {
            m.stage(s)
                .and_then(|r| Some((r.finished_at? as f64 - r.started_at? as f64) / 1000.0))
                .unwrap_or(f64::NAN)
        };
        let fin = m
            .stage(Stage::Summarize)
            .and_then(|r| r.finished_at)
            .unwrap_or(0);
        end = end.max(fin);
        let tr = m.stage(Stage::Transcribe);
        let det = |k: &str| tr.and_then(|r| r.detail.get(k).cloned());
        runs.push(TaskRun {
            task_id: id.clone(),
            latency_s: fin.saturating_sub(*submitted) as f64 / 1000.0,
            stage_wall_s: [
                wall(Stage::Download),
                wall(Stage::Transcribe),
                wall(Stage::Summarize),
            ],
            peak_rss_mb: det("peak_rss_mb")
                .and_then(|v| v.as_f64())
                .unwrap_or(f64::NAN),
            threads: det("threads").and_then(|v| v.as_u64()).unwrap_or(1),
            segments: det("segments_merged").and_then(|v| v.as_u64()).unwrap_or(1),
        });
    }
    Ok((runs, end.saturating_sub(t0) as f64 / 1000.0, cpu))
}

fn noop_flow(i: usize) -> Result<FlowJob, bullmq::Error> {
    let data = serde_json::json!({ "i": i });
    let dl = FlowJob::new("download", "download", data.clone())?
        .options(bullmq::JobOptions::new().job_id(format!("dl-{i}")));
    let tr = FlowJob::new("transcribe", "transcribe", data.clone())?
        .options(bullmq::JobOptions::new().job_id(format!("tr-{i}")))
        .add_child(dl);
    Ok(FlowJob::new("summarize", "summarize", data)?
        .options(bullmq::JobOptions::new().job_id(format!("sum-{i}")))
        .add_child(tr))
}

/// No-op workers on the three queues under `prefix`; returns them and a completion counter
/// of the summarize queue.
async fn noop_workers(
    url: &str,
    prefix: &str,
    concurrency: usize,
) -> Result<
    (
        Vec<Arc<Worker>>,
        Arc<AtomicUsize>,
        Vec<tokio::task::JoinHandle<()>>,
    ),
    BenchError,
> {
    let done = Arc::new(AtomicUsize::new(0));
    let mut ws = Vec::new();
    let mut drains = Vec::new();
    for q in ["download", "transcribe", "summarize"] {
        let processor = |_job: Job, _t: BullToken| async move { Ok(serde_json::json!({})) };
        let w = Arc::new(
            Worker::with_options(
                q,
                processor,
                WorkerOptions::new()
                    .connection(connection(url))
                    .prefix(prefix)
                    .concurrency(concurrency),
            )
            .await
            .map_err(run_err("worker"))?,
        );
        let (w2, d2, count) = (w.clone(), done.clone(), q == "summarize");
        drains.push(tokio::spawn(async move {
            while let Some(ev) = w2.next_event().await {
                match ev {
                    WorkerEvent::Completed { .. } if count => {
                        d2.fetch_add(1, Ordering::Relaxed);
                    }
                    WorkerEvent::Closed => break,
                    _ => {}
                }
            }
        }));
        ws.push(w);
    }
    Ok((ws, done, drains))
}

async fn close_noop(ws: Vec<Arc<Worker>>, drains: Vec<tokio::task::JoinHandle<()>>) {
    for w in ws {
        let _ = w.close(5_000).await;
    }
    for d in drains {
        d.abort();
    }
}

/// Stage hops (ms) of `n` no-op flows run one at a time.
async fn hops(url: &str, n: usize) -> Result<Vec<f64>, BenchError> {
    let prefix = "bench-hop";
    let (ws, done, drains) = noop_workers(url, prefix, 1).await?;
    let fp = FlowProducer::with_options(
        FlowProducerOptions::new()
            .connection(connection(url))
            .prefix(prefix),
    )
    .await
    .map_err(run_err("flow producer"))?;
    for i in 0..n {
        fp.add(noop_flow(i).map_err(run_err("flow"))?)
            .await
            .map_err(run_err("add flow"))?;
        let t = Instant::now();
        while done.load(Ordering::Relaxed) <= i {
            if t.elapsed() > Duration::from_secs(30) {
                return Err(BenchError::Run("no-op flow did not finish".into()));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let mut out = Vec::new();
    let q = |name: &'static str| {
        let url = url.to_string();
        async move {
            bullmq::Queue::with_options(
                name,
                bullmq::QueueOptions {
                    connection: connection(&url),
                    prefix: prefix.into(),
                    ..Default::default()
                },
            )
            .await
        }
    };
    let (dq, tq, sq) = (
        q("download").await.map_err(run_err("queue"))?,
        q("transcribe").await.map_err(run_err("queue"))?,
        q("summarize").await.map_err(run_err("queue"))?,
    );
    for i in 0..n {
        let get = |q: &bullmq::Queue, id: String| {
            let q = q.clone();
            async move { q.get_job(&id).await }
        };
        let (Some(d), Some(t), Some(s)) = (
            get(&dq, format!("dl-{i}")).await.map_err(run_err("job"))?,
            get(&tq, format!("tr-{i}")).await.map_err(run_err("job"))?,
            get(&sq, format!("sum-{i}")).await.map_err(run_err("job"))?,
        ) else {
            continue;
        };
        if let (Some(df), Some(tp), Some(tf), Some(sp)) = (
            d.finished_on(),
            t.processed_on(),
            t.finished_on(),
            s.processed_on(),
        ) {
            out.push(tp as f64 - df as f64);
            out.push(sp as f64 - tf as f64);
        }
    }
    fp.close().await;
    close_noop(ws, drains).await;
    Ok(out)
}

/// jobs/s of `flows` no-op 3-stage flows through bullmq-official (concurrency 50).
async fn rust_throughput(url: &str, flows: usize, round: usize) -> Result<f64, BenchError> {
    let prefix = format!("bench-rs{round}");
    let (ws, done, drains) = noop_workers(url, &prefix, 50).await?;
    let fp = FlowProducer::with_options(
        FlowProducerOptions::new()
            .connection(connection(url))
            .prefix(&prefix),
    )
    .await
    .map_err(run_err("flow producer"))?;
    let all: Vec<FlowJob> = (0..flows)
        .map(noop_flow)
        .collect::<Result<_, _>>()
        .map_err(run_err("flow"))?;
    let t0 = Instant::now();
    for chunk in all.chunks(500) {
        fp.add_bulk(chunk.to_vec())
            .await
            .map_err(run_err("add flows"))?;
    }
    while done.load(Ordering::Relaxed) < flows {
        if t0.elapsed() > Duration::from_secs(600) {
            return Err(BenchError::Run("no-op flows did not finish".into()));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let s = t0.elapsed().as_secs_f64();
    fp.close().await;
    close_noop(ws, drains).await;
    Ok(3.0 * flows as f64 / s)
}

/// jobs/s of the Node anchor, or an explanation why it cannot run.
async fn node_throughput(
    node_dir: &Path,
    socket: &Path,
    flows: usize,
    round: usize,
) -> Result<f64, String> {
    if !node_dir.join("node_modules/bullmq").is_dir() {
        return Err(format!(
            "Node anchor not installed in {} (run scripts/bench-node-setup.sh)",
            node_dir.display()
        ));
    }
    let cmd = Cmd::new("node")
        .arg("flows.js")
        .arg(socket)
        .arg(flows.to_string())
        .arg("50")
        .arg(format!("bench-node{round}"))
        .cwd(node_dir)
        .timeout(Duration::from_secs(600));
    let (o, stdout) = process::run_collect(&cmd, &CancellationToken::new())
        .await
        .map_err(|e| e.to_string())?;
    if !o.success() {
        return Err(format!("node failed: {}", o.last_stderr_line()));
    }
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).map_err(|e| e.to_string())?;
    v["jobs_per_s"]
        .as_f64()
        .ok_or_else(|| format!("unexpected node output {stdout:?}"))
}

/// The faster-whisper anchor's directory: `bench/anchors` of the checkout this binary was
/// built from (so the working directory does not matter), installed by
/// `scripts/bench-anchors-setup.sh`.
fn anchors_dir() -> PathBuf {
    checkout_dir("bench/anchors")
}

/// `rel` in the checkout this binary was built from (the bench's anchors live there, wherever
/// the bench is run from).
fn checkout_dir(rel: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel);
    p.canonicalize().unwrap_or(p)
}

/// One compute type's faster of two anchor runs: its wall seconds, and of them the language
/// guard's identification (0 without one).
#[derive(Debug, Clone, Copy)]
struct AnchorRun {
    compute_type: &'static str,
    wall_s: f64,
    guard_s: f64,
}

/// PyPI faster-whisper (CTranslate2) on `wav` with the CTranslate2 model directory that
/// `model` was converted from and `threads` CPU threads, greedy, no VAD, English given for
/// `.en` models (`bench/anchors/faster_whisper_run.py`): for `int8` and `float32`, the faster
/// of two runs, model load excluded. With `guard` (the stage's language guard identifier, e.g.
/// `base`), each run also makes the guard's call — that model's `detect_language` on the
/// first 15 s — so both sides do the same work, as whisper-rs does for the overhead ratio.
/// `Err` says why it did not run (not installed, a model without a CTranslate2 directory, the
/// script failed).
async fn faster_whisper(
    model: &Path,
    wav: &Path,
    threads: usize,
    guard: Option<&str>,
) -> Result<Vec<AnchorRun>, String> {
    let dir = anchors_dir();
    let python = dir.join("venv/bin/python");
    let name = crate::tools::model::model_name(model);
    let model_dir = dir.join("models").join(&name);
    let guard_dir = guard.map(|g| dir.join("models").join(g));
    let missing = [Some(&model_dir), guard_dir.as_ref()]
        .into_iter()
        .flatten()
        .find(|d| !d.join("model.bin").is_file());
    if !python.is_file() || missing.is_some() {
        return Err(format!(
            "faster-whisper anchor for {name} not installed in {} (run scripts/bench-anchors-setup.sh)",
            dir.display()
        ));
    }
    let mut out = Vec::new();
    for compute_type in ["int8", "float32"] {
        let mut cmd = Cmd::new(&python)
            .arg(dir.join("faster_whisper_run.py"))
            .arg(wav)
            .arg(&model_dir)
            .arg(threads.to_string())
            .arg(compute_type)
            .arg("2")
            .timeout(Duration::from_secs(1800));
        if name.ends_with(".en") {
            cmd = cmd.arg("en");
        } else if guard_dir.is_some() {
            cmd = cmd.arg(""); // no language given: detected
        }
        if let Some(g) = &guard_dir {
            cmd = cmd.arg(g);
        }
        let (o, stdout) = process::run_collect(&cmd, &CancellationToken::new())
            .await
            .map_err(|e| e.to_string())?;
        if !o.success() {
            return Err(format!("faster-whisper failed: {}", o.last_stderr_line()));
        }
        let v: serde_json::Value = serde_json::from_str(stdout.trim())
            .map_err(|e| format!("unexpected faster-whisper output {stdout:?}: {e}"))?;
        let figures = |key: &str| -> Vec<f64> {
            v[key]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(serde_json::Value::as_f64)
                .collect()
        };
        let (walls, guards) = (figures("walls_s"), figures("guard_walls_s"));
        let best = (0..walls.len()).min_by(|&a, &b| walls[a].total_cmp(&walls[b]));
        let Some(i) = best.filter(|&i| walls[i].is_finite()) else {
            return Err(format!("unexpected faster-whisper output {stdout:?}"));
        };
        out.push(AnchorRun {
            compute_type,
            wall_s: walls[i],
            guard_s: guards.get(i).copied().unwrap_or(0.0),
        });
    }
    Ok(out)
}

/// P3 against the faster-whisper anchor ([`faster_whisper`]) on `wav`: the stage's wall
/// `stage_s` ÷ the anchor's faster compute type (the engine a user would pick instead), the
/// anchor making the language guard's call too when the stage did (`guard`), and the detail
/// keys `p3_faster_whisper_s` (per compute type), `p3_faster_whisper_best_s`,
/// `p3_faster_whisper_guard` and `p3_faster_whisper_guard_s` (the guard's model and its share
/// of the best run), `p3_engine_ratio_without_guard` (the stage ÷ the anchor's transcription
/// alone), `p3_whisper_rs_ratio_vs_faster_whisper` (`direct_s` ÷ it) and
/// `p3_faster_whisper_note` (why it did not run). `None` when it did not run.
async fn engine_ratio(
    model: &Path,
    wav: &Path,
    threads: usize,
    guard: Option<&str>,
    (stage_s, direct_s): (f64, f64),
) -> (Option<f64>, serde_json::Value) {
    let (runs, note) = match faster_whisper(model, wav, threads, guard).await {
        Ok(r) => (r, None),
        Err(why) => (Vec::new(), Some(why)),
    };
    let best = runs
        .iter()
        .copied()
        .min_by(|a, b| a.wall_s.total_cmp(&b.wall_s));
    let per_type: serde_json::Map<String, serde_json::Value> = runs
        .iter()
        .map(|r| (r.compute_type.to_string(), serde_json::json!(r.wall_s)))
        .collect();
    let detail = serde_json::json!({
        "p3_faster_whisper_s": per_type,
        "p3_faster_whisper_best_s": best.map(|b| b.wall_s),
        "p3_faster_whisper_guard": guard,
        "p3_faster_whisper_guard_s": best.filter(|_| guard.is_some()).map(|b| b.guard_s),
        "p3_engine_ratio_without_guard": best
            .filter(|_| guard.is_some())
            .map(|b| stage_s / (b.wall_s - b.guard_s)),
        "p3_faster_whisper_note": note,
        "p3_whisper_rs_ratio_vs_faster_whisper": best.map(|b| direct_s / b.wall_s),
    });
    (best.map(|b| stage_s / b.wall_s), detail)
}

/// Runs the benchmark with `cfg` (its concurrency, memory budget and model) and `opts`.
/// `progress` receives one line per phase.
pub async fn run(
    cfg: &Config,
    opts: &BenchOptions,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<BenchReport, BenchError> {
    let load_start = load_avg();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let speech = speech_source(opts.samples.as_deref(), &default_sample_dirs(&cfg.data_dir))?;
    let root = DataDir::open(&cfg.data_dir).map_err(setup("data dir"))?;
    let work = root.bench_dir(&format!("{}-{}", now_ms(), std::process::id()));
    std::fs::create_dir_all(&work).map_err(setup("bench dir"))?;
    let mut cfg = cfg.clone();
    cfg.data_dir = work.join("data");
    // Its own embedded Redis, whatever Redis the configuration names.
    cfg.redis_url = None;
    if !crate::tools::model::model_exists(&cfg.model) {
        return Err(BenchError::Setup(format!(
            "model {} not found (tubescribe model install)",
            cfg.model.display()
        )));
    }
    let mut rt = Runtime::builder(cfg)
        .start()
        .await
        .map_err(setup("redis"))?;
    let result = run_inner(opts, &speech, progress, &work, &mut rt, cores).await;
    let base_cfg = rt.config().clone();
    rt.shutdown(Duration::from_secs(10)).await;
    let result = match result {
        Ok(r) => p6(&base_cfg, &work, progress).await.map(|p6| (r, p6)),
        Err(e) => Err(e),
    };
    let _ = std::fs::remove_dir_all(&work);
    let (mut r, p6) = result?;
    r.p6_long_speedup = p6.speedup;
    if let serde_json::Value::Object(o) = &mut r.detail {
        o.insert("load_avg_1m_start".into(), serde_json::json!(load_start));
        o.insert("load_avg_1m_end".into(), serde_json::json!(load_avg()));
        // Portable or native whisper.cpp (README: "Portable and native builds").
        o.insert("ggml_cpu".into(), serde_json::json!(asr::ggml_cpu_build()));
        o.insert("p6_long_audio_s".into(), serde_json::json!(p6.audio_s));
        o.insert("p6_latency_s".into(), serde_json::json!(p6.latency_s));
        o.insert("p6_segments".into(), serde_json::json!(p6.segments));
        o.insert("p6_machine_ceiling".into(), serde_json::json!(p6.ceiling));
        o.insert("p6_timeline_2x1".into(), p6.timeline);
        o.insert(
            "p6_ratio_to_ceiling".into(),
            serde_json::json!(p6.speedup / p6.ceiling),
        );
    }
    Ok(r)
}

/// The solo runs: each short talk, then the long one twice.
struct SoloRuns {
    shorts: Vec<TaskRun>,
    /// CPU seconds of the short runs together.
    short_cpu: f64,
    /// The faster long run (by transcribe stage wall).
    long: TaskRun,
    /// The transcribe stage wall of both long runs, seconds.
    long_stage_walls: [f64; 2],
}

async fn solo_runs(
    rt: &mut Runtime,
    shorts: &[PathBuf],
    long: &Path,
    work: &Path,
) -> Result<SoloRuns, BenchError> {
    let mut solo_short = Vec::new();
    let mut short_cpu = 0.0;
    for s in shorts {
        let (r, _, cpu) = run_tasks(rt, std::slice::from_ref(s)).await?;
        solo_short.push(r[0].clone());
        short_cpu += cpu;
    }
    // The long task runs solo twice (as a fresh task each time) and P3 compares the faster
    // run with the faster of two direct whisper runs: a single 20 s measurement on a shared
    // 2-core machine varies by ±10 %, min-of-two on both sides keeps the ratio honest.
    let (r, _, _) = run_tasks(rt, &[long.to_path_buf()]).await?;
    let mut solo_long = r[0].clone();
    let long2 = work.join("long-again.wav");
    std::fs::copy(long, &long2).map_err(setup("copy long talk"))?;
    let (r, _, _) = run_tasks(rt, std::slice::from_ref(&long2)).await?;
    let long_stage_walls = [solo_long.stage_wall_s[1], r[0].stage_wall_s[1]];
    if r[0].stage_wall_s[1] < solo_long.stage_wall_s[1] {
        solo_long = r[0].clone();
    }
    Ok(SoloRuns {
        shorts: solo_short,
        short_cpu,
        long: solo_long,
        long_stage_walls,
    })
}

/// P1 and P2 from the solo runs and the batch run.
struct P12 {
    /// Max over shorts of batch latency ÷ solo latency.
    p1: f64,
    /// The same under the seed baseline (sequential).
    p1_base: f64,
    /// The lowest P1 any scheduler could reach on this machine.
    p1_floor: f64,
    /// The lowest P1 of the shorts as whole jobs ([`best_whole_job_p1`]); NaN when their
    /// solo runs were split.
    p1_whole_jobs: f64,
    /// The makespan's lower bound, seconds.
    lower_bound: f64,
    /// Makespan ÷ lower bound.
    p2: f64,
}

impl P12 {
    fn of(
        solo: &SoloRuns,
        batch: &[TaskRun],
        makespan: f64,
        batch_cpu: f64,
        cores: usize,
        slots: usize,
    ) -> P12 {
        let p1 = batch[1..]
            .iter()
            .zip(&solo.shorts)
            .map(|(b, s)| b.latency_s / s.latency_s)
            .fold(0.0, f64::max);
        // Seed baseline: one FIFO queue, concurrency 1 → tasks one after another.
        let mut acc = solo.long.latency_s;
        let mut p1_base = 0.0f64;
        for s in &solo.shorts {
            acc += s.latency_s;
            p1_base = p1_base.max(acc / s.latency_s);
        }
        // P1 floor: the five shorts arrive together and need `short_cpu` CPU seconds, so under
        // any scheduler (even with no long task at all) the last one finishes no earlier than
        // short_cpu ÷ cores; its ratio can be no lower than that ÷ the longest solo latency.
        let max_solo = solo.shorts.iter().map(|r| r.latency_s).fold(0.0, f64::max);
        let p1_floor = if max_solo > 0.0 {
            solo.short_cpu / cores as f64 / max_solo
        } else {
            0.0
        };
        let lower_bound = (batch_cpu / cores as f64).max(solo.long.latency_s);
        let p1_whole_jobs = if solo.shorts.iter().all(|r| r.segments <= 1) {
            let solo_s: Vec<f64> = solo.shorts.iter().map(|r| r.latency_s).collect();
            best_whole_job_p1(&solo_s, slots)
        } else {
            f64::NAN
        };
        P12 {
            p1,
            p1_base,
            p1_floor,
            p1_whole_jobs,
            lower_bound,
            p2: makespan / lower_bound,
        }
    }
}

/// The lowest P1 (max over jobs of finish time ÷ length) of jobs of lengths `solo_s` (s), all
/// released at 0, run whole on `slots` identical slots in the best order: each job in turn
/// takes the first slot to free up (list scheduling), every order tried (5 shorts: 120). With
/// the shorts' solo latencies as lengths it is what P1 could be with no long task, no
/// overhead and no clip cut in parts — a bound for schedulers that run each short as one
/// job; the P1 floor assumes the shorts' work divides freely over the cores. Five equal
/// jobs on two slots: 3 against a floor of 2.5 (1.2 ×). NaN for no jobs.
fn best_whole_job_p1(solo_s: &[f64], slots: usize) -> f64 {
    /// Tries every job not `used` next on the first slot to free up; `worst` is the ratio so
    /// far, `best` the lowest complete one (branches already worse are cut).
    fn go(solo_s: &[f64], used: &mut [bool], free: &mut [f64], worst: f64, best: &mut f64) {
        if worst >= *best {
            return;
        }
        if used.iter().all(|&u| u) {
            *best = worst;
            return;
        }
        let k = (0..free.len())
            .min_by(|&a, &b| free[a].total_cmp(&free[b]))
            .unwrap_or(0);
        for i in 0..solo_s.len() {
            if used[i] {
                continue;
            }
            let (start, len) = (free[k], solo_s[i]);
            used[i] = true;
            free[k] = start + len;
            go(solo_s, used, free, worst.max((start + len) / len), best);
            free[k] = start;
            used[i] = false;
        }
    }
    if solo_s.is_empty() || solo_s.iter().any(|&s| s.is_nan() || s <= 0.0) {
        return f64::NAN;
    }
    let mut best = f64::INFINITY;
    let (mut used, mut free) = (vec![false; solo_s.len()], vec![0.0; slots.max(1)]);
    go(solo_s, &mut used, &mut free, 0.0, &mut best);
    best
}

/// Samples the language guard's call hears in the direct runs ([`direct_whisper`]).
const LANGUAGE_ID_HEAD: usize = asr::LANGUAGE_ID_SPEECH_S * asr::SAMPLE_RATE as usize;

/// Wall seconds of two whisper-rs runs directly on `wav` with `cfg`'s model and `threads`,
/// through [`asr::AsrModel::transcribe`] on the whole file like the unsplit stage, and the name of
/// the language guard's identifier when the model carries one as the stage's does
/// ([`StageCtx::guarded`]). Then each run first makes the guard's call as well: the
/// identifier's [`asr::AsrModel::identify_language`] on the first
/// [`asr::LANGUAGE_ID_SPEECH_S`] s (as the faster-whisper anchor does), so the guard's pass
/// (1–2 s on 1 thread, a fifth of a 2-minute file's transcription) is not charged to
/// overhead.
async fn direct_whisper(
    cfg: &Config,
    data: &DataDir,
    wav: &Path,
    threads: usize,
) -> Result<(Vec<f64>, Option<String>), BenchError> {
    let ctx = StageCtx::new(cfg.clone(), data.clone());
    let model = ctx
        .asr()
        .await
        .map_err(|e| BenchError::Setup(format!("cannot load the model: {e}")))?;
    let model = ctx.guarded(model).await;
    let guard = model.language_id_model().map(|m| m.name().to_string());
    let wav = wav.to_path_buf();
    let runs = tokio::task::spawn_blocking(move || -> Result<Vec<f64>, String> {
        let m = model;
        let pcm = asr::read_wav_16k_mono(&wav).map_err(|e| e.to_string())?;
        let mut runs = Vec::new();
        for _ in 0..2 {
            let t = Instant::now();
            direct_run(&m, &pcm, threads).map_err(|e| e.to_string())?;
            runs.push(t.elapsed().as_secs_f64());
        }
        Ok(runs)
    })
    .await
    .map_err(run_err("direct whisper"))?
    .map_err(BenchError::Run)?;
    Ok((runs, guard))
}

/// One direct run of [`direct_whisper`]: when `m` carries the language guard's identifier,
/// its [`asr::AsrModel::identify_language`] on the first [`asr::LANGUAGE_ID_SPEECH_S`] s of
/// `pcm` (16 kHz mono), then `m`'s transcription of all of `pcm`, both with `threads`.
/// Returns the identification (`None` without an identifier).
///
/// # Errors
/// The errors of both calls.
fn direct_run(
    m: &asr::AsrModel,
    pcm: &[f32],
    threads: usize,
) -> Result<Option<asr::LanguageId>, asr::AsrError> {
    let id = match m.language_id_model() {
        Some(lid) => Some(lid.identify_language(&pcm[..LANGUAGE_ID_HEAD.min(pcm.len())], threads)?),
        None => None,
    };
    m.transcribe(
        pcm,
        &TranscribeOptions {
            threads,
            ..Default::default()
        },
        Arc::new(AtomicU8::new(0)),
        Arc::new(AtomicBool::new(false)),
    )?;
    Ok(id)
}

/// P5: `flows` no-op flows through bullmq-official and through Node BullMQ, two rounds each,
/// alternately; returns both rates (jobs/s) and why Node did not run, if it did not.
async fn throughput(
    url: &str,
    node_dir: &Path,
    socket: &Path,
    flows: usize,
) -> Result<(Vec<f64>, Vec<f64>, Option<String>), BenchError> {
    let mut rust_rates = Vec::new();
    let mut node_rates = Vec::new();
    for round in 0..2 {
        rust_rates.push(rust_throughput(url, flows, round).await?);
        match node_throughput(node_dir, socket, flows, round).await {
            Ok(r) => node_rates.push(r),
            Err(e) => return Ok((rust_rates, node_rates, Some(e))),
        }
    }
    Ok((rust_rates, node_rates, None))
}

/// P6's runs: one long talk alone under three worker shapes.
struct P6 {
    /// Latency with 1 slot × 1 thread ÷ latency with 2 slots × 1 thread.
    speedup: f64,
    /// Seconds of audio in the talk.
    audio_s: f64,
    /// Latency (s) per shape, keyed `"<slots>x<threads>"`.
    latency_s: serde_json::Map<String, serde_json::Value>,
    /// Segment jobs the talk was cut into (from the 2-slot run's manifest).
    segments: usize,
    /// The machine's own speedup for two whisper runs: [`parallel_ceiling`].
    ceiling: f64,
    /// The 2-slot run's stages and segments in time ([`timeline`]).
    timeline: serde_json::Value,
}

/// Seconds of the P6 talk used for [`parallel_ceiling`] (two halves of 2 minutes).
const CEILING_AUDIO_S: usize = 240;

/// The speedup this machine gives two whisper.cpp runs side by side, the most any split can
/// reach: the first [`CEILING_AUDIO_S`] s of `talk` cut in two halves, whisper-rs with `cfg`'s
/// model on 1 thread per half (no gate, no guard: the bare tool), the halves one after the
/// other ÷ the halves side by side on two OS threads. On a machine whose two cores share
/// memory bandwidth, caches or a hypervisor's time this stays under 2 whatever the
/// scheduler does.
async fn parallel_ceiling(cfg: &Config, data: &DataDir, talk: &Path) -> Result<f64, BenchError> {
    let model = StageCtx::new(cfg.clone(), data.clone())
        .asr()
        .await
        .map_err(|e| BenchError::Setup(format!("cannot load the model: {e}")))?;
    let pcm = asr::read_wav_16k_mono(talk).map_err(setup("P6 talk"))?;
    let n = pcm.len().min(CEILING_AUDIO_S * asr::SAMPLE_RATE as usize);
    let halves: [Arc<Vec<f32>>; 2] = [
        Arc::new(pcm[..n / 2].to_vec()),
        Arc::new(pcm[n / 2..n].to_vec()),
    ];
    let run = |h: Arc<Vec<f32>>| {
        let m = model.clone();
        tokio::task::spawn_blocking(move || {
            let opts = TranscribeOptions {
                threads: 1,
                ..Default::default()
            };
            let (progress, abort) = (Arc::new(AtomicU8::new(0)), Arc::new(AtomicBool::new(false)));
            m.transcribe(&h, &opts, progress, abort)
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    };
    let join = |r: Result<Result<(), String>, tokio::task::JoinError>| {
        r.map_err(run_err("ceiling run"))?.map_err(BenchError::Run)
    };
    let t = Instant::now();
    for h in &halves {
        join(run(h.clone()).await)?;
    }
    let one_after_other = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let (a, b) = tokio::join!(run(halves[0].clone()), run(halves[1].clone()));
    join(a)?;
    join(b)?;
    Ok(one_after_other / t.elapsed().as_secs_f64())
}

/// The long talk for P6: 12 minutes, longer than any segment length (see
/// `schedule.segment_s`), so it is cut into segments that 2 slots can run side by side.
const P6_TALK_S: f64 = 720.0;

/// P6's talk, written by [`run_inner`] from the same clips as the other talks.
const P6_TALK: &str = "p6-talk.wav";

/// P6: the same 12-minute talk alone, each time with a fresh embedded Redis and data
/// directory, under 1 slot × 1 thread, 2 slots × 1 thread and 1 slot × 2 threads.
async fn p6(
    base: &Config,
    work: &Path,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<P6, BenchError> {
    progress("P6: one long talk with 1 and with 2 transcribe slots");
    let talk = work.join(P6_TALK);
    let audio_s = {
        let r = hound::WavReader::open(&talk).map_err(setup("P6 talk"))?;
        r.duration() as f64 / r.spec().sample_rate as f64
    };
    let mut latency_s = serde_json::Map::new();
    let mut segments = 0;
    let mut timeline = serde_json::Value::Null;
    for (slots, threads) in [(1, 1), (2, 1), (1, 2)] {
        let mut cfg = base.clone();
        cfg.transcribe_concurrency = slots;
        cfg.threads = threads;
        cfg.threads_explicit = true;
        cfg.data_dir = work.join(format!("p6-{slots}x{threads}"));
        let mut rt = Runtime::builder(cfg)
            .start()
            .await
            .map_err(setup("redis"))?;
        let runs = run_tasks(&mut rt, std::slice::from_ref(&talk)).await;
        if slots == 2 {
            if let Ok((r, _, _)) = &runs {
                timeline = task_timeline(rt.data(), &r[0].task_id);
                // Boundaries 0, cuts…, end: one more than the segments.
                segments = timeline["bounds_ms"]
                    .as_array()
                    .map_or(0, |b| b.len().saturating_sub(1));
            }
        }
        rt.shutdown(Duration::from_secs(10)).await;
        let (r, _, _) = runs?;
        latency_s.insert(
            format!("{slots}x{threads}"),
            serde_json::json!(r[0].latency_s),
        );
    }
    progress("P6: the machine's own speedup for two whisper runs side by side");
    let data = DataDir::open(&work.join("p6-ceiling")).map_err(setup("P6 data directory"))?;
    let ceiling = parallel_ceiling(base, &data, &talk).await?;
    let l = |k: &str| latency_s[k].as_f64().unwrap_or(f64::NAN);
    Ok(P6 {
        speedup: l("1x1") / l("2x1"),
        audio_s,
        latency_s,
        segments,
        ceiling,
        timeline,
    })
}

/// [`timeline`] of the task `id` in `data` (null when its record cannot be read).
fn task_timeline(data: &DataDir, id: &str) -> serde_json::Value {
    data.task(id)
        .read_manifest()
        .map_or(serde_json::Value::Null, |m| timeline(&m))
}

/// Where a task's time went, in seconds since it was created: each stage's start and end,
/// each segment's run (`segment_runs`) and the boundaries (ms of audio), so a ratio short of
/// its goal can be read off (serial parts, a slot idle in the last wave, a job that waited).
fn timeline(m: &crate::domain::manifest::Manifest) -> serde_json::Value {
    let detail = m.stage(Stage::Transcribe).map(|t| t.detail.clone());
    let d = detail.unwrap_or_default();
    let at = |ms: Option<u64>| ms.map(|t| t.saturating_sub(m.created_at) as f64 / 1000.0);
    let stages: serde_json::Map<String, serde_json::Value> = Stage::ALL
        .iter()
        .filter_map(|s| {
            let r = m.stage(*s)?;
            Some((
                s.queue_name().to_string(),
                serde_json::json!([at(r.started_at), at(r.finished_at)]),
            ))
        })
        .collect();
    let mut runs: Vec<(usize, f64, f64)> = d
        .get("segment_runs")
        .and_then(|r| r.as_object())
        .map(|o| {
            o.iter()
                .filter_map(|(k, v)| {
                    Some((
                        k.parse().ok()?,
                        at(v["started_at"].as_u64())?,
                        at(v["finished_at"].as_u64())?,
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    runs.sort_by_key(|r| r.0);
    let bounds = d.get("segment_bounds_ms").cloned().unwrap_or_default();
    serde_json::json!({ "stages": stages, "segments": runs, "bounds_ms": bounds })
}

async fn run_inner(
    opts: &BenchOptions,
    speech: &Speech,
    progress: &(dyn Fn(&str) + Sync),
    work: &Path,
    rt: &mut Runtime,
    cores: usize,
) -> Result<BenchReport, BenchError> {
    let cfg = &rt.config().clone();
    let data = &rt.data().clone();
    let url = &rt.url().to_string();
    let socket = &rt
        .redis_socket()
        .expect("the bench runs its own embedded Redis")
        .to_path_buf();
    let (short_s, long_s, p5_flows, hop_flows) = if opts.quick {
        (20.0, 120.0, 1000, 60)
    } else {
        (60.0, 590.0, 4000, 200)
    };
    progress("preparing speech");
    let (clips, source) = clips(cfg, work, speech).await?;
    let long = work.join("long.wav");
    let long_len = write_talk(&long, &clips, 0, long_s)?;
    let mut shorts = Vec::new();
    for i in 0..5 {
        let p = work.join(format!("short{i}.wav"));
        write_talk(&p, &clips, i + 1, short_s)?;
        shorts.push(p);
    }
    write_talk(&work.join(P6_TALK), &clips, 0, P6_TALK_S)?;

    progress("P1/P4: solo runs");
    let solo = solo_runs(rt, &shorts, &long, work).await?;
    let (solo_short, short_cpu, solo_long) = (&solo.shorts, solo.short_cpu, &solo.long);

    progress("P1/P2: batch of 1 long + 5 short");
    let mut batch_files = vec![long.clone()];
    batch_files.extend(shorts.iter().cloned());
    let (batch, makespan, batch_cpu) = run_tasks(rt, &batch_files).await?;
    let slots = cfg.transcribe_concurrency.max(1);
    let p12 = P12::of(&solo, &batch, makespan, batch_cpu, cores, slots);
    let (p1, p1_base, p1_floor, lower_bound, p2) =
        (p12.p1, p12.p1_base, p12.p1_floor, p12.lower_bound, p12.p2);

    progress("P3: the engine directly on the same audio");
    let wav = data.task(&solo_long.task_id).file(names::AUDIO_WAV);
    // Segments side by side use as many cores as slots run them: whisper gets the same.
    let parallel = solo_long
        .segments
        .clamp(1, cfg.transcribe_concurrency.max(1) as u64);
    let direct_threads = (solo_long.threads * parallel) as usize;
    let (direct_runs, direct_guard) = direct_whisper(cfg, data, &wav, direct_threads).await?;
    let direct_s = direct_runs.iter().copied().fold(f64::INFINITY, f64::min);
    let p3 = solo_long.stage_wall_s[1] / direct_s;

    progress("P3: faster-whisper on the same audio");
    let (p3_fw, fw_detail) = engine_ratio(
        &cfg.model,
        &wav,
        direct_threads,
        direct_guard.as_deref(),
        (solo_long.stage_wall_s[1], direct_s),
    )
    .await;

    progress("P3: stage hops (no-op flows)");
    let mut hop = hops(url, hop_flows).await?;
    let hop50 = percentile(&mut hop, 0.50);
    let hop99 = percentile(&mut hop, 0.99);

    progress("P5: queue throughput vs Node BullMQ");
    let node_dir = opts
        .node_dir
        .clone()
        .unwrap_or_else(|| checkout_dir("bench/node"));
    let (rust_rates, node_rates, node_note) = throughput(url, &node_dir, socket, p5_flows).await?;
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let p5 = (!node_rates.is_empty()).then(|| mean(&rust_rates) / mean(&node_rates));

    // One job at a time: the solo runs, but not a long task whose segments ran side by
    // side (that is two jobs in the process, like the batch).
    let one_job = |r: &&TaskRun| r.segments <= 1;
    let p4 = solo_short
        .iter()
        .chain(std::iter::once(solo_long))
        .filter(one_job)
        .map(|r| r.peak_rss_mb)
        // No one-job run (every task was split): not measured, NaN (✘), never 0.
        .fold(f64::NAN, f64::max);
    let p4_two = batch
        .iter()
        .chain(std::iter::once(solo_long).filter(|r| !one_job(r)))
        .map(|r| r.peak_rss_mb)
        .fold(0.0, f64::max);
    let mut detail = serde_json::json!({
        "quick": opts.quick,
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
        "cores": cores,
        "model": cfg.model.file_name().map(|n| n.to_string_lossy().into_owned()),
        "speech": source,
        "concurrency": [cfg.download_concurrency, cfg.transcribe_concurrency, cfg.summarize_concurrency],
        "plan": crate::pipeline::budget::plan_measured(cfg, data, cfg.transcribe_concurrency),
        "long_audio_s": long_len,
        "short_audio_s": short_s,
        "solo_short": solo_short,
        "solo_long": solo_long,
        "batch": batch,
        "solo_short_cpu_s": short_cpu,
        "p1_floor": p1_floor,
        "p1_whole_jobs": p12.p1_whole_jobs,
        "batch_makespan_s": makespan,
        "batch_cpu_s": batch_cpu,
        "p2_lower_bound_s": lower_bound,
        "p3_stage_wall_s": solo_long.stage_wall_s[1],
        "p3_timeline": task_timeline(data, &solo_long.task_id),
        "batch_timeline": batch.iter().map(|r| task_timeline(data, &r.task_id)).collect::<Vec<_>>(),
        "p3_direct_whisper_s": direct_s,
        "p3_direct_threads": direct_threads,
        "p3_direct_language_guard": direct_guard,
        "p3_stage_segments": solo_long.segments,
        "p3_stage_runs_s": solo.long_stage_walls,
        "p3_direct_runs_s": direct_runs,
        "p3_hop_samples": hop.len(),
        "p5_flows": p5_flows,
        "p5_rust_jobs_per_s": rust_rates,
        "p5_node_jobs_per_s": node_rates,
        "p5_note": node_note,
    });
    if let (Some(d), serde_json::Value::Object(fw)) = (detail.as_object_mut(), fw_detail) {
        d.extend(fw);
    }
    Ok(BenchReport {
        p1_short_latency_ratio_max: p1,
        p1_baseline_short_latency_ratio_max: p1_base,
        p2_makespan_ratio: p2,
        p3_transcribe_overhead_ratio: p3,
        p3_engine_ratio_vs_faster_whisper: p3_fw,
        p3_hop_ms_p50: hop50,
        p3_hop_ms_p99: hop99,
        p4_job_peak_rss_mb: p4,
        p4_worker_2jobs_peak_rss_mb: p4_two,
        p5_throughput_ratio_vs_node: p5,
        p6_long_speedup: f64::NAN,
        detail,
    })
}

/// A figure of the report's detail as `x.xx`, `-` when absent.
fn fig(v: &serde_json::Value) -> String {
    v.as_f64().map(|x| format!("{x:.2}")).unwrap_or("-".into())
}

/// A list of rates in the detail as `a/b` (jobs/s, no decimals).
fn rates(v: &serde_json::Value) -> String {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_f64())
                .map(|x| format!("{x:.0}"))
                .collect::<Vec<_>>()
                .join("/")
        })
        .unwrap_or_default()
}

/// One table row: figure, value, goal, ✔/✘ (blank where there is no goal), what it compares.
type Row = (String, String, String, &'static str, String);

/// A [`Row`]; `met` is `None` for a figure without a goal.
fn row(name: &str, value: String, goal: String, met: Option<bool>, note: impl Into<String>) -> Row {
    let mark = match met {
        Some(true) => "✔",
        Some(false) => "✘",
        None => " ",
    };
    (name.into(), value, goal, mark, note.into())
}

impl BenchReport {
    /// The rows of P1 and P2: the scheduler's figures.
    fn scheduling_rows(&self) -> Vec<Row> {
        let d = &self.detail;

        let floor = d["p1_floor"].as_f64().unwrap_or(f64::NAN);
        let p1_to_floor = self.p1_short_latency_ratio_max / floor;
        vec![
            row(
                "P1 short latency ratio (max)",
                format!("{:.2}", self.p1_short_latency_ratio_max),
                format!("≤ {:.2}", 1.15 * floor),
                Some(p1_to_floor <= 1.15),
                "batch ÷ solo latency of 5 short tasks behind 1 long",
            ),
            row(
                "P1 ÷ P1 floor",
                format!("{p1_to_floor:.2}"),
                "≤ 1.15".into(),
                Some(p1_to_floor <= 1.15),
                format!(
                    "floor {} = the 5 shorts' CPU {} s ÷ cores ÷ longest solo latency: no scheduler can do better",
                    fig(&d["p1_floor"]),
                    fig(&d["solo_short_cpu_s"])
                ),
            ),
            row(
                "P1 best of whole jobs",
                fig(&d["p1_whole_jobs"]),
                "—".into(),
                None,
                format!(
                    "the 5 shorts uncut on the slots, best order, no long task, no overhead: {} × floor",
                    fig(&serde_json::json!(d["p1_whole_jobs"].as_f64().unwrap_or(f64::NAN) / floor))
                ),
            ),
            row(
                "P1 same, seed baseline",
                format!("{:.2}", self.p1_baseline_short_latency_ratio_max),
                "—".into(),
                None,
                "one queue, concurrency 1 (sequential)",
            ),
            row(
                "P2 makespan ratio",
                format!("{:.2}", self.p2_makespan_ratio),
                "≤ 1.10".into(),
                Some(self.p2_makespan_ratio <= 1.10),
                format!(
                    "makespan {} s ÷ max(CPU {} s ÷ cores, chain)",
                    fig(&d["batch_makespan_s"]),
                    fig(&d["batch_cpu_s"])
                ),
            ),
        ]
    }

    /// The rows of P3 to P6 and the load average: the stages', memory and queue figures.
    fn stage_rows(&self) -> Vec<Row> {
        let d = &self.detail;

        let lat = |k: &str| fig(&d["p6_latency_s"][k]);
        let mut rows = vec![
            row(
                "P3 transcribe overhead ratio",
                format!("{:.3}", self.p3_transcribe_overhead_ratio),
                "≤ 1.05".into(),
                Some(self.p3_transcribe_overhead_ratio <= 1.05),
                format!(
                    "stage {} s ({} segments) ÷ the engine directly {} s ({} threads{})",
                    fig(&d["p3_stage_wall_s"]),
                    d["p3_stage_segments"],
                    fig(&d["p3_direct_whisper_s"]),
                    d["p3_direct_threads"],
                    match d["p3_direct_language_guard"].as_str() {
                        Some(m) => format!(", {m} identifying the language"),
                        None => String::new(),
                    }
                ),
            ),
            match self.p3_engine_ratio_vs_faster_whisper {
                Some(r) => row(
                    "P3 engine ratio vs faster-whisper",
                    format!("{r:.2}"),
                    "≤ 1.0".into(),
                    Some(r <= 1.0),
                    format!(
                        "stage {} s ÷ faster-whisper {} s (int8 {} s, float32 {} s{}; the engine directly ÷ it {})",
                        fig(&d["p3_stage_wall_s"]),
                        fig(&d["p3_faster_whisper_best_s"]),
                        fig(&d["p3_faster_whisper_s"]["int8"]),
                        fig(&d["p3_faster_whisper_s"]["float32"]),
                        match d["p3_faster_whisper_guard"].as_str() {
                            Some(m) => format!(
                                "; with {m} identifying the language, {} s of it; without that call {}",
                                fig(&d["p3_faster_whisper_guard_s"]),
                                fig(&d["p3_engine_ratio_without_guard"])
                            ),
                            None => String::new(),
                        },
                        fig(&d["p3_whisper_rs_ratio_vs_faster_whisper"])
                    ),
                ),
                None => row(
                    "P3 engine ratio vs faster-whisper",
                    "n/a".into(),
                    "≤ 1.0".into(),
                    None,
                    d["p3_faster_whisper_note"].as_str().unwrap_or(""),
                ),
            },
            row(
                "P3 hop p50 / p99 (ms)",
                format!("{:.1} / {:.1}", self.p3_hop_ms_p50, self.p3_hop_ms_p99),
                "≤ 5 / 50".into(),
                Some(self.p3_hop_ms_p50 <= 5.0 && self.p3_hop_ms_p99 <= 50.0),
                "job completed → next stage active",
            ),
            row(
                "P4 job peak RSS (MB)",
                format!("{:.0}", self.p4_job_peak_rss_mb),
                "≤ 500".into(),
                Some(self.p4_job_peak_rss_mb <= 500.0),
                format!("process RSS, model {}", d["model"].as_str().unwrap_or("?")),
            ),
            row(
                "P4 worker with 2 jobs (MB)",
                format!("{:.0}", self.p4_worker_2jobs_peak_rss_mb),
                "—".into(),
                None,
                "batch run, 2 concurrent transcriptions",
            ),
            row(
                "P5 throughput vs Node",
                self.p5_throughput_ratio_vs_node
                    .map(|x| format!("{x:.2}"))
                    .unwrap_or("n/a".into()),
                "≥ 1.5".into(),
                self.p5_throughput_ratio_vs_node.map(|x| x >= 1.5),
                format!(
                    "rust {} ÷ node {} jobs/s{}",
                    rates(&d["p5_rust_jobs_per_s"]),
                    rates(&d["p5_node_jobs_per_s"]),
                    d["p5_note"]
                        .as_str()
                        .map(|n| format!(" ({n})"))
                        .unwrap_or_default()
                ),
            ),
            row(
                "P6 long talk speedup, 2 slots",
                format!("{:.2}", self.p6_long_speedup),
                "≥ 1.7".into(),
                Some(self.p6_long_speedup >= 1.7),
                format!(
                    "{} s talk in {} segments: 1×1 {} s ÷ 2×1 {} s (slots × threads); 1×2 {} s; the machine's ceiling {} (the engine, two halves side by side ÷ one after the other), P6 ÷ ceiling {}",
                    fig(&d["p6_long_audio_s"]),
                    d["p6_segments"],
                    lat("1x1"),
                    lat("2x1"),
                    lat("1x2"),
                    fig(&d["p6_machine_ceiling"]),
                    fig(&d["p6_ratio_to_ceiling"])
                ),
            ),
        ];
        rows.push(row(
            "load average (1 min)",
            format!(
                "{} → {}",
                fig(&d["load_avg_1m_start"]),
                fig(&d["load_avg_1m_end"])
            ),
            "".into(),
            None,
            format!(
                "{} cores; {} build; {}",
                d["cores"],
                d["build"].as_str().unwrap_or("?"),
                d["speech"].as_str().unwrap_or("")
            ),
        ));
        rows
    }

    /// The figures as a text table (figure, value, goal, ✔/✘, what it compares).
    pub fn table(&self) -> String {
        let mut rows = self.scheduling_rows();
        rows.extend(self.stage_rows());
        let w0 = rows.iter().map(|r| r.0.chars().count()).max().unwrap_or(0);
        let w1 = rows.iter().map(|r| r.1.chars().count()).max().unwrap_or(0);
        let w2 = rows.iter().map(|r| r.2.chars().count()).max().unwrap_or(0);
        let mut s = String::new();
        for (a, b, c, m, e) in rows {
            s.push_str(&format!("{a:<w0$}  {b:>w1$}  {c:<w2$}  {m}  {e}\n"));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Five equal shorts on two slots: 3 × their length for the last (1.2 × the floor of
    /// 2.5); the full bench's measured solo latencies give 2.42 (1.24 × its floor of 1.95);
    /// one slot runs them shortest first.
    #[test]
    fn whole_jobs_cannot_reach_the_floor() {
        assert!((best_whole_job_p1(&[7.0; 5], 2) - 3.0).abs() < 1e-9);
        let full = [7.2, 7.24, 7.0, 9.99, 7.25];
        let b = best_whole_job_p1(&full, 2);
        assert!((b - 2.42).abs() < 0.005, "{b}");
        // One slot: shortest first, the last finishes after all of them.
        let one = best_whole_job_p1(&[1.0, 2.0, 4.0], 1);
        assert!((one - 7.0 / 4.0).abs() < 1e-9, "{one}");
        assert!(best_whole_job_p1(&[], 2).is_nan());
    }

    /// Each goal's mark follows its value: P1 is judged against 1.15 × the floor measured in
    /// the same run, P6 against 1.7, and a figure that could not be measured (NaN) fails.
    #[test]
    fn the_table_marks_each_goal_met_or_missed() {
        let report = BenchReport {
            p1_short_latency_ratio_max: 2.0,
            p1_baseline_short_latency_ratio_max: 9.0,
            p2_makespan_ratio: 1.05,
            p3_transcribe_overhead_ratio: f64::NAN,
            p3_engine_ratio_vs_faster_whisper: None,
            p3_hop_ms_p50: 2.0,
            p3_hop_ms_p99: 80.0,
            p4_job_peak_rss_mb: 260.0,
            p4_worker_2jobs_peak_rss_mb: 400.0,
            p5_throughput_ratio_vs_node: None,
            p6_long_speedup: 1.8,
            detail: serde_json::json!({
                "p1_floor": 1.8,
                "p6_latency_s": {"1x1": 36.0, "2x1": 20.0, "1x2": 22.0},
                "p6_segments": 2,
            }),
        };
        let table = report.table();
        let line = |name: &str| {
            table
                .lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_else(|| panic!("no row {name} in\n{table}"))
                .to_string()
        };
        // 2.0 ÷ 1.8 = 1.11 ≤ 1.15.
        let p1 = line("P1 ÷ P1 floor");
        assert!(
            p1.contains("1.11") && p1.contains("≤ 1.15") && p1.contains('✔'),
            "{table}"
        );
        assert!(line("P1 short latency ratio").contains("≤ 2.07"), "{table}");
        assert!(line("P2 makespan").contains("✔"), "{table}");
        assert!(line("P3 transcribe").contains("✘"), "{table}");
        assert!(line("P3 hop").contains("✘"), "{table}");
        assert!(line("P4 job peak").contains("✔"), "{table}");
        assert!(
            !line("P5").contains('✔') && !line("P5").contains('✘'),
            "{table}"
        );
        let p6 = line("P6");
        assert!(p6.contains("1.80") && p6.contains("✔"), "{table}");
        assert!(
            p6.contains("1×1 36.00 s ÷ 2×1 20.00 s") && p6.contains("1×2 22.00 s"),
            "{table}"
        );
        // No faster-whisper anchor: n/a, neither mark; with one, judged against 1.0.
        let fw = line("P3 engine ratio");
        assert!(
            fw.contains("n/a") && !fw.contains('✘') && !fw.contains('✔'),
            "{table}"
        );
        let mut with_fw = report.clone();
        with_fw.p3_engine_ratio_vs_faster_whisper = Some(1.31);
        with_fw.detail["p3_faster_whisper_s"] = serde_json::json!({"int8": 3.1, "float32": 2.9});
        with_fw.detail["p3_faster_whisper_best_s"] = serde_json::json!(2.9);
        let engine_row = |r: &BenchReport| {
            let table = r.table();
            let row = table.lines().find(|l| l.starts_with("P3 engine ratio"));
            row.unwrap_or_default().to_string()
        };
        let fw = engine_row(&with_fw);
        assert!(fw.contains("1.31") && fw.contains('✘'), "{fw}");
        assert!(
            fw.contains("faster-whisper 2.90 s (int8 3.10 s, float32 2.90 s;"),
            "{fw}"
        );
        // The anchor made the guard's call too: its share and the ratio without it are shown.
        with_fw.detail["p3_faster_whisper_guard"] = serde_json::json!("base");
        with_fw.detail["p3_faster_whisper_guard_s"] = serde_json::json!(0.4);
        with_fw.detail["p3_engine_ratio_without_guard"] = serde_json::json!(1.5);
        let fw = engine_row(&with_fw);
        assert!(
            fw.contains("float32 2.90 s; with base identifying the language, 0.40 s of it; without that call 1.50;"),
            "{fw}"
        );
    }

    /// The direct whisper-rs run makes the stage's whisper calls: with the language guard's
    /// identifier attached (tiny.en + base, as installed by `scripts/setup.sh --test`) it
    /// identifies the language of the head first, without one it only transcribes.
    #[test]
    fn the_direct_run_makes_the_guards_call_too() {
        let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models");
        let load = |f: &str| asr::AsrModel::load(&models.join(f)).expect("scripts/setup.sh --test");
        let tiny = load("ggml-tiny.en.bin");
        let guarded = tiny.with_language_id(Arc::new(load("ggml-base.bin")));
        // The clip from where the bench itself looks for it.
        let data = tempfile::tempdir().unwrap();
        let Ok(Speech::Clips(dir)) = speech_source(None, &default_sample_dirs(data.path())) else {
            panic!("the shared sample clips are missing");
        };
        let jfk = dir.join("jfk.wav");
        let pcm = asr::read_wav_16k_mono(&jfk).unwrap();
        let id = direct_run(&guarded, &pcm, 2)
            .unwrap()
            .expect("base identified");
        assert_eq!((id.model.as_str(), id.language.as_str()), ("base", "en"));
        // jfk.wav is 11 s: the whole clip, under the 15 s head.
        assert_eq!(id.speech_ms, 11_000);
        assert_eq!(direct_run(&tiny, &pcm, 2).unwrap(), None);
    }

    #[test]
    fn percentiles() {
        let mut v = vec![5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(percentile(&mut v, 0.5), 3.0);
        assert_eq!(percentile(&mut v, 0.99), 5.0);
        assert!(percentile(&mut [], 0.5).is_nan());
    }

    #[test]
    fn speech_comes_from_a_named_place_or_fails_saying_where_it_looked() {
        let root = tempfile::tempdir().unwrap();
        let (given, first, second) = (
            root.path().join("given"),
            root.path().join("data/samples"),
            root.path().join("shared/samples"),
        );
        let fill = |dir: &Path| {
            std::fs::create_dir_all(dir).unwrap();
            for n in SAMPLE_NAMES {
                std::fs::write(dir.join(format!("{n}.wav")), b"").unwrap();
            }
        };
        let defaults = [first.clone(), second.clone()];
        // A given directory without the clips: the first missing one is named.
        std::fs::create_dir_all(&given).unwrap();
        let Err(BenchError::Setup(e)) = speech_source(Some(&given), &defaults) else {
            panic!("a directory without clips was accepted");
        };
        assert!(
            e.starts_with(&format!(
                "sample {} is missing",
                given.join("jfk.wav").display()
            )),
            "{e}"
        );
        fill(&given);
        assert_eq!(
            speech_source(Some(&given), &defaults).unwrap(),
            Speech::Clips(given)
        );
        assert_eq!(
            speech_source(Some(Path::new(SYNTHESIZE)), &defaults).unwrap(),
            Speech::Synthesized
        );
        // No default holds every clip: the error names each place and both ways out.
        fill(&first);
        std::fs::remove_file(first.join("jfk.wav")).unwrap();
        let Err(BenchError::Setup(e)) = speech_source(None, &defaults) else {
            panic!("no samples anywhere was accepted");
        };
        assert_eq!(
            e,
            format!("no speech samples in {} or {}: pass --samples DIR (a directory with jfk.wav, \
                librispeech-1272-128104-0000.wav, librispeech-1995-1837-0001.wav, ljspeech-LJ001-0001.wav, \
                ljspeech-LJ001-0007.wav) or --samples espeak-ng for synthesized speech",
                first.display(), second.display())
        );
        // The first default that holds them all.
        fill(&second);
        assert_eq!(
            speech_source(None, &defaults).unwrap(),
            Speech::Clips(second)
        );
        fill(&first);
        assert_eq!(
            speech_source(None, &defaults).unwrap(),
            Speech::Clips(first)
        );
        // The defaults are absolute whatever the working directory.
        assert!(default_sample_dirs(Path::new("/d"))
            .iter()
            .all(|d| d.is_absolute()));
    }

    #[test]
    fn talk_reaches_its_length() {
        let dir = tempfile::tempdir().unwrap();
        let clips = vec![
            Clip {
                pcm: vec![100; 16_000],
            },
            Clip {
                pcm: vec![-100; 8_000],
            },
        ];
        let p = dir.path().join("t.wav");
        let len = write_talk(&p, &clips, 1, 5.0).unwrap();
        assert!((5.0..7.5).contains(&len), "{len}");
        let r = hound::WavReader::open(&p).unwrap();
        assert_eq!(r.duration() as f64 / 16_000.0, len);
    }
}
