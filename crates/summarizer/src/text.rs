//! Text helpers shared by the summarizers: cleaning caption text, word/term extraction,
//! stop words, a light English stemmer, Markdown escaping and YouTube link building.

use std::collections::HashSet;

/// English stop words plus speech fillers that carry no topic information.
/// (Common English function words; filler list in the spirit of design §3.2 step 2.)
const STOP_WORDS: &[&str] = &[
    "a",
    "about",
    "above",
    "after",
    "again",
    "against",
    "all",
    "also",
    "am",
    "an",
    "and",
    "any",
    "are",
    "aren't",
    "as",
    "at",
    "be",
    "because",
    "been",
    "before",
    "being",
    "below",
    "between",
    "both",
    "but",
    "by",
    "can",
    "can't",
    "cannot",
    "could",
    "couldn't",
    "did",
    "didn't",
    "do",
    "does",
    "doesn't",
    "doing",
    "don't",
    "down",
    "during",
    "each",
    "else",
    "even",
    "ever",
    "every",
    "few",
    "for",
    "from",
    "further",
    "get",
    "gets",
    "got",
    "had",
    "hadn't",
    "has",
    "hasn't",
    "have",
    "haven't",
    "having",
    "he",
    "he'd",
    "he'll",
    "he's",
    "her",
    "here",
    "here's",
    "hers",
    "herself",
    "him",
    "himself",
    "his",
    "how",
    "how's",
    "i",
    "i'd",
    "i'll",
    "i'm",
    "i've",
    "if",
    "in",
    "into",
    "is",
    "isn't",
    "it",
    "it's",
    "its",
    "itself",
    "just",
    "let's",
    "many",
    "may",
    "me",
    "might",
    "more",
    "most",
    "much",
    "must",
    "mustn't",
    "my",
    "myself",
    "no",
    "nor",
    "not",
    "now",
    "of",
    "off",
    "on",
    "once",
    "one",
    "only",
    "or",
    "other",
    "ought",
    "our",
    "ours",
    "ourselves",
    "out",
    "over",
    "own",
    "really",
    "same",
    "say",
    "said",
    "says",
    "see",
    "shan't",
    "she",
    "she'd",
    "she'll",
    "she's",
    "should",
    "shouldn't",
    "so",
    "some",
    "such",
    "than",
    "that",
    "that's",
    "the",
    "their",
    "theirs",
    "them",
    "themselves",
    "then",
    "there",
    "there's",
    "these",
    "they",
    "they'd",
    "they'll",
    "they're",
    "they've",
    "thing",
    "things",
    "this",
    "those",
    "though",
    "through",
    "to",
    "too",
    "under",
    "until",
    "up",
    "us",
    "very",
    "was",
    "wasn't",
    "we",
    "we'd",
    "we'll",
    "we're",
    "we've",
    "well",
    "were",
    "weren't",
    "what",
    "what's",
    "when",
    "when's",
    "where",
    "where's",
    "which",
    "while",
    "who",
    "who's",
    "whom",
    "why",
    "why's",
    "will",
    "with",
    "won't",
    "would",
    "wouldn't",
    "yes",
    "you",
    "you'd",
    "you'll",
    "you're",
    "you've",
    "your",
    "yours",
    "yourself",
    "yourselves",
    "going",
    "gonna",
    "wanna",
    "gotta",
    "kind",
    "sort",
    "like",
    "yeah",
    "yep",
    "okay",
    "ok",
    "oh",
    "um",
    "uh",
    "uhm",
    "hmm",
    "mm",
    "ah",
    "actually",
    "basically",
    "literally",
    "right",
    "know",
    "mean",
    "think",
    "lot",
    "way",
    "stuff",
    "want",
    "make",
    "made",
    "go",
    "goes",
    "went",
    "come",
    "came",
    "look",
    "put",
    "take",
    "two",
    "three",
    "first",
    "still",
    "back",
    "something",
    "anything",
    "everything",
    "nothing",
    "someone",
    "anyone",
    "everyone",
    "maybe",
    "probably",
    "pretty",
    "quite",
    "sure",
    "guys",
    "hey",
    "hi",
    "hello",
    "thanks",
    "thank",
    "welcome",
    "today",
    "there're",
    "ve",
    "ll",
    "re",
    "don",
    "didn",
    "doesn",
    "isn",
    "wasn",
    "aren",
    "won",
    "can't",
    "cause",
    "'cause",
];

/// Builds the stop-word set once per summarization call.
pub(crate) fn stop_words() -> HashSet<&'static str> {
    STOP_WORDS.iter().copied().collect()
}

