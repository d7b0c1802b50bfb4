//! Signed webhooks through the real binary: a real HTTP receiver (`webhook_receiver.py`)
//! verifies every delivery with the Standard Webhooks reference library (PyPI
//! `standardwebhooks`) and answers from a script. A `task.completed` callback refused twice
//! (HTTP 500) is accepted on the third attempt and the manifest logs the three; a bad input's
//! `task.failed` reaches the callback and the endpoint configured for failures only; and a
//! delivery whose worker is killed -9 in the middle of an attempt is made by the other worker.
//! Media is served over loopback; callbacks are allowed with `--allow-host` like media hosts.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const JFK_FALLBACK: &str = "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country.";
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// The receiver process and its delivery log; killed on drop.
struct Receiver {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Receiver {
    /// Starts the receiver with `script` (`PATH=ANSWERS` items, see the script) and waits for
    /// its port. Fails loudly when the venv's `standardwebhooks` is missing.
    fn start(dir: &Path, script: &[&str]) -> Receiver {
        let python = repo_root().join(".venv/bin/python");
        assert!(
            python.is_file(),
            "{} is missing: run scripts/setup.sh --test",
            python.display()
        );
        let log = dir.join("deliveries.jsonl");
        let mut child = Command::new(&python)
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/webhook_receiver.py"))
            .arg(SECRET)
            .arg(&log)
            .args(script)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("receiver did not start (is standardwebhooks installed? scripts/setup.sh --test): {line:?}"))
            .parse()
            .unwrap();
        Receiver { child, port, log }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Every delivery so far to `path`, in arrival order.
    fn deliveries(&self, path: &str) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|d| d["path"] == path)
            .collect()
    }

    /// Waits (≤ `limit`) until `path` has had `n` deliveries; returns them.
    fn wait(&self, path: &str, n: usize, limit: Duration) -> Vec<Value> {
        let t0 = Instant::now();
        loop {
            let d = self.deliveries(path);
            if d.len() >= n {
                return d;
            }
            assert!(
                t0.elapsed() < limit,
                "{path}: {} of {n} deliveries within {limit:?}: {d:#?}",
                d.len()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// jfk as m4a over loopback.
fn media(tmp: &Path) -> std::net::SocketAddr {
    let dir = tmp.join("media");
    std::fs::create_dir_all(&dir).unwrap();
    let (wav, _) = speech(tmp, "jfk", JFK_FALLBACK);
    transcode(&wav, &dir.join("jfk.m4a"));
    serve_dir(&dir)
}

/// A config file with fast retries (`backoff_s`, `timeout_s`) and `extra` lines.
fn config(tmp: &Path, backoff_s: f64, timeout_s: f64, extra: &str) -> PathBuf {
    let p = tmp.join("tubescribe.toml");
    let text = format!("[webhooks]\nbackoff_s = {backoff_s}\ntimeout_s = {timeout_s}\n{extra}\n");
    std::fs::write(&p, text).unwrap();
    p
}

/// [`common::post`] without the content type.
async fn post(url: &str, body: Value) -> (u16, Value) {
    let (status, _, answer) = common::post(url, body).await;
    (status, answer)
}

/// Waits (≤ `limit`) until `check` accepts task `id`'s manifest; returns it.
fn wait_manifest(data: &Path, id: &str, limit: Duration, check: impl Fn(&Value) -> bool) -> Value {
    let t0 = Instant::now();
    loop {
        let m = manifest(data, id);
        if check(&m) {
            return m;
        }
        assert!(t0.elapsed() < limit, "task {id} within {limit:?}: {m:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The deliveries of task `id`'s manifest to `url`.
fn logged(m: &Value, url: &str) -> Vec<Value> {
    m["webhooks"]["deliveries"]
        .as_array()
        .map(|a| a.iter().filter(|d| d["url"] == url).cloned().collect())
        .unwrap_or_default()
}

fn delivered(m: &Value, url: &str) -> bool {
    logged(m, url).iter().any(|d| d["state"] == "delivered")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_are_signed_retried_until_accepted_and_report_failures() {
    let tmp = tempfile::tempdir().unwrap();
    let maddr = media(tmp.path());
    let rx = Receiver::start(tmp.path(), &["/hook=500,500,200"]);
    let failed_only = rx.url("/failed");
    let cfg = config(
        tmp.path(),
        0.5,
        5.0,
        &format!("[[webhooks.endpoints]]\nurl = \"{failed_only}\"\nevents = [\"task.failed\"]"),
    );
    let data = tmp.path().join("data");
    let mut srv = Env::new(&data)
        .config_file(&cfg)
        .var("TUBESCRIBE_THREADS", "2")
        .var("TUBESCRIBE_WEBHOOK_SECRET", SECRET)
        .bin(&[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--allow-host",
            &maddr.to_string(),
            "--allow-host",
            &rx.host(),
        ])
        .start();
    let base = srv.wait_base_url();
    let hook = rx.url("/hook");

    // A callback on a private address that is not allowed is refused like a media URL, and
    // nothing is created.
    let (s, e) = post(
        &format!("{base}/api/tasks"),
        json!({"link": format!("http://{maddr}/jfk.m4a"), "callbackUrl": "http://10.0.0.7/hook"}),
    )
    .await;
    assert_eq!(s, 400, "{e}");
    let detail = e["detail"].as_str().unwrap();
    assert!(
        detail.starts_with(
            "callback URL http://10.0.0.7/hook is refused: host 10.0.0.7 is a private address"
        ),
        "{detail}"
    );
    assert!(task_ids(&data).is_empty());

    // --- task.completed: 500, 500, then accepted -----------------------------------------
    let (s, created) = post(
        &format!("{base}/api/tasks"),
        json!({"link": format!("http://{maddr}/jfk.m4a"), "callbackUrl": hook}),
    )
    .await;
    assert_eq!(s, 201, "{created}");
    let id = created["taskId"].as_str().unwrap().to_string();
    let got = rx.wait("/hook", 3, Duration::from_secs(180));
    assert_eq!(got.len(), 3, "{got:#?}");
    for d in &got {
        assert_eq!(d["verified"], true, "signature refused: {d:#}");
    }
    let answers: Vec<&str> = got.iter().map(|d| d["answer"].as_str().unwrap()).collect();
    assert_eq!(answers, ["500", "500", "200"]);
    // One message: the same id and body on every attempt, signed anew each time.
    let msg_id = got[0]["id"].as_str().unwrap();
    assert!(msg_id.starts_with("msg_"), "{msg_id}");
    assert!(got
        .iter()
        .all(|d| d["id"] == msg_id && d["body"] == got[0]["body"]));
    let body = &got[2]["body"];
    assert_eq!(body["type"], "task.completed");
    assert_eq!(body["data"]["taskId"], id.as_str());
    assert_eq!(body["data"]["status"], "completed");
    let outputs: Vec<&str> = body["data"]["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert!(
        outputs.contains(&"transcript.srt") && outputs.contains(&"summary.md"),
        "{outputs:?}"
    );
    // Exponential backoff: at least 0.5 s, then at least 1 s (each spread up to half again).
    let at: Vec<f64> = got.iter().map(|d| d["at"].as_f64().unwrap()).collect();
    let gaps = [at[1] - at[0], at[2] - at[1]];
    assert!(gaps[0] >= 0.45 && gaps[1] >= 0.95, "retry gaps {gaps:?}");

    // The delivery log in the task's record: three attempts, the codes the receiver gave.
    let m = wait_manifest(&data, &id, Duration::from_secs(10), |m| delivered(m, &hook));
    assert_eq!(
        m["status"], "completed",
        "a delivery never changes the task"
    );
    let log = logged(&m, &hook);
    assert_eq!(log.len(), 1, "{log:#?}");
    let d = &log[0];
    assert_eq!(
        (d["id"].as_str(), d["event"].as_str()),
        (Some(msg_id), Some("task.completed"))
    );
    let attempts = d["attempts"].as_array().unwrap();
    let codes: Vec<(u64, u64)> = attempts
        .iter()
        .map(|a| {
            (
                a["attempt"].as_u64().unwrap(),
                a["status_code"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(codes, [(1, 500), (2, 500), (3, 200)]);
    assert!(attempts[..2].iter().all(|a| a["error"]
        .as_str()
        .unwrap()
        .starts_with("the endpoint answered HTTP 500")));
    assert!(attempts
        .iter()
        .all(|a| a["finished_at"].as_u64() >= a["started_at"].as_u64()));
    let outcomes: Vec<&str> = attempts
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["failed", "failed", "completed"]);
    // The failures-only endpoint heard nothing of a completion.
    assert!(rx.deliveries("/failed").is_empty());

    // --- task.failed: a missing file, to the callback and the failures endpoint -----------
    let (s, created) = post(
        &format!("{base}/trpc/tasks.create"),
        json!({"link": format!("http://{maddr}/missing.m4a"), "callbackUrl": hook}),
    )
    .await;
    assert_eq!(s, 200, "{created}");
    let bad = created["result"]["data"]["taskId"]
        .as_str()
        .unwrap()
        .to_string();
    let to_hook = rx.wait("/hook", 4, Duration::from_secs(60));
    let to_failed = rx.wait("/failed", 1, Duration::from_secs(60));
    for d in [&to_hook[3], &to_failed[0]] {
        assert_eq!(d["verified"], true, "{d:#}");
        assert_eq!(d["body"]["type"], "task.failed");
        assert_eq!(d["body"]["data"]["taskId"], bad.as_str());
        assert_eq!(d["body"]["data"]["status"], "failed");
        assert_eq!(d["body"]["data"]["error"]["stage"], "download");
        let why = d["body"]["data"]["error"]["message"].as_str().unwrap();
        assert!(why.contains("HTTP 404"), "{why}");
    }
    // Two targets, two messages.
    assert_ne!(to_hook[3]["id"], to_failed[0]["id"]);
    let m = wait_manifest(&data, &bad, Duration::from_secs(10), |m| {
        delivered(m, &hook) && delivered(m, &failed_only)
    });
    assert_eq!(m["webhooks"]["callbacks"], json!([hook]));
    let origins: Vec<&str> = m["webhooks"]["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["origin"].as_str().unwrap())
        .collect();
    assert_eq!(origins, ["callback", "endpoint"]);
    drop(srv);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_survives_its_worker_killed_mid_attempt() {
    let tmp = tempfile::tempdir().unwrap();
    let maddr = media(tmp.path());
    // The second attempt hangs: its worker is killed -9 while it waits for the answer.
    let rx = Receiver::start(tmp.path(), &["/hook=500,hang:20,200"]);
    let cfg = config(tmp.path(), 0.5, 4.0, "");
    let data = tmp.path().join("data");
    let env = Env::new(&data)
        .config_file(&cfg)
        .var("TUBESCRIBE_THREADS", "2")
        .var("TUBESCRIBE_WEBHOOK_SECRET", SECRET);
    let hosts = [
        "--allow-host",
        &maddr.to_string(),
        "--allow-host",
        &rx.host(),
    ];
    let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--no-workers"];
    args.extend(hosts);
    let mut srv = env.bin(&args).start();
    let base = srv.wait_base_url();
    let mut workers = Vec::new();
    for _ in 0..2 {
        let mut args = vec!["worker", "--transcribe-concurrency", "1"];
        args.extend(hosts);
        workers.push(Some(env.bin(&args).start()));
    }
    let hook = rx.url("/hook");
    // `submit --callback`: the CLI sends it as callbackUrl.
    let run = env
        .bin(&[
            "submit",
            "--server",
            &base,
            "--callback",
            &hook,
            &format!("http://{maddr}/jfk.m4a"),
        ])
        .run();
    assert_eq!(run.code, 0, "{}", run.stderr);
    let id = run.stdout.split_whitespace().next().unwrap().to_string();

    // The second attempt arrives; the worker making it is named in the delivery log.
    rx.wait("/hook", 2, Duration::from_secs(180));
    let m = manifest(&data, &id);
    let open = logged(&m, &hook)[0]["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["outcome"].is_null())
        .cloned()
        .unwrap_or_else(|| panic!("no attempt in flight: {m:#}"));
    assert_eq!(open["attempt"], 2);
    let victim_name = open["worker"].as_str().unwrap().to_string();
    let pid: u32 = victim_name.rsplit(':').next().unwrap().parse().unwrap();
    let slot = workers
        .iter()
        .position(|w| w.as_ref().unwrap().pid() == pid)
        .unwrap_or_else(|| panic!("attempt 2 ran in {victim_name}, not one of our workers"));
    signal(pid, libc::SIGKILL);
    let t_kill = Instant::now();
    // Dropping the killed process's handle only reaps it.
    workers[slot].take();

    // The other worker delivers it once its lock lapses (stalled recovery).
    let got = rx.wait("/hook", 3, Duration::from_secs(90));
    let recovered_s = t_kill.elapsed().as_secs_f64();
    assert!(got.iter().all(|d| d["verified"] == true), "{got:#?}");
    assert!(got.iter().all(|d| d["id"] == got[0]["id"]), "{got:#?}");
    assert_eq!(got[2]["answer"], "200");
    assert_eq!(got[2]["body"]["type"], "task.completed");
    let m = wait_manifest(&data, &id, Duration::from_secs(10), |m| delivered(m, &hook));
    let attempts = logged(&m, &hook)[0]["attempts"].as_array().unwrap().clone();
    let log: Vec<(u64, Option<u64>, &str)> = attempts
        .iter()
        .map(|a| {
            (
                a["attempt"].as_u64().unwrap(),
                a["status_code"].as_u64(),
                a["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        log,
        [
            (1, Some(500), "failed"),
            (2, None, "interrupted"),
            (3, Some(200), "completed")
        ]
    );
    assert_ne!(
        attempts[2]["worker"],
        victim_name.as_str(),
        "delivered by the other worker"
    );
    // Delivered once: nothing more arrives.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(rx.deliveries("/hook").len(), 3);
    eprintln!("delivery recovered {recovered_s:.1} s after the kill");
    drop(workers);
    drop(srv);
}
