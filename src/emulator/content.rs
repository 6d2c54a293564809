//! Integration Content (cpi-api.md §4): packages, design-time integration flows uploaded as base64
//! zips (Id, Name and Version read from `META-INF/MANIFEST.MF`, the HTTPS address from the
//! `.iflw`'s `urlPath`), byte-identical `$value` download, update, delete, save-as-version, deploy
//! (202 + task id), `BuildAndDeployStatus`, and `IntegrationRuntimeArtifacts` going STARTING ->
//! STARTED | ERROR after the deploy delay (404 when not deployed). Deployed flows join the runtime
//! flow table, so `/http/<urlPath>` serves them (echo unless the control API set a behaviour).

// Helpers short-circuit with a ready HTTP response; it is built and moved once per request,
// so its size does not matter here.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, HashMap};
use std::io::{Cursor, Read};
use std::sync::Arc;

use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{json, Map, Value};

use super::api::ApiRequest;
use super::odata::{self, Key};
use super::runtime::{FlowSpec, RuntimeFlow, RuntimeStatus};
use super::tenant::{random_hex, State, Tenant};

pub const READ_ROLE: &str = "WorkspacePackagesRead";
pub const EDIT_ROLE: &str = "WorkspacePackagesEdit";
pub const DEPLOY_ROLE: &str = "WorkspaceArtifactsDeploy";
pub const RUNTIME_READ_ROLE: &str = "MonitoringDataRead";
/// Largest single zip entry we decompress (MANIFEST.MF, .iflw), bytes.
pub const MAX_ZIP_ENTRY_BYTES: u64 = 16 * 1024 * 1024;
/// Most deploy tasks remembered per tenant.
pub const MAX_DEPLOY_TASKS: usize = 10_000;

/// Why an uploaded artifact could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    #[error("ArtifactContent is not valid base64")]
    Base64,
    #[error("ArtifactContent is not a valid zip archive: {0}")]
    Zip(String),
    #[error("META-INF/MANIFEST.MF is missing or unreadable")]
    NoManifest,
    #[error("MANIFEST.MF has no Bundle-SymbolicName")]
    NoSymbolicName,
}

/// What the zip says about itself.
#[derive(Debug, Clone, PartialEq)]
pub struct BundleInfo {
    pub id: String,
    pub name: Option<String>,
    pub version: Option<String>,
    pub url_path: Option<String>,
}

fn parse_manifest(text: &str) -> HashMap<String, String> {
    let mut out: HashMap<String, String> = HashMap::new();
    let mut last: Option<String> = None;
    for line in text.lines() {
        if let Some(cont) = line.strip_prefix(' ') {
            if let Some(k) = &last {
                if let Some(v) = out.get_mut(k) {
                    v.push_str(cont);
                }
            }
        } else if let Some((k, v)) = line.split_once(':') {
            out.insert(k.trim().to_string(), v.trim().to_string());
            last = Some(k.trim().to_string());
        }
    }
    out
}

/// `urlPath` of the HTTPS sender in an `.iflw` (BPMN2 XML with `<key>urlPath</key><value>..</value>`).
pub fn iflw_url_path(xml: &str) -> Option<String> {
    let at = xml.find("<key>urlPath</key>")?;
    let rest = &xml[at..];
    let v0 = rest.find("<value>")? + "<value>".len();
    let v1 = rest[v0..].find("</value>")? + v0;
    let v = rest[v0..v1].trim();
    (!v.is_empty()).then(|| v.to_string())
}

