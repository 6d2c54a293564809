//! Consensus: the only owner of `raft::RawNode`, its storage, and the Ready loop.
//!
//! This layer moves opaque commands. It never looks inside them: it hands committed bytes to a
//! [`StateMachine`] and returns the bytes the machine answered. Everyone else talks to the
//! driver thread through a bounded channel ([`DriverHandle`]); proposals are matched to their
//! results by (index, term), never by arrival order.

mod driver;
pub mod log;
pub mod snapfile;
pub mod storage;

use serde::{Deserialize, Serialize};

pub use driver::{start, DriverConfig, DriverError, DriverHandle, Outbox};

use crate::store::WriteBatch;

/// Why a proposal or read did not go through. Every variant says whether it may have applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ProposeError {
    /// Not applied: this node cannot accept writes; try the leader.
    #[error("this node is not the leader")]
    NotLeader { leader: Option<u64> },
    /// Not applied: another entry took the log position (leader changed before commit).
    #[error("the write was superseded by a leader change and was not applied")]
    Dropped,
    /// Not applied: the driver's inbox is full.
    #[error("too many writes in flight")]
    Busy,
    /// Not applied: the command is larger than a Raft entry may be.
    #[error("command of {0} bytes is over the {MAX_PROPOSAL_BYTES}-byte limit")]
    TooLarge(usize),
    /// Unknown: the node stopped while the write was in flight.
    #[error("the node stopped before the write's outcome was known")]
    Stopped,
}

impl ProposeError {
    /// True when the write certainly did not apply, so a retry cannot duplicate it.
    pub fn certainly_not_applied(&self) -> bool {
        !matches!(self, ProposeError::Stopped)
    }
}

/// Largest command accepted into the log. Messages up to 16 MiB plus headers must fit.
pub const MAX_PROPOSAL_BYTES: usize = 24 * 1024 * 1024;

/// The replicated state machine as the Raft layer sees it: bytes in, bytes out.
///
/// `apply` must be deterministic: the same (index, data) on the same state gives the same
/// writes and answer on every node. It puts its writes in `batch`, which may already hold the
/// writes of earlier entries of the same Ready: reads must go through
/// [`WriteBatch::read_through`]. The driver adds the applied index to the same batch and
/// writes it atomically.
pub trait StateMachine: Send + 'static {
    fn apply(&mut self, index: u64, data: &[u8], batch: &mut WriteBatch) -> Vec<u8>;
    /// Called after a snapshot replaced the whole state, to drop any cached view of it.
    fn restored(&mut self) {}
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    #[default]
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub id: u64,
    /// Highest index known replicated on the peer (leader's view; 0 on followers).
    pub match_index: u64,
    /// Milliseconds since this node last received a message from the peer.
    pub last_contact_ms: Option<u64>,
}

/// How this node last became leader: what an operator asks after a failover ("how long were
/// we without a leader?"), measured by the node itself so no poller's delay is in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ElectionRecord {
    /// The term this node won.
    pub term: u64,
    /// The leader this node followed before, if it knew one.
    pub previous_leader: Option<u64>,
    /// Milliseconds from the last message this node received from `previous_leader` to
    /// winning: the failover as this node saw it (election timeout, pre-vote and vote).
    pub leader_silent_ms: Option<u64>,
    /// Raft ticks this node counted over the same span: against `leader_silent_ms` it shows
    /// whether the time went to the election timeout or to a starved driver.
    pub leader_silent_ticks: Option<u64>,
    /// Terms it took (the term won minus the previous leader's): more than 1 means split or
    /// refused votes, each costing another randomised election timeout.
    pub rounds: Option<u64>,
}

/// What the driver publishes about itself, refreshed every few milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct NodeStatus {
    pub id: u64,
    pub role: Role,
    pub term: u64,
    pub leader: Option<u64>,
    pub commit_index: u64,
    pub applied_index: u64,
    pub first_index: u64,
    pub last_index: u64,
    pub peers: Vec<PeerStatus>,
    pub stopped: bool,
    /// Set once this node has won an election since it started.
    pub last_election: Option<ElectionRecord>,
}
