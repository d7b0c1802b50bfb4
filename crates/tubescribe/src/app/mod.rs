//! Layer 6, use cases: submitting, listing and retrying [`tasks`], and [`cancel`]ling them —
//! what the CLI and the server call — and the [`runtime`] every process starts through
//! (Redis, workers, watchers, shutdown).

pub mod cancel;
pub mod delete;
pub mod retention;
pub mod runtime;
pub mod tasks;
