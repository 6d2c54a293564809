//! The Raft driver thread: tick, step, propose, and process `Ready` in raft-rs's order.
//!
//! It runs on its own OS thread, not a tokio worker, because it fsyncs. Inputs arrive on one
//! bounded channel; the loop drains up to [`MAX_INPUTS_PER_READY`] of them before handling a
//! Ready, so concurrent proposals share one append batch and one fsync (group commit).
//!
//! The log is the durable truth (segment files, `super::log`): one fdatasync per Ready. The
//! state store is written on apply without a flush of its own; a helper thread flushes it
//! ahead of each compaction ([`StateFlusher`]), and a crash replays the log from the state's
//! last durable applied index.
//!
//! Within a Ready, a leader applies committed entries (answering their proposers) before it
//! persists the Ready's new entries, as raft-rs documents: a write is answered one fsync
//! sooner, never before it is durable on a majority. A follower persists and acknowledges
//! first, then applies.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use raft::prelude::*;
use raft::{RawNode, StateRole};
use slog::Drain;
use tokio::sync::{oneshot, watch};

use super::storage::{LogPosition, RaftStorage};
use super::{
    ElectionRecord, NodeStatus, PeerStatus, ProposeError, Role, StateMachine, MAX_PROPOSAL_BYTES,
};
use crate::metrics::M;
use crate::store::{Store, StoreError, WriteBatch};

/// Inputs queued for the driver before senders wait (or `Busy` for try-senders).
pub const DRIVER_INBOX_CAPACITY: usize = 16_384;
/// Inputs handled before the loop processes a Ready; bounds one group-commit batch.
const MAX_INPUTS_PER_READY: usize = 4_096;
/// How often the published status is refreshed while nothing structural changes.
const STATUS_REFRESH: Duration = Duration::from_millis(20);
/// Log bytes per append message to a follower.
const MAX_APPEND_BYTES: u64 = 1024 * 1024;
/// Append messages in flight per follower.
const MAX_INFLIGHT_APPENDS: usize = 256;
/// Uncommitted log bytes a leader accepts before refusing proposals.
const MAX_UNCOMMITTED_BYTES: u64 = 512 * 1024 * 1024;
/// Log payload bytes that trigger a compaction before `compact_every_entries` is reached:
/// coalesced queue commands are large, and replay on restart reads the whole log.
const MAX_LOG_BYTES: u64 = 256 * 1024 * 1024;
/// Most log payload bytes kept behind the applied index for lagging followers.
const KEEP_LOG_BYTES: u64 = 64 * 1024 * 1024;
/// Committed log bytes applied per Ready (one store batch); bounds catch-up batches.
const MAX_APPLY_BYTES_PER_READY: u64 = 64 * 1024 * 1024;
/// A read waiting longer than this for its ReadIndex is dropped (its caller has timed out).
const READ_INDEX_EXPIRY: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct DriverConfig {
    pub id: u64,
    pub voters: Vec<u64>,
    pub tick_ms: u64,
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    pub compact_every_entries: u64,
    pub keep_entries: u64,
    /// Where snapshot checkpoints and staged snapshots live (see `raft::snapfile`).
    pub snapshot_dir: std::path::PathBuf,
    /// Where the log's segment files live (see `raft::log`).
    pub log_dir: std::path::PathBuf,
    /// Raft log segment size (`raft.log_segment_bytes`).
    pub log_segment_bytes: u64,
    /// Lowest snapshot index a follower is fetching, set by the transfer layer
    /// (`storage::NO_PIN` when none); compaction stops there.
    pub snapshot_pin: Arc<std::sync::atomic::AtomicU64>,
}

/// Where the driver sends Raft messages. Must not block: drop and count when a peer is slow.
pub trait Outbox: Send + 'static {
    fn send(&self, msgs: Vec<Message>);
}

type Reply<T> = oneshot::Sender<Result<T, ProposeError>>;

