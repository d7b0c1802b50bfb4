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

/// Where escaped text lands in the Markdown document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MdContext {
    /// Inside a line, after other content (a key point after its stamp, a chapter title).
    Inline,
    /// At the start of a block (a paragraph, a list item's content): block markers count.
    Block,
    /// The content of an ATX heading (`# …`): a trailing `#` run would be a closing sequence.
    Heading,
}

/// Escapes untrusted text for Markdown, backslash-escaping only what would change the
/// rendering (CommonMark 0.31.2, plus GFM where GitHub renders differently), so that
/// `[00:10]` or `one_min.m4a` stay as they are. Line breaks and tabs become spaces (every
/// escaped text is a single line), then control and bidi characters are made visible with
/// [`crate::escape_controls`]. Escaped:
///
/// * `\` before ASCII punctuation or at the end (§2.4 backslash escapes);
/// * `` ` `` (§6.1 code spans; also fences), `*` (§6.2: can emphasize inside words) and
///   `~` (GFM strikethrough; also `~~~` fences) — always;
/// * `_` unless both neighbours of its run are alphanumeric (§6.2: an intra-word `_` run is
///   both left- and right-flanking and can neither open nor close emphasis);
/// * `<` before a letter, `/`, `!` or `?` (§6.5 autolinks, §6.6 raw HTML, §4.6 HTML blocks);
/// * `&` that could start an entity reference (`&name;`, `&#…;`, §2.5);
/// * `]` before `(`, `[` or `:` (§6.3 inline/full/collapsed links, §4.7 link reference
///   definitions; a lone `[x]` is a shortcut link only with a definition, and we never emit
///   one) — so `!` (images) needs nothing either;
/// * at a block start only: a leading `#` (§4.2), `>` (§5.1), `-`/`+` before a space or `-`
///   (§5.2 lists, §4.1 thematic breaks), `[` (GFM task list items), and the `.`/`)` of a
///   leading 1–9 digit ordered-list marker (§5.2);
/// * in a heading: the first `#` of a trailing run after a space (§4.2 closing sequence).
///
/// Not escaped: `|` (a GFM table needs a second, delimiter line, and the text is one line),
/// `(`, `)`, `!`, `[`, `#` and `-` elsewhere.
pub(crate) fn escape_markdown(s: &str, at: MdContext) -> String {
    let flat: String = s
        .chars()
        .map(|c| {
            if matches!(c, '\n' | '\r' | '\t') {
                ' '
            } else {
                c
            }
        })
        .collect();
    let flat = crate::escape_controls(&flat);
    let t: Vec<char> = match at {
        MdContext::Inline => flat.chars().collect(),
        _ => flat.trim().chars().collect(),
    };
    let mut escape = vec![false; t.len()];
    let at_word = |i: Option<usize>| {
        i.and_then(|i| t.get(i))
            .is_some_and(|c| c.is_alphanumeric())
    };
    for (i, &c) in t.iter().enumerate() {
        let next = t.get(i + 1).copied();
        escape[i] = match c {
            '\\' => next.is_none_or(|n| n.is_ascii_punctuation()),
            '`' | '*' | '~' => true,
            '_' => {
                let before = t[..i].iter().rposition(|&c| c != '_');
                let after = t[i..].iter().position(|&c| c != '_').map(|p| p + i);
                !(at_word(before) && at_word(after))
            }
            '<' => next.is_some_and(|n| n.is_ascii_alphabetic() || "/!?".contains(n)),
            '&' => {
                next.is_some_and(|n| n.is_alphanumeric() || n == '#')
                    && t[i + 1..]
                        .iter()
                        .take_while(|c| !c.is_whitespace())
                        .any(|&c| c == ';')
            }
            ']' => next.is_some_and(|n| "([:".contains(n)),
            _ => false,
        };
    }
    match at {
        MdContext::Inline => {}
        MdContext::Block => {
            let next = t.get(1).copied();
            match t.first() {
                Some('#' | '>' | '[') => escape[0] = true,
                Some('-' | '+') if next.is_none_or(|n| n == ' ' || n == '-') => escape[0] = true,
                _ => {
                    let digits = t.iter().take_while(|c| c.is_ascii_digit()).count();
                    let marker = t.get(digits).is_some_and(|&c| c == '.' || c == ')');
                    let then = t.get(digits + 1).is_none_or(|&c| c == ' ');
                    if (1..=9).contains(&digits) && marker && then {
                        escape[digits] = true;
                    }
                }
            }
        }
        MdContext::Heading => {
            let hashes = t.iter().rev().take_while(|&&c| c == '#').count();
            let first = t.len() - hashes;
            if hashes > 0 && (first == 0 || t[first - 1] == ' ') {
                escape[first] = true;
            }
        }
    }
    let mut out = String::with_capacity(t.len() + 8);
    for (c, e) in t.iter().zip(escape) {
        if e {
            out.push('\\');
        }
        out.push(*c);
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
