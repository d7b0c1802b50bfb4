//! Extractive summarizer: the offline, deterministic default (no model, no network).
//!
//! Algorithm (design `summarize.md` §3.2, re-implemented here):
//!
//! 1. **Units.** Segment text is cleaned (`[Music]`, `(laughter)`, `>>` removed) and the
//!    whole transcript is split into sentences, across segment boundaries (a sentence may span
//!    segments, a segment may hold several). If the transcript has fewer than one sentence end
//!    per 40 words (YouTube auto-captions have no punctuation) it is cut into windows of
//!    [`Options::window_words`] words instead, preferring pauses between segments. Each unit
//!    starts at its first word: that word's own start when the segment carries
//!    [`Segment::words`] (matched to the text in order), else its segment's start — so every
//!    timestamp we emit is a real word or segment start.
//! 2. **Terms.** Lower-cased words minus stop words and speech fillers, lightly stemmed.
//! 3. **Scoring.** Log-TF × smoothed IDF vectors; TextRank (PageRank over cosine
//!    similarity above 0.05, strongest 64 neighbours per unit); units with fewer than 5 content terms score
//!    0 (relaxed for very short transcripts); × a length prior × content density.
//! 4. **Selection.** Repeated sentences (same words) compete once. Maximal Marginal
//!    Relevance (λ = [`Options::mmr_lambda`]) picks [`Options::key_points`] units, and a
//!    unit too close to one already picked (word-set Jaccard or TF-IDF cosine ≥
//!    [`REDUNDANT`]) is never picked; the first [`Options::tldr_sentences`] picks form the
//!    TL;DR. Both are emitted in time order.
//! 5. **Chapters.** The video's own chapters ([`Options::chapters`]) when given. Otherwise
//!    equal time buckets of about [`Options::chapter_target_ms`] (at most
//!    [`Options::max_chapters`]); empty buckets are merged; each title is the bucket's most
//!    central sentence (highest cosine to the bucket's TF-IDF centroid), cut to
//!    [`Options::title_chars`] at a word boundary with `…`.
//!
//! Ties are broken by position, and no hash-map iteration order leaks into the output, so
//! the same input always gives the same [`Summary`].

use std::collections::HashMap;

use crate::text;
use crate::{Chapter, KeyPoint, Segment, Summary, SummaryKind};

/// Tuning knobs for [`summarize`]. `Options::default()` is what the service should use.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// Number of sentences in the TL;DR (1–3 recommended). Default 3.
    pub tldr_sentences: usize,
    /// Number of key points. Default 8.
    pub key_points: usize,
    /// Target chapter length in milliseconds. Default 300 000 (5 minutes).
    pub chapter_target_ms: u64,
    /// Upper bound on the number of chapters. Default 24.
    pub max_chapters: usize,
    /// MMR trade-off between relevance (1.0) and novelty (0.0). Default 0.6.
    pub mmr_lambda: f64,
    /// Window size in words for unpunctuated (auto-caption) text. Default 22.
    pub window_words: usize,
    /// Sentences longer than this many words are split. Default 60.
    pub max_sentence_words: usize,
    /// Longest generated chapter title, in characters (including the `…`). Default 60.
    pub title_chars: usize,
    /// The video's own chapters (e.g. yt-dlp's `chapters`, converted to milliseconds). When
    /// not empty they are the summary's chapters verbatim (sorted by start), instead of
    /// computed ones. Default empty.
    pub chapters: Vec<Chapter>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            tldr_sentences: 3,
            key_points: 8,
            chapter_target_ms: 300_000,
            max_chapters: 24,
            mmr_lambda: 0.6,
            window_words: 22,
            max_sentence_words: 60,
            title_chars: 60,
            chapters: Vec::new(),
        }
    }
}

/// Two units at least this similar (Jaccard of their normalized word sets, or cosine of their
/// TF-IDF vectors) are near-duplicates: only one of them can be a key point.
pub const REDUNDANT: f64 = 0.7;

/// TL;DR used when the transcript contains no speech.
pub const NO_SPEECH_TLDR: &str = "No speech was detected in this video: the transcript is empty.";