pub(crate) enum Input {
    Propose {
        data: Vec<u8>,
        reply: Reply<Vec<u8>>,
    },
    /// A peer's message, with the transport's memory budget share it holds until stepped.
    Step(Box<Message>, Option<tokio::sync::OwnedSemaphorePermit>),
    ReadIndex {
        reply: Reply<u64>,
    },
    TransferLeader {
        to: Option<u64>,
        reply: Reply<u64>,
    },
    Unreachable(u64),
    SnapshotDone {
        to: u64,
        ok: bool,
    },
    Shutdown,
}

/// A cheap, cloneable way to talk to the driver.
#[derive(Clone)]
pub struct DriverHandle {
    tx: flume::Sender<Input>,
    status: watch::Receiver<NodeStatus>,
}

impl DriverHandle {
    /// Proposes `data`; resolves once it is applied locally (the leader) or is known dropped.
    pub async fn propose(&self, data: Vec<u8>) -> Result<Vec<u8>, ProposeError> {
        if data.len() > MAX_PROPOSAL_BYTES {
            return Err(ProposeError::TooLarge(data.len()));
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send_async(Input::Propose { data, reply })
            .await
            .map_err(|_| ProposeError::Stopped)?;
        rx.await.map_err(|_| ProposeError::Stopped)?
    }

    /// A linearizable read point: resolves with an index once this node has applied it.
    pub async fn read_index(&self) -> Result<u64, ProposeError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send_async(Input::ReadIndex { reply })
            .await
            .map_err(|_| ProposeError::Stopped)?;
        rx.await.map_err(|_| ProposeError::Stopped)?
    }

    pub async fn transfer_leader(&self, to: Option<u64>) -> Result<u64, ProposeError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send_async(Input::TransferLeader { to, reply })
            .await
            .map_err(|_| ProposeError::Stopped)?;
        rx.await.map_err(|_| ProposeError::Stopped)?
    }

    /// Delivers a message from a peer; waits when the driver is saturated (backpressure).
    /// `permit` is released once the driver has stepped the message.
    pub async fn step(
        &self,
        msg: Message,
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> Result<(), ProposeError> {
        self.tx
            .send_async(Input::Step(Box::new(msg), permit))
            .await
            .map_err(|_| ProposeError::Stopped)
    }

    pub fn report_unreachable(&self, peer: u64) {
        let _ = self.tx.try_send(Input::Unreachable(peer));
    }

    pub fn report_snapshot(&self, to: u64, ok: bool) {
        let _ = self.tx.try_send(Input::SnapshotDone { to, ok });
    }

    pub fn status(&self) -> NodeStatus {
        self.status.borrow().clone()
    }

    /// The leader this node knows of, without cloning the whole status (hot paths ask).
    pub fn leader(&self) -> Option<u64> {
        self.status.borrow().leader
    }

    /// True while this node is the leader it knows of.
    pub fn is_leader(&self) -> bool {
        let s = self.status.borrow();
        s.leader == Some(s.id)
    }

    pub fn watch_status(&self) -> watch::Receiver<NodeStatus> {
        self.status.clone()
    }

    /// Asks the driver to flush and stop; returns at once.
    pub fn shutdown(&self) {
        let _ = self.tx.try_send(Input::Shutdown);
    }
}

struct Pending {
    term: u64,
    reply: Reply<Vec<u8>>,
    started: Instant,
}

struct PendingRead {
    reply: Reply<u64>,
    started: Instant,
}

/// A thread that flushes the state store when asked and reports what became durable.
///
/// The state store is written on apply without a flush (the log is the durable truth), and
/// a flush after thousands of applies takes tens of milliseconds: on the driver thread that
/// stalled every write behind it. One flush at a time is in flight.
struct StateFlusher {
    ask: flume::Sender<FlushPoint>,
    done: flume::Receiver<Result<FlushPoint, StoreError>>,
    in_flight: bool,
}

/// What a flush covers: the applied index and snapshot point written before it started.
#[derive(Debug, Clone, Copy)]
struct FlushPoint {
    applied: u64,
    snapshot_point: u64,
}

