//! The data directory layout: the only code that knows paths on disk.
//!
//! ```text
//! <data>/
//!   tasks/<task-id>/
//!     manifest.json        written by every stage (temp + rename, under manifest.lock)
//!     restart.lock         held while a failed or cancelled task is reset to run again
//!     <stem>.<ext>         downloaded media; <stem> is the video id or "media", never a title
//!     captions.vtt         the video's own captions (options.captions prefer/only)
//!     audio.wav            16 kHz mono PCM
//!     transcript.{json,txt,srt,vtt}
//!     summary.{md,json}
//!     .tmp/                temp files of running stages (renamed into place on success)
//!   uploads/<sha256>/<name> media uploaded over HTTP, by content (the first name it came with)
//!   uploads/.tmp/          uploads being received (renamed into place when complete)
//!   batches/<batch-id>.json  a playlist or channel expanded into tasks (`expand`)
//!   models/                ggml Whisper models
//!   redis/                 embedded redis-server: socket, AOF, pid and log
//! ```
//! Every file a stage produces is first written under `.tmp/` and renamed into the task
//! directory only when complete, so a crash or failure never leaves a partial output.
//!
//! Two artifact stores sit behind [`DataDir`] and [`TaskDir`]: the local directory above
//! (the default; `tasks/` may live elsewhere with `storage_url = file:///path`), and shared
//! storage for many machines ([`remote`]: S3-compatible objects plus records in Redis), where
//! the task directory is this process's own scratch: inputs are fetched into it on demand
//! ([`TaskDir::input`]), outputs are uploaded at the commit and kept there only while a job of
//! the task runs ([`TaskDir::scratch`]).

pub mod remote;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::domain::manifest::{now_ms, Manifest, OutputFile, PruneKind, PrunedFile};
use remote::{Held, Remote};

/// Errors of the task directory. IO errors are retryable unless the disk is full.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An IO error on `path`.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The task has no manifest (unknown task id).
    #[error("task {0} not found")]
    NotFound(String),
    /// The manifest is not valid JSON for our schema.
    #[error("corrupt manifest {path}: {message}")]
    Corrupt {
        /// The manifest file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// Shared storage (object store or record backend) failed or is unreachable.
    #[error("{op} {what}: {message}")]
    Remote {
        /// What was being done.
        op: &'static str,
        /// The object key, record or bucket.
        what: String,
        /// The client's message.
        message: String,
    },
}

impl StoreError {
    /// True when the underlying error is ENOSPC or EDQUOT ("disk full").
    pub fn is_disk_full(&self) -> bool {
        matches!(self, StoreError::Io { source, .. } if is_disk_full_io(source))
    }
}

/// True when `e` is ENOSPC ("No space left on device") or EDQUOT (quota exceeded), which
/// stages report as `disk full`.
pub fn is_disk_full_io(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The data directory root, and where its tasks live.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
    /// `<tasks root>/tasks`: the task directories (with shared storage: scratch).
    tasks: PathBuf,
    remote: Option<Arc<Remote>>,
}

impl DataDir {
    /// Opens (creating if needed) the data directory at `root`, tasks in `root/tasks`.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        for d in [root.to_path_buf(), root.join("tasks")] {
            fs::create_dir_all(&d).map_err(io("create directory", &d))?;
        }
        Ok(Self {
            root: root.to_path_buf(),
            tasks: root.join("tasks"),
            remote: None,
        })
    }

    /// Keeps the tasks in `<dir>/tasks` instead (`storage_url = file:///dir`), created if
    /// needed.
    pub fn with_tasks_in(mut self, dir: &Path) -> Result<Self, StoreError> {
        let t = dir.join("tasks");
        fs::create_dir_all(&t).map_err(io("create directory", &t))?;
        self.tasks = t;
        Ok(self)
    }

    /// Keeps the tasks in shared storage: records in `remote.records`, outputs in
    /// `remote.objects`; `<data>/tasks/` becomes this process's scratch.
    pub fn with_remote(mut self, remote: Remote) -> Self {
        self.remote = Some(Arc::new(remote));
        self
    }

    /// True when tasks live in shared storage (no shared filesystem).
    pub fn is_shared(&self) -> bool {
        self.remote.is_some()
    }

    /// The root path.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Directory of the embedded redis-server (socket, AOF, log).
    pub fn redis_dir(&self) -> PathBuf {
        self.root.join("redis")
    }

    /// Directory of installed models.
    pub fn models_dir(&self) -> PathBuf {
        self.root.join("models")
    }

    /// Scratch directory of one `tubescribe bench` run (`<data>/bench/<run>`; the caller
    /// removes it).
    pub fn bench_dir(&self, run: &str) -> PathBuf {
        self.root.join("bench").join(run)
    }

    /// The measured per-job memory of the model at `model` (`budget.rs`), kept in the models
    /// directory as `<model file name>.rss.json` (the directory is created on demand).
    pub fn model_stats_file(&self, model: &Path) -> PathBuf {
        let d = self.models_dir();
        let _ = fs::create_dir_all(&d);
        let name = model
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into());
        d.join(format!("{name}.rss.json"))
    }

    /// The task directory of `task_id` (not created; see [`TaskDir::create`]).
    pub fn task(&self, task_id: &str) -> TaskDir {
        TaskDir {
            root: self.tasks.join(task_id),
            id: task_id.to_string(),
            remote: self.remote.clone(),
        }
    }

    /// Removes what deletes interrupted by a crash left (hidden `.deleting-*` directories, see
    /// [`TaskDir::delete`]) and older than a minute (a delete in progress renames and removes
    /// within that). Returns how many it removed.
    pub fn sweep_deleted(&self) -> usize {
        let dir = self.root.join("tasks");
        let Ok(entries) = fs::read_dir(&dir) else {
            return 0;
        };
        // The name ends in the time the delete began (ms since the epoch).
        let old = |e: &fs::DirEntry| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix(".deleting-")
                .and_then(|rest| rest.rsplit('-').next()?.parse::<u64>().ok())
                .is_some_and(|began| now_ms().saturating_sub(began) >= 60_000)
        };
        entries
            .flatten()
            .filter(|e| old(e) && fs::remove_dir_all(e.path()).is_ok())
            .count()
    }

    /// Writes the batch record `b` as `batches/<id>.json` (atomically: temp file + rename;
    /// the directory is created on demand).
    pub fn write_batch(&self, b: &crate::domain::options::Batch) -> Result<(), StoreError> {
        let dir = self.root.join("batches");
        fs::create_dir_all(&dir).map_err(io("create directory", &dir))?;
        let path = dir.join(format!("{}.json", b.batch_id));
        let tmp = dir.join(format!(".{}.json.tmp", b.batch_id));
        let body = serde_json::to_vec_pretty(b).expect("a batch serializes");
        fs::write(&tmp, body).map_err(io("write", &tmp))?;
        fs::rename(&tmp, &path).map_err(io("rename", &path))
    }

    /// The batch record `batch_id` (a valid id, [`crate::domain::options::valid_batch_id`]),
    /// `None` when there is none.
    pub fn read_batch(
        &self,
        batch_id: &str,
    ) -> Result<Option<crate::domain::options::Batch>, StoreError> {
        let path = self.root.join("batches").join(format!("{batch_id}.json"));
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("read", &path)(e)),
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                path,
                message: e.to_string(),
            })
    }

    /// Ids of all tasks that have a manifest (a record), sorted.
    pub fn task_ids(&self) -> Result<Vec<String>, StoreError> {
        if let Some(r) = &self.remote {
            return r.records.ids();
        }
        let dir = self.tasks.clone();
        let mut ids = Vec::new();
        for e in fs::read_dir(&dir).map_err(io("list", &dir))? {
            let e = e.map_err(io("list", &dir))?;
            // A directory being deleted ([`TaskDir::delete`]) is no task.
            if e.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            if e.path().join(names::MANIFEST).exists() {
                ids.push(e.file_name().to_string_lossy().into_owned());
            }
        }
        ids.sort();
        Ok(ids)
    }
}

