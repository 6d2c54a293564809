//! Admin handlers for durable queues: `PUT/GET/DELETE /admin/queues/{name}`,
//! `GET /admin/queues`, and the dead letters under `/admin/queues/{name}/dead-letters`.
//!
//! Queue configuration is validated here (400 naming the field) and replicated as a typed
//! [`QueueConfig`]; stats come from the per-queue counters the state machine keeps in the same
//! batch as the messages, so reading them never scans a queue.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{
    barrier, next_cursor, now_ms, page_limit, parse_json, AdminState, ApiError, ListOpts, ReadOpts,
};
use crate::state::queue::{
    self, Attempt, DedupKey, Delivery, Final, MessageMeta, Ordering, QueueConfig, QueueEntry,
    QueueResponse, QueueStats, RetryPolicy, Whereabouts,
};
use crate::state::{Command, Response as SmResponse};
use crate::store::Store;

type Shared = State<Arc<AdminState>>;

/// Longest queue name.
pub const MAX_QUEUE_NAME_BYTES: usize = crate::state::MAX_RESOURCE_NAME_BYTES;
/// Longest push path.
pub const MAX_PUSH_PATH_BYTES: usize = 512;
/// Most commands one admin delete/purge/redrive proposes before answering (each touches at
/// most `queue::CHUNK_LIMIT` keys per range).
pub const MAX_CHUNK_ROUNDS: usize = 1_000;
/// Queues a message trace lookup searches for a live message.
pub const MAX_TRACE_QUEUES: usize = 1_000;
/// How often this node samples queue totals for the rates in `GET /admin/queues/{name}`.
pub const RATE_SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// Samples kept per queue: rates are over the last minute.
const RATE_SAMPLES: usize = 13;
/// Queues sampled per round.
const MAX_RATE_QUEUES: usize = 1_000;

/// (when, enqueued, completed, dead-lettered) totals per queue, sampled on this node.
type Samples = HashMap<String, VecDeque<(Instant, u64, u64, u64)>>;
static RATES: LazyLock<Mutex<Samples>> = LazyLock::new(|| Mutex::new(HashMap::new()));

/// Samples every queue's replicated totals every [`RATE_SAMPLE_EVERY`] so a GET can show
/// per-second rates over the last minute without scanning anything.
pub fn spawn_rate_sampler(store: Arc<dyn Store>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(RATE_SAMPLE_EVERY);
        loop {
            tick.tick().await;
            let Ok(queues) = queue::list_queues(&*store, None, MAX_RATE_QUEUES) else {
                continue;
            };
            let now = Instant::now();
            let mut book = RATES.lock().unwrap_or_else(|e| e.into_inner());
            book.retain(|q, _| queues.iter().any(|(n, _)| n == q));
            for (name, _) in queues {
                let Ok(s) = queue::read_stats(&*store, &name) else {
                    continue;
                };
                let v = book.entry(name).or_default();
                if v.len() >= RATE_SAMPLES {
                    v.pop_front();
                }
                v.push_back((
                    now,
                    s.enqueued_total,
                    s.completed_total,
                    s.dead_lettered_total,
                ));
            }
        }
    })
}

/// Per-second rates over the sampled window (the current totals as the newest point).
fn rates_json(name: &str, s: &QueueStats) -> Value {
    let book = RATES.lock().unwrap_or_else(|e| e.into_inner());
    let Some(&(at, enq, done, dead)) = book.get(name).and_then(|v| v.front()) else {
        return json!({"window_s": 0});
    };
    let secs = at.elapsed().as_secs_f64();
    if secs < 1.0 {
        return json!({"window_s": 0});
    }
    let per_s =
        |now: u64, then: u64| ((now.saturating_sub(then)) as f64 / secs * 10.0).round() / 10.0;
    json!({
        "window_s": secs.round(),
        "enqueued_per_s": per_s(s.enqueued_total, enq),
        "completed_per_s": per_s(s.completed_total, done),
        "dead_lettered_per_s": per_s(s.dead_lettered_total, dead),
    })
}

/// Queue names: 1..=64 of `A-Z a-z 0-9 . _ -`, not starting with `.` or `-`.
pub fn validate_name(name: &str) -> Result<(), ApiError> {
    if crate::state::is_resource_name(name) {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "name",
            format!("must be 1 to {MAX_QUEUE_NAME_BYTES} of A-Z a-z 0-9 . _ - and not start with . or -"),
        ))
    }
}

