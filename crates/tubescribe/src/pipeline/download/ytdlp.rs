//! Pure yt-dlp plumbing for stage 1 (download): builds the yt-dlp argument
//! vector, parses the machine-readable lines it prints on stdout
//! (`META {json}`, `PROG {json}`, `FILE path`) and classifies failures from
//! the exit code and stderr text.
//!
//! Nothing here spawns a process; `crate::tools::process` runs the vector built by
//! [`build_args`] and feeds stdout lines to [`parse_stdout_line`] and the
//! exit code plus stderr to [`classify_failure`] /
//! [`classify_failure_with_meta`].
//!
//! Sources: `/work/shared/design/download.md` §0.3 (command shape), §2.1–2.2
//! (flags, progress), §2.4 (match filters), §2.6 (exit codes), §2.8 (error
//! catalogue), §2.9 (silent-success traps), plus runs of yt-dlp 2026.10.26
//! against a local `python3 -m http.server` (quoted in the tests).
//!
//! Success rule for the caller (download.md §2.9): exit code 0 **and** a
//! [`YtdlpLine::File`] line **and** the file exists. Exit 0 alone is not
//! enough.

use std::ffi::OsString;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use crate::domain::{retry, FailureClass};

/// Prefix of the metadata line (`--print '…:META %(.{…})j'`).
pub const META_PREFIX: &str = "META ";
/// Prefix of the progress line (`--progress-template 'download:PROG …'`).
pub const PROG_PREFIX: &str = "PROG ";
/// Prefix of the final-path line (`--print 'after_move:FILE %(filepath)s'`).
pub const FILE_PREFIX: &str = "FILE ";

/// Exit code yt-dlp uses when `--break-match-filters` (or `--max-downloads`)
/// stopped the run (`DownloadCancelled` → `return 101` in
/// `yt_dlp/__init__.py`, download.md §2.6).
pub const EXIT_BREAK_MATCH_FILTER: i32 = 101;
/// Exit code for an option-parse error (`optparse.OptParseError` → 2).
pub const EXIT_BAD_OPTIONS: i32 = 2;

/// Default per-socket timeout in seconds (download.md §0.3).
pub const DEFAULT_SOCKET_TIMEOUT_S: u32 = 20;
/// Download-phase retries passed as `--retries` / `--fragment-retries`.
pub const DOWNLOAD_RETRIES: u32 = 3;

/// Fields printed in the `META` JSON object. Missing/`None` fields are
/// omitted by yt-dlp's `%(.{…})j`, so every field of [`VideoMeta`] is
/// optional.
const META_FIELDS: &str = "id,title,duration,channel,uploader,live_status,is_live,\
availability,format_id,ext,acodec,asr,filesize,filesize_approx,chapters";
/// Fields printed in the `PROG` JSON object (`progress.*` keys, download.md
/// §2.2).
const PROG_FIELDS: &str = "status,downloaded_bytes,total_bytes,total_bytes_estimate,\
eta,speed,elapsed,fragment_index,fragment_count";

/// Inputs for one yt-dlp invocation (one job).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YtdlpArgs {
    /// Canonical `https://www.youtube.com/watch?v=ID`, or an allowed direct
    /// URL. Validated by the caller; always passed after `--`.
    pub url: String,
    /// Per-job output directory (`-P`). yt-dlp writes `<stem>.<ext>.part`
    /// here and renames it to `<stem>.<ext>` when complete.
    pub out_dir: PathBuf,
    /// Persistent, writable yt-dlp cache (player JS, solved challenges).
    pub cache_dir: PathBuf,
    /// File name stem, e.g. `"media"`. Never derived from titles. Characters
    /// outside `[A-Za-z0-9._-]` are replaced by `_` (see [`safe_stem`]).
    pub file_stem: String,
    /// Refuse videos longer than this many seconds (exit 101). Sources
    /// without a known duration pass (`duration<?N`).
    pub max_duration_s: Option<u64>,
    /// `--socket-timeout` in seconds. Worst case per request is about
    /// `(retries + 1) × timeout`, so the caller also needs a wall-clock
    /// deadline.
    pub socket_timeout_s: u32,
    /// Path to a `deno` binary for YouTube's JS challenges
    /// (`--js-runtimes deno:PATH`); `None` = let yt-dlp search `PATH`.
    pub js_runtime: Option<PathBuf>,
    /// yt-dlp's first retry sleep (`--retry-sleep exp=START:10`, doubling up to 10 s; shown
    /// to 10 ms). yt-dlp cannot jitter its sleeps, so each run gets its own start
    /// ([`retry_sleep_start`]) and parallel downloads do not retry in step.
    pub retry_sleep_start: Duration,
    /// The video's own captions to fetch beside the media (`options.captions` prefer/only);
    /// `None` fetches none.
    pub captions: Option<CaptionsRequest>,
}

/// Which captions a run fetches: yt-dlp writes them as `<stem>.<lang>.vtt` next to the
/// media (`--write-subs --sub-langs 'L,L-.*' --sub-format vtt`, plus `--write-auto-subs`
/// when `auto`; human-made captions of a language win over automatic ones, yt-dlp's
/// `process_subtitles`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptionsRequest {
    /// Language code, validated by the caller (`TaskOptions::validate`): `en`, `pt-BR`.
    pub lang: String,
    /// Accept YouTube's automatic captions too.
    pub auto: bool,
}

/// Prefix of the line naming the languages of the video's human-made captions
/// (`--print 'before_dl:SUBS %(subtitles)l'`: the keys of yt-dlp's `subtitles`, joined by
/// `, `; `NA` when it has none).
pub const SUBS_PREFIX: &str = "SUBS ";

/// The first retry sleep of one yt-dlp run: 1 s spread by up to half again
/// ([`retry::backoff_wait`] with `draw`).
pub fn retry_sleep_start(draw: f64) -> Duration {
    retry::backoff_wait(Duration::from_secs(1), draw)
}

/// Builds the yt-dlp argument vector (without the program name) for `a`.
///
/// Shape (download.md §0.3, every flag tested there):
/// `--ignore-config --no-playlist --newline --progress --no-simulate
/// --no-mtime --progress-delta 1 --color never --socket-timeout N
/// --retries 3 --fragment-retries 3 --retry-sleep http:exp=S:10
/// --retry-sleep fragment:exp=S:10 -f bestaudio/best -S lang
/// --break-match-filters '!is_live & live_status!=?is_upcoming [& duration<?MAX]'
/// --cache-dir C -P OUT -o '<stem>.%(ext)s'
/// --print 'pre_process:META {…}' --print 'before_dl:META {…}'
/// --print 'after_move:FILE %(filepath)s' --progress-template 'download:PROG {…}'
/// [--js-runtimes deno:PATH] -- URL`.
///
/// Decisions:
/// - `META` is printed twice. The `pre_process` line comes **before** the
///   match filters (verified in `YoutubeDL.process_video_result`, 2026.10.26),
///   so when yt-dlp exits 101 — which in `--print` (quiet) mode prints
///   nothing at all, not even on stderr (verified) — the last `META` still
///   says whether the video was live, upcoming or too long. The `before_dl`
///   line follows format selection and adds `format_id`, `ext`, `acodec`,
///   `asr`, `filesize`. Keep the last `META` seen.
/// - No `--restrict-filenames`: the name is `<stem>.<ext>` with our own stem,
///   so titles never reach the file system.
/// - No `--no-part`: the `.part` file plus rename means a `FILE` path is
///   always complete.
/// - The URL is the last element, right after `--`, so an id starting with
///   `-` cannot be parsed as an option (download.md §2.1).
pub fn build_args(a: &YtdlpArgs) -> Vec<OsString> {
    let mut v: Vec<OsString> = Vec::with_capacity(48);
    let mut push = |s: &str| v.push(OsString::from(s));
    for flag in [
        "--ignore-config",
        "--no-playlist",
        "--newline",
        "--progress",
        "--no-simulate",
        "--no-mtime",
        "--progress-delta",
        "1",
        "--color",
        "never",
    ] {
        push(flag);
    }
    push("--socket-timeout");
    push(&a.socket_timeout_s.max(1).to_string());
    push("--retries");
    push(&DOWNLOAD_RETRIES.to_string());
    push("--fragment-retries");
    push(&DOWNLOAD_RETRIES.to_string());
    let start = format!("{:.2}", a.retry_sleep_start.as_secs_f64());
    push("--retry-sleep");
    push(&format!("http:exp={start}:10"));
    push("--retry-sleep");
    push(&format!("fragment:exp={start}:10"));
    push("-f");
    push("bestaudio/best");
    push("-S");
    push("lang");
    push("--break-match-filters");
    push(&match_filter(a.max_duration_s));
    push("--print");
    push(&format!("pre_process:{META_PREFIX}%(.{{{META_FIELDS}}})j"));
    push("--print");
    push(&format!("before_dl:{META_PREFIX}%(.{{{META_FIELDS}}})j"));
    push("--print");
    push(&format!("after_move:{FILE_PREFIX}%(filepath)s"));
    push("--progress-template");
    push(&format!(
        "download:{PROG_PREFIX}%(progress.{{{PROG_FIELDS}}})j"
    ));
    if let Some(c) = &a.captions {
        push("--write-subs");
        if c.auto {
            push("--write-auto-subs");
        }
        push("--sub-langs");
        push(&format!("{0},{0}-.*", c.lang));
        push("--sub-format");
        push("vtt");
        push("--print");
        push(&format!("before_dl:{SUBS_PREFIX}%(subtitles)l"));
    }
    push("-o");
    push(&format!("{}.%(ext)s", safe_stem(&a.file_stem)));
    v.push(OsString::from("--cache-dir"));
    v.push(a.cache_dir.clone().into_os_string());
    v.push(OsString::from("-P"));
    v.push(a.out_dir.clone().into_os_string());
    if let Some(deno) = &a.js_runtime {
        let mut spec = OsString::from("deno:");
        spec.push(deno.as_os_str());
        v.push(OsString::from("--js-runtimes"));
        v.push(spec);
    }
    v.push(OsString::from("--"));
    v.push(OsString::from(&a.url));
    v
}

