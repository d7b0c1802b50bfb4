//! Performance metrics in Prometheus text format (the `prometheus` crate's registry and
//! text encoder, exposition format 0.0.4), plus health helpers for the HTTP server.
//!
//! The server mounts `GET /metrics` as `Producer::publish_queue_counts` then [`render`],
//! `GET /healthz` as [`healthz`] and answers `GET /readyz` itself (Redis answers). Per-process figures (stage
//! runs and durations, RTF, peak RSS, alerts, the memory plan) come from the workers of the
//! process that renders them; queue counts come from Redis and are the same everywhere.
//!
//! Metric families (all prefixed `tubescribe_`):
//!
//! | name | type | labels | meaning |
//! |---|---|---|---|
//! | `queue_jobs` | gauge | `queue`, `state` | BullMQ jobs per state (waiting = wait + prioritized + paused) |
//! | `stage_runs_total` | counter | `stage`, `outcome` | job runs finished: `completed`, `retry`, `failed` |
//! | `stage_duration_seconds` | histogram | `stage` | wall time of one job run |
//! | `tasks_total` | counter | `status` | tasks finished in this process: `completed`, `completed_with_warnings`, `failed` |
//! | `transcribe_rtf` | histogram | — | recognition wall ÷ audio seconds, per job or segment |
//! | `job_peak_rss_bytes` | gauge | — | peak process RSS during the latest transcribe job |
//! | `job_rss_delta_bytes` | histogram | — | per-job attributed memory (see `budget.rs`) |
//! | `alerts_total` | counter | `kind` | alerts raised (`memory`) |
//! | `transcribe_slots`, `transcribe_threads`, `memory_budget_bytes` | gauge | — | the plan |
//! | `pruned_files_total` | counter | `kind` | files the retention policy deleted: `media`, `audio`, `task` (every file of a task deleted whole) |
//! | `pruned_bytes_total` | counter | `kind` | their bytes |
//! | `tasks_deleted_total` | counter | `reason` | tasks deleted: `user` (delete), `retention` (`task_days`) |

use std::sync::OnceLock;

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

use crate::domain::Stage;
use crate::observe::rss::RssReport;

struct Metrics {
    registry: Registry,
    queue_jobs: IntGaugeVec,
    stage_runs: IntCounterVec,
    stage_seconds: HistogramVec,
    tasks: IntCounterVec,
    rtf: Histogram,
    job_peak_rss: Gauge,
    job_rss_delta: Histogram,
    alerts: IntCounterVec,
    slots: IntGauge,
    threads: IntGauge,
    budget: Gauge,
    pruned_files: IntCounterVec,
    pruned_bytes: IntCounterVec,
    deleted: IntCounterVec,
}

