//! Lists the videos of a YouTube playlist or channel with yt-dlp, for submissions with
//! `expand`: one `--flat-playlist -J` run (metadata only, no video page fetched per entry)
//! limited to the first `max` entries (`--playlist-items 1:max`), parsed into video ids.
//!
//! Shape of yt-dlp's answer (`YoutubeDL.process_ie_result` with `extract_flat`, entries from
//! `extractor/youtube/_tab.py` `_extract_video` → `url_result`): one JSON object
//! `{"_type": "playlist", "id", "title", "entries": [{"_type": "url", "ie_key": "Youtube",
//! "id", "url": "https://www.youtube.com/watch?v=ID" (or `/shorts/ID`), "title",
//! "duration", …}], …}`. Entries that are not videos (a channel's tabs as nested playlists,
//! `ie_key: "YoutubeTab"`) or whose URL is not a YouTube video are skipped and counted.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::ytdlp;
use crate::domain::input;
use crate::domain::FailureClass;
use crate::tools::process;
use crate::tools::process::Cmd;

/// One video of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The 11-character video id.
    pub video_id: String,
    /// The canonical watch URL (`https://www.youtube.com/watch?v=ID`).
    pub url: String,
    /// The title the listing gave, when any.
    pub title: Option<String>,
}

/// What yt-dlp listed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    /// The playlist's or channel's title.
    pub title: Option<String>,
    /// The videos, in listing order, at most the `max` asked for, without repeats.
    pub entries: Vec<Entry>,
    /// Entries left out: not videos, or without a valid video id.
    pub skipped: usize,
}

/// Why a listing failed: the failure class and one sentence, cause first, plus yt-dlp's
/// own last error line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ListError {
    /// Retry policy of the failure.
    pub class: FailureClass,
    /// For the user.
    pub message: String,
    /// yt-dlp's own words.
    pub detail: Option<String>,
}

