//! The transcription memory budget, whisper threads per job, and per-job peak-RSS
//! measurement.
//!
//! # Slots and threads
//!
//! A worker process may run `slots = clamp(⌊(budget − weights) / per_job⌋, 1, concurrency)`
//! transcribe jobs at once, where `budget` is `schedule.memory_budget_mb` (default half the
//! machine's RAM), `weights` the model's size ([`weights_bytes`]; loaded once, shared by all jobs) and
//! `per_job` the larger of the model's measured per-job peak (kept in
//! `<data>/models/<model>.rss.json` by earlier jobs) and the a-priori estimate
//! [`estimate_per_job_bytes`] (asr.md §3: ~250 MB of whisper state and compute buffers
//! plus 96 KB per second of audio for the f32 PCM and the mel spectrogram, for the longest
//! audio a job gets: one segment). The BullMQ worker of the transcribe queue is started with
//! that concurrency, so the limit holds per process by construction. Threads per job are
//! `max(1, ⌊cores / slots⌋)` unless set explicitly, so Σ threads ≤ cores given to
//! transcription (whisper.cpp's pool spins: oversubscription costs 3–10×, asr.md §2.2).
//!
//! # Peak RSS per job — method and limits
//!
//! whisper.cpp runs in-process, so the kernel's per-process accounting cannot separate jobs.
//! [`RssProbe`](crate::observe::rss::RssProbe) samples the process's resident set (`/proc/self/statm`) every 20 ms while the
//! job runs and reports the high-water mark (`peak_rss`) and its excess over the RSS when the
//! job started (`delta`, the job's attributed share). Limits: (1) growth of a concurrent job
//! in the same window is attributed to both; (2) memory freed by an earlier job but kept by
//! malloc is reused without raising RSS, so a later job may under-report — we call
//! `malloc_trim(0)` after each job to hand freed memory back; (3) spikes shorter than 20 ms
//! can be missed. For an exact figure run one job per process, as `tubescribe bench` does
//! (P4). A job whose `delta` exceeds its share (`(budget − weights) / slots`, [`share_bytes`])
//! gets a memory alert. Stage work only measures ([`crate::pipeline::Measure`]); the engine
//! records the figures ([`fold_rss_detail`], [`record_model_stats`]) and raises the alert.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::observe::rss::RssReport;
use crate::store::DataDir;

/// Fixed per-job whisper.cpp memory besides the audio: state, KV caches and compute buffers
/// (tiny: ≈190 MB logged, measured +130–250 MB per extra job; asr.md §2.2–§3), in bytes.
pub const STATE_BYTES: u64 = 250 * 1024 * 1024;
/// Per-job memory per second of audio: f32 PCM (64 KB/s) + mel (32 KB/s) (asr.md §3).
pub const BYTES_PER_AUDIO_SECOND: u64 = 96 * 1024;

/// A-priori memory of one transcribe job over `audio_s` seconds of audio, in bytes.
pub fn estimate_per_job_bytes(audio_s: f64) -> u64 {
    STATE_BYTES + (audio_s.max(0.0) * BYTES_PER_AUDIO_SECOND as f64) as u64
}

/// How many transcribe jobs fit: `clamp(⌊(budget − weights) / per_job⌋, 1, concurrency)`.
pub fn slots(concurrency: usize, budget: u64, weights: u64, per_job: u64) -> usize {
    let avail = budget.saturating_sub(weights);
    let fit = (avail / per_job.max(1)) as usize;
    fit.clamp(1, concurrency.max(1))
}

/// The size of the model at `path` in bytes: a ggml file's length, or the sum of the files in
/// a CTranslate2 model directory (`model.bin` is nearly all of it); 0 when it cannot be read.
pub fn weights_bytes(path: &Path) -> u64 {
    let Ok(meta) = std::fs::metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// The resolved plan of a transcribe worker process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Concurrent transcribe jobs (the BullMQ worker's concurrency).
    pub slots: usize,
    /// whisper threads per job.
    pub threads: usize,
    /// Memory budget in bytes.
    pub budget_bytes: u64,
    /// Model weights in bytes (the model file's size).
    pub weights_bytes: u64,
    /// Per-job memory used for the plan, in bytes (measured or estimated, the larger).
    pub per_job_bytes: u64,
    /// Each job's share of the budget: `(budget − weights) / slots`, in bytes.
    pub share_bytes: u64,
}

/// Computes the plan for `cfg` with `concurrency` configured transcribe jobs and the measured
/// per-job peak `measured` (bytes), if any.
pub fn plan(cfg: &Config, concurrency: usize, measured: Option<u64>) -> Plan {
    let weights = weights_bytes(&cfg.model);
    let per_job = estimate_per_job_bytes(cfg.schedule.segment_s * 1.25).max(measured.unwrap_or(0));
    let budget = cfg.schedule.memory_budget_bytes;
    let slots = slots(concurrency, budget, weights, per_job);
    let threads = if cfg.threads_explicit {
        cfg.threads
    } else {
        crate::config::threads_per_job(cfg.schedule.cores, slots)
    };
    Plan {
        slots,
        threads,
        budget_bytes: budget,
        weights_bytes: weights,
        per_job_bytes: per_job,
        share_bytes: budget.saturating_sub(weights) / slots as u64,
    }
}

/// The plan for `cfg` with `concurrency` configured transcribe jobs, using the per-job peak
/// earlier jobs measured for the configured model (its stats file in `data`).
pub fn plan_measured(cfg: &Config, data: &DataDir, concurrency: usize) -> Plan {
    let measured =
        read_model_stats(&data.model_stats_file(&cfg.model)).map(|s| s.per_job_peak_bytes);
    plan(cfg, concurrency, measured)
}

