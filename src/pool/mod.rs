//! The tenant pool: this node's live view of the replicated tenant set, and the one way the
//! rest of corral talks to CPI tenants.
//!
//! It owns, per tenant and per node: the unsealed credentials, the token and CSRF caches
//! (`auth.rs`), the health verdict fed by probes and by real traffic (`health.rs`), the latency
//! estimate and adaptive concurrency limit (`limit.rs`), and the metrics (`metrics.rs`).
//! Selection itself is a pure function (`select.rs`).
//!
//! The replicated state is the source of truth: [`Pool::spawn_watcher`] re-reads the local
//! tenant records every [`PoolOptions::watch_interval`] and adds, updates or removes runtime
//! entries (runtime state such as health survives a config change). Every node probes every
//! tenant on its own; nothing here is replicated.
//!
//! Callers (dispatch, sync proxy, secret push):
//! - [`Pool::pick`] -> [`Lease`], then [`Pool::runtime_request`] with it, then
//!   [`Lease::complete`]; or [`Pool::call`], which does all three;
//! - [`Pool::management_request`] for the OData API of a named tenant (CSRF handled);
//! - the sync proxy: [`Pool::pick_wait`] (a route's [`Policy`], a bounded wait for a free
//!   slot) and [`Pool::runtime_stream`] (streamed bodies, see `stream.rs`).

pub mod auth;
pub mod health;
pub mod limit;
pub mod metrics;
pub mod select;
pub mod spec;
pub mod stream;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::SeedableRng;
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION};
use reqwest::Method;
use serde_json::{json, Value};

use crate::seal::{SealError, Sealer, MASTER_KEY_BYTES};
use crate::store::{Store, StoreError};
use auth::{AuthCache, Plane};
use health::{Health, Status, Thresholds};
use limit::{AdaptiveLimit, PeakEwma};
use metrics::PM;
pub use select::Policy;
pub use spec::{AdminState, AuthSecret, Credentials, TenantSpec};
pub use stream::{ProxyBody, StreamRequest};

/// The HKDF purpose of the key that seals tenant credentials.
pub const CREDENTIALS_PURPOSE: &str = "tenant-credentials";
/// Largest response body read from a tenant (CPI's default body limit is 40 MB).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;
/// How many times `pick` re-selects when a chosen tenant filled up meanwhile.
const PICK_ATTEMPTS: usize = 4;
/// Tenant records read per page when syncing from the store.
const SYNC_PAGE: usize = 1_000;
/// Callers [`Pool::pick_wait`] lets wait at once for a tenant slot on this node; past it a
/// pick fails at once with [`PoolError::Saturated`] (the proxy answers 503 + Retry-After).
pub const MAX_PICK_WAITERS: usize = 1_024;
/// Longest a tenant's `Retry-After` keeps it out of selection.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct PoolOptions {
    /// This node's id (shown in views).
    pub node_id: u64,
    /// How often the replicated tenant set is re-read.
    pub watch_interval: Duration,
    /// Default timeout of one call to a tenant (connect + answer).
    pub request_timeout: Duration,
    /// TCP connect timeout to a tenant.
    pub connect_timeout: Duration,
    /// Consecutive failed calls that eject a tenant.
    pub passive_eject_after: u32,
    /// Slow-start window after readmission.
    pub slow_start: Duration,
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions {
            node_id: 0,
            watch_interval: Duration::from_millis(500),
            request_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(2),
            passive_eject_after: health::PASSIVE_EJECT_AFTER,
            slow_start: health::SLOW_START,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("no tenant can take new work ({reasons})")]
    NoTenant { reasons: String },
    #[error("every selectable tenant is at its concurrency limit")]
    Saturated,
    #[error("tenant `{0}` is not registered")]
    UnknownTenant(String),
    #[error("tenant `{tenant}`: credentials unusable: {message}")]
    Credentials { tenant: String, message: String },
    #[error("tenant `{tenant}`: authentication failed: {message}")]
    Auth { tenant: String, message: String },
    #[error("tenant `{tenant}`: cannot connect: {message}")]
    Connect { tenant: String, message: String },
    #[error("tenant `{tenant}`: no answer within the timeout")]
    Timeout { tenant: String },
    #[error("tenant `{tenant}`: {message}")]
    Http { tenant: String, message: String },
}

impl PoolError {
    pub fn from_reqwest(tenant: &str, e: reqwest::Error) -> PoolError {
        let tenant = tenant.to_string();
        if e.is_timeout() {
            PoolError::Timeout { tenant }
        } else if e.is_connect() {
            PoolError::Connect {
                tenant,
                message: e.to_string(),
            }
        } else {
            PoolError::Http {
                tenant,
                message: e.to_string(),
            }
        }
    }

