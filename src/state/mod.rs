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

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::raft::StateMachine;
use crate::store::{keys, Store, StoreError, WriteBatch};

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

/// The corral state machine. Holds only a store handle: all state lives in the store.
pub struct CorralState {
    kv: Arc<dyn Store>,
}

impl CorralState {
    pub fn new(kv: Arc<dyn Store>) -> CorralState {
        CorralState { kv }
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
            let mut sm = CorralState::new(kv.clone());
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
        let mut sm = CorralState::new(kv);
        let mut batch = WriteBatch::default();
        let out = sm.apply(1, &[9, 1, 2], &mut batch);
        assert!(batch.is_empty());
        assert!(matches!(
            decode::<Response>(&out).unwrap(),
            Response::Undecodable { .. }
        ));
    }

    /// Listing pages by key and respects the prefix.
    #[test]
    fn list_pages_by_key() {
        let dir = tempfile::tempdir().unwrap();
        let kv: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
        let mut sm = CorralState::new(kv.clone());
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
