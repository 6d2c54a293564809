//! The Raft log and hard state as append-only segment files: one write and one fdatasync per
//! Ready, whatever the entries weigh.
//!
//! Why not sled, where the state lives: a log is append, read the recent tail, drop a
//! conflicting suffix, drop a compacted prefix. In sled every append copied the leaf node that
//! held the newest entries (coalesced queue commands reach MiBs), and profiles put most of the
//! driver threads' CPU in those copies. Files do the four operations directly.
//!
//! Layout: a directory of segments `<seq:020>.seg`, replayed in `seq` order. A record is
//!
//! ```text
//! len u32 LE | crc32 u32 LE | kind u8 | index u64 LE | term u64 LE | payload (len bytes)
//! ```
//!
//! where the CRC covers everything after itself. Kinds: an entry (payload: protobuf `Entry`),
//! the hard state (payload: protobuf `HardState`; the last one replayed wins), and a reset to
//! a snapshot index (no payload). Nothing is ever rewritten in place:
//! - an entry at index `i` supersedes every entry at `i` or above written before it, so a
//!   follower's conflicting suffix is dropped by appending, and replay applies the same rule;
//! - a segment begins with the hard state current when it was opened, so dropping old
//!   segments never drops the vote;
//! - compaction deletes whole segments from the front once every entry in them is compacted.
//!
//! A torn or corrupt record at the end of the last segment (a crash mid-write) is cut off on
//! open: nothing after it was ever made durable, so nothing after it was acknowledged. A bad
//! record anywhere else is corruption and the node refuses to start.
//!
//! Preallocated segments: an fdatasync that grows a file also commits the file's new size and
//! blocks through the filesystem journal; one that overwrites blocks already written does not.
//! On this project's ext4 VM disk, 16 KiB appends synced one by one ran 1.6-1.8x as fast over
//! a zero-filled file as over a growing one, at 0.6-0.65x the CPU per sync (2026-12-04). So
//! once the active segment is half full, a helper thread writes the next segment's file full
//! of zeros and syncs it (`*.prealloc`, ignored by replay and deleted on open), over the
//! file of the last segment compaction dropped when one is kept ([`RECYCLED_PREFIX`]); the roll
//! renames it into place, or creates an empty file as before when it is not ready. A segment
//! that grows (a new log's first one, the active one cut on open, one created while the spare
//! was late) starts a spare once it holds 1/64 of a segment and hands over to it as soon as it
//! is ready, long before it is full, so a node no longer writes its first 64 MiB after every
//! start into a growing file (1-client enqueue, 2026-12-04: fdatasync 0.32-0.33 against
//! 0.42-0.51 ms, device writes per message about halved). The helper runs at
//! [`crate::BACKGROUND_NICE`]: nothing waits on it, and a late spare only means a growing
//! segment for a while. A record
//! header of all zeros (kind 0, never written) is therefore the end of the active segment,
//! and on open the zeros are cut off like a torn tail, so bytes that a torn write may have
//! left beyond them can never be read as records later. A segment is cut to its written
//! length before the next one opens, so zeros in any other segment are corruption.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use protobuf::Message as _;
use raft::prelude::{Entry, HardState};

use crate::store::{sync_dir, StoreError};

/// A segment is closed and a new one opened once it holds this many bytes.
pub const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Recent entries kept in memory (payload bytes) so appends to followers read no file. The
/// newest entry is always kept, however large.
pub const CACHE_BYTES: usize = 64 * 1024 * 1024;
/// A record claiming more payload than this is corrupt: proposals are capped at 24 MiB.
const MAX_RECORD_BYTES: u32 = 64 * 1024 * 1024;
/// Read buffer while replaying a segment on open.
const REPLAY_BUFFER_BYTES: usize = 1024 * 1024;
const HEADER_BYTES: usize = 4 + 4 + 1 + 8 + 8;
const KIND_ENTRY: u8 = 1;
const KIND_HARD_STATE: u8 = 2;
const KIND_RESET: u8 = 3;
const SEGMENT_EXT: &str = "seg";
/// Suffix of a zero-filled file being prepared as the next segment.
const PREALLOC_EXT: &str = "prealloc";
/// Zeros written, and synced, per step while preparing a segment file. Small steps with a
/// pause between them keep the helper from queueing a big flush ahead of the log's own
/// fdatasyncs: one sync of the whole file at the end, or steps of 1 MiB 5 ms apart, raised
/// the 64-client enqueue p99 from 9-12 ms to 12-26 ms (2026-12-04).
const PREALLOC_CHUNK_BYTES: usize = 256 * 1024;
/// Pause between two steps of preparing a segment file: 256 steps of a 64 MiB segment take
/// about 3 s, under the 4 s a node writing 16 MB/s of log takes to fill the half that is
/// left when preparation starts. When the spare is late the roll creates an empty segment.
const PREALLOC_PAUSE: std::time::Duration = std::time::Duration::from_millis(10);

/// A growing segment starts its spare once it holds this fraction of a segment (1 MiB of the
/// default 64 MiB): a node that writes next to nothing, such as a test cluster that lives for
/// seconds, does not write a whole segment of zeros after every start.
const GROWING_SPARE_FRACTION: u64 = 64;

/// Name prefix of a compacted segment's file kept to become the next spare. Zeroing a file
/// whose blocks exist, and whose pages the page cache still holds, is cheaper than filling
/// a new one: on this project's disk, 64 MiB in synced 256 KiB steps took 9.4-10 ms of
/// writes and 58 ms of fdatasync over an existing file, against 16-23 ms and 89 ms into a new
/// one (2026-12-05). It carries the spare's suffix, so replay ignores it and open deletes it,
/// as it would a deleted segment. One is kept; older ones are deleted.
const RECYCLED_PREFIX: &str = "recycled-";

/// Where an entry's payload lies.
#[derive(Debug, Clone, Copy)]
struct Loc {
    seq: u64,
    offset: u64,
    len: u32,
    term: u64,
}

