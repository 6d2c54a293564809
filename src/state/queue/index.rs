//! The queue state's derived indexes, kept in memory: which messages are visible when, which
//! id is which sequence, which messages share an ordering key, when dedup entries, leases
//! and retained traces expire, and where in its group each message's record lies.
//!
//! Why in memory: each of these used to be a key of its own in the store, so a message's life
//! cost about twenty store writes, and the store's write path was most of the node's CPU. They
//! are pure functions of the stored records (`qn`, `qg`, `qu`, `qx`, `qd`, `qf`, `qh`), so they
//! need no durability of their own: [`Indexes::load`] rebuilds them from the store when the
//! node opens and after a snapshot replaced the state, and apply keeps them in step with every
//! batch it writes. Apply updates them before its batch reaches the store (the node stops if
//! that write fails), so a reader on another thread may see an index entry whose record is not
//! stored yet: readers treat a missing record as "not there yet".
//!
//! Queue configurations (`qc`) are kept here too, as shared copies: every enqueue reads its
//! queue's configuration twice (the ingress, to find the dedup key and limits; apply, to
//! check caps), and decoding it from the store each time was about 6% of a loaded node's CPU.
//!
//! One owner writes: the state machine, on the Raft driver thread, under the write lock.
//! Handlers (long-poll receive, the push dispatcher, traces) take the read lock briefly.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::QueueEntry;

/// The stored record a retained trace lives in.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum TraceRecord {
    /// `qf/<index><part>`: traces of messages the command at Raft index `index` finished
    /// (a command finishing more than `MAX_TRACES_PER_RECORD` writes several parts).
    Batch { index: u64, part: u32 },
    /// `qh/<id>`: one message's trace, as written before 2026-12-03 (read and swept, no
    /// longer written).
    Single(String),
}

/// The indexes of one queue.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct QueueIdx {
    /// `(visible_at_ms, seq)` of every live message: leasing moves a message to its lock
    /// deadline, so an expired lock makes it visible again with no extra work.
    pub ready: BTreeSet<(u64, u64)>,
    /// Message id -> sequence, for live messages and dead letters.
    pub ids: HashMap<String, u64>,
    /// Ordering key -> live sequences of that key (per-key ordering).
    pub order: HashMap<String, BTreeSet<u64>>,
    /// Blob (its first sequence) -> live messages whose body is in it; the last one out
    /// deletes the blob (and the group of the same first sequence, if any).
    pub blobs: HashMap<u64, u32>,
    /// Group (its first sequence) -> where its messages' records lie in it and which of them
    /// have left it: a message without a record of its own at `qn` reads its record there.
    pub groups: BTreeMap<u64, Group>,
}

/// One group's place table and its left-the-group bits (as stored at `qu`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Group {
    /// By sequence from the group's first.
    pub places: Vec<RecordAt>,
    /// Bit `i` (byte `i / 8`, bit `i % 8`) set: message `first + i` has finished (completed,
    /// expired, dead-lettered); one redriven from the dead letters lives on at `qn` only.
    pub left: Vec<u8>,
}

impl Group {
    /// A group of `places.len()` messages; `left`: its stored bits (`None`: none left yet).
    pub fn new(places: Vec<RecordAt>, left: Option<Vec<u8>>) -> Group {
        let mut left = left.unwrap_or_default();
        left.resize(places.len().div_ceil(8), 0);
        Group { places, left }
    }

    fn has_left(&self, i: usize) -> bool {
        self.left
            .get(i / 8)
            .is_some_and(|b| b & (1 << (i % 8)) != 0)
    }
}

/// Where one message's record lies in its group's value, and its CRC-32 (the value log
/// checks whole values, and a record is read alone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordAt {
    pub offset: u32,
    pub len: u32,
    pub crc: u32,
}

/// The derived indexes of every queue, plus the cluster-wide expiry indexes the sweep walks.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Indexes {
    pub(crate) queues: HashMap<String, QueueIdx>,
    /// Queue name -> its stored configuration entry (`qc`), deleting ones included.
    pub(crate) configs: HashMap<String, Arc<QueueEntry>>,
    /// `(expires_at_ms, queue, dedup key)` of every dedup entry.
    pub(crate) dedup_expiry: BTreeSet<(u64, String, String)>,
    /// `(deadline_ms, queue, seq)` of every held lease (the sweep clears expired ones so
    /// `in_flight` counts only live locks).
    pub(crate) lease_expiry: BTreeSet<(u64, String, u64)>,
    /// `(until_ms, record)` of every stored trace record -> the ids whose traces it holds, so
    /// the sweep forgets them without reading the record.
    pub(crate) trace_expiry: BTreeMap<(u64, TraceRecord), Vec<String>>,
    /// Message id -> the record holding its retained trace; its size is the retained-trace
    /// count. Whether a message already has a trace is asked once per finished message, and a
    /// store lookup of a key that is not there cost about 7% of a draining node's CPU.
    pub(crate) traced: HashMap<String, TraceRecord>,
}

impl Indexes {
    /// The stored entry of queue `name` (as of the last applied command), if any.
    pub fn queue_entry(&self, name: &str) -> Option<Arc<QueueEntry>> {
        self.configs.get(name).cloned()
    }

    /// Every stored queue entry, in no particular order.
    pub fn queue_entries(&self) -> impl Iterator<Item = (&String, &Arc<QueueEntry>)> {
        self.configs.iter()
    }

    pub(crate) fn queue(&self, name: &str) -> Option<&QueueIdx> {
        self.queues.get(name)
    }