    /// How a failed call counts for health, latency and limits.
    pub fn outcome(&self) -> Outcome {
        match self {
            PoolError::Timeout { .. } => Outcome::Timeout,
            PoolError::Connect { .. } | PoolError::Http { .. } => Outcome::Connect,
            PoolError::Auth { .. } | PoolError::Credentials { .. } => Outcome::Auth,
            _ => Outcome::Cancelled,
        }
    }
}

/// How a call ended, as recorded by [`Lease::complete`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The tenant answered with this status.
    Status(u16),
    /// Connection refused, reset or dropped.
    Connect,
    Timeout,
    /// Could not authenticate (token endpoint down, credentials unreadable).
    Auth,
    /// The caller gave up before an answer; only the in-flight count changes.
    Cancelled,
}

/// Whether one named tenant can take work on this node now (see [`Pool::availability`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Availability {
    Selectable,
    /// Not selectable for `for_ms` (unhealthy, not yet probed, draining, disabled...).
    Unavailable {
        for_ms: u64,
        reason: String,
    },
    /// Not in the pool (removed, or never registered).
    Unknown,
}

/// Restricts a pick.
#[derive(Debug, Clone, Default)]
pub struct Selector {
    /// Tenants not to choose (for example those a retry already tried).
    pub exclude: Vec<String>,
}

/// One call to a tenant, relative to the tenant's runtime URL or API service root.
#[derive(Debug, Clone)]
pub struct TenantRequest {
    pub method: Method,
    /// Appended to `runtime_url` (e.g. `/http/orders`) or `api_url` (e.g. `/UserCredentials`).
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Overrides [`PoolOptions::request_timeout`].
    pub timeout: Option<Duration>,
}

impl TenantRequest {
    pub fn new(method: Method, path: impl Into<String>) -> TenantRequest {
        TenantRequest {
            method,
            path: path.into(),
            headers: HeaderMap::new(),
            body: Bytes::new(),
            timeout: None,
        }
    }

    pub fn body(mut self, body: impl Into<Bytes>) -> TenantRequest {
        self.body = body.into();
        self
    }

    pub fn header(mut self, name: &'static str, value: &str) -> TenantRequest {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.headers.insert(name, v);
        }
        self
    }
}

#[derive(Debug, Clone)]
pub struct TenantResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

struct Conf {
    spec: TenantSpec,
    creds: Result<Credentials, String>,
    revision: u64,
}

