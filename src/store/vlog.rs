//! The value log: large values (message bodies) kept in append-only segment files beside
//! sled, with only a small [`Pointer`] in sled (key-value separation, as in WiscKey).
//!
//! Why: sled rewrites whole leaf pages as they fill, split and consolidate, so every byte of
//! a value stored in a page is written to disk several times over (measured: 7 KB written per
//! 1.2 KB value at small batches). A message body is written once and read once or twice; it
//! belongs in a log, and only its few-dozen-byte pointer in the page.
//!
//! Which keys: those [`super::keys::is_value_log_key`] names; the rest of the store does not
//! change. Readers never see a pointer: `get` and the scans resolve it, so snapshots, the state
//! machine and the API read plain values.
//!
//! Layout: a directory of segments `<seq:020>.vlog`. A record is
//! `len u32 LE | crc32 u32 LE | value`, and the pointer names (segment, offset of the value,
//! len, crc). A new segment starts when the current one holds [`SEGMENT_BYTES`], and every
//! open starts a new one, so a torn tail from a crash is never appended to.
//!
//! Durability order: [`ValueLog::append`] writes and `fdatasync`s the records before it returns
//! their pointers, and only then does the store put the pointers into sled. sled may persist
//! its pages whenever it likes, so a pointer sled has kept always names bytes that are on disk.
//!
//! Space: each segment counts the live pointers into it (rebuilt from sled on open). A sealed
//! segment whose count reaches zero is reclaimed after the next store flush, once sled's
//! deletions of those pointers are durable too; until then a crash could bring them back.
//! A queue drains roughly in order, so segments empty roughly in order. A segment that still
//! holds one long-lived value (a dead letter kept for days) stays whole: that is the cost
//! of not rewriting values, bounded by the queue caps.
//!
//! Recycling: a reclaimed segment's file is kept (up to [`MAX_FREE_SEGMENTS`], renamed
//! `<n>.vlogfree`) and renamed into place as a later segment, whose appends then overwrite
//! its old bytes from offset 0. Nothing ever scans a segment (every read goes through a
//! pointer written after the bytes it names), so stale bytes past the written length are
//! never read. Why: overwriting a file's blocks is cheaper than growing a new file, for the
//! page cache (its pages are already there) and for fdatasync (no new size or extents to
//! commit): on this project's disk, 64 MiB in synced 256 KiB writes took 9.4-10 ms of writes
//! and 58 ms of fdatasync over an existing file against 16-23 ms and 89 ms into a new one
//! (2026-12-05). A free file is reused only when no reader still holds it open, so a read
//! that raced the reclaim never sees another segment's bytes.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{sync_dir, StoreError};

/// A segment is sealed (and a new one started) once it holds this many bytes.
pub const SEGMENT_BYTES: u64 = 32 * 1024 * 1024;
/// Bytes in front of each value in a segment: length and CRC.
const RECORD_HEADER_BYTES: u64 = 8;
/// First byte of an encoded pointer (its format version).
const POINTER_V1: u8 = 0xB1;
/// Encoded pointer: version, segment, offset, length, CRC.
pub const POINTER_BYTES: usize = 1 + 8 + 8 + 4 + 4;
const SEGMENT_EXT: &str = "vlog";
/// Suffix of a reclaimed segment's file kept for reuse (deleted on open).
const FREE_EXT: &str = "vlogfree";
/// Reclaimed files kept for reuse; more are deleted. Two cover a roll while the next one
/// is reclaimed; each costs a segment of disk (and its cached pages) while it waits.
const MAX_FREE_SEGMENTS: usize = 2;

/// Where a value lies: segment, offset of its first byte, length, and its CRC32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pointer {
    pub segment: u64,
    pub offset: u64,
    pub len: u32,
    pub crc: u32,
}

