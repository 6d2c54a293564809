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

use std::path::Path;
use std::time::{Duration, Instant};

use super::{KvPair, Store, StoreError, WriteBatch};

/// Page cache sled may use. sled's default is 1 GiB; three nodes on one small box need less.
const SLED_CACHE_BYTES: u64 = 256 * 1024 * 1024;

/// The file sled 0.34 keeps its log and pages in, under its directory.
const SLED_DATA_FILE: &str = "db";

pub struct SledStore {
    db: sled::Db,
    tree: sled::Tree,
    /// sled's data file (`<dir>/db`), opened again only to `fdatasync` it after each flush.
    data_file: std::fs::File,
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
        Ok(SledStore {
            db,
            tree,
            data_file,
        })
    }
}

impl Store for SledStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.tree.get(key).map_err(engine)?.map(|v| v.to_vec()))
    }

    fn range(&self, from: &[u8], to: &[u8], limit: usize) -> Result<Vec<KvPair>, StoreError> {
        let mut out = Vec::new();
        for item in self.tree.range(from..to).take(limit) {
            let (k, v) = item.map_err(engine)?;
            out.push((k.to_vec(), v.to_vec()));
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
                .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(engine)),
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
                .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(engine)),
        )
    }

    fn write(&self, batch: WriteBatch) -> Result<(), StoreError> {
        let mut b = sled::Batch::default();
        for (k, v) in batch.ops {
            match v {
                Some(v) => b.insert(k, v),
                None => b.remove(k),
            }
        }
        self.tree.apply_batch(b).map_err(engine)
    }

    fn flush(&self) -> Result<usize, StoreError> {
        let n = self.db.flush().map_err(engine)?;
        self.data_file
            .sync_data()
            .map_err(|e| StoreError::Engine(format!("fdatasync of sled's data file: {e}")))?;
        Ok(n)
    }

    fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let all: Vec<_> = s.scan_prefix(b"").map(|r| r.unwrap()).collect();
        assert_eq!(all.len(), 2);
        assert_eq!(s.range(b"a", b"b", 10).unwrap().len(), 1);
    }
}
