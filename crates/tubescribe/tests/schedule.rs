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

/// A transcribe worker with one slot running `processor` (a recording stand-in for whisper).
async fn one_slot(url: &str, processor: impl bullmq::worker::IntoProcessor) -> Worker {
    Worker::with_options(
        "transcribe",
        processor,
        WorkerOptions::new()
            .connection(connection(url))
            .prefix(PREFIX)
            .concurrency(1),
    )
    .await
    .unwrap()
}

/// A test app on its own Redis (no workers) and a scheduler on it with `aging_rate`; keep
/// the directory alive as long as the app.
async fn queue_app(
    aging_rate: f64,
) -> (
    tempfile::TempDir,
    TestApp,
    tubescribe::engine::schedule::Scheduler,
) {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = Env::new(&tmp.path().join("data")).config(|_| {});
    let app = TestApp::start(cfg).await;
    let sched = tubescribe::engine::schedule::Scheduler::connect(app.url(), aging_rate)
        .await
        .unwrap();
    (tmp, app, sched)
}

/// A transcribe-queue job `id` of task `task` with `audio_s` in its data and BullMQ
/// `priority`, as the scheduler leaves it.
fn transcribe_job(id: &str, task: &str, audio_s: f64, priority: u32) -> bullmq::FlowJob {
    bullmq::FlowJob::new(
        "transcribe",
        "transcribe",
        serde_json::json!({"task_id": task, "audio_s": audio_s}),
    )
    .unwrap()
    .options(bullmq::JobOptions::new().job_id(id).priority(priority))
}

/// Starts a one-slot transcribe worker that records the ids of the jobs it runs (and does
/// nothing else), waits until it has run `n` of them (30 s at most) and returns them in order.
async fn run_order(url: &str, n: usize) -> Vec<String> {
    let order: Arc<Mutex<Vec<String>>> = Arc::default();
    let o2 = order.clone();
    let processor = move |job: Job, _t: CancellationToken| {
        let order = o2.clone();
        async move {
            order.lock().unwrap().push(job.id().to_string());
            Ok(serde_json::json!({}))
        }
    };
    let tr = one_slot(url, processor).await;
    let t0 = Instant::now();
    while order.lock().unwrap().len() < n {
        assert!(t0.elapsed() < Duration::from_secs(30), "jobs did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = tr.close(5_000).await;
    let order = order.lock().unwrap().clone();
    order
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
    let tr = one_slot(app.url(), processor).await;
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

/// Issue 15: a segment job's priority is its *task's* remaining audio, not its own length. A
/// 10-minute task is split into 30 s segments (all ready at once, the fan-out); a 1-minute
/// task's transcribe job arrives after the first segment started on the only slot. It must
/// start next — before the long task's second segment (which, ranked by its own 30 s, would
/// have gone first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_task_goes_before_the_rest_of_a_long_tasks_segments() {
    use tubescribe::engine::schedule::priority;
    use tubescribe::engine::segments::segment_jobs;
    let (_tmp, app, sched) = queue_app(1.0).await;
    // The long task's flow (its transcribe job is the segments' parent), then its segments.
    app.producer.add_task("long").await.unwrap();
    let bounds: Vec<u64> = (0..=20).map(|i| i * 30_000).collect();
    for seg in segment_jobs("long", &bounds, tubescribe::domain::manifest::now_ms(), 1.0).unwrap() {
        sched.add_flow(seg).await.unwrap();
    }

    let order: Arc<Mutex<Vec<String>>> = Arc::default();
    let first_started = Arc::new(tokio::sync::Notify::new());
    let go_on = Arc::new(tokio::sync::Notify::new());
    let (o2, f2, g2) = (order.clone(), first_started.clone(), go_on.clone());
    let processor = move |job: Job, _t: CancellationToken| {
        let (order, first_started, go_on) = (o2.clone(), f2.clone(), g2.clone());
        async move {
            let n = {
                let mut o = order.lock().unwrap();
                o.push(job.id().to_string());
                o.len()
            };
            if n == 1 {
                // Hold the slot until the short task has arrived.
                first_started.notify_one();
                go_on.notified().await;
            }
            Ok(serde_json::json!({}))
        }
    };
    let tr = one_slot(app.url(), processor).await;
    tokio::time::timeout(Duration::from_secs(30), first_started.notified())
        .await
        .expect("the first segment started");
    // The short task's transcribe job, with the priority its download would give it.
    let short = transcribe_job("tr-short", "short", 60.0, priority(60.0, 0.0, 1.0));
    sched.add_flow(short).await.unwrap();
    go_on.notify_one();
    let t0 = Instant::now();
    while order.lock().unwrap().len() < 3 {
        assert!(t0.elapsed() < Duration::from_secs(30), "jobs did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = tr.close(5_000).await;
    let order = order.lock().unwrap().clone();
    assert!(order[0].starts_with("seg"), "{order:?}");
    assert_eq!(order[1], "tr-short", "{order:?}");
    assert!(order[2].starts_with("seg"), "{order:?}");
    sched.close().await;
    app.stop(Duration::from_secs(5)).await;
}

/// A task under way goes on before an equal task that waited as long: two 65 s tasks were
/// queued together 8 s ago; task a's transcribe job has just been split into two segment
/// jobs, task b's still waits (its priority aged to 57). On one slot, a's segments must run
/// before b's transcribe job. Ranked from their own creation (65), as before, they came after
/// it and every task of a batch of equal ones was split first and finished late.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_task_goes_on_before_an_equal_task_that_waited() {
    use tubescribe::engine::schedule::priority;
    use tubescribe::engine::segments::segment_jobs;
    let (_tmp, app, sched) = queue_app(1.0).await;
    let queued = tubescribe::domain::manifest::now_ms() - 8_000;
    let b = transcribe_job("tr-b", "b", 65.0, priority(65.0, 8.0, 1.0));
    sched.add_flow(b).await.unwrap();
    app.producer.add_task("a").await.unwrap();
    for seg in segment_jobs("a", &[0, 30_000, 65_000], queued, 1.0).unwrap() {
        sched.add_flow(seg).await.unwrap();
    }

    let order = run_order(app.url(), 3).await;
    assert_eq!(order[..3], ["seg0-a", "seg1-a", "tr-b"], "{order:?}");
    sched.close().await;
    app.stop(Duration::from_secs(5)).await;
}

/// A split task's merge step goes first: the parent "tr-p" (priority 50) waits for its only
/// segment (priority 10) while another task's transcribe job (priority 20) waits. With
/// `rank_merge_first` on the parent, the one slot runs the segment, then the released merge
/// step, then the other task; with the parent's own priority the merge came last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_tasks_merge_step_goes_first() {
    use tubescribe::engine::schedule::rank_merge_first;
    let (_tmp, app, sched) = queue_app(0.0).await;
    let job = |id: &str, priority: u32| transcribe_job(id, id, f64::from(priority), priority);
    sched
        .add_flow(job("tr-p", 50).add_child(job("seg0-p", 10)))
        .await
        .unwrap();
    sched.add_flow(job("tr-x", 20)).await.unwrap();
    let parent = sched
        .transcribe_queue()
        .get_job("tr-p")
        .await
        .unwrap()
        .expect("the parent job exists");
    rank_merge_first(&parent).await.unwrap();

    let order = run_order(app.url(), 3).await;
    assert_eq!(order[..3], ["seg0-p", "tr-p", "tr-x"], "{order:?}");
    sched.close().await;
    app.stop(Duration::from_secs(5)).await;
}
