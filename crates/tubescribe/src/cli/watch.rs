//! What `process` shows while its tasks run ([`progress`]) and after ([`report`], or
//! [`interrupted`] after Ctrl-C).
//!
//! While tasks run, each is read from its manifest about ten times a second and shown
//! according to [`Output`]:
//!
//! * **live** (stderr is a terminal): one line per task that fits the terminal's width —
//!   mark, label, stage, bar, percent, ETA, then what the stage is doing (cut to the width);
//!   when there are more tasks than rows, the running ones are shown first and a summary line
//!   counts the rest (`… and 6 more: 4 queued, 2 done`). Only changed lines are rewritten
//!   (`term.rs`), so a run writes a few kB per task, not megabytes;
//! * **plain** (a file or pipe): one line per event — a stage started, its phase changed, it
//!   passed a quarter, it is retried, done or failed — with the time since the start and no
//!   escape codes (`[0:12] talk.mp3: transcribe done in 9.8 s`); causes and warnings are left
//!   to the result lines, so each is said once;
//! * **quiet** (`--json`): nothing.
//!
//! With `--no-workers`, the queues' worker lists are checked every 5 s and a missing worker is
//! said once ([`WorkerProbe`]). Afterwards each task gets a result line with its output files
//! (or, with `--json`, its manifest plus `task_dir` and `output_paths` as one JSON line).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio_util::sync::CancellationToken;

use super::term::{self, Line, Output, Tone};
use crate::domain::manifest::{display_title, Manifest, StageRecord, StageState, TaskStatus};
use crate::domain::Stage;
use crate::engine::producer::Producer;
use crate::store::{names, DataDir, TaskDir};

/// One task `process` watches: its id and the input it was submitted as on this command line.
#[derive(Debug, Clone)]
pub(super) struct Watched {
    /// The task id.
    pub id: String,
    /// The input as the user typed it.
    pub input: String,
}

/// Where `--no-workers` looks for workers: the producer on the Redis at `url`.
pub(super) struct WorkerProbe<'a> {
    /// A producer on the queues' Redis.
    pub producer: &'a Producer,
    /// That Redis' URL, for the message.
    pub url: &'a str,
}

/// How long `--no-workers` waits before saying that no worker takes the jobs, and how often
/// it looks again.
const WORKER_CHECK: Duration = Duration::from_secs(5);

/// Shows the tasks' progress as `out` says until every task is final. Returns true when
/// `stop` was cancelled first (Ctrl-C / SIGTERM); the live block is erased either way.
pub(super) async fn progress(
    data: &DataDir,
    tasks: &[Watched],
    out: Output,
    probe: Option<WorkerProbe<'_>>,
    stop: &CancellationToken,
) -> bool {
    let live = match out {
        Output::Live { color } => Some(term::Live::new(color)),
        _ => None,
    };
    // Notes are warnings, not progress: said in every mode.
    let say = |text: &str| match &live {
        Some(l) => l.note(text),
        None => eprintln!("{}", term::clean(text)),
    };
    let t0 = Instant::now();
    let mut seen: Vec<Option<Seen>> = vec![None; tasks.len()];
    let mut held: Vec<Option<Held>> = vec![None; tasks.len()];
    let mut paces: Vec<Option<Pace>> = vec![None; tasks.len()];
    let mut workers = WorkerCheck::new(probe);
    // ≤ 10 redraws a second; more tasks are read less often.
    let tick = Duration::from_millis((100 + 2 * tasks.len() as u64).min(1000));
    let mut stopped = false;
    loop {
        let ms: Vec<Option<Manifest>> = tasks
            .iter()
            .map(|t| data.task(&t.id).read_manifest().ok())
            .collect();
        match &live {
            Some(l) => {
                let rows: Vec<Row> = tasks
                    .iter()
                    .zip(&ms)
                    .zip(paces.iter_mut())
                    .map(|((t, m), pace)| Row::new(t, m.as_ref(), pace))
                    .collect();
                let (cols, height) = l.size();
                let lines: Vec<Line> = frame(&rows, cols.saturating_sub(1), height)
                    .into_iter()
                    .map(|(i, line)| match i {
                        Some(i) => steady(&mut held[i], &rows[i], line),
                        None => line,
                    })
                    .collect();
                l.draw(&lines);
            }
            None if out == Output::Plain => {
                let at = clock(t0.elapsed());
                for ((t, m), s) in tasks.iter().zip(&ms).zip(seen.iter_mut()) {
                    let Some(m) = m else { continue };
                    let label = task_label(m, &t.input);
                    for e in events(s.as_ref(), m) {
                        eprintln!("{at} {label}: {e}");
                    }
                    *s = Some(Seen::of(m));
                }
            }
            None => {}
        }
        if stopped {
            return true;
        }
        if ms
            .iter()
            .all(|m| m.as_ref().is_some_and(|m| m.status.is_final()))
        {
            return false;
        }
        if let Some(note) = workers.check(t0.elapsed()).await {
            say(&note);
        }
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = stop.cancelled() => {
                // Plain mode says once more what happened since the last look; a live
                // block is erased anyway.
                if out != Output::Plain {
                    return true;
                }
                stopped = true;
            }
        }
    }
}

