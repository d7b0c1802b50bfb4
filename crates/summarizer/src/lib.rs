//! Transcript summarization for tubescribe.
//!
//! Input is a list of transcript [`Segment`]s (times in milliseconds, optionally with their
//! [`Word`]s); output is a [`Summary`] whose every key-point timestamp is the start of a real
//! transcript segment or of a real word — a model is never allowed to invent a time.
//!
//! Two summarizers are provided:
//!
//! * [`extractive`] — the offline default: deterministic, pure Rust, no model. Sentences are
//!   selected from the transcript with TF-IDF + TextRank + MMR (near-duplicates cut), each
//!   stamped with its first word's start, and chapters are time buckets titled with their
//!   most central sentence (or the video's own chapters when the caller has them).
//! * [`llm`] — a thin client for OpenAI-compatible `POST {base_url}/chat/completions` servers
//!   (OpenAI, Ollama `/v1`, vLLM, llama.cpp server, LM Studio, OpenRouter) with retry policy,
//!   prompt-injection hardening, strict output validation and map-reduce for long
//!   transcripts. On failure it returns an [`llm::LlmError`]; the caller decides whether to
//!   fall back to [`extractive::summarize`] (and should record that in [`Summary::notes`]).
//!
//! Design background: `/work/shared/design/summarize.md` (§3 extractive, §4 long transcripts,
//! §5 prompt injection, §6 service design).

use serde::{Deserialize, Serialize};

pub mod extractive;
pub mod llm;
mod text;

/// One transcript segment (a caption line or an ASR segment).
///
/// Times are milliseconds from the start of the video. `text` is the spoken text as
/// transcribed; it is treated as untrusted data everywhere in this crate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    /// Start of the segment, in milliseconds from the start of the video.
    pub start_ms: u64,
    /// End of the segment, in milliseconds from the start of the video.
    pub end_ms: u64,
    /// Transcribed text of the segment.
    pub text: String,
    /// The segment's words in time order (ASR word timestamps); empty when unknown (captions,
    /// older transcripts). When present, a sentence is stamped with its first word's start.
    #[serde(default)]
    pub words: Vec<Word>,
}

/// One recognised word of a [`Segment`], with its time.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Word {
    /// Start of the word, in milliseconds from the start of the video.
    pub start_ms: u64,
    /// End of the word, in milliseconds from the start of the video.
    pub end_ms: u64,
    /// The word as transcribed, punctuation attached (`"country."`).
    pub text: String,
}

/// How a [`Summary`] was produced.
///
/// Serialized internally tagged: `{"method":"extractive"}` or
/// `{"method":"llm","model":"qwen2.5:7b"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum SummaryKind {
    /// Sentences selected from the transcript by [`extractive::summarize`] (offline, no LLM).
    Extractive,
    /// Written by a language model through [`llm::LlmClient`].
    Llm {
        /// Model name as sent to the server (e.g. `gpt-4o-mini`, `llama3.1:8b`).
        model: String,
    },
}

/// A key point of the video, anchored at the start of the transcript sentence it comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyPoint {
    /// Start of the sentence the point comes from, in milliseconds: its first word's
    /// `start_ms` when the segment has words, else its segment's `start_ms`. Always equal to
    /// the start of one of the input segments or words.
    pub start_ms: u64,
    /// The point itself (a transcript sentence for extractive summaries, model text for LLM
    /// summaries).
    pub text: String,
}

/// A chapter: a contiguous time range of the video with a short title.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chapter {
    /// Start of the chapter in milliseconds: the start of a real sentence (segment or word
    /// start), or the video's own chapter start when the caller passed chapters in
    /// [`extractive::Options::chapters`].
    pub start_ms: u64,
    /// End of the chapter in milliseconds (start of the next chapter, or the end of the last
    /// segment for the final chapter).
    pub end_ms: u64,
    /// Short title: the chapter's most central sentence, shortened to at most
    /// [`extractive::Options::title_chars`] characters, or the video's own chapter title.
    pub title: String,
}

/// How a note saying the LLM failed and the extractive summary was used instead begins;
/// [`Summary::to_markdown`] then says so in the summary's first line.
pub const FALLBACK_NOTE_PREFIX: &str = "fell back to the extractive summary";

