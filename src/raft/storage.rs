//! raft-rs's `Storage` over our [`Store`]: log entries, hard state, conf state, snapshot point.
//!
//! Raft metadata is cached in memory (this struct is owned by the one `RawNode`, inside the
//! driver thread) and written through to the store in the same batch as the change it belongs
//! to. Snapshots are made on demand from the state range of the store at the applied index,
//! which is consistent because the driver thread is the only writer.

use std::collections::VecDeque;
use std::sync::Arc;

use protobuf::Message as _;
use raft::prelude::*;
use raft::{GetEntriesContext, RaftState, StorageError};
use serde::{Deserialize, Serialize};

use crate::store::{keys, Store, StoreError, WriteBatch};

/// A snapshot larger than this is not offered (peers could not receive it in one frame).
pub const MAX_SNAPSHOT_BYTES: usize = crate::transport::MAX_FRAME_BYTES - 1024 * 1024;

const META_HARD_STATE: &str = "hard_state";
const META_CONF_STATE: &str = "conf_state";
const META_SNAPSHOT: &str = "snapshot_point";
const META_APPLIED: &str = "applied";

/// A (index, term) position in the log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogPosition {
    pub index: u64,
    pub term: u64,
}

/// The snapshot payload: the whole state range, copied key by key.
#[derive(Serialize, Deserialize)]
struct SnapshotData {
    format: u8,
    pairs: Vec<(Vec<u8>, Vec<u8>)>,
}

const SNAPSHOT_FORMAT: u8 = 1;

fn store_err(e: StoreError) -> raft::Error {
    raft::Error::Store(StorageError::Other(Box::new(e)))
}

fn corrupt(what: &str) -> raft::Error {
    raft::Error::Store(StorageError::Other(Box::new(StoreError::Corrupt(
        what.to_string(),
    ))))
}

pub fn encode_pos(p: LogPosition) -> Vec<u8> {
    let mut v = Vec::with_capacity(16);
    v.extend_from_slice(&p.index.to_be_bytes());
    v.extend_from_slice(&p.term.to_be_bytes());
    v
}

fn decode_pos(b: &[u8]) -> Option<LogPosition> {
    if b.len() != 16 {
        return None;
    }
    Some(LogPosition {
        index: u64::from_be_bytes(b[..8].try_into().ok()?),
        term: u64::from_be_bytes(b[8..].try_into().ok()?),
    })
}

pub struct RaftStorage {
    kv: Arc<dyn Store>,
    hard_state: HardState,
    conf_state: ConfState,
    /// Everything at or below this position was compacted away (or arrived by snapshot).
    snapshot_point: LogPosition,
    last_index: u64,
    /// The last entry whose effects are in the state range.
    applied: LogPosition,
    /// Term of every stored entry: `terms[i]` is the term of index `snapshot_point.index + 1 + i`.
    /// Raft asks for terms constantly; this keeps those lookups off the disk.
    terms: VecDeque<u64>,
}

/// Reads the stored log once at start for its terms, checking it is contiguous.
fn load_terms(kv: &dyn Store, snapshot_index: u64) -> Result<VecDeque<u64>, StoreError> {
    let mut terms = VecDeque::new();
    for item in kv.scan_prefix(&[keys::LOG]) {
        let (k, v) = item?;
        let index = k
            .get(1..9)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_be_bytes)
            .ok_or_else(|| StoreError::Corrupt("log key".into()))?;
        let expected = snapshot_index + 1 + terms.len() as u64;
        if index != expected {
            return Err(StoreError::Corrupt(format!(
                "log has index {index} where {expected} was expected"
            )));
        }
        let entry = Entry::parse_from_bytes(&v).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        terms.push_back(entry.term);
    }
    Ok(terms)
}

