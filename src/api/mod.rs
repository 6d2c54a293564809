//! The admin HTTP listener: cluster status and control, the replicated configuration store,
//! health, metrics and the OpenAPI document.
//!
//! Everything under `/admin/` except the OpenAPI document needs the cluster's bearer token.
//! `/healthz`, `/readyz` and `/metrics` are open so that load balancers and Prometheus can
//! reach them without a secret. Handlers reach consensus only through [`Client`].

pub mod error;
pub mod queues;
pub mod routes;
pub mod schedules;
pub mod secrets;
pub mod tenants;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::client::Client;
use crate::config::NodeConfig;
use crate::raft::Role;
use crate::state::{self, Command, Response as SmResponse};
use crate::store::Store;
use crate::transport::Transport;
pub use error::ApiError;

/// Largest admin request body (configuration documents are small).
pub const MAX_ADMIN_BODY_BYTES: usize = 1024 * 1024;
/// Longest configuration key.
pub const MAX_CONFIG_KEY_BYTES: usize = 256;
/// Requests the admin listener serves at once (see [`limit_in_flight`]).
pub const MAX_ADMIN_IN_FLIGHT: usize = 256;
/// Requests the ingress listener serves at once.
pub const MAX_INGRESS_IN_FLIGHT: usize = 4_096;
/// Most items one list call returns.
pub const MAX_LIST_ITEMS: usize = 1_000;
/// A node whose applied index trails its commit index by more than this is not ready.
pub const READY_MAX_APPLY_LAG: u64 = 1_000;

/// The OpenAPI document describing every endpoint of both listeners.
pub const OPENAPI_JSON: &str = include_str!("../../docs/openapi.json");

/// Every (method, path) the admin listener serves, in OpenAPI path syntax. A test checks
/// that this table, the router and `docs/openapi.json` agree.
pub const ADMIN_ROUTES: &[(&str, &str)] = &[
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/admin/openapi.json"),
    ("get", "/admin/cluster"),
    ("post", "/admin/cluster/transfer-leader"),
    ("get", "/admin/config"),
    ("get", "/admin/config/{key}"),
    ("put", "/admin/config/{key}"),
    ("delete", "/admin/config/{key}"),
    ("get", "/admin/tenants"),
    ("get", "/admin/tenants/{name}"),
    ("put", "/admin/tenants/{name}"),
    ("delete", "/admin/tenants/{name}"),
    ("get", "/admin/pool/health"),
    ("get", "/admin/queues"),
    ("get", "/admin/queues/{name}"),
    ("put", "/admin/queues/{name}"),
    ("delete", "/admin/queues/{name}"),
    ("get", "/admin/queues/{name}/dead-letters"),
    ("delete", "/admin/queues/{name}/dead-letters"),
    ("post", "/admin/queues/{name}/dead-letters/redrive"),
    ("get", "/admin/queues/{name}/dead-letters/{id}"),
    ("delete", "/admin/queues/{name}/dead-letters/{id}"),
    ("post", "/admin/queues/{name}/dead-letters/{id}/redrive"),
    ("get", "/admin/messages/{id}"),
    ("get", "/admin/secrets"),
    ("get", "/admin/secrets/{name}"),
    ("put", "/admin/secrets/{name}"),
    ("delete", "/admin/secrets/{name}"),
    ("get", "/admin/secrets/{name}/versions"),
    ("post", "/admin/secrets/{name}/versions/{version}/enable"),
    ("post", "/admin/secrets/{name}/versions/{version}/disable"),
    ("post", "/admin/secrets/{name}/rollback"),
    ("post", "/admin/secrets/{name}/restore"),
    ("post", "/admin/secrets/{name}/reveal"),
    ("get", "/admin/audit/secrets"),
    ("get", "/admin/schedules"),
    ("post", "/admin/schedules:preview"),
    ("get", "/admin/schedules/{name}"),
    ("put", "/admin/schedules/{name}"),
    ("delete", "/admin/schedules/{name}"),
    ("post", "/admin/schedules/{name}/pause"),
    ("post", "/admin/schedules/{name}/resume"),
    ("post", "/admin/schedules/{name}/trigger"),
    ("get", "/admin/routes"),
    ("get", "/admin/routes/{name}"),
    ("put", "/admin/routes/{name}"),
    ("delete", "/admin/routes/{name}"),
    ("get", "/admin/api-keys"),
    ("get", "/admin/api-keys/{name}"),
    ("put", "/admin/api-keys/{name}"),
    ("delete", "/admin/api-keys/{name}"),
];

