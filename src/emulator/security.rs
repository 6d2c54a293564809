//! Security Content (cpi-api.md §3): `UserCredentials`, `SecureParameters` and
//! `OAuth2ClientCredentials` with CPI's status codes (POST 202 / 409 duplicate; PUT 202 / 409
//! missing / 400 key mismatch; DELETE 202 / 404), CPI's validation, secrets never echoed, and an
//! asynchronous "deployment": an artifact shows `DEPLOYING` until `deploy_delay_ms` after the 202,
//! then `DEPLOYED`. The control API reads the *deployed* plaintext back ([`control_view`]) so tests
//! can prove a push arrived.

// Helpers short-circuit with a ready HTTP response; it is built and moved once per request,
// so its size does not matter here.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

use super::api::ApiRequest;
use super::odata::{self, Key};
use super::tenant::Tenant;

/// Role needed to read security content.
pub const READ_ROLE: &str = "MonitoringDataRead";
/// Role needed to write (deploy) security content ([INF]: CPI's "deploy security material").
pub const WRITE_ROLE: &str = "MonitoringArtifactsDeploy";
/// Longest artifact name accepted, characters.
pub const MAX_NAME_CHARS: usize = 150;

/// The three supported entity sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    UserCredentials,
    SecureParameters,
    OAuth2ClientCredentials,
}

impl Kind {
    pub fn from_set(s: &str) -> Option<Kind> {
        match s.to_ascii_lowercase().as_str() {
            "usercredentials" | "usercredential" | "user" => Some(Kind::UserCredentials),
            "secureparameters" | "secureparameter" | "secure" => Some(Kind::SecureParameters),
            "oauth2clientcredentials" | "oauth2clientcredential" | "oauth2" => {
                Some(Kind::OAuth2ClientCredentials)
            }
            _ => None,
        }
    }
    pub fn set(self) -> &'static str {
        match self {
            Kind::UserCredentials => "UserCredentials",
            Kind::SecureParameters => "SecureParameters",
            Kind::OAuth2ClientCredentials => "OAuth2ClientCredentials",
        }
    }
    fn entity_type(self) -> &'static str {
        match self {
            Kind::UserCredentials => "com.sap.hci.api.UserCredential",
            Kind::SecureParameters => "com.sap.hci.api.SecureParameter",
            Kind::OAuth2ClientCredentials => "com.sap.hci.api.OAuth2ClientCredential",
        }
    }
    /// Writable properties (besides `Name`), and which of them is the secret.
    fn fields(self) -> (&'static [&'static str], &'static str) {
        match self {
            Kind::UserCredentials => (
                &["Kind", "Description", "User", "Password", "CompanyId"],
                "Password",
            ),
            Kind::SecureParameters => (&["Description", "SecureParam"], "SecureParam"),
            Kind::OAuth2ClientCredentials => (
                &[
                    "Description",
                    "TokenServiceUrl",
                    "ClientId",
                    "ClientSecret",
                    "ClientAuthentication",
                    "Scope",
                    "ScopeContentType",
                    "Resource",
                    "Audience",
                    "CustomParameters",
                ],
                "ClientSecret",
            ),
        }
    }
}

/// One security artifact: its current (pushed) values and the values last deployed.
#[derive(Debug, Clone)]
pub struct Artifact {
    pub name: String,
    pub values: Map<String, Value>,
    /// When the pending values become deployed, tenant ms; `None` when nothing is pending.
    pub deploy_at_ms: Option<i64>,
    pub deployed: Option<Map<String, Value>>,
    pub deployed_on_ms: i64,
    pub deployed_by: String,
}

#[derive(Debug, Default)]
pub struct SecurityStore {
    pub artifacts: BTreeMap<(Kind, String), Artifact>,
}

impl SecurityStore {
    /// Promote pending values whose deploy time has come (unless deployments are stuck).
    pub fn settle(&mut self, now_ms: i64, stuck: bool) {
        if stuck {
            return;
        }
        for a in self.artifacts.values_mut() {
            if let Some(at) = a.deploy_at_ms {
                if now_ms >= at {
                    a.deployed = Some(a.values.clone());
                    a.deployed_on_ms = at;
                    a.deploy_at_ms = None;
                }
            }
        }
    }
}