/// One tenant's runtime state on this node.
pub struct Tenant {
    pub name: String,
    conf: RwLock<Arc<Conf>>,
    in_flight: AtomicU32,
    health: Mutex<Health>,
    latency: Mutex<PeakEwma>,
    limit: Mutex<AdaptiveLimit>,
    pub auth: AuthCache,
    removed: AtomicBool,
    thresholds_passive: u32,
    /// Signalled whenever a call to any tenant of the pool ends (wakes [`Pool::pick_wait`]).
    freed: Arc<tokio::sync::Notify>,
    /// Set from a 429/503 `Retry-After`: no new work before then (at most [`MAX_BACKOFF`]).
    backoff_until: Mutex<Option<Instant>>,
    /// CSRF session for runtime flows protected with `xsrfProtection` (fetched on demand).
    runtime_csrf: tokio::sync::Mutex<Option<auth::CsrfSession>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Counters of one tenant, for tests and views.
#[derive(Debug, Clone)]
pub struct TenantStats {
    pub status: Status,
    pub reason: String,
    pub in_flight: u32,
    pub limit: u32,
    pub token_fetches: u64,
    pub unauthorized_retries: u64,
    pub csrf_fetches: u64,
    pub csrf_retries: u64,
}

impl Tenant {
    fn conf(&self) -> Arc<Conf> {
        self.conf.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn thresholds(&self, conf: &Conf) -> Thresholds {
        Thresholds {
            fall: conf.spec.health.fall,
            rise: conf.spec.health.rise,
            passive: self.thresholds_passive,
        }
    }

    /// Why this tenant cannot take new work now, or `None`.
    fn excluded(&self, conf: &Conf, h: &Health) -> Option<String> {
        match conf.spec.state {
            AdminState::Draining => return Some("draining".into()),
            AdminState::Disabled => return Some("disabled".into()),
            AdminState::Active => {}
        }
        if let Err(m) = &conf.creds {
            return Some(format!("credentials unusable: {m}"));
        }
        match h.status {
            Status::Healthy => None,
            Status::Unknown => Some("not probed yet".into()),
            Status::Unhealthy => Some(format!("unhealthy: {}", h.reason)),
        }
    }

    fn candidate(&self, now: Instant, slow_start: Duration) -> select::Candidate {
        let conf = self.conf();
        let h = lock(&self.health);
        let backing_off = lock(&self.backoff_until).is_some_and(|t| now < t);
        let excluded = match self.excluded(&conf, &h) {
            None if backing_off => Some("backing off (Retry-After)".to_string()),
            other => other,
        };
        select::Candidate {
            excluded,
            priority: conf.spec.priority,
            weight: conf.spec.weight as f64 * h.slow_start_factor(now, slow_start),
            in_flight: self.in_flight.load(Ordering::Acquire),
            limit: lock(&self.limit).current(),
            latency_s: lock(&self.latency).estimate(now),
        }
    }

    fn try_acquire(&self, limit: u32) -> bool {
        let ok = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_ok();
        if ok {
            PM.in_flight
                .with_label_values(&[&self.name])
                .set(self.in_flight.load(Ordering::Relaxed) as i64);
        }
        ok
    }

    fn set_health(&self, changed: Option<Status>) {
        let Some(to) = changed else { return };
        let reason = lock(&self.health).reason.clone();
        let label = match to {
            Status::Healthy => "healthy",
            Status::Unhealthy => "unhealthy",
            Status::Unknown => "unknown",
        };
        PM.health_changes
            .with_label_values(&[&self.name, label])
            .inc();
        PM.healthy
            .with_label_values(&[&self.name])
            .set((to == Status::Healthy) as i64);
        match to {
            Status::Healthy => tracing::info!(tenant = %self.name, %reason, "tenant healthy"),
            _ => tracing::warn!(tenant = %self.name, %reason, "tenant {label}"),
        }
    }

    /// Ends one leased call.
    fn finish(&self, outcome: Outcome, elapsed: Duration) {
        let left = self
            .in_flight
            .fetch_sub(1, Ordering::AcqRel)
            .saturating_sub(1);
        let name = self.name.as_str();
        PM.in_flight.with_label_values(&[name]).set(left as i64);
        self.freed.notify_waiters();
        if outcome == Outcome::Cancelled {
            return;
        }
        let now = Instant::now();
        PM.requests.with_label_values(&[name]).inc();
        PM.latency
            .with_label_values(&[name])
            .observe(elapsed.as_secs_f64());
        let class = match outcome {
            Outcome::Status(s) if s < 400 => None,
            Outcome::Status(429) => Some("429"),
            Outcome::Status(503) => Some("503"),
            Outcome::Status(s) if s < 500 => Some("4xx"),
            Outcome::Status(_) => Some("5xx"),
            Outcome::Connect => Some("connect"),
            Outcome::Timeout => Some("timeout"),
            Outcome::Auth => Some("auth"),
            Outcome::Cancelled => None,
        };
        if let Some(c) = class {
            PM.errors.with_label_values(&[name, c]).inc();
        }
        if matches!(outcome, Outcome::Status(_) | Outcome::Timeout) {
            lock(&self.latency).observe(elapsed, now);
            let overload = matches!(
                outcome,
                Outcome::Status(429) | Outcome::Status(503) | Outcome::Timeout
            );
            let mut l = lock(&self.limit);
            l.on_sample(elapsed, overload, now);
            PM.limit.with_label_values(&[name]).set(l.current() as i64);
        }
        let failed = matches!(
            outcome,
            Outcome::Connect | Outcome::Timeout | Outcome::Status(500..)
        );
        let conf = self.conf();
        let th = self.thresholds(&conf);
        let changed = lock(&self.health).on_call(failed, &format!("{outcome:?}"), th, now);
        self.set_health(changed);
    }

    /// Sends one request with the plane's authentication: bearer refreshed once on 401,
    /// and for management writes the CSRF token, refetched once on `403 X-CSRF-Token: Required`.
    async fn send(
        &self,
        http: &reqwest::Client,
        plane: Plane,
        req: &TenantRequest,
        default_timeout: Duration,
    ) -> Result<TenantResponse, PoolError> {
        let conf = self.conf();
        let creds = conf.creds.as_ref().map_err(|m| PoolError::Credentials {
            tenant: self.name.clone(),
            message: m.clone(),
        })?;
        let (secret, base) = match plane {
            Plane::Runtime => (&creds.runtime, conf.spec.runtime_url.as_str()),
            Plane::Management => (&creds.management, conf.spec.api_url.as_str()),
        };
        let oauth = matches!(secret, AuthSecret::Oauth2 { .. });
        let url = format!("{base}{}", req.path);
        let write = plane == Plane::Management
            && !matches!(req.method, Method::GET | Method::HEAD | Method::OPTIONS);
        let timeout = req.timeout.unwrap_or(default_timeout);
        let mut stale: Option<HeaderValue> = None;
        let (mut retried_401, mut retried_csrf, mut refetch_csrf) = (false, false, false);
        loop {
            let authz = self
                .auth
                .authorization(http, &self.name, secret, plane, stale.as_ref())
                .await?;
            let mut rb = http
                .request(req.method.clone(), &url)
                .headers(req.headers.clone())
                .header(AUTHORIZATION, authz.clone())
                .timeout(timeout)
                .body(req.body.clone());
            if plane == Plane::Management && !req.headers.contains_key(ACCEPT) {
                // The emulator always answers JSON; real tenants default to Atom XML.
                rb = rb.header(ACCEPT, "application/json");
            }
            if write {
                match self
                    .auth
                    .csrf(http, &self.name, base, &authz, refetch_csrf)
                    .await?
                {
                    Ok(s) => rb = auth::with_csrf(rb, &s),
                    Err(401) if oauth && !retried_401 => {
                        retried_401 = true;
                        stale = Some(authz);
                        continue;
                    }
                    Err(status) => {
                        return Err(PoolError::Auth {
                            tenant: self.name.clone(),
                            message: format!("CSRF token fetch answered {status}"),
                        })
                    }
                }
                refetch_csrf = false;
            }
            let resp = rb
                .send()
                .await
                .map_err(|e| PoolError::from_reqwest(&self.name, e))?;
            let status = resp.status().as_u16();
            if status == 401 && oauth && !retried_401 {
                retried_401 = true;
                self.auth
                    .unauthorized_retries
                    .fetch_add(1, Ordering::Relaxed);
                stale = Some(authz);
                continue;
            }
            let csrf_required = resp
                .headers()
                .get("X-CSRF-Token")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.eq_ignore_ascii_case("required"));
            if status == 403 && write && csrf_required && !retried_csrf {
                retried_csrf = true;
                refetch_csrf = true;
                self.auth.csrf_retries.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let headers = resp.headers().clone();
            let body = auth::read_limited(resp, MAX_RESPONSE_BYTES)
                .await
                .map_err(|m| PoolError::Http {
                    tenant: self.name.clone(),
                    message: m,
                })?;
            return Ok(TenantResponse {
                status,
                headers,
                body: body.into(),
            });
        }
    }

    /// One active probe: (passed, detail).
    async fn probe(&self, http: &reqwest::Client) -> (bool, String) {
        let conf = self.conf();
        let h = &conf.spec.health;
        let plane = match h.target {
            spec::ProbeTarget::Runtime => Plane::Runtime,
            spec::ProbeTarget::Management => Plane::Management,
        };
        let timeout = Duration::from_millis(h.timeout_ms);
        let result = if h.auth {
            let req = TenantRequest {
                timeout: Some(timeout),
                ..TenantRequest::new(Method::GET, h.path.clone())
            };
            self.send(http, plane, &req, timeout)
                .await
                .map(|r| r.status)
        } else {
            let base = match plane {
                Plane::Runtime => &conf.spec.runtime_url,
                Plane::Management => &conf.spec.api_url,
            };
            http.get(format!("{base}{}", h.path))
                .timeout(timeout)
                .send()
                .await
                .map(|r| r.status().as_u16())
                .map_err(|e| PoolError::from_reqwest(&self.name, e))
        };
        match result {
            Ok(s) => {
                let ok = match h.expected_status {
                    Some(want) => s == want,
                    None => s < 500,
                };
                (ok, format!("status {s}"))
            }
            Err(e) => (false, e.to_string()),
        }
    }

    fn stats(&self) -> TenantStats {
        let h = lock(&self.health);
        TenantStats {
            status: h.status,
            reason: h.reason.clone(),
            in_flight: self.in_flight.load(Ordering::Acquire),
            limit: lock(&self.limit).current(),
            token_fetches: self.auth.token_fetches.load(Ordering::Relaxed),
            unauthorized_retries: self.auth.unauthorized_retries.load(Ordering::Relaxed),
            csrf_fetches: self.auth.csrf_fetches.load(Ordering::Relaxed),
            csrf_retries: self.auth.csrf_retries.load(Ordering::Relaxed),
        }
    }

    /// This node's view of the tenant, with the reason it can or cannot take work.
    fn view(&self, slow_start: Duration) -> Value {
        let now = Instant::now();
        let conf = self.conf();
        let h = lock(&self.health);
        let excluded = self.excluded(&conf, &h);
        let last_probe = h.last_probe.as_ref().map(|(at, ok, detail)| {
            json!({"ok": ok, "detail": detail,
                   "ms_ago": now.saturating_duration_since(*at).as_millis() as u64})
        });
        json!({
            "status": h.status,
            "reason": h.reason,
            "since_ms_ago": now.saturating_duration_since(h.changed_at).as_millis() as u64,
            "selectable": excluded.is_none(),
            "excluded_because": excluded,
            "in_flight": self.in_flight.load(Ordering::Acquire),
            "limit": lock(&self.limit).current(),
            "latency_ms": (lock(&self.latency).estimate(now) * 1000.0 * 10.0).round() / 10.0,
            "weight_factor": h.slow_start_factor(now, slow_start),
            "health_changes": h.changes,
            "last_probe": last_probe,
            "revision": conf.revision,
        })
    }
}

/// A claim on one tenant for one call. Dropping it without [`Lease::complete`] counts the
/// call as cancelled (the in-flight count is released, nothing else is recorded).
pub struct Lease {
    tenant: Arc<Tenant>,
    started: Instant,
    done: bool,
}

impl Lease {
    pub fn tenant(&self) -> &str {
        &self.tenant.name
    }