/// One selectable unit (sentence or window).
struct Unit {
    start_ms: u64,
    text: String,
    n_words: usize,
    /// Raw content-term ids in order of occurrence (with repetitions).
    raw_terms: Vec<u32>,
    /// L2-normalised TF-IDF vector, sorted by term id.
    vec: Vec<(u32, f32)>,
    /// Sorted, deduplicated normalized words (for near-duplicate detection).
    word_set: Vec<String>,
}

/// One word of the cleaned transcript: its text, segment index (in time order) and start.
struct Tok<'a> {
    text: &'a str,
    seg: usize,
    start_ms: u64,
}

/// Summarizes `segments` extractively. Never fails and never panics: an empty transcript
/// (or one containing only annotations such as `[Music]`) yields a summary whose TL;DR is
/// [`NO_SPEECH_TLDR`] with no key points or chapters.
///
/// Segments are processed in `start_ms` order (input order breaks ties). Every
/// [`KeyPoint::start_ms`] is the start of its sentence's first word (an input [`Word`]'s
/// `start_ms`, or its segment's `start_ms` when the segment has no words); computed chapters
/// start at sentence starts too. Runs in well under a second for 100k words in a release
/// build.
///
/// [`Word`]: crate::Word
pub fn summarize(segments: &[Segment], opts: &Options) -> Summary {
    let Some(doc) = Doc::build(segments, opts) else {
        return no_speech(SummaryKind::Extractive);
    };
    let units = &doc.units;
    let scores = score_units(units, doc.vocab_len);
    let picks = mmr(units, &scores, opts.key_points.max(1), opts.mmr_lambda);

    let mut kp_ids = picks.clone();
    kp_ids.sort_unstable();
    let key_points = kp_ids
        .iter()
        .map(|&i| KeyPoint {
            start_ms: units[i].start_ms,
            text: units[i].text.clone(),
        })
        .collect();
    let mut tldr_ids: Vec<usize> = picks
        .iter()
        .copied()
        .take(opts.tldr_sentences.max(1))
        .collect();
    tldr_ids.sort_unstable();
    let sep = if doc.punctuated { " " } else { " … " };
    let tldr = tldr_ids
        .iter()
        .map(|&i| units[i].text.as_str())
        .collect::<Vec<_>>()
        .join(sep);

    let chapters = if opts.chapters.is_empty() {
        chapters(units, doc.end_ms, opts)
    } else {
        video_chapters(&opts.chapters)
    };
    let mut notes = Vec::new();
    if !doc.punctuated {
        notes.push(format!(
            "transcript has no punctuation (auto-captions): key points are {}-word excerpts",
            opts.window_words.max(5)
        ));
    }
    Summary {
        kind: SummaryKind::Extractive,
        tldr,
        key_points,
        chapters,
        notes,
    }
}

/// Chapters only (same boundaries and titles as [`summarize`] produces, or
/// [`Options::chapters`] when given). Used by the LLM summarizer, which reuses the extractive
/// chapter structure.
pub fn chapters_for(segments: &[Segment], opts: &Options) -> Vec<Chapter> {
    if !opts.chapters.is_empty() {
        return video_chapters(&opts.chapters);
    }
    match Doc::build(segments, opts) {
        Some(doc) => chapters(&doc.units, doc.end_ms, opts),
        None => Vec::new(),
    }
}

/// The transcript's sentences (or windows, for unpunctuated text) in time order, each with
/// its start (first word's start, else its segment's start). Used by the LLM summarizer to
/// number its prompt lines, so that a cited line gives a real sentence start.
pub(crate) fn sentences(segments: &[Segment]) -> Vec<(u64, String)> {
    match Doc::build(segments, &Options::default()) {
        Some(doc) => doc
            .units
            .into_iter()
            .map(|u| (u.start_ms, u.text))
            .collect(),
        None => Vec::new(),
    }
}

/// The caller's chapters, sorted by start (stable), otherwise unchanged.
fn video_chapters(given: &[Chapter]) -> Vec<Chapter> {
    let mut v = given.to_vec();
    v.sort_by_key(|c| c.start_ms);
    v
}

/// A transcript cut into scored-ready units.
struct Doc {
    units: Vec<Unit>,
    vocab_len: usize,
    end_ms: u64,
    punctuated: bool,
}

