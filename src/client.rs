//! The one way into consensus for the rest of the node: `write(Command)` and `read_barrier()`.
//!
//! A write is proposed locally on the leader, or forwarded once over the peer transport to the
//! leader; the caller never needs to know which node leads. Outcomes are three-valued: applied
//! (with the state machine's answer), certainly not applied (safe to retry), or unknown (the
//! write may yet commit — reported as such, never as a failure).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::raft::{DriverHandle, ProposeError};
use crate::state::{decode, encode, Command, Response};
use crate::transport::{Transport, TransportError};

/// How often a waiting write re-checks for a (new) leader.
const LEADER_POLL: Duration = Duration::from_millis(20);
/// One ReadIndex attempt; a dropped one (leader change) is retried until the deadline.
const READ_ATTEMPT: Duration = Duration::from_millis(500);

/// Forwarded request kinds (first byte of a transport request).
const FORWARD_PROPOSE: u8 = 1;
const FORWARD_TRANSFER: u8 = 2;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no leader could be reached before the deadline; the write was not applied")]
    NoLeader,
    #[error("the write was not applied: {0}")]
    NotApplied(String),
    #[error("the outcome of the write is unknown: {0}")]
    Unknown(String),
    #[error("command of {0} bytes is too large")]
    TooLarge(usize),
    #[error("the node is shutting down")]
    Stopped,
}

pub struct Client {
    id: u64,
    driver: DriverHandle,
    transport: Arc<Transport>,
    timeout: Duration,
}

enum Attempt {
    Done(Result<Vec<u8>, ClientError>),
    /// Certainly not applied; try again once a leader is known.
    Retry,
}

impl Client {
    pub fn new(
        id: u64,
        driver: DriverHandle,
        transport: Arc<Transport>,
        timeout: Duration,
    ) -> Client {
        Client {
            id,
            driver,
            transport,
            timeout,
        }
    }

    pub fn driver(&self) -> &DriverHandle {
        &self.driver
    }

