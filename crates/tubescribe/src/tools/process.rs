//! The process runner: the only code in tubescribe that spawns programs.
//!
//! Every external program (yt-dlp, ffmpeg, ffprobe, python/pip, redis-server) is started here,
//! never through a shell, in its own process group so that a timeout or a cancel kills the
//! whole tree (ffmpeg and yt-dlp may fork). Standard output is streamed line by line to a
//! callback; standard error is kept as a bounded tail for error messages and classification.
//! On Linux each job child also gets `PR_SET_PDEATHSIG = SIGKILL`, so a worker killed with
//! SIGKILL takes its programs with it.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio_util::sync::CancellationToken;

/// Bytes of standard error kept for messages (the last 64 KiB).
pub const STDERR_TAIL_BYTES: usize = 64 * 1024;

/// A program invocation: program, arguments, working directory, extra environment and a
/// wall-clock limit. Built with chained setters; nothing runs until [`run`].
#[derive(Debug, Clone)]
pub struct Cmd {
    program: OsString,
    args: Vec<OsString>,
    cwd: Option<PathBuf>,
    env: Vec<(OsString, OsString)>,
    timeout: Option<Duration>,
}

impl Cmd {
    /// A command for `program` (a name looked up on `PATH`, or a path).
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Self {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            cwd: None,
            env: Vec::new(),
            timeout: None,
        }
    }

    /// Appends one argument (passed as is: no shell, no globbing, no splitting).
    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Self {
        self.args.push(a.as_ref().to_owned());
        self
    }

    /// Appends arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets the working directory.
    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    /// Adds one environment variable on top of the inherited environment.
    pub fn env(mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> Self {
        self.env
            .push((k.as_ref().to_owned(), v.as_ref().to_owned()));
        self
    }

    /// Kills the process group and fails with [`ProcessError::TimedOut`] after `limit`.
    pub fn timeout(mut self, limit: Duration) -> Self {
        self.timeout = Some(limit);
        self
    }

    /// The program name or path, for messages.
    pub fn program(&self) -> &OsStr {
        &self.program
    }

    /// The command line for logs: program and arguments joined with spaces (not shell-quoted).
    pub fn display(&self) -> String {
        let mut s = self.program.to_string_lossy().into_owned();
        for a in &self.args {
            s.push(' ');
            s.push_str(&a.to_string_lossy());
        }
        s
    }

    fn to_tokio(&self) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(&self.program);
        c.args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0);
        if let Some(d) = &self.cwd {
            c.current_dir(d);
        }
        for (k, v) in &self.env {
            c.env(k, v);
        }
        // A child outlives a worker killed with SIGKILL (no destructor runs), and an orphaned
        // ffmpeg or yt-dlp would keep writing into the task's temp directory while another
        // worker re-runs the job. Ask the kernel to SIGKILL it when we die. (The signal follows
        // the spawning thread; runtime worker threads live as long as the process.)
        #[cfg(target_os = "linux")]
        {
            // SAFETY: getpid(2) is async-signal-safe and touches no memory.
            let parent = unsafe { libc::getpid() };
            // SAFETY: the closure runs in the forked child before exec and only calls the
            // async-signal-safe prctl(2), getppid(2) and _exit(2).
            unsafe {
                c.pre_exec(move || {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    // The parent may have died before prctl took effect.
                    if libc::getppid() != parent {
                        libc::_exit(137);
                    }
                    Ok(())
                });
            }
        }
        c
    }
}

/// How a finished program ended.
#[derive(Debug, Clone)]
pub struct Output {
    /// Exit code; `-N` when the program was ended by signal `N`.
    pub code: i32,
    /// The last 64 KiB of standard error, lossily decoded as UTF-8.
    pub stderr_tail: String,
    /// Wall-clock time from spawn to exit.
    pub wall: Duration,
}

impl Output {
    /// True when the program exited with code 0.
    pub fn success(&self) -> bool {
        self.code == 0
    }

    /// The signal that ended the program (`Some(11)` for SIGSEGV), `None` when it exited.
    pub fn signal(&self) -> Option<i32> {
        (self.code < 0).then_some(-self.code)
    }

