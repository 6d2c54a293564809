//! Snapshot files: the on-disk form of a state snapshot, its descriptor, and the incremental
//! checkpoint builder that writes one without stalling the Raft driver.
//!
//! A snapshot is too large to travel in a Raft message (a million queued 1 KiB messages is over
//! a gigabyte), so the Raft `Snapshot` carries only a [`SnapshotDescriptor`]: which state
//! (index, term), how many bytes and keys, and a SHA-256 of the file. The file itself is a
//! plain sequence of records, `u32 key length | key | u32 value length | value` (big-endian),
//! keys ascending, streamed between nodes in chunks by `crate::snapshot`.
//!
//! ## A consistent view without snapshot isolation
//! sled cannot scan a point-in-time view while the driver keeps applying. The
//! [`CheckpointBuilder`] therefore copies the state range in key order a step at a time on the
//! driver thread, between Readies, and keeps the *pre-image* of every key that an applied batch
//! touches ahead of its cursor (the value it had at the checkpoint's index, or "absent"). When
//! the cursor reaches such a key the pre-image is written instead of the live value. Keys at
//! or behind the cursor are already copied, so later writes to them do not matter. The result
//! is exactly the state at the index the build started at, while consensus keeps running.
//! The pre-images are held in memory and bounded by [`MAX_PREIMAGE_BYTES`].

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Makes a rename or unlink in a directory durable (shared with the log and the store).
pub use crate::store::sync_dir;
use crate::store::{keys, KvPair, Store, StoreError, WriteBatch};

/// Version of the record format and descriptor; a node refuses a snapshot of another format.
pub const SNAPSHOT_FORMAT: u8 = 2;
/// State bytes copied into a checkpoint per driver loop iteration: bounds how long one step
/// delays the next Ready (a few milliseconds) while a build is running.
pub const CHECKPOINT_STEP_BYTES: usize = 8 * 1024 * 1024;
/// Pre-image bytes a running build may hold. When writes during a build touch more than this
/// (a very busy leader and a huge state), the build is abandoned and started over later; the
/// follower keeps waiting for its snapshot meanwhile.
pub const MAX_PREIMAGE_BYTES: usize = 256 * 1024 * 1024;
/// Largest single key or value in a snapshot file; anything above is corruption, refused
/// before allocating. State values are bounded by the largest Raft entry.
pub const MAX_RECORD_BYTES: usize = 2 * super::MAX_PROPOSAL_BYTES;
/// I/O buffer for snapshot files.
const FILE_BUFFER_BYTES: usize = 1024 * 1024;

/// What a Raft `Snapshot` message carries instead of the state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotDescriptor {
    pub format: u8,
    pub index: u64,
    pub term: u64,
    /// Length of the snapshot file.
    pub bytes: u64,
    /// Number of state keys in it.
    pub keys: u64,
    pub sha256: [u8; 32],
}

impl SnapshotDescriptor {
    pub fn encode(&self) -> Vec<u8> {
        bincode::serde::encode_to_vec(self, bincode::config::standard()).unwrap_or_default()
    }

    pub fn decode(b: &[u8]) -> Result<SnapshotDescriptor, StoreError> {
        let d: SnapshotDescriptor =
            bincode::serde::decode_from_slice(b, bincode::config::standard())
                .map_err(|e| StoreError::Corrupt(format!("snapshot descriptor: {e}")))?
                .0;
        if d.format != SNAPSHOT_FORMAT {
            return Err(StoreError::Corrupt(format!(
                "snapshot format {} (this node reads {SNAPSHOT_FORMAT})",
                d.format
            )));
        }
        Ok(d)
    }

    /// The file name of this snapshot, in a checkpoint or staging directory.
    pub fn file_name(&self) -> String {
        file_name(self.index, self.term)
    }
}

pub fn file_name(index: u64, term: u64) -> String {
    format!("{index:020}-{term:020}.snap")
}

/// Where a node keeps the checkpoints it serves to followers.
pub fn checkpoint_dir(snapshot_dir: &Path) -> PathBuf {
    snapshot_dir.join("checkpoints")
}

/// Where a node stages snapshots it receives, until they are installed.
pub fn staging_dir(snapshot_dir: &Path) -> PathBuf {
    snapshot_dir.join("staging")
}