pub fn answer(r: SmResponse) -> Result<QueueResponse, ApiError> {
    match r {
        SmResponse::Queue(q) => Ok(q),
        other => Err(ApiError::Internal(format!("unexpected answer {other:?}"))),
    }
}

pub fn not_found(name: &str) -> ApiError {
    ApiError::NotFound(format!("queue `{name}`"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeliveryInput {
    mode: String,
    path: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DedupKeyInput {
    source: String,
    name: Option<String>,
    pointer: Option<String>,
    path: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DedupInput {
    window_ms: Option<u64>,
    key: Option<DedupKeyInput>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RetryInput {
    initial_ms: Option<u64>,
    max_ms: Option<u64>,
    multiplier: Option<f64>,
    jitter: Option<f64>,
    honour_retry_after: Option<bool>,
}

/// The queue document as PUT; every field optional with the documented default.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QueueInput {
    delivery: Option<DeliveryInput>,
    max_deliveries: Option<u32>,
    lock_duration_ms: Option<u64>,
    dedup: Option<DedupInput>,
    retry: Option<RetryInput>,
    ordering: Option<String>,
    ttl_ms: Option<u64>,
    max_messages: Option<u64>,
    max_bytes: Option<u64>,
    failover_after_ms: Option<u64>,
}

fn range<T: PartialOrd + std::fmt::Display>(
    field: &str,
    v: T,
    lo: T,
    hi: T,
) -> Result<T, ApiError> {
    if v < lo || v > hi {
        return Err(ApiError::invalid(
            field,
            format!("must be between {lo} and {hi}"),
        ));
    }
    Ok(v)
}

/// Validates a queue document into its stored form.
pub fn parse_config(body: &[u8]) -> Result<QueueConfig, ApiError> {
    let input: QueueInput = if body.is_empty() {
        parse_json(b"{}")?
    } else {
        parse_json(body)?
    };
    let d = QueueConfig::default();
    let delivery = match input.delivery {
        None => d.delivery,
        Some(di) => match di.mode.as_str() {
            "pull" if di.path.is_none() => Delivery::Pull,
            "pull" => {
                return Err(ApiError::invalid(
                    "delivery.path",
                    "only push delivery has a path",
                ))
            }
            "push" => {
                let p = di.path.ok_or_else(|| {
                    ApiError::invalid(
                        "delivery.path",
                        "push delivery needs a path such as /http/orders",
                    )
                })?;
                if !p.starts_with('/') || p.len() > MAX_PUSH_PATH_BYTES || p.contains("..") {
                    return Err(ApiError::invalid(
                        "delivery.path",
                        format!("must start with / and be at most {MAX_PUSH_PATH_BYTES} bytes, without .."),
                    ));
                }
                Delivery::Push { path: p }
            }
            other => {
                return Err(ApiError::invalid(
                    "delivery.mode",
                    format!("`{other}` is not one of push, pull"),
                ))
            }
        },
    };
    let max_deliveries = range(
        "max_deliveries",
        input.max_deliveries.unwrap_or(d.max_deliveries),
        1,
        1_000,
    )?;
    let lock_ms = range(
        "lock_duration_ms",
        input.lock_duration_ms.unwrap_or(d.lock_ms),
        queue::MIN_LOCK_MS,
        queue::MAX_LOCK_MS,
    )?;
    let (dedup_window_ms, dedup_key) = match input.dedup {
        None => (d.dedup_window_ms, d.dedup_key),
        Some(di) => {
            let w = range(
                "dedup.window_ms",
                di.window_ms.unwrap_or(d.dedup_window_ms),
                0,
                queue::MAX_DEDUP_WINDOW_MS,
            )?;
            let key = match di.key {
                None => d.dedup_key,
                Some(k) => parse_dedup_key(k)?,
            };
            (w, key)
        }
    };
    let retry = match input.retry {
        None => d.retry,
        Some(r) => {
            let dr = RetryPolicy::default();
            let initial_ms = range(
                "retry.initial_ms",
                r.initial_ms.unwrap_or(dr.initial_ms),
                10,
                3_600_000,
            )?;
            let max_ms = range(
                "retry.max_ms",
                r.max_ms.unwrap_or(dr.max_ms),
                initial_ms,
                86_400_000,
            )?;
            let mult = r.multiplier.unwrap_or(dr.multiplier_pct as f64 / 100.0);
            let mult = range("retry.multiplier", mult, 1.0, 10.0)?;
            let jitter = range(
                "retry.jitter",
                r.jitter.unwrap_or(dr.jitter_pct as f64 / 100.0),
                0.0,
                1.0,
            )?;
            RetryPolicy {
                initial_ms,
                max_ms,
                multiplier_pct: (mult * 100.0).round() as u32,
                jitter_pct: (jitter * 100.0).round() as u32,
                honour_retry_after: r.honour_retry_after.unwrap_or(dr.honour_retry_after),
            }
        }
    };
    let ordering = match input.ordering.as_deref() {
        None | Some("none") => Ordering::None,
        Some("per_key") => Ordering::PerKey,
        Some(other) => {
            return Err(ApiError::invalid(
                "ordering",
                format!("`{other}` is not one of none, per_key"),
            ))
        }
    };
    let ttl_ms = match input.ttl_ms {
        None | Some(0) => None,
        Some(t) => Some(range("ttl_ms", t, 1_000, 365 * 86_400_000)?),
    };
    let max_messages = range(
        "max_messages",
        input.max_messages.unwrap_or(d.max_messages),
        1,
        10_000_000,
    )?;
    let max_bytes = range(
        "max_bytes",
        input.max_bytes.unwrap_or(d.max_bytes),
        1,
        1024 * 1024 * 1024,
    )?;
    let failover_after_ms = range(
        "failover_after_ms",
        input.failover_after_ms.unwrap_or(d.failover_after_ms),
        0,
        86_400_000,
    )?;
    Ok(QueueConfig {
        failover_after_ms,
        delivery,
        max_deliveries,
        lock_ms,
        dedup_window_ms,
        dedup_key,
        retry,
        ordering,
        ttl_ms,
        max_messages,
        max_bytes,
    })
}

fn parse_dedup_key(k: DedupKeyInput) -> Result<DedupKey, ApiError> {
    let need = |v: Option<String>, f: &str| {
        v.filter(|s| !s.is_empty() && s.len() <= 256)
            .ok_or_else(|| ApiError::invalid(format!("dedup.key.{f}"), "required, 1 to 256 bytes"))
    };
    match k.source.as_str() {
        "none" => Ok(DedupKey::None),
        "header" => {
            let name = need(k.name, "name")?.to_ascii_lowercase();
            if axum::http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(ApiError::invalid(
                    "dedup.key.name",
                    "not a valid header name",
                ));
            }
            Ok(DedupKey::Header { name })
        }
        "json_pointer" => {
            let pointer = need(k.pointer, "pointer")?;
            if !pointer.starts_with('/') {
                return Err(ApiError::invalid(
                    "dedup.key.pointer",
                    "a JSON pointer starts with / (RFC 6901)",
                ));
            }
            Ok(DedupKey::JsonPointer { pointer })
        }
        "xml_path" => {
            let path = need(k.path, "path")?;
            let ok = path.split('/').all(|seg| {
                !seg.is_empty()
                    && seg
                        .chars()
                        .all(|c| c.is_alphanumeric() || "_-.".contains(c))
            });
            if !ok {
                return Err(ApiError::invalid(
                    "dedup.key.path",
                    "element names separated by /, e.g. IDOC/EDI_DC40/DOCNUM",
                ));
            }
            Ok(DedupKey::XmlPath { path })
        }
        other => Err(ApiError::invalid(
            "dedup.key.source",
            format!("`{other}` is not one of header, json_pointer, xml_path, none"),
        )),
    }
}

pub fn config_json(c: &QueueConfig) -> Value {
    let delivery = match &c.delivery {
        Delivery::Pull => json!({"mode": "pull"}),
        Delivery::Push { path } => json!({"mode": "push", "path": path}),
    };
    let key = match &c.dedup_key {
        DedupKey::None => json!({"source": "none"}),
        DedupKey::Header { name } => json!({"source": "header", "name": name}),
        DedupKey::JsonPointer { pointer } => json!({"source": "json_pointer", "pointer": pointer}),
        DedupKey::XmlPath { path } => json!({"source": "xml_path", "path": path}),
    };
    json!({
        "delivery": delivery,
        "max_deliveries": c.max_deliveries,
        "lock_duration_ms": c.lock_ms,
        "dedup": {"window_ms": c.dedup_window_ms, "key": key},
        "retry": {
            "initial_ms": c.retry.initial_ms,
            "max_ms": c.retry.max_ms,
            "multiplier": c.retry.multiplier_pct as f64 / 100.0,
            "jitter": c.retry.jitter_pct as f64 / 100.0,
            "honour_retry_after": c.retry.honour_retry_after,
        },
        "ordering": match c.ordering { Ordering::None => "none", Ordering::PerKey => "per_key" },
        "ttl_ms": c.ttl_ms,
        "max_messages": c.max_messages,
        "max_bytes": c.max_bytes,
        "failover_after_ms": c.failover_after_ms,
    })
}

fn queue_json(st: &AdminState, name: &str, e: &QueueEntry) -> Result<Value, ApiError> {
    let s = queue::read_stats(&*st.store, name)?;
    let mut v = config_json(&e.config);
    v["name"] = json!(name);
    v["revision"] = json!(e.revision);
    v["updated_ms"] = json!(e.updated_ms);
    v["deleting"] = json!(e.deleting);
    v["stats"] = json!({
        "depth": s.depth,
        "ready": s.depth.saturating_sub(s.in_flight),
        "in_flight": s.in_flight,
        "bytes": s.bytes,
        "dead_letters": s.dead_letters,
        "dead_letter_bytes": s.dead_bytes,
        "enqueued_total": s.enqueued_total,
        "duplicates_total": s.duplicates_total,
        "completed_total": s.completed_total,
        "expired_total": s.expired_total,
        "dead_lettered_total": s.dead_lettered_total,
        "rates": rates_json(name, &s),
    });
    Ok(v)
}

pub(crate) async fn put(
    State(st): Shared,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    validate_name(&name)?;
    let config = parse_config(&body)?;
    let cmd = Command::QueuePut {
        name: name.clone(),
        config,
        now_ms: now_ms(),
    };
    match answer(st.client.write(&cmd).await?)? {
        QueueResponse::Put { revision, created } => {
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
        QueueResponse::Deleting => Err(ApiError::Conflict(format!(
            "queue `{name}` is being deleted"
        ))),
        other => Err(ApiError::Internal(format!("unexpected answer {other:?}"))),
    }
}

pub(crate) async fn get_one(
    State(st): Shared,
    Path(name): Path<String>,
    Query(opts): Query<ReadOpts>,
) -> Result<Json<Value>, ApiError> {
    validate_name(&name)?;
    barrier(&st, &opts).await?;
    let e = queue::read_queue(&*st.store, &name)?.ok_or_else(|| not_found(&name))?;
    Ok(Json(queue_json(&st, &name, &e)?))
}

pub(crate) async fn list(
    State(st): Shared,
    Query(q): Query<ListOpts>,
) -> Result<Json<Value>, ApiError> {
    let limit = q.prepare(&st).await?;
    let items = queue::list_queues(&*st.store, q.after.as_deref(), limit)?;
    let next = next_cursor(&items, limit);
    let items = items
        .iter()
        .map(|(n, e)| queue_json(&st, n, e))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(json!({"items": items, "next": next})))
}

pub(crate) async fn delete(
    State(st): Shared,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    validate_name(&name)?;
    for _ in 0..MAX_CHUNK_ROUNDS {
        match answer(
            st.client
                .write(&Command::QueueDelete { name: name.clone() })
                .await?,
        )? {
            QueueResponse::Deleted { existed: false, .. } => return Err(not_found(&name)),
            QueueResponse::Deleted { done: true, .. } => {
                return Ok(StatusCode::NO_CONTENT.into_response())
            }
            QueueResponse::Deleted { done: false, .. } => continue,
            other => return Err(ApiError::Internal(format!("unexpected answer {other:?}"))),
        }
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"name": name, "deleting": true})),
    )
        .into_response())
}

