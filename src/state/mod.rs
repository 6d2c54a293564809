//! The replicated state machine: a deterministic function from the committed log to state.
//!
//! Commands are serde types encoded with bincode behind a one-byte format version. `apply`
//! reads no clock, draws no randomness and does no I/O beyond the store it is handed: every
//! time, id or deadline a command needs is stamped into it before it is proposed. Business
//! failures (a precondition that does not hold) are [`Response`] values, identical on every
//! node; only storage failures are errors, and those stop the node.
//!
//! Layout of the state range (after the store's `s` prefix):
//! - `c/<key>` -> [`ConfigEntry`]: the replicated configuration store. Later features keep their
//!   configuration (tenants, queues, routes, schedules) here under their own key prefixes.
//! - `t/<name>` -> [`TenantEntry`]: a CPI tenant of the pool. The spec is the pool's non-secret
//!   JSON (opaque here, so `state/` does not depend on `pool/`); the credentials arrive already
//!   sealed with the master key, so the log, snapshots and data files never hold them in clear.
//! - `q?/...`: the durable queue (configuration, messages, leases, dedup, dead letters); see
//!   [`queue`] for its layout.
//! - `x/...`: shared secrets (sealed versions, push state, audit log); see [`secrets`].
//! - `sc/<name>`: replicated timers (definition, occurrence cursor, last firings); see
//!   [`schedules`].

#[cfg(test)]
pub(crate) mod harness;
pub mod queue;
pub mod schedules;
pub mod secrets;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::raft::StateMachine;
use crate::store::{keys, Store, StoreError, WriteBatch};

/// Longest name of a replicated resource (tenant, queue, ...).
pub const MAX_RESOURCE_NAME_BYTES: usize = 64;

/// The one naming rule for replicated resources: 1 to [`MAX_RESOURCE_NAME_BYTES`] bytes of
/// `A-Z a-z 0-9 . _ -`, not starting with `.` or `-` (safe in URLs, keys and metric labels).
pub fn is_resource_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_RESOURCE_NAME_BYTES
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        && !name.starts_with(['.', '-'])
}