/// Read Id, Name, Version and the HTTP address out of an iFlow zip.
pub fn read_bundle(zip_bytes: &[u8]) -> Result<BundleInfo, ContentError> {
    let mut zip = zip::ZipArchive::new(Cursor::new(zip_bytes))
        .map_err(|e| ContentError::Zip(e.to_string()))?;
    let mut read_entry = |name: &str| -> Option<String> {
        let f = zip.by_name(name).ok()?;
        let mut s = String::new();
        f.take(MAX_ZIP_ENTRY_BYTES).read_to_string(&mut s).ok()?;
        Some(s)
    };
    let manifest = read_entry("META-INF/MANIFEST.MF").ok_or(ContentError::NoManifest)?;
    let m = parse_manifest(&manifest);
    let id = m
        .get("Bundle-SymbolicName")
        .map(|s| s.split(';').next().unwrap_or("").trim().to_string())
        .filter(|s| !s.is_empty())
        .ok_or(ContentError::NoSymbolicName)?;
    let iflw_names: Vec<String> = zip
        .file_names()
        .filter(|n| n.ends_with(".iflw"))
        .map(str::to_string)
        .collect();
    let mut url_path = None;
    for n in iflw_names {
        if let Ok(f) = zip.by_name(&n) {
            let mut s = String::new();
            if f.take(MAX_ZIP_ENTRY_BYTES).read_to_string(&mut s).is_ok() {
                url_path = iflw_url_path(&s);
                if url_path.is_some() {
                    break;
                }
            }
        }
    }
    Ok(BundleInfo {
        id,
        name: m.get("Bundle-Name").cloned(),
        version: m.get("Bundle-Version").cloned(),
        url_path,
    })
}

#[derive(Debug, Clone)]
pub struct Package {
    pub id: String,
    pub fields: Map<String, Value>,
    pub created_ms: i64,
    pub modified_ms: i64,
}

#[derive(Debug, Clone)]
pub struct DesignArtifact {
    pub id: String,
    pub version: String,
    pub name: String,
    pub package_id: String,
    pub description: Option<String>,
    pub content: Vec<u8>,
    pub url_path: Option<String>,
    pub created_by: String,
    pub created_ms: i64,
    pub modified_by: String,
    pub modified_ms: i64,
    /// Earlier versions kept by SaveAsVersion: version -> content.
    pub saved: BTreeMap<String, Vec<u8>>,
}

#[derive(Debug, Clone)]
pub struct DeployTask {
    pub artifact_id: String,
    pub ready_at_ms: i64,
    pub success: bool,
}

#[derive(Debug, Default)]
pub struct ContentStore {
    pub packages: BTreeMap<String, Package>,
    pub artifacts: BTreeMap<String, DesignArtifact>,
    pub tasks: HashMap<String, DeployTask>,
}

fn err(status: StatusCode, msg: &str) -> Response {
    odata::error(status, msg)
}

/// CPI's artifact name rule: starts with a letter or `_`; letters, digits, space, `.`, `-`, `_`;
/// must not end with `.`.
pub fn valid_artifact_name(n: &str) -> bool {
    let mut chars = n.chars();
    matches!(chars.next(), Some(c) if c.is_alphabetic() || c == '_')
        && n.chars().all(|c| c.is_alphanumeric() || " .-_".contains(c))
        && !n.ends_with('.')
}