/// How often a running task's numbers (percent, bar, ETA) may change on its live line; what
/// it is doing (stage, phase, state) shows at once.
const NUMBERS_EVERY: Duration = Duration::from_secs(1);

/// A live line as last shown, with what it said apart from its numbers and when.
#[derive(Clone)]
struct Held {
    words: String,
    line: Line,
    at: Instant,
}

/// `line` for `row`, or the line `held` from less than [`NUMBERS_EVERY`] ago when only its
/// numbers changed: this bounds what a long run writes to the terminal.
fn steady(held: &mut Option<Held>, row: &Row, line: Line) -> Line {
    let words = match (row.class(), row.m.and_then(current)) {
        (Class::Running, Some((s, r))) => format!("{s} {}", activity(s, r)),
        _ => line.text(),
    };
    if let Some(h) = held {
        if h.words == words && h.at.elapsed() < NUMBERS_EVERY {
            return h.line.clone();
        }
    }
    *held = Some(Held {
        words,
        line: line.clone(),
        at: Instant::now(),
    });
    line
}

/// The `--no-workers` check: which stage queues have no worker, said when that changes.
struct WorkerCheck<'a> {
    probe: Option<WorkerProbe<'a>>,
    next: Duration,
    missing: Vec<Stage>,
}

impl<'a> WorkerCheck<'a> {
    fn new(probe: Option<WorkerProbe<'a>>) -> Self {
        Self {
            probe,
            next: WORKER_CHECK,
            missing: Vec::new(),
        }
    }

    /// Every [`WORKER_CHECK`] (at `elapsed` since the start): a sentence when the set of
    /// stage queues without a worker changed.
    async fn check(&mut self, elapsed: Duration) -> Option<String> {
        let p = self.probe.as_ref()?;
        if elapsed < self.next {
            return None;
        }
        self.next = elapsed + WORKER_CHECK;
        let mut missing = Vec::new();
        for s in Stage::ALL {
            // Unknown (Redis briefly unreachable) counts as present: no false alarm.
            if p.producer.worker_count(s).await.is_ok_and(|n| n == 0) {
                missing.push(s);
            }
        }
        if missing == self.missing {
            return None;
        }
        self.missing = missing;
        Some(if self.missing.is_empty() {
            "a worker is taking jobs from every queue now".to_string()
        } else {
            let names: Vec<&str> = self.missing.iter().map(|s| s.queue_name()).collect();
            format!(
                "no worker is taking jobs from the {} queue{} on {}: start one with \
                 `tubescribe worker` on the same Redis (or run without --no-workers); \
                 still waiting, Ctrl-C to stop",
                names.join(", "),
                if names.len() > 1 { "s" } else { "" },
                p.url
            )
        })
    }
}

/// `d` as `m:ss`, in brackets (plain mode's time stamps).
fn clock(d: Duration) -> String {
    let s = d.as_secs();
    format!("[{}:{:02}]", s / 60, s % 60)
}

/// A duration in seconds for people: `0.4 s`, `12 s`, `3m05s`.
fn human_s(s: f64) -> String {
    match s {
        s if s < 10.0 => format!("{s:.1} s"),
        s if s < 60.0 => format!("{s:.0} s"),
        s => {
            let s = s.round() as u64;
            format!("{}m{:02}s", s / 60, s % 60)
        }
    }
}

/// Where a task is, as the live block and its summary line count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    /// A stage is running (shown first).
    Running,
    /// A stage waits to be retried.
    Retrying,
    /// Failed or cancelled.
    Failed,
    /// Not started, or waiting for its next stage.
    Queued,
    /// Completed (with or without warnings).
    Done,
}