/// Version byte in front of every encoded command, response and stored value.
pub const FORMAT_V1: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Creates or replaces a configuration document.
    ConfigPut {
        key: String,
        value: Vec<u8>,
        now_ms: u64,
    },
    /// Removes a configuration document.
    ConfigDelete { key: String },
    /// Creates or replaces a tenant of the pool. `spec` is non-secret JSON; the credentials
    /// are sealed (AEAD, AAD = tenant name) before the command is built.
    TenantPut {
        name: String,
        spec: Vec<u8>,
        sealed_credentials: Vec<u8>,
        now_ms: u64,
    },
    /// Removes a tenant from the pool.
    TenantDelete { name: String },
    /// Creates or replaces a queue's configuration.
    QueuePut {
        name: String,
        config: queue::QueueConfig,
        now_ms: u64,
    },
    /// Deletes a queue, a bounded chunk at a time (repeat until `done`).
    QueueDelete { name: String },
    /// Enqueues messages atomically (one for a single POST, many for a batch).
    QueueEnqueue {
        queue: String,
        now_ms: u64,
        messages: Vec<queue::NewMessage>,
    },
    /// Leases the head message to one consumer until `now_ms + lock_ms`.
    QueueReceive {
        queue: String,
        now_ms: u64,
        lock_ms: u64,
        lock_token: String,
        consumer: String,
    },
    /// Complete, abandon, dead-letter or renew a leased message.
    QueueSettle {
        queue: String,
        id: String,
        lock_token: String,
        now_ms: u64,
        action: queue::Settle,
    },
    /// Removes expired dedup entries and leases (bounded); proposed by the leader.
    QueueSweep { now_ms: u64 },
    /// Moves a dead letter (or a chunk of all of them) back to the queue.
    QueueRedrive {
        queue: String,
        id: Option<String>,
        now_ms: u64,
    },
    /// Removes a dead letter (or a chunk of all of them).
    QueuePurgeDead { queue: String, id: Option<String> },
    /// Push dispatch, proposed by the leader: leases messages to the tenants it chose until
    /// `now_ms + lock_ms`, and holds back those whose sticky tenant cannot take them yet.
    QueueDispatch {
        queue: String,
        now_ms: u64,
        lock_ms: u64,
        leases: Vec<queue::PushLease>,
        defers: Vec<queue::Defer>,
    },
    /// Push outcomes: complete, retry after the stamped backoff, or dead-letter.
    QueueRecord {
        queue: String,
        now_ms: u64,
        results: Vec<queue::DeliveryResult>,
    },
    /// Any change to a shared secret (see [`secrets`]); values arrive sealed.
    Secret(secrets::SecretCommand),
    /// Creates or replaces a schedule (validated by the API).
    SchedulePut {
        name: String,
        spec: Box<schedules::ScheduleSpec>,
        now_ms: u64,
    },
    /// Removes a schedule.
    ScheduleDelete { name: String },
    /// Pauses (with a note) or resumes a schedule.
    SchedulePause {
        name: String,
        paused: bool,
        note: String,
        now_ms: u64,
    },
    /// Fires (or skips) one occurrence; in the same batch it enqueues the delivery.
    ScheduleFire(Box<schedules::Fire>),
    /// Records how a call firing ended.
    ScheduleOutcome {
        name: String,
        message_id: String,
        outcome: schedules::Outcome,
    },
    /// Records that a call firing got no outcome by its deadline (judged at the proposer's
    /// `now_ms`), retrying it once when its method is idempotent; proposed by the leader.
    ScheduleCallLost {
        name: String,
        message_id: String,
        now_ms: u64,
    },
    /// Leases up to one message per lock token, in queue order, to one consumer (a batch
    /// receive: one command however many it leases).
    QueueReceiveMany {
        queue: String,
        now_ms: u64,
        lock_ms: u64,
        lock_tokens: Vec<String>,
        consumer: String,
    },
    /// Settles many leased messages the same way; each (id, lock token) is judged alone.
    QueueSettleMany {
        queue: String,
        now_ms: u64,
        items: Vec<(String, String)>,
        action: queue::Settle,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    ConfigPut {
        revision: u64,
        created: bool,
    },
    ConfigDeleted {
        existed: bool,
    },
    /// The command could not be decoded (written by a newer version, or corrupt).
    Undecodable {
        message: String,
    },
    TenantPut {
        revision: u64,
        created: bool,
    },
    TenantDeleted {
        existed: bool,
    },
    /// The answer to any queue command.
    Queue(queue::QueueResponse),
    /// The answer to any secret command.
    Secret(secrets::SecretResponse),
    /// The answer to any schedule command.
    Schedule(schedules::ScheduleResponse),
}

/// A stored tenant: non-secret spec (JSON) plus sealed credentials, with its revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantEntry {
    #[serde(with = "serde_bytes")]
    pub spec: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub sealed_credentials: Vec<u8>,
    pub revision: u64,
    pub created_index: u64,
    pub updated_ms: u64,
}

/// A stored configuration document with its revision (the log index that wrote it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigEntry {
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    pub revision: u64,
    pub created_index: u64,
    pub updated_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("unsupported format version {0}")]
    Version(u8),
    #[error("empty input")]
    Empty,
    #[error("decode: {0}")]
    Decode(String),
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![FORMAT_V1];
    // Encoding plain data types into a Vec cannot fail.
    out.extend(
        bincode::serde::encode_to_vec(value, bincode::config::standard()).unwrap_or_default(),
    );
    out
}

pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    match bytes.first() {
        None => Err(CodecError::Empty),
        Some(&FORMAT_V1) => {
            bincode::serde::decode_from_slice(&bytes[1..], bincode::config::standard())
                .map(|(v, _)| v)
                .map_err(|e| CodecError::Decode(e.to_string()))
        }
        Some(&v) => Err(CodecError::Version(v)),
    }
}

fn config_key(key: &str) -> Vec<u8> {
    keys::state(format!("c/{key}").as_bytes())
}

fn tenant_key(name: &str) -> Vec<u8> {
    keys::state(format!("t/{name}").as_bytes())
}

/// The corral state machine: all state lives in the store, plus the queue indexes derived
/// from it (in memory, rebuilt on open and after a snapshot; see [`queue::index`]).
pub struct CorralState {
    kv: Arc<dyn Store>,
    queues: queue::SharedIndex,
}

