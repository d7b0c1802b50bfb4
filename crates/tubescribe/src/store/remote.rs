//! Shared storage for many machines: task outputs as objects in S3-compatible storage
//! ([`Objects`], through the `object_store` crate), task records behind a [`Records`] backend
//! (Redis, implemented by the engine and wired by the composition root), and the one bridge
//! that runs the object store's async calls for the store's synchronous API ([`block`]).
//!
//! ```text
//! s3://<bucket>/<prefix>/tasks/<task-id>/
//!   manifest.json          a copy of the task record for users (the record itself is in Redis)
//!   upload                 a local file given to `process`, uploaded at submission
//!   <stem>.<ext>, audio.wav, transcript.{json,txt,srt,vtt}, summary.{md,json}
//!   .staged/<uuid>.<name>  an output uploaded by an attempt, copied to its name at the commit
//! ```

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::StoreError;

/// Objects at least this large are uploaded in parts of this size (S3's minimum part is 5 MiB).
pub const MULTIPART_PART: usize = 8 << 20;

/// A task record as its backend keeps it: the manifest's JSON and the version a
/// compare-and-set must name.
#[derive(Debug, Clone)]
pub struct Record {
    /// The manifest, JSON.
    pub json: Vec<u8>,
    /// Changes on every write; [`Records::put_if`] writes only over this version.
    pub version: u64,
}

/// Where task records live when no filesystem is shared: every process of a deployment sees
/// the same records and updates them by compare-and-set. Implemented on Redis by the engine
/// (`engine/records.rs`). Errors are [`StoreError::Remote`] (retryable).
pub trait Records: Send + Sync + std::fmt::Debug {
    /// The record of `task`, or `None` when there is none.
    fn get(&self, task: &str) -> Result<Option<Record>, StoreError>;
    /// Writes `json` as the record of `task` only when its version is still `version`
    /// (`None`: only when it has no record). Returns false, writing nothing, otherwise.
    fn put_if(&self, task: &str, version: Option<u64>, json: &[u8]) -> Result<bool, StoreError>;
    /// Ids of every task that has a record, sorted.
    fn ids(&self) -> Result<Vec<String>, StoreError>;
    /// Removes the record of `task` (none: nothing to do).
    fn delete(&self, task: &str) -> Result<(), StoreError>;
    /// Takes the lock `name` of `task`, waiting while another process holds it; it is
    /// released when the returned guard drops, or by itself after `ttl` if its holder died.
    fn lock(&self, task: &str, name: &str, ttl: Duration) -> Result<Held, StoreError>;
}

/// A lock taken through [`Records::lock`]; dropping it runs its release.
pub struct Held(Option<Box<dyn FnOnce() + Send + Sync>>);

impl Held {
    /// A held lock released by `release`.
    pub fn new(release: impl FnOnce() + Send + Sync + 'static) -> Self {
        Self(Some(Box::new(release)))
    }
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Held")
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(r) = self.0.take() {
            r();
        }
    }
}

/// Shared storage of a deployment without a shared filesystem: objects plus records.
#[derive(Debug, Clone)]
pub struct Remote {
    /// Task outputs.
    pub objects: Objects,
    /// Task records.
    pub records: Arc<dyn Records>,
}

/// Task outputs in S3-compatible object storage, keyed `<prefix>/tasks/<task-id>/<name>`.
#[derive(Debug, Clone)]
pub struct Objects {
    store: Arc<dyn ObjectStore>,
    root: String,
    url: String,
}

/// The runtime every object-store call runs on (two threads, never dropped), so the store's
/// synchronous API works from async tasks and blocking threads alike.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("tubescribe-s3")
            .enable_all()
            .build()
            .expect("the object store's runtime starts")
    })
}

/// Runs `f` on the object store's runtime and waits for it (blocking this thread).
pub fn block<F>(f: F) -> F::Output
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    futures::executor::block_on(runtime().spawn(f)).expect("object store call panicked")
}

fn remote(op: &'static str, key: &Key, e: impl std::fmt::Display) -> StoreError {
    StoreError::Remote {
        op,
        what: key.to_string(),
        message: e.to_string(),
    }
}

impl Objects {
    /// The bucket `bucket` of the S3-compatible server the `AWS_*` variables name
    /// (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
    /// `AWS_ALLOW_HTTP`), path-style unless `AWS_VIRTUAL_HOSTED_STYLE_REQUEST=true`; tasks
    /// under `<prefix>/tasks/`. Errors: the builder's (no bucket, bad endpoint).
    pub fn s3(bucket: &str, prefix: &str) -> Result<Self, StoreError> {
        let store = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .build()
            .map_err(|e| StoreError::Remote {
                op: "open",
                what: format!("s3://{bucket}"),
                message: e.to_string(),
            })?;
        let root = if prefix.is_empty() {
            "tasks".to_string()
        } else {
            format!("{prefix}/tasks")
        };
        Ok(Self {
            store: Arc::new(store),
            url: format!("s3://{bucket}/{root}"),
            root,
        })
    }

    /// `s3://bucket/<prefix>/tasks`, for messages.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The key of `name` in `task`'s folder.
    pub fn key(&self, task: &str, name: &str) -> Key {
        Key::from(format!("{}/{task}/{name}", self.root))
    }

    /// The key a staged upload of `name` gets (unique per call).
    pub fn staged_key(&self, task: &str, name: &str) -> Key {
        let id = uuid::Uuid::new_v4().simple().to_string();
        Key::from(format!("{}/{task}/.staged/{id}.{name}", self.root))
    }

