//! The client commands (`submit`, `status`, `get`, `cancel`, `retry`, `delete`): requests to a running
//! server (`tubescribe serve`) through [`crate::client`], printed for people or, with
//! `--json`, as JSON lines on stdout — errors included (`{"error": {…}, "input": …}`).
//!
//! Exit codes: 0 on success, 2 for a refused input (HTTP 400, or a task id refused before
//! sending), 1 for any other failure.

use std::io::Write;

use clap::Args;

use crate::client::{Client, ClientError, SubmitRequest};
use crate::domain::manifest::{Source, TaskStatus};
use crate::domain::Stage;
use crate::store::names;

/// The server a client command talks to.
#[derive(Debug, Args)]
pub(super) struct ServerArgs {
    /// The server's base URL.
    #[arg(
        long,
        env = "TUBESCRIBE_SERVER",
        default_value = DEFAULT_SERVER
    )]
    server: String,
}

/// The `--server` default.
const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

/// Flags of the client subcommands that answer JSON for scripts.
#[derive(Debug, Args)]
pub(super) struct ClientArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Print JSON (one object per line) for scripts; errors too.
    #[arg(long)]
    pub(super) json: bool,
}

/// The bearer token of the commands that change tasks (`submit`, `cancel`, `retry`, `delete`).
#[derive(Debug, Args)]
pub(super) struct TokenArgs {
    /// Bearer token, when the server requires one (`serve --api-token`).
    #[arg(long, env = "TUBESCRIBE_API_TOKEN", hide_env_values = true)]
    api_token: Option<String>,
}

impl ServerArgs {
    fn client(&self, token: Option<&TokenArgs>) -> Client {
        Client::new(&self.server, token.and_then(|t| t.api_token.clone()))
    }

    /// ` --server URL` when it is not the default, for the commands we suggest.
    fn flag(&self) -> String {
        let s = self.server.trim_end_matches('/');
        if s == DEFAULT_SERVER {
            String::new()
        } else {
            format!(" --server {s}")
        }
    }
}

/// What `get` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum Format {
    /// The transcript as plain text.
    Txt,
    /// The transcript as SubRip subtitles.
    Srt,
    /// The transcript as WebVTT subtitles.
    Vtt,
    /// The transcript with segment and word times, as JSON.
    Json,
    /// The summary (Markdown).
    Summary,
}

impl Format {
    /// The output file the server serves for it.
    fn file(self) -> &'static str {
        match self {
            Format::Txt => names::TRANSCRIPT_TXT,
            Format::Srt => names::TRANSCRIPT_SRT,
            Format::Vtt => names::TRANSCRIPT_VTT,
            Format::Json => names::TRANSCRIPT_JSON,
            Format::Summary => names::SUMMARY_MD,
        }
    }
}

/// `submit`: one line per URL (`<task id>  <status>`, `(existing task)` when joined; for a
/// playlist or channel expanded with `--playlist`, a line naming its batch, then one such line
/// per video), then the next step on stderr: how to follow the tasks and fetch their results,
/// and the web page.
pub(super) async fn submit(
    a: &ClientArgs,
    t: &TokenArgs,
    urls: &[String],
    req: &SubmitRequest,
) -> i32 {
    let c = a.server.client(Some(t));
    let mut code = 0;
    let mut ids = Vec::new();
    for u in urls {
        match c.submit(u, req).await {
            Ok(v) if a.json => {
                println!("{v}");
                ids.extend(submitted_ids(&v));
            }
            Ok(v) => {
                if v["batch"].is_object() {
                    print_batch(&v["batch"]);
                } else {
                    print_submitted(&v["taskId"], &v["status"], v["existing"] == true);
                }
                ids.extend(submitted_ids(&v));
            }
            Err(e) => code = code.max(failed(u, &e, a.json)),
        }
    }
    if !a.json && !ids.is_empty() {
        let flag = a.server.flag();
        let (follow, id) = match ids.as_slice() {
            [one] => (format!("tubescribe status {one}{flag}"), one.as_str()),
            _ => (format!("tubescribe status{flag}"), "ID"),
        };
        eprintln!(
            "next: follow with `{follow}`, then print the transcript with \
             `tubescribe get {id} --format srt{flag}`; web page: {}/",
            a.server.server.trim_end_matches('/')
        );
    }
    code
}

/// The task ids of a submission's answer: its batch's tasks, or its one task.
fn submitted_ids(v: &serde_json::Value) -> Vec<String> {
    match v["batch"]["items"].as_array() {
        Some(items) => items
            .iter()
            .map(|i| status_str(&i["task_id"]).to_string())
            .collect(),
        None => vec![status_str(&v["taskId"]).to_string()],
    }
}

