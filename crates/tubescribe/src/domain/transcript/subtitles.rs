//! Subtitle cues by the usual conventions: this module owns how transcript segments become
//! SRT/VTT cues — where a cue starts and ends, how its text breaks into lines, and how long it
//! stays on screen. The file formats themselves (writing, escaping, parsing) live in
//! `transcript.rs`.
//!
//! Rules (see [`CueRules`]): at most `max_lines` lines of at most `max_line_chars` characters
//! (Unicode scalar values, not bytes; a single longer word stays alone on its line), at most
//! `max_cue_ms` on screen, at least `min_cue_ms` where the next cue leaves room, never
//! overlapping. Cues are cut at word times: a cue ends at the first sentence end once it has
//! lasted `min_cue_ms`, and at every pause of [`PAUSE_BREAK_MS`] or more. When a cue must be cut
//! because the next word would break a limit, the cut goes after the latest sentence end,
//! else clause punctuation (`,` `;` `:` `—`), else before a conjunction or preposition, else
//! after the latest word that fits. A cue is then held into the following silence until it
//! reads at `max_cps` characters per second or less (and lasts `min_cue_ms`), up to the next
//! cue's start; speech faster than `max_cps` keeps the words' own times.
//!
//! Segments without word times (older `transcript.json`) are cut into words at whitespace and
//! the segment's time is shared out over them in proportion to their characters.
//!
//! All times are integer **milliseconds** from the start of the audio.

use crate::domain::transcript::Segment;

/// A pause between two words of at least this many milliseconds always ends a cue.
pub const PAUSE_BREAK_MS: u64 = 1000;

/// Limits for cues; `Default` gives the usual broadcast values (2 × 42 characters, 1–7 s,
/// 20 characters per second). Configured in `[subtitles]`.
#[derive(Debug, Clone, PartialEq)]
pub struct CueRules {
    /// Characters per line (Unicode scalar values), at least 1.
    pub max_line_chars: usize,
    /// Lines per cue, at least 1.
    pub max_lines: usize,
    /// Longest time a cue stays on screen, milliseconds.
    pub max_cue_ms: u64,
    /// Shortest time a cue stays on screen when the next cue leaves room, milliseconds
    /// (at most `max_cue_ms`).
    pub min_cue_ms: u64,
    /// Reading speed to reach by holding a cue into the following silence, characters per
    /// second (spaces included).
    pub max_cps: f64,
}

impl Default for CueRules {
    fn default() -> Self {
        CueRules {
            max_line_chars: 42,
            max_lines: 2,
            max_cue_ms: 7000,
            min_cue_ms: 1000,
            max_cps: 20.0,
        }
    }
}

/// One subtitle cue: shown from `start_ms` to `end_ms` (milliseconds, `end_ms >= start_ms`),
/// its text as lines that are trimmed, non-empty and free of line breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cue {
    /// Start time in milliseconds from the start of the audio.
    pub start_ms: u64,
    /// End time in milliseconds from the start of the audio.
    pub end_ms: u64,
    /// The text lines, top to bottom.
    pub lines: Vec<String>,
}

impl Cue {
    /// The cue's text as one line (lines joined with spaces).
    pub fn text(&self) -> String {
        self.lines.join(" ")
    }

    /// Characters of [`Cue::text`] (Unicode scalar values).
    pub fn chars(&self) -> usize {
        self.lines.iter().map(|l| l.chars().count()).sum::<usize>()
            + self.lines.len().saturating_sub(1)
    }
}

/// How good a place the gap after a word is for a cut or a line break (weakest first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Boundary {
    /// Between two words.
    Word,
    /// Before a conjunction or preposition (English).
    Phrase,
    /// After `,` `;` `:` or a dash, or at a segment end without sentence punctuation.
    Clause,
    /// After `.` `?` `!` `…`.
    Sentence,
}

/// A word with its time, as the cue builder uses it.
#[derive(Debug)]
struct Token<'a> {
    start_ms: u64,
    end_ms: u64,
    text: &'a str,
    chars: usize,
    /// The boundary after this word.
    after: Boundary,
    /// Silence after this word up to the next word's start, ms (0 for the last word).
    gap_ms: u64,
}

