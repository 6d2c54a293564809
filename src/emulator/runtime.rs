//! The runtime host: `/http/<path>` requests routed to deployed flows (HTTPS sender adapter,
//! cpi-api.md §6), with per-flow scripted behaviours, the per-tenant worker-slot cap, the
//! Idempotent Process Call emulation and the per-message-id counters that let tests prove
//! exactly-once processing across a pool of tenants.
//!
//! A flow run continues when the client disconnects (as on a real worker): the run is spawned and
//! the request only awaits it. Every run writes one MPL and answers with `SAP_MessageProcessingLogID`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{to_bytes, Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::auth;
use super::mpl::{Mpl, MplStatus};
use super::tenant::{Counters, Tenant, MAX_COUNTED_MESSAGE_IDS};
use super::DEFAULT_MESSAGE_ID_HEADER;

/// Default per-flow body limit (CPI: configurable, minimum 1 MB; we default to 40 MB, the
/// recommended payload ceiling of cpi-api.md §9), bytes.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 40 * 1024 * 1024;
/// Role a caller needs to invoke a flow unless the flow names another.
pub const DEFAULT_SENDER_ROLE: &str = "ESBMessaging.send";

/// What a flow does with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Behaviour {
    /// 200 with the request body.
    Echo,
    /// `status` (default 200) with the request body (empty for 204), as via `CamelHttpResponseCode`.
    Status,
    /// Wait `delay_ms`, then answer like `status`.
    Delay,
    /// Throw: 500 with CPI's text and the MPL id; MPL FAILED.
    Fail,
    /// 503 "service not available" without running the flow.
    Overload,
}

/// How a runtime flow behaves; the JSON body of `PUT /_emulator/flows/{name}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowSpec {
    /// Address below `/http`, e.g. `/orders` or `/orders/*` (a `/http` prefix is stripped).
    pub path: String,
    pub behaviour: Behaviour,
    #[serde(default)]
    pub status: Option<u16>,
    #[serde(default)]
    pub delay_ms: Option<u64>,
    /// Emulate an Idempotent Process Call keyed by `idempotency_header`.
    #[serde(default)]
    pub idempotent: bool,
    /// Header holding the message id (default `X-Message-ID`); also keys the counters.
    #[serde(default)]
    pub idempotency_header: Option<String>,
    /// Exception text for `fail`.
    #[serde(default)]
    pub message: Option<String>,
    /// Body size limit, bytes (default 40 MB).
    #[serde(default)]
    pub max_body_bytes: Option<u64>,
    /// Role required to call the flow (default `ESBMessaging.send`).
    #[serde(default)]
    pub role: Option<String>,
}

impl FlowSpec {
    pub fn echo(path: &str) -> Self {
        FlowSpec {
            path: path.to_string(),
            behaviour: Behaviour::Echo,
            status: None,
            delay_ms: None,
            idempotent: false,
            idempotency_header: None,
            message: None,
            max_body_bytes: None,
            role: None,
        }
    }

    /// Canonicalise and validate the path (CPI address rules, `/*` only at the end).
    pub fn normalise(&mut self) -> Result<(), String> {
        let mut p = self.path.trim().to_string();
        if !p.starts_with('/') {
            p.insert(0, '/');
        }
        if p.get(..5).is_some_and(|h| h.eq_ignore_ascii_case("/http"))
            && (p.len() == 5 || p.as_bytes()[5] == b'/')
        {
            p = p[5..].to_string();
        }
        if p.is_empty() || p == "/" {
            return Err("path must name an address below /http".into());
        }
        let body = p.strip_suffix("/*").unwrap_or(&p);
        if !body
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_/~-.$".contains(c))
        {
            return Err(format!("invalid characters in address {p}"));
        }
        if let Some(s) = self.status {
            if !(100..=599).contains(&s) {
                return Err(format!("invalid status {s}"));
            }
        }
        self.path = p;
        Ok(())
    }

    pub fn message_id_header(&self) -> &str {
        self.idempotency_header
            .as_deref()
            .unwrap_or(DEFAULT_MESSAGE_ID_HEADER)
    }

