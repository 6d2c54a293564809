//! Coalesces concurrent single-message enqueues to one queue into shared `QueueEnqueue`
//! commands (group commit above Raft).
//!
//! Each enqueue request used to become its own Raft command: its own log entry, its own
//! forwarded request from a follower to the leader, its own read-modify-write of the queue's
//! stats in apply. Under load those per-command costs, not the fsync, bound the rate. Here a
//! request joins its queue's lane; a lane has at most [`MAX_WRITES_PER_QUEUE`] commands in
//! flight ([`MAX_FORWARDS_PER_QUEUE`] on a follower), and whatever arrives while they are in
//! flight leaves together in the next one. An idle lane sends a lone request at once, so
//! coalescing adds no latency at low load.
//!
//! On the leader, the coalesced commands that followers forward join the leader's own lane
//! for their queue as groups ([`Coalescer::enqueue_group`]), so one command carries the
//! messages of the whole cluster and a Ready appends one entry instead of one per node.
//!
//! Single completes of pull consumers (`POST /queues/{q}/messages/{id}:complete`) share
//! commands the same way, as one `QueueSettleMany` per lane trip: each item of it is judged
//! alone, exactly as its own command would have been, and each request gets its own item's
//! answer. Before, every complete was a Raft command of its own, and the peers bench's
//! consume phase (receive 16, complete one by one) ran at 0.31-0.36x the brokers' rate.
//!
//! Semantics are those of the batch endpoint: a command is all or nothing, so when a
//! coalesced command would pass a queue cap, every request in it gets the 429 (nothing
//! stored) and retries; duplicates inside one command are found by apply as usual (the later
//! request answers with the earlier one's id). A group (a forwarded command, itself all or
//! nothing) is never split. An outcome-unknown error reaches every request of the command,
//! exactly as it would have reached each one alone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use super::queue::{enqueue_outcome, propose_enqueue, IngressState};
use crate::api::queues::answer;
use crate::api::{now_ms, ApiError};
use crate::client::Client;
use crate::raft::ProposeError;
use crate::state::queue::{Enqueued, NewMessage, QueueResponse, Settle, MAX_SETTLE_ITEMS};
use crate::state::{decode, encode, Command, Response};

/// Commands in flight per queue from the leader. Small on purpose: requests arriving while
/// they are in flight are what gets coalesced; Raft still group-commits the commands of the
/// three nodes' lanes in one Ready. On the 2-core bench box the nodes are bound by CPU per
/// command, so fewer, fuller commands win: 2026-12-03, 1 in flight carried 10.7 messages per
/// command at 64 clients against 6.3 with 2 (40.5 against 23.3 at 256), and enqueued 1.00-1.17x
/// as many messages per second at 64 clients and 1.02-1.20x at 256, never fewer, in five
/// pairs of runs side by side (p99 a little lower). Where the network and not the CPU is the
/// bound, 2 would overlap one command's round trip with the next.
pub const MAX_WRITES_PER_QUEUE: usize = 1;
/// Commands in flight per queue from a follower (or a node that knows no leader). A
/// follower's command is forwarded to the leader, where it joins the leader's lane and is
/// merged into the leader's next command anyway, so holding it back here only makes the
/// follower's requests wait out a whole forward round trip (the leader lane's wait and the
/// proposal) before they even leave. 2026-12-04, after the group records made enqueues
/// cheaper: 3 against 1 enqueued 1.02-1.11x as many messages per second at 64 clients,
/// 1.08-1.30x at 16 and 1.02-1.19x at 256, at the same CPU per message, in four pairs of runs
/// (2 fell in between; benches/README.md). Before, when the box was bound by CPU per
/// command, 2 was worse.
pub const MAX_FORWARDS_PER_QUEUE: usize = 3;
/// Messages in one coalesced command.
pub const MAX_MESSAGES_PER_WRITE: usize = 512;
/// Body bytes in one coalesced command (well under the Raft proposal limit); a message at
/// least this big travels alone.
pub const MAX_BYTES_PER_WRITE: usize = 4 * 1024 * 1024;
/// Requests waiting in one lane; past it a request is refused with 503 (`overloaded`), not
/// queued without bound. The ingress in-flight limit normally keeps lanes far below it.
pub const MAX_WAITING_PER_QUEUE: usize = 16_384;

/// A group's answer: the command's, with an `Enqueued` answer cut down to the group's part.
type Reply = oneshot::Sender<Result<QueueResponse, ApiError>>;

/// One request's messages (one for a single enqueue; a forwarded command's on the leader).
struct Waiting {
    messages: Vec<NewMessage>,
    reply: Reply,
}

/// One complete: the message, its lock token, and where its item's answer goes.
struct Completing {
    id: String,
    lock_token: String,
    reply: Reply,
}

/// What one command of a lane may carry.
#[derive(Clone, Copy)]
struct Limits {
    items: usize,
    bytes: usize,
}

