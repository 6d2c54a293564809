//! Integration Content (cpi-api.md §4): placeholder, filled in by a later commit.

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::Response;

use super::api::ApiRequest;
use super::odata;
use super::tenant::Tenant;

#[derive(Debug, Default)]
pub struct ContentStore {}

pub fn handle(_t: &Arc<Tenant>, _r: &ApiRequest) -> Response {
    odata::error(StatusCode::NOT_IMPLEMENTED, "not yet emulated")
}
