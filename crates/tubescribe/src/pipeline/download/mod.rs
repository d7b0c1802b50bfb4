//! The download stage: gets the task's media into its directory and proves it holds audio
//! and is whole.
//!
//! YouTube videos go through yt-dlp (one subprocess per job, arguments built in [`ytdlp`]),
//! always as the canonical watch URL; allowed direct URLs are fetched by our own client
//! ([`direct`]), which keeps every redirect and DNS answer inside the allow-list; local files
//! are copied. Before any of this the filesystem must have the configured minimum free space,
//! otherwise the job pauses ([`super::wait_for_free_space`]). A download that gets no new
//! bytes for `[stages.download] no_progress_timeout_s` is stopped (yt-dlp killed) and fails as
//! retryable: `yt-dlp made no progress for N s …`.
//!
//! Success means: the program exited 0, the file exists, ffprobe finds an audio stream in it,
//! and it is whole (`inspect`: a WAV holds what its header declares; the audio packets, read
//! without decoding, reach the declared duration). Media that is not whole — here, or when the
//! transcribe stage's decode comes out short — is downloaded once more: `broken_media`
//! counts it in the download record (`detail.broken_downloads`) and the second one fails the
//! task for good (`…; downloaded twice`); a local file fails at once. The media lands in
//! `.tmp/` first and is renamed into the task directory as `<video id or "media">.<ext>`.

pub mod direct;
pub mod listing;
pub mod ytdlp;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{JobCtx, StageCtx, StageError, StageOutput};
use crate::domain::manifest::{Source, VideoInfo};
use crate::domain::options::CaptionsMode;
use crate::domain::{retry, Progress, Stage};
use crate::store::names;
use crate::tools::media;
use crate::tools::media::MediaError;
use crate::tools::process;
use crate::tools::process::Cmd;

/// The download record's detail key counting, in this run of the task, downloads whose media
/// turned out truncated or corrupt ([`broken_media`]); a retry of the task starts again at 0.
pub const BROKEN_DOWNLOADS: &str = "broken_downloads";

/// The download stage's result, read by the transcribe job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DownloadResult {
    /// Media file name inside the task directory.
    pub media: String,
    /// Duration in seconds, from ffprobe (or the extractor when ffprobe has none).
    pub duration_s: Option<f64>,
    /// Video metadata.
    pub video: VideoInfo,
    /// The video's own captions, fetched beside the media when the task asked for them
    /// (`options.captions` prefer/only) and the video has them in the wanted language.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub captions: Option<CaptionsFile>,
}

/// Captions the download stage kept (`captions.vtt` in the task directory).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptionsFile {
    /// File name inside the task directory ([`names::CAPTIONS_VTT`]).
    pub file: String,
    /// The captions' language as YouTube names it (`en`, `en-GB`).
    pub lang: String,
    /// `human` (made by people) or `auto` (YouTube's automatic captions).
    pub kind: String,
}