/// The `--break-match-filters` expression: refuse live and upcoming videos
/// and, when `max_duration_s` is set, longer ones. Every comparison uses `?`
/// so sources without the field (direct links) pass (download.md §2.4: plain
/// `live_status!=is_upcoming` rejects every generic source with exit 101).
pub fn match_filter(max_duration_s: Option<u64>) -> String {
    let mut f = String::from("!is_live & live_status!=?is_upcoming");
    if let Some(max) = max_duration_s {
        f.push_str(&format!(" & duration<?{max}"));
    }
    f
}

/// Makes `stem` safe for yt-dlp's output template: keeps `[A-Za-z0-9._-]`,
/// replaces anything else (including `%`, which would start a template
/// field, and path separators) with `_`, strips leading dots, and falls back
/// to `"media"` when nothing is left.
pub fn safe_stem(stem: &str) -> String {
    let s: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let s = s.trim_start_matches('.');
    if s.is_empty() {
        "media".to_owned()
    } else {
        s.to_owned()
    }
}

/// One classified stdout line of a yt-dlp run built by [`build_args`].
#[derive(Debug, Clone, PartialEq)]
pub enum YtdlpLine {
    /// `META {json}`: video metadata. Printed up to twice (before the match
    /// filters, then after format selection); keep the last one.
    Meta(VideoMeta),
    /// `PROG {json}`: one download progress tick (about 1 per second).
    Progress(DownloadProgress),
    /// `FILE path`: absolute path of the finished file, after the final move.
    File(PathBuf),
    /// `SUBS en, de`: the languages of the video's human-made captions (empty: none).
    Subs(Vec<String>),
    /// Anything else, including `META`/`PROG` lines whose JSON did not
    /// parse (the raw line, without the trailing newline).
    Other(String),
}

/// Video metadata from a `META` line. yt-dlp omits fields that are `None`;
/// direct links through the generic extractor carry only `id` and `title`
/// (both the file-name stem), `format_id` and `ext` (verified, download.md
/// §2.3).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VideoMeta {
    /// Extractor id: the 11-char YouTube id, or the file stem for direct links.
    pub id: Option<String>,
    /// Title as published (never used for file names).
    pub title: Option<String>,
    /// Duration in seconds (int or float in yt-dlp).
    pub duration_s: Option<f64>,
    /// Channel name.
    pub channel: Option<String>,
    /// Uploader name.
    pub uploader: Option<String>,
    /// `not_live`, `is_live`, `is_upcoming`, `was_live`, `post_live`, or
    /// `None` when unknown (yt-dlp `extractor/common.py` docstring).
    pub live_status: Option<String>,
    /// `true` while the video is a live broadcast.
    pub is_live: Option<bool>,
    /// `private`, `premium_only`, `subscriber_only`, `needs_auth`,
    /// `unlisted` or `public`.
    pub availability: Option<String>,
    /// Selected format, e.g. `251` (Opus) or `140` (m4a) on YouTube.
    pub format_id: Option<String>,
    /// Extension of the selected format, e.g. `webm`, `m4a`. `unknown_video`
    /// means the generic extractor saved something it could not identify
    /// (download.md §2.9 trap 3).
    pub ext: Option<String>,
    /// Audio codec of the selected format, e.g. `opus`, `mp4a.40.2`.
    pub acodec: Option<String>,
    /// Audio sample rate in Hz (yt-dlp `asr`).
    pub asr_hz: Option<u32>,
    /// Size in bytes: yt-dlp `filesize`, else `filesize_approx`.
    pub filesize_bytes: Option<u64>,
    /// The video's own chapters (yt-dlp `chapters`: `[{start_time, end_time, title}]` in
    /// seconds), converted to milliseconds; entries without a finite, non-negative start or
    /// a string title are skipped. Empty when the video has none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chapters: Vec<summarizer::Chapter>,
}

/// Wire shape of the `META` JSON (yt-dlp field names).
#[derive(Deserialize)]
struct RawMeta {
    #[serde(default, deserialize_with = "lenient_string")]
    id: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    title: Option<String>,
    #[serde(default, deserialize_with = "lenient_f64")]
    duration: Option<f64>,
    #[serde(default, deserialize_with = "lenient_string")]
    channel: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    uploader: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    live_status: Option<String>,
    #[serde(default, deserialize_with = "lenient_bool")]
    is_live: Option<bool>,
    #[serde(default, deserialize_with = "lenient_string")]
    availability: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    format_id: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    ext: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    acodec: Option<String>,
    #[serde(default, deserialize_with = "lenient_f64")]
    asr: Option<f64>,
    #[serde(default, deserialize_with = "lenient_f64")]
    filesize: Option<f64>,
    #[serde(default, deserialize_with = "lenient_f64")]
    filesize_approx: Option<f64>,
    #[serde(default, deserialize_with = "lenient_chapters")]
    chapters: Vec<summarizer::Chapter>,
}

impl From<RawMeta> for VideoMeta {
    fn from(r: RawMeta) -> Self {
        VideoMeta {
            id: r.id,
            title: r.title,
            duration_s: r.duration.filter(|d| *d >= 0.0),
            channel: r.channel,
            uploader: r.uploader,
            live_status: r.live_status,
            is_live: r.is_live,
            availability: r.availability,
            format_id: r.format_id,
            ext: r.ext,
            acodec: r.acodec.filter(|c| c != "none"),
            asr_hz: r.asr.and_then(f64_to_u32),
            filesize_bytes: r.filesize.or(r.filesize_approx).and_then(f64_to_u64),
            chapters: r.chapters,
        }
    }
}

/// One download progress tick from a `PROG` line. yt-dlp omits `None`
/// fields; `"NA"` strings and JSON `null` are read as `None`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DownloadProgress {
    /// `downloading`, `finished` or `error`.
    pub status: String,
    /// Bytes written so far (a float, as yt-dlp may report it; whole in
    /// practice).
    pub downloaded_bytes: Option<f64>,
    /// Total size in bytes: `total_bytes`, else `total_bytes_estimate`
    /// (fragmented DASH/HLS downloads only have the estimate, which moves
    /// and can be fractional, e.g. `420325.5`).
    pub total_bytes: Option<f64>,
    /// `true` when [`Self::total_bytes`] came from `total_bytes_estimate`.
    pub total_is_estimate: bool,
    /// Current speed in bytes per second.
    pub speed_bytes_per_s: Option<f64>,
    /// Estimated seconds left.
    pub eta_s: Option<f64>,
    /// Seconds since this download started.
    pub elapsed_s: Option<f64>,
    /// Index of the current fragment (fragmented downloads).
    pub fragment_index: Option<u64>,
    /// Number of fragments (fragmented downloads).
    pub fragment_count: Option<u64>,
    /// 0–100: `downloaded/total`, else `fragment_index/fragment_count`;
    /// 100 when `status` is `finished`; `None` when nothing is known.
    pub percent: Option<f64>,
}

