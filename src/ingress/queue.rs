//! Data-plane handlers of the durable queue: enqueue (single and batch), the long-poll
//! peek-lock receive, and settling a leased message; plus the leader's periodic sweep.
//!
//! Handlers stamp everything non-deterministic (time, message ids, lock tokens) into the
//! command and answer only once it is committed on a majority and applied. Dedup keys are
//! extracted here, from a header or the body, using this node's applied copy of the queue's
//! configuration.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::api::queues::{answer, meta_json, not_found, validate_name};
use crate::api::{now_ms, parse_json, ApiError};
use crate::client::Client;
use crate::raft::Role;
use crate::state::queue::{
    self, DedupKey, NewMessage, QueueConfig, QueueEntry, QueueResponse, Settle,
    MAX_DEDUP_KEY_BYTES, MAX_HEADERS, MAX_HEADER_BYTES, MAX_ORDERING_KEY_BYTES,
};
use crate::state::Command;
use crate::store::Store;

/// Largest batch request body: 16 MiB of bodies, base64-encoded, plus JSON framing.
pub const MAX_BATCH_REQUEST_BYTES: usize = 23 * 1024 * 1024;
/// Longest long-poll wait a receive may ask for.
pub const MAX_RECEIVE_WAIT_MS: u64 = 60_000;
/// How often a waiting receive re-checks this node's applied state (no proposal unless a
/// message is visible there).
pub const RECEIVE_POLL: Duration = Duration::from_millis(50);
/// How often the leader checks whether dedup entries or leases expired and need a sweep.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Most sweep commands the leader proposes per interval while expired keys remain.
pub const SWEEP_ROUNDS_PER_TICK: usize = 10;
/// Longest consumer name.
pub const MAX_CONSUMER_BYTES: usize = 128;

/// Request headers never kept with a message (hop-by-hop, credentials, framing).
const DROPPED_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "content-type",
    "authorization",
    "cookie",
    "expect",
    "ordering-key",
];

pub struct IngressState {
    pub client: Arc<Client>,
    pub store: Arc<dyn Store>,
    /// The queue indexes the state machine keeps (what is visible when).
    pub queues: queue::SharedIndex,
    /// Shares commands between concurrent single-message enqueues (see `coalesce`).
    pub coalescer: super::coalesce::Coalescer,
}

type Shared = State<Arc<IngressState>>;

fn count(op: &str, outcome: &str, n: u64) {
    crate::metrics::M
        .queue_messages
        .with_label_values(&[op, outcome])
        .inc_by(n);
}

fn random_hex() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

fn body_or_413(body: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge { limit_bytes: limit }
        } else {
            ApiError::invalid("body", e.body_text())
        }
    })
}

/// The queue's configuration as of this node's last applied command (the state machine's
/// in-memory copy: no store read, no decode); on a miss, once more after a read barrier (the
/// queue may have just been created through another node).
async fn config(st: &IngressState, name: &str) -> Result<Arc<QueueEntry>, ApiError> {
    validate_name(name).map_err(|_| not_found(name))?;
    if let Some(e) = st.queues.read().queue_entry(name) {
        return Ok(e);
    }
    st.client.read_barrier().await?;
    st.queues
        .read()
        .queue_entry(name)
        .ok_or_else(|| not_found(name))
}

/// Pulls a dedup key out of a body: a JSON pointer, or a slash-separated element path into
/// XML (local names, namespaces ignored). Returns the first match's text.
pub fn key_from_body(source: &DedupKey, body: &[u8]) -> Option<String> {
    match source {
        DedupKey::JsonPointer { pointer } => {
            let v: Value = serde_json::from_slice(body).ok()?;
            match v.pointer(pointer)? {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                Value::Bool(b) => Some(b.to_string()),
                _ => None,
            }
        }
        DedupKey::XmlPath { path } => xml_text(std::str::from_utf8(body).ok()?, path),
        _ => None,
    }
}

