//! The transcript model (`transcript.json`) and its text renderings: plain
//! text in paragraphs, SubRip (`.srt`) and WebVTT (`.vtt`) of the cues built by
//! `transcript/subtitles.rs`, plus strict SRT/VTT parsers
//! (used to check that the writers round-trip), the `mm:ss` / `h:mm:ss`
//! clock used for summary stamps, and word error rate for tests and the
//! benchmark.
//!
//! All times are integer **milliseconds** from the start of the audio.

use serde::{Deserialize, Serialize};

pub mod subtitles;

use subtitles::{Cue, CueRules};

/// One recognised word with its time and confidence (from whisper.cpp's token timestamps).
///
/// `text` is the word as spoken, with the punctuation whisper attached to it (`"country."`),
/// without leading whitespace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Word {
    /// Start time in milliseconds from the start of the audio.
    pub start_ms: u64,
    /// End time in milliseconds from the start of the audio (`>= start_ms`).
    pub end_ms: u64,
    /// The word, trimmed, punctuation attached.
    pub text: String,
    /// Mean probability of the word's tokens, 0–1 (whisper.cpp `whisper_token_data::p`).
    pub p: f32,
}

/// One timed piece of transcript text (a whisper segment on the audio's own timeline).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    /// Start time in milliseconds from the start of the audio.
    pub start_ms: u64,
    /// End time in milliseconds from the start of the audio (`>= start_ms`
    /// after [`Transcript::normalize`]).
    pub end_ms: u64,
    /// The spoken text. May contain line breaks; subtitle cues are built from its words
    /// (see [`subtitles::cues`]).
    pub text: String,
    /// The segment's words in time order, each inside `[start_ms, end_ms]`; empty when the
    /// source had no word times (older `transcript.json`, parsed subtitles).
    #[serde(default)]
    pub words: Vec<Word>,
}

/// How much of the speech found in the audio (by the energy gate) the transcript's words
/// cover. Recorded per task and per segment job in the manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coverage {
    /// Milliseconds of audio judged to be speech.
    pub speech_ms: u64,
    /// Stretches of that speech (`[start_ms, end_ms)` on the audio's timeline) that have no
    /// text, also after being decoded again on their own.
    pub uncovered_ms: Vec<(u64, u64)>,
    /// Stretches decoded again on their own: uncovered speech, cut repetition loops, and
    /// the utterances of windows the engine could decode only by sampling hot.
    pub retried: usize,
    /// Of those, how many gave text.
    pub recovered: usize,
}

impl Coverage {
    /// Milliseconds of speech without text.
    pub fn missing_ms(&self) -> u64 {
        self.uncovered_ms
            .iter()
            .map(|(a, b)| b.saturating_sub(*a))
            .sum()
    }

    /// Covered share of the speech, 0–1 (1 when there was no speech).
    pub fn ratio(&self) -> f64 {
        if self.speech_ms == 0 {
            return 1.0;
        }
        (1.0 - self.missing_ms() as f64 / self.speech_ms as f64).clamp(0.0, 1.0)
    }

    /// Adds another part's coverage (a segment job's) to this one.
    pub fn add(&mut self, other: &Coverage) {
        self.speech_ms += other.speech_ms;
        self.uncovered_ms.extend(other.uncovered_ms.iter().copied());
        self.uncovered_ms.sort_unstable();
        self.retried += other.retried;
        self.recovered += other.recovered;
    }

    /// The user-facing warning when the covered share is under `min` (0–1), e.g. "speech
    /// without text: the transcript covers 72 % of the detected speech (at least 90 % expected);
    /// 3 stretches (41 s), the first at 01:05, are listed in the manifest".
    pub fn warning(&self, min: f64) -> Option<String> {
        if self.ratio() >= min || self.uncovered_ms.is_empty() {
            return None;
        }
        Some(format!(
            "speech without text: the transcript covers {:.0} % of the detected speech \
             (at least {:.0} % expected); {} stretch{} ({:.0} s), the first at {}, produced no \
             text (listed under stages.transcribe.detail.uncovered in the manifest)",
            self.ratio() * 100.0,
            min * 100.0,
            self.uncovered_ms.len(),
            if self.uncovered_ms.len() == 1 {
                ""
            } else {
                "es"
            },
            self.missing_ms() as f64 / 1000.0,
            format_clock(self.uncovered_ms[0].0),
        ))
    }

    /// The manifest's detail fields: `coverage` (0–1, 3 decimals), `uncovered`
    /// (`[{start_ms, end_ms}]`), `coverage_retried`, `coverage_recovered`.
    pub fn detail(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut d = serde_json::Map::new();
        d.insert(
            "coverage".into(),
            serde_json::json!((self.ratio() * 1000.0).round() / 1000.0),
        );
        d.insert(
            "uncovered".into(),
            self.uncovered_ms
                .iter()
                .map(|(a, b)| serde_json::json!({"start_ms": a, "end_ms": b}))
                .collect(),
        );
        d.insert("coverage_retried".into(), self.retried.into());
        d.insert("coverage_recovered".into(), self.recovered.into());
        d
    }
}

/// A full transcript; its serde form is the `transcript.json` artifact.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Transcript {
    /// Language code reported by the ASR model (e.g. `"en"`).
    pub language: String,
    /// Model identifier (e.g. `"ggml-base.en"`).
    pub model: String,
    /// Duration of the transcribed audio in milliseconds.
    pub duration_ms: u64,
    /// Timed segments, in order after [`Transcript::normalize`].
    pub segments: Vec<Segment>,
}

