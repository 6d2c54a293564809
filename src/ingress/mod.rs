//! The data-plane (ingress) listener, separate from the admin listener so that callers of
//! integration flows never share a port, a body limit or a thread pool queue with operators.
//!
//! It answers `/healthz`, the durable queue's routes (see [`queue`]) and, for anything else,
//! for anything else, the sync proxy (see [`proxy`]): a path no replicated route claims gets
//! the common JSON `no_route` error.

pub mod coalesce;
pub mod proxy;
pub mod queue;
pub mod route;
pub mod throttle;
pub mod tls;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

pub use queue::IngressState;

/// Every (method, path) the ingress listener serves, in OpenAPI path syntax.
pub const INGRESS_ROUTES: &[(&str, &str)] = &[
    ("get", "/healthz"),
    ("post", "/queues/{queue}/messages"),
    ("post", "/queues/{queue}/messages:batch"),
    ("post", "/queues/{queue}/messages/head"),
    ("post", "/queues/{queue}/messages:settle"),
    ("post", "/queues/{queue}/messages/{id}:complete"),
    ("post", "/queues/{queue}/messages/{id}:abandon"),
    ("post", "/queues/{queue}/messages/{id}:dead-letter"),
    ("post", "/queues/{queue}/messages/{id}:renew-lock"),
];

pub fn router(state: Arc<IngressState>, proxy: Arc<proxy::Proxy>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route(
            "/queues/{queue}/messages",
            post(queue::enqueue).layer(DefaultBodyLimit::max(
                crate::state::queue::MAX_MESSAGE_BYTES,
            )),
        )
        .route(
            "/queues/{queue}/messages:batch",
            post(queue::enqueue_batch).layer(DefaultBodyLimit::max(queue::MAX_BATCH_REQUEST_BYTES)),
        )
        .route("/queues/{queue}/messages/head", post(queue::receive))
        .route("/queues/{queue}/messages:settle", post(queue::settle_batch))
        // `{id}:{verb}` is one path segment; the handler splits it.
        .route("/queues/{queue}/messages/{id_action}", post(queue::settle))
        .fallback(move |req: axum::extract::Request| proxy.clone().handle(req))
        .layer(DefaultBodyLimit::max(crate::api::MAX_ADMIN_BODY_BYTES))
        .with_state(state)
}