impl Doc {
    /// Cleans, splits and vectorizes `segments`; `None` when no word remains.
    fn build(segments: &[Segment], opts: &Options) -> Option<Doc> {
        let mut order: Vec<&Segment> = segments.iter().collect();
        order.sort_by_key(|s| s.start_ms);
        let cleaned: Vec<String> = order.iter().map(|s| text::clean_caption(&s.text)).collect();
        let toks = tokens(&order, &cleaned);
        if toks.is_empty() {
            return None;
        }
        let end_ms = order
            .iter()
            .map(|s| s.end_ms.max(s.start_ms))
            .max()
            .unwrap_or(0);

        let enders = toks.iter().filter(|t| ends_sentence(t.text)).count();
        let punctuated = enders * 40 >= toks.len();
        let spans = if punctuated {
            split_sentences(&toks, opts.max_sentence_words.max(5))
        } else {
            split_windows(&toks, &order, opts.window_words.max(5))
        };

        // Terms.
        let stop = text::stop_words();
        let mut vocab: HashMap<String, u32> = HashMap::new();
        let mut units: Vec<Unit> = Vec::with_capacity(spans.len());
        for (a, b) in spans {
            let slice = &toks[a..b];
            let mut raw_terms = Vec::new();
            let mut word_set = Vec::new();
            for t in slice {
                let Some(norm) = text::normalize_word(t.text) else {
                    continue;
                };
                word_set.push(norm.clone());
                if norm.chars().count() < 2
                    || stop.contains(norm.as_str())
                    || norm.chars().all(|c| c.is_ascii_digit())
                {
                    continue;
                }
                let st = text::stem(&norm);
                if stop.contains(st.as_str()) {
                    continue;
                }
                let next_id = vocab.len() as u32;
                raw_terms.push(*vocab.entry(st).or_insert(next_id));
            }
            word_set.sort_unstable();
            word_set.dedup();
            units.push(Unit {
                start_ms: slice[0].start_ms,
                text: slice.iter().map(|t| t.text).collect::<Vec<_>>().join(" "),
                n_words: slice.len(),
                raw_terms,
                vec: Vec::new(),
                word_set,
            });
        }

        // TF-IDF.
        let n = units.len();
        let mut df = vec![0u32; vocab.len()];
        for u in &units {
            let mut ids = u.raw_terms.clone();
            ids.sort_unstable();
            ids.dedup();
            for id in ids {
                df[id as usize] += 1;
            }
        }
        let idf: Vec<f32> = df
            .iter()
            .map(|&d| ((1.0 + n as f32) / (1.0 + d as f32)).ln() + 1.0)
            .collect();
        for u in &mut units {
            let mut ids = u.raw_terms.clone();
            ids.sort_unstable();
            let mut v: Vec<(u32, f32)> = Vec::new();
            for id in ids {
                match v.last_mut() {
                    Some((last, c)) if *last == id => *c += 1.0,
                    _ => v.push((id, 1.0)),
                }
            }
            for (id, w) in &mut v {
                *w = (1.0 + w.ln()) * idf[*id as usize];
            }
            let norm = v.iter().map(|(_, w)| w * w).sum::<f32>().sqrt();
            if norm > 0.0 {
                for (_, w) in &mut v {
                    *w /= norm;
                }
            }
            u.vec = v;
        }
        Some(Doc {
            units,
            vocab_len: vocab.len(),
            end_ms,
            punctuated,
        })
    }
}

/// The cleaned words of the time-ordered segments, each with its start: the matching
/// [`Segment::words`] entry's start (matched in order with 8 words of look-ahead, by text or
/// normalized text), the next unmatched word's start when none matches, or the segment's
/// start when it has no words.
fn tokens<'a>(order: &[&Segment], cleaned: &'a [String]) -> Vec<Tok<'a>> {
    let mut toks = Vec::new();
    for (seg, (s, text)) in order.iter().zip(cleaned).enumerate() {
        let words = &s.words;
        let mut j = 0;
        for w in text.split(' ').filter(|w| !w.is_empty()) {
            let start_ms = if words.is_empty() {
                s.start_ms
            } else {
                let norm = text::normalize_word(w);
                let hit = (j..words.len().min(j + 8)).find(|&k| {
                    let wt = words[k].text.trim();
                    wt == w || (norm.is_some() && text::normalize_word(wt) == norm)
                });
                match hit {
                    Some(k) => {
                        j = k + 1;
                        words[k].start_ms
                    }
                    // Not in the words (e.g. a caption artefact): the next word's start.
                    None => words[j.min(words.len() - 1)].start_ms,
                }
            };
            toks.push(Tok {
                text: w,
                seg,
                start_ms,
            });
        }
    }
    toks
}

