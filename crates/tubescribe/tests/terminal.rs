//! The terminal as a user sees it, through the real binary:
//!
//! * `process` with 10 inputs under a pseudo-terminal of 80×24, its output read through a
//!   vt100 screen after every chunk: no row ever wraps (no line is wider than 80 columns),
//!   every frame of the live block shows every task (or a summary line counting the rest), a
//!   task is seen running, the whole run writes under 100 KB, and the final screen lists the
//!   results;
//! * Ctrl-C (SIGINT) during `process` with one input finished and one running: the finished
//!   input's output paths and the paused task's id are printed, the exit code is 130, and a
//!   second SIGINT 0.3 s after the first ends the process within a second;
//! * `process --no-workers --json` with a worker for the download stage only: after about 5 s
//!   it names the queues nobody takes jobs from and keeps waiting; once a worker for them
//!   starts, the task completes and its JSON line carries `task_dir` and `output_paths`.
//!
//! Progress on a non-terminal stderr (the Ctrl-C test) is plain lines without escape codes.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

const COLS: u16 = 80;
const ROWS: u16 = 24;

/// `n` short speech WAVs (2–3.8 s cut from one clip at different places, so each is its own
/// task) in `dir`, named `clip<i>.wav`.
fn short_clips(dir: &Path, n: usize) -> Vec<PathBuf> {
    let (wav, _) = speech(dir, ENGLISH_CLIPS[0].0, ENGLISH_CLIPS[0].1);
    let pcm = pcm16k_i16(&wav, dir);
    (0..n)
        .map(|i| {
            let (start, len) = (i * 4_000, 32_000 + i * 3_200);
            let p = dir.join(format!("clip{i}.wav"));
            write_wav16k(&p, &pcm[start..(start + len).min(pcm.len())]);
            p
        })
        .collect()
}

/// A pseudo-terminal of `cols`×`rows`: (master, slave).
fn pty(cols: u16, rows: u16) -> (OwnedFd, OwnedFd) {
    let (mut master, mut slave) = (0, 0);
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty writes two fds we then own; the name and termios pointers may be null.
    let r = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &ws,
        )
    };
    assert_eq!(r, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both fds were just opened and are owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) }
}

/// The rows of the screen as text.
fn rows_of(screen: &vt100::Screen) -> Vec<String> {
    screen.rows(0, COLS).collect()
}

/// In the live block on `rows` (lines starting with a task mark and a clip's label): how many
/// tasks are shown, and how many a summary line counts.
fn block(rows: &[String]) -> (Vec<String>, usize) {
    let mut shown = Vec::new();
    let mut more = 0;
    for r in rows {
        let mut words = r.split_whitespace();
        let (mark, label) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        if ["›", "·", "✔", "⚠", "✘", "↻"].contains(&mark)
            && label.starts_with("clip")
            && label.ends_with(".wav")
        {
            shown.push(label.to_string());
        }
        if let Some(rest) = r.trim().strip_prefix("… and ") {
            more = rest
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
        }
    }
    (shown, more)
}