pub struct AdminState {
    pub cfg: NodeConfig,
    pub client: Arc<Client>,
    pub transport: Arc<Transport>,
    pub store: Arc<dyn Store>,
    /// The queue indexes the state machine keeps (message ids, visibility).
    pub queues: crate::state::queue::SharedIndex,
    pub admin_token: String,
    pub pool: Arc<crate::pool::Pool>,
    /// The token that carries the reveal right (`POST /admin/secrets/{name}/reveal` only);
    /// `None` when the cluster file names none, and then nothing can be revealed.
    pub reveal_token: Option<String>,
    /// Seals and opens secret values (envelope under the master key).
    pub envelope: Arc<crate::seal::Envelope>,
    /// The sync proxy (seals client API keys).
    pub proxy: Arc<crate::ingress::proxy::Proxy>,
    /// Runs schedule call targets on this node (trigger now).
    pub calls: Arc<crate::dispatch::scheduler::Calls>,
}

type Shared = State<Arc<AdminState>>;

pub fn router(state: Arc<AdminState>) -> Router {
    let protected = Router::new()
        .route("/admin/cluster", get(cluster))
        .route("/admin/cluster/transfer-leader", post(transfer_leader))
        .route("/admin/config", get(config_list))
        .route(
            "/admin/config/{*key}",
            get(config_get).put(config_put).delete(config_delete),
        )
        .route("/admin/tenants", get(tenants::list))
        .route(
            "/admin/tenants/{name}",
            get(tenants::get_one)
                .put(tenants::put)
                .delete(tenants::delete),
        )
        .route("/admin/pool/health", get(tenants::local_health))
        .route("/admin/queues", get(queues::list))
        .route(
            "/admin/queues/{name}",
            get(queues::get_one).put(queues::put).delete(queues::delete),
        )
        .route(
            "/admin/queues/{name}/dead-letters",
            get(queues::dead_list).delete(queues::dead_purge_all),
        )
        .route(
            "/admin/queues/{name}/dead-letters/redrive",
            post(queues::dead_redrive_all),
        )
        .route(
            "/admin/queues/{name}/dead-letters/{id}",
            get(queues::dead_peek).delete(queues::dead_purge_one),
        )
        .route(
            "/admin/queues/{name}/dead-letters/{id}/redrive",
            post(queues::dead_redrive_one),
        )
        .route("/admin/messages/{id}", get(queues::message_trace))
        .route("/admin/secrets", get(secrets::list))
        .route(
            "/admin/secrets/{name}",
            get(secrets::get_one)
                .put(secrets::put)
                .delete(secrets::delete),
        )
        .route("/admin/secrets/{name}/versions", get(secrets::versions))
        .route(
            "/admin/secrets/{name}/versions/{version}/enable",
            post(secrets::enable),
        )
        .route(
            "/admin/secrets/{name}/versions/{version}/disable",
            post(secrets::disable),
        )
        .route("/admin/secrets/{name}/rollback", post(secrets::rollback))
        .route("/admin/secrets/{name}/restore", post(secrets::restore))
        .route("/admin/audit/secrets", get(secrets::audit))
        .route("/admin/schedules", get(schedules::list))
        .route("/admin/schedules:preview", post(schedules::preview))
        .route(
            "/admin/schedules/{name}",
            get(schedules::get_one)
                .put(schedules::put)
                .delete(schedules::delete),
        )
        .route("/admin/schedules/{name}/pause", post(schedules::pause))
        .route("/admin/schedules/{name}/resume", post(schedules::resume))
        .route("/admin/schedules/{name}/trigger", post(schedules::trigger))
        .route("/admin/routes", get(routes::route_list))
        .route(
            "/admin/routes/{name}",
            get(routes::route_get)
                .put(routes::route_put)
                .delete(routes::route_delete),
        )
        .route("/admin/api-keys", get(routes::key_list))
        .route(
            "/admin/api-keys/{name}",
            get(routes::key_get)
                .put(routes::key_put)
                .delete(routes::key_delete),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_token,
        ));
    let reveal = Router::new()
        .route("/admin/secrets/{name}/reveal", post(secrets::reveal))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_reveal_token,
        ));
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/admin/openapi.json", get(openapi))
        .merge(protected)
        .merge(reveal)
        .fallback(no_route)
        .layer(DefaultBodyLimit::max(MAX_ADMIN_BODY_BYTES))
        .with_state(state)
}