impl StateFlusher {
    fn start(kv: Arc<dyn Store>) -> Result<StateFlusher, DriverError> {
        let (ask, asks) = flume::bounded::<FlushPoint>(1);
        let (done_tx, done) = flume::bounded(1);
        crate::spawn_background("state-flush", move || {
            for point in asks {
                let t = Instant::now();
                let r = kv.flush().map(|_| point);
                M.state_flush_seconds.observe(t.elapsed().as_secs_f64());
                if done_tx.send(r).is_err() {
                    return;
                }
            }
        })
        .map_err(|e| {
            DriverError::Store(StoreError::Engine(format!(
                "spawning the state flush thread: {e}"
            )))
        })?;
        Ok(StateFlusher {
            ask,
            done,
            in_flight: false,
        })
    }

    /// Starts a flush covering `point` unless one is running.
    fn request(&mut self, point: FlushPoint) {
        if !self.in_flight && self.ask.try_send(point).is_ok() {
            self.in_flight = true;
        }
    }

    /// The point of a flush that finished since the last call, if any.
    fn finished(&mut self) -> Result<Option<FlushPoint>, StoreError> {
        match self.done.try_recv() {
            Ok(r) => {
                self.in_flight = false;
                r.map(Some)
            }
            Err(_) => Ok(None),
        }
    }
}

struct Driver<S: StateMachine, O: Outbox> {
    cfg: DriverConfig,
    raw: RawNode<RaftStorage>,
    sm: S,
    outbox: O,
    rx: flume::Receiver<Input>,
    status_tx: watch::Sender<NodeStatus>,
    /// Proposals awaiting their entry, by log index.
    pending: HashMap<u64, Pending>,
    /// ReadIndex requests awaiting their read state, by request id.
    reads: HashMap<u64, PendingRead>,
    /// Reads whose index is known, waiting for the applied index to reach it.
    read_waiters: Vec<(u64, Reply<u64>)>,
    next_read_id: u64,
    last_contact: HashMap<u64, Instant>,
    /// Flushes the state store off this thread, so compaction never stalls the loop.
    flusher: StateFlusher,
    /// The applied index the last finished state flush made durable; compaction stops there.
    durable_applied: u64,
    /// Set when this node learns it lost acknowledged entries: the leader's commit index it
    /// must reach before it votes again.
    lost_log_until: Option<u64>,
    last_status: Instant,
    /// Ticks since start: the Raft clock, against which failovers are measured.
    ticks: u64,
    /// The last leader other than this node, and when (instant and tick) it was last heard.
    followed: Option<Followed>,
    /// How this node last became leader (published in the status).
    last_election: Option<ElectionRecord>,
}

/// The leader a follower last heard from: the start of a failover, should this node win.
#[derive(Clone, Copy)]
struct Followed {
    leader: u64,
    term: u64,
    heard_at: Instant,
    heard_tick: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
}

/// Opens Raft over `kv` and starts the driver thread.
pub fn start<S: StateMachine, O: Outbox>(
    cfg: DriverConfig,
    kv: Arc<dyn Store>,
    sm: S,
    outbox: O,
) -> Result<(DriverHandle, std::thread::JoinHandle<()>), DriverError> {
    let kv_for_flusher = kv.clone();
    let mut storage = RaftStorage::open(
        kv,
        &cfg.voters,
        &cfg.snapshot_dir,
        &cfg.log_dir,
        cfg.log_segment_bytes,
        cfg.snapshot_pin.clone(),
    )?;
    repair_commit(&mut storage)?;
    let applied = storage.applied().index;
    let raft_cfg = raft::Config {
        id: cfg.id,
        election_tick: cfg.election_ticks,
        heartbeat_tick: cfg.heartbeat_ticks,
        applied,
        max_size_per_msg: MAX_APPEND_BYTES,
        max_inflight_msgs: MAX_INFLIGHT_APPENDS,
        check_quorum: true,
        pre_vote: true,
        max_uncommitted_size: MAX_UNCOMMITTED_BYTES,
        max_committed_size_per_ready: MAX_APPLY_BYTES_PER_READY,
        ..Default::default()
    };
    raft_cfg.validate()?;
    let logger = slog::Logger::root(slog_stdlog::StdLog.fuse(), slog::o!("raft_id" => cfg.id));
    let raw = RawNode::new(&raft_cfg, storage, &logger)?;
    let (tx, rx) = flume::bounded(DRIVER_INBOX_CAPACITY);
    let (status_tx, status_rx) = watch::channel(NodeStatus {
        id: cfg.id,
        ..Default::default()
    });
    let driver = Driver {
        cfg,
        raw,
        sm,
        outbox,
        rx,
        status_tx,
        pending: HashMap::new(),
        reads: HashMap::new(),
        read_waiters: Vec::new(),
        next_read_id: 1,
        last_contact: HashMap::new(),
        flusher: StateFlusher::start(kv_for_flusher)?,
        durable_applied: applied,
        lost_log_until: None,
        last_status: Instant::now(),
        ticks: 0,
        followed: None,
        last_election: None,
    };
    let join = std::thread::Builder::new()
        .name("raft-driver".into())
        .spawn(move || driver.run())
        .map_err(|e| {
            DriverError::Store(StoreError::Engine(format!(
                "spawning the driver thread: {e}"
            )))
        })?;
    Ok((
        DriverHandle {
            tx,
            status: status_rx,
        },
        join,
    ))
}

