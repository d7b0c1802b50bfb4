//! Direct media URLs (on operator-allowed hosts) fetched by our own HTTP client instead of
//! yt-dlp, so that every hop stays inside the allow-list (SSRF protection, see `input.rs`).
//!
//! * Every redirect target is checked with [`InputPolicy::check_fetch_url`] (at most
//!   [`MAX_REDIRECTS`] hops); a refused hop fails the download permanently with the reason.
//! * Every DNS answer is checked with [`InputPolicy::check_resolved`] through a custom
//!   resolver, so an allowed public name cannot be pointed at `127.0.0.1` or the cloud
//!   metadata address (DNS rebinding). IP-literal hosts need no DNS and are covered by the
//!   allow-list check.
//! * The body streams into `.tmp/`; ENOSPC/EDQUOT fails with `disk full: …` (retryable) and
//!   the partial file is removed at once; any other failure removes it too.
//! * A server that sends nothing for the no-progress limit (`[stages.download]
//!   no_progress_timeout_s`) — no answer, or no new body bytes — fails the attempt as
//!   retryable: `the media server sent no data for N s …`.
//!
//! HTTP statuses: 404/410 and other 4xx are permanent, 429 is a cool-down, 408 and 5xx are
//! retryable (the queue's backoff retries them).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use url::Url;

use super::super::{JobCtx, StageError};
use crate::domain::input::InputPolicy;
use crate::domain::Progress;
use crate::store::is_disk_full_io;

/// Redirect hops followed before giving up.
pub const MAX_REDIRECTS: usize = 5;
/// Connect timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// A DNS resolver that refuses non-public answers for names not explicitly allowed (also
/// used for webhook callbacks, `pipeline/webhook.rs`).
pub(crate) struct CheckedResolver {
    policy: InputPolicy,
}

impl CheckedResolver {
    /// A resolver checking every answer with `policy`.
    pub(crate) fn new(policy: InputPolicy) -> Self {
        Self { policy }
    }
}

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            for a in &addrs {
                policy.check_resolved(&host, a.ip())?;
            }
            let it: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(it)
        })
    }
}

/// What [`fetch`] produced: the file in `.tmp/` and a display title (the URL's last path
/// segment, percent-decoded; kept only in the manifest).
pub struct Fetched {
    /// The downloaded file inside the task's `.tmp/`.
    pub path: PathBuf,
    /// The URL's file name, for the manifest's `title`.
    pub title: Option<String>,
}