/// The summary returned for a transcript without speech.
pub(crate) fn no_speech(kind: SummaryKind) -> Summary {
    Summary {
        kind,
        tldr: NO_SPEECH_TLDR.to_string(),
        key_points: Vec::new(),
        chapters: Vec::new(),
        notes: vec!["transcript is empty: nothing to summarize".to_string()],
    }
}

fn ends_sentence(w: &str) -> bool {
    let t = w.trim_end_matches(['"', '\'', ')', ']', '”', '’']);
    t.ends_with(['.', '?', '!', '…'])
}

const ABBREVIATIONS: &[&str] = &[
    "mr.", "mrs.", "ms.", "dr.", "prof.", "st.", "vs.", "e.g.", "i.e.", "jr.", "sr.", "no.",
    "approx.", "fig.",
];

fn split_sentences(words: &[Tok], max_words: usize) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut start = 0;
    for i in 0..words.len() {
        let w = words[i].text;
        let len = i + 1 - start;
        let next_starts_sentence = words.get(i + 1).is_none_or(|nw| {
            nw.text
                .chars()
                .next()
                .is_some_and(|c| c.is_uppercase() || c.is_numeric() || !c.is_alphabetic())
        });
        let is_end = ends_sentence(w)
            && !ABBREVIATIONS.contains(&w.to_lowercase().as_str())
            && next_starts_sentence;
        if is_end || len >= max_words {
            spans.push((start, i + 1));
            start = i + 1;
        }
    }
    if start < words.len() {
        spans.push((start, words.len()));
    }
    spans
}

fn split_windows(words: &[Tok], order: &[&Segment], window: usize) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut start = 0;
    for i in 0..words.len() {
        let len = i + 1 - start;
        let pause = words.get(i + 1).is_some_and(|nt| {
            let (cs, ns) = (words[i].seg, nt.seg);
            ns != cs && order[ns].start_ms.saturating_sub(order[cs].end_ms) >= 1500
        });
        if len >= window || (pause && len * 2 >= window) {
            spans.push((start, i + 1));
            start = i + 1;
        }
    }
    if start < words.len() {
        spans.push((start, words.len()));
    }
    spans
}

/// TextRank × length prior × content density; 0 for units with too few content terms.
fn score_units(units: &[Unit], vocab_len: usize) -> Vec<f64> {
    let n = units.len();
    let min_terms = if units.iter().any(|u| u.raw_terms.len() >= 5) {
        5
    } else if units.iter().any(|u| !u.raw_terms.is_empty()) {
        1
    } else {
        0
    };

    // Inverted index; very frequent terms (near stop words) are skipped in large documents
    // to keep the similarity computation near-linear.
    let mut postings: Vec<Vec<(u32, f32)>> = vec![Vec::new(); vocab_len];
    for (i, u) in units.iter().enumerate() {
        for &(t, w) in &u.vec {
            postings[t as usize].push((i as u32, w));
        }
    }
    let df_cap = if n > 400 {
        (n / 10).max(40)
    } else {
        usize::MAX
    };
    const MAX_NEIGHBOURS: usize = 64;
    let mut acc = vec![0f32; n];
    let mut touched: Vec<u32> = Vec::new();
    let mut adj: Vec<Vec<(u32, f32)>> = Vec::with_capacity(n);
    for (i, u) in units.iter().enumerate() {
        for &(t, w) in &u.vec {
            let p = &postings[t as usize];
            if p.len() > df_cap {
                continue;
            }
            for &(j, wj) in p {
                if j as usize == i {
                    continue;
                }
                if acc[j as usize] == 0.0 {
                    touched.push(j);
                }
                acc[j as usize] += w * wj;
            }
        }
        let mut edges: Vec<(u32, f32)> = touched
            .iter()
            .map(|&j| (j, acc[j as usize]))
            .filter(|&(_, s)| s > 0.05)
            .collect();
        for &j in &touched {
            acc[j as usize] = 0.0;
        }
        touched.clear();
        if edges.len() > MAX_NEIGHBOURS {
            edges.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            edges.truncate(MAX_NEIGHBOURS);
        }
        adj.push(edges);
    }

    // PageRank.
    let d = 0.85f64;
    let out_sum: Vec<f64> = adj
        .iter()
        .map(|e| e.iter().map(|&(_, w)| w as f64).sum())
        .collect();
    let mut rank = vec![1.0 / n as f64; n];
    let mut next = vec![0f64; n];
    for _ in 0..30 {
        next.iter_mut().for_each(|x| *x = (1.0 - d) / n as f64);
        for (i, edges) in adj.iter().enumerate() {
            if out_sum[i] <= 0.0 {
                continue;
            }
            let share = d * rank[i] / out_sum[i];
            for &(j, w) in edges {
                next[j as usize] += share * w as f64;
            }
        }
        std::mem::swap(&mut rank, &mut next);
    }

    units
        .iter()
        .zip(rank)
        .map(|(u, r)| {
            let terms = u.raw_terms.len();
            if terms < min_terms || u.n_words == 0 {
                return 0.0;
            }
            let words = u.n_words as f64;
            let len_prior = (words / 12.0).min(1.0) * if words > 40.0 { 40.0 / words } else { 1.0 };
            let density = ((terms.max(1)) as f64 / words).sqrt();
            // +epsilon keeps isolated (no-edge) but content-rich units selectable.
            (r + 1e-9) * len_prior * density
        })
        .collect()
}

