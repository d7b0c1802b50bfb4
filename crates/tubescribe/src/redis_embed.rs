//! The embedded default Redis: with no Redis URL configured, tubescribe runs its own
//! `redis-server` on a unix socket inside the data directory, with AOF persistence and
//! `maxmemory-policy noeviction` (what BullMQ requires: evicted keys would lose jobs).
//!
//! A server that is already answering on the socket is reused. A server this process started
//! is stopped (SIGTERM, which flushes the AOF) when the returned [`EmbeddedRedis`] is dropped.
//! Starting is serialized by a lock file, so two tubescribe processes never race to bind.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::process::{Cmd, Daemon, ProcessError};

/// The longest unix socket path Linux accepts (`sun_path` is 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Errors starting the embedded Redis. None is retryable without a fix by the user.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    /// `redis-server` is not installed.
    #[error("redis-server was not found ({0}). Install it with `apt-get install redis-server`, or set a Redis URL with --redis-url / TUBESCRIBE_REDIS_URL")]
    NotInstalled(String),
    /// It could not be started or did not answer in time.
    #[error("the embedded redis-server did not start: {0} (see {1})")]
    Start(String, PathBuf),
    /// File system problem in the data directory.
    #[error("embedded redis: {0}")]
    Io(#[from] std::io::Error),
}

/// A Redis the process can use: its URL and, if this process started it, the server.
pub struct EmbeddedRedis {
    /// URL for BullMQ, e.g. `redis+unix:///data/redis/redis.sock`.
    pub url: String,
    /// The socket path.
    pub socket: PathBuf,
    server: Option<Daemon>,
}

impl EmbeddedRedis {
    /// Whether this process started the server (and will stop it on drop).
    pub fn owned(&self) -> bool {
        self.server.is_some()
    }

    /// Stops the server if this process started it.
    pub fn stop(&mut self) {
        if let Some(mut d) = self.server.take() {
            d.stop();
        }
    }
}

/// The socket path for `dir`, falling back to a short path in the temp directory when the
/// data directory is too deep for a unix socket.
pub fn socket_path(dir: &Path) -> PathBuf {
    let p = dir.join("redis.sock");
    if p.as_os_str().len() <= MAX_SOCKET_PATH {
        return p;
    }
    use sha2::Digest;
    let h = hex::encode(sha2::Sha256::digest(dir.as_os_str().as_encoded_bytes()));
    std::env::temp_dir().join(format!("tubescribe-{}.sock", &h[..16]))
}

/// Sends PING over the unix socket; true on `+PONG`.
pub async fn ping(socket: &Path) -> bool {
    let fut = async {
        let mut s = tokio::net::UnixStream::connect(socket).await.ok()?;
        s.write_all(b"PING\r\n").await.ok()?;
        let mut buf = [0u8; 16];
        let n = s.read(&mut buf).await.ok()?;
        Some(buf[..n].starts_with(b"+PONG"))
    };
    tokio::time::timeout(Duration::from_millis(500), fut)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// Reuses or starts the embedded redis-server in `dir` (created if needed).
///
/// Errors: [`RedisError::NotInstalled`] with install instructions, `Start` when the server
/// does not answer within 10 s (its log file is named), `Io`.
pub async fn ensure(dir: &Path, redis_server: &Path) -> Result<EmbeddedRedis, RedisError> {
    std::fs::create_dir_all(dir)?;
    let socket = socket_path(dir);
    let url = format!("redis+unix://{}", socket.display());
    if ping(&socket).await {
        return Ok(EmbeddedRedis {
            url,
            socket,
            server: None,
        });
    }
    let lock_path = dir.join("start.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)?;
    let lock = tokio::task::spawn_blocking(move || {
        fs4::fs_std::FileExt::lock_exclusive(&lock).map(|_| lock)
    })
    .await
    .map_err(|e| std::io::Error::other(e.to_string()))??;
    // Someone may have started it while we waited for the lock.
    if ping(&socket).await {
        drop(lock);
        return Ok(EmbeddedRedis {
            url,
            socket,
            server: None,
        });
    }
    let log = dir.join("redis.log");
    let cmd = Cmd::new(redis_server)
        .args(["--port", "0", "--unixsocket"])
        .arg(&socket)
        .args(["--unixsocketperm", "700", "--dir"])
        .arg(dir)
        .args([
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--maxmemory-policy",
            "noeviction",
            "--save",
            "",
            "--daemonize",
            "no",
            "--logfile",
        ])
        .arg(&log);
    let mut server = match Daemon::spawn(&cmd) {
        Ok(d) => d,
        Err(ProcessError::NotFound { program, .. }) => {
            return Err(RedisError::NotInstalled(program))
        }
        Err(e) => return Err(RedisError::Start(e.to_string(), log)),
    };
    let t0 = std::time::Instant::now();
    while t0.elapsed() < Duration::from_secs(10) {
        if ping(&socket).await {
            drop(lock);
            tracing::info!(socket = %socket.display(), pid = ?server.pid(), "started embedded redis-server");
            return Ok(EmbeddedRedis {
                url,
                socket,
                server: Some(server),
            });
        }
        if let Some(code) = server.try_exited() {
            return Err(RedisError::Start(
                format!("redis-server exited with code {code}"),
                log,
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.stop();
    Err(RedisError::Start(
        "no answer on the socket within 10 s".into(),
        log,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn starts_reuses_and_stops() {
        let dir = std::env::temp_dir().join(format!("ts-redis-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut a = ensure(&dir, Path::new("redis-server")).await.unwrap();
        assert!(a.owned());
        assert!(a.url.starts_with("redis+unix://"));
        let b = ensure(&dir, Path::new("redis-server")).await.unwrap();
        assert!(!b.owned(), "a running server must be reused");
        assert_eq!(a.socket, b.socket);
        a.stop();
        assert!(!ping(&a.socket).await);
        assert!(dir.join("appendonlydir").exists(), "AOF must be on");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[tokio::test]
    async fn missing_binary_says_how_to_fix() {
        let dir = std::env::temp_dir().join(format!("ts-redis-nf-{}", std::process::id()));
        let e = ensure(&dir, Path::new("/nonexistent/redis-server"))
            .await
            .err()
            .unwrap();
        let msg = e.to_string();
        assert!(
            msg.contains("apt-get install redis-server") && msg.contains("--redis-url"),
            "{msg}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn long_dirs_get_a_short_socket() {
        let long = PathBuf::from(format!("/tmp/{}", "d".repeat(150)));
        let s = socket_path(&long);
        assert!(s.as_os_str().len() <= MAX_SOCKET_PATH);
        assert_eq!(
            socket_path(Path::new("/data")),
            PathBuf::from("/data/redis.sock")
        );
    }
}
