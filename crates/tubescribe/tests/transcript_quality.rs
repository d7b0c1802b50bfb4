//! Transcript quality (issue 11), measured side by side with whisper.cpp called directly on
//! the same whole file with the same model and parameters (`AsrModel::transcribe`, one
//! `whisper_full` call):
//!
//! * jfk.wav keeps its final period;
//! * a ≈ 100 s file of real speech clips with pauses keeps its punctuation (≥ 50 % of segments
//!   end a sentence) and its WER is at most the engine's + 0.5 point (the engine's median
//!   over the file as it is and after 0.25 s and 0.5 s more room tone); its words are
//!   monotonic and inside their segments;
//! * a 12-minute recording of 12 announcements (real speech) separated by pauses of 20–80 s loses
//!   none of them and places each within ±2 s of its true start, unsplit and through the real
//!   pipeline's segment jobs at `segment_s` 60 and 600 (WER within 1 point of unsplit), and
//!   no line repeats three times;
//! * every subtitle cue of a ≥ 5 min talk obeys the cue rules.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU8};
use std::sync::Arc;

use common::*;
use tubescribe::domain::transcript::subtitles::{cues, CueRules};
use tubescribe::domain::transcript::{parse_srt, word_error_rate, Segment, Transcript};
use tubescribe::tools::asr;
use tubescribe::tools::asr::{AsrModel, TranscribeOptions, WavTranscription};

/// Deterministic room tone (uniform noise, about −62 dBFS RMS): real recordings are never
/// digital silence between words.
struct Tone(u64);

impl Tone {
    fn take(&mut self, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| {
                self.0 = self
                    .0
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((self.0 >> 33) as f32 / (1u64 << 31) as f32 - 0.5) * 0.0028
            })
            .collect()
    }
}

/// Reads `path` as 16 kHz mono f32 (converted with ffmpeg into `tmp`).
fn pcm16k(path: &Path, tmp: &Path) -> Vec<f32> {
    pcm16k_i16(path, tmp)
        .into_iter()
        .map(|s| f32::from(s) / 32768.0)
        .collect()
}

/// Writes 16 kHz mono s16 WAV.
fn write_wav(path: &Path, pcm: &[f32]) {
    let samples: Vec<i16> = pcm
        .iter()
        .map(|s| (s * 32767.0).clamp(-32768.0, 32767.0) as i16)
        .collect();
    write_wav16k(path, &samples);
}

/// The clips (16 kHz f32) with their reference texts.
fn clips(tmp: &Path) -> Vec<(Vec<f32>, String)> {
    ENGLISH_CLIPS
        .iter()
        .map(|(name, fallback)| {
            let (wav, text) = speech(tmp, name, fallback);
            (pcm16k(&wav, tmp), text)
        })
        .collect()
}

/// `order` clips joined by room-tone pauses of `pauses_s`, with tone on both ends; returns the
/// PCM and the reference text.
fn talk(clips: &[(Vec<f32>, String)], order: &[usize], pauses_s: &[f64]) -> (Vec<f32>, String) {
    let mut tone = Tone(7);
    let (mut pcm, mut reference) = (tone.take(8000), Vec::new());
    for (k, &i) in order.iter().enumerate() {
        let (clip, text) = &clips[i];
        pcm.extend(clip.iter().zip(tone.take(clip.len())).map(|(s, n)| s + n));
        reference.push(text.as_str());
        let pause = pauses_s[k % pauses_s.len()];
        pcm.extend(tone.take((pause * 16_000.0) as usize));
    }
    (pcm, reference.join(" "))
}

fn model_once() -> &'static AsrModel {
    static M: std::sync::OnceLock<AsrModel> = std::sync::OnceLock::new();
    M.get_or_init(|| AsrModel::load(&model()).unwrap())
}

fn opts() -> TranscribeOptions {
    TranscribeOptions {
        threads: 2,
        ..TranscribeOptions::default()
    }
}

fn flags() -> (Arc<AtomicU8>, Arc<AtomicBool>) {
    (Arc::new(AtomicU8::new(0)), Arc::new(AtomicBool::new(false)))
}