    /// The last non-empty line of standard error, trimmed (empty when there is none).
    pub fn last_stderr_line(&self) -> &str {
        self.stderr_tail
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("")
    }
}

/// Why a program could not be run to completion.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The program is not installed (not on `PATH` or the path does not exist). Not retryable.
    #[error("program `{program}` was not found: {hint}")]
    NotFound {
        /// Program name or path as given.
        program: String,
        /// How to install it.
        hint: String,
    },
    /// The OS refused to start the program. Not retryable.
    #[error("could not start `{program}`: {source}")]
    Spawn {
        /// Program name or path as given.
        program: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The wall-clock limit passed; the process group was killed. Retryable.
    #[error("timeout: `{program}` ran longer than {limit:?} and was killed")]
    TimedOut {
        /// Program name or path.
        program: String,
        /// The limit that passed.
        limit: Duration,
    },
    /// The caller cancelled; the process group was killed. Not retryable.
    #[error("cancelled: `{program}` was killed")]
    Cancelled {
        /// Program name or path.
        program: String,
    },
    /// The program exited non-zero (see [`ensure_success`]). Displays as one sentence with
    /// the last standard-error line; the raw tail is kept for records and logs.
    #[error("{what} failed (exit code {code}): {last_line}")]
    Failed {
        /// What was being done, e.g. "pip download".
        what: String,
        /// Exit code (negative: killed by that signal).
        code: i32,
        /// The last standard-error line.
        last_line: String,
        /// The program's raw standard error: its last [`STDERR_TAIL_BYTES`] bytes (64 KiB),
        /// lossily decoded as UTF-8.
        stderr_tail: String,
    },
    /// The program was killed by a signal (a crash such as SIGSEGV, or SIGKILL from the
    /// OOM killer). Retryable: the same input may well succeed on another run.
    #[error("{what} was killed by {} ({})", signal_name(*signal), signal_description(*signal))]
    Killed {
        /// What was being done, e.g. "ffmpeg decode".
        what: String,
        /// The signal number (11 = SIGSEGV).
        signal: i32,
        /// The program's raw standard error tail, as for [`ProcessError::Failed`].
        stderr_tail: String,
    },
    /// Reading the program's output failed.
    #[error("i/o error while running `{program}`: {source}")]
    Io {
        /// Program name or path.
        program: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl ProcessError {
    /// Whether running the same command again may succeed (timeouts and i/o hiccups).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ProcessError::TimedOut { .. } | ProcessError::Io { .. } | ProcessError::Killed { .. }
        )
    }

    /// The raw standard-error tail of a program that exited non-zero (at most 64 KiB), for
    /// records and logs; `None` for the other errors.
    pub fn stderr_tail(&self) -> Option<&str> {
        match self {
            ProcessError::Failed { stderr_tail, .. } | ProcessError::Killed { stderr_tail, .. } => {
                Some(stderr_tail)
            }
            _ => None,
        }
    }
}

/// Turns a non-zero exit into [`ProcessError::Failed`] naming `what` and the last stderr line
/// (and carrying the whole stderr tail), and a death by signal into [`ProcessError::Killed`].
pub fn ensure_success(out: &Output, what: &str) -> Result<(), ProcessError> {
    if out.success() {
        Ok(())
    } else if let Some(signal) = out.signal() {
        Err(ProcessError::Killed {
            what: what.to_string(),
            signal,
            stderr_tail: out.stderr_tail.clone(),
        })
    } else {
        Err(ProcessError::Failed {
            what: what.to_string(),
            code: out.code,
            last_line: out.last_stderr_line().to_string(),
            stderr_tail: out.stderr_tail.clone(),
        })
    }
}

/// The conventional name of signal `n` (`SIGSEGV` for 11); `signal n` for others.
pub fn signal_name(n: i32) -> String {
    let name = match n {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTERM => "SIGTERM",
        _ => return format!("signal {n}"),
    };
    name.to_string()
}

