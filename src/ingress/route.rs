//! What a proxy route and a client API key are: their JSON forms, defaults and validation.
//!
//! Both are replicated configuration documents stored with `Command::ConfigPut` under
//! reserved key prefixes ([`ROUTE_PREFIX`], [`API_KEY_PREFIX`]) rather than new commands:
//! they are opaque JSON to the state machine, need no apply-time logic beyond "store this
//! revision", and so reuse the existing deterministic, tested command. The admin handlers
//! (`src/api/routes.rs`) are the only writers that validate them; readers still tolerate a
//! document they cannot parse (written through the generic config API) by skipping it.

use serde::{Deserialize, Serialize};

use crate::api::ApiError;
use crate::pool::Policy;

/// Config key prefix of route documents: `route/<name>`.
pub const ROUTE_PREFIX: &str = "route/";
/// Config key prefix of API keys: `apikey/<name>`.
pub const API_KEY_PREFIX: &str = "apikey/";
/// Longest route path prefix, bytes.
pub const MAX_PREFIX_BYTES: usize = 256;
/// Timeout bounds, ms.
pub const MAX_TIMEOUT_MS: u64 = 600_000;
/// Most tries of one request (the first plus retries).
pub const MAX_ATTEMPTS: u32 = 10;
/// Highest configurable rate, requests per second (cluster-wide).
pub const MAX_RATE_PER_S: f64 = 1_000_000.0;
/// Longest a request may wait for a free tenant slot.
pub const MAX_QUEUE_WAIT_MS: u64 = 60_000;
/// Shortest API key accepted from an operator, bytes (generated keys are 35).
pub const MIN_API_KEY_BYTES: usize = 24;
pub const MAX_API_KEY_BYTES: usize = 256;
/// Paths the ingress listener serves itself; no route may shadow them.
const RESERVED_PREFIXES: &[&str] = &["/queues/", "/healthz"];

/// Sync proxies to a tenant; async enqueues into a durable queue and answers 202.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Sync,
    Async,
}

/// Whose credentials reach the tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// corral authenticates with the chosen tenant's own runtime credentials; the caller's
    /// `Authorization` is dropped (callers need one credential for the whole pool: an API key).
    #[default]
    Tenant,
    /// The caller's `Authorization` goes to the tenant unchanged.
    Passthrough,
}

/// A token bucket: `per_second` sustained, `burst` at once (cluster-wide figures).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    pub per_second: f64,
    #[serde(default)]
    pub burst: Option<u32>,
}

impl Rate {
    /// The bucket size: `burst`, or one second's worth.
    pub fn burst(&self) -> f64 {
        self.burst
            .map(f64::from)
            .unwrap_or(self.per_second)
            .max(1.0)
    }
}

/// Who a per-client limit counts: `api_key`, `ip`, or `header:<Name>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientRate {
    pub per_second: f64,
    #[serde(default)]
    pub burst: Option<u32>,
    #[serde(default = "default_client_by")]
    pub by: String,
}

fn default_client_by() -> String {
    "ip".into()
}

