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
//! at the buffer first, then at sled); batches reach sled in order, each
//! write-out atomically, so a crash leaves a prefix of them; nothing is durable before
//! [`Store::flush`], which writes the buffer out first. The Raft log stays the durable truth:
//! after a crash the node replays it from the applied index sled kept, as before.
//!
//! The writer thread runs at [`crate::BACKGROUND_NICE`]: no acknowledgement waits on it, so the
//! driver and the ingress win a contended CPU, and the backpressure below keeps it from falling
//! behind for good.
//!
//! Limits: at most [`MAX_BUFFERED_BYTES`] wait; a `write` beyond it blocks until the writer
//! thread has caught up (backpressure on the Raft driver, which then stops applying). Streamed
//! scans (snapshot checkpoints and installs, rare) write the buffer out before reading sled.

use std::collections::BTreeMap;
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

/// Buffered writes, latest per key (`None`: deleted).
type Ops = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

#[derive(Default)]
struct State {
    /// Batches applied since the last write-out began, merged (later writes win).
    active: Ops,
    /// Key and value bytes written into `active` (overwrites counted again).
    active_bytes: usize,
    /// When the first batch in `active` arrived.
    active_since: Option<Instant>,
    /// The batches a write-out is putting into sled right now; read until it is done.
    writing: Option<Arc<Ops>>,
    /// Sequence of the last batch written into `active` / known to be in sled.
    pushed: u64,
    written: u64,
    /// Highest sequence a caller is waiting to see written (flush, scans, backpressure).
    wanted: u64,
    /// A write-out failed: the store is unusable (the node stops on the error).
    failed: Option<String>,
    stop: bool,
}

impl State {
    fn check(&self) -> Result<(), StoreError> {
        match &self.failed {
            Some(e) => Err(StoreError::Engine(e.clone())),
            None => Ok(()),
        }
    }

    /// The buffered write to `key`: `Some(None)` deleted, `None` not buffered.
    fn lookup(&self, key: &[u8]) -> Option<Option<Vec<u8>>> {
        self.lookup_ref(key).map(|v| v.map(<[u8]>::to_vec))
    }

    fn lookup_ref(&self, key: &[u8]) -> Option<Option<&[u8]>> {
        if let Some(v) = self.active.get(key) {
            return Some(v.as_deref());
        }
        self.writing.as_ref()?.get(key).map(|v| v.as_deref())
    }

    fn due(&self) -> Option<Duration> {
        let since = self.active_since?;
        let age = since.elapsed();
        let window = Duration::from_millis(WRITE_OUT_MS);
        if self.active_bytes >= WRITE_OUT_BYTES || self.wanted > self.written || age >= window {
            Some(Duration::ZERO)
        } else {
            Some(window - age)
        }
    }
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

    /// Blocks until every batch up to `seq` is in sled.
    fn wait_written(&self, seq: u64) -> Result<(), StoreError> {
        let mut st = self.lock();
        st.wanted = st.wanted.max(seq);
        self.cv.notify_all();
        loop {
            st.check()?;
            if st.written >= seq {
                return Ok(());
            }
            st = self.cv.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Waits for a reason to write, then moves `active` to `writing`; `None` when stopping.
    fn next_write_out(&self) -> Option<(u64, Arc<Ops>)> {
        let mut st = self.lock();
        loop {
            if st.stop || st.failed.is_some() {
                return None;
            }
            match st.due() {
                Some(wait) if wait.is_zero() => break,
                Some(wait) => {
                    st = self
                        .cv
                        .wait_timeout(st, wait)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
                None => st = self.cv.wait(st).unwrap_or_else(|p| p.into_inner()),
            }
        }
        let ops = Arc::new(std::mem::take(&mut st.active));
        st.active_bytes = 0;
        st.active_since = None;
        st.writing = Some(ops.clone());
        Some((st.pushed, ops))
    }

    /// The writer thread: each write-out is one sled batch; readers find its keys in
    /// `writing` until sled has them.
    fn run_writer(&self) {
        while let Some((upto, ops)) = self.next_write_out() {
            let mut batch = WriteBatch::default();
            for (k, v) in ops.iter() {
                match v {
                    Some(v) => batch.put(k.clone(), v.clone()),
                    None => batch.delete(k.clone()),
                }
            }
            let r = self.inner.write(batch);
            let mut st = self.lock();
            match r {
                Ok(()) => st.written = upto,
                Err(e) => st.failed = Some(format!("writing buffered state out: {e}")),
            }
            st.writing = None;
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
        let writer = crate::spawn_background("state-write", move || s.run_writer())
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

impl Store for Buffered {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let buffered = {
            let st = self.shared.lock();
            st.check()?;
            st.lookup(key)
        };
        match buffered {
            Some(v) => Ok(v),
            None => self.shared.inner.get(key),
        }
    }

    fn get_range(
        &self,
        key: &[u8],
        offset: usize,
        len: usize,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let buffered = {
            let st = self.shared.lock();
            st.check()?;
            match st.lookup_ref(key) {
                Some(Some(v)) => Some(super::slice_of(key, v, offset, len).map(Some)),
                Some(None) => Some(Ok(None)),
                None => None,
            }
        };
        match buffered {
            Some(r) => r,
            None => self.shared.inner.get_range(key, offset, len),
        }
    }

    fn range(&self, from: &[u8], to: &[u8], limit: usize) -> Result<Vec<KvPair>, StoreError> {
        if from >= to {
            return Ok(Vec::new());
        }
        let mut overlay: Ops = BTreeMap::new();
        {
            let st = self.shared.lock();
            st.check()?;
            let bounds = from.to_vec()..to.to_vec();
            for ops in st.writing.iter().map(|w| &**w).chain([&st.active]) {
                for (k, v) in ops.range(bounds.clone()) {
                    overlay.insert(k.clone(), v.clone());
                }
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
        let mut st = self.shared.lock();
        st.check()?;
        st.active_bytes += batch.bytes;
        for (k, v) in batch.ops {
            st.active.insert(k, v);
        }
        st.pushed += 1;
        let seq = st.pushed;
        let first = st.active_since.is_none();
        st.active_since.get_or_insert_with(Instant::now);
        let over = st.active_bytes > MAX_BUFFERED_BYTES;
        if first || st.active_bytes >= WRITE_OUT_BYTES {
            self.shared.cv.notify_all();
        }
        drop(st);
        if over {
            crate::metrics::M.state_write_backpressure.inc();
            self.shared.wait_written(seq)?;
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

    /// A part of a value reads from the buffer while it is there and from sled after the
    /// write-out; a buffered delete hides the sled value.
    #[test]
    fn parts_read_through_the_buffer() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        put(&s, "a", Some("abcdef"));
        assert_eq!(s.get_range(b"a", 1, 3).unwrap().unwrap(), b"bcd");
        assert!(matches!(
            s.get_range(b"a", 4, 3),
            Err(StoreError::Corrupt(_))
        ));
        s.write_out().unwrap();
        assert_eq!(s.get_range(b"a", 2, 4).unwrap().unwrap(), b"cdef");
        put(&s, "a", None);
        assert_eq!(s.get_range(b"a", 0, 1).unwrap(), None);
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
        assert!(s.shared.lock().active.is_empty());
        assert_eq!(s.get(b"a").unwrap().unwrap(), b"1");
    }
}
