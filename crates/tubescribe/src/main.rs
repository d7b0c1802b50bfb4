//! The `tubescribe` binary: installs logging, runs the CLI, prints the error chain once.

use std::io::IsTerminal;

fn main() {
    limit_malloc_arenas();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1)
        });
    runtime.block_on(run());
}

/// Caps glibc's malloc arenas at the number of cores (at least 2), before any thread starts.
///
/// glibc gives each new thread that allocates its own arena, up to 8 × cores of them, and an
/// arena keeps what it has held. Transcription runs on tokio's blocking threads, a different
/// one from job to job, and the CTranslate2 engine (MKL, oneDNN) allocates its buffers there,
/// so every job grew the process by another arena's worth. Measured with `tubescribe bench
/// --quick --engine ct2` (tiny.en, base as the language guard, 2 cores): the peak RSS of five
/// solo jobs in a row rose 498 → 688 MB with the default and stayed at 454–489 MB with 2
/// arenas, and the jobs ran faster (a 20 s clip's stage 3.8–5.1 s → 2.6–3.3 s: fewer page
/// faults). The knob is `mallopt(M_ARENA_MAX)` (glibc `mallopt(3)`; the `MALLOC_ARENA_MAX`
/// environment variable sets the same and wins when given).
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let arenas = cores.clamp(2, 64) as libc::c_int;
        // SAFETY: mallopt only sets an allocator parameter; no thread has started yet.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, arenas) };
    }
}

async fn run() {
    let cli = tubescribe::cli::parse();
    let filter = tubescribe::config::log_filter()
        .and_then(|dirs| tracing_subscriber::EnvFilter::try_new(dirs).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new(cli.default_log_filter()));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(tubescribe::cli::log_writer)
        // Colour codes only for a person at a terminal, never into a file or a pipe.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let json = cli.json();
    match tubescribe::cli::main(cli).await {
        Ok(code) => std::process::exit(code),
        Err(e) if json => {
            println!("{}", tubescribe::cli::error_json(None, &chain_message(&e)));
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("error: {}", chain_message(&e));
            std::process::exit(1);
        }
    }
}

/// The error and its causes joined with ": ", skipping a cause whose text the message already
/// contains (our error types embed their cause's text so that `to_string()` alone is complete
/// for manifests and API answers).
fn chain_message(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !msg.contains(&c) {
            msg.push_str(": ");
            msg.push_str(&c);
        }
    }
    msg
}
