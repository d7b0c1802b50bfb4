//! Long audio in ranges: where to cut it (in pauses) and how to join the ranges' transcripts.
//!
//! Pure pieces shared by the two ways a long file is transcribed, so both give the same
//! result: the in-process path of the transcribe stage (`super::transcribe`) and the
//! distributed one, where each range is a segment job of the queue. Times are milliseconds
//! on the whole audio's timeline; samples are 16 kHz mono.

use crate::domain::transcript::{Coverage, Segment};
use crate::tools::asr;
use crate::tools::asr::SAMPLE_RATE;

use super::StageError;

/// Analysis frame for silence detection: 20 ms at 16 kHz.
const FRAME: usize = 320;

/// The transcribe stage's percent while the ranges `bounds_ms` (0, cuts…, total) are
/// transcribed, each `done[i]` percent (missing = 0): decoding's share (`decode_share`
/// percent, done before the split), then the rest weighted by each range's length. Ranges run
/// in any order and in parallel, so this is the one way to sum them.
pub fn ranges_percent(bounds_ms: &[u64], done: impl Fn(usize) -> f64, decode_share: f64) -> f64 {
    let total = bounds_ms.last().copied().unwrap_or(0).max(1) as f64;
    let covered: f64 = bounds_ms
        .windows(2)
        .enumerate()
        .map(|(i, w)| (w[1] - w[0]) as f64 * done(i).clamp(0.0, 100.0) / 100.0)
        .sum();
    (decode_share + (100.0 - decode_share) * covered / total).min(100.0)
}

/// The transcribe stage detail key holding each segment's own progress, `{"<i>": percent}`.
pub const SEGMENT_PROGRESS: &str = "segment_progress";
/// The transcribe stage detail key holding the segment boundaries (ms), set by the split.
pub const SEGMENT_BOUNDS: &str = "segment_bounds_ms";

/// Records that segment `index` is `percent` done in the transcribe stage's record `r` and
/// sets the stage's progress to [`ranges_percent`] over every segment's (a record without
/// boundaries keeps its progress).
pub fn record_segment_progress(
    r: &mut crate::domain::manifest::StageRecord,
    index: usize,
    percent: f64,
) {
    let progress = r.detail_object(SEGMENT_PROGRESS);
    progress.insert(
        index.to_string(),
        serde_json::json!(percent.clamp(0.0, 100.0)),
    );
    let done = progress.clone();
    let Some(bounds) = r
        .detail
        .get(SEGMENT_BOUNDS)
        .and_then(|b| serde_json::from_value::<Vec<u64>>(b.clone()).ok())
    else {
        return;
    };
    r.progress = ranges_percent(
        &bounds,
        |i| {
            done.get(&i.to_string())
                .and_then(serde_json::Value::as_f64)
                .unwrap_or(0.0)
        },
        super::transcribe::DECODE_SHARE,
    );
}

/// True when audio of `duration_s` seconds (the download's figure; `None` = unknown) is
/// transcribed in ranges of about `segment_s` seconds rather than in one run.
pub fn is_long(duration_s: Option<f64>, segment_s: f64) -> bool {
    duration_s.is_some_and(|d| d > segment_s)
}

/// Per-frame RMS level in dBFS (−120 for digital silence).
fn frame_db(pcm: &[f32]) -> Vec<f32> {
    pcm.chunks(FRAME)
        .map(|f| {
            let e = f.iter().map(|x| x * x).sum::<f32>() / f.len().max(1) as f32;
            if e <= 1e-12 {
                -120.0
            } else {
                10.0 * e.log10()
            }
        })
        .collect()
}

/// A pause at least this long (frames of 20 ms: 0.5 s) is a sentence or phrase boundary,
/// good enough to cut in; among such pauses the one nearest the aim wins.
const CUT_PAUSE_FRAMES: usize = 25;