impl DataDir {
    /// Starts receiving an upload: a temp file under `<data>/uploads/.tmp/`, written chunk by
    /// chunk ([`UploadSink::write`]) and hashed on the way, never held whole in memory. This is
    /// the one way media enters the data directory over HTTP (the seam for other stores).
    ///
    /// Errors: IO creating the directory or the file.
    pub async fn begin_upload(&self) -> Result<UploadSink, StoreError> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = self.root.join("uploads").join(".tmp");
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(io("create directory", &dir))?;
        let n = N.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!("{}.{n}.part", std::process::id()));
        let file = tokio::fs::File::create(&tmp)
            .await
            .map_err(io("create", &tmp))?;
        Ok(UploadSink {
            file: Some(file),
            uploads: self.root.join("uploads"),
            tmp,
            hasher: Sha256::new(),
            size: 0,
        })
    }
}

/// An upload being received ([`DataDir::begin_upload`]). Dropped without a successful
/// [`UploadSink::finish`], its temp file is removed.
#[derive(Debug)]
pub struct UploadSink {
    file: Option<tokio::fs::File>,
    uploads: PathBuf,
    tmp: PathBuf,
    hasher: Sha256,
    size: u64,
}

/// An upload kept by the store ([`UploadSink::finish`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredUpload {
    /// Lowercase hex SHA-256 of the bytes.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// Where the bytes are: `<data>/uploads/<sha256>/<name>`.
    pub path: PathBuf,
}

impl UploadSink {
    /// Appends `chunk`. Errors: IO (ENOSPC: [`StoreError::is_disk_full`]).
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), StoreError> {
        use tokio::io::AsyncWriteExt;
        let f = self.file.as_mut().expect("open until finished");
        f.write_all(chunk).await.map_err(io("write", &self.tmp))?;
        self.hasher.update(chunk);
        self.size += chunk.len() as u64;
        Ok(())
    }

    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Completes the upload: flushed to disk and kept at `<data>/uploads/<sha256>/<name>`,
    /// where `name` is `client_name` reduced to `[A-Za-z0-9._-]` (at most 100 characters,
    /// never starting with a dot; `upload` when nothing is left). When these bytes were
    /// uploaded before, the file kept then is returned and this copy is dropped, so equal
    /// content is stored once and keeps its first name.
    ///
    /// Errors: IO.
    pub async fn finish(mut self, client_name: &str) -> Result<StoredUpload, StoreError> {
        use tokio::io::AsyncWriteExt;
        let mut f = self.file.take().expect("open until finished");
        f.flush().await.map_err(io("write", &self.tmp))?;
        f.sync_all().await.map_err(io("sync", &self.tmp))?;
        drop(f);
        let sha256 = hex::encode(std::mem::take(&mut self.hasher).finalize());
        let dir = self.uploads.join(&sha256);
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(io("create directory", &dir))?;
        let existing = fs::read_dir(&dir)
            .map_err(io("list", &dir))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.is_file());
        let path = match existing {
            Some(p) => {
                let _ = tokio::fs::remove_file(&self.tmp).await;
                p
            }
            None => {
                let p = dir.join(upload_name(client_name));
                tokio::fs::rename(&self.tmp, &p)
                    .await
                    .map_err(io("rename", &self.tmp))?;
                p
            }
        };
        Ok(StoredUpload {
            sha256,
            size: self.size,
            path,
        })
    }
}

impl Drop for UploadSink {
    fn drop(&mut self) {
        // After `finish` renamed it there is nothing left to remove.
        let _ = fs::remove_file(&self.tmp);
    }
}

/// The file name an upload is kept under: `client` reduced to `[A-Za-z0-9._-]` (other
/// characters become `_`, path separators end the directory part), at most 100 characters,
/// no leading dot; `upload` when nothing is left.
fn upload_name(client: &str) -> String {
    let base = client.rsplit(['/', '\\']).next().unwrap_or("");
    let mut name: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect();
    while name.starts_with('.') {
        name.remove(0);
    }
    if name.is_empty() {
        "upload".into()
    } else {
        name
    }
}

