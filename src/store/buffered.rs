//! A write-behind buffer in front of the state store: applied batches wait in memory and are
//! written to sled together, as one batch, every [`WRITE_OUT_MS`] or [`WRITE_OUT_BYTES`].
//!
//! Why: sled 0.34 seals and writes its I/O buffer twice in every `apply_batch` (the batch
//! marker in `pin_log`), and each of those writes ends in a `sync_file_range` that waits for
//! the device. With one batch per Ready that was hundreds of small device writes a second per
//! node, beside the Raft log's `fdatasync`s on the same disk (measured: sled's I/O threads wrote
//! ~140 MB/s for ~300 one-message enqueues/s). Written together, a burst costs one sled batch,
//! and a key written many times in the window (queue stats, the applied index, a message that
//! is enqueued, leased and completed in the window) reaches sled once, or never.
//!
//! Contract kept: a write is visible to every reader as soon as `write` returns (readers look
//! at the buffer first, newest batch first, then at sled); batches reach sled in order, each
//! write-out atomically, so a crash leaves a prefix of them; nothing is durable before
//! [`Store::flush`], which writes the buffer out first. The Raft log stays the durable truth:
//! after a crash the node replays it from the applied index sled kept, as before.
//!
//! Limits: at most [`MAX_BUFFERED_BYTES`] wait; a `write` beyond it blocks until the writer
//! thread has caught up (backpressure on the Raft driver, which then stops applying). Streamed
//! scans (snapshot checkpoints and installs, rare) write the buffer out before reading sled.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{KvPair, Store, StoreError, WriteBatch};

/// Buffered batches are written out once they hold this many bytes...
pub const WRITE_OUT_BYTES: usize = 2 * 1024 * 1024;
/// ...or once the oldest has waited this long.
pub const WRITE_OUT_MS: u64 = 20;
/// A `write` past this many buffered bytes waits for the writer (backpressure).
pub const MAX_BUFFERED_BYTES: usize = 64 * 1024 * 1024;

/// One applied batch, latest write per key (`None`: deleted).
type Ops = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

struct Pending {
    seq: u64,
    ops: Arc<Ops>,
    bytes: usize,
    at: Instant,
}

#[derive(Default)]
struct State {
    /// Oldest first.
    batches: VecDeque<Pending>,
    bytes: usize,
    /// Sequence of the last batch pushed / written to sled.
    pushed: u64,
    written: u64,
    /// Highest sequence a caller is waiting to see written (flush, scans, backpressure).
    wanted: u64,
    /// A write-out failed: the store is unusable (the node stops on the error).
    failed: Option<String>,
    stop: bool,
}

struct Shared {
    inner: Arc<dyn Store>,
    state: Mutex<State>,
    /// Wakes the writer (work) and the waiters (progress).
    cv: Condvar,
}

pub struct Buffered {
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn snapshot(&self) -> Result<Vec<Arc<Ops>>, StoreError> {
        let st = self.lock();
        if let Some(e) = &st.failed {
            return Err(StoreError::Engine(e.clone()));
        }
        Ok(st.batches.iter().map(|p| p.ops.clone()).collect())
    }

