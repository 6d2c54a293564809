//! Admin handlers for the sync proxy's replicated configuration: routes
//! (`PUT/GET/DELETE /admin/routes/{name}`, `GET /admin/routes`) and client API keys
//! (`PUT/GET/DELETE /admin/api-keys/{name}`, `GET /admin/api-keys`).
//!
//! Both are `ConfigPut` documents under reserved prefixes (see `src/ingress/route.rs` for
//! why). API keys are sealed here, before `client.write`, like tenant credentials: the log,
//! snapshots and data files only hold ciphertext, and no answer shows a key except the 201
//! that created a generated one.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::{barrier, next_cursor, now_ms, AdminState, ApiError, ListOpts, ReadOpts};
use crate::ingress::route::{self, ApiKeyDoc, API_KEY_PREFIX, ROUTE_PREFIX};
use crate::state::{self, Command, ConfigEntry, Response as SmResponse};

type Shared = State<Arc<AdminState>>;

fn check_name(kind: &str, name: &str) -> Result<(), ApiError> {
    if crate::state::is_resource_name(name) {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "name",
            format!("{kind} names are 1 to 64 of A-Z a-z 0-9 . _ - (not starting with . or -)"),
        ))
    }
}

async fn put_doc(st: &AdminState, key: String, value: Vec<u8>) -> Result<(u64, bool), ApiError> {
    let cmd = Command::ConfigPut {
        key,
        value,
        now_ms: now_ms(),
    };
    match st.client.write(&cmd).await? {
        SmResponse::ConfigPut { revision, created } => Ok((revision, created)),
        other => Err(ApiError::Internal(format!("unexpected answer {other:?}"))),
    }
}

async fn delete_doc(st: &AdminState, key: String, what: String) -> Result<Response, ApiError> {
    match st.client.write(&Command::ConfigDelete { key }).await? {
        SmResponse::ConfigDeleted { existed: true } => Ok(StatusCode::NO_CONTENT.into_response()),
        SmResponse::ConfigDeleted { existed: false } => Err(ApiError::NotFound(what)),
        other => Err(ApiError::Internal(format!("unexpected answer {other:?}"))),
    }
}

fn created_code(created: bool) -> StatusCode {
    if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    }
}

fn route_json(name: &str, e: &ConfigEntry) -> Value {
    let spec: Value = serde_json::from_slice(&e.value).unwrap_or(Value::Null);
    json!({"name": name, "route": spec, "revision": e.revision, "updated_ms": e.updated_ms})
}

pub(crate) async fn route_put(
    State(st): Shared,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    check_name("route", &name)?;
    let spec = route::parse_route(&body)?;
    // Two routes with one prefix would make matching depend on names; refuse it here (a race
    // of two concurrent PUTs can still store both: the proxy then takes the first by name).
    // The check reads after a barrier: a route just written through another node counts.
    st.client.read_barrier().await?;
    let others = state::list_config(&*st.store, ROUTE_PREFIX, None, super::MAX_LIST_ITEMS)?;
    for (key, e) in &others {
        let other = &key[ROUTE_PREFIX.len()..];
        let same = serde_json::from_slice::<route::RouteSpec>(&e.value)
            .is_ok_and(|o| o.prefix == spec.prefix);
        if other != name && same {
            return Err(ApiError::Conflict(format!(
                "route `{other}` already has prefix `{}`",
                spec.prefix
            )));
        }
    }
    let value =
        serde_json::to_vec(&spec).map_err(|e| ApiError::Internal(format!("encoding: {e}")))?;
    let (revision, created) = put_doc(&st, format!("{ROUTE_PREFIX}{name}"), value).await?;
    Ok((
        created_code(created),
        Json(json!({"name": name, "revision": revision, "created": created, "route": spec})),
    )
        .into_response())
}

pub(crate) async fn route_get(
    State(st): Shared,
    Path(name): Path<String>,
    Query(opts): Query<ReadOpts>,
) -> Result<Json<Value>, ApiError> {
    check_name("route", &name)?;
    barrier(&st, &opts).await?;
    match state::read_config(&*st.store, &format!("{ROUTE_PREFIX}{name}"))? {
        Some(e) => Ok(Json(route_json(&name, &e))),
        None => Err(ApiError::NotFound(format!("route `{name}`"))),
    }
}