/// Caps the requests a listener serves at once. Past the cap a request is answered at once
/// with 503 `overloaded` and Retry-After rather than queued, so a flood cannot pile up memory
/// or latency behind it.
pub fn limit_in_flight(router: Router, max: usize) -> Router {
    let permits = Arc::new(tokio::sync::Semaphore::new(max));
    router.layer(axum::middleware::from_fn(
        move |req: Request, next: Next| {
            let permits = permits.clone();
            async move {
                match permits.try_acquire() {
                    Ok(_permit) => next.run(req).await,
                    Err(_) => ApiError::Overloaded { limit: max }.into_response(),
                }
            }
        },
    ))
}

pub async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::NoRoute {
        method: method.to_string(),
        path: uri.path().to_string(),
    }
}

/// Compares without an early exit, so the time taken says nothing about the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn bearer(req: &Request) -> &str {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
        .trim()
}

async fn require_token(State(st): Shared, req: Request, next: Next) -> Response {
    if !constant_time_eq(bearer(&req).as_bytes(), st.admin_token.as_bytes()) {
        return ApiError::Unauthorized.into_response();
    }
    next.run(req).await
}

/// Reveal needs the reveal token; the admin token is refused with 403 (it does not carry the
/// reveal right), anything else with 401.
async fn require_reveal_token(State(st): Shared, req: Request, next: Next) -> Response {
    let presented = bearer(&req).as_bytes();
    match &st.reveal_token {
        Some(t) if constant_time_eq(presented, t.as_bytes()) => next.run(req).await,
        _ if constant_time_eq(presented, st.admin_token.as_bytes()) => ApiError::Forbidden(
            match st.reveal_token {
                Some(_) => "revealing a secret needs the reveal token, not the admin token",
                None => "revealing is disabled: the cluster file names no reveal_token_file",
            }
            .into(),
        )
        .into_response(),
        _ => ApiError::Unauthorized.into_response(),
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON).into_response()
}

/// Most queues whose gauges one scrape refreshes.
const MAX_QUEUES_PER_SCRAPE: usize = 1_000;

/// Sets the per-queue gauges from this node's applied state (no Raft round trip: a scrape
/// must work on any node, leader or not, and even without a quorum).
fn refresh_queue_gauges(store: &dyn Store) {
    let m = &crate::metrics::M;
    for g in [
        &m.queue_depth,
        &m.queue_in_flight,
        &m.queue_dead_letters,
        &m.queue_bytes,
        &m.queue_events,
    ] {
        g.reset();
    }
    let Ok(queues) = state::queue::list_queues(store, None, MAX_QUEUES_PER_SCRAPE) else {
        return;
    };
    for (name, _) in queues {
        if let Ok(s) = state::queue::read_stats(store, &name) {
            m.queue_depth
                .with_label_values(&[&name])
                .set(s.depth as i64);
            m.queue_in_flight
                .with_label_values(&[&name])
                .set(s.in_flight as i64);
            m.queue_dead_letters
                .with_label_values(&[&name])
                .set(s.dead_letters as i64);
            m.queue_bytes
                .with_label_values(&[&name])
                .set(s.bytes as i64);
            for (event, n) in [
                ("enqueued", s.enqueued_total),
                ("duplicate", s.duplicates_total),
                ("completed", s.completed_total),
                ("dead_lettered", s.dead_lettered_total),
                ("expired", s.expired_total),
            ] {
                m.queue_events
                    .with_label_values(&[&name, event])
                    .set(n as i64);
            }
        }
    }
}