/// Where to cut in `db[lo..=hi]`: the middle of the run of frames below `thr` that is at
/// least [`CUT_PAUSE_FRAMES`] long and nearest to `aim`; without such a run, the middle of the
/// longest run (ties to the one nearest `aim`). `None` when no frame is below `thr`.
fn pause_near(db: &[f32], lo: usize, hi: usize, thr: f32, aim: usize) -> Option<usize> {
    let mut runs: Vec<(usize, usize)> = Vec::new(); // (len, mid)
    let mut i = lo;
    while i <= hi {
        if db[i] < thr {
            let s = i;
            while i <= hi && db[i] < thr {
                i += 1;
            }
            runs.push((i - s, s + (i - s) / 2));
        } else {
            i += 1;
        }
    }
    let nearest = |r: &&(usize, usize)| r.1.abs_diff(aim);
    runs.iter()
        .filter(|r| r.0 >= CUT_PAUSE_FRAMES)
        .min_by_key(nearest)
        .or_else(|| {
            runs.iter()
                .max_by(|a, b| a.0.cmp(&b.0).then(nearest(b).cmp(&nearest(a))))
        })
        .map(|r| r.1)
}

/// How a long audio is cut: the segment length aimed at and the slots that run the segments
/// side by side.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CutRule {
    /// Segment length aimed at, seconds (`schedule.segment_s`).
    pub segment_s: f64,
    /// Transcribe slots that run the segments side by side (0 counts as 1).
    pub slots: usize,
    /// Seconds of audio the first segment's extra work is worth: [`GUARD_HEAD_START_S`]
    /// when the first segment's job runs the language guard, else 0
    /// ([`with_head_start`]).
    pub head_start_s: f64,
}

/// The language guard's call in the first segment's job, in seconds of audio: base
/// identifying the language of 15 s of speech takes ≈ 1.4 s on one thread (a 20 s clip's
/// transcription was that much faster with the call on a thread of its own), as long as
/// tiny.en transcribing ≈ 10 s of speech on one thread (0.14–0.16 s per second of audio in
/// the 12-minute talk's segments, `bench --quick`).
pub const GUARD_HEAD_START_S: f64 = 10.0;

/// `lengths` (seconds, from [`segment_lengths`]) with `head_start_s` of audio moved from the
/// first segment to the others of its wave (the first `slots`), shared equally, so that the
/// first segment's extra work (the language guard) does not leave the other slots idle at
/// the end of the wave: the first segment becomes `head_start_s` shorter than the others.
/// At most half the first segment moves; one slot or one segment changes nothing. The
/// total stays the same.
pub fn with_head_start(mut lengths: Vec<f64>, slots: usize, head_start_s: f64) -> Vec<f64> {
    let wave = slots.max(1).min(lengths.len());
    if wave < 2 || head_start_s <= 0.0 {
        return lengths;
    }
    let h = head_start_s.min(lengths[0] / 2.0);
    let w = wave as f64;
    lengths[0] -= h * (w - 1.0) / w;
    for l in &mut lengths[1..wave] {
        *l += h / w;
    }
    lengths
}

/// Segment lengths in seconds for `total_s` seconds of audio under `segment_s` and `slots` ("factoring", a guided self-scheduling
/// rule): batches of `slots` equal segments, each batch covering about half the remaining
/// work, a segment never longer than `segment_s` nor shorter than `segment_s / 2`; the last
/// batch shares what remains equally. So the count is a multiple of the slots (no wave
/// leaves a slot idle) and the segments get shorter towards the end, where a slot whose
/// segment happened to be faster would otherwise idle while the other finishes a long one:
/// 746 s at 120 on 2 slots is 4 × 120 s then 4 × 66.5 s.
pub fn segment_lengths(total_s: f64, segment_s: f64, slots: usize) -> Vec<f64> {
    let s = slots.max(1) as f64;
    let min = segment_s / 2.0;
    let mut left = total_s;
    let mut out = Vec::new();
    while left > 0.0 && segment_s > 0.0 {
        let c = (left / (2.0 * s)).clamp(min, segment_s);
        if left - s * c < s * min {
            out.extend(std::iter::repeat_n(left / s, slots.max(1)));
            break;
        }
        out.extend(std::iter::repeat_n(c, slots.max(1)));
        left -= s * c;
    }
    out
}