/// Runs the download stage for one job.
pub async fn run(ctx: &StageCtx, job: &JobCtx) -> Result<StageOutput, StageError> {
    let manifest = job.task.read_manifest()?;
    super::wait_for_free_space(job, ctx.cfg.min_free_bytes, "download").await?;
    let wants = match (&manifest.source, manifest.options.captions) {
        (Source::Youtube { .. }, CaptionsMode::Prefer | CaptionsMode::Only) => {
            Some(ytdlp::CaptionsRequest {
                lang: manifest.options.lang().to_string(),
                auto: manifest.options.auto_captions,
            })
        }
        _ => None,
    };
    let mut captions: Option<(std::path::PathBuf, CaptionsFile)> = None;
    let (tmp_media, mut video) = match &manifest.source {
        Source::File { path } => (
            copy_local(job, path).await?,
            VideoInfo {
                // A local file's name stands in for a title (kept only in the manifest).
                title: std::path::Path::new(path)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned()),
                ..VideoInfo::default()
            },
        ),
        Source::Youtube { video_id, url } => {
            let f = fetch(ctx, job, url, video_id, wants.clone()).await?;
            captions = f.captions;
            if captions.is_none() && manifest.options.captions == CaptionsMode::Only {
                let _ = std::fs::remove_file(&f.media);
                let kind = if manifest.options.auto_captions {
                    "captions"
                } else {
                    "human-made captions"
                };
                return Err(StageError::permanent(format!(
                    "the video has no {kind} in {} (captions: only); submit it with captions prefer or never to transcribe its audio",
                    manifest.options.lang()
                )));
            }
            (f.media, f.video)
        }
        Source::Url { url } => {
            let url = url::Url::parse(url)
                .map_err(|e| StageError::permanent(format!("invalid URL {url}: {e}")))?;
            // The submitter validated this URL against its allow-list; this worker may run
            // elsewhere with its own. Allowed here: the submitted host:port, plus this worker's
            // list (for redirects to other hosts).
            let mut allow_hosts = ctx.cfg.allow_hosts.clone();
            if let (Some(h), Some(port)) = (url.host_str(), url.port_or_known_default()) {
                allow_hosts.push(format!("{h}:{port}"));
            }
            let policy = crate::domain::input::InputPolicy {
                allow_hosts,
                remote: false,
            };
            let limit = ctx.cfg.policy(Stage::Download).no_progress_timeout;
            let f = direct::fetch(job, &policy, &url, limit).await?;
            (
                f.path,
                VideoInfo {
                    title: f.title,
                    ..VideoInfo::default()
                },
            )
        }
    };
    job.report(100.0, Some("checking media"));
    let info = match inspect(ctx, job, &tmp_media).await {
        Ok(i) => i,
        Err(bad) => {
            let _ = std::fs::remove_file(&tmp_media);
            return Err(match bad {
                Bad::Unusable(e) => e,
                Bad::Broken(e) => broken_media(job, &e),
            });
        }
    };
    let ext = tmp_media
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .filter(|e| !e.is_empty() && e.chars().all(|c| c.is_ascii_alphanumeric()))
        .unwrap_or_else(|| "bin".into());
    let stem = match &manifest.source {
        Source::Youtube { video_id, .. } => video_id.as_str(),
        _ => "media",
    };
    let name = format!("{stem}.{ext}");
    let mut outputs = vec![job.commit(&tmp_media, &name)?];
    let captions = match captions {
        Some((tmp, file)) => {
            outputs.push(job.commit(&tmp, &file.file)?);
            Some(file)
        }
        None => None,
    };
    let duration_s = info.duration_s.or(video.duration_s);
    video.duration_s = duration_s;
    let v2 = video.clone();
    job.task.update_manifest(move |m| m.video = Some(v2))?;
    let result = DownloadResult {
        media: name,
        duration_s,
        video,
        captions,
    };
    Ok(StageOutput {
        result: serde_json::to_value(&result).expect("serializable"),
        outputs,
        measure: Default::default(),
    })
}