async fn metrics(State(st): Shared) -> Response {
    refresh_queue_gauges(&*st.store);
    secrets::refresh_gauges(&*st.store);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::render(),
    )
        .into_response()
}

async fn readyz(State(st): Shared) -> Response {
    let s = st.client.driver().status();
    let lag = s.commit_index.saturating_sub(s.applied_index);
    let ready = s.leader.is_some() && !s.stopped && lag <= READY_MAX_APPLY_LAG;
    let body = json!({"ready": ready, "leader": s.leader, "apply_lag": lag});
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

async fn cluster(State(st): Shared) -> Json<Value> {
    let s = st.client.driver().status();
    let peers: Vec<Value> = s
        .peers
        .iter()
        .map(|p| {
            let addr = st
                .cfg
                .peers
                .iter()
                .find(|(id, _)| *id == p.id)
                .map(|(_, a)| a.to_string());
            json!({
                "id": p.id,
                "peer_addr": addr,
                "connected": st.transport.is_connected(p.id),
                "match_index": if s.role == Role::Leader { Some(p.match_index) } else { None },
                "last_contact_ms": p.last_contact_ms,
            })
        })
        .collect();
    Json(json!({
        "cluster": {"name": st.cfg.cluster_name, "id": st.cfg.cluster_id},
        "node": {
            "id": s.id,
            "role": s.role,
            "term": s.term,
            "leader": s.leader,
            "commit_index": s.commit_index,
            "applied_index": s.applied_index,
            "first_index": s.first_index,
            "last_index": s.last_index,
            "store_bytes": st.store.size_on_disk(),
            "last_election": s.last_election,
        },
        "peers": peers,
    }))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TransferBody {
    to: Option<u64>,
}

async fn transfer_leader(State(st): Shared, body: Bytes) -> Result<Json<Value>, ApiError> {
    let req: TransferBody = if body.is_empty() {
        TransferBody::default()
    } else {
        parse_json(&body)?
    };
    if let Some(to) = req.to {
        if !st.cfg.peers.iter().any(|(id, _)| *id == to) {
            return Err(ApiError::invalid(
                "to",
                format!("node {to} is not in the cluster"),
            ));
        }
    }
    let leader = st
        .client
        .driver()
        .status()
        .leader
        .ok_or(ApiError::NoLeader)?;
    if req.to == Some(leader) {
        return Ok(Json(json!({"leader": leader, "transferring_to": leader})));
    }
    let target = st.client.transfer_leader(req.to).await?;
    Ok(Json(json!({"leader": leader, "transferring_to": target})))
}

pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { None } else { Some(path) };
        ApiError::Invalid {
            field,
            message: e.inner().to_string(),
        }
    })
}

fn validate_key(key: &str) -> Result<(), ApiError> {
    if key.is_empty() || key.len() > MAX_CONFIG_KEY_BYTES {
        return Err(ApiError::invalid(
            "key",
            format!("must be 1 to {MAX_CONFIG_KEY_BYTES} bytes"),
        ));
    }
    let ok = key
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "._-/:".contains(c));
    if !ok || key.starts_with('/') || key.contains("//") {
        return Err(ApiError::invalid(
            "key",
            "may hold only A-Z a-z 0-9 . _ - : and single inner slashes",
        ));
    }
    Ok(())
}

#[derive(Deserialize, Default)]
pub(crate) struct ReadOpts {
    /// `linearizable` (default) or `local` (this node's applied state, possibly stale).
    pub consistency: Option<String>,
}

pub(crate) async fn barrier(st: &AdminState, opts: &ReadOpts) -> Result<(), ApiError> {
    match opts.consistency.as_deref() {
        None | Some("linearizable") => Ok(st.client.read_barrier().await?),
        Some("local") => Ok(()),
        Some(other) => Err(ApiError::invalid(
            "consistency",
            format!("`{other}` is not one of linearizable, local"),
        )),
    }
}