/// One task as the live block shows it.
struct Row<'a> {
    label: String,
    m: Option<&'a Manifest>,
    /// Seconds its running stage has left, when known.
    eta: Option<f64>,
}

impl<'a> Row<'a> {
    fn new(t: &Watched, m: Option<&'a Manifest>, pace: &mut Option<Pace>) -> Self {
        let label = m.map_or_else(|| input_label(&t.input), |m| task_label(m, &t.input));
        let eta = m.and_then(|m| eta_s(m, pace));
        Row { label, m, eta }
    }

    fn class(&self) -> Class {
        let Some(m) = self.m else {
            return Class::Queued;
        };
        match m.status {
            s if s.is_completed() => Class::Done,
            TaskStatus::Failed | TaskStatus::Cancelled => Class::Failed,
            _ => match current(m) {
                Some((_, r)) if r.state == StageState::Active => Class::Running,
                Some((_, r)) if r.attempts > 0 && r.error.is_some() => Class::Retrying,
                _ => Class::Queued,
            },
        }
    }
}

/// The stage a non-final task is at: the running one, else the first one not done.
fn current(m: &Manifest) -> Option<(Stage, &StageRecord)> {
    let stages = || {
        Stage::ALL
            .into_iter()
            .filter_map(|s| m.stage(s).map(|r| (s, r)))
    };
    stages()
        .find(|(_, r)| r.state == StageState::Active)
        .or_else(|| {
            stages().find(|(_, r)| {
                !matches!(
                    r.state,
                    StageState::Completed | StageState::Skipped | StageState::Cancelled
                )
            })
        })
}

/// The live block for `rows` in `cols` columns and a terminal of `height` rows: one line per
/// task, or — with more tasks than fit in `height − 2` lines — the most interesting ones
/// (running, retrying, failed, queued, done; in input order) and a summary line of the rest.
fn frame(rows: &[Row], cols: usize, height: usize) -> Vec<(Option<usize>, Line)> {
    let fits = height.saturating_sub(2).max(1);
    let shown: Vec<usize> = if rows.len() <= fits {
        (0..rows.len()).collect()
    } else {
        let mut by_rank: Vec<usize> = (0..rows.len()).collect();
        by_rank.sort_by_key(|&i| (rows[i].class(), i));
        let mut v = by_rank[..fits - 1].to_vec();
        v.sort_unstable();
        v
    };
    let label_w = rows
        .iter()
        .map(|r| term::width(&r.label))
        .max()
        .unwrap_or(0)
        .min((cols / 4).max(8));
    let mut lines: Vec<(Option<usize>, Line)> = shown
        .iter()
        .map(|&i| (Some(i), task_line(&rows[i], label_w, cols)))
        .collect();
    if shown.len() < rows.len() {
        let hidden: Vec<Class> = (0..rows.len())
            .filter(|i| !shown.contains(i))
            .map(|i| rows[i].class())
            .collect();
        let count = |c: &[Class]| hidden.iter().filter(|h| c.contains(h)).count();
        let parts: Vec<String> = [
            (count(&[Class::Running]), "running"),
            (count(&[Class::Queued, Class::Retrying]), "queued"),
            (count(&[Class::Done]), "done"),
            (count(&[Class::Failed]), "failed"),
        ]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}"))
        .collect();
        lines.push((
            None,
            Line::new().push(
                &format!("… and {} more: {}", hidden.len(), parts.join(", ")),
                Tone::Dim,
            ),
        ));
    }
    lines
}

