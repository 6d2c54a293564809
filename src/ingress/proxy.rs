//! The sync proxy (and async enqueue) of the ingress listener: every request no other ingress
//! route claims is matched against the replicated routes (longest path prefix wins), checked
//! for its API key and rate limits, then either streamed to the best tenant of the pool with
//! failover inside the request, or enqueued into the route's durable queue (202).
//!
//! Owns this node's copy of the route table and the unsealed API keys (rebuilt by
//! [`Proxy::spawn_watcher`] whenever a revision changes, and on a miss), the token buckets
//! (`throttle.rs`) and the per-route retry budgets. Tenant calls go through `src/pool`.
//!
//! Retry rules (issue #6): a connection failure (nothing sent) is retried on another tenant
//! always; a 503, a 429, a timeout or a connection lost mid-request only when the request is
//! safe to repeat (idempotent method, or an `Idempotency-Key` / `X-Message-ID` header), the
//! body can be sent again, tries remain and the route's retry budget allows. A tenant's
//! `Retry-After` keeps it out of selection for that long. A retry never goes to a tenant this
//! request already tried.
//!
//! The same try loop ([`Proxy::send`]) serves requests corral makes itself through a named
//! route ([`Proxy::call_route`]: a schedule's call target), so they get the route's tenants,
//! policy, timeouts, retry rules and auth mode without a second copy of them.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{ConnectInfo, Request};
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use futures::TryStreamExt;

use crate::api::ApiError;
use crate::ingress::route::{
    ApiKeyDoc, AuthMode, Mode, Rate, RouteSpec, API_KEY_PREFIX, ROUTE_PREFIX,
};
use crate::ingress::throttle::{RetryBudget, Share, Throttle, Verdict};
use crate::ingress::IngressState;
use crate::pool::{Outcome, Pool, PoolError, ProxyBody, Selector, StreamRequest};
use crate::seal::{Sealer, MASTER_KEY_BYTES};
use crate::store::Store;

/// HKDF purpose of the key that seals client API keys.
pub const API_KEYS_PURPOSE: &str = "client-api-keys";
/// Request bodies up to this size are read whole before the first try, so a retry can send
/// them again; larger ones stream (retried only if no byte was sent yet).
pub const MAX_REPLAY_BYTES: usize = 1024 * 1024;
/// Largest request body the proxy forwards (a larger `Content-Length` gets 413; a chunked
/// body is cut off, failing the call, once it passes this).
pub const MAX_PROXY_BODY_BYTES: u64 = 1024 * 1024 * 1024;
/// How often the watcher compares route and key revisions with the store.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(250);
/// A miss (no route, unknown key) reloads the table at most this often.
pub const MISS_RELOAD_INTERVAL: Duration = Duration::from_millis(100);
/// Routes and keys read per page when loading the table.
const LOAD_PAGE: usize = 1_000;
/// Connection failures retried per request (each on a tenant not tried yet).
pub const MAX_CONNECT_RETRIES: u32 = 8;
/// Longest `X-Request-ID` accepted from a caller (a longer one is replaced).
pub const MAX_REQUEST_ID_BYTES: usize = 128;
/// The header carrying the client API key (removed before the tenant sees the request).
pub const API_KEY_HEADER: &str = "x-api-key";
/// Retry-After (seconds) when every tenant is busy.
const BUSY_RETRY_AFTER_S: u64 = 1;

/// Headers that describe one hop only (RFC 9110 §7.6.1), never forwarded either way.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

struct RouteEntry {
    name: String,
    spec: RouteSpec,
}

struct KeyEntry {
    name: String,
    rate_limit: Option<Rate>,
    routes: Vec<String>,
}

#[derive(Default)]
struct Table {
    /// Longest prefix first, then by name (so equal prefixes resolve alike on every node).
    routes: Vec<Arc<RouteEntry>>,
    /// SHA-256 of the key -> key.
    keys: HashMap<Vec<u8>, Arc<KeyEntry>>,
    /// (config key, revision) of everything loaded, to notice changes.
    stamp: Vec<(String, u64)>,
}

pub struct Proxy {
    pool: Arc<Pool>,
    store: Arc<dyn Store>,
    ingress: Arc<IngressState>,
    sealer: Sealer,
    live_nodes: Box<dyn Fn() -> usize + Send + Sync>,
    tls: bool,
    table: RwLock<Arc<Table>>,
    last_reload: Mutex<Instant>,
    throttle: Throttle,
    budgets: Mutex<HashMap<String, Arc<RetryBudget>>>,
}

