//! The secret pusher: while this node leads, it brings every target tenant's copy of every
//! secret to the secret's current version through the Security Content API (cpi-api.md §3),
//! and records each attempt (version, when, attempts, last error) in the replicated state.
//!
//! What is pending is derived from the state alone: a (secret, tenant) pair is pending while the
//! tenant is targeted and its recorded deployed version differs from the current one. So a
//! tenant registered later, one that was down, a rollback (current moves back) and a leader
//! change mid-push all need no extra bookkeeping: the next leader sees the same pending pairs
//! and pushes them. One push is: token (pool), upsert (GET, then PUT if it exists or POST if
//! not; POST 409 falls back to PUT, PUT 409 to POST; writes carry the CSRF token, refetched on
//! 403 by the pool), then reading the artifact back until it is `DEPLOYED`. Failures back off
//! exponentially ([`BACKOFF_BASE_MS`] doubling to [`BACKOFF_MAX_MS`]) and retry forever.
//!
//! The pusher also purges soft-deleted secrets whose retention has passed.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::Method;
use serde_json::{Map, Value};
use tokio::sync::Semaphore;

use crate::client::Client;
use crate::pool::{Pool, TenantRequest};
use crate::seal::{Envelope, SealError, MASTER_KEY_BYTES};
use crate::state::secrets::{self as sec, SecretCommand, SecretKind, SecretRecord, Version};
use crate::state::{self, Command};
use crate::store::{Store, StoreError};

/// How often the leader looks for pending pushes.
pub const PUSH_TICK: Duration = Duration::from_millis(300);
/// Pushes in flight at once (each is a handful of calls to one tenant); more pending pairs wait
/// for the next tick.
pub const MAX_CONCURRENT_PUSHES: usize = 8;
/// Timeout of one call to a tenant during a push.
pub const PUSH_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a push reads the artifact back waiting for `DEPLOYED` before it counts as failed.
pub const DEPLOY_WAIT: Duration = Duration::from_secs(30);
/// Interval between read-backs.
pub const DEPLOY_POLL: Duration = Duration::from_millis(200);
/// First retry delay after a failed push; doubles per failed attempt up to [`BACKOFF_MAX_MS`].
pub const BACKOFF_BASE_MS: u64 = 500;
pub const BACKOFF_MAX_MS: u64 = 30_000;
/// Secrets and tenants read per page while scanning.
const SCAN_PAGE: usize = 1_000;
/// The audit actor of retention purges.
const ACTOR_LEADER: &str = "leader";

/// The AAD a version's ciphertext and wrapped data key are bound to (same as the API's).
pub fn value_aad(name: &str, value_id: &str) -> Vec<u8> {
    crate::api::secrets::value_aad(name, value_id)
}