/// One task's live line: mark, label (padded to `label_w`), then its state; the bar only
/// when `cols` leaves room for it.
fn task_line(row: &Row, label_w: usize, cols: usize) -> Line {
    let line = |mark: &str, tone: Tone| {
        Line::new()
            .push(mark, tone)
            .push(" ", Tone::Plain)
            .push(&term::pad(&row.label, label_w), Tone::Plain)
            .push("  ", Tone::Plain)
    };
    let Some(m) = row.m else {
        return line("·", Tone::Dim).push("queued", Tone::Dim);
    };
    match row.class() {
        Class::Done => {
            let took = task_seconds(m).map(|s| format!(" in {}", human_s(s)));
            let done = format!("done{}", took.unwrap_or_default());
            match m.warnings.first() {
                None => line("✔", Tone::Good).push(&done, Tone::Good),
                Some(w) => line("⚠", Tone::Warn)
                    .push(&done, Tone::Warn)
                    .push(&format!(" · {}", w.message), Tone::Warn),
            }
        }
        Class::Failed if m.status == TaskStatus::Cancelled => {
            line("✘", Tone::Bad).push("cancelled", Tone::Bad)
        }
        Class::Failed => {
            let why = m.failure_line().unwrap_or_else(|| "failed".to_string());
            line("✘", Tone::Bad).push(&why, Tone::Bad)
        }
        Class::Queued => match current(m) {
            Some((s, _)) if s != Stage::Download => {
                line("·", Tone::Dim).push(&format!("{s:<10} queued"), Tone::Dim)
            }
            _ => line("·", Tone::Dim).push("queued", Tone::Dim),
        },
        Class::Retrying => {
            let (s, r) = current(m).expect("a retrying task has a current stage");
            line("↻", Tone::Warn)
                .push(&format!("{s:<10} "), Tone::Bold)
                .push(
                    &format!("retrying after: {}", r.error.as_deref().unwrap_or("")),
                    Tone::Warn,
                )
        }
        Class::Running => {
            let (s, r) = current(m).expect("a running task has a current stage");
            let p = r.progress.clamp(0.0, 100.0);
            let mut l = line("›", Tone::Busy).push(&format!("{s:<10} "), Tone::Bold);
            if cols >= 72 {
                l = l.push(&bar(p, 10), Tone::Busy).push(" ", Tone::Plain);
            }
            l = l.push(&format!("{:>3.0}%", p.floor()), Tone::Plain);
            if let Some(eta) = row.eta {
                l = l.push(&format!("  ETA {}", compact_s(eta)), Tone::Plain);
            }
            l.push(&format!("  {}", activity(s, r)), Tone::Dim)
        }
    }
}

/// `[=====>    ]` for `p` percent with `inner` columns between the brackets.
fn bar(p: f64, inner: usize) -> String {
    let filled = ((p / 100.0) * inner as f64).floor() as usize;
    let head = if filled < inner && p > 0.0 { ">" } else { "" };
    let rest = inner - filled.min(inner) - head.len();
    format!(
        "[{}{head}{}]",
        "=".repeat(filled.min(inner)),
        " ".repeat(rest)
    )
}

/// Seconds as `5s` or `1m05s` (the ETA column).
fn compact_s(s: f64) -> String {
    let s = s.round().max(0.0) as u64;
    if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    }
}

/// A running stage's progress when the watch first saw it in this attempt and phase (its
/// numbers left out: segment 2/5 and 3/5 are one phase), and when.
#[derive(Debug, Clone)]
struct Pace {
    stage: Stage,
    attempts: u32,
    phase: String,
    percent: f64,
    at: Instant,
}

/// The running stage's time left in seconds: the downloader's own estimate, else the pace
/// seen since the watch first saw this attempt in its current phase (`pace`, kept between
/// calls; decoding is much faster than recognition, so it does not count for it), once the
/// progress moved on from there. Progress that stands still gives no estimate rather than a
/// growing one.
fn eta_s(m: &Manifest, pace: &mut Option<Pace>) -> Option<f64> {
    let Some((s, r)) = current(m).filter(|(_, r)| r.state == StageState::Active) else {
        *pace = None;
        return None;
    };
    if s == Stage::Download {
        if let Some(e) = r.detail.get("eta_s").and_then(|v| v.as_f64()) {
            return Some(e);
        }
    }
    let phase: String = activity(s, r)
        .chars()
        .filter(|c| !c.is_ascii_digit())
        .collect();
    match pace {
        Some(p) if p.stage == s && p.attempts == r.attempts && p.phase == phase => {
            let (moved, secs) = (r.progress - p.percent, p.at.elapsed().as_secs_f64());
            (moved >= 1.0 && secs >= 1.0 && r.progress < 100.0)
                .then(|| (100.0 - r.progress) * secs / moved)
        }
        _ => {
            *pace = Some(Pace {
                stage: s,
                attempts: r.attempts,
                phase,
                percent: r.progress,
                at: Instant::now(),
            });
            None
        }
    }
}

/// What a running stage is doing: its phase (`transcribing segment 2/5`), with the speed for
/// a download.
fn activity(s: Stage, r: &StageRecord) -> String {
    let phase = r
        .detail
        .get("phase")
        .and_then(|v| v.as_str())
        .unwrap_or("running");
    match (s, r.detail.get("speed_bps").and_then(|v| v.as_f64())) {
        (Stage::Download, Some(sp)) if sp > 0.0 => format!("{phase} {:.1} MB/s", sp / 1e6),
        _ => phase.to_string(),
    }
}