/// A subtitle file that could not be parsed. `line` is 1-based.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// The WebVTT signature line (`WEBVTT`, optionally followed by a space
    /// or tab and free text) is missing.
    #[error("line 1: missing WEBVTT header")]
    MissingHeader,
    /// An SRT cue does not start with a decimal cue number.
    #[error("line {line}: expected a cue number, found {found:?}")]
    BadCueNumber {
        /// 1-based line number.
        line: usize,
        /// The offending line.
        found: String,
    },
    /// A cue timing line (`start --> end`) is missing or malformed.
    #[error("line {line}: bad cue timing {found:?}: {reason}")]
    BadTiming {
        /// 1-based line number.
        line: usize,
        /// The offending line.
        found: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl Transcript {
    /// Renders `transcript.json`: pretty-printed JSON with the fields
    /// `language`, `model`, `duration_ms` (ms) and `segments`
    /// (`[{start_ms, end_ms, text, words: [{start_ms, end_ms, text, p}]}]`, whisper's
    /// segments with their words, times in ms, `p` a probability 0–1); deserializes back
    /// into an equal [`Transcript`] with `serde_json::from_str`. Object keys are sorted.
    pub fn to_json(&self) -> String {
        // Built from `serde_json::Value`, whose `Display` is infallible,
        // instead of `to_string_pretty` (which returns a `Result` that cannot
        // fail for these plain types but would need an unwrap).
        let segments: Vec<serde_json::Value> = self
            .segments
            .iter()
            .map(|s| {
                let words: Vec<serde_json::Value> = s
                    .words
                    .iter()
                    .map(|w| {
                        serde_json::json!({
                            "start_ms": w.start_ms,
                            "end_ms": w.end_ms,
                            "text": w.text,
                            "p": json_f32(w.p),
                        })
                    })
                    .collect();
                serde_json::json!({
                    "start_ms": s.start_ms,
                    "end_ms": s.end_ms,
                    "text": s.text,
                    "words": words,
                })
            })
            .collect();
        let value = serde_json::json!({
            "language": self.language,
            "model": self.model,
            "duration_ms": self.duration_ms,
            "segments": segments,
        });
        format!("{value:#}\n")
    }

    /// Plain text in paragraphs: the segments' words flow as running text (joined with single
    /// spaces, no timestamps); a blank line starts a new paragraph at a pause of at least
    /// [`PARAGRAPH_PAUSE_MS`] between segments, or at the first sentence end after
    /// [`PARAGRAPH_SENTENCES`] sentences or [`PARAGRAPH_CHARS`] characters. Each paragraph
    /// ends with `\n`; an empty transcript gives `""`.
    pub fn to_txt(&self) -> String {
        let mut out = String::new();
        let (mut chars, mut sentences) = (0usize, 0usize);
        let mut prev_end: Option<u64> = None;
        let mut new_paragraph = false;
        for seg in &self.segments {
            let mut words = seg.text.split_whitespace().peekable();
            if words.peek().is_none() {
                continue;
            }
            if prev_end.is_some_and(|e| seg.start_ms.saturating_sub(e) >= PARAGRAPH_PAUSE_MS) {
                new_paragraph = true;
            }
            prev_end = Some(prev_end.map_or(seg.end_ms, |e| e.max(seg.end_ms)));
            for w in words {
                if new_paragraph {
                    out.push_str("\n\n");
                    (chars, sentences, new_paragraph) = (0, 0, false);
                } else if chars > 0 {
                    out.push(' ');
                    chars += 1;
                }
                out.push_str(w);
                chars += w.chars().count();
                if crate::domain::transcript::subtitles::ends_sentence(w) {
                    sentences += 1;
                    new_paragraph = sentences >= PARAGRAPH_SENTENCES || chars >= PARAGRAPH_CHARS;
                }
            }
        }
        if !out.is_empty() {
            out.push('\n');
        }
        out
    }

    /// SubRip of the cues [`subtitles::cues`] builds from the segments under `rules`; see
    /// [`write_srt`].
    pub fn to_srt(&self, rules: &CueRules) -> String {
        write_srt(&subtitles::cues(&self.segments, rules))
    }

    /// WebVTT of the cues [`subtitles::cues`] builds from the segments under `rules`; see
    /// [`write_vtt`].
    pub fn to_vtt(&self, rules: &CueRules) -> String {
        write_vtt(&subtitles::cues(&self.segments, rules))
    }

    /// Cleans segments in place:
    /// - trims each text (outer whitespace only) and drops segments whose
    ///   text is then empty;
    /// - clamps `end_ms` up to `start_ms` when it is smaller;
    /// - stably sorts by `(start_ms, end_ms)`, so starts are non-decreasing.
    ///
    /// Overlap (an end after the next start) is allowed and kept; nothing is
    /// clamped to `duration_ms`.
    pub fn normalize(&mut self) {
        for seg in &mut self.segments {
            let trimmed = seg.text.trim();
            if trimmed.len() != seg.text.len() {
                seg.text = trimmed.to_owned();
            }
            seg.end_ms = seg.end_ms.max(seg.start_ms);
        }
        self.segments.retain(|s| !s.text.is_empty());
        self.segments.sort_by_key(|s| (s.start_ms, s.end_ms));
    }
}

/// A new TXT paragraph starts at a pause of at least this many milliseconds between segments.
pub const PARAGRAPH_PAUSE_MS: u64 = 2000;
/// A new TXT paragraph starts at the first sentence end after this many sentences.
pub const PARAGRAPH_SENTENCES: usize = 6;
/// A new TXT paragraph starts at the first sentence end after this many characters.
pub const PARAGRAPH_CHARS: usize = 600;

/// `f32` as the JSON number of its shortest decimal form (`0.9`, not `0.899999976…`), which
/// reads back as the same `f32`; non-finite values become 0.
fn json_f32(v: f32) -> serde_json::Value {
    let v = if v.is_finite() { v } else { 0.0 };
    let shortest = v.to_string().parse::<f64>().unwrap_or(f64::from(v));
    serde_json::Number::from_f64(shortest).map_or(serde_json::Value::Null, Into::into)
}

/// SubRip. Each cue is a 1-based number line, a timing line
/// `HH:MM:SS,mmm --> HH:MM:SS,mmm` (hours zero-padded to at least two
/// digits, so 100 h and more work), the text lines, and a blank line.
///
/// Each line is written trimmed, with blank lines removed and inner line breaks made into
/// lines (a blank line would end the cue), so cues from [`subtitles::cues`] survive a
/// [`parse_srt`] round trip unchanged. An `end_ms < start_ms` is written as `start_ms`. SRT
/// has no escaping; `<`, `&` and `-->` are written verbatim (players treat `<b>` as markup).
/// There is no formal SRT spec; layout per <https://en.wikipedia.org/wiki/SubRip#Format>.
/// No cues → `""`.
pub fn write_srt(cues: &[Cue]) -> String {
    let mut out = String::new();
    for (i, cue) in cues.iter().enumerate() {
        out.push_str(&format!(
            "{}\n{} --> {}\n",
            i + 1,
            stamp(cue.start_ms, ','),
            stamp(cue.end_ms.max(cue.start_ms), ',')
        ));
        for line in cue.lines.iter().flat_map(|l| cue_lines(l)) {
            out.push_str(&line);
            out.push('\n');
        }
        out.push('\n');
    }
    out
}

/// WebVTT: a `WEBVTT` line, then for each cue a blank line, a timing
/// line `HH:MM:SS.mmm --> HH:MM:SS.mmm` and the text lines; no cue
/// identifiers or settings. Ends with `\n`.
///
/// Text lines are cleaned as in [`write_srt`] and escaped: `&` → `&amp;`, `<` → `&lt;`,
/// `>` → `&gt;`. Per the WebVTT spec (W3C, <https://www.w3.org/TR/webvtt1/>,
/// "WebVTT caption or subtitle cue text": cue text may not contain `&` or
/// `<` except as escapes/tags, and "WebVTT cue text escapes" defines
/// `&amp;` `&lt;` `&gt;`), and a cue payload must not contain `-->`;
/// escaping `>` turns any `-->` into `--&gt;`. Hours are two or more
/// digits as the spec's "WebVTT timestamp" allows. An `end_ms < start_ms`
/// is written as `start_ms`. [`parse_vtt`] reads the cues back unchanged.
pub fn write_vtt(cues: &[Cue]) -> String {
    let mut out = String::from("WEBVTT\n");
    for cue in cues {
        out.push_str(&format!(
            "\n{} --> {}\n",
            stamp(cue.start_ms, '.'),
            stamp(cue.end_ms.max(cue.start_ms), '.')
        ));
        for line in cue.lines.iter().flat_map(|l| cue_lines(l)) {
            out.push_str(&vtt_escape(&line));
            out.push('\n');
        }
    }
    out
}

/// Splits text into trimmed, non-blank lines (any of `\r\n`, `\r`, `\n`).
fn cue_lines(text: &str) -> Vec<String> {
    text.split(['\n', '\r'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `HH:MM:SS<sep>mmm`, hours at least two digits.
fn stamp(ms: u64, sep: char) -> String {
    let h = ms / 3_600_000;
    let m = ms / 60_000 % 60;
    let s = ms / 1000 % 60;
    let milli = ms % 1000;
    format!("{h:02}:{m:02}:{s:02}{sep}{milli:03}")
}

fn vtt_escape(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    for c in line.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

/// Removes `<...>` tags (WebVTT markup such as `<b>`, `<c.x>`, `<v Name>`,
/// `<00:00:01.000>`), then decodes character references.
fn vtt_unescape(line: &str) -> String {
    let mut untagged = String::with_capacity(line.len());
    let mut in_tag = false;
    for c in line.chars() {
        match (in_tag, c) {
            (false, '<') => in_tag = true,
            (true, '>') => in_tag = false,
            (false, c) => untagged.push(c),
            (true, _) => {}
        }
    }
    decode_entities(&untagged)
}

/// Decodes `&amp; &lt; &gt; &nbsp; &lrm; &rlm; &quot; &apos;` and numeric
/// references (`&#NN;`, `&#xHH;`); anything else is kept verbatim.
fn decode_entities(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('&') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        let decoded = after.find(';').and_then(|semi| {
            let name = &after[..semi];
            let ch = match name {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "nbsp" => Some('\u{a0}'),
                "lrm" => Some('\u{200e}'),
                "rlm" => Some('\u{200f}'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                _ => name
                    .strip_prefix("#x")
                    .or_else(|| name.strip_prefix("#X"))
                    .and_then(|hex| u32::from_str_radix(hex, 16).ok())
                    .or_else(|| name.strip_prefix('#').and_then(|d| d.parse::<u32>().ok()))
                    .and_then(char::from_u32),
            }?;
            Some((ch, semi + 1))
        });
        match decoded {
            Some((ch, used)) => {
                out.push(ch);
                rest = &after[used..];
            }
            None => {
                out.push('&');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Lines with their 1-based numbers; strips a UTF-8 BOM, accepts LF and CRLF.
fn numbered_lines(s: &str) -> Vec<(usize, &str)> {
    let s = s.strip_prefix('\u{feff}').unwrap_or(s);
    s.lines()
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .collect()
}

/// Groups non-blank lines into blocks separated by blank (whitespace-only)
/// lines.
///
/// `empty_only`: only a truly empty line ends a block (WebVTT: a cue ends at an empty line,
/// and YouTube's captions hold lines of one space inside cues); otherwise a line of
/// whitespace does too (SRT, which has no spec).
fn blocks<'a>(lines: &[(usize, &'a str)], empty_only: bool) -> Vec<Vec<(usize, &'a str)>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    for &(n, l) in lines {
        if l.is_empty() || (!empty_only && l.trim().is_empty()) {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
        } else if cur.is_empty() && l.trim().is_empty() {
            // Whitespace before a block's first line belongs to no block.
        } else {
            cur.push((n, l));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Parses `[H…H:]MM:SS<sep>mmm` (hours optional only if `hours_optional`).
fn parse_stamp(t: &str, sep: char, hours_optional: bool) -> Result<u64, String> {
    let (clock, frac) = t
        .rsplit_once(sep)
        .ok_or_else(|| format!("timestamp {t:?} lacks '{sep}' before milliseconds"))?;
    let digits = |s: &str, what: &str| -> Result<u64, String> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("{what} {s:?} in {t:?} is not a number"));
        }
        s.parse::<u64>()
            .map_err(|_| format!("{what} {s:?} in {t:?} is out of range"))
    };
    if frac.len() != 3 {
        return Err(format!("milliseconds in {t:?} must have 3 digits"));
    }
    let ms = digits(frac, "milliseconds")?;
    let parts: Vec<&str> = clock.split(':').collect();
    let (h, m, s) = match parts.as_slice() {
        [h, m, s] => {
            if h.len() < 2 {
                return Err(format!("hours in {t:?} must have at least 2 digits"));
            }
            (digits(h, "hours")?, *m, *s)
        }
        [m, s] if hours_optional => (0, *m, *s),
        _ => return Err(format!("timestamp {t:?} is not HH:MM:SS{sep}mmm")),
    };
    if m.len() != 2 || s.len() != 2 {
        return Err(format!("minutes and seconds in {t:?} must have 2 digits"));
    }
    let (m, s) = (digits(m, "minutes")?, digits(s, "seconds")?);
    if m > 59 || s > 59 {
        return Err(format!("minutes/seconds in {t:?} must be below 60"));
    }
    h.checked_mul(3_600_000)
        .and_then(|v| v.checked_add(m * 60_000 + s * 1000 + ms))
        .ok_or_else(|| format!("timestamp {t:?} is out of range"))
}

/// Parses a timing line `start --> end[ settings]`.
fn parse_timing(
    line: usize,
    text: &str,
    sep: char,
    hours_optional: bool,
    allow_settings: bool,
) -> Result<(u64, u64), FormatError> {
    let bad = |reason: String| FormatError::BadTiming {
        line,
        found: text.to_owned(),
        reason,
    };
    let (start, rest) = text
        .split_once("-->")
        .ok_or_else(|| bad("missing \"-->\"".into()))?;
    let start = start.trim();
    let rest = rest.trim();
    let (end, settings) = match rest.split_once([' ', '\t']) {
        Some((e, s)) => (e, s.trim()),
        None => (rest, ""),
    };
    if !settings.is_empty() && !allow_settings {
        return Err(bad(format!("unexpected text {settings:?} after end time")));
    }
    let start = parse_stamp(start, sep, hours_optional).map_err(&bad)?;
    let end = parse_stamp(end, sep, hours_optional).map_err(&bad)?;
    if end < start {
        return Err(bad("end time is before start time".into()));
    }
    Ok((start, end))
}

/// Parses SubRip text into cues, strictly.
///
/// Each cue must be: a line holding only a decimal cue number (values are
/// not required to be sequential), a timing line
/// `HH:MM:SS,mmm --> HH:MM:SS,mmm` (hours ≥ 2 digits, minutes and seconds
/// < 60, exactly 3 millisecond digits, comma separator, end ≥ start, nothing
/// after the end time), then zero or more text lines. Cues are separated by
/// blank lines. A UTF-8 BOM and CRLF line endings are accepted. Text lines
/// are returned trimmed as the cue's lines; SRT has no escapes, so text (including
/// `<b>` or `-->`) is returned verbatim.
///
/// # Errors
/// [`FormatError::BadCueNumber`] or [`FormatError::BadTiming`] with the
/// 1-based line number.
pub fn parse_srt(s: &str) -> Result<Vec<Cue>, FormatError> {
    let lines = numbered_lines(s);
    let mut out = Vec::new();
    for block in blocks(&lines, false) {
        let (n, num) = block[0];
        let num = num.trim();
        if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
            return Err(FormatError::BadCueNumber {
                line: n,
                found: num.to_owned(),
            });
        }
        let Some(&(tn, timing)) = block.get(1) else {
            return Err(FormatError::BadTiming {
                line: n + 1,
                found: String::new(),
                reason: "cue has no timing line".into(),
            });
        };
        let (start_ms, end_ms) = parse_timing(tn, timing, ',', false, false)?;
        let lines = block[2..]
            .iter()
            .map(|(_, l)| l.trim().to_owned())
            .collect();
        out.push(Cue {
            start_ms,
            end_ms,
            lines,
        });
    }
    Ok(out)
}

/// Parses WebVTT text into cues.
///
/// The first line must be `WEBVTT`, alone or followed by a space or tab and
/// free text (UTF-8 BOM allowed). Header lines up to the first blank line are
/// ignored, as are `NOTE`, `STYLE` and `REGION` blocks. A cue block is an
/// optional identifier line (which may not contain `-->`), a timing line
/// `[HH:]MM:SS.mmm --> [HH:]MM:SS.mmm [settings]` (hours optional per the
/// spec's "WebVTT timestamp"; minutes/seconds < 60; exactly 3 millisecond
/// digits; end ≥ start), then text lines. Text is returned with markup tags
/// (`<b>`, `<c.x>`, `<v Name>`, `<00:00:01.000>`) removed and character
/// references decoded (`&amp;` `&lt;` `&gt;` `&nbsp;` `&lrm;` `&rlm;`,
/// numeric), lines trimmed; lines left empty by that are dropped.
/// Spec: <https://www.w3.org/TR/webvtt1/>.
///
/// # Errors
/// [`FormatError::MissingHeader`]; [`FormatError::BadTiming`] for a block
/// whose first or second line is not a valid timing line.
pub fn parse_vtt(s: &str) -> Result<Vec<Cue>, FormatError> {
    let lines = numbered_lines(s);
    let header_ok = lines.first().is_some_and(|(_, l)| {
        l.strip_prefix("WEBVTT")
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']))
    });
    if !header_ok {
        return Err(FormatError::MissingHeader);
    }
    let mut out = Vec::new();
    // The first block is the header (signature plus optional header lines).
    for block in blocks(&lines, true).into_iter().skip(1) {
        let (n0, first) = block[0];
        let kw = first.split([' ', '\t']).next().unwrap_or_default();
        if matches!(kw, "NOTE" | "STYLE" | "REGION") && !first.contains("-->") {
            continue;
        }
        let timing_idx = if first.contains("-->") { 0 } else { 1 };
        let Some(&(tn, timing)) = block.get(timing_idx) else {
            return Err(FormatError::BadTiming {
                line: n0 + 1,
                found: String::new(),
                reason: "cue has no timing line".into(),
            });
        };
        let (start_ms, end_ms) = parse_timing(tn, timing, '.', true, true)?;
        let lines = block[timing_idx + 1..]
            .iter()
            .map(|(_, l)| vtt_unescape(l).trim().to_owned())
            .filter(|l| !l.is_empty())
            .collect();
        out.push(Cue {
            start_ms,
            end_ms,
            lines,
        });
    }
    Ok(out)
}

/// Transcript segments from the cues of a captions file (a video's own captions, parsed by
/// [`parse_vtt`]): one segment per cue, its lines joined by spaces, no word times.
///
/// YouTube's automatic captions repeat text: each cue shows the line before it again above
/// the new one (and a 10 ms cue holds the finished line). A line equal to one of the previous
/// cue's lines is therefore dropped, and a cue left without new text gives no segment, so
/// every spoken line appears once. Human-made captions have no such repeats and pass intact.
pub fn segments_from_cues(cues: &[Cue]) -> Vec<Segment> {
    let mut out = Vec::new();
    let mut previous: &[String] = &[];
    for cue in cues {
        let new: Vec<&str> = cue
            .lines
            .iter()
            .filter(|l| !previous.contains(l))
            .map(|l| l.trim())
            .filter(|l| !l.is_empty())
            .collect();
        previous = &cue.lines;
        if new.is_empty() {
            continue;
        }
        out.push(Segment {
            start_ms: cue.start_ms,
            end_ms: cue.end_ms.max(cue.start_ms),
            text: new.join(" "),
            words: Vec::new(),
        });
    }
    out
}

/// Formats a time in milliseconds as a clock for summary stamps:
/// `mm:ss` below one hour (`0` → `00:00`, `59_999` → `00:59`), `h:mm:ss` from
/// one hour on (`3_600_000` → `1:00:00`, hours unpadded and unbounded).
/// Sub-second parts are truncated, not rounded, so a stamp never points past
/// the moment it labels.
pub fn format_clock(ms: u64) -> String {
    let total = ms / 1000;
    let (h, m, s) = (total / 3600, total / 60 % 60, total % 60);
    if h == 0 {
        format!("{m:02}:{s:02}")
    } else {
        format!("{h}:{m:02}:{s:02}")
    }
}

/// Whole words the WER normalizer spells out: the contractions and titles of OpenAI Whisper's
/// `EnglishTextNormalizer` (`whisper/normalizers/english.py`, its `replacers`), the
/// normalizer Whisper's and the Open ASR Leaderboard's WER figures are computed with.
const SPELLED_OUT: [(&str, &str); 35] = [
    ("won't", "will not"),
    ("can't", "can not"),
    ("let's", "let us"),
    ("ain't", "aint"),
    ("y'all", "you all"),
    ("wanna", "want to"),
    ("gotta", "got to"),
    ("gonna", "going to"),
    ("i'ma", "i am going to"),
    ("imma", "i am going to"),
    ("woulda", "would have"),
    ("coulda", "could have"),
    ("shoulda", "should have"),
    ("ma'am", "madam"),
    ("mr", "mister"),
    ("mrs", "missus"),
    ("st", "saint"),
    ("dr", "doctor"),
    ("prof", "professor"),
    ("capt", "captain"),
    ("gov", "governor"),
    ("ald", "alderman"),
    ("gen", "general"),
    ("sen", "senator"),
    ("rep", "representative"),
    ("pres", "president"),
    ("rev", "reverend"),
    ("hon", "honorable"),
    ("asst", "assistant"),
    ("assoc", "associate"),
    ("lt", "lieutenant"),
    ("col", "colonel"),
    ("jr", "junior"),
    ("sr", "senior"),
    ("esq", "esquire"),
];

/// Contraction endings and what they stand for, longest first (Whisper's `replacers` again:
/// `n't` → `not`, `'re` → `are`, `'s` → `is`, `'d` → `would`, `'ll` → `will`, `'t` → `not`,
/// `'ve` → `have`, `'m` → `am`; `'s` and `'d` before `been`, `gone`, `done`, `got` are
/// `has` / `had`, see [`wer_words`]).
const CONTRACTIONS: [(&str, &str); 8] = [
    ("n't", "not"),
    ("'re", "are"),
    ("'ll", "will"),
    ("'ve", "have"),
    ("'s", "is"),
    ("'d", "would"),
    ("'t", "not"),
    ("'m", "am"),
];

/// Splits into normalized words the way Whisper's English normalizer does for words
/// (lowercased; contractions and titles spelled out: `we're` = `we are`, `Mr.` = `mister`,
/// `it's been` = `it has been`), then drops the remaining apostrophes (`o'brien` =
/// `obrien`) and treats every other non-alphanumeric character as a space
/// (`state-of-the-art` = `state of the art`). Numbers are left as written (`42` ≠ `forty-two`).
fn wer_words(s: &str) -> Vec<String> {
    let lowered: String = s
        .to_lowercase()
        .chars()
        .map(|c| match c {
            '\u{2019}' | '\u{2018}' => '\'',
            c if c.is_alphanumeric() || c == '\'' => c,
            _ => ' ',
        })
        .collect();
    let tokens: Vec<&str> = lowered
        .split_whitespace()
        .map(|t| t.trim_start_matches('\'').trim_end_matches('\''))
        .filter(|t| !t.is_empty())
        .collect();
    let mut out = Vec::with_capacity(tokens.len());
    for (i, &t) in tokens.iter().enumerate() {
        let next = tokens.get(i + 1).copied().unwrap_or("");
        let perfect = matches!(next, "been" | "gone" | "done" | "got");
        if let Some((_, full)) = SPELLED_OUT.iter().find(|(short, _)| *short == t) {
            out.extend(full.split(' ').map(str::to_owned));
        } else if let Some((stem, end, full)) = CONTRACTIONS
            .iter()
            .find_map(|&(end, full)| t.strip_suffix(end).map(|stem| (stem, end, full)))
            .filter(|(stem, _, _)| !stem.is_empty())
        {
            let full = match (end, perfect) {
                ("'s", true) => "has",
                ("'d", true) => "had",
                _ => full,
            };
            out.push(stem.replace('\'', ""));
            out.push(full.to_owned());
        } else {
            out.push(t.replace('\'', ""));
        }
    }
    out.retain(|w| !w.is_empty());
    out
}

/// Word error rate of `hypothesis` against `reference`: word-level
/// Levenshtein distance (substitutions + deletions + insertions, each cost 1)
/// divided by the number of reference words.
///
/// Both texts are normalized first ([`wer_words`]): lowercased, contractions and titles
/// spelled out as Whisper's English normalizer does (`don't` = `do not`, `Mr.` = `mister`),
/// other apostrophes removed, all other punctuation treated as whitespace
/// (`state-of-the-art` = `state of the art`). The result is ≥ 0 and can
/// exceed 1 when the hypothesis has many insertions.
///
/// Empty reference (no words after normalization): returns `0.0` if the
/// hypothesis is also empty, else `1.0` (the usual definition would divide
/// by zero; we report "entirely wrong" rather than infinity so averages stay
/// finite).
pub fn word_error_rate(reference: &str, hypothesis: &str) -> f64 {
    let r = wer_words(reference);
    let h = wer_words(hypothesis);
    if r.is_empty() {
        return if h.is_empty() { 0.0 } else { 1.0 };
    }
    // Two-row dynamic programming over hypothesis positions.
    let mut prev: Vec<usize> = (0..=h.len()).collect();
    let mut cur = vec![0usize; h.len() + 1];
    for (i, rw) in r.iter().enumerate() {
        cur[0] = i + 1;
        for (j, hw) in h.iter().enumerate() {
            let sub = prev[j] + usize::from(rw != hw);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[h.len()] as f64 / r.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captions_cues_become_segments_once() {
        // yt-dlp's VTT of YouTube automatic captions: each cue repeats the previous line.
        let auto = "WEBVTT\nKind: captions\nLanguage: en\n\n\
00:00:00.160 --> 00:00:02.869 align:start position:0%\n \nand<00:00:00.480><c> so</c><00:00:00.719><c> my</c>\n\n\
00:00:02.869 --> 00:00:02.879 align:start position:0%\nand so my\n \n\n\
00:00:02.879 --> 00:00:05.110 align:start position:0%\nand so my\nfellow<00:00:03.199><c> Americans</c>\n\n";
        let segs = segments_from_cues(&parse_vtt(auto).unwrap());
        let got: Vec<(u64, u64, &str)> = segs
            .iter()
            .map(|s| (s.start_ms, s.end_ms, s.text.as_str()))
            .collect();
        assert_eq!(
            got,
            [(160, 2869, "and so my"), (2879, 5110, "fellow Americans")]
        );
        // Human-made captions: two lines of one cue stay one segment.
        let human =
            "WEBVTT\n\n00:00:01.000 --> 00:00:04.000\nAsk not what your country\ncan do for you.\n";
        let segs = segments_from_cues(&parse_vtt(human).unwrap());
        assert_eq!(segs.len(), 1);
        assert_eq!(segs[0].text, "Ask not what your country can do for you.");
        assert!(segs[0].words.is_empty());
    }

    fn seg(start_ms: u64, end_ms: u64, text: &str) -> Segment {
        Segment {
            start_ms,
            end_ms,
            text: text.to_owned(),
            words: Vec::new(),
        }
    }

    fn tr(segments: Vec<Segment>) -> Transcript {
        Transcript {
            language: "en".into(),
            model: "ggml-base.en".into(),
            duration_ms: 10_000,
            segments,
        }
    }

    fn tricky() -> Vec<Segment> {
        vec![
            seg(0, 1_500, "Hello 👋 world 🎉"),
            seg(1_500, 2_000, "-->"),
            seg(2_000, 3_000, "a --> b"),
            seg(3_000, 4_000, "<b>bold</b> & <i>not</i> markup"),
            seg(4_000, 5_000, "fish &amp; chips &lt; 3"),
            seg(5_000, 6_000, "line one\nline two"),
            seg(6_000, 7_000, "مرحبا بالعالم"),
            seg(7_000, 8_000, "שלום עולם \u{200f}!"),
            seg(8_000, 8_000, "1"),
            seg(8_500, 9_000, "00:00:01,000 --> 00:00:02,000"),
            seg(9_000, 9_500, "WEBVTT"),
            seg(9_500, 9_900, "NOTE this is text"),
            seg(359_999_999, 360_000_000, "hour 99 → 100"),
            seg(3_600_000_000, 3_600_000_001, "1000 hours"),
        ]
    }

    fn cue(start_ms: u64, end_ms: u64, lines: &[&str]) -> Cue {
        Cue {
            start_ms,
            end_ms,
            lines: lines.iter().map(|l| l.to_string()).collect(),
        }
    }

    #[test]
    fn srt_round_trip() {
        let r = CueRules::default();
        let t = tr(tricky());
        let want = subtitles::cues(&t.segments, &r);
        let back = parse_srt(&t.to_srt(&r)).unwrap();
        assert_eq!(back, want);
        // Every word survives, in order.
        let words = |it: &mut dyn Iterator<Item = String>| -> Vec<String> {
            it.flat_map(|s| s.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
                .collect()
        };
        assert_eq!(
            words(&mut back.iter().map(Cue::text)),
            words(&mut t.segments.iter().map(|s| s.text.clone()))
        );
        assert_eq!(tr(vec![]).to_srt(&r), "");
        assert_eq!(parse_srt("").unwrap(), vec![]);
    }

    #[test]
    fn vtt_round_trip() {
        let r = CueRules::default();
        let t = tr(tricky());
        let vtt = t.to_vtt(&r);
        assert!(
            !vtt.lines()
                .any(|l| !l.contains(" --> ") && l.contains("-->")),
            "{vtt}"
        );
        assert!(vtt.contains("&lt;b&gt;bold&lt;/b&gt; &amp;"), "{vtt}");
        assert!(vtt.contains("&lt;i&gt;not&lt;/i&gt;"), "{vtt}");
        assert!(vtt.contains("fish &amp;amp; chips &amp;lt; 3"), "{vtt}");
        let back = parse_vtt(&vtt).unwrap();
        assert_eq!(back, subtitles::cues(&t.segments, &r));
        assert_eq!(tr(vec![]).to_vtt(&r), "WEBVTT\n");
        assert_eq!(parse_vtt("WEBVTT\n").unwrap(), vec![]);
    }

    #[test]
    fn hours_beyond_99() {
        let r = CueRules::default();
        let t = tr(vec![
            seg(359_999_999, 360_000_000, "hour 99 → 100"),
            seg(3_600_000_000, 3_600_000_001, "1000 hours"),
        ]);
        assert_eq!(
            t.to_srt(&r),
            "1\n99:59:59,999 --> 100:00:00,999\nhour 99 → 100\n\n\
             2\n1000:00:00,000 --> 1000:00:01,000\n1000 hours\n\n"
        );
        assert_eq!(
            parse_vtt(&t.to_vtt(&r)).unwrap(),
            vec![
                cue(359_999_999, 360_000_999, &["hour 99 → 100"]),
                cue(3_600_000_000, 3_600_001_000, &["1000 hours"]),
            ]
        );
    }

    #[test]
    fn writers_clean_lines() {
        let r = CueRules::default();
        let t = tr(vec![
            seg(0, 1000, "  a\n\n\n b \r\n\r\nc  "),
            seg(1000, 2000, " \n "),
        ]);
        let srt = t.to_srt(&r);
        assert_eq!(srt, "1\n00:00:00,000 --> 00:00:01,000\na b c\n\n");
        assert_eq!(parse_srt(&srt).unwrap(), vec![cue(0, 1000, &["a b c"])]);
        assert_eq!(
            parse_vtt(&t.to_vtt(&r)).unwrap(),
            vec![cue(0, 1000, &["a b c"])]
        );
        assert_eq!(t.to_txt(), "a b c\n");
        // Hand-made cues with line breaks or blank lines are cleaned, never a blank line.
        let odd = [cue(0, 5, &[" x \n\n y", "", "z"])];
        assert_eq!(
            write_srt(&odd),
            "1\n00:00:00,000 --> 00:00:00,005\nx\ny\nz\n\n"
        );
        assert_eq!(
            parse_vtt(&write_vtt(&odd)).unwrap(),
            vec![cue(0, 5, &["x", "y", "z"])]
        );
    }

    #[test]
    fn exact_output_two_segments() {
        let r = CueRules::default();
        let t = tr(vec![
            seg(0, 2_500, "Hello there."),
            seg(2_500, 6_004, "General <Kenobi> & co."),
        ]);
        assert_eq!(
            t.to_srt(&r),
            "1\n00:00:00,000 --> 00:00:02,500\nHello there.\n\n\
             2\n00:00:02,500 --> 00:00:06,004\nGeneral <Kenobi> & co.\n\n"
        );
        assert_eq!(
            t.to_vtt(&r),
            "WEBVTT\n\n00:00:00.000 --> 00:00:02.500\nHello there.\n\n\
             00:00:02.500 --> 00:00:06.004\nGeneral &lt;Kenobi&gt; &amp; co.\n"
        );
        assert_eq!(t.to_txt(), "Hello there. General <Kenobi> & co.\n");
        let json = t.to_json();
        let back: Transcript = serde_json::from_str(&json).unwrap();
        assert_eq!(back, t);
        assert!(json.contains("\"duration_ms\": 10000"), "{json}");
    }

    #[test]
    fn json_keeps_words() {
        let mut t = tr(vec![seg(0, 900, "Ask not.")]);
        t.segments[0].words = vec![
            Word {
                start_ms: 0,
                end_ms: 400,
                text: "Ask".into(),
                p: 0.9,
            },
            Word {
                start_ms: 420,
                end_ms: 900,
                text: "not.".into(),
                p: 0.123_456_7,
            },
        ];
        let json = t.to_json();
        assert!(
            json.contains("\"end_ms\": 400,\n          \"p\": 0.9,\n          \"start_ms\": 0,\n          \"text\": \"Ask\""),
            "{json}"
        );
        let back: Transcript = serde_json::from_str(&json).unwrap();
        assert_eq!(back, t);
        t.segments[0].words[0].p = f32::NAN;
        let back: Transcript = serde_json::from_str(&t.to_json()).unwrap();
        assert_eq!(back.segments[0].words[0].p, 0.0);
    }

    #[test]
    fn txt_paragraphs() {
        // Sentences flow; a pause of 2 s starts a paragraph, 1.9 s does not.
        let t = tr(vec![
            seg(0, 1_000, "One."),
            seg(1_000, 2_000, "Two\nthree."),
            seg(3_900, 4_000, "Four."),
            seg(6_000, 7_000, "Five."),
        ]);
        assert_eq!(t.to_txt(), "One. Two three. Four.\n\nFive.\n");
        // Six sentences end a paragraph, also inside one segment.
        let t = tr(vec![seg(0, 9_000, "A. B. C. D. E. F. G. H.")]);
        assert_eq!(t.to_txt(), "A. B. C. D. E. F.\n\nG. H.\n");
        // About 600 characters end a paragraph at the next sentence end, not mid-sentence.
        let long = format!("{}end.", "word ".repeat(130));
        let t = tr(vec![seg(0, 1_000, &long), seg(1_000, 2_000, "Next one.")]);
        let txt = t.to_txt();
        assert_eq!(txt, format!("{long}\n\nNext one.\n"));
        assert_eq!(tr(vec![seg(0, 1, " ")]).to_txt(), "");
    }

    #[test]
    fn writers_clamp_end_before_start() {
        let r = CueRules::default();
        let t = tr(vec![seg(5_000, 1_000, "x")]);
        assert!(t.to_srt(&r).contains("00:00:05,000 --> 00:00:06,000"));
        assert_eq!(
            parse_vtt(&t.to_vtt(&r)).unwrap(),
            vec![cue(5_000, 6_000, &["x"])]
        );
        assert_eq!(
            write_srt(&[cue(5_000, 1_000, &["x"])]),
            "1\n00:00:05,000 --> 00:00:05,000\nx\n\n"
        );
    }

    #[test]
    fn normalize_sorts_clamps_trims() {
        let mut t = tr(vec![
            seg(3_000, 4_000, "  c  "),
            seg(1_000, 500, "a"),
            seg(2_000, 2_500, "   "),
            seg(1_000, 1_200, "b"),
            seg(0, 0, ""),
        ]);
        t.normalize();
        assert_eq!(
            t.segments,
            vec![
                seg(1_000, 1_000, "a"),
                seg(1_000, 1_200, "b"),
                seg(3_000, 4_000, "c")
            ]
        );
        assert!(t
            .segments
            .windows(2)
            .all(|w| w[0].start_ms <= w[1].start_ms));
        assert!(t.segments.iter().all(|s| s.end_ms >= s.start_ms));
        let once = t.clone();
        t.normalize();
        assert_eq!(t, once, "idempotent");
    }

    #[test]
    fn parsers_are_strict() {
        let bad_srt = [
            "x\n00:00:00,000 --> 00:00:01,000\nhi\n",
            "1\n00:00:00.000 --> 00:00:01.000\nhi\n",
            "1\n00:00:00,000 -> 00:00:01,000\nhi\n",
            "1\n00:00:02,000 --> 00:00:01,000\nhi\n",
            "1\n00:60:00,000 --> 00:61:00,000\nhi\n",
            "1\n00:00:00,00 --> 00:00:01,000\nhi\n",
            "1\n0:00:00,000 --> 00:00:01,000\nhi\n",
            "1\n00:00,000 --> 00:01,000\nhi\n",
            "1\n00:00:00,000 --> 00:00:01,000 X1:0\nhi\n",
            "1\n",
        ];
        for s in bad_srt {
            assert!(parse_srt(s).is_err(), "{s:?}");
        }
        assert_eq!(
            parse_srt("\u{feff}1\r\n00:00:01,000 --> 00:00:02,000\r\nhi\r\n\r\n").unwrap(),
            vec![cue(1_000, 2_000, &["hi"])]
        );
        assert_eq!(parse_vtt("hello\n"), Err(FormatError::MissingHeader));
        assert_eq!(parse_vtt("WEBVTTX\n"), Err(FormatError::MissingHeader));
        assert!(parse_vtt("WEBVTT\n\n00:00.000 --> 00:01\nhi\n").is_err());
        assert!(parse_vtt("WEBVTT\n\nid\nnot a timing\nhi\n").is_err());
        // Real-world VTT features: header text, NOTE/STYLE, ids, settings,
        // optional hours, tags, entities.
        let vtt = "WEBVTT - title\nKind: captions\n\nNOTE a comment\nspanning lines\n\n\
                   STYLE\n::cue { color: red }\n\n\
                   intro\n00:01.000 --> 00:04.000 line:0 align:start\n<v Roger>We are <b>here</b> &amp; now&nbsp;<00:02.000>ok\n\n\
                   00:00:05.000 --> 00:00:06.500\n&lt;3 &#x41;&#66; &bogus; a&b\n";
        assert_eq!(
            parse_vtt(vtt).unwrap(),
            vec![
                cue(1_000, 4_000, &["We are here & now\u{a0}ok"]),
                cue(5_000, 6_500, &["<3 AB &bogus; a&b"]),
            ]
        );
    }

    #[test]
    fn clock() {
        assert_eq!(format_clock(0), "00:00");
        assert_eq!(format_clock(999), "00:00");
        assert_eq!(format_clock(59_999), "00:59");
        assert_eq!(format_clock(60_000), "01:00");
        assert_eq!(format_clock(3_599_999), "59:59");
        assert_eq!(format_clock(3_600_000), "1:00:00");
        assert_eq!(format_clock(3_723_004), "1:02:03");
        assert_eq!(format_clock(360_000_000), "100:00:00");
    }

    #[test]
    fn wer() {
        assert_eq!(word_error_rate("the cat sat down", "the cat sat down"), 0.0);
        assert_eq!(
            word_error_rate("the cat sat down", "the dog sat down"),
            0.25
        );
        assert_eq!(
            word_error_rate("The cat, sat down!", "the CAT sat... down"),
            0.0
        );
        assert_eq!(word_error_rate("don't stop", "do not stop"), 0.0);
        assert_eq!(word_error_rate("do not stop", "don't stop"), 0.0);
        assert_eq!(word_error_rate("we are glad", "we're glad"), 0.0);
        assert_eq!(word_error_rate("MISTER QUILTER", "Mr. Quilter"), 0.0);
        assert_eq!(word_error_rate("it has been", "it's been"), 0.0);
        assert_eq!(word_error_rate("it is here", "it’s here"), 0.0);
        assert_eq!(word_error_rate("she had gone", "she'd gone"), 0.0);
        assert_eq!(word_error_rate("i would go", "I'd go"), 0.0);
        assert_eq!(word_error_rate("they will not", "they won't"), 0.0);
        assert_eq!(word_error_rate("o'brien", "OBrien"), 0.0);
        assert_eq!(word_error_rate("'quoted'", "quoted"), 0.0);
        // A contraction is still its words: a wrong one is one error.
        assert_eq!(word_error_rate("we are glad", "we were glad"), 1.0 / 3.0);
        assert_eq!(word_error_rate("state-of-the-art", "state of the art"), 0.0);
        assert_eq!(word_error_rate("a b c d", "a c d"), 0.25); // deletion
        assert_eq!(word_error_rate("a b", "a x b y"), 1.0); // two insertions
        assert_eq!(word_error_rate("a b", ""), 1.0);
        assert_eq!(word_error_rate("", ""), 0.0);
        assert_eq!(word_error_rate("...", " "), 0.0);
        assert_eq!(word_error_rate("", "hello"), 1.0);
        assert_eq!(word_error_rate("Ünïcode wörds", "ünïcode WÖRDS"), 0.0);
    }
}