/// Cut points for `pcm` (16 kHz mono) under `rule`, in samples, ascending, excluding 0 and
/// the end. Audio no longer than `rule.segment_s` gets none.
///
/// Method: the lengths of [`segment_lengths`], laid end to end, give the aims; cut `k`
/// searches ± `min(60 s, the shorter neighbour / 4)` around its aim for quiet frames (20 ms
/// RMS below `min(−30 dBFS, 10th-percentile level + 12 dB)`) and cuts in the middle of the
/// pause of at least 0.5 s nearest the aim (so the segments keep the planned lengths), else
/// of the longest pause. A window without any quiet frame is cut at its quietest frame.
/// Never mid-word when there is a pause to find.
pub fn find_cuts(pcm: &[f32], rule: CutRule) -> Vec<usize> {
    let total_s = pcm.len() as f64 / SAMPLE_RATE as f64;
    if rule.segment_s <= 0.0 || total_s <= rule.segment_s {
        return Vec::new();
    }
    let db = frame_db(pcm);
    let mut sorted = db.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let p10 = sorted[sorted.len() / 10];
    let thr = (p10 + 12.0).min(-30.0);
    let lengths = with_head_start(
        segment_lengths(total_s, rule.segment_s, rule.slots),
        rule.slots,
        rule.head_start_s,
    );
    let frames_per_s = SAMPLE_RATE as f64 / FRAME as f64;
    let mut cuts = Vec::new();
    let mut last = 0usize;
    let mut at_s = 0.0;
    for w in lengths.windows(2) {
        at_s += w[0];
        let aim = (at_s * frames_per_s).round() as usize;
        let radius = (60.0f64.min(w[0].min(w[1]) / 4.0) * frames_per_s) as usize;
        let lo = aim.saturating_sub(radius).max(last + 1);
        let hi = (aim + radius).min(db.len().saturating_sub(1));
        if lo >= hi {
            continue;
        }
        let frame = pause_near(&db, lo, hi, thr, aim).unwrap_or_else(|| {
            (lo..=hi)
                .min_by(|a, b| db[*a].total_cmp(&db[*b]))
                .unwrap_or(aim)
        });
        last = frame;
        cuts.push(frame * FRAME);
    }
    cuts
}

/// The range boundaries of `pcm` in ms: `0`, the cut points of [`find_cuts`], the end.
pub fn bounds_ms(pcm: &[f32], rule: CutRule) -> Vec<u64> {
    let to_ms = |s: usize| s as u64 * 1000 / SAMPLE_RATE as u64;
    let mut bounds = vec![0u64];
    bounds.extend(find_cuts(pcm, rule).into_iter().map(to_ms));
    bounds.push(to_ms(pcm.len()));
    bounds
}

/// [`bounds_ms`] of the 16 kHz mono WAV at `wav` (read on a blocking thread).
///
/// # Errors
/// Permanent: the file cannot be read as 16 kHz mono WAV, or the cut finder panicked.
pub async fn plan(wav: &std::path::Path, rule: CutRule) -> Result<Vec<u64>, StageError> {
    let wav = wav.to_path_buf();
    tokio::task::spawn_blocking(move || {
        asr::read_wav_16k_mono(&wav).map(|pcm| bounds_ms(&pcm, rule))
    })
    .await
    .map_err(|e| StageError::permanent(format!("cut finder panicked: {e}")))?
    .map_err(|e| StageError::permanent(format!("cannot read audio.wav: {e}")))
}

/// Joins per-segment transcripts (timestamps already absolute) into one sequence: starts are
/// non-decreasing and never before the previous end (times are clamped forward), ends are
/// clamped to their segment job's end, and words are kept inside their segment. No text is
/// dropped: segment jobs get no prompt, so nothing is echoed at a cut.
pub fn merge(parts: &[(u64, Vec<Segment>)]) -> Vec<Segment> {
    let mut out: Vec<Segment> = Vec::new();
    for (part_end, segs) in parts {
        for s in segs {
            let mut s = s.clone();
            let floor = out.last().map(|p| p.end_ms).unwrap_or(0);
            s.start_ms = s.start_ms.max(floor);
            s.end_ms = s.end_ms.min(*part_end).max(s.start_ms);
            let mut at = s.start_ms;
            for w in &mut s.words {
                w.start_ms = w.start_ms.clamp(at, s.end_ms);
                w.end_ms = w.end_ms.clamp(w.start_ms, s.end_ms);
                at = w.start_ms;
            }
            out.push(s);
        }
    }
    out
}