#[test]
fn process_fits_an_80x24_terminal() {
    let tmp = tempfile::tempdir().unwrap();
    let clips = short_clips(tmp.path(), 10);
    let env = Env::new(&tmp.path().join("data"));
    let mut args = vec!["process"];
    args.extend(clips.iter().map(|c| c.to_str().unwrap()));

    let (master, slave) = pty(COLS, ROWS);
    let out = Stdio::from(slave.try_clone().unwrap());
    let err = Stdio::from(slave);
    let mut child = Running(
        env.bin(&args)
            .env("TERM", "xterm-256color")
            .output_to(out, err)
            .spawn(),
    );
    // Chunks as the terminal receives them; the read ends (EIO) when the last writer closes.
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let mut reader = std::fs::File::from(master);
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });

    let mut parser = vt100::Parser::new(ROWS, COLS, 0);
    let (mut total, mut frames, mut saw_running) = (0usize, 0usize, false);
    let t0 = Instant::now();
    let mut exited = None;
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(chunk) => {
                total += chunk.len();
                parser.process(&chunk);
                let screen = parser.screen();
                for r in 0..ROWS {
                    assert!(
                        !screen.row_wrapped(r),
                        "row {r} is wider than {COLS} columns:\n{}",
                        screen.contents()
                    );
                }
                let rows = rows_of(screen);
                let (shown, more) = block(&rows);
                if !shown.is_empty() {
                    frames += 1;
                    assert_eq!(
                        shown.len() + more,
                        clips.len(),
                        "the live block shows neither every task nor a summary of the rest:\n{}",
                        screen.contents()
                    );
                    saw_running |= rows.iter().any(|r| {
                        r.trim_start().starts_with('›')
                            && r.contains('%')
                            && (r.contains("transcribe") || r.contains("download"))
                    });
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if exited.is_none() {
            exited = child.0.try_wait().unwrap();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(900),
            "process did not finish within 15 minutes:\n{}",
            parser.screen().contents()
        );
    }
    let status = match exited {
        Some(s) => s,
        None => child.0.wait().unwrap(),
    };
    let screen = parser.screen().contents();
    eprintln!(
        "{total} bytes in {:.0} s, {frames} frames with the block; final screen:\n{screen}",
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(status.code(), Some(0), "final screen:\n{screen}");
    assert!(
        frames >= 3,
        "the live block was seen in {frames} frames only"
    );
    assert!(
        saw_running,
        "no frame showed a running task with its percent"
    );
    assert!(
        total < 100_000,
        "{total} bytes written to the terminal (limit 100 KB)"
    );
    // The block is gone; the results are there (the last task's files at the bottom).
    let (shown, _) = block(&rows_of(parser.screen()));
    assert!(
        shown.is_empty(),
        "the live block was left behind:\n{screen}"
    );
    assert!(
        screen.contains("✔ file-") && screen.contains("/audio.wav"),
        "{screen}"
    );
}

/// A running binary whose stdout and stderr are collected line by line.
struct Captured {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Captured {
    fn start(bin: Bin) -> Captured {
        let mut child = bin.output_to(Stdio::piped(), Stdio::piped()).spawn();
        let collect = |r: Box<dyn Read + Send>, tag: &'static str| {
            let lines = Arc::new(Mutex::new(Vec::new()));
            let l2 = lines.clone();
            std::thread::spawn(move || {
                for l in BufReader::new(r).lines().map_while(Result::ok) {
                    eprintln!("[{tag}] {l}");
                    l2.lock().unwrap().push(l);
                }
            });
            lines
        };
        let stdout = collect(Box::new(child.stdout.take().unwrap()), "stdout");
        let stderr = collect(Box::new(child.stderr.take().unwrap()), "stderr");
        Captured {
            child,
            stdout,
            stderr,
        }
    }

    fn stdout(&self) -> String {
        self.stdout.lock().unwrap().join("\n")
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// Waits (≤ `limit`) for a stderr line containing `needle`.
    fn wait_stderr(&mut self, needle: &str, limit: Duration) {
        let t0 = Instant::now();
        while !self.stderr().contains(needle) {
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!(
                    "exited ({st}) before printing {needle:?}:\n{}",
                    self.stderr()
                );
            }
            assert!(
                t0.elapsed() < limit,
                "no {needle:?} on stderr within {limit:?}:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (≤ `limit`) for the process to exit; its exit code and how long it took.
    fn wait_exit(&mut self, limit: Duration) -> (i32, Duration) {
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                // Let the readers take the last lines.
                std::thread::sleep(Duration::from_millis(200));
                return (st.code().unwrap_or(-1), t0.elapsed());
            }
            if t0.elapsed() > limit {
                panic!(
                    "still running after {limit:?}\nstdout:\n{}\nstderr:\n{}",
                    self.stdout(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Captured {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// A binary still running when its test failed: SIGTERM (so its embedded Redis stops too),
/// then SIGKILL after 40 s.
fn stop(child: &mut Child) {
    terminate(child, Duration::from_secs(40));
}

/// Stops its binary when dropped ([`stop`]).
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        stop(&mut self.0);
    }
}

/// The id of the task whose input is `input`, once its manifest exists (≤ 60 s).
fn task_of(data: &Path, input: &Path) -> String {
    let t0 = Instant::now();
    loop {
        if data.join("tasks").is_dir() {
            for id in task_ids(data) {
                // The directory comes a moment before its manifest.
                let file = data.join("tasks").join(&id).join("manifest.json");
                let Ok(text) = std::fs::read_to_string(file) else {
                    continue;
                };
                let m: serde_json::Value = serde_json::from_str(&text).unwrap();
                if m["input"].as_str() == input.to_str() {
                    return id;
                }
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no task for {}",
            input.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn ctrl_c_prints_finished_paths_and_paused_ids_and_a_second_one_exits_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let short = short_clips(tmp.path(), 1).remove(0);
    let long = clip_talk(tmp.path(), "long", None, 60.0, 0.3).wav;
    let data = tmp.path().join("data");
    // `segment_s` 60: the long input (just over a minute) is a split task, so the interrupt
    // pauses segment jobs and the second run must resume them.
    let env = Env::new(&data).var("TUBESCRIBE_SEGMENT_S", "60");
    let args = ["process", short.to_str().unwrap(), long.to_str().unwrap()];
    let mut p = Captured::start(env.bin(&args));
    let (done_id, paused_id) = (task_of(&data, &short), task_of(&data, &long));

    // Wait for the short input to finish while the long one still runs.
    let t0 = Instant::now();
    loop {
        let (a, b) = (manifest(&data, &done_id), manifest(&data, &paused_id));
        if a["status"] == "completed" {
            assert!(
                b["status"] == "running" || b["status"] == "queued",
                "the long input is no longer running: {}",
                b["status"]
            );
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "the short input did not complete within 5 minutes: {a}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let pid = p.child.id();
    signal(pid, libc::SIGINT);
    p.wait_stderr("interrupted", Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(300));
    signal(pid, libc::SIGINT);
    let (code, took) = p.wait_exit(Duration::from_secs(30));
    let (out, err) = (p.stdout(), p.stderr());
    eprintln!(
        "exit {code} {:.2} s after the second SIGINT",
        took.as_secs_f64()
    );
    assert_eq!(code, 130, "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        took <= Duration::from_secs(1),
        "the second Ctrl-C took {took:?} to end the process"
    );
    // The finished input's results with their paths; the paused one's id and how to resume.
    let done_dir = data.join("tasks").join(&done_id);
    assert!(out.contains(&format!("✔ {done_id}")), "stdout:\n{out}");
    for f in ["transcript.txt", "summary.md"] {
        let path = done_dir.join(f);
        assert!(path.is_file(), "{} is missing", path.display());
        assert!(
            out.contains(path.to_str().unwrap()),
            "{f} path not printed:\n{out}"
        );
    }
    assert!(
        !out.contains(&paused_id),
        "paused task among results:\n{out}"
    );
    let paused_line = err
        .lines()
        .find(|l| l.contains(&paused_id))
        .unwrap_or_else(|| panic!("paused id {paused_id} not printed:\n{err}"));
    assert!(paused_line.contains("long.wav"), "{paused_line}");
    assert!(
        err.contains("to resume, run the same command again"),
        "{err}"
    );
    // Progress on a pipe: plain event lines with time stamps, no escape codes.
    assert!(
        !err.contains('\u{1b}'),
        "escape codes on a non-terminal:\n{err}"
    );
    assert!(
        err.lines()
            .any(|l| l.starts_with("[0:") && l.contains("clip0.wav: transcribe done in")),
        "{err}"
    );

    // The same command again resumes the paused split task: it completes in its segments.
    let run = env.bin(&args).run();
    assert_eq!(
        run.code, 0,
        "stdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    let m = manifest(&data, &paused_id);
    assert_eq!(m["status"], "completed", "{m:#}");
    let d = &m["stages"]["transcribe"]["detail"];
    assert!(
        d["segments_planned"].as_u64() >= Some(2),
        "not split: {d:#}"
    );
    let text = std::fs::read_to_string(data.join("tasks").join(&paused_id).join("transcript.txt"))
        .unwrap();
    assert!(text.split_whitespace().count() >= 80, "{text}");
}

#[test]
fn no_workers_says_which_queues_nobody_serves_and_json_has_the_paths() {
    let tmp = tempfile::tempdir().unwrap();
    let clip = short_clips(tmp.path(), 1).remove(0);
    let env = Env::new(&tmp.path().join("data"));
    // A worker for downloads only: transcribe and summarize have nobody.
    let mut downloads = env.bin(&["worker", "--stages", "download"]).start();
    downloads.wait_line("Ctrl-C to stop");
    let mut p =
        Captured::start(env.bin(&["process", "--no-workers", "--json", clip.to_str().unwrap()]));
    p.wait_stderr(
        "no worker is taking jobs from the transcribe, summarize queues",
        Duration::from_secs(30),
    );
    assert!(p.child.try_wait().unwrap().is_none(), "it stopped waiting");
    let mut rest = env
        .bin(&["worker", "--stages", "transcribe,summarize"])
        .start();
    rest.wait_line("Ctrl-C to stop");
    let (code, _) = p.wait_exit(Duration::from_secs(600));
    let (out, err) = (p.stdout(), p.stderr());
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");

    let m: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON line");
    assert_eq!(m["status"], "completed");
    let dir = PathBuf::from(m["task_dir"].as_str().expect("task_dir"));
    assert!(dir.join("manifest.json").is_file(), "{}", dir.display());
    let paths = m["output_paths"].as_object().expect("output_paths");
    for f in [
        "transcript.txt",
        "transcript.srt",
        "summary.md",
        "audio.wav",
    ] {
        let p = PathBuf::from(
            paths[f]
                .as_str()
                .unwrap_or_else(|| panic!("no {f}: {paths:?}")),
        );
        assert_eq!(p, dir.join(f));
        assert!(p.is_file(), "{} is missing", p.display());
    }
    assert!(
        !err.contains('\u{1b}'),
        "escape codes on a non-terminal:\n{err}"
    );
    drop(rest);
    drop(downloads);
}