fn entry_json(key: &str, e: &state::ConfigEntry) -> Value {
    let value: Value = serde_json::from_slice(&e.value).unwrap_or(Value::Null);
    json!({"key": key, "value": value, "revision": e.revision, "updated_ms": e.updated_ms})
}

async fn config_get(
    State(st): Shared,
    Path(key): Path<String>,
    Query(opts): Query<ReadOpts>,
) -> Result<Json<Value>, ApiError> {
    validate_key(&key)?;
    barrier(&st, &opts).await?;
    match state::read_config(&*st.store, &key)? {
        Some(e) => Ok(Json(entry_json(&key, &e))),
        None => Err(ApiError::NotFound(format!("config key `{key}`"))),
    }
}

/// Query parameters every list endpoint takes: a key prefix (where the resource has one), the
/// key to continue after, the page size and the read consistency.
#[derive(Deserialize)]
pub(crate) struct ListOpts {
    pub(crate) prefix: Option<String>,
    pub(crate) after: Option<String>,
    pub(crate) limit: Option<usize>,
    pub(crate) consistency: Option<String>,
}

impl ListOpts {
    /// Checks the page size and waits for the asked read consistency; returns the page size.
    pub(crate) async fn prepare(&self, st: &AdminState) -> Result<usize, ApiError> {
        let limit = page_limit(self.limit)?;
        let read = ReadOpts {
            consistency: self.consistency.clone(),
        };
        barrier(st, &read).await?;
        Ok(limit)
    }
}

/// The `next` cursor of a page: its last key when the page is full, else none.
pub(crate) fn next_cursor<T>(items: &[(String, T)], limit: usize) -> Option<String> {
    match items.last() {
        Some((k, _)) if items.len() == limit => Some(k.clone()),
        _ => None,
    }
}

/// The page size a list call asked for, defaulting to and capped at [`MAX_LIST_ITEMS`].
pub(crate) fn page_limit(limit: Option<usize>) -> Result<usize, ApiError> {
    match limit.unwrap_or(MAX_LIST_ITEMS) {
        l @ 1..=MAX_LIST_ITEMS => Ok(l),
        _ => Err(ApiError::invalid(
            "limit",
            format!("must be between 1 and {MAX_LIST_ITEMS}"),
        )),
    }
}

async fn config_list(
    State(st): Shared,
    Query(q): Query<ListOpts>,
) -> Result<Json<Value>, ApiError> {
    let limit = q.prepare(&st).await?;
    let items = state::list_config(
        &*st.store,
        q.prefix.as_deref().unwrap_or(""),
        q.after.as_deref(),
        limit,
    )?;
    let next = next_cursor(&items, limit);
    let items: Vec<Value> = items.iter().map(|(k, e)| entry_json(k, e)).collect();
    Ok(Json(json!({"items": items, "next": next})))
}

async fn config_put(
    State(st): Shared,
    Path(key): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    validate_key(&key)?;
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    if !ct.starts_with("application/json") {
        return Err(ApiError::invalid(
            "content-type",
            "must be application/json",
        ));
    }
    if serde_json::from_slice::<Value>(&body).is_err() {
        return Err(ApiError::invalid("body", "must be a JSON document"));
    }
    let cmd = Command::ConfigPut {
        key: key.clone(),
        value: body.to_vec(),
        now_ms: now_ms(),
    };
    match st.client.write(&cmd).await? {
        SmResponse::ConfigPut { revision, created } => {
            let code = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            let body = json!({"key": key, "revision": revision, "created": created});
            Ok((code, Json(body)).into_response())
        }
        other => Err(ApiError::Internal(format!("unexpected answer {other:?}"))),
    }
}

async fn config_delete(State(st): Shared, Path(key): Path<String>) -> Result<Response, ApiError> {
    validate_key(&key)?;
    match st
        .client
        .write(&Command::ConfigDelete { key: key.clone() })
        .await?
    {
        SmResponse::ConfigDeleted { existed: true } => Ok(StatusCode::NO_CONTENT.into_response()),
        SmResponse::ConfigDeleted { existed: false } => {
            Err(ApiError::NotFound(format!("config key `{key}`")))
        }
        other => Err(ApiError::Internal(format!("unexpected answer {other:?}"))),
    }
}
