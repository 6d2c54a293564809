//! Snapshot transfer between nodes: the leader serves checkpoint files in chunks, a follower
//! fetches, stages and verifies one before raft may install it.
//!
//! The Raft `MsgSnapshot` carries only a [`SnapshotDescriptor`] (see `raft::snapfile`). When a
//! follower receives one, this module holds the message back from the driver, pulls the file
//! from the sender with chunk requests over the peer transport's request/reply path (each at
//! most [`SNAPSHOT_CHUNK_BYTES`], one in flight, so a transfer never holds more than one chunk
//! in memory on either side), writes it to `<data>/snapshots/staging/*.part`, checks length and
//! SHA-256 against the descriptor, fsyncs and renames it, and only then steps the message into
//! the driver, whose install reads the staged file. File I/O runs on blocking threads.
//!
//! The leader registers each snapshot it sends. The follower, once it has handed the verified
//! snapshot message to its driver, sends "done", and the leader reports success to raft
//! (`report_snapshot`) — in that order, so the leader's next append reaches the follower's
//! driver after the snapshot, never before it (which would make it ask for a snapshot again).
//! An abort from the follower, a send that could not be queued, or [`TRANSFER_IDLE_TIMEOUT`]
//! without a request report failure, and raft retries with a new snapshot message later. While a transfer runs, the log is not compacted
//! past its index (the pin shared with the driver), so the follower can continue by log.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use raft::prelude::{Message, MessageType};
use serde::{Deserialize, Serialize};

use crate::raft::snapfile::{self, SnapWriter, SnapshotDescriptor};
use crate::raft::storage::NO_PIN;
use crate::raft::DriverHandle;
use crate::store::StoreError;
use crate::transport::Transport;

/// Largest piece of a snapshot file in one reply: well under the transport's frame cap, and
/// the most a transfer holds in memory on either side.
pub const SNAPSHOT_CHUNK_BYTES: usize = 4 * 1024 * 1024;
/// Snapshots a leader streams at once; a further follower needing one is refused (reported as
/// failed to raft) and retried on a later heartbeat.
pub const MAX_OUTBOUND_TRANSFERS: usize = 2;
/// A leader-side transfer with no chunk request for this long is reported failed.
pub const TRANSFER_IDLE_TIMEOUT: Duration = Duration::from_secs(15);
/// Chunk requests a follower keeps outstanding, so the leader's disk read and the network
/// overlap with the follower's write; the most a transfer buffers is this many chunks.
pub const CHUNKS_IN_FLIGHT: usize = 2;
/// How long a follower waits for one chunk before retrying it.
pub const CHUNK_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts per chunk before the follower gives the transfer up (and tells the leader).
const CHUNK_ATTEMPTS: usize = 3;
/// Largest snapshot a follower stages; a bigger one is refused (the leader is told, and the
/// follower stays behind until an operator raises the limit). Far above the queue's caps.
pub const MAX_STAGING_BYTES: u64 = 64 * 1024 * 1024 * 1024;
/// How often the leader looks for idle transfers.
const WATCHDOG_PERIOD: Duration = Duration::from_secs(1);

/// First byte of a peer request asking for a chunk; distinct from `client.rs`'s forwards.
pub const REQ_CHUNK: u8 = 0x10;
/// First byte of a peer request saying the follower gave a transfer up.
pub const REQ_ABORT: u8 = 0x11;
/// First byte of a peer request saying the follower has the snapshot and handed it to raft.
pub const REQ_DONE: u8 = 0x12;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ChunkRequest {
    index: u64,
    term: u64,
    offset: u64,
}

