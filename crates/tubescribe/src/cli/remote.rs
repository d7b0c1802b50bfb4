//! The client commands (`submit`, `status`, `cancel`, `retry`): requests to a running server
//! (`tubescribe serve`) through [`crate::client`], printed for people or as JSON lines.
//!
//! Exit codes: 0 on success, 2 for a refused input (HTTP 400, or a task id refused before
//! sending), 1 for any other failure.

use clap::Args;

use crate::client::{Client, ClientError};
use crate::domain::manifest::TaskStatus;
use crate::domain::Stage;

/// Flags of the client subcommands.
#[derive(Debug, Args)]
pub(super) struct ClientArgs {
    /// The server's base URL.
    #[arg(
        long,
        env = "TUBESCRIBE_SERVER",
        default_value = "http://127.0.0.1:8080"
    )]
    server: String,
    /// Bearer token for submit, cancel and retry.
    #[arg(long, env = "TUBESCRIBE_API_TOKEN", hide_env_values = true)]
    api_token: Option<String>,
    /// Print JSON (one object per line) for scripts.
    #[arg(long)]
    json: bool,
}

impl ClientArgs {
    fn client(&self) -> Client {
        Client::new(&self.server, self.api_token.clone())
    }
}

/// `submit`: one line per URL (`<task id>  <status>`, `(existing task)` when joined).
pub(super) async fn submit(a: &ClientArgs, urls: &[String], fresh: bool) -> i32 {
    let c = a.client();
    let mut code = 0;
    for u in urls {
        match c.submit(u, fresh).await {
            Ok(v) if a.json => println!("{v}"),
            Ok(v) => println!(
                "{}  {}{}",
                status_str(&v["taskId"]),
                status_str(&v["status"]),
                if v["existing"] == true {
                    "  (existing task)"
                } else {
                    ""
                }
            ),
            Err(e) => code = code.max(failed(u, &e)),
        }
    }
    code
}

/// `status`: the task `id`, or the newest 50 tasks and their count.
pub(super) async fn status(a: &ClientArgs, id: Option<&str>) -> i32 {
    let c = a.client();
    let r = match id {
        Some(id) => c.get(id).await,
        None => c.list(50).await,
    };
    let v = match r {
        Ok(v) => v,
        Err(e) => return failed(id.unwrap_or("status"), &e),
    };
    match (id, a.json) {
        (Some(_), true) => println!("{v}"),
        (Some(_), false) => print_manifest(&v),
        (None, json) => {
            for t in v["tasks"].as_array().into_iter().flatten() {
                if json {
                    println!("{t}");
                } else {
                    print_manifest(t);
                }
            }
            if !json {
                println!("{} task(s)", v["total"].as_u64().unwrap_or(0));
            }
        }
    }
    0
}

/// `cancel`: asks the server to cancel task `id`.
pub(super) async fn cancel(a: &ClientArgs, id: &str) -> i32 {
    task_action(id, a.client().cancel(id).await, a.json)
}

/// `retry`: asks the server to run task `id` again.
pub(super) async fn retry(a: &ClientArgs, id: &str) -> i32 {
    task_action(id, a.client().retry(id).await, a.json)
}

/// Prints a client error and returns the exit code: 2 for a refused input (HTTP 400, or a
/// task id refused before sending), 1 otherwise.
fn failed(what: &str, e: &ClientError) -> i32 {
    match e {
        // The message already quotes the id.
        ClientError::InvalidId(_) => eprintln!("error: {e}"),
        _ => eprintln!("error: {what}: {e}"),
    }
    match e {
        ClientError::InvalidId(_) | ClientError::Api { status: 400, .. } => 2,
        _ => 1,
    }
}

fn status_str(v: &serde_json::Value) -> &str {
    v.as_str().unwrap_or("?")
}

/// Prints a task (a manifest as the API answers it): id, status (`⚠` before
/// `completed_with_warnings`), title, each stage, then the failure or the warnings.
fn print_manifest(m: &serde_json::Value) {
    let title = crate::domain::manifest::display_title(m["video"]["title"].as_str().unwrap_or(""));
    let status = status_str(&m["status"]);
    let mark = if status == TaskStatus::CompletedWithWarnings.as_str() {
        "⚠ "
    } else {
        ""
    };
    println!("{}  {mark}{status}  {title}", status_str(&m["task_id"]));
    for s in Stage::ALL {
        let r = &m["stages"][s.queue_name()];
        let err = r["error"]
            .as_str()
            .map(|e| format!("  {e}"))
            .unwrap_or_default();
        println!(
            "    {:<10} {:<9} {:>3.0}%{err}",
            s.queue_name(),
            status_str(&r["state"]),
            r["progress"].as_f64().unwrap_or(0.0)
        );
    }
    if let Some(e) = m["error"]["message"].as_str() {
        println!("    failed in {}: {e}", status_str(&m["error"]["stage"]));
    }
    for w in m["warnings"].as_array().into_iter().flatten() {
        println!("    warning: {}", status_str(&w["message"]));
    }
}

/// Prints the answer of a cancel or retry request (`{taskId, status}`, and a retry's `note`
/// on its own line) and returns the exit code.
fn task_action(id: &str, answer: Result<serde_json::Value, ClientError>, json: bool) -> i32 {
    match answer {
        Ok(v) if json => {
            println!("{v}");
            0
        }
        Ok(v) => {
            println!("{}  {}", status_str(&v["taskId"]), status_str(&v["status"]));
            if let Some(note) = v["note"].as_str() {
                println!("    {note}");
            }
            0
        }
        Err(e) => failed(id, &e),
    }
}
