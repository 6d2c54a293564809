//! The durable queue's deterministic part: queue configuration, messages, leases, dedup and
//! dead letters, as applied from the Raft log.
//!
//! Everything here is a pure function of (stored state, command): times, ids, lock tokens and
//! lease deadlines arrive stamped in the command. Every change of one command is one batch, so
//! a message, its indexes and its queue's counters never disagree.
//!
//! Layout (after the store's `s` prefix; queue names never contain NUL):
//! - `qc/<queue>` -> [`QueueEntry`] (configuration), `qs/<queue>` -> [`QueueStats`];
//! - `qg/<queue>\0<seq>` -> the records of one enqueue command's new messages (two or more),
//!   whose first sequence is `seq`, as one value in the store's value log: enqueueing a
//!   command's messages is one store write, not one per message (see [`GroupValue`]);
//! - `qu/<queue>\0<seq>` -> which messages of group `seq` have left it (finished: completed,
//!   expired, dead-lettered), one bit each; absent while none has. One small key per group,
//!   so the finishes of a group's messages within one write-out reach sled as one write;
//! - `qn/<queue>\0<seq>` -> a message's own record: its [`MessageMeta`] and its [`Lease`] while
//!   a consumer holds it (records written before the value log may hold a small body). A
//!   message of a group gets one once it changes (leased, deferred); it overrides the group's
//!   copy. The last message to leave a group deletes the group, its blob and its `qu` bits;
//! - `qb/<queue>\0<seq>` -> the body, live or dead, written once: the store keeps these values
//!   in its value log (`store::vlog`), so leases and settles rewrite only the small record;
//!   `qb/<queue>\0<seq>+` holds the bodies of a group (see [`BlobRef`]);
//! - `qx/<queue>\0<seq>` -> [`MessageMeta`] of a dead letter;
//! - `qd/<queue>\0<dedup key>` -> [`DedupEntry`];
//! - `qf/<index><part>` -> [`TraceBatch`], the retained traces of the messages that the
//!   command at Raft index `index` finished, up to [`MAX_TRACES_PER_RECORD`] per part (one
//!   record per command, not one per message: a drain finishes hundreds per command, and two
//!   store writes per message were a quarter of them);
//! - `qh/<id>` -> [`FinishedTrace`], one retained trace, as written before the batches (read
//!   and swept, no longer written).
//!
//! Everything else a command needs to find its messages (the ready order by visibility time,
//! ids, per-key ordering, and when dedup entries, leases and traces expire) is derived from
//! those records and kept in memory ([`index`]): rebuilt when the node opens and after a
//! snapshot, updated by apply. Leasing a message moves its ready entry to the lease deadline,
//! so an expired lock makes the message visible again with no extra work, and "head" is the
//! first entries up to `now`. A message's life costs about two store writes of its own (lease,
//! finish) and shares of its command's group, blob and trace record, where one key per index
//! used to cost twenty. (The group's place table is in memory too, rebuilt with the rest.)
//!
//! All integers in keys are big-endian so key order is numeric order.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{decode, encode};
use crate::store::{keys, KvPair, Store, StoreError, WriteBatch};

pub mod index;
use index::RecordAt;
use index::TraceRecord;
pub use index::{Indexes, SharedIndex};

/// Largest message body (bytes). Ingress answers 413 beyond it.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// Most application headers kept per message.
pub const MAX_HEADERS: usize = 64;
/// Most bytes of kept header names and values per message.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Longest dedup key (bytes).
pub const MAX_DEDUP_KEY_BYTES: usize = 512;
/// Longest ordering key (bytes).
pub const MAX_ORDERING_KEY_BYTES: usize = 256;
/// Most messages in one batch request (one Raft command).
pub const MAX_BATCH_MESSAGES: usize = 1_000;
/// Most bytes of bodies in one batch request (the whole command must stay under the
/// 24 MiB Raft proposal limit).
pub const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;
/// Longest dedup window (7 days, ms).
pub const MAX_DEDUP_WINDOW_MS: u64 = 7 * 24 * 3600 * 1000;
/// Longest lock (1 hour, ms) and shortest (1 s).
pub const MAX_LOCK_MS: u64 = 3600 * 1000;
pub const MIN_LOCK_MS: u64 = 1000;
/// Ready-index entries one receive may inspect (expired or over-delivered ones it moves away).
pub const RECEIVE_SCAN_LIMIT: usize = 64;
/// Index keys one sweep command may inspect.
pub const SWEEP_LIMIT: usize = 1_000;
/// Most messages one batch receive may lease.
pub const MAX_RECEIVE_MESSAGES: usize = 32;
/// Most messages one batch settle may name.
pub const MAX_SETTLE_ITEMS: usize = 256;
/// Keys one queue-delete or dead-letter purge/redrive command may touch per range.
pub const CHUNK_LIMIT: usize = 1_000;

pub const DEFAULT_MAX_DELIVERIES: u32 = 10;
pub const DEFAULT_LOCK_MS: u64 = 60_000;
pub const DEFAULT_DEDUP_WINDOW_MS: u64 = 10 * 60 * 1000;
/// Default cap on stored messages (live + dead letters) per queue.
pub const DEFAULT_MAX_MESSAGES: u64 = 100_000;
/// Default cap on stored body bytes per queue (1 GiB, the most a queue may be configured with;
/// snapshots are streamed in chunks, so the state is not bounded by a transport frame).
pub const DEFAULT_MAX_BYTES: u64 = 1024 * 1024 * 1024;
/// Default time a tenant must have been unhealthy before a message whose last attempt there
/// had an uncertain outcome may move to another tenant (30 s).
pub const DEFAULT_FAILOVER_AFTER_MS: u64 = 30_000;
/// Attempts kept per message for its trace (the oldest are dropped; `attempts_total` counts all).
pub const MAX_TRACE_ATTEMPTS: usize = 16;
/// How long the trace of a completed or expired message is kept (1 hour).
pub const TRACE_RETENTION_MS: u64 = 3_600_000;
/// Most traces of finished messages kept cluster-wide; the sweep removes the oldest beyond it.
pub const MAX_RETAINED_TRACES: u64 = 100_000;
/// Traces in one trace record (a command that finishes more writes several): bounds a
/// record, and the decode a trace lookup does, at about 4.5 MiB even when every trace holds
/// 16 KiB of headers and 16 attempts; typical traces (~400 bytes) make ~100 KiB. A drain's
/// commands record tens to hundreds of outcomes, so most write one record.
pub const MAX_TRACES_PER_RECORD: usize = 256;
/// Bytes of the body kept with a dead letter as its excerpt.
pub const DEAD_EXCERPT_BYTES: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Delivery {
    Pull,
    /// Push to the tenant pool at `path` (e.g. `/http/orders`) by the leader's dispatcher.
    Push {
        path: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DedupKey {
    None,
    Header { name: String },
    JsonPointer { pointer: String },
    XmlPath { path: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    pub initial_ms: u64,
    pub max_ms: u64,
    /// Backoff multiplier in hundredths (200 = x2).
    pub multiplier_pct: u32,
    /// Jitter as a percentage of the delay (0..=100).
    pub jitter_pct: u32,
    pub honour_retry_after: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial_ms: 1_000,
            max_ms: 300_000,
            multiplier_pct: 200,
            jitter_pct: 20,
            honour_retry_after: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ordering {
    None,
    PerKey,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueConfig {
    pub delivery: Delivery,
    pub max_deliveries: u32,
    pub lock_ms: u64,
    pub dedup_window_ms: u64,
    pub dedup_key: DedupKey,
    pub retry: RetryPolicy,
    pub ordering: Ordering,
    /// Message time to live (ms); `None` keeps messages until consumed.
    pub ttl_ms: Option<u64>,
    pub max_messages: u64,
    pub max_bytes: u64,
    /// Push only: how long the tenant of an uncertain attempt must have been unhealthy before
    /// the message may go to another tenant (until then it waits for that tenant).
    pub failover_after_ms: u64,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            delivery: Delivery::Pull,
            max_deliveries: DEFAULT_MAX_DELIVERIES,
            lock_ms: DEFAULT_LOCK_MS,
            dedup_window_ms: DEFAULT_DEDUP_WINDOW_MS,
            dedup_key: DedupKey::Header {
                name: "message-id".into(),
            },
            retry: RetryPolicy::default(),
            ordering: Ordering::None,
            ttl_ms: None,
            max_messages: DEFAULT_MAX_MESSAGES,
            max_bytes: DEFAULT_MAX_BYTES,
            failover_after_ms: DEFAULT_FAILOVER_AFTER_MS,
        }
    }
}

/// A stored queue: its configuration and revision. `deleting` queues accept nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueEntry {
    pub config: QueueConfig,
    pub revision: u64,
    pub created_index: u64,
    pub updated_ms: u64,
    pub deleting: bool,
}

/// Per-queue counters, updated in the same batch as the messages they count.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStats {
    pub next_seq: u64,
    /// Live messages (ready or in flight), and their body bytes.
    pub depth: u64,
    pub bytes: u64,
    pub in_flight: u64,
    pub dead_letters: u64,
    pub dead_bytes: u64,
    pub enqueued_total: u64,
    pub duplicates_total: u64,
    pub completed_total: u64,
    pub expired_total: u64,
    pub dead_lettered_total: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageMeta {
    pub id: String,
    pub sequence: u64,
    pub enqueued_ms: u64,
    pub expires_at_ms: Option<u64>,
    pub visible_at_ms: u64,
    pub delivery_count: u32,
    pub dedup_key: Option<String>,
    pub ordering_key: Option<String>,
    pub content_type: Option<String>,
    pub headers: Vec<(String, String)>,
    pub body_len: u64,
    /// Why it was dead-lettered (dead letters only).
    pub dead_reason: Option<String>,
    /// The start of the body (dead letters only), for listings.
    pub dead_excerpt: Option<String>,
    /// The last [`MAX_TRACE_ATTEMPTS`] deliveries, oldest first.
    pub attempts: Vec<Attempt>,
    /// Every delivery attempt, counted or not.
    pub attempts_total: u32,
    /// The tenant (push) or consumer (pull) of the latest attempt.
    pub last_tenant: Option<String>,
    /// The latest attempt's outcome is unknown (in flight, timed out, lost with a leader):
    /// a push redelivery then goes to `last_tenant` so its idempotent process call can drop
    /// a duplicate.
    pub uncertain: bool,
    /// The latest HTTP status a tenant answered.
    pub last_status: Option<u16>,
}

/// One delivery of a message, for its trace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub at_ms: u64,
    /// Tenant (push) or consumer (pull).
    pub tenant: String,
    pub status: Option<u16>,
    pub error: Option<String>,
    pub latency_ms: Option<u64>,
    /// Counted toward `max_deliveries` (tenant trouble is not).
    pub counted: bool,
    /// Why this tenant was chosen when it was not the obvious one (failover).
    pub note: Option<String>,
}

/// A leader's choice: lease message `seq` to `tenant` under `lock_token`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushLease {
    pub seq: u64,
    pub lock_token: String,
    pub tenant: String,
    pub note: Option<String>,
}