/// Removes caption annotations such as `[Music]`, `[Applause]`, `(laughter)` and speaker
/// change markers (`>>`), and collapses whitespace (including newlines) to single spaces.
pub(crate) fn clean_caption(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut depth_sq = 0usize;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '[' => depth_sq += 1,
            ']' if depth_sq > 0 => depth_sq -= 1,
            _ if depth_sq > 0 => {}
            '(' => {
                // drop short parenthesised annotations like "(laughter)" / "(applause)"
                let rest: String = chars.clone().take(24).collect();
                if let Some(end) = rest.find(')') {
                    let inner = &rest[..end];
                    let lower = inner.to_lowercase();
                    if [
                        "laugh",
                        "applause",
                        "music",
                        "inaudible",
                        "crosstalk",
                        "silence",
                    ]
                    .iter()
                    .any(|a| lower.contains(a))
                    {
                        for _ in 0..inner.chars().count() + 1 {
                            chars.next();
                        }
                        continue;
                    }
                }
                out.push(c);
            }
            '>' if chars.peek() == Some(&'>') => {
                chars.next();
                out.push(' ');
            }
            c if c.is_whitespace() => out.push(' '),
            c => out.push(c),
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Lower-cases a word and strips surrounding punctuation; returns `None` when nothing
/// alphanumeric remains. Keeps inner apostrophes ("don't") and hyphens.
pub(crate) fn normalize_word(w: &str) -> Option<String> {
    let trimmed = w.trim_matches(|c: char| !c.is_alphanumeric());
    if trimmed.is_empty() {
        return None;
    }
    let lower = trimmed.to_lowercase().replace('’', "'");
    let lower = lower
        .strip_suffix("'s")
        .map(str::to_string)
        .unwrap_or(lower);
    if lower.is_empty() {
        None
    } else {
        Some(lower)
    }
}

/// A deliberately light English stemmer (plural / -ing / -ed / -ly suffixes). It only has
/// to map inflections of the same word together for term statistics; titles use the most
/// frequent surface form, so stems are never shown.
pub(crate) fn stem(w: &str) -> String {
    let n = w.chars().count();
    if n <= 3 || !w.is_ascii() {
        return w.to_string();
    }
    for (suf, rep, min_keep) in [
        ("sses", "ss", 2),
        ("ies", "y", 2),
        ("ing", "", 4),
        ("edly", "", 4),
        ("ed", "", 4),
        ("ly", "", 4),
        ("es", "", 4),
    ] {
        if let Some(base) = w.strip_suffix(suf) {
            if base.len() >= min_keep {
                let mut b = base.to_string();
                // "running" -> "run", "stopped" -> "stop"
                let bytes = b.as_bytes();
                if (suf == "ing" || suf == "ed")
                    && bytes.len() >= 2
                    && bytes[bytes.len() - 1] == bytes[bytes.len() - 2]
                    && !matches!(bytes[bytes.len() - 1], b'l' | b's' | b'z')
                {
                    b.pop();
                }
                b.push_str(rep);
                return b;
            }
        }
    }
    if let Some(base) = w.strip_suffix('s') {
        if !base.ends_with('s') && !base.ends_with('u') && !base.ends_with('i') {
            return base.to_string();
        }
    }
    w.to_string()
}

/// Escapes text for safe inclusion in Markdown: characters that could start links, emphasis,
/// HTML, code or headings are backslash-escaped and newlines become spaces.
pub(crate) fn escape_markdown(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' | '`' | '*' | '_' | '[' | ']' | '(' | ')' | '<' | '>' | '#' | '|' | '!' | '~' => {
                out.push('\\');
                out.push(c);
            }
            '\n' | '\r' | '\t' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// If `url` is an `http(s)` YouTube URL (`youtube.com` and subdomains, `youtu.be`), returns
/// it without fragment and without any `t`/`start` query parameter, ending in `?` or `&` so
/// that `t=<seconds>s` can be appended. Any other URL yields `None`.
pub(crate) fn youtube_link_base(url: &str) -> Option<String> {
    let url = url.trim();
    if url
        .chars()
        .any(|c| c.is_whitespace() || "()<>\"'`[]\\".contains(c))
    {
        return None;
    }
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))?;
    let scheme = &url[..url.len() - rest.len()];
    let rest = rest.split('#').next().unwrap_or_default();
    let host_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let host = rest[..host_end].to_ascii_lowercase();
    let ok_host = host == "youtu.be"
        || host == "youtube.com"
        || host.ends_with(".youtube.com")
        || host == "youtube-nocookie.com"
        || host.ends_with(".youtube-nocookie.com");
    if !ok_host {
        return None;
    }
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, q),
        None => (rest, ""),
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|kv| {
            let k = kv.split('=').next().unwrap_or_default();
            !kv.is_empty() && k != "t" && k != "start"
        })
        .collect();
    if kept.is_empty() {
        Some(format!("{scheme}{path}?"))
    } else {
        Some(format!("{scheme}{path}?{}&", kept.join("&")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleans_annotations() {
        assert_eq!(
            clean_caption("[Music] >> so (laughter) we\nstart (the app) [Applause]"),
            "so we start (the app)"
        );
    }

    #[test]
    fn stems() {
        assert_eq!(stem("servers"), "server");
        assert_eq!(stem("running"), "run");
        assert_eq!(stem("libraries"), "library");
        assert_eq!(stem("status"), "status");
        assert_eq!(stem("compiled"), "compil");
        assert_eq!(stem("compiling"), "compil");
    }

    #[test]
    fn youtube_links() {
        assert_eq!(
            youtube_link_base("https://www.youtube.com/watch?v=x&t=5s#a").as_deref(),
            Some("https://www.youtube.com/watch?v=x&")
        );
        assert_eq!(youtube_link_base("https://example.com/watch?v=x"), None);
        assert_eq!(youtube_link_base("javascript:alert(1)"), None);
    }
}