    fn matches(&self, path: &str) -> Option<usize> {
        let p = self.path.to_ascii_lowercase();
        let req = path.to_ascii_lowercase();
        let req = req.trim_end_matches('/');
        if let Some(prefix) = p.strip_suffix("/*") {
            if req == prefix || req.starts_with(&format!("{prefix}/")) {
                return Some(prefix.len());
            }
            None
        } else if req == p.trim_end_matches('/') {
            Some(usize::MAX)
        } else {
            None
        }
    }
}

/// Runtime status of a deployed flow (IntegrationRuntimeArtifacts.Status).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum RuntimeStatus {
    Starting,
    Started,
    Error,
    /// Undeploy in progress; the flow disappears (404) at `ready_at_ms`.
    Stopping,
}

/// A deployed flow.
#[derive(Debug, Clone, Serialize)]
pub struct RuntimeFlow {
    pub name: String,
    pub display_name: String,
    pub version: String,
    pub spec: FlowSpec,
    /// Has an HTTPS sender (content-deployed flows without `urlPath` have none).
    pub has_endpoint: bool,
    pub status: RuntimeStatus,
    /// When STARTING turns into the final status, tenant ms.
    pub ready_at_ms: i64,
    /// Final status once ready (STARTED or ERROR).
    pub final_status: RuntimeStatus,
    pub error: Option<String>,
    pub deployed_on_ms: i64,
    pub deployed_by: String,
    pub package_id: Option<String>,
    pub package_name: Option<String>,
}

impl RuntimeFlow {
    /// A flow registered directly (CLI or control API): STARTED at once.
    pub fn direct(name: &str, spec: FlowSpec, now_ms: i64) -> Self {
        RuntimeFlow {
            name: name.to_string(),
            display_name: name.to_string(),
            version: "1.0.0".into(),
            spec,
            has_endpoint: true,
            status: RuntimeStatus::Started,
            ready_at_ms: now_ms,
            final_status: RuntimeStatus::Started,
            error: None,
            deployed_on_ms: now_ms,
            deployed_by: "emulator".into(),
            package_id: None,
            package_name: None,
        }
    }

    /// Advance STARTING to the final status once its time has come (unless deploys are stuck).
    /// A STOPPING flow is gone once `ready_at_ms` passed ([`RuntimeFlow::is_gone`]).
    pub fn settle(&mut self, now_ms: i64, deploy_stuck: bool) {
        if self.status == RuntimeStatus::Starting && now_ms >= self.ready_at_ms && !deploy_stuck {
            self.status = self.final_status;
        }
    }
}

impl RuntimeFlow {
    pub fn is_gone(&self, now_ms: i64) -> bool {
        self.status == RuntimeStatus::Stopping && now_ms >= self.ready_at_ms
    }
}

/// Per-flow counters share the per-message shape.
pub type FlowCounters = Counters;

fn text(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain;charset=utf-8")],
        body,
    )
        .into_response()
}

/// CPI's exact failure text (including its misspelling "occured").
pub fn failure_text(exception: Option<&str>, mpl_id: &str) -> String {
    match exception {
        Some(e) if !e.is_empty() => format!(
            "An internal server error occured: {e}. The MPL ID for the failed message is : {mpl_id}\nFor more details please check tail log."
        ),
        _ => format!(
            "An internal server error occured: The MPL ID for the failed message is : {mpl_id}\nFor more details please check tail log."
        ),
    }
}

fn bump(t: &Tenant, flow: &str, msg_id: Option<&str>, f: impl Fn(&mut Counters)) {
    let mut st = t.lock();
    f(&mut st.totals);
    f(st.flow_counters.entry(flow.to_string()).or_default());
    if let Some(id) = msg_id {
        if st.counters.contains_key(id) || st.counters.len() < MAX_COUNTED_MESSAGE_IDS {
            f(st.counters.entry(id.to_string()).or_default());
        } else {
            st.counters_truncated = true;
        }
    }
}

