//! tubescribe: YouTube URL (or media file) → audio, timestamped transcript and summary,
//! through a durable BullMQ flow of `download` → `transcribe` → `summarize` jobs.
//!
//! See ARCHITECTURE.md for the bird's-eye view, the code map and the invariants.

pub mod alerts;
pub mod asr;
pub mod bench;
pub mod budget;
pub mod cancel;
pub mod cli;
pub mod client;
pub mod config;
pub mod events;
pub mod input;
pub mod manifest;
pub mod media;
pub mod metrics;
pub mod model;
pub mod process;
pub mod queue;
pub mod redis_embed;
pub mod schedule;
pub mod segments;
pub mod server;
pub mod stages;
pub mod taskdir;
pub mod tasks;
pub mod transcript;