/// Wall time of a final task: from its first stage's start to its last stage's end.
fn task_seconds(m: &Manifest) -> Option<f64> {
    let start = m.stages.values().filter_map(|r| r.started_at).min()?;
    let end = m.stages.values().filter_map(|r| r.finished_at).max()?;
    Some(end.saturating_sub(start) as f64 / 1000.0)
}

/// What plain mode last printed a task at: per stage its state, attempts, phase and quarter.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    status: TaskStatus,
    stages: Vec<(StageState, u32, String, u8)>,
}

impl Seen {
    fn of(m: &Manifest) -> Seen {
        Seen {
            status: m.status,
            stages: Stage::ALL
                .iter()
                .map(|s| match m.stage(*s) {
                    Some(r) => (r.state, r.attempts, phase(r), quarter(r)),
                    None => (StageState::Waiting, 0, String::new(), 0),
                })
                .collect(),
        }
    }
}

fn phase(r: &StageRecord) -> String {
    match r.state {
        StageState::Active => r
            .detail
            .get("phase")
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string(),
        _ => String::new(),
    }
}

fn quarter(r: &StageRecord) -> u8 {
    match r.state {
        StageState::Active => (r.progress.clamp(0.0, 99.9) / 25.0) as u8,
        _ => 0,
    }
}

/// Plain mode's lines for what changed in `m` since `before` (`None`: first seen — a task
/// found final says only how it ended). They never repeat a failure's cause or a warning:
/// the result lines say those once.
fn events(before: Option<&Seen>, m: &Manifest) -> Vec<String> {
    let now = Seen::of(m);
    let mut out = Vec::new();
    if before == Some(&now) {
        return out;
    }
    let first_final = before.is_none() && m.status.is_final();
    if before.is_none() && !first_final {
        // First sight of a task under way (e.g. joined from an earlier run): where it is,
        // not a replay of its record.
        out.push(match current(m) {
            Some((s, r)) if r.state == StageState::Active => format!("{s} running"),
            Some((s, _)) if m.status != TaskStatus::Queued => format!("{s} queued"),
            _ => "queued".to_string(),
        });
        return out;
    }
    for (i, s) in Stage::ALL.into_iter().enumerate() {
        let (Some(r), false) = (m.stage(s), first_final) else {
            continue;
        };
        let (state, attempts, ph, q) = &now.stages[i];
        let old = before.map(|b| &b.stages[i]);
        let moved = old.is_none_or(|o| o.0 != *state || o.1 != *attempts);
        match state {
            StageState::Active if moved => {
                out.push(match attempts {
                    0 | 1 => format!("{s} started"),
                    n => format!("{s} started (attempt {n})"),
                });
                if !ph.is_empty() {
                    out.push(format!("{s}: {ph}"));
                }
            }
            StageState::Active => {
                if old.is_some_and(|o| o.2 != *ph) && !ph.is_empty() {
                    out.push(format!("{s}: {ph}"));
                }
                if old.is_some_and(|o| o.3 < *q) {
                    out.push(format!("{s} {}%", *q as u32 * 25));
                }
            }
            // Causes are not repeated here: a failure is said once, by its `✘` line (and each
            // attempt's with --verbose).
            StageState::Waiting if moved && *attempts > 0 => {
                out.push(format!("{s} attempt {attempts} failed; retrying"));
            }
            StageState::Completed if moved && old.is_some() => {
                let took = match (r.started_at, r.finished_at) {
                    (Some(a), Some(b)) => {
                        format!(" in {}", human_s(b.saturating_sub(a) as f64 / 1000.0))
                    }
                    _ => String::new(),
                };
                out.push(format!("{s} done{took}"));
            }
            StageState::Failed if moved => out.push(format!("{s} failed")),
            _ => {}
        }
    }
    if m.status.is_final() && before.is_none_or(|b| !b.status.is_final()) {
        out.push(match m.status {
            TaskStatus::Completed => "done".to_string(),
            TaskStatus::CompletedWithWarnings => match m.warnings.len() {
                1 => "done, with a warning".to_string(),
                n => format!("done, with {n} warnings"),
            },
            TaskStatus::Cancelled => "cancelled".to_string(),
            _ => "failed".to_string(),
        });
    }
    out.into_iter().map(|e| term::clean(&e)).collect()
}