impl ClientRate {
    pub fn rate(&self) -> Rate {
        Rate {
            per_second: self.per_second,
            burst: self.burst,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetrySpec {
    /// Tries per request, the first included.
    pub attempts: u32,
    /// Retries may add at most this share of the route's requests (a budget, so a failing
    /// pool is not hit by a retry storm). Connection failures (nothing sent) are exempt.
    pub budget_percent: u32,
}

impl Default for RetrySpec {
    fn default() -> Self {
        RetrySpec {
            attempts: 3,
            budget_percent: 20,
        }
    }
}

/// One route of the ingress listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouteSpec {
    /// Requests whose path starts with this go through the route (longest prefix wins).
    pub prefix: String,
    /// Replaces `prefix` in the path sent to the tenant; `None` sends the path unchanged.
    pub target_prefix: Option<String>,
    /// Only these tenants serve the route; empty means every tenant of the pool.
    pub tenants: Vec<String>,
    pub policy: Policy,
    /// One try, until the tenant's response headers arrive.
    pub try_timeout_ms: u64,
    /// The whole request, all tries and waits included.
    pub total_timeout_ms: u64,
    pub retry: RetrySpec,
    /// Cluster-wide limit of the route.
    pub rate_limit: Option<Rate>,
    /// Per-client limit inside the route.
    pub client_rate_limit: Option<ClientRate>,
    /// Requests need a valid `X-API-Key`.
    pub require_api_key: bool,
    pub auth: AuthMode,
    pub mode: Mode,
    /// Target queue of an async route.
    pub queue: Option<String>,
    /// How long a request waits for a tenant slot when all are at their concurrency limit.
    pub queue_wait_ms: u64,
}

impl Default for RouteSpec {
    fn default() -> Self {
        RouteSpec {
            prefix: "/http/".into(),
            target_prefix: None,
            tenants: Vec::new(),
            policy: Policy::Performance,
            try_timeout_ms: 30_000,
            total_timeout_ms: 60_000,
            retry: RetrySpec::default(),
            rate_limit: None,
            client_rate_limit: None,
            require_api_key: false,
            auth: AuthMode::Tenant,
            mode: Mode::Sync,
            queue: None,
            queue_wait_ms: 1_000,
        }
    }
}

fn check_prefix(field: &str, p: &str) -> Result<(), ApiError> {
    if !p.starts_with('/') || p.len() > MAX_PREFIX_BYTES {
        return Err(ApiError::invalid(
            field,
            format!("must start with / and be at most {MAX_PREFIX_BYTES} bytes"),
        ));
    }
    if p.split('/').any(|s| s == ".." || s == ".") || p.contains("//") {
        return Err(ApiError::invalid(field, "must not hold `.`, `..` or `//`"));
    }
    if !p.chars().all(|c| c.is_ascii_graphic()) || p.contains(['?', '#', '%']) {
        return Err(ApiError::invalid(
            field,
            "may hold only visible ASCII without ? # %",
        ));
    }
    Ok(())
}

fn check_rate(field: &str, per_second: f64, burst: Option<u32>) -> Result<(), ApiError> {
    if !(per_second > 0.0 && per_second <= MAX_RATE_PER_S) {
        return Err(ApiError::invalid(
            format!("{field}.per_second"),
            format!("must be above 0 and at most {MAX_RATE_PER_S}"),
        ));
    }
    if burst == Some(0) {
        return Err(ApiError::invalid(
            format!("{field}.burst"),
            "must be at least 1",
        ));
    }
    Ok(())
}

fn check_ms(field: &str, v: u64, max: u64) -> Result<(), ApiError> {
    if v == 0 || v > max {
        return Err(ApiError::invalid(field, format!("must be 1 to {max}")));
    }
    Ok(())
}

/// Parses and validates a route document; every error names its field.
pub fn parse_route(body: &[u8]) -> Result<RouteSpec, ApiError> {
    let r: RouteSpec = crate::api::parse_json(body)?;
    check_prefix("prefix", &r.prefix)?;
    if RESERVED_PREFIXES
        .iter()
        .any(|x| r.prefix.starts_with(x) || x.starts_with(r.prefix.as_str()))
    {
        return Err(ApiError::invalid(
            "prefix",
            format!("must not overlap the listener's own paths {RESERVED_PREFIXES:?}"),
        ));
    }
    if let Some(t) = &r.target_prefix {
        check_prefix("target_prefix", t)?;
    }
    for (i, t) in r.tenants.iter().enumerate() {
        if !crate::state::is_resource_name(t) {
            return Err(ApiError::invalid(
                format!("tenants[{i}]"),
                "is not a tenant name",
            ));
        }
    }
    check_ms("try_timeout_ms", r.try_timeout_ms, MAX_TIMEOUT_MS)?;
    check_ms("total_timeout_ms", r.total_timeout_ms, MAX_TIMEOUT_MS)?;
    if r.total_timeout_ms < r.try_timeout_ms {
        return Err(ApiError::invalid(
            "total_timeout_ms",
            "must be at least try_timeout_ms",
        ));
    }
    check_ms("queue_wait_ms", r.queue_wait_ms, MAX_QUEUE_WAIT_MS)?;
    if r.retry.attempts == 0 || r.retry.attempts > MAX_ATTEMPTS {
        return Err(ApiError::invalid(
            "retry.attempts",
            format!("must be 1 to {MAX_ATTEMPTS}"),
        ));
    }
    if r.retry.budget_percent > 100 {
        return Err(ApiError::invalid(
            "retry.budget_percent",
            "must be 0 to 100",
        ));
    }
    if let Some(l) = &r.rate_limit {
        check_rate("rate_limit", l.per_second, l.burst)?;
    }
    if let Some(l) = &r.client_rate_limit {
        check_rate("client_rate_limit", l.per_second, l.burst)?;
        let by_ok = l.by == "ip"
            || l.by == "api_key"
            || l.by.strip_prefix("header:").is_some_and(|h| {
                !h.is_empty() && axum::http::HeaderName::from_bytes(h.as_bytes()).is_ok()
            });
        if !by_ok {
            return Err(ApiError::invalid(
                "client_rate_limit.by",
                "must be ip, api_key or header:<Name>",
            ));
        }
    }
    match (r.mode, &r.queue) {
        (Mode::Async, None) => {
            return Err(ApiError::invalid("queue", "an async route needs a queue"))
        }
        (Mode::Async, Some(q)) if !crate::state::is_resource_name(q) => {
            return Err(ApiError::invalid("queue", "is not a queue name"))
        }
        (Mode::Sync, Some(_)) => {
            return Err(ApiError::invalid("queue", "only async routes take a queue"))
        }
        _ => {}
    }
    Ok(r)
}

/// Reads route `name` from the applied configuration; `None` when it is missing or its
/// document does not parse (the proxy skips such a route too).
pub fn read_route(
    store: &dyn crate::store::Store,
    name: &str,
) -> Result<Option<RouteSpec>, crate::store::StoreError> {
    Ok(
        crate::state::read_config(store, &format!("{ROUTE_PREFIX}{name}"))?
            .and_then(|e| serde_json::from_slice(&e.value).ok()),
    )
}

/// What an operator sends to create or replace an API key.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyInput {
    /// The key itself; generated (and answered once) when absent.
    pub key: Option<String>,
    pub rate_limit: Option<Rate>,
    /// Routes the key is valid for; empty: every route.
    #[serde(default)]
    pub routes: Vec<String>,
}

/// The stored form: the key sealed (AEAD, AAD = its name), limits in clear.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKeyDoc {
    /// Base64 of the sealed key.
    pub sealed_key: String,
    /// The first characters of the key, to tell keys apart in listings.
    pub key_hint: String,
    pub rate_limit: Option<Rate>,
    #[serde(default)]
    pub routes: Vec<String>,
}

