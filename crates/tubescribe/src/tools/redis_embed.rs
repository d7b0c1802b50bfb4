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

use crate::tools::process::{Cmd, Daemon, ProcessError};

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

/// A Redis the process can use: its URL, this process's lease on it and, if this process
/// started it, the server.
///
/// Every process that uses the embedded server holds a shared `flock` on `redis/users.lock`
/// for as long as it uses it (the kernel drops it if the process dies). When a process is done
/// ([`EmbeddedRedis::stop`], also on drop), it gives up its lease and stops the server only if
/// it can then take the lock exclusively, i.e. no other process still uses it ("last one out").
/// A server left behind by a killed process is thereby stopped by the next process to use it.
pub struct EmbeddedRedis {
    /// URL for BullMQ, e.g. `redis+unix:///data/redis/redis.sock`.
    pub url: String,
    /// The socket path.
    pub socket: PathBuf,
    lease_path: PathBuf,
    lease: Option<std::fs::File>,
    server: Option<Daemon>,
}

impl EmbeddedRedis {
    /// Whether this process started the server.
    pub fn owned(&self) -> bool {
        self.server.is_some()
    }

    /// Ends this process's use of the server, and stops the server when no other process
    /// uses it (SIGTERM if we started it, else a `SHUTDOWN` command; both flush the AOF).
    pub fn stop(&mut self) {
        let Some(lease) = self.lease.take() else {
            return;
        };
        drop(lease);
        match (last_user(&self.lease_path), self.server.take()) {
            (Some(_exclusive), Some(mut d)) => d.stop(),
            (Some(_exclusive), None) => shutdown_via_socket(&self.socket),
            (None, Some(d)) => {
                tracing::info!(
                    "other processes still use the embedded redis-server; leaving it running"
                );
                d.detach();
            }
            (None, None) => {}
        }
    }
}

impl Drop for EmbeddedRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How long [`last_user`] keeps trying the exclusive lock before it concludes that another
/// process still uses the server.
const LAST_USER_WAIT: Duration = Duration::from_millis(300);

/// The exclusive lock on the lease file when no other process holds a lease, else `None`.
///
/// A `flock` belongs to the open file description, and a child forked by any thread of this
/// process holds a copy of every descriptor until it execs (`Cmd` forks to set the child's
/// death signal), so for that moment our own dropped lease can still look held. The lock is
/// therefore tried again every 10 ms for up to [`LAST_USER_WAIT`]; a real other user holds
/// it for longer, and then the caller waits that long once before leaving the server running.
fn last_user(lease_path: &Path) -> Option<std::fs::File> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(lease_path)
        .ok()?;
    let t0 = std::time::Instant::now();
    loop {
        match fs4::fs_std::FileExt::try_lock_exclusive(&f) {
            Ok(true) => return Some(f),
            Ok(false) if t0.elapsed() < LAST_USER_WAIT => {
                std::thread::sleep(Duration::from_millis(10))
            }
            _ => return None,
        }
    }
}

/// Sends `SHUTDOWN` over the unix socket and waits up to 10 s for the server to go away.
fn shutdown_via_socket(socket: &Path) {
    use std::io::Write;
    if let Ok(mut s) = std::os::unix::net::UnixStream::connect(socket) {
        let _ = s.write_all(b"SHUTDOWN\r\n");
        let t0 = std::time::Instant::now();
        while t0.elapsed() < Duration::from_secs(10)
            && std::os::unix::net::UnixStream::connect(socket).is_ok()
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Takes this process's shared lease (blocks while another process is shutting the server
/// down under the exclusive lock).
async fn take_lease(path: &Path) -> Result<std::fs::File, RedisError> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    tokio::task::spawn_blocking(move || fs4::fs_std::FileExt::lock_shared(&f).map(|_| f))
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?
        .map_err(RedisError::Io)
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
    let lease_path = dir.join("users.lock");
    let lease = Some(take_lease(&lease_path).await?);
    let joined = |lease| EmbeddedRedis {
        url: url.clone(),
        socket: socket.clone(),
        lease_path: lease_path.clone(),
        lease,
        server: None,
    };
    if ping(&socket).await {
        return Ok(joined(lease));
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
        return Ok(joined(lease));
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
                lease_path,
                lease,
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
        let mut b = ensure(&dir, Path::new("redis-server")).await.unwrap();
        assert!(!b.owned(), "a running server must be reused");
        assert_eq!(a.socket, b.socket);
        // The starter finishes first: the other user keeps its server.
        a.stop();
        assert!(
            ping(&b.socket).await,
            "stopped while another user needed it"
        );
        // The last user out stops it, although it did not start it.
        b.stop();
        assert!(!ping(&b.socket).await);
        assert!(dir.join("appendonlydir").exists(), "AOF must be on");
        std::fs::remove_dir_all(&dir).ok();
    }

    /// CI once saw the last user leave the server running: a child forked by another thread
    /// still held a copy of the lease descriptor when the lease was dropped. Here a child
    /// holds it for 100 ms before it execs, exactly while the last user stops.
    #[tokio::test]
    async fn a_forked_child_does_not_keep_the_server_alive() {
        use std::os::unix::process::CommandExt;
        let dir = std::env::temp_dir().join(format!("ts-redis-fork-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut a = ensure(&dir, Path::new("redis-server")).await.unwrap();
        let mut cmd = std::process::Command::new("true");
        // SAFETY: nanosleep(2) is async-signal-safe and only reads the timespec on our stack.
        unsafe {
            cmd.pre_exec(|| {
                let t = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 100_000_000,
                };
                libc::nanosleep(&t, std::ptr::null_mut());
                Ok(())
            });
        }
        let forked = std::thread::spawn(move || cmd.status().unwrap());
        std::thread::sleep(Duration::from_millis(20));
        a.stop();
        assert!(forked.join().unwrap().success());
        let log = std::fs::read_to_string(dir.join("redis.log")).unwrap_or_default();
        assert!(
            !ping(&a.socket).await,
            "server left running; its log:\n{log}"
        );
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