pub fn meta_json(m: &MessageMeta) -> Value {
    let headers: serde_json::Map<String, Value> = m
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    json!({
        "id": m.id,
        "sequence": m.sequence,
        "enqueued_ms": m.enqueued_ms,
        "expires_at_ms": m.expires_at_ms,
        "delivery_count": m.delivery_count,
        "dedup_key": m.dedup_key,
        "ordering_key": m.ordering_key,
        "content_type": m.content_type,
        "headers": headers,
        "body_bytes": m.body_len,
        "dead_letter_reason": m.dead_reason,
        "dead_letter_excerpt": m.dead_excerpt,
        "last_status": m.last_status,
        "last_tenant": m.last_tenant,
        "attempts_total": m.attempts_total,
    })
}

fn attempt_json(a: &Attempt) -> Value {
    json!({
        "at_ms": a.at_ms,
        "tenant": a.tenant,
        "status": a.status,
        "error": a.error,
        "latency_ms": a.latency_ms,
        "counted": a.counted,
        "note": a.note,
    })
}

/// `GET /admin/messages/{id}`: where a message is and what happened to it: accepted when,
/// every attempt (tenant, status, latency, failover notes) and its final state. Finished
/// messages are kept for `queue::TRACE_RETENTION_MS`.
pub(crate) async fn message_trace(
    State(st): Shared,
    Path(id): Path<String>,
    Query(opts): Query<ReadOpts>,
) -> Result<Json<Value>, ApiError> {
    barrier(&st, &opts).await?;
    let found =
        queue::find_message(&*st.store, &st.queues, &id, MAX_TRACE_QUEUES)?.ok_or_else(|| {
            ApiError::NotFound(format!(
                "message `{id}` (finished messages are kept for {} s)",
                queue::TRACE_RETENTION_MS / 1000
            ))
        })?;
    let (queue, meta, state, extra) = match found {
        Whereabouts::Live { queue, meta, lease } => {
            let (state, extra) = match lease {
                Some(l) if l.deadline_ms > now_ms() => (
                    "in_flight",
                    json!({"held_by": l.consumer, "locked_until_ms": l.deadline_ms}),
                ),
                _ if meta.visible_at_ms > now_ms() => (
                    "waiting_retry",
                    json!({"visible_at_ms": meta.visible_at_ms}),
                ),
                _ => ("ready", json!({})),
            };
            (queue, meta, state, extra)
        }
        Whereabouts::Dead { queue, meta } => (queue, meta, "dead_lettered", json!({})),
        Whereabouts::Finished(t) => {
            let state = match t.outcome {
                Final::Completed => "completed",
                Final::Expired => "expired",
            };
            (
                t.queue,
                t.meta,
                state,
                json!({"finished_ms": t.finished_ms}),
            )
        }
    };
    let mut v = meta_json(&meta);
    v["queue"] = json!(queue);
    v["accepted_ms"] = json!(meta.enqueued_ms);
    v["state"] = json!(state);
    v["uncertain"] = json!(meta.uncertain);
    v["attempts"] = json!(meta.attempts.iter().map(attempt_json).collect::<Vec<_>>());
    if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    Ok(Json(v))
}