/// The (index, term) a snapshot file name stands for; None for other files.
pub fn parse_file_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(".snap")?;
    let (i, t) = stem.split_once('-')?;
    Some((i.parse().ok()?, t.parse().ok()?))
}

fn io(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Engine(format!("{what} {}: {e}", path.display()))
}

/// Removes snapshot files in `dir` for which `drop(index, term)` is true, and with `parts`
/// any partial file (only safe when nothing is writing one).
pub fn remove_files(dir: &Path, parts: bool, drop: impl Fn(u64, u64) -> bool) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let stale = match parse_file_name(&name) {
            Some((i, t)) => drop(i, t),
            None => parts && name.ends_with(".part"),
        };
        if stale {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Writes a snapshot file record by record, hashing as it goes; renamed into place on finish.
pub struct SnapWriter {
    out: BufWriter<File>,
    part: PathBuf,
    hash: ring::digest::Context,
    bytes: u64,
    keys: u64,
}

impl SnapWriter {
    /// Starts `<dir>/<name>.part`, replacing any leftover of an earlier attempt.
    pub fn create(dir: &Path, name: &str) -> Result<SnapWriter, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| io("creating", dir, e))?;
        let part = dir.join(format!("{name}.part"));
        let f = File::create(&part).map_err(|e| io("creating", &part, e))?;
        Ok(SnapWriter {
            out: BufWriter::with_capacity(FILE_BUFFER_BYTES, f),
            part,
            hash: ring::digest::Context::new(&ring::digest::SHA256),
            bytes: 0,
            keys: 0,
        })
    }

    pub fn push(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        for field in [key, value] {
            let len = (field.len() as u32).to_be_bytes();
            self.raw(&len)?;
            self.raw(field)?;
        }
        self.keys += 1;
        Ok(())
    }

    /// Appends file bytes as they are (a received chunk); counts no keys.
    pub fn raw(&mut self, b: &[u8]) -> Result<(), StoreError> {
        self.out
            .write_all(b)
            .map_err(|e| io("writing", &self.part, e))?;
        self.hash.update(b);
        self.bytes += b.len() as u64;
        Ok(())
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Fsyncs the file and renames it to `<dir>/<final_name>`; returns its length, keys and hash.
    pub fn finish(self, final_name: &str) -> Result<(u64, u64, [u8; 32]), StoreError> {
        self.finish_expecting(final_name, None)
    }

    /// As [`SnapWriter::finish`], but first checks length and hash against `expect` (a
    /// received file against its descriptor); on a mismatch the file is removed, not renamed.
    pub fn finish_expecting(
        self,
        final_name: &str,
        expect: Option<(u64, [u8; 32])>,
    ) -> Result<(u64, u64, [u8; 32]), StoreError> {
        let part = self.part.clone();
        let mut sha = [0u8; 32];
        sha.copy_from_slice(self.hash.finish().as_ref());
        if let Some((bytes, want)) = expect {
            if bytes != self.bytes || want != sha {
                let _ = std::fs::remove_file(&part);
                return Err(StoreError::Corrupt(format!(
                    "received snapshot of {} bytes does not match its descriptor ({bytes} bytes) or checksum",
                    self.bytes
                )));
            }
        }
        let f = self
            .out
            .into_inner()
            .map_err(|e| io("writing", &part, e.into_error()))?;
        f.sync_all().map_err(|e| io("syncing", &part, e))?;
        let dir = part.parent().unwrap_or(Path::new("."));
        let dest = dir.join(final_name);
        std::fs::rename(&part, &dest).map_err(|e| io("renaming", &part, e))?;
        sync_dir(dir)?;
        Ok((self.bytes, self.keys, sha))
    }

    /// Drops the partial file.
    pub fn discard(self) {
        let _ = std::fs::remove_file(&self.part);
    }
}

/// Reads the records of a snapshot file in order, hashing what it reads.
pub struct SnapReader {
    input: BufReader<File>,
    path: PathBuf,
    hash: ring::digest::Context,
    bytes: u64,
}

