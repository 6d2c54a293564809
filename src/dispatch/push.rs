//! Push dispatch: the leader hands each message of a push queue to exactly one tenant at a
//! time, POSTs it there, and records the outcome through Raft.
//!
//! The loop, on the leader only:
//! 1. read the visible messages of every push queue from this node's applied state;
//! 2. choose a tenant for each through the pool (which keeps every tenant within its adaptive
//!    concurrency limit: when all are full the burst waits in the queue, not at the tenants);
//!    a message whose last attempt had an uncertain outcome goes back to that same tenant, so
//!    its idempotent process call can drop a duplicate, unless that tenant has been
//!    unavailable for longer than the queue's `failover_after_ms`;
//! 3. propose one `QueueDispatch` leasing them all (the lease is replicated: after a leader
//!    change nobody redelivers before the lock expires);
//! 4. deliver each in its own task (stable `X-Message-ID`, `SAP_ApplicationID`, delivery
//!    count, original headers and body);
//! 5. the settler batches outcomes into `QueueRecord` commands: 2xx completes; 429, 503,
//!    connection errors, timeouts and authentication failures retry after backoff without
//!    counting; other answers count toward `max_deliveries`, past which the state machine
//!    dead-letters the message.
//!
//! Backoff and jitter are computed here and stamped into the command, so apply stays
//! deterministic.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use reqwest::Method;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::api::now_ms;
use crate::client::{Client, ClientError};
use crate::pool::{self, Availability, Outcome, Pool, PoolError, Selector, TenantRequest};
use crate::raft::Role;
use crate::state::queue::{
    self, Defer, Delivery, DeliveryResult, MessageMeta, PushLease, QueueConfig, QueueResponse,
    Received, RetryPolicy, Verdict,
};
use crate::state::{Command, Response};
use crate::store::Store;

/// Most leases one `QueueDispatch` command asks for.
pub const MAX_LEASES_PER_COMMAND: usize = 256;
/// Most body bytes one `QueueDispatch` answer carries (a larger single message goes alone).
pub const MAX_DISPATCH_BYTES: u64 = 8 * 1024 * 1024;
/// Deliveries in flight from this node at once, across queues and tenants (the pool's
/// per-tenant limits are usually the tighter bound). When reached, dispatch pauses.
pub const MAX_IN_FLIGHT: usize = 4_096;
/// `QueueDispatch` commands awaiting commit at once, across queues. Rounds overlap so the
/// dispatcher is not idle for a whole commit between rounds; past it the loop waits.
pub const MAX_DISPATCHES_IN_FLIGHT: usize = 4;
/// Candidates read per call the pool can take now (a candidate held for a busy sticky
/// tenant takes none of the headroom, so a round reads past it).
pub const CANDIDATES_PER_FREE_CALL: usize = 4;
/// Fewest candidates a round with any headroom reads.
pub const MIN_CANDIDATES: usize = 32;
/// Outcomes waiting for the settler; delivery tasks wait when it is full.
pub const RESULTS_CAPACITY: usize = 8_192;
/// Most outcomes one `QueueRecord` command carries.
pub const MAX_RESULTS_PER_COMMAND: usize = 1_024;
/// How long an idle dispatcher waits before looking again.
pub const IDLE_WAIT: Duration = Duration::from_millis(10);
/// How often a follower checks whether it became the leader.
pub const FOLLOWER_WAIT: Duration = Duration::from_millis(100);
/// Most push queues served (queue listing page).
pub const MAX_PUSH_QUEUES: usize = 1_000;
/// How long a message waiting for its sticky tenant is held back per deferral.
pub const DEFER_MS: u64 = 1_000;
/// The part of the lock kept free of the tenant call, so its outcome is recorded before
/// the lock expires.
pub const LOCK_MARGIN_MS: u64 = 2_000;
/// Tries to record a batch of outcomes before leaving them to lock expiry.
const RECORD_TRIES: u32 = 5;

/// A queue's outcome waiting to be recorded.
type Outcomes = (String, DeliveryResult);

