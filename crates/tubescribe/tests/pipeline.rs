//! The stages without the queue: download → transcribe → summarize run through
//! `pipeline::run` on a real task directory, with no Redis at all (no redis-server, no
//! BullMQ). A short clip takes the whole-file path; a ≈ 80 s talk made of the shared English
//! clips, with a small `segment_s`, is cut in its pauses, its ranges are transcribed one after
//! the other in this process and joined with the same pieces as the engine's segment jobs.

mod common;

use std::collections::HashMap;
use std::path::Path;

use common::*;
use tubescribe::config::{Config, Overrides};
use tubescribe::domain::manifest::{AttemptOutcome, Manifest, Source, TaskStatus};
use tubescribe::domain::transcript::{word_error_rate, Transcript};
use tubescribe::domain::{Progress, Stage};
use tubescribe::pipeline::{segmenting, JobCtx, StageCtx};
use tubescribe::store::{DataDir, TaskDir};
use tubescribe::tools::asr;

/// Segment length of the long test: four ranges of ≈ 16 s; a cut's search window of ± 5 s
/// always holds one of the talk's pauses.
const SEGMENT_S: f64 = 20.0;
/// Pause between the clips of the long talk (digital silence).
const PAUSE_S: f64 = 1.5;

/// A stage context over a fresh data directory: tiny.en, 2 threads, offline summaries,
/// `language` fixed or not (`None` runs the language guard).
fn stage_ctx(data: &Path, segment_s: f64, language: Option<&str>) -> StageCtx {
    let mut cfg = Config::resolve(&Overrides {
        data_dir: Some(data.to_path_buf()),
        model: Some(model()),
        threads: Some(2),
        ..Overrides::default()
    })
    .unwrap();
    cfg.schedule.segment_s = segment_s;
    cfg.llm = None;
    cfg.language = language.map(String::from);
    let data = DataDir::open(&cfg.data_dir).unwrap();
    StageCtx::new(cfg, data)
}

/// What one task's run through the stages left behind.
struct Ran {
    task: TaskDir,
    /// Every progress phase the transcribe stage reported, in order, without repeats.
    transcribe_phases: Vec<String>,
}

/// Creates task `id` for the local file `media` and runs its three stages with
/// `pipeline::run`, recording each attempt's start and completion in the manifest as the
/// engine does, and handing each stage's result to the next as its child's value.
async fn run_task(ctx: &StageCtx, id: &str, media: &Path) -> Ran {
    let input = media.to_str().unwrap();
    let task = ctx.data.task(id);
    let source = Source::File {
        path: input.to_string(),
    };
    assert!(task.create(&Manifest::new(id, input, source)).unwrap());
    let mut previous: Option<(Stage, serde_json::Value)> = None;
    let mut transcribe_phases = Vec::new();
    for stage in Stage::ALL {
        task.update_manifest(|m| m.start_attempt(stage, 1, "test"))
            .unwrap();
        let (progress, mut rx) = tokio::sync::watch::channel(Progress::default());
        let phases = tokio::spawn(async move {
            let mut seen: Vec<String> = Vec::new();
            while rx.changed().await.is_ok() {
                let phase = rx.borrow_and_update().phase.clone();
                if let Some(p) = phase.filter(|p| seen.last() != Some(p)) {
                    seen.push(p);
                }
            }
            seen
        });
        let children: HashMap<String, serde_json::Value> = previous
            .take()
            .map(|(s, v)| (format!("bull:{}:{}", s.queue_name(), s.job_id(id)), v))
            .into_iter()
            .collect();
        let job = JobCtx {
            stage,
            task_id: id.to_string(),
            task: task.clone(),
            attempt: 1,
            cancel: Default::default(),
            progress,
            children,
        };
        let out = tubescribe::pipeline::run(stage, ctx, &job)
            .await
            .unwrap_or_else(|e| panic!("{stage} failed: {e}"));
        drop(job);
        let seen = phases.await.unwrap();
        if stage == Stage::Transcribe {
            transcribe_phases = seen;
        }
        let result = out.result.clone();
        task.update_manifest(|m| {
            m.record_completion(stage, out.outputs, out.result);
            m.end_attempt(stage, 1, AttemptOutcome::Completed, None);
        })
        .unwrap();
        previous = Some((stage, result));
    }
    Ran {
        task,
        transcribe_phases,
    }
}

/// The task's transcript, checked for order: segments ordered and not overlapping, words
/// ordered and inside their segment.
fn ordered_transcript(task: &TaskDir) -> Transcript {
    let t: Transcript =
        serde_json::from_str(&std::fs::read_to_string(task.file("transcript.json")).unwrap())
            .unwrap();
    assert!(!t.segments.is_empty());
    for s in &t.segments {
        assert!(s.start_ms <= s.end_ms, "{s:?}");
        for w in &s.words {
            assert!(
                s.start_ms <= w.start_ms && w.end_ms <= s.end_ms,
                "word outside: {s:?}"
            );
        }
        assert!(s.words.windows(2).all(|w| w[0].start_ms <= w[1].start_ms));
    }
    for w in t.segments.windows(2) {
        assert!(
            w[0].end_ms <= w[1].start_ms,
            "not ordered: {:?} then {:?}",
            w[0],
            w[1]
        );
    }
    t
}