    pub(crate) fn queue_mut(&mut self, name: &str) -> &mut QueueIdx {
        self.queues.entry(name.to_string()).or_default()
    }

    /// Notes that `record`, kept until `until_ms`, holds the traces of `ids`.
    pub(crate) fn add_traces(&mut self, until_ms: u64, record: TraceRecord, ids: Vec<String>) {
        for id in &ids {
            self.traced.insert(id.clone(), record.clone());
        }
        self.trace_expiry
            .entry((until_ms, record))
            .or_default()
            .extend(ids);
    }

    /// Forgets the trace record that expires first and the ids it holds; returns it so the
    /// caller deletes it.
    pub(crate) fn pop_oldest_traces(&mut self) -> Option<TraceRecord> {
        let ((_, record), ids) = self.trace_expiry.pop_first()?;
        for id in ids {
            if self.traced.get(&id) == Some(&record) {
                self.traced.remove(&id);
            }
        }
        Some(record)
    }

    pub(crate) fn seq_of(&self, queue: &str, id: &str) -> Option<u64> {
        self.queue(queue).and_then(|q| q.ids.get(id).copied())
    }

    /// True while `seq` is the oldest live message of ordering key `okey` (or the key has none).
    pub(crate) fn first_of_key(&self, queue: &str, okey: &str, seq: u64) -> bool {
        self.queue(queue)
            .and_then(|q| q.order.get(okey))
            .and_then(|s| s.first())
            .is_none_or(|first| *first == seq)
    }

    /// Up to `limit` ready entries of `queue` visible at `now_ms`, oldest first.
    pub(crate) fn visible(&self, queue: &str, now_ms: u64, limit: usize) -> Vec<(u64, u64)> {
        self.queue(queue)
            .map(|q| {
                q.ready
                    .range(..(now_ms.saturating_add(1), 0))
                    .take(limit)
                    .copied()
                    .collect()
            })
            .unwrap_or_default()
    }

    pub(crate) fn add_live(&mut self, queue: &str, visible_at_ms: u64, seq: u64, id: &str) {
        let q = self.queue_mut(queue);
        q.ready.insert((visible_at_ms, seq));
        q.ids.insert(id.to_string(), seq);
    }

    pub(crate) fn add_blob_refs(&mut self, queue: &str, blob: u64, n: u32) {
        *self.queue_mut(queue).blobs.entry(blob).or_default() += n;
    }

    /// One reader of `blob` less; true when it was the last (the blob is to be deleted).
    pub(crate) fn release_blob_ref(&mut self, queue: &str, blob: u64) -> bool {
        let q = self.queue_mut(queue);
        let Some(n) = q.blobs.get_mut(&blob) else {
            // Not counted (it cannot happen while the indexes match the records): keep the
            // blob rather than delete a body someone may still read.
            return false;
        };
        *n = n.saturating_sub(1);
        if *n == 0 {
            q.blobs.remove(&blob);
            return true;
        }
        false
    }

    /// The group holding message `seq`'s record, and where in it: `(first sequence, place)`.
    /// `None` too once the message has left its group.
    pub(crate) fn group_record(&self, queue: &str, seq: u64) -> Option<(u64, RecordAt)> {
        let (first, g) = self.queue(queue)?.groups.range(..=seq).next_back()?;
        let i = usize::try_from(seq - first).ok()?;
        let at = g.places.get(i)?;
        (!g.has_left(i)).then_some((*first, *at))
    }

    /// Marks message `seq` as gone from its group, if it is in one that it had not left:
    /// returns the group's first sequence and its bits to store.
    pub(crate) fn leave_group(&mut self, queue: &str, seq: u64) -> Option<(u64, Vec<u8>)> {
        let q = self.queues.get_mut(queue)?;
        let (first, g) = q.groups.range_mut(..=seq).next_back()?;
        let i = usize::try_from(seq - first).ok()?;
        if i >= g.places.len() || g.has_left(i) {
            return None;
        }
        g.left[i / 8] |= 1 << (i % 8);
        Some((*first, g.left.clone()))
    }

    pub(crate) fn add_order(&mut self, queue: &str, okey: &str, seq: u64) {
        self.queue_mut(queue)
            .order
            .entry(okey.to_string())
            .or_default()
            .insert(seq);
    }

    pub(crate) fn remove_order(&mut self, queue: &str, okey: &str, seq: u64) {
        let q = self.queue_mut(queue);
        if let Some(s) = q.order.get_mut(okey) {
            s.remove(&seq);
            if s.is_empty() {
                q.order.remove(okey);
            }
        }
    }

    pub(crate) fn move_ready(&mut self, queue: &str, seq: u64, from_ms: u64, to_ms: u64) {
        let q = self.queue_mut(queue);
        q.ready.remove(&(from_ms, seq));
        q.ready.insert((to_ms, seq));
    }
}

/// The indexes as shared between the state machine (writer) and the handlers (readers).
#[derive(Debug, Clone, Default)]
pub struct SharedIndex(Arc<RwLock<Indexes>>);

impl SharedIndex {
    pub fn new(ix: Indexes) -> SharedIndex {
        SharedIndex(Arc::new(RwLock::new(ix)))
    }

    /// A poisoned lock means a panic mid-update on the driver thread, which stops the node;
    /// readers still get the data rather than a second panic.
    pub fn read(&self) -> RwLockReadGuard<'_, Indexes> {
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn write(&self) -> RwLockWriteGuard<'_, Indexes> {
        self.0.write().unwrap_or_else(|e| e.into_inner())
    }
}