/// Output files every task may have, by role. The names are fixed; only the media file's stem
/// varies (video id or "media").
pub mod names {
    /// The manifest.
    pub const MANIFEST: &str = "manifest.json";
    /// 16 kHz mono PCM WAV.
    pub const AUDIO_WAV: &str = "audio.wav";
    /// Transcript, JSON (segments, language, model).
    pub const TRANSCRIPT_JSON: &str = "transcript.json";
    /// Transcript, plain text.
    pub const TRANSCRIPT_TXT: &str = "transcript.txt";
    /// Transcript, SubRip.
    pub const TRANSCRIPT_SRT: &str = "transcript.srt";
    /// Transcript, WebVTT.
    pub const TRANSCRIPT_VTT: &str = "transcript.vtt";
    /// The video's own captions (WebVTT, as YouTube serves them), kept by the download stage
    /// when the task asked for captions.
    pub const CAPTIONS_VTT: &str = "captions.vtt";
    /// Summary, Markdown.
    pub const SUMMARY_MD: &str = "summary.md";
    /// Summary, JSON.
    pub const SUMMARY_JSON: &str = "summary.json";
    /// With shared storage: a local file given to `process`, uploaded at submission.
    pub const UPLOAD: &str = "upload";
}

/// An output's size in bytes and its content as chunks ([`TaskDir::output_stream`]).
pub type OutputStream = (
    u64,
    futures::stream::BoxStream<'static, Result<bytes::Bytes, StoreError>>,
);

/// How long a record lock outlives a holder that died (kill -9) before others may take it.
const MANIFEST_LOCK_TTL: Duration = Duration::from_secs(30);
/// Like [`MANIFEST_LOCK_TTL`] for the restart lock, held while old jobs are removed.
const RESTART_LOCK_TTL: Duration = Duration::from_secs(90);

/// One task's directory (with shared storage: its scratch directory, its record and its
/// objects).
#[derive(Debug, Clone)]
pub struct TaskDir {
    root: PathBuf,
    id: String,
    remote: Option<Arc<Remote>>,
}

/// Scratch directories in use by this process's jobs, with how many jobs use each.
fn scratch_users() -> &'static std::sync::Mutex<std::collections::HashMap<PathBuf, usize>> {
    static USERS: std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<PathBuf, usize>>> =
        std::sync::OnceLock::new();
    USERS.get_or_init(Default::default)
}

/// A job's use of its task's scratch directory ([`TaskDir::scratch`]); with shared storage
/// the directory is removed when the last job of the task in this process drops its guard.
#[derive(Debug)]
pub struct Scratch {
    root: Option<PathBuf>,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let Some(root) = self.root.take() else { return };
        let mut users = scratch_users().lock().unwrap_or_else(|e| e.into_inner());
        let n = users.get_mut(&root).map(|n| {
            *n -= 1;
            *n
        });
        if n == Some(0) {
            users.remove(&root);
            let _ = fs::remove_dir_all(&root);
        }
    }
}

impl TaskDir {
    /// The directory path (with shared storage: this process's scratch for the task).
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// With shared storage, the `s3://` URL of the task's object `name` (`""`: of its
    /// folder, ending in `/`); `None` with the local directory.
    pub fn object_url(&self, name: &str) -> Option<String> {
        let r = self.remote.as_ref()?;
        Some(format!("{}/{}/{name}", r.objects.url(), self.id))
    }

    /// True when the task lives in shared storage ([`remote`]).
    pub fn is_shared(&self) -> bool {
        self.remote.is_some()
    }

    /// Whether progress ticks are written into the task record: with the local directory
    /// yes; with shared storage no (they travel in BullMQ's job progress and events only).
    pub fn records_progress(&self) -> bool {
        self.remote.is_none()
    }

    /// Marks the scratch directory in use by one job until the guard drops. With shared
    /// storage the last guard of the task in this process removes the directory (inputs
    /// fetched and outputs kept there), so a worker keeps nothing once its jobs end; jobs of
    /// one task running together share what was fetched (a segment job's `audio.wav`).
    pub fn scratch(&self) -> Scratch {
        if self.remote.is_none() {
            return Scratch { root: None };
        }
        let mut users = scratch_users().lock().unwrap_or_else(|e| e.into_inner());
        *users.entry(self.root.clone()).or_default() += 1;
        Scratch {
            root: Some(self.root.clone()),
        }
    }

    /// The local path of input `name` (an output of an earlier stage): with shared storage
    /// it is fetched into the scratch directory first unless it is there already.
    ///
    /// # Errors
    /// [`StoreError::NotFound`]-free: a missing object leaves no file (the caller's check of
    /// the path reports it); transfer and IO errors.
    pub fn input(&self, name: &str) -> Result<PathBuf, StoreError> {
        let p = self.file(name);
        let Some(r) = &self.remote else {
            return Ok(p);
        };
        if p.is_file() {
            return Ok(p);
        }
        fs::create_dir_all(&self.root).map_err(io("create directory", &self.root))?;
        let tmp = self.tmp_file(name)?;
        if r.objects.download(&r.objects.key(&self.id, name), &tmp)? {
            fs::rename(&tmp, &p).map_err(io("rename", &tmp))?;
        }
        Ok(p)
    }

    /// With shared storage, uploads the local file `path` as the task's [`names::UPLOAD`], so
    /// the download stage on any machine reads it from there; with the local directory,
    /// nothing (the stage copies `path` itself).
    pub fn upload_input(&self, path: &Path) -> Result<(), StoreError> {
        match &self.remote {
            Some(r) => r
                .objects
                .upload(path, &r.objects.key(&self.id, names::UPLOAD)),
            None => Ok(()),
        }
    }

