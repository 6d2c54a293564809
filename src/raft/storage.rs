//! raft-rs's `Storage`: the log and hard state in segment files ([`super::log`]), the conf
//! state, snapshot point and applied position in our [`Store`] beside the state they describe.
//!
//! This struct is owned by the one `RawNode`, inside the driver thread. The log is the durable
//! truth: it is fdatasynced before anything that depends on it is sent. The state store is
//! written on apply and flushed by the driver's flusher thread; compaction never passes what a
//! flush made durable ([`RaftStorage::compact`]), so a crash may roll the state back to an
//! older applied index, from which the node replays the log.
//!
//! Snapshots are files (see [`super::snapfile`]): when raft-rs asks for one, a checkpoint of
//! the state at the applied index is built incrementally on the driver thread and raft is told
//! "temporarily unavailable" until it is ready; the Raft message then carries only its
//! descriptor and the follower fetches the file in chunks (`crate::snapshot`). Installing a
//! received snapshot streams the staged file into the store in bounded batches under an
//! "installing" marker, so a crash mid-install is finished from the staged file on restart.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use protobuf::Message as _;
use raft::prelude::*;
use raft::{GetEntriesContext, RaftState, StorageError};
use serde::{Deserialize, Serialize};

use super::log::SegmentLog;
use super::snapfile::{self, CheckpointBuilder, SnapReader, SnapshotDescriptor};
use crate::store::{keys, Store, StoreError, WriteBatch};

/// State bytes written per store batch while installing a snapshot: bounds install memory.
pub const INSTALL_BATCH_BYTES: usize = 16 * 1024 * 1024;
/// Keys deleted per store batch when clearing the old log and state before an install.
const CLEAR_BATCH_KEYS: usize = 16 * 1024;
/// `snapshot_pin` value meaning "no transfer in progress".
pub const NO_PIN: u64 = u64::MAX;

/// Where data dirs written before the segment log kept the hard state (read once to migrate).
const META_HARD_STATE: &str = "hard_state";
const META_CONF_STATE: &str = "conf_state";
const META_SNAPSHOT: &str = "snapshot_point";
const META_APPLIED: &str = "applied";
/// Present while a snapshot install is under way; names the staged file to finish it from.
const META_INSTALLING: &str = "snapshot_installing";

/// A (index, term) position in the log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogPosition {
    pub index: u64,
    pub term: u64,
}

