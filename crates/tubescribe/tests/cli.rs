//! The command line as a user meets it, through the real binary: each command's help lists
//! only its own options, refusals name their cause in one exact sentence, an offline YouTube
//! URL says why once (no colour into a file, the tool's words in the manifest and under
//! `--verbose`), `model list`, `stats --json`, `--listen` forms, a busy port and an open
//! address; and the client commands against a server: `submit`'s next step, `get` in every
//! format, `--json` errors, `status` right after a cancel and `retry` right after it.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const JFK_FALLBACK: &str = "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country.";

/// The long option names (`--server`, …) listed under a `--help` output's options.
fn options(help: &str) -> Vec<String> {
    help.lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with('-'))
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("--")))
        .map(|w| w.trim_end_matches(',').to_string())
        .collect()
}

/// `stderr` without the plain progress lines (`[m:ss] label: event`) that `process` writes when
/// stderr is not a terminal: what is left are the errors.
fn errors_only(stderr: &str) -> String {
    let progress = |l: &str| {
        l.strip_prefix('[')
            .and_then(|r| r.split_once("] "))
            .is_some_and(|(t, _)| t.split(':').all(|n| n.parse::<u32>().is_ok()))
    };
    stderr
        .lines()
        .filter(|l| !progress(l))
        .map(|l| format!("{l}\n"))
        .collect()
}

fn help_options(cmd: &[&str]) -> Vec<String> {
    let tmp = tempfile::tempdir().unwrap();
    let mut args = cmd.to_vec();
    args.push("--help");
    let run = tubescribe(tmp.path(), &args);
    assert_eq!(run.code, 0, "{}", run.stderr);
    options(&run.stdout)
}