    /// Deletes the output `name` (both stores; absent: nothing to do). Its record in the
    /// manifest is the caller's.
    pub fn delete_output(&self, name: &str) -> Result<(), StoreError> {
        let p = self.file(name);
        match fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("remove", &p)(e)),
        }
        match &self.remote {
            Some(r) => r.objects.delete(&r.objects.key(&self.id, name)),
            None => Ok(()),
        }
    }

    /// An output as its size in bytes and a stream of chunks (the server's downloads),
    /// `None` when it does not exist: the local file, or the object streamed from shared
    /// storage.
    pub async fn output_stream(&self, name: &str) -> Result<Option<OutputStream>, StoreError> {
        use futures::StreamExt;
        if let Some(r) = &self.remote {
            return r.objects.stream(&r.objects.key(&self.id, name)).await;
        }
        let p = self.file(name);
        match tokio::fs::read(&p).await {
            Ok(b) => Ok(Some((
                b.len() as u64,
                futures::stream::once(async move { Ok(bytes::Bytes::from(b)) }).boxed(),
            ))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("read", &p)(e)),
        }
    }

    /// Absolute path of the file `name` inside the task directory. `name` must be one of the
    /// [`names`] or a media file name returned by a stage (no separators).
    pub fn file(&self, name: &str) -> PathBuf {
        debug_assert!(!name.contains('/') && name != ".." && !name.is_empty());
        self.root.join(name)
    }

    /// The temp directory for in-progress outputs (created on demand).
    pub fn tmp_dir(&self) -> Result<PathBuf, StoreError> {
        let d = self.root.join(".tmp");
        fs::create_dir_all(&d).map_err(io("create directory", &d))?;
        Ok(d)
    }

    /// A fresh temp path for `name` under `.tmp/` (unique per process and call).
    pub fn tmp_file(&self, name: &str) -> Result<PathBuf, StoreError> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        Ok(self
            .tmp_dir()?
            .join(format!("{}.{}.{}", std::process::id(), n, name)))
    }

    /// Bytes available to us on the filesystem holding this task directory (statvfs
    /// `f_bavail × f_frsize`, via `fs4::available_space`). The directory must exist (with
    /// shared storage the scratch directory is created).
    pub fn free_bytes(&self) -> Result<u64, StoreError> {
        if self.remote.is_some() {
            fs::create_dir_all(&self.root).map_err(io("create directory", &self.root))?;
        }
        fs4::available_space(&self.root).map_err(io("statvfs", &self.root))
    }

    /// Removes the temp directory and everything in it (after a stage ends, either way).
    pub fn clear_tmp(&self) {
        let _ = fs::remove_dir_all(self.root.join(".tmp"));
    }

    /// Whether the task has a manifest (a record). A record backend that cannot be reached
    /// answers true, so the caller's next read reports the error (retryable) instead of the
    /// task being taken for unknown.
    pub fn exists(&self) -> bool {
        match &self.remote {
            Some(r) => r.records.get(&self.id).map_or(true, |rec| rec.is_some()),
            None => self.file(names::MANIFEST).exists(),
        }
    }

    /// Creates the directory and writes `manifest` unless a manifest exists already.
    /// Returns false (and leaves the existing manifest alone) when it existed. Checked and
    /// written under the manifest lock, so of concurrent creators (threads or processes)
    /// exactly one gets true.
    pub fn create(&self, manifest: &Manifest) -> Result<bool, StoreError> {
        if let Some(r) = &self.remote {
            let json = serde_json::to_vec_pretty(manifest).expect("manifest serializes");
            let created = r.records.put_if(&self.id, None, &json)?;
            if created {
                self.mirror(r, json);
            }
            return Ok(created);
        }
        fs::create_dir_all(&self.root).map_err(io("create directory", &self.root))?;
        let _lock = self.lock()?;
        if self.exists() {
            return Ok(false);
        }
        self.write_manifest(manifest)?;
        Ok(true)
    }

    /// Takes the task's restart lock: an exclusive `flock` on `restart.lock`, blocking while
    /// another thread or process holds it; released when the guard drops. Whoever resets a
    /// failed or cancelled task to run again holds it from the status check until the new
    /// flow is added, so of concurrent restarters only the first finds the task ended. It is
    /// separate from the manifest lock, which stages take briefly for every update.
    pub fn lock_restart(&self) -> Result<TaskLock, StoreError> {
        match &self.remote {
            Some(r) => Ok(TaskLock::Held(r.records.lock(
                &self.id,
                "restart",
                RESTART_LOCK_TTL,
            )?)),
            None => self.flock("restart.lock"),
        }
    }

    fn lock(&self) -> Result<TaskLock, StoreError> {
        match &self.remote {
            Some(r) => Ok(TaskLock::Held(r.records.lock(
                &self.id,
                "manifest",
                MANIFEST_LOCK_TTL,
            )?)),
            None => self.flock("manifest.lock"),
        }
    }

    /// Writes the user's copy of the record, `manifest.json`, next to the task's objects
    /// (best effort: the record in [`remote::Records`] is the truth).
    fn mirror(&self, r: &Remote, json: Vec<u8>) {
        if let Err(e) = r
            .objects
            .put(&r.objects.key(&self.id, names::MANIFEST), json)
        {
            tracing::warn!(task = %self.id, "cannot write the manifest.json copy: {e}");
        }
    }

    /// The record and its version (shared storage).
    fn read_record(&self, r: &Remote) -> Result<(Manifest, u64), StoreError> {
        let rec = r
            .records
            .get(&self.id)?
            .ok_or_else(|| StoreError::NotFound(self.id.clone()))?;
        let m = serde_json::from_slice(&rec.json).map_err(|e| StoreError::Corrupt {
            path: PathBuf::from(format!("record of {}", self.id)),
            message: e.to_string(),
        })?;
        Ok((m, rec.version))
    }

    fn flock(&self, name: &str) -> Result<TaskLock, StoreError> {
        let p = self.root.join(name);
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(io("open", &p))?;
        fs4::fs_std::FileExt::lock_exclusive(&f).map_err(io("lock", &p))?;
        Ok(TaskLock::File(f))
    }

    /// Reads the manifest. Errors: [`StoreError::NotFound`] when absent, `Corrupt`.
    pub fn read_manifest(&self) -> Result<Manifest, StoreError> {
        if let Some(r) = &self.remote {
            return self.read_record(r).map(|(m, _)| m);
        }
        let p = self.file(names::MANIFEST);
        let text = match fs::read(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound(
                    self.root
                        .file_name()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                ))
            }
            Err(e) => return Err(io("read", &p)(e)),
        };
        serde_json::from_slice(&text).map_err(|e| StoreError::Corrupt {
            path: p,
            message: e.to_string(),
        })
    }

    fn write_manifest(&self, m: &Manifest) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec_pretty(m).expect("manifest serializes");
        // The manifest's temp file sits beside it (not in `.tmp/`, which stages own and clear).
        let prefix = format!(".{}.", names::MANIFEST);
        let tmp = self
            .root
            .join(format!("{prefix}{}.tmp", std::process::id()));
        // We hold the manifest lock, so any other manifest temp file was left by a process
        // that died mid-write (kill -9): remove it.
        if let Ok(entries) = fs::read_dir(&self.root) {
            for e in entries.flatten() {
                let n = e.file_name();
                let n = n.to_string_lossy();
                if n.starts_with(&prefix) && n.ends_with(".tmp") && e.path() != tmp {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        let mut f = File::create(&tmp).map_err(io("create", &tmp))?;
        if let Err(e) = f.write_all(&bytes).and_then(|_| f.sync_all()) {
            let _ = fs::remove_file(&tmp);
            return Err(io("write", &tmp)(e));
        }
        let dest = self.file(names::MANIFEST);
        fs::rename(&tmp, &dest).map_err(io("rename", &tmp))
    }

    /// Read-modify-write of the manifest under an exclusive file lock, so concurrent updates
    /// from several processes never lose fields. Returns the updated manifest.
    pub fn update_manifest(&self, f: impl FnOnce(&mut Manifest)) -> Result<Manifest, StoreError> {
        self.modify_manifest(|m| {
            f(m);
            m.clone()
        })
    }

    /// Like [`TaskDir::update_manifest`], returning what `f` returns.
    ///
    /// With shared storage the record is read, changed and written back by compare-and-set
    /// under the task's record lock; a write that finds another version (the lock lapsed
    /// under a paused holder) is refused as an error, never lost silently.
    pub fn modify_manifest<R>(&self, f: impl FnOnce(&mut Manifest) -> R) -> Result<R, StoreError> {
        let lock = self.lock()?;
        let (mut m, version) = self.read_locked()?;
        let out = f(&mut m);
        m.updated_at = crate::domain::manifest::now_ms();
        let copy = self.write_locked(&m, version)?;
        drop(lock);
        self.mirror_after(copy);
        Ok(out)
    }

    /// The manifest read under its lock, with (shared storage) the record's version.
    fn read_locked(&self) -> Result<(Manifest, Option<u64>), StoreError> {
        match &self.remote {
            Some(r) => self.read_record(r).map(|(m, v)| (m, Some(v))),
            None => self.read_manifest().map(|m| (m, None)),
        }
    }

    /// Writes `m` over the manifest [`TaskDir::read_locked`] read as `version`, the lock
    /// still held. With shared storage it is a compare-and-set (a record that changed while
    /// locked — the lock lapsed under a paused holder — is refused as an error, never lost
    /// silently) and the answer is the JSON for the `manifest.json` copy
    /// ([`TaskDir::mirror_after`], once the lock is given up).
    fn write_locked(
        &self,
        m: &Manifest,
        version: Option<u64>,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(r) = &self.remote else {
            return self.write_manifest(m).map(|()| None);
        };
        let json = serde_json::to_vec_pretty(m).expect("manifest serializes");
        if !r.records.put_if(&self.id, version, &json)? {
            return Err(StoreError::Remote {
                op: "update",
                what: format!("record of {}", self.id),
                message: "it changed while locked (the lock lapsed); not written".into(),
            });
        }
        Ok(Some(json))
    }

    /// Writes the `manifest.json` copy [`TaskDir::write_locked`] returned (shared storage).
    fn mirror_after(&self, copy: Option<Vec<u8>>) {
        if let (Some(r), Some(json)) = (&self.remote, copy) {
            self.mirror(r, json);
        }
    }

    /// Moves a finished temp file to `name` like [`TaskDir::commit`], but only when
    /// `allowed(manifest)` holds, checked under the manifest lock (so a stale attempt of a job
    /// that another worker runs now cannot overwrite that worker's outputs). Returns `None`
    /// (and removes the temp file) when not allowed.
    pub fn commit_if(
        &self,
        tmp: &Path,
        name: &str,
        allowed: impl FnOnce(&Manifest) -> bool,
    ) -> Result<Option<OutputFile>, StoreError> {
        if let Some(r) = &self.remote {
            return self.commit_remote(r, tmp, name, allowed);
        }
        let _lock = self.lock()?;
        if !allowed(&self.read_manifest()?) {
            let _ = fs::remove_file(tmp);
            return Ok(None);
        }
        self.commit(tmp, name).map(Some)
    }

    /// [`TaskDir::commit_if`] with shared storage: the file is uploaded to a staged key first
    /// (outside the lock: uploads take long), then, under the record lock and only while
    /// `allowed`, copied to its name inside the store; the staged object is removed either
    /// way. The local file stays in the scratch directory under its name.
    fn commit_remote(
        &self,
        r: &Remote,
        tmp: &Path,
        name: &str,
        allowed: impl FnOnce(&Manifest) -> bool,
    ) -> Result<Option<OutputFile>, StoreError> {
        let staged = r.objects.staged_key(&self.id, name);
        if let Err(e) = r.objects.upload(tmp, &staged) {
            let _ = fs::remove_file(tmp);
            let _ = r.objects.delete(&staged);
            return Err(e);
        }
        let done = (|| {
            let _lock = self.lock()?;
            if !allowed(&self.read_record(r)?.0) {
                return Ok(false);
            }
            r.objects.copy(&staged, &r.objects.key(&self.id, name))?;
            Ok(true)
        })();
        let _ = r.objects.delete(&staged);
        match done {
            Ok(true) => {
                let dest = self.file(name);
                fs::rename(tmp, &dest).map_err(io("rename", tmp))?;
                output_record(&dest, name).map(Some)
            }
            Ok(false) => {
                let _ = fs::remove_file(tmp);
                Ok(None)
            }
            Err(e) => {
                let _ = fs::remove_file(tmp);
                Err(e)
            }
        }
    }

    /// Writes `bytes` to a temp file and commits it with [`TaskDir::commit_if`].
    pub fn write_atomic_if(
        &self,
        name: &str,
        bytes: &[u8],
        allowed: impl FnOnce(&Manifest) -> bool,
    ) -> Result<Option<OutputFile>, StoreError> {
        let tmp = self.write_tmp(name, bytes)?;
        self.commit_if(&tmp, name, allowed)
    }

    fn write_tmp(&self, name: &str, bytes: &[u8]) -> Result<PathBuf, StoreError> {
        let tmp = self.tmp_file(name)?;
        let mut f = File::create(&tmp).map_err(io("create", &tmp))?;
        let res = f.write_all(bytes).and_then(|_| f.sync_all());
        if let Err(e) = res {
            let _ = fs::remove_file(&tmp);
            return Err(io("write", &tmp)(e));
        }
        Ok(tmp)
    }

    /// Writes `bytes` to `name` atomically (temp file in `.tmp/`, fsync, rename) and returns
    /// its [`OutputFile`] record (size and SHA-256).
    pub fn write_atomic(&self, name: &str, bytes: &[u8]) -> Result<OutputFile, StoreError> {
        let tmp = self.write_tmp(name, bytes)?;
        self.commit(&tmp, name)
    }

    /// Moves a finished temp file (from [`TaskDir::tmp_file`]) to `name` and returns its record.
    pub fn commit(&self, tmp: &Path, name: &str) -> Result<OutputFile, StoreError> {
        if let Some(r) = &self.remote {
            r.objects.upload(tmp, &r.objects.key(&self.id, name))?;
        }
        let dest = self.file(name);
        fs::rename(tmp, &dest).map_err(io("rename", tmp))?;
        output_record(&dest, name)
    }

    /// The record of an existing output `name` (size and SHA-256), if the file exists.
    pub fn existing_output(&self, name: &str) -> Option<OutputFile> {
        let p = self.input(name).ok()?;
        p.is_file().then(|| output_record(&p, name).ok()).flatten()
    }

    /// True when the output `rec` is at its place with the recorded size and SHA-256 (a
    /// checkpoint or a completed stage's output that a re-run may reuse).
    ///
    /// With shared storage a copy in the scratch directory is checked the same way; otherwise
    /// the object must exist with the recorded size (its SHA-256 was checked when it was
    /// committed; it is not read back).
    pub fn verify_output(&self, rec: &OutputFile) -> bool {
        let p = self.file(&rec.name);
        let local = |md: fs::Metadata| {
            md.is_file()
                && md.len() == rec.bytes
                && output_record(&p, &rec.name).is_ok_and(|r| r.sha256 == rec.sha256)
        };
        match (&self.remote, fs::metadata(&p)) {
            (_, Ok(md)) => local(md),
            (Some(r), Err(_)) => r
                .objects
                .size(&r.objects.key(&self.id, &rec.name))
                .is_ok_and(|s| s == Some(rec.bytes)),
            (None, Err(_)) => false,
        }
    }

    /// Puts `other`'s output `rec` into this task directory under the same name — a hard
    /// link when both are on one filesystem, a copy otherwise (temp name, then rename) — and
    /// returns whether it has the recorded size and SHA-256; a file that does not is removed.
    pub fn adopt_output(&self, other: &TaskDir, rec: &OutputFile) -> Result<bool, StoreError> {
        if let Some(r) = &self.remote {
            let (from, to) = (
                r.objects.key(&other.id, &rec.name),
                r.objects.key(&self.id, &rec.name),
            );
            r.objects.copy(&from, &to)?;
            let ok = self.verify_output(rec);
            if !ok {
                r.objects.delete(&to)?;
            }
            return Ok(ok);
        }
        let src = other.file(&rec.name);
        let tmp = self.tmp_file(&rec.name)?;
        if fs::hard_link(&src, &tmp).is_err() {
            fs::copy(&src, &tmp).map_err(io("copy", &src))?;
        }
        let dest = self.file(&rec.name);
        fs::rename(&tmp, &dest).map_err(io("rename", &tmp))?;
        let ok = self.verify_output(rec);
        if !ok {
            let _ = fs::remove_file(&dest);
        }
        Ok(ok)
    }

    /// Deletes the task directory and everything in it; with shared storage every object of
    /// the task, its record and this process's scratch of it. Returns the files (objects) and
    /// bytes removed (with the local directory, none are counted).
    pub fn remove(&self) -> Result<Removed, StoreError> {
        if let Some(r) = &self.remote {
            let removed = r.objects.delete_task(&self.id)?;
            r.records.delete(&self.id)?;
            let _ = fs::remove_dir_all(&self.root);
            return Ok(removed);
        }
        fs::remove_dir_all(&self.root).map_err(io("remove", &self.root))?;
        Ok(Removed::default())
    }

    /// Deletes the task: every file and the record. Under the manifest lock (so no stage
    /// update is half-way) the directory is first renamed to a hidden name beside it, so the
    /// task is gone for every reader at once — a listing, a worker's next manifest update, the
    /// reconciler — and then removed; a directory left hidden by a crash is removed by the next
    /// delete or prune pass ([`DataDir::sweep_deleted`]). Returns the files and bytes removed.
    ///
    /// With shared storage, under the record lock: every object of the task, then its record
    /// (gone for every reader from then on), then this process's scratch ([`TaskDir::remove`]);
    /// the objects are listed once more after the lock is given up, for a `manifest.json`
    /// copy an update just before wrote after its own lock.
    ///
    /// Errors: [`StoreError::NotFound`] when the task has no manifest; IO errors;
    /// [`StoreError::Remote`] (objects left stay listed under the record until a delete
    /// succeeds).
    pub fn delete(&self) -> Result<Removed, StoreError> {
        if !self.exists() {
            return Err(StoreError::NotFound(self.id()));
        }
        if let Some(r) = &self.remote {
            let mut removed = {
                let _lock = self.lock()?;
                if !self.exists() {
                    return Err(StoreError::NotFound(self.id()));
                }
                self.remove()?
            };
            let late = r.objects.delete_task(&self.id)?;
            removed.files += late.files;
            removed.bytes += late.bytes;
            return Ok(removed);
        }
        let hidden = {
            let _lock = self.lock()?;
            if !self.exists() {
                return Err(StoreError::NotFound(self.id()));
            }
            let hidden = self.root.with_file_name(format!(
                ".deleting-{}-{}-{}",
                self.id(),
                std::process::id(),
                now_ms()
            ));
            fs::rename(&self.root, &hidden).map_err(io("rename", &self.root))?;
            hidden
        };
        let removed = tree_size(&hidden);
        match fs::remove_dir_all(&hidden) {
            Ok(()) => Ok(removed),
            // Swept meanwhile by another process.
            Err(_) if !hidden.exists() => Ok(removed),
            Err(e) => Err(io("remove", &hidden)(e)),
        }
    }

    /// The task id (the directory's name).
    fn id(&self) -> String {
        self.root
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// The output files of `kind` that `m` lists: the download stage's outputs (the media) or
    /// the transcribe stage's `audio.wav` (output or checkpoint).
    pub fn outputs_of(m: &Manifest, kind: PruneKind) -> Vec<OutputFile> {
        let Some(r) = m.stage(kind.stage()) else {
            return Vec::new();
        };
        if kind == PruneKind::Media {
            return r.outputs.clone();
        }
        // audio.wav: an output of a completed transcription, a checkpoint of an unfinished one.
        let mut wav = r.outputs.iter().chain(&r.checkpoints);
        wav.find(|o| o.name == names::AUDIO_WAV)
            .cloned()
            .into_iter()
            .collect()
    }

    /// The downloaded media while it exists: its record and where it is (what the server
    /// streams) — the local file, or with shared storage the object as a stream. `None` when
    /// `m` lists no media or it is gone.
    ///
    /// Errors: with shared storage, the object store's ([`StoreError::Remote`]).
    pub async fn media(&self, m: &Manifest) -> Result<Option<(OutputFile, Media)>, StoreError> {
        let Some(rec) = Self::outputs_of(m, PruneKind::Media).into_iter().next() else {
            return Ok(None);
        };
        if self.remote.is_some() {
            let got = self.output_stream(&rec.name).await?;
            return Ok(got.map(|s| (rec, Media::Object(s))));
        }
        let path = self.file(&rec.name);
        Ok(path.is_file().then_some((rec, Media::File(path))))
    }

    /// Deletes the task's files of `kinds` (see [`TaskDir::outputs_of`]; with shared storage
    /// their objects, [`TaskDir::delete_output`]) and records each in the manifest ([`Manifest::record_pruned`]), all under the manifest lock and only when
    /// `allowed(manifest)` holds (the caller's policy, checked on the current record). A file
    /// already gone is recorded all the same. Returns what was pruned (empty when not allowed
    /// or nothing was left).
    ///
    /// Errors: [`StoreError::NotFound`]; IO errors (a file that cannot be removed stays listed).
    pub fn prune_if(
        &self,
        kinds: &[PruneKind],
        allowed: impl FnOnce(&Manifest) -> bool,
    ) -> Result<Vec<PrunedFile>, StoreError> {
        let lock = self.lock()?;
        let (mut m, version) = self.read_locked()?;
        if !allowed(&m) {
            return Ok(Vec::new());
        }
        let at = now_ms();
        let before = m.pruned.len();
        let mut failed = None;
        for &kind in kinds {
            for rec in Self::outputs_of(&m, kind) {
                // The file, and with shared storage its object (and any scratch copy).
                if let Err(e) = self.delete_output(&rec.name) {
                    failed = Some(e);
                    continue;
                }
                m.record_pruned(kind, &rec, at);
            }
        }
        let pruned = m.pruned[before..].to_vec();
        if !pruned.is_empty() {
            m.updated_at = now_ms();
            let copy = self.write_locked(&m, version)?;
            drop(lock);
            self.mirror_after(copy);
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(pruned),
        }
    }
}

/// Where the downloaded media is ([`TaskDir::media`]).
pub enum Media {
    /// A local file (the server answers byte ranges from it).
    File(PathBuf),
    /// An object in shared storage: its size in bytes and its chunks, streamed whole.
    Object(OutputStream),
}

impl std::fmt::Debug for Media {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Media::File(p) => f.debug_tuple("File").field(p).finish(),
            Media::Object((size, _)) => f.debug_tuple("Object").field(size).finish(),
        }
    }
}