#[derive(Deserialize)]
pub(crate) struct DeadListOpts {
    after: Option<u64>,
    limit: Option<usize>,
    consistency: Option<String>,
}

pub(crate) async fn dead_list(
    State(st): Shared,
    Path(name): Path<String>,
    Query(q): Query<DeadListOpts>,
) -> Result<Json<Value>, ApiError> {
    validate_name(&name)?;
    let limit = page_limit(q.limit)?;
    barrier(
        &st,
        &ReadOpts {
            consistency: q.consistency,
        },
    )
    .await?;
    queue::read_queue(&*st.store, &name)?.ok_or_else(|| not_found(&name))?;
    let items = queue::list_dead_letters(&*st.store, &name, q.after, limit)?;
    let next = if items.len() == limit {
        items.last().map(|m| m.sequence)
    } else {
        None
    };
    let items: Vec<Value> = items.iter().map(meta_json).collect();
    Ok(Json(json!({"items": items, "next": next})))
}

pub(crate) async fn dead_peek(
    State(st): Shared,
    Path((name, id)): Path<(String, String)>,
    Query(opts): Query<ReadOpts>,
) -> Result<Json<Value>, ApiError> {
    validate_name(&name)?;
    barrier(&st, &opts).await?;
    queue::read_queue(&*st.store, &name)?.ok_or_else(|| not_found(&name))?;
    let (meta, body) = queue::peek_dead_letter(&*st.store, &st.queues, &name, &id)?
        .ok_or_else(|| ApiError::NotFound(format!("dead letter `{id}` in queue `{name}`")))?;
    let mut v = meta_json(&meta);
    v["body"] = json!(base64::engine::general_purpose::STANDARD.encode(body));
    v["body_encoding"] = json!("base64");
    Ok(Json(v))
}

