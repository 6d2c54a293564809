//! The storage trait a node's state and Raft metadata go through, and its sled implementation.
//! (The Raft log and hard state live in segment files: `crate::raft::log`.)
//!
//! A node keeps ONE ordered key space. Raft metadata and the state machine's data live in it
//! under distinct prefixes (see [`keys`]), so that every logical change — "this command's
//! effects plus the applied index", "this snapshot replaces everything" — is one atomic
//! [`WriteBatch`]. Durability is explicit: a write is durable only after [`Store::flush`],
//! which the Raft driver's flusher thread calls ahead of each log compaction. Swapping sled for
//! another engine means implementing this trait only.

mod buffered;
mod sled_store;
pub mod vlog;

pub use buffered::Buffered;
pub use sled_store::SledStore;

/// Key prefixes of the single key space. One byte each, so ranges never interleave.
pub mod keys {
    /// Raft metadata: conf state, snapshot point, applied position, identity.
    pub const META: u8 = b'm';
    /// Raft log entries of data dirs from before the segment log: `l` + big-endian u64 index
    /// -> protobuf `Entry`. Read once, to migrate them (`raft::storage`), then deleted.
    pub const LOG: u8 = b'l';
    /// State machine data: `s` + the state machine's own keys. Snapshots copy exactly this range.
    pub const STATE: u8 = b's';

    pub fn log(index: u64) -> [u8; 9] {
        let mut k = [0u8; 9];
        k[0] = LOG;
        k[1..].copy_from_slice(&index.to_be_bytes());
        k
    }

    pub fn meta(name: &str) -> Vec<u8> {
        let mut k = Vec::with_capacity(1 + name.len());
        k.push(META);
        k.extend_from_slice(name.as_bytes());
        k
    }

    /// Keys whose values live in the value log ([`super::vlog`]), not in sled's pages: the
    /// durable queue's message bodies (`state::queue`'s `qb/`), large and written once. A
    /// store from before the value log kept them in sled (`SledStore::open` moves them).
    pub const VALUE_LOG_PREFIX: &[u8] = b"sqb/";
    /// Value-log keys that never lived in sled: the records of one enqueue command's new
    /// messages (`state::queue`'s `qg/`), written once as one value.
    pub const GROUP_PREFIX: &[u8] = b"sqg/";

    pub fn is_value_log_key(key: &[u8]) -> bool {
        key.starts_with(VALUE_LOG_PREFIX) || key.starts_with(GROUP_PREFIX)
    }

    pub fn state(key: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(1 + key.len());
        k.push(STATE);
        k.extend_from_slice(key);
        k
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage engine: {0}")]
    Engine(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

/// An atomic group of writes: all of them land, or (after a crash before flush) none.
///
/// A batch also answers reads of its own pending writes ([`WriteBatch::get`]), so a state
/// machine applying many commands into one batch sees each earlier command's effects.
#[derive(Debug, Default)]
pub struct WriteBatch {
    pub ops: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// Total key + value bytes, for metrics and limits.
    pub bytes: usize,
    /// Position in `ops` of the latest write to each key.
    latest: std::collections::HashMap<Vec<u8>, usize>,
}

impl WriteBatch {
    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        let (k, v) = (key.into(), value.into());
        self.bytes += k.len() + v.len();
        self.latest.insert(k.clone(), self.ops.len());
        self.ops.push((k, Some(v)));
    }

    pub fn delete(&mut self, key: impl Into<Vec<u8>>) {
        let k = key.into();
        self.bytes += k.len();
        self.latest.insert(k.clone(), self.ops.len());
        self.ops.push((k, None));
    }

    /// The pending write to `key`: `Some(Some(v))` put, `Some(None)` deleted, `None` untouched.
    pub fn get(&self, key: &[u8]) -> Option<Option<&[u8]>> {
        self.latest.get(key).map(|i| self.ops[*i].1.as_deref())
    }

    /// Reads `key` as it will be once this batch is written: the batch first, then `store`.
    pub fn read_through(
        &self,
        store: &dyn Store,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        match self.get(key) {
            Some(v) => Ok(v.map(|v| v.to_vec())),
            None => store.get(key),
        }
    }

    /// [`Store::get_range`] as it will read once this batch is written.
    pub fn read_range_through(
        &self,
        store: &dyn Store,
        key: &[u8],
        offset: usize,
        len: usize,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        match self.get(key) {
            Some(Some(v)) => slice_of(key, v, offset, len).map(Some),
            Some(None) => Ok(None),
            None => store.get_range(key, offset, len),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

pub type KvPair = (Vec<u8>, Vec<u8>);

/// `value[offset..offset + len]`, or a corruption error naming `key` when it is shorter.
pub fn slice_of(
    key: &[u8],
    value: &[u8],
    offset: usize,
    len: usize,
) -> Result<Vec<u8>, StoreError> {
    offset
        .checked_add(len)
        .and_then(|end| value.get(offset..end))
        .map(<[u8]>::to_vec)
        .ok_or_else(|| {
            StoreError::Corrupt(format!(
                "value of {key:?} has {} bytes; bytes {offset}..+{len} were asked for",
                value.len()
            ))
        })
}

/// Makes `dir`'s entries durable (a created, renamed or deleted file), for every file-based
/// part of a node's storage: the Raft log, snapshot files, the value log.
pub fn sync_dir(dir: &std::path::Path) -> Result<(), StoreError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::Engine(format!("fsync of directory {}: {e}", dir.display())))
}

/// Files in `dir` whose extension is `ext`: what the storage tests count (segments, spares,
/// kept free files).
#[cfg(test)]
pub(crate) fn files_with_extension(dir: &std::path::Path, ext: &str) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == ext)
        })
        .count()
}

/// The ordered, batch-atomic, explicitly flushed key-value store a node runs on.
pub trait Store: Send + Sync + 'static {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Bytes `offset..offset + len` of the value at `key` (`None`: no such key; an error when
    /// the value is shorter). A reader takes one message's body out of a blob holding many
    /// without copying the rest; a value-log engine reads only those bytes from disk.
    fn get_range(
        &self,
        key: &[u8],
        offset: usize,
        len: usize,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        match self.get(key)? {
            Some(v) => slice_of(key, &v, offset, len).map(Some),
            None => Ok(None),
        }
    }
    /// Pairs with `from <= key < to`, in key order, at most `limit`.
    fn range(&self, from: &[u8], to: &[u8], limit: usize) -> Result<Vec<KvPair>, StoreError>;
    /// Every pair whose key starts with `prefix`, in key order, streamed.
    fn scan_prefix<'a>(
        &'a self,
        prefix: &[u8],
    ) -> Box<dyn Iterator<Item = Result<KvPair, StoreError>> + 'a>;
    /// Pairs with `from <= key < to`, in key order, streamed (one pair in memory at a time).
    fn scan_range<'a>(
        &'a self,
        from: &[u8],
        to: &[u8],
    ) -> Box<dyn Iterator<Item = Result<KvPair, StoreError>> + 'a>;
    /// Applies the batch atomically (not yet durable).
    fn write(&self, batch: WriteBatch) -> Result<(), StoreError>;
    /// Makes every earlier write durable (fsync). Returns bytes flushed where known.
    fn flush(&self) -> Result<usize, StoreError>;
    /// Bytes the engine occupies on disk, for metrics.
    fn size_on_disk(&self) -> u64;
}