impl CorralState {
    /// Opens the state machine over `kv`, rebuilding the queue indexes (and upgrading an old
    /// queue layout in place).
    pub fn new(kv: Arc<dyn Store>) -> Result<CorralState, StoreError> {
        let queues = queue::SharedIndex::new(queue::load_indexes(&*kv)?);
        Ok(CorralState { kv, queues })
    }

    /// The queue indexes, for handlers that read queues (long-poll receive, dispatch, traces).
    pub fn queue_index(&self) -> queue::SharedIndex {
        self.queues.clone()
    }

    fn apply_command(
        &mut self,
        index: u64,
        cmd: Command,
        batch: &mut WriteBatch,
    ) -> Result<Response, StoreError> {
        match cmd {
            Command::ConfigPut { key, value, now_ms } => {
                let k = config_key(&key);
                let existing = read_config_through(&*self.kv, batch, &key)?;
                let entry = ConfigEntry {
                    value,
                    revision: index,
                    created_index: existing.as_ref().map(|e| e.created_index).unwrap_or(index),
                    updated_ms: now_ms,
                };
                batch.put(k, encode(&entry));
                Ok(Response::ConfigPut {
                    revision: index,
                    created: existing.is_none(),
                })
            }
            Command::ConfigDelete { key } => {
                let existed = read_config_through(&*self.kv, batch, &key)?.is_some();
                batch.delete(config_key(&key));
                Ok(Response::ConfigDeleted { existed })
            }
            Command::TenantPut {
                name,
                spec,
                sealed_credentials,
                now_ms,
            } => {
                let existing = read_tenant_through(&*self.kv, batch, &name)?;
                let entry = TenantEntry {
                    spec,
                    sealed_credentials,
                    revision: index,
                    created_index: existing.as_ref().map(|e| e.created_index).unwrap_or(index),
                    updated_ms: now_ms,
                };
                batch.put(tenant_key(&name), encode(&entry));
                Ok(Response::TenantPut {
                    revision: index,
                    created: existing.is_none(),
                })
            }
            Command::TenantDelete { name } => {
                let existed = read_tenant_through(&*self.kv, batch, &name)?.is_some();
                batch.delete(tenant_key(&name));
                Ok(Response::TenantDeleted { existed })
            }
            Command::Secret(cmd) => secrets::Apply {
                kv: &*self.kv,
                batch,
            }
            .apply(index, cmd)
            .map(Response::Secret),
            cmd @ (Command::SchedulePut { .. }
            | Command::ScheduleDelete { .. }
            | Command::SchedulePause { .. }
            | Command::ScheduleFire(_)
            | Command::ScheduleOutcome { .. }
            | Command::ScheduleCallLost { .. }) => self
                .apply_schedule(index, cmd, batch)
                .map(Response::Schedule),
            cmd => self.apply_queue(index, cmd, batch).map(Response::Queue),
        }
    }

    fn apply_schedule(
        &mut self,
        index: u64,
        cmd: Command,
        batch: &mut WriteBatch,
    ) -> Result<schedules::ScheduleResponse, StoreError> {
        let mut ix = self.queues.write();
        let mut s = schedules::Apply {
            kv: &*self.kv,
            batch,
            ix: &mut ix,
            index,
        };
        match cmd {
            Command::SchedulePut { name, spec, now_ms } => s.put(index, &name, *spec, now_ms),
            Command::ScheduleDelete { name } => s.delete(&name),
            Command::SchedulePause {
                name,
                paused,
                note,
                now_ms,
            } => s.set_paused(&name, paused, note, now_ms),
            Command::ScheduleFire(f) => s.fire(*f),
            Command::ScheduleOutcome {
                name,
                message_id,
                outcome,
            } => s.record_outcome(&name, &message_id, outcome),
            Command::ScheduleCallLost {
                name,
                message_id,
                now_ms,
            } => s.call_lost(&name, &message_id, now_ms),
            _ => Err(StoreError::Corrupt(
                "non-schedule command routed to the schedules".into(),
            )),
        }
    }