fn cosine(a: &[(u32, f32)], b: &[(u32, f32)]) -> f64 {
    let (mut i, mut j, mut s) = (0, 0, 0f64);
    while i < a.len() && j < b.len() {
        match a[i].0.cmp(&b[j].0) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                s += (a[i].1 * b[j].1) as f64;
                i += 1;
                j += 1;
            }
        }
    }
    s
}

/// Jaccard similarity of two sorted, deduplicated word lists (0 when both are empty).
fn jaccard(a: &[String], b: &[String]) -> f64 {
    let (mut i, mut j, mut both) = (0, 0, 0usize);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                both += 1;
                i += 1;
                j += 1;
            }
        }
    }
    let union = a.len() + b.len() - both;
    if union == 0 {
        0.0
    } else {
        both as f64 / union as f64
    }
}

/// `true` when `a` and `b` say the same thing in (nearly) the same words.
fn redundant(a: &Unit, b: &Unit) -> bool {
    jaccard(&a.word_set, &b.word_set) >= REDUNDANT || cosine(&a.vec, &b.vec) >= REDUNDANT
}

/// Maximal Marginal Relevance selection; returns unit indices in pick order. A repeated
/// sentence competes once (its first occurrence), and a candidate [`redundant`] with a pick
/// is dropped, so no two picks are near-duplicates.
fn mmr(units: &[Unit], scores: &[f64], k: usize, lambda: f64) -> Vec<usize> {
    // Identical word sequences (case and punctuation aside) compete once.
    let mut seen = std::collections::HashSet::new();
    let unique: Vec<bool> = units
        .iter()
        .map(|u| {
            let words: Vec<String> = u.text.split(' ').filter_map(text::normalize_word).collect();
            seen.insert(words)
        })
        .collect();
    let mut cands: Vec<usize> = (0..units.len())
        .filter(|&i| scores[i] > 0.0 && unique[i])
        .collect();
    if cands.is_empty() {
        // Nothing scored (e.g. only stop words): fall back to the longest unit.
        let best = (0..units.len())
            .max_by(|&a, &b| units[a].n_words.cmp(&units[b].n_words).then(b.cmp(&a)));
        return best.into_iter().collect();
    }
    cands.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    cands.truncate(300);
    let max = scores[cands[0]].max(f64::MIN_POSITIVE);
    let mut max_sim = vec![0f64; cands.len()];
    let mut out = vec![false; cands.len()];
    let mut picks = Vec::new();
    while picks.len() < k {
        let mut best: Option<(usize, f64)> = None;
        for (ci, &u) in cands.iter().enumerate() {
            if out[ci] {
                continue;
            }
            let v = lambda * scores[u] / max - (1.0 - lambda) * max_sim[ci];
            if best.is_none_or(|(_, bv)| v > bv) {
                best = Some((ci, v));
            }
        }
        let Some((ci, _)) = best else { break };
        out[ci] = true;
        let chosen = cands[ci];
        picks.push(chosen);
        for (cj, &u) in cands.iter().enumerate() {
            if out[cj] {
                continue;
            }
            if redundant(&units[u], &units[chosen]) {
                out[cj] = true;
                continue;
            }
            let s = cosine(&units[u].vec, &units[chosen].vec);
            if s > max_sim[cj] {
                max_sim[cj] = s;
            }
        }
    }
    picks
}