/// Downloads `url` into the task's `.tmp/` under `policy`; a server silent for `no_progress`
/// (no answer, or no new body bytes) is given up on (`None`: waits as long as the stage's
/// time limit allows).
///
/// # Errors
/// Permanent: a refused URL or redirect hop (reason from [`crate::domain::input::InputError`]), HTTP
/// 4xx (except 408/429). Cool-down: HTTP 429. Retryable: 408, 5xx, network errors and
/// timeouts, no data for `no_progress`, `disk full: …`. Cancellation gives `cancelled`.
pub async fn fetch(
    job: &JobCtx,
    policy: &InputPolicy,
    url: &Url,
    no_progress: Option<Duration>,
) -> Result<Fetched, StageError> {
    policy
        .check_fetch_url(url)
        .map_err(|e| StageError::permanent(e.to_string()))?;
    let redirect_policy = {
        let policy = policy.clone();
        reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() > MAX_REDIRECTS {
                return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
            }
            match policy.check_fetch_url(attempt.url()) {
                Ok(()) => attempt.follow(),
                Err(e) => {
                    let msg = format!("redirect to {} refused: {e}", attempt.url());
                    attempt.error(msg)
                }
            }
        })
    };
    let client = reqwest::Client::builder()
        .redirect(redirect_policy)
        .dns_resolver(Arc::new(CheckedResolver::new(policy.clone())))
        .connect_timeout(CONNECT_TIMEOUT)
        .user_agent(concat!("tubescribe/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| StageError::permanent(format!("HTTP client: {e}")))?;
    let send = client.get(url.clone()).send();
    let resp = tokio::select! {
        r = send => r,
        () = silence(no_progress) => return Err(silent(no_progress)),
        _ = job.cancel.cancelled() => return Err(StageError::cancelled()),
    }
    .map_err(request_error)?;
    let status = resp.status();
    if !status.is_success() {
        let code = status.as_u16();
        let reason = status.canonical_reason().unwrap_or("");
        let msg = format!("the media server answered HTTP {code} {reason} for {url}");
        return Err(match code {
            429 => match summarizer::llm::retry_after(resp.headers()) {
                Some(wait) => StageError::cool_down_for(msg, wait),
                None => StageError::cool_down(msg),
            },
            408 | 500..=599 => StageError::retryable(msg),
            _ => StageError::permanent(msg),
        });
    }
    let total = resp.content_length();
    // First report once the size is known (the queue forwards the first change at once and
    // then at most four per second, so a fast download still shows its size).
    job.progress.send_modify(|p| {
        *p = Progress {
            percent: 0.0,
            bytes: Some(0),
            total_bytes: total,
            phase: Some("downloading".into()),
            ..Progress::default()
        }
    });
    let final_url = resp.url().clone();
    let ext = extension(&final_url)
        .or_else(|| {
            resp.headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .and_then(ext_from_mime)
        })
        .unwrap_or_else(|| "bin".into());
    let tmp = job.task.tmp_file(&format!("media.{ext}"))?;
    let result = stream_to(job, resp, &tmp, total, no_progress).await;
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    let title = url
        .path_segments()
        .and_then(|mut s| s.next_back().map(str::to_owned))
        .filter(|s| !s.is_empty())
        .map(|s| {
            percent_decode(&s)
                .unwrap_or(s)
                .replace(char::is_control, "")
        });
    Ok(Fetched { path: tmp, title })
}

/// Waits `limit` (forever for `None`).
async fn silence(limit: Option<Duration>) {
    match limit {
        Some(l) => tokio::time::sleep(l).await,
        None => std::future::pending().await,
    }
}

/// The error for a server that sent nothing for `limit`.
fn silent(limit: Option<Duration>) -> StageError {
    StageError::retryable(format!(
        "the media server sent no data for {} s; the download was stopped",
        limit.unwrap_or_default().as_secs_f64()
    ))
}

/// Streams the body into `path`, reporting progress; maps write errors (`disk full`) and
/// gives up when no new bytes come for `no_progress`.
async fn stream_to(
    job: &JobCtx,
    mut resp: reqwest::Response,
    path: &std::path::Path,
    total: Option<u64>,
    no_progress: Option<Duration>,
) -> Result<(), StageError> {
    let write_err = |e: std::io::Error| {
        if is_disk_full_io(&e) {
            StageError::retryable(format!(
                "disk full: no space left while writing the download ({e}); the partial file was removed"
            ))
        } else {
            StageError::retryable(format!("cannot write the download: {e}"))
        }
    };
    let mut file = tokio::fs::File::create(path).await.map_err(write_err)?;
    let mut done: u64 = 0;
    let started = std::time::Instant::now();
    loop {
        let chunk = tokio::select! {
            c = resp.chunk() => c.map_err(request_error)?,
            () = silence(no_progress) => return Err(silent(no_progress)),
            _ = job.cancel.cancelled() => return Err(StageError::cancelled()),
        };
        let Some(chunk) = chunk else { break };
        file.write_all(&chunk).await.map_err(write_err)?;
        done += chunk.len() as u64;
        let secs = started.elapsed().as_secs_f64().max(1e-3);
        job.progress.send_modify(|p| {
            *p = Progress {
                percent: total
                    .filter(|t| *t > 0)
                    .map(|t| (done as f64 / t as f64 * 100.0).clamp(0.0, 100.0))
                    .unwrap_or(0.0),
                bytes: Some(done),
                total_bytes: total,
                speed_bps: Some(done as f64 / secs),
                eta_s: None,
                phase: Some("downloading".into()),
            }
        });
    }
    file.flush().await.map_err(write_err)?;
    file.sync_all().await.map_err(write_err)?;
    if let Some(t) = total {
        if done < t {
            return Err(StageError::retryable(format!(
                "the transfer was cut short: {done} of {t} bytes"
            )));
        }
    }
    Ok(())
}

/// `e` and its sources, joined by `: ` (the HTTP client's own words).
pub(crate) fn error_chain(e: &reqwest::Error) -> String {
    let mut chain = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        chain.push_str(": ");
        chain.push_str(&s.to_string());
        src = s.source();
    }
    chain
}