fn sha256(b: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, b)
        .as_ref()
        .to_vec()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Proxy {
    /// `live_nodes`: this node plus the peers reachable now (the rate-limit share).
    pub fn new(
        pool: Arc<Pool>,
        ingress: Arc<IngressState>,
        master: &[u8; MASTER_KEY_BYTES],
        live_nodes: Box<dyn Fn() -> usize + Send + Sync>,
        tls: bool,
    ) -> Arc<Proxy> {
        Arc::new(Proxy {
            pool,
            store: ingress.store.clone(),
            ingress,
            sealer: Sealer::from_master_key(master, API_KEYS_PURPOSE),
            live_nodes,
            tls,
            table: RwLock::new(Arc::new(Table::default())),
            last_reload: Mutex::new(Instant::now() - MISS_RELOAD_INTERVAL),
            throttle: Throttle::default(),
            budgets: Mutex::new(HashMap::new()),
        })
    }

    /// Seals an API key for the log (AAD = its name), base64.
    pub fn seal_key(&self, name: &str, key: &str) -> String {
        base64::engine::general_purpose::STANDARD
            .encode(self.sealer.seal(key.as_bytes(), name.as_bytes()))
    }

    fn table(&self) -> Arc<Table> {
        self.table.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Rebuilds the table from the store if any route or key revision changed.
    pub fn reload(&self) {
        *lock(&self.last_reload) = Instant::now();
        match load_table(&*self.store, &self.sealer) {
            Ok(t) => {
                if t.stamp != self.table().stamp {
                    *self.table.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(t);
                }
            }
            Err(e) => tracing::error!(error = %e, "loading proxy routes failed"),
        }
    }

    /// After a miss: reloads unless that happened within [`MISS_RELOAD_INTERVAL`]; true if it did.
    fn reload_on_miss(&self) -> bool {
        if lock(&self.last_reload).elapsed() < MISS_RELOAD_INTERVAL {
            return false;
        }
        self.reload();
        true
    }

    pub fn spawn_watcher(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let m = me.clone();
                let _ = tokio::task::spawn_blocking(move || m.reload()).await;
                tokio::time::sleep(WATCH_INTERVAL).await;
            }
        })
    }

    fn route_for(&self, path: &str) -> Option<Arc<RouteEntry>> {
        let find = |t: &Table| {
            t.routes
                .iter()
                .find(|r| path.starts_with(r.spec.prefix.as_str()))
                .cloned()
        };
        find(&self.table()).or_else(|| self.reload_on_miss().then(|| find(&self.table())).flatten())
    }

    fn budget(&self, route: &str) -> Arc<RetryBudget> {
        lock(&self.budgets)
            .entry(route.to_string())
            .or_default()
            .clone()
    }

    /// The fallback handler of the ingress listener.
    pub async fn handle(self: Arc<Self>, req: Request) -> Response {
        match self.serve(req).await {
            Ok(r) => r,
            Err(e) => e.into_response(),
        }
    }

    async fn serve(&self, req: Request) -> Result<Response, ApiError> {
        let Some(route) = self.route_for(req.uri().path()) else {
            return Err(ApiError::NoRoute {
                method: req.method().to_string(),
                path: req.uri().path().to_string(),
            });
        };
        let ip = req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        let key = self.client_key(&route, req.headers())?;
        let verdict = self.admit(&route, key.as_deref(), req.headers(), ip)?;
        match route.spec.mode {
            Mode::Async => self.enqueue(&route, req).await,
            Mode::Sync => self.forward(&route, req, ip, verdict).await,
        }
    }

    fn client_key(
        &self,
        route: &RouteEntry,
        headers: &HeaderMap,
    ) -> Result<Option<Arc<KeyEntry>>, ApiError> {
        let presented = headers.get(API_KEY_HEADER).map(|v| v.as_bytes());
        let Some(p) = presented else {
            if route.spec.require_api_key {
                return Err(ApiError::ApiKey(format!(
                    "route `{}` needs a client API key in the X-API-Key header",
                    route.name
                )));
            }
            return Ok(None);
        };
        let h = sha256(p);
        let mut found = self.table().keys.get(&h).cloned();
        if found.is_none() && self.reload_on_miss() {
            found = self.table().keys.get(&h).cloned();
        }
        match found {
            Some(k) if k.routes.is_empty() || k.routes.contains(&route.name) => Ok(Some(k)),
            _ if !route.spec.require_api_key => Ok(None),
            Some(k) => Err(ApiError::ApiKey(format!(
                "API key `{}` is not valid for route `{}`",
                k.name, route.name
            ))),
            None => Err(ApiError::ApiKey("unknown API key".into())),
        }
    }

    /// Takes a token from every bucket that applies; the route's verdict feeds the
    /// RateLimit headers of the answer.
    fn admit(
        &self,
        route: &RouteEntry,
        key: Option<&KeyEntry>,
        headers: &HeaderMap,
        ip: Option<IpAddr>,
    ) -> Result<Option<Verdict>, ApiError> {
        let share = Share {
            live_nodes: (self.live_nodes)(),
        };
        let now = Instant::now();
        let take = |bucket: String, rate: &Rate, scope: String| {
            let v = self.throttle.take(&bucket, rate, share, now);
            if v.admitted {
                Ok(v)
            } else {
                Err(ApiError::RateLimited {
                    scope,
                    limit: v.limit,
                    remaining: v.remaining,
                    reset_s: v.reset_s,
                    retry_after_s: v.retry_after_s,
                })
            }
        };
        if let Some(c) = &route.spec.client_rate_limit {
            let ip_s = ip.map(|i| i.to_string()).unwrap_or_default();
            let who = match c.by.as_str() {
                "ip" => ip_s,
                "api_key" => key.map(|k| format!("key:{}", k.name)).unwrap_or(ip_s),
                by => by
                    .strip_prefix("header:")
                    .and_then(|h| headers.get(h))
                    .and_then(|v| v.to_str().ok())
                    .map(|v| format!("h:{v}"))
                    .unwrap_or(ip_s),
            };
            take(
                format!("c/{}/{who}", route.name),
                &c.rate(),
                format!("client `{who}` on route `{}`", route.name),
            )?;
        }
        if let Some(k) = key {
            if let Some(r) = &k.rate_limit {
                take(format!("k/{}", k.name), r, format!("API key `{}`", k.name))?;
            }
        }
        match &route.spec.rate_limit {
            Some(r) => take(
                format!("r/{}", route.name),
                r,
                format!("route `{}`", route.name),
            )
            .map(Some),
            None => Ok(None),
        }
    }

    async fn enqueue(&self, route: &RouteEntry, req: Request) -> Result<Response, ApiError> {
        let queue = route.spec.queue.clone().unwrap_or_default();
        let (parts, body) = req.into_parts();
        let limit = crate::state::queue::MAX_MESSAGE_BYTES;
        let bytes = read_limited(body, limit).await?;
        let mut headers = parts.headers;
        headers.remove(API_KEY_HEADER);
        crate::ingress::queue::enqueue_one(&self.ingress, &queue, &headers, bytes).await
    }

    async fn forward(
        &self,
        route: &RouteEntry,
        req: Request,
        ip: Option<IpAddr>,
        verdict: Option<Verdict>,
    ) -> Result<Response, ApiError> {
        let spec = &route.spec;
        let deadline = Instant::now() + Duration::from_millis(spec.total_timeout_ms);
        let (parts, body) = req.into_parts();
        let request_id = parts
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= MAX_REQUEST_ID_BYTES)
            .map(str::to_string)
            .unwrap_or_else(|| hex::encode(rand::random::<[u8; 16]>()));
        let up = Upstream {
            method: parts.method.clone(),
            path: upstream_path(spec, &parts.uri),
            headers: upstream_headers(&parts.headers, spec.auth, ip, &request_id, self.tls),
            safe: is_safe(&parts.method, &parts.headers),
            body: proxy_body(&parts.headers, body).await?,
        };
        let (tenant, resp) = self.send(route, up, deadline).await?;
        Ok(downstream(resp, &tenant, &request_id, verdict))
    }

    /// Sends one request through `route` until `deadline`: its tenant set and policy, per-try
    /// timeout, the retry rules of the module comment (with the route's retry budget) and its
    /// auth mode. Answers the tenant that answered and its response (body not read yet).
    async fn send(
        &self,
        route: &RouteEntry,
        up: Upstream,
        deadline: Instant,
    ) -> Result<(String, reqwest::Response), ApiError> {
        let spec = &route.spec;
        let Upstream {
            method,
            path,
            headers,
            body,
            safe,
        } = up;
        let budget = self.budget(&route.name);
        budget.deposit(spec.retry.budget_percent);
        let only = (!spec.tenants.is_empty()).then_some(spec.tenants.as_slice());
        let mut sel = Selector::default();
        let mut tries = 0u32;
        let mut connect_retries = 0u32;
        let mut held: Option<(String, reqwest::Response)> = None;
        let mut last_err: Option<PoolError> = None;
        while let Some(remaining) = deadline.checked_duration_since(Instant::now()) {
            let wait = remaining.min(Duration::from_millis(spec.queue_wait_ms));
            let lease = match self.pool.pick_wait(&sel, spec.policy, only, wait).await {
                Ok(l) => l,
                Err(e) => {
                    if held.is_none() && last_err.is_none() {
                        return Err(pick_error(e));
                    }
                    break;
                }
            };
            let tenant = lease.tenant().to_string();
            sel.exclude.push(tenant.clone());
            let sreq = StreamRequest {
                method: method.clone(),
                path: path.clone(),
                headers: headers.clone(),
                body: body.clone(),
                timeout: remaining.min(Duration::from_millis(spec.try_timeout_ms)),
                tenant_auth: spec.auth == AuthMode::Tenant,
            };
            match self.pool.runtime_stream(&lease, &sreq).await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let retry_after = retry_after(resp.headers());
                    if let (true, Some(d)) = (matches!(status, 429 | 503), retry_after) {
                        self.pool.back_off(&tenant, d);
                    }
                    lease.complete(Outcome::Status(status));
                    tries += 1;
                    let again = matches!(status, 429 | 503)
                        && safe
                        && tries < spec.retry.attempts
                        && body.replayable()
                        && budget.withdraw();
                    if again {
                        held = Some((tenant, resp));
                        continue;
                    }
                    return Ok((tenant, resp));
                }
                Err(e) => {
                    lease.complete(e.outcome());
                    let again = if matches!(e, PoolError::Connect { .. }) {
                        connect_retries += 1;
                        connect_retries <= MAX_CONNECT_RETRIES
                    } else {
                        tries += 1;
                        safe && tries < spec.retry.attempts && budget.withdraw()
                    };
                    tracing::debug!(tenant = %tenant, error = %e, retry = again, "proxy try failed");
                    last_err = Some(e);
                    if again && body.replayable() {
                        continue;
                    }
                    break;
                }
            }
        }
        if let Some(answer) = held {
            return Ok(answer);
        }
        Err(match last_err {
            Some(e @ PoolError::Timeout { .. }) => ApiError::GatewayTimeout(e.to_string()),
            Some(e) => ApiError::BadGateway(e.to_string()),
            None => ApiError::GatewayTimeout(format!(
                "total timeout of {} ms reached",
                spec.total_timeout_ms
            )),
        })
    }

    fn route_named(&self, name: &str) -> Option<Arc<RouteEntry>> {
        let find = |t: &Table| t.routes.iter().find(|r| r.name == name).cloned();
        find(&self.table()).or_else(|| self.reload_on_miss().then(|| find(&self.table())).flatten())
    }

    /// A request corral makes itself through the route named `call.route` (a schedule's call
    /// target): the path is matched against the route's prefix and rewritten as a proxied
    /// request's would be, and [`Self::send`] applies the route's tenants, policy, timeouts
    /// (the total one capped by `call.timeout`), retry rules and auth mode. API keys and rate
    /// limits, which admit outside callers, do not apply. Answers (tenant, status).
    pub async fn call_route(&self, call: RouteCall<'_>) -> Result<(String, u16), RouteCallError> {
        let route = self
            .route_named(call.route)
            .ok_or_else(|| RouteCallError::UnknownRoute(call.route.to_string()))?;
        let spec = &route.spec;
        if spec.mode != Mode::Sync {
            return Err(RouteCallError::NotSync(call.route.to_string()));
        }
        let uri: axum::http::Uri = call
            .path
            .parse()
            .map_err(|_| RouteCallError::BadPath(call.path.to_string()))?;
        if !uri.path().starts_with(spec.prefix.as_str()) {
            return Err(RouteCallError::OutsidePrefix {
                route: call.route.to_string(),
                prefix: spec.prefix.clone(),
                path: call.path.to_string(),
            });
        }
        let timeout = call
            .timeout
            .min(Duration::from_millis(spec.total_timeout_ms));
        let up = Upstream {
            safe: is_safe(&call.method, &call.headers),
            path: upstream_path(spec, &uri),
            headers: upstream_headers(&call.headers, spec.auth, None, call.request_id, self.tls),
            method: call.method,
            body: if call.body.is_empty() {
                ProxyBody::Empty
            } else {
                ProxyBody::Buffered(call.body)
            },
        };
        let (tenant, resp) = self
            .send(&route, up, Instant::now() + timeout)
            .await
            .map_err(|e| RouteCallError::Failed {
                route: call.route.to_string(),
                error: e,
            })?;
        Ok((tenant, resp.status().as_u16()))
    }
}