/// The task's files for users, in the order they are listed: summary, transcripts, audio.
const LISTED: [&str; 6] = [
    names::SUMMARY_MD,
    names::TRANSCRIPT_TXT,
    names::TRANSCRIPT_SRT,
    names::TRANSCRIPT_VTT,
    names::TRANSCRIPT_JSON,
    names::AUDIO_WAV,
];

/// Prints each task's result: with `json` its manifest as one JSON line ([`json_line`]);
/// else `✔`/`⚠` with the id and title (cut to the terminal's width), warnings and output
/// files on stdout, or one `✘` line with the failure on stderr. Returns how many tasks did
/// not complete.
///
/// # Errors
/// A manifest that cannot be read.
pub(super) fn report(data: &DataDir, tasks: &[Watched], json: bool) -> Result<usize> {
    let mut failed = 0;
    for t in tasks {
        let dir = data.task(&t.id);
        let m = dir.read_manifest()?;
        if !m.status.is_completed() {
            failed += 1;
        }
        if json {
            println!("{}", json_line(&dir, &m)?);
        } else {
            print_result(&dir, &m, &t.input);
        }
    }
    Ok(failed)
}

/// One task's human result block (see [`report`]); nothing for a task that is not final.
fn print_result(dir: &TaskDir, m: &Manifest, input: &str) {
    let cols = term::stdout_columns().map(|c| c.saturating_sub(1));
    let head = |mark: &str, rest: &str| {
        let l = format!("{mark} {}  {rest}", m.task_id);
        match cols {
            Some(c) => term::fit(&l, c),
            None => term::clean(&l),
        }
    };
    match m.status {
        TaskStatus::Completed | TaskStatus::CompletedWithWarnings => {
            let title = m
                .video
                .as_ref()
                .and_then(|v| v.title.as_deref())
                .map(display_title)
                .unwrap_or_default();
            let mark = if m.warnings.is_empty() { "✔" } else { "⚠" };
            println!("{}", head(mark, &title));
            for w in &m.warnings {
                println!("    warning: {}", term::clean(&w.message));
            }
            for n in LISTED {
                println!("    {}", location(dir, n));
            }
        }
        TaskStatus::Failed | TaskStatus::Cancelled => {
            // A failure is an error: on stderr, once, in the user's words.
            let why = m
                .failure_line()
                .unwrap_or_else(|| m.status.as_str().to_string());
            let line = format!("✘ {}  {}  {why}", m.task_id, task_label(m, input));
            match term::stderr_columns() {
                Some(c) => eprintln!("{}", term::fit(&line, c.saturating_sub(1))),
                None => eprintln!("{}", term::clean(&line)),
            }
        }
        TaskStatus::Queued | TaskStatus::Running => {}
    }
}

/// `m` as one JSON object with two more keys: `task_dir` (the task's directory) and
/// `output_paths` (each recorded output file's name → its path).
fn json_line(dir: &TaskDir, m: &Manifest) -> Result<String> {
    let mut v = serde_json::to_value(m)?;
    let paths: serde_json::Map<String, serde_json::Value> = m
        .stages
        .values()
        .flat_map(|r| &r.outputs)
        .map(|o| (o.name.clone(), serde_json::json!(location(dir, &o.name))))
        .collect();
    if let Some(obj) = v.as_object_mut() {
        let task_dir = match dir.object_url("") {
            Some(u) => u.trim_end_matches('/').to_string(),
            None => absolute(dir.path().to_path_buf()).display().to_string(),
        };
        obj.insert("task_dir".into(), serde_json::json!(task_dir));
        obj.insert("output_paths".into(), serde_json::Value::Object(paths));
    }
    Ok(serde_json::to_string(&v)?)
}

/// Where output `name` of `dir` is: its absolute path, or with shared storage its object's
/// `s3://` URL.
fn location(dir: &TaskDir, name: &str) -> String {
    dir.object_url(name)
        .unwrap_or_else(|| absolute(dir.file(name)).display().to_string())
}

fn absolute(p: PathBuf) -> PathBuf {
    std::path::absolute(&p).unwrap_or(p)
}