    /// Records how the call ended: latency, limit and passive health.
    pub fn complete(mut self, outcome: Outcome) {
        self.done = true;
        self.tenant.finish(outcome, self.started.elapsed());
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.done {
            self.tenant
                .finish(Outcome::Cancelled, self.started.elapsed());
        }
    }
}

/// One place in the bounded wait queue of [`Pool::pick_wait`]; given back on drop (also when
/// the waiting request is cancelled).
struct WaitSlot<'a>(&'a AtomicUsize);

impl<'a> WaitSlot<'a> {
    fn take(n: &'a AtomicUsize) -> Option<WaitSlot<'a>> {
        n.fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
            (w < MAX_PICK_WAITERS).then_some(w + 1)
        })
        .ok()
        .map(|_| WaitSlot(n))
    }
}

impl Drop for WaitSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

pub struct Pool {
    opts: PoolOptions,
    sealer: Sealer,
    http: reqwest::Client,
    tenants: RwLock<BTreeMap<String, Arc<Tenant>>>,
    rng: Mutex<rand::rngs::StdRng>,
    /// Round-robin turn counter.
    turn: AtomicU64,
    freed: Arc<tokio::sync::Notify>,
    /// Callers waiting in [`Pool::pick_wait`] now.
    waiting: AtomicUsize,
}

