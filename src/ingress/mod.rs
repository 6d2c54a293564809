//! The data-plane (ingress) listener, separate from the admin listener so that callers of
//! integration flows never share a port, a body limit or a thread pool queue with operators.
//!
//! It answers `/healthz` and, for anything it does not serve yet, the common JSON error.
//! The durable queue and the sync proxy mount their routes here.

use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

/// Every (method, path) the ingress listener serves, in OpenAPI path syntax.
pub const INGRESS_ROUTES: &[(&str, &str)] = &[("get", "/healthz")];

pub fn router() -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .fallback(crate::api::no_route)
}