/// What deleting a task removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Removed {
    /// Files removed.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// Files and bytes under `dir` (not following links).
fn tree_size(dir: &Path) -> Removed {
    let mut r = Removed::default();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(_) => {
                    r.files += 1;
                    r.bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
                }
                Err(_) => {}
            }
        }
    }
    r
}

/// An exclusive lock of a task ([`TaskDir::lock_restart`]): a `flock` the kernel releases when
/// this guard drops or the process dies, or with shared storage a record lock that expires.
#[derive(Debug)]
pub enum TaskLock {
    /// A lock file held open.
    File(#[allow(dead_code)] File),
    /// A lock in the record backend.
    Held(#[allow(dead_code)] Held),
}

/// Size and SHA-256 of `path`, recorded under `name`.
fn output_record(path: &Path, name: &str) -> Result<OutputFile, StoreError> {
    let mut f = File::open(path).map_err(io("open", path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut bytes = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(io("read", path))?;
        if n == 0 {
            break;
        }
        bytes += n as u64;
        h.update(&buf[..n]);
    }
    Ok(OutputFile {
        name: name.to_string(),
        bytes,
        sha256: hex::encode(h.finalize()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::manifest::{Source, TaskStatus};
    use crate::domain::Stage;

    fn tmp_root(tag: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("ts-td-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        p
    }

    #[test]
    fn uploads_are_kept_by_content_under_a_safe_name() {
        assert_eq!(upload_name("jfk.wav"), "jfk.wav");
        assert_eq!(upload_name("C:\\x\\../ä b.mp3"), "__b.mp3");
        assert_eq!(upload_name("../../.."), "upload");
        assert_eq!(upload_name(".hidden"), "hidden");
        assert_eq!(upload_name(""), "upload");
        let root = tmp_root("upload");
        let dd = DataDir::open(&root).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let put = |name: &'static str, parts: &'static [&'static [u8]]| {
            rt.block_on(async {
                let mut s = dd.begin_upload().await.unwrap();
                for p in parts {
                    s.write(p).await.unwrap();
                }
                assert_eq!(s.size(), parts.iter().map(|p| p.len() as u64).sum::<u64>());
                s.finish(name).await.unwrap()
            })
        };
        let a = put("a.wav", &[b"RI", b"FF"]);
        assert_eq!(a.sha256, hex::encode(Sha256::digest(b"RIFF")));
        assert_eq!(a.size, 4);
        assert_eq!(a.path, root.join("uploads").join(&a.sha256).join("a.wav"));
        assert_eq!(fs::read(&a.path).unwrap(), b"RIFF");
        // The same bytes under another name: stored once, under the first name.
        assert_eq!(put("b.wav", &[b"RIFF"]), a);
        assert_ne!(put("a.wav", &[b"RIFX"]).sha256, a.sha256);
        // An abandoned upload leaves nothing behind.
        rt.block_on(async {
            let mut s = dd.begin_upload().await.unwrap();
            s.write(b"partial").await.unwrap();
        });
        let tmp = root.join("uploads/.tmp");
        assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0);
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn atomic_write_leaves_no_temp_files() {
        let root = tmp_root("atomic");
        let dd = DataDir::open(&root).unwrap();
        let t = dd.task("t1");
        let m = Manifest::new(
            "t1",
            "x",
            Source::Url {
                url: "http://h/x".into(),
            },
        );
        assert!(t.create(&m).unwrap());
        assert!(!t.create(&m).unwrap(), "second create must not overwrite");
        let rec = t.write_atomic(names::TRANSCRIPT_TXT, b"hello\n").unwrap();
        assert_eq!(rec.bytes, 6);
        assert_eq!(
            rec.sha256,
            "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
        );
        t.clear_tmp();
        let mut names: Vec<_> = fs::read_dir(t.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            vec!["manifest.json", "manifest.lock", "transcript.txt"]
        );
        assert_eq!(dd.task_ids().unwrap(), vec!["t1"]);
        fs::remove_dir_all(&root).ok();
    }

    #[test]
    fn concurrent_updates_lose_nothing() {
        let root = tmp_root("conc");
        let dd = DataDir::open(&root).unwrap();
        let t = dd.task("t2");
        t.create(&Manifest::new(
            "t2",
            "x",
            Source::Url {
                url: "http://h/x".into(),
            },
        ))
        .unwrap();
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let t = t.clone();
                std::thread::spawn(move || {
                    for j in 0..20 {
                        t.update_manifest(|m| {
                            m.stage_mut(Stage::Download)
                                .detail
                                .insert(format!("k{i}-{j}"), serde_json::json!(j));
                        })
                        .unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let m = t.read_manifest().unwrap();
        assert_eq!(m.stage(Stage::Download).unwrap().detail.len(), 160);
        assert_eq!(m.status, TaskStatus::Queued);
        fs::remove_dir_all(&root).ok();
    }

    #[test]
    fn fenced_commits_and_output_checks() {
        let root = tmp_root("fence");
        let dd = DataDir::open(&root).unwrap();
        let t = dd.task("t3");
        t.create(&Manifest::new(
            "t3",
            "x",
            Source::Url {
                url: "http://h/x".into(),
            },
        ))
        .unwrap();
        let rec = t
            .write_atomic_if(names::SUMMARY_MD, b"one", |_| true)
            .unwrap()
            .unwrap();
        assert!(t.verify_output(&rec));
        assert!(t
            .write_atomic_if(names::SUMMARY_MD, b"two", |_| false)
            .unwrap()
            .is_none());
        assert_eq!(fs::read(t.file(names::SUMMARY_MD)).unwrap(), b"one");
        fs::write(t.file(names::SUMMARY_MD), b"on3").unwrap();
        assert!(!t.verify_output(&rec), "same size, other content");
        // A manifest temp file left by a process killed mid-write is removed.
        let stray = t.path().join(".manifest.json.999999.tmp");
        fs::write(&stray, b"{").unwrap();
        t.update_manifest(|_| {}).unwrap();
        assert!(!stray.exists());
        let left: Vec<_> = fs::read_dir(t.tmp_dir().unwrap()).unwrap().collect();
        assert!(left.is_empty(), "refused commit left its temp file");
        fs::remove_dir_all(&root).ok();
    }

    #[test]
    fn unknown_task_is_not_found() {
        let root = tmp_root("nf");
        let dd = DataDir::open(&root).unwrap();
        let e = dd.task("nope").read_manifest().unwrap_err();
        assert_eq!(e.to_string(), "task nope not found");
        fs::remove_dir_all(&root).ok();
    }
}