/// Builds cues from `segments` (in time order, as after `Transcript::normalize`) under
/// `rules`. Every cue has 1..=`max_lines` lines of at most `max_line_chars` characters (a
/// single longer word alone on its line), lasts at most `max_cue_ms`, and ends no later than
/// the next cue starts. Words are never split or dropped: the cue texts joined with spaces
/// are the segments' words joined with spaces.
pub fn cues(segments: &[Segment], rules: &CueRules) -> Vec<Cue> {
    let rules = sane(rules);
    let tokens = tokens(segments);
    let mut out = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let j = cue_end(&tokens, i, &rules);
        let words: Vec<&str> = tokens[i..=j].iter().map(|t| t.text).collect();
        out.push(Cue {
            start_ms: tokens[i].start_ms,
            end_ms: tokens[i..=j]
                .iter()
                .map(|t| t.end_ms)
                .max()
                .unwrap_or(tokens[i].end_ms),
            lines: layout(&words, &rules),
        });
        i = j + 1;
    }
    set_times(&mut out, &rules);
    out
}

/// Rules made safe to compute with (at least 1 line of 1 character, min ≤ max, cps > 0).
fn sane(r: &CueRules) -> CueRules {
    CueRules {
        max_line_chars: r.max_line_chars.max(1),
        max_lines: r.max_lines.max(1),
        max_cue_ms: r.max_cue_ms.max(1),
        min_cue_ms: r.min_cue_ms.min(r.max_cue_ms.max(1)),
        max_cps: if r.max_cps.is_finite() && r.max_cps > 0.0 {
            r.max_cps
        } else {
            f64::MAX
        },
    }
}

/// The words of all segments with monotonic times (starts never decrease, ends never precede
/// starts) and the boundary after each.
fn tokens(segments: &[Segment]) -> Vec<Token<'_>> {
    let mut out: Vec<Token> = Vec::new();
    for seg in segments {
        let first = out.len();
        if seg.words.iter().any(|w| !w.text.trim().is_empty()) {
            for w in &seg.words {
                // A "word" holding whitespace becomes several tokens with the word's time.
                for piece in w.text.split_whitespace() {
                    push_token(&mut out, piece, w.start_ms, w.end_ms);
                }
            }
        } else {
            let pieces: Vec<&str> = seg.text.split_whitespace().collect();
            // Character positions with one space between words; the time of position `c` is
            // `start + span × c / total`.
            let total: usize = pieces.iter().map(|p| p.chars().count()).sum::<usize>()
                + pieces.len().saturating_sub(1);
            let span = seg.end_ms.saturating_sub(seg.start_ms);
            let at = |c: usize| -> u64 {
                let t = u128::from(span) * c as u128 / total.max(1) as u128;
                seg.start_ms
                    .saturating_add(u64::try_from(t).unwrap_or(u64::MAX))
            };
            let mut c = 0;
            for p in pieces {
                let n = p.chars().count();
                push_token(&mut out, p, at(c), at(c + n));
                c += n + 1;
            }
        }
        // A segment end is at least a clause boundary.
        if out.len() > first {
            if let Some(last) = out.last_mut() {
                last.after = last.after.max(Boundary::Clause);
            }
        }
    }
    for k in 1..out.len() {
        out[k - 1].gap_ms = out[k].start_ms.saturating_sub(out[k - 1].end_ms);
        if out[k - 1].after < Boundary::Clause && starts_clause(out[k].text) {
            out[k - 1].after = Boundary::Clause;
        } else if out[k - 1].after < Boundary::Phrase && is_connective(out[k].text) {
            out[k - 1].after = Boundary::Phrase;
        }
    }
    out
}

fn push_token<'a>(out: &mut Vec<Token<'a>>, text: &'a str, start_ms: u64, end_ms: u64) {
    let start_ms = out.last().map_or(start_ms, |p| start_ms.max(p.start_ms));
    out.push(Token {
        start_ms,
        end_ms: end_ms.max(start_ms),
        text,
        chars: text.chars().count(),
        after: punctuation(text),
        gap_ms: 0,
    });
}