/// Copies a local file into `.tmp/` (the original is never touched).
///
/// With shared storage the file was uploaded at submission ([`names::UPLOAD`]) and is
/// fetched from there: no worker reads the submitter's disk.
async fn copy_local(job: &JobCtx, path: &str) -> Result<std::path::PathBuf, StageError> {
    let src = if job.task.is_shared() {
        let t = job.task.clone();
        tokio::task::spawn_blocking(move || t.input(names::UPLOAD))
            .await
            .map_err(|e| StageError::permanent(format!("fetch panicked: {e}")))??
    } else {
        std::path::PathBuf::from(path)
    };
    if !src.is_file() {
        return Err(StageError::permanent(format!(
            "local file {path} does not exist (or is not a regular file)"
        )));
    }
    let ext = std::path::Path::new(path)
        .extension()
        .map(|e| e.to_string_lossy().into_owned())
        .unwrap_or_else(|| "bin".into());
    let tmp = job.task.tmp_file(&format!("media.{ext}"))?;
    job.report(0.0, Some("copying local file"));
    let t2 = tmp.clone();
    tokio::task::spawn_blocking(move || {
        std::fs::copy(&src, &t2)?;
        // The copy is ours: make it writable whatever the original's mode was.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&t2, std::fs::Permissions::from_mode(0o644))
    })
    .await
    .map_err(|e| StageError::permanent(format!("copy panicked: {e}")))?
    .map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        if crate::store::is_disk_full_io(&e) {
            StageError::retryable(format!(
                "disk full: no space left while copying {path}; the partial copy was removed"
            ))
        } else {
            StageError::permanent(format!("cannot copy {path}: {e}"))
        }
    })?;
    Ok(tmp)
}

/// What one yt-dlp run fetched, moved into `.tmp/`.
struct Fetched {
    /// The media file.
    media: std::path::PathBuf,
    /// The metadata yt-dlp printed.
    video: VideoInfo,
    /// The captions file (`.tmp/captions.vtt`) and its record, when asked for and found.
    captions: Option<(std::path::PathBuf, CaptionsFile)>,
}

/// Runs yt-dlp on `url`, streaming its progress into the job, and returns the downloaded
/// file (inside `.tmp/`), the metadata it printed and, when `captions` asks for them and the
/// video has them, its captions.
async fn fetch(
    ctx: &StageCtx,
    job: &JobCtx,
    url: &str,
    stem: &str,
    captions: Option<ytdlp::CaptionsRequest>,
) -> Result<Fetched, StageError> {
    let out_dir = job
        .task
        .tmp_dir()?
        .join(format!("dl-{}", std::process::id()));
    std::fs::create_dir_all(&out_dir)
        .map_err(|e| StageError::retryable(format!("cannot create {}: {e}", out_dir.display())))?;
    // Resolved now, before yt-dlp runs: what it may do to the directory cannot move the target.
    let out_dir_real = out_dir
        .canonicalize()
        .map_err(|e| StageError::retryable(format!("cannot resolve {}: {e}", out_dir.display())))?;
    let args = ytdlp::YtdlpArgs {
        url: url.to_string(),
        out_dir: out_dir.clone(),
        cache_dir: ctx.data.root().join("cache").join("yt-dlp"),
        file_stem: stem.to_string(),
        max_duration_s: None,
        socket_timeout_s: 20,
        // The PyPI `deno` package installs its binary beside yt-dlp in the same venv.
        js_runtime: ctx
            .cfg
            .programs
            .ytdlp
            .parent()
            .map(|d| d.join("deno"))
            .filter(|p| p.is_file()),
        retry_sleep_start: ytdlp::retry_sleep_start(retry::draw()),
        captions: captions.clone(),
    };
    let cmd = Cmd::new(&ctx.cfg.programs.ytdlp)
        .args(ytdlp::build_args(&args))
        .timeout(std::time::Duration::from_secs(6 * 3600));
    // Removes the run's directory and what is in it (`remove_dir_all` follows no symlinks).
    let cleanup = || {
        let _ = std::fs::remove_dir_all(&out_dir);
    };
    let Watched {
        out,
        meta,
        file,
        subs,
    } = match run_watched(ctx, job, &cmd, &out_dir).await {
        Ok(w) => w,
        Err(e) => {
            cleanup();
            return Err(e);
        }
    };
    if !out.success() {
        cleanup();
        let f = ytdlp::classify_failure_with_meta(
            out.code,
            &out.stderr_tail,
            meta.as_ref(),
            args.max_duration_s,
        );
        if f.ops_alert {
            tracing::error!(task = %job.task_id, code = %f.code, error = %f.reason, "yt-dlp failed because of our setup");
        }
        let se = StageError::new(f.class, f.user_message());
        return Err(match f.detail() {
            Some(d) => se.with_detail(d),
            None => se,
        });
    }
    let Some(path) = file else {
        cleanup();
        return Err(StageError::permanent(
            "yt-dlp exited 0 but produced no media file (nothing downloadable at this URL)",
        ));
    };
    // yt-dlp's output is not trusted with paths: only a regular file inside this run's `-P`
    // directory is moved (and so ever deleted); anything else is left where it is.
    let Some(path) = file_inside(&out_dir, &out_dir_real, &path) else {
        cleanup();
        tracing::error!(task = %job.task_id, path = ?path, "yt-dlp reported a file outside its output directory");
        return Err(StageError::permanent(format!(
            "yt-dlp reported an unexpected file path ({:?}); expected a regular file inside its output directory",
            path
        )));
    };
    // The captions file yt-dlp wrote beside the media (`<stem>.<lang>.vtt`), checked like it.
    let captions = match &captions {
        Some(req) => match pick_captions(&out_dir, &out_dir_real, stem, req, subs.as_deref()) {
            Some((p, file)) => {
                let tmp = job.task.tmp_file(names::CAPTIONS_VTT)?;
                std::fs::rename(&p, &tmp).map_err(|e| {
                    cleanup();
                    StageError::retryable(format!("cannot move the captions: {e}"))
                })?;
                Some((tmp, file))
            }
            None => None,
        },
        None => None,
    };
    // Move the file out of the per-run directory so the directory can go.
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().into_owned())
        .unwrap_or_else(|| "bin".into());
    let tmp = job.task.tmp_file(&format!("media.{ext}"))?;
    if let Err(e) = std::fs::rename(&path, &tmp) {
        // Only the run's directory goes (not following symlinks), never a named file.
        cleanup();
        return Err(StageError::retryable(format!("cannot move download: {e}")));
    }
    let _ = std::fs::remove_dir_all(&out_dir);
    let video = meta
        .map(|m| VideoInfo {
            id: m.id,
            title: m.title,
            duration_s: m.duration_s,
            channel: m.channel.or(m.uploader),
            chapters: m.chapters,
        })
        .unwrap_or_default();
    Ok(Fetched {
        media: tmp,
        video,
        captions,
    })
}