/// The argument vector (without the program) listing `url` (a canonical collection URL from
/// [`input::parse_collection_url`]): `--ignore-config --flat-playlist -J --playlist-items
/// 1:MAX --socket-timeout 20 --color never --cache-dir C [--js-runtimes deno:PATH] -- URL`.
pub fn build_args(
    url: &str,
    max: usize,
    cache_dir: &std::path::Path,
    js_runtime: Option<&std::path::Path>,
) -> Vec<OsString> {
    let mut v: Vec<OsString> = [
        "--ignore-config",
        "--flat-playlist",
        "-J",
        "--playlist-items",
        &format!("1:{}", max.max(1)),
        "--socket-timeout",
        &ytdlp::DEFAULT_SOCKET_TIMEOUT_S.to_string(),
        "--color",
        "never",
        "--cache-dir",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    v.push(cache_dir.as_os_str().to_owned());
    if let Some(deno) = js_runtime {
        let mut spec = OsString::from("deno:");
        spec.push(deno.as_os_str());
        v.push("--js-runtimes".into());
        v.push(spec);
    }
    v.push("--".into());
    v.push(url.into());
    v
}

/// Parses yt-dlp's `-J --flat-playlist` JSON, keeping at most `max` videos.
///
/// # Errors
/// A sentence when the text is not a JSON object.
pub fn parse(json: &str, max: usize) -> Result<Listing, String> {
    let v: serde_json::Value = serde_json::from_str(json.trim())
        .map_err(|e| format!("yt-dlp printed no playlist JSON ({e})"))?;
    let obj = v
        .as_object()
        .ok_or("yt-dlp printed JSON that is not a playlist object")?;
    let mut out = Listing {
        title: obj.get("title").and_then(|t| t.as_str()).map(str::to_owned),
        ..Listing::default()
    };
    let entries = obj
        .get("entries")
        .and_then(|e| e.as_array())
        .cloned()
        .unwrap_or_default();
    for e in &entries {
        let video = e
            .get("url")
            .and_then(|u| u.as_str())
            .filter(|_| e.get("ie_key").and_then(|k| k.as_str()) != Some("YoutubeTab"))
            .and_then(|u| input::parse_youtube_url(u).ok());
        let Some((video_id, url)) = video else {
            out.skipped += 1;
            continue;
        };
        if out.entries.iter().any(|x| x.video_id == video_id) {
            continue;
        }
        if out.entries.len() < max {
            out.entries.push(Entry {
                video_id,
                url,
                title: e.get("title").and_then(|t| t.as_str()).map(str::to_owned),
            });
        }
    }
    Ok(out)
}

/// Runs yt-dlp (`program`) to list the first `max` videos of `url`, with its cache in
/// `cache_dir`; gives up after `timeout`.
///
/// # Errors
/// [`ListError`]: yt-dlp's failure classified like a download's (a private or missing
/// playlist is permanent, a network error retryable), or unusable output.
pub async fn list(
    program: &std::path::Path,
    url: &str,
    max: usize,
    cache_dir: PathBuf,
    cancel: &CancellationToken,
    timeout: Duration,
) -> Result<Listing, ListError> {
    let deno = program
        .parent()
        .map(|d| d.join("deno"))
        .filter(|p| p.is_file());
    let cmd = Cmd::new(program)
        .args(build_args(url, max, &cache_dir, deno.as_deref()))
        .timeout(timeout);
    let fail = |class, message: String, detail| ListError {
        class,
        message,
        detail,
    };
    let (out, stdout) = process::run_collect(&cmd, cancel).await.map_err(|e| {
        fail(
            FailureClass::Retryable,
            format!("cannot run yt-dlp to list the videos: {e}"),
            None,
        )
    })?;
    if !out.success() {
        let f = ytdlp::classify_failure(out.code, &out.stderr_tail);
        return Err(fail(
            f.class,
            format!("cannot list the videos: {}", f.user_message()),
            f.detail(),
        ));
    }
    parse(&stdout, max).map_err(|e| fail(FailureClass::Retryable, e, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape yt-dlp 2026.10.26 prints for `-J --flat-playlist` on a playlist (fields
    /// trimmed to those of `_extract_video`'s `url_result`).
    const PLAYLIST: &str = r#"{"id": "PLabc", "title": "Three talks", "_type": "playlist",
      "entries": [
        {"_type": "url", "ie_key": "Youtube", "id": "aaaaaaaaaaa", "url": "https://www.youtube.com/watch?v=aaaaaaaaaaa", "title": "One", "duration": 61},
        {"_type": "url", "ie_key": "Youtube", "id": "bbbbbbbbbbb", "url": "https://www.youtube.com/shorts/bbbbbbbbbbb", "title": "Two"},
        {"_type": "url", "ie_key": "YoutubeTab", "id": "UCx", "url": "https://www.youtube.com/@x/shorts", "title": "x - Shorts"},
        {"_type": "url", "ie_key": "Youtube", "id": "aaaaaaaaaaa", "url": "https://www.youtube.com/watch?v=aaaaaaaaaaa", "title": "One again"},
        {"_type": "url", "ie_key": "Youtube", "id": "ccccccccccc", "url": "https://www.youtube.com/watch?v=ccccccccccc"}
      ],
      "extractor": "youtube:tab", "webpage_url": "https://www.youtube.com/playlist?list=PLabc", "playlist_count": 4}"#;

    #[test]
    fn flat_playlist_json_becomes_video_ids() {
        let l = parse(PLAYLIST, 50).unwrap();
        assert_eq!(l.title.as_deref(), Some("Three talks"));
        let ids: Vec<_> = l.entries.iter().map(|e| e.video_id.as_str()).collect();
        assert_eq!(ids, ["aaaaaaaaaaa", "bbbbbbbbbbb", "ccccccccccc"]);
        assert_eq!(
            l.entries[1].url,
            "https://www.youtube.com/watch?v=bbbbbbbbbbb"
        );
        assert_eq!(l.entries[2].title, None);
        assert_eq!(l.skipped, 1);
        assert_eq!(parse(PLAYLIST, 2).unwrap().entries.len(), 2);
        assert!(parse("not json", 5).is_err());
    }

    #[test]
    fn listing_args_end_with_the_url() {
        let v = build_args(
            "https://www.youtube.com/playlist?list=PLabc",
            2,
            std::path::Path::new("/c"),
            None,
        );
        let v: Vec<String> = v.iter().map(|s| s.to_string_lossy().into()).collect();
        assert!(v.contains(&"--flat-playlist".to_string()));
        let i = v.iter().position(|a| a == "--playlist-items").unwrap();
        assert_eq!(v[i + 1], "1:2");
        assert_eq!(
            &v[v.len() - 2..],
            ["--", "https://www.youtube.com/playlist?list=PLabc"]
        );
    }
}
