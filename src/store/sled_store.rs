//! [`Store`] on sled 0.34: one tree, batches through `apply_batch`, durability through `flush`.
//!
//! sled's background flusher is turned off (`flush_every_ms(None)`): the Raft driver decides
//! when bytes become durable (its flusher thread, ahead of each log compaction).
//!
//! sled 0.34's own flush is not enough for that: on Linux it ends with `sync_file_range`,
//! which waits for the pages to reach the device but neither flushes the device's volatile
//! write cache nor persists the file's grown size, so a power loss (or a VM host crash) can
//! lose writes it reported flushed. [`SledStore::flush`] therefore follows it with
//! `fdatasync` on sled's data file: the writes were already issued, so this adds the device
//! cache flush and the metadata, which is what "fsync before acknowledging" means.
//!
//! Values of [`keys::is_value_log_key`] keys (message bodies) are kept in the value log
//! ([`super::vlog`]) under `<dir>/vlog`, with a pointer in sled; `get` and the scans return the
//! value itself. A store from before the value log has those values in sled; `open` moves them
//! (a bounded batch at a time, resumable after a crash) before anything reads them.

use std::path::Path;
use std::time::{Duration, Instant};

use std::collections::HashMap;

use super::vlog::{Pointer, ValueLog};
use super::{keys, KvPair, Store, StoreError, WriteBatch};

/// Page cache sled may use. sled's default is 1 GiB; three nodes on one small box need less.
const SLED_CACHE_BYTES: u64 = 256 * 1024 * 1024;

/// The file sled 0.34 keeps its log and pages in, under its directory.
const SLED_DATA_FILE: &str = "db";
/// The value log's directory, under the store's.
const VALUE_LOG_DIR: &str = "vlog";
/// Meta key saying where moving old in-sled values into the value log has got to: absent in
/// a store from before the value log, the last key moved while it runs, empty once done.
const VALUE_LOG_MIGRATED: &str = "value-log-migrated";
/// Values moved into the value log per batch while migrating.
const MIGRATE_CHUNK: usize = 1_024;
/// Times a read retries a pointer whose segment was reclaimed under it (the key was rewritten
/// or deleted meanwhile); more than that is corruption.
const READ_RETRIES: usize = 3;

pub struct SledStore {
    db: sled::Db,
    tree: sled::Tree,
    /// sled's data file (`<dir>/db`), opened again only to `fdatasync` it after each flush.
    data_file: std::fs::File,
    /// Where the values of value-log keys are.
    vlog: ValueLog,
    /// Held through each `write`, so the pointers a batch replaces are read and counted
    /// without another batch in between (the driver is the only writer once a node runs).
    write_lock: std::sync::Mutex<()>,
}

fn engine(e: sled::Error) -> StoreError {
    StoreError::Engine(e.to_string())
}

/// How long `open` waits for a just-closed store of the same directory to let go of its file
/// lock: sled's I/O threads can hold the closed database a moment after its last handle is
/// dropped (seen when a node restarts in the same process under load). Past it, open fails.
const LOCK_WAIT: Duration = Duration::from_secs(5);
/// How often `open` tries the lock again while waiting.
const LOCK_RETRY: Duration = Duration::from_millis(20);

/// Opens sled, waiting up to [`LOCK_WAIT`] while another handle still holds its lock.
fn open_db(dir: &Path) -> Result<sled::Db, StoreError> {
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        let r = sled::Config::new()
            .path(dir)
            .cache_capacity(SLED_CACHE_BYTES)
            .flush_every_ms(None)
            .mode(sled::Mode::HighThroughput)
            .open();
        match r {
            // sled reports a held lock only in its message (kind `Other`).
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(LOCK_RETRY)
            }
            r => return r.map_err(engine),
        }
    }
}