/// Find the started flow serving `path` (longest match wins, exact beats wildcard).
fn route(t: &Tenant, path: &str) -> Option<RuntimeFlow> {
    let now = t.now_ms();
    let mut st = t.lock();
    let stuck = st.chaos.deploy_stuck;
    let mut best: Option<(usize, RuntimeFlow)> = None;
    for f in st.flows.values_mut() {
        f.settle(now, stuck);
        if f.status != RuntimeStatus::Started || !f.has_endpoint {
            continue;
        }
        if let Some(score) = f.spec.matches(path) {
            if best.as_ref().is_none_or(|(s, _)| score > *s) {
                best = Some((score, f.clone()));
            }
        }
    }
    best.map(|(_, f)| f)
}

/// `ANY /http/...`
pub async fn handle(State(t): State<Arc<Tenant>>, req: Request<Body>) -> Response {
    let chaos = t.chaos();
    if chaos.runtime_error_rate > 0.0
        && rand::Rng::gen_bool(
            &mut rand::thread_rng(),
            chaos.runtime_error_rate.clamp(0.0, 1.0),
        )
    {
        let s = StatusCode::from_u16(chaos.runtime_error_status)
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return text(s, "Injected fault (emulator chaos)".into());
    }
    let (parts, body) = req.into_parts();
    let caller = match auth::authenticate(&t, &parts.headers) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let path = parts
        .uri
        .path()
        .strip_prefix("/http")
        .unwrap_or("")
        .to_string();
    let Some(flow) = route(&t, &path) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let role = flow.spec.role.as_deref().unwrap_or(DEFAULT_SENDER_ROLE);
    if !caller.has(role) {
        return StatusCode::FORBIDDEN.into_response();
    }
    let msg_id = parts
        .headers
        .get(flow.spec.message_id_header())
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    bump(&t, &flow.name, msg_id.as_deref(), |c| c.received += 1);
    let limit = flow.spec.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
    let body = match to_bytes(body, usize::try_from(limit).unwrap_or(usize::MAX)).await {
        Ok(b) => b,
        Err(_) => {
            bump(&t, &flow.name, msg_id.as_deref(), |c| c.rejected += 1);
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "Message body exceeds configured size limit ({:.1} MB)",
                    limit as f64 / (1024.0 * 1024.0)
                ),
            );
        }
    };
    if flow.spec.behaviour == Behaviour::Overload {
        bump(&t, &flow.name, msg_id.as_deref(), |c| c.rejected += 1);
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service not available".into(),
        );
    }
    let Ok(permit) = t.slots.clone().try_acquire_owned() else {
        bump(&t, &flow.name, msg_id.as_deref(), |c| c.rejected += 1);
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service not available".into(),
        );
    };
    let headers = parts.headers;
    let t2 = t.clone();
    let run = tokio::spawn(async move {
        let r = execute(&t2, &flow, &headers, msg_id, body, &caller.id).await;
        drop(permit);
        r
    });
    match run.await {
        Ok(r) => r,
        Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "flow run aborted".into()),
    }
}

fn idem_lock(t: &Tenant, key: &str) -> Arc<tokio::sync::Mutex<()>> {
    let mut m = t.idem_locks.lock().unwrap_or_else(|p| p.into_inner());
    m.entry(key.to_string()).or_default().clone()
}

fn idem_unlock(t: &Tenant, key: &str, l: Arc<tokio::sync::Mutex<()>>) {
    let mut m = t.idem_locks.lock().unwrap_or_else(|p| p.into_inner());
    // Only this run and the map hold it: nobody waits, drop the entry.
    if Arc::strong_count(&l) <= 2 {
        m.remove(key);
    }
}