/// Holds message `seq` back until `until_ms` (its sticky tenant cannot take it yet).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Defer {
    pub seq: u64,
    pub until_ms: u64,
}

/// How a push attempt ended, decided by the dispatcher (backoff and jitter stamped in).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    /// 2xx: the message is done.
    Completed,
    /// Try again at `visible_at_ms`. `counted`: the attempt counts toward `max_deliveries`
    /// (past it the message is dead-lettered). `uncertain`: the tenant may have processed it.
    Retry {
        visible_at_ms: u64,
        counted: bool,
        uncertain: bool,
    },
}

/// The outcome of one push attempt, reported by the dispatcher.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryResult {
    pub seq: u64,
    pub lock_token: String,
    pub tenant: String,
    pub status: Option<u16>,
    pub error: Option<String>,
    pub latency_ms: u64,
    pub verdict: Verdict,
}

/// How a message's life ended, kept for [`TRACE_RETENTION_MS`] after it left the queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Final {
    Completed,
    Expired,
}

/// The retained trace of a finished message (in a [`TraceBatch`], or alone at `qh/<id>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinishedTrace {
    pub queue: String,
    pub meta: MessageMeta,
    pub outcome: Final,
    pub finished_ms: u64,
}

/// The retained traces of the messages one command finished (`qf/<index><part>`), kept until
/// `until_ms` and swept whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceBatch {
    pub until_ms: u64,
    pub traces: Vec<FinishedTrace>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub lock_token: String,
    pub deadline_ms: u64,
    pub consumer: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DedupEntry {
    pub id: String,
    pub sequence: u64,
    pub expires_at_ms: u64,
}

/// One message of an enqueue command, with its id already stamped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewMessage {
    pub id: String,
    pub dedup_key: Option<String>,
    pub ordering_key: Option<String>,
    pub content_type: Option<String>,
    pub headers: Vec<(String, String)>,
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enqueued {
    pub id: String,
    pub sequence: u64,
    pub duplicate: bool,
}

/// A message handed to a pull consumer, with its lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Received {
    pub meta: MessageMeta,
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    pub lock_token: String,
    pub locked_until_ms: u64,
}

/// What a lock holder does with its message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Settle {
    Complete,
    Abandon,
    DeadLetter { reason: String },
    Renew { lock_ms: u64 },
}

/// Answers of queue commands (wrapped in [`super::Response::Queue`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueueResponse {
    Put {
        revision: u64,
        created: bool,
    },
    /// `done` false: more keys remain; propose the delete again.
    Deleted {
        existed: bool,
        done: bool,
    },
    NotFound,
    /// The queue is being deleted.
    Deleting,
    Enqueued {
        results: Vec<Enqueued>,
    },
    /// Over a cap: nothing was stored.
    Full {
        reason: String,
    },
    Received {
        message: Option<Box<Received>>,
    },
    Settled {
        locked_until_ms: Option<u64>,
    },
    /// The message is gone, or its lock expired or belongs to another token.
    LockLost,
    MessageNotFound,
    Swept {
        dedup_expired: u64,
        leases_expired: u64,
    },
    /// Dead letters moved back (redrive) or removed (purge); `done` false: more remain.
    DeadLetters {
        count: u64,
        done: bool,
    },
    /// The answer to a dispatch: the messages now leased, WITHOUT their bodies, and how many
    /// were deferred; the rest of the asked-for leases were no longer available. Every node
    /// applies the dispatch but only the leader's dispatcher reads the answer, so it reads
    /// the bodies itself ([`message_body`]: a body never changes once written); reading them
    /// in apply cost each follower a value-log read per delivery for nothing.
    Dispatched {
        leased: Vec<Received>,
        deferred: u32,
    },
    /// The answer to delivery results. `lost`: results whose lease had moved on.
    Recorded {
        completed: u32,
        retried: u32,
        dead_lettered: u32,
        lost: u32,
    },
    /// The answer to a batch receive: the messages leased, in queue order (maybe none).
    ReceivedMany {
        messages: Vec<Received>,
    },
    /// The answer to a batch settle: one answer per item, in order (`Settled`, `LockLost` or
    /// `MessageNotFound`).
    SettledMany {
        results: Vec<QueueResponse>,
    },
}

/// A live message as stored at `qn/<queue>\0<seq>`: its metadata and its lease while a tenant
/// or consumer holds it. Its body lives at `qb` (in the store's value log: in its command's
/// blob, or at its own key), so a lease never rewrites it; `body` is `Some` only in records
/// written before that, which kept bodies of up to [`INLINE_BODY_BYTES`] inline. One record
/// per message, so a message's life is a handful of store writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Stored {
    meta: MessageMeta,
    lease: Option<Lease>,
    #[serde(with = "serde_bytes")]
    body: Option<Vec<u8>>,
    /// Set when the body sits in its enqueue command's blob rather than at its own `qb` key.
    blob: Option<BlobRef>,
}

/// A record as written before blobs (2026-12-04): the same fields without `blob`.
#[derive(Deserialize)]
struct StoredBeforeBlobs {
    meta: MessageMeta,
    lease: Option<Lease>,
    #[serde(with = "serde_bytes")]
    body: Option<Vec<u8>>,
}

impl Stored {
    /// Decodes a record of this layout or of the one before blobs. An older record ends where
    /// `blob` would start, so it never decodes as the new layout by mistake.
    fn decode(v: &[u8]) -> Result<Stored, crate::state::CodecError> {
        decode::<Stored>(v).or_else(|e| {
            let old: StoredBeforeBlobs = decode(v).map_err(|_| e)?;
            Ok(Stored {
                meta: old.meta,
                lease: old.lease,
                body: old.body,
                blob: None,
            })
        })
    }
}

/// Where a body sits in a blob: `qb/<queue>\0<seq>+` holds the bodies of the new messages of
/// one enqueue command, concatenated, and is deleted with the last of them. One store write
/// then carries a whole command's bodies: each key written to sled costs about as much as
/// the message around it (a 16-entry leaf splits every eight appends), and separate body
/// keys were half of a message's sled writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct BlobRef {
    /// The blob's key: the sequence of the command's first new message.
    seq: u64,
    /// Where this body starts in the blob (it runs for the message's `body_len`).
    offset: u64,
    /// CRC-32 of this body: the value log checks whole values, and a body is read alone.
    crc: u32,
}

/// Bodies up to this size lived inside the message record in the first two layouts; new
/// messages keep every body at `qb`. Still read, to upgrade old records.
pub const INLINE_BODY_BYTES: usize = 8 * 1024;
/// Keys read per step while rebuilding the indexes or migrating an old layout.
const LOAD_CHUNK: usize = 4_096;
/// Groups read per step while rebuilding the indexes: a group holds a command's records
/// (a batch request's up to [`MAX_BATCH_MESSAGES`]), each with up to [`MAX_HEADER_BYTES`] of
/// headers.
const GROUP_LOAD_CHUNK: usize = 16;
/// Groups one queue-delete command may remove (each is read whole on the way).
const GROUP_DELETE_LIMIT: usize = 64;

/// The records of one enqueue command's new messages, as stored at `qg/<queue>\0<first seq>`:
/// `count u32 LE`, `count` record lengths (u32 LE), then the encoded [`Stored`] records back to
/// back, in sequence order. The indexes keep where each record lies ([`RecordAt`]), so a read
/// takes one record out of the value. Why: one store write per command where there was one
/// per message; each key written to sled costs about as much as the message itself, and those
/// writes were the largest part of an enqueue's CPU on every node.
struct GroupValue;

impl GroupValue {
    /// The value holding `records`, and where each lies in it.
    fn encode(records: &[Vec<u8>]) -> (Vec<u8>, Vec<RecordAt>) {
        let head = 4 + 4 * records.len();
        let body: usize = records.iter().map(Vec::len).sum();
        let mut v = Vec::with_capacity(head + body);
        v.extend_from_slice(&(records.len() as u32).to_le_bytes());
        for r in records {
            v.extend_from_slice(&(r.len() as u32).to_le_bytes());
        }
        let mut at = Vec::with_capacity(records.len());
        for r in records {
            at.push(RecordAt {
                offset: v.len() as u32,
                len: r.len() as u32,
                crc: crc32fast::hash(r),
            });
            v.extend_from_slice(r);
        }
        (v, at)
    }