/// A request ready for a route's tenants: path rewritten, headers as the tenant gets them.
struct Upstream {
    method: Method,
    path: String,
    headers: HeaderMap,
    body: ProxyBody,
    /// May be sent twice (see [`is_safe`]).
    safe: bool,
}

/// What [`Proxy::call_route`] sends. The body is at most a schedule's, so it is held whole
/// (and can be sent again on a retry).
pub struct RouteCall<'a> {
    pub route: &'a str,
    pub method: Method,
    /// Path and query as a client would send them to the ingress listener.
    pub path: &'a str,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The `X-Request-ID` the tenant sees.
    pub request_id: &'a str,
    /// Longest the call may take (the route's `total_timeout_ms` caps it too).
    pub timeout: Duration,
}

/// Why [`Proxy::call_route`] got no answer.
#[derive(Debug, thiserror::Error)]
pub enum RouteCallError {
    #[error("route `{0}` does not exist (deleted since the schedule was defined?)")]
    UnknownRoute(String),
    #[error("route `{0}` is async (it enqueues); only a sync route can be called")]
    NotSync(String),
    #[error("`{0}` is not a valid request path")]
    BadPath(String),
    #[error("path `{path}` is not under route `{route}`'s prefix `{prefix}`")]
    OutsidePrefix {
        route: String,
        prefix: String,
        path: String,
    },
    #[error("route `{route}`: {error}")]
    Failed {
        route: String,
        #[source]
        error: ApiError,
    },
}