fn status_of(a: &Artifact) -> &'static str {
    if a.deploy_at_ms.is_some() {
        "DEPLOYING"
    } else {
        "DEPLOYED"
    }
}

fn to_json(kind: Kind, a: &Artifact, api_url: &str) -> Value {
    let uri = format!("{api_url}/{}({})", kind.set(), odata::quote(&a.name));
    let (fields, secret) = kind.fields();
    let mut m = Map::new();
    m.insert(
        "__metadata".into(),
        odata::metadata(&uri, kind.entity_type()),
    );
    m.insert("Name".into(), Value::String(a.name.clone()));
    for f in fields {
        if *f == "CustomParameters" {
            continue;
        }
        let v = if *f == secret {
            Value::Null
        } else {
            a.values.get(*f).cloned().unwrap_or(Value::Null)
        };
        m.insert((*f).into(), v);
    }
    let status = status_of(a);
    let deployed_on = odata::date(a.deployed_on_ms);
    match kind {
        Kind::SecureParameters => {
            m.insert("DeployedBy".into(), Value::String(a.deployed_by.clone()));
            m.insert("DeployedOn".into(), Value::String(deployed_on));
            m.insert("Status".into(), Value::String(status.into()));
        }
        _ => {
            m.insert(
                "SecurityArtifactDescriptor".into(),
                json!({"Type": "BUNDLE", "DeployedBy": a.deployed_by, "DeployedOn": deployed_on, "Status": status}),
            );
        }
    }
    if kind == Kind::OAuth2ClientCredentials {
        m.insert(
            "CustomParameters".into(),
            odata::deferred(&format!("{uri}/CustomParameters")),
        );
    }
    Value::Object(m)
}

fn err(status: StatusCode, msg: &str) -> Response {
    odata::error(status, msg)
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.chars().count() <= MAX_NAME_CHARS
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
}

fn str_field<'a>(m: &'a Map<String, Value>, k: &str) -> Option<&'a str> {
    m.get(k).and_then(Value::as_str)
}

/// Check the payload's property names and types (OData rejects unknown properties with 400).
fn check_payload(kind: Kind, body: &Map<String, Value>) -> Result<(), Response> {
    let (fields, _) = kind.fields();
    for (k, v) in body {
        if k == "Name" || k == "__metadata" || k == "SecurityArtifactDescriptor" {
            continue;
        }
        if !fields.contains(&k.as_str()) {
            return Err(err(
                StatusCode::BAD_REQUEST,
                &format!(
                    "The property '{k}' does not exist in type '{}'.",
                    kind.entity_type()
                ),
            ));
        }
        let ok = if k == "CustomParameters" {
            v.is_array() || v.is_null()
        } else {
            v.is_string() || v.is_null()
        };
        if !ok {
            return Err(err(
                StatusCode::BAD_REQUEST,
                &format!("Invalid value for property '{k}'."),
            ));
        }
    }
    if let Some(n) = body.get("Name") {
        if !n.is_string() {
            return Err(err(
                StatusCode::BAD_REQUEST,
                "Invalid value for property 'Name'.",
            ));
        }
    }
    Ok(())
}

