//! The `tubescribe` binary: installs logging, runs the CLI, prints the error chain once.

#[tokio::main]
async fn main() {
    let filter = tubescribe::config::log_filter()
        .and_then(|dirs| tracing_subscriber::EnvFilter::try_new(dirs).ok())
        .unwrap_or_else(|| {
            tracing_subscriber::EnvFilter::new(
                // bullmq's worker warns when `close` finds a fetcher parked in its blocking pop, which is
                // how we always close (the jobs were handed back first): noise for users.
                "warn,bullmq::worker=error",
            )
        });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let cli = tubescribe::cli::parse();
    match tubescribe::cli::main(cli).await {
        Ok(code) => std::process::exit(code),
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
