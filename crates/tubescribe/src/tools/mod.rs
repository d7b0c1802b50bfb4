//! Layer 3, tools: the programs and libraries we wrap — [`process`] (the only code that spawns
//! a program), [`media`] (ffprobe/ffmpeg), [`model`] (model install and lookup), [`asr`]
//! (whisper.cpp in-process) and [`redis_embed`] (our own `redis-server`).

pub mod asr;
pub mod media;
pub mod model;
pub mod process;
pub mod redis_embed;