/// The boundary a word's own trailing punctuation makes.
fn punctuation(word: &str) -> Boundary {
    let core = word.trim_end_matches(['"', '\'', '”', '’', ')', ']', '»', '」', '』']);
    match core.chars().last() {
        Some('.' | '?' | '!' | '…' | '。' | '？' | '！' | '؟' | '।') => Boundary::Sentence,
        Some(',' | ';' | ':' | '—' | '–' | '，' | '、' | '；' | '：' | '،' | '؛') => {
            Boundary::Clause
        }
        _ => Boundary::Word,
    }
}

/// True when `word` ends a sentence: its last character before closing quotes or brackets
/// is `.` `?` `!` `…` (or the CJK, Arabic or Devanagari full stop / question mark).
pub fn ends_sentence(word: &str) -> bool {
    punctuation(word) == Boundary::Sentence
}

/// A word that opens a clause with a dash (`—and`, a lone `-`).
fn starts_clause(word: &str) -> bool {
    word.starts_with(['—', '–']) || word == "-" || word == "--"
}

/// English conjunctions and prepositions a line or cue may break before.
fn is_connective(word: &str) -> bool {
    const WORDS: &[&str] = &[
        "and", "but", "or", "nor", "so", "yet", "because", "although", "though", "since", "unless",
        "while", "whereas", "if", "when", "where", "which", "who", "whom", "whose", "that", "than",
        "as", "to", "of", "in", "on", "at", "for", "with", "from", "by", "about", "into", "onto",
        "over", "under", "after", "before", "between", "through", "during", "without", "within",
        "against", "towards", "toward",
    ];
    let w: String = word
        .chars()
        .filter(|c| c.is_alphabetic())
        .flat_map(char::to_lowercase)
        .collect();
    WORDS.contains(&w.as_str())
}

/// Lines the words need when each line is filled greedily (the fewest possible); a word
/// longer than a line takes a line of its own.
fn lines_needed(widths: impl Iterator<Item = usize>, max: usize) -> usize {
    let mut lines = 0;
    let mut cur = 0; // width of the current line; 0 = no line open
    for w in widths {
        if cur > 0 && cur + 1 + w <= max {
            cur += 1 + w;
        } else {
            lines += 1;
            cur = w.max(1);
        }
    }
    lines
}

/// The last token index `j >= i` of the cue that starts at token `i`.
fn cue_end(tokens: &[Token], i: usize, rules: &CueRules) -> usize {
    let fits = |j: usize| {
        let span = tokens[j].end_ms.saturating_sub(tokens[i].start_ms);
        span <= rules.max_cue_ms
            && lines_needed(tokens[i..=j].iter().map(|t| t.chars), rules.max_line_chars)
                <= rules.max_lines
    };
    let mut j = i;
    loop {
        let t = &tokens[j];
        let lasted = t.end_ms.saturating_sub(tokens[i].start_ms);
        if j + 1 == tokens.len()
            || t.gap_ms >= PAUSE_BREAK_MS
            || (t.after == Boundary::Sentence && lasted >= rules.min_cue_ms)
        {
            return j;
        }
        if !fits(j + 1) {
            break;
        }
        j += 1;
    }
    // The next word does not fit: cut at the strongest boundary in i..=j (the latest of
    // equals). A cut counts at its strength only when the cue is not too short: a quarter
    // full for sentence and clause ends, half full before a connective.
    let capacity = (rules.max_lines * rules.max_line_chars) as f64;
    let mut chars = 0usize;
    let mut best = (Boundary::Word, i);
    for (k, t) in tokens.iter().enumerate().take(j + 1).skip(i) {
        chars += t.chars + usize::from(k > i);
        let span = t.end_ms.saturating_sub(tokens[i].start_ms);
        let fill = (chars as f64 / capacity).max(span as f64 / rules.max_cue_ms as f64);
        let strength = match t.after {
            Boundary::Sentence | Boundary::Clause if fill >= 0.25 => t.after,
            Boundary::Phrase if fill >= 0.5 => Boundary::Phrase,
            _ => Boundary::Word,
        };
        if strength >= best.0 {
            best = (strength, k);
        }
    }
    best.1
}

