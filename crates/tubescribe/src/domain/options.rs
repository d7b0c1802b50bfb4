//! What a submitter may ask of a task besides its input: whether a YouTube video's own
//! captions stand in for Whisper ([`CaptionsMode`], [`TaskOptions`]), whether Whisper
//! translates the speech into English (`translate`), and the batch record a
//! playlist or channel submitted with `expand` becomes ([`Batch`]). Plain data; the task id
//! suffix that keeps a captions task (or a translation) apart from a Whisper transcription of
//! the same video ([`TaskOptions::task_suffix`]) lives here too.

use serde::{Deserialize, Serialize};

/// The captions language used when none is given: English, the pinned model's language.
pub const DEFAULT_CAPTIONS_LANG: &str = "en";

/// The most videos a playlist or channel becomes when the submitter names no limit.
pub const DEFAULT_MAX_VIDEOS: usize = 50;

/// The most videos one expansion may ask for.
pub const MAX_MAX_VIDEOS: usize = 1000;

/// Whether the video's own captions replace speech recognition (`options.captions`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaptionsMode {
    /// Always transcribe with Whisper (the default).
    #[default]
    Never,
    /// Use the video's captions in the wanted language when it has them; Whisper otherwise.
    Prefer,
    /// Use the video's captions; a video without them fails (permanently).
    Only,
}

impl CaptionsMode {
    /// Parses `never`, `prefer` or `only` (any case).
    ///
    /// # Errors
    /// One sentence naming the accepted values.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "never" => Ok(Self::Never),
            "prefer" => Ok(Self::Prefer),
            "only" => Ok(Self::Only),
            other => Err(format!(
                "captions {other:?} is not one of prefer, only, never"
            )),
        }
    }

    /// The wire name (`never`, `prefer`, `only`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Never => "never",
            Self::Prefer => "prefer",
            Self::Only => "only",
        }
    }
}

/// Per-task options, kept in the manifest (`options`, absent when all are defaults).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskOptions {
    /// Whether the video's own captions replace Whisper (YouTube inputs only).
    #[serde(default, skip_serializing_if = "is_never")]
    pub captions: CaptionsMode,
    /// Also accept YouTube's automatic captions (speech recognition of its own) when the
    /// video has no human-made ones in the language; off by default.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub auto_captions: bool,
    /// The captions language, a BCP 47-like code (`en`, `de`, `pt-BR`); `None` =
    /// [`DEFAULT_CAPTIONS_LANG`]. Regional variants of it count (`en` takes `en-GB`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub captions_lang: Option<String>,
    /// Whisper's translate task: the transcript is the speech translated into English
    /// (multilingual models only), its `language` the detected source language. Off by
    /// default (the speech is transcribed in its own language).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub translate: bool,
}

fn is_never(m: &CaptionsMode) -> bool {
    *m == CaptionsMode::Never
}

impl TaskOptions {
    /// True when every option has its default value.
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// The captions language asked for, or [`DEFAULT_CAPTIONS_LANG`].
    pub fn lang(&self) -> &str {
        self.captions_lang
            .as_deref()
            .unwrap_or(DEFAULT_CAPTIONS_LANG)
    }

    /// Checks the options: a captions language is 2–3 letters, optionally followed by `-`
    /// and up to three subtags of 2–8 letters or digits (`en`, `pt-BR`, `zh-Hant`); a
    /// translation runs Whisper, so it does not go with captions.
    ///
    /// # Errors
    /// One sentence, cause first.
    pub fn validate(&self) -> Result<(), String> {
        if self.translate && self.captions != CaptionsMode::Never {
            return Err(
                "translate runs Whisper on the speech, so it cannot be combined with captions"
                    .into(),
            );
        }
        if let Some(l) = &self.captions_lang {
            let mut parts = l.split('-');
            let primary = parts.next().unwrap_or_default();
            let ok_primary = (2..=3).contains(&primary.len())
                && primary.chars().all(|c| c.is_ascii_alphabetic());
            let rest: Vec<&str> = parts.collect();
            let ok_rest = rest.len() <= 3
                && rest.iter().all(|p| {
                    (2..=8).contains(&p.len()) && p.chars().all(|c| c.is_ascii_alphanumeric())
                });
            if !(ok_primary && ok_rest) {
                return Err(format!(
                    "captions language {l:?} is not a language code such as en or pt-BR"
                ));
            }
        }
        Ok(())
    }