impl SnapReader {
    pub fn open(path: &Path) -> Result<SnapReader, StoreError> {
        let f = File::open(path).map_err(|e| io("opening", path, e))?;
        Ok(SnapReader {
            input: BufReader::with_capacity(FILE_BUFFER_BYTES, f),
            path: path.to_path_buf(),
            hash: ring::digest::Context::new(&ring::digest::SHA256),
            bytes: 0,
        })
    }

    /// Fills `buf` completely; false at a clean end of file before the first byte.
    fn fill(&mut self, buf: &mut [u8], at_record_start: bool) -> Result<bool, StoreError> {
        let mut got = 0;
        while got < buf.len() {
            match self.input.read(&mut buf[got..]) {
                Ok(0) if got == 0 && at_record_start => return Ok(false),
                Ok(0) => {
                    return Err(StoreError::Corrupt(format!(
                        "snapshot file {} ends inside a record",
                        self.path.display()
                    )))
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io("reading", &self.path, e)),
            }
        }
        self.hash.update(buf);
        self.bytes += buf.len() as u64;
        Ok(true)
    }

    fn field(&mut self, first: bool) -> Result<Option<Vec<u8>>, StoreError> {
        let mut len = [0u8; 4];
        if !self.fill(&mut len, first)? {
            return Ok(None);
        }
        let len = u32::from_be_bytes(len) as usize;
        if len > MAX_RECORD_BYTES {
            return Err(StoreError::Corrupt(format!(
                "snapshot record of {len} bytes (limit {MAX_RECORD_BYTES})"
            )));
        }
        let mut v = vec![0u8; len];
        self.fill(&mut v, false)?;
        Ok(Some(v))
    }

    /// The next (key, value), or None at the end of the file.
    pub fn next_pair(&mut self) -> Result<Option<KvPair>, StoreError> {
        let Some(k) = self.field(true)? else {
            return Ok(None);
        };
        let v = self.field(false)?.ok_or_else(|| {
            StoreError::Corrupt("snapshot file ends between key and value".into())
        })?;
        Ok(Some((k, v)))
    }

    /// Checks, once every record was read, that the file is the one `desc` describes.
    pub fn verify_end(self, desc: &SnapshotDescriptor, keys: u64) -> Result<(), StoreError> {
        let sha = self.hash.finish();
        if self.bytes != desc.bytes || keys != desc.keys || sha.as_ref() != desc.sha256 {
            return Err(StoreError::Corrupt(format!(
                "snapshot file {} does not match its descriptor ({} bytes / {keys} keys read, {} / {} expected, or checksum differs)",
                self.path.display(),
                self.bytes,
                desc.bytes,
                desc.keys
            )));
        }
        Ok(())
    }
}

/// SHA-256 of a whole file, and its length.
pub fn hash_file(path: &Path) -> Result<(u64, [u8; 32]), StoreError> {
    let mut f = File::open(path).map_err(|e| io("opening", path, e))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; FILE_BUFFER_BYTES];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(|e| io("reading", path, e))?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
        total += n as u64;
    }
    let mut sha = [0u8; 32];
    sha.copy_from_slice(ctx.finish().as_ref());
    Ok((total, sha))
}

/// The smallest key greater than `k`.
fn after(k: &[u8]) -> Vec<u8> {
    let mut v = k.to_vec();
    v.push(0);
    v
}

/// End of the state key range (exclusive).
fn state_end() -> Vec<u8> {
    vec![keys::STATE + 1]
}

/// An incremental, consistent copy of the state range at one applied index (see module doc).
pub struct CheckpointBuilder {
    pub index: u64,
    pub term: u64,
    out: Option<SnapWriter>,
    /// Last key copied; everything at or before it is in the file.
    cursor: Vec<u8>,
    /// Value at `index` of keys ahead of the cursor that applied batches have touched since.
    preimages: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    preimage_bytes: usize,
}