    /// Where each record of group value `v` lies, with its bytes.
    fn decode(v: &[u8]) -> Result<Vec<(RecordAt, &[u8])>, StoreError> {
        let bad = || {
            corrupt(
                "message group",
                format!("malformed value of {} bytes", v.len()),
            )
        };
        let u32_at = |i: usize| -> Result<u32, StoreError> {
            let b = v.get(i..i + 4).ok_or_else(bad)?;
            Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        let count = u32_at(0)? as usize;
        let mut offset = count
            .checked_mul(4)
            .and_then(|n| n.checked_add(4))
            .filter(|head| *head <= v.len())
            .ok_or_else(bad)?;
        let mut out = Vec::with_capacity(count);
        for i in 0..count {
            let len = u32_at(4 + 4 * i)? as usize;
            let bytes = v.get(offset..offset + len).ok_or_else(bad)?;
            let at = RecordAt {
                offset: offset as u32,
                len: len as u32,
                crc: crc32fast::hash(bytes),
            };
            out.push((at, bytes));
            offset += len;
        }
        Ok(out)
    }
}

// ---------- keys ----------

fn k(kind: &str, queue: &str) -> Vec<u8> {
    keys::state(format!("q{kind}/{queue}").as_bytes())
}

fn qk(kind: &str, queue: &str, rest: &[u8]) -> Vec<u8> {
    let mut key = k(kind, queue);
    key.push(0);
    key.extend_from_slice(rest);
    key
}

fn seq_key(kind: &str, queue: &str, seq: u64) -> Vec<u8> {
    qk(kind, queue, &seq.to_be_bytes())
}

/// `qg/<queue>\0<seq>`: the group of the command whose first new message is `seq`.
fn group_key(queue: &str, seq: u64) -> Vec<u8> {
    seq_key("g", queue, seq)
}

/// `qu/<queue>\0<seq>`: which messages have left group `seq`.
fn left_key(queue: &str, seq: u64) -> Vec<u8> {
    seq_key("u", queue, seq)
}

/// `qb/<queue>\0<seq>+`: the blob of the command whose first new message is `seq`. It lives
/// beside the single bodies (so the store keeps it in its value log) and never collides with
/// one: a single body's key ends at the sequence.
fn blob_key(queue: &str, seq: u64) -> Vec<u8> {
    let mut key = seq_key("b", queue, seq);
    key.push(b'+');
    key
}

/// The body of record `s`, read through `batch`: kept inline (old records), in its command's
/// blob, or at its own key.
fn read_body(
    kv: &dyn Store,
    batch: &WriteBatch,
    queue: &str,
    s: &Stored,
) -> Result<Vec<u8>, StoreError> {
    if let Some(b) = &s.body {
        return Ok(b.clone());
    }
    let Some(r) = s.blob else {
        return Ok(batch
            .read_through(kv, &seq_key("b", queue, s.meta.sequence))?
            .unwrap_or_default());
    };
    let (offset, len) = (r.offset as usize, s.meta.body_len as usize);
    let body = batch
        .read_range_through(kv, &blob_key(queue, r.seq), offset, len)?
        .ok_or_else(|| corrupt("message body", format!("blob {} is missing", r.seq)))?;
    if crc32fast::hash(&body) != r.crc {
        return Err(corrupt(
            "message body",
            format!(
                "body of {} in blob {} fails its checksum",
                s.meta.sequence, r.seq
            ),
        ));
    }
    Ok(body)
}

/// `qh/<id>`: one retained trace as written before the batches (ids are unique across queues).
fn trace_key(id: &str) -> Vec<u8> {
    keys::state(format!("qh/{id}").as_bytes())
}

/// `qf/<index><part>`: part `part` of the traces finished by the command at Raft index `index`.
fn trace_batch_key(index: u64, part: u32) -> Vec<u8> {
    let mut key = keys::state(b"qf/");
    key.extend_from_slice(&index.to_be_bytes());
    key.extend_from_slice(&part.to_be_bytes());
    key
}

fn trace_record_key(r: &TraceRecord) -> Vec<u8> {
    match r {
        TraceRecord::Batch { index, part } => trace_batch_key(*index, *part),
        TraceRecord::Single(id) => trace_key(id),
    }
}

/// Splits the `<queue>\0<rest>` after a kind prefix.
fn split_queue(rest: &[u8]) -> Option<(&str, &[u8])> {
    let nul = rest.iter().position(|b| *b == 0)?;
    Some((std::str::from_utf8(&rest[..nul]).ok()?, &rest[nul + 1..]))
}

/// Splits the `<queue>\0<seq>` after a kind prefix.
fn split_seq(rest: &[u8]) -> Option<(&str, u64)> {
    split_queue(rest).and_then(|(q, s)| Some((q, be_u64(s)?)))
}

/// Appends `a` to the message's trace, keeping the newest [`MAX_TRACE_ATTEMPTS`].
fn push_attempt(meta: &mut MessageMeta, a: Attempt) {
    if meta.attempts.len() >= MAX_TRACE_ATTEMPTS {
        meta.attempts.remove(0);
    }
    meta.attempts.push(a);
}

/// What a lease grants: the message, held by `holder` until `deadline_ms`.
struct Grant {
    lock_token: String,
    deadline_ms: u64,
    holder: String,
}

fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    end.push(0xff);
    end
}