struct Segment {
    seq: u64,
    file: File,
    /// Bytes written to the file (the next record's offset once `pending` is written).
    bytes: u64,
    /// Highest entry or reset index recorded in the segment: it may be deleted once that is
    /// compacted.
    max_index: u64,
    /// The file was a zero-filled spare, so appends overwrite written blocks. False for a
    /// file that grows with every append: a new node's first segment, the active segment cut
    /// to its written length on open, one created while the spare was late. Such a segment
    /// makes every fdatasync commit a new file size too, so it is left as soon as a spare
    /// is ready (see [`SegmentLog::maybe_roll`]).
    preallocated: bool,
}

pub struct SegmentLog {
    dir: PathBuf,
    /// Open segments, oldest first, consecutive `seq`s; the last one is written to.
    segments: VecDeque<Segment>,
    /// `locs[i]` is the entry at index `first + i`.
    locs: VecDeque<Loc>,
    /// First index the log holds; everything below was compacted or came by snapshot.
    first: u64,
    hard_state: HardState,
    /// Records encoded for the active segment and not yet written to it.
    pending: Vec<u8>,
    /// The newest entries; `cache[i]` has index `last() + 1 - cache.len() + i`.
    cache: VecDeque<Entry>,
    cache_bytes: usize,
    /// Payload bytes of the entries the log holds (compaction by size reads it).
    held_bytes: u64,
    segment_bytes: u64,
    /// The helper preparing the next segment's zero-filled file, if one was started.
    spare: Option<std::thread::JoinHandle<Result<(PathBuf, File), String>>>,
    /// Set on drop: the helper stops after its current step.
    spare_cancel: Arc<AtomicBool>,
    /// A spare failed since the active segment opened (a full disk, say): a growing active
    /// segment does not start another one at once, so a failing disk is not retried on every
    /// write; the half-full rule still does, as before.
    spare_failed: bool,
    /// A compacted segment's file, renamed to a spare's name, that the next spare overwrites
    /// with zeros instead of filling a new file (see [`RECYCLED_PREFIX`]).
    recycled: Option<PathBuf>,
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Engine(format!("{what} {}: {e}", path.display()))
}

fn corrupt(path: &Path, offset: u64, why: &str) -> StoreError {
    StoreError::Corrupt(format!(
        "raft log segment {} at byte {offset}: {why}",
        path.display()
    ))
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.{SEGMENT_EXT}"))
}

/// Appends one record to `buf`; `payload` writes its bytes. Returns the payload length.
fn encode_record(
    buf: &mut Vec<u8>,
    kind: u8,
    index: u64,
    term: u64,
    payload: impl FnOnce(&mut Vec<u8>) -> Result<(), StoreError>,
) -> Result<u32, StoreError> {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; 8]);
    buf.push(kind);
    buf.extend_from_slice(&index.to_le_bytes());
    buf.extend_from_slice(&term.to_le_bytes());
    payload(buf)?;
    let len = buf.len() - start - HEADER_BYTES;
    let len = u32::try_from(len)
        .ok()
        .filter(|l| *l <= MAX_RECORD_BYTES)
        .ok_or_else(|| StoreError::Corrupt(format!("log record of {len} bytes is too large")))?;
    let crc = crc32fast::hash(&buf[start + 8..]);
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(len)
}

fn pb_err(e: protobuf::ProtobufError) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

/// One decoded record header plus payload, as replay sees it.
struct Record {
    kind: u8,
    index: u64,
    term: u64,
    payload_offset: u64,
    payload: Vec<u8>,
}

/// Reads the next record; `Ok(None)` at a clean end, `Err(why)` for a torn or bad record.
fn read_record(r: &mut impl Read, offset: u64) -> Result<Option<Record>, &'static str> {
    let mut header = [0u8; HEADER_BYTES];
    let mut got = 0;
    while got < HEADER_BYTES {
        match r.read(&mut header[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err("torn record header"),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return Err("read error"),
        }
    }
    let word = |at: usize| {
        u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    let long = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&header[at..at + 8]);
        u64::from_le_bytes(b)
    };
    if header == [0u8; HEADER_BYTES] {
        // The zero-filled tail of a preallocated segment: nothing was written here.
        return Ok(None);
    }
    let (len, crc) = (word(0), word(4));
    if len > MAX_RECORD_BYTES {
        return Err("record length out of range");
    }
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload)
        .map_err(|_| "torn record payload")?;
    let mut h = crc32fast::Hasher::new();
    h.update(&header[8..]);
    h.update(&payload);
    if h.finalize() != crc {
        return Err("checksum mismatch");
    }
    Ok(Some(Record {
        kind: header[8],
        index: long(9),
        term: long(17),
        payload_offset: offset + HEADER_BYTES as u64,
        payload,
    }))
}

impl SegmentLog {
    /// Opens (creating if needed) the log in `dir`. `after` is the snapshot point the state
    /// store holds: entries at or below it are compacted.
    pub fn open(dir: &Path, after: u64) -> Result<SegmentLog, StoreError> {
        Self::open_with(dir, after, SEGMENT_BYTES)
    }