/// Applied entries were committed; if a crash left the stored commit below them, raise it.
fn repair_commit(storage: &mut RaftStorage) -> Result<(), StoreError> {
    let applied = storage.applied().index;
    if storage.hard_state().commit >= applied {
        return Ok(());
    }
    storage.set_commit(applied)?;
    storage.sync(true)
}

fn role_of(r: StateRole) -> Role {
    match r {
        StateRole::Follower => Role::Follower,
        StateRole::PreCandidate => Role::PreCandidate,
        StateRole::Candidate => Role::Candidate,
        StateRole::Leader => Role::Leader,
    }
}

impl<S: StateMachine, O: Outbox> Driver<S, O> {
    fn run(mut self) {
        let tick = Duration::from_millis(self.cfg.tick_ms);
        let mut next_tick = Instant::now() + tick;
        let mut running = true;
        let mut building = false;
        while running {
            if Instant::now() >= next_tick {
                self.raw.tick();
                self.ticks += 1;
                self.expire_reads();
                next_tick = Instant::now() + tick;
            }
            // While a checkpoint is being built, do not idle until the tick: build on.
            let wait_until = if building { Instant::now() } else { next_tick };
            match self.rx.recv_deadline(wait_until) {
                Ok(input) => running = self.handle(input),
                Err(flume::RecvTimeoutError::Timeout) => {}
                Err(flume::RecvTimeoutError::Disconnected) => running = false,
            }
            for _ in 0..MAX_INPUTS_PER_READY {
                if !running {
                    break;
                }
                match self.rx.try_recv() {
                    Ok(input) => running = self.handle(input),
                    Err(_) => break,
                }
            }
            if let Err(e) = self.on_ready() {
                // A storage failure is not deterministic: stop rather than diverge.
                tracing::error!(error = %e, "raft driver storage failure; stopping the node");
                running = false;
            }
            building = self.raw.mut_store().checkpoint_work();
            self.publish_status(false);
        }
        self.stop();
    }

    fn leader(&self) -> Option<u64> {
        match self.raw.raft.leader_id {
            0 => None,
            id => Some(id),
        }
    }

    /// Handles one input; returns false to stop the loop.
    fn handle(&mut self, input: Input) -> bool {
        match input {
            Input::Propose { data, reply } => self.propose(data, reply),
            Input::Step(m, _permit) => self.step(*m),
            Input::ReadIndex { reply } => self.read_index(reply),
            Input::TransferLeader { to, reply } => self.transfer_leader(to, reply),
            Input::Unreachable(peer) => self.raw.report_unreachable(peer),
            Input::SnapshotDone { to, ok } => {
                let status = if ok {
                    SnapshotStatus::Finish
                } else {
                    SnapshotStatus::Failure
                };
                self.raw.report_snapshot(to, status);
            }
            Input::Shutdown => return false,
        }
        true
    }