pub fn parse_api_key(body: &[u8]) -> Result<ApiKeyInput, ApiError> {
    let k: ApiKeyInput = if body.is_empty() {
        ApiKeyInput::default()
    } else {
        crate::api::parse_json(body)?
    };
    if let Some(key) = &k.key {
        if key.len() < MIN_API_KEY_BYTES
            || key.len() > MAX_API_KEY_BYTES
            || !key.chars().all(|c| c.is_ascii_graphic())
        {
            return Err(ApiError::invalid(
                "key",
                format!(
                    "must be {MIN_API_KEY_BYTES} to {MAX_API_KEY_BYTES} visible ASCII characters"
                ),
            ));
        }
    }
    if let Some(l) = &k.rate_limit {
        check_rate("rate_limit", l.per_second, l.burst)?;
    }
    for (i, r) in k.routes.iter().enumerate() {
        if !crate::state::is_resource_name(r) {
            return Err(ApiError::invalid(
                format!("routes[{i}]"),
                "is not a route name",
            ));
        }
    }
    Ok(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(body: &str) -> Option<String> {
        match parse_route(body.as_bytes()) {
            Err(ApiError::Invalid { field, .. }) => field,
            other => panic!("expected invalid, got {other:?}"),
        }
    }

    /// Defaults fill an empty document; each bad value is rejected naming its field.
    #[test]
    fn route_validation_names_fields() {
        let r = parse_route(b"{}").unwrap();
        assert_eq!(r.prefix, "/http/");
        assert_eq!(r.retry.attempts, 3);
        assert_eq!(r.retry.budget_percent, 20);
        for (body, want) in [
            (r#"{"prefix":"http"}"#, "prefix"),
            (r#"{"prefix":"/queues/x"}"#, "prefix"),
            (r#"{"prefix":"/a/../b"}"#, "prefix"),
            (r#"{"try_timeout_ms":0}"#, "try_timeout_ms"),
            (
                r#"{"try_timeout_ms":5000,"total_timeout_ms":100}"#,
                "total_timeout_ms",
            ),
            (r#"{"retry":{"attempts":0}}"#, "retry.attempts"),
            (
                r#"{"rate_limit":{"per_second":0}}"#,
                "rate_limit.per_second",
            ),
            (
                r#"{"client_rate_limit":{"per_second":1,"by":"x"}}"#,
                "client_rate_limit.by",
            ),
            (r#"{"mode":"async"}"#, "queue"),
            (r#"{"queue":"q"}"#, "queue"),
            (r#"{"tenants":["a b"]}"#, "tenants[0]"),
            (r#"{"policy":"fastest"}"#, "policy"),
            (r#"{"nope":1}"#, "nope"),
        ] {
            let f = field(body);
            assert!(
                f.as_deref().is_some_and(|f| f.starts_with(want)),
                "{body}: {f:?}"
            );
        }
        let ok = parse_route(
            br#"{"prefix":"/http/orders","policy":"round_robin","mode":"async","queue":"q1",
                 "client_rate_limit":{"per_second":5,"by":"header:X-Client"}}"#,
        )
        .unwrap();
        assert_eq!(ok.policy, Policy::RoundRobin);
        assert!(parse_api_key(br#"{"key":"short"}"#).is_err());
        assert!(parse_api_key(b"").unwrap().key.is_none());
    }
}