/// What signal `n` usually means, in a few words (glibc's `strsignal` texts, lower-cased).
fn signal_description(n: i32) -> &'static str {
    match n {
        libc::SIGSEGV => "segmentation fault: the program crashed",
        libc::SIGBUS => "bus error: the program crashed",
        libc::SIGILL => "illegal instruction: the program crashed",
        libc::SIGFPE => "arithmetic exception: the program crashed",
        libc::SIGABRT => "aborted: the program crashed",
        libc::SIGKILL => "killed, e.g. by the out-of-memory killer",
        libc::SIGTERM | libc::SIGINT | libc::SIGHUP | libc::SIGQUIT => "stopped from outside",
        libc::SIGPIPE => "broken pipe",
        _ => "ended by a signal",
    }
}

/// The error for a program that could not be started: `NotFound` (with how to install it)
/// when it is not on the PATH, otherwise `Spawn`.
fn spawn_error(program: &str, e: std::io::Error) -> ProcessError {
    if e.kind() == std::io::ErrorKind::NotFound {
        ProcessError::NotFound {
            hint: install_hint(program),
            program: program.to_owned(),
        }
    } else {
        ProcessError::Spawn {
            program: program.to_owned(),
            source: e,
        }
    }
}

/// An install hint for the programs tubescribe runs.
fn install_hint(program: &str) -> String {
    let base = Path::new(program)
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    match base.as_str() {
        "ffmpeg" | "ffprobe" => "install it with `apt-get install ffmpeg`".into(),
        "redis-server" => "install it with `apt-get install redis-server`, or point tubescribe at a running Redis with --redis-url / TUBESCRIBE_REDIS_URL".into(),
        "yt-dlp" => "install it with `pip install yt-dlp` (scripts/setup.sh does this into .venv) or set TUBESCRIBE_YTDLP to its path".into(),
        "python3" | "python" => "install Python 3 with pip, or set TUBESCRIBE_PYTHON".into(),
        _ => "install it or fix the configured path".into(),
    }
}

/// Sends SIGKILL to the whole process group led by `pid` (the child was started with
/// `process_group(0)`, so its pgid equals its pid).
fn kill_group(pid: Option<u32>) {
    if let Some(pid) = pid {
        // SAFETY: kill(2) with a negative pid signals a process group; no memory is touched.
        unsafe {
            libc::kill(-(pid as i32), libc::SIGKILL);
        }
    }
}

/// Runs `cmd` to completion, streaming each standard-output line (without its newline) to
/// `on_stdout_line`, and returns its exit code and standard-error tail.
///
/// The child runs in its own process group; on `cancel` or on the command's timeout the whole
/// group gets SIGKILL and the child is reaped before this returns, so no process outlives it.
/// A non-zero exit is NOT an error here (callers classify it; see [`ensure_success`]).
///
/// Errors: [`ProcessError::NotFound`] with an install hint, `Spawn`, `TimedOut`, `Cancelled`, `Io`.
pub async fn run(
    cmd: &Cmd,
    cancel: &CancellationToken,
    on_stdout_line: &mut (dyn FnMut(&str) + Send),
) -> Result<Output, ProcessError> {
    let program = cmd.program.to_string_lossy().into_owned();
    tracing::debug!(cmd = %cmd.display(), "spawn");
    let started = std::time::Instant::now();
    let mut child = cmd
        .to_tokio()
        .spawn()
        .map_err(|e| spawn_error(&program, e))?;
    let pid = child.id();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();

    // Standard error is drained concurrently so a chatty program never blocks on a full pipe.
    let stderr_task = tokio::spawn(async move {
        let mut tail: Vec<u8> = Vec::new();
        if let Some(mut e) = stderr {
            let mut buf = [0u8; 8192];
            loop {
                match e.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        tail.extend_from_slice(&buf[..n]);
                        if tail.len() > 2 * STDERR_TAIL_BYTES {
                            let cut = tail.len() - STDERR_TAIL_BYTES;
                            tail.drain(..cut);
                        }
                    }
                }
            }
        }
        if tail.len() > STDERR_TAIL_BYTES {
            let cut = tail.len() - STDERR_TAIL_BYTES;
            tail.drain(..cut);
        }
        String::from_utf8_lossy(&tail).into_owned()
    });

    let deadline = async {
        match cmd.timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);

    let mut lines = stdout.map(|s| BufReader::new(s).lines());
    let mut stdout_open = lines.is_some();
    enum End {
        Exited(std::io::Result<std::process::ExitStatus>),
        Timeout,
        Cancel,
    }
    let end = loop {
        tokio::select! {
            line = async { lines.as_mut().expect("checked").next_line().await }, if stdout_open => {
                match line {
                    Ok(Some(l)) => on_stdout_line(&l),
                    Ok(None) => stdout_open = false,
                    Err(e) => {
                        kill_group(pid);
                        let _ = child.wait().await;
                        return Err(ProcessError::Io { program, source: e });
                    }
                }
            }
            st = child.wait(), if !stdout_open => break End::Exited(st),
            _ = &mut deadline => break End::Timeout,
            _ = cancel.cancelled() => break End::Cancel,
        }
    };
    match end {
        End::Exited(st) => {
            // The leader exited; make sure no grandchild of its group lingers.
            kill_group(pid);
            let st = st.map_err(|e| ProcessError::Io {
                program: program.clone(),
                source: e,
            })?;
            let stderr_tail = stderr_task.await.unwrap_or_default();
            use std::os::unix::process::ExitStatusExt;
            let code = st.code().unwrap_or_else(|| -st.signal().unwrap_or(1));
            Ok(Output {
                code,
                stderr_tail,
                wall: started.elapsed(),
            })
        }
        End::Timeout => {
            kill_group(pid);
            let _ = child.wait().await;
            Err(ProcessError::TimedOut {
                program,
                limit: cmd.timeout.unwrap_or_default(),
            })
        }
        End::Cancel => {
            kill_group(pid);
            let _ = child.wait().await;
            Err(ProcessError::Cancelled { program })
        }
    }
}

