//! Delete and retention on the local data directory, through the real binary: a server with
//! workers, the client `delete`, `prune` (dry and real) and a worker's periodic pass; the
//! downloaded media offered by the API while it exists. Media is served over loopback; the
//! server has a private data dir and embedded Redis.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// Starts `tubescribe serve` with workers (whisper on 2 threads) and `vars`, allowing direct
/// URLs on `media`; returns it and its base URL.
fn serve(data: &Path, media: &str, vars: &[(&str, &str)]) -> (Proc, String) {
    let mut p = Env::new(data)
        .var("TUBESCRIBE_THREADS", "2")
        .vars(vars)
        .bin(&["serve", "--listen", "127.0.0.1:0", "--allow-host", media])
        .start();
    let base = p.wait_base_url();
    (p, base)
}

/// Loopback media: `/quiet.m4a` (4 s of silence, AAC: the stages run for real, and whisper
/// has nothing to decode) and `/slow.wav`, which sends its headers and 64 KiB, then nothing
/// (a download that stays active).
fn media_server(tmp: &Path) -> (String, Vec<u8>) {
    let m4a = tmp.join("quiet.m4a");
    let st = std::process::Command::new("ffmpeg")
        .args(["-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i"])
        .args(["anullsrc=r=16000:cl=mono", "-t", "4", "-c:a", "aac"])
        .arg(&m4a)
        .status()
        .expect("ffmpeg is required (scripts/setup.sh --test)");
    assert!(st.success());
    let bytes = std::fs::read(&m4a).unwrap();
    let served = bytes.clone();
    let router = axum::Router::new()
        .route(
            "/quiet.m4a",
            axum::routing::get(move || {
                let b = served.clone();
                async move { ([("content-type", "audio/mp4")], b) }
            }),
        )
        .route(
            "/slow.wav",
            axum::routing::get(|| async {
                let first = futures::stream::once(async {
                    Ok::<_, std::io::Error>(axum::body::Bytes::from(vec![0u8; 64 << 10]))
                });
                let body = futures::StreamExt::chain(first, futures::stream::pending());
                (
                    [
                        ("content-type", "audio/wav"),
                        ("content-length", "50000000"),
                    ],
                    axum::body::Body::from_stream(body),
                )
            }),
        );
    (serve_router(router).to_string(), bytes)
}

