//! The only code that knows our Redis names and id shapes: the BullMQ key prefix, task ids,
//! stage and segment job ids, and our own stream names. Stage job ids (`dl-`, `tr-`, `sum-`)
//! are [`crate::domain::Stage::job_id`].

/// BullMQ key prefix (BullMQ's default, so Bull Board finds the queues).
pub const PREFIX: &str = "bull";

/// The BullMQ job name of a segment job (in the `transcribe` queue).
pub const SEGMENT_JOB: &str = "segment";

/// The queue of webhook deliveries (one job per delivery; its id is the message id).
pub const WEBHOOK_QUEUE: &str = "webhook";

/// The stage and job id of a BullMQ job key (`bull:<queue>:<job id>`).
pub fn job_of_key(key: &str) -> Option<(crate::domain::Stage, String)> {
    let rest = key.strip_prefix(PREFIX)?.strip_prefix(':')?;
    let (queue, id) = rest.split_once(':')?;
    Some((
        crate::domain::Stage::from_queue_name(queue)?,
        id.to_string(),
    ))
}

/// The child named by BullMQ's parent failure text `child <key> failed`
/// (`failParentOnFailure`): its stage and job id.
pub fn failed_child(reason: &str) -> Option<(crate::domain::Stage, String)> {
    job_of_key(reason.strip_prefix("child ")?.strip_suffix(" failed")?)
}

/// The job id of segment `index` of `task_id`: `seg<index>-<task_id>`.
pub fn segment_job_id(task_id: &str, index: usize) -> String {
    format!("seg{index}-{task_id}")
}

/// The task id in a segment job id (`seg<i>-<task>`), for mapping queue events to tasks.
pub fn task_of_segment_job(job_id: &str) -> Option<&str> {
    let rest = job_id.strip_prefix("seg")?;
    let (digits, task) = rest.split_once('-')?;
    (!digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit())).then_some(task)
}

/// True for a syntactically valid task id (`[A-Za-z0-9_-]`, 1–100 characters): what
/// task submission produces. Anything else (e.g. `..`) never reaches the data directory.
pub fn valid_task_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 100
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Our own event stream (task-level events BullMQ cannot know about, and alerts).
pub const OWN_STREAM: &str = "tubescribe:events";
/// Approximate length our own stream is trimmed to (`XADD MAXLEN ~`).
pub const OWN_STREAM_MAXLEN: usize = 10_000;

/// The Redis stream the server reads alerts from.
pub const ALERT_STREAM: &str = "tubescribe:alerts";
/// Approximate number of alerts the stream keeps.
pub const ALERT_STREAM_MAXLEN: usize = 1000;

/// The lease the reconciler takes before a pass (`SET NX PX`), so that of many processes
/// only one reconciles per period; its value names the holder (`<host>:<pid>`).
pub const RECONCILER_LEASE: &str = "tubescribe:reconciler";

/// With shared storage (`storage_url = s3://…`): the hash holding a task's record
/// (`json`, the manifest; `v`, its version), `tubescribe:task:<task-id>`.
pub fn task_record(task_id: &str) -> String {
    format!("tubescribe:task:{task_id}")
}

/// With shared storage: a lock of a task's record (`name`: `manifest` or `restart`).
pub fn task_record_lock(task_id: &str, name: &str) -> String {
    format!("tubescribe:task:{task_id}:lock:{name}")
}

/// With shared storage: the set of the ids of all tasks that have a record.
pub const TASK_RECORDS: &str = "tubescribe:tasks";

/// The lease a worker takes before it applies the retention policy (`SET NX PX` for one
/// period), so that of many workers only one prunes per period; its value names the holder.
pub const RETENTION_LEASE: &str = "tubescribe:retention";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Stage;

    #[test]
    fn child_failures_are_followed_to_the_job_that_failed_first() {
        assert_eq!(
            failed_child("child bull:transcribe:seg2-file-abc failed"),
            Some((Stage::Transcribe, "seg2-file-abc".into()))
        );
        assert_eq!(
            failed_child("child bull:download:dl-yt-x_y-base failed"),
            Some((Stage::Download, "dl-yt-x_y-base".into()))
        );
        assert_eq!(failed_child("job stalled more than allowable limit"), None);
        assert_eq!(failed_child("child other:download:dl-x failed"), None);
    }
}
