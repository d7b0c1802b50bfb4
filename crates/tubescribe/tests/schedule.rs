//! Shortest-job-first through the real queue: four local files of 40, 10, 5 and 1 minutes of
//! (silent) audio are submitted together; tubescribe's own download workers fetch them, learn
//! each duration from ffprobe and set the transcribe job's priority while the download job is
//! still active. Only then does a transcribe worker with one slot start (a recording stand-in:
//! running whisper on 56 minutes of audio would not fit in CI). It must see 1, 5, 10, 40.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bullmq::worker::CancellationToken;
use bullmq::{Job, Worker, WorkerOptions};
use common::{Env, TestApp};
use tubescribe::domain::keys::PREFIX;
use tubescribe::domain::Stage;
use tubescribe::engine::redis::connection;

/// `minutes` of silence as a small Opus file.
fn silence(path: &std::path::Path, minutes: u32) {
    let st = std::process::Command::new("ffmpeg")
        .args(["-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i"])
        .arg("anullsrc=r=8000:cl=mono")
        .args([
            "-t",
            &(minutes * 60).to_string(),
            "-c:a",
            "libopus",
            "-b:a",
            "6k",
        ])
        .arg(path)
        .status()
        .expect("ffmpeg is required (scripts/setup.sh --test)");
    assert!(st.success(), "ffmpeg failed for {}", path.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_slot_transcribes_shortest_first() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = Env::new(&tmp.path().join("data")).config(|o| o.download_concurrency = Some(2));
    cfg.schedule.aging_rate = 1.0; // the default, whatever the environment says
    let mut app = TestApp::start(cfg).await;

    // Submitted in the worst order: longest first.
    let minutes = [40u32, 10, 5, 1];
    let mut task_minutes = Vec::new();
    for m in minutes {
        let f = tmp.path().join(format!("talk-{m}min.opus"));
        silence(&f, m);
        task_minutes.push((app.submit(&f).await, m));
    }

    // Real download workers (the stage and its priority hook).
    app.start_workers(&[Stage::Download]).await;
    let t0 = Instant::now();
    loop {
        let c = app
            .producer
            .queue(Stage::Download)
            .get_job_counts()
            .await
            .unwrap();
        assert_eq!(c.failed, 0, "a download failed");
        if c.completed == 4 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "downloads stuck: {c:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let tc = app
        .producer
        .queue(Stage::Transcribe)
        .get_job_counts()
        .await
        .unwrap();
    assert_eq!(
        tc.prioritized, 4,
        "released into the prioritized set: {tc:?}"
    );

    // One transcribe slot records the order in which jobs start.
    let order: Arc<Mutex<Vec<String>>> = Arc::default();
    let o2 = order.clone();
    let processor = move |job: Job, _t: CancellationToken| {
        let order = o2.clone();
        async move {
            order
                .lock()
                .unwrap()
                .push(job.data()["task_id"].as_str().unwrap().to_string());
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok(serde_json::json!({}))
        }
    };
    let tr = Worker::with_options(
        "transcribe",
        processor,
        WorkerOptions::new()
            .connection(connection(app.url()))
            .prefix(PREFIX)
            .concurrency(1),
    )
    .await
    .unwrap();
    let t0 = Instant::now();
    while order.lock().unwrap().len() < 4 {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "transcribe jobs did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = tr.close(5_000).await;
    app.stop(Duration::from_secs(5)).await;

    let started: Vec<u32> = order
        .lock()
        .unwrap()
        .iter()
        .map(|t| task_minutes.iter().find(|(id, _)| id == t).unwrap().1)
        .collect();
    assert_eq!(started, vec![1, 5, 10, 40]);
}