/// A kind of request that lanes batch into shared commands.
trait Kind: Send + Sized + 'static {
    /// What one command of this kind may carry.
    const LIMITS: Limits;
    /// Items (messages) and body bytes this request adds to a command.
    fn weight(&self) -> (usize, usize);
    /// This kind's lanes on the node.
    fn lanes(c: &Coalescer) -> &Lanes<Self>;
    /// Sends one command for `batch` and answers each of its requests.
    fn write(
        st: &IngressState,
        queue: &str,
        batch: Vec<Self>,
    ) -> impl std::future::Future<Output = ()> + Send;
}

struct Lane<W> {
    waiting: Vec<W>,
    in_flight: usize,
}

impl<W> Default for Lane<W> {
    fn default() -> Self {
        Lane {
            waiting: Vec::new(),
            in_flight: 0,
        }
    }
}

/// The per-queue lanes of one kind of request on one node.
struct Lanes<W> {
    lanes: Mutex<HashMap<String, Lane<W>>>,
}

impl<W> Default for Lanes<W> {
    fn default() -> Self {
        Lanes {
            lanes: Mutex::default(),
        }
    }
}

/// The per-queue lanes of one node: enqueues, and pull consumers' completes.
#[derive(Default)]
pub struct Coalescer {
    enqueues: Lanes<Waiting>,
    completes: Lanes<Completing>,
}

impl Coalescer {
    /// Enqueues one message, sharing a command with concurrent enqueues to the same queue.
    pub async fn enqueue(
        st: &Arc<IngressState>,
        queue: &str,
        message: NewMessage,
    ) -> Result<Enqueued, ApiError> {
        let r = Coalescer::enqueue_group(st, queue, vec![message]).await?;
        enqueue_outcome(queue, 1, r)?
            .pop()
            .ok_or_else(|| ApiError::Internal("no answer for the message".into()))
    }

    /// Enqueues `messages` together (all or nothing), sharing a command with other requests
    /// to the same queue. The answer is not counted in the queue metrics: the node where the
    /// request arrived counts it.
    pub async fn enqueue_group(
        st: &Arc<IngressState>,
        queue: &str,
        messages: Vec<NewMessage>,
    ) -> Result<QueueResponse, ApiError> {
        let (reply, rx) = oneshot::channel();
        join(st, queue, Waiting { messages, reply })?;
        rx.await
            .map_err(|_| ApiError::Internal("enqueue lane dropped the request".into()))?
    }

    /// Completes message `id` held under `lock_token`, sharing a command with concurrent
    /// completes to the same queue. The answer is this message's alone: `Settled`,
    /// `LockLost`, `MessageNotFound`, or the queue's `NotFound` / `Deleting`.
    pub async fn complete(
        st: &Arc<IngressState>,
        queue: &str,
        id: String,
        lock_token: String,
    ) -> Result<QueueResponse, ApiError> {
        let (reply, rx) = oneshot::channel();
        join(
            st,
            queue,
            Completing {
                id,
                lock_token,
                reply,
            },
        )?;
        rx.await
            .map_err(|_| ApiError::Internal("complete lane dropped the request".into()))?
    }
}

/// Adds a request to its queue's lane and starts what the lane may send now.
fn join<K: Kind>(st: &Arc<IngressState>, queue: &str, w: K) -> Result<(), ApiError> {
    K::lanes(&st.coalescer).join(queue, w)?;
    flush::<K>(st.clone(), queue.to_string());
    Ok(())
}

