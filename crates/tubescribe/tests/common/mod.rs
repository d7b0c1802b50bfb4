//! Shared fixtures for the end-to-end tests: real speech, a loopback media server, the
//! tubescribe binary run as a user would run it, and the installed prerequisites.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// The tiny.en model installed by `scripts/setup.sh --test`; fails loudly when missing.
pub fn model() -> PathBuf {
    let p = std::env::var_os("TUBESCRIBE_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("models/ggml-tiny.en.bin"));
    assert!(
        p.is_file(),
        "model {} is missing: run scripts/setup.sh --test",
        p.display()
    );
    p
}

/// yt-dlp from the project's venv; fails loudly when missing.
pub fn ytdlp() -> PathBuf {
    let p = repo_root().join(".venv/bin/yt-dlp");
    assert!(
        p.is_file(),
        "{} is missing: run scripts/setup.sh --test",
        p.display()
    );
    p
}

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
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 16_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(&wav, spec).unwrap();
    for s in &samples {
        w.write_sample(*s).unwrap();
    }
    w.finalize().unwrap();
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

/// Serves `dir` over HTTP on 127.0.0.1 (a random port) until the test process ends.
pub fn serve(dir: &Path) -> SocketAddr {
    let dir = dir.to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(l.local_addr().unwrap()).unwrap();
            let app =
                axum::Router::new().fallback_service(tower_http::services::ServeDir::new(dir));
            axum::serve(l, app).await.unwrap();
        });
    });
    rx.recv().unwrap()
}

/// The result of one `tubescribe` run.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the tubescribe binary with a private data dir (its own embedded Redis).
pub fn tubescribe(data_dir: &Path, args: &[&str]) -> Run {
    tubescribe_env(data_dir, args, &[])
}

/// [`tubescribe`] with extra environment variables (e.g. `TUBESCRIBE_SEGMENT_S`).
pub fn tubescribe_env(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_tubescribe"))
        .args(args)
        .envs(env.iter().copied())
        .env("TUBESCRIBE_DATA_DIR", data_dir)
        .env("TUBESCRIBE_MODEL", model())
        .env("TUBESCRIBE_YTDLP", ytdlp())
        .env_remove("TUBESCRIBE_REDIS_URL")
        .env_remove("TUBESCRIBE_CONFIG")
        .env_remove("TUBESCRIBE_LLM_BASE_URL")
        .output()
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

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