fn pick_error(e: PoolError) -> ApiError {
    match e {
        PoolError::Saturated => ApiError::TenantsBusy {
            retry_after_s: BUSY_RETRY_AFTER_S,
        },
        PoolError::NoTenant { reasons } => ApiError::NoTenant(reasons),
        other => ApiError::BadGateway(other.to_string()),
    }
}

fn load_table(store: &dyn Store, sealer: &Sealer) -> Result<Table, crate::store::StoreError> {
    let mut t = Table::default();
    for (key, e) in list_all(store, ROUTE_PREFIX)? {
        t.stamp.push((key.clone(), e.revision));
        let name = key[ROUTE_PREFIX.len()..].to_string();
        match serde_json::from_slice::<RouteSpec>(&e.value) {
            Ok(spec) => t.routes.push(Arc::new(RouteEntry { name, spec })),
            Err(err) => tracing::warn!(route = %name, error = %err, "unreadable route skipped"),
        }
    }
    t.routes.sort_by(|a, b| {
        b.spec
            .prefix
            .len()
            .cmp(&a.spec.prefix.len())
            .then(a.name.cmp(&b.name))
    });
    for (key, e) in list_all(store, API_KEY_PREFIX)? {
        t.stamp.push((key.clone(), e.revision));
        let name = key[API_KEY_PREFIX.len()..].to_string();
        let opened = serde_json::from_slice::<ApiKeyDoc>(&e.value)
            .map_err(|e| e.to_string())
            .and_then(|d| {
                let sealed = base64::engine::general_purpose::STANDARD
                    .decode(&d.sealed_key)
                    .map_err(|e| e.to_string())?;
                let key = sealer
                    .open(&sealed, name.as_bytes())
                    .map_err(|e| e.to_string())?;
                Ok((d, key))
            });
        match opened {
            Ok((d, key)) => {
                t.keys.insert(
                    sha256(&key),
                    Arc::new(KeyEntry {
                        name,
                        rate_limit: d.rate_limit,
                        routes: d.routes,
                    }),
                );
            }
            Err(err) => tracing::warn!(key = %name, error = %err, "unusable API key skipped"),
        }
    }
    Ok(t)
}