    /// [`SegmentLog::open`] with a chosen segment size (tests use tiny ones).
    pub fn open_with(dir: &Path, after: u64, segment_bytes: u64) -> Result<SegmentLog, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| io_err("creating", dir, e))?;
        let mut log = SegmentLog {
            dir: dir.to_path_buf(),
            segments: VecDeque::new(),
            locs: VecDeque::new(),
            first: after + 1,
            hard_state: HardState::default(),
            pending: Vec::new(),
            cache: VecDeque::new(),
            cache_bytes: 0,
            held_bytes: 0,
            segment_bytes,
            spare: None,
            spare_cancel: Arc::default(),
            spare_failed: false,
            recycled: None,
        };
        log.remove_leftover_spares()?;
        let seqs = log.list_segments()?;
        let mut after = after;
        for (i, seq) in seqs.iter().enumerate() {
            let last = i + 1 == seqs.len();
            log.replay(*seq, last, &mut after)?;
        }
        if log.segments.is_empty() {
            log.open_segment(1, None)?;
        }
        Ok(log)
    }

    fn list_segments(&self) -> Result<Vec<u64>, StoreError> {
        let mut seqs = Vec::new();
        let entries = std::fs::read_dir(&self.dir).map_err(|e| io_err("listing", &self.dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io_err("listing", &self.dir, e))?;
            let name = entry.file_name();
            let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".seg")) else {
                continue;
            };
            if let Ok(seq) = stem.parse::<u64>() {
                seqs.push(seq);
            }
        }
        seqs.sort_unstable();
        if seqs.windows(2).any(|w| w[1] != w[0] + 1) {
            return Err(StoreError::Corrupt(format!(
                "raft log segments in {} are not consecutive: {seqs:?}",
                self.dir.display()
            )));
        }
        Ok(seqs)
    }

    /// Replays one segment into the index; `after` rises with reset records.
    fn replay(&mut self, seq: u64, last: bool, after: &mut u64) -> Result<(), StoreError> {
        let path = segment_path(&self.dir, seq);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| io_err("opening", &path, e))?;
        let mut reader = BufReader::with_capacity(REPLAY_BUFFER_BYTES, &file);
        let mut offset = 0u64;
        let mut max_index = 0u64;
        loop {
            let rec = match read_record(&mut reader, offset) {
                Ok(Some(rec)) => rec,
                Ok(None) => break,
                Err(why) if last => {
                    // Cut off below, with a zero-filled tail.
                    tracing::warn!(segment = %path.display(), offset, why, "cutting a torn tail off the raft log (a crash mid-write)");
                    break;
                }
                Err(why) => return Err(corrupt(&path, offset, why)),
            };
            let next = rec.payload_offset + rec.payload.len() as u64;
            match rec.kind {
                KIND_ENTRY => {
                    max_index = max_index.max(rec.index);
                    let loc = Loc {
                        seq,
                        offset: rec.payload_offset,
                        len: rec.payload.len() as u32,
                        term: rec.term,
                    };
                    self.replay_entry(rec.index, loc, *after)
                        .map_err(|why| corrupt(&path, offset, &why))?;
                }
                KIND_HARD_STATE => {
                    self.hard_state = HardState::parse_from_bytes(&rec.payload)
                        .map_err(|e| corrupt(&path, offset, &e.to_string()))?;
                }
                KIND_RESET => {
                    max_index = max_index.max(rec.index);
                    *after = (*after).max(rec.index);
                    self.locs.clear();
                    self.held_bytes = 0;
                    self.first = *after + 1;
                }
                k => return Err(corrupt(&path, offset, &format!("unknown record kind {k}"))),
            }
            offset = next;
        }
        // Replay stopped short of the file's end at a torn record or a zero header (the
        // unwritten tail of a preallocated segment). Only the active segment may end so (a
        // segment is sealed before the next opens); cut it off, so bytes a torn write left
        // further on are never read as records once later appends fill the space before them.
        if !last && file_len(&file, &path)? > offset {
            return Err(corrupt(
                &path,
                offset,
                "zeros before the end of a closed segment",
            ));
        }
        cut_to(&file, &path, offset)?;
        self.segments.push_back(Segment {
            seq,
            file,
            bytes: offset,
            max_index,
            preallocated: false,
        });
        Ok(())
    }

    /// Cuts the active segment's file to what was written (a preallocated file is longer),
    /// before another segment is opened: only the last segment may end in zeros.
    fn seal_active(&mut self) -> Result<(), StoreError> {
        match self.segments.back() {
            Some(a) => cut_to(&a.file, &segment_path(&self.dir, a.seq), a.bytes),
            None => Ok(()),
        }
    }

    /// The replay rule: an entry at `index` supersedes everything at or above it.
    fn replay_entry(&mut self, index: u64, loc: Loc, after: u64) -> Result<(), String> {
        if index <= after {
            self.locs.clear();
            self.held_bytes = 0;
            self.first = after + 1;
            return Ok(());
        }
        if index > self.last() + 1 {
            return Err(format!(
                "entry {index} leaves a gap after {} (snapshot point {after})",
                self.last()
            ));
        }
        self.drop_from(index);
        self.held_bytes += u64::from(loc.len);
        self.locs.push_back(loc);
        Ok(())
    }

    /// Forgets entries at or above `index` (in the index and the cache).
    fn drop_from(&mut self, index: u64) {
        if index > self.last() {
            return;
        }
        let keep = (index - self.first) as usize;
        for loc in self.locs.drain(keep..) {
            self.held_bytes -= u64::from(loc.len);
        }
        while self.cache.back().is_some_and(|e| e.index >= index) {
            if let Some(e) = self.cache.pop_back() {
                self.cache_bytes -= e.data.len();
            }
        }
    }

    /// Opens segment `seq` in the prepared `spare` file, or in a new empty file.
    fn open_segment(&mut self, seq: u64, spare: Option<(PathBuf, File)>) -> Result<(), StoreError> {
        let path = segment_path(&self.dir, seq);
        self.spare_failed = false;
        let (file, preallocated) = match spare {
            Some((spare, file)) => {
                std::fs::rename(&spare, &path).map_err(|e| io_err("renaming", &spare, e))?;
                (file, true)
            }
            None => {
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .map_err(|e| io_err("creating", &path, e))?;
                (file, false)
            }
        };
        sync_dir(&self.dir)?;
        self.segments.push_back(Segment {
            seq,
            file,
            bytes: 0,
            max_index: 0,
            preallocated,
        });
        Ok(())
    }

    fn active(&mut self) -> &mut Segment {
        self.segments
            .back_mut()
            .expect("the log always has an active segment")
    }

    /// The prepared spare file, if its helper has finished; a failed one is logged and
    /// dropped (the roll then creates an empty file, as without preallocation).
    fn take_spare(&mut self) -> Option<(PathBuf, File)> {
        if !self.spare.as_ref()?.is_finished() {
            return None;
        }
        match self.spare.take()?.join() {
            Ok(Ok(spare)) => Some(spare),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "preparing a raft log segment failed; using an empty one");
                self.spare_failed = true;
                None
            }
            Err(_) => None,
        }
    }

    /// Starts preparing the next segment's file once the active one is half full, or much
    /// sooner ([`GROWING_SPARE_FRACTION`]) when the active one grows with every append.
    fn maybe_prepare_spare(&mut self) {
        let growing_from = self.segment_bytes / GROWING_SPARE_FRACTION;
        let wanted = self.segments.back().is_some_and(|a| {
            let growing = !a.preallocated && !self.spare_failed;
            (growing && a.bytes >= growing_from) || a.bytes >= self.segment_bytes / 2
        });
        if self.spare.is_some() || !wanted {
            return;
        }
        let (dir, bytes) = (self.dir.clone(), self.segment_bytes);
        let cancel = self.spare_cancel.clone();
        let reuse = self.recycled.take();
        match crate::spawn_background("log-prealloc", move || {
            prepare_spare(&dir, bytes, reuse, &cancel)
        }) {
            Ok(h) => self.spare = Some(h),
            Err(e) => tracing::warn!(error = %e, "could not start preparing a raft log segment"),
        }
    }

    /// Deletes spare files an earlier run left unused.
    fn remove_leftover_spares(&self) -> Result<(), StoreError> {
        let entries = std::fs::read_dir(&self.dir).map_err(|e| io_err("listing", &self.dir, e))?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|x| x == PREALLOC_EXT) {
                std::fs::remove_file(&path).map_err(|e| io_err("deleting", &path, e))?;
            }
        }
        Ok(())
    }

    /// Closes the active segment (durably) and opens the next, which starts with the current
    /// hard state: when the active one is full, or when it grows with every append and a
    /// zero-filled spare is ready to take over.
    fn maybe_roll(&mut self) -> Result<(), StoreError> {
        let active = self.segments.back().expect("active segment");
        let written = active.bytes + self.pending.len() as u64;
        let (seq, growing) = (active.seq + 1, !active.preallocated);
        let spare = if written >= self.segment_bytes {
            self.take_spare()
        } else if growing && written > 0 && self.spare.as_ref().is_some_and(|h| h.is_finished()) {
            match self.take_spare() {
                Some(spare) => Some(spare),
                // It failed (logged): keep growing this one until it is full.
                None => return Ok(()),
            }
        } else {
            return Ok(());
        };
        self.sync(true)?;
        self.seal_active()?;
        self.open_segment(seq, spare)?;
        let hs = self.hard_state.clone();
        self.encode_hard_state(&hs)
    }

    fn encode_hard_state(&mut self, hs: &HardState) -> Result<(), StoreError> {
        encode_record(&mut self.pending, KIND_HARD_STATE, 0, 0, |b| {
            hs.write_to_vec(b).map_err(pb_err)
        })?;
        Ok(())
    }

    fn write_pending(&mut self) -> Result<(), StoreError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        let dir = self.dir.clone();
        let active = self.active();
        active
            .file
            .write_all_at(&pending, active.bytes)
            .map_err(|e| io_err("writing", &segment_path(&dir, active.seq), e))?;
        active.bytes += pending.len() as u64;
        crate::metrics::M
            .log_written_bytes
            .inc_by(pending.len() as u64);
        self.pending = pending;
        self.pending.clear();
        self.maybe_prepare_spare();
        Ok(())
    }

    /// Adds entries after (or overlapping the end of) the log; they are written by the next
    /// [`SegmentLog::sync`]. An overlap drops the log's conflicting suffix.
    pub fn append(&mut self, entries: &[Entry]) -> Result<(), StoreError> {
        for e in entries {
            assert!(
                e.index >= self.first && e.index <= self.last() + 1,
                "append of {} outside [{}, {}]",
                e.index,
                self.first,
                self.last() + 1
            );
            self.maybe_roll()?;
            self.drop_from(e.index);
            let active = self.segments.back().expect("active segment");
            let (seq, offset) = (active.seq, active.bytes + self.pending.len() as u64);
            let len = encode_record(&mut self.pending, KIND_ENTRY, e.index, e.term, |b| {
                e.write_to_vec(b).map_err(pb_err)
            })?;
            let active = self.active();
            active.max_index = active.max_index.max(e.index);
            self.locs.push_back(Loc {
                seq,
                offset: offset + HEADER_BYTES as u64,
                len,
                term: e.term,
            });
            self.held_bytes += u64::from(len);
            self.cache_bytes += e.data.len();
            self.cache.push_back(e.clone());
        }
        while self.cache.len() > 1 && self.cache_bytes > CACHE_BYTES {
            if let Some(e) = self.cache.pop_front() {
                self.cache_bytes -= e.data.len();
            }
        }
        Ok(())
    }

    /// Records a new hard state; written by the next [`SegmentLog::sync`].
    pub fn set_hard_state(&mut self, hs: &HardState) -> Result<(), StoreError> {
        self.maybe_roll()?;
        self.hard_state = hs.clone();
        self.encode_hard_state(hs)
    }

    /// Writes what is pending; with `durable`, then fdatasyncs the active segment.
    pub fn sync(&mut self, durable: bool) -> Result<(), StoreError> {
        self.write_pending()?;
        if durable {
            let active = self.segments.back().expect("active segment");
            active
                .file
                .sync_data()
                .map_err(|e| io_err("fdatasync of", &segment_path(&self.dir, active.seq), e))?;
        }
        Ok(())
    }

    /// Drops entries through `through` from the index. Their files stay until
    /// [`SegmentLog::delete_segments_through`]: the caller deletes them once the state that
    /// replaces them, and the snapshot point that says so, are durable.
    pub fn compact(&mut self, through: u64) {
        if through < self.first {
            return;
        }
        assert!(through <= self.last(), "compaction past the end of the log");
        let n = (through + 1 - self.first) as usize;
        for loc in self.locs.drain(..n) {
            self.held_bytes -= u64::from(loc.len);
        }
        self.first = through + 1;
        while self.cache.front().is_some_and(|e| e.index <= through) {
            if let Some(e) = self.cache.pop_front() {
                self.cache_bytes -= e.data.len();
            }
        }
    }

    /// Deletes the oldest segments whose every entry is at or below `point` (a durable
    /// snapshot point); the active segment stays.
    pub fn delete_segments_through(&mut self, point: u64) -> Result<(), StoreError> {
        let point = point.min(self.first.saturating_sub(1));
        while self.segments.len() > 1 && self.segments[0].max_index <= point {
            self.delete_oldest_segment()?;
        }
        Ok(())
    }

    /// Deletes the oldest segment, or keeps its file for the next spare when none is kept:
    /// renamed to a spare's name, it is gone from replay just as a deleted file is.
    fn delete_oldest_segment(&mut self) -> Result<(), StoreError> {
        let Some(s) = self.segments.pop_front() else {
            return Ok(());
        };
        let path = segment_path(&self.dir, s.seq);
        drop(s.file);
        if self.recycled.is_some() {
            return std::fs::remove_file(&path).map_err(|e| io_err("deleting", &path, e));
        }
        let kept = self
            .dir
            .join(format!("{RECYCLED_PREFIX}{:020}.{PREALLOC_EXT}", s.seq));
        std::fs::rename(&path, &kept).map_err(|e| io_err("renaming", &path, e))?;
        self.recycled = Some(kept);
        Ok(())
    }

    /// Empties the log for a snapshot at `index`, durably, keeping `hs`. A new segment starts
    /// with a reset record and the hard state; only then are the old segments deleted, so a
    /// crash in between replays to the same empty log.
    pub fn reset(&mut self, index: u64, hs: &HardState) -> Result<(), StoreError> {
        self.write_pending()?;
        self.seal_active()?;
        let seq = self.segments.back().map_or(1, |s| s.seq + 1);
        let spare = self.take_spare();
        self.open_segment(seq, spare)?;
        encode_record(&mut self.pending, KIND_RESET, index, 0, |_| Ok(()))?;
        self.active().max_index = index;
        self.hard_state = hs.clone();
        self.encode_hard_state(hs)?;
        self.sync(true)?;
        while self.segments.len() > 1 {
            self.delete_oldest_segment()?;
        }
        self.locs.clear();
        self.cache.clear();
        self.cache_bytes = 0;
        self.held_bytes = 0;
        self.first = index + 1;
        Ok(())
    }

    pub fn first(&self) -> u64 {
        self.first
    }

    pub fn last(&self) -> u64 {
        self.first + self.locs.len() as u64 - 1
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// Payload bytes of the entries held.
    pub fn held_bytes(&self) -> u64 {
        self.held_bytes
    }

    /// The term of a held entry.
    pub fn term(&self, index: u64) -> Option<u64> {
        let i = index.checked_sub(self.first)?;
        self.locs.get(i as usize).map(|l| l.term)
    }

    /// The lowest index `t` such that the entries above `t` hold at most `bytes` of payload.
    pub fn index_keeping(&self, bytes: u64) -> u64 {
        let mut kept = 0u64;
        for (i, loc) in self.locs.iter().enumerate().rev() {
            kept += u64::from(loc.len);
            if kept > bytes {
                return self.first + i as u64;
            }
        }
        self.first.saturating_sub(1)
    }

    /// Entries `low..high` (held), stopping once `max_bytes` is passed (at least one).
    pub fn entries(&self, low: u64, high: u64, max_bytes: u64) -> Result<Vec<Entry>, StoreError> {
        assert!(
            low >= self.first && high <= self.last() + 1,
            "entries outside the log"
        );
        let mut out = Vec::with_capacity((high - low).min(1024) as usize);
        let mut size = 0u64;
        let cache_first = self.last() + 1 - self.cache.len() as u64;
        for index in low..high {
            let loc = self.locs[(index - self.first) as usize];
            size += u64::from(loc.len);
            if !out.is_empty() && size > max_bytes {
                break;
            }
            let e = if index >= cache_first {
                self.cache[(index - cache_first) as usize].clone()
            } else {
                self.read(loc)?
            };
            out.push(e);
        }
        Ok(out)
    }

    fn read(&self, loc: Loc) -> Result<Entry, StoreError> {
        let front = self.segments.front().expect("segments").seq;
        let seg = &self.segments[(loc.seq - front) as usize];
        let path = segment_path(&self.dir, seg.seq);
        let mut buf = vec![0u8; loc.len as usize];
        seg.file
            .read_exact_at(&mut buf, loc.offset)
            .map_err(|e| io_err("reading", &path, e))?;
        Entry::parse_from_bytes(&buf).map_err(|e| corrupt(&path, loc.offset, &e.to_string()))
    }
}