/// Breaks a cue's words into the fewest lines the rules allow (one when they fit), balanced
/// in length, preferring breaks after punctuation, then before a connective.
fn layout(words: &[&str], rules: &CueRules) -> Vec<String> {
    let widths: Vec<usize> = words.iter().map(|w| w.chars().count()).collect();
    let n = words.len();
    let k = lines_needed(widths.iter().copied(), rules.max_line_chars);
    if k <= 1 || n <= 1 {
        return vec![words.join(" ")];
    }
    let total = widths.iter().sum::<usize>() + n - 1;
    let target = total as f64 / k as f64;
    let width = |a: usize, b: usize| widths[a..b].iter().sum::<usize>() + (b - a - 1);
    let penalty = |b: usize| match punctuation(words[b - 1]) {
        Boundary::Sentence | Boundary::Clause => 0.0,
        _ if starts_clause(words[b]) => 0.0,
        _ if is_connective(words[b]) => 24.0,
        _ => 100.0,
    };
    // cost[l][b]: best cost of words[..b] in l lines; from[l][b]: where the last line starts.
    let mut cost = vec![vec![f64::INFINITY; n + 1]; k + 1];
    let mut from = vec![vec![0usize; n + 1]; k + 1];
    cost[0][0] = 0.0;
    for l in 1..=k {
        for b in 1..=n {
            for a in (l - 1)..b {
                if !cost[l - 1][a].is_finite() {
                    continue;
                }
                let w = width(a, b);
                if w > rules.max_line_chars && b - a > 1 {
                    continue;
                }
                let brk = if b < n { penalty(b) } else { 0.0 };
                let c = cost[l - 1][a] + (w as f64 - target).powi(2) + brk;
                if c < cost[l][b] {
                    cost[l][b] = c;
                    from[l][b] = a;
                }
            }
        }
    }
    let mut lines = Vec::with_capacity(k);
    let mut b = n;
    for l in (1..=k).rev() {
        let a = from[l][b];
        lines.push(words[a..b].join(" "));
        b = a;
    }
    lines.reverse();
    lines
}

