//! The retention policy (`[retention]`, [`Retention`]): how long after a task ended its
//! downloaded media, its `audio.wav` and the task itself are kept. Transcripts and summaries
//! are never pruned on their own; `task_days` deletes the whole task.
//!
//! A pass ([`pass`]) looks at every task that ended (completed, failed or cancelled) and,
//! counting from when it ended ([`Manifest::ended_at`]), deletes what is due: files through
//! the store's [`TaskDir::prune_if`] (which records them under `pruned` in the manifest, so no
//! listing offers them and a re-run downloads the media again), whole tasks through
//! [`delete::remove`]. Each deletion is logged, counted in `/metrics`
//! (`tubescribe_pruned_files_total{kind}`, `tubescribe_pruned_bytes_total{kind}`,
//! `tubescribe_tasks_deleted_total{reason="retention"}`) and announced as `task.pruned` or
//! `task.deleted`.
//!
//! `tubescribe prune` runs one pass now (`--dry-run`: says what it would delete). Worker
//! processes run one every `[retention] interval_s` under a lease in Redis
//! ([`RETENTION_LEASE`]), so one worker prunes per period ([`spawn`]).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::app::delete;
use crate::app::tasks::TaskOpError;
use crate::config::Retention;
use crate::domain::keys::RETENTION_LEASE;
use crate::domain::manifest::{now_ms, Manifest, PruneKind, PrunedFile};
use crate::engine::producer::Producer;
use crate::observe::events::EventLog;
use crate::observe::metrics;
use crate::store::{DataDir, TaskDir};

/// What the policy deletes from one task now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Due {
    /// Nothing (the task has not ended, or nothing is old enough).
    Nothing,
    /// The whole task (`task_days`).
    Task,
    /// Its files of these kinds (`media_days`, `audio_days`; only kinds it still has).
    Files(Vec<PruneKind>),
}

/// What `policy` deletes from the task `m` at `now` (ms since the epoch).
pub fn due(m: &Manifest, policy: &Retention, now: u64) -> Due {
    let Some(ended) = m.ended_at() else {
        return Due::Nothing;
    };
    let age = Duration::from_millis(now.saturating_sub(ended));
    let past = |keep: Option<Duration>| keep.is_some_and(|k| age >= k);
    if past(policy.task) {
        return Due::Task;
    }
    let kinds: Vec<PruneKind> = PruneKind::ALL
        .into_iter()
        .filter(|k| {
            let keep = match k {
                PruneKind::Media => policy.media,
                PruneKind::Audio => policy.audio,
            };
            past(keep) && !TaskDir::outputs_of(m, *k).is_empty()
        })
        .collect();
    if kinds.is_empty() {
        Due::Nothing
    } else {
        Due::Files(kinds)
    }
}

/// What a pass did (or, dry, would do) to one task.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Pruned {
    /// The task id.
    pub task_id: String,
    /// True when the whole task was (would be) deleted.
    pub task_deleted: bool,
    /// The files deleted (would be) on their own, with their kind and size; empty when the
    /// whole task goes.
    pub files: Vec<PrunedFile>,
    /// Bytes freed (would be): the files', or the whole task's.
    pub bytes: u64,
}

/// One pass of `policy` over every task in `data` (see the module docs); with `dry_run`,
/// nothing is deleted and the answer says what would be. Tasks whose record cannot be read
/// are left alone; what deletes interrupted by a crash left is removed.
///
/// # Errors
/// Redis (removing a task's jobs) or IO errors; the pass stops at the first.
pub async fn pass(
    data: &DataDir,
    producer: &Producer,
    log: &EventLog,
    policy: &Retention,
    dry_run: bool,
) -> Result<Vec<Pruned>, TaskOpError> {
    if !dry_run {
        data.sweep_deleted();
    }
    let now = now_ms();
    let mut out = Vec::new();
    for id in data.task_ids()? {
        let task = data.task(&id);
        let Ok(m) = task.read_manifest() else {
            continue;
        };
        let p = match due(&m, policy, now) {
            Due::Nothing => continue,
            Due::Task if dry_run => Pruned {
                task_id: id,
                task_deleted: true,
                files: Vec::new(),
                bytes: m
                    .stages
                    .values()
                    .flat_map(|r| &r.outputs)
                    .map(|o| o.bytes)
                    .sum(),
            },
            Due::Task => match delete::remove(data, producer, log, &id, "retention").await {
                Ok(removed) => {
                    metrics::count_pruned("task", removed.files, removed.bytes);
                    metrics::count_deleted("retention");
                    Pruned {
                        task_id: id,
                        task_deleted: true,
                        files: Vec::new(),
                        bytes: removed.bytes,
                    }
                }
                // Deleted meanwhile, or (retried meanwhile) a job runs again: not ours now.
                Err(TaskOpError::NotFound(_) | TaskOpError::Conflict(_)) => continue,
                Err(e) => return Err(e),
            },
            Due::Files(kinds) if dry_run => {
                let files: Vec<PrunedFile> = kinds
                    .iter()
                    .flat_map(|k| {
                        TaskDir::outputs_of(&m, *k)
                            .into_iter()
                            .map(move |o| PrunedFile {
                                kind: *k,
                                name: o.name,
                                bytes: o.bytes,
                                at: now,
                            })
                    })
                    .collect();
                Pruned {
                    task_id: id,
                    task_deleted: false,
                    bytes: files.iter().map(|f| f.bytes).sum(),
                    files,
                }
            }
            Due::Files(kinds) => {
                let wanted = Due::Files(kinds.clone());
                // Checked again on the current record, under its lock: a retry meanwhile wins.
                let files = task.prune_if(&kinds, |cur| due(cur, policy, now) == wanted)?;
                if files.is_empty() {
                    continue;
                }
                for f in &files {
                    metrics::count_pruned(f.kind.as_str(), 1, f.bytes);
                    tracing::info!(task = %id, kind = f.kind.as_str(), file = %f.name, bytes = f.bytes, "retention: file deleted");
                }
                if let Err(e) = log.task_pruned(&id, &files).await {
                    tracing::warn!(task = %id, error = %e, "cannot record task.pruned");
                }
                Pruned {
                    task_id: id,
                    task_deleted: false,
                    bytes: files.iter().map(|f| f.bytes).sum(),
                    files,
                }
            }
        };
        out.push(p);
    }
    Ok(out)
}