/// Opens every stored tenant's credentials with `master`; the first that does not open is
/// returned with its error. A node runs this at start and refuses to start on failure.
/// A tenant's `Retry-After`, in ms from `now_ms`: delay-seconds or an HTTP-date (RFC 9110
/// §10.2.3; a date in the past means "now"). `None` when absent or unreadable.
pub fn retry_after_ms(h: &HeaderMap, now_ms: u64) -> Option<u64> {
    let v = h.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(s) = v.parse::<u64>() {
        return Some(s.saturating_mul(1_000));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v)
        .ok()?
        .timestamp_millis();
    Some((at - now_ms as i64).max(0) as u64)
}

pub fn verify_stored_credentials(
    store: &dyn Store,
    master: &[u8; MASTER_KEY_BYTES],
) -> Result<Result<(), (String, SealError)>, StoreError> {
    let sealer = Sealer::from_master_key(master, CREDENTIALS_PURPOSE);
    let mut after: Option<String> = None;
    loop {
        let page = crate::state::list_tenants(store, after.as_deref(), SYNC_PAGE)?;
        for (name, e) in &page {
            if let Err(err) = sealer.open(&e.sealed_credentials, name.as_bytes()) {
                return Ok(Err((name.clone(), err)));
            }
        }
        match page.last() {
            Some((n, _)) if page.len() == SYNC_PAGE => after = Some(n.clone()),
            _ => return Ok(Ok(())),
        }
    }
}