/// The result of summarizing a transcript.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// How the summary was produced.
    pub kind: SummaryKind,
    /// A short overview (1–3 sentences).
    pub tldr: String,
    /// Key points in time order; every `start_ms` is a real segment or word start.
    pub key_points: Vec<KeyPoint>,
    /// Chapters in time order, covering the transcript without overlap.
    pub chapters: Vec<Chapter>,
    /// Human-readable remarks about how the summary was made, e.g.
    /// `"fell back to extractive: LLM API rejected the key (401)"` or
    /// `"2 key points cited unknown segments and were dropped"`.
    pub notes: Vec<String>,
}

impl Summary {
    /// Renders the summary as Markdown.
    ///
    /// Layout: optional `# title`, a line stating how the summary was made (for extractive
    /// summaries: "extractive summary (offline, no LLM)"), `## TL;DR`, `## Key points` (each
    /// prefixed with a `[mm:ss]` / `[h:mm:ss]` stamp), `## Chapters`, and `## Notes`.
    ///
    /// When `video_url` is a YouTube URL (`youtube.com`, `youtu.be`), every stamp links to
    /// that URL with `t=<seconds>s` appended (any existing `t` parameter is replaced); other
    /// URLs are ignored so that only our own, validated links are emitted. Transcript, model
    /// and title text is escaped only where it would otherwise change the rendering (links,
    /// emphasis, code, HTML, block markers — CommonMark 0.31.2 rules listed in the crate's
    /// `text::escape_markdown`), so a stamp reads
    /// `[00:10]` and a title `one_min.m4a`; control and bidi characters are shown as `\u{…}`
    /// ([`escape_controls`]).
    pub fn to_markdown(&self, title: Option<&str>, video_url: Option<&str>) -> String {
        use text::{escape_markdown as esc, MdContext::*};
        let link_base = video_url.and_then(text::youtube_link_base);
        let stamp = |ms: u64| -> String {
            let label = format_timestamp(ms);
            match &link_base {
                Some(base) => format!("[[{label}]]({base}t={}s)", ms / 1000),
                None => format!("[{label}]"),
            }
        };
        let mut out = String::new();
        if let Some(t) = title.map(str::trim).filter(|t| !t.is_empty()) {
            out.push_str(&format!("# {}\n\n", esc(t, Heading)));
        }
        let fell_back = self
            .notes
            .iter()
            .any(|n| n.starts_with(FALLBACK_NOTE_PREFIX));
        match &self.kind {
            SummaryKind::Extractive if fell_back => out.push_str(
                "_Extractive summary: the LLM API failed (see Notes), so sentences were selected verbatim from the transcript instead._\n\n",
            ),
            SummaryKind::Extractive => out.push_str(
                "_Extractive summary (offline, no LLM): sentences selected verbatim from the transcript._\n\n",
            ),
            SummaryKind::Llm { model } => out.push_str(&format!(
                "_AI-generated summary (LLM: {}); it may contain errors. Timestamps come from the transcript._\n\n",
                esc(model, Inline)
            )),
        }
        out.push_str("## TL;DR\n\n");
        out.push_str(&esc(&self.tldr, Block));
        out.push_str("\n\n");
        if !self.key_points.is_empty() {
            out.push_str("## Key points\n\n");
            for kp in &self.key_points {
                let t = esc(&kp.text, Inline);
                out.push_str(&format!("- {} {t}\n", stamp(kp.start_ms)));
            }
            out.push('\n');
        }
        if !self.chapters.is_empty() {
            out.push_str("## Chapters\n\n");
            for ch in &self.chapters {
                let t = esc(&ch.title, Inline);
                out.push_str(&format!("- {} {t}\n", stamp(ch.start_ms)));
            }
            out.push('\n');
        }
        if !self.notes.is_empty() {
            out.push_str("## Notes\n\n");
            for n in &self.notes {
                out.push_str(&format!("- {}\n", esc(n, Block)));
            }
            out.push('\n');
        }
        out
    }
}