    /// Replicates `cmd` and returns the state machine's answer once committed on a majority
    /// and applied.
    pub async fn write(&self, cmd: &Command) -> Result<Response, ClientError> {
        let started = Instant::now();
        let result = self.write_bytes(encode(cmd)).await;
        let outcome = match &result {
            Ok(_) => "applied",
            Err(ClientError::Unknown(_)) => "unknown",
            Err(_) => "not_applied",
        };
        crate::metrics::M
            .proposals_total
            .with_label_values(&[outcome])
            .inc();
        tracing::trace!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            outcome,
            "write"
        );
        let bytes = result?;
        decode(&bytes).map_err(|e| ClientError::Unknown(format!("undecodable answer: {e}")))
    }

    async fn write_bytes(&self, data: Vec<u8>) -> Result<Vec<u8>, ClientError> {
        let deadline = Instant::now() + self.timeout;
        loop {
            let attempt = match self.driver.leader() {
                Some(l) if l == self.id => self.propose_local(&data, deadline).await,
                Some(l) => self.forward(l, &data, deadline).await,
                None => Attempt::Retry,
            };
            match attempt {
                Attempt::Done(r) => return r,
                Attempt::Retry if Instant::now() + LEADER_POLL >= deadline => {
                    return Err(ClientError::NoLeader)
                }
                Attempt::Retry => tokio::time::sleep(LEADER_POLL).await,
            }
        }
    }

    async fn propose_local(&self, data: &[u8], deadline: Instant) -> Attempt {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, self.driver.propose(data.to_vec())).await {
            Ok(r) => map_propose(r),
            Err(_) => Attempt::Done(Err(ClientError::Unknown(
                "timed out waiting for commit".into(),
            ))),
        }
    }

    async fn forward(&self, leader: u64, data: &[u8], deadline: Instant) -> Attempt {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let mut body = Vec::with_capacity(1 + data.len());
        body.push(FORWARD_PROPOSE);
        body.extend_from_slice(data);
        match self.transport.request(leader, body, remaining).await {
            Ok(reply) => match decode::<Result<Vec<u8>, ProposeError>>(&reply) {
                Ok(r) => map_propose(r),
                Err(e) => Attempt::Done(Err(ClientError::Unknown(format!(
                    "undecodable reply from leader: {e}"
                )))),
            },
            // Never sent: safe to try again (the leader may have moved).
            Err(
                TransportError::NotConnected(_)
                | TransportError::Busy(_)
                | TransportError::UnknownPeer(_),
            ) => Attempt::Retry,
            Err(e) => Attempt::Done(Err(ClientError::Unknown(e.to_string()))),
        }
    }

    /// Waits until this node has applied everything committed before the call (ReadIndex), so
    /// a local read afterwards is linearizable.
    pub async fn read_barrier(&self) -> Result<(), ClientError> {
        let deadline = Instant::now() + self.timeout;
        loop {
            let attempt = tokio::time::timeout(READ_ATTEMPT, self.driver.read_index()).await;
            match attempt {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(ProposeError::Stopped)) => return Err(ClientError::Stopped),
                Ok(Err(_)) | Err(_) if Instant::now() + LEADER_POLL < deadline => {
                    tokio::time::sleep(LEADER_POLL).await
                }
                Ok(Err(_)) | Err(_) => return Err(ClientError::NoLeader),
            }
        }
    }

    /// Asks the leader (wherever it is) to hand leadership to `to`, or to the most up-to-date
    /// follower. Returns the node leadership is being transferred to.
    pub async fn transfer_leader(&self, to: Option<u64>) -> Result<u64, ClientError> {
        let leader = self.driver.status().leader.ok_or(ClientError::NoLeader)?;
        let result = if leader == self.id {
            self.driver.transfer_leader(to).await
        } else {
            let mut body = vec![FORWARD_TRANSFER];
            body.extend_from_slice(&to.unwrap_or(0).to_be_bytes());
            let reply = self
                .transport
                .request(leader, body, self.timeout)
                .await
                .map_err(|e| ClientError::NotApplied(e.to_string()))?;
            decode::<Result<u64, ProposeError>>(&reply)
                .map_err(|e| ClientError::Unknown(e.to_string()))?
        };
        result.map_err(|e| ClientError::NotApplied(e.to_string()))
    }

    /// The command bytes of a forwarded proposal (`None` for other forwarded requests).
    pub fn forwarded_proposal(body: &[u8]) -> Option<&[u8]> {
        match body.split_first() {
            Some((&FORWARD_PROPOSE, data)) => Some(data),
            _ => None,
        }
    }

    /// Serves a request forwarded by a follower (a write, or a leadership transfer) and
    /// encodes the outcome.
    pub async fn serve_forwarded(driver: &DriverHandle, body: &[u8], timeout: Duration) -> Vec<u8> {
        match body.split_first() {
            Some((&FORWARD_PROPOSE, data)) => {
                let result =
                    match tokio::time::timeout(timeout, driver.propose(data.to_vec())).await {
                        Ok(r) => r,
                        Err(_) => Err(ProposeError::Stopped),
                    };
                encode(&result)
            }
            Some((&FORWARD_TRANSFER, target)) => {
                let to = <[u8; 8]>::try_from(target)
                    .map(u64::from_be_bytes)
                    .ok()
                    .filter(|t| *t != 0);
                encode(&driver.transfer_leader(to).await)
            }
            _ => encode(&Err::<Vec<u8>, _>(ProposeError::Dropped)),
        }
    }
}

fn map_propose(r: Result<Vec<u8>, ProposeError>) -> Attempt {
    match r {
        Ok(bytes) => Attempt::Done(Ok(bytes)),
        Err(ProposeError::NotLeader { .. }) => Attempt::Retry,
        Err(ProposeError::TooLarge(n)) => Attempt::Done(Err(ClientError::TooLarge(n))),
        Err(ProposeError::Stopped) => Attempt::Done(Err(ClientError::Unknown(
            "the leader stopped while the write was in flight".into(),
        ))),
        Err(e) => Attempt::Done(Err(ClientError::NotApplied(e.to_string()))),
    }
}
