//! The `tubescribe` binary: installs logging, runs the CLI, prints the error chain once.

#[tokio::main]
async fn main() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TUBESCRIBE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let cli = tubescribe::cli::parse();
    match tubescribe::cli::main(cli).await {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}