/// What the recognition of one range `[start_ms, end_ms)` reported, as [`join`] needs it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RangeText {
    /// Start of the range, ms.
    pub start_ms: u64,
    /// End of the range (exclusive), ms.
    pub end_ms: u64,
    /// Its transcript segments, timestamps on the whole audio's timeline.
    pub segments: Vec<Segment>,
    /// Spoken language whisper reported for it.
    pub language: String,
    /// Recognition wall seconds ÷ the range's audio seconds.
    pub rtf: f64,
    /// Repeated-phrase loops cut inside the range.
    pub loops_cut: usize,
    /// Speech found in the range and how much of it got text.
    pub coverage: Coverage,
}

/// The ranges of one audio joined by [`join`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Joined {
    /// Merged segments ([`merge`]), loops running across a cut cut too.
    pub segments: Vec<Segment>,
    /// The last range's language (`"en"` without ranges).
    pub language: String,
    /// Loops cut inside the ranges plus those cut across cuts.
    pub loops_cut: usize,
    /// Sum of the ranges' coverage.
    pub coverage: Coverage,
    /// Duration-weighted mean of the ranges' RTF.
    pub rtf: f64,
    /// End of the last range, ms (the audio's length).
    pub total_ms: u64,
}

/// Joins the ranges of one audio, given in order: [`merge`]s their segments, then cuts the
/// repetition loops that run across a cut ([`cut_loops_across`]; those inside a range were
/// cut, or found real, by the range's own recognition), and sums their figures.
pub fn join(parts: Vec<RangeText>) -> Joined {
    let mut joined = Joined {
        language: "en".into(),
        ..Joined::default()
    };
    let mut rtf_num = 0.0;
    let mut texts = Vec::with_capacity(parts.len());
    let cuts: Vec<u64> = parts.iter().skip(1).map(|p| p.start_ms).collect();
    for p in parts {
        rtf_num += p.rtf * p.end_ms.saturating_sub(p.start_ms) as f64;
        joined.loops_cut += p.loops_cut;
        joined.coverage.add(&p.coverage);
        joined.language = p.language;
        joined.total_ms = p.end_ms;
        texts.push((p.end_ms, p.segments));
    }
    joined.segments = merge(&texts);
    joined.loops_cut += cut_loops_across(&mut joined.segments, &cuts);
    if joined.total_ms > 0 {
        joined.rtf = rtf_num / joined.total_ms as f64;
    }
    joined
}