fn list_all(
    store: &dyn Store,
    prefix: &str,
) -> Result<Vec<(String, crate::state::ConfigEntry)>, crate::store::StoreError> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = crate::state::list_config(store, prefix, after.as_deref(), LOAD_PAGE)?;
        let full = page.len() == LOAD_PAGE;
        after = page.last().map(|(k, _)| k.clone());
        out.extend(page);
        if !full {
            return Ok(out);
        }
    }
}

/// Safe to send twice: an idempotent method (RFC 9110 §9.2.2) or a caller-supplied key the
/// tenant deduplicates on (CPI's Idempotent Process Call keys on `X-Message-ID`).
pub fn is_safe(method: &Method, headers: &HeaderMap) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    ) || headers.contains_key("idempotency-key")
        || headers.contains_key("x-message-id")
}

/// Hop-by-hop headers plus those the `Connection` header names.
fn hop_by_hop(headers: &HeaderMap) -> Vec<String> {
    let mut out: Vec<String> = HOP_BY_HOP.iter().map(|s| s.to_string()).collect();
    for v in headers.get_all(header::CONNECTION) {
        if let Ok(v) = v.to_str() {
            out.extend(v.split(',').map(|s| s.trim().to_ascii_lowercase()));
        }
    }
    out
}

fn copy_end_to_end(from: &HeaderMap, also_drop: &[&str]) -> HeaderMap {
    let drop = hop_by_hop(from);
    let mut out = HeaderMap::with_capacity(from.len() + 4);
    for (k, v) in from {
        let name = k.as_str();
        if !drop.iter().any(|d| d == name) && !also_drop.contains(&name) {
            out.append(k.clone(), v.clone());
        }
    }
    out
}

