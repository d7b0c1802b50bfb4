//! tubescribe: YouTube URL (or media file) → audio, timestamped transcript and summary,
//! through a durable BullMQ flow of `download` → `transcribe` → `summarize` jobs.
//!
//! See ARCHITECTURE.md for the bird's-eye view, the code map and the invariants.

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
