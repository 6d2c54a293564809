//! The one mapping from errors to HTTP: `{"error": {"code", "message", "field"?}}`.
//!
//! Every handler on both listeners returns [`ApiError`]; nothing else writes an error body.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::client::ClientError;
use crate::store::StoreError;

/// Retry-After (seconds) on a 429 from a full queue.
pub const QUEUE_FULL_RETRY_AFTER_S: &str = "5";

#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error("missing or wrong bearer token")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("no route for {method} {path}")]
    NoRoute { method: String, path: String },
    #[error("{message}")]
    Invalid {
        field: Option<String>,
        message: String,
    },
    #[error("body is larger than the {limit_bytes}-byte limit")]
    TooLarge { limit_bytes: usize },
    #[error("{0}")]
    Conflict(String),
    /// A durable queue is at a cap; nothing was stored.
    #[error("{0}; nothing was stored, retry later")]
    QueueFull(String),
    /// The message's lock expired or is held under another token.
    #[error("{0}")]
    LockLost(String),
    #[error("no leader is reachable; the request was not applied, retry later")]
    NoLeader,
    #[error("not applied: {0}; safe to retry")]
    NotApplied(String),
    #[error("outcome unknown: {0}; the write may or may not have been applied")]
    OutcomeUnknown(String),
    #[error("the node is shutting down")]
    ShuttingDown,
    #[error("too many requests in flight on this listener (limit {limit}); retry shortly")]
    Overloaded { limit: usize },
    #[error("internal error: {0}")]
    Internal(String),
    /// A proxy route requires a client API key (header `X-API-Key`) and none valid came.
    #[error("{0}")]
    ApiKey(String),
    /// A proxy rate limit refused the request; the RateLimit headers say when to come back.
    #[error("rate limit of {scope} exceeded ({limit}/s); retry after {retry_after_s} s")]
    RateLimited {
        scope: String,
        limit: f64,
        remaining: u64,
        reset_s: u64,
        retry_after_s: u64,
    },
    /// Every tenant a route may use is at its concurrency limit and the wait queue is full
    /// (or the wait ran out).
    #[error("every tenant is at its concurrency limit; retry after {retry_after_s} s")]
    TenantsBusy { retry_after_s: u64 },
    /// No tenant can serve the route (none registered, or all unhealthy or draining).
    #[error("no tenant can serve the request: {0}")]
    NoTenant(String),
    /// Tenants were tried and none gave an answer.
    #[error("no tenant answered: {0}")]
    BadGateway(String),
    #[error("no tenant answered in time: {0}")]
    GatewayTimeout(String),
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError::Invalid {
            field: Some(field.into()),
            message: message.into(),
        }
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::NoRoute { .. } => (StatusCode::NOT_FOUND, "no_route"),
            ApiError::Invalid { .. } => (StatusCode::BAD_REQUEST, "invalid"),
            ApiError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::QueueFull(_) => (StatusCode::TOO_MANY_REQUESTS, "queue_full"),
            ApiError::LockLost(_) => (StatusCode::GONE, "lock_lost"),
            ApiError::NoLeader => (StatusCode::SERVICE_UNAVAILABLE, "no_leader"),
            ApiError::NotApplied(_) => (StatusCode::SERVICE_UNAVAILABLE, "not_applied"),
            ApiError::OutcomeUnknown(_) => (StatusCode::SERVICE_UNAVAILABLE, "outcome_unknown"),
            ApiError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            ApiError::Overloaded { .. } => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            ApiError::ApiKey(_) => (StatusCode::UNAUTHORIZED, "api_key_required"),
            ApiError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            ApiError::TenantsBusy { .. } => (StatusCode::SERVICE_UNAVAILABLE, "tenants_busy"),
            ApiError::NoTenant(_) => (StatusCode::SERVICE_UNAVAILABLE, "no_tenant"),
            ApiError::BadGateway(_) => (StatusCode::BAD_GATEWAY, "bad_gateway"),
            ApiError::GatewayTimeout(_) => (StatusCode::GATEWAY_TIMEOUT, "gateway_timeout"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let mut error = json!({ "code": code, "message": self.to_string() });
        if let ApiError::Invalid { field: Some(f), .. } = &self {
            error["field"] = json!(f);
        }
        let mut resp = (status, axum::Json(json!({ "error": error }))).into_response();
        if status == StatusCode::TOO_MANY_REQUESTS {
            resp.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(QUEUE_FULL_RETRY_AFTER_S),
            );
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if status == StatusCode::UNAUTHORIZED {
            let scheme = match &self {
                ApiError::ApiKey(_) => "APIKey header=\"X-API-Key\"",
                _ => "Bearer",
            };
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(scheme));
        }
        let h = resp.headers_mut();
        let mut set = |name: &'static str, v: String| {
            if let Ok(v) = HeaderValue::from_str(&v) {
                h.insert(name, v);
            }
        };
        match &self {
            ApiError::RateLimited {
                limit,
                remaining,
                reset_s,
                retry_after_s,
                ..
            } => {
                set("retry-after", retry_after_s.to_string());
                set("ratelimit-limit", limit.to_string());
                set("ratelimit-remaining", remaining.to_string());
                set("ratelimit-reset", reset_s.to_string());
            }
            ApiError::TenantsBusy { retry_after_s } => {
                set("retry-after", retry_after_s.to_string());
            }
            _ => {}
        }
        resp
    }
}

impl From<ClientError> for ApiError {
    fn from(e: ClientError) -> ApiError {
        match e {
            ClientError::NoLeader => ApiError::NoLeader,
            ClientError::NotApplied(m) => ApiError::NotApplied(m),
            ClientError::Unknown(m) => ApiError::OutcomeUnknown(m),
            ClientError::TooLarge(n) => ApiError::TooLarge { limit_bytes: n },
            ClientError::Stopped => ApiError::ShuttingDown,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        ApiError::Internal(e.to_string())
    }
}
