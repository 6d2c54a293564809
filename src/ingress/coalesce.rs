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
use crate::api::ApiError;
use crate::client::Client;
use crate::raft::ProposeError;
use crate::state::queue::{Enqueued, NewMessage, QueueResponse};
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

#[derive(Default)]
struct Lane {
    waiting: Vec<Waiting>,
    in_flight: usize,
}

/// The per-queue lanes of one node.
#[derive(Default)]
pub struct Coalescer {
    lanes: Mutex<HashMap<String, Lane>>,
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
        st.coalescer.join(queue, Waiting { messages, reply })?;
        flush(st.clone(), queue.to_string());
        rx.await
            .map_err(|_| ApiError::Internal("enqueue lane dropped the request".into()))?
    }

    fn join(&self, queue: &str, w: Waiting) -> Result<(), ApiError> {
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

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Lane>> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.lanes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the next command's worth of waiting requests, if the lane may send one now.
    fn take(&self, queue: &str, max_in_flight: usize) -> Option<Vec<Waiting>> {
        let mut lanes = self.lock();
        let lane = lanes.get_mut(queue)?;
        if lane.waiting.is_empty() || lane.in_flight >= max_in_flight {
            return None;
        }
        let (mut bytes, mut messages, mut n) = (0usize, 0usize, 0usize);
        for w in &lane.waiting {
            let b: usize = w.messages.iter().map(|m| m.body.len()).sum();
            let more = w.messages.len();
            if n > 0
                && (messages + more > MAX_MESSAGES_PER_WRITE || bytes + b > MAX_BYTES_PER_WRITE)
            {
                break;
            }
            bytes += b;
            messages += more;
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
fn flush(st: Arc<IngressState>, queue: String) {
    let max_in_flight = if st.client.driver().is_leader() {
        MAX_WRITES_PER_QUEUE
    } else {
        MAX_FORWARDS_PER_QUEUE
    };
    while let Some(batch) = st.coalescer.take(&queue, max_in_flight) {
        let (st, queue) = (st.clone(), queue.clone());
        tokio::spawn(async move {
            write(&st, &queue, batch).await;
            st.coalescer.done(&queue);
            flush(st, queue);
        });
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