fn be_u64(b: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(b).ok().map(u64::from_be_bytes)
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

fn get<T: serde::de::DeserializeOwned>(
    kv: &dyn Store,
    batch: &WriteBatch,
    key: &[u8],
    what: &str,
) -> Result<Option<T>, StoreError> {
    match batch.read_through(kv, key)? {
        Some(b) => decode(&b).map(Some).map_err(|e| corrupt(what, e)),
        None => Ok(None),
    }
}

fn decode_record(v: &[u8]) -> Result<Stored, StoreError> {
    Stored::decode(v).map_err(|e| corrupt("message", e))
}

/// Live message `seq` of `queue`: its own record, or else its group's copy, which `group`
/// locates (from the indexes; called only when needed, so a handler takes the read lock
/// only then). `None`: finished, never stored, or not stored yet (the indexes run ahead of
/// the store while apply writes).
fn get_stored(
    kv: &dyn Store,
    batch: &WriteBatch,
    queue: &str,
    seq: u64,
    group: impl FnOnce() -> Option<(u64, RecordAt)>,
) -> Result<Option<Stored>, StoreError> {
    if let Some(v) = batch.read_through(kv, &seq_key("n", queue, seq))? {
        return decode_record(&v).map(Some);
    }
    let Some((first, at)) = group() else {
        return Ok(None);
    };
    let key = group_key(queue, first);
    let (offset, len) = (at.offset as usize, at.len as usize);
    let Some(v) = batch.read_range_through(kv, &key, offset, len)? else {
        return Ok(None);
    };
    if crc32fast::hash(&v) != at.crc {
        return Err(corrupt(
            "message",
            format!("record of {seq} in group {first} fails its checksum"),
        ));
    }
    decode_record(&v).map(Some)
}

/// Pairs with `from <= key < to` as they will be once `batch` is written, at most `limit`.
fn scan_through(
    kv: &dyn Store,
    batch: &WriteBatch,
    from: &[u8],
    to: &[u8],
    limit: usize,
) -> Result<Vec<KvPair>, StoreError> {
    let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let mut touched = 0usize;
    for (key, _) in &batch.ops {
        if key.as_slice() >= from && key.as_slice() < to {
            touched += 1;
            if let Some(Some(v)) = batch.get(key) {
                merged.insert(key.clone(), v.to_vec());
            }
        }
    }
    for (key, v) in kv.range(from, to, limit + touched)? {
        if batch.get(&key).is_none() {
            merged.insert(key, v);
        }
    }
    Ok(merged.into_iter().take(limit).collect())
}

/// Calls `f(key after prefix, value)` for every stored key under `prefix`, [`LOAD_CHUNK`]
/// keys at a time (a backlog of a million messages never sits in one vector).
fn scan_prefix(
    kv: &dyn Store,
    prefix: &[u8],
    f: impl FnMut(&[u8], &[u8]) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    scan_chunked(kv, prefix, LOAD_CHUNK, f)
}

/// [`scan_prefix`], `chunk_len` keys at a time.
fn scan_chunked(
    kv: &dyn Store,
    prefix: &[u8],
    chunk_len: usize,
    mut f: impl FnMut(&[u8], &[u8]) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let end = prefix_end(prefix);
    let mut from = prefix.to_vec();
    loop {
        let chunk = kv.range(&from, &end, chunk_len)?;
        for (key, v) in &chunk {
            f(&key[prefix.len()..], v)?;
        }
        match chunk.last() {
            Some((last, _)) if chunk.len() == chunk_len => {
                from = last.clone();
                from.push(0);
            }
            _ => return Ok(()),
        }
    }
}

// ---------- indexes: rebuild and upgrade ----------

/// Builds the in-memory indexes from the stored records (after upgrading an old layout in
/// place). Run when the node opens and after a snapshot replaced the state.
pub fn load_indexes(kv: &dyn Store) -> Result<Indexes, StoreError> {
    migrate_v1(kv)?;
    let mut ix = Indexes::default();
    // Messages with a record of their own: their group's copy is stale.
    let mut own: HashMap<String, HashSet<u64>> = HashMap::new();
    scan_prefix(kv, &keys::state(b"qn/"), |rest, v| {
        let (queue, seq) = split_seq(rest).ok_or_else(|| corrupt("message key", "malformed"))?;
        own.entry(queue.to_string()).or_default().insert(seq);
        index_live(&mut ix, queue, seq, &decode_record(v)?);
        Ok(())
    })?;
    let mut left: HashMap<(String, u64), Vec<u8>> = HashMap::new();
    scan_prefix(kv, &keys::state(b"qu/"), |rest, v| {
        let (queue, first) = split_seq(rest).ok_or_else(|| corrupt("left key", "malformed"))?;
        left.insert((queue.to_string(), first), v.to_vec());
        Ok(())
    })?;
    scan_chunked(kv, &keys::state(b"qg/"), GROUP_LOAD_CHUNK, |rest, v| {
        let (queue, first) = split_seq(rest).ok_or_else(|| corrupt("group key", "malformed"))?;
        let records = GroupValue::decode(v)?;
        let places = records.iter().map(|(at, _)| *at).collect();
        let group = index::Group::new(places, left.remove(&(queue.to_string(), first)));
        ix.queue_mut(queue).groups.insert(first, group);
        for (seq, (_, record)) in (first..).zip(records) {
            let mine = own.get(queue).is_some_and(|o| o.contains(&seq));
            if mine || ix.group_record(queue, seq).is_none() {
                continue;
            }
            index_live(&mut ix, queue, seq, &decode_record(record)?);
        }
        Ok(())
    })?;
    scan_prefix(kv, &keys::state(b"qc/"), |rest, v| {
        let e: QueueEntry = decode(v).map_err(|e| corrupt("queue config", e))?;
        let name = String::from_utf8_lossy(rest).into_owned();
        ix.configs.insert(name, Arc::new(e));
        Ok(())
    })?;
    scan_prefix(kv, &keys::state(b"qx/"), |rest, v| {
        let (queue, _) = split_queue(rest).ok_or_else(|| corrupt("dead key", "malformed"))?;
        let m: MessageMeta = decode(v).map_err(|e| corrupt("dead letter", e))?;
        ix.queue_mut(queue).ids.insert(m.id, m.sequence);
        Ok(())
    })?;
    scan_prefix(kv, &keys::state(b"qd/"), |rest, v| {
        let (queue, dk) = split_queue(rest).ok_or_else(|| corrupt("dedup key", "malformed"))?;
        let d: DedupEntry = decode(v).map_err(|e| corrupt("dedup entry", e))?;
        let dk = String::from_utf8_lossy(dk).into_owned();
        ix.dedup_expiry
            .insert((d.expires_at_ms, queue.to_string(), dk));
        Ok(())
    })?;
    scan_prefix(kv, &keys::state(b"qf/"), |rest, v| {
        let (index, part) = match rest.split_at_checked(8) {
            Some((i, p)) => (be_u64(i), p.try_into().ok().map(u32::from_be_bytes)),
            None => (None, None),
        };
        let (Some(index), Some(part)) = (index, part) else {
            return Err(corrupt("trace record key", "malformed"));
        };
        let b: TraceBatch = decode(v).map_err(|e| corrupt("trace batch", e))?;
        let ids = b.traces.into_iter().map(|t| t.meta.id).collect();
        ix.add_traces(b.until_ms, TraceRecord::Batch { index, part }, ids);
        Ok(())
    })?;
    scan_prefix(kv, &keys::state(b"qh/"), |rest, v| {
        let t: FinishedTrace = decode(v).map_err(|e| corrupt("trace", e))?;
        let id = String::from_utf8_lossy(rest).into_owned();
        let until = t.finished_ms.saturating_add(TRACE_RETENTION_MS);
        ix.add_traces(until, TraceRecord::Single(id.clone()), vec![id]);
        Ok(())
    })?;
    Ok(ix)
}

/// Adds live message `seq` (record `s`) to the indexes.
fn index_live(ix: &mut Indexes, queue: &str, seq: u64, s: &Stored) {
    ix.add_live(queue, s.meta.visible_at_ms, seq, &s.meta.id);
    if let Some(b) = &s.blob {
        ix.add_blob_refs(queue, b.seq, 1);
    }
    if let Some(okey) = &s.meta.ordering_key {
        ix.add_order(queue, okey, seq);
    }
    if let Some(l) = &s.lease {
        ix.lease_expiry
            .insert((l.deadline_ms, queue.to_string(), seq));
    }
}

/// Upgrades the first layout in place: message metadata at `qm` and its lease at `ql` become
/// one `qn` record (small bodies move into it), and the index keys now kept in memory
/// (`qr`, `ql`, `qt`, `qo`, `qi`, `qe`, `qy`, `qz`) are removed. Every node converts the same
/// state the same way, so replicas stay identical. Each step is one atomic batch, and the
/// steps are idempotent, so a crash mid-way resumes on the next open.
fn migrate_v1(kv: &dyn Store) -> Result<(), StoreError> {
    let old = keys::state(b"qm/");
    if kv.range(&old, &prefix_end(&old), 1)?.is_empty()
        && kv
            .range(&keys::state(b"qr/"), &prefix_end(&keys::state(b"qr/")), 1)?
            .is_empty()
    {
        return Ok(());
    }
    let mut moved = 0u64;
    drain_prefix(kv, &old, |batch, key, v| {
        let (queue, seq) =
            split_seq(&key[old.len()..]).ok_or_else(|| corrupt("v1 message key", "malformed"))?;
        let meta: MessageMeta = decode(v).map_err(|e| corrupt("v1 message", e))?;
        let lease = match kv.get(&seq_key("l", queue, seq))? {
            Some(b) => Some(decode::<Lease>(&b).map_err(|e| corrupt("v1 lease", e))?),
            None => None,
        };
        let bkey = seq_key("b", queue, seq);
        let body = if meta.body_len as usize <= INLINE_BODY_BYTES {
            let b = kv.get(&bkey)?.unwrap_or_default();
            batch.delete(bkey);
            Some(b)
        } else {
            None
        };
        batch.put(
            seq_key("n", queue, seq),
            encode(&Stored {
                meta,
                lease,
                body,
                blob: None,
            }),
        );
        moved += 1;
        Ok(())
    })?;
    for kind in ["r", "l", "t", "o", "i", "e", "y"] {
        let from = keys::state(format!("q{kind}/").as_bytes());
        drain_prefix(kv, &from, |_, _, _| Ok(()))?;
    }
    let mut batch = WriteBatch::default();
    batch.delete(keys::state(b"qz"));
    kv.write(batch)?;
    kv.flush()?;
    tracing::info!(
        messages = moved,
        "queue state upgraded to one record per message"
    );
    Ok(())
}

/// Removes every key under `prefix`, [`LOAD_CHUNK`] at a time, each chunk one atomic batch to
/// which `f` may add writes derived from the removed pair.
fn drain_prefix(
    kv: &dyn Store,
    prefix: &[u8],
    mut f: impl FnMut(&mut WriteBatch, &[u8], &[u8]) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    loop {
        let chunk = kv.range(prefix, &prefix_end(prefix), LOAD_CHUNK)?;
        if chunk.is_empty() {
            return Ok(());
        }
        let mut batch = WriteBatch::default();
        for (key, v) in chunk {
            f(&mut batch, &key, &v)?;
            batch.delete(key);
        }
        kv.write(batch)?;
    }
}

// ---------- reads for handlers ----------

pub fn read_queue(kv: &dyn Store, name: &str) -> Result<Option<QueueEntry>, StoreError> {
    get(kv, &WriteBatch::default(), &k("c", name), "queue config")
}

pub fn read_stats(kv: &dyn Store, name: &str) -> Result<QueueStats, StoreError> {
    Ok(get(kv, &WriteBatch::default(), &k("s", name), "queue stats")?.unwrap_or_default())
}

pub fn list_queues(
    kv: &dyn Store,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<(String, QueueEntry)>, StoreError> {
    super::list_named(kv, &k("c", ""), after, limit, "queue config")
}

/// Under per-key ordering, a message may go out only while it is the oldest live message of
/// its ordering key (an earlier one in flight or waiting blocks it).
fn blocked_by_order(ix: &Indexes, queue: &str, ordering: Ordering, meta: &MessageMeta) -> bool {
    match (ordering, &meta.ordering_key) {
        (Ordering::PerKey, Some(okey)) => !ix.first_of_key(queue, okey, meta.sequence),
        _ => false,
    }
}

/// True when a receive at `now_ms` would make progress (a visible message, an expired lock, or
/// something to expire or dead-letter): a cheap local read, so long-polling consumers propose
/// only when there is work. Under per-key ordering, messages blocked by an older one of their
/// key do not count.
pub fn has_visible(
    kv: &dyn Store,
    ix: &SharedIndex,
    queue: &str,
    cfg: &QueueConfig,
    now_ms: u64,
) -> Result<bool, StoreError> {
    let limit = match cfg.ordering {
        Ordering::None => 1,
        Ordering::PerKey => RECEIVE_SCAN_LIMIT,
    };
    let candidates = ix.read().visible(queue, now_ms, limit);
    if cfg.ordering == Ordering::None {
        return Ok(!candidates.is_empty());
    }
    let b = WriteBatch::default();
    for (_, seq) in candidates {
        // Not stored yet (apply is mid-batch) or just removed: let a receive find out.
        let group = || ix.read().group_record(queue, seq);
        let Some(s) = get_stored(kv, &b, queue, seq, group)? else {
            return Ok(true);
        };
        if !blocked_by_order(&ix.read(), queue, cfg.ordering, &s.meta) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Up to `limit` messages of `queue` visible at `now_ms` that a dispatcher may lease, oldest
/// first, skipping those `skip` names (already being dispatched) and, under per-key ordering,
/// those an older message of their key blocks. Inspects at most `4 * limit` index entries.
#[allow(clippy::too_many_arguments)]
pub fn visible_candidates(
    kv: &dyn Store,
    ix: &SharedIndex,
    queue: &str,
    cfg: &QueueConfig,
    now_ms: u64,
    limit: usize,
    skipped: usize,
    skip: impl Fn(u64) -> bool,
) -> Result<Vec<MessageMeta>, StoreError> {
    // `skipped` (how many `skip` may refuse) widens the scan past them.
    let scan = limit.saturating_mul(4).saturating_add(skipped);
    let candidates = ix.read().visible(queue, now_ms, scan);
    let b = WriteBatch::default();
    let mut out = Vec::new();
    for (_, seq) in candidates {
        if skip(seq) {
            continue;
        }
        let group = || ix.read().group_record(queue, seq);
        let Some(s) = get_stored(kv, &b, queue, seq, group)? else {
            continue;
        };
        if !blocked_by_order(&ix.read(), queue, cfg.ordering, &s.meta) {
            out.push(s.meta);
            if out.len() >= limit {
                break;
            }
        }
    }
    Ok(out)
}

/// The body of live message `seq` of `queue`, as this node has applied it (`None` once the
/// message is gone). For the push dispatcher, which reads the bodies of the messages its
/// dispatch leased (their records were just written, so the first read is from memory).
pub fn message_body(
    kv: &dyn Store,
    ix: &SharedIndex,
    queue: &str,
    seq: u64,
) -> Result<Option<Vec<u8>>, StoreError> {
    let b = WriteBatch::default();
    let group = || ix.read().group_record(queue, seq);
    let Some(s) = get_stored(kv, &b, queue, seq, group)? else {
        return Ok(None);
    };
    read_body(kv, &b, queue, &s).map(Some)
}

/// Where a message is now, for its trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Whereabouts {
    /// Live in `queue`; `lease` while a tenant or consumer holds it.
    Live {
        queue: String,
        meta: MessageMeta,
        lease: Option<Lease>,
    },
    Dead {
        queue: String,
        meta: MessageMeta,
    },
    Finished(FinishedTrace),
}

/// Finds message `id` in any queue (live or dead), or its retained trace. Looks in at most
/// `max_queues` queues.
pub fn find_message(
    kv: &dyn Store,
    ix: &SharedIndex,
    id: &str,
    max_queues: usize,
) -> Result<Option<Whereabouts>, StoreError> {
    let b = WriteBatch::default();
    if let Some(t) = find_trace(kv, ix, id)? {
        return Ok(Some(Whereabouts::Finished(t)));
    }
    for (queue, _) in list_queues(kv, None, max_queues)? {
        let Some(seq) = ix.read().seq_of(&queue, id) else {
            continue;
        };
        let group = || ix.read().group_record(&queue, seq);
        if let Some(s) = get_stored(kv, &b, &queue, seq, group)? {
            return Ok(Some(Whereabouts::Live {
                queue,
                meta: s.meta,
                lease: s.lease,
            }));
        }
        if let Some(meta) = get::<MessageMeta>(kv, &b, &seq_key("x", &queue, seq), "dead")? {
            return Ok(Some(Whereabouts::Dead { queue, meta }));
        }
    }
    Ok(None)
}

/// The retained trace of message `id`, from the record the index names.
fn find_trace(
    kv: &dyn Store,
    ix: &SharedIndex,
    id: &str,
) -> Result<Option<FinishedTrace>, StoreError> {
    let Some(record) = ix.read().traced.get(id).cloned() else {
        return Ok(None);
    };
    let b = WriteBatch::default();
    let key = trace_record_key(&record);
    Ok(match record {
        TraceRecord::Single(_) => get::<FinishedTrace>(kv, &b, &key, "trace")?,
        TraceRecord::Batch { .. } => get::<TraceBatch>(kv, &b, &key, "trace batch")?
            .and_then(|b| b.traces.into_iter().find(|t| t.meta.id == id)),
    })
}

/// True when some dedup entry, lease or retained trace has expired by `now_ms`, or more than
/// [`MAX_RETAINED_TRACES`] traces are kept (the leader then sweeps).
pub fn sweep_due(ix: &SharedIndex, now_ms: u64) -> bool {
    let ix = ix.read();
    ix.traced.len() as u64 > MAX_RETAINED_TRACES
        || ix.dedup_expiry.first().is_some_and(|e| e.0 < now_ms)
        || ix.lease_expiry.first().is_some_and(|e| e.0 < now_ms)
        || ix
            .trace_expiry
            .first_key_value()
            .is_some_and(|e| e.0 .0 < now_ms)
}

/// Dead letters of `queue` by sequence, after `after`, at most `limit`.
pub fn list_dead_letters(
    kv: &dyn Store,
    queue: &str,
    after: Option<u64>,
    limit: usize,
) -> Result<Vec<MessageMeta>, StoreError> {
    let base = qk("x", queue, &[]);
    let from = match after {
        Some(s) => seq_key("x", queue, s.saturating_add(1)),
        None => base.clone(),
    };
    kv.range(&from, &prefix_end(&base), limit)?
        .into_iter()
        .map(|(_, v)| decode(&v).map_err(|e| corrupt("dead letter", e)))
        .collect()
}

/// One dead letter by id, with its body.
pub fn peek_dead_letter(
    kv: &dyn Store,
    ix: &SharedIndex,
    queue: &str,
    id: &str,
) -> Result<Option<(MessageMeta, Vec<u8>)>, StoreError> {
    let b = WriteBatch::default();
    let Some(seq) = ix.read().seq_of(queue, id) else {
        return Ok(None);
    };
    let Some(meta) = get::<MessageMeta>(kv, &b, &seq_key("x", queue, seq), "dead letter")? else {
        return Ok(None);
    };
    let body = kv.get(&seq_key("b", queue, seq))?.unwrap_or_default();
    Ok(Some((meta, body)))
}

/// True while message `id` of `queue` is live (ready or leased): not completed, expired,
/// dead-lettered or purged. The scheduler's overlap policy asks this inside apply, through the
/// pending batch, so every node answers alike.
pub fn is_live(
    kv: &dyn Store,
    batch: &WriteBatch,
    ix: &Indexes,
    queue: &str,
    id: &str,
) -> Result<bool, StoreError> {
    let Some(seq) = ix.seq_of(queue, id) else {
        return Ok(false);
    };
    let group = || ix.group_record(queue, seq);
    Ok(get_stored(kv, batch, queue, seq, group)?.is_some())
}

// ---------- apply ----------

/// Applies queue commands against `kv` as seen through `batch`, keeping `ix` in step.
/// One command's changes to the queue state: writes go to `batch`, index updates to `ix`.
/// Traces of the messages the command finishes gather in `traces` and are written as one
/// record when the command is done (on drop).
pub struct Apply<'a> {
    kv: &'a dyn Store,
    batch: &'a mut WriteBatch,
    ix: &'a mut Indexes,
    /// Raft index of the command: names its trace records, unique for the life of the log.
    index: u64,
    /// The trace record being filled, and how many this command wrote before it.
    traces: Option<TraceBatch>,
    trace_parts: u32,
}

impl Drop for Apply<'_> {
    fn drop(&mut self) {
        self.finish();
    }
}

enum Live {
    Gone,
    Deleting,
    Ok(Arc<QueueEntry>, QueueStats),
}

impl<'a> Apply<'a> {
    pub fn new(
        kv: &'a dyn Store,
        batch: &'a mut WriteBatch,
        ix: &'a mut Indexes,
        index: u64,
    ) -> Self {
        Apply {
            kv,
            batch,
            ix,
            index,
            traces: None,
            trace_parts: 0,
        }
    }

    /// Writes the trace record being filled, if any: when it is full, and on drop (the end
    /// of the command), so no caller can forget it.
    fn finish(&mut self) {
        if let Some(b) = self.traces.take() {
            let key = trace_batch_key(self.index, self.trace_parts);
            self.batch.put(key, encode(&b));
            self.trace_parts += 1;
        }
    }

    fn load(&self, queue: &str) -> Result<Live, StoreError> {
        match self.ix.configs.get(queue) {
            None => Ok(Live::Gone),
            Some(e) if e.deleting => Ok(Live::Deleting),
            Some(e) => {
                let e = Arc::clone(e);
                let stats =
                    get(self.kv, self.batch, &k("s", queue), "queue stats")?.unwrap_or_default();
                Ok(Live::Ok(e, stats))
            }
        }
    }

    fn put_stats(&mut self, queue: &str, s: &QueueStats) {
        self.batch.put(k("s", queue), encode(s));
    }

    fn stored(&self, queue: &str, seq: u64) -> Result<Option<Stored>, StoreError> {
        get_stored(self.kv, self.batch, queue, seq, || {
            self.ix.group_record(queue, seq)
        })
    }

    fn put_stored(&mut self, queue: &str, s: &Stored) {
        self.batch
            .put(seq_key("n", queue, s.meta.sequence), encode(s));
    }

    fn body_of(&self, queue: &str, s: &Stored) -> Result<Vec<u8>, StoreError> {
        read_body(self.kv, self.batch, queue, s)
    }

    /// Moves the message's ready entry (and its visibility) to `at_ms`.
    fn set_visible(&mut self, queue: &str, s: &mut Stored, at_ms: u64) {
        self.ix
            .move_ready(queue, s.meta.sequence, s.meta.visible_at_ms, at_ms);
        s.meta.visible_at_ms = at_ms;
    }

    pub fn put_queue(
        &mut self,
        index: u64,
        name: &str,
        config: QueueConfig,
        now_ms: u64,
    ) -> Result<QueueResponse, StoreError> {
        let existing = self.ix.configs.get(name).cloned();
        if existing.as_ref().is_some_and(|e| e.deleting) {
            return Ok(QueueResponse::Deleting);
        }
        let entry = QueueEntry {
            config,
            revision: index,
            created_index: existing.as_ref().map(|e| e.created_index).unwrap_or(index),
            updated_ms: now_ms,
            deleting: false,
        };
        self.batch.put(k("c", name), encode(&entry));
        self.ix.configs.insert(name.to_string(), Arc::new(entry));
        Ok(QueueResponse::Put {
            revision: index,
            created: existing.is_none(),
        })
    }

    /// Marks the queue deleting and removes up to [`CHUNK_LIMIT`] keys per range; the
    /// configuration goes last, when nothing else remains. The queue's indexes go at once: a
    /// deleting queue takes no command that would read them.
    pub fn delete_queue(&mut self, name: &str) -> Result<QueueResponse, StoreError> {
        let Some(mut entry) = self.ix.configs.get(name).map(|e| QueueEntry::clone(e)) else {
            return Ok(QueueResponse::Deleted {
                existed: false,
                done: true,
            });
        };
        if !entry.deleting {
            self.forget_queue(name);
        }
        let mut done = true;
        let kinds = [
            ("n", CHUNK_LIMIT),
            ("g", GROUP_DELETE_LIMIT),
            ("u", CHUNK_LIMIT),
            ("x", CHUNK_LIMIT),
            ("d", CHUNK_LIMIT),
        ];
        for (kind, limit) in kinds {
            let from = qk(kind, name, &[]);
            let found = scan_through(self.kv, self.batch, &from, &prefix_end(&from), limit)?;
            if found.len() == limit {
                done = false;
            }
            for (key, v) in found {
                let seq = key.len().checked_sub(8).and_then(|i| be_u64(&key[i..]));
                // Bodies (up to 16 MiB) are never read: they go by their owner's sequence.
                let body = match kind {
                    // A blob goes with the first of its messages seen; later ones delete it
                    // again, harmlessly (the queue's indexes are already gone).
                    "n" => match decode_record(&v)? {
                        Stored { blob: Some(b), .. } => Some(blob_key(name, b.seq)),
                        Stored { body: None, .. } => seq.map(|q| seq_key("b", name, q)),
                        _ => None,
                    },
                    // A group's blob has the group's first sequence.
                    "g" => seq.map(|q| blob_key(name, q)),
                    "x" => seq.map(|q| seq_key("b", name, q)),
                    _ => None,
                };
                if let Some(body) = body {
                    self.batch.delete(body);
                }
                self.batch.delete(key);
            }
        }
        if done {
            self.batch.delete(k("c", name));
            self.batch.delete(k("s", name));
            self.ix.configs.remove(name);
        } else if !entry.deleting {
            entry.deleting = true;
            self.batch.put(k("c", name), encode(&entry));
            self.ix.configs.insert(name.to_string(), Arc::new(entry));
        }
        Ok(QueueResponse::Deleted {
            existed: true,
            done,
        })
    }

    /// Drops every index entry of queue `name` (once, when its delete starts).
    fn forget_queue(&mut self, name: &str) {
        self.ix.queues.remove(name);
        self.ix.dedup_expiry.retain(|(_, q, _)| q != name);
        self.ix.lease_expiry.retain(|(_, q, _)| q != name);
    }

    /// Enqueues all of `messages` or none: duplicates answer with the original, caps are
    /// checked for the whole batch before anything is written.
    pub fn enqueue(
        &mut self,
        queue: &str,
        now_ms: u64,
        messages: Vec<NewMessage>,
    ) -> Result<QueueResponse, StoreError> {
        let (entry, mut stats) = match self.load(queue)? {
            Live::Gone => return Ok(QueueResponse::NotFound),
            Live::Deleting => return Ok(QueueResponse::Deleting),
            Live::Ok(e, s) => (e, s),
        };
        let cfg = &entry.config;
        // Pass 1: which messages are new (dedup against the store and earlier ones of this batch).
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        let mut plan: Vec<Result<(), Enqueued>> = Vec::with_capacity(messages.len());
        let (mut new_count, mut new_bytes) = (0u64, 0u64);
        for (i, m) in messages.iter().enumerate() {
            let dup = match &m.dedup_key {
                Some(dk) if cfg.dedup_window_ms > 0 => {
                    if let Some(&j) = seen.get(dk) {
                        Some(Err(j))
                    } else {
                        let d: Option<DedupEntry> = get(
                            self.kv,
                            self.batch,
                            &qk("d", queue, dk.as_bytes()),
                            "dedup entry",
                        )?;
                        match d {
                            Some(d) if d.expires_at_ms > now_ms => Some(Ok(Enqueued {
                                id: d.id,
                                sequence: d.sequence,
                                duplicate: true,
                            })),
                            _ => None,
                        }
                    }
                }
                _ => None,
            };
            match dup {
                Some(Ok(e)) => plan.push(Err(e)),
                // Same key earlier in this batch: filled in below once sequences are known.
                Some(Err(j)) => plan.push(Err(Enqueued {
                    id: String::new(),
                    sequence: j as u64,
                    duplicate: true,
                })),
                None => {
                    if let Some(dk) = &m.dedup_key {
                        seen.insert(dk.clone(), i);
                    }
                    new_count += 1;
                    new_bytes += m.body.len() as u64;
                    plan.push(Ok(()));
                }
            }
        }
        let stored = stats.depth + stats.dead_letters;
        if stored + new_count > cfg.max_messages {
            return Ok(QueueResponse::Full {
                reason: format!(
                    "the queue holds {stored} of at most {} messages",
                    cfg.max_messages
                ),
            });
        }
        let stored_bytes = stats.bytes + stats.dead_bytes;
        if stored_bytes + new_bytes > cfg.max_bytes {
            return Ok(QueueResponse::Full {
                reason: format!(
                    "the queue holds {stored_bytes} of at most {} bytes",
                    cfg.max_bytes
                ),
            });
        }
        // Pass 2: write. Two or more new messages share one blob for their bodies (see
        // [`BlobRef`]) and one group for their records (see [`GroupValue`]).
        let mut blob = (new_count >= 2).then(|| Vec::with_capacity(new_bytes as usize));
        let mut records = (new_count >= 2).then(|| Vec::with_capacity(new_count as usize));
        let first_seq = stats.next_seq + 1;
        let mut results: Vec<Enqueued> = Vec::with_capacity(messages.len());
        for (m, p) in messages.into_iter().zip(plan) {
            match p {
                Err(mut e) => {
                    if e.id.is_empty() {
                        let first = &results[e.sequence as usize];
                        e = Enqueued {
                            id: first.id.clone(),
                            sequence: first.sequence,
                            duplicate: true,
                        };
                    }
                    stats.duplicates_total += 1;
                    results.push(e);
                }
                Ok(()) => {
                    stats.next_seq += 1;
                    let seq = stats.next_seq;
                    if let (Some(dk), true) = (&m.dedup_key, cfg.dedup_window_ms > 0) {
                        self.put_dedup(
                            queue,
                            dk,
                            &m.id,
                            seq,
                            now_ms.saturating_add(cfg.dedup_window_ms),
                        )?;
                    }
                    results.push(Enqueued {
                        id: m.id.clone(),
                        sequence: seq,
                        duplicate: false,
                    });
                    let at = blob.as_mut().map(|b| {
                        let r = BlobRef {
                            seq: first_seq,
                            offset: b.len() as u64,
                            crc: crc32fast::hash(&m.body),
                        };
                        b.extend_from_slice(&m.body);
                        r
                    });
                    let record = self.add_message(queue, cfg, seq, now_ms, m, at);
                    match records.as_mut() {
                        Some(r) => r.push(encode(&record)),
                        None => self.put_stored(queue, &record),
                    }
                    stats.depth += 1;
                    stats.enqueued_total += 1;
                }
            }
        }
        if let (Some(b), Some(records)) = (blob, records) {
            self.batch.put(blob_key(queue, first_seq), b);
            let (group, places) = GroupValue::encode(&records);
            self.batch.put(group_key(queue, first_seq), group);
            self.ix.add_blob_refs(queue, first_seq, new_count as u32);
            let group = index::Group::new(places, None);
            self.ix.queue_mut(queue).groups.insert(first_seq, group);
        }
        stats.bytes += new_bytes;
        self.put_stats(queue, &stats);
        Ok(QueueResponse::Enqueued { results })
    }

    /// Records dedup key `dk` of `queue` as taken by message `id` until `expires_at_ms`.
    fn put_dedup(
        &mut self,
        queue: &str,
        dk: &str,
        id: &str,
        seq: u64,
        expires_at_ms: u64,
    ) -> Result<(), StoreError> {
        let dkey = qk("d", queue, dk.as_bytes());
        if let Some(old) = get::<DedupEntry>(self.kv, self.batch, &dkey, "dedup entry")? {
            self.ix
                .dedup_expiry
                .remove(&(old.expires_at_ms, queue.to_string(), dk.to_string()));
        }
        let d = DedupEntry {
            id: id.to_string(),
            sequence: seq,
            expires_at_ms,
        };
        self.batch.put(dkey, encode(&d));
        self.ix
            .dedup_expiry
            .insert((expires_at_ms, queue.to_string(), dk.to_string()));
        Ok(())
    }

    /// Indexes new live message `seq`, visible at once, and returns its record for the caller
    /// to store (alone or in its command's group). Its body goes to its own key, or (with
    /// `blob`) the caller has put it into its command's blob.
    fn add_message(
        &mut self,
        queue: &str,
        cfg: &QueueConfig,
        seq: u64,
        now_ms: u64,
        m: NewMessage,
        blob: Option<BlobRef>,
    ) -> Stored {
        let body_len = m.body.len() as u64;
        if blob.is_none() {
            self.batch.put(seq_key("b", queue, seq), m.body);
        }
        self.ix.add_live(queue, now_ms, seq, &m.id);
        if let Some(okey) = &m.ordering_key {
            self.ix.add_order(queue, okey, seq);
        }
        let meta = MessageMeta {
            id: m.id,
            sequence: seq,
            enqueued_ms: now_ms,
            expires_at_ms: cfg.ttl_ms.map(|t| now_ms.saturating_add(t)),
            visible_at_ms: now_ms,
            delivery_count: 0,
            dedup_key: m.dedup_key,
            ordering_key: m.ordering_key,
            content_type: m.content_type,
            headers: m.headers,
            body_len,
            dead_reason: None,
            dead_excerpt: None,
            attempts: Vec::new(),
            attempts_total: 0,
            last_tenant: None,
            uncertain: false,
            last_status: None,
        };
        Stored {
            meta,
            lease: None,
            body: None,
            blob,
        }
    }

    /// One message less reads blob `b`; the last one deletes it, and the group of the same
    /// first sequence with its bits (every message has left it now; a redriven dead letter
    /// lives on with a record of its own).
    fn release_blob(&mut self, queue: &str, b: BlobRef) {
        if !self.ix.release_blob_ref(queue, b.seq) {
            return;
        }
        self.batch.delete(blob_key(queue, b.seq));
        if self.ix.queue_mut(queue).groups.remove(&b.seq).is_some() {
            self.batch.delete(group_key(queue, b.seq));
            self.batch.delete(left_key(queue, b.seq));
        }
    }

    /// Removes a live message and everything pointing at it (not its dedup entry: that
    /// outlives the message for the window). `keep_body`: it becomes a dead letter, which
    /// keeps its id and (at `qb`) its body.
    fn remove_live(
        &mut self,
        queue: &str,
        s: &mut Stored,
        stats: &mut QueueStats,
        keep_body: bool,
    ) {
        let seq = s.meta.sequence;
        self.batch.delete(seq_key("n", queue, seq));
        // Its group's copy must not come back: it leaves the group.
        if let Some((first, left)) = self.ix.leave_group(queue, seq) {
            self.batch.put(left_key(queue, first), left);
        }
        self.ix
            .queue_mut(queue)
            .ready
            .remove(&(s.meta.visible_at_ms, seq));
        if let Some(okey) = &s.meta.ordering_key {
            self.ix.remove_order(queue, okey, seq);
        }
        if !keep_body {
            match s.blob {
                Some(b) => self.release_blob(queue, b),
                None if s.body.is_none() => self.batch.delete(seq_key("b", queue, seq)),
                None => {}
            }
            self.ix.queue_mut(queue).ids.remove(&s.meta.id);
        }
        self.drop_lease(queue, s, stats);
        stats.depth = stats.depth.saturating_sub(1);
        stats.bytes = stats.bytes.saturating_sub(s.meta.body_len);
    }

    /// Takes the lease (if any) off the record, out of the expiry index and `in_flight`.
    fn drop_lease(&mut self, queue: &str, s: &mut Stored, stats: &mut QueueStats) {
        if let Some(l) = s.lease.take() {
            self.ix
                .lease_expiry
                .remove(&(l.deadline_ms, queue.to_string(), s.meta.sequence));
            stats.in_flight = stats.in_flight.saturating_sub(1);
        }
    }

    fn dead_letter(
        &mut self,
        queue: &str,
        mut s: Stored,
        reason: String,
        stats: &mut QueueStats,
    ) -> Result<(), StoreError> {
        self.remove_live(queue, &mut s, stats, true);
        let seq = s.meta.sequence;
        // A dead letter keeps its body at its own key: one out of a blob is copied there.
        let body = read_body(self.kv, self.batch, queue, &s)?;
        if s.body.take().is_some() || s.blob.is_some() {
            self.batch.put(seq_key("b", queue, seq), body.clone());
        }
        if let Some(b) = s.blob.take() {
            self.release_blob(queue, b);
        }
        let end = body.len().min(DEAD_EXCERPT_BYTES);
        let mut meta = s.meta;
        meta.dead_excerpt = Some(String::from_utf8_lossy(&body[..end]).into_owned());
        meta.dead_reason = Some(reason);
        stats.dead_letters += 1;
        stats.dead_lettered_total += 1;
        stats.dead_bytes += meta.body_len;
        self.batch.put(seq_key("x", queue, seq), encode(&meta));
        Ok(())
    }

    /// Leases message `s`: any expired lease is replaced, its ready entry moves to the lock
    /// deadline, and the attempt is recorded for the trace.
    fn lease(
        &mut self,
        queue: &str,
        mut s: Stored,
        grant: Grant,
        attempt: Attempt,
        stats: &mut QueueStats,
        with_body: bool,
    ) -> Result<Received, StoreError> {
        let seq = s.meta.sequence;
        self.drop_lease(queue, &mut s, stats);
        let deadline = grant.deadline_ms;
        self.set_visible(queue, &mut s, deadline);
        let meta = &mut s.meta;
        meta.delivery_count += 1;
        meta.attempts_total = meta.attempts_total.saturating_add(1);
        meta.last_tenant = Some(attempt.tenant.clone());
        meta.uncertain = true;
        push_attempt(meta, attempt);
        s.lease = Some(Lease {
            lock_token: grant.lock_token.clone(),
            deadline_ms: deadline,
            consumer: grant.holder,
        });
        self.ix
            .lease_expiry
            .insert((deadline, queue.to_string(), seq));
        stats.in_flight += 1;
        let body = if with_body {
            self.body_of(queue, &s)?
        } else {
            Vec::new()
        };
        self.put_stored(queue, &s);
        Ok(Received {
            meta: s.meta,
            body,
            lock_token: grant.lock_token,
            locked_until_ms: deadline,
        })
    }

    /// A message met at the head that may not be delivered any more: TTL-expired ones are
    /// dropped (their trace kept), over-delivered ones dead-lettered. True when it was removed.
    fn retire_if_due(
        &mut self,
        queue: &str,
        cfg: &QueueConfig,
        s: &Stored,
        now_ms: u64,
        stats: &mut QueueStats,
    ) -> Result<bool, StoreError> {
        if s.meta.expires_at_ms.is_some_and(|t| t <= now_ms) {
            let mut s = s.clone();
            self.remove_live(queue, &mut s, stats, false);
            stats.expired_total += 1;
            self.keep_trace(queue, s.meta, Final::Expired, now_ms)?;
            return Ok(true);
        }
        if s.meta.delivery_count >= cfg.max_deliveries {
            let reason = format!(
                "delivered {} times (max_deliveries {})",
                s.meta.delivery_count, cfg.max_deliveries
            );
            self.dead_letter(queue, s.clone(), reason, stats)?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Keeps the trace of a message that left the queue, for [`TRACE_RETENTION_MS`] (and at
    /// most [`MAX_RETAINED_TRACES`] of them, oldest removed first by the sweep).
    fn keep_trace(
        &mut self,
        queue: &str,
        meta: MessageMeta,
        outcome: Final,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        if self.ix.traced.contains_key(&meta.id) {
            return Ok(());
        }
        if self
            .traces
            .as_ref()
            .is_some_and(|b| b.traces.len() >= MAX_TRACES_PER_RECORD)
        {
            self.finish();
        }
        let batch = self.traces.get_or_insert_with(|| TraceBatch {
            until_ms: now_ms.saturating_add(TRACE_RETENTION_MS),
            traces: Vec::new(),
        });
        let record = TraceRecord::Batch {
            index: self.index,
            part: self.trace_parts,
        };
        self.ix
            .add_traces(batch.until_ms, record, vec![meta.id.clone()]);
        batch.traces.push(FinishedTrace {
            queue: queue.to_string(),
            meta,
            outcome,
            finished_ms: now_ms,
        });
        Ok(())
    }

    /// Leases the first visible message (or one whose lock expired) to `lock_token`.
    /// Expired and over-delivered messages met on the way are removed or dead-lettered.
    pub fn receive(
        &mut self,
        queue: &str,
        now_ms: u64,
        lock_ms: u64,
        lock_token: String,
        consumer: String,
    ) -> Result<QueueResponse, StoreError> {
        let (entry, mut stats) = match self.load(queue)? {
            Live::Gone => return Ok(QueueResponse::NotFound),
            Live::Deleting => return Ok(QueueResponse::Deleting),
            Live::Ok(e, s) => (e, s),
        };
        let found = self.lease_head(
            queue,
            &entry.config,
            now_ms,
            lock_ms,
            lock_token,
            consumer,
            &mut stats,
        )?;
        self.put_stats(queue, &stats);
        Ok(QueueResponse::Received {
            message: found.map(Box::new),
        })
    }

    /// The receive step: leases the first deliverable message at the head, if any.
    #[allow(clippy::too_many_arguments)]
    fn lease_head(
        &mut self,
        queue: &str,
        cfg: &QueueConfig,
        now_ms: u64,
        lock_ms: u64,
        lock_token: String,
        consumer: String,
        stats: &mut QueueStats,
    ) -> Result<Option<Received>, StoreError> {
        for (visible_at, seq) in self.ix.visible(queue, now_ms, RECEIVE_SCAN_LIMIT) {
            let Some(s) = self.stored(queue, seq)? else {
                // An index entry without its message: drop it.
                self.ix.queue_mut(queue).ready.remove(&(visible_at, seq));
                continue;
            };
            if self.retire_if_due(queue, cfg, &s, now_ms, stats)? {
                continue;
            }
            if blocked_by_order(self.ix, queue, cfg.ordering, &s.meta) {
                continue;
            }
            let attempt = Attempt {
                at_ms: now_ms,
                tenant: consumer.clone(),
                status: None,
                error: None,
                latency_ms: None,
                counted: true,
                note: None,
            };
            let grant = Grant {
                lock_token,
                deadline_ms: now_ms.saturating_add(lock_ms),
                holder: consumer,
            };
            return self.lease(queue, s, grant, attempt, stats, true).map(Some);
        }
        Ok(None)
    }

    /// Leases up to one message per token, each as [`Apply::receive`] would, in one batch:
    /// later leases see the earlier ones (per-key ordering holds within the batch too).
    pub fn receive_many(
        &mut self,
        queue: &str,
        now_ms: u64,
        lock_ms: u64,
        lock_tokens: Vec<String>,
        consumer: String,
    ) -> Result<QueueResponse, StoreError> {
        let (entry, mut stats) = match self.load(queue)? {
            Live::Gone => return Ok(QueueResponse::NotFound),
            Live::Deleting => return Ok(QueueResponse::Deleting),
            Live::Ok(e, s) => (e, s),
        };
        let mut messages = Vec::with_capacity(lock_tokens.len());
        for token in lock_tokens.into_iter().take(MAX_RECEIVE_MESSAGES) {
            let cfg = &entry.config;
            match self.lease_head(
                queue,
                cfg,
                now_ms,
                lock_ms,
                token,
                consumer.clone(),
                &mut stats,
            )? {
                Some(m) => messages.push(m),
                None => break,
            }
        }
        self.put_stats(queue, &stats);
        Ok(QueueResponse::ReceivedMany { messages })
    }

    /// Settles each (id, lock token) as [`Apply::settle`] would; one item's lost lock does
    /// not affect the others.
    pub fn settle_many(
        &mut self,
        queue: &str,
        now_ms: u64,
        items: &[(String, String)],
        action: Settle,
    ) -> Result<QueueResponse, StoreError> {
        let mut results = Vec::with_capacity(items.len());
        for (id, token) in items.iter().take(MAX_SETTLE_ITEMS) {
            match self.settle(queue, id, token, now_ms, action.clone())? {
                r @ (QueueResponse::NotFound | QueueResponse::Deleting) => return Ok(r),
                r => results.push(r),
            }
        }
        Ok(QueueResponse::SettledMany { results })
    }

    /// Completes, abandons, dead-letters or renews a message held under `lock_token`.
    pub fn settle(
        &mut self,
        queue: &str,
        id: &str,
        lock_token: &str,
        now_ms: u64,
        action: Settle,
    ) -> Result<QueueResponse, StoreError> {
        let (entry, mut stats) = match self.load(queue)? {
            Live::Gone => return Ok(QueueResponse::NotFound),
            Live::Deleting => return Ok(QueueResponse::Deleting),
            Live::Ok(e, s) => (e, s),
        };
        let Some(seq) = self.ix.seq_of(queue, id) else {
            return Ok(QueueResponse::MessageNotFound);
        };
        let Some(mut s) = self.stored(queue, seq)? else {
            // Dead-lettered or gone: whoever held it no longer does.
            return Ok(QueueResponse::LockLost);
        };
        let consumer = match &s.lease {
            Some(l) if l.lock_token == lock_token && l.deadline_ms > now_ms => l.consumer.clone(),
            _ => return Ok(QueueResponse::LockLost),
        };
        let mut locked_until_ms = None;
        match action {
            Settle::Complete => {
                self.remove_live(queue, &mut s, &mut stats, false);
                stats.completed_total += 1;
                s.meta.uncertain = false;
                self.keep_trace(queue, s.meta, Final::Completed, now_ms)?;
            }
            Settle::Abandon => {
                self.drop_lease(queue, &mut s, &mut stats);
                if s.meta.delivery_count >= entry.config.max_deliveries {
                    let reason = format!(
                        "abandoned after {} deliveries (max_deliveries {})",
                        s.meta.delivery_count, entry.config.max_deliveries
                    );
                    self.dead_letter(queue, s, reason, &mut stats)?;
                } else {
                    self.set_visible(queue, &mut s, now_ms);
                    self.put_stored(queue, &s);
                }
            }
            Settle::DeadLetter { reason } => {
                self.dead_letter(queue, s, reason, &mut stats)?;
            }
            Settle::Renew { lock_ms } => {
                let deadline = now_ms.saturating_add(lock_ms);
                self.drop_lease(queue, &mut s, &mut stats);
                self.set_visible(queue, &mut s, deadline);
                s.lease = Some(Lease {
                    lock_token: lock_token.to_string(),
                    deadline_ms: deadline,
                    consumer,
                });
                self.ix
                    .lease_expiry
                    .insert((deadline, queue.to_string(), seq));
                stats.in_flight += 1;
                self.put_stored(queue, &s);
                locked_until_ms = Some(deadline);
            }
        }
        self.put_stats(queue, &stats);
        Ok(QueueResponse::Settled { locked_until_ms })
    }

    /// Removes expired dedup entries and clears expired leases (so `in_flight` counts live
    /// locks only), at most [`SWEEP_LIMIT`] of each kind, then expired retained traces.
    pub fn sweep(&mut self, now_ms: u64) -> Result<QueueResponse, StoreError> {
        let mut out = (0u64, 0u64);
        let due: Vec<_> = self
            .ix
            .dedup_expiry
            .range(..(now_ms, String::new(), String::new()))
            .take(SWEEP_LIMIT)
            .cloned()
            .collect();
        for e in due {
            self.ix.dedup_expiry.remove(&e);
            let (at, queue, dk) = e;
            let dkey = qk("d", &queue, dk.as_bytes());
            let d: Option<DedupEntry> = get(self.kv, self.batch, &dkey, "dedup")?;
            if d.is_some_and(|d| d.expires_at_ms == at) {
                self.batch.delete(dkey);
                out.0 += 1;
            }
        }
        let due: Vec<_> = self
            .ix
            .lease_expiry
            .range(..(now_ms, String::new(), 0))
            .take(SWEEP_LIMIT)
            .cloned()
            .collect();
        for e in due {
            self.ix.lease_expiry.remove(&e);
            let (at, queue, seq) = e;
            let Some(mut s) = self.stored(&queue, seq)? else {
                continue;
            };
            if s.lease.as_ref().is_some_and(|l| l.deadline_ms == at) {
                s.lease = None;
                self.put_stored(&queue, &s);
                let skey = k("s", &queue);
                if let Some(mut st) = get::<QueueStats>(self.kv, self.batch, &skey, "stats")? {
                    st.in_flight = st.in_flight.saturating_sub(1);
                    self.batch.put(skey, encode(&st));
                }
                out.1 += 1;
            }
        }
        self.sweep_traces(now_ms);
        Ok(QueueResponse::Swept {
            dedup_expired: out.0,
            leases_expired: out.1,
        })
    }

    /// Removes trace records, oldest first, that expired by `now_ms` or that hold the
    /// traces beyond [`MAX_RETAINED_TRACES`] (whole records: up to one command's worth more
    /// may go), at most [`SWEEP_LIMIT`] records.
    fn sweep_traces(&mut self, now_ms: u64) {
        for _ in 0..SWEEP_LIMIT {
            let over = self.ix.traced.len() as u64 > MAX_RETAINED_TRACES;
            let Some(((until, _), _)) = self.ix.trace_expiry.first_key_value() else {
                return;
            };
            if *until > now_ms && !over {
                return;
            }
            if let Some(record) = self.ix.pop_oldest_traces() {
                self.batch.delete(trace_record_key(&record));
            }
        }
    }

    /// Leases messages to the tenants the leader's dispatcher chose, and defers those whose
    /// sticky tenant cannot take them yet. A lease whose message is no longer visible (taken,
    /// settled, blocked by its ordering key) is skipped: the dispatcher's view may lag.
    pub fn dispatch(
        &mut self,
        queue: &str,
        now_ms: u64,
        lock_ms: u64,
        leases: Vec<PushLease>,
        defers: Vec<Defer>,
    ) -> Result<QueueResponse, StoreError> {
        let (entry, mut stats) = match self.load(queue)? {
            Live::Gone => return Ok(QueueResponse::NotFound),
            Live::Deleting => return Ok(QueueResponse::Deleting),
            Live::Ok(e, s) => (e, s),
        };
        let mut leased = Vec::with_capacity(leases.len());
        for l in leases {
            let Some(s) = self.visible(queue, l.seq, now_ms)? else {
                continue;
            };
            if self.retire_if_due(queue, &entry.config, &s, now_ms, &mut stats)? {
                continue;
            }
            if blocked_by_order(self.ix, queue, entry.config.ordering, &s.meta) {
                continue;
            }
            let grant = Grant {
                lock_token: l.lock_token,
                deadline_ms: now_ms.saturating_add(lock_ms),
                holder: l.tenant.clone(),
            };
            let attempt = Attempt {
                at_ms: now_ms,
                tenant: l.tenant,
                status: None,
                error: None,
                latency_ms: None,
                counted: true,
                note: l.note,
            };
            leased.push(self.lease(queue, s, grant, attempt, &mut stats, false)?);
        }
        let mut deferred = 0u32;
        for d in defers {
            let Some(mut s) = self.visible(queue, d.seq, now_ms)? else {
                continue;
            };
            self.set_visible(queue, &mut s, d.until_ms.max(now_ms));
            self.put_stored(queue, &s);
            deferred += 1;
        }
        self.put_stats(queue, &stats);
        Ok(QueueResponse::Dispatched { leased, deferred })
    }

    /// The live message `seq` if it is visible at `now_ms` (not leased, not backing off).
    fn visible(&self, queue: &str, seq: u64, now_ms: u64) -> Result<Option<Stored>, StoreError> {
        Ok(self
            .stored(queue, seq)?
            .filter(|s| s.meta.visible_at_ms <= now_ms))
    }

    /// Records push outcomes. A 2xx completes the message even when its lease moved on (the
    /// tenant did process it; a concurrent attempt's duplicate is the tenant's idempotent
    /// call's to drop). Other results apply only while their lease still holds.
    pub fn record(
        &mut self,
        queue: &str,
        now_ms: u64,
        results: Vec<DeliveryResult>,
    ) -> Result<QueueResponse, StoreError> {
        let (entry, mut stats) = match self.load(queue)? {
            Live::Gone => return Ok(QueueResponse::NotFound),
            Live::Deleting => return Ok(QueueResponse::Deleting),
            Live::Ok(e, s) => (e, s),
        };
        let (mut completed, mut retried, mut dead, mut lost) = (0u32, 0u32, 0u32, 0u32);
        for r in results {
            let Some(mut s) = self.stored(queue, r.seq)? else {
                lost += 1;
                continue;
            };
            let holds = s
                .lease
                .as_ref()
                .is_some_and(|l| l.lock_token == r.lock_token);
            let counted = matches!(r.verdict, Verdict::Retry { counted: true, .. });
            let outcome = Attempt {
                at_ms: now_ms.saturating_sub(r.latency_ms),
                tenant: r.tenant.clone(),
                status: r.status,
                error: r.error.clone(),
                latency_ms: Some(r.latency_ms),
                counted: counted || r.verdict == Verdict::Completed,
                note: None,
            };
            match (holds, s.meta.attempts.last_mut()) {
                (true, Some(last)) if last.tenant == r.tenant => {
                    let note = last.note.take();
                    *last = Attempt { note, ..outcome };
                }
                _ => push_attempt(&mut s.meta, outcome),
            }
            s.meta.last_status = r.status.or(s.meta.last_status);
            match r.verdict {
                Verdict::Completed => {
                    self.remove_live(queue, &mut s, &mut stats, false);
                    stats.completed_total += 1;
                    s.meta.uncertain = false;
                    self.keep_trace(queue, s.meta, Final::Completed, now_ms)?;
                    completed += 1;
                }
                Verdict::Retry { .. } if !holds => lost += 1,
                Verdict::Retry {
                    visible_at_ms,
                    counted,
                    uncertain,
                } => {
                    self.drop_lease(queue, &mut s, &mut stats);
                    if !counted {
                        s.meta.delivery_count = s.meta.delivery_count.saturating_sub(1);
                    }
                    s.meta.uncertain = uncertain;
                    if counted && s.meta.delivery_count >= entry.config.max_deliveries {
                        let status = r
                            .status
                            .map(|s| format!("status {s}"))
                            .or(r.error)
                            .unwrap_or_default();
                        let reason = format!(
                            "failed {} deliveries (max_deliveries {}); last: {status}",
                            s.meta.delivery_count, entry.config.max_deliveries
                        );
                        self.dead_letter(queue, s, reason, &mut stats)?;
                        dead += 1;
                        continue;
                    }
                    self.set_visible(queue, &mut s, visible_at_ms.max(now_ms));
                    self.put_stored(queue, &s);
                    retried += 1;
                }
            }
        }
        self.put_stats(queue, &stats);
        Ok(QueueResponse::Recorded {
            completed,
            retried,
            dead_lettered: dead,
            lost,
        })
    }

    /// Moves dead letters back to the queue (one by id, or up to [`CHUNK_LIMIT`]) with their
    /// delivery count reset.
    pub fn redrive(
        &mut self,
        queue: &str,
        id: Option<&str>,
        now_ms: u64,
    ) -> Result<QueueResponse, StoreError> {
        let mut stats = match self.load(queue)? {
            Live::Gone => return Ok(QueueResponse::NotFound),
            Live::Deleting => return Ok(QueueResponse::Deleting),
            Live::Ok(_, s) => s,
        };
        let (metas, done) = self.pick_dead(queue, id)?;
        let Some(metas) = metas else {
            return Ok(QueueResponse::MessageNotFound);
        };
        let count = metas.len() as u64;
        for mut meta in metas {
            let seq = meta.sequence;
            self.batch.delete(seq_key("x", queue, seq));
            stats.dead_letters = stats.dead_letters.saturating_sub(1);
            stats.dead_bytes = stats.dead_bytes.saturating_sub(meta.body_len);
            meta.dead_reason = None;
            meta.dead_excerpt = None;
            meta.delivery_count = 0;
            meta.visible_at_ms = now_ms;
            // The body stays at `qb`, where it was while the message was dead.
            self.ix.add_live(queue, now_ms, seq, &meta.id);
            if let Some(okey) = &meta.ordering_key {
                self.ix.add_order(queue, okey, seq);
            }
            stats.depth += 1;
            stats.bytes += meta.body_len;
            self.put_stored(
                queue,
                &Stored {
                    meta,
                    lease: None,
                    body: None,
                    blob: None,
                },
            );
        }
        self.put_stats(queue, &stats);
        Ok(QueueResponse::DeadLetters { count, done })
    }

    /// Removes dead letters (one by id, or up to [`CHUNK_LIMIT`]).
    pub fn purge_dead(
        &mut self,
        queue: &str,
        id: Option<&str>,
    ) -> Result<QueueResponse, StoreError> {
        let mut stats = match self.load(queue)? {
            Live::Gone => return Ok(QueueResponse::NotFound),
            Live::Deleting => return Ok(QueueResponse::Deleting),
            Live::Ok(_, s) => s,
        };
        let (metas, done) = self.pick_dead(queue, id)?;
        let Some(metas) = metas else {
            return Ok(QueueResponse::MessageNotFound);
        };
        let count = metas.len() as u64;
        for meta in metas {
            let seq = meta.sequence;
            self.batch.delete(seq_key("x", queue, seq));
            self.batch.delete(seq_key("b", queue, seq));
            self.ix.queue_mut(queue).ids.remove(&meta.id);
            stats.dead_letters = stats.dead_letters.saturating_sub(1);
            stats.dead_bytes = stats.dead_bytes.saturating_sub(meta.body_len);
        }
        self.put_stats(queue, &stats);
        Ok(QueueResponse::DeadLetters { count, done })
    }

    /// The dead letters a redrive/purge acts on; `None` when the named one is not dead.
    #[allow(clippy::type_complexity)]
    fn pick_dead(
        &mut self,
        queue: &str,
        id: Option<&str>,
    ) -> Result<(Option<Vec<MessageMeta>>, bool), StoreError> {
        match id {
            Some(id) => {
                let Some(seq) = self.ix.seq_of(queue, id) else {
                    return Ok((None, true));
                };
                let m: Option<MessageMeta> = get(
                    self.kv,
                    self.batch,
                    &seq_key("x", queue, seq),
                    "dead letter",
                )?;
                Ok((m.map(|m| vec![m]), true))
            }
            None => {
                let from = qk("x", queue, &[]);
                let found =
                    scan_through(self.kv, self.batch, &from, &prefix_end(&from), CHUNK_LIMIT)?;
                let done = found.len() < CHUNK_LIMIT;
                let metas = found
                    .into_iter()
                    .map(|(_, v)| decode(&v).map_err(|e| corrupt("dead letter", e)))
                    .collect::<Result<Vec<MessageMeta>, _>>()?;
                Ok((Some(metas), done))
            }
        }
    }
}

#[cfg(test)]
mod tests;