/// A deliberately small XML scan: enough for element paths such as `IDOC/EDI_DC40/DOCNUM`.
fn xml_text(xml: &str, path: &str) -> Option<String> {
    let want: Vec<&str> = path.split('/').collect();
    let mut stack: Vec<&str> = Vec::new();
    let mut rest = xml;
    while let Some(open) = rest.find('<') {
        let after = &rest[open + 1..];
        let close = after.find('>')?;
        let tag = &after[..close];
        rest = &after[close + 1..];
        if tag.starts_with('?') || tag.starts_with('!') {
            continue;
        }
        if let Some(name) = tag.strip_prefix('/') {
            let _ = name;
            stack.pop();
            continue;
        }
        let self_closing = tag.ends_with('/');
        let name = tag.trim_end_matches('/').split_whitespace().next()?;
        let local = name.rsplit(':').next()?;
        stack.push(local);
        if stack.ends_with(&want) && !self_closing {
            let end = rest.find('<')?;
            let text = rest[..end].trim();
            return (!text.is_empty()).then(|| unescape(text));
        }
        if self_closing {
            stack.pop();
        }
    }
    None
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

fn check_key(field: &str, v: String, max: usize) -> Result<String, ApiError> {
    if v.is_empty() || v.len() > max {
        return Err(ApiError::invalid(
            field,
            format!("must be 1 to {max} bytes"),
        ));
    }
    Ok(v)
}

/// Builds one message from its headers and body, with a fresh id.
fn build(
    cfg: &QueueConfig,
    headers: Vec<(String, String)>,
    content_type: Option<String>,
    body: Vec<u8>,
    field: &str,
) -> Result<NewMessage, ApiError> {
    if body.len() > queue::MAX_MESSAGE_BYTES {
        return Err(ApiError::TooLarge {
            limit_bytes: queue::MAX_MESSAGE_BYTES,
        });
    }
    let find = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let ordering_key = find("ordering-key")
        .map(|v| check_key("Ordering-Key", v, MAX_ORDERING_KEY_BYTES))
        .transpose()?;
    let dedup_key = match &cfg.dedup_key {
        DedupKey::None => None,
        DedupKey::Header { name } => find(name),
        other => key_from_body(other, &body),
    }
    .map(|v| check_key(&format!("{field}dedup key"), v, MAX_DEDUP_KEY_BYTES))
    .transpose()?;
    let kept: Vec<(String, String)> = headers
        .into_iter()
        .filter(|(k, _)| !DROPPED_HEADERS.contains(&k.to_ascii_lowercase().as_str()))
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect();
    let bytes: usize = kept.iter().map(|(k, v)| k.len() + v.len()).sum();
    if kept.len() > MAX_HEADERS || bytes > MAX_HEADER_BYTES {
        return Err(ApiError::invalid(
            format!("{field}headers"),
            format!("at most {MAX_HEADERS} headers and {MAX_HEADER_BYTES} bytes are kept"),
        ));
    }
    Ok(NewMessage {
        id: random_hex(),
        dedup_key,
        ordering_key,
        content_type,
        headers: kept,
        body,
    })
}

pub(super) async fn enqueue_all(
    st: &IngressState,
    name: &str,
    messages: Vec<NewMessage>,
) -> Result<Vec<queue::Enqueued>, ApiError> {
    let n = messages.len() as u64;
    enqueue_outcome(name, n, propose_enqueue(st, name, messages).await?)
}

/// Proposes one enqueue command (through Raft, from any node) and returns its answer.
pub(super) async fn propose_enqueue(
    st: &IngressState,
    name: &str,
    messages: Vec<NewMessage>,
) -> Result<QueueResponse, ApiError> {
    let cmd = Command::QueueEnqueue {
        queue: name.into(),
        now_ms: now_ms(),
        messages,
    };
    answer(st.client.write(&cmd).await?)
}

/// What the requester of `n` messages gets for an enqueue answer (and the queue metrics).
pub(super) fn enqueue_outcome(
    name: &str,
    n: u64,
    r: QueueResponse,
) -> Result<Vec<queue::Enqueued>, ApiError> {
    match r {
        QueueResponse::Enqueued { results } => {
            let dups = results.iter().filter(|r| r.duplicate).count() as u64;
            count("enqueue", "stored", n - dups);
            count("enqueue", "duplicate", dups);
            Ok(results)
        }
        QueueResponse::NotFound => Err(not_found(name)),
        QueueResponse::Deleting => Err(ApiError::Conflict(format!(
            "queue `{name}` is being deleted"
        ))),
        QueueResponse::Full { reason } => {
            count("enqueue", "full", n);
            Err(ApiError::QueueFull(reason))
        }
        other => Err(ApiError::Internal(format!("unexpected answer {other:?}"))),
    }
}

fn enqueued_json(e: &queue::Enqueued) -> Value {
    json!({"id": e.id, "sequence": e.sequence, "duplicate": e.duplicate})
}

/// `POST /queues/{queue}/messages`: 202 once committed on a majority.
pub async fn enqueue(
    State(st): Shared,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_or_413(body, queue::MAX_MESSAGE_BYTES)?;
    enqueue_one(&st, &name, &headers, body).await
}

/// Enqueues one message from an HTTP request's headers and body; 202 with its id once
/// committed. Shared by `POST /queues/{queue}/messages` and async proxy routes.
pub async fn enqueue_one(
    st: &Arc<IngressState>,
    name: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let entry = config(st, name).await?;
    let cfg = &entry.config;
    let mut pairs = Vec::new();
    for (k, v) in headers.iter() {
        let v = v
            .to_str()
            .map_err(|_| ApiError::invalid(k.as_str(), "header value must be visible ASCII"))?;
        pairs.push((k.as_str().to_string(), v.to_string()));
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let m = build(cfg, pairs, content_type, body.to_vec(), "")?;
    let r = super::coalesce::Coalescer::enqueue(st, name, m).await?;
    Ok((StatusCode::ACCEPTED, Json(enqueued_json(&r))).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchItem {
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
    body: String,
    /// `text` (default) or `base64`.
    body_encoding: Option<String>,
    content_type: Option<String>,
}

/// `POST /queues/{queue}/messages:batch`: all messages in one command, all or nothing.
pub async fn enqueue_batch(
    State(st): Shared,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_or_413(body, MAX_BATCH_REQUEST_BYTES)?;
    let entry = config(&st, &name).await?;
    let cfg = &entry.config;
    let items: Vec<BatchItem> = parse_json(&body)?;
    if items.is_empty() || items.len() > queue::MAX_BATCH_MESSAGES {
        return Err(ApiError::invalid(
            "body",
            format!("must hold 1 to {} messages", queue::MAX_BATCH_MESSAGES),
        ));
    }
    let mut messages = Vec::with_capacity(items.len());
    let mut total = 0usize;
    for (i, item) in items.into_iter().enumerate() {
        let bytes = match item.body_encoding.as_deref() {
            None | Some("text") => item.body.into_bytes(),
            Some("base64") => base64::engine::general_purpose::STANDARD
                .decode(item.body.as_bytes())
                .map_err(|e| {
                    ApiError::invalid(format!("[{i}].body"), format!("not base64: {e}"))
                })?,
            Some(other) => {
                return Err(ApiError::invalid(
                    format!("[{i}].body_encoding"),
                    format!("`{other}` is not one of text, base64"),
                ))
            }
        };
        total += bytes.len();
        if total > queue::MAX_BATCH_BYTES {
            return Err(ApiError::TooLarge {
                limit_bytes: queue::MAX_BATCH_BYTES,
            });
        }
        let headers = item.headers.into_iter().collect();
        messages.push(build(
            cfg,
            headers,
            item.content_type,
            bytes,
            &format!("[{i}]."),
        )?);
    }
    let results = enqueue_all(&st, &name, messages).await?;
    let items: Vec<Value> = results.iter().map(enqueued_json).collect();
    Ok((StatusCode::ACCEPTED, Json(json!({"items": items}))).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReceiveInput {
    wait_ms: Option<u64>,
    lock_ms: Option<u64>,
    consumer: Option<String>,
    /// Batch receive: lease up to this many (1..=32) in one command; the answer is then
    /// `{"messages": [...]}`. Absent: one message, answered as the message itself.
    max_messages: Option<usize>,
}

/// A leased message as a receive answers it.
fn received_json(m: &queue::Received) -> Value {
    let mut v = meta_json(&m.meta);
    v["lock_token"] = json!(m.lock_token);
    v["locked_until_ms"] = json!(m.locked_until_ms);
    v["body"] = json!(base64::engine::general_purpose::STANDARD.encode(&m.body));
    v["body_encoding"] = json!("base64");
    v
}

/// The receive command for `want` messages (`None`: the single-message form).
fn receive_command(name: &str, lock_ms: u64, consumer: &str, want: Option<usize>) -> Command {
    match want {
        None => Command::QueueReceive {
            queue: name.to_string(),
            now_ms: now_ms(),
            lock_ms,
            lock_token: random_hex(),
            consumer: consumer.to_string(),
        },
        Some(n) => Command::QueueReceiveMany {
            queue: name.to_string(),
            now_ms: now_ms(),
            lock_ms,
            lock_tokens: (0..n).map(|_| random_hex()).collect(),
            consumer: consumer.to_string(),
        },
    }
}

/// `POST /queues/{queue}/messages/head`: leases the head message (or up to `max_messages`);
/// waits up to `wait_ms` for one.
pub async fn receive(
    State(st): Shared,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_or_413(body, crate::api::MAX_ADMIN_BODY_BYTES)?;
    let input: ReceiveInput = if body.is_empty() {
        ReceiveInput::default()
    } else {
        parse_json(&body)?
    };
    let wait_ms = input.wait_ms.unwrap_or(0);
    if wait_ms > MAX_RECEIVE_WAIT_MS {
        return Err(ApiError::invalid(
            "wait_ms",
            format!("must be at most {MAX_RECEIVE_WAIT_MS}"),
        ));
    }
    if let Some(n) = input.max_messages {
        if !(1..=queue::MAX_RECEIVE_MESSAGES).contains(&n) {
            return Err(ApiError::invalid(
                "max_messages",
                format!("must be between 1 and {}", queue::MAX_RECEIVE_MESSAGES),
            ));
        }
    }
    let consumer = input.consumer.unwrap_or_default();
    if consumer.len() > MAX_CONSUMER_BYTES {
        return Err(ApiError::invalid(
            "consumer",
            format!("must be at most {MAX_CONSUMER_BYTES} bytes"),
        ));
    }
    // The barrier makes the first local look linearizable; later looks are cheap local reads.
    st.client.read_barrier().await?;
    let entry = config(&st, &name).await?;
    let cfg = &entry.config;
    if let queue::Delivery::Push { path } = &cfg.delivery {
        return Err(ApiError::Conflict(format!(
            "queue `{name}` delivers by push to `{path}`; only pull queues can be received from"
        )));
    }
    let lock_ms = input.lock_ms.unwrap_or(cfg.lock_ms);
    if !(queue::MIN_LOCK_MS..=queue::MAX_LOCK_MS).contains(&lock_ms) {
        return Err(ApiError::invalid(
            "lock_ms",
            format!(
                "must be between {} and {}",
                queue::MIN_LOCK_MS,
                queue::MAX_LOCK_MS
            ),
        ));
    }
    let deadline = Instant::now() + Duration::from_millis(wait_ms);
    loop {
        if queue::has_visible(&*st.store, &st.queues, &name, cfg, now_ms())? {
            let cmd = receive_command(&name, lock_ms, &consumer, input.max_messages);
            match answer(st.client.write(&cmd).await?)? {
                QueueResponse::Received { message: Some(m) } => {
                    count("receive", "delivered", 1);
                    return Ok(Json(received_json(&m)).into_response());
                }
                QueueResponse::ReceivedMany { messages } if !messages.is_empty() => {
                    count("receive", "delivered", messages.len() as u64);
                    let items: Vec<Value> = messages.iter().map(received_json).collect();
                    return Ok(Json(json!({ "messages": items })).into_response());
                }
                QueueResponse::Received { message: None } | QueueResponse::ReceivedMany { .. } => {}
                QueueResponse::NotFound | QueueResponse::Deleting => return Err(not_found(&name)),
                other => return Err(ApiError::Internal(format!("unexpected answer {other:?}"))),
            }
        }
        if Instant::now() + RECEIVE_POLL > deadline {
            count("receive", "empty", 1);
            return Ok(StatusCode::NO_CONTENT.into_response());
        }
        tokio::time::sleep(RECEIVE_POLL).await;
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SettleInput {
    lock_token: String,
    reason: Option<String>,
    lock_ms: Option<u64>,
}

/// `POST /queues/{queue}/messages/{id}:{complete|abandon|dead-letter|renew-lock}`.
pub async fn settle(
    State(st): Shared,
    Path((name, id_action)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_or_413(body, crate::api::MAX_ADMIN_BODY_BYTES)?;
    let Some((id, verb)) = id_action.rsplit_once(':') else {
        return Err(ApiError::NoRoute {
            method: "POST".into(),
            path: format!("/queues/{name}/messages/{id_action}"),
        });
    };
    let input: SettleInput = parse_json(&body)?;
    let entry = config(&st, &name).await?;
    let cfg = &entry.config;
    let action = match verb {
        "renew-lock" => {
            let lock_ms = input.lock_ms.unwrap_or(cfg.lock_ms);
            if !(queue::MIN_LOCK_MS..=queue::MAX_LOCK_MS).contains(&lock_ms) {
                return Err(ApiError::invalid("lock_ms", "out of range"));
            }
            Settle::Renew { lock_ms }
        }
        _ => match release_action(verb, input.reason) {
            Some(action) => action,
            None => {
                return Err(ApiError::NoRoute {
                    method: "POST".into(),
                    path: format!("/queues/{name}/messages/{id_action}"),
                })
            }
        },
    };
    let answer = match action {
        // The hot path of pull consumers: shares a command with concurrent completes.
        Settle::Complete => {
            super::coalesce::Coalescer::complete(&st, &name, id.to_string(), input.lock_token)
                .await?
        }
        action => {
            let cmd = Command::QueueSettle {
                queue: name.clone(),
                id: id.to_string(),
                lock_token: input.lock_token,
                now_ms: now_ms(),
                action,
            };
            answer(st.client.write(&cmd).await?)?
        }
    };
    match &answer {
        QueueResponse::Settled { .. } => count("settle", verb, 1),
        QueueResponse::LockLost => count("settle", "lock_lost", 1),
        _ => {}
    }
    match answer {
        QueueResponse::Settled {
            locked_until_ms: Some(t),
        } => Ok(Json(json!({"id": id, "locked_until_ms": t})).into_response()),
        QueueResponse::Settled {
            locked_until_ms: None,
        } => Ok(StatusCode::NO_CONTENT.into_response()),
        QueueResponse::LockLost => Err(ApiError::LockLost(format!(
            "the lock on message `{id}` expired or is held by another receive"
        ))),
        QueueResponse::MessageNotFound => Err(ApiError::NotFound(format!(
            "message `{id}` in queue `{name}`"
        ))),
        QueueResponse::NotFound | QueueResponse::Deleting => Err(not_found(&name)),
        other => Err(ApiError::Internal(format!("unexpected answer {other:?}"))),
    }
}

/// The settle verbs that end a lock (all but renew): `None` for any other verb. A
/// dead-letter reason defaults and is cut to 1,024 characters.
fn release_action(verb: &str, reason: Option<String>) -> Option<Settle> {
    match verb {
        "complete" => Some(Settle::Complete),
        "abandon" => Some(Settle::Abandon),
        "dead-letter" => Some(Settle::DeadLetter {
            reason: reason
                .unwrap_or_else(|| "dead-lettered by the consumer".into())
                .chars()
                .take(1024)
                .collect(),
        }),
        _ => None,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SettleItem {
    id: String,
    lock_token: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SettleBatchInput {
    action: String,
    items: Vec<SettleItem>,
    reason: Option<String>,
}

/// `POST /queues/{queue}/messages:settle`: completes, abandons or dead-letters many leased
/// messages in one command. Each item is judged alone: the answer lists, in order, `settled`,
/// `lock_lost` or `not_found` per item.
pub async fn settle_batch(
    State(st): Shared,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_or_413(body, crate::api::MAX_ADMIN_BODY_BYTES)?;
    let input: SettleBatchInput = parse_json(&body)?;
    let Some(action) = release_action(&input.action, input.reason) else {
        return Err(ApiError::invalid(
            "action",
            "must be complete, abandon or dead-letter",
        ));
    };
    if input.items.is_empty() || input.items.len() > queue::MAX_SETTLE_ITEMS {
        return Err(ApiError::invalid(
            "items",
            format!("must hold 1 to {} items", queue::MAX_SETTLE_ITEMS),
        ));
    }
    config(&st, &name).await?;
    let ids: Vec<String> = input.items.iter().map(|i| i.id.clone()).collect();
    let cmd = Command::QueueSettleMany {
        queue: name.clone(),
        now_ms: now_ms(),
        items: input
            .items
            .into_iter()
            .map(|i| (i.id, i.lock_token))
            .collect(),
        action,
    };
    let results = match answer(st.client.write(&cmd).await?)? {
        QueueResponse::SettledMany { results } => results,
        QueueResponse::NotFound | QueueResponse::Deleting => return Err(not_found(&name)),
        other => return Err(ApiError::Internal(format!("unexpected answer {other:?}"))),
    };
    let verb = input.action.as_str();
    let items: Vec<Value> = ids
        .iter()
        .zip(&results)
        .map(|(id, r)| {
            let outcome = match r {
                QueueResponse::Settled { .. } => {
                    count("settle", verb, 1);
                    "settled"
                }
                QueueResponse::LockLost => {
                    count("settle", "lock_lost", 1);
                    "lock_lost"
                }
                _ => "not_found",
            };
            json!({"id": id, "outcome": outcome})
        })
        .collect();
    Ok(Json(json!({ "items": items })).into_response())
}

/// On the leader only: proposes a bounded sweep whenever a dedup entry or lease has expired.
pub async fn sweeper(client: Arc<Client>, queues: queue::SharedIndex) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if client.driver().status().role != Role::Leader {
            continue;
        }
        let now = now_ms();
        // A sweep is bounded; when it was full, sweep again (bounded rounds per tick).
        for _ in 0..SWEEP_ROUNDS_PER_TICK {
            if !queue::sweep_due(&queues, now) {
                break;
            }
            match client.write(&Command::QueueSweep { now_ms: now }).await {
                Ok(crate::state::Response::Queue(QueueResponse::Swept {
                    dedup_expired,
                    leases_expired,
                })) if dedup_expired + leases_expired > 0 => {}
                Ok(_) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "queue sweep not applied");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_from_bodies() {
        let j = DedupKey::JsonPointer {
            pointer: "/order/id".into(),
        };
        assert_eq!(
            key_from_body(&j, br#"{"order":{"id":"A1"}}"#).as_deref(),
            Some("A1")
        );
        assert_eq!(
            key_from_body(&j, br#"{"order":{"id":42}}"#).as_deref(),
            Some("42")
        );
        assert_eq!(key_from_body(&j, b"not json"), None);
        let x = DedupKey::XmlPath {
            path: "IDOC/EDI_DC40/DOCNUM".into(),
        };
        let idoc = br#"<?xml version="1.0"?><ORDERS05><IDOC BEGIN="1"><EDI_DC40 SEGMENT="1"><TABNAM>EDI_DC40</TABNAM><DOCNUM>0000000000123456</DOCNUM></EDI_DC40></IDOC></ORDERS05>"#;
        assert_eq!(key_from_body(&x, idoc).as_deref(), Some("0000000000123456"));
        let ns = br#"<n:IDOC xmlns:n="u"><n:EDI_DC40><n:DOCNUM>7 &amp; 8</n:DOCNUM></n:EDI_DC40></n:IDOC>"#;
        assert_eq!(key_from_body(&x, ns).as_deref(), Some("7 & 8"));
        assert_eq!(key_from_body(&x, b"<IDOC><DOCNUM>1</DOCNUM></IDOC>"), None);
    }
}