#[derive(Debug, Serialize, Deserialize)]
enum ChunkReply {
    Data(#[serde(with = "serde_bytes")] Vec<u8>),
    Refused(String),
}

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("peer transport: {0}")]
    Transport(#[from] crate::transport::TransportError),
    #[error("leader refused: {0}")]
    Refused(String),
    #[error("undecodable reply: {0}")]
    Decode(String),
    #[error("snapshot file: {0}")]
    Store(#[from] StoreError),
    #[error("blocking task failed: {0}")]
    Join(String),
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(v, bincode::config::standard()).unwrap_or_default()
}

fn decode<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, TransferError> {
    bincode::serde::decode_from_slice(b, bincode::config::standard())
        .map(|(v, _)| v)
        .map_err(|e| TransferError::Decode(e.to_string()))
}

/// A snapshot this node (as leader) is streaming to a follower.
struct Outbound {
    desc: SnapshotDescriptor,
    last_activity: Instant,
}

/// Both sides of snapshot transfer for one node.
pub struct Snapshots {
    checkpoints: PathBuf,
    staging: PathBuf,
    transport: Arc<Transport>,
    driver: Arc<OnceLock<DriverHandle>>,
    /// Lowest index being streamed, for the driver's compaction ([`NO_PIN`] when none).
    pin: Arc<AtomicU64>,
    outbound: Mutex<HashMap<u64, Outbound>>,
    /// The (index, term) this node is fetching, if any: one inbound transfer at a time.
    inbound: Mutex<Option<(u64, u64)>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Snapshots {
    pub fn new(
        snapshot_dir: &Path,
        transport: Arc<Transport>,
        driver: Arc<OnceLock<DriverHandle>>,
        pin: Arc<AtomicU64>,
    ) -> Arc<Snapshots> {
        Arc::new(Snapshots {
            checkpoints: snapfile::checkpoint_dir(snapshot_dir),
            staging: snapfile::staging_dir(snapshot_dir),
            transport,
            driver,
            pin,
            outbound: Mutex::new(HashMap::new()),
            inbound: Mutex::new(None),
        })
    }

    // ---------------------------------------------------------------- leader side

    /// Registers a `MsgSnapshot` about to be sent to `to`; false when it must not be sent
    /// (too many transfers, or an undecodable descriptor) — the caller reports failure.
    pub fn register_outbound(&self, to: u64, m: &Message) -> bool {
        let desc = match SnapshotDescriptor::decode(m.get_snapshot().get_data()) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "not sending a snapshot without a descriptor");
                return false;
            }
        };
        let mut out = lock(&self.outbound);
        if !out.contains_key(&to) && out.len() >= MAX_OUTBOUND_TRANSFERS {
            tracing::warn!(
                peer = to,
                limit = MAX_OUTBOUND_TRANSFERS,
                "too many snapshot transfers; this one waits"
            );
            return false;
        }
        tracing::info!(
            peer = to,
            index = desc.index,
            bytes = desc.bytes,
            "sending snapshot"
        );
        out.insert(
            to,
            Outbound {
                desc,
                last_activity: Instant::now(),
            },
        );
        self.update_pin(&out);
        true
    }

    fn update_pin(&self, out: &HashMap<u64, Outbound>) {
        let pin = out.values().map(|o| o.desc.index).min().unwrap_or(NO_PIN);
        self.pin.store(pin, Ordering::Relaxed);
    }

    /// Ends the transfer to `peer` and tells raft how it went.
    pub fn finish_outbound(&self, peer: u64, ok: bool) {
        let mut out = lock(&self.outbound);
        if out.remove(&peer).is_none() && ok {
            return;
        }
        self.update_pin(&out);
        drop(out);
        if !ok {
            crate::metrics::M.snapshot_transfer_failures.inc();
        }
        if let Some(d) = self.driver.get() {
            d.report_snapshot(peer, ok);
        }
    }

    /// Reports transfers that went quiet as failed, forever (spawn it once).
    pub async fn watchdog(self: Arc<Self>) {
        loop {
            tokio::time::sleep(WATCHDOG_PERIOD).await;
            let idle: Vec<u64> = lock(&self.outbound)
                .iter()
                .filter(|(_, o)| o.last_activity.elapsed() > TRANSFER_IDLE_TIMEOUT)
                .map(|(p, _)| *p)
                .collect();
            for peer in idle {
                tracing::warn!(peer, "snapshot transfer went idle; reporting it failed");
                self.finish_outbound(peer, false);
            }
        }
    }

    /// True for a peer request this module answers.
    pub fn is_snapshot_request(body: &[u8]) -> bool {
        matches!(
            body.first(),
            Some(&REQ_CHUNK) | Some(&REQ_ABORT) | Some(&REQ_DONE)
        )
    }

    /// Answers a follower's chunk request or abort.
    pub async fn serve(&self, from: u64, body: &[u8]) -> Vec<u8> {
        match body.split_first() {
            Some((&REQ_ABORT, _)) => {
                tracing::warn!(peer = from, "follower gave up a snapshot transfer");
                self.finish_outbound(from, false);
                Vec::new()
            }
            Some((&REQ_DONE, _)) => {
                tracing::info!(peer = from, "follower has the snapshot");
                self.finish_outbound(from, true);
                Vec::new()
            }
            Some((&REQ_CHUNK, req)) => encode(&self.serve_chunk(from, req).await),
            _ => encode(&ChunkReply::Refused("unknown request".into())),
        }
    }

    async fn serve_chunk(&self, from: u64, req: &[u8]) -> ChunkReply {
        let req: ChunkRequest = match decode(req) {
            Ok(r) => r,
            Err(e) => return ChunkReply::Refused(e.to_string()),
        };
        let desc = {
            let mut out = lock(&self.outbound);
            match out.get_mut(&from) {
                Some(o) if (o.desc.index, o.desc.term) == (req.index, req.term) => {
                    o.last_activity = Instant::now();
                    o.desc.clone()
                }
                _ => return ChunkReply::Refused("no such transfer in progress".into()),
            }
        };
        let path = self.checkpoints.join(desc.file_name());
        let offset = req.offset;
        let read = tokio::task::spawn_blocking(move || read_chunk(&path, offset)).await;
        match read {
            Ok(Ok(data)) => {
                crate::metrics::M
                    .snapshot_bytes_sent
                    .inc_by(data.len() as u64);
                if offset + data.len() as u64 >= desc.bytes {
                    tracing::info!(peer = from, index = desc.index, "snapshot fully sent");
                }
                ChunkReply::Data(data)
            }
            Ok(Err(e)) => ChunkReply::Refused(e.to_string()),
            Err(e) => ChunkReply::Refused(e.to_string()),
        }
    }

    // ---------------------------------------------------------------- follower side

    /// Takes a `MsgSnapshot` from `from`: steps it at once if its file is already staged,
    /// otherwise fetches the file first (unless a fetch is already running, then drops it:
    /// the leader's watchdog retries).
    pub fn offer(self: &Arc<Self>, from: u64, m: Message) {
        let desc = match SnapshotDescriptor::decode(m.get_snapshot().get_data()) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(from, error = %e, "dropped a snapshot message");
                return;
            }
        };
        let id = (desc.index, desc.term);
        let applied = self.driver.get().map_or(0, |d| d.status().applied_index);
        if desc.index <= applied || self.staging.join(desc.file_name()).exists() {
            // Already installed (raft answers with where we are) or already staged.
            let me = self.clone();
            tokio::spawn(async move { me.step_and_confirm(from, m).await });
            return;
        }
        {
            let mut inbound = lock(&self.inbound);
            if inbound.is_some() {
                tracing::debug!(from, index = desc.index, "snapshot fetch already running");
                return;
            }
            *inbound = Some(id);
        }
        let me = self.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let result = if desc.bytes > MAX_STAGING_BYTES {
                Err(TransferError::Refused(format!(
                    "snapshot of {} bytes is over the {MAX_STAGING_BYTES}-byte staging limit",
                    desc.bytes
                )))
            } else {
                me.fetch(from, &desc).await
            };
            *lock(&me.inbound) = None;
            match result {
                Ok(()) => {
                    let secs = started.elapsed().as_secs_f64();
                    tracing::info!(
                        from,
                        index = desc.index,
                        bytes = desc.bytes,
                        seconds = secs,
                        mib_per_s = desc.bytes as f64 / 1048576.0 / secs.max(1e-9),
                        "snapshot received and verified; installing"
                    );
                    me.step_and_confirm(from, m).await;
                }
                Err(e) => {
                    tracing::warn!(from, index = desc.index, error = %e, "snapshot fetch failed; the leader retries");
                    let _ = me
                        .transport
                        .request(from, vec![REQ_ABORT], CHUNK_TIMEOUT)
                        .await;
                }
            }
        });
    }

    /// Hands the snapshot message to the driver, then tells the leader (see module doc).
    async fn step_and_confirm(&self, from: u64, m: Message) {
        let Some(d) = self.driver.get().cloned() else {
            return;
        };
        if d.step(m, None).await.is_ok() {
            let _ = self
                .transport
                .request(from, vec![REQ_DONE], CHUNK_TIMEOUT)
                .await;
        }
    }

    /// Pulls the file chunk by chunk into staging and verifies it against `desc`.
    /// [`CHUNKS_IN_FLIGHT`] requests are outstanding at a time, answered in order.
    async fn fetch(&self, from: u64, desc: &SnapshotDescriptor) -> Result<(), TransferError> {
        use futures::StreamExt as _;
        let staging = self.staging.clone();
        let name = desc.file_name();
        let mut writer = blocking(move || SnapWriter::create(&staging, &name)).await?;
        let offsets = (0..desc.bytes).step_by(SNAPSHOT_CHUNK_BYTES);
        let mut chunks = futures::stream::iter(offsets)
            .map(|offset| self.chunk(from, desc, offset))
            .buffered(CHUNKS_IN_FLIGHT);
        while let Some(next) = chunks.next().await {
            let expected = (desc.bytes - writer.bytes()).min(SNAPSHOT_CHUNK_BYTES as u64);
            let checked = match next {
                Ok(d) if d.len() as u64 == expected => Ok(d),
                Ok(d) => Err(TransferError::Refused(format!(
                    "chunk of {} bytes where {expected} were expected",
                    d.len()
                ))),
                Err(e) => Err(e),
            };
            let data = match checked {
                Ok(d) => d,
                Err(e) => {
                    blocking(move || {
                        writer.discard();
                        Ok(())
                    })
                    .await?;
                    return Err(e);
                }
            };
            writer = blocking(move || writer.raw(&data).map(|_| writer)).await?;
        }
        let (name, expect) = (desc.file_name(), Some((desc.bytes, desc.sha256)));
        blocking(move || writer.finish_expecting(&name, expect)).await?;
        Ok(())
    }

    /// One chunk at `offset`, retried up to [`CHUNK_ATTEMPTS`] times.
    async fn chunk(
        &self,
        from: u64,
        desc: &SnapshotDescriptor,
        offset: u64,
    ) -> Result<Vec<u8>, TransferError> {
        let mut body = vec![REQ_CHUNK];
        body.extend(encode(&ChunkRequest {
            index: desc.index,
            term: desc.term,
            offset,
        }));
        let mut last = None;
        for _ in 0..CHUNK_ATTEMPTS {
            match self
                .transport
                .request(from, body.clone(), CHUNK_TIMEOUT)
                .await
            {
                Ok(reply) => match decode::<ChunkReply>(&reply)? {
                    ChunkReply::Data(d) if !d.is_empty() => return Ok(d),
                    ChunkReply::Data(_) => {
                        return Err(TransferError::Refused("empty chunk".into()))
                    }
                    ChunkReply::Refused(why) => return Err(TransferError::Refused(why)),
                },
                Err(e) => last = Some(e),
            }
        }
        Err(last
            .map(TransferError::Transport)
            .unwrap_or_else(|| TransferError::Refused("no attempt made".into())))
    }
}