#[test]
fn each_command_lists_only_its_options() {
    // The flags of the commands that open this machine's data (and Redis, and storage).
    let local = [
        "--config",
        "--data-dir",
        "--redis-url",
        "--storage-url",
        "--help",
    ];
    let with_local = |first: &[&'static str]| [first, &local[..]].concat();
    for (cmd, want) in [
        (vec!["status"], vec!["--server", "--json", "--help"]),
        (vec!["get"], vec!["--format", "--server", "--help"]),
        (
            vec!["cancel"],
            vec!["--server", "--json", "--api-token", "--help"],
        ),
        (
            vec!["submit"],
            vec![
                "--fresh",
                "--callback",
                "--captions",
                "--auto-captions",
                "--captions-lang",
                "--playlist",
                "--max-videos",
                "--server",
                "--json",
                "--api-token",
                "--help",
            ],
        ),
        (vec!["stats"], with_local(&["--json"])),
        (vec!["prune"], with_local(&["--dry-run", "--json"])),
        (
            vec!["delete"],
            with_local(&["--force", "--local", "--server", "--json", "--api-token"]),
        ),
        (
            vec!["model", "list"],
            vec![
                "--json",
                "--config",
                "--data-dir",
                "--model",
                "--engine",
                "--help",
            ],
        ),
        (
            vec!["model", "install"],
            vec![
                "--quant",
                "--dir",
                "--config",
                "--data-dir",
                "--model",
                "--engine",
                "--help",
            ],
        ),
    ] {
        assert_eq!(help_options(&cmd), want, "{cmd:?} --help");
    }
    // The commands that run workers have the worker settings.
    let process = help_options(&["process"]);
    for o in [
        "--verbose",
        "--allow-host",
        "--model",
        "--threads",
        "--download-concurrency",
        "--shutdown-grace",
    ] {
        assert!(process.contains(&o.to_string()), "{o} in {process:?}");
    }
    let tmp = tempfile::tempdir().unwrap();
    let run = tubescribe(tmp.path(), &["--help"]);
    assert_eq!(
        run.stdout.lines().next().unwrap(),
        "Turns YouTube videos and media files into timestamped transcripts (TXT, SRT, VTT, JSON) \
         and summaries, on this machine (`process`) or through a server and its workers \
         (`serve`, `submit`, `get`)"
    );
    assert!(!run.stdout.contains("BullMQ"), "{}", run.stdout);
}

#[test]
fn refusals_name_their_cause() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let refused = |args: &[&str], code: i32, want: &str| {
        let run = tubescribe(&data, args);
        assert_eq!(run.code, code, "{args:?}: {}", run.stderr);
        assert_eq!(run.stderr, format!("error: {want}\n"), "{args:?}");
        assert_eq!(run.stdout, "", "{args:?}");
    };
    refused(
        &["process", ""],
        2,
        "empty input: give a YouTube video URL or a media file",
    );
    refused(
        &["process", "not a url"],
        2,
        "\"not a url\" is not a YouTube URL, a video id or an existing file",
    );
    refused(
        &["process", "ftp://example.com/a.mp3"],
        2,
        "ftp://example.com/a.mp3: scheme `ftp:` is not supported; use a YouTube URL, or an \
         http(s):// URL on a host allowed with `--allow-host`",
    );
    refused(
        &["process", "https://example.com/a.mp3"],
        2,
        "https://example.com/a.mp3: host example.com is not a YouTube host and is not allowed \
         for direct media URLs; to fetch it anyway, allow it with `--allow-host example.com` or \
         TUBESCRIBE_ALLOW_HOSTS=example.com",
    );
    // A model name that is not installable is not answered with another model.
    let media = tmp.path().join("talk.mp3");
    std::fs::write(&media, b"not audio").unwrap();
    let small = std::env::current_dir().unwrap().join("small");
    refused(
        &["process", "--model", "small", media.to_str().unwrap()],
        1,
        &format!(
            "Whisper model not found at {}: \"small\" is neither a model file nor an installable \
             model (tiny.en, base, tiny.en-q8_0, base-q8_0); see `tubescribe model list`",
            small.display()
        ),
    );
    refused(
        &["model", "install", "small"],
        1,
        "unknown model \"small\"; installable models: tiny.en (77.7 MB, English only), base \
         (148.0 MB, multilingual), tiny.en-q8_0 (43.6 MB, English only), base-q8_0 (81.8 MB, \
         multilingual) (`tubescribe model list`)",
    );
    // A q8_0 file asked for with another --quant is refused before anything is fetched.
    refused(
        &["model", "install", "base-q8_0", "--quant", "f16"],
        1,
        "\"base-q8_0\" is the q8_0 file; --quant f16 asks for another",
    );
    // A config typo names the file, line and column.
    let toml = tmp.path().join("tubescribe.toml");
    std::fs::write(&toml, "[worker]\nthreds = 2\n").unwrap();
    let at = format!(
        "invalid config file {}:2:1: unknown field `threds`, expected one of \
         `shutdown_grace_s`, `redis_retry_s`, `reconcile_s`",
        toml.display()
    );
    refused(&["stats", "--config", toml.to_str().unwrap()], 1, &at);
    // With --json the same error is a JSON line on stdout.
    let run = tubescribe(
        &data,
        &["stats", "--json", "--config", toml.to_str().unwrap()],
    );
    assert_eq!(run.code, 1);
    assert_eq!(run.stderr, "");
    let v: Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(v, serde_json::json!({"error": {"message": at}}));
    let run = tubescribe(&data, &["process", "--json", "not a url", "dQw4w9WgXcQ"]);
    assert_eq!(run.code, 2);
    let v: Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"input": "not a url", "error": {"message":
            "\"not a url\" is not a YouTube URL, a video id or an existing file"}})
    );
    // Unknown stages are refused with the list of stages.
    let run = tubescribe(&data, &["worker", "--stages", "download,foo"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr
            .starts_with("error: invalid value 'foo' for '--stages <STAGES>'\n  [possible values: download, transcribe, summarize]\n"),
        "{}",
        run.stderr
    );

    // A local file that is not media fails while reading the file, not in a "download stage".
    let run = tubescribe(&data, &["process", media.to_str().unwrap()]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let id = task_ids(&data).pop().unwrap();
    let m = manifest(&data, &id);
    let reason = m["error"]["message"].as_str().unwrap();
    assert!(reason.starts_with("the media file is unreadable"), "{m:#}");
    assert_eq!(
        errors_only(&run.stderr),
        format!("✘ {id}  talk.mp3  failed while reading the file: {reason}\n")
    );
}

#[test]
fn offline_youtube_url_tells_the_cause_once() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // yt-dlp cannot reach YouTube: there is no network here, and a proxy that does not resolve
    // makes sure of it where there is one.
    let env = Env::new(&data).vars(&[
        ("https_proxy", "http://proxy.invalid:9"),
        ("HTTPS_PROXY", "http://proxy.invalid:9"),
    ]);
    let url = "https://www.youtube.com/watch?v=dQw4w9WgXcQ";
    let err_file = tmp.path().join("stderr.txt");
    let out = env
        .bin(&["process", url])
        .output_to(Stdio::piped(), std::fs::File::create(&err_file).unwrap())
        .spawn()
        .wait_with_output()
        .unwrap();
    let stderr = std::fs::read_to_string(&err_file).unwrap();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let cause = "cannot reach YouTube: DNS lookup failed — offline?";
    assert_eq!(stderr.matches(cause).count(), 1, "{stderr}");
    assert_eq!(
        errors_only(&stderr),
        format!(
            "✘ {}  watch?v=dQw4w9WgXcQ  failed while downloading: {cause}\n",
            tid("yt-dQw4w9WgXcQ", "")
        )
    );
    assert!(
        !stderr.contains('\x1b'),
        "escape codes in a file: {stderr:?}"
    );
    // The tool's own words are in the manifest, for every attempt.
    let m = manifest(&data, &tid("yt-dQw4w9WgXcQ", ""));
    assert_eq!(m["error"]["message"], cause);
    let detail = m["error"]["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("ERROR: [youtube] dQw4w9WgXcQ: ") && detail.contains("resolve"),
        "{detail}"
    );
    let log = m["stages"]["download"]["attempt_log"].as_array().unwrap();
    assert_eq!(log.len(), 3);
    assert!(log
        .iter()
        .all(|a| a["error"] == cause && a["detail"] == detail));

    // --verbose shows each attempt with yt-dlp's words.
    let run = env.bin(&["process", "--verbose", "--fresh", url]).run();
    assert_eq!(run.code, 1);
    let attempts = run
        .stderr
        .lines()
        .filter(|l| l.contains("attempt failed: ") && l.contains("Failed to resolve"))
        .count();
    assert_eq!(attempts, 2, "{}", run.stderr);
    assert!(!run.stderr.contains('\x1b'), "{}", run.stderr);
}