impl RaftStorage {
    /// Opens the Raft view of `kv`. A store with no conf state is bootstrapped with `voters`.
    pub fn open(kv: Arc<dyn Store>, voters: &[u64]) -> Result<RaftStorage, StoreError> {
        let read_meta = |name: &str| kv.get(&keys::meta(name));
        let conf_state = match read_meta(META_CONF_STATE)? {
            Some(b) => {
                ConfState::parse_from_bytes(&b).map_err(|e| StoreError::Corrupt(e.to_string()))?
            }
            None => {
                let mut cs = ConfState::default();
                cs.set_voters(voters.to_vec());
                let mut batch = WriteBatch::default();
                batch.put(
                    keys::meta(META_CONF_STATE),
                    cs.write_to_bytes()
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                );
                kv.write(batch)?;
                kv.flush()?;
                cs
            }
        };
        let hard_state = match read_meta(META_HARD_STATE)? {
            Some(b) => {
                HardState::parse_from_bytes(&b).map_err(|e| StoreError::Corrupt(e.to_string()))?
            }
            None => HardState::default(),
        };
        let pos = |name: &str| -> Result<LogPosition, StoreError> {
            match read_meta(name)? {
                Some(b) => {
                    decode_pos(&b).ok_or_else(|| StoreError::Corrupt(format!("meta {name}")))
                }
                None => Ok(LogPosition::default()),
            }
        };
        let snapshot_point = pos(META_SNAPSHOT)?;
        let applied = pos(META_APPLIED)?;
        let terms = load_terms(&*kv, snapshot_point.index)?;
        let last_index = snapshot_point.index + terms.len() as u64;
        Ok(RaftStorage {
            kv,
            hard_state,
            conf_state,
            snapshot_point,
            last_index,
            applied,
            terms,
        })
    }

    pub fn applied(&self) -> LogPosition {
        self.applied
    }

    pub fn snapshot_point(&self) -> LogPosition {
        self.snapshot_point
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    pub fn first(&self) -> u64 {
        self.snapshot_point.index + 1
    }

    pub fn last(&self) -> u64 {
        self.last_index
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.kv
    }

    /// Adds `entries` to the batch, truncating any conflicting suffix of the stored log.
    pub fn append(&mut self, entries: &[Entry], batch: &mut WriteBatch) -> Result<(), StoreError> {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return Ok(());
        };
        assert!(
            first.index > self.snapshot_point.index,
            "append below the snapshot point"
        );
        assert!(
            first.index <= self.last_index + 1,
            "gap in the log: last {} append {}",
            self.last_index,
            first.index
        );
        for e in entries {
            let bytes = e
                .write_to_bytes()
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            batch.put(keys::log(e.index).to_vec(), bytes);
        }
        for stale in last.index + 1..=self.last_index {
            batch.delete(keys::log(stale).to_vec());
        }
        self.terms
            .truncate((first.index - self.snapshot_point.index - 1) as usize);
        self.terms.extend(entries.iter().map(|e| e.term));
        self.last_index = last.index;
        debug_assert_eq!(
            self.terms.len() as u64,
            self.last_index - self.snapshot_point.index
        );
        Ok(())
    }

    pub fn set_hard_state(
        &mut self,
        hs: &HardState,
        batch: &mut WriteBatch,
    ) -> Result<(), StoreError> {
        self.hard_state = hs.clone();
        batch.put(
            keys::meta(META_HARD_STATE),
            hs.write_to_bytes()
                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
        );
        Ok(())
    }

    pub fn set_commit(&mut self, commit: u64, batch: &mut WriteBatch) -> Result<(), StoreError> {
        let mut hs = self.hard_state.clone();
        hs.commit = commit;
        self.set_hard_state(&hs, batch)
    }

    pub fn set_conf_state(
        &mut self,
        cs: &ConfState,
        batch: &mut WriteBatch,
    ) -> Result<(), StoreError> {
        self.conf_state = cs.clone();
        batch.put(
            keys::meta(META_CONF_STATE),
            cs.write_to_bytes()
                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
        );
        Ok(())
    }

    /// Records that the entry at `pos` has been applied; goes in the same batch as its effects.
    pub fn set_applied(&mut self, pos: LogPosition, batch: &mut WriteBatch) {
        self.applied = pos;
        batch.put(keys::meta(META_APPLIED), encode_pos(pos));
    }