/// The captions file a run left in `out_dir` for `req`: `<stem>.<lang>.vtt` whose language is
/// the one asked for (preferred) or a regional variant of it (`en-GB` for `en`), a regular
/// file inside the directory ([`file_inside`]). `human` names the video's human-made captions
/// (yt-dlp's `SUBS` line); without automatic captions asked for every file is human-made.
fn pick_captions(
    out_dir: &std::path::Path,
    out_dir_real: &std::path::Path,
    stem: &str,
    req: &ytdlp::CaptionsRequest,
    human: Option<&[String]>,
) -> Option<(std::path::PathBuf, CaptionsFile)> {
    let prefix = format!("{}.", ytdlp::safe_stem(stem));
    let want = req.lang.to_ascii_lowercase();
    let mut found: Vec<(bool, String, std::path::PathBuf)> = std::fs::read_dir(out_dir)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let lang = name
                .strip_prefix(&prefix)?
                .strip_suffix(".vtt")?
                .to_string();
            let l = lang.to_ascii_lowercase();
            (l == want || l.starts_with(&format!("{want}-"))).then(|| (l != want, lang, e.path()))
        })
        .collect();
    found.sort();
    let (_, lang, path) = found.into_iter().next()?;
    let path = file_inside(out_dir, out_dir_real, &path)?;
    let is_human = !req.auto || human.is_some_and(|h| h.contains(&lang));
    Some((
        path,
        CaptionsFile {
            file: names::CAPTIONS_VTT.to_string(),
            lang,
            kind: if is_human { "human" } else { "auto" }.to_string(),
        },
    ))
}