/// Makes text safe to show on a terminal, in a log line or in Markdown: control characters
/// (C0, DEL, C1) and the Unicode bidirectional controls that can reorder the rest of a line
/// (U+200E/F, U+202A–U+202E, U+2066–U+2069) become visible `\u{…}` escapes (lower-case hex);
/// everything else, including right-to-left letters and emoji, is kept. This is the one
/// escaping function for titles; `tubescribe`'s `display_title` builds on it.
pub fn escape_controls(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let bidi = matches!(c, '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}');
        if c.is_control() || bidi {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// Formats a time in milliseconds as `mm:ss` (under one hour) or `h:mm:ss`, truncating to
/// whole seconds. Example: `83_500` → `"01:23"`, `3_723_000` → `"1:02:03"`.
pub fn format_timestamp(ms: u64) -> String {
    let s = ms / 1000;
    let (h, m, s) = (s / 3600, (s % 3600) / 60, s % 60);
    if h > 0 {
        format!("{h}:{m:02}:{s:02}")
    } else {
        format!("{m:02}:{s:02}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Summary {
        Summary {
            kind: SummaryKind::Extractive,
            tldr: "Rust is *fast*.".into(),
            key_points: vec![
                KeyPoint {
                    start_ms: 83_500,
                    text: "First [point](http://evil.example)".into(),
                },
                KeyPoint {
                    start_ms: 3_723_000,
                    text: "Second".into(),
                },
            ],
            chapters: vec![Chapter {
                start_ms: 0,
                end_ms: 100_000,
                title: "Intro".into(),
            }],
            notes: vec![],
        }
    }

    #[test]
    fn timestamps_format() {
        assert_eq!(format_timestamp(0), "00:00");
        assert_eq!(format_timestamp(83_500), "01:23");
        assert_eq!(format_timestamp(3_723_000), "1:02:03");
    }

    #[test]
    fn markdown_links_and_label() {
        let md = sample().to_markdown(
            Some("My video"),
            Some("https://www.youtube.com/watch?v=abc&t=10s"),
        );
        assert!(md.starts_with("# My video\n"));
        assert!(md.contains("Extractive summary (offline, no LLM)"));
        assert!(md.contains("- [[01:23]](https://www.youtube.com/watch?v=abc&t=83s) First"));
        assert!(md.contains("- [[1:02:03]](https://www.youtube.com/watch?v=abc&t=3723s) Second"));
        // transcript text cannot create links or emphasis
        assert!(md.contains("First [point\\](http://evil.example)"));
        assert!(md.contains("Rust is \\*fast\\*."));
    }

    #[test]
    fn markdown_without_youtube_url_has_plain_stamps() {
        let md = sample().to_markdown(None, Some("https://evil.example/?v=1"));
        assert!(md.contains("- [01:23] First"));
        assert!(!md.contains("evil.example/?"));
        let md = sample().to_markdown(None, Some("https://youtu.be/abc"));
        assert!(md.contains("(https://youtu.be/abc?t=83s)"));
    }

    #[test]
    fn markdown_escapes_only_what_renders_and_shows_bidi_controls() {
        let s = Summary {
            kind: SummaryKind::Extractive,
            tldr: "1. See snake_case, _this_ and a < b & c; not <b>bold</b> or &amp;.".into(),
            key_points: vec![KeyPoint {
                start_ms: 10_000,
                text: "[00:10] is a stamp, [x](y) is not a link and `code` is not code".into(),
            }],
            chapters: vec![Chapter {
                start_ms: 10_000,
                end_ms: 20_000,
                title: "Intro # 1 ~ 2".into(),
            }],
            notes: vec!["# not a heading".into(), "- not a list".into()],
        };
        let md = s.to_markdown(Some("one_min.m4a \u{202E}4pm.exe C#"), None);
        assert_eq!(
            md,
            "# one_min.m4a \\u{202e}4pm.exe C#\n\n\
             _Extractive summary (offline, no LLM): sentences selected verbatim from the transcript._\n\n\
             ## TL;DR\n\n\
             1\\. See snake_case, \\_this\\_ and a < b & c; not \\<b>bold\\</b> or \\&amp;.\n\n\
             ## Key points\n\n\
             - [00:10] [00:10] is a stamp, [x\\](y) is not a link and \\`code\\` is not code\n\n\
             ## Chapters\n\n\
             - [00:10] Intro # 1 \\~ 2\n\n\
             ## Notes\n\n\
             - \\# not a heading\n\
             - \\- not a list\n\n"
        );
        // A heading's closing sequence is escaped; controls are visible everywhere.
        let md = s.to_markdown(Some("Title #"), None);
        assert!(md.starts_with("# Title \\#\n"), "{md}");
        assert_eq!(
            escape_controls("a\u{0}b\u{9b}c\u{2066}d\u{200f}"),
            "a\\u{0}b\\u{9b}c\\u{2066}d\\u{200f}"
        );
    }

    #[test]
    fn kind_serializes_tagged() {
        let v = serde_json::to_value(SummaryKind::Llm { model: "m".into() }).unwrap();
        assert_eq!(v, serde_json::json!({"method": "llm", "model": "m"}));
        let v = serde_json::to_value(SummaryKind::Extractive).unwrap();
        assert_eq!(v, serde_json::json!({"method": "extractive"}));
    }
}
