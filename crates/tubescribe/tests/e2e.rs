//! End to end: the `tubescribe process` command on real speech served over loopback HTTP,
//! through yt-dlp, ffmpeg, whisper.cpp (tiny.en) and the extractive summarizer, with the
//! embedded redis-server. Prerequisites come from `scripts/setup.sh --test`.

mod common;

use common::*;
use tubescribe::domain::transcript::{parse_srt, parse_vtt, word_error_rate, Transcript};

const JFK_FALLBACK: &str = "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country.";

fn monotonic(starts: &[u64]) -> bool {
    starts.windows(2).all(|w| w[0] <= w[1])
}

/// jfk (real speech, or espeak-ng's) as `<tmp>/media/jfk.m4a`, served over loopback: the
/// WAV, its reference text, the server's address and the served directory.
fn served_jfk(
    tmp: &std::path::Path,
) -> (
    std::path::PathBuf,
    String,
    std::net::SocketAddr,
    std::path::PathBuf,
) {
    let media = tmp.join("media");
    std::fs::create_dir_all(&media).unwrap();
    let (wav, reference) = speech(tmp, "jfk", JFK_FALLBACK);
    transcode(&wav, &media.join("jfk.m4a"));
    let addr = serve_dir(&media);
    (wav, reference, addr, media)
}