fn valid_id(n: &str) -> bool {
    !n.is_empty()
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

fn package_json(p: &Package, api_url: &str) -> Value {
    let uri = format!("{api_url}/IntegrationPackages({})", odata::quote(&p.id));
    let mut m = Map::new();
    m.insert(
        "__metadata".into(),
        odata::metadata(&uri, "com.sap.hci.api.IntegrationPackage"),
    );
    m.insert("Id".into(), json!(p.id));
    for k in [
        "Name",
        "Description",
        "ShortText",
        "Version",
        "Vendor",
        "Mode",
    ] {
        m.insert(k.into(), p.fields.get(k).cloned().unwrap_or(Value::Null));
    }
    m.insert("CreationDate".into(), json!(p.created_ms.to_string()));
    m.insert("ModifiedDate".into(), json!(p.modified_ms.to_string()));
    m.insert(
        "IntegrationDesigntimeArtifacts".into(),
        odata::deferred(&format!("{uri}/IntegrationDesigntimeArtifacts")),
    );
    Value::Object(m)
}

fn artifact_json(a: &DesignArtifact, api_url: &str) -> Value {
    let uri = format!(
        "{api_url}/IntegrationDesigntimeArtifacts(Id={},Version={})",
        odata::quote(&a.id),
        odata::quote(&a.version)
    );
    json!({
        "__metadata": {"id": uri, "uri": uri, "type": "com.sap.hci.api.IntegrationDesigntimeArtifact",
            "content_type": "application/octet-stream", "media_src": format!("{uri}/$value"), "edit_media": format!("{uri}/$value")},
        "Id": a.id, "Version": a.version, "PackageId": a.package_id, "Name": a.name, "Description": a.description,
        "ArtifactContent": null,
        "Sender": "", "Receiver": "",
        "CreatedBy": a.created_by, "CreatedAt": a.created_ms.to_string(),
        "ModifiedBy": a.modified_by, "ModifiedAt": a.modified_ms.to_string(),
        "Configurations": odata::deferred(&format!("{uri}/Configurations")),
        "Resources": odata::deferred(&format!("{uri}/Resources")),
    })
}

fn runtime_json(f: &RuntimeFlow, api_url: &str) -> Value {
    let uri = format!(
        "{api_url}/IntegrationRuntimeArtifacts({})",
        odata::quote(&f.name)
    );
    json!({
        "__metadata": odata::metadata(&uri, "com.sap.hci.api.IntegrationRuntimeArtifact"),
        "Id": f.name, "Version": f.version, "Name": f.display_name, "Type": "INTEGRATION_FLOW",
        "DeployedBy": f.deployed_by, "DeployedOn": odata::date(f.deployed_on_ms), "Status": f.status,
        "ErrorInformation": odata::deferred(&format!("{uri}/ErrorInformation")),
    })
}

/// Advance every runtime flow's status and drop undeployed ones.
fn settle(st: &mut State, now_ms: i64) {
    let stuck = st.chaos.deploy_stuck;
    for f in st.flows.values_mut() {
        f.settle(now_ms, stuck);
    }
    st.flows.retain(|_, f| !f.is_gone(now_ms));
}

fn decode_content(v: Option<&Value>) -> Result<Option<Vec<u8>>, Response> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => base64::engine::general_purpose::STANDARD
            .decode(s.trim())
            .map(Some)
            .map_err(|_| err(StatusCode::BAD_REQUEST, &ContentError::Base64.to_string())),
        Some(_) => Err(err(
            StatusCode::BAD_REQUEST,
            "ArtifactContent must be a base64 string.",
        )),
    }
}

fn design_key(seg: &odata::Segment) -> Option<(String, String)> {
    match &seg.key {
        Some(k @ Key::Compound(_)) => Some((
            k.get("Id")?.to_string(),
            k.get("Version").unwrap_or("active").to_string(),
        )),
        Some(Key::Single(id)) => Some((id.clone(), "active".into())),
        None => None,
    }
}

/// Entry point for every Integration Content resource.
pub fn handle(t: &Arc<Tenant>, r: &ApiRequest) -> Response {
    let now = t.now_ms();
    let api_url = t.api_url();
    let mut st = t.lock();
    settle(&mut st, now);
    let first = &r.segs[0];
    let is_read = r.method == Method::GET || r.method == Method::HEAD;
    let role = match first.name.as_str() {
        "IntegrationRuntimeArtifacts" | "ServiceEndpoints" | "BuildAndDeployStatus" if is_read => {
            RUNTIME_READ_ROLE
        }
        "IntegrationRuntimeArtifacts" | "DeployIntegrationDesigntimeArtifact" => DEPLOY_ROLE,
        _ if is_read => READ_ROLE,
        _ => EDIT_ROLE,
    };
    if let Err(e) = r.require(role) {
        return e;
    }
    match first.name.as_str() {
        "IntegrationPackages" => packages(t, &mut st, r, now, &api_url),
        "IntegrationDesigntimeArtifacts" => designtime(&mut st, r, now, &api_url),
        "IntegrationDesigntimeArtifactSaveAsVersion" => save_as_version(&mut st, r, now, &api_url),
        "DeployIntegrationDesigntimeArtifact" => deploy(t, &mut st, r, now),
        "BuildAndDeployStatus" => build_status(&mut st, r, now),
        "IntegrationRuntimeArtifacts" => runtime_artifacts(t, &mut st, r, now, &api_url),
        "ServiceEndpoints" => service_endpoints(t, &st, r, &api_url),
        _ => err(StatusCode::NOT_FOUND, "Resource not found."),
    }
}