    fn step(&mut self, mut m: Message) {
        let (from, now) = (m.from, Instant::now());
        self.last_contact.insert(from, now);
        let lost = self.guard_lost_log(&mut m);
        if self.abstaining()
            && matches!(
                m.get_msg_type(),
                MessageType::MsgRequestVote | MessageType::MsgRequestPreVote
            )
        {
            tracing::debug!(
                from = m.from,
                "not voting while catching up after losing the log"
            );
            return;
        }
        self.reset_peer_that_lost_log(&m);
        if let Err(e) = self.raw.step(m) {
            tracing::debug!(error = %e, "dropped a peer message");
        }
        if from == self.raw.raft.leader_id && from != self.cfg.id {
            self.followed = Some(Followed {
                leader: from,
                term: self.raw.raft.term,
                heard_at: now,
                heard_tick: self.ticks,
            });
        }
        if let Some(commit) = lost {
            self.tell_leader_log_lost(commit);
        }
    }

    /// A heartbeat claiming a commit index beyond our log means this node lost entries it had
    /// acknowledged (its data dir was wiped or replaced). Raft would panic committing entries it
    /// does not hold; instead commit nothing new, abstain from votes until caught up, and
    /// return the commit index so the leader can be told to resend.
    fn guard_lost_log(&mut self, m: &mut Message) -> Option<u64> {
        if m.get_msg_type() != MessageType::MsgHeartbeat
            || m.commit <= self.raw.raft.raft_log.last_index()
        {
            return None;
        }
        if self.lost_log_until.is_none() {
            tracing::warn!(
                leader = m.from,
                leader_commit = m.commit,
                last_index = self.raw.raft.raft_log.last_index(),
                "this node's log is behind what it acknowledged (wiped data dir?); catching up from the leader and not voting until then"
            );
        }
        self.lost_log_until = Some(self.lost_log_until.unwrap_or(0).max(m.commit));
        m.commit = self.raw.raft.raft_log.committed;
        self.lost_log_until
    }

    fn abstaining(&mut self) -> bool {
        match self.lost_log_until {
            Some(until) if self.raw.store().applied().index >= until => {
                tracing::info!(
                    applied = until,
                    "caught up after losing the log; voting again"
                );
                self.lost_log_until = None;
                false
            }
            Some(_) => true,
            None => false,
        }
    }

    /// Answers the leader as if its last append were rejected at our real last index, so the
    /// leader's progress for us (which still counts the lost entries) gets reset.
    fn tell_leader_log_lost(&mut self, leader_commit: u64) {
        let leader = self.raw.raft.leader_id;
        if leader == 0 || leader == self.cfg.id {
            return;
        }
        let mut reply = Message::default();
        reply.set_msg_type(MessageType::MsgAppendResponse);
        reply.to = leader;
        reply.from = self.cfg.id;
        reply.term = self.raw.raft.term;
        reply.index = leader_commit;
        reply.reject = true;
        reply.reject_hint = self.raw.raft.raft_log.last_index();
        self.outbox.send(vec![reply]);
    }

    /// On the leader: a follower rejecting below what it had acknowledged lost its log.
    /// raft-rs would ignore that as a stale rejection forever; start it over from probing.
    fn reset_peer_that_lost_log(&mut self, m: &Message) {
        if m.get_msg_type() != MessageType::MsgAppendResponse
            || !m.reject
            || self.raw.raft.state != StateRole::Leader
        {
            return;
        }
        if let Some(pr) = self.raw.raft.mut_prs().get_mut(m.from) {
            if m.reject_hint < pr.matched {
                tracing::warn!(
                    peer = m.from,
                    acknowledged = pr.matched,
                    has = m.reject_hint,
                    "peer lost log entries it had acknowledged; resending from the start"
                );
                pr.matched = 0;
                pr.become_probe();
            }
        }
    }

    fn propose(&mut self, data: Vec<u8>, reply: Reply<Vec<u8>>) {
        if self.raw.raft.state != StateRole::Leader {
            let _ = reply.send(Err(ProposeError::NotLeader {
                leader: self.leader(),
            }));
            return;
        }
        let before = self.raw.raft.raft_log.last_index();
        let result = self.raw.propose(vec![], data);
        let index = self.raw.raft.raft_log.last_index();
        match result {
            Ok(()) if index > before => {
                let p = Pending {
                    term: self.raw.raft.term,
                    reply,
                    started: Instant::now(),
                };
                self.pending.insert(index, p);
            }
            Ok(()) | Err(raft::Error::ProposalDropped) => {
                let _ = reply.send(Err(ProposeError::NotLeader {
                    leader: self.leader(),
                }));
            }
            Err(e) => {
                tracing::warn!(error = %e, "proposal refused");
                let _ = reply.send(Err(ProposeError::Dropped));
            }
        }
    }