impl SledStore {
    pub fn open(dir: &Path) -> Result<SledStore, StoreError> {
        let db = open_db(dir)?;
        let tree = db.open_tree("corral").map_err(engine)?;
        let data_file = std::fs::File::open(dir.join(SLED_DATA_FILE)).map_err(|e| {
            StoreError::Engine(format!("opening sled's data file to fdatasync it: {e}"))
        })?;
        let migrated = tree.get(keys::meta(VALUE_LOG_MIGRATED)).map_err(engine)?;
        let pointers = stored_pointers(&tree, migrated.as_deref())?;
        let vlog = ValueLog::open(&dir.join(VALUE_LOG_DIR), &pointers)?;
        let store = SledStore {
            db,
            tree,
            data_file,
            vlog,
            write_lock: std::sync::Mutex::new(()),
        };
        if migrated.as_deref() != Some(&[]) {
            store.migrate_to_value_log(migrated.map(|m| m.to_vec()))?;
        }
        Ok(store)
    }

    /// Moves value-log keys' values that are still in sled into the value log, recording
    /// progress in the same batches; `after`: the last key a crashed run moved.
    fn migrate_to_value_log(&self, after: Option<Vec<u8>>) -> Result<(), StoreError> {
        let end = prefix_end(keys::VALUE_LOG_PREFIX);
        let mut from = match after {
            Some(mut k) => {
                k.push(0);
                k
            }
            None => keys::VALUE_LOG_PREFIX.to_vec(),
        };
        let mut moved = 0usize;
        loop {
            let chunk: Vec<(sled::IVec, sled::IVec)> = self
                .tree
                .range(from.clone()..end.clone())
                .take(MIGRATE_CHUNK)
                .collect::<Result<_, _>>()
                .map_err(engine)?;
            let Some((last, _)) = chunk.last() else {
                break;
            };
            let values: Vec<&[u8]> = chunk.iter().map(|(_, v)| v.as_ref()).collect();
            let pointers = self.vlog.append(&values)?;
            let mut b = sled::Batch::default();
            for ((k, _), p) in chunk.iter().zip(&pointers) {
                b.insert(k.clone(), &p.encode()[..]);
            }
            b.insert(keys::meta(VALUE_LOG_MIGRATED), last.clone());
            self.tree.apply_batch(b).map_err(engine)?;
            self.vlog.adjust(&pointers, &[]);
            moved += chunk.len();
            from = last.to_vec();
            from.push(0);
        }
        let mut b = sled::Batch::default();
        b.insert(keys::meta(VALUE_LOG_MIGRATED), &[][..]);
        self.tree.apply_batch(b).map_err(engine)?;
        self.flush()?;
        if moved > 0 {
            tracing::info!(values = moved, "moved stored bodies into the value log");
        }
        Ok(())
    }

    /// The pointer `key` holds now, if it is a value-log key with a value.
    fn pointer_at(&self, key: &[u8]) -> Result<Option<Pointer>, StoreError> {
        match self.tree.get(key).map_err(engine)? {
            Some(v) => Pointer::decode(&v).map(Some),
            None => Ok(None),
        }
    }

    /// The value a stored pair stands for: itself, or what its pointer names. `None` when
    /// the key was deleted while this read was under way.
    fn resolve(&self, key: &[u8], stored: sled::IVec) -> Result<Option<Vec<u8>>, StoreError> {
        self.resolve_with(key, stored, |v| Ok(v.to_vec()), |p| self.vlog.read(p))
    }

    /// [`Self::resolve`] with the reads spelled out: `plain` for a value kept in sled, `read`
    /// for one in the value log (`None` from it: reclaimed, read the key again).
    fn resolve_with(
        &self,
        key: &[u8],
        stored: sled::IVec,
        plain: impl FnOnce(&[u8]) -> Result<Vec<u8>, StoreError>,
        read: impl Fn(&Pointer) -> Result<Option<Vec<u8>>, StoreError>,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        if !keys::is_value_log_key(key) {
            return plain(&stored).map(Some);
        }
        let mut stored = Some(stored);
        for _ in 0..READ_RETRIES {
            let Some(v) = stored.take() else {
                return Ok(None);
            };
            if let Some(value) = read(&Pointer::decode(&v)?)? {
                return Ok(Some(value));
            }
            // Reclaimed under us: the key has changed since; read it again.
            stored = self.tree.get(key).map_err(engine)?;
        }
        Err(StoreError::Corrupt(format!(
            "value-log pointer of {key:?} keeps naming reclaimed segments"
        )))
    }

    fn resolve_pair(&self, kv: (sled::IVec, sled::IVec)) -> Option<Result<KvPair, StoreError>> {
        let (k, v) = kv;
        self.resolve(&k, v)
            .map(|v| v.map(|v| (k.to_vec(), v)))
            .transpose()
    }
}

