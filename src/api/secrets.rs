//! Admin handlers for shared secrets: `PUT/GET/DELETE /admin/secrets/{name}`, the listing,
//! versions, enable/disable, rollback, restore, reveal and the audit log.
//!
//! A PUT turns the caller's value into the CPI artifact's properties (cpi-api.md §3), seals
//! them here with a fresh data key (envelope, `seal.rs`) and only then proposes, so the Raft
//! log, snapshots and data files hold ciphertext only. No answer carries a value except
//! `POST .../reveal`, which takes the reveal token (not the admin token) and is audited in the
//! replicated state *before* the value is returned.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{
    barrier, next_cursor, now_ms, page_limit, parse_json, AdminState, ApiError, ListOpts, ReadOpts,
};
use crate::state::secrets::{
    self as sec, NewVersion, SealedValue, SecretCommand, SecretKind, SecretRecord, SecretResponse,
    SecretSettings, Targets,
};
use crate::state::{self, is_resource_name, Command, Response as SmResponse};

/// Largest sealed plaintext (the CPI properties of one version), bytes.
pub const MAX_SECRET_VALUE_BYTES: usize = 8 * 1024;
/// Most named target tenants per secret.
pub const MAX_TARGETS: usize = 64;
/// Longest retention of a soft-deleted secret (one year).
pub const MAX_RETENTION_MS: u64 = 365 * 24 * 3600 * 1000;
/// Longest description, bytes (CPI shows it in its UI).
pub const MAX_DESCRIPTION_BYTES: usize = 1024;
/// Actor names written into the audit log.
pub const ACTOR_ADMIN: &str = "admin";
pub const ACTOR_REVEAL: &str = "reveal";

type Shared = State<Arc<AdminState>>;