    /// Blocks until every batch up to `seq` is in sled.
    fn wait_written(&self, seq: u64) -> Result<(), StoreError> {
        let mut st = self.lock();
        st.wanted = st.wanted.max(seq);
        self.cv.notify_all();
        loop {
            if let Some(e) = &st.failed {
                return Err(StoreError::Engine(e.clone()));
            }
            if st.written >= seq {
                return Ok(());
            }
            st = self.cv.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// The writer thread: waits for a reason to write, merges the waiting batches into one
    /// and writes it to sled, then drops them from the buffer (readers find them in sled).
    fn run_writer(&self) {
        loop {
            let taken: Vec<(u64, Arc<Ops>)> = {
                let mut st = self.lock();
                loop {
                    if st.stop || st.failed.is_some() {
                        return;
                    }
                    let due = st.batches.front().map(|p| {
                        st.bytes >= WRITE_OUT_BYTES
                            || st.wanted > st.written
                            || p.at.elapsed() >= Duration::from_millis(WRITE_OUT_MS)
                    });
                    match due {
                        Some(true) => break,
                        Some(false) => {
                            let wait = Duration::from_millis(WRITE_OUT_MS).saturating_sub(
                                st.batches
                                    .front()
                                    .map(|p| p.at.elapsed())
                                    .unwrap_or_default(),
                            );
                            st = self
                                .cv
                                .wait_timeout(st, wait.max(Duration::from_millis(1)))
                                .unwrap_or_else(|p| p.into_inner())
                                .0;
                        }
                        None => st = self.cv.wait(st).unwrap_or_else(|p| p.into_inner()),
                    }
                }
                st.batches.iter().map(|p| (p.seq, p.ops.clone())).collect()
            };
            let Some(&(upto, _)) = taken.last() else {
                continue;
            };
            let mut merged: Ops = BTreeMap::new();
            for (_, ops) in &taken {
                for (k, v) in ops.iter() {
                    merged.insert(k.clone(), v.clone());
                }
            }
            let mut batch = WriteBatch::default();
            for (k, v) in merged {
                match v {
                    Some(v) => batch.put(k, v),
                    None => batch.delete(k),
                }
            }
            let r = self.inner.write(batch);
            let mut st = self.lock();
            match r {
                Ok(()) => {
                    while st.batches.front().is_some_and(|p| p.seq <= upto) {
                        if let Some(p) = st.batches.pop_front() {
                            st.bytes -= p.bytes;
                        }
                    }
                    st.written = upto;
                }
                Err(e) => st.failed = Some(format!("writing buffered state out: {e}")),
            }
            self.cv.notify_all();
        }
    }
}

impl Buffered {
    pub fn new(inner: Arc<dyn Store>) -> Result<Buffered, StoreError> {
        let shared = Arc::new(Shared {
            inner,
            state: Mutex::new(State::default()),
            cv: Condvar::new(),
        });
        let s = shared.clone();
        let writer = std::thread::Builder::new()
            .name("state-write".into())
            .spawn(move || s.run_writer())
            .map_err(|e| StoreError::Engine(format!("spawning the state writer: {e}")))?;
        Ok(Buffered {
            shared,
            writer: Some(writer),
        })
    }

    /// Writes everything buffered so far out to sled (not yet durable) and waits for it.
    fn write_out(&self) -> Result<(), StoreError> {
        let seq = self.shared.lock().pushed;
        self.shared.wait_written(seq)
    }
}

impl Drop for Buffered {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.cv.notify_all();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

/// The buffered write to `key`, newest batch first: `Some(None)` deleted, `None` not buffered.
fn lookup<'a>(batches: &'a [Arc<Ops>], key: &[u8]) -> Option<Option<&'a Vec<u8>>> {
    batches
        .iter()
        .rev()
        .find_map(|ops| ops.get(key).map(|v| v.as_ref()))
}

impl Store for Buffered {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let batches = self.shared.snapshot()?;
        match lookup(&batches, key) {
            Some(v) => Ok(v.cloned()),
            None => self.shared.inner.get(key),
        }
    }

    fn range(&self, from: &[u8], to: &[u8], limit: usize) -> Result<Vec<KvPair>, StoreError> {
        if from >= to {
            return Ok(Vec::new());
        }
        let batches = self.shared.snapshot()?;
        let mut overlay: Ops = BTreeMap::new();
        for ops in &batches {
            for (k, v) in ops.range(from.to_vec()..to.to_vec()) {
                overlay.insert(k.clone(), v.clone());
            }
        }
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        for (k, v) in self.shared.inner.range(from, to, limit + overlay.len())? {
            if !overlay.contains_key(&k) {
                merged.insert(k, v);
            }
        }
        for (k, v) in overlay {
            if let Some(v) = v {
                merged.insert(k, v);
            }
        }
        Ok(merged.into_iter().take(limit).collect())
    }