impl<W: Kind> Lanes<W> {
    fn join(&self, queue: &str, w: W) -> Result<(), ApiError> {
        let mut lanes = self.lock();
        let lane = lanes.entry(queue.to_string()).or_default();
        if lane.waiting.len() >= MAX_WAITING_PER_QUEUE {
            return Err(ApiError::Overloaded {
                limit: MAX_WAITING_PER_QUEUE,
            });
        }
        lane.waiting.push(w);
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Lane<W>>> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.lanes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the next command's worth of waiting requests, if the lane may send one now.
    fn take(&self, queue: &str, max_in_flight: usize) -> Option<Vec<W>> {
        let mut lanes = self.lock();
        let lane = lanes.get_mut(queue)?;
        if lane.waiting.is_empty() || lane.in_flight >= max_in_flight {
            return None;
        }
        let (mut bytes, mut items, mut n) = (0usize, 0usize, 0usize);
        for w in &lane.waiting {
            let (more, b) = w.weight();
            if n > 0 && (items + more > W::LIMITS.items || bytes + b > W::LIMITS.bytes) {
                break;
            }
            bytes += b;
            items += more;
            n += 1;
        }
        lane.in_flight += 1;
        Some(lane.waiting.drain(..n).collect())
    }

    /// A command finished; an idle, empty lane is dropped so the map tracks live queues only.
    fn done(&self, queue: &str) {
        let mut lanes = self.lock();
        if let Some(lane) = lanes.get_mut(queue) {
            lane.in_flight = lane.in_flight.saturating_sub(1);
            if lane.in_flight == 0 && lane.waiting.is_empty() {
                lanes.remove(queue);
            }
        }
    }
}

/// Serves a proposal a follower forwarded to this node (the leader) when it is an enqueue:
/// its messages join this node's lane as one group, and the answer goes back encoded as the
/// driver's would be. `None`: not an enqueue; the caller proposes it as it came.
pub async fn serve_forwarded(st: &Arc<IngressState>, body: &[u8]) -> Option<Vec<u8>> {
    let data = Client::forwarded_proposal(body)?;
    let Ok(Command::QueueEnqueue {
        queue, messages, ..
    }) = decode::<Command>(data)
    else {
        return None;
    };
    crate::metrics::M.enqueue_forwarded_groups.inc();
    let result = match Coalescer::enqueue_group(st, &queue, messages).await {
        Ok(r) => Ok(encode(&Response::Queue(r))),
        Err(e) => Err(propose_error(e)),
    };
    Some(encode(&result))
}

/// The follower's view of an error met by its forwarded enqueue here: "not applied" only when
/// that is certain, otherwise "outcome unknown" (the merged command may have committed).
fn propose_error(e: ApiError) -> ProposeError {
    match e {
        ApiError::NoLeader | ApiError::NotApplied(_) => ProposeError::Dropped,
        ApiError::Overloaded { .. } => ProposeError::Busy,
        ApiError::TooLarge { limit_bytes } => ProposeError::TooLarge(limit_bytes),
        _ => ProposeError::Stopped,
    }
}

/// Starts as many commands as the lane allows now; each one, when done, flushes again.
fn flush<K: Kind>(st: Arc<IngressState>, queue: String) {
    let max_in_flight = if st.client.driver().is_leader() {
        MAX_WRITES_PER_QUEUE
    } else {
        MAX_FORWARDS_PER_QUEUE
    };
    while let Some(batch) = K::lanes(&st.coalescer).take(&queue, max_in_flight) {
        let (st, queue) = (st.clone(), queue.clone());
        tokio::spawn(async move {
            K::write(&st, &queue, batch).await;
            K::lanes(&st.coalescer).done(&queue);
            flush::<K>(st, queue);
        });
    }
}

impl Kind for Waiting {
    const LIMITS: Limits = Limits {
        items: MAX_MESSAGES_PER_WRITE,
        bytes: MAX_BYTES_PER_WRITE,
    };

    fn weight(&self) -> (usize, usize) {
        let bytes = self.messages.iter().map(|m| m.body.len()).sum();
        (self.messages.len(), bytes)
    }

    fn lanes(c: &Coalescer) -> &Lanes<Self> {
        &c.enqueues
    }

    async fn write(st: &IngressState, queue: &str, batch: Vec<Self>) {
        write(st, queue, batch).await
    }
}

impl Kind for Completing {
    const LIMITS: Limits = Limits {
        items: MAX_SETTLE_ITEMS,
        bytes: usize::MAX,
    };

    fn weight(&self) -> (usize, usize) {
        (1, 0)
    }

    fn lanes(c: &Coalescer) -> &Lanes<Self> {
        &c.completes
    }

    async fn write(st: &IngressState, queue: &str, batch: Vec<Self>) {
        write_completes(st, queue, batch).await
    }
}

/// Sends one `QueueSettleMany` for `batch` and hands each request its own item's answer.
async fn write_completes(st: &IngressState, queue: &str, batch: Vec<Completing>) {
    let (items, replies): (Vec<_>, Vec<_>) = batch
        .into_iter()
        .map(|c| ((c.id, c.lock_token), c.reply))
        .unzip();
    let total = items.len();
    let cmd = Command::QueueSettleMany {
        queue: queue.to_string(),
        now_ms: now_ms(),
        items,
        action: Settle::Complete,
    };
    let outcome = match st.client.write(&cmd).await {
        Ok(r) => answer(r),
        Err(e) => Err(e.into()),
    };
    match outcome {
        Ok(QueueResponse::SettledMany { results }) if results.len() == total => {
            for (r, reply) in results.into_iter().zip(replies) {
                let _ = reply.send(Ok(r));
            }
        }
        Ok(QueueResponse::SettledMany { results }) => {
            let e = ApiError::Internal(format!("{} answers for {total} completes", results.len()));
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
        other => {
            for reply in replies {
                let _ = reply.send(other.clone());
            }
        }
    }
}

/// Sends one command and hands each group its own part of the answer.
async fn write(st: &IngressState, queue: &str, batch: Vec<Waiting>) {
    let mut messages = Vec::new();
    let mut groups = Vec::with_capacity(batch.len());
    for w in batch {
        groups.push((w.messages.len(), w.reply));
        messages.extend(w.messages);
    }
    let total = messages.len();
    crate::metrics::M.enqueue_coalesced.observe(total as f64);
    match propose_enqueue(st, queue, messages).await {
        Ok(QueueResponse::Enqueued { results }) if results.len() == total => {
            let mut results = results.into_iter();
            for (n, reply) in groups {
                let results = results.by_ref().take(n).collect();
                let _ = reply.send(Ok(QueueResponse::Enqueued { results }));
            }
        }
        Ok(QueueResponse::Enqueued { results }) => {
            let e = ApiError::Internal(format!("{} answers for {total} messages", results.len()));
            for (_, reply) in groups {
                let _ = reply.send(Err(e.clone()));
            }
        }
        other => {
            for (_, reply) in groups {
                let _ = reply.send(other.clone());
            }
        }
    }
}