/// Test hook: with `CORRAL_FAILPOINT=snapshot-install-pause` in its environment, a node stops
/// (forever) after the first state batch of an install, so a test can kill -9 it exactly
/// mid-install. Not a configuration: only the crash tests set it.
fn failpoint_pause_mid_install() {
    if std::env::var("CORRAL_FAILPOINT").as_deref() == Ok("snapshot-install-pause") {
        tracing::warn!("failpoint snapshot-install-pause: pausing mid-install");
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
}

/// What the install marker records: enough to finish the install after a crash.
#[derive(Serialize, Deserialize)]
struct InstallMarker {
    desc: SnapshotDescriptor,
    /// The snapshot's conf state, protobuf-encoded.
    conf_state: Vec<u8>,
}

fn store_err(e: StoreError) -> raft::Error {
    raft::Error::Store(StorageError::Other(Box::new(e)))
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
    /// Entries and hard state.
    log: SegmentLog,
    conf_state: ConfState,
    /// Everything at or below this position was compacted away (or arrived by snapshot).
    snapshot_point: LogPosition,
    /// The last entry whose effects are in the state range.
    applied: LogPosition,
    /// Where checkpoints (served) and staged snapshots (received) live.
    snapshot_dir: PathBuf,
    /// The latest finished checkpoint, offered to followers that need a snapshot.
    checkpoint: Option<SnapshotDescriptor>,
    /// A checkpoint being built, a step per driver loop.
    building: Option<CheckpointBuilder>,
    /// Set by [`raft::Storage::snapshot`] (which only gets `&self`) to ask for a build: the
    /// lowest index the snapshot must have.
    wanted: Cell<Option<u64>>,
    /// Lowest checkpoint index a follower is fetching ([`NO_PIN`] when none): the log is not
    /// compacted past it, so the follower can continue by log after installing.
    snapshot_pin: Arc<AtomicU64>,
}

/// Moves a log kept in the store by an older version (entries under `keys::LOG`, hard state in
/// meta) into the segment log, durably, then deletes it from the store. A crash midway
/// repeats it: entries the segments already hold are skipped, and the store's copy is deleted
/// only once the segments hold all of it, synced.
fn migrate_store_log(kv: &dyn Store, log: &mut SegmentLog) -> Result<(), StoreError> {
    let mut stored = kv.scan_prefix(&[keys::LOG]).peekable();
    if stored.peek().is_none() {
        return Ok(());
    }
    tracing::info!("moving the raft log from the state store into segment files");
    if let Some(b) = kv.get(&keys::meta(META_HARD_STATE))? {
        let hs = HardState::parse_from_bytes(&b).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        log.set_hard_state(&hs)?;
    }
    for item in stored {
        let (_, v) = item?;
        let e = Entry::parse_from_bytes(&v).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        if e.index > log.last() {
            log.append(&[e])?;
            log.sync(false)?;
        }
    }
    log.sync(true)?;
    let mut batch = WriteBatch::default();
    for item in kv.scan_prefix(&[keys::LOG]) {
        batch.delete(item?.0);
    }
    batch.delete(keys::meta(META_HARD_STATE));
    kv.write(batch)?;
    kv.flush()?;
    Ok(())
}

impl RaftStorage {
    /// Opens the Raft view of `kv`. A store with no conf state is bootstrapped with `voters`.
    /// An install interrupted by a crash is finished first, from its staged file.
    pub fn open(
        kv: Arc<dyn Store>,
        voters: &[u64],
        snapshot_dir: &Path,
        log_dir: &Path,
        log_segment_bytes: u64,
        snapshot_pin: Arc<AtomicU64>,
    ) -> Result<RaftStorage, StoreError> {
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
        let interrupted = read_meta(META_INSTALLING)?;
        let mut log = SegmentLog::open_with(log_dir, snapshot_point.index, log_segment_bytes)?;
        migrate_store_log(&*kv, &mut log)?;
        if interrupted.is_none() && log.first() != snapshot_point.index + 1 {
            return Err(StoreError::Corrupt(format!(
                "the raft log starts at {} but the state's snapshot point is {}",
                log.first(),
                snapshot_point.index
            )));
        }
        // Checkpoints are rebuilt on demand; a leftover one has no descriptor to offer.
        snapfile::remove_files(&snapfile::checkpoint_dir(snapshot_dir), true, |_, _| true);
        let mut s = RaftStorage {
            kv,
            log,
            conf_state,
            snapshot_point,
            applied,
            snapshot_dir: snapshot_dir.to_path_buf(),
            checkpoint: None,
            building: None,
            wanted: Cell::new(None),
            snapshot_pin,
        };
        if let Some(m) = interrupted {
            let marker: InstallMarker =
                bincode::serde::decode_from_slice(&m, bincode::config::standard())
                    .map_err(|e| StoreError::Corrupt(format!("install marker: {e}")))?
                    .0;
            tracing::warn!(
                index = marker.desc.index,
                "finishing a snapshot install interrupted by a crash"
            );
            s.finish_install(&marker).map_err(|e| {
                StoreError::Corrupt(format!(
                    "a snapshot install was interrupted and cannot be finished ({e}); this data dir is unusable: wipe it and the node catches up from the leader"
                ))
            })?;
        } else {
            let applied = s.applied.index;
            snapfile::remove_files(&snapfile::staging_dir(snapshot_dir), true, |i, _| {
                i <= applied
            });
        }
        Ok(s)
    }

    pub fn applied(&self) -> LogPosition {
        self.applied
    }

    pub fn snapshot_point(&self) -> LogPosition {
        self.snapshot_point
    }

    pub fn hard_state(&self) -> &HardState {
        self.log.hard_state()
    }

    pub fn first(&self) -> u64 {
        self.snapshot_point.index + 1
    }

    pub fn last(&self) -> u64 {
        self.log.last()
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.kv
    }

    /// Payload bytes the log holds (compaction by size reads it).
    pub fn log_bytes(&self) -> u64 {
        self.log.held_bytes()
    }

    /// The highest index whose compaction leaves at most `bytes` of log above it.
    pub fn index_keeping(&self, bytes: u64) -> u64 {
        self.log.index_keeping(bytes)
    }

    /// Adds `entries` to the log, dropping any conflicting suffix; written by [`Self::sync`].
    pub fn append(&mut self, entries: &[Entry]) -> Result<(), StoreError> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        assert!(
            first.index > self.snapshot_point.index,
            "append below the snapshot point"
        );
        self.log.append(entries)
    }

    /// Records a new hard state; written by [`Self::sync`].
    pub fn set_hard_state(&mut self, hs: &HardState) -> Result<(), StoreError> {
        self.log.set_hard_state(hs)
    }

    pub fn set_commit(&mut self, commit: u64) -> Result<(), StoreError> {
        let mut hs = self.log.hard_state().clone();
        hs.commit = commit;
        self.log.set_hard_state(&hs)
    }

    /// Writes pending log records; with `durable`, fdatasyncs them (one per Ready).
    pub fn sync(&mut self, durable: bool) -> Result<(), StoreError> {
        self.log.sync(durable)
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

    /// Drops log entries up to and including `through`, whose state the caller knows to be
    /// durable (a state store flush covered it). The new snapshot point is written to the
    /// store without a flush: the segment files stay until a later flush makes the point
    /// durable ([`Self::delete_segments_through`]), so a crash before that replays from the
    /// old point with every entry still there.
    pub fn compact(&mut self, through: u64) -> Result<u64, StoreError> {
        let through = through.min(self.compaction_floor());
        if through <= self.snapshot_point.index || through > self.applied.index {
            return Ok(0);
        }
        let term = self
            .entry_term(through)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let point = LogPosition {
            index: through,
            term,
        };
        let mut batch = WriteBatch::default();
        batch.put(keys::meta(META_SNAPSHOT), encode_pos(point));
        self.kv.write(batch)?;
        let dropped = through - self.snapshot_point.index;
        self.log.compact(through);
        self.snapshot_point = point;
        Ok(dropped)
    }

    /// Deletes log segments holding only entries at or below `point`, a snapshot point a
    /// state store flush has made durable.
    pub fn delete_segments_through(&mut self, point: u64) -> Result<(), StoreError> {
        self.log.delete_segments_through(point)
    }

    /// Replaces the whole log and state with a snapshot received from the leader, durably.
    ///
    /// The state arrives as a staged, verified file named by the descriptor in the snapshot's
    /// data. First a marker naming it is made durable; then the old log and state are cleared
    /// and the file streamed in, in bounded batches; the last batch sets the snapshot point,
    /// applied index and Raft state and removes the marker. A crash before the marker leaves
    /// the old state; after it, [`RaftStorage::open`] finishes the install from the file.
    pub fn install_snapshot(&mut self, snap: &Snapshot) -> Result<(), StoreError> {
        let meta = snap.get_metadata();
        let desc = SnapshotDescriptor::decode(snap.get_data())?;
        if (desc.index, desc.term) != (meta.index, meta.term) {
            return Err(StoreError::Corrupt(
                "snapshot descriptor does not match its metadata".into(),
            ));
        }
        let marker = InstallMarker {
            desc,
            conf_state: meta
                .get_conf_state()
                .write_to_bytes()
                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
        };
        let mut batch = WriteBatch::default();
        batch.put(
            keys::meta(META_INSTALLING),
            bincode::serde::encode_to_vec(&marker, bincode::config::standard())
                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
        );
        self.kv.write(batch)?;
        self.kv.flush()?;
        self.finish_install(&marker)
    }

    /// The part of an install after its marker is durable; idempotent, so a restart can redo it.
    fn finish_install(&mut self, marker: &InstallMarker) -> Result<(), StoreError> {
        let desc = &marker.desc;
        let staging = snapfile::staging_dir(&self.snapshot_dir);
        let mut reader = SnapReader::open(&staging.join(desc.file_name()))?;
        // Drop any checkpoint being built or offered: it describes the state being replaced.
        if let Some(b) = self.building.take() {
            b.abandon();
        }
        self.checkpoint = None;
        // The log goes first and durably: once the state is replaced, no old entry may remain.
        let mut hs = self.log.hard_state().clone();
        hs.term = hs.term.max(desc.term);
        hs.commit = hs.commit.max(desc.index);
        self.log.reset(desc.index, &hs)?;
        self.clear_prefix(keys::STATE)?;
        let mut batch = WriteBatch::default();
        let mut count = 0u64;
        while let Some((k, v)) = reader.next_pair()? {
            if k.first() != Some(&keys::STATE) {
                return Err(StoreError::Corrupt(
                    "snapshot holds a key outside the state range".into(),
                ));
            }
            batch.put(k, v);
            count += 1;
            if batch.bytes >= INSTALL_BATCH_BYTES {
                self.kv.write(std::mem::take(&mut batch))?;
                failpoint_pause_mid_install();
            }
        }
        reader.verify_end(desc, count)?;
        let conf_state = ConfState::parse_from_bytes(&marker.conf_state)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let point = LogPosition {
            index: desc.index,
            term: desc.term,
        };
        batch.put(keys::meta(META_SNAPSHOT), encode_pos(point));
        self.set_applied(point, &mut batch);
        self.set_conf_state(&conf_state, &mut batch)?;
        batch.delete(keys::meta(META_INSTALLING));
        self.kv.write(batch)?;
        self.kv.flush()?;
        self.snapshot_point = point;
        snapfile::remove_files(&staging, false, |i, _| i <= point.index);
        Ok(())
    }

    /// Deletes every key under `prefix`, in bounded batches.
    fn clear_prefix(&self, prefix: u8) -> Result<(), StoreError> {
        loop {
            let mut batch = WriteBatch::default();
            for item in self
                .kv
                .scan_range(&[prefix], &[prefix + 1])
                .take(CLEAR_BATCH_KEYS)
            {
                batch.delete(item?.0);
            }
            if batch.is_empty() {
                return Ok(());
            }
            self.kv.write(batch)?;
        }
    }

    /// The log may not be compacted past this: a checkpoint being built or being fetched.
    fn compaction_floor(&self) -> u64 {
        let building = self.building.as_ref().map_or(NO_PIN, |b| b.index);
        building.min(self.snapshot_pin.load(Ordering::Relaxed))
    }

    /// Called by the driver before it writes an applied batch: a running checkpoint build
    /// keeps the pre-images it needs. A build that cannot is abandoned (raft asks again).
    pub fn note_applied_batch(&mut self, batch: &WriteBatch) {
        let Some(b) = self.building.as_mut() else {
            return;
        };
        if let Err(e) = b.note_batch(&*self.kv, batch) {
            tracing::warn!(error = %e, "abandoning a snapshot checkpoint build; it restarts when a follower still needs it");
            if let Some(b) = self.building.take() {
                b.abandon();
            }
        }
    }

    /// Advances snapshot checkpoint work by one step; true while a build is in progress (the
    /// driver then keeps its loop spinning instead of waiting for the next tick).
    pub fn checkpoint_work(&mut self) -> bool {
        if self.building.is_none() {
            let Some(min_index) = self.wanted.take() else {
                return false;
            };
            if self.applied.index == 0 || self.usable_checkpoint(min_index).is_some() {
                return false;
            }
            let dir = snapfile::checkpoint_dir(&self.snapshot_dir);
            match CheckpointBuilder::begin(&dir, self.applied.index, self.applied.term) {
                Ok(b) => {
                    tracing::info!(index = b.index, "building a snapshot checkpoint");
                    self.building = Some(b);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start a snapshot checkpoint");
                    return false;
                }
            }
        }
        let Some(b) = self.building.as_mut() else {
            return false;
        };
        match b.step(&*self.kv, snapfile::CHECKPOINT_STEP_BYTES) {
            Ok(None) => true,
            Ok(Some(desc)) => {
                self.building = None;
                tracing::info!(
                    index = desc.index,
                    bytes = desc.bytes,
                    keys = desc.keys,
                    "snapshot checkpoint ready"
                );
                let pin = self.snapshot_pin.load(Ordering::Relaxed);
                let keep = (desc.index, desc.term);
                snapfile::remove_files(
                    &snapfile::checkpoint_dir(&self.snapshot_dir),
                    false,
                    |i, t| (i, t) != keep && i != pin,
                );
                self.checkpoint = Some(desc);
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "snapshot checkpoint build failed");
                if let Some(b) = self.building.take() {
                    b.abandon();
                }
                false
            }
        }
    }

    fn entry_term(&self, index: u64) -> raft::Result<u64> {
        if index == self.snapshot_point.index {
            return Ok(self.snapshot_point.term);
        }
        if index < self.snapshot_point.index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        self.log
            .term(index)
            .ok_or(raft::Error::Store(StorageError::Unavailable))
    }

    /// The finished checkpoint, if it has at least `min_index` and the log continues from it.
    fn usable_checkpoint(&self, min_index: u64) -> Option<&SnapshotDescriptor> {
        self.checkpoint
            .as_ref()
            .filter(|d| d.index >= min_index && d.index + 1 >= self.first())
    }

    /// The Raft snapshot for a finished checkpoint: metadata and descriptor only.
    fn snapshot_of(&self, desc: &SnapshotDescriptor) -> Snapshot {
        let mut snap = Snapshot::default();
        snap.set_data(desc.encode().into());
        let meta = snap.mut_metadata();
        meta.index = desc.index;
        meta.term = desc.term;
        meta.set_conf_state(self.conf_state.clone());
        snap
    }
}