fn packages(_t: &Tenant, st: &mut State, r: &ApiRequest, now: i64, api_url: &str) -> Response {
    let seg = &r.segs[0];
    let id = match &seg.key {
        Some(Key::Single(k)) => Some(k.clone()),
        Some(_) => return err(StatusCode::BAD_REQUEST, "Invalid key."),
        None => None,
    };
    let nav = r.segs.get(1).map(|s| s.name.as_str());
    match (r.method.clone(), id, nav) {
        (Method::GET | Method::HEAD, None, None) => {
            let items = st
                .content
                .packages
                .values()
                .map(|p| package_json(p, api_url))
                .collect();
            let f = match r.q.filter.as_deref().map(odata::parse_filter).transpose() {
                Ok(f) => f,
                Err(e) => return e.into_response(),
            };
            odata::collection_response(
                items,
                &r.q,
                &format!("{api_url}/IntegrationPackages"),
                f.as_ref(),
                None,
            )
        }
        (Method::GET | Method::HEAD, Some(id), None) => match st.content.packages.get(&id) {
            Some(p) => odata::entity_response(
                StatusCode::OK,
                odata::select(package_json(p, api_url), &r.q.select),
            ),
            None => err(
                StatusCode::NOT_FOUND,
                "Requested entity could not be found.",
            ),
        },
        (Method::GET | Method::HEAD, Some(id), Some("IntegrationDesigntimeArtifacts")) => {
            if !st.content.packages.contains_key(&id) {
                return err(
                    StatusCode::NOT_FOUND,
                    &format!("Package ID {id} does not exist."),
                );
            }
            let items = st
                .content
                .artifacts
                .values()
                .filter(|a| a.package_id == id)
                .map(|a| artifact_json(a, api_url))
                .collect();
            odata::collection_response(
                items,
                &r.q,
                &format!(
                    "{api_url}/IntegrationPackages({})/IntegrationDesigntimeArtifacts",
                    odata::quote(&id)
                ),
                None,
                None,
            )
        }
        (Method::POST, None, None) => {
            let body = match r.json_body() {
                Ok(b) => b,
                Err(e) => return e,
            };
            let Some(id) = body.get("Id").and_then(Value::as_str).map(str::to_string) else {
                return err(StatusCode::BAD_REQUEST, "Property 'Id' is required.");
            };
            if !valid_id(&id) {
                return err(
                    StatusCode::BAD_REQUEST,
                    &format!("Invalid package ID '{id}'."),
                );
            }
            if body
                .get("Name")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                return err(StatusCode::BAD_REQUEST, "Property 'Name' is required.");
            }
            if st.content.packages.contains_key(&id) {
                return err(
                    StatusCode::CONFLICT,
                    &format!("Integration package with ID {id} already exists."),
                );
            }
            let p = Package {
                id: id.clone(),
                fields: body,
                created_ms: now,
                modified_ms: now,
            };
            let v = package_json(&p, api_url);
            st.content.packages.insert(id, p);
            odata::entity_response(StatusCode::CREATED, v)
        }
        (Method::PUT, Some(id), None) => {
            let body = match r.json_body() {
                Ok(b) => b,
                Err(e) => return e,
            };
            let Some(p) = st.content.packages.get_mut(&id) else {
                return err(
                    StatusCode::NOT_FOUND,
                    "Requested entity could not be found.",
                );
            };
            for (k, v) in body {
                if k != "Id" {
                    p.fields.insert(k, v);
                }
            }
            p.modified_ms = now;
            StatusCode::ACCEPTED.into_response()
        }
        (Method::DELETE, Some(id), None) => {
            if st.content.packages.remove(&id).is_none() {
                return err(
                    StatusCode::NOT_FOUND,
                    "Requested entity could not be found.",
                );
            }
            st.content.artifacts.retain(|_, a| a.package_id != id);
            StatusCode::ACCEPTED.into_response()
        }
        _ => err(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed."),
    }
}

