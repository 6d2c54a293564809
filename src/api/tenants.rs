//! Admin handlers for the tenant pool: `PUT/GET/DELETE /admin/tenants/{name}`,
//! `GET /admin/tenants`, and `GET /admin/pool/health` (this node's view, which the other nodes
//! fetch to show every node's view).
//!
//! Credentials are sealed here, before `client.write`, so only ciphertext enters the Raft log;
//! no answer ever contains them (`credentials` shows kind and client id or user only).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

use super::{barrier, next_cursor, now_ms, AdminState, ApiError, ListOpts, ReadOpts};
use crate::pool::spec::{self, TenantSpec};
use crate::state::{self, Command, Response as SmResponse, TenantEntry};

/// How long a node waits for another node's pool view before showing it as unreachable.
pub const PEER_VIEW_TIMEOUT: Duration = Duration::from_millis(800);

type Shared = State<Arc<AdminState>>;

fn invalid(e: spec::SpecError) -> ApiError {
    ApiError::invalid(e.field, e.message)
}

/// Every node's view of the pool: node id -> (tenant -> view), or `None` if unreachable.
async fn all_views(st: &AdminState) -> BTreeMap<u64, Option<Map<String, Value>>> {
    let me = st.cfg.id;
    let local: Map<String, Value> = st.pool.local_view().into_iter().collect();
    let fetches = st
        .cfg
        .admin_addrs
        .iter()
        .filter(|(id, _)| *id != me)
        .map(|(id, addr)| {
            let req = st
                .pool
                .http()
                .get(format!("http://{addr}/admin/pool/health"))
                .bearer_auth(&st.admin_token)
                .timeout(PEER_VIEW_TIMEOUT);
            async move {
                let view = match req.send().await {
                    Ok(r) if r.status().is_success() => r
                        .json::<Value>()
                        .await
                        .ok()
                        .and_then(|v| v["tenants"].as_object().cloned()),
                    _ => None,
                };
                (*id, view)
            }
        });
    let mut out: BTreeMap<u64, Option<Map<String, Value>>> = futures::future::join_all(fetches)
        .await
        .into_iter()
        .collect();
    out.insert(me, Some(local));
    out
}

fn tenant_json(
    name: &str,
    e: &TenantEntry,
    views: &BTreeMap<u64, Option<Map<String, Value>>>,
) -> Value {
    let spec: Option<TenantSpec> = serde_json::from_slice(&e.spec).ok();
    let mut out = match spec.as_ref().and_then(|s| serde_json::to_value(s).ok()) {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    out.remove("runtime_auth");
    out.remove("management_auth");
    out.insert("name".into(), json!(name));
    if let Some(s) = &spec {
        out.insert(
            "credentials".into(),
            json!({"runtime": s.runtime_auth, "management": s.management_auth}),
        );
    }
    out.insert("revision".into(), json!(e.revision));
    out.insert("updated_ms".into(), json!(e.updated_ms));
    let by_node: Map<String, Value> = views
        .iter()
        .map(|(id, v)| {
            let view = match v {
                None => json!({"status": "unreachable",
                               "reason": "the node did not answer its admin API in time"}),
                Some(m) => m.get(name).cloned().unwrap_or_else(
                    || json!({"status": "unknown", "reason": "the node has not loaded this tenant yet"}),
                ),
            };
            (id.to_string(), view)
        })
        .collect();
    out.insert("health_by_node".into(), Value::Object(by_node));
    Value::Object(out)
}

pub(crate) async fn put(
    State(st): Shared,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (spec, creds) = spec::parse_tenant(&name, &body).map_err(invalid)?;
    let sealed = st.pool.seal_credentials(&name, &creds);
    drop(creds);
    let spec_json =
        serde_json::to_vec(&spec).map_err(|e| ApiError::Internal(format!("encoding spec: {e}")))?;
    let cmd = Command::TenantPut {
        name: name.clone(),
        spec: spec_json,
        sealed_credentials: sealed,
        now_ms: now_ms(),
    };
    match st.client.write(&cmd).await? {
        SmResponse::TenantPut { revision, created } => {
            let code = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok((
                code,
                Json(json!({"name": name, "revision": revision, "created": created})),
            )
                .into_response())
        }
        other => Err(ApiError::Internal(format!("unexpected answer {other:?}"))),
    }
}

pub(crate) async fn get_one(
    State(st): Shared,
    Path(name): Path<String>,
    Query(opts): Query<ReadOpts>,
) -> Result<Json<Value>, ApiError> {
    spec::validate_name(&name).map_err(invalid)?;
    barrier(&st, &opts).await?;
    let Some(e) = state::read_tenant(&*st.store, &name)? else {
        return Err(ApiError::NotFound(format!("tenant `{name}`")));
    };
    let views = all_views(&st).await;
    Ok(Json(tenant_json(&name, &e, &views)))
}

pub(crate) async fn list(
    State(st): Shared,
    Query(q): Query<ListOpts>,
) -> Result<Json<Value>, ApiError> {
    let limit = q.prepare(&st).await?;
    let items = state::list_tenants(&*st.store, q.after.as_deref(), limit)?;
    let next = next_cursor(&items, limit);
    let views = all_views(&st).await;
    let items: Vec<Value> = items
        .iter()
        .map(|(n, e)| tenant_json(n, e, &views))
        .collect();
    Ok(Json(
        json!({"node": st.cfg.id, "items": items, "next": next}),
    ))
}

pub(crate) async fn delete(
    State(st): Shared,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    spec::validate_name(&name).map_err(invalid)?;
    match st
        .client
        .write(&Command::TenantDelete { name: name.clone() })
        .await?
    {
        SmResponse::TenantDeleted { existed: true } => Ok(StatusCode::NO_CONTENT.into_response()),
        SmResponse::TenantDeleted { existed: false } => {
            Err(ApiError::NotFound(format!("tenant `{name}`")))
        }
        other => Err(ApiError::Internal(format!("unexpected answer {other:?}"))),
    }
}

/// This node's own view of every tenant it knows (health, limit, in flight, and why).
pub(crate) async fn local_health(State(st): Shared) -> Json<Value> {
    Json(json!({"node": st.cfg.id, "tenants": st.pool.local_view()}))
}