/// Every output the three stages recorded is in place and not empty, the task is completed
/// and the summary has key points; returns the summary's Markdown.
fn assert_completed(task: &TaskDir) -> String {
    let m = task.read_manifest().unwrap();
    assert_eq!(m.status, TaskStatus::Completed, "{m:?}");
    let names: Vec<&str> = Stage::ALL
        .iter()
        .flat_map(|s| m.stage(*s).unwrap().outputs.iter())
        .map(|o| o.name.as_str())
        .collect();
    for name in [
        "media.wav",
        "audio.wav",
        "transcript.json",
        "transcript.txt",
        "transcript.srt",
        "transcript.vtt",
        "summary.md",
        "summary.json",
    ] {
        assert!(names.contains(&name), "{name} not recorded: {names:?}");
        let len = std::fs::metadata(task.file(name)).unwrap().len();
        assert!(len > 0, "{name} is empty");
    }
    let tmp = task.path().join(".tmp");
    assert!(
        !tmp.exists() || tmp.read_dir().unwrap().next().is_none(),
        "temp files left behind"
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(task.file("summary.json")).unwrap()).unwrap();
    assert!(
        !summary["key_points"].as_array().unwrap().is_empty(),
        "{summary}"
    );
    let md = std::fs::read_to_string(task.file("summary.md")).unwrap();
    assert!(md.trim().len() > 20, "{md}");
    md
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_file_runs_the_stages_without_the_queue() {
    let tmp = tempfile::tempdir().unwrap();
    let (name, fallback) = ENGLISH_CLIPS[0];
    let (wav, reference) = speech(tmp.path(), name, fallback);
    let ctx = stage_ctx(&tmp.path().join("data"), 600.0, None);
    let ran = run_task(&ctx, "file-jfk", &wav).await;
    assert_completed(&ran.task);
    let t = ordered_transcript(&ran.task);
    let text = std::fs::read_to_string(ran.task.file("transcript.txt")).unwrap();
    let wer = word_error_rate(&reference, &text);
    eprintln!("WER {:.1}% on {text:?}", wer * 100.0);
    assert!(wer <= 0.25, "WER {wer}: {text:?} vs {reference:?}");
    assert_eq!(t.language, "en");
    let m = ran.task.read_manifest().unwrap();
    let d = &m.stage(Stage::Transcribe).unwrap().detail;
    assert!(d.get("segment_bounds_ms").is_none(), "not split: {d:?}");
    assert!(d["asr_chunks"].as_u64().unwrap() >= 1, "{d:?}");
    assert_eq!(d["threads"], 2);
    assert!(
        ran.transcribe_phases.iter().any(|p| p == "transcribing"),
        "{:?}",
        ran.transcribe_phases
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_file_is_split_and_merged_in_process() {
    let tmp = tempfile::tempdir().unwrap();
    // Clips in this order, 1.5 s of silence after each: ≈ 64 s.
    let order = [0usize, 1, 2, 3, 4, 0];
    let talk = clip_talk(tmp.path(), "talk", Some(&order), 0.0, PAUSE_S);
    let (reference, gaps) = (talk.reference, talk.pauses_ms);
    let total_ms = talk.samples as u64 * 1000 / 16_000;

    // English fixed: no language guard per range (the short test runs it), for time.
    let ctx = stage_ctx(&tmp.path().join("data"), SEGMENT_S, Some("en"));
    let started = std::time::Instant::now();
    let ran = run_task(&ctx, "file-talk", &talk.wav).await;
    eprintln!(
        "{total_ms} ms of audio through the stages in {:?}",
        started.elapsed()
    );
    assert_completed(&ran.task);

    // Cut points: the pure cut finder's on the decoded audio (the engine's segment jobs use
    // the same), every cut inside a pause.
    let m = ran.task.read_manifest().unwrap();
    let d = &m.stage(Stage::Transcribe).unwrap().detail;
    let bounds: Vec<u64> = serde_json::from_value(d["segment_bounds_ms"].clone()).unwrap();
    eprintln!("split at {bounds:?}; transcribe detail {d:?}");
    let pcm = asr::read_wav_16k_mono(&ran.task.file("audio.wav")).unwrap();
    assert_eq!(
        bounds,
        segmenting::bounds_ms(
            &pcm,
            segmenting::CutRule {
                segment_s: SEGMENT_S,
                slots: 1,
                head_start_s: 0.0,
            }
        )
    );
    let n = bounds.len() - 1;
    assert!(n >= 3, "at least three ranges: {bounds:?}");
    assert_eq!(d["segments_merged"], n);
    assert!(
        bounds.last().unwrap().abs_diff(total_ms) <= 50,
        "{bounds:?}"
    );
    for cut in &bounds[1..bounds.len() - 1] {
        assert!(
            gaps.iter().any(|(a, b)| cut >= a && cut <= b),
            "cut at {cut} ms is not in a pause {gaps:?}"
        );
    }
    let phases = &ran.transcribe_phases;
    for k in [1, n] {
        let want = format!("transcribing segment {k}/{n}");
        assert!(phases.contains(&want), "{want} not reported: {phases:?}");
    }

    // The merge kept the text of every range, in order, with the words inside.
    let t = ordered_transcript(&ran.task);
    for r in bounds.windows(2) {
        let inside: Vec<&str> = t
            .segments
            .iter()
            .filter(|s| s.start_ms >= r[0] && s.start_ms < r[1])
            .map(|s| s.text.as_str())
            .collect();
        assert!(!inside.is_empty(), "no text in {r:?}: {:?}", t.segments);
    }
    assert!(t.segments.last().unwrap().end_ms <= total_ms);
    let text = std::fs::read_to_string(ran.task.file("transcript.txt")).unwrap();
    let wer = word_error_rate(&reference, &text);
    eprintln!("WER {:.2}% on {text:?}", wer * 100.0);
    assert!(wer < 0.15, "split WER {wer:.4}: {text:?}");
    let r = m.stage(Stage::Transcribe).unwrap().result.clone().unwrap();
    assert_eq!(r["segments"].as_u64(), Some(t.segments.len() as u64));
    assert!((r["duration_s"].as_f64().unwrap() * 1000.0 - total_ms as f64).abs() < 50.0);
    assert!(r["rtf"].as_f64().unwrap() > 0.0);
}

/// Attempt 1 of a job of `stage` for task `id`, with `children` as its child jobs' values.
fn job_ctx(
    stage: Stage,
    id: &str,
    task: &TaskDir,
    children: HashMap<String, serde_json::Value>,
) -> JobCtx {
    // The attempt is the job's current one, as the engine's admit step records it.
    task.update_manifest(|m| m.start_attempt(stage, 1, "test"))
        .unwrap();
    JobCtx {
        stage,
        task_id: id.to_string(),
        task: task.clone(),
        attempt: 1,
        cancel: Default::default(),
        progress: tokio::sync::watch::channel(Progress::default()).0,
        children,
    }
}

/// Issue 13, finding 7: ffmpeg killed by a signal while decoding used to fail the task for
/// good with an empty cause ("ffmpeg could not decode the audio: "). A crash says nothing
/// about the media: the failure is retryable and names the signal; no partial audio is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decoder_killed_by_a_signal_is_retryable_and_named() {
    let tmp = tempfile::tempdir().unwrap();
    let (name, fallback) = ENGLISH_CLIPS[0];
    let (wav, _) = speech(tmp.path(), name, fallback);
    let ctx = stage_ctx(&tmp.path().join("data"), 600.0, Some("en"));
    let input = wav.to_str().unwrap();
    let task = ctx.data.task("file-crash");
    let source = Source::File {
        path: input.to_string(),
    };
    assert!(task
        .create(&Manifest::new("file-crash", input, source))
        .unwrap());
    let download = tubescribe::pipeline::run(
        Stage::Download,
        &ctx,
        &job_ctx(Stage::Download, "file-crash", &task, HashMap::new()),
    )
    .await
    .unwrap();
    // An ffmpeg that crashes (SIGSEGV) after writing part of its output.
    let crashing = tmp.path().join("ffmpeg-crashing");
    std::fs::write(
        &crashing,
        "#!/bin/sh\nfor a; do out=\"$a\"; done\nprintf 'RIFF' > \"$out\"\nkill -SEGV $$\n",
    )
    .unwrap();
    std::fs::set_permissions(
        &crashing,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let mut cfg = ctx.cfg.clone();
    cfg.programs.ffmpeg = crashing;
    let crash_ctx = StageCtx::new(cfg, ctx.data.clone());
    let children = HashMap::from([(
        format!("bull:download:{}", Stage::Download.job_id("file-crash")),
        download.result,
    )]);
    let decoded = tubescribe::pipeline::run(
        Stage::Transcribe,
        &crash_ctx,
        &job_ctx(Stage::Transcribe, "file-crash", &task, children),
    )
    .await;
    let Err(err) = decoded else {
        panic!("the decode succeeded with a crashing ffmpeg");
    };
    assert!(err.is_retryable(), "{err:?}");
    assert_eq!(
        err.message,
        "ffmpeg (decoding the audio) was killed by SIGSEGV (segmentation fault: the program crashed)"
    );
    assert!(!task.file("audio.wav").exists(), "no partial audio.wav");
}
