//! tubescribe: YouTube URL (or media file) → audio, timestamped transcript and summary,
//! through a durable BullMQ flow of `download` → `transcribe` → `summarize` jobs.
//!
//! The crate is a house of layers; a folder imports only the folders below it (checked by
//! `tests/tidy.rs`), so there is no import cycle:
//!
//! | layer | module | owns |
//! |---|---|---|
//! | 7 | [`cli`], [`server`], [`client`] | the interfaces: commands and progress, the HTTP API + SSE + web page, the HTTP client (domain only) |
//! | 6 | [`app`] | use cases (submit, list, retry, cancel) and the one composition root, `app::runtime` |
//! | 5 | [`engine`] | BullMQ: the flow shape, producers, workers, the one attempt protocol, scheduling, long-file segment jobs |
//! | 4 | [`pipeline`] | stage work with no queue: download, transcribe, summarize, the memory plan |
//! | 3 | [`observe`] | metrics, events and SSE mapping, alerts, the RSS reader |
//! | 3 | [`tools`] | the programs and libraries we wrap: the process runner, ffmpeg, whisper.cpp, model install, redis-server |
//! | 3 | [`store`] | the task directory and its record (`manifest.json`): the only code that knows paths |
//! | 2 | [`config`] | settings and their precedence; the only reader of `TUBESCRIBE_*` |
//! | 1 | [`domain`] | the words: stages, failure classes, ids and Redis names, manifest, transcript, models, input |
//!
//! Within layer 3 the order is store → tools → observe. See ARCHITECTURE.md for the
//! bird's-eye view, the code map and the invariants.

pub mod app;
pub mod cli;
pub mod client;
pub mod config;
pub mod domain;
pub mod engine;
pub mod observe;
pub mod pipeline;
pub mod server;
pub mod store;
pub mod tools;