/// The AAD of a version's ciphertext and wrapped data key.
pub fn value_aad(name: &str, value_id: &str) -> Vec<u8> {
    format!("secret/{name}/{value_id}").into_bytes()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutBody {
    kind: SecretKind,
    value: Value,
    description: Option<String>,
    /// `"all"` (default) or a list of tenant names.
    targets: Option<Value>,
    not_before_ms: Option<u64>,
    expires_ms: Option<u64>,
    max_versions: Option<u32>,
    retention_ms: Option<u64>,
    expiry_warning_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserValue {
    user: String,
    password: String,
    /// CPI's `Kind`: default, successfactors or openconnectors.
    cpi_kind: Option<String>,
    company_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SecureValue {
    value: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OAuthValue {
    token_service_url: String,
    client_id: String,
    client_secret: String,
    client_authentication: Option<String>,
    scope: Option<String>,
    scope_content_type: Option<String>,
    resource: Option<String>,
    audience: Option<String>,
}

/// Parses `value` as `T`, naming failing fields `value.<field>`.
fn parse_value<T: serde::de::DeserializeOwned>(v: &Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            "value".to_string()
        } else {
            format!("value.{path}")
        };
        ApiError::invalid(field, e.inner().to_string())
    })
}

fn non_empty(field: &str, v: &str) -> Result<(), ApiError> {
    if v.trim().is_empty() {
        return Err(ApiError::invalid(field, "must not be empty"));
    }
    Ok(())
}

fn one_of(field: &str, v: &Option<String>, allowed: &[&str]) -> Result<(), ApiError> {
    match v {
        Some(x) if !allowed.contains(&x.as_str()) => Err(ApiError::invalid(
            field,
            format!("must be one of {}", allowed.join(", ")),
        )),
        _ => Ok(()),
    }
}

/// The CPI properties (minus `Name`) and the non-secret summary of one value.
type Built = (Map<String, Value>, BTreeMap<String, String>);

fn build_value(
    kind: SecretKind,
    v: &Value,
    description: &Option<String>,
) -> Result<Built, ApiError> {
    let mut cpi = Map::new();
    let mut summary = BTreeMap::new();
    let opt = |cpi: &mut Map<String, Value>, k: &str, v: &Option<String>| {
        if let Some(x) = v {
            cpi.insert(k.into(), json!(x));
        }
    };
    match kind {
        SecretKind::UserCredential => {
            let u: UserValue = parse_value(v)?;
            non_empty("value.user", &u.user)?;
            non_empty("value.password", &u.password)?;
            one_of(
                "value.cpi_kind",
                &u.cpi_kind,
                &["default", "successfactors", "openconnectors"],
            )?;
            let cpi_kind = u.cpi_kind.unwrap_or_else(|| "default".into());
            if cpi_kind == "successfactors" && u.company_id.as_deref().is_none_or(str::is_empty) {
                return Err(ApiError::invalid(
                    "value.company_id",
                    "is required for cpi_kind successfactors",
                ));
            }
            cpi.insert("Kind".into(), json!(cpi_kind));
            cpi.insert("User".into(), json!(u.user));
            cpi.insert("Password".into(), json!(u.password));
            opt(&mut cpi, "CompanyId", &u.company_id);
            summary.insert("user".into(), u.user);
        }
        SecretKind::SecureParameter => {
            let s: SecureValue = parse_value(v)?;
            non_empty("value.value", &s.value)?;
            cpi.insert("SecureParam".into(), json!(s.value));
        }
        SecretKind::OAuth2ClientCredential => {
            let o: OAuthValue = parse_value(v)?;
            non_empty("value.token_service_url", &o.token_service_url)?;
            non_empty("value.client_id", &o.client_id)?;
            non_empty("value.client_secret", &o.client_secret)?;
            one_of(
                "value.client_authentication",
                &o.client_authentication,
                &["body", "header"],
            )?;
            one_of(
                "value.scope_content_type",
                &o.scope_content_type,
                &["urlencoded", "json"],
            )?;
            cpi.insert("TokenServiceUrl".into(), json!(o.token_service_url));
            cpi.insert("ClientId".into(), json!(o.client_id));
            cpi.insert("ClientSecret".into(), json!(o.client_secret));
            cpi.insert(
                "ClientAuthentication".into(),
                json!(o.client_authentication.unwrap_or_else(|| "body".into())),
            );
            cpi.insert(
                "ScopeContentType".into(),
                json!(o.scope_content_type.unwrap_or_else(|| "urlencoded".into())),
            );
            opt(&mut cpi, "Scope", &o.scope);
            opt(&mut cpi, "Resource", &o.resource);
            opt(&mut cpi, "Audience", &o.audience);
            summary.insert("client_id".into(), o.client_id);
            summary.insert("token_service_url".into(), o.token_service_url);
        }
    }
    opt(&mut cpi, "Description", description);
    Ok((cpi, summary))
}

fn parse_targets(v: &Option<Value>) -> Result<Targets, ApiError> {
    let bad = || ApiError::invalid("targets", "must be \"all\" or a list of tenant names");
    match v {
        None => Ok(Targets::All),
        Some(Value::String(s)) if s == "all" => Ok(Targets::All),
        Some(Value::Array(items)) => {
            if items.is_empty() || items.len() > MAX_TARGETS {
                return Err(ApiError::invalid(
                    "targets",
                    format!("must name 1 to {MAX_TARGETS} tenants"),
                ));
            }
            let mut names = Vec::new();
            for (i, it) in items.iter().enumerate() {
                match it.as_str() {
                    Some(n) if is_resource_name(n) && !names.iter().any(|x| x == n) => {
                        names.push(n.to_string())
                    }
                    _ => {
                        return Err(ApiError::invalid(
                            format!("targets[{i}]"),
                            "must be a distinct tenant name",
                        ))
                    }
                }
            }
            Ok(Targets::Tenants(names))
        }
        Some(_) => Err(bad()),
    }
}

fn check_name(name: &str) -> Result<(), ApiError> {
    if !is_resource_name(name) {
        return Err(ApiError::invalid(
            "name",
            "must be 1 to 64 characters of A-Z a-z 0-9 . _ - (not starting with . or -)",
        ));
    }
    Ok(())
}

fn settings_of(b: &PutBody) -> Result<SecretSettings, ApiError> {
    let max_versions = b.max_versions.unwrap_or(sec::DEFAULT_MAX_VERSIONS);
    if !(1..=sec::MAX_VERSIONS_LIMIT).contains(&max_versions) {
        return Err(ApiError::invalid(
            "max_versions",
            format!("must be between 1 and {}", sec::MAX_VERSIONS_LIMIT),
        ));
    }
    let retention_ms = b.retention_ms.unwrap_or(sec::DEFAULT_RETENTION_MS);
    if retention_ms > MAX_RETENTION_MS {
        return Err(ApiError::invalid(
            "retention_ms",
            format!("must be at most {MAX_RETENTION_MS}"),
        ));
    }
    if let (Some(nb), Some(exp)) = (b.not_before_ms, b.expires_ms) {
        if exp <= nb {
            return Err(ApiError::invalid(
                "expires_ms",
                "must be later than not_before_ms",
            ));
        }
    }
    if b.description
        .as_ref()
        .is_some_and(|d| d.len() > MAX_DESCRIPTION_BYTES)
    {
        return Err(ApiError::invalid(
            "description",
            format!("must be at most {MAX_DESCRIPTION_BYTES} bytes"),
        ));
    }
    Ok(SecretSettings {
        description: b.description.clone(),
        targets: parse_targets(&b.targets)?,
        max_versions,
        retention_ms,
        expiry_warning_ms: b
            .expiry_warning_ms
            .unwrap_or(sec::DEFAULT_EXPIRY_WARNING_MS),
    })
}

/// Sends a secret command and maps its business answers onto HTTP errors.
async fn write(
    st: &AdminState,
    name: &str,
    cmd: SecretCommand,
) -> Result<SecretResponse, ApiError> {
    match st.client.write(&Command::Secret(cmd)).await? {
        SmResponse::Secret(SecretResponse::NotFound) => Err(ApiError::NotFound(format!(
            "secret `{name}` (or that version)"
        ))),
        SmResponse::Secret(SecretResponse::Conflict(m)) => Err(ApiError::Conflict(m)),
        SmResponse::Secret(r) => Ok(r),
        other => Err(ApiError::Internal(format!("unexpected answer {other:?}"))),
    }
}

pub(crate) async fn put(
    State(st): Shared,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    check_name(&name)?;
    let b: PutBody = parse_json(&body)?;
    let settings = settings_of(&b)?;
    let (cpi, summary) = build_value(b.kind, &b.value, &b.description)?;
    let plain = serde_json::to_vec(&cpi).map_err(|e| ApiError::Internal(e.to_string()))?;
    if plain.len() > MAX_SECRET_VALUE_BYTES {
        return Err(ApiError::invalid(
            "value",
            format!("must be at most {MAX_SECRET_VALUE_BYTES} bytes as CPI properties"),
        ));
    }
    let value_id = crate::init::random_hex(16);
    let (wrapped_key, ciphertext) = st.envelope.seal(&plain, &value_aad(&name, &value_id));
    drop(plain);
    let cmd = SecretCommand::Put {
        name: name.clone(),
        kind: b.kind,
        settings,
        version: NewVersion {
            sealed: SealedValue {
                value_id,
                wrapped_key,
                ciphertext,
            },
            summary,
            not_before_ms: b.not_before_ms,
            expires_ms: b.expires_ms,
        },
        actor: ACTOR_ADMIN.into(),
        now_ms: now_ms(),
    };
    match write(&st, &name, cmd).await? {
        SecretResponse::Put { version, created } => {
            let code = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok((
                code,
                Json(json!({"name": name, "version": version, "created": created})),
            )
                .into_response())
        }
        other => Err(ApiError::Internal(format!("unexpected answer {other:?}"))),
    }
}

/// Expiry of the current version as seen at `now`: (expiring soon, expired).
pub fn expiry_flags(rec: &SecretRecord, now: u64) -> (bool, bool) {
    match rec.current_version().and_then(|v| v.expires_ms) {
        Some(exp) if exp <= now => (true, true),
        Some(exp) => (exp - now <= rec.settings.expiry_warning_ms, false),
        None => (false, false),
    }
}

/// Names of the registered tenants (the first [`super::MAX_LIST_ITEMS`]).
fn tenant_names(st: &AdminState) -> Result<Vec<String>, ApiError> {
    let tenants = state::list_tenants(&*st.store, None, super::MAX_LIST_ITEMS)?;
    Ok(tenants.into_iter().map(|(n, _)| n).collect())
}

/// Tenants a secret goes to now: registered tenants its targets include.
fn target_tenants(all: &[String], rec: &SecretRecord) -> Vec<String> {
    all.iter()
        .filter(|n| rec.settings.targets.includes(n))
        .cloned()
        .collect()
}

fn push_json(rec: &SecretRecord, targets: &[String]) -> Value {
    let mut out = Map::new();
    let mut names: Vec<&String> = targets.iter().collect();
    for k in rec.push.keys() {
        if !names.contains(&k) {
            names.push(k);
        }
    }
    for t in names {
        let ps = rec.push.get(t).cloned().unwrap_or_default();
        let targeted = targets.contains(t);
        let state = if !targeted {
            "not_targeted"
        } else if ps.version == rec.current {
            "deployed"
        } else if ps.last_error.is_some() && ps.attempting_version == rec.current {
            "retrying"
        } else {
            "pending"
        };
        out.insert(
            t.clone(),
            json!({
                "state": state,
                "version": ps.version,
                "pushed_ms": ps.pushed_ms,
                "attempting_version": ps.attempting_version,
                "attempts": ps.attempts,
                "last_attempt_ms": ps.last_attempt_ms,
                "last_error": ps.last_error,
                "next_attempt_ms": ps.next_attempt_ms,
            }),
        );
    }
    Value::Object(out)
}

fn targets_json(t: &Targets) -> Value {
    match t {
        Targets::All => json!("all"),
        Targets::Tenants(v) => json!(v),
    }
}

fn secret_json(name: &str, rec: &SecretRecord, targets: &[String], now: u64) -> Value {
    let (soon, expired) = expiry_flags(rec, now);
    let cur = rec.current_version();
    let mut warnings = Vec::new();
    if expired {
        warnings.push(json!("the current version has expired"));
    } else if soon {
        warnings.push(json!(
            "the current version expires within expiry_warning_ms"
        ));
    }
    json!({
        "name": name,
        "kind": rec.kind,
        "description": rec.settings.description,
        "state": if rec.deleted_ms.is_some() { "deleted" } else { "active" },
        "deleted_ms": rec.deleted_ms,
        "purge_at_ms": rec.purge_at_ms,
        "current_version": rec.current,
        "summary": cur.map(|v| &v.summary),
        "not_before_ms": cur.and_then(|v| v.not_before_ms),
        "expires_ms": cur.and_then(|v| v.expires_ms),
        "expiring_soon": soon,
        "expired": expired,
        "warnings": warnings,
        "versions": rec.versions.len(),
        "targets": targets_json(&rec.settings.targets),
        "max_versions": rec.settings.max_versions,
        "retention_ms": rec.settings.retention_ms,
        "expiry_warning_ms": rec.settings.expiry_warning_ms,
        "push": push_json(rec, targets),
        "created_ms": rec.created_ms,
        "updated_ms": rec.updated_ms,
        "revision": rec.revision,
    })
}

async fn read_rec(st: &AdminState, name: &str, opts: &ReadOpts) -> Result<SecretRecord, ApiError> {
    check_name(name)?;
    barrier(st, opts).await?;
    sec::read_secret(&*st.store, name)?
        .ok_or_else(|| ApiError::NotFound(format!("secret `{name}`")))
}

pub(crate) async fn get_one(
    State(st): Shared,
    Path(name): Path<String>,
    Query(opts): Query<ReadOpts>,
) -> Result<Json<Value>, ApiError> {
    let rec = read_rec(&st, &name, &opts).await?;
    let targets = target_tenants(&tenant_names(&st)?, &rec);
    Ok(Json(secret_json(&name, &rec, &targets, now_ms())))
}

pub(crate) async fn list(
    State(st): Shared,
    Query(q): Query<ListOpts>,
) -> Result<Json<Value>, ApiError> {
    let limit = q.prepare(&st).await?;
    let items = sec::list_secrets(&*st.store, q.after.as_deref(), limit)?;
    let next = next_cursor(&items, limit);
    let now = now_ms();
    let mut out = Vec::with_capacity(items.len());
    let mut expiring = Vec::new();
    let tenants = tenant_names(&st)?;
    for (n, rec) in &items {
        let targets = target_tenants(&tenants, rec);
        if expiry_flags(rec, now).0 && rec.deleted_ms.is_none() {
            expiring.push(json!(n));
        }
        out.push(secret_json(n, rec, &targets, now));
    }
    Ok(Json(
        json!({"items": out, "expiring": expiring, "next": next}),
    ))
}

pub(crate) async fn versions(
    State(st): Shared,
    Path(name): Path<String>,
    Query(opts): Query<ReadOpts>,
) -> Result<Json<Value>, ApiError> {
    let rec = read_rec(&st, &name, &opts).await?;
    let items: Vec<Value> = rec
        .versions
        .iter()
        .rev()
        .map(|v| {
            json!({
                "version": v.version,
                "current": v.version == rec.current,
                "enabled": v.enabled,
                "summary": v.summary,
                "not_before_ms": v.not_before_ms,
                "expires_ms": v.expires_ms,
                "created_ms": v.created_ms,
                "revision": v.index,
            })
        })
        .collect();
    Ok(Json(
        json!({"name": name, "current_version": rec.current, "items": items}),
    ))
}

fn parse_version(v: &str) -> Result<u64, ApiError> {
    v.parse::<u64>()
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| ApiError::invalid("version", "must be a positive integer"))
}