/// Wire shape of the `PROG` JSON (yt-dlp `progress.*` keys).
#[derive(Deserialize)]
struct RawProgress {
    #[serde(default, deserialize_with = "lenient_string")]
    status: Option<String>,
    #[serde(default, deserialize_with = "lenient_f64")]
    downloaded_bytes: Option<f64>,
    #[serde(default, deserialize_with = "lenient_f64")]
    total_bytes: Option<f64>,
    #[serde(default, deserialize_with = "lenient_f64")]
    total_bytes_estimate: Option<f64>,
    #[serde(default, deserialize_with = "lenient_f64")]
    eta: Option<f64>,
    #[serde(default, deserialize_with = "lenient_f64")]
    speed: Option<f64>,
    #[serde(default, deserialize_with = "lenient_f64")]
    elapsed: Option<f64>,
    #[serde(default, deserialize_with = "lenient_f64")]
    fragment_index: Option<f64>,
    #[serde(default, deserialize_with = "lenient_f64")]
    fragment_count: Option<f64>,
}

impl From<RawProgress> for DownloadProgress {
    fn from(r: RawProgress) -> Self {
        let status = r.status.unwrap_or_else(|| "downloading".to_owned());
        let non_neg = |x: f64| (x.is_finite() && x >= 0.0).then_some(x);
        let downloaded = r.downloaded_bytes.and_then(non_neg);
        let (total, total_is_estimate) = match r.total_bytes.and_then(non_neg) {
            Some(t) => (Some(t), false),
            None => (r.total_bytes_estimate.and_then(non_neg), true),
        };
        let total_is_estimate = total_is_estimate && total.is_some();
        let fragment_index = r.fragment_index.and_then(f64_to_u64);
        let fragment_count = r.fragment_count.and_then(f64_to_u64);
        let percent = if status == "finished" {
            Some(100.0)
        } else {
            match (downloaded, total, fragment_index, fragment_count) {
                (Some(d), Some(t), _, _) if t > 0.0 => Some(d / t * 100.0),
                (_, _, Some(i), Some(n)) if n > 0 => Some(i as f64 / n as f64 * 100.0),
                _ => None,
            }
        }
        .map(|p| p.clamp(0.0, 100.0));
        DownloadProgress {
            status,
            downloaded_bytes: downloaded,
            total_bytes: total,
            total_is_estimate,
            speed_bytes_per_s: r.speed.filter(|s| *s >= 0.0),
            eta_s: r.eta.filter(|e| *e >= 0.0),
            elapsed_s: r.elapsed.filter(|e| *e >= 0.0),
            fragment_index,
            fragment_count,
            percent,
        }
    }
}

/// Classifies one stdout line (a trailing `\r`/`\n` is ignored). Never fails:
/// unknown lines and `META`/`PROG` lines with broken JSON become
/// [`YtdlpLine::Other`]. `FILE` accepts a plain path (`%(filepath)s`) or a
/// JSON string (`%(filepath)j`).
pub fn parse_stdout_line(line: &str) -> YtdlpLine {
    let line = line.trim_end_matches(['\r', '\n']);
    if let Some(json) = line.strip_prefix(META_PREFIX) {
        if let Ok(raw) = serde_json::from_str::<RawMeta>(json) {
            return YtdlpLine::Meta(raw.into());
        }
    } else if let Some(json) = line.strip_prefix(PROG_PREFIX) {
        if let Ok(raw) = serde_json::from_str::<RawProgress>(json) {
            return YtdlpLine::Progress(raw.into());
        }
    } else if let Some(langs) = line.strip_prefix(SUBS_PREFIX) {
        let langs = langs.trim();
        return YtdlpLine::Subs(if langs == "NA" || langs.is_empty() {
            Vec::new()
        } else {
            langs.split(", ").map(str::to_owned).collect()
        });
    } else if let Some(path) = line.strip_prefix(FILE_PREFIX) {
        let path = if path.starts_with('"') {
            serde_json::from_str::<String>(path).ok()
        } else {
            Some(path.to_owned())
        };
        if let Some(p) = path.filter(|p| !p.is_empty() && p != "NA") {
            return YtdlpLine::File(PathBuf::from(p));
        }
    }
    YtdlpLine::Other(line.to_owned())
}

/// A classified yt-dlp failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownloadFailure {
    /// Retry policy (a cool-down here never names a wait: yt-dlp reports none).
    pub class: FailureClass,
    /// Short machine tag for logs and metrics, e.g. `private`, `http_404`,
    /// `network`, `bot_check`, `live`, `unknown`.
    pub code: String,
    /// Clean human text for the user, e.g. "video is private".
    pub reason: String,
    /// `true` when the cause is most likely our environment (outdated yt-dlp,
    /// missing JS runtime, bad options), so operators should be alerted.
    pub ops_alert: bool,
    /// yt-dlp's own message from the last `ERROR:` line with the
    /// `ERROR: [extractor] id: ` prefix and `(caused by …)` tail removed.
    pub message: Option<String>,
    /// The last `ERROR:` line of stderr, verbatim (trimmed).
    pub last_error_line: Option<String>,
}

impl DownloadFailure {
    /// The message for the user (manifest, API, CLI): the human reason alone, cause first,
    /// e.g. "cannot reach YouTube: DNS lookup failed — offline?".
    pub fn user_message(&self) -> String {
        self.reason.clone()
    }

    /// yt-dlp's own words for the manifest's `detail` and `--verbose`: its last `ERROR:`
    /// line verbatim (at most 1000 characters).
    pub fn detail(&self) -> Option<String> {
        let line = self.last_error_line.as_deref()?;
        Some(line.chars().take(1000).collect())
    }
}

/// Classifies a finished yt-dlp run from its exit code and full stderr.
/// Same as [`classify_failure_with_meta`] without metadata: an exit 101 is
/// reported as "refused by the download policy (live, upcoming or too
/// long)" because yt-dlp prints nothing in that case.
///
/// Call it for any exit code ≠ 0, and also for exit 0 without a `FILE`
/// line (download.md §2.9: match-filter skips and `--max-filesize` aborts
/// exit 0 silently).
pub fn classify_failure(exit_code: i32, stderr: &str) -> DownloadFailure {
    classify_failure_with_meta(exit_code, stderr, None, None)
}

/// Like [`classify_failure`], but uses the last `META` seen (`meta`) and the
/// configured `max_duration_s` to say **which** policy rule stopped an
/// exit-101 run (live / upcoming / too long).
///
/// Matching (download.md §2.8): stderr is lowercased and the curly
/// apostrophe `’` is normalised to `'`; rules are tried in priority order,
/// first against the `ERROR:` lines, then against the whole stderr (some
/// causes only appear in `WARNING:` lines). Unknown errors are
/// [`FailureClass::Retryable`] with code `unknown` and the cleaned yt-dlp
/// message as the reason.
pub fn classify_failure_with_meta(
    exit_code: i32,
    stderr: &str,
    meta: Option<&VideoMeta>,
    max_duration_s: Option<u64>,
) -> DownloadFailure {
    let last_error_line = last_error_line(stderr).map(str::to_owned);
    let message = last_error_line.as_deref().map(clean_error_message);
    let mk = |class, code: &str, reason: String, ops_alert| DownloadFailure {
        class,
        code: code.to_owned(),
        reason,
        ops_alert,
        message: message.clone(),
        last_error_line: last_error_line.clone(),
    };

    if exit_code == EXIT_BREAK_MATCH_FILTER {
        let (code, reason) = explain_policy_stop(meta, max_duration_s);
        return mk(FailureClass::Permanent, code, reason, false);
    }
    if exit_code == EXIT_BAD_OPTIONS {
        return mk(
            FailureClass::Permanent,
            "bad_options",
            "internal error: yt-dlp rejected its command-line options".to_owned(),
            true,
        );
    }

    let error_text = normalise(
        &stderr
            .lines()
            .filter(|l| l.trim_start().starts_with("ERROR:"))
            .collect::<Vec<_>>()
            .join("\n"),
    );
    let all_text = normalise(stderr);
    let hit = match_rules(&error_text, &all_text).or_else(|| match_rules(&all_text, &all_text));
    if let Some(r) = hit {
        return mk(r.class, r.code, r.reason.to_owned(), r.ops_alert);
    }

    if exit_code == 0 {
        return mk(
            FailureClass::Permanent,
            "no_file",
            "yt-dlp finished without producing a file (filtered out or size limit)".to_owned(),
            false,
        );
    }
    let reason = message
        .clone()
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| format!("yt-dlp failed with exit code {exit_code}"));
    mk(FailureClass::Retryable, "unknown", reason, false)
}