pub(crate) async fn route_list(
    State(st): Shared,
    Query(q): Query<ListOpts>,
) -> Result<Json<Value>, ApiError> {
    list(&st, &q, ROUTE_PREFIX, route_json).await
}

pub(crate) async fn route_delete(
    State(st): Shared,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    check_name("route", &name)?;
    delete_doc(
        &st,
        format!("{ROUTE_PREFIX}{name}"),
        format!("route `{name}`"),
    )
    .await
}

/// One page of documents under `prefix`; `after` is a name, not a config key.
async fn list(
    st: &AdminState,
    q: &ListOpts,
    prefix: &str,
    show: fn(&str, &ConfigEntry) -> Value,
) -> Result<Json<Value>, ApiError> {
    let limit = q.prepare(st).await?;
    let after = q.after.as_ref().map(|a| format!("{prefix}{a}"));
    let items = state::list_config(&*st.store, prefix, after.as_deref(), limit)?;
    let items: Vec<(String, ConfigEntry)> = items
        .into_iter()
        .map(|(k, e)| (k[prefix.len()..].to_string(), e))
        .collect();
    let next = next_cursor(&items, limit);
    let items: Vec<Value> = items.iter().map(|(n, e)| show(n, e)).collect();
    Ok(Json(json!({"items": items, "next": next})))
}

fn key_json(name: &str, e: &ConfigEntry) -> Value {
    let doc: Option<ApiKeyDoc> = serde_json::from_slice(&e.value).ok();
    json!({
        "name": name,
        "key_hint": doc.as_ref().map(|d| d.key_hint.clone()),
        "rate_limit": doc.as_ref().and_then(|d| d.rate_limit),
        "routes": doc.as_ref().map(|d| d.routes.clone()).unwrap_or_default(),
        "revision": e.revision,
        "updated_ms": e.updated_ms,
    })
}

pub(crate) async fn key_put(
    State(st): Shared,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    check_name("API key", &name)?;
    let input = route::parse_api_key(&body)?;
    let generated = input.key.is_none();
    let key = input
        .key
        .unwrap_or_else(|| format!("ck_{}", hex::encode(rand::random::<[u8; 16]>())));
    let doc = ApiKeyDoc {
        sealed_key: st.proxy.seal_key(&name, &key),
        key_hint: key.chars().take(6).collect(),
        rate_limit: input.rate_limit,
        routes: input.routes,
    };
    let value =
        serde_json::to_vec(&doc).map_err(|e| ApiError::Internal(format!("encoding: {e}")))?;
    let (revision, created) = put_doc(&st, format!("{API_KEY_PREFIX}{name}"), value).await?;
    let mut out = json!({"name": name, "revision": revision, "created": created,
                         "key_hint": doc.key_hint});
    if generated {
        // Shown once: only the sealed form is kept.
        out["key"] = json!(key);
    }
    Ok((created_code(created), Json(out)).into_response())
}

pub(crate) async fn key_get(
    State(st): Shared,
    Path(name): Path<String>,
    Query(opts): Query<ReadOpts>,
) -> Result<Json<Value>, ApiError> {
    check_name("API key", &name)?;
    barrier(&st, &opts).await?;
    match state::read_config(&*st.store, &format!("{API_KEY_PREFIX}{name}"))? {
        Some(e) => Ok(Json(key_json(&name, &e))),
        None => Err(ApiError::NotFound(format!("API key `{name}`"))),
    }
}

pub(crate) async fn key_list(
    State(st): Shared,
    Query(q): Query<ListOpts>,
) -> Result<Json<Value>, ApiError> {
    list(&st, &q, API_KEY_PREFIX, key_json).await
}

pub(crate) async fn key_delete(
    State(st): Shared,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    check_name("API key", &name)?;
    delete_doc(
        &st,
        format!("{API_KEY_PREFIX}{name}"),
        format!("API key `{name}`"),
    )
    .await
}