    /// What these options add to a task id, so a task whose transcript comes from captions,
    /// or is a translation, never joins (or is joined by) a Whisper transcription of the same
    /// video: for captions (none for `captions: never`) `-cc` + `p` (prefer) or `o` (only) +
    /// `a` when automatic captions are accepted + `-` + the language, lowercased (`-ccp-en`,
    /// `-ccoa-pt-br`); then `-tr` for a translation.
    pub fn task_suffix(&self) -> String {
        let captions = match self.captions {
            CaptionsMode::Never => String::new(),
            mode => {
                let mode = if mode == CaptionsMode::Prefer {
                    "p"
                } else {
                    "o"
                };
                let auto = if self.auto_captions { "a" } else { "" };
                format!("-cc{mode}{auto}-{}", self.lang().to_ascii_lowercase())
            }
        };
        let translate = if self.translate { "-tr" } else { "" };
        format!("{captions}{translate}")
    }
}

/// What a playlist or channel URL names, for the batch record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CollectionKind {
    /// A playlist (`/playlist?list=…`).
    Playlist,
    /// A channel's uploads (`/@handle`, `/channel/UC…`, `/c/…`, `/user/…`).
    Channel,
}

/// One video of a batch: the task it became.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchItem {
    /// The video's 11-character id.
    pub video_id: String,
    /// The video's title as the listing gave it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// The task transcribing it.
    pub task_id: String,
    /// True when the video joined a task that already existed (deduplicated).
    pub existing: bool,
}

/// A playlist or channel expanded into one task per video (`<data>/batches/<id>.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    /// The batch id, `batch-<16 hex>`.
    pub batch_id: String,
    /// The input as submitted.
    pub input: String,
    /// The canonical URL yt-dlp listed.
    pub url: String,
    /// Playlist or channel.
    pub kind: CollectionKind,
    /// The playlist's or channel's title, when the listing had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// The limit asked for (`max_videos`).
    pub max_videos: usize,
    /// Creation time, ms since the epoch.
    pub created_at: u64,
    /// The options every task of the batch was submitted with.
    #[serde(default, skip_serializing_if = "TaskOptions::is_default")]
    pub options: TaskOptions,
    /// The videos in listing order, each with its task.
    pub items: Vec<BatchItem>,
    /// Entries of the listing that were not videos (or had no valid id) and were left out.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub skipped: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// True for a syntactically valid batch id (`batch-` and 16 lower-case hex digits).
pub fn valid_batch_id(id: &str) -> bool {
    id.strip_prefix("batch-").is_some_and(|h| {
        h.len() == 16
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes_keep_captions_tasks_apart() {
        let mut o = TaskOptions::default();
        assert_eq!(o.task_suffix(), "");
        assert!(o.is_default());
        o.captions = CaptionsMode::Prefer;
        assert_eq!(o.task_suffix(), "-ccp-en");
        o.captions = CaptionsMode::Only;
        o.auto_captions = true;
        o.captions_lang = Some("pt-BR".into());
        assert_eq!(o.task_suffix(), "-ccoa-pt-br");
        assert!(crate::domain::keys::valid_task_id(&format!(
            "yt-dQw4w9WgXcQ{}",
            o.task_suffix()
        )));
        // A translation is its own task, and does not go with captions.
        let t = TaskOptions {
            translate: true,
            ..TaskOptions::default()
        };
        assert_eq!(t.task_suffix(), "-tr");
        assert!(!t.is_default());
        assert_eq!(t.validate(), Ok(()));
        assert!(crate::domain::keys::valid_task_id(&format!(
            "upload-0123456789abcdef-base{}",
            t.task_suffix()
        )));
        o.translate = true;
        assert!(o.validate().unwrap_err().contains("captions"));
    }

    #[test]
    fn captions_mode_and_language_are_checked() {
        assert_eq!(CaptionsMode::parse("Prefer"), Ok(CaptionsMode::Prefer));
        assert_eq!(
            CaptionsMode::parse("sometimes").unwrap_err(),
            "captions \"sometimes\" is not one of prefer, only, never"
        );
        for good in ["en", "pt-BR", "zh-Hant", "yue"] {
            let o = TaskOptions {
                captions_lang: Some(good.into()),
                ..TaskOptions::default()
            };
            assert_eq!(o.validate(), Ok(()), "{good}");
        }
        for bad in ["e", "english", "en_US", "en-", "../x", "en.*"] {
            let o = TaskOptions {
                captions_lang: Some(bad.into()),
                ..TaskOptions::default()
            };
            assert!(o.validate().is_err(), "{bad}");
        }
        assert!(valid_batch_id("batch-0123456789abcdef"));
        assert!(!valid_batch_id("batch-0123456789ABCDEF"));
        assert!(!valid_batch_id("batch-../../etc"));
    }
}