    /// Drops log entries up to and including `through` (which must be applied and durable).
    pub fn compact(&mut self, through: u64) -> Result<u64, StoreError> {
        if through <= self.snapshot_point.index || through > self.applied.index {
            return Ok(0);
        }
        let term = self
            .entry_term(through)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut batch = WriteBatch::default();
        for i in self.first()..=through {
            batch.delete(keys::log(i).to_vec());
        }
        let point = LogPosition {
            index: through,
            term,
        };
        batch.put(keys::meta(META_SNAPSHOT), encode_pos(point));
        let dropped = through - self.snapshot_point.index;
        self.kv.write(batch)?;
        self.terms.drain(..dropped as usize);
        self.snapshot_point = point;
        Ok(dropped)
    }

    /// Replaces the whole log and state with a snapshot received from the leader, durably.
    pub fn install_snapshot(&mut self, snap: &Snapshot) -> Result<(), StoreError> {
        let meta = snap.get_metadata();
        let data: SnapshotData =
            bincode::serde::decode_from_slice(snap.get_data(), bincode::config::standard())
                .map_err(|e| StoreError::Corrupt(format!("snapshot data: {e}")))?
                .0;
        if data.format != SNAPSHOT_FORMAT {
            return Err(StoreError::Corrupt(format!(
                "snapshot format {}",
                data.format
            )));
        }
        let mut batch = WriteBatch::default();
        for prefix in [keys::LOG, keys::STATE] {
            for item in self.kv.scan_prefix(&[prefix]) {
                batch.delete(item?.0);
            }
        }
        for (k, v) in data.pairs {
            if k.first() != Some(&keys::STATE) {
                return Err(StoreError::Corrupt(
                    "snapshot holds a key outside the state range".into(),
                ));
            }
            batch.put(k, v);
        }
        let point = LogPosition {
            index: meta.index,
            term: meta.term,
        };
        batch.put(keys::meta(META_SNAPSHOT), encode_pos(point));
        self.set_applied(point, &mut batch);
        self.set_conf_state(meta.get_conf_state(), &mut batch)?;
        let mut hs = self.hard_state.clone();
        hs.term = hs.term.max(meta.term);
        hs.commit = hs.commit.max(meta.index);
        self.set_hard_state(&hs, &mut batch)?;
        self.kv.write(batch)?;
        self.kv.flush()?;
        self.snapshot_point = point;
        self.last_index = meta.index;
        self.terms.clear();
        Ok(())
    }

    fn entry_term(&self, index: u64) -> raft::Result<u64> {
        if index == self.snapshot_point.index {
            return Ok(self.snapshot_point.term);
        }
        let offset = index
            .checked_sub(self.snapshot_point.index + 1)
            .ok_or(raft::Error::Store(StorageError::Compacted))?;
        self.terms
            .get(offset as usize)
            .copied()
            .ok_or(raft::Error::Store(StorageError::Unavailable))
    }

    fn build_snapshot(&self) -> raft::Result<Snapshot> {
        let mut pairs = Vec::new();
        let mut bytes = 0usize;
        for item in self.kv.scan_prefix(&[keys::STATE]) {
            let (k, v) = item.map_err(store_err)?;
            bytes += k.len() + v.len();
            if bytes > MAX_SNAPSHOT_BYTES {
                tracing::error!(
                    bytes,
                    limit = MAX_SNAPSHOT_BYTES,
                    "state too large for a snapshot; follower must catch up by log"
                );
                return Err(raft::Error::Store(
                    StorageError::SnapshotTemporarilyUnavailable,
                ));
            }
            pairs.push((k, v));
        }
        let data = bincode::serde::encode_to_vec(
            &SnapshotData {
                format: SNAPSHOT_FORMAT,
                pairs,
            },
            bincode::config::standard(),
        )
        .map_err(|_| corrupt("snapshot encode"))?;
        let mut snap = Snapshot::default();
        snap.set_data(data.into());
        let meta = snap.mut_metadata();
        meta.index = self.applied.index;
        meta.term = self.applied.term;
        meta.set_conf_state(self.conf_state.clone());
        Ok(snap)
    }
}