/// The headers a tenant gets: end-to-end ones, minus the API key (and the caller's
/// credentials when corral authenticates), plus X-Forwarded-*, Via and the request id.
fn upstream_headers(
    from: &HeaderMap,
    auth: AuthMode,
    ip: Option<IpAddr>,
    request_id: &str,
    tls: bool,
) -> HeaderMap {
    let mut drop = vec!["host", API_KEY_HEADER, "expect"];
    if auth == AuthMode::Tenant {
        drop.extend(["authorization", "cookie"]);
    }
    let mut h = copy_end_to_end(from, &drop);
    if let Some(ip) = ip {
        let xff = match from.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(prev) => format!("{prev}, {ip}"),
            None => ip.to_string(),
        };
        set(&mut h, "x-forwarded-for", &xff);
    }
    if let Some(host) = from.get(header::HOST) {
        h.insert(HeaderName::from_static("x-forwarded-host"), host.clone());
    }
    set(
        &mut h,
        "x-forwarded-proto",
        if tls { "https" } else { "http" },
    );
    h.append(header::VIA, HeaderValue::from_static("1.1 corral"));
    set(&mut h, "x-request-id", request_id);
    h
}

fn set(h: &mut HeaderMap, name: &'static str, v: &str) {
    if let Ok(v) = HeaderValue::from_str(v) {
        h.insert(HeaderName::from_static(name), v);
    }
}

fn upstream_path(spec: &RouteSpec, uri: &axum::http::Uri) -> String {
    let path = uri.path();
    let path = match &spec.target_prefix {
        Some(t) => format!("{t}{}", &path[spec.prefix.len().min(path.len())..]),
        None => path.to_string(),
    };
    match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    }
}

/// The tenant's `Retry-After` (delay-seconds or HTTP-date) as a delay from now.
fn retry_after(h: &HeaderMap) -> Option<Duration> {
    crate::pool::retry_after_ms(h, crate::api::now_ms()).map(Duration::from_millis)
}

async fn read_limited(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::TooLarge { limit_bytes: limit })
}

