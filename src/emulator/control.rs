//! The control API under `/_emulator` (no authentication: it is the test harness's back door).
//!
//! Served on the tenant's separate control listener, which stays up while the tenant is "down".
//! Owns: flow registration without the zip dance, per-message-id counters and reset, chaos
//! switches, reading deployed secrets back, forcing token/CSRF expiry, and extra API clients
//! with restricted role sets (to provoke 403s).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::runtime::{counters_snapshot, FlowSpec, RuntimeFlow};
use super::tenant::{Principal, Tenant};
use super::{csrf, security};

/// Longest the control API waits for the tenant listener to close or reopen, ms.
pub const LISTENER_SWITCH_TIMEOUT_MS: u64 = 10_000;
/// Largest control request body, bytes.
pub const MAX_CONTROL_BODY_BYTES: usize = 1024 * 1024;

type T = State<Arc<Tenant>>;

pub(crate) fn router(t: Arc<Tenant>) -> Router {
    Router::new()
        .route("/_emulator", get(describe))
        .route("/_emulator/", get(describe))
        .route("/_emulator/flows", get(list_flows))
        .route(
            "/_emulator/flows/{name}",
            put(put_flow).get(get_flow).delete(delete_flow),
        )
        .route("/_emulator/counters", get(all_counters))
        .route("/_emulator/counters/{id}", get(one_counter))
        .route("/_emulator/counters/reset", post(reset_counters))
        .route("/_emulator/reset", post(reset_all))
        .route(
            "/_emulator/chaos",
            get(get_chaos).put(put_chaos).post(put_chaos),
        )
        .route("/_emulator/secrets/{kind}/{name}", get(get_secret))
        .route("/_emulator/tokens/expire", post(expire_tokens))
        .route("/_emulator/csrf/expire", post(expire_csrf))
        .route("/_emulator/clients/{id}", put(put_client))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_CONTROL_BODY_BYTES))
        .with_state(t)
}

fn err(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(json!({"error": msg.into()}))).into_response()
}

async fn describe(State(t): T) -> Response {
    let mut v = serde_json::to_value(t.description()).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        m.insert("up".into(), Value::Bool(*t.up_actual.borrow()));
        m.insert(
            "chaos".into(),
            serde_json::to_value(t.chaos()).unwrap_or(Value::Null),
        );
    }
    Json(v).into_response()
}

fn flow_json(f: &RuntimeFlow) -> Value {
    json!({
        "name": f.name, "status": f.status, "version": f.version, "has_endpoint": f.has_endpoint,
        "spec": f.spec, "package_id": f.package_id, "error": f.error,
    })
}

async fn list_flows(State(t): T) -> Response {
    let now = t.now_ms();
    let mut st = t.lock();
    let stuck = st.chaos.deploy_stuck;
    let v: Vec<Value> = st
        .flows
        .values_mut()
        .map(|f| {
            f.settle(now, stuck);
            flow_json(f)
        })
        .collect();
    Json(json!({ "flows": v })).into_response()
}

async fn get_flow(State(t): T, Path(name): Path<String>) -> Response {
    let now = t.now_ms();
    let mut st = t.lock();
    let stuck = st.chaos.deploy_stuck;
    match st.flows.get_mut(&name) {
        Some(f) => {
            f.settle(now, stuck);
            Json(flow_json(f)).into_response()
        }
        None => err(StatusCode::NOT_FOUND, format!("no flow {name}")),
    }
}

/// `PUT /_emulator/flows/{name}`: register or replace a STARTED runtime flow.
async fn put_flow(State(t): T, Path(name): Path<String>, body: axum::body::Bytes) -> Response {
    let mut spec: FlowSpec = match serde_json::from_slice(&body) {
        Ok(s) => s,
        Err(e) => return err(StatusCode::BAD_REQUEST, format!("bad flow spec: {e}")),
    };
    if let Err(e) = spec.normalise() {
        return err(StatusCode::BAD_REQUEST, e);
    }
    let now = t.now_ms();
    let mut st = t.lock();
    let existed = st.flows.contains_key(&name);
    let flow = RuntimeFlow::direct(&name, spec, now);
    let v = flow_json(&flow);
    st.flows.insert(name, flow);
    (
        if existed {
            StatusCode::OK
        } else {
            StatusCode::CREATED
        },
        Json(v),
    )
        .into_response()
}

async fn delete_flow(State(t): T, Path(name): Path<String>) -> Response {
    match t.lock().flows.remove(&name) {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => err(StatusCode::NOT_FOUND, format!("no flow {name}")),
    }
}

async fn all_counters(State(t): T) -> Response {
    let (totals, per_id, truncated) = counters_snapshot(&t);
    let flows = t.lock().flow_counters.clone();
    Json(json!({"totals": totals, "flows": flows, "messages": per_id, "truncated": truncated}))
        .into_response()
}