fn file_len(file: &File, path: &Path) -> Result<u64, StoreError> {
    file.metadata()
        .map(|m| m.len())
        .map_err(|e| io_err("reading the length of", path, e))
}

/// Truncates `file` to `len` bytes, durably, if it is longer.
fn cut_to(file: &File, path: &Path, len: u64) -> Result<(), StoreError> {
    if file_len(file, path)? <= len {
        return Ok(());
    }
    file.set_len(len)
        .and_then(|_| file.sync_all())
        .map_err(|e| io_err("truncating", path, e))
}

/// Writes a spare segment file of `bytes` zeros, synced step by step, so the segment it
/// becomes is overwritten in place rather than grown: over the `reuse`d compacted segment's
/// file when given (cut or grown to `bytes`), else a new file in `dir`. Runs on its own
/// thread (blocking I/O); stops, leaving the file for the next open to delete, once `cancel`
/// is set.
fn prepare_spare(
    dir: &Path,
    bytes: u64,
    reuse: Option<PathBuf>,
    cancel: &AtomicBool,
) -> Result<(PathBuf, File), String> {
    use std::io::Write;
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let reused = reuse.is_some();
    let path = reuse.unwrap_or_else(|| {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        dir.join(format!("{}-{n}.{PREALLOC_EXT}", std::process::id()))
    });
    let fail = |what: &str, e: std::io::Error| format!("{what} {}: {e}", path.display());
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(!reused)
        .open(&path)
        .map_err(|e| fail("opening", e))?;
    if reused {
        // A segment may have outgrown `bytes` by its last append: no stale tail stays.
        file.set_len(bytes).map_err(|e| fail("sizing", e))?;
    }
    let zeros = vec![0u8; PREALLOC_CHUNK_BYTES];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(PREALLOC_CHUNK_BYTES as u64) as usize;
        file.write_all(&zeros[..n])
            .map_err(|e| fail("writing", e))?;
        file.sync_data().map_err(|e| fail("syncing", e))?;
        left -= n as u64;
        if cancel.load(Ordering::Relaxed) {
            return Err("the log was closed".into());
        }
        if left > 0 {
            std::thread::sleep(PREALLOC_PAUSE);
        }
    }
    file.sync_all().map_err(|e| fail("syncing", e))?;
    Ok((path, file))
}