/// `method url` (with the JSON `body` when given): the status and the JSON answer (null when
/// it is not JSON).
async fn send(method: reqwest::Method, url: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = reqwest::Client::new().request(method, url);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

async fn request(method: reqwest::Method, url: &str) -> (u16, Value) {
    send(method, url, None).await
}

async fn submit(base: &str, link: &str) -> String {
    let body = json!({"link": link, "fresh": true});
    let (s, v) = send(
        reqwest::Method::POST,
        &format!("{base}/api/tasks"),
        Some(body),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    v["taskId"].as_str().unwrap().to_string()
}

/// Polls the task's manifest through the API until `done` holds for it (≤ `limit`).
async fn wait_for(base: &str, id: &str, limit: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let t0 = Instant::now();
    loop {
        let (s, m) = request(reqwest::Method::GET, &format!("{base}/api/tasks/{id}")).await;
        assert_eq!(s, 200, "{m}");
        if done(&m) {
            return m;
        }
        assert!(
            t0.elapsed() < limit,
            "task {id}: not there within {limit:?}: {m:#}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The names of the files in the task's directory, sorted (none when it is gone).
fn files(data: &Path, id: &str) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(data.join("tasks").join(id)) else {
        return Vec::new();
    };
    let mut v: Vec<String> = rd
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// `name{labels}` samples of the server's `/metrics` whose labels contain `label`, summed.
async fn metric(base: &str, name: &str, label: &str) -> f64 {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Every BullMQ job the server's Redis holds, all queues and states (from `/metrics`).
async fn queued_jobs(base: &str) -> f64 {
    metric(base, "tubescribe_queue_jobs", "queue=").await
}

/// What a task keeps when its media and WAV are pruned: record, summary and transcripts
/// (sorted).
fn kept() -> Vec<String> {
    let mut v: Vec<String> = [
        "manifest.json",
        "manifest.lock",
        "summary.json",
        "summary.md",
    ]
    .map(String::from)
    .to_vec();
    v.extend(["json", "srt", "txt", "vtt"].map(|e| format!("transcript.{e}")));
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_prune_and_the_media_download() {
    let t_start = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let (host, m4a) = media_server(tmp.path());
    let data = tmp.path().join("data");
    let (srv, base) = serve(&data, &host, &[]);
    let events = tokio::spawn(all_events(format!("{base}/api/events/stream"), None));
    let id = submit(&base, &format!("http://{host}/quiet.m4a")).await;

    // --- a running task: refused without force, cancelled and deleted with it ------------
    let slow = submit(&base, &format!("http://{host}/slow.wav")).await;
    wait_for(&base, &slow, Duration::from_secs(60), |m| {
        m["stages"]["download"]["state"] == "active"
    })
    .await;
    let url = format!("{base}/api/tasks/{slow}");
    let (s, e) = request(reqwest::Method::DELETE, &url).await;
    assert_eq!(s, 409, "{e}");
    assert_eq!(
        e["detail"],
        format!("task {slow} is running (its download stage); cancel it first, or delete it with force, which cancels it")
    );
    let trpc = format!("{base}/trpc/tasks.delete");
    let (s, e) = send(reqwest::Method::POST, &trpc, Some(json!({"taskId": slow}))).await;
    assert_eq!(s, 409);
    assert_eq!(e["error"]["data"]["code"], "CONFLICT");
    assert!(files(&data, &slow).contains(&"manifest.json".to_string()));
    let t_force = Instant::now();
    let forced_delete = json!({"taskId": slow, "force": true});
    let (s, d) = send(reqwest::Method::POST, &trpc, Some(forced_delete)).await;
    assert_eq!(s, 200, "{d}");
    let forced = t_force.elapsed();
    assert_eq!(d["result"]["data"]["deleted"], true);
    assert_eq!(d["result"]["data"]["cancelled"], true);
    assert_eq!(files(&data, &slow), Vec::<String>::new(), "nothing left");
    assert_eq!(task_ids(&data), vec![id.clone()]);
    let (s, _) = request(reqwest::Method::GET, &url).await;
    assert_eq!(s, 404);
    let (s, _) = request(reqwest::Method::DELETE, &url).await;
    assert_eq!(s, 404);

    // --- a completed task offers its media while it exists -------------------------------
    let m = wait_for(&base, &id, Duration::from_secs(180), |m| {
        m["status"] == "completed"
    })
    .await;
    assert_eq!(
        queued_jobs(&base).await,
        3.0,
        "only the completed task's jobs are in Redis"
    );
    let media = m["stages"]["download"]["outputs"][0].clone();
    assert_eq!(media["name"], "media.m4a");
    let r = reqwest::get(format!("{base}/api/tasks/{id}/media"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let ctype = r.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ctype.starts_with("audio/"), "{ctype}");
    assert_eq!(
        r.bytes().await.unwrap().to_vec(),
        m4a,
        "the media as downloaded"
    );
    let r = reqwest::Client::new()
        .get(format!("{base}/api/tasks/{id}/media"))
        .header("range", "bytes=0-99")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206, "a player can seek");
    assert_eq!(r.bytes().await.unwrap().to_vec(), m4a[..100].to_vec());
    let wav = m["stages"]["transcribe"]["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "audio.wav")
        .unwrap()
        .clone();
    let mut all = kept();
    all.extend(["audio.wav".to_string(), "media.m4a".to_string()]);
    all.sort();
    assert_eq!(files(&data, &id), all);

    // --- prune --dry-run with media_days = audio_days = 0 deletes nothing ----------------
    let now = [
        ("TUBESCRIBE_RETENTION_MEDIA_DAYS", "0"),
        ("TUBESCRIBE_RETENTION_AUDIO_DAYS", "0"),
    ];
    let run = Env::new(&data)
        .vars(&now)
        .bin(&["prune", "--dry-run"])
        .run();
    assert_eq!(run.code, 0, "{}", run.stderr);
    let mb = |b: u64| format!("{:.1} MB", b as f64 / 1e6);
    let (media_b, wav_b) = (
        media["bytes"].as_u64().unwrap(),
        wav["bytes"].as_u64().unwrap(),
    );
    assert_eq!(
        run.stdout,
        format!(
            "would delete  {id}  media.m4a  media  {}\nwould delete  {id}  audio.wav  audio  {}\n\
             would delete 2 file(s) and 0 whole task(s), {}\n",
            mb(media_b),
            mb(wav_b),
            mb(media_b + wav_b)
        )
    );
    assert_eq!(files(&data, &id), all, "a dry run deletes nothing");
    drop(srv);
    events.abort();

    // --- the same policy in a server's workers: applied by the periodic pass ------------
    let mut vars = now.to_vec();
    vars.push(("TUBESCRIBE_RETENTION_INTERVAL_S", "1"));
    let (srv, base) = serve(&data, &host, &vars);
    // From the start of the streams: the first pass runs as the server starts.
    let start = Some("0-0_0-0_0-0_0-0");
    let events = tokio::spawn(all_events(format!("{base}/api/events/stream"), start));
    let m = wait_for(&base, &id, Duration::from_secs(30), |m| {
        m["pruned"].as_array().is_some_and(|p| p.len() == 2)
    })
    .await;
    assert_eq!(files(&data, &id), kept(), "transcript and summary kept");
    // The record and the API say what is gone; outputs list only what exists.
    assert_eq!(m["status"], "completed");
    assert_eq!(m["stages"]["download"]["outputs"], json!([]));
    let outputs: Vec<&str> = m["stages"]["transcribe"]["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        outputs,
        [
            "transcript.json",
            "transcript.txt",
            "transcript.srt",
            "transcript.vtt"
        ]
    );
    let pruned: Vec<(&str, &str, u64)> = m["pruned"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["kind"].as_str().unwrap(),
                f["name"].as_str().unwrap(),
                f["bytes"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        pruned,
        [
            ("media", "media.m4a", media_b),
            ("audio", "audio.wav", wav_b)
        ]
    );
    for (kind, b) in [("media", media_b), ("audio", wav_b)] {
        let label = format!("kind=\"{kind}\"");
        assert_eq!(
            metric(&base, "tubescribe_pruned_files_total", &label).await,
            1.0
        );
        assert_eq!(
            metric(&base, "tubescribe_pruned_bytes_total", &label).await,
            b as f64
        );
    }
    let (s, e) = request(
        reqwest::Method::GET,
        &format!("{base}/api/tasks/{id}/media"),
    )
    .await;
    assert_eq!(s, 404);
    assert_eq!(
        e["detail"],
        format!("the media of task {id} is not available: it was deleted by the retention policy")
    );
    for f in ["transcript.txt", "summary.md"] {
        let r = reqwest::get(format!("{base}/api/tasks/{id}/{f}"))
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{f}");
        let on_disk = std::fs::read(data.join("tasks").join(&id).join(f)).unwrap();
        assert_eq!(r.bytes().await.unwrap().to_vec(), on_disk, "{f}");
    }
    let run = Env::new(&data).vars(&now).bin(&["prune"]).run();
    assert_eq!(
        (run.code, run.stdout.as_str()),
        (0, "deleted 0 file(s) and 0 whole task(s), 0.0 MB\n"),
        "nothing left to prune: {}",
        run.stderr
    );

    // --- delete through the client: every file, the record and the jobs ------------------
    let run = Env::new(&data)
        .bin(&["delete", "--server", &base, "--json", &id])
        .run();
    assert_eq!(run.code, 0, "{}", run.stderr);
    let d: Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(
        (&d["taskId"], &d["deleted"], &d["cancelled"], &d["files"]),
        (
            &json!(id),
            &json!(true),
            &json!(false),
            &json!(kept().len())
        )
    );
    assert_eq!(task_ids(&data), Vec::<String>::new(), "nothing left");
    assert_eq!(queued_jobs(&base).await, 0.0, "no job left in Redis");
    let (s, _) = request(reqwest::Method::GET, &format!("{base}/api/tasks/{id}")).await;
    assert_eq!(s, 404);
    let run = Env::new(&data)
        .bin(&["delete", "--server", &base, &id])
        .run();
    assert_eq!(run.code, 1);
    assert_eq!(
        run.stderr,
        format!("error: {id}: task {id} not found (HTTP 404)\n")
    );

    // --- task_days: a cancelled task is deleted whole by `prune` -------------------------
    let gone = submit(&base, &format!("http://{host}/slow.wav")).await;
    let (s, _) = request(
        reqwest::Method::POST,
        &format!("{base}/api/tasks/{gone}/cancel"),
    )
    .await;
    assert_eq!(s, 200);
    let run = Env::new(&data)
        .var("TUBESCRIBE_RETENTION_TASK_DAYS", "0")
        .bin(&["prune"])
        .run();
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout
            .starts_with(&format!("deleted  {gone}  the whole task  ")),
        "{}",
        run.stdout
    );
    assert_eq!(task_ids(&data), Vec::<String>::new());
    assert_eq!(queued_jobs(&base).await, 0.0, "no job left in Redis");

    // --- delete --local: on this machine's data directory, no server involved ------------
    let local = submit(&base, &format!("http://{host}/slow.wav")).await;
    wait_for(&base, &local, Duration::from_secs(60), |m| {
        m["stages"]["download"]["state"] == "active"
    })
    .await;
    let run = Env::new(&data).bin(&["delete", "--local", &local]).run();
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.starts_with(&format!(
            "error: {local}: task {local} is running (its download stage)"
        )),
        "{}",
        run.stderr
    );
    let run = Env::new(&data)
        .bin(&["delete", "--local", "--force", &local])
        .run();
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.starts_with(&format!("{local}  deleted ("))
            && run.stdout.ends_with("; cancelled first\n"),
        "{}",
        run.stdout
    );
    assert_eq!(task_ids(&data), Vec::<String>::new());
    assert_eq!(queued_jobs(&base).await, 0.0, "no job left in Redis");

    // SSE saw the deletes, the prune and the cancel.
    tokio::time::sleep(Duration::from_millis(500)).await;
    events.abort();
    drop(srv);
    let seen = SEEN.lock().unwrap().clone();
    let saw = |name: &str, task: &str| seen.iter().any(|(n, d)| n == name && d["taskId"] == task);
    for (name, task) in [
        ("task.cancelled", &slow),
        ("task.deleted", &slow),
        ("task.pruned", &id),
        ("task.deleted", &id),
        ("task.deleted", &gone),
        ("task.cancelled", &local),
        ("task.deleted", &local),
    ] {
        let names: Vec<&str> = seen.iter().map(|(n, _)| n.as_str()).collect();
        assert!(saw(name, task), "no {name} for {task}: {names:?}");
    }
    let reason = |task: &str| {
        let e = seen
            .iter()
            .find(|(n, d)| n == "task.deleted" && d["taskId"] == task);
        e.map(|(_, d)| d["reason"].clone())
    };
    assert_eq!(reason(&slow), Some(json!("user")));
    assert_eq!(reason(&gone), Some(json!("retention")));
    eprintln!(
        "retention test: force delete of a downloading task {forced:?}; total {:?}",
        t_start.elapsed()
    );
}

/// Events seen on the server's stream: (name, data).
static SEEN: std::sync::Mutex<Vec<(String, Value)>> = std::sync::Mutex::new(Vec::new());

/// Follows `url` (all events; after the event id `last` when given) into [`SEEN`] until
/// aborted.
async fn all_events(url: String, last: Option<&'static str>) {
    use eventsource_stream::Eventsource;
    use futures::StreamExt;
    let mut req = reqwest::Client::new()
        .get(&url)
        .header("accept", "text/event-stream");
    if let Some(id) = last {
        req = req.header("last-event-id", id);
    }
    let resp = req.send().await.unwrap();
    let mut events = resp.bytes_stream().eventsource();
    while let Some(Ok(e)) = events.next().await {
        let data = serde_json::from_str(&e.data).unwrap_or(Value::Null);
        SEEN.lock().unwrap().push((e.event, data));
    }
}
