//! Extractive summarizer tests: determinism, timestamps from real segments, verbatim
//! TL;DR, empty / tiny / unpunctuated input, and a 100k-word synthetic transcript.

use std::time::Instant;

use summarizer::extractive::{self, Options, NO_SPEECH_TLDR};
use summarizer::{Chapter, Segment, SummaryKind, Word};

fn seg(start_s: u64, dur_s: u64, text: &str) -> Segment {
    Segment {
        start_ms: start_s * 1000,
        end_ms: (start_s + dur_s) * 1000,
        text: text.to_string(),
        ..Segment::default()
    }
}

/// A fixed ~12-minute talk in three parts (Rust ownership, async runtimes, deployment).
fn fixture() -> Vec<Segment> {
    let lines = [
        "[Music] Welcome back to the channel.",
        "Today we talk about Rust ownership, async runtimes and deploying services.",
        "Ownership is the core idea of Rust: every value has exactly one owner.",
        "When the owner goes out of scope the value is dropped and its memory is freed.",
        "Borrowing lets you lend a reference to a value without transferring ownership.",
        "The borrow checker rejects programs where a mutable borrow overlaps another borrow.",
        "Lifetimes describe how long a reference stays valid, and the compiler infers most of them.",
        "Um, yeah, so that's it for that part.",
        "Moving on to async runtimes.",
        "An async runtime such as Tokio schedules futures on a small pool of worker threads.",
        "A future does nothing until the runtime polls it, which is why futures are lazy.",
        "Blocking inside a future stalls the worker thread and hurts every other task on the runtime.",
        "Use spawn_blocking for CPU-heavy work so the async runtime stays responsive.",
        "Channels let tasks send messages to each other without sharing mutable state.",
        "(laughter) Okay.",
        "Finally, deploying Rust services.",
        "A release build with static linking gives a single binary that is easy to deploy.",
        "Container images for Rust services can be tiny when the binary is built with musl.",
        "Health checks and graceful shutdown make deployments of services safe to roll back.",
        "Structured logging with tracing makes production services much easier to debug.",
        "Thanks for watching, see you next time.",
    ];
    lines
        .iter()
        .enumerate()
        .map(|(i, t)| seg(i as u64 * 36, 34, t))
        .collect()
}