/// What a yt-dlp run left: its exit, and the metadata, file and captions languages it
/// printed.
struct Watched {
    out: process::Output,
    meta: Option<ytdlp::VideoMeta>,
    file: Option<std::path::PathBuf>,
    subs: Option<Vec<String>>,
}

/// Runs yt-dlp's `cmd` writing into `out_dir`, streaming its progress into the job, and kills
/// it when it makes no progress for the download policy's `no_progress_timeout`.
///
/// # Errors
/// Retryable "made no progress" when killed for that; the program's spawn/run error.
async fn run_watched(
    ctx: &StageCtx,
    job: &JobCtx,
    cmd: &Cmd,
    out_dir: &std::path::Path,
) -> Result<Watched, StageError> {
    let mut meta: Option<ytdlp::VideoMeta> = None;
    let mut file: Option<std::path::PathBuf> = None;
    let mut subs: Option<Vec<String>> = None;
    job.report(0.0, Some("starting yt-dlp"));
    let progress = job.progress.clone();
    // What counts as progress: bytes in the run's directory (`.part` files, fragments, a
    // remux), the bytes yt-dlp reports, and the lines saying it moved on (metadata, file).
    let (reported, steps) = (AtomicU64::new(0), AtomicU64::new(0));
    let stop = job.cancel.child_token();
    let mut on_line = |line: &str| match ytdlp::parse_stdout_line(line) {
        ytdlp::YtdlpLine::Meta(m) => {
            steps.fetch_add(1, Ordering::Relaxed);
            meta = Some(m)
        }
        ytdlp::YtdlpLine::File(p) => {
            steps.fetch_add(1, Ordering::Relaxed);
            file = Some(p)
        }
        ytdlp::YtdlpLine::Progress(p) => {
            if let Some(b) = p.downloaded_bytes {
                reported.store(b.max(0.0) as u64, Ordering::Relaxed);
            }
            let percent = p.percent.unwrap_or(0.0);
            progress.send_modify(|cur| {
                *cur = Progress {
                    percent: percent.clamp(0.0, 100.0),
                    bytes: p.downloaded_bytes.map(|b| b.max(0.0) as u64),
                    total_bytes: p.total_bytes.map(|b| b.max(0.0) as u64),
                    speed_bps: p.speed_bytes_per_s,
                    eta_s: p.eta_s,
                    phase: Some("downloading".into()),
                }
            });
        }
        ytdlp::YtdlpLine::Subs(langs) => subs = Some(langs),
        ytdlp::YtdlpLine::Other(_) => {}
    };
    let limit = ctx.cfg.policy(Stage::Download).no_progress_timeout;
    let mark = || {
        (
            dir_bytes(out_dir),
            reported.load(Ordering::Relaxed),
            steps.load(Ordering::Relaxed),
        )
    };
    let (res, stalled) = {
        let run = process::run(cmd, &stop, &mut on_line);
        tokio::pin!(run);
        tokio::select! {
            r = &mut run => (r, false),
            () = no_progress(limit, mark) => {
                // Killed like a cancel: the whole process group, reaped before `run` returns.
                stop.cancel();
                (run.await, true)
            }
        }
    };
    if let (true, Some(limit)) = (stalled && !job.cancel.is_cancelled(), limit) {
        tracing::warn!(task = %job.task_id, limit_s = limit.as_secs_f64(), "yt-dlp made no progress; killed");
        return Err(StageError::retryable(format!(
            "yt-dlp made no progress for {} s (no new data) and was killed",
            limit.as_secs_f64()
        )));
    }
    let out = res?;
    Ok(Watched {
        out,
        meta,
        file,
        subs,
    })
}