/// Reads up to [`SNAPSHOT_CHUNK_BYTES`] of `path` from `offset`.
fn read_chunk(path: &Path, offset: u64) -> std::io::Result<Vec<u8>> {
    let mut f = std::fs::File::open(path)?;
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::with_capacity(SNAPSHOT_CHUNK_BYTES);
    f.take(SNAPSHOT_CHUNK_BYTES as u64).read_to_end(&mut buf)?;
    Ok(buf)
}

/// Runs blocking file work off the tokio workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, TransferError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => Ok(r?),
        Err(e) => Err(TransferError::Join(e.to_string())),
    }
}

/// True for a Raft message this module must see before the driver does.
pub fn is_snapshot_message(m: &Message) -> bool {
    m.get_msg_type() == MessageType::MsgSnapshot
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Chunks cover a file exactly: concatenated reads at successive offsets give it back.
    #[test]
    fn chunks_reassemble_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..SNAPSHOT_CHUNK_BYTES * 2 + 123)
            .map(|i| (i % 251) as u8)
            .collect();
        std::fs::write(&path, &data).unwrap();
        let mut back = Vec::new();
        loop {
            let c = read_chunk(&path, back.len() as u64).unwrap();
            if c.is_empty() {
                break;
            }
            assert!(c.len() <= SNAPSHOT_CHUNK_BYTES);
            back.extend(c);
        }
        assert_eq!(back, data);
    }

    /// Received bytes that do not hash to the descriptor's checksum are not staged.
    #[test]
    fn a_mismatching_transfer_is_not_staged() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = SnapWriter::create(dir.path(), "a").unwrap();
        w.raw(b"hello").unwrap();
        assert!(w.finish_expecting("a.snap", Some((5, [0; 32]))).is_err());
        assert!(!dir.path().join("a.snap").exists());
        assert!(!dir.path().join("a.part").exists());
        let mut w = SnapWriter::create(dir.path(), "b").unwrap();
        w.raw(b"hello").unwrap();
        let sha = ring::digest::digest(&ring::digest::SHA256, b"hello");
        let mut want = [0u8; 32];
        want.copy_from_slice(sha.as_ref());
        w.finish_expecting("b.snap", Some((5, want))).unwrap();
        assert!(dir.path().join("b.snap").exists());
    }

    /// Requests and replies survive their encoding; requests are told apart from forwards.
    #[test]
    fn protocol_round_trip() {
        let mut body = vec![REQ_CHUNK];
        body.extend(encode(&ChunkRequest {
            index: 5,
            term: 2,
            offset: 99,
        }));
        assert!(Snapshots::is_snapshot_request(&body));
        assert!(!Snapshots::is_snapshot_request(&[1, 2, 3]));
        let r: ChunkRequest = decode(&body[1..]).unwrap();
        assert_eq!((r.index, r.term, r.offset), (5, 2, 99));
        match decode::<ChunkReply>(&encode(&ChunkReply::Data(vec![1, 2]))).unwrap() {
            ChunkReply::Data(d) => assert_eq!(d, vec![1, 2]),
            other => panic!("{other:?}"),
        }
    }
}
