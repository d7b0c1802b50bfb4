//! The download stage: gets the task's media into its directory and proves it holds audio.
//!
//! YouTube videos go through yt-dlp (one subprocess per job, arguments built in [`ytdlp`]),
//! always as the canonical watch URL; allowed direct URLs are fetched by our own client
//! ([`direct`]), which keeps every redirect and DNS answer inside the allow-list; local files
//! are copied. Before any of this the filesystem must have the configured minimum free space,
//! otherwise the job pauses ([`super::wait_for_free_space`]). Success means: the program exited 0, the file
//! exists, and ffprobe finds an audio stream in it. The media lands in `.tmp/` first and is
//! renamed into the task directory as `<video id or "media">.<ext>`.

pub mod direct;
pub mod ytdlp;

use serde::{Deserialize, Serialize};

use super::{JobCtx, StageCtx, StageError, StageOutput};
use crate::domain::manifest::{Source, VideoInfo};
use crate::domain::Progress;
use crate::tools::media;
use crate::tools::process;
use crate::tools::process::Cmd;

/// The download stage's result, read by the transcribe job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DownloadResult {
    /// Media file name inside the task directory.
    pub media: String,
    /// Duration in seconds, from ffprobe (or the extractor when ffprobe has none).
    pub duration_s: Option<f64>,
    /// Video metadata.
    pub video: VideoInfo,
}

/// Runs the download stage for one job.
pub async fn run(ctx: &StageCtx, job: &JobCtx) -> Result<StageOutput, StageError> {
    let manifest = job.task.read_manifest()?;
    super::wait_for_free_space(job, ctx.cfg.min_free_bytes, "download").await?;
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
        Source::Youtube { video_id, url } => fetch(ctx, job, url, video_id).await?,
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
            let f = direct::fetch(job, &policy, &url).await?;
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
    let info = probe(ctx, job, &tmp_media).await;
    let info = match info {
        Ok(i) => i,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp_media);
            return Err(e);
        }
    };
    if info.audio_streams.is_empty() {
        let _ = std::fs::remove_file(&tmp_media);
        return Err(StageError::permanent(
            media::MediaError::NoAudioStream.to_string(),
        ));
    }
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
    let out = job.commit(&tmp_media, &name)?;
    let duration_s = info.duration_s.or(video.duration_s);
    video.duration_s = duration_s;
    let v2 = video.clone();
    job.task.update_manifest(move |m| m.video = Some(v2))?;
    let result = DownloadResult {
        media: name,
        duration_s,
        video,
    };
    Ok(StageOutput {
        result: serde_json::to_value(&result).expect("serializable"),
        outputs: vec![out],
        measure: Default::default(),
    })
}

/// Copies a local file into `.tmp/` (the original is never touched).
async fn copy_local(job: &JobCtx, path: &str) -> Result<std::path::PathBuf, StageError> {
    let src = std::path::PathBuf::from(path);
    if !src.is_file() {
        return Err(StageError::permanent(format!(
            "local file {path} does not exist (or is not a regular file)"
        )));
    }
    let ext = src
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

/// Runs yt-dlp on `url`, streaming its progress into the job, and returns the downloaded
/// file (inside `.tmp/`) and the metadata it printed.
async fn fetch(
    ctx: &StageCtx,
    job: &JobCtx,
    url: &str,
    stem: &str,
) -> Result<(std::path::PathBuf, VideoInfo), StageError> {
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
    };
    let cmd = Cmd::new(&ctx.cfg.programs.ytdlp)
        .args(ytdlp::build_args(&args))
        .timeout(std::time::Duration::from_secs(6 * 3600));
    let mut meta: Option<ytdlp::VideoMeta> = None;
    let mut file: Option<std::path::PathBuf> = None;
    job.report(0.0, Some("starting yt-dlp"));
    let progress = job.progress.clone();
    let res = process::run(
        &cmd,
        &job.cancel,
        &mut |line: &str| match ytdlp::parse_stdout_line(line) {
            ytdlp::YtdlpLine::Meta(m) => meta = Some(m),
            ytdlp::YtdlpLine::File(p) => file = Some(p),
            ytdlp::YtdlpLine::Progress(p) => {
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
            ytdlp::YtdlpLine::Other(_) => {}
        },
    )
    .await;
    // Removes the run's directory and what is in it (`remove_dir_all` follows no symlinks).
    let cleanup = || {
        let _ = std::fs::remove_dir_all(&out_dir);
    };
    let out = match res {
        Ok(o) => o,
        Err(e) => {
            cleanup();
            return Err(e.into());
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
    Ok((tmp, video))
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

/// Runs ffprobe on `path`.
pub(crate) async fn probe(
    ctx: &StageCtx,
    job: &JobCtx,
    path: &std::path::Path,
) -> Result<media::MediaInfo, StageError> {
    let cmd = Cmd::new(&ctx.cfg.programs.ffprobe)
        .args(media::ffprobe_args(path))
        .timeout(std::time::Duration::from_secs(120));
    let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    if len == 0 {
        return Err(StageError::permanent("the media file is empty (0 bytes)"));
    }
    let (out, stdout) = process::run_collect(&cmd, &job.cancel).await?;
    if !out.success() {
        // ffprobe names our temp path first; the user knows the file by its input.
        let line = out.last_stderr_line();
        let shown = path.display().to_string();
        let line = line
            .strip_prefix(shown.as_str())
            .map(|l| l.trim_start_matches(':').trim_start())
            .unwrap_or(line);
        return Err(StageError::permanent(format!(
            "the media file is unreadable (ffprobe: {line})"
        )));
    }
    let info = media::parse_ffprobe(&stdout).map_err(|e| StageError::permanent(e.to_string()))?;
    // A WAV cut short still probes and decodes (ffmpeg reads what is there), so compare the
    // header's declared data size with what the file holds.
    let mut head = vec![0u8; 64 * 1024];
    let n = std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read(&mut f, &mut head))
        .unwrap_or(0);
    if let Some((declared, present)) = media::wav_data_sizes(&head[..n], len) {
        if present + present / 100 < declared {
            return Err(StageError::permanent(format!(
                "the WAV file is truncated: its header declares {declared} bytes of audio but it holds {present}"
            )));
        }
    }
    Ok(info)
}
