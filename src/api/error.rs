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

#[derive(Debug, thiserror::Error)]
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
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
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