#[test]
fn model_list_shows_installable_and_installed_models() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tubescribe(tmp.path(), &["model", "list", "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let rows: Vec<Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // The test environment's model (TUBESCRIBE_MODEL) is tiny.en, the default, in the form
    // of the engine under test: the sizes are that form's (a CTranslate2 directory's
    // `model.bin` or the ggml file).
    let ct2 = engine() == tubescribe::tools::asr::Engine::Ct2;
    let (tiny_bytes, base_bytes) = if ct2 {
        (75_537_502, 145_217_532)
    } else {
        (77_704_698, 147_951_465)
    };
    assert_eq!(rows[0]["name"], "tiny.en");
    assert_eq!(rows[0]["engine"], engine().as_str());
    assert_eq!(rows[0]["bytes"], tiny_bytes);
    assert_eq!(rows[0]["default"], true);
    assert_eq!(rows[0]["installed"], true);
    assert_eq!(rows[0]["path"], model().to_str().unwrap());
    assert_eq!(rows[1]["name"], "base");
    assert_eq!(rows[1]["bytes"], base_bytes);
    assert_eq!(rows[1]["default"], false);
    assert_eq!(rows[1]["languages"], "multilingual");
    assert_eq!(rows[1]["quant"], "f16");
    if ct2 {
        // CTranslate2 has no q8_0 files (they are whisper.cpp's).
        assert!(
            rows[2..].iter().all(|r| r["installable"] == false),
            "{rows:#?}"
        );
    } else {
        // The q8_0 files follow, with their pinned sizes.
        assert_eq!(
            rows[2..4]
                .iter()
                .map(|r| (r["name"].clone(), r["bytes"].clone(), r["quant"].clone()))
                .collect::<Vec<_>>(),
            [
                (
                    serde_json::json!("tiny.en-q8_0"),
                    serde_json::json!(43_550_778),
                    serde_json::json!("q8_0")
                ),
                (
                    serde_json::json!("base-q8_0"),
                    serde_json::json!(81_768_585),
                    serde_json::json!("q8_0")
                ),
            ]
        );
        assert_eq!(rows[2]["languages"], "English only");
    }

    // A data dir with no model: both installable, neither installed, with the command; with
    // whisper.cpp also the q8_0 files.
    let run = tubescribe(tmp.path(), &["model", "list", "--model", "tiny.en"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    let mut want = vec![
        "model             size  languages     default  installed at",
        if ct2 {
            "tiny.en        75.5 MB  English only  yes      not installed: tubescribe model install tiny.en"
        } else {
            "tiny.en        77.7 MB  English only  yes      not installed: tubescribe model install tiny.en"
        },
        if ct2 {
            "base          145.2 MB  multilingual           not installed: tubescribe model install base"
        } else {
            "base          148.0 MB  multilingual           not installed: tubescribe model install base"
        },
    ];
    if !ct2 {
        want.extend([
            "tiny.en-q8_0   43.6 MB  English only           not installed: tubescribe model install tiny.en-q8_0",
            "base-q8_0      81.8 MB  multilingual           not installed: tubescribe model install base-q8_0",
        ]);
    }
    assert_eq!(lines, want);
}

#[test]
fn listen_forms_busy_port_and_open_address() {
    let tmp = tempfile::tempdir().unwrap();
    for (i, (listen, host)) in [("localhost:0", "127.0.0.1"), ("0", "127.0.0.1")]
        .into_iter()
        .enumerate()
    {
        let data = tmp.path().join(format!("d{i}"));
        let mut p = Env::new(&data)
            .bin(&["serve", "--no-workers", "--listen", listen])
            .start();
        let line = p.wait_line("listening on http://");
        assert!(
            line.contains(&format!("listening on http://{host}:")),
            "{listen}: {line}"
        );
    }
    // An address others can reach, without a token: a warning first.
    let mut p = Env::new(&tmp.path().join("open"))
        .bin(&["serve", "--no-workers", "--listen", "0.0.0.0:0"])
        .start();
    let line = p.wait_line("listening on http://");
    let addr = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap();
    let warning = p.wait_line("warning:");
    assert_eq!(
        warning,
        format!(
            "warning: listening on {} without an API token: anyone who can reach this port can \
             submit, cancel and delete tasks; set --api-token or TUBESCRIBE_API_TOKEN",
            addr.trim_start_matches("http://")
        )
    );
    drop(p);
    // A busy port is the one thing said, before anything starts.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let run = tubescribe(
        &tmp.path().join("busy"),
        &["serve", "--listen", &format!("127.0.0.1:{port}")],
    );
    assert_eq!(run.code, 1);
    assert_eq!(
        run.stderr,
        format!(
            "error: address 127.0.0.1:{port} is already in use (another tubescribe serve?); \
             pick another with --listen, e.g. --listen 127.0.0.1:0 for any free port\n"
        )
    );
    let run = tubescribe(
        &tmp.path().join("busy"),
        &["serve", "--listen", "localhost"],
    );
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.starts_with(
            "error: invalid value 'localhost' for '--listen <LISTEN>': \"localhost\" has no \
             port; write IP:PORT, HOST:PORT or PORT, e.g. 127.0.0.1:8080, localhost:8080 or 8080\n"
        ),
        "{}",
        run.stderr
    );
}

/// `status --json ID` through the client.
fn status_json(data: &Path, base: &str, id: &str) -> Value {
    let run = tubescribe(data, &["status", "--server", base, "--json", id]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    serde_json::from_str(run.stdout.trim()).unwrap()
}

/// Polls `status --json ID` until `done` holds (at most `limit`).
fn wait_for(
    data: &Path,
    base: &str,
    id: &str,
    limit: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let t0 = Instant::now();
    loop {
        let m = status_json(data, base, id);
        if done(&m) {
            return m;
        }
        assert!(
            t0.elapsed() < limit,
            "task {id} not there within {limit:?}: {m:#}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn client_commands_next_step_get_cancel_and_retry() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("media");
    std::fs::create_dir_all(&dir).unwrap();
    let (jfk, _) = speech(tmp.path(), "jfk", JFK_FALLBACK);
    std::fs::copy(&jfk, dir.join("jfk.wav")).unwrap();
    // About 5 minutes of speech: long enough to cancel during transcription.
    let clip = pcm16k_i16(&jfk, tmp.path());
    let long: Vec<i16> = std::iter::repeat_n(clip, 28).flatten().collect();
    write_wav16k(&dir.join("long.wav"), &long);
    let media = serve_dir(&dir).to_string();
    let data = tmp.path().join("data");
    let mut srv = Env::new(&data)
        .var("TUBESCRIBE_THREADS", "2")
        .bin(&["serve", "--listen", "localhost:0", "--allow-host", &media])
        .start();
    let line = srv.wait_line("listening on http://");
    let base = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap()
        .to_string();
    let cli = |args: &[&str]| {
        let mut a = args.to_vec();
        a.extend(["--server", &base]);
        tubescribe(&data, &a)
    };

    // submit: the id, then the next step with the web page.
    let run = cli(&["submit", &format!("http://{media}/jfk.wav")]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let id = run.stdout.split_whitespace().next().unwrap().to_string();
    assert_eq!(run.stdout, format!("{id}  queued\n"));
    assert_eq!(
        run.stderr,
        format!(
            "next: follow with `tubescribe status {id} --server {base}`, then print the \
             transcript with `tubescribe get {id} --format srt --server {base}`; web page: \
             {base}/\n"
        )
    );
    wait_for(&data, &base, &id, Duration::from_secs(180), |m| {
        m["status"] == "completed"
    });
    // get: every format, byte for byte what the task wrote.
    for (format, file) in [
        ("txt", "transcript.txt"),
        ("srt", "transcript.srt"),
        ("vtt", "transcript.vtt"),
        ("json", "transcript.json"),
        ("summary", "summary.md"),
    ] {
        let run = cli(&["get", &id, "--format", format]);
        assert_eq!(run.code, 0, "{format}: {}", run.stderr);
        let want = std::fs::read_to_string(data.join("tasks").join(&id).join(file)).unwrap();
        assert_eq!(run.stdout, want, "{format}");
        assert!(!want.is_empty());
    }
    assert!(cli(&["get", &id]).stdout.to_lowercase().contains("ask not"));
    let run = cli(&["get", "nope"]);
    assert_eq!(run.code, 1);
    assert_eq!(run.stderr, "error: nope: task nope not found (HTTP 404)\n");

    // --json errors are JSON lines on stdout; over HTTP text is never taken for a file.
    let run = cli(&["submit", "--json", "not a url"]);
    assert_eq!(run.code, 2);
    let v: Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"input": "not a url", "error": {
            "message": "\"not a url\" is not a YouTube URL or video id",
            "status": 400, "code": "BAD_REQUEST"}})
    );
    let run = cli(&["status", "--json", "nope"]);
    assert_eq!(run.code, 1);
    let v: Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(v["error"]["status"], 404);
    assert_eq!(v["input"], "nope");

    // stats --json: the figures as one object.
    let run = tubescribe(&data, &["stats", "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let stats: Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(stats["tasks"], serde_json::json!({"completed": 1}));
    for s in ["download", "transcribe", "summarize"] {
        assert_eq!(stats["stages"][s]["runs"], 1, "{stats:#}");
        assert!(stats["stages"][s]["mean_s"].as_f64().unwrap() > 0.0);
    }
    assert!(stats["stages"]["transcribe"]["rtf"].as_f64().unwrap() > 0.0);

    // Cancel during transcription: at once no stage is active any more.
    let run = cli(&["submit", &format!("http://{media}/long.wav")]);
    let long_id = run.stdout.split_whitespace().next().unwrap().to_string();
    wait_for(&data, &base, &long_id, Duration::from_secs(120), |m| {
        m["stages"]["transcribe"]["state"] == "active"
            && m["stages"]["transcribe"]["detail"]["phase"]
                .as_str()
                .is_some_and(|p| p.starts_with("transcribing"))
    });
    let run = cli(&["cancel", &long_id]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let m = status_json(&data, &base, &long_id);
    let states: Vec<&str> = ["download", "transcribe", "summarize"]
        .iter()
        .map(|s| m["stages"][s]["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["completed", "cancelled", "skipped"], "{m:#}");
    assert_eq!(m["status"], "cancelled");
    let run = cli(&["status", &long_id]);
    assert!(
        run.stdout.contains("    transcribe cancelled"),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains("active"), "{}", run.stdout);

    // Retry right away: accepted once the stopping job has ended (no 409), and it runs.
    let t_retry = Instant::now();
    let run = cli(&["retry", &long_id]);
    let waited = t_retry.elapsed();
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout, format!("{long_id}  queued\n"));
    let m = wait_for(&data, &base, &long_id, Duration::from_secs(60), |m| {
        m["stages"]["transcribe"]["state"] == "active"
    });
    assert_eq!(m["stages"]["download"]["state"], "completed");
    let outcomes: Vec<&str> = m["stages"]["transcribe"]["attempt_log"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["outcome"].as_str())
        .collect();
    // A whole file's attempt was cancelled; a split task (5 minutes at `segment_s` 120) was
    // cancelled during its split (the split attempt stops) or while its segments ran (the
    // split attempt had ended as "split").
    assert!(
        outcomes == ["cancelled"] || outcomes == ["split"],
        "{outcomes:?}: {m:#}"
    );
    let run = cli(&["cancel", &long_id]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    drop(srv);
    eprintln!("retry after cancel answered in {waited:?}");
}