fn chapters(units: &[Unit], end_ms: u64, opts: &Options) -> Vec<Chapter> {
    let Some(first) = units.first() else {
        return Vec::new();
    };
    let t0 = first.start_ms;
    let span = end_ms.max(t0 + 1) - t0;
    let target = opts.chapter_target_ms.max(1000);
    let n_b = (span.div_ceil(target) as usize)
        .clamp(1, opts.max_chapters.max(1))
        .min(units.len());
    let blen = span.div_ceil(n_b as u64).max(1);
    // Group units into non-empty buckets.
    let mut buckets: Vec<Vec<usize>> = Vec::new();
    let mut cur_b = usize::MAX;
    for (i, u) in units.iter().enumerate() {
        let b = (((u.start_ms - t0) / blen) as usize).min(n_b - 1);
        if b != cur_b {
            buckets.push(Vec::new());
            cur_b = b;
        }
        if let Some(last) = buckets.last_mut() {
            last.push(i);
        }
    }
    let mut out = Vec::with_capacity(buckets.len());
    for (bi, b) in buckets.iter().enumerate() {
        let start_ms = units[b[0]].start_ms;
        let end = buckets
            .get(bi + 1)
            .map(|nb| units[nb[0]].start_ms)
            .unwrap_or(end_ms.max(start_ms));
        out.push(Chapter {
            start_ms,
            end_ms: end,
            title: shorten(&units[central(units, b)].text, opts.title_chars.max(8)),
        });
    }
    out
}

/// The bucket's most central unit: highest cosine to the sum of the bucket's TF-IDF vectors
/// (units of 4+ words preferred; ties go to the earliest).
fn central(units: &[Unit], bucket: &[usize]) -> usize {
    let mut centroid: Vec<(u32, f32)> = bucket
        .iter()
        .flat_map(|&i| units[i].vec.iter().copied())
        .collect();
    centroid.sort_by_key(|&(t, _)| t);
    centroid.dedup_by(|b, a| {
        let same = a.0 == b.0;
        if same {
            a.1 += b.1;
        }
        same
    });
    let long_enough = bucket.iter().any(|&i| units[i].n_words >= 4);
    let mut best = (bucket[0], f64::NEG_INFINITY);
    for &i in bucket {
        if long_enough && units[i].n_words < 4 {
            continue;
        }
        let c = cosine(&units[i].vec, &centroid);
        if c > best.1 {
            best = (i, c);
        }
    }
    best.0
}

/// `s` as a title of at most `max_chars` characters: trailing `.`, `,`, `;`, `:` dropped; a
/// longer text is cut at the last word boundary that fits and ends in `…`.
fn shorten(s: &str, max_chars: usize) -> String {
    let trim = |t: &str| t.trim_end_matches(['.', ',', ';', ':', ' ']).to_string();
    if s.chars().count() <= max_chars {
        return trim(s);
    }
    // Byte index of the character after the first `max_chars - 1` (room for the `…`).
    let limit = s
        .char_indices()
        .nth(max_chars - 1)
        .map_or(s.len(), |(i, _)| i);
    let cut = match s[..limit].rfind(' ') {
        _ if s[limit..].starts_with(' ') => &s[..limit],
        Some(i) if i > 0 => &s[..i],
        _ => &s[..limit],
    };
    format!("{}…", trim(cut))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_sentences_but_not_abbreviations() {
        let text = "Dr. Smith said hi. then we left. We came back? Yes!";
        let words: Vec<Tok> = text
            .split(' ')
            .map(|w| Tok {
                text: w,
                seg: 0,
                start_ms: 0,
            })
            .collect();
        let spans = split_sentences(&words, 60);
        let joined: Vec<String> = spans
            .iter()
            .map(|&(a, b)| {
                words[a..b]
                    .iter()
                    .map(|w| w.text)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        assert_eq!(
            joined,
            vec!["Dr. Smith said hi. then we left.", "We came back?", "Yes!"]
        );
    }
}
