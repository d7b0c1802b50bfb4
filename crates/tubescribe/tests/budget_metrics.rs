//! The memory budget and the metrics, in one run of real tasks in this process: three short
//! real-speech files through download → transcribe → summarize with transcribe concurrency
//! 2 but a memory budget that fits one job. No two transcriptions may overlap, the plan must
//! say one slot, each job's peak RSS lands in its manifest, and `metrics::render()` must
//! parse as Prometheus text with counters equal to the tasks run.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use tubescribe::domain::Stage;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_of_one_job_serializes_transcription_and_metrics_count_tasks() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    let mut cfg = Env::new(&data_dir).config(|o| {
        o.download_concurrency = Some(3);
        o.transcribe_concurrency = Some(2);
        o.summarize_concurrency = Some(1);
    });
    let weights = std::fs::metadata(&cfg.model).unwrap().len();
    let per_job =
        tubescribe::pipeline::budget::estimate_per_job_bytes(cfg.schedule.segment_s * 1.25);
    cfg.schedule.memory_budget_bytes = weights + per_job * 3 / 2;

    let mut app = TestApp::start(cfg.clone()).await;
    let mut ids = Vec::new();
    for (name, fallback) in &ENGLISH_CLIPS[..3] {
        let (wav, _) = speech(tmp.path(), name, fallback);
        ids.push(app.submit(&wav).await);
    }
    app.start_workers(&Stage::ALL).await;
    let plan = app.plan().expect("transcribe plan installed");
    assert_eq!(plan.slots, 1, "{plan:?}");
    assert_eq!(
        plan.threads, cfg.schedule.cores,
        "one slot gets every core: {plan:?}"
    );

    let t0 = Instant::now();
    let manifests = loop {
        let ms: Vec<serde_json::Value> = ids.iter().map(|id| manifest(&data_dir, id)).collect();
        if ms
            .iter()
            .all(|m| m["status"] == "completed" || m["status"] == "failed")
        {
            break ms;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "tasks did not finish"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // A task's record says completed a moment before its last job's run is counted and
    // BullMQ moves that job to `completed`: wait (at most 10 s) until the summarize queue,
    // the last stage, shows every job completed, then read the counters.
    let t1 = Instant::now();
    let text = loop {
        app.producer.publish_queue_counts().await.unwrap();
        let text = tubescribe::observe::metrics::render();
        let summarized = sample(
            &text,
            "tubescribe_queue_jobs",
            &[("queue", "summarize"), ("state", "completed")],
        );
        if summarized >= Some(ids.len() as f64) || t1.elapsed() > Duration::from_secs(10) {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    app.stop(Duration::from_secs(10)).await;

    for m in &manifests {
        let t = |st: &str, k: &str| {
            m["stages"][st][k].as_u64().unwrap_or(0) as i64 - m["created_at"].as_i64().unwrap()
        };
        eprintln!(
            "{}: download {}..{} transcribe {}..{} summarize {}..{} ms",
            m["task_id"],
            t("download", "started_at"),
            t("download", "finished_at"),
            t("transcribe", "started_at"),
            t("transcribe", "finished_at"),
            t("summarize", "started_at"),
            t("summarize", "finished_at")
        );
        assert_eq!(m["status"], "completed", "{m:#}");
        let d = &m["stages"]["transcribe"]["detail"];
        let peak = d["peak_rss_mb"].as_f64().expect("peak RSS in the manifest");
        assert!((50.0..4000.0).contains(&peak), "peak {peak} MB");
        assert!(d["rss_delta_mb"].as_f64().is_some(), "{d:#}");
    }
    assert_eq!(max_overlap(&manifests, "transcribe"), 1);

    let scrape = parse(&text);
    let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
        sample(&text, name, labels)
            .unwrap_or_else(|| panic!("{name} {labels:?} missing in:\n{text}"))
    };
    assert_eq!(
        value("tubescribe_tasks_total", &[("status", "completed")]),
        3.0
    );
    for st in ["download", "transcribe", "summarize"] {
        assert_eq!(
            value(
                "tubescribe_stage_runs_total",
                &[("stage", st), ("outcome", "completed")]
            ),
            3.0,
            "{st}"
        );
        assert_eq!(
            value(
                "tubescribe_queue_jobs",
                &[("queue", st), ("state", "completed")]
            ),
            3.0,
            "{st}"
        );
    }
    assert_eq!(value("tubescribe_transcribe_slots", &[]), 1.0);
    assert!(value("tubescribe_job_peak_rss_bytes", &[]) > 50.0 * 1048576.0);
    assert!(scrape
        .samples
        .iter()
        .any(|s| s.metric == "tubescribe_stage_duration_seconds_count"
            || s.metric == "tubescribe_stage_duration_seconds"));
}

/// `text` parsed as Prometheus text (panics when it is not).
fn parse(text: &str) -> prometheus_parse::Scrape {
    let lines: Vec<std::io::Result<String>> = text.lines().map(|l| Ok(l.to_string())).collect();
    prometheus_parse::Scrape::parse(lines.into_iter()).expect("Prometheus text")
}

/// The value of the first sample of metric `name` carrying all of `labels` in the Prometheus
/// `text`; `None` when there is none.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want: HashMap<&str, &str> = labels.iter().copied().collect();
    let scrape = parse(text);
    let s = scrape.samples.iter().find(|s| {
        s.metric == name
            && want
                .iter()
                .all(|(k, v)| s.labels.get(k).map(|x| x == *v).unwrap_or(false))
    })?;
    match s.value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => Some(v),
        ref other => panic!("{name}: unexpected {other:?}"),
    }
}