async fn execute(
    t: &Arc<Tenant>,
    flow: &RuntimeFlow,
    headers: &HeaderMap,
    msg_id: Option<String>,
    body: Bytes,
    user: &str,
) -> Response {
    let mpl = Mpl::start(t, flow, headers, user);
    let guid = mpl.guid.clone();
    t.lock().mpls.insert(mpl);
    let idem_key = match (&msg_id, flow.spec.idempotent) {
        (Some(id), true) => Some(format!("{}\u{0}{}", flow.name, id)),
        _ => None,
    };
    let key_lock = idem_key.as_ref().map(|k| idem_lock(t, k));
    let _guard = match &key_lock {
        Some(l) => Some(l.clone().lock_owned().await),
        None => None,
    };
    let retention_ms = (t.cfg.idempotency_retention_s as i64).saturating_mul(1000);
    let duplicate = match (&msg_id, flow.spec.idempotent) {
        (Some(id), true) => {
            let now = t.now_ms();
            let st = t.lock();
            st.idempotent_done
                .get(&flow.name)
                .and_then(|m| m.get(id))
                .is_some_and(|done| now - *done < retention_ms)
        }
        _ => false,
    };
    let content_type = headers.get(header::CONTENT_TYPE).cloned();
    let mut resp = if duplicate {
        bump(t, &flow.name, msg_id.as_deref(), |c| {
            c.duplicates_skipped += 1
        });
        let now = t.now_ms();
        t.lock().mpls.finish(&guid, MplStatus::Completed, None, now);
        let mut r = (StatusCode::OK, body).into_response();
        r.headers_mut()
            .insert("x-emulator-duplicate", HeaderValue::from_static("true"));
        if let Some(ct) = content_type.clone() {
            r.headers_mut().insert(header::CONTENT_TYPE, ct);
        }
        r
    } else {
        if matches!(flow.spec.behaviour, Behaviour::Delay) {
            tokio::time::sleep(Duration::from_millis(flow.spec.delay_ms.unwrap_or(0))).await;
        }
        match flow.spec.behaviour {
            Behaviour::Fail => {
                let now = t.now_ms();
                let msg = failure_text(flow.spec.message.as_deref(), &guid);
                bump(t, &flow.name, msg_id.as_deref(), |c| c.failed += 1);
                t.lock().mpls.finish(
                    &guid,
                    MplStatus::Failed,
                    Some(
                        flow.spec
                            .message
                            .clone()
                            .unwrap_or_else(|| "Emulated flow failure".into()),
                    ),
                    now,
                );
                text(StatusCode::INTERNAL_SERVER_ERROR, msg)
            }
            _ => {
                let now = t.now_ms();
                {
                    let mut st = t.lock();
                    if let (Some(id), true) = (&msg_id, flow.spec.idempotent) {
                        st.idempotent_done
                            .entry(flow.name.clone())
                            .or_default()
                            .insert(id.clone(), now);
                    }
                    st.mpls.finish(&guid, MplStatus::Completed, None, now);
                }
                bump(t, &flow.name, msg_id.as_deref(), |c| c.processed += 1);
                let status =
                    StatusCode::from_u16(flow.spec.status.unwrap_or(200)).unwrap_or(StatusCode::OK);
                if status == StatusCode::NO_CONTENT || body.is_empty() && status == StatusCode::OK {
                    // Camel 3 runtime: no body gives 204.
                    let s = if body.is_empty() {
                        StatusCode::NO_CONTENT
                    } else {
                        status
                    };
                    s.into_response()
                } else {
                    let mut r = (status, body).into_response();
                    if let Some(ct) = content_type.clone() {
                        r.headers_mut().insert(header::CONTENT_TYPE, ct);
                    }
                    r
                }
            }
        }
    };
    drop(_guard);
    if let (Some(k), Some(l)) = (idem_key, key_lock) {
        idem_unlock(t, &k, l);
    }
    if let Ok(v) = HeaderValue::from_str(&guid) {
        resp.headers_mut().insert("sap_messageprocessinglogid", v);
    }
    if let Some(id) = msg_id {
        if let (Ok(name), Ok(v)) = (
            header::HeaderName::from_bytes(flow.spec.message_id_header().as_bytes()),
            HeaderValue::from_str(&id),
        ) {
            resp.headers_mut().insert(name, v);
        }
    }
    resp
}

/// Snapshot of counters for the control API.
pub fn counters_snapshot(t: &Tenant) -> (Counters, HashMap<String, Counters>, bool) {
    let st = t.lock();
    (st.totals, st.counters.clone(), st.counters_truncated)
}