    fn apply_queue(
        &mut self,
        index: u64,
        cmd: Command,
        batch: &mut WriteBatch,
    ) -> Result<queue::QueueResponse, StoreError> {
        let mut ix = self.queues.write();
        // Dropping `q` at the end writes the command's trace record.
        let mut q = queue::Apply::new(&*self.kv, batch, &mut ix, index);
        match cmd {
            Command::QueuePut {
                name,
                config,
                now_ms,
            } => q.put_queue(index, &name, config, now_ms),
            Command::QueueDelete { name } => q.delete_queue(&name),
            Command::QueueEnqueue {
                queue,
                now_ms,
                messages,
            } => q.enqueue(&queue, now_ms, messages),
            Command::QueueReceive {
                queue,
                now_ms,
                lock_ms,
                lock_token,
                consumer,
            } => q.receive(&queue, now_ms, lock_ms, lock_token, consumer),
            Command::QueueSettle {
                queue,
                id,
                lock_token,
                now_ms,
                action,
            } => q.settle(&queue, &id, &lock_token, now_ms, action),
            Command::QueueSweep { now_ms } => q.sweep(now_ms),
            Command::QueueRedrive { queue, id, now_ms } => q.redrive(&queue, id.as_deref(), now_ms),
            Command::QueuePurgeDead { queue, id } => q.purge_dead(&queue, id.as_deref()),
            Command::QueueDispatch {
                queue,
                now_ms,
                lock_ms,
                leases,
                defers,
            } => q.dispatch(&queue, now_ms, lock_ms, leases, defers),
            Command::QueueRecord {
                queue,
                now_ms,
                results,
            } => q.record(&queue, now_ms, results),
            Command::QueueReceiveMany {
                queue,
                now_ms,
                lock_ms,
                lock_tokens,
                consumer,
            } => q.receive_many(&queue, now_ms, lock_ms, lock_tokens, consumer),
            Command::QueueSettleMany {
                queue,
                now_ms,
                items,
                action,
            } => q.settle_many(&queue, now_ms, &items, action),
            Command::ConfigPut { .. }
            | Command::ConfigDelete { .. }
            | Command::TenantPut { .. }
            | Command::TenantDelete { .. }
            | Command::Secret(_)
            | Command::SchedulePut { .. }
            | Command::ScheduleDelete { .. }
            | Command::SchedulePause { .. }
            | Command::ScheduleFire(_)
            | Command::ScheduleOutcome { .. }
            | Command::ScheduleCallLost { .. } => Err(StoreError::Corrupt(
                "non-queue command routed to the queue".into(),
            )),
        }
    }
}

impl StateMachine for CorralState {
    fn apply(&mut self, index: u64, data: &[u8], batch: &mut WriteBatch) -> Vec<u8> {
        let response = match decode::<Command>(data) {
            Ok(cmd) => match self.apply_command(index, cmd, batch) {
                Ok(r) => r,
                Err(e) => {
                    // Reads of our own store failing means the disk is broken: stop here rather
                    // than apply differently from the other nodes.
                    tracing::error!(error = %e, index, "state read failed during apply");
                    std::process::abort();
                }
            },
            Err(e) => Response::Undecodable {
                message: e.to_string(),
            },
        };
        encode(&response)
    }

    fn restored(&mut self) {
        match queue::load_indexes(&*self.kv) {
            Ok(ix) => *self.queues.write() = ix,
            Err(e) => {
                // The state just installed cannot be read: stop rather than serve without it.
                tracing::error!(error = %e, "rebuilding the queue indexes after a snapshot failed");
                std::process::abort();
            }
        }
    }
}

/// Reads one configuration document from the local state (no consistency barrier).
pub fn read_config(kv: &dyn Store, key: &str) -> Result<Option<ConfigEntry>, StoreError> {
    read_config_through(kv, &WriteBatch::default(), key)
}

/// Reads a configuration document as it will be once `batch` is written.
fn read_config_through(
    kv: &dyn Store,
    batch: &WriteBatch,
    key: &str,
) -> Result<Option<ConfigEntry>, StoreError> {
    match batch.read_through(kv, &config_key(key))? {
        Some(b) => decode(&b)
            .map(Some)
            .map_err(|e| StoreError::Corrupt(format!("config {key}: {e}"))),
        None => Ok(None),
    }
}

/// Reads one tenant from the local state (no consistency barrier).
pub fn read_tenant(kv: &dyn Store, name: &str) -> Result<Option<TenantEntry>, StoreError> {
    read_tenant_through(kv, &WriteBatch::default(), name)
}