/// After Ctrl-C: the finished tasks' results as [`report`] prints them (with `json`, every
/// task's JSON line, final or not), then on stderr the paused tasks — id, label, where they
/// stopped — and how to resume them (`fresh`: the command ran with `--fresh`).
///
/// # Errors
/// A manifest that cannot be read.
pub(super) fn interrupted(
    data: &DataDir,
    tasks: &[Watched],
    json: bool,
    fresh: bool,
) -> Result<()> {
    let mut paused = Vec::new();
    for t in tasks {
        let dir = data.task(&t.id);
        let m = dir.read_manifest()?;
        if json {
            println!("{}", json_line(&dir, &m)?);
        } else {
            print_result(&dir, &m, &t.input);
        }
        if !m.status.is_final() {
            let at = match current(&m) {
                Some((s, r)) if r.state == StageState::Active || r.progress > 0.0 => {
                    format!("{s} {:.0}%", r.progress.floor())
                }
                Some((s, _)) if s != Stage::Download => format!("{s} queued"),
                _ => "queued".to_string(),
            };
            paused.push(format!("{}  {}  ({at})", t.id, task_label(&m, &t.input)));
        }
    }
    if paused.is_empty() {
        return Ok(());
    }
    let n = paused.len();
    eprintln!(
        "paused: {n} task{} not finished; {} in the queue:",
        if n > 1 { "s" } else { "" },
        if n > 1 {
            "their jobs stay"
        } else {
            "its jobs stay"
        }
    );
    for p in paused {
        eprintln!("    {}", term::clean(&p));
    }
    eprintln!(
        "to resume, run the same command again {},",
        if fresh {
            "without --fresh"
        } else {
            "(finished inputs are reused)"
        }
    );
    eprintln!("or run `tubescribe worker` to finish them in the background");
    Ok(())
}

/// A short human label for a task: its title, else the last part of `input` (file name or URL
/// path), at most 32 characters, control and bidi characters escaped.
fn task_label(m: &Manifest, input: &str) -> String {
    match m
        .video
        .as_ref()
        .and_then(|v| v.title.as_deref())
        .filter(|t| !t.trim().is_empty())
    {
        Some(t) => short(&display_title(t)),
        None => input_label(input),
    }
}

/// The last part of an input (file name or URL path) as a label ([`task_label`]).
fn input_label(input: &str) -> String {
    let i = input.trim_end_matches('/');
    short(&display_title(i.rsplit('/').next().unwrap_or(i)))
}