/// Opens every stored version's data key with `master`; the first secret that does not open
/// is returned. A node runs this at start and refuses to start on failure.
pub fn verify_stored_secrets(
    store: &dyn Store,
    master: &[u8; MASTER_KEY_BYTES],
) -> Result<Result<(), (String, SealError)>, StoreError> {
    let env = Envelope::new(master);
    let mut after: Option<String> = None;
    loop {
        let page = sec::list_secrets(store, after.as_deref(), SCAN_PAGE)?;
        for (name, rec) in &page {
            for v in &rec.versions {
                let aad = value_aad(name, &v.sealed.value_id);
                if let Err(e) = env.check_wrapped(&v.sealed.wrapped_key, &aad) {
                    return Ok(Err((name.clone(), e)));
                }
            }
        }
        match page.last() {
            Some((n, _)) if page.len() == SCAN_PAGE => after = Some(n.clone()),
            _ => return Ok(Ok(())),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("cannot unseal the value: {0}")]
    Unseal(String),
    #[error("{0}")]
    Pool(#[from] crate::pool::PoolError),
    #[error("{op} answered {status}: {body}")]
    Status {
        op: String,
        status: u16,
        body: String,
    },
    #[error("not DEPLOYED within {0:?} (last status {1})")]
    NotDeployed(Duration, String),
}

/// One pending push, as the scan found it.
struct Job {
    secret: String,
    tenant: String,
    kind: SecretKind,
    version: Version,
    /// Failed attempts so far for this version (for the backoff).
    attempts: u32,
}

pub struct SecretPusher {
    node_id: u64,
    client: Arc<Client>,
    store: Arc<dyn Store>,
    pool: Arc<Pool>,
    envelope: Arc<Envelope>,
    in_flight: Mutex<HashSet<(String, String)>>,
    permits: Arc<Semaphore>,
}

impl SecretPusher {
    pub fn new(
        node_id: u64,
        client: Arc<Client>,
        store: Arc<dyn Store>,
        pool: Arc<Pool>,
        envelope: Arc<Envelope>,
    ) -> Arc<SecretPusher> {
        Arc::new(SecretPusher {
            node_id,
            client,
            store,
            pool,
            envelope,
            in_flight: Mutex::new(HashSet::new()),
            permits: Arc::new(Semaphore::new(MAX_CONCURRENT_PUSHES)),
        })
    }

    /// Runs until the task is aborted.
    pub fn spawn(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(PUSH_TICK).await;
                if !me.is_leader() {
                    continue;
                }
                // A new leader may not have applied everything committed yet.
                if me.client.read_barrier().await.is_err() {
                    continue;
                }
                if let Err(e) = me.tick().await {
                    tracing::error!(error = %e, "secret push scan failed");
                }
            }
        })
    }

    fn is_leader(&self) -> bool {
        self.client.driver().status().leader == Some(self.node_id)
    }

    fn tenants(&self) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = state::list_tenants(&*self.store, after.as_deref(), SCAN_PAGE)?;
            out.extend(page.iter().map(|(n, _)| n.clone()));
            match page.last() {
                Some((n, _)) if page.len() == SCAN_PAGE => after = Some(n.clone()),
                _ => return Ok(out),
            }
        }
    }

    async fn tick(self: &Arc<Self>) -> Result<(), StoreError> {
        let tenants = self.tenants()?;
        let now = crate::api::now_ms();
        let mut after: Option<String> = None;
        loop {
            let page = sec::list_secrets(&*self.store, after.as_deref(), SCAN_PAGE)?;
            for (name, rec) in &page {
                if rec.purge_at_ms.is_some_and(|at| at <= now) {
                    self.purge(name, now).await;
                    continue;
                }
                for job in pending(name, rec, &tenants, now) {
                    if !self.start(job) {
                        return Ok(());
                    }
                }
            }
            match page.last() {
                Some((n, _)) if page.len() == SCAN_PAGE => after = Some(n.clone()),
                _ => return Ok(()),
            }
        }
    }

    async fn purge(&self, name: &str, now_ms: u64) {
        let cmd = Command::Secret(SecretCommand::Purge {
            name: name.to_string(),
            actor: ACTOR_LEADER.into(),
            now_ms,
            due_only: true,
        });
        if let Err(e) = self.client.write(&cmd).await {
            tracing::warn!(secret = name, error = %e, "retention purge not applied; retrying next tick");
        }
    }

    /// Starts a push unless that pair is already in flight; false when no permit is left.
    fn start(self: &Arc<Self>, job: Job) -> bool {
        let key = (job.secret.clone(), job.tenant.clone());
        if self
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&key)
        {
            return true;
        }
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            return false;
        };
        self.in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone());
        let me = self.clone();
        tokio::spawn(async move {
            me.run(job).await;
            me.in_flight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&key);
            drop(permit);
        });
        true
    }

    async fn run(&self, job: Job) {
        let result = self.push(&job).await;
        let now = crate::api::now_ms();
        let (error, next_attempt_ms, outcome) = match &result {
            Ok(()) => (None, 0, "deployed"),
            Err(e) => (
                Some(e.to_string()),
                now + backoff_ms(job.attempts),
                "failed",
            ),
        };
        crate::metrics::M
            .secret_pushes
            .with_label_values(&[outcome])
            .inc();
        match &error {
            None => {
                tracing::info!(secret = %job.secret, tenant = %job.tenant, version = job.version.version, "secret deployed")
            }
            Some(e) => {
                tracing::warn!(secret = %job.secret, tenant = %job.tenant, version = job.version.version, error = %e, "secret push failed; will retry")
            }
        }
        let cmd = Command::Secret(SecretCommand::PushResult {
            name: job.secret.clone(),
            tenant: job.tenant.clone(),
            version: job.version.version,
            error,
            next_attempt_ms,
            now_ms: now,
        });
        if let Err(e) = self.client.write(&cmd).await {
            // Not recorded: the pair stays pending and is pushed again (pushes are idempotent).
            tracing::warn!(secret = %job.secret, tenant = %job.tenant, error = %e, "push result not recorded");
        }
    }

    /// One push: unseal, upsert, read back until DEPLOYED.
    async fn push(&self, job: &Job) -> Result<(), PushError> {
        let v = &job.version;
        let aad = value_aad(&job.secret, &v.sealed.value_id);
        let plain = self
            .envelope
            .open(&v.sealed.wrapped_key, &v.sealed.ciphertext, &aad)
            .map_err(|e| PushError::Unseal(e.to_string()))?;
        let mut props: Map<String, Value> =
            serde_json::from_slice(&plain).map_err(|e| PushError::Unseal(e.to_string()))?;
        drop(plain);
        props.insert("Name".into(), Value::String(job.secret.clone()));
        let body = serde_json::to_vec(&props).map_err(|e| PushError::Unseal(e.to_string()))?;
        drop(props);
        let set = job.kind.cpi_set();
        let entity = format!("/{set}('{}')", job.secret.replace('\'', "''"));
        let t = job.tenant.as_str();
        let exists = match self.call(t, Method::GET, &entity, None).await? {
            (200, _) => true,
            (404, _) => false,
            (status, b) => return Err(status_err("read", status, b)),
        };
        self.upsert(t, exists, set, &entity, body).await?;
        self.wait_deployed(t, job.kind, &entity).await
    }

    async fn upsert(
        &self,
        tenant: &str,
        exists: bool,
        set: &str,
        entity: &str,
        body: Vec<u8>,
    ) -> Result<(), PushError> {
        let collection = format!("/{set}");
        let first = if exists {
            (Method::PUT, entity)
        } else {
            (Method::POST, collection.as_str())
        };
        let (status, b) = self
            .call(tenant, first.0.clone(), first.1, Some(body.clone()))
            .await?;
        if (200..300).contains(&status) {
            return Ok(());
        }
        if status != 409 {
            return Err(status_err(first.0.as_str(), status, b));
        }
        // 409 on POST: created meanwhile; on PUT: deleted meanwhile. Try the other once.
        let second = if exists {
            (Method::POST, collection.as_str())
        } else {
            (Method::PUT, entity)
        };
        match self
            .call(tenant, second.0.clone(), second.1, Some(body))
            .await?
        {
            (s, _) if (200..300).contains(&s) => Ok(()),
            (s, b) => Err(status_err(second.0.as_str(), s, b)),
        }
    }

    async fn wait_deployed(
        &self,
        tenant: &str,
        kind: SecretKind,
        entity: &str,
    ) -> Result<(), PushError> {
        let deadline = tokio::time::Instant::now() + DEPLOY_WAIT;
        loop {
            let last = match self.call(tenant, Method::GET, entity, None).await? {
                (200, b) => {
                    let status = artifact_status(kind, &b);
                    if status == "DEPLOYED" {
                        return Ok(());
                    }
                    status
                }
                (s, b) => format!("read answered {s}: {}", short(&b)),
            };
            if tokio::time::Instant::now() + DEPLOY_POLL > deadline {
                return Err(PushError::NotDeployed(DEPLOY_WAIT, last));
            }
            tokio::time::sleep(DEPLOY_POLL).await;
        }
    }

    async fn call(
        &self,
        tenant: &str,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(u16, bytes::Bytes), PushError> {
        let mut req = TenantRequest::new(method, path);
        req.timeout = Some(PUSH_REQUEST_TIMEOUT);
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let r = self.pool.management_request(tenant, &req).await?;
        Ok((r.status, r.body))
    }
}