/// The reason of `upcoming`, given by the policy stop and by yt-dlp's own refusal.
const UPCOMING: &str = "video is an upcoming live stream or premiere; try again after it has aired";

/// Which `--break-match-filters` rule refused the video, from the last
/// `META` (the `pre_process` one is printed before the filter runs).
/// Returns `(code, reason)`.
fn explain_policy_stop(
    meta: Option<&VideoMeta>,
    max_duration_s: Option<u64>,
) -> (&'static str, String) {
    if let Some(m) = meta {
        let status = m.live_status.as_deref();
        if m.is_live == Some(true) || status == Some("is_live") {
            return (
                "live",
                "video is a live stream; only finished videos can be transcribed".to_owned(),
            );
        }
        if status == Some("is_upcoming") {
            return ("upcoming", UPCOMING.to_owned());
        }
        if let (Some(d), Some(max)) = (m.duration_s, max_duration_s) {
            if d >= max as f64 {
                return (
                    "too_long",
                    format!(
                        "video is too long ({} > limit {})",
                        fmt_hms(d),
                        fmt_hms(max as f64)
                    ),
                );
            }
        }
    }
    (
        "policy",
        "video refused by the download policy (live, upcoming or too long)".to_owned(),
    )
}

/// Formats seconds as `1h02m03s` / `2m03s` / `3s`.
fn fmt_hms(secs: f64) -> String {
    let t = secs.max(0.0).round() as u64;
    let (h, m, s) = (t / 3600, t / 60 % 60, t % 60);
    if h > 0 {
        format!("{h}h{m:02}m{s:02}s")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

/// Lowercases and normalises curly apostrophes.
fn normalise(s: &str) -> String {
    s.to_lowercase().replace(['\u{2019}', '\u{2018}'], "'")
}

/// What a [`Rule`] looks for in the (normalised) error text.
enum Pattern {
    /// Any of these substrings.
    Text(&'static [&'static str]),
    /// Any of `text`, while the whole stderr has any of `stderr` (warnings that explain the
    /// error).
    TextWith {
        text: &'static [&'static str],
        stderr: &'static [&'static str],
    },
    /// An `HTTP Error NNN` whose status is in this range (the first status in the text).
    Http(RangeInclusive<u16>),
}

/// One row of the failure catalogue (download.md §2.8): when `pattern` matches, the failure
/// is `class`, tagged `code` and told to the user as `reason`; `ops_alert` when the cause is
/// most likely our environment.
struct Rule {
    pattern: Pattern,
    class: FailureClass,
    code: &'static str,
    reason: &'static str,
    ops_alert: bool,
}

impl Rule {
    /// A rule that does not alert operators.
    const fn new(
        pattern: Pattern,
        class: FailureClass,
        code: &'static str,
        reason: &'static str,
    ) -> Rule {
        Rule {
            pattern,
            class,
            code,
            reason,
            ops_alert: false,
        }
    }

    /// The same rule, flagged for operators.
    const fn ops(mut self) -> Rule {
        self.ops_alert = true;
        self
    }

    /// Whether the rule matches: `primary` is the text searched for the cause, `all` the whole
    /// stderr, `status` the first HTTP status in `primary`.
    fn matches(&self, primary: &str, all: &str, status: Option<u16>) -> bool {
        let any = |text: &str, needles: &[&str]| needles.iter().any(|n| text.contains(n));
        match &self.pattern {
            Pattern::Text(needles) => any(primary, needles),
            Pattern::TextWith { text, stderr } => any(primary, text) && any(all, stderr),
            Pattern::Http(range) => status.is_some_and(|s| range.contains(&s)),
        }
    }
}

/// The reason of `no_js_runtime`, which two rules give.
const JS_CHALLENGE: &str =
    "yt-dlp could not solve YouTube's JavaScript challenge (JS runtime missing or outdated)";
/// yt-dlp's words for a JavaScript runtime it could not find or use.
const JS_RUNTIME_MISSING: &[&str] = &[
    "no supported javascript runtime",
    "challenge solving failed",
];
/// yt-dlp's words for "no format to download".
const FORMAT_MISSING: &[&str] = &[
    "requested format is not available",
    "only images are available",
];
/// The reason of `http_404` and `http_410`.
const NOT_FOUND: &str = "video not found (HTTP 404/410)";

/// The causes tried first, in priority order: our disk, cool-downs, video-specific refusals
/// and HTTP statuses. Texts that also contain "sign in" / "unavailable" come before the rules
/// those words would otherwise match.
static CAUSE_RULES: &[Rule] = {
    use FailureClass::{Permanent, Retryable};
    const COOL_DOWN: FailureClass = FailureClass::COOL_DOWN;
    use Pattern::{Http, Text};
    &[
        // Our own disk: yt-dlp reports ENOSPC as `unable to write data: [Errno 28] No space
        // left on device` (Python's OSError text).
        Rule::new(
            Text(&["no space left on device", "[errno 28]", "disk quota exceeded"]),
            Retryable,
            "disk_full",
            "disk full: no space left on the data directory's filesystem",
        )
        .ops(),
        Rule::new(
            Text(&["confirm you're not a bot", "confirm you are not a bot"]),
            COOL_DOWN,
            "bot_check",
            "YouTube asked to confirm this is not a bot; retry later",
        )
        .ops(),
        Rule::new(
            Text(&[
                "rate-limited by youtube",
                "rate limited by youtube",
                "content isn't available, try again later",
            ]),
            COOL_DOWN,
            "rate_limited",
            "YouTube rate-limited this session; retry in an hour or more",
        )
        .ops(),
        Rule::new(
            Http(429..=429),
            COOL_DOWN,
            "http_429",
            "too many requests (HTTP 429); retry later",
        ),
        Rule::new(
            Text(&["private video", "this video is private"]),
            Permanent,
            "private",
            "video is private",
        ),
        Rule::new(
            Text(&[
                "members-only",
                "members only",
                "join this channel",
                "channel's members",
            ]),
            Permanent,
            "members_only",
            "video is for channel members only",
        ),
        Rule::new(
            Text(&[
                "confirm your age",
                "age-restricted",
                "age restricted",
                "inappropriate for some users",
            ]),
            Permanent,
            "age_restricted",
            "video is age-restricted",
        ),
        Rule::new(
            Text(&[
                "not made this video available in your country",
                "not available in your country",
                "geo restrict",
                "geo-restrict",
                "georestricted",
            ]),
            Permanent,
            "geo_blocked",
            "video is not available in this country",
        ),
        Rule::new(
            Text(&["drm protected"]),
            Permanent,
            "drm",
            "video is DRM protected",
        ),
        Rule::new(
            Text(&[
                "live event will begin",
                "premieres in",
                "premiere will begin",
            ]),
            Permanent,
            "upcoming",
            UPCOMING,
        ),
        Rule::new(
            Text(&[
                "removed by the uploader",
                "has been removed",
                "account associated with this video has been terminated",
                "violating youtube's terms",
            ]),
            Permanent,
            "removed",
            "video has been removed",
        ),
        Rule::new(
            Text(&[
                "video unavailable",
                "this video is not available",
                "video is no longer available",
                "this video is unavailable",
            ]),
            Permanent,
            "unavailable",
            "video is unavailable",
        ),
        Rule::new(
            Text(&[
                "unsupported url",
                "is not a valid url",
                "file:// urls are disabled",
            ]),
            Permanent,
            "unsupported_url",
            "URL is not supported",
        ),
        Rule::new(Http(404..=404), Permanent, "http_404", NOT_FOUND),
        Rule::new(Http(410..=410), Permanent, "http_410", NOT_FOUND),
        Rule::new(
            Http(403..=403),
            Retryable,
            "http_403",
            "the media server refused the download (HTTP 403); if it persists yt-dlp needs an update",
        ),
        Rule::new(Http(500..=599), Retryable, "http_5xx", "server error (HTTP 5xx)"),
        Rule::new(Http(408..=408), Retryable, "timeout", "request timed out (HTTP 408)"),
        Rule::new(
            Http(400..=499),
            Permanent,
            "http_4xx",
            "request rejected by the server (HTTP 4xx)",
        ),
    ]
};