/// Runs [`pass`] with `policy` over `data` on the Redis at `url` now and then every
/// `policy.interval`, each time only if this process takes the [`RETENTION_LEASE`] for the
/// period (so of many workers one prunes per period), until `stop` fires; then it gives the
/// lease up. While Redis is unreachable a pass is skipped.
pub fn spawn(
    url: String,
    data: DataDir,
    policy: Retention,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let me = crate::engine::attempt::worker_name();
        let mut conn: Option<(Producer, EventLog)> = None;
        loop {
            if conn.is_none() {
                match (Producer::connect(&url).await, EventLog::connect(&url).await) {
                    (Ok(p), Ok(l)) => conn = Some((p, l)),
                    (Err(e), _) => tracing::debug!("retention: {e}"),
                    (_, Err(e)) => tracing::debug!("retention: {e}"),
                }
            }
            if let Some((producer, log)) = &conn {
                let run = async {
                    if !producer
                        .take_lease(RETENTION_LEASE, &me, policy.interval)
                        .await?
                    {
                        return Ok(Vec::new());
                    }
                    pass(&data, producer, log, &policy, false).await
                };
                match run.await {
                    Ok(done) if !done.is_empty() => {
                        let bytes: u64 = done.iter().map(|p| p.bytes).sum();
                        tracing::info!(tasks = done.len(), bytes, "retention pass");
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!("retention pass stopped: {e}"),
                }
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(policy.interval) => {}
            }
        }
        if let Some((p, _)) = conn {
            // A worker started after this one need not wait out the period.
            if let Err(e) = p.release_lease(RETENTION_LEASE, &me).await {
                tracing::debug!("retention: {e}");
            }
            p.close().await;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::manifest::{OutputFile, Source};
    use crate::domain::Stage;

    fn out(name: &str) -> OutputFile {
        OutputFile {
            name: name.into(),
            bytes: 10,
            sha256: String::new(),
        }
    }

    #[test]
    fn what_is_due_counts_from_the_end_of_the_task() {
        let day = Duration::from_secs(86_400);
        let policy = Retention {
            media: Some(day * 30),
            audio: Some(day),
            task: None,
            interval: Duration::from_secs(3600),
        };
        let mut m = Manifest::new("t", "/x", Source::File { path: "/x".into() });
        assert_eq!(due(&m, &policy, now_ms()), Due::Nothing, "not ended");
        m.record_completion(
            Stage::Download,
            vec![out("media.wav")],
            serde_json::json!({}),
        );
        let wav = TaskDir::outputs_of(&m, PruneKind::Audio);
        assert!(wav.is_empty());
        let names = crate::store::names::AUDIO_WAV;
        m.record_completion(Stage::Transcribe, vec![out(names)], serde_json::json!({}));
        m.record_completion(Stage::Summarize, vec![], serde_json::json!({}));
        let ended = m.ended_at().unwrap();
        let at = |d: Duration| ended + d.as_millis() as u64;
        assert_eq!(due(&m, &policy, at(day / 2)), Due::Nothing);
        assert_eq!(
            due(&m, &policy, at(day)),
            Due::Files(vec![PruneKind::Audio])
        );
        assert_eq!(
            due(&m, &policy, at(day * 30)),
            Due::Files(vec![PruneKind::Media, PruneKind::Audio])
        );
        // Pruned files are no longer outputs: nothing more is due.
        m.record_pruned(PruneKind::Audio, &out(names), at(day));
        m.record_pruned(PruneKind::Media, &out("media.wav"), at(day));
        assert_eq!(due(&m, &policy, at(day * 300)), Due::Nothing);
        assert!(m.media_pruned());
        let task = Retention {
            task: Some(day * 90),
            ..policy
        };
        assert_eq!(due(&m, &task, at(day * 90)), Due::Task);
        // Downloaded again: the record of the pruned media goes.
        m.record_completion(
            Stage::Download,
            vec![out("media.wav")],
            serde_json::json!({}),
        );
        assert!(!m.media_pruned());
        assert_eq!(m.pruned.len(), 1);
    }
}
