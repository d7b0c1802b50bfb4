//! Task records in Redis for deployments without a shared filesystem: the store's
//! [`Records`] backend. A record is a hash `tubescribe:task:<id>` (`json`: the manifest, `v`:
//! its version); a write is compare-and-set on the version in one Lua script, which also adds
//! the id to the set `tubescribe:tasks`. Locks are `SET NX PX` keys holding a random token,
//! released by a compare-and-delete script, expiring by themselves when their holder died.
//!
//! The store calls these synchronously (it does so for its files too), so this module keeps
//! one blocking connection, opened again after an error.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::domain::keys;
use crate::store::remote::{Held, Record, Records};
use crate::store::StoreError;

/// Writes `ARGV[2]` (version `ARGV[3]`) when the record's version is `ARGV[1]` (empty: none).
const PUT_IF: &str = r"
local v = redis.call('HGET', KEYS[1], 'v')
if v == false then v = '' end
if v ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'json', ARGV[2], 'v', ARGV[3])
redis.call('SADD', KEYS[2], ARGV[4])
return 1
";

/// Deletes the lock `KEYS[1]` only while it holds this holder's token `ARGV[1]`.
const UNLOCK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// How often a waiting lock taker asks again.
const LOCK_POLL: Duration = Duration::from_millis(15);

/// Task records on the Redis at one URL.
#[derive(Clone)]
pub struct RedisRecords {
    client: redis::Client,
    conn: Arc<Mutex<Option<redis::Connection>>>,
}

impl std::fmt::Debug for RedisRecords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisRecords").finish_non_exhaustive()
    }
}

fn remote(op: &'static str, what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Remote {
        op,
        what: what.to_string(),
        message: e.to_string(),
    }
}

impl RedisRecords {
    /// Records on the Redis at `url` (connected on first use).
    ///
    /// # Errors
    /// A malformed URL.
    pub fn new(url: &str) -> Result<Self, StoreError> {
        let client = redis::Client::open(url).map_err(|e| remote("open", url, e))?;
        Ok(Self {
            client,
            conn: Arc::new(Mutex::new(None)),
        })
    }

    /// Runs `f` on the connection; on an error the connection is dropped and `f` runs once
    /// more on a new one (Redis restarted, a network blip).
    fn with<T>(
        &self,
        op: &'static str,
        what: &str,
        f: impl Fn(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, StoreError> {
        let mut guard = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let mut last = None;
        for _ in 0..2 {
            if guard.is_none() {
                match self.client.get_connection() {
                    Ok(c) => *guard = Some(c),
                    Err(e) => {
                        last = Some(e);
                        continue;
                    }
                }
            }
            let c = guard.as_mut().expect("connected");
            match f(c) {
                Ok(v) => return Ok(v),
                Err(e) => {
                    *guard = None;
                    last = Some(e);
                }
            }
        }
        Err(remote(
            op,
            what,
            last.map_or_else(|| "no connection".to_string(), |e| e.to_string()),
        ))
    }
}

impl Records for RedisRecords {
    fn get(&self, task: &str) -> Result<Option<Record>, StoreError> {
        let key = keys::task_record(task);
        let (json, v): (Option<Vec<u8>>, Option<u64>) = self.with("read", &key, |c| {
            redis::cmd("HMGET").arg(&key).arg("json").arg("v").query(c)
        })?;
        Ok(json.map(|json| Record {
            json,
            version: v.unwrap_or(0),
        }))
    }

    fn put_if(&self, task: &str, version: Option<u64>, json: &[u8]) -> Result<bool, StoreError> {
        let key = keys::task_record(task);
        let expected = version.map(|v| v.to_string()).unwrap_or_default();
        let next = version.map_or(1, |v| v + 1);
        let script = redis::Script::new(PUT_IF);
        let n: i64 = self.with("write", &key, |c| {
            script
                .key(&key)
                .key(keys::TASK_RECORDS)
                .arg(&expected)
                .arg(json)
                .arg(next)
                .arg(task)
                .invoke(c)
        })?;
        Ok(n == 1)
    }

    fn ids(&self) -> Result<Vec<String>, StoreError> {
        let mut ids: Vec<String> = self.with("list", keys::TASK_RECORDS, |c| {
            redis::cmd("SMEMBERS").arg(keys::TASK_RECORDS).query(c)
        })?;
        ids.sort();
        Ok(ids)
    }

    fn delete(&self, task: &str) -> Result<(), StoreError> {
        let key = keys::task_record(task);
        self.with("delete", &key, |c| {
            redis::pipe()
                .atomic()
                .cmd("DEL")
                .arg(&key)
                .ignore()
                .cmd("SREM")
                .arg(keys::TASK_RECORDS)
                .arg(task)
                .ignore()
                .query::<()>(c)
        })
    }

    fn lock(&self, task: &str, name: &str, ttl: Duration) -> Result<Held, StoreError> {
        let key = keys::task_record_lock(task, name);
        let token = uuid::Uuid::new_v4().simple().to_string();
        loop {
            let got: Option<String> = self.with("lock", &key, |c| {
                redis::cmd("SET")
                    .arg(&key)
                    .arg(&token)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl.as_millis() as u64)
                    .query(c)
            })?;
            if got.is_some() {
                break;
            }
            std::thread::sleep(LOCK_POLL);
        }
        let this = self.clone();
        Ok(Held::new(move || {
            let script = redis::Script::new(UNLOCK);
            let _ = this.with("unlock", &key, |c| {
                script.key(&key).arg(&token).invoke::<i64>(c)
            });
        }))
    }
}
