//! Fuzzes the cue builder and the SRT/VTT writers: any transcript (arbitrary times and text,
//! including control characters, `-->`, blank lines, markup and cue-number-like lines; with or
//! without word times) under any valid cue rules must give cues that obey the rules (lines,
//! line length, duration, order, no overlap), keep every word, and render to files our strict
//! parsers read back as exactly those cues (VTT after unescaping).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tubescribe::transcript::subtitles::{cues, CueRules};
use tubescribe::transcript::{parse_srt, parse_vtt, Segment, Transcript, Word};

fuzz_target!(|data: &[u8]| {
    // Rules from the first 4 bytes (within the ranges the config accepts).
    let Some((head, mut rest)) = data.split_first_chunk::<4>() else {
        return;
    };
    let rules = CueRules {
        max_line_chars: 10 + head[0] as usize % 60,
        max_lines: 1 + head[1] as usize % 3,
        max_cue_ms: 1000 + head[2] as u64 * 100,
        min_cue_ms: (head[3] as u64 * 10).min(1000 + head[2] as u64 * 100),
        max_cps: 1.0 + head[3] as f64 / 4.0,
    };
    // Segment records: 4 bytes start (ms), 2 bytes duration, 1 byte text length (high bit:
    // give the segment word times, one word per whitespace-separated piece, each word 1 byte
    // of offset and 1 of length taken from the start), text.
    let mut segments = Vec::new();
    while rest.len() >= 7 && segments.len() < 64 {
        let start = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as u64 * 37;
        let dur = u16::from_le_bytes([rest[4], rest[5]]) as u64;
        let with_words = rest[6] & 0x80 != 0;
        let n = ((rest[6] & 0x7f) as usize).min(rest.len() - 7);
        let text = String::from_utf8_lossy(&rest[7..7 + n]).into_owned();
        rest = &rest[7 + n..];
        let words = if with_words {
            text.split_whitespace()
                .enumerate()
                .map(|(i, w)| {
                    let b = rest.get(i).copied().unwrap_or(0) as u64;
                    Word {
                        start_ms: start + b * 10,
                        end_ms: start + b * 10 + (b % 7) * 50,
                        text: w.to_owned(),
                        p: 0.5,
                    }
                })
                .collect()
        } else {
            Vec::new()
        };
        segments.push(Segment {
            start_ms: start,
            end_ms: start + dur,
            text,
            words,
        });
    }
    let mut t = Transcript {
        language: "en".into(),
        model: "fuzz".into(),
        duration_ms: 0,
        segments,
    };
    t.normalize();
    let built = cues(&t.segments, &rules);
    for (i, c) in built.iter().enumerate() {
        assert!((1..=rules.max_lines).contains(&c.lines.len()), "{c:?}");
        for l in &c.lines {
            assert!(!l.is_empty() && l.trim() == l, "{c:?}");
            assert!(
                l.chars().count() <= rules.max_line_chars || !l.contains(' '),
                "{c:?}"
            );
        }
        assert!(c.end_ms >= c.start_ms && c.end_ms - c.start_ms <= rules.max_cue_ms);
        if let Some(n) = built.get(i + 1) {
            assert!(
                c.start_ms <= n.start_ms && c.end_ms <= n.start_ms,
                "{c:?} {n:?}"
            );
        }
    }
    let words = |s: &str| s.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    let want: Vec<String> = t
        .segments
        .iter()
        .flat_map(|s| {
            if s.words.iter().any(|w| !w.text.trim().is_empty()) {
                s.words.iter().flat_map(|w| words(&w.text)).collect()
            } else {
                words(&s.text)
            }
        })
        .collect();
    let got: Vec<String> = built.iter().flat_map(|c| words(&c.text())).collect();
    assert_eq!(got, want);
    let srt = t.to_srt(&rules);
    let parsed = parse_srt(&srt).unwrap_or_else(|e| panic!("{e}\n{srt}"));
    assert_eq!(parsed, built, "{srt}");
    let vtt = t.to_vtt(&rules);
    let parsed = parse_vtt(&vtt).unwrap_or_else(|e| panic!("{e}\n{vtt}"));
    assert_eq!(parsed, built, "{vtt}");
    let _ = t.to_txt();
});