fn done(r: SecretResponse, name: &str) -> Result<Json<Value>, ApiError> {
    match r {
        SecretResponse::Done { current } => {
            Ok(Json(json!({"name": name, "current_version": current})))
        }
        other => Err(ApiError::Internal(format!("unexpected answer {other:?}"))),
    }
}

async fn set_enabled(
    st: &AdminState,
    name: String,
    version: String,
    enabled: bool,
) -> Result<Json<Value>, ApiError> {
    check_name(&name)?;
    let version = parse_version(&version)?;
    let cmd = SecretCommand::SetEnabled {
        name: name.clone(),
        version,
        enabled,
        actor: ACTOR_ADMIN.into(),
        now_ms: now_ms(),
    };
    done(write(st, &name, cmd).await?, &name)
}

pub(crate) async fn enable(
    State(st): Shared,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    set_enabled(&st, name, version, true).await
}

pub(crate) async fn disable(
    State(st): Shared,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    set_enabled(&st, name, version, false).await
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct VersionBody {
    version: Option<u64>,
}

fn version_body(body: &[u8]) -> Result<VersionBody, ApiError> {
    if body.is_empty() {
        return Ok(VersionBody::default());
    }
    parse_json(body)
}

pub(crate) async fn rollback(
    State(st): Shared,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    check_name(&name)?;
    let version = version_body(&body)?
        .version
        .ok_or_else(|| ApiError::invalid("version", "is required"))?;
    let cmd = SecretCommand::Rollback {
        name: name.clone(),
        version,
        actor: ACTOR_ADMIN.into(),
        now_ms: now_ms(),
    };
    done(write(&st, &name, cmd).await?, &name)
}

pub(crate) async fn restore(
    State(st): Shared,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    check_name(&name)?;
    let cmd = SecretCommand::Restore {
        name: name.clone(),
        actor: ACTOR_ADMIN.into(),
        now_ms: now_ms(),
    };
    done(write(&st, &name, cmd).await?, &name)
}

#[derive(Deserialize, Default)]
pub(crate) struct DeleteOpts {
    /// `true` purges a soft-deleted secret now instead of soft-deleting.
    purge: Option<bool>,
}

pub(crate) async fn delete(
    State(st): Shared,
    Path(name): Path<String>,
    Query(q): Query<DeleteOpts>,
) -> Result<Response, ApiError> {
    check_name(&name)?;
    let now = now_ms();
    let cmd = if q.purge == Some(true) {
        SecretCommand::Purge {
            name: name.clone(),
            actor: ACTOR_ADMIN.into(),
            now_ms: now,
            due_only: false,
        }
    } else {
        SecretCommand::Delete {
            name: name.clone(),
            actor: ACTOR_ADMIN.into(),
            now_ms: now,
        }
    };
    write(&st, &name, cmd).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /admin/secrets/{name}/reveal` (reveal token): audits, then returns the CPI properties
/// of the asked version (default: current).
pub(crate) async fn reveal(
    State(st): Shared,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    check_name(&name)?;
    let asked = version_body(&body)?.version;
    let rec = read_rec(&st, &name, &ReadOpts::default()).await?;
    let version = asked.unwrap_or(rec.current);
    let v = rec
        .version(version)
        .ok_or_else(|| ApiError::NotFound(format!("version {version} of secret `{name}`")))?
        .clone();
    let cmd = SecretCommand::Revealed {
        name: name.clone(),
        version,
        actor: ACTOR_REVEAL.into(),
        now_ms: now_ms(),
    };
    write(&st, &name, cmd).await?;
    let aad = value_aad(&name, &v.sealed.value_id);
    let plain = st
        .envelope
        .open(&v.sealed.wrapped_key, &v.sealed.ciphertext, &aad)
        .map_err(|e| ApiError::Internal(format!("cannot unseal: {e}")))?;
    let value: Value =
        serde_json::from_slice(&plain).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(Json(
        json!({"name": name, "kind": rec.kind, "version": version, "value": value}),
    ))
}

#[derive(Deserialize)]
pub(crate) struct AuditOpts {
    after: Option<u64>,
    limit: Option<usize>,
    consistency: Option<String>,
}

/// `GET /admin/audit/secrets`: the audit log, oldest first, paged by sequence number.
pub(crate) async fn audit(
    State(st): Shared,
    Query(q): Query<AuditOpts>,
) -> Result<Json<Value>, ApiError> {
    let limit = page_limit(q.limit)?;
    barrier(
        &st,
        &ReadOpts {
            consistency: q.consistency.clone(),
        },
    )
    .await?;
    let items = sec::list_audit(&*st.store, q.after, limit)?;
    let next = match items.last() {
        Some(e) if items.len() == limit => Some(e.seq),
        _ => None,
    };
    Ok(Json(json!({"items": items, "next": next})))
}

/// Most secrets whose gauges one scrape refreshes.
const MAX_SECRETS_PER_SCRAPE: usize = 1_000;

/// Sets the per-secret expiry and push gauges from this node's applied state (no Raft round
/// trip, like the queue gauges: a scrape works on any node and without a quorum).
pub fn refresh_gauges(store: &dyn crate::store::Store) {
    let m = &crate::metrics::M;
    for g in [
        &m.secret_expiring,
        &m.secret_expires_in_seconds,
        &m.secret_push_pending,
    ] {
        g.reset();
    }
    let Ok(items) = sec::list_secrets(store, None, MAX_SECRETS_PER_SCRAPE) else {
        return;
    };
    let tenants: Vec<String> = state::list_tenants(store, None, super::MAX_LIST_ITEMS)
        .map(|t| t.into_iter().map(|(n, _)| n).collect())
        .unwrap_or_default();
    let now = now_ms();
    for (name, rec) in items.iter().filter(|(_, r)| r.deleted_ms.is_none()) {
        let (soon, _) = expiry_flags(rec, now);
        m.secret_expiring
            .with_label_values(&[name])
            .set(soon as i64);
        if let Some(exp) = rec.current_version().and_then(|v| v.expires_ms) {
            let secs = (exp as i64 - now as i64) / 1000;
            m.secret_expires_in_seconds
                .with_label_values(&[name])
                .set(secs);
        }
        let pending = tenants
            .iter()
            .filter(|t| rec.settings.targets.includes(t))
            .filter(|t| rec.push.get(*t).is_none_or(|p| p.version != rec.current))
            .count();
        m.secret_push_pending
            .with_label_values(&[name])
            .set(pending as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each kind becomes the CPI properties its entity set expects, with CPI's defaults; the
    /// summary holds only non-secret fields.
    #[test]
    fn values_become_cpi_properties() {
        let (p, s) = build_value(
            SecretKind::UserCredential,
            &json!({"user": "u", "password": "p"}),
            &Some("d".into()),
        )
        .unwrap();
        assert_eq!(
            Value::Object(p),
            json!({"Kind": "default", "User": "u", "Password": "p", "Description": "d"})
        );
        assert_eq!(s.get("user").map(String::as_str), Some("u"));
        let (p, s) = build_value(
            SecretKind::OAuth2ClientCredential,
            &json!({"token_service_url": "https://t", "client_id": "c", "client_secret": "x"}),
            &None,
        )
        .unwrap();
        assert_eq!(p["ClientAuthentication"], "body");
        assert_eq!(p["ScopeContentType"], "urlencoded");
        assert!(!s.values().any(|v| v == "x"));
        let (p, s) =
            build_value(SecretKind::SecureParameter, &json!({"value": "v"}), &None).unwrap();
        assert_eq!(Value::Object(p), json!({"SecureParam": "v"}));
        assert!(s.is_empty());
    }

    /// Bad values name the failing field under `value.`.
    #[test]
    fn bad_values_name_the_field() {
        let field = |kind, v: Value| match build_value(kind, &v, &None) {
            Err(ApiError::Invalid { field, .. }) => field,
            other => panic!("expected invalid, got {:?}", other.map(|_| ())),
        };
        assert_eq!(
            field(
                SecretKind::UserCredential,
                json!({"user": "u", "password": "p", "x": 1})
            ),
            Some("value.x".into())
        );
        assert_eq!(
            field(
                SecretKind::UserCredential,
                json!({"user": "u", "password": "p", "cpi_kind": "successfactors"})
            ),
            Some("value.company_id".into())
        );
        assert_eq!(
            field(
                SecretKind::OAuth2ClientCredential,
                json!({"token_service_url": "t", "client_id": "c", "client_secret": "s",
                       "client_authentication": "nope"})
            ),
            Some("value.client_authentication".into())
        );
        assert_eq!(
            parse_targets(&Some(json!(["a", "a"])))
                .err()
                .map(|e| e.to_string()),
            Some("must be a distinct tenant name".into())
        );
    }
}