/// Why a build stopped without a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("writes during the build kept more than {MAX_PREIMAGE_BYTES} bytes of pre-images")]
    TooManyPreimages,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl CheckpointBuilder {
    /// Starts a checkpoint of the state as it is now, applied through (index, term).
    pub fn begin(dir: &Path, index: u64, term: u64) -> Result<CheckpointBuilder, StoreError> {
        Ok(CheckpointBuilder {
            index,
            term,
            out: Some(SnapWriter::create(dir, &file_name(index, term))?),
            cursor: vec![keys::STATE],
            preimages: BTreeMap::new(),
            preimage_bytes: 0,
        })
    }

    /// Called before `batch` is written: keeps the current value of each state key it touches
    /// that the copy has not reached yet (first touch only).
    pub fn note_batch(&mut self, kv: &dyn Store, batch: &WriteBatch) -> Result<(), BuildError> {
        for (k, _) in &batch.ops {
            if k.first() != Some(&keys::STATE)
                || k.as_slice() <= self.cursor.as_slice()
                || self.preimages.contains_key(k)
            {
                continue;
            }
            let old = kv.get(k)?;
            self.preimage_bytes += k.len() + old.as_ref().map_or(0, |v| v.len());
            self.preimages.insert(k.clone(), old);
        }
        if self.preimage_bytes > MAX_PREIMAGE_BYTES {
            return Err(BuildError::TooManyPreimages);
        }
        Ok(())
    }

    /// Writes the pre-images of keys before `upto` (exclusive; None = all) that existed.
    fn flush_preimages(&mut self, upto: Option<&[u8]>) -> Result<(), StoreError> {
        let out = self
            .out
            .as_mut()
            .ok_or(StoreError::Corrupt("finished".into()))?;
        let taken = match upto {
            Some(u) => {
                let rest = self.preimages.split_off(u);
                std::mem::replace(&mut self.preimages, rest)
            }
            None => std::mem::take(&mut self.preimages),
        };
        for (k, v) in taken {
            self.preimage_bytes -= k.len() + v.as_ref().map_or(0, |v| v.len());
            if let Some(v) = v {
                out.push(&k, &v)?;
            }
            self.cursor = k;
        }
        Ok(())
    }

    /// Copies up to `budget` bytes; returns the finished file's descriptor once the copy is done.
    pub fn step(
        &mut self,
        kv: &dyn Store,
        budget: usize,
    ) -> Result<Option<SnapshotDescriptor>, StoreError> {
        let mut copied = 0usize;
        let mut exhausted = true;
        for item in kv.scan_range(&after(&self.cursor), &state_end()) {
            let (k, v) = item?;
            if copied >= budget {
                exhausted = false;
                break;
            }
            copied += k.len() + v.len();
            self.copy_one(k, v)?;
        }
        if !exhausted {
            return Ok(None);
        }
        self.flush_preimages(None)?;
        let out = self
            .out
            .take()
            .ok_or(StoreError::Corrupt("finished".into()))?;
        let (bytes, keys, sha256) = out.finish(&file_name(self.index, self.term))?;
        Ok(Some(SnapshotDescriptor {
            format: SNAPSHOT_FORMAT,
            index: self.index,
            term: self.term,
            bytes,
            keys,
            sha256,
        }))
    }

    /// Copies one live pair, first any deleted-since keys before it, using its pre-image if any.
    fn copy_one(&mut self, k: Vec<u8>, v: Vec<u8>) -> Result<(), StoreError> {
        self.flush_preimages(Some(&k))?;
        let out = self
            .out
            .as_mut()
            .ok_or(StoreError::Corrupt("finished".into()))?;
        match self.preimages.remove(&k) {
            Some(pre) => {
                self.preimage_bytes -= k.len() + pre.as_ref().map_or(0, |v| v.len());
                if let Some(pre) = pre {
                    out.push(&k, &pre)?;
                }
            }
            None => out.push(&k, &v)?,
        }
        self.cursor = k;
        Ok(())
    }

    /// Drops the partial file.
    pub fn abandon(mut self) {
        if let Some(out) = self.out.take() {
            out.discard();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SledStore;

    fn store(dir: &Path) -> SledStore {
        SledStore::open(&dir.join("db")).unwrap()
    }

    fn put(kv: &dyn Store, b: &mut Option<&mut CheckpointBuilder>, k: &str, v: Option<&str>) {
        let mut batch = WriteBatch::default();
        match v {
            Some(v) => batch.put(keys::state(k.as_bytes()), v.as_bytes().to_vec()),
            None => batch.delete(keys::state(k.as_bytes())),
        }
        if let Some(b) = b.as_deref_mut() {
            b.note_batch(kv, &batch).unwrap();
        }
        kv.write(batch).unwrap();
    }

    fn read_all(path: &Path, desc: &SnapshotDescriptor) -> Vec<(String, String)> {
        let mut r = SnapReader::open(path).unwrap();
        let mut out = Vec::new();
        while let Some((k, v)) = r.next_pair().unwrap() {
            out.push((
                String::from_utf8(k[1..].to_vec()).unwrap(),
                String::from_utf8(v).unwrap(),
            ));
        }
        let n = out.len() as u64;
        r.verify_end(desc, n).unwrap();
        out
    }

    /// Writes interleaved with small build steps — updates, deletes and inserts both ahead of
    /// and behind the copy cursor — leave the checkpoint equal to the state at its start.
    #[test]
    fn checkpoint_is_the_state_at_its_start_despite_concurrent_writes() {
        let dir = tempfile::tempdir().unwrap();
        let kv = store(dir.path());
        for i in 0..200 {
            put(&kv, &mut None, &format!("k{i:03}"), Some(&format!("v{i}")));
        }
        let want: Vec<(String, String)> = (0..200)
            .map(|i| (format!("k{i:03}"), format!("v{i}")))
            .collect();
        let mut b = CheckpointBuilder::begin(dir.path(), 7, 2).unwrap();
        let mut step = 0;
        let desc = loop {
            if let Some(d) = b.step(&kv, 100).unwrap() {
                break d;
            }
            step += 1;
            let mut bb = Some(&mut b);
            // Touch keys all over the range: behind the cursor, at it, and far ahead.
            for j in [step * 7 % 200, (step * 13 + 100) % 200, 199 - step % 200] {
                let k = format!("k{j:03}");
                match step % 3 {
                    0 => put(&kv, &mut bb, &k, None),
                    1 => put(&kv, &mut bb, &k, Some("changed")),
                    _ => put(&kv, &mut bb, &format!("{k}-new"), Some("inserted")),
                }
            }
        };
        assert!(step > 10, "the build should have taken many steps");
        assert_eq!((desc.index, desc.term, desc.keys), (7, 2, 200));
        assert_eq!(read_all(&dir.path().join(desc.file_name()), &desc), want);
    }

    /// A file that differs from its descriptor by one byte, or is cut short, is refused.
    #[test]
    fn corrupt_or_truncated_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = SnapWriter::create(dir.path(), "x").unwrap();
        w.push(b"skey", b"value").unwrap();
        w.push(b"skey2", b"value2").unwrap();
        let (bytes, keys, sha256) = w.finish("1-1.snap").unwrap();
        let desc = SnapshotDescriptor {
            format: SNAPSHOT_FORMAT,
            index: 1,
            term: 1,
            bytes,
            keys,
            sha256,
        };
        let path = dir.path().join("1-1.snap");
        assert_eq!(hash_file(&path).unwrap(), (bytes, sha256));
        let mut data = std::fs::read(&path).unwrap();
        data[13] ^= 1; // inside the first value
        std::fs::write(&path, &data).unwrap();
        let mut r = SnapReader::open(&path).unwrap();
        while r.next_pair().unwrap().is_some() {}
        assert!(r.verify_end(&desc, 2).is_err());
        std::fs::write(&path, &data[..data.len() - 3]).unwrap();
        let mut r = SnapReader::open(&path).unwrap();
        assert!(r.next_pair().is_ok());
        assert!(r.next_pair().is_err());
    }

    /// The descriptor round-trips and a foreign format is refused.
    #[test]
    fn descriptor_round_trip_and_format_check() {
        let d = SnapshotDescriptor {
            format: SNAPSHOT_FORMAT,
            index: 9,
            term: 3,
            bytes: 100,
            keys: 2,
            sha256: [7; 32],
        };
        assert_eq!(SnapshotDescriptor::decode(&d.encode()).unwrap(), d);
        let other = SnapshotDescriptor { format: 1, ..d };
        assert!(SnapshotDescriptor::decode(&other.encode()).is_err());
        assert_eq!(parse_file_name(&file_name(9, 3)), Some((9, 3)));
        assert_eq!(parse_file_name("junk"), None);
    }
}
