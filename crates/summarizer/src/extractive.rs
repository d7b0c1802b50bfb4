//! Extractive summarizer: the offline, deterministic default (no model, no network).
//!
//! Algorithm (design `summarize.md` §3.2, re-implemented here):
//!
//! 1. **Units.** Segment text is cleaned (`[Music]`, `(laughter)`, `>>` removed) and split
//!    into sentences. If the transcript has fewer than one sentence end per 40 words (YouTube
//!    auto-captions have no punctuation) it is cut into windows of
//!    [`Options::window_words`] words instead, preferring pauses between segments. Each unit
//!    keeps the start of the segment its first word comes from, so every timestamp we emit is
//!    a real segment start.
//! 2. **Terms.** Lower-cased words minus stop words and speech fillers, lightly stemmed.
//! 3. **Scoring.** Log-TF × smoothed IDF vectors; TextRank (PageRank over cosine
//!    similarity above 0.05, strongest 64 neighbours per unit); units with fewer than 5 content terms score
//!    0 (relaxed for very short transcripts); × a length prior × content density.
//! 4. **Selection.** Maximal Marginal Relevance (λ = [`Options::mmr_lambda`]) picks
//!    [`Options::key_points`] units; the first [`Options::tldr_sentences`] picks form the
//!    TL;DR. Both are emitted in time order.
//! 5. **Chapters.** Equal time buckets of about [`Options::chapter_target_ms`] (at most
//!    [`Options::max_chapters`]); empty buckets are merged; each title is the bucket's most
//!    distinctive terms (bucket TF × inverse bucket frequency), shown in their most frequent
//!    surface form.
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
    /// Number of terms in a chapter title. Default 3.
    pub title_terms: usize,
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
            title_terms: 3,
        }
    }
}

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
}

