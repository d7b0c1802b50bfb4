//! Fuzzes the SRT/VTT writers: any transcript (arbitrary times and text, including control
//! characters, `-->`, blank lines, markup and cue-number-like lines) must render to files our
//! strict parsers read back with the same number of cues, the same times and (SRT) the same
//! text lines; (VTT) the same text after unescaping.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tubescribe::transcript::{parse_srt, parse_vtt, Segment, Transcript};

fuzz_target!(|data: &[u8]| {
    // Segment records: 4 bytes start (ms), 2 bytes duration, 1 byte text length, text.
    let mut segments = Vec::new();
    let mut rest = data;
    while rest.len() >= 7 && segments.len() < 64 {
        let start = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as u64 * 37;
        let dur = u16::from_le_bytes([rest[4], rest[5]]) as u64;
        let n = (rest[6] as usize).min(rest.len() - 7);
        let text = String::from_utf8_lossy(&rest[7..7 + n]).into_owned();
        rest = &rest[7 + n..];
        segments.push(Segment {
            start_ms: start,
            end_ms: start + dur,
            text,
        });
    }
    let mut t = Transcript {
        language: "en".into(),
        model: "fuzz".into(),
        duration_ms: 0,
        segments,
    };
    t.normalize();
    let lines = |s: &str| -> Vec<String> {
        s.split(['\n', '\r'])
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let srt = t.to_srt();
    let parsed = parse_srt(&srt).unwrap_or_else(|e| panic!("{e}\n{srt}"));
    assert_eq!(parsed.len(), t.segments.len(), "{srt}");
    for (a, b) in parsed.iter().zip(&t.segments) {
        assert_eq!((a.start_ms, a.end_ms), (b.start_ms, b.end_ms), "{srt}");
        assert_eq!(lines(&a.text), lines(&b.text), "{srt}");
    }
    let vtt = t.to_vtt();
    let parsed = parse_vtt(&vtt).unwrap_or_else(|e| panic!("{e}\n{vtt}"));
    assert_eq!(parsed.len(), t.segments.len(), "{vtt}");
    for (a, b) in parsed.iter().zip(&t.segments) {
        assert_eq!((a.start_ms, a.end_ms), (b.start_ms, b.end_ms), "{vtt}");
        assert_eq!(lines(&a.text), lines(&b.text), "{vtt}");
    }
    let _ = t.to_txt();
});