impl raft::Storage for RaftStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _ctx: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.snapshot_point.index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last_index + 1 {
            panic!(
                "entries({low}, {high}) beyond last index {}",
                self.last_index
            );
        }
        let max = max_size.into().unwrap_or(u64::MAX);
        let pairs = self
            .kv
            .range(&keys::log(low), &keys::log(high), (high - low) as usize)
            .map_err(store_err)?;
        let mut out = Vec::with_capacity(pairs.len());
        let mut size = 0u64;
        for (_, v) in pairs {
            let e = Entry::parse_from_bytes(&v).map_err(|_| corrupt("log entry"))?;
            size += v.len() as u64;
            if !out.is_empty() && size > max {
                break;
            }
            out.push(e);
        }
        if out.is_empty() && low < high {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx < self.snapshot_point.index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > self.last_index {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        self.entry_term(idx)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index)
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        if self.applied.index < request_index {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        self.build_snapshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SledStore;
    use raft::Storage;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: vec![index as u8; 10].into(),
            ..Default::default()
        }
    }

    fn open(dir: &std::path::Path) -> RaftStorage {
        let kv: Arc<dyn Store> = Arc::new(SledStore::open(dir).unwrap());
        RaftStorage::open(kv, &[1, 2, 3]).unwrap()
    }

    /// Appending truncates a conflicting suffix, and the log reopens as written.
    #[test]
    fn append_truncates_conflicts_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = open(dir.path());
            let mut b = WriteBatch::default();
            s.append(&(1..=5).map(|i| entry(i, 1)).collect::<Vec<_>>(), &mut b)
                .unwrap();
            s.kv.write(b).unwrap();
            let mut b = WriteBatch::default();
            s.append(&[entry(3, 2)], &mut b).unwrap();
            s.kv.write(b).unwrap();
            s.kv.flush().unwrap();
            assert_eq!(s.last_index().unwrap(), 3);
        }
        let s = open(dir.path());
        assert_eq!(s.last_index().unwrap(), 3);
        assert_eq!(s.term(3).unwrap(), 2);
        assert_eq!(
            s.entries(1, 4, None, GetEntriesContext::empty(false))
                .unwrap()
                .len(),
            3
        );
        assert_eq!(s.initial_state().unwrap().conf_state.voters, vec![1, 2, 3]);
    }

    /// Compaction drops entries up to the applied index and keeps the term of the last one.
    #[test]
    fn compaction_keeps_boundary_term() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path());
        let mut b = WriteBatch::default();
        s.append(
            &(1..=10).map(|i| entry(i, 1 + i / 5)).collect::<Vec<_>>(),
            &mut b,
        )
        .unwrap();
        s.set_applied(LogPosition { index: 8, term: 2 }, &mut b);
        s.kv.write(b).unwrap();
        assert_eq!(s.compact(6).unwrap(), 6);
        assert_eq!(s.first_index().unwrap(), 7);
        assert_eq!(s.term(6).unwrap(), 2);
        assert!(s.term(5).is_err());
        assert!(s
            .entries(5, 8, None, GetEntriesContext::empty(false))
            .is_err());
    }

    /// A snapshot made on one store installs on another: state copied, log reset to its index.
    #[test]
    fn snapshot_round_trip() {
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut a = open(d1.path());
        let mut b = WriteBatch::default();
        b.put(keys::state(b"k"), b"v".to_vec());
        a.set_applied(LogPosition { index: 42, term: 3 }, &mut b);
        a.kv.write(b).unwrap();
        let snap = a.snapshot(0, 2).unwrap();
        let mut other = open(d2.path());
        let mut junk = WriteBatch::default();
        junk.put(keys::state(b"old"), b"x".to_vec());
        other.kv.write(junk).unwrap();
        other.install_snapshot(&snap).unwrap();
        assert_eq!(
            other.kv.get(&keys::state(b"k")).unwrap(),
            Some(b"v".to_vec())
        );
        assert_eq!(other.kv.get(&keys::state(b"old")).unwrap(), None);
        assert_eq!(other.first_index().unwrap(), 43);
        assert_eq!(other.term(42).unwrap(), 3);
        assert_eq!(other.applied(), LogPosition { index: 42, term: 3 });
    }
}
