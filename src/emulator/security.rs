//! Security Content (cpi-api.md §3): placeholder, filled in by a later commit.

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::Response;

use super::api::ApiRequest;
use super::odata;
use super::tenant::Tenant;

#[derive(Debug, Default)]
pub struct SecurityStore {}

pub fn handle(_t: &Arc<Tenant>, _r: &ApiRequest) -> Response {
    odata::error(StatusCode::NOT_IMPLEMENTED, "not yet emulated")
}

/// Control view of a deployed secret (filled in with Security Content).
pub fn control_view(_t: &Tenant, _kind: &str, _name: &str) -> Option<serde_json::Value> {
    None
}
