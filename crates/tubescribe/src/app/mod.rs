//! Layer 6, use cases: submitting, listing and retrying [`tasks`], and [`cancel`]ling them —
//! what the CLI and the server call.

pub mod cancel;
pub mod tasks;