async fn dead_rounds(
    st: &AdminState,
    name: &str,
    id: Option<String>,
    redrive: bool,
) -> Result<Response, ApiError> {
    validate_name(name)?;
    let mut total = 0u64;
    for _ in 0..MAX_CHUNK_ROUNDS {
        let cmd = if redrive {
            Command::QueueRedrive {
                queue: name.into(),
                id: id.clone(),
                now_ms: now_ms(),
            }
        } else {
            Command::QueuePurgeDead {
                queue: name.into(),
                id: id.clone(),
            }
        };
        match answer(st.client.write(&cmd).await?)? {
            QueueResponse::DeadLetters { count, done } => {
                total += count;
                if done {
                    return Ok(Json(json!({"count": total})).into_response());
                }
            }
            QueueResponse::NotFound => return Err(not_found(name)),
            QueueResponse::Deleting => {
                return Err(ApiError::Conflict(format!(
                    "queue `{name}` is being deleted"
                )))
            }
            QueueResponse::MessageNotFound => {
                return Err(ApiError::NotFound(format!(
                    "dead letter `{}` in queue `{name}`",
                    id.unwrap_or_default()
                )))
            }
            other => return Err(ApiError::Internal(format!("unexpected answer {other:?}"))),
        }
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"count": total, "more": true})),
    )
        .into_response())
}