/// Final times: at most `max_cue_ms`; held to `min_cue_ms` and to the `max_cps` reading time
/// where the next cue leaves room; never past the next cue's start.
fn set_times(cues: &mut [Cue], rules: &CueRules) {
    for idx in 0..cues.len() {
        let next = cues.get(idx + 1).map(|c| c.start_ms);
        let c = &mut cues[idx];
        let reading = (c.chars() as f64 * 1000.0 / rules.max_cps).ceil();
        let want = (reading.min(rules.max_cue_ms as f64) as u64).max(rules.min_cue_ms);
        let mut end = c
            .end_ms
            .max(c.start_ms.saturating_add(want))
            .min(c.start_ms.saturating_add(rules.max_cue_ms));
        if let Some(next) = next {
            end = end.min(next);
        }
        c.end_ms = end.max(c.start_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::transcript::{parse_srt, parse_vtt, Transcript, Word};

    /// A segment whose words are spoken back to back at `ms_per_char` per character (a
    /// word's time is its characters plus one for the following space), from `start_ms`.
    fn spoken(start_ms: u64, text: &str, ms_per_char: u64) -> Segment {
        let mut t = start_ms;
        let words: Vec<Word> = text
            .split_whitespace()
            .map(|w| {
                let d = (w.chars().count() as u64 + 1) * ms_per_char;
                let word = Word {
                    start_ms: t,
                    end_ms: t + d,
                    text: w.to_owned(),
                    p: 0.9,
                };
                t += d;
                word
            })
            .collect();
        Segment {
            start_ms,
            end_ms: t,
            text: text.to_owned(),
            words,
        }
    }

    fn plain(start_ms: u64, end_ms: u64, text: &str) -> Segment {
        Segment {
            start_ms,
            end_ms,
            text: text.to_owned(),
            words: Vec::new(),
        }
    }

    fn texts(cues: &[Cue]) -> Vec<String> {
        cues.iter().map(|c| c.lines.join(" | ")).collect()
    }

    /// Asserts every rule: lines, durations, order, no overlap, and that no word is lost.
    fn check(segments: &[Segment], cues: &[Cue], r: &CueRules) {
        for (i, c) in cues.iter().enumerate() {
            assert!(
                (1..=r.max_lines).contains(&c.lines.len()),
                "cue {i}: {:?}",
                c.lines
            );
            for l in &c.lines {
                let n = l.chars().count();
                assert!(
                    n <= r.max_line_chars || !l.contains(' '),
                    "cue {i}: line of {n} chars {l:?}"
                );
                assert!(!l.is_empty() && l.trim() == l && !l.contains(['\n', '\r']));
            }
            assert!(c.end_ms >= c.start_ms, "cue {i}");
            assert!(c.end_ms - c.start_ms <= r.max_cue_ms, "cue {i}: {c:?}");
            if let Some(next) = cues.get(i + 1) {
                assert!(c.end_ms <= next.start_ms, "overlap at cue {i}");
                assert!(c.start_ms <= next.start_ms, "order at cue {i}");
                if next.start_ms - c.start_ms >= r.min_cue_ms {
                    assert!(
                        c.end_ms - c.start_ms >= r.min_cue_ms,
                        "short cue {i}: {c:?}"
                    );
                }
            } else {
                assert!(c.end_ms - c.start_ms >= r.min_cue_ms, "short last cue");
            }
        }
        let want: Vec<&str> = segments
            .iter()
            .flat_map(|s| {
                if s.words.is_empty() {
                    s.text.split_whitespace().collect::<Vec<_>>()
                } else {
                    s.words
                        .iter()
                        .flat_map(|w| w.text.split_whitespace())
                        .collect()
                }
            })
            .collect();
        let got: Vec<String> = cues.iter().map(Cue::text).collect();
        assert_eq!(got.join(" "), want.join(" "), "words lost or changed");
    }

    fn cps(c: &Cue) -> f64 {
        c.chars() as f64 * 1000.0 / (c.end_ms - c.start_ms).max(1) as f64
    }

    const TALK: &str = "So today I want to talk about subtitles, and why they matter. \
        Most people read them without noticing, but bad ones are tiring: lines that run off \
        the screen, text that flashes by, cues that stay long after the speaker has stopped. \
        Good subtitles follow a few simple rules. Keep each line short; break at natural \
        pauses — never in the middle of a phrase if you can avoid it. Give the viewer time \
        to read. That is really all there is to it!";

    #[test]
    fn normal_rate_talk_obeys_every_limit() {
        let r = CueRules::default();
        // 65 ms per character ≈ 15 characters per second, a normal speaking rate; a pause of
        // 3 s between the two halves.
        let (a, b) = TALK.split_at(TALK.find("Good").unwrap());
        let first = spoken(0, a, 65);
        let second = spoken(first.end_ms + 3000, b, 65);
        let segs = vec![first, second];
        let c = cues(&segs, &r);
        check(&segs, &c, &r);
        assert!(c.len() >= 6, "{:#?}", texts(&c));
        for c in &c {
            assert!(cps(c) <= 20.0, "{c:?}: {} cps", cps(c));
        }
        // The pause ends a cue.
        assert!(c.iter().any(|c| c.text().ends_with("stopped.")));
        assert!(c.iter().any(|c| c.text().starts_with("Good subtitles")));
    }

    #[test]
    fn cuts_at_sentences_then_clauses_then_words() {
        let r = CueRules::default();
        let segs = vec![spoken(
            0,
            "It was a long day. We went to the store, bought some bread and milk, and then \
             we walked all the way home through the park in the rain without umbrellas.",
            60,
        )];
        let c = cues(&segs, &r);
        check(&segs, &c, &r);
        assert_eq!(
            texts(&c),
            [
                "It was a long day.",
                "We went to the store, | bought some bread and milk,",
                "and then we walked all the way home | through the park in the rain",
                "without umbrellas.",
            ]
        );
        assert_eq!(c[0].start_ms, 0);
        assert_eq!(
            c[1].start_ms, c[0].end_ms,
            "first cue ends where speech goes on"
        );
    }

    #[test]
    fn short_sentences_share_a_cue_and_short_cues_are_held() {
        let r = CueRules::default();
        // Two quick sentences (< 1 s each) then silence.
        let segs = vec![spoken(0, "Yes. No.", 60), spoken(5_000, "Maybe.", 60)];
        let c = cues(&segs, &r);
        check(&segs, &c, &r);
        assert_eq!(texts(&c), ["Yes. No.", "Maybe."]);
        assert_eq!((c[0].start_ms, c[0].end_ms), (0, 1000));
        assert_eq!((c[1].start_ms, c[1].end_ms), (5_000, 6_000));
        // Merged when too short to stand alone.
        let segs = vec![
            spoken(0, "Yes.", 60),
            spoken(400, "Then we go on and on.", 60),
        ];
        let c = cues(&segs, &r);
        check(&segs, &c, &r);
        assert_eq!(texts(&c), ["Yes. Then we go on and on."]);
        // Fast speech is held for reading (35 characters: 1.75 s at 20 cps), but only as far
        // as the next cue.
        let fast = "Quick words spoken fast, very fast.";
        let segs = vec![spoken(0, fast, 30), spoken(3_000, "Then.", 60)];
        let c = cues(&segs, &r);
        check(&segs, &c, &r);
        assert_eq!(segs[0].end_ms, 1_080);
        assert_eq!((c[0].start_ms, c[0].end_ms), (0, 1_750));
        let segs = vec![spoken(0, fast, 30), spoken(1_500, "Then.", 60)];
        let c = cues(&segs, &r);
        check(&segs, &c, &r);
        assert_eq!(texts(&c), [fast, "Then."]);
        assert_eq!((c[0].start_ms, c[0].end_ms), (0, 1_500));
    }

    #[test]
    fn whisper_size_segment_becomes_several_cues() {
        let r = CueRules::default();
        let text = "And so what we did was we went out to the country and we talked to the \
            people and we asked them what they thought about the whole thing and they \
            told us that they had never really seen anything like it before in their lives and \
            that they were not sure what to make of it but they were willing to give it a try \
            if we could show them that it would work for them and their families.";
        assert_eq!(text.chars().count(), 379);
        // 379 characters over 27 s, with word times.
        let segs = vec![spoken(0, text, 71)];
        assert!((26_000..28_000).contains(&segs[0].end_ms));
        let c = cues(&segs, &r);
        check(&segs, &c, &r);
        assert!(c.len() >= 5, "{:#?}", texts(&c));
        // Cuts prefer "before a connective" over a plain word break.
        let phrase_cuts = c[1..]
            .iter()
            .filter(|c| is_connective(c.text().split(' ').next().unwrap_or("")))
            .count();
        assert!(phrase_cuts >= 3, "{:#?}", texts(&c));
        // The same segment without words obeys the same limits.
        let segs = vec![plain(0, 27_000, text)];
        let c = cues(&segs, &r);
        check(&segs, &c, &r);
        assert!(c.len() >= 5);
        for c in &c {
            assert!(cps(c) <= 20.0, "{c:?}");
        }
    }

    #[test]
    fn segments_without_words_share_time_by_characters() {
        let r = CueRules::default();
        // 10 s for 20 characters (words and the spaces between them).
        let segs = vec![plain(10_000, 20_000, "aaaa bbbbbbbbbb cccc")];
        let t = tokens(&segs);
        let times: Vec<(u64, u64)> = t.iter().map(|t| (t.start_ms, t.end_ms)).collect();
        assert_eq!(
            times,
            [(10_000, 12_000), (12_500, 17_500), (18_000, 20_000)]
        );
        // A 40 s segment of one long sentence, no words: capped cues of ≤ 7 s.
        let long = "word ".repeat(60);
        let segs = vec![plain(0, 40_000, &long)];
        let c = cues(&segs, &r);
        check(&segs, &c, &r);
        assert!(c.len() >= 6);
        // Even a single "word" lasting 27 s is cut to 7 s on screen.
        let segs = vec![plain(0, 27_000, "Hmm.")];
        let c = cues(&segs, &r);
        check(&segs, &c, &r);
        assert_eq!((c[0].start_ms, c[0].end_ms), (0, 7_000));
    }

    #[test]
    fn line_breaks_are_balanced_and_prefer_punctuation() {
        let r = CueRules::default();
        let l = |s: &str| layout(&s.split(' ').collect::<Vec<_>>(), &r);
        assert_eq!(l("Short and sweet."), ["Short and sweet."]);
        assert_eq!(
            l("We went to the store, and then we had dinner at home."),
            ["We went to the store,", "and then we had dinner at home."]
        );
        assert_eq!(
            l("the quick brown fox jumps over the lazy dog near the river bank"),
            [
                "the quick brown fox jumps",
                "over the lazy dog near the river bank"
            ]
        );
        let long = "Pneumonoultramicroscopicsilicovolcanoconiosis-like";
        assert_eq!(long.chars().count(), 50);
        assert_eq!(l(&format!("a {long} b")).len(), 3);
        assert_eq!(l(&format!("{long} is long")), [long, "is long"]);
    }

    #[test]
    fn word_longer_than_a_line() {
        let r = CueRules::default();
        let long = "x".repeat(60);
        let segs = vec![spoken(
            0,
            &format!("A {long} here. And more words follow it."),
            40,
        )];
        let c = cues(&segs, &r);
        check(&segs, &c, &r);
        assert!(c.iter().any(|c| c.lines.contains(&long)));
        // Alone, it still makes one cue of one line.
        let segs = vec![spoken(0, &long, 40)];
        let c = cues(&segs, &r);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].lines, vec![long]);
    }

    #[test]
    fn rtl_emoji_and_zero_length_words() {
        let r = CueRules::default();
        let rtl =
            "مرحبا بالعالم، هذا نص عربي طويل بما يكفي ليحتاج إلى سطرين أو أكثر من ذلك بكثير. \
                   שלום עולם 👋🎉 🇩🇪 👩‍👩‍👧‍👦 emoji everywhere 🎉🎉🎉";
        let segs = vec![spoken(0, rtl, 70)];
        let c = cues(&segs, &r);
        check(&segs, &c, &r);
        assert!(c.len() >= 2);
        assert!(c[0].text().contains("بالعالم،"));
        // Zero-length words, all at the same instant, and words out of order.
        let mut seg = spoken(1_000, "one two three four five", 0);
        seg.words[3].start_ms = 500;
        seg.words[3].end_ms = 400;
        let segs = vec![seg, plain(1_000, 1_000, "six seven")];
        let c = cues(&segs, &r);
        check(&segs, &c, &r);
        assert_eq!(c.len(), 1);
        // Held for reading 33 characters at 20 per second.
        assert_eq!((c[0].start_ms, c[0].end_ms), (1_000, 2_650));
        // Blank words and segments produce nothing.
        let mut blank = spoken(0, "a", 100);
        blank.words[0].text = " \n ".into();
        blank.text = " ".into();
        assert!(cues(&[blank], &r).is_empty());
        assert!(cues(&[], &r).is_empty());
    }

    #[test]
    fn other_rules_are_honoured() {
        let r = CueRules {
            max_line_chars: 20,
            max_lines: 1,
            max_cue_ms: 3_000,
            min_cue_ms: 500,
            max_cps: 15.0,
        };
        let segs = vec![spoken(0, TALK, 65)];
        let c = cues(&segs, &r);
        check(&segs, &c, &r);
        assert!(c.iter().all(|c| c.lines.len() == 1));
        // Nonsense rules do not panic.
        let odd = CueRules {
            max_line_chars: 0,
            max_lines: 0,
            max_cue_ms: 0,
            min_cue_ms: 10,
            max_cps: f64::NAN,
        };
        assert_eq!(cues(&segs, &odd).len(), TALK.split_whitespace().count());
    }

    #[test]
    fn srt_and_vtt_round_trip_through_the_strict_parsers() {
        let r = CueRules::default();
        let t = Transcript {
            language: "en".into(),
            model: "m".into(),
            duration_ms: 0,
            segments: vec![
                spoken(0, TALK, 65),
                plain(60_000, 70_000, "<b>not markup</b> & --> fish &amp; chips"),
                plain(359_999_000, 360_000_500, "hour 99 → 100"),
            ],
        };
        let want = cues(&t.segments, &r);
        check(&t.segments, &want, &r);
        assert_eq!(parse_srt(&t.to_srt(&r)).unwrap(), want);
        assert_eq!(parse_vtt(&t.to_vtt(&r)).unwrap(), want);
        assert!(t
            .to_srt(&r)
            .contains("99:59:59,000 --> 100:00:00,500\nhour 99 → 100\n"));
    }
}
