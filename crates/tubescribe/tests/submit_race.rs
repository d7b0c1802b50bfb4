//! Concurrent duplicate submits (issue 13, finding 5): 20 callers submit the same local file at
//! the same moment (behind a barrier) through `app::tasks::submit`, against a real Redis (an
//! isolated `redis-server` of the round's own, from the test harness). Exactly one caller may be told
//! `existing: false`; the others join the task. The same holds when the task has failed and
//! all 20 submit it again (one restarts it), and for 20 concurrent `retry` calls of a failed
//! task (one succeeds, the others are refused). Each check runs for 5 rounds, each with a
//! fresh data directory and Redis. No worker runs, so the jobs stay in their queues.

use std::path::{Path, PathBuf};
use std::sync::Arc;

mod common;

use common::Redis;
use tokio::sync::Barrier;
use tubescribe::app::tasks;
use tubescribe::domain::input::InputPolicy;
use tubescribe::domain::manifest::TaskStatus;
use tubescribe::domain::{ModelName, ModelRef, Stage};
use tubescribe::engine::producer::Producer;
use tubescribe::store::DataDir;

const CALLERS: usize = 20;
const ROUNDS: usize = 5;

/// The shared jfk clip, or (where the samples are absent) a stand-in file: no worker runs, so
/// only the file's path and bytes (its task id) matter.
fn media(dir: &Path) -> PathBuf {
    let jfk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/samples/jfk.wav");
    if jfk.is_file() {
        return jfk;
    }
    let p = dir.join("clip.wav");
    std::fs::write(&p, b"stand-in media").unwrap();
    p
}

fn tiny_en() -> ModelRef {
    ModelRef {
        name: "tiny.en".into(),
        sha256: ModelName::TinyEn.sha256().into(),
        path: "ggml-tiny.en.bin".into(),
    }
}

/// Runs `op` in [`CALLERS`] tokio tasks released together by a barrier; their results.
async fn race<T, F, Fut>(op: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = T> + Send,
{
    let barrier = Arc::new(Barrier::new(CALLERS));
    let op = Arc::new(op);
    let handles: Vec<_> = (0..CALLERS)
        .map(|_| {
            let (barrier, op) = (barrier.clone(), op.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                op().await
            })
        })
        .collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

/// One round in a fresh data directory: the number of callers told `existing: false` by the
/// first submits, by the resubmits of the failed task, and the number of successful retries.
async fn round() -> [usize; 3] {
    let tmp = tempfile::tempdir().unwrap();
    let data = DataDir::open(&tmp.path().join("data")).unwrap();
    let redis = Redis::start(&tmp.path().join("redis"));
    let producer = Arc::new(Producer::connect(&redis.url()).await.unwrap());
    let input = media(tmp.path()).to_string_lossy().into_owned();
    let submit_all = || {
        let (data, producer, input) = (data.clone(), producer.clone(), input.clone());
        race(move || {
            let (data, producer, input) = (data.clone(), producer.clone(), input.clone());
            async move {
                let policy = InputPolicy::default();
                tasks::submit(&data, &producer, &policy, &input, false, &tiny_en())
                    .await
                    .unwrap()
            }
        })
    };
    let fresh = |answers: &[tasks::Submitted]| answers.iter().filter(|s| !s.existing).count();

    let first = submit_all().await;
    let id = first[0].task_id.clone();
    assert!(first.iter().all(|s| s.task_id == id), "one task id");
    let task = data.task(&id);
    let fail = || {
        task.update_manifest(|m| m.status = TaskStatus::Failed)
            .unwrap();
    };
    fail();
    let again = submit_all().await;
    assert_eq!(task.read_manifest().unwrap().status, TaskStatus::Queued);

    fail();
    let retries = {
        let (data, producer, id) = (data.clone(), producer.clone(), id.clone());
        race(move || {
            let (data, producer, id) = (data.clone(), producer.clone(), id.clone());
            async move { tasks::retry(&data, &producer, &id).await }
        })
        .await
    };
    for r in retries.iter().filter_map(|r| r.as_ref().err()) {
        assert!(
            matches!(r, tasks::TaskOpError::Conflict(m) if m.contains("is queued")),
            "{r}"
        );
    }
    assert_eq!(task.read_manifest().unwrap().status, TaskStatus::Queued);
    // The flow is there once: one download job, waiting.
    let counts = producer
        .queue(Stage::Download)
        .get_job_counts()
        .await
        .unwrap();
    assert_eq!(
        (
            counts.waiting + counts.prioritized,
            counts.active,
            counts.failed
        ),
        (1, 0, 0),
        "{counts:?}"
    );
    producer.close().await;
    drop(redis);
    [
        fresh(&first),
        fresh(&again),
        retries.iter().filter(|r| r.is_ok()).count(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_one_caller_creates_or_restarts_the_task() {
    let mut rounds = Vec::new();
    for r in 1..=ROUNDS {
        let [first, again, retried] = round().await;
        eprintln!(
            "round {r}: existing=false for {first} of {CALLERS} submits, {again} of {CALLERS} \
             resubmits of the failed task; {retried} of {CALLERS} retries succeeded"
        );
        rounds.push([first, again, retried]);
    }
    let bad = rounds.iter().filter(|c| **c != [1, 1, 1]).count();
    assert_eq!(bad, 0, "{bad} of {ROUNDS} rounds wrong: {rounds:?}");
}

/// Issue 13, findings 2 and 3: a submit while Redis is down used to leave
/// `tasks/<id>/manifest.json` `queued` with no job, forever, and the first request after Redis
/// came back failed with "broken pipe" on the stale pooled connection. Now the submit fails
/// and leaves no task; once Redis is back the same submit, on the same producer, creates the
/// task with its flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submit_that_cannot_enqueue_leaves_no_task_and_the_next_one_heals() {
    let tmp = tempfile::tempdir().unwrap();
    let data = DataDir::open(&tmp.path().join("data")).unwrap();
    let mut redis = Redis::start(&tmp.path().join("redis"));
    let producer = Producer::connect(&redis.url()).await.unwrap();
    let input = media(tmp.path()).to_string_lossy().into_owned();
    let policy = InputPolicy::default();
    redis.stop();
    let answer = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        tasks::submit(&data, &producer, &policy, &input, false, &tiny_en()),
    )
    .await
    .expect("the submit answers while Redis is down");
    let Err(err) = answer else {
        panic!("the submit succeeded while Redis is down");
    };
    eprintln!("submit with Redis down: {err}");
    let tasks_dir = tmp.path().join("data").join("tasks");
    let left: Vec<_> = std::fs::read_dir(&tasks_dir)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "a task was left behind: {left:?}");

    redis.restart();
    let ok = tasks::submit(&data, &producer, &policy, &input, false, &tiny_en())
        .await
        .unwrap();
    assert!(!ok.existing);
    let counts = producer.job_counts(Stage::Download).await.unwrap();
    assert_eq!(counts.waiting + counts.prioritized, 1, "{counts:?}");
}
