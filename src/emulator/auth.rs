//! Authentication: the XSUAA-style OAuth2 client-credentials token endpoint, bearer-token and
//! Basic-auth checks, and role (authorisation) checks.
//!
//! Owns the rules of cpi-api.md §1.2/§1.3: grant in query or form body, client auth by Basic
//! header or form fields, GET or POST; tokens expire after `token_lifetime_s`; bad or expired
//! credentials give 401, a missing role gives 403.

use std::collections::HashSet;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::json;

use super::tenant::{random_b64, random_hex, Tenant};

/// Most tokens kept per tenant; expired ones are purged first, then the oldest.
pub const MAX_LIVE_TOKENS: usize = 100_000;

/// Who made a request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub id: String,
    pub roles: HashSet<String>,
    /// Authenticated with Basic (CSRF always applies) rather than a bearer token.
    pub basic: bool,
}

impl Caller {
    pub fn has(&self, role: &str) -> bool {
        self.roles.contains(role)
    }
}

/// Why a request was not authenticated.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no credentials")]
    Missing,
    #[error("bad credentials")]
    BadCredentials,
    #[error("invalid or expired token")]
    InvalidToken,
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        let challenge = match self {
            AuthError::InvalidToken => "Bearer error=\"invalid_token\"",
            _ => "Basic realm=\"SAP Cloud Integration\"",
        };
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, challenge)],
        )
            .into_response()
    }
}

fn decode_basic(v: &str) -> Option<(String, String)> {
    let b64 = v
        .strip_prefix("Basic ")
        .or_else(|| v.strip_prefix("basic "))?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let s = String::from_utf8(raw).ok()?;
    let (u, p) = s.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

/// Authenticate a request by its `Authorization` header (Bearer or Basic).
pub fn authenticate(t: &Tenant, headers: &HeaderMap) -> Result<Caller, AuthError> {
    let v = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or(AuthError::Missing)?;
    let now = t.now_ms();
    let st = t.lock();
    if let Some(tok) = v
        .strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))
    {
        let (client, exp) = st.tokens.get(tok.trim()).ok_or(AuthError::InvalidToken)?;
        if *exp <= now {
            return Err(AuthError::InvalidToken);
        }
        let p = st.principals.get(client).ok_or(AuthError::InvalidToken)?;
        return Ok(Caller {
            id: client.clone(),
            roles: p.roles.clone(),
            basic: false,
        });
    }
    let (u, pw) = decode_basic(v).ok_or(AuthError::BadCredentials)?;
    match st.principals.get(&u) {
        Some(p) if p.secret == pw => Ok(Caller {
            id: u,
            roles: p.roles.clone(),
            basic: true,
        }),
        _ => Err(AuthError::BadCredentials),
    }
}

fn oauth_error(status: StatusCode, error: &str, desc: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": error, "error_description": desc})),
    )
        .into_response()
}

/// `GET|POST /oauth/token`: client-credentials grant.
pub async fn token_endpoint(
    State(t): State<Arc<Tenant>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if method != Method::GET && method != Method::POST {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    }
    let chaos = t.chaos();
    if chaos.token_down {
        return oauth_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "token service unavailable (emulated)",
        );
    }
    let mut params: Vec<(String, String)> = uri
        .query()
        .and_then(|q| serde_urlencoded::from_str(q).ok())
        .unwrap_or_default();
    if method == Method::POST && !body.is_empty() {
        match serde_urlencoded::from_bytes::<Vec<(String, String)>>(&body) {
            Ok(mut p) => params.append(&mut p),
            Err(_) => {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "malformed form body",
                )
            }
        }
    }
    let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    match param("grant_type").as_deref() {
        Some("client_credentials") => {}
        Some(_) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "Unsupported grant type",
            )
        }
        None => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "Missing grant type",
            )
        }
    }
    let creds = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(decode_basic)
        .or_else(|| Some((param("client_id")?, param("client_secret")?)));
    let Some((cid, secret)) = creds else {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Full authentication is required to access this resource",
        );
    };
    let now = t.now_ms();
    let lifetime_s = t.cfg.token_lifetime_s;
    let mut st = t.lock();
    let roles = match st.principals.get(&cid) {
        Some(p) if p.is_client && p.secret == secret => {
            let mut r: Vec<String> = p.roles.iter().cloned().collect();
            r.sort();
            r
        }
        _ => return oauth_error(StatusCode::UNAUTHORIZED, "unauthorized", "Bad credentials"),
    };
    let jti = random_hex(16);
    let exp_ms = now + (lifetime_s as i64) * 1000;
    let b64 = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let access_token = format!(
        "{}.{}.{}",
        b64(
            json!({"alg":"RS256","jku": format!("{}/token_keys", t.base_url()),"kid":"default-jwt-key","typ":"JWT"})
        ),
        b64(
            json!({"jti": jti, "client_id": cid, "cid": cid, "azp": cid, "grant_type":"client_credentials",
            "scope": roles, "iat": now / 1000, "exp": exp_ms / 1000, "iss": format!("{}/oauth/token", t.base_url()),
            "zid": t.cfg.name, "ext_attr": {"enhancer":"XSUAA","subaccountid": t.cfg.name}})
        ),
        random_b64(32)
    );
    if st.tokens.len() >= MAX_LIVE_TOKENS {
        st.tokens.retain(|_, (_, e)| *e > now);
        if st.tokens.len() >= MAX_LIVE_TOKENS {
            st.tokens.clear();
        }
    }
    st.tokens.insert(access_token.clone(), (cid, exp_ms));
    drop(st);
    (
        StatusCode::OK,
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(json!({
            "access_token": access_token,
            "token_type": "bearer",
            "expires_in": lifetime_s,
            "scope": roles.join(" "),
            "jti": jti,
        })),
    )
        .into_response()
}