    /// Stores `bytes` at `key` in one request.
    pub fn put(&self, key: &Key, bytes: Vec<u8>) -> Result<(), StoreError> {
        let (store, k) = (self.store.clone(), key.clone());
        block(async move { store.put(&k, PutPayload::from(bytes)).await })
            .map(|_| ())
            .map_err(|e| remote("put", key, e))
    }

    /// Uploads the file `local` to `key`: one request up to [`MULTIPART_PART`], a multipart
    /// upload of such parts above it (aborted on failure).
    pub fn upload(&self, local: &Path, key: &Key) -> Result<(), StoreError> {
        let (store, k, p) = (self.store.clone(), key.clone(), local.to_path_buf());
        block(async move {
            let mut f = tokio::fs::File::open(&p).await.map_err(|e| e.to_string())?;
            let len = f.metadata().await.map_err(|e| e.to_string())?.len();
            if len <= MULTIPART_PART as u64 {
                let mut buf = Vec::with_capacity(len as usize);
                f.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
                store.put(&k, buf.into()).await.map_err(|e| e.to_string())?;
                return Ok(());
            }
            let upload = store.put_multipart(&k).await.map_err(|e| e.to_string())?;
            let mut w = WriteMultipart::new_with_chunk_size(upload, MULTIPART_PART);
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = match f.read(&mut buf).await {
                    Ok(n) => n,
                    Err(e) => {
                        let _ = w.abort().await;
                        return Err(e.to_string());
                    }
                };
                if n == 0 {
                    break;
                }
                if let Err(e) = w.wait_for_capacity(4).await {
                    return Err(e.to_string());
                }
                w.write(&buf[..n]);
            }
            w.finish().await.map(|_| ()).map_err(|e| e.to_string())
        })
        .map_err(|e| remote("upload", key, e))
    }

    /// Streams the object at `key` into the file `local` (written to `local` + `.part`, then
    /// renamed). Returns false when there is no such object.
    pub fn download(&self, key: &Key, local: &Path) -> Result<bool, StoreError> {
        let (store, k) = (self.store.clone(), key.clone());
        let part = local.with_extension("part");
        let (p2, dest) = (part.clone(), local.to_path_buf());
        let r = block(async move {
            let got = match store.get(&k).await {
                Ok(g) => g,
                Err(object_store::Error::NotFound { .. }) => return Ok(false),
                Err(e) => return Err(e.to_string()),
            };
            let mut f = tokio::fs::File::create(&p2)
                .await
                .map_err(|e| e.to_string())?;
            let mut s = got.into_stream();
            while let Some(chunk) = s.next().await {
                let chunk = chunk.map_err(|e| e.to_string())?;
                f.write_all(&chunk).await.map_err(|e| e.to_string())?;
            }
            f.sync_all().await.map_err(|e| e.to_string())?;
            tokio::fs::rename(&p2, &dest)
                .await
                .map_err(|e| e.to_string())?;
            Ok(true)
        });
        if r.is_err() {
            let _ = std::fs::remove_file(&part);
        }
        r.map_err(|e| remote("download", key, e))
    }

    /// The size in bytes of the object at `key`, `None` when there is none.
    pub fn size(&self, key: &Key) -> Result<Option<u64>, StoreError> {
        let (store, k) = (self.store.clone(), key.clone());
        match block(async move { store.head(&k).await }) {
            Ok(m) => Ok(Some(m.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(remote("head", key, e)),
        }
    }

    /// Copies the object `from` to `to` inside the store (overwriting `to`).
    pub fn copy(&self, from: &Key, to: &Key) -> Result<(), StoreError> {
        let (store, f, t) = (self.store.clone(), from.clone(), to.clone());
        block(async move { store.copy(&f, &t).await }).map_err(|e| remote("copy", from, e))
    }

    /// Deletes the object at `key` (none: nothing to do).
    pub fn delete(&self, key: &Key) -> Result<(), StoreError> {
        let (store, k) = (self.store.clone(), key.clone());
        match block(async move { store.delete(&k).await }) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(remote("delete", key, e)),
        }
    }

    /// Deletes every object of `task` (its outputs, upload, manifest copy, staged uploads).
    /// Returns how many objects it listed and deleted, and their bytes.
    pub fn delete_task(&self, task: &str) -> Result<super::Removed, StoreError> {
        let store = self.store.clone();
        let prefix = Key::from(format!("{}/{task}", self.root));
        let p2 = prefix.clone();
        block(async move {
            let objects: Vec<object_store::ObjectMeta> =
                store.list(Some(&p2)).try_collect().await?;
            let mut removed = super::Removed::default();
            for o in objects {
                match store.delete(&o.location).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
                removed.files += 1;
                removed.bytes += o.size;
            }
            Ok(removed)
        })
        .map_err(|e| remote("delete", &prefix, e))
    }

    /// The object at `key` as a stream of chunks with its size, `None` when there is none.
    pub async fn stream(&self, key: &Key) -> Result<Option<super::OutputStream>, StoreError> {
        let (store, k) = (self.store.clone(), key.clone());
        let got = runtime()
            .spawn(async move { store.get(&k).await })
            .await
            .expect("object store call panicked");
        match got {
            Ok(g) => {
                let size = g.meta.size;
                let k = key.clone();
                let s = g
                    .into_stream()
                    .map_err(move |e| remote("read", &k, e))
                    .boxed();
                Ok(Some((size, s)))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(remote("read", key, e)),
        }
    }
}
