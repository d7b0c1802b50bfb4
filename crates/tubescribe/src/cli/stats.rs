//! `tubescribe stats`: per-stage figures — queue counts from Redis and, from the task
//! manifests, runs, mean wall time, real-time factor and peak RSS (the same figures
//! `/metrics` exports).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;
use bullmq::types::JobCounts;

use crate::app::runtime::Runtime;
use crate::config::Config;
use crate::domain::manifest::StageState;
use crate::domain::Stage;
use crate::store::DataDir;

/// Figures from the manifests, per stage in [`Stage::ALL`] order.
#[derive(Default)]
struct Figures {
    runs: [usize; 3],
    skipped: [usize; 3],
    /// Sum of completed stages' wall time, seconds.
    wall: [f64; 3],
    /// Sum and count of transcribe real-time factors.
    rtf: (f64, usize),
    /// Largest transcribe peak RSS, MB.
    peak: f64,
    by_status: BTreeMap<&'static str, usize>,
}

/// Runs the command: reads the queue counts, then the manifests, and prints the table (or,
/// with `json`, the same figures as one JSON object, see [`to_json`]).
pub(super) async fn run(cfg: Config, json: bool) -> Result<i32> {
    let rt = Runtime::builder(cfg).start().await?;
    let producer = rt.producer().await?;
    let mut counts = Vec::new();
    for s in Stage::ALL {
        counts.push(producer.queue(s).get_job_counts().await?);
    }
    producer.close().await;
    let data = rt.data().clone();
    rt.shutdown(Duration::ZERO).await;
    let f = figures(&data)?;
    if json {
        println!("{}", to_json(&counts, &f));
    } else {
        print(&counts, &f);
    }
    Ok(0)
}

/// The figures as JSON: `{"stages": {"<stage>": {waiting, children, delayed, active,
/// completed, failed, skipped, runs, mean_s, [rtf, peak_rss_mb]}}, "tasks": {"<status>": n}}`;
/// `mean_s`, `rtf` and `peak_rss_mb` are null before the first run.
fn to_json(counts: &[JobCounts], f: &Figures) -> serde_json::Value {
    let mut stages = serde_json::Map::new();
    for (i, s) in Stage::ALL.iter().enumerate() {
        let c = &counts[i];
        let mut v = serde_json::json!({
            "waiting": c.waiting + c.prioritized + c.paused,
            "children": c.waiting_children,
            "delayed": c.delayed,
            "active": c.active,
            "completed": c.completed,
            "failed": c.failed,
            "skipped": f.skipped[i],
            "runs": f.runs[i],
            "mean_s": (f.runs[i] > 0).then(|| f.wall[i] / f.runs[i] as f64),
        });
        if *s == Stage::Transcribe {
            let measured = f.rtf.1 > 0;
            v["rtf"] = serde_json::json!(measured.then(|| f.rtf.0 / f.rtf.1 as f64));
            v["peak_rss_mb"] = serde_json::json!(measured.then_some(f.peak));
        }
        stages.insert(s.queue_name().to_string(), v);
    }
    serde_json::json!({ "stages": stages, "tasks": f.by_status })
}

fn figures(data: &DataDir) -> Result<Figures> {
    let mut f = Figures::default();
    for id in data.task_ids()? {
        let Ok(m) = data.task(&id).read_manifest() else {
            continue;
        };
        *f.by_status.entry(m.status.as_str()).or_default() += 1;
        for (i, s) in Stage::ALL.iter().enumerate() {
            if m.stage(*s).is_some_and(|r| r.state == StageState::Skipped) {
                f.skipped[i] += 1;
            }
            let Some(r) = m.stage(*s).filter(|r| r.state == StageState::Completed) else {
                continue;
            };
            if let (Some(a), Some(b)) = (r.started_at, r.finished_at) {
                f.runs[i] += 1;
                f.wall[i] += b.saturating_sub(a) as f64 / 1000.0;
            }
            if *s == Stage::Transcribe {
                if let Some(x) = r.detail.get("rtf").and_then(|v| v.as_f64()) {
                    f.rtf.0 += x;
                    f.rtf.1 += 1;
                }
                if let Some(x) = r.detail.get("peak_rss_mb").and_then(|v| v.as_f64()) {
                    f.peak = f.peak.max(x);
                }
            }
        }
    }
    Ok(f)
}

fn print(counts: &[JobCounts], f: &Figures) {
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
            Stage::Transcribe if f.rtf.1 > 0 => format!(
                "RTF {:.3}, peak RSS {:.0} MB",
                f.rtf.0 / f.rtf.1 as f64,
                f.peak
            ),
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
            f.skipped[i],
            f.runs[i],
            if f.runs[i] > 0 {
                f.wall[i] / f.runs[i] as f64
            } else {
                0.0
            },
            extra
        );
    }
    let tasks: Vec<String> = f
        .by_status
        .iter()
        .map(|(s, n)| format!("{n} {s}"))
        .collect();
    println!("tasks: {}", tasks.join(", "));
    println!(
        "* BullMQ's count of failed jobs: a stage whose earlier stage failed fails too (skipped counts those tasks from the manifests); children = waiting for an earlier stage"
    );
}