/// The pending pushes of one secret at `now`.
fn pending(name: &str, rec: &SecretRecord, tenants: &[String], now: u64) -> Vec<Job> {
    let Some(cur) = rec.current_version() else {
        return Vec::new();
    };
    if rec.deleted_ms.is_some() || !cur.enabled || cur.not_before_ms.is_some_and(|nb| nb > now) {
        return Vec::new();
    }
    tenants
        .iter()
        .filter(|t| rec.settings.targets.includes(t))
        .filter_map(|t| {
            let ps = rec.push.get(t).cloned().unwrap_or_default();
            if ps.version == rec.current {
                return None;
            }
            let same = ps.attempting_version == rec.current;
            if same && ps.next_attempt_ms > now {
                return None;
            }
            Some(Job {
                secret: name.to_string(),
                tenant: t.clone(),
                kind: rec.kind,
                version: cur.clone(),
                attempts: if same { ps.attempts } else { 0 },
            })
        })
        .collect()
}

/// Delay before the next attempt after `attempts` earlier attempts of this version failed.
pub fn backoff_ms(attempts: u32) -> u64 {
    BACKOFF_BASE_MS
        .saturating_mul(1u64 << attempts.min(16))
        .min(BACKOFF_MAX_MS)
}

/// `Status` of a read-back entity (`d.SecurityArtifactDescriptor.Status`, or `d.Status` for
/// secure parameters), `"unknown"` if absent.
fn artifact_status(kind: SecretKind, body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let d = &v["d"];
    let s = match kind {
        SecretKind::SecureParameter => &d["Status"],
        _ => &d["SecurityArtifactDescriptor"]["Status"],
    };
    s.as_str().unwrap_or("unknown").to_string()
}

/// At most 200 bytes of a tenant answer, for error messages (never the request body).
fn short(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[..b.len().min(200)]).into_owned()
}

fn status_err(op: &str, status: u16, body: bytes::Bytes) -> PushError {
    PushError::Status {
        op: op.to_string(),
        status,
        body: short(&body),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Backoff doubles from the base and stops at the cap.
    #[test]
    fn backoff_doubles_to_the_cap() {
        assert_eq!(backoff_ms(0), BACKOFF_BASE_MS);
        assert_eq!(backoff_ms(1), 2 * BACKOFF_BASE_MS);
        assert_eq!(backoff_ms(40), BACKOFF_MAX_MS);
    }

    /// The read-back status is found where each entity set keeps it.
    #[test]
    fn artifact_status_per_kind() {
        let u = br#"{"d":{"SecurityArtifactDescriptor":{"Status":"DEPLOYED"}}}"#;
        assert_eq!(artifact_status(SecretKind::UserCredential, u), "DEPLOYED");
        let s = br#"{"d":{"Status":"DEPLOYING"}}"#;
        assert_eq!(artifact_status(SecretKind::SecureParameter, s), "DEPLOYING");
        assert_eq!(
            artifact_status(SecretKind::SecureParameter, b"x"),
            "unknown"
        );
    }
}
