//! Layer 1, the domain: the words every other layer speaks and nothing else — stages and the
//! failure class ([`stage`]), ids and Redis names ([`keys`]), the task record ([`manifest`]),
//! the transcript and its subtitle rendering ([`transcript`]), the model catalogue
//! ([`models`]), what a user may submit ([`input`]) and ask of a task ([`options`]: captions,
//! batches) and how long a retry waits ([`retry`]).
//! Imports nothing from the crate.

pub mod input;
pub mod keys;
pub mod manifest;
pub mod models;
pub mod options;
pub mod retry;
pub mod stage;
pub mod transcript;
pub mod webhook;

pub use models::{ModelFile, ModelName, ModelRef, Quant};
pub use stage::{FailureClass, Progress, Stage, MAX_RETRY_AFTER};