/// Runs `cmd` and collects its whole standard output (for small outputs such as ffprobe JSON).
pub async fn run_collect(
    cmd: &Cmd,
    cancel: &CancellationToken,
) -> Result<(Output, String), ProcessError> {
    let mut out = String::new();
    let o = run(cmd, cancel, &mut |l: &str| {
        out.push_str(l);
        out.push('\n');
    })
    .await?;
    Ok((o, out))
}

/// A long-running program owned by this process (the embedded redis-server). Dropping it sends
/// SIGTERM to the program and waits up to 10 s for it to exit (SIGKILL after that).
#[derive(Debug)]
pub struct Daemon {
    child: Option<std::process::Child>,
    name: String,
}

impl Daemon {
    /// Starts `cmd` detached from our stdin, with stdout/stderr discarded (daemons log to files).
    /// The timeout and cancel settings of `cmd` do not apply.
    pub fn spawn(cmd: &Cmd) -> Result<Daemon, ProcessError> {
        let program = cmd.program.to_string_lossy().into_owned();
        let mut c = std::process::Command::new(&cmd.program);
        c.args(&cmd.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(d) = &cmd.cwd {
            c.current_dir(d);
        }
        for (k, v) in &cmd.env {
            c.env(k, v);
        }
        use std::os::unix::process::CommandExt;
        c.process_group(0);
        let child = c.spawn().map_err(|e| spawn_error(&program, e))?;
        Ok(Daemon {
            child: Some(child),
            name: program,
        })
    }

    /// The OS process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Returns the exit code if the program has already exited.
    pub fn try_exited(&mut self) -> Option<i32> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
            .map(|s| s.code().unwrap_or(-1))
    }

    /// Lets the program run on after this handle (and this process) is gone.
    pub fn detach(mut self) {
        self.child.take();
    }

