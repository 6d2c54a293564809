//! The tenant's HTTP surface: routes the token endpoint, `/api/v1` and `/http/...`, and runs the
//! cross-cutting steps of every management-API call in CPI's order: chaos (slow, injected errors),
//! authentication (401), CSRF fetch/check (403 `X-CSRF-Token: Required`), bounded body read, OData
//! path/query parsing, then the resource handler (security content, integration content, MPLs).

// Helpers short-circuit with a ready HTTP response; it is built and moved once per request,
// so its size does not matter here.
#![allow(clippy::result_large_err)]

use std::sync::Arc;
use std::time::Duration;

use axum::body::{to_bytes, Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use rand::Rng;
use serde_json::json;

use super::auth::{self, Caller};
use super::odata::{self, QueryOptions, Segment};
use super::tenant::Tenant;
use super::{content, csrf, mpl, runtime, security};

/// Largest accepted management-API request body (artifact zips travel base64 in JSON), bytes.
pub const MAX_API_BODY_BYTES: usize = 64 * 1024 * 1024;

/// Everything a resource handler needs about one API request.
pub struct ApiRequest {
    pub method: Method,
    pub segs: Vec<Segment>,
    pub q: QueryOptions,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub caller: Caller,
}

impl ApiRequest {
    /// 403 unless the caller holds `role`.
    pub fn require(&self, role: &str) -> Result<(), Response> {
        if self.caller.has(role) {
            Ok(())
        } else {
            Err(odata::error(
                StatusCode::FORBIDDEN,
                &format!("Missing role {role}"),
            ))
        }
    }

    /// Parse the body as a JSON object (400 otherwise).
    pub fn json_body(&self) -> Result<serde_json::Map<String, serde_json::Value>, Response> {
        match serde_json::from_slice::<serde_json::Value>(&self.body) {
            Ok(serde_json::Value::Object(m)) => Ok(m),
            _ => Err(odata::error(
                StatusCode::BAD_REQUEST,
                "The request body is not a valid JSON object.",
            )),
        }
    }
}

pub(crate) fn tenant_router(t: Arc<Tenant>) -> Router {
    Router::new()
        .route("/oauth/token", any(auth::token_endpoint))
        .route("/api/v1", any(dispatch))
        .route("/api/v1/", any(dispatch))
        .route("/api/v1/{*rest}", any(dispatch))
        .route("/http", any(runtime::handle))
        .route("/http/", any(runtime::handle))
        .route("/http/{*rest}", any(runtime::handle))
        .fallback(|| async { StatusCode::NOT_FOUND })
        .layer(axum::middleware::from_fn_with_state(t.clone(), slow_layer))
        .with_state(t)
}

/// Chaos "slow": delay every request on the tenant listener.
async fn slow_layer(
    State(t): State<Arc<Tenant>>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let slow_ms = t.lock().chaos.slow_ms;
    if slow_ms > 0 {
        tokio::time::sleep(Duration::from_millis(slow_ms)).await;
    }
    next.run(req).await
}

fn injected(rate: f64, status: u16) -> Option<Response> {
    if rate > 0.0 && rand::thread_rng().gen_bool(rate.clamp(0.0, 1.0)) {
        let s = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return Some(odata::error(s, "Injected fault (emulator chaos)"));
    }
    None
}

async fn dispatch(State(t): State<Arc<Tenant>>, req: Request<Body>) -> Response {
    let chaos = t.chaos();
    if let Some(r) = injected(chaos.api_error_rate, chaos.api_error_status) {
        return r;
    }
    let (parts, body) = req.into_parts();
    let caller = match auth::authenticate(&t, &parts.headers) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let method = parts.method.clone();
    let is_read = method == Method::GET || method == Method::HEAD;
    let issued =
        (is_read && csrf::is_fetch(&parts.headers)).then(|| csrf::fetch(&t, &parts.headers));
    if !is_read && method != Method::OPTIONS {
        if let Err(r) = csrf::check(&t, &caller, &parts.headers) {
            return r;
        }
    }
    let body = match to_bytes(body, MAX_API_BODY_BYTES).await {
        Ok(b) => b,
        Err(_) => return odata::error(StatusCode::PAYLOAD_TOO_LARGE, "Request body too large."),
    };
    let rest = parts.uri.path().strip_prefix("/api/v1").unwrap_or("");
    let segs = match odata::parse_path(rest) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let q = match QueryOptions::parse(parts.uri.query()) {
        Ok(q) => q,
        Err(e) => return e.into_response(),
    };
    let req = ApiRequest {
        method: method.clone(),
        segs,
        q,
        headers: parts.headers,
        body,
        caller,
    };
    let mut resp = route(&t, &req);
    if let Some(i) = issued {
        i.apply(&mut resp);
    }
    if method == Method::HEAD {
        let (p, _) = resp.into_parts();
        resp = Response::from_parts(p, Body::empty());
    }
    resp
}

fn route(t: &Arc<Tenant>, r: &ApiRequest) -> Response {
    let Some(first) = r.segs.first() else {
        if r.method == Method::GET || r.method == Method::HEAD {
            return odata::json_response(
                StatusCode::OK,
                &json!({"d": {"EntitySets": [
                    "UserCredentials", "SecureParameters", "OAuth2ClientCredentials",
                    "IntegrationPackages", "IntegrationDesigntimeArtifacts", "IntegrationRuntimeArtifacts",
                    "BuildAndDeployStatus", "ServiceEndpoints", "MessageProcessingLogs"]}}),
            );
        }
        return odata::error(
            StatusCode::METHOD_NOT_ALLOWED,
            "Method not allowed on the service root.",
        );
    };
    match first.name.as_str() {
        "UserCredentials" | "SecureParameters" | "OAuth2ClientCredentials" => {
            security::handle(t, r)
        }
        "IntegrationPackages"
        | "IntegrationDesigntimeArtifacts"
        | "DeployIntegrationDesigntimeArtifact"
        | "IntegrationDesigntimeArtifactSaveAsVersion"
        | "BuildAndDeployStatus"
        | "IntegrationRuntimeArtifacts"
        | "ServiceEndpoints" => content::handle(t, r),
        "MessageProcessingLogs" => mpl::handle(t, r),
        other => odata::error(
            StatusCode::NOT_FOUND,
            &format!("Resource not found for the segment '{other}'."),
        ),
    }
}