/// Semantic validation of the merged values (create: `creating`).
fn validate(kind: Kind, v: &Map<String, Value>, creating: bool) -> Result<(), Response> {
    match kind {
        Kind::UserCredentials => {
            let k = str_field(v, "Kind");
            if creating && k.is_none() {
                return Err(err(StatusCode::BAD_REQUEST, "Property 'Kind' is required."));
            }
            if let Some(k) = k {
                if !["default", "successfactors", "openconnectors"].contains(&k) {
                    return Err(err(StatusCode::INTERNAL_SERVER_ERROR, &format!("Invalid kind '{k}'. Supported values: default, successfactors, openconnectors.")));
                }
                if k == "successfactors" && str_field(v, "CompanyId").is_none_or(str::is_empty) {
                    return Err(err(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "Company ID is mandatory for user credentials of kind successfactors.",
                    ));
                }
            }
        }
        Kind::SecureParameters => {
            if str_field(v, "SecureParam").is_none_or(str::is_empty) {
                return Err(err(
                    StatusCode::BAD_REQUEST,
                    "Property 'SecureParam' is required.",
                ));
            }
        }
        Kind::OAuth2ClientCredentials => {
            for req in ["TokenServiceUrl", "ClientId", "ClientSecret"] {
                if creating && str_field(v, req).is_none_or(str::is_empty) {
                    return Err(err(
                        StatusCode::BAD_REQUEST,
                        &format!("Property '{req}' is required."),
                    ));
                }
            }
            if let Some(a) = str_field(v, "ClientAuthentication") {
                if a != "body" && a != "header" {
                    return Err(err(
                        StatusCode::BAD_REQUEST,
                        "ClientAuthentication must be 'body' or 'header'.",
                    ));
                }
            }
            if let Some(a) = str_field(v, "ScopeContentType") {
                if a != "urlencoded" && a != "json" {
                    return Err(err(
                        StatusCode::BAD_REQUEST,
                        "ScopeContentType must be 'urlencoded' or 'json'.",
                    ));
                }
            }
        }
    }
    Ok(())
}

fn defaults(kind: Kind, v: &mut Map<String, Value>) {
    if kind == Kind::OAuth2ClientCredentials {
        v.entry("ClientAuthentication")
            .or_insert(Value::String("body".into()));
        v.entry("ScopeContentType")
            .or_insert(Value::String("urlencoded".into()));
    }
}