fn designtime(st: &mut State, r: &ApiRequest, now: i64, api_url: &str) -> Response {
    let seg = &r.segs[0];
    let nav = r.segs.get(1).map(|s| s.name.as_str());
    if r.method == Method::POST && seg.key.is_none() {
        return create_artifact(st, r, now, api_url);
    }
    let Some((id, version)) = design_key(seg) else {
        return err(StatusCode::NOT_FOUND, "Resource not found.");
    };
    let not_found = || {
        err(
            StatusCode::NOT_FOUND,
            "Integration design time artifact not found.",
        )
    };
    let Some(a) = st.content.artifacts.get_mut(&id) else {
        return not_found();
    };
    // Explicit versions address the current version or one kept by SaveAsVersion.
    let content = if version == "active" || version == a.version {
        a.content.clone()
    } else if let Some(c) = a.saved.get(&version) {
        c.clone()
    } else {
        return not_found();
    };
    match (r.method.clone(), nav) {
        (Method::GET | Method::HEAD, None) => {
            let mut v = artifact_json(a, api_url);
            v["Version"] = json!(if version == "active" {
                a.version.clone()
            } else {
                version
            });
            odata::entity_response(StatusCode::OK, odata::select(v, &r.q.select))
        }
        (Method::GET | Method::HEAD, Some("$value")) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "application/zip".to_string()),
                (
                    header::CONTENT_DISPOSITION,
                    format!("attachment; filename={}.zip", a.id),
                ),
            ],
            content,
        )
            .into_response(),
        (Method::GET | Method::HEAD, Some("Configurations" | "Resources")) => {
            odata::json_response(StatusCode::OK, &json!({"d": {"results": []}}))
        }
        (Method::PUT, None) => {
            let body = match r.json_body() {
                Ok(b) => b,
                Err(e) => return e,
            };
            let name = body.get("Name").and_then(Value::as_str).map(str::to_string);
            let new_content = match decode_content(body.get("ArtifactContent")) {
                Ok(c) => c,
                Err(e) => return e,
            };
            if let Some(n) = &name {
                if !valid_artifact_name(n) {
                    return err(
                        StatusCode::BAD_REQUEST,
                        &format!("Invalid artifact name '{n}'."),
                    );
                }
            }
            if let Some(c) = new_content {
                let info = match read_bundle(&c) {
                    Ok(i) => i,
                    Err(e) => return err(StatusCode::BAD_REQUEST, &e.to_string()),
                };
                if info.id != a.id {
                    return err(
                        StatusCode::BAD_REQUEST,
                        &format!(
                            "Bundle-SymbolicName '{}' does not match artifact ID '{}'.",
                            info.id, a.id
                        ),
                    );
                }
                a.content = c;
                a.url_path = info.url_path;
                if let Some(v) = info.version {
                    a.version = v;
                }
                a.name = name.or(info.name).unwrap_or_else(|| a.name.clone());
            } else if let Some(n) = name {
                a.name = n;
            }
            a.modified_ms = now;
            a.modified_by = r.caller.id.clone();
            StatusCode::OK.into_response()
        }
        (Method::PUT, Some("$links")) => StatusCode::ACCEPTED.into_response(),
        (Method::DELETE, None) => {
            st.content.artifacts.remove(&id);
            StatusCode::OK.into_response()
        }
        _ => err(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed."),
    }
}