fn short(s: &str) -> String {
    if s.chars().count() > 32 {
        format!("{}…", s.chars().take(31).collect::<String>())
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::manifest::{Source, Warning};

    fn manifest(id: &str) -> Manifest {
        let path = format!("/in/{id}.wav");
        Manifest::new(id, &path, Source::File { path: path.clone() })
    }

    fn running(id: &str, stage: Stage, progress: f64, phase: &str) -> Manifest {
        let mut m = manifest(id);
        m.status = TaskStatus::Running;
        for s in Stage::ALL.into_iter().filter(|s| *s < stage) {
            let r = m.stages.get_mut(&s).unwrap();
            r.state = StageState::Completed;
            r.progress = 100.0;
        }
        let r = m.stages.get_mut(&stage).unwrap();
        r.state = StageState::Active;
        r.attempts = 1;
        r.progress = progress;
        r.started_at = Some(1_000);
        r.detail.insert("phase".into(), serde_json::json!(phase));
        m
    }

    fn done(id: &str) -> Manifest {
        let mut m = manifest(id);
        m.status = TaskStatus::Completed;
        for r in m.stages.values_mut() {
            r.state = StageState::Completed;
            r.started_at = Some(1_000);
            r.finished_at = Some(4_500);
        }
        m
    }

    fn rows<'a>(ms: &'a [Manifest], long: &str) -> Vec<Row<'a>> {
        ms.iter()
            .enumerate()
            .map(|(i, m)| Row {
                label: if i == 0 {
                    long.to_string()
                } else {
                    m.task_id.clone()
                },
                m: Some(m),
                eta: (m.status == TaskStatus::Running).then_some(14.0),
            })
            .collect()
    }

    #[test]
    fn frame_fits_the_width_and_sums_up_what_does_not_fit() {
        let mut ms = vec![
            done("done-1"),
            running("run-1", Stage::Transcribe, 42.0, "transcribing segment 2/5"),
        ];
        let mut w = done("warned");
        w.status = TaskStatus::CompletedWithWarnings;
        w.warnings.push(Warning {
            stage: Stage::Transcribe,
            message: "a very long warning ".repeat(10),
        });
        ms.push(w);
        ms.push(running("run-2", Stage::Download, 10.0, "downloading"));
        for i in 0..6 {
            ms.push(manifest(&format!("queued-{i}")));
        }
        let rows = rows(&ms, "日本語のとても長いタイトルが続きます（第一回）");
        // 10 tasks, 24 rows: every task on its own line, none wider than 79 columns.
        let f: Vec<Line> = frame(&rows, 79, 24).into_iter().map(|(_, l)| l).collect();
        assert_eq!(f.len(), 10);
        for l in &f {
            assert!(term::width(&l.render(79, false)) <= 79, "{}", l.text());
        }
        let run = f[1].render(79, false);
        assert!(
            run.contains("transcribe") && run.contains("42%") && run.contains("ETA 14s"),
            "{run}"
        );
        // 10 tasks, 6 rows: 3 task lines (both running ones among them) and a summary.
        let f: Vec<String> = frame(&rows, 60, 6)
            .iter()
            .map(|(_, l)| l.render(60, false))
            .collect();
        assert_eq!(f.len(), 4, "{f:#?}");
        assert!(f.iter().any(|l| l.contains("run-1")), "{f:#?}");
        assert!(f.iter().any(|l| l.contains("run-2")), "{f:#?}");
        assert_eq!(f[3], "… and 7 more: 5 queued, 2 done", "{f:#?}");
    }

    #[test]
    fn plain_events_say_what_changed_once() {
        let q = manifest("t");
        assert_eq!(events(None, &q), ["queued"]);
        let r = running("t", Stage::Transcribe, 30.0, "transcribing");
        let e = events(Some(&Seen::of(&q)), &r);
        assert_eq!(
            e,
            [
                "download done",
                "transcribe started",
                "transcribe: transcribing"
            ]
        );
        assert!(events(Some(&Seen::of(&r)), &r).is_empty());
        let r2 = running("t", Stage::Transcribe, 55.0, "transcribing");
        assert_eq!(events(Some(&Seen::of(&r)), &r2), ["transcribe 50%"]);
        assert_eq!(events(None, &done("t")), ["done"]);
        assert_eq!(events(None, &r2), ["transcribe running"]);
        // A retry and a failure say what happened, never why (the ✘ line does, once).
        let mut retry = r2.clone();
        let rr = retry.stages.get_mut(&Stage::Transcribe).unwrap();
        rr.state = StageState::Waiting;
        rr.error = Some("the cause".into());
        assert_eq!(
            events(Some(&Seen::of(&r2)), &retry),
            ["transcribe attempt 1 failed; retrying"]
        );
    }

    #[test]
    fn eta_comes_from_the_pace_seen_and_never_from_standing_still() {
        let m = running("t", Stage::Transcribe, 30.0, "transcribing");
        let mut pace = None;
        assert_eq!(eta_s(&m, &mut pace), None, "first sight: no pace yet");
        let ten_s_ago = Instant::now() - Duration::from_secs(10);
        pace.as_mut().unwrap().at = ten_s_ago;
        assert_eq!(eta_s(&m, &mut pace), None, "30 % for 10 s: standing still");
        pace.as_mut().unwrap().percent = 10.0;
        let close_to = |m: &Manifest, pace: &mut Option<Pace>, want: f64| {
            let eta = eta_s(m, pace).expect("an estimate");
            assert!((eta - want).abs() < 0.5, "{eta} s left, not {want}");
        };
        close_to(&m, &mut pace, 35.0); // 10 → 30 % in 10 s
                                       // The next segment keeps the pace; the next phase or stage starts its own.
        let seg = running("t", Stage::Transcribe, 50.0, "transcribing segment 2/5");
        assert_eq!(eta_s(&seg, &mut pace), None);
        pace.as_mut().unwrap().at = ten_s_ago;
        let seg3 = running("t", Stage::Transcribe, 70.0, "transcribing segment 3/5");
        close_to(&seg3, &mut pace, 15.0); // 50 → 70 % in 10 s
        let next = running("t", Stage::Summarize, 50.0, "summarizing");
        assert_eq!(eta_s(&next, &mut pace), None);
        assert_eq!(pace.unwrap().stage, Stage::Summarize);
    }

    #[test]
    fn bar_and_durations() {
        assert_eq!(bar(0.0, 10), "[          ]");
        assert_eq!(bar(42.0, 10), "[====>     ]");
        assert_eq!(bar(100.0, 10), "[==========]");
        assert_eq!(compact_s(65.0), "1m05s");
        assert_eq!(human_s(3.5), "3.5 s");
        assert_eq!(human_s(185.0), "3m05s");
    }
}