#[test]
fn whole_flow_on_real_speech() {
    let tmp = tempfile::tempdir().unwrap();
    let (wav, reference, addr, _) = served_jfk(tmp.path());
    let data = tmp.path().join("data");
    let url = format!("http://{addr}/jfk.m4a");
    let run = tubescribe(&data, &["process", "--allow-host", &addr.to_string(), &url]);
    assert_eq!(
        run.code, 0,
        "stdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );

    let ids = task_ids(&data);
    assert_eq!(ids.len(), 1, "{ids:?}");
    let id = &ids[0];
    assert!(id.starts_with("url-"), "{id}");
    let m = manifest(&data, id);
    assert_eq!(m["status"], "completed");
    for stage in ["download", "transcribe", "summarize"] {
        assert_eq!(m["stages"][stage]["state"], "completed", "{stage}: {m:#}");
        assert_eq!(m["stages"][stage]["progress"], 100.0);
        assert_eq!(m["stages"][stage]["attempts"], 1);
        assert!(m["stages"][stage]["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|o| o["bytes"].as_u64().unwrap() > 0));
    }
    assert!(m["error"].is_null());
    let dur = m["video"]["duration_s"].as_f64().unwrap();
    let wav_dur = {
        let r = hound::WavReader::open(&wav).unwrap();
        r.duration() as f64 / r.spec().sample_rate as f64
    };
    assert!((dur - wav_dur).abs() < 0.5, "duration {dur} vs {wav_dur}");

    let dir = data.join("tasks").join(id);
    // The media file is named by stem, never by the title.
    assert!(dir.join("media.m4a").is_file());
    assert!(dir.join("audio.wav").is_file());
    assert!(!dir.join(".tmp").exists(), "temp dir left behind");

    let t: Transcript =
        serde_json::from_str(&std::fs::read_to_string(dir.join("transcript.json")).unwrap())
            .unwrap();
    assert_eq!(t.language, "en");
    assert!(t.model.contains("tiny.en"), "{}", t.model);
    let text = std::fs::read_to_string(dir.join("transcript.txt")).unwrap();
    let wer = word_error_rate(&reference, &text);
    eprintln!("WER {:.1}% on {:?}", wer * 100.0, text);
    assert!(wer <= 0.25, "WER {wer} too high: {text:?} vs {reference:?}");

    let srt = parse_srt(&std::fs::read_to_string(dir.join("transcript.srt")).unwrap()).unwrap();
    let vtt = parse_vtt(&std::fs::read_to_string(dir.join("transcript.vtt")).unwrap()).unwrap();
    // The files hold the cues built from the transcript with the default rules.
    let rules = tubescribe::domain::transcript::subtitles::CueRules::default();
    let cues = tubescribe::domain::transcript::subtitles::cues(&t.segments, &rules);
    assert_eq!(srt, cues);
    assert_eq!(vtt, cues);
    for c in &cues {
        assert!((1..=rules.max_lines).contains(&c.lines.len()), "{c:?}");
        assert!(
            c.lines
                .iter()
                .all(|l| l.chars().count() <= rules.max_line_chars || !l.contains(' ')),
            "{c:?}"
        );
        assert!(c.end_ms - c.start_ms <= rules.max_cue_ms, "{c:?}");
    }
    assert!(
        srt.windows(2).all(|w| w[0].end_ms <= w[1].start_ms),
        "overlapping cues"
    );
    assert!(monotonic(
        &srt.iter().map(|s| s.start_ms).collect::<Vec<_>>()
    ));
    assert!(monotonic(
        &vtt.iter().map(|s| s.start_ms).collect::<Vec<_>>()
    ));
    assert!(srt
        .iter()
        .all(|s| s.end_ms >= s.start_ms && s.end_ms <= t.duration_ms + 1000));

    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    // Every stamp is a real segment or word start (a sentence's first word).
    let starts: Vec<u64> = t
        .segments
        .iter()
        .flat_map(|s| std::iter::once(s.start_ms).chain(s.words.iter().map(|w| w.start_ms)))
        .collect();
    let points = summary["key_points"].as_array().unwrap();
    assert!(!points.is_empty());
    for p in points {
        let at = p["start_ms"].as_u64().unwrap();
        assert!(
            starts.contains(&at),
            "summary stamp {at} is not a segment or word start {starts:?}"
        );
    }
    let md = std::fs::read_to_string(dir.join("summary.md")).unwrap();
    assert!(md.to_lowercase().contains("extractive"), "{md}");
    assert!(md.contains("[00:"), "{md}");
    // The CLI printed where the outputs are.
    assert!(
        run.stdout
            .contains(&dir.join("summary.md").display().to_string()),
        "{}",
        run.stdout
    );
}

#[test]
fn three_tasks_run_concurrently_and_a_failing_download_stays_isolated() {
    let tmp = tempfile::tempdir().unwrap();
    let media = tmp.path().join("media");
    std::fs::create_dir_all(&media).unwrap();
    let clips = [
        ("librispeech-1272-128104-0000", "Mister Quilter is the apostle of the middle classes, and we are glad to welcome his gospel."),
        ("ljspeech-LJ001-0007", "The earliest book printed with movable types was a famous Bible from the city of Mainz."),
        ("librispeech-1995-1837-0001", "He knew that the time had come when the question could no longer be avoided."),
    ];
    let mut urls = Vec::new();
    let mut refs = Vec::new();
    let addr = serve_dir(&media);
    for (i, (name, fallback)) in clips.iter().enumerate() {
        let (wav, reference) = speech(tmp.path(), name, fallback);
        let ext = ["m4a", "opus", "mp3"][i];
        transcode(&wav, &media.join(format!("clip{i}.{ext}")));
        urls.push(format!("http://{addr}/clip{i}.{ext}"));
        refs.push(reference);
    }
    urls.push(format!("http://{addr}/missing.m4a"));
    let data = tmp.path().join("data");
    let mut args = vec!["process", "--allow-host", "127.0.0.1"];
    let host = addr.to_string();
    args[2] = &host;
    args.extend(urls.iter().map(|s| s.as_str()));
    let run = tubescribe(&data, &args);
    assert_eq!(
        run.code, 1,
        "one task must fail\nstdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );

    let ids = task_ids(&data);
    assert_eq!(ids.len(), 4);
    let manifests: Vec<_> = ids.iter().map(|i| manifest(&data, i)).collect();
    let failed: Vec<_> = manifests
        .iter()
        .filter(|m| m["status"] == "failed")
        .collect();
    assert_eq!(failed.len(), 1, "{manifests:#?}");
    let f = failed[0];
    assert!(f["input"].as_str().unwrap().ends_with("/missing.m4a"));
    assert_eq!(f["error"]["stage"], "download");
    assert_eq!(f["error"]["retryable"], false);
    let reason = f["error"]["message"].as_str().unwrap();
    assert!(reason.contains("404"), "{reason}");
    assert_eq!(
        f["stages"]["download"]["attempts"], 1,
        "a 404 must not be retried"
    );
    assert_eq!(f["stages"]["transcribe"]["state"], "skipped");
    assert_eq!(f["stages"]["summarize"]["state"], "skipped");
    let fdir = data.join("tasks").join(f["task_id"].as_str().unwrap());
    let leftovers: Vec<_> = std::fs::read_dir(&fdir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "manifest.json" && n != "manifest.lock")
        .collect();
    assert!(leftovers.is_empty(), "partial files left: {leftovers:?}");
    assert!(
        run.stderr.contains("404"),
        "the CLI must print the reason: {}",
        run.stderr
    );

    let ok: Vec<_> = manifests
        .iter()
        .filter(|m| m["status"] == "completed")
        .collect();
    assert_eq!(ok.len(), 3);
    for m in &ok {
        let input = m["input"].as_str().unwrap();
        let i: usize = input.rsplit("/clip").next().unwrap()[..1].parse().unwrap();
        let dir = data.join("tasks").join(m["task_id"].as_str().unwrap());
        let text = std::fs::read_to_string(dir.join("transcript.txt")).unwrap();
        let wer = word_error_rate(&refs[i], &text);
        // A sanity check that each task got its own clip (the WER goal is checked in
        // whole_flow_on_real_speech); espeak fallback speech is harder for tiny.en.
        assert!(wer <= 0.5, "clip{i}: WER {wer}: {text:?}");
    }
    let dl = max_overlap(&manifests, "download");
    let tr = max_overlap(&manifests, "transcribe");
    eprintln!("max concurrent: download={dl} transcribe={tr}");
    assert!(dl >= 2, "downloads must overlap (max {dl})");
    assert!(
        tr <= 2,
        "never more than 2 transcribe jobs at once (max {tr})"
    );
    assert!(tr >= 1);
}

#[test]
fn invalid_url_is_refused_before_any_task_exists() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let run = tubescribe(
        &data,
        &[
            "process",
            "https://www.youtube.com/playlist?list=PL1234567890",
        ],
    );
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("Invalid YouTube URL"), "{}", run.stderr);
    assert!(!data.join("tasks").exists() || task_ids(&data).is_empty());
}

/// Issue 11 point 6: the model is part of the result. After a tiny.en run, `--model base` on
/// the same input makes its own task (`<id>-base`) whose manifest and transcript name base
/// (with the installed file's SHA-256), without downloading again (the served file is gone
/// by then); the same model asked for by path joins that task, and a plain `process` returns
/// the tiny.en task again.
#[test]
fn another_model_gets_its_own_task_and_reuses_the_download() {
    let base = installed_model(tubescribe::domain::ModelName::Base);
    assert!(
        tubescribe::tools::model::model_exists(&base),
        "model {} is missing: run scripts/setup.sh --test",
        base.display()
    );
    let tmp = tempfile::tempdir().unwrap();
    let (_, _, addr, media) = served_jfk(tmp.path());
    let data = tmp.path().join("data");
    // `--model base` means the engine's <data-dir>/models/ct2-base (ggml-base.bin).
    std::fs::create_dir_all(data.join("models")).unwrap();
    std::os::unix::fs::symlink(&base, data.join("models").join(base.file_name().unwrap())).unwrap();
    let url = format!("http://{addr}/jfk.m4a");
    let host = addr.to_string();
    let process = |extra: &[&str]| {
        let mut args = vec!["process", "--allow-host", &host];
        args.extend_from_slice(extra);
        args.push(&url);
        let run = tubescribe(&data, &args);
        assert_eq!(run.code, 0, "{args:?}\n{}\n{}", run.stdout, run.stderr);
        run
    };

    process(&[]);
    let ids = task_ids(&data);
    assert_eq!(ids.len(), 1, "{ids:?}");
    let tiny_id = ids[0].clone();
    let tiny = manifest(&data, &tiny_id);
    assert_eq!(tiny["model"]["name"], "tiny.en");
    assert_eq!(
        tiny["model"]["sha256"],
        installed_sha256(tubescribe::domain::ModelName::TinyEn)
    );
    // From here on, a download would fail: the media is no longer served.
    std::fs::remove_file(media.join("jfk.m4a")).unwrap();

    let run = process(&["--model", "base"]);
    assert!(
        !run.stderr.contains("joined existing task"),
        "{}",
        run.stderr
    );
    let base_id = format!("{tiny_id}-base");
    assert_eq!(task_ids(&data), vec![tiny_id.clone(), base_id.clone()]);
    let m = manifest(&data, &base_id);
    assert_eq!(m["status"], "completed", "{m:#}");
    assert_eq!(m["model"]["name"], "base");
    assert_eq!(
        m["model"]["sha256"],
        installed_sha256(tubescribe::domain::ModelName::Base)
    );
    assert_eq!(m["stages"]["transcribe"]["detail"]["model"], "base");
    let dir = data.join("tasks").join(&base_id);
    let t: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("transcript.json")).unwrap())
            .unwrap();
    assert_eq!(t["model"], "base");
    let text = std::fs::read_to_string(dir.join("transcript.txt")).unwrap();
    assert!(text.to_lowercase().contains("country"), "{text}");
    // The download was reused: the same file (hard link), recorded as reused, not run.
    let dl = &m["stages"]["download"];
    assert_eq!(dl["detail"]["media_from"], tiny_id.as_str(), "{dl:#}");
    let outcomes: Vec<&str> = dl["attempt_log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["reused"], "{dl:#}");
    use std::os::unix::fs::MetadataExt;
    let ino = |id: &str| {
        std::fs::metadata(data.join("tasks").join(id).join("media.m4a"))
            .unwrap()
            .ino()
    };
    assert_eq!(ino(&tiny_id), ino(&base_id));

    // The same model by path: the same task.
    let run = process(&["--model", base.to_str().unwrap()]);
    assert!(
        run.stderr
            .contains(&format!("joined existing task {base_id}")),
        "{}",
        run.stderr
    );
    // The default model again: the tiny.en task, untouched.
    let run = process(&[]);
    assert!(
        run.stderr
            .contains(&format!("joined existing task {tiny_id}")),
        "{}",
        run.stderr
    );
    assert_eq!(task_ids(&data).len(), 2);
    assert_eq!(manifest(&data, &tiny_id)["model"]["name"], "tiny.en");
}