#[test]
fn fixed_transcript_gives_fixed_summary() {
    let segs = fixture();
    let opts = Options {
        chapter_target_ms: 260_000,
        key_points: 5,
        tldr_sentences: 2,
        ..Options::default()
    };
    let a = extractive::summarize(&segs, &opts);
    let b = extractive::summarize(&segs, &opts);
    assert_eq!(a, b, "same input must give the same summary");
    assert_eq!(a.kind, SummaryKind::Extractive);
    assert_eq!(a.key_points.len(), 5);
    // Golden values for this fixture (update deliberately if the algorithm changes).
    assert_eq!(
        a.tldr,
        "Today we talk about Rust ownership, async runtimes and deploying services. \
         Borrowing lets you lend a reference to a value without transferring ownership."
    );
    let kp_starts: Vec<u64> = a.key_points.iter().map(|k| k.start_ms).collect();
    assert_eq!(kp_starts, vec![36_000, 72_000, 144_000, 324_000, 468_000]);
    let titles: Vec<&str> = a.chapters.iter().map(|c| c.title.as_str()).collect();
    assert_eq!(
        titles,
        vec![
            "Borrowing lets you lend a reference to a value without…",
            "An async runtime such as Tokio schedules futures on a small…",
            "Finally, deploying Rust services"
        ]
    );

    // Every stamp is a real segment start, key points are in time order.
    let starts: Vec<u64> = segs.iter().map(|s| s.start_ms).collect();
    for kp in &a.key_points {
        assert!(starts.contains(&kp.start_ms), "{kp:?}");
        let src = segs.iter().find(|s| s.start_ms == kp.start_ms).unwrap();
        assert!(
            src.text.contains(&kp.text),
            "key point text is verbatim: {kp:?}"
        );
    }
    assert!(a
        .key_points
        .windows(2)
        .all(|w| w[0].start_ms < w[1].start_ms));

    // TL;DR sentences are transcript sentences.
    let all_text: String = segs
        .iter()
        .map(|s| s.text.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    let tldr_sentences: Vec<&str> = a
        .tldr
        .split_inclusive(['.', '!', '?'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    assert!((1..=2).contains(&tldr_sentences.len()), "{}", a.tldr);
    for s in &tldr_sentences {
        assert!(
            all_text.contains(s),
            "TL;DR sentence not in transcript: {s}"
        );
    }
    // Fillers and annotations are never selected.
    assert!(!a.tldr.contains("[Music]") && !a.tldr.to_lowercase().contains("um, yeah"));

    // Chapters: 3 buckets of ~4.2 minutes over 12.6 minutes, each starting at a real segment.
    let ch_starts: Vec<u64> = a.chapters.iter().map(|c| c.start_ms).collect();
    assert_eq!(ch_starts, vec![0, 252_000, 504_000]);
    for c in &a.chapters {
        assert!(starts.contains(&c.start_ms));
        assert!(!c.title.is_empty());
    }
    assert_eq!(a.chapters.last().unwrap().end_ms, 20 * 36_000 + 34_000);
    assert!(a.chapters.windows(2).all(|w| w[0].end_ms == w[1].start_ms));
    // Titles reflect each part's topic.
    let titles: Vec<String> = a.chapters.iter().map(|c| c.title.to_lowercase()).collect();
    assert!(
        titles[0].contains("ownership") || titles[0].contains("borrow"),
        "{titles:?}"
    );
    assert!(
        titles[1].contains("runtime")
            || titles[1].contains("future")
            || titles[1].contains("async"),
        "{titles:?}"
    );
    assert!(
        titles[2].contains("services")
            || titles[2].contains("deploy")
            || titles[2].contains("binary"),
        "{titles:?}"
    );

    let md = a.to_markdown(
        Some("Rust talk"),
        Some("https://www.youtube.com/watch?v=abc123"),
    );
    assert!(md.contains("Extractive summary (offline, no LLM)"));
    assert!(md.contains("](https://www.youtube.com/watch?v=abc123&t="));
    println!("{md}");
}

#[test]
fn empty_transcript_says_no_speech() {
    for segs in [vec![], vec![seg(0, 5, "[Music]"), seg(5, 5, "  ")]] {
        let s = extractive::summarize(&segs, &Options::default());
        assert_eq!(s.tldr, NO_SPEECH_TLDR);
        assert!(s.key_points.is_empty());
        assert!(s.chapters.is_empty());
        assert_eq!(s.notes, vec!["transcript is empty: nothing to summarize"]);
        assert!(s.to_markdown(None, None).contains("No speech was detected"));
    }
}

#[test]
fn single_segment_transcript() {
    let segs = vec![seg(7, 3, "hello world")];
    let s = extractive::summarize(&segs, &Options::default());
    assert_eq!(s.tldr, "hello world");
    assert_eq!(s.key_points.len(), 1);
    assert_eq!(s.key_points[0].start_ms, 7000);
    assert_eq!(s.chapters.len(), 1);
    assert_eq!(s.chapters[0].start_ms, 7000);
    assert_eq!(s.chapters[0].end_ms, 10_000);
    assert_eq!(s.chapters[0].title, "hello world"); // the chapter's only sentence
}

#[test]
fn unpunctuated_auto_captions_use_windows() {
    // lower-case, no punctuation, 3-second caption segments of 6 words
    let words: Vec<String> = fixture()
        .iter()
        .flat_map(|s| {
            s.text
                .split_whitespace()
                .map(|w| {
                    w.trim_matches(|c: char| !c.is_alphanumeric())
                        .to_lowercase()
                })
                .filter(|w| !w.is_empty() && w != "music" && w != "laughter")
                .collect::<Vec<_>>()
        })
        .collect();
    let segs: Vec<Segment> = words
        .chunks(6)
        .enumerate()
        .map(|(i, c)| seg(i as u64 * 3, 3, &c.join(" ")))
        .collect();
    let s = extractive::summarize(&segs, &Options::default());
    assert!(
        s.notes.iter().any(|n| n.contains("no punctuation")),
        "{:?}",
        s.notes
    );
    assert_eq!(s.key_points.len(), 8);
    let starts: Vec<u64> = segs.iter().map(|s| s.start_ms).collect();
    for kp in &s.key_points {
        assert!(starts.contains(&kp.start_ms));
        let n = kp.text.split_whitespace().count();
        assert!((11..=22).contains(&n), "window of {n} words: {}", kp.text);
    }
    // not one giant "sentence"
    assert!(s.tldr.split_whitespace().count() <= 3 * 22 + 4);
}

/// Deterministic pseudo-random generator (LCG) for the synthetic transcript.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % n as u64) as usize
    }
}

#[test]
fn hundred_thousand_words() {
    let common = [
        "the", "we", "and", "so", "this", "is", "really", "about", "system", "people", "time",
        "work", "good", "problem", "because", "when", "you", "build", "it",
    ];
    let mut rng = Lcg(42);
    let mut segs = Vec::new();
    let mut words_total = 0;
    let mut t_ms = 0u64;
    while words_total < 100_000 {
        // 20 topics, 5000 words each, each with its own vocabulary
        let topic = words_total / 5000;
        let mut sentence = Vec::new();
        let len = 8 + rng.next(14);
        for k in 0..len {
            let w = if rng.next(3) == 0 {
                format!("topic{topic}term{}", rng.next(40))
            } else {
                common[rng.next(common.len())].to_string()
            };
            sentence.push(if k == 0 { format!("Then {w}") } else { w });
        }
        let n = sentence.len() + 1;
        let text = format!("{}.", sentence.join(" "));
        let dur = n as u64 * 400; // 150 words per minute
        segs.push(Segment {
            start_ms: t_ms,
            end_ms: t_ms + dur,
            text,
            ..Segment::default()
        });
        t_ms += dur;
        words_total += n;
    }
    let t = Instant::now();
    let s = extractive::summarize(&segs, &Options::default());
    let elapsed = t.elapsed();
    println!("100k words, {} segments: {elapsed:?}", segs.len());
    // ~11 hours / 5-minute target -> capped at max_chapters (24)
    assert_eq!(s.chapters.len(), 24);
    assert_eq!(s.key_points.len(), 8);
    let starts: std::collections::HashSet<u64> = segs.iter().map(|s| s.start_ms).collect();
    assert!(s.key_points.iter().all(|k| starts.contains(&k.start_ms)));
    assert!(s.chapters.iter().all(|c| starts.contains(&c.start_ms)));
    // MMR spreads key points over different topics
    let topics: std::collections::HashSet<u64> = s
        .key_points
        .iter()
        .map(|k| k.start_ms / (5000 * 400))
        .collect();
    assert!(
        topics.len() >= 4,
        "key points cover only {} topics",
        topics.len()
    );
    let limit = if cfg!(debug_assertions) { 20.0 } else { 1.0 };
    assert!(elapsed.as_secs_f64() < limit, "took {elapsed:?}");
}

/// Words for `text` spoken from `start_ms`, one every `step_ms`.
fn words_at(text: &str, start_ms: u64, step_ms: u64) -> Vec<Word> {
    text.split(' ')
        .enumerate()
        .map(|(i, w)| Word {
            start_ms: start_ms + i as u64 * step_ms,
            end_ms: start_ms + i as u64 * step_ms + step_ms - 50,
            text: w.to_string(),
        })
        .collect()
}

/// A 60 s segment with four sentences (one of them said three times), with word times,
/// followed by a sentence that spans two segments.
fn long_segment_transcript() -> Vec<Segment> {
    let long = "The printing press changed how knowledge spread across the country. \
                Gutenberg built his press with movable metal type around 1440. \
                The printing press changed how knowledge spread across the country. \
                Books became cheap enough for merchants and students to own. \
                The printing press changed how knowledge spread across the country.";
    let first = "Literacy rates rose sharply in the";
    let second = "following century as printed pamphlets reached every town and village.";
    vec![
        Segment {
            start_ms: 100_000,
            end_ms: 160_000,
            text: long.split_whitespace().collect::<Vec<_>>().join(" "),
            words: words_at(
                &long.split_whitespace().collect::<Vec<_>>().join(" "),
                101_000,
                1000,
            ),
        },
        Segment {
            start_ms: 160_000,
            end_ms: 166_000,
            text: first.into(),
            words: words_at(first, 160_500, 800),
        },
        Segment {
            start_ms: 166_000,
            end_ms: 176_000,
            text: second.into(),
            words: words_at(second, 166_200, 900),
        },
    ]
}

#[test]
fn repeated_sentence_is_one_key_point_stamped_at_its_first_word() {
    let segs = long_segment_transcript();
    let opts = Options {
        key_points: 8,
        ..Options::default()
    };
    let s = extractive::summarize(&segs, &opts);
    let texts: Vec<&str> = s.key_points.iter().map(|k| k.text.as_str()).collect();
    let press = "The printing press changed how knowledge spread across the country.";
    assert_eq!(
        texts.iter().filter(|t| **t == press).count(),
        1,
        "{texts:?}"
    );
    // Each stamp is its own sentence's first word, not the segment start (100 s).
    let stamps: Vec<(u64, &str)> = s
        .key_points
        .iter()
        .map(|k| (k.start_ms, k.text.as_str()))
        .collect();
    assert_eq!(
        stamps,
        vec![
            (101_000, press),
            (111_000, "Gutenberg built his press with movable metal type around 1440."),
            (
                131_000,
                "Books became cheap enough for merchants and students to own."
            ),
            (
                160_500,
                "Literacy rates rose sharply in the following century as printed pamphlets reached every town and village."
            ),
        ]
    );
    assert_eq!(s.tldr.matches(press).count(), 1, "{}", s.tldr);
    // Without word times a sentence starts at its segment's start.
    let plain: Vec<Segment> = segs
        .iter()
        .map(|g| Segment {
            words: Vec::new(),
            ..g.clone()
        })
        .collect();
    let s = extractive::summarize(&plain, &opts);
    let gutenberg = s
        .key_points
        .iter()
        .find(|k| k.text.starts_with("Gutenberg"))
        .unwrap();
    assert_eq!(gutenberg.start_ms, 100_000);
}

#[test]
fn near_duplicate_sentences_give_one_key_point() {
    let segs = vec![
        seg(
            0,
            5,
            "The compiler checks every borrow of a value before the program runs.",
        ),
        seg(
            5,
            5,
            "Tokio schedules many futures on a small pool of worker threads.",
        ),
        seg(
            10,
            5,
            "The compiler checks each borrow of a value before the program runs.",
        ),
        seg(
            15,
            5,
            "Static linking gives a single binary that is easy to deploy.",
        ),
    ];
    let s = extractive::summarize(&segs, &Options::default());
    let compiler = s
        .key_points
        .iter()
        .filter(|k| k.text.starts_with("The compiler checks"))
        .count();
    assert_eq!(compiler, 1, "{:?}", s.key_points);
    assert_eq!(s.key_points.len(), 3);
}

#[test]
fn chapter_titles_are_sentences_or_the_videos_own_chapters() {
    let segs = fixture();
    let all_text: String = segs
        .iter()
        .map(|s| s.text.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    let s = extractive::summarize(&segs, &Options::default());
    for c in &s.chapters {
        assert!(c.title.chars().count() <= 60, "{c:?}");
        let body = c.title.trim_end_matches('…');
        assert!(
            all_text.contains(body),
            "title is not transcript text: {c:?}"
        );
    }
    let long = extractive::summarize(&long_segment_transcript(), &Options::default());
    assert_eq!(
        long.chapters[0].title,
        "The printing press changed how knowledge spread across the…"
    );

    let own = vec![
        Chapter {
            start_ms: 300_000,
            end_ms: 756_000,
            title: "Async & deployment".into(),
        },
        Chapter {
            start_ms: 0,
            end_ms: 300_000,
            title: "Ownership".into(),
        },
    ];
    let opts = Options {
        chapters: own.clone(),
        ..Options::default()
    };
    let s = extractive::summarize(&segs, &opts);
    assert_eq!(s.chapters, vec![own[1].clone(), own[0].clone()]);
    assert_eq!(extractive::chapters_for(&segs, &opts), s.chapters);
}