/// Returns `path` resolved when it names a regular file (not a symlink, no other hard link)
/// directly inside `dir`, and `dir` is still the real directory `dir_real` (resolved before
/// the program ran, so replacing `dir` or a parent with a symlink cannot widen the check; `..`
/// is resolved too); `None` otherwise.
fn file_inside(
    dir: &std::path::Path,
    dir_real: &std::path::Path,
    path: &std::path::Path,
) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let dir_meta = std::fs::symlink_metadata(dir).ok()?;
    if !dir_meta.file_type().is_dir() || dir.canonicalize().ok()? != dir_real {
        return None;
    }
    let meta = std::fs::symlink_metadata(path).ok()?;
    if !meta.file_type().is_file() || meta.nlink() != 1 {
        return None;
    }
    let real = path.canonicalize().ok()?;
    (real.parent() == Some(dir_real)).then_some(real)
}

/// Total size in bytes of the regular files directly inside `dir` (0 when unreadable).
fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

/// Ends when `mark()` (any measure of progress: bytes, lines) has not changed for `limit`,
/// looking every quarter of it (at most every second); never ends when `limit` is `None`.
async fn no_progress<M: PartialEq>(limit: Option<Duration>, mut mark: impl FnMut() -> M) {
    let Some(limit) = limit else {
        return std::future::pending().await;
    };
    let tick = (limit / 4).clamp(Duration::from_millis(20), Duration::from_secs(1));
    let (mut last, mut since) = (mark(), Instant::now());
    loop {
        tokio::time::sleep(tick).await;
        let now = mark();
        if now != last {
            (last, since) = (now, Instant::now());
        } else if since.elapsed() >= limit {
            return;
        }
    }
}

/// Why fetched media was refused.
enum Bad {
    /// Not usable (empty, unreadable, no audio): fetching it again would not help. The
    /// stage's error.
    Unusable(StageError),
    /// Not whole (truncated, corrupt): fetching it again may help ([`broken_media`]).
    Broken(MediaError),
}

impl From<StageError> for Bad {
    fn from(e: StageError) -> Self {
        Bad::Unusable(e)
    }
}

impl From<process::ProcessError> for Bad {
    fn from(e: process::ProcessError) -> Self {
        Bad::Unusable(e.into())
    }
}

/// Inspects the fetched file at `path`: ffprobe must read it and find an audio stream, and it
/// must be whole — a WAV holds the audio its header declares ([`media::check_wav`]), and the
/// audio packets, read to the end without decoding ([`media::audio_packets_args`]), reach the
/// duration the file declares ([`media::check_length`]; skipped when it declares none). The
/// cost is one read of the file (≈ 0.1 s for 10 min of AAC, against ≈ 0.4 s for the decode
/// that would find it later).
async fn inspect(
    ctx: &StageCtx,
    job: &JobCtx,
    path: &std::path::Path,
) -> Result<media::MediaInfo, Bad> {
    let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    if len == 0 {
        return Err(StageError::permanent("the media file is empty (0 bytes)").into());
    }
    let cmd = Cmd::new(&ctx.cfg.programs.ffprobe)
        .args(media::ffprobe_args(path))
        .timeout(Duration::from_secs(120));
    let (out, stdout) = process::run_collect(&cmd, &job.cancel).await?;
    if !out.success() {
        if media::missing_index(&out.stderr_tail) {
            return Err(Bad::Broken(MediaError::MissingIndex));
        }
        // ffprobe names our temp path first; the user knows the file by its input.
        let line = out.last_stderr_line();
        let shown = path.display().to_string();
        let line = line
            .strip_prefix(shown.as_str())
            .map(|l| l.trim_start_matches(':').trim_start())
            .unwrap_or(line);
        return Err(StageError::permanent(format!(
            "the media file is unreadable (ffprobe: {line})"
        ))
        .into());
    }
    let info = media::parse_ffprobe(&stdout).map_err(|e| StageError::permanent(e.to_string()))?;
    info.require_audio()
        .map_err(|e| StageError::permanent(e.to_string()))?;
    let mut head = vec![0u8; 64 * 1024];
    let n = std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read(&mut f, &mut head))
        .unwrap_or(0);
    media::check_wav(&head[..n], len).map_err(Bad::Broken)?;
    let Some(declared_s) = info.duration_s else {
        return Ok(info);
    };
    let cmd = Cmd::new(&ctx.cfg.programs.ffmpeg)
        .args(media::audio_packets_args(path))
        .timeout(Duration::from_secs(600));
    let mut end_s = 0.0f64;
    let out = process::run(&cmd, &job.cancel, &mut |line: &str| {
        if let Some(t) = media::parse_ffmpeg_progress_line(line).and_then(|p| p.out_time_s) {
            end_s = end_s.max(t);
        }
    })
    .await?;
    if out.signal().is_some() {
        // A crash says nothing about the file: another attempt may pass.
        process::ensure_success(&out, "ffmpeg (reading the audio packets)")?;
    }
    if !out.success() {
        return Err(Bad::Broken(MediaError::Corrupt(
            out.last_stderr_line().to_string(),
        )));
    }
    media::check_length(declared_s, end_s).map_err(Bad::Broken)?;
    Ok(info)
}