impl Pointer {
    pub fn encode(&self) -> [u8; POINTER_BYTES] {
        let mut b = [0u8; POINTER_BYTES];
        b[0] = POINTER_V1;
        b[1..9].copy_from_slice(&self.segment.to_le_bytes());
        b[9..17].copy_from_slice(&self.offset.to_le_bytes());
        b[17..21].copy_from_slice(&self.len.to_le_bytes());
        b[21..25].copy_from_slice(&self.crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<Pointer, StoreError> {
        if b.len() != POINTER_BYTES || b[0] != POINTER_V1 {
            return Err(StoreError::Corrupt(format!(
                "value-log pointer of {} bytes, version {:?}",
                b.len(),
                b.first()
            )));
        }
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default());
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap_or_default());
        Ok(Pointer {
            segment: u64_at(1),
            offset: u64_at(9),
            len: u32_at(17),
            crc: u32_at(21),
        })
    }
}

fn io(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Engine(format!("value log: {what} {}: {e}", path.display()))
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.{SEGMENT_EXT}"))
}

/// The segment being appended to.
struct Active {
    seq: u64,
    file: Arc<File>,
    /// Bytes written so far (the next record's offset).
    bytes: u64,
}

struct Inner {
    active: Active,
    /// Every segment still on disk, the active one included, for reads.
    files: BTreeMap<u64, Arc<File>>,
    /// Live pointers into each segment (segments with none are absent or zero).
    live: BTreeMap<u64, u64>,
    /// Reclaimed files waiting to become a new segment (see the module's Recycling).
    free: Vec<(PathBuf, Arc<File>)>,
}

pub struct ValueLog {
    dir: PathBuf,
    inner: Mutex<Inner>,
}