/// The first key after every key starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    vec![u8::MAX; prefix.len() + 1]
}

/// Every pointer in sled (value-log keys up to `migrated`'s progress; all of them once the
/// migration is done, none before it started).
fn stored_pointers(tree: &sled::Tree, migrated: Option<&[u8]>) -> Result<Vec<Pointer>, StoreError> {
    let Some(upto) = migrated else {
        return Ok(Vec::new());
    };
    let end = if upto.is_empty() {
        prefix_end(keys::VALUE_LOG_PREFIX)
    } else {
        let mut k = upto.to_vec();
        k.push(0);
        k
    };
    let groups = tree.range(keys::GROUP_PREFIX.to_vec()..prefix_end(keys::GROUP_PREFIX));
    let mut out = Vec::new();
    for item in tree
        .range(keys::VALUE_LOG_PREFIX.to_vec()..end)
        .chain(groups)
    {
        let (_, v) = item.map_err(engine)?;
        out.push(Pointer::decode(&v)?);
    }
    Ok(out)
}

impl Store for SledStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.tree.get(key).map_err(engine)? {
            Some(v) => self.resolve(key, v),
            None => Ok(None),
        }
    }

    fn get_range(
        &self,
        key: &[u8],
        offset: usize,
        len: usize,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(stored) = self.tree.get(key).map_err(engine)? else {
            return Ok(None);
        };
        self.resolve_with(
            key,
            stored,
            |v| super::slice_of(key, v, offset, len),
            |p| self.vlog.read_range(p, offset, len),
        )
    }

    fn range(&self, from: &[u8], to: &[u8], limit: usize) -> Result<Vec<KvPair>, StoreError> {
        let mut out = Vec::new();
        for item in self.tree.range(from..to) {
            if out.len() >= limit {
                break;
            }
            if let Some(pair) = self.resolve_pair(item.map_err(engine)?) {
                out.push(pair?);
            }
        }
        Ok(out)
    }

    fn scan_prefix<'a>(
        &'a self,
        prefix: &[u8],
    ) -> Box<dyn Iterator<Item = Result<KvPair, StoreError>> + 'a> {
        Box::new(
            self.tree
                .scan_prefix(prefix)
                .filter_map(|r| {
                    r.map_err(engine)
                        .map(|kv| self.resolve_pair(kv))
                        .transpose()
                })
                .map(|r| r.and_then(|x| x)),
        )
    }

    fn scan_range<'a>(
        &'a self,
        from: &[u8],
        to: &[u8],
    ) -> Box<dyn Iterator<Item = Result<KvPair, StoreError>> + 'a> {
        Box::new(
            self.tree
                .range(from.to_vec()..to.to_vec())
                .filter_map(|r| {
                    r.map_err(engine)
                        .map(|kv| self.resolve_pair(kv))
                        .transpose()
                })
                .map(|r| r.and_then(|x| x)),
        )
    }

    /// Value-log values go to the value log first (written and synced), then the batch with
    /// their pointers goes to sled; the pointers it replaces or deletes stop counting.
    fn write(&self, batch: WriteBatch) -> Result<(), StoreError> {
        let _serial = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        let values: Vec<&[u8]> = batch
            .ops
            .iter()
            .filter(|(k, _)| keys::is_value_log_key(k))
            .filter_map(|(_, v)| v.as_deref())
            .collect();
        let pointers = self.vlog.append(&values)?;
        let mut fresh = pointers.iter();
        // The pointer each value-log key holds as of the ops so far in this batch.
        let mut current: HashMap<Vec<u8>, Option<Pointer>> = HashMap::new();
        let mut removed = Vec::new();
        let mut b = sled::Batch::default();
        for (k, v) in batch.ops {
            if !keys::is_value_log_key(&k) {
                match v {
                    Some(v) => b.insert(k, v),
                    None => b.remove(k),
                }
                continue;
            }
            let old = match current.get(&k) {
                Some(p) => *p,
                None => self.pointer_at(&k)?,
            };
            removed.extend(old);
            let new = match v {
                Some(_) => Some(*fresh.next().ok_or_else(|| {
                    StoreError::Engine("value log returned too few pointers".into())
                })?),
                None => None,
            };
            match new {
                Some(p) => b.insert(k.clone(), &p.encode()[..]),
                None => b.remove(k.clone()),
            }
            current.insert(k, new);
        }
        self.tree.apply_batch(b).map_err(engine)?;
        self.vlog.adjust(&pointers, &removed);
        Ok(())
    }

    /// Flushes sled, then deletes the value-log segments whose last pointer was gone before
    /// the flush began (that deletion is durable now).
    fn flush(&self) -> Result<usize, StoreError> {
        let reclaimable = self.vlog.reclaimable();
        let n = self.db.flush().map_err(engine)?;
        self.data_file
            .sync_data()
            .map_err(|e| StoreError::Engine(format!("fdatasync of sled's data file: {e}")))?;
        let reclaimed = self.vlog.reclaim(&reclaimable)?;
        crate::metrics::M
            .value_log_reclaimed_segments
            .inc_by(reclaimed);
        Ok(n)
    }

    fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0) + self.vlog.size_on_disk()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::vlog::POINTER_BYTES;

    /// Batches apply atomically and survive a reopen once flushed.
    #[test]
    fn batch_survives_reopen_after_flush() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStore::open(dir.path()).unwrap();
            let mut b = WriteBatch::default();
            b.put(b"a".to_vec(), b"1".to_vec());
            b.put(b"b".to_vec(), b"2".to_vec());
            s.write(b).unwrap();
            s.flush().unwrap();
        }
        let s = SledStore::open(dir.path()).unwrap();
        assert_eq!(s.get(b"a").unwrap(), Some(b"1".to_vec()));
        let all: Vec<_> = s.scan_range(b"a", b"c").map(|r| r.unwrap()).collect();
        assert_eq!(all.len(), 2);
        assert_eq!(s.range(b"a", b"b", 10).unwrap().len(), 1);
    }

    fn body_key(n: u32) -> Vec<u8> {
        let mut k = keys::VALUE_LOG_PREFIX.to_vec();
        k.extend_from_slice(&n.to_be_bytes());
        k
    }

    /// Value-log files in `dir` with the extension `ext` (segments, or free files kept).
    fn vlog_files_with(dir: &Path, ext: &str) -> usize {
        crate::store::files_with_extension(&dir.join(VALUE_LOG_DIR), ext)
    }

    fn vlog_files(dir: &Path) -> usize {
        vlog_files_with(dir, "vlog")
    }

    /// Bodies go to the value log and read back through get, range and scans, before and
    /// after a reopen; sled holds only pointers for them.
    #[test]
    fn bodies_live_in_the_value_log() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStore::open(dir.path()).unwrap();
            let mut b = WriteBatch::default();
            b.put(body_key(1), vec![1u8; 3000]);
            b.put(body_key(2), b"two".to_vec());
            b.put(b"sqn/1".to_vec(), b"meta".to_vec());
            s.write(b).unwrap();
            assert_eq!(
                s.tree.get(body_key(1)).unwrap().unwrap().len(),
                POINTER_BYTES
            );
            s.flush().unwrap();
        }
        let s = SledStore::open(dir.path()).unwrap();
        assert_eq!(s.get(&body_key(1)).unwrap().unwrap(), vec![1u8; 3000]);
        let scanned: Vec<_> = s.scan_prefix(b"sqb/").map(|r| r.unwrap().1).collect();
        assert_eq!(scanned, vec![vec![1u8; 3000], b"two".to_vec()]);
        let ranged = s.range(b"s", b"t", 10).unwrap();
        assert_eq!(ranged.len(), 3);
        assert_eq!(ranged[1].1, b"two");
    }

    /// A group of message records (`sqg/`) lives in the value log too, and the pointers to it
    /// count when the store opens: a segment holding nothing but a group is kept and read.
    #[test]
    fn groups_live_in_the_value_log_and_keep_their_segment() {
        let dir = tempfile::tempdir().unwrap();
        let group = |n: u32| {
            let mut k = keys::GROUP_PREFIX.to_vec();
            k.extend_from_slice(&n.to_be_bytes());
            k
        };
        {
            let s = SledStore::open(dir.path()).unwrap();
            let mut b = WriteBatch::default();
            b.put(group(1), vec![7u8; 5000]);
            s.write(b).unwrap();
            let stored = s.tree.get(group(1)).unwrap().unwrap();
            assert_eq!(stored.len(), POINTER_BYTES, "only a pointer in sled");
            s.flush().unwrap();
        }
        let s = SledStore::open(dir.path()).unwrap();
        assert_eq!(
            vlog_files(dir.path()),
            2,
            "the group's segment and a new one"
        );
        assert_eq!(s.get(&group(1)).unwrap().unwrap(), vec![7u8; 5000]);
        assert_eq!(
            s.get_range(&group(1), 4990, 10).unwrap().unwrap(),
            vec![7u8; 10]
        );
    }

    /// A part of a value reads back alone, from the value log and from sled's own pages; a
    /// part past the value's end is a corruption error, and a missing key is `None`.
    #[test]
    fn parts_of_values_read_alone() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        let mut b = WriteBatch::default();
        b.put(body_key(1), b"0123456789".to_vec());
        b.put(b"sqn/1".to_vec(), b"meta".to_vec());
        s.write(b).unwrap();
        assert_eq!(s.get_range(&body_key(1), 3, 4).unwrap().unwrap(), b"3456");
        assert_eq!(s.get_range(&body_key(1), 10, 0).unwrap().unwrap(), b"");
        assert_eq!(s.get_range(b"sqn/1", 1, 2).unwrap().unwrap(), b"et");
        assert!(matches!(
            s.get_range(&body_key(1), 8, 3),
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(
            s.get_range(b"sqn/1", 3, 2),
            Err(StoreError::Corrupt(_))
        ));
        assert_eq!(s.get_range(&body_key(2), 0, 1).unwrap(), None);
    }

    /// A segment goes once every body in it is deleted or replaced and a flush made that
    /// durable, not before; the active segment stays.
    #[test]
    fn emptied_segments_are_reclaimed_after_a_flush() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStore::open(dir.path()).unwrap();
            let mut b = WriteBatch::default();
            b.put(body_key(1), b"old".to_vec());
            s.write(b).unwrap();
            s.flush().unwrap();
        }
        // Reopened: the body's segment is sealed, a new one is active.
        let s = SledStore::open(dir.path()).unwrap();
        assert_eq!(vlog_files(dir.path()), 2);
        let mut b = WriteBatch::default();
        b.put(body_key(1), b"new".to_vec());
        b.put(body_key(2), b"x".to_vec());
        b.delete(body_key(2));
        s.write(b).unwrap();
        assert_eq!(vlog_files(dir.path()), 2, "nothing goes before a flush");
        s.flush().unwrap();
        assert_eq!(vlog_files(dir.path()), 1);
        assert_eq!(vlog_files_with(dir.path(), "vlogfree"), 1, "kept for reuse");
        assert_eq!(s.get(&body_key(1)).unwrap().unwrap(), b"new");
        assert_eq!(s.get(&body_key(2)).unwrap(), None);
    }

    /// A store from before the value log (bodies in sled) has them moved on open, and reads
    /// the same values afterwards.
    #[test]
    fn old_in_sled_bodies_are_migrated_on_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = open_db(dir.path()).unwrap();
            let tree = db.open_tree("corral").unwrap();
            for n in 0..2_500u32 {
                tree.insert(body_key(n), n.to_le_bytes().repeat(100))
                    .unwrap();
            }
            tree.insert(b"sqn/1", &b"meta"[..]).unwrap();
            db.flush().unwrap();
        }
        let s = SledStore::open(dir.path()).unwrap();
        assert_eq!(
            s.get(&body_key(7)).unwrap().unwrap(),
            7u32.to_le_bytes().repeat(100)
        );
        assert_eq!(s.scan_prefix(b"sqb/").count(), 2_500);
        assert_eq!(
            s.tree.get(body_key(7)).unwrap().unwrap().len(),
            POINTER_BYTES
        );
        assert_eq!(s.get(b"sqn/1").unwrap().unwrap(), b"meta");
        drop(s);
        let s = SledStore::open(dir.path()).unwrap();
        assert_eq!(s.get(&body_key(2_499)).unwrap().unwrap().len(), 400);
    }
}
