//! tubescribe: YouTube URL (or media file) → audio, timestamped transcript and summary,
//! through a durable BullMQ flow of `download` → `transcribe` → `summarize` jobs.
//!
//! See ARCHITECTURE.md for the bird's-eye view, the code map and the invariants.

pub mod asr;
pub mod cli;
pub mod config;
pub mod input;
pub mod manifest;
pub mod media;
pub mod model;
pub mod process;
pub mod queue;
pub mod redis_embed;
pub mod stages;
pub mod taskdir;
pub mod tasks;
pub mod transcript;
