//! The `tubescribe` binary: installs logging, runs the CLI, prints the error chain once.

use std::io::IsTerminal;

#[tokio::main]
async fn main() {
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