/// Classifies a reqwest error: refused redirects are permanent, the rest is network trouble,
/// told in one sentence naming the host and where it broke (the client's own words are the
/// detail).
fn request_error(e: reqwest::Error) -> StageError {
    let chain = error_chain(&e);
    if e.is_redirect() || chain.contains("are refused unless allowed") {
        return StageError::permanent(format!("download refused: {chain}"));
    }
    let host = e
        .url()
        .and_then(|u| u.host_str())
        .unwrap_or("the media server")
        .to_string();
    let lower = chain.to_lowercase();
    let has = |words: &[&str]| words.iter().any(|w| lower.contains(w));
    let message = if e.is_timeout() {
        format!("network timeout while fetching from {host}")
    } else if has(&[
        "dns error",
        "failed to lookup address",
        "name or service not known",
    ]) {
        format!("cannot reach {host}: DNS lookup failed — offline?")
    } else if has(&["network is unreachable", "no route to host"]) {
        format!("cannot reach {host}: the network is unreachable — offline?")
    } else if has(&["connection refused"]) {
        format!("cannot reach {host}: connection refused")
    } else {
        format!("network error while fetching from {host}")
    };
    StageError::retryable(message).with_detail(chain)
}

/// The URL path's extension when it is 1–5 ASCII alphanumerics (`.m4a`, `.opus`).
fn extension(url: &Url) -> Option<String> {
    let last = url.path_segments()?.next_back()?;
    let (_, ext) = last.rsplit_once('.')?;
    (!ext.is_empty() && ext.len() <= 5 && ext.chars().all(|c| c.is_ascii_alphanumeric()))
        .then(|| ext.to_ascii_lowercase())
}

/// A file extension for common audio/video MIME types.
fn ext_from_mime(mime: &str) -> Option<String> {
    let m = mime.split(';').next()?.trim().to_ascii_lowercase();
    let e = match m.as_str() {
        "audio/mpeg" => "mp3",
        "audio/mp4" | "audio/x-m4a" => "m4a",
        "audio/ogg" | "application/ogg" => "ogg",
        "audio/opus" => "opus",
        "audio/wav" | "audio/x-wav" | "audio/wave" => "wav",
        "audio/flac" | "audio/x-flac" => "flac",
        "audio/webm" | "video/webm" => "webm",
        "video/mp4" => "mp4",
        "video/x-matroska" => "mkv",
        _ => return None,
    };
    Some(e.into())
}

/// Percent-decodes a path segment (UTF-8); `None` when the result is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions_and_names() {
        let u = |s: &str| Url::parse(s).unwrap();
        assert_eq!(extension(&u("http://h/a/b.M4A?x=1")), Some("m4a".into()));
        assert_eq!(extension(&u("http://h/a/b")), None);
        assert_eq!(extension(&u("http://h/a/b.toolongext")), None);
        assert_eq!(ext_from_mime("audio/mpeg; charset=x"), Some("mp3".into()));
        assert_eq!(ext_from_mime("text/html"), None);
        assert_eq!(percent_decode("a%20b%F0%9F%8E%B5"), Some("a b🎵".into()));
        assert_eq!(percent_decode("100%"), Some("100%".into()));
        assert_eq!(percent_decode("%zz"), Some("%zz".into()));
        assert_eq!(percent_decode("%FF"), None);
    }
}