    /// Stops the program: SIGTERM, then up to 10 s for it to exit, then SIGKILL.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid; no memory is touched.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let t0 = std::time::Instant::now();
            while t0.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = c.try_wait() {
                    tracing::debug!(daemon = %self.name, "stopped");
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn streams_stdout_and_keeps_stderr_tail() {
        let cmd = Cmd::new("sh").args(["-c", "echo one; echo two; echo oops >&2; exit 3"]);
        let mut seen = Vec::new();
        let out = run(&cmd, &CancellationToken::new(), &mut |l: &str| {
            seen.push(l.to_string())
        })
        .await
        .unwrap();
        assert_eq!(seen, vec!["one", "two"]);
        assert_eq!(out.code, 3);
        assert_eq!(out.last_stderr_line(), "oops");
        let err = ensure_success(&out, "the test script").unwrap_err();
        assert_eq!(
            err.to_string(),
            "the test script failed (exit code 3): oops"
        );
        assert_eq!(err.stderr_tail(), Some("oops\n"));
    }

    #[tokio::test]
    async fn a_program_killed_by_a_signal_is_retryable_and_named() {
        let cmd = Cmd::new("sh").args(["-c", "echo 'about to crash' >&2; kill -SEGV $$"]);
        let out = run(&cmd, &CancellationToken::new(), &mut |_l: &str| {})
            .await
            .unwrap();
        assert_eq!(out.signal(), Some(libc::SIGSEGV));
        let err = ensure_success(&out, "ffmpeg decode").unwrap_err();
        assert_eq!(
            err.to_string(),
            "ffmpeg decode was killed by SIGSEGV (segmentation fault: the program crashed)"
        );
        assert!(err.is_retryable());
        assert_eq!(err.stderr_tail(), Some("about to crash\n"));
        assert_eq!(signal_name(libc::SIGKILL), "SIGKILL");
        assert_eq!(signal_name(64), "signal 64");
    }

    #[tokio::test]
    async fn a_failure_keeps_the_raw_stderr_tail_but_says_one_line() {
        let script = "i=0; while [ $i -lt 20000 ]; do echo \"line $i\" >&2; i=$((i+1)); done; echo 'fatal: the end' >&2; exit 1";
        let out = run(
            &Cmd::new("sh").args(["-c", script]),
            &CancellationToken::new(),
            &mut |_l: &str| {},
        )
        .await
        .unwrap();
        let err = ensure_success(&out, "the chatty tool").unwrap_err();
        assert_eq!(
            err.to_string(),
            "the chatty tool failed (exit code 1): fatal: the end"
        );
        let tail = err.stderr_tail().unwrap();
        assert!(tail.len() <= STDERR_TAIL_BYTES, "{}", tail.len());
        assert!(tail.ends_with("line 19999\nfatal: the end\n"));
        assert!(!tail.contains("line 0\n"));
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_group() {
        // The shell forks a grandchild `sleep`; both must be gone after the timeout.
        let dir = std::env::temp_dir().join(format!("ts-proc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pidfile = dir.join("pid");
        let script = format!("sleep 30 & echo $! > {}; wait", pidfile.display());
        let cmd = Cmd::new("sh")
            .args(["-c", &script])
            .timeout(Duration::from_millis(300));
        let err = run(&cmd, &CancellationToken::new(), &mut |_l: &str| {})
            .await
            .unwrap_err();
        assert!(matches!(err, ProcessError::TimedOut { .. }), "{err}");
        assert!(err.is_retryable());
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Alive = present and not a zombie (in a container, pid 1 may never reap orphans).
        let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit(") ")
                    .next()
                    .is_some_and(|rest| !rest.starts_with('Z'))
            })
            .unwrap_or(false);
        assert!(!alive, "grandchild sleep {pid} survived the timeout");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[tokio::test]
    async fn cancel_stops_the_program() {
        let token = CancellationToken::new();
        let t2 = token.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            t2.cancel();
        });
        let t0 = std::time::Instant::now();
        let err = run(&Cmd::new("sleep").arg("30"), &token, &mut |_l: &str| {})
            .await
            .unwrap_err();
        assert!(matches!(err, ProcessError::Cancelled { .. }));
        assert!(t0.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn missing_program_says_how_to_install() {
        let err = run(
            &Cmd::new("ffmpeg-definitely-missing"),
            &CancellationToken::new(),
            &mut |_l: &str| {},
        )
        .await
        .unwrap_err();
        assert!(matches!(err, ProcessError::NotFound { .. }));
        let err = run(
            &Cmd::new("/nonexistent/redis-server"),
            &CancellationToken::new(),
            &mut |_l: &str| {},
        )
        .await
        .unwrap_err();
        assert!(
            err.to_string().contains("apt-get install redis-server"),
            "{err}"
        );
    }
}