/// `/api/v1/{UserCredentials|SecureParameters|OAuth2ClientCredentials}...`
pub fn handle(t: &Arc<Tenant>, r: &ApiRequest) -> Response {
    let seg = &r.segs[0];
    let Some(kind) = Kind::from_set(&seg.name) else {
        return err(StatusCode::NOT_FOUND, "Resource not found.");
    };
    let read = r.method == Method::GET || r.method == Method::HEAD;
    if let Err(e) = r.require(if read { READ_ROLE } else { WRITE_ROLE }) {
        return e;
    }
    if r.segs.len() > 2
        || (r.segs.len() == 2 && !(read && r.segs[1].name == "$count" && seg.key.is_none()))
    {
        return err(StatusCode::NOT_FOUND, "Resource not found.");
    }
    let key = match &seg.key {
        None => None,
        Some(Key::Single(k)) => Some(k.clone()),
        Some(Key::Compound(_)) => return err(StatusCode::BAD_REQUEST, "Invalid key."),
    };
    let now = t.now_ms();
    let api_url = t.api_url();
    let mut st = t.lock();
    let stuck = st.chaos.deploy_stuck;
    st.security.settle(now, stuck);
    let delay_ms = t.cfg.deploy_delay_ms as i64;
    match (r.method.clone(), key) {
        (m, None) if m == Method::GET || m == Method::HEAD => {
            if kind == Kind::SecureParameters
                && (r.q.has_option("$select") || r.q.has_option("$filter"))
            {
                return err(StatusCode::NOT_IMPLEMENTED, "Not implemented.");
            }
            let items: Vec<Value> = st
                .security
                .artifacts
                .iter()
                .filter(|((k, _), _)| *k == kind)
                .map(|(_, a)| to_json(kind, a, &api_url))
                .collect();
            if r.segs.len() == 2 {
                return odata::count_response(items.len());
            }
            let filter = match r.q.filter.as_deref().map(odata::parse_filter).transpose() {
                Ok(f) => f,
                Err(e) => return e.into_response(),
            };
            let orderby = match r.q.orderby.as_deref().map(odata::parse_orderby).transpose() {
                Ok(o) => o,
                Err(e) => return e.into_response(),
            };
            odata::collection_response(
                items,
                &r.q,
                &format!("{api_url}/{}", kind.set()),
                filter.as_ref(),
                orderby.as_deref(),
            )
        }
        (m, Some(name)) if m == Method::GET || m == Method::HEAD => {
            if kind == Kind::SecureParameters
                && (r.q.has_option("$select") || r.q.has_option("$filter"))
            {
                return err(StatusCode::NOT_IMPLEMENTED, "Not implemented.");
            }
            match st.security.artifacts.get(&(kind, name)) {
                Some(a) => odata::entity_response(
                    StatusCode::OK,
                    odata::select(to_json(kind, a, &api_url), &r.q.select),
                ),
                None => err(
                    StatusCode::NOT_FOUND,
                    "Requested entity could not be found.",
                ),
            }
        }
        (Method::POST, None) => {
            let body = match r.json_body() {
                Ok(b) => b,
                Err(e) => return e,
            };
            if let Err(e) = check_payload(kind, &body) {
                return e;
            }
            let Some(name) = str_field(&body, "Name").map(str::to_string) else {
                return err(StatusCode::BAD_REQUEST, "Property 'Name' is required.");
            };
            if !valid_name(&name) {
                return err(StatusCode::BAD_REQUEST, &format!("Invalid name '{name}'."));
            }
            let mut values = body.clone();
            values.remove("Name");
            values.remove("__metadata");
            values.remove("SecurityArtifactDescriptor");
            defaults(kind, &mut values);
            if let Err(e) = validate(kind, &values, true) {
                return e;
            }
            if st.security.artifacts.contains_key(&(kind, name.clone())) {
                return err(
                    StatusCode::CONFLICT,
                    "Entity with specified name already exists.",
                );
            }
            st.security.artifacts.insert(
                (kind, name.clone()),
                Artifact {
                    name,
                    values,
                    deploy_at_ms: Some(now + delay_ms),
                    deployed: None,
                    deployed_on_ms: now,
                    deployed_by: r.caller.id.clone(),
                },
            );
            StatusCode::ACCEPTED.into_response()
        }
        (Method::PUT, Some(name)) => {
            let body = match r.json_body() {
                Ok(b) => b,
                Err(e) => return e,
            };
            if let Err(e) = check_payload(kind, &body) {
                return e;
            }
            if let Some(n) = str_field(&body, "Name") {
                if n != name {
                    return err(
                        StatusCode::BAD_REQUEST,
                        "Entity key specified in URI does not match to name from payload.",
                    );
                }
            }
            let Some(a) = st.security.artifacts.get_mut(&(kind, name)) else {
                return err(
                    StatusCode::CONFLICT,
                    "Entity with specified key does not exist.",
                );
            };
            // Update merges: properties not sent keep their values ([INF], see docs).
            let mut values = a.values.clone();
            for (k, v) in body {
                if k != "Name"
                    && k != "__metadata"
                    && k != "SecurityArtifactDescriptor"
                    && k != "CustomParameters"
                {
                    values.insert(k, v);
                }
            }
            if let Err(e) = validate(kind, &values, false) {
                return e;
            }
            a.values = values;
            a.deploy_at_ms = Some(now + delay_ms);
            a.deployed_by = r.caller.id.clone();
            StatusCode::ACCEPTED.into_response()
        }
        (Method::DELETE, Some(name)) => match st.security.artifacts.remove(&(kind, name)) {
            Some(_) => StatusCode::ACCEPTED.into_response(),
            None => err(
                StatusCode::NOT_FOUND,
                "Entity with specified key does not exist.",
            ),
        },
        _ => err(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed."),
    }
}

/// Control view of an artifact, including the **deployed** plaintext (`deployed` is null until
/// the first deployment completes; `pending` is true while a newer push is still deploying).
pub fn control_view(t: &Tenant, kind: &str, name: &str) -> Option<Value> {
    let kind = Kind::from_set(kind)?;
    let now = t.now_ms();
    let mut st = t.lock();
    let stuck = st.chaos.deploy_stuck;
    st.security.settle(now, stuck);
    let a = st.security.artifacts.get(&(kind, name.to_string()))?;
    Some(json!({
        "kind": kind.set(),
        "name": a.name,
        "status": status_of(a),
        "pending": a.deploy_at_ms.is_some(),
        "deployed": a.deployed,
        "deployed_on_ms": a.deployed_on_ms,
        "deployed_by": a.deployed_by,
    }))
}