pub(crate) async fn dead_redrive_one(
    State(st): Shared,
    Path((name, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    dead_rounds(&st, &name, Some(id), true).await
}

pub(crate) async fn dead_redrive_all(
    State(st): Shared,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    dead_rounds(&st, &name, None, true).await
}

pub(crate) async fn dead_purge_all(
    State(st): Shared,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    dead_rounds(&st, &name, None, false).await
}

pub(crate) async fn dead_purge_one(
    State(st): Shared,
    Path((name, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    dead_rounds(&st, &name, Some(id), false).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(body: &str) -> Option<String> {
        match parse_config(body.as_bytes()) {
            Err(ApiError::Invalid { field, .. }) => field,
            other => panic!("{body}: expected invalid, got {other:?}"),
        }
    }

    #[test]
    fn defaults_and_bad_fields() {
        let c = parse_config(b"").unwrap();
        assert_eq!(c, QueueConfig::default());
        let cases = [
            (r#"{"max_deliveries":0}"#, "max_deliveries"),
            (r#"{"lock_duration_ms":10}"#, "lock_duration_ms"),
            (r#"{"dedup":{"window_ms":999999999999}}"#, "dedup.window_ms"),
            (r#"{"dedup":{"key":{"source":"x"}}}"#, "dedup.key.source"),
            (
                r#"{"dedup":{"key":{"source":"json_pointer","pointer":"id"}}}"#,
                "dedup.key.pointer",
            ),
            (r#"{"delivery":{"mode":"push"}}"#, "delivery.path"),
            (r#"{"delivery":{"mode":"fax"}}"#, "delivery.mode"),
            (r#"{"ordering":"random"}"#, "ordering"),
            (r#"{"retry":{"multiplier":0.5}}"#, "retry.multiplier"),
            (r#"{"max_deliveries":"x"}"#, "max_deliveries"),
            (r#"{"bogus":1}"#, "bogus"),
        ];
        for (body, want) in cases {
            let got = field(body);
            assert!(
                got.as_deref().is_some_and(|f| f.contains(want)),
                "{body}: {got:?}"
            );
        }
        let c = parse_config(
            br#"{"delivery":{"mode":"push","path":"/http/orders"},"dedup":{"window_ms":604800000,
                 "key":{"source":"xml_path","path":"IDOC/EDI_DC40/DOCNUM"}},"ordering":"per_key"}"#,
        )
        .unwrap();
        assert_eq!(c.dedup_window_ms, queue::MAX_DEDUP_WINDOW_MS);
        assert_eq!(
            parse_config(serde_json::to_vec(&config_json(&c)).unwrap().as_slice()).unwrap(),
            c
        );
    }
}