fn create_artifact(st: &mut State, r: &ApiRequest, now: i64, api_url: &str) -> Response {
    let body = match r.json_body() {
        Ok(b) => b,
        Err(e) => return e,
    };
    let Some(pkg) = body
        .get("PackageId")
        .and_then(Value::as_str)
        .map(str::to_string)
    else {
        return err(StatusCode::BAD_REQUEST, "Property 'PackageId' is required.");
    };
    if !st.content.packages.contains_key(&pkg) {
        return err(
            StatusCode::NOT_FOUND,
            &format!("Package ID {pkg} does not exist."),
        );
    }
    let content = match decode_content(body.get("ArtifactContent")) {
        Ok(Some(c)) => c,
        Ok(None) => {
            return err(
                StatusCode::BAD_REQUEST,
                "Property 'ArtifactContent' is required.",
            )
        }
        Err(e) => return e,
    };
    let info = match read_bundle(&content) {
        Ok(i) => i,
        Err(e) => return err(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let id = body
        .get("Id")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| info.id.clone());
    if id != info.id {
        return err(
            StatusCode::BAD_REQUEST,
            &format!(
                "Artifact ID '{id}' does not match Bundle-SymbolicName '{}'.",
                info.id
            ),
        );
    }
    let name = body
        .get("Name")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or(info.name.clone())
        .unwrap_or_else(|| id.clone());
    if !valid_artifact_name(&name) || !valid_id(&id) {
        return err(
            StatusCode::BAD_REQUEST,
            &format!("Invalid artifact name '{name}'."),
        );
    }
    if st.content.artifacts.contains_key(&id) {
        return err(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!(
                "Integration flow with ID '{id}' already exists. Please rename the artifact ID."
            ),
        );
    }
    let a = DesignArtifact {
        id: id.clone(),
        version: info.version.unwrap_or_else(|| "1.0.0".into()),
        name,
        package_id: pkg,
        description: body
            .get("Description")
            .and_then(Value::as_str)
            .map(str::to_string),
        content,
        url_path: info.url_path,
        created_by: r.caller.id.clone(),
        created_ms: now,
        modified_by: r.caller.id.clone(),
        modified_ms: now,
        saved: BTreeMap::new(),
    };
    let v = artifact_json(&a, api_url);
    st.content.artifacts.insert(id, a);
    odata::entity_response(StatusCode::CREATED, v)
}

fn save_as_version(st: &mut State, r: &ApiRequest, now: i64, api_url: &str) -> Response {
    if r.method != Method::POST {
        return err(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed.");
    }
    let (Some(id), Some(ver)) = (
        odata::function_param(&r.q, "Id"),
        odata::function_param(&r.q, "SaveAsVersion"),
    ) else {
        return err(
            StatusCode::BAD_REQUEST,
            "Parameters Id and SaveAsVersion are required (quoted).",
        );
    };
    let Some(a) = st.content.artifacts.get_mut(&id) else {
        return err(
            StatusCode::NOT_FOUND,
            "Integration design time artifact not found.",
        );
    };
    a.saved.insert(a.version.clone(), a.content.clone());
    a.version = ver;
    a.modified_ms = now;
    odata::entity_response(StatusCode::OK, artifact_json(a, api_url))
}

fn deploy(t: &Tenant, st: &mut State, r: &ApiRequest, now: i64) -> Response {
    if r.method != Method::POST {
        return err(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed.");
    }
    let raw_id =
        r.q.raw
            .iter()
            .find(|(k, _)| k == "Id")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
    let id = odata::function_param(&r.q, "Id");
    let version = odata::function_param(&r.q, "Version");
    let (Some(id), Some(version)) = (id, version) else {
        return err(
            StatusCode::BAD_REQUEST,
            &format!("No content for id '{raw_id}'."),
        );
    };
    let Some(a) = st.content.artifacts.get(&id).cloned() else {
        return err(
            StatusCode::BAD_REQUEST,
            &format!("No content for id '{id}'."),
        );
    };
    if version != "active" && version != a.version && !a.saved.contains_key(&version) {
        return err(
            StatusCode::BAD_REQUEST,
            &format!("No content for id '{id}'."),
        );
    }
    let chaos_error = st.chaos.deploy_error;
    let ready_at = now + t.cfg.deploy_delay_ms as i64;
    // Duplicate HTTP addresses: the second flow does not start.
    let clash = a.url_path.as_ref().and_then(|p| {
        st.flows
            .values()
            .find(|f| f.name != id && f.has_endpoint && f.spec.path.eq_ignore_ascii_case(p))
            .map(|f| f.name.clone())
    });
    let mut spec = st
        .flows
        .get(&id)
        .map(|f| f.spec.clone())
        .unwrap_or_else(|| FlowSpec::echo("/placeholder"));
    let has_endpoint = match &a.url_path {
        Some(p) => {
            spec.path = p.clone();
            spec.normalise().is_ok()
        }
        None => false,
    };
    let error = if chaos_error {
        Some("Deployment failed (emulator chaos deploy_error).".to_string())
    } else {
        clash.map(|other| {
            format!(
                "The HTTP address '{}' is already used by integration flow '{other}'.",
                spec.path
            )
        })
    };
    let pkg_name = st.content.packages.get(&a.package_id).and_then(|p| {
        p.fields
            .get("Name")
            .and_then(Value::as_str)
            .map(str::to_string)
    });
    let flow = RuntimeFlow {
        name: id.clone(),
        display_name: a.name.clone(),
        version: a.version.clone(),
        spec,
        has_endpoint,
        status: RuntimeStatus::Starting,
        ready_at_ms: ready_at,
        final_status: if error.is_some() {
            RuntimeStatus::Error
        } else {
            RuntimeStatus::Started
        },
        error,
        deployed_on_ms: now,
        deployed_by: r.caller.id.clone(),
        package_id: Some(a.package_id.clone()),
        package_name: pkg_name,
    };
    st.flows.insert(id.clone(), flow);
    if st.content.tasks.len() >= MAX_DEPLOY_TASKS {
        st.content.tasks.clear();
    }
    let task_id = random_hex(16);
    st.content.tasks.insert(
        task_id.clone(),
        DeployTask {
            artifact_id: id,
            ready_at_ms: ready_at,
            success: !chaos_error,
        },
    );
    (
        StatusCode::ACCEPTED,
        [(header::CONTENT_TYPE, "text/plain;charset=utf-8")],
        task_id,
    )
        .into_response()
}

fn build_status(st: &mut State, r: &ApiRequest, now: i64) -> Response {
    let task = match &r.segs[0].key {
        Some(k) => k.get("TaskId").map(str::to_string),
        None => None,
    };
    let Some(task) = task else {
        return err(StatusCode::BAD_REQUEST, "TaskId is required.");
    };
    let Some(tk) = st.content.tasks.get(&task) else {
        return err(
            StatusCode::NOT_FOUND,
            &format!("Cannot get build and deploy status for artifact with TaskId '{task}'."),
        );
    };
    let status = if now < tk.ready_at_ms || st.chaos.deploy_stuck {
        "DEPLOYING"
    } else if tk.success {
        "SUCCESS"
    } else {
        "FAIL"
    };
    odata::entity_response(
        StatusCode::OK,
        json!({"__metadata": {"type": "com.sap.hci.api.BuildAndDeployStatus"}, "TaskId": task, "Status": status}),
    )
}

fn runtime_artifacts(
    t: &Tenant,
    st: &mut State,
    r: &ApiRequest,
    now: i64,
    api_url: &str,
) -> Response {
    let seg = &r.segs[0];
    let id = match &seg.key {
        Some(k) => k.get("Id").map(str::to_string),
        None => None,
    };
    let nav: Vec<&str> = r.segs[1..].iter().map(|s| s.name.as_str()).collect();
    let not_found = || {
        err(
            StatusCode::NOT_FOUND,
            "Requested entity could not be found.",
        )
    };
    match (r.method.clone(), id) {
        (Method::GET | Method::HEAD, None) => {
            let items: Vec<Value> = st
                .flows
                .values()
                .map(|f| runtime_json(f, api_url))
                .collect();
            if nav == ["$count"] {
                return odata::count_response(items.len());
            }
            let f = match r.q.filter.as_deref().map(odata::parse_filter).transpose() {
                Ok(f) => f,
                Err(e) => return e.into_response(),
            };
            let o = match r.q.orderby.as_deref().map(odata::parse_orderby).transpose() {
                Ok(o) => o,
                Err(e) => return e.into_response(),
            };
            odata::collection_response(
                items,
                &r.q,
                &format!("{api_url}/IntegrationRuntimeArtifacts"),
                f.as_ref(),
                o.as_deref(),
            )
        }
        (Method::GET | Method::HEAD, Some(id)) => {
            let Some(f) = st.flows.get(&id) else {
                return not_found();
            };
            match nav.as_slice() {
                [] => odata::entity_response(
                    StatusCode::OK,
                    odata::select(runtime_json(f, api_url), &r.q.select),
                ),
                ["ErrorInformation", "$value"] => match (&f.status, &f.error) {
                    (RuntimeStatus::Error, Some(e)) => odata::json_response(
                        StatusCode::OK,
                        &json!({"message": {"subsystemName": "emulator", "subsystemPartName": "deploy", "messageId": "DEPLOY_ERROR"},
                                "parameter": [e]}),
                    ),
                    _ => StatusCode::NO_CONTENT.into_response(),
                },
                _ => not_found(),
            }
        }
        (Method::DELETE, Some(id)) => {
            let Some(f) = st.flows.get_mut(&id) else {
                return not_found();
            };
            f.status = RuntimeStatus::Stopping;
            f.ready_at_ms = now + t.cfg.deploy_delay_ms as i64;
            if t.cfg.deploy_delay_ms == 0 {
                st.flows.remove(&id);
            }
            StatusCode::ACCEPTED.into_response()
        }
        (Method::POST, None) => err(
            StatusCode::NOT_IMPLEMENTED,
            "Deploying by upload is not supported on Cloud Foundry.",
        ),
        _ => err(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed."),
    }
}

fn service_endpoints(t: &Tenant, st: &State, r: &ApiRequest, api_url: &str) -> Response {
    let items: Vec<Value> = st
        .flows
        .values()
        .filter(|f| f.has_endpoint && f.status == RuntimeStatus::Started)
        .map(|f| {
            let uri = format!("{api_url}/ServiceEndpoints(Name={},Version={})", odata::quote(&f.name), odata::quote(&f.version));
            json!({
                "__metadata": odata::metadata(&uri, "com.sap.hci.api.ServiceEndpoint"),
                "Name": f.display_name, "Id": f.name, "Version": f.version, "Title": f.display_name,
                "Summary": "", "Description": "", "LastUpdated": odata::date(f.deployed_on_ms), "Protocol": "HTTP",
                "EntryPoints": {"results": [{"Name": f.name, "Url": format!("{}/http{}", t.base_url(), f.spec.path), "Type": "PROD", "AdditionalInformation": ""}]},
                "ApiDefinitions": {"results": []},
            })
        })
        .collect();
    if r.segs.get(1).is_some_and(|s| s.name == "$count") {
        return odata::count_response(items.len());
    }
    odata::collection_response(
        items,
        &r.q,
        &format!("{api_url}/ServiceEndpoints"),
        None,
        None,
    )
}