/// Cuts the repetition loops that run across the cuts `cuts_ms` of the joined `segments`
/// (sorted by start) and returns how many it cut. A run of lines with the same words on both
/// sides of a cut that has [`asr::LOOP_LINES`] or more on one side was checked by that
/// range's recognition, which decodes a loop's audio again and keeps what comes back, so it
/// is real speech (a phrase said again and again) and stays whole. A run with fewer lines on
/// each side but [`asr::LOOP_LINES`] or more in all is a loop that neither range could see:
/// its first line is kept.
pub fn cut_loops_across(segments: &mut Vec<Segment>, cuts_ms: &[u64]) -> usize {
    let mut cut = 0;
    for &t in cuts_ms {
        let next = segments.partition_point(|s| s.start_ms < t);
        if next == 0 || next == segments.len() {
            continue;
        }
        let words = asr::norm_words(&segments[next - 1].text);
        if words.is_empty() {
            continue;
        }
        let same = |s: &&Segment| asr::norm_words(&s.text) == words;
        let before = segments[..next].iter().rev().take_while(same).count();
        let after = segments[next..].iter().take_while(same).count();
        let unseen = before < asr::LOOP_LINES && after < asr::LOOP_LINES;
        if after > 0 && unseen && before + after >= asr::LOOP_LINES {
            segments.drain(next - before + 1..next + after);
            cut += 1;
        }
    }
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_segments_sum_into_the_stage_progress_by_length() {
        let bounds = [0, 60_000, 90_000, 100_000];
        // Nothing yet: decoding's share.
        assert_eq!(ranges_percent(&bounds, |_| 0.0, 10.0), 10.0);
        // The 30 s middle segment done alone: 10 + 90 × 30/100.
        let p = ranges_percent(&bounds, |i| if i == 1 { 100.0 } else { 0.0 }, 10.0);
        assert!((p - 37.0).abs() < 1e-9, "{p}");
        // Half of the first and all of the last, in any order.
        let p = ranges_percent(&bounds, |i| [50.0, 0.0, 100.0][i], 10.0);
        assert!((p - 46.0).abs() < 1e-9, "{p}");
        assert_eq!(ranges_percent(&bounds, |_| 100.0, 10.0), 100.0);
        assert_eq!(ranges_percent(&bounds, |_| 250.0, 10.0), 100.0);

        let mut r = crate::domain::manifest::StageRecord::default();
        record_segment_progress(&mut r, 2, 100.0);
        assert_eq!(r.progress, 0.0, "no boundaries yet: progress kept");
        r.detail
            .insert(SEGMENT_BOUNDS.into(), serde_json::json!(bounds));
        record_segment_progress(&mut r, 0, 50.0);
        assert!((r.progress - 46.0).abs() < 1e-9, "{}", r.progress);
        assert_eq!(r.detail[SEGMENT_PROGRESS]["0"], 50.0);
    }
    use crate::domain::transcript::Word;

    fn seg(a: u64, b: u64, t: &str) -> Segment {
        Segment {
            start_ms: a,
            end_ms: b,
            text: t.into(),
            words: Vec::new(),
        }
    }

    /// Tone bursts ("speech") with silent gaps at known places.
    fn rule(segment_s: f64, slots: usize) -> CutRule {
        CutRule {
            segment_s,
            slots,
            head_start_s: 0.0,
        }
    }

    fn synth(spans_s: &[(f64, f64)], total_s: f64) -> Vec<f32> {
        let n = (total_s * SAMPLE_RATE as f64) as usize;
        let mut v = vec![0.0f32; n];
        for (a, b) in spans_s {
            let (a, b) = (
                (a * SAMPLE_RATE as f64) as usize,
                ((b * SAMPLE_RATE as f64) as usize).min(n),
            );
            for (i, x) in v[a..b].iter_mut().enumerate() {
                *x = 0.3 * ((i as f32) * 0.07).sin();
            }
        }
        v
    }

    #[test]
    fn cuts_land_in_the_pauses() {
        // 25 s of "speech" with 1 s pauses every 5 s; 10 s segments → 3 segments.
        let spans: Vec<(f64, f64)> = (0..5)
            .map(|i| (i as f64 * 5.0, i as f64 * 5.0 + 4.0))
            .collect();
        let pcm = synth(&spans, 25.0);
        let cuts = find_cuts(&pcm, rule(10.0, 1));
        assert_eq!(cuts.len(), 2, "{cuts:?}");
        for c in &cuts {
            let t = *c as f64 / SAMPLE_RATE as f64;
            let in_pause = (0..5).any(|i| t > i as f64 * 5.0 + 4.0 && t < (i + 1) as f64 * 5.0);
            assert!(in_pause, "cut at {t} s is not in a pause");
        }
        assert!(find_cuts(&pcm[..16_000 * 9], rule(10.0, 2)).is_empty());
        let b = bounds_ms(&pcm, rule(10.0, 1));
        assert_eq!(b.len(), 4, "{b:?}");
        assert_eq!((b[0], b[3]), (0, 25_000));
        assert_eq!(b[1], cuts[0] as u64 / 16);
        assert_eq!(bounds_ms(&pcm[..16_000 * 9], rule(10.0, 1)), [0, 9_000]);
    }

    /// The segment count is rounded up to a multiple of the slots: 25 s at 10 s is 3
    /// segments for one slot, 4 for two (every cut still in a pause), 3 again for three.
    #[test]
    fn segments_fill_every_slot() {
        let spans: Vec<(f64, f64)> = (0..25).map(|i| (i as f64, i as f64 + 0.7)).collect();
        let pcm = synth(&spans, 25.0);
        assert_eq!(find_cuts(&pcm, rule(10.0, 1)).len(), 2);
        assert_eq!(find_cuts(&pcm, rule(10.0, 0)).len(), 2);
        let two = bounds_ms(&pcm, rule(10.0, 2));
        assert_eq!(two.len(), 5, "{two:?}");
        for w in two.windows(2) {
            let len = w[1] - w[0];
            assert!((5_000..=7_500).contains(&len), "uneven segments {two:?}");
        }
        for c in &two[1..4] {
            let frac = (*c % 1_000) as f64 / 1_000.0;
            assert!(frac > 0.7, "cut at {c} ms is not in a pause");
        }
        assert_eq!(find_cuts(&pcm, rule(10.0, 3)).len(), 2);
    }

    /// Factoring: batches of `slots` equal segments, half the remaining work per batch, within
    /// [segment_s / 2, segment_s]; the lengths add up to the whole.
    #[test]
    fn segments_shrink_towards_the_end() {
        let l = segment_lengths(746.0, 120.0, 2);
        assert_eq!(l, [120.0, 120.0, 120.0, 120.0, 66.5, 66.5, 66.5, 66.5]);
        assert_eq!(segment_lengths(143.0, 120.0, 2), [71.5, 71.5]);
        assert_eq!(segment_lengths(300.0, 120.0, 1), [120.0, 90.0, 90.0]);
        for (total, slots) in [(121.0, 1), (250.0, 2), (610.0, 2), (3600.0, 3), (135.0, 4)] {
            let l = segment_lengths(total, 120.0, slots);
            assert_eq!(l.len() % slots, 0, "{total} {slots}: {l:?}");
            assert!((l.iter().sum::<f64>() - total).abs() < 1e-6, "{l:?}");
            assert!(l.iter().all(|&x| x <= 120.0), "{l:?}");
            assert!(l.windows(2).all(|w| w[1] <= w[0] + 1e-9), "{l:?}");
        }
    }

    /// The first segment's job also runs the language guard: its wave's other segments take
    /// over the head start, shared equally; the whole stays the same; nothing moves with one
    /// slot, one segment or no head start, and at most half of the first segment does.
    #[test]
    fn the_first_segment_gives_the_guard_a_head_start() {
        let two = with_head_start(segment_lengths(123.0, 120.0, 2), 2, 15.0);
        assert_eq!(two, [54.0, 69.0]);
        let l = with_head_start(segment_lengths(746.0, 120.0, 2), 2, 15.0);
        assert_eq!(l, [112.5, 127.5, 120.0, 120.0, 66.5, 66.5, 66.5, 66.5]);
        let three = with_head_start(vec![90.0, 90.0, 90.0], 3, 15.0);
        assert_eq!(three, [80.0, 95.0, 95.0]);
        assert_eq!(with_head_start(vec![90.0, 90.0], 1, 15.0), [90.0, 90.0]);
        assert_eq!(with_head_start(vec![90.0], 2, 15.0), [90.0]);
        assert_eq!(with_head_start(vec![90.0, 90.0], 2, 0.0), [90.0, 90.0]);
        assert_eq!(with_head_start(vec![20.0, 20.0], 2, 30.0), [15.0, 25.0]);
        // The cuts follow: 25 s of one-second "words" at 10 s on 2 slots, first segment
        // 4 s shorter.
        let spans: Vec<(f64, f64)> = (0..25).map(|i| (i as f64, i as f64 + 0.7)).collect();
        let pcm = synth(&spans, 25.0);
        let b = bounds_ms(
            &pcm,
            CutRule {
                head_start_s: 4.0,
                ..rule(10.0, 2)
            },
        );
        assert_eq!(b.len(), 5, "{b:?}");
        assert!((b[2] - b[1]) > (b[1] - b[0]) + 2_000, "{b:?}");
    }

    #[test]
    fn long_means_longer_than_a_segment() {
        assert!(is_long(Some(600.5), 600.0));
        assert!(!is_long(Some(600.0), 600.0));
        assert!(!is_long(None, 600.0));
    }

    #[test]
    fn merge_is_monotonic_keeps_every_line_and_words_inside() {
        let mut late = seg(4_000, 10_400, "three four");
        late.words = vec![
            Word {
                start_ms: 4_000,
                end_ms: 5_000,
                text: "three".into(),
                p: 0.9,
            },
            Word {
                start_ms: 9_900,
                end_ms: 10_400,
                text: "four".into(),
                p: 0.9,
            },
        ];
        let parts = vec![
            (10_000, vec![seg(0, 4_000, "one two"), late]),
            (
                20_000,
                vec![
                    seg(10_000, 12_000, "Three, four."),
                    seg(12_000, 15_000, "five"),
                ],
            ),
        ];
        let m = merge(&parts);
        let texts: Vec<&str> = m.iter().map(|s| s.text.as_str()).collect();
        assert_eq!(texts, ["one two", "three four", "Three, four.", "five"]);
        assert_eq!(m[1].end_ms, 10_000);
        assert_eq!(
            m[1].words
                .iter()
                .map(|w| (w.start_ms, w.end_ms))
                .collect::<Vec<_>>(),
            [(4_000, 5_000), (9_900, 10_000)]
        );
        assert!(m.windows(2).all(|w| w[0].end_ms <= w[1].start_ms));
    }

    #[test]
    fn join_cuts_loops_across_cuts_and_weighs_the_figures() {
        let part = |a: u64, b: u64, segs: Vec<Segment>, rtf: f64, lang: &str| RangeText {
            start_ms: a,
            end_ms: b,
            segments: segs,
            language: lang.into(),
            rtf,
            loops_cut: 1,
            coverage: Coverage {
                speech_ms: b - a,
                ..Coverage::default()
            },
        };
        // The same line three times across the cut at 10 s is one loop.
        let j = join(vec![
            part(
                0,
                10_000,
                vec![seg(0, 3_000, "hello there"), seg(8_000, 9_500, "go on")],
                0.2,
                "en",
            ),
            part(
                10_000,
                30_000,
                vec![seg(10_000, 11_000, "go on"), seg(11_000, 12_000, "go on")],
                0.5,
                "de",
            ),
        ]);
        let texts: Vec<&str> = j.segments.iter().map(|s| s.text.as_str()).collect();
        assert_eq!(texts, ["hello there", "go on"]);
        assert_eq!(j.loops_cut, 3);
        assert_eq!(j.language, "de");
        assert_eq!(j.total_ms, 30_000);
        assert_eq!(j.coverage.speech_ms, 30_000);
        assert!((j.rtf - (0.2 * 10.0 + 0.5 * 20.0) / 30.0).abs() < 1e-9);
        assert_eq!(join(Vec::new()).language, "en");
        // A phrase said again and again: each range checked its own run of three or more
        // lines, so the run across the cut is real speech and stays whole.
        let said = |a: u64, n: u64| {
            (0..n).map(move |k| seg(a + k * 2_000, a + k * 2_000 + 1_500, "Thank you."))
        };
        let j = join(vec![
            part(0, 10_000, said(2_000, 4).collect(), 0.2, "en"),
            part(10_000, 20_000, said(10_500, 3).collect(), 0.2, "en"),
        ]);
        assert_eq!(j.segments.len(), 7, "{:#?}", j.segments);
        assert_eq!(j.loops_cut, 2, "the ranges' own counts only");
        // Two lines before the cut, two after: a loop no range saw, kept once.
        let mut segs: Vec<Segment> = said(4_000, 2).chain(said(10_000, 2)).collect();
        assert_eq!(cut_loops_across(&mut segs, &[10_000]), 1);
        assert_eq!(segs.len(), 1);
        let mut segs: Vec<Segment> = said(4_000, 1).chain(said(10_000, 1)).collect();
        assert_eq!(cut_loops_across(&mut segs, &[10_000]), 0);
        assert_eq!(segs.len(), 2);
    }
}