/// A transcribe job's share of the memory budget: the plan's, else (no plan in this process)
/// the whole budget, in bytes.
pub fn share_bytes(plan: Option<Plan>, cfg: &Config) -> u64 {
    plan.map_or(cfg.schedule.memory_budget_bytes, |p| p.share_bytes)
}

/// Folds one job's memory report into the transcribe stage's manifest detail:
/// `peak_rss_mb` and `rss_delta_mb` (MB with one decimal; the largest of the task's jobs so
/// far) and `rss_overlapped` (this job's).
pub fn fold_rss_detail(detail: &mut serde_json::Map<String, serde_json::Value>, r: &RssReport) {
    let mut keep_max = |key: &str, bytes: u64| {
        let prev = detail.get(key).and_then(|v| v.as_f64()).unwrap_or(0.0);
        detail.insert(key.into(), serde_json::json!(prev.max(mb(bytes))));
    };
    keep_max("peak_rss_mb", r.peak_bytes);
    keep_max("rss_delta_mb", r.delta_bytes);
    detail.insert("rss_overlapped".into(), serde_json::json!(r.overlapped));
}

/// Bytes as MB (2^20) rounded to one decimal, as the manifest and alerts show them.
pub fn mb(bytes: u64) -> f64 {
    (bytes as f64 / 1048576.0 * 10.0).round() / 10.0
}

/// The measured per-job peak of one model, kept across processes in its stats file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelStats {
    /// Largest non-overlapped job delta seen, in bytes.
    pub per_job_peak_bytes: u64,
    /// Jobs measured.
    pub jobs: u64,
}

/// Reads a model's stats file (missing or unreadable = none yet).
pub fn read_model_stats(path: &Path) -> Option<ModelStats> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// Folds one job's report into the model's stats file (temp + rename). Overlapped reports
/// are skipped: they do not measure one job.
pub fn record_model_stats(path: &Path, r: &RssReport) {
    if r.overlapped {
        return;
    }
    let mut s = read_model_stats(path).unwrap_or_default();
    s.per_job_peak_bytes = s.per_job_peak_bytes.max(r.delta_bytes);
    s.jobs += 1;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    if std::fs::write(&tmp, serde_json::to_vec(&s).unwrap_or_default()).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1024 * 1024;

    #[test]
    fn slots_are_bounded_by_budget_and_concurrency() {
        // 2 GB budget, 78 MB model, 320 MB per job → 6 fit, concurrency 2 wins.
        assert_eq!(slots(2, 2048 * MB, 78 * MB, 320 * MB), 2);
        // A budget that fits one job.
        assert_eq!(slots(2, 500 * MB, 78 * MB, 320 * MB), 1);
        // Even a budget below one job runs one (and alerts).
        assert_eq!(slots(4, 100 * MB, 78 * MB, 320 * MB), 1);
        assert_eq!(slots(4, 1400 * MB, 78 * MB, 320 * MB), 4);
        assert_eq!(slots(8, 1400 * MB, 78 * MB, 320 * MB), 4);
    }

    #[test]
    fn weights_are_a_file_or_a_model_directory() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("ggml-x.bin");
        std::fs::write(&file, vec![0u8; 1000]).unwrap();
        assert_eq!(weights_bytes(&file), 1000);
        let dir = d.path().join("ct2-x");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("model.bin"), vec![0u8; 3000]).unwrap();
        std::fs::write(dir.join("config.json"), b"{}").unwrap();
        assert_eq!(weights_bytes(&dir), 3002);
        assert_eq!(weights_bytes(&d.path().join("missing")), 0);
    }

    #[test]
    fn estimate_follows_asr_notes() {
        assert_eq!(estimate_per_job_bytes(0.0), 250 * MB);
        // 10 min of audio adds ≈ 56 MB.
        let ten = estimate_per_job_bytes(600.0) - 250 * MB;
        assert!((55 * MB..58 * MB).contains(&ten), "{ten}");
    }

    #[test]
    fn manifest_detail_keeps_the_largest_figures_of_the_task() {
        let rep = |peak, delta, overlapped| RssReport {
            baseline_bytes: 0,
            peak_bytes: peak,
            delta_bytes: delta,
            overlapped,
        };
        let mut d = serde_json::Map::new();
        fold_rss_detail(&mut d, &rep(900 * MB, 300 * MB, true));
        fold_rss_detail(&mut d, &rep(800 * MB, 350 * MB, false));
        assert_eq!(d["peak_rss_mb"], serde_json::json!(900.0));
        assert_eq!(d["rss_delta_mb"], serde_json::json!(350.0));
        assert_eq!(d["rss_overlapped"], serde_json::json!(false));
        assert_eq!(mb(1_572_864), 1.5);
    }

    #[test]
    fn model_stats_keep_the_largest_clean_delta() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("m.rss.json");
        let rep = |d, o| RssReport {
            baseline_bytes: 0,
            peak_bytes: d,
            delta_bytes: d,
            overlapped: o,
        };
        record_model_stats(&f, &rep(300 * MB, false));
        record_model_stats(&f, &rep(200 * MB, false));
        record_model_stats(&f, &rep(900 * MB, true));
        let s = read_model_stats(&f).unwrap();
        assert_eq!(s.per_job_peak_bytes, 300 * MB);
        assert_eq!(s.jobs, 2);
    }
}