impl raft::Storage for RaftStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.log.hard_state().clone(),
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
        if high > self.log.last() + 1 {
            panic!(
                "entries({low}, {high}) beyond last index {}",
                self.log.last()
            );
        }
        if low >= high {
            return Ok(Vec::new());
        }
        let max = max_size.into().unwrap_or(u64::MAX);
        self.log.entries(low, high, max).map_err(store_err)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx < self.snapshot_point.index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > self.log.last() {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        self.entry_term(idx)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.log.last())
    }

    /// Offers the latest checkpoint if it is recent enough and the log still continues from
    /// it; otherwise asks the driver to build one and says "temporarily unavailable" (raft
    /// asks again on the follower's next heartbeat response).
    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        if let Some(d) = self.usable_checkpoint(request_index) {
            return Ok(self.snapshot_of(d));
        }
        self.wanted.set(Some(request_index));
        Err(raft::Error::Store(
            StorageError::SnapshotTemporarilyUnavailable,
        ))
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
        let kv: Arc<dyn Store> = Arc::new(SledStore::open(&dir.join("store")).unwrap());
        let pin = Arc::new(AtomicU64::new(NO_PIN));
        RaftStorage::open(
            kv,
            &[1, 2, 3],
            &dir.join("snapshots"),
            &dir.join("log"),
            crate::raft::log::SEGMENT_BYTES,
            pin,
        )
        .unwrap()
    }

    /// Builds a checkpoint the way the driver does: ask, then step until ready.
    fn checkpoint(s: &mut RaftStorage) -> Snapshot {
        assert!(s.snapshot(0, 2).is_err(), "first ask only starts a build");
        while s.checkpoint_work() {}
        s.snapshot(0, 2).unwrap()
    }

    /// Copies a leader's checkpoint file into a follower's staging dir (what the transfer does).
    fn stage(from: &std::path::Path, to: &std::path::Path, snap: &Snapshot) {
        let d = SnapshotDescriptor::decode(snap.get_data()).unwrap();
        let staging = snapfile::staging_dir(&to.join("snapshots"));
        std::fs::create_dir_all(&staging).unwrap();
        std::fs::copy(
            snapfile::checkpoint_dir(&from.join("snapshots")).join(d.file_name()),
            staging.join(d.file_name()),
        )
        .unwrap();
    }

    /// Appending truncates a conflicting suffix, and the log reopens as written.
    #[test]
    fn append_truncates_conflicts_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = open(dir.path());
            s.append(&(1..=5).map(|i| entry(i, 1)).collect::<Vec<_>>())
                .unwrap();
            s.sync(true).unwrap();
            s.append(&[entry(3, 2)]).unwrap();
            s.sync(true).unwrap();
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

    /// A data dir from before the segment log (entries and hard state in the store) opens with
    /// the same log and vote, and the store's copy is gone.
    #[test]
    fn store_kept_log_is_migrated_to_segments() {
        let dir = tempfile::tempdir().unwrap();
        {
            let kv = SledStore::open(&dir.path().join("store")).unwrap();
            let mut b = WriteBatch::default();
            for i in 1..=7 {
                b.put(keys::log(i).to_vec(), entry(i, 2).write_to_bytes().unwrap());
            }
            let hs = HardState {
                term: 2,
                vote: 3,
                commit: 5,
                ..Default::default()
            };
            b.put(keys::meta(META_HARD_STATE), hs.write_to_bytes().unwrap());
            kv.write(b).unwrap();
            kv.flush().unwrap();
        }
        let s = open(dir.path());
        assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (1, 7));
        assert_eq!((s.hard_state().vote, s.hard_state().commit), (3, 5));
        let got = s
            .entries(1, 8, None, GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(got[6], entry(7, 2));
        assert_eq!(s.kv.scan_prefix(&[keys::LOG]).count(), 0);
        drop(s);
        let s = open(dir.path());
        assert_eq!((s.last_index().unwrap(), s.hard_state().vote), (7, 3));
    }

    /// Compaction drops entries up to the applied index and keeps the term of the last one.
    #[test]
    fn compaction_keeps_boundary_term() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path());
        s.append(&(1..=10).map(|i| entry(i, 1 + i / 5)).collect::<Vec<_>>())
            .unwrap();
        s.sync(true).unwrap();
        let mut b = WriteBatch::default();
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
        let snap = checkpoint(&mut a);
        let mut other = open(d2.path());
        let mut junk = WriteBatch::default();
        junk.put(keys::state(b"old"), b"x".to_vec());
        other.kv.write(junk).unwrap();
        stage(d1.path(), d2.path(), &snap);
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

    /// A crash after the install marker is durable (state half cleared) is finished on the
    /// next open from the staged file: the node comes back with exactly the new state.
    #[test]
    fn interrupted_install_is_finished_on_open() {
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut a = open(d1.path());
        let mut b = WriteBatch::default();
        for i in 0..100u32 {
            b.put(keys::state(&i.to_be_bytes()), vec![1; 100]);
        }
        a.set_applied(LogPosition { index: 50, term: 2 }, &mut b);
        a.kv.write(b).unwrap();
        let snap = checkpoint(&mut a);
        stage(d1.path(), d2.path(), &snap);
        {
            let other = open(d2.path());
            let mut b = WriteBatch::default();
            b.put(keys::state(b"old"), b"x".to_vec());
            other.kv.write(b).unwrap();
            // What install_snapshot does before it starts replacing: the marker, durably.
            let marker = InstallMarker {
                desc: SnapshotDescriptor::decode(snap.get_data()).unwrap(),
                conf_state: snap
                    .get_metadata()
                    .get_conf_state()
                    .write_to_bytes()
                    .unwrap(),
            };
            let mut b = WriteBatch::default();
            b.put(
                keys::meta(META_INSTALLING),
                bincode::serde::encode_to_vec(&marker, bincode::config::standard()).unwrap(),
            );
            // ...and part of the clearing, as if it crashed mid-way.
            b.delete(keys::state(&0u32.to_be_bytes()));
            other.kv.write(b).unwrap();
            other.kv.flush().unwrap();
        }
        let other = open(d2.path());
        assert_eq!(other.applied(), LogPosition { index: 50, term: 2 });
        assert_eq!(other.kv.get(&keys::meta(META_INSTALLING)).unwrap(), None);
        assert_eq!(other.kv.get(&keys::state(b"old")).unwrap(), None);
        let n = other.kv.scan_prefix(&[keys::STATE]).count();
        assert_eq!(n, 100);
        assert_eq!(other.first_index().unwrap(), 51);
    }

    /// The log is not compacted past a checkpoint a follower is fetching, and a checkpoint
    /// whose successor entries were compacted away is not offered again.
    #[test]
    fn compaction_respects_the_transfer_pin() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path());
        s.append(&(1..=20).map(|i| entry(i, 1)).collect::<Vec<_>>())
            .unwrap();
        s.sync(true).unwrap();
        let mut b = WriteBatch::default();
        s.set_applied(LogPosition { index: 10, term: 1 }, &mut b);
        s.kv.write(b).unwrap();
        let snap = checkpoint(&mut s);
        assert_eq!(snap.get_metadata().index, 10);
        s.snapshot_pin.store(10, Ordering::Relaxed);
        let mut b = WriteBatch::default();
        s.set_applied(LogPosition { index: 20, term: 1 }, &mut b);
        s.kv.write(b).unwrap();
        s.compact(18).unwrap();
        assert_eq!(s.first_index().unwrap(), 11);
        assert!(s.snapshot(0, 2).is_ok());
        s.snapshot_pin.store(NO_PIN, Ordering::Relaxed);
        s.compact(18).unwrap();
        assert_eq!(s.first_index().unwrap(), 19);
        assert!(
            s.snapshot(0, 2).is_err(),
            "stale checkpoint must not be offered"
        );
    }
}