/// Environment, extraction and transport causes, tried when no [`CAUSE_RULES`] row matched
/// and the text has no HTTP status.
static TRANSPORT_RULES: &[Rule] = {
    use FailureClass::Retryable;
    use Pattern::{Text, TextWith};
    &[
        // No audio format because the JS challenge failed (the warnings say so).
        Rule::new(
            TextWith {
                text: FORMAT_MISSING,
                stderr: JS_RUNTIME_MISSING,
            },
            Retryable,
            "no_js_runtime",
            JS_CHALLENGE,
        )
        .ops(),
        Rule::new(
            Text(FORMAT_MISSING),
            Retryable,
            "format_unavailable",
            "no downloadable audio format was offered; if it persists yt-dlp needs an update",
        )
        .ops(),
        Rule::new(
            Text(JS_RUNTIME_MISSING),
            Retryable,
            "no_js_runtime",
            JS_CHALLENGE,
        )
        .ops(),
        Rule::new(
            Text(&["downloaded file is empty"]),
            Retryable,
            "empty_file",
            "the downloaded file was empty",
        ),
        Rule::new(
            Text(&["timed out", "timeout"]),
            Retryable,
            "timeout",
            "network timeout",
        ),
        Rule::new(
            Text(&[
                "bytes read",
                "more expected",
                "bytes, expected",
                "incompleteread",
                "incomplete read",
            ]),
            Retryable,
            "incomplete",
            "the transfer was cut short",
        ),
        // Transport failures, most specific first: each tells the user where it broke
        // (`network` for all; yt-dlp's own words are the detail).
        Rule::new(
            Text(&[
                "name or service not known",
                "temporary failure in name resolution",
                "failed to resolve",
                "nodename nor servname",
                "no address associated with hostname",
                "getaddrinfo failed",
            ]),
            Retryable,
            "network",
            "cannot reach YouTube: DNS lookup failed — offline?",
        ),
        Rule::new(
            Text(&["network is unreachable", "no route to host"]),
            Retryable,
            "network",
            "cannot reach YouTube: the network is unreachable — offline?",
        ),
        Rule::new(
            Text(&[
                "connection refused",
                "connection reset",
                "connection aborted",
                "remote end closed",
                "failed to establish a new connection",
            ]),
            Retryable,
            "network",
            "cannot reach YouTube: the connection was refused or cut",
        ),
        Rule::new(
            Text(&["sslerror", "ssl: ", "eof occurred"]),
            Retryable,
            "network",
            "cannot reach YouTube: the secure (TLS) connection failed",
        ),
        Rule::new(
            Text(&[
                "transporterror",
                "unable to download api page",
                "unable to download webpage",
            ]),
            Retryable,
            "network",
            "cannot reach YouTube: network error",
        ),
    ]
};

/// The first matching rule. `primary` is the text searched for the cause (ERROR lines, or all
/// stderr on the second pass); `all` is the whole stderr, used only by rules that need a
/// warning's context (JS runtime). An HTTP status no [`CAUSE_RULES`] row names (e.g. a 3xx)
/// stops the search unclassified: the transport rules would only guess.
fn match_rules(primary: &str, all: &str) -> Option<&'static Rule> {
    if primary.trim().is_empty() {
        return None;
    }
    let status = http_status(primary);
    let first = |rules: &'static [Rule]| rules.iter().find(|r| r.matches(primary, all, status));
    match first(CAUSE_RULES) {
        Some(rule) => Some(rule),
        None if status.is_some() => None,
        None => first(TRANSPORT_RULES),
    }
}

/// Extracts the first `HTTP Error NNN` status code from lowercased text.
fn http_status(text: &str) -> Option<u16> {
    let idx = text.find("http error ")?;
    let digits: String = text[idx + "http error ".len()..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// The last line of `stderr` that starts with `ERROR:` (trimmed).
pub fn last_error_line(stderr: &str) -> Option<&str> {
    stderr
        .lines()
        .map(str::trim)
        .rev()
        .find(|l| l.starts_with("ERROR:"))
}

/// Cleans a yt-dlp `ERROR:` line for humans: removes `ERROR: `, a leading
/// `[extractor] ` tag, a following `<id>: ` (a single token without
/// spaces), and a trailing ` (caused by …)` detail.
///
/// `ERROR: [youtube] AbCdEfGhI-_: Private video. Sign in if …` →
/// `Private video. Sign in if …`.
pub fn clean_error_message(line: &str) -> String {
    let mut s = line.trim();
    s = s.strip_prefix("ERROR:").unwrap_or(s).trim_start();
    if s.starts_with('[') {
        if let Some(end) = s.find("] ") {
            s = &s[end + 2..];
        }
    }
    if let Some(colon) = s.find(": ") {
        let head = &s[..colon];
        if !head.is_empty() && head.len() <= 64 && !head.contains(char::is_whitespace) {
            s = &s[colon + 2..];
        }
    }
    if let Some(idx) = s.find(" (caused by ") {
        s = &s[..idx];
    }
    s.trim().to_owned()
}

/// Whether `path`'s extension is one yt-dlp uses for "could not identify the
/// content" (`unknown_video`, download.md §2.9 trap 3). Such a file should be
/// treated as a permanent failure ("not a media file") before decoding.
pub fn is_unknown_media(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "unknown_video")
}

fn f64_to_u64(x: f64) -> Option<u64> {
    (x.is_finite() && x >= 0.0).then(|| x.round() as u64)
}

fn f64_to_u32(x: f64) -> Option<u32> {
    (x.is_finite() && x >= 0.0 && x <= f64::from(u32::MAX)).then(|| x.round() as u32)
}

/// Accepts a JSON number, a numeric string, `"NA"`/`"none"`/`""`/`null`
/// (→ `None`).
fn lenient_f64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::String(s) => s.trim().parse::<f64>().ok().filter(|x| x.is_finite()),
        _ => None,
    })
}

/// yt-dlp `chapters` (`[{"start_time": s, "end_time": s, "title": "…"}]`, seconds) as
/// chapters in milliseconds; anything but an array gives none, and an entry without a
/// finite, non-negative `start_time` or a string `title` is skipped (a missing or earlier
/// `end_time` becomes the start). Titles are kept verbatim.
fn lenient_chapters<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<summarizer::Chapter>, D::Error> {
    let ms = |v: &serde_json::Value| {
        v.as_f64()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(|s| (s * 1000.0).round().min(u64::MAX as f64) as u64)
    };
    let serde_json::Value::Array(items) = serde_json::Value::deserialize(d)? else {
        return Ok(Vec::new());
    };
    Ok(items
        .iter()
        .filter_map(|c| {
            let start_ms = ms(&c["start_time"])?;
            let title = c["title"].as_str()?.to_string();
            let end_ms = ms(&c["end_time"]).unwrap_or(start_ms).max(start_ms);
            Some(summarizer::Chapter {
                start_ms,
                end_ms,
                title,
            })
        })
        .collect())
}

/// Accepts a JSON string (kept verbatim), a number (stringified, e.g. a
/// numeric `format_id`), or `null` (→ `None`).
fn lenient_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Some(s),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    })
}