/// State shared by the dispatch loop, delivery tasks and the settler.
struct Shared {
    client: Arc<Client>,
    store: Arc<dyn Store>,
    /// The queue indexes (which messages are visible).
    queues: queue::SharedIndex,
    pool: Arc<Pool>,
    /// (queue, sequence) of messages proposed or in flight from this node: not offered again
    /// until their outcome is recorded.
    busy: Mutex<HashSet<(String, u64)>>,
    permits: Arc<Semaphore>,
    /// One per `QueueDispatch` awaiting commit (see [`MAX_DISPATCHES_IN_FLIGHT`]).
    dispatches: Arc<Semaphore>,
}

impl Shared {
    fn busy(&self) -> std::sync::MutexGuard<'_, HashSet<(String, u64)>> {
        self.busy.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Starts the dispatcher and its settler; they run until aborted.
pub fn spawn(
    client: Arc<Client>,
    store: Arc<dyn Store>,
    queues: queue::SharedIndex,
    pool: Arc<Pool>,
) -> tokio::task::JoinHandle<()> {
    let shared = Arc::new(Shared {
        client,
        store,
        queues,
        pool,
        busy: Mutex::new(HashSet::new()),
        permits: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        dispatches: Arc::new(Semaphore::new(MAX_DISPATCHES_IN_FLIGHT)),
    });
    let (tx, rx) = mpsc::channel(RESULTS_CAPACITY);
    let settler = tokio::spawn(settle_loop(shared.clone(), rx));
    tokio::spawn(async move {
        dispatch_loop(shared, tx).await;
        settler.abort();
    })
}

async fn dispatch_loop(sh: Arc<Shared>, tx: mpsc::Sender<Outcomes>) {
    loop {
        if sh.client.driver().status().role != Role::Leader {
            tokio::time::sleep(FOLLOWER_WAIT).await;
            continue;
        }
        let queues = push_queues(&sh.queues);
        let mut progressed = false;
        for (name, cfg, path) in &queues {
            progressed |= round(&sh, &tx, name, cfg, path).await;
        }
        if !progressed {
            tokio::time::sleep(IDLE_WAIT).await;
        }
    }
}

/// The push queues in this node's applied state (the indexes' copy: no store scan per
/// round), by name, with their paths; at most [`MAX_PUSH_QUEUES`].
fn push_queues(ix: &queue::SharedIndex) -> Vec<(String, QueueConfig, String)> {
    let mut out: Vec<(String, QueueConfig, String)> = ix
        .read()
        .queue_entries()
        .filter(|(_, e)| !e.deleting)
        .filter_map(|(name, e)| match &e.config.delivery {
            Delivery::Push { path } => Some((name.clone(), e.config.clone(), path.clone())),
            Delivery::Pull => None,
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out.truncate(MAX_PUSH_QUEUES);
    out
}

/// What to do with one visible message now.
enum Choice {
    Lease(pool::Lease, Option<String>),
    /// Its sticky tenant is unavailable but not for long enough: hold it back until then.
    Defer(u64),
    /// Its sticky tenant is at its limit: leave it for the next round.
    Wait,
    /// No tenant can take work: stop this queue's round.
    Stop,
}

fn choose(pool: &Pool, cfg: &QueueConfig, meta: &MessageMeta, now_ms: u64) -> Choice {
    let pick = |exclude: Vec<String>, note: Option<String>| match pool.pick(&Selector { exclude }) {
        Ok(l) => Choice::Lease(l, note),
        Err(_) => Choice::Stop,
    };
    let sticky = meta.last_tenant.as_ref().filter(|_| meta.uncertain);
    let Some(t) = sticky else {
        return pick(Vec::new(), None);
    };
    match pool.availability(t) {
        Availability::Selectable => match pool.acquire(t) {
            Ok(l) => Choice::Lease(l, None),
            Err(_) => Choice::Wait,
        },
        Availability::Unknown => pick(
            vec![t.clone()],
            Some(format!(
                "moved from `{t}` after an uncertain attempt: it left the pool"
            )),
        ),
        Availability::Unavailable { for_ms, reason } if for_ms >= cfg.failover_after_ms => {
            let how_long = if for_ms == u64::MAX {
                String::new()
            } else {
                format!(" for {} ms", for_ms)
            };
            pick(
                vec![t.clone()],
                Some(format!(
                    "moved from `{t}` after an uncertain attempt: {reason}{how_long} (failover_after_ms {})",
                    cfg.failover_after_ms
                )),
            )
        }
        Availability::Unavailable { for_ms, .. } => {
            let left = cfg.failover_after_ms.saturating_sub(for_ms);
            Choice::Defer(now_ms.saturating_add(left.clamp(1, DEFER_MS)))
        }
    }
}

/// One dispatch round for one queue: lease what can go now and start delivering it (in a
/// task of its own, so the next round need not wait for this one's commit). True when it
/// proposed anything.
async fn round(
    sh: &Arc<Shared>,
    tx: &mpsc::Sender<Outcomes>,
    name: &str,
    cfg: &QueueConfig,
    path: &str,
) -> bool {
    // Nothing to read while no tenant can take work: reading up to 256 records per poll of
    // a full pool was a few percent of the leader's CPU. Otherwise read a few times the
    // headroom, since a message waiting for its sticky tenant takes none of it and must not
    // hide the ones behind it.
    let headroom = sh.pool.headroom();
    if headroom == 0 {
        return false;
    }
    let free = sh
        .permits
        .available_permits()
        .min(MAX_LEASES_PER_COMMAND)
        .min(
            headroom
                .saturating_mul(CANDIDATES_PER_FREE_CALL)
                .max(MIN_CANDIDATES),
        );
    if free == 0 {
        return false;
    }
    let Ok(slot) = sh.dispatches.clone().try_acquire_owned() else {
        return false;
    };
    // Reserve the delivery permits now: overlapping rounds must not promise the same ones.
    let Ok(permits) = sh.permits.clone().try_acquire_many_owned(free as u32) else {
        return false;
    };
    let now = now_ms();
    let candidates = {
        let busy = sh.busy();
        queue::visible_candidates(
            &*sh.store,
            &sh.queues,
            name,
            cfg,
            now,
            free,
            busy.len(),
            |seq| busy.contains(&(name.to_string(), seq)),
        )
    };
    let candidates = match candidates {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(queue = name, error = %e, "reading visible messages failed");
            return false;
        }
    };
    let mut leases = Vec::new();
    let mut defers = Vec::new();
    let mut held: HashMap<String, pool::Lease> = HashMap::new();
    let mut bytes = 0u64;
    for meta in candidates {
        if !leases.is_empty() && bytes + meta.body_len > MAX_DISPATCH_BYTES {
            break;
        }
        match choose(&sh.pool, cfg, &meta, now) {
            Choice::Lease(l, note) => {
                let lock_token = hex::encode(rand::random::<[u8; 16]>());
                bytes += meta.body_len;
                leases.push(PushLease {
                    seq: meta.sequence,
                    lock_token: lock_token.clone(),
                    tenant: l.tenant().to_string(),
                    note,
                });
                held.insert(lock_token, l);
            }
            Choice::Defer(until_ms) => defers.push(Defer {
                seq: meta.sequence,
                until_ms,
            }),
            Choice::Wait => {}
            Choice::Stop => break,
        }
    }
    if leases.is_empty() && defers.is_empty() {
        return false;
    }
    let seqs: Vec<u64> = leases.iter().map(|l| l.seq).collect();
    sh.busy()
        .extend(seqs.iter().map(|s| (name.to_string(), *s)));
    let cmd = Command::QueueDispatch {
        queue: name.to_string(),
        now_ms: now,
        lock_ms: cfg.lock_ms,
        leases,
        defers,
    };
    let job = Dispatch {
        queue: name.to_string(),
        path: path.to_string(),
        cfg: cfg.clone(),
        seqs,
        held,
        permits,
    };
    let (sh, tx) = (sh.clone(), tx.clone());
    tokio::spawn(async move {
        dispatch(&sh, &tx, cmd, job).await;
        drop(slot);
    });
    true
}

/// A proposed round: what `dispatch` needs once its command is committed.
struct Dispatch {
    queue: String,
    path: String,
    cfg: QueueConfig,
    seqs: Vec<u64>,
    /// The pool's claims on each leased tenant, by lock token.
    held: HashMap<String, pool::Lease>,
    /// Delivery permits reserved for this round (one per lease; the rest are returned).
    permits: OwnedSemaphorePermit,
}

/// Commits one round's leases and starts a delivery per granted lease; releases the rest.
async fn dispatch(sh: &Arc<Shared>, tx: &mpsc::Sender<Outcomes>, cmd: Command, job: Dispatch) {
    let Dispatch {
        queue: name,
        path,
        cfg,
        seqs,
        mut held,
        mut permits,
    } = job;
    let name = name.as_str();
    let leased = match sh.client.write(&cmd).await {
        Ok(Response::Queue(QueueResponse::Dispatched { leased, .. })) => {
            with_bodies(sh, name, leased).await
        }
        Ok(other) => {
            tracing::debug!(queue = name, answer = ?other, "dispatch not applied");
            Vec::new()
        }
        Err(e) => {
            tracing::debug!(queue = name, error = %e, "dispatch not applied");
            Vec::new()
        }
    };
    let mut started = HashSet::new();
    for r in leased {
        let (Some(lease), Some(permit)) = (held.remove(&r.lock_token), permits.split(1)) else {
            continue;
        };
        started.insert(r.meta.sequence);
        let job = Job {
            queue: name.to_string(),
            path: path.clone(),
            retry: cfg.retry.clone(),
            timeout_ms: cfg.lock_ms.saturating_sub(LOCK_MARGIN_MS).max(1_000),
            received: r,
        };
        tokio::spawn(deliver(sh.clone(), tx.clone(), job, lease, permit));
    }
    // Leases not granted (the view lagged) or not started: release their claim on the
    // tenant (dropping `held`) and offer the messages again.
    let mut busy = sh.busy();
    for s in seqs.iter().filter(|s| !started.contains(s)) {
        busy.remove(&(name.to_string(), *s));
    }
}

/// Fills in the bodies the dispatch answer leaves out, from this node's store (off the
/// runtime's worker threads). A message whose body is gone (purged meanwhile) is left out:
/// not started, its lease is released like any other the dispatch did not grant.
async fn with_bodies(sh: &Arc<Shared>, queue: &str, leased: Vec<Received>) -> Vec<Received> {
    let (store, ix, queue) = (sh.store.clone(), sh.queues.clone(), queue.to_string());
    tokio::task::spawn_blocking(move || read_bodies(&*store, &ix, &queue, leased))
        .await
        .unwrap_or_default()
}

fn read_bodies(
    store: &dyn Store,
    ix: &queue::SharedIndex,
    queue: &str,
    leased: Vec<Received>,
) -> Vec<Received> {
    let mut out = Vec::with_capacity(leased.len());
    for mut r in leased {
        match queue::message_body(store, ix, queue, r.meta.sequence) {
            Ok(Some(body)) => {
                r.body = body;
                out.push(r);
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(queue, error = %e, "reading a leased message's body failed"),
        }
    }
    out
}

/// One leased message on its way to a tenant.
struct Job {
    queue: String,
    path: String,
    retry: RetryPolicy,
    timeout_ms: u64,
    received: Received,
}

fn request(job: &Job) -> TenantRequest {
    let m = &job.received.meta;
    let mut headers = HeaderMap::new();
    for (k, v) in &m.headers {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            headers.append(k, v);
        }
    }
    if let Some(ct) = m.content_type.as_deref().and_then(|v| v.parse().ok()) {
        headers.insert(CONTENT_TYPE, ct);
    }
    let app_id = m.dedup_key.as_deref().unwrap_or(&m.id);
    for (k, v) in [
        ("x-message-id", m.id.as_str()),
        ("sap_applicationid", app_id),
        ("x-delivery-count", &m.delivery_count.to_string()),
        ("x-corral-queue", job.queue.as_str()),
    ] {
        if let Ok(v) = HeaderValue::from_str(v) {
            headers.insert(HeaderName::from_static(k), v);
        }
    }
    TenantRequest {
        method: Method::POST,
        path: job.path.clone(),
        headers,
        body: job.received.body.clone().into(),
        timeout: Some(Duration::from_millis(job.timeout_ms)),
    }
}

async fn deliver(
    sh: Arc<Shared>,
    tx: mpsc::Sender<Outcomes>,
    job: Job,
    lease: pool::Lease,
    permit: OwnedSemaphorePermit,
) {
    let started = Instant::now();
    let req = request(&job);
    let answer = sh.pool.runtime_request(&lease, &req).await;
    let latency_ms = started.elapsed().as_millis() as u64;
    let tenant = lease.tenant().to_string();
    let outcome = match &answer {
        Ok(r) => Outcome::Status(r.status),
        Err(e) => e.outcome(),
    };
    lease.complete(outcome);
    drop(permit);
    let attempt = job.received.meta.attempts_total;
    let (status, error, verdict) = judge(&answer, &job.retry, attempt, now_ms());
    let result = DeliveryResult {
        seq: job.received.meta.sequence,
        lock_token: job.received.lock_token.clone(),
        tenant,
        status,
        error,
        latency_ms,
        verdict,
    };
    crate::metrics::M
        .queue_messages
        .with_label_values(&["push", verdict_label(&result.verdict)])
        .inc();
    if tx.send((job.queue.clone(), result)).await.is_err() {
        sh.busy().remove(&(job.queue, job.received.meta.sequence));
    }
}

fn verdict_label(v: &Verdict) -> &'static str {
    match v {
        Verdict::Completed => "completed",
        Verdict::Retry { counted: true, .. } => "failed",
        Verdict::Retry { counted: false, .. } => "tenant_trouble",
    }
}

/// Classifies one attempt's answer: (status, error, verdict). `attempt` is the message's
/// attempt number (1 for the first), which drives the backoff.
pub fn judge(
    answer: &Result<pool::TenantResponse, PoolError>,
    retry: &RetryPolicy,
    attempt: u32,
    now_ms: u64,
) -> (Option<u16>, Option<String>, Verdict) {
    let delay = backoff_ms(retry, attempt, rand::thread_rng().gen::<f64>());
    let at = |ms: u64, counted: bool, uncertain: bool| Verdict::Retry {
        visible_at_ms: now_ms.saturating_add(ms),
        counted,
        uncertain,
    };
    match answer {
        Ok(r) if (200..300).contains(&r.status) => (Some(r.status), None, Verdict::Completed),
        Ok(r) if r.status == 429 || r.status == 503 => {
            let after = retry
                .honour_retry_after
                .then(|| pool::retry_after_ms(&r.headers, now_ms))
                .flatten()
                .map(|ms| ms.min(retry.max_ms));
            (
                Some(r.status),
                None,
                at(after.unwrap_or(delay), false, false),
            )
        }
        Ok(r) => (Some(r.status), None, at(delay, true, false)),
        Err(e) => {
            // Nothing reached the tenant's flow when the connection or authentication
            // failed; a timeout or a broken exchange may have been processed.
            let uncertain = matches!(e, PoolError::Timeout { .. } | PoolError::Http { .. });
            (None, Some(e.to_string()), at(delay, false, uncertain))
        }
    }
}

/// Exponential backoff with jitter: `initial * multiplier^(attempt-1)`, capped at `max`,
/// spread by ±`jitter` (`unit` is a uniform draw in [0, 1)).
pub fn backoff_ms(p: &RetryPolicy, attempt: u32, unit: f64) -> u64 {
    let exp = attempt.saturating_sub(1).min(64) as i32;
    let base =
        (p.initial_ms as f64 * (p.multiplier_pct as f64 / 100.0).powi(exp)).min(p.max_ms as f64);
    let spread = base * (p.jitter_pct as f64 / 100.0) * (2.0 * unit - 1.0);
    (base + spread).clamp(0.0, p.max_ms as f64) as u64
}

/// `Retry-After` as milliseconds: delta-seconds or an HTTP date.
/// Batches outcomes into `QueueRecord` commands (one per queue per batch): many deliveries
/// share one Raft round.
async fn settle_loop(sh: Arc<Shared>, mut rx: mpsc::Receiver<Outcomes>) {
    while let Some(first) = rx.recv().await {
        let mut by_queue: BTreeMap<String, Vec<DeliveryResult>> = BTreeMap::new();
        by_queue.entry(first.0).or_default().push(first.1);
        let mut n = 1;
        while n < MAX_RESULTS_PER_COMMAND {
            match rx.try_recv() {
                Ok((q, r)) => by_queue.entry(q).or_default().push(r),
                Err(_) => break,
            }
            n += 1;
        }
        for (q, results) in by_queue {
            let seqs: Vec<u64> = results.iter().map(|r| r.seq).collect();
            record(&sh.client, &q, results).await;
            let mut busy = sh.busy();
            for s in seqs {
                busy.remove(&(q.clone(), s));
            }
        }
    }
}

/// Records outcomes, retrying while no leader is reachable. Recording twice is harmless (a
/// second copy finds the message gone or its lease moved on). If every try fails, the lock
/// expires and the message is delivered again, to the same tenant.
async fn record(client: &Client, queue: &str, results: Vec<DeliveryResult>) {
    for attempt in 0..RECORD_TRIES {
        let cmd = Command::QueueRecord {
            queue: queue.to_string(),
            now_ms: now_ms(),
            results: results.clone(),
        };
        match client.write(&cmd).await {
            Ok(_) => return,
            Err(ClientError::Stopped) => return,
            Err(e) => {
                tracing::debug!(queue, error = %e, attempt, "recording outcomes failed; retrying");
                tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
            }
        }
    }
    tracing::warn!(
        queue,
        n = results.len(),
        "outcomes not recorded; their locks will expire and they are redelivered"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use reqwest::header::RETRY_AFTER;

    fn resp(status: u16, retry_after: Option<&str>) -> Result<pool::TenantResponse, PoolError> {
        let mut headers = HeaderMap::new();
        if let Some(v) = retry_after {
            headers.insert(RETRY_AFTER, HeaderValue::from_str(v).unwrap());
        }
        Ok(pool::TenantResponse {
            status,
            headers,
            body: Bytes::new(),
        })
    }

    /// Backoff doubles from the initial delay, is capped, and jitter stays within its band.
    #[test]
    fn backoff_grows_caps_and_jitters() {
        let p = RetryPolicy::default();
        assert_eq!(backoff_ms(&p, 1, 0.5), 1_000);
        assert_eq!(backoff_ms(&p, 2, 0.5), 2_000);
        assert_eq!(backoff_ms(&p, 4, 0.5), 8_000);
        assert_eq!(backoff_ms(&p, 30, 0.5), 300_000);
        assert_eq!(backoff_ms(&p, 1, 0.0), 800);
        assert!(backoff_ms(&p, 1, 0.999) <= 1_200);
        assert_eq!(backoff_ms(&p, 40, 0.999), 300_000);
    }

    /// The classification: 2xx completes; 429/503 and transport trouble do not count;
    /// other statuses count; timeouts (not refused connections) are uncertain; Retry-After
    /// is honoured and capped at the policy's maximum.
    #[test]
    fn outcomes_are_classified() {
        let p = RetryPolicy::default();
        let now = 1_000_000;
        assert_eq!(judge(&resp(204, None), &p, 1, now).2, Verdict::Completed);
        let v = |a| judge(&a, &p, 1, now).2;
        let Verdict::Retry {
            visible_at_ms,
            counted: false,
            uncertain: false,
        } = v(resp(503, Some("7")))
        else {
            panic!("503 is tenant trouble")
        };
        assert_eq!(visible_at_ms, now + 7_000);
        let Verdict::Retry {
            visible_at_ms,
            counted: false,
            ..
        } = v(resp(429, Some("100000")))
        else {
            panic!("429 is tenant trouble")
        };
        assert_eq!(visible_at_ms, now + p.max_ms);
        assert!(matches!(
            v(resp(500, None)),
            Verdict::Retry {
                counted: true,
                uncertain: false,
                ..
            }
        ));
        let timeout = Err(PoolError::Timeout { tenant: "a".into() });
        assert!(matches!(
            v(timeout),
            Verdict::Retry {
                counted: false,
                uncertain: true,
                ..
            }
        ));
        let refused = Err(PoolError::Connect {
            tenant: "a".into(),
            message: "refused".into(),
        });
        assert!(matches!(
            v(refused),
            Verdict::Retry {
                counted: false,
                uncertain: false,
                ..
            }
        ));
    }
}