impl Drop for SegmentLog {
    /// Stops a helper still writing a spare and waits for it (one step at most), so no thread
    /// writes into the directory after the log is gone.
    fn drop(&mut self) {
        self.spare_cancel.store(true, Ordering::Relaxed);
        if let Some(h) = self.spare.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64, bytes: usize) -> Entry {
        Entry {
            index,
            term,
            data: vec![index as u8; bytes].into(),
            ..Default::default()
        }
    }

    fn hs(term: u64, vote: u64, commit: u64) -> HardState {
        HardState {
            term,
            vote,
            commit,
            ..Default::default()
        }
    }

    /// A new log in `dir` holding entries 1..=5 (term 1), synced; the path of its segment.
    fn five_synced_entries(dir: &Path) -> PathBuf {
        let mut log = SegmentLog::open(dir, 0).unwrap();
        log.append(&(1..=5).map(|i| entry(i, 1, 100)).collect::<Vec<_>>())
            .unwrap();
        log.sync(true).unwrap();
        segment_path(dir, 1)
    }

    /// Segment files only (not spares being prepared).
    fn segment_files(dir: &Path) -> usize {
        crate::store::files_with_extension(dir, SEGMENT_EXT)
    }

    /// Entries and the hard state written and synced come back after a reopen, byte for byte.
    #[test]
    fn appends_and_hard_state_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut log = SegmentLog::open(dir.path(), 0).unwrap();
            log.append(&(1..=10).map(|i| entry(i, 1, 100)).collect::<Vec<_>>())
                .unwrap();
            log.set_hard_state(&hs(1, 2, 7)).unwrap();
            log.sync(true).unwrap();
        }
        let log = SegmentLog::open(dir.path(), 0).unwrap();
        assert_eq!((log.first(), log.last()), (1, 10));
        assert_eq!(log.hard_state(), &hs(1, 2, 7));
        let got = log.entries(1, 11, u64::MAX).unwrap();
        assert_eq!(got, (1..=10).map(|i| entry(i, 1, 100)).collect::<Vec<_>>());
    }

    /// A conflicting append drops the old suffix, also across segments and after a reopen
    /// (replay applies the same rule as the live log).
    #[test]
    fn conflicting_suffix_is_superseded_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut log = SegmentLog::open_with(dir.path(), 0, 2_000).unwrap();
            log.append(&(1..=30).map(|i| entry(i, 1, 200)).collect::<Vec<_>>())
                .unwrap();
            log.sync(true).unwrap();
            log.append(&(12..=14).map(|i| entry(i, 2, 10)).collect::<Vec<_>>())
                .unwrap();
            log.sync(true).unwrap();
            assert_eq!(log.last(), 14);
            assert_eq!(log.term(13), Some(2));
            assert!(segment_files(dir.path()) > 2);
        }
        let log = SegmentLog::open_with(dir.path(), 0, 2_000).unwrap();
        assert_eq!(log.last(), 14);
        assert_eq!(log.term(11), Some(1));
        assert_eq!(log.term(12), Some(2));
        let got = log.entries(10, 15, u64::MAX).unwrap();
        assert_eq!(got[3], entry(13, 2, 10));
    }

    /// A segment whose tail is zeros (a preallocated file) replays to its last record: the
    /// zeros end it, are cut off on open (the file is its written length again), and appends
    /// after the reopen go at the written end.
    #[test]
    fn zero_filled_tail_ends_the_active_segment() {
        let dir = tempfile::tempdir().unwrap();
        let path = five_synced_entries(dir.path());
        let written = std::fs::metadata(&path).unwrap().len();
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(written + 64 * 1024).unwrap();
        {
            let mut log = SegmentLog::open(dir.path(), 0).unwrap();
            assert_eq!(log.last(), 5);
            assert_eq!(std::fs::metadata(&path).unwrap().len(), written);
            log.append(&(6..=8).map(|i| entry(i, 2, 100)).collect::<Vec<_>>())
                .unwrap();
            log.sync(true).unwrap();
        }
        let log = SegmentLog::open(dir.path(), 0).unwrap();
        assert_eq!(
            (log.last(), log.term(5), log.term(8)),
            (8, Some(1), Some(2))
        );
        assert_eq!(log.entries(1, 9, u64::MAX).unwrap().len(), 8);
    }

    /// A torn write into a preallocated segment can leave its first header unwritten (zeros)
    /// and a later record of it whole. That record was never synced, so never acknowledged:
    /// it must not come back, not at the reopen and not after appends have filled the space
    /// before it (the zeros and what follows them are cut off on open).
    #[test]
    fn a_record_behind_zeros_is_never_resurrected() {
        let dir = tempfile::tempdir().unwrap();
        let path = five_synced_entries(dir.path());
        let written = std::fs::metadata(&path).unwrap().len();
        // Zeros exactly as long as the record of the entry appended after the reopen.
        let (next, mut next_record) = (entry(6, 2, 8), Vec::new());
        encode_record(&mut next_record, KIND_ENTRY, 6, 2, |b| {
            next.write_to_vec(b).map_err(pb_err)
        })
        .unwrap();
        let mut tail = vec![0u8; next_record.len()];
        let stale = entry(7, 9, 8);
        encode_record(&mut tail, KIND_ENTRY, 7, 9, |b| {
            stale.write_to_vec(b).map_err(pb_err)
        })
        .unwrap();
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .write_all_at(&tail, written)
            .unwrap();
        {
            let mut log = SegmentLog::open(dir.path(), 0).unwrap();
            assert_eq!(log.last(), 5);
            log.append(&[next]).unwrap();
            log.sync(true).unwrap();
        }
        let log = SegmentLog::open(dir.path(), 0).unwrap();
        assert_eq!((log.last(), log.term(6), log.term(7)), (6, Some(2), None));
    }

    /// Zeros anywhere but at the end of the last segment are corruption: a segment is cut to
    /// its written length before the next opens.
    #[test]
    fn zeros_in_a_closed_segment_refuse_to_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut log = SegmentLog::open_with(dir.path(), 0, 1_000).unwrap();
            log.append(&(1..=20).map(|i| entry(i, 1, 100)).collect::<Vec<_>>())
                .unwrap();
            log.sync(true).unwrap();
            assert!(segment_files(dir.path()) > 1);
        }
        let first = segment_path(dir.path(), 1);
        let len = std::fs::metadata(&first).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&first)
            .unwrap()
            .set_len(len + 4096)
            .unwrap();
        assert!(matches!(
            SegmentLog::open_with(dir.path(), 0, 1_000),
            Err(StoreError::Corrupt(_))
        ));
    }

    /// Once the active segment is half full a spare file is prepared, and the roll takes it:
    /// the new segment starts as a zero-filled file of the segment size; every entry written
    /// across such segments comes back after a reopen.
    #[test]
    fn rolls_take_prepared_spares_and_replay_across_them() {
        const SEGMENT: u64 = 4_096;
        let dir = tempfile::tempdir().unwrap();
        let written = {
            let mut log = SegmentLog::open_with(dir.path(), 0, SEGMENT).unwrap();
            let mut next = 1;
            while log.spare.is_none() {
                log.append(&[entry(next, 1, 200)]).unwrap();
                log.sync(true).unwrap();
                next += 1;
            }
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while !log.spare.as_ref().unwrap().is_finished() {
                assert!(std::time::Instant::now() < deadline, "spare never finished");
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            let seq = log.segments.back().unwrap().seq;
            while log.segments.back().unwrap().seq == seq {
                log.append(&[entry(next, 1, 200)]).unwrap();
                next += 1;
            }
            let path = segment_path(dir.path(), seq + 1);
            assert!(
                std::fs::metadata(&path).unwrap().len() >= SEGMENT,
                "the new segment is the zero-filled spare"
            );
            log.sync(true).unwrap();
            next - 1
        };
        let log = SegmentLog::open_with(dir.path(), 0, SEGMENT).unwrap();
        assert_eq!(log.last(), written);
        assert_eq!(
            log.entries(1, written + 1, u64::MAX).unwrap(),
            (1..=written).map(|i| entry(i, 1, 200)).collect::<Vec<_>>()
        );
    }

    /// Waits until the log's spare helper has finished (it writes a small test segment).
    fn wait_for_spare(log: &SegmentLog) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !log.spare.as_ref().unwrap().is_finished() {
            assert!(std::time::Instant::now() < deadline, "spare never finished");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// Appends (and syncs) 200-byte entries from `next` while `go` holds, at most 1,000;
    /// returns the next index.
    fn append_while(log: &mut SegmentLog, mut next: u64, go: impl Fn(&SegmentLog) -> bool) -> u64 {
        let first = next;
        while go(log) {
            assert!(next < first + 1_000, "still going after 1,000 entries");
            log.append(&[entry(next, 1, 200)]).unwrap();
            log.sync(true).unwrap();
            next += 1;
        }
        next
    }

    /// Appends 200-byte entries from `next` until the log starts a spare; returns the next
    /// index. The first one never does: a node that writes next to nothing writes no zeros.
    fn append_until_spare(log: &mut SegmentLog, mut next: u64) -> u64 {
        let first = next;
        while log.spare.is_none() {
            assert!(next < first + 100, "no spare started");
            log.append(&[entry(next, 1, 200)]).unwrap();
            log.sync(true).unwrap();
            assert!(
                next > first || log.spare.is_none(),
                "a spare after one entry"
            );
            next += 1;
        }
        next
    }

    /// A segment that grows with every append (a new log's first one, or the active one cut
    /// to its written length on open) starts a spare once it holds 1/64 of a segment and
    /// hands over to it as soon as it is ready, long before it is full. Replay reads across
    /// both, and a reopened log does the same again.
    #[test]
    fn a_growing_segment_hands_over_to_a_spare_once_ready() {
        const SEGMENT: u64 = 64 * 1024;
        let dir = tempfile::tempdir().unwrap();
        let mut log = SegmentLog::open_with(dir.path(), 0, SEGMENT).unwrap();
        assert!(
            !log.segments[0].preallocated,
            "a new log's first segment grows"
        );
        let next = append_until_spare(&mut log, 1);
        wait_for_spare(&log);
        log.append(&[entry(next, 1, 200)]).unwrap();
        log.sync(true).unwrap();
        assert_eq!(
            log.segments.len(),
            2,
            "handed over with the segment far from full"
        );
        assert!(log.segments[0].bytes < SEGMENT / 8);
        assert!(log.segments[1].preallocated);
        assert!(
            std::fs::metadata(segment_path(dir.path(), 2))
                .unwrap()
                .len()
                >= SEGMENT
        );
        assert_eq!(
            std::fs::metadata(segment_path(dir.path(), 1))
                .unwrap()
                .len(),
            log.segments[0].bytes,
            "the segment left behind is sealed at its written length"
        );
        drop(log);

        let mut log = SegmentLog::open_with(dir.path(), 0, SEGMENT).unwrap();
        let all = |n: u64| (1..=n).map(|i| entry(i, 1, 200)).collect::<Vec<_>>();
        assert_eq!(log.entries(1, next + 1, u64::MAX).unwrap(), all(next));
        assert!(
            !log.segments[1].preallocated,
            "cut on open, so growing again"
        );
        let last = append_until_spare(&mut log, next + 1);
        wait_for_spare(&log);
        log.append(&[entry(last, 1, 200)]).unwrap();
        log.sync(true).unwrap();
        assert_eq!(log.segments.len(), 3);
        assert!(log.segments[2].preallocated);
        drop(log);
        let log = SegmentLog::open_with(dir.path(), 0, SEGMENT).unwrap();
        assert_eq!(log.entries(1, last + 1, u64::MAX).unwrap(), all(last));
    }

    /// A compacted segment's file is kept, out of replay's sight, and the next spare is
    /// written over it (zeros, cut to the segment size) instead of into a new file; the
    /// segment that rolls into it replays alone after a reopen.
    #[test]
    fn a_compacted_segment_becomes_the_next_spare() {
        const SEGMENT: u64 = 64 * 1024;
        let dir = tempfile::tempdir().unwrap();
        let mut log = SegmentLog::open_with(dir.path(), 0, SEGMENT).unwrap();
        let mut next = append_until_spare(&mut log, 1);
        wait_for_spare(&log);
        log.append(&[entry(next, 1, 200)]).unwrap();
        log.sync(true).unwrap();
        next += 1;
        assert_eq!(log.segments.len(), 2, "handed over to the spare");
        let through = log.segments[0].max_index;
        log.compact(through);
        log.delete_segments_through(through).unwrap();
        let kept = log.recycled.clone().expect("the compacted file is kept");
        assert!(kept.exists() && !segment_path(dir.path(), 1).exists());
        assert_eq!(segment_files(dir.path()), 1, "gone from replay");

        // Fill segment 2 to half, so its spare starts, over the kept file.
        next = append_while(&mut log, next, |l| l.spare.is_none());
        assert!(log.recycled.is_none(), "the spare took the kept file");
        wait_for_spare(&log);
        let zeros = std::fs::read(&kept).unwrap();
        assert_eq!(zeros.len() as u64, SEGMENT);
        assert!(zeros.iter().all(|b| *b == 0), "the old records are zeroed");

        // Roll into it (segment 3, beside segment 2 alone since the compaction), then
        // replay from the compaction point.
        next = append_while(&mut log, next, |l| l.segments.len() < 2);
        assert_eq!(log.segments[1].seq, 3);
        assert!(log.segments[1].preallocated && !kept.exists());
        drop(log);
        let log = SegmentLog::open_with(dir.path(), through, SEGMENT).unwrap();
        let want: Vec<Entry> = (through + 1..next).map(|i| entry(i, 1, 200)).collect();
        assert_eq!(log.entries(through + 1, next, u64::MAX).unwrap(), want);
    }

    /// A spare an earlier run prepared and never used is deleted on open.
    #[test]
    fn leftover_spares_are_removed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let leftover = dir.path().join(format!("1-0.{PREALLOC_EXT}"));
        std::fs::write(&leftover, [0u8; 128]).unwrap();
        let _log = SegmentLog::open(dir.path(), 0).unwrap();
        assert!(!leftover.exists());
        assert_eq!(segment_files(dir.path()), 1);
    }

    /// A torn last record (crash mid-write) is cut off on open and the log goes on from there;
    /// corruption before the last segment's tail refuses to open.
    #[test]
    fn torn_tail_is_cut_and_earlier_corruption_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = five_synced_entries(dir.path());
        let len = std::fs::metadata(&path).unwrap().len();
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len - 30).unwrap();
        {
            let mut log = SegmentLog::open(dir.path(), 0).unwrap();
            assert_eq!(log.last(), 4, "the torn fifth entry is gone");
            log.append(&[entry(5, 2, 10)]).unwrap();
            log.sync(true).unwrap();
        }
        let log = SegmentLog::open(dir.path(), 0).unwrap();
        assert_eq!((log.last(), log.term(5)), (5, Some(2)));
        drop(log);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[40] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        std::fs::write(segment_path(dir.path(), 2), b"").unwrap();
        assert!(matches!(
            SegmentLog::open(dir.path(), 0),
            Err(StoreError::Corrupt(_))
        ));
    }

    /// Compaction deletes only segments whose entries are all compacted, once told the point is
    /// durable; the hard state survives because each segment starts with it.
    #[test]
    fn compaction_deletes_whole_segments_and_keeps_the_vote() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut log = SegmentLog::open_with(dir.path(), 0, 1_000).unwrap();
            log.set_hard_state(&hs(3, 1, 0)).unwrap();
            log.append(&(1..=40).map(|i| entry(i, 3, 100)).collect::<Vec<_>>())
                .unwrap();
            log.sync(true).unwrap();
            let before = segment_files(dir.path());
            log.compact(35);
            assert_eq!(
                segment_files(dir.path()),
                before,
                "files wait for a durable point"
            );
            log.delete_segments_through(35).unwrap();
            assert!(segment_files(dir.path()) < before);
            assert_eq!((log.first(), log.last()), (36, 40));
        }
        let log = SegmentLog::open_with(dir.path(), 35, 1_000).unwrap();
        assert_eq!((log.first(), log.last()), (36, 40));
        assert_eq!(log.hard_state().vote, 1);
        assert_eq!(log.entries(36, 41, u64::MAX).unwrap().len(), 5);
    }

    /// A reset (snapshot install) leaves an empty log at the snapshot index, also after a
    /// reopen with the store's older snapshot point (a crash before the install finished).
    #[test]
    fn reset_empties_the_log_durably() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut log = SegmentLog::open(dir.path(), 0).unwrap();
            log.append(&(1..=10).map(|i| entry(i, 1, 10)).collect::<Vec<_>>())
                .unwrap();
            log.sync(true).unwrap();
            log.reset(100, &hs(4, 2, 100)).unwrap();
            assert_eq!((log.first(), log.last()), (101, 100));
            log.append(&[entry(101, 4, 10)]).unwrap();
            log.sync(true).unwrap();
        }
        let log = SegmentLog::open(dir.path(), 0).unwrap();
        assert_eq!((log.first(), log.last()), (101, 101));
        assert_eq!(log.hard_state(), &hs(4, 2, 100));
        assert_eq!(segment_files(dir.path()), 1);
    }

    /// Reads past the in-memory cache come from the files and match what was appended.
    #[test]
    fn reads_beyond_the_cache_come_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = SegmentLog::open(dir.path(), 0).unwrap();
        let big = CACHE_BYTES / 4 + 1;
        let written: Vec<Entry> = (1..=6).map(|i| entry(i, 1, big)).collect();
        log.append(&written).unwrap();
        log.sync(false).unwrap();
        assert!(log.cache.len() < 6);
        assert_eq!(log.entries(1, 7, u64::MAX).unwrap(), written);
        assert_eq!(log.entries(1, 7, 1).unwrap().len(), 1, "at least one entry");
        assert_eq!(log.index_keeping(big as u64 * 2 + 100), 4);
    }
}