    fn scan_prefix<'a>(
        &'a self,
        prefix: &[u8],
    ) -> Box<dyn Iterator<Item = Result<KvPair, StoreError>> + 'a> {
        match self.write_out() {
            Ok(()) => self.shared.inner.scan_prefix(prefix),
            Err(e) => Box::new(std::iter::once(Err(e))),
        }
    }

    fn scan_range<'a>(
        &'a self,
        from: &[u8],
        to: &[u8],
    ) -> Box<dyn Iterator<Item = Result<KvPair, StoreError>> + 'a> {
        match self.write_out() {
            Ok(()) => self.shared.inner.scan_range(from, to),
            Err(e) => Box::new(std::iter::once(Err(e))),
        }
    }

    fn write(&self, batch: WriteBatch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let bytes = batch.bytes;
        let mut ops: Ops = BTreeMap::new();
        for (k, v) in batch.ops {
            ops.insert(k, v);
        }
        let mut st = self.shared.lock();
        if let Some(e) = &st.failed {
            return Err(StoreError::Engine(e.clone()));
        }
        st.pushed += 1;
        let seq = st.pushed;
        st.bytes += bytes;
        st.batches.push_back(Pending {
            seq,
            ops: Arc::new(ops),
            bytes,
            at: Instant::now(),
        });
        let over = st.bytes > MAX_BUFFERED_BYTES;
        if st.bytes >= WRITE_OUT_BYTES || st.batches.len() == 1 {
            self.shared.cv.notify_all();
        }
        drop(st);
        if over {
            crate::metrics::M.state_write_backpressure.inc();
            self.shared.wait_written(seq.saturating_sub(1))?;
        }
        Ok(())
    }

    /// Writes the buffer out, then makes sled durable.
    fn flush(&self) -> Result<usize, StoreError> {
        self.write_out()?;
        self.shared.inner.flush()
    }

    fn size_on_disk(&self) -> u64 {
        self.shared.inner.size_on_disk()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SledStore;

    fn open(dir: &std::path::Path) -> Buffered {
        Buffered::new(Arc::new(SledStore::open(dir).unwrap())).unwrap()
    }

    fn put(s: &Buffered, k: &str, v: Option<&str>) {
        let mut b = WriteBatch::default();
        match v {
            Some(v) => b.put(k.as_bytes().to_vec(), v.as_bytes().to_vec()),
            None => b.delete(k.as_bytes().to_vec()),
        }
        s.write(b).unwrap();
    }

    fn keys(pairs: Vec<KvPair>) -> Vec<String> {
        pairs
            .into_iter()
            .map(|(k, v)| {
                format!(
                    "{}={}",
                    String::from_utf8_lossy(&k),
                    String::from_utf8_lossy(&v)
                )
            })
            .collect()
    }

    /// Reads see buffered writes at once, newest first, tombstones included, merged with
    /// what is already in sled; scans and ranges agree.
    #[test]
    fn reads_see_the_buffer_over_sled() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        put(&s, "a", Some("1"));
        put(&s, "b", Some("1"));
        put(&s, "c", Some("1"));
        s.write_out().unwrap();
        put(&s, "b", Some("2"));
        put(&s, "c", None);
        put(&s, "d", Some("1"));
        put(&s, "b", Some("3"));
        assert_eq!(s.get(b"b").unwrap().unwrap(), b"3");
        assert_eq!(s.get(b"c").unwrap(), None);
        assert_eq!(
            keys(s.range(b"a", b"l", 10).unwrap()),
            ["a=1", "b=3", "d=1"]
        );
        assert_eq!(keys(s.range(b"a", b"l", 2).unwrap()), ["a=1", "b=3"]);
        let scanned: Vec<KvPair> = s.scan_range(b"a", b"l").map(|r| r.unwrap()).collect();
        assert_eq!(keys(scanned), ["a=1", "b=3", "d=1"]);
    }

    /// After a flush everything is in sled and survives a reopen; what was written after the
    /// last flush may or may not have reached sled, but never a part of a batch.
    #[test]
    fn flush_makes_the_buffer_durable() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = open(dir.path());
            put(&s, "a", Some("1"));
            let mut b = WriteBatch::default();
            b.put(b"e".to_vec(), b"1".to_vec());
            b.put(b"f".to_vec(), b"1".to_vec());
            s.write(b).unwrap();
            s.flush().unwrap();
        }
        let s = open(dir.path());
        assert_eq!(
            keys(s.range(b"a", b"l", 10).unwrap()),
            ["a=1", "e=1", "f=1"]
        );
    }

    /// The writer writes out on its own once the oldest batch has waited its time.
    #[test]
    fn the_writer_writes_out_by_age() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        put(&s, "a", Some("1"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while s.shared.lock().written < 1 {
            assert!(Instant::now() < deadline, "never written out");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(s.shared.lock().batches.is_empty());
        assert_eq!(s.get(b"a").unwrap().unwrap(), b"1");
    }
}