/// One submitted task for people: `<task id>  <status>`, `  (existing task)` when joined.
fn print_submitted(id: &serde_json::Value, status: &serde_json::Value, existing: bool) {
    println!(
        "{}  {}{}",
        status_str(id),
        status_str(status),
        if existing { "  (existing task)" } else { "" }
    );
}

/// A batch as `submit` answers it (`{batch_id, kind, title, items, statuses}`):
/// `<batch id>  playlist "<title>": N video(s)`, then one [`print_submitted`] line per video.
fn print_batch(b: &serde_json::Value) {
    let items = b["items"].as_array().map_or(&[][..], Vec::as_slice);
    let title = b["title"]
        .as_str()
        .map(|t| format!(" \"{}\"", crate::domain::manifest::display_title(t)))
        .unwrap_or_default();
    println!(
        "{}  {}{title}: {} video(s)",
        status_str(&b["batch_id"]),
        status_str(&b["kind"]),
        items.len()
    );
    for (k, i) in items.iter().enumerate() {
        print_submitted(&i["task_id"], &b["statuses"][k], i["existing"] == true);
    }
}

/// `get`: writes the task's output file of `format` to stdout as the server serves it.
pub(super) async fn get(a: &ServerArgs, id: &str, format: Format) -> i32 {
    match a.client(None).file(id, format.file()).await {
        Ok(bytes) => {
            let mut out = std::io::stdout().lock();
            match out.write_all(&bytes).and_then(|()| out.flush()) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("error: cannot write to stdout: {e}");
                    1
                }
            }
        }
        Err(e) => failed(id, &e, false),
    }
}

/// `status`: the task `id`, or the newest 50 tasks and their count.
pub(super) async fn status(a: &ClientArgs, id: Option<&str>) -> i32 {
    let c = a.server.client(None);
    let r = match id {
        Some(id) => c.get(id).await,
        None => c.list(50).await,
    };
    let v = match r {
        Ok(v) => v,
        Err(e) => return failed(id.unwrap_or(""), &e, a.json),
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
pub(super) async fn cancel(a: &ClientArgs, t: &TokenArgs, id: &str) -> i32 {
    task_action(id, a.server.client(Some(t)).cancel(id).await, a.json)
}

/// `retry`: asks the server to run task `id` again.
pub(super) async fn retry(a: &ClientArgs, t: &TokenArgs, id: &str) -> i32 {
    task_action(id, a.server.client(Some(t)).retry(id).await, a.json)
}

/// `delete`: asks the server to delete each task of `ids` (`force`: running ones too, cancelled
/// first); one line per task ([`print_deleted`]). Exit code: the worst of the tasks'.
pub(super) async fn delete(a: &ClientArgs, t: &TokenArgs, ids: &[String], force: bool) -> i32 {
    let c = a.server.client(Some(t));
    let mut code = 0;
    for id in ids {
        match c.delete(id, force).await {
            Ok(v) if a.json => println!("{v}"),
            Ok(v) => print_deleted(&v),
            Err(e) => code = code.max(failed(id, &e, a.json)),
        }
    }
    code
}

/// One deleted task for people: `<id>  deleted (3 files, 1.2 MB)`, `; cancelled first` when it
/// was queued or running. `v` is the answer of a delete (`{taskId, cancelled, files, bytes}`).
pub(super) fn print_deleted(v: &serde_json::Value) {
    println!(
        "{}  deleted ({} files, {}){}",
        status_str(&v["taskId"]),
        v["files"].as_u64().unwrap_or(0),
        super::megabytes(v["bytes"].as_u64().unwrap_or(0)),
        if v["cancelled"] == true {
            "; cancelled first"
        } else {
            ""
        }
    );
}

/// Prints a client error about `what` (a URL or task id; empty for none) — as a JSON line on
/// stdout when `json`: the message, and the HTTP status and code for an API error — and
/// returns the exit code: 2 for a refused input (HTTP 400, or a task id refused before
/// sending), 1 otherwise.
fn failed(what: &str, e: &ClientError, json: bool) -> i32 {
    match e {
        _ if json => {
            let input = Some(what).filter(|w| !w.is_empty());
            let mut v = super::error_json(input, &e.to_string());
            if let ClientError::Api {
                status,
                code,
                message,
            } = e
            {
                v["error"] =
                    serde_json::json!({"message": message, "status": status, "code": code});
            }
            println!("{v}");
        }
        // The message already quotes the id.
        ClientError::InvalidId(_) => eprintln!("error: {e}"),
        _ if what.is_empty() => eprintln!("error: {e}"),
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
        // The step in the user's words ("reading the file" for a local file's download).
        let step = serde_json::from_value::<Stage>(m["error"]["stage"].clone())
            .ok()
            .zip(serde_json::from_value::<Source>(m["source"].clone()).ok())
            .map_or("running", |(stage, source)| source.step(stage));
        println!("    failed while {step}: {e}");
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
        Err(e) => failed(id, &e, json),
    }
}