async fn one_counter(State(t): T, Path(id): Path<String>) -> Response {
    Json(json!({"message_id": id, "counters": t.counters_for(&id)})).into_response()
}

/// Reset counters only.
async fn reset_counters(State(t): T) -> Response {
    let mut st = t.lock();
    st.counters.clear();
    st.flow_counters.clear();
    st.totals = Default::default();
    st.counters_truncated = false;
    StatusCode::NO_CONTENT.into_response()
}

/// Reset counters, the idempotent repository and MPLs (flows, content and secrets stay).
async fn reset_all(State(t): T) -> Response {
    let mut st = t.lock();
    st.counters.clear();
    st.flow_counters.clear();
    st.totals = Default::default();
    st.counters_truncated = false;
    st.idempotent_done.clear();
    st.mpls.clear();
    StatusCode::NO_CONTENT.into_response()
}

async fn get_chaos(State(t): T) -> Response {
    Json(t.chaos()).into_response()
}

/// Partial update of the chaos switches; every field optional.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChaosPatch {
    down: Option<bool>,
    slow_ms: Option<u64>,
    runtime_error_rate: Option<f64>,
    runtime_error_status: Option<u16>,
    api_error_rate: Option<f64>,
    api_error_status: Option<u16>,
    token_down: Option<bool>,
    deploy_stuck: Option<bool>,
    deploy_error: Option<bool>,
}

async fn put_chaos(State(t): T, body: axum::body::Bytes) -> Response {
    let p: ChaosPatch = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => return err(StatusCode::BAD_REQUEST, format!("bad chaos patch: {e}")),
    };
    for r in [p.runtime_error_rate, p.api_error_rate]
        .into_iter()
        .flatten()
    {
        if !(0.0..=1.0).contains(&r) {
            return err(StatusCode::BAD_REQUEST, "error rates must be within 0..=1");
        }
    }
    for s in [p.runtime_error_status, p.api_error_status]
        .into_iter()
        .flatten()
    {
        if StatusCode::from_u16(s).is_err() {
            return err(StatusCode::BAD_REQUEST, "invalid status code");
        }
    }
    {
        let mut st = t.lock();
        let c = &mut st.chaos;
        if let Some(v) = p.down {
            c.down = v;
        }
        if let Some(v) = p.slow_ms {
            c.slow_ms = v;
        }
        if let Some(v) = p.runtime_error_rate {
            c.runtime_error_rate = v;
        }
        if let Some(v) = p.runtime_error_status {
            c.runtime_error_status = v;
        }
        if let Some(v) = p.api_error_rate {
            c.api_error_rate = v;
        }
        if let Some(v) = p.api_error_status {
            c.api_error_status = v;
        }
        if let Some(v) = p.token_down {
            c.token_down = v;
        }
        if let Some(v) = p.deploy_stuck {
            c.deploy_stuck = v;
        }
        if let Some(v) = p.deploy_error {
            c.deploy_error = v;
        }
    }
    if let Some(down) = p.down {
        let want_up = !down;
        t.up_desired.send_replace(want_up);
        let mut rx = t.up_actual.subscribe();
        let waited = tokio::time::timeout(
            Duration::from_millis(LISTENER_SWITCH_TIMEOUT_MS),
            rx.wait_for(|up| *up == want_up),
        )
        .await;
        if !matches!(waited, Ok(Ok(_))) {
            return err(
                StatusCode::INTERNAL_SERVER_ERROR,
                "tenant listener did not switch in time",
            );
        }
    }
    Json(t.chaos()).into_response()
}

async fn get_secret(State(t): T, Path((kind, name)): Path<(String, String)>) -> Response {
    match security::control_view(&t, &kind, &name) {
        Some(v) => Json(v).into_response(),
        None => err(StatusCode::NOT_FOUND, format!("no {kind} named {name}")),
    }
}

async fn expire_tokens(State(t): T) -> Response {
    t.lock().tokens.clear();
    StatusCode::NO_CONTENT.into_response()
}

async fn expire_csrf(State(t): T) -> Response {
    csrf::expire_all(&t);
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Debug, Deserialize)]
struct ClientBody {
    client_secret: String,
    roles: Vec<String>,
}

/// `PUT /_emulator/clients/{id}`: add or replace an OAuth client (also usable with Basic).
async fn put_client(State(t): T, Path(id): Path<String>, body: axum::body::Bytes) -> Response {
    let b: ClientBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return err(StatusCode::BAD_REQUEST, format!("bad client: {e}")),
    };
    let roles: HashSet<String> = b.roles.into_iter().collect();
    t.lock().principals.insert(
        id,
        Principal {
            secret: b.client_secret,
            roles,
            is_client: true,
        },
    );
    StatusCode::NO_CONTENT.into_response()
}