impl Pool {
    pub fn new(master: &[u8; MASTER_KEY_BYTES], opts: PoolOptions) -> Arc<Pool> {
        // The pool's metrics exist before anything renders `/metrics`.
        std::sync::LazyLock::force(&PM);
        let http = reqwest::Client::builder()
            .connect_timeout(opts.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .tcp_nodelay(true)
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Arc::new(Pool {
            sealer: Sealer::from_master_key(master, CREDENTIALS_PURPOSE),
            opts,
            http,
            tenants: RwLock::new(BTreeMap::new()),
            rng: Mutex::new(rand::rngs::StdRng::from_entropy()),
            turn: AtomicU64::new(0),
            freed: Arc::new(tokio::sync::Notify::new()),
            waiting: AtomicUsize::new(0),
        })
    }

    pub fn options(&self) -> &PoolOptions {
        &self.opts
    }

    /// The HTTP client (keep-alive pool) used for tenants; also fine for peer admin calls.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Seals credentials for tenant `name` (AAD = the name) for the replicated log.
    pub fn seal_credentials(&self, name: &str, creds: &Credentials) -> Vec<u8> {
        let plain = serde_json::to_vec(creds).unwrap_or_default();
        self.sealer.seal(&plain, name.as_bytes())
    }

    pub fn open_credentials(&self, name: &str, sealed: &[u8]) -> Result<Credentials, String> {
        let plain = self.sealer.open(sealed, name.as_bytes()).map_err(|e| {
            format!("{e}; this node's master key differs from the one that sealed them")
        })?;
        serde_json::from_slice(&plain).map_err(|e| format!("unreadable after unsealing: {e}"))
    }

    fn get(&self, name: &str) -> Option<Arc<Tenant>> {
        self.tenants
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    fn all(&self) -> Vec<Arc<Tenant>> {
        self.tenants
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Adds or updates a tenant. Health, latency and in-flight state survive an update; the
    /// token and CSRF caches are dropped when the credentials change. Must run inside a tokio
    /// runtime (a new tenant gets a probe task).
    pub fn upsert(
        self: &Arc<Self>,
        name: &str,
        spec: TenantSpec,
        creds: Result<Credentials, String>,
        revision: u64,
    ) {
        if let Err(m) = &creds {
            tracing::error!(tenant = name, error = %m, "tenant credentials cannot be opened; the tenant gets no work from this node");
        }
        if let Some(t) = self.get(name) {
            let old = t.conf();
            if old.revision == revision && old.spec == spec && old.creds == creds {
                return;
            }
            let creds_changed = old.creds != creds;
            lock(&t.limit).set_max(spec.max_in_flight);
            *t.conf.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(Conf {
                spec,
                creds,
                revision,
            });
            if creds_changed {
                let t2 = t.clone();
                tokio::spawn(async move { t2.auth.clear().await });
            }
            return;
        }
        let t = Arc::new(Tenant {
            name: name.to_string(),
            limit: Mutex::new(AdaptiveLimit::new(spec.max_in_flight)),
            conf: RwLock::new(Arc::new(Conf {
                spec,
                creds,
                revision,
            })),
            in_flight: AtomicU32::new(0),
            health: Mutex::new(Health::new(Instant::now())),
            latency: Mutex::new(PeakEwma::default()),
            auth: AuthCache::default(),
            removed: AtomicBool::new(false),
            thresholds_passive: self.opts.passive_eject_after,
            freed: self.freed.clone(),
            backoff_until: Mutex::new(None),
            runtime_csrf: tokio::sync::Mutex::new(None),
        });
        PM.limit
            .with_label_values(&[name])
            .set(lock(&t.limit).current() as i64);
        PM.healthy.with_label_values(&[name]).set(0);
        self.tenants
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), t.clone());
        tokio::spawn(probe_loop(t, self.http.clone()));
    }

    /// Removes a tenant; leases already out finish normally, its probe task stops.
    pub fn remove(&self, name: &str) {
        let removed = self
            .tenants
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        if let Some(t) = removed {
            t.removed.store(true, Ordering::Release);
            metrics::forget(name);
        }
    }

    /// Makes the runtime set match the tenant records in `store`.
    pub fn sync_from_store(self: &Arc<Self>, store: &dyn Store) -> Result<(), StoreError> {
        let mut seen = std::collections::HashSet::new();
        let mut after: Option<String> = None;
        loop {
            let page = crate::state::list_tenants(store, after.as_deref(), SYNC_PAGE)?;
            for (name, e) in &page {
                seen.insert(name.clone());
                if let Some(t) = self.get(name) {
                    if t.conf().revision == e.revision {
                        continue;
                    }
                }
                let spec: TenantSpec = match serde_json::from_slice(&e.spec) {
                    Ok(s) => s,
                    Err(err) => {
                        tracing::error!(tenant = %name, error = %err, "unreadable tenant spec; skipped");
                        continue;
                    }
                };
                let creds = self.open_credentials(name, &e.sealed_credentials);
                self.upsert(name, spec, creds, e.revision);
            }
            match page.last() {
                Some((n, _)) if page.len() == SYNC_PAGE => after = Some(n.clone()),
                _ => break,
            }
        }
        for t in self.all() {
            if !seen.contains(&t.name) {
                self.remove(&t.name);
            }
        }
        Ok(())
    }

    /// Re-reads the replicated tenant set every `watch_interval` until the task is aborted.
    pub fn spawn_watcher(self: &Arc<Self>, store: Arc<dyn Store>) -> tokio::task::JoinHandle<()> {
        let pool = self.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = pool.sync_from_store(&*store) {
                    tracing::error!(error = %e, "reading the tenant set failed");
                }
                tokio::time::sleep(pool.opts.watch_interval).await;
            }
        })
    }

    /// Chooses a tenant for one call and counts it in flight (see `select.rs`).
    pub fn pick(&self, sel: &Selector) -> Result<Lease, PoolError> {
        self.pick_with(sel, Policy::Performance, None)
    }

    /// Like [`Pool::pick`] under `policy`, among the tenants named in `only` (all if `None`).
    pub fn pick_with(
        &self,
        sel: &Selector,
        policy: Policy,
        only: Option<&[String]>,
    ) -> Result<Lease, PoolError> {
        for _ in 0..PICK_ATTEMPTS {
            let tenants: Vec<Arc<Tenant>> = self
                .all()
                .into_iter()
                .filter(|t| !sel.exclude.iter().any(|x| x == &t.name))
                .filter(|t| only.is_none_or(|o| o.iter().any(|x| x == &t.name)))
                .collect();
            let now = Instant::now();
            let cands: Vec<select::Candidate> = tenants
                .iter()
                .map(|t| t.candidate(now, self.opts.slow_start))
                .collect();
            let turn = self.turn.fetch_add(1, Ordering::Relaxed);
            let chosen = select::choose_with(&cands, policy, turn, &mut *lock(&self.rng));
            let i = match chosen {
                Ok(i) => i,
                Err(select::NoPick::Saturated) => return Err(PoolError::Saturated),
                Err(select::NoPick::NoneSelectable) => {
                    let reasons = tenants
                        .iter()
                        .zip(&cands)
                        .map(|(t, c)| {
                            format!(
                                "{}: {}",
                                t.name,
                                c.excluded.as_deref().unwrap_or("excluded")
                            )
                        })
                        .collect::<Vec<_>>();
                    let reasons = if reasons.is_empty() {
                        "no tenants registered".to_string()
                    } else {
                        reasons.join("; ")
                    };
                    return Err(PoolError::NoTenant { reasons });
                }
            };
            if tenants[i].try_acquire(cands[i].limit) {
                return Ok(Lease {
                    tenant: tenants[i].clone(),
                    started: Instant::now(),
                    done: false,
                });
            }
        }
        Err(PoolError::Saturated)
    }

    /// Whether tenant `name` can take work now, and if not, since when and why. Admin states
    /// (draining, disabled) and unusable credentials count as unavailable for ever.
    pub fn availability(&self, name: &str) -> Availability {
        let Some(t) = self.get(name) else {
            return Availability::Unknown;
        };
        let conf = t.conf();
        let h = lock(&t.health);
        match t.excluded(&conf, &h) {
            None => Availability::Selectable,
            Some(reason) => {
                let for_ms = if conf.spec.state != AdminState::Active || conf.creds.is_err() {
                    u64::MAX
                } else {
                    Instant::now()
                        .saturating_duration_since(h.changed_at)
                        .as_millis() as u64
                };
                Availability::Unavailable { for_ms, reason }
            }
        }
    }

    /// Like [`Pool::pick_with`], but when every selectable tenant is at its concurrency limit,
    /// waits up to `wait` for a slot to free (woken by each call that ends). At most
    /// [`MAX_PICK_WAITERS`] callers wait at once; the next one gets `Saturated` at once.
    pub async fn pick_wait(
        &self,
        sel: &Selector,
        policy: Policy,
        only: Option<&[String]>,
        wait: Duration,
    ) -> Result<Lease, PoolError> {
        match self.pick_with(sel, policy, only) {
            Err(PoolError::Saturated) => {}
            other => return other,
        }
        let _waiting = WaitSlot::take(&self.waiting).ok_or(PoolError::Saturated)?;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            match self.pick_with(sel, policy, only) {
                Err(PoolError::Saturated) => {}
                other => break other,
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                break Err(PoolError::Saturated);
            }
        }
    }

    /// Claims tenant `name` itself for one call (a sticky redelivery), within its adaptive
    /// limit. Fails when it is not selectable or is at its limit.
    pub fn acquire(&self, name: &str) -> Result<Lease, PoolError> {
        let t = self
            .get(name)
            .ok_or_else(|| PoolError::UnknownTenant(name.to_string()))?;
        let c = t.candidate(Instant::now(), self.opts.slow_start);
        if let Some(reasons) = c.excluded {
            return Err(PoolError::NoTenant { reasons });
        }
        if !t.try_acquire(c.limit) {
            return Err(PoolError::Saturated);
        }
        Ok(Lease {
            tenant: t,
            started: Instant::now(),
            done: false,
        })
    }

    /// Keeps tenant `name` out of selection for `for_` (capped at [`MAX_BACKOFF`]): it
    /// answered 429 or 503 with `Retry-After`.
    pub fn back_off(&self, name: &str, for_: Duration) {
        if let Some(t) = self.get(name) {
            *lock(&t.backoff_until) = Some(Instant::now() + for_.min(MAX_BACKOFF));
        }
    }

    /// Sends a streamed runtime call to the leased tenant (see `stream.rs`); answers once the
    /// response headers are in, the body still to be read.
    pub async fn runtime_stream(
        &self,
        lease: &Lease,
        req: &StreamRequest,
    ) -> Result<reqwest::Response, PoolError> {
        lease.tenant.send_stream(&self.http, req).await
    }

    /// Sends a runtime call (e.g. `POST /http/orders`) to the leased tenant.
    pub async fn runtime_request(
        &self,
        lease: &Lease,
        req: &TenantRequest,
    ) -> Result<TenantResponse, PoolError> {
        lease
            .tenant
            .send(&self.http, Plane::Runtime, req, self.opts.request_timeout)
            .await
    }

    /// Picks a tenant, sends the runtime call, records the outcome. Returns the tenant's name.
    pub async fn call(
        &self,
        sel: &Selector,
        req: &TenantRequest,
    ) -> Result<(String, TenantResponse), PoolError> {
        let lease = self.pick(sel)?;
        let name = lease.tenant().to_string();
        match self.runtime_request(&lease, req).await {
            Ok(r) => {
                lease.complete(Outcome::Status(r.status));
                Ok((name, r))
            }
            Err(e) => {
                lease.complete(e.outcome());
                Err(e)
            }
        }
    }

    /// Sends a management (OData) call to tenant `name`, whatever its health or state (secret
    /// push and artifact sync address every tenant). Writes carry the CSRF token.
    pub async fn management_request(
        &self,
        name: &str,
        req: &TenantRequest,
    ) -> Result<TenantResponse, PoolError> {
        let t = self
            .get(name)
            .ok_or_else(|| PoolError::UnknownTenant(name.to_string()))?;
        t.send(
            &self.http,
            Plane::Management,
            req,
            self.opts.request_timeout,
        )
        .await
    }

    /// Counters of one tenant on this node.
    pub fn stats(&self, name: &str) -> Option<TenantStats> {
        self.get(name).map(|t| t.stats())
    }

    /// Calls the selectable tenants could take now: the sum of their adaptive limits minus
    /// what is in flight. A dispatcher asks before reading candidates from the store, so a
    /// full pool costs it nothing.
    pub fn headroom(&self) -> usize {
        let now = Instant::now();
        self.all()
            .iter()
            .map(|t| t.candidate(now, self.opts.slow_start))
            .filter(|c| c.excluded.is_none())
            .map(|c| c.limit.saturating_sub(c.in_flight) as usize)
            .sum()
    }

    /// Names of the tenants this node knows.
    pub fn names(&self) -> Vec<String> {
        self.all().iter().map(|t| t.name.clone()).collect()
    }

    /// This node's view of every tenant: name -> view.
    pub fn local_view(&self) -> BTreeMap<String, Value> {
        self.all()
            .iter()
            .map(|t| (t.name.clone(), t.view(self.opts.slow_start)))
            .collect()
    }
}