/// The stage error for media found not whole (`e`) by `job` — the download stage's own check,
/// or the transcribe stage's decode ([`media::check_length`]). Recorded in the manifest under
/// its lock (fenced: a stale attempt gets [`StageError::superseded`]):
///
/// * found after the download: the download record is invalidated
///   ([`Manifest::invalidate_outputs`](crate::domain::manifest::Manifest::invalidate_outputs)),
///   so the next run of the task downloads again instead of reusing the file;
/// * a local file: permanent, `the media file is truncated: …`;
/// * otherwise the run's count of broken downloads ([`BROKEN_DOWNLOADS`]) goes up: the first
///   fails the download attempt as retryable (`the downloaded media is truncated: …;
///   downloading it once more`) — or, found by the transcribe stage, permanently (`…; retrying
///   the task downloads it again`); the second is permanent (`…; downloaded twice`).
pub(crate) fn broken_media(job: &JobCtx, e: &MediaError) -> StageError {
    let recorded = job.task.modify_manifest(|m| {
        if !m.is_current_attempt(job.stage, job.attempt) {
            return None;
        }
        let local = matches!(m.source, Source::File { .. });
        let sentence = e.describe(if local {
            "the media file"
        } else {
            "the downloaded media"
        });
        let found_later = job.stage != Stage::Download;
        if found_later {
            m.invalidate_outputs(Stage::Download, &sentence);
        }
        if local {
            return Some(StageError::permanent(sentence));
        }
        let detail = &mut m.stage_mut(Stage::Download).detail;
        let n = detail
            .get(BROKEN_DOWNLOADS)
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0)
            + 1;
        detail.insert(BROKEN_DOWNLOADS.into(), serde_json::json!(n));
        Some(match (n, found_later) {
            (2.., _) => StageError::permanent(format!("{sentence}; downloaded twice")),
            (_, false) => StageError::retryable(format!("{sentence}; downloading it once more")),
            (_, true) => {
                StageError::permanent(format!("{sentence}; retrying the task downloads it again"))
            }
        })
    });
    match recorded {
        Ok(Some(err)) => {
            tracing::warn!(task = %job.task_id, stage = %job.stage, error = %err.message, "media is not whole");
            err
        }
        Ok(None) => StageError::superseded(),
        Err(store) => store.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn no_progress_waits_for_the_limit_after_the_last_change() {
        let limit = Duration::from_millis(200);
        let t0 = Instant::now();
        // The mark changes for 0.5 s, then stays.
        no_progress(Some(limit), || t0.elapsed().min(Duration::from_millis(500))).await;
        let waited = t0.elapsed();
        assert!(waited >= Duration::from_millis(700), "{waited:?}");
        let none = tokio::time::timeout(limit * 2, no_progress(None, || 0)).await;
        assert!(none.is_err(), "no limit: never ends");
    }
}