    fn read_index(&mut self, reply: Reply<u64>) {
        if self.leader().is_none() {
            let _ = reply.send(Err(ProposeError::NotLeader { leader: None }));
            return;
        }
        let id = self.next_read_id;
        self.next_read_id += 1;
        self.raw.read_index(id.to_be_bytes().to_vec());
        self.reads.insert(
            id,
            PendingRead {
                reply,
                started: Instant::now(),
            },
        );
    }

    fn expire_reads(&mut self) {
        self.reads
            .retain(|_, r| r.started.elapsed() < READ_INDEX_EXPIRY && !r.reply.is_closed());
        self.pending
            .retain(|_, p| !p.reply.is_closed() || p.started.elapsed() < READ_INDEX_EXPIRY);
    }

    fn transfer_leader(&mut self, to: Option<u64>, reply: Reply<u64>) {
        if self.raw.raft.state != StateRole::Leader {
            let _ = reply.send(Err(ProposeError::NotLeader {
                leader: self.leader(),
            }));
            return;
        }
        let me = self.cfg.id;
        let target = to.or_else(|| {
            let prs = self.raw.raft.prs();
            prs.iter()
                .filter(|(id, _)| **id != me)
                .max_by_key(|(_, pr)| pr.matched)
                .map(|(id, _)| *id)
        });
        match target {
            Some(t) if t != me && self.cfg.voters.contains(&t) => {
                self.raw.transfer_leader(t);
                let _ = reply.send(Ok(t));
            }
            _ => {
                let _ = reply.send(Err(ProposeError::NotLeader { leader: Some(me) }));
            }
        }
    }

