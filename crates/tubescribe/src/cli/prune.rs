//! The commands that delete on this machine's data directory through the runtime (like
//! `stats`): `tubescribe prune [--dry-run]`, one pass of the retention policy now
//! ([`crate::app::retention::pass`]), and `tubescribe delete --local`.

use anyhow::Result;

use crate::app::retention::Pruned;
use crate::app::runtime::Runtime;
use crate::config::Config;
use crate::observe::events::EventLog;

/// `prune`: applies the policy of `cfg` (`--dry-run`: only says what it would delete) and
/// prints one line per file or task — with `json`, one JSON object per task (the pass's
/// [`Pruned`] plus `dryRun`) — then, for people, the totals.
pub(super) async fn prune(cfg: Config, dry_run: bool, json: bool) -> Result<i32> {
    let policy = cfg.retention.clone();
    let rt = Runtime::builder(cfg).start().await?;
    let done = async {
        let producer = rt.producer().await?;
        let log = EventLog::connect(rt.url()).await?;
        let r = crate::app::retention::pass(rt.data(), &producer, &log, &policy, dry_run).await;
        producer.close().await;
        anyhow::Ok(r?)
    }
    .await;
    rt.shutdown(std::time::Duration::ZERO).await;
    let done = done?;
    super::stdout_may_close();
    for p in &done {
        if json {
            let mut v = serde_json::to_value(p)?;
            v["dryRun"] = serde_json::json!(dry_run);
            println!("{v}");
        } else {
            print_pruned(p, dry_run);
        }
    }
    if !json {
        let files: usize = done.iter().map(|p| p.files.len()).sum();
        let tasks = done.iter().filter(|p| p.task_deleted).count();
        let bytes: u64 = done.iter().map(|p| p.bytes).sum();
        println!(
            "{} {files} file(s) and {tasks} whole task(s), {}",
            if dry_run { "would delete" } else { "deleted" },
            super::megabytes(bytes)
        );
    }
    Ok(0)
}

/// One task's lines: `<id>  <file>  <kind>  <size>`, or `<id>  the whole task  <size>`, after
/// `deleted` or `would delete`.
fn print_pruned(p: &Pruned, dry_run: bool) {
    let verb = if dry_run { "would delete" } else { "deleted" };
    if p.task_deleted {
        println!(
            "{verb}  {}  the whole task  {}",
            p.task_id,
            super::megabytes(p.bytes)
        );
    }
    for f in &p.files {
        println!(
            "{verb}  {}  {}  {}  {}",
            p.task_id,
            f.name,
            f.kind.as_str(),
            super::megabytes(f.bytes)
        );
    }
}

/// `delete --local`: deletes each task of `ids` in this machine's data directory (`force`:
/// running ones too, cancelled first), printed like the server's answers.
pub(super) async fn delete_local(
    cfg: Config,
    ids: &[String],
    force: bool,
    json: bool,
) -> Result<i32> {
    let rt = Runtime::builder(cfg).start().await?;
    let mut code = 0;
    let run = async {
        let producer = rt.producer().await?;
        let log = EventLog::connect(rt.url()).await?;
        for id in ids {
            let r = crate::app::delete::delete_task(rt.data(), &producer, &log, id, force).await;
            match r {
                Ok(d) if json => println!("{}", serde_json::to_value(&d)?),
                Ok(d) => super::remote::print_deleted(&serde_json::to_value(&d)?),
                Err(e) => {
                    code = 1;
                    if json {
                        println!("{}", super::error_json(Some(id), &e.to_string()));
                    } else {
                        eprintln!("error: {id}: {e}");
                    }
                }
            }
        }
        producer.close().await;
        anyhow::Ok(())
    }
    .await;
    rt.shutdown(std::time::Duration::ZERO).await;
    run?;
    Ok(code)
}