async fn probe_loop(t: Arc<Tenant>, http: reqwest::Client) {
    loop {
        if t.removed.load(Ordering::Acquire) {
            return;
        }
        let conf = t.conf();
        if conf.spec.state != AdminState::Disabled {
            let (ok, detail) = t.probe(&http).await;
            if t.removed.load(Ordering::Acquire) {
                return;
            }
            let th = t.thresholds(&conf);
            let changed = lock(&t.health).on_probe(ok, detail, th, Instant::now());
            t.set_health(changed);
        }
        tokio::time::sleep(Duration::from_millis(conf.spec.health.interval_ms)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            reqwest::header::RETRY_AFTER,
            HeaderValue::from_str(v).unwrap(),
        );
        h
    }

    /// Retry-After in both RFC 9110 forms: delay-seconds, and an HTTP-date measured from the
    /// caller's clock (a past date means retry now); garbage and absence mean "no advice".
    #[test]
    fn retry_after_seconds_and_http_date() {
        // Sun, 06 Nov 1994 08:49:37 GMT = 784111777 s since the epoch.
        let date_ms = 784_111_777_000u64;
        assert_eq!(retry_after_ms(&h("7"), 0), Some(7_000));
        let d = "Sun, 06 Nov 1994 08:49:37 GMT";
        assert_eq!(retry_after_ms(&h(d), date_ms - 2_500), Some(2_500));
        assert_eq!(retry_after_ms(&h(d), date_ms + 1), Some(0));
        assert_eq!(retry_after_ms(&h("soon"), 0), None);
        assert_eq!(retry_after_ms(&HeaderMap::new(), 0), None);
    }
}