impl ValueLog {
    /// Opens the value log in `dir`, given every pointer the store still holds: segments no
    /// pointer names are deleted (written after the last durable store state, or emptied
    /// before a crash), and a new segment is started for appends.
    pub fn open(dir: &Path, referenced: &[Pointer]) -> Result<ValueLog, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| io("creating", dir, e))?;
        let mut live: BTreeMap<u64, u64> = BTreeMap::new();
        for p in referenced {
            *live.entry(p.segment).or_default() += 1;
        }
        remove_free_files(dir)?;
        let mut files = BTreeMap::new();
        let mut highest = 0u64;
        for seq in list_segments(dir)? {
            highest = highest.max(seq);
            let path = segment_path(dir, seq);
            if live.contains_key(&seq) {
                let f = File::open(&path).map_err(|e| io("opening", &path, e))?;
                files.insert(seq, Arc::new(f));
            } else {
                std::fs::remove_file(&path).map_err(|e| io("removing", &path, e))?;
            }
        }
        if let Some(missing) = live.keys().find(|s| !files.contains_key(s)) {
            return Err(StoreError::Corrupt(format!(
                "the store points into value-log segment {missing}, which is missing"
            )));
        }
        let active = create_segment(dir, highest + 1, None)?;
        files.insert(active.seq, active.file.clone());
        Ok(ValueLog {
            dir: dir.to_path_buf(),
            inner: Mutex::new(Inner {
                active,
                files,
                live,
                free: Vec::new(),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock left counts that only delay space reclamation.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends `values` as one write, makes them durable, and returns their pointers (not
    /// yet counted live: the store counts them once sled holds them, see [`Self::adjust`]).
    pub fn append(&self, values: &[&[u8]]) -> Result<Vec<Pointer>, StoreError> {
        if values.is_empty() {
            return Ok(Vec::new());
        }
        let mut inner = self.lock();
        if inner.active.bytes >= SEGMENT_BYTES {
            let reuse = inner.take_free();
            let next = create_segment(&self.dir, inner.active.seq + 1, reuse)?;
            inner.files.insert(next.seq, next.file.clone());
            inner.active = next;
        }
        let total: usize = values
            .iter()
            .map(|v| v.len() + RECORD_HEADER_BYTES as usize)
            .sum();
        let mut buf = Vec::with_capacity(total);
        let mut pointers = Vec::with_capacity(values.len());
        let start = inner.active.bytes;
        for v in values {
            let len = u32::try_from(v.len()).map_err(|_| {
                StoreError::Engine(format!("value of {} bytes is too large", v.len()))
            })?;
            let crc = crc32fast::hash(v);
            buf.extend_from_slice(&len.to_le_bytes());
            buf.extend_from_slice(&crc.to_le_bytes());
            let offset = start + buf.len() as u64;
            buf.extend_from_slice(v);
            pointers.push(Pointer {
                segment: inner.active.seq,
                offset,
                len,
                crc,
            });
        }
        let path = segment_path(&self.dir, inner.active.seq);
        let file = inner.active.file.clone();
        file.write_all_at(&buf, start)
            .map_err(|e| io("writing", &path, e))?;
        file.sync_data().map_err(|e| io("syncing", &path, e))?;
        inner.active.bytes = start + buf.len() as u64;
        crate::metrics::M
            .value_log_written_bytes
            .inc_by(buf.len() as u64);
        Ok(pointers)
    }

    /// Reads the value `p` names; `None` when its segment is gone (the pointer was deleted
    /// and the segment reclaimed since it was read: the caller reads the key again).
    pub fn read(&self, p: &Pointer) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(v) = self.read_at(p.segment, p.offset, p.len as usize)? else {
            return Ok(None);
        };
        if crc32fast::hash(&v) != p.crc {
            return Err(StoreError::Corrupt(format!(
                "value-log record at {} offset {} fails its checksum",
                segment_path(&self.dir, p.segment).display(),
                p.offset
            )));
        }
        Ok(Some(v))
    }

    /// `len` bytes at `offset` of `segment` (`None`: the segment is gone).
    fn read_at(
        &self,
        segment: u64,
        offset: u64,
        len: usize,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(file) = self.lock().files.get(&segment).cloned() else {
            return Ok(None);
        };
        let mut v = vec![0u8; len];
        file.read_exact_at(&mut v, offset)
            .map_err(|e| io("reading", &segment_path(&self.dir, segment), e))?;
        Ok(Some(v))
    }

    /// Bytes `offset..offset + len` of the value `p` points at (`None`: its segment was
    /// reclaimed). The value's checksum covers all of it, so a part is not checked here: the
    /// caller checks what it stored about that part (the queue keeps each body's CRC).
    pub fn read_range(
        &self,
        p: &Pointer,
        offset: usize,
        len: usize,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let end = offset
            .checked_add(len)
            .filter(|&e| e as u64 <= u64::from(p.len));
        if end.is_none() {
            return Err(StoreError::Corrupt(format!(
                "value-log record of {} bytes read at {offset}..+{len}",
                p.len
            )));
        }
        self.read_at(p.segment, p.offset + offset as u64, len)
    }

    /// Counts pointers the store now holds (`added`) and no longer holds (`removed`).
    pub fn adjust(&self, added: &[Pointer], removed: &[Pointer]) {
        let mut inner = self.lock();
        for p in added {
            *inner.live.entry(p.segment).or_default() += 1;
        }
        for p in removed {
            if let Some(n) = inner.live.get_mut(&p.segment) {
                *n = n.saturating_sub(1);
            }
        }
    }

    /// Sealed segments no pointer names: they may go once the store state that dropped their
    /// last pointers is durable.
    pub fn reclaimable(&self) -> Vec<u64> {
        let inner = self.lock();
        inner
            .files
            .keys()
            .copied()
            .filter(|s| *s != inner.active.seq && inner.live.get(s).copied().unwrap_or(0) == 0)
            .collect()
    }

    /// Reclaims `segments` (from [`Self::reclaimable`], called after a store flush): each
    /// file is kept for reuse while fewer than [`MAX_FREE_SEGMENTS`] are, else deleted. A
    /// reader holding one of them open finishes its read; a deleted file goes when it lets go.
    pub fn reclaim(&self, segments: &[u64]) -> Result<u64, StoreError> {
        if segments.is_empty() {
            return Ok(0);
        }
        let mut removed = 0;
        {
            let mut inner = self.lock();
            for s in segments {
                if *s == inner.active.seq || inner.live.get(s).copied().unwrap_or(0) > 0 {
                    continue;
                }
                let Some(file) = inner.files.remove(s) else {
                    continue;
                };
                inner.live.remove(s);
                let path = segment_path(&self.dir, *s);
                if inner.free.len() < MAX_FREE_SEGMENTS {
                    let free = self.dir.join(format!("{s:020}.{FREE_EXT}"));
                    std::fs::rename(&path, &free).map_err(|e| io("renaming", &path, e))?;
                    inner.free.push((free, file));
                } else {
                    std::fs::remove_file(&path).map_err(|e| io("removing", &path, e))?;
                }
                removed += 1;
            }
        }
        sync_dir(&self.dir)?;
        Ok(removed)
    }

    /// Bytes of all segments on disk, the free files kept for reuse included.
    pub fn size_on_disk(&self) -> u64 {
        let files: Vec<Arc<File>> = {
            let inner = self.lock();
            let free = inner.free.iter().map(|(_, f)| f);
            inner.files.values().chain(free).cloned().collect()
        };
        files
            .iter()
            .filter_map(|f| f.metadata().ok())
            .map(|m| m.len())
            .sum()
    }
}

impl Inner {
    /// A free file no reader holds (only `free` has it), for the next segment.
    fn take_free(&mut self) -> Option<(PathBuf, Arc<File>)> {
        let i = self
            .free
            .iter()
            .position(|(_, f)| Arc::strong_count(f) == 1)?;
        Some(self.free.swap_remove(i))
    }
}

/// Deletes the free files an earlier run kept: nothing names them.
fn remove_free_files(dir: &Path) -> Result<(), StoreError> {
    for entry in std::fs::read_dir(dir).map_err(|e| io("listing", dir, e))? {
        let path = entry.map_err(|e| io("listing", dir, e))?.path();
        if path.extension().is_some_and(|x| x == FREE_EXT) {
            std::fs::remove_file(&path).map_err(|e| io("removing", &path, e))?;
        }
    }
    Ok(())
}

fn list_segments(dir: &Path) -> Result<Vec<u64>, StoreError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io("listing", dir, e))? {
        let entry = entry.map_err(|e| io("listing", dir, e))?;
        let name = entry.file_name();
        let Some(stem) = name
            .to_str()
            .and_then(|n| n.strip_suffix(&format!(".{SEGMENT_EXT}")))
        else {
            continue;
        };
        if let Ok(seq) = stem.parse::<u64>() {
            out.push(seq);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Creates segment `seq`, in the `reuse`d free file when given, and makes its directory
/// entry durable before any pointer names it.
fn create_segment(
    dir: &Path,
    seq: u64,
    reuse: Option<(PathBuf, Arc<File>)>,
) -> Result<Active, StoreError> {
    let path = segment_path(dir, seq);
    let mut options = OpenOptions::new();
    options.read(true).write(true);
    let file = match reuse {
        // Opened again: a segment found on open was opened read-only.
        Some((free, _held)) => {
            std::fs::rename(&free, &path).map_err(|e| io("renaming", &free, e))?;
            options.open(&path).map_err(|e| io("opening", &path, e))?
        }
        None => options
            .create_new(true)
            .open(&path)
            .map_err(|e| io("creating", &path, e))?,
    };
    sync_dir(dir)?;
    Ok(Active {
        seq,
        file: Arc::new(file),
        bytes: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Appended values read back byte for byte; a pointer survives encode/decode.
    #[test]
    fn append_then_read() {
        let dir = tempfile::tempdir().unwrap();
        let log = ValueLog::open(dir.path(), &[]).unwrap();
        let ps = log.append(&[b"hello", b"", &[7u8; 5000]]).unwrap();
        assert_eq!(log.read(&ps[0]).unwrap().unwrap(), b"hello");
        assert_eq!(log.read(&ps[1]).unwrap().unwrap(), b"");
        assert_eq!(log.read(&ps[2]).unwrap().unwrap(), vec![7u8; 5000]);
        assert_eq!(Pointer::decode(&ps[2].encode()).unwrap(), ps[2]);
        assert!(Pointer::decode(b"short").is_err());
    }

    /// A corrupted byte is caught by the checksum, not returned.
    #[test]
    fn corruption_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let log = ValueLog::open(dir.path(), &[]).unwrap();
        let p = log.append(&[b"payload"]).unwrap()[0];
        let f = OpenOptions::new()
            .write(true)
            .open(segment_path(dir.path(), p.segment))
            .unwrap();
        f.write_all_at(b"X", p.offset).unwrap();
        assert!(matches!(log.read(&p), Err(StoreError::Corrupt(_))));
    }

    /// A reclaimed segment's file is kept and becomes the next segment, whose values
    /// overwrite the old ones from offset 0; while a reader still holds a kept file, a new
    /// file is created instead; kept files an earlier run left are deleted on open.
    #[test]
    fn reclaimed_segments_are_reused_once_no_reader_holds_them() {
        let dir = tempfile::tempdir().unwrap();
        let log = ValueLog::open(dir.path(), &[]).unwrap();
        let full = vec![1u8; SEGMENT_BYTES as usize];
        let old = log.append(&[&full]).unwrap()[0];
        let small = log.append(&[b"second"]).unwrap()[0];
        assert_eq!(small.segment, old.segment + 1, "rolled once full");
        log.adjust(&[small], &[]);
        assert_eq!(log.reclaim(&log.reclaimable()).unwrap(), 1);
        assert_eq!(log.read(&old).unwrap(), None, "gone for readers");
        let free = dir.path().join(format!("{:020}.{FREE_EXT}", old.segment));
        assert!(free.exists() && !segment_path(dir.path(), old.segment).exists());

        // A reader still holding the kept file: the next roll makes a new file.
        let held = log.lock().free[0].1.clone();
        log.append(&[&full]).unwrap();
        let fresh = log.append(&[b"third"]).unwrap()[0];
        let fresh_len = std::fs::metadata(segment_path(dir.path(), fresh.segment))
            .unwrap()
            .len();
        assert_eq!(fresh_len, 8 + 5, "a new file");
        assert!(free.exists(), "the held file waits");

        // Let go: the next roll reuses it, and reads see only the new values.
        drop(held);
        log.append(&[&full]).unwrap();
        let reused = log.append(&[b"fourth"]).unwrap()[0];
        assert!(!free.exists(), "renamed into place");
        let path = segment_path(dir.path(), reused.segment);
        assert!(std::fs::metadata(&path).unwrap().len() >= SEGMENT_BYTES);
        assert_eq!(log.read(&reused).unwrap().unwrap(), b"fourth");

        // One left behind by a crash is deleted on open.
        let leftover = dir.path().join(format!("7.{FREE_EXT}"));
        std::fs::write(&leftover, b"stale").unwrap();
        drop(log);
        let _log = ValueLog::open(dir.path(), &[reused]).unwrap();
        assert!(!leftover.exists());
    }

    /// Reopening keeps segments that pointers name and deletes the rest; a sealed segment
    /// with no live pointer is reclaimed, one with a live pointer is not.
    #[test]
    fn open_and_reclaim_keep_only_named_segments() {
        let dir = tempfile::tempdir().unwrap();
        let kept = {
            let log = ValueLog::open(dir.path(), &[]).unwrap();
            log.append(&[b"kept"]).unwrap()[0]
        };
        let log = ValueLog::open(dir.path(), &[kept]).unwrap();
        assert_eq!(log.read(&kept).unwrap().unwrap(), b"kept");
        let fresh = log.append(&[b"other"]).unwrap()[0];
        assert!(fresh.segment > kept.segment);
        log.adjust(&[fresh], &[]);
        assert!(
            log.reclaimable().is_empty(),
            "open counted the pointers it was given"
        );
        log.adjust(&[], &[kept]);
        assert_eq!(log.reclaimable(), vec![kept.segment]);
        assert_eq!(log.reclaim(&[kept.segment]).unwrap(), 1);
        assert_eq!(log.read(&kept).unwrap(), None);
        drop(log);
        // A pointer into a segment that is gone is refused on open.
        assert!(ValueLog::open(dir.path(), &[kept]).is_err());
    }
}