fn read_tenant_through(
    kv: &dyn Store,
    batch: &WriteBatch,
    name: &str,
) -> Result<Option<TenantEntry>, StoreError> {
    match batch.read_through(kv, &tenant_key(name))? {
        Some(b) => decode(&b)
            .map(Some)
            .map_err(|e| StoreError::Corrupt(format!("tenant {name}: {e}"))),
        None => Ok(None),
    }
}

/// Lists tenants by name, after `after`, at most `limit`.
pub fn list_tenants(
    kv: &dyn Store,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<(String, TenantEntry)>, StoreError> {
    list_named(kv, &tenant_key(""), after, limit, "tenant")
}

/// The one listing rule for named resources: the records under key prefix `base` (which is
/// followed directly by the name) in name order, after `after`, at most `limit`. `what`
/// names the kind in a corruption error.
pub fn list_named<T: serde::de::DeserializeOwned>(
    kv: &dyn Store,
    base: &[u8],
    after: Option<&str>,
    limit: usize,
    what: &str,
) -> Result<Vec<(String, T)>, StoreError> {
    let from = match after {
        Some(a) => {
            let mut k = base.to_vec();
            k.extend_from_slice(a.as_bytes());
            k.push(0);
            k
        }
        None => base.to_vec(),
    };
    let mut end = base.to_vec();
    end.push(0xff);
    let mut out = Vec::new();
    for (k, v) in kv.range(&from, &end, limit)? {
        let name = String::from_utf8_lossy(&k[base.len()..]).into_owned();
        let entry = decode(&v).map_err(|e| StoreError::Corrupt(format!("{what} {name}: {e}")))?;
        out.push((name, entry));
    }
    Ok(out)
}

/// Lists configuration documents whose key starts with `prefix`, after `after`, at most `limit`.
pub fn list_config(
    kv: &dyn Store,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<(String, ConfigEntry)>, StoreError> {
    let base = config_key("");
    let from = match after {
        Some(a) => {
            let mut k = config_key(a);
            k.push(0);
            k
        }
        None => config_key(prefix),
    };
    let mut end = config_key(prefix);
    end.push(0xff);
    let mut out = Vec::new();
    for (k, v) in kv.range(&from, &end, limit)? {
        let key = String::from_utf8_lossy(&k[base.len()..]).into_owned();
        if !key.starts_with(prefix) {
            continue;
        }
        let entry = decode(&v).map_err(|e| StoreError::Corrupt(format!("config {key}: {e}")))?;
        out.push((key, entry));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SledStore;

    fn apply(sm: &mut CorralState, index: u64, cmd: Command) -> Response {
        let mut batch = WriteBatch::default();
        let out = sm.apply(index, &encode(&cmd), &mut batch);
        sm.kv.write(batch).unwrap();
        decode(&out).unwrap()
    }

    /// Data-driven: a sequence of commands gives the same answers and state on any replay.
    #[test]
    fn config_commands_are_deterministic() {
        let run = || {
            let dir = tempfile::tempdir().unwrap();
            let kv: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
            let mut sm = CorralState::new(kv.clone()).unwrap();
            let cases = [
                (
                    Command::ConfigPut {
                        key: "a".into(),
                        value: b"1".to_vec(),
                        now_ms: 10,
                    },
                    Response::ConfigPut {
                        revision: 1,
                        created: true,
                    },
                ),
                (
                    Command::ConfigPut {
                        key: "a".into(),
                        value: b"2".to_vec(),
                        now_ms: 20,
                    },
                    Response::ConfigPut {
                        revision: 2,
                        created: false,
                    },
                ),
                (
                    Command::ConfigPut {
                        key: "b/x".into(),
                        value: b"3".to_vec(),
                        now_ms: 30,
                    },
                    Response::ConfigPut {
                        revision: 3,
                        created: true,
                    },
                ),
                (
                    Command::ConfigDelete { key: "zz".into() },
                    Response::ConfigDeleted { existed: false },
                ),
                (
                    Command::ConfigDelete { key: "a".into() },
                    Response::ConfigDeleted { existed: true },
                ),
            ];
            for (i, (cmd, want)) in cases.into_iter().enumerate() {
                assert_eq!(apply(&mut sm, i as u64 + 1, cmd), want);
            }
            list_config(&*kv, "", None, 100).unwrap()
        };
        let first = run();
        assert_eq!(first, run());
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].0, "b/x");
        assert_eq!(first[0].1.revision, 3);
    }

    /// A command from an unknown format version is answered, not applied, on every node alike.
    #[test]
    fn unknown_version_is_a_response_not_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let kv: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
        let mut sm = CorralState::new(kv).unwrap();
        let mut batch = WriteBatch::default();
        let out = sm.apply(1, &[9, 1, 2], &mut batch);
        assert!(batch.is_empty());
        assert!(matches!(
            decode::<Response>(&out).unwrap(),
            Response::Undecodable { .. }
        ));
    }

    /// Data-driven: tenant put/replace/delete answer alike on every replay, keep the created
    /// index across replacements, and live apart from configuration keys.
    #[test]
    fn tenant_commands_are_deterministic() {
        let put = |name: &str, spec: &[u8], now_ms| Command::TenantPut {
            name: name.into(),
            spec: spec.to_vec(),
            sealed_credentials: vec![1, 2, 3],
            now_ms,
        };
        let run = || {
            let dir = tempfile::tempdir().unwrap();
            let kv: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
            let mut sm = CorralState::new(kv.clone()).unwrap();
            let cases = [
                (
                    put("t1", b"{}", 5),
                    Response::TenantPut {
                        revision: 1,
                        created: true,
                    },
                ),
                (
                    put("t1", b"{\"w\":2}", 6),
                    Response::TenantPut {
                        revision: 2,
                        created: false,
                    },
                ),
                (
                    put("t2", b"{}", 7),
                    Response::TenantPut {
                        revision: 3,
                        created: true,
                    },
                ),
                (
                    Command::TenantDelete {
                        name: "nope".into(),
                    },
                    Response::TenantDeleted { existed: false },
                ),
                (
                    Command::TenantDelete { name: "t2".into() },
                    Response::TenantDeleted { existed: true },
                ),
                (
                    Command::ConfigPut {
                        key: "t1".into(),
                        value: vec![],
                        now_ms: 8,
                    },
                    Response::ConfigPut {
                        revision: 6,
                        created: true,
                    },
                ),
            ];
            for (i, (cmd, want)) in cases.into_iter().enumerate() {
                assert_eq!(apply(&mut sm, i as u64 + 1, cmd), want);
            }
            (
                list_tenants(&*kv, None, 100).unwrap(),
                list_config(&*kv, "", None, 100).unwrap().len(),
            )
        };
        let (tenants, configs) = run();
        assert_eq!((tenants.clone(), configs), run());
        assert_eq!(configs, 1);
        assert_eq!(tenants.len(), 1);
        let (name, e) = &tenants[0];
        assert_eq!(name, "t1");
        assert_eq!((e.revision, e.created_index, e.updated_ms), (2, 1, 6));
        assert_eq!(e.spec, b"{\"w\":2}");
    }

    /// Existing command encodings stay stable: new variants are appended, never inserted.
    #[test]
    fn existing_variant_tags_are_stable() {
        let bytes = encode(&Command::ConfigDelete { key: "k".into() });
        assert_eq!(&bytes[..2], &[FORMAT_V1, 1]);
        let bytes = encode(&Command::TenantDelete { name: "k".into() });
        assert_eq!(&bytes[..2], &[FORMAT_V1, 3]);
    }

    /// Listing pages by key and respects the prefix.
    #[test]
    fn list_pages_by_key() {
        let dir = tempfile::tempdir().unwrap();
        let kv: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
        let mut sm = CorralState::new(kv.clone()).unwrap();
        for (i, k) in ["p/1", "p/2", "p/3", "q/1"].iter().enumerate() {
            apply(
                &mut sm,
                i as u64 + 1,
                Command::ConfigPut {
                    key: k.to_string(),
                    value: vec![],
                    now_ms: 0,
                },
            );
        }
        let page = list_config(&*kv, "p/", None, 2).unwrap();
        assert_eq!(
            page.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            ["p/1", "p/2"]
        );
        let rest = list_config(&*kv, "p/", Some("p/2"), 10).unwrap();
        assert_eq!(
            rest.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            ["p/3"]
        );
    }
}