/// Summarizes `segments` extractively. Never fails and never panics: an empty transcript
/// (or one containing only annotations such as `[Music]`) yields a summary whose TL;DR is
/// [`NO_SPEECH_TLDR`] with no key points or chapters.
///
/// Segments are processed in `start_ms` order (input order breaks ties). Every
/// [`KeyPoint::start_ms`] and [`Chapter::start_ms`] equals the `start_ms` of an input
/// segment. Runs in well under a second for 100k words in a release build.
pub fn summarize(segments: &[Segment], opts: &Options) -> Summary {
    let mut order: Vec<&Segment> = segments.iter().collect();
    order.sort_by_key(|s| s.start_ms);
    let cleaned: Vec<String> = order.iter().map(|s| text::clean_caption(&s.text)).collect();
    let words: Vec<(&str, usize)> = cleaned
        .iter()
        .enumerate()
        .flat_map(|(i, t)| t.split(' ').filter(|w| !w.is_empty()).map(move |w| (w, i)))
        .collect();
    if words.is_empty() {
        return no_speech(SummaryKind::Extractive);
    }
    let end_ms = order
        .iter()
        .map(|s| s.end_ms.max(s.start_ms))
        .max()
        .unwrap_or(0);

    let enders = words.iter().filter(|(w, _)| ends_sentence(w)).count();
    let punctuated = enders * 40 >= words.len();
    let spans = if punctuated {
        split_sentences(&words, opts.max_sentence_words.max(5))
    } else {
        split_windows(&words, &order, opts.window_words.max(5))
    };

    // Terms.
    let stop = text::stop_words();
    let mut vocab: HashMap<String, u32> = HashMap::new();
    let mut surfaces: Vec<HashMap<String, u32>> = Vec::new();
    let mut units: Vec<Unit> = Vec::with_capacity(spans.len());
    for (a, b) in spans {
        let slice = &words[a..b];
        let mut raw_terms = Vec::new();
        for (w, _) in slice {
            let Some(norm) = text::normalize_word(w) else {
                continue;
            };
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
            let id = *vocab.entry(st).or_insert(next_id);
            if id as usize == surfaces.len() {
                surfaces.push(HashMap::new());
            }
            *surfaces[id as usize].entry(norm).or_insert(0) += 1;
            raw_terms.push(id);
        }
        units.push(Unit {
            start_ms: order[slice[0].1].start_ms,
            text: slice.iter().map(|(w, _)| *w).collect::<Vec<_>>().join(" "),
            n_words: slice.len(),
            raw_terms,
            vec: Vec::new(),
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

    let scores = score_units(&units, vocab.len());
    let picks = mmr(&units, &scores, opts.key_points.max(1), opts.mmr_lambda);

    let mut key_points: Vec<(usize, KeyPoint)> = picks
        .iter()
        .map(|&i| {
            (
                i,
                KeyPoint {
                    start_ms: units[i].start_ms,
                    text: units[i].text.clone(),
                },
            )
        })
        .collect();
    key_points.sort_by_key(|(i, _)| *i);
    let mut tldr_ids: Vec<usize> = picks
        .iter()
        .copied()
        .take(opts.tldr_sentences.max(1))
        .collect();
    tldr_ids.sort_unstable();
    let sep = if punctuated { " " } else { " … " };
    let tldr = tldr_ids
        .iter()
        .map(|&i| units[i].text.as_str())
        .collect::<Vec<_>>()
        .join(sep);

    let chapters = chapters(&units, &idf, &surfaces, end_ms, opts);
    let mut notes = Vec::new();
    if !punctuated {
        notes.push(format!(
            "transcript has no punctuation (auto-captions): key points are {}-word excerpts",
            opts.window_words.max(5)
        ));
    }
    Summary {
        kind: SummaryKind::Extractive,
        tldr,
        key_points: key_points.into_iter().map(|(_, k)| k).collect(),
        chapters,
        notes,
    }
}

/// Chapters only (same boundaries and titles as [`summarize`] produces). Used by the LLM
/// summarizer, which reuses the extractive chapter structure.
pub fn chapters_for(segments: &[Segment], opts: &Options) -> Vec<Chapter> {
    summarize(segments, opts).chapters
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

fn split_sentences(words: &[(&str, usize)], max_words: usize) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut start = 0;
    for i in 0..words.len() {
        let w = words[i].0;
        let len = i + 1 - start;
        let next_starts_sentence = words.get(i + 1).is_none_or(|(nw, _)| {
            nw.chars()
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

fn split_windows(
    words: &[(&str, usize)],
    order: &[&Segment],
    window: usize,
) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut start = 0;
    for i in 0..words.len() {
        let len = i + 1 - start;
        let pause = words.get(i + 1).is_some_and(|&(_, ns)| {
            let cs = words[i].1;
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

/// Maximal Marginal Relevance selection; returns unit indices in pick order.
fn mmr(units: &[Unit], scores: &[f64], k: usize, lambda: f64) -> Vec<usize> {
    let mut cands: Vec<usize> = (0..units.len()).filter(|&i| scores[i] > 0.0).collect();
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
    let mut taken = vec![false; cands.len()];
    let mut picks = Vec::new();
    while picks.len() < k.min(cands.len()) {
        let mut best: Option<(usize, f64)> = None;
        for (ci, &u) in cands.iter().enumerate() {
            if taken[ci] {
                continue;
            }
            let v = lambda * scores[u] / max - (1.0 - lambda) * max_sim[ci];
            if best.is_none_or(|(_, bv)| v > bv) {
                best = Some((ci, v));
            }
        }
        let Some((ci, _)) = best else { break };
        taken[ci] = true;
        let chosen = cands[ci];
        picks.push(chosen);
        for (cj, &u) in cands.iter().enumerate() {
            if !taken[cj] {
                let s = cosine(&units[u].vec, &units[chosen].vec);
                if s > max_sim[cj] {
                    max_sim[cj] = s;
                }
            }
        }
    }
    picks
}

fn chapters(
    units: &[Unit],
    idf: &[f32],
    surfaces: &[HashMap<String, u32>],
    end_ms: u64,
    opts: &Options,
) -> Vec<Chapter> {
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
    // Bucket term frequencies.
    let nb = buckets.len();
    let mut bdf: HashMap<u32, u32> = HashMap::new();
    let mut btf: Vec<HashMap<u32, u32>> = Vec::with_capacity(nb);
    for b in &buckets {
        let mut tf: HashMap<u32, u32> = HashMap::new();
        for &i in b {
            for &t in &units[i].raw_terms {
                *tf.entry(t).or_insert(0) += 1;
            }
        }
        for &t in tf.keys() {
            *bdf.entry(t).or_insert(0) += 1;
        }
        btf.push(tf);
    }
    let mut out = Vec::with_capacity(nb);
    for (bi, b) in buckets.iter().enumerate() {
        let start_ms = units[b[0]].start_ms;
        let end = buckets
            .get(bi + 1)
            .map(|nb| units[nb[0]].start_ms)
            .unwrap_or(end_ms.max(start_ms));
        let mut terms: Vec<(u32, f64)> = btf[bi]
            .iter()
            .map(|(&t, &c)| {
                let inv = ((1.0 + nb as f64) / (1.0 + bdf[&t] as f64)).ln() + 1.0;
                let s = (1.0 + (c as f64).ln()) * inv * (idf[t as usize] as f64).sqrt();
                (
                    t,
                    if c >= 2 || btf[bi].len() < 10 {
                        s
                    } else {
                        s * 0.5
                    },
                )
            })
            .collect();
        terms.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let words: Vec<String> = terms
            .iter()
            .take(opts.title_terms.max(1))
            .filter_map(|&(t, _)| surface(&surfaces[t as usize]))
            .collect();
        let title = if words.is_empty() {
            shorten(&units[b[0]].text, 8)
        } else {
            capitalize(&words.join(", "))
        };
        out.push(Chapter {
            start_ms,
            end_ms: end,
            title,
        });
    }
    out
}

fn surface(forms: &HashMap<String, u32>) -> Option<String> {
    forms
        .iter()
        .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
        .map(|(s, _)| s.clone())
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

fn shorten(s: &str, max_words: usize) -> String {
    let words: Vec<&str> = s.split_whitespace().collect();
    if words.len() <= max_words {
        s.to_string()
    } else {
        format!("{}…", words[..max_words].join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_sentences_but_not_abbreviations() {
        let text = "Dr. Smith said hi. then we left. We came back? Yes!";
        let words: Vec<(&str, usize)> = text.split(' ').map(|w| (w, 0)).collect();
        let spans = split_sentences(&words, 60);
        let joined: Vec<String> = spans
            .iter()
            .map(|&(a, b)| {
                words[a..b]
                    .iter()
                    .map(|w| w.0)
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