/// The product's transcription of a WAV file (gate, joins, chunks, mapping, loop cut,
/// coverage).
fn product(path: &Path) -> WavTranscription {
    let (p, a) = flags();
    model_once().transcribe_wav(path, &opts(), p, a).unwrap()
}

/// whisper.cpp on the whole PCM in one call, as whisper-rs users call it.
fn engine(pcm: &[f32]) -> Vec<Segment> {
    let (p, a) = flags();
    model_once()
        .transcribe(pcm, &opts(), p, a)
        .unwrap()
        .segments
}

fn text(segs: &[Segment]) -> String {
    segs.iter()
        .map(|s| s.text.as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

fn punctuated_share(segs: &[Segment]) -> f64 {
    let n = segs
        .iter()
        .filter(|s| s.text.trim_end().ends_with(['.', '?', '!']))
        .count();
    n as f64 / segs.len().max(1) as f64
}

/// Words are in time order, inside their segment, and segments start in order.
fn assert_words_hold(segs: &[Segment]) {
    let mut last_start = 0;
    for s in segs {
        assert!(!s.words.is_empty(), "segment without words: {s:?}");
        assert!(s.start_ms >= last_start, "segments out of order at {s:?}");
        last_start = s.start_ms;
        let mut prev = s.start_ms;
        for w in &s.words {
            assert!(
                w.start_ms >= prev && w.start_ms <= w.end_ms,
                "word out of order: {w:?} in {s:?}"
            );
            assert!(
                w.start_ms >= s.start_ms && w.end_ms <= s.end_ms,
                "word outside its segment: {w:?} in [{}, {}]",
                s.start_ms,
                s.end_ms
            );
            assert!((0.0..=1.0).contains(&w.p), "{w:?}");
            prev = w.start_ms;
        }
    }
}

/// The longest run of consecutive segments with the same text.
fn longest_repeat(segs: &[Segment]) -> usize {
    let (mut best, mut run) = (0, 0);
    for (i, s) in segs.iter().enumerate() {
        run = if i > 0 && segs[i - 1].text.trim() == s.text.trim() {
            run + 1
        } else {
            1
        };
        best = best.max(run);
    }
    best
}

#[test]
fn jfk_keeps_its_final_period() {
    let tmp = tempfile::tempdir().unwrap();
    let (wav, _) = speech(tmp.path(), ENGLISH_CLIPS[0].0, ENGLISH_CLIPS[0].1);
    let wav16 = tmp.path().join("jfk16.wav");
    write_wav(&wav16, &pcm16k(&wav, tmp.path()));
    let out = product(&wav16);
    let all = text(&out.segments);
    assert!(all.trim_end().ends_with("country."), "{all:?}");
    assert_words_hold(&out.segments);
    assert!(out.coverage.ratio() >= 0.99, "{:?}", out.coverage);
}

#[test]
fn hundred_seconds_keep_punctuation_and_the_engines_wer() {
    let tmp = tempfile::tempdir().unwrap();
    let clips = clips(tmp.path());
    let (pcm, reference) = talk(
        &clips,
        &[0, 1, 2, 3, 4, 2, 0, 1],
        &[2.0, 3.5, 1.5, 5.0, 2.5, 4.0, 3.0, 1.0],
    );
    let secs = pcm.len() as f64 / 16_000.0;
    assert!((90.0..=110.0).contains(&secs), "{secs} s");
    let path = tmp.path().join("talk.wav");
    write_wav(&path, &pcm);

    let ours = product(&path);
    let whole = asr::read_wav_16k_mono(&path).unwrap();
    let theirs = engine(&whole);
    // The engine's WER on one whole file swings with where its 30 s windows fall: the same
    // file after 0.25 s or 0.5 s more room tone gave CTranslate2 3.26 / 3.80 / 3.80 % and
    // whisper.cpp 3.80 % each time, but 13.0 % after 0.25 s of digital silence (2026-12-06);
    // the product, whose gate trims the lead, gave 3.80 % on both engines every time. So the
    // engine's figure is its median over the three placements.
    let mut engine_wers: Vec<f64> = [0usize, 4_000, 8_000]
        .into_iter()
        .map(|lead| {
            let segs = if lead == 0 {
                theirs.clone()
            } else {
                let mut pcm = Tone(lead as u64).take(lead);
                pcm.extend_from_slice(&whole);
                engine(&pcm)
            };
            word_error_rate(&reference, &text(&segs))
        })
        .collect();
    let wer_ours = word_error_rate(&reference, &text(&ours.segments));
    eprintln!("engine WER at leads 0, 0.25, 0.5 s: {engine_wers:?}");
    engine_wers.sort_by(f64::total_cmp);
    let wer_engine = engine_wers[1];
    let (p_ours, p_engine) = (punctuated_share(&ours.segments), punctuated_share(&theirs));
    eprintln!(
        "{secs:.1} s: product {} segments, {:.0} % punctuated, WER {:.2} %; \
         engine {} segments, {:.0} % punctuated, median WER {:.2} %",
        ours.segments.len(),
        p_ours * 100.0,
        wer_ours * 100.0,
        theirs.len(),
        p_engine * 100.0,
        wer_engine * 100.0
    );
    assert!(p_ours >= 0.5, "only {:.0} % punctuated", p_ours * 100.0);
    assert!(
        wer_ours <= wer_engine + 0.005,
        "WER {wer_ours:.4} is worse than the engine's {wer_engine:.4}"
    );
    assert_words_hold(&ours.segments);
    assert!(ours.coverage.ratio() >= 0.95, "{:?}", ours.coverage);
}

/// 12 announcements — the shared clips in turn, 6–11 s each — in 12 minutes, separated by
/// pauses of 20 to 80 s; returns the PCM, each announcement's true start (ms) and text.
fn announcements(tmp: &Path) -> (Vec<f32>, Vec<(u64, String)>) {
    let clips = clips(tmp);
    let mut tone = Tone(11);
    let gaps_s = [
        25.0, 70.0, 40.0, 80.0, 20.0, 55.0, 35.0, 75.0, 30.0, 60.0, 45.0, 65.0,
    ];
    let (mut pcm, mut said) = (Vec::new(), Vec::new());
    for (i, gap) in gaps_s.iter().enumerate() {
        let (clip, text) = &clips[i % clips.len()];
        pcm.extend(tone.take((gap * 16_000.0) as usize));
        said.push((pcm.len() as u64 * 1000 / 16_000, text.clone()));
        pcm.extend(clip.iter().zip(tone.take(clip.len())).map(|(s, n)| s + n));
    }
    let end = pcm.len().max(12 * 60 * 16_000) + 20 * 16_000;
    pcm.extend(tone.take(end - pcm.len()));
    (pcm, said)
}

/// Every announcement is present and in place: the first segment at or after its true start
/// − 2 s starts within ±2 s of it, and the text of the segments starting up to 12 s in says
/// it (WER ≤ 35 % against its own text). No line repeats three times. Returns the
/// transcript's text.
fn assert_announcements(what: &str, segs: &[Segment], said: &[(u64, String)]) -> String {
    for (k, (truth, reference)) in said.iter().enumerate() {
        let truth = *truth;
        let first = segs
            .iter()
            .position(|s| s.start_ms + 2000 >= truth)
            .filter(|&i| segs[i].start_ms <= truth + 2000);
        let heard = first
            .map(|i| {
                let window: Vec<Segment> = segs[i..]
                    .iter()
                    .take_while(|s| s.start_ms <= truth + 12_000)
                    .cloned()
                    .collect();
                text(&window)
            })
            .unwrap_or_default();
        let wer = word_error_rate(reference, &heard);
        assert!(
            wer <= 0.35,
            "{what}: announcement {} (at {truth} ms) is missing or misplaced (WER {wer:.2}); \
             heard there: {heard:?}\nall: {:?}",
            k + 1,
            segs.iter()
                .map(|s| (s.start_ms, &s.text))
                .collect::<Vec<_>>()
        );
    }
    assert!(longest_repeat(segs) < 3, "{what}: a line repeats");
    text(segs)
}

#[test]
fn announcements_survive_long_audio_split_or_not() {
    let tmp = tempfile::tempdir().unwrap();
    let (pcm, said) = announcements(tmp.path());
    let reference = said
        .iter()
        .map(|(_, t)| t.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    let path = tmp.path().join("announcements.wav");
    write_wav(&path, &pcm);
    assert!(pcm.len() >= 12 * 60 * 16_000, "{} samples", pcm.len());

    let unsplit = product(&path);
    let unsplit_text = assert_announcements("unsplit", &unsplit.segments, &said);
    let wer_unsplit = word_error_rate(&reference, &unsplit_text);
    eprintln!("unsplit: WER {:.2} %", wer_unsplit * 100.0);

    let mut wers = Vec::new();
    for segment_s in ["60", "600"] {
        let data = tmp.path().join(format!("data-{segment_s}"));
        let run = tubescribe_env(
            &data,
            &["process", path.to_str().unwrap()],
            &[("TUBESCRIBE_SEGMENT_S", segment_s)],
        );
        assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
        let id = &task_ids(&data)[0];
        let m = manifest(&data, id);
        let d = &m["stages"]["transcribe"]["detail"];
        let merged = d["segments_merged"].as_u64().unwrap_or(0);
        assert!(merged >= 2, "segment_s {segment_s}: not split: {d}");
        assert_eq!(m["status"], "completed", "{m}");
        assert!(d["coverage"].as_f64().unwrap() >= 0.9, "{d}");
        let t: Transcript = serde_json::from_str(
            &std::fs::read_to_string(data.join("tasks").join(id).join("transcript.json")).unwrap(),
        )
        .unwrap();
        let what = format!("segment_s {segment_s}");
        let split_text = assert_announcements(&what, &t.segments, &said);
        assert_words_hold(&t.segments);
        let wer = word_error_rate(&reference, &split_text);
        eprintln!("{what}: {merged} segments, WER {:.2} %", wer * 100.0);
        wers.push((what, wer));
    }
    for (what, wer) in wers {
        assert!(
            wer <= wer_unsplit + 0.01,
            "{what}: WER {wer:.4} vs unsplit {wer_unsplit:.4}"
        );
    }
}

#[test]
fn every_cue_of_a_five_minute_talk_obeys_the_rules() {
    let tmp = tempfile::tempdir().unwrap();
    let clips = clips(tmp.path());
    let order: Vec<usize> = (0..36).map(|i| (i * 5 + i / 6) % clips.len()).collect();
    let (pcm, _) = talk(&clips, &order, &[0.6, 1.2, 0.4, 2.5, 0.8]);
    assert!(pcm.len() >= 5 * 60 * 16_000, "{} samples", pcm.len());
    let path = tmp.path().join("talk.wav");
    write_wav(&path, &pcm);
    let out = product(&path);
    assert_words_hold(&out.segments);
    let rules = CueRules::default();
    let cues = cues(&out.segments, &rules);
    let t = Transcript {
        language: "en".into(),
        model: "tiny.en".into(),
        duration_ms: pcm.len() as u64 / 16,
        segments: out.segments.clone(),
    };
    assert_eq!(parse_srt(&t.to_srt(&rules)).unwrap(), cues);
    let (mut long_lines, mut too_long, mut short, mut fast) = (0, 0, 0, 0);
    for (i, c) in cues.iter().enumerate() {
        let next = cues.get(i + 1).map(|n| n.start_ms);
        assert!(c.lines.len() <= 2, "{c:?}");
        long_lines += c.lines.iter().filter(|l| l.chars().count() > 42).count();
        too_long += usize::from(c.end_ms - c.start_ms > 7000);
        if let Some(n) = next {
            assert!(c.end_ms <= n, "overlap: {c:?} then {n}");
        }
        let room = next.map_or(1000, |n| (n - c.start_ms).min(1000));
        short += usize::from(c.end_ms - c.start_ms < room);
        let secs = (c.end_ms - c.start_ms).max(1) as f64 / 1000.0;
        fast += usize::from(c.chars() as f64 / secs > 20.0);
    }
    eprintln!(
        "{} cues from {} segments: {long_lines} long lines, {too_long} over 7 s, {short} short, \
         {fast} over 20 cps",
        cues.len(),
        out.segments.len()
    );
    assert_eq!((long_lines, too_long, short), (0, 0, 0));
    assert!(
        fast * 10 <= cues.len(),
        "{fast} of {} cues read faster than 20 characters/s",
        cues.len()
    );
}