fn m() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(|| {
        let registry = Registry::new_custom(Some("tubescribe".into()), None).expect("registry");
        let mb = 1024.0 * 1024.0;
        let queue_jobs = IntGaugeVec::new(
            Opts::new("queue_jobs", "BullMQ jobs per queue and state"),
            &["queue", "state"],
        )
        .expect("metric");
        let stage_runs = IntCounterVec::new(
            Opts::new("stage_runs_total", "Stage job runs finished, by outcome"),
            &["stage", "outcome"],
        )
        .expect("metric");
        let stage_seconds = HistogramVec::new(
            HistogramOpts::new("stage_duration_seconds", "Wall time of one stage job run").buckets(
                vec![
                    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
                    1800.0,
                ],
            ),
            &["stage"],
        )
        .expect("metric");
        let tasks = IntCounterVec::new(
            Opts::new("tasks_total", "Tasks finished by this process's workers"),
            &["status"],
        )
        .expect("metric");
        let rtf = Histogram::with_opts(
            HistogramOpts::new(
                "transcribe_rtf",
                "Real-time factor of recognition: whisper wall seconds / audio seconds",
            )
            .buckets(vec![0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0]),
        )
        .expect("metric");
        let job_peak_rss = Gauge::new(
            "job_peak_rss_bytes",
            "Peak process RSS during the latest transcribe job, bytes",
        )
        .expect("metric");
        let job_rss_delta = Histogram::with_opts(
            HistogramOpts::new(
                "job_rss_delta_bytes",
                "Memory attributed to one transcribe job (peak RSS minus RSS at its start), bytes",
            )
            .buckets(
                [
                    25.0, 50.0, 100.0, 200.0, 300.0, 400.0, 500.0, 750.0, 1000.0, 2000.0,
                ]
                .iter()
                .map(|x| x * mb)
                .collect(),
            ),
        )
        .expect("metric");
        let alerts = IntCounterVec::new(Opts::new("alerts_total", "Alerts raised"), &["kind"])
            .expect("metric");
        let slots = IntGauge::new("transcribe_slots", "Concurrent transcribe jobs allowed")
            .expect("metric");
        let threads =
            IntGauge::new("transcribe_threads", "whisper threads per job").expect("metric");
        let budget = Gauge::new("memory_budget_bytes", "Transcription memory budget, bytes")
            .expect("metric");
        let pruned_files = IntCounterVec::new(
            Opts::new(
                "pruned_files_total",
                "Files deleted by the retention policy, by kind",
            ),
            &["kind"],
        )
        .expect("metric");
        let pruned_bytes = IntCounterVec::new(
            Opts::new(
                "pruned_bytes_total",
                "Bytes deleted by the retention policy, by kind",
            ),
            &["kind"],
        )
        .expect("metric");
        let deleted = IntCounterVec::new(
            Opts::new("tasks_deleted_total", "Tasks deleted, by reason"),
            &["reason"],
        )
        .expect("metric");
        for c in [
            Box::new(queue_jobs.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(stage_runs.clone()),
            Box::new(stage_seconds.clone()),
            Box::new(tasks.clone()),
            Box::new(rtf.clone()),
            Box::new(job_peak_rss.clone()),
            Box::new(job_rss_delta.clone()),
            Box::new(alerts.clone()),
            Box::new(slots.clone()),
            Box::new(threads.clone()),
            Box::new(budget.clone()),
            Box::new(pruned_files.clone()),
            Box::new(pruned_bytes.clone()),
            Box::new(deleted.clone()),
        ] {
            registry.register(c).expect("unique metric names");
        }
        Metrics {
            registry,
            queue_jobs,
            stage_runs,
            stage_seconds,
            tasks,
            rtf,
            job_peak_rss,
            job_rss_delta,
            alerts,
            slots,
            threads,
            budget,
            pruned_files,
            pruned_bytes,
            deleted,
        }
    })
}

/// How a stage job run ended, for [`observe_stage`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Completed.
    Completed,
    /// Completed, and the task (when this was its last stage) has warnings: the stage run
    /// counts as `completed`, the task as `completed_with_warnings`.
    CompletedWithWarnings,
    /// Failed; BullMQ will retry.
    Retry,
    /// Failed for good.
    Failed,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Completed | Outcome::CompletedWithWarnings => "completed",
            Outcome::Retry => "retry",
            Outcome::Failed => "failed",
        }
    }
}

/// Records one finished job run of `stage` that took `seconds`. A completed last stage
/// counts a completed task (`completed` or `completed_with_warnings`); a final failure of any
/// stage counts a failed task.
pub fn observe_stage(stage: Stage, seconds: f64, outcome: Outcome) {
    let m = m();
    let s = stage.queue_name();
    m.stage_runs.with_label_values(&[s, outcome.label()]).inc();
    m.stage_seconds.with_label_values(&[s]).observe(seconds);
    match outcome {
        Outcome::Completed if stage == Stage::LAST => {
            m.tasks.with_label_values(&["completed"]).inc()
        }
        Outcome::CompletedWithWarnings if stage == Stage::LAST => m
            .tasks
            .with_label_values(&["completed_with_warnings"])
            .inc(),
        Outcome::Failed => m.tasks.with_label_values(&["failed"]).inc(),
        _ => {}
    }
}