/// Buffers a small body (so retries can resend it); streams a large or unsized one.
async fn proxy_body(headers: &HeaderMap, body: Body) -> Result<ProxyBody, ApiError> {
    let len = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if len.is_some_and(|n| n > MAX_PROXY_BODY_BYTES) {
        return Err(ApiError::TooLarge {
            limit_bytes: MAX_PROXY_BODY_BYTES as usize,
        });
    }
    if body.is_end_stream() || len == Some(0) {
        return Ok(ProxyBody::Empty);
    }
    if len.is_some_and(|n| n <= MAX_REPLAY_BYTES as u64) {
        return Ok(ProxyBody::Buffered(
            read_limited(body, MAX_REPLAY_BYTES).await?,
        ));
    }
    let mut seen = 0u64;
    let stream = body
        .into_data_stream()
        .map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { Box::new(e) })
        .and_then(move |chunk| {
            seen += chunk.len() as u64;
            let over = seen > MAX_PROXY_BODY_BYTES;
            async move {
                if over {
                    Err("request body larger than the proxy's limit".into())
                } else {
                    Ok(chunk)
                }
            }
        });
    Ok(ProxyBody::stream(Box::pin(stream)))
}

/// The caller's answer: the tenant's status, end-to-end headers and streamed body, plus the
/// request id, the tenant's name and the route's RateLimit headers.
fn downstream(
    resp: reqwest::Response,
    tenant: &str,
    request_id: &str,
    verdict: Option<Verdict>,
) -> Response {
    let status = resp.status();
    let mut h = copy_end_to_end(resp.headers(), &[]);
    set(&mut h, "x-request-id", request_id);
    set(&mut h, "x-corral-tenant", tenant);
    if let Some(v) = verdict {
        set(&mut h, "ratelimit-limit", &v.limit.to_string());
        set(&mut h, "ratelimit-remaining", &v.remaining.to_string());
        set(&mut h, "ratelimit-reset", &v.reset_s.to_string());
    }
    let body = Body::from_stream(resp.bytes_stream());
    let mut out = Response::new(body);
    *out.status_mut() = status;
    *out.headers_mut() = h;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hop-by-hop headers (and those `Connection` names) never reach the tenant; the API key
    /// and, with tenant auth, the caller's credentials are dropped; forwarding headers added.
    #[test]
    fn upstream_header_rules() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("authorization", "Basic abc"),
            ("x-api-key", "k"),
            ("x-forwarded-for", "10.0.0.1"),
            ("host", "corral:7101"),
            ("x-app", "v"),
        ] {
            h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        let up = upstream_headers(&h, AuthMode::Tenant, Some(ip), "rid", false);
        for gone in [
            "connection",
            "x-hop",
            "keep-alive",
            "te",
            "authorization",
            "x-api-key",
            "host",
        ] {
            assert!(!up.contains_key(gone), "{gone} forwarded");
        }
        assert_eq!(up["x-app"], "v");
        assert_eq!(up["x-forwarded-for"], "10.0.0.1, 127.0.0.9");
        assert_eq!(up["x-forwarded-host"], "corral:7101");
        assert_eq!(up["x-request-id"], "rid");
        let pass = upstream_headers(&h, AuthMode::Passthrough, None, "rid", true);
        assert_eq!(pass["authorization"], "Basic abc");
        assert_eq!(pass["x-forwarded-proto"], "https");
    }

    /// Which requests may be sent twice.
    #[test]
    fn safe_requests() {
        let none = HeaderMap::new();
        assert!(is_safe(&Method::GET, &none));
        assert!(is_safe(&Method::PUT, &none));
        assert!(!is_safe(&Method::POST, &none));
        let mut k = HeaderMap::new();
        k.insert("x-message-id", HeaderValue::from_static("m1"));
        assert!(is_safe(&Method::POST, &k));
    }

    /// A target prefix replaces the route prefix; the query is kept.
    #[test]
    fn path_rewrite() {
        let spec = RouteSpec {
            prefix: "/api/orders".into(),
            target_prefix: Some("/http/v2/orders".into()),
            ..RouteSpec::default()
        };
        let uri: axum::http::Uri = "/api/orders/7?x=1".parse().unwrap();
        assert_eq!(upstream_path(&spec, &uri), "/http/v2/orders/7?x=1");
        let plain = RouteSpec::default();
        assert_eq!(upstream_path(&plain, &uri), "/api/orders/7?x=1");
    }
}