/// Accepts a JSON bool, `"True"`/`"False"`, or anything else (→ `None`).
fn lenient_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::Bool(b) => Some(b),
        serde_json::Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        },
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(url: &str) -> YtdlpArgs {
        YtdlpArgs {
            url: url.to_owned(),
            out_dir: PathBuf::from("/var/lib/tubescribe/jobs/j1"),
            cache_dir: PathBuf::from("/var/lib/tubescribe/yt-dlp-cache"),
            file_stem: "media".to_owned(),
            max_duration_s: Some(14_400),
            socket_timeout_s: DEFAULT_SOCKET_TIMEOUT_S,
            js_runtime: Some(PathBuf::from("/opt/venv/bin/deno")),
            retry_sleep_start: retry_sleep_start(0.5),
            captions: None,
        }
    }

    fn strs(v: &[OsString]) -> Vec<String> {
        v.iter().map(|s| s.to_string_lossy().into_owned()).collect()
    }

    fn value_after<'a>(v: &'a [String], flag: &str) -> Vec<&'a str> {
        v.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn url_is_last_after_double_dash() {
        for url in [
            "https://www.youtube.com/watch?v=dQw4w9WgXcQ",
            "https://www.youtube.com/watch?v=-bcdefghij0",
            "-bcdefghij0",
            "--exec=rm -rf /",
        ] {
            let v = strs(&build_args(&args(url)));
            let n = v.len();
            assert_eq!(v[n - 1], url);
            assert_eq!(v[n - 2], "--");
            assert_eq!(v.iter().filter(|a| *a == "--").count(), 1);
            assert_eq!(v.iter().filter(|a| *a == url).count(), 1);
        }
    }

    #[test]
    fn arg_vector_shape() {
        let v = strs(&build_args(&args(
            "https://www.youtube.com/watch?v=dQw4w9WgXcQ",
        )));
        for flag in [
            "--ignore-config",
            "--no-playlist",
            "--newline",
            "--progress",
            "--no-simulate",
            "--no-mtime",
        ] {
            assert!(v.iter().any(|a| a == flag), "missing {flag}");
        }
        assert!(!v
            .iter()
            .any(|a| a == "--no-part" || a == "--restrict-filenames"));
        assert_eq!(value_after(&v, "--progress-delta"), ["1"]);
        assert_eq!(value_after(&v, "--socket-timeout"), ["20"]);
        assert_eq!(value_after(&v, "--retries"), ["3"]);
        assert_eq!(value_after(&v, "--fragment-retries"), ["3"]);
        assert_eq!(
            value_after(&v, "--retry-sleep"),
            ["http:exp=1.25:10", "fragment:exp=1.25:10"]
        );
        // Each run starts its sleeps somewhere in 1–1.5 s.
        assert_eq!(retry_sleep_start(0.0), Duration::from_secs(1));
        assert_eq!(retry_sleep_start(1.0), Duration::from_millis(1_500));
        assert_eq!(value_after(&v, "-f"), ["bestaudio/best"]);
        assert_eq!(value_after(&v, "-S"), ["lang"]);
        assert_eq!(
            value_after(&v, "--break-match-filters"),
            ["!is_live & live_status!=?is_upcoming & duration<?14400"]
        );
        assert_eq!(
            value_after(&v, "--cache-dir"),
            ["/var/lib/tubescribe/yt-dlp-cache"]
        );
        assert_eq!(value_after(&v, "-P"), ["/var/lib/tubescribe/jobs/j1"]);
        assert_eq!(value_after(&v, "-o"), ["media.%(ext)s"]);
        assert_eq!(
            value_after(&v, "--print"),
            [
                "pre_process:META %(.{id,title,duration,channel,uploader,live_status,is_live,\
availability,format_id,ext,acodec,asr,filesize,filesize_approx,chapters})j",
                "before_dl:META %(.{id,title,duration,channel,uploader,live_status,is_live,\
availability,format_id,ext,acodec,asr,filesize,filesize_approx,chapters})j",
                "after_move:FILE %(filepath)s",
            ]
        );
        assert_eq!(
            value_after(&v, "--progress-template"),
            [
                "download:PROG %(progress.{status,downloaded_bytes,total_bytes,\
total_bytes_estimate,eta,speed,elapsed,fragment_index,fragment_count})j"
            ]
        );
        assert_eq!(
            value_after(&v, "--js-runtimes"),
            ["deno:/opt/venv/bin/deno"]
        );

        let mut a = args("https://example.test/a.m4a");
        a.max_duration_s = None;
        a.js_runtime = None;
        a.file_stem = "../%(title)s".to_owned();
        a.socket_timeout_s = 0;
        let v = strs(&build_args(&a));
        assert_eq!(
            value_after(&v, "--break-match-filters"),
            ["!is_live & live_status!=?is_upcoming"]
        );
        assert!(!v.iter().any(|x| x == "--js-runtimes"));
        assert_eq!(value_after(&v, "-o"), ["___title_s.%(ext)s"]);
        assert_eq!(value_after(&v, "--socket-timeout"), ["1"]);
    }

    #[test]
    fn stems() {
        assert_eq!(safe_stem("media"), "media");
        assert_eq!(safe_stem("job-1_a.b"), "job-1_a.b");
        assert_eq!(safe_stem(""), "media");
        assert_eq!(safe_stem("..."), "media");
        assert_eq!(safe_stem("a/b\\c%d é"), "a_b_c_d__");
    }

    // Real stdout lines, yt-dlp 2026.10.26, this module's exact arg vector,
    // `python3 -m http.server` serving an ffmpeg-made m4a.
    const REAL_META_PRE: &str = r#"META {"id": "sample_audio", "title": "sample_audio", "format_id": "fmp4", "ext": "m4a"}"#;
    const REAL_PROG_1: &str = r#"PROG {"status": "downloading", "downloaded_bytes": 1024, "total_bytes": 121384, "elapsed": 0.02339005470275879}"#;
    const REAL_PROG_2: &str = r#"PROG {"status": "finished", "downloaded_bytes": 121384, "total_bytes": 121384, "speed": 4974852.174987053, "elapsed": 0.024399518966674805}"#;
    const REAL_FILE: &str = "FILE /tmp/dl-out/job1/media.m4a";

    #[test]
    fn parse_real_generic_lines() {
        match parse_stdout_line(REAL_META_PRE) {
            YtdlpLine::Meta(m) => {
                assert_eq!(m.id.as_deref(), Some("sample_audio"));
                assert_eq!(m.title.as_deref(), Some("sample_audio"));
                assert_eq!(m.format_id.as_deref(), Some("fmp4"));
                assert_eq!(m.ext.as_deref(), Some("m4a"));
                assert_eq!(m.duration_s, None);
                assert_eq!(m.channel, None);
                assert_eq!(m.live_status, None);
            }
            other => panic!("{other:?}"),
        }
        match parse_stdout_line(REAL_PROG_1) {
            YtdlpLine::Progress(p) => {
                assert_eq!(p.status, "downloading");
                assert_eq!(p.downloaded_bytes, Some(1024.0));
                assert_eq!(p.total_bytes, Some(121_384.0));
                assert!(!p.total_is_estimate);
                assert_eq!(p.speed_bytes_per_s, None);
                assert_eq!(p.eta_s, None);
                let pct = p.percent.expect("percent");
                assert!((pct - 0.8436).abs() < 0.001, "{pct}");
            }
            other => panic!("{other:?}"),
        }
        match parse_stdout_line(REAL_PROG_2) {
            YtdlpLine::Progress(p) => {
                assert_eq!(p.status, "finished");
                assert_eq!(p.percent, Some(100.0));
                assert_eq!(p.speed_bytes_per_s, Some(4974852.174987053));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            parse_stdout_line(&format!("{REAL_FILE}\n")),
            YtdlpLine::File(PathBuf::from("/tmp/dl-out/job1/media.m4a"))
        );
    }

    // Lines quoted in download.md §2.2, §3.3, §0.3.
    #[test]
    fn parse_design_doc_lines() {
        let m = match parse_stdout_line(
            r#"META {"id": "LoNg10MinAa", "title": "Ten minute synthetic lecture", "duration": 600, "channel": "Offline Test Channel", "live_status": "not_live", "format_id": "251", "ext": "webm", "filesize": 14078167}"#,
        ) {
            YtdlpLine::Meta(m) => m,
            other => panic!("{other:?}"),
        };
        assert_eq!(m.duration_s, Some(600.0));
        assert_eq!(m.channel.as_deref(), Some("Offline Test Channel"));
        assert_eq!(m.live_status.as_deref(), Some("not_live"));
        assert_eq!(m.filesize_bytes, Some(14_078_167));

        let m = match parse_stdout_line(
            r#"META {"id": "AbCdEfGhI-_", "format_id": "251", "acodec": "opus", "asr": 48000, "filesize_approx": 357500, "duration": 21.8, "availability": null}"#,
        ) {
            YtdlpLine::Meta(m) => m,
            other => panic!("{other:?}"),
        };
        assert_eq!(m.acodec.as_deref(), Some("opus"));
        assert_eq!(m.asr_hz, Some(48_000));
        assert_eq!(m.filesize_bytes, Some(357_500));
        assert_eq!(m.duration_s, Some(21.8));
        assert_eq!(m.availability, None);

        let p = match parse_stdout_line(
            r#"PROG {"status": "downloading", "downloaded_bytes": 2096128, "total_bytes": 14078167, "eta": 2, "speed": 4195823.291702798, "elapsed": 0.6280779838562012}"#,
        ) {
            YtdlpLine::Progress(p) => p,
            other => panic!("{other:?}"),
        };
        assert_eq!(p.eta_s, Some(2.0));
        assert!((p.percent.expect("pct") - 14.889).abs() < 0.01);

        // Fragmented DASH: only an estimate, float bytes.
        let p = match parse_stdout_line(
            r#"PROG {"status": "downloading", "downloaded_bytes": 60429, "total_bytes_estimate": 420325.5, "speed": 0, "fragment_index": 2, "fragment_count": 7}"#,
        ) {
            YtdlpLine::Progress(p) => p,
            other => panic!("{other:?}"),
        };
        assert_eq!(p.total_bytes, Some(420_325.5));
        assert!(p.total_is_estimate);
        assert_eq!(p.fragment_index, Some(2));
        assert_eq!(p.fragment_count, Some(7));
        assert_eq!(p.speed_bytes_per_s, Some(0.0));

        // Only fragments known → fragment ratio.
        let p = match parse_stdout_line(
            r#"PROG {"status": "downloading", "fragment_index": 1, "fragment_count": 4}"#,
        ) {
            YtdlpLine::Progress(p) => p,
            other => panic!("{other:?}"),
        };
        assert_eq!(p.percent, Some(25.0));

        // JSON-quoted FILE (%(filepath)j) also works.
        assert_eq!(
            parse_stdout_line(r#"FILE "/jobs/j 1/AbCdEfGhI-_.webm""#),
            YtdlpLine::File(PathBuf::from("/jobs/j 1/AbCdEfGhI-_.webm"))
        );
    }

    #[test]
    fn parse_na_null_and_junk() {
        let p = match parse_stdout_line(
            r#"PROG {"status": "downloading", "downloaded_bytes": "NA", "total_bytes": null, "eta": "NA", "speed": "1234.5"}"#,
        ) {
            YtdlpLine::Progress(p) => p,
            other => panic!("{other:?}"),
        };
        assert_eq!(p.downloaded_bytes, None);
        assert_eq!(p.total_bytes, None);
        assert!(!p.total_is_estimate);
        assert_eq!(p.eta_s, None);
        assert_eq!(p.speed_bytes_per_s, Some(1234.5));
        assert_eq!(p.percent, None);

        let m = match parse_stdout_line(
            r#"META {"id": "x", "duration": "NA", "asr": null, "filesize": "NA", "acodec": "none", "is_live": false}"#,
        ) {
            YtdlpLine::Meta(m) => m,
            other => panic!("{other:?}"),
        };
        assert_eq!(m.duration_s, None);
        assert_eq!(m.asr_hz, None);
        assert_eq!(m.filesize_bytes, None);
        assert_eq!(m.acodec, None);
        assert_eq!(m.is_live, Some(false));

        for junk in [
            "META {not json",
            "PROG NA",
            "FILE ",
            "FILE NA",
            "[download] Destination: media.m4a",
            "",
            "METADATA",
        ] {
            assert_eq!(parse_stdout_line(junk), YtdlpLine::Other(junk.to_owned()));
        }
    }

    /// Every `(stderr, code)` case classifies (exit code 1) as `class` with that code.
    fn assert_classes(class: FailureClass, cases: &[(&str, &str)]) {
        for (stderr, code) in cases {
            let f = classify_failure(1, stderr);
            assert_eq!((f.class, f.code.as_str()), (class, *code), "{stderr}");
        }
    }

    #[test]
    fn permanent_failures() {
        use FailureClass::Permanent;
        let cases = [
            ("ERROR: [youtube] AbCdEfGhI-_: Private video. Sign in if you've been granted access to this video", "private"),
            ("ERROR: [youtube] AbCdEfGhI-_: Video unavailable. This video has been removed by the uploader", "removed"),
            ("ERROR: [youtube] AbCdEfGhI-_: Video unavailable. This video is no longer available because the YouTube account associated with this video has been terminated.", "removed"),
            ("ERROR: [youtube] AbCdEfGhI-_: This video has been removed for violating YouTube's Terms of Service", "removed"),
            ("ERROR: [youtube] AbCdEfGhI-_: Video unavailable", "unavailable"),
            ("ERROR: [youtube] AbCdEfGhI-_: Join this channel to get access to members-only content like this video, and other exclusive perks.", "members_only"),
            ("ERROR: [youtube] AbCdEfGhI-_: This video is available to this channel's members on level: Gold (or any higher level). Join this channel to get access to members-only content and other exclusive perks.", "members_only"),
            ("ERROR: [youtube] AbCdEfGhI-_: Sign in to confirm your age. This video may be inappropriate for some users.", "age_restricted"),
            ("ERROR: [youtube] AbCdEfGhI-_: Video unavailable. The uploader has not made this video available in your country", "geo_blocked"),
            ("ERROR: [youtube] AbCdEfGhI-_: This video is DRM protected", "drm"),
            ("ERROR: [youtube] AbCdEfGhI-_: This live event will begin in 2 days.", "upcoming"),
            ("ERROR: [youtube] AbCdEfGhI-_: Premieres in 6 hours", "upcoming"),
            ("ERROR: Unsupported URL: https://example.com/", "unsupported_url"),
            ("ERROR: [generic] 'not a url' is not a valid URL", "unsupported_url"),
            ("ERROR: file:// URLs are disabled by default in yt-dlp for security reasons. Use --enable-file-urls to enable at your own risk.", "unsupported_url"),
            // Real, this box: python http.server's 404 reason is "File not found".
            ("ERROR: [generic] nope: Unable to download webpage: HTTP Error 404: File not found (caused by <HTTPError 404: File not found>)", "http_404"),
            ("ERROR: [generic] sample: Unable to download webpage: HTTP Error 404: Not Found (caused by <HTTPError 404: Not Found>)", "http_404"),
            ("ERROR: unable to download video data: HTTP Error 404: Not Found", "http_404"),
            ("ERROR: unable to download video data: HTTP Error 410: Gone", "http_410"),
        ];
        assert_classes(Permanent, &cases);
    }

    #[test]
    fn retryable_failures() {
        use FailureClass::Retryable;
        let cases = [
            ("ERROR: [download] Got error: HTTP Error 500: Internal Server Error. Giving up after 2 retries", "http_5xx"),
            ("ERROR: [generic] sample: Unable to download webpage: HTTP Error 503: Service Unavailable (caused by <HTTPError 503: Service Unavailable>)", "http_5xx"),
            ("ERROR: unable to download video data: HTTP Error 403: Forbidden", "http_403"),
            ("ERROR: [download] Got error: HTTPConnectionPool(host='127.0.0.1', port=8766): Read timed out.. Giving up after 1 retries", "timeout"),
            ("ERROR: [download] Got error: The read operation timed out. Giving up after 3 retries", "timeout"),
            // Real, this box (urllib handler).
            ("ERROR: [generic] x: Unable to download webpage: [Errno 111] Connection refused (caused by TransportError('[Errno 111] Connection refused'))", "network"),
            ("ERROR: [generic] sample: Unable to download webpage: HTTPConnection(host='127.0.0.1', port=9): Failed to establish a new connection: [Errno 111] Connection refused", "network"),
            ("WARNING: [youtube] [Errno -2] Name or service not known. Retrying (3/3)...\nERROR: [youtube] -bcdefghij0: Unable to download API page: [Errno -2] Name or service not known (caused by TransportError('[Errno -2] Name or service not known'))", "network"),
            ("ERROR: [youtube] dQw4w9WgXcQ: Unable to download API page: Failed to resolve 'www.youtube.com' ([Errno -2] Name or service not known)", "network"),
            ("ERROR: [download] Got error: 200000 bytes read, 275727 more expected. Giving up after 3 retries", "incomplete"),
            ("ERROR: Downloaded 200000 bytes, expected 475727 bytes", "incomplete"),
            ("ERROR: The downloaded file is empty", "empty_file"),
            ("ERROR: something nobody has seen before", "unknown"),
        ];
        assert_classes(Retryable, &cases);
        let js = classify_failure(
            1,
            "WARNING: [youtube] No supported JavaScript runtime could be found. YouTube extraction without a JS runtime has been deprecated, and some formats may be missing.\n\
             WARNING: [youtube] AbCdEfGhI-_: n challenge solving failed: Some formats may be missing.\n\
             WARNING: Only images are available for download. use --list-formats to see them\n\
             ERROR: [youtube] AbCdEfGhI-_: Requested format is not available. Use --list-formats for a list of available formats",
        );
        assert_eq!((js.class, js.code.as_str()), (Retryable, "no_js_runtime"));
        assert!(js.ops_alert);
        let fmt = classify_failure(
            1,
            "ERROR: [generic] sample: Requested format is not available. Use --list-formats for a list of available formats",
        );
        assert_eq!(fmt.code, "format_unavailable");
        assert!(fmt.ops_alert);
    }

    #[test]
    fn cooldown_failures() {
        let cases = [
            ("ERROR: [youtube] AbCdEfGhI-_: Sign in to confirm you\u{2019}re not a bot. This helps protect our community. Learn more", "bot_check"),
            ("ERROR: [youtube] AbCdEfGhI-_: Sign in to confirm you're not a bot. Use --cookies-from-browser or --cookies for the authentication. See  https://github.com/yt-dlp/yt-dlp/wiki/FAQ#how-do-i-pass-cookies-to-yt-dlp  for how to manually pass cookies. Also see  https://github.com/yt-dlp/yt-dlp/wiki/Extractors#exporting-youtube-cookies  for tips on effectively exporting YouTube cookies", "bot_check"),
            ("ERROR: [youtube] AbCdEfGhI-_: Video unavailable. This content isn\u{2019}t available, try again later. The current session has been rate-limited by YouTube for up to an hour. It is recommended to use `-t sleep` to add a delay between video requests to avoid exceeding the rate limit.", "rate_limited"),
            ("ERROR: unable to download video data: HTTP Error 429: Too Many Requests", "http_429"),
            ("ERROR: [generic] sample: Unable to download webpage: HTTP Error 429: Too Many Requests (caused by <HTTPError 429: Too Many Requests>)", "http_429"),
        ];
        assert_classes(FailureClass::COOL_DOWN, &cases);
    }

    #[test]
    fn reason_and_message_are_clean() {
        let stderr = "WARNING: [youtube] something\nERROR: [youtube] AbCdEfGhI-_: Private video. Sign in if you've been granted access to this video\n";
        let f = classify_failure(1, stderr);
        assert_eq!(f.reason, "video is private");
        assert_eq!(f.user_message(), "video is private");
        assert_eq!(
            f.message.as_deref(),
            Some("Private video. Sign in if you've been granted access to this video")
        );
        assert_eq!(
            f.last_error_line.as_deref(),
            Some("ERROR: [youtube] AbCdEfGhI-_: Private video. Sign in if you've been granted access to this video")
        );
        let f = classify_failure(
            1,
            "ERROR: [youtube] -bcdefghij0: weird new failure (caused by Foo('x'))",
        );
        assert_eq!(f.reason, "weird new failure");
        assert_eq!(
            clean_error_message("ERROR: [generic] nope: Unable to download webpage: HTTP Error 404: File not found (caused by <HTTPError 404: File not found>)"),
            "Unable to download webpage: HTTP Error 404: File not found"
        );
        assert_eq!(
            clean_error_message("ERROR: unable to download video data: HTTP Error 403: Forbidden"),
            "unable to download video data: HTTP Error 403: Forbidden"
        );
        let f = classify_failure(1, "");
        assert_eq!(f.reason, "yt-dlp failed with exit code 1");
        assert_eq!(f.last_error_line, None);
        // A network failure says where it broke in one sentence; yt-dlp's words are the detail.
        let line = "ERROR: [youtube] dQw4w9WgXcQ: Unable to download webpage: <urlopen error [Errno -3] Temporary failure in name resolution> (caused by TransportError('<urlopen error [Errno -3] Temporary failure in name resolution>'))";
        let f = classify_failure(1, line);
        assert_eq!(f.class, FailureClass::Retryable);
        assert_eq!(
            f.user_message(),
            "cannot reach YouTube: DNS lookup failed — offline?"
        );
        assert_eq!(f.detail().as_deref(), Some(line));
        assert_eq!(
            classify_failure(1, "ERROR: [youtube] x: Private video")
                .detail()
                .as_deref(),
            Some("ERROR: [youtube] x: Private video")
        );
    }

    #[test]
    fn exit_codes_101_2_0() {
        // Real: in --print (quiet) mode exit 101 prints nothing on stderr.
        let f = classify_failure(101, "");
        assert_eq!(
            (f.class, f.code.as_str()),
            (FailureClass::Permanent, "policy")
        );
        let live = VideoMeta {
            id: Some("LiVeLiVeLi0".into()),
            live_status: Some("is_live".into()),
            is_live: Some(true),
            ..VideoMeta::default()
        };
        let f = classify_failure_with_meta(101, "", Some(&live), Some(14_400));
        assert_eq!(f.code, "live");
        assert!(f.reason.contains("live stream"));
        // Real pre_process META line of an upcoming stream.
        let up = match parse_stdout_line(
            r#"META {"id": "LiVeLiVeLi0", "title": "Live now", "live_status": "is_upcoming", "is_live": false}"#,
        ) {
            YtdlpLine::Meta(m) => m,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            classify_failure_with_meta(101, "", Some(&up), None).code,
            "upcoming"
        );
        assert!(up.chapters.is_empty());
        let with_chapters = match parse_stdout_line(
            r#"META {"id": "x", "chapters": [{"start_time": 0.0, "end_time": 61.5, "title": "Intro"}, {"start_time": 61.5, "end_time": 120, "title": "Part \u202e2"}, {"start_time": "bad", "title": "skipped"}]}"#,
        ) {
            YtdlpLine::Meta(m) => m,
            other => panic!("{other:?}"),
        };
        let got: Vec<(u64, u64, &str)> = with_chapters
            .chapters
            .iter()
            .map(|c| (c.start_ms, c.end_ms, c.title.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![(0, 61_500, "Intro"), (61_500, 120_000, "Part \u{202e}2")]
        );
        let long = VideoMeta {
            live_status: Some("not_live".into()),
            duration_s: Some(20_000.0),
            ..VideoMeta::default()
        };
        let f = classify_failure_with_meta(101, "", Some(&long), Some(14_400));
        assert_eq!(f.code, "too_long");
        assert_eq!(f.reason, "video is too long (5h33m20s > limit 4h00m00s)");

        let f = classify_failure(2, "Usage: yt-dlp [OPTIONS] URL [URL...]\n\nyt-dlp: error: no such option: --no-such-option");
        assert_eq!(
            (f.class, f.code.as_str(), f.ops_alert),
            (FailureClass::Permanent, "bad_options", true)
        );

        let f = classify_failure(0, "");
        assert_eq!(
            (f.class, f.code.as_str()),
            (FailureClass::Permanent, "no_file")
        );
    }

    #[test]
    fn unknown_media_ext() {
        assert!(is_unknown_media(Path::new("/j/media.unknown_video")));
        assert!(!is_unknown_media(Path::new("/j/media.m4a")));
    }
}