    /// One round of raft-rs's Ready protocol, in its documented order.
    fn on_ready(&mut self) -> Result<(), DriverError> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut ready = self.raw.ready();
        if !ready.messages().is_empty() {
            self.send(ready.take_messages());
        }
        if !ready.snapshot().is_empty() {
            self.raw.mut_store().install_snapshot(ready.snapshot())?;
            self.sm.restored();
            M.snapshots_installed.inc();
            tracing::info!(
                index = ready.snapshot().get_metadata().index,
                "installed snapshot from leader"
            );
        }
        // raft-rs only hands out committed entries already persisted here, so they may be
        // applied before or after this Ready's new entries are made durable. A leader applies
        // first: its proposers are answered without waiting for that fsync. A follower
        // persists first: its acknowledgement (what the leader's commit waits for) then does
        // not wait for apply.
        let committed = ready.take_committed_entries();
        let leading = self.raw.raft.state == StateRole::Leader;
        if leading {
            self.apply(committed)?;
            self.persist(&mut ready)?;
            self.send(ready.take_persisted_messages());
        } else {
            self.persist(&mut ready)?;
            self.send(ready.take_persisted_messages());
            self.apply(committed)?;
        }
        self.serve_read_states(ready.take_read_states());
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            // Written with the next Ready's records; a lost commit index is only relearned.
            self.raw.mut_store().set_commit(commit)?;
        }
        self.send(light.take_messages());
        self.apply(light.take_committed_entries())?;
        self.raw.advance_apply();
        self.maybe_compact()?;
        Ok(())
    }

    /// Appends entries and hard state to the log in one write, then one fdatasync if Raft
    /// needs it (group commit: every proposal drained into this Ready shares it).
    fn persist(&mut self, ready: &mut raft::Ready) -> Result<(), DriverError> {
        let entries = ready.entries().len();
        let store = self.raw.mut_store();
        store.append(ready.entries())?;
        if let Some(hs) = ready.hs() {
            store.set_hard_state(hs)?;
        }
        let t = Instant::now();
        store.sync(ready.must_sync())?;
        if ready.must_sync() {
            M.fsync_seconds.observe(t.elapsed().as_secs_f64());
        }
        if entries > 0 {
            M.ready_entries.observe(entries as f64);
        }
        Ok(())
    }

    fn send(&mut self, msgs: Vec<Message>) {
        if msgs.is_empty() {
            return;
        }
        if msgs
            .iter()
            .any(|m| m.get_msg_type() == MessageType::MsgSnapshot)
        {
            M.snapshots_sent.inc();
        }
        self.outbox.send(msgs);
    }

    /// Applies committed entries in one batch with the last applied position, then answers
    /// their proposers (after the write, so no answer precedes its state).
    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), DriverError> {
        let Some(last) = entries.last().map(|e| LogPosition {
            index: e.index,
            term: e.term,
        }) else {
            return Ok(());
        };
        let mut batch = WriteBatch::default();
        let mut answers = Vec::new();
        for e in entries {
            let answer = match e.get_entry_type() {
                EntryType::EntryNormal if e.data.is_empty() => Vec::new(),
                EntryType::EntryNormal => self.sm.apply(e.index, &e.data, &mut batch),
                _ => {
                    tracing::warn!(
                        index = e.index,
                        "ignoring a configuration change entry: membership is static"
                    );
                    Vec::new()
                }
            };
            if let Some(p) = self.pending.remove(&e.index) {
                let outcome = if p.term == e.term {
                    Ok(answer)
                } else {
                    Err(ProposeError::Dropped)
                };
                answers.push((p, outcome));
            }
        }
        let store = self.raw.mut_store();
        store.set_applied(last, &mut batch);
        store.note_applied_batch(&batch);
        store.store().write(batch)?;
        for (p, outcome) in answers {
            M.proposal_seconds
                .observe(p.started.elapsed().as_secs_f64());
            let _ = p.reply.send(outcome);
        }
        self.release_reads();
        Ok(())
    }

    fn serve_read_states(&mut self, states: Vec<ReadState>) {
        for rs in states {
            let Ok(id_bytes) = <[u8; 8]>::try_from(rs.request_ctx.as_slice()) else {
                continue;
            };
            if let Some(r) = self.reads.remove(&u64::from_be_bytes(id_bytes)) {
                self.read_waiters.push((rs.index, r.reply));
            }
        }
        self.release_reads();
    }

    fn release_reads(&mut self) {
        if self.read_waiters.is_empty() {
            return;
        }
        let applied = self.raw.store().applied().index;
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.read_waiters)
            .into_iter()
            .partition(|(i, _)| *i <= applied);
        self.read_waiters = waiting;
        for (index, reply) in ready {
            let _ = reply.send(Ok(index));
        }
    }

    /// Compacts the log every `compact_every_entries`, or sooner once it holds more than
    /// [`MAX_LOG_BYTES`]; keeps `keep_entries` for lagging followers, but no more than
    /// [`KEEP_LOG_BYTES`] of them (a follower further behind gets a snapshot).
    ///
    /// Compaction never passes what a state flush has made durable, and segment files go only
    /// once a flush has made the new snapshot point durable too. Flushes run on the
    /// [`StateFlusher`] thread, one step behind: each compaction asks for the next flush.
    fn maybe_compact(&mut self) -> Result<(), DriverError> {
        if let Some(done) = self.flusher.finished()? {
            self.durable_applied = done.applied;
            self.raw
                .mut_store()
                .delete_segments_through(done.snapshot_point)?;
        }
        let store = self.raw.store();
        let applied = store.applied().index;
        let by_count =
            applied.saturating_sub(store.snapshot_point().index) >= self.cfg.compact_every_entries;
        if !by_count && store.log_bytes() < MAX_LOG_BYTES {
            return Ok(());
        }
        let through = applied
            .saturating_sub(self.cfg.keep_entries)
            .max(store.index_keeping(KEEP_LOG_BYTES))
            .min(self.durable_applied);
        let dropped = self.raw.mut_store().compact(through)?;
        if dropped > 0 {
            M.log_compactions.inc();
            tracing::debug!(through, dropped, "compacted the raft log");
        }
        let store = self.raw.store();
        self.flusher.request(FlushPoint {
            applied: store.applied().index,
            snapshot_point: store.snapshot_point().index,
        });
        Ok(())
    }

    fn publish_status(&mut self, stopped: bool) {
        let r = &self.raw.raft;
        let leader = self.leader();
        let changed = {
            let cur = self.status_tx.borrow();
            cur.role != role_of(r.state) || cur.term != r.term || cur.leader != leader
        };
        if !changed && !stopped && self.last_status.elapsed() < STATUS_REFRESH {
            return;
        }
        // The published role is the driver's record of the last one, so a change to leader
        // is seen here, once.
        if r.state == StateRole::Leader && self.status_tx.borrow().role != Role::Leader {
            self.record_election();
        }
        let r = &self.raw.raft;
        self.last_status = Instant::now();
        let store = self.raw.store();
        let now = Instant::now();
        let is_leader = r.state == StateRole::Leader;
        let peers = self
            .cfg
            .voters
            .iter()
            .filter(|id| **id != self.cfg.id)
            .map(|id| PeerStatus {
                id: *id,
                match_index: if is_leader {
                    r.prs().get(*id).map(|p| p.matched).unwrap_or(0)
                } else {
                    0
                },
                last_contact_ms: self
                    .last_contact
                    .get(id)
                    .map(|t| now.duration_since(*t).as_millis() as u64),
            })
            .collect();
        let status = NodeStatus {
            id: self.cfg.id,
            role: role_of(r.state),
            term: r.term,
            leader,
            commit_index: r.raft_log.committed,
            applied_index: store.applied().index,
            first_index: store.first(),
            last_index: store.last(),
            peers,
            stopped,
            last_election: self.last_election.clone(),
        };
        M.raft_role.set(status.role as i64);
        M.raft_term.set(status.term as i64);
        M.raft_commit_index.set(status.commit_index as i64);
        M.raft_applied_index.set(status.applied_index as i64);
        M.raft_first_index.set(status.first_index as i64);
        M.raft_last_index.set(status.last_index as i64);
        M.raft_leader_id.set(leader.unwrap_or(0) as i64);
        self.status_tx.send_replace(status);
    }

    /// Notes, when this node has just become leader, how long the cluster was without one
    /// as this node saw it: in the status, a log line and the failover histogram.
    fn record_election(&mut self) {
        let followed = self.followed.take();
        let silent = followed.map(|f| f.heard_at.elapsed());
        if let Some(d) = silent {
            M.raft_failover_seconds.observe(d.as_secs_f64());
        }
        let record = ElectionRecord {
            term: self.raw.raft.term,
            previous_leader: followed.map(|f| f.leader),
            leader_silent_ms: silent.map(|d| d.as_millis() as u64),
            leader_silent_ticks: followed.map(|f| self.ticks - f.heard_tick),
            rounds: followed.map(|f| self.raw.raft.term.saturating_sub(f.term)),
        };
        tracing::info!(
            term = record.term,
            previous_leader = ?record.previous_leader,
            leader_silent_ms = ?record.leader_silent_ms,
            leader_silent_ticks = ?record.leader_silent_ticks,
            rounds = ?record.rounds,
            "became leader"
        );
        self.last_election = Some(record);
    }

    /// Fails what is in flight, makes the store durable, and publishes a stopped status.
    fn stop(&mut self) {
        for (_, p) in self.pending.drain() {
            let _ = p.reply.send(Err(ProposeError::Stopped));
        }
        for (_, r) in self.reads.drain() {
            let _ = r.reply.send(Err(ProposeError::Stopped));
        }
        for (_, reply) in self.read_waiters.drain(..) {
            let _ = reply.send(Err(ProposeError::Stopped));
        }
        if let Err(e) = self.raw.mut_store().sync(true) {
            tracing::error!(error = %e, "final log sync failed");
        }
        if let Err(e) = self.raw.store().store().flush() {
            tracing::error!(error = %e, "final flush failed");
        }
        self.publish_status(true);
        tracing::info!("raft driver stopped");
    }
}