/// Records one transcription (whole job or segment): its RTF and memory report.
pub fn observe_transcription(rtf: f64, rss: &RssReport) {
    let m = m();
    if rtf.is_finite() && rtf > 0.0 {
        m.rtf.observe(rtf);
    }
    m.job_peak_rss.set(rss.peak_bytes as f64);
    m.job_rss_delta.observe(rss.delta_bytes as f64);
}

/// Counts an alert of `kind` (e.g. `memory`).
pub fn count_alert(kind: &str) {
    m().alerts.with_label_values(&[kind]).inc();
}

/// Counts `files` files of `bytes` bytes deleted by the retention policy, of `kind` (`media`,
/// `audio`, or `task` for a task deleted whole).
pub fn count_pruned(kind: &str, files: u64, bytes: u64) {
    let m = m();
    m.pruned_files.with_label_values(&[kind]).inc_by(files);
    m.pruned_bytes.with_label_values(&[kind]).inc_by(bytes);
}

/// Counts a deleted task, for `reason` (`user` or `retention`).
pub fn count_deleted(reason: &str) {
    m().deleted.with_label_values(&[reason]).inc();
}

/// Publishes the memory plan: concurrent transcribe `slots`, whisper `threads` per job and
/// the memory `budget_bytes`.
pub fn set_plan(slots: usize, threads: usize, budget_bytes: u64) {
    let m = m();
    m.slots.set(slots as i64);
    m.threads.set(threads as i64);
    m.budget.set(budget_bytes as f64);
}

/// Publishes one queue's job counts as `tubescribe_queue_jobs{queue, state}`; `counts` are
/// `(state, jobs)` pairs (`waiting`, `waiting_children`, `active`, `delayed`, `completed`,
/// `failed`).
pub fn set_queue_jobs(queue: &str, counts: &[(&str, u64)]) {
    for (state, n) in counts {
        m().queue_jobs
            .with_label_values(&[queue, state])
            .set(*n as i64);
    }
}

/// All metrics in Prometheus text exposition format (`text/plain; version=0.0.4`).
pub fn render() -> String {
    let mut buf = Vec::new();
    TextEncoder::new()
        .encode(&m().registry.gather(), &mut buf)
        .expect("text encoding cannot fail on gathered families");
    String::from_utf8(buf).expect("prometheus text is UTF-8")
}

/// The content type of [`render`]'s output, for the HTTP response.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Liveness (`/healthz`): the process is up and able to answer. Always `Ok`.
pub fn healthz() -> Result<(), String> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_is_parsable_text() {
        observe_stage(Stage::Download, 0.4, Outcome::Completed);
        count_alert("memory");
        let t = render();
        let samples = crate::observe::metrics::tests::parse(&t);
        assert!(samples
            .iter()
            .any(|(n, l, v)| n == "tubescribe_stage_runs_total"
                && l.contains("stage=\"download\"")
                && *v >= 1.0));
        assert!(samples
            .iter()
            .any(|(n, _, v)| n == "tubescribe_alerts_total" && *v >= 1.0));
    }

    /// A strict parser of the text format's sample lines: `name{labels} value`; panics on
    /// anything else that is not a `# HELP` / `# TYPE` comment.
    pub(crate) fn parse(text: &str) -> Vec<(String, String, f64)> {
        let mut out = Vec::new();
        for line in text.lines() {
            if line.is_empty() || line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
                continue;
            }
            let (head, value) = line.rsplit_once(' ').expect("sample line");
            let (name, labels) = match head.split_once('{') {
                Some((n, l)) => (n, l.strip_suffix('}').expect("closing brace")),
                None => (head, ""),
            };
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
                "bad metric name in {line:?}"
            );
            let v: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v.parse().expect("numeric sample value"),
            };
            out.push((name.to_string(), labels.to_string(), v));
        }
        out
    }
}
